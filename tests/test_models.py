"""The model adapter: every tiny architecture builds, runs, and its table entry resolves to modules of the right shapes."""
from __future__ import annotations
import pytest, torch
from tokenlab.lab.core import TokenlabError
from tokenlab.models.arch import MODELS, Adapter, model_spec
from tokenlab.models.tiny import TINY_TYPES, IMG, check_adapter, tiny_config, tiny_inputs, tiny_model
from tokenlab.models.loading import load_model

torch.set_num_threads(1)


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_tiny_architecture_adapter(model_type):
    m = tiny_model(model_type, seed=1)
    assert m.config.model_type == model_type and not m.training
    ad = check_adapter(m)
    assert ad.n_layers == 2 and ad.head_dim == 8 and ad.hidden_size == 32
    assert ad.n_heads == 4 and ad.n_kv_heads == (4 if model_type in ("gpt2", "gpt_neox") else 2)
    assert ad.is_vlm == model_spec(model_type).is_vlm


def test_at_least_the_required_architectures():
    need = {"gpt2", "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "gpt_neox", "olmo2",
            "granite", "llava", "qwen2_vl"}
    assert need <= set(TINY_TYPES) and len({t for t in TINY_TYPES if model_spec(t).is_vlm}) >= 3
    assert set(TINY_TYPES) <= set(MODELS)


def test_tiny_model_is_seeded():
    a, b, c = tiny_model("qwen2", seed=3), tiny_model("qwen2", seed=3), tiny_model("qwen2", seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))


def test_distinctive_features_switched_on():
    assert tiny_config("gemma2").attn_logit_softcapping == 2.0 and tiny_config("mistral").sliding_window == 4
    assert tiny_config("qwen2").layer_types == ["full_attention", "sliding_attention"]
    assert tiny_config("mixtral").num_local_experts == 4
    assert tiny_config("llava").text_config.num_hidden_layers == 2


def test_errors_are_one_line():
    with pytest.raises(TokenlabError, match="unknown architecture 'bert'.*gpt2"): model_spec("bert")
    with pytest.raises(TokenlabError, match="unknown model type 'no-such-model'"): tiny_config("no-such-model")
    assert tiny_config("bert").hidden_size == 32                       # any type gets a generic tiny config
    ad = Adapter(tiny_model("gpt2"))
    with pytest.raises(TokenlabError, match=r"layer 5 out of range; gpt2 model has 2 layers \(0..1\)"): ad.mlp(5)
    with pytest.raises(TokenlabError, match="head -1 out of range"): ad.head_index(-1)
    with pytest.raises(TokenlabError, match="no image tokens"): ad.image_token_span(torch.tensor([1, 2]))
    with pytest.raises(TokenlabError, match="cannot load a model config"): load_model("/nonexistent/x")


def test_image_token_span_and_mask():
    ad = Adapter(tiny_model("qwen2_vl"))
    ids = tiny_inputs(ad, n_text=6, batch=2)["input_ids"]
    assert ad.image_token_span(ids) == [(4, 8), (4, 8)] and int(ad.image_token_mask(ids).sum()) == 8
    with pytest.raises(TokenlabError, match="no image token"): ad.image_token_span(torch.tensor([1, 2, 3]))
    with pytest.raises(TokenlabError, match="contiguous"): ad.image_token_span(torch.tensor([IMG, 3, IMG]))


def test_gpt2_fused_projection_and_tied_paths():
    ad = Adapter(tiny_model("gpt2"))
    assert ad.qkv_fused and ad.q_proj(0) is ad.k_proj(0) is ad.v_proj(0) and ad.final_norm is ad.model.transformer.ln_f


def test_smollm2_loads_with_sdpa_and_safetensors():
    try: m = load_model()
    except TokenlabError as e: pytest.skip(str(e))
    ad = Adapter(m)
    assert (ad.n_layers, ad.n_heads, ad.n_kv_heads, ad.head_dim) == (30, 9, 3, 64)
    assert m.config._attn_implementation == "sdpa" and not m.training


def test_every_layer_is_checked():
    "A table type whose layer 1 differs (hybrid layer, MQA projection, cross-attention) is refused naming the layer."
    m = tiny_model("llama")
    m.model.layers[1].self_attn.k_proj = torch.nn.Linear(32, 8, bias=False)
    with pytest.raises(TokenlabError, match=r"in layer 1: q/k/v/o widths \(32, 8, 16, 32, 32\) do not fit"): Adapter(m)
    m = tiny_model("llama")
    m.model.layers[1].self_attn = torch.nn.Identity()
    with pytest.raises(TokenlabError, match="in layer 1: .*q_proj"): Adapter(m)
    m = tiny_model("llama")
    m.model.layers[0].cross_attn = torch.nn.Linear(2, 2)
    with pytest.raises(TokenlabError, match="in layer 0: it has cross-attention"): Adapter(m)
    m = tiny_model("qwen2_vl")
    del m.model.visual
    with pytest.raises(TokenlabError, match="does not match the 'qwen2_vl' table entry: .*visual"): Adapter(m)


def test_refusals_say_why():
    from tokenlab.models.arch import REFUSED
    cases = {"mamba": "no softmax self-attention module", "opt": "its MLP is not one module", "marian": "cross-attention",
             "minicpm3": "latent attention", "olmo_hybrid": "decoder layers of different kinds", "bert": "an encoder",
             "gpt_oss": REFUSED["gpt_oss"], "kimi_linear": "linear attention"}
    for mt, why in cases.items():
        m = tiny_model(mt, device="meta")
        with pytest.raises(TokenlabError) as e: Adapter(m)
        assert why in str(e.value) and "\n" not in str(e.value), (mt, str(e.value))
