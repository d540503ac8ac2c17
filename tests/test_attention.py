"""Self-attention over T tokens (signalprop.layers.attention) and transformer stacks.

Independent routes: finite differences of the sampled layer (its hand-written backward pass);
closed forms of deterministic attention (uniform or causal averaging, tied-weight softmax written
out with math.exp); for 1/sqrt(d) logits at T = 2, two-dimensional Gauss-Hermite quadrature over
the logit differences with the exact (not sampled) query/key formula, against the layer's Monte
Carlo rule within its stated standard error; Monte Carlo of finite networks through compare's
agreement rule. Heavier cases: validation/attention_check.py.
"""

import math

import numpy as np
import pytest

import signalprop as sp
from signalprop import Attention, Dense, LayerNorm
from signalprop.kernel import Kernel
from signalprop.layers.attention import AttentionRule, attention_weights
from signalprop.sampling import Streams


def _streams(n):
    return Streams([np.random.default_rng(100 + i) for i in range(n)])


@pytest.mark.parametrize("kw", [dict(), dict(causal=True, temperature=0.7),
                                dict(logit_scale="linear", tie_qk=True, sigma_q2=3.0,
                                     sigma_k2=3.0)])
def test_backward_matches_finite_differences(kw):
    kw = dict(dict(sigma_q2=2.0, sigma_k2=1.5), **kw)
    la = Attention(16, 2, 5, **kw)
    rule = AttentionRule(la, 16)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 16))
    y, _, ctx = rule.forward(x, _streams(2))
    v = rng.standard_normal(y.shape)
    g = rule.backward(v, ctx, None)

    def loss(xx):
        return np.sum(v * rule.forward(xx, _streams(2))[0], axis=(1, 2))

    eps, fd = 1e-6, np.zeros_like(x)
    for idx in np.ndindex(x.shape[1:]):
        e = np.zeros_like(x)
        e[(slice(None),) + idx] = eps
        fd[(slice(None),) + idx] = (loss(x + e) - loss(x - e)) / (2 * eps)
    # central differences: truncation O(eps^2 |y'''|), rounding O(1e-16 |loss| / eps) ~ 1e-9
    assert np.max(np.abs(fd - g)) <= 1e-7 * np.max(np.abs(g))


def _random_gram(T, seed=1):
    X = np.random.default_rng(seed).standard_normal((T, 3 * T)) + 0.5
    return X @ X.T / (3 * T)


@pytest.mark.parametrize("scale", ["sqrt", "linear"])
def test_uniform_attention_is_rank_one_in_one_layer(scale):
    """Zero query weights (or the 1/d limit): every output token is the mean of the values, so any
    token kernel becomes rank one, exactly, in theory and in simulation (sigma_q2 = 0)."""
    T, N = 6, 64
    gram = _random_gram(T)
    sq = 0.0 if scale == "sqrt" else 1.0
    net = sp.Network(N, (Attention(N, 4, T, sigma_q2=sq, logit_scale=scale, sigma_v2=1.3),))
    th = sp.predict(net, inputs=gram)
    np.testing.assert_array_equal(th.kernel_corr[0], np.ones((T, T)))
    # K_Y = sigma_o^2 sigma_v^2 mean(K) 1 1^T
    np.testing.assert_allclose(th.kernel_log_q[0], np.log(1.3 * gram.mean()), rtol=0, atol=1e-14)
    mc = sp.simulate(sp.Network(N, (Attention(N, 4, T, sigma_q2=0.0),)), 3, seed=1)
    np.testing.assert_allclose(mc.c, 1.0, rtol=0, atol=1e-13)


def test_linear_scaling_closed_forms():
    """Causal uniform averaging, (A K A^T)_ab = sum_{i<=a, j<=b} K_ij / ((a+1)(b+1)); tied weights:
    A = softmax(sigma_q2 K / tau) written out; backward A^T P A; q/k path absent."""
    T = 5
    gram = _random_gram(T, 3)
    K = Kernel.from_gram(gram)
    la = Attention(40, 2, T, sigma_v2=0.7, sigma_o2=1.5, logit_scale="linear", causal=True)
    step = la.kernel_step(K, 40, {})
    ref = np.array([[sum(gram[i, j] for i in range(a + 1) for j in range(b + 1)) / ((a + 1) * (b + 1))
                     for b in range(T)] for a in range(T)]) * 0.7 * 1.5
    np.testing.assert_allclose(step.out.matrix(), ref, rtol=1e-13)
    tau, sq = 0.8, 2.0
    la = Attention(40, 2, T, sigma_q2=sq, sigma_k2=sq, logit_scale="linear", tie_qk=True,
                   temperature=tau)
    step = la.kernel_step(K, 40, {})
    A = np.array([[math.exp(sq * gram[a, b] / tau) for b in range(T)] for a in range(T)])
    A /= A.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(step.out.matrix(), A @ gram @ A.T, rtol=1e-13)
    P = np.diag([1.0, 0, 0, 0, 0])
    f, Q = step.back(P)
    np.testing.assert_allclose(math.exp(f) * Q, A.T @ P @ A, rtol=1e-13)


def _gauss_hermite_reference(gram, gamma, P, n=60, qk=True):
    """T = 2, non-causal: row a's softmax depends on D_a = S_a1 - S_a0 alone, and (D_0, D_1) ~
    N(0, gamma kappa K) with kappa = K_00 - 2 K_01 + K_11. Forward E[A K A^T]; backward with the
    exact expectation over G: E[A^T P A] + gamma (P o [tr(K J_a K J_a')] + sum (P o K)_aa' J_a K J_a')."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    kappa = gram[0, 0] - 2 * gram[0, 1] + gram[1, 1]
    C = np.linalg.cholesky(gamma * kappa * gram)
    fwd, bwd = np.zeros((2, 2)), np.zeros((2, 2))
    for i in range(n):
        for j in range(n):
            D = C @ np.array([x[i], x[j]])
            p1 = 1.0 / (1.0 + np.exp(-D))
            A = np.stack([1 - p1, p1], axis=1)
            J = [np.diag(A[a]) - np.outer(A[a], A[a]) for a in range(2)]
            wt = w[i] * w[j]
            fwd += wt * A @ gram @ A.T
            term = A.T @ P @ A
            for a in range(2 if qk else 0):
                for b in range(2):
                    term[a, b] += gamma * P[a, b] * np.trace(gram @ J[a] @ gram @ J[b])
                    term += gamma * P[a, b] * gram[a, b] * (J[a] @ gram @ J[b])
            bwd += wt * term
    return fwd, bwd


def test_sqrt_scaling_monte_carlo_rule_against_quadrature():
    gram = np.array([[1.2, 0.3], [0.3, 0.8]])
    la = Attention(64, 4, 2, sigma_q2=2.0, sigma_k2=1.5, temperature=0.9, logit_samples=4096)
    cache = {}
    step = la.kernel_step(Kernel.from_gram(gram), 64, cache)
    P = np.array([[0.7, 0.2], [0.2, 0.3]])
    f, Q = step.back(P)
    fwd, bwd = _gauss_hermite_reference(gram, la.logit_gain, P)
    note = cache["numerical"][0]
    # the rule states its own standard errors; the quadrature (n = 60 on a smooth integrand) is
    # exact to ~1e-12, so the Monte Carlo must be within 4 of its standard errors
    assert note["forward_rel_se"] < 1e-2 and note["backward_rel_se"] < 1e-2
    K_out = step.out.matrix()
    assert np.max(np.abs(K_out - fwd)) <= 4 * note["forward_rel_se"] * np.max(np.diag(fwd))
    assert np.max(np.abs(math.exp(f) * Q - bwd)) <= 4 * note["backward_rel_se"] * np.trace(bwd)
    # and the query/key path matters: without it the map misses by far more than the error
    value_only = _gauss_hermite_reference(gram, la.logit_gain, P, qk=False)[1]
    assert np.trace(bwd) - np.trace(value_only) > 0.05 * np.trace(bwd)


def test_query_key_path_against_monte_carlo():
    """Peaked 1/sqrt(d) logits (gamma = 9): the gradient through the softmax (query and key path)
    more than doubles g; theory and simulation agree, and the value path alone is far off."""
    N, T = 128, 4
    net = sp.Network(N, (Dense(N, "linear", 1.0), Attention(N, 4, T, sigma_q2=3.0, sigma_k2=3.0)))
    th = sp.predict(net, 1.0, 0.2)
    mc = sp.simulate(net, 96, seed=3, c0=0.2)
    cmp = sp.compare(th, mc)
    assert cmp.verdict == "agree", cmp.worst()
    # value path only: E[A^T e0 e0^T A] has trace E[sum_b A_0b^2] <= 1, so log g <= 0
    assert th.log_g[0] > 0.4 and mc.log_g[0] - 4 * mc.log_g_se[0] > 0.2


@pytest.mark.parametrize("ln", ["pre", "post"])
@pytest.mark.parametrize("scale", ["sqrt", "linear"])
def test_transformer_theory_vs_simulation(ln, scale):
    net = sp.transformer(2, 128, 4, 8, ln=ln, logit_scale=scale, sigma_q2=2.0, sigma_k2=2.0)
    th = sp.predict(net)
    mc = sp.simulate(net, 32, seed=7)
    cmp = sp.compare(th, mc)
    assert cmp.verdict == "agree", cmp.worst()
    if scale == "sqrt":
        assert all(n["forward_rel_se"] < 0.01 for n in th.meta["numerical"])


def test_causal_token_zero_sees_only_itself():
    net = sp.transformer(2, 64, 2, 4, causal=True, logit_scale="sqrt")
    th = sp.predict(net)
    mc = sp.simulate(net, 8, seed=2)
    # the loss reads token 0, which attends to itself only: no gradient reaches other tokens
    assert np.all(th.grad_share[:, 1:, :] == 0)
    assert sp.compare(th, mc).verdict == "agree"


def test_rank_collapse_and_its_cure():
    """Post-LN with unit branches: token correlation -> 1 with depth (Noci et al. 2022); with
    1/sqrt(L) branches it stays bounded away from 1 (theory, 1/d logits)."""
    c_fixed = [sp.predict(sp.transformer(L, 64, 2, 4, ln="post", logit_scale="linear")).c[-1]
               for L in (6, 24)]
    c_scaled = [sp.predict(sp.transformer(L, 64, 2, 4, ln="post", logit_scale="linear",
                                          scaling="inv_sqrt_depth")).c[-1] for L in (6, 24, 96)]
    assert c_fixed[0] < c_fixed[1] and 1 - c_fixed[1] < 1e-5
    assert max(c_scaled) < 0.5


def test_scalings_build_the_stated_variances():
    L = 6
    gpt = sp.transformer(L, 32, 2, 4, scaling="gpt2")
    attn = gpt.layers[0].branch[1]
    assert attn.sigma_o2 == pytest.approx(1 / (2 * L))
    assert gpt.layers[1].branch[2].sigma_w2 == pytest.approx(1 / (2 * L))
    deep = sp.transformer(L, 32, 2, 4, ln="post", scaling="deepnet")
    a, b = (2 * L) ** 0.25, (8 * L) ** -0.25
    assert deep.layers[0].alpha == pytest.approx(a)
    assert deep.layers[0].branch[0].sigma_v2 == pytest.approx(b * b)
    assert deep.layers[0].branch[0].sigma_q2 == 1.0
    assert deep.depth == 4 * L and gpt.depth == 2 * L + 1


def test_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match="tokens"):
        Attention(64, 4, 0)
    with pytest.raises(ValueError, match="divisible by heads"):
        Attention(64, 5, 4)
    with pytest.raises(ValueError, match="temperature"):
        Attention(64, 4, 4, temperature=-1.0)
    with pytest.raises(ValueError, match="ln"):
        sp.transformer(2, 64, 4, 4, ln="middle")
    with pytest.raises(ValueError, match="logit_scale"):
        Attention(64, 4, 4, logit_scale="cube")
    with pytest.raises(ValueError, match="tie_qk"):
        Attention(64, 4, 4, tie_qk=True)
    with pytest.raises(ValueError, match="matrix-free"):
        sp.simulate(sp.transformer(1, 64, 4, 4), 2, seed=0, engine="matrix-free")
    # a causal mask over one token is fine
    net = sp.transformer(1, 64, 4, 1, causal=True)
    assert np.isfinite(sp.predict(net).log_g).all()
    assert np.isfinite(sp.simulate(net, 2, seed=0).log_g).all()


def test_values_and_pickle():
    import pickle
    a = Attention(64, 4, 8, causal=True)
    assert a == Attention(64, 4, 8, causal=True) and hash(a) == hash(pickle.loads(pickle.dumps(a)))
    assert a.with_width(128).head_width == 32
    assert sp.transformer(2, 64, 4, 4) == sp.transformer(2, 64, 4, 4)


def _exchangeable_gram(T, v, c):
    return v * ((1 - c) * np.eye(T) + c)


def test_exchangeable_route_against_quadrature():
    """T = 2 with equal variances takes the exchangeable route (four row statistics); the
    Gauss-Hermite reference (exact query/key form, no sampling) must lie within 4 of its stated
    standard errors, forward and backward, for a P off the symmetric class."""
    gram = _exchangeable_gram(2, 1.1, 0.35)
    la = Attention(64, 4, 2, sigma_q2=2.0, sigma_k2=1.5, temperature=0.9)
    cache = {}
    step = la.kernel_step(Kernel.from_gram(gram), 64, cache)
    note = cache["numerical"][0]
    assert note["rule"].startswith("exchangeable")
    P = np.array([[0.7, 0.2], [0.2, 0.3]])
    f, Q = step.back(P)
    fwd, bwd = _gauss_hermite_reference(gram, la.logit_gain, P)
    assert note["forward_rel_se"] < 1e-2 and note["backward_rel_se"] < 1e-2
    assert np.max(np.abs(step.out.matrix() - fwd)) <= 4 * note["forward_rel_se"] * fwd[0, 0]
    assert np.max(np.abs(math.exp(f) * Q - bwd)) <= 4 * note["backward_rel_se"] * np.trace(bwd)


@pytest.mark.parametrize("T, c", [(4, 0.3), (6, 0.0)])
def test_exchangeable_route_against_full_logit_monte_carlo(T, c):
    """The four-statistic route against the full T x T logit Monte Carlo (independent draws, the
    query/key path through sampled Ghat) on an exchangeable kernel and a random P: every entry
    within 4 combined standard errors."""
    from signalprop.layers.attention import _AttentionExpectations
    la = Attention(64, 2, T, sigma_q2=2.5, sigma_k2=1.2, logit_samples=8192, seed=5)
    K = _exchangeable_gram(T, 0.8, c)
    fast = _AttentionExpectations(la, K)
    full = _AttentionExpectations(la, K, exchangeable=False)
    assert fast.exch is not None and full.exch is None
    X = np.random.default_rng(2).standard_normal((T, T))
    P = X @ X.T / T
    for (a, sa), (b, sb) in [(fast.output_kernel(), full.output_kernel()),
                             (fast.backward(P), full.backward(P))]:
        assert np.all(np.abs(a - b) <= 4 * np.hypot(sa, sb) + 1e-12)
        assert np.max(sa) < 0.01 * np.max(np.abs(a))


def test_exchangeable_route_limits():
    """c = 1 (collapsed tokens): the logits are constant per row, A is uniform, K_Y = K and the
    query/key path vanishes (J_a K = 0), exactly; a perturbation above the tolerance leaves the
    route."""
    T = 5
    la = Attention(64, 4, T, sigma_q2=2.0)
    step = la.kernel_step(Kernel.uniform(T, 1.3, 1.0), 64, {})
    np.testing.assert_allclose(step.out.matrix(), np.full((T, T), 1.3), rtol=1e-14)
    P = np.diag([1.0, 0, 0, 0, 0])
    f, Q = step.back(P)
    np.testing.assert_allclose(math.exp(f) * Q, np.full((T, T), 1 / T ** 2), rtol=1e-13)
    gram = _exchangeable_gram(T, 1.0, 0.2)
    gram[0, 0] += 1e-9
    cache = {}
    la.kernel_step(Kernel.from_gram(gram), 64, cache)
    assert cache["numerical"][0]["rule"].startswith("Monte Carlo over the T^2")


def test_deep_stack_theory_is_fast():
    """The exchangeable route keeps every kernel exchangeable, so a deep T = 32 stack with
    1/sqrt(d) logits is cheap (the issue's target: 48 blocks in < 1 s; here 8 blocks, loose)."""
    import time
    t = time.perf_counter()
    th = sp.predict(sp.transformer(8, 256, 4, 32))
    assert time.perf_counter() - t < 5.0
    assert all(n["rule"].startswith("exchangeable") for n in th.meta["numerical"])


# --- weight gradients inside blocks (ffn_weight_gradients; docs/theory/attention.md) --------


def test_ffn_weight_gradient_closed_form():
    """Uniform attention then two ReLU feed-forward residuals: with K = I on T tokens the attention
    output has K = 1 1^T / T; the loss on token 0 keeps Pi diagonal (e_0 e_0^T), E[relu'^2] = 1/2,
    so E||dL/dW_2||^2 = N N_h beta^2 K^h_00 Pi_00 with K^h_00 = s1 q / 2 (written out here)."""
    N, Nh, T, b, s1, s2 = 32, 48, 5, 0.7, 1.3, 0.9
    ffn = (Dense(Nh, "relu", s1), Dense(N, "linear", s2))
    net = sp.Network(N, (Attention(N, 1, T, sigma_q2=0.0), sp.Residual(ffn, 1.0, b),
                         sp.Residual(ffn, 1.0, b)))
    got = sp.layers.attention.ffn_weight_gradients(sp.predict(net))
    np.testing.assert_array_equal(got.layer, [2, 3])
    q1 = 1.0 / T                                  # token 0 after uniform attention
    q2 = q1 + b * b * s2 * s1 * q1 / 2            # after the first residual
    pi1 = b * b * (1 + b * b * s1 * s2 / 2)       # gradient at the first W_2's output
    want = [N * Nh * pi1 * s1 * q1 / 2, N * Nh * b * b * s1 * q2 / 2]
    np.testing.assert_allclose(np.exp(got.log_norm2), want, rtol=1e-12)


def test_ffn_weight_gradients_need_a_kernel_profile():
    with pytest.raises(ValueError, match="profile"):
        sp.layers.attention.ffn_weight_gradients(sp.predict(sp.mlp(3, 16)))


@pytest.mark.parametrize("ln", ["pre", "post"])
def test_ffn_weight_gradients_against_monte_carlo(ln):
    """Xiong et al.'s setup at width 64, T = 4, 4 blocks: log E||dL/dW_2||^2 per block, theory
    against 96 sampled networks within 4 delta-method standard errors."""
    from validation.attention_check import _log_mean_mc, ffn_weight_gradients_mc, xiong_net
    net = xiong_net(4, ln, T=4, width=64)
    th = sp.layers.attention.ffn_weight_gradients(sp.predict(net))
    w = ffn_weight_gradients_mc(net, 96, seed=5)
    assert w.shape == (96, 4)
    for i in range(4):
        m, se = _log_mean_mc(w[:, i])
        assert abs(m - th.log_norm2[i]) <= 4 * se, (i, m, se, th.log_norm2[i])


def test_xiong_theorem_1_in_theory():
    """Xiong et al. 2020, Thm. 1 at infinite width: the last W_2 gradient of post-LN does not depend
    on the depth; pre-LN's falls like 1/L (L E||dL/dW_2||^2 stays within 30 % while it drops > 5x)
    and its ratio last/first stays below 1 (bounded)."""
    from validation.attention_check import xiong_net
    got = {(ln, L): sp.layers.attention.ffn_weight_gradients(sp.predict(xiong_net(L, ln)))
           for ln in ("pre", "post") for L in (6, 12, 24, 48)}
    post = [got["post", L].log_norm2[-1] for L in (6, 12, 24, 48)]
    np.testing.assert_allclose(post, post[0], rtol=0, atol=1e-9)
    pre = np.array([got["pre", L].log_norm2[-1] for L in (6, 12, 24, 48)])
    assert pre[0] - pre[-1] > math.log(5)
    scaled = pre + np.log([6, 12, 24, 48])
    assert np.ptp(scaled) < math.log(1.3)
    assert all(got["pre", L].log_ratio() < 0 for L in (6, 12, 24, 48))


def test_rare_near_ties_are_flagged():
    """At a large logit spread the query/key statistics rest on near ties of a row's top two
    logits (papers/dong2021): with too few among the draws, predict says so (a RuntimeWarning and
    ``backward_reliable`` False in meta["numerical"]); at q = 1 it is reliable and silent."""
    import warnings as w
    net = sp.Network(64, (Attention(64, 4, 8),))
    with w.catch_warnings():
        w.simplefilter("error")
        ok = sp.predict(net, 1.0)
    assert [n["backward_reliable"] for n in ok.meta["numerical"]] == [True]
    with pytest.warns(RuntimeWarning, match="near tie"):
        bad = sp.predict(net, 1e5)
    assert [n["backward_reliable"] for n in bad.meta["numerical"]] == [False]
