"""tokenlab.pruning: properties of every registered pruner (hypothesis), hostile parameters, and the sites on the tiny
llava, qwen2_vl and idefics3 VLMs (ratio 1.0 bit for bit, kept counts, determinism, no hook left)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from PIL import Image

from tokenlab.lab.core import TokenlabError
from tokenlab.pruning import PRUNERS, make_pruner, n_keep, Signals, reduce_tokens, pruned, Prune, pruned_vit
from tokenlab.pruning.base import check_keep

ALL = sorted(PRUNERS)


def signals(B, N, D, g, grid=None):
    return Signals(received=torch.rand(B, N, generator=g), cls_attn=torch.rand(B, N, generator=g),
                   keys=torch.randn(B, N, 4, generator=g), key_norm=torch.rand(B, N, generator=g),
                   text=torch.randn(B, 3, D, generator=g), text_key_norm=torch.rand(B, 3, generator=g), grid=grid)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(ALL), side=st.integers(1, 6), B=st.integers(1, 3), D=st.integers(1, 6),
       frac=st.floats(0.01, 1.0), seed=st.integers(0, 2**31 - 1))
def test_every_pruner_returns_a_valid_reduction(name, side, B, D, frac, seed):
    N = side * side
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, D, generator=g)
    k = max(1, min(N, round(frac * N)))
    p = make_pruner(name)
    s = signals(B, N, D, g)
    red = p.reduce(x, k, s)
    assert red.k == p.count(N, k)
    assert (red.index.diff(dim=-1) >= 0).all() and red.index.min() >= 0 and red.index.max() < N
    if red.weight is None:                                          # a selection: distinct tokens
        assert all(len(set(r)) == k for r in red.index.tolist())
    else:                                                           # merges: every input token lands somewhere, weights >= 0
        assert (red.weight >= 0).all()
        if k >= 2: assert torch.equal((red.weight > 0).any(1), torch.ones(B, N, dtype=torch.bool))
        if name in ("tome", "visionzip") and k >= 2: assert torch.allclose(red.sizes().sum(-1), torch.full((B,), float(N)))
        if name == "pool": assert (red.sizes().sum(-1) >= N).all()      # adaptive pooling windows may overlap
    again = p.reduce(x, k, s)                                       # deterministic given the inputs and the seed
    assert torch.equal(red.index, again.index)
    assert reduce_tokens(x, red).shape == (B, red.k, D)


@settings(max_examples=60, deadline=None)
@given(r=st.floats(0.0, 1.0, exclude_min=True), n=st.integers(1, 5000))
def test_n_keep_bounds_and_monotone(r, n):
    k = n_keep(r, n)
    assert 1 <= k <= n and abs(k - r * n) <= 0.5 + 1e-9 or k == 1
    assert n_keep(min(1.0, r * 1.5), n) >= k


@pytest.mark.parametrize("bad", [0, -0.5, 1.0001, float("nan"), float("inf"), "0.5", None, True, [0.5]])
def test_bad_ratio_is_one_line(bad):
    with pytest.raises(TokenlabError, match="kept ratio") as e: n_keep(bad, 10)
    assert "\n" not in str(e.value)


def test_bad_counts_and_parameters():
    x = torch.randn(1, 9, 4)
    with pytest.raises(TokenlabError, match="cannot keep 10 of 9"): make_pruner("random").reduce(x, 10)
    with pytest.raises(TokenlabError, match="cannot keep 0 of 9"): check_keep(0, 9)
    with pytest.raises(TokenlabError, match="unknown parameter"): make_pruner("dart", pivots=3)
    with pytest.raises(TokenlabError, match="needs cls_attn"): make_pruner("cls").reduce(x, 3)
    with pytest.raises(TokenlabError, match="lam"): make_pruner("idpruner", lam=float("nan")).reduce(x, 3, Signals(cls_attn=torch.rand(1, 9)))
    with pytest.raises(TokenlabError, match="n_pivots"): make_pruner("dart", n_pivots=0).reduce(x, 3)
    with pytest.raises(TokenlabError, match="tokens must be"): make_pruner("random").reduce(torch.randn(9, 4), 3)
    with pytest.raises(KeyError): make_pruner("no-such-pruner")


# ---- sites on real VLM architectures (tiny, random-initialised) ----

@pytest.fixture(scope="module")
def vlms():
    from tokenlab.vision.vlm import tiny_vlms, VLM
    return {k: VLM(m, p) for k, (m, p) in tiny_vlms().items()}


def images(n=2):
    return [Image.fromarray(np.random.RandomState(i).randint(0, 255, (16, 16, 3), dtype=np.uint8)) for i in range(n)]


def n_hooks(m):
    return sum(len(x._forward_pre_hooks) + len(x._forward_hooks) for x in m.modules())


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "idefics3"])
def test_lm_site_on_each_architecture(vlms, arch):
    vlm = vlms[arch]
    ims = images()
    inputs = vlm.prepare(ims, ["describe the image .", "is there a red square ?"])
    with torch.no_grad(): ref = vlm.model(**inputs).logits
    h0 = n_hooks(vlm.model)
    with torch.no_grad(), pruned(vlm.model, "random", 1.0, site="lm", layer=1) as p:
        assert torch.equal(vlm.model(**p.inputs(inputs)).logits, ref)
    plain = vlm.caption(ims, max_new_tokens=5)
    for meth in ("random", "fastv", "dart", "divprune"):
        pr = Prune(meth, 0.5, site="lm", layer=1)
        caps = vlm.caption(ims, steer=pr, max_new_tokens=5)
        assert len(caps) == 2 and pr.records
        n_img = pr.records[0]["n_image"]
        assert pr.records[0]["kept"] == n_keep(0.5, n_img) and all(len(r) == n_keep(0.5, n_img) for r in pr.records[0]["index"])
    assert vlm.caption(ims, steer=Prune("random", 1.0, site="lm"), max_new_tokens=5) == plain
    assert n_hooks(vlm.model) == h0


@pytest.mark.parametrize("arch", ["llava", "idefics3"])
def test_vision_site_on_each_architecture(vlms, arch):
    vlm = vlms[arch]
    ims = images()
    h0 = n_hooks(vlm.model)
    for meth in ("random", "divprune", "tome", "pool"):
        pr = Prune(meth, 0.5, site="vision")
        caps = vlm.caption(ims, steer=pr, max_new_tokens=4)
        assert len(caps) == 2 and pr.records[0]["kept"] == make_pruner(meth).count(pr.records[0]["n_image"], n_keep(0.5, pr.records[0]["n_image"]))
    assert n_hooks(vlm.model) == h0


def test_vision_site_attention_methods_on_llava(vlms):
    vlm = vlms["llava"]
    for meth in ("cls", "visionzip", "idpruner"):
        pr = Prune(meth, 0.25, site="vision")
        vlm.caption(images(), steer=pr, max_new_tokens=3)
        assert pr.records[0]["kept"] == n_keep(0.25, pr.records[0]["n_image"])


def test_kept_set_is_deterministic_given_the_seed(vlms):
    vlm = vlms["llava"]
    ims = images()
    runs = []
    for seed in (1, 1, 2):
        pr = Prune("random", 0.5, site="vision", seed=seed)
        vlm.caption(ims, steer=pr, max_new_tokens=2)
        runs.append(pr.records[0]["index"])
    assert runs[0] == runs[1] and runs[0] != runs[2]
    torch.manual_seed(99)                                   # global random state does not matter
    pr = Prune("random", 0.5, site="vision", seed=1)
    vlm.caption(ims, steer=pr, max_new_tokens=2)
    assert pr.records[0]["index"] == runs[0]


def test_hostile_sites(vlms):
    llava, qwen = vlms["llava"].model, vlms["qwen2_vl"].model
    with pytest.raises(TokenlabError, match="M-RoPE"): pruned(qwen, "random", 0.5, site="vision").__enter__()
    with pytest.raises(TokenlabError, match="unknown site"): pruned(llava, "random", 0.5, site="tower").__enter__()
    with pytest.raises(TokenlabError, match="not at site 'lm'"): Prune("tome", 0.5, site="lm")(llava, {}).__enter__()
    with pytest.raises(TokenlabError, match="no \\[CLS\\] token"): Prune("cls", 0.5, site="vision")(vlms["idefics3"].model, {}).__enter__()
    with pytest.raises(TokenlabError, match="layer must be an integer"): pruned(llava, "random", 0.5, site="lm", layer=1.5).__enter__()
    from tokenlab.models.tiny import tiny_model
    with pytest.raises(TokenlabError, match="language model"): pruned(tiny_model("llama"), "random", 0.5).__enter__()
    inputs = vlms["llava"].prepare(images(1), ["describe the image ."])
    emb = llava.get_input_embeddings()(inputs["input_ids"])
    with pruned(llava, "random", 0.5, site="lm", layer=1):
        with pytest.raises(TokenlabError, match="input_ids"): llava(inputs_embeds=emb, attention_mask=inputs["attention_mask"])
    with pruned(llava, "random", 0.5, site="lm", layer=1):
        with pytest.raises(TokenlabError, match="no image tokens"):
            llava(input_ids=inputs["input_ids"][:, -3:], attention_mask=inputs["attention_mask"][:, -3:])


def test_vit_site_restores_the_model():
    from transformers import Dinov2Config, Dinov2Model
    torch.manual_seed(0)
    vit = Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=4)).eval()
    px = torch.randn(1, 3, 16, 16)
    with torch.no_grad(): ref = vit(pixel_values=px).last_hidden_state
    h0 = n_hooks(vit)
    with pytest.raises(ValueError):
        with pruned_vit(vit, "tome", 0.5, layer=0): raise ValueError("boom")
    assert n_hooks(vit) == h0
    with torch.no_grad(): assert torch.equal(vit(pixel_values=px).last_hidden_state, ref)


def test_bfloat16_sites_on_cpu():
    "The gpu profile's dtype: both sites in bfloat16 on the tiny llava (CPU), kept counts as in float32."
    from tokenlab.vision.vlm import tiny_vlms, VLM
    m, p = tiny_vlms()["llava"]
    vlm = VLM(m, p, dtype=torch.bfloat16)
    for meth, site, layer in (("dart", "lm", 1), ("fastv", "lm", 1), ("visionzip", "vision", 2), ("tome", "vision", 2)):
        pr = Prune(meth, 0.25, site=site, layer=layer)
        caps = vlm.caption(images(), steer=pr, max_new_tokens=3)
        assert len(caps) == 2 and pr.records[0]["kept"] == n_keep(0.25, pr.records[0]["n_image"])
