"""Quantized artifacts on a tiny model: `eaglex export --quantize` writes MatMulNBits graphs and records
them in the manifest; with float32 activations, speculative greedy output equals the quantized target's
own plain greedy output; `eaglex eval` measures how far each scheme strays from float32."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from test_native import native_build

from eaglex.bench.agreement import artifact_scorer, measure_agreement
from eaglex.cli import main
from eaglex.errors import EaglexError
from eaglex.exporter.quantize import quantize_artifact, streamed_weight_bytes
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationConfig, GenerationStats

__all__ = ["native_build"]  # a fixture of test_native, used here too

MAX_CONTEXT = 160
PROMPTS = [("w5 w17 w30 w99", False), ("w42 w8", True), ("w120 w3 w77 w64 w10 w11", False)]


@pytest.fixture(scope="module")
def models(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """The tiny model and a random drafter exported float32, with quantized copies of that artifact."""
    from eaglex.exporter.checkpoints import write_random_drafter
    from eaglex.exporter.export import export_artifact

    model = tiny_model("llama")
    tmp = tmp_path_factory.mktemp("quantize")
    drafter = write_random_drafter(model, tmp / "drafter", draft_vocab_size=64)
    fp32 = export_artifact(model, tmp / "fp32", drafter, max_context=MAX_CONTEXT, progress=lambda _: None)
    quiet = {"progress": lambda _: None}
    return {
        "model": model,
        "drafter": drafter,
        "fp32": fp32,
        "int8": quantize_artifact(fp32, tmp / "int8", "int8", activations="int8", **quiet),
        "int4": quantize_artifact(fp32, tmp / "int4", "int4", symmetric=False, **quiet),
        "int4-sym": quantize_artifact(fp32, tmp / "int4-sym", "int4", **quiet),  # symmetric by default
        "int8-fp32": quantize_artifact(
            fp32, tmp / "int8-fp32", "int8", "none", embeddings=False, activations="fp32", **quiet
        ),
    }


def ops(graph: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(graph), load_external_data=False).graph.node)


def test_export_quantize_flag(models, tmp_path):
    out = tmp_path / "int4"
    args = ["export", "--model", str(models["model"]), "--drafter", str(models["drafter"]), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--max-context", str(MAX_CONTEXT), "--quantize", "int4"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    # 4 layers x 5 (packed qkv, o, gate, up, down) + lm_head; the drafter: fc, q, k, v, o, mlp, lm_head.
    # The drafter only proposes: int8 activations.
    for role, linear, activations, level in (("target", 21, "fp32", 1), ("drafter", 9, "int8", 4)):
        entry = manifest[role]["quantization"]
        assert entry["weights"] == "int4" and entry["block_size"] == 32 and entry["lm_head"]
        assert entry["activations"] == activations and entry["accuracy_level"] == level
        assert entry["quantized_linear_layers"] == linear
    assert manifest["target"]["quantization"]["embeddings"]
    target = ops(out / "target.onnx")
    assert target["MatMulNBits"] == 21 and target["GatherBlockQuantized"] == 1 and target["MatMul"] == 0
    # Marked for libeaglex's few-row int4 kernel, as quantize_artifact marks them (float32 activations).
    nodes = onnx.load(str(out / "target.onnx"), load_external_data=False).graph.node
    assert {node.domain for node in nodes if node.op_type == "MatMulNBits"} == {"eaglex.cpu"}
    assert ops(out / "drafter.onnx")["MatMul"] == 0
    # The same graphs as quantizing the float32 export afterwards (int4: symmetric by default).
    assert manifest["target"]["quantization"]["symmetric"] is True
    assert (
        manifest["files"]["target.onnx.data"]
        == Engine.load(models["int4-sym"]).manifest.to_json()["files"]["target.onnx.data"]
    )


def test_int8_activations_default_to_plain_decoding(models, tmp_path):
    """With int8 activations speculative output differs from plain decoding: such an artifact decodes
    plain unless asked (`run --spec`), whether quantized afterwards or at export."""
    assert Engine.load(models["int8"]).default_config().speculative is False
    assert Engine.load(models["int4"]).default_config().speculative is True  # float32 activations
    out = tmp_path / "int4a8"
    args = ["export", "--model", str(models["model"]), "--drafter", str(models["drafter"]), "--out", str(out)]
    args += ["--max-context", str(MAX_CONTEXT), "--quantize", "int4", "--activations", "int8"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["tree"]["speculative"] is False


def test_float_embeddings_keep_table_and_lm_head(models):
    artifact = models["int8-fp32"]
    manifest = Engine.load(artifact).manifest.to_json()
    assert manifest["target"]["quantization"]["lm_head"] is False
    assert manifest["target"]["quantization"]["embeddings"] is False
    assert manifest["target"]["quantization"]["activations"] == "fp32"
    assert manifest["drafter"]["quantization"] is None
    assert Engine.load(models["int8"]).manifest.to_json()["target"]["quantization"]["activations"] == "int8"
    target = ops(artifact / "target.onnx")
    assert target["MatMulNBits"] == 20 and target["GatherBlockQuantized"] == 0
    # The float32 lm_head stays float32, marked for libeaglex's kernel (exporter/packed_matmul.py), as is
    # the float32 drafter's every linear layer.
    for graph in ("target.onnx", "drafter.onnx"):
        nodes = onnx.load(str(artifact / graph), load_external_data=False).graph.node
        assert {node.domain for node in nodes if node.op_type in ("MatMul", "MatMulTransB")} == {"eaglex.cpu"}
    assert target["MatMul"] + target["MatMulTransB"] == 1


def test_quantized_graphs_are_smaller(models):
    streamed = {
        name: streamed_weight_bytes(models[name] / "target.onnx") for name in ("fp32", "int8", "int4")
    }
    assert streamed["int4"] < streamed["int8"] < streamed["fp32"] / 2


def test_the_manifest_counts_the_weight_bytes_a_pass_reads(models):
    """bytes_per_pass (export and quantize write it) is what a pass streams, which `eaglex run` divides by
    time for its GB/s: less than the graph's file size once the embedding table is only gathered from."""
    for name in ("fp32", "int4"):
        engine = Engine.load(models[name])
        manifest = engine.manifest
        assert manifest.target.bytes_per_pass == streamed_weight_bytes(models[name] / "target.onnx")
        assert manifest.drafter.bytes_per_pass == streamed_weight_bytes(models[name] / "drafter.onnx")
        stats = GenerationStats(target_passes=3, drafter_calls=2)
        expected = 3 * manifest.target.bytes_per_pass + 2 * manifest.drafter.bytes_per_pass
        assert engine.weight_bytes_read(stats) == expected
    int4 = Engine.load(models["int4"]).manifest
    assert int4.target.bytes_per_pass < int4.graph_bytes(int4.target.file)


def test_a_pass_reads_no_gathered_table(models):
    """A quantized embedding table is only gathered from, one row a token: its data, scales and zero
    points (int4 with zero points) stay out of the bytes a pass reads; the lm_head's are all read."""
    path = models["int4"] / "target.onnx"
    graph = onnx.load(str(path)).graph  # a tiny model: its weights load
    sizes = {t.name: onnx.numpy_helper.to_array(t).nbytes for t in graph.initializer}
    (gather,) = [node for node in graph.node if node.op_type == "GatherBlockQuantized"]
    table = [name for i, name in enumerate(gather.input) if i != 1]
    assert len(table) == 3 and all(sizes[name] > 0 for name in table)  # data, scales, zero points
    assert streamed_weight_bytes(path) == sum(sizes.values()) - sum(sizes[name] for name in table)


def test_symmetric_blocks_have_no_zero_points(models, tmp_path):
    """int4 by default (--symmetric): MatMulNBits without its zero-point input (fewer bytes per pass),
    recorded as such; --zero-points keeps one per block."""
    graph = onnx.load(str(models["int4-sym"] / "target.onnx"), load_external_data=False).graph
    linear = [node for node in graph.node if node.op_type == "MatMulNBits"]
    assert linear and all(len(node.input) == 3 for node in linear)  # A, B, scales: no zero_points
    # ...marked for libeaglex's few-row int4 kernel (exporter/int4_matmul.py): float32 activations
    assert {node.domain for node in linear} == {"eaglex.cpu"}
    asymmetric = onnx.load(str(models["int4"] / "target.onnx"), load_external_data=False).graph
    assert all(len(node.input) == 4 for node in asymmetric.node if node.op_type == "MatMulNBits")
    bytes_read = {k: streamed_weight_bytes(models[k] / "target.onnx") for k in ("int4", "int4-sym")}
    assert bytes_read["int4-sym"] < bytes_read["int4"]
    quantization = json.loads((models["int4-sym"] / "manifest.json").read_text())["target"]["quantization"]
    assert quantization["symmetric"] is True
    args = ["export", "--model", str(models["model"]), "--out", str(tmp_path / "x"), "--zero-points"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--zero-points applies to quantized weights" in result.output


@pytest.mark.parametrize("scheme", ["int4", "int4-sym", "int8-fp32"])  # float32 activations: lossless
def test_speculative_greedy_equals_quantized_plain(native_build, models, scheme):
    """With libeaglex's kernels where the CPU takes them (int4-sym: its few-row int4 kernel)."""
    engine = Engine.load(models[scheme], threads=1)
    engine.stop_tokens = set()  # a random model emits its EOS ids by chance; compare raw continuations
    rng = np.random.default_rng(1)
    for top_k, depth, total_tokens in [(1, 5, 6), (4, 4, 16), (8, 5, 60)]:
        prompt = rng.integers(3, 128, int(rng.integers(1, 12))).tolist()
        plain = generate(engine, prompt, speculative=False)
        spec = generate(engine, prompt, top_k=top_k, depth=depth, total_tokens=total_tokens)
        assert spec == plain


def generate(engine: Engine, prompt: list[int], **settings) -> list[int]:
    config = GenerationConfig(max_new_tokens=40, **settings)
    return [t for chunk in engine.generate(prompt, config, GenerationStats()) for t in chunk]


def test_agreement_with_float32(models):
    reference = Engine.load(models["fp32"], threads=1)
    scorers = {name: artifact_scorer(Engine.load(models[name], threads=1)) for name in ("int8", "int4")}
    result = measure_agreement({"fp32": artifact_scorer(reference), **scorers}, reference, PROMPTS, 24)
    same, int8, int4 = result["fp32"], result["int8"], result["int4"]
    assert same.greedy_match == 1.0 and same.mean_kl < 1e-9 and same.positions == 3 * 24
    assert int8.greedy_match >= 0.9 and int8.mean_kl < 0.01
    assert int4.greedy_match >= 0.6 and int8.mean_kl < int4.mean_kl < 0.5


def test_eval_command(models, tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"text": text, "chat": chat} for text, chat in PROMPTS]))
    args = ["eval", str(models["int8"]), "--reference", str(models["fp32"]), "--prompts", str(prompts)]
    result = CliRunner().invoke(main, [*args, "--new-tokens", "8", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("int8 vs float32: greedy token match ")
    assert "24 positions over 3 prompts" in result.output


def test_refuses_what_it_cannot_quantize(models, tmp_path):
    with pytest.raises(EaglexError, match="already quantized"):
        quantize_artifact(models["int8"], tmp_path / "again", "int4")
    with pytest.raises(EaglexError, match="unknown quantization"):
        quantize_artifact(models["fp32"], tmp_path / "int3", "int3")
    args = ["export", "--model", str(models["model"]), "--out", str(tmp_path / "trt"), "--quantize", "int4"]
    result = CliRunner().invoke(main, [*args, "--backend", "tensorrt"])
    assert result.exit_code == 2 and "onnxruntime backend" in result.output


def test_int8_defaults_to_lossless_float32_activations(models, tmp_path):
    artifact = quantize_artifact(models["fp32"], tmp_path / "int8", "int8", progress=lambda _: None)
    assert Engine.load(artifact).manifest.to_json()["target"]["quantization"]["activations"] == "fp32"
