"""Power series in float64 or mpmath arithmetic: products, reciprocals, ``log``/``exp``, series
reversion and the Lagrange-inversion moments ``m_k = (1/k) [w^{k-1}] R(w)^k`` (Pennington,
Schoenholz & Ganguli 2017, arXiv 1711.04735, eq. 18); see the package docstring of
:mod:`signalprop.freeprob`."""

from __future__ import annotations

import math

import numpy as np


# =============================================================================================
# power series: float64 numpy arrays, or numpy object arrays of mpmath numbers


def _zeros(n, like):
    if like.dtype == object:
        import mpmath as mp
        return np.array([mp.mpf(0)] * n, dtype=object)
    return np.zeros(n, dtype=like.dtype)


def _ser_mul(a, b, n):
    return np.convolve(a[:n], b[:n])[:n]


def _ser_inv(a, n):
    """1/a as a series (a[0] != 0)."""
    b = _zeros(n, a)
    b[0] = 1 / a[0]
    for k in range(1, n):
        m = min(k, len(a) - 1)
        b[k] = -np.dot(a[1:m + 1], b[k - 1::-1][:m]) / a[0]
    return b


def _ser_log1(a, n):
    """log(a) for a[0] == 1: (log a)' = a'/a."""
    da = np.array([k * a[k] for k in range(1, min(n, len(a)))], dtype=a.dtype)
    if da.size == 0:
        return _zeros(n, a)
    q = _ser_mul(da, _ser_inv(a, n), n - 1)
    out = _zeros(n, a)
    for k in range(1, n):
        out[k] = q[k - 1] / k
    return out


def _ser_exp0(l, n):
    """exp(l) for l[0] == 0: b_k = (1/k) sum_{j=1}^k j l_j b_{k-j}."""
    b = _zeros(n, l)
    b[0] = 1 + 0 * l[0]
    jl = np.array([j * l[j] for j in range(n)], dtype=l.dtype)
    for k in range(1, n):
        b[k] = np.dot(jl[1:k + 1], b[k - 1::-1]) / k
    return b


def _log1p_linear(A, n, like):
    """Coefficients of log(1 + A w): 0, A, -A^2/2, A^3/3, ..."""
    out = _zeros(n, like)
    p = A
    for k in range(1, n):
        out[k] = p / k if k % 2 else -p / k
        p = p * A
    return out


def series_reversion(psi, n):
    """Compositional inverse chi of ``psi`` (psi[0] = 0, psi[1] != 0) to order ``n - 1``, by
    Lagrange inversion: [w^k] chi = (1/k) [zeta^{k-1}] (zeta/psi(zeta))^k."""
    g = np.asarray(psi[1:n + 1])
    h = _ser_inv(g, n)
    out = _zeros(n, h)
    P = h.copy()
    for k in range(1, n):
        out[k] = P[k - 1] / k
        P = _ser_mul(P, h, n)
    return out


def lagrange_moments(ell, kmax, log=True):
    """Moments ``mt_k = (1/k) [w^{k-1}] exp(k ell(w))``, k = 1..kmax (``ell[0] = 0``).

    In float64 the k-th coefficient is computed in the rescaled variable ``w = tau t`` with
    ``tau = 1/(k max(ell_1, 1))`` (so the exponent stays of order one and nothing overflows) and
    the logarithms are returned when ``log`` is true. With mpmath object arrays the values
    themselves are returned."""
    ell = np.asarray(ell)
    out = []
    if ell.dtype == object:
        for k in range(1, kmax + 1):
            b = _ser_exp0(np.array([k * c for c in ell[:k]], dtype=object), k)
            out.append(b[k - 1] / k)
        return out
    l1 = max(float(ell[1]) if len(ell) > 1 else 0.0, 1.0)
    res = np.empty(kmax)
    for k in range(1, kmax + 1):
        tau = 1.0 / (k * l1)
        powers = tau ** np.arange(k)
        b = _ser_exp0(k * ell[:k] * powers, k)
        val = b[k - 1] / k
        with np.errstate(divide="ignore", invalid="ignore"):
            res[k - 1] = (math.log(val) if val > 0 else -math.inf) - (k - 1) * math.log(tau)
    return res if log else np.exp(res)


def fuss_catalan(L: int, k: int) -> int:
    """The Fuss-Catalan number binom((L+1)k, k)/(Lk + 1): the k-th moment of the product of L
    free Marchenko-Pastur laws of ratio 1 (the limiting spectrum of ``J J^T`` of a deep linear
    network with Gaussian weights, ``sigma_w = 1``)."""
    return math.comb((L + 1) * k, k) // (L * k + 1)

