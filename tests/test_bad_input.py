"""Bad input as a new user makes it (docs/ERRORS.md): one `error:` line and status 2 from the CLI, an
`EaglexError` from the API, nothing half-written left behind. One test per finding of issue 32."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import assert_user_error, eaglex

from eaglex.errors import EaglexError
from eaglex.exporter.checkpoints import write_random_drafter
from eaglex.exporter.export import export_artifact
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationConfig


def export_error(model: Path, out: Path, drafter: Path | None = None) -> str:
    lines: list[str] = []
    with pytest.raises(EaglexError) as caught:
        export_artifact(model, out, drafter, max_context=64, progress=lines.append)
    assert "\n" not in str(caught.value)
    assert not any("tracing" in line for line in lines), "the error came after the slow part"
    return str(caught.value)


def test_export_checks_its_output_location_first(tiny_model, tmp_path):
    model = tiny_model("llama")
    (tmp_path / "file").write_text("x")
    assert "is a file" in export_error(model, tmp_path / "file" / "sub" / "out")
    assert "longer than 255" in export_error(model, tmp_path / ("n" * 300))
    assert "NUL" in export_error(model, Path(f"{tmp_path}/a\0b"))
    if Path("/proc").is_dir():  # a folder nobody can create anything in, root included
        message = export_error(model, Path("/proc/eaglex-test/out"))
        assert "cannot create" in message or "not writable" in message
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "not writable" in export_error(model, locked / "out")
    assert_user_error(eaglex("export", "--model", model, "--out", tmp_path / "file" / "out"), "is a file")


def test_model_and_drafter_folders_without_weights_or_with_truncated_ones(tiny_model, tmp_path):
    model = tiny_model("llama")
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (empty / name).write_bytes((model / name).read_bytes())
    assert "no weights" in export_error(empty, tmp_path / "out")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for entry in model.iterdir():
        (truncated / entry.name).write_bytes(entry.read_bytes())
    weights = (model / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    assert "truncated" in export_error(truncated, tmp_path / "out")
    (truncated / "model.safetensors").write_bytes(weights[:5])
    assert "truncated" in export_error(truncated, tmp_path / "out")
    drafter = write_random_drafter(model, tmp_path / "drafter", draft_vocab_size=64)
    data = (drafter / "model.safetensors").read_bytes()
    (drafter / "model.safetensors").write_bytes(data[:-10])
    assert "drafter" in export_error(model, tmp_path / "out", drafter)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_stale_partial_folders_of_killed_exports_are_removed(tiny_model, tmp_path):
    model = tiny_model("llama")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    stale = tmp_path / f".out.{int(dead.stdout)}.x1y2.partial"  # as make_work_dir names them
    (stale / "sub").mkdir(parents=True)
    running = tmp_path / f".out.{os.getpid()}.x3y4.partial"  # an export still at work: ours
    running.mkdir()
    unknown = tmp_path / ".out.abcd1234.partial"  # from an older eaglex: cannot tell, so named
    unknown.mkdir()
    (tmp_path / "broken").mkdir()  # a model folder without config.json: fails after the clean-up
    lines: list[str] = []
    with pytest.raises(EaglexError):
        export_artifact(tmp_path / "broken", tmp_path / "out", progress=lines.append)
    assert not stale.exists() and running.exists() and unknown.exists()
    assert any(str(stale) in line and "killed" in line for line in lines), lines
    assert any(str(unknown) in line for line in lines), lines
    assert model.is_dir()


def test_api_rejects_bad_arguments_with_eaglex_errors(tiny_artifact):
    engine = Engine.load(tiny_artifact)
    prompt = engine.encode("w5 w6")
    bad_configs = [
        {"max_new_tokens": "8"},
        {"max_new_tokens": 2.5},
        {"max_new_tokens": True},
        {"seed": -1},
        {"seed": 2**64},
        {"seed": "1"},
        {"temperature": "0.5"},
        {"temperature": float("nan")},
        {"top_p": None},
        {"top_k": 1.0},
        {"depth": -3},
        {"speculative": "yes"},
    ]
    for settings in bad_configs:
        with pytest.raises(EaglexError):
            GenerationConfig(**settings)
    for overrides in ({"max_new_tokens": "8"}, {"seed": -1}, {"topk": 3}):
        with pytest.raises(EaglexError):
            engine.default_config(**overrides)
    good = engine.default_config(max_new_tokens=2)
    for call in (
        lambda: engine.encode("w5 \udcff"),  # bytes that were not UTF-8, as Python passes them in argv
        lambda: engine.encode(b"w5"),
        lambda: list(engine.generate("w5 w6", good)),
        lambda: list(engine.generate([1.5, 2], good)),
        lambda: list(engine.generate(prompt, {"max_new_tokens": 2})),
        lambda: Engine.load(tiny_artifact, threads="2"),
        lambda: Engine.load(tiny_artifact, threads=0),
        lambda: Engine.load(None),
    ):
        with pytest.raises(EaglexError):
            call()


def test_tree_settings_have_upper_bounds(tiny_artifact):
    engine = Engine.load(tiny_artifact)
    prompt = engine.encode("w5 w6")
    with pytest.raises(EaglexError, match="--depth must be between 1 and 23"):
        list(engine.generate(prompt, engine.default_config(depth=1000)))
    with pytest.raises(EaglexError, match="--depth must be between 1 and 3"):
        list(engine.generate(prompt, engine.default_config(depth=4, total_tokens=4)))
    with pytest.raises(EaglexError, match="--top-k"):
        list(engine.generate(prompt, engine.default_config(top_k=17)))
    assert list(engine.generate(prompt, engine.default_config(max_new_tokens=2, depth=3, total_tokens=4)))


def test_cli_usage_errors_are_one_line(tiny_artifact, tmp_path):
    run = ("run", tiny_artifact, "--prompt", "w5")
    assert_user_error(eaglex(*run, "--dpth", "3"), "--dpth", "--help")
    assert_user_error(eaglex(*run, "--max-new-tokens", "x"), "--max-new-tokens")
    assert_user_error(eaglex("bogus"), "bogus")
    assert_user_error(eaglex(*run, "--seed", "-1"), "--seed")
    assert_user_error(eaglex(*run, "--depth", "1000"), "--depth", "23")
    assert_user_error(eaglex("bench", tiny_artifact, "--limit", "0"), "--limit")
    prompts = tmp_path / "prompts.json"
    for shape in ('{"text": "w5"}', "[1, 2]", '[{"prompt": "w5"}]', "[]", "\xff"):
        prompts.write_text(shape, errors="surrogateescape")
        result = eaglex("eval", tiny_artifact, "--reference", tiny_artifact, "--prompts", prompts)
        assert_user_error(result, "prompts.json")
    assert eaglex("--help").returncode == 0


def _wait_for_library(pid: int, marker: str, timeout: float = 30.0) -> None:
    """Until the process has mapped a shared library whose path holds `marker` (it is importing it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if marker in Path(f"/proc/{pid}/maps").read_text():
                return
        except OSError:
            return  # the process has ended
        time.sleep(0.002)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="watches /proc/PID/maps")
def test_sigint_while_starting_never_shows_a_traceback(tiny_artifact):
    """Ctrl-C in `eaglex run`'s first second: while numpy or onnxruntime is being imported, or later.
    (Python's own start-up, before any eaglex code runs, is out of reach: it prints KeyboardInterrupt.)"""
    for marker in ("_multiarray_umath", "onnxruntime_pybind11_state", "tokenizers"):
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "eaglex",
                "run",
                tiny_artifact,
                "--prompt",
                "w5",
                "--max-new-tokens",
                "60",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for_library(process.pid, marker)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert "Traceback" not in stderr, stderr
        assert process.returncode in (0, 130), (marker, process.returncode, stderr)
        if process.returncode == 130:
            assert stderr.strip().splitlines()[-1] == "interrupted"


FINALIZER_CLI = """
import os, signal, sys, threading, time, types
import eaglex.__main__ as launcher
class Slow:
    def __del__(self):
        time.sleep(1.0)
def cli():
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    Slow()
    time.sleep(5)
sys.modules["eaglex.cli"] = types.SimpleNamespace(main=cli)
launcher.main()
"""


def test_sigint_swallowed_by_a_finalizer_still_interrupts():
    """Python prints an interrupt that lands in a __del__ as "Exception ignored" and carries on; the
    launcher raises it again instead."""
    result = subprocess.run([sys.executable, "-c", FINALIZER_CLI], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (130, "interrupted\n")


def test_prompt_file_shapes(tmp_path):
    from eaglex.bench.agreement import load_prompt_file

    path = tmp_path / "p.json"
    path.write_text(json.dumps(["w5", {"text": "w6", "chat": False}]))
    assert load_prompt_file(path) == [("w5", True), ("w6", False)]
    path.write_text(json.dumps([{"text": "w6", "chat": "no"}]))
    with pytest.raises(EaglexError, match="prompt 0"):
        load_prompt_file(path)
