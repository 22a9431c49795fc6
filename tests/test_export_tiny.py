"""Exporter tests on tiny random models: ONNX graphs against Hugging Face and our torch modules.

The helpers at the top (in-place KV sessions, tree masks, the target parity check) are also used by
test_export_smollm2.py on the real model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import safetensors.torch
import torch

from eaglex.errors import EaglexError
from eaglex.exporter import export as export_module
from eaglex.exporter.checkpoints import load_drafter, load_target, read_target_config, write_random_drafter
from eaglex.exporter.export import export_artifact
from eaglex.runtime.manifest import sha256

MAX_CONTEXT = 256
DRAFT_VOCAB = 64
OFFICIAL_DRAFTER_KEYS = {
    "fc.weight",
    "midlayer.hidden_norm.weight",
    "midlayer.input_layernorm.weight",
    "midlayer.post_attention_layernorm.weight",
    "midlayer.self_attn.q_proj.weight",
    "midlayer.self_attn.k_proj.weight",
    "midlayer.self_attn.v_proj.weight",
    "midlayer.self_attn.o_proj.weight",
    "midlayer.mlp.gate_proj.weight",
    "midlayer.mlp.up_proj.weight",
    "midlayer.mlp.down_proj.weight",
    "norm.weight",
    "lm_head.weight",
    "d2t",
    "t2d",
}


class InPlaceSession:
    """onnxruntime session whose past_* inputs and present_* outputs share one buffer, as in the runtime."""

    def __init__(self, path: Path, num_caches: int, cache_shape: tuple[int, ...]) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options)
        layers = range(num_caches // 2)
        names = [f"{kind}.{i}" for i in layers for kind in ("past_key", "past_value")]
        self.caches = {name: np.zeros(cache_shape, np.float32) for name in names}
        self._values = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in self.caches.items()}

    def run(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        names = [o.name for o in self.session.get_outputs() if not o.name.startswith("present_")]
        for name in names:
            binding.bind_output(name)
        for name, value in self._values.items():
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(name.replace("past_", "present_"), value)
        self.session.run_with_iobinding(binding)
        return {
            name: value.numpy()
            for name, value in zip(names, binding.get_outputs()[: len(names)], strict=True)
        }


def tree_inputs(parents: list[int], past: int) -> tuple[np.ndarray, np.ndarray]:
    """(attention_bias [1,1,S,past+S], position_ids [1,S]) for rows whose parent is parents[i] (-1: root).

    A chain (parents[i] = i - 1) gives the causal mask of a prefill.
    """
    rows = len(parents)
    bias = np.full((1, 1, rows, past + rows), -np.inf, np.float32)
    bias[..., :past] = 0.0
    depth: list[int] = []
    for i, parent in enumerate(parents):
        node = i
        while node != -1:
            bias[0, 0, i, past + node] = 0.0
            node = parents[node]
        depth.append(0 if parent == -1 else depth[parent] + 1)
    return bias, (past + np.array(depth, np.int64))[None]


def path_to(parents: list[int], node: int) -> list[int]:
    """Rows from the root down to `node`."""
    path = []
    while node != -1:
        path.append(node)
        node = parents[node]
    return path[::-1]


def attention_inputs(parents: list[int], past: int) -> dict[str, np.ndarray]:
    bias, positions = tree_inputs(parents, past)
    total = past + len(parents)
    return {
        "position_ids": positions,
        "attention_bias": bias,
        "seqlens_k": np.array([total - 1], np.int32),
        "total_sequence_length": np.array(total, np.int32),
    }


def assert_logits_close(got: np.ndarray, want: np.ndarray, atol: float, what: str) -> None:
    err = np.abs(got - want).max()
    assert err <= atol, f"{what}: max |logit difference| {err:.2e} > {atol}"
    assert (got.argmax(-1) == want.argmax(-1)).all(), f"{what}: argmax differs"


def check_target_parity(
    model_dir: Path,
    artifact: Path,
    prompt: list[int],
    tree_tokens: list[int],
    parents: list[int],
    atol: float,
) -> None:
    """target.onnx == transformers for a prefill of `prompt`, a tree verify over it, then one decode row.

    Node i of the tree must give the logits and features HF gives for the last row of prompt + path(i).
    """
    from transformers import AutoModelForCausalLM

    manifest = json.loads((artifact / "manifest.json").read_text())["target"]
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    hf.eval()

    def reference(ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            out = hf(torch.tensor([ids]), output_hidden_states=True)
        features = torch.cat([out.hidden_states[i] for i in manifest["feature_layers"]], dim=-1)
        return out.logits[0].numpy(), features[0].numpy()

    shape = (1, manifest["num_kv_heads"], manifest["max_context"], manifest["head_dim"])
    target = InPlaceSession(artifact / "target.onnx", 2 * manifest["num_layers"], shape)

    chain = list(range(-1, len(prompt) - 1))
    out = target.run(
        input_ids=np.array([prompt]),
        logit_index=np.array([len(prompt) - 1]),
        **attention_inputs(chain, 0),
    )
    want_logits, want_features = reference(prompt)
    assert_logits_close(out["logits"][0, 0], want_logits[-1], atol, "prefill")
    np.testing.assert_allclose(out["features"][0], want_features, rtol=1e-4, atol=atol)

    out = target.run(
        input_ids=np.array([tree_tokens]),
        logit_index=np.arange(len(tree_tokens)),
        **attention_inputs(parents, len(prompt)),
    )
    for node in range(len(tree_tokens)):
        want_logits, want_features = reference(prompt + [tree_tokens[i] for i in path_to(parents, node)])
        assert_logits_close(out["logits"][0, node], want_logits[-1], atol, f"tree node {node}")
        np.testing.assert_allclose(out["features"][0, node], want_features[-1], rtol=1e-4, atol=atol)

    # One decode row after the prompt: it overwrites slot P and must ignore the tree's scratch slots.
    out = target.run(
        input_ids=np.array([tree_tokens[-1:]]),
        logit_index=np.array([0]),
        **attention_inputs([-1], len(prompt)),
    )
    want_logits, _ = reference([*prompt, tree_tokens[-1]])
    assert_logits_close(out["logits"][0, 0], want_logits[-1], atol, "decode")


# A branching tree: root 0; children 1, 2; grandchildren 3, 4 (under 1) and 5 (under 2).
TREE_PARENTS = [-1, 0, 0, 1, 1, 2]
PROMPT = [5, 17, 99, 3, 64, 120, 31]
TREE_TOKENS = [42, 7, 88, 15, 101, 60]


def _remap_draft_vocab(drafter_dir: Path, vocab_size: int) -> None:
    """Make draft id j stand for target id 2j, so the graph's d2t mapping is not the identity."""
    path = drafter_dir / "model.safetensors"
    state = safetensors.torch.load_file(path)
    draft_vocab = state["d2t"].numel()
    state["d2t"] = torch.arange(draft_vocab)  # offsets: target = j + j
    state["t2d"] = torch.zeros(vocab_size, dtype=torch.bool)
    state["t2d"][::2][:draft_vocab] = True
    safetensors.torch.save_file(state, path)


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3", "mistral"])
def exported(request, tiny_model, tmp_path_factory):
    """(model_dir, drafter_dir, artifact, progress lines) for a tiny model of each architecture."""
    model_dir = tiny_model(request.param)
    tmp = tmp_path_factory.mktemp(f"export-{request.param}")
    drafter_dir = write_random_drafter(model_dir, tmp / "drafter", draft_vocab_size=DRAFT_VOCAB, seed=1)
    _remap_draft_vocab(drafter_dir, read_target_config(model_dir).vocab_size)
    lines: list[str] = []
    artifact = export_artifact(
        model_dir, tmp / "artifact", drafter_dir, max_context=MAX_CONTEXT, progress=lines.append
    )
    return model_dir, drafter_dir, artifact, lines


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "qwen3", "mistral"])
def test_torch_target_matches_transformers(tiny_model, architecture):
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model(architecture)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    target = load_target(model_dir)
    c = target.config
    past = [torch.zeros(1, c.num_kv_heads, 16, c.head_dim) for _ in range(2 * c.num_layers)]
    bias, positions = tree_inputs(list(range(-1, len(PROMPT) - 1)), 0)
    n = len(PROMPT)
    with torch.no_grad():
        want = hf(torch.tensor([PROMPT]), output_hidden_states=True)
        logits, features, *_ = target(
            torch.tensor([PROMPT]),
            torch.from_numpy(positions),
            torch.from_numpy(bias),
            torch.tensor([n - 1], dtype=torch.int32),
            torch.tensor(n, dtype=torch.int32),
            torch.arange(n),
            past,
        )
    torch.testing.assert_close(logits, want.logits, atol=1e-5, rtol=1e-5)
    want_features = torch.cat([want.hidden_states[i] for i in target.feature_layers], dim=-1)
    torch.testing.assert_close(features, want_features, atol=1e-5, rtol=1e-5)


def test_target_graph_matches_transformers(exported):
    model_dir, _, artifact, _ = exported
    check_target_parity(model_dir, artifact, PROMPT, TREE_TOKENS, TREE_PARENTS, atol=1e-3)


def test_drafter_graph_matches_torch_drafter(exported):
    model_dir, drafter_dir, artifact, _ = exported
    config = read_target_config(model_dir)
    drafter = load_drafter(drafter_dir, config)
    c = drafter.config
    manifest = json.loads((artifact / "manifest.json").read_text())
    shape = (1, c.num_kv_heads, MAX_CONTEXT, c.head_dim)
    graph = InPlaceSession(artifact / "drafter.onnx", 2, shape)
    torch_cache = [torch.zeros(shape), torch.zeros(shape)]
    embed = np.load(artifact / "embed_tokens.npy")
    rng = np.random.default_rng(0)

    def both(features: np.ndarray, hidden: np.ndarray, tokens: list[int], parents, past, logit_index, top_k):
        feeds = {
            "input_embeds": embed[tokens][None],
            "features": features,
            "hidden": hidden,
            "logit_index": np.array(logit_index),
            "top_k": np.array([top_k]),
            **attention_inputs(parents, past),
        }
        got = graph.run(**feeds)
        args = {name: torch.from_numpy(np.asarray(value)) for name, value in feeds.items()}
        with torch.no_grad():
            hidden_out, logprobs, ids, *presents = drafter(
                **args, past_key=torch_cache[0], past_value=torch_cache[1]
            )
        torch_cache[:] = presents
        np.testing.assert_allclose(got["hidden_out"], hidden_out.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got["topk_logprobs"], logprobs.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(got["topk_ids"], ids.numpy())
        assert got["topk_ids"].shape == (1, len(logit_index), top_k)
        assert (np.diff(got["topk_logprobs"], axis=-1) <= 0).all(), "top-k must be sorted descending"
        assert (got["topk_ids"] % 2 == 0).all(), "d2t maps draft id j to target id 2j here"
        np.testing.assert_allclose(graph.caches["past_key.0"], torch_cache[0].numpy(), rtol=1e-4, atol=1e-5)
        return got

    # First call of a round: 7 rows of target features (Sh = 0), causal, logits for every row.
    width = len(manifest["target"]["feature_layers"]) * config.hidden_size
    features = rng.standard_normal((1, 7, width)).astype(np.float32)
    no_hidden = np.zeros((1, 0, c.hidden_size), np.float32)
    first = both(features, no_hidden, PROMPT, list(range(-1, 6)), 0, list(range(7)), 8)
    # Deeper level (Sf = 0): 3 scratch rows fed back as hidden, a tree mask over them.
    hidden = first["hidden_out"][:, [6, 6, 5]]
    both(np.zeros((1, 0, width), np.float32), hidden, [9, 10, 11], [-1, -1, 0], 7, [0, 1, 2], 4)


def test_manifest(exported):
    model_dir, _, artifact, lines = exported
    manifest = json.loads((artifact / "manifest.json").read_text())
    config = read_target_config(model_dir)
    assert manifest["format"] == "eaglex-artifact" and manifest["version"] == 1
    target = manifest["target"]
    assert target["architecture"] == config.architecture
    assert target["num_layers"] == 4 and target["head_dim"] == config.head_dim
    assert target["max_context"] == MAX_CONTEXT
    assert target["feature_layers"] == [2, 2, 1]
    assert manifest["drafter"]["draft_vocab_size"] == DRAFT_VOCAB
    assert manifest["drafter"]["max_top_k"] == 16
    assert manifest["tree"] == {"top_k": 8, "depth": 5, "total_tokens": 24, "max_total_tokens": 128}
    # eos from config.json (0) plus the chat end-of-turn token <|im_end|> (2).
    assert manifest["tokens"] == {
        "bos_token_id": 1,
        "eos_token_ids": [0, 2],
        "pad_token_id": 0,
        "has_chat_template": True,
    }
    on_disk = {p.name for p in artifact.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    expected = {"target.onnx", "drafter.onnx", "embed_tokens.npy", "tokenizer.json", "chat_template.jinja"}
    assert expected <= on_disk
    for name, entry in manifest["files"].items():
        assert entry["bytes"] == (artifact / name).stat().st_size
        assert entry["sha256"] == sha256(artifact / name)
    embed = np.load(artifact / "embed_tokens.npy")
    assert embed.shape == (config.vocab_size, config.hidden_size) and embed.dtype == np.float32
    # Each residual add is fused into the norm that follows it (exporter/fuse.py): all but the first norm.
    ops = [n.op_type for n in onnx.load(artifact / "target.onnx", load_external_data=False).graph.node]
    assert ops.count("SkipSimplifiedLayerNormalization") == 2 * target["num_layers"] - 1
    assert [line.split("] ", 1)[1].split(" ")[0] for line in lines] == [
        "loading",
        "tracing",
        "tracing",
        "writing",
        "checksums",
        "wrote",
    ]
    assert not [p for p in artifact.parent.iterdir() if p.name.startswith(".")], "temporary folders left"


def test_random_drafter_is_official_format(tiny_model, tmp_path):
    model_dir = tiny_model("llama")
    drafter_dir = write_random_drafter(model_dir, tmp_path / "d", draft_vocab_size=32)
    config = json.loads((drafter_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"]
    assert (config["num_hidden_layers"], config["draft_vocab_size"], config["vocab_size"]) == (1, 32, 128)
    state = safetensors.torch.load_file(drafter_dir / "model.safetensors")
    assert set(state) == OFFICIAL_DRAFTER_KEYS
    assert state["fc.weight"].shape == (64, 3 * 64)
    assert state["midlayer.self_attn.q_proj.weight"].shape == (64, 2 * 64)
    assert state["d2t"].dtype == torch.int64 and state["t2d"].dtype == torch.bool
    assert int(state["t2d"].sum()) == 32
    assert 0.015 < float(state["lm_head.weight"].std()) < 0.025


def test_load_drafter_accepts_layers0_keys_bin_and_identity_vocab(tiny_model, tmp_path):
    model_dir = tiny_model("llama")
    config = read_target_config(model_dir)
    source = write_random_drafter(model_dir, tmp_path / "src", draft_vocab_size=config.vocab_size)
    state = safetensors.torch.load_file(source / "model.safetensors")
    renamed = {k.replace("midlayer.", "layers.0."): v for k, v in state.items() if k not in ("d2t", "t2d")}
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text((source / "config.json").read_text())
    torch.save(renamed, other / "pytorch_model.bin")
    a, b = load_drafter(source, config), load_drafter(other, config)
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value)


def _export_error(model_dir: Path, out_dir: Path, drafter_dir: Path | None = None, **kwargs) -> str:
    with pytest.raises(EaglexError) as info:
        export_artifact(
            model_dir, out_dir, drafter_dir, max_context=MAX_CONTEXT, progress=lambda _: None, **kwargs
        )
    message = str(info.value)
    assert "\n" not in message
    assert not out_dir.exists(), "a failed export must not leave its output folder"
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(".")], "temporary folders left"
    return message


def test_unsupported_architecture(tmp_path):
    model_dir = tmp_path / "gpt2"
    model_dir.mkdir()
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}
    (model_dir / "config.json").write_text(json.dumps(config))
    message = _export_error(model_dir, tmp_path / "out")
    assert message.startswith(f"unsupported architecture GPT2LMHeadModel in {model_dir}/config.json")
    assert "Llama, Mistral, Qwen2 and Qwen3" in message


def test_missing_tokenizer(tiny_model, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model("llama"), model_dir)
    (model_dir / "tokenizer.json").unlink()
    assert _export_error(model_dir, tmp_path / "out").startswith(f"no tokenizer.json in {model_dir}")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"hidden_size": 32}, "drafter hidden_size 32"),
        ({"vocab_size": 256}, "drafter vocab_size 256"),
        ({"eagle_config": {"eagle_aux_hidden_state_layer_ids": [1, 2, 9]}}, "drafter feature layer 9"),
    ],
)
def test_mismatched_drafter(tiny_model, tmp_path, change, expected):
    model_dir = tiny_model("llama")
    drafter_dir = write_random_drafter(model_dir, tmp_path / "drafter", draft_vocab_size=DRAFT_VOCAB)
    config = json.loads((drafter_dir / "config.json").read_text())
    (drafter_dir / "config.json").write_text(json.dumps({**config, **change}))
    message = _export_error(model_dir, tmp_path / "out", drafter_dir)
    assert message.startswith(expected)
    target_number = {"hidden_size": "64", "vocab_size": "128"}.get(next(iter(change)), "4 layers")
    assert target_number in message


def test_mismatched_drafter_weights(tiny_model, tmp_path):
    model_dir = tiny_model("llama")
    drafter_dir = write_random_drafter(model_dir, tmp_path / "drafter", draft_vocab_size=DRAFT_VOCAB)
    state = safetensors.torch.load_file(drafter_dir / "model.safetensors")
    state["fc.weight"] = torch.zeros(64, 128)
    safetensors.torch.save_file(state, drafter_dir / "model.safetensors")
    message = _export_error(model_dir, tmp_path / "out", drafter_dir)
    assert message.startswith("drafter weight fc.weight")
    assert "[64, 128]" in message and "[64, 192]" in message


def test_existing_output_is_kept_unless_overwrite(tiny_model, tmp_path):
    model_dir = tiny_model("llama")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("mine")
    with pytest.raises(EaglexError, match="already exists and is not empty"):
        export_artifact(model_dir, out_dir, progress=lambda _: None)
    assert (out_dir / "keep.txt").read_text() == "mine"
    # With overwrite, and without a drafter: the manifest says so and no drafter graph is written.
    export_artifact(model_dir, out_dir, max_context=MAX_CONTEXT, progress=lambda _: None, overwrite=True)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["drafter"] is None
    assert not (out_dir / "keep.txt").exists() and not (out_dir / "drafter.onnx").exists()
    assert manifest["target"]["feature_layers"] == [2, 2, 1]


def test_failure_while_tracing_leaves_nothing(tiny_model, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("tracing failed")

    monkeypatch.setattr(export_module, "export_drafter_graph", broken)
    model_dir = tiny_model("llama")
    drafter_dir = write_random_drafter(model_dir, tmp_path / "drafter", draft_vocab_size=DRAFT_VOCAB)
    out_dir = tmp_path / "out"
    with pytest.raises(RuntimeError, match="tracing failed"):
        export_artifact(model_dir, out_dir, drafter_dir, max_context=MAX_CONTEXT, progress=lambda _: None)
    assert not out_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drafter"]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"tree": {"top_k": 32}}, "tree top_k 32 exceeds"),
        ({"tree": {"width": 3}}, "unknown tree parameter width"),
        ({"max_context": 4096}, "max_context 4096 exceeds max_position_embeddings 512"),
    ],
)
def test_bad_export_options(tiny_model, tmp_path, kwargs, expected):
    kwargs = {"max_context": MAX_CONTEXT, **kwargs}
    with pytest.raises(EaglexError, match=expected):
        export_artifact(tiny_model("llama"), tmp_path / "out", progress=lambda _: None, **kwargs)
    assert not (tmp_path / "out").exists()
