"""/metrics in Prometheus' text exposition format, from the batch engine's counters."""

from __future__ import annotations

from eaglex.runtime.scheduler import BatchEngine


def prometheus_text(batch: BatchEngine) -> str:
    m = batch.metrics
    rows = [
        ("requests_total", "counter", "Requests accepted into the queue.", m.requests),
        ("requests_finished_total", "counter", "Requests that ran to their end.", m.finished),
        ("requests_cancelled_total", "counter", "Requests cancelled (client gone).", m.cancelled),
        ("requests_rejected_total", "counter", "Requests refused because the queue was full.", m.rejected),
        ("queue_depth", "gauge", "Requests waiting for a batch slot.", batch.queue_depth),
        ("batch_size", "gauge", "Sequences in the running batch.", len(batch.active)),
        (
            "tree_nodes",
            "gauge",
            "Draft-tree nodes verified per decoding sequence in the last pass (1: plain decoding).",
            m.tree_nodes,
        ),
        ("generated_tokens_total", "counter", "Tokens generated.", m.tokens),
        ("target_passes_total", "counter", "Packed target passes.", m.passes),
        ("busy_seconds_total", "counter", "Seconds spent running passes.", m.busy_seconds),
        ("prefix_cache_hits_total", "counter", "Requests that reused a cached prefix.", batch.prefix.hits),
        (
            "prefix_cache_tokens_total",
            "counter",
            "Prompt tokens not prefilled again.",
            batch.prefix.reused_tokens,
        ),
        ("prefix_cache_slots", "gauge", "KV-cache slots held by cached prefixes.", batch.prefix.slots),
        (
            "tokens_per_second",
            "gauge",
            "Tokens generated per second of running passes.",
            m.tokens / m.busy_seconds if m.busy_seconds else 0.0,
        ),
        (
            "mean_acceptance_length",
            "gauge",
            "Tokens per sequence per verify pass, bonus token included.",
            m.verified / m.sequence_passes if m.sequence_passes else 0.0,
        ),
    ]
    lines = []
    for name, kind, text, value in rows:
        lines += [f"# HELP eaglex_{name} {text}", f"# TYPE eaglex_{name} {kind}", f"eaglex_{name} {value:g}"]
    lines += [
        "# HELP eaglex_time_to_first_token_seconds Time from a request's arrival to its first token.",
        "# TYPE eaglex_time_to_first_token_seconds summary",
        f"eaglex_time_to_first_token_seconds_sum {m.ttft_sum:g}",
        f"eaglex_time_to_first_token_seconds_count {m.ttft_count}",
    ]
    return "\n".join(lines) + "\n"
