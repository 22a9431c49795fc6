"""The tree-attention kernel against the op's numpy reference (plugins/README.md).

The CUDA kernel's logic (plugins/tree_attention/kernel.cuh) runs here through its CPU build, lane by
lane; kernel.cu itself is compiled with nvcc for sm_80 and sm_90 where nvcc exists. On a GPU,
scripts/gpu_check.sh runs the real kernel against the same reference and torch's SDPA.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from eaglex.plugins.tree_attention import build
from eaglex.plugins.tree_attention.mask import encode_mask
from eaglex.plugins.tree_attention.reference import tree_attention

SOURCES = Path(build.__file__).parent


@pytest.fixture(scope="module")
def cpu_kernel() -> ctypes.CDLL:
    if shutil.which("cmake") is None:
        pytest.skip("building the kernel's CPU library needs cmake and a C++17 compiler")
    library = ctypes.CDLL(str(build.build_library("eaglex_tree_attention_cpu")))
    library.eaglex_tree_attention_cpu.restype = ctypes.c_int
    return library


def random_tree(rng: np.random.Generator, nodes: int) -> np.ndarray:
    """[nodes, nodes] mask of a random tree whose parents precede their children (node 0 is the root)."""
    mask = np.eye(nodes, dtype=bool)
    for i in range(1, nodes):
        mask[i] |= mask[rng.integers(0, i)]
    return mask


def case(
    rng: np.random.Generator,
    rows: int,
    past: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    capacity: int,
    scratch: int = 0,
    extra_words: int = 0,
):
    """A verify-like call: `past` committed rows, `scratch` earlier tree rows of which each new row sees a
    random subset (mask_start < cache_len), then a random tree of `rows` nodes."""
    cache_len = past + scratch
    mask = np.zeros((rows, cache_len + rows), bool)
    mask[:, :past] = True
    mask[:, past:cache_len] = rng.random((rows, scratch)) < 0.5
    mask[:, cache_len:] = random_tree(rng, rows)
    start, words = encode_mask(mask, cache_len)
    if extra_words:  # words past L must be ignored, whatever their bits
        words = np.concatenate([words, np.full((1, rows, extra_words), -1, np.int32)], axis=2)
    f32 = np.float32
    return {
        "query": rng.standard_normal((1, rows, heads * head_dim)).astype(f32),
        "key": rng.standard_normal((1, rows, kv_heads * head_dim)).astype(f32),
        "value": rng.standard_normal((1, rows, kv_heads * head_dim)).astype(f32),
        "past_key": rng.standard_normal((1, kv_heads, capacity, head_dim)).astype(f32),
        "past_value": rng.standard_normal((1, kv_heads, capacity, head_dim)).astype(f32),
        "cache_len": np.array([cache_len], np.int32),
        "mask_start": np.array([start], np.int32),
        "tree_mask": words,
        "num_heads": heads,
        "kv_num_heads": kv_heads,
        "scale": head_dim**-0.5,
    }


def run_cpu_kernel(library: ctypes.CDLL, args: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    key_cache, value_cache = args["past_key"].copy(), args["past_value"].copy()
    out = np.zeros_like(args["query"])
    pointer = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    _, kv_heads, capacity, head_dim = key_cache.shape
    status = library.eaglex_tree_attention_cpu(
        pointer(args["query"]),
        pointer(args["key"]),
        pointer(args["value"]),
        pointer(key_cache),
        pointer(value_cache),
        pointer(out),
        pointer(args["cache_len"]),
        pointer(args["mask_start"]),
        pointer(args["tree_mask"]),
        args["query"].shape[1],
        args["tree_mask"].shape[2],
        args["num_heads"],
        kv_heads,
        head_dim,
        capacity,
        ctypes.c_float(args["scale"]),
    )
    assert status == 0
    return out, key_cache, value_cache


# (rows, past, heads, kv_heads, head_dim, capacity, scratch, extra_words)
CASES = [
    (1, 0, 4, 4, 64, 8, 0, 0),  # one node, empty cache, GQA ratio 1
    (1, 37, 9, 3, 64, 64, 0, 0),  # a decode step, SmolLM2's heads (ratio 3)
    (60, 50, 8, 2, 128, 128, 0, 0),  # a 60-node tree, ratio 4, head dim 128
    (60, 3, 12, 3, 64, 70, 0, 1),  # ratio 4, head dim 64, an ignored extra mask word
    (33, 40, 6, 2, 128, 120, 12, 0),  # ratio 3 with scratch rows: mask_start < cache_len
    (17, 5, 4, 1, 80, 40, 9, 0),  # head dim not a multiple of 32, one KV head
    (7, 0, 4, 2, 16, 16, 0, 0),  # the tiny test models' head dim
]


@pytest.mark.parametrize(
    ("rows", "past", "heads", "kv_heads", "head_dim", "capacity", "scratch", "extra"), CASES
)
def test_kernel_matches_reference(
    cpu_kernel, rows, past, heads, kv_heads, head_dim, capacity, scratch, extra
):
    rng = np.random.default_rng(rows * 1000 + past)
    args = case(rng, rows, past, heads, kv_heads, head_dim, capacity, scratch, extra)
    out, key_cache, value_cache = run_cpu_kernel(cpu_kernel, args)
    want = tree_attention(**args)  # writes args' caches in place
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=2e-5)
    np.testing.assert_array_equal(key_cache, args["past_key"])
    np.testing.assert_array_equal(value_cache, args["past_value"])


def test_kernel_rows_that_see_nothing_are_zero(cpu_kernel):
    rng = np.random.default_rng(1)
    args = case(rng, 4, 0, 2, 1, 32, 8)
    args["tree_mask"][0, 1] = 0  # row 1 sees no column at all
    out, _, _ = run_cpu_kernel(cpu_kernel, args)
    assert (out[0, 1] == 0).all() and np.isfinite(out).all()
    np.testing.assert_allclose(out, tree_attention(**args), rtol=1e-4, atol=2e-5)


def test_kernel_rejects_bad_shapes(cpu_kernel):
    args = case(np.random.default_rng(2), 2, 0, 3, 2, 32, 4)  # 3 heads over 2 KV heads
    with pytest.raises(AssertionError):
        run_cpu_kernel(cpu_kernel, args)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit) to compile kernel.cu")
def test_cuda_kernel_compiles_for_ampere_and_hopper(tmp_path):
    command = [
        "nvcc",
        "-std=c++17",
        "-c",
        str(SOURCES / "kernel.cu"),
        "-o",
        str(tmp_path / "kernel.o"),
        "-gencode",
        "arch=compute_80,code=sm_80",
        "-gencode",
        "arch=compute_90,code=sm_90",
        "-Werror",
        "all-warnings",
        "-Xptxas",
        "-warn-spills,-warn-lmem-usage",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "spill" not in result.stderr and (tmp_path / "kernel.o").stat().st_size > 0


def _tensorrt_headers() -> Path | None:
    """TensorRT's C++ headers: $TensorRT_ROOT/include, or where libnvinfer-dev puts them."""
    root = os.environ.get("TensorRT_ROOT")  # noqa: SIM112 (the name CMake and NVIDIA use)
    places = (
        [Path(root) / "include"] if root else [Path("/usr/include"), Path("/usr/include/x86_64-linux-gnu")]
    )
    return next((p for p in places if (p / "NvInferRuntime.h").is_file()), None)


@pytest.mark.skipif(
    _tensorrt_headers() is None or shutil.which("nvcc") is None,
    reason="needs nvcc and TensorRT's C++ headers (libnvinfer-dev or TensorRT_ROOT; pip's TensorRT has none)",
)
def test_tensorrt_plugin_library_builds_and_answers_the_builder(tmp_path):
    """Builds libeaglex_tree_attention_trt.so with CMake, then loads it as IPluginRegistry::loadLibrary does
    and checks the plugin's build-time answers (tests/native/plugin_selftest.cpp); no GPU needed."""
    headers = _tensorrt_headers()
    library = build.build_library(
        "eaglex_tree_attention_trt",
        ["-DEAGLEX_TENSORRT=ON", f"-DTensorRT_ROOT={headers.parent}", "-DCMAKE_CUDA_ARCHITECTURES=90"],
    )
    program = tmp_path / "plugin_selftest"
    source = Path(__file__).parent / "native" / "plugin_selftest.cpp"
    # nvcc as the compiler driver: it adds the CUDA headers that TensorRT's headers include.
    compiled = subprocess.run(
        ["nvcc", "-std=c++17", "-isystem", str(headers), str(source), "-ldl", "-o", str(program)],
        capture_output=True,
        text=True,
    )
    assert compiled.returncode == 0, compiled.stderr
    result = subprocess.run([str(program), str(library)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stdout
