"""Weight-gradient norms of every matrix of a transformer stack (W_Q, W_K, W_V, W_O, W_1, W_2):
theory (signalprop.layers.attention.weight_gradient_norms), Monte Carlo (weight_gradient_norms_mc)
and clipping (signalprop.clipping.transformer_clipping).

Independent routes: finite differences of an attention layer written out in the test, and of
whole sampled stacks (the loss with one weight matrix scaled by 1 + eps, through a network whose
variance is scaled by (1 + eps)^2: the same normals, so d loss/d eps = <dL/dW, W>); closed forms
for uniform attention; the two algebraic routes of the query/key sums (equal in expectation); the
exchangeable route against the general Monte Carlo route; theory against Monte Carlo of finite
stacks within standard errors. Heavier cases: validation/attention_check.py --gradnorm.
"""

import dataclasses
import math

import numpy as np
import pytest

import signalprop as sp
from signalprop import Attention, Dense
from signalprop.layers.attention import (AttentionRule, _AttentionExpectations, _attention_grads,
                                         _exchangeable_sums, _sample_stack, _sampled_sums,
                                         attention_weight_norms, weight_gradient_norms,
                                         weight_gradient_norms_mc, weight_sites)
from signalprop.layers.compose import Add
from signalprop.layers.residual import Residual
from signalprop.sampling import Streams
from signalprop.clipping import transformer_clipping


def _streams(n, base=100):
    return Streams([np.random.default_rng(base + i) for i in range(n)])


def _softmax(s):
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=-1, keepdims=True)


def _attention_forward(x, W, H, lam, causal):
    """Vaswani et al. eqs. 1-2 written out for one sample (x: T x N)."""
    Wq, Wk, Wv, Wo = W
    T, N = x.shape
    d = N // H
    heads = []
    for h in range(H):
        sl = slice(h * d, (h + 1) * d)
        S = (x @ Wq[:, sl]) @ (x @ Wk[:, sl]).T * lam
        if causal:
            S = np.where(np.tril(np.ones((T, T), bool)), S, -np.inf)
        heads.append(_softmax(S) @ (x @ Wv[:, sl]))
    return np.concatenate(heads, axis=1) @ Wo


@pytest.mark.parametrize("kw", [dict(), dict(causal=True, temperature=0.7, logit_scale="linear")])
def test_attention_weight_gradients_match_finite_differences(kw):
    la = Attention(8, 2, 4, sigma_q2=2.0, sigma_k2=1.5, **kw)
    rule = AttentionRule(la, 8)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 8))
    y, _, ctx = rule.forward(x, _streams(2))
    g = rng.standard_normal(y.shape)
    got = _attention_grads(rule, x, g, ctx, matrices=True)
    for s in range(2):
        W = [ctx[i][s].copy() for i in range(4)]
        for i, name in enumerate(("W_Q", "W_K", "W_V", "W_O")):
            dW = got["matrices"][name][0][s]
            fd = np.zeros_like(dW)
            eps = 1e-6
            for idx in np.ndindex(dW.shape):
                Wp = [w.copy() for w in W]
                Wm = [w.copy() for w in W]
                Wp[i][idx] += eps
                Wm[i][idx] -= eps
                lp = np.sum(g[s] * _attention_forward(x[s], Wp, 2, rule.scale, la.causal))
                lm = np.sum(g[s] * _attention_forward(x[s], Wm, 2, rule.scale, la.causal))
                fd[idx] = (lp - lm) / (2 * eps)
            # central differences: truncation O(eps^2), rounding O(1e-16 |loss| / eps) ~ 1e-9
            assert np.max(np.abs(fd - dW)) <= 1e-7 * np.max(np.abs(dW)), name
            # the Gram-matrix route of the squared norm is the matrix's squared norm
            assert got[name][s] == pytest.approx(np.sum(dW * dW), rel=1e-12)


def _scaled(net, site, f):
    """``net`` with the weight matrix of ``site`` scaled by ``f`` (its variance by f^2)."""
    row, p, j, sub, name = site
    if isinstance(sub, Dense):
        new = dataclasses.replace(sub, sigma_w2=sub.sigma_w2 * f * f)
    else:
        key = {"W_Q": "sigma_q2", "W_K": "sigma_k2", "W_V": "sigma_v2", "W_O": "sigma_o2"}[name]
        new = dataclasses.replace(sub, **{key: getattr(sub, key) * f * f})
    la = net.layers[row - 1]
    paths = [list(pp) for pp in la.paths]
    paths[p][j] = new
    new_row = (Residual(tuple(paths[1]), la.alpha, la.beta) if isinstance(la, Residual)
               else Add(tuple(tuple(pp) for pp in paths), la.scales))
    layers = list(net.layers)
    layers[row - 1] = new_row
    return sp.Network(int(net.widths[0]), tuple(layers))


def _loss(net, x0, sites):
    return _sample_stack(net, x0, _streams(2, 7), _streams(2, 70), 1.0, sites)[1]


@pytest.mark.parametrize("ln", ["pre", "post"])
def test_stack_backward_matches_finite_differences(ln):
    """d loss/d eps of W -> (1 + eps) W is <dL/dW, W>, for every matrix of a 2-block stack."""
    net = sp.transformer(2, 8, 2, 3, ln=ln, ffn_ratio=2.0)
    sites = weight_sites(net)
    x0 = np.random.default_rng(5).standard_normal((3, 8))
    _, loss0, mats = _sample_stack(net, x0, _streams(2, 7), _streams(2, 70), 1.0, sites,
                                   matrices=True)
    assert len(mats) == len(sites) == 2 * 6
    eps = 1e-5
    for site in sites:
        dW, W = mats[site[:3] + (site[4],)]
        pred = np.einsum("sij,sij->s", dW, W)
        fd = (_loss(_scaled(net, site, 1 + eps), x0, sites)
              - _loss(_scaled(net, site, 1 - eps), x0, sites)) / (2 * eps)
        # truncation O(eps^2 |L'''|) and rounding O(1e-16 |L| / eps): below 1e-7 relative
        assert np.max(np.abs(fd - pred)) <= 1e-7 * max(1.0, np.max(np.abs(pred))), site


def test_uniform_attention_closed_form():
    """sigma_q2 = 0: A = 1 1^T / T, J_a = (I - 1 1^T / T) / T; for K = v I,
    s_Q = v^3 tr(P) (T - 1) / T^2, s_V = s_O = v sum(P) / T, and E||dW_K||^2 = 0."""
    T, N, v = 5, 64, 1.7
    la = Attention(N, 4, T, sigma_q2=0.0, sigma_k2=1.3, sigma_v2=0.8, sigma_o2=1.1,
                   temperature=0.9)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((T, T))
    P = X @ X.T
    logs, rel = attention_weight_norms(la, v * np.eye(T), P, log_pi=0.3)
    q = N * N * 1.1 * 0.8 * 1.3 / 0.81 * v ** 3 * np.trace(P) * (T - 1) / T ** 2
    expect = [math.log(q), -math.inf, math.log(N * N * 1.1 * v * P.sum() / T),
              math.log(N * N * 0.8 * v * P.sum() / T)]
    np.testing.assert_allclose(logs - 0.3, expect, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(rel, 0.0)


def test_query_key_sums_agree_for_causal_linear_attention():
    """Deterministic causal attention (1/d logits): the trace route of s_Q and the J K J route of
    s_K are different contractions of the same number."""
    T = 6
    X = np.random.default_rng(4).standard_normal((T, 2 * T)) + 0.3
    K = X @ X.T / (2 * T)
    Y = np.random.default_rng(5).standard_normal((T, T))
    la = Attention(64, 4, T, logit_scale="linear", causal=True)
    logs, _ = attention_weight_norms(la, K, Y @ Y.T)
    assert logs[0] == pytest.approx(logs[1], rel=0, abs=1e-12)
    assert np.all(np.isfinite(logs))


def test_exchangeable_route_against_general_route():
    """The four sums on the exchangeable route (four row statistics) against the general Monte
    Carlo over all T^2 logits (independent draws, 8192 each), within 4 combined standard errors;
    the route's query and key sums (different formulas) agree within their errors too."""
    T, v, c = 4, 1.3, 0.25
    K = v * ((1 - c) * np.eye(T) + c)
    Y = np.random.default_rng(6).standard_normal((T, T))
    P = Y @ Y.T / T
    la = Attention(64, 4, T, logit_samples=8192, seed=3)
    ex = _AttentionExpectations(la, K)
    assert ex.exch is not None
    a, sa = ex._exchangeable(_exchangeable_sums, ex, P)
    b, sb = _sampled_sums(_AttentionExpectations(la, K, exchangeable=False), P)
    z = np.abs(a - b) / np.sqrt(sa ** 2 + sb ** 2)
    assert np.all(z < 4.0), z
    assert np.all(sa / a < 0.02) and np.all(sb / b < 0.05)
    assert abs(a[2] - a[3]) < 4.0 * math.hypot(sa[2], sa[3])


def _check_agreement(net, samples, seed):
    th = weight_gradient_norms(sp.predict(net), net)
    mc = weight_gradient_norms_mc(net, samples, seed=seed)
    for name in sorted(set(th.matrix)):
        t = th.of(name)
        idx = [i for i, m in enumerate(th.matrix) if m == name]
        lm, se = mc.log_mean(name)
        # Monte Carlo's delta-method error and the theory's numerical error, 4 sigma
        tol = 4.0 * np.hypot(se, th.rel_se[idx])
        if np.all(t == -math.inf):
            assert np.all(lm == -math.inf), name
            continue
        assert np.all(np.abs(lm - t) <= tol), (name, lm - t, tol)
    return th, mc


@pytest.mark.parametrize("ln", ["pre", "post"])
def test_theory_against_monte_carlo(ln):
    _check_agreement(sp.transformer(2, 128, 4, 4, ln=ln), 32, seed=21)


def test_zero_query_weights_keep_query_gradients():
    """W_Q = 0: the keys' gradient X^T dS^T Q is 0 exactly in every sample, the queries' is not
    (dQ = dS K with the keys X W_K), in theory and simulation."""
    net = sp.transformer(2, 128, 4, 4, ln="post", sigma_q2=0.0)
    th, mc = _check_agreement(net, 24, seed=22)
    assert np.all(th.of("W_K") == -math.inf)
    assert np.all(mc.norm2[:, [i for i, m in enumerate(mc.matrix) if m == "W_K"]] == 0.0)
    assert np.all(np.isfinite(th.of("W_Q")))


def test_totals_rescaling_and_clip_probability():
    net = sp.transformer(1, 64, 2, 4)
    mc = weight_gradient_norms_mc(net, 8, seed=1)
    mc2 = weight_gradient_norms_mc(net, 8, seed=1, output_grad_var=1e-4)
    np.testing.assert_allclose(mc2.total, 1e-4 * mc.total, rtol=1e-12)
    np.testing.assert_allclose(mc.rescaled(1e-4).total, mc2.total, rtol=1e-12)
    c = math.sqrt(float(np.median(mc.total)))
    p, se = mc.p_clip(c)
    assert p == 0.5 and se == pytest.approx(math.sqrt(0.25 / 8))
    th = weight_gradient_norms(sp.predict(net), net)
    assert th.rescaled(1e-4).total_log_norm2 == pytest.approx(th.total_log_norm2
                                                              + math.log(1e-4), abs=1e-12)
    r = transformer_clipping(net, [1e-3, 1e6])
    np.testing.assert_array_equal(r.p_clip, [1.0, 0.0])
    assert r.log_mean_norm2 == pytest.approx(th.total_log_norm2, abs=1e-12)
    # log-normal rule at the predicted mean: P(||g||^2 > E e^{-var/2}) = 1/2 exactly
    cm = math.exp(0.5 * (th.total_log_norm2 - 0.5 * 0.3))
    assert float(transformer_clipping(net, cm, log_norm2_var=0.3).p_clip) == pytest.approx(0.5)


def test_bad_input():
    net = sp.transformer(1, 64, 2, 4)
    prof = sp.predict(net)
    with pytest.raises(ValueError, match="profile"):
        weight_gradient_norms(prof, sp.transformer(2, 64, 2, 4))
    with pytest.raises(ValueError, match="tie_qk"):
        attention_weight_norms(Attention(8, 2, 3, logit_scale="linear", tie_qk=True),
                               np.eye(3), np.eye(3))
    with pytest.raises(ValueError, match="inputs"):
        weight_gradient_norms_mc(net, 4, inputs=np.ones((3, 64)))
    with pytest.raises(ValueError, match="samples"):
        weight_gradient_norms_mc(net, 1)
    with pytest.raises(ValueError, match="output_grad_var"):
        weight_gradient_norms(prof, net, output_grad_var=0.0)
    with pytest.raises(ValueError, match="clip_value"):
        transformer_clipping(net, -1.0)
    with pytest.raises(ValueError, match="coupled inputs"):
        transformer_clipping(sp.mlp(3, 16), 1.0)
