"""Activations and networks are values: equal by value, hashable, and they pickle (issue 11).

These are what sweeps over worker processes and caches keyed by value rely on."""

import pickle

import numpy as np
import pytest
import sympy
from hypothesis import given, settings, strategies as st

import signalprop as sp


def _tanh(v):              # a module-level callable pickles by reference
    return np.tanh(v)


@pytest.mark.parametrize("name", sp.activations())
def test_builtin_activation_round_trips_to_the_same_object(name):
    a = sp.activation(name)
    b = pickle.loads(pickle.dumps(a))
    assert b == a and hash(b) == hash(a)
    assert b is a                      # one shared object per built-in value


def test_parameters_are_part_of_the_value():
    assert sp.activation("leaky_relu", slope=0.2) == sp.activation("leaky_relu", slope=0.2)
    assert sp.activation("leaky_relu", slope=0.2) != sp.activation("leaky_relu", slope=0.3)
    assert sp.activation("leaky_relu") == sp.activation("leaky_relu", slope=0.01)
    assert sp.activation("elu", alpha=2.0) != sp.activation("elu")
    assert sp.activation("tanh") != sp.activation("erf")


def test_expression_activations_compare_by_their_tree():
    a = sp.activation("x*tanh(x)")
    assert a == sp.activation("x * tanh(x)") and hash(a) == hash(sp.activation("x*tanh(x)"))
    assert a != sp.activation("x*tanh(2*x)")
    b = pickle.loads(pickle.dumps(a))
    assert b == a and float(b.second_moment(0.7)) == float(a.second_moment(0.7))
    assert sp.activation(sympy.tanh) == sp.activation("tanh(x)")
    assert "x*tanh(x)" in repr(a)


def test_callable_activations_pickle_when_their_callable_does():
    a = sp.activation(_tanh)
    assert a == sp.activation(_tanh) and pickle.loads(pickle.dumps(a)) == a
    lam = sp.activation(lambda v: 2.0 * v)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(lam)


_NETWORKS = [
    lambda: sp.mlp(5, 16, "tanh", sigma_w2=1.5, sigma_b2=0.05),
    lambda: sp.mlp(4, [8, 16, 16, 4], "relu", init="he"),
    lambda: sp.mlp(3, 16, ["tanh", "relu", "x*tanh(x)"], sigma_w2=[1.0, 2.0, 1.5]),
    lambda: sp.mlp(3, 16, "relu", sigma_w2=2.0, norm="layer"),
    lambda: sp.mlp(3, 16, "relu", sigma_w2=2.0, norm="batch", batch_size=8),
    lambda: sp.mlp(3, 16, "tanh", init="orthogonal"),
    lambda: sp.resnet(4, 16, "relu", sigma_w2=2.0),
]


@pytest.mark.parametrize("make", _NETWORKS, ids=range(len(_NETWORKS)))
def test_networks_are_values(make):
    net = make()
    assert make() == net and hash(make()) == hash(net)
    assert pickle.loads(pickle.dumps(net)) == net


def test_unequal_networks_differ():
    assert sp.mlp(5, 16, "tanh", sigma_w2=1.5) != sp.mlp(5, 16, "tanh", sigma_w2=1.6)
    assert sp.mlp(5, 16, "tanh") != sp.mlp(5, 17, "tanh")
    assert sp.mlp(5, 16, "tanh") != sp.mlp(5, 16, "erf")


@settings(max_examples=40, deadline=None)
@given(depth=st.integers(1, 6), width=st.integers(1, 64),
       act=st.sampled_from(["tanh", "relu", "gelu", "erf", "selu", "sigmoid"]),
       sw2=st.floats(0.1, 4.0), sb2=st.floats(0.0, 1.0),
       weights=st.sampled_from(["gaussian", "orthogonal", "uniform"]))
def test_pickle_round_trip_preserves_value_and_theory(depth, width, act, sw2, sb2, weights):
    net = sp.mlp(depth, width, act, sigma_w2=sw2, sigma_b2=sb2, weights=weights)
    back = pickle.loads(pickle.dumps(net))
    assert back == net and hash(back) == hash(net)
    a, b = sp.predict(net, c0=0.3), sp.predict(back, c0=0.3)
    np.testing.assert_array_equal(a.log_q, b.log_q)
    np.testing.assert_array_equal(a.log_g, b.log_g)
    np.testing.assert_array_equal(a.c, b.c)
