"""LLM-Microscope deletion test: token classes and NLL of fixed targets after deleting context tokens."""
from __future__ import annotations
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from tokenlab.lab.core import TokenlabError
from tokenlab.attention.deletion import STOPWORDS, context_deletions, deletion_nll, deletion_nll_batch, token_classes
from tokenlab.models.trainer import sequence_nll, tiny_llama

torch.set_num_threads(1)
MODEL = tiny_llama(30, d_model=32, n_layers=2, seed=1)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 29), min_size=4, max_size=20), st.data())
def test_deletion_equals_a_forward_on_the_shortened_ids(ids, data):
    T = len(ids)
    keep = np.array(data.draw(st.lists(st.booleans(), min_size=T, max_size=T)))
    keep[0] = True
    kept = np.flatnonzero(keep)
    if len(kept) < 2: return
    targets = np.zeros(T, dtype=bool); targets[kept[1:]] = True
    got = deletion_nll(MODEL, ids, keep, targets)
    want = sequence_nll(MODEL, torch.tensor(ids)[torch.tensor(keep)][None])[0]
    assert torch.allclose(got, want, atol=1e-6)


def test_context_matters_for_a_trained_pattern():
    # deleting nothing vs deleting every context token: NLL of the same targets differs (the model sees its input)
    ids = torch.arange(16) % 30
    t = torch.zeros(16, dtype=torch.bool); t[-1] = True
    a = deletion_nll(MODEL, ids, torch.ones(16, dtype=torch.bool), t)
    keep = torch.zeros(16, dtype=torch.bool); keep[[0, 15]] = True
    b = deletion_nll(MODEL, ids, keep, t)
    assert not torch.allclose(a, b)


def test_classes_and_errors():
    class Tok:
        def decode(self, ids): return {0: " the", 1: ",", 2: " whale", 3: "\n", 4: " Of", 5: "$"}[ids[0]]
    assert token_classes(Tok(), [0, 1, 2, 3, 4, 5]).tolist() == ["stop", "punct", "content", "punct", "stop", "punct"]
    assert "the" in STOPWORDS and "whale" not in STOPWORDS
    with pytest.raises(TokenlabError, match="no token ids"): token_classes(Tok(), [])
    with pytest.raises(TokenlabError, match="differ in length"): deletion_nll(MODEL, [1, 2, 3], [True, True], [False, True, True])


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 29), min_size=3, max_size=18), st.integers(0, 2**31)), min_size=1, max_size=5),
       st.integers(1, 4))
def test_batched_deletion_equals_one_at_a_time(cases, batch_size):
    items = []
    for ids, s in cases:
        r = np.random.default_rng(s); T = len(ids)
        keep = r.random(T) < 0.7; keep[0] = True
        kept = np.flatnonzero(keep)
        if len(kept) < 2: keep[1] = True; kept = np.flatnonzero(keep)
        targets = np.zeros(T, dtype=bool); targets[r.choice(kept[1:], max(1, len(kept) // 2), replace=False)] = True
        items.append((ids, keep, targets))
    for got, it in zip(deletion_nll_batch(MODEL, items, batch_size), items):
        assert torch.allclose(got, deletion_nll(MODEL, *it), atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["punct", "stop", "content"]), min_size=8, max_size=60), st.integers(0, 2**31),
       st.lists(st.sampled_from([0.1, 0.25, 0.5, 1.0]), min_size=1, max_size=3, unique=True))
def test_context_deletions_invariants(cls, s, fracs):
    cls = np.array(["start"] + cls); T = len(cls)
    plan = context_deletions(cls, fracs, np.random.default_rng(s), suffix=0.25)
    cut = T - max(1, round(0.25 * T))
    if plan is None:
        assert not (cls[cut:] == "content").any() or not (cls[1:cut] == "punct").any() or not (cls[1:cut] == "stop").any()
        return
    targets, drops = plan
    assert (np.flatnonzero(targets) >= cut).all() and (cls[targets] == "content").all()
    for kind in ("punct", "stop"):
        n = int((cls[1:cut] == kind).sum())
        for f in fracs:
            d, r = drops[(kind, f)], drops[("random", kind, f)]
            assert len(d) == len(r) == max(1, round(f * n))           # equal counts, a share of the class
            assert (cls[d] == kind).all() and len(set(d)) == len(d)
            assert ((d >= 1) & (d < cut)).all() and ((r >= 1) & (r < cut)).all()   # context only: targets never deleted
        big = drops[(kind, max(fracs))]
        assert all(set(drops[(kind, f)]) <= set(big) for f in fracs)   # nested over the fractions
