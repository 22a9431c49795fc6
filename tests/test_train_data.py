"""Training data: record recovery from truncated files, conversation cleanup, the assistant-token loss mask,
evaluation-prompt exclusion, later-turn prompts around regenerated answers, packing a work folder's answers,
the frequency draft vocabulary and carrying lm_head rows over to a new one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eaglex.errors import EaglexError
from eaglex.train import selfprompts
from eaglex.train.data import (
    EvalFilter,
    encode_prompt,
    first_turn,
    iter_records,
    load_records,
    to_messages,
    tokenize_conversation,
)
from eaglex.train.datapack import pack, unpack
from eaglex.train.decode import greedy_answers, sampled_answers
from eaglex.train.jsonl import peek_records, read_records
from eaglex.train.regenerate import BATCH_TOKENS, next_prompt, prompt_batches, regenerate
from eaglex.train.selfprompts import RequestKeeper, user_turn_prefix, write_requests
from eaglex.train.vocab import build_draft_vocab, carry_over_head


def record(i: int, *turns: tuple[str, str]) -> dict:
    return {"id": str(i), "conversations": [{"from": who, "value": text} for who, text in turns]}


def test_truncated_json_array_keeps_every_complete_record(tmp_path):
    records = [record(i, ("human", f"question {i}"), ("gpt", f"answer {i} \u00e9\u00e8")) for i in range(5)]
    text = json.dumps(records, indent=2, ensure_ascii=False)
    cut = text.index("answer 3")  # inside record 3
    path = tmp_path / "cut.json"
    path.write_bytes(text.encode()[: len(text[:cut].encode()) + 1])
    assert [r["id"] for r in load_records(str(path))] == ["0", "1", "2"]
    # Cut inside a multi-byte character: still readable up to the cut.
    path.write_bytes(text.encode()[: text.encode().index("\u00e9".encode()) + 1])
    assert load_records(str(path)) == []
    # JSONL and a complete array give everything.
    assert len(list(iter_records("\n".join(json.dumps(r) for r in records)))) == 5
    assert len(list(iter_records(text))) == 5


def test_to_messages_cleans_conversations():
    messages = to_messages(
        record(
            0,
            ("gpt", "orphan answer"),
            ("human", "q1"),
            ("gpt", "a1"),
            ("human", "q2"),
            ("gpt", "a2"),
            ("human", "q3"),
        )
    )
    assert messages == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    # Broken alternation: cut at the break; OpenAI-style records and a system turn are understood.
    assert to_messages(record(1, ("human", "q"), ("human", "q again"), ("gpt", "a"))) is None
    openai = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
        ]
    }
    assert [m["role"] for m in to_messages(openai)] == ["system", "user", "assistant"]
    assert first_turn(to_messages(openai)) == openai["messages"][:2]
    assert to_messages({"conversations": [{"from": "human", "value": "q"}]}) is None


def test_loss_mask_covers_assistant_turns_and_end_of_turn(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("llama"))
    messages = [
        {"role": "user", "content": "w5 w6"},
        {"role": "assistant", "content": "w7 w8"},
        {"role": "user", "content": "w9"},
        {"role": "assistant", "content": "w10"},
    ]
    sample = tokenize_conversation(tokenizer, messages, max_length=100)
    tokens = tokenizer.convert_ids_to_tokens(sample.ids)
    learned = [token for token, m in zip(tokens, sample.loss_mask, strict=True) if m]
    assert learned == ["w7", "w8", "<|im_end|>", "w10", "<|im_end|>"]
    # Prompt ids are exactly the template's, as the runtime encodes them.
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert sample.ids[: sample.loss_mask.index(True)] == prompt_ids
    # Cut before any answer token: nothing to learn.
    assert tokenize_conversation(tokenizer, messages, max_length=4) is None
    cut = tokenize_conversation(tokenizer, messages, max_length=len(tokens) - 2)
    assert len(cut.ids) == len(tokens) - 2 and cut.loss_mask == sample.loss_mask[:-2]


def test_later_turn_prompts_continue_the_targets_own_answer_ids(tiny_model):
    """Turn k's prompt is turn k-1's prompt, the target's answer ids and the template's glue: the same ids as
    encoding the conversation with the target's answers in place of the data's, for a tokenizer that
    splits at the template's boundaries, whether the answer stopped or was cut at its length limit."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("llama"))
    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>")]

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    data = [
        {"role": "user", "content": "w5 w6"},
        {"role": "assistant", "content": "w7 w8 w9"},
        {"role": "user", "content": "w10"},
        {"role": "assistant", "content": "w11"},
        {"role": "user", "content": "w12 w13"},
        {"role": "assistant", "content": "w14"},
    ]
    first = {"prompt": encode_prompt(tokenizer, data[:1]), "answer": ids("w20 w21") + stop}
    rewritten = [data[0], {"role": "assistant", "content": "w20 w21"}, data[2]]
    second = next_prompt(tokenizer, data, [first], stop)
    assert second == encode_prompt(tokenizer, rewritten)
    cut = {**first, "answer": ids("w20 w21")}  # no end-of-turn token: the template's closes the turn
    assert next_prompt(tokenizer, data, [cut], stop) == second
    records = [first, {"prompt": second, "answer": ids("w30") + stop}]
    third = next_prompt(tokenizer, data, records, stop)
    assert third == encode_prompt(tokenizer, [*rewritten, {"role": "assistant", "content": "w30"}, data[4]])
    assert next_prompt(tokenizer, data, [*records, {"prompt": third, "answer": stop}], stop) is None  # no 4th
    # A template that does not render an answer verbatim: its ids cannot be continued.
    tokenizer.chat_template = tokenizer.chat_template.replace("m['content']", "m['content'] | upper")
    assert next_prompt(tokenizer, data, [first], stop) is None


@pytest.mark.parametrize(("evict_share", "prefill_rows"), [(0.0, None), (0.5, None), (0.0, 4), (0.0, 1)])
def test_greedy_answers_drop_stopped_rows_and_equal_generate(tiny_model, evict_share, prefill_rows):
    """Rows leave the batch as they stop, at once or once half have stopped (the others running on until
    then), and the prompts are prefilled whole or in pieces of a few rows (the last one shorter): every
    answer is still what `generate` writes for that prompt."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model("llama"), dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 120, (n,), generator=generator).tolist() for n in (5, 9, 2, 14, 7, 11)]
    free = greedy_answers(model, prompts, [0], 12)
    # Stop on tokens that end some answers early, at different steps, and others not at all.
    stop_ids = [free[2][7], free[4][1]]
    answers = greedy_answers(model, prompts, stop_ids, 12, evict_share, prefill_rows)
    lengths = [len(a) for a in answers]
    assert min(lengths) < 12 and max(lengths) == 12 and len(set(lengths)) > 2
    for prompt, answer in zip(prompts, answers, strict=True):
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor([prompt]),
                max_new_tokens=12,
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=stop_ids[0],
            )[0, len(prompt) :].tolist()
        stop = next((k for k, t in enumerate(out) if t in stop_ids), len(out) - 1)
        assert answer == out[: stop + 1]


def test_answers_written_by_two_worker_processes_equal_one_and_resume(tiny_model, tmp_path):
    """Two forked processes, each answering every other batch into a file of its own, write the answers one
    process writes, merged into the cache; answers a stopped run's workers left behind are taken as done."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model("llama"), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("llama"))
    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    conversations = [
        [
            {"role": "user", "content": " ".join(f"w{k}" for k in range(3, 3 + n))},
            {"role": "assistant", "content": "w1"},
        ]
        for n in (1, 4, 2, 7, 3, 5, 6)
    ]

    def answer(folder, workers: int) -> list:
        folder.mkdir(exist_ok=True)
        first, _ = regenerate(
            model,
            tokenizer,
            conversations,
            folder / "regenerated.jsonl",
            6,
            64,
            stop,
            2,
            lambda _: None,
            workers=workers,
        )
        return [s.ids for s in first]

    one = answer(tmp_path / "one", 1)
    two = answer(tmp_path / "two", 2)
    assert two == one
    records = read_records(tmp_path / "two" / "regenerated.jsonl")
    assert sorted(r["index"] for r in records) == list(range(len(conversations)))
    # Merged worker by worker (batches 0 and 2, then 1 and 3), not in the one process's order of length.
    assert [r["index"] for r in records] != [
        r["index"] for r in read_records(tmp_path / "one" / "regenerated.jsonl")
    ]
    assert not list((tmp_path / "two").glob("*.worker*"))

    # A run stopped while its workers wrote: their files hold some answers, the cache none.
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "regenerated.jsonl.worker1").write_text("".join(json.dumps(r) + "\n" for r in records[:3]))
    assert answer(stopped, 1) == one
    # The workers' 3 answers were merged in first and not written again: 7 records, not 10.
    assert read_records(stopped / "regenerated.jsonl")[:3] == records[:3]
    assert len(read_records(stopped / "regenerated.jsonl")) == len(conversations)
    assert not list(stopped.glob("*.worker*"))


def test_sampled_answers_draw_from_the_targets_distribution(sharp_model):
    """One sampled step over many copies of a prompt matches the target's softmax as closely as exact
    multinomial draws do (greedy picks would be far off), and a seed reproduces its batch."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(sharp_model, dtype=torch.float32).eval()
    prompt, rows = [5, 17, 42], 4000
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([prompt])).logits[0, -1], -1).double().numpy()
    probs /= probs.sum()
    assert probs.max() < 0.9  # a distribution, not one token

    def draw(seed: int, steps: int = 1, rows: int = rows) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed)
        return sampled_answers(model, [prompt] * rows, [0], steps, generator)

    counts = np.bincount([a[0] for a in draw(0)], minlength=len(probs))
    distance = 0.5 * np.abs(counts / rows - probs).sum()
    rng = np.random.default_rng(0)
    exact = [0.5 * np.abs(rng.multinomial(rows, probs) / rows - probs).sum() for _ in range(20)]
    assert distance < 1.5 * max(exact)
    assert draw(1, 3, 50) == draw(1, 3, 50) != draw(2, 3, 50)


def test_request_keeper_drops_unfinished_short_repeated_and_eval_prompts():
    eval_prompt = "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting culture"
    texts = [
        ("How do plants make food from sunlight?", True),
        ("Write a story about", False),  # ran out of tokens
        ("Hi there", True),
        ("how do plants make food from sunlight", True),  # the first again, other case and punctuation
        (f"Please: {eval_prompt.lower()}!", True),
        ("  Name three rivers in Africa.  ", True),
        ("Explain recursion to a child.", True),
    ]
    keeper = RequestKeeper(2, EvalFilter([eval_prompt]))
    assert keeper.add(texts) == 2
    assert keeper.kept == ["How do plants make food from sunlight?", "Name three rivers in Africa."]
    assert keeper.dropped == {"unfinished": 1, "too short": 1, "repeated": 1, "evaluation prompt": 1}
    assert keeper.add(texts) == 0  # full: nothing more is judged
    everything = RequestKeeper(10, EvalFilter([eval_prompt]))
    everything.add(texts)
    assert everything.kept[-1] == "Explain recursion to a child."

    # Fed batch by batch, as write_requests does, it keeps and drops exactly what one pass over all does;
    # a repeat is caught across batches.
    for count in (2, 3, 10):
        whole, batched = (RequestKeeper(count, EvalFilter([eval_prompt])) for _ in range(2))
        whole.add(texts)
        added = [batched.add(texts[start : start + 3]) for start in range(0, len(texts), 3)]
        assert (batched.kept, batched.dropped) == (whole.kept, whole.dropped)
        assert sum(added) == len(whole.kept)


def test_peek_records_leaves_a_live_file_alone_and_read_records_mends_it(tmp_path):
    path = tmp_path / "cache.jsonl"
    assert peek_records(path) == read_records(path) == []
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3')  # the last line still being written
    assert peek_records(path) == [{"a": 1}, {"a": 2}]
    assert path.read_text().endswith('{"a": 3')
    assert read_records(path) == [{"a": 1}, {"a": 2}]
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'


def test_a_packed_work_folder_unpacks_to_its_complete_records_and_never_overwrites(tmp_path):
    """What a run wrote survives a new machine: the pack holds every complete record, its answer-writing
    workers' files included (a line still being written is left out), unpacks into a fresh folder as the
    records the run would read back, and keeps whatever a work folder already has."""
    work, packed, fresh = tmp_path / "work", tmp_path / "pack", tmp_path / "fresh"
    work.mkdir()
    answers = [
        {"index": i, "turn": 1, "prompt": [1, 2, i], "answer": [i, 0], "dtype": "bfloat16"} for i in range(3)
    ]
    (work / "regenerated.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers[:2]))
    (work / "regenerated.jsonl.worker0").write_text(json.dumps(answers[2]) + '\n{"index": 3, "turn"')
    (work / "hours.json").write_text('{"data": 1.5}\n')
    pack(work, packed, report=lambda _: None)
    assert sorted(p.name for p in packed.iterdir()) == ["hours.json", "regenerated.jsonl.xz"]  # no requests
    assert (work / "regenerated.jsonl.worker0").read_text().endswith('"turn"')  # a live file is left alone

    unpack(packed, fresh, report=lambda _: None)
    assert read_records(fresh / "regenerated.jsonl") == answers
    assert json.loads((fresh / "hours.json").read_text()) == {"data": 1.5}
    assert not (fresh / "self_prompts.jsonl").exists()

    (fresh / "regenerated.jsonl").write_text(json.dumps(answers[0]) + "\n")  # a run that went its own way
    messages = []
    unpack(packed, fresh, report=messages.append)
    assert read_records(fresh / "regenerated.jsonl") == answers[:1]
    assert any("kept" in m and "regenerated.jsonl" in m for m in messages)
    assert not list(fresh.glob("*.tmp"))


def test_self_written_requests_are_seeded_cached_and_resumed(tiny_model, tmp_path, monkeypatch):
    """Requests sampled after the template's user header: complete ones only, the same from the same seed,
    read back from the cache without sampling again, and a batch cut off mid-line is written again."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model("llama"), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("llama"))
    prefix = user_turn_prefix(tokenizer)
    assert prefix == tokenizer("<|im_start|>user ", add_special_tokens=False)["input_ids"]  # up to the text
    # A random model writes one of these 12 every ~11 tokens: most requests end within the 32 allowed.
    stop = list(range(12))
    monkeypatch.setattr(selfprompts, "MAX_PROMPT_TOKENS", 32)

    def write(cache, count=12, seed=0):
        return write_requests(model, tokenizer, count, cache, seed, stop, 8, EvalFilter([]), lambda _: None)

    conversations = write(tmp_path / "a.jsonl")
    requests = [c[0]["content"] for c in conversations]
    assert all(len(c) == 1 and c[0]["role"] == "user" for c in conversations)
    assert len(set(requests)) == 12 and all(len(r.split()) >= selfprompts.MIN_WORDS for r in requests)
    written = [ids for record in read_records(tmp_path / "a.jsonl") for ids in record["requests"]]
    ended = [tokenizer.decode(ids[:-1]) for ids in written if ids and ids[-1] in stop]
    assert set(requests) <= set(ended)
    assert write(tmp_path / "b.jsonl") == conversations
    assert [c[0]["content"] for c in write(tmp_path / "c.jsonl", seed=1)] != requests

    lines = (tmp_path / "a.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "a.jsonl").write_text("".join(lines[:-1]) + lines[-1][:40])
    assert write(tmp_path / "a.jsonl") == conversations  # the cut batch, sampled again from its seed
    assert (tmp_path / "a.jsonl").read_text().splitlines(keepends=True) == lines

    def no_sampling(*_):
        raise AssertionError("sampled again")

    monkeypatch.setattr(selfprompts, "sampled_answers", no_sampling)
    assert write(tmp_path / "a.jsonl") == conversations


def test_self_written_requests_give_up_on_a_model_that_never_ends_them(tiny_model, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setattr(selfprompts, "MAX_PROMPT_TOKENS", 4)
    model = AutoModelForCausalLM.from_pretrained(tiny_model("llama"), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("llama"))
    with pytest.raises(EaglexError, match=r"finished only 0 usable requests of 16 written \(dropped: 16 unf"):
        write_requests(model, tokenizer, 4, tmp_path / "r.jsonl", 0, [999], 8, EvalFilter([]), lambda _: None)


def test_prompt_batches_bound_rows_and_kv_cache():
    lengths = [10] * 300 + [400] * 300 + [864] * 200  # in length order, as regeneration sorts them
    batches = prompt_batches(lengths, 160, 256)
    assert [k for batch in batches for k in batch] == list(range(len(lengths)))  # consecutive, all once
    assert batches[0] == list(range(256))
    for batch in batches:
        assert len(batch) <= 256 and len(batch) * (lengths[batch[-1]] + 160) <= BATCH_TOKENS
    assert len(batches[-2]) == BATCH_TOKENS // (864 + 160)  # long prompts: as many rows as the cache holds


def test_eval_filter_drops_conversations_with_eval_prompts():
    question = (
        "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins "
        "for her friends every day with four."
    )
    exclude = EvalFilter([question, "Now, explain it to a kid."])

    def conversation(text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]

    assert exclude.contains_eval_prompt(conversation("Please solve: " + question.upper().replace(".", " !")))
    assert exclude.contains_eval_prompt(conversation("great. now explain it to a kid"))
    assert not exclude.contains_eval_prompt(conversation("Janet's ducks lay eggs. She bakes muffins."))
    assert not exclude.contains_eval_prompt(conversation("explain it to a grown-up"))


def test_draft_vocab_is_most_frequent_tokens_as_offsets():
    tokens = np.array([7, 7, 7, 3, 3, 9, 9, 9, 9, 1])
    vocab = build_draft_vocab(tokens, vocab_size=12, draft_vocab_size=3)
    assert vocab.target_ids.tolist() == [3, 7, 9]  # ascending target ids
    assert vocab.d2t.dtype == torch.int64 and vocab.d2t.tolist() == [3, 6, 7]  # offsets, not ids
    assert vocab.t2d.dtype == torch.bool and vocab.t2d.nonzero().flatten().tolist() == [3, 7, 9]
    assert vocab.coverage == pytest.approx(9 / 10)
    # Ties (and unseen tokens) go to the lower id.
    assert build_draft_vocab(tokens, 12, 5).target_ids.tolist() == [0, 1, 3, 7, 9]


def test_carried_over_head_keeps_trained_rows_and_maps_new_ones():
    generator = torch.Generator().manual_seed(0)
    target_head = torch.randn(20, 6, generator=generator)
    linear, bias = torch.randn(6, 4, generator=generator), torch.randn(4, generator=generator)
    old_ids, new_ids = torch.tensor([1, 4, 5, 8, 11, 13, 15, 17]), torch.tensor([0, 4, 8, 9, 17, 19])
    # Trained rows that are an affine image of the target's: the fit recovers it for the new tokens.
    affine = target_head[old_ids] @ linear + bias
    rows = carry_over_head(affine, old_ids, new_ids, target_head)
    torch.testing.assert_close(rows, target_head[new_ids] @ linear + bias)
    assert rows.dtype == affine.dtype
    # Rows of tokens in both vocabularies (4, 8, 17) are copied as trained, wherever they lie.
    trained = torch.randn(8, 4, generator=generator)
    rows = carry_over_head(trained, old_ids, new_ids, target_head)
    assert torch.equal(rows[[1, 2, 4]], trained[[1, 3, 7]])
