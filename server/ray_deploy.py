"""`eaglex serve --ray`: the single-process server's ASGI app, one per Ray Serve replica.

Ray Serve runs the routes; it does not reimplement them. Each replica is a Ray actor that fetches the
artifact (a path on shared storage, or a URI it verifies into a local cache: runtime/artifact_source.py),
loads one engine, and builds the very app `eaglex serve` runs around it (`@serve.ingress()` with
`__serve_build_asgi_app__`). Ray Serve's HTTP proxy routes each request to a replica, streams the
response through, scales the replica count with the ongoing requests per replica, and restarts a replica
whose `check_health` raises.

`build_app` is also an application builder for Ray's own tooling: `serve run
eaglex.server.ray_deploy:build_app artifact=...`, or `import_path` in a Ray Serve config file
(deploy/kuberay-rayservice.yaml).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field, ValidationError, model_validator
from ray import serve
from ray.serve import Application

from eaglex.errors import EaglexError
from eaglex.runtime.artifact_source import artifact_name

APP_NAME = "eaglex"
REPLICA_HEADER = "x-eaglex-replica"
# Seconds between health checks, and how long one may take: a broken engine is noticed within seconds,
# a replica busy decoding a long batch is not declared dead.
HEALTH_CHECK_PERIOD_S = 5.0
HEALTH_CHECK_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 20.0


class RayArgs(BaseModel):
    """The deployment's settings: the CLI's options (`eaglex serve --ray`) under the same names."""

    artifact: str = Field(description="artifact folder on shared storage, or a file:// or http(s):// URI")
    replicas: int | None = Field(default=None, ge=1)
    autoscale: str | None = Field(default=None, description="MIN:MAX replicas, scaled on ongoing requests")
    threads_per_replica: int = Field(default=1, ge=1)
    # The single-process server's options, per replica.
    max_batch: int = Field(default=8, ge=1)
    max_queue: int = Field(default=64, ge=1)
    rows_per_pass: int = Field(default=64, ge=1)
    prefill_chunk: int = Field(default=64, ge=1)
    max_tokens: int = Field(default=256, ge=1)
    model_name: str | None = None

    def served_name(self) -> str:
        """The model id clients send: --model-name, else the artifact folder's name (as eaglex serve)."""
        return self.model_name or artifact_name(self.artifact)

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> RayArgs:
        if self.replicas is not None and self.autoscale is not None:
            raise ValueError("give --replicas N or --autoscale MIN:MAX, not both")
        if self.autoscale is not None:
            parse_autoscale(self.autoscale)
        return self


def parse_autoscale(text: str) -> tuple[int, int]:
    """Parses MIN:MAX into (MIN, MAX) with 0 <= MIN <= MAX and MAX >= 1."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise EaglexError(f"--autoscale {text}: write MIN:MAX replicas, for example 1:4")
    low, high = int(parts[0]), int(parts[1])
    if high < 1 or low > high:
        raise EaglexError(f"--autoscale {text}: need 0 <= MIN <= MAX and MAX >= 1")
    return low, high


def deployment_options(args: RayArgs) -> dict[str, Any]:
    """Ray Serve deployment options for `args`: one CPU per engine thread, and at most `max_batch`
    requests sent to a replica at a time, so a burst waits in Ray's proxy (which may send it to another
    replica) rather than in one replica's queue. Autoscaling aims at a half-full batch per replica: the
    batch still has room for the requests that arrive while a new replica loads."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": args.threads_per_replica},
        "max_ongoing_requests": args.max_batch,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
        "logging_config": {"log_level": "WARNING"},  # no access log line per request, as eaglex serve
    }
    if args.autoscale is not None:
        low, high = parse_autoscale(args.autoscale)
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "initial_replicas": max(low, 1),
            "target_ongoing_requests": max(1, args.max_batch // 2),
        }
    else:
        options["num_replicas"] = args.replicas or 1
    return options


class EngineHealth:
    """Whether a batching engine still serves: one greedy token through the path every request takes.

    A probe that fails means the engine is broken (a failed pass fails every request in it). A probe
    that cannot finish in time, or finds the queue full, means a busy engine, which is healthy as long
    as its worker keeps making passes; one that made none since the last check is stuck or dead."""

    def __init__(self, engine: Any, timeout_s: float = PROBE_TIMEOUT_S):
        self.engine, self.timeout_s = engine, timeout_s
        self.passes = engine.metrics.passes

    async def check(self) -> None:
        from eaglex.runtime.scheduler import QueueFull

        runtime = self.engine.engine
        manifest = runtime.manifest
        tokens = manifest.tokens
        token = tokens.bos_token_id if tokens.bos_token_id is not None else tokens.eos_token_ids[0]
        config = runtime.default_config(max_new_tokens=1, temperature=0.0, speculative=False)
        try:
            await asyncio.wait_for(self._drain(self.engine.stream([token], config)), self.timeout_s)
        except (QueueFull, asyncio.TimeoutError):
            if self.engine.metrics.passes == self.passes:
                raise RuntimeError("the engine is busy but made no pass since the last check") from None
        except Exception as e:
            raise RuntimeError(f"the engine failed a one-token probe: {e}") from e
        finally:
            self.passes = self.engine.metrics.passes

    @staticmethod
    async def _drain(tokens: Any) -> None:
        async for _ in tokens:
            pass


class ReplicaHeader:
    """ASGI middleware naming the replica that answered (response header x-eaglex-replica): shows how
    Ray spread the requests, and which replica a failed request was on."""

    def __init__(self, app: Any, replica: str):
        self.app, self.header = app, (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)


@serve.ingress()
class EaglexReplica:
    """One replica: one engine, and the server's app around it."""

    def __init__(self, args: RayArgs):
        from eaglex.runtime.artifact_source import resolve_artifact
        from eaglex.runtime.engine import Engine
        from eaglex.runtime.scheduler import BatchEngine

        started = time.perf_counter()
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        self.args = args
        path = resolve_artifact(args.artifact, progress=print)
        engine = Engine.load(path, threads=args.threads_per_replica, device="cpu")
        self.engine = BatchEngine(
            engine, args.max_batch, args.max_queue, args.prefill_chunk, args.rows_per_pass
        )
        self.health = EngineHealth(self.engine)
        print(f"replica {self.replica}: engine ready in {time.perf_counter() - started:.1f} s", flush=True)

    def __serve_build_asgi_app__(self) -> Any:
        from eaglex.server.app import create_app

        app = create_app(self.engine, self.args.served_name(), self.args.max_tokens)
        app.add_middleware(ReplicaHeader, replica=self.replica)
        return app

    async def check_health(self) -> None:
        """Raising here makes Ray Serve replace this replica (docs/DEPLOY.md)."""
        await self.health.check()


def ray_args(**options: Any) -> RayArgs:
    """RayArgs from the CLI's options, with a one-line error for a bad combination."""
    try:
        return RayArgs(**options)
    except ValidationError as e:
        first = e.errors()[0]
        where = "--" + "-".join(str(p) for p in first["loc"]).replace("_", "-") if first["loc"] else "--ray"
        raise EaglexError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None


def build_app(args: RayArgs | dict[str, Any]) -> Application:
    """The Ray Serve application: `EaglexReplica` deployed with `deployment_options(args)`. Ray's tools
    (`serve run`, config files) pass the arguments as a dict of strings: they are validated here."""
    if not isinstance(args, RayArgs):
        args = ray_args(**args)
    return serve.deployment(EaglexReplica, name="EaglexReplica", **deployment_options(args)).bind(args)


def check_artifact(source: str) -> None:
    """Refuses a missing or malformed artifact before Ray starts (replicas would retry it for minutes).
    A local path is checked file by file (sizes: checksums are each replica's job); a URI by its
    manifest, which also proves the URI is reachable from here."""
    from eaglex.runtime.artifact_source import is_uri, read_remote_manifest
    from eaglex.runtime.manifest import load

    if is_uri(source):
        read_remote_manifest(source)
    else:
        load(source, checksums=False)


def check_address(address: str | None) -> None:
    """Refuses a HOST:PORT no Ray head answers on at once: ray.init would retry it for minutes."""
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise EaglexError(
            f"--ray-address {address}: no Ray head answers there ({e}); check HOST:PORT (the port "
            "`ray start --head` printed, 6379 by default)"
        ) from None


def run_on_ray(
    args: RayArgs, host: str, port: int, address: str | None, progress: Callable[[str], None]
) -> None:
    """Deploys `args` on Ray Serve and serves until interrupted. address None starts a local Ray
    instance (or joins the cluster in $RAY_ADDRESS); "auto" joins the cluster this machine belongs to."""
    import ray

    check_artifact(args.artifact)
    check_address(address)
    try:
        ray.init(address=address, include_dashboard=False)
    except ConnectionError as e:
        raise EaglexError(
            f"no Ray cluster at {address or os.environ.get('RAY_ADDRESS')} ({e}): start one with "
            "`ray start --head`, or leave out --ray-address to start a local one"
        ) from None
    joined = address is not None or bool(os.environ.get("RAY_ADDRESS"))
    try:
        serve.start(http_options={"host": host, "port": port})
        started = time.perf_counter()
        serve.run(build_app(args), name=APP_NAME, route_prefix="/")
        replicas = args.replicas or 1
        scaling = f"autoscale {args.autoscale}" if args.autoscale else f"{replicas} replica(s)"
        progress(
            f"serving {args.artifact} on Ray Serve at http://{host}:{port} ({scaling}, "
            f"{args.threads_per_replica} threads each; ready in {time.perf_counter() - started:.0f} s); "
            "Ctrl-C stops"
        )
        while True:
            time.sleep(3600)
    finally:
        # On a shared cluster only this application goes; a local instance goes entirely.
        if joined:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
        ray.shutdown()
