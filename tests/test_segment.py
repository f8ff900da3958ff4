"""Inference methods over real and toy BPE vocabularies: identity with encode, round trips, optimality."""
from __future__ import annotations
import functools, itertools
import pytest
import regex
from hypothesis import given, settings, strategies as st, HealthCheck
from tokenlab.lab.core import TokenlabError
from tokenlab.lab.corpora import udhr_articles, english_corpus
from tokenlab.tokenizers.registry import load_tokenizer
from tokenlab.tokenizers.segment import BPEVocab, Segmenter, METHODS, bpe_vocab, segmenters

REAL = ["gpt2", "cl100k_base", "o200k_base", "llama3"]


@functools.cache
def _seg(name):
    return load_tokenizer(name), segmenters(name)


@pytest.mark.parametrize("name", REAL)
def test_merge_order_reproduces_the_tokenizers_own_ids(name):
    tok, seg = _seg(name)
    texts = [english_corpus(limit_bytes=20_000)] + [udhr_articles(c)[1] for c in ("fra", "rus", "arb", "hin", "cmn_hans", "jpn", "tha", "amh")]
    for t in texts: assert seg["merge"].encode(t) == tok.encode(t)


@pytest.mark.parametrize("name", REAL)
def test_shortest_path_is_never_longer_and_every_method_round_trips_on_udhr(name):
    _, seg = _seg(name)
    for c in ("eng", "deu_1996", "ell_monotonic", "kor", "mya"):
        t = " ".join(udhr_articles(c).values())
        n = {m: len(s.encode(t)) for m, s in seg.items()}
        assert n["shortest_path"] <= n["merge"] and n["shortest_path"] <= n["longest_prefix"], (c, n)
        for s in seg.values(): assert s.decode(s.encode(t)) == t


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["gpt2", "llama3"]), st.sampled_from(list(METHODS)), st.text(max_size=60))
def test_every_method_decodes_back_to_arbitrary_unicode(name, method, s):
    _, seg = _seg(name)
    ids = seg[method].encode(s)
    assert seg[method].decode_bytes(ids) == s.encode("utf-8", errors="surrogatepass")


def _toy(extra):
    ids = {bytes([i]): i for i in range(256)} | {t: 256 + k for k, t in enumerate(extra)}
    ranks = {}
    for k, t in enumerate(extra):                         # a merge per extra token: its first split into known parts
        for cut in range(1, len(t)):
            if t[:cut] in ids and t[cut:] in ids: ranks.setdefault((t[:cut], t[cut:]), k); break
    return BPEVocab("toy", ids, lambda a, b: ranks.get((a, b)), lambda t: [t.encode()], ignore_merges=False)


TOY_TEXT = st.text("abé ", min_size=0, max_size=12)
TOY_EXTRA = st.lists(st.text("abé", min_size=2, max_size=4).map(str.encode), min_size=0, max_size=8, unique=True)


@pytest.mark.parametrize("name", METHODS.names())
@settings(max_examples=80, deadline=None)
@given(extra=TOY_EXTRA, s=TOY_TEXT)
def test_registered_inference_method(name, extra, s):
    "Each registered method: a valid segmentation (its bytes are the input, every id in the vocabulary), never shorter than shortest path."
    v = _toy(extra)
    ids = Segmenter(v, name).encode(s)
    assert all(i in v.bytes_of for i in ids) and b"".join(v.bytes_of[i] for i in ids) == s.encode()
    assert len(Segmenter(v, "shortest_path").encode(s)) <= len(ids)
    e = METHODS.entry(name)
    assert e.doc and e.paper and METHODS[name] is e.obj


def _min_tokens(v, s: bytes) -> int:
    "Brute force: fewest vocabulary pieces covering s."
    best = len(s)
    for r in range(1, len(s)):
        for cuts in itertools.combinations(range(1, len(s)), r - 1):
            b = (0, *cuts, len(s))
            if all(s[i:j] in v.ids for i, j in zip(b, b[1:])): best = min(best, r)
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text("abc", min_size=2, max_size=4), min_size=1, max_size=8, unique=True), st.text("abc", min_size=1, max_size=8))
def test_shortest_path_is_optimal_and_longest_prefix_is_greedy(extra, s):
    v = _toy([e.encode() for e in extra])
    b = s.encode()
    sp = Segmenter(v, "shortest_path").encode(s)
    assert len(sp) == _min_tokens(v, b)
    lp = [v.bytes_of[i] for i in Segmenter(v, "longest_prefix").encode(s)]
    assert b"".join(lp) == b
    pos = 0
    for piece in lp:                                      # no longer vocabulary entry starts where this one starts
        assert not any(b[pos:j] in v.ids for j in range(pos + len(piece) + 1, len(b) + 1))
        pos += len(piece)


def test_errors_are_one_line():
    with pytest.raises(TokenlabError, match=r"^unknown inference method 'viterbi'; valid inference methods: longest_prefix, merge, shortest_path$"):
        segmenters("gpt2", ["viterbi"])
    with pytest.raises(TokenlabError, match="not a byte-level BPE"): bpe_vocab("mistral-v1")
    with pytest.raises(TokenlabError, match="not a byte-level BPE"): bpe_vocab("gguf:bert-bge")
    _, seg = _seg("gpt2")
    with pytest.raises(TokenlabError, match="can only segment str"): seg["merge"].encode(b"x")
    with pytest.raises(TokenlabError, match="not in vocabulary"): seg["merge"].decode([10**9])
