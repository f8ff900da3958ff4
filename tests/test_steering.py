"""Properties of the steering pieces (hypothesis) and hostile parameters; the model-level tests live in nbs/steering/07_run."""
import math
import pytest
import torch
from hypothesis import given, settings, strategies as st
from tokenlab.lab.core import TokenlabError
from tokenlab.steering import (VCD, M3ID, DoLa, VISTA, PAI, OPERA, Steer, make_method, check_number, plausible,
                               steer_direction, overtrust_scores, jsd, image_reliance, diffusion_noise, STEERING)
from tokenlab.steering.base import ProcessorFn

torch.set_num_threads(1)
floats = st.floats(-30, 30, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(floats, min_size=2, max_size=40), st.floats(0, 1))
def test_plausible_keeps_the_argmax_and_is_monotone_in_beta(xs, beta):
    logp = torch.log_softmax(torch.tensor([xs], dtype=torch.float64), -1)
    m = plausible(logp, beta)
    assert m[0, logp.argmax()].item()
    assert (plausible(logp, beta / 2) >= m).all()                        # a looser cut keeps at least as much


@settings(max_examples=60, deadline=None)
@given(st.lists(floats, min_size=2, max_size=30), st.floats(-5, 5))
def test_processor_output_is_a_log_distribution_and_shift_invariant(xs, shift):
    p = ProcessorFn(lambda ids, lp: 2 * lp, "double")
    ids = torch.zeros(1, 1, dtype=torch.long)
    x = torch.tensor([xs], dtype=torch.float64)
    a, b = p(ids, x), p(ids, x + shift)
    assert math.isclose(a.exp().sum().item(), 1.0, rel_tol=1e-6)   # computed in float32
    assert torch.allclose(a, b, atol=1e-5)                               # logits or log-probs in: the same result


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0, 2))
def test_steer_direction_keeps_the_norm_and_turns_towards_v(seed, lam):
    g = torch.Generator().manual_seed(seed)
    x, v = torch.randn(3, 7, 16, generator=g, dtype=torch.float64), torch.randn(3, 1, 16, generator=g, dtype=torch.float64)
    y = steer_direction(x, v, lam)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-9)
    cos = lambda a: torch.nn.functional.cosine_similarity(a, v.expand_as(a), dim=-1)
    assert (cos(y) >= cos(x) - 1e-9).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_overtrust_column_scores_match_the_product(n, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, n, generator=g, dtype=torch.float64).tril()
    w = w / w.sum(-1, keepdim=True)
    phi = overtrust_scores(w, 50.0)
    for j in range(n):
        want = 1e-7 * torch.prod(50.0 * w[j:, j]).item()
        assert math.isclose(phi[j].item(), want, rel_tol=1e-6, abs_tol=1e-300)


@settings(max_examples=40, deadline=None)
@given(st.lists(floats, min_size=2, max_size=20), st.lists(floats, min_size=2, max_size=20))
def test_jsd_and_reliance_are_divergences(a, b):
    n = min(len(a), len(b))
    la = torch.log_softmax(torch.tensor(a[:n], dtype=torch.float64), -1)
    lb = torch.log_softmax(torch.tensor(b[:n], dtype=torch.float64), -1)
    assert -1e-12 <= jsd(la, lb).item() <= math.log(2) + 1e-12
    assert math.isclose(jsd(la, lb).item(), jsd(lb, la).item(), abs_tol=1e-12)
    assert image_reliance(la, lb).item() >= -1e-12 and abs(image_reliance(la, la).item()) < 1e-12


@pytest.mark.parametrize("make, msg", [
    (lambda: VISTA(lam=float("nan")), "lambda must be a finite number"),
    (lambda: VISTA(lam=float("inf")), "lambda must be a finite number"),
    (lambda: VCD(alpha=-1), "alpha = -1 is outside"),
    (lambda: VCD(alpha="1"), "alpha must be a finite number"),
    (lambda: M3ID(lam=True), "lambda must be a finite number"),
    (lambda: PAI(gamma=float("nan")), "gamma must be a finite number"),
    (lambda: OPERA(threshold=-1), "threshold = -1 is outside"),
    (lambda: OPERA(candidates=2.5), "candidates must be a finite integer"),
    (lambda: DoLa(bucket="middle"), "unknown DoLa bucket"),
    (lambda: DoLa(bucket=[1.5]), "a list of layer indices"),
    (lambda: VISTA(sla_layers="late"), "sla_layers must be None"),
    (lambda: Steer(["nope"]), "unknown steering method 'nope'"),
    (lambda: Steer([("vcd", {"gamma": 2})]), "unknown parameter(s) ['gamma']"),
    (lambda: make_method(VCD(), alpha=2), "given with a built method"),
    (lambda: diffusion_noise(torch.zeros(1), step=2000), "noise_step = 2000 is outside"),
])
def test_bad_parameters_fail_in_one_line(make, msg):
    with pytest.raises(TokenlabError) as e: make()
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_registry_lists_every_method_with_paper_and_defaults():
    assert set(STEERING) == {"vcd", "m3id", "dola", "vista", "pai", "opera"}
    for e in STEERING.entries():
        assert e.paper and e.doc and e.params and "acts" not in e.params
    assert STEERING.entry("vista").params == {"lam": 0.1, "alpha": 0.3, "sla_layers": None, "sla_norm": False}


def test_neutral_settings_and_steer_neutrality():
    assert Steer([VCD(alpha=0), M3ID(lam=0), DoLa(lam=0), VISTA(lam=0, alpha=0), PAI(alpha=0, gamma=1), OPERA(penalty=0)]).neutral
    assert not Steer([VCD(alpha=0), VISTA(lam=0, alpha=0.1)]).neutral
