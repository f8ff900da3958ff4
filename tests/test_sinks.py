"""Sink and activation metrics: hand-made tensors with known answers, general properties, and a tiny-Llama smoke."""
from __future__ import annotations
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from tokenlab.lab.core import TokenlabError
from tokenlab.attention import sinks
from tokenlab.attention.sinks import (SINK_METRICS, sink_metric, sink_scores, sink_rate, first_token_share,
                                      value_drain, residual_peak, massive_activations, sink_token_similarity,
                                      head_activity, dormant_by_domain, logit_lens_ranks, linearity,
                                      token_nonlinearity, layer_linearity, collect, record, record_llama,
                                      compute, check_result, register_sink_metric)
from tokenlab.models.hooks import observers, set_attention
from tokenlab.models.tiny import tiny_inputs, tiny_model
from tokenlab.models.trainer import tiny_llama

torch.set_num_threads(1)
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def causal_softmax(scores):
    T = scores.shape[-1]
    return torch.softmax(scores.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float("-inf")), -1)


def test_registry_names_and_error():
    assert {"sink_scores", "sink_rate", "value_drain", "residual_peak", "massive_activations", "sink_token_similarity",
            "head_activity", "logit_lens_ranks", "linearity", "token_nonlinearity", "layer_linearity"} <= set(SINK_METRICS)
    assert sink_metric("value_drain") is value_drain
    with pytest.raises(TokenlabError, match="unknown sink metric 'x'; valid sink metrics: "):
        sink_metric("x")


@SETTINGS
@given(st.integers(2, 12), st.integers(0, 2**31 - 1))
def test_sink_scores_of_any_causal_attention_average_to_the_column_mean(T, seed):
    A = causal_softmax(torch.randn(3, T, T, generator=torch.Generator().manual_seed(seed)))
    a = sink_scores(A)
    assert a.shape == (3, T)
    for k in range(T): assert torch.allclose(a[:, k], A[:, k:, k].mean(-1), atol=1e-6)
    assert torch.allclose((a * torch.arange(T, 0, -1)).sum(-1), torch.full((3,), float(T)), atol=1e-4)   # each row sums to 1
    assert torch.allclose(a[:, -1], A[:, -1, -1])


def test_sink_rate_threshold_and_shapes():
    T = 64
    A = torch.zeros(2, 3, 4, T, T)
    A[..., :, :] = torch.eye(T)                      # self-attention only: alpha_0 = 1/T
    A[0, 1, 2, :, 0] = 1; A[0, 1, 2] = A[0, 1, 2] * (torch.arange(T) == 0)   # one sink head
    assert sink_rate(A) == pytest.approx(1 / 24)
    A[1, 0, 0] = 0.31 * torch.eye(T); A[1, 0, 0, :, 0] += 0.69; A[1, 0, 0, 0, 0] = 1   # alpha_0 = 0.69 + 0.31/T > 0.3
    assert sink_rate(A) == pytest.approx(2 / 24)
    assert sink_rate(A, eps=1.0) == 0
    with pytest.raises(TokenlabError, match="eps"): sink_rate(A, eps=2)
    with pytest.raises(TokenlabError, match=r"\(\.\.\., T, T\)"): sink_scores(torch.zeros(3, 4))


def test_first_token_share_selects_queries_and_renormalises():
    T = 5
    A = torch.tril(torch.ones(T, T)); A = A / A.sum(-1, keepdim=True)
    A = torch.stack([A, 3 * A])[None]                          # (B=1, H=2, T, T); head 1 unnormalised
    m = torch.tensor([[False, True, False, False, True]])
    assert torch.allclose(first_token_share(A, m), torch.tensor([(1 / 2 + 1 / 5) / 2] * 2))
    with pytest.raises(TokenlabError, match="no query"): first_token_share(A, torch.zeros(1, T, dtype=torch.bool))
    with pytest.raises(TokenlabError, match="query_mask"): first_token_share(A, torch.ones(2, T, dtype=torch.bool))


@SETTINGS
@given(st.floats(0.01, 100), st.integers(0, 2**31 - 1))
def test_drain_and_peak_are_scale_invariant_ratios(c, seed):
    g = torch.Generator().manual_seed(seed)
    v, h = torch.rand(2, 3, 7, generator=g) + 0.1, torch.randn(2, 7, 5, generator=g)
    assert torch.allclose(value_drain(c * v), value_drain(v), rtol=1e-4)
    assert torch.allclose(residual_peak(c * h), residual_peak(h), rtol=1e-4)
    assert torch.allclose(value_drain(v), v[..., 0] / v[..., 1:].mean(-1))


def test_drain_and_peak_known_values():
    assert value_drain(torch.tensor([0.5, 1.0, 2.0, 3.0])).item() == 0.25
    h = torch.zeros(5, 3); h[:, 2] = torch.tensor([-40., 1, 2, 3, 4])
    assert residual_peak(h).item() == pytest.approx(40 / 2.5)       # median of 1, 2, 3, 4 (interpolated)
    with pytest.raises(TokenlabError): value_drain(torch.ones(3, 1))


def test_massive_activations_both_criteria():
    h = torch.randn(2, 4, 6, 16, generator=torch.Generator().manual_seed(0)) * 0.1
    h[0, 3, 0, 7] = 2000.0; h[1, 3, 0, 7] = 1900.0            # block 3, BOS, dim 7 in both samples
    h[0, 2, 0, 7] = 150.0                                       # above 100 but not 1000x the median (~0.07)? it is: check ratio flag
    h[:, 1] *= 1000                                             # layer 1: large everywhere, no outlier (ratio small)
    df = massive_activations(h, top=2)
    assert df.layer.tolist() == [0, 1, 2, 3]
    row = df.iloc[3]
    assert row.top_dims == [7, 7] and row.top_positions == [0, 0] and sorted(row.top_samples) == [0, 1]
    assert row.massive and row.ratio > 1000
    assert df.iloc[1].above_abs and not df.iloc[1].above_ratio and not df.iloc[1].massive
    assert df.iloc[2].above_abs and df.iloc[2].above_ratio
    assert not df.iloc[0].above_abs


def test_sink_token_similarity_groups():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 20, 32, generator=g)
    rec = torch.rand(2, 20, generator=g) * 0.1
    for b, t in [(0, 5), (1, 9)]: h[b, t] = 2 * h[b, 0] + 0.01 * torch.randn(32, generator=g); rec[b, t] = 1.0
    s = sink_token_similarity(h, rec, frac=2 / 38)
    assert s["n_high"] == 2 and s["cos_high"] > 0.99 and abs(s["cos_low"]) < 0.3
    with pytest.raises(TokenlabError): sink_token_similarity(h, rec[:, :5])


def test_dormant_heads_by_domain():
    stats = {"a": (torch.tensor([[0.8, 0.8], [0.2, 0.9]]), torch.tensor([[0.1, 1.0], [1.0, 0.2]])),
             "b": (torch.tensor([[0.1, 0.8], [0.2, 0.9]]), torch.tensor([[1.0, 1.0], [1.0, 1.0]]))}
    df = dormant_by_domain(stats)
    assert set(map(tuple, df[df.dormant][["domain", "layer", "head"]].values.tolist())) == {("a", 0, 0), ("a", 1, 1)}
    assert head_activity(torch.tensor([[0.31, 0.29]]), torch.tensor([[0.0, 0.0]]), reference=torch.ones(1, 2)).tolist() == [[True, False]]


def test_logit_lens_ranks_known():
    W = torch.eye(4)
    h = torch.tensor([[[[4., 3, 2, 1]], [[1., 2, 3, 4]], [[0., 0, 0, 9]]]])   # (1, 3, 1, 4)
    r = logit_lens_ranks(h, torch.nn.Identity(), lambda x: x @ W.T)
    assert r.tolist() == [[[3], [0], [0]]]
    r = logit_lens_ranks(h, torch.nn.Identity(), lambda x: x @ W.T, targets=torch.tensor([[1]]))
    assert r.tolist() == [[[1], [2], [1]]]


@SETTINGS
@given(st.integers(2, 6), st.floats(0.01, 100), st.floats(0.01, 100), st.integers(0, 2**31 - 1))
def test_linearity_is_one_for_affine_maps_and_scale_invariant(d, a, b, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(10 * d, d, generator=g, dtype=torch.float64)
    M = torch.randn(d, d + 1, generator=g, dtype=torch.float64)
    assert linearity(X, X @ M + torch.randn(d + 1, generator=g, dtype=torch.float64)) == pytest.approx(1, abs=1e-9)
    Y = torch.sin(2 * X @ M) + 0.3 * X[:, :1] ** 2
    l = linearity(X, Y)
    assert -1e-12 <= l <= 1 + 1e-12
    assert linearity(a * X, b * Y) == pytest.approx(l, abs=1e-9)
    assert token_nonlinearity(X, Y).sum().item() == pytest.approx(1 - l, abs=1e-6)


def test_layer_linearity_shapes_and_identity_layers():
    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(2, 30, 4, generator=g)
    hidden = torch.stack([h0, 2 * h0 + 1, torch.tanh(5 * h0)], 1)       # (B=2, L+1=3, T=30, d=4)
    lin = layer_linearity(hidden)
    assert lin.shape == (2,) and lin[0] == pytest.approx(1, abs=1e-9) and lin[1] < 1


@pytest.fixture(scope="module")
def model():
    return tiny_llama(40, d_model=32, n_layers=2, n_heads=4, seed=0)


def test_collect_tiny_llama(model):
    ids = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(0))
    si = collect(model, ids, attention="full")
    assert si.hidden.shape == (4, 3, 16, 32) and si.attn.shape == (4, 2, 4, 16, 16)
    assert model.config._attn_implementation == "sdpa"
    # eager attention probabilities match a direct computation from q, k (layer 0)
    attn = model.model.layers[0].self_attn
    x = model.model.layers[0].input_layernorm(si.hidden[:, 0])
    q = attn.q_proj(x).view(4, 16, 4, 8).transpose(1, 2); k = attn.k_proj(x).view(4, 16, 4, 8).transpose(1, 2)
    cos, sin = model.model.rotary_emb(x, torch.arange(16)[None])
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    A = causal_softmax(q @ k.transpose(-1, -2) / 8 ** 0.5)
    assert torch.allclose(si.attn[:, 0], A, atol=1e-5)
    # every metric runs on the collected inputs
    assert 0 <= sink_rate(si.attn) <= 1
    assert value_drain(si.v_norm).shape == (4, 2, 4) and residual_peak(si.hidden).shape == (4, 3)
    assert len(massive_activations(si.hidden)) == 3
    ranks = logit_lens_ranks(si.hidden, model.model.norm, model.lm_head)
    assert ranks.shape == (4, 3, 16) and (ranks[:, -1] == 0).all()
    lin = layer_linearity(si.hidden)               # N = 64 tokens > d = 32
    assert lin.shape == (2,) and 0 <= lin.min() and lin.max() <= 1
    no_attn = collect(model, ids, attention=False)
    assert no_attn.attn is None and no_attn.alpha is None and torch.allclose(no_attn.hidden, si.hidden, atol=1e-6)
    assert collect(model, ids, attention=True).attn.shape == si.attn.shape          # the old boolean flag
    stats = collect(model, ids)                                                      # default: statistics, no (T, T) tensor
    assert stats.attn is None and torch.allclose(stats.alpha, sink_scores(si.attn), atol=1e-5)
    assert torch.allclose(stats.first_share, si.attn[..., 0].mean(-1), atol=1e-5)
    assert sink_rate(alpha=stats.alpha) == sink_rate(si.attn)
    assert torch.allclose(stats.received(1), sink_scores(si.attn[:, 1]).mean(1), atol=1e-5)


def test_single_head_output_norm_is_the_o_proj_output_norm():
    m = tiny_llama(30, d_model=16, n_layers=1, n_heads=1, seed=1)
    got = {}
    h = m.model.layers[0].self_attn.o_proj.register_forward_hook(lambda mod, a, o: got.__setitem__("o", o.detach()))
    si = collect(m, torch.arange(10)[None])
    h.remove()
    assert torch.allclose(si.head_out_norm[:, 0, 0], got["o"].norm(dim=-1), atol=1e-5)


def test_hooks_are_removed_on_exit_and_on_error(model):
    ours = lambda: [f for m in model.modules() for d in (m._forward_hooks, m._forward_pre_hooks)
                    for f in d.values() if f.__qualname__.startswith("record.")]
    assert record_llama is record
    with record(model) as rec:
        assert len(ours()) == 1 + 5 * 2               # input of layer 0; block, v_proj, o_proj, attention, mlp per layer
        model(torch.arange(6)[None])
        assert rec["resid"][1].shape == (1, 6, 32)
    assert not ours()
    with pytest.raises(RuntimeError):
        with record(model):
            raise RuntimeError("boom")
    assert not ours()


def test_collect_refuses_non_llama_and_bad_ids(model):
    with pytest.raises(TokenlabError, match="not a transformers model .*; supported architectures: .*llama"):
        collect(torch.nn.Linear(2, 2), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(TokenlabError, match=r"\(B, T\)"): collect(model, torch.zeros(1, 1, dtype=torch.long))


def test_linearity_refuses_too_few_tokens():
    with pytest.raises(TokenlabError, match="more tokens than dimensions"):
        linearity(torch.randn(5, 8), torch.randn(5, 8))
    with pytest.raises(TokenlabError, match="more tokens than dimensions"):
        layer_linearity(torch.randn(1, 3, 4, 8))


def test_collect_keeps_a_custom_attention_function():
    # a ReLU-attention model must be measured as it runs, not silently under softmax
    from tokenlab.attention.backcopy import RELU_ATTENTION, register_relu_attention
    from tokenlab.models.trainer import tiny_llama
    register_relu_attention()
    m = tiny_llama(20, d_model=32, n_layers=2, n_heads=2, seed=0)
    set_attention(m, RELU_ATTENTION)
    ids = torch.arange(8)[None]
    own = m(ids).logits
    si = collect(m, ids, attention="full")
    assert torch.allclose(si.logits, own, atol=1e-6) and m.config._attn_implementation == RELU_ATTENTION
    assert si.alpha.shape == (1, 2, 2, 8) and torch.allclose(si.alpha, sink_scores(si.attn))
    with pytest.raises(TokenlabError, match="assume softmax"): collect(m, ids, attention="stats")
    assert m.config._attn_implementation == RELU_ATTENTION


# ---------------------------------------------------------------- every registered metric, from one SinkInputs

@pytest.fixture(scope="module")
def collected():
    m = tiny_model("llama", seed=3)
    si = collect(m, tiny_inputs(m, n_text=20, batch=2, seed=4), attention="full")   # B*T = 40 > d = 32 for the linearity fit
    return m, si


def _independent(name, r, si, m):
    "An independent computation of the result where it is cheap (from the raw tensors, not through the metric)."
    A, B, L, T = si.attn.double(), si.dims["B"], si.dims["L"], si.dims["T"]
    if name == "sink_scores":
        ref = torch.stack([A[..., k:, k].mean(-1) for k in range(T)], -1)     # mean over the queries that see key k
        assert torch.allclose(r.double(), ref, atol=1e-6)
    elif name == "sink_rate": assert r == (si.alpha[..., 0] > 0.3).float().mean().item()
    elif name == "first_token_share": assert torch.allclose(r.double(), A[..., 0].mean((0, -1)), atol=1e-6)
    elif name == "value_drain": assert torch.allclose(r, si.v_norm[..., 0] / si.v_norm[..., 1:].mean(-1), atol=1e-6)
    elif name == "residual_peak":                                   # T - 1 = 19 others: the median is one of them
        n = si.hidden.double().pow(2).sum(-1).sqrt()
        assert torch.allclose(r.double(), n[..., 0] / n[..., 1:].median(-1).values, rtol=1e-5)
    elif name == "massive_activations": assert r.top_value.tolist() == [si.hidden[:, l].abs().max().item() for l in range(L + 1)]
    elif name == "massive_origin":                                  # follows the largest activation after the last block
        flat = si.hidden[:, L].abs().flatten().argmax()
        t, d = (flat // si.dims["d"]) % T, flat % si.dims["d"]
        assert torch.allclose(torch.tensor(r.value.tolist()), si.hidden[:, 1:, t, d].mean(0), atol=1e-6)
        assert torch.allclose(torch.tensor(r.mlp.tolist()), si.mlp_out[:, :, t, d].mean(0), atol=1e-6)
    elif name == "head_activity":
        a0, on = si.alpha[..., 0], si.head_out_norm.mean(-1)
        assert torch.equal(r, (a0 > 0.3) & (on < 0.5 * on.median(-1, keepdim=True).values))
    elif name == "logit_lens_ranks":
        assert (r[:, -1] == 0).all()
        with torch.no_grad(): lg = m.lm_head(m.model.norm(si.hidden[:, 0])).float()
        tgt = si.logits.argmax(-1)
        assert torch.equal(r[:, 0], (lg > lg.gather(-1, tgt[..., None])).sum(-1))
    elif name in ("linearity", "token_nonlinearity", "layer_linearity"):
        import numpy as np
        X, Y = (si.hidden[:, l].reshape(-1, si.dims["d"]).double().numpy() for l in (0, 1))
        X, Y = X - X.mean(0), Y - Y.mean(0); X, Y = X / np.linalg.norm(X), Y / np.linalg.norm(Y)
        res = ((X @ np.linalg.lstsq(X, Y, rcond=None)[0] - Y) ** 2).sum(-1)
        want = {"linearity": 1 - res.sum(), "token_nonlinearity": res, "layer_linearity": 1 - res.sum()}[name]
        got = r if name != "layer_linearity" else r[0]
        assert np.allclose(np.asarray(got, dtype=float), want, atol=1e-6)
    elif name in ("sink_token_similarity", "channel_overlap"):      # top 5% and bottom half of the B * (T-1) later tokens
        n = B * (T - 1)
        assert (r["n_high"], r["n_low"]) == (max(1, round(0.05 * n)), n // 2)
        assert all(-1 - 1e-6 <= v <= 1 + 1e-6 for k, v in r.items() if not k.startswith("n_"))


@pytest.mark.parametrize("name", SINK_METRICS.names())
def test_every_registered_metric_on_a_collected_model(collected, name):
    "Each metric of the registry, from its entry's `inputs`: the declared shape or type, finite values, and an independent value where cheap."
    m, si = collected
    e = SINK_METRICS.entry(name)
    assert e.doc and e.paper and e.extra["returns"], name
    r = compute(name, si)
    check_result(name, r, si)
    _independent(name, r, si, m)


def test_registering_a_metric_needs_its_inputs():
    with pytest.raises(TokenlabError, match="needs inputs="):
        register_sink_metric("no_inputs")(lambda attn: attn)
    assert "no_inputs" not in SINK_METRICS
