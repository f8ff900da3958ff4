"""Markov sources: exact probabilities, entropy, sampling frequencies."""
from __future__ import annotations
import itertools
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from tokenlab.core import TokenlabError
from tokenlab.markov import MarkovSource, random_source, switching_source


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.sampled_from(["ab", "abc"]), st.integers(0, 10_000), st.integers(0, 12))
def test_next_probs_is_a_distribution_and_matches_log_prob(k, alphabet, seed, n):
    src = random_source(k, alphabet, 0.6, seed)
    x = src.sample(n, np.random.default_rng(seed))
    p = src.next_probs(x)
    assert p.shape == (len(alphabet),) and (p >= 0).all() and abs(p.sum() - 1) < 1e-9
    assert np.isfinite(src.log_prob(x))
    base = src.log_prob(x) if x else 0.0
    assert np.allclose(p, [np.exp(src.log_prob(x + c) - base) for c in alphabet])


@pytest.mark.parametrize("k", [1, 2, 4])
def test_switching_entropy(k):
    s = switching_source(k, 0.9)
    assert abs(s.entropy_rate() - (-(0.9 * np.log2(0.9) + 0.1 * np.log2(0.1)))) < 1e-12
    assert abs(s.unigram_entropy() - 1.0) < 1e-12


def test_entropy_rate_of_an_iid_source_is_its_symbol_entropy():
    q = np.array([0.5, 0.25, 0.25])
    s = MarkovSource(1, "abc", np.tile(q, (3, 1)))
    assert abs(s.entropy_rate() - 1.5) < 1e-12 and abs(s.unigram_entropy() - 1.5) < 1e-12


def test_long_sample_matches_stationary_and_transitions():
    s = random_source(2, "abc", 1.0, seed=1)
    x = s.sample(200_000, np.random.default_rng(0))
    freq = np.array([x.count(c) for c in "abc"]) / len(x)
    assert np.abs(freq - s.symbol_marginal()).max() < 0.01
    nll = -s.log_prob(x) / len(x) / np.log(2)          # empirical bits per symbol -> entropy rate
    assert abs(nll - s.entropy_rate()) < 0.02


def test_probabilities_of_all_strings_sum_to_one():
    s = random_source(2, "ab", 0.5, seed=7)
    assert abs(sum(np.exp(s.log_prob("".join(t))) for t in itertools.product("ab", repeat=5)) - 1) < 1e-9


def test_bad_input():
    with pytest.raises(TokenlabError, match="order"): MarkovSource(0, "ab", [[1.0, 0.0]])
    with pytest.raises(TokenlabError, match="distribution"): MarkovSource(1, "ab", [[0.5, 0.6], [0.5, 0.5]])
    with pytest.raises(TokenlabError, match="shape"): MarkovSource(2, "ab", [[0.5, 0.5]])
    with pytest.raises(TokenlabError, match="alphabet"): switching_source(2, 0.5).next_probs("abz")
    with pytest.raises(TokenlabError, match="binary"): switching_source(2, 0.5, "abc")
