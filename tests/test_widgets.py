"""The explorers' state logic without a browser: tokens, attention windows, heatmaps, bad input as messages."""
from __future__ import annotations
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from tokenlab.lab.core import TokenlabError
from tokenlab.widgets.base import Explorer, heat_rgb, heat_png, error_text, styled
from tokenlab.widgets.tokens import TokenState, TokenInspector, load_named, pieces, piece_label, parallel_english
from tokenlab.widgets.attention import attention_rows, AttentionRecord, AttentionExplorer

BYTE_LEVEL = ["gpt2", "o200k_base", "smollm2"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(min_size=1, max_size=60), st.sampled_from(BYTE_LEVEL))
def test_pieces_are_the_text_bytes(text, name):
    "Byte-level tokenizers: the pieces' bytes spell the text, less the bytes the vocabulary lacks (counted as dropped)."
    tok = load_named(name)
    ps = pieces(tok, text)
    want = bytes(b for b in text.encode("utf-8") if b not in getattr(tok, "missing_bytes", ()))
    assert b"".join(b for _, b, _ in ps) == want
    if text.strip():                                    # whitespace-only text is refused as empty (tested below)
        assert TokenState([name]).encode(text)[0]["dropped_bytes"] == len(text.encode("utf-8")) - len(want)
    assert all(label for _, _, label in ps)


@given(st.binary(min_size=1, max_size=8))
def test_piece_label_total(b):
    "Any bytes get a label: the text with visible whitespace, or hex bytes when not UTF-8."
    label = piece_label(b)
    try: b.decode("utf-8")
    except UnicodeDecodeError: assert label.startswith("⟨") and label.endswith("⟩")
    else: assert "\n" not in label and " " not in label


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 24), st.integers(1, 8), st.sampled_from([None, 3, 8]), st.sampled_from([None, 5.0]), st.integers(0, 2**31 - 1))
def test_attention_rows_are_causal_distributions(n, d, window, softcap, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    rows = list(range(n))
    A = attention_rows(q, k, rows, None, softcap, window)
    torch.testing.assert_close(A.sum(-1), torch.ones(n))
    assert (A.triu(1) == 0).all()                              # no query sees the future
    if window: assert (A.tril(-window) == 0).all()             # nor keys outside its window
    s = (q @ k.T) / d ** 0.5                                   # the same as a masked softmax by hand
    if softcap: s = torch.tanh(s / softcap) * softcap
    i, j = torch.arange(n)[:, None], torch.arange(n)[None]
    ok = (j <= i) & ((j > i - window) if window else True)
    torch.testing.assert_close(A, torch.softmax(s.masked_fill(~ok, float("-inf")), -1))


@given(st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=3, max_size=3), min_size=1, max_size=4))
def test_heatmaps_never_fail_on_finite_or_not(m):
    rgb = heat_rgb(np.array(m))
    assert rgb.shape == (len(m), 3, 3) and rgb.dtype == np.uint8
    assert heat_png(np.array(m), cell=2)[:8] == b"\x89PNG\r\n\x1a\n"


@given(st.sampled_from([TokenlabError("bad"), ValueError("v"), KeyError("k"), ZeroDivisionError(), RuntimeError("a\nb"), Exception()]))
def test_guarded_never_raises(exc):
    e = Explorer()
    def boom(): raise exc
    assert e.guarded(boom) is False
    assert e.last_error == error_text(exc) and "tl-error" in e.message.value
    assert e.guarded(lambda: None) is True and e.message.value == ""


def test_token_inspector_bad_input_is_a_message():
    ti = TokenInspector(tokenizers=["gpt2"])
    good = ti.view.value
    for bad, msg in [("", "empty text"), ("   \n", "empty text"), ("x" * 300_000, "longer than this inspector's limit")]:
        ti.text.value = bad
        assert msg in ti.last_error and ti.view.value == good
    ti.text.value = "fine"; assert ti.message.value == ""
    ti.tokenizers.value = ()
    assert "at least one" in ti.message.value
    with pytest.raises(TokenlabError, match="unknown tokenizer"): TokenState(["gpt2", "nope"])
    # an explorer asked for an unknown tokenizer says so in the widget and shows the known ones (or the defaults)
    ti2 = TokenInspector(tokenizers=["nope", "gpt2"])
    assert "unknown tokenizer 'nope'" in ti2.last_error and "tl-error" in ti2.message.value and ti2.state.names == ["gpt2"] and "tl-token" in ti2.view.value


def test_premium_is_tokens_over_english_tokens():
    from tokenlab.lab.corpora import udhr_articles
    st_ = TokenState(["gpt2", "o200k_base"])
    rows = st_.encode(udhr_articles("rus")[3])
    for r in rows:
        eng = len(load_named(r["tokenizer"]).encode(udhr_articles("eng")[3]))
        assert r["english"] == eng and r["premium"] == pytest.approx(r["tokens"] / eng)
    assert parallel_english(udhr_articles("eng")[3]) is None           # English is not its own parallel


class _Tok:
    def __init__(self, V): self.V = V
    def __call__(self, text, add_special_tokens=True, return_tensors="pt"):
        return {"input_ids": torch.tensor([[1] + [3 + (sum(map(ord, w)) % (self.V - 3)) for w in text.split()]])}
    def convert_ids_to_tokens(self, ids): return [f"t{i}" for i in ids]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
def test_attention_explorer_on_other_architectures(arch):
    "Controls redraw from one record; the model's context and the explorer's limit are messages."
    from tokenlab.models.tiny import tiny_model
    from tokenlab.models.hooks import observers
    m = tiny_model(arch, seed=1)
    ctx = m.config.max_position_embeddings
    ex = AttentionExplorer(m, _Tok(m.config.vocab_size), text=" ".join(["a", "b"] * 12), layer=0, head=0, window=6, max_tokens=None)
    assert ex.message.value == "" and ex.state.n_runs == 1
    for w, v in [(ex.layer, ex.layer.max), (ex.head, ex.head.max), (ex.start, ex.start.max)]:
        w.value = v
        assert ex.message.value == "" and ex.state.n_runs == 1
    assert f"layer {ex.layer.max}, head {ex.head.max}" in ex.status.value
    ex.text.value = "w " * (ctx + 5)
    assert "longer than the model's context" in ex.last_error
    assert observers(m) == []
    A, rows, cols = ex.rec.window(0, 0, 3, 4)
    assert A.shape == (4, 5) and cols[0] == 0


def test_attention_record_entropy_bounds():
    from tokenlab.models.tiny import tiny_model
    m = tiny_model("llama", seed=2)
    r = AttentionRecord.run(m, _Tok(m.config.vocab_size), "x y z " * 10, max_tokens=None)
    n = r.n
    assert (r.entropy >= 0).all() and (r.entropy <= np.log(n) + 1e-5).all()
    assert (r.first > 0).all() and (r.first <= 1 + 1e-6).all()
    assert r.received.shape == (r.n_layers, r.n_heads, n)
