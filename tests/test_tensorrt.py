"""The TensorRT path end to end: `eaglex build` on a tiny TensorRT-flavoured artifact, then the TensorRT
backend against onnxruntime running the same graphs through the op's CPU reference.

Needs TensorRT, cuda-python, nvcc, TensorRT's C++ headers and a GPU; skipped (with the reason) elsewhere.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip(
    "tensorrt", reason="TensorRT is not installed (it needs an NVIDIA GPU): pip install 'eaglex[tensorrt]'"
)
pytest.importorskip("cuda.bindings", reason="cuda-python is not installed: pip install 'eaglex[tensorrt]'")
pytest.importorskip("onnxruntime_extensions", reason="the CPU reference runs through onnxruntime-extensions")
if shutil.which("nvcc") is None:
    pytest.skip("nvcc (the CUDA toolkit) is needed to build the plugin library", allow_module_level=True)

from test_generate import OracleDrafter, prompts
from test_plugin_graphs import TREE_PARENTS, TREE_TOKENS, tree_mask

from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationConfig, GenerationStats

MAX_CONTEXT = 160


@pytest.fixture(scope="module")
def built(tiny_model, tmp_path_factory):
    """A tiny Llama exported with --backend tensorrt, with fp32 engines."""
    from eaglex.exporter.checkpoints import write_random_drafter
    from eaglex.exporter.engines import build_engines
    from eaglex.exporter.export import export_artifact

    model = tiny_model("llama")
    tmp = tmp_path_factory.mktemp("tensorrt")
    drafter = write_random_drafter(model, tmp / "drafter", draft_vocab_size=64)
    artifact = export_artifact(
        model, tmp / "artifact", drafter, max_context=MAX_CONTEXT, backend="tensorrt", progress=lambda _: None
    )
    return build_engines(artifact, "fp32", max_prompt=64, progress=lambda _: None)


def generate(engine: Engine, prompt: list[int], **settings) -> list[int]:
    config = GenerationConfig(**{"max_new_tokens": 32, **settings})
    return [t for chunk in engine.generate(prompt, config, GenerationStats()) for t in chunk]


def test_manifest_records_the_engines(built):
    manifest = json.loads((built / "manifest.json").read_text())
    engines = manifest["engines"]
    assert engines["precision"] == "fp32" and engines["max_prompt"] == 64
    for graph in ("target", "drafter"):
        assert engines[graph]["profiles"] == ["prefill", "decode"]
        assert engines[graph]["file"] in manifest["files"]
    assert engines["plugin_library"] in manifest["files"]
    Engine.load(built, backend="tensorrt")  # checksums of the new files verify


def test_target_engine_matches_the_reference(built):
    from eaglex.runtime.backends.onnxruntime import OrtGraphSession
    from eaglex.runtime.backends.tensorrt import TrtGraphSession

    manifest = json.loads((built / "manifest.json").read_text())
    t = manifest["target"]
    reference = OrtGraphSession(
        built / "target.onnx", t["num_layers"], t["num_kv_heads"], t["head_dim"], 2, plugin_op=True
    )
    engine = TrtGraphSession(
        built / manifest["engines"]["target"]["file"],
        built / manifest["engines"]["plugin_library"],
        t["num_layers"],
        t["num_kv_heads"],
        t["head_dim"],
    )
    prompt = [5, 17, 99, 3, 64, 120, 31]
    nodes, depths = tree_mask(TREE_PARENTS)
    n = len(prompt)
    calls = [
        (
            {
                "input_ids": np.array([prompt]),
                "position_ids": np.arange(n)[None],
                "logit_index": np.array([n - 1]),
            },
            0,
            np.tri(n, dtype=bool),
        ),
        (
            {
                "input_ids": np.array([TREE_TOKENS]),
                "position_ids": (n + depths)[None],
                "logit_index": np.arange(len(TREE_TOKENS)),
            },
            n,
            np.concatenate([np.ones((len(TREE_TOKENS), n), bool), nodes], axis=1),
        ),
    ]
    for feeds, cache_len, mask in calls:
        want, got = reference.run(feeds, cache_len, mask), engine.run(feeds, cache_len, mask)
        assert np.abs(got["logits"] - want["logits"]).max() < 1e-3
        assert (got["logits"].argmax(-1) == want["logits"].argmax(-1)).all()
        np.testing.assert_allclose(got["features"], want["features"], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("seed", range(3))
def test_tensorrt_decodes_like_onnxruntime(built, seed):
    cpu, gpu = Engine.load(built, threads=2), Engine.load(built, backend="tensorrt")
    for engine in (cpu, gpu):
        engine.stop_tokens = set()
    prompt = prompts(3, seed=seed)[seed]
    plain = generate(cpu, prompt, speculative=False)
    assert generate(gpu, prompt, speculative=False) == plain
    assert generate(gpu, prompt, top_k=4, depth=4, total_tokens=16) == plain
    gpu.drafter = OracleDrafter(plain, len(prompt), seed)  # deep acceptance: KV compaction on the device
    assert generate(gpu, prompt, top_k=4, depth=6, total_tokens=40) == plain


def test_cuda_graph_replay_equals_direct_execution(built):
    from eaglex.runtime.backends.tensorrt import TrtGraphSession

    manifest = json.loads((built / "manifest.json").read_text())
    t, engines = manifest["target"], manifest["engines"]
    sessions = [
        TrtGraphSession(
            built / engines["target"]["file"],
            built / engines["plugin_library"],
            t["num_layers"],
            t["num_kv_heads"],
            t["head_dim"],
            cuda_graphs=flag,
        )
        for flag in (False, True)
    ]
    tokens = [5, 9, 13, 21, 34, 55]
    for step, token in enumerate(tokens):  # decode steps of one row: the same shapes, replayed from step 2
        mask = np.ones((1, step + 1), bool)
        feeds = {
            "input_ids": np.array([[token]]),
            "position_ids": np.array([[step]]),
            "logit_index": np.array([0]),
        }
        a, b = (s.run(feeds, step, mask) for s in sessions)
        np.testing.assert_array_equal(a["logits"], b["logits"])
    assert sessions[1].graphs, "no CUDA graph was captured"


def test_fp16_engine_stays_close_to_fp32(built, tmp_path):
    from eaglex.exporter.engines import build_engines

    copy = tmp_path / "fp16"
    shutil.copytree(built, copy)
    build_engines(copy, "fp16", max_prompt=64, progress=lambda _: None)
    fp32, fp16 = Engine.load(built, backend="tensorrt"), Engine.load(copy, backend="tensorrt")
    prompt = prompts(1, seed=5)[0]
    out32 = fp32.target.run(
        {
            "input_ids": np.array([prompt]),
            "position_ids": np.arange(len(prompt))[None],
            "logit_index": np.arange(len(prompt)),
        },
        0,
        np.tri(len(prompt), dtype=bool),
    )
    out16 = fp16.target.run(
        {
            "input_ids": np.array([prompt]),
            "position_ids": np.arange(len(prompt))[None],
            "logit_index": np.arange(len(prompt)),
        },
        0,
        np.tri(len(prompt), dtype=bool),
    )
    scale = np.abs(out32["logits"]).max()
    assert np.abs(out16["logits"] - out32["logits"]).max() < 0.05 * scale
