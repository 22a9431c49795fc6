"""The attention kernels the trainer lets torch's scaled_dot_product_attention choose from.

cuDNN's attention, torch's first choice on Hopper GPUs, builds an execution plan for every new shape, and
nearly every shape the trainer makes is new: each regeneration step has a longer KV cache, each batch of
feature extraction or training its own length. On an H200 that made a regeneration step of 256 rows take
120 ms where flash or memory-efficient attention, which need no plan, took 32 ms (docs/BENCHMARKS.md,
experiments/profile_gpu_regen.py). On CPUs cuDNN plays no part, so leaving it out changes nothing there.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from torch.nn.attention import SDPBackend, sdpa_kernel


def planless_attention() -> AbstractContextManager[None]:
    """SDPA without cuDNN's attention, for the code inside the `with`."""
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
