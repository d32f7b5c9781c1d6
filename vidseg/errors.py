"""Errors the user can fix (bad input, bad options, no room): one line, exit 2, no traceback."""


class InputError(Exception):
    """Raised for anything the user can fix; the CLI prints `vidseg: error: <message>` and exits 2.

    The message says what is wrong and what to do. Raised inside a stage process it travels
    to the supervisor, which ends the run with exit 2 instead of 1.
    """

    exit_code = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, docker stop, systemd) to the command: unwinds like Ctrl-C, exit
    143. While a pipeline runs, the supervisor takes SIGTERM itself and drains as for Ctrl-C.
    Also how a sink stage asked to stop (vidseg.stages.STOP_SIGNAL) leaves its loop."""

    exit_code = 128 + 15  # 128 + SIGTERM, the shell's convention


def raise_terminated(signum, frame):
    """The command's SIGTERM handler (see Terminated)."""
    raise Terminated()
