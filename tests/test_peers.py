"""Benchmark peers: optional packages checked before any work, and onnxruntime-genai's build and settings
(without building a genai model, except in the slow check that reuses a cached build)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from eaglex.bench import genai
from eaglex.cli import main
from eaglex.errors import EaglexError
from eaglex.exporter.fetch import cache_dir
from eaglex.extras import missing, require


@pytest.fixture
def no_work(monkeypatch):
    """Loading an artifact fails the test: the checks must come before it."""

    def load(*args, **kwargs):
        raise AssertionError("the command started its work before checking its optional packages")

    monkeypatch.setattr("eaglex.runtime.engine.Engine.load", load)


def absent(monkeypatch, *modules: str) -> None:
    """Simulates uninstalled packages: a None in sys.modules makes `import` fail and `installed` say no."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


@pytest.mark.parametrize(
    ("modules", "args", "words"),
    [
        (["matplotlib"], [], ["matplotlib", "pip install 'eaglex[bench]'"]),
        (["llama_cpp"], ["--compare"], ["llama_cpp", "eaglex[peers]"]),
        (["onnxruntime_genai"], ["--compare", "--peers", "onnxruntime-genai"], ["eaglex[peers]"]),
        (["transformers"], ["--compare", "--peers", "transformers"], ["transformers", "eaglex[export]"]),
        (["torch", "llama_cpp"], ["--compare"], ["torch", "llama_cpp", "eaglex[export,peers]"]),
    ],
)
def test_bench_names_the_missing_extra_before_it_starts(monkeypatch, no_work, tmp_path, modules, args, words):
    absent(monkeypatch, *modules)
    result = CliRunner().invoke(main, ["bench", str(tmp_path / "artifact"), *args])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    for word in words:
        assert word in errors[0]
    assert "Traceback" not in result.output


def test_bench_refuses_an_unknown_peer(no_work, tmp_path):
    result = CliRunner().invoke(main, ["bench", str(tmp_path), "--compare", "--peers", "transformers,vllm"])
    assert result.exit_code == 2 and "error: --peers" in result.output and "llama.cpp" in result.output


def test_export_names_its_extra(monkeypatch, tmp_path):
    absent(monkeypatch, "torch")
    result = CliRunner().invoke(main, ["export", "--model", str(tmp_path), "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "pip install 'eaglex[export]'" in result.output
    assert not (tmp_path / "a").exists()


def test_missing_lists_only_absent_modules(monkeypatch):
    absent(monkeypatch, "onnx_ir")
    assert missing(["bench", "onnxruntime-genai"]) == {"onnxruntime-genai": ["onnx_ir"]}
    with pytest.raises(EaglexError, match=r"onnx_ir \(not installed\): pip install 'eaglex\[peers\]'"):
        require(["onnxruntime-genai"], "--compare")


def test_builder_commands_at_each_precision(tmp_path):
    commands = {
        name: kind.builder_args(tmp_path / "hf", tmp_path / "out", tmp_path / "c")[1:]
        for name, kind in genai.KINDS.items()
    }
    base = ["-m", "onnxruntime_genai.models.builder", "-i", str(tmp_path / "hf"), "-o", str(tmp_path / "out")]
    assert commands["fp32"] == [*base, "-p", "fp32", "-e", "cpu", "-c", str(tmp_path / "c")]
    assert commands["int4"] == [*base, "-p", "int4", "-e", "cpu", "-c", str(tmp_path / "c")]  # accuracy 4
    assert commands["int4 fp32-act"][-2:] == ["--extra_options", "accuracy_level=1"]


def test_setup_records_threads_and_quantization(tmp_path):
    config = {"model": {"decoder": {"filename": "model.onnx", "session_options": {"log_id": "x"}}}}
    (tmp_path / "genai_config.json").write_text(json.dumps(config))
    setup = genai.describe(tmp_path, genai.KINDS["int4 fp32-act"], 3, "0.18.0")
    assert "onnxruntime-genai 0.18.0" in setup and "-p int4 -e cpu, accuracy_level 1" in setup
    assert '"intra_op_num_threads": 3' in setup and '"log_id": "x"' in setup
    assert genai.session_overlay(3)["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 3


def test_a_failed_build_leaves_no_model_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("EAGLEX_CACHE", str(tmp_path))
    failed = subprocess.CompletedProcess([], 1, "", "ValueError: unsupported architecture\n")
    monkeypatch.setattr(genai.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(EaglexError, match=r"model builder failed .*unsupported architecture"):
        genai.model_dir(tmp_path / "model", genai.KINDS["fp32"], progress=lambda _: None)
    assert not (tmp_path / "genai" / "model" / "fp32").exists()


@pytest.mark.slow
@pytest.mark.smollm2
def test_genai_fp32_decodes_what_eaglex_plain_decodes(request):
    """Token for token on one prompt; needs genai's fp32 build of SmolLM2 cached (eaglex bench --compare
    makes it), so CI does not spend a minute building it."""
    pytest.importorskip("onnxruntime_genai")
    from eaglex.bench.methods import EaglexMethod
    from eaglex.runtime.engine import Engine

    folder = cache_dir() / "genai" / "smollm2-135m-instruct" / "fp32"
    if not (folder / "genai_config.json").exists():
        pytest.skip("no cached onnxruntime-genai build of SmolLM2")
    engine = Engine.load(request.getfixturevalue("smollm2_artifact"), threads=2)
    method = genai.GenaiMethod(folder, genai.KINDS["fp32"], 2, engine.stop_tokens)
    prompt = engine.encode("Give me three tips for a good night's sleep.", chat=True)
    decode = method(prompt, 32)
    assert decode.tokens == EaglexMethod(engine, False)(prompt, 32).tokens
    assert decode.passes == len(decode.tokens) - 1 and decode.weight_bytes > 0
