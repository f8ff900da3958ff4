"""KV-cache policies: exactness of the streaming evaluator, budgets, what each policy keeps, clear errors."""
from __future__ import annotations
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from transformers import LlamaConfig, LlamaForCausalLM
from tokenlab.lab.core import TokenlabError
from tokenlab.attention.kvcache import (POLICIES, KVPolicy, PolicyCache, make_policy, stream_nll, received_attention_hook,
                                        separator_ids, sliding_windows)
from tokenlab.models.hooks import AttentionCall, observe, observers
from tokenlab.models.tiny import tiny_model
from tokenlab.models.trainer import tiny_llama, sequence_nll

torch.set_num_threads(1)
SEP = [1, 2, 3, 4, 5]
STATIC = ["window", "sink", "sepllm"]


def kw(name): return {"separators": SEP} if name == "sepllm" else {}
SLIDING = ["mistral", "qwen2", "gemma2", "gemma3_text"]        # tiny configs: sliding_window=4, some or all layers


@pytest.fixture(scope="module")
def model():
    return tiny_llama(50, d_model=32, n_layers=2, n_heads=4, max_len=128, seed=0)


@pytest.fixture(scope="module")
def stream():
    return torch.randint(0, 50, (40,), generator=torch.Generator().manual_seed(0))


def gqa_llama(attn="sdpa"):
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, attn_implementation=attn)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def test_full_policy_streamed_token_by_token_equals_one_forward(model, stream):
    full = sequence_nll(model, stream)[0]
    got = stream_nll(model, stream, "full", prefill=False, progress=False)
    assert got.shape == (len(stream) - 1,) and (got - full).abs().max() < 1e-4


@pytest.mark.parametrize("name", list(POLICIES))
def test_budget_covering_the_stream_equals_full(model, stream, name):
    "Window and sink at budget = length; SepLLM's recent part must cover the stream too (budget - 4 - budget//16)."
    full = sequence_nll(model, stream)[0]
    budget = len(stream) if name != "sepllm" else 2 * len(stream)
    for prefill in (False, True):
        got = stream_nll(model, stream, name, budget, prefill=prefill, progress=False, **kw(name))
        assert (got - full).abs().max() < 1e-4
    if name == "sepllm":   # at budget = length its fixed capacities already drop old non-separators
        assert (stream_nll(model, stream, name, len(stream), progress=False, **kw(name)) - full).abs().max() > 1e-4


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", STATIC)
def test_chunks_equal_token_by_token_with_gqa(attn, name):
    m = gqa_llama(attn)
    ids = torch.randint(0, 50, (36,), generator=torch.Generator().manual_seed(3))
    one = stream_nll(m, ids, name, 9, prefill=False, progress=False, **kw(name))
    for chunk in (2, 5, 16):
        assert (stream_nll(m, ids, name, 9, chunk=chunk, progress=False, **kw(name)) - one).abs().max() < 1e-4


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(list(POLICIES)), budget=st.integers(5, 20), chunk=st.integers(1, 7), seed=st.integers(0, 99))
def test_cache_never_exceeds_the_budget(model, name, budget, chunk, seed):
    ids = torch.randint(0, 50, (30,), generator=torch.Generator().manual_seed(seed))
    chunk = 1 if name == "h2o" else chunk
    after = []
    def on_step(a, b, cache):
        after.append(max(len(L) for L in cache.layers))
    nll = stream_nll(model, ids, name, budget, chunk=chunk, progress=False, on_step=on_step, **kw(name))
    assert torch.isfinite(nll).all()
    if name == "full": assert max(after) == len(ids)
    else: assert max(after) <= budget
    if name in STATIC:   # every query attends to at most `budget` keys (the mask hides what a chunk still holds)
        for pol_keys in _keys_per_query(model, ids, name, budget, chunk): assert pol_keys <= budget


def _keys_per_query(model, ids, name, budget, chunk):
    "Number of keys each query sees, from the masks `prepare` returns (None = causal over the cache)."
    cache = PolicyCache(make_policy(name, budget, **kw(name)), 2)
    out, bounds = [], [0, *range(min(budget, len(ids)), len(ids), chunk), len(ids)]
    with torch.no_grad():
        for a, b in zip(bounds[:-1], bounds[1:]):
            pos = torch.arange(a, b)
            mask = cache.prepare(ids[a:b], pos)
            model(input_ids=ids[None, a:b], position_ids=pos[None], attention_mask=mask, past_key_values=cache)
            n = len(cache.layers[0])
            if mask is None: out += [n - (b - a) + i + 1 for i in range(b - a)]
            else: out += (mask[0, 0] == 0).sum(-1).tolist()
            cache.trim()
    return out


def test_sink_keeps_exactly_the_first_four_positions(model, stream):
    starts = []
    _, cache = stream_nll(model, stream, "sink", 12, progress=False, return_cache=True,
                          on_step=lambda a, b, c: starts.append(c.positions(0)[0, :4].tolist()))
    assert all(s == [0, 1, 2, 3] for s in starts)
    assert cache.positions(1).tolist() == [[0, 1, 2, 3, *range(32, 40)]] * 4
    _, win = stream_nll(model, stream, "window", 12, progress=False, return_cache=True)
    assert win.positions(0).tolist() == [list(range(28, 40))] * 4


def test_sepllm_keeps_initial_separators_and_recent(model):
    ids = torch.tensor([10, 11, 12, 13, 1, 20, 21, 2, 22, 23, 24, 25, 26, 27, 28, 29])
    _, cache = stream_nll(model, ids, "sepllm", 8, progress=False, return_cache=True, separators=[1, 2], n_sep=2)
    assert cache.positions(0)[0].tolist() == [0, 1, 2, 3, 4, 7, 14, 15]


def test_h2o_keeps_the_heaviest_hitters_by_hand():
    pol = make_policy("h2o", 6)
    pos = torch.arange(9)[None].expand(2, -1)
    scores = torch.tensor([[0.1, 5.0, 0.2, 4.0, 3.0, 0.3, 0.0, 9.0, 9.0],
                           [7.0, 0.1, 6.0, 0.2, 0.3, 8.0, 0.0, 0.0, 0.0]])
    assert pol.select(pos, pos, scores).tolist() == [[1, 3, 4, 6, 7, 8], [0, 2, 5, 6, 7, 8]]


def test_h2o_eviction_follows_the_accumulated_attention():
    "One eviction at token B: the kept older entries are the top B//2 of attention summed over the first B queries."
    m, B = gqa_llama("eager"), 10
    ids = torch.randint(0, 50, (B + 1,), generator=torch.Generator().manual_seed(5))
    with torch.no_grad(): att = m(ids[None, :B], output_attentions=True).attentions
    _, cache = stream_nll(m, ids, "h2o", B, prefill=False, progress=False, return_cache=True)
    n_recent = B - B // 2
    for layer in range(2):
        received = att[layer][0].sum(1).view(2, 2, B).sum(1)                       # (Hkv, B)
        heavy = received[:, :B + 1 - n_recent].topk(B // 2, dim=1).indices.sort(dim=1).values
        want = torch.cat([heavy, torch.arange(B + 1 - n_recent, B + 1).expand(2, -1)], 1)
        assert torch.equal(cache.positions(layer), want)
    assert m.config._attn_implementation == "eager"


def test_received_attention_hook_is_removed_on_exit_and_on_error(model, stream):
    assert model.config._attn_implementation == "sdpa"
    def boom(a, b, cache):
        if a > 20: raise RuntimeError("stop")
    with pytest.raises(RuntimeError, match="stop"):
        stream_nll(model, stream, "h2o", 8, progress=False, on_step=boom)
    assert model.config._attn_implementation == "sdpa" and not observers()
    # two hooks on one model nest (the old kvcache.attention_stats refused this with "already active"): both see every layer
    outer, inner = [], []
    with torch.no_grad(), received_attention_hook(model, lambda l, r: outer.append(l)):
        with received_attention_hook(model, lambda l, r: inner.append(l)): model(stream[None, :6])
        model(stream[None, :6])
    assert inner == [0, 1] and outer == [0, 1, 0, 1]
    assert model.config._attn_implementation == "sdpa" and not observers()
    full = sequence_nll(model, stream)[0]
    assert (stream_nll(model, stream, "full", 8, prefill=False, progress=False) - full).abs().max() < 1e-4


@pytest.mark.parametrize("call, msg", [
    (lambda m, s: stream_nll(m, s, "window", 4), "budget must be an integer >= 5 (4 sink tokens + 1 recent), got 4"),
    (lambda m, s: stream_nll(m, s, "sink", None), "budget must be an integer >= 5 (4 sink tokens + 1 recent), got None"),
    (lambda m, s: stream_nll(m, s, "streaming", 8), "unknown KV policy name 'streaming'; valid KV policy names: full, h2o, sepllm, sink, window"),
    (lambda m, s: stream_nll(m, [], "sink", 8), "need a 1-D stream of at least 2 token ids, got shape (0,)"),
    (lambda m, s: stream_nll(m, torch.tensor([], dtype=torch.long), "full"), "need a 1-D stream of at least 2 token ids, got shape (0,)"),
    (lambda m, s: stream_nll(m, s.float(), "sink", 8), "token ids must be integers, got torch.float32"),
    (lambda m, s: stream_nll(m, s, "h2o", 8, chunk=2), "policy 'h2o' depends on attention: use chunk=1"),
    (lambda m, s: stream_nll(m, s, "sink", 8, chunk=0), "chunk must be an integer >= 1, got 0"),
    (lambda m, s: stream_nll(m, s, "sepllm", 8), "policy 'sepllm' needs separator token ids: pass separators=separator_ids(tokenizer)"),
    (lambda m, s: stream_nll(m, torch.zeros(129, dtype=torch.long), "sink", 8),
     "a stream of 129 tokens is longer than the model's context (128); positions are kept, not re-numbered"),
])
def test_bad_inputs_give_one_clear_line(model, stream, call, msg):
    with pytest.raises(TokenlabError) as e: call(model, stream)
    assert str(e.value) == msg and "\n" not in str(e.value)


def test_custom_policy_through_the_base_class(model, stream):
    class EveryOther(KVPolicy):
        name = "every_other"
        def keep_mask(self, pos, ids, scores):
            return (pos % 2 == 0) | (pos == pos.max())
    pol = EveryOther(10 ** 6)
    _, cache = stream_nll(model, stream, pol, progress=False, chunk=5, return_cache=True)
    assert cache.positions(0)[0].tolist() == [*range(0, 40, 2), 39]


def test_separator_ids_on_a_real_tokenizer():
    from tokenlab.lab.assets import smollm2_path
    try: path = smollm2_path()
    except Exception as e: pytest.skip(f"SmolLM2 not fetched: {e}")
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    sep = separator_ids(tok)
    for s in (".", ",", "\n", "?", "\n\n", " "):
        assert tok.token_to_id(s.replace(" ", "Ġ").replace("\n", "Ċ")) in sep
    assert tok.token_to_id("the") not in sep and 50 < len(sep) < 1000


def test_kv_hook_leaves_other_registrations_alone():
    # regression: kvcache once registered "tokenlab_stats_eager", overwriting attnstats' function of that name,
    # after which sinks.collect(attention="full") saw no layers. Now one wrapper serves every observer.
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from tokenlab.models import hooks
    from tokenlab.attention.sinks import collect
    m = tiny_llama(30, d_model=16, n_layers=2, n_heads=2, seed=0, attn="eager")
    ids = torch.arange(12)[None]
    with torch.no_grad(), received_attention_hook(m, lambda l, r: None): m(ids)
    for inner in ("sdpa", "eager"):
        assert ALL_ATTENTION_FUNCTIONS[hooks.observed_name(inner)] is hooks.observed_attention, inner
    si = collect(tiny_llama(30, d_model=16, n_layers=2, n_heads=2, seed=0), ids, attention="full")
    assert si.alpha.shape == (1, 2, 2, 12)


def _visible_keys(call: AttentionCall) -> int:
    "The most keys any query of an attention call can see, from the mask it gets (None: causal over the cache)."
    m, (Q, K) = call.attention_mask, (call.query.shape[2], call.key.shape[2])
    if m is None: return K
    allowed = m[..., :K] if m.dtype == torch.bool else m[..., :K] > torch.finfo(m.dtype).min / 2
    return int(allowed.sum(-1).max())


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
@pytest.mark.parametrize("name", POLICIES.names())
def test_every_registered_policy_keeps_its_budget_and_equals_token_by_token(name, model_type):
    "Built from its registry entry's `example`: no query sees more than the budget, no cache holds more after a step, and chunked feeding (or prefill) equals token-by-token feeding."
    m = tiny_model(model_type, seed=1)
    ids = torch.randint(1, 100, (36,), generator=torch.Generator().manual_seed(2))
    example, B = POLICIES.entry(name).extra["example"], 12
    one = stream_nll(m, ids, make_policy(name, B, **example), prefill=False, progress=False)
    keys, sizes = [], []
    with observe(m, lambda call: keys.append(_visible_keys(call))):
        pol = make_policy(name, B, **example)
        got = stream_nll(m, ids, pol, chunk=1 if pol.needs_scores else 5, progress=False,
                         on_step=lambda a, b, c: sizes.append(max(len(L) for L in c.layers)))
    assert (got - one).abs().max() < 1e-5, float((got - one).abs().max())
    if name == "full": assert max(sizes) == len(ids)
    else: assert max(sizes) <= B and max(keys) <= B, (max(sizes), max(keys))
    assert not observers() and m.config._attn_implementation in ("sdpa", "eager")


@pytest.mark.parametrize("model_type", SLIDING)
def test_sliding_window_models_chunks_equal_token_by_token(model_type):
    "Layers with a sliding window smaller than the budget: chunks of 8 see what token-by-token feeding sees (once 0.9-1.9 nats apart)."
    m = tiny_model(model_type, seed=1)
    assert any(w == 4 for w in sliding_windows(m)), sliding_windows(m)
    ids = torch.randint(1, 100, (40,), generator=torch.Generator().manual_seed(0))
    full = sequence_nll(m, ids)[0]
    assert (stream_nll(m, ids, "full", chunk=1, prefill=False, progress=False) - full).abs().max() < 1e-5
    for name in ("full", "window", "sink", "sepllm"):
        kw_ = {"separators": list(range(1, 30))} if name == "sepllm" else {}
        one = stream_nll(m, ids, name, 16, chunk=1, prefill=False, progress=False, **kw_)
        eight = stream_nll(m, ids, name, 16, chunk=8, progress=False, **kw_)
        assert (eight - one).abs().max() < 1e-5, (model_type, name, float((eight - one).abs().max()))
    # a budget covering the stream evicts nothing: the window policy is then one plain forward, sliding layers included
    assert (stream_nll(m, ids, "window", 40, chunk=8, progress=False) - full).abs().max() < 1e-5


@pytest.mark.parametrize("model_type", SLIDING)
def test_sliding_window_is_over_positions_not_cache_slots(model_type):
    "Sink policy at budget 5 (4 sinks + 1 recent) with W = 4: a sliding layer sees the sinks less than 4 positions back, then only the current token."
    m = tiny_model(model_type, seed=0)
    ids = torch.randint(1, 100, (24,), generator=torch.Generator().manual_seed(1))
    sliding = [l for l, w in enumerate(sliding_windows(m)) if w]
    seen = []
    def count(call):
        if call.layer in sliding and call.query.shape[2] == 1 and call.key.shape[2] == 5: seen.append(_visible_keys(call))
    with observe(m, count): one = stream_nll(m, ids, "sink", 5, chunk=1, prefill=False, progress=False)
    want = [1 + sum(t - p < 4 for p in range(4)) for t in range(4, 24) for _ in sliding]   # 4, 3, 2, 1, 1, ...
    assert seen == want, seen                    # transformers' own sliding mask counts cache slots: 4 keys every step
    assert (stream_nll(m, ids, "sink", 5, chunk=8, progress=False) - one).abs().max() < 1e-5


def test_h2o_on_a_sliding_window_it_cannot_express_is_refused():
    "H2O evicts per head, so sliding layers get transformers' own mask over cache slots: exact only with a large enough recent part."
    m = tiny_model("mistral", seed=0, sliding_window=8)
    ids = torch.randint(1, 100, (30,), generator=torch.Generator().manual_seed(0))
    with pytest.raises(TokenlabError, match="sliding window of layer 0 .8."):
        stream_nll(m, ids, "h2o", 6, progress=False)                 # 3 recent entries < W - 1 = 7
    assert not observers() and m.config._attn_implementation == "sdpa"
    nll = stream_nll(m, ids, "h2o", 16, progress=False)              # 8 recent entries >= 7: exact
    assert torch.isfinite(nll).all()
