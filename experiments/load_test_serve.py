"""Load test of `eaglex serve` on loopback: N concurrent streaming chat clients for a bounded time each.

Starts `eaglex serve ARTIFACT` on a free 127.0.0.1 port (or llama.cpp's own OpenAI-compatible server,
llama-cpp-python[server], on a GGUF with --llamacpp, or uses --url), then for each concurrency level runs
that many clients, each sending prompts one after another (greedy, --max-tokens), until --seconds have
passed or --max-requests are done. Prompts: MT-bench first turns, or the first turns of the ShareGPT
conversations the drafter trainer held out (--prompt-set sharegpt-heldout). Reports per level: aggregate
tokens/s (completion tokens over the level's wall time), p50/p95 time to first token, p50/p95 time per
output token after the first, errors, and the server's RSS at the start and end of the level; writes JSON,
a markdown table and a plot.

    python experiments/load_test_serve.py /work/artifacts/smollm2 --levels 1,2,4,8,16 --seconds 60 --out DIR
    python experiments/load_test_serve.py /work/artifacts/smollm2 --llamacpp ~/.cache/eaglex/gguf/X.gguf ...

llama.cpp's server runs as a user would start it: its defaults plus the same threads and n_ctx 2048 (it
decodes one request at a time; the others wait in its queue: --interrupt_requests False, since by default a
new request cuts off the one streaming), with OMP_WAIT_POLICY=passive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from eaglex.bench.datasets import load_prompts


async def one_request(http: httpx.AsyncClient, url: str, model: str, text: str, max_tokens: int) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    # Tokens: the usage chunk's count; llama-cpp-python's server sends none, but streams a chunk per token.
    start, first, tokens, chunks = time.perf_counter(), None, 0, 0
    async with http.stream("POST", f"{url}/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return {"error": response.status_code}
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            elif event["choices"] and event["choices"][0]["delta"].get("content"):
                chunks += 1
                first = first or time.perf_counter()
    end = time.perf_counter()
    first, tokens = first or end, tokens or chunks
    return {"ttft": first - start, "tpot": (end - first) / max(tokens - 1, 1), "tokens": tokens, "end": end}


async def level(url: str, model: str, texts: list[str], clients: int, seconds: float, args) -> dict:
    """`clients` loops sending prompts until the deadline or the request cap; results of every request."""
    deadline, results, next_prompt = time.perf_counter() + seconds, [], iter(range(args.max_requests))

    async def client(http: httpx.AsyncClient) -> None:
        for i in next_prompt:
            if time.perf_counter() >= deadline:
                return
            try:
                results.append(await one_request(http, url, model, texts[i % len(texts)], args.max_tokens))
            except httpx.HTTPError as e:
                results.append({"error": type(e).__name__})

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=args.seconds * 4, limits=httpx.Limits(max_connections=64)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    wall = time.perf_counter() - start
    done = [r for r in results if "error" not in r]
    ttft, tpot = [r["ttft"] for r in done], [r["tpot"] for r in done]
    return {
        "clients": clients,
        "requests": len(done),
        "errors": len(results) - len(done),
        "tokens": sum(r["tokens"] for r in done),
        "seconds": wall,
        "tokens_per_second": sum(r["tokens"] for r in done) / wall,
        "ttft_p50": float(np.percentile(ttft, 50)) if ttft else None,
        "ttft_p95": float(np.percentile(ttft, 95)) if ttft else None,
        "tpot_p50": float(np.percentile(tpot, 50)) if tpot else None,
        "tpot_p95": float(np.percentile(tpot, 95)) if tpot else None,
    }


async def warm_up(url: str, texts: list[str], max_tokens: int, clients: int) -> None:
    """`clients` requests at once (different prompts), so that the server has run the batch sizes and
    prompt lengths of the levels before the memory baseline is taken."""
    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(
            *(one_request(http, url, "model", texts[i % len(texts)], max_tokens) for i in range(clients))
        )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def server_command(args, port: int) -> list[str]:
    if args.llamacpp:
        threads = str(args.threads)
        return [
            *(sys.executable, "-m", "llama_cpp.server", "--model", str(args.llamacpp), "--port", str(port)),
            *("--host", "127.0.0.1", "--n_threads", threads, "--n_threads_batch", threads),
            *("--n_ctx", "2048", "--model_alias", "model", "--verbose", "False"),
            *("--interrupt_requests", "False"),  # its default cancels a stream when another request comes
        ]
    return [
        *(sys.executable, "-m", "eaglex.cli", "serve", args.artifact, "--port", str(port)),
        *("--threads", str(args.threads), "--max-batch", str(args.max_batch), "--model-name", "model"),
        *("--max-queue", "256", "--rows-per-pass", str(args.rows_per_pass)),
    ]


def prompt_texts(args) -> list[str]:
    if args.prompt_set == "mt-bench":
        return [p.text for p in load_prompts("mt-bench", args.prompts)]
    import runpy

    from eaglex.runtime.engine import Engine

    script = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "drafter_acceptance.py"))
    engine = Engine.load(args.artifact, threads=1, checksums=False)  # its tokenizer sizes the prompts
    return [p.text for p in script["heldout_prompts"](engine, args.prompts, 2048 - 2 * args.max_tokens)]


def start_server(args) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    quiet = subprocess.DEVNULL if args.llamacpp else None  # uvicorn's access log, a line per request
    # OpenMP threads that sleep at barriers, as in eaglex bench (bench/llamacpp.py says why): the load
    # clients share the two cores, and spinning llama.cpp threads then took up to seconds per token.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "passive")}
    server = subprocess.Popen(server_command(args, port), stderr=quiet, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/models", timeout=1).status_code == 200:  # both servers have it
                return server, url
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not start")


def table(rows: list[dict]) -> str:
    lines = [
        "| clients | requests | errors | tok/s | TTFT p50 s | TTFT p95 s | TPOT p50 ms | TPOT p95 ms "
        "| RSS start/end MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['tokens_per_second']:.1f} | "
            f"{r['ttft_p50']:.2f} | {r['ttft_p95']:.2f} | {1000 * r['tpot_p50']:.0f} | "
            f"{1000 * r['tpot_p95']:.0f} | {r['rss_start']:.0f} / {r['rss_end']:.0f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = [r["clients"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(clients, [r["tokens_per_second"] for r in rows], "o-")
    left.set(
        xscale="log", xlabel="concurrent streaming clients", ylabel="aggregate tokens/s", title="throughput"
    )
    left.set_xticks(clients, [str(c) for c in clients])
    for key, label in (("ttft_p50", "TTFT p50"), ("ttft_p95", "TTFT p95")):
        right.plot(clients, [r[key] for r in rows], "o-", label=label)
    for key, label in (("tpot_p50", "time per token p50"), ("tpot_p95", "time per token p95")):
        right.plot(clients, [r[key] for r in rows], "s--", label=label)
    right.set(
        xscale="log", yscale="log", xlabel="concurrent streaming clients", ylabel="seconds", title="latency"
    )
    right.set_xticks(clients, [str(c) for c in clients])
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--url", help="an already running server's /v1 URL (its model id must be 'model')")
    parser.add_argument("--llamacpp", type=Path, help="a GGUF: load-test llama.cpp's server instead")
    parser.add_argument("--prompt-set", choices=("mt-bench", "sharegpt-heldout"), default="mt-bench")
    parser.add_argument("--levels", default="1,2,4,8,16")
    parser.add_argument("--seconds", type=float, default=60.0, help="per level")
    parser.add_argument("--max-requests", type=int, default=200, help="per level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=80, help="MT-bench first turns used")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--rows-per-pass", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("serve-load"))
    parser.add_argument(
        "--warmup-clients", type=int, default=1, help="concurrent requests before the first level"
    )
    args = parser.parse_args()
    texts = prompt_texts(args)
    server, url = (None, args.url) if args.url else start_server(args)
    rows = []
    try:
        # Requests first (--warmup-clients at once), so model loading and first-call allocations are not
        # part of level 1 and the memory baseline is taken after the shapes of the levels have been run.
        asyncio.run(warm_up(url, texts, args.max_tokens, args.warmup_clients))
        for clients in (int(c) for c in args.levels.split(",")):
            rss_start = rss_mb(server.pid) if server else float("nan")
            row = asyncio.run(level(url, "model", texts, clients, args.seconds, args))
            row.update(rss_start=rss_start, rss_end=rss_mb(server.pid) if server else float("nan"))
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if server:
            server.terminate()
            server.wait(30)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "results.md").write_text(table(rows) + "\n")
    plot(rows, args.out / "results.png")
    print(table(rows))


if __name__ == "__main__":
    main()
