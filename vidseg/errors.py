"""Errors the user can fix (bad input, bad options, no room): one line, exit 2, no traceback."""


class InputError(Exception):
    """Raised for anything the user can fix; the CLI prints `vidseg: error: <message>` and exits 2.

    The message says what is wrong and what to do. Raised inside a stage process it travels
    to the supervisor, which ends the run with exit 2 instead of 1.
    """

    exit_code = 2
