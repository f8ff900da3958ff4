"""HF trainers: every kind trains on English and a UDHR mixture, saves for transformers, same ids after loading."""
from __future__ import annotations
import functools
import pytest
from hypothesis import given, settings, strategies as st
from tokenlab.lab.core import TokenlabError
from tokenlab.lab.corpora import english_corpus, udhr_articles
from tokenlab.tokenizers.registry import load_tokenizer
from tokenlab.tokenizers.train import train_tokenizer, save_tokenizer, KINDS

MIX = [t for c in ("eng", "fra", "rus", "arb", "hin", "cmn_hans") for t in udhr_articles(c).values()]


@pytest.mark.parametrize("kind", KINDS)
def test_kind_trains_saves_and_loads_in_transformers(kind, tmp_path):
    from transformers import AutoTokenizer
    tok = train_tokenizer(MIX + english_corpus(limit_bytes=100_000).split("\n"), kind, 2000)
    assert 1000 < tok.vocab_size <= 2000
    hf = AutoTokenizer.from_pretrained(save_tokenizer(tok, tmp_path / kind))
    back = load_tokenizer(str(tmp_path / kind))
    for text in ["Everyone has the right to life, liberty.", udhr_articles("rus")[3], udhr_articles("cmn_hans")[1]]:
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text) == back.encode(text)


@functools.cache
def _bpe():
    return train_tokenizer(MIX, "bpe", 600)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=80))
def test_byte_level_bpe_round_trips_arbitrary_unicode(s):
    assert _bpe().decode(_bpe().encode(s)) == s.encode("utf-8", errors="replace").decode("utf-8")


def test_errors():
    with pytest.raises(TokenlabError, match="empty corpus"): train_tokenizer([" \n", ""], "bpe", 500)
    with pytest.raises(TokenlabError, match="valid tokenizer kinds"): train_tokenizer(MIX, "spm", 500)
    with pytest.raises(TokenlabError, match="too small"): train_tokenizer(MIX, "bpe", 200)


def test_byte_level_bpe_training_is_deterministic():
    "HF's WordPiece/Unigram trainers are not (tokenizers#1794, QUARANTINES.md); byte-level BPE must be."
    a, b = (train_tokenizer(MIX, "bpe", 800).to_hf().to_str() for _ in range(2))
    assert a == b
