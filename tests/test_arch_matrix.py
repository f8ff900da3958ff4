"""Every analysis on every tiny architecture (issue 4): sinks.collect and each sink metric, the residual stream against
transformers' hidden states, values and per-head output norms against independent references, attention statistics
against eager attention, the deletion test on the language models; bad input gives one TokenlabError line."""
from __future__ import annotations
import pytest, torch
from tokenlab.lab.core import TokenlabError
from tokenlab.models.tiny import TINY_TYPES, tiny_inputs, tiny_model
from tokenlab.models.arch import Adapter
from tokenlab.attention import stats as attnstats
from tokenlab.models.hooks import observe, observers
from tokenlab.attention.deletion import deletion_nll
from tokenlab.models.trainer import sequence_nll
from tokenlab.attention.sinks import (SINK_METRICS, check_result, compute, collect, record, sink_scores, sink_rate, first_token_share,
                                      value_drain, residual_peak, massive_activations, sink_token_similarity,
                                      channel_overlap, massive_origin, head_activity, dormant_by_domain,
                                      logit_lens_ranks, linearity, token_nonlinearity, layer_linearity)

torch.set_num_threads(1)
OVERRIDES = {"granite": dict(residual_multiplier=0.5)}        # exercise the residual multiplier (default 1)


class Case:
    "A tiny model, its inputs (B=2; >= 20 positions so that B*T > d = 32 for the linearity fit) and one collect(attention='full')."
    def __init__(self, model_type):
        self.mt = model_type
        self.m = tiny_model(model_type, seed=3, **OVERRIDES.get(model_type, {}))
        self.ad = Adapter(self.m)
        self.inputs = tiny_inputs(self.m, n_text=20, batch=2, seed=4)
        self.si = collect(self.m, self.inputs, attention="full")
        self.B, self.T = self.inputs["input_ids"].shape


_CASES: dict = {}

@pytest.fixture(params=TINY_TYPES)
def case(request):
    if request.param not in _CASES:
        _CASES.clear()                                       # one model alive at a time
        _CASES[request.param] = Case(request.param)
    return _CASES[request.param]


def _our_hooks(m):
    return [f for mod in m.modules() for d in (mod._forward_hooks, mod._forward_pre_hooks) for f in d.values()
            if f.__qualname__.startswith("record.")]


def test_collect_shapes_finite_and_residual_stream(case):
    si, ad, B, T = case.si, case.ad, case.B, case.T
    L, H, Hkv, d, V = ad.n_layers, ad.n_heads, ad.n_kv_heads, ad.hidden_size, ad.vocab_size
    shapes = dict(hidden=(B, L + 1, T, d), attn=(B, L, H, T, T), v_norm=(B, L, Hkv, T), head_out_norm=(B, L, H, T),
                  logits=(B, T, V), mlp_out=(B, L, T, d), attn_out=(B, L, T, d), alpha=(B, L, H, T), first_share=(B, L, H))
    for name, shape in shapes.items():
        x = getattr(si, name)
        assert tuple(x.shape) == shape and torch.isfinite(x).all(), (case.mt, name, tuple(x.shape), shape)
    assert not _our_hooks(case.m) and case.ad.config._attn_implementation in ("sdpa", "eager")
    with torch.no_grad(): ref = case.m(**case.inputs, output_hidden_states=True)
    assert torch.allclose(si.logits, ref.logits, atol=1e-5)
    hs = ref.hidden_states
    assert hs is not None and len(hs) == L + 1, case.mt
    assert torch.allclose(si.hidden[:, :L], torch.stack(hs[:L], 1), atol=1e-5), case.mt      # embeddings and block outputs
    assert torch.allclose(ad.final_norm(si.hidden[:, L]), hs[L], atol=1e-5), case.mt          # last one: after the final norm
    # what attention and MLP add is the whole residual update (post-norms, parallel residual, residual multiplier)
    assert torch.allclose(si.hidden[:, 1:] - si.hidden[:, :-1], si.attn_out + si.mlp_out, atol=1e-5), case.mt
    assert torch.equal(si.input_ids, case.inputs["input_ids"])


def _capture_values(case) -> list:
    "Value states (B, H_kv, T, hd) as the attention function receives them, per layer (independent of the v projection)."
    got = []
    with torch.no_grad(), observe(case.m, lambda call: got.append(call.value.detach())): case.m(**case.inputs)
    return got


def test_value_norms_are_the_attention_values(case):
    vals = _capture_values(case)
    assert len(vals) == case.ad.n_layers
    for l, v in enumerate(vals):
        assert torch.allclose(case.si.v_norm[:, l], v.float().norm(dim=-1), atol=1e-5), (case.mt, l)


def test_head_output_norms_from_masked_o_projection(case):
    "Head h's contribution = o(x with the other heads zeroed) - o(0): independent of the weight layout (Conv1D or Linear)."
    ad, xs = case.ad, {}
    hooks = [ad.o_proj(l).register_forward_pre_hook(lambda mod, a, l=l: xs.__setitem__(l, a[0].detach())) for l in range(ad.n_layers)]
    try:
        with torch.no_grad(): case.m(**case.inputs)
    finally:
        for h in hooks: h.remove()
    hd, mult = ad.head_dim, getattr(ad.config, "residual_multiplier", 1.0)
    for l, x in xs.items():
        o = ad.o_proj(l)
        with torch.no_grad():
            base = o(torch.zeros_like(x))
            for h in range(ad.n_heads):
                xm = torch.zeros_like(x); xm[..., h * hd:(h + 1) * hd] = x[..., h * hd:(h + 1) * hd]
                ref = (o(xm) - base).norm(dim=-1) * mult
                assert torch.allclose(case.si.head_out_norm[:, l, h], ref, atol=1e-4, rtol=1e-4), (case.mt, l, h)


def test_attention_statistics_agree_with_full_attention(case):
    "alpha = column mass / queries that see the key, first_share = mean A[q, 0]; stats-only collect gives the same."
    si = case.si
    seen = (si.attn > 0).sum(-2).clamp(min=1)                # eager: masked entries are exact zeros
    assert torch.allclose(si.alpha, si.attn.sum(-2) / seen, atol=1e-5), case.mt
    assert torch.allclose(si.first_share, si.attn[..., 0].mean(-1), atol=1e-5), case.mt
    assert torch.allclose(si.attn.sum(-1), torch.ones(()), atol=1e-4)
    lite = collect(case.m, case.inputs)                      # default attention="stats": no (T, T) tensor
    assert lite.attn is None and torch.allclose(lite.alpha, si.alpha, atol=1e-5) and torch.allclose(lite.hidden, si.hidden, atol=1e-5)
    assert torch.allclose(lite.first_share, si.first_share, atol=1e-5)
    assert case.ad.config._attn_implementation in ("sdpa", "eager") and not observers() and not _our_hooks(case.m)
    none = collect(case.m, case.inputs, attention="none")
    assert none.alpha is None and none.attn is None and torch.allclose(none.v_norm, si.v_norm, atol=1e-5)


def test_every_sink_metric_runs(case):
    si, ad, B, T = case.si, case.ad, case.B, case.T
    L, H = ad.n_layers, ad.n_heads
    a = sink_scores(si.attn)
    assert a.shape == (B, L, H, T) and torch.isfinite(a).all()
    if case.mt in ("gpt2", "gpt_neox", "llama", "qwen3", "olmo2", "granite", "phi3", "gemma", "mixtral", "llava"):
        assert torch.allclose(a, si.alpha, atol=1e-5), case.mt        # plain causal attention everywhere
    for r in (sink_rate(si.attn), sink_rate(alpha=si.alpha), sink_rate(alpha=si.alpha, eps=0.0)):
        assert 0 <= r <= 1
    assert first_token_share(si.attn).shape == (L, H)
    assert value_drain(si.v_norm).shape == (B, L, ad.n_kv_heads) and torch.isfinite(value_drain(si.v_norm)).all()
    assert residual_peak(si.hidden).shape == (B, L + 1)
    ma = massive_activations(si.hidden)
    assert len(ma) == L + 1 and ma.top_value.notna().all()
    for l in range(L):
        rec = si.received(l)
        assert rec.shape == (B, T)
        s = sink_token_similarity(si.hidden[:, l + 1], rec)
        c = channel_overlap(si.hidden[:, l + 1], rec, k=4)
        assert all(-1 <= v <= 1 for v in (s["cos_high"], s["cos_low"], c["jaccard_high"], c["jaccard_low"]))
    row = ma.iloc[-1]
    mo = massive_origin(si.hidden, si.mlp_out, dim=row.top_dims[0], position=row.top_positions[0])
    assert len(mo) == L and mo.notna().all().all()
    dm = head_activity(si.alpha[..., 0], si.head_out_norm.mean(-1))
    assert dm.shape == (B, L, H) and dm.dtype == torch.bool
    dd = dormant_by_domain({"a": (si.alpha[0, ..., 0], si.head_out_norm[0].mean(-1)), "b": (si.alpha[1, ..., 0], si.head_out_norm[1].mean(-1))})
    assert len(dd) == 2 * L * H
    ranks = logit_lens_ranks(si.hidden, ad.final_norm, ad.unembed, targets=si.logits.argmax(-1))
    assert ranks.shape == (B, L + 1, T) and (ranks[:, -1] == 0).all(), case.mt   # the lens at the top is the model's own argmax
    assert B * T > ad.hidden_size
    lin = layer_linearity(si.hidden)
    assert lin.shape == (L,) and torch.isfinite(lin).all() and (lin <= 1 + 1e-9).all()
    X, Y = si.hidden[:, 0].reshape(-1, ad.hidden_size), si.hidden[:, 1].reshape(-1, ad.hidden_size)
    assert token_nonlinearity(X, Y).sum().item() == pytest.approx(1 - linearity(X, Y), abs=1e-5)
    with pytest.raises(TokenlabError, match="more tokens than dimensions"):
        layer_linearity(si.hidden[:1, :, :8])
    for name in SINK_METRICS.names():                        # every registered metric, from the one collection
        check_result(name, compute(name, si), si)


def test_deletion_nll(case):
    "The deletion test (`microscope.deletion_nll`, through `zoo.sequence_nll`) on the language models."
    ids = case.inputs["input_ids"][0]
    if case.ad.is_vlm: ids = ids[~case.ad.image_token_mask(ids[None])[0]]      # the text part, run without an image
    if len(ids) < 16: ids = ids.repeat(16 // len(ids) + 1)
    ids = ids[:16]
    keep = torch.ones(len(ids), dtype=torch.bool); keep[3:6] = False
    targets = torch.zeros(len(ids), dtype=torch.bool); targets[8:] = True
    got = deletion_nll(case.m, ids, keep, targets)
    assert got.shape == (8,) and torch.isfinite(got).all() and (got > 0).all()
    ref = sequence_nll(case.m, ids[keep][None])[0][-8:]
    assert torch.allclose(got, ref, atol=1e-5)


# ---------------------------------------------------------------- bad input: one TokenlabError line each

@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def _one_line(fn, match):
    with pytest.raises(TokenlabError, match=match) as e: fn()
    assert "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("ids, kw, match", [
    (torch.zeros(1, 0, dtype=torch.long), {}, r"need ids of shape \(B, T\) with T >= 2, got \(1, 0\)"),
    (torch.zeros(0, dtype=torch.long), {}, r"T >= 2"),
    (torch.tensor([5]), {}, r"T >= 2"),
    ("   ", {}, "empty text"),
    ("hello", {}, "text input needs a tokenizer"),
    (torch.ones(1, 257, dtype=torch.long), {}, "sequence of 257 tokens is longer than the model's context of 256"),
    (torch.full((1, 4), 128), {}, "token id out of range for a vocabulary of 128"),
    (torch.ones(1, 4), {}, "token ids must be integers"),
    ({"pixel_values": torch.zeros(1)}, {}, "model inputs need input_ids"),
    (torch.ones(1, 4, dtype=torch.long), {"attention": "sometimes"}, "unknown attention mode 'sometimes'"),
])
def test_collect_bad_input(llama, ids, kw, match):
    _one_line(lambda: collect(llama, ids, **kw), match)


def test_collect_bad_models_and_layers(llama):
    ids = torch.ones(1, 4, dtype=torch.long)
    _one_line(lambda: collect(torch.nn.Linear(2, 2), ids), r"not a transformers model \(no config\); supported architectures: .*gpt2.*llama")
    m = tiny_model("llama")
    del m.model.layers[1].mlp                                # a model without a module the analysis needs
    _one_line(lambda: collect(m, ids), "does not match the .llama. table entry in layer 1: .*mlp")
    other = tiny_model("llama"); other.config.model_type = "falcon"
    _one_line(lambda: collect(other, ids), r"unsupported architecture 'falcon' .*; supported: .*gpt2.*llama")
    si = collect(llama, ids)
    _one_line(lambda: si.received(2), r"layer 2 out of range; recorded 2 layers \(0..1\)")
    _one_line(lambda: collect(llama, ids, attention="none").received(0), "no attention recorded")
    _one_line(lambda: massive_origin(si.hidden, si.mlp_out, dim=32), "out of range")
    _one_line(lambda: attnstats.collect_attention_stats(llama, ids, layers=[5]), r"layer 5 out of range")
    _one_line(lambda: attnstats.collect_attention_stats(llama, ids, heads=[4]), r"head 4 out of range")
    _one_line(lambda: sink_rate(), "exactly one of attn")
    assert not _our_hooks(llama) and not _our_hooks(m)


def test_hooks_removed_when_the_forward_pass_fails(llama):
    with pytest.raises(IndexError):
        with record(llama):
            llama(torch.tensor([[1, 2, 500]]))               # out of vocabulary inside the forward pass
    assert not _our_hooks(llama)
    def boom(*a): raise RuntimeError("boom")
    h = llama.model.layers[1].mlp.register_forward_hook(boom)
    try:
        for mode in ("full", "stats", "none"):
            with pytest.raises(RuntimeError, match="boom"): collect(llama, torch.ones(1, 4, dtype=torch.long), attention=mode)
            assert not _our_hooks(llama) and llama.config._attn_implementation == "sdpa" and not observers()
    finally: h.remove()
