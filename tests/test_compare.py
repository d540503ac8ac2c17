"""compare(): the agreement rule, verdicts, errors; the comparison plot."""

import json
import math

import numpy as np
import pytest

from signalprop.compare import Comparison, beta, compare, expected_to_agree
from signalprop.network import mlp
from signalprop.results import Profile
from signalprop.simulate import simulate


def _linear_theory(L, sw2, q0=1.0, c0=None):
    """Exact mean-field (and finite-width mean) profile of a linear net without bias."""
    layers = np.arange(1, L + 1)
    log_q = math.log(q0) + layers * math.log(sw2)
    log_g = (L - layers) * math.log(sw2)
    log_G = log_g + math.log(q0) + (layers - 1) * math.log(sw2)
    c = None if c0 is None else np.full(L, c0)
    return Profile(layers=layers, q=np.exp(log_q), log_q=log_q, log_g=log_g, log_G=log_G, c=c,
                   meta={"source": "exact"})


@pytest.fixture(scope="module")
def linear_sim():
    return simulate(mlp(10, 64, "linear", sigma_w2=1.2), 200, 3, engine="matrix-free", c0=0.4)


def test_exact_theory_agrees(linear_sim):
    comp = compare(_linear_theory(10, 1.2, c0=0.4), linear_sim)
    assert isinstance(comp, Comparison)
    assert comp.verdict == "agree" and comp.agrees
    assert comp.fields == ("q", "c", "log_g", "log_G")
    assert 0 < comp.max_abs_z < 4
    assert comp.beta == pytest.approx(10 / 64)
    assert "4 se" in comp.rule and "kappa = 2" in comp.rule
    for f in comp.fields:
        assert comp.z[f].shape == (10,) and comp.agree[f].all()
        np.testing.assert_allclose(comp.diff[f], comp.simulation[f] - comp.theory[f])
    np.testing.assert_allclose(comp.allowance["q"],
                               2 * comp.theory["q"] * np.cumsum(np.full(10, 1 / 64)))
    np.testing.assert_allclose(comp.allowance["log_g"], 2 * np.arange(10, 0, -1) / 64)
    np.testing.assert_allclose(comp.allowance["log_G"], 2 * 10 / 64)
    json.loads(comp.to_json())


def test_wrong_theory_disagrees(linear_sim):
    comp = compare(_linear_theory(10, 1.5, c0=0.4), linear_sim)   # sigma_w^2 off by 25%
    assert comp.verdict == "disagree" and not comp.agrees
    f, layer, z, excess = comp.worst()
    assert f in ("q", "log_g", "log_G") and excess > 4
    # the allowance is what separates: without it a small bias is caught, with it tolerated
    th = _linear_theory(10, 1.2, c0=0.4)
    shifted = Profile(layers=th.layers, q=th.q * 1.02, log_q=th.log_q, log_g=th.log_g,
                      log_G=th.log_G, c=th.c)
    assert compare(shifted, linear_sim, fields=["q"]).verdict == "agree"
    assert compare(shifted, linear_sim, fields=["q"], kappa=0.0,
                   sigmas=0.5).verdict == "disagree"


def test_compare_with_meanfield_predict():
    from signalprop.meanfield import predict
    net = mlp(20, 256, "tanh", sigma_w2=1.76, sigma_b2=0.05)
    sim = simulate(net, 100, 4, engine="matrix-free", c0=0.6)
    comp = compare(predict(net, c0=0.6), sim)
    assert comp.verdict == "agree", comp.worst()
    bad = compare(predict(mlp(20, 256, "tanh", sigma_w2=2.2, sigma_b2=0.05), c0=0.6), sim)
    assert bad.verdict == "disagree"


def test_fields_and_allowance_override(linear_sim):
    th = _linear_theory(10, 1.2, c0=0.4)
    comp = compare(th, linear_sim, fields=["log_g"], allowance={"log_g": 0.0})
    assert comp.fields == ("log_g",)
    assert np.all(comp.allowance["log_g"] == 0)
    assert "given by the caller" in comp.rule
    one = simulate(mlp(10, 64, "linear", sigma_w2=1.2), 50, 3, engine="matrix-free")
    assert "c" not in compare(_linear_theory(10, 1.2), one).fields


def test_single_sample_is_inconclusive():
    sim = simulate(mlp(4, 16, "linear"), 1, 0, engine="matrix-free")
    assert compare(_linear_theory(4, 1.0), sim).verdict == "inconclusive"


def test_bad_input(linear_sim):
    th = _linear_theory(10, 1.2, c0=0.4)
    with pytest.raises(ValueError, match="layers"):
        compare(_linear_theory(9, 1.2), linear_sim)
    with pytest.raises(ValueError, match="q_se"):
        compare(th, th)
    with pytest.raises(ValueError, match="fields"):
        compare(th, linear_sim, fields=["x"])
    with pytest.raises(TypeError):
        compare(th, {"q": 1})
    bare = Profile(layers=linear_sim.layers, q=linear_sim.q, log_q=linear_sim.log_q,
                   log_g=linear_sim.log_g, log_G=linear_sim.log_G, q_se=linear_sim.q_se,
                   log_g_se=linear_sim.log_g_se, log_G_se=linear_sim.log_G_se)
    with pytest.raises(ValueError, match="widths"):
        compare(th, bare)
    assert compare(th, bare, widths=[64] * 11).verdict == "agree"
    with pytest.raises(ValueError, match="sigmas"):
        compare(th, linear_sim, sigmas=0)
    with pytest.raises(ValueError, match="c"):
        compare(_linear_theory(10, 1.2), linear_sim, fields=["c"])


def test_beta_and_the_a_priori_criterion():
    assert beta([10, 100, 100, 50]) == pytest.approx(0.04)
    assert expected_to_agree([256] * 101)             # depth 100, width 256
    assert not expected_to_agree([64] * 101)          # depth 100, width 64


def test_plot_comparison(linear_sim, tmp_path):
    from signalprop.plot import plot_comparison, save
    comp = compare(_linear_theory(10, 1.2, c0=0.4), linear_sim)
    fig = plot_comparison(comp, title="linear")
    axes = [a for a in fig.axes if a.get_visible()]
    assert len(axes) == 2
    assert axes[0].get_ylabel() == "$q^l$" and axes[1].get_ylabel() == r"$\log g^l$"
    save(fig, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000
    fig3 = plot_comparison(comp, fields=("q", "log_g", "c"))
    assert len(fig3.axes) == 3
