"""GroupQueryAttention marked for libeaglex's attention kernel (exporter/cpu_attention.py,
native/src/cpu_attention.cpp): marking round-trips beside the MatMul marks; a marked graph runs anywhere
through its function body with onnxruntime's exact results; the kernel matches onnxruntime's up to rounding
(packed QKV with RoPE as the target calls it, separate Q, K, V as the drafter does; shared and separate
cache buffers); a draft-tree row's output is bit for bit that of its path decoded one token at a time."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_native import native_build
from test_packed_matmul import KERNEL, VARIANTS

from eaglex.exporter import cpu_attention, packed_matmul
from eaglex.exporter.cpu_ops import DOMAIN
from eaglex.runtime.backends.onnxruntime import cpu_kernels

__all__ = ["native_build"]  # a fixture of test_native, used here too

HEADS, KV, D, CAPACITY, MAX_POSITION = 6, 2, 32, 80, 128


def model(packed: bool = True, head_dim: int = D) -> onnx.ModelProto:
    """One GroupQueryAttention node as the exporter emits it (packed: the target's, RoPE inside; else the
    drafter's), then a MatMul by a constant weight of 16 columns (which packed_matmul marks)."""
    half = head_dim // 2
    angles = np.arange(MAX_POSITION)[:, None] * 10000.0 ** (-np.arange(half) / half)[None]
    width = (HEADS + 2 * KV) * head_dim if packed else HEADS * head_dim
    value_info = helper.make_tensor_value_info
    inputs = [value_info("query", TensorProto.FLOAT, [1, "S", width])]
    if not packed:
        inputs += [value_info(n, TensorProto.FLOAT, [1, "S", KV * head_dim]) for n in ("key", "value")]
    cache = [1, KV, CAPACITY, head_dim]
    inputs += [value_info(n, TensorProto.FLOAT, cache) for n in ("past_key", "past_value")]
    inputs += [
        value_info("seqlens_k", TensorProto.INT32, [1]),
        value_info("total_sequence_length", TensorProto.INT32, []),
        value_info("attention_bias", TensorProto.FLOAT, [1, 1, "S", "L"]),
    ]
    names = ["query", "", "", "past_key", "past_value", "seqlens_k", "total_sequence_length"]
    attributes = {"num_heads": HEADS, "kv_num_heads": KV, "scale": head_dim**-0.5, "causal": 0}
    if packed:
        inputs.append(value_info("position_ids", TensorProto.INT64, [1, "S"]))
        names += ["cos", "sin", "position_ids", "attention_bias"]
        attributes |= {"do_rotary": 1, "rotary_interleaved": 0}
    else:
        names[1:3] = ["key", "value"]
        names += ["", "", "", "attention_bias"]
    outputs = [value_info("output", TensorProto.FLOAT, [1, "S", HEADS * head_dim])]
    outputs += [value_info(n, TensorProto.FLOAT, cache) for n in ("present_key", "present_value")]
    outputs.append(value_info("projected", TensorProto.FLOAT, [1, "S", 16]))
    weight = np.random.default_rng(9).standard_normal((HEADS * head_dim, 16), dtype=np.float32)
    inits = [numpy_helper.from_array(weight, "weight")]
    if packed:
        for f, name in ((np.cos, "cos"), (np.sin, "sin")):
            inits.append(numpy_helper.from_array(f(angles).astype(np.float32), name))
    nodes = [
        helper.make_node("GroupQueryAttention", names, ["output", "present_key", "present_value"],
                         domain="com.microsoft", **attributes),
        helper.make_node("MatMul", ["output", "weight"], ["projected"]),
    ]  # fmt: skip
    graph = helper.make_graph(nodes, "attention", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def session(proto: onnx.ModelProto, register: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    if register:
        cpu_kernels(options)
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def feeds(rows: int, past: int, mask: np.ndarray, packed: bool, positions: np.ndarray, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    width = (HEADS + 2 * KV) * D if packed else HEADS * D
    out = {
        "query": rng.standard_normal((1, rows, width), dtype=np.float32),
        "past_key": rng.standard_normal((1, KV, CAPACITY, D), dtype=np.float32),
        "past_value": rng.standard_normal((1, KV, CAPACITY, D), dtype=np.float32),
        "seqlens_k": np.array([past + rows - 1], np.int32),
        "total_sequence_length": np.array(past + rows, np.int32),
        "attention_bias": np.where(mask, np.float32(0), np.float32(-np.inf))[None, None],
    }
    if packed:
        out["position_ids"] = positions[None].astype(np.int64)
    else:
        out |= {n: rng.standard_normal((1, rows, KV * D), dtype=np.float32) for n in ("key", "value")}
    return out


def run_in_place(s: ort.InferenceSession, inputs: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As the runtime binds it: past_* and present_* are one buffer each, written in place."""
    binding, cache = s.io_binding(), {}
    binding.bind_output("output")  # first: outputs keep the order of their first binding
    for name, array in inputs.items():
        if name.startswith("past_"):
            cache[name] = array.copy()
            value = ort.OrtValue.ortvalue_from_numpy(cache[name])
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(name.replace("past_", "present_"), value)
        else:
            binding.bind_cpu_input(name, array)
    s.run_with_iobinding(binding)
    return binding.get_outputs()[0].numpy(), cache["past_key"], cache["past_value"]


def tree_mask(past: int, parents: list[int]) -> np.ndarray:
    """Rows see the whole past and their ancestors (parents[i] < i, -1 for a root) and themselves."""
    mask = np.zeros((len(parents), past + len(parents)), bool)
    mask[:, :past] = True
    for i, parent in enumerate(parents):
        mask[i, past + i] = True
        if parent >= 0:
            mask[i, past:] |= mask[parent, past:]
    return mask


def depths(parents: list[int]) -> np.ndarray:
    out = []
    for parent in parents:
        out.append(0 if parent < 0 else out[parent] + 1)
    return np.array(out)


PARENTS = [-1, 0, 0, 1, 1, 2, 3, 6, 5, 8, 4, 10, 7]  # 13 rows, depth up to 5


def test_marking_round_trips_beside_the_matmul_marks():
    proto, original = model(), model()
    assert cpu_attention.mark(proto) == 1 and packed_matmul.mark(proto) == 1
    ops = Counter((node.domain, node.op_type) for node in proto.graph.node)
    assert ops[DOMAIN, "GroupQueryAttention"] == 1 and ops[DOMAIN, "MatMul"] == 1
    assert sorted(f.name for f in proto.functions) == ["GroupQueryAttention", "MatMul", "MatMulTransB"]
    assert cpu_attention.unmark(proto) == 1  # the MatMul marks, their functions and the domain stay
    assert sorted(f.name for f in proto.functions) == ["MatMul", "MatMulTransB"]
    assert any(o.domain == DOMAIN for o in proto.opset_import)
    assert packed_matmul.unmark(proto) == 1
    assert onnx.printer.to_text(proto) == onnx.printer.to_text(original)


def test_only_float32_caches_with_head_sizes_of_16k_are_marked():
    assert cpu_attention.mark(model(head_dim=24)) == 0
    assert cpu_attention.mark(model(head_dim=16)) == 1


@pytest.mark.parametrize("packed", [True, False])
def test_a_marked_graph_runs_anywhere_with_onnxruntimes_results(packed):
    """Without the kernel onnxruntime inlines the function body: its own GroupQueryAttention, same numbers."""
    past, parents = 9, PARENTS[:6]
    inputs = feeds(len(parents), past, tree_mask(past, parents), packed, past + depths(parents))
    plain = session(model(packed), register=False).run(None, inputs)
    marked = model(packed)
    cpu_attention.mark(marked)
    for got, want in zip(session(marked, register=False).run(None, inputs), plain, strict=True):
        assert np.array_equal(got, want)


@KERNEL
@VARIANTS
@pytest.mark.parametrize("packed", [True, False])
def test_the_kernel_matches_onnxruntimes_attention(native_build, monkeypatch, variant, packed):
    """Prefill (no past), one decoded row, and draft trees of 4 and 13 rows after 0 to 61 cached rows
    (column counts on both sides of the 8- and 16-column blocks), the caches shared or separate buffers."""
    monkeypatch.setenv("EAGLEX_CPU_ATTENTION", variant)
    marked = model(packed)
    cpu_attention.mark(marked)
    ours, theirs = session(marked, register=True), session(model(packed), register=False)
    cases = [(0, [-1, *range(7)]), (17, [-1]), (61, [-1]), (0, PARENTS[:4]), (15, PARENTS), (61, PARENTS)]
    for past, parents in cases:
        rows = len(parents)
        chain = parents == [-1, *range(rows - 1)]
        positions = past + (np.arange(rows) if chain else depths(parents))
        mask = tree_mask(past, parents) if not chain else np.tri(rows, past + rows, past, dtype=bool)
        inputs = feeds(rows, past, mask, packed, positions, seed=past + rows)
        for want, got in zip(run_in_place(theirs, inputs), run_in_place(ours, inputs), strict=True):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=f"{past} {parents}")
        separate, expected = ours.run(None, inputs), theirs.run(None, inputs)
        for got, want in zip(separate, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@KERNEL
@VARIANTS
def test_a_tree_row_equals_its_path_decoded_one_token_at_a_time(native_build, monkeypatch, variant):
    """Each row of a 13-row draft tree against the same row decoded alone after its ancestors moved to the
    slots that plain decoding gives them: the same output, bit for bit (what makes the loop lossless by
    construction; onnxruntime's own kernel differs in the last bits on every row of this tree)."""
    monkeypatch.setenv("EAGLEX_CPU_ATTENTION", variant)
    marked = model()
    cpu_attention.mark(marked)
    s = session(marked, register=True)
    past = 37
    inputs = feeds(len(PARENTS), past, tree_mask(past, PARENTS), True, past + depths(PARENTS))
    tree_out, keys, values = run_in_place(s, inputs)
    for row in range(len(PARENTS)):
        ancestors, node = [], PARENTS[row]
        while node >= 0:
            ancestors.insert(0, node)
            node = PARENTS[node]
        total = past + len(ancestors) + 1
        alone = {
            "query": inputs["query"][:, row : row + 1],
            "past_key": keys.copy(),
            "past_value": values.copy(),
            "seqlens_k": np.array([total - 1], np.int32),
            "total_sequence_length": np.array(total, np.int32),
            "attention_bias": np.zeros((1, 1, 1, total), np.float32),
            "position_ids": np.array([[past + len(ancestors)]]),
        }
        for slot, ancestor in enumerate(ancestors, start=past):  # as kv compaction moves accepted rows
            alone["past_key"][:, :, slot] = keys[:, :, past + ancestor]
            alone["past_value"][:, :, slot] = values[:, :, past + ancestor]
        out, _, _ = run_in_place(s, alone)
        assert np.array_equal(out[0, 0], tree_out[0, row]), row


@KERNEL
def test_the_kernel_can_be_switched_off(native_build, monkeypatch, tmp_path):
    marked = model()
    cpu_attention.mark(marked)
    for setting, domain in (("", DOMAIN), ("onnxruntime", "com.microsoft")):
        monkeypatch.setenv("EAGLEX_CPU_ATTENTION", setting)
        options = ort.SessionOptions()
        cpu_kernels(options)
        options.optimized_model_filepath = str(tmp_path / f"{setting}.onnx")
        ort.InferenceSession(marked.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(str(Path(options.optimized_model_filepath)))
        assert [n.domain for n in optimized.graph.node if n.op_type == "GroupQueryAttention"] == [domain]
