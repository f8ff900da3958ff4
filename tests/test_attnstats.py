"""Attention statistics without the N x N tensor: equal to eager output_attentions on every tiny architecture, self-restoring, clear errors."""
from __future__ import annotations
import pytest, torch
from hypothesis import given, settings, strategies as hs
from tokenlab.lab.core import TokenlabError
from tokenlab.models.tiny import TINY_TYPES, tiny_inputs, tiny_model
from tokenlab.models.arch import Adapter
from tokenlab.attention import stats as attnstats
from tokenlab.attention.stats import (attention_stats, chunked_attention_stats, collect_attention_stats,
                                      max_eager_error)
from tokenlab.models.hooks import observed_name, observers, use_attention

torch.set_num_threads(1)


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_matches_eager_output_attentions(model_type):
    m = tiny_model(model_type, seed=2)
    impl = m.config.get_text_config()._attn_implementation
    err = max_eager_error(m, tiny_inputs(m, n_text=12, batch=2, seed=1), token_sets={"some": range(1, 30)})
    assert err < 1e-4, (model_type, err)
    assert m.config.get_text_config()._attn_implementation == impl and not m._forward_pre_hooks and not observers()


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_fused_output_matches_eager(model_type):
    "output='fused': the chunk pass computes the attention output itself; logits and statistics still match eager."
    m = tiny_model(model_type, seed=2)
    inp = tiny_inputs(m, n_text=12, batch=1, seed=1)
    assert max_eager_error(m, inp, token_sets={"some": range(1, 30)}, output="fused") < 1e-4
    with torch.no_grad():
        plain = m(**inp).logits
        with attention_stats(m, output="fused") as st: fused = m(**inp).logits
    assert (fused - plain).abs().max() < 1e-4
    if m.config.get_text_config()._attn_implementation == "sdpa" and model_type in ("llama", "qwen2", "gpt2"):
        assert st.fused_layers, model_type                                  # plain causal text: fused for real


def test_what_subset_and_bad_names():
    m = tiny_model("llama", seed=4)
    ids = [[5, 6, 7, 8, 9]]
    full = collect_attention_stats(m, ids, token_sets={"p": [6]})
    part = collect_attention_stats(m, ids, token_sets={"p": [6]}, what=("entropy", "sets"))
    assert not part.column_mass and not part.first_per_query and sorted(part.entropy) == [0, 1]
    assert torch.allclose(part.entropy[1], full.entropy[1], atol=1e-6) and torch.allclose(part.set_mass["p"][1], full.set_mass["p"][1])
    assert {"entropy", "mass_p"} <= set(part.summary().columns)
    with pytest.raises(TokenlabError, match="unknown statistics"): collect_attention_stats(m, ids, what=("columns",))
    with pytest.raises(TokenlabError, match="output must be"): collect_attention_stats(m, ids, output="flash")
    _clean(m)


def _clean(m, impl="sdpa"):
    assert m.config._attn_implementation == impl and not m._forward_pre_hooks and not observers()


def test_restored_after_exception_inside_context():
    m = tiny_model("llama")
    with pytest.raises(RuntimeError, match="boom"):
        with attention_stats(m, layers=[0]) as st:
            m(torch.tensor([[1, 2, 3]]))
            raise RuntimeError("boom")
    _clean(m)
    with pytest.raises(IndexError):
        with attention_stats(m): m(torch.tensor([[1, 2, 500]]))       # fails inside the forward pass
    _clean(m)
    g = tiny_model("gemma2")                                            # eager architecture (soft-capping)
    with attention_stats(g) as st:
        assert g.config._attn_implementation == observed_name("eager") == "tokenlab_observe_eager"
        g(torch.tensor([[1, 2, 3]]))
    _clean(g, "eager")
    assert sorted(st.column_mass) == [0, 1]


def test_vlm_switches_only_the_language_model():
    m = tiny_model("llava")
    vis = m.config.vision_config._attn_implementation
    with attention_stats(m, layers=[1]):
        assert m.config.text_config._attn_implementation == observed_name("sdpa")
        assert m.config.vision_config._attn_implementation == vis
    assert m.config.text_config._attn_implementation == "sdpa"


@pytest.mark.parametrize("bad, msg", [
    (dict(inputs=torch.zeros(1, 0, dtype=torch.long)), "empty input: the sequence has no tokens"),
    (dict(inputs=""), "empty text"),
    (dict(inputs=torch.ones(1, 257, dtype=torch.long)), "sequence of 257 tokens is longer than the model's context of 256"),
    (dict(layers=[7]), r"layer 7 out of range; llama model has 2 layers \(0..1\)"),
    (dict(layers=[]), "no layers asked"),
    (dict(heads=[4]), r"head 4 out of range; llama model has 4 heads per layer \(0..3\)"),
    (dict(token_sets={"x": [0.5]}), "token set ids must be integers"),
])
def test_bad_input_one_line(bad, msg):
    m = tiny_model("llama")
    kw = {"inputs": [[1, 2, 3]], **bad}
    with pytest.raises(TokenlabError, match=msg) as e:
        collect_attention_stats(m, kw.pop("inputs"), **kw)
    assert "\n" not in str(e.value)
    _clean(m)


def test_one_forward_per_context():
    m = tiny_model("llama")
    with pytest.raises(TokenlabError, match="one forward pass"):
        with attention_stats(m) as st:
            m(torch.tensor([[1, 2, 3]])); m(torch.tensor([[1, 2, 3]]))
    _clean(m)


def test_head_subset_and_chunking_agree_with_full():
    m = tiny_model("qwen2", seed=5)
    ids = tiny_inputs(m, n_text=20, batch=2)["input_ids"]
    full = collect_attention_stats(m, ids, token_sets={"p": [3, 4, 5]})
    sub = collect_attention_stats(m, ids, layers=[1], heads=[3, 0], token_sets={"p": [3, 4, 5]}, chunk_elems=1)
    for a, b in [(full.column_mass, sub.column_mass), (full.entropy, sub.entropy), (full.first_mass, sub.first_mass)]:
        assert torch.allclose(a[1][:, [3, 0]], b[1], atol=1e-6)
    assert torch.allclose(full.set_mass["p"][1][:, [3, 0]], sub.set_mass["p"][1], atol=1e-6)
    # column mass of a query-normalised matrix sums to the number of queries; alpha_0 is the first mass
    assert torch.allclose(full.column_mass[0].sum(-1), torch.full((2, 4), 20.0), atol=1e-4)
    assert torch.allclose(full.column_mean[0][..., 0], full.first_mass[0], atol=1e-6)


def test_padding_batch_matches_eager():
    m = tiny_model("llama", seed=3)
    ids = torch.randint(1, 100, (2, 9)); am = torch.ones(2, 9, dtype=torch.long); am[1, :3] = 0   # left padding
    inputs = {"input_ids": ids, "attention_mask": am}
    ref = attnstats.eager_reference(m, inputs)
    with torch.no_grad(), attention_stats(m) as st: m(**inputs)
    valid = am.bool()[:, None, :, None]
    for l in ref:                                   # padding queries are left out
        with torch.no_grad(), attention_stats(m, layers=[l]) as one: m(input_ids=ids, attention_mask=am)
        assert torch.allclose(one.column_mass[l], st.column_mass[l])
        ref_entropy = ref[l]["entropy"] * am[:, None]
        assert torch.allclose(st.entropy[l], ref_entropy, atol=1e-5)
        assert torch.equal(st.entropy[l][1, :, :3], torch.zeros(4, 3))
    with torch.no_grad(), use_attention(m, "eager"): A = m(input_ids=ids, attention_mask=am, output_attentions=True).attentions
    for l, a in enumerate(A):
        assert torch.allclose(st.column_mass[l], (a * valid).sum(-2), atol=1e-5)
    assert torch.equal(st.n_queries[0][1, 0], torch.tensor([0., 0, 0, 6, 5, 4, 3, 2, 1]))


def test_token_sets_as_positions_and_summary():
    m = tiny_model("mistral")
    pos = torch.zeros(6, dtype=torch.bool); pos[[0, 2]] = True
    st = collect_attention_stats(m, [[9, 8, 7, 6, 5, 4]], token_sets={"pos": pos, "ids": [9, 7]})
    for l in st.layers: assert torch.allclose(st.set_mass["pos"][l], st.set_mass["ids"][l])
    df = st.summary()
    assert len(df) == 2 * 4 and {"first_mass", "entropy", "mass_pos", "mass_ids"} <= set(df.columns)
    with pytest.raises(TokenlabError, match="unknown token set 'x'"): st.mean_set_mass("x")


def _ref(q, k, mask, scaling, softcap=None):
    g = q.shape[1] // k.shape[1]
    s = q @ k.repeat_interleave(g, 1).transpose(-1, -2) * scaling
    if softcap: s = softcap * torch.tanh(s / softcap)
    A = s.masked_fill(~mask, float("-inf")).softmax(-1)
    return A, -torch.special.xlogy(A, A).sum(-1)


@settings(max_examples=40, deadline=None)
@given(B=hs.integers(1, 2), Hkv=hs.integers(1, 2), g=hs.integers(1, 3), Q=hs.integers(1, 9), extra=hs.integers(0, 4),
       window=hs.none() | hs.integers(1, 6), softcap=hs.none() | hs.floats(0.5, 5), chunk=hs.integers(1, 200),
       seed=hs.integers(0, 10_000))
def test_chunked_kernel_equals_softmax(B, Hkv, g, Q, extra, window, softcap, chunk, seed):
    torch.manual_seed(seed)
    H, K, D = Hkv * g, Q + extra, 4
    q, k = torch.randn(B, H, Q, D) * 3, torch.randn(B, Hkv, K, D)
    qpos, kpos = torch.arange(Q)[:, None] + extra, torch.arange(K)[None]
    mask = kpos <= qpos
    if window: mask &= (qpos - kpos) < window
    A, ent = _ref(q, k, mask[None, None], 0.5, softcap)
    r = chunked_attention_stats(q, k, None, 0.5, softcap, window, True, chunk_elems=chunk, min_rows=1)
    assert torch.allclose(r["column_mass"], A.sum(-2), atol=1e-5) and torch.allclose(r["entropy"], ent, atol=1e-4)
    r2 = chunked_attention_stats(q, k, mask[None, None].expand(B, 1, Q, K), 0.5, softcap, None, True, chunk_elems=chunk, min_rows=1)
    assert torch.allclose(r2["column_mass"], r["column_mass"], atol=1e-5) and torch.allclose(r2["first"], A[..., 0], atol=1e-6)


def test_smollm2_sink_anchor():
    from tokenlab.models.loading import load_model, load_tokenizer
    try: m, tok = load_model(), load_tokenizer()
    except TokenlabError as e: pytest.skip(str(e))
    text = "The history of the city begins with a small settlement on the river, and traders arrived over the centuries."
    st = collect_attention_stats(m, text, tok, layers=range(5, 30))
    late = float(torch.stack([st.first_mass[l].mean() for l in st.layers]).mean())
    assert 0.3 < late < 0.7, late
    assert m.config._attn_implementation == "sdpa"
