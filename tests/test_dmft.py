"""The dynamical mean field of recurrent cells with tied weights (signalprop.dmft.predict_tied).

Independent routes: (1) exact quadrature where a unit's state is an explicit function of a few
Gaussians (the first LSTM step; an LSTM whose gates are fixed per unit by their biases); (2) the
untied model, whose infinite-width theory ``predict`` computes by deterministic quadrature
(minimalRNN, GRU: exact there); (3) Monte Carlo of the tied network, where the untied theory fails
and the tied one must not. Statistical tolerances: 4.5 standard errors (theory's replicas and the
simulation's samples combined), replicas >= 12 so the replica spread is a usable estimate.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

import signalprop as sp
from signalprop.dmft import UnitFields, predict_tied
from validation.tied_check import lstm_gradient_norms

Z_MAX = 4.5


def _gh(n: int = 1201):
    """Nodes and weights for E over N(0, 1): the trapezoid rule on [-12, 12] (spectrally accurate
    for these analytic integrands; Gauss-Hermite with 80 nodes is not, since tanh(S tanh(x))
    turns over on a scale 1/S near 0). 1201 and 6001 nodes agree to 5e-14 here."""
    x = np.linspace(-12.0, 12.0, n)
    return x, np.exp(-x * x / 2) / math.sqrt(2 * math.pi) * (x[1] - x[0])


def test_field_values_have_the_stated_covariance():
    """Three uses of one field on fixed vectors: the values' covariance over paths is sigma2 times
    the vectors' Gram matrix (z-scores of each entry against its Gaussian standard error)."""
    M = 20000
    rng = np.random.default_rng(1)
    Y = rng.standard_normal((M, 3)) @ np.array([[1.0, 0.6, 0.2], [0.0, 0.8, 0.5], [0.0, 0.0, 0.7]])
    F = UnitFields(M, [np.random.default_rng(2)])
    vals = np.hstack([F.field("W", 2.0, Y[:, [j]]) for j in range(3)])
    target = 2.0 * Y.T @ Y / M
    emp = vals.T @ vals / M
    se = np.sqrt((target ** 2 + np.outer(np.diag(target), np.diag(target))) / M)
    assert np.all(np.abs(emp - target) <= Z_MAX * se)
    # a new key is an independent matrix
    other = F.field("W2", 2.0, Y[:, [0]])
    assert abs(float(other[:, 0] @ vals[:, 0]) / M) <= Z_MAX * math.sqrt(2) * target[0, 0] / math.sqrt(M)


def test_first_lstm_step_against_quadrature():
    """h_1 = o tanh(i g) with independent gate pre-activations a ~ N(mu, sw2 q0 + su2 q_x):
    q^1 = E[o^2] E[tanh(i g)^2], a 1-D and a 2-D Gauss-Hermite integral (exact to ~1e-12). The
    untied theory ``predict`` takes c Gaussian inside tanh and is not exact here."""
    gates = {"forget": sp.Gate(1.0, 0.5, 1.0), "input": sp.Gate(0.8, 0.5, 0.3),
             "output": sp.Gate(1.2, 0.5, -0.4), "candidate": sp.Gate(1.5, 0.5, 0.0)}
    q0 = 1.3
    net = sp.rnn("lstm", steps=2, width=64, gates=gates, q_x=1.0)
    x, w = _gh()

    def sd(g):
        return math.sqrt(g.sigma_w2 * q0 + g.sigma_u2 * 1.0)

    Eo2 = float(w @ special.expit(gates["output"].mu + sd(gates["output"]) * x) ** 2)
    i = special.expit(gates["input"].mu + sd(gates["input"]) * x)
    g = np.tanh(sd(gates["candidate"]) * x)
    Et = float(w @ np.tanh(np.outer(i, g)) ** 2 @ w)
    exact = Eo2 * Et
    p = predict_tied(net, q0, paths=8192, replicas=12, seed=4)
    assert abs(p.q[0] - exact) <= Z_MAX * p.q_se[0]
    assert p.q_se[0] < 0.02 * exact      # the check has teeth


def test_gates_fixed_by_their_biases_against_quadrature():
    """Weightless gates with random per-unit biases: the forget value f and candidate g of a unit
    are the same at every step when tied, so c_t = i g (1 - f^t) / (1 - f) and q^t = o^2
    E[tanh(c_t)^2] over (b_f, b_g), a 2-D integral. Untied (fresh biases each step) differs."""
    bf, bg = sp.Gate(0.0, 0.0, 1.5, 1.0), sp.Gate(0.0, 0.0, 0.0, 2.0)
    fixed = sp.Gate(0.0, 0.0, 0.4)
    gates = {"forget": bf, "input": fixed, "output": fixed, "candidate": bg}
    T = 10
    x, w = _gh()
    f = special.expit(bf.mu + math.sqrt(bf.sigma_b2) * x)[:, None]
    g = np.tanh(math.sqrt(bg.sigma_b2) * x)[None, :]
    i = o = special.expit(0.4)
    t = np.arange(1, T + 1)
    c = i * g[None] * ((1 - f[None] ** t[:, None, None]) / (1 - f[None]))
    exact = o ** 2 * np.einsum("i,tij,j->t", w, np.tanh(c) ** 2, w)
    tied = predict_tied(sp.rnn("lstm", steps=T, width=32, gates=gates), 1.0, paths=4096,
                        replicas=12, seed=5)
    z = (tied.q - exact) / tied.q_se
    assert np.all(np.abs(z) <= Z_MAX), z
    untied = predict_tied(sp.rnn("lstm", steps=T, width=32, gates=gates, tied=False), 1.0,
                          paths=4096, replicas=12, seed=5)
    assert np.abs((untied.q[-1] - exact[-1]) / untied.q_se[-1]) > 10


@pytest.mark.parametrize("cell", ["minimal", "gru"])
def test_untied_model_matches_predict(cell):
    """With untied weights (``tied=False``) the solver is the exact untied theory, which
    ``predict`` computes by quadrature for the minimalRNN and the GRU (exact there)."""
    net = sp.rnn(cell, steps=8, width=64, tied=False)
    th = sp.predict(net, 1.0, 0.4)
    p = predict_tied(net, 1.0, 0.4, paths=4096, replicas=12, seed=6)
    for name, se in (("q", p.q_se), ("c", p.c_se), ("log_g", p.log_g_se)):
        diff = getattr(p, name) - getattr(th, name)
        ok = np.abs(diff) <= Z_MAX * se + 1e-12
        assert ok.all(), (name, diff / np.where(se > 0, se, 1))


def test_tied_lstm_agrees_with_simulation_where_the_untied_theory_fails():
    """LSTM with forget bias 3 (long memory), tied weights, N = 256: the untied theory misses the
    gradient at long lags (by over a nat at lag 19), the dynamical mean field agrees by
    ``compare``'s rule (its standard errors combined with the simulation's)."""
    T = 20
    net = sp.rnn("lstm", steps=T, width=256, gates={"forget": sp.Gate(1.0, 1.0, 3.0)})
    sim = sp.simulate(net, 24, seed=7, q0=1.0)
    tied = predict_tied(net, 1.0, paths=4096, replicas=12, seed=8)
    cmp = sp.compare(tied, sim, fields=["q", "log_g"])
    assert all(np.all(v) for v in cmp.agree.values()), cmp
    untied = sp.compare(sp.predict(net, 1.0), sim, fields=["log_g"])
    assert not np.all(untied.agree["log_g"])
    assert sim.log_g[0] - sp.predict(net, 1.0).log_g[0] > 1.0


def test_same_seed_same_numbers_whatever_the_chunking_and_bad_input(monkeypatch):
    net = sp.rnn("gru", steps=4, width=16)
    a = predict_tied(net, 1.0, 0.3, paths=256, replicas=3, seed=9)
    b = predict_tied(net, 1.0, 0.3, paths=256, replicas=3, seed=9)
    import signalprop.dmft as dmft
    monkeypatch.setattr(dmft, "_CHUNK_VALUES", 1)          # one replica at a time
    c = predict_tied(net, 1.0, 0.3, paths=256, replicas=3, seed=9)
    for f in ("q", "c", "log_g", "q_se", "log_g_se"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        np.testing.assert_array_equal(getattr(c, f), getattr(a, f))
    assert a.meta["method"].startswith("dynamical mean field")
    with pytest.raises(ValueError, match="paths"):
        predict_tied(net, paths=10)
    with pytest.raises(ValueError, match="replicas"):
        predict_tied(net, replicas=1)
    with pytest.raises(ValueError, match="c0"):
        predict_tied(net, 1.0, 1.5)
    with pytest.raises(ValueError, match="per-unit process"):
        predict_tied(sp.mlp(3, 16))
    with pytest.raises(ValueError, match="gaussian"):
        predict_tied(sp.rnn("gru", steps=3, width=16, weights="orthogonal"))
    with pytest.raises(MemoryError, match="GiB"):
        predict_tied(sp.rnn("lstm", steps=1000, width=16), paths=10 ** 6)
    with pytest.raises(TypeError, match="Network"):
        predict_tied("lstm")


def test_chrono_initialisation_tied_theory_and_simulation():
    """Chrono biases (b = log U(1, T_max - 1) per unit, +b forget, -b input): the tied theory
    agrees with the simulation by compare's rule; ``predict`` refuses (one bias law per gate)."""
    net = sp.rnn("lstm", steps=16, width=256, chrono=40.0, gates={"forget": sp.Gate(1.0, 1.0, 0.0)})
    sim = sp.simulate(net, 16, seed=10, q0=1.0)
    tied = predict_tied(net, 1.0, paths=4096, replicas=12, seed=11)
    cmp = sp.compare(tied, sim, fields=["q", "log_g"])
    assert all(np.all(v) for v in cmp.agree.values()), cmp
    # without chrono (forget bias 0 for every unit) the gradient fades much faster
    plain = predict_tied(sp.rnn("lstm", steps=16, width=256, gates={"forget": sp.Gate(1.0, 1.0, 0.0)}),
                         1.0, paths=2048, replicas=4, seed=11)
    assert tied.log_g[0] - plain.log_g[0] > 10 * math.hypot(tied.log_g_se[0], plain.log_g_se[0])
    with pytest.raises(ValueError, match="predict_tied"):
        sp.predict(net, 1.0)
    with pytest.raises(ValueError, match="chrono"):
        sp.rnn("gru", steps=3, width=8, chrono=10.0)
    with pytest.raises(ValueError, match="chrono"):
        sp.rnn("lstm", steps=3, width=8, chrono=1.5)


def test_recurrent_weight_gradients_against_an_independent_lstm():
    """E[(d loss / d W_ij)^2] of each tied recurrent matrix: sum over pairs of steps of
    E[delta_s delta_t] E[h_s h_t] from the unit paths, against a hand-written tied LSTM (N = 256,
    24 networks); the same-step part alone (what untied weights would give) is far off."""
    gates = {"forget": sp.Gate(1.0, 1.0, 3.0), "input": sp.Gate(1.0, 1.0, 0.0),
             "output": sp.Gate(1.0, 1.0, 0.0), "candidate": sp.Gate(1.0, 1.0, 0.0)}
    T = 12
    mc = lstm_gradient_norms(256, T, gates, 24, seed=12)
    m = mc.mean(axis=0)
    se = mc.std(axis=0, ddof=1) / math.sqrt(len(mc)) / m
    wg = predict_tied(sp.rnn("lstm", steps=T, width=256, gates=gates), 1.0, paths=4096,
                      replicas=8, seed=13).meta["weight_gradients"]
    for j, k in enumerate(gates):
        th = wg[f"rnn:{k}:W"]
        assert abs(math.log(m[j]) - th["log_G"]) <= Z_MAX * math.hypot(se[j], th["log_G_se"]), k
    cand = wg["rnn:candidate:W"]
    assert cand["log_G"] - cand["log_G_same_step"] > 0.5
    total = wg["total"]          # E ||grad of all W, U, b||^2, the norm that clipping meets
    assert abs(math.log(m[-1]) - total["log_norm_sq"]) <= Z_MAX * math.hypot(
        se[-1], total["log_norm_sq_se"])


def test_reset_after_gru_tied_theory_and_simulation():
    """PyTorch's GRU cell (reset gate after the recurrent product, a bias inside it): the tied
    theory agrees with simulation; ``predict`` refuses the cell; options checked."""
    net = sp.rnn("gru", steps=16, width=256, reset_after=True, hidden_bias2=0.3,
                 gates={"update": sp.Gate(1.0, 1.0, 0.5, 0.2), "reset": sp.Gate(2.0, 1.0, 0.0),
                        "candidate": sp.Gate(2.0, 1.0, 0.0, 0.1)})
    sim = sp.simulate(net, 16, seed=14, q0=1.0, c0=0.5)
    tied = predict_tied(net, 1.0, 0.5, paths=4096, replicas=12, seed=15)
    cmp = sp.compare(tied, sim, fields=["q", "c", "log_g"])
    assert all(np.all(v) for v in cmp.agree.values()), cmp
    before = predict_tied(sp.rnn("gru", steps=16, width=256, gates={
        "update": sp.Gate(1.0, 1.0, 0.5, 0.2), "reset": sp.Gate(2.0, 1.0, 0.0),
        "candidate": sp.Gate(2.0, 1.0, 0.0, 0.1)}), 1.0, 0.5, paths=2048, replicas=4, seed=15)
    assert np.max(np.abs(before.q - tied.q) / np.hypot(before.q_se, tied.q_se)) > 10
    with pytest.raises(ValueError, match="predict_tied"):
        sp.predict(net, 1.0)
    with pytest.raises(ValueError, match="reset_after"):
        sp.rnn("lstm", steps=3, width=8, reset_after=True)
    with pytest.raises(ValueError, match="hidden_bias2"):
        sp.rnn("gru", steps=3, width=8, hidden_bias2=0.5)


@pytest.mark.parametrize("tied", [True, False])
def test_vanilla_rnn_tied_theory_equals_predict(tied):
    """For the vanilla cell the forward pass needs only equal-time moments and the gradient
    variance only the diagonal of the backward kernel, so ``predict`` is already the tied
    infinite-width theory (docs/theory/recurrent.md): the unit-path solution agrees with it, tied
    or not. Its weight gradient has no cross-step terms at infinite width (E[delta_s delta_t] = 0
    for s != t: the loss's v is independent of every W~^T field), unlike the LSTM's."""
    net = sp.rnn("rnn", steps=10, width=64, sigma_w2=1.5, sigma_u2=0.5, sigma_b2=0.1, q_x=1.0,
                 c_x=0.3, tied=tied)
    th = sp.predict(net, 1.0, 0.2)
    p = predict_tied(net, 1.0, 0.2, paths=4096, replicas=12, seed=16)
    for name, se in (("q", p.q_se), ("c", p.c_se), ("log_g", p.log_g_se)):
        diff = getattr(p, name) - getattr(th, name)
        assert np.all(np.abs(diff) <= Z_MAX * se + 1e-12), (name, diff / np.where(se > 0, se, 1))
    if tied:
        w = p.meta["weight_gradients"]["rnn:W"]
        assert abs(w["log_G"] - w["log_G_same_step"]) <= Z_MAX * w["log_G_se"]


def test_three_sequences_kernel_fields_match_predict_untied():
    """k = 3 sequences given as a Gram matrix: kernel_log_q (T, 3) and kernel_corr (T, 3, 3) of
    the untied solution agree with predict's kernel path (exact for the GRU)."""
    G = np.array([[1.0, 0.5, 0.2], [0.5, 1.5, -0.3], [0.2, -0.3, 0.8]])
    net = sp.rnn("gru", steps=6, width=32, tied=False)
    th = sp.predict(net, inputs=G)
    R = 12
    p = predict_tied(net, inputs=G, paths=4096, replicas=R, seed=17)
    assert p.kernel_log_q.shape == (6, 3) and p.kernel_corr.shape == (6, 3, 3)
    # 36 comparisons, each a Student t with R - 1 degrees of freedom (the replicas' spread):
    # a familywise false-alarm rate of 1e-3 (Bonferroni) sets the bound
    bound = stats.t.ppf(1 - 1e-3 / (2 * 36), R - 1)
    z = (p.kernel_log_q - th.kernel_log_q) / p.kernel_log_q_se
    assert np.all(np.abs(z) <= bound), z
    off = np.triu(np.ones((3, 3), dtype=bool), 1)
    zc = (p.kernel_corr - th.kernel_corr)[:, off] / p.kernel_corr_se[:, off]
    assert np.all(np.abs(zc) <= bound), zc


def test_recurrent_clipping_against_the_hand_written_lstm():
    """Clipping through time: recurrent_clipping's mean norm against the independent tied LSTM
    (validation.tied_check.lstm_gradient_norms), its output-variance scaling exact, and P(clip)
    the concentration limit (or log-normal with a given variance) around it."""
    gates = {"forget": sp.Gate(1.0, 1.0, 3.0), "input": sp.Gate(1.0, 1.0, 0.0),
             "output": sp.Gate(1.0, 1.0, 0.0), "candidate": sp.Gate(1.0, 1.0, 0.0)}
    net = sp.rnn("lstm", steps=10, width=256, gates=gates)
    prof = predict_tied(net, 1.0, paths=2048, replicas=8, seed=18)
    res = sp.recurrent_clipping(net, [1.0, 1e3], profile=prof)
    mc = lstm_gradient_norms(256, 10, gates, 16, seed=19)[:, -1]
    se = mc.std(ddof=1) / math.sqrt(len(mc)) / mc.mean()
    tse = prof.meta["weight_gradients"]["total"]["log_norm_sq_se"]
    assert abs(res.log_mean_norm2 - math.log(mc.mean())) <= Z_MAX * math.hypot(se, tse)
    assert list(res.p_clip) == [1.0, 0.0]                 # the norm is ~130: clip 1 fires, 1e3 not
    small = sp.recurrent_clipping(net, 1.0, profile=prof, output_grad_var=1e-6)
    assert small.log_mean_norm2 == pytest.approx(res.log_mean_norm2 + math.log(1e-6), abs=1e-12)
    lognormal = sp.recurrent_clipping(net, res.mean_field_norm, profile=prof, log_norm2_var=0.01)
    # log-normal: the median of ||g||^2 lies var/2 below log of its mean, so P = Phi(-sqrt(var)/2)
    assert float(lognormal.p_clip) == pytest.approx(stats.norm.cdf(-0.05), rel=1e-9)
    with pytest.raises(TypeError, match="predict_tied"):
        sp.recurrent_clipping(net, profile=sp.predict(net, 1.0))
