"""The matrix-free engine for batch-normalised layers (signalprop.layers.batchnorm: BatchMatrixFreeGaussian,
BatchMatrixFreeOrthogonal) against the dense engine.

Rules, fixed before running:
* law: two-sample Kolmogorov-Smirnov tests, dense vs matrix-free (independent seeds), of the
  per-sample q_hat, c_hat and g_hat (log) at every layer, for the settings of ``SETTINGS``:
  3 L tests per setting, 48 in all; family-wise level 0.01, so each p-value must exceed the
  Bonferroni threshold ``ALPHA = 0.01 / 48``;
* power: a deliberately wrong sampler (the part of W^T dH fixed by H, (X^+)^T H^T dH, dropped)
  must be rejected by the same test at the same threshold;
* theory: ``compare(predict(net), simulate(net, engine="matrix-free"))`` agrees (CONVENTIONS.md
  rule with the B/N_l finite-width allowance) for relu, B = 8, N = 1024, L = 20;
* reproducibility: bitwise the same numbers whatever chunk, workers or checkpoint replay;
* exact identities of one layer: P_X W^T D = (X^+)^T H^T D (the part fixed by H = W X), and for
  square orthogonal weights the Gram matrix of W^T D is s^2 D^T D.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

import signalprop as sp
from signalprop import sampling
from signalprop.layers.batchnorm import (BatchMatrixFreeGaussian, BatchMatrixFreeOrthogonal,
                                 BatchNormMatrixFree)
from signalprop.simulate import root_seed, sample_streams

# (activation, widths, depth, batch size, weights, samples)
SETTINGS = [
    ("relu", 64, 6, 8, "gaussian", 400),
    ("tanh", 48, 5, 6, "gaussian", 400),
    ("tanh", [64, 48, 56, 40, 48, 32], 5, 6, "orthogonal", 300),
]
N_TESTS = sum(3 * s[2] for s in SETTINGS)             # 48
ALPHA = 0.01 / N_TESTS                                # Bonferroni, family-wise level 0.01


def _net(act, widths, L, B, weights):
    return sp.mlp(L, widths, act, sigma_w2=2.0 if act == "relu" else 1.5, norm="batch",
                  batch_size=B, weights=weights)


def _ks(a, b, L):
    """p-values of the per-layer KS tests of q, c, log g (dict field -> array of L)."""
    return {k: np.array([stats.ks_2samp(a.samples[k][:, l], b.samples[k][:, l]).pvalue
                         for l in range(L)]) for k in ("q", "c", "log_g")}


_DENSE = {}


def _dense(i):
    if i not in _DENSE:
        act, w, L, B, weights, S = SETTINGS[i]
        _DENSE[i] = sp.simulate(_net(act, w, L, B, weights), S, 101 + i, engine="dense",
                                return_samples=True)
    return _DENSE[i]


@pytest.mark.parametrize("i", range(len(SETTINGS)))
def test_same_law_as_dense_ks(i):
    act, w, L, B, weights, S = SETTINGS[i]
    mf = sp.simulate(_net(act, w, L, B, weights), S, 201 + i, engine="matrix-free",
                     return_samples=True)
    p = _ks(_dense(i), mf, L)
    worst = min(float(v.min()) for v in p.values())
    assert worst > ALPHA, {k: np.round(v, 4).tolist() for k, v in p.items()}


class _NoFixedPart(BatchMatrixFreeGaussian):
    """Wrong on purpose: W^T D without U G^T D = (X^+)^T H^T D / c (only the fresh part)."""

    def backward(self, gt, ctx, rng):
        U, G = ctx
        return super().backward(gt, (U, np.zeros_like(G)), rng)


class _WrongRule(BatchNormMatrixFree):
    @staticmethod
    def _linear(layer, n_in):
        return _NoFixedPart(layer, n_in)


def test_ks_detects_a_wrong_sampler(monkeypatch):
    act, w, L, B, weights, S = SETTINGS[0]
    monkeypatch.setitem(sampling._REGISTRY, (sp.BatchNormDense, "matrix-free"), _WrongRule)
    bad = sp.simulate(_net(act, w, L, B, weights), S, 201, engine="matrix-free",
                      return_samples=True)
    p = _ks(_dense(0), bad, L)
    assert p["log_g"].min() < ALPHA, p["log_g"]
    # the forward pass is untouched, so q and c still pass: the test sees the gradients
    assert p["q"].min() > ALPHA and p["c"].min() > ALPHA


def test_theory_agrees_relu_b8_n1024_l20():
    net = sp.mlp(20, 1024, "relu", sigma_w2=2.0, norm="batch", batch_size=8)
    cmp = sp.compare(sp.predict(net), sp.simulate(net, 100, 3, engine="matrix-free"))
    assert cmp.verdict == "agree", cmp.worst()


@pytest.mark.parametrize("weights", ["gaussian", "orthogonal"])
def test_same_seed_same_numbers_whatever_the_chunking(weights):
    # widths below the batch size and of both orders exercise rank-deficient frames (r < B)
    net = sp.mlp(5, [20, 6, 30, 5, 12, 9], "tanh", sigma_w2=1.5, norm="batch", batch_size=8,
                 weights=weights)
    ref = sp.simulate(net, 11, 7, engine="matrix-free", return_samples=True)
    for kw in ({"chunk": 1}, {"chunk": 4}, {"chunk": 4, "workers": 2}):
        other = sp.simulate(net, 11, 7, engine="matrix-free", return_samples=True, **kw)
        for k in ref.samples:
            np.testing.assert_array_equal(ref.samples[k], other.samples[k])
    few = sp.simulate(net, 5, 7, engine="matrix-free", return_samples=True)
    np.testing.assert_array_equal(few.samples["log_g"], ref.samples["log_g"][:5])
    # checkpoint replay of the forward pass (memory budget below one chunk's state)
    wide = sp.mlp(4, 256, "relu", sigma_w2=2.0, norm="batch", batch_size=8, weights=weights)
    a = sp.simulate(wide, 4, 9, engine="matrix-free", return_samples=True, chunk=4)
    b = sp.simulate(wide, 4, 9, engine="matrix-free", return_samples=True, chunk=4,
                    max_memory=1 << 20)
    for k in a.samples:
        np.testing.assert_array_equal(a.samples[k], b.samples[k])


@pytest.mark.parametrize("cls,n_in,n_out", [(BatchMatrixFreeGaussian, 40, 30),
                                            (BatchMatrixFreeOrthogonal, 40, 30),
                                            (BatchMatrixFreeOrthogonal, 30, 40),
                                            (BatchMatrixFreeOrthogonal, 36, 36)])
def test_one_layer_identities(cls, n_in, n_out):
    B, S = 6, 3
    layer = sp.BatchNormDense(n_out, "linear", 1.3, B, "gaussian" if "Gauss" in cls.__name__
                              else "orthogonal")
    lin = cls(layer, n_in)
    fwd, bwd = sample_streams(root_seed(4), 0, S)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((S, B, n_in))
    x[:, -1] = x[:, 0] - 2 * x[:, 1]                    # rank-deficient batch
    h, ctx = lin.forward(x, fwd)
    D = rng.standard_normal((S, B, n_out))
    D -= D.mean(axis=1, keepdims=True)                  # BN gradients sum to zero over the batch
    gx = lin.backward(D, ctx, bwd)
    for s in range(S):
        X, H, Dm, WtD = x[s].T, h[s].T, D[s].T, gx[s].T
        Xp = np.linalg.pinv(X)
        P = X @ Xp
        np.testing.assert_allclose(P @ WtD, Xp.T @ H.T @ Dm, atol=1e-10)
    if cls is BatchMatrixFreeOrthogonal and n_in == n_out:     # W^T = s O^T exactly
        s2 = layer.sigma_w2
        np.testing.assert_allclose(np.matmul(gx, gx.swapaxes(1, 2)),
                                   s2 * np.matmul(D, D.swapaxes(1, 2)), atol=1e-10)
        np.testing.assert_allclose(np.sum(h * h, axis=-1), s2 * np.sum(x * x, axis=-1),
                                   rtol=1e-12)


def test_uniform_weights_are_refused():
    net = sp.mlp(3, 16, "relu", norm="batch", batch_size=8, weights="uniform")
    with pytest.raises(ValueError, match="engine='dense'"):
        sp.simulate(net, 2, 0, engine="matrix-free")
    assert math.isfinite(sp.simulate(net, 2, 0, engine="dense").q[0])
