"""The `eaglex` command's entry point (and `python -m eaglex`): the CLI inside one interrupt boundary.

Ctrl-C can land anywhere, also inside an import (of click, numpy or onnxruntime), where libraries may turn
it into an ImportError. So the first thing the process does is note every SIGINT; whatever then ends
the program, once an interrupt was noted it ends with "interrupted" and status 130, never a traceback.
"""

import signal
import sys


def main() -> None:
    noted = []

    def note(signum: int, frame: object) -> None:
        noted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, note)
    try:
        from eaglex.cli import main as cli

        cli()
    except SystemExit:
        raise
    except BaseException:
        if not noted:
            raise
        sys.stderr.write("interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
