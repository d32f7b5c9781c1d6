"""The `vidseg` command's entry point (also `python -m vidseg`).

It imports the CLI only when called: every stage process re-imports the entry script
as `__mp_main__`, and should not pay for click and the command modules each time.
"""


def main() -> None:
    from vidseg.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
