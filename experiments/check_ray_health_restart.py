"""Breaks one replica's engine and watches Ray Serve replace it (not a test: it reaches the engine
through Ray's internals, `__ray_call__` and the replica actor's private attributes, which change between
Ray versions; and Ray waits for 3 failed health checks, 5 s apart).

  python experiments/check_ray_health_restart.py /work/artifacts/smollm2
"""

from __future__ import annotations

import sys
import time

import httpx
import ray
from ray import serve

from eaglex.server.ray_deploy import APP_NAME, REPLICA_HEADER, build_app, ray_args

PORT = 8783


def break_engine(actor: object) -> str:
    """Runs inside the replica actor: every pass of its engine fails from now on."""

    def failing_pass(*args: object) -> None:
        raise RuntimeError("simulated onnxruntime failure")

    replica = actor._replica_impl._user_callable_wrapper._callable  # type: ignore[attr-defined]
    replica.engine.step_runner.target_pass = failing_pass
    return "engine broken"


def main(artifact: str) -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        serve.run(build_app(ray_args(artifact=artifact, replicas=1)), name=APP_NAME)
        url = f"http://127.0.0.1:{PORT}/v1/completions"
        model = httpx.get(f"http://127.0.0.1:{PORT}/v1/models").json()["data"][0]["id"]
        body = {"model": model, "prompt": "Hello", "max_tokens": 8, "temperature": 0}
        first = httpx.post(url, json=body, timeout=60)
        old = first.headers[REPLICA_HEADER]
        print(f"replica {old}: {first.status_code} {first.json()['choices'][0]['text']!r}")
        actor = ray.get_actor(f"SERVE_REPLICA::{APP_NAME}#EaglexReplica#{old}", namespace="serve")
        print(ray.get(actor.__ray_call__.remote(break_engine)))
        broken = httpx.post(url, json=body, timeout=60)
        print(f"replica {old}, broken: {broken.status_code} {broken.text}")
        began = time.monotonic()
        while time.monotonic() - began < 120:
            response = httpx.post(url, json=body, timeout=60)
            if response.status_code == 200 and response.headers[REPLICA_HEADER] != old:
                text, new = response.json()["choices"][0]["text"], response.headers[REPLICA_HEADER]
                print(f"replaced after {time.monotonic() - began:.0f} s by {new}: {text!r}")
                return
            time.sleep(2)
        print("not replaced within 120 s")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
