"""The `vidseg` command's entry point (also `python -m vidseg`).

It imports the CLI only when called: every stage process re-imports the entry script
as `__mp_main__`, and should not pay for click and the command modules each time.
The pipeline commands start their stage server (vidseg.stage_server) even before that.
"""


import sys

# Pipeline commands that never open a window: their stage server starts before the CLI loads.
EARLY_SERVER = ("file", "bench", "demo")


def main() -> None:
    if sys.argv[1:2] and sys.argv[1] in EARLY_SERVER:
        from vidseg import stage_server

        stage_server.start_for_command(window=False)
    from vidseg.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
