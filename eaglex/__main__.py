"""The `eaglex` command's entry point (and `python -m eaglex`): the CLI inside one interrupt boundary.

Ctrl-C can land anywhere, also inside an import (of click, numpy or onnxruntime), where libraries may turn
it into an ImportError, or inside a finalizer, where Python prints it as "Exception ignored" and carries
on. So the first thing the process does is note every SIGINT: once one was noted, whatever ends the
program ends it with "interrupted" and status 130, never a traceback; an interrupt swallowed by a
finalizer is delivered again.
"""

import os
import signal
import sys


def _exit_interrupted() -> None:
    # The stack has unwound (every `finally` ran); interpreter shutdown could only add noise from
    # half-imported modules, so it is skipped.
    sys.stdout.flush()
    sys.stderr.write("interrupted\n")
    sys.stderr.flush()
    os._exit(130)


def main() -> None:
    noted = []

    def note(signum: int, frame: object) -> None:
        noted.append(signum)
        raise KeyboardInterrupt

    def unraisable(info: "sys.UnraisableHookArgs") -> None:
        if isinstance(info.exc_value, KeyboardInterrupt):
            # Raised again in 10 ms, once the finalizer has returned (raised here, this hook would
            # swallow it too).
            signal.signal(signal.SIGALRM, note)
            signal.setitimer(signal.ITIMER_REAL, 0.01)
        else:
            sys.__unraisablehook__(info)

    signal.signal(signal.SIGINT, note)
    sys.unraisablehook = unraisable
    try:
        from eaglex.cli import main as cli

        cli()
    except SystemExit as e:
        if noted and e.code == 130:
            _exit_interrupted()
        raise
    except BaseException:
        if not noted:
            raise
        _exit_interrupted()


if __name__ == "__main__":
    main()
