"""Monte Carlo engines: exact finite-width identities, dense vs matrix-free two-sample tests,
reproducibility, bad input, Jacobian singular values.

Every statistical test uses a fixed seed and a tolerance of 4.5 standard errors (or a two-sample
p-value threshold with a Bonferroni margin) and comes with a check that it detects a wrong law.
"""

import math

import numpy as np
import pytest
from scipy import stats

from signalprop.architectures import mlp
from signalprop.simulate import _Job, network_inputs, root_seed, simulate
from signalprop.jacobian import _layers, jacobian, jacobian_singular_values

Z = 4.5


def _z(mean, se, target):
    return abs(mean - target) / se


# ---------------------------------------------------------------------------------------------
# profile structure


def test_profile_fields_one_and_two_inputs():
    net = mlp(5, [12, 20, 9, 15, 11, 14], "tanh", sigma_w2=1.4, sigma_b2=0.1)
    for engine in ("dense", "matrix-free"):
        p = simulate(net, 7, 0, engine=engine)
        assert p.c is None and p.c_se is None and p.samples is None
        np.testing.assert_array_equal(p.layers, np.arange(1, 6))
        for f in ("q", "log_q", "log_g", "log_G", "q_se", "log_g_se", "log_G_se"):
            v = getattr(p, f)
            assert v.shape == (5,) and np.all(np.isfinite(v))
        assert np.all(p.q_se > 0)
        np.testing.assert_allclose(p.log_q, np.log(p.q))
        assert p.meta["widths"] == [12, 20, 9, 15, 11, 14] and p.meta["engine"] == engine
        p2 = simulate(net, 7, 0, engine=engine, c0=0.3, return_samples=True)
        assert p2.c.shape == (5,) and np.all(np.abs(p2.c) <= 1)
        assert set(p2.samples) == {"q", "c", "log_g", "log_G"}
        assert all(v.shape == (7, 5) for v in p2.samples.values())
        # the reported means are the means of the per-sample values
        np.testing.assert_allclose(p2.q, p2.samples["q"].mean(0))
        np.testing.assert_allclose(p2.log_g, np.log(np.exp(p2.samples["log_g"]).mean(0)))
        # log_G = log mean(g_hat * ||x^{l-1}||^2 / N_{l-1}); at layer 1 the input has q0 = 1
        np.testing.assert_allclose(p2.samples["log_G"][:, 0], p2.samples["log_g"][:, 0])
        assert p2.to_json()


def test_inputs_have_the_requested_norm_and_correlation():
    for n0, c0 in ((2, 0.0), (7, 0.3), (10, -0.8), (5, 1.0), (4, -1.0)):
        X = network_inputs(n0, 2.5, c0)
        np.testing.assert_allclose((X ** 2).sum(1) / n0, [2.5, 2.5])
        np.testing.assert_allclose(X[0] @ X[1] / (n0 * 2.5), c0, atol=1e-14)
    with pytest.raises(ValueError, match="input width"):
        network_inputs(1, 1.0, 0.5)


def test_single_sample_has_nan_standard_errors():
    p = simulate(mlp(3, 8, "relu", init="he"), 1, 0, engine="matrix-free")
    assert np.all(np.isnan(p.q_se)) and np.all(np.isfinite(p.q))


# ---------------------------------------------------------------------------------------------
# exact finite-width identities


@pytest.mark.parametrize("engine,samples", [("dense", 4000), ("matrix-free", 8000)])
def test_linear_network_norm_moments(engine, samples):
    """Linear net, W_ij ~ N(0, 1/N): ||J u||^2 / ||u||^2 = prod_l ||W^l y||^2 / ||y||^2 is a
    product of L independent chi^2_N / N factors, so its mean is 1 and its second moment
    (1 + 2/N)^L; each factor has mean 1 and second moment 1 + 2/N."""
    N, L = 8, 3
    p = simulate(mlp(L, N, "linear", sigma_w2=1.0), samples, 11, engine=engine,
                 return_samples=True)
    q = p.samples["q"]
    r = q[:, -1]                          # ||J x^0||^2 / ||x^0||^2 (q0 = 1)
    assert _z(r.mean(), r.std(ddof=1) / math.sqrt(samples), 1.0) < Z
    r2 = r ** 2
    assert _z(r2.mean(), r2.std(ddof=1) / math.sqrt(samples), (1 + 2 / N) ** L) < Z
    # the per-layer factors (independent, light-tailed): here the test has power
    f = np.concatenate([q[:, :1], q[:, 1:] / q[:, :-1]], axis=1).ravel()
    f2 = f ** 2
    se = f2.std(ddof=1) / math.sqrt(f2.size)
    assert _z(f.mean(), f.std(ddof=1) / math.sqrt(f.size), 1.0) < Z
    assert _z(f2.mean(), se, 1 + 2 / N) < Z
    assert _z(f2.mean(), se, 1 + 3 / N) > Z


def test_linear_jacobian_identity():
    """E||J u||^2 = ||u||^2 and E||J u||^4 / ||u||^4 = (1 + 2/N)^L, with J from jacobian()."""
    N, L, S = 12, 3, 2500
    J = jacobian(mlp(L, N, "linear", sigma_w2=1.0), S, 5)
    u = np.random.default_rng(0).standard_normal(N)
    r = np.sum((J @ u) ** 2, axis=1) / (u @ u)
    assert _z(r.mean(), r.std(ddof=1) / math.sqrt(S), 1.0) < Z
    assert _z((r ** 2).mean(), (r ** 2).std(ddof=1) / math.sqrt(S), (1 + 2 / N) ** L) < Z


@pytest.mark.parametrize("engine", ["dense", "matrix-free"])
def test_relu_he_forward_norm_ratio(engine):
    """ReLU, He init, no bias: M_l = ||x^l||^2 / N. The ratio M_l / M_{l-1} (l >= 2) has mean 1
    and second moment 1 + 5/N, independently of the layer (Hanin & Rolnick 2018, NeurIPS, the
    exact recursion M_l = (2/N) M_{l-1} chi^2_K, K ~ Bin(N, 1/2), behind their Theorem 1)."""
    N, L, S = 32, 6, 3000 if engine == "dense" else 5000
    p = simulate(mlp(L, N, "relu", init="he"), S, 21, engine=engine, return_samples=True)
    log_m = p.samples["log_G"] - p.samples["log_g"]     # log ||x^{l-1}||^2 / N_{l-1}
    r = np.exp(np.diff(log_m[:, 1:], axis=1)).ravel()    # M_l / M_{l-1}, l = 2..L-1
    assert np.all(np.isfinite(r))
    n = r.size
    assert _z(r.mean(), r.std(ddof=1) / math.sqrt(n), 1.0) < Z
    se2 = (r ** 2).std(ddof=1) / math.sqrt(n)
    assert _z((r ** 2).mean(), se2, 1 + 5 / N) < Z
    assert _z((r ** 2).mean(), se2, 1 + 2 / N) > Z   # a Gaussian-like 2/N would be rejected


# ---------------------------------------------------------------------------------------------
# dense vs matrix-free: the same law

_CONFIGS = [
    # (activation, widths, depth, sigma_w2, sigma_b2, weights, c0)
    ("tanh", 24, 6, 1.6, 0.1, "gaussian", 0.4),
    ("relu", 20, 5, 2.0, 0.0, "orthogonal", None),
    ("erf", [12, 20, 8, 16, 10], 4, 1.8, 0.05, "orthogonal", 0.6),
    ("gelu", [10, 30, 15, 25], 3, 2.2, 0.02, "gaussian", None),
]


def _two_sample(a, b):
    """Smallest KS p-value and largest |z| of means over the per-layer columns of a and b."""
    pmin, zmax = 1.0, 0.0
    for j in range(a.shape[1]):
        x, y = a[:, j], b[:, j]
        x, y = x[np.isfinite(x)], y[np.isfinite(y)]
        scale = max(abs(x.mean()), abs(y.mean()), 1e-300)
        if x.std() < 1e-12 * scale and y.std() < 1e-12 * scale:
            # a deterministic statistic (e.g. q^1 of an orthogonal layer without bias): the two
            # engines must give the same constant up to rounding
            assert abs(x.mean() - y.mean()) < 1e-12 * scale
            continue
        pmin = min(pmin, stats.ks_2samp(x, y).pvalue)
        se = math.sqrt(x.var(ddof=1) / x.size + y.var(ddof=1) / y.size)
        zmax = max(zmax, abs(x.mean() - y.mean()) / se)
        # second moments about the pooled mean
        mu = np.concatenate([x, y]).mean()
        x2, y2 = (x - mu) ** 2, (y - mu) ** 2
        se2 = math.sqrt(x2.var(ddof=1) / x2.size + y2.var(ddof=1) / y2.size)
        zmax = max(zmax, abs(x2.mean() - y2.mean()) / se2)
    return pmin, zmax


def _samples(cfg, engine, seed, S, scale=1.0):
    act, widths, depth, sw2, sb2, weights, c0 = cfg
    net = mlp(depth, widths, act, sigma_w2=sw2 * scale, sigma_b2=sb2, weights=weights)
    p = simulate(net, S, seed, engine=engine, c0=c0, return_samples=True)
    keys = ["q", "log_g"] + (["c"] if c0 is not None else [])
    return np.concatenate([p.samples[k] for k in keys], axis=1)


@pytest.mark.parametrize("cfg", _CONFIGS, ids=lambda c: f"{c[0]}-{c[5]}")
def test_dense_and_matrix_free_are_indistinguishable(cfg):
    S = 1200
    a = _samples(cfg, "dense", 1, S)
    b = _samples(cfg, "matrix-free", 2, S)
    n_tests = a.shape[1]
    pmin, zmax = _two_sample(a, b)
    assert pmin > 1e-3 / n_tests, f"KS p = {pmin:.2e}"
    assert zmax < Z


def test_two_sample_tests_detect_a_wrong_law():
    """Power check: sigma_w^2 off by 15% in the matrix-free sampler is detected."""
    cfg = _CONFIGS[0]
    a = _samples(cfg, "dense", 1, 1200)
    b = _samples(cfg, "matrix-free", 2, 1200, scale=1.15)
    pmin, zmax = _two_sample(a, b)
    assert pmin < 1e-6 and zmax > 10


def test_matrix_free_gradient_needs_the_conditioning_term():
    """The rank-one term x (a.delta)/||x||^2 is what makes the matrix-free backward pass exact.
    Replacing it by an independent Gaussian product (mean-field's "gradient independence"
    assumption) shifts the mean gradient of a narrow softplus network, whose activations have a
    large mean, by many standard errors; the exact sampler matches the dense engine."""
    from signalprop import sampling
    from signalprop.layers import dense

    net = mlp(8, 8, "softplus", sigma_w2=1.5)
    S = 3000

    class Independent(dense.MatrixFreeGaussian):
        def backward(self, delta, ctx, rng):
            nd = np.sqrt((delta ** 2).sum(1))
            xi = rng.normal((self.n_in,), delta.dtype) * nd[:, None]
            return xi * (self.sigma_w / math.sqrt(self.n_in))

    key = (dense.Dense, "matrix-free")
    old = sampling._REGISTRY[key]
    sampling._REGISTRY[key] = lambda layer, n: dense.DenseRule(Independent(layer, n),
                                                                 layer.activation)
    try:
        wrong = simulate(net, S, 4, engine="matrix-free")
    finally:
        sampling._REGISTRY[key] = old
    right = simulate(net, S, 4, engine="matrix-free")
    dense = simulate(net, S, 3, engine="dense")

    def z(a, b):
        return np.abs(a.log_g - b.log_g) / np.hypot(a.log_g_se, b.log_g_se)

    assert np.all(z(right, dense) < Z)
    assert np.max(z(wrong, dense)) > 6


# ---------------------------------------------------------------------------------------------
# reproducibility


@pytest.mark.parametrize("engine", ["dense", "matrix-free"])
def test_same_seed_same_numbers_whatever_the_chunking(engine):
    net = mlp(6, [20, 24, 16, 20, 28, 20, 12], "tanh", sigma_w2=1.5, sigma_b2=0.1,
              weights="orthogonal" if engine == "matrix-free" else "gaussian")
    ref = simulate(net, 11, 7, engine=engine, c0=0.3, return_samples=True)
    for kw in ({"chunk": 1}, {"chunk": 4}, {"chunk": 4, "workers": 2}):
        other = simulate(net, 11, 7, engine=engine, c0=0.3, return_samples=True, **kw)
        for k in ref.samples:
            np.testing.assert_array_equal(ref.samples[k], other.samples[k])
    # a prefix of the samples is the same networks
    few = simulate(net, 5, 7, engine=engine, c0=0.3, return_samples=True)
    np.testing.assert_array_equal(few.samples["log_g"], ref.samples["log_g"][:5])
    diff = simulate(net, 11, 8, engine=engine, c0=0.3, return_samples=True)
    assert not np.array_equal(diff.samples["q"], ref.samples["q"])


def test_checkpoint_replay_gives_the_same_numbers():
    """With a memory budget below the chunk's per-layer state, the backward pass replays the
    forward pass from checkpoints; the numbers must not change."""
    net = mlp(12, 128, "tanh", sigma_w2=1.5, sigma_b2=0.05)
    job = _Job(net, "dense", network_inputs(128), np.dtype(np.float64), root_seed(0), 1 << 20)
    assert job.segment_length(1) < net.depth          # replay really happens
    a = simulate(net, 3, 9, engine="dense", return_samples=True)
    b = simulate(net, 3, 9, engine="dense", return_samples=True, max_memory=1 << 20)
    for k in a.samples:
        np.testing.assert_array_equal(a.samples[k], b.samples[k])


def test_seed_kinds():
    net = mlp(3, 10, "erf", sigma_w2=1.2)
    a = simulate(net, 4, 5, engine="matrix-free").q
    b = simulate(net, 4, np.random.SeedSequence(5), engine="matrix-free").q
    np.testing.assert_array_equal(a, b)
    g = np.random.default_rng(1)
    c = simulate(net, 4, g, engine="matrix-free").q
    d = simulate(net, 4, g, engine="matrix-free").q      # the generator advanced
    assert not np.array_equal(c, d)
    e = simulate(net, 4, np.int64(5), engine="matrix-free").q
    np.testing.assert_array_equal(a, e)


# ---------------------------------------------------------------------------------------------
# dtype, depth, width


def test_float32_runs_and_agrees_with_float64():
    net = mlp(8, 64, "tanh", sigma_w2=1.5, sigma_b2=0.05)
    for engine in ("dense", "matrix-free"):
        p64 = simulate(net, 200, 3, engine=engine)
        p32 = simulate(net, 200, 3, engine=engine, dtype="float32")
        assert p32.meta["dtype"] == "float32" and np.all(np.isfinite(p32.q))
        se = np.hypot(p64.q_se, p32.q_se)
        assert np.all(np.abs(p64.q - p32.q) < Z * se)


def test_deep_network_log_fields_do_not_underflow():
    """Ordered tanh, depth 3000: g^1 ~ 0.3^3000 and q^3000 ~ 0.5^3000 underflow float64; log_g
    and log_q do not (issue 10, item 5: q_hat used to underflow to 0, log_q = -inf, from layer
    ~1900 on). log_g grows towards the output by log(1/(sigma_w^2 E phi'^2)) ~ 0.7 per layer,
    with per-layer noise: a single layer's ratio 0.5 chi2_32/32 exceeds 1 with probability
    ~3e-4, so over 3000 layers some steps go the wrong way (the unscaled engine failed a
    layer-by-layer check for 4 of the seeds 1..8); over 25 layers the increase is ~17 with a
    standard deviation ~1.3, so it is checked over windows of 25 layers."""
    net = mlp(3000, 32, "tanh", sigma_w2=0.5)
    p = simulate(net, 3, 1, engine="matrix-free")
    assert np.all(np.isfinite(p.log_g)) and p.log_g[0] < -1000
    assert np.all(np.isfinite(p.log_q)) and p.log_q[-1] < -1500
    assert np.all(np.diff(p.log_g[::25]) > 0)


def test_very_wide_matrix_free_layer():
    net = mlp(3, 100_000, "relu", init="he")
    p = simulate(net, 2, 0, engine="matrix-free")
    np.testing.assert_allclose(p.q, 2.0, rtol=0.05)


# ---------------------------------------------------------------------------------------------
# bad input


def test_bad_input_is_rejected_with_the_parameter_name():
    net = mlp(2, 8, "tanh")
    with pytest.raises(ValueError, match="samples"):
        simulate(net, 0, 1)
    with pytest.raises(TypeError, match="samples"):
        simulate(net, 2.5, 1)
    with pytest.raises(TypeError, match="seed"):
        simulate(net, 2, "abc")
    with pytest.raises(TypeError, match="seed"):
        simulate(net, 2, 1.0)
    with pytest.raises(TypeError, match="seed"):
        simulate(net, 2, True)
    with pytest.raises(ValueError, match="seed"):
        simulate(net, 2, -3)
    with pytest.raises(ValueError, match="engine"):
        simulate(net, 2, 1, engine="sparse")
    with pytest.raises(ValueError, match="engine='matrix-free'.*uniform"):
        simulate(mlp(2, 8, "tanh", weights="uniform"), 2, 1, engine="matrix-free")
    with pytest.raises(ValueError, match="c0"):
        simulate(net, 2, 1, c0=1.5)
    with pytest.raises(ValueError, match="q0"):
        simulate(net, 2, 1, q0=0.0)
    with pytest.raises(ValueError, match="dtype"):
        simulate(net, 2, 1, dtype="int8")
    with pytest.raises(ValueError, match="workers"):
        simulate(net, 2, 1, workers=0)
    with pytest.raises(TypeError, match="network"):
        simulate("tanh", 2, 1)
    with pytest.raises(ValueError, match="engine='matrix-free' cannot produce the full Jacobian"):
        jacobian_singular_values(net, 2, 1, engine="matrix-free")
    with pytest.raises(ValueError, match="engine='matrix-free'"):
        jacobian(net, 2, 1, engine="matrix-free")
    with pytest.raises(ValueError, match="wrt"):
        jacobian(net, 2, 1, wrt="middle")
    with pytest.raises(ValueError, match="samples"):
        jacobian(net, 0, 1)


# ---------------------------------------------------------------------------------------------
# Jacobians


def test_jacobian_uses_the_simulated_networks():
    """A linear network: q_hat^L of simulate(engine='dense') equals ||J x^0||^2 / N_L for the
    Jacobians of the same seed."""
    net = mlp(4, [10, 14, 9, 12, 11], "linear", sigma_w2=1.3)
    J = jacobian(net, 5, 3, wrt="pre")
    p = simulate(net, 5, 3, engine="dense", return_samples=True)
    x0 = network_inputs(10)[0]
    np.testing.assert_allclose(np.sum((J @ x0) ** 2, axis=1) / 11, p.samples["q"][:, -1],
                               rtol=1e-12)


@pytest.mark.parametrize("act,weights,widths", [
    ("tanh", "gaussian", 20), ("relu", "gaussian", 20), ("hard_tanh", "orthogonal", 16),
    ("erf", "orthogonal", [12, 18, 9, 15, 12, 14, 10])])
def test_singular_values_match_direct_svd(act, weights, widths):
    net = mlp(6, widths, act, sigma_w2=1.7, sigma_b2=0.05, weights=weights)
    J = jacobian(net, 3, 2)
    sp = jacobian_singular_values(net, 3, 2)
    assert sp.log_singular_values.shape == (3, min(J.shape[1:]))
    for s in range(3):
        sv = np.linalg.svd(J[s], compute_uv=False)
        big = sv > 1e-6 * sv[0]           # where the direct SVD is itself accurate
        np.testing.assert_allclose(sp.singular_values[s][big], sv[big], rtol=1e-8)
        # exact zeros (dead units) are -inf, and only those
        assert np.all(np.isneginf(sp.log_singular_values[s][~big])) or act not in ("relu",)
    np.testing.assert_allclose(sp.squared_singular_values, sp.singular_values ** 2)


def test_orthogonal_linear_singular_values_are_exact():
    L, sw2 = 300, 1.1
    sp = jacobian_singular_values(mlp(L, 10, "linear", sigma_w2=sw2, weights="orthogonal"), 2, 0)
    np.testing.assert_allclose(sp.log_singular_values, 0.5 * L * math.log(sw2), rtol=1e-12)


def test_singular_values_against_high_precision_arithmetic():
    """Depth 150-600: the singular values span up to e^-700 (no float64 SVD can resolve them);
    compare with the SVD of the exact product in 450-digit arithmetic (mpmath)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 450
    for act, N, L, sw2 in (("linear", 5, 200, 1.0), ("tanh", 6, 150, 1.8), ("linear", 4, 600, 1.0)):
        net = mlp(L, N, act, sigma_w2=sw2)
        sp = jacobian_singular_values(net, 1, 5)
        J = mpmath.eye(N)
        for d, W in _layers(net, root_seed(5), 0, 1.0, "post"):
            J = mpmath.matrix((d[:, None] * W).tolist()) * J
        ref = sorted((float(mpmath.log(v)) for v in mpmath.svd_r(J, compute_uv=False)),
                     reverse=True)
        assert ref[-1] < -150
        np.testing.assert_allclose(sp.log_singular_values[0], ref, rtol=0, atol=1e-9)


def test_depth_1000_log_determinant():
    """Square tanh network, depth 1000: sum of log singular values = sum_l log|det D_l W_l|."""
    net = mlp(1000, 8, "tanh", sigma_w2=1.2)
    sp = jacobian_singular_values(net, 1, 4)
    logdet = sum(np.linalg.slogdet(d[:, None] * W)[1]
                 for d, W in _layers(net, root_seed(4), 0, 1.0, "post"))
    assert np.all(np.isfinite(sp.log_singular_values))
    assert abs(sp.log_singular_values.sum() - logdet) < 1e-8 * abs(logdet)


# ---------------------------------------------------------------------------------------------
# command line


def test_cli_simulate_json_equals_api(capsys):
    import json
    from signalprop.cli import main
    argv = ["simulate", "--depth", "4", "--width", "16", "--samples", "10", "--seed", "3",
            "--engine", "matrix-free", "--c0", "0.5", "--sigma-w2", "1.5", "--sigma-b2", "0.1",
            "--weights", "orthogonal"]
    assert main(argv + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    p = simulate(mlp(4, 16, "tanh", sigma_w2=1.5, sigma_b2=0.1, weights="orthogonal"), 10, 3,
                 engine="matrix-free", c0=0.5)
    for k in ("q", "q_se", "c", "c_se", "log_g", "log_g_se", "log_G", "log_G_se"):
        np.testing.assert_array_equal(d[k], getattr(p, k))
    assert d["layers"] == [1, 2, 3, 4] and d["engine"] == "matrix-free"
    assert main(argv + ["--compare"]) == 0
    out = capsys.readouterr().out
    assert "log_g_se" in out and "theory vs simulation: agree" in out


@pytest.mark.parametrize("argv,word", [
    (["--samples", "0"], "samples"), (["--seed", "-1"], "seed"),
    (["--engine", "matrix-free", "--weights", "uniform"], "matrix-free"),
    (["--engine", "sparse"], "engine"), (["--workers", "0"], "workers")])
def test_cli_simulate_bad_input(capsys, argv, word):
    from signalprop.cli import main
    assert main(["simulate", "--depth", "2", "--width", "8"] + argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("signalprop: error: ")
    assert word in err


def test_standard_errors_of_huge_q_do_not_overflow():
    """An exploding network (unscaled relu residual blocks, q^l ~ 3^l) reaches q ~ 1e200: the
    variance of q_hat must not overflow (it did, for q > 1e154)."""
    import warnings
    from signalprop.simulate import _mean_se
    rng = np.random.default_rng(0)
    a = 1e200 * (1.0 + 0.1 * rng.standard_normal((50, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m, se = _mean_se(a)
    b = a / 1e200
    np.testing.assert_allclose(m / 1e200, b.mean(0), rtol=1e-14)
    np.testing.assert_allclose(se / 1e200, b.std(0, ddof=1) / math.sqrt(50), rtol=1e-12)
