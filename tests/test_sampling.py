import numpy as np
import pytest

from eaglex.errors import EaglexError
from eaglex.runtime.sampling import probabilities, sample, validate_sampling


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_temperature_scales_logits():
    logits = np.array([2.0, 1.0, 0.0, -1.0])
    for t in (0.5, 1.0, 2.0):
        np.testing.assert_allclose(probabilities(logits, t, 1.0), softmax(logits / t), rtol=1e-12)
    # Lower temperature sharpens: the top token gains mass.
    top = [probabilities(logits, t, 1.0)[0] for t in (0.5, 1.0, 2.0)]
    assert top[0] > top[1] > top[2]


def test_temperature_zero_is_one_hot_argmax():
    logits = np.array([[0.1, 3.0, 3.0, -2.0], [5.0, 1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(probabilities(logits, 0.0, 0.5), [[0, 1, 0, 0], [1, 0, 0, 0]])


def test_top_p_keeps_smallest_nucleus():
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    logits = np.log(probs)
    np.testing.assert_allclose(probabilities(logits, 1.0, 0.75), [0, 0.5 / 0.8, 0, 0.3 / 0.8])
    np.testing.assert_allclose(probabilities(logits, 1.0, 0.85), [0, 0.5, 0.15, 0.3] / np.float64(0.95))
    np.testing.assert_allclose(probabilities(logits, 1.0, 0.99), probs)


def test_top_p_always_keeps_the_top_token():
    logits = np.log(np.array([0.2, 0.3, 0.25, 0.25]))
    np.testing.assert_array_equal(probabilities(logits, 1.0, 1e-9), [0, 1, 0, 0])


def test_top_p_keeps_ties_at_the_edge():
    logits = np.log(np.array([0.4, 0.2, 0.2, 0.2]))
    np.testing.assert_allclose(probabilities(logits, 1.0, 0.5), [0.4, 0.2, 0.2, 0.2])


def test_top_p_matches_a_full_sort():
    """Peaked rows take the partial-sort path, flat ones (nucleus > 1024 tokens) the full sort."""
    rng = np.random.default_rng(3)
    for scale in (0.05, 1.0, 6.0):
        logits = rng.normal(scale=scale, size=(4, 5000))
        for top_p in (0.3, 0.9, 0.999):
            expected = softmax(logits)
            order = np.argsort(-expected, axis=-1)
            cum = np.cumsum(np.take_along_axis(expected, order, -1), axis=-1)
            drop = np.zeros_like(expected, dtype=bool)
            np.put_along_axis(drop, order, np.roll(cum, 1, axis=-1) >= top_p, -1)
            drop[np.arange(4), order[:, 0]] = False
            expected[drop] = 0
            expected /= expected.sum(-1, keepdims=True)
            np.testing.assert_allclose(probabilities(logits, 1.0, top_p), expected, rtol=1e-9, atol=0)


def test_batched_rows_sum_to_one():
    logits = np.random.default_rng(0).normal(scale=4, size=(3, 5, 1000)).astype(np.float32)
    for t, top_p in [(1.0, 1.0), (0.7, 0.9), (1.3, 0.5), (0.0, 0.9)]:
        probs = probabilities(logits, t, top_p)
        assert probs.dtype == np.float64 and probs.shape == logits.shape
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-12)
        for row_logits, row in zip(logits.reshape(-1, 1000), probs.reshape(-1, 1000), strict=True):
            np.testing.assert_array_equal(row, probabilities(row_logits, t, top_p))


def test_sample_follows_weights_and_skips_zeros():
    rng = np.random.default_rng(1)
    weights = np.array([0.0, 2.0, 0.0, 1.0, 1.0, 0.0])  # unnormalised on purpose
    draws = np.array([sample(weights, rng) for _ in range(20000)])
    counts = np.bincount(draws, minlength=len(weights))
    assert counts[[0, 2, 5]].sum() == 0
    np.testing.assert_allclose(counts / len(draws), weights / weights.sum(), atol=0.015)
    assert sample(np.array([0.0, 0.0, 1.0]), rng) == 2


@pytest.mark.parametrize(
    ("temperature", "top_p", "message"),
    [
        (-1, 0.9, "--temperature must be a finite number >= 0 (0 = greedy), got -1"),
        (float("nan"), 0.9, "--temperature must be a finite number >= 0 (0 = greedy), got nan"),
        (float("inf"), 0.9, "--temperature must be a finite number >= 0 (0 = greedy), got inf"),
        (1.0, 0.0, "--top-p must be in (0, 1], got 0"),
        (1.0, 1.5, "--top-p must be in (0, 1], got 1.5"),
        (1.0, float("nan"), "--top-p must be in (0, 1], got nan"),
    ],
)
def test_validate_rejects_bad_settings(temperature, top_p, message):
    with pytest.raises(EaglexError) as err:
        validate_sampling(temperature, top_p)
    assert str(err.value) == message


def test_validate_accepts_good_settings():
    for temperature, top_p in [(0, 1), (0.0, 0.5), (0.7, 0.95), (2.5, 1.0)]:
        validate_sampling(temperature, top_p)
