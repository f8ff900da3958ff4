"""Properties of the prefill cost model (hypothesis) and the benchmark's static-cache prefill path on a tiny Llama on CPU;
the hand-computed LLaVA-1.5-7B numbers and MEASURED.md's statements are tested in nbs/pruning/20_cost."""
import math
import pytest
import torch
from hypothesis import given, settings, strategies as st
from tokenlab.lab.core import TokenlabError
from tokenlab.pruning.cost import (LMShape, prefill_cost, roofline_seconds, speedup_limit, flops_ratio, pruning_limits,
                                   DEVICES, device_rates)

torch.set_num_threads(1)


@st.composite
def shapes(draw):
    heads = draw(st.integers(1, 8))
    kv = draw(st.sampled_from([h for h in range(1, heads + 1) if heads % h == 0]))
    return LMShape(layers=draw(st.integers(1, 6)), d=draw(st.integers(1, 64)), heads=heads, kv_heads=kv,
                   head_dim=draw(st.integers(1, 32)), mlp=draw(st.integers(1, 128)), vocab=draw(st.integers(1, 500)),
                   tied=draw(st.booleans()))


@st.composite
def problems(draw):
    "(shape, n_image, n_text, site, layer, batch, logits)"
    s = draw(shapes())
    n_image, n_text = draw(st.integers(0, 300)), draw(st.integers(0, 80))
    if n_image + n_text == 0: n_text = 1
    site = draw(st.sampled_from(["lm_input", "lm_layer"]))
    layer = draw(st.integers(0, s.layers - 1)) if site == "lm_layer" else 0
    return s, n_image, n_text, site, layer, draw(st.integers(1, 8)), draw(st.sampled_from(["last", "all", "none"]))


@settings(max_examples=80, deadline=None)
@given(problems(), st.data())
def test_cost_is_monotone_in_the_kept_count(p, data):
    s, n_image, n_text, site, layer, batch, logits = p
    a = data.draw(st.integers(0, n_image)); b = data.draw(st.integers(a, n_image))
    lo, hi = (prefill_cost(s, n_image, n_text, n_keep=k, site=site, layer=layer, batch=batch, logits=logits) for k in (a, b))
    assert lo.flops <= hi.flops and lo.kv_bytes <= hi.kv_bytes and lo.act_bytes <= hi.act_bytes
    assert lo.bytes_moved <= hi.bytes_moved and lo.weight_bytes == hi.weight_bytes
    assert all(x <= y for x, y in zip(lo.n_tokens, hi.n_tokens))
    full = prefill_cost(s, n_image, n_text, site=site, layer=layer, batch=batch, logits=logits)
    assert prefill_cost(s, n_image, n_text, n_keep=n_image, site=site, layer=layer, batch=batch, logits=logits) == full


@settings(max_examples=80, deadline=None)
@given(problems(), st.data())
def test_lm_layer_at_layer_0_is_lm_input_and_later_pruning_costs_more(p, data):
    s, n_image, n_text, _, _, batch, logits = p
    k = data.draw(st.integers(0, n_image))
    kw = dict(n_keep=k, batch=batch, logits=logits)
    assert prefill_cost(s, n_image, n_text, site="lm_layer", layer=0, **kw) == prefill_cost(s, n_image, n_text, **kw)
    costs = [prefill_cost(s, n_image, n_text, site="lm_layer", layer=K, **kw) for K in range(s.layers)]
    for x, y in zip(costs, costs[1:]):
        assert x.flops <= y.flops and x.bytes_moved <= y.bytes_moved and x.kv_bytes <= y.kv_bytes
    for K, c in enumerate(costs):
        assert c.n_tokens == (n_image + n_text,) * K + (k + n_text,) * (s.layers - K)


@settings(max_examples=80, deadline=None)
@given(problems(), st.data(), st.floats(1e6, 1e16), st.floats(1e6, 1e13))
def test_the_limit_lies_between_the_bytes_ratio_and_the_flops_ratio(p, data, peak, bw):
    s, n_image, n_text, site, layer, batch, logits = p
    k = data.draw(st.integers(0, n_image))
    kw = dict(site=site, layer=layer, batch=batch, logits=logits)
    full, pr = prefill_cost(s, n_image, n_text, **kw), prefill_cost(s, n_image, n_text, n_keep=k, **kw)
    if pr.flops == 0: return                                        # no tokens left and no logits: no ratio
    lim, fr, br = speedup_limit(full, pr, peak, bw), flops_ratio(full, pr), full.bytes_moved / pr.bytes_moved
    assert min(fr, br) * (1 - 1e-12) <= lim <= max(fr, br) * (1 + 1e-12)
    assert lim >= 1 - 1e-12 and fr >= 1 - 1e-12
    assert math.isclose(roofline_seconds(pr, 2 * peak, 2 * bw), roofline_seconds(pr, peak, bw) / 2, rel_tol=1e-12)
    if pr.flops / peak >= pr.bytes_moved / bw and full.flops / peak >= full.bytes_moved / bw:
        assert math.isclose(lim, fr, rel_tol=1e-12)                 # both compute-bound: the FLOPs ratio


@settings(max_examples=60, deadline=None)
@given(problems(), st.integers(1, 50))
def test_keeping_more_than_there_is_raises(p, extra):
    s, n_image, n_text, site, layer, batch, logits = p
    with pytest.raises(TokenlabError, match=f"n_keep = {n_image + extra} exceeds n_image = {n_image}"):
        prefill_cost(s, n_image, n_text, n_keep=n_image + extra, site=site, layer=layer)


def test_batch_scales_everything_but_the_weights():
    s = LMShape(layers=3, d=32, heads=4, kv_heads=2, head_dim=8, mlp=64, vocab=100)
    one, eight = prefill_cost(s, 20, 5, n_keep=7), prefill_cost(s, 20, 5, n_keep=7, batch=8)
    assert eight.flops == 8 * one.flops and eight.kv_bytes == 8 * one.kv_bytes and eight.act_bytes == 8 * one.act_bytes
    assert eight.weight_bytes == one.weight_bytes
    assert [r["n_keep"] for r in pruning_limits(s, 20, 5, [20, 7], 1e12, 1e11)] == [20, 7]
    assert set(DEVICES) >= {"h100", "h200", "cpu"} and device_rates("h200")[1] > device_rates("h100")[1]


# ------------------------------------------------ the benchmark's GPU path, on a tiny Llama on CPU
@pytest.fixture(scope="module")
def tiny():
    from bench.pruning_prefill import tiny_config, random_llama
    return random_llama(tiny_config(), torch.float32, "cpu")


def test_static_cache_prefill_equals_the_dynamic_cache_forward(tiny):
    from bench.pruning_prefill import eager_prefill, static_prefill
    g = torch.Generator().manual_seed(0)
    for batch, n in [(1, 9), (2, 17)]:
        e = 0.5 * torch.randn(batch, n, tiny.config.hidden_size, generator=g)
        ref = eager_prefill(tiny, e)()
        run, info = static_prefill(tiny, e, "none")
        assert info["fallback"] is None
        for _ in range(3):                       # repeated calls: the step resets the static cache's fill counters
            out = run()
            assert out.shape == ref.shape == (batch, 1, tiny.config.vocab_size)
            assert torch.allclose(out, ref, atol=1e-5, rtol=0), (out - ref).abs().max()
        run, info = static_prefill(tiny, e, "cuda_graph")     # no CUDA here: falls back to the static eager forward
        assert "CUDA" in info["fallback"] and torch.allclose(run(), ref, atol=1e-5, rtol=0)
    with pytest.raises(TokenlabError, match="unknown graph mode"): static_prefill(tiny, e, "xla")


def test_measure_rows_carry_speedup_flops_ratio_and_limit(tiny):
    from bench.pruning_prefill import measure
    rows = measure(tiny, [("tiny", 16, 4, (16, 8, 2))], (1, 2), ("eager", "static:none"), "cpu", torch.float32,
                   {"measured": (1e10, 1e9)}, warmup=1, budget_s=None, rounds=2)
    assert len(rows) == 2 * 2 * 3
    for r in rows:
        assert r["rounds"] == 2 and r["median_ms"] > 0 and r["tokens"] == r["n_keep"] + 4
        assert r["limit_measured"] <= r["flops_ratio"] + 1e-9 or r["bound_measured"] == "memory"
        assert (r["speedup"], r["flops_ratio"], r["limit_measured"]) == (1.0, 1.0, 1.0) if r["n_keep"] == 16 else r["flops_ratio"] > 1
    assert {r["path"] for r in rows} == {"eager", "static:none"}


@pytest.mark.slow
def test_compiled_static_prefill_on_cpu_matches_or_records_its_fallback(tiny):
    "torch.compile(mode='reduce-overhead') on CPU (no CUDA graphs there): ~20 s to compile the tiny model."
    from bench.pruning_prefill import eager_prefill, static_prefill
    e = 0.5 * torch.randn(2, 11, tiny.config.hidden_size, generator=torch.Generator().manual_seed(1))
    ref = eager_prefill(tiny, e)()
    run, info = static_prefill(tiny, e, "compile")
    assert torch.allclose(run(), ref, atol=1e-5, rtol=0)
    assert torch.allclose(run(), ref, atol=1e-5, rtol=0)
