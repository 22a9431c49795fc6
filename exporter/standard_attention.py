"""Plugin-flavoured graphs -> graphs with ONNX's standard `Attention` op (opset 23), for TensorRT for RTX.

TensorRT for RTX parses ONNX `Attention` into its native `IAttention` layer, but neither loads the
`eaglex::TreeAttention` plugin nor accepts an `Attention` node with present-KV outputs. So each
TreeAttention node becomes

    Attention(query, Concat(past_key.i, key), Concat(past_value.i, value), attn_mask)

with the KV cache outside the node, in the layout the runtime keeps on the device: one [M, kv·D] buffer
per layer and kind, a token per row. The graph reads the cache's first P rows as `past_key.i`
[1, P, kv·D] (a contiguous prefix of that buffer) and returns the S new rows as `new_key.i`
[1, S, kv·D], which the runtime binds at row P of the same buffer, so they land in place. The bit-packed
mask inputs (tree_mask, cache_len, mask_start) give way to `attn_mask`, bool [S, P + S], true where a
row may attend to a column: exactly the mask the runtime builds, with no packing.

Everything else in the graph (RoPE with explicit positions, norms, heads, the drafter's top-k) is
unchanged, so this flavour computes what the default flavour computes; tests/test_rtx.py checks it
through onnxruntime, which implements opset-23 Attention on the CPU.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .attention_onnx import PLUGIN_DOMAIN, PLUGIN_OP

OPSET = 23  # Attention first appears in opset 23
MASK = "attn_mask"
_PLUGIN_MASK_INPUTS = ("tree_mask", "cache_len", "mask_start")


def standard_attention_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a plugin-flavoured graph (`eaglex export --backend tensorrt`) with standard Attention."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inputs = {v.name: v for v in graph.input}
    float_type = inputs["past_key.0"].type.tensor_type.elem_type
    nodes: list[onnx.NodeProto] = []
    new_inputs: list[onnx.ValueInfoProto] = []
    new_outputs: list[onnx.ValueInfoProto] = []
    for node in graph.node:
        if not (node.domain == PLUGIN_DOMAIN and node.op_type == PLUGIN_OP):
            nodes.append(node)
            continue
        query, key, value, past_key, past_value = node.input[:5]
        output, present_key, present_value = node.output
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        heads, kv_heads = attributes["num_heads"], attributes["kv_num_heads"]
        head_dim = inputs[past_key].type.tensor_type.shape.dim[3].dim_value
        layer = past_key.removeprefix("past_key.")
        for kind, past, new in (("key", past_key, key), ("value", past_value, value)):
            name = f"{kind}.{layer}"
            concat = helper.make_node("Concat", [past, new], [f"all_{name}"], axis=1, name=f"concat_{name}")
            nodes.append(concat)
            nodes.append(helper.make_node("Identity", [new], [f"new_{name}"], name=f"new_{name}"))
            new_inputs.append(helper.make_tensor_value_info(past, float_type, [1, "P", kv_heads * head_dim]))
            new_outputs.append(
                helper.make_tensor_value_info(f"new_{name}", float_type, [1, "S", kv_heads * head_dim])
            )
        nodes.append(
            helper.make_node(
                "Attention",
                [query, f"all_key.{layer}", f"all_value.{layer}", MASK],
                [output],
                name=f"attention.{layer}",
                q_num_heads=heads,
                kv_num_heads=kv_heads,
                scale=attributes["scale"],
                is_causal=0,
            )
        )
        del present_key, present_value  # these outputs go: the cache is updated by the runtime
    del graph.node[:]
    graph.node.extend(nodes)

    kept_inputs = [
        v for v in graph.input if v.name not in _PLUGIN_MASK_INPUTS and not v.name.startswith("past_")
    ]
    mask = helper.make_tensor_value_info(MASK, TensorProto.BOOL, ["S", "L"])
    del graph.input[:]
    graph.input.extend([*kept_inputs, mask, *new_inputs])
    kept_outputs = [v for v in graph.output if not v.name.startswith("present_")]
    del graph.output[:]
    graph.output.extend([*kept_outputs, *new_outputs])

    opsets = [o for o in model.opset_import if o.domain not in ("", PLUGIN_DOMAIN)]
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", OPSET), *opsets])
    return model
