"""Precision tests of the Gaussian-expectation engine (signalprop.gaussian) and of the activations'
expectations (closed forms and numerical) against independent high-precision references.

References: ``tests/reference/gaussian_reference.json``, written by
``tests/reference/make_reference.py`` (mpmath, 20-40 digits, no signalprop import; see its
docstring for the route). Requirement (the issue): relative error <= 1e-10 against mpmath over
q in [1e-6, 1e4] and c in [-1, 1] (c = +-0.9999 included), for smooth and kinked activations;
bivariate errors are relative to the natural scale sqrt(E phi(u1)^2 E phi(u2)^2). TOL is that
requirement and is not to be widened to make a test pass.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

from signalprop import gaussian
from signalprop.activations import activation, activations

TOL = 1e-10
REF = json.loads((Path(__file__).parent / "reference" / "gaussian_reference.json").read_text())
NAMES = [n for n in activations() if n != "swish"]  # swish is silu
MONOTONE = ["linear", "tanh", "sigmoid", "erf", "relu", "leaky_relu", "elu", "selu", "softplus",
            "hard_tanh"]
ODD = ["linear", "tanh", "erf", "hard_tanh"]


def _f(s):
    return float(mp.mpf(s))


def _one_d(name):
    rows = REF["one_d"][name]
    q = np.array([r["q"] for r in rows])
    return q, {k: np.array([_f(r[k]) for r in rows]) for k in rows[0] if k != "q"}


def _two_d(name):
    rows = REF["two_d"][name]
    q1, q2, c = (np.array([r[k] for r in rows]) for k in ("q1", "q2", "c"))
    return q1, q2, c, {k: np.array([_f(r[k]) for r in rows])
                       for k in ("cross_moment", "dphi_cross_moment")}


def _ref_lookup(name, key):
    q, vals = _one_d(name)
    table = dict(zip(q.tolist(), vals[key]))
    return lambda qq: np.array([table[float(v)] for v in np.ravel(qq)])


def test_reference_file_covers_every_activation_and_grid():
    assert set(REF["one_d"]) == set(NAMES) and set(REF["two_d"]) == set(NAMES)
    q, _ = _one_d("tanh")
    assert q.tolist() == [1e-6, 1e-3, 0.1, 1.0, 10.0, 1e3, 1e4]
    q1, q2, c, _ = _two_d("tanh")
    assert {-1.0, -0.9999, -0.5, 0.0, 0.3, 0.9, 0.9999, 1.0} <= set(c.tolist())
    assert q1.min() == 1e-6 and max(q1.max(), q2.max()) == 1e4
    rows = set(zip(q1.tolist(), q2.tolist(), c.tolist()))
    assert {(1e-6, 1e4, 1.0), (1e-3, 1e3, -1.0), (1e-6, 1e4, -0.9999)} <= rows  # q1 << q2, |c| ~ 1


# --------------------------------------------------------------------------------------------
# one-dimensional expectations against mpmath


@pytest.mark.parametrize("name", NAMES)
def test_one_dimensional_against_mpmath(name):
    """mean, E phi^2, E phi'^2 and d/dq E phi^2 on q = 1e-6 .. 1e4 in one vectorised call each."""
    a = activation(name)
    q, ref = _one_d(name)
    m2 = ref["second_moment"]
    got = {"mean": a.mean(q), "second_moment": a.second_moment(q),
           "dphi_second_moment": a.dphi_second_moment(q),
           "second_moment_slope": a.second_moment_slope(q)}
    scale = {"mean": np.sqrt(m2), "second_moment": m2,
             "dphi_second_moment": ref["dphi_second_moment"],
             "second_moment_slope": np.abs(ref["second_moment_slope"])}
    for key, val in got.items():
        assert val.shape == q.shape
        err = np.abs(val - ref[key]) / scale[key]
        assert np.all(err <= TOL), f"{name} {key}: worst rel err {err.max():.2e} at q={q[err.argmax()]}"


# --------------------------------------------------------------------------------------------
# bivariate expectations against mpmath


@pytest.mark.parametrize("name", NAMES)
def test_bivariate_against_mpmath(name):
    """E[phi(u1) phi(u2)] and E[phi'(u1) phi'(u2)] for c in {-1, -0.9999, ..., 0.9999, 1} and q
    from 1e-6 to 1e4, in one vectorised call each, relative to the natural scale."""
    a = activation(name)
    q1, q2, c, ref = _two_d(name)
    m2, d2 = _ref_lookup(name, "second_moment"), _ref_lookup(name, "dphi_second_moment")
    for key, fn, mom in (("cross_moment", a.cross_moment, m2),
                         ("dphi_cross_moment", a.dphi_cross_moment, d2)):
        got = fn(q1, q2, c)
        scale = np.sqrt(mom(q1) * mom(q2))
        err = np.abs(got - ref[key]) / scale
        i = err.argmax()
        assert np.all(err <= TOL), (f"{name} {key}: worst err {err[i]:.2e} at "
                                    f"(q1, q2, c) = {q1[i], q2[i], c[i]}")


def test_swish_is_silu():
    s, w = activation("silu"), activation("swish")
    q = np.array([0.1, 3.0])
    np.testing.assert_array_equal(s.second_moment(q), w.second_moment(q))
    np.testing.assert_array_equal(s.cross_moment(q, q, 0.5), w.cross_moment(q, q, 0.5))


# --------------------------------------------------------------------------------------------
# the engine itself: exact cases


@pytest.mark.parametrize("tau", [math.inf, 2.0, None])
def test_engine_polynomials(tau):
    q = np.array([0.0, 1e-6, 0.5, 3.0, 1e4])
    np.testing.assert_allclose(gaussian.expect(lambda x: x * x, q, tau=tau), q, rtol=1e-13, atol=0)
    np.testing.assert_allclose(gaussian.expect(lambda x: x**4, q, tau=tau), 3 * q * q, rtol=1e-13,
                               atol=0)
    q1, q2 = np.array([[1e-6], [2.0], [1e4]]), np.array([[0.3, 5.0, 1e4]])
    c = np.array([-1.0, -0.9999, 0.0, 0.4, 1.0])[:, None, None]
    r = c * np.sqrt(q1 * q2)
    got = gaussian.expect2(lambda x: x, lambda y: y, q1, q2, c, tau=tau)
    assert got.shape == (5, 3, 3)
    assert np.all(np.abs(got - r) <= 1e-12 * np.sqrt(q1 * q2))
    # E[u1^2 u2^2] = q1 q2 (1 + 2 c^2) (Isserlis)
    np.testing.assert_allclose(
        gaussian.expect2(lambda x: x * x, lambda y: y * y, q1, q2, c, tau=tau),
        q1 * q2 * (1 + 2 * c * c), rtol=1e-12)


def test_engine_q_zero_and_empty():
    np.testing.assert_array_equal(gaussian.expect(np.cos, [0.0, 0.0], tau=1.0), [1.0, 1.0])
    assert gaussian.expect(np.cos, np.zeros((0, 3)), tau=1.0).shape == (0, 3)
    assert gaussian.expect2(np.cos, np.cos, np.zeros(0), 1.0, 0.5, tau=1.0).shape == (0,)
    assert float(gaussian.expect2(np.tanh, np.tanh, 0.0, 2.0, 0.3, tau=1.5)) == 0.0


@pytest.mark.parametrize("rule", ["hermite", "trapezoid", "graded"])
def test_rules_integrate_gaussian_moments(rule):
    if rule == "hermite":
        z, w = gaussian.hermite_rule(40)
    elif rule == "trapezoid":
        z, w = gaussian.trapezoid_rule(6)
    else:
        z, w = gaussian.graded_rule(np.array(1.7), [np.array([0.3])])
    for k, m in ((0, 1.0), (2, 1.0), (4, 3.0), (6, 15.0)):
        assert float(np.sum(w * z**k)) == pytest.approx(m, rel=1e-14)
    assert abs(float(np.sum(w * z**3))) < 1e-14


def test_second_moment_slope_at_q_zero():
    """d/dq E[phi(sqrt(q) z)^2] at q = 0 is the limit phi'(0)^2 + phi(0) phi''(0) (averaged over
    the two sides of a kink at 0), not 0/0."""
    for name, lim in (("tanh", 1.0), ("sigmoid", 1 / 16), ("gelu", 0.25), ("relu", 0.5),
                      ("elu", 1.0), ("hard_tanh", 1.0)):
        a = activation(name)
        got = a.second_moment_slope(np.array([0.0, 1e-9]))
        assert got[0] == pytest.approx(lim, rel=1e-14), name
        assert got[1] == pytest.approx(lim, rel=1e-4), name  # elu: 1 - O(sqrt(q)) near 0
    a = activation("selu")
    lam, alpha = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717
    assert float(a.second_moment_slope(0.0)) == pytest.approx(lam**2 * (1 + alpha**2) / 2, rel=1e-14)


def test_closed_forms_clip_c_like_the_engine():
    """c = 1 + 2e-16 (a rounded q_ab / q) is c = 1, as in the numerical engine, not nan."""
    for name in ("relu", "leaky_relu", "linear", "erf", "tanh"):
        a = activation(name)
        for c in (1 + 2e-16, -1 - 2e-16):
            v, d = a.cross_moment(1.3, 1.3, c), a.dphi_cross_moment(1.3, 1.3, c)
            assert np.isfinite(v) and np.isfinite(d), name
            assert v == pytest.approx(float(a.cross_moment(1.3, 1.3, np.sign(c))), rel=1e-12)


# --------------------------------------------------------------------------------------------
# vectorisation: a grid call equals elementwise scalar calls


@pytest.mark.parametrize("name", ["tanh", "gelu", "relu", "elu", "hard_tanh", "erf"])
def test_array_call_equals_scalar_calls(name):
    a = activation(name)
    q = np.array([[1e-6, 0.02, 0.7], [1.0, 30.0, 1e4]])
    for fn in (a.mean, a.second_moment, a.dphi_second_moment, a.second_moment_slope):
        grid = fn(q)
        assert grid.shape == q.shape
        scal = np.array([[float(fn(float(v))) for v in row] for row in q])
        scale = np.sqrt(a.second_moment(q)) if fn == a.mean else np.abs(scal)
        np.testing.assert_array_less(np.abs(grid - scal), 1e-12 * scale + 1e-300)
    q1 = np.array([[0.01], [1.0], [500.0]])        # (3, 1)
    c = np.array([-0.9999, -0.2, 0.6, 1.0])         # (4,)
    for fn, mom in ((a.cross_moment, a.second_moment), (a.dphi_cross_moment, a.dphi_second_moment)):
        grid = fn(q1, 2.0, c)
        assert grid.shape == (3, 4)
        for i in range(3):
            for j in range(4):
                s = float(fn(float(q1[i, 0]), 2.0, float(c[j])))
                scale = math.sqrt(float(mom(float(q1[i, 0]))) * float(mom(2.0)))
                assert abs(grid[i, j] - s) <= 1e-12 * scale


# --------------------------------------------------------------------------------------------
# closed forms = the generic numerical engine (property test)


def _npdf(t):
    return np.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)


def _pos_part(m, s):
    """E[max(Y, 0)], P(Y > 0) for Y ~ N(m, s^2), s >= 0 (written out here, not the package's)."""
    m, s = np.broadcast_arrays(np.asarray(m, float), np.asarray(s, float))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(s > 0, m / np.where(s > 0, s, 1.0), np.sign(m) * np.inf)
    e = np.where(s > 0, m * special.ndtr(t) + s * _npdf(t), np.maximum(m, 0.0))
    p = np.where(s > 0, special.ndtr(t), (m > 0).astype(float))
    return e, p


def _smoothing(name, slope=0.01):
    """E[phi^(k)(m + s Z)] in closed form: k = 0, 1."""
    if name == "linear":
        return lambda m, s, k: np.broadcast_arrays(np.asarray(m, float) if k == 0 else
                                                   np.ones_like(np.asarray(m, float)), s)[0]
    if name in ("relu", "leaky_relu"):
        a = 0.0 if name == "relu" else slope

        def sm(m, s, k):
            e, p = _pos_part(m, s)
            return a * np.asarray(m, float) + (1 - a) * e if k == 0 else a + (1 - a) * p
        return sm
    if name == "erf":
        def sm(m, s, k):
            v = 1 + 2 * np.asarray(s, float) ** 2
            if k == 0:
                return special.erf(m / np.sqrt(v))
            return 2 / math.sqrt(math.pi) * np.exp(-np.asarray(m, float) ** 2 / v) / np.sqrt(v)
        return sm
    raise KeyError(name)


log_q = st.floats(-6.0, 4.0)
corr = st.one_of(st.floats(-1.0, 1.0), st.sampled_from([-1.0, -0.9999, 0.0, 0.9999, 1.0]))


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(["linear", "relu", "leaky_relu", "erf"]), lq1=log_q, lq2=log_q, c=corr)
def test_closed_forms_equal_quadrature(name, lq1, lq2, c):
    a = activation(name)
    q1, q2 = 10.0**lq1, 10.0**lq2
    sm = _smoothing(name)
    # one-dimensional (the mean relative to sqrt(E phi^2): erf's is 0)
    m2, d2 = float(a.second_moment(q1)), float(a.dphi_second_moment(q1))
    for closed, f, scale in ((a.mean, a.phi, math.sqrt(m2)),
                             (a.second_moment, lambda x: a.phi(x) ** 2, m2),
                             (a.dphi_second_moment, lambda x: a.dphi(x) ** 2, d2)):
        num = gaussian.expect(f, q1, kinks=a.kinks, tau=a.tau)
        assert abs(float(closed(q1)) - float(num)) <= TOL * scale, (name, q1)
    slope = gaussian.expect(lambda x: x * a.phi(x) * a.dphi(x), q1, kinks=a.kinks, tau=a.tau) / q1
    assert float(a.second_moment_slope(q1)) == pytest.approx(float(slope), rel=TOL)
    # bivariate: closed form vs the tensor/conditional engine vs the smoothed 1-D form
    for k, (closed, f) in enumerate(((a.cross_moment, a.phi), (a.dphi_cross_moment, a.dphi))):
        mom = a.second_moment if k == 0 else a.dphi_second_moment
        scale = math.sqrt(float(mom(q1)) * float(mom(q2)))
        v = float(closed(q1, q2, c))
        v2 = float(gaussian.expect2(f, f, q1, q2, c, tau=a.tau, kinks=a.kinks))
        v3 = float(gaussian.expect2_smoothed(f, lambda m, s, k=k: sm(m, s, k), q1, q2, c,
                                             kinks=a.kinks))
        assert abs(v - v2) <= TOL * scale, (name, k, q1, q2, c, v, v2)
        assert abs(v - v3) <= TOL * scale, (name, k, q1, q2, c, v, v3)


# --------------------------------------------------------------------------------------------
# invariants (property tests over built-in activations, q and c)

names_all = st.sampled_from(NAMES)


def _scale(a, q1, q2, k=0):
    mom = a.second_moment if k == 0 else a.dphi_second_moment
    return math.sqrt(float(mom(q1)) * float(mom(q2)))


@settings(max_examples=30, deadline=None)
@given(name=names_all, lq=log_q)
def test_cross_moment_at_c_one_is_the_second_moment(name, lq):
    """c = 1: u1 = u2, so E[phi(u1) phi(u2)] = E phi^2 and E[phi' phi'] = E phi'^2."""
    a = activation(name)
    q = 10.0**lq
    assert float(a.cross_moment(q, q, 1.0)) == pytest.approx(float(a.second_moment(q)), rel=1e-12)
    assert float(a.dphi_cross_moment(q, q, 1.0)) == pytest.approx(float(a.dphi_second_moment(q)),
                                                                  rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(name=names_all, lq1=log_q, lq2=log_q, c=corr)
def test_cauchy_schwarz_symmetry_and_independence(name, lq1, lq2, c):
    """|E[phi(u1) phi(u2)]| <= sqrt(E phi(u1)^2 E phi(u2)^2); swapping (q1, q2) changes nothing;
    at c = 0 the expectation factorises into the two means."""
    a = activation(name)
    q1, q2 = 10.0**lq1, 10.0**lq2
    s0 = _scale(a, q1, q2)
    v = float(a.cross_moment(q1, q2, c))
    assert abs(v) <= s0 * (1 + 1e-12)
    assert abs(float(a.cross_moment(q2, q1, c)) - v) <= 1e-12 * s0
    assert abs(float(a.dphi_cross_moment(q1, q2, c))) <= _scale(a, q1, q2, 1) * (1 + 1e-12)
    indep = float(a.mean(q1)) * float(a.mean(q2))
    assert abs(float(a.cross_moment(q1, q2, 0.0)) - indep) <= 1e-12 * s0


@settings(max_examples=20, deadline=None)
@given(name=st.sampled_from(ODD), lq1=log_q, lq2=log_q, c=st.floats(0.0, 1.0))
def test_odd_activations(name, lq1, lq2, c):
    """Odd phi: E[phi(u1) phi(u2)] is odd in c and E[phi' phi'] (phi' even) is even in c."""
    a = activation(name)
    q1, q2 = 10.0**lq1, 10.0**lq2
    assert abs(float(a.cross_moment(q1, q2, -c)) + float(a.cross_moment(q1, q2, c))) \
        <= 1e-12 * _scale(a, q1, q2)
    assert abs(float(a.dphi_cross_moment(q1, q2, -c)) - float(a.dphi_cross_moment(q1, q2, c))) \
        <= 1e-12 * _scale(a, q1, q2, 1)


@settings(max_examples=25, deadline=None)
@given(name=names_all, lq1=log_q, lq2=log_q, c0=st.floats(-1.0, 1.0), c1=st.floats(-1.0, 1.0))
def test_cross_moment_monotone_in_c(name, lq1, lq2, c0, c1):
    """Price's theorem: d/dc E[phi(u1) phi(u2)] = sqrt(q1 q2) E[phi'(u1) phi'(u2)].

    * phi non-decreasing (phi' >= 0 everywhere): the derivative is >= 0, so the cross moment is
      non-decreasing in c on [-1, 1] for any q1, q2;
    * any phi with q1 = q2: Mehler's series sum_k a_k^2 c^k has non-negative coefficients, so
      it is non-decreasing on [0, 1] (not on [-1, 0]: gelu and silu are not monotone there).
    """
    a = activation(name)
    q1, q2 = 10.0**lq1, 10.0**lq2
    lo, hi = min(c0, c1), max(c0, c1)
    if name not in MONOTONE:
        q2, lo, hi = q1, abs(lo), abs(hi)
        lo, hi = min(lo, hi), max(lo, hi)
    s0 = _scale(a, q1, q2)
    v = a.cross_moment(q1, q2, np.array([lo, hi]))
    assert v[1] >= v[0] - 1e-12 * s0
    if name in MONOTONE:
        assert float(a.dphi_cross_moment(q1, q2, 0.5 * (lo + hi))) >= -1e-12 * _scale(a, q1, q2, 1)


@pytest.mark.parametrize("name", NAMES)
def test_price_theorem_links_the_two_cross_moments(name):
    """d/dc E[phi(u1) phi(u2)] (Richardson-extrapolated central difference, h = 1e-3, error
    ~h^4) equals sqrt(q1 q2) E[phi'(u1) phi'(u2)]: a consistency check of the two kernels."""
    a = activation(name)
    q1 = np.array([0.05, 1.0, 1.0, 30.0, 1e3])
    q2 = np.array([0.2, 1.0, 1.0, 4.0, 1e3])
    c = np.array([0.5, -0.7, 0.95, 0.1, -0.3])
    h = 1e-3

    def d(hh):
        return (a.cross_moment(q1, q2, c + hh) - a.cross_moment(q1, q2, c - hh)) / (2 * hh)
    deriv = (4 * d(h / 2) - d(h)) / 3
    price = np.sqrt(q1 * q2) * a.dphi_cross_moment(q1, q2, c)
    scale = np.sqrt(q1 * q2 * a.dphi_second_moment(q1) * a.dphi_second_moment(q2))
    np.testing.assert_array_less(np.abs(deriv - price), 1e-7 * scale)


# -- issue 10 (items 3, 4): the bivariate rules' summation and their large-q bends -------------

REF_CRIT = json.loads((Path(__file__).parent / "reference" / "critical_reference.json").read_text())


def test_tensor_rule_is_summed_pairwise():
    """E[tanh(u1) tanh(u2)] at q = 1.5175, c = 0.96615 (tanh's chaotic c* at sigma_w^2 = 2.588,
    sigma_b^2 = 0.3) against Mehler's series at 60 digits (critical_reference.json): within
    4e-16 relative (measured 0). The running sum (einsum) over the rule's ~5e3 nodes was 1.6e-15
    off, which c* amplifies by 1 / (1 - chi_c) = 61: fixed_point's xi_c was 1.5e-11 off."""
    ref = REF_CRIT["tanh_cross"]
    q, c, E = float(ref["q"]), float(ref["c"]), float(ref["E"])
    assert abs(float(activation("tanh").cross_moment(q, q, c)) - E) <= 4e-16 * E


@pytest.mark.parametrize("q", [1e6, 1e8, 1e10])
def test_conditional_rule_resolves_the_bend_at_large_q(q):
    """gelu's post-activation correlation tends to relu's arc-cosine kernel (Cho & Saul 2009)
    like 0.28 / q (measured at q = 1e4..1e10, c in [-1, 1]); near c = +-1 the smoothing width of
    the inner integral is small and the outer rule must be graded there, else (before issue 10)
    the rule was off by up to 2.6e-7 at q >= 1e8. Bound: 0.5 / q plus 2e-14 of rounding."""
    act = activation("gelu")
    cs = np.array([0.5, 0.99, 0.9989, 0.99986, 0.99999, -0.99986, -0.5])
    relu = (np.sqrt(1 - cs * cs) + (np.pi - np.arccos(cs)) * cs) / np.pi
    rho = act.cross_moment(q, q, cs) / act.second_moment(q)
    assert np.max(np.abs(rho - relu)) <= 0.5 / q + 2e-14
