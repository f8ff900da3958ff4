"""Markov sources: exact entropies, next-symbol probabilities, log-likelihoods and samplers."""
from __future__ import annotations
import itertools, math
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck
from tokenlab.lab.core import TokenlabError
from tokenlab.tokenizers.markov import MarkovSource, switching_source, random_source

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
sources = st.builds(lambda k, alphabet, conc, seed: random_source(k, alphabet, conc, seed),
                    st.integers(1, 3), st.sampled_from(["ab", "abc", "xyzw"]),
                    st.sampled_from([0.1, 0.5, 2.0]), st.integers(0, 10_000))


def hb(x: float) -> float:
    return -sum(t * math.log2(t) for t in (x, 1 - x) if t > 0)


@SETTINGS
@given(sources, st.integers(0, 60), st.integers(0, 2**32 - 1))
def test_log_prob_of_samples_is_finite_and_matches_the_chain_rule(src, n, seed):
    x = src.sample(n, np.random.default_rng(seed))
    assert len(x) == n and set(x) <= set(src.alphabet)
    lp = src.log_prob(x)
    assert math.isfinite(lp) and lp <= 1e-12
    chain = sum(math.log(src.next_probs(x[:i])[src.alphabet.index(x[i])]) for i in range(n))
    assert lp == pytest.approx(chain, abs=1e-8)


@SETTINGS
@given(sources, st.data())
def test_next_probs_is_a_distribution_for_any_context(src, data):
    ctx = data.draw(st.text(src.alphabet, max_size=8))
    if src.log_prob(ctx) == -math.inf and len(ctx) < src.order:   # unreachable start (near-deterministic chain)
        with pytest.raises(TokenlabError, match="probability 0"): src.next_probs(ctx)
        return
    p = src.next_probs(ctx)
    assert p.shape == (len(src.alphabet),) and (p >= 0).all() and p.sum() == pytest.approx(1, abs=1e-12)


@SETTINGS
@given(sources, st.integers(1, 4))
def test_probabilities_of_all_strings_of_a_length_sum_to_one(src, n):
    if len(src.alphabet) ** n > 300: return
    total = sum(math.exp(src.log_prob("".join(w))) for w in itertools.product(src.alphabet, repeat=n))
    assert total == pytest.approx(1, abs=1e-9)


@SETTINGS
@given(st.integers(1, 6), st.floats(0.01, 0.99))
def test_switching_entropy_rate_is_binary_entropy_of_p(k, p):
    src = switching_source(k, p)
    assert src.entropy_rate() == pytest.approx(hb(p), abs=1e-10)
    assert src.unigram_entropy() == pytest.approx(1.0, abs=1e-10)
    assert np.allclose(src.stationary(), 2.0 ** -k)


def test_two_state_chain_closed_form():
    u, v = 0.3, 0.1
    src = MarkovSource(1, "ab", [[1 - u, u], [v, 1 - v]])
    pa = v / (u + v)
    assert src.stationary() == pytest.approx([pa, 1 - pa])
    assert src.entropy_rate() == pytest.approx(pa * hb(u) + (1 - pa) * hb(v), abs=1e-12)
    assert src.unigram_entropy() == pytest.approx(hb(pa), abs=1e-12)


def test_context_layout_oldest_symbol_most_significant():
    src = switching_source(3, 0.9)
    assert src.next_probs("abb") == pytest.approx([0.1, 0.9])     # oldest 'a': the next symbol flips to 'b' w.p. 0.9
    assert src.next_probs("baa") == pytest.approx([0.9, 0.1])
    assert src.next_probs("aabaa") == pytest.approx([0.9, 0.1]), "longer contexts use their last k symbols"
    assert src.context_index("baa") == 4


@pytest.mark.parametrize("src", [random_source(2, "abc", 0.5, seed=3), switching_source(3, 0.8)])
def test_long_sample_frequencies_match_stationary(src):
    x = src.draw_codes(1, 200_000, np.random.default_rng(0))[0]
    k, A = src.order, src.A
    ctx = np.lib.stride_tricks.sliding_window_view(x, k) @ (A ** np.arange(k - 1, -1, -1))
    freq = np.bincount(ctx, minlength=A ** k) / len(ctx)
    assert np.abs(freq - src.stationary()).max() < 0.01
    sym = np.bincount(x, minlength=A) / len(x)
    assert np.abs(sym - src.symbol_marginal()).max() < 0.01


def test_many_short_samples_start_stationary():
    src = random_source(2, "ab", 0.3, seed=7)
    xs = src.samples(20_000, 2, np.random.default_rng(1))
    freq = np.array([sum(x == "".join(w) for x in xs) for w in itertools.product("ab", repeat=2)]) / len(xs)
    assert np.abs(freq - src.stationary()).max() < 0.015


def test_empirical_loss_estimates_entropy_rate():
    src = switching_source(2, 0.8)
    xs = src.samples(100, 1000, np.random.default_rng(4))
    bits = -np.mean([src.log_prob(x) for x in xs]) / 1000 / math.log(2)
    assert bits == pytest.approx(src.entropy_rate(), abs=0.02)


def test_same_seed_same_samples():
    src = random_source(2, "abc", seed=0)
    assert src.samples(3, 40, np.random.default_rng(9)) == src.samples(3, 40, np.random.default_rng(9))


@pytest.mark.parametrize("bad", [
    lambda: MarkovSource(0, "ab", [[1.0, 0.0]]),
    lambda: MarkovSource(1, "ab", [[0.5, 0.6], [1.0, 0.0]]),
    lambda: MarkovSource(1, "ab", [[1.2, -0.2], [1.0, 0.0]]),
    lambda: MarkovSource(1, "aa", [[1.0, 0.0], [0.0, 1.0]]),
    lambda: MarkovSource(2, "ab", [[1.0, 0.0], [0.0, 1.0]]),
    lambda: switching_source(2, 0.8).next_probs("abc"),
    lambda: switching_source(2, 0.8).log_prob("a b"),
    lambda: switching_source(2, 1.5),
    lambda: switching_source(0, 0.5),
    lambda: random_source(20, "ab"),
    lambda: switching_source(2).sample(5, 0),
])
def test_bad_input_raises_tokenlab_error(bad):
    with pytest.raises(TokenlabError):
        bad()
