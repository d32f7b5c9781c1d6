"""The process every stage process is forked from (multiprocessing's `forkserver`).

Started with `spawn`, each stage was a new interpreter importing NumPy and PyAV: ~0.3 CPU-s
and ~0.4 s of wall per run before the first frame, after the main process had paid the same.
Instead, one server process — a fresh interpreter, started as soon as a command knows it will
run a pipeline — imports the stage modules (and OpenCV, for the window and render stages)
once while the main process imports and probes, and every stage is then a fork of it
(milliseconds). It keeps what `spawn` was for: the server never imports TensorFlow (only the
infer stage does, after the fork), runs no thread (OpenBLAS is limited to one, which also
spares the stages its thread pool: they do no linear algebra), and ignores SIGINT (Ctrl-C is
the supervisor's). Stages inherit the server's environment, that of the command when it
started.

This module imports nothing heavy itself, so a command can start the server first thing.
"""
from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import signal
from multiprocessing import forkserver

# OpenCV before PyAV: both wheels bundle libxcb under the same file name, and with PyAV's
# loaded first OpenCV's Qt window hangs connecting to the X server (xcb_wait_for_reply).
PRELOAD = ["cv2", "vidseg.stages", "vidseg.sources.file", "vidseg.sinks.mp4"]
SERVER_ENV = {"OPENBLAS_NUM_THREADS": "1"}


def start():
    """Start the server now if it is not running (it ends with this process); returns the
    multiprocessing context that forks stages from it. Call from the main thread."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited through exec
    saved = {k: os.environ.get(k) for k in SERVER_ENV}
    os.environ.update(SERVER_ENV)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v
    return ctx


@atexit.register
def _stop() -> None:
    """At exit: ask the server (if one was started) to end and reap it, so the CPU time of the
    stages, its children, counts in this process's, as `time vidseg ...` expects."""
    stop = getattr(forkserver._forkserver, "_stop", None)  # CPython's own tests use it (3.8+)
    if stop is not None:
        stop()
