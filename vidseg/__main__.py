"""The `vidseg` command's entry point (also `python -m vidseg`).

It imports the CLI only when called: every stage process re-imports the entry script
as `__mp_main__`, and should not pay for click and the command modules each time.
"""
import os
import sys


def main() -> None:
    _open_closed_std_streams()
    try:
        from vidseg.errors import outlive_readers

        outlive_readers()
        from vidseg.cli import main as cli
    except KeyboardInterrupt:  # Ctrl-C while the command loads: before its handlers exist
        sys.exit(130)
    except Exception:  # noqa: BLE001 - only running out of memory is told here
        _exit_if_out_of_memory()
    try:
        cli()
    except Exception:  # noqa: BLE001 - the commands import NumPy, PyAV, ... when they run
        _exit_if_out_of_memory()


def _exit_if_out_of_memory() -> None:
    """In an `except` block: exit 1 with the one line of `errors.memory_message` when running
    out of memory caused the error (a low `ulimit -v`: a library that cannot be mapped as the
    command imports it); else raise the error again."""
    from vidseg.errors import memory_message

    message = memory_message(sys.exc_info()[1])
    if message is None:
        raise
    sys.stderr.write(f"vidseg: error: {message}\n")
    sys.exit(1)


def _open_closed_std_streams() -> None:
    """Run with stdout or stderr closed (`2>&-`), Python has no sys.stderr and the next file
    opened takes fd 2: the libraries' writes there failed or landed in that file. Each closed
    one is /dev/null instead."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free fd: this one, unless an earlier was free
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)  # os.open's are not: the stage processes would not have it
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))


if __name__ == "__main__":
    main()
