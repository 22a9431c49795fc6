"""`eaglex serve --ray` on a local Ray instance: 2 replicas of 1 thread, the official `openai` client.

The artifact reaches the replicas as an http:// URI (a loopback http.server), so every replica fetches
and verifies it into its own cache first. Ray's HTTP proxy listens on 127.0.0.1; Ray's internal services
bind to this machine's own address (Ray maps 127.0.0.1 to it). Every wait is bounded: a hang fails."""

from __future__ import annotations

import asyncio
import http.server
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="needs eaglex[ray] (ray[serve])")
openai = pytest.importorskip("openai", reason="needs the openai client")
ray_deploy = pytest.importorskip("eaglex.server.ray_deploy")
from ray import serve  # noqa: E402

MAX_CONTEXT = 512
PROMPTS = [f"w{3 + i} w{40 + 7 * i} w{90 - 5 * i} w{11 + 3 * i}" for i in range(8)]
NEW_TOKENS = 48
LONG = 300  # the fault test's requests: long enough to be caught streaming when the replica dies
REQUEST_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def artifact(tiny_model, tmp_path_factory) -> Path:
    from eaglex.exporter.checkpoints import write_random_drafter
    from eaglex.exporter.export import export_artifact

    tmp = tmp_path_factory.mktemp("ray")
    drafter = write_random_drafter(tiny_model("llama"), tmp / "drafter", seed=1)
    out = tmp / "www" / "artifact"
    out.parent.mkdir()
    return export_artifact(
        tiny_model("llama"), out, drafter, max_context=MAX_CONTEXT, progress=lambda _: None
    )


@pytest.fixture(scope="module")
def expected(artifact) -> dict[tuple[str, int], str]:
    """Each prompt's greedy text (NEW_TOKENS and LONG new tokens) from one engine, alone and without
    speculation."""
    from eaglex.runtime.engine import Engine

    engine = Engine.load(artifact, threads=1)
    texts = {}
    for n in (NEW_TOKENS, LONG):
        config = engine.default_config(max_new_tokens=n, temperature=0.0, speculative=False)
        texts |= {(p, n): "".join(engine.stream_text(engine.encode(p), config)) for p in PROMPTS}
    return texts


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def batch(artifact):
    from eaglex.runtime.engine import Engine
    from eaglex.runtime.scheduler import BatchEngine

    batch = BatchEngine(Engine.load(artifact, threads=1), max_batch=2, max_queue=2)
    yield batch
    batch.close()


def test_health_probe_passes_on_a_working_engine(batch) -> None:
    asyncio.run(ray_deploy.EngineHealth(batch).check())
    assert batch.metrics.finished == 1  # the probe went through the engine


def test_health_probe_fails_on_a_broken_engine(batch, monkeypatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("onnxruntime lost its session")

    monkeypatch.setattr(batch.step_runner, "target_pass", broken)
    with pytest.raises(RuntimeError, match=r"probe: .*lost its session"):
        asyncio.run(ray_deploy.EngineHealth(batch).check())


def test_health_probe_tells_busy_from_stuck(batch, monkeypatch) -> None:
    health = ray_deploy.EngineHealth(batch, timeout_s=0.0)
    config = batch.engine.default_config(max_new_tokens=400, temperature=0.0)
    long = threading.Thread(target=lambda: list(batch.generate([5, 6, 7], config)))
    long.start()
    deadline = time.monotonic() + 30
    while batch.metrics.passes <= health.passes:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    asyncio.run(health.check())  # no answer in time, but passes go on: busy, healthy
    entered, stuck = threading.Event(), threading.Event()
    original = batch.step_runner.target_pass

    def hang(*args: object) -> object:
        entered.set()
        stuck.wait(30)
        return original(*args)

    monkeypatch.setattr(batch.step_runner, "target_pass", hang)
    assert entered.wait(30)  # the worker is in a pass that does not end
    health.passes = batch.metrics.passes
    try:
        with pytest.raises(RuntimeError, match="no pass since the last check"):
            asyncio.run(health.check())
    finally:
        stuck.set()
        long.join(30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base_url(artifact, tmp_path_factory):
    """Ray (2 CPUs, no dashboard), the artifact served over loopback http, 2 replicas of 1 thread."""
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=artifact.parent))
    threading.Thread(target=files.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{files.server_address[1]}/artifact"
    cache = tmp_path_factory.mktemp("replica-cache")
    port = free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"EAGLEX_CACHE": str(cache), "OMP_NUM_THREADS": "1"}},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = ray_deploy.ray_args(artifact=uri, replicas=2, threads_per_replica=1, max_batch=4)
        serve.run(ray_deploy.build_app(args), name=ray_deploy.APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        files.shutdown()
        files.server_close()


def client(base_url: str) -> openai.OpenAI:
    # No retries: a failed request must show as failed, not be hidden by the client.
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0, timeout=REQUEST_TIMEOUT_S)


def stream(
    base_url: str, model: str, prompt: str, result: dict | None = None, tokens: int = NEW_TOKENS
) -> dict:
    """One streaming completion into `result` as it goes: its replica (header), whether its first text
    arrived, its text, whether it finished, or the error it ended with."""
    result = {} if result is None else result
    result.update(prompt=prompt, tokens=tokens, replica=None, started=False, text="", done=False, error=None)
    try:
        raw = client(base_url).completions.with_raw_response.create(
            model=model, prompt=prompt, max_tokens=tokens, temperature=0.0, stream=True
        )
        result["replica"] = raw.headers.get(ray_deploy.REPLICA_HEADER)
        for chunk in raw.parse():
            result["text"] += "".join(c.text for c in chunk.choices)
            result["started"] = result["started"] or bool(result["text"])
        result["done"] = True
    except Exception as e:  # the fault test expects some; the others assert there are none
        result["error"] = f"{type(e).__name__}: {e}"
    return result


def model_name(base_url: str) -> str:
    return client(base_url).models.list().data[0].id


def replica_pids(replica: str) -> list[int]:
    from ray._private import state

    name = f"SERVE_REPLICA::{ray_deploy.APP_NAME}#EaglexReplica#{replica}"
    return [a["Pid"] for a in state.actors().values() if a["Name"] == name and a["State"] == "ALIVE"]


def running_replicas() -> int:
    deployment = serve.status().applications[ray_deploy.APP_NAME].deployments["EaglexReplica"]
    return deployment.replica_states.get("RUNNING", 0)


def test_eight_streaming_clients_lossless_over_both_replicas(base_url, expected) -> None:
    model = model_name(base_url)
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        results = list(pool.map(lambda p: stream(base_url, model, p), PROMPTS))
    for r in results:
        assert whole(r, expected), r
    # max_ongoing_requests = max_batch = 4 per replica: 8 at once need both.
    assert len({r["replica"] for r in results}) == 2, [r["replica"] for r in results]


def whole(result: dict, expected: dict) -> bool:
    """Finished without an error, with exactly the engine's plain greedy text."""
    return result["error"] is None and result["text"] == expected[result["prompt"], result["tokens"]]


def wait_for(condition, timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(poll)


def test_killed_replica_fails_its_requests_cleanly_and_comes_back(base_url, expected) -> None:
    model = model_name(base_url)
    results = [{} for _ in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        futures = [
            pool.submit(stream, base_url, model, p, r, LONG) for p, r in zip(PROMPTS, results, strict=True)
        ]
        # Kill the replica of a request that is streaming: its process dies mid-generation.
        in_flight = lambda: [r for r in results if r.get("started") and not r["done"]]  # noqa: E731
        wait_for(in_flight, REQUEST_TIMEOUT_S, "a request to start streaming", poll=0.01)
        victim = in_flight()[0]["replica"]
        (pid,) = replica_pids(victim)
        os.kill(pid, signal.SIGKILL)
        for future in futures:
            future.result(timeout=2 * REQUEST_TIMEOUT_S)  # none hangs
    # The other replica's requests finish whole; those on the killed one (or not yet answered by any)
    # end with an error the client sees, or were retried and are whole.
    survivors = [r for r in results if r["replica"] not in (victim, None)]
    assert survivors and all(whole(r, expected) for r in survivors), survivors
    lost = [r for r in results if r not in survivors]
    assert any(r["error"] for r in lost)
    for r in lost:
        assert r["error"] is not None or whole(r, expected), r
    print("errors on the killed replica:", sorted({r["error"] for r in results if r["error"]}))
    # Ray Serve replaces the replica: a new one (new id) serves next to the survivor, all whole again.
    wait_for(lambda: not replica_pids(victim), 60, "the killed replica to be noticed")
    seen: set[str] = set()

    def replaced() -> bool:
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            again = list(pool.map(lambda p: stream(base_url, model, p), PROMPTS))
        assert all(whole(r, expected) for r in again), again
        seen.update(r["replica"] for r in again)
        return len(seen - {victim}) == 2

    wait_for(replaced, 60, "a replacement replica to serve")
    assert victim not in seen and running_replicas() == 2
