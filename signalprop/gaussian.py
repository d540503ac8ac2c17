"""Gaussian expectations: ``E[f(sqrt(q) z)]`` and ``E[f(u1) g(u2)]`` for correlated Gaussians.

One engine, vectorised over arrays of ``q`` (and ``q1, q2, c``): a whole parameter grid is one
call. Two quadrature rules, chosen per call:

* **Gauss-Hermite** (probabilists' weight), ``n = max(24, ceil(1100 q / tau^2))`` nodes, for
  activations analytic in a strip ``|Im x| < tau`` (error ``~exp(-C tau sqrt(n / q))``: below
  3e-14 relative for every built-in smooth activation). Used when n <= 200.
* **Graded composite Gauss-Legendre** otherwise: 12-node panels on [-10, 10] in z split at a
  uniform grid of width 1.5, at ``x / sqrt(q)`` for ``x = 0, +-2^k`` (k = -3..6) and at the
  kinks; error below 1e-13 for q in [1e-6, 1e4] (truncation < 1e-20 relative).

Bivariate expectations: the rotated coordinates ``u1 = sqrt(q1)(a s + b d)``,
``u2 = sqrt(q2)(a s - b d)``, ``a = sqrt((1+c)/2)``, ``b = sqrt((1-c)/2)``, ``s, d`` i.i.d.
N(0, 1), with a trapezoidal rule per direction whose step follows its variance (``q a^2``,
``q b^2``); or the conditional form ``E_z[f(sqrt(q1) z) G(z)]`` (large q, kinks, unknown
analyticity); or a closed-form smoothing (``expect2_smoothed``). Custom activations with singular
kinks (:class:`Kinks`) use the checked rule :func:`expect_singular` (integrable ``|x - k|^p``,
p > -1, to ~1e-14 at k = 0; p <= -1 or a non-finite integrand raises :class:`IntegrandError`).
Accuracy is checked against mpmath (``tests/reference/make_reference.py``) in
``tests/test_gaussian.py``. Rules, calibration and error bounds: docs/theory/quadrature.md.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import Callable, Iterable, Optional

import numpy as np
from scipy import special

__all__ = ["expect", "expect2", "expect2_smoothed", "expect_singular", "hermite_rule",
           "graded_rule", "trapezoid_rule", "Kinks", "IntegrandError"]

Z_MAX = 10.0
_GL_ORDER = 12
_UNIFORM = np.linspace(-9.0, 9.0, 13)
_GRADED_X = np.concatenate([[0.0], 2.0 ** np.arange(-3, 7), -(2.0 ** np.arange(-3, 7))])
_GH_MAX = 200
_GH_MIN = 24
_GH_CONST = 1100.0
_CHUNK_ELEMS = 4_000_000


@lru_cache(maxsize=64)
def hermite_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilists' Gauss-Hermite nodes and weights normalised to sum to 1 (E over N(0, 1))."""
    x, w = special.roots_hermitenorm(n)
    return x, w / w.sum()


@lru_cache(maxsize=4)
def _legendre(order: int = _GL_ORDER):
    return np.polynomial.legendre.leggauss(order)


def _sorted_breakpoints(parts, shape) -> np.ndarray:
    """Breakpoints (arrays broadcastable to ``shape + (k,)``), nan -> 0 and +-inf -> +-Z_MAX, clipped
    to [-Z_MAX, Z_MAX], sorted, with the ends -Z_MAX and Z_MAX added."""
    bp = np.concatenate([np.nan_to_num(np.broadcast_to(p, shape + np.shape(p)[-1:]), nan=0.0,
                                       posinf=Z_MAX, neginf=-Z_MAX) for p in parts], axis=-1)
    bp = np.sort(np.clip(bp, -Z_MAX, Z_MAX), axis=-1)
    ends = np.full(shape + (1,), Z_MAX)
    return np.concatenate([-ends, bp, ends], axis=-1)


def _panel_rule(bp: np.ndarray, order: int = _GL_ORDER) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss-Legendre rule for E over N(0, 1) on the sorted breakpoints ``bp[..., :]``."""
    t, wt = _legendre(order)
    half = 0.5 * np.diff(bp, axis=-1)
    mid = 0.5 * (bp[..., 1:] + bp[..., :-1])
    z = (mid[..., None] + half[..., None] * t).reshape(bp.shape[:-1] + (-1,))
    w = (half[..., None] * wt).reshape(bp.shape[:-1] + (-1,))
    return z, w * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def graded_rule(scale, extra: Iterable[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Graded composite Gauss-Legendre rule for E over N(0, 1), one row per entry of ``scale``.

    ``scale`` = sqrt(q): the activation's features at x = +-2^k sit at z = x / sqrt(q).
    ``extra``: further breakpoints (arrays broadcastable to ``scale[..., None]``), e.g. kinks.
    Returns nodes and weights of shape ``scale.shape + (n,)``.
    """
    scale = np.asarray(scale, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        parts = [_UNIFORM, _GRADED_X / scale[..., None]]
    parts.extend(np.asarray(e, float) for e in extra)
    return _panel_rule(_sorted_breakpoints(parts, scale.shape))


def _gh_size(q_max: float, tau: Optional[float]) -> Optional[int]:
    """Nodes Gauss-Hermite needs for 1e-13 at variance q_max, or None if it is not the rule."""
    if tau is None:
        return None
    if math.isinf(tau):
        return _GH_MIN * 2
    n = max(_GH_MIN, int(math.ceil(_GH_CONST * q_max / tau**2)))
    n = 8 * ((n + 7) // 8)  # few distinct sizes, so the cache stays small
    return n if n <= _GH_MAX else None


def _kink_points(kinks, scale):
    if not kinks:
        return []
    with np.errstate(divide="ignore"):
        return [np.asarray(kinks, float) / np.asarray(scale, float)[..., None]]


def _chunks(n_rows: int, row_cost: int):
    step = max(1, _CHUNK_ELEMS // max(1, row_cost))
    for i in range(0, n_rows, step):
        yield slice(i, min(n_rows, i + step))


def expect(f, q, *, kinks: tuple = (), tau: Optional[float] = None):
    """E[f(sqrt(q) z)], z ~ N(0, 1), for every entry of ``q`` (q >= 0; q = 0 gives f(0)).

    ``f`` is a vectorised callable, or a tuple of them (one pass over the nodes, a tuple of
    results); ``tau`` its analyticity half-width (``None``: unknown); ``kinks``: points where f is
    not smooth. A plain tuple of kinks promises that f is analytic up to each kink from either
    side (the panels are split there); a :class:`Kinks` makes no such promise and selects the
    checked rule of :func:`expect_singular` (geometric grading towards the kinks, extrapolation
    of the innermost piece, an error instead of a non-finite result).
    """
    fs = f if isinstance(f, tuple) else (f,)
    if isinstance(kinks, Kinks):
        res = expect_singular(fs, q, kinks, tau=tau)
        return res if isinstance(f, tuple) else res[0]
    res = _expect_plain(fs, q, kinks, tau)
    return res if isinstance(f, tuple) else res[0]


def _expect_plain(fs: tuple, q, kinks, tau) -> tuple:
    """The rules of :func:`expect` for a plain tuple of kinks (a tuple of results)."""
    q = np.asarray(q, float)
    shape = q.shape
    qf = q.ravel()
    s = np.sqrt(qf)
    n = _gh_size(float(qf.max(initial=0.0)), tau) if not kinks else None
    outs = [np.empty(qf.shape) for _ in fs]
    if n is not None:
        z, w = hermite_rule(n)
        for sl in _chunks(qf.size, z.size):
            x = s[sl, None] * z
            for o, fn in zip(outs, fs):
                o[sl] = fn(x) @ w
    else:
        for sl in _chunks(qf.size, 420):
            z, w = graded_rule(s[sl], _kink_points(kinks, s[sl]))
            x = s[sl, None] * z
            for o, fn in zip(outs, fs):
                o[sl] = np.einsum("ij,ij->i", fn(x), w)
    return tuple(o.reshape(shape) for o in outs)


# -- the checked rule for integrands of unknown behaviour at their kinks ------------------------
#
# Custom activations (sympy expressions, callables) may be anything next to a kink: x^0.7 (whose
# derivative is the integrable singularity x^-0.3), |x|^p log|x|, a pole. For them the rule
# refines the mesh geometrically towards each kink k: panels [k + D r^(j+1), k + D r^j],
# j = 0..J-1, each with 12-point Gauss-Legendre. A geometric mesh integrates |x - k|^p g(x),
# g analytic, p > -1, with an error that falls exponentially in the number of panels (Gui &
# Babuska 1986, "The h, p and h-p versions of the finite element method in 1 dimension",
# Numer. Math. 49; Schwab 1998, "p- and hp-Finite Element Methods"; for graded rules on
# singular integrands, Davis & Rabinowitz 1984, "Methods of Numerical Integration", sec. 2.12):
# every panel sees the singularity at the same relative distance, and 12 nodes with r = 0.35
# lose < 1.5e-14 relative on x^p for every p in [-0.99, 1.4] (measured; r = 0.25 loses 5e-12).
# The innermost piece [k, k + D r^J] is extrapolated, not integrated: for f ~ |x - k|^p the panel
# integrals are geometric, I_j ~ A rho^j with rho = r^(p + 1), and with the first correction of
# an analytic factor I_j = A rho^j + B (rho r)^j; rho (Richardson's elimination applied to the
# ratios I_{j+1} / I_j, an Aitken-type extrapolation) and the tail sum_{j >= J} I_j follow from
# the last three panels, and the panel before them checks the model (``_geometric_tail``).
# rho >= 1 means p <= -1: the integral diverges, and the rule says so (IntegrandError).
# Next to a kink k != 0 the computed x resolves x - k only to ~eps |k|, so the grading stops at
# |x - k| = 2^-20 |k| (x - k then known to ~2e-10 relative); at k = 0 it goes down to
# D r^J ~ 1e-22 D. 2^-20 balances that rounding against the model error of the extrapolation:
# against mpmath, 2^-17 was 4-20x worse on |x - 1|^-0.9 and (1 + |x - 1|^0.5)^2, and 2^-24,
# though better on the latter, 3-20x worse on |x - 1|^-0.9 and |x - 3|^-0.95.
_SING_RATIO = 0.35
_SING_LEVELS = 48
_SING_REL = 2.0 ** -20
_SING_FLAT = 1e-6       # rho >= 1 - _SING_FLAT: p <= -1 to the resolution of the estimate
_SING_WARN = 1e-8       # warn where the extrapolated tails are uncertain beyond this (relative)
_SIDES = np.array([-1.0, 1.0])


class IntegrandError(ValueError):
    """The integrand of a Gaussian expectation is not finite at a node of the rule, or not
    integrable at a kink (raised by :func:`expect_singular`). ``index``: which function of a tuple
    ``f`` failed; ``x``: where."""

    def __init__(self, message: str, index: int = 0, x: float = math.nan):
        super().__init__(message)
        self.index, self.x = index, x


class Kinks(tuple):
    """Kinks of an integrand whose behaviour next to (some of) them is not known.

    A sorted tuple of distinct finite floats (it compares and hashes as the plain tuple) with a
    ``label`` that names the function in error messages and ``singular``, the kinks next to
    which the function may be singular or otherwise not analytic up to the kink (x^0.7 at 0);
    the others are switch points between analytic pieces (Max(x, 0.1 x) at 0). Default: all of
    them. Given as ``kinks`` to :func:`expect` or :func:`expect2` it selects the checked rules:
    graded and extrapolated towards the singular kinks (:func:`expect_singular`), split at the
    others as for the built-ins, and an error instead of a non-finite result. Custom activations
    carry their kinks in this form (possibly none), so every caller of the engine gets the
    checked rules for them.
    """

    label: str
    singular: tuple

    def __new__(cls, points: Iterable[float] = (), label: str = "the integrand",
                singular: Optional[Iterable[float]] = None):
        pts = {float(k) + 0.0 for k in points}
        sing = set(pts) if singular is None else {float(k) + 0.0 for k in singular}
        if not all(math.isfinite(k) for k in pts | sing):
            raise ValueError(f"kinks must be finite real numbers, got {sorted(pts | sing)!r}")
        obj = super().__new__(cls, sorted(pts | sing))
        obj.label, obj.singular = str(label), tuple(sorted(sing))
        return obj

    @property
    def regular(self) -> tuple:
        """The kinks that are switch points between analytic pieces."""
        return tuple(k for k in self if k not in self.singular)

    def __reduce__(self):
        return (Kinks, (tuple(self), self.label, self.singular))


def _values(fn, x) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.broadcast_to(np.asarray(fn(x), float), np.shape(x))


def _not_finite(label, i, x, v, q=None) -> IntegrandError:
    at = "" if q is None else f" (E[f(sqrt(q) z)] at q = {q:.17g})"
    return IntegrandError(f"{label}: the integrand is not finite at x = {x:.17g}: it is {v!r}{at}",
                          i, float(x))


def expect_singular(f, q, kinks: Iterable[float] = (), *, tau: Optional[float] = None,
                    label: Optional[str] = None) -> tuple:
    """E[f(sqrt(q) z)] for an integrand that may be singular, or merely non-smooth, at its kinks.

    The checked rule for custom activations (:class:`Kinks`; plain points count as singular
    kinks), a tuple of results (``f`` a callable or a tuple of them):

    * no singular kinks: the rules of :func:`expect`, split at the other kinks, unchanged;
    * singular kinks: the rule of :func:`expect` (graded panels in z, split at all kinks)
      refined geometrically towards every singular kink from both sides, down to ~1e-22 of the
      panel at k = 0 and to 2^-20 |k| at k != 0, the innermost piece extrapolated (comment above
      ``_SING_RATIO``): ~1e-14 relative for ``|x|^p g(x)``, p = -0.9..1.4, g analytic; <= 1e-9
      at k != 0; log-modulated singularities are not of the extrapolated form (measured errors
      per case: docs/theory/quadrature.md); a RuntimeWarning gives the error estimate where it
      exceeds 1e-8 (it can be several times too small);
    * an integrand that is not finite at a node with nonzero weight, or that grows like
      |x - k|^p with p <= -1 at a kink (a divergent integral), raises :class:`IntegrandError`
      naming ``label`` (default: ``kinks.label``) and x, instead of returning nan or inf.

    Entries of q that are nan, infinite or negative give nan; q = 0 gives f(0).
    """
    fs = f if isinstance(f, tuple) else (f,)
    if label is None:
        label = getattr(kinks, "label", "the integrand")
    if not isinstance(kinks, Kinks):
        kinks = Kinks(kinks, label)                    # plain points: all possibly singular
    kk = np.array(kinks.singular, float)
    reg = kinks.regular
    q = np.asarray(q, float)
    shape, qf = q.shape, q.ravel()
    ok = np.isfinite(qf) & (qf >= 0)
    outs = [np.full(qf.shape, np.nan) for _ in fs]
    if not kk.size:   # switch points between analytic pieces only: the rules of expect, checked
        rows = np.flatnonzero(ok)
        if rows.size:
            res = _expect_plain(fs, qf[rows], reg, tau)
            for i, (o, r) in enumerate(zip(outs, res)):
                o[rows] = r
                bad = np.flatnonzero(~np.isfinite(r))
                if bad.size:
                    raise _locate(fs[i], i, float(qf[rows[bad[0]]]), label, r[bad[0]], reg)
        _check_tails(fs, qf, outs, ok & (qf > 0), label)
        return tuple(o.reshape(shape) for o in outs)
    zero = np.flatnonzero(ok & (qf == 0))
    if zero.size:
        for i, (o, fn) in enumerate(zip(outs, fs)):
            v = float(_values(fn, np.zeros(1))[0])
            if not math.isfinite(v):
                raise _not_finite(label, i, 0.0, v, 0.0)
            o[zero] = v
    rows = np.flatnonzero(ok & (qf > 0))
    if rows.size:
        s = np.sqrt(qf[rows])
        cost = _GL_ORDER * (_UNIFORM.size + _GRADED_X.size + kk.size * (2 * _SING_LEVELS + 7) + 2)
        for sl in _chunks(rows.size, cost):
            kz = kk[None, :] / s[sl, None]
            for o, v in zip(outs, _singular_rows(fs, s[sl], kz, label,
                                                 extra=_kink_points(reg, s[sl]))):
                o[rows[sl]] = v
    _check_tails(fs, qf, outs, ok & (qf > 0), label)
    return tuple(o.reshape(shape) for o in outs)


#: largest estimated share of an expectation beyond |z| = Z_MAX that the checked rule accepts
_TAIL_REL = 1e-13


def _check_tails(fs: tuple, q: np.ndarray, outs: list, rows: np.ndarray, label: str) -> None:
    """IntegrandError where the mass of E[f(sqrt(q) z)] beyond the range the rules integrate over
    (|z| <= Z_MAX) is not negligible. With t(z) = |f(sqrt(q) z)| phi(z), the tail beyond Z_MAX is
    about t(Z_MAX) / g, g = log t(Z_MAX - 1) - log t(Z_MAX) (an exponential fit over the last unit);
    g <= 0 (t does not decay) or a tail above 1e-13 |E| means the truncated integral is not the
    expectation: exp(x**2) for q >= 1/4 (t ~ exp((2q - 1/2) z^2), the expectation is infinite) and
    just below it, or exp(x) at q >~ 1 (its integrand peaks at z = 2 sqrt(q)). Custom integrands
    only (built-ins are checked against closed forms and mpmath by their tests)."""
    idx = np.flatnonzero(rows)
    if not idx.size:
        return
    s = np.sqrt(q[idx])[:, None]
    z = np.array([-Z_MAX, -(Z_MAX - 1.0), Z_MAX - 1.0, Z_MAX])
    log_pdf = -0.5 * z * z - 0.5 * math.log(2.0 * math.pi)
    for i, (fn, o) in enumerate(zip(fs, outs)):
        with np.errstate(all="ignore"):
            v = np.abs(_values(fn, s * z))
            lt = np.log(v) + log_pdf
            tails = []
            for end, inner in ((0, 1), (3, 2)):
                g = lt[:, inner] - lt[:, end]
                tails.append(np.where(v[:, end] == 0, 0.0,
                                      np.where(g > 0, np.exp(lt[:, end]) / g, np.inf)))
            tail = tails[0] + tails[1]
        scale = np.abs(o[idx])
        bad = ~np.isfinite(v).all(axis=1) | ~(tail <= _TAIL_REL * scale + 1e-300)
        if bad.any():
            k = np.flatnonzero(bad)[0]
            raise IntegrandError(
                f"{label}: the Gaussian integrand |f(sqrt(q) z)| phi(z) is not negligible at "
                f"|z| = {Z_MAX:g} for q = {float(q[idx[k]]):.6g} (estimated mass beyond it "
                f"{float(tail[k]):.3g} against the value {float(scale[k]):.3g}): the expectation is "
                "infinite or lies beyond the range the rule covers, so no value is returned", i)


def _locate(fn, i, q, label, value, kinks=()) -> IntegrandError:
    """The error for a non-finite E[f(sqrt(q) z)] from the plain rules: the node of the graded
    rule nearest 0 at which f is not finite (or, if f is finite at all of them, the value)."""
    s = math.sqrt(q)
    z, w = graded_rule(np.array([s]), _kink_points(kinks, np.array([s])))
    x = s * z[0]
    v = _values(fn, x)
    for bad in (np.flatnonzero(~np.isfinite(v) & (w[0] != 0)), np.flatnonzero(~np.isfinite(v))):
        if bad.size:     # (a node of zero weight, from coinciding breakpoints, makes nan as well)
            j = bad[np.argmin(np.abs(x[bad]))]
            return _not_finite(label, i, x[j], float(v[j]), q)
    return IntegrandError(f"{label}: E[f(sqrt(q) z)] at q = {q:.17g} is {float(value)!r} (the "
                          "integrand is finite at every node, but too large to sum)", i)


def _singular_rows(fs, s, kz, label, *, shift=None, extra=(), levels: int = _SING_LEVELS) -> list:
    """The graded, extrapolated rule for E[f(shift + s z)], z ~ N(0, 1), one row per entry of s.

    s > 0 (m,); kz (m, nk): the kinks in z, per row (inf: none); shift (m,) or None (0); extra:
    further breakpoints in z, arrays (m, k). ``levels`` geometric panels on either side of every
    kink. Next to a kink the grading stops where the computed x resolves the distance to the kink
    only to ~2^-52 (|shift| + |s kz|): at 2^-20 of that, in z (see the comment on _SING_RATIO).
    """
    m, J = s.size, levels
    sh = np.zeros(m) if shift is None else np.asarray(shift, float)
    # kinks beyond the truncation |z| < Z_MAX play no part (the range ends there anyway)
    kz = np.sort(np.where(np.abs(kz) < Z_MAX, kz, np.inf), axis=1)
    dup = np.zeros(kz.shape, bool)
    dup[:, 1:] = kz[:, 1:] == kz[:, :-1]
    kz = np.sort(np.where(dup, np.inf, kz), axis=1)                  # distinct, ascending
    kz = kz[:, :int(np.isfinite(kz).sum(axis=1).max(initial=0))]
    ends = np.full((m, 1), Z_MAX)
    ext = np.concatenate([-ends, np.clip(kz, -Z_MAX, Z_MAX), ends], axis=1)
    D = np.stack([ext[:, 1:-1] - ext[:, :-2], ext[:, 2:] - ext[:, 1:-1]], axis=-1)  # (m, nk, 2)
    inside = (np.abs(kz) < Z_MAX)[..., None] & (D > 0)
    Ds = np.where(inside, D, 1.0)
    with np.errstate(invalid="ignore"):
        res = np.where(np.isfinite(kz), np.abs(kz) + np.abs(sh)[:, None] / s[:, None], 0.0)
    dmin = np.maximum(Ds * _SING_RATIO ** J, _SING_REL * res[..., None])
    dmin = np.minimum(dmin, Ds * _SING_RATIO)
    ratio = (dmin / Ds) ** (1.0 / J)                                  # grading ratio, >= 0.35
    d = Ds[..., None] * ratio[..., None] ** np.arange(1, J + 1)       # (m, nk, 2, J) distances
    kc = np.clip(kz, -Z_MAX, Z_MAX)
    pts = np.where(inside[..., None], kc[:, :, None, None] + _SIDES[:, None] * d,
                   kc[:, :, None, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        feats = (_GRADED_X[None, :] - sh[:, None]) / s[:, None]
        bp = _sorted_breakpoints([_UNIFORM, feats, kc, pts.reshape(m, -1), *extra], (m,))
    z, w = _panel_rule(bp)
    # the innermost pieces (k - dmin_left, k + dmin_right) are the extrapolated tails
    lo = np.minimum(np.where(inside[..., 0], kc - d[..., 0, -1], np.inf), kc)
    hi = np.maximum(np.where(inside[..., 1], kc + d[..., 1, -1], -np.inf), kc)
    inner = np.zeros(z.shape, bool)
    for j in range(kz.shape[1]):
        inner |= (z > lo[:, j, None]) & (z < hi[:, j, None])
    w = np.where(inner, 0.0, w)
    x = sh[:, None] + s[:, None] * z
    # the four innermost graded panels of every kink and side, for the extrapolation
    t, wt = _legendre()
    dd = d[..., -5:]
    half, mid = 0.5 * (dd[..., :-1] - dd[..., 1:]), 0.5 * (dd[..., :-1] + dd[..., 1:])
    zt = kc[:, :, None, None, None] + _SIDES[:, None, None] * (mid[..., None] + half[..., None] * t)
    wtail = half[..., None] * wt * np.exp(-0.5 * zt * zt) / math.sqrt(2.0 * math.pi)
    xt = np.where(inside[..., None, None], sh[:, None, None, None, None]
                  + s[:, None, None, None, None] * zt, 0.0)
    use = w != 0
    outs = []
    for i, fn in enumerate(fs):
        F = _values(fn, x)
        bad = use & ~np.isfinite(F)
        if bad.any():
            r, j = np.argwhere(bad)[0]
            raise _not_finite(label, i, x[r, j], float(F[r, j]))
        main = np.einsum("ij,ij->i", np.where(use, F, 0.0), w)
        Ft = _values(fn, xt)
        badt = inside[..., None, None] & ~np.isfinite(Ft)
        if badt.any():
            idx = tuple(np.argwhere(badt)[0])
            raise _not_finite(label, i, xt[idx], float(Ft[idx]))
        P = np.where(inside[..., None], np.einsum("...k,...k->...", np.where(
            inside[..., None, None], Ft, 0.0), wtail), 0.0)               # (m, nk, 2, 4)
        tail, p, err = _geometric_tail(P, ratio)
        div = inside & np.isfinite(p)
        if div.any():
            r, j, side = np.argwhere(div)[0]
            k = float(sh[r] + s[r] * kz[r, j])
            dist = "|x|" if k == 0 else f"|x - {k:.6g}|"
            raise IntegrandError(
                f"{label}: the integrand is not integrable at x = {k:.6g}: it grows like "
                f"{dist}^p with p ~ {p[r, j, side]:.3g} <= -1 as x -> {k:.6g} from the "
                f"{'left' if side == 0 else 'right'}, so the Gaussian expectation is infinite",
                i, k)
        total = main + np.where(inside, tail, 0.0).sum(axis=(1, 2))
        if not np.all(np.isfinite(total)):
            r = int(np.flatnonzero(~np.isfinite(total))[0])
            raise IntegrandError(f"{label}: the Gaussian expectation is {float(total[r])!r} (the "
                                 "integrand is finite at every node, but too large to sum)", i)
        err = np.where(inside, err, 0.0).sum(axis=(1, 2))
        # against the size of the integrand, sum |f| w, not |total| (which may cancel to ~0)
        size = (np.einsum("ij,ij->i", np.abs(np.where(use, F, 0.0)), w)
                + np.abs(np.where(inside, tail, 0.0)).sum(axis=(1, 2)))
        with np.errstate(all="ignore"):
            loose = err > _SING_WARN * size
        if loose.any():
            with np.errstate(all="ignore"):
                r = int(np.argmax(np.where(loose, err / size, 0.0)))
            warnings.warn(
                f"{label}: near a kink the integrand is not a power law times a smooth function "
                f"(e.g. |x - k|^p log|x - k| with p near -1): the extrapolated piece of a "
                f"Gaussian expectation is uncertain by at least ~{float(err[r] / size[r]):.1g} "
                "relative", RuntimeWarning, stacklevel=4)
        outs.append(total)
    return outs


def _geometric_tail(P, ratio):
    """Extrapolated sum_{j >= 4} I_j from the panel integrals I_0..I_3 = P[..., 0..3] of a
    geometric mesh with ratio r (I_0 outermost).

    The model is I_j = A rho^j + B (rho r)^j: f ~ |x - k|^p times an analytic factor, to second
    order in the distance, rho = r^(p + 1). Fitted to I_1..I_3 it gives the tail; fitted to
    I_0..I_2 it gives a second estimate, and their difference ``err`` is the uncertainty (~1e-14
    of the tail for such f; large where f is not of this form, e.g. |x - k|^p log|x - k|).
    Returns (tail, p, err), with p the estimated exponent where the integral diverges
    (rho >= 1, i.e. p <= -1) and nan elsewhere.
    """
    def fit(a, b, c):
        r = ratio
        with np.errstate(all="ignore"):
            same = (a != 0) & (np.sign(a) == np.sign(b)) & (np.sign(b) == np.sign(c))
            r1, r2 = b / a, c / b
            rho = (r2 - r * r1) / (1.0 - r)          # Richardson: the first correction removed
            good = same & (rho > 0) & (rho < 1.0 - _SING_FLAT)
            B = (b - c / rho) / (rho * r * (1.0 - r))
            A = (b - B * rho * r) / rho
            two = A * rho**3 / (1.0 - rho) + B * (rho * r) ** 3 / (1.0 - rho * r)
            one = c * r2 / (1.0 - r2)
            simple = same & ~good & (r2 > 0) & (r2 < 1.0 - _SING_FLAT)
            tail = np.where(good & np.isfinite(two), two, np.where(simple, one, 0.0))
            p = np.where(same & (rho >= 1.0 - _SING_FLAT), np.log(rho) / np.log(r) - 1.0, np.nan)
        return np.where(np.isfinite(tail), tail, 0.0), p

    I0, I1, I2, I3 = (P[..., i] for i in range(4))
    tail, p = fit(I1, I2, I3)
    prev, _ = fit(I0, I1, I2)
    return tail, p, np.abs(tail - (prev - I3))


# truncated trapezoidal rule for the bivariate tensor rule: for F analytic in |Im x| < tau its
# error is ~exp(-2 pi delta / h), delta = tau / sqrt(q), plus exp(-L^2 / 2) for the truncation;
# h = min(0.5, 0.1 delta) and L = 9 give < 1e-15 relative for phi^2, phi'^2 and phi'^4 of every
# smooth built-in over q in [1e-6, 1e4] (measured). n ~ 180 sqrt(q) / tau nodes, against
# Gauss-Hermite's 400 q / tau^2. Steps are rounded down to h0 2^(-k/4), so rules are shared.
_TRAP_H0 = 0.5
_TRAP_KAPPA = 0.1
_TRAP_L = 9.0
_COND_OUT = _GL_ORDER * (_UNIFORM.size + 2 * _GRADED_X.size + 1)  # outer nodes, conditional form
_COND_IN = _GL_ORDER * (_UNIFORM.size + _GRADED_X.size + 1)       # inner nodes when graded


def _trap_level(qeff, tau) -> np.ndarray:
    """Level k of the trapezoidal rule (step h0 2^(-k/4)) for E[F(sqrt(qeff) z)]; tau not None."""
    qeff = np.asarray(qeff, float)
    with np.errstate(divide="ignore"):
        h = np.minimum(_TRAP_H0, _TRAP_KAPPA * tau / np.sqrt(qeff))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        k = np.ceil(4.0 * np.log2(_TRAP_H0 / h) - 1e-9)
    # capped (at q ~ 1e100 h underflows to 0): such a rule is never chosen, only priced
    return np.clip(np.nan_to_num(k, nan=_TRAP_LEVEL_MAX), 0, _TRAP_LEVEL_MAX).astype(int)


_TRAP_LEVEL_MAX = 160        # h = 0.5 * 2^-40: 2e13 nodes, far beyond any rule that is built


def _trap_size(level) -> np.ndarray:
    h = _TRAP_H0 * 2.0 ** (-np.asarray(level) / 4.0)
    return 2 * np.ceil(_TRAP_L / h).astype(np.int64) + 1


@lru_cache(maxsize=128)
def trapezoid_rule(level: int) -> tuple[np.ndarray, np.ndarray]:
    """Truncated trapezoidal rule for E over N(0, 1): step h0 2^(-level/4) on [-L, L]."""
    h = _TRAP_H0 * 2.0 ** (-level / 4.0)
    n = int(math.ceil(_TRAP_L / h))
    z = np.arange(-n, n + 1) * h
    w = np.exp(-0.5 * z * z)
    return z, w / w.sum()


def expect2(f: Callable, g: Callable, q1, q2, c, *, tau: Optional[float] = None,
            kinks: tuple = ()) -> np.ndarray:
    """E[f(u1) g(u2)] with (u1, u2) ~ N(0, [[q1, r], [r, q2]]), r = c sqrt(q1 q2), broadcast.

    Per entry, the cheaper of two rules that are both accurate to ~1e-13:

    * f, g analytic in a strip (``tau`` known, no kinks): the tensor-product trapezoidal rule in
      the rotated coordinates of the module docstring, with the step of each direction set by
      its own variance (``q a^2``, ``q b^2``);
    * otherwise, and where that would need too many nodes (large q away from c = +-1): the
      conditional form ``E_z[f(sqrt(q1) z) G(sqrt(q2) c z)]``, ``G(m) = E[g(m + sd W)]``,
      ``sd = sqrt(q2 (1 - c^2))``, with the larger variance outside; the outer rule is split at
      the features of f and of G, the inner one is the trapezoidal rule (narrow ``sd``) or, node
      by node, a composite Gauss-Legendre rule split at that node's features of g;
    * a :class:`Kinks` (custom activations) with singular kinks: the same conditional form with
      both rules those of :func:`expect_singular` (``_expect2_singular``); without, the
      conditional form split at the kinks, as for the built-ins.
    """
    q1, q2, c = np.broadcast_arrays(*(np.asarray(v, float) for v in (q1, q2, c)))
    shape = q1.shape
    q1, q2, c = q1.ravel(), q2.ravel(), np.clip(c.ravel(), -1.0, 1.0)
    bad = ~(np.isfinite(q1) & np.isfinite(q2) & np.isfinite(c) & (q1 >= 0) & (q2 >= 0))
    if bad.any():  # nan out, and keep them away from the rule selection
        q1, q2, c = (np.where(bad, 0.0, v) for v in (q1, q2, c))
    out = np.empty(q1.shape)
    if tau is not None and not kinks:
        a, b = np.sqrt(0.5 * (1.0 + c)), np.sqrt(0.5 * (1.0 - c))
        qm = np.maximum(q1, q2)
        ls, ld = _trap_level(qm * a * a, tau), _trap_level(qm * b * b, tau)
        sd2 = np.minimum(q1, q2) * (1.0 - c) * (1.0 + c)
        cost_cond = _COND_OUT * np.minimum(_trap_size(_trap_level(sd2, tau)), _COND_IN)
        tensor = _trap_size(ls) * _trap_size(ld) <= cost_cond
    else:
        tensor = np.zeros(q1.shape, bool)
    if tensor.any():
        key = np.where(tensor, ls * 1000 + ld, -1)
        for k in np.unique(key[tensor]):
            i = np.flatnonzero(key == k)
            out[i] = _expect2_tensor(f, g, q1[i], q2[i], a[i], b[i], int(k // 1000), int(k % 1000))
    # the conditional form with the larger variance outside (the inner smoothing is then narrower)
    cond = _expect2_conditional
    if isinstance(kinks, Kinks):   # graded where f, g may be singular, else split as built-ins
        cond, kinks = (_expect2_singular, kinks) if kinks.singular else (cond, tuple(kinks))
    for keep in (True, False):
        i = np.flatnonzero(~tensor & ((q1 >= q2) == keep) & ~bad)
        if i.size:
            out[i] = (cond(f, g, q1[i], q2[i], c[i], tau, kinks) if keep else
                      cond(g, f, q2[i], q1[i], c[i], tau, kinks))
    out[bad] = np.nan
    return out.reshape(shape)


def _expect2_tensor(f, g, q1, q2, a, b, ls, ld):
    """Trapezoidal tensor rule in the rotated coordinates (flat arrays, one pair of levels).

    The weighted values are summed pairwise (numpy's reduction along a contiguous axis), not by
    a running sum: over the ~5e3 nodes of a rule the running sum (``einsum``) lost up to ~3e-15
    relative (tanh, q = 1.52, c = 0.966), which the chaotic c* amplifies by 1 / (1 - chi_c)."""
    s1, s2 = np.sqrt(q1), np.sqrt(q2)
    zs, ws = trapezoid_rule(ls)
    zd, wd = trapezoid_rule(ld)
    W = (ws[:, None] * wd[None, :]).ravel()
    out = np.empty(q1.shape)
    for sl in _chunks(q1.size, zs.size * zd.size):
        S = (a[sl, None] * zs)[:, :, None]
        D = (b[sl, None] * zd)[:, None, :]
        F = f(s1[sl, None, None] * (S + D)) * g(s2[sl, None, None] * (S - D))
        F = F.reshape(F.shape[0], -1)
        F *= W
        out[sl] = F.sum(axis=1)
    return out


_COND_OFFS = np.concatenate([[0.0], 4.0 ** np.arange(-2, 4), -(4.0 ** np.arange(-2, 4))])


def _expect2_conditional(f, g, q1, q2, c, tau, kinks):
    """E[f(u1) g(u2)] = E_z[f(s1 z) G(s2 c z)], G(m) = E[g(m + sd W)], sd = s2 sqrt(1 - c^2).

    Outer: the graded rule in z (features of f at x / s1), split further where the conditional
    mean s2 c z crosses a feature x of g (z = x / (s2 c)) and, around kinks of g, graded on the
    smoothing width sd / (s2 |c|). Inner, for every outer node: g(m) itself when sd = 0, the
    trapezoidal rule when g(m + sd W) is analytic in a wide enough strip (``sd`` small against
    ``tau``), otherwise a composite Gauss-Legendre rule in W split at that node's own features
    ``(x - m) / sd`` of g. Every panel then sees a smooth integrand, whatever q1, q2 and c
    (flat arrays).
    """
    s1, s2 = np.sqrt(q1), np.sqrt(q2)
    sd = s2 * np.sqrt((1.0 - c) * (1.0 + c))
    kk = np.asarray(kinks, float)
    feats = np.concatenate([_GRADED_X, kk])
    out = np.empty(q1.shape)
    # inner rule per row: -2 = g(m) itself (sd = 0), k >= 0 = trapezoidal rule of level k,
    # -1 = per-node graded Gauss-Legendre
    mode = np.full(q1.shape, -1)
    if tau is not None and not kinks:
        lev = _trap_level(sd * sd, tau)
        mode = np.where(_trap_size(lev) <= _COND_IN, lev, -1)
    mode = np.where(sd == 0, -2, mode)
    n_out = _COND_OUT + _GL_ORDER * (_COND_OFFS.size + kk.size * (2 + _COND_OFFS.size))
    for m_ in np.unique(mode):
        rows = np.flatnonzero(mode == m_)
        n_in = 1 if m_ == -2 else (_COND_IN + _GL_ORDER * kk.size if m_ == -1 else
                                   int(_trap_size(m_)))
        for sl in _chunks(rows.size, n_out * n_in):
            r = rows[sl]
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                kz = feats[None, :] / (s2[r, None] * c[r, None])          # features of G in z
                width = sd[r] / (s2[r] * np.abs(c[r]))
                # G varies on the width sd / (s2 |c|) around the conditional mean's crossing of
                # g's feature at 0 (where a relu-like g bends): graded there too, else at large q
                # and c near 1 one panel spanned the bend (gelu, q = 1e8, c = 0.99986: 2.6e-7)
                extra = [kz, kz[:, :1] + width[:, None] * _COND_OFFS]
                if kk.size:
                    kzk = kz[:, _GRADED_X.size:]
                    extra.append((kzk[:, :, None] + width[:, None, None] * _COND_OFFS)
                                 .reshape(r.size, -1))
                    extra += _kink_points(kinks, s1[r])
            z, w = graded_rule(s1[r], extra)
            m = (s2[r] * c[r])[:, None] * z
            if m_ == -2:
                G = g(m)
            elif m_ >= 0:
                zt, wt = trapezoid_rule(int(m_))
                G = g(m[..., None] + sd[r, None, None] * zt) @ wt
            else:
                sdr = sd[r, None, None]
                with np.errstate(divide="ignore", invalid="ignore"):
                    parts = [_UNIFORM, (feats - m[..., None]) / sdr]
                zi, wi = _panel_rule(_sorted_breakpoints(parts, m.shape))
                G = np.einsum("ijk,ijk->ij", g(m[..., None] + sdr * zi), wi)
            out[r] = np.einsum("ij,ij->i", f(s1[r, None] * z) * G, w)
    return out


_SING2_LEVELS = 20   # geometric levels per side in the bivariate rule (depth ~1e-9, extrapolated)


def _expect2_singular(f, g, q1, q2, c, tau, kinks):
    """E[f(u1) g(u2)] = E_x[f(x) G(rho x)], x ~ N(0, q1), rho = c sqrt(q2 / q1),
    G(m) = E[g(m + sd W)], sd = sqrt(q2 (1 - c^2)), with the rule of :func:`expect_singular` for
    both integrals (flat arrays, q1 >= q2): the inner one per outer node, graded towards the
    kinks of g at W = (k - m) / sd, with x = m + sd W; the outer one graded towards the kinks of
    f (z = k / sqrt(q1)) and of G (z = k / (sqrt(q2) c), where G varies on the width
    sd / (sqrt(q2) |c|), which is graded as in ``_expect2_conditional``). Both are extrapolated
    and checked, so integrable singularities of f and g (phi' ~ x^(alpha - 1) of the alpha-ReLU)
    are integrated accurately and divergent or non-finite integrands raise IntegrandError.
    ``_SING2_LEVELS`` levels (extrapolated from depth ~1e-9) keep the nested rule at ~1.5e6
    evaluations per entry.
    """
    label = getattr(kinks, "label", "the integrand")
    kk = np.array(sorted(set(float(k) for k in kinks)), float)
    s1, s2 = np.sqrt(q1), np.sqrt(q2)
    sd = s2 * np.sqrt((1.0 - c) * (1.0 + c))
    out = np.empty(q1.shape)
    cost = _GL_ORDER * (_UNIFORM.size + _GRADED_X.size + kk.size * (2 * _SING2_LEVELS + 7) + 2)

    def inner(mm, sdr):
        """G(m) = E[g(m + sdr W)] for every entry of the flat array mm (sdr > 0)."""
        res = np.empty(mm.size)
        kz = (kk[None, :] - mm[:, None]) / sdr
        near = (np.abs(kz) < Z_MAX).any(axis=1)         # nodes whose inner rule meets a kink
        for rows in (np.flatnonzero(near), np.flatnonzero(~near)):
            for sl in _chunks(rows.size, cost):
                i = rows[sl]
                res[i] = _singular_rows((g,), np.full(i.size, sdr), kz[i], label, shift=mm[i],
                                        levels=_SING2_LEVELS)[0]
        return res

    for r in range(q1.size):
        if s1[r] == 0:   # q1 >= q2, so u1 = u2 = 0
            v = float(_values(f, np.zeros(1))[0] * _values(g, np.zeros(1))[0])
            if not math.isfinite(v):
                raise _not_finite(label, 0, 0.0, v)
            out[r] = v
            continue
        rho, sdr = s2[r] * c[r] / s1[r], sd[r]

        def G(x, rho=rho, sdr=sdr):
            x = np.asarray(x, float)
            if sdr == 0:                       # c = +-1: u2 = rho u1
                return _values(g, rho * x)
            if rho == 0:                       # c = 0: G is the constant E[g(u2)]
                return np.full(x.shape, inner(np.zeros(1), sdr)[0])
            return inner((rho * x).ravel(), sdr).reshape(x.shape)

        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            sc = s2[r] * c[r]
            kzf = kk / s1[r]                                   # kinks of f in z
            kzg = kk / sc if sc != 0 else np.full(kk.size, np.inf)   # kinks of G in z
            width = sd[r] / abs(sc) if sc != 0 else np.inf
            extra = [(_GRADED_X / sc if sc != 0 else np.zeros(0))[None, :],
                     (kzg[:, None] + width * _COND_OFFS).reshape(1, -1)]
        kz = np.concatenate([kzf, kzg])[None, :]
        extra = [np.where(np.isfinite(e), e, 0.0) for e in extra]
        out[r] = _singular_rows((lambda x: _values(f, x) * G(x),), s1[r:r + 1], kz, label,
                                extra=extra, levels=_SING2_LEVELS)[0][0]
    return out


def expect2_smoothed(f: Callable, smooth_g: Callable, q1, q2, c, *, kinks: tuple = ()) -> np.ndarray:
    """E[f(u1) g(u2)] as E_z[f(sqrt(q1) z) G(sqrt(q2) c z, sqrt(q2 (1 - c^2)))], where
    ``smooth_g(m, s)`` = E[g(m + s Z)] is known in closed form.

    The remaining 1-D integral is split at the kinks of f (z = k / sqrt(q1)), at those of the
    smoothed g (z = k / (sqrt(q2) c)) and graded around the latter on the smoothing width
    sqrt(1 - c^2) / |c|, so it converges exponentially however close |c| is to 1; and at the
    features x = 0, +-2^k of g on its own scale (z = x / (sqrt(q2) c)), which matter when
    q2 >> q1 and |c| ~ 1 (elu at q1 = 1e-6, q2 = 1e4, c = 1 was off by 6e-4 without them).
    """
    q1, q2, c = np.broadcast_arrays(*(np.asarray(v, float) for v in (q1, q2, c)))
    shape = q1.shape
    q1, q2, c = q1.ravel(), q2.ravel(), np.clip(c.ravel(), -1.0, 1.0)
    s1, s2 = np.sqrt(q1), np.sqrt(q2)
    sc = np.sqrt((1.0 - c) * (1.0 + c))
    out = np.empty(q1.shape)
    k = np.asarray(kinks if kinks else (0.0,), float)
    offs = np.concatenate([[0.0], 4.0 ** np.arange(-2, 4), -(4.0 ** np.arange(-2, 4))])
    for sl in _chunks(q1.size, 1200):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            kz = k[None, :] / (s2[sl, None] * c[sl, None])            # kinks of G in z
            width = sc[sl] / np.abs(c[sl])
            extra = [(kz[:, :, None] + width[:, None, None] * offs).reshape(kz.shape[0], -1),
                     _GRADED_X / (s2[sl, None] * c[sl, None])]               # g's own scale
        extra += _kink_points(kinks, s1[sl])
        z, w = graded_rule(s1[sl], extra)
        vals = f(s1[sl, None] * z) * smooth_g(s2[sl, None] * c[sl, None] * z, (s2[sl] * sc[sl])[:, None])
        out[sl] = np.einsum("ij,ij->i", vals, w)
    return out.reshape(shape)


@lru_cache(maxsize=16)
def _hermite_functions(n: int) -> np.ndarray:
    """Rows k = 0..n-1: sqrt(w_i) p_k(z_i) on the n-node rule, p_k = He_k / sqrt(k!) (orthonormal).

    Built by the stable recurrence p_{k+1} = (z p_k - sqrt(k) p_{k-1}) / sqrt(k+1); the rows are
    orthonormal vectors, so nothing overflows at the outer nodes."""
    z, w = hermite_rule(n)
    P = np.empty((n, n))
    P[0] = np.sqrt(w)
    P[1] = z * P[0]
    for k in range(1, n - 1):
        P[k + 1] = (z * P[k] - math.sqrt(k) * P[k - 1]) / math.sqrt(k + 1)
    return P


def hermite_coefficients(f: Callable, q, kmax: int, n: int = 1024) -> np.ndarray:
    """a_k(q) = E[f(sqrt(q) z) He_k(z)] / sqrt(k!), k = 0..kmax, for every entry of ``q``.

    Mehler's formula then gives E[f(u1) f(u2)] = sum_k a_k^2 c^k for u ~ N(0, q [[1, c], [c, 1]])
    (Mehler 1866; e.g. O'Donnell 2014, Prop. 11.31), and Parseval's identity
    sum_k a_k^2 = E[f(sqrt(q) z)^2] checks both the truncation and the quadrature.
    Computed with an n-node Gauss-Hermite rule (n > kmax). Shape ``q.shape + (kmax+1,)``.
    """
    z, w = hermite_rule(n)
    q = np.asarray(q, float)
    F = f(np.sqrt(q.ravel())[:, None] * z) * np.sqrt(w)    # (m, n)
    return (F @ _hermite_functions(n)[:kmax + 1].T).reshape(q.shape + (kmax + 1,))


_MEHLER_SIZES = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536)


def mehler_coefficients(f: Callable, q: float, tau: float) -> Optional[np.ndarray]:
    """Hermite coefficients a_0..a_{n-1} of f(sqrt(q) z) on an n-node rule with n = 2 n0 + 16,
    n0 = max(24, ceil(1100 q / tau^2)) the Gauss-Hermite size for f at variance q (module
    docstring), so that sum_k a_k^2 c^k = E[f(u1) f(u2)] to ~1e-13 for every c in [-1, 1]
    (checked against the rotated-coordinate rule in tests/test_gaussian.py). n is rounded up to
    the ladder 64, 96, ..., 1536; None beyond it (tanh: q > 1.7)."""
    if tau is None or math.isinf(tau):
        return None
    n0 = max(_GH_MIN, int(math.ceil(_GH_CONST * q / tau**2)))
    sizes = [n for n in _MEHLER_SIZES if n >= 2 * n0 + 16]
    if not sizes:
        return None
    n = sizes[0]          # a short ladder of sizes, so the cached Hermite matrices are few
    return hermite_coefficients(f, q, n - 1, n)
