"""Errors the user can fix (bad input, bad options, no room): one line, exit 2, no traceback;
the signals that stop a command; and its messages' streams going away under it."""
import contextlib
import errno
import os
import re
import resource
import signal
import stat
import sys

# Ctrl-C; kill, timeout, docker stop, systemd; the terminal closed (an ssh session dropped)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class InputError(Exception):
    """Raised for anything the user can fix; the CLI prints `vidseg: error: <message>` and exits 2.

    The message says what is wrong and what to do. Raised inside a stage process it travels
    to the supervisor, which ends the run with exit 2 instead of 1.
    """

    exit_code = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, docker stop, systemd) or SIGHUP (the terminal closed) to the
    command: unwinds like Ctrl-C, exit 143 or 129. While a pipeline runs, the supervisor takes
    them itself and drains as for Ctrl-C. Also how a sink stage asked to stop
    (vidseg.stages.STOP_SIGNAL) leaves its loop."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__()
        self.exit_code = 128 + signum  # the shell's convention


def descriptor_hint(e: BaseException) -> str:
    """What to do when a process ran out of file descriptors (a low `ulimit -n`: a pipeline
    needs a few dozen), to follow the error's line; "" for any other error."""
    if getattr(e, "errno", None) != errno.EMFILE:
        return ""
    return f" (the limit is {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}: raise it, e.g. `ulimit -n 1024`)"


def check_descriptors(sources: int, direct: bool) -> None:
    """InputError unless this process may open the file descriptors a run over `sources`
    sources needs: those open now, and what the run's pipes, queues, rings and stage processes
    take, measured by bisecting `ulimit -n` (`vidseg file` and `bench`, 1 to 3 sources): 6 +
    10 per source when capture feeds the sink directly (`direct`: run.passthrough), 10 + 14
    per source with infer and render. Called once the supervisor has started the stage server
    and the resource tracker. Below that a `ulimit -n` cut the run short in the middle of
    starting its stages (the stage server died with a traceback, an EOFError receiving a
    stage's descriptors)."""
    open_now = len(os.listdir("/proc/self/fd")) - 1  # not the one listing them
    need = open_now + (6 + 10 * sources if direct else 10 + 14 * sources)
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit < need:
        raise InputError(f"too few file descriptors (ulimit -n {limit}): vidseg needs about {need} for this run; "
                         "raise the limit, e.g. `ulimit -n 1024`")


_MAP_FAILED = re.compile(r"([^\n]+?): failed to map segment")


def memory_message(e: BaseException):
    """The line for an error that running out of memory caused, saying what to do; None for
    any other error. Under an address-space limit (`ulimit -v`) a stage that loads a library
    (TensorFlow's are GBs of address space) gets an ImportError from the dynamic loader, a
    MemoryError, or a SystemError from inside the import machinery, and a thread finds no
    room for its stack ("can't start new thread"); a library may raise its
    own error from it (scipy: "your install seems to be broken"), so the chain is looked at."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]

    def short_of_memory(x: BaseException) -> bool:
        return (isinstance(x, MemoryError) or bool(_failed_to_map(x))
                or limit != resource.RLIM_INFINITY and (isinstance(x, SystemError) or _no_thread(x)))

    while e is not None and not short_of_memory(e):
        e = e.__cause__ or e.__context__
    if e is None:
        return None
    mapped = _failed_to_map(e)
    loading = f" loading {os.path.basename(mapped[1])}" if mapped else ""
    if limit == resource.RLIM_INFINITY:
        return f"out of memory{loading}: free memory (close other programs) or run it on a machine with more"
    return (f"out of memory{loading}: the address space is limited to {limit >> 20} MiB (ulimit -v {limit >> 10}); "
            "raise the limit, e.g. `ulimit -v unlimited`")


def _no_thread(e: BaseException) -> bool:
    """A thread could not be started (under an address-space limit: no room for its stack)."""
    return isinstance(e, RuntimeError) and str(e) == "can't start new thread"


def _failed_to_map(e: BaseException):
    """The dynamic loader could not map a library: an ImportError whose message starts with
    its file (a match, the file in group 1), not one that quotes it further down (NumPy's
    'Importing the numpy C-extensions failed ... Original error was: ...'); else None."""
    return _MAP_FAILED.match(str(e)) if isinstance(e, ImportError) else None


@contextlib.contextmanager
def stop_signals_ignored():
    """Inside the block the stop signals are ignored; a process started there (through exec)
    keeps ignoring them, as exec keeps SIG_IGN (and resets a Python handler)."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_stopped = False  # a stop signal has stopped this process's run (see put_back_stop_handlers)


def put_back_stop_handlers(previous: dict, stopped: bool) -> None:
    """End a block that took the stop signals: put back their handlers before it (`previous`,
    signal → handler), unless a stop signal has stopped the run, in this block (`stopped`) or
    an earlier one: the command is ending, and they are ignored until it exits. A second one
    would otherwise cut the end short (the outputs being renamed into place, the summary, the
    temporary folders removed) or kill the command by SIGINT instead of its exit 130: a user
    pressing Ctrl-C again, `timeout` signalling the command and then its process group.
    SIG_IGN, not a Python handler that does nothing: the interpreter's finalisation puts
    SIGINT's default back in place of a Python handler, and one then killed the process."""
    global _stopped
    _stopped = _stopped or stopped
    for sig, handler in previous.items():
        signal.signal(sig, signal.SIG_IGN if _stopped else handler)


def raise_terminated(signum, frame):
    """The command's SIGTERM and SIGHUP handler (see Terminated)."""
    if signum == signal.SIGHUP:
        leave_terminal()
    raise Terminated(signum)


def leave_terminal() -> None:
    """After SIGHUP: what the command still prints goes to /dev/null instead of the terminal
    that is gone, where every write fails (EIO) and would cut the clean-up short. (A hung-up
    terminal is no longer a tty to isatty(); it is still a character device. Files and pipes
    keep what is written to them.)"""
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        try:
            if stat.S_ISCHR(os.fstat(fd).st_mode):
                os.dup2(null, fd)
        except OSError:  # closed
            pass
    os.close(null)


class _ReaderMayLeave:
    """sys.stdout or sys.stderr, whose reader may leave before the command ends: a pipe into
    `head -1` or a closed log viewer. A write that finds the pipe closed (EPIPE) makes the
    stream's file descriptor /dev/null and returns as if written: the run goes on and ends as
    it would have (a BrokenPipeError had ended it with exit 1, before its MP4 or --stats was
    written). Everything else is the stream's own."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def _to_devnull(self) -> None:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, self._stream.fileno())  # for this process only, and for C libraries' writes too
        os.close(null)
        self._stream.flush()  # what the stream still held goes there too

    def __getattr__(self, name):
        return getattr(self._stream, name)


def outlive_readers() -> None:
    """Wrap sys.stdout and sys.stderr in _ReaderMayLeave, once per process: the main process,
    and each spawned one (forked stages inherit the wrappers)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _ReaderMayLeave):
            setattr(sys, name, _ReaderMayLeave(stream))
