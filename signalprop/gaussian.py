"""Gaussian expectations: ``E[f(sqrt(q) z)]`` and ``E[f(u1) g(u2)]`` for correlated Gaussians.

One engine, vectorised over arrays of ``q`` (and ``q1, q2, c``): a whole parameter grid is one
call. Two quadrature rules, chosen per call:

* **Gauss-Hermite** (probabilists' weight) with ``n`` nodes, for activations analytic in a strip
  ``|Im x| < tau``. Its error decays like ``exp(-C tau sqrt(n / q))``; ``n = max(24,
  ceil(1100 q / tau^2))`` puts it below 3e-14 relative for phi^2, phi'^2, phi'^4 and x phi phi' of
  every built-in smooth activation (calibrated against the graded rule for q in [1e-3, 8]; the
  binding cases are sigmoid and silu, which need ~830 q / tau^2). Used when n <= 200.
* **Graded composite Gauss-Legendre** otherwise (large q, kinks, unknown analyticity): 12-node
  panels on [-10, 10] whose breakpoints are the union of a uniform grid in z (width 1.5, for the
  Gaussian weight), the points ``x / sqrt(q)`` for ``x = 0, +-2^k`` (k = -3..6, for the scale of
  the activation) and the activation's kinks. Every panel sees an integrand analytic in a
  Bernstein ellipse of parameter >= ~6, so the error is below 1e-13 for q in [1e-6, 1e4]; the
  truncation at |z| = 10 costs < 1e-20 relative for integrands of polynomial growth.

Bivariate expectations of smooth functions use the rotated coordinates
``u1 = sqrt(q1)(a s + b d)``, ``u2 = sqrt(q2)(a s - b d)`` with ``a = sqrt((1+c)/2)``,
``b = sqrt((1-c)/2)`` and ``s, d`` i.i.d. N(0, 1) (so corr(u1, u2) = a^2 - b^2 = c), with a
truncated trapezoidal rule in each direction whose step follows that direction's variance
(``q a^2``, ``q b^2``): as ``c -> +-1`` one direction needs few nodes, which keeps c = +-0.9999
accurate where the Cholesky form loses digits. When q is large the activations' features are
sharp and sit on lines ``a s +- b d = const`` that no tensor rule can follow cheaply (a graded
rule in s and d, refined around s = 0, misses them by up to 1e-2 at q = 1e4); there, and for
kinks or unknown analyticity, ``expect2`` uses the conditional form ``E_z[f(sqrt(q1) z) G(z)]``
with the inner smoothing G integrated node by node on a rule split at g's own features.
Kinked activations with a closed-form smoothing integrate out one variable exactly
(``expect2_smoothed``) and split the remaining 1-D integral at the kinks.
Accuracy is checked against mpmath (``tests/reference/make_reference.py``) in
``tests/test_gaussian.py``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Iterable, Optional

import numpy as np
from scipy import special

__all__ = ["expect", "expect2", "expect2_smoothed", "hermite_rule", "graded_rule", "trapezoid_rule"]

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
    return np.maximum(0, np.ceil(4.0 * np.log2(_TRAP_H0 / h) - 1e-9)).astype(int)


def _trap_size(level) -> np.ndarray:
    h = _TRAP_H0 * 2.0 ** (-np.asarray(level) / 4.0)
    return 2 * np.ceil(_TRAP_L / h).astype(int) + 1


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
      by node, a composite Gauss-Legendre rule split at that node's features of g.
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
    for keep in (True, False):
        i = np.flatnonzero(~tensor & ((q1 >= q2) == keep))
        if i.size:
            out[i] = (_expect2_conditional(f, g, q1[i], q2[i], c[i], tau, kinks) if keep else
                      _expect2_conditional(g, f, q2[i], q1[i], c[i], tau, kinks))
    out[bad] = np.nan
    return out.reshape(shape)


def _expect2_tensor(f, g, q1, q2, a, b, ls, ld):
    """Trapezoidal tensor rule in the rotated coordinates (flat arrays, one pair of levels)."""
    s1, s2 = np.sqrt(q1), np.sqrt(q2)
    zs, ws = trapezoid_rule(ls)
    zd, wd = trapezoid_rule(ld)
    out = np.empty(q1.shape)
    for sl in _chunks(q1.size, zs.size * zd.size):
        S = (a[sl, None] * zs)[:, :, None]
        D = (b[sl, None] * zd)[:, None, :]
        F = f(s1[sl, None, None] * (S + D)) * g(s2[sl, None, None] * (S - D))
        out[sl] = np.einsum("ijk,j,k->i", F, ws, wd)
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
    n_out = _COND_OUT + _GL_ORDER * kk.size * (2 + _COND_OFFS.size)
    for m_ in np.unique(mode):
        rows = np.flatnonzero(mode == m_)
        n_in = 1 if m_ == -2 else (_COND_IN + _GL_ORDER * kk.size if m_ == -1 else
                                   int(_trap_size(m_)))
        for sl in _chunks(rows.size, n_out * n_in):
            r = rows[sl]
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                kz = feats[None, :] / (s2[r, None] * c[r, None])          # features of G in z
                width = sd[r] / (s2[r] * np.abs(c[r]))
                extra = [kz]
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
