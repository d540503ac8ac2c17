"""The simulation at the ends of the promised range sigma_w^2 in [1e-3, 1e3] (issue 10, item 5)
and its refusals (items 7, 8): finite log fields at depth 120 on both engines, exact identities
of the power-of-two rescaling, the linearisation of tiny pre-activations, agreement with the
theory, and ValueErrors for activations with non-finite values and for unbounded runs.

Independent routes: exact identities (a positively homogeneous network with sigma_w multiplied
by 2^j, or an input multiplied by 2^j, multiplies every q_hat^l by an exact power of two, so its
logs are those of the unscaled run, whose numbers never leave the float range, shifted by known
constants); the tanh network at tiny q against the linear network with the same weights
(tanh(h) = h (1 + O(h^2))); mean-field theory (:func:`signalprop.predict`) with the CONVENTIONS.md
agreement rule of :func:`signalprop.compare`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import signalprop as sp
from signalprop.architectures import resnet

ENGINES = ("dense", "matrix-free")
FIELDS = ("log_q", "c", "log_g", "log_G", "c_se", "log_g_se", "log_G_se")
LOG_MAX = math.log(np.finfo(float).max)


def _quiet(fn, *args, **kw):
    """Run ``fn`` with every warning turned into an error (none may leak)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kw)


# ---------------------------------------------------------------------------------------------
# finite over the whole range


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("act", ["relu", "tanh", "linear", "gelu"])
def test_finite_for_sigma_w2_from_1e_3_to_1e3(engine, act):
    """Depth 120, width 32, c0 = 0.5 (the issue's case): every log field, c and every standard
    error finite; q = exp(log_q) (inf exactly where log_q exceeds the float range, as in the
    theory profile, whose q is exp(log_q) too). At depth/width = 3.75 the means are far from
    mean-field theory (log-normal fluctuations); agreement is tested at width 1024 below."""
    for s2 in (1e-3, 1e-1, 1e1, 1e3):
        net = sp.mlp(120, 32, act, sigma_w2=s2)
        p = _quiet(sp.simulate, net, 4, 0, engine=engine, c0=0.5)
        for f in FIELDS:
            assert np.all(np.isfinite(getattr(p, f))), (s2, f)
        with np.errstate(over="ignore", under="ignore"):
            np.testing.assert_allclose(p.q, np.exp(p.log_q), rtol=1e-12)
        assert np.array_equal(np.isinf(p.q), p.log_q > LOG_MAX)
        assert np.all(np.isfinite(p.q_se[np.isfinite(p.q)]))


# ---------------------------------------------------------------------------------------------
# exact identities of the rescaling


@pytest.mark.parametrize("engine,weights", [("dense", "gaussian"), ("matrix-free", "gaussian"),
                                            ("matrix-free", "orthogonal")])
@pytest.mark.parametrize("act", ["relu", "linear"])
def test_power_of_two_sigma_w(engine, weights, act):
    """relu/linear without bias: sigma_w^2 = 4^j multiplies W by exactly 2^j (the samplers draw the
    same standard normals and apply sigma_w to products), so per sample h^l -> 2^(j l) h^l and
    delta^l -> 2^(j (L - l)) delta^l exactly. With j = +-5 (sigma_w^2 = 1024 and 1/1024) q^l
    reaches 2^(+-1200): the log fields must be those of sigma_w^2 = 1 shifted by j l log 4
    (log_q), j (L - l) log 4 (log_g), j (L - 1) log 4 (log_G), and c must be bit for bit the
    same. Tolerance 1e-9 absolute: the logs (of size <= 1700) are rounded to ~1e-16 relative."""
    L, N = 120, 32
    layers = np.arange(1, L + 1)
    ref = sp.simulate(sp.mlp(L, N, act, sigma_w2=1.0, weights=weights), 3, 5, engine=engine,
                      c0=0.5, return_samples=True)
    for j in (-5, 5):
        net = sp.mlp(L, N, act, sigma_w2=4.0 ** j, weights=weights)
        p = _quiet(sp.simulate, net, 3, 5, engine=engine, c0=0.5, return_samples=True)
        np.testing.assert_array_equal(p.samples["c"], ref.samples["c"])
        np.testing.assert_array_equal(p.c, ref.c)
        np.testing.assert_allclose(p.log_q - ref.log_q, j * layers * math.log(4.0), rtol=0,
                                   atol=1e-9)
        np.testing.assert_allclose(p.samples["log_g"] - ref.samples["log_g"],
                                   np.broadcast_to(j * (L - layers) * math.log(4.0), (3, L)),
                                   rtol=0, atol=1e-9)
        np.testing.assert_allclose(p.log_G - ref.log_G, j * (L - 1) * math.log(4.0), rtol=0,
                                   atol=1e-9)
        np.testing.assert_allclose(p.log_g_se, ref.log_g_se, rtol=1e-9)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["resnet", "layernorm", "batchnorm"])
def test_power_of_two_input(engine, kind):
    """Input q0 = 4^j q0' with j = +-500 (inputs of size 2^+-500, first layer's input rescaled):
    for networks that are positively homogeneous in their input (relu and linear layers without
    bias, residual sums) every h^l scales by exactly 2^j and the gradients do not change; a
    normalisation layer's output does not depend on the scale, so after it nothing changes and
    the gradient entering it scales by 2^-j. Identities with the q0 = 1 run, 1e-9 absolute on
    the logs (rounding), c bit for bit."""
    L, N = 12, 16
    if kind == "resnet":
        net = resnet(L, N, "relu", sigma_w2=1.0)             # x + V relu(W x), no bias
    elif kind == "layernorm":
        net = sp.mlp(L, N, "relu", sigma_w2=2.0, norm="layer")   # Dense, LN, Dense, LN, ...
    else:
        net = sp.mlp(L, N, "relu", sigma_w2=2.0, norm="batch", batch_size=5)
    c0 = None if kind == "batchnorm" else 0.5
    ref = sp.simulate(net, 3, 2, engine=engine, c0=c0, return_samples=True)
    for j in (-500, 500):
        p = _quiet(sp.simulate, net, 3, 2, engine=engine, q0=4.0 ** j, c0=c0, return_samples=True)
        s = j * math.log(4.0)
        shift_q = np.full(net.depth, s)           # log q^l
        shift_x = np.full(net.depth, s)           # log E[(x^{l-1})^2], the input of layer l
        shift_g = np.zeros(net.depth)             # log g^l
        if kind == "layernorm":                   # Dense (scaled), LN (output unscaled), ...
            shift_q[1:] = 0.0
            shift_x[2:] = 0.0
            shift_g[0] = -s                       # LN's Jacobian carries 1/scale
        elif kind == "batchnorm":                 # phi(BN(W x)): h^1 scaled, its output not
            shift_q[1:] = 0.0
            shift_x[1:] = 0.0
            shift_g[0] = -s
        np.testing.assert_allclose(p.log_q - ref.log_q, shift_q, rtol=0, atol=1e-9)
        np.testing.assert_allclose(p.samples["log_g"] - ref.samples["log_g"],
                                   np.broadcast_to(shift_g, p.samples["log_g"].shape),
                                   rtol=0, atol=1e-9)
        # G^l = g^l E[(x^{l-1})^2]
        np.testing.assert_allclose(p.log_G - ref.log_G, shift_g + shift_x, rtol=0, atol=1e-9)
        if c0 is not None:
            np.testing.assert_array_equal(p.c, ref.c)


@pytest.mark.parametrize("engine", ENGINES)
def test_stream_and_normalised_branch_at_different_scales(engine):
    """Pre-LN residual network with input q0 = 2^1000: the stream is ~2^500 per unit, the branch
    F(x) = V relu(W LN(x) + b) + a is O(1) (its input is normalised), so x^l = x^{l-1} + F is
    x^{l-1} to float precision: q^l = q0 and c^l = c0 at every layer; the gradient through the
    skip is the identity and through the branch carries 1/||x|| ~ 2^-500, so delta^l = v and
    log_g^l = log_g^L (= log of the mean of ||v||^2 / N) at every layer. (Adding
    the branch at the stream's exponent without rescaling it would change q by O(1) per block.)"""
    net = resnet(30, 16, "relu", sigma_w2=2.0, sigma_b2=0.1, norm="layer")
    q0 = 2.0 ** 1000
    p = _quiet(sp.simulate, net, 3, 1, engine=engine, q0=q0, c0=0.5)
    np.testing.assert_allclose(p.log_q, math.log(q0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(p.c, 0.5, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p.log_g, p.log_g[-1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_tiny_preactivations_of_tanh_follow_the_linear_network(engine):
    """tanh at sigma_w^2 = 4^-5, depth 240: q^l ~ 1e-3^l, and from layer ~198 on the real
    pre-activations (~2^-987) would be subnormal: tanh is then applied as its linearisation
    phi'(0) h = h. With the same seed the linear network draws the same weights, and
    tanh(h) = h (1 - h^2/3 + ...) changes ||x||^2 by a relative <= (2/3) max h^2 <~ 2/3 * 1e-3 * 10
    (largest of 32 Gaussians with q = 1e-3) at layer 2 and by ~q^l after: per sample the log
    fields of the two networks differ by < 2e-2 at every layer, across the switch to the
    linearisation too (a wrong exponent there would shift log_q by ~1366)."""
    L = 240
    kw = dict(engine=engine, c0=0.5, return_samples=True)
    pt = _quiet(sp.simulate, sp.mlp(L, 32, "tanh", sigma_w2=4.0 ** -5), 2, 9, **kw)
    pl = _quiet(sp.simulate, sp.mlp(L, 32, "linear", sigma_w2=4.0 ** -5), 2, 9, **kw)
    assert pt.log_q[-1] < -1600 and np.all(np.isfinite(pt.log_q))
    np.testing.assert_allclose(pt.log_q, pl.log_q, rtol=0, atol=2e-2)
    np.testing.assert_allclose(pt.samples["log_g"], pl.samples["log_g"], rtol=0, atol=2e-2)
    np.testing.assert_allclose(pt.samples["log_G"], pl.samples["log_G"], rtol=0, atol=2e-2)
    np.testing.assert_allclose(pt.samples["c"], pl.samples["c"], rtol=0, atol=2e-2)


@pytest.mark.parametrize("engine", ENGINES)
def test_same_numbers_whatever_the_chunking_at_the_extremes(engine):
    """Rescaling is decided sample by sample, so chunks of 1, 2 or 3 samples (with checkpoint
    replay), 2 worker processes and one chunk of 5 give the same numbers bit for bit, also where
    every sample is rescaled at every few layers. (Chunks of 1 used to differ in the last bit
    at sigma_w^2 = 1e3: the broadcast input kept the sample axis innermost in memory.)"""
    nets = [sp.mlp(120, 16, "relu", sigma_w2=1e3),
            resnet(30, 16, "gelu", sigma_w2=1e3, sigma_b2=0.1, norm="layer")]
    for net in nets:
        ref = _quiet(sp.simulate, net, 5, 3, engine=engine, c0=0.5, return_samples=True)
        for kw in (dict(chunk=1), dict(chunk=2), dict(chunk=3, max_memory=1 << 20),
                   dict(workers=2)):
            p = sp.simulate(net, 5, 3, engine=engine, c0=0.5, return_samples=True, **kw)
            for k in ref.samples:
                np.testing.assert_array_equal(p.samples[k], ref.samples[k], err_msg=str(kw))


# ---------------------------------------------------------------------------------------------
# theory


@pytest.mark.parametrize("act,s2", [("relu", 1e3), ("gelu", 1e3), ("tanh", 1e-3), ("gelu", 1e-3),
                                    ("gelu", 1e-1), ("tanh", 1e1)])
def test_agrees_with_theory_at_the_ends_of_the_range(act, s2):
    """Matrix-free, width 1024, depth 120 (beta = 0.12 < 0.5: expected to agree), 24 samples:
    c, log_g and log_G by :func:`signalprop.compare` (4 standard errors + 2 beta); log_q by the
    same rule for q in relative terms, |log_q - log_q_theory| <= 4 q_se/q + 2 beta_fwd(l), at
    the layers where q_hat is a normal float (so that q_se/q is)."""
    L, N = 120, 1024
    net = sp.mlp(L, N, act, sigma_w2=s2)
    th = sp.predict(net, c0=0.5)
    mc = _quiet(sp.simulate, net, 24, 3, engine="matrix-free", c0=0.5)
    cmp = sp.compare(th, mc, fields=("c", "log_g", "log_G"))
    assert cmp.agrees, cmp
    normal = (mc.q > 1e-300) & (mc.q < 1e300)
    assert normal.sum() >= 20
    bfwd = np.arange(1, L + 1) / N
    excess = np.abs(mc.log_q - th.log_q) - 2.0 * bfwd
    with np.errstate(invalid="ignore", divide="ignore"):
        rel_se = mc.q_se / mc.q
    assert np.all(excess[normal] <= 4.0 * rel_se[normal])


# ---------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize("engine", ENGINES)
def test_activation_with_non_finite_values_is_refused(engine):
    """A callable that returns nan beyond |x| > 100 (reached at layer 2 or 3 with
    sigma_w^2 = 1e3), and one whose derivative is inf there: ValueError naming the activation
    and the layer, not a profile of nan."""
    def phi(v):
        v = np.asarray(v, float)
        return np.where(np.abs(v) > 100, np.nan, v)

    def dphi(v):
        v = np.asarray(v, float)
        return np.where(np.abs(v) > 100, np.inf, 1.0)

    bad_phi = sp.activation(phi, dphi=lambda v: np.ones(np.shape(v)))
    with pytest.raises(ValueError, match=r"layer \d+ of 6.*activation.*phi\(.*nan"):
        _quiet(sp.simulate, sp.mlp(6, 16, bad_phi, sigma_w2=1e3), 2, 0, engine=engine)
    bad_dphi = sp.activation(lambda v: np.asarray(v, float), dphi=dphi)
    with pytest.raises(ValueError, match=r"layer \d+ of 6.*activation.*phi'\(.*inf"):
        _quiet(sp.simulate, sp.mlp(6, 16, bad_dphi, sigma_w2=1e3), 2, 0, engine=engine)


def test_pre_activations_beyond_the_float_range_are_refused():
    """phi(x) = x log(1 + |x|) grows faster than linearly: once its real pre-activations pass
    the float range (q^l ~ 1e3^l log^2 q: within 120 layers) it cannot be applied, and a
    ValueError names the layer and the activation (not a profile of nan or inf)."""
    act = sp.activation(lambda v: np.asarray(v, float) * np.log1p(np.abs(v)),
                        dphi=lambda v: np.log1p(np.abs(v)) + np.abs(v) / (1.0 + np.abs(v)))
    net = sp.mlp(120, 64, act, sigma_w2=1e3)
    with pytest.raises(ValueError, match=r"layer \d+ of 120 .*float64 range.*grow linearly"):
        _quiet(sp.simulate, net, 1, 0, engine="matrix-free")


@pytest.mark.parametrize("act", ["gelu", "silu"])
def test_huge_preactivations_follow_the_asymptote(act):
    """gelu and silu at sigma_w^2 = 1e3 grow like relu: they differ from it by at most 0.17
    (0.28) and by less than 1e-10 beyond |x| = 6.5 (25), and beyond layer ~228 their real
    pre-activations exceed the float range, where the simulation applies the asymptote. With
    the same weights (same seed) the relu network differs only through the units with small
    |h|: a fraction ~0.3 at layer 1 (q = 1e3), below 6.5/sqrt(q^2) ~ 1% from layer 2 on
    (q^2 ~ 5e5), each changing phi' by < 0.5. Per sample, from layer 2 on, the log fields and c
    agree to 2e-2 across the switch to the asymptote; log_q (a mean over units and samples)
    to 1e-3 at every layer. (Layer 1's log_g and log_G carry the 30% and are not compared.)"""
    kw = dict(engine="matrix-free", c0=0.5, return_samples=True)
    pa = _quiet(sp.simulate, sp.mlp(260, 64, act, sigma_w2=1e3), 2, 4, **kw)
    pr = _quiet(sp.simulate, sp.mlp(260, 64, "relu", sigma_w2=1e3), 2, 4, **kw)
    assert pa.log_q[-1] > 1500 and np.all(np.isinf(pa.q[-30:]))
    for f in ("log_g", "log_G", "c"):
        np.testing.assert_allclose(pa.samples[f][:, 1:], pr.samples[f][:, 1:], rtol=0, atol=2e-2)
    np.testing.assert_allclose(pa.log_q, pr.log_q, rtol=0, atol=1e-3)


def test_runs_that_cannot_fit_in_memory_are_refused_up_front():
    """simulate(net, 10**9, 0) keeps ~40 bytes per sample and layer: refused at once, saying how
    much it needs; so is a dense layer whose weight matrix alone exceeds the limit."""
    with pytest.raises(ValueError, match=r"samples=1000000000.*would need [\d.]+ GiB"):
        sp.simulate(sp.mlp(10, 100, "tanh"), 10 ** 9, 0)
    with pytest.raises(ValueError, match=r"samples=1 .*would need [\d.]+ (GiB|TiB)"):
        sp.simulate(sp.mlp(2, 300_000, "relu"), 1, 0)
