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
