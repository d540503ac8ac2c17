"""Where an activation's derivative peaks and where it saturates: the numbers behind
``signalprop activations`` (maths level; imports only :mod:`signalprop.activations`).

* :func:`dphi_max`: ``sup_x phi'(x)`` over ``[-40, 40]`` and where it is reached (a point, several
  points, or a plateau). Closed forms it reproduces: tanh' = sech^2 x peaks at 1 (x = 0);
  sigmoid' = s (1 - s) peaks at 1/4 (x = 0); GELU' = Phi(x) + x phi_N(x) peaks at x = sqrt(2)
  (where d/dx [Phi + x phi_N] = phi_N (2 - x^2) = 0); ReLU' = 1 on the plateau x > 0.
* :func:`dphi_crossing`: the first ``x > start`` where ``phi'(x)`` falls to a level. For tanh,
  sech^2 x = 1e-4 at x = acosh(100) = 5.2983; for the sigmoid, s (1 - s) = 1e-4 at
  x = log(s+ / (1 - s+)), s+ = (1 + sqrt(1 - 4e-4)) / 2, i.e. x = 9.2101.
* :func:`article_saturation`: the check of the source article's claim (shared/seed) that phi' is
  "about 1e-4" at x = 5 (sigmoid) and x = 4 (tanh). It is not: sigmoid'(5) = s(5) s(-5) = 6.648e-3
  and tanh'(4) = sech^2 4 = 1.341e-3, and phi' reaches 1e-4 only at the crossings above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .activations import Activation, activation as _activation

__all__ = ["ARTICLE_SATURATION", "ARTICLE_LEVEL", "DphiMax", "SaturationCheck", "dphi_max",
           "dphi_crossing", "article_saturation"]

#: points where the source article (shared/seed) says phi' is "about 1e-4"; it is not.
ARTICLE_SATURATION = {"sigmoid": 5.0, "tanh": 4.0}
ARTICLE_LEVEL = 1e-4
_PLATEAU_RTOL = 1e-9
_GRID = np.linspace(-40.0, 40.0, 80001)


@dataclass(frozen=True)
class DphiMax:
    """``value = sup phi'`` on [-40, 40]; ``where``: the point(s) ("1.4142"), or ranges
    ("[0.0000, inf]") where phi' stays within 1e-9 (relative) of the maximum."""

    value: float
    where: str


@dataclass(frozen=True)
class SaturationCheck:
    """phi'(x) at a point the source article calls saturated, against the article's level, and
    the x where phi' really equals that level."""

    activation: str
    x: float
    article_dphi: float
    dphi: float
    x_at_level: float

    def to_dict(self) -> dict:
        """The keys ``signalprop activations --json`` prints."""
        return {"activation": self.activation, "x": self.x, "article_dphi": self.article_dphi,
                "dphi": self.dphi, "x_where_dphi_is_1e-4": self.x_at_level}


def _dphi(act: Activation):
    def d(x):
        with np.errstate(all="ignore"):
            return np.asarray(act.dphi(np.asarray(x, float)), float)
    return d


def dphi_max(act: Activation) -> DphiMax:
    """sup_x phi'(x) on [-40, 40], numerically: the maximum on a grid of step 1e-3, refined by a
    bounded scalar search (xatol 1e-10) where it is one isolated point; where phi' stays within
    1e-9 (relative) of its maximum over more than three grid points, the range, whose ends are
    bisected (60 halvings). At most three separate locations are named ("..." beyond)."""
    from scipy.optimize import minimize_scalar

    d = _dphi(act)
    y = np.nan_to_num(d(_GRID), nan=-np.inf)
    top = float(np.max(y))
    tol = _PLATEAU_RTOL * max(1.0, abs(top))
    near = np.flatnonzero(y >= top - tol)
    groups = np.split(near, np.flatnonzero(np.diff(near) > 1) + 1)
    h = _GRID[1] - _GRID[0]
    locs = []
    for g in groups[:3]:
        i, j = g[0], g[-1]
        if j - i <= 2 and 0 < i and j < _GRID.size - 1:
            res = minimize_scalar(lambda x: -float(d(x)), bounds=(_GRID[i] - h, _GRID[j] + h),
                                  method="bounded", options={"xatol": 1e-10})
            top = max(top, -float(res.fun))
            locs.append(f"{res.x:.4f}")
        else:
            lo = "-inf" if i == 0 else f"{_edge(d, _GRID[i - 1], _GRID[i], top - tol):.4f}"
            hi = "inf" if j == _GRID.size - 1 else f"{_edge(d, _GRID[j + 1], _GRID[j], top - tol):.4f}"
            locs.append(f"[{lo}, {hi}]")
    if len(groups) > 3:
        locs.append("...")
    return DphiMax(top, ", ".join(locs))


def _edge(d, out: float, inside: float, level: float) -> float:
    """Bisect for where phi' crosses ``level`` between a point below it and one above it."""
    for _ in range(60):
        mid = 0.5 * (out + inside)
        if d(mid) >= level:
            inside = mid
        else:
            out = mid
    return inside


def dphi_crossing(act: Activation, level: float, start: float = 0.0, stop: float = 60.0) -> float:
    """The x > ``start`` where phi' first falls to ``level``: a scan of [start, stop] on 601 points
    for the first sign change of phi' - level, then brentq (xtol 1e-14, rtol 1e-15); NaN when
    phi' does not fall to ``level`` on [start, stop]."""
    from scipy.optimize import brentq

    def f(x):
        return float(act.dphi(np.asarray(x, float))) - level

    xs = np.linspace(start, stop, 601)
    ys = np.array([f(x) for x in xs])
    k = np.flatnonzero((ys[:-1] > 0) & (ys[1:] <= 0))
    if k.size == 0:
        return math.nan
    return brentq(f, xs[k[0]], xs[k[0] + 1], xtol=1e-14, rtol=1e-15)


def article_saturation() -> tuple[SaturationCheck, ...]:
    """phi' at the article's "saturated" points :data:`ARTICLE_SATURATION` and where phi' really
    is :data:`ARTICLE_LEVEL` (closed forms in the module docstring)."""
    checks = []
    for name, x in ARTICLE_SATURATION.items():
        act = _activation(name)
        checks.append(SaturationCheck(name, x, ARTICLE_LEVEL, float(act.dphi(np.asarray(x))),
                                      dphi_crossing(act, ARTICLE_LEVEL)))
    return tuple(checks)
