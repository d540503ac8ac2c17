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

__all__ = ["length_map", "correlation_map", "chi_1", "chi_c"]

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
    eq. 3), vectorised. q > 0, sigma_w2 > 0 and sigma_b2 >= 0, all finite (broadcast).

    E[phi^2] from the activation's Chebyshev table in log q (:func:`tables.moments_array`,
    q in [1e-6, ~1.13e6]; ``small_moments_array`` below 1e-6 where phi(0) = 0), else directly
    (closed forms; q outside; custom activations whose panels are rejected): docs/theory/
    quadrature.md, "Routes of the public maps"."""
    act = _activation(act)
    _check_map_args(q, sigma_w2, sigma_b2)
    return sigma_w2 * _second_moment(act, np.asarray(q, float)) + sigma_b2


def chi_1(act, q, sigma_w2):
    """chi_1 = sigma_w^2 E[phi'(sqrt(q) z)^2] at any q (Poole et al. 2016, eq. 7; Schoenholz et
    al. 2017, eq. 5): the slope of the correlation map at c = 1, and the per-layer growth of the
    squared gradient. Vectorised; q > 0 and sigma_w2 > 0, finite (broadcast). Same routes as
    :func:`length_map`; an activation that jumps raises ValueError (phi' has a Dirac delta)."""
    act = _activation(act)
    check_positive("q", q)
    check_positive("sigma_w2", sigma_w2)
    return sigma_w2 * _dphi_second_moment(act, np.asarray(q, float))


def _table_logs(act, q: np.ndarray):
    """(log E[phi^2], log E[phi'^2], ok) from the tables (flat arrays, nan where not ok)."""
    q = q.ravel()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lq = np.log(q)
        lv, ld, ok = tables.moments_array(act, lq)
        low = ~ok & (lq < tables.LQ_LO)
        if np.any(low):
            sv, sd, sok = tables.small_moments_array(act, lq[low])
            lv[low], ld[low] = sv, sd
            ok[low] = sok
    return lv, ld, ok


def _second_moment(act: Activation, q: np.ndarray) -> np.ndarray:
    """E[phi(sqrt(q) z)^2] over an array q: tables where they answer, else ``act.second_moment``
    (also for an activation that jumps: the tables carry E[phi'^2], which is infinite there)."""
    if not tables._has_moment_table(act) or act.jumps:
        return act.second_moment(q)
    lv, _, ok = _table_logs(act, q)
    out = np.exp(lv)
    if not np.all(ok):
        out[~ok] = act.second_moment(q.ravel()[~ok])
    return out.reshape(q.shape)


def _dphi_second_moment(act: Activation, q: np.ndarray) -> np.ndarray:
    """E[phi'(sqrt(q) z)^2] over an array q: tables where they answer, else directly (which
    raises for an activation that jumps: the table, built from phi' pointwise, would not)."""
    if not tables._has_moment_table(act) or act.jumps:
        return act.dphi_second_moment(q)
    _, ld, ok = _table_logs(act, q)
    out = np.exp(ld)
    if not np.all(ok):
        out[~ok] = act.dphi_second_moment(q.ravel()[~ok])
    return out.reshape(q.shape)


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
    2016, eq. 5), vectorised. q > 0, c in [-1, 1], sigma_w2 > 0, sigma_b2 >= 0, all finite
    (broadcast).

    E[phi(u1) phi(u2)] = rho(q, c) E[phi^2]: rho from Mehler's series read off the activation's
    table (:func:`tables.mehler_array`: analytic activations, q in [1e-6, q_max], q_max ~6.9 for
    tanh, ~24 sigmoid, ~31 gelu); past q_max from the (log q, scaled angle) table of odd
    analytic activations and gelu (:func:`tables.rho_scaled_array`: tanh to q ~8e3, gelu to
    ~1e6); or the (log q, theta) table of kinked activations with a closed-form smoothing
    (:func:`tables.rho_2d_array`: elu, selu, hard_tanh, q <= ~1.13e6), E[phi^2] as in
    :func:`length_map`; everything else (closed forms, custom activations without a series,
    q outside the tables, rejected panels) by the direct Gaussian engine, as before
    (docs/theory/quadrature.md, "Routes of the public maps")."""
    act = _activation(act)
    _check_map_args(q, sigma_w2, sigma_b2, c)
    q, c, sw2, sb2 = np.broadcast_arrays(*(np.asarray(v, float)
                                           for v in (q, c, sigma_w2, sigma_b2)))
    shape = q.shape
    q, c, sw2, sb2 = (v.ravel() for v in (q, c, sw2, sb2))
    r, ok = _table_rho(act, q, c)
    out = np.empty(q.size)
    if np.any(ok):
        V = _second_moment(act, q[ok])
        rr = np.where(c[ok] == 1.0, 1.0, np.clip(r[ok], -1.0, 1.0))
        out[ok] = (sw2[ok] * V * rr + sb2[ok]) / (sw2[ok] * V + sb2[ok])
    if not np.all(ok):
        m = ~ok
        out[m] = corr_map(act, q[m], c[m], sw2[m], sb2[m])
        out[m & (c == 1.0)] = 1.0       # E[phi(u1) phi(u2)] = E[phi^2] at c = 1 exactly
    return out.reshape(shape)[()]


def chi_c(act, q, c, sigma_w2):
    """chi_c = sigma_w^2 E[phi'(u1) phi'(u2)], u ~ N(0, q [[1, c], [c, 1]]), at any (q, c): the
    slope of the correlation map's numerator, d/dc [sigma_w^2 E[phi(u1) phi(u2)]] / q (Price's
    theorem), i.e. the slope of c -> c^{l+1} at a fixed point of q (Schoenholz et al. 2017, eq. 6
    at c = c*; chi_c(q, 1) = chi_1(q)). Vectorised; q > 0, c in [-1, 1], sigma_w2 > 0, finite
    (broadcast).

    Mehler's series where the table answers (:func:`tables.mehler_array`: q E[phi' phi'] =
    sum_k k b_k c^(k-1)), kept only where that sum is >= 1e-3 E[phi^2] (the b_k carry absolute
    errors ~1e-16 E[phi^2]: for phi with a large mean at small q, e.g. sigmoid at q = 1e-5, the
    sum is ~1e-6 E[phi^2] and would lose 6 digits); past the Mehler table, for odd analytic
    activations, E[phi'^2] times the ratio E[phi' phi'] / E[phi'^2] from its (log q, scaled
    angle) table (:func:`tables.slope_scaled_array`: tanh to q ~3e3); else the direct engine.
    An activation that jumps raises ValueError (phi' has a Dirac delta)."""
    act = _activation(act)
    check_positive("q", q)
    check_positive("sigma_w2", sigma_w2)
    if c is None:
        raise TypeError("c must be a correlation in [-1, 1] (a number or an array), got None")
    check_correlation("c", c)
    q, c, sw2 = np.broadcast_arrays(*(np.asarray(v, float) for v in (q, c, sigma_w2)))
    shape = q.shape
    q, c, sw2 = (v.ravel() for v in (q, c, sw2))
    out = np.empty(q.size)
    ok = np.zeros(q.size, bool)
    if not act.jumps:
        _, ds, ok = tables.mehler_array(act, q, c, slope=True)
        if np.any(ok):
            V = _second_moment(act, q[ok])
            good = ds[ok] >= _SLOPE_MIN * V
            ok[np.flatnonzero(ok)[~good]] = False
            out[ok] = ds[ok] / q[ok]
        far = ~ok & (q >= 1.0)          # past the Mehler table's q_max: the scaled table
        if np.any(far) and tables._has_series(act):
            ratio, fok = tables.slope_scaled_array(act, q[far], c[far], slope_ratio_fn(act))
            idx = np.flatnonzero(far)[fok]
            out[idx] = ratio[fok] * _dphi_second_moment(act, q[idx])
            ok[idx] = True
    if not np.all(ok):
        m = ~ok
        out[m] = act.dphi_cross_moment(q[m], q[m], c[m])
    return (sw2 * out).reshape(shape)[()]


_SLOPE_MIN = 1e-3    #: chi_c by Mehler's series only where sum_k k b_k c^(k-1) >= this E[phi^2]


def _table_rho(act: Activation, q: np.ndarray, c: np.ndarray):
    """rho(q, c) = E[phi(u1) phi(u2)] / E[phi^2] from a table, and where it answered (flat)."""
    if tables._has_series(act):
        r, _, ok = tables.mehler_array(act, q, c)
        far = ~ok & (q >= 1.0)          # past the Mehler table's q_max (tanh ~6.9)
        if np.any(far):
            r[far], ok[far] = tables.rho_scaled_array(act, q[far], c[far], rho_fn(act))
        return r, ok
    if getattr(act, "smooth", None) is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            return tables.rho_2d_array(act, q, c, rho_fn(act))
    return np.full(q.size, np.nan), np.zeros(q.size, bool)


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


def slope_ratio_fn(act: Activation):
    """The direct rule of E[phi'(u1) phi'(u2)] / E[phi'^2] (vectorised), for the slope's table."""
    return lambda q, c: act.dphi_cross_moment(q, q, c) / act.dphi_second_moment(q)


def rho_fn(act: Activation):
    """The direct rule rho(q, c) of ``act`` (vectorised), for the tables built from it."""
    return lambda q, c: rho(act, q, c)
