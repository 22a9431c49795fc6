"""The artifact contract (runtime/manifest.py): typed load and save, and a fuzz of damaged artifacts.

Whatever happens to manifest.json or the small files beside it, loading ends in an artifact that works or
in one `EaglexError` naming the file; never in a TypeError, KeyError or UnicodeDecodeError.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli import assert_user_error, eaglex

from eaglex.errors import EaglexError
from eaglex.runtime import manifest as contract
from eaglex.runtime.engine import Engine

DATA = Path(__file__).parent / "data"
FUZZ = settings(
    deadline=None,
    derandomize=True,  # the same cases on every run: CI does not flake, failures reproduce
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# Keys the loader may miss: older manifests lack them, or they are null by default.
OPTIONAL = {
    ("backend",),
    ("drafter",),
    ("kv_compact",),
    ("target", "dtype"),
    ("target", "quantization"),
    ("target", "bytes_per_pass"),
    ("drafter", "dtype"),
    ("drafter", "quantization"),
    ("drafter", "bytes_per_pass"),
    ("tokens", "bos_token_id"),
    ("tokens", "pad_token_id"),
    ("tokens", "has_chat_template"),
}
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def test_main_exported_manifest_loads_and_round_trips():
    """A manifest exported by main (SmolLM2 with its drafter, tree tuned) loads and saves unchanged."""
    data = json.loads((DATA / "manifest-v1-smollm2.json").read_text())
    manifest = contract.from_json(data, Path("."))
    assert manifest.target.num_layers == 30 and manifest.drafter.max_top_k == 16
    assert manifest.tree == contract.TreeSpec(top_k=1, depth=3, total_tokens=4, max_total_tokens=128)
    assert manifest.tokens.eos_token_ids == (2,) and manifest.kv_compact == "kv_compact.onnx"
    assert manifest.to_json() == data


def test_save_is_atomic_and_refuses_an_invalid_manifest(tiny_artifact, tmp_path):
    copy = Path(shutil.copytree(tiny_artifact, tmp_path / "copy"))
    manifest = contract.load(copy)
    contract.save(dataclasses.replace(manifest, tree=dataclasses.replace(manifest.tree, speculative=False)))
    assert json.loads((copy / "manifest.json").read_text())["tree"]["speculative"] is False
    assert contract.load(copy).tree.speculative is False
    before = (copy / "manifest.json").read_bytes()
    with pytest.raises(EaglexError, match=r"tree\.top_k"):
        tree = dataclasses.replace(manifest.tree, top_k=100)
        contract.save(dataclasses.replace(manifest, tree=tree))
    assert (copy / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in copy.iterdir() if "partial" in p.name) == []


def _paths(value, prefix=()):
    """Every (path, value) in a JSON document, parents before children."""
    yield prefix, value
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))


def _set(document, path, value):
    for key in path[:-1]:
        document = document[key]
    if value is _DELETE:
        del document[path[-1]]
    else:
        document[path[-1]] = value


_DELETE = object()


@st.composite
def mutated_manifest(draw, base: dict):
    """(bytes of a mutated manifest, whether the mutation must be refused)."""
    document = json.loads(json.dumps(base))
    paths = [p for p, _ in _paths(document) if p]
    kind = draw(st.sampled_from(["delete", "retype", "integer", "replace", "unknown", "bytes"]))
    path = draw(st.sampled_from(paths))
    old = dict(_paths(document))[path]
    must_fail = False
    if kind == "delete":
        _set(document, path, _DELETE)
        must_fail = path not in OPTIONAL and path[0] != "files" and path[:2] != ("target", "quantization")
    elif kind == "retype" and old is not None:
        # A value of another JSON type: a string for a number, a list for an object, and so on.
        new = draw(JSON.filter(lambda v, old=old: type(v) is not type(old) and v is not None))
        _set(document, path, new)
        must_fail = True  # no field takes two JSON types (true is no integer, 5.0 no count), null aside
    elif kind == "integer" and type(old) is int:
        _set(document, path, draw(st.sampled_from([-1, 0, old - 1, old + 1, 2**40, -(2**63)])))
    elif kind == "replace":
        _set(document, path, draw(JSON))
    elif kind == "unknown" and isinstance(old, dict) and path[0] != "files":
        _set(document, (*path, draw(st.sampled_from(["extra", "Target", "sha", "files"]))), draw(JSON))
        must_fail = True
    text = json.dumps(document).encode("utf-8", "surrogatepass")
    if kind == "bytes":
        cut = draw(st.integers(0, len(text)))
        junk = draw(st.sampled_from([b"", b"\xff", b"\xc3", b"\x00", b"}", b"\xed\xa0\x80"]))
        # Cutting the closing brace and appending one gives the document back: that one loads.
        damaged = text[:cut] + junk
        text, must_fail = damaged, damaged != text
    return text, must_fail


def _write(folder: Path, name: str, data: bytes) -> None:
    (folder / name).write_bytes(data)


def test_fuzz_manifest_loader(tiny_artifact):
    """Thousands of damaged manifests: each loads (and round-trips) or is one EaglexError naming the file."""
    base = json.loads((tiny_artifact / "manifest.json").read_text())
    folder = Path(tempfile.mkdtemp(prefix="fuzz-manifest-"))
    for entry in tiny_artifact.iterdir():
        (folder / entry.name).symlink_to(entry)
    (folder / "manifest.json").unlink()
    seen = {"refused": 0, "loaded": 0}

    @settings(FUZZ, max_examples=2500)
    @given(mutated_manifest(base))
    def check(case):
        text, must_fail = case
        _write(folder, "manifest.json", text)
        try:
            manifest = contract.load(folder, checksums=False)
        except EaglexError as e:
            assert "manifest.json" in str(e) or "artifact file" in str(e), str(e)
            assert "\n" not in str(e)
            seen["refused"] += 1
            return
        assert not must_fail, text[:300]
        assert contract.from_json(manifest.to_json(), folder) == manifest
        seen["loaded"] += 1

    try:
        check()
    finally:
        shutil.rmtree(folder)
    assert seen["refused"] > 1000 and seen["loaded"] > 50, seen


def _with_file(folder: Path, name: str, data: bytes) -> None:
    """Replaces an artifact file and updates its checksum, as if the export had written it broken."""
    _write(folder, name, data)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    _write(folder, "manifest.json", json.dumps(manifest).encode())


@st.composite
def damaged_small_file(draw, originals: dict[str, bytes]):
    name = draw(st.sampled_from(sorted(originals)))
    data = originals[name]
    how = draw(st.sampled_from(["truncate", "junk", "json"]))
    if how == "truncate":
        return name, data[: draw(st.integers(0, len(data) - 1))]
    if how == "junk":
        at = draw(st.integers(0, len(data)))
        return name, data[:at] + draw(
            st.sampled_from([b"\xff", b"{%", b"}}", b"{{ x.y.z() }}", b"\x00"])
        ) + data[at:]
    return name, json.dumps(draw(JSON)).encode()


def test_fuzz_engine_load(tiny_artifact, tmp_path):
    """Damaged manifests and small artifact files (tokenizer.json, tokenizer_config.json, chat template)
    with checksums that match: Engine.load and a short chat generation work, or raise EaglexError."""
    base = json.loads((tiny_artifact / "manifest.json").read_text())
    small = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
    originals = {n: (tiny_artifact / n).read_bytes() for n in small if (tiny_artifact / n).is_file()}
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(originals)
    folder = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, folder)
    outcomes = {"refused": 0, "worked": 0}

    @settings(FUZZ, max_examples=150)
    @given(
        st.one_of(
            mutated_manifest(base).map(lambda c: ("manifest.json", c[0])), damaged_small_file(originals)
        )
    )
    def check(case):
        name, data = case
        for original, content in originals.items():
            _write(folder, original, content)
        _write(folder, "manifest.json", json.dumps(base).encode())
        if name == "manifest.json":
            _write(folder, name, data)
        else:
            _with_file(folder, name, data)
        try:
            engine = Engine.load(folder, checksums=False)
            config = engine.default_config(max_new_tokens=3)
            list(
                engine.generate(
                    engine.encode("w5 w6", chat=engine.tokenizer.chat_template is not None), config
                )
            )
        except EaglexError as e:
            assert "\n" not in str(e)
            outcomes["refused"] += 1
            return
        outcomes["worked"] += 1

    check()
    assert outcomes["refused"] > 50 and outcomes["worked"] > 5, outcomes


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (b"[1, 2, 3]", ["manifest.json", "format"]),
        (b'{"format": "eaglex-artifact", "version": 1, "tokens": [2]}', ["manifest.json"]),
        (b'{"format": "\xff\xfe"}', ["manifest.json", "UTF-8"]),
    ],
)
def test_cli_refuses_a_damaged_manifest_in_one_line(tiny_artifact, tmp_path, damage, words):
    copy = Path(shutil.copytree(tiny_artifact, tmp_path / "copy"))
    (copy / "manifest.json").write_bytes(damage)
    assert_user_error(eaglex("run", copy, "--prompt", "w5"), *words)


def test_cli_refuses_wrong_types_and_ranges_naming_the_field_not_a_flag(tiny_artifact, tmp_path):
    copy = Path(shutil.copytree(tiny_artifact, tmp_path / "copy"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["target"]["max_context"] = -1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = eaglex("run", copy, "--prompt", "w5")
    assert_user_error(result, "target.max_context", "re-export")
    assert "--" not in result.stderr.splitlines()[-1].split("manifest.json")[1]  # no flag is blamed
    manifest["target"]["max_context"] = 64
    manifest["tree"]["depth"] = "5"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert_user_error(eaglex("tune", copy), "tree.depth", "re-export")


def test_cli_refuses_a_broken_chat_template_and_a_truncated_tokenizer(tiny_artifact, tmp_path):
    copy = Path(shutil.copytree(tiny_artifact, tmp_path / "copy"))
    template = "chat_template.jinja" if (copy / "chat_template.jinja").is_file() else None
    if template:
        _with_file(copy, template, b"{% for m in messages %}{{ m['content'] }")
        assert_user_error(eaglex("run", copy, "--prompt", "w5", "--chat"), "chat template", template)
        shutil.copy(tiny_artifact / template, copy / template)
        shutil.copy(tiny_artifact / "manifest.json", copy / "manifest.json")
    data = (copy / "tokenizer.json").read_bytes()
    _with_file(copy, "tokenizer.json", data[: len(data) // 2])
    assert_user_error(eaglex("run", copy, "--prompt", "w5"), "tokenizer.json", "re-export")


def test_a_key_with_control_characters_stays_one_line():
    # Found by the fuzz test: a key holding a newline split the error message in two.
    message = str(contract.ManifestError("files.\n\ud800", "is not part of format version 1"))
    assert "\n" not in message and message.isprintable() and "\\n" in message


def test_tree_cuts_are_probabilities(tiny_artifact):
    """tree.min_path_probability and min_grow_probability: numbers in [0, 1] (JSON may write 1.0 as 1);
    NaN, out-of-range values and strings are refused naming the field; 0 (off) is left out of the file."""
    raw = json.loads((tiny_artifact / "manifest.json").read_text())
    for value in (0, 1, 0.05):
        tree = {**raw["tree"], "min_path_probability": value, "min_grow_probability": value}
        loaded = contract.from_json({**raw, "tree": tree}, tiny_artifact)
        assert loaded.tree.min_path_probability == loaded.tree.min_grow_probability == value
        assert ("min_path_probability" in loaded.to_json()["tree"]) == (value != 0)
    for value, words in ((1.5, "between 0 and 1"), (float("nan"), "finite"), ("0.1", "must be float")):
        with pytest.raises(contract.ManifestError, match=r"tree\.min_grow_probability") as refused:
            tree = {**raw["tree"], "min_grow_probability": value}
            contract.from_json({**raw, "tree": tree}, tiny_artifact)
        assert words in str(refused.value)
