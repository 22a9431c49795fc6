"""Target-side sampling: temperature, nucleus (top-p) and drawing one token.

Speculative sampling is only lossless with respect to *this* distribution, so verification and plain
decoding must both go through `probabilities`.
"""

import math

import numpy as np

from eaglex.errors import EaglexError


def validate_sampling(temperature: float, top_p: float) -> None:
    """Reject bad settings up front, with the flag names the user typed. Temperature 0 means greedy."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise EaglexError(f"--temperature must be a finite number >= 0 (0 = greedy), got {temperature:g}")
    if not 0 < top_p <= 1:
        raise EaglexError(f"--top-p must be in (0, 1], got {top_p:g}")


def probabilities(logits: np.ndarray, temperature: float, top_p: float, top_k: int = 0) -> np.ndarray:
    """Next-token distribution [..., V] float64 from logits [..., V].

    softmax(logits / temperature), then top_k (> 0: the k most likely tokens, ties at the edge all kept,
    renormalised), then the nucleus: the smallest set of most likely tokens whose mass
    reaches top_p (never empty; ties at its edge all kept), renormalised. Temperature 0 gives a one-hot
    argmax, so that sampling at temperature 0 is greedy decoding. float64 because acceptance divides by
    residual masses.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        probs = np.zeros_like(logits)
        np.put_along_axis(probs, logits.argmax(-1)[..., None], 1.0, axis=-1)
        return probs
    z = logits / temperature
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if 0 < top_k < probs.shape[-1]:
        kth = np.take(np.partition(probs, -top_k, axis=-1), [-top_k], axis=-1)
        probs = np.where(probs >= kth, probs, 0.0)
        probs /= probs.sum(-1, keepdims=True)
    if top_p < 1:
        # The nucleus ends at the first token (in descending order) whose inclusion reaches top_p: the top
        # token always stays. Tokens tied with the last kept one are all kept, so the result does not
        # depend on how a sort orders ties. Only the largest values matter: sorting a partition of the top
        # 1024 is 4x faster at V = 50k, unless the distribution is so flat that they fall short of top_p.
        m = min(probs.shape[-1], 1024)
        desc = np.sort(np.partition(probs, -m, axis=-1)[..., -m:], axis=-1)[..., ::-1]
        cum = np.cumsum(desc, axis=-1)
        if np.any(cum[..., -1] < top_p):
            desc = np.sort(probs, axis=-1)[..., ::-1]
            cum = np.cumsum(desc, axis=-1)
        n_keep = np.sum(cum - desc < top_p, axis=-1, keepdims=True)
        probs = np.where(probs >= np.take_along_axis(desc, n_keep - 1, axis=-1), probs, 0.0)
        probs /= probs.sum(-1, keepdims=True)
    return probs


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    """Draw an index of a 1-D array of non-negative weights.

    The weights need not sum to 1 (acceptance passes an unnormalised residual). Inverse CDF with
    side="right" never returns a zero-weight index: u * total < total for u in [0, 1).
    """
    cdf = np.cumsum(probs)
    return int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
