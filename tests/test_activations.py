"""Precision tests of signalprop.activations against an independent route.

The reference for every built-in activation is a sympy expression written out again below (not
the package's ``expr``), differentiated by sympy and evaluated with mpmath at a precision high
enough that the tails (x = +-30, where 1 - tanh^2 or 1 + tanh cancel to hundreds of digits)
are exact. Tolerances are fixed here and are not to be widened to make a test pass.
"""

from __future__ import annotations

import importlib
import json
import math
import pickle
from pathlib import Path

import mpmath as mp
import numpy as np
import pytest
import sympy as sp

import signalprop
from signalprop import gaussian
from signalprop.activations import Activation, activation, activations, normalising_constants

X = sp.Symbol("x", real=True)
RTOL_POINT = 4e-15        # pointwise phi, phi', phi'' of the built-ins: 20 ulp times the condition
                          # number max(1, |x f'(x) / f(x)|) of f at x (Phi(-30) has ~900, so a
                          # correctly rounded input already costs that much)
TINY = 1e-290             # below this a reference underflows float64: the package must give ~0

# --------------------------------------------------------------------------------------------
# the activations, written out again (CONVENTIONS.md "Names of activations")

_SELU_ALPHA = sp.Float("1.6732632423543772848170429916717", 40)
_SELU_SCALE = sp.Float("1.0507009873554804934193349852946", 40)
REF_EXPR = {
    "linear": X,
    "tanh": sp.tanh(X),
    "sigmoid": 1 / (1 + sp.exp(-X)),
    "erf": sp.erf(X),
    "relu": sp.Piecewise((X, X > 0), (0, True)),
    "leaky_relu": sp.Piecewise((X, X > 0), (X / 100, True)),
    "gelu": X * (1 + sp.erf(X / sp.sqrt(2))) / 2,
    "gelu_tanh": X * (1 + sp.tanh(sp.sqrt(2 / sp.pi) * (X + sp.Rational(44715, 10**6) * X**3))) / 2,
    "silu": X / (1 + sp.exp(-X)),
    "swish": X / (1 + sp.exp(-X)),
    "elu": sp.Piecewise((X, X > 0), (sp.exp(X) - 1, True)),
    "selu": _SELU_SCALE * sp.Piecewise((X, X > 0), (_SELU_ALPHA * (sp.exp(X) - 1), True)),
    "softplus": sp.log(1 + sp.exp(X)),
    "hard_tanh": sp.Piecewise((-1, X < -1), (X, X < 1), (1, True)),
}
KINKS = {"relu": (0.0,), "leaky_relu": (0.0,), "elu": (0.0,), "selu": (0.0,), "hard_tanh": (-1.0, 1.0)}
POINTS = [-30.0, -10.0, -5.0, -2.5, -1.0, -0.3, -1e-3, 0.0, 1e-3, 0.3, 1.0, 2.5, 5.0, 10.0, 30.0]


def _mp_funcs(expr, n=3):
    return [sp.lambdify(X, sp.diff(expr, X, k), "mpmath") for k in range(n)]


def mp_value(fm, x):
    """fm(x) to >= 25 correct digits: raise the precision until two evaluations agree (the tails
    of tanh-type functions cancel to ~900 digits)."""
    prev = None
    for dps in (40, 120, 400, 1200):
        with mp.workdps(dps):
            v = fm(mp.mpf(x))
        if prev is not None and v != 0 and abs(v - prev) <= mp.mpf(10) ** -25 * abs(v):
            return v
        prev = v
    return v


def _check_points(fn, fm, fm_next, xs, rtol, label):
    """fn(xs) against fm (mpmath) to rtol times the condition number |x fm_next / fm| of fm."""
    got = np.asarray(fn(np.asarray(xs, float)), float)
    assert got.shape == np.shape(xs), label
    for x, g in zip(xs, got):
        r = mp_value(fm, x)
        if abs(r) < TINY:
            assert abs(g) <= 1e-280, f"{label} at x={x}: {g!r}, reference {mp.nstr(r, 5)}"
        else:
            cond = max(1.0, float(abs(x * mp_value(fm_next, x) / r)))
            err = abs((g - r) / r)
            assert err <= rtol * cond, (f"{label} at x={x}: {g!r} vs {mp.nstr(r, 20)} "
                                        f"(rel {mp.nstr(err, 3)}, condition number {cond:.3g})")


# --------------------------------------------------------------------------------------------
# the registry


def test_registry_names_follow_conventions():
    assert set(activations()) == set(REF_EXPR)
    for name in activations():
        a = activation(name)
        assert isinstance(a, Activation)
        assert a.name == ("silu" if name == "swish" else name)
        assert activation(a) is a                       # an Activation passes through
    assert activation("  TANH ").name == "tanh"         # names are case- and space-insensitive


@pytest.mark.parametrize("name", activations())
def test_expr_is_the_documented_function(name):
    """The package's sympy expression is the function written out here (to 1e-15: parameters such
    as leaky_relu's slope 0.01 are binary floats in the package)."""
    a = activation(name)
    f_pkg = sp.lambdify(X, a.expr, "mpmath")
    f_ref = sp.lambdify(X, REF_EXPR[name], "mpmath")
    for x in (-3.7, -1.0, -0.2, 0.45, 1.3, 4.1):
        with mp.workdps(30):
            assert abs(f_pkg(mp.mpf(x)) - f_ref(mp.mpf(x))) <= mp.mpf(10) ** -15 * (1 + abs(f_ref(x)))


@pytest.mark.parametrize("name", activations())
def test_phi_and_derivatives_pointwise(name):
    """phi, phi', phi'' against sympy derivatives in mpmath, tails included, to ~20 ulp."""
    a = activation(name)
    xs = [x for x in POINTS if all(abs(x - k) > 1e-12 for k in KINKS.get(name, ()))]
    fms = _mp_funcs(REF_EXPR[name], 4)
    for k, fn in enumerate((a.phi, a.dphi, a.d2phi)):
        _check_points(fn, fms[k], fms[k + 1], xs, RTOL_POINT, f"{name} d^{k}")


def test_vectorised_shapes_and_scalars():
    for name in activations():
        a = activation(name)
        grid = np.linspace(-3, 3, 12).reshape(3, 4)
        for fn in (a.phi, a.dphi, a.d2phi):
            out = np.asarray(fn(grid))
            assert out.shape == (3, 4)
            np.testing.assert_array_equal(out[1, 2], np.asarray(fn(np.array([grid[1, 2]])))[0])


# --------------------------------------------------------------------------------------------
# known values (LITERATURE.md section A(a))


def test_known_derivative_values():
    """sigmoid'(0) = 1/4 and tanh'(0) = 1 exactly; sigmoid'(5) = 6.648057e-3, tanh'(4) = 1.340951e-3.

    The source article behind LITERATURE.md A(a) says these saturated derivatives are "~1e-4";
    that is wrong: sigmoid'(5) is ~66x and tanh'(4) ~13x larger. phi' only falls to 1e-4 at
    x = 5.2983 (tanh) and x = 9.2101 (sigmoid).
    """
    sig, th = activation("sigmoid"), activation("tanh")
    assert sig.dphi(np.array([0.0]))[0] == 0.25
    assert th.dphi(np.array([0.0]))[0] == 1.0
    s5, t4 = sig.dphi(np.array([5.0]))[0], th.dphi(np.array([4.0]))[0]
    assert s5 == pytest.approx(6.648057e-3, rel=1e-6)
    assert t4 == pytest.approx(1.340951e-3, rel=1e-6)
    assert s5 / 1e-4 > 60 and t4 / 1e-4 > 13          # not "~1e-4"
    assert th.dphi(np.array([5.0]))[0] == pytest.approx(1.816e-4, rel=1e-3)
    assert sig.dphi(np.array([10.0]))[0] == pytest.approx(4.54e-5, rel=1e-3)
    assert th.dphi(np.array([5.2983]))[0] == pytest.approx(1e-4, rel=1e-4)
    assert sig.dphi(np.array([9.2101]))[0] == pytest.approx(1e-4, rel=1e-4)


def test_saturated_derivatives_are_relative_accurate():
    """Stable formulas: tanh'(20) = 4 e^-40 / (1 + e^-40)^2 ~ 1.7e-17 to full relative precision
    (1 - tanh(20)^2 would give exactly 0), likewise sigmoid' and gelu_tanh in the tails."""
    with mp.workdps(50):
        ref = 1 / mp.cosh(20) ** 2
    got = activation("tanh").dphi(np.array([20.0, -20.0]))
    assert got[0] > 0 and abs(got[0] - ref) / ref < 1e-15 and got[1] == got[0]
    with mp.workdps(50):
        ref_s = mp.exp(-30) / (1 + mp.exp(-30)) ** 2
    got_s = activation("sigmoid").dphi(np.array([30.0, -30.0]))
    assert np.all(np.abs(got_s - float(ref_s)) / float(ref_s) < 1e-15)


# --------------------------------------------------------------------------------------------
# parameters


def test_parameters():
    assert activation("leaky_relu").params == {"slope": 0.01}
    assert activation("elu").params == {"alpha": 1.0}
    lr = activation("leaky_relu", slope=0.2)
    np.testing.assert_array_equal(lr.phi(np.array([-2.0, 3.0])), [-0.4, 3.0])
    el = activation("elu", alpha=0.5)
    assert el.phi(np.array([-50.0]))[0] == pytest.approx(-0.5, rel=1e-15)
    with pytest.raises(ValueError, match="slope"):
        activation("leaky_relu", slope=1.5)
    with pytest.raises(ValueError, match="slope"):
        activation("leaky_relu", slope=float("nan"))
    with pytest.raises(ValueError, match="alpha"):
        activation("elu", alpha=-1.0)
    with pytest.raises(TypeError, match="slope"):
        activation("tanh", slope=0.1)
    with pytest.raises(TypeError):
        activation("x*tanh(x)", alpha=2.0)


# --------------------------------------------------------------------------------------------
# custom activations


def _custom_expr():
    return X * sp.tanh(X)


@pytest.mark.parametrize("spec", ["x*tanh(x)", "sympy"])
def test_custom_from_string_and_sympy(spec):
    a = activation("x*tanh(x)" if spec == "x*tanh(x)" else sp.Symbol("x", real=True) * sp.tanh(X))
    assert a.name == "custom" and a.tau is None and a.kinks == ()
    assert sp.simplify(a.expr - _custom_expr()) == 0
    xs = [-3.0, -1.5, -0.2, 0.0, 0.7, 2.0, 3.0]
    fms = _mp_funcs(_custom_expr(), 4)
    for k, fn in enumerate((a.phi, a.dphi, a.d2phi)):
        # the lambdified sympy derivatives carry 1 - tanh^2, which cancels in the tails (4e-13
        # at x = 5): custom expressions are checked on |x| <= 3, where it costs < 1e-14
        _check_points(fn, fms[k], fms[k + 1], xs, 1e-13, f"custom d^{k}")


def test_custom_sympy_expression_in_a_plain_symbol():
    """A sympy expression built on a plain Symbol('x') (no real=True) is accepted too."""
    a = activation(sp.Symbol("x") ** 2 / 2)
    np.testing.assert_allclose(a.dphi(np.array([3.0])), [3.0], rtol=1e-15)


def test_custom_callable_with_derivatives_is_exact():
    a = activation(np.tanh, dphi=lambda v: 1 / np.cosh(v) ** 2,
                   d2phi=lambda v: -2 * np.tanh(v) / np.cosh(v) ** 2)
    xs = np.array([-2.0, 0.3, 1.7])
    np.testing.assert_array_equal(a.dphi(xs), 1 / np.cosh(xs) ** 2)
    np.testing.assert_array_equal(a.d2phi(xs), -2 * np.tanh(xs) / np.cosh(xs) ** 2)
    assert a.name == "tanh"  # the callable's __name__
    b = activation(np.tanh, dphi=lambda v: 1 / np.cosh(v) ** 2)
    # phi'' by differences of the given phi': the documented ~1e-12 scale, checked at 1e-10
    np.testing.assert_allclose(b.d2phi(xs), -2 * np.tanh(xs) / np.cosh(xs) ** 2, rtol=0, atol=1e-10)


def test_custom_callable_finite_differences_as_documented():
    """Without derivatives: 6th-order central differences, h = 1e-3 (1 + |x|). Documented as
    'about 1e-12 relative for smooth phi of unit scale': phi' within 1e-11, phi'' (a second
    difference, rounding eps/h^2) within 1e-8, both absolute on the unit scale of tanh."""
    a = activation(lambda v: np.tanh(v))
    xs = np.linspace(-3, 3, 13)
    with mp.workdps(30):
        d1 = np.array([float(1 / mp.cosh(x) ** 2) for x in xs])
        d2 = np.array([float(-2 * mp.tanh(x) / mp.cosh(x) ** 2) for x in xs])
    assert np.max(np.abs(a.dphi(xs) - d1)) < 1e-11
    assert np.max(np.abs(a.d2phi(xs) - d2)) < 1e-8


def test_custom_expectation_matches_mpmath():
    """A custom activation goes through the generic engine (tau unknown: graded rule)."""
    a = activation("x*tanh(x)")
    for q in (0.01, 1.0, 50.0):
        with mp.workdps(25):
            qq = mp.mpf(q)
            pts = [-12 * mp.sqrt(qq), -3, -1, 0, 1, 3, 12 * mp.sqrt(qq)]
            pts = sorted(set(p for p in pts if abs(p) <= 12 * mp.sqrt(qq)))
            ref = mp.quad(lambda x: (x * mp.tanh(x)) ** 2 * mp.exp(-x * x / (2 * qq)), pts)
            ref /= mp.sqrt(2 * mp.pi * qq)
        assert float(a.second_moment(q)) == pytest.approx(float(ref), rel=1e-10)


# --------------------------------------------------------------------------------------------
# bad input


def test_unknown_name_lists_the_known_ones():
    for bad in ("relu6", "tanhh", "Sigmoidal"):
        with pytest.raises(ValueError) as e:
            activation(bad)
        msg = str(e.value)
        assert repr(bad) in msg
        for name in activations():
            assert name in msg


@pytest.mark.parametrize("bad", ["x*", "x*tanh(x", "tanh(x))", "x**", "3", "x*y", "tanhh(x)"])
def test_unparseable_or_foreign_expression_is_a_value_error_naming_it(bad):
    with pytest.raises(ValueError) as e:
        activation(bad)
    assert repr(bad) in str(e.value)


@pytest.mark.parametrize("bad", ["__import__('os').getcwd()", "x.__class__", "lambda: x",
                                 "[x][0]", "x if x > 0 else 0", "open('f')"])
def test_strings_are_not_evaluated_as_python(bad):
    """sympify runs eval on its string: only sympy names, numbers and operators may reach it."""
    with pytest.raises(ValueError) as e:
        activation(bad)
    assert repr(bad) in str(e.value) or bad in str(e.value)


def test_non_activation_type_is_a_type_error():
    with pytest.raises(TypeError):
        activation(3.0)
    with pytest.raises(TypeError):
        activation(None)


# --------------------------------------------------------------------------------------------
# normalising constants


def test_normalising_constants_relu_exact():
    nc = normalising_constants("relu")
    mean = 1 / math.sqrt(2 * math.pi)
    var = 0.5 - 1 / (2 * math.pi)
    assert nc["mean"] == pytest.approx(mean, rel=1e-15)
    assert nc["std"] == pytest.approx(math.sqrt(var), rel=1e-15)
    assert nc["gain"] == pytest.approx(1 / math.sqrt(var), rel=1e-15)
    nc2 = normalising_constants("relu", q=4.0)  # homogeneous of degree 1
    assert nc2["mean"] == pytest.approx(2 * mean, rel=1e-15)
    assert nc2["std"] == pytest.approx(2 * math.sqrt(var), rel=1e-15)


REFERENCE = Path(__file__).parent / "reference" / "gaussian_reference.json"


def _mp_mean_var(name, q):
    """E phi and Var phi at q from the mpmath reference file (25 digits; see make_reference.py)."""
    rows = json.loads(REFERENCE.read_text())["one_d"][name]
    row = next(r for r in rows if r["q"] == q)
    with mp.workdps(30):
        mean, m2 = mp.mpf(row["mean"]), mp.mpf(row["second_moment"])
        return mean, m2 - mean * mean


@pytest.mark.parametrize("name", [n for n in activations() if n != "swish"])
def test_normalising_constants_against_mpmath(name):
    """mean, std and gain to 1e-12 relative, at q = 1 and at q = 1e-6 (where sigmoid's
    E phi^2 - mean^2 would lose 8 digits to cancellation)."""
    for q in (1.0, 1e-6):
        mean, var = _mp_mean_var(name, q)
        nc = normalising_constants(name, q)
        scale = float(mp.sqrt(var + mean * mean))
        assert abs(nc["mean"] - float(mean)) <= 1e-12 * scale, (name, q)
        assert nc["std"] == pytest.approx(float(mp.sqrt(var)), rel=1e-12), (name, q)
        assert nc["gain"] == pytest.approx(float(1 / mp.sqrt(var)), rel=1e-12), (name, q)


def test_normalising_constants_bad_input():
    with pytest.raises(ValueError, match="q"):
        normalising_constants("tanh", q=-1.0)
    with pytest.raises(ValueError, match="variance"):
        normalising_constants(lambda v: 0.0 * v + 1.0)  # a constant: no gain exists


@pytest.mark.parametrize("name", [n for n in activations() if activation(n).odd])
def test_odd_flag_is_true_oddness(name):
    """The ``odd`` flag (which makes the mean exactly 0) holds pointwise: phi(-x) = -phi(x)."""
    a = activation(name)
    x = np.linspace(-30, 30, 2001)
    np.testing.assert_array_equal(a.phi(-x), -a.phi(x))
    assert float(a._e1(a.phi, 2.0)) == pytest.approx(0.0, abs=1e-15)


# --------------------------------------------------------------------------------------------
# custom activations with kinks and singular derivatives
#
# References. The alpha-ReLU phi(x) = max(x, 0)^alpha (Yang & Schoenholz 2017) has, for
# z ~ N(0, 1), E[max(z, 0)^(2a)] = int_0^inf z^(2a) phi(z) dz = 2^(a - 1) Gamma(a + 1/2) / sqrt(pi)
# (half of E|z|^(2a) = 2^a Gamma(a + 1/2) / sqrt(pi)), so by homogeneity
#     E[phi(sqrt(q) z)^2]  = 2^(alpha - 1) Gamma(alpha + 1/2) / sqrt(pi) q^alpha,
#     E[phi'(sqrt(q) z)^2] = alpha^2 2^(alpha - 2) Gamma(alpha - 1/2) / sqrt(pi) q^(alpha - 1)
# (finite for alpha > 1/2). The bivariate moments E[X+^b Y+^b] of a standard normal pair with
# correlation c follow in polar coordinates, the radial integral done in closed form (the
# arc-cosine kernels of Cho & Saul 2009 are the integer-b cases):
#     E[X+^b Y+^b] = Gamma(b + 1) 2^b (1 - c^2)^(b + 1/2) / (2 pi)
#                    * int_0^(pi/2) (sin t cos t)^b / (1 - c sin 2t)^(b + 1) dt,
# evaluated with mpmath after t = u^8 (which removes the endpoint singularity t^b, b > -1).
# Tolerances: 1e-10 relative for the alpha-ReLU (the engine measures <= 7e-15 in 1-D and
# <= 4e-13 in 2-D), 1e-12 for expressions that equal a built-in with closed forms.

def _alpha_relu_closed(alpha, q):
    with mp.workdps(30):
        a, q = mp.mpf(alpha), mp.mpf(q)
        m2 = 2 ** (a - 1) * mp.gamma(a + mp.mpf(1) / 2) / mp.sqrt(mp.pi) * q**a
        d2 = a * a * 2 ** (a - 2) * mp.gamma(a - mp.mpf(1) / 2) / mp.sqrt(mp.pi) * q ** (a - 1)
        return float(m2), float(d2)


def _alpha_relu_cross(alpha, q1, q2, c, deriv):
    """E[phi(u1) phi(u2)] (deriv=False) or E[phi'(u1) phi'(u2)] (deriv=True), alpha-ReLU."""
    with mp.workdps(25):
        b = mp.mpf(alpha) - 1 if deriv else mp.mpf(alpha)
        scale = (mp.mpf(alpha) ** 2 if deriv else 1) * (mp.mpf(q1) * mp.mpf(q2)) ** (b / 2)
        c, M = mp.mpf(c), 8
        f = lambda u: ((mp.sin(u**M) * mp.cos(u**M)) ** b / (1 - c * mp.sin(2 * u**M)) ** (b + 1)
                       * M * u ** (M - 1))
        ang = 2 * mp.quad(f, [0, (mp.pi / 4) ** (mp.mpf(1) / M)])   # symmetric about pi/4
        return float(scale * mp.gamma(b + 1) * 2**b * (1 - c * c) ** (b + mp.mpf(1) / 2)
                     / (2 * mp.pi) * ang)


ALPHAS = (0.55, 0.6, 0.7, 0.8, 0.9)
QS = np.array([1e-3, 1.0, 1e3])


def _rel(got, ref):
    return np.max(np.abs(np.asarray(got) / np.asarray(ref) - 1.0))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_alpha_relu_from_a_string_against_closed_forms(alpha):
    """'Max(x, 0)**alpha': kink at 0 found, phi' = alpha x^(alpha - 1) (an integrable singularity
    of phi'^2 at the kink) integrated to 1e-10; it was nan (0 * inf from the derivative as sympy
    writes it, 0.7 Heaviside(x) Max(x, 0)**-0.3)."""
    a = activation(f"Max(x, 0)**{alpha}")
    assert a.kinks == (0.0,) and a.jumps == ()
    assert np.all(a.dphi(np.array([-2.0, -1e-300])) == 0.0)   # the flat side: 0, not nan
    ref = [_alpha_relu_closed(alpha, q) for q in QS]
    m2, d2 = (np.array(r) for r in zip(*ref))
    assert _rel(a.second_moment(QS), m2) <= 1e-10
    assert _rel(a.dphi_second_moment(QS), d2) <= 1e-10
    got = a.moments(QS)
    assert _rel(got[0], m2) <= 1e-10 and _rel(got[1], d2) <= 1e-10
    # d/dq E[phi^2] = alpha E[phi^2] / q (homogeneity), through E[x phi phi'] / q
    assert _rel(a.second_moment_slope(QS), alpha * m2 / QS) <= 1e-10


@pytest.mark.parametrize("alpha", ALPHAS)
def test_alpha_relu_from_a_callable_with_declared_kinks(alpha):
    """A callable has no expression: kinks=(0,) declares the kink, and the same graded,
    extrapolated rule applies (1e-10). Without phi' the finite differences use steps that never
    straddle the declared kink (documented ~1e-11; checked at 1e-9)."""
    f = lambda v: np.maximum(v, 0.0) ** alpha                                   # noqa: E731
    df = lambda v: np.where(v > 0, alpha * np.abs(v) ** (alpha - 1.0), 0.0)      # noqa: E731
    ref = [_alpha_relu_closed(alpha, q) for q in QS]
    m2, d2 = (np.array(r) for r in zip(*ref))
    a = activation(f, dphi=df, kinks=(0.0,))
    assert a.kinks == (0.0,)
    assert _rel(a.second_moment(QS), m2) <= 1e-10
    assert _rel(a.dphi_second_moment(QS), d2) <= 1e-10
    b = activation(f, kinks=[0])
    assert _rel(b.dphi_second_moment(QS), d2) <= 1e-9


@pytest.mark.parametrize("alpha, q1, q2, c", [(0.7, 1.0, 1.0, 0.5), (0.55, 0.3, 2.0, -0.6),
                                              (0.9, 1e-3, 1e3, 0.99)])
def test_alpha_relu_cross_moments(alpha, q1, q2, c):
    """The bivariate rule grades both integrals of the conditional form towards the kinks:
    E[phi(u1) phi(u2)] and E[phi'(u1) phi'(u2)] to 1e-10 (the latter was nan before)."""
    a = activation(f"Max(x, 0)**{alpha}")
    for got, deriv in ((a.cross_moment(q1, q2, c), False), (a.dphi_cross_moment(q1, q2, c), True)):
        assert abs(got / _alpha_relu_cross(alpha, q1, q2, c, deriv) - 1) <= 1e-10


def test_alpha_relu_cross_moment_at_c_one_is_the_one_dimensional_moment():
    a = activation("Max(x, 0)**0.7")
    assert a.dphi_cross_moment(1.3, 1.3, 1.0) == pytest.approx(float(a.dphi_second_moment(1.3)),
                                                                rel=1e-13)


def test_leaky_relu_written_as_max_matches_the_built_in():
    """'Max(x, 0.1*x)' (kink at 0 found) against leaky_relu(slope=0.1)'s closed forms, 1e-12."""
    a, b = activation("Max(x, 0.1*x)"), activation("leaky_relu", slope=0.1)
    assert a.kinks == (0.0,)
    q = np.array([1e-3, 0.5, 1.0, 7.0, 1e3])
    for m in ("mean", "second_moment", "dphi_second_moment", "dphi_fourth_moment",
              "second_moment_slope"):
        assert _rel(getattr(a, m)(q), getattr(b, m)(q)) <= 1e-12, m
    for q1, q2, c in [(1.0, 1.0, 0.5), (0.3, 2.0, -0.7), (2.0, 2.0, 1.0)]:
        assert abs(a.cross_moment(q1, q2, c) / b.cross_moment(q1, q2, c) - 1) <= 1e-12
        assert abs(a.dphi_cross_moment(q1, q2, c) / b.dphi_cross_moment(q1, q2, c) - 1) <= 1e-12


def test_abs_has_unit_derivative_moment():
    """'Abs(x)': phi'^2 = 1 off the kink, so E[phi'^2] = 1 (to 2 ulp: the rule's weights sum to
    1 in floating point); E[phi^2] = q; E|x| = sqrt(2 q / pi)."""
    a = activation("Abs(x)")
    assert a.kinks == (0.0,)
    q = np.array([1e-3, 1.0, 1e3])
    assert np.all(np.abs(a.dphi_second_moment(q) - 1.0) <= 4.5e-16)
    assert _rel(a.second_moment(q), q) <= 1e-15
    assert _rel(a.mean(q), np.sqrt(2 * q / math.pi)) <= 1e-14


@pytest.mark.parametrize("spec, kinks, singular", [
    ("Max(x, 0)**0.7", (0.0,), (0.0,)), ("Max(x, 0.1*x)", (0.0,), ()), ("Abs(x)", (0.0,), ()),
    ("Piecewise((x, x > 1), (0, True))", (1.0,), ()), ("Min(Max(x, -1), 1)", (-1.0, 1.0), ()),
    ("x*Heaviside(x)", (0.0,), ()), ("sign(x)*x**2", (0.0,), ()),
    ("Max(x - 1, 0)**0.6", (1.0,), (1.0,)), ("sqrt(Abs(x))*tanh(x)", (0.0,), (0.0,)),
    ("x*tanh(x)", (), ()), ("x/(1 + exp(-x))", (), ())])
def test_kinks_found_in_expressions(spec, kinks, singular):
    """Kinks where a piece may be singular (the zero of the base of x**0.7) get the graded,
    extrapolated rule; switch points between analytic pieces are only split at, as for the
    built-ins (so Max(x, 0.1*x) costs what leaky_relu would without its closed forms)."""
    a = activation(spec)
    assert isinstance(a.kinks, gaussian.Kinks)
    assert a.kinks == pytest.approx(kinks, abs=1e-15)
    assert a.kinks.singular == pytest.approx(singular, abs=1e-15)


def test_kink_without_closed_form_is_found_numerically():
    """Max(x, tanh(x) + 1/2) switches where x - tanh(x) = 1/2, which solveset cannot solve:
    sign changes on a grid refined by brentq."""
    a = activation("Max(x, tanh(x) + 0.5)")
    (k,) = a.kinks
    assert abs(k - math.tanh(k) - 0.5) <= 1e-15


def test_heaviside_and_piecewise_expressions():
    """x Heaviside(x) is relu (its derivative has no DiracDelta left to evaluate); a Piecewise
    that jumps, Piecewise((x, x > 1), (0, True)) at x = 1 or Heaviside(x) at 0, has a Dirac delta
    in phi': E[phi^2] is computed, the expectations of phi' raise instead of dropping it."""
    r, relu = activation("x*Heaviside(x)"), activation("relu")
    q = np.array([1e-3, 1.0, 1e3])
    assert _rel(r.second_moment(q), relu.second_moment(q)) <= 1e-12
    assert _rel(r.dphi_second_moment(q), relu.dphi_second_moment(q)) <= 1e-12
    p = activation("Piecewise((x, x > 1), (0, True))")
    assert p.jumps == ((1.0, 0.0, 1.0),)
    q = np.array([0.1, 1.0, 1e3])     # (at q = 1e-3 the kink lies beyond the truncation |z| = 10)
    a = 1 / np.sqrt(q)    # E[x^2; x > 1] = q (Q(a) + a phi(a)), a = 1 / sqrt(q)
    ref = q * (0.5 * np.array([math.erfc(v / math.sqrt(2)) for v in a])
               + a * np.exp(-a * a / 2) / math.sqrt(2 * math.pi))
    assert _rel(p.second_moment(q), ref) <= 1e-12
    for act, where in ((p, "x = 1.0"), (activation("Heaviside(x)"), "x = 0.0")):
        for method in ("dphi_second_moment", "moments"):
            with pytest.raises(ValueError, match="jumps at " + where):
                getattr(act, method)(1.0)
        with pytest.raises(ValueError, match="jumps"):
            act.dphi_cross_moment(1.0, 1.0, 0.5)
    assert activation("Heaviside(x)").second_moment(2.0) == pytest.approx(0.5, rel=1e-15)
    with pytest.raises(ValueError, match="jumps"):      # also through the tables of predict
        signalprop.predict(signalprop.mlp(3, 10, p, sigma_w2=2.0, sigma_b2=0.5))
    # the pointwise derivative (what backpropagation computes) is an explicit choice: a callable
    step = activation(lambda v: np.where(v > 0, 1.0, 0.0), dphi=np.zeros_like, kinks=(0.0,))
    assert step.jumps == () and float(step.dphi_second_moment(1.0)) == 0.0


def test_non_integrable_singularity_raises():
    """max(x, 0)^alpha with alpha <= 1/2: phi'^2 ~ x^(2 alpha - 2), p <= -1, E[phi'^2] = inf;
    likewise phi'^4 for alpha = 0.7 (p = -1.2) and phi^2 = 1/x^2. A ValueError naming the
    activation and the kink, not a number."""
    a = activation("Max(x, 0)**0.4")
    assert float(a.second_moment(1.0)) == pytest.approx(_alpha_relu_closed(0.4, 1.0)[0], rel=1e-10)
    with pytest.raises(ValueError, match=r"not integrable at x = 0.*Max\(0, x\)\*\*0\.4|"
                                         r"Max\(0, x\)\*\*0\.4.*not integrable at x = 0"):
        a.dphi_second_moment(1.0)
    with pytest.raises(ValueError, match="not integrable"):
        activation("Max(x, 0)**0.7").dphi_fourth_moment(1.0)
    with pytest.raises(ValueError, match="not integrable"):
        activation("1/x").second_moment(1.0)
    half = activation(lambda v: np.sqrt(np.maximum(v, 0.0)),
                      dphi=lambda v: np.where(v > 0, 0.5 / np.sqrt(np.abs(v)), 0.0), kinks=(0.0,))
    with pytest.raises(ValueError, match="not integrable"):     # p = -1 exactly
        half.dphi_second_moment(1.0)


def test_non_finite_integrand_raises():
    """x**0.5 is nan for x < 0, a callable log(x) likewise: ValueError naming the activation
    and an x where it fails, never a nan returned."""
    with pytest.raises(ValueError, match=r"x\*\*0\.5.*not finite at x = -"):
        activation("x**0.5").second_moment(1.0)
    with np.errstate(all="ignore"):   # the callables' own warnings
        with pytest.raises(ValueError, match="not finite at x = -"):
            activation(np.log, dphi=lambda v: 1 / v).second_moment(1.0)   # no kinks declared
        with pytest.raises(ValueError, match="not finite at x = 0"):      # 1/x^2 at a node
            activation(np.log, dphi=lambda v: 1 / v).dphi_second_moment(1.0)
        with pytest.raises(ValueError, match="not finite at x = -"):
            activation(np.log, dphi=lambda v: 1 / v, kinks=(0.0,)).second_moment(1.0)
    # nan inputs still give nan (that is not the activation's failure)
    out = activation("Max(x, 0)**0.7").dphi_second_moment(np.array([np.nan, 1.0]))
    assert np.isnan(out[0]) and np.isfinite(out[1])


def test_kinks_keyword_validation():
    with pytest.raises(TypeError, match="kinks"):
        activation("relu", kinks=(0.0,))
    with pytest.raises(ValueError, match="kinks"):
        activation(np.tanh, kinks=(float("nan"),))
    a = activation(np.tanh, kinks=[1.0, -1.0, 1.0])
    assert a.kinks == (-1.0, 1.0) and isinstance(a.kinks, gaussian.Kinks)
    assert a.kinks.singular == (-1.0, 1.0)             # a callable's kinks: behaviour unknown
    b = activation("Abs(x - 2)", kinks=(5.0,))          # added to those found
    assert b.kinks == (2.0, 5.0) and b.kinks.singular == (5.0,)
    k = gaussian.Kinks((0.0, 1.0), "label", singular=(1.0,))
    k2 = pickle.loads(pickle.dumps(k))
    assert k2 == (0.0, 1.0) and k2.label == "label" and isinstance(k2, gaussian.Kinks)
    assert k2.singular == (1.0,) and k2.regular == (0.0,)


# --------------------------------------------------------------------------------------------
# the package layout (issue 11, item 4): one job per module, imports downward only, old names


def _tanh_module_level(v):
    return np.tanh(v)


def _package():
    """The package signalprop.activations (``signalprop.activations`` as an attribute is the
    function ``activations()``, re-exported by signalprop)."""
    return importlib.import_module("signalprop.activations")


def test_submodules_import_downward_only():
    """core <- kinks <- builtins | custom | callables <- __init__, read from the sources' import
    statements (``lint-imports`` checks the package as one layer only)."""
    import ast

    pkg = _package()
    rank = {"core": 0, "kinks": 1, "builtins": 2, "custom": 2, "callables": 2, "__init__": 3}
    root = Path(pkg.__file__).parent
    assert {p.stem for p in root.glob("*.py")} == set(rank)
    for name, r in rank.items():
        tree = ast.parse((root / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                target = node.module or "__init__"
                assert rank[target] < r, f"{name} imports {target}"
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("signalprop.activations"), name
        # no function-level imports of the package's own modules
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom):
                    assert node.level == 0 and "signalprop" not in (node.module or ""), \
                        f"{name}.{fn.name} imports {node.module}"


def test_names_of_the_former_module_still_import():
    """Every name other modules, tests or pickles may hold of the single-file module."""
    A = _package()
    for n in ("Activation", "activation", "activations", "normalising_constants",
              "BUILD_SECONDS", "_rebuild", "_builtin", "_make", "_NAMES", "_PARAMS", "_LeakyReLU",
              "_Erf", "_Jumping", "_from_expr", "_from_callable", "_check_kinks", "_deadline",
              "_expr_kinks", "_expr_jumps", "_piecewise_form", "_SELU_ALPHA", "_SELU_SCALE"):
        assert hasattr(A, n), n
    assert A.BUILD_SECONDS == 1.0
    # the constants against their definitions (Klambauer et al. 2017, eq. 14), to 40 digits
    assert A._SELU_ALPHA == float(_SELU_ALPHA) and A._SELU_SCALE == float(_SELU_SCALE)


class _OldPickle:
    """Pickles as the single-file module did: ``signalprop.activations._rebuild(key)``."""

    def __init__(self, key):
        self.key = key

    def __reduce__(self):
        return (_package()._rebuild, (self.key,))


@pytest.mark.parametrize("spec", [("relu", {}), ("leaky_relu", {"slope": 0.2}), ("swish", {}),
                                  ("Max(x, 0)**0.7", {}), (_tanh_module_level, {})])
def test_pickles_round_trip_and_old_pickles_load(spec):
    """Each kind of activation (built-in, expression, callable) pickles to an equal value (the
    same object for a built-in), and a pickle written through ``activations._rebuild`` loads."""
    s, params = spec
    a = activation(s, **params)
    b = pickle.loads(pickle.dumps(a))
    assert b == a and hash(b) == hash(a) and type(b) is type(a)
    assert (b is a) == (a.key[0] == "builtin")
    old = pickle.loads(pickle.dumps(_OldPickle(a.key)))
    assert old == a and float(old.second_moment(0.8)) == float(a.second_moment(0.8))


def test_hand_built_activation_refuses_to_pickle():
    a = Activation("mine", np.tanh, np.tanh, np.tanh)
    assert a == a and a != activation("tanh")          # compared by identity
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(a)


def test_expectations_that_do_not_converge_in_range_are_refused():
    """E[exp(2 q z^2)] = 1/sqrt(1 - 4q) for q < 1/4 and is infinite beyond; E[exp(2 sqrt(q) z)] =
    exp(2q) has its mass near z = 2 sqrt(q). The checked rule integrates |z| <= 10: it returns the
    closed form where the mass beyond is negligible and refuses (ValueError naming the
    activation) where it is not, instead of a finite wrong number (3.7e63 at q = 1 before)."""
    import math
    sq = activation("exp(x**2)")
    assert float(sq.second_moment(0.1)) == pytest.approx(1 / math.sqrt(1 - 0.4), rel=1e-12)
    for q in (0.2, 0.24, 0.26, 1.0):
        with pytest.raises(ValueError, match=r"activation\('exp\(x\*\*2\)'\).*not negligible"):
            sq.second_moment(q)
    ex = activation("exp(x)")
    assert float(ex.second_moment(0.5)) == pytest.approx(math.e, rel=1e-12)
    with pytest.raises(ValueError, match="not negligible"):
        ex.second_moment(10.0)


# --------------------------------------------------------------------------------------------
# built-in expressions built on first read (issue 15: no sympy import for numerical work)


def test_deferred_expr_is_built_once_on_first_read():
    """``Activation.expr`` given as a ``Deferred`` recipe: the recipe runs once, on the first read,
    and readers only ever see its value; the default stays None and the field stays frozen."""
    from dataclasses import FrozenInstanceError, fields

    from signalprop.activations.core import Deferred
    calls = []

    def build():
        calls.append(1)
        return sp.tanh(X)
    a = Activation("mine", np.tanh, np.tanh, np.tanh, expr=Deferred(build))
    assert calls == []
    assert a.expr == sp.tanh(X) and a.expr is a.expr and calls == [1]
    assert Activation("mine", np.tanh, np.tanh, np.tanh).expr is None
    assert [f.default for f in fields(Activation) if f.name == "expr"] == [None]
    with pytest.raises(FrozenInstanceError):
        a.expr = X


@pytest.mark.parametrize("name", activations())
def test_builtin_expr_is_in_the_symbol_x_of_expr(name):
    """A built-in's expression (built on first read) is in signalprop.expr.X (real), the symbol
    that parsed strings use, and reading it changes neither the value nor the key."""
    from signalprop.expr import X as package_x
    a = activation(name)
    key, h = a.key, hash(a)
    assert a.expr.free_symbols == {package_x} and package_x == X
    assert a.key == key and hash(a) == h and activation(name) is a


def test_sympy_valued_private_names_still_resolve():
    """The private constants that held sympy objects at import (re-exported for other modules)
    resolve on access."""
    A = _package()
    assert A._X == X
    assert sp.Max in A._PIECEWISE_ATOMS and sp.Heaviside in A._PIECEWISE_ATOMS
    assert sp.tanh in A._ONE_ARGUMENT and sp.sqrt in A._ONE_ARGUMENT
    with pytest.raises(AttributeError, match="no attribute '_nonexistent'"):
        A._nonexistent
