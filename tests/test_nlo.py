"""The order-1/N correction (signalprop.nlo; docs/theory/finite-width-nlo.md), checked from
three directions: the exact finite-width laws of linear and ReLU layers, mpmath at high precision
for the Gaussian moments it adds, and Monte Carlo (fixed seeds, tolerances from standard errors)."""

import math

import mpmath as mp
import numpy as np
import pytest

import signalprop as sp
from signalprop.finite import finite_width
from signalprop.nlo import corrected, nlo_correction
from signalprop.nlo import _moments


# --- (a) exact laws: linear and ReLU -----------------------------------------------------------

@pytest.mark.parametrize("act, sw2, sb2", [("relu", 2.0, 0.0), ("relu", 1.5, 0.3),
                                           ("linear", 1.0, 0.0), ("linear", 0.9, 0.3)])
def test_mean_corrections_vanish_for_linear_and_relu(act, sw2, sb2):
    # E[q_hat] and E[g_hat] are exactly the mean-field values (Hanin & Rolnick 2018: E[F] = 1)
    r = nlo_correction(sp.mlp(12, 64, act, sigma_w2=sw2, sigma_b2=sb2))
    assert np.max(np.abs(r.dlog_q)) < 1e-12 and np.max(np.abs(r.dlog_g)) < 1e-12
    assert np.max(np.abs(r.theta)) < 1e-12


@pytest.mark.parametrize("act, per_layer", [("relu", 5.0), ("linear", 2.0)])
def test_variances_equal_the_exact_first_order(act, per_layer):
    # E[M^2]/E[M]^2 = prod (1 + (3/p - 1)/N_k)(1 + 2/N_l) (finite/__init__ section 1), to first
    # order sum_k (3/p - 1)/N_k + 2/N_l; backward: Hanin & Nica's beta
    widths = [40, 64, 50, 80, 32, 128, 70]
    net = sp.mlp(6, widths, act, sigma_w2=2.0 if act == "relu" else 1.0)
    r = nlo_correction(net)
    n = np.asarray(widths[1:], float)
    fwd = np.concatenate([[0.0], np.cumsum(per_layer / n[:-1])]) + 2.0 / n
    bwd = np.append(np.cumsum((per_layer / n[:-1])[::-1])[::-1], 0.0) + 2.0 / n[-1]
    np.testing.assert_allclose(r.var_log_q, fwd, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(r.var_log_g, bwd, rtol=1e-12, atol=1e-15)


def test_typical_values_match_the_exact_relu_law_to_first_order():
    # E[log q_hat], E[log g_hat] of the exact law (digamma sums) minus the first-order values:
    # N^2 x difference must be the same at N = 1e4 and 1e5 (a first-order mismatch of size eps
    # would change it by eps x 9e4)
    out = []
    for N in (10_000, 100_000):
        net = sp.mlp(6, N, "relu", sigma_w2=2.0)
        r, fw = nlo_correction(net), finite_width(net)
        out.append(N * N * np.concatenate([fw.log_g_mean - fw.log_g - r.dlog_g_typical,
                                           fw.log_q_mean - fw.log_q - r.dlog_q_typical]))
    np.testing.assert_allclose(out[0], out[1], atol=0.02)


# --- (c) mpmath for the Gaussian moments -------------------------------------------------------

_MP = {"softplus": (lambda x: mp.log1p(mp.exp(x)), lambda x: 1 / (1 + mp.exp(-x))),
       "tanh": (mp.tanh, lambda x: mp.sech(x) ** 2)}


@pytest.mark.parametrize("name", sorted(_MP))
def test_hermite_derivatives_against_mpmath(name):
    # independent route: d/dK by mpmath's own differentiation of the integral (20 digits)
    mp.mp.dps = 20
    f, df = _MP[name]
    K = 0.7

    def E(g, k):
        return mp.quad(lambda z: g(mp.sqrt(k) * z) * mp.npdf(z), [-mp.inf, 0, mp.inf])

    V = lambda k: E(lambda x: f(x) ** 2, k)  # noqa: E731
    D = lambda k: E(lambda x: df(x) ** 2, k)  # noqa: E731
    got = _moments(sp.activation(name), np.array([K]))
    v0, v1, v2 = mp.diffs(V, K, 2)
    d0, d1, d2 = mp.diffs(D, K, 2)
    ref = {"V": v0, "V1": v1, "V2": v2, "D1": d1, "D2": d2,
           "two_b": E(lambda x: x * x * df(x) ** 2, K) / (K * d0) - 1}
    for key, val in ref.items():
        assert abs(got[key][0] - float(val)) <= 1e-11 * max(1.0, abs(float(val))), key


def test_sample_correlation_bias():
    # E[c_hat | G] = rho - rho (1 - rho^2)/(2N) for N Gaussian pairs about the origin (used for dc);
    # Monte Carlo with 4e5 draws, tolerance 4 se
    rng = np.random.default_rng(7)
    N, rho, S = 16, 0.6, 400_000
    z = rng.standard_normal((S, N, 2))
    a, b = z[..., 0], rho * z[..., 0] + math.sqrt(1 - rho ** 2) * z[..., 1]
    r = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
    pred = rho - rho * (1 - rho ** 2) / (2 * N)
    assert abs(r.mean() - pred) < 4 * r.std() / math.sqrt(S) + 2.0 / N ** 2 * 0.1


# --- (b) Monte Carlo ---------------------------------------------------------------------------

@pytest.mark.parametrize("act, sw2, sb2", [("softplus", 1.5, 0.0), ("tanh", 1.761, 0.05)])
def test_corrected_profile_agrees_with_monte_carlo(act, sw2, sb2):
    L, N, S = 8, 64, 20000
    net = sp.mlp(L, N, act, sigma_w2=sw2, sigma_b2=sb2)
    th = sp.predict(net, c0=0.5)
    corr = nlo_correction(net, c0=0.5)
    fixed = corrected(th, corr)
    mc = sp.simulate(net, S, seed=11, engine="matrix-free", c0=0.5)
    # next order ~ (first order)^2: allowance (dlog)^2 + 8/N^2 per field, on top of 4 se
    for f, d, se in (("log_q", "dlog_q", mc.q_se / mc.q), ("log_g", "dlog_g", mc.log_g_se),
                     ("c", "dc", mc.c_se)):
        a = getattr(corr, d)
        allow = a * a + 8.0 / N ** 2
        resid = np.abs(getattr(mc, f) - getattr(fixed, f))
        assert np.all(resid <= 4 * se + allow), (f, resid / se)
    if act == "softplus":   # the uncorrected gradient misses by far more than its errors
        assert abs(mc.log_g[0] - th.log_g[0]) > 10 * mc.log_g_se[0]


def test_gelu_residual_falls_faster_than_one_over_n():
    # gelu at sigma_w^2 = 2, sigma_b^2 = 0 (the documented miss): at layer 5 of 8 the uncorrected
    # miss in log g falls like 1/N (by < 2.2x when N doubles), the corrected one like 1/N^2 (by
    # > 2.5x, measured 3.5x; 3 combined se of slack)
    res = {}
    for N in (64, 128):
        net = sp.mlp(8, N, "gelu", sigma_w2=2.0)
        th, corr = sp.predict(net), nlo_correction(net)
        mc = sp.simulate(net, 6000, seed=5, engine="matrix-free")
        res[N] = (mc.log_g[4] - th.log_g[4], mc.log_g[4] - th.log_g[4] - corr.dlog_g[4],
                  mc.log_g_se[4])
    (raw1, fix1, se1), (raw2, fix2, se2) = res[64], res[128]
    slack = 3 * math.hypot(se1, se2)
    assert abs(raw2) > abs(raw1) / 2.2 - slack
    assert abs(fix2) < abs(fix1) / 2.5 + slack
    assert abs(fix1) < 0.5 * abs(raw1)


# --- interface ---------------------------------------------------------------------------------

def test_refuses_other_layer_kinds_and_weights():
    with pytest.raises(ValueError, match="no 1/N correction yet"):
        nlo_correction(sp.mlp(3, 16, "tanh", norm="layer"))
    with pytest.raises(ValueError, match="no 1/N correction yet"):
        nlo_correction(sp.mlp(3, 16, "tanh", weights="orthogonal"))
    with pytest.raises(ValueError, match="no 1/N correction yet"):
        nlo_correction(sp.resnet(3, 16, "relu") if hasattr(sp, "resnet") else
                       sp.mlp(3, 16, "tanh", norm="layer"))
    with pytest.raises(TypeError, match="network"):
        nlo_correction("mlp")
    with pytest.raises(ValueError, match="q0"):
        nlo_correction(sp.mlp(3, 16, "tanh"), q0=-1.0)


def test_corrected_keeps_fields_and_checks_shapes():
    net = sp.mlp(5, 32, "softplus", sigma_w2=1.5)
    th, corr = sp.predict(net), nlo_correction(net)
    fx = corrected(th, corr)
    np.testing.assert_allclose(fx.log_g, th.log_g + corr.dlog_g)
    np.testing.assert_allclose(fx.q, th.q * np.exp(corr.dlog_q))
    assert fx.c is None and fx.meta["order"] == 1 and fx.log_g[-1] == 0.0
    with pytest.raises(ValueError, match="layers"):
        corrected(sp.predict(sp.mlp(4, 32, "softplus")), corr)
    with pytest.raises(ValueError, match="c0"):
        corrected(sp.predict(net, c0=0.3), corr)
