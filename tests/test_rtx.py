"""TensorRT for RTX: standard-attention graphs on the CPU, and real engines built here without a GPU.

The graphs `eaglex build --flavour tensorrt-rtx` compiles (exporter/standard_attention.py) run here on
onnxruntime, with the KV cache kept as the GPU backend keeps it (RowCacheSession), and must give the
default graphs' logits and lossless decoding. TensorRT for RTX's builder then compiles them for sm80 and
sm89 on this CPU (skipped where tensorrt-rtx is not installed); running the engines needs a supported GPU
(the last test, skipped elsewhere).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_cli import assert_user_error, eaglex
from test_generate import OracleDrafter, prompts
from test_plugin_graphs import PROMPT, TREE_PARENTS, TREE_TOKENS, tree_mask

from eaglex.exporter.standard_attention import standard_attention_graph
from eaglex.runtime import manifest as contract
from eaglex.runtime.backends.onnxruntime import OrtGraphSession
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationConfig, GenerationStats

MAX_CONTEXT = 160
HAVE_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
needs_rtx = pytest.mark.skipif(
    not HAVE_RTX, reason="tensorrt-rtx is not installed: pip install 'eaglex[tensorrt-rtx]'"
)


class RowCacheSession:
    """A standard-attention graph on onnxruntime, its KV cache laid out as RtxGraphSession keeps it on the
    GPU: [layers, 2, M, kv·D]; the first P rows go in as past_*, the new rows come back and are written
    at row P."""

    def __init__(self, model: onnx.ModelProto, layers: int, kv_width: int, capacity: int = MAX_CONTEXT):
        self.session = ort.InferenceSession(model.SerializeToString())
        self.names = [o.name for o in self.session.get_outputs()]
        self.capacity, self.layers = capacity, layers
        self.cache = np.zeros((layers, 2, capacity, kv_width), np.float32)

    def run(self, feeds: dict, cache_len: int, mask: np.ndarray) -> dict[str, np.ndarray]:
        inputs = {**feeds, "attn_mask": mask}
        for i in range(self.layers):
            for k, kind in enumerate(("key", "value")):
                inputs[f"past_{kind}.{i}"] = self.cache[i, k, None, :cache_len]
        out = dict(zip(self.names, self.session.run(None, inputs), strict=True))
        for i in range(self.layers):
            for k, kind in enumerate(("key", "value")):
                self.cache[i, k, cache_len : cache_len + mask.shape[0]] = out.pop(f"new_{kind}.{i}")[0]
        return out

    def keep(self, start: int, slots: np.ndarray) -> None:
        self.cache[:, :, start : start + len(slots)] = self.cache[:, :, slots]


@pytest.fixture(scope="module")
def artifacts(tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    """(default artifact, plugin-flavoured artifact) of a tiny Llama with the same random drafter."""
    from eaglex.exporter.checkpoints import write_random_drafter
    from eaglex.exporter.export import export_artifact

    model = tiny_model("llama")
    tmp = tmp_path_factory.mktemp("rtx")
    drafter = write_random_drafter(model, tmp / "drafter", draft_vocab_size=64)
    made = [
        export_artifact(
            model, tmp / backend, drafter, max_context=MAX_CONTEXT, backend=backend, progress=lambda _: None
        )
        for backend in ("onnxruntime", "tensorrt")
    ]
    return made[0], made[1]


def rows_session(plugin: Path, graph: str) -> RowCacheSession:
    """`graph` ("target" or "drafter") of a plugin-flavoured artifact, rewritten, on onnxruntime."""
    manifest = json.loads((plugin / "manifest.json").read_text())
    spec = manifest[graph]
    layers = manifest["target"]["num_layers"] if graph == "target" else 1
    model = standard_attention_graph(onnx.load(str(plugin / spec["file"])))
    kv_width = spec["num_kv_heads"] * spec["head_dim"]
    return RowCacheSession(model, layers, kv_width, manifest["target"]["max_context"])


def test_standard_attention_graph_is_valid_opset_23(artifacts):
    _, plugin = artifacts
    model = standard_attention_graph(onnx.load(str(plugin / "target.onnx")))
    onnx.checker.check_model(model, full_check=True)  # types and shapes infer strictly
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Attention") == 4 and "TreeAttention" not in ops
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert inputs["attn_mask"].elem_type == onnx.TensorProto.BOOL
    assert not {"tree_mask", "cache_len", "mask_start"} & set(inputs)
    outputs = {o.name for o in model.graph.output}
    assert {"new_key.3", "new_value.3", "logits", "features"} <= outputs
    assert not any(name.startswith("present_") for name in outputs)


def test_standard_attention_target_matches_default_graph(artifacts):
    default, plugin = artifacts
    t = json.loads((default / "manifest.json").read_text())["target"]
    reference = OrtGraphSession(default / "target.onnx", t["num_layers"], t["num_kv_heads"], t["head_dim"], 2)
    rows = rows_session(plugin, "target")
    nodes, depths = tree_mask(TREE_PARENTS)
    n = len(PROMPT)
    prefill = {"input_ids": np.array([PROMPT]), "position_ids": np.arange(n)[None], "logit_index": [n - 1]}
    verify = {
        "input_ids": np.array([TREE_TOKENS]),
        "position_ids": (n + depths)[None],
        "logit_index": np.arange(len(TREE_TOKENS)),
    }
    verify_mask = np.concatenate([np.ones((len(TREE_TOKENS), n), bool), nodes], axis=1)
    for feeds, cache_len, mask in ((prefill, 0, np.tri(n, dtype=bool)), (verify, n, verify_mask)):
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        want, got = reference.run(feeds, cache_len, mask), rows.run(feeds, cache_len, mask)
        for name in ("logits", "features"):
            assert np.abs(got[name] - want[name]).max() < 1e-4, name
        assert (got["logits"].argmax(-1) == want["logits"].argmax(-1)).all()


@pytest.mark.parametrize("seed", range(2))
def test_standard_attention_graphs_decode_losslessly(artifacts, seed):
    """Target and drafter as standard-attention graphs, with the GPU backend's cache layout: speculative
    output = plain output of the default graphs, with the random drafter and with deep oracle trees."""
    default, plugin = artifacts
    reference, engine = Engine.load(default, threads=2), Engine.load(default, threads=2)
    engine.target, engine.drafter.session = rows_session(plugin, "target"), rows_session(plugin, "drafter")
    for e in (reference, engine):
        e.stop_tokens = set()
    prompt = prompts(2, seed=seed)[seed]

    def generate(e: Engine, **settings) -> list[int]:
        config = GenerationConfig(**{"max_new_tokens": 32, **settings})
        return [t for chunk in e.generate(prompt, config, GenerationStats()) for t in chunk]

    plain = generate(reference, speculative=False)
    assert generate(engine, speculative=False) == plain
    assert generate(engine, top_k=4, depth=4, total_tokens=16) == plain
    engine.drafter = OracleDrafter(plain, len(prompt), seed)  # long accepted paths: keep() moves rows
    assert generate(engine, top_k=4, depth=6, total_tokens=40) == plain


@pytest.fixture(scope="module")
def built(artifacts, tmp_path_factory) -> Path:
    """The plugin-flavoured artifact with fp16 engines for sm80 and sm89, built through the CLI."""
    _, plugin = artifacts
    copy = tmp_path_factory.mktemp("rtx-built") / "artifact"
    shutil.copytree(plugin, copy)
    args = ["--flavour", "tensorrt-rtx", "--compute-capability", "sm80,sm89", "--max-prompt", "64"]
    result = eaglex("build", copy, *args)
    assert result.returncode == 0, result.stderr
    return copy


@needs_rtx
def test_tiny_engines_build_for_sm80_and_sm89(built):
    import tensorrt_rtx

    from eaglex.runtime.manifest import load

    manifest = json.loads((built / "manifest.json").read_text())
    record = manifest["engines"]
    assert record["flavour"] == "tensorrt-rtx" and record["tensorrt_version"] == tensorrt_rtx.__version__
    assert record["compute_capabilities"] == ["sm80", "sm89"] and record["precision"] == "fp16"
    for graph in ("target", "drafter"):
        assert record[graph]["profiles"] == ["prefill", "decode"]
        for capability in ("sm80", "sm89"):
            engine = record[graph]["files"][capability]
            assert engine == f"engines/{graph}.fp16.{capability}.engine"
            assert manifest["files"][engine]["bytes"] > 100_000
    load(built)  # every engine's checksum verifies


@needs_rtx
def test_engine_layers_run_each_tree_attention_as_fused_attention(built):
    """The builder's layer list: in both profiles, each layer's ONNX Attention node runs as one fused
    multi-head attention kernel, fed by the tree mask."""
    from eaglex.exporter.engines_rtx import attention_kernels

    record = json.loads((built / "manifest.json").read_text())["engines"]
    for graph, layers in (("target", 4), ("drafter", 1)):
        for capability in ("sm80", "sm89"):
            kernels = attention_kernels((built / record[graph]["layers"][capability]).read_text())
            assert sorted(kernels) == [f"attention.{i}" for i in range(layers)]
            for names in kernels.values():
                assert len([name for name in names if "mha" in name]) == 2, names  # one per profile


@needs_rtx
@pytest.mark.smollm2
def test_smollm2_engines_build_for_sm80_and_sm89(smollm2_plugin_artifact, tmp_path):
    """SmolLM2-135M's target and (random) drafter, fp16, both profiles: about 40 CPU seconds."""
    from eaglex.exporter.engines import build_engines
    from eaglex.exporter.engines_rtx import attention_kernels

    artifact = tmp_path / "smollm2"  # a copy: the session's artifact stays as it is (onnx refuses links)
    shutil.copytree(smollm2_plugin_artifact, artifact)
    build_engines(artifact, "fp16", 256, None, lambda _: None, "tensorrt-rtx", "sm80,sm89")
    record = json.loads((artifact / "manifest.json").read_text())["engines"]
    for graph, layers, weights in (("target", 30, 269e6), ("drafter", 1, 20e6)):
        assert record[graph]["profiles"] == ["prefill", "decode"]
        for capability in ("sm80", "sm89"):
            assert (artifact / record[graph]["files"][capability]).stat().st_size > weights
            kernels = attention_kernels((artifact / record[graph]["layers"][capability]).read_text())
            assert len(kernels) == layers
            assert all(len([n for n in names if "mha" in n]) == 2 for names in kernels.values())


@needs_rtx
def test_fp32_engines_decompose_the_attention(artifacts, tmp_path):
    """No fused float32 attention kernel exists: fp32 builds mark IAttention decomposable, and the layer
    list shows matmuls and a masked softmax in its place."""
    from eaglex.exporter.engines import build_engines
    from eaglex.exporter.engines_rtx import attention_kernels

    _, plugin = artifacts
    copy = tmp_path / "fp32"
    shutil.copytree(plugin, copy)
    build_engines(copy, "fp32", 64, None, lambda _: None, "tensorrt-rtx", "sm89")
    layers = (copy / "engines" / "target.fp32.sm89.layers.txt").read_text()
    kernels = attention_kernels(layers)
    assert sorted(kernels) == [f"attention.{i}" for i in range(4)]
    for names in kernels.values():
        assert not [n for n in names if "mha" in n] and len([n for n in names if "Exp" in n]) == 2, names


@needs_rtx
def test_unsupported_op_fails_in_one_line(artifacts, tmp_path):
    _, plugin = artifacts
    bad = tmp_path / "bad"
    shutil.copytree(plugin, bad)
    model = onnx.load(str(bad / "target.onnx"))
    model.graph.node.append(onnx.helper.make_node("Bernoulli", ["logits"], ["coin"], name="coin"))
    model.graph.output.append(onnx.helper.make_tensor_value_info("coin", onnx.TensorProto.FLOAT, None))
    onnx.save(model, str(bad / "target.onnx"), save_as_external_data=True, location="target.onnx.data")
    manifest = contract.from_json(json.loads((bad / "manifest.json").read_text()), bad)  # graph changed
    contract.save(dataclasses.replace(manifest, files=contract.file_table(bad, manifest.files)))
    result = eaglex("build", bad, "--flavour", "tensorrt-rtx", "--compute-capability", "sm89")
    assert_user_error(result, "cannot parse the target graph", "Bernoulli")
    assert "engines" not in json.loads((bad / "manifest.json").read_text())
    assert not (bad / "engines").exists(), "a failed build must leave nothing behind"


def test_compute_capabilities_and_engines_refused_clearly(artifacts):
    from eaglex.errors import EaglexError
    from eaglex.exporter.engines_rtx import parse_capabilities
    from eaglex.runtime.backends.tensorrt_rtx import pick_engine

    assert parse_capabilities("sm80, 8.9,SM_80,sm120") == ("sm80", "sm89", "sm120")
    with pytest.raises(EaglexError, match=r"not sm90.*--flavour tensorrt"):
        parse_capabilities("sm90")
    graph = contract.EngineFile(profiles=("decode",), files={"sm80": "a", "sm89": "b"})
    assert pick_engine(graph, ("sm80", "sm89"), "sm89") == "b"
    with pytest.raises(EaglexError, match=r"sm90.*does not serve.*--flavour tensorrt"):
        pick_engine(graph, ("sm80", "sm89"), "sm90")
    with pytest.raises(EaglexError, match=r"built for sm80, sm89, not for this GPU.*capability sm86"):
        pick_engine(graph, ("sm80", "sm89"), "sm86")
    from eaglex.exporter.engines import build_engines

    _, plugin = artifacts
    if HAVE_RTX and _gpu() is None:  # no GPU to build for by default
        with pytest.raises(EaglexError, match=r"no GPU is visible here: name the GPUs.*--compute-capability"):
            build_engines(plugin, flavour="tensorrt-rtx")
    with pytest.raises(EaglexError, match="--compute-capability is for --flavour tensorrt-rtx"):
        build_engines(plugin, flavour="tensorrt", compute_capabilities="sm89")
    assert not (plugin / "engines").exists()


def _gpu() -> str | None:
    try:
        from cuda.bindings import runtime as cudart

        from eaglex.runtime.backends.tensorrt_rtx import gpu_capability

        return gpu_capability(cudart)
    except Exception:  # no cuda-python, no driver or no GPU: all mean no GPU to run on
        return None


@needs_rtx
@pytest.mark.skipif(_gpu() is not None, reason="a GPU is visible")
def test_running_without_a_gpu_says_why(built):
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    result = eaglex("run", built, "--backend", "tensorrt", "--prompt", "w5 w6")
    assert_user_error(result, "no CUDA GPU is visible", "--backend onnxruntime")


@needs_rtx
@pytest.mark.skipif(_gpu() not in ("sm80", "sm89"), reason="needs an sm80 or sm89 GPU (never run so far)")
def test_engines_on_a_gpu_match_onnxruntime(built, artifacts):
    default, _ = artifacts
    cpu, gpu = Engine.load(default, threads=2), Engine.load(built, backend="tensorrt")
    prompt = prompts(1, seed=3)[0]
    feeds = {
        "input_ids": np.array([prompt]),
        "position_ids": np.arange(len(prompt))[None],
        "logit_index": np.arange(len(prompt)),
    }
    mask = np.tri(len(prompt), dtype=bool)
    want, got = cpu.target.run(feeds, 0, mask)["logits"], gpu.target.run(feeds, 0, mask)["logits"]
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()  # fp16 engine against fp32
