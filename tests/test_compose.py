"""Composed layers (signalprop.layers.compose): Serial and Add, and the residual block as an Add.

Independent routes: the flat chain of the same layers (Serial), Monte Carlo of the same
description (Add with three paths), and the residual block's own recursions (Yang & Schoenholz
2017) that Add must reproduce exactly when given a skip path and one branch.
"""

import pickle

import numpy as np
import pytest

import signalprop as sp
from signalprop import Dense, LayerNorm
from signalprop.layers import Add, Residual, Serial

N = 128


def _branch(act, sw2=1.0):
    return (Dense(N, act, sw2, 0.05), Dense(N, "linear", 1.0, 0.0))


def test_add_with_a_skip_path_is_the_residual_block():
    br = _branch("tanh", 1.5)
    a = sp.Network(N, tuple(Add(((), br), (0.9, 0.4)) for _ in range(5)))
    r = sp.Network(N, tuple(Residual(br, 0.9, 0.4) for _ in range(5)))
    for c0 in (None, 0.2):
        pa, pr = sp.predict(a, 1.0, c0), sp.predict(r, 1.0, c0)
        for f in ("log_q", "log_g", "log_G") + (("c",) if c0 is not None else ()):
            np.testing.assert_array_equal(getattr(pa, f), getattr(pr, f))
    ma, mr = sp.simulate(a, 4, seed=2), sp.simulate(r, 4, seed=2)
    np.testing.assert_array_equal(ma.log_q, mr.log_q)
    np.testing.assert_array_equal(ma.log_g, mr.log_g)


def _three_paths(depth=4):
    paths = ((), _branch("tanh", 1.3), (LayerNorm(N), Dense(N, "relu", 2.0, 0.05)))
    return sp.Network(N, tuple(Add(paths, (1.0, 0.5, 0.7)) for _ in range(depth)))


def test_three_paths_fast_path_equals_kernel_path():
    net = _three_paths()
    fast = sp.predict(net, 1.0, 0.3)
    slow = sp.predict(net, inputs=[[1.0, 0.3], [0.3, 1.0]])
    np.testing.assert_allclose(slow.log_q, fast.log_q, rtol=0, atol=1e-13)
    np.testing.assert_allclose(slow.c, fast.c, rtol=0, atol=1e-12)
    np.testing.assert_allclose(slow.log_g, fast.log_g, rtol=0, atol=1e-13)


@pytest.mark.parametrize("engine", ["dense", "matrix-free"])
def test_three_paths_theory_vs_monte_carlo(engine):
    """Three paths meeting in a sum (skip, tanh branch, pre-norm relu branch): the means of the
    relu branch and the stream meet (s_i s_j m_i m_j), q grows like a residual stream's."""
    net = _three_paths()
    th = sp.predict(net, 1.0, 0.3)
    mc = sp.simulate(net, 64, seed=5, c0=0.3, engine=engine)
    cmp = sp.compare(th, mc)
    assert cmp.verdict == "agree", cmp.worst()


def test_serial_blocks_are_the_flat_chain_at_their_boundaries():
    """A Serial block ending in a linear Dense layer has output = that layer's tracked h, so its
    q and g are the flat chain's at every block's last layer."""
    blocks = [(Dense(N, "gelu", 1.7, 0.1), Dense(N, "linear", 1.2, 0.05)) for _ in range(4)]
    flat = sp.Network(N, tuple(la for b in blocks for la in b))
    ser = sp.Network(N, tuple(Serial(b) for b in blocks))
    pf, ps = sp.predict(flat, 1.0, 0.5), sp.predict(ser, 1.0, 0.5)
    np.testing.assert_allclose(ps.log_q, pf.log_q[1::2], rtol=0, atol=1e-14)
    np.testing.assert_allclose(ps.c, pf.c[1::2], rtol=0, atol=1e-14)
    np.testing.assert_allclose(ps.log_g, pf.log_g[1::2], rtol=0, atol=1e-13)
    ks = sp.predict(ser, inputs=[[1.0, 0.5], [0.5, 1.0]])
    np.testing.assert_allclose(ks.log_g, pf.log_g[1::2], rtol=0, atol=1e-13)
    np.testing.assert_allclose(ks.c, pf.c[1::2], rtol=0, atol=1e-12)


def test_composed_layers_are_values():
    net = _three_paths(2)
    assert pickle.loads(pickle.dumps(net)) == net == _three_paths(2)
    s = Serial(_branch("tanh"))
    assert pickle.loads(pickle.dumps(s)) == s and hash(s) == hash(Serial(_branch("tanh")))
    assert Add(((), _branch("tanh")), (1.0, 0.5)) != Residual(_branch("tanh"), 1.0, 0.5)


def test_bad_compositions_are_refused():
    with pytest.raises(ValueError, match="draw no weights"):
        Add(((), (LayerNorm(N),)))
    with pytest.raises(ValueError, match="draw no weights"):
        Residual((LayerNorm(N),))
    with pytest.raises(ValueError, match="two paths"):
        Add((_branch("tanh"),))
    with pytest.raises(ValueError, match="one entry per path"):
        Add(((), _branch("tanh")), (1.0,))
    with pytest.raises(ValueError, match=r"scales\[1\]"):
        Add(((), _branch("tanh")), (1.0, -1.0))
    with pytest.raises(TypeError, match="signalprop layers"):
        Serial((Dense(N, "tanh", 1.0), "relu"))
    with pytest.raises(ValueError, match="meet at one width"):
        sp.Network(N, (Add(((), (Dense(64, "tanh", 1.0),))),))
    with pytest.raises(ValueError, match="every scale 0"):
        sp.predict(sp.Network(N, (Add(((), _branch("tanh")), (0.0, 0.0)),)))
