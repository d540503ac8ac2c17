"""compare(): the agreement rule, verdicts, errors; the comparison plot."""

import json
import math

import numpy as np
import pytest

from signalprop.compare import Comparison, beta, compare, expected_to_agree
from signalprop.architectures import mlp
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


@pytest.mark.parametrize("widths", [[0] * 11, [-64] * 11, [64.5] * 11, [math.nan] * 11,
                                    [math.inf] * 11, [10 ** 30] * 11, [True] * 11])
def test_widths_must_be_positive_integers(linear_sim, widths):
    """Issue 10: widths = [0]*(L+1) gave beta = inf and the verdict "agree"."""
    with pytest.raises((ValueError, TypeError), match="widths"):
        compare(_linear_theory(10, 1.2, c0=0.4), linear_sim, widths=widths)


@pytest.mark.parametrize("kw,word", [({"sigmas": math.inf}, "sigmas"), ({"sigmas": "4"}, "sigmas"),
                                     ({"kappa": math.nan}, "kappa"), ({"kappa": [1, 2]}, "kappa"),
                                     ({"fields": "q_star"}, "fields"), ({"fields": []}, "fields"),
                                     ({"allowance": {"q": -1.0}}, "allowance"),
                                     ({"allowance": {"q": [0.1] * 3}}, "allowance"),
                                     ({"allowance": {"zz": 0.1}}, "allowance"),
                                     ({"allowance": [0.1]}, "allowance")])
def test_scalars_fields_and_allowance_checked(linear_sim, kw, word):
    with pytest.raises((ValueError, TypeError), match=word):
        compare(_linear_theory(10, 1.2, c0=0.4), linear_sim, **kw)


def test_one_field_by_name_and_short_summary(linear_sim):
    comp = compare(_linear_theory(10, 1.2, c0=0.4), linear_sim, fields="log_g")
    assert comp.fields == ("log_g",)
    text = repr(comp)
    # a summary: the verdict, the worst |z| of the field with its layer, the rule; no arrays
    i = int(np.argmax(np.abs(comp.z["log_g"])))
    assert text.startswith("Comparison(verdict='agree'")
    assert f"log_g: max |z| {abs(comp.z['log_g'][i]):.3g} at layer {i + 1}" in text
    assert comp.rule in text and "array" not in text and len(text) < 800
    assert str(comp) == text
    json.loads(comp.to_json())                                       # to_dict/to_json unchanged


# ---------------------------------------------------------------------------------------------
# q beyond the float range: compared as log q (issue 10)


def _log_profiles(log_q, delta, log_q_se, widths_n=100, with_log_se=True):
    """A theory with the given log q and a simulation whose log q is off by ``delta`` with
    standard error ``log_q_se`` (q = exp(log q) may be 0 or inf: that is the point)."""
    L = len(log_q)
    layers = np.arange(1, L + 1)
    zeros = np.zeros(L)
    with np.errstate(over="ignore", under="ignore"):
        th = Profile(layers=layers, q=np.exp(log_q), log_q=log_q, log_g=zeros, log_G=zeros)
        m_log = log_q + delta
        q = np.exp(m_log)
        sim = Profile(layers=layers, q=q, log_q=m_log, log_g=zeros, log_G=zeros,
                      q_se=q * log_q_se, log_g_se=np.full(L, 0.1), log_G_se=np.full(L, 0.1),
                      meta={"widths": [widths_n] * (L + 1)},
                      log_q_se=log_q_se if with_log_se else None)
    return th, sim


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_log_q_rule_where_q_leaves_the_float_range():
    """log q from -800 to 800 (q = 0 ... inf in float64): the rule runs on log q, z is exactly
    delta / se, and the verdict follows |delta| <= 4 se + kappa beta_l (beta_l = l/100)."""
    L = 9
    log_q = np.linspace(-800.0, 800.0, L)
    se = np.full(L, 0.05)
    th, sim = _log_profiles(log_q, 3.0 * se, se)
    comp = compare(th, sim, fields=["q"], kappa=0.0)
    assert comp.fields == ("log_q",) and comp.verdict == "agree"
    np.testing.assert_allclose(comp.z["log_q"], 3.0, rtol=1e-12)
    assert "q leaves the float64 normal range" in comp.rule
    delta = 3.0 * se
    delta[4] = 5.0 * se[4]                                # one layer 5 se off
    comp = compare(*_log_profiles(log_q, delta, se), fields=["q"], kappa=0.0)
    assert comp.verdict == "disagree" and comp.worst()[:2] == ("log_q", 5)
    # the default allowance is kappa beta_fwd(l) in log units: 2 * 5/100 = 0.1 covers 5 se = 0.25
    # minus 4 se = 0.2 at layer 5 (excess (0.25 - 0.1)/0.05 = 3 <= 4)
    comp = compare(*_log_profiles(log_q, delta, se))
    np.testing.assert_allclose(comp.allowance["log_q"], 2.0 * np.arange(1, L + 1) / 100)
    assert comp.verdict == "agree" and comp.max_excess == pytest.approx(3.0, rel=1e-9)
    # without log_q_se the delta-method q_se / q serves where q is finite and > 0
    comp = compare(*_log_profiles(log_q, 3.0 * se, se, with_log_se=False), fields=["q"])
    normal = np.abs(log_q) < 700                          # exp(+-800) is inf / 0 in float64
    np.testing.assert_allclose(comp.se["log_q"][normal], 0.05, rtol=1e-12)
    assert np.all(np.isnan(comp.se["log_q"][~normal])) and comp.verdict == "agree"
    # an allowance in units of q cannot be used in logs: refused, naming what to give instead
    with pytest.raises(ValueError, match="log_q"):
        compare(th, sim, allowance={"q": 0.1})


def test_q_in_range_keeps_the_rule_in_units_of_q(linear_sim):
    """Where q is a normal float the rule is unchanged; log_q can be asked for explicitly and, for
    the exact linear theory, agrees too (first order: log(m/t) = (m - t)/t, se_log = q_se/q)."""
    th = _linear_theory(10, 1.2, c0=0.4)
    assert compare(th, linear_sim).fields == ("q", "c", "log_g", "log_G")
    both = compare(th, linear_sim, fields=["q", "log_q"])
    assert both.fields == ("q", "log_q") and both.verdict == "agree"
    zq, zl = both.z["q"], both.z["log_q"]
    # z_log = log(m/t) m/se vs z_lin = (m - t)/se: equal to first order in (m - t)/t (< 0.1 here)
    rel = np.abs(linear_sim.q / th.q - 1)
    assert rel.max() < 0.1
    np.testing.assert_allclose(zl, zq, atol=float(np.max(np.abs(zq) * rel)) + 1e-12)


def test_log_q_se_is_the_relative_standard_error():
    """simulate's log_q_se (from per-sample log q_hat) is q_se / q where q is representable; it
    appears in to_dict/JSON of simulations only (theory profiles unchanged)."""
    from signalprop.meanfield import predict
    net = mlp(6, 16, "tanh", sigma_w2=1.5, sigma_b2=0.1)
    sim = simulate(net, 30, 2, engine="matrix-free")
    np.testing.assert_allclose(sim.log_q_se, sim.q_se / sim.q, rtol=1e-12)
    assert "log_q_se" in json.loads(sim.to_json())
    assert "log_q_se" not in predict(net).to_dict()


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("engine", ["dense", "matrix-free"])
@pytest.mark.parametrize("act,sw2", [("gelu", 1e-3), ("relu", 1e3)])
def test_compare_at_extreme_sigma_w2(act, sw2, engine):
    """Issue 10: gelu at sigma_w^2 = 1e-3 (theory q = 5e-324, simulation 0 with se 0: an infinite
    excess) and relu at 1e3 (q = inf; near 1e308 the allowance overflowed) at depth 120: the
    comparison runs without a RuntimeWarning and every z of q is finite."""
    from signalprop.meanfield import predict
    net = mlp(120, 32, act, sigma_w2=sw2)
    th = predict(net, c0=0.5)
    comp = compare(th, simulate(net, 4, 0, engine=engine, c0=0.5))
    assert "log_q" in comp.fields and "q" not in comp.fields
    assert np.all(np.isfinite(comp.z["log_q"])) and comp.skipped["log_q"] == 0
    np.testing.assert_array_equal(comp.theory["log_q"], th.log_q)
    if act == "relu":   # closed form without bias: q^1 = sw2 q0, q^l = (sw2 / 2) q^{l-1}
        layers = np.arange(1, 121)
        np.testing.assert_allclose(th.log_q, math.log(sw2) + (layers - 1) * math.log(sw2 / 2),
                                   rtol=1e-12)
