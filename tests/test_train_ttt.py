"""Training-time test: the attention pattern, the unrolled forward against a direct construction, and
agreement with the drafter as the runtime runs it (KV cache, tree mask, chain drafting)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eaglex.exporter.drafter import DrafterConfig, Eagle3Drafter
from eaglex.train.ttt import ttt_allowed, ttt_forward

CONFIG = DrafterConfig(
    hidden_size=32,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    intermediate_size=48,
    rms_norm_eps=1e-6,
    vocab_size=50,
    draft_vocab_size=50,
    feature_layers=(2, 2, 1),
    target_hidden_size=24,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second thread only adds waiting, a lot of it on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_drafter(seed: int = 0) -> Eagle3Drafter:
    torch.manual_seed(seed)
    drafter = Eagle3Drafter(CONFIG)
    with torch.no_grad():
        # Large weights and norms away from 1: attention far from uniform, so every term shows.
        for parameter in drafter.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.3)
            else:
                parameter.uniform_(0.5, 1.5)
    return drafter.double()


def test_allowed_pattern_small_case():
    """Step j at row t: step-0 keys of rows <= t, and its own row at steps 1..j. 2 rows x 3 steps."""
    expected = torch.tensor(
        [
            # keys: step0 r0, r1 | step1 r0, r1 | step2 r0, r1
            [1, 0, 0, 0, 0, 0],  # step 0, row 0
            [1, 1, 0, 0, 0, 0],  # step 0, row 1
            [1, 0, 1, 0, 0, 0],  # step 1, row 0
            [1, 1, 0, 1, 0, 0],  # step 1, row 1
            [1, 0, 1, 0, 1, 0],  # step 2, row 0
            [1, 1, 0, 1, 0, 1],  # step 2, row 1
        ],
        dtype=torch.bool,
    )
    assert torch.equal(ttt_allowed(2, 3), expected)


def make_inputs(batch: int = 2, length: int = 12, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, CONFIG.vocab_size, (batch, length), generator=generator)
    width, vocab = 3 * CONFIG.target_hidden_size, CONFIG.draft_vocab_size
    features = torch.randn(batch, length, width, generator=generator, dtype=torch.float64)
    teacher = torch.randn(batch, length, vocab, generator=generator, dtype=torch.float64) * 3
    weight = torch.zeros(batch, length, dtype=torch.bool)
    weight[0, 7:] = True  # an "answer" from position 7 on
    weight[1:, 9:11] = True
    embed = torch.randn(CONFIG.vocab_size, CONFIG.hidden_size, generator=generator, dtype=torch.float64)
    return embed, ids, features, teacher, weight


def reference_ttt(drafter, embed, ids, features, teacher, weight, steps, decay=0.8):
    """Direct construction: every step attends over the keys of all steps so far with SDPA, masked by the
    explicitly built pattern; row t of step j reads token t+1+j and learns teacher t+1+j / weight t+2+j."""
    batch, rows = ids.shape[0], ids.shape[1] - 1
    allowed = ttt_allowed(rows, steps)
    pad = steps + 2
    ids_p = F.pad(ids, (0, pad))
    teacher_p = F.pad(teacher, (0, 0, 0, pad))
    weight_p = F.pad(weight, (0, pad))
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    g = drafter.fc(features[:, :rows])
    hidden, loss = [], torch.zeros((), dtype=torch.float64)
    heads, kv, d = CONFIG.num_heads, CONFIG.num_kv_heads, CONFIG.head_dim
    for j in range(steps):

        def attend(q, k, v, j=j):
            keys.append(k)
            values.append(v)
            key = torch.cat(keys, 1).view(batch, -1, kv, d).transpose(1, 2)
            value = torch.cat(values, 1).view(batch, -1, kv, d).transpose(1, 2)
            query = q.view(batch, rows, heads, d).transpose(1, 2)
            mask = allowed[j * rows : (j + 1) * rows, : (j + 1) * rows]
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=True)
            return out.transpose(1, 2).reshape(batch, rows, heads * d)

        tokens = ids_p[:, 1 + j : 1 + j + rows]
        h = drafter.step(embed[tokens], g, torch.arange(rows)[None] + j, attend)
        logprobs = torch.log_softmax(drafter.draft_logits(h), -1)
        ce = -(torch.softmax(teacher_p[:, 1 + j : 1 + j + rows], -1) * logprobs).sum(-1)
        counted = weight_p[:, 2 + j : 2 + j + rows]
        loss = loss + decay**j * (ce * counted).sum() / max(int(counted.sum()), 1)
        hidden.append(h)
        g = h
    return hidden, loss


@pytest.mark.parametrize("skip_dead_rows", [False, True])
def test_ttt_forward_matches_direct_construction(skip_dead_rows):
    drafter = random_drafter()
    embed, ids, features, teacher, weight = make_inputs()
    steps = 4
    expected_hidden, expected_loss = reference_ttt(drafter, embed, ids, features, teacher, weight, steps)
    out = ttt_forward(drafter, embed, ids, features, teacher, weight, steps, skip_dead_rows=skip_dead_rows)
    # Row 7 is the first counted position: steps >= 1 start at row 7 - steps - 1 = 2 when skipping.
    assert out.first_row == (2 if skip_dead_rows else 0)
    for j, (got, want) in enumerate(zip(out.hidden, expected_hidden, strict=True)):
        start = out.first_row if j > 0 else 0
        torch.testing.assert_close(got, want[:, start:], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.loss, expected_loss, rtol=1e-9, atol=1e-9)
    assert out.step_counted[0] == int(weight[:, 2:].sum())
    # Logits only on counted rows: the gradients are still those of the loss over every row.
    params = [p for p in drafter.parameters() if p.requires_grad]
    got_grads = torch.autograd.grad(out.loss, params, allow_unused=True)
    want_grads = torch.autograd.grad(expected_loss, params, allow_unused=True)
    for got, want in zip(got_grads, want_grads, strict=True):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_ttt_matches_runtime_chain_drafting():
    """Row t at step j is what the exported drafter computes for a depth-(j+1) chain node after committing
    rows 0..t: same positions, same tree mask, same KV cache contents."""
    drafter = random_drafter(seed=3)
    embed, ids, features, teacher, weight = make_inputs(batch=1, length=10, seed=4)
    steps = 4
    out = ttt_forward(drafter, embed, ids, features, teacher, weight, steps, skip_dead_rows=False)
    kv, d, capacity = CONFIG.num_kv_heads, CONFIG.head_dim, 32
    no_features = torch.zeros(1, 0, features.shape[-1], dtype=torch.float64)
    no_hidden = torch.zeros(1, 0, CONFIG.hidden_size, dtype=torch.float64)
    top_k = torch.tensor([1])
    for t in (0, 3, 5):
        past = [torch.zeros(1, kv, capacity, d, dtype=torch.float64) for _ in range(2)]
        # Commit rows 0..t (feature u with token u+1), causal among themselves.
        rows = t + 1
        causal = torch.full((rows, rows), float("-inf"), dtype=torch.float64).triu(1)
        hidden, _, _, *past = drafter(
            embed[ids[:, 1 : rows + 1]],
            features[:, :rows],
            no_hidden,
            torch.arange(rows)[None],
            causal[None, None],
            torch.tensor([rows - 1], dtype=torch.int32),
            torch.tensor(rows, dtype=torch.int32),
            torch.tensor([rows - 1]),
            top_k,
            *past,
        )
        torch.testing.assert_close(hidden[0], out.hidden[0][0, :rows], rtol=1e-9, atol=1e-9)
        parent = hidden[:, -1:]
        for j in range(1, steps):
            # A chain node sees every cache entry: committed rows plus its ancestors, then itself.
            total = rows + j
            hidden, _, _, *past = drafter(
                embed[ids[:, t + 1 + j : t + 2 + j]],
                no_features,
                parent,
                torch.tensor([[t + j]]),
                torch.zeros(1, 1, 1, total, dtype=torch.float64),
                torch.tensor([total - 1], dtype=torch.int32),
                torch.tensor(total, dtype=torch.int32),
                torch.tensor([0]),
                top_k,
                *past,
            )
            torch.testing.assert_close(hidden[0, 0], out.hidden[j][0, t], rtol=1e-9, atol=1e-9)
            parent = hidden
