"""tokenlab.widgets.pruning and .steering without a browser: the states on tiny random llava, idefics3 and qwen2_vl VLMs
(kept counts, merge maps, cached results never run the model, refusals cached as one line), captions marked against
hand-made truths, bad input as a message in the explorers, the default VLM's one-line error when the zoo lacks it, and
control_latency's interface. Timing-free: latencies are measured by control_latency / bench, never asserted."""
import numpy as np
import pytest
import torch

from tokenlab.lab.core import TokenlabError
from tokenlab.pruning import make_pruner, n_keep
from tokenlab.vision.vlm import tiny_vlms, VLM
from tokenlab.vision.world import ObjectWorld
from tokenlab.widgets.pruning import (PruningState, PruningViewer, lab_scenes, mark_caption, caption_details, token_overlay,
                                      token_map, control_latency, vlm_pruners, DEFAULT_VLM)
from tokenlab.widgets.steering import SteeringState, SteeringPlayground, chair_counts, KNOBS

VISION_OK = {"llava": vlm_pruners(), "idefics3": ["random", "pool", "fastv", "dart", "divprune", "tome"],
             "qwen2_vl": ["fastv", "dart"]}          # idefics3: no [CLS] token; qwen2_vl: the vision site is refused (M-RoPE)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return {k: VLM(m, p, resize=True) for k, (m, p) in tiny_vlms().items()}


@pytest.fixture(scope="module")
def scenes():
    return lab_scenes(ObjectWorld(size=64), 2, start=0)


def no_model(vlm):
    "Make any model call fail (a cached result must not need one)."
    vlm.generate = lambda *a, **k: (_ for _ in ()).throw(AssertionError("the model ran"))


@pytest.mark.parametrize("arch", ["llava", "idefics3", "qwen2_vl"])
def test_pruning_state_maps_and_cache(tiny, scenes, arch):
    st = PruningState(tiny[arch], scenes=scenes, lm_layer=1, max_new_tokens=3)
    N = st.n_image
    for m in VISION_OK[arch]:
        for r in (0.5, 0.25):
            res = st.result(0, m, r)
            assert len(res.assign) == N and res.kept == make_pruner(m).count(N, n_keep(r, N))
            if res.merge: assert (res.assign >= 0).all() and res.sizes.sum() == N, m
            else: assert (res.assign >= 0).sum() == n_keep(r, N) == res.kept
            assert sorted(set(res.assign[res.assign >= 0].tolist())) == list(range(res.kept))
            assert token_overlay(st.shown(0), res.assign, res.sizes).shape == st.shown(0).shape
    runs = st.runs
    vlm = st.vlm
    no_model(vlm)
    try:
        for m in VISION_OK[arch]:
            assert "<img" in st.html(0, m, 0.5) and st.result(0, m, 0.25) is st.result(0, m, 0.25)
        assert st.runs == runs
    finally: del vlm.generate
    refused = [m for m in vlm_pruners() if m not in VISION_OK[arch]]
    for m in refused:
        with pytest.raises(TokenlabError) as e: st.result(1, m, 0.5)
        assert "\n" not in str(e.value)
    runs = st.runs
    for m in refused:                                        # refusals are cached: no second attempt
        with pytest.raises(TokenlabError): st.result(1, m, 0.5)
    assert st.runs == runs


def test_pruning_precompute_and_keys(tiny, scenes):
    st = PruningState(tiny["llava"], scenes=scenes, methods=["tome", "cls"], lm_layer=1, max_new_tokens=3)
    out = st.precompute(ratios=[1.0, 0.5], progress=False)
    assert out == {"combinations": 6, "computed": 6, "failed": 0}           # 2 scenes x (unpruned + 2 methods)
    assert st.precompute(ratios=[1.0, 0.5], progress=False)["computed"] == 0
    assert st.key(0, "tome", 1.0) == st.key(0, "cls", 1.0) == (0, "unpruned", 1.0)
    for bad, msg in (((2, "tome", 0.5), "outside 0 .. 1"), ((0, "fastv", 0.5), "unknown pruning method"),
                     ((0, "tome", 0.0), "outside (0, 1]"), ((0, "tome", float("nan")), "kept ratio"), ((True, "tome", 0.5), "integer")):
        with pytest.raises(TokenlabError, match=None) as e: st.key(*bad)
        assert msg in str(e.value)
    with pytest.raises(TokenlabError, match="unknown pruning method"): PruningState(tiny["llava"], scenes=scenes, methods=["nope"])


def test_token_map_and_overlay():
    from tokenlab.pruning import Reduction
    rng = np.random.default_rng(0)
    for side in (2, 4, 8):
        N = side * side
        x = torch.randn(1, N, 6)
        for name in ("tome", "pool", "visionzip", "random"):
            k = max(2, N // 3)
            p = make_pruner(name)
            from tokenlab.pruning import Signals
            red = p.reduce(x, k, Signals(cls_attn=torch.rand(1, N), keys=torch.randn(1, N, 4)))
            assign, sizes, merge = token_map(red, N)
            assert merge == (red.weight is not None) and len(sizes) == red.k
            if merge: assert (assign >= 0).all() and sizes.sum() == N
            img = rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)          # cells need not divide the image
            o = token_overlay(img, assign, sizes)
            assert o.shape == img.shape and o.dtype == np.uint8
    with pytest.raises(TokenlabError, match="square grid"): token_overlay(np.zeros((8, 8, 3), np.uint8), np.zeros(5, int), np.ones(1))
    assign, sizes, merge = token_map(Reduction(torch.tensor([[0, 3]])), 4)
    assert assign.tolist() == [0, -1, -1, 1] and not merge


@pytest.mark.parametrize("caption,present,marks", [
    ("A kitchen with two cups, a knife and no dog.", {"cup", "fork"}, [("cups", "present"), ("knife", "hallucinated"), ("dog", "negated")]),
    ("In this picture, the laptop is a type of device called a computer.", {"laptop"}, [("laptop", "present"), ("computer", "present")]),
    ("A farm with a cow, a sheep and a horse.", {"cow", "sheep", "dog"}, [("cow", "present"), ("sheep", "present"), ("horse", "hallucinated")]),
    ("Now now and now now.", {"cow"}, []),
    ("A <b>street</b> with a bus & a stop sign.", {"bus"}, [("bus", "present"), ("stop sign", "hallucinated")]),
])
def test_captions_marked_against_truth(caption, present, marks):
    h = mark_caption(caption, present)
    got = []
    for part in h.split('<span class="tl-mention tl-')[1:]:
        cls = part.split('"', 1)[0]
        got.append((part.split(">", 1)[1].split("</span>", 1)[0], cls))
    assert got == marks
    assert "<b>" not in h
    d = caption_details(caption, present)
    assert sorted(d["hallucinated"]) == sorted({caption_details(w, set())["mentioned"][0] for w, c in marks if c == "hallucinated"})
    c = chair_counts(d)
    assert c["hallucinated mentions"] == sum(1 for _, k in marks if k == "hallucinated")
    assert c["CHAIR_s"] == int(any(k == "hallucinated" for _, k in marks))


@pytest.mark.parametrize("arch", ["llava", "idefics3"])
def test_steering_state_cache_and_refusals(tiny, scenes, arch):
    st = SteeringState(tiny[arch], scenes=scenes, max_new_tokens=3)
    out = st.precompute(strengths="default", scenes=[0], progress=False)
    assert out["combinations"] == len(KNOBS)
    # PAI's default start layer and DoLa's 'high' bucket do not fit a 2-layer model: one line each, cached
    assert out["failed"] == 2 and set(k[1] for k in st.failures) == {"pai", "dola"}
    assert all("\n" not in v for v in st.failures.values())
    assert st.key(0, "vcd", 0.0) == st.key(0, "vista", 0) == (0, "none", 0.0)
    runs, vlm = st.runs, st.vlm
    no_model(vlm)
    try:
        for m in ("none", "vcd", "m3id", "vista", "opera"): assert "tl-counts" in st.html(0, m, st.default(m))
        for m in ("pai", "dola"):
            with pytest.raises(TokenlabError): st.result(0, m, st.default(m))
        assert st.runs == runs
    finally: del vlm.generate
    st2 = SteeringState(tiny[arch], scenes=scenes, methods=["none", "pai"], params={"pai": {"start": 1}}, max_new_tokens=3)
    assert "start=1" in st2.result(0, "pai", 0.5).steer


def test_explorers_turn_bad_input_into_messages(tiny, scenes):
    pst = PruningState(tiny["idefics3"], scenes=scenes, lm_layer=1, max_new_tokens=3)
    v = PruningViewer(pst, method="tome", ratio=0.5)
    assert v.message.value == "" and "<img" in v.view.value
    for kw, msg in (({"scene": 9}, "outside"), ({"method": "nope"}, "unknown pruning method"), ({"ratio": 1.5}, "outside (0, 1]"),
                    ({"ratio": 0.4}, "not on the slider"), ({"method": "cls"}, "no [CLS] token"), ({"scene": "0"}, "integer")):
        assert v.select(**kw) is False and msg in v.last_error, (kw, v.last_error)
    v.method.value = "visionzip"                                  # moved in the widget: refused, a message, no exception
    assert "no [CLS] token" in v.last_error and v.view.value == ""
    assert v.precompute(["tome"], [2.0]) is False and "outside (0, 1]" in v.last_error
    assert v.select(method="tome", ratio=0.5) and v.message.value == ""

    sst = SteeringState(tiny["llava"], scenes=scenes, methods=["none", "vcd", "pai"], max_new_tokens=3)
    p = SteeringPlayground(sst, method="vcd")
    assert p.message.value == "" and p.current == (0, "vcd", 1.0)
    for kw, msg in (({"scene": -1}, "outside"), ({"method": "dola"}, "unknown steering method"), ({"strength": 3.0}, "not on vcd's slider"),
                    ({"strength": float("inf")}, "finite number"), ({"method": "pai"}, "beyond the model's 2 layers")):
        assert p.select(**kw) is False and msg in p.last_error, (kw, p.last_error)
    p.method.value = "none"
    assert p.message.value == "" and p.current == (0, "none", 0.0)


def test_control_latency_interface(tiny, scenes):
    st = PruningState(tiny["llava"], scenes=scenes, methods=["random", "tome"], ratios=[1.0, 0.5, 0.25], max_new_tokens=3)
    st.precompute(progress=False)
    v = PruningViewer(st, method="tome", ratio=0.5, scene=1)
    lat = control_latency(v, n=3)
    assert lat["model_runs"] == 0 and lat["skipped"] == [] and set(lat["controls"]) == {"scene", "method", "ratio"}
    assert all(c["moves"] == 3 and c["median_ms"] >= 0 for c in lat["controls"].values())
    assert v.current == (1, "tome", 0.5)


def test_default_vlm_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENLAB_ZOO", str(tmp_path))
    for make in (PruningState, SteeringState, PruningViewer):
        with pytest.raises(TokenlabError) as e: make()
        msg = str(e.value)
        assert "\n" not in msg and DEFAULT_VLM in msg and "vlm_calibration" in msg and "tokenlab fetch" in msg
