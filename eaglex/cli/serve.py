"""`eaglex serve`: an OpenAI-compatible HTTP server with continuous batching of speculative decoding."""

from __future__ import annotations

from pathlib import Path

import click

from eaglex.cli.common import progress, user_errors
from eaglex.errors import EaglexError


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, help="TCP port.")
@click.option("--max-batch", default=8, show_default=True, help="Sequences decoded together per pass.")
@click.option("--max-queue", default=64, show_default=True, help="Waiting requests before 503s.")
@click.option("--threads", default=2, show_default=True, help="CPU threads for onnxruntime.")
@click.option(
    "--rows-per-pass",
    default=64,
    show_default=True,
    help="Rows per target pass shared by the batch's draft trees (trees shrink as the batch grows).",
)
@click.option(
    "--prefill-chunk", default=64, show_default=True, help="Prompt rows per pass (chunked prefill)."
)
@click.option("--max-tokens", default=256, show_default=True, help="New tokens when a request sets none.")
@click.option(
    "--model-name", default=None, help="The model id clients send (default: the artifact's folder name)."
)
@user_errors
def serve(
    artifact: Path,
    host: str,
    port: int,
    max_batch: int,
    max_queue: int,
    threads: int,
    rows_per_pass: int,
    prefill_chunk: int,
    max_tokens: int,
    model_name: str | None,
) -> None:
    """Serve ARTIFACT over OpenAI's API (chat and text completions, models), with /health and /metrics."""
    try:
        import uvicorn

        from eaglex.server.app import create_app
    except ImportError as e:
        raise EaglexError(f"eaglex serve needs {e.name}: pip install 'eaglex[serve]'") from None
    from eaglex.runtime.engine import Engine
    from eaglex.runtime.scheduler import BatchEngine

    if max_tokens < 1:
        raise EaglexError(f"--max-tokens must be at least 1, got {max_tokens}")
    engine = Engine.load(artifact, threads=threads, device="cpu")
    batch = BatchEngine(engine, max_batch, max_queue, prefill_chunk, rows_per_pass)
    name = model_name or artifact.resolve().name
    progress(
        f"serving {name} on http://{host}:{port}/v1 (batch {max_batch}, queue {max_queue}, "
        f"{batch.context_limit} tokens per request)"
    )
    uvicorn.run(create_app(batch, name, max_tokens), host=host, port=port, log_level="warning")
