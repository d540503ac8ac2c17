"""Exact per-layer factors of Gaussian and ReLU layers (chi-square algebra, §1): the moments and
log-moments of ``chi^2_N/N`` and of ``(2/N) chi^2_K``, ``K ~ Bin(N, 1/2)``; Hanin & Nica's
``beta`` and the regimes it defines.

References to sections (§1, section 2, ...) and to "the module docstring" in the docstrings
below are to the package docstring of :mod:`signalprop.finite`.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy import special

from .._validate import check_int, finite_scalar, short_repr
from ..network import MAX_WIDTH, Network

__all__ = ["chi2_factor", "relu_factor", "hanin_nica_beta", "regime_of_beta", "BETA_MEANFIELD",
           "BETA_BREAKS"]

#: beta below which mean-field theory describes a typical network (median within 5 %).
BETA_MEANFIELD = 0.1
#: beta from which mean-field theory no longer describes a typical network.
BETA_BREAKS = 1.0


# ---------------------------------------------------------------------------------------------
# exact per-layer factors


def _check_width(name: str, n) -> int:
    try:
        return check_int(name, n, 1, MAX_WIDTH)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= 1 (beta = sum 1/N needs finite positive "
                         f"widths), got {n!r}") from None


def chi2_factor(n: int) -> dict:
    """The factor ``f = chi^2_N / N`` (see :func:`_chi2_factor`); a fresh dict per call."""
    return dict(_chi2_factor(_check_width("N", n)))


# _chi2_factor and _relu_factor are cached by the width n (an int; lru_cache, the 4096 most
# recent): pure functions of n, read only through chi2_factor / relu_factor, which copy the dict,
# so no caller can alter a cached value.
@lru_cache(maxsize=4096)
def _chi2_factor(n: int) -> dict:
    """The factor ``f = chi^2_N / N`` (a Gaussian layer): ``mean = 1``, ``m2 = E f^2 = 1 + 2/N``,
    ``var = 2/N``, ``log_mean = psi(N/2) - log(N/2)``, ``log_var = psi'(N/2)``, ``p_zero = 0``."""
    return {"mean": 1.0, "m2": 1.0 + 2.0 / n, "var": 2.0 / n,
            "log_mean": float(special.digamma(0.5 * n) - math.log(0.5 * n)),
            "log_var": float(special.polygamma(1, 0.5 * n)),
            "log_k3": float(special.polygamma(2, 0.5 * n)), "p_zero": 0.0}


def _binomial_half(n: int):
    """k = 1..n and P(K = k | K >= 1) for K ~ Bin(n, 1/2) (terms below 1e-30 dropped)."""
    if n <= 4000:
        k = np.arange(1, n + 1)
    else:
        half = 20.0 * math.sqrt(n)
        k = np.arange(max(1, int(n / 2 - half)), min(n, int(n / 2 + half)) + 1)
    logp = (special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)
            - n * math.log(2.0))
    p = np.exp(logp)
    p0 = 2.0 ** -n
    return k, p / (1.0 - p0) if p0 < 1 else p


def relu_factor(n: int) -> dict:
    """The ReLU layer factor ``(2/N) chi^2_K`` (see :func:`_relu_factor`); a fresh dict per call."""
    return dict(_relu_factor(_check_width("N", n)))


@lru_cache(maxsize=4096)
def _relu_factor(n: int) -> dict:
    """The ReLU layer factor ``F = (2/N) chi^2_K``, ``K ~ Bin(N, 1/2)`` (module docstring, §1).

    ``mean = 1``, ``m2 = E F^2 = 1 + 5/N``, ``var = 5/N``, ``p_zero = P(F = 0) = 2^{-N}``;
    ``log_mean``, ``log_var``: E and Var of ``log F`` given ``F > 0`` (digamma / trigamma sums);
    ``cross_m2 = E[F B] = 1 + 1/N`` for the forward and backward factors of one layer (shared ``K``)
    and ``log_cross``: ``Cov(log F, log B | K >= 1) = Var[psi(K/2)]``.
    """
    k, p = _binomial_half(n)
    m = special.digamma(0.5 * k) + math.log(4.0 / n)
    mu = float(p @ m)
    d = m - mu
    vpsi = float(p @ d ** 2)
    t1, t2 = special.polygamma(1, 0.5 * k), special.polygamma(2, 0.5 * k)
    return {"mean": 1.0, "m2": 1.0 + 5.0 / n, "var": 5.0 / n, "log_mean": mu,
            "log_var": float(p @ t1) + vpsi, "log_k3": float(p @ (t2 + 3 * t1 * d + d ** 3)),
            "p_zero": 2.0 ** -n, "cross_m2": 1.0 + 1.0 / n, "log_cross": vpsi,
            "log_k3_cross": float(p @ ((t1 + d * d) * d))}


def hanin_nica_beta(widths: Sequence[int], p: float = 0.5) -> float:
    """``beta = (3/p - 1) sum_i 1/n_i`` (Hanin & Nica 2019, Thm 1 with Gaussian weights, whose
    fourth-moment term vanishes; ReLU: p = 1/2, beta = 5 sum 1/n_i). ``widths``: the widths whose
    Bernoulli(p) masks the product crosses. Raises ValueError for an empty list or widths that are
    not integers >= 1 (beta undefined)."""
    if isinstance(widths, Network):
        raise TypeError(f"widths must be a sequence of layer widths (e.g. network.widths[1:]), "
                        f"got {short_repr(widths)}")
    if isinstance(widths, (list, tuple, np.ndarray)) and \
            any(isinstance(w, (list, tuple, np.ndarray)) for w in widths):
        raise ValueError(f"widths must be an integer or a flat sequence of integers, got "
                         f"{short_repr(widths)}")
    ws = list(np.atleast_1d(np.asarray(widths, dtype=object)).ravel())
    if not ws:
        raise ValueError("beta needs at least one width (widths is empty)")
    ws = [_check_width("width", w) for w in ws]
    p = finite_scalar("p", p)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p must lie in (0, 1], got {p!r}")
    return (3.0 / p - 1.0) * sum(1.0 / w for w in ws)


def regime_of_beta(beta: float) -> str:
    """``mean-field`` (beta < 0.1), ``finite-width`` (0.1 <= beta < 1) or ``mean-field breaks``."""
    if beta < BETA_MEANFIELD:
        return "mean-field"
    return "finite-width" if beta < BETA_BREAKS else "mean-field breaks"
