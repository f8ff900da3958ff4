"""Under-trained tokens: tokenizer categories, the reference set, weight indicators, verification on SmolLM2."""
from __future__ import annotations
import functools
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st
from tokenlab.lab.core import TokenlabError
from tokenlab.tokenizers.backends import HFTokenizer
from tokenlab.tokenizers.registry import load_tokenizer
from tokenlab.tokenizers.undertrained import (CATEGORIES, auc, candidates, reference_ids, tokenizer_indicators,
                                              verify_tokens, weight_indicators)
from tokenlab.models.trainer import tiny_llama


def test_bytes_tokenizer_categories():
    d = tokenizer_indicators(load_tokenizer("utf8-bytes"))
    assert set(d.category) <= set(CATEGORIES)
    assert (d.category[d.id >= 0x80] == "byte").all() and (d.category[d.id < 0x80] == "normal").all()


def test_tiktoken_specials_and_holes():
    d = tokenizer_indicators(load_tokenizer("cl100k_base")).set_index("id")
    assert d.category[100257] == "special" and d.token[100257] == "<|endoftext|>"
    assert d.category[100256] == "no_token"                  # a hole in cl100k's id range


@functools.cache
def _smol():
    from transformers import AutoModelForCausalLM
    from tokenlab.lab.assets import smollm2_path
    tok = HFTokenizer.from_file("smollm2", smollm2_path() / "tokenizer.json")
    return tok, AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=torch.float32).eval(), tokenizer_indicators(tok)


def test_smollm2_reference_and_a_known_magikarp():
    tok, model, ind = _smol()
    ref, why = reference_ids(ind, model)
    assert set(range(7, 17)) <= set(ref) and not {0, 1, 2} & set(ref), ref    # chat tokens are trained
    assert "special tokens" in why
    w = weight_indicators(model, ref).set_index("id")
    bad, good = tok.encode(" InstancePreprocess"), tok.encode(" the")
    assert len(bad) == 1 and len(good) == 1
    assert w.cos_ref[bad[0]] > 0.99 > 0.5 > w.cos_ref[good[0]]
    v = verify_tokens(model, tok, [bad[0], good[0]], progress=False).set_index("id")
    assert v.undertrained[bad[0]] and v.p_max[bad[0]] < 1e-3
    assert not v.undertrained[good[0]] and v.p_max[good[0]] > 0.05
    c = candidates(ind, w.reset_index(), 0.001)
    assert bad[0] in set(c.id) and (c.category == "normal").all() and len(c) == round(0.001 * (ind.category == "normal").sum())


def test_bad_input_is_one_clear_error():
    m = tiny_llama(50, d_model=16, seed=0)
    with pytest.raises(TokenlabError, match="out of range"): weight_indicators(m, [0, 50])
    with pytest.raises(TokenlabError, match="empty"): weight_indicators(m, [])
    with pytest.raises(TokenlabError, match="out of range"): verify_tokens(m, load_tokenizer("utf8-bytes"), [60], progress=False)
    with pytest.raises(TokenlabError, match="no reference"):
        reference_ids(pd.DataFrame({"id": range(50), "category": ["normal"] * 50}), m)
    with pytest.raises(TokenlabError, match="share"): candidates(pd.DataFrame({"id": [0], "category": ["normal"]}),
                                                                 weight_indicators(m, [1]), 0.0)
    with pytest.raises(TokenlabError, match="both"): auc([1, 2], [1, 1])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.booleans()), min_size=2, max_size=60).filter(
    lambda xs: 0 < sum(b for _, b in xs) < len(xs)))
def test_auc_is_a_probability_and_flips_with_the_sign(xs):
    s, y = np.array([a for a, _ in xs]), np.array([b for _, b in xs])
    a = auc(s, y)
    assert 0 <= a <= 1 and abs(a + auc(-s, y) - 1) < 1e-9
    pos, neg = s[y], s[~y]                                  # the definition, by brute force
    assert abs(a - np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])) < 1e-9
