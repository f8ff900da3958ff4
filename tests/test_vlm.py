"""VLM builders, the VLM wrapper on three architectures, training, and the zoo (tokenlab.vision.vlm / .train)."""
from __future__ import annotations
import numpy as np, PIL.Image, pytest, torch
from hypothesis import given, settings, strategies as st
from tokenlab.lab.core import TokenlabError
from tokenlab.vision.vlm import VLM, IMAGE_TOKEN, tiny_vlms, tiny_vlm, parts_vlm, word_tokenizer, pool_grid, image_pooling
from tokenlab.vision.train import train_tiny, train_projector, save_trained, load_trained, zoo_vlm, pairs

N_IMG = {"llava": 16, "qwen2_vl": 4, "idefics3": 4}


def squares(n, size=16, seed=0):
    "Stand-in data: one or two coloured squares on white with a plain-English caption."
    rng, cols = np.random.default_rng(seed), {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220)}
    for _ in range(n):
        a, picked = np.full((size, size, 3), 255, np.uint8), list(rng.choice(list(cols), int(rng.integers(1, 3)), replace=False))
        for j, c in enumerate(picked): a[size // 4: 3 * size // 4, j * size // 2: (j + 1) * size // 2] = cols[c]
        yield PIL.Image.fromarray(a), " and ".join(f"a {c} square" for c in picked) + "."


@pytest.fixture(scope="module")
def three():
    torch.manual_seed(0)
    return tiny_vlms()


@pytest.mark.parametrize("mt", ["llava", "qwen2_vl", "idefics3"])
def test_caption_ask_and_span(three, mt):
    vlm = VLM(*three[mt])
    imgs = [im for im, _ in squares(3)]
    caps = vlm.caption(imgs, max_new_tokens=4)
    assert len(caps) == 3 and all(isinstance(c, str) for c in caps)
    assert vlm.record["decoding"]["do_sample"] is False and vlm.record["decoding"]["max_new_tokens"] == 4
    ans = vlm.ask(imgs[0], ["is there a red square?", "is there a blue square?"])
    assert len(ans) == 2 and len(vlm.record["raw"]) == 2
    ids = vlm.prepare(imgs[:2], ["describe the image.", "is there a red square?"])["input_ids"]
    for (s, e), row in zip(vlm.adapter.image_token_span(ids), vlm.adapter.image_token_mask(ids)):
        assert e - s == int(row.sum()) == N_IMG[mt] and bool(row[s:e].all())
    assert [len(r) for r in vlm.adapter.image_token_runs(ids)] == [1, 1]


@pytest.mark.parametrize("mt", ["llava", "qwen2_vl", "idefics3"])
def test_greedy_is_deterministic_and_batch_independent(three, mt):
    vlm = VLM(*three[mt], batch_size=2)
    imgs = [im for im, _ in squares(3, seed=4)]
    assert vlm.caption(imgs, max_new_tokens=4) == vlm.caption(imgs, max_new_tokens=4)
    one = VLM(*three[mt], batch_size=1).caption(imgs, max_new_tokens=4)
    assert one == vlm.caption(imgs, max_new_tokens=4)


def test_bf16_and_static_cache(three):
    vlm = VLM(*tiny_vlm(three["llava"][1].tokenizer, image_size=16, patch_size=4, hidden=32, layers=2, heads=2),
              dtype=torch.bfloat16, static_cache=True)
    assert vlm.dtype == torch.bfloat16 and len(vlm.caption([im for im, _ in squares(2)], max_new_tokens=3)) == 2
    assert vlm.record["decoding"]["cache_implementation"] == "static"


def test_refusals(three):
    from transformers import LlamaConfig, LlamaForCausalLM
    model, proc = three["llava"]
    vlm = VLM(model, proc)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2))
    cases = [(lambda: VLM(lm, proc), "LlamaForCausalLM (llama) is a language model, not a VLM"),
             (lambda: vlm.caption([PIL.Image.new("RGB", (20, 16))]), "image 0 is 20x16; this model takes 16x16"),
             (lambda: vlm.caption([PIL.Image.new("RGBA", (16, 16))]), "mode 'RGBA' (4 channels)"),
             (lambda: vlm.caption([np.zeros((16, 16, 1), np.uint8)]), "shape (16, 16, 1)"),
             (lambda: vlm.caption([PIL.Image.new("RGB", (16, 16))], prompt=""), "empty or non-string prompt"),
             (lambda: vlm.ask([PIL.Image.new("RGB", (16, 16))], [" "]), "empty or non-string question"),
             (lambda: vlm.caption([]), "no images")]
    for call, msg in cases:
        with pytest.raises(TokenlabError, match=None) as e: call()
        assert msg in str(e.value) and "\n" not in str(e.value), (msg, str(e.value))
    assert len(VLM(model, proc, resize=True).caption([PIL.Image.new("RGB", (40, 24))], max_new_tokens=2)) == 1


@given(g=st.integers(1, 6), k=st.sampled_from([1, 2, 3]), d=st.integers(1, 4))
@settings(max_examples=25, deadline=None)
def test_pool_grid_is_block_mean(g, k, d):
    x = torch.randn(2, (g * k) ** 2, d)
    y = pool_grid(x, k)
    grid = x.reshape(2, g * k, g * k, d)
    assert y.shape == (2, g * g, d)
    assert torch.allclose(y[:, 0], grid[:, :k, :k].mean((1, 2)), atol=1e-6)
    assert torch.allclose(y.mean(1), x.mean(1), atol=1e-5)


def test_training_lowers_loss_and_is_deterministic():
    data = list(squares(24, seed=1))
    kw = dict(steps=25, batch_size=8, lr=3e-3, image_size=16, patch_size=4, hidden=32, layers=2, heads=2, progress=False)
    a, b = train_tiny(data, **kw), train_tiny(data, **kw)
    assert a.losses == b.losses and np.mean(a.losses[-5:]) < 0.6 * np.mean(a.losses[:3])


def _parts(data):
    from transformers import Dinov2Config, LlamaConfig, LlamaForCausalLM
    vc = Dinov2Config(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, image_size=16, patch_size=4)
    tok = word_tokenizer([c for _, c in data] + ["describe the image. user assistant"])
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)).eval()
    return vc, lm, tok


def test_projector_training_save_load_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENLAB_ZOO", str(tmp_path))
    data = list(squares(24, seed=2))
    vc, lm, tok = _parts(data)
    model, proc = parts_vlm(vc, lm, tok, pool=2, image_size=16, system=None)
    run = train_projector(model, proc, data, steps=30, batch_size=8, lr=3e-3, progress=False)
    assert np.mean(run.losses[-5:]) < np.mean(run.losses[:3])
    folder = save_trained(run, "vlm-t", command="test", data="squares(24, seed=2)", data_seed=2)
    assert sum(f.stat().st_size for f in folder.iterdir()) < 20 * 2**20
    vlm = load_trained("vlm-t", vc, lm, tok)
    x = vlm.prepare([data[0][0]], ["Describe the image."])
    with torch.no_grad(), image_pooling(model), image_pooling(vlm.model):
        assert torch.equal(vlm.model(**x).logits, model(**x).logits)
    calls = []
    zoo_vlm("vlm-t2", lambda: calls.append(1) or run, vision=vc, lm=lm, tokenizer=tok, retrain=True)
    zoo_vlm("vlm-t2", lambda: calls.append(1) or run, vision=vc, lm=lm, tokenizer=tok)
    assert calls == [1]
    with torch.no_grad(): lm.lm_head.weight[0, 0] += 1.0          # tied: the embedding changes too
    with pytest.raises(TokenlabError, match="base weights differ"): load_trained("vlm-t", vc, lm, tok)


def test_parts_with_smollm2_keeps_the_language_model():
    from transformers import Dinov2Config
    from tokenlab.lab.assets import smollm2_path
    from tokenlab.models.loading import load_model
    try: path = smollm2_path()
    except TokenlabError: pytest.skip("SmolLM2 not converted; run: tokenlab fetch --tier models")
    vc = Dinov2Config(hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48, image_size=28, patch_size=14)
    model, proc = parts_vlm(vc, None, None, pool=1, image_size=28)
    ids = proc.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    lm = load_model(path, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits[..., :lm.config.vocab_size], lm(input_ids=ids).logits, atol=1e-4)
    assert proc.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == model.config.image_token_id == lm.config.vocab_size


def test_idefics3_tiled_image_gives_one_run_per_tile(three):
    "With image splitting (SmolVLM's default) a 32 px image becomes 2 x 2 tiles of 16 px + the global image: 5 runs of 4."
    from transformers import Idefics3Processor, Idefics3ImageProcessorPil
    from tokenlab.models.tiny import IMG
    from tokenlab.vision.vlm import chat_template, CLIP_MEAN, CLIP_STD
    specials = {"<image>": IMG, "<fake_token_around_image>": IMG - 1, "<global-img>": IMG - 2, "<end_of_utterance>": IMG - 3}
    specials |= {f"<row_{i}_col_{j}>": IMG - 4 - (i - 1) * 6 - (j - 1) for i in range(1, 7) for j in range(1, 7)}
    tok = word_tokenizer(["describe the image . user assistant"], specials=specials, vocab_size=IMG + 1)
    ip = Idefics3ImageProcessorPil(do_image_splitting=True, size={"longest_edge": 32}, max_image_size={"longest_edge": 16},
                                   image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    vlm = VLM(three["idefics3"][0], Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=chat_template()))
    assert vlm.size_rule is None                                     # the processor tiles any size
    x = vlm.prepare([PIL.Image.new("RGB", (32, 32), (200, 0, 0))], ["describe the image."])
    runs = vlm.adapter.image_token_runs(x["input_ids"])[0]
    assert len(runs) == 5 and all(e - s == 4 for s, e in runs)
    with pytest.raises(TokenlabError, match="not one contiguous run"): vlm.adapter.image_token_span(x["input_ids"])
    assert len(vlm.caption([PIL.Image.new("RGB", (32, 32))], max_new_tokens=2)) == 1


@pytest.mark.parametrize("name", ["vlm-calib-tiny", "vlm-calib-parts"])
def test_committed_zoo_card_rebuilds_its_training_world(name):
    "A committed zoo VLM's card records the world it was trained on, as written: rebuilt from the card it has the same fingerprint."
    import json
    from pathlib import Path
    from tokenlab.vision import Grammar, ObjectWorld
    card = json.loads((Path(__file__).parents[1] / "data" / "zoo" / name / "card.json").read_text())
    w = json.loads(card["data"])
    ow = ObjectWorld(Grammar.from_dict(w["grammar"]), w["difficulty"], size=w["size"], seed=w["seed"], order=w["order"])
    assert ow.card()["fingerprint"] == w["fingerprint"]
    assert list(w["grammar"]["scene_types"][0]["objects"])[0] == "cup"  # the grammar's own order, not sorted


@pytest.mark.parametrize("mt", ["llava", "qwen2_vl", "idefics3"])
def test_any_architecture_through_the_evaluators(three, mt):
    "ObjectWorld scenes -> captions and POPE answers of a random tiny llava / qwen2_vl / idefics3 -> CHAIR and POPE results."
    from tokenlab.lab.assets import is_fetched
    if not is_fetched("noto-emoji"): pytest.skip("asset 'noto-emoji' not fetched; run: tokenlab fetch --tier vision")
    from tokenlab.vision import ObjectWorld
    from tokenlab.vision.eval import chair, pope_questions, pope_score
    vlm = VLM(*three[mt], resize=True)                       # 64 px scenes resized to the tiny model's input
    scenes = list(ObjectWorld(seed=2, size=64).scenes(3))
    caps = vlm.caption([s.image for s in scenes], max_new_tokens=6)
    truth = {s.id: s.present for s in scenes}
    r = chair(dict(zip(truth, caps)), truth, prompt=vlm.record["prompts"][0], decoding=vlm.record["decoding"])
    assert r.scene_ids == list(truth) and r.decoding["max_new_tokens"] == 6 and r.scores["captions"] == 3
    assert 0 <= r.scores["chair_s"] <= 1 and r.scores["present_objects"] == sum(len(t) for t in truth.values())
    qs = pope_questions(truth, "adversarial", n=1, seed=0)
    images = {s.id: s.image for s in scenes}
    answers = vlm.ask([images[q.scene_id] for q in qs], [q.text for q in qs], max_new_tokens=3)
    p = pope_score(qs, dict(zip((q.qid for q in qs), answers)), decoding=vlm.record["decoding"])
    assert p.scores["questions"] == len(qs) == 2 * len(scenes) and p.scores["tp"] + p.scores["fn"] == len(scenes)
    assert 0 <= p.scores["yes_ratio"] <= 1 and set(p.scene_ids) == set(truth)
