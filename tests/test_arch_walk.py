"""Every causal-LM and image-text model type of the installed transformers (issue 9 item 4): a tiny random model of the
type either passes the invariants the analyses rely on, or the adapter refuses it in one TokenlabError line. Never a
traceback, never a wrong number. Types whose tiny config cannot be built are skipped with the reason (QUARANTINES.md)."""
from __future__ import annotations
import dataclasses
import dataclasses
import pytest, torch
from tokenlab.lab.core import TokenlabError
from tokenlab.models.arch import MODELS, REFUSED, Adapter
from tokenlab.models.tiny import walk_types, tiny_model, tiny_inputs
from tokenlab.attention.sinks import collect
from tokenlab.attention.stats import max_eager_error
from tokenlab.models.hooks import observe

torch.set_num_threads(1)
ATOL = 1e-4


def _build(mt):
    try: return tiny_model(mt, seed=3)
    except TokenlabError as e: pytest.skip(f"not built: {e}")


def _values_seen_by_attention(m, ad, inputs) -> list:
    "Value states (B, H_kv, T, hd) as each attention call receives them (independent of the adapter's v projection)."
    got = []
    with torch.no_grad(), observe(m, lambda call: got.append(call.value.detach())): m(**inputs)
    return got


def check_invariants(mt, m, ad, inputs):
    "What test_arch_matrix checks on the hand-tuned types, for any supported type."
    L = ad.n_layers
    si = collect(m, inputs, attention="full")
    with torch.no_grad(): ref = m(**inputs, output_hidden_states=True)
    assert torch.allclose(si.logits, ref.logits, atol=1e-5), (mt, "logits")
    hs = ref.hidden_states
    assert torch.allclose(si.hidden[:, :L], torch.stack(hs[:L], 1), atol=1e-5), (mt, "residual stream")
    # attention and MLP updates are the whole residual update
    err = (si.hidden[:, 1:] - si.hidden[:, :-1] - si.attn_out - si.mlp_out).abs().max().item()
    assert err < ATOL, (mt, "residual decomposition", err)
    # statistics without the T x T tensor equal eager attention (and the logits do not move)
    assert max_eager_error(m, inputs) < ATOL, (mt, "statistics vs eager")
    lite = collect(m, inputs)
    seen = (si.attn > 0).sum(-2).clamp(min=1)
    assert torch.allclose(si.alpha, si.attn.sum(-2) / seen, atol=1e-5), (mt, "alpha from eager")
    assert torch.allclose(lite.alpha, si.alpha, atol=ATOL) and torch.allclose(lite.first_share, si.first_share, atol=ATOL), (mt, "stats alpha")
    # value norms are the values the attention function receives
    vals = _values_seen_by_attention(m, ad, inputs)
    assert len(vals) == L, (mt, "attention calls", len(vals))
    for l, v in enumerate(vals):
        assert torch.allclose(si.v_norm[:, l], v.float().norm(dim=-1), atol=1e-5), (mt, "values", l)
    # per-head output norms equal the masked o-projection: o(x with the other heads zeroed) - o(0)
    xs = {}
    hooks = [ad.o_proj(l).register_forward_pre_hook(lambda mod, a, l=l: xs.__setitem__(l, a[0].detach())) for l in range(L)]
    try:
        with torch.no_grad(): m(**inputs)
    finally:
        for h in hooks: h.remove()
    hd, mult = ad.head_dim, ad.residual_multiplier
    for l, x in xs.items():
        o = ad.o_proj(l)
        with torch.no_grad():
            base = o(torch.zeros_like(x))
            for h in range(ad.n_heads):
                xm = torch.zeros_like(x); xm[..., h * hd:(h + 1) * hd] = x[..., h * hd:(h + 1) * hd]
                want = (o(xm) - base).norm(dim=-1) * abs(mult)
                assert torch.allclose(si.head_out_norm[:, l, h], want, atol=ATOL, rtol=ATOL), (mt, "head norms", l, h)


@pytest.mark.parametrize("mt", walk_types())
def test_right_or_refused(mt):
    m = _build(mt)
    try:
        ad = Adapter(m)
    except TokenlabError as e:
        msg = str(e)
        assert msg and "\n" not in msg, msg
        assert getattr(m.config, "model_type", mt) not in MODELS or "language model" in msg, f"listed type refused: {msg}"
        with pytest.raises(TokenlabError) as e2:                  # the analyses refuse it the same way
            collect(m, torch.randint(1, 100, (1, 8)))
        assert "\n" not in str(e2.value)
        return
    check_invariants(mt, m, ad, tiny_inputs(m, n_text=20, batch=2, seed=4))


_TEXT_OF: dict = {}

def _text_types_of_walked_vlms() -> dict:
    "model_type of the language model inside each walked VLM of the table -> the VLM type (meta-device builds)."
    if not _TEXT_OF:
        for mt in walk_types():
            if mt in MODELS and MODELS[mt].is_vlm:
                _TEXT_OF.setdefault(tiny_model(mt, device="meta").config.get_text_config().model_type, mt)
    return _TEXT_OF


@pytest.mark.parametrize("name", MODELS.names())
def test_every_table_entry_is_walked(name):
    "The architecture registry's parametrised test: each row is a walked type or the language model of a walked VLM."
    assert name in walk_types() or name in _text_types_of_walked_vlms(), f"{name} is in the table but no walk reaches it"


@pytest.mark.parametrize("name", REFUSED.names())
def test_every_refusal_is_measured(name, monkeypatch):
    "Each REFUSED reason is what the adapter says, and with the row the type would have, an invariant really fails."
    m = tiny_model(name, seed=3)
    with pytest.raises(TokenlabError) as e: Adapter(m)
    assert REFUSED[name] in str(e.value) and "\n" not in str(e.value)
    entry = REFUSED.entry(name)
    monkeypatch.delitem(REFUSED._entries, name)
    monkeypatch.setitem(MODELS._entries, name, dataclasses.replace(entry, obj=entry.extra["layout"]))
    ad = Adapter(m)                                           # the structure alone would pass ...
    with pytest.raises((AssertionError, TokenlabError)):      # ... but the numbers would be wrong (or unobservable)
        check_invariants(name, m, ad, tiny_inputs(m, n_text=20, batch=2, seed=4))


def test_goal_at_least_40_types_supported():
    supported = [mt for mt in walk_types() if mt in MODELS]
    assert len(supported) >= 40, supported


def test_refused_reasons_are_listed_types_only():
    "REFUSED holds measured reasons for real types and never overlaps the table."
    assert not set(REFUSED) & set(MODELS)
    from transformers import CONFIG_MAPPING
    assert set(REFUSED) <= set(CONFIG_MAPPING)


def test_collect_refuses_layers_that_differ_from_their_row(monkeypatch):
    "A Gemma-2 checkpoint read with a plain pre-norm row (its post-norms ignored) would give wrong updates: refused."
    m = tiny_model("gemma2", seed=3)
    monkeypatch.setitem(MODELS._entries, "gemma2", dataclasses.replace(MODELS.entry("gemma2"), obj=MODELS["llama"]))
    with pytest.raises(TokenlabError, match=r"do not add up to the residual update in layer \d") as e:
        collect(m, torch.randint(1, 100, (1, 12)))
    assert "\n" not in str(e.value)
