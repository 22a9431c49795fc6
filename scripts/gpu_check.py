"""The tree-attention CUDA kernel on a real GPU: parity with the op's numpy reference and with torch's
scaled_dot_product_attention under the same tree mask, then timings against SDPA (run by gpu_check.sh).

Prints one line per check and a timing table; exits non-zero if any parity check fails.
"""

from __future__ import annotations

import ctypes
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, "tests")
from test_tree_attention_kernel import CASES, case

from eaglex.plugins.tree_attention.build import build_library
from eaglex.plugins.tree_attention.mask import decode_mask
from eaglex.plugins.tree_attention.reference import tree_attention

# dtype: (torch dtype, the kernel's code, tolerance). Inputs are rounded to the dtype before the reference
# sees them, so the tolerance covers only the kernel's accumulation and its output rounding.
DTYPES = {
    "fp32": (torch.float32, 0, 5e-5),
    "fp16": (torch.float16, 1, 4e-3),
    "bf16": (torch.bfloat16, 2, 3e-2),
}


def load_kernel() -> ctypes.CDLL:
    major, minor = torch.cuda.get_device_capability()
    library = ctypes.CDLL(
        str(
            build_library(
                "eaglex_tree_attention_cuda",
                ["-DEAGLEX_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={major}{minor}"],
            )
        )
    )
    library.eaglex_tree_attention_cuda.restype = ctypes.c_int
    return library


def run_kernel(library: ctypes.CDLL, code: int, t: dict[str, torch.Tensor], args: dict) -> int:
    _, kv_heads, capacity, head_dim = t["past_key"].shape
    return library.eaglex_tree_attention_cuda(
        code,
        *(
            ctypes.c_void_p(t[n].data_ptr())
            for n in (
                "query",
                "key",
                "value",
                "past_key",
                "past_value",
                "out",
                "cache_len",
                "mask_start",
                "tree_mask",
            )
        ),
        t["query"].shape[1],
        t["tree_mask"].shape[2],
        args["num_heads"],
        kv_heads,
        head_dim,
        capacity,
        ctypes.c_float(args["scale"]),
        ctypes.c_void_p(torch.cuda.current_stream().cuda_stream),
    )


def rounded(args: dict, dtype: torch.dtype) -> dict:
    names = ("query", "key", "value", "past_key", "past_value")
    return {**args, **{n: torch.from_numpy(args[n]).to(dtype).float().numpy() for n in names}}


def to_device(args: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    t = {
        n: torch.from_numpy(args[n]).cuda().to(dtype)
        for n in ("query", "key", "value", "past_key", "past_value")
    }
    t |= {n: torch.from_numpy(args[n]).cuda() for n in ("cache_len", "mask_start", "tree_mask")}
    t["out"] = torch.empty_like(t["query"])
    return t


def sdpa(args: dict, t: dict[str, torch.Tensor], keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """torch's SDPA over the same rows and mask; keys/values: the caches with the new rows in them."""
    rows, heads = args["query"].shape[1], args["num_heads"]
    total = int(args["cache_len"][0]) + rows
    mask = torch.from_numpy(decode_mask(int(args["mask_start"][0]), args["tree_mask"], total)).to(keys.device)
    q = t["query"].view(1, rows, heads, -1).transpose(1, 2)
    out = F.scaled_dot_product_attention(
        q, keys[:, :, :total], values[:, :, :total], attn_mask=mask, scale=args["scale"], enable_gqa=True
    )
    return out.transpose(1, 2).reshape(1, rows, -1)


def parity(library: ctypes.CDLL) -> bool:
    ok = True
    for shape in CASES:
        for name, (dtype, code, tol) in DTYPES.items():
            args = rounded(case(np.random.default_rng(sum(shape)), *shape), dtype)
            t = to_device(args, dtype)
            status = run_kernel(library, code, t, args)
            torch.cuda.synchronize()
            reference = {n: args[n].copy() for n in ("past_key", "past_value")}
            want = tree_attention(**{**args, **reference})
            got = t["out"].float().cpu().numpy()
            err = float(np.abs(got - want).max())
            cache_err = float(np.abs(t["past_key"].float().cpu().numpy() - reference["past_key"]).max())
            sdpa_err = float(
                (t["out"].float() - sdpa(args, t, t["past_key"], t["past_value"]).float()).abs().max()
            )
            good = status == 0 and err <= tol and cache_err == 0 and sdpa_err <= 2 * tol
            ok &= good
            print(
                f"{'ok  ' if good else 'FAIL'} rows {shape[0]:3d} past {shape[1]:3d} "
                f"heads {shape[2]:2d}/{shape[3]} "
                f"d {shape[4]:3d} scratch {shape[6]:2d} {name}: |kernel-reference| {err:.1e}, "
                f"|kernel-sdpa| {sdpa_err:.1e}, cache {cache_err:.1e}"
            )
    return ok


def timed(fn, iterations: int = 100) -> float:
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iterations):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iterations * 1000  # microseconds


def timings(library: ctypes.CDLL) -> None:
    print("\nmicroseconds per call of one layer's attention (kernel includes writing the new K/V rows)")
    print(f"{'model shape':28s} {'dtype':5s} {'S':>5s} {'P':>5s} {'kernel':>9s} {'SDPA':>9s}")
    shapes = [("SmolLM2 9/3 heads d64", 9, 3, 64, 2048), ("Llama-3-8B 32/8 heads d128", 32, 8, 128, 8192)]
    for label, heads, kv_heads, head_dim, capacity in shapes:
        for rows, past in ((1, capacity // 2), (60, capacity // 2), (128, capacity - 129), (512, 0)):
            for name in ("fp16", "fp32") if head_dim == 64 else ("fp16",):
                dtype, code, _ = DTYPES[name]
                args = case(np.random.default_rng(0), rows, past, heads, kv_heads, head_dim, capacity)
                t = to_device(args, dtype)
                kernel_us = timed(lambda t=t, args=args, code=code: run_kernel(library, code, t, args))
                sdpa_us = timed(lambda t=t, args=args: sdpa(args, t, t["past_key"], t["past_value"]))
                print(f"{label:28s} {name:5s} {rows:5d} {past:5d} {kernel_us:9.1f} {sdpa_us:9.1f}")


def main() -> int:
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    started = time.time()
    library = load_kernel()
    print(f"kernel built in {time.time() - started:.0f} s")
    ok = parity(library)
    timings(library)
    print("parity: all ok" if ok else "parity: FAILURES above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
