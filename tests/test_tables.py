"""Chebyshev tables in log q (signalprop.tables) against the direct routes, and phase_diagram.

Stated tolerances (never widened to pass; the measured figures are in the comments):

* ``moments``: |log E_table - log E_direct| <= 1e-13 (a relative error of 1e-13) against
  ``act.moments`` at 80 values of q in [1e-6, 1.13e6], panel edges included, for every built-in
  activation without a closed form and a sympy one (measured <= 9e-15: ``act.moments``' own
  Gauss-Hermite rule at small q is the larger error); <= 1e-14 against mpmath (measured 2e-15).
* ``mehler_sq``: against ``act.mehler_coefficients(q)**2`` wherever that exists, every
  |b_k - b_k'| and their sum <= 1e-13 sum_k b_k (measured <= 5e-14, the Gauss-Hermite route's
  own error); the correlation map sum_k b_k c^k / sum_k b_k within 1e-13 of the direct series
  and, beyond its range, of the bivariate quadrature (measured 1e-14).
* Parseval: sum_k b_k = E[phi^2] to 1e-13 relative at every node of every panel and at random q
  (certifies truncation and quadrature; measured <= 1e-14, mostly the error of the direct
  E[phi^2] it is compared with; against mpmath the sums agree to ~1e-16).
* The trapezoidal rule behind the coefficients is converged: halving its step changes no b_k by
  more than 4e-15 sum_k b_k (measured 9e-16).
"""

import json
import math
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

import signalprop as sp
from signalprop import gaussian, tables
from signalprop.tables import LQ_HI, LQ_LO

TABLED = ["tanh", "sigmoid", "gelu", "gelu_tanh", "silu", "softplus", "elu", "selu", "hard_tanh",
          "x*tanh(x)"]
SERIES = ["tanh", "sigmoid", "gelu", "gelu_tanh", "silu", "softplus"]
W = tables._WIDTH
REF_CRIT = json.loads((Path(__file__).parent / "reference" / "critical_reference.json").read_text())


def _lqs(rng, n=60):
    """Random log q over the table, plus panel edges (both ends of the range included)."""
    edges = LQ_LO + W * np.r_[0, rng.integers(1, tables._N_PANELS, 18), tables._N_PANELS]
    return np.r_[rng.uniform(LQ_LO, LQ_HI, n), edges]


# -- moments ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TABLED)
def test_moments_match_direct(name):
    act = sp.activation(name)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    worst = 0.0
    for lq in _lqs(rng):
        lv, ld = tables.moments(act, float(lq))
        v, d = act.moments(math.exp(lq))            # the direct route, one q at a time
        worst = max(worst, abs(lv - math.log(v)), abs(ld - math.log(d)))
    assert worst <= 1e-13


@pytest.mark.parametrize("name,q", [("tanh", 3e-6), ("tanh", 0.7), ("tanh", 2e5),
                                    ("softplus", 1e-4), ("softplus", 40.0)])
def test_moments_match_mpmath(name, q):
    mp = pytest.importorskip("mpmath")
    f = {"tanh": (lambda x: mp.tanh(x) ** 2, lambda x: mp.sech(x) ** 4),
         "softplus": (lambda x: mp.log1p(mp.exp(x)) ** 2,
                      lambda x: 1 / (1 + mp.exp(-x)) ** 2)}[name]
    with mp.workdps(30):
        s = mp.sqrt(mp.mpf(q))
        # breakpoints at the scale of the activation (x = +-2^k) and of the Gaussian
        pts = sorted({0, -12, 12,
                      *(sg * mp.mpf(2) ** k / s for k in range(-3, 7) for sg in (1, -1))})
        pts = [-mp.inf] + [p for p in pts if abs(p) <= 12] + [mp.inf]
        ref = [mp.quad(lambda z: g(s * z) * mp.exp(-z * z / 2), pts) / mp.sqrt(2 * mp.pi)
               for g in f]
        lv, ld = tables.moments(sp.activation(name), math.log(q))
        assert abs(lv - float(mp.log(ref[0]))) <= 1e-14
        assert abs(ld - float(mp.log(ref[1]))) <= 1e-14


def test_moments_none_outside_and_for_closed_forms():
    tanh = sp.activation("tanh")
    assert tables.moments(tanh, LQ_LO) is not None and tables.moments(tanh, LQ_HI) is not None
    for lq in (LQ_LO - 1e-9, LQ_HI + 1e-9, math.nan, math.inf, -math.inf):
        assert tables.moments(tanh, lq) is None
    for name in ("relu", "erf", "linear"):
        assert tables.moments(sp.activation(name), 0.0) is None
    assert tables.moments(sp.activation("leaky_relu", slope=0.2), 0.0) is None


# -- Mehler coefficients ------------------------------------------------------------------------


def _direct_q_max(act):
    """Largest q where act.mehler_coefficients answers (its node ladder ends at 1536)."""
    return (1536 - 16) / 2 * act.tau ** 2 / 1100


@pytest.mark.parametrize("name", SERIES)
def test_mehler_matches_direct(name):
    act = sp.activation(name)
    rng = np.random.default_rng(7 + len(name))
    top = math.log(_direct_q_max(act)) - 1e-9
    k_top = int((top - LQ_LO) / W)
    lqs = np.r_[rng.uniform(LQ_LO, top, 30), LQ_LO + W * np.arange(0, k_top + 1, 4)]
    cs = np.array([-1.0, -0.6, 0.0, 0.25, 0.8, 0.99, 0.9999, 1.0])
    for lq in lqs:
        q = math.exp(lq)
        b = tables.mehler_sq(act, q)
        bd = act.mehler_coefficients(q) ** 2
        n = max(b.size, bd.size)
        diff = np.zeros(n)
        diff[:b.size] += b
        diff[:bd.size] -= bd
        S = bd.sum()
        assert np.max(np.abs(diff)) <= 1e-13 * S, q
        assert np.sum(np.abs(diff)) <= 1e-13 * S, q
        rho = np.polynomial.polynomial.polyval(cs, b) / b.sum()
        rho_d = np.polynomial.polynomial.polyval(cs, bd) / S
        assert np.max(np.abs(rho - rho_d)) <= 1e-13, q


@pytest.mark.parametrize("name", ["tanh", "gelu"])
def test_mehler_beyond_the_direct_series_matches_bivariate_quadrature(name):
    act = sp.activation(name)
    meh = tables.tables_of(act).meh
    k_last = max(k for k in range(meh.n) if meh.panel(k) is not None)
    lo, hi = math.log(_direct_q_max(act)), LQ_LO + (k_last + 1) * W
    assert hi > lo
    cs = np.array([-0.9, -0.2, 0.3, 0.7, 0.95])
    for lq in np.linspace(lo, hi - 1e-9, 4):
        q = math.exp(lq)
        b = tables.mehler_sq(act, q)
        rho = np.polynomial.polynomial.polyval(cs, b) / b.sum()
        ref = act.cross_moment(q, q, cs) / act.second_moment(q)
        assert np.max(np.abs(rho - ref)) <= 1e-13, q


@pytest.mark.parametrize("name", SERIES)
def test_mehler_parseval_certifies_every_panel(name):
    """sum_k b_k = E[phi^2] on every panel the table keeps; the kept panels form one run from
    q = 1e-6 up, and the series stays shorter than the cap."""
    act = sp.activation(name)
    meh = tables.tables_of(act).meh
    meh.build(range(meh.n))
    kept = [k for k in range(meh.n) if meh.panels[k] is not False]
    assert kept == list(range(len(kept))) and len(kept) > 40
    rng = np.random.default_rng(3)
    for k in kept:
        nodes = meh.nodes(k)
        u = np.r_[nodes[0] + 1e-12, nodes[1:-1], nodes[-1] - 1e-12, LQ_LO + (k + rng.random(2)) * W]
        V = act.second_moment(np.exp(u))
        for ui, v in zip(u, V):
            b = tables.mehler_sq(act, math.exp(ui))
            assert b.size < tables._K_MAX - 8
            assert abs(b.sum() - v) <= 1e-13 * v, (k, ui)


@pytest.mark.parametrize("name", SERIES)
def test_trapezoidal_hermite_rule_is_converged(name):
    act = sp.activation(name)
    for q in (1e-6, 1e-2, 0.5, 2.0, 6.0):
        for K in (tables._K_FIRST, tables._K_MAX):
            lev = tables._trap_level(q, act.tau, K)
            b1 = tables.hermite_sq(act, [q], K, lev)[0]
            b2 = tables.hermite_sq(act, [q], K, lev + 4)[0]       # half the step
            assert np.max(np.abs(b1 - b2)) <= 4e-15 * b2.sum(), (q, K)


def test_hermite_sq_against_gauss_hermite_at_small_q():
    # an independent route where it is exact to rounding: 64-node Gauss-Hermite at q = 1e-3
    act = sp.activation("tanh")
    a = gaussian.hermite_coefficients(act.phi, 1e-3, 40, 64)
    b = tables.hermite_sq(act, [1e-3])[0]
    assert np.max(np.abs(b[:41] - a * a)) <= 1e-15 * b.sum()


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "gelu"])
def test_mehler_rho_is_the_series(name):
    act = sp.activation(name)
    for q in (1e-6, 0.01, 0.3, 1.3, 3.0):
        b = tables.mehler_sq(act, q)
        for c in (-1.0, -0.3, 0.0, 0.5, 0.99, 1.0):
            ref = float(np.polynomial.polynomial.polyval(c, b) / b.sum())
            assert tables.mehler_rho(act, q, c) == pytest.approx(ref, abs=2e-15)


def test_mehler_none_without_series_or_outside():
    for name in ("relu", "erf", "elu", "selu", "hard_tanh", "linear", "x*tanh(x)"):
        assert tables.mehler_sq(sp.activation(name), 1.0) is None
        assert tables.mehler_rho(sp.activation(name), 1.0, 0.5) is None
    tanh = sp.activation("tanh")
    for q in (0.0, -1.0, math.nan, math.inf, 0.99e-6, 50.0):
        assert tables.mehler_sq(tanh, q) is None
    assert tables.mehler_sq(tanh, 1e-6) is not None


# -- the cache ----------------------------------------------------------------------------------


def test_tables_are_shared_by_equal_activations_only():
    a, b = sp.activation("tanh"), sp.activation("tanh")
    # issue 11: equal built-ins are now one shared object (activation() returns it by value)
    assert a == b and tables.tables_of(a) is tables.tables_of(b)
    assert tables.tables_of(sp.activation("elu", alpha=0.5)) is not \
        tables.tables_of(sp.activation("elu", alpha=1.0))
    f = sp.activation(lambda x: np.tanh(x), dphi=lambda x: 1 / np.cosh(x) ** 2)
    g = sp.activation(lambda x: np.tanh(x), dphi=lambda x: 1 / np.cosh(x) ** 2)
    assert tables.tables_of(f) is not tables.tables_of(g)
    lv, ld = tables.moments(f, 0.0)
    assert (lv, ld) == pytest.approx(tables.moments(a, 0.0), abs=1e-13)


def test_log_q_table_vectorised_matches_direct():
    act = sp.activation("gelu")
    t = tables.tables_of(act).pd
    q = np.exp(np.r_[np.linspace(math.log(1e-12), math.log(1e6), 97), t.lo, t.hi])
    ref = np.stack([act.second_moment(q), act.second_moment_slope(q), act.dphi_second_moment(q)],
                   axis=-1)
    np.testing.assert_allclose(t(q), ref, rtol=1e-13, atol=0)
    assert t(q.reshape(3, -1)).shape == (3, q.size // 3, 3)


# -- phase_diagram ------------------------------------------------------------------------------


def test_phase_diagram_chaotic_points_agree_with_fixed_point():
    # rows sigma_b^2 = 0, 1/255, 0.3 of the benchmark grid: c* by Mehler's series (tables)
    # against fixed_point (bivariate quadrature), away from the edge of chaos
    sw = np.linspace(1.0, 4.0, 256)[::15]
    sb = np.array([0.0, 1 / 255, 0.3])
    pd = sp.phase_diagram("tanh", sw, sb)
    n = 0
    for i, b in enumerate(sb):
        for j, w in enumerate(sw):
            fp = sp.fixed_point("tanh", w, b)
            if abs(fp.chi_1 - 1.0) < 1e-2:
                continue
            n += fp.regime == "chaotic"
            assert pd.q_star[i, j] == pytest.approx(fp.q_star, rel=1e-12)
            assert pd.chi_1[i, j] == pytest.approx(fp.chi_1, rel=1e-12)
            assert pd.c_star[i, j] == pytest.approx(fp.c_star, abs=1e-12)
            assert pd.xi_c[i, j] == pytest.approx(fp.xi_c, rel=1e-11)
    assert n >= 20


def test_near_neutral_length_map_diverges_instead_of_a_spurious_root():
    # gelu-like maps at sigma_w^2 = 2 grow like q + sigma_b^2 - O(q^-1/2): q* = inf; the sign of
    # G = log T(q) - log q (~ sigma_b^2 / q) is lost in rounding near q ~ 1e20, which used to
    # stop the bracketing there and then ask the bivariate rule for c* at q = 4e20
    # (iterating the map from q = 1 for 2e4 layers: q ~ 6e3 and 1e4, still growing)
    for name, sb2 in (("gelu_tanh", 0.3), ("gelu", 0.3), ("silu", 0.6)):
        assert sp.fixed_point(name, 2.0, sb2).q_star == math.inf
    pd = sp.phase_diagram("gelu_tanh", [1.5, 2.0], [0.3])
    assert pd.q_star[0, 1] == math.inf and np.isfinite(pd.q_star[0, 0])


def test_critical_line_without_slope_at_zero_is_nan():
    # x tanh(x) has phi(0) = phi'(0) = 0: no critical point at sigma_b^2 = 0 (was 1 / 0).
    # Changed for issue 10 (item 3): the finite entry was at sigma_b^2 = 0.1, where the chi_1 = 1
    # fixed point repels (length-map slope 1.15; a network from q0 = 1 diverges, chi_1 -> 1.25):
    # critical_sigma_w2 now refuses it; at 0.5 the point attracts and is returned.
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = sp.critical_sigma_w2("x*tanh(x)", [0.0, 0.5])
    assert np.isnan(out[0]) and np.isfinite(out[1])
    assert sp.fixed_point("x*tanh(x)", out[1], 0.5).regime == "critical"
    assert any(issubclass(x.category, RuntimeWarning) for x in w)


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "silu", "softplus", "sigmoid", "elu", "selu"])
def test_mean_ratio_table_against_the_direct_route(name):
    """E[phi]/sqrt(E[phi^2]) from the Chebyshev table in log q (residual networks need it at every
    layer) against act.mean / act.second_moment at random q and at the table's ends: <= 1e-13
    absolute (measured <= 2.3e-15)."""
    a = sp.activation(name)
    rng = np.random.default_rng(5)
    lqs = np.r_[rng.uniform(tables.LQ_LO, math.log(1e6), 60), tables.LQ_LO, math.log(1e6)]
    for lq in lqs:
        q = math.exp(lq)
        direct = float(a.mean(q)) / math.sqrt(float(a.second_moment(q)))
        assert tables.mean_ratio(a, lq) == pytest.approx(direct, abs=1e-13)
    assert tables.mean_ratio(sp.activation("tanh"), 0.0) is None       # odd: 0 exactly, no table
    assert tables.mean_ratio(sp.activation("relu"), 0.0) is None       # closed form
    assert tables.mean_ratio(a, math.log(1e7)) is None              # outside the table


# -- issue 10 (item 4): rho(c) at a settled q, in two variables, and small-q moments -------------


def _direct_rho(act):
    from signalprop.maps import rho
    return lambda q, c: rho(act, q, c)


@pytest.mark.parametrize("name,q", [("sigmoid", 45.7), ("elu", 1.3), ("hard_tanh", 0.4639),
                                    ("hard_tanh", 10.0), ("gelu", 1e13)])
def test_rho_theta_against_the_direct_rule(name, q):
    """The interpolant in theta = arccos c at one q against the direct rule at 40 random c: within
    5e-14 (its acceptance test; measured <= 1.2e-14 away from q = 1e13)."""
    act = sp.activation(name)
    coef = tables.rho_theta(act, q, _direct_rho(act))
    assert coef is not None
    c = np.random.default_rng(11).uniform(-1.0, 1.0, 40)
    ref = np.asarray(_direct_rho(act)(np.full(c.size, q), c))
    got = np.array([tables.theta_at(coef, x) for x in c])
    assert np.max(np.abs(got - ref)) <= 5e-14
    if name == "gelu":       # q = 1e13: relu's arc-cosine kernel to 0.28 / q (closed form)
        relu = (np.sqrt(1 - c * c) + (np.pi - np.arccos(c)) * c) / np.pi
        assert np.max(np.abs(got - relu)) <= 1e-13


def test_rho_theta_refuses_what_it_cannot_resolve():
    # tanh at q = 1e13 is a smoothed sign function: its features at theta ~ 3e-7 need more than
    # 256 terms
    act = sp.activation("tanh")
    assert tables.rho_theta(act, 1e13, _direct_rho(act)) is None


@pytest.mark.parametrize("name", ["elu", "selu", "hard_tanh"])
def test_rho_2d_against_the_direct_rule(name):
    """The table of rho(q, c) in (log q, theta) at random points of q in [1e-6, 10]: within
    5e-14 of the direct rule (its acceptance test; measured ~1e-14); every panel there accepted."""
    act = sp.activation(name)
    rng = np.random.default_rng(3)
    for lq, c in zip(rng.uniform(math.log(1e-6), math.log(10.0), 25), rng.uniform(-1, 1, 25)):
        got = tables.rho_2d(act, lq, c, _direct_rho(act))
        assert got is not None, (name, lq)
        assert abs(got - float(_direct_rho(act)(math.exp(lq), c))) <= 5e-14
    assert tables.rho_2d(sp.activation("tanh"), 0.0, 0.5, _direct_rho(act)) is None


def test_rho_2d_small_q_against_mpmath():
    """elu at small q: the panel in sqrt(q) on (0, 0.1] (first-kind nodes at q >= 4.5e-8)
    against nested mpmath quadrature (critical_reference.json): within 1e-13 (measured
    <= 5.3e-14; the direct rule itself is 1.3e-14 to 1e-12 off at q = 7e-8 to 1e-10)."""
    act = sp.activation("elu")
    for case in REF_CRIT["elu_rho"]:
        got = tables.rho_2d(act, math.log(case["q"]), case["c"], _direct_rho(act))
        assert got is not None and abs(got - float(case["rho"])) <= 1e-13, case


@pytest.mark.parametrize("name", ["elu", "selu", "tanh", "gelu", "hard_tanh"])
def test_small_moments_against_the_direct_rule(name):
    """(log E[phi^2], log E[phi'^2]) for q in [1e-12, 1e-6] from the panel in sqrt(q): within
    2e-14 absolute (~ the rounding of log q itself, 3.6e-15 at q = 1e-12) of the direct rule."""
    act = sp.activation(name)
    for q in np.exp(np.linspace(math.log(1e-12), math.log(1e-6), 9)):
        lv, ld = tables.small_moments(act, math.log(q))
        v, d = act.moments(q)
        assert abs(lv - math.log(v)) <= 2e-14 and abs(ld - math.log(d)) <= 2e-14
    assert tables.small_moments(act, math.log(2e-6)) is None
    assert tables.small_moments(sp.activation("sigmoid"), math.log(1e-8)) is None   # phi(0) != 0


# -- the vectorised evaluators (for the public maps) ---------------------------------------------


@pytest.mark.parametrize("name", ["tanh", "gelu", "elu", "x*tanh(x)"])
def test_moments_array_is_moments_bit_for_bit(name):
    """moments_array: the same Horner operations as moments, so the same numbers exactly; None
    <-> not ok (outside, nan); small_moments_array within 1e-15 of small_moments (a row-order
    accumulation instead of a matrix product)."""
    act = sp.activation(name)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    lq = np.r_[_lqs(rng, 40), LQ_HI + 1e-9, LQ_LO - 1e-9, math.nan]
    lv, ld, ok = tables.moments_array(act, lq)
    for i, u in enumerate(lq):
        m = tables.moments(act, float(u))
        assert (m is None) == (not ok[i])
        if m is not None:
            assert (lv[i], ld[i]) == m
    lq = rng.uniform(math.log(1e-280), LQ_LO, 20)
    lv, ld, ok = tables.small_moments_array(act, lq)
    for i, u in enumerate(lq):
        m = tables.small_moments(act, float(u))
        assert (m is None) == (not ok[i])
        if m is not None:
            assert abs(lv[i] - m[0]) <= 1e-15 * abs(m[0]) and abs(ld[i] - m[1]) <= 1e-15


@pytest.mark.parametrize("name", SERIES)
def test_mehler_array_against_mehler_rho_and_price(name):
    """mehler_array: rho within 2e-15 of mehler_rho (powers by doubling instead of exp(k log c);
    measured <= 7e-16), not ok exactly where mehler_rho is None; its slope sum_k k b_k c^(k-1) / q
    within 1e-12 relative of the direct E[phi'(u1) phi'(u2)] (Price's theorem) wherever it is
    >= 1e-3 E[phi^2] (the rule maps.chi_c keeps; measured <= 7e-15); a point's value does not
    depend on the other points of the call."""
    act = sp.activation(name)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    q = np.exp(rng.uniform(math.log(1e-6), math.log(40.0), 40))
    c = np.r_[rng.uniform(-1.0, 1.0, 36), -1.0, 1.0, 0.0, 1e-9]
    r, ds, ok = tables.mehler_array(act, q, c, slope=True)
    for i in range(q.size):
        m = tables.mehler_rho(act, float(q[i]), float(c[i]))
        assert (m is None) == (not ok[i])
        if m is not None:
            assert abs(r[i] - m) <= 2e-15
            one = tables.mehler_array(act, q[i], c[i], slope=True)
            assert float(one[0]) == r[i] and float(one[1]) == ds[i]
    keep = ok & (ds >= 1e-3 * act.second_moment(q))
    assert keep.sum() >= 15
    dd = act.dphi_cross_moment(q[keep], q[keep], c[keep])
    assert np.max(np.abs(ds[keep] / q[keep] - dd) / dd) <= 1e-12


@pytest.mark.parametrize("name", ["elu", "selu", "hard_tanh"])
def test_rho_2d_array_against_rho_2d(name):
    """rho_2d_array within 2e-15 of rho_2d (the same panels; measured <= 8e-16), not ok exactly
    where rho_2d is None."""
    from signalprop.maps import rho_fn
    act = sp.activation(name)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    q = np.r_[np.exp(rng.uniform(math.log(1e-8), math.log(1e6), 30)), 2e6]
    c = np.r_[rng.uniform(-1.0, 1.0, 28), -1.0, 1.0, 0.0]
    r, ok = tables.rho_2d_array(act, q, c, rho_fn(act))
    for i in range(q.size):
        m = tables.rho_2d(act, math.log(q[i]), float(c[i]), rho_fn(act))
        assert (m is None) == (not ok[i])
        if m is not None:
            assert abs(r[i] - m) <= 2e-15
    assert not ok[-1] and ok.sum() >= 10      # q > ~1.13e6: no table; some panels are rejected


# -- the (log q, scaled angle) tables of an odd analytic activation past its Mehler table -------


def _slope_ratio(act):
    from signalprop.maps import slope_ratio_fn
    return slope_ratio_fn(act)


def test_rho_scaled_against_the_direct_rule():
    """tanh's table of rho(q, c) and of E[phi' phi'] / E[phi'^2] on q in [7, 50] (beyond its
    Mehler table) against the direct rule at 60 random points with c = -1, 0, 1 and panel edges
    added: rho within 5e-14 absolute, the slope ratio within 5e-14 relative (the acceptance
    test; measured <= 5e-15 and ~2e-15)."""
    act = sp.activation("tanh")
    rng = np.random.default_rng(23)
    q = np.r_[np.exp(rng.uniform(math.log(7.0), math.log(50.0), 60)), np.exp([2.0, 3.0, 3.0])]
    c = np.r_[rng.uniform(-1.0, 1.0, 60), -1.0, 0.0, 1.0]
    got, ok = tables.rho_scaled_array(act, q, c, _direct_rho(act))
    assert ok.all()
    assert np.max(np.abs(got - _direct_rho(act)(q, c))) <= 5e-14
    assert np.array_equal(tables.rho_scaled_array(act, q, -c, _direct_rho(act))[0], -got)
    got, ok = tables.slope_scaled_array(act, q, c, _slope_ratio(act))
    ref = _slope_ratio(act)(q, c)
    assert ok.all() and np.max(np.abs(got - ref) / ref) <= 5e-14


def test_rho_scaled_refuses_what_it_cannot_certify():
    """No table for activations other than odd analytic ones and gelu (their points stay
    direct), below q = 1, and past the direct rule's own scatter (tanh's rho panels past q ~ 8e3
    are rejected: ~1e-13 noise at q >= 2e4 keeps their theta tails above 8e-15)."""
    tanh = sp.activation("tanh")
    assert not tables.slope_scaled_array(sp.activation("gelu"), [10.0], [0.5],
                                         _slope_ratio(sp.activation("gelu")))[1].any()
    for name in ("sigmoid", "softplus", "elu", "erf", "relu"):
        act = sp.activation(name)
        assert not tables.rho_scaled_array(act, [10.0], [0.5], _direct_rho(act))[1].any()
    got, ok = tables.rho_scaled_array(tanh, [0.5, 1e6, math.inf], [0.5, 0.5, 0.5],
                                      _direct_rho(tanh))
    assert not ok.any() and np.isnan(got).all()


def test_rho_scaled_is_a_fixed_function_of_the_panel():
    """A panel built cold equals the cached one bit for bit, and a point's value does not depend
    on the other points of the call."""
    act = sp.activation("tanh")
    rho = _direct_rho(act)
    q = np.array([8.0, 9.5, 12.0, 19.0])
    c = np.array([0.999, -0.3, 0.0, 0.7])
    warm, _ = tables.rho_scaled_array(act, q, c, rho)
    cold = tables._ScaledTable(act, rho, "rho")
    assert np.array_equal(cold.panel(2, 1), tables.tables_of(act)._scaled["rho"].panel(2, 1))
    one = [tables.rho_scaled_array(act, q[i:i + 1], c[i:i + 1], rho)[0][0] for i in range(4)]
    assert np.array_equal(np.array(one), warm)


def test_tanh_rho_2d_reads_the_scaled_table_past_its_mehler_table():
    """tanh: rho_2d (predict's per-layer route) past the Mehler table is the scaled table's value
    bit for bit (its scalar twin) and within 5e-14 of the direct rule; None where the Mehler
    table answers (q = 5), below q = 1, and for a short run (long_run=False); rho_2d_at_q (the
    fill of c alone at a settled q) agrees with rho_2d to the last bits of acos/asinh (4e-15;
    measured 7.5e-16), is odd in c and 0 at c = 0, and is None for gelu and inside the Mehler
    table."""
    act = sp.activation("tanh")
    rho = _direct_rho(act)
    q = np.array([8.0, 19.0, 28.63, 45.0])
    c = np.array([0.3, -0.9999, 0.99993, 0.0])
    arr, ok = tables.rho_scaled_array(act, q, c, rho)
    one = [tables.rho_2d(act, math.log(a), b, rho) for a, b in zip(q, c)]
    assert ok.all() and np.array_equal(np.array(one), arr)
    assert np.max(np.abs(arr - rho(q, c))) <= 5e-14
    assert tables.rho_2d(act, math.log(5.0), 0.3, rho) is None
    assert tables.rho_2d(act, math.log(0.5), 0.3, rho) is None
    assert tables.rho_2d(act, math.log(19.0), 0.3, rho, long_run=False) is None
    cs = np.r_[np.linspace(-1.0, 1.0, 41), np.cos(np.geomspace(1e-7, 1.0, 20))]
    for qv in q:
        f = tables.rho_2d_at_q(act, math.log(qv), rho)
        got = np.array([f(float(v)) for v in cs])
        ref = np.array([tables.rho_2d(act, math.log(qv), float(v), rho) for v in cs])
        assert np.max(np.abs(got - ref)) <= 4e-15
        assert f(0.0) == 0.0 and f(-0.7) == -f(0.7)
    assert tables.rho_2d_at_q(act, math.log(5.0), rho) is None
    assert tables.rho_2d_at_q(sp.activation("gelu"), math.log(100.0), rho) is None


def test_gelu_inner_expectation_closed_form():
    """E_w[(a + b w) Phi(a + b w)] = a Phi(a / r) + (b^2 / r) phi(a / r), r = sqrt(1 + b^2) (the
    inner integral of tables.gelu_rho), against mpmath quadrature at 30 digits: within 1e-25."""
    import mpmath as mp
    with mp.workdps(30):
        for a, b in ((0.3, 0.7), (-2.5, 4.0), (7.0, 0.05), (-40.0, 30.0)):
            a, b = mp.mpf(a), mp.mpf(b)
            pts = sorted({-a / b, mp.mpf(-12), mp.mpf(0), mp.mpf(12)})
            lhs = mp.quad(lambda w: (a + b * w) * mp.ncdf(a + b * w) * mp.npdf(w),
                          [-mp.inf] + pts + [mp.inf])
            r = mp.sqrt(1 + b * b)
            rhs = a * mp.ncdf(a / r) + b * b / r * mp.npdf(a / r)
            assert abs(lhs - rhs) <= mp.mpf("1e-25") * max(1, abs(rhs))


def test_gelu_rho_against_the_direct_rule_and_mpmath():
    """gelu_rho (1-D rule on the closed form) against the bivariate engine at q = 40, 3e3, 1e6,
    c random and within 3 q^(-1/2) of +-1 in angle: within 5e-14 (measured <= 8e-16). And at
    q = 3.97e5, c = -0.998 (where the engine is 5.7e-14 off) against mpmath (the nested rule of
    tests/reference/make_reference.py, dps 20, computed once: E[phi phi] =
    5.357704514533253532445, E[phi^2] = 198733.9856666006405668): within 1e-15 (measured
    2e-20)."""
    act = sp.activation("gelu")
    rng = np.random.default_rng(31)
    for q in (40.0, 3e3, 1e6):
        th = rng.uniform(0.0, 3.0 / math.sqrt(q), 4)
        c = np.r_[rng.uniform(-1.0, 1.0, 4), np.cos(th), -np.cos(th), -1.0, 0.0, 1.0]
        got = tables.gelu_rho(np.full(c.size, q), c)
        assert np.max(np.abs(got - _direct_rho(act)(np.full(c.size, q), c))) <= 5e-14
    got = tables.gelu_rho(np.array([397467.97192822106]), np.array([-0.9979918142944457]))[0]
    assert abs(got - 2.69591760893953265321e-05) <= 1e-15


def test_gelu_scaled_table_scalar_and_array_agree():
    """gelu past its Mehler table: rho_2d (predict's per-layer route) and rho_scaled_array (the
    public maps') give the same numbers bit for bit, within 5e-14 of the direct rule (measured
    ~1e-14)."""
    act = sp.activation("gelu")
    rng = np.random.default_rng(37)
    q = np.exp(rng.uniform(math.log(40.0), math.log(400.0), 12))
    c = np.r_[rng.uniform(-1.0, 1.0, 8), np.cos(0.1), -np.cos(0.05), 0.0, -1.0]
    arr, ok = tables.rho_scaled_array(act, q, c, _direct_rho(act))
    assert ok.all()
    one = [tables.rho_2d(act, math.log(a), b, _direct_rho(act)) for a, b in zip(q, c)]
    assert np.array_equal(np.array(one), arr)
    assert np.max(np.abs(arr - _direct_rho(act)(q, c))) <= 5e-14
