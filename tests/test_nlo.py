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


# --- residual blocks x + beta phi(W x + b) (the note, section 6) ---------------------------------

def _res(L, N, act, **kw):
    return sp.resnet(L, N, act, branch_depth=1, **kw)


@pytest.mark.parametrize("act, kw", [("linear", dict(alpha=0.8, beta=0.6, sigma_b2=0.3)),
                                     ("relu", dict(alpha=0.0, beta=1.0, sigma_w2=2.0))])
def test_residual_corrections_vanish_where_exact(act, kw):
    # linear branch: E||x^l||^2 is linear in ||x^{l-1}||^2 and W^l is independent of delta^l, so
    # E[q_hat], E[g_hat] are the mean-field values; alpha = 0 relu (sigma_b^2 = 0): x = relu(h),
    # E[relu(h)^2 | G] = G/2 and E[||W^T e||^2 | F] = sigma_w^2 ||e||^2 on average (Theta = 0)
    r = nlo_correction(_res(10, 48, act, **kw))
    assert np.max(np.abs(r.dlog_q)) < 1e-12 and np.max(np.abs(r.dlog_g)) < 1e-12


def test_residual_and_norm_moments_against_scipy_quadrature():
    # independent route: scipy's adaptive quadrature (epsabs 1e-13) for the plain expectations,
    # central differences in K (step 1e-3, one Richardson step) for the K-derivatives of E phi
    from scipy.integrate import quad
    from signalprop.nlo import _norm_moments, _res_moments
    K = 0.8
    f = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus
    df = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731

    def E(g, k=K):
        return quad(lambda z: g(math.sqrt(k) * z) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi),
                    -12, 12, epsabs=1e-13, epsrel=1e-13, limit=200)[0]

    mu, D, w = E(f), E(lambda x: df(x) ** 2), lambda x: df(x) ** 2
    var1 = E(lambda x: f(x) ** 2) - mu * mu
    u = lambda x: x * df(x)  # noqa: E731
    h = 1e-3
    d1 = [(E(f, K + t) - E(f, K - t)) / (2 * t) for t in (h, 2 * h)]
    ref = {"mu": mu, "mu1": (4 * d1[0] - d1[1]) / 3,
           "cwp": E(lambda x: w(x) * f(x)) - D * mu,
           "ewpp": E(lambda x: (w(x) - D) * (f(x) - mu) ** 2),
           "cpu": E(lambda x: f(x) * u(x)) - mu * E(u), "Vu": E(lambda x: u(x) ** 2) - E(u) ** 2,
           "d2b": E(lambda x: u(x) ** 2) / K - D}
    got = _res_moments(sp.activation("softplus"), np.array([K]))
    for key, val in ref.items():
        assert abs(got[key][0] - val) <= 1e-9 * max(1.0, abs(val)), key
    # LayerNorm's zeta = [Var(dx^2)/s2^2 - (Cov(w, dx^2) + E[w dx^2])/(D s2)] with dx = x - mu
    dx2 = lambda x: (f(x) - mu) ** 2  # noqa: E731
    ewd = E(lambda x: w(x) * dx2(x))
    zeta = (E(lambda x: dx2(x) ** 2) - var1 ** 2) / var1 ** 2 - (2 * ewd - D * var1) / (D * var1)
    got = _norm_moments(sp.activation("softplus"), np.array([K]), True)["zeta"][0]
    assert abs(got - zeta) <= 1e-9 * max(1.0, abs(zeta))


def test_residual_moments_rebuild_the_mean_field():
    # the per-block moments and the stream mean M reproduce predict's q^l (independent rules:
    # the layers' own mean field) through q' = a^2 q + 2ab M E phi + b^2 E phi^2, M' = a M + b E phi
    from signalprop.nlo import _res_chain, _res_mean_field
    net = _res(12, 64, "softplus", alpha=0.9, beta=0.6, sigma_w2=1.3, sigma_b2=0.2)
    th = sp.predict(net)
    _, mo, M = _res_mean_field(_res_chain(net), 1.0, np.concatenate([[1.0], th.q]))
    q, m, out = 1.0, 0.0, []
    for k in range(12):
        q = 0.81 * q + 2 * 0.54 * m * mo["mu"][k] + 0.36 * mo["V"][k]
        m = 0.9 * m + 0.6 * mo["mu"][k]
        out.append(q)
    np.testing.assert_allclose(np.log(out), th.log_q, rtol=0, atol=1e-12)
    np.testing.assert_allclose(M[1:], np.cumsum(0.6 * mo["mu"] * 0.9 ** -np.arange(12))
                               * 0.9 ** np.arange(12), rtol=1e-12)


@pytest.mark.parametrize("act, kw", [("relu", dict(beta=0.5)),
                                     ("gelu", dict(beta=0.7, sigma_w2=2.0, sigma_b2=0.1))])
def test_residual_corrected_profile_agrees_with_monte_carlo(act, kw):
    # depth 8, N = 64: the corrected log g and log G (layers 1 and 5) and log q^L within 4 se +
    # (first order)^2 + 8/N^2, where the uncorrected log g^1 misses by > 10 se
    L, N, S = 8, 64, 4000
    net = _res(L, N, act, **kw)
    th, corr = sp.predict(net), nlo_correction(net)
    mc = sp.simulate(net, S, seed=3, engine="matrix-free")
    for f, d in (("log_g", "dlog_g"), ("log_G", "dlog_G")):
        for l in (0, 4):
            a = getattr(corr, d)[l]
            resid = abs(getattr(mc, f)[l] - getattr(th, f)[l] - a)
            assert resid <= 4 * getattr(mc, f + "_se")[l] + a * a + 8.0 / N ** 2, (f, l)
    a, se = corr.dlog_q[-1], mc.q_se[-1] / mc.q[-1]
    assert abs(mc.log_q[-1] - th.log_q[-1] - a) <= 4 * se + a * a + 8.0 / N ** 2
    assert abs(mc.log_g[0] - th.log_g[0]) > 10 * mc.log_g_se[0]


def test_residual_gelu_residual_falls_faster_than_one_over_n():
    # gelu branch, depth 8: N = 32 -> 64, the uncorrected miss of log g^1 falls like 1/N (by
    # < 2.2x), the corrected one like 1/N^2 (by > 2.5x; measured 4.8x); 3 combined se of slack
    res = {}
    for N in (32, 64):
        net = _res(8, N, "gelu", beta=0.7, sigma_w2=2.0, sigma_b2=0.1)
        th, corr = sp.predict(net), nlo_correction(net)
        mc = sp.simulate(net, 6000, seed=8, engine="matrix-free")
        gap = mc.log_g[0] - th.log_g[0]
        res[N] = (gap, gap - corr.dlog_g[0], mc.log_g_se[0])
    (raw1, fix1, se1), (raw2, fix2, se2) = res[32], res[64]
    slack = 3 * math.hypot(se1, se2)
    assert abs(raw2) > abs(raw1) / 2.2 - slack
    assert abs(fix2) < abs(fix1) / 2.5 + slack


@pytest.mark.parametrize("act, sw2, sb2", [("softplus", 1.5, 0.0), ("tanh", 1.7, 0.05)])
def test_two_layer_branch_without_skip_is_the_mlp(act, sw2, sb2):
    # alpha = 0: x^l = V phi(W x^{l-1} + b) + b' is the mlp [phi, linear] * L read at its linear
    # rows; the mlp's correction (sections 1-3, the Theta recursion) is an independent route
    L, N = 8, 32
    r = nlo_correction(sp.resnet(L, N, act, alpha=0.0, beta=1.0, sigma_w2=sw2, sigma_b2=sb2))
    m = nlo_correction(sp.mlp(2 * L, N, [act, "linear"] * L, sigma_w2=sw2, sigma_b2=sb2))
    for f in ("dlog_g", "dlog_q", "var_log_g", "var_log_q"):
        np.testing.assert_allclose(getattr(r, f), getattr(m, f)[1::2], rtol=0, atol=1e-12)
    assert abs(r.dlog_g[0]) > 0.04        # not a vanishing case


@pytest.mark.parametrize("act, kw", [("linear", dict(alpha=0.8, beta=0.6, sigma_b2=0.3)),
                                     ("relu", dict(beta=0.5, sigma_w2=2.0))])
def test_two_layer_branch_vanishes_where_exact(act, kw):
    # linear: E||x'||^2 linear in ||x||^2, weights independent of the gradient (exact). relu, no
    # bias: E[Q'|Q] is linear in Q (E relu(h)^2 = G/2), D' = 0 and 2B = 0, and the rank-two part
    # only pairs o^k with x^{j}, j < k, orthogonal in the unit law (the branch output has zero
    # mean): every first-order term vanishes (Monte Carlo, N = 32, depth 8, 6000 networks: log g^1
    # gap 0.002 +- 0.010)
    r = nlo_correction(sp.resnet(10, 48, act, **kw))
    assert max(np.max(np.abs(r.dlog_q)), np.max(np.abs(r.dlog_g)),
               np.max(np.abs(r.dlog_G))) < 1e-12


def test_two_layer_branch_agrees_with_monte_carlo():
    # alpha = beta = 1, tanh, sigma_w^2 = 3, depth 20, N = 32 (the skip's cross terms, k_c, at
    # work): log g, log G (layers 1 and 11) and log q^L within 4 se + (first order)^2 + 8/N^2;
    # the uncorrected log g^1 misses by > 3 se (measured 3.5)
    L, N = 20, 32
    net = sp.resnet(L, N, "tanh", sigma_w2=3.0)
    th, corr = sp.predict(net), nlo_correction(net)
    mc = sp.simulate(net, 6000, seed=3, engine="matrix-free")
    for f, d in (("log_g", "dlog_g"), ("log_G", "dlog_G")):
        for l in (0, 10):
            a = getattr(corr, d)[l]
            resid = abs(getattr(mc, f)[l] - getattr(th, f)[l] - a)
            assert resid <= 4 * getattr(mc, f + "_se")[l] + a * a + 8.0 / N ** 2, (f, l)
    a, se = corr.dlog_q[-1], mc.q_se[-1] / mc.q[-1]
    assert abs(mc.log_q[-1] - th.log_q[-1] - a) <= 4 * se + a * a + 8.0 / N ** 2
    assert abs(mc.log_g[0] - th.log_g[0]) > 3 * mc.log_g_se[0]


def test_residual_refusals_name_the_layer():
    with pytest.raises(ValueError, match=r"layer 1 \(Residual\).*Dense, Dense, Dense.*not yet"):
        nlo_correction(sp.resnet(3, 16, "relu", branch_depth=3))
    mixed_branches = sp.Network(16, _res(1, 16, "relu").layers + sp.resnet(1, 16, "relu").layers)
    with pytest.raises(ValueError, match="layer 2 .*mixes one- and two-layer"):
        nlo_correction(mixed_branches)
    with pytest.raises(ValueError, match="LayerNorm"):
        nlo_correction(sp.resnet(3, 16, "relu", branch_depth=1, norm="layer"))
    pre = sp.Network(16, (sp.LayerNorm(16),) + sp.mlp(2, 16, "tanh", norm="layer").layers)
    with pytest.raises(ValueError, match=r"layer 1 \(LayerNorm\).*placement"):
        nlo_correction(pre)
    with pytest.raises(ValueError, match="c0"):
        nlo_correction(_res(3, 16, "relu"), c0=0.5)
    mixed = sp.Network(16, (sp.mlp(1, 16, "relu").layers[0],) + _res(2, 16, "relu").layers)
    with pytest.raises(ValueError, match="layer 1 .*mixes residual blocks"):
        nlo_correction(mixed)


# --- post-activation LayerNorm / RMSNorm (the note, section 7) ----------------------------------

@pytest.mark.parametrize("norm, lost", [("layer", 2), ("rms", 1)])
def test_norm_first_order_matches_the_exact_linear_law(norm, lost):
    # linear Dense then the norm: s_hat^2 = sigma^2 chi^2_{N-r}/N (r = 1 centring, 0 not), so
    # E[1/s_hat^2] = N/((N - r - 2) sigma^2) exactly; tr(I - P) = N - lost, h lies in span(P):
    # E[g_h^k] / mean field = ((N - lost)/(N - lost - 1))^(L - k + 1) at the Dense rows,
    # the norm rows add (1 - sigma_w^2/(N K)) for the next pair's Dense. N^2 x (exact log -
    # first order) must not depend on N (a first-order error eps would change it by eps 9e4)
    L, sw2, sb2 = 4, 1.3, 0.2
    out = []
    for N in (10_000, 100_000):
        r = nlo_correction(sp.mlp(L, N, "linear", sigma_w2=sw2, sigma_b2=sb2, norm=norm))
        f = math.log((N - lost) / (N - lost - 1))
        g = math.log(1 - sw2 / (N * (sw2 + sb2)))
        dense = f * np.arange(L, 0, -1)
        nrm = np.append(dense[1:] + g, 0.0)
        exact = np.column_stack([dense, nrm]).ravel()
        out.append(N * N * (exact - r.dlog_g))
        assert np.all(r.dlog_q == 0.0)
    np.testing.assert_allclose(out[0], out[1], atol=0.05)


@pytest.mark.parametrize("act, norm, sw2, sb2", [("tanh", "layer", 1.5, 0.1),
                                                 ("gelu", "rms", 1.5, 0.0)])
def test_norm_corrected_gradient_agrees_with_monte_carlo(act, norm, sw2, sb2):
    # depth 6 (12 layers), N = 64, 6000 networks: log g and log G at every layer within 4 se +
    # (first order)^2 + 8/N^2; the uncorrected log g^1 misses by > 5 se
    L, N = 6, 64
    net = sp.mlp(L, N, act, sigma_w2=sw2, sigma_b2=sb2, norm=norm)
    th, corr = sp.predict(net), nlo_correction(net)
    mc = sp.simulate(net, 6000, seed=4, engine="matrix-free")
    for f, d in (("log_g", "dlog_g"), ("log_G", "dlog_G")):
        a = getattr(corr, d)
        resid = np.abs(getattr(mc, f) - getattr(th, f) - a)
        se = getattr(mc, f + "_se")
        assert np.all(resid <= 4 * se + a * a + 8.0 / N ** 2), (f, resid / se)
    assert abs(mc.log_g[0] - th.log_g[0]) > 5 * mc.log_g_se[0]


# --- interface ---------------------------------------------------------------------------------

def test_refuses_other_layer_kinds_and_weights():
    with pytest.raises(ValueError, match="no 1/N correction yet"):
        nlo_correction(sp.mlp(3, 16, "tanh", weights="orthogonal"))
    with pytest.raises(ValueError, match="no 1/N correction yet"):
        nlo_correction(sp.resnet(3, 16, "relu", branch_depth=3))
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


# --- cost: the shortcuts change no number (issue 16, speed) ------------------------------------

from signalprop import gaussian as _gaussian  # noqa: E402
from signalprop import nlo as _nlo  # noqa: E402


def test_converged_run_evaluates_each_distinct_kernel_once(monkeypatch):
    # tanh at sigma_b^2 = 0.05 settles on q* within ~60 layers: at depth 400 the moments'
    # quadrature sees each distinct K once, and the result equals evaluating every layer
    net = sp.mlp(400, 64, "tanh", sigma_w2=1.5, sigma_b2=0.05)
    rows = []
    real = _gaussian.expect

    def spy(f, q, **kw):
        rows.append(np.size(q))
        return real(f, q, **kw)

    monkeypatch.setattr(_gaussian, "expect", spy)
    fast = nlo_correction(net)
    assert max(rows) < 100, rows
    monkeypatch.setattr(_nlo, "_unique_rows", lambda fn, K: fn(K))
    full = nlo_correction(net)
    for f in ("dlog_q", "var_log_q", "dlog_g", "var_log_g", "dlog_G", "theta"):
        np.testing.assert_allclose(getattr(fast, f), getattr(full, f), rtol=1e-14, atol=1e-300)


def test_mean_field_reuse_is_exact():
    # the reuse of a repeated step (same layer, state and fan-in) returns exactly the values of
    # stepping every layer (here iterated directly through the layers' own rules)
    net = sp.mlp(150, [64, 32] + [64] * 148, "gelu", sigma_w2=1.5, sigma_b2=0.05)
    for c0 in (None, 0.4):
        log_q, c = _nlo._mean_field(net, 1.0, c0)
        cache = {"means": net.needs_mean}
        state, n_in = (0.0, c0, 0.0 if cache["means"] else None), net.input_width
        ref_q, ref_c = [], []
        for la in net.layers:
            step = la.mean_field(state, n_in, cache)
            ref_q.append(step.log_q)
            ref_c.append(math.nan if step.c is None else step.c)
            state, n_in = step.out, la.width
        np.testing.assert_array_equal(log_q, ref_q)
        if c0 is not None:
            np.testing.assert_array_equal(c, ref_c)


def test_shared_nodes_follow_the_array():
    # phi, phi' at the nodes are reused only for the same array object, never for a new one
    act = sp.activation("tanh")
    b = _nlo._Nodes(act)
    x1 = np.linspace(-2.0, 2.0, 7)
    x2 = x1.copy()
    x2[3] = 1.5
    assert b(x1) is b(x1)
    np.testing.assert_array_equal(b(x2)[0], np.tanh(x2))
    np.testing.assert_array_equal(b(x2)[5], x2 ** 2 * x2 ** 2)


@pytest.mark.parametrize("f", [0.7, 0.0, 1e-160])
def test_scaled_rank_two_update_equals_the_explicit_one(f):
    # r' = (a^2 r + e0 ky^T + ky e0^T + kx e0 e0^T)/fbar with r = sc rs, and rg = (r' : G), against
    # the explicit matrix update (f = a^2/fbar; 0 and 1e-160 take the renormalising branch)
    rng = np.random.default_rng(3)
    n = 6
    A = rng.standard_normal((n, n))
    G = A @ A.T
    r0 = rng.standard_normal((n, n))
    r0 = r0 + r0.T
    r0[:2] = r0[:, :2] = 0.0               # the window's first rows are new at this block
    sc = 0.37
    rs = r0 / sc
    ky, kx, inv_fbar = rng.standard_normal(n), 0.8, 1.0 / 1.3
    e0 = np.eye(n)[0]
    want = (f * sc * rs + inv_fbar * (np.outer(e0, ky) + np.outer(ky, e0) + kx * np.outer(e0, e0)))
    sc2, rg = _nlo._res_update(rs, sc, f, inv_fbar, ky, kx, float(np.sum(r0 * G)), G[0])
    np.testing.assert_allclose(sc2 * rs, want, rtol=1e-13, atol=1e-13 * np.max(np.abs(want)))
    assert abs(rg - np.sum(want * G)) <= 1e-12 * np.sum(np.abs(want * G))


def test_order_one_warns_when_the_correction_is_not_small():
    """An unscaled relu ResNet of depth 20 at N = 128: the first-order term of log g^1 is 16.7
    nats while Monte Carlo measures a gap of about 2.7 (the expansion has broken down); predict
    says so with a RuntimeWarning, and stays silent where the correction is small."""
    import warnings
    with pytest.warns(RuntimeWarning, match="not small"):
        sp.predict(sp.resnet(20, 128, "relu", branch_depth=1), 1.0, order=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sp.predict(sp.mlp(10, 256, "tanh", sigma_w2=1.5, sigma_b2=0.05), 1.0, order=1)
