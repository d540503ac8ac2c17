"""The single-layer Gaussian maps of an activation, in log q: the maths the mean-field
theory of every fully connected layer rests on (no network here).

* ``length_map``: q -> sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2 (Poole et al. 2016, eq. 3);
* ``correlation_map``: c^{l+1} from (q^l, c^l) (Poole et al. 2016, eq. 5);
* ``layer_moments``: (log E[phi(h)^2], log E[phi'(h)^2]) for h ~ N(0, e^lq), continued as power
  laws outside [1e-280, 1e100] (``log_moment``);
* ``rho``: the post-activation correlation E[phi(u1) phi(u2)] / E[phi(u1)^2], and
  ``theta_interpolant``, its certified interpolant in c where a profile's q has settled.

The fully connected layer's step (:func:`signalprop.layers.dense.dense_step`), ``predict``,
``fixed_point`` and ``phase_diagram`` (:mod:`signalprop.meanfield`) all evaluate through these.
"""

from __future__ import annotations

import math

import numpy as np

from . import tables
from ._validate import check_correlation, check_nonnegative, check_positive
from .activations import Activation, activation as _activation

__all__ = ["length_map", "correlation_map"]

LQ_LO, LQ_HI = math.log(1e-280), math.log(1e100)   #: log q range of the direct integrals
LN10 = math.log(10.0)


def log_moment(fn, log_q):
    """log fn(q) for q = exp(log_q), continued as a power law outside [1e-280, 1e100]."""
    log_q = np.asarray(log_q, float)
    lc = np.clip(log_q, LQ_LO, LQ_HI)
    with np.errstate(divide="ignore"):
        val = np.log(fn(np.exp(lc)))
    out_lo, out_hi = log_q < LQ_LO, log_q > LQ_HI
    if np.any(out_lo | out_hi):
        edge = np.where(out_lo, LQ_LO + LN10, LQ_HI - LN10)
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha = (val - np.log(fn(np.exp(edge)))) / (lc - edge)
        alpha = np.where(np.isfinite(alpha), alpha, 0.0)
        val = np.where(out_lo | out_hi, val + alpha * (log_q - lc), val)
    return val


def log_affine(log_sw2, log_m, sb2):
    """log(sigma_w^2 exp(log_m) + sigma_b^2)."""
    with np.errstate(divide="ignore"):
        return np.logaddexp(log_sw2 + log_m, np.log(sb2))


_NO_C = object()


def _check_map_args(q, sigma_w2, sigma_b2, c=_NO_C):
    """The arguments of the public maps: q > 0 finite, sigma_w2 > 0 finite, sigma_b2 >= 0 finite,
    c in [-1, 1] (ValueError/TypeError naming the parameter and its range)."""
    check_positive("q", q)
    check_positive("sigma_w2", sigma_w2)
    check_nonnegative("sigma_b2", sigma_b2)
    if c is not _NO_C:
        if c is None:
            raise TypeError("c must be a correlation in [-1, 1] (a number or an array), got None")
        check_correlation("c", c)


def length_map(act, q, sigma_w2, sigma_b2):
    """One step of the length map: sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2 (Poole et al. 2016,
    eq. 3), vectorised. q > 0, sigma_w2 > 0 and sigma_b2 >= 0, all finite."""
    act = _activation(act)
    _check_map_args(q, sigma_w2, sigma_b2)
    return sigma_w2 * act.second_moment(q) + sigma_b2


RHO_Q_MAX = 1e13


def rho(act: Activation, q, c):
    """Correlation of the post-activations, E[phi(u1) phi(u2)] / E[phi(u1)^2].

    q is clamped to [1e-280, 1e13]: beyond 1e13 the activations here are, to within their
    O(q^-1/2) corrections (measured below 3e-13 at 1e13 for gelu and softplus), the homogeneous
    map they approach, and the bivariate rule would need ever finer grids."""
    q = np.clip(np.asarray(q, float), 1e-280, RHO_Q_MAX)
    c = np.asarray(c, float)
    rho = act.cross_moment(q, q, c) / act.second_moment(q)
    return np.where(c == 1.0, 1.0, np.clip(rho, -1.0, 1.0))


def correlation_map(act, q, c, sigma_w2, sigma_b2):
    """c^{l+1} from (q^l, c^l): (sigma_w^2 E[phi(u1)phi(u2)] + sigma_b^2) / q^{l+1} (Poole et al.
    2016, eq. 5), vectorised. q > 0, c in [-1, 1], sigma_w2 > 0, sigma_b2 >= 0, all finite."""
    act = _activation(act)
    _check_map_args(q, sigma_w2, sigma_b2, c)
    return corr_map(act, q, c, sigma_w2, sigma_b2)


def corr_map(act: Activation, q, c, sigma_w2, sigma_b2):
    """correlation_map without the checks."""
    num = sigma_w2 * act.cross_moment(q, q, c) + sigma_b2
    return num / (sigma_w2 * act.second_moment(q) + sigma_b2)


def layer_moments(act: Activation, lq: float, cache: dict | None = None) -> tuple[float, float]:
    """(log E[phi(h)^2], log E[phi'(h)^2]) for h ~ N(0, exp(lq)), continued outside [1e-280, 1e100]
    as power laws (:func:`log_moment`); the continuation's value and exponent at each end are
    computed once per ``cache`` (a profile past 1e100 would otherwise pay four quadratures a
    layer)."""
    if LQ_LO <= lq <= LQ_HI:
        v, d = act.moments(math.exp(lq))
        v, d = float(v), float(d)
        return (math.log(v) if v > 0 else -math.inf), (math.log(d) if d > 0 else -math.inf)
    if cache is None:
        return (float(log_moment(act.second_moment, lq)),
                float(log_moment(act.dphi_second_moment, lq)))
    side = lq > LQ_HI
    ends = cache.setdefault("ends", {})
    key = (id(act), side)
    if key not in ends or ends[key][0] is not act:
        edge = LQ_HI if side else LQ_LO
        # (value at the edge, exponent) from the continuation itself at two points past the edge
        pts = np.array([edge + (1.0 if side else -1.0), edge + (2.0 if side else -2.0)])
        lv = log_moment(act.second_moment, pts)
        ld = log_moment(act.dphi_second_moment, pts)
        ends[key] = (act, pts[0], float(lv[0]), float(lv[1] - lv[0]) / (pts[1] - pts[0]),
                     float(ld[0]), float(ld[1] - ld[0]) / (pts[1] - pts[0]))
    _, u0, lv0, av, ld0, ad = ends[key]
    if not all(math.isfinite(v) for v in (lv0, av, ld0, ad)):     # e.g. phi' = 0 there
        return (float(log_moment(act.second_moment, lq)),
                float(log_moment(act.dphi_second_moment, lq)))
    return lv0 + av * (lq - u0), ld0 + ad * (lq - u0)


def theta_interpolant(act: Activation, qe: float, cache: dict):
    """The :func:`tables.rho_theta` interpolant of c -> rho(q, c) where a profile's q has settled
    (the same q, or past the 1e13 beyond which :func:`rho` no longer depends on it, on two
    consecutive layers; a moving q keeps the direct rule) and at least 64 layers of the run are
    left, else None. Only where rho_theta certifies it (5e-14 of the direct rule)."""
    qr = min(qe, RHO_Q_MAX)
    held = cache.get("theta")
    if held is not None and held[0] is act and abs(held[1] - qr) <= 4e-16 * qr:
        return held[2]
    last = cache.get("theta_last")
    cache["theta_last"] = (act, qr)
    if last is None or last[0] is not act or abs(last[1] - qr) > 4e-16 * qr:
        return None
    if cache.get("run_left", math.inf) < 64:
        return None          # a build costs 41-300 direct evaluations: not for a short run
    coef = tables.rho_theta(act, qr, rho_fn(act))
    cache["theta"] = (act, qr, coef)
    return coef


def rho_fn(act: Activation):
    """The direct rule rho(q, c) of ``act`` (vectorised), for the tables built from it."""
    return lambda q, c: rho(act, q, c)
