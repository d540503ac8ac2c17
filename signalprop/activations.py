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
"""

from __future__ import annotations

import io
import math
import tokenize
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Optional

import numpy as np
import sympy as sp
from scipy import special

from . import gaussian
from ._validate import check_finite, check_positive

__all__ = ["Activation", "activation", "activations", "normalising_constants"]

_X = sp.Symbol("x", real=True)
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
    kinks: points where phi' or phi'' jumps (quadrature panels are split there).
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

    def __repr__(self) -> str:
        p = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"activation({self.name!r}{', ' + p if p else ''})"

    # -- one-dimensional expectations, z ~ N(0, 1) -----------------------------------------
    def _e1(self, f, q):
        return gaussian.expect(f, q, kinks=self.kinks, tau=self.tau)

    def mean(self, q) -> Array:
        """E[phi(sqrt(q) z)] (0 for an odd phi)."""
        if self.odd:
            return np.zeros(np.shape(q))
        return self._e1(self.phi, q)

    def second_moment(self, q) -> Array:
        """E[phi(sqrt(q) z)^2]: the length map's integral (Poole et al. 2016, eq. 3)."""
        return self._e1(lambda x: self.phi(x) ** 2, q)

    def dphi_second_moment(self, q) -> Array:
        """E[phi'(sqrt(q) z)^2]: chi_1 / sigma_w^2 (Poole et al. 2016, eq. 7)."""
        return self._e1(lambda x: self.dphi(x) ** 2, q)

    def dphi_fourth_moment(self, q) -> Array:
        """E[phi'(sqrt(q) z)^4] (the second moment of D^2 in Pennington et al. 2017)."""
        return self._e1(lambda x: self.dphi(x) ** 4, q)

    def moments(self, q) -> tuple[Array, Array]:
        """(E[phi(sqrt(q) z)^2], E[phi'(sqrt(q) z)^2]) in one pass over the quadrature nodes."""
        if type(self).second_moment is not Activation.second_moment:
            return self.second_moment(q), self.dphi_second_moment(q)
        return self._e1((lambda x: self.phi(x) ** 2, lambda x: self.dphi(x) ** 2), q)

    def second_moment_slope(self, q) -> Array:
        """d/dq E[phi(sqrt(q) z)^2] = E[phi'^2 + phi phi''] (Stein's lemma).

        Computed as E[x phi(x) phi'(x)] / q with x = sqrt(q) z, which needs no phi'' and so holds
        for kinked activations as well (Schoenholz et al. 2017, the xi_q integral).
        """
        q = np.asarray(q, float)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = self._e1(lambda x: x * self.phi(x) * self.dphi(x), q) / q
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
        return self._e2(self.dphi, 1, q1, q2, c)

    def _e2(self, f, k, q1, q2, c):
        if self.smooth is not None:
            return gaussian.expect2_smoothed(f, lambda m, s: self.smooth(m, s, k), q1, q2, c,
                                             kinks=self.kinks)
        return gaussian.expect2(f, f, q1, q2, c, tau=self.tau, kinks=self.kinks)


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
        a = float(params.get("slope", 0.01)) if name == "leaky_relu" else 0.0
        if name == "leaky_relu":
            check_finite("slope", a)
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
            alpha, scale = float(params.get("alpha", 1.0)), 1.0
            check_finite("alpha", alpha)
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


def _from_expr(expr: sp.Expr, name: str = "custom") -> Activation:
    # a user's sp.Symbol("x") carries no assumptions and so is not _X: identify them by name
    expr = expr.subs({s: _X for s in expr.free_symbols if s.name == "x" and s != _X})
    free = expr.free_symbols
    if not free <= {_X}:
        extra = ", ".join(sorted(str(s) for s in free - {_X}))
        raise ValueError(f"activation expression must depend on x only; it also uses {extra}")
    undefined = expr.atoms(sp.core.function.AppliedUndef)
    if undefined:
        names = ", ".join(sorted(str(f.func) for f in undefined))
        raise ValueError(f"activation expression uses unknown functions: {names}")
    d1, d2 = sp.diff(expr, _X), sp.diff(expr, _X, 2)
    fs = [sp.lambdify(_X, e, modules=["numpy", "scipy"]) for e in (expr, d1, d2)]

    def vec(f):
        return lambda v: np.broadcast_to(np.asarray(f(np.asarray(v, float)), float), np.shape(v)) * 1.0
    odd = sp.expand(expr.subs(_X, -_X) + expr) == 0        # structural: no simplify
    return Activation(name, *(vec(f) for f in fs), expr=expr, tau=None, odd=bool(odd))


def _from_callable(fn: Callable, dphi: Optional[Callable], d2phi: Optional[Callable]) -> Activation:
    """A Python callable; missing derivatives by 6th-order central differences.

    The step is h = 1e-3 (1 + |x|); the truncation error is O(h^6 phi^(7)) and the rounding error
    O(eps |phi| / h), about 1e-12 relative for smooth phi of unit scale: documented, not exact.
    """
    def fd(f, order):
        c1 = np.array([-1, 9, -45, 0, 45, -9, 1]) / 60.0
        c2 = np.array([2, -27, 270, -490, 270, -27, 2]) / 180.0
        c = c1 if order == 1 else c2
        ks = np.arange(-3, 4)

        def g(v):
            v = np.asarray(v, float)
            h = 1e-3 * (1.0 + np.abs(v))
            return sum(ck * f(v + k * h) for ck, k in zip(c, ks) if ck != 0) / h**order
        return g
    f0 = lambda v: np.asarray(fn(np.asarray(v, float)), float)  # noqa: E731
    f1 = dphi if dphi is not None else fd(f0, 1)
    f2 = d2phi if d2phi is not None else (fd(f1, 1) if dphi is not None else fd(f0, 2))
    return Activation(getattr(fn, "__name__", "custom"), f0, f1, f2, expr=None, tau=None)


@lru_cache(maxsize=1)
def _sympy_names() -> frozenset:
    names = {"x", "True", "False", "sqrt", "cbrt", "root"}
    for n in dir(sp):
        obj = getattr(sp, n)
        if not n.startswith("_") and (isinstance(obj, sp.Basic) or
                                      (isinstance(obj, type) and issubclass(obj, sp.Basic))):
            names.add(n)
    return frozenset(names)


_OPS = {"(", ")", "+", "-", "*", "/", "**", ",", "<", ">", "<=", ">=", "==", "!="}


def _unsafe_token(spec: str) -> Optional[str]:
    """The first token of ``spec`` that a formula in x has no use for, else None.

    ``sympify`` evaluates its string with ``eval``, so ``activation("__import__('os')...")`` would
    run code: only x, numbers, arithmetic and comparison operators and the names of sympy
    functions and constants pass (no attribute access, strings, keywords or other names).
    """
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(spec).readline))
    except (tokenize.TokenError, SyntaxError):
        return None  # unbalanced or unterminated: sympify reports it as unparseable
    for t in toks:
        if t.type == tokenize.STRING or (t.type == tokenize.OP and t.string not in _OPS):
            return t.string
        if t.type == tokenize.NAME and t.string not in _sympy_names():
            return t.string
    return None


def activation(spec, /, *, dphi: Optional[Callable] = None, d2phi: Optional[Callable] = None,
               **params) -> Activation:
    """Build an activation.

    ``spec`` is a built-in name (see :func:`activations`; parameters ``slope`` for leaky_relu,
    ``alpha`` for elu), an :class:`Activation` (returned as is), a sympy expression or a string
    in ``x`` such as ``"x*tanh(x)"`` (derivatives by sympy), or a Python callable (derivatives
    ``dphi``, ``d2phi`` if given, else by finite differences).
    """
    if isinstance(spec, Activation):
        return spec
    if isinstance(spec, sp.Expr):
        return _from_expr(spec)
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in _NAMES:
            allowed = _PARAMS.get("silu" if key == "swish" else key, ())
            bad = set(params) - set(allowed)
            if bad:
                raise TypeError(f"activation {key!r} takes parameters {allowed or 'none'}, "
                                f"got {sorted(bad)}")
            return _make(key, **params)
        if params:
            raise TypeError("parameters are only accepted with a built-in activation name")
        bad_token = _unsafe_token(spec)
        if bad_token is not None:
            raise ValueError(f"unknown activation {spec!r}: not a built-in name "
                             f"({', '.join(_NAMES)}) and not a sympy expression in x "
                             f"({bad_token!r} is not a sympy function or constant)")
        try:
            expr = sp.sympify(spec, locals={"x": _X})
        except Exception:  # sympify evaluates the string: any failure means 'not an expression'
            raise ValueError(f"unknown activation {spec!r}: not a built-in name "
                             f"({', '.join(_NAMES)}) and not a sympy expression in x") from None
        if not isinstance(expr, sp.Expr) or _X not in expr.free_symbols:
            raise ValueError(f"unknown activation {spec!r}: known names are {', '.join(_NAMES)}; "
                             "a custom expression must depend on x")
        return _from_expr(expr)
    if callable(spec):
        return _from_callable(spec, dphi, d2phi)
    raise TypeError(f"activation must be a name, sympy expression, string or callable, "
                    f"got {type(spec).__name__}")


def normalising_constants(act, q: float = 1.0) -> dict:
    """Exact constants of the 'scaled activation' phi_hat = (phi - mu) / sigma (Brock et al. 2021):
    ``mean`` = E[phi(sqrt(q) z)], ``std`` = sqrt(Var[phi(sqrt(q) z)]), ``gain`` = 1 / std, by quadrature
    (closed forms for linear, relu, leaky_relu, erf), not by Monte Carlo."""
    a = activation(act)
    q = float(check_positive("q", q))
    mu = float(a.mean(q))
    if isinstance(a, (_LeakyReLU, _Erf)):  # closed forms: E phi^2 - mu^2 has no cancellation
        var = float(a.second_moment(q)) - mu * mu
    else:  # E[(phi - mu)^2]: E phi^2 - mu^2 loses digits when mu^2 >> Var (sigmoid at small q)
        var = float(a._e1(lambda x: (a.phi(x) - mu) ** 2, q))
    if not var > (8.0 * np.finfo(float).eps * mu) ** 2:  # zero up to the rounding of mu
        raise ValueError(f"{a!r} has zero variance at q={q!r}: no normalising gain")
    return {"mean": mu, "std": math.sqrt(var), "gain": 1.0 / math.sqrt(var)}
