"""The one hook mechanism (tokenlab.models.hooks): contexts nest, compose and unwind in order, everything is restored
after an exception mid-forward, models observed at once do not interfere, and nothing else registers or switches
attention implementations."""
from __future__ import annotations
import re
from pathlib import Path
import pytest, torch
from tokenlab.lab.core import TokenlabError
from tokenlab.models.arch import Adapter
from tokenlab.models.tiny import tiny_inputs, tiny_model
from tokenlab.models import hooks
from tokenlab.models.hooks import (attention_implementation, forward_hooks, lm_configs, observe, observers, register_attention,
                                   set_attention, use_attention)
from tokenlab.attention.backcopy import RELU_ATTENTION
from tokenlab.attention.kvcache import received_attention_hook
from tokenlab.attention.sinks import record
from tokenlab.attention.stats import attention_stats

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def _impls(m) -> list:
    return [c._attn_implementation for c in lm_configs(m)] + [getattr(m.config, "vision_config", m.config)._attn_implementation]


def _hooks(m) -> int:
    return sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in m.modules())


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2", "llava"])
def test_statistics_inside_a_kv_policy_inside_relu_attention(model_type):
    "ReLU attention on, a KV received-attention observer open, attention_stats open, one forward: every observer sees every layer, the output is the ReLU model's, and everything unwinds in order."
    m = tiny_model(model_type, seed=2)
    inp = tiny_inputs(m, n_text=10, seed=1)
    with torch.no_grad(): m(**inp)                          # transformers adds its own output-capturing hooks on the first call
    L, before, base_hooks = Adapter(m).n_layers, _impls(m), _hooks(m)
    wrapped = hooks.observed_name(RELU_ATTENTION)
    with torch.no_grad(), use_attention(m, RELU_ATTENTION):
        relu_out = m(**inp).logits
        received = []
        with received_attention_hook(m, lambda l, r: received.append((l, tuple(r.shape)))):
            with attention_stats(m) as st:
                out = m(**inp).logits
                assert len(observers(m)) == 2 * L and attention_implementation(m) == RELU_ATTENTION
            assert attention_implementation(m) == RELU_ATTENTION and lm_configs(m)[0]._attn_implementation == wrapped
            assert len(observers(m)) == L and _hooks(m) == base_hooks           # stats' pre-hook is gone, the KV observer stays
        assert lm_configs(m)[0]._attn_implementation == RELU_ATTENTION and not observers()
    assert _impls(m) == before and not observers() and _hooks(m) == base_hooks
    assert [l for l, _ in received] == list(range(L)) and sorted(st.n_queries) == list(range(L))
    assert st.fused_layers == [] and set(st.kernels.values()) == {RELU_ATTENTION}   # the fused path never replaces a non-softmax kernel
    assert torch.equal(out, relu_out)
    with torch.no_grad(): assert not torch.allclose(m(**inp).logits, relu_out, atol=1e-3)   # and SDPA is back


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "qwen2_vl"])
@pytest.mark.parametrize("where", ["observer", "layer"])
def test_everything_restored_after_an_exception_mid_forward(model_type, where):
    "An observer, or a layer, raising in layer 1 with every kind of context open: no hooks, no observers, every implementation as it was."
    m = tiny_model(model_type, seed=0)
    inp = tiny_inputs(m, n_text=8)
    with torch.no_grad(): m(**inp)                          # transformers adds its own output-capturing hooks on the first call
    before, base_hooks = _impls(m), _hooks(m)
    def boom_observer(call):
        if call.layer == 1: raise RuntimeError("boom")
    def boom_layer(mod, args, out): raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with use_attention(m, "eager"), record(m), received_attention_hook(m, lambda l, r: None), \
                attention_stats(m), forward_hooks() as hk, observe(m, boom_observer if where == "observer" else (lambda c: None)):
            if where == "layer": hk.forward(Adapter(m).layer(1), boom_layer)
            assert _hooks(m) > base_hooks and observers(m)
            m(**inp)
    assert _impls(m) == before and not observers() and _hooks(m) == base_hooks
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in Adapter(m).layers)


def test_two_models_observed_at_once_do_not_interfere():
    a, b = tiny_model("llama", seed=1), tiny_model("llama", seed=2)
    x = tiny_inputs(a, n_text=7)["input_ids"]
    with torch.no_grad():
        alone_a, alone_b = collect_first(a, x), collect_first(b, x, layers=[1])
        with attention_stats(a) as sa, attention_stats(b, layers=[1]) as sb:
            a(x); b(x)
    assert sorted(sa.n_queries) == [0, 1] and sorted(sb.n_queries) == [1]
    assert torch.equal(sa.first_mass[1], alone_a) and torch.equal(sb.first_mass[1], alone_b)
    assert not torch.equal(alone_a, alone_b) and not observers()


def collect_first(m, x, layers=None):
    with attention_stats(m, layers) as st: m(x)
    return st.first_mass[1]


def test_switching_inside_an_observer_keeps_observing():
    "use_attention inside observe changes only the wrapper's inner kernel; the observer keeps seeing every call."
    m = tiny_model("llama")
    x = tiny_inputs(m, n_text=6)["input_ids"]
    inner = []
    with torch.no_grad(), observe(m, lambda c: inner.append(c.inner)):
        m(x)
        with use_attention(m, "eager"):
            assert m.config._attn_implementation == "tokenlab_observe_eager"
            m(x)
        assert m.config._attn_implementation == "tokenlab_observe_sdpa"
        with pytest.raises(TokenlabError, match="being observed"): set_attention(m, "eager")
    assert inner == ["sdpa", "sdpa", "eager", "eager"] and m.config._attn_implementation == "sdpa"


def test_bad_names_are_one_line():
    m = tiny_model("llama")
    for fn, msg in [(lambda: use_attention(m, "nope").__enter__(), r"unknown attention implementation 'nope'; valid: eager, "),
                    (lambda: set_attention(m, hooks.observed_name("sdpa")), r"unknown attention implementation 'tokenlab_observe_sdpa'"),
                    (lambda: register_attention("relu", lambda *a, **k: None), r"'tokenlab_relu' is already registered"),
                    (lambda: observe(m, print, layers=[]).__enter__(), "no layers asked"),
                    (lambda: observe(m, print, layers=[5]).__enter__(), r"layer 5 out of range")]:
        with pytest.raises(TokenlabError, match=msg) as e: fn()
        assert "\n" not in str(e.value)
    assert m.config._attn_implementation == "sdpa" and not observers()


def test_one_registration_point():
    "Nothing in the package but tokenlab.models.hooks registers attention functions or switches implementations."
    pattern = re.compile(r"AttentionInterface\.register|AttentionMaskInterface\.register|_attn_implementation(_internal)?\s*=[^=]|set_attn_implementation\(")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "tokenlab").rglob("*.py")) if p.name != "hooks.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders
