"""The `eaglex` command end to end on a tiny model: export, run, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def eaglex(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "eaglex.cli", *map(str, args)], capture_output=True, text=True
    )


def assert_user_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """Exit status 2, one `error:` line (after any progress lines) that names the problem, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in errors[0], errors[0]


@pytest.fixture(scope="module")
def artifact(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "artifact"
    result = eaglex(
        "export", "--model", tiny_model("llama"), "--drafter", "random", "--out", out, "--max-context", "160"
    )
    assert result.returncode == 0, result.stderr
    assert "tracing target" in result.stderr  # progress is shown
    return out


@pytest.fixture
def damaged(artifact, tmp_path) -> Path:
    copy = tmp_path / "damaged"
    shutil.copytree(artifact, copy)
    return copy


def test_run_streams_text_and_reports_statistics(artifact):
    result = eaglex("run", artifact, "--prompt", "w5 w6 w7", "--max-new-tokens", "12", "--top-k", "4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("w")
    stats = result.stderr.strip().splitlines()[-1]
    for field in ("tok/s", "GB/s", "mean acceptance length", "target passes"):
        assert field in stats, stats


def test_chat_and_plain_decoding_and_sampling(artifact):
    for extra in (["--chat"], ["--no-spec"], ["--temperature", "0.8", "--top-p", "0.9", "--seed", "3"]):
        result = eaglex("run", artifact, "--prompt", "w9 w10", "--max-new-tokens", "5", *extra)
        assert result.returncode == 0, result.stderr


def test_export_refuses_an_existing_folder_and_leaves_nothing_behind(artifact, tiny_model, tmp_path):
    assert_user_error(eaglex("export", "--model", tiny_model("llama"), "--out", artifact), "exists")
    config = json.loads((tiny_model("llama") / "config.json").read_text())
    broken = tmp_path / "gpt2"
    shutil.copytree(tiny_model("llama"), broken)
    (broken / "config.json").write_text(
        json.dumps({**config, "model_type": "gpt2", "architectures": ["GPT2"]})
    )
    assert_user_error(eaglex("export", "--model", broken, "--out", tmp_path / "out"), "unsupported")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], (
        "a partial folder was left behind"
    )


def test_drafter_that_does_not_fit_the_target(tiny_model, tmp_path):
    from eaglex.exporter.checkpoints import write_random_drafter

    drafter = write_random_drafter(tiny_model("llama"), tmp_path / "drafter", draft_vocab_size=64)
    config = json.loads((drafter / "config.json").read_text())
    (drafter / "config.json").write_text(json.dumps({**config, "hidden_size": 96}))
    assert_user_error(
        eaglex(
            "export",
            "--model",
            tiny_model("llama"),
            "--drafter",
            drafter,
            "--out",
            tmp_path / "out",
            "--max-context",
            "160",
        ),
        "hidden",
    )
    assert not (tmp_path / "out").exists()


def test_missing_and_corrupted_files(damaged):
    data = damaged / "target.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert_user_error(eaglex("run", damaged, "--prompt", "w5"), "checksum", "target.onnx.data")
    (damaged / "drafter.onnx").unlink()
    assert_user_error(eaglex("run", damaged, "--prompt", "w5"), "missing", "drafter.onnx")
    (damaged / "manifest.json").write_text("{not json")
    assert_user_error(eaglex("run", damaged, "--prompt", "w5"), "manifest.json")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--prompt", " ".join(["w7"] * 200)], ["context limit", "160"]),
        (["--prompt", "w5", "--temperature", "-1"], ["--temperature"]),
        (["--prompt", "w5", "--top-p", "0"], ["--top-p"]),
        (["--prompt", "w5", "--top-k", "0"], ["--top-k"]),
        (["--prompt", "w5", "--depth", "0"], ["--depth"]),
        (["--prompt", "w5", "--total-tokens", "500"], ["--total-tokens"]),
        (["--prompt", "w5", "--ngram", "-1"], ["--ngram"]),
        (["--prompt", "w5", "--min-path-probability", "1.5"], ["--min-path-probability", "between 0 and 1"]),
        (["--prompt", "w5", "--min-grow-probability", "nan"], ["--min-grow-probability"]),
        (["--prompt", "w5", "--max-new-tokens", "0"], ["--max-new-tokens"]),
        (["--prompt", "w5", "--threads", "0"], ["--threads"]),
        (["--prompt", ""], ["empty"]),
    ],
)
def test_invalid_settings(artifact, args, words):
    assert_user_error(eaglex("run", artifact, *args), *words)
