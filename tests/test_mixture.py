"""Data mixture inference: merge lists from ranks, replay, and recovery of a known mixture."""
from __future__ import annotations
import pytest
from tokenlab.lab.core import TokenlabError
from tokenlab.tokenizers.mixture import (default_categories, split_category, mixture_corpus, infer_mixture,
                                         merge_list, merges_from_ranks)
from tokenlab.tokenizers.train import train_tokenizer
from tokenlab.tokenizers.registry import load_tokenizer


def test_merges_rebuilt_from_ranks_match_gpt2s_merges_txt():
    "GPT-2's original merges.txt starts 'Ġ t', 'Ġ a', 'h e', 'i n', 'r e', 'o n', 'Ġt he', 'e r', 'Ġ s', 'a t'."
    first = merge_list("gpt2", 10)
    assert first == [(b" ", b"t"), (b" ", b"a"), (b"h", b"e"), (b"i", b"n"), (b"r", b"e"), (b"o", b"n"),
                     (b" t", b"he"), (b"e", b"r"), (b" ", b"s"), (b"a", b"t")]
    assert merge_list("gpt2", 5, start=5) == first[5:]


def test_known_mixture_is_recovered():
    cats = {k: v for k, v in default_categories(300_000).items() if k.startswith(("english", "python", "udhr-cyrillic"))}
    sp = {k: split_category(v) for k, v in cats.items()}
    w = dict(zip(cats, [0.6, 0.3, 0.1]))
    tok = train_tokenizer(mixture_corpus({k: p for k, (p, _) in sp.items()}, w, 150_000), "bpe", 256 + 300)
    est, info = infer_mixture(tok, {k: s for k, (_, s) in sp.items()}, n_merges=300)
    assert abs(est.sum() - 1) < 1e-6 and (est >= -1e-9).all()
    assert max(abs(est[k] - w[k]) for k in w) < 0.12, (est, info)


def test_errors():
    with pytest.raises(TokenlabError, match="not a byte-level BPE"): merge_list("mistral-v1")
    with pytest.raises(TokenlabError, match="at least one category"): infer_mixture("gpt2", {})
    with pytest.raises(TokenlabError, match="empty"): infer_mixture("gpt2", {"a": " \n"}, n_merges=5)
    with pytest.raises(TokenlabError, match="too short"): split_category("x")
    with pytest.raises(TokenlabError, match="asks for"): mixture_corpus({"a": "x" * 10}, {"a": 1.0}, 100)


def test_lazy_constraints_reach_the_all_at_once_optimum():
    import numpy as np
    from tokenlab.tokenizers.mixture import solve_mixture
    rng = np.random.default_rng(3)
    mc = rng.random((4, 60))
    tops = [[{(b"q", bytes([j])): float(rng.random() * 1.2) for j in range(15)} for _ in range(60)] for _ in range(4)]
    a1, i1 = solve_mixture(mc, tops, k0=1, k_add=3)
    a2, i2 = solve_mixture(mc, tops, k0=10**9)
    assert i1["status"] == i2["status"] == "optimal" and i1["rounds"] > 1 and i1["constraints"] < i2["constraints"]
    assert abs(i1["objective"] - i2["objective"]) < 1e-9 and abs(a1.sum() - 1) < 1e-9


def test_infer_mixtures_matches_infer_mixture_per_merge_count():
    from tokenlab.tokenizers.mixture import infer_mixtures
    cats = {k: v for k, v in default_categories(100_000).items() if k.startswith(("english", "python"))}
    sp = {k: split_category(v) for k, v in cats.items()}
    tok = train_tokenizer(mixture_corpus({k: p for k, (p, _) in sp.items()}, dict(zip(cats, [0.7, 0.3])), 60_000), "bpe", 256 + 120)
    samples = {k: s for k, (_, s) in sp.items()}
    many = infer_mixtures(tok, samples, [40, 120])
    for (est, info), m in zip(many, [40, 120]):
        one, _ = infer_mixture(tok, samples, n_merges=m)
        assert info["merges"] == m and info["status"] == "optimal" and (abs(est - one) < 1e-9).all()


def test_fine_categories_and_coarse_shares():
    import pandas as pd
    from tokenlab.tokenizers.mixture import fine_categories, coarse_shares
    fc = fine_categories(30_000)
    assert "english" in fc and "udhr-latin" in fc and any(k.startswith("code-python") for k in fc)
    assert all(5_000 <= len(v) <= 30_000 for v in fc.values())
    cs = coarse_shares(pd.Series({"english": 0.3, "udhr-han": 0.1, "code-c": 0.6}))
    assert abs(cs["code"] - 0.6) < 1e-12 and abs(cs["non_english_of_language"] - 0.25) < 1e-12
