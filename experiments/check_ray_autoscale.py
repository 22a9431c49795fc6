"""Watches `eaglex serve --ray --autoscale 1:2` scale up under load on a local Ray instance (not a test:
Ray Serve waits about 30 s of sustained load before it adds a replica, too slow for CI).

  python experiments/check_ray_autoscale.py /work/artifacts/smollm2
"""

from __future__ import annotations

import sys
import threading
import time

import httpx
import ray
from ray import serve

from eaglex.server.ray_deploy import APP_NAME, REPLICA_HEADER, build_app, ray_args

PORT, CLIENTS, SECONDS = 8779, 8, 90


def replica_states() -> dict[str, int]:
    return dict(serve.status().applications[APP_NAME].deployments["EaglexReplica"].replica_states)


def main(artifact: str) -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        serve.run(build_app(ray_args(artifact=artifact, autoscale="1:2", max_batch=4)), name=APP_NAME)
        model = httpx.get(f"http://127.0.0.1:{PORT}/v1/models").json()["data"][0]["id"]
        stop, answered, counts = time.monotonic() + SECONDS, set(), {"ok": 0, "errors": 0}

        def client() -> None:
            body = {"model": model, "prompt": "Once upon a time", "max_tokens": 64, "temperature": 0}
            with httpx.Client(timeout=120) as http:
                while time.monotonic() < stop:
                    response = http.post(f"http://127.0.0.1:{PORT}/v1/completions", json=body)
                    counts["ok" if response.status_code == 200 else "errors"] += 1
                    answered.add(response.headers.get(REPLICA_HEADER))

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        began = time.monotonic()
        while any(t.is_alive() for t in threads):
            print(f"{time.monotonic() - began:4.0f} s  {replica_states()}  answered by {len(answered)}")
            time.sleep(10)
        print(f"requests {counts['ok']}, errors {counts['errors']}, replicas that answered {len(answered)}")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
