"""A run's temporary folders (the demo's generated clip, bench's encodes, the files TensorFlow
writes in the infer stage), `vidseg-KIND-*` in the system's temporary directory.

Each is removed when its run ends, however it ends. One left by a run that could not remove
it (the main process SIGKILLed, or killed by the OOM killer) is removed by the next run that
makes one: while its run lives a folder is held with flock(2) by the process that made it
(and by the stages forked from it), and the kernel lets go of a lock when its holders die,
whatever their pid namespace. Folders younger than STALE_AFTER_S are left alone, so that a
folder just made is not taken before its maker holds it.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from typing import Iterator

PREFIX = "vidseg-"
STALE_AFTER_S = 10.0
_held: dict[str, int] = {}  # path → the descriptor holding its lock


def make_scratch_dir(kind: str) -> str:
    """A new folder `vidseg-KIND-*`, held until `remove_scratch_dir`; stale ones are removed first."""
    reap_stale_scratch_dirs()
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)  # not inheritable: held by this process and its forks
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _held[path] = fd
    return path


def remove_scratch_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    fd = _held.pop(path, None)
    if fd is not None:
        os.close(fd)


@contextlib.contextmanager
def scratch_dir(kind: str) -> Iterator[str]:
    """`with scratch_dir("bench") as folder:` a folder removed at the end of the block."""
    path = make_scratch_dir(kind)
    try:
        yield path
    finally:
        remove_scratch_dir(path)


def reap_stale_scratch_dirs() -> list[str]:
    """Remove the `vidseg-*` folders no live process holds; returns their paths."""
    root = tempfile.gettempdir()
    removed = []
    try:
        names = [n for n in os.listdir(root) if n.startswith(PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(root, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:  # not a folder (or a link to one), gone, or another user's
            continue
        try:
            if time.time() - os.fstat(fd).st_mtime < STALE_AFTER_S:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except OSError:  # held: its run is alive
            pass
        finally:
            os.close(fd)
    return removed
