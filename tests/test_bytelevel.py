"""Exact byte-level probabilities: MPE tokenizer, canonical paths, the cover sum against a known source."""
from __future__ import annotations
import functools, itertools
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from tokenlab.tokenizers.bytelevel import (MPETokenizer, kl, mpe_valid, naive_next_byte_probs, next_byte_probs,
                                           normalise, safe_boundary)
from tokenlab.lab.core import TokenlabError
from tokenlab.tokenizers.registry import load_tokenizer

VOCABS = [["a", "b", "ab", "aab", "bb"], ["a", "b", "ba", "aa", "aaa", "bab"], ["a", "b", "c", "ab", "bc", "cab"]]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(VOCABS), st.data())
def test_mpe_round_trip_and_greedy(vocab, data):
    t = MPETokenizer(vocab)
    s = data.draw(st.text(alphabet=t.alphabet, max_size=40))
    ids = t.encode(s)
    assert t.decode(ids) == s
    pos = 0
    for i in ids:                                # each token is the longest vocabulary prefix at its position
        assert not any(len(v) > len(vocab[i]) and s[pos:].startswith(v) for v in vocab)
        pos += len(vocab[i])


@pytest.mark.parametrize("vocab", VOCABS)
def test_mpe_valid_is_exactly_the_prefixes_of_canonical_encodings(vocab):
    t = MPETokenizer(vocab)
    ok = mpe_valid(t)
    L = 9
    prefixes = {tuple(e[:n]) for s in map("".join, itertools.product(t.alphabet, repeat=L))
                for e in [t.encode(s)] for n in range(1, len(e) + 1) if len(t.decode(e[:n])) <= L - t.max_len}
    for n in (1, 2, 3):
        for path in itertools.product(range(t.vocab_size), repeat=n):
            if len(t.decode(path)) <= L - t.max_len:
                assert ok(path) == (path in prefixes), path


@functools.cache
def _iid(vocab: tuple, pa: float, L: int = 11):
    t = MPETokenizer(list(vocab))
    strings = ["".join(s) for s in itertools.product("ab", repeat=L)]
    encs = [(pa ** s.count("a") * (1 - pa) ** s.count("b"), t.encode(s)) for s in strings]
    @functools.lru_cache(maxsize=None)
    def nt(ids):
        out = np.zeros(t.vocab_size)
        for p, e in encs:
            if len(e) > len(ids) and tuple(e[:len(ids)]) == ids and len(t.decode(e[:len(ids) + 1])) <= L - t.max_len:
                out[e[len(ids)]] += p
        return out / out.sum() if out.sum() else out
    return t, lambda ids: nt(tuple(ids))


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(VOCABS[:2]), st.sampled_from([0.2, 0.5, 0.7]), st.text(alphabet="ab", min_size=1, max_size=4))
def test_cover_sum_is_exact_under_a_perfect_model(vocab, pa, x):
    t, nt = _iid(tuple(vocab), pa)
    joint = next_byte_probs(nt, t, [], x.encode(), mpe_valid(t))
    p_x = pa ** x.count("a") * (1 - pa) ** x.count("b")
    assert abs(joint.sum() - p_x) < 1e-9                         # P(x) itself
    assert abs(joint[ord("a")] - p_x * pa) < 1e-9                # P(x a)
    assert kl([pa, 1 - pa], normalise(joint)[[97, 98]]) < 1e-12


@pytest.mark.parametrize("vocab", VOCABS[:2])
@pytest.mark.parametrize("pa", [0.2, 0.5, 0.7])
def test_naive_conditioning_is_biased_where_the_last_token_could_grow(vocab, pa):
    t, nt = _iid(tuple(vocab), pa)             # after "a" the last token could still become "ab"/"aa"/...: naive is wrong
    nv = normalise(naive_next_byte_probs(nt, t, t.encode("a")))
    assert kl([pa, 1 - pa], nv[[97, 98]]) > 1.0


def test_bad_input():
    with pytest.raises(TokenlabError, match="single symbols"): MPETokenizer(["ab", "b"])
    with pytest.raises(TokenlabError, match="distinct"): MPETokenizer(["a", "a"])
    with pytest.raises(TokenlabError, match="alphabet"): MPETokenizer(["a", "b"]).encode("abc")
    with pytest.raises(TokenlabError, match="no probability mass"): normalise(np.zeros(256))
    with pytest.raises(TokenlabError, match="empty"): safe_boundary(load_tokenizer("gpt2"), "")


def test_safe_boundary_on_gpt2():
    g = load_tokenizer("gpt2")
    ids, rest = safe_boundary(g, "Hello there, my frie")
    assert g.decode(ids) == "Hello there, my" and rest == b" frie"


def test_pruning_everything_falls_back_to_the_exact_sum():
    t, nt = _iid(tuple(VOCABS[0]), 0.7)
    exact = next_byte_probs(nt, t, [], b"ab", mpe_valid(t))
    pruned = next_byte_probs(nt, t, [], b"ab", mpe_valid(t), min_prob=0.999)     # no token is that likely
    assert exact.sum() > 0 and np.allclose(pruned, exact)
