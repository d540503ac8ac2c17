"""Bad input to the public API raises ValueError or TypeError whose message names the parameter.

One parametrised case per (function, bad value); every case is cheap (errors are raised before
any integral is computed).
"""

from __future__ import annotations

import math

import pytest

import signalprop as sp

BAD_ERRORS = (ValueError, TypeError)
NONFINITE = [math.nan, math.inf, -math.inf]


@pytest.fixture(scope="module")
def net():
    return sp.mlp(3, 10, "tanh", sigma_w2=1.5, sigma_b2=0.1)


def check(call, word: str):
    with pytest.raises(BAD_ERRORS) as exc:
        call()
    assert word in str(exc.value), str(exc.value)


# ---- sigma_w2 <= 0 or non-finite ----------------------------------------------------------

@pytest.mark.parametrize("v", [0.0, -1.0, -1e-300, *NONFINITE])
def test_sigma_w2(v):
    check(lambda: sp.mlp(3, 10, sigma_w2=v), "sigma_w2")
    check(lambda: sp.mlp(3, 10, sigma_w2=[1.0, v, 1.0]), "sigma_w2")
    check(lambda: sp.fixed_point("tanh", v, 0.1), "sigma_w2")
    check(lambda: sp.phase_diagram("tanh", [1.0, v], [0.1]), "sigma_w2")


# ---- sigma_b2 < 0 or non-finite -------------------------------------------------------------

@pytest.mark.parametrize("v", [-1.0, -1e-300, *NONFINITE])
def test_sigma_b2(v):
    check(lambda: sp.mlp(3, 10, sigma_b2=v), "sigma_b2")
    check(lambda: sp.fixed_point("tanh", 1.5, v), "sigma_b2")
    check(lambda: sp.critical_sigma_w2("tanh", v), "sigma_b2")
    check(lambda: sp.critical_sigma_w2("tanh", [0.1, v]), "sigma_b2")
    check(lambda: sp.phase_diagram("tanh", [1.5], [0.0, v]), "sigma_b2")


# ---- depth and width < 1 or not integers ------------------------------------------------------

@pytest.mark.parametrize("v", [0, -1, 2.5, math.nan, math.inf, True, "3", None])
def test_depth(v):
    check(lambda: sp.mlp(v, 10), "depth")


@pytest.mark.parametrize("v", [0, -1, 2.5, math.nan, math.inf, True, "3", None])
def test_width(v):
    check(lambda: sp.mlp(3, v), "width")
    check(lambda: sp.mlp(3, [10, v, 10]), "width")


def test_width_count():
    check(lambda: sp.mlp(3, [10, 10]), "width")


# ---- q0 <= 0 or non-finite; c0 outside [-1, 1] or non-finite ----------------------------------

@pytest.mark.parametrize("v", [0.0, -1.0, *NONFINITE])
def test_q0(net, v):
    check(lambda: sp.predict(net, q0=v), "q0")
    check(lambda: sp.fixed_point("tanh", 1.5, 0.1, q0=v), "q0")


@pytest.mark.parametrize("v", [1.0000001, -1.5, 2.0, *NONFINITE])
def test_c0(net, v):
    check(lambda: sp.predict(net, c0=v), "c0")


def test_predict_needs_a_network():
    check(lambda: sp.predict("tanh"), "network")


# ---- activations ---------------------------------------------------------------------------

FUNCS = {
    "activation": lambda a: sp.activation(a),
    "mlp": lambda a: sp.mlp(3, 10, a),
    "fixed_point": lambda a: sp.fixed_point(a, 1.5, 0.1),
    "critical_sigma_w2": lambda a: sp.critical_sigma_w2(a, 0.1),
    "phase_diagram": lambda a: sp.phase_diagram(a, [1.5], [0.1]),
}


@pytest.mark.parametrize("fn", FUNCS)
@pytest.mark.parametrize("name", ["foo", "tanhh", "RELU2", "1"])
def test_unknown_activation_lists_known_names(fn, name):
    with pytest.raises(ValueError) as exc:
        FUNCS[fn](name)
    msg = str(exc.value)
    assert "activation" in msg and repr(name) in msg
    assert all(n in msg for n in sp.activations()), msg


@pytest.mark.parametrize("fn", FUNCS)
@pytest.mark.parametrize("expr", ["x**", "tanh(x", "sin(", "x.y", "x*foo(x)", "x*y", ""])
def test_unparseable_expression(fn, expr):
    with pytest.raises(ValueError) as exc:
        FUNCS[fn](expr)
    assert "activation" in str(exc.value)


@pytest.mark.parametrize("spec", [3, None, 1.5, [1, 2]])
def test_activation_wrong_type(spec):
    check(lambda: sp.activation(spec), "activation")


def test_activation_parameters():
    check(lambda: sp.activation("tanh", slope=0.1), "slope")
    check(lambda: sp.activation("leaky_relu", slope=math.nan), "slope")
    check(lambda: sp.activation("leaky_relu", slope=-0.5), "slope")
    check(lambda: sp.activation("elu", alpha=-1.0), "alpha")
    check(lambda: sp.activation("elu", alpha=math.inf), "alpha")
    check(lambda: sp.activation("x*tanh(x)", alpha=1.0), "parameters")


def test_init():
    check(lambda: sp.mlp(3, 10, init="bogus"), "init")
    check(lambda: sp.mlp(3, 10, init="he", gain=math.nan), "gain")
