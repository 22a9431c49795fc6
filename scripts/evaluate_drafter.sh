#!/usr/bin/env bash
# Exports a trained SmolLM2-135M-Instruct drafter and measures its acceptance on issue 3's sets (MT-bench
# first turns 80, HumanEval 20, GSM8K 20) plus held-out ShareGPT and self-written requests (32 each), one
# process per core, into one JSON file (the format of docs/bench/acceptance-run*.json):
#
#   bash scripts/evaluate_drafter.sh DRAFTER ARTIFACT OUT.json ["what the drafter is"]
#
# The artifact is exported only if ARTIFACT does not exist yet. About 20 minutes on two idle cores, less
# once the target's greedy continuations of these prompts are cached (drafter_acceptance.py --traces).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bash scripts/evaluate_drafter.sh DRAFTER ARTIFACT OUT.json [DESCRIPTION]" >&2
  exit 2
fi
drafter=$1 artifact=$2 out=$3 description=${4:-$1}
[ -d "$artifact" ] || eaglex export --model smollm2 --drafter "$drafter" --out "$artifact"
parts=$(mktemp -d)
trap 'rm -rf "$parts"' EXIT
# MT-bench's 80 prompts on one core, the other 104 (HumanEval's are longer) on the other.
taskset -c 0 python scripts/drafter_acceptance.py "$artifact" --limits mt-bench=80 \
  --out "$parts/a.json" > "$parts/a.log" 2>&1 &
first=$!
taskset -c 1 python scripts/drafter_acceptance.py "$artifact" \
  --limits humaneval=20,gsm8k=20,sharegpt-heldout=32,self-written=32 --out "$parts/b.json" \
  > "$parts/b.log" 2>&1 || { tail -5 "$parts/b.log" >&2; exit 1; }
wait "$first" || { tail -5 "$parts/a.log" >&2; exit 1; }
python - "$artifact" "$description" "$out" "$parts/a.json" "$parts/b.json" <<'EOF'
import json
import sys

artifact, description, out, *parts = sys.argv[1:]
record = {
    "artifact": artifact,
    "drafter": description,
    "max_new_tokens": 128,
    "temperature": 0,
    "shapes": "top_k/depth/total_tokens -> mean acceptance length (tokens per target pass, bonus included)",
}
for part in parts:
    sets = json.load(open(part))
    assert sets.pop("max_new_tokens") == record["max_new_tokens"]
    sets.pop("artifact")
    record.update(sets)
with open(out, "w") as f:
    json.dump(record, f, indent=2)
    f.write("\n")
print("| set | " + " | ".join(record["mt-bench"]) + " |")
for name, row in record.items():
    if isinstance(row, dict):
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |")
EOF
