"""TensorRT-flavoured graphs (`eaglex export --backend tensorrt`) on the CPU, through the numpy reference
of `eaglex::TreeAttention` registered with onnxruntime: same logits as the default graphs and as
transformers, and lossless decoding with the runtime.

The helpers are shared with the SmolLM2 version of these checks at the bottom.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from eaglex.runtime.backends.onnxruntime import OrtGraphSession
from eaglex.runtime.engine import Engine
from eaglex.runtime.generate import GenerationConfig, GenerationStats

pytest.importorskip(
    "onnxruntime_extensions", reason="the op's CPU reference runs through onnxruntime-extensions"
)

MAX_CONTEXT = 160
PROMPT = [5, 17, 99, 3, 64, 120, 31]
TREE_TOKENS = [42, 7, 88, 15, 101, 60]
TREE_PARENTS = [-1, 0, 0, 1, 1, 2]  # root; children 1, 2; grandchildren 3, 4 (under 1) and 5 (under 2)


def tree_mask(parents: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(mask [S, S] of each node over the nodes, depths [S]) of a tree given by parent indices."""
    mask = np.zeros((len(parents), len(parents)), bool)
    depths = np.zeros(len(parents), np.int64)
    for i, parent in enumerate(parents):
        mask[i] = mask[parent] if parent >= 0 else False
        mask[i, i] = True
        depths[i] = depths[parent] + 1 if parent >= 0 else 0
    return mask, depths


def path_to(parents: list[int], node: int) -> list[int]:
    path = []
    while node != -1:
        path.append(node)
        node = parents[node]
    return path[::-1]


def open_target(artifact: Path) -> OrtGraphSession:
    manifest = json.loads((artifact / "manifest.json").read_text())
    t = manifest["target"]
    return OrtGraphSession(
        artifact / "target.onnx",
        t["num_layers"],
        t["num_kv_heads"],
        t["head_dim"],
        2,
        plugin_op=manifest["backend"] == "tensorrt",
    )


def assert_close(got: np.ndarray, want: np.ndarray, atol: float, what: str) -> None:
    err = float(np.abs(got - want).max())
    assert err <= atol, f"{what}: max |difference| {err:.2e} > {atol}"
    assert (got.argmax(-1) == want.argmax(-1)).all(), f"{what}: argmax differs"


def check_flavours(
    model_dir: Path,
    default: Path,
    plugin: Path,
    prompt: list[int],
    tree_tokens: list[int],
    parents: list[int],
    atol: float,
) -> None:
    """Both flavours of target.onnx against each other and transformers: prefill, a tree verify, then a
    row that sees only part of the tree (mask_start < cache_len). Caches must agree at the end."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def reference(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            return hf(torch.tensor([ids])).logits[0, -1].numpy()

    sessions = [open_target(default), open_target(plugin)]

    def run_both(feeds: dict[str, np.ndarray], cache_len: int, mask: np.ndarray, what: str) -> np.ndarray:
        a, b = (session.run(feeds, cache_len, mask) for session in sessions)
        assert_close(b["logits"], a["logits"], atol, f"{what}: plugin vs default logits")
        np.testing.assert_allclose(b["features"], a["features"], rtol=1e-4, atol=atol)
        return b["logits"][0]

    n = len(prompt)
    logits = run_both(
        {
            "input_ids": np.array([prompt]),
            "position_ids": np.arange(n)[None],
            "logit_index": np.array([n - 1]),
        },
        0,
        np.tri(n, dtype=bool),
        "prefill",
    )
    assert_close(logits[0], reference(prompt), atol, "prefill vs transformers")

    nodes, depths = tree_mask(parents)
    mask = np.concatenate([np.ones((len(parents), n), bool), nodes], axis=1)
    logits = run_both(
        {
            "input_ids": np.array([tree_tokens]),
            "position_ids": (n + depths)[None],
            "logit_index": np.arange(len(parents)),
        },
        n,
        mask,
        "tree",
    )
    for node in range(len(parents)):
        want = reference(prompt + [tree_tokens[i] for i in path_to(parents, node)])
        assert_close(logits[node], want, atol, f"tree node {node} vs transformers")

    # A child of the last node, written after the whole tree: it sees the prompt, its ancestors and itself.
    leaf = len(parents) - 1
    ancestors = path_to(parents, leaf)
    row = np.zeros((1, n + len(parents) + 1), bool)
    row[0, :n] = True
    row[0, [n + i for i in ancestors]] = True
    row[0, -1] = True
    logits = run_both(
        {
            "input_ids": np.array([[9]]),
            "position_ids": np.array([[n + len(ancestors)]]),
            "logit_index": np.array([0]),
        },
        n + len(parents),
        row,
        "partial row",
    )
    want = reference(prompt + [tree_tokens[i] for i in ancestors] + [9])
    assert_close(logits[0], want, atol, "partial row vs transformers")
    filled = n + len(parents) + 1
    np.testing.assert_allclose(
        sessions[1].cache.data[..., :filled, :], sessions[0].cache.data[..., :filled, :], rtol=1e-4, atol=1e-4
    )


@pytest.fixture(scope="module")
def artifacts(tiny_model, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(model, default artifact, plugin artifact) of a tiny Llama with the same random drafter; the plugin
    one through the CLI, as a user would make it."""
    from test_cli import eaglex

    from eaglex.exporter.checkpoints import write_random_drafter
    from eaglex.exporter.export import export_artifact

    model = tiny_model("llama")
    tmp = tmp_path_factory.mktemp("plugin-graphs")
    drafter = write_random_drafter(model, tmp / "drafter", draft_vocab_size=64)
    default = export_artifact(
        model, tmp / "default", drafter, max_context=MAX_CONTEXT, progress=lambda _: None
    )
    result = eaglex(
        "export",
        "--model",
        model,
        "--drafter",
        drafter,
        "--out",
        tmp / "plugin",
        "--max-context",
        str(MAX_CONTEXT),
        "--backend",
        "tensorrt",
    )
    assert result.returncode == 0, result.stderr
    return model, default, tmp / "plugin"


def test_plugin_artifact_follows_the_contract(artifacts):
    _, default, plugin = artifacts
    manifest = json.loads((plugin / "manifest.json").read_text())
    assert manifest["backend"] == "tensorrt" and manifest["version"] == 1
    assert json.loads((default / "manifest.json").read_text())["backend"] == "onnxruntime"
    for graph, layers in (("target.onnx", 4), ("drafter.onnx", 1)):
        model = onnx.load(str(plugin / graph), load_external_data=False)
        inputs = {
            i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input
        }
        assert inputs["tree_mask"] == [1, "S", "W"] and inputs["cache_len"] == [1] == inputs["mask_start"]
        assert not {"attention_bias", "seqlens_k", "total_sequence_length"} & set(inputs)
        nodes = [n for n in model.graph.node if n.op_type == "TreeAttention"]
        assert len(nodes) == layers and {n.domain for n in nodes} == {"eaglex"}
        assert not [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
        assert attributes["plugin_namespace"] == b"eaglex" and attributes["plugin_version"] == b"1"
        assert attributes["num_heads"] == 4 and attributes["kv_num_heads"] == 2
        assert attributes["scale"] == pytest.approx(16**-0.5)


def test_plugin_target_matches_default_graph_and_transformers(artifacts):
    model, default, plugin = artifacts
    check_flavours(model, default, plugin, PROMPT, TREE_TOKENS, TREE_PARENTS, atol=1e-3)


def test_plugin_drafter_matches_default_graph(artifacts):
    _, default, plugin = artifacts
    spec = json.loads((plugin / "manifest.json").read_text())["drafter"]
    sessions = [
        OrtGraphSession(
            a / "drafter.onnx", 1, spec["num_kv_heads"], spec["head_dim"], 2, plugin_op=a == plugin
        )
        for a in (default, plugin)
    ]
    rng = np.random.default_rng(0)
    hidden = spec["hidden_size"]
    calls = [  # (Sf, Sh, cache_len, mask): a causal first call, then a level of 3 scratch rows
        (7, 0, 0, np.tri(7, dtype=bool)),
        (0, 3, 7, np.concatenate([np.ones((3, 7), bool), np.eye(3, dtype=bool)], axis=1)),
        (
            0,
            3,
            10,
            np.concatenate(
                [np.ones((3, 7), bool), np.eye(3, dtype=bool)[[0, 0, 2]], np.eye(3, dtype=bool)], axis=1
            ),
        ),
    ]
    for features, rows_hidden, cache_len, mask in calls:
        rows = features + rows_hidden
        feeds = {
            "input_embeds": rng.standard_normal((1, rows, hidden)).astype(np.float32),
            "features": rng.standard_normal((1, features, 3 * hidden)).astype(np.float32),
            "hidden": rng.standard_normal((1, rows_hidden, hidden)).astype(np.float32),
            "position_ids": np.arange(cache_len, cache_len + rows)[None],
            "logit_index": np.arange(rows),
            "top_k": np.array([4]),
        }
        a, b = (session.run(feeds, cache_len, mask) for session in sessions)
        np.testing.assert_allclose(b["hidden_out"], a["hidden_out"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(b["topk_logprobs"], a["topk_logprobs"], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(b["topk_ids"], a["topk_ids"])
    np.testing.assert_allclose(sessions[1].cache.data, sessions[0].cache.data, atol=1e-5)


def test_plugin_artifact_decodes_losslessly(artifacts):
    import torch
    from test_generate import OracleDrafter, hf_greedy
    from transformers import AutoModelForCausalLM

    model, _, plugin = artifacts
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    engine = Engine.load(plugin, threads=2)
    engine.stop_tokens = set()  # a random model emits its EOS ids by chance; compare raw continuations
    random_drafter = engine.drafter
    for seed, prompt in enumerate([[5, 6, 7], [9, 30, 31, 4, 90, 11]]):
        want = hf_greedy(hf, prompt, 24)
        for drafter in (random_drafter, OracleDrafter(want, len(prompt), seed)):
            engine.drafter = drafter  # the oracle's trees are accepted deep: KV compaction through the op
            stats = GenerationStats()
            config = GenerationConfig(max_new_tokens=24, top_k=4, depth=4, total_tokens=16)
            assert [t for chunk in engine.generate(prompt, config, stats) for t in chunk] == want
        assert stats.acceptance_length > 2.0


def test_plugin_artifact_runs_from_the_cli(artifacts):
    from test_cli import eaglex

    result = eaglex("run", artifacts[2], "--prompt", "w5 w6 w7", "--max-new-tokens", "8", "--top-k", "4")
    assert result.returncode == 0, result.stderr
    assert "mean acceptance length" in result.stderr


@pytest.mark.smollm2
def test_smollm2_plugin_graphs_match_default_and_transformers(
    smollm2_dir, smollm2_artifact, smollm2_plugin_artifact
):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    prompt = tokenizer.encode("The capital of France is a city called").ids
    tree_tokens = tokenizer.encode(" Paris, the city of light").ids[: len(TREE_PARENTS)]
    check_flavours(
        smollm2_dir, smollm2_artifact, smollm2_plugin_artifact, prompt, tree_tokens, TREE_PARENTS, atol=1e-3
    )


@pytest.mark.smollm2
def test_smollm2_plugin_artifact_is_lossless(smollm2_dir, smollm2_plugin_artifact):
    """Greedy speculative decoding through the op's CPU reference equals transformers (few tokens: the
    reference path costs about a second per target pass)."""
    import torch
    from test_smollm2_lossless import PROMPTS
    from transformers import AutoModelForCausalLM

    engine = Engine.load(smollm2_plugin_artifact, threads=2)
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    stop = sorted(engine.stop_tokens)
    for index, tree, new_tokens in ((0, (8, 5, 60), 12), (3, None, 8)):
        prompt = engine.encode(PROMPTS[index]["text"], chat=PROMPTS[index]["chat"])
        settings = (
            {"speculative": False}
            if tree is None
            else dict(zip(("top_k", "depth", "total_tokens"), tree, strict=True))
        )
        config = engine.default_config(max_new_tokens=new_tokens, **settings)
        ours = [t for chunk in engine.generate(prompt, config) for t in chunk]
        with torch.inference_mode():
            want = hf.generate(
                torch.tensor([prompt]),
                max_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=stop[0],
            )[0, len(prompt) :].tolist()
        assert ours == want


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_build_and_tensorrt_run_fail_clearly_without_tensorrt(artifacts):
    from test_cli import assert_user_error, eaglex

    _, default, plugin = artifacts
    result = eaglex("build", plugin, "--flavour", "tensorrt")
    assert_user_error(result, "TensorRT is not installed", "pip install", "eaglex[tensorrt]")
    assert_user_error(eaglex("build", default), "--backend tensorrt")
    assert_user_error(eaglex("run", plugin, "--prompt", "w5", "--backend", "tensorrt"), "eaglex build")
    manifest = json.loads((plugin / "manifest.json").read_text())
    assert "engines" not in manifest and not (plugin / "engines").exists(), (
        "a failed build must change nothing"
    )


class TreeAttention(OpRun):
    """The op's numpy reference for onnx's ReferenceEvaluator (which finds it by class name). The evaluator
    computes in each tensor's own dtype, so fp16 and bf16 graphs are evaluated in fp16 and bf16."""

    op_domain = "eaglex"

    def _run(self, query, key, value, past_key, past_value, cache_len, mask_start, tree_mask, **attributes):
        from eaglex.plugins.tree_attention.reference import tree_attention

        past_key, past_value = past_key.copy(), past_value.copy()
        out = tree_attention(
            query,
            key,
            value,
            past_key,
            past_value,
            cache_len,
            mask_start,
            tree_mask,
            attributes["num_heads"],
            attributes["kv_num_heads"],
            attributes["scale"],
        )
        return out, past_key, past_value


@pytest.mark.parametrize(("precision", "tolerance"), [("fp16", 0.01), ("bf16", 0.05)])
def test_low_precision_graphs_for_tensorrt(artifacts, precision, tolerance):
    """`eaglex build --fp16/--bf16` converts the graphs before TensorRT parses them: they must type-check
    strictly, keep RoPE and RMSNorm statistics in float32, and give logits close to float32's."""
    import ml_dtypes

    from eaglex.exporter.precision import lower_precision
    from eaglex.plugins.tree_attention.mask import mask_feeds

    plugin = artifacts[2]
    original = onnx.load(str(plugin / "target.onnx"))
    model = lower_precision(original, precision)
    onnx.shape_inference.infer_shapes(model, strict_mode=True, check_type=True)
    onnx.checker.check_model(model)
    types = {t.name: t.data_type for t in model.graph.initializer}
    types |= {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    types |= {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    low = {"fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}[precision]
    assert (
        types["past_key.0"] == types["present_key.0"] == types["logits"] == low
    )  # the cache stays aliasable
    for node in model.graph.node:
        if node.op_type in ("Pow", "ReduceMean", "Sqrt", "Reciprocal", "Cos", "Sin"):
            assert all(types[o] == onnx.TensorProto.FLOAT for o in node.output), node.op_type
        if node.op_type == "MatMul":
            assert all(types[o] == low for o in node.output)

    dtype = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16}[precision]
    n = len(PROMPT)
    feeds = {
        "input_ids": np.array([PROMPT]),
        "position_ids": np.arange(n)[None],
        "logit_index": np.arange(n),
        **mask_feeds(np.tri(n, dtype=bool), 0),
    }
    spec = json.loads((plugin / "manifest.json").read_text())["target"]
    shape = (1, spec["num_kv_heads"], MAX_CONTEXT, spec["head_dim"])

    def logits(graph: onnx.ModelProto, cache_dtype) -> np.ndarray:
        caches = {f"past_{k}.{i}": np.zeros(shape, cache_dtype) for i in range(4) for k in ("key", "value")}
        evaluator = ReferenceEvaluator(graph, new_ops=[TreeAttention])
        return evaluator.run(["logits"], {**feeds, **caches})[0].astype(np.float32)

    want, got = logits(original, np.float32), logits(model, dtype)
    assert np.abs(got - want).max() < tolerance * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_engine_profiles_cover_every_runtime_call(artifacts):
    """`eaglex build`'s optimisation profiles must name every dynamic input of each graph and take the
    shapes (and top_k values) of every call the runtime makes: prefill, verify passes, drafter levels."""
    from eaglex.exporter.engines import optimization_profiles
    from eaglex.plugins.tree_attention.mask import mask_feeds

    plugin = artifacts[2]
    engine = Engine.load(plugin, threads=2)
    manifest = engine.manifest
    engine.stop_tokens = set()
    calls: dict[str, list[dict[str, np.ndarray]]] = {"target": [], "drafter": []}
    for graph, session in (("target", engine.target), ("drafter", engine.drafter.session)):

        def recording(feeds, cache_len, mask, session=session, graph=graph, run=session.run):
            calls[graph].append({**feeds, **mask_feeds(mask, cache_len)})
            return run(feeds, cache_len, mask)

        session.run = recording
    prompt = list(range(3, 3 + 90))  # a long prompt, then trees of several shapes
    for tree in ((8, 5, 60), (16, 3, 128), (1, 8, 9)):
        config = GenerationConfig(
            max_new_tokens=12, **dict(zip(("top_k", "depth", "total_tokens"), tree, strict=True))
        )
        list(engine.generate(prompt, config))

    for graph in ("target", "drafter"):
        profiles = optimization_profiles(graph, manifest, MAX_CONTEXT, manifest.tree.max_total_tokens)
        model = onnx.load(str(plugin / f"{graph}.onnx"), load_external_data=False)
        dynamic = {
            i.name for i in model.graph.input if any(d.dim_param for d in i.type.tensor_type.shape.dim)
        }
        for profile in profiles:
            assert set(profile["shapes"]) == dynamic, f"{graph} {profile['name']}: profile inputs"
            for low, opt, high in profile["shapes"].values():
                assert all(a <= b <= c for a, b, c in zip(low, opt, high, strict=True))

        def fits(call: dict[str, np.ndarray], profile: dict) -> bool:
            shapes = all(
                all(a <= s <= b for a, s, b in zip(low, call[name].shape, high, strict=True))
                for name, (low, _, high) in profile["shapes"].items()
            )
            values = all(
                all(a <= v <= b for a, v, b in zip(low, call[name].tolist(), high, strict=True))
                for name, (low, _, high) in profile.get("values", {}).items()
            )
            return shapes and values

        assert calls[graph]
        for call in calls[graph]:
            shapes = {name: value.shape for name, value in call.items()}
            assert any(fits(call, profile) for profile in profiles), f"{graph}: no profile takes {shapes}"


def test_torch_modules_take_either_mask_flavour(tiny_model):
    """The torch op behind the plugin node (int32 bit mask) computes what the bias flavour computes, so
    the modules can be checked eagerly in either flavour."""
    import torch

    from eaglex.exporter.checkpoints import load_target
    from eaglex.plugins.tree_attention.mask import mask_feeds

    target = load_target(tiny_model("llama"))
    c = target.config
    n, nodes = len(PROMPT), len(TREE_PARENTS)
    tree, depths = tree_mask(TREE_PARENTS)
    calls = [  # (tokens, positions, cache_len, mask)
        (PROMPT, np.arange(n), 0, np.tri(n, dtype=bool)),
        (TREE_TOKENS, n + depths, n, np.concatenate([np.ones((nodes, n), bool), tree], axis=1)),
    ]
    caches = {
        flavour: [torch.zeros(1, c.num_kv_heads, 32, c.head_dim) for _ in range(2 * c.num_layers)]
        for flavour in ("bias", "bits")
    }
    for tokens, positions, cache_len, mask in calls:
        total = mask.shape[1]
        packed = {k: torch.from_numpy(v) for k, v in mask_feeds(mask, cache_len).items()}
        inputs = {
            "bias": (
                torch.from_numpy(np.where(mask, 0.0, -np.inf).astype(np.float32))[None, None],
                torch.tensor([total - 1], dtype=torch.int32),
                torch.tensor(total, dtype=torch.int32),
            ),
            "bits": (packed["tree_mask"], packed["cache_len"], packed["mask_start"]),
        }
        outputs = {}
        with torch.no_grad():
            for flavour, (mask_input, length_a, length_b) in inputs.items():
                logits, _, *presents = target(
                    torch.tensor([tokens]),
                    torch.from_numpy(positions)[None],
                    mask_input,
                    length_a,
                    length_b,
                    torch.arange(len(tokens)),
                    caches[flavour],
                )
                caches[flavour] = presents
                outputs[flavour] = logits
        torch.testing.assert_close(outputs["bits"], outputs["bias"], atol=1e-5, rtol=1e-5)
    for a, b in zip(caches["bits"], caches["bias"], strict=True):
        torch.testing.assert_close(a, b)
