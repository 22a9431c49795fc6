"""What every eaglex command shares: the one-line error boundary, progress lines, model names."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from eaglex.errors import EaglexError


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input ends in one line on stderr and exit status 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EaglexError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


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
