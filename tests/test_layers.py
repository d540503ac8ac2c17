"""Residual blocks, LayerNorm, RMSNorm and Nonlinearity layers: closed forms, exact identities,
Jacobians against finite differences, theory against Monte Carlo, bad input.

Independent routes: closed forms for linear branches (exact recursions), Yang & Schoenholz's
exponential ReLU rate, a scipy-quad recursion for the tanh residual network written here,
finite-difference Jacobians of the sampled layers, and Monte Carlo with fixed seeds (tolerance:
the CONVENTIONS.md rule that ``compare`` applies, 4 standard errors plus O(1/N)).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import integrate

import signalprop as sp
from signalprop import sampling
from signalprop.architectures import resnet
from signalprop.layers import Dense, LayerNorm, Nonlinearity, Residual, RMSNorm
from signalprop.network import Network
from signalprop.simulate import root_seed, sample_streams


# ---------------------------------------------------------------------------------------------
# closed forms


@given(alpha=st.floats(0.0, 2.0), beta=st.floats(0.0, 2.0), sw2=st.floats(0.1, 3.0),
       sb2=st.floats(0.0, 1.0), q0=st.floats(1e-3, 1e3), depth=st.integers(1, 40))
@settings(max_examples=40, deadline=None)
def test_linear_branch_recursion_is_exact(alpha, beta, sw2, sb2, q0, depth):
    """Linear branch, gaussian weights: q^l = (alpha^2 + beta^2 sigma_w^2) q^{l-1} + beta^2 sigma_b^2
    and g^{l-1} = g^l (alpha^2 + beta^2 sigma_w^2), exactly (issue 6, "Must hold").

    Tolerance: predict carries log q; a run of identical layers is extrapolated once its log
    increments repeat within 2e-15 max(1, |log q|), so the relative error is bounded by
    depth x 2e-15 max(1, |log q|) (a few ulps of log q per layer)."""
    if alpha == 0 and beta == 0:
        return
    net = resnet(depth, 16, "linear", branch_depth=1, alpha=alpha, beta=beta, sigma_w2=sw2,
                 sigma_b2=sb2)
    p = sp.predict(net, q0=q0)
    a = alpha ** 2 + beta ** 2 * sw2
    # the reference in log q, so that a q that underflows float64 is still compared (a relative
    # error of q is an absolute error of log q; the test used to take log(0) = -inf here and
    # turn its own tolerance into inf)
    with np.errstate(divide="ignore"):
        l_beta2 = 2 * np.log(beta)
        la = np.logaddexp(2 * np.log(alpha), l_beta2 + np.log(sw2))
        lb = l_beta2 + np.log(sb2)
    lq, ref = math.log(q0), []
    for _ in range(depth):
        lq = float(np.logaddexp(la + lq, lb))
        ref.append(lq)
    ref = np.array(ref)
    assert np.all(np.isfinite(ref)) and np.all(np.isfinite(p.log_q))
    atol = depth * 2e-15 * max(1.0, float(np.max(np.abs(ref)))) + 1e-14
    np.testing.assert_allclose(p.log_q, ref, rtol=0, atol=atol)
    if a > 0:
        np.testing.assert_allclose(p.log_g, (depth - np.arange(1, depth + 1)) * math.log(a),
                                   rtol=1e-12, atol=1e-12)


def test_two_layer_linear_branch_and_correlation():
    """V W x + a + x: q^l = (1 + sv2 sw2) q^{l-1} + sv2 sb2 + sa2; the cross term likewise, so
    c^l follows q_ab^l = (1 + sv2 sw2) q_ab^{l-1} + sv2 sb2 + sa2."""
    sw2, sb2, sv2, sa2, q0, c0 = 0.7, 0.2, 1.3, 0.05, 2.0, 0.3
    blocks = [Residual((Dense(8, "linear", sw2, sb2), Dense(8, "linear", sv2, sa2)))] * 12
    p = sp.predict(Network(8, blocks), q0=q0, c0=c0)
    q, qab = q0, c0 * q0
    for l in range(12):
        q = (1 + sv2 * sw2) * q + sv2 * sb2 + sa2
        qab = (1 + sv2 * sw2) * qab + sv2 * sb2 + sa2
        assert p.q[l] == pytest.approx(q, rel=1e-13)
        assert p.c[l] == pytest.approx(qab / q, rel=1e-13)


@pytest.mark.parametrize("sw2,sv2", [(2.0, 1.0), (1.0, 0.5), (2.0, 2.0)])
def test_relu_full_resnet_grows_at_yang_schoenholz_rate(sw2, sv2):
    """Yang & Schoenholz 2017 (full residual ReLU network, no biases): p^l = p^{l-1} (1 + sv2 sw2 / 2)
    exactly, and the gradient factor per block is 1 + sv2 sw2 E[relu'^2] = 1 + sv2 sw2 / 2."""
    L = 200
    blocks = [Residual((Dense(32, "relu", sw2, 0.0), Dense(32, "linear", sv2, 0.0)))] * L
    p = sp.predict(Network(32, blocks))
    rate = math.log1p(sv2 * sw2 / 2)
    np.testing.assert_allclose(np.diff(p.log_q), rate, rtol=1e-12)
    np.testing.assert_allclose(np.diff(p.log_g), -rate, rtol=1e-12)


def _E(f, q):
    s = math.sqrt(q)
    return integrate.quad(lambda z: f(s * z) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi),
                          -np.inf, np.inf, epsabs=0, epsrel=1e-13, limit=400)[0]


def test_tanh_full_resnet_against_an_independent_recursion():
    """The tanh full residual network (sigma_v^2 = sigma_w^2 = 1, no biases, p^0 = 1) by scipy quad:
    p^l = p^{l-1} + E[tanh(sqrt(p^{l-1}) z)^2], chi^{l-1} = chi^l (1 + E[sech^4(sqrt(p^{l-1}) z)]).
    (log chi^0/chi^L) / sqrt(L) at L = 100 is 1.05455 (LITERATURE.md sec. 4, DERIVED).
    predict's log_g[0] is the gradient at x^1; block 1's own factor is added here."""
    L = 100
    net = resnet(L, 64, "tanh", sigma_w2=1.0, sigma_b2=0.0)
    prof = sp.predict(net, q0=1.0)
    p, ps, log_chi = 1.0, [], 0.0
    sech4 = lambda x: 1.0 / math.cosh(x) ** 4 if abs(x) < 150 else 0.0
    for l in range(L):
        log_chi += math.log1p(_E(sech4, p))
        p += _E(lambda x: math.tanh(x) ** 2, p)
        ps.append(p)
    np.testing.assert_allclose(prof.q, ps, rtol=1e-11)
    first = math.log1p(_E(sech4, 1.0))
    assert prof.log_g[0] + first == pytest.approx(log_chi, rel=1e-11)
    assert (prof.log_g[0] + first) / math.sqrt(L) == pytest.approx(1.0546, abs=5e-5)


@given(q0=st.floats(1e-6, 1e6), c0=st.floats(-0.99, 0.99))
@settings(max_examples=30, deadline=None)
def test_layer_norm_resets_q_for_every_input_scale(q0, c0):
    """After a LayerNorm, q = 1 whatever the input scale; with a centred input c is preserved
    (RMSNorm preserves c always)."""
    for norm in (LayerNorm, RMSNorm):
        net = Network(8, (Dense(8, "linear", 1.3, 0.0), norm(8), Dense(8, "tanh", 1.0, 0.0), norm(8)))
        p = sp.predict(net, q0=q0, c0=c0)
        assert p.q[1] == 1.0 and p.q[3] == 1.0
        assert p.c[1] == pytest.approx(c0, abs=1e-15)
        # the post-tanh input is centred (tanh is odd), so both keep tanh's output correlation
        rho = sp.correlation_map("tanh", p.q[2], p.c[2], 1.0, 0.0)
        assert p.c[3] == pytest.approx(rho, abs=1e-14)


def test_layer_norm_removes_the_mean_of_relu():
    """Post-activation LayerNorm after relu: c' = (c_x - mu^2) / (1 - mu^2) with
    mu^2 = E[relu]^2 / E[relu^2] = (1/(2 pi)) / (1/2) = 1/pi; the arc-cosine kernel gives c_x."""
    c0 = 0.2
    net = Network(8, (Dense(8, "relu", 2.0, 0.0), LayerNorm(8)))
    p = sp.predict(net, q0=1.0, c0=c0)
    th = math.acos(c0)
    cx = (math.sin(th) + (math.pi - th) * c0) / math.pi            # Cho & Saul 2009, n = 1
    mu2 = 1.0 / math.pi
    assert p.c[1] == pytest.approx((cx - mu2) / (1 - mu2), rel=1e-13)
    # backward: g_x = g_y / Var(x), Var(relu(h)) = q (1/2 - 1/(2 pi)) with q = 2
    var = 2.0 * (0.5 - 0.5 / math.pi)
    assert p.log_g[0] - p.log_g[1] == pytest.approx(math.log(0.5) - math.log(var), rel=1e-13)


# ---------------------------------------------------------------------------------------------
# sampled layers: backward products are the transposed Jacobians


def _fd_check(layer, n_in, engine="dense", k=1, eps=1e-6):
    """backward(to_tracked(gy)) of a sampled layer against central differences of its forward map."""
    rule = sampling.sampler(layer, n_in, engine)
    root = root_seed(3)
    fwd, bwd = sample_streams(root, 0, 1)
    state = fwd.get_state()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, k, n_in)) + 0.3
    t, y, ctx = rule.forward(x, fwd)
    gy = rng.standard_normal((1, y.shape[-1]))
    gx = rule.backward(rule.to_tracked(gy, ctx), ctx, bwd)
    num = np.empty(n_in)
    for j in range(n_in):
        e = np.zeros_like(x)
        e[0, 0, j] = eps
        fwd.set_state(state)
        yp = rule.forward(x + e, fwd)[1]
        fwd.set_state(state)
        ym = rule.forward(x - e, fwd)[1]
        num[j] = np.sum(gy[0] * (yp[0, 0] - ym[0, 0])) / (2 * eps)
    np.testing.assert_allclose(gx[0], num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("layer", [
    LayerNorm(12), RMSNorm(12), Nonlinearity(12, "tanh"),
    Residual((Dense(12, "tanh", 1.5, 0.1), Dense(12, "linear", 1.0, 0.0)), 0.8, 0.6),
    Residual((LayerNorm(12), Dense(12, "relu", 2.0, 0.0), Dense(12, "linear", 1.0, 0.0))),
    Residual((Dense(12, "gelu", 1.0, 0.0), RMSNorm(12)), 1.0, 0.3),
], ids=["layernorm", "rmsnorm", "nonlinearity", "residual", "residual-preLN", "residual-rms"])
def test_backward_is_the_transposed_jacobian(layer):
    _fd_check(layer, 12)


def test_residual_with_nested_branch_and_the_simulated_norm_output():
    """LayerNorm output has ||y||^2 / N = 1 exactly for every sample and input scale."""
    net = Network(32, (Dense(32, "relu", 2.0, 0.0), LayerNorm(32), Dense(32, "tanh", 1.0, 0.0)))
    for q0 in (1e-4, 1.0, 1e4):
        s = sp.simulate(net, 5, 1, q0=q0, return_samples=True)
        np.testing.assert_allclose(s.samples["q"][:, 1], 1.0, rtol=1e-13)


# ---------------------------------------------------------------------------------------------
# theory against Monte Carlo (CONVENTIONS.md rule, as compare applies it)


def _post_ln(N, L, act):
    blocks = []
    for _ in range(L):
        blocks += [Residual((Dense(N, act, 1.5, 0.1), Dense(N, "linear", 1.0, 0.0))), LayerNorm(N)]
    return Network(N, blocks)


def _pre_act_ln(N, L, act):
    layers = []
    for _ in range(L):
        layers += [Dense(N, "linear", 1.0, 0.1), LayerNorm(N), Nonlinearity(N, act)]
    return Network(N, layers)


CASES = {
    "resnet-tanh": (lambda: resnet(30, 256, "tanh", sigma_w2=1.0, sigma_b2=0.05), "matrix-free", 200),
    "resnet-tanh-dense": (lambda: resnet(8, 256, "tanh", sigma_w2=1.0, sigma_b2=0.05), "dense", 30),
    "resnet-relu-scaled": (lambda: resnet(60, 256, "relu", sigma_w2=2.0, beta=1 / math.sqrt(60)),
                           "matrix-free", 200),
    "resnet-erf-preLN": (lambda: resnet(20, 256, "erf", sigma_w2=1.5, sigma_b2=0.1, norm="layer"),
                         "matrix-free", 200),
    "resnet-relu-preLN-dense": (lambda: resnet(6, 256, "relu", sigma_w2=2.0, norm="layer"), "dense", 30),
    "resnet-relu-preRMS-orth": (lambda: resnet(20, 256, "relu", sigma_w2=2.0, norm="rms",
                                               weights="orthogonal"), "matrix-free", 200),
    "postLN-tanh": (lambda: _post_ln(256, 15, "tanh"), "matrix-free", 200),
    "pre-act-LN-tanh": (lambda: _pre_act_ln(256, 15, "tanh"), "matrix-free", 200),
    "post-act-LN-relu": (lambda: Network(256, tuple(l for _ in range(20) for l in
                                                    (Dense(256, "relu", 2.0), LayerNorm(256)))),
                         "matrix-free", 200),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_theory_agrees_with_monte_carlo(name):
    make, engine, S = CASES[name]
    net = make()
    th = sp.predict(net, c0=0.5)
    mc = sp.simulate(net, S, 11, engine=engine, c0=0.5)
    cmp = sp.compare(th, mc)
    assert cmp.verdict == "agree", cmp.summary() if hasattr(cmp, "summary") else cmp


def test_relu_ended_branches_deviate_at_finite_width_and_converge():
    """A branch ending in relu adds a mean to the stream; mean field's gradient independence then
    misses a finite-width term (like softplus in plain networks). The gap in log g^1 shrinks
    roughly like 1/N: measured 0.55, 0.20, 0.056 at N = 256, 1024, 4096 (200 samples)."""
    gaps = []
    for N in (256, 4096):
        net = resnet(20, N, "relu", branch_depth=1, sigma_w2=1.0, beta=0.5)
        th = sp.predict(net)
        mc = sp.simulate(net, 100, 2, engine="matrix-free")
        gaps.append((mc.log_g[0] - th.log_g[0], mc.log_g_se[0]))
    (g1, s1), (g2, s2) = gaps
    assert g1 > 4 * s1                         # a real deviation at N = 256
    assert g2 < g1 / 4 + 4 * math.hypot(s2, s1 / 4)


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("kw,match", [
    ({"beta": -1.0}, "beta"), ({"beta": float("nan")}, "beta"), ({"alpha": float("inf")}, "alpha"),
    ({"beta": "big"}, "beta"), ({"norm": "batchy"}, "norm"), ({"branch_depth": 0}, "branch_depth"),
])
def test_bad_resnet_arguments(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        resnet(3, 8, **kw)


def test_branch_that_changes_the_width_needs_a_projection():
    with pytest.raises(ValueError, match="layer 2: .*projection"):
        Network(8, (Dense(8, "tanh", 1.0), Residual((Dense(4, "tanh", 1.0),))))
    with pytest.raises(ValueError, match="LayerNorm keeps the width"):
        Network(8, (LayerNorm(4),))
    with pytest.raises(TypeError, match="not a signalprop layer"):
        Network(8, ("dense",))


def test_nonlinearity_needs_a_centred_input():
    net = Network(8, (Dense(8, "relu", 2.0), Nonlinearity(8, "tanh"), LayerNorm(8)))
    with pytest.raises(ValueError, match="centred input"):
        sp.predict(net)


def test_parts_without_residual_theory_say_so():
    # issue 11: features ask for a declared capability and name the layer that lacks it
    net = resnet(3, 16, "tanh")
    with pytest.raises(ValueError, match=r"jacobian: layer 1 \(Residual\) has no sampled"):
        sp.jacobian(net, 1, 0)
    with pytest.raises(ValueError, match=r"finite_width: layer 1 \(Residual\) has no finite-width"):
        sp.finite_width(net)
    with pytest.raises(ValueError, match=r"spectrum: layer 1 \(Residual\) has no free-probability"):
        sp.spectrum(net)
    ln = sp.mlp(3, 16, "tanh", norm="layer")
    with pytest.raises(ValueError, match=r"layer 2 \(LayerNorm\) has no free-probability factor"):
        sp.spectrum(ln)


# ---------------------------------------------------------------------------------------------
# batch normalisation (network layer kind; the theory itself is tested in test_batchnorm.py)


@pytest.mark.parametrize("B", [4, 8, 32, 128])
def test_batchnorm_linear_network_explodes_at_the_closed_form_rate(B):
    """Linear network, h = W x, x = BN(h): g grows by (B - 2)/(B - 3) per layer towards the input
    at every sigma_w^2 (Yang et al. 2019; LITERATURE.md sec. 6, derived and Monte-Carlo checked)."""
    for sw2 in (0.5, 1.0, 3.0):
        p = sp.predict(sp.mlp(30, 64, "linear", sigma_w2=sw2, norm="batch", batch_size=B))
        rates = -np.diff(p.log_g)[1:-1]          # away from the first layer (its own input kernel)
        np.testing.assert_allclose(rates, math.log((B - 2) / (B - 3)), rtol=1e-10)


def test_batchnorm_relu_rate_is_the_top_eigenvalue():
    from signalprop.batchnorm import bn_explosion_rate
    p = sp.predict(sp.mlp(200, 64, "relu", sigma_w2=2.0, norm="batch", batch_size=8))
    # 150 layers below the loss the gradient covariance has converged to the top eigenvector
    assert p.log_g[50] - p.log_g[51] == pytest.approx(math.log(bn_explosion_rate("relu", 8)),
                                                      rel=1e-9)


def test_batchnorm_jacobian_against_finite_differences():
    """to_tracked of the sampled BN layer is J^T (phi'(y) * gy) with the per-unit Jacobian of
    y = sqrt(B) G h / ||G h||: checked against central differences over the whole batch."""
    from signalprop.layers.batchnorm import BatchNormRule
    B, n = 6, 5
    rule = BatchNormRule(sp.BatchNormDense(n, "tanh", 1.0, B), n)
    fwd, _ = sample_streams(root_seed(1), 0, 1)
    state = fwd.get_state()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, B, n))
    h, y, ctx = rule.forward(x, fwd)
    gy = rng.standard_normal((1, B, n))
    gh = rule.to_tracked(gy, ctx)
    lin = ctx[0]
    W = rule.linear.weights_of(lin)[0]

    def out(hh):                                 # the layer's map from h to phi(BN(h))
        hc = hh - hh.mean(axis=0, keepdims=True)
        return np.tanh(math.sqrt(B) * hc / np.sqrt((hc * hc).sum(axis=0, keepdims=True)))
    eps = 1e-6
    num = np.empty((B, n))
    for b in range(B):
        for i in range(n):
            e = np.zeros((B, n))
            e[b, i] = eps
            num[b, i] = np.sum(gy[0] * (out(h[0] + e) - out(h[0] - e))) / (2 * eps)
    np.testing.assert_allclose(gh[0], num, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(rule.backward(gh, ctx, None)[0], gh[0] @ W, rtol=1e-12)


@pytest.mark.parametrize("act,B", [("linear", 4), ("relu", 8), ("tanh", 16)])
def test_batchnorm_theory_agrees_with_monte_carlo(act, B):
    net = sp.mlp(8, 256, act, sigma_w2=2.0 if act == "relu" else 1.0, norm="batch", batch_size=B)
    th, mc = sp.predict(net), sp.simulate(net, 40, 5)
    if B < 6:                   # infinite variance of the per-layer factor: compare says so
        with pytest.warns(RuntimeWarning, match="infinite variance"):
            cmp = sp.compare(th, mc)
    else:
        cmp = sp.compare(th, mc)
    assert cmp.verdict == "agree", cmp.worst()


def test_batchnorm_bad_input():
    with pytest.raises(ValueError, match="batch_size"):
        sp.mlp(3, 16, "relu", norm="batch", batch_size=3)
    with pytest.raises(ValueError, match="batch_size"):
        sp.mlp(3, 16, "relu", norm="batch", batch_size=2.5)
    with pytest.raises(ValueError, match="sigma_b2"):
        sp.mlp(3, 16, "relu", norm="batch", batch_size=8, sigma_b2=0.1)
    bn = sp.mlp(3, 16, "relu", norm="batch", batch_size=8)
    with pytest.raises(ValueError, match="matrix-free"):       # uniform weights: dense only
        sp.simulate(sp.mlp(3, 16, "relu", norm="batch", batch_size=8, weights="uniform"), 2, 0,
                    engine="matrix-free")
    with pytest.raises(ValueError, match="c0"):
        sp.predict(bn, c0=-0.5)
    with pytest.raises(ValueError, match="share one batch_size"):
        sp.Network(16, (sp.BatchNormDense(16, "relu", 2.0, 8),
                        sp.BatchNormDense(16, "relu", 2.0, 4))).batch_size


def test_batchnorm_mixed_with_other_kinds_theory_vs_monte_carlo():
    """Batch norm is an ordinary layer kind on the kernel path: BN, Dense and LayerNorm layers
    mixed in one network (the B x B kernel and gradient covariance pass through all of them);
    theory against the dense engine (64 samples, compare's standard-error rule)."""
    n = 256
    net = sp.Network(n, (sp.BatchNormDense(n, "relu", 2.0, 8), Dense(n, "tanh", 1.5, 0.1),
                         sp.BatchNormDense(n, "tanh", 1.0, 8), Dense(n, "relu", 2.0),
                         LayerNorm(n), sp.BatchNormDense(n, "relu", 2.0, 8)))
    th = sp.predict(net)
    assert th.kernel_corr.shape == (6, 8, 8)
    mc = sp.simulate(net, 64, seed=1)
    cmp = sp.compare(th, mc)
    assert cmp.verdict == "agree", cmp.worst()


@pytest.mark.parametrize("kind,rank_loss", [(LayerNorm, 2), (RMSNorm, 1)])
def test_norm_backward_finite_width_projection(kind, rank_loss):
    """At finite width N the norm layer's Jacobian is (1/s) times a projection of rank N - 2
    (LayerNorm: removes 1 and y) or N - 1 (RMSNorm: removes y), so for an isotropic gradient
    E||J^T g||^2 s^2 / ||g||^2 = 1 - rank_loss / N exactly (module docstring of norm.py). Checked at
    N = 8, where the 1/N term is large, within 4 standard errors."""
    from signalprop.layers.norm import NormRule
    N, S = 8, 20000
    rng = np.random.default_rng(4)
    rule = NormRule(kind(N), N, "dense")
    x = rng.standard_normal((S, 1, N)) * 3.0 + 0.7
    t, y, ctx = rule.forward(x, None)
    g = rng.standard_normal((S, N))
    gx = rule.backward(g, ctx, None)
    s2 = ctx[1][:, 0, 0] ** 2
    ratio = np.sum(gx * gx, axis=1) * s2 / np.sum(g * g, axis=1)
    se = ratio.std(ddof=1) / math.sqrt(S)
    assert abs(ratio.mean() - (1 - rank_loss / N)) < 4 * se


# ---------------------------------------------------------------------------------------------
# the samplers' scaled form (issue 10, item 5): 2^e x carried as (x, e)


_SCALED_LAYERS = [
    Dense(12, "relu", 2.0, 0.3), Dense(12, "tanh", 1.5, 0.1), LayerNorm(12), RMSNorm(12),
    Nonlinearity(12, "gelu"),
    Residual((Dense(12, "tanh", 1.5, 0.1), Dense(12, "linear", 1.0, 0.0)), 0.8, 0.6),
    Residual((LayerNorm(12), Dense(12, "relu", 2.0, 0.1), Dense(12, "linear", 1.0, 0.1))),
    Residual((Dense(12, "relu", 2.0, 0.0), RMSNorm(12)), 1.0, 0.3),
    sp.BatchNormDense(12, "tanh", 1.5, 5),
]


@pytest.mark.parametrize("engine", ["dense", "matrix-free"])
@pytest.mark.parametrize("layer", _SCALED_LAYERS, ids=["dense-relu", "dense-tanh", "layernorm",
                                                        "rmsnorm", "nonlinearity", "residual",
                                                        "residual-preLN", "residual-rms",
                                                        "batchnorm"])
def test_scaled_form_is_the_real_map_at_a_power_of_two(layer, engine):
    """forward_scaled(2^-j x, e = j) describes the real forward(x), and the scaled backward
    products with their shifts are the real ones: with j = 7 and -9 (powers of two are exact and
    nothing leaves the float range here) the real arrays 2^et t, 2^ey y and the gradients
    times 2^(their shifts) agree
    with the unscaled computation on the same random numbers to 1e-13 relative (identical for
    homogeneous layers; a non-homogeneous activation sees the same real argument)."""
    rule = sampling.sampler(layer, 12, engine)
    rng = np.random.default_rng(1)
    k = getattr(layer, "batch_size", 2)
    x = rng.standard_normal((2, k, 12)) + 0.3
    gy = rng.standard_normal((2, k, 12) if rule.couples_inputs else (2, 12))
    fwd, bwd = sample_streams(root_seed(5), 0, 2)
    s0, b0 = fwd.get_state(), bwd.get_state()
    t, y, ctx = rule.forward(x, fwd)
    gt = rule.to_tracked(gy, ctx)
    gx = rule.backward(gt, ctx, bwd)
    for j in (7, -9):
        fwd.set_state(s0)
        bwd.set_state(b0)
        ts, et, ys, ey, cs = rule.forward_scaled(np.ldexp(x, -j), np.full(2, j), fwd)
        np.testing.assert_allclose(sampling.ldexp_rows(ts, et), t, rtol=1e-13, atol=0)
        np.testing.assert_allclose(sampling.ldexp_rows(ys, ey), y, rtol=1e-13, atol=0)
        g1, k1 = rule.to_tracked_scaled(gy, cs)
        np.testing.assert_allclose(sampling.ldexp_rows(g1, k1), gt, rtol=1e-13, atol=1e-15)
        g2, k2 = rule.backward_scaled(g1, cs, bwd)
        np.testing.assert_allclose(sampling.ldexp_rows(g2, sampling.add_shifts(k1, k2)), gx,
                                   rtol=1e-12, atol=1e-14)
