"""The PyTorch bridge (signalprop.torch): mapping of modules to networks, PyTorch's default
initialisation read correctly, refusals naming the module, measure against predict and against
simulate, and the edge-of-chaos initialisation."""

import math
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason='the torch extra is not installed: '
                                            'pip install "signalprop[torch]"')
nn = torch.nn
F = torch.nn.functional

import signalprop as sp  # noqa: E402
from signalprop.torch import (edge_of_chaos_init, example_inputs, from_module,  # noqa: E402
                              initialise, measure)


def _mlp(n, depth, act=nn.Tanh, bias=True, bn=False):
    layers = []
    for _ in range(depth):
        layers.append(nn.Linear(n, n, bias=bias))
        if bn:
            layers.append(nn.BatchNorm1d(n))
        layers.append(act())
    return nn.Sequential(*layers)


class PreLN(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.ln = nn.LayerNorm(n)
        self.fc1 = nn.Linear(n, n)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(n, n)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.ln(x))))


# ---------------------------------------------------------------------------------------------
# the extra stays optional


def test_import_signalprop_never_imports_torch():
    code = ("import sys, signalprop as sp; sp.predict(sp.mlp(3, 8)); sp.simulate(sp.mlp(3, 8), 2, 0);"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_torch_names_the_extra():
    code = ("import sys; sys.modules['torch'] = None\n"
            "try:\n    import signalprop.torch\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install "signalprop[torch]"' in out.stdout


# ---------------------------------------------------------------------------------------------
# activations: the mapped activation is the same function as torch's


ACTIVATION_MODULES = [
    (nn.ReLU(), "relu", {}), (nn.Tanh(), "tanh", {}), (nn.Sigmoid(), "sigmoid", {}),
    (nn.SiLU(), "silu", {}), (nn.SELU(), "selu", {}), (nn.GELU(), "gelu", {}),
    (nn.GELU(approximate="tanh"), "gelu_tanh", {}), (nn.LeakyReLU(0.2), "leaky_relu", {"slope": 0.2}),
    (nn.ELU(alpha=0.5), "elu", {"alpha": 0.5}), (nn.Softplus(), "softplus", {}),
    (nn.Hardtanh(), "hard_tanh", {}),
]


class Fn(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        return self.f(self.fc(x))


ACTIVATION_CALLS = [
    (F.relu, "relu", {}), (torch.tanh, "tanh", {}), (lambda h: h.sigmoid(), "sigmoid", {}),
    (F.silu, "silu", {}), (torch.selu, "selu", {}),
    (lambda h: F.gelu(h, approximate="tanh"), "gelu_tanh", {}), (F.gelu, "gelu", {}),
    (lambda h: F.leaky_relu(h, 0.3), "leaky_relu", {"slope": 0.3}),
    (lambda h: F.elu(h, alpha=2.0), "elu", {"alpha": 2.0}), (F.softplus, "softplus", {}),
    (F.hardtanh, "hard_tanh", {}),
]

GRID = np.linspace(-8.0, 8.0, 401)


@pytest.mark.parametrize("module, name, params", ACTIVATION_MODULES,
                         ids=[type(m).__name__ + str(i) for i, (m, _, _) in enumerate(ACTIVATION_MODULES)])
def test_activation_modules_map_to_the_same_function(module, name, params):
    net = from_module(nn.Sequential(nn.Linear(6, 6), module))
    act = net.layers[0].activation
    assert act == sp.activation(name, **params)
    with torch.no_grad():
        ref = module(torch.tensor(GRID, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(act.phi(GRID), ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("f, name, params", ACTIVATION_CALLS,
                         ids=[n + str(i) for i, (_, n, _) in enumerate(ACTIVATION_CALLS)])
def test_activation_functions_map_to_the_same_function(f, name, params):
    net = from_module(Fn(f))
    act = net.layers[0].activation
    assert act == sp.activation(name, **params)
    with torch.no_grad():
        ref = f(torch.tensor(GRID, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(act.phi(GRID), ref, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# networks and variances


def test_pytorch_default_linear_init_is_read_correctly():
    """sigma_w^2 = 1/3 (uniform weights) and sigma_b^2 = 1/(3 fan_in), against torch's own
    reset_parameters sampled 40 times: mean squares within 5 standard errors, and the kurtosis of
    a uniform law (9/5; a Gaussian's is 3)."""
    fan_in, fan_out = 300, 200
    net = from_module(nn.Linear(fan_in, fan_out))
    layer = net.layers[0]
    assert (layer.sigma_w2, layer.sigma_b2, layer.weights) == (1 / 3, 1 / (3 * fan_in), "uniform")
    mod = nn.Linear(fan_in, fan_out)
    g = torch.random.fork_rng(devices=[])
    with g:
        torch.manual_seed(7)
        W, b = [], []
        for _ in range(40):
            mod.reset_parameters()
            W.append(mod.weight.detach().double().numpy().ravel())
            b.append(mod.bias.detach().double().numpy())
    W, b = np.concatenate(W), np.concatenate(b)
    for vals, var in ((W, layer.sigma_w2 / fan_in), (b, layer.sigma_b2)):
        a2 = vals * vals
        se = a2.std(ddof=1) / math.sqrt(a2.size)
        assert abs(a2.mean() - var) <= 5 * se
        assert np.max(np.abs(vals)) <= math.sqrt(3 * var) * (1 + 1e-6)   # bound 1/sqrt(fan_in)
        kurt = np.mean(a2 * a2) / np.mean(a2) ** 2
        assert abs(kurt - 1.8) < 0.02                                      # se ~ 0.002


def test_mlp_maps_to_the_mlp_constructor():
    n = 32
    x = example_inputs(n)
    assert from_module(_mlp(n, 5), x) == sp.mlp(5, n, "tanh", sigma_w2=1 / 3, sigma_b2=1 / (3 * n),
                                                 weights="uniform")
    assert from_module(_mlp(n, 3, nn.ReLU, bias=False)) == sp.mlp(3, n, "relu", sigma_w2=1 / 3,
                                                                  weights="uniform")
    bn = from_module(_mlp(n, 4, bn=True), example_inputs(n, c0=0.0, k=8))
    assert bn == sp.mlp(4, n, "tanh", sigma_w2=1 / 3, weights="uniform", norm="batch",
                        batch_size=8)
    res = from_module(nn.Sequential(*[PreLN(n) for _ in range(3)]), x)
    assert res == sp.resnet(3, n, "relu", sigma_w2=1 / 3, sigma_b2=1 / (3 * n), weights="uniform",
                            norm="layer")


def test_norms_scales_and_nesting():
    n = 16

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Sequential(nn.Linear(n, n), nn.Tanh())

        def forward(self, x):
            return (0.8 * x + self.f(x) * 0.6) / 2

    m = nn.Sequential(nn.Sequential(nn.Linear(n, n), nn.RMSNorm(n), nn.GELU()), Scaled(),
                      nn.Dropout(0.0), nn.Identity(), nn.Linear(n, 8), nn.LayerNorm(8))
    net = from_module(m)
    kinds = [type(la).__name__ for la in net.layers]
    assert kinds == ["Dense", "RMSNorm", "Nonlinearity", "Residual", "Dense", "LayerNorm"]
    assert net.layers[0].activation.name == "linear"
    assert net.layers[3].alpha == pytest.approx(0.4) and net.layers[3].beta == pytest.approx(0.3)
    assert net.widths.tolist() == [n, n, n, n, n, 8, 8]


def test_empirical_variances():
    """He-normal weights: fan_in * mean(W^2) within 5 standard errors of 2 (Var(W^2) = 2 var^2
    for a Gaussian), and the law the user names."""
    n = 400
    m = nn.Sequential(nn.Linear(n, n), nn.ReLU(), nn.Linear(n, n, bias=False))
    torch.manual_seed(3)
    nn.init.kaiming_normal_(m[0].weight)
    nn.init.normal_(m[0].bias, 0.0, 0.1)
    net = from_module(m, variances="empirical")
    se = 2.0 * math.sqrt(2.0 / n ** 2)
    assert abs(net.layers[0].sigma_w2 - 2.0) <= 5 * se
    assert abs(net.layers[0].sigma_b2 - 0.01) <= 5 * 0.01 * math.sqrt(2.0 / n)
    assert net.layers[1].sigma_b2 == 0.0 and net.layers[0].weights == "gaussian"
    assert from_module(m, variances="empirical", weights="uniform").layers[0].weights == "uniform"


# ---------------------------------------------------------------------------------------------
# refusals name the module and its path


class Gate(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


class Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.attn = nn.MultiheadAttention(8, 2)

    def forward(self, x):
        return self.blocks[1](self.blocks[0](x))


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(8, 8)),
                                     nn.Sequential(nn.Linear(8, 8), nn.Conv1d(8, 8, 1))])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


@pytest.mark.parametrize("model, match", [
    (nn.Sequential(nn.Linear(8, 8), nn.Conv2d(1, 1, 3)), r"model\.1 \(Conv2d\) is not supported yet"),
    (Nested(), r"model\.blocks\.1\.1 \(Conv1d\) is not supported yet"),
    (nn.Sequential(nn.Linear(8, 8), Gate()), r"model\.1 \(Gate\) cannot be traced"),
    (nn.Sequential(nn.Linear(8, 8), nn.Softplus(beta=2.0)), r"model\.1 \(Softplus\).*beta=2"),
    (nn.Sequential(nn.Linear(8, 8), nn.Hardtanh(0.0, 6.0)), r"model\.1 \(Hardtanh\).*min_val"),
    (nn.Sequential(nn.Linear(8, 8), nn.ReLU6()), r"model\.1 \(ReLU6\) is not supported yet"),
    (nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8, eps=0.1)), r"model\.1 \(LayerNorm\).*eps"),
    (nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5)), r"model\.1 \(Dropout\) is not supported"),
    (nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.BatchNorm1d(8)),
     r"model\.2 \(BatchNorm1d\) is mapped only right after a Linear"),
    (nn.Sequential(nn.Linear(8, 8), nn.TransformerEncoderLayer(8, 2)),
     r"model\.1 \(TransformerEncoderLayer\) has dropout=0.1 in training mode"),
    (nn.Sequential(nn.Linear(8, 8), nn.LSTM(8, 8)), r"model\.1 \(LSTM\) is mapped only as the whole"),
])
def test_unsupported_modules_are_named(model, match):
    with pytest.raises(ValueError, match=match):
        from_module(model, torch.zeros(8, 8))


def test_more_refusals():
    with pytest.raises(ValueError, match=r"model\.attn \(MultiheadAttention\) .*cross-attention "
                                         "is not supported"):
        class WithAttn(nn.Module):
            def __init__(self):
                super().__init__()
                self.attn = nn.MultiheadAttention(8, 2)
                self.fc = nn.Linear(8, 8)

            def forward(self, x):
                return self.attn(x, self.fc(x), self.fc(x))[0]
        from_module(WithAttn(), torch.zeros(2, 8))

    class Sub(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return x - self.fc(x)
    with pytest.raises(ValueError, match=r"model \(sub\(\) in Sub\) is not supported yet"):
        from_module(Sub())
    m = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    with torch.no_grad():
        m[1].weight.fill_(2.0)
    with pytest.raises(ValueError, match=r"model\.1 \(LayerNorm\) has an affine gain"):
        from_module(m, variances="empirical")
    assert type(from_module(m).layers[1]).__name__ == "LayerNorm"   # init: reset to gain 1
    bn = _mlp(8, 2, bn=True).eval()
    with pytest.raises(ValueError, match=r"model\.1 \(BatchNorm1d\) is in eval mode"):
        from_module(bn, torch.zeros(8, 8))
    with pytest.raises(ValueError, match=r"example_input"):
        from_module(_mlp(8, 2, bn=True))
    with pytest.raises(ValueError, match=r"variances must be 'init' or 'empirical'"):
        from_module(_mlp(8, 2), variances="he")
    with pytest.raises(TypeError, match=r"module must be a torch.nn.Module"):
        from_module("mlp")
    with pytest.raises(ValueError, match=r"model\.0 \(Linear\) has in_features=8"):
        from_module(_mlp(8, 2), torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"samples must be"):
        measure(_mlp(8, 2), example_inputs(8), 1)
    with pytest.raises(ValueError, match=r"reinit must be"):
        measure(_mlp(8, 2), example_inputs(8), 4, reinit="he")


# ---------------------------------------------------------------------------------------------
# measure against predict (compare's agreement rule) and against simulate


def _agree(module, x, samples=64, predict_kw=None, **kw):
    net = from_module(module, x)
    prof = measure(module, x, samples, **kw)
    cmp = sp.compare(sp.predict(net, **(predict_kw or {})), prof)
    assert cmp.verdict == "agree", cmp
    return prof


def test_measure_agrees_with_predict_tanh_mlp():
    _agree(_mlp(128, 8), example_inputs(128))


def test_measure_agrees_with_predict_relu_mlp_two_inputs():
    """relu at the edge of chaos (He, Gaussian), two inputs (c is compared too)."""
    m = _mlp(128, 8, nn.ReLU)
    rep = edge_of_chaos_init(m)
    prof = measure(m, example_inputs(128, c0=0.3), 64, reinit=edge_of_chaos_init)
    cmp = sp.compare(sp.predict(rep.network, c0=0.3), prof)
    assert cmp.verdict == "agree" and "c" in cmp.fields, cmp


def test_measure_agrees_with_predict_pre_ln_resnet():
    _agree(nn.Sequential(*[PreLN(128) for _ in range(6)]), example_inputs(128))


def test_measure_agrees_with_predict_batchnorm_mlp():
    prof = _agree(_mlp(128, 5, bn=True), example_inputs(128, c0=0.0, k=8))
    assert prof.meta["batch_size"] == 8


def test_measure_is_reproducible_and_leaves_the_module_and_rng_alone():
    m = _mlp(16, 3, nn.ReLU)
    w = m[0].weight.detach().clone()
    state = torch.random.get_rng_state()
    a = measure(m, example_inputs(16), 5, seed=3, return_samples=True)
    b = measure(m, example_inputs(16), 5, seed=3, return_samples=True)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(m[0].weight, w)
    np.testing.assert_array_equal(a.samples["log_g"], b.samples["log_g"])
    assert not np.array_equal(a.samples["q"][0], a.samples["q"][1])
    assert a.meta["q0"] == pytest.approx(1.0)


def test_measure_and_simulate_sample_the_same_law():
    """Per layer, a two-sample Kolmogorov-Smirnov test of q_hat and log g_hat from measure (torch's
    own default init: uniform weights, no bias) against simulate's dense engine on the mapped
    network, at level 1e-3 per test (16 tests); power check: the same test rejects a simulate
    whose sigma_w^2 is 10% larger (the law measure does not sample)."""
    from scipy.stats import ks_2samp
    n, depth, S = 48, 4, 600
    m = _mlp(n, depth, nn.Tanh, bias=False)
    x = example_inputs(n)
    net = from_module(m, x)
    a = measure(m, x, S, seed=1, return_samples=True).samples
    b = sp.simulate(net, S, 2, return_samples=True).samples
    off = sp.simulate(sp.mlp(depth, n, "tanh", sigma_w2=1.1 / 3, weights="uniform"), S, 2,
                      return_samples=True).samples
    for key in ("q", "log_g"):
        for l in range(depth - (key == "log_g")):  # g^L = ||v||^2/N whatever the weights
            assert ks_2samp(a[key][:, l], b[key][:, l]).pvalue > 1e-3, (key, l)
    assert min(ks_2samp(a["q"][:, l], off["q"][:, l]).pvalue for l in range(depth)) < 1e-3


def test_measure_benchmark_12_layers_width_768():
    """The issue's benchmark: 12 layers of width 768, 64 re-initialisations, under a minute on
    2 cores (about 2 s measured)."""
    m = _mlp(768, 12, nn.GELU)
    t = time.perf_counter()
    prof = measure(m, example_inputs(768), 64)
    assert time.perf_counter() - t < 60.0
    assert prof.depth == 12


# ---------------------------------------------------------------------------------------------
# initialisation


@pytest.mark.parametrize("act, sb2", [(nn.Tanh, 0.0), (nn.Tanh, 0.05), (nn.ReLU, 0.0),
                                      (nn.GELU, 0.5), (nn.ELU, 0.1)])
def test_edge_of_chaos_init_sets_chi_1_to_one(act, sb2):
    """After edge_of_chaos_init, every activated Linear has chi_1 = 1 to 1e-12 (fixed_point at
    the variances it was given, which the weights then carry: fan_in * mean(W^2) within 5 se)."""
    n = 256
    m = nn.Sequential(nn.Linear(n, n), act(), nn.Linear(n, n), act(), nn.Linear(n, 10))
    rep = edge_of_chaos_init(m, sigma_b2=sb2, seed=0)
    acts = [e for e in rep.entries if e.chi_1 is not None]
    assert len(acts) == 2
    for e in acts:
        fp = sp.fixed_point(e.activation, e.sigma_w2, e.sigma_b2)
        assert abs(fp.chi_1 - 1.0) <= 1e-12
    assert rep.entries[-1].sigma_w2 == 1.0 and rep.entries[-1].sigma_b2 == 0.0
    emp = from_module(m, variances="empirical").layers[0]
    assert abs(emp.sigma_w2 - acts[0].sigma_w2) <= 5 * acts[0].sigma_w2 * math.sqrt(2.0 / n ** 2)
    assert rep.network.layers[0].sigma_w2 == acts[0].sigma_w2


def test_initialise_named_schemes_and_refusals():
    m = nn.Sequential(nn.Linear(100, 200), nn.Tanh(), nn.Linear(200, 50))
    rep = initialise(m, "xavier", seed=0)
    assert rep.entries[0].sigma_w2 == pytest.approx(2 * 100 / 300)
    rep = initialise(m, "orthogonal", seed=0)
    W = m[0].weight.detach().double()                       # 200 x 100: orthonormal columns
    np.testing.assert_allclose((W.T @ W).numpy() / 2, np.eye(100), atol=1e-5)  # s^2 = 200/100
    assert rep.network.layers[0].weights == "orthogonal"
    rep = initialise(m, "default", seed=0)
    assert rep.network == from_module(m)
    with pytest.raises(ValueError, match=r"model\.0 \(Linear, then relu\): relu has no edge"):
        edge_of_chaos_init(nn.Sequential(nn.Linear(8, 8), nn.ReLU()), sigma_b2=0.1)
    with pytest.raises(ValueError, match="scheme"):
        initialise(m, "fancy")


# ---------------------------------------------------------------------------------------------
# nn.RNN: time steps as layers (signalprop.torch.recurrent)


def _sequences(nx, T, c_x=0.5, batch_first=False):
    """T steps of two input sequences (T, 2, nx) with q_x = 1 and correlation c_x per step."""
    xs = torch.stack([example_inputs(nx, c0=c_x, dtype=torch.float64) for _ in range(T)])
    return xs.transpose(0, 1).contiguous() if batch_first else xs


def test_rnn_default_init_variances_are_read_correctly():
    """nn.RNN.reset_parameters: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H)), variance
    1/(3H) (the input weights too); sampled over torch's own init, within 5 SE."""
    torch.manual_seed(0)
    H, nx = 200, 50
    m = nn.RNN(nx, H)
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        w = getattr(m, name).detach().double().flatten()
        var = 1.0 / (3 * H)
        se = var * math.sqrt(0.8 / w.numel())          # Var(U^2) = (4/5) var^2 for a uniform law
        assert abs(float(torch.mean(w * w)) - var) < 5 * se, name
        assert float(torch.max(torch.abs(w))) <= 1 / math.sqrt(H)


def test_rnn_maps_to_the_rnn_constructor():
    nx, H, T = 12, 20, 4
    x = _sequences(nx, T)
    net = from_module(nn.RNN(nx, H, nonlinearity="relu"), x)
    q_x = [float(torch.sum(x[t, 0] ** 2)) / nx for t in range(T)]
    assert q_x == pytest.approx([1.0] * T, abs=1e-12)
    xn = x.numpy()
    c_x = [float(np.dot(xn[t, 0], xn[t, 1]) / np.linalg.norm(xn[t, 0]) / np.linalg.norm(xn[t, 1]))
           for t in range(T)]
    assert c_x == pytest.approx([0.5] * T, abs=1e-12)
    expected = sp.rnn("rnn", T, H, "relu", sigma_w2=1 / 3, sigma_u2=nx / (3 * H),
                      sigma_b2=2 / (3 * H), q_x=q_x, c_x=c_x, input_width=nx)
    assert net == expected
    mb = nn.RNN(nx, H, batch_first=True, bias=False)
    assert from_module(mb, _sequences(nx, T, batch_first=True)) == sp.rnn(
        "rnn", T, H, "tanh", sigma_w2=1 / 3, sigma_u2=nx / (3 * H), q_x=q_x, c_x=c_x,
        input_width=nx)
    one = from_module(nn.RNN(nx, H), x[:, 0])                     # unbatched (T, nx): c_x = 0
    assert one.depth == T and one.layers[0].c_x == 0.0
    m = nn.RNN(nx, H)
    with torch.no_grad():
        m.weight_hh_l0.fill_(0.1)
        m.weight_ih_l0.fill_(0.2)
        m.bias_ih_l0.fill_(0.3)
        m.bias_hh_l0.fill_(-0.1)
    emp = from_module(m, x, variances="empirical").layers[0]
    assert (emp.sigma_w2, emp.sigma_u2, emp.sigma_b2) == pytest.approx((H * 0.01, nx * 0.04, 0.04))


def test_rnn_refusals_name_the_module():
    x = _sequences(6, 3)
    for m, match in ((nn.RNN(6, 8, num_layers=2), r"model \(RNN\) has num_layers=2"),
                     (nn.RNN(6, 8, bidirectional=True), r"model \(RNN\) is bidirectional"),
                     (nn.LSTM(6, 8, num_layers=2), r"model \(LSTM\) has num_layers=2"),
                     (nn.GRU(6, 8, num_layers=2), r"model \(GRU\) has num_layers=2"),
                     (nn.MultiheadAttention(8, 2), r"one sequence of T tokens"),
                     (nn.TransformerEncoderLayer(8, 2), r"one sequence of T tokens")):
        with pytest.raises(ValueError, match=match):
            from_module(m, x)
    with pytest.raises(ValueError, match=r"model\.0 \(RNN\) is mapped only as the whole"):
        from_module(nn.Sequential(nn.RNN(6, 8)), x[:, 0])
    with pytest.raises(ValueError, match="example_input"):
        from_module(nn.RNN(6, 8))
    with pytest.raises(ValueError, match="input_size=6"):
        from_module(nn.RNN(6, 8), torch.zeros(3, 2, 5))
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, 2, 8\)"):
        from_module(nn.RNN(6, 8), (x, torch.zeros(1, 8)))


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_measure_rnn_agrees_with_predict(act):
    """Per time step q, c, log g, log G of nn.RNN (PyTorch's default init, two sequences, h0 of
    q0 = 1, c0 = 0.2) against predict on the mapped network (compare's rule); power check: the
    common misreading sigma_u2 = 1/3 (W_ih's bound taken as 1/sqrt(input_size)) disagrees."""
    nx, H, T = 64, 128, 8
    m = nn.RNN(nx, H, nonlinearity=act).double()
    x = _sequences(nx, T)
    h0 = example_inputs(H, c0=0.2, dtype=torch.float64)[None]
    prof = measure(m, (x, h0), 48, seed=2)
    net = from_module(m, (x, h0))
    cmp = sp.compare(sp.predict(net, q0=1.0, c0=0.2), prof)
    assert cmp.verdict == "agree" and set(cmp.fields) >= {"q", "c", "log_g"}, cmp
    assert prof.meta["q0"] == pytest.approx(1.0) and prof.meta["c0"] == pytest.approx(0.2)
    wrong = sp.rnn("rnn", T, H, act, sigma_w2=1 / 3, sigma_u2=1 / 3, sigma_b2=2 / (3 * H),
                   q_x=[l.q_x for l in net.layers], c_x=[l.c_x for l in net.layers],
                   input_width=nx)
    assert sp.compare(sp.predict(wrong, q0=1.0, c0=0.2), prof).verdict == "disagree"


# ---------------------------------------------------------------------------------------------
# nn.LSTM (signalprop.torch.recurrent): gates i, f, g, o with random biases (Gate.sigma_b2)


def _fresh_sequences(nx, T, c_x=0.5, seed=0):
    """Two sequences (T, 2, nx), q_x = 1, correlation c_x per step, and inputs of different
    steps orthogonal (an orthonormal frame of 2T directions): the untied theory's fresh inputs."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(nx, 2 * T, generator=g, dtype=torch.float64))
    a, b = Q[:, 0::2].T, Q[:, 1::2].T
    return math.sqrt(nx) * torch.stack([a, c_x * a + math.sqrt(1 - c_x * c_x) * b], dim=1)


def test_lstm_maps_to_an_independently_written_rnn():
    """PyTorch's default init: every gate Gate(1/3, n_x/(3H), 0, 2/(3H)); batch_first either way;
    the gate order (rows i, f, g, o) read from distinct fills with variances='empirical'."""
    from signalprop.layers.gated import Gate
    nx, H, T = 12, 20, 4
    x = _sequences(nx, T)
    q_x = [float(torch.sum(x[t, 0] ** 2)) / nx for t in range(T)]
    c_x = [float(torch.dot(x[t, 0], x[t, 1]) / torch.norm(x[t, 0]) / torch.norm(x[t, 1]))
           for t in range(T)]
    gate = Gate(1 / 3, nx / (3 * H), 0.0, 2 / (3 * H))
    expected = sp.rnn("lstm", T, H, gates={n: gate for n in ("forget", "input", "output",
                                                            "candidate")},
                      q_x=q_x, c_x=c_x, input_width=nx)
    assert from_module(nn.LSTM(nx, H), x) == expected
    assert from_module(nn.LSTM(nx, H, batch_first=True), _sequences(nx, T, batch_first=True)) \
        == expected
    nob = from_module(nn.LSTM(nx, H, bias=False), x).layers[0]
    assert nob.forget == Gate(1 / 3, nx / (3 * H), 0.0, 0.0)
    m = nn.LSTM(nx, H).double()
    with torch.no_grad():
        for j, (w, u, b) in enumerate(((0.1, 0.5, 0.2), (0.2, 0.6, 1.0), (0.3, 0.7, 0.0),
                                       (0.4, 0.8, -0.4))):          # rows i, f, g, o
            m.weight_hh_l0[j * H:(j + 1) * H].fill_(w)
            m.weight_ih_l0[j * H:(j + 1) * H].fill_(u)
            m.bias_ih_l0[j * H:(j + 1) * H].fill_(b)
            m.bias_hh_l0[j * H:(j + 1) * H].fill_(0.0)
        m.bias_ih_l0[2 * H:3 * H:2].fill_(0.3)                     # candidate: +-0.3
        m.bias_ih_l0[2 * H + 1:3 * H:2].fill_(-0.3)
    emp = from_module(m, x, variances="empirical").layers[0]
    for name, (w, u, mu) in (("input", (0.1, 0.5, 0.2)), ("forget", (0.2, 0.6, 1.0)),
                             ("output", (0.4, 0.8, -0.4))):
        g = emp.gates()[name]
        assert (g.sigma_w2, g.sigma_u2, g.mu, g.sigma_b2) == pytest.approx(
            (H * w * w, nx * u * u, mu, 0.0), abs=1e-12), name
    cand = emp.candidate
    assert (cand.sigma_w2, cand.sigma_u2, cand.mu, cand.sigma_b2) == pytest.approx(
        (H * 0.09, nx * 0.49, 0.0, 0.09), abs=1e-12)


def test_lstm_refusals():
    x = _sequences(6, 3)
    h0 = torch.ones(1, 2, 8)
    for m, match in ((nn.LSTM(6, 8, bidirectional=True), r"model \(LSTM\) is bidirectional"),
                     (nn.LSTM(6, 8, proj_size=4), r"model \(LSTM\) has proj_size=4")):
        with pytest.raises(ValueError, match=match):
            from_module(m, x)
    with pytest.raises(ValueError, match="c0 of an LSTM must be zero"):
        from_module(nn.LSTM(6, 8), (x, (h0, torch.ones(1, 2, 8))))
    with pytest.raises(ValueError, match=r"x or \(x, \(h0, c0\)\)"):
        from_module(nn.LSTM(6, 8), (x, h0))
    with pytest.raises(ValueError, match=r"model\.0 \(LSTM\) is mapped only as the whole"):
        from_module(nn.Sequential(nn.LSTM(6, 8)), x[:, 0])
    with pytest.raises(ValueError, match=r"model \(LSTMCell\) is not supported yet"):
        from_module(nn.LSTMCell(6, 8), x[:, 0])


def test_measure_lstm_forward_agrees_with_predict_and_backward_with_tied_simulation():
    """nn.LSTM at PyTorch's default init, T = 8, H = 128, 48 samples, two sequences with fresh
    (mutually orthogonal) inputs per step, h0 of q0 = 1, c0 = 0.2: q and c agree with predict by
    compare's rule. The gradient does not: the untied theory misses an O(1) tied-weight effect
    that grows with the backward lag (measured at H = 128, 512, 2048: log g of step 1 is 0.9,
    1.2, 1.25 nats above theory; docs/torch.md), so log g is checked against simulate on the
    tied network (gaussian weights, the same variances): two-sample |z| <= 4 per step, and
    against the theory only where the lag is <= 1. The tied theory, predict_tied, agrees at
    every step (test_recurrent_modules_agree_with_the_tied_theory)."""
    nx, H, T = 64, 128, 8
    m = nn.LSTM(nx, H).double()
    x = _fresh_sequences(nx, T)
    h0 = example_inputs(H, c0=0.2, dtype=torch.float64)[None]
    inp = (x, (h0, torch.zeros_like(h0)))
    prof = measure(m, inp, 48, seed=2)
    net = from_module(m, inp)
    th = sp.predict(net, q0=1.0, c0=0.2)
    assert sp.compare(th, prof, fields=("q", "c")).verdict == "agree"
    late = np.abs(prof.log_g[-2:] - th.log_g[-2:]) <= 4 * prof.log_g_se[-2:] + 2 * 2 / H
    assert late.all(), (prof.log_g, th.log_g)
    mc = sp.simulate(net, 96, 3, q0=1.0, c0=0.2)
    z = (prof.log_g - mc.log_g) / np.hypot(prof.log_g_se, mc.log_g_se)
    assert np.all(np.abs(z) <= 4), z
    assert prof.meta["module"] == "LSTM" and "h_t" in prof.meta["tracked"]


# ---------------------------------------------------------------------------------------------
# uniform recurrent weights; nn.GRU (PyTorch's cell: GRUStep with reset_after)


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
def test_recurrent_default_init_is_uniform_of_variance_one_third_h(cls):
    """PyTorch's reset_parameters draws every recurrent-module weight from U(-1/sqrt(H),
    1/sqrt(H)) (input weights too, with H, not n_x): sampled 30 times, the mean squares are
    1/(3H) within 5 standard errors, the kurtosis is a uniform law's 9/5, and the variances the
    bridge reads are H * 1/(3H) = 1/3 (recurrent) and n_x * 1/(3H) (input); the biases
    b_ih, b_hh have mean square 1/(3H) too."""
    nx, H = 24, 40
    m = cls(nx, H)
    W, U, B = [], [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        for _ in range(30):
            m.reset_parameters()
            W.append(m.weight_hh_l0.detach().double().numpy().ravel())
            U.append(m.weight_ih_l0.detach().double().numpy().ravel())
            B += [getattr(m, b).detach().double().numpy() for b in ("bias_ih_l0", "bias_hh_l0")]
    for vals in (np.concatenate(W), np.concatenate(U)):
        a2 = vals * vals
        assert abs(a2.mean() - 1 / (3 * H)) <= 5 * a2.std(ddof=1) / math.sqrt(a2.size)
        assert np.max(np.abs(vals)) <= (1 + 1e-6) / math.sqrt(H)
        assert abs(np.mean(a2 * a2) / np.mean(a2) ** 2 - 1.8) < 0.03
    b2 = np.concatenate(B) ** 2
    assert abs(b2.mean() - 1 / (3 * H)) <= 5 * b2.std(ddof=1) / math.sqrt(b2.size)
    x = _sequences(nx, 3)
    if cls in (nn.GRU, nn.LSTM):
        pairs = [(g.sigma_w2, g.sigma_u2) for g in from_module(m, x).layers[0].gates().values()]
    else:
        layer = from_module(m, x).layers[0]
        pairs = [(layer.sigma_w2, layer.sigma_u2)]
    for sw2, su2 in pairs:
        assert (sw2, su2) == pytest.approx((1 / 3, nx / (3 * H)), rel=1e-15)


def test_gru_maps_to_an_independently_written_rnn():
    """nn.GRU is rnn("gru", ..., reset_after=True) (PyTorch's cell: r after W_hn h + b_hn).
    PyTorch's default init (every parameter of variance 1/(3H)): reset and update Gate(1/3,
    n_x/(3H), 0, 2/(3H)) (b_ih + b_hh), candidate Gate(1/3, n_x/(3H), 0, 1/(3H)) (b_in alone),
    hidden_bias2 = var(b_hn) = 1/(3H); batch_first either way; without bias all biases 0. The row
    order (r, z, n) read from distinct fills with variances='empirical'. Refused inside a model
    and as a cell; predict (untied, reset-before) refuses the mapped network."""
    from signalprop.layers.gated import Gate
    nx, H, T = 12, 20, 4
    x = _sequences(nx, T)
    q_x = [float(torch.sum(x[t, 0] ** 2)) / nx for t in range(T)]
    c_x = [float(torch.dot(x[t, 0], x[t, 1]) / torch.norm(x[t, 0]) / torch.norm(x[t, 1]))
           for t in range(T)]
    v = 1 / (3 * H)
    gates = {"reset": Gate(1 / 3, nx * v, 0.0, 2 * v), "update": Gate(1 / 3, nx * v, 0.0, 2 * v),
             "candidate": Gate(1 / 3, nx * v, 0.0, v)}
    expected = sp.rnn("gru", T, H, gates=gates, reset_after=True, hidden_bias2=v, q_x=q_x,
                      c_x=c_x, input_width=nx)
    net = from_module(nn.GRU(nx, H), x)
    assert net == expected and net.layers[0].reset_after and net.depth == T
    assert from_module(nn.GRU(nx, H, batch_first=True), _sequences(nx, T, batch_first=True)) \
        == expected
    nob = from_module(nn.GRU(nx, H, bias=False), x)
    zero = Gate(1 / 3, nx * v, 0.0, 0.0)
    assert nob == sp.rnn("gru", T, H, gates={n: zero for n in gates}, reset_after=True,
                         q_x=q_x, c_x=c_x, input_width=nx)
    m = nn.GRU(nx, H).double()
    with torch.no_grad():
        for j, (w, u, b) in enumerate(((0.1, 0.5, 0.2), (0.2, 0.6, 1.0), (0.3, 0.7, 0.4))):
            m.weight_hh_l0[j * H:(j + 1) * H].fill_(w)
            m.weight_ih_l0[j * H:(j + 1) * H].fill_(u)
            m.bias_ih_l0[j * H:(j + 1) * H].fill_(b)
            m.bias_hh_l0[j * H:(j + 1) * H].fill_(0.1)
    emp = from_module(m, x, variances="empirical").layers[0]
    for g, (w, u, mu) in ((emp.reset, (0.1, 0.5, 0.3)), (emp.update, (0.2, 0.6, 1.1))):
        assert (g.sigma_w2, g.sigma_u2, g.mu, g.sigma_b2) == pytest.approx(
            (H * w * w, nx * u * u, mu, 0.0), abs=1e-12)
    c = emp.candidate
    assert (c.sigma_w2, c.sigma_u2, c.mu, c.sigma_b2, emp.hidden_bias2) == pytest.approx(
        (H * 0.09, nx * 0.49, 0.0, 0.16, 0.01), abs=1e-12)
    with pytest.raises(ValueError, match=r"model\.0 \(GRU\) is mapped only as the whole"):
        from_module(nn.Sequential(nn.GRU(nx, H)), x[:, 0])
    with pytest.raises(ValueError, match=r"model \(GRUCell\) is not supported yet"):
        from_module(nn.GRUCell(nx, H), x[:, 0])
    with pytest.raises(ValueError, match="reset_after"):
        sp.predict(net)


def _gh(n=48):
    t, w = np.polynomial.hermite_e.hermegauss(n)
    return t, w / w.sum()


def test_measure_gru_step_one_agrees_with_predict_tied_and_pytorchs_cell():
    """Step 1 of nn.GRU (no bias, W_hh ~ U of variance 3/H: sigma_w2 = 3 in every gate, W_ih at
    PyTorch's default, H = 512, 160 samples): PyTorch's cell at infinite width, q_1 = E(1-z)^2
    E tanh(u + r g)^2 + E z^2 q_h0 (u, g, a^r, a^z independent Gaussians, Gauss-Hermite, written
    here), equals predict_tied on from_module's network within 4 of its se, and measure's q_1
    agrees with both (4 se plus compare's 2/H); the reset-before cell (Gaussian candidate of the
    same variance, predict of rnn("gru") without reset_after) is 5.6% higher (0.472 against the
    measured 0.448 +- 0.001), > 4 se away: the mapping must keep PyTorch's cell (step 1 has no
    tied-weight effect)."""
    from scipy.special import expit
    nx, H, S = 64, 512, 160
    m = nn.GRU(nx, H, bias=False).double()
    x = example_inputs(nx, dtype=torch.float64)[None]              # (T=1, 1, nx), q_x = 1
    h0 = example_inputs(H, dtype=torch.float64)[None]               # q_h0 = 1

    def reinit(mod):
        mod.reset_parameters()
        torch.nn.init.uniform_(mod.weight_hh_l0, -3 / math.sqrt(H), 3 / math.sqrt(H))

    prof = measure(m, (x, h0), S, reinit=reinit, seed=4)
    sw2, su2 = 3.0, nx / (3 * H)
    t, w = _gh()
    va = sw2 + su2                                          # gate pre-activation variance
    z2 = float(np.sum(w * expit(math.sqrt(va) * t) ** 2))
    omz2 = float(np.sum(w * (1 - expit(math.sqrt(va) * t)) ** 2))
    r = expit(math.sqrt(va) * t)
    R, U, G = np.meshgrid(r, math.sqrt(su2) * t, math.sqrt(sw2) * t, indexing="ij")
    W3 = w[:, None, None] * w[None, :, None] * w[None, None, :]
    n2_torch = float(np.sum(W3 * np.tanh(U + R * G) ** 2))
    n2_gauss = float(np.sum(w * np.tanh(math.sqrt(su2 + sw2 * np.sum(w * r * r)) * t) ** 2))
    q_torch, q_gauss = omz2 * n2_torch + z2, omz2 * n2_gauss + z2
    m2 = nn.GRU(nx, H, bias=False).double()
    with torch.no_grad():
        m2.weight_hh_l0.fill_(3 / math.sqrt(3 * H))            # empirical sigma_w2 = 3
        m2.weight_ih_l0.fill_(1 / math.sqrt(3 * H))
    net = from_module(m2, (x, h0), variances="empirical")
    tied = sp.predict_tied(net, q0=1.0)
    assert abs(tied.q[0] - q_torch) <= 4 * tied.q_se[0], (tied.q[0], q_torch, tied.q_se[0])
    before = sp.rnn("gru", 1, H, gates=net.layers[0].gates(), q_x=net.layers[0].q_x,
                    input_width=nx)
    assert sp.predict(before, q0=1.0).q[0] == pytest.approx(q_gauss, rel=1e-6)
    se = math.hypot(prof.q_se[0], tied.q_se[0])
    assert abs(prof.q[0] - tied.q[0]) <= 4 * se + 2 * q_torch / H, (prof.q[0], tied.q[0], se)
    assert abs(prof.q[0] - q_torch) <= 4 * prof.q_se[0] + 2 * q_torch / H
    assert abs(prof.q[0] - q_gauss) > 4 * prof.q_se[0], (prof.q[0], q_gauss, prof.q_se[0])
    assert prof.meta["module"] == "GRU"


def test_recurrent_modules_agree_with_the_tied_theory():
    """The bridge's workflow for recurrent modules at H = 256 (PyTorch's default init, T = 8,
    two sequences with fresh inputs per step, h0 of q0 = 1, c0 = 0.2, 48 samples):
    compare(predict_tied(from_module(m, x)), measure(m, x)) agrees for nn.LSTM and nn.GRU (q, c,
    log g, log G), and for nn.RNN (whose untied mean field ``predict`` is also exact for tied
    weights at infinite width). Power check: the untied theory (predict) of the LSTM disagrees
    (its log g misses the tied-weight effect beyond lag 1)."""
    nx, H, T = 64, 256, 8
    x = _fresh_sequences(nx, T)
    h0 = example_inputs(H, c0=0.2, dtype=torch.float64)[None]
    for cls in (nn.RNN, nn.LSTM, nn.GRU):
        m = cls(nx, H).double()
        inp = (x, (h0, torch.zeros_like(h0))) if cls is nn.LSTM else (x, h0)
        prof = measure(m, inp, 48, seed=2)
        net = from_module(m, inp)
        th = sp.predict_tied(net, q0=1.0, c0=0.2)
        cmp = sp.compare(th, prof)
        assert cmp.verdict == "agree" and set(cmp.fields) >= {"q", "c", "log_g", "log_G"}, \
            (cls.__name__, cmp)
        if cls is nn.LSTM:
            assert sp.compare(sp.predict(net, q0=1.0, c0=0.2), prof).verdict == "disagree"


# ---------------------------------------------------------------------------------------------
# nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder


def _tokens(d, T, dtype=torch.float32):
    return example_inputs(d, 1.0, 0.0, k=T, dtype=dtype)


def test_attention_default_init_is_read_correctly():
    """in_proj_weight (3d x d) by xavier_uniform_: bound sqrt(6/(4d)), variance 1/(2d), so
    sigma_q2 = sigma_k2 = sigma_v2 = 1/2; out_proj Linear's U(-1/sqrt(d), 1/sqrt(d)): 1/3; biases
    0 — against measure's default re-initialisation sampled 30 times (within 5 se; kurtosis 9/5)."""
    from signalprop.layers.attention import Attention
    from signalprop.torch.measure import default_reinit
    d, H, T = 48, 4, 5
    m = nn.MultiheadAttention(d, H)
    assert from_module(m, _tokens(d, T)).layers == (Attention(d, H, T, 0.5, 0.5, 0.5, 1 / 3),)
    Wi, Wo = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        for _ in range(30):
            with torch.no_grad():
                m.in_proj_bias.fill_(1.0)
                m.out_proj.bias.fill_(1.0)
                default_reinit(m)
            assert not torch.any(m.in_proj_bias) and not torch.any(m.out_proj.bias)
            Wi.append(m.in_proj_weight.detach().double().numpy().ravel())
            Wo.append(m.out_proj.weight.detach().double().numpy().ravel())
    for vals, var, bound in ((np.concatenate(Wi), 1 / (2 * d), math.sqrt(6 / (4 * d))),
                             (np.concatenate(Wo), 1 / (3 * d), 1 / math.sqrt(d))):
        a2 = vals * vals
        assert abs(a2.mean() - var) <= 5 * a2.std(ddof=1) / math.sqrt(a2.size)
        assert np.max(np.abs(vals)) <= bound * (1 + 1e-6)
        assert abs(np.mean(a2 * a2) / np.mean(a2) ** 2 - 1.8) < 0.03


@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_layer_maps_to_the_transformer_blocks(norm_first):
    """Pre-LN: Residual(LN, Attention), Residual(LN, Dense(F, act, 1/3, 1/(3d)), Dense(d, linear,
    1/3, 1/(3F))); post-LN: Residual(Attention), LN, Residual(FFN), LN (written out here); the same
    for (T, d), batch_first (1, T, d) and (T, 1, d); nn.TransformerEncoder: its layers, then its
    norm."""
    from signalprop.layers import Dense, LayerNorm, Residual
    from signalprop.layers.attention import Attention
    d, H, F_, T = 32, 4, 80, 6
    attn = Attention(d, H, T, 0.5, 0.5, 0.5, 1 / 3)
    ffn = (Dense(F_, "gelu", 1 / 3, 1 / (3 * d), "uniform"),
           Dense(d, "linear", 1 / 3, 1 / (3 * F_), "uniform"))
    ln = LayerNorm(d)
    if norm_first:
        blocks = (Residual((ln, attn), 1.0, 1.0), Residual((ln,) + ffn, 1.0, 1.0))
    else:
        blocks = (Residual((attn,), 1.0, 1.0), ln, Residual(ffn, 1.0, 1.0), ln)
    x = _tokens(d, T)
    for bf, xi in ((False, x), (True, x[None]), (False, x[:, None])):
        m = nn.TransformerEncoderLayer(d, H, F_, 0.0, "gelu", norm_first=norm_first,
                                       batch_first=bf)
        assert from_module(m, xi) == sp.Network(d, blocks)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, H, F_, 0.0, "gelu",
                                                           norm_first=norm_first), 2,
                                norm=nn.LayerNorm(d), enable_nested_tensor=False)
    assert from_module(enc, x) == sp.Network(d, blocks * 2 + (ln,))
    nob = from_module(nn.TransformerEncoderLayer(d, H, F_, 0.0, norm_first=norm_first,
                                                 bias=False), x)
    dense = [la for b in nob.layers if isinstance(b, Residual) for la in b.branch
             if isinstance(la, Dense)]
    assert [(la.activation.name, la.sigma_b2) for la in dense] == [("relu", 0.0), ("linear", 0.0)]


def test_attention_refusals_name_the_module():
    d, H, T = 16, 2, 4
    x = _tokens(d, T)

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(d, H)

        def forward(self, y):
            return self.attn(y, y, y, is_causal=True)[0]

    mha = nn.MultiheadAttention(d, H)
    with torch.no_grad():
        mha.in_proj_bias.fill_(0.1)
    for m, xi, match in (
            (nn.TransformerEncoderLayer(d, H), x, r"model \(TransformerEncoderLayer\) has "
             r"dropout=0.1 in training mode"),
            (nn.MultiheadAttention(d, H, dropout=0.2), x, r"model \(MultiheadAttention\) has "
             "dropout=0.2"),
            (nn.MultiheadAttention(d, H, kdim=8, vdim=8), x, "kdim=8"),
            (nn.MultiheadAttention(d, H, add_bias_kv=True), x, "add_bias_kv"),
            (nn.MultiheadAttention(d, H, add_zero_attn=True), x, "add_zero_attn"),
            (Masked(), x, r"model\.attn \(MultiheadAttention\) is called with is_causal=True"),
            (nn.Sequential(nn.TransformerEncoderLayer(d, H, 32, 0.0, activation=F.hardswish)),
             x, r"model\.0 \(TransformerEncoderLayer\) has activation"),
            (nn.TransformerDecoderLayer(d, H), x, r"model \(TransformerDecoderLayer\) is not "
             "supported"),
            (nn.TransformerEncoderLayer(d, H, batch_first=True).eval(), x[None].repeat(2, 1, 1),
             r"one sequence of T tokens.*\(1, T, d\)")):
        with pytest.raises(ValueError, match=match):
            from_module(m, xi)
    with pytest.raises(ValueError, match=r"model \(MultiheadAttention\) has a nonzero in_proj_bias"):
        from_module(mha, x, variances="empirical")
    assert from_module(nn.TransformerEncoderLayer(d, H).eval(), x).depth == 4   # eval: dropout off


@pytest.mark.parametrize("kind", ["mha", "pre", "post_gelu"])
def test_measure_attention_agrees_with_predict(kind):
    """measure against predict by compare's rule (q, c, log g, log G and the token kernels
    kernel_log_q, kernel_corr, all recorded): a lone MultiheadAttention, a 2-layer pre-LN
    nn.TransformerEncoder with its final LayerNorm (batch_first, (1, T, d)), a post-LN gelu layer
    in eval mode with PyTorch's default dropout; d = 128, 4 heads, T = 6 tokens of correlation 0,
    48 samples. Power check (mha): sigma_q2 = sigma_k2 = 1/3 (in_proj misread as a Linear)
    disagrees."""
    d, H, T = 128, 4, 6
    x = _tokens(d, T)
    if kind == "mha":
        m = nn.MultiheadAttention(d, H)
    elif kind == "pre":
        m = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, H, 256, 0.0, norm_first=True,
                                                             batch_first=True), 2,
                                  norm=nn.LayerNorm(d), enable_nested_tensor=False)
        x = x[None]
    else:
        m = nn.TransformerEncoderLayer(d, H, 256, activation="gelu").eval()
    net = from_module(m, x)
    prof = measure(m, x, 48, seed=1)
    cmp = sp.compare(sp.predict(net), prof)
    assert cmp.verdict == "agree", cmp
    assert {"q", "c", "log_g", "kernel_corr"} <= set(cmp.fields), cmp.fields
    assert prof.kernel_corr.shape == (net.depth, T, T) and prof.meta["tokens"] == T
    if kind == "mha":
        from signalprop.layers.attention import Attention
        wrong = sp.Network(d, (Attention(d, H, T, 1 / 3, 1 / 3, 0.5, 1 / 3),))
        assert sp.compare(sp.predict(wrong), prof).verdict == "disagree"
