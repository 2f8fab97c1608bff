"""Sampler vs references: HF's logits processors (independent code) and NumPy's own distribution math."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lowbit.errors import LowbitError
from lowbit.runtime.sampler import (
    Sampler,
    SamplingParams,
    apply_repetition_penalty,
    log_softmax,
    sampling_probs,
    top_k_mask,
    top_p_mask,
)


def _logits(seed: int, n: int = 257) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=3.0, size=n).astype(np.float32)


@pytest.mark.parametrize("k", [1, 5, 40, 256])
def test_top_k_mask_matches_hf(k):
    logits = _logits(k)
    ref = TopKLogitsWarper(k)(None, torch.from_numpy(logits)[None])[0].isfinite().numpy()
    np.testing.assert_array_equal(top_k_mask(logits, k), ref)
    assert top_k_mask(logits, 0).all() and top_k_mask(logits, 10_000).all()


@pytest.mark.parametrize("k", [1, 3, 4, 6])
def test_top_k_keeps_ties_as_hf_does(k):
    logits = np.array([2.0, 5.0, 5.0, 1.0, 5.0, 3.0, 3.0, -1.0], dtype=np.float32)
    ref = TopKLogitsWarper(k)(None, torch.from_numpy(logits)[None])[0].isfinite().numpy()
    np.testing.assert_array_equal(top_k_mask(logits, k), ref)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9, 0.999])
def test_top_p_mask_matches_hf(p):
    logits = _logits(int(p * 1000))
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    ref = TopPLogitsWarper(p)(None, torch.from_numpy(logits)[None])[0].isfinite().numpy()
    keep = top_p_mask(probs, p)
    np.testing.assert_array_equal(keep, ref)
    # the kept set is the smallest prefix of the sorted probabilities reaching p
    assert probs[keep].sum() >= p and probs[keep].sum() - probs[keep].min() < p


def test_repetition_penalty_matches_hf():
    logits, seen = _logits(1), [3, 3, 17, 200, 5]
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([seen]), torch.from_numpy(logits)[None])[0]
    np.testing.assert_allclose(apply_repetition_penalty(logits, seen, 1.3), ref.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(apply_repetition_penalty(logits, seen, 1.0), logits)


def test_sampling_probs_match_hf_warpers():
    logits = _logits(7)
    x = torch.from_numpy(logits)[None]
    for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(50), TopPLogitsWarper(0.8)):
        x = warper(None, x)
    ref = torch.softmax(x.double(), -1)[0].numpy()
    got = sampling_probs(logits, SamplingParams(temperature=0.7, top_k=50, top_p=0.8))
    np.testing.assert_allclose(got, ref, atol=1e-6)  # HF scales in fp32


def test_greedy_is_argmax_after_penalty():
    logits = _logits(3)
    top = int(np.argmax(logits))
    assert Sampler(SamplingParams())(logits) == top
    assert Sampler(SamplingParams(repetition_penalty=1e6))(logits, [top]) != top


def test_seeded_sampling_is_reproducible_and_follows_the_distribution():
    logits = _logits(11, n=16)
    params = SamplingParams(temperature=0.9, top_p=0.95, top_k=10, seed=123)
    draws = [Sampler(params) for _ in range(2)]
    a = [draws[0](logits) for _ in range(4000)]
    b = [draws[1](logits) for _ in range(4000)]
    assert a == b
    c = [Sampler(SamplingParams(temperature=0.9, top_p=0.95, top_k=10, seed=124))(logits) for _ in range(50)]
    assert c != a[:50] or len(set(a)) == 1
    probs = sampling_probs(logits, params)
    freq = np.bincount(a, minlength=logits.size) / len(a)
    assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(probs))  # never outside top-k/top-p
    np.testing.assert_allclose(freq, probs, atol=4 * np.sqrt(0.25 / len(a)))  # 4 sigma


def _openai_reference(logits: np.ndarray, generated: list[int], presence: float, frequency: float,
                      bias: dict[int, float], temperature: float) -> np.ndarray:
    """OpenAI's documented formula, token by token: mu[j] + bias[j] - c[j]*frequency - (c[j]>0)*presence;
    then softmax(mu / T)."""
    mu = logits.astype(np.float64).copy()
    for j in range(mu.size):
        c = generated.count(j)
        mu[j] += bias.get(j, 0.0) - c * frequency - (1.0 if c > 0 else 0.0) * presence
    e = np.exp((mu - mu.max()) / temperature)
    return e / e.sum()


@pytest.mark.parametrize("presence,frequency,bias", [
    (1.5, 0.0, {}), (0.0, 0.7, {}), (-1.0, 0.5, {}), (0.3, -0.4, {2: 3.0, 5: -2.5}), (0.0, 0.0, {7: -100.0}),
])
def test_penalties_and_logit_bias_follow_openai_formulas(presence, frequency, bias):
    logits = _logits(5, n=8)
    generated = [3, 3, 1, 3, 6]
    params = SamplingParams(temperature=0.8, presence_penalty=presence, frequency_penalty=frequency,
                            logit_bias=tuple(bias.items()), seed=7)
    ref = _openai_reference(logits, generated, presence, frequency, bias, 0.8)
    counts = {t: generated.count(t) for t in set(generated)}
    sampler = Sampler(params)
    sampler.counts = dict(counts)
    np.testing.assert_allclose(sampling_probs(sampler.adjusted(logits), params), ref, atol=1e-6)
    draws = []  # each draw from the same history: fresh counts, one seeded stream
    for _ in range(4000):
        sampler.counts = dict(counts)
        draws.append(sampler(logits))
    freq = np.bincount(draws, minlength=logits.size) / len(draws)
    np.testing.assert_allclose(freq, ref, atol=4 * np.sqrt(0.25 / len(draws)))
    if bias.get(7) == -100.0:
        assert 7 not in draws


def test_frequency_penalty_counts_the_samplers_own_picks():
    """Greedy with a frequency penalty: each pick lowers that token, as the NumPy loop predicts."""
    logits = _logits(9, n=6) * 0.3
    params = SamplingParams(frequency_penalty=0.4, presence_penalty=0.1)
    sampler, got = Sampler(params), []
    for _ in range(12):
        got.append(sampler(logits))
    expected = []
    for _ in range(12):
        ref = _openai_reference(logits, expected, 0.1, 0.4, {}, 1.0)
        expected.append(int(np.argmax(ref)))
    assert got == expected and len(set(got)) > 1


def test_logit_bias_of_100_forces_a_token_and_a_mask_excludes_tokens():
    logits = _logits(4, n=10)
    assert Sampler(SamplingParams(logit_bias=((8, 100.0),)))(logits) == 8
    allowed = np.zeros(10, dtype=bool)
    allowed[[1, 4]] = True
    draws = {Sampler(SamplingParams(temperature=1.0, seed=s))(logits, allowed=allowed) for s in range(200)}
    assert draws == {1, 4}


def test_log_softmax_matches_torch():
    logits = _logits(12, n=4096) * 3
    np.testing.assert_allclose(log_softmax(logits), torch.log_softmax(torch.tensor(logits, dtype=torch.float64), -1),
                               atol=1e-12)


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2),
                                dict(repetition_penalty=0), dict(presence_penalty=2.5),
                                dict(frequency_penalty=-3), dict(logit_bias=((1, 101.0),))])
def test_bad_params_are_one_line_errors(kw):
    with pytest.raises(LowbitError):
        SamplingParams(**kw)
