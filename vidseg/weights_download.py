"""`vidseg weights download coco`: fetch matterport's released COCO weights, resumably.

The only place vidseg downloads weights, and only when that command runs. Bytes go to
`<name>.part`; a later run resumes it with an HTTP Range request. The file gets its final
name only once its size matches and it is an HDF5 file, so a truncated or wrong download is
never presented as complete.
"""
from __future__ import annotations

import http.client
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

from tqdm import tqdm

from mrcnn.utils import COCO_MODEL_URL, not_hdf5
from vidseg.errors import InputError
from vidseg.pipelines.outputs import check_writable
from vidseg.secrets import mask

URL_ENV = "VIDSEG_WEIGHTS_URL"   # overrides the release URL (mirrors, tests)
CHUNK = 1 << 20
TIMEOUT_S = 30                   # per connect and per read


@dataclass(frozen=True)
class Release:
    """A published weights file. size: bytes, as served by the release host."""

    filename: str
    url: str
    size: int


# matterport/Mask_RCNN v2.0 (ResNet-101, 81 COCO classes). The release publishes no checksum;
# the size is what GitHub serves (Content-Length 257557808, the HDF5 superblock's end-of-file).
RELEASES = {
    "coco": Release("mask_rcnn_coco.h5", COCO_MODEL_URL, 257_557_808),
}


def download(name: str, directory: str = ".", url: Optional[str] = None, progress: bool = True) -> str:
    """Download release `name` into `directory`, print where it is, return that path.

    url: defaults to $VIDSEG_WEIGHTS_URL, then the release URL. The release size is checked
    only when the release URL is used; otherwise the size the server announces is checked.
    A complete file already there is kept and nothing is downloaded.
    progress: a tqdm bar on stderr when it is a terminal.
    """
    release = RELEASES[name]
    url = url or os.environ.get(URL_ENV) or release.url
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.netloc) or parts.scheme == "file"
    except ValueError:  # an unclosed [IPv6] host, a port that is not a number
        valid = False
    if not valid:
        raise InputError(f"not a download URL: {mask(url)}; give an http(s):// or file:// URL (--url or ${URL_ENV})")
    expected = release.size if url == release.url else None
    if not os.path.isdir(directory):
        raise InputError(f"directory {directory!r} does not exist: create it or pass another --dir")
    check_writable(directory, "--dir")  # tried, before the download: access() says yes to root on /proc
    dest = os.path.join(directory, release.filename)
    if os.path.exists(dest):
        size = os.path.getsize(dest)
        if expected is not None and size != expected:
            raise InputError(f"{dest} exists but has {size:,} bytes, not {expected:,}: delete it and run again")
        if not_hdf5(dest):
            raise InputError(f"{dest} exists but is not a whole HDF5 weights file: delete it and run again")
        print(f"{dest} is already here ({size:,} bytes)")
        return dest
    fetch(url, dest, expected, progress)
    print(f"saved {dest} ({os.path.getsize(dest):,} bytes)")
    return dest


def fetch(url: str, dest: str, expected_size: Optional[int] = None, progress: bool = True) -> None:
    """Download `url` to `dest` through `dest + ".part"`, resuming a partial file.

    expected_size: bytes the file must have (None: trust the server's announced length).
    Raises InputError with a one-line reason and what to do; `dest` then does not exist.
    """
    part = dest + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    if expected_size is not None and have > expected_size:
        os.remove(part)
        have = 0
    announced = None
    if expected_size is None or have < expected_size:
        announced = _receive(url, part, have, expected_size, progress)
    _finish(part, dest, expected_size if expected_size is not None else announced, url)


def _receive(url: str, part: str, have: int, expected_size: Optional[int], progress: bool) -> Optional[int]:
    """Append the missing bytes to `part`; returns the file's total size as announced."""
    try:
        resp = _open(url, have, part[:-len(".part")])
    except urllib.error.HTTPError as e:
        if e.code != 416 or not have:
            raise InputError(f"cannot download {mask(url)}: HTTP {e.code} {e.reason}") from None
        # Range not satisfiable: the part already has every byte (checked next) or is bogus.
        total = _total_from_range(e.headers.get("Content-Range", ""))
        if total == have:
            return total
        os.remove(part)
        return _receive(url, part, 0, expected_size, progress)
    with resp:
        if resp.status == 206:
            start, total = have, _total_from_range(resp.headers.get("Content-Range", ""))
        else:  # 200: the server ignored the Range header; start over
            start, total = 0, _int_or_none(resp.headers.get("Content-Length"))
        if expected_size is not None and total is not None and total != expected_size:
            raise InputError(f"{mask(url)} offers {total:,} bytes, expected {expected_size:,}: "
                             f"it is not the published file; check the URL")
        with open(part, "ab" if start else "wb") as f, \
                tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=os.path.basename(part)[:-len(".part")], disable=None if progress else True) as bar:
            try:
                while chunk := resp.read1(CHUNK):  # what has arrived, so a stall loses nothing
                    f.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:  # reset, read timeout, bad chunk
                raise InputError(f"download interrupted after {f.tell():,} bytes ({e}): "
                                 f"run the command again to resume") from None
    return total


def _open(url: str, have: int, dest: str):
    """GET url (from byte `have` on when > 0). Network failures → InputError (naming `dest`)."""
    req = urllib.request.Request(url, headers={"User-Agent": "vidseg"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        return urllib.request.urlopen(req, timeout=TIMEOUT_S)
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        host = urlsplit(url).hostname
        if host is None:  # a file: URL
            raise InputError(f"cannot read {mask(url)} ({reason}); check the path") from None
        raise InputError(f"cannot reach {host} ({reason}): check the internet connection, or download "
                         f"{mask(url)} by hand and save it as {dest}") from None


def _finish(part: str, dest: str, total: Optional[int], url: str) -> None:
    """Check the part's size and that it opens as HDF5, then give it its final name."""
    size = os.path.getsize(part)
    if total is not None and size < total:
        raise InputError(f"download stopped at {size:,} of {total:,} bytes: run the command again to resume")
    if total is not None and size > total:
        os.remove(part)
        raise InputError(f"downloaded {size:,} bytes, expected {total:,}: removed it; run the command again")
    if not_hdf5(part):  # with no size announced, also a download cut short
        os.remove(part)
        raise InputError(f"{mask(url)} did not send an HDF5 weights file: check the URL")
    os.replace(part, dest)


def _total_from_range(content_range: str) -> Optional[int]:
    """'bytes 100-199/200' or 'bytes */200' → 200; None when absent or '*'."""
    m = re.search(r"/(\d+)\s*$", content_range)
    return int(m.group(1)) if m else None


def _int_or_none(value: Optional[str]) -> Optional[int]:
    return int(value) if value and value.isdigit() else None
