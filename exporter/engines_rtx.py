"""`eaglex build --flavour tensorrt-rtx`: engines from TensorRT for RTX, built ahead of time without a GPU.

TensorRT for RTX (`pip install tensorrt-rtx`, on PyPI) compiles for a compute capability it is told, so
engines for RTX and Ampere-class GPUs are built on any machine, this CPU-only one included. It takes the
plugin-flavoured graphs of `eaglex export --backend tensorrt` rewritten with ONNX's standard `Attention`
op (standard_attention.py), which its parser turns into the native `IAttention` layer: the tree attention
runs as TensorRT's fused attention kernel under the bool tree mask, and the KV cache stays outside the
engine (runtime/backends/tensorrt_rtx.py). The same two optimisation profiles as the datacenter build
(prefill and decode), one engine per graph and compute capability, and next to each engine the builder's
layer list (`*.layers.txt`), which shows which kernel runs each ONNX attention node.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from eaglex.errors import EaglexError
from eaglex.runtime.manifest import EngineFile, EngineSpec, Manifest

from .standard_attention import MASK, standard_attention_graph

FLAVOUR = "tensorrt-rtx"
# What TensorRT for RTX 1.7 offers; no SM90 (H100, H200): datacenter TensorRT serves those.
CAPABILITIES = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")
INSTALL_RTX = (
    "TensorRT for RTX is not installed: pip install 'eaglex[tensorrt-rtx]' "
    "(from PyPI; it builds engines without a GPU)"
)


def import_tensorrt_rtx() -> Any:
    try:
        import tensorrt_rtx
    except ImportError:
        raise EaglexError(INSTALL_RTX) from None
    return tensorrt_rtx


def parse_capabilities(text: str) -> tuple[str, ...]:
    """ "sm80,sm89" (also "sm_80", "8.9", "89") -> ("sm80", "sm89"), in the order given, once each."""
    names: list[str] = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        digits = re.fullmatch(r"(?:sm_?)?(\d+)(?:\.(\d))?", part)
        name = f"sm{digits[1]}{digits[2] or ''}" if digits else part
        if name not in CAPABILITIES:
            served = ", ".join(CAPABILITIES)
            hint = " (H100/H200: use --flavour tensorrt)" if name == "sm90" else ""
            raise EaglexError(
                f"--compute-capability {part}: TensorRT for RTX builds for {served}, not {part}{hint}"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise EaglexError("--compute-capability is empty: name one or more of " + ", ".join(CAPABILITIES))
    return tuple(names)


def rtx_profiles(profiles: list[dict[str, Any]], max_context: int, kv_width: int, layers: int) -> list[dict]:
    """The datacenter build's profiles (engines.optimization_profiles) for the standard-attention graph:
    the bit-packed mask becomes attn_mask [S, P + S], and each layer's cache a prefix [1, P, kv·D] of P
    rows (0 to M - 1; the decode profile is tuned for a half-full cache)."""
    out = []
    for profile in profiles:
        shapes = {k: v for k, v in profile["shapes"].items() if k != "tree_mask"}
        rows = tuple(shape[1] for shape in shapes["position_ids"])
        past = (0, 0 if profile["name"] == "prefill" else max_context // 2, max_context - 1)
        shapes[MASK] = ((rows[0], rows[0]), (rows[1], rows[1] + past[1]), (rows[2], max_context))
        for i in range(layers):
            for kind in ("key", "value"):
                shapes[f"past_{kind}.{i}"] = tuple((1, p, kv_width) for p in past)
        out.append({**profile, "shapes": shapes})
    return out


class _Log:
    """TensorRT's logger: warnings and errors to stderr, and the builder's per-layer lines (verbose, with
    ProfilingVerbosity.DETAILED) kept, since without a GPU no engine inspector can be had."""

    def __init__(self, trt: Any):
        class Logger(trt.ILogger):
            def log(inner, severity: Any, message: str) -> None:
                if "LayerType: " in message:
                    self.layers.extend(line for line in message.splitlines() if "LayerType: " in line)
                elif severity <= trt.ILogger.Severity.ERROR:
                    self.errors.append(message)
                elif severity <= trt.ILogger.Severity.WARNING and "Int64 binding" not in message:
                    print(f"[TensorRT for RTX] {message}", file=sys.stderr)

        self.layers: list[str] = []
        self.errors: list[str] = []
        self.logger = Logger()
        self.logger.min_severity = trt.ILogger.Severity.VERBOSE


def _one_line(messages: list[str]) -> str:
    """The most telling part of TensorRT's multi-line messages, on one line."""
    text = " ".join(" ".join(messages).split())
    return text[:400] + ("..." if len(text) > 400 else "")


def parse_network(trt: Any, log: _Log, model: onnx.ModelProto, name: str, precision: str) -> tuple:
    """(builder, network, parser) for a graph; a graph the parser cannot take fails with one line."""
    builder = trt.Builder(log.logger)
    network = builder.create_network(0)  # strongly typed: the graph's types are the engine's
    parser = trt.OnnxParser(network, log.logger)
    if not parser.parse(model.SerializeToString()):
        errors = [str(parser.get_error(i)).splitlines()[0] for i in range(parser.num_errors)]
        raise EaglexError(f"TensorRT for RTX cannot parse the {name} graph: {_one_line(errors)}")
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type == trt.LayerType.ATTENTION_OUTPUT and precision == "fp32":
            # No fused float32 attention kernel: let the builder split it into matmuls and a softmax.
            layer.__class__ = trt.IAttentionOutputLayer
            layer.attention.decomposable = True
    return builder, network, parser


def build_plan(trt: Any, log: _Log, parsed: tuple, profiles: list[dict[str, Any]], capability: str) -> bytes:
    builder, network, _ = parsed
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    config.set_compute_capability(getattr(trt.ComputeCapability, capability.upper()), 0)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the layer list names the kernels
    for spec in profiles:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in spec["shapes"].items():
            profile.set_shape(name, low, opt, high)
        for name, (low, opt, high) in spec.get("values", {}).items():
            profile.set_shape_input(name, low, opt, high)
        config.add_optimization_profile(profile)
    log.layers.clear()
    log.errors.clear()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EaglexError(
            f"TensorRT for RTX could not build an engine for {capability}: {_one_line(log.errors)}"
        )
    return bytes(plan)


def build_rtx_engines(
    root: Path,
    manifest: Manifest,
    graphs: list[tuple[str, Callable[[], onnx.ModelProto], list[dict[str, Any]]]],
    precision: str,
    max_prompt: int,
    capabilities: tuple[str, ...],
    engine_dir: str,
    progress: Callable[[str], Any],
) -> EngineSpec:
    """Builds every (graph, capability) engine into root/engine_dir; returns the manifest's record.
    graphs: (name, a loader of its graph at `precision`, its datacenter profiles)."""
    trt = import_tensorrt_rtx()
    log = _Log(trt)
    written: list[Path] = []
    try:
        entries = _build_all(
            trt, log, root, manifest, graphs, precision, capabilities, engine_dir, progress, written
        )
    except BaseException:
        for path in written:  # no engine of a failed build stays behind
            path.unlink(missing_ok=True)
        raise
    return EngineSpec(
        tensorrt_version=trt.__version__,
        precision=precision,
        max_prompt=max_prompt,
        target=entries["target"],
        drafter=entries.get("drafter"),
        flavour=FLAVOUR,
        compute_capabilities=capabilities,
    )


def _build_all(
    trt: Any,
    log: _Log,
    root: Path,
    manifest: Manifest,
    graphs: list[tuple[str, Callable[[], onnx.ModelProto], list[dict[str, Any]]]],
    precision: str,
    capabilities: tuple[str, ...],
    engine_dir: str,
    progress: Callable[[str], Any],
    written: list[Path],
) -> dict[str, EngineFile]:
    entries: dict[str, EngineFile] = {}
    for name, load, profiles in graphs:
        spec = manifest.target if name == "target" else manifest.drafter
        assert spec is not None
        layers = manifest.target.num_layers if name == "target" else 1
        kv_width = spec.num_kv_heads * spec.head_dim
        model = standard_attention_graph(load())
        parsed = parse_network(trt, log, model, name, precision)
        shaped = rtx_profiles(profiles, manifest.target.max_context, kv_width, layers)
        files, layer_lists = {}, {}
        for capability in capabilities:
            progress(f"building the {name} engine ({precision}, {capability}) with TensorRT for RTX")
            plan = build_plan(trt, log, parsed, shaped, capability)
            stem = f"{engine_dir}/{name}.{precision}.{capability}"
            written += [root / f"{stem}.engine", root / f"{stem}.layers.txt"]
            written[-2].write_bytes(plan)
            written[-1].write_text("\n".join(log.layers) + "\n")
            files[capability], layer_lists[capability] = f"{stem}.engine", f"{stem}.layers.txt"
        entries[name] = EngineFile(
            profiles=tuple(p["name"] for p in profiles), files=files, layers=layer_lists
        )
    return entries


def attention_kernels(layers_text: str) -> dict[str, list[str]]:
    """From a builder's layer list (`*.layers.txt`): each ONNX Attention node (attention.N) -> the engine
    layers that implement it alone, over all profiles (a fused attention kernel is named *mha*)."""
    kernels: dict[str, list[str]] = {}
    for line in layers_text.splitlines():
        found = re.search(r"^Name: ([^,]+), .*Metadata: \[ONNX Layer: (attention\.\d+)\]$", line)
        if found:
            kernels.setdefault(found[2], []).append(found[1])
    return kernels
