"""Errors the user can fix (bad input, bad options, no room): one line, exit 2, no traceback;
and the signals that stop a command."""
import contextlib
import os
import signal
import stat

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
