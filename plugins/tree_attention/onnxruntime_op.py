"""Registers the numpy reference as `eaglex::TreeAttention` with onnxruntime, through onnxruntime-extensions.

This is how plugin-flavoured graphs (`eaglex export --backend tensorrt`) run on a CPU: slowly (each node
copies its KV cache in and out of Python) but exactly, so they can be checked against the default graphs.
Importing this module registers the op for the whole process.
"""

from __future__ import annotations

import numpy as np

from eaglex.errors import EaglexError

try:
    from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
except ImportError:  # an optional test dependency: say how to get it when it is needed
    raise EaglexError(
        "running TensorRT-flavoured graphs on onnxruntime needs onnxruntime-extensions: "
        "pip install 'eaglex[dev]' (or pip install onnxruntime-extensions)"
    ) from None

from .reference import tree_attention

_FLOAT, _INT32 = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int32


@onnx_op(
    op_type="eaglex::TreeAttention",
    inputs=[_FLOAT] * 5 + [_INT32] * 3,
    outputs=[_FLOAT] * 3,
    attrs={
        "num_heads": PyCustomOpDef.dt_int64,
        "kv_num_heads": PyCustomOpDef.dt_int64,
        "scale": PyCustomOpDef.dt_float,
    },
)
def _tree_attention(query, key, value, past_key, past_value, cache_len, mask_start, tree_mask, **attrs):
    # onnxruntime-extensions hands the op copies of its inputs and copies the outputs back into the
    # (aliased) present buffers, so writing the copies here is what updates the runtime's cache. That
    # copy goes through Python lists: the cost of this path grows with the cache size M.
    past_key, past_value = (np.require(a, requirements="W") for a in (past_key, past_value))
    out = tree_attention(
        query,
        key,
        value,
        past_key,
        past_value,
        cache_len,
        mask_start,
        tree_mask,
        int(attrs["num_heads"]),
        int(attrs["kv_num_heads"]),
        float(attrs["scale"]),
    )
    return out, past_key, past_value


def library_path() -> str:
    """The custom-op library to pass to `SessionOptions.register_custom_ops_library`."""
    return get_library_path()
