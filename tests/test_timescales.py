"""Fixed points and time scales of recurrent steps (signalprop.timescales.cell_timescales).

Independent routes: the vanilla cell's rnn_timescales (its own 1-D maps), and the per-step
factors of long predict profiles, which iterate the same steps forward and backward."""

from __future__ import annotations

import math

import numpy as np
import pytest

import signalprop as sp
from signalprop.kernel import Kernel
from signalprop.timescales import cell_timescales


def test_vanilla_cell_matches_rnn_timescales():
    net = sp.rnn("rnn", 1, 64, "tanh", sigma_w2=1.5, sigma_u2=0.5, q_x=1.0, c_x=0.3)
    got = cell_timescales(net.layers[0])
    ref = sp.rnn_timescales("tanh", 1.5, sigma_u2=0.5, q_x=1.0, c_x=0.3)
    for f in ("q_star", "c_star", "chi_1"):
        assert getattr(got, f) == pytest.approx(getattr(ref, f), rel=1e-9), f
    assert got.chi_c == pytest.approx(ref.chi_c, rel=1e-7)      # one-sided differences, h^2
    assert got.regime == ref.regime == "ordered"


@pytest.mark.parametrize("cell,gates", [
    ("minimal", {"gate": sp.Gate(2.0, 1.0, 1.0)}),
    ("gru", {"update": sp.Gate(1.5, 1.0, 1.0, 0.2)}),
    ("lstm", {"forget": sp.Gate(1.0, 1.0, 2.0)}),
])
def test_gated_cells_match_the_tail_of_long_profiles(cell, gates):
    """q*, c* and the per-step gradient factor of a 400-step predict profile far from both ends;
    the correlation approaches c* at rate chi_c."""
    st = cell_timescales(sp.rnn(cell, 1, 64, gates=gates, c_x=0.4).layers[0])
    p = sp.predict(sp.rnn(cell, 400, 64, gates=gates, c_x=0.4), 1.0, 0.9)
    assert p.q[-1] == pytest.approx(st.q_star, rel=1e-9)
    assert p.c[-1] == pytest.approx(st.c_star, rel=1e-8, abs=1e-12)
    assert math.exp(p.log_g[150] - p.log_g[151]) == pytest.approx(st.chi_1, rel=1e-8)
    # chi_c: the cross-sequence deviation from the fixed point, iterated by the step itself
    step = sp.rnn(cell, 1, 64, gates=gates, c_x=0.4).layers[0]
    n_in, n = getattr(step, "state_width", step.width), step.width
    K = Kernel.from_gram(np.array([[1.0, 0.9], [0.9, 1.0]]))
    for i in range(400):
        K = step.kernel_step(K, n_in if i == 0 else n, {}).out
    M = K.matrix()
    cross = np.ix_(range(0, M.shape[0], 2), range(1, M.shape[0], 2))
    X = M.copy()
    X[cross] *= 1 - 1e-4
    X[cross[1].T, cross[0].T] = X[cross].T
    devs = []
    for _ in range(8):
        X = step.kernel_step(Kernel.from_gram(X), n, {}).out.matrix()
        devs.append(np.linalg.norm(X[cross] - M[cross]))
    assert devs[-1] / devs[-2] == pytest.approx(st.chi_c, rel=1e-2)
    assert st.xi_grad == pytest.approx(-1 / math.log(st.chi_1))


def test_bad_input():
    with pytest.raises(TypeError, match="recurrent step"):
        cell_timescales(sp.mlp(2, 8).layers[0])
    with pytest.raises(ValueError, match="max_steps"):
        cell_timescales(sp.rnn("gru", 1, 8).layers[0], max_steps=0)
    with pytest.raises(ValueError, match="did not settle"):
        cell_timescales(sp.rnn("gru", 1, 8).layers[0], max_steps=2)
