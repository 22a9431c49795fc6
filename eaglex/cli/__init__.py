"""The `eaglex` command: fetch a model, export it with a drafter, run it. One module per command group."""

from __future__ import annotations

import click

from eaglex.cli import export, measure, run, serve, train
from eaglex.cli.common import resolve_model, user_errors


@click.group()
@click.version_option(package_name="eaglex")
def main() -> None:
    """Deployable EAGLE-3 speculative decoding: export to ONNX, run with a lean runtime."""


for command in (
    export.fetch,
    export.export,
    export.build,
    run.run,
    serve.serve,
    train.train_drafter,
    measure.bench,
    measure.tune,
    measure.evaluate,
):
    main.add_command(command)

__all__ = ["main", "resolve_model", "user_errors"]
