"""simulate(inputs=Gram): k fixed inputs of a given per-unit Gram matrix, and the Monte Carlo
kernel fields (kernel_log_q, kernel_corr and their standard errors) that line up with
predict(inputs=...) field by field (compare's kernel fields).

Independent routes: the Gram matrix of the built inputs against the one asked for (1e-12
relative, rounding of a Cholesky factor); layers 1 and 2 of a relu network with Gaussian
weights, whose expected per-unit second moments are exact at any width (layer 1: sigma_w^2 G +
sigma_b^2; layer 2: the arc-cosine kernel of Cho & Saul 2009, eq. 6, since the units of h^1 are
i.i.d. Gaussian for fixed inputs), held to 4 standard errors with no allowance; c0 = 0.5 (exact
in binary) reproduced bit for bit by the equivalent Gram matrix.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import signalprop as sp
from signalprop.kernel import Kernel
from signalprop.simulate import _Job, gram_inputs, network_inputs, simulate

G3 = np.array([[1.0, 0.5, 0.2], [0.5, 2.0, -0.3], [0.2, -0.3, 0.5]])   # unequal norms


def _relu_net(depth=4, width=64):
    return sp.mlp(depth, width, "relu", sigma_w2=2.0, sigma_b2=0.1)


@pytest.mark.parametrize("n0", [4, 5, 64])
def test_gram_inputs_have_the_gram_matrix_and_mean_zero(n0):
    X = gram_inputs(n0, G3)
    assert X.shape == (3, n0)
    np.testing.assert_allclose(X @ X.T / n0, G3, rtol=0, atol=1e-12 * G3.max())
    if n0 >= 4:                                    # room for mean zero: k + 1 units
        np.testing.assert_allclose(X.sum(axis=1), 0.0, atol=1e-12 * math.sqrt(n0))


def test_gram_inputs_singular_and_kernel():
    G = np.array([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 3.0]])    # x_1 = 2 x_0: rank 2
    X = gram_inputs(3, G)                          # rank 2 fits 3 units (mean not removed: no room)
    np.testing.assert_allclose(X @ X.T / 3, G, atol=1e-12 * 4)
    K = Kernel.from_gram(G3)
    np.testing.assert_allclose(gram_inputs(16, K) @ gram_inputs(16, K).T / 16, G3, atol=1e-12)


def test_two_inputs_reproduce_c0_bit_for_bit():
    net = sp.mlp(3, 16, "tanh", sigma_w2=1.5, sigma_b2=0.05)
    G = [[1.0, 0.5], [0.5, 1.0]]
    assert np.array_equal(gram_inputs(16, G), network_inputs(16, 1.0, 0.5))
    for engine in ("dense", "matrix-free"):
        a = simulate(net, 8, 11, engine, c0=0.5)
        b = simulate(net, 8, 11, engine, inputs=G)
        for f in ("q", "log_q", "c", "log_g", "log_G", "q_se", "c_se", "kernel_log_q",
                  "kernel_corr", "kernel_log_q_se", "kernel_corr_se"):
            assert np.array_equal(getattr(a, f), getattr(b, f)), (engine, f)
        # q and c are views of the kernel fields
        assert np.array_equal(b.kernel_log_q[:, 0], b.log_q)
        assert np.array_equal(b.kernel_corr[:, 0, 1], b.c)
        assert np.array_equal(b.kernel_corr[:, 1, 0], b.c)
        assert np.all(np.diagonal(b.kernel_corr, axis1=1, axis2=2) == 1.0)


def test_three_inputs_unequal_norms_agree_with_predict():
    net = _relu_net()
    th = sp.predict(net, inputs=G3)
    mc = simulate(net, 200, 1, "dense", inputs=G3)
    assert mc.kernel_log_q.shape == (4, 3) and mc.kernel_corr.shape == (4, 3, 3)
    cmp = sp.compare(th, mc)
    assert "kernel_log_q" in cmp.fields and "kernel_corr" in cmp.fields
    assert cmp.verdict == "agree", cmp
    # layers 1 and 2: E[q_hat_a] and E[<h_a, h_b>/N] exact at any width (module docstring)
    K1 = 2.0 * G3 + 0.1
    s = np.sqrt(np.diag(K1))
    rho = np.clip(K1 / np.outer(s, s), -1, 1)
    th_ = np.arccos(rho)
    K2 = 2.0 * np.outer(s, s) / (2 * math.pi) * (np.sin(th_) + (math.pi - th_) * np.cos(th_)) + 0.1
    for layer, K in ((0, K1), (1, K2)):
        z = (mc.kernel_log_q[layer] - np.log(np.diag(K))) / mc.kernel_log_q_se[layer]
        assert np.all(np.abs(z) < 4), (layer, z)
        np.testing.assert_allclose(th.kernel_log_q[layer], np.log(np.diag(K)), rtol=0, atol=1e-10)


@pytest.mark.parametrize("weights", ["gaussian", "orthogonal"])
def test_matrix_free_engine_with_three_inputs(weights):
    """The matrix-free samplers condition W on the span of all k inputs (sampling._frame by
    modified Gram-Schmidt): three inputs of unequal norms agree with predict, and the frame of a
    rank-2 Gram matrix (an input in the span of the others) gives finite numbers."""
    net = sp.Network(64, tuple(sp.Dense(64, "relu", 2.0, 0.1, weights) for _ in range(4)))
    mc = simulate(net, 200, 3, "matrix-free", inputs=G3)
    cmp = sp.compare(sp.predict(net, inputs=G3), mc)
    assert cmp.verdict == "agree", cmp
    A = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    low = simulate(net, 8, 3, "matrix-free", inputs=A @ A.T)
    assert np.all(np.isfinite(low.kernel_log_q)) and np.all(np.isfinite(low.kernel_corr))


def test_batch_norm_kernel_fields_agree_with_theory():
    net = sp.mlp(3, 64, "relu", sigma_w2=2.0, norm="batch", batch_size=6)
    th = sp.predict(net)
    for engine in ("dense", "matrix-free"):
        mc = simulate(net, 100, 5, engine)
        assert mc.kernel_corr.shape == (3, 6, 6)
        cmp = sp.compare(th, mc, fields=["kernel_corr", "kernel_log_q", "c"])
        assert cmp.verdict == "agree", cmp
        assert np.array_equal(mc.kernel_corr[:, 0, 1], mc.c)


def test_kernel_statistics_are_the_sample_means():
    net = _relu_net(3, 16)
    mc = simulate(net, 6, 2, inputs=G3, return_samples=True)
    ks, kc = mc.samples["kernel_q"], mc.samples["kernel_corr"]
    assert ks.shape == (6, 3, 3) and kc.shape == (6, 3, 3, 3)
    np.testing.assert_allclose(mc.kernel_log_q, np.log(ks.mean(axis=0)), rtol=0, atol=1e-14)
    np.testing.assert_allclose(mc.kernel_corr, kc.mean(axis=0), rtol=0, atol=1e-15)
    se = kc.std(axis=0, ddof=1) / math.sqrt(6)
    np.testing.assert_allclose(mc.kernel_corr_se, se, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(mc.kernel_log_q_se, ks.std(axis=0, ddof=1) / math.sqrt(6)
                               / ks.mean(axis=0), rtol=1e-12)
    # per sample, every input's q_hat and every pair's correlation from the raw vectors
    assert np.all(np.abs(kc) <= 1.0 + 1e-15)


def test_far_beyond_the_float_range():
    """x_1 = 2 x_0 through a positively homogeneous network: q_hat_1 = 4 q_hat_0 and c_hat = 1 in
    every sample, also where q leaves the float range (the rescaled measurement)."""
    net = sp.mlp(80, 16, "relu", sigma_w2=1e3)
    G = [[1.0, 2.0], [2.0, 4.0]]
    mc = simulate(net, 3, 0, inputs=G)
    assert mc.log_q[-1] > 480 * math.log(2)         # beyond 2^480: the rescaled path
    np.testing.assert_allclose(mc.kernel_log_q[:, 1] - mc.kernel_log_q[:, 0], math.log(4.0),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(mc.kernel_corr[:, 0, 1], 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("gram, err, match", [
    ([[1.0, 0.2], [0.3, 1.0]], ValueError, "symmetric"),
    ([[1.0, 0.0], [0.0, -1.0]], ValueError, "positive second moment"),
    ([[1.0, 2.0], [2.0, 1.0]], ValueError, "Cauchy-Schwarz"),
    ([[1.0, -0.9, -0.9], [-0.9, 1.0, -0.9], [-0.9, -0.9, 1.0]], ValueError, "semidefinite"),
    ([1.0, 2.0], ValueError, "k x k"),
    ([[1.0, np.nan], [np.nan, 1.0]], ValueError, "finite"),
    ("1", TypeError, "inputs"),
])
def test_bad_gram_matrices(gram, err, match):
    with pytest.raises(err, match=match):
        simulate(_relu_net(2, 8), 2, 0, inputs=gram)


def test_inputs_exclusive_and_checked_against_the_network():
    net = _relu_net(2, 8)
    with pytest.raises(TypeError, match="q0/c0 or inputs"):
        simulate(net, 2, 0, q0=2.0, inputs=G3)
    with pytest.raises(TypeError, match="q0/c0 or inputs"):
        simulate(net, 2, 0, c0=0.1, inputs=G3)
    with pytest.raises(ValueError, match="rank 3 needs an input width >= 3, got 2"):
        simulate(sp.mlp(2, [2, 8, 8], "relu"), 2, 0, inputs=G3)
    bn = sp.mlp(2, 16, "relu", norm="batch", batch_size=4)
    with pytest.raises(ValueError, match="couples k = 4 inputs"):
        simulate(bn, 2, 0, inputs=G3)


def test_memory_of_the_kernel_estimators_is_counted_up_front():
    net = _relu_net(5, 8)
    X1 = network_inputs(8, 1.0, 0.0, k=2)
    X8 = gram_inputs(64, np.eye(8))
    wide = sp.mlp(5, 64, "relu")
    root = np.random.SeedSequence(0)
    small = _Job(wide, "dense", X8[:2], np.dtype(float), root, 1 << 30).nbytes_needed(10**6, False)
    big = _Job(wide, "dense", X8, np.dtype(float), root, 1 << 30).nbytes_needed(10**6, False)
    assert big - small >= 8.0 * 10**6 * 5 * (8 * 7 // 2 - 1)   # at least the pairs, once
    assert _Job(net, "dense", X1, np.dtype(float), root, 1 << 30).nbytes_needed(1, False) > 0
    with pytest.raises(ValueError, match="would need"):
        simulate(wide, 10**10, 0, inputs=np.eye(8))
