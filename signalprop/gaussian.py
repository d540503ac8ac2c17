"""Gaussian expectations: ``E[f(sqrt(q) z)]`` and ``E[f(u1) g(u2)]`` for correlated Gaussians.

One engine, vectorised over arrays of ``q`` (and ``q1, q2, c``): a whole parameter grid is one
call. Two quadrature rules, chosen per call:

* **Gauss-Hermite** (probabilists' weight) with ``n`` nodes, for activations analytic in a strip
  ``|Im x| < tau``. Its error decays like ``exp(-1.55 tau sqrt(n / q))`` (measured against mpmath
  for tanh); ``n = ceil(400 q / tau^2)`` puts it below 1e-13 relative. Used when n <= 200.
* **Graded composite Gauss-Legendre** otherwise (large q, kinks, unknown analyticity): 12-node
  panels on [-10, 10] whose breakpoints are the union of a uniform grid in z (width 1.5, for the
  Gaussian weight), the points ``x / sqrt(q)`` for ``x = 0, +-2^k`` (k = -3..6, for the scale of
  the activation) and the activation's kinks. Every panel sees an integrand analytic in a
  Bernstein ellipse of parameter >= ~6, so the error is below 1e-13 for q in [1e-6, 1e4]; the
  truncation at |z| = 10 costs < 1e-20 relative for integrands of polynomial growth.

Bivariate expectations use the rotated coordinates ``u1 = sqrt(q1)(a s + b d)``,
``u2 = sqrt(q2)(a s - b d)`` with ``a = sqrt((1+c)/2)``, ``b = sqrt((1-c)/2)`` and ``s, d`` i.i.d.
N(0, 1) (so corr(u1, u2) = a^2 - b^2 = c): as ``c -> 1`` the d-direction becomes nearly
polynomial and needs few nodes, and symmetrically for ``c -> -1``; this keeps c = +-0.9999
accurate where the Cholesky form loses digits. Kinked activations instead integrate out one
variable in closed form (``expect2_smoothed``) and split the remaining 1-D integral at the kinks.
Accuracy is checked against mpmath (30 digits) in ``tests/test_gaussian.py``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Iterable, Optional

import numpy as np

__all__ = ["expect", "expect2", "expect2_smoothed", "hermite_rule", "graded_rule"]

Z_MAX = 10.0
_GL_ORDER = 12
_UNIFORM = np.linspace(-9.0, 9.0, 13)
_GRADED_X = np.concatenate([[0.0], 2.0 ** np.arange(-3, 7), -(2.0 ** np.arange(-3, 7))])
_GH_MAX = 200
_GH_MIN = 12
_GH_CONST = 400.0
_CHUNK_ELEMS = 4_000_000


@lru_cache(maxsize=64)
def hermite_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilists' Gauss-Hermite nodes and weights normalised to sum to 1 (E over N(0, 1))."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, w / w.sum()


@lru_cache(maxsize=1)
def _legendre():
    return np.polynomial.legendre.leggauss(_GL_ORDER)


def graded_rule(scale, extra: Iterable[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Graded composite Gauss-Legendre rule for E over N(0, 1), one row per entry of ``scale``.

    ``scale`` = sqrt(q): the activation's features at x = +-2^k sit at z = x / sqrt(q).
    ``extra``: further breakpoints (arrays broadcastable to ``scale[..., None]``), e.g. kinks.
    Returns nodes and weights of shape ``scale.shape + (n,)``.
    """
    scale = np.asarray(scale, float)
    parts = [np.broadcast_to(_UNIFORM, scale.shape + _UNIFORM.shape)]
    with np.errstate(divide="ignore", invalid="ignore"):
        parts.append(_GRADED_X / scale[..., None])
    parts.extend(np.broadcast_to(np.asarray(e, float), scale.shape + np.shape(e)[-1:])
                 for e in extra)
    bp = np.concatenate([np.nan_to_num(p, nan=0.0, posinf=Z_MAX, neginf=-Z_MAX) for p in parts],
                        axis=-1)
    bp = np.sort(np.clip(bp, -Z_MAX, Z_MAX), axis=-1)
    bp = np.concatenate([np.full(scale.shape + (1,), -Z_MAX), bp, np.full(scale.shape + (1,), Z_MAX)],
                        axis=-1)
    t, wt = _legendre()
    half = 0.5 * np.diff(bp, axis=-1)
    mid = 0.5 * (bp[..., 1:] + bp[..., :-1])
    z = (mid[..., None] + half[..., None] * t).reshape(scale.shape + (-1,))
    w = (half[..., None] * wt).reshape(scale.shape + (-1,))
    return z, w * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


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
    not smooth.
    """
    fs = f if isinstance(f, tuple) else (f,)
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
    res = tuple(o.reshape(shape) for o in outs)
    return res if isinstance(f, tuple) else res[0]


def _dim_rule(qeff, tau):
    """Rule for one rotated direction: shared GH nodes (1-D) or per-row graded nodes (2-D)."""
    n = _gh_size(float(np.max(qeff, initial=0.0)), tau)
    if n is not None:
        z, w = hermite_rule(n)
        return z[None, :], w[None, :]
    return graded_rule(np.sqrt(qeff))


def expect2(f: Callable, g: Callable, q1, q2, c, *, tau: Optional[float] = None,
            kinks: tuple = ()) -> np.ndarray:
    """E[f(u1) g(u2)] with (u1, u2) ~ N(0, [[q1, r], [r, q2]]), r = c sqrt(q1 q2), broadcast.

    Tensor-product rule in the rotated coordinates described in the module docstring; for
    smooth f, g. (Kinked activations go through :func:`expect2_smoothed`.)
    """
    q1, q2, c = np.broadcast_arrays(*(np.asarray(v, float) for v in (q1, q2, c)))
    shape = q1.shape
    q1, q2, c = q1.ravel(), q2.ravel(), np.clip(c.ravel(), -1.0, 1.0)
    a, b = np.sqrt(0.5 * (1.0 + c)), np.sqrt(0.5 * (1.0 - c))
    s1, s2 = np.sqrt(q1), np.sqrt(q2)
    qm = np.maximum(q1, q2)
    out = np.empty(q1.shape)
    zs, ws = _dim_rule(qm * a * a, tau)
    zd, wd = _dim_rule(qm * b * b, tau)
    # With f = g and q1 = q2 the integrand is f(X + Y) f(X - Y) on a d-grid symmetric about 0
    # (both rules are), so one evaluation of f serves both factors: f(X - Y_j) = f(X + Y_{n-1-j}).
    mirror = f is g and np.array_equal(q1, q2)
    for sl in _chunks(q1.size, zs.shape[-1] * zd.shape[-1]):
        def rows(arr):
            return arr if arr.shape[0] == 1 else arr[sl]
        S = (a[sl, None] * rows(zs))[:, :, None]
        D = (b[sl, None] * rows(zd))[:, None, :]
        F = f(s1[sl, None, None] * (S + D))
        G = F[:, :, ::-1] if mirror else g(s2[sl, None, None] * (S - D))
        inner = np.einsum("ijk,ik->ij", F * G, np.broadcast_to(rows(wd), (S.shape[0], D.shape[2])))
        out[sl] = np.einsum("ij,ij->i", inner, np.broadcast_to(rows(ws), S.shape[:2]))
    return out.reshape(shape)


def expect2_smoothed(f: Callable, smooth_g: Callable, q1, q2, c, *, kinks: tuple = ()) -> np.ndarray:
    """E[f(u1) g(u2)] as E_z[f(sqrt(q1) z) G(sqrt(q2) c z, sqrt(q2 (1 - c^2)))], where
    ``smooth_g(m, s)`` = E[g(m + s Z)] is known in closed form.

    The remaining 1-D integral is split at the kinks of f (z = k / sqrt(q1)), at those of the
    smoothed g (z = k / (sqrt(q2) c)) and graded around the latter on the smoothing width
    sqrt(1 - c^2) / |c|, so it converges exponentially however close |c| is to 1.
    """
    q1, q2, c = np.broadcast_arrays(*(np.asarray(v, float) for v in (q1, q2, c)))
    shape = q1.shape
    q1, q2, c = q1.ravel(), q2.ravel(), np.clip(c.ravel(), -1.0, 1.0)
    s1, s2 = np.sqrt(q1), np.sqrt(q2)
    sc = np.sqrt(np.clip(1.0 - c * c, 0.0, None))
    out = np.empty(q1.shape)
    k = np.asarray(kinks if kinks else (0.0,), float)
    offs = np.concatenate([[0.0], 4.0 ** np.arange(-2, 4), -(4.0 ** np.arange(-2, 4))])
    for sl in _chunks(q1.size, 900):
        with np.errstate(divide="ignore", invalid="ignore"):
            kz = k[None, :] / (s2[sl, None] * c[sl, None])            # kinks of G in z
            width = sc[sl] / np.abs(c[sl])
        extra = [(kz[:, :, None] + width[:, None, None] * offs).reshape(kz.shape[0], -1)]
        extra += _kink_points(kinks, s1[sl])
        z, w = graded_rule(s1[sl], extra)
        vals = f(s1[sl, None] * z) * smooth_g(s2[sl, None] * c[sl, None] * z, (s2[sl] * sc[sl])[:, None])
        out[sl] = np.einsum("ij,ij->i", vals, w)
    return out.reshape(shape)
