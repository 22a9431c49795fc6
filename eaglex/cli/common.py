"""What every eaglex command shares: the one-line error boundary, progress lines, model names."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from eaglex.errors import EaglexError


def one_line(message: str) -> str:
    """A message as one printable line: newlines folded, characters stderr cannot encode escaped."""
    text = " ".join(str(message).split("\n"))
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def fail(message: str, status: int = 2) -> NoReturn:
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(status)


def interrupted() -> NoReturn:
    click.echo("interrupted", err=True)
    sys.exit(130)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input ends in one line on stderr and exit status 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EaglexError as e:
            fail(str(e))
        except KeyboardInterrupt:
            interrupted()

    return wrapper


class EaglexGroup(click.Group):
    """Click's own errors (an unknown option, a value of the wrong type) end like every other error: one
    `error:` line naming the fix, exit status 2 (click's standalone mode prints usage over three lines)."""

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> NoReturn:
        extra.pop("standalone_mode", None)
        try:
            result = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help() if e.ctx else e.format_message())
            sys.exit(0)
        except click.UsageError as e:
            fail(
                f"{e.format_message()} (see {e.ctx.command_path if e.ctx else 'eaglex'} --help)", e.exit_code
            )
        except click.exceptions.Abort:
            interrupted()
        except click.ClickException as e:
            fail(e.format_message(), 2)
        sys.exit(result if isinstance(result, int) else 0)


def progress(message: str) -> None:
    click.echo(message, err=True)


def resolve_model(model: str) -> Path:
    """A local Hugging Face folder, or the name of a model `eaglex fetch` knows."""
    path = Path(model)
    if path.is_dir():
        return path
    from eaglex.exporter.fetch import MODELS, fetch_model

    if model in MODELS:
        return fetch_model(model, progress)
    raise EaglexError(f"--model {model}: no such folder, and not one of {', '.join(sorted(MODELS))}")
