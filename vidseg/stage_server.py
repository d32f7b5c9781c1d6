"""The process every stage process is forked from (multiprocessing's `forkserver`).

Started with `spawn`, each stage was a new interpreter importing NumPy and PyAV: ~0.3 CPU-s
and ~0.4 s of wall per run before the first frame, after the main process had paid the same.
Instead, one server process — a fresh interpreter, started as soon as a command knows it will
run a model — imports the stage modules once while the main process imports and probes, and
every stage is then a fork of it (milliseconds). It keeps what `spawn` was for: the server
never imports TensorFlow (only the infer stage does, after the fork), runs no thread
(OpenBLAS is limited to one, which also spares the stages its thread pool: they do no linear
algebra), and ignores SIGINT, SIGTERM and SIGHUP (the supervisor's). Stages inherit the server's
environment, that of the command when it started.

A run with no model and only files does without the server: capture and sink, which only
decode and encode with PyAV, fork from the main process itself (vidseg.supervisor), which has
loaded all they need already. OpenCV is preloaded only when a stage may open a window
(`window=True`); a render or sink stage that needs it otherwise imports it after the fork.
When the server ends it skips the interpreter's teardown (~0.1 s of freeing what the
process's exit frees anyway): it holds no file or buffer to flush, its stages are processes
of their own.

This module imports nothing heavy itself, so a command can start the server first thing.
"""
from __future__ import annotations

import atexit
import importlib
import multiprocessing as mp
import os
import sys
from multiprocessing import forkserver
from typing import Optional

from vidseg.errors import outlive_readers, stop_signals_ignored
from vidseg.scratch import make_scratch_dir, remove_scratch_dir

PRELOAD = ["vidseg.stages", "vidseg.sources.file", "vidseg.sinks.mp4"]
# OpenCV before PyAV: both wheels bundle libxcb under the same file name, and with PyAV's
# loaded first OpenCV's Qt window hangs connecting to the X server (xcb_wait_for_reply).
WINDOW_PRELOAD = ["cv2"] + PRELOAD
IN_SERVER = "VIDSEG_STAGE_SERVER"  # in the server's environment: "window" or "1"; taken out by its preload


def start(window: bool = True):
    """Start the server now if it is not running (it ends with this process); returns the
    multiprocessing context that forks stages from it. Call from the main thread.
    window: preload OpenCV, before PyAV, so that a stage can open an OpenCV window (the call
    that starts the server decides; later calls only return the context)."""
    ctx = mp.get_context("forkserver")
    # the server imports this module, which preloads the others (see the end of this module)
    ctx.set_forkserver_preload(["vidseg.stage_server"])
    config = mp.current_process()._config  # where multiprocessing.util.get_temp_dir looks first
    if "tempdir" not in config:
        # multiprocessing's temporary folder (the server's socket) as one of ours: a pymp-*
        # stayed in $TMPDIR when this process was killed, this one goes with the next run
        config["tempdir"] = make_scratch_dir("mp")
    server_env = {"OPENBLAS_NUM_THREADS": "1", IN_SERVER: "window" if window else "1"}
    saved = {k: os.environ.get(k) for k in server_env}
    os.environ.update(server_env)
    try:
        # inherited through exec: Ctrl-C, SIGTERM and SIGHUP are the supervisor's (vidseg.supervisor)
        with stop_signals_ignored():
            forkserver.ensure_running()
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v
    return ctx


def died() -> Optional[tuple]:
    """(pid, exit code: negative for a signal) of the server this process started, once it has
    died (the OOM killer, a `kill -9`); None while it runs, or if none was started. It is left
    to be reaped at exit (_stop), where multiprocessing waits for it."""
    pid = forkserver._forkserver._forkserver_pid
    if pid is None:
        return None
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if info is None:
        return None
    return pid, -info.si_status if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED) else info.si_status


@atexit.register
def _stop() -> None:
    """At exit: ask the server (if one was started) to end and reap it, so the CPU time of the
    stages, its children, counts in this process's, as `time vidseg ...` expects."""
    stop = getattr(forkserver._forkserver, "_stop", None)  # CPython's own tests use it (3.8+)
    # a second Ctrl-C (the terminal's, to the whole group) would cut this short with a
    # traceback, the folder left: the command is ending already, as the first one asked
    with stop_signals_ignored():
        if stop is not None:
            stop()  # also removes the socket in the folder below
        folder = mp.current_process()._config.get("tempdir")
        if folder and os.path.basename(folder).startswith("vidseg-mp-"):
            remove_scratch_dir(folder)


def _exit_now() -> None:
    """Registered last, so run first, at the server's exit: end without the teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if _mark := os.environ.pop(IN_SERVER, None):  # this is the server (its stages do not inherit the mark)
    atexit.register(_exit_now)
    outlive_readers()  # for its stages
    for _module in WINDOW_PRELOAD if _mark == "window" else PRELOAD:
        try:
            importlib.import_module(_module)
        except Exception:  # noqa: BLE001 - out of memory (ulimit -v): a stage imports it after the fork
            pass  # (multiprocessing's own preload let a MemoryError end the server with a traceback)
