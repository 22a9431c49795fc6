"""How the second turns of a work folder's conversations would be prompted by `--regenerate-turns`:

    python experiments/check_turn_prompts.py --work-dir WORK [--model smollm2] [--conversations 400]
        [--max-prompt-tokens 864]

For the multi-turn conversations among the first N answered in WORK's regenerated.jsonl (ShareGPT, in the
pipeline's seeded order), prints how many second-turn prompts can be continued from the target's own answer
ids, their median length, the share within the prompt limit, and how many equal a fresh encoding of the
rewritten conversation (the others differ where generated ids are not the tokenizer's own split of their
text).
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

from eaglex.cli import resolve_model
from eaglex.exporter.tokens import special_tokens
from eaglex.train.data import encode_prompt, first_turn, load_records, to_messages
from eaglex.train.jsonl import peek_records
from eaglex.train.regenerate import next_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--conversations", type=int, default=400)
    parser.add_argument("--max-prompt-tokens", type=int, default=864)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    model_dir = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stop_ids = special_tokens(Path(model_dir))["eos_token_ids"]
    conversations = [m for m in map(to_messages, load_records("sharegpt", lambda _: None)) if m is not None]
    random.Random(args.seed).shuffle(conversations)  # the pipeline's order, before eval prompts are dropped
    records = peek_records(args.work_dir / "regenerated.jsonl")[: args.conversations]
    multi, lengths, same = 0, [], 0
    for record in records:
        messages = conversations[record["index"]]
        # Indices after a dropped eval prompt point one conversation further: skip the mismatches.
        if record["prompt"] != encode_prompt(tokenizer, first_turn(messages)):
            continue
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if len(users) < 2:
            continue
        multi += 1
        prompt = next_prompt(tokenizer, messages, [record], stop_ids)
        if prompt is None:
            continue
        lengths.append(len(prompt))
        answer = record["answer"]
        rewritten = [dict(m) for m in messages[: users[1] + 1]]
        text = tokenizer.decode(answer[:-1] if answer[-1] in stop_ids else answer)
        rewritten[users[0] + 1]["content"] = text
        same += prompt == encode_prompt(tokenizer, rewritten)
    print(f"multi-turn conversations: {multi}; second-turn prompts continued: {len(lengths)}")
    if lengths:
        fits = sum(n <= args.max_prompt_tokens for n in lengths) / len(lengths)
        median = statistics.median(lengths)
        print(f"prompt tokens: median {median}; within {args.max_prompt_tokens}: {fits:.1%}")
        print(f"equal to a fresh encoding of the rewritten conversation: {same}/{len(lengths)}")


if __name__ == "__main__":
    main()
