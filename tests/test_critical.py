"""The edge of chaos on the attracting branch, deep profiles, and the mean-field input checks
(issue 10, items 3, 4, 6-8).

Definitions: chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2] at the fixed point q* that the length map
reaches from q0 (Poole et al. 2016, eq. 7; Schoenholz et al. 2017, eqs. 4-9; Hayou et al. 2019).
Independent routes: ``tests/reference/critical_reference.json`` (mpmath, written by
``tests/reference/make_critical_reference.py``, no signalprop import), closed forms (selu's
one-sided slopes at 0, relu's arc-cosine kernel), and the power law of c at criticality.
"""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import signalprop as sp
from signalprop.meanfield import critical_branches, correlation_map, length_map

REF = json.loads((Path(__file__).parent / "reference" / "critical_reference.json").read_text())
ACTS = sp.activations()
SB2 = [0.0, 1e-300, 1e-30, 1e-20, 1e-12, 1e-6, 1e-3, 0.05, 0.2, 0.3, 1.0, 3.0, 10.0]
#: where each activation has an edge of chaos reached from q0 = 1 (on the grid SB2)
EXPECT = {"linear": lambda b: b == 0, "relu": lambda b: b == 0, "leaky_relu": lambda b: b == 0,
          "softplus": lambda b: False,
          "gelu": lambda b: b >= 0.2, "gelu_tanh": lambda b: b >= 0.2,
          "silu": lambda b: b >= 1.0, "swish": lambda b: b >= 1.0}


def _crit(act, sb2, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return sp.critical_sigma_w2(act, sb2, **kw)


def _check_critical(act, sw2, sb2, q0=1.0):
    """The must-hold of item 3 (chi_1 = 1 to 1e-10; here the regime's own 1e-12)."""
    fp = sp.fixed_point(act, sw2, sb2, q0)
    assert abs(fp.chi_1 - 1.0) <= 1e-12, (act, sb2, fp.chi_1)
    assert fp.regime == "critical" and fp.xi_c == math.inf and fp.xi_grad == math.inf
    assert fp.q_star < math.inf and fp.c_star == 1.0


# -- item 3: critical_sigma_w2, fixed_point and phase_diagram agree ----------------------------


@pytest.mark.parametrize("act", ACTS)
def test_edge_of_chaos_is_critical_or_refused(act):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        crit = sp.critical_sigma_w2(act, SB2)
    warned = [x for x in w if issubclass(x.category, RuntimeWarning)
              and "no edge of chaos" in str(x.message)]
    assert bool(warned) == bool(np.isnan(crit).any())
    expect = EXPECT.get(act, lambda b: True)
    for b, sw2 in zip(SB2, crit):
        assert math.isfinite(sw2) == expect(b), (act, b, sw2)
        if math.isfinite(sw2):
            _check_critical(act, sw2, b)


@pytest.mark.parametrize("act", ["gelu", "silu", "softplus", "relu"])
def test_refusals_are_documented_by_the_branches(act):
    """Where critical_sigma_w2 refuses, no chi_1 = 1 point with a finite (or vanishing) q* is
    reached from q0 = 1, and fixed_point at each listed candidate is not critical."""
    for b in (0.0, 0.05, 0.1):
        assert math.isnan(_crit(act, b)) or act == "relu"
        for br in critical_branches(act, b):
            if br.kind == "q*=inf":
                continue
            assert not br.reached or (act == "relu" and b == 0)
            if not br.reached:
                assert sp.fixed_point(act, br.sigma_w2, b).regime != "critical"


@settings(max_examples=12, deadline=None)
@given(act=st.sampled_from(["tanh", "gelu", "selu", "elu", "hard_tanh", "sigmoid", "silu"]),
       sb2=st.floats(0.0, 10.0))
def test_edge_of_chaos_random_bias(act, sb2):
    sw2 = _crit(act, sb2)
    if math.isnan(sw2):
        assert not any(br.reached and br.kind != "q*=inf" for br in critical_branches(act, sb2))
    else:
        _check_critical(act, sw2, sb2)


@pytest.mark.parametrize("case", REF["critical"],
                         ids=lambda c: f"{c['activation']}-{c['sigma_b2']}")
def test_critical_matches_mpmath_on_the_attracting_branch(case):
    act, sb2, ref = case["activation"], case["sigma_b2"], float(case["sigma_w2"])
    (branch,) = [b for b in critical_branches(act, sb2) if b.kind == "finite"]
    assert branch.sigma_w2 == pytest.approx(ref, rel=1e-10)
    assert branch.q_star == pytest.approx(float(case["q_star"]), rel=1e-10)
    assert branch.length_slope == pytest.approx(float(case["slope"]), rel=1e-8)
    assert branch.reached == case["reached_from_1"]
    if case["reached_from_1"]:
        sw2 = sp.critical_sigma_w2(act, sb2)
        assert sw2 == pytest.approx(ref, rel=1e-10)
        _check_critical(act, sw2, sb2)
        assert sp.fixed_point(act, sw2, sb2).q_star == pytest.approx(float(case["q_star"]),
                                                                     rel=1e-8)
    else:      # gelu at 0.05: the chi_1 = 1 point repels (slope 1.085)
        with pytest.warns(RuntimeWarning, match="no edge of chaos"):
            assert math.isnan(sp.critical_sigma_w2(act, sb2))


def test_selu_edge_at_zero_bias_uses_both_slopes():
    """q* -> 0: chi_1 -> sigma_w^2 (phi'(0+)^2 + phi'(0-)^2) / 2 = sigma_w^2 lambda^2 (1 + alpha^2)
    / 2. The old answer, 1 / phi'(0-)^2 = 0.3235 (the left derivative), is ordered there."""
    assert REF["selu_zero"]["length_map_below_identity"]
    sw2 = sp.critical_sigma_w2("selu", 0.0)
    assert sw2 == pytest.approx(float(REF["selu_zero"]["sigma_w2"]), rel=1e-12)
    fp = sp.fixed_point("selu", sw2, 0.0)
    assert fp.q_star == 0.0
    _check_critical("selu", sw2, 0.0)
    old = sp.fixed_point("selu", 0.32352897200159636, 0.0)
    assert old.regime == "ordered" and old.chi_1 == pytest.approx(0.679, abs=1e-3)


def test_issue_examples():
    # gelu at sigma_b^2 = 0.05: was 2.3025, where fixed_point says q* = inf, chi_1 = 1.151
    with pytest.warns(RuntimeWarning, match="no edge of chaos"):
        assert math.isnan(sp.critical_sigma_w2("gelu", 0.05))
    assert sp.fixed_point("gelu", 2.3025195116928447, 0.05).regime == "chaotic"
    # gelu at 0.3: xi_c was -4.5e15; tanh at 0.05: xi_c was 9.0e15 (chi_1 = 1 - 1e-16)
    for act, b in (("gelu", 0.3), ("tanh", 0.05)):
        _check_critical(act, sp.critical_sigma_w2(act, b), b)


def test_q0_is_fixed_points_q0():
    for q0 in (1e-3, 1.0, 30.0):
        sw2 = sp.critical_sigma_w2("tanh", 0.05, q0=q0)
        _check_critical("tanh", sw2, 0.05, q0)
    with pytest.raises(TypeError, match="q0"):
        sp.critical_sigma_w2("tanh", 0.05, q0=[1.0])
    with pytest.raises(ValueError, match="q0"):
        sp.critical_sigma_w2("tanh", 0.05, q0=0.0)


@pytest.mark.parametrize("act", ["tanh", "gelu", "selu", "silu"])
def test_phase_diagram_agrees_on_the_branch(act):
    sb = np.array([0.0, 0.05, 0.3, 1.0])
    crit = _crit(act, sb)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        pd = sp.phase_diagram(act, np.array([0.5, 1.0]), sb)
    np.testing.assert_allclose(pd.critical_sigma_w2, crit, rtol=1e-12)     # nan where nan
    for b, w in zip(sb, crit):
        if math.isfinite(w):
            cell = sp.phase_diagram(act, [w], [b])
            assert abs(cell.chi_1[0, 0] - 1.0) <= 1e-12 and cell.xi_c[0, 0] == math.inf


def test_validation_labels_are_fixed_points_regimes():
    from validation.catalogue import catalogue, quick_catalogue
    cases = catalogue() + quick_catalogue()
    assert len({c.name for c in cases}) == len(cases)
    n = 0
    for c in cases:
        if c.arch == "mlp" and c.regime in ("ordered", "critical", "chaotic"):
            assert sp.fixed_point(c.activation, c.sigma_w2, c.sigma_b2).regime == c.regime, c.name
            n += 1
    assert n > 50


# -- item 4: deep profiles -------------------------------------------------------------------------


def test_gelu_critical_profile_depth_1e4():
    """At the edge of chaos c -> 1 like a power of l: the c-map f(c) = sigma_w^2
    E[phi(u1) phi(u2)] / q* + sigma_b^2 / q* has f(1) = 1, f'(1) = chi_1 = 1 and f''(1) =
    sigma_w^2 q* E[phi''(u)^2] (Price's theorem), so with eps = 1 - c, a = f''(1) / 2 and
    eps' = eps - a eps^2 + b eps^3: 1 / eps^l = a l + (1 - b / a^2) log l + const (Schoenholz et
    al. 2017, Sec. 3: power-law convergence at criticality). The slope of 1 / eps^l between l1
    and l2 = 2 l1 is then a (1 + (1 - b/a^2) log 2 / (l2 - l1)); |1 - b/a^2| <= 10 is allowed
    (measured 3.5). gelu''(x) = (2 - x^2) phi_N(x); E[gelu''(sqrt(q) z)^2] by scipy quadrature."""
    from scipy import integrate
    b = 0.3
    sw2 = sp.critical_sigma_w2("gelu", b)
    L = 10_000
    p = sp.predict(sp.mlp(L, 10, "gelu", sigma_w2=sw2, sigma_b2=b), c0=0.5)
    for f in (p.q, p.c, p.log_g, p.log_G):
        assert np.all(np.isfinite(f))
    q = sp.fixed_point("gelu", sw2, b).q_star
    assert p.q[-1] == pytest.approx(q, rel=1e-12)
    npdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)             # noqa: E731
    e2 = integrate.quad(lambda z: ((2 - q * z * z) * npdf(math.sqrt(q) * z)) ** 2 * npdf(z),
                        -40, 40, epsabs=0, epsrel=1e-13, limit=200)[0]
    f2 = sw2 * q * e2
    eps = 1.0 - p.c
    for l1 in (1_000, L // 2):
        slope = (1 / eps[2 * l1 - 1] - 1 / eps[l1 - 1]) / l1
        assert abs(slope / (f2 / 2) - 1) <= 10 * math.log(2) / l1, (l1, slope / (f2 / 2))
    # gradients neither explode nor vanish exponentially: log g per layer -> log chi_1 = 0
    assert abs(p.log_g[L // 2] - p.log_g[L // 2 + 1000]) < 1e-9


def test_gelu_chaotic_profile_depth_1e4_matches_relu_far_out():
    """q grows geometrically (q* = inf, chi_1 = sigma_w^2 / 2): past q ~ 1e13 the gelu maps are
    relu's to ~1e-13, so from layer 200 on the profile's c must follow relu's arc-cosine map
    (closed form, signalprop's scalar kernel), started from the same c."""
    sw2, b, L = 3.9123172566388674, 0.3, 10_000
    p = sp.predict(sp.mlp(L, 10, "gelu", sigma_w2=sw2, sigma_b2=b), c0=0.5)
    for f in (p.log_q, p.c, p.log_g, p.log_G):
        assert np.all(np.isfinite(f))
    steps = np.diff(p.log_q[-100:])
    np.testing.assert_allclose(steps, math.log(sw2 / 2), rtol=1e-12)
    l0 = 200
    r = sp.predict(sp.mlp(L - l0, 10, "relu", sigma_w2=sw2), c0=float(p.c[l0 - 1]))
    assert abs(r.c[-1] - p.c[-1]) <= 1e-9 and 0 < 1 - p.c[-1] < 1e-6


def test_c_only_fill_matches_layer_by_layer(monkeypatch):
    """The run fill that iterates c alone (q settled, c still moving) against the layer-by-layer
    path on the same network (elu at its edge of chaos: the theta interpolant and the 2-D table
    of rho; tanh: Mehler's series)."""
    from signalprop.layers.dense import Dense
    for act, b in (("elu", 0.05), ("tanh", 0.05)):
        net = sp.mlp(600, 10, act, sigma_w2=sp.critical_sigma_w2(act, b), sigma_b2=b)
        fast = sp.predict(net, c0=0.5)
        with monkeypatch.context() as m:
            m.setattr(Dense, "c_only_rule", lambda *a: None)
            slow = sp.predict(net, c0=0.5)
        np.testing.assert_allclose(fast.c, slow.c, rtol=0, atol=1e-12)
        np.testing.assert_allclose(fast.log_g, slow.log_g, rtol=0, atol=1e-11)


# -- items 6-8: input checks -------------------------------------------------------------------


@pytest.mark.parametrize("call,name", [
    (lambda: length_map("tanh", float("nan"), 1.0, 0.0), "q"),
    (lambda: length_map("tanh", 0.0, 1.0, 0.0), "q"),
    (lambda: length_map("tanh", 1.0, -1.0, 0.0), "sigma_w2"),
    (lambda: length_map("tanh", 1.0, 1.0, math.inf), "sigma_b2"),
    (lambda: correlation_map("tanh", 0.0, 0.5, 1.0, 0.0), "q"),
    (lambda: correlation_map("tanh", 1.0, 1.5, 1.0, 0.0), "c"),
    (lambda: correlation_map("tanh", 1.0, [0.5, math.nan], 1.0, 0.0), "c"),
    (lambda: correlation_map("tanh", 1.0, 0.5, 0.0, 0.0), "sigma_w2"),
    (lambda: correlation_map("tanh", 1.0, 0.5, 1.0, -0.1), "sigma_b2"),
    (lambda: sp.predict(sp.mlp(3, 10, "tanh"), q0=[1.5]), "q0"),
    (lambda: sp.predict(sp.mlp(3, 10, "tanh"), q0=-1.0), "q0"),
    (lambda: sp.predict(sp.mlp(3, 10, "tanh"), c0=np.array([0.5])), "c0"),
    (lambda: sp.predict(sp.mlp(3, 10, "tanh"), c0=1.5), "c0"),
    (lambda: sp.fixed_point("tanh", [1.0], 0.0), "sigma_w2"),
    (lambda: sp.fixed_point("tanh", 1.0, 0.0, q0="1"), "q0"),
])
def test_mean_field_arguments_are_checked(call, name):
    with pytest.raises((ValueError, TypeError)) as e:
        call()
    assert name in str(e.value).split()[0] or str(e.value).startswith(name)


def test_maps_accept_valid_arrays():
    q = np.array([0.5, 1.0, 2.0])
    assert np.all(np.isfinite(length_map("tanh", q, 1.5, 0.1)))
    c = correlation_map("tanh", q, np.array([-1.0, 0.0, 1.0]), 1.5, 0.1)
    assert np.all(np.abs(c) <= 1 + 1e-12)


def test_fixed_point_at_huge_parameters_gives_a_result():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fp = sp.fixed_point("tanh", 1e308, 1e308)
        assert fp.q_star == math.inf and "exceeds float64" in fp.note
        assert fp.regime == "chaotic" and 0 < fp.xi_c < math.inf
        # q* = 2e308: tanh is the sign function there (rho = (2/pi) arcsin c; the rule at the
        # clamp q = 1e13 is within 2e-7 of it) and half of q* comes from the bias, so
        # c* = 1/2 + arcsin(c*) / pi and chi_c = (1/pi) / sqrt(1 - c*^2)
        from scipy.optimize import brentq
        cs = brentq(lambda c: c - 0.5 - math.asin(c) / math.pi, 0.0, 0.99, xtol=1e-15)
        assert fp.c_star == pytest.approx(cs, abs=1e-6)
        assert fp.chi_c == pytest.approx(1 / math.pi / math.sqrt(1 - cs * cs), rel=1e-5)
        for act in ("relu", "gelu"):
            assert sp.fixed_point(act, 1e308, 1e308).q_star == math.inf


def test_phase_diagram_refuses_a_grid_that_cannot_fit():
    sw, sb = np.linspace(0.5, 3.0, 100_000), np.linspace(0.0, 1.0, 100_000)
    with pytest.raises(ValueError, match=r"100000 x 100000.*GiB"):
        sp.phase_diagram("tanh", sw, sb)
    pd = sp.phase_diagram("tanh", sw[:3], sb[:2])          # small grids are unaffected
    assert pd.q_star.shape == (2, 3)
