"""Bigram-Backcopy task and ReLU attention selected by name."""
from __future__ import annotations
import math
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from tokenlab.lab.core import TokenlabError
from tokenlab.attention.backcopy import (BigramBackcopy, trigger_accuracy, relu_attention_forward,
                                         register_relu_attention, RELU_ATTENTION)
from tokenlab.models.trainer import tiny_llama

torch.set_num_threads(1)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.integers(5, 40), st.integers(1, 3), st.integers(3, 30), st.integers(0, 1000), st.integers(0, 1000))
def test_every_sample_follows_the_rules(V, k, T, seed, gseed):
    task = BigramBackcopy(V, n_triggers=k, seed=seed)
    x = task.sample(8, T, generator=gseed)
    assert x.shape == (8, T) and (x[:, 0] == task.bos).all() and ((x[:, 1:] >= 0) & (x[:, 1:] < V)).all()
    assert len(task.triggers) == k and not task.is_trigger[x[:, 1]].any()
    for t in range(1, T - 1):
        trig = task.is_trigger[x[:, t]]
        assert (x[trig, t + 1] == x[trig, t - 1]).all()
        assert (task.P[x[~trig, t], x[~trig, t + 1]] > 0).all()
    nll = task.optimal_nll(x)
    assert nll.shape == (8, T - 1) and torch.isfinite(nll).all() and (nll >= 0).all()
    assert (nll[:, 1:][task.is_trigger[x[:, 1:-1]]] == 0).all()


def test_triggers_are_the_most_frequent_tokens_of_the_chain():
    task = BigramBackcopy(32, seed=4)
    assert torch.allclose(task.pi @ task.P, task.pi, atol=1e-10) and task.pi.sum().item() == pytest.approx(1)
    assert task.pi[task.triggers].min() >= task.pi[~task.is_trigger[:-1]].max()


def test_seeded_and_errors():
    a, b = BigramBackcopy(16, seed=1), BigramBackcopy(16, seed=1)
    assert torch.equal(a.P, b.P) and torch.equal(a.sample(3, 9, 5), b.sample(3, 9, 5))
    assert not torch.equal(a.P, BigramBackcopy(16, seed=2).P)
    with pytest.raises(TokenlabError): BigramBackcopy(3, n_triggers=3)
    with pytest.raises(TokenlabError): a.sample(2, 2)


def test_optimal_nll_is_the_chain_probability():
    task = BigramBackcopy(10, seed=0)
    x = task.sample(1, 12, generator=0)[0]
    lp = math.log(task.start[x[1]])
    for t in range(1, 11):
        lp += 0.0 if task.is_trigger[x[t]] else math.log(task.P[x[t], x[t + 1]])
    assert task.optimal_nll(x[None]).sum().item() == pytest.approx(-lp, rel=1e-9)


def test_trigger_accuracy():
    task = BigramBackcopy(12, seed=0)
    x = task.sample(50, 20, generator=0)
    oracle = torch.nn.functional.one_hot(torch.cat([x[:, 1:], x[:, :1]], 1), task.n_tokens).float()
    assert trigger_accuracy(oracle, x, task) == 1.0
    wrong = torch.nn.functional.one_hot(x, task.n_tokens).float()       # predicts the current token
    assert trigger_accuracy(wrong, x, task) == pytest.approx((x[:, :-1] == x[:, 1:])[task.trigger_mask(x)[:, :-1]].float().mean().item())


def test_relu_attention_function_known_values():
    q = torch.tensor([[[[1.0], [1.0], [-1.0]]]])                         # (B=1, H=1, q=3, d=1)
    k = torch.tensor([[[[2.0], [-1.0], [1.0]]]])
    v = torch.tensor([[[[1.0], [10.0], [100.0]]]])
    out, w = relu_attention_forward(torch.nn.Module(), q, k, v, None, scaling=1.0)
    assert torch.allclose(w[0, 0], torch.tensor([[2.0, 0, 0], [1.0, 0, 0], [0, 1 / 3, 0]]))
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([2.0, 1.0, 10 / 3]))
    mask = torch.zeros(1, 1, 3, 3); mask[..., 1:, 0] = torch.finfo(torch.float32).min     # hide key 0 from queries 1, 2
    mask = mask + torch.triu(torch.full((3, 3), torch.finfo(torch.float32).min), 1)
    _, w2 = relu_attention_forward(torch.nn.Module(), q, k, v, mask, scaling=1.0)
    assert torch.allclose(w2[0, 0], torch.tensor([[2.0, 0, 0], [0, 0, 0], [0, 1 / 2, 0]]))


def test_relu_selectable_by_name_without_touching_other_models():
    assert register_relu_attention() == RELU_ATTENTION
    from transformers import LlamaConfig, LlamaForCausalLM
    soft = tiny_llama(30, d_model=16, n_layers=2, n_heads=2, seed=0)
    ids = torch.randint(0, 30, (2, 9), generator=torch.Generator().manual_seed(0))
    before = soft(ids).logits
    cfg = LlamaConfig(**{**soft.config.to_dict(), "attn_implementation": RELU_ATTENTION})
    relu = LlamaForCausalLM(cfg).eval(); relu.load_state_dict(soft.state_dict())
    assert relu.config._attn_implementation == RELU_ATTENTION and soft.config._attn_implementation == "sdpa"
    out = relu(ids, output_attentions=True)
    assert not torch.allclose(out.logits, before, atol=1e-3)
    w = out.attentions[1]
    assert (w >= 0).all() and (w.triu(1) == 0).all()
    assert torch.allclose(soft(ids).logits, before)                          # the softmax model is unchanged
    # selecting by name on an existing model gives the same result as the config route: through tokenlab's hooks,
    # for a block of code or for good, and through transformers' own setter (it is a registered implementation)
    from tokenlab.models.hooks import set_attention, use_attention
    with use_attention(soft, RELU_ATTENTION): assert torch.allclose(soft(ids).logits, out.logits, atol=1e-6)
    assert soft.config._attn_implementation == "sdpa"
    other = tiny_llama(30, d_model=16, n_layers=2, n_heads=2, seed=0)
    other.set_attn_implementation(RELU_ATTENTION)
    assert torch.allclose(other(ids).logits, out.logits, atol=1e-6)
    set_attention(soft, RELU_ATTENTION)
    assert torch.allclose(soft(ids).logits, out.logits, atol=1e-6)
    # and it trains: gradients flow through relu attention
    soft.train(); loss = soft(ids, labels=ids).loss; loss.backward()
    assert soft.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
