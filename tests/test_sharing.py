"""Parameters shared by name (issue 11, item 3, first part): Dense layers with the same ``share``
use one sampled W and b per sample network in the dense engine; the theory treats every use as
independent, and simulate measures the difference."""

import numpy as np
import pytest

import signalprop as sp
from signalprop.layers.dense import Dense, DenseSampler
from signalprop.network import Network
from signalprop.simulate import root_seed, sample_streams


def _draw(layer, fwd, n_in=6):
    h, (M, c) = DenseSampler(layer, n_in).forward(np.ones((len(fwd), 1, n_in)), fwd)
    return M * c


def test_every_use_of_a_shared_layer_draws_the_same_weights():
    fwd, _ = sample_streams(root_seed(7), 0, 3)
    shared = Dense(6, "tanh", 1.3, 0.2, share="W")
    first = _draw(shared, fwd)
    fwd.normal((5,))                      # other draws in between do not matter
    second = _draw(shared, fwd)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first[0], first[1])        # each sample network has its own W
    plain = Dense(6, "tanh", 1.3, 0.2)
    assert not np.array_equal(_draw(plain, fwd), _draw(plain, fwd))   # fresh draws without share
    other = _draw(Dense(6, "tanh", 1.3, 0.2, share="V"), fwd)
    assert not np.array_equal(first, other)                          # another name, another W


def test_shared_network_is_reproducible_whatever_the_chunking():
    net = Network(8, tuple(Dense(8, "tanh", 1.5, 0.1, share="W") for _ in range(6)))
    a = sp.simulate(net, 6, 3, c0=0.3)
    b = sp.simulate(net, 6, 3, c0=0.3, chunk=1)
    for f in ("q", "c", "log_g", "log_G"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    unshared = Network(8, tuple(Dense(8, "tanh", 1.5, 0.1) for _ in range(6)))
    assert not np.array_equal(sp.simulate(unshared, 6, 3, c0=0.3).q, a.q)


def test_linear_shared_network_is_a_matrix_power():
    """h^l = W^l x exactly for a bias-free linear network with one shared W (checked against the W
    the sampler draws for the same sample and name)."""
    n, L = 5, 4
    net = Network(n, tuple(Dense(n, "linear", 1.0, share="W") for _ in range(L)))
    prof = sp.simulate(net, 1, 11, return_samples=True)
    fwd, _ = sample_streams(root_seed(11), 0, 1)
    W = _draw(Dense(n, "linear", 1.0, share="W"), fwd, n)[0]
    from signalprop.simulate import network_inputs
    x = network_inputs(n, 1.0)[0]
    h, q = x, []
    for _ in range(L):
        h = W @ h
        q.append(h @ h / n)
    np.testing.assert_allclose(prof.samples["q"][0], q, rtol=1e-12)


def test_sharing_is_checked_and_refused_where_it_cannot_hold():
    with pytest.raises(ValueError, match="shares 'W' with layer 1 but differs"):
        Network(8, (Dense(8, "tanh", 1.5, share="W"), Dense(8, "tanh", 2.0, share="W")))
    with pytest.raises(ValueError, match="shares 'W' with layer 1"):
        Network(8, (Dense(8, "tanh", 1.5, share="W"), Dense(4, "tanh", 1.5, share="W")))
    with pytest.raises(TypeError, match="share must be None or a non-empty name"):
        Dense(8, "tanh", 1.5, share=3)
    net = Network(8, (Dense(8, "tanh", 1.5, share="W"),) * 3)
    with pytest.raises(ValueError, match="matrix-free.*cannot sample shared weights"):
        sp.simulate(net, 2, 0, engine="matrix-free")


def test_wide_shared_network_agrees_with_mean_field():
    """At N = 256 and depth 8, a tanh chain with one shared W agrees with predict (which treats
    every use as independent) under compare's rule: sharing is a finite-width effect here."""
    net = Network(256, tuple(Dense(256, "tanh", 1.5, 0.05, share="W") for _ in range(8)))
    mc = sp.simulate(net, 48, 5, c0=0.5)
    cmp = sp.compare(sp.predict(net, c0=0.5), mc)
    assert cmp.verdict == "agree", cmp


def test_uses_inside_composed_layers_must_agree():
    """The Network checks every use of a shared name, also inside residual branches (the
    composed kinds' ``stacks``)."""
    from signalprop.layers import Residual
    ok = sp.Network(8, (Residual((Dense(8, "tanh", 1.0, share="W"),)), Dense(8, "tanh", 1.0, share="W")))
    assert ok.depth == 2
    with pytest.raises(ValueError, match="shares 'W' with layer 1"):
        sp.Network(8, (Residual((Dense(8, "tanh", 1.0, share="W"),)),
                       Residual((Dense(8, "tanh", 2.0, share="W"),))))
