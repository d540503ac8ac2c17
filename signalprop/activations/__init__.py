"""Activation functions, their derivatives, and their Gaussian expectations.

Every activation is an :class:`Activation`: vectorised ``phi``, ``dphi`` (phi') and ``d2phi``
(phi''), its sympy expression, and the Gaussian expectations that mean-field theory needs
(``second_moment``, ``cross_moment``, ...). Closed forms override the numerical engine of
:mod:`signalprop.gaussian` where they exist:

* ``linear``: trivially Gaussian;
* ``relu``, ``leaky_relu``: the arc-cosine kernel of degree 1 (Cho & Saul 2009, eq. 6),
  written as ``phi(x) = (1+a)/2 x + (1-a)/2 |x|``;
* ``erf``: the arcsine kernel (Williams 1997, eq. 11).

Names follow ``CONVENTIONS.md``; ``activation(name, **params)`` builds one, ``activations()``
lists them, ``activation(sympy_expr_or_string)`` and ``activation(callable)`` make custom ones.

Custom activations may have kinks and singular derivatives, e.g. the alpha-ReLU
``"Max(x, 0)**0.7"`` (Yang & Schoenholz 2017), whose phi'(x)^2 = 0.49 x^-0.6 is integrable but
unbounded at 0. For an expression the kinks are found from its Max, Min, Abs, sign, Heaviside
and Piecewise parts (and the zeros of fractional-power bases and log arguments), its derivatives
are taken branch by branch (no 0 * inf on the flat side), and jumps of phi are recorded; a
callable declares its kinks (``activation(f, dphi=df, kinks=(0.0,))``). Their expectations use
the engine's checked rule (:class:`signalprop.gaussian.Kinks`): graded towards the kinks, the
innermost piece extrapolated, and a ValueError naming the activation and the x wherever an
integrand is not finite or not integrable, never a nan.
"""

# The package, one job per module (imports go downward only: core <- kinks <- builtins, custom,
# callables <- this entry point):
#   core       the Activation value (fields, key/__eq__/__hash__/__reduce__, expectations)
#   builtins   the 13 built-ins, their closed forms, the shared-per-value registry
#   kinks      kink finder, singular points and jumps of custom expressions
#   custom     expressions: branch-wise derivatives, oddness, the BUILD_SECONDS deadline
#   callables  Python callables: probing, finite-difference derivatives

from __future__ import annotations

import math
import sys
from typing import Callable, Optional

import numpy as np

from .._lazy import lazy_module
from .._validate import positive_scalar, short_repr
from .builtins import (  # noqa: F401 - re-exported: the module's names before the split
    _BUILTINS, _BUILTINS_MAX, _ERF_TAU, _GELU_K, _NAMES, _PARAMS, _SELU_ALPHA, _SELU_SCALE,
    _SQRT2, _SQRT_2_PI, _Erf, _LeakyReLU, _builtin, _gelu_tanh_funcs, _make, _npdf, _ratio,
    _rebuild_builtin, _sech2, _sig, _smooth_elu, _smooth_hard_tanh, activations)
from .callables import _PROBE, _from_callable, _probe_callable  # noqa: F401
from .core import (  # noqa: F401
    Activation, Array, _check_bivariate, _deferred_warnings, _set_key)
from .custom import (  # noqa: F401
    BUILD_SECONDS, _EXPAND_BUDGET, _MAX_D1_NODES, _MAX_D2_NODES, _Jumping,
    _OutOfTime, _build_from_expr, _deadline, _diff_branches, _expanded_size, _from_expr,
    _from_sympy_function, _is_odd, _one_argument, _sized)
from .kinks import (  # noqa: F401
    _KINK_RANGE, _MAX_KINKS, _branch_at, _check_kinks, _expr_jumps, _expr_kinks,
    _kink_candidates, _one_sided, _periodic_radius, _piecewise_atoms, _piecewise_form,
    _real_zeros, _symbolic_zeros_ok)

__all__ = ["Activation", "activation", "activations", "normalising_constants"]

# sympy and signalprop.expr (which imports sympy) on first use: a built-in name, a callable and
# every number computed from them never import sympy (a sweep's worker process starts faster)
sp = lazy_module("sympy")
_ex = lazy_module("signalprop.expr")

_SYMPY_NAMES = {"_X": lambda: _ex.X, "_ONE_ARGUMENT": _one_argument,
                "_PIECEWISE_ATOMS": _piecewise_atoms}


def __getattr__(name: str):
    """The sympy-valued private names of before the lazy import (``_X``, ``_ONE_ARGUMENT``,
    ``_PIECEWISE_ATOMS``), built on first access."""
    if name in _SYMPY_NAMES:
        return _SYMPY_NAMES[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _unknown(spec: str, reason: str) -> ValueError:
    return ValueError(f"unknown activation {short_repr(spec, 120)}: not a built-in name "
                      f"({', '.join(_NAMES)}) and not an expression in x: {reason}")


def activation(spec, /, *, dphi: Optional[Callable] = None, d2phi: Optional[Callable] = None,
               kinks=None, **params) -> Activation:
    """Build an activation.

    ``spec`` is a built-in name (see :func:`activations`; parameters ``slope`` for leaky_relu,
    ``alpha`` for elu), an :class:`Activation` (returned as is), a string in ``x`` such as
    ``"x*tanh(x)"``, a sympy expression in x, a one-argument sympy function such as
    ``sympy.tanh`` (taken as f(x)) or a one-variable ``sympy.Lambda`` (derivatives by sympy), or
    a Python callable (derivatives ``dphi``, ``d2phi`` if given, else by finite differences).

    Strings are read by :func:`signalprop.expr.parse_expression`, never evaluated: numbers,
    ``x``, ``pi``, ``E``, ``+ - * / **``, and calls of exp, log, sqrt, cbrt, the trigonometric
    and hyperbolic functions and their inverses, erf, erfc, Abs, sign, Heaviside, Max, Min and
    Piecewise; constants must be finite doubles and exponents of powers of x at most 64. Sympy
    expressions pass the same whitelist (:func:`signalprop.expr.check_expression`): DiracDelta,
    factorial, floor and other functions are refused with a ValueError. A callable is tried
    once on 33 points of [-8, 8]: it must return a real array of its input's shape (TypeError
    otherwise).

    Kinks. For an expression they are found automatically: the real points where the arguments
    of Max, Min, Abs, sign, Heaviside or the conditions of a Piecewise switch, and the real zeros
    of the bases of fractional or negative powers and of the arguments of log (so
    ``"Max(x, 0)**0.7"``, ``"Max(x, 0.1*x)"``, ``"Abs(x)"``,
    ``"Piecewise((x, x > 1), (0, True))"`` get kinks at 0, 0, 0 and 1). A callable has no
    expression, so declare them: ``activation(f, dphi=df, kinks=(0.0,))``; ``kinks`` given with
    an expression are added to those found. Where phi or its derivatives may be singular (the
    zeros of fractional-power bases and log arguments, and every declared kink) the engine
    refines its quadrature geometrically and extrapolates
    (:func:`signalprop.gaussian.expect_singular`), so an integrable singularity such as
    phi'(x)^2 ~ x^(2 alpha - 2) of the alpha-ReLU max(x, 0)^alpha (alpha > 1/2) is integrated to
    ~1e-14 at a kink at 0 (~1e-9 at a kink k != 0, where x - k is only resolved to eps |k|); at
    the other kinks, switch points between analytic pieces, it splits its panels as for the
    built-ins. The expectations of a custom activation raise ValueError, naming it and the x,
    where the integrand is not finite or not integrable (alpha-ReLU with alpha <= 1/2: E[phi'^2]
    is infinite), and where phi jumps (``Heaviside(x)``: phi' has a Dirac delta; a callable with
    an explicit ``dphi`` gives the pointwise derivative instead); they never return nan, and
    where they fail no floating-point warning is printed before the error.
    """
    if isinstance(spec, Activation):
        if kinks is not None:
            raise TypeError("kinks cannot be added to an existing Activation")
        return spec
    if isinstance(spec, str) and spec.strip().lower() in _NAMES:
        return _builtin(spec.strip().lower(), kinks, params)
    act = _custom(spec, dphi, d2phi, kinks, params)
    if act.key:
        return act
    if act.expr is not None:
        key = ("expr", act.expr, _kinks_key(kinks))
    else:
        key = ("callable", spec, dphi, d2phi, _kinks_key(kinks))
    return _set_key(act, key, _rebuild)      # at construction: the value it is compared by


def _kinks_key(kinks) -> tuple:
    return _check_kinks(kinks)


def _rebuild(key: tuple) -> Activation:
    """The activation of a key (the inverse of ``Activation.key``; used by pickle)."""
    kind = key[0]
    if kind == "builtin":
        return activation(key[1], **dict(key[2]))
    if kind == "expr":
        return activation(key[1], kinks=key[2] or None)
    return activation(key[1], dphi=key[2], d2phi=key[3], kinks=key[4] or None)


def _is_sympy(spec) -> bool:
    """Whether ``spec`` may be a sympy object: never before sympy is imported (so a callable
    does not import it just to be told apart from a sympy function)."""
    return "sympy" in sys.modules


def _custom(spec, dphi, d2phi, kinks, params) -> Activation:
    """activation() for everything but a built-in name."""
    if _is_sympy(spec) and (isinstance(spec, (sp.FunctionClass, sp.Lambda))
                            or spec is sp.sqrt or spec is sp.cbrt):
        spec = _from_sympy_function(spec)
    if _is_sympy(spec) and isinstance(spec, sp.Basic):
        if not isinstance(spec, sp.Expr):
            raise TypeError(f"activation must be a name, sympy expression, string or callable, "
                            f"got the sympy {type(spec).__name__} {short_repr(str(spec))}")
        if params:
            raise TypeError("parameters are only accepted with a built-in activation name")
        try:
            _ex.check_expression(spec)
        except ValueError as exc:
            raise ValueError(f"activation expression {short_repr(str(spec))}: {exc}") from None
        return _from_expr(spec, kinks=kinks)
    if isinstance(spec, str):
        if params:
            raise TypeError("parameters are only accepted with a built-in activation name")
        try:
            expr = _ex.parse_expression(spec)
        except ValueError as exc:
            raise _unknown(spec, str(exc)) from None
        if _ex.X not in expr.free_symbols:
            raise _unknown(spec, "a custom expression must depend on x")
        return _from_expr(expr, kinks=kinks)
    if callable(spec):
        if params:
            raise TypeError("parameters are only accepted with a built-in activation name")
        return _from_callable(spec, dphi, d2phi, kinks)
    raise TypeError(f"activation must be a name, sympy expression, string or callable, "
                    f"got {type(spec).__name__}")


def normalising_constants(act, q: float = 1.0) -> dict:
    """Exact constants of the 'scaled activation' phi_hat = (phi - mu) / sigma (Brock et al. 2021):
    ``mean`` = E[phi(sqrt(q) z)], ``std`` = sqrt(Var[phi(sqrt(q) z)]), ``gain`` = 1 / std, by quadrature
    (closed forms for linear, relu, leaky_relu, erf), not by Monte Carlo."""
    a = activation(act)
    q = positive_scalar("q", q)
    mu = float(a.mean(q))
    if isinstance(a, (_LeakyReLU, _Erf)):  # closed forms: E phi^2 - mu^2 has no cancellation
        var = float(a.second_moment(q)) - mu * mu
    else:  # E[(phi - mu)^2]: E phi^2 - mu^2 loses digits when mu^2 >> Var (sigmoid at small q)
        var = float(a._e1(lambda x: (a.phi(x) - mu) ** 2, q))
    if not var > (8.0 * np.finfo(float).eps * mu) ** 2:  # zero up to the rounding of mu
        raise ValueError(f"{a!r} has zero variance at q={q!r}: no normalising gain")
    return {"mean": mu, "std": math.sqrt(var), "gain": 1.0 / math.sqrt(var)}
