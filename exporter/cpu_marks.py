"""Every kind of node libeaglex's CPU kernels take, marked (or unmarked) in one place: `eaglex export`
marks its graphs, quantized or not; quantize_artifact (exporter/quantize.py) unmarks before quantizing
and marks after.

packed_matmul.py (float32 MatMul by a constant weight), cpu_attention.py (GroupQueryAttention) and
int4_matmul.py (4-bit MatMulNBits with float32 activations); each marked node keeps onnxruntime's op as
its function body (cpu_ops.py).
"""

from __future__ import annotations

from pathlib import Path

from . import cpu_attention, int4_matmul, packed_matmul
from .cpu_ops import rewrite


def mark(path: Path) -> int:
    """Marks the graph at `path` in place for every kernel; returns how many nodes."""
    return rewrite(path, packed_matmul.mark, cpu_attention.mark, int4_matmul.mark)


def unmark(path: Path) -> int:
    """The inverse of mark: onnxruntime's nodes again."""
    return rewrite(path, packed_matmul.unmark, cpu_attention.unmark, int4_matmul.unmark)
