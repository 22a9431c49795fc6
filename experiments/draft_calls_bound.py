"""What fewer drafter calls per round could save at most (issue 37, item 3): the cost of an onnxruntime call
itself, against what a round of the loop `eaglex run` uses spends on drafting.

    python experiments/draft_calls_bound.py ARTIFACT [--prompts 10] [--max-new 128] [--threads 2]

1. A call's own cost: N calls of a graph of one MatMul against one call of a graph of N MatMuls (the
   drafter's widest input, 1152, by 1152; 4 rows, as a tree level; the runtime's session options), in turn;
   the difference per call avoided is what onnxruntime spends on a call beyond its kernels (preparing the
   run, waking its threads). libeaglex's own preparation of a drafter call (about 3 us, BENCHMARKS "second
   sitting") would go too.
2. The rounds: chat prompts decoded with the artifact's tuned tree on the native loop (libeaglex, as
   `eaglex run`): drafter calls, drafting time and round time per round. Folding every growth call of a
   round into the extend call would save at most (calls per round - 1) x (1.) a round.
"""

from __future__ import annotations

import statistics
import time

import harness
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from eaglex.runtime.backends.onnxruntime import session_options
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationStats

WIDTH, ROWS, CHAIN = 1152, 4, 8


def chain_session(nodes: int, threads: int) -> ort.InferenceSession:
    weight = np.random.default_rng(0).standard_normal((WIDTH, WIDTH), dtype=np.float32) * 0.01
    names = ["x", *(f"t{i}" for i in range(nodes - 1)), "y"]
    graph = helper.make_graph(
        [helper.make_node("MatMul", [names[i], "w"], [names[i + 1]]) for i in range(nodes)],
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [ROWS, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [ROWS, WIDTH])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options, cpu = session_options(threads), ["CPUExecutionProvider"]
    return ort.InferenceSession(model.SerializeToString(), options, providers=cpu)


def per_call_us(threads: int, reps: int = 5, calls: int = 300) -> float:
    """Median over `reps` alternations of (CHAIN one-node calls - one CHAIN-node call) / (CHAIN - 1)."""
    one, chain = chain_session(1, threads), chain_session(CHAIN, threads)
    x = {"x": np.random.default_rng(1).standard_normal((ROWS, WIDTH), dtype=np.float32)}

    def median_us(run) -> float:
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return 1e6 * statistics.median(times[calls // 5 :])

    saved = []
    for _ in range(reps):
        apart = median_us(lambda: [one.run(None, x) for _ in range(CHAIN)])
        together = median_us(lambda: chain.run(None, x))
        saved.append((apart - together) / (CHAIN - 1))
    return statistics.median(saved)


def rounds(engine: Engine, prompts: list[str], max_new: int) -> dict[str, float]:
    passes = calls = 0
    draft = decode = 0.0
    for text in prompts:
        stats = GenerationStats()
        config = engine.default_config(max_new_tokens=max_new, speculative=True)
        for _ in engine.generate(engine.encode(text, chat=True), config, stats):
            pass
        passes, calls = passes + stats.target_passes, calls + stats.drafter_calls
        draft, decode = draft + stats.draft_seconds, decode + stats.decode_seconds
    return {
        "rounds": passes,
        "drafter_calls_per_round": calls / passes,
        "draft_ms_per_round": 1e3 * draft / passes,
        "round_ms": 1e3 * decode / passes,
    }


def main() -> None:
    parser = harness.parser(__doc__, artifact=True)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--max-new", type=int, default=128)
    args = parser.parse_args()
    print(harness.machine(args.threads))
    call_us = per_call_us(args.threads)
    print(f"1. a call beyond its kernels: {call_us:.1f} us ({CHAIN} one-MatMul calls against one of {CHAIN})")
    engine = Engine.load(args.artifact, threads=args.threads, runtime="native")
    r = rounds(engine, harness.chat_prompts(args.prompts), args.max_new)
    saved_ms = (r["drafter_calls_per_round"] - 1) * call_us / 1e3
    print(
        f"2. {r['rounds']} rounds: {r['drafter_calls_per_round']:.2f} drafter calls, "
        f"{r['draft_ms_per_round']:.3f} ms drafting of {r['round_ms']:.3f} ms a round"
    )
    of_round, of_draft = 100 * saved_ms / r["round_ms"], 100 * saved_ms / r["draft_ms_per_round"]
    print(
        f"   one call a round instead would save at most {saved_ms:.3f} ms a round, "
        f"{of_round:.2f}% of it ({of_draft:.1f}% of drafting)"
    )


if __name__ == "__main__":
    main()
