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


@pytest.mark.parametrize("kind", KINDS)
def test_training_is_deterministic(kind):
    "The same corpus gives the same tokenizer.json in every run (HF's own WordPiece/Unigram trainers do not: tokenizers#1794)."
    a, b = (train_tokenizer(MIX, kind, 800).to_hf().to_str() for _ in range(2))
    assert a == b


def test_unigram_gives_sentencepieces_ids():
    "The Unigram tokenizer is SentencePiece's model in tokenizers: same ids as SentencePiece itself, lossless decoding."
    import sentencepiece as spm
    from tokenlab.tokenizers.train import sentencepiece_unigram
    tok, raw = sentencepiece_unigram(MIX, 1500)
    sp = spm.SentencePieceProcessor(model_proto=raw)
    for text in MIX[:40] + ["  two  spaces\tand\ttabs\n", " leading", "漢字 ü ½ 🙂"]:
        assert tok.encode(text).ids == sp.encode(text)
        assert tok.decode(tok.encode(text).ids) == text


def test_wordpiece_follows_the_bpe_with_prefix_rule():
    "Merging a and ##b gives ab, ##a and ##b gives ##ab; most frequent pair first, ties to the smaller ids; no [UNK] on training text."
    from tokenlab.tokenizers.train import wordpiece_vocab
    v = wordpiece_vocab({"aab": 10, "ab": 3}, 10, ["[UNK]"])
    # pairs (a, ##a) and (##a, ##b) both occur 10 times: the tie goes to the smaller ids, (##a=1, ##b=2) -> "##ab";
    # then (a, ##ab) -> "aab" (the right part loses its prefix), then (a, ##b) -> "ab"
    assert v == ["[UNK]", "##a", "##b", "a", "##ab", "aab", "ab"]
    tok = train_tokenizer(MIX, "wordpiece", 1500)
    assert tok.unk_id not in tok.encode(MIX[0])


def test_hf_trainers_remain_available():
    tok = train_tokenizer(MIX, "unigram", 800, deterministic=False)
    assert type(tok.to_hf().model).__name__ == "Unigram" and tok.decode(tok.encode("Everyone")) == "Everyone"
