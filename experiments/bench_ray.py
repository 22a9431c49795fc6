"""Ray Serve against the single-process server: aggregate tok/s and p95 latency at 1, 4 and 8 clients.

Three servers of one artifact, each with 2 onnxruntime threads in all, run side by side on this machine:

  single   eaglex serve --threads 2              (one process, one engine)
  ray-1x2  eaglex serve --ray, 1 replica of 2 threads  (Ray Serve's proxy in front of one engine)
  ray-2x1  eaglex serve --ray, 2 replicas of 1 thread  (two engines, each batching its half)

single against ray-1x2 is the cost of Ray's proxy; ray-1x2 against ray-2x1 is one engine against two.
They take turns (interleaved, the order rotated each round) so that a noisy shared machine hits all of
them alike. Each turn: N clients send MT-bench chat prompts back to back, non-streaming (exact token
counts from `usage`), for --seconds. Writes ray.json, ray.md (a table) and ray.png next to --out.

  python experiments/bench_ray.py /work/artifacts/smollm2 --out docs/bench/ray
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

CONFIGS = ("single", "ray-1x2", "ray-2x1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"{url} did not come up in {timeout:.0f} s")


def start_servers(artifact: str, max_batch: int) -> tuple[dict[str, str], subprocess.Popen]:
    import ray
    from ray import serve

    from eaglex.server.ray_deploy import build_app, ray_args

    port = free_port()
    command = ["serve", artifact, "--threads", "2", "--port", str(port), "--max-batch", str(max_batch)]
    single = subprocess.Popen([sys.executable, "-m", "eaglex.cli", *command], stderr=subprocess.DEVNULL)
    ray_port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)  # 2 + 2 CPUs reserved by replicas
    serve.start(http_options={"host": "127.0.0.1", "port": ray_port})
    for name, replicas, threads in (("ray-1x2", 1, 2), ("ray-2x1", 2, 1)):
        settings = {"replicas": replicas, "threads_per_replica": threads, "max_batch": max_batch}
        args = ray_args(artifact=artifact, **settings)
        serve.run(build_app(args), name=name, route_prefix=f"/{name}")
    urls = {
        "single": f"http://127.0.0.1:{port}",
        "ray-1x2": f"http://127.0.0.1:{ray_port}/ray-1x2",
        "ray-2x1": f"http://127.0.0.1:{ray_port}/ray-2x1",
    }
    for url in urls.values():
        wait_ready(url)
    return urls, single


def load(url: str, prompts: list[str], clients: int, seconds: float, max_tokens: int) -> dict:
    """`clients` threads sending prompts back to back for `seconds`; requests in flight at the end
    finish and count."""
    model = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
    records: list[tuple[float, int]] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        with httpx.Client(timeout=300) as http:
            i = k
            while time.monotonic() < stop:
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
                    "max_tokens": max_tokens,
                    "temperature": 0.0,
                }
                started = time.monotonic()
                response = http.post(f"{url}/v1/chat/completions", json=body)
                latency = time.monotonic() - started
                with lock:
                    if response.status_code == 200:
                        records.append((latency, response.json()["usage"]["completion_tokens"]))
                    else:
                        errors[0] += 1
                i += clients

    began = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    latencies = sorted(r[0] for r in records)
    tokens = sum(r[1] for r in records)
    return {
        "requests": len(records),
        "errors": errors[0],
        "tokens": tokens,
        "seconds": elapsed,
        "tok_s": tokens / elapsed,
        "p50_s": statistics.median(latencies) if latencies else None,
        "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else None,
    }


def summarize(runs: list[dict]) -> dict:
    """Per (config, clients): the runs' tokens and seconds pooled, latencies' p95 as the median of runs."""
    table: dict = {}
    for run in runs:
        table.setdefault((run["config"], run["clients"]), []).append(run)
    out = {}
    for (config, clients), group in table.items():
        tokens, seconds = sum(r["tokens"] for r in group), sum(r["seconds"] for r in group)
        out[f"{config}@{clients}"] = {
            "config": config,
            "clients": clients,
            "tok_s": tokens / seconds,
            "p95_s": statistics.median(r["p95_s"] for r in group if r["p95_s"] is not None),
            "requests": sum(r["requests"] for r in group),
            "errors": sum(r["errors"] for r in group),
        }
    return out


def markdown(summary: dict, levels: list[int]) -> str:
    lines = [
        "| clients | " + " | ".join(f"{c} tok/s | {c} p95 s" for c in CONFIGS) + " | ray-1x2 / single | "
        "ray-2x1 / ray-1x2 |",
        "|---" * (2 * len(CONFIGS) + 3) + "|",
    ]
    for n in levels:
        row = [summary[f"{c}@{n}"] for c in CONFIGS]
        cells = " | ".join(f"{r['tok_s']:.1f} | {r['p95_s']:.2f}" for r in row)
        lines.append(
            f"| {n} | {cells} | {row[1]['tok_s'] / row[0]['tok_s']:.2f} | "
            f"{row[2]['tok_s'] / row[1]['tok_s']:.2f} |"
        )
    errors = sum(r["errors"] for r in summary.values())
    lines.append(f"\nerrors: {errors}")
    return "\n".join(lines)


def plot(summary: dict, levels: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for config in CONFIGS:
        left.plot(levels, [summary[f"{config}@{n}"]["tok_s"] for n in levels], marker="o", label=config)
        right.plot(levels, [summary[f"{config}@{n}"]["p95_s"] for n in levels], marker="o", label=config)
    left.set(xlabel="concurrent clients", ylabel="aggregate tokens/s", title="throughput")
    right.set(xlabel="concurrent clients", ylabel="p95 request latency (s)", title="latency")
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("artifact")
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    parser.add_argument("--levels", default="1,4,8")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=16, help="MT-bench prompts, in the file's order")
    args = parser.parse_args()
    from eaglex.bench.datasets import load_prompts

    prompts = [p.text for p in load_prompts("mt-bench", args.prompts)]
    levels = [int(n) for n in args.levels.split(",")]
    urls, single = start_servers(args.artifact, args.max_batch)
    runs = []
    try:
        for r in range(args.rounds):
            for n in levels:
                order = CONFIGS[r % 3 :] + CONFIGS[: r % 3]
                for config in order:
                    result = {"config": config, "clients": n, "round": r}
                    result.update(load(urls[config], prompts, n, args.seconds, args.max_tokens))
                    runs.append(result)
                    print(json.dumps(result), flush=True)
    finally:
        import ray
        from ray import serve

        single.terminate()
        single.wait(30)
        serve.shutdown()
        ray.shutdown()
    summary = summarize(runs)
    machine = f"{os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "machine": machine, "runs": runs}, indent=1)
    )
    table = markdown(summary, levels)
    args.out.with_suffix(".table.md").write_text(table + "\n")
    plot(summary, levels, args.out.with_suffix(".png"))
    print(table)


if __name__ == "__main__":
    main()
