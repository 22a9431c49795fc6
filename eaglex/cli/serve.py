"""`eaglex serve`: an OpenAI-compatible HTTP server with continuous batching of speculative decoding."""

from __future__ import annotations

import click

from eaglex.cli.common import progress, user_errors
from eaglex.errors import EaglexError


@click.command()
@click.argument("artifact")
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
@click.option(
    "--ray", is_flag=True, help="Run on Ray Serve: replicas, each with its own engine (docs/DEPLOY.md)."
)
@click.option("--replicas", default=None, type=int, help="With --ray: number of replicas [default: 1].")
@click.option("--autoscale", default=None, help="With --ray: MIN:MAX replicas, scaled on ongoing requests.")
@click.option("--threads-per-replica", default=1, show_default=True, help="With --ray: threads per replica.")
@click.option("--ray-address", default=None, help="With --ray: join this Ray cluster ('auto': this node's).")
@user_errors
def serve(
    artifact: str,
    host: str,
    port: int,
    max_batch: int,
    max_queue: int,
    threads: int,
    rows_per_pass: int,
    prefill_chunk: int,
    max_tokens: int,
    model_name: str | None,
    ray: bool,
    replicas: int | None,
    autoscale: str | None,
    threads_per_replica: int,
    ray_address: str | None,
) -> None:
    """Serve ARTIFACT over OpenAI's API (chat and text completions, models), with /health and /metrics.

    ARTIFACT is a folder, or a file:// or http(s):// URI fetched into a local cache and verified."""
    if ray:
        per_replica = {"max_batch": max_batch, "max_queue": max_queue, "rows_per_pass": rows_per_pass}
        per_replica |= {"prefill_chunk": prefill_chunk, "max_tokens": max_tokens, "model_name": model_name}
        scaling = {"replicas": replicas, "autoscale": autoscale, "threads_per_replica": threads_per_replica}
        return _serve_on_ray(artifact, host, port, ray_address, **scaling, **per_replica)
    if replicas is not None or autoscale is not None or ray_address is not None:
        raise EaglexError("--replicas, --autoscale and --ray-address need --ray")
    try:
        import uvicorn

        from eaglex.server.app import create_app
    except ImportError as e:
        raise EaglexError(f"eaglex serve needs {e.name}: pip install 'eaglex[serve]'") from None
    from eaglex.runtime.artifact_source import artifact_name, resolve_artifact
    from eaglex.runtime.batch_trees import describe
    from eaglex.runtime.engine import Engine
    from eaglex.runtime.scheduler import BatchEngine

    if max_tokens < 1:
        raise EaglexError(f"--max-tokens must be at least 1, got {max_tokens}")
    engine = Engine.load(resolve_artifact(artifact, progress=progress), threads=threads, device="cpu")
    batch = BatchEngine(engine, max_batch, max_queue, prefill_chunk, rows_per_pass)
    name = model_name or artifact_name(artifact)
    progress(
        f"serving {name} on http://{host}:{port}/v1 (batch {max_batch}, queue {max_queue}, "
        f"{batch.context_limit} tokens per request)"
    )
    progress(describe(batch.trees, rows_per_pass))
    uvicorn.run(create_app(batch, name, max_tokens), host=host, port=port, log_level="warning")


def _serve_on_ray(artifact: str, host: str, port: int, ray_address: str | None, **settings: object) -> None:
    """The same app on Ray Serve replicas (server/ray_deploy.py), with the server's options per replica."""
    try:
        from eaglex.server.ray_deploy import ray_args, run_on_ray
    except ImportError as e:
        raise EaglexError(f"--ray needs {e.name}: pip install 'eaglex[ray]'") from None
    run_on_ray(ray_args(artifact=artifact, **settings), host, port, ray_address, progress)
