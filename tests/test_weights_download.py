"""`vidseg weights download`: against a local HTTP server on 127.0.0.1 (never the internet)."""
from __future__ import annotations

import http.server
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest

from vidseg import weights_download
from vidseg.errors import InputError
from vidseg.weights_download import RELEASES, fetch

NAME = RELEASES["coco"].filename


def _weights_bytes() -> bytes:
    """A small real HDF5 file (~200 KB) with a weights-like dataset."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("conv1/conv1/kernel:0", data=np.random.default_rng(0).random((64, 800), np.float32))
    return buf.getvalue()


DATA = _weights_bytes()


class Server:
    """Serves DATA at /w.h5 with `Range: bytes=N-` support; records each request's Range.

    /moved redirects (302) to /w.h5, as GitHub redirects release downloads to its CDN.
    mode: "ok"; "truncate" (announces the full length, sends half, closes); "stall" (sends
    half, then nothing for 2 s); "no-range" (ignores Range, always 200); "no-length" (200
    without Content-Length, the end of the body is the end of the connection).
    """

    def __init__(self):
        self.mode = "ok"
        self.ranges: list = []
        self.sent = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/moved":
                    self.send_response(302)
                    self.send_header("Location", "/w.h5")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng and server.mode != "no-range" else 0
                if start >= len(DATA) and rng:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(DATA)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = DATA[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
                if server.mode != "no-length":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.mode in ("truncate", "stall"):
                    body = body[:len(body) // 2]
                server.sent += len(body)  # counted before the write, so a client that has it all sees it
                self.wfile.write(body)
                if server.mode == "stall":
                    self.wfile.flush()
                    time.sleep(2)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/w.h5"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def run_cli(*args, env_url=None, cwd=None):
    env = dict(os.environ)
    env.pop(weights_download.URL_ENV, None)
    if env_url:
        env[weights_download.URL_ENV] = env_url
    return subprocess.run([sys.executable, "-c", "from vidseg.cli import main; main()", *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def test_cli_downloads_the_whole_file(server, tmp_path):
    r = run_cli("weights", "download", "coco", "--dir", str(tmp_path), env_url=server.url)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / NAME).read_bytes() == DATA
    assert os.listdir(tmp_path) == [NAME]          # no .part left
    assert server.ranges == [None]
    assert str(tmp_path / NAME) in r.stdout


def test_cli_url_option_and_existing_file_kept(server, tmp_path):
    r = run_cli("weights", "download", "coco", "--dir", str(tmp_path), "--url", server.url)
    assert r.returncode == 0, r.stderr
    r = run_cli("weights", "download", "coco", "--dir", str(tmp_path), "--url", server.url)
    assert r.returncode == 0, r.stderr
    assert "already" in r.stdout
    assert len(server.ranges) == 1                 # the second run did not download again


def test_resumes_a_partial_file_with_range(server, tmp_path):
    dest = tmp_path / NAME
    have = len(DATA) // 3
    (tmp_path / (NAME + ".part")).write_bytes(DATA[:have])
    fetch(server.url, str(dest), progress=False)
    assert dest.read_bytes() == DATA
    assert server.ranges == [f"bytes={have}-"]
    assert server.sent == len(DATA) - have         # only the missing bytes travelled
    assert not (tmp_path / (NAME + ".part")).exists()


def test_resume_survives_a_redirect(server, tmp_path):
    have = len(DATA) // 4
    (tmp_path / (NAME + ".part")).write_bytes(DATA[:have])
    fetch(server.url.replace("/w.h5", "/moved"), str(tmp_path / NAME), progress=False)
    assert (tmp_path / NAME).read_bytes() == DATA
    assert server.ranges == [f"bytes={have}-"]     # recorded at /w.h5: the Range header followed the 302


def test_stalled_transfer_times_out_and_keeps_the_part(server, tmp_path, monkeypatch):
    monkeypatch.setattr(weights_download, "TIMEOUT_S", 0.5)
    server.mode = "stall"
    with pytest.raises(InputError, match="interrupted.*resume"):
        fetch(server.url, str(tmp_path / NAME), progress=False)
    assert not (tmp_path / NAME).exists()
    assert (tmp_path / (NAME + ".part")).read_bytes() == DATA[:len(DATA) // 2]


def test_server_without_range_support_starts_over(server, tmp_path):
    server.mode = "no-range"
    (tmp_path / (NAME + ".part")).write_bytes(b"x" * 1000)
    fetch(server.url, str(tmp_path / NAME), progress=False)
    assert (tmp_path / NAME).read_bytes() == DATA


def test_complete_part_is_finished_after_416(server, tmp_path):
    (tmp_path / (NAME + ".part")).write_bytes(DATA)
    fetch(server.url, str(tmp_path / NAME), progress=False)
    assert (tmp_path / NAME).read_bytes() == DATA


def test_complete_part_of_known_size_needs_no_network(tmp_path):
    (tmp_path / (NAME + ".part")).write_bytes(DATA)
    fetch("http://127.0.0.1:9/unused", str(tmp_path / NAME), expected_size=len(DATA), progress=False)
    assert (tmp_path / NAME).read_bytes() == DATA


def test_truncated_transfer_is_not_complete_and_then_resumes(server, tmp_path):
    server.mode = "truncate"
    dest = tmp_path / NAME
    with pytest.raises(InputError, match="resume"):
        fetch(server.url, str(dest), progress=False)
    assert not dest.exists()
    part = tmp_path / (NAME + ".part")
    assert part.read_bytes() == DATA[:len(DATA) // 2]
    server.mode = "ok"
    fetch(server.url, str(dest), progress=False)
    assert dest.read_bytes() == DATA
    assert server.ranges[-1] == f"bytes={len(DATA) // 2}-"


def test_size_mismatch_is_an_error_and_no_file_is_complete(server, tmp_path):
    dest = tmp_path / NAME
    with pytest.raises(InputError, match=f"offers {len(DATA):,} bytes, expected {len(DATA) + 1:,}"):
        fetch(server.url, str(dest), expected_size=len(DATA) + 1, progress=False)
    assert not dest.exists()


def test_size_is_checked_when_the_server_does_not_announce_it(server, tmp_path):
    server.mode = "no-length"
    with pytest.raises(InputError, match=f"{len(DATA):,} of {len(DATA) + 1:,} bytes"):
        fetch(server.url, str(tmp_path / NAME), expected_size=len(DATA) + 1, progress=False)
    assert not (tmp_path / NAME).exists()
    fetch(server.url, str(tmp_path / "other.h5"), progress=False)      # no size known: taken as sent
    assert (tmp_path / "other.h5").read_bytes() == DATA


def test_not_an_hdf5_file_is_refused(server, tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "DATA", b"<html>not found</html>" * 10)
    dest = tmp_path / NAME
    with pytest.raises(InputError, match="HDF5"):
        fetch(server.url, str(dest), progress=False)
    assert os.listdir(tmp_path) == []


def test_unreachable_server_is_one_clear_line(tmp_path):
    with socket.socket() as s:                     # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_cli("weights", "download", "coco", "--dir", str(tmp_path), "--url", f"http://127.0.0.1:{port}/w.h5")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach 127.0.0.1" in lines[0] and "internet" in lines[0], r.stderr
    assert os.listdir(tmp_path) == []


def test_a_missing_file_url_names_the_path_not_the_internet(tmp_path):
    """It said 'cannot reach None (...): check the internet connection'."""
    url = (tmp_path / "nowhere" / "w.h5").as_uri()
    r = run_cli("weights", "download", "coco", "--dir", str(tmp_path), "--url", url)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"vidseg: error: cannot read {url} (") and line.endswith("; check the path"), line
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("url, env_url", [("notaurl", None), ("ftp://host/w.h5", None), (None, "http://[::1")])
def test_a_malformed_url_is_one_line(tmp_path, url, env_url):
    """They ended in a ValueError traceback from urllib."""
    r = run_cli("weights", "download", "coco", "--dir", str(tmp_path), *(["--url", url] if url else []),
                env_url=env_url)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"vidseg: error: not a download URL: {url or env_url}; give an "
                                             "http(s):// or file:// URL (--url or $VIDSEG_WEIGHTS_URL)"]
    assert os.listdir(tmp_path) == []


def test_an_existing_file_that_is_not_hdf5_is_not_taken_for_the_weights(server, tmp_path):
    """Junk under the weights' name was reported as 'already here' and kept."""
    (tmp_path / NAME).write_bytes(b"junk!")
    r = run_cli("weights", "download", "coco", "--dir", str(tmp_path), "--url", server.url)
    assert r.returncode == 2, r.stderr
    assert "is not a whole HDF5 weights file: delete it and run again" in r.stderr
    assert (tmp_path / NAME).read_bytes() == b"junk!" and server.ranges == []


def test_missing_directory_is_exit_2(tmp_path):
    r = run_cli("weights", "download", "coco", "--dir", str(tmp_path / "nope"), "--url", "http://127.0.0.1:9/w")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "does not exist" in r.stderr


def test_release_size_is_enforced_for_the_release_url(server, tmp_path, monkeypatch):
    monkeypatch.setitem(RELEASES, "coco", weights_download.Release(NAME, server.url, len(DATA) + 1))
    monkeypatch.delenv(weights_download.URL_ENV, raising=False)
    with pytest.raises(InputError, match="expected"):
        weights_download.download("coco", str(tmp_path), progress=False)
    assert not (tmp_path / NAME).exists()


def test_matterport_download_trained_weights_resumes_through_the_same_fetcher(server, tmp_path):
    """mrcnn.utils.download_trained_weights (matterport's API) resumes a partial file too."""
    from mrcnn import utils

    dest = tmp_path / "mask_rcnn_coco.h5"
    have = len(DATA) // 2
    (tmp_path / "mask_rcnn_coco.h5.part").write_bytes(DATA[:have])
    utils.download_trained_weights(str(dest), verbose=0, url=server.url)
    assert dest.read_bytes() == DATA
    assert server.ranges == [f"bytes={have}-"]
    assert os.listdir(tmp_path) == ["mask_rcnn_coco.h5"]
