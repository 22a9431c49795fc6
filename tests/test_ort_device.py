"""onnxruntime on GPUs (`eaglex export --precision fp16`, `eaglex run --device cuda`), checked as far as a
machine without a GPU allows: float16 graphs run and decode losslessly on the CPU, and the device code path
(KV cache in an onnxruntime buffer, bound by address, compacted by kv_compact.onnx) runs on the CPU
provider and matches the numpy path. The CUDA provider itself runs only where onnxruntime-gpu sees a GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_generate import OracleDrafter, prompts, run

from eaglex.errors import EaglexError
from eaglex.exporter.kv_compact import write_kv_compact_graph
from eaglex.runtime.backends import onnxruntime as ort_backend
from eaglex.runtime.backends.onnxruntime import OrtGraphSession, resolve_device
from eaglex.runtime.engine import Engine
from eaglex.runtime.kv_cache import DeviceKVCache, KVCache

MAX_CONTEXT = 160
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def artifacts(tiny_model, tmp_path_factory):
    """The tiny llama with a random drafter, exported in fp32 and in fp16."""
    from eaglex.exporter.checkpoints import write_random_drafter
    from eaglex.exporter.export import export_artifact

    model = tiny_model("llama")
    tmp = tmp_path_factory.mktemp("device")
    drafter = write_random_drafter(model, tmp / "drafter", draft_vocab_size=64)
    return {
        precision: export_artifact(
            model,
            tmp / precision,
            drafter_dir=drafter,
            max_context=MAX_CONTEXT,
            progress=lambda _: None,
            precision=precision,
        )
        for precision in ("fp32", "fp16")
    }


def load(artifact, device_cache: bool = False, device: str = "cpu") -> Engine:
    """An engine whose graph sessions keep their caches in onnxruntime buffers when device_cache is set."""
    engine = Engine.load(artifact, threads=1, device=device)
    engine.stop_tokens = set()  # a random model emits its EOS ids by chance; compare raw continuations
    if device_cache:
        manifest, spec = engine.manifest, engine.manifest.target

        def session(file: str, layers: int, kv_heads: int, head_dim: int) -> OrtGraphSession:
            return OrtGraphSession(
                manifest.path(file),
                layers,
                kv_heads,
                head_dim,
                threads=1,
                device=device,
                device_cache=True,
                compact_graph=manifest.path(manifest.kv_compact),
            )

        engine.target = session(spec.file, spec.num_layers, spec.num_kv_heads, spec.head_dim)
        drafter = manifest.drafter
        engine.drafter.session = session(drafter.file, 1, drafter.num_kv_heads, drafter.head_dim)
    return engine


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_kv_compact_graph_moves_rows_in_place_like_numpy(tmp_path, dtype):
    graph = tmp_path / "kv_compact.onnx"
    write_kv_compact_graph(graph, np.dtype(dtype).name)
    rng = np.random.default_rng(0)
    host = KVCache(3, 2, 40, 8, dtype)
    host.data[:] = rng.standard_normal(host.data.shape)
    device = DeviceKVCache(3, 2, 40, 8, dtype, "cpu", graph, ["CPUExecutionProvider"])
    device.value.update_inplace(host.data)
    address = device.value.data_ptr()
    # Accepted paths of verify passes: deep, shallow, overlapping their destination, a single node.
    for start, slots in [
        (10, [10, 12, 15, 16]),
        (14, [17, 19]),
        (16, [16, 17, 18]),
        (17, [30]),
        (5, [6, 7, 8]),
    ]:
        host.keep(start, np.array(slots))
        device.keep(start, np.array(slots))
        np.testing.assert_array_equal(device.numpy(), host.data)
    assert device.value.data_ptr() == address  # compacted where the sessions' bindings point


def test_device_cache_binds_each_layer_by_address(artifacts):
    """Prefill through the device path writes the same keys and values into the same slots."""
    host, device = load(artifacts["fp32"]), load(artifacts["fp32"], device_cache=True)
    prompt = prompts(1, seed=4)[0]
    run(host, prompt, max_new_tokens=1, speculative=False)
    run(device, prompt, max_new_tokens=1, speculative=False)
    np.testing.assert_array_equal(device.target.cache.numpy(), host.target.cache.data)


@pytest.mark.parametrize("seed", range(3))
def test_device_cache_path_decodes_like_the_host_path(artifacts, seed):
    """Deep accepted paths anywhere in the tree (an oracle drafter): the compaction graph keeps exactly
    the accepted rows, so speculative output equals plain output and the host path's caches."""
    host, device = load(artifacts["fp32"]), load(artifacts["fp32"], device_cache=True)
    prompt = prompts(6, seed=10)[seed]
    plain, _ = run(host, prompt, speculative=False)
    host.drafter = OracleDrafter(plain, len(prompt), seed)
    device.drafter = OracleDrafter(plain, len(prompt), seed)
    spec_host, _ = run(host, prompt, top_k=4, depth=6, total_tokens=40)
    spec_device, stats = run(device, prompt, top_k=4, depth=6, total_tokens=40)
    assert spec_device == spec_host == plain
    assert stats.acceptance_length > 2.0, "the oracle's paths should be accepted deep"
    filled = len(prompt) + len(plain) - 1
    np.testing.assert_allclose(
        device.target.cache.numpy()[..., :filled, :], host.target.cache.data[..., :filled, :], atol=1e-6
    )


def test_fp16_artifact_has_float16_graphs_and_cache(artifacts):
    manifest = json.loads((artifacts["fp16"] / "manifest.json").read_text())
    assert manifest["target"]["dtype"] == manifest["drafter"]["dtype"] == "float16"
    assert manifest["kv_compact"] in manifest["files"]
    fp32_bytes = json.loads((artifacts["fp32"] / "manifest.json").read_text())["files"]["target.onnx.data"]
    assert manifest["files"]["target.onnx.data"]["bytes"] < 0.55 * fp32_bytes["bytes"]
    for file in ("target.onnx", "drafter.onnx"):
        graph = onnx.load(str(artifacts["fp16"] / file), load_external_data=False).graph
        types = {i.name: i.type.tensor_type.elem_type for i in [*graph.input, *graph.output]}
        assert types["past_key.0"] == types["attention_bias"] == onnx.TensorProto.FLOAT16
    engine = load(artifacts["fp16"])
    assert engine.target.cache.data.dtype == np.float16


def test_fp16_artifact_decodes_losslessly_and_close_to_fp32(artifacts):
    fp32, fp16 = load(artifacts["fp32"]), load(artifacts["fp16"], device_cache=True)
    agree = total = 0
    for prompt in prompts(4, seed=7):
        plain, _ = run(fp16, prompt, speculative=False)
        spec, _ = run(fp16, prompt, top_k=4, depth=4, total_tokens=16)
        assert spec == plain
        reference, _ = run(fp32, prompt, speculative=False)
        agree += sum(a == b for a, b in zip(plain, reference, strict=True))
        total += len(plain)
    # A random model's logits are nearly tied, so fp16 rounding may flip a few greedy choices.
    assert agree / total > 0.8
    oracle_prompt = prompts(6, seed=10)[0]
    plain, _ = run(fp16, oracle_prompt, speculative=False)
    fp16.drafter = OracleDrafter(plain, len(oracle_prompt), seed=0)
    spec, stats = run(fp16, oracle_prompt, top_k=4, depth=6, total_tokens=40)
    assert spec == plain and stats.acceptance_length > 2.0


def test_cuda_device_needs_onnxruntime_gpu_a_fp16_artifact_and_the_compact_graph(artifacts, monkeypatch):
    if not HAS_CUDA:
        with pytest.raises(EaglexError, match=r"no CUDA execution provider: .*pip install 'eaglex\[gpu\]'"):
            Engine.load(artifacts["fp16"], device="cuda")
    monkeypatch.setattr(ort_backend.ort, "get_available_providers", lambda: ["CUDAExecutionProvider"])
    with pytest.raises(EaglexError, match=r"float32 .* re-export with eaglex export --precision fp16"):
        resolve_device("cuda", "float32", compact_graph=True)
    with pytest.raises(EaglexError, match=r"no kv_compact\.onnx .* re-export"):
        resolve_device("cuda", "float16", compact_graph=False)
    assert resolve_device("auto", "float32", compact_graph=True) == "cpu"
    assert resolve_device("auto", "float16", compact_graph=True) == "cuda"
    assert resolve_device("cpu", "float16", compact_graph=True) == "cpu"


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has a CUDA provider")
def test_run_on_cuda_without_onnxruntime_gpu_is_a_one_line_error(artifacts):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "eaglex.cli",
            "run",
            str(artifacts["fp16"]),
            "--prompt",
            "hi",
            "--device",
            "cuda",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "eaglex[gpu]" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu (pip install 'eaglex[gpu]') and a GPU")
def test_cuda_decodes_losslessly_and_like_the_cpu(artifacts):
    gpu, cpu = load(artifacts["fp16"], device="cuda"), load(artifacts["fp16"])
    assert gpu.device == "cuda" and isinstance(gpu.target.cache, DeviceKVCache)
    for prompt in prompts(4, seed=7):
        plain, _ = run(gpu, prompt, speculative=False)
        spec, _ = run(gpu, prompt, top_k=4, depth=4, total_tokens=16)
        assert spec == plain
        reference, _ = run(cpu, prompt, speculative=False)
        assert np.mean([a == b for a, b in zip(plain, reference, strict=True)]) > 0.8
