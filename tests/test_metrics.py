"""Tokenizer metrics on real tokenizers: invariants (hypothesis), clear errors, and known magnitudes."""
import math
import pytest
from hypothesis import given, settings, strategies as st
from tokenlab.lab.core import TokenlabError
from tokenlab.tokenizers.metrics import tokenizer_metrics, renyi_efficiency, renyi_entropy, words
from tokenlab.tokenizers.registry import load_tokenizer
from tokenlab.lab.corpora import udhr_articles

NAMES = ["gpt2", "mistral-v1", "llama3", "gguf:bert-bge", "utf8-bytes"]
text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=80)

@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40, deadline=None)
@given(s=text)
def test_metrics_are_bounded_or_refused(name, s):
    tok = load_tokenizer(name)
    try:
        m = tokenizer_metrics(tok, s)
    except TokenlabError as e:  # whitespace-only, no words, or nothing left to tokenize: a one-line error, never NaN
        assert "\n" not in str(e)
        # BERT's normaliser drops combining marks, so e.g. "\u1dc0" is a word that gives no tokens (found by hypothesis)
        assert not s.strip() or not words(s) or "produced no tokens" in str(e)
        return
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in m.values())
    assert 0 <= m["renyi_efficiency"] <= m["shannon_efficiency"] + 1e-12 <= 1 + 1e-12
    assert 0 < m["vocab_utilisation"] <= 1 and 0 <= m["unk_rate"] <= 1 and 0 <= m["byte_fallback_rate"] <= 1
    assert m["fertility"] > 0 and m["bytes_per_token"] > 0

@pytest.mark.parametrize("bad", ["", " ", "\n\t  ", [" ", ""]])
def test_empty_or_whitespace_is_a_clear_error(bad):
    with pytest.raises(TokenlabError, match="empty or whitespace-only"):
        tokenizer_metrics(load_tokenizer("gpt2"), bad)

@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=2, max_size=40).filter(lambda c: sum(c) > 0),
       st.floats(1.01, 5))
def test_renyi_entropy_is_non_increasing_in_alpha(counts, alpha):
    assert renyi_entropy(counts, alpha) <= renyi_entropy(counts, 1.0) + 1e-9
    assert renyi_efficiency(counts, max(2, len(counts))) <= 1 + 1e-9

def test_known_magnitudes_on_udhr():
    eng = list(udhr_articles("eng").values())
    gpt2 = tokenizer_metrics(load_tokenizer("gpt2"), eng, reference=load_tokenizer("utf8-bytes"))
    assert 4 < gpt2["bytes_per_token"] < 6 and 1.0 < gpt2["fertility"] < 1.6     # English words are mostly one token
    assert gpt2["nsl"] == pytest.approx(1 / gpt2["bytes_per_token"])
    mya = list(udhr_articles("mya").values())
    assert tokenizer_metrics(load_tokenizer("gpt2"), mya)["bytes_per_token"] < 1.5      # Burmese: byte soup
    mis = tokenizer_metrics(load_tokenizer("mistral-v1"), mya)
    assert mis["byte_fallback_rate"] > 0.3                                               # SentencePiece falls back to bytes
    bert = tokenizer_metrics(load_tokenizer("gguf:bert-bge"), list(udhr_articles("amh").values()))
    assert bert["unk_rate"] > 0.2                                                        # Ge'ez script: [UNK]s


@pytest.mark.parametrize("name", ["gpt2", "mistral-v1"])
@pytest.mark.parametrize("alpha", [1.5, 2.5, 3.0])
def test_renyi_efficiency_agrees_with_the_reference_scorer(name, alpha):
    "Zouhar et al.'s tokenization-scorer on the same ids, with the full vocabulary (its `vocab=`), gives our value."
    import contextlib, io
    from tokenization_scorer.metrics import get_metric
    tok = load_tokenizer(name)
    ids = tok.encode_batch(list(udhr_articles("eng").values()))
    ours = tokenizer_metrics(tok, list(udhr_articles("eng").values()), alpha=alpha)["renyi_efficiency"]
    with contextlib.redirect_stderr(io.StringIO()):
        peer = get_metric("renyi")(([str(i) for i in x] for x in ids), power=alpha, vocab=tok.vocab_size)
    assert ours == pytest.approx(peer, rel=1e-9)


def test_language_metrics_on_udhr_match_the_pooled_and_per_language_counts():
    from tokenlab.tokenizers.metrics import language_metrics
    texts = {c: udhr_articles(c) for c in ("eng", "fra", "cmn_hans")}
    tok = load_tokenizer("gpt2")
    pooled, by = language_metrics(tok, texts, "eng")
    assert by.tokens.tolist() == [sum(tok.count_tokens(list(texts[c].values()))) for c in texts]
    assert pooled["tokens"] == by.tokens.sum() and by.premium.iloc[0] == 1.0
    assert by.set_index("language").premium["cmn_hans"] > by.set_index("language").premium["fra"] > 1


def test_a_text_the_tokenizer_drops_entirely_is_a_clear_error():
    "A combining mark alone is a word, but BERT's normaliser strips it: no tokens, so no metrics (not a division by zero)."
    tok = load_tokenizer("gguf:bert-bge")
    with pytest.raises(TokenlabError, match="produced no tokens"):
        tokenizer_metrics(tok, "\u1dc0")
