"""Checks on the files a command will write, made before any work starts, and the temporary
names they are written under until they are complete (see `temp_beside`)."""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import itertools
import os
import re
import sys
import tempfile
from typing import Iterable, Optional, Sequence

from vidseg.errors import InputError

UNKNOWN_MACHINE = "00000000"  # temp names made where /proc tells no boot id (see _machine): never removed
PATH_MAX = 4096  # bytes in a path the kernel takes (Linux's, its final NUL included)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def one_line(text: str) -> str:
    """`text` with its control characters (a newline in a file name) written as Python writes
    them in a string (`\\n`), so that a message naming a path stays one line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def told(e: OSError) -> str:
    """An OSError as the one-line error says it: `FILE: reason`."""
    return f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}"


def check_path_length(path: str, what: str = "path") -> None:
    """InputError when `path` is longer than the kernel takes: every look-up of it fails (it
    would be reported missing, or its folder)."""
    size = len(os.fsencode(path))
    if size >= PATH_MAX:
        raise InputError(f"{what} too long: {size} bytes ({path[:40]}...), more than the {PATH_MAX - 1} a "
                         "path can have; give a shorter path")


def check_output(path: str, input_path: str, overwrite: bool, what: str = "output", stream: bool = False) -> str:
    """Absolute output path, or InputError: same as the input, directory missing or not
    writable, a name too long, existing without `overwrite` (a link to nothing too: it would be
    replaced), or a device or pipe (/dev/stdout; also through a link), which only an output
    that is written straight to it (`stream`: a --stats file, see write_whole) may be, and
    then needs no `overwrite`.
    An output is written under a temporary name and renamed over the name given, which for a
    link to a device would have put a file in place of the link (/dev/stdout itself, as root)."""
    if path.endswith(os.sep):  # abspath would take the slash off and name a file
        raise InputError(f"{what} {path} names a folder; give a file name")
    path = os.path.abspath(path)
    check_path_length(path, f"{what} path")
    if os.path.exists(input_path) and os.path.exists(path) and os.path.samefile(path, input_path) \
            or path == os.path.abspath(input_path):
        raise InputError(f"{what} {path} is the input file; choose another {what} path (the input is never overwritten)")
    folder = os.path.dirname(path)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InputError(f"{what} {path} is inside {folder}, which is a file, not a folder; choose another path")
    if not os.path.isdir(folder):
        raise InputError(f"{what} directory does not exist: {folder}; create it first")
    if os.path.isdir(path):
        raise InputError(f"{what} {path} is a directory; give a file name")
    if os.path.exists(path) and not os.path.isfile(path):
        if stream:
            return path
        raise InputError(f"{what} {path} is a device or a pipe, not a file; give a file name")
    if os.path.lexists(path) and not overwrite:
        raise InputError(f"{what} {path} exists; pass --overwrite (-y) to replace it")
    if len(os.fsencode(os.path.basename(path))) > _name_max(folder):
        raise InputError(f"{what} name too long: {os.path.basename(path)[:40]}...; give a shorter one")
    check_writable(folder, f"{what} directory")
    return path


def _name_max(folder: str) -> int:
    """The longest file name, in bytes, the folder's file system takes."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_writable(folder: str, what: str = "output directory") -> None:
    """InputError unless a file can be made in the existing `folder` (tried: access() says yes
    to root even on a read-only file system)."""
    try:
        fd, probe_path = tempfile.mkstemp(prefix=".vidseg-", dir=folder)
        os.close(fd)
        os.unlink(probe_path)
    except OSError as e:
        # the folder exists (checked before), so ENOENT means a file system that makes no
        # files (procfs, sysfs), not a missing path
        reason = "it takes no new files" if e.errno == errno.ENOENT else e.strerror
        raise InputError(f"cannot write to {folder}: {reason}; choose a writable {what}") from None


def refuse_model_files(outputs: Iterable[str], weights: Optional[str], classes: Optional[str]) -> None:
    """InputError when an output would replace a file the model is read from: --weights, the
    JSON beside it (`<stem>.json`, its class names and settings) or --classes. -y replaces
    outputs, not these: `vidseg image --detections w.h5 --weights w.h5 -y` wrote over the weights.
    For every command with --weights."""
    read = {}
    if weights:
        read[os.path.realpath(weights)] = "the --weights file"
        read[os.path.realpath(os.path.splitext(weights)[0] + ".json")] = "the class names and settings of --weights"
    if classes:
        read[os.path.realpath(classes)] = "the --classes file"
    for path in outputs:
        if os.path.realpath(path) in read:
            raise InputError(f"output {path} is {read[os.path.realpath(path)]}; choose another path (what the model "
                             "is read from is never overwritten)")


def kept_partial(path: str, frames: int, what: str = "the {} encoded") -> str:
    """The end of a failed run's one-line error when its MP4 (or, with `what` "the detections
    of the {}", detections file) was finalised with frames in it."""
    return f"; {path} keeps {what.format(f'{frames} frame' + 's' * (frames != 1))} before it (partial)"


def check_mp4_name(path: str, or_folder: bool = False) -> None:
    """InputError unless `path` ends in .mp4: the sinks write MP4 whatever the name, so a
    .mkv or .avi name would hold a file that is not what it says. or_folder: the option also
    takes an existing folder (live recordings), and the error says so."""
    if not or_folder and (path.endswith(os.sep) or os.path.isdir(path)):
        raise InputError(f"output {path} is a folder; give a file name ending in .mp4")
    if os.path.splitext(path)[1].lower() != ".mp4":
        raise InputError(f"output {path} must end in .mp4: vidseg writes H.264 in MP4"
                         + ("; or give an existing folder for one MP4 per source" if or_folder else ""))


def check_distinct(named: Sequence[tuple[str, Optional[str]]]) -> None:
    """InputError when two options ((option, path or None) pairs) name the same file, which
    the later writer would silently replace."""
    seen: dict[str, str] = {}
    for option, path in named:
        if path is None:
            continue
        key = os.path.realpath(path)
        if key in seen:
            raise InputError(f"{seen[key]} and {option} both name {os.path.abspath(path)}; give each its own file")
        seen[key] = option


def temp_beside(path: str) -> str:
    """An empty temp file next to `path`, with the permissions a new file would get: a hidden
    `.NAME.OWNER.XXXXXXXX.part`, NAME cut short when the whole would be too long a file name,
    OWNER this machine and process group (see remove_abandoned)."""
    folder, prefix = _part_prefix(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{prefix}{_machine()}-{os.getpgrp():07d}.", suffix=".part", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    os.close(fd)
    return tmp


def remove_abandoned(*paths: str) -> None:
    """Remove the temporary files of `paths` (temp_beside) that runs killed whole (SIGKILL to
    all their processes at once) left behind: those made on this machine by a process group
    that no longer exists. While any process of the group lives (the stages still writing
    after the command itself was killed) the group exists, and its id is given to no new
    process, so a file still being written is never taken. Neither is a finished file that
    could not be renamed (put_in_place made it read-only). Files of another machine (a
    shared folder, another container) or of an earlier boot are left alone: a process id
    tells nothing there. Each folder is listed once, however many of its files are given
    (`vidseg image` into a folder of thousands)."""
    if _machine() == UNKNOWN_MACHINE:  # a kernel that does not say which boot this is: nothing is proof
        return
    prefixes: dict[str, set[str]] = {}
    for path in paths:
        folder, prefix = _part_prefix(path)
        prefixes.setdefault(folder, set()).add(prefix)
    owned = re.compile(r"(.*\.)" + re.escape(f"{_machine()}-") + r"(\d{7})\.\w{8}\.part", re.DOTALL)
    for folder, ours in prefixes.items():
        try:
            names = os.listdir(folder)
        except OSError:  # a folder that can be written to but not listed (or not made yet): nothing to find
            continue
        for name in names:
            found = owned.fullmatch(name)
            if not found or found[1] not in ours or _group_exists(int(found[2])):
                continue
            part = os.path.join(folder, name)
            try:
                if os.stat(part).st_mode & 0o200:  # not a finished file kept read-only for the user (put_in_place)
                    os.unlink(part)
            except OSError:  # another run took it first, or another user's in a sticky folder (/tmp)
                pass


def _part_prefix(path: str) -> tuple[str, str]:
    """The folder of `path` and how its temporary names begin: `.NAME.`, NAME cut short to
    leave room for the rest (`OWNER.XXXXXXXX.part`)."""
    folder = os.path.dirname(path)
    room = _name_max(folder) - len(f"..{'0' * 8}-{'0' * 7}.{'X' * 8}.part")
    return folder, "." + os.fsencode(os.path.basename(path))[:room].decode(errors="ignore") + "."


@functools.lru_cache(maxsize=None)
def _machine() -> str:
    """8 hex digits naming this boot of this machine's kernel and this process id namespace,
    where a process group id means a group; UNKNOWN_MACHINE when /proc does not tell (a sandbox)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return UNKNOWN_MACHINE
    return hashlib.sha1(f"{boot} {namespace}".encode()).hexdigest()[:8]


def _group_exists(pgid: int) -> bool:
    """Whether process group `pgid` has a process (of any user) in it, a zombie not yet reaped
    included."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def put_in_place(tmp: str, path: str, overwrite: bool) -> str:
    """Rename the finished temporary file `tmp` to `path`; returns where it went. Without
    `overwrite`, a file that appeared at `path` while the command ran (another run writing
    the same name) is left as it is: `tmp` goes to the first free `NAME-2.EXT`, `NAME-3.EXT`...
    beside it, and a line says so. When it cannot be renamed (the folder made read-only, or
    full, meanwhile), it stays under its hidden name, made read-only so that no later run
    takes it for abandoned (see remove_abandoned), and the OSError says where it is and
    what to do."""
    try:
        return _rename(tmp, path, overwrite)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.chmod(tmp, os.stat(tmp).st_mode & ~0o222)
        raise OSError(e.errno, f"cannot name {path}: {e.strerror}; the finished file is {tmp} (hidden): rename "
                               f"it to {path} yourself") from None


def _rename(tmp: str, path: str, overwrite: bool) -> str:
    """put_in_place's renaming."""
    if overwrite:
        os.replace(tmp, path)
        return path
    stem, ext = os.path.splitext(path)
    for target in itertools.chain([path], (f"{stem}-{n}{ext}" for n in itertools.count(2))):
        try:
            os.link(tmp, target)  # fails if target exists: no window in which it could appear
        except FileExistsError:
            continue
        except OSError:  # a file system without hard links (FAT): checked, then renamed
            if os.path.exists(target):
                continue
            os.replace(tmp, target)
        else:
            os.unlink(tmp)
        if target != path:
            print(one_line(f"vidseg: warning: {path} appeared while vidseg ran and is left as it is; this run's is "
                           f"{target}"), file=sys.stderr)
        return target


def write_whole(path: str, text: str, what: str, overwrite: bool = True) -> str:
    """`text` into `path` under a temporary name, renamed into place once written (see
    put_in_place; returns where it went): a full disk or a stop never leaves a half-written
    file (nor empties the one it would replace). A path that is not a file (/dev/stdout, a
    pipe) is written as it is. An OSError names `path` and `what` it is."""
    special = os.path.exists(path) and not os.path.isfile(path)
    tmp = path if special else temp_beside(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
    except BaseException as e:
        if not special:
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise OSError(e.errno, f"cannot write the {what}: {e.strerror}", path) from None
        raise
    return path if special else put_in_place(tmp, path, overwrite)


def named_as_given(message: str, temps: Iterable[tuple[str, str]]) -> str:
    """`message` with each temporary name (temp_beside) replaced by its output's, given as
    (temp, output) pairs: the user knows a file by the name they gave it. Also where the
    message has it as Python writes it in a string (an OSError's file name)."""
    for tmp, path in temps:
        message = message.replace(tmp, path).replace(repr(tmp)[1:-1], repr(path)[1:-1])
    return message


def whole_lines(path: str, chunk: int = 1 << 20) -> int:
    """Cut what follows the last newline of `path`; returns the number of lines left."""
    lines = kept = 0
    with open(path, "rb+") as f:
        while data := f.read(chunk):
            if (newlines := data.count(b"\n")):
                lines += newlines
                kept = f.tell() - len(data) + data.rfind(b"\n") + 1
        f.truncate(kept)
    return lines
