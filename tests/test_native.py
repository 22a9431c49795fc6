"""libeaglex, the native runtime (native/, include/eaglex.h): built with CMake and pinned to the Python
runtime by parity tests, since the two implement one algorithm twice (docs/EMBEDDING.md).

Greedy output must equal the Python runtime's token for token (plain and speculative, several trees);
sampling is reproducible for a seed and its rule passes the chi-square test of tests/test_sampling_e2e.py;
bad input through the C API returns the documented codes; two engines in two threads give the
single-threaded outputs. The build is cached under ~/.cache/eaglex/native-build, keyed by the sources.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from speculative_stats import chi_square, critical_value

from eaglex.runtime.engine import Engine

MAX_CONTEXT = 160
PROMPTS = [[5, 17, 42], [1, 9, 33, 70, 2, 101, 64], [120, 3]]
TREES = [(4, 3, 10), (8, 5, 24), (1, 4, 5), (16, 2, 40)]  # (top_k, depth, total_tokens)


@pytest.fixture(scope="session")
def native_build() -> Path:
    """The CMake build of native/ (the library, the C test program, the example), cached by source hash
    in the folder the Python runtime loads libeaglex from (runtime/native_build.py)."""
    from eaglex.errors import EaglexError
    from eaglex.runtime.native_build import NO_HEADERS, build

    missing = [tool for tool in ("cmake", "c++", "cc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"no {', '.join(missing)}: apt-get install cmake g++ (scripts/test.sh does as root)")
    try:
        return build(progress=lambda _: None)
    except EaglexError as e:
        if NO_HEADERS in str(e):
            pytest.skip(
                "onnxruntime headers unavailable: apt-get download of trixie's libonnxruntime-dev failed"
            )
        raise


@pytest.fixture(scope="module")
def artifact(tiny_model, tmp_path_factory) -> Path:
    from eaglex.exporter.checkpoints import write_random_drafter
    from eaglex.exporter.export import export_artifact

    model = tiny_model("llama")
    tmp = tmp_path_factory.mktemp("native")
    drafter = write_random_drafter(model, tmp / "drafter", draft_vocab_size=64)
    return export_artifact(
        model, tmp / "artifact", drafter_dir=drafter, max_context=MAX_CONTEXT, progress=lambda _: None
    )


def run_c(build: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(build / "eaglex_c_test"), *args], input=stdin, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def native_generate(build: Path, artifact: Path, prompts: list[list[int]], threads: int = 1, **settings):
    """Token ids and stats lines of the C API for each prompt (settings as c_api_test's key=value)."""
    stdin = "".join(" ".join(map(str, p)) + "\n" for p in prompts)
    keys = [f"{k}={v}" for k, v in settings.items()]
    lines = run_c(build, "generate", str(artifact), str(threads), *keys, stdin=stdin).stdout.splitlines()
    ids = [[int(t) for t in line.split()[1:]] for line in lines if line.startswith("ids:")]
    stats = [dict(kv.split("=") for kv in line.split()[1:]) for line in lines if line.startswith("stats:")]
    return ids, stats


def python_generate(engine: Engine, prompts: list[list[int]], **overrides) -> list[list[int]]:
    config = engine.default_config(**overrides)
    return [[t for chunk in engine.generate(p, config) for t in chunk] for p in prompts]


@pytest.fixture(scope="module")
def engine(artifact) -> Engine:
    engine = Engine.load(artifact, threads=1)
    engine.stop_tokens = set()  # a random model emits its EOS ids by chance; compare raw continuations
    return engine


def test_greedy_parity_with_the_python_runtime(native_build, artifact, engine):
    accepted_drafts = 0
    for top_k, depth, total in TREES:
        expected = python_generate(
            engine, PROMPTS, max_new_tokens=40, top_k=top_k, depth=depth, total_tokens=total
        )
        got, stats = native_generate(
            native_build, artifact, PROMPTS, max_new=40, tree_top_k=top_k, tree_depth=depth,
            tree_total=total, stop_at_eos=0,
        )  # fmt: skip
        assert got == expected, (top_k, depth, total)
        accepted_drafts += sum(int(s["new"]) - 1 - int(s["passes"]) for s in stats)
    plain, _ = native_generate(native_build, artifact, PROMPTS, max_new=40, speculative=0, stop_at_eos=0)
    assert plain == python_generate(engine, PROMPTS, max_new_tokens=40, speculative=False)
    assert plain == expected  # lossless: speculative output is plain greedy output
    assert accepted_drafts > 0  # some drafts were accepted, so cache compaction ran


def test_greedy_parity_at_the_context_limit(native_build, artifact, engine):
    """Long generations run into the KV capacity: trees are truncated and the budget ends at the limit."""
    prompt = [list(range(3, 120))]
    expected = python_generate(engine, prompt, max_new_tokens=200, top_k=8, depth=5, total_tokens=24)
    got, _ = native_generate(native_build, artifact, prompt, max_new=200, tree_top_k=8, tree_depth=5,
                             tree_total=24, stop_at_eos=0)  # fmt: skip
    assert got == expected and len(got[0]) == MAX_CONTEXT - len(prompt[0])


def test_eos_stops_as_in_python(native_build, artifact):
    engine = Engine.load(artifact, threads=1)  # stops at the artifact's eos ids
    prompts = [[i, i + 1] for i in range(3, 60, 4)]
    got, _ = native_generate(native_build, artifact, prompts, max_new=60)
    assert got == python_generate(engine, prompts, max_new_tokens=60)


def test_default_config_follows_tunes_plain_verdict(native_build, artifact, tmp_path):
    """eaglex_default_config speculates unless the manifest's tree says plain decoding is faster, and looks
    up drafts in the prompt where it says so, as Engine.default_config does."""
    _, stats = native_generate(native_build, artifact, PROMPTS[:1], max_new=20, stop_at_eos=0)
    assert int(stats[0]["drafter_calls"]) > 0
    plain = tmp_path / "plain"
    shutil.copytree(artifact, plain)
    manifest = json.loads((plain / "manifest.json").read_text())
    manifest["tree"]["speculative"] = False  # as eaglex tune writes it
    (plain / "manifest.json").write_text(json.dumps(manifest))
    _, stats = native_generate(native_build, plain, PROMPTS[:1], max_new=20, stop_at_eos=0)
    assert int(stats[0]["drafter_calls"]) == 0 and int(stats[0]["passes"]) == 19
    # And prompt lookup where the manifest's tree asks for it (tree.ngram, as tune writes it).
    manifest["tree"]["ngram"] = 6
    (plain / "manifest.json").write_text(json.dumps(manifest))
    engine = Engine.load(plain, threads=1)
    engine.stop_tokens = set()
    assert engine.default_config().ngram == 6 and not engine.default_config().speculative
    assert engine.default_config(speculative=False).ngram == 0  # a mode asked for: no lookup unless asked
    prompt = [*PROMPTS[1], 40, 41] * 3 + PROMPTS[1][:1]  # repeats itself: lookup finds continuations
    ids, stats = native_generate(native_build, plain, [prompt], max_new=40, stop_at_eos=0)
    assert ids == python_generate(engine, [prompt], max_new_tokens=40)
    assert int(stats[0]["drafter_calls"]) == 0 and int(stats[0]["passes"]) < 39  # drafts were accepted


def test_sampling_is_reproducible_for_a_seed(native_build, artifact):
    settings = {"max_new": 30, "temperature": 1.0, "top_p": 0.9, "stop_at_eos": 0}
    first, _ = native_generate(native_build, artifact, PROMPTS, seed=7, **settings)
    again, _ = native_generate(native_build, artifact, PROMPTS, seed=7, **settings)
    other, _ = native_generate(native_build, artifact, PROMPTS, seed=8, **settings)
    plain, _ = native_generate(native_build, artifact, PROMPTS, seed=7, speculative=0, **settings)
    assert first == again and first != other
    assert all(len(ids) == 30 for ids in first + plain)


def synthetic_exact() -> np.ndarray:
    """Exact joint distribution of the first two tokens after the first, for sampling_test.cpp's target."""
    vocab, temperature = 8, 0.7

    def p(prefix: list[int]) -> np.ndarray:
        h = 0.5 + sum((i + 1) * (t + 1) * 0.37 for i, t in enumerate(prefix))
        logits = (2.0 * np.sin(1.3 * np.arange(vocab) + h) + 0.25 * np.arange(vocab)).astype(np.float32)
        z = np.exp((logits - logits.max()) / temperature)
        return z / z.sum()

    joint = np.zeros((vocab, vocab))
    for a, pa in enumerate(p([])):
        for b, pb in enumerate(p([a])):
            joint[b] += pa * pb * p([a, b])
    return joint


def sampled_counts(build: Path, seed: int, flawed: bool = False) -> np.ndarray:
    args = [
        str(build / "eaglex_sampling_test"),
        "counts",
        "20000",
        str(seed),
        *(["flawed"] if flawed else []),
    ]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return np.array([[int(x) for x in line.split()] for line in out.splitlines()])


def test_sampling_filters_on_hand_computed_cases(native_build):
    """Temperature, nucleus and top-k filters, ties at the edge, the seeded generator, and the draw."""
    result = subprocess.run(
        [str(native_build / "eaglex_sampling_test"), "selftest"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "selftest: ok" in result.stdout, result.stderr


def test_native_sampling_rule_keeps_the_target_distribution(native_build):
    exact = synthetic_exact()
    stat, df = chi_square(sampled_counts(native_build, seed=3), exact)
    assert df >= 20 and stat < critical_value(df), (stat, df)
    stat, df = chi_square(sampled_counts(native_build, seed=3, flawed=True), exact)
    assert stat > critical_value(df), (stat, df)  # the test has the power to catch a wrong rule


def test_bad_input_returns_documented_codes(native_build, artifact, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(artifact, damaged)
    with open(damaged / "drafter.onnx.data", "r+b") as f:  # same size, one byte changed: sha256 catches it
        byte = f.read(1)
        f.seek(0)
        f.write(bytes([byte[0] ^ 0xFF]))
    out = run_c(native_build, "errors", str(artifact), str(damaged)).stdout
    assert "errors: ok" in out, out
    assert "fails its sha256 checksum" in out and "context limit" in out and "does not exist" in out
    assert "engine busy: status 7" in out


def test_two_engines_in_two_threads_match_one_thread(native_build, artifact):
    stdin = "".join(" ".join(map(str, p)) + "\n" for p in PROMPTS)
    assert "threads: ok" in run_c(native_build, "threads", str(artifact), "3", stdin=stdin).stdout


def test_example_streams_the_completion(native_build, artifact):
    engine = Engine.load(artifact, threads=1)
    stdin = "".join(" ".join(map(str, p)) + "\n" for p in PROMPTS)
    result = subprocess.run(
        [str(native_build / "eaglex_stream"), str(artifact), "20", "1"],
        input=stdin, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    got = [[int(t) for t in line.split()] for line in result.stdout.splitlines()]
    assert got == python_generate(engine, PROMPTS, max_new_tokens=20)
    bad = subprocess.run(
        [str(native_build / "eaglex_stream"), "/nonexistent"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: artifact folder")


@pytest.mark.smollm2
def test_greedy_parity_on_smollm2(native_build, smollm2_artifact):
    """The real model (random drafter): the native and Python runtimes agree for plain and tree decoding.
    (experiments/bench_native.py checks the same with the shipped drafter, whose drafts are accepted.)"""
    engine = Engine.load(smollm2_artifact, threads=2, checksums=False)
    prompts = [engine.encode("Write a short poem about the ocean.", chat=True)]
    expected = python_generate(engine, prompts, max_new_tokens=16, top_k=8, depth=5, total_tokens=24)
    settings = {"threads": 2, "verify": 1, "max_new": 16}
    got, _ = native_generate(
        native_build, smollm2_artifact, prompts, tree_top_k=8, tree_depth=5, tree_total=24, **settings
    )
    plain, _ = native_generate(native_build, smollm2_artifact, prompts, speculative=0, **settings)
    assert got == expected and plain == expected


def test_sha256_matches_the_manifest(native_build, artifact):
    """Opening with sha256 checks (the default) accepts an intact artifact."""
    got, _ = native_generate(native_build, artifact, PROMPTS[:1], max_new=2, verify=0)
    assert len(got[0]) == 2


def detokenize(build: Path, artifact: Path, ids: list[list[int]]) -> subprocess.CompletedProcess:
    stdin = "".join(" ".join(map(str, i)) + "\n" for i in ids)
    args = [str(build / "eaglex_c_test"), "detokenize", str(artifact)]
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120)


def test_detokenize_refuses_other_tokenizers(native_build, artifact):
    result = detokenize(native_build, artifact, [[5, 6]])  # the tiny model's tokenizer is word-level
    assert result.returncode == 2 and "byte-level BPE tokenizers only" in result.stderr


@pytest.mark.smollm2
def test_detokenize_matches_the_tokenizer_in_chunks(native_build, smollm2_artifact):
    from eaglex.runtime.tokenizer import Tokenizer

    tokenizer = Tokenizer(smollm2_artifact)
    texts = ["Hello, world! Ünïcödé ✓ 日本語 🙂", "def f(x):\n\treturn x  # two  spaces"]
    texts.append("<|im_start|>user hi")  # a special token: skipped
    ids = [tokenizer.encode(t) for t in texts] + [list(range(0, 49152, 997))]
    result = detokenize(native_build, smollm2_artifact, ids)
    assert result.returncode == 0, result.stderr
    got = [bytes.fromhex(line[4:]).decode("utf-8", "replace") for line in result.stdout.splitlines()]
    assert got == [tokenizer.decode(i) for i in ids]
