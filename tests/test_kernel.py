"""The kernel state of k inputs (signalprop.kernel) and predict's kernel path.

Independent routes: the fast two-input path (a different code path: plain floats, tables,
Mehler series), the arc-cosine kernel of relu in closed form (Cho & Saul 2009, eq. 6, n = 1), and
the symmetry of the maps under a relabelling of the inputs.
"""

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import signalprop as sp
from signalprop import Dense, LayerNorm
from signalprop.kernel import Kernel

ACTS = ["tanh", "relu", "erf", "gelu", "softplus", "silu", "leaky_relu", "elu", "linear"]


@settings(max_examples=25, deadline=None)
@given(act=st.sampled_from(ACTS), depth=st.integers(1, 6),
       sw2=st.floats(0.3, 3.0), sb2=st.floats(0.0, 0.5), q0=st.floats(0.05, 5.0),
       c0=st.floats(-0.95, 0.99), norm=st.sampled_from([None, "layer"]))
def test_two_input_kernel_path_equals_fast_path(act, depth, sw2, sb2, q0, c0, norm):
    """A k = 2 kernel of equal norms restricted to the pair is the fast path's state: q, c, g and
    G agree layer by layer (q, g to 1e-12; c to 1e-11: the fast path's certified tables and
    series differ from the direct rule by up to ~5e-14 a layer)."""
    net = sp.mlp(depth, 64, act, sigma_w2=sw2, sigma_b2=sb2, norm=norm)
    fast = sp.predict(net, q0, c0)
    g = [[q0, c0 * q0], [c0 * q0, q0]]
    slow = sp.predict(net, inputs=g)
    assert fast.kernel_corr is None and slow.kernel_corr.shape == (net.depth, 2, 2)
    np.testing.assert_allclose(slow.log_q, fast.log_q, rtol=0, atol=1e-12)
    np.testing.assert_allclose(slow.c, fast.c, rtol=0, atol=1e-11)
    np.testing.assert_allclose(slow.log_g, fast.log_g, rtol=0, atol=1e-12)
    np.testing.assert_allclose(slow.log_G, fast.log_G, rtol=0, atol=1e-12)
    np.testing.assert_allclose(slow.kernel_log_q[:, 1], fast.log_q, rtol=0, atol=1e-12)


def test_one_input_kernel_path_equals_fast_path():
    net = sp.resnet(6, 32, "tanh", sigma_w2=1.2, sigma_b2=0.1, norm="layer")
    fast, slow = sp.predict(net, 2.0), sp.predict(net, inputs=[[2.0]])
    assert slow.c is None
    np.testing.assert_allclose(slow.log_q, fast.log_q, rtol=0, atol=1e-13)
    np.testing.assert_allclose(slow.log_g, fast.log_g, rtol=0, atol=1e-13)


def _arccos_relu(K: np.ndarray) -> np.ndarray:
    """E[relu(u_a) relu(u_b)] for u ~ N(0, K) (Cho & Saul 2009, eq. 6 with n = 1):
    sqrt(K_aa K_bb) (sin t + (pi - t) cos t) / (2 pi), cos t = K_ab / sqrt(K_aa K_bb)."""
    s = np.sqrt(np.diag(K))
    cos = np.clip(K / np.outer(s, s), -1.0, 1.0)
    t = np.arccos(cos)
    return np.outer(s, s) * (np.sin(t) + (np.pi - t) * cos) / (2 * np.pi)


def test_three_inputs_of_unequal_norm_match_the_arccosine_kernel():
    """Three inputs of different norms through relu layers with biases and varying widths:
    K_h^l = sigma_w^2 K_x^{l-1} + sigma_b^2, K_x^l = arccos kernel (closed form), to 1e-12."""
    G = np.array([[1.0, 0.3, -0.2], [0.3, 2.5, 0.9], [-0.2, 0.9, 0.6]])
    sw2, sb2 = [1.7, 2.0, 1.1, 2.3], [0.1, 0.0, 0.3, 0.05]
    net = sp.Network(50, tuple(Dense(n, "relu", a, b) for n, a, b in zip([40, 80, 20, 60], sw2, sb2)))
    prof = sp.predict(net, inputs=G)
    Kx = G
    for l in range(4):
        Kh = sw2[l] * Kx + sb2[l]
        d = np.sqrt(np.diag(Kh))
        np.testing.assert_allclose(prof.kernel_log_q[l], np.log(np.diag(Kh)), rtol=0, atol=1e-13)
        np.testing.assert_allclose(prof.kernel_corr[l], Kh / np.outer(d, d), rtol=0, atol=1e-12)
        Kx = _arccos_relu(Kh)
    # the loss on input 0 only: the gradient covariance stays e_0 e_0^T through these layers, and
    # g^l is the one-input g^l of input 0 (relu: E[phi'^2] = 1/2 at any q)
    e0 = np.zeros((3, 3))
    e0[0, 0] = 1.0
    np.testing.assert_array_equal(prof.grad_share, np.broadcast_to(e0, (4, 3, 3)))
    widths = [50, 40, 80, 20, 60]
    want = [sum(math.log(sw2[k] * widths[k + 1] / widths[k] * 0.5) for k in range(l + 1, 4))
            for l in range(4)]
    np.testing.assert_allclose(prof.log_g, want, rtol=0, atol=1e-13)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), act=st.sampled_from(["tanh", "gelu", "relu"]))
def test_relabelling_the_inputs_relabels_the_kernel(seed, act):
    """The maps act on pairs of inputs alike: permuting the k = 4 inputs permutes kernel_log_q and
    kernel_corr (exactly up to the quadrature's rounding, 1e-13)."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(4, 6))
    G = A @ A.T / 6
    perm = rng.permutation(4)
    net = sp.Network(8, (Dense(8, act, 1.5, 0.1), LayerNorm(8), Dense(8, act, 1.2, 0.0)))
    a = sp.predict(net, inputs=G)
    b = sp.predict(net, inputs=G[np.ix_(perm, perm)])
    np.testing.assert_allclose(b.kernel_log_q, a.kernel_log_q[:, perm], rtol=0, atol=1e-13)
    np.testing.assert_allclose(b.kernel_corr, a.kernel_corr[:, perm][:, :, perm], rtol=0, atol=1e-13)


def test_kernel_is_a_value():
    a = Kernel.uniform(3, 1.0, 0.25, means=True)
    b = Kernel.from_gram([[1.0, 0.25, 0.25], [0.25, 1.0, 0.25], [0.25, 0.25, 1.0]], means=0.0)
    assert a == b and hash(a) == hash(b)
    assert pickle.loads(pickle.dumps(a)) == a
    assert Kernel.uniform(3, 1.0, 0.25) != a               # no means carried
    with pytest.raises(ValueError):
        a.log_q[0] = 1.0                                   # immutable arrays
    assert Kernel.from_pair(a.pair(), 2) == Kernel.uniform(2, 1.0, 0.25, means=True)


@pytest.mark.parametrize("gram,match", [
    ([[1.0, 0.5], [0.4, 1.0]], "symmetric"),
    ([[1.0, 2.0], [2.0, 1.0]], "Cauchy-Schwarz"),
    ([[0.0, 0.0], [0.0, 1.0]], "positive second moment"),
    ([[1.0, np.nan], [np.nan, 1.0]], "finite"),
    ([1.0, 2.0], "Gram matrix"),
])
def test_bad_gram_matrices_are_refused(gram, match):
    with pytest.raises(ValueError, match=match):
        sp.predict(sp.mlp(2, 8), inputs=gram)


def test_inputs_and_q0_together_are_refused():
    with pytest.raises(TypeError, match="inputs"):
        sp.predict(sp.mlp(2, 8), 2.0, inputs=[[1.0]])


def test_batchnorm_needs_the_batch_kernel():
    net = sp.mlp(3, 16, "relu", norm="batch", batch_size=8)
    with pytest.raises(ValueError, match="batch_size 8"):
        sp.predict(net, inputs=np.eye(4))
    G = np.eye(8)
    G[0, 1] = G[1, 0] = 0.5
    with pytest.raises(ValueError, match="batch-symmetric"):
        sp.predict(net, inputs=G)


@pytest.mark.parametrize("name,B,sw2", [("relu", 8, 2.0), ("tanh", 5, 1.3), ("gelu", 16, 1.0)])
def test_batchnorm_on_the_kernel_path_matches_the_orbit_space_recursion(name, B, sw2):
    """Batch norm as an ordinary layer kind on the B x B kernel (the gradient covariance as a
    B x B matrix, projected on the orbit basis at each layer) against the 4-dimensional orbit-space
    recursion of signalprop.batchnorm (another code path: powers of one operator), depth 30."""
    from signalprop.batchnorm import bn_gradient_profile
    net = sp.mlp(30, 64, name, sigma_w2=sw2, norm="batch", batch_size=B)
    prof = sp.predict(net, 2.0, 0.1)
    ref = bn_gradient_profile(name, B, 30, sw2, q0=2.0, c0=0.1)
    np.testing.assert_allclose(prof.log_g, ref.log_g, rtol=0, atol=1e-11)
    # the gradient covariance stays symmetric under the batch members other than 0
    P = prof.grad_share[0]
    assert np.allclose(P[1:, 1:][~np.eye(B - 1, dtype=bool)], P[1, 2], rtol=1e-12, atol=0)
