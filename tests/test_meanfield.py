"""Mean-field theory: fixed points, depth scales, critical line, per-layer profiles.

Independent routes: mpmath (30 digits, tests/reference/make_meanfield_reference.py), closed forms
(relu, linear, erf), exact identities, and values tagged [NUM] in LITERATURE.md.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import signalprop as sp
from signalprop.meanfield import correlation_map, critical_branches, length_map

REF = json.loads((Path(__file__).parent / "reference" / "meanfield_reference.json").read_text())

# -- against mpmath ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", REF["fixed_points"], ids=lambda c: f"{c['activation']}-{c['sigma_w2']}")
def test_fixed_point_matches_mpmath(case):
    fp = sp.fixed_point(case["activation"], case["sigma_w2"], case["sigma_b2"])
    assert fp.q_star == pytest.approx(float(case["q_star"]), rel=1e-10)
    assert fp.chi_1 == pytest.approx(float(case["chi_1"]), rel=1e-10)


@pytest.mark.parametrize("case", REF["c_star"])
def test_chaotic_c_star_matches_mpmath(case):
    fp = sp.fixed_point(case["activation"], case["sigma_w2"], case["sigma_b2"])
    assert fp.regime == "chaotic"
    assert fp.c_star == pytest.approx(float(case["c_star"]), rel=1e-10)
    assert fp.chi_c == pytest.approx(float(case["chi_c"]), rel=1e-10)
    assert fp.xi_c == pytest.approx(-1.0 / math.log(float(case["chi_c"])), rel=1e-9)


@pytest.mark.parametrize("case", REF["critical"], ids=lambda c: f"{c['activation']}-{c['sigma_b2']}")
def test_critical_line_matches_mpmath(case):
    act, q, sb2 = sp.activation(case["activation"]), float(case["q_star"]), case["sigma_b2"]
    ref = float(case["sigma_w2"])
    # q* is a fixed point of the length map with chi_1 = 1 there (Hayou et al. 2019's definition)
    assert ref * act.second_moment(q) + sb2 == pytest.approx(q, rel=1e-10)
    assert ref * act.dphi_second_moment(q) == pytest.approx(1.0, rel=1e-10)
    branch = [b for b in critical_branches(case["activation"], sb2) if b.kind == "finite"]
    assert len(branch) == 1 and branch[0].q_star == pytest.approx(q, rel=1e-10)
    slope = ref * act.second_moment_slope(q)
    if slope < 1:   # a stable fixed point: fixed_point reaches it from q0 = 1
        sw2 = sp.critical_sigma_w2(case["activation"], sb2)
        assert sw2 == pytest.approx(ref, rel=1e-10)
        fp = sp.fixed_point(case["activation"], sw2, sb2)
        assert fp.chi_1 == pytest.approx(1.0, abs=1e-10)
        assert fp.q_star == pytest.approx(q, rel=1e-8)
    else:
        # Changed for issue 10 (item 3): this test used to assert critical_sigma_w2 == ref for
        # every case, but the silu (0.04) and gelu (0.1) points repel (length-map slope > 1): no
        # network started at q0 = 1 settles there, and fixed_point(ref) is not critical. The
        # value is still checked, as a branch that is not reached; the edge of chaos is refused.
        assert branch[0].sigma_w2 == pytest.approx(ref, rel=1e-10) and not branch[0].reached
        assert branch[0].length_slope == pytest.approx(slope, rel=1e-8)
        with pytest.warns(RuntimeWarning, match="no edge of chaos"):
            assert math.isnan(sp.critical_sigma_w2(case["activation"], sb2))


def test_silu_edge_of_chaos_is_an_unstable_length_fixed_point():
    # silu/gelu with sigma_w^2 > 2: the chi_1 = 1 point sits where the length map's slope exceeds 1,
    # so a network started elsewhere never stays there (it goes to the ordered q* or diverges).
    # Changed for issue 10 (item 3): critical_sigma_w2 used to return that point; it now refuses
    # (nan and a warning), and critical_branches reports it as not reached.
    act = sp.activation("silu")
    case = next(c for c in REF["critical"] if c["activation"] == "silu")
    (branch,) = [b for b in critical_branches("silu", 0.04) if b.kind == "finite"]
    sw2 = branch.sigma_w2
    assert sw2 == pytest.approx(float(case["sigma_w2"]), rel=1e-10) and not branch.reached
    assert sw2 * act.second_moment_slope(float(case["q_star"])) > 1
    assert sp.fixed_point("silu", sw2, 0.04).regime != "critical"
    with pytest.warns(RuntimeWarning, match="no edge of chaos"):
        assert math.isnan(sp.critical_sigma_w2("silu", 0.04))


@pytest.mark.parametrize("case", REF["profiles"], ids=lambda c: c["activation"])
def test_profile_matches_mpmath(case):
    net = sp.mlp(8, 100, case["activation"], sigma_w2=case["sigma_w2"], sigma_b2=case["sigma_b2"])
    p = sp.predict(net, q0=case["q0"])
    np.testing.assert_allclose(p.q, [float(v) for v in case["q"]], rtol=1e-10)
    np.testing.assert_allclose(p.log_g, [float(v) for v in case["log_g"]], rtol=1e-10, atol=1e-10)


# -- closed forms and exact identities ---------------------------------------------------------


@pytest.mark.parametrize("sw2", [0.5, 1.0, 1.5, 1.9, 2.0, 2.5, 4.0])
@pytest.mark.parametrize("sb2", [0.0, 0.01, 0.05, 0.3, 1.0])
def test_relu_chi1_is_half_sigma_w2(sw2, sb2):
    fp = sp.fixed_point("relu", sw2, sb2)
    assert fp.chi_1 == pytest.approx(sw2 / 2, rel=1e-14)
    if sw2 < 2 and sb2 > 0:
        assert fp.q_star == pytest.approx(sb2 / (1 - sw2 / 2), rel=1e-12)
    if sw2 > 2:
        assert fp.q_star == math.inf and "diverges" in fp.note


def test_tanh_collapsing_length_map_reports_q_star_zero():
    fp = sp.fixed_point("tanh", 0.8, 0.0)
    assert fp.q_star == 0.0 and fp.regime == "ordered"
    assert fp.chi_1 == pytest.approx(0.8, rel=1e-12)   # sigma_w^2 tanh'(0)^2
    assert "collapses" in fp.note


def test_linear_network_log_g_is_exact():
    L, sw2 = 30, 1.7
    p = sp.predict(sp.mlp(L, 50, "linear", sigma_w2=sw2, sigma_b2=0.3))
    l = np.arange(1, L + 1)
    np.testing.assert_allclose(p.log_g, (L - l) * math.log(sw2), rtol=1e-14, atol=1e-12)


def test_width_ratios_enter_log_g():
    widths = [10, 40, 20, 80, 5]
    p = sp.predict(sp.mlp(4, widths, "linear", sigma_w2=1.0))
    # g^l = prod_{k>l} (N_k / N_{k-1}) = N_L / N_l for a linear network with sigma_w^2 = 1
    np.testing.assert_allclose(np.exp(p.log_g), widths[-1] / np.array(widths[1:]), rtol=1e-14)


def test_erf_critical_line_closed_form():
    from scipy.optimize import brentq
    assert sp.critical_sigma_w2("erf", 0.0) == pytest.approx(math.pi / 4, rel=1e-14)
    for sb2 in (0.05, 0.3):
        # sigma_w^2(q) = pi sqrt(1 + 4q) / 4 and sigma_b^2(q) = q - sigma_w^2(q) (2/pi) asin(2q/(1+2q))
        def sbq(q):
            return q - math.pi * math.sqrt(1 + 4 * q) / 4 * (2 / math.pi) * math.asin(2 * q / (1 + 2 * q)) - sb2
        q = brentq(sbq, 1e-9, 50, xtol=1e-15, rtol=1e-15)
        assert sp.critical_sigma_w2("erf", sb2) == pytest.approx(math.pi * math.sqrt(1 + 4 * q) / 4, rel=1e-12)


def test_tanh_critical_sigma_w2_tends_to_one():
    sb2 = np.array([1e-2, 1e-4, 1e-6, 1e-8, 1e-10])
    crit = sp.critical_sigma_w2("tanh", sb2)
    assert np.all(np.diff(crit) < 0) and np.all(crit > 1)
    assert crit[-1] - 1 < 1e-3   # LITERATURE.md A(b): q* = 0.001 <-> sigma_w^2 = 1.001997
    assert sp.critical_sigma_w2("tanh", 0.0) == 1.0


def test_relu_critical_only_at_zero_bias():
    assert sp.critical_sigma_w2("relu", 0.0) == 2.0
    assert sp.critical_sigma_w2("leaky_relu", 0.0, ) == pytest.approx(2 / (1 + 0.01**2), rel=1e-14)
    with pytest.warns(RuntimeWarning, match="no edge of chaos"):
        assert math.isnan(sp.critical_sigma_w2("relu", 0.1))


def test_literature_depth_scales_tanh():
    # LITERATURE.md section 2 table [NUM], tanh sigma_b^2 = 0.05
    table = {1.0: (0.19359, 0.75903, 1.0, 1.748, 3.63), 1.5: (0.41804, 0.93864, 1.0, 1.683, 15.79),
             2.5: (1.06396, 1.13352, 0.44680, 1.180, 11.80), 4.0: (2.19549, 1.34240, 0.16507, 0.873, 6.98)}
    for sw2, (q, chi, cs, xq, xc) in table.items():
        fp = sp.fixed_point("tanh", sw2, 0.05)
        # the table's printed digits, +-1 in the last place (its c* = 0.16507 at sigma_w^2 = 4 is
        # 0.1650649620: the recorded value was rounded across the boundary; see papers/schoenholz2017)
        assert fp.q_star == pytest.approx(q, abs=1e-5) and fp.chi_1 == pytest.approx(chi, abs=1e-5)
        assert fp.c_star == pytest.approx(cs, abs=1e-5)
        assert fp.xi_q == pytest.approx(xq, abs=1e-3) and fp.xi_c == pytest.approx(xc, abs=1e-2)
    assert sp.trainable_depth("tanh", 1.5, 0.05) == pytest.approx(6 * 15.79, abs=0.03)


# -- depth and log space ---------------------------------------------------------------------


@pytest.mark.parametrize("act,sw2,sb2", [("relu", 3.0, 0.1), ("relu", 1.0, 0.0), ("tanh", 0.5, 0.0),
                                         ("tanh", 3.0, 0.05), ("linear", 0.7, 0.0)])
def test_depth_1e5_stays_finite_in_log_space(act, sw2, sb2):
    L = 100_000
    p = sp.predict(sp.mlp(L, 100, act, sigma_w2=sw2, sigma_b2=sb2), c0=0.5)
    assert np.all(np.isfinite(p.log_q)) and np.all(np.isfinite(p.log_g)) and np.all(np.isfinite(p.log_G))
    assert np.all(np.abs(p.c) <= 1)
    fp = sp.fixed_point(act, sw2, sb2)
    # far from the input the gradient grows or shrinks by chi_1 per layer
    rate = (p.log_g[L // 2] - p.log_g[L // 2 + 1000]) / 1000
    assert rate == pytest.approx(math.log(fp.chi_1), rel=1e-9, abs=1e-12)


def test_linear_depth_1e5_q_is_exactly_geometric():
    L = 100_000
    p = sp.predict(sp.mlp(L, 10, "linear", sigma_w2=0.9), q0=2.0)
    np.testing.assert_allclose(p.log_q, math.log(2.0) + np.arange(1, L + 1) * math.log(0.9), rtol=1e-12)
    assert p.q[-1] == 0.0 and "log_q" in p.meta["note"]


def test_two_inputs_c_one_is_preserved():
    p = sp.predict(sp.mlp(50, 10, "tanh", sigma_w2=2.5, sigma_b2=0.05), c0=1.0)
    assert np.all(p.c == 1.0)


def test_profile_reaches_fixed_point():
    fp = sp.fixed_point("tanh", 2.5, 0.05)
    p = sp.predict(sp.mlp(300, 10, "tanh", sigma_w2=2.5, sigma_b2=0.05), c0=0.9)
    assert p.q[-1] == pytest.approx(fp.q_star, rel=1e-12)
    assert p.c[-1] == pytest.approx(fp.c_star, rel=1e-9)


def test_phase_diagram_agrees_with_fixed_point():
    sw = np.array([1.0, 1.5, 2.5, 4.0])
    sb = np.array([0.05, 0.3])
    pd = sp.phase_diagram("tanh", sw, sb)
    assert pd.q_star.shape == (2, 4)
    for i, b in enumerate(sb):
        for j, w in enumerate(sw):
            fp = sp.fixed_point("tanh", w, b)
            assert pd.q_star[i, j] == pytest.approx(fp.q_star, rel=1e-12)
            assert pd.chi_1[i, j] == pytest.approx(fp.chi_1, rel=1e-12)
            assert pd.xi_c[i, j] == pytest.approx(fp.xi_c, rel=1e-9)
    np.testing.assert_allclose(pd.critical_sigma_w2, sp.critical_sigma_w2("tanh", sb), rtol=1e-12)


# -- invariants (hypothesis) -----------------------------------------------------------------

SMOOTH = ["tanh", "erf", "sigmoid", "gelu", "silu", "softplus", "elu", "selu", "hard_tanh", "relu",
          "leaky_relu", "gelu_tanh"]
MONOTONE_ABS = ["tanh", "erf", "relu", "leaky_relu", "hard_tanh", "linear"]
sw2s = st.floats(0.1, 6.0)
sb2s = st.floats(0.0, 2.0)


@settings(max_examples=40, deadline=None)
@given(act=st.sampled_from(SMOOTH), q=st.floats(1e-3, 50.0), sw2=sw2s, sb2=sb2s)
def test_c_equal_one_is_a_fixed_point(act, q, sw2, sb2):
    assert correlation_map(act, q, 1.0, sw2, sb2) == pytest.approx(1.0, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(act=st.sampled_from(SMOOTH), q=st.floats(1e-3, 50.0), sw2=sw2s, sb2=sb2s,
       cs=st.lists(st.floats(-1.0, 1.0), min_size=2, max_size=6))
def test_c_map_is_monotone_into_unit_interval(act, q, sw2, sb2, cs):
    c = np.sort(np.array(cs))
    out = correlation_map(act, q, c, sw2, sb2)
    assert np.all(np.abs(out) <= 1 + 1e-12)
    # d/dc E[phi(u1)phi(u2)] = q E[phi'(u1)phi'(u2)] >= 0 (Price's theorem) whenever phi is
    # monotone; all these activations except gelu, silu and selu-like negative dips are monotone
    if act not in ("gelu", "silu", "gelu_tanh"):
        assert np.all(np.diff(out) >= -1e-12)


@settings(max_examples=30, deadline=None)
@given(act=st.sampled_from(MONOTONE_ABS), qs=st.lists(st.floats(1e-4, 1e3), min_size=2, max_size=6),
       sw2=sw2s, sb2=sb2s)
def test_q_map_is_non_decreasing(act, qs, sw2, sb2):
    q = np.sort(np.array(qs))
    out = length_map(act, q, sw2, sb2)
    assert np.all(np.diff(out) >= -1e-12 * out[1:])


@settings(max_examples=20, deadline=None)
@given(widths=st.lists(st.integers(1, 500), min_size=6, max_size=6), k=st.integers(2, 9),
       act=st.sampled_from(["tanh", "relu", "gelu"]), sw2=sw2s, sb2=sb2s)
def test_profile_invariant_under_common_width_scaling(widths, k, act, sw2, sb2):
    a = sp.predict(sp.mlp(5, widths, act, sigma_w2=sw2, sigma_b2=sb2), c0=0.3)
    b = sp.predict(sp.mlp(5, [k * w for w in widths], act, sigma_w2=sw2, sigma_b2=sb2), c0=0.3)
    for f in ("q", "c", "log_g", "log_G"):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=1e-13, atol=1e-13)


@settings(max_examples=25, deadline=None)
@given(act=st.sampled_from(["tanh", "erf", "sigmoid", "softplus", "relu", "elu"]), sw2=sw2s, sb2=sb2s)
def test_chi1_below_one_iff_gradients_shrink_toward_input(act, sw2, sb2):
    fp = sp.fixed_point(act, sw2, sb2)
    if not (0 < fp.q_star < math.inf) or abs(fp.chi_1 - 1) < 1e-6:
        return
    q0 = (fp.q_star - sb2) / sw2              # so that q^1 = q*: the profile sits at the fixed point
    p = sp.predict(sp.mlp(4, 30, act, sigma_w2=sw2, sigma_b2=sb2), q0=q0)
    assert (p.log_g[0] < p.log_g[1]) == (fp.chi_1 < 1)


@settings(max_examples=25, deadline=None)
@given(act=st.sampled_from(SMOOTH + ["linear", "swish"]), sw2=st.floats(0.05, 10.0), sb2=st.floats(0.0, 3.0))
def test_fixed_point_never_fails_on_valid_input(act, sw2, sb2):
    fp = sp.fixed_point(act, sw2, sb2)
    assert fp.regime in ("ordered", "critical", "chaotic")
    for f in ("q_star", "c_star", "chi_1", "chi_c", "xi_q", "xi_c", "xi_grad"):
        assert not math.isnan(getattr(fp, f)), f
    assert -1 <= fp.c_star <= 1 and fp.chi_1 >= 0


@pytest.mark.parametrize("act,sw2", [("relu", 3.0), ("relu", 1.5), ("tanh", 0.8), ("gelu", 3.0)])
def test_depth_scales_without_a_finite_fixed_point(act, sw2):
    """q* = 0 or inf: the correlation map of the normalised c has slope 1 at c = 1 in the limit
    (linear at 0, positively homogeneous at infinity), so xi_c = inf, never a negative number;
    xi_q = inf when q* = inf. Independent check: along predict's profile 1 - c^l decays like a
    power of l (relu: 9 pi^2 / (2 l^2), Hayou et al. 2019), not exponentially."""
    fp = sp.fixed_point(act, sw2, 0.0)
    assert fp.q_star in (0.0, math.inf)
    assert fp.xi_c == math.inf
    if fp.q_star == math.inf:
        assert fp.xi_q == math.inf
    else:
        assert 0 < fp.xi_q < math.inf
    pd = sp.phase_diagram(act, np.array([sw2]), np.array([0.0]))
    assert pd.xi_c[0, 0] == math.inf
    if act == "relu":
        p = sp.predict(sp.mlp(3000, 10, act, sigma_w2=sw2), c0=0.5)
        l = np.array([1000, 3000])
        ratio = (1 - p.c[l - 1]) * l ** 2 / (9 * math.pi ** 2 / 2)
        assert np.all(np.abs(ratio - 1) < 0.05)


def test_decay_towards_a_tiny_bias_fixed_point_is_not_extrapolated():
    """q^l = 0.25 q^{l-1} + 1e-20 decays geometrically for ~30 layers, then settles at the fixed
    point 1e-20/0.75. The steady-run fill once extrapolated the decay past it (q^100 = 6e-61)."""
    p = sp.predict(sp.mlp(100, 10, "linear", sigma_w2=0.25, sigma_b2=1e-20))
    q, ref = 1.0, []
    for _ in range(100):
        q = 0.25 * q + 1e-20
        ref.append(q)
    np.testing.assert_allclose(p.q, ref, rtol=1e-12)
