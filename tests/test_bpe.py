"""Research BPE: same merges as HF's trainer, round trips, Scaffold-BPE, export to tokenizer.json."""
from __future__ import annotations
import functools
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck
from tokenlab.lab.core import TokenlabError
from tokenlab.lab.corpora import english_corpus
from tokenlab.tokenizers.train import train_tokenizer, save_tokenizer
from tokenlab.tokenizers.bpe import VARIANTS, train_bpe, load_bpe, ResearchBPE, read_hf_bpe


def _hf_merges(tok) -> list[tuple[bytes, bytes]]:
    return read_hf_bpe(tok.to_hf())[1]


def _ours(bpe: ResearchBPE) -> list[tuple[bytes, bytes]]:
    return [(bpe.vocab[a], bpe.vocab[b]) for a, b in bpe.merges]


@functools.cache
def _english(n=300_000):
    return english_corpus(limit_bytes=n).split("\n")


def test_same_merges_and_ids_as_hf_trainer_on_english():
    hf = train_tokenizer(_english(), "bpe", 1500)
    ours = train_bpe(_english(), 1500, progress=False)
    assert _ours(ours) == _hf_merges(hf) and len(ours.merges) == 1500 - 256
    held = english_corpus(limit_bytes=340_000)[300_000:]
    assert ours.encode(held) == hf.encode(held)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text("abc d\nxé", min_size=1, max_size=30), min_size=1, max_size=12), st.integers(257, 300))
def test_same_merges_as_hf_on_random_small_corpora(texts, vocab_size):
    "Ties everywhere in tiny corpora: the tie rule (max count, then smallest (left id, right id)) must match HF's."
    if not any(t.strip() for t in texts): return
    assert _ours(train_bpe(texts, vocab_size, progress=False)) == _hf_merges(train_tokenizer(texts, "bpe", vocab_size))


@functools.cache
def _trained(variant):
    return train_bpe(_english(100_000), 700, variant=variant, progress=False)


@pytest.mark.parametrize("name", VARIANTS.names())
def test_registered_variant(name):
    "Each registered variant trains on a small corpus, reaches its vocabulary budget and encodes / decodes losslessly."
    bpe = _trained(name)
    assert bpe.variant == name and len(bpe.final_vocab) == 700 and bpe.name == f"research-{name}-700"
    held = english_corpus(limit_bytes=120_000)[100_000:] + " ünïcode 漢字 🙂\n\t x"
    assert bpe.decode(bpe.encode(held)) == held and not set(bpe.encode(held)) & bpe.scaffold
    e = VARIANTS.entry(name)
    assert e.doc and e.paper and VARIANTS[name] is e.obj

    @settings(max_examples=100, deadline=None)
    @given(st.text(max_size=80))
    def round_trip_of_arbitrary_unicode(s):
        ids = bpe.encode(s)
        assert b"".join(bpe.token_bytes(i) for i in ids) == s.encode("utf-8", errors="surrogatepass")
        assert not set(ids) & bpe.scaffold
    round_trip_of_arbitrary_unicode()


def test_scaffold_budget_and_decomposition():
    sc, plain = _trained("scaffold"), _trained("bpe")
    assert sc.scaffold and sc.vocab_size - len(sc.scaffold) == 700 == plain.vocab_size
    for t in sc.scaffold:                                   # every scaffold token splits into its merge components
        a, b = sc.parts[t]
        assert sc.vocab[a] + sc.vocab[b] == sc.vocab[t]


def test_export_plain_bpe_loads_in_transformers_with_the_same_ids(tmp_path):
    from transformers import AutoTokenizer
    bpe = _trained("bpe")
    hf = AutoTokenizer.from_pretrained(bpe.save(tmp_path / "bpe"))
    text = english_corpus(limit_bytes=120_000)[100_000:] + " ünïcode 漢字 🙂"
    assert hf(text, add_special_tokens=False)["input_ids"] == bpe.encode(text)
    assert load_bpe(tmp_path / "bpe").encode(text) == bpe.encode(text)


def test_export_scaffold_differs_only_where_hf_keeps_scaffold_tokens(tmp_path):
    "Plain HF BPE cannot split scaffold tokens: its ids, with scaffold tokens split afterwards, equal ours."
    from tokenizers import Tokenizer
    sc = _trained("scaffold")
    sc.save(tmp_path / "sc")
    hf = Tokenizer.from_file(str(tmp_path / "sc" / "tokenizer.json"))
    text = english_corpus(limit_bytes=160_000)[100_000:]
    raw = hf.encode(text, add_special_tokens=False).ids
    assert [x for t in raw for x in sc.split_scaffold(t)] == sc.encode(text) == load_bpe(tmp_path / "sc").encode(text)
    share = sum(t in sc.scaffold for t in raw) / len(raw)
    assert 0 < share < 0.2, share                            # HF alone emits some scaffold tokens: measured, not hidden


def test_errors():
    with pytest.raises(TokenlabError, match="empty corpus"): train_bpe(["  ", ""], 300)
    with pytest.raises(TokenlabError, match="no bpe.json"): load_bpe("/nonexistent")
    with pytest.raises(TokenlabError, match=r"^unknown BPE variant 'dropout'; valid BPE variants: bpe, scaffold$"):
        train_bpe(["ab ab"], 300, variant="dropout")


# ---- special tokens: encode and the exported tokenizer.json agree (HF's default: specials in text are matched) --------

SPECIALS = ["<|endoftext|>", "<|end|>", "<s p>", "é!", "<pad>"]         # overlapping ("<|end" ...), with a space, non-ASCII


@functools.cache
def _with_specials():
    texts = _english(60_000) + ["<|endoftext|> x <|end|>y <pad>"] * 3
    return train_bpe(texts, 600, special_tokens=SPECIALS, progress=False)


@functools.cache
def _exported(tmp):
    from transformers import AutoTokenizer
    from tokenizers import Tokenizer
    folder = _with_specials().save(tmp)
    return Tokenizer.from_file(str(folder / "tokenizer.json")), AutoTokenizer.from_pretrained(folder)


_piece = st.sampled_from(SPECIALS + ["<|", "|>", "end", "endoftext", "<s", " p>", "<", ">", "|", "é", "!", " ", "\n", "a", "the", "ab", "1"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_piece, max_size=25).map("".join))
def test_encode_and_export_agree_on_special_tokens(tmp_path_factory, text):
    hf, fast = _exported(tmp_path_factory.getbasetemp() / "bpe-specials")
    ours = _with_specials().encode(text)
    assert ours == hf.encode(text, add_special_tokens=False).ids == fast(text, add_special_tokens=False)["input_ids"]
    assert _with_specials().decode(ours) == text


def test_special_tokens_are_their_ids():
    bpe = _with_specials()
    ids = {t: bpe.ids[t.encode()] for t in SPECIALS}
    assert list(ids.values()) == list(range(len(SPECIALS)))                      # specials first, in order
    assert bpe.encode("a<|endoftext|>b") == bpe.encode("a") + [ids["<|endoftext|>"]] + bpe.encode("b")
    assert bpe.encode("<|end|><|endoftext|>") == [ids["<|end|>"], ids["<|endoftext|>"]]
    assert bpe.encode("x <s p>") == bpe.encode("x ") + [ids["<s p>"]]
    assert ids["<|endoftext|>"] not in bpe.encode("<|endoftext|")                  # incomplete: text
    with pytest.raises(TokenlabError, match="special tokens not in the vocabulary"):
        ResearchBPE(bpe.vocab[len(SPECIALS):], [], special_tokens=["<nope>"])
