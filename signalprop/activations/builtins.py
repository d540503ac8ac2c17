"""The 13 built-in activations (names as in ``CONVENTIONS.md``), their closed forms, and the
registry that shares one object per built-in value.

Closed forms override the numerical engine of :mod:`signalprop.gaussian` where they exist:

* ``linear``: trivially Gaussian;
* ``relu``, ``leaky_relu``: the arc-cosine kernel of degree 1 (Cho & Saul 2009, eq. 6),
  written as ``phi(x) = (1+a)/2 x + (1-a)/2 |x|``;
* ``erf``: the arcsine kernel (Williams 1997, eq. 11);
* ``hard_tanh``, ``elu``, ``selu``: the Gaussian smoothing E[phi^(k)(m + s Z)] in closed form.

Their sympy expressions are recipes (:class:`.core.Deferred`) built on the first read of
``act.expr``: building a built-in, and every number computed from it, imports no sympy.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from scipy import special

from .._lazy import lazy_module
from .._validate import finite_scalar
from .core import Activation, Deferred, _set_key

sp = lazy_module("sympy")                 # only for the expressions, built on first read
_ex = lazy_module("signalprop.expr")       # its symbol x (signalprop.expr imports sympy)

_SQRT2 = math.sqrt(2.0)
_SQRT_2_PI = math.sqrt(2.0 / math.pi)


def _npdf(t):
    return np.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)


def _ratio(m, s):
    """m / s with the limits s -> 0 taken (sign(m) * inf, and 0 for m = 0)."""
    m, s = np.broadcast_arrays(np.asarray(m, float), np.asarray(s, float))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = m / s
        return np.where(s > 0, t, np.where(m == 0, 0.0, np.sign(m) * np.inf))


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


def _sym(build) -> Deferred:
    """The sympy expression ``build(x)`` (x the symbol of :mod:`signalprop.expr`), built on the
    first read of ``act.expr``."""
    return Deferred(lambda: build(_ex.X))


def _make(name: str, **params) -> Activation:
    if name == "linear":
        return _LeakyReLU(name, lambda v: np.asarray(v, float) * 1.0,
                          lambda v: np.ones(np.shape(v)), lambda v: np.zeros(np.shape(v)),
                          expr=_sym(lambda x: x), tau=math.inf, odd=True)
    if name in ("relu", "leaky_relu"):
        a = finite_scalar("slope", params.get("slope", 0.01)) if name == "leaky_relu" else 0.0
        if name == "leaky_relu":
            if not 0.0 <= a <= 1.0:
                raise ValueError(f"slope must lie in [0, 1], got {a!r}")
        p = {"slope": a} if name == "leaky_relu" else {}
        return _LeakyReLU(name, lambda v: np.where(v > 0, v, a * np.asarray(v, float)),
                          lambda v: np.where(np.asarray(v) > 0, 1.0, a),
                          lambda v: np.zeros(np.shape(v)),
                          expr=_sym(lambda x: sp.Piecewise((x, x > 0), (a * x, True))),
                          params=p, kinks=(0.0,))
    if name == "erf":
        return _Erf(name, special.erf, lambda v: 2.0 / math.sqrt(math.pi) * np.exp(-np.square(v)),
                    lambda v: -4.0 / math.sqrt(math.pi) * v * np.exp(-np.square(v)),
                    expr=_sym(lambda x: sp.erf(x)), tau=_ERF_TAU, odd=True)
    if name == "tanh":
        return Activation(name, np.tanh, _sech2, lambda v: -2.0 * np.tanh(v) * _sech2(v),
                          expr=_sym(lambda x: sp.tanh(x)), tau=math.pi / 2, odd=True)
    if name == "sigmoid":
        def d1(v):
            s = _sig(v)
            return s * _sig(-v)
        # 1 - 2 sigmoid(v) = -tanh(v / 2), without the cancellation near v = 0
        return Activation(name, _sig, d1, lambda v: -d1(v) * np.tanh(0.5 * np.asarray(v, float)),
                          expr=_sym(lambda x: 1 / (1 + sp.exp(-x))), tau=math.pi)
    if name == "softplus":
        return Activation(name, lambda v: np.logaddexp(0.0, v), _sig,
                          lambda v: _sig(v) * _sig(-v),
                          expr=_sym(lambda x: sp.log(1 + sp.exp(x))),
                          tau=math.pi)
    if name in ("silu", "swish"):
        def d1(v):
            s = _sig(v)
            return s * (1.0 + v * _sig(-v))

        def d2(v):
            s, t = _sig(v), _sig(-v)
            return s * t * (2.0 + v * (t - s))
        return Activation("silu", lambda v: v * _sig(v), d1, d2,
                          expr=_sym(lambda x: x / (1 + sp.exp(-x))),
                          tau=math.pi)
    if name == "gelu":
        return Activation(name, lambda v: v * special.ndtr(v),
                          lambda v: special.ndtr(v) + v * _npdf(v),
                          lambda v: _npdf(v) * (2.0 - np.square(v)),
                          expr=_sym(lambda x: x * (1 + sp.erf(x / sp.sqrt(2))) / 2), tau=2.0)
    if name == "gelu_tanh":
        def e(x):
            return x * (1 + sp.tanh(sp.sqrt(2 / sp.pi)
                                    * (x + sp.Rational(44715, 1000000) * x**3))) / 2
        return Activation(name, *_gelu_tanh_funcs(), expr=_sym(e), tau=2.5)
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
            expr=_sym(lambda x: scale * sp.Piecewise((x, x > 0),
                                                     (alpha * (sp.exp(x) - 1), True))),
            params=p,
            kinks=(0.0,), smooth=_smooth_elu(alpha, scale))
    if name == "hard_tanh":
        return Activation(name, lambda v: np.clip(v, -1.0, 1.0),
                          lambda v: np.where(np.abs(v) < 1.0, 1.0, 0.0),
                          lambda v: np.zeros(np.shape(v)),
                          expr=_sym(lambda x: sp.Piecewise((-1, x < -1), (x, x < 1), (1, True))),
                          kinks=(-1.0, 1.0), smooth=_smooth_hard_tanh, odd=True)
    raise KeyError(name)


_NAMES = ("linear", "tanh", "sigmoid", "erf", "relu", "leaky_relu", "gelu", "gelu_tanh", "silu",
          "swish", "elu", "selu", "softplus", "hard_tanh")
_PARAMS = {"leaky_relu": ("slope",), "elu": ("alpha",)}


def activations() -> tuple[str, ...]:
    """The names of the built-in activations (``swish`` is an alias of ``silu``)."""
    return _NAMES


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
        _set_key(act, key, _rebuild_builtin)
        if len(_BUILTINS) >= _BUILTINS_MAX:
            for k in list(_BUILTINS)[:2]:
                _BUILTINS.pop(k)
        _BUILTINS[key] = act
        if cache_key is not None:
            _BUILTINS[cache_key] = act
    return act


def _rebuild_builtin(key: tuple) -> Activation:
    """The built-in activation of a key ``("builtin", name, params)`` (used by pickle)."""
    return _builtin(key[1], None, dict(key[2]))
