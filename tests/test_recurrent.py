"""Vanilla RNN unrolled in time (signalprop/layers/recurrent.py, architectures.rnn): the mean-field
recursion against an independent Gauss-Hermite recursion and closed forms, the two theory paths
against each other, the shared-weight sampler (the same W at every step), the input process,
theory against simulation, and bad input. Heavier cases: validation/recurrent_check.py."""

import math

import mpmath
import numpy as np
import pytest

import signalprop as sp
from signalprop import Dense, Network, compare, predict, rnn, rnn_timescales, simulate
from signalprop.layers.recurrent import RNNStep, input_vectors
from signalprop.sampling import Streams

# trapezoid rule on [-10, 10], step 0.05: for integrands analytic in a strip |Im z| < d around the
# real axis (tanh(sqrt(q) z): d = pi / (2 sqrt(q)) ~ 0.9 here) its error is ~exp(-2 pi d / h),
# below 1e-40, plus the Gaussian tail beyond 10 (~1e-23)
Z = np.linspace(-10.0, 10.0, 401)
WZ = np.exp(-Z * Z / 2)
WZ = WZ / WZ.sum()


def _reference(phi, dphi, T, sw2, su2, sb2, qx, cx, q0, c0):
    """The Chen et al. (2018) recursion by the trapezoid rule in one and two dimensions, written out here
    independently of the package: q_e, c_e per step and log g (gradient independence)."""
    qh, ch = q0, c0 * q0                     # second moment and cross moment of h_{t-1}
    q, c, ld = [], [], []
    z1, z2 = np.meshgrid(Z, Z, indexing="ij")
    w2 = np.outer(WZ, WZ)
    for _ in range(T):
        qe = sw2 * qh + su2 * qx + sb2
        ce = (sw2 * ch + su2 * qx * cx + sb2) / qe
        q.append(qe)
        c.append(ce)
        u1 = math.sqrt(qe) * z1
        u2 = math.sqrt(qe) * (ce * z1 + math.sqrt(max(0.0, 1 - ce * ce)) * z2)
        qh = float(WZ @ phi(math.sqrt(qe) * Z) ** 2)
        ch = float(np.sum(w2 * phi(u1) * phi(u2)))
        ld.append(math.log(float(WZ @ dphi(math.sqrt(qe) * Z) ** 2)))
    log_g = np.zeros(T)
    for t in range(T - 2, -1, -1):
        log_g[t] = log_g[t + 1] + math.log(sw2) + ld[t]
    return np.array(q), np.array(c), log_g


def test_theory_matches_independent_recursion():
    kw = dict(sigma_w2=1.7, sigma_u2=0.8, sigma_b2=0.05, q_x=0.6, c_x=0.3)
    net = rnn("rnn", 25, 64, "tanh", **kw)
    th = predict(net, 1.3, 0.1)
    q, c, lg = _reference(np.tanh, lambda x: 1 / np.cosh(x) ** 2, 25, 1.7, 0.8, 0.05, 0.6, 0.3,
                          1.3, 0.1)
    assert np.allclose(th.q, q, rtol=1e-10, atol=0)
    assert np.allclose(th.c, c, rtol=0, atol=1e-10)
    assert np.allclose(th.log_g, lg, rtol=0, atol=1e-9)
    # the kernel path (k x k state) gives the same numbers
    kp = predict(net, inputs=1.3 * np.array([[1.0, 0.1], [0.1, 1.0]]))
    assert np.allclose(kp.log_q, th.log_q, atol=1e-12)
    assert np.allclose(kp.c, th.c, atol=1e-12)
    assert np.allclose(kp.log_g, th.log_g, atol=1e-12)


def test_per_step_input_statistics_and_linear_closed_form():
    """Linear cell: q_e^t = sw2 q_e^{t-1} + su2 q_x[t] + sb2 exactly, and log g^t = (T - t) log
    sw2 (the gradient after k steps is sw2^k times the output's)."""
    T, sw2, su2, sb2 = 12, 0.9, 1.5, 0.2
    qx = np.linspace(0.0, 2.0, T)
    cx = np.linspace(-0.5, 1.0, T)
    th = predict(rnn("rnn", T, 32, "linear", sigma_w2=sw2, sigma_u2=su2, sigma_b2=sb2, q_x=qx,
                     c_x=cx), 2.0, 0.4)
    qe, ce = np.empty(T), np.empty(T)
    qh, xh = 2.0, 0.8
    for t in range(T):
        qe[t] = sw2 * qh + su2 * qx[t] + sb2
        xe = sw2 * xh + su2 * qx[t] * cx[t] + sb2
        ce[t] = xe / qe[t]
        qh, xh = qe[t], xe
    assert np.allclose(th.q, qe, rtol=1e-13)
    assert np.allclose(th.c, ce, atol=1e-13)
    assert np.allclose(th.log_g, (T - 1 - np.arange(T)) * math.log(sw2), atol=1e-12)


def test_timescales_fixed_point_and_edge_of_chaos():
    """q* solves q = sw2 E[tanh(sqrt(q) z)^2] + su2 q_x + sb2 (mpmath quadrature); the profile's
    per-step gradient factor at the fixed point is chi_1; xi_grad diverges on the critical line."""
    ts = rnn_timescales("tanh", 1.5, 1.0, 0.1, 0.4, 0.5)
    mpmath.mp.dps = 30
    q = mpmath.mpf(ts.q_star)
    gauss = lambda f: mpmath.quad(lambda z: f(z) * mpmath.exp(-z * z / 2), [-mpmath.inf, 0,
                                                                            mpmath.inf]) / mpmath.sqrt(2 * mpmath.pi)
    rhs = 1.5 * gauss(lambda z: mpmath.tanh(mpmath.sqrt(q) * z) ** 2) + 0.4 + 0.1
    assert abs(float(rhs) - ts.q_star) <= 1e-12 * ts.q_star
    chi1 = 1.5 * gauss(lambda z: mpmath.sech(mpmath.sqrt(q) * z) ** 4)
    assert abs(float(chi1) - ts.chi_1) <= 1e-12
    # c* solves c q* = sw2 E[tanh(u_a) tanh(u_b)] + su2 q_x c_x + sb2 (2-D trapezoid rule)
    z1, z2 = np.meshgrid(Z, Z, indexing="ij")
    sq, c = math.sqrt(ts.q_star), ts.c_star
    e2 = np.sum(np.outer(WZ, WZ) * np.tanh(sq * z1) * np.tanh(sq * (c * z1 + math.sqrt(1 - c * c) * z2)))
    assert abs((1.5 * e2 + 0.4 * 0.5 + 0.1) / ts.q_star - c) <= 1e-10
    th = predict(rnn("rnn", 200, 64, "tanh", sigma_w2=1.5, sigma_b2=0.1, q_x=0.4, c_x=0.5))
    assert abs((th.log_g[50] - th.log_g[51]) - math.log(ts.chi_1)) < 1e-10
    # edge of chaos at this drive: chi_1(q*(sw2)) = 1, found by bisection on sw2
    lo, hi = 1.0, 4.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rnn_timescales("tanh", mid, 1.0, 0.1, 0.4).chi_1 < 1 else (lo, mid)
    xis = [rnn_timescales("tanh", s, 1.0, 0.1, 0.4).xi_grad for s in (lo - 0.1, lo - 0.01, lo)]
    assert xis[0] < xis[1] < xis[2] and xis[2] > 1e6
    assert rnn_timescales("tanh", lo - 0.1, 1.0, 0.1, 0.4).regime == "ordered"


def test_sampler_shares_w_with_a_shared_dense_chain():
    """Without input and bias the cell is a chain of Dense layers that share one W: the same
    numbers bit for bit (both draw W from the stream named 'rnn:W'), gaussian and orthogonal."""
    for weights in ("gaussian", "orthogonal"):
        net = rnn("rnn", 6, 12, "tanh", sigma_w2=1.3, q_x=0.0, weights=weights)
        dense = Network(12, [Dense(12, "tanh", 1.3, 0.0, weights, share="rnn:W")] * 6)
        a = simulate(net, 5, seed=7, c0=0.3, return_samples=True)
        b = simulate(dense, 5, seed=7, c0=0.3, return_samples=True)
        for key in ("q", "c", "log_g"):
            assert np.array_equal(a.samples[key], b.samples[key])


def test_results_do_not_depend_on_chunking():
    net = rnn("rnn", 8, 16, "tanh", sigma_w2=1.2, sigma_b2=0.1, q_x=0.5, c_x=0.2)
    a = simulate(net, 6, seed=2, c0=0.1, chunk=1, return_samples=True)
    b = simulate(net, 6, seed=2, c0=0.1, chunk=6, return_samples=True)
    for key in ("q", "c", "log_g"):
        assert np.array_equal(a.samples[key], b.samples[key])


def test_input_vectors_have_exact_statistics():
    rng = Streams([np.random.default_rng(s) for s in range(3)])
    for k, cx in ((1, 0.0), (2, 0.37), (2, -1.0), (2, 1.0), (3, 0.2)):
        X = input_vectors(rng, k, 20, 0.7, cx, np.dtype(np.float64))
        G = np.einsum("san,sbn->sab", X, X) / 20
        C = np.full((k, k), cx)
        np.fill_diagonal(C, 1.0)
        assert np.allclose(G, 0.7 * C, atol=1e-12)


def test_linear_rnn_gradient_sharing_allowance():
    """Linear cell with gaussian W: theory g after k steps = sw2^k g (here 1). At N = 16 tying W
    makes log g^1 far exceed the default allowance (the untied chain agrees with the same
    samples); at N = 256 the tied simulation agrees."""
    T = 20
    tied = rnn("rnn", T, 16, "linear", sigma_w2=1.0, q_x=0.0)
    untied = Network(16, [Dense(16, "linear", 1.0, 0.0)] * T)
    th = predict(tied)
    assert np.allclose(th.log_g, 0.0, atol=1e-13)
    mt = simulate(tied, 1500, seed=11)
    mu = simulate(untied, 1500, seed=11)
    assert compare(th, mu, fields=["log_g"]).verdict == "agree"
    ct = compare(th, mt, fields=["log_g"])
    assert ct.verdict == "disagree"
    assert mt.log_g[0] - 4 * mt.log_g_se[0] > 2.0            # far above the untied theory (0)
    wide = rnn("rnn", T, 256, "linear", sigma_w2=1.0, q_x=1.0)
    mw = simulate(wide, 300, seed=12)
    assert compare(predict(wide), mw).verdict == "agree"
    assert mw.log_g[0] < mt.log_g[0] / 10


@pytest.mark.parametrize("sw2, sb2", [(0.8, 0.05), (2.2, 0.02)])
def test_tanh_rnn_theory_against_simulation(sw2, sb2):
    """Ordered and chaotic-side tanh cells at N = 256 with inputs: the project's rule agrees."""
    net = rnn("rnn", 25, 256, "tanh", sigma_w2=sw2, sigma_b2=sb2, q_x=0.5, c_x=0.4)
    th = predict(net, 1.0, 0.0)
    mc = simulate(net, 120, seed=5, c0=0.0)
    assert compare(th, mc).verdict == "agree"


def test_bad_input():
    with pytest.raises(ValueError, match="steps"):
        rnn("rnn", 0)
    with pytest.raises(ValueError, match="cell"):
        rnn("lstmx", 5)
    with pytest.raises(ValueError, match="q_x"):
        rnn("rnn", 5, 8, q_x=-0.1)
    with pytest.raises(ValueError, match="q_x"):
        rnn("rnn", 5, 8, q_x=[1.0, 1.0])
    with pytest.raises(ValueError, match="c_x"):
        rnn("rnn", 5, 8, c_x=1.5)
    with pytest.raises(ValueError, match="sigma_b2"):
        rnn("rnn", 5, 8, sigma_b2=math.inf)
    with pytest.raises(ValueError, match="weights"):
        rnn("rnn", 5, 8, weights="uniform")
    with pytest.raises(ValueError, match="matrix-free"):
        simulate(rnn("rnn", 3, 8), 2, seed=0, engine="matrix-free")
    with pytest.raises(ValueError, match="shares"):
        Network(8, [RNNStep(8, "tanh", 1.0), RNNStep(8, "tanh", 2.0)])
    with pytest.raises(ValueError, match="q\\* = inf"):
        rnn_timescales("relu", 3.0)


# ---------------------------------------------------------------------------------------------
# Jacobian spectrum through time (free probability with the recurrent W tied across steps)


def _tied_jacobian_eigs(rng, N, T, phi, dphi, sw2, weights, su2=1.0, sb2=0.0, qx=0.0, q0=1.0):
    """Eigenvalues of J J^T for ``J = dh_T/dh_0 = D_T W ... D_1 W`` of a vanilla RNN with ONE W
    (gaussian or Haar orthogonal, E[W_ij^2] = sw2/N), U, b and inputs ``x_t`` (fresh isotropic,
    ||x_t||^2/N = qx) drawn here with numpy, independently of the package."""
    if weights == "gaussian":
        W = rng.standard_normal((N, N)) * math.sqrt(sw2 / N)
    else:
        Q, R = np.linalg.qr(rng.standard_normal((N, N)))
        W = math.sqrt(sw2) * Q * np.sign(np.diag(R))
    U = rng.standard_normal((N, N)) * math.sqrt(su2 / N)
    b = rng.standard_normal(N) * math.sqrt(sb2)
    h = rng.standard_normal(N)
    h *= math.sqrt(q0 * N) / np.linalg.norm(h)
    J = np.eye(N)
    for _ in range(T):
        x = rng.standard_normal(N)
        x *= math.sqrt(qx * N) / np.linalg.norm(x)
        e = W @ h + U @ x + b
        h = phi(e)
        J = dphi(e)[:, None] * (W @ J)
    return np.linalg.svd(J, compute_uv=False) ** 2


def test_spectrum_linear_rnn_is_fuss_catalan():
    """Linear cell, gaussian W tied over T steps: J = W^T, whose squared singular values have
    the Fuss-Catalan law (Alexeev, Goetze & Tikhomirov 2010; Haagerup & Larsen 2000 for R-diagonal
    powers): m_k = sw2^(T k) binom((T+1) k, k) / (T k + 1). Orthogonal W: the point mass sw2^T."""
    from signalprop.spectrum import spectrum
    T, sw2 = 6, 0.9
    s = spectrum(rnn("rnn", T, 64, "linear", sigma_w2=sw2, q_x=1.0))
    for k in range(1, 6):
        fc = math.comb((T + 1) * k, k) / (T * k + 1) * sw2 ** (T * k)
        assert s.moment(k) == pytest.approx(fc, rel=1e-10)
    assert any("recurrent steps" in n for n in s.notes)
    so = spectrum(rnn("rnn", T, 64, "linear", sigma_w2=sw2, weights="orthogonal", q_x=1.0))
    assert so.mean == pytest.approx(sw2 ** T, rel=1e-12)
    assert abs(so.normalised_variance) < 1e-10


@pytest.mark.parametrize("weights", ["gaussian", "orthogonal"])
def test_spectrum_tanh_rnn_against_tied_monte_carlo(weights):
    """Tanh cell (sw2 = 1.5, inputs and bias), W tied over T = 8 steps, N = 256, 6 samples of a
    direct numpy computation of dh_T/dh_0. Rules (stated before running): log of the mean
    eigenvalue within 4 SE + 2 T/N (the project's allowance kappa sum_t 1/N, kappa = 2); the
    fraction of eigenvalues below the theory's p-quantile within 4 SE + T/N of p, p = 0.25 ..
    0.95 (quantiles above the float64 floor of the product, ~1e-30 of the top). Negative control:
    the other weight law's theory misses by more than the rule allows. h_0 starts at the fixed
    point q*, so every step has the same law of phi'(e)^2."""
    from signalprop.spectrum import spectrum
    N, T, S, sw2, sb2, qx = 256, 8, 6, 1.5, 0.05, 0.5
    q0 = (rnn_timescales("tanh", sw2, 1.0, sb2, qx).q_star - qx - sb2) / sw2   # h_0 at q*
    rng = np.random.default_rng(2018)
    ev = np.array([_tied_jacobian_eigs(rng, N, T, np.tanh, lambda e: 1 - np.tanh(e) ** 2, sw2,
                                       weights, sb2=sb2, qx=qx, q0=q0) for _ in range(S)])
    ps = np.array([0.25, 0.5, 0.75, 0.9, 0.95])

    def misses(w):
        th = spectrum(rnn("rnn", T, N, "tanh", sigma_w2=sw2, sigma_b2=sb2, q_x=qx, weights=w), q0)
        lm = np.log(ev.mean(1))
        d_mean = abs(math.log(ev.mean()) - math.log(th.mean))
        ok_mean = d_mean <= 4 * lm.std(ddof=1) / math.sqrt(S) + 2 * T / N
        F = (ev[:, :, None] <= th.quantile(ps)).mean(1)
        ok_F = np.abs(F.mean(0) - ps) <= 4 * F.std(0, ddof=1) / math.sqrt(S) + T / N
        return ok_mean, ok_F

    ok_mean, ok_F = misses(weights)
    assert ok_mean and ok_F.all()
    other_mean, other_F = misses("orthogonal" if weights == "gaussian" else "gaussian")
    assert not other_F.all()


def test_spectrum_dynamical_isometry_through_time():
    """Orthogonal W at the critical point with small q* (sb2 = 1e-3, no input), h_0 at the fixed
    point: the theory's spectrum stays concentrated (normalised variance T (mu_2/mu_1^2 - 1),
    small), the gaussian one spreads (+T); Monte Carlo of the tied product (N = 256, T = 16, 4
    samples) agrees on the normalised variance within 4 SE (jackknife over samples) + 4 T/N
    relative, and on the mean within 4 SE + 2 T/N in log."""
    from signalprop.spectrum import spectrum
    N, T, S, sb2 = 256, 16, 4, 1e-3
    lo, hi = 1.0, 1.5
    for _ in range(60):                       # chi_1(q*) = 1 by bisection on sw2
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rnn_timescales("tanh", mid, 0.0, sb2, 0.0).chi_1 < 1 else (lo, mid)
    sw2 = 0.5 * (lo + hi)
    ts = rnn_timescales("tanh", sw2, 0.0, sb2, 0.0)
    q0 = (ts.q_star - sb2) / sw2
    kw = dict(sigma_w2=sw2, sigma_u2=0.0, sigma_b2=sb2, q_x=0.0)
    so = spectrum(rnn("rnn", T, N, "tanh", weights="orthogonal", **kw), q0)
    sg = spectrum(rnn("rnn", T, N, "tanh", **kw), q0)
    assert so.mean == pytest.approx(1.0, rel=1e-6)           # chi_1^T at the critical point
    assert so.normalised_variance < 1.0 < T <= sg.normalised_variance
    rng = np.random.default_rng(7)
    ev = np.array([_tied_jacobian_eigs(rng, N, T, np.tanh, lambda e: 1 - np.tanh(e) ** 2, sw2,
                                       "orthogonal", su2=0.0, sb2=sb2, q0=q0) for _ in range(S)])

    def nv(e):
        return float((e ** 2).mean() / e.mean() ** 2 - 1)
    v = nv(ev)
    jack = np.array([nv(np.delete(ev, i, axis=0)) for i in range(S)])
    se = math.sqrt((S - 1) / S * np.sum((jack - jack.mean()) ** 2))
    assert abs(v - so.normalised_variance) <= 4 * se + 4 * T / N * so.normalised_variance
    lm = np.log(ev.mean(1))
    assert abs(math.log(ev.mean())) <= 4 * lm.std(ddof=1) / math.sqrt(S) + 2 * T / N


def test_spectrum_refuses_gated_cells():
    from signalprop.spectrum import spectrum
    with pytest.raises(ValueError, match="layer 1 \\(MinimalStep\\).*free-probability"):
        spectrum(rnn("minimal", 3, 8))
