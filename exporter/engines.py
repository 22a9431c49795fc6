"""`eaglex build`: a TensorRT-flavoured artifact's ONNX graphs -> TensorRT engines, plugin library, manifest.

Each graph gets two optimisation profiles: "prefill" (up to the longest prompt) and "decode" (a verify
pass of up to max_total_tokens tree nodes, or a drafter step). The tree-attention plugin library is
built from plugins/tree_attention with CMake and copied into the artifact, next to the engines that
need it. TensorRT, a GPU and the CUDA toolkit are needed; without them this fails with one line that
says what to install. `--flavour tensorrt-rtx` builds with TensorRT for RTX instead, ahead of time and
without a GPU (engines_rtx.py); `_record_engines` writes either flavour's record into the manifest.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eaglex.errors import EaglexError
from eaglex.runtime import manifest as contract
from eaglex.runtime.backends.tensorrt import load_plugin_library

PRECISIONS = ("fp32", "fp16", "bf16")
FLAVOURS = ("tensorrt", "tensorrt-rtx")
ENGINE_DIR = "engines"
PLUGIN_LIBRARY = "libeaglex_tree_attention_trt.so"
INSTALL_TENSORRT = (
    "TensorRT is not installed: on a machine with an NVIDIA GPU, pip install 'eaglex[tensorrt]' "
    "(TensorRT 10.3+ wheels from pypi.nvidia.com) and put nvcc (the CUDA toolkit) on PATH"
)


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise EaglexError(INSTALL_TENSORRT) from None
    return tensorrt


def build_engines(
    artifact_dir: str | Path,
    precision: str = "fp16",
    max_prompt: int | None = None,
    timing_cache: str | Path | None = None,
    progress: Callable[[str], Any] = print,
    flavour: str | None = None,
    compute_capabilities: str | None = None,
) -> Path:
    """Builds engines for the artifact's graphs and records them in its manifest; returns the artifact.

    flavour: "tensorrt" (datacenter TensorRT, on the GPU that will run the engines) or "tensorrt-rtx"
    (TensorRT for RTX, ahead of time for `compute_capabilities`, e.g. "sm80,sm89"); by default datacenter
    TensorRT where it is installed, else TensorRT for RTX."""
    from .engines_rtx import FLAVOUR as RTX
    from .engines_rtx import build_rtx_engines, parse_capabilities

    root = Path(artifact_dir)
    if not (root / contract.NAME).is_file():
        raise EaglexError(
            f"{root} has no manifest.json: create the artifact with eaglex export --backend tensorrt"
        )
    manifest = contract.load(root)
    if manifest.backend != "tensorrt":
        raise EaglexError(
            f"{root} was exported for {manifest.backend}: TensorRT engines need the plugin "
            "graphs, re-export with eaglex export --backend tensorrt"
        )
    if precision not in PRECISIONS:
        raise EaglexError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    flavour = flavour or default_flavour()
    if flavour not in FLAVOURS:
        raise EaglexError(f"unknown flavour {flavour!r}: choose one of {', '.join(FLAVOURS)}")
    if flavour == RTX:
        if timing_cache is not None:
            raise EaglexError("--timing-cache is for --flavour tensorrt: TensorRT for RTX keeps none")
        capabilities = parse_capabilities(compute_capabilities or _gpu_capability())
    elif compute_capabilities is not None:
        raise EaglexError(
            "--compute-capability is for --flavour tensorrt-rtx: datacenter TensorRT builds for the GPU "
            "it runs on"
        )
    max_context = manifest.target.max_context
    max_prompt = min(max_prompt or max_context, max_context)
    max_nodes = manifest.tree.max_total_tokens
    names = ["target", *(["drafter"] if manifest.drafter is not None else [])]
    engines = root / ENGINE_DIR
    if flavour == RTX:
        graphs = [
            (
                name,
                functools.partial(_load_at_precision, root / getattr(manifest, name).file, precision),
                optimization_profiles(name, manifest, max_prompt, max_nodes),
            )
            for name in names
        ]
        fresh = not engines.exists()
        engines.mkdir(exist_ok=True)
        try:
            spec = build_rtx_engines(
                root, manifest, graphs, precision, max_prompt, capabilities, ENGINE_DIR, progress
            )
        except BaseException:
            if fresh:  # a failed build leaves the artifact as it was
                shutil.rmtree(engines, ignore_errors=True)
            raise
    else:
        spec = _build_datacenter(
            root, manifest, names, precision, max_prompt, max_nodes, timing_cache, progress
        )
    _record_engines(root, manifest, spec)
    progress(f"engines in {engines}")
    return root


def default_flavour() -> str:
    """Datacenter TensorRT where it is installed; else TensorRT for RTX where that is; else one line."""
    for flavour, module in (("tensorrt", "tensorrt"), ("tensorrt-rtx", "tensorrt_rtx")):
        if importlib.util.find_spec(module) is not None:
            return flavour
    raise EaglexError(
        "no TensorRT is installed: pip install 'eaglex[tensorrt-rtx]' (TensorRT for RTX, from PyPI, "
        "builds for RTX and Ampere GPUs without one), or on a machine with an NVIDIA GPU "
        "pip install 'eaglex[tensorrt]' (datacenter TensorRT, from pypi.nvidia.com)"
    )


def _gpu_capability() -> str:
    """This machine's GPU as smXY, for TensorRT for RTX when no --compute-capability is given."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        cudart = None
    if cudart is not None:
        error, props = cudart.cudaGetDeviceProperties(0)
        if error == cudart.cudaError_t.cudaSuccess:
            return f"sm{props.major}{props.minor}"
    raise EaglexError(
        "no GPU is visible here: name the GPUs to build for with --compute-capability, e.g. sm89 "
        "(RTX 40xx), sm86 (RTX 30xx, A10), sm80 (A100), sm120 (RTX 50xx)"
    )


def _load_at_precision(path: Path, precision: str) -> Any:
    import onnx

    from .precision import lower_precision

    model = onnx.load(str(path))
    return model if precision == "fp32" else lower_precision(model, precision)


def _record_engines(root: Path, manifest: contract.Manifest, spec: contract.EngineSpec) -> None:
    """The manifest's engine record and the checksums of everything in engines/, saved atomically."""
    files = {k: v for k, v in manifest.files.items() if not k.startswith(f"{ENGINE_DIR}/")}
    built = contract.file_table(root, (f"{ENGINE_DIR}/{path.name}" for path in (root / ENGINE_DIR).iterdir()))
    contract.save(dataclasses.replace(manifest, engines=spec, files={**files, **built}))


def _build_datacenter(
    root: Path,
    manifest: contract.Manifest,
    names: list[str],
    precision: str,
    max_prompt: int,
    max_nodes: int,
    timing_cache: str | Path | None,
    progress: Callable[[str], Any],
) -> contract.EngineSpec:
    trt = import_tensorrt()
    capability = _check_gpu()
    engines = root / ENGINE_DIR
    engines.mkdir(exist_ok=True)
    progress("building the tree-attention plugin library (CMake, nvcc)")
    library = _plugin_library()
    shutil.copy2(library, engines / PLUGIN_LIBRARY)
    logger = trt.Logger(trt.Logger.WARNING)
    load_plugin_library(trt, engines / PLUGIN_LIBRARY)

    cache_path = Path(timing_cache) if timing_cache else engines / "timing.cache"
    entries: dict[str, contract.EngineFile] = {}
    for name in names:
        progress(f"building the {name} engine ({precision}); this takes minutes")
        profiles = optimization_profiles(name, manifest, max_prompt, max_nodes)
        with _graph_at_precision(root / getattr(manifest, name).file, precision) as onnx_path:
            plan = _build(trt, logger, onnx_path, profiles, cache_path)
        engine_file = f"{ENGINE_DIR}/{name}.{precision}.engine"
        (root / engine_file).write_bytes(plan)
        entries[name] = contract.EngineFile(file=engine_file, profiles=tuple(p["name"] for p in profiles))
    return contract.EngineSpec(
        tensorrt_version=trt.__version__,
        precision=precision,
        max_prompt=max_prompt,
        plugin_library=f"{ENGINE_DIR}/{PLUGIN_LIBRARY}",
        target=entries["target"],
        drafter=entries.get("drafter"),
        compute_capabilities=(capability,),
    )


def _check_gpu() -> str:
    """This machine's GPU as smXY; raises where cuda-python or a GPU is missing."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise EaglexError("cuda-python is not installed: pip install 'eaglex[tensorrt]'") from None
    error, count = cudart.cudaGetDeviceCount()
    if error != cudart.cudaError_t.cudaSuccess or count == 0:
        raise EaglexError(
            "no CUDA GPU is visible (cudaGetDeviceCount failed or found none): "
            "TensorRT engines are built on the GPU that will run them (or use --flavour tensorrt-rtx)"
        )
    return _gpu_capability()


def _plugin_library() -> Path:
    from eaglex.plugins.tree_attention.build import build_library

    if shutil.which("nvcc") is None:
        raise EaglexError("nvcc is not on PATH: install the CUDA toolkit to build the tree-attention plugin")
    # The pip wheels of TensorRT carry no C++ headers: they come with libnvinfer-dev or the TensorRT tar.
    root = os.environ.get("TensorRT_ROOT")  # noqa: SIM112 (the name CMake and NVIDIA use)
    places = (
        [Path(root) / "include"]
        if root
        else [
            Path("/usr/include"),
            Path("/usr/include/x86_64-linux-gnu"),
            Path("/usr/include/aarch64-linux-gnu"),
        ]
    )
    if not any((place / "NvInferRuntime.h").is_file() for place in places):
        raise EaglexError(
            "TensorRT's C++ headers (NvInferRuntime.h) are missing: apt-get install libnvinfer-dev, "
            "or set TensorRT_ROOT to an unpacked TensorRT tar"
        )
    options = ["-DEAGLEX_TENSORRT=ON", *([f"-DTensorRT_ROOT={root}"] if root else [])]
    return build_library("eaglex_tree_attention_trt", options)


def optimization_profiles(
    graph: str, manifest: contract.Manifest, max_prompt: int, max_nodes: int
) -> list[dict[str, Any]]:
    """Shapes (min, opt, max) of each dynamic input, per profile. W, the tree mask's words, spans the
    whole cache so that any mask_start fits."""
    words = -(-manifest.target.max_context // 32)

    def mask(rows: tuple[int, int, int]) -> dict[str, tuple]:
        return {"tree_mask": tuple((1, r, w) for r, w in zip(rows, (1, 1, words), strict=True))}

    if graph == "target":
        prefill, decode = (1, max_prompt // 2 or 1, max_prompt), (1, min(24, max_nodes), max_nodes)
        return [
            {
                "name": "prefill",
                "shapes": {
                    "input_ids": tuple((1, s) for s in prefill),
                    "position_ids": tuple((1, s) for s in prefill),
                    **mask(prefill),
                    "logit_index": ((1,), (1,), (max_prompt,)),
                },
            },
            {
                "name": "decode",
                "shapes": {
                    "input_ids": tuple((1, s) for s in decode),
                    "position_ids": tuple((1, s) for s in decode),
                    **mask(decode),
                    "logit_index": tuple((s,) for s in decode),
                },
            },
        ]
    assert manifest.drafter is not None
    hidden = manifest.drafter.hidden_size
    width = len(manifest.target.feature_layers) * manifest.target.hidden_size
    top_k = manifest.drafter.max_top_k
    profiles = []
    # prefill: the prompt's features (Sh = 0); decode: accepted rows or one tree level of hidden rows.
    for name, features, hidden_rows in (
        ("prefill", (0, max_prompt // 2 or 1, max_prompt), (0, 0, top_k)),
        ("decode", (0, 1, max_nodes), (0, top_k, top_k)),
    ):
        rows = tuple(max(1, f + h) for f, h in zip(features, hidden_rows, strict=True))
        profiles.append(
            {
                "name": name,
                "shapes": {
                    "input_embeds": tuple((1, s, hidden) for s in rows),
                    "features": tuple((1, s, width) for s in features),
                    "hidden": tuple((1, s, hidden) for s in hidden_rows),
                    "position_ids": tuple((1, s) for s in rows),
                    **mask(rows),
                    "logit_index": ((1,), (top_k,), (rows[2],)),
                },
                "values": {"top_k": ((1,), (min(8, top_k),), (top_k,))},
            }
        )
    return profiles


@contextmanager
def _graph_at_precision(path: Path, precision: str) -> Iterator[Path]:
    """The graph itself for fp32; for fp16/bf16 a converted copy beside it, removed afterwards (TensorRT
    builds strongly typed networks: the graph's types are the engine's precision; precision.py)."""
    if precision == "fp32":
        yield path
        return
    import onnx

    from .precision import lower_precision

    out = path.with_name(f"{path.stem}.{precision}.onnx")
    try:
        onnx.save(
            lower_precision(onnx.load(str(path)), precision),
            str(out),
            save_as_external_data=True,
            location=f"{out.name}.data",
        )
        yield out
    finally:
        out.unlink(missing_ok=True)
        out.with_name(f"{out.name}.data").unlink(missing_ok=True)


def _build(trt: Any, logger: Any, onnx_path: Path, profiles: list[dict[str, Any]], cache_path: Path) -> bytes:
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # TensorRT 10; always on in 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EaglexError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    # The plugin writes the KV cache in place: its present outputs alias its past inputs.
    config.set_preview_feature(trt.PreviewFeature.ALIASED_PLUGIN_IO_10_03, True)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    for spec in profiles:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in spec["shapes"].items():
            profile.set_shape(name, low, opt, high)
        for name, (low, opt, high) in spec.get("values", {}).items():
            profile.set_shape_input(name, low, opt, high)  # top_k sets the drafter's output width
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EaglexError(f"TensorRT could not build an engine from {onnx_path.name} (see its log above)")
    cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return bytes(plan)
