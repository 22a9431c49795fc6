"""EAGLE-3 drafter training with training-time test (docs/TRAINING.md).

The pipeline, one idea per file, in the order it runs (`pipeline.train_drafter` ties them together):

  data        conversations (ShareGPT or any ShareGPT-format JSON/JSONL) -> token ids + assistant mask,
              minus any that contains a benchmark prompt (the sets: eaglex.bench.datasets)
  selfprompts optionally more conversations whose request the target writes itself (Magpie)
  regenerate  optionally replace first-turn answers with the target's own greedy output
  decode      batched greedy or sampled answers from the target, stopped rows leaving the batch
  jsonl       the append-only caches of both, safe against an interrupted write
  vocab       draft vocabulary from response-token frequencies -> `d2t` offsets and `t2d` mask
  features    frozen target -> its three feature layers and final hidden, cached to disk in fp16
  ttt         the unrolled training-time-test forward, its attention pattern and its loss
  loop        AdamW with warmup and cosine decay, gradient clipping, checkpoints, resume
  checkpoint  the official EAGLE-3 checkpoint format (config.json + model.safetensors)
"""
