"""LLM-Microscope deletion test: token classes and NLL of fixed targets after deleting context tokens."""
from __future__ import annotations
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from tokenlab.lab.core import TokenlabError
from tokenlab.attention.deletion import STOPWORDS, deletion_nll, token_classes
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
