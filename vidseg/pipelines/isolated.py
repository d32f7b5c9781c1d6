"""A function run in a spawned process that Ctrl-C or SIGTERM stops at once.

`vidseg bench` measures its stages this way (TensorFlow stays out of the main process). The
child ignores both signals and the parent, at the first, kills it: it holds nothing to
finalise, and the directory its files go to is the parent's to remove. Only the first signal
counts and later ones are ignored (`timeout` delivers one stop twice, to the command and then
to its process group, and a user may press Ctrl-C twice), so nothing cuts the clean-up short:
with a process pool, a second delivery cutting its shutdown short left its worker waiting for
work forever, and the command waiting for the worker at exit.
"""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import signal
import sys
import tempfile
import threading
import traceback
from contextlib import contextmanager
from typing import Callable, Optional

from vidseg.errors import (STOP_SIGNALS, InputError, Terminated, leave_terminal, memory_message, outlive_readers,
                           put_back_stop_handlers)
from vidseg.scratch import scratch_dir
from vidseg.stages import exit_with_parent
from vidseg.supervisor import describe_exit

TICK_S = 0.1  # how often the wait for the child looks for a stop signal


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP while the block runs (in the main thread).

    The first one raises KeyboardInterrupt (SIGINT) or Terminated (the others), or, while
    `polled`, is only recorded in `signum` for the code waiting on a process to act on; any
    later one is ignored, so that nothing cuts the clean-up short, and stays ignored after the
    block, as after a pipeline a stop signal ended (errors.put_back_stop_handlers). While a
    pipeline runs, its supervisor has its own handlers and puts these back when it is done."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.polled = False
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        put_back_stop_handlers(self._previous, stopped=self.signum is not None)

    def __call__(self, signum, frame) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        if signum == signal.SIGHUP:
            leave_terminal()
        if not self.polled:
            raise self.exception()

    def exception(self) -> KeyboardInterrupt:
        return KeyboardInterrupt() if self.signum == signal.SIGINT else Terminated(self.signum)

    @contextmanager
    def deferred(self):
        """Inside the block a stop signal is only recorded; it is raised when the block ends."""
        self.polled = True
        try:
            yield
        finally:
            self.polled = False
        if self.signum is not None:
            raise self.exception()


class _RemoteTraceback(Exception):
    """The child process's traceback, as the cause of the exception it raised."""

    def __str__(self) -> str:
        return self.args[0]


def call_in_child(stop: StopSignals, what: str, target: Callable, *args) -> dict:
    """target(*args, workdir=D) in a spawned process (what it imports, TensorFlow say, stays out
    of this one); returns what it returns, or raises what it raised. A stop signal kills it at
    once (module doc); D, a temporary directory for the files it writes, is removed here however
    it ends. what: the process, named in the one line printed if it dies or runs out of memory
    (then exit 1)."""
    ctx = mp.get_context("spawn")
    with stop.deferred(), scratch_dir("child") as workdir:
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child_main, args=(send, target, args, {"workdir": workdir}),
                           name="vidseg-child")
        reply = None
        try:
            # Blocked across the start, so the child starts with them blocked: it ignores them
            # before it unblocks them, and one sent to the group meanwhile is simply dropped there
            # (here it is delivered when unblocked).
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                proc.start()
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            send.close()
            while stop.signum is None:
                ready = mp.connection.wait([recv, proc.sentinel], TICK_S)
                if recv in ready or proc.sentinel in ready:
                    try:
                        reply = recv.recv() if recv.poll() else None
                    except (EOFError, OSError):
                        reply = None
                    break
        finally:
            send.close()
            if proc.pid is not None:
                if stop.signum is not None or reply is None:
                    proc.kill()
                proc.join(5.0)
                if proc.exitcode is None:
                    proc.kill()
                    proc.join()
            recv.close()
    if reply is None:
        print(f"vidseg: error: {what} ended before it reported ({describe_exit(proc.exitcode)})", file=sys.stderr)
        raise SystemExit(1)
    if reply[0] == "ok":
        return reply[1]
    if reply[0] == "out of memory":  # a limit (ulimit -v), not a bug: one line, no traceback
        print(f"vidseg: error: {what} failed: {reply[1]}", file=sys.stderr)
        raise SystemExit(1)
    _, error, remote_tb = reply
    if isinstance(error, InputError):
        raise error
    raise error from _RemoteTraceback(remote_tb)


def _child_main(conn, target: Callable, args: tuple, kwargs: dict) -> None:
    """The child process: ignores the stop signals (its parent acts on them), ends if its
    parent dies, sends ("ok", result), ("out of memory", line) or ("error", exception,
    traceback) and exits at once (TensorFlow's teardown is no use to anyone)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked across the start (call_in_child)
    outlive_readers()
    exit_with_parent()
    # Temporary files too go into the parent's directory: libraries that remove theirs only at
    # interpreter exit (TensorFlow's autograph writes a module per converted function) would
    # leave them, as this process ends with os._exit.
    tempfile.tempdir = kwargs["workdir"]
    try:
        reply = ("ok", target(*args, **kwargs))
    except BaseException as e:  # noqa: B902 - whatever it is, the parent reports it
        message = memory_message(e)  # told here: this process's limit, the whole chain
        reply = ("out of memory", message) if message else _error_reply(e)
    try:
        conn.send(reply)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _error_reply(e: BaseException) -> tuple:
    """("error", e, its traceback) for the parent; e as a RuntimeError of its text if it does
    not pickle."""
    tb = traceback.format_exc()
    e.__traceback__ = None
    try:
        pickle.dumps(e)
    except Exception:  # noqa: B902 - an exception that does not pickle: its text does
        e = RuntimeError(f"{type(e).__name__}: {e}")
    return ("error", e, tb)
