"""Training-time test: the drafter unrolled for K steps over whole sequences, as it drafts at run time.

Row t of step 0 pairs the target's feature at position t with token t+1 and predicts token t+2, like the
committed rows of the runtime's drafter. Step j > 0 feeds row t the drafter's own step j-1 hidden with
token t+1+j, at RoPE position t+j, and predicts token t+2+j: a depth-(j+1) tree node whose ancestors are the
true tokens. Its query sees the step-0 keys of positions <= t (the committed context) and its own row's
keys from steps 1..j (its ancestors and itself), exactly the runtime's tree mask (runtime/tree.py).

Attention for steps j > 0 is computed without materialising the [jS, jS] mask: scores against the step-0
keys (causal) are concatenated with the j same-row scores and softmaxed together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from eaglex.exporter.drafter import Eagle3Drafter


def at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """Softmaxes run in fp32 when bf16 autocast gives them bf16 scores (fp64 checks stay fp64)."""
    return torch.promote_types(dtype, torch.float32)


def ttt_allowed(rows: int, steps: int) -> Tensor:
    """The attention pattern written out: bool [steps*rows, steps*rows], query (j, t) -> key (i, u).

    Direct construction for checking; training never builds it.
    """
    allowed = torch.zeros(steps * rows, steps * rows, dtype=torch.bool)
    for j in range(steps):
        for t in range(rows):
            allowed[j * rows + t, : t + 1] = True  # step-0 keys of positions <= t
            for i in range(1, j + 1):
                allowed[j * rows + t, i * rows + t] = True  # its own row at steps 1..j
    return allowed


class TTTAttention:
    """The `attend` of `Eagle3Drafter.step` for one unrolled pass, keeping each step's keys and values.

    Steps j > 0 may run on the rows from `first_row` on only (rows before it carry no loss at those steps);
    their query i is then row first_row + i, and still sees every step-0 key up to that row.
    """

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim**-0.5
        self.first_row = 0
        self.keys: list[Tensor] = []  # per step [B, kv, rows, d]
        self.values: list[Tensor] = []

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        batch, rows, _ = q.shape
        kv, d = self.num_kv_heads, self.head_dim
        group = self.num_heads // kv
        k = k.view(batch, rows, kv, d).transpose(1, 2)
        v = v.view(batch, rows, kv, d).transpose(1, 2)
        self.keys.append(k)
        self.values.append(v)
        if len(self.keys) == 1:  # step 0: plain causal attention over the sequence
            q = q.view(batch, rows, self.num_heads, d).transpose(1, 2)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            return out.transpose(1, 2).reshape(batch, rows, self.num_heads * d)
        # Query head h reads KV head h // group (as repeat_interleave does), without copying K/V.
        q = q.view(batch, rows, kv, group, d).permute(0, 2, 3, 1, 4)  # [B, kv, group, rows, d]
        k0, v0 = self.keys[0][:, :, None], self.values[0][:, :, None]  # [B, kv, 1, S, d]
        scores = (q @ k0.transpose(-1, -2)) * self.scale  # [B, kv, group, rows, S]
        query_pos = torch.arange(self.first_row, self.first_row + rows, device=q.device)
        causal = torch.arange(k0.shape[-2], device=q.device)[None, :] <= query_pos[:, None]
        scores = scores.masked_fill(~causal, float("-inf"))
        own_k = torch.stack(self.keys[1:], dim=-2)[:, :, None]  # [B, kv, 1, rows, j, d]
        own_v = torch.stack(self.values[1:], dim=-2)[:, :, None]
        own = (q[..., None, :] * own_k).sum(-1) * self.scale  # [B, kv, group, rows, j]
        scores = torch.cat([scores, own], dim=-1)
        weights = torch.softmax(scores, dim=-1, dtype=at_least_fp32(scores.dtype)).to(v0.dtype)
        out = weights[..., : k0.shape[-2]] @ v0 + (weights[..., k0.shape[-2] :, None] * own_v).sum(-2)
        return out.permute(0, 3, 1, 2, 4).reshape(batch, rows, self.num_heads * d)


@dataclass
class TTTOutput:
    loss: Tensor  # sum_j decay^j * loss_j
    step_losses: list[Tensor]  # mean cross-entropy per step over its counted rows (detached)
    step_correct: list[int]  # rows whose drafter argmax equals the teacher's argmax, per step
    step_counted: list[int]  # rows that carry loss, per step
    hidden: list[Tensor]  # per step the drafter's pre-norm output [B, rows, H] (rows from first_row at j > 0)
    first_row: int


def _shift(x: Tensor, by: int, rows: int) -> Tensor:
    """x[:, by : by + rows], padded at the end (with zeros / False) where it runs past the sequence."""
    part = x[:, by : by + rows]
    missing = rows - part.shape[1]
    if missing <= 0:
        return part
    pad = torch.zeros((x.shape[0], missing, *x.shape[2:]), dtype=x.dtype, device=x.device)
    return torch.cat([part, pad], dim=1)


def ttt_forward(
    drafter: Eagle3Drafter,
    embed: Tensor,
    ids: Tensor,
    features: Tensor,
    teacher_logits: Tensor,
    weight: Tensor,
    steps: int = 7,
    decay: float = 0.8,
    skip_dead_rows: bool = True,
) -> TTTOutput:
    """The unrolled forward and loss over right-padded sequences.

    ids [B, N] int64, features [B, N, 3H_t] (target features per position), teacher_logits [B, N, V_draft]
    (the target's logits at each position restricted to the draft vocabulary), weight [B, N] bool (True
    where the token at that position is to be learned: an assistant token whose preceding position has a
    target argmax inside the draft vocabulary). embed: the target's embedding table.
    Rows t = 0..N-2; row t at step j is trained towards the teacher at position t+1+j (predicting token
    t+2+j) with weight[t+2+j].
    """
    rows = ids.shape[1] - 1
    config = drafter.config
    attend = TTTAttention(config.num_heads, config.num_kv_heads, config.head_dim)
    first_row = 0
    if skip_dead_rows and steps > 1:
        # Steps >= 1 only need rows with a counted target at some step >= 1: position t+3.. t+steps+1.
        counted = weight.any(0).nonzero()
        first_row = max(0, int(counted[0]) - steps - 1) if len(counted) else rows
        first_row = min(first_row, rows - 1)
    g = drafter.fc(features[:, :rows])
    out = TTTOutput(torch.zeros((), device=ids.device), [], [], [], [], first_row)
    # The teacher's softmax and argmax, once per position: each position is read by up to `steps` steps,
    # and both are row-wise, so a step's rows come out exactly as if computed for that step alone. max's
    # indices are argmax's (the first maximum), several times faster on CPUs.
    length = ids.shape[1]
    teacher_probs = torch.softmax(teacher_logits, dim=-1).flatten(0, 1)
    teacher_argmax = teacher_logits.max(-1).indices.flatten()
    for j in range(steps):
        start = 0 if j == 0 else first_row
        attend.first_row = start
        span = rows - start
        tokens = _shift(ids, start + 1 + j, span)
        positions = torch.arange(start, rows, device=ids.device)[None] + j
        h = drafter.step(embed[tokens], g, positions, attend)
        # Only rows with a token to learn get logits: the draft head and the two softmaxes over the draft
        # vocabulary are most of a step's work, and a chat sequence's prompt rows (~40%) learn nothing.
        # A counted row r (its target at start + 2 + j + r exists) reads the teacher at start + 1 + j + r.
        b, r = _shift(weight, start + 2 + j, span).nonzero(as_tuple=True)
        logits = drafter.draft_logits(h[b, r])
        logprobs = torch.log_softmax(logits, dim=-1, dtype=at_least_fp32(logits.dtype))
        teacher_rows = b * length + r + start + 1 + j  # rows of the flattened [B * N] teacher
        # Cross-entropy against the teacher's softmax (index_select: a plain row copy, unlike [b, r]).
        ce = -(teacher_probs.index_select(0, teacher_rows) * logprobs).sum(-1)
        n = len(ce)
        loss_j = ce.sum() / max(n, 1)
        out.loss = out.loss + decay**j * loss_j
        out.step_losses.append(loss_j.detach())
        drafted = logprobs.detach().max(-1).indices
        out.step_correct.append(int((drafted == teacher_argmax[teacher_rows]).sum()))
        out.step_counted.append(n)
        out.hidden.append(h)
        g = h if j > 0 else h[:, first_row:]  # the drafter's own hidden feeds the next step
    return out
