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

from __future__ import annotations

import math
import pickle
import signal
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import sympy as sp
from scipy import special

from . import gaussian
from ._validate import finite_scalar, positive_scalar, short_repr
from .expr import FUNCTIONS, X as _X, check_expression, parse_expression

__all__ = ["Activation", "activation", "activations", "normalising_constants"]

_SQRT2 = math.sqrt(2.0)
_SQRT_2_PI = math.sqrt(2.0 / math.pi)
Array = np.ndarray


def _npdf(t):
    return np.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)


def _ratio(m, s):
    """m / s with the limits s -> 0 taken (sign(m) * inf, and 0 for m = 0)."""
    m, s = np.broadcast_arrays(np.asarray(m, float), np.asarray(s, float))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = m / s
        return np.where(s > 0, t, np.where(m == 0, 0.0, np.sign(m) * np.inf))


@dataclass(frozen=True, eq=False)
class Activation:
    """An elementwise nonlinearity ``phi`` with what mean-field theory needs of it.

    Attributes
    ----------
    name: registry name (or ``"custom"``); params: its parameters; expr: sympy expression in ``x``.
    phi, dphi, d2phi: vectorised numpy callables for phi, phi', phi''.
    kinks: points where phi, phi' or phi'' is not analytic (quadrature panels are split there).
        Built-ins: a plain tuple (phi is analytic up to each kink from either side). Custom
        activations: a :class:`signalprop.gaussian.Kinks`, found from the expression or declared
        with ``activation(f, kinks=...)``, whose ``singular`` ones (zeros of the base of x**0.7,
        declared kinks) the engine refines towards geometrically and extrapolates at, so
        integrable singularities such as phi' ~ x^(alpha - 1) are integrated accurately; it
        raises ValueError for a non-finite or non-integrable integrand.
    jumps: points where phi itself jumps (custom expressions such as ``Heaviside(x)``): phi' has
        a Dirac delta there, and the expectations of phi' raise ValueError instead of ignoring it.
    tau: half-width of the strip around the real axis where phi is analytic (``inf`` for
        entire functions of moderate growth, ``None`` when unknown); it decides between
        Gauss-Hermite and graded Gauss-Legendre quadrature (:mod:`signalprop.gaussian`).
    smooth: ``smooth(m, s, k)`` = E[phi^(k)(m + s Z)] in closed form, k = 0, 1 (kinked activations):
        turns the bivariate expectation into a one-dimensional integral split at the kinks.
    odd: phi(-x) = -phi(x), so E[phi(sqrt(q) z)] = 0 exactly (tanh, erf, hard_tanh, linear, and
        custom expressions that are odd term by term).
    """

    name: str
    phi: Callable[[Array], Array]
    dphi: Callable[[Array], Array]
    d2phi: Callable[[Array], Array]
    expr: Optional[sp.Expr] = None
    params: dict = field(default_factory=dict)
    kinks: tuple = ()
    tau: Optional[float] = None
    smooth: Optional[Callable] = None
    odd: bool = False
    jumps: tuple = ()

    #: what the activation is compared, hashed and pickled by: ("builtin", name, params),
    #: ("expr", sympy expression, declared kinks) or ("callable", fn, dphi, d2phi, kinks); set by
    #: :func:`activation`. An Activation built by hand without one compares by identity.
    key: tuple = field(default=(), repr=False)

    def __repr__(self) -> str:
        if self.key and self.key[0] == "expr":
            return f"activation({str(self.expr)!r})"
        p = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"activation({self.name!r}{', ' + p if p else ''})"

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        if not isinstance(other, Activation) or not self.key:
            return NotImplemented if not isinstance(other, Activation) else False
        return self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key) if self.key else id(self)

    def __reduce__(self):
        """Pickles as the recipe :func:`activation` rebuilds it from (built-ins by name and
        parameters, expressions by their sympy tree, callables by reference)."""
        if not self.key:
            raise TypeError(f"{self!r} was not built by signalprop.activation(): it cannot be "
                            "pickled")
        if self.key[0] == "callable":
            for f in self.key[1:4]:
                if f is None:
                    continue
                try:
                    pickle.dumps(f)
                except Exception:
                    raise TypeError(
                        f"activation({getattr(f, '__qualname__', f)!s}) cannot be pickled: its "
                        "callable does not pickle (define it at module level, or use a built-in "
                        "name or an expression string)") from None
        return (_rebuild, (self.key,))

    @property
    def _custom(self) -> bool:
        """A custom activation (expression or callable): its kinks are a gaussian.Kinks."""
        return isinstance(self.kinks, gaussian.Kinks)

    # -- one-dimensional expectations, z ~ N(0, 1) -----------------------------------------
    def _e1(self, f, q, what=None):
        try:
            with _deferred_warnings(self._custom):
                return gaussian.expect(f, q, kinks=self.kinks, tau=self.tau)
        except gaussian.IntegrandError as e:
            if what is None:
                raise
            w = what[e.index] if isinstance(what, tuple) else what
            raise ValueError(f"{w}: {e}") from None

    def _no_jumps(self, what, at_zero_ok=False):
        """ValueError if phi jumps (at x != 0 when ``at_zero_ok``): phi' then has a Dirac delta."""
        for k, left, right in self.jumps:
            if not (at_zero_ok and k == 0.0):
                raise ValueError(
                    f"{what}: {getattr(self.kinks, 'label', repr(self))} jumps at x = {k!r} (from "
                    f"{left!r} to {right!r}), so phi' has a Dirac delta there and this "
                    "expectation is infinite (chi_1 = inf: the correlation map has infinite "
                    "slope at c = 1). For the pointwise derivative that backpropagation uses, "
                    "which ignores the jump, pass phi as a callable with dphi=...")

    def mean(self, q) -> Array:
        """E[phi(sqrt(q) z)] (0 for an odd phi)."""
        if self.odd:
            return np.zeros(np.shape(q))
        return self._e1(self.phi, q, "E[phi(sqrt(q) z)]")

    def second_moment(self, q) -> Array:
        """E[phi(sqrt(q) z)^2]: the length map's integral (Poole et al. 2016, eq. 3)."""
        return self._e1(lambda x: self.phi(x) ** 2, q, "E[phi(sqrt(q) z)^2]")

    def dphi_second_moment(self, q) -> Array:
        """E[phi'(sqrt(q) z)^2]: chi_1 / sigma_w^2 (Poole et al. 2016, eq. 7)."""
        self._no_jumps("E[phi'(sqrt(q) z)^2]")
        return self._e1(lambda x: self.dphi(x) ** 2, q, "E[phi'(sqrt(q) z)^2]")

    def dphi_fourth_moment(self, q) -> Array:
        """E[phi'(sqrt(q) z)^4] (the second moment of D^2 in Pennington et al. 2017)."""
        self._no_jumps("E[phi'(sqrt(q) z)^4]")
        return self._e1(lambda x: self.dphi(x) ** 4, q, "E[phi'(sqrt(q) z)^4]")

    def moments(self, q) -> tuple[Array, Array]:
        """(E[phi(sqrt(q) z)^2], E[phi'(sqrt(q) z)^2]) in one pass over the quadrature nodes."""
        if type(self).second_moment is not Activation.second_moment:
            return self.second_moment(q), self.dphi_second_moment(q)
        self._no_jumps("moments: E[phi'(sqrt(q) z)^2]")
        return self._e1((lambda x: self.phi(x) ** 2, lambda x: self.dphi(x) ** 2), q,
                        ("moments: E[phi(sqrt(q) z)^2]", "moments: E[phi'(sqrt(q) z)^2]"))

    def second_moment_slope(self, q) -> Array:
        """d/dq E[phi(sqrt(q) z)^2] = E[phi'^2 + phi phi''] (Stein's lemma).

        Computed as E[x phi(x) phi'(x)] / q with x = sqrt(q) z, which needs no phi'' and so holds
        for kinked activations as well (Schoenholz et al. 2017, the xi_q integral). A jump of phi
        at x = 0 adds nothing (x = 0 there); one elsewhere would, and raises ValueError.
        """
        self._no_jumps("d/dq E[phi(sqrt(q) z)^2]", at_zero_ok=True)
        q = np.asarray(q, float)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = self._e1(lambda x: x * self.phi(x) * self.dphi(x), q,
                           "E[x phi(x) phi'(x)], x = sqrt(q) z") / q
        if np.any(q == 0):  # the limit q -> 0+: E[phi'^2 + phi phi''] at x = 0, one-sided at a kink
            t = np.array([-np.finfo(float).tiny, np.finfo(float).tiny])
            lim = np.mean(self.dphi(t) ** 2 + self.phi(np.zeros(2)) * self.d2phi(t))
            out = np.where(q == 0, lim, out)
        return out

    def mehler_coefficients(self, q: float) -> Optional[Array]:
        """a_k with E[phi(u1) phi(u2)] = sum_k a_k^2 c^k for u ~ N(0, q [[1, c], [c, 1]]) (Mehler's
        formula), or None where the series is not the right tool (kinks, unknown analyticity,
        closed forms, or q so large that it would need more than 640 terms)."""
        if (self.tau is None or self.kinks or self.smooth is not None
                or type(self).cross_moment is not Activation.cross_moment):
            return None
        return gaussian.mehler_coefficients(self.phi, float(q), self.tau)

    # -- bivariate expectations ------------------------------------------------------------
    def cross_moment(self, q1, q2, c) -> Array:
        """E[phi(u1) phi(u2)], (u1, u2) ~ N(0, [[q1, r], [r, q2]]), r = c sqrt(q1 q2)."""
        return self._e2(self.phi, 0, q1, q2, c)

    def dphi_cross_moment(self, q1, q2, c) -> Array:
        """E[phi'(u1) phi'(u2)]: chi_c / sigma_w^2 (Schoenholz et al. 2017, eq. 9)."""
        self._no_jumps("E[phi'(u1) phi'(u2)]")
        return self._e2(self.dphi, 1, q1, q2, c)

    def _e2(self, f, k, q1, q2, c):
        if self.smooth is not None:
            return gaussian.expect2_smoothed(f, lambda m, s: self.smooth(m, s, k), q1, q2, c,
                                             kinks=self.kinks)
        what = "E[phi(u1) phi(u2)]" if k == 0 else "E[phi'(u1) phi'(u2)]"
        try:
            with _deferred_warnings(self._custom):
                out = gaussian.expect2(f, f, q1, q2, c, tau=self.tau, kinks=self.kinks)
        except gaussian.IntegrandError as e:
            raise ValueError(f"{what}: {e}") from None
        if isinstance(self.kinks, gaussian.Kinks):   # a custom activation: never nan silently
            _check_bivariate(out, self.kinks.label, what, q1, q2, c)
        return out


@contextmanager
def _deferred_warnings(active: bool):
    """For a custom activation (``active``): numpy's floating-point warnings silenced (the engine
    checks every value and raises a ValueError naming the activation and the x where one is not
    finite), and the engine's own warnings held back and emitted only when a result is returned:
    where the expectation fails, the error alone is the answer (no RuntimeWarning lines before
    it, e.g. for ``"sin(1/x)"`` or ``"exp(x**2)"``)."""
    if not active:
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(all="ignore"):
            yield
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


class _Jumping(Activation):
    """A custom expression whose phi jumps (``jumps``), e.g. ``Heaviside(x)``: phi' has a Dirac
    delta there, and the expectations of phi' raise ValueError. ``moments`` is its own method so
    that :mod:`signalprop.tables` asks it (and gets the error) rather than integrating the
    pointwise phi'^2 itself."""

    def moments(self, q):
        return Activation.moments(self, q)


def _check_bivariate(out, label, what, q1, q2, c):
    """ValueError where a bivariate expectation of a custom activation is not finite at valid
    (q1, q2, c) (nan inputs stay nan)."""
    q1, q2, c, o = np.broadcast_arrays(*(np.asarray(v, float) for v in (q1, q2, c, out)))
    ok = np.isfinite(q1) & np.isfinite(q2) & np.isfinite(c) & (q1 >= 0) & (q2 >= 0)
    bad = np.flatnonzero((ok & ~np.isfinite(o)).ravel())
    if bad.size:
        i = bad[0]
        raise ValueError(f"{what} of {label} is {o.ravel()[i]!r} at q1 = {q1.ravel()[i]!r}, "
                         f"q2 = {q2.ravel()[i]!r}, c = {c.ravel()[i]!r}: phi or phi' is not "
                         "finite, or not square-integrable, there")


# --------------------------------------------------------------------------------------------
# closed-form kernels


class _LeakyReLU(Activation):
    """phi(x) = max(x, a x) = (1+a)/2 x + (1-a)/2 |x|, 0 <= a <= 1 (a = 0: relu, a = 1: linear).

    E|u1||u2| = (2/pi) sqrt(q1 q2) (sqrt(1 - c^2) + c arcsin c): the degree-1 arc-cosine kernel
    (Cho & Saul 2009, eq. 6); E[sgn u1 sgn u2] = (2/pi) arcsin c (Sheppard's formula).
    """

    @property
    def _ab(self):
        a = self.params.get("slope", 0.0) if self.name != "linear" else 1.0
        return (1.0 + a) / 2.0, (1.0 - a) / 2.0

    def mean(self, q):
        A, B = self._ab
        return B * _SQRT_2_PI * np.sqrt(np.asarray(q, float))

    homogeneous = True   # phi(a x) = a phi(x) for a > 0: E[phi^2] scales with q, the rest not

    def scalar_kernel(self, q: float, c: Optional[float]) -> tuple:
        """(E[phi^2], E[phi'^2], E[phi(u1)phi(u2)] / E[phi^2]) at one (q, c), in plain floats:
        the same closed forms as the array methods, for the layer-by-layer loop of ``predict``."""
        A, B = self._ab
        s = A * A + B * B
        rho = None
        if c is not None:
            rho = (A * A * c + B * B * (2.0 / math.pi) * (math.sqrt(max(0.0, 1.0 - c * c))
                                                          + c * math.asin(c))) / s
        return s * q, s, rho

    def second_moment(self, q):
        A, B = self._ab
        return (A * A + B * B) * np.asarray(q, float)

    def second_moment_slope(self, q):
        A, B = self._ab
        return np.full(np.shape(q), A * A + B * B)

    def dphi_second_moment(self, q):
        A, B = self._ab
        return np.full(np.shape(q), A * A + B * B)

    def dphi_fourth_moment(self, q):
        A, B = self._ab
        return np.full(np.shape(q), ((A + B) ** 4 + (A - B) ** 4) / 2.0)

    def cross_moment(self, q1, q2, c):
        A, B = self._ab
        q1, q2, c = np.broadcast_arrays(*(np.asarray(v, float) for v in (q1, q2, c)))
        c = np.clip(c, -1.0, 1.0)  # as the numerical engine: c = 1 + 1e-16 from rounding is c = 1
        s = np.sqrt(q1) * np.sqrt(q2)
        abs_k = (2.0 / math.pi) * s * (np.sqrt(np.clip(1.0 - c * c, 0.0, None)) + c * np.arcsin(c))
        return A * A * c * s + B * B * abs_k

    def dphi_cross_moment(self, q1, q2, c):
        A, B = self._ab
        c = np.broadcast_arrays(np.asarray(q1, float), np.asarray(q2, float), np.asarray(c, float))[2]
        return A * A + B * B * (2.0 / math.pi) * np.arcsin(np.clip(c, -1.0, 1.0))


class _Erf(Activation):
    """phi = erf. Arcsine kernel (Williams 1997, eq. 11):
    E[erf(u1) erf(u2)] = (2/pi) arcsin(2 r / sqrt((1 + 2 q1)(1 + 2 q2))), and
    E[erf'(u1) erf'(u2)] = (4/pi) / sqrt((1 + 2 q1)(1 + 2 q2) - 4 r^2) (a Gaussian integral of
    exp(-u1^2 - u2^2)); r = c sqrt(q1 q2).
    """

    def mean(self, q):
        return np.zeros(np.shape(q))

    def scalar_kernel(self, q: float, c: Optional[float]) -> tuple:
        """(E[erf^2], E[erf'^2], E[erf(u1)erf(u2)] / E[erf^2]) at one (q, c), in plain floats."""
        v = math.asin(2.0 * q / (1.0 + 2.0 * q))
        rho = None if c is None else math.asin(2.0 * q * c / (1.0 + 2.0 * q)) / v
        return (2.0 / math.pi) * v, (4.0 / math.pi) / math.sqrt(1.0 + 4.0 * q), rho

    def second_moment(self, q):
        q = np.asarray(q, float)
        return (2.0 / math.pi) * np.arcsin(2.0 * q / (1.0 + 2.0 * q))

    def second_moment_slope(self, q):
        q = np.asarray(q, float)
        # d/dq (2/pi) arcsin(2q/(1+2q)) = (4/pi) / ((1+2q) sqrt(1+4q))
        return (4.0 / math.pi) / ((1.0 + 2.0 * q) * np.sqrt(1.0 + 4.0 * q))

    def dphi_second_moment(self, q):
        return (4.0 / math.pi) / np.sqrt(1.0 + 4.0 * np.asarray(q, float))

    def dphi_fourth_moment(self, q):
        return (16.0 / math.pi**2) / np.sqrt(1.0 + 8.0 * np.asarray(q, float))

    def cross_moment(self, q1, q2, c):
        q1, q2, c = (np.asarray(v, float) for v in (q1, q2, c))
        r = np.clip(c, -1.0, 1.0) * np.sqrt(q1 * q2)
        return (2.0 / math.pi) * np.arcsin(2.0 * r / np.sqrt((1.0 + 2.0 * q1) * (1.0 + 2.0 * q2)))

    def dphi_cross_moment(self, q1, q2, c):
        q1, q2, c = (np.asarray(v, float) for v in (q1, q2, c))
        c = np.clip(c, -1.0, 1.0)
        # (1 + 2 q1)(1 + 2 q2) - 4 r^2 without its cancellation as |c| -> 1 at large q
        det = 1.0 + 2.0 * q1 + 2.0 * q2 + 4.0 * q1 * q2 * (1.0 - c) * (1.0 + c)
        return (4.0 / math.pi) / np.sqrt(det)


# --------------------------------------------------------------------------------------------
# closed-form Gaussian smoothing E[phi^(k)(m + s Z)] of kinked activations


def _smooth_hard_tanh(m, s, k):
    """E[clip(Y, -1, 1)] and P(-1 < Y < 1) for Y ~ N(m, s^2)."""
    al, be = _ratio(-1.0 - m, s), _ratio(1.0 - m, s)
    inside = special.ndtr(be) - special.ndtr(al)
    if k == 1:
        return inside
    tails = s * (_npdf(al) - _npdf(be))
    return special.ndtr(al) * -1.0 + special.ndtr(-be) + m * inside + tails


def _smooth_elu(alpha, scale):
    def smooth(m, s, k):
        """E[elu(Y)] = E[Y; Y>0] + alpha (E[e^Y; Y<0] - P(Y<0)), Y ~ N(m, s^2); and its phi'."""
        m, s = np.broadcast_arrays(np.asarray(m, float), np.asarray(s, float))
        t = _ratio(m, s)
        with np.errstate(invalid="ignore", over="ignore"):
            # E[e^Y; Y < 0] = exp(m + s^2/2) Phi(-m/s - s), in logs to avoid overflow
            tail = np.exp(m + 0.5 * s * s + special.log_ndtr(-t - s))
        tail = np.where(s > 0, tail, np.where(m < 0, np.exp(np.minimum(m, 0.0)), 0.0))
        if k == 1:
            return scale * (special.ndtr(t) + alpha * tail)
        pos = m * special.ndtr(t) + s * _npdf(t)
        return scale * (pos + alpha * (tail - special.ndtr(-t)))
    return smooth


# --------------------------------------------------------------------------------------------
# the registry

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_GELU_K = math.sqrt(2.0 / math.pi)


def _sech2(x):
    e = np.exp(-2.0 * np.abs(x))
    return 4.0 * e / (1.0 + e) ** 2


def _sig(x):
    return special.expit(x)


# erf is entire but grows like exp(y^2) off the real axis: for the quadrature rules it behaves
# like a function analytic in a strip of this half-width (erf(x) = 2 Phi(sqrt(2) x) - 1, and
# gelu = x Phi(x) uses 2.0); tau = inf would make Gauss-Hermite use 24 nodes at any q.
_ERF_TAU = 1.4


def _gelu_tanh_funcs():
    """gelu_tanh and its derivatives with 1 + tanh(y) = 2 sigmoid(2 y) and sech^2 y =
    4 sigmoid(2 y) sigmoid(-2 y): no cancellation in the tails (lambdified sympy loses all digits
    of phi(-10) ~ -1e-37 and of phi', phi'' for |x| >~ 5)."""
    k3 = 0.044715

    def parts(v):
        v = np.asarray(v, float)
        y = _GELU_K * (v + k3 * v**3)
        y1 = _GELU_K * (1.0 + 3.0 * k3 * v * v)        # y'
        return v, y, y1, _sig(2.0 * y), _sig(-2.0 * y)

    def f0(v):
        v, _, _, s, _ = parts(v)
        return v * s

    def f1(v):
        v, _, y1, s, t = parts(v)
        return s + 2.0 * v * y1 * s * t

    def f2(v):
        v, y, y1, s, t = parts(v)
        y2 = 6.0 * _GELU_K * k3 * v                    # y''
        return s * t * (4.0 * y1 + 2.0 * v * y2 - 4.0 * v * y1 * y1 * np.tanh(y))
    return f0, f1, f2


def _make(name: str, **params) -> Activation:
    x = _X
    if name == "linear":
        return _LeakyReLU(name, lambda v: np.asarray(v, float) * 1.0,
                          lambda v: np.ones(np.shape(v)), lambda v: np.zeros(np.shape(v)),
                          expr=x, tau=math.inf, odd=True)
    if name in ("relu", "leaky_relu"):
        a = finite_scalar("slope", params.get("slope", 0.01)) if name == "leaky_relu" else 0.0
        if name == "leaky_relu":
            if not 0.0 <= a <= 1.0:
                raise ValueError(f"slope must lie in [0, 1], got {a!r}")
        p = {"slope": a} if name == "leaky_relu" else {}
        return _LeakyReLU(name, lambda v: np.where(v > 0, v, a * np.asarray(v, float)),
                          lambda v: np.where(np.asarray(v) > 0, 1.0, a),
                          lambda v: np.zeros(np.shape(v)),
                          expr=sp.Piecewise((x, x > 0), (a * x, True)), params=p, kinks=(0.0,))
    if name == "erf":
        return _Erf(name, special.erf, lambda v: 2.0 / math.sqrt(math.pi) * np.exp(-np.square(v)),
                    lambda v: -4.0 / math.sqrt(math.pi) * v * np.exp(-np.square(v)),
                    expr=sp.erf(x), tau=_ERF_TAU, odd=True)
    if name == "tanh":
        return Activation(name, np.tanh, _sech2, lambda v: -2.0 * np.tanh(v) * _sech2(v),
                          expr=sp.tanh(x), tau=math.pi / 2, odd=True)
    if name == "sigmoid":
        def d1(v):
            s = _sig(v)
            return s * _sig(-v)
        # 1 - 2 sigmoid(v) = -tanh(v / 2), without the cancellation near v = 0
        return Activation(name, _sig, d1, lambda v: -d1(v) * np.tanh(0.5 * np.asarray(v, float)),
                          expr=1 / (1 + sp.exp(-x)), tau=math.pi)
    if name == "softplus":
        return Activation(name, lambda v: np.logaddexp(0.0, v), _sig,
                          lambda v: _sig(v) * _sig(-v), expr=sp.log(1 + sp.exp(x)), tau=math.pi)
    if name in ("silu", "swish"):
        def d1(v):
            s = _sig(v)
            return s * (1.0 + v * _sig(-v))

        def d2(v):
            s, t = _sig(v), _sig(-v)
            return s * t * (2.0 + v * (t - s))
        return Activation("silu", lambda v: v * _sig(v), d1, d2, expr=x / (1 + sp.exp(-x)),
                          tau=math.pi)
    if name == "gelu":
        return Activation(name, lambda v: v * special.ndtr(v),
                          lambda v: special.ndtr(v) + v * _npdf(v),
                          lambda v: _npdf(v) * (2.0 - np.square(v)),
                          expr=x * (1 + sp.erf(x / sp.sqrt(2))) / 2, tau=2.0)
    if name == "gelu_tanh":
        e = x * (1 + sp.tanh(sp.sqrt(2 / sp.pi) * (x + sp.Rational(44715, 1000000) * x**3))) / 2
        return Activation(name, *_gelu_tanh_funcs(), expr=e, tau=2.5)
    if name in ("elu", "selu"):
        if name == "elu":
            alpha, scale = finite_scalar("alpha", params.get("alpha", 1.0)), 1.0
            if alpha < 0:
                raise ValueError(f"alpha must be >= 0, got {alpha!r}")
            p = {"alpha": alpha}
        else:
            alpha, scale, p = _SELU_ALPHA, _SELU_SCALE, {}
        return Activation(
            name,
            lambda v: scale * np.where(v > 0, v, alpha * np.expm1(np.minimum(v, 0.0))),
            lambda v: scale * np.where(np.asarray(v) > 0, 1.0, alpha * np.exp(np.minimum(v, 0.0))),
            lambda v: scale * np.where(np.asarray(v) > 0, 0.0, alpha * np.exp(np.minimum(v, 0.0))),
            expr=scale * sp.Piecewise((x, x > 0), (alpha * (sp.exp(x) - 1), True)), params=p,
            kinks=(0.0,), smooth=_smooth_elu(alpha, scale))
    if name == "hard_tanh":
        return Activation(name, lambda v: np.clip(v, -1.0, 1.0),
                          lambda v: np.where(np.abs(v) < 1.0, 1.0, 0.0),
                          lambda v: np.zeros(np.shape(v)),
                          expr=sp.Piecewise((-1, x < -1), (x, x < 1), (1, True)),
                          kinks=(-1.0, 1.0), smooth=_smooth_hard_tanh, odd=True)
    raise KeyError(name)


_NAMES = ("linear", "tanh", "sigmoid", "erf", "relu", "leaky_relu", "gelu", "gelu_tanh", "silu",
          "swish", "elu", "selu", "softplus", "hard_tanh")
_PARAMS = {"leaky_relu": ("slope",), "elu": ("alpha",)}


def activations() -> tuple[str, ...]:
    """The names of the built-in activations (``swish`` is an alias of ``silu``)."""
    return _NAMES


# --------------------------------------------------------------------------------------------
# custom activations: kinks, branch-wise derivatives, jumps

_PIECEWISE_ATOMS = (sp.Max, sp.Min, sp.Abs, sp.sign, sp.Heaviside)
_KINK_RANGE = 100      # kinks of periodic expressions (Abs(sin(x))) are looked for in |x| <= this
_MAX_KINKS = 32        # at most this many kinks, those nearest 0 (each costs ~1200 nodes)


def _piecewise_form(expr):
    """``expr`` as one top-level Piecewise whose branches are free of Max, Min, Abs, sign and
    Heaviside (sympy's ``rewrite(Piecewise)`` on those atoms, then ``piecewise_fold``), or None
    when it has none of them and no Piecewise.

    Why: differentiated as written, Max(x, 0)**0.7 gives 0.7 Heaviside(x) Max(x, 0)**-0.3, which
    is 0 * inf = nan for every x < 0; x Heaviside(x) gives a DiracDelta that numpy cannot
    evaluate. Folded, the function is one analytic expression on each interval between kinks,
    Piecewise((0, x <= 0), (x**0.7, True)); differentiated branch by branch it gives the pointwise
    derivative on each open interval, Piecewise((0, x <= 0), (0.7/x**0.3, True)), with no
    distributional terms. The kinks themselves are a null set for the Gaussian expectations, and
    the jumps of phi, where its distributional derivative does have a delta, are found
    separately (``_expr_jumps``).
    """
    if not (expr.atoms(*_PIECEWISE_ATOMS) or expr.atoms(sp.Piecewise)):
        return None
    try:
        flat = expr.replace(lambda e: isinstance(e, _PIECEWISE_ATOMS),
                            lambda e: e.rewrite(sp.Piecewise))
        return sp.piecewise_fold(flat)
    except Exception:  # noqa: BLE001 - sympy failed to fold: keep the expression as written
        return None


def _kink_candidates(exprs) -> tuple[set, set]:
    """Expressions g(x) whose real zeros are where the activation may stop being analytic, in two
    sets: switch points between pieces (Piecewise conditions, arguments of Abs, sign and
    Heaviside, differences of Max and Min arguments), and points where a piece itself may be
    singular (bases of powers that are not non-negative integers, x**0.7 or 1/x, and arguments
    of log)."""
    switch, singular = set(), set()
    for e in exprs:
        for pw in e.atoms(sp.Piecewise):
            for _, cond in pw.args:
                for rel in (cond.atoms(sp.core.relational.Relational)
                            if isinstance(cond, sp.Basic) else ()):
                    switch.add(rel.lhs - rel.rhs)
        for a in e.atoms(sp.Abs, sp.sign, sp.Heaviside):
            switch.add(a.args[0])
        for a in e.atoms(sp.Max, sp.Min):
            switch.update(u - v for i, u in enumerate(a.args) for v in a.args[i + 1:])
        for a in e.atoms(sp.Pow):
            if a.base.has(_X) and not a.exp.has(_X) and not (a.exp.is_integer and
                                                           a.exp.is_nonnegative):
                singular.add(a.base)
        for a in e.atoms(sp.log):
            singular.add(a.args[0])

    def keep(gs):
        return {g for g in gs if isinstance(g, sp.Expr) and g.has(_X)}
    return keep(switch), keep(singular)


def _symbolic_zeros_ok(g) -> bool:
    """Whether solveset may be asked for the zeros of g: a small expression with at most one
    transcendental part (sin(x) - 1/2, log(x), x**0.7) and polynomial powers of degree <= 8.
    Beyond, solveset can run for seconds to minutes (sin(x) - cos(x), x**64 - x**63 + 5) and
    the numerical search is used."""
    if sp.count_ops(g) > 40:
        return False
    if any(p.exp.is_Integer and abs(p.exp) > 8 and p.base.has(_X) for p in g.atoms(sp.Pow)):
        return False
    parts = [f for f in g.atoms(sp.Function) if f.has(_X)]
    parts += [p for p in g.atoms(sp.Pow) if p.exp.has(_X)]
    return len(parts) <= 1


def _periodic_radius(sol) -> Optional[float]:
    """For a solution set that is a union of finite sets and arithmetic progressions
    {a n + b : n integer} (sin(x) = 0: {2 n pi} and {2 n pi + pi}), the radius r <= _KINK_RANGE
    of a box |x| <= r that holds at least _MAX_KINKS of its points (one progression alone
    does, so the box stays small: sin(1000 x) has 63662 zeros in |x| <= 100); None for any
    other set (sin(exp(x)) = 0: x = log(n pi)), which is then searched numerically."""
    r = float(_KINK_RANGE)
    for part in (sol.args if isinstance(sol, sp.Union) else (sol,)):
        if isinstance(part, sp.FiniteSet):
            continue
        if not (isinstance(part, sp.ImageSet) and len(part.lamda.variables) == 1
                and part.base_sets == (sp.S.Integers,)):
            return None
        n, e = part.lamda.variables[0], part.lamda.expr
        a, b = sp.diff(e, n), e.subs(n, 0)
        if not (a.is_number and b.is_number) or a == 0:
            return None
        r = min(r, abs(float(b)) + (_MAX_KINKS // 2 + 1) * abs(float(a)))
    return r


def _real_zeros(g) -> list:
    """The finite real zeros of g(x) (those of a periodic or numerically searched g within
    |x| <= _KINK_RANGE; where there are many, at least the _MAX_KINKS nearest 0, the ones
    ``_expr_kinks`` keeps). By sympy's solveset over the reals where ``_symbolic_zeros_ok``
    (a periodic solution set within the box of ``_periodic_radius``), else numerically: sign
    changes of g on a grid refined by brentq."""
    try:
        if not _symbolic_zeros_ok(g):
            raise NotImplementedError
        sol = sp.solveset(g, _X, domain=sp.S.Reals)
        if not isinstance(sol, sp.FiniteSet) and not sol.is_empty:
            r = _periodic_radius(sol)
            if r is None:
                raise NotImplementedError      # not a union of arithmetic progressions
            sol = sp.solveset(g, _X, domain=sp.Interval(-r, r))
        if isinstance(sol, sp.FiniteSet):
            pts = []
            for v in sol:       # real by construction; evaluation may leave a 1e-20 i residue
                c = complex(sp.N(v, 20))
                if v.is_real is not False and abs(c.imag) <= 1e-12 * (1.0 + abs(c.real)) \
                        and math.isfinite(c.real):
                    pts.append(c.real)
            return pts
        if sol.is_empty or isinstance(sol, sp.Interval):  # no zero / g = 0 on a whole interval
            return []
    except Exception:  # noqa: BLE001 - solveset raises NotImplementedError and others
        pass            # no symbolic answer: fall through to the numerical search below
    try:  # numerically: sign changes on a grid, refined by brentq
        fg = sp.lambdify(_X, g, modules=["numpy", "scipy"])
        t = np.linspace(-_KINK_RANGE, _KINK_RANGE, 200_001)
        with np.errstate(all="ignore"):
            v = np.broadcast_to(np.asarray(fg(t), float), t.shape)
        pts = list(t[v == 0])
        i = np.flatnonzero(np.isfinite(v[:-1]) & np.isfinite(v[1:]) & (v[:-1] * v[1:] < 0))
        i = i[np.argsort(np.abs(t[i]), kind="stable")[:_MAX_KINKS]]
        from scipy.optimize import brentq
        for j in i:
            with np.errstate(all="ignore"):
                pts.append(brentq(lambda u: float(fg(u)), t[j], t[j + 1], xtol=1e-15, rtol=1e-15))
        return pts
    except Exception:  # noqa: BLE001 - not evaluable: no kinks found from g
        return []


def _expr_kinks(exprs, label) -> tuple[tuple, tuple]:
    """(kinks, singular): the sorted distinct real kinks of the expressions
    (``_kink_candidates``), at most _MAX_KINKS (those nearest 0; a warning names the rest), and
    those among them where a piece may be singular (the others join analytic pieces, and the
    engine only splits its panels there, as for the built-ins)."""
    switch, singular = _kink_candidates(exprs)
    zeros = {}
    for g in switch | singular:
        for k in _real_zeros(g):
            k = float(k) + 0.0
            zeros[k] = zeros.get(k, False) or g in singular
    pts = sorted(zeros, key=lambda k: (abs(k), k))
    if len(pts) > _MAX_KINKS:
        import warnings
        warnings.warn(f"{label}: {len(pts)} kinks found; only the {_MAX_KINKS} nearest 0 (|x| <= "
                      f"{abs(pts[_MAX_KINKS - 1]):.4g}) are used by the quadrature",
                      RuntimeWarning, stacklevel=4)
        pts = pts[:_MAX_KINKS]
    return tuple(sorted(pts)), tuple(sorted(k for k in pts if zeros[k]))


def _branch_at(pw, x0):
    """The expression of the first branch of Piecewise ``pw`` whose condition holds at x0, or
    None if a condition cannot be decided there."""
    for e, cond in pw.args:
        c = cond.subs(_X, x0) if isinstance(cond, sp.Basic) else cond
        if c is sp.true or c is True:
            return e
        if not (c is sp.false or c is False):
            return None
    return None


def _one_sided(e, k, direction):
    """lim e(x) as x -> k from ``direction`` ('+', '-') as a float (inf/nan where unbounded or
    undecided)."""
    try:
        v = complex(sp.N(e.subs(_X, k), 20))
        if not (v.imag == 0 and math.isfinite(v.real)):
            v = complex(sp.N(sp.limit(e, _X, k, direction), 20))
        return v.real if v.imag == 0 else math.nan
    except Exception:  # noqa: BLE001
        return math.nan


def _expr_jumps(pw, kinks) -> tuple:
    """(k, phi(k-), phi(k+)) for every kink k where the folded Piecewise ``pw`` jumps by more than
    1e-12 (1 + |phi|) between finite one-sided limits (a branch with an infinite limit is a
    singularity, left to the quadrature's integrability check)."""
    if not isinstance(pw, sp.Piecewise):
        return ()
    out = []
    ks = list(kinks)
    for i, k in enumerate(ks):
        lo = ks[i - 1] if i > 0 else k - 2.0
        hi = ks[i + 1] if i + 1 < len(ks) else k + 2.0
        el = _branch_at(pw, sp.Float((k + lo) / 2, 30))
        er = _branch_at(pw, sp.Float((k + hi) / 2, 30))
        if el is None or er is None:
            continue
        kk = sp.nsimplify(k) if k == int(k) else sp.Float(k, 30)
        left, right = _one_sided(el, kk, "-"), _one_sided(er, kk, "+")
        if math.isfinite(left) and math.isfinite(right) and \
                abs(left - right) > 1e-12 * (1.0 + abs(left) + abs(right)):
            out.append((k, left, right))
    return tuple(out)


def _check_kinks(kinks) -> tuple:
    if kinks is None:
        return ()
    if np.ndim(kinks) > 1:
        raise ValueError(f"kinks must be a number or a flat sequence of real numbers, got an "
                         f"array of shape {np.shape(kinks)}")
    try:
        pts = [float(k) for k in np.atleast_1d(np.asarray(kinks, float)).ravel()]
    except (TypeError, ValueError):
        raise ValueError(f"kinks must be a sequence of real numbers, got {kinks!r}") from None
    if not all(math.isfinite(k) for k in pts):
        raise ValueError(f"kinks must be finite real numbers, got {kinks!r}")
    return tuple(pts)


_EXPAND_BUDGET = 20_000   # most terms sympy's expand may produce in the structural oddness test


def _expanded_size(e) -> tuple[int, int]:
    """(terms, work): the number of terms of ``sp.expand(e)`` at the top level (an upper bound:
    like terms are not merged) and the total over e and every function argument inside it
    (``expand`` is deep). (a + b + c)**n has C(n + 2, 2) terms, a product multiplies."""
    if e.is_Add:
        parts = [_expanded_size(a) for a in e.args]
        return sum(t for t, _ in parts), sum(w for _, w in parts)
    if e.is_Mul:
        parts = [_expanded_size(a) for a in e.args]
        return math.prod(t for t, _ in parts), sum(w for _, w in parts)
    if e.is_Pow:
        t, w = _expanded_size(e.base)
        n = e.exp
        if n.is_Integer and n > 0 and t > 1:
            t = math.comb(int(n) + t - 1, t - 1)   # the multinomial expansion of (sum)**n
        return t, w + _expanded_size(e.exp)[1]
    work = 0
    for a in e.args:
        if isinstance(a, sp.Expr):
            t, w = _expanded_size(a)
            work += t + w
    return 1, work


def _is_odd(expr) -> bool:
    """phi(-x) = -phi(x) structurally: phi(-x) + phi(x) is 0 as sympy writes it, or after
    ``sp.expand`` where the expansion stays within _EXPAND_BUDGET terms (beyond, a few big
    polynomial powers of sums, the test is skipped: the mean is then integrated, not set to 0)."""
    s = expr.subs(_X, -_X) + expr
    if s == 0:
        return True
    t, w = _expanded_size(s)
    return t + w <= _EXPAND_BUDGET and sp.expand(s) == 0


#: wall-clock budget for turning an accepted expression into an activation (kinks, derivatives,
#: oddness): a string is accepted or refused within about a second (issue 10). Typical
#: expressions take 5-110 ms; the budget refuses the rare ones whose kink equations or piecewise
#: folding make sympy work for seconds.
BUILD_SECONDS = 1.0


class _OutOfTime(BaseException):   # not Exception: sympy code catches those
    pass


@contextmanager
def _deadline(seconds: float, label: str):
    """ValueError naming ``label`` if the block runs longer than ``seconds`` (wall clock). Uses
    SIGALRM (POSIX, main thread, and only when no other interval timer is running); elsewhere the
    block runs unbounded."""
    usable = (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
              and signal.getitimer(signal.ITIMER_REAL)[0] == 0.0)
    if not usable:
        yield
        return

    def ring(signum, frame):
        raise _OutOfTime

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _OutOfTime:
        raise ValueError(f"{label}: too complex to analyse within {seconds:g} s (its kinks or "
                         "piecewise parts make sympy work for longer); write a simpler expression "
                         "or pass phi as a callable with dphi, d2phi and kinks") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)


def _from_expr(expr: sp.Expr, name: str = "custom", kinks=None) -> Activation:
    """A sympy expression in x: derivatives by sympy, branch by branch where the expression has
    Max, Min, Abs, sign, Heaviside or Piecewise (``_piecewise_form``); kinks found automatically
    (``_expr_kinks``) plus any declared in ``kinks``; jumps of phi found (``_expr_jumps``).
    ``expr`` has passed :func:`signalprop.expr.check_expression` (whitelisted nodes, bounded
    numbers and exponents); a failure of sympy on it is a ValueError naming it."""
    # a user's sp.Symbol("x") carries no assumptions and so is not _X: identify them by name
    expr = expr.subs({s: _X for s in expr.free_symbols if s.name == "x" and s != _X})
    free = expr.free_symbols
    if not free <= {_X}:
        extra = ", ".join(sorted(str(s) for s in free - {_X}))
        raise ValueError(f"activation expression must depend on x only; it also uses {extra}")
    label = f"activation({short_repr(str(expr))})"
    try:
        with _deadline(BUILD_SECONDS, label):
            return _build_from_expr(expr, name, kinks, label)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - sympy's own failures (printing, folding, ...)
        msg = " ".join(str(exc).split())[:200]
        raise ValueError(f"{label}: sympy cannot turn it into numerical phi, phi', phi'' "
                         f"({type(exc).__name__}: {msg})") from None


_MAX_D1_NODES = 1000     # phi' and phi'' of a custom expression: larger ones take seconds to
_MAX_D2_NODES = 5000     # build (40 nested tanh: d2 has 46501 nodes; 20 sin factors: 15663)


def _sized(e, what: str, limit: int, label: str):
    """``e`` if its tree has at most ``limit`` nodes, else ValueError: the work on phi, phi',
    phi'' (kinks, lambdify, oddness) grows with their size, and a short string can make phi''
    huge (the chain and product rules)."""
    n = 0
    for _ in sp.preorder_traversal(e):
        n += 1
        if n > limit:
            raise ValueError(f"{label}: too large to differentiate: {what} has more than "
                             f"{limit} nodes (nested or multiplied functions; write a simpler "
                             "expression or pass phi as a callable with dphi and d2phi)")
    return e


def _diff_branches(pw) -> sp.Expr:
    """d/dx of a folded Piecewise branch by branch, with its conditions kept as they are: what
    ``sp.diff(pw, x)`` gives, without sympy's re-simplification of the conditions (which costs
    seconds to minutes for a few Heaviside or Max terms)."""
    if not isinstance(pw, sp.Piecewise):
        return sp.diff(pw, _X)
    return sp.Piecewise(*((sp.diff(e, _X), c) for e, c in pw.args), evaluate=False)


def _build_from_expr(expr, name, kinks, label) -> Activation:
    pw = _piecewise_form(expr)
    d1 = _sized(_diff_branches(expr if pw is None else pw), "phi'", _MAX_D1_NODES, label)
    d2 = _sized(_diff_branches(d1), "phi''", _MAX_D2_NODES, label)
    exprs = (expr if pw is None else pw, d1, d2)
    # pointwise derivatives: a DiracDelta (left where sympy could not fold) is zero off its point
    exprs = tuple(e.replace(lambda a: isinstance(a, sp.DiracDelta), lambda a: sp.S.Zero)
                  for e in exprs)
    for e in exprs:
        bad = e.atoms(sp.zoo, sp.nan, sp.oo, -sp.oo)
        if bad:
            raise ValueError(f"{label}: phi or a derivative contains {sorted(map(str, bad))[0]}")
    fs = [sp.lambdify(_X, e, modules=["numpy", "scipy"]) for e in exprs]

    def vec(f):
        # quiet: branches are evaluated everywhere and selected (x**-0.3 at x < 0 is fine), and
        # overflow (exp(x**2) at x = 30) gives inf, which the expectations refuse by name
        def g(v):
            with np.errstate(all="ignore"):
                return np.broadcast_to(np.asarray(f(np.asarray(v, float)), float), np.shape(v)) * 1.0
        return g
    found, singular = _expr_kinks(exprs, label)
    declared = _check_kinks(kinks)             # declared kinks: behaviour there unknown
    ks = gaussian.Kinks(found + declared, label, singular=singular + declared)
    jumps = _expr_jumps(pw, ks)
    cls = _Jumping if jumps else Activation
    return cls(name, *(vec(f) for f in fs), expr=expr, tau=None, odd=_is_odd(expr), kinks=ks,
               jumps=jumps)


_PROBE = np.linspace(-8.0, 8.0, 33)    # where a callable is tried once at construction


def _probe_callable(f: Callable, label: str, what: str) -> None:
    """TypeError unless ``f`` maps the float array _PROBE (shape (33,)) to real numbers of the
    same shape; ValueError if they are all non-finite. (Some non-finite values are allowed:
    np.log is undefined for x < 0, and the expectations refuse it there by name.)"""
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = f(_PROBE.copy())
    except Exception as exc:  # noqa: BLE001 - any failure of the user's function
        msg = " ".join(str(exc).split())[:160]
        raise TypeError(f"{label}: {what} must accept a float numpy array and act elementwise; "
                        f"called on an array of shape {_PROBE.shape} it raised "
                        f"{type(exc).__name__}: {msg}") from None
    shape = np.shape(raw)
    if shape != _PROBE.shape:
        raise TypeError(f"{label}: {what} must return an array of its input's shape (act "
                        f"elementwise); given shape {_PROBE.shape} it returned "
                        f"{type(raw).__name__} of shape {shape}")
    try:
        arr = np.asarray(raw)
        if np.iscomplexobj(arr):
            raise TypeError("complex")
        vals = np.asarray(arr, float)
    except (TypeError, ValueError):
        raise TypeError(f"{label}: {what} must return real numbers; it returned "
                        f"{short_repr(raw)}") from None
    if not np.any(np.isfinite(vals)):
        raise ValueError(f"{label}: {what} is not finite anywhere on x in [-8, 8] (e.g. "
                         f"{vals[16]!r} at x = 0): not an activation")


def _from_callable(fn: Callable, dphi: Optional[Callable], d2phi: Optional[Callable],
                   kinks=None) -> Activation:
    """A Python callable; missing derivatives by 6th-order central differences.

    The step is h = 1e-3 (1 + |x|); the truncation error is O(h^6 phi^(7)) and the rounding error
    O(eps |phi| / h), about 1e-12 relative for smooth phi of unit scale: documented, not exact.
    With declared ``kinks`` the step is also at most 1/64 of the distance to the nearest kink, so
    the stencil never straddles one (relative error ~1e-11 for phi ~ |x - k|^a next to it).
    ``fn`` (and ``dphi``, ``d2phi`` if given) are tried once on 33 points of [-8, 8]
    (``_probe_callable``): a function that is not elementwise is refused here, not deep inside
    a later computation.
    """
    kk = np.asarray(sorted(set(_check_kinks(kinks))), float)
    name = getattr(fn, "__name__", "custom")
    label = f"activation({getattr(fn, '__qualname__', name)})"
    for f, what in ((fn, "phi"), (dphi, "dphi"), (d2phi, "d2phi")):
        if f is not None:
            if not callable(f):
                raise TypeError(f"{label}: {what} must be callable, got {type(f).__name__}")
            _probe_callable(f, label, what)

    def step(v):
        h = 1e-3 * (1.0 + np.abs(v))
        if kk.size:
            dist = np.min(np.abs(v[..., None] - kk), axis=-1)
            h = np.where(dist > 0, np.minimum(h, dist / 64.0), h)  # at a kink: both sides
        return h

    def fd(f, order):
        c1 = np.array([-1, 9, -45, 0, 45, -9, 1]) / 60.0
        c2 = np.array([2, -27, 270, -490, 270, -27, 2]) / 180.0
        c = c1 if order == 1 else c2
        ks = np.arange(-3, 4)

        def g(v):
            v = np.asarray(v, float)
            h = step(v)
            with np.errstate(invalid="ignore", divide="ignore"):
                return sum(ck * f(v + k * h) for ck, k in zip(c, ks) if ck != 0) / h**order
        return g
    f0 = lambda v: np.asarray(fn(np.asarray(v, float)), float)  # noqa: E731
    f1 = dphi if dphi is not None else fd(f0, 1)
    f2 = d2phi if d2phi is not None else (fd(f1, 1) if dphi is not None else fd(f0, 2))
    return Activation(name, f0, f1, f2, expr=None, tau=None,
                      kinks=gaussian.Kinks(tuple(kk), label))


_ONE_ARGUMENT = {f.sympy for f in FUNCTIONS.values() if f.min_args == f.max_args == 1}


def _from_sympy_function(spec) -> sp.Expr:
    """A sympy function class (``sympy.tanh``) or one-variable ``sympy.Lambda`` as f(x)."""
    if isinstance(spec, sp.Lambda):
        if len(spec.variables) != 1:
            raise TypeError(f"activation: a sympy Lambda must take one variable, {spec} takes "
                            f"{len(spec.variables)}")
        return spec(_X)
    if spec in _ONE_ARGUMENT:       # sympy.tanh, and the functions sympy.sqrt, sympy.cbrt
        return spec(_X)
    known = ", ".join(sorted({getattr(f, "__name__", str(f)) for f in _ONE_ARGUMENT}))
    raise TypeError(f"activation: the sympy function {getattr(spec, '__name__', spec)} is not "
                    f"one of the one-argument functions accepted as f(x) ({known}); pass an "
                    "expression in x instead, e.g. sympy.Max(x, 0)")


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
    object.__setattr__(act, "key", key)      # at construction: the value it is compared by
    return act


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


_BUILTINS: dict = {}        # (name, params) -> Activation: one object per built-in value
_BUILTINS_MAX = 256         # bound: past it the oldest entries go


def _builtin(name: str, kinks, params: dict) -> Activation:
    """A built-in activation, one shared object per (name, parameters): equal values are the
    same object, so per-activation tables (signalprop.tables) are built once."""
    allowed = _PARAMS.get("silu" if name == "swish" else name, ())
    bad = set(params) - set(allowed)
    if bad:
        raise TypeError(f"activation {name!r} takes parameters {allowed or 'none'}, "
                        f"got {sorted(bad)}")
    if kinks is not None:
        raise TypeError(f"kinks are only accepted with a custom activation; {name!r} "
                        "knows its own")
    try:
        cache_key = (name, tuple(sorted(params.items())))
        hash(cache_key)
    except TypeError:           # an unhashable parameter: _make names it
        cache_key = None
    act = _BUILTINS.get(cache_key) if cache_key is not None else None
    if act is None:
        act = _make(name, **params)
        key = ("builtin", act.name, tuple(sorted(act.params.items())))
        act = _BUILTINS.get(key, act)     # the same value asked for with other spellings
        object.__setattr__(act, "key", key)
        if len(_BUILTINS) >= _BUILTINS_MAX:
            for k in list(_BUILTINS)[:2]:
                _BUILTINS.pop(k)
        _BUILTINS[key] = act
        if cache_key is not None:
            _BUILTINS[cache_key] = act
    return act


def _custom(spec, dphi, d2phi, kinks, params) -> Activation:
    """activation() for everything but a built-in name."""
    if isinstance(spec, (sp.FunctionClass, sp.Lambda)) or spec is sp.sqrt or spec is sp.cbrt:
        spec = _from_sympy_function(spec)
    if isinstance(spec, sp.Basic):
        if not isinstance(spec, sp.Expr):
            raise TypeError(f"activation must be a name, sympy expression, string or callable, "
                            f"got the sympy {type(spec).__name__} {short_repr(str(spec))}")
        if params:
            raise TypeError("parameters are only accepted with a built-in activation name")
        try:
            check_expression(spec)
        except ValueError as exc:
            raise ValueError(f"activation expression {short_repr(str(spec))}: {exc}") from None
        return _from_expr(spec, kinks=kinks)
    if isinstance(spec, str):
        if params:
            raise TypeError("parameters are only accepted with a built-in activation name")
        try:
            expr = parse_expression(spec)
        except ValueError as exc:
            raise _unknown(spec, str(exc)) from None
        if _X not in expr.free_symbols:
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
