"""ObjectWorld / ShapeWorld properties over random grammars, knobs and seeds (hypothesis), determinism across
processes, and hostile inputs. ObjectWorld tests need `tokenlab fetch --tier vision`; ShapeWorld needs nothing."""
from __future__ import annotations
import json, os, subprocess, sys
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from tokenlab.lab.assets import is_fetched
from tokenlab.lab.core import TokenlabError
from tokenlab.vision.categories import COCO
from tokenlab.vision.shapeworld import ShapeWorld, shape_vocabulary
from tokenlab.vision.world import (DISTRACTORS, PICTURES, PLURAL_ONLY, Difficulty, Grammar, ObjectWorld, SceneType,
                                   frequency_report, joint, marginal, occlusion_from_masks, scene_hash)

EMOJI = is_fetched("noto-emoji")
needs_emoji = pytest.mark.skipif(not EMOJI, reason="asset 'noto-emoji' not fetched; run: tokenlab fetch --tier vision")
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
COLS, SHAPES5 = ("red", "green", "blue", "yellow", "purple"), ("circle", "square", "triangle", "star", "heart")
SHAPE_CATS = shape_vocabulary(COLS, SHAPES5).categories


@st.composite
def grammars(draw, categories, max_types=3):
    "A random grammar over `categories`: 1-3 scene types, random probabilities, random pair rules."
    types = []
    for k in range(draw(st.integers(1, max_types))):
        objs = draw(st.lists(st.sampled_from(categories), min_size=1, max_size=6, unique=True))
        probs = {c: draw(st.floats(0.05, 0.6)) for c in objs}      # count bounds below stay reachable (no 2,000 failed draws)
        pairs = {}
        for a in draw(st.lists(st.sampled_from(objs), max_size=3, unique=True)):
            b = draw(st.sampled_from(categories))
            if b != a: pairs[(a, b)] = draw(st.floats(0.0, 1.0))
        types.append(SceneType(f"type{k}", probs, pairs, weight=draw(st.floats(0.2, 3.0))))
    return Grammar(tuple(types))


@st.composite
def difficulties(draw):
    lo = draw(st.integers(0, 1))
    return Difficulty(objects=(lo, lo + draw(st.integers(2, 4))), instances=(1, draw(st.integers(1, 3))),
                      scale=(0.2, draw(st.floats(0.2, 0.3))), clutter=(0, draw(st.integers(0, 2))),
                      occlusion=draw(st.sampled_from([0.0, 0.3, 0.6])), contrast=(draw(st.floats(0.2, 1.0)), 1.0),
                      texture=draw(st.floats(0, 1)), noise=draw(st.floats(0, 0.1)), rotation=draw(st.floats(0, 90)),
                      blur=draw(st.sampled_from([0.0, 0.005])))


def check_scene(w, s, vocab):
    "Every invariant of one scene."
    d, S = w.difficulty, w.size
    assert s.image.size == (S, S) and s.image.mode == "RGB"
    assert s.present == frozenset(o.category for o in s.objects) and s.scene_type in w.grammar.names
    assert d.objects[0] <= len(s.present) <= d.objects[1]
    assert all(d.instances[0] <= n <= d.instances[1] for n in s.counts.values())
    assert d.clutter[0] <= len(s.distractors) <= d.clutter[1]
    for p in s.objects + s.distractors:
        x0, y0, x1, y1 = p.box
        assert 0 <= x0 < x1 <= S and 0 <= y0 < y1 <= S and p.mask.shape == (y1 - y0, x1 - x0) and p.mask.any()
        assert abs(p.rotation) <= d.rotation + 1e-9 and d.contrast[0] - 1e-9 <= p.contrast <= d.contrast[1] + 1e-9
    np.testing.assert_allclose(occlusion_from_masks(s), [o.occluded for o in s.objects], atol=1e-12)
    assert all(0 <= o.occluded <= d.occlusion + 1e-9 for o in s.objects)
    ms = [m for m in vocab.mentions(s.caption) if not m.negated]
    assert {m.category for m in ms} == set(s.present), s.caption
    assert all(m.count == s.counts[m.category] for m in ms if m.category not in PLURAL_ONLY), s.caption
    assert not vocab.mentions(" and ".join(p.category.replace("_", " ") for p in s.distractors))
    probes = s.probes()
    assert sum(a for _, a in probes) == len(s.present) and all(c not in s.present for c in s.negatives)
    assert len(probes) == len(s.present) + len(s.negatives)
    img, cap = s
    assert img is s.image and cap == s.caption


@SETTINGS
@given(grammars(SHAPE_CATS), difficulties(), st.integers(0, 2**32 - 1), st.integers(0, 10**6), st.sampled_from(["random", "raster", "size"]))
def test_shapeworld_invariants_over_random_grammars(g, d, seed, i, order):
    w = ShapeWorld(g, d, size=80, seed=seed, order=order, colours=COLS, shapes=SHAPES5)
    for k in (i, i + 1):
        s = w.scene(k)
        check_scene(w, s, w.vocabulary)
    twin = ShapeWorld(Grammar.from_dict(json.loads(json.dumps(g.to_dict()))), d, 80, seed, order, COLS, SHAPES5)
    assert scene_hash(twin.scene(i)) == scene_hash(w.scene(i)) and twin.card() == w.card()
    json.dumps(w.card())


@needs_emoji
@SETTINGS
@given(grammars(sorted(PICTURES)), difficulties(), st.integers(0, 2**32 - 1), st.integers(0, 10**6), st.sampled_from([64, 128, 224]))
def test_objectworld_invariants_over_random_grammars(g, d, seed, i, size):
    w = ObjectWorld(g, d, size=size, seed=seed)
    s = w.scene(i)
    check_scene(w, s, COCO)
    assert all(p.category in DISTRACTORS for p in s.distractors)
    assert scene_hash(ObjectWorld(g, d, size=size, seed=seed).scene(i)) == scene_hash(s)


@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(grammars(SHAPE_CATS, max_types=2), st.integers(0, 1000))
def test_grammar_frequencies_match_random_grammars(g, seed):
    "Over 3,000 scenes every category's frequency and every pair rule's joint frequency is within 5 standard errors."
    w = ShapeWorld(g, {"objects": (0, 64), "instances": 1}, size=64, seed=seed, colours=COLS, shapes=SHAPES5)
    assert frequency_report(w, 3000, z=5.0) == []


def test_grammar_exact_probabilities_by_enumeration():
    "marginal and joint equal the brute-force sum over every outcome of the independent draws and pair coins."
    import itertools
    stype = SceneType("t", {"a": 0.3, "b": 0.6, "c": 0.2}, {"a > b": 0.5, "b > a": 0.25, "c > d": 0.7, "a > d": 0.4})
    obj, pairs = list(stype.objects), list(stype.pairs)
    probs = {}
    for first in itertools.product([0, 1], repeat=3):
        for coins in itertools.product([0, 1], repeat=len(pairs)):
            p = np.prod([stype.objects[c] if f else 1 - stype.objects[c] for c, f in zip(obj, first)])
            p *= np.prod([stype.pairs[k] if x else 1 - stype.pairs[k] for k, x in zip(pairs, coins)])
            drawn = {c for c, f in zip(obj, first) if f}
            got = drawn | {b for (a, b), x in zip(pairs, coins) if x and a in drawn}
            probs[frozenset(got)] = probs.get(frozenset(got), 0) + p
    for c in "abcd": assert abs(marginal(stype, c) - sum(p for s, p in probs.items() if c in s)) < 1e-12
    for a, b in [("a", "b"), ("a", "d"), ("c", "d"), ("b", "c")]:
        assert abs(joint(stype, a, b) - sum(p for s, p in probs.items() if a in s and b in s)) < 1e-12


_SCRIPT = """
import json, sys
from tokenlab.vision.world import scene_hash, ObjectWorld
from tokenlab.vision.shapeworld import ShapeWorld
ws = [ShapeWorld(difficulty="medium", size=96, seed=3)] + ([ObjectWorld(difficulty="medium", seed=3)] if sys.argv[1] == "1" else [])
print(json.dumps([[scene_hash(w.scene(i)) for i in (0, 5, 17)] for w in ws]))
"""


def test_same_scenes_in_another_process():
    "No Python hash or set order reaches a scene: two processes with different PYTHONHASHSEED give the same hashes."
    out = []
    for hs in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hs}
        p = subprocess.run([sys.executable, "-c", _SCRIPT, "1" if EMOJI else "0"], capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        out.append(json.loads(p.stdout))
    assert out[0] == out[1] and len({h for w in out[0] for h in w}) == 3 * len(out[0])


def _one_line(f, match):
    with pytest.raises(TokenlabError, match=match) as e: f()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kw, match", [
    ({"colours": ("red", "mauve")}, "unknown colour 'mauve'"),
    ({"grammar": Grammar((SceneType("k", {"pink circle": 0.5}),))}, "unknown category 'pink circle'"),
    ({"difficulty": {"objects": (-1, 2)}}, "knob 'objects' is \\(-1, 2\\)"),
    ({"difficulty": {"instances": 0}}, "knob 'instances' is 0"),
    ({"difficulty": {"contrast": 2}}, "knob 'contrast' is 2"),
    ({"difficulty": {"occlusion": 1.0}}, "knob 'occlusion' is 1.0"),
    ({"difficulty": {"rotation": -5}}, "knob 'rotation' is -5"),
    ({"difficulty": {"haze": 1}}, "unknown difficulty knob 'haze'"),
    ({"difficulty": "nightmare"}, "unknown difficulty preset 'nightmare'"),
    ({"difficulty": 3}, "difficulty must be a Difficulty"),
    ({"size": 8}, "image size 8 is not allowed"),
    ({"size": 24}, "too small for objects"),
    ({"size": 64.0}, "image size 64.0 is not allowed"),
    ({"grammar": Grammar((SceneType("k", {"red circle": 0.5}),)), "difficulty": {"instances": (-2, 1)}}, "knob 'instances' is \\(-2, 1\\)"),
    ({"seed": -3}, "seed -3 is not a non-negative integer"),
    ({"seed": True}, "seed True is not a non-negative integer"),
    ({"order": "zigzag"}, "unknown caption order 'zigzag'"),
    ({"grammar": {"types": []}}, "needs a 'scene_types' list"),
    ({"grammar": Grammar((SceneType("k", {"red circle": 0.5}),)), "difficulty": {"objects": (3, 4)}}, "has 1 categories but difficulty asks for at least 3"),
    ({"difficulty": {"objects": (16, 16), "instances": 16, "scale": 0.6}}, "cannot fit in a 64 px image"),
])
def test_shapeworld_bad_input_is_one_line(kw, match):
    _one_line(lambda: ShapeWorld(**kw), match)


@pytest.mark.parametrize("make, match", [
    (lambda: SceneType("k", {"red circle": 1.2}), "is 1.2; allowed: a number from 0 to 1"),
    (lambda: SceneType("k", {"red circle": float("nan")}), "allowed: a number from 0 to 1"),
    (lambda: SceneType("k", {"red circle": "0.5"}), "allowed: a number from 0 to 1"),
    (lambda: SceneType("k", {"red circle": 0.5}, {"red circle > red circle": 0.5}), "pairs a category with itself"),
    (lambda: SceneType("k", {"red circle": 0.5}, {("red circle", "blue star"): -0.5}), "is -0.5"),
    (lambda: SceneType("", {"red circle": 0.5}), "scene type name '' is not a non-empty string"),
    (lambda: Grammar(("kitchen",)), "must be a SceneType or a mapping, not str"),
    (lambda: Grammar.from_dict({"scene_types": [{"name": "k", "objects": {"red circle": 0.5}, "weight": -1}]}), "weight of scene type 'k' is -1"),
    (lambda: Grammar.from_dict({"scene_types": [{"name": "k", "objects": {"red circle": 0.5}, "colors": [[0, 0], [0, 0, 0]]}]}), "a color of scene type 'k'"),
    (lambda: Grammar.from_dict({"scene_types": [{"objects": {"red circle": 0.5}}]}), "needs 'name' and 'objects'"),
    (lambda: Grammar.from_dict({"scene_types": [{"name": "k", "objects": {"red circle": 0.5}, "prob": 1}]}), "unknown scene type field 'prob'"),
    (lambda: Grammar.from_dict({"scene_types": "kitchen"}), "needs a 'scene_types' list"),
    (lambda: SceneType("k", ["red circle"]), "has no objects; give a mapping"),
    (lambda: ShapeWorld().scene(-1), "scene index -1 is not a non-negative integer"),
    (lambda: ShapeWorld().scene("3"), "scene index '3' is not a non-negative integer"),
    (lambda: ShapeWorld().scenes(-2), "n -2 is not a non-negative integer"),
])
def test_grammar_bad_input_is_one_line(make, match):
    _one_line(make, match)


def test_impossible_count_bounds_fail_in_one_line():
    w = ShapeWorld(grammar=Grammar((SceneType("k", {"red circle": 0.001, "blue star": 0.001}),)), difficulty={"objects": (2, 2)})
    _one_line(lambda: w.scene(0), "gave between 2 and 2 objects in none of 2000 draws")


@needs_emoji
@pytest.mark.parametrize("kw, match", [
    ({"grammar": Grammar((SceneType("k", {"oven": 0.5}),))}, "COCO class 'oven' has no picture in ObjectWorld"),
    ({"grammar": Grammar((SceneType("k", {"unicorn": 0.5}),))}, "unknown category 'unicorn' in vocabulary 'coco'"),
    ({"distractors": ("dog2", "not_an_emoji")}, "no Noto emoji picture named 'not_an_emoji'"),
    ({"pictures": {"dog": "not_an_emoji"}}, "no Noto emoji picture named 'not_an_emoji'"),
    ({"size": 16}, "too small for objects of scale 0.18"),
    ({"nouns": {"cup": "spaceship"}}, "noun 'spaceship' for category 'cup' is not one of its names"),
    ({"difficulty": {"clutter": 3}, "distractors": ()}, "asks for distractors but this world has no distractor pictures"),
])
def test_objectworld_bad_input_is_one_line(kw, match):
    _one_line(lambda: ObjectWorld(**kw), match)


@pytest.mark.parametrize("kind", ["ShapeWorld", "ObjectWorld"])
def test_true_captions_score_perfectly_with_the_evaluators(kind):
    "The world's own captions, scored by tokenlab.vision.eval against the world's truth: CHAIR 0, recall 1."
    from tokenlab.vision.eval import chair
    if kind == "ObjectWorld" and not EMOJI: pytest.skip("asset 'noto-emoji' not fetched; run: tokenlab fetch --tier vision")
    w = ShapeWorld(difficulty="medium", seed=2) if kind == "ShapeWorld" else ObjectWorld(difficulty="medium", seed=2)
    scenes = list(w.scenes(40))
    r = chair({s.id: s.caption for s in scenes}, {s.id: set(s.present) for s in scenes}, vocab=w.vocabulary)
    assert (r.scores["chair_s"], r.scores["chair_i"], r.scores["recall"]) == (0.0, 0.0, 1.0)
    assert r.scores["present_objects"] == sum(len(s.present) for s in scenes)
