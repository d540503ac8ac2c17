"""Frozen result types shared by theory and simulation, with ``to_dict()`` and ``to_json()``.

Field names are those of CONVENTIONS.md ("Output names"), so a theory profile and a Monte Carlo
profile of the same network line up key by key.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Optional

import numpy as np

__all__ = ["Profile", "FixedPoint", "PhaseDiagram", "to_jsonable"]


def to_jsonable(value):
    """numpy arrays and scalars -> lists and floats; inf/nan -> the strings "inf", "-inf", "nan"
    (JSON has no such numbers, and silently writing null would hide them)."""
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    return value


class _Result:
    def to_dict(self) -> dict:
        """Plain dict of the fields (numpy arrays kept); ``None`` fields left out."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}

    def to_json(self, **kwargs) -> str:
        """JSON text of :meth:`to_dict` (arrays as lists; inf/nan as strings)."""
        return json.dumps(to_jsonable(self.to_dict()), **kwargs)


@dataclass(frozen=True, eq=False)
class Profile(_Result):
    """Per-layer profile of a network, layers 1..L (CONVENTIONS.md "Output names").

    q: q^l, forward pre-activation second moment; log_q its logarithm (exact even where q
    over- or underflows float64); c: correlation of two inputs (None for one input);
    log_g: log per-unit gradient variance w.r.t. pre-activations (log_g[-1] = 0);
    log_G: log weight-gradient variance. ``*_se``: Monte Carlo standard errors (None for theory).
    ``samples``: per-sample values when requested. ``meta``: what produced it (source, q0, c0, ...).
    """

    layers: np.ndarray
    q: np.ndarray
    log_q: np.ndarray
    log_g: np.ndarray
    log_G: np.ndarray
    c: Optional[np.ndarray] = None
    q_se: Optional[np.ndarray] = None
    c_se: Optional[np.ndarray] = None
    log_g_se: Optional[np.ndarray] = None
    log_G_se: Optional[np.ndarray] = None
    samples: Optional[dict] = None
    meta: dict = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return int(self.layers[-1])

    @property
    def g(self) -> np.ndarray:
        """g^l = exp(log_g) (may under/overflow; log_g is the exact field)."""
        with np.errstate(over="ignore", under="ignore"):
            return np.exp(self.log_g)


@dataclass(frozen=True, eq=False)
class FixedPoint(_Result):
    """Fixed point of the mean-field maps and its depth scales (CONVENTIONS.md "Scalars").

    q_star may be 0 (the length map collapses) or inf (it diverges); chi_1 is then its limit.
    Depth scales that diverge are inf. ``regime``: ordered, critical or chaotic.
    """

    q_star: float
    c_star: float
    chi_1: float
    chi_c: float
    xi_q: float
    xi_c: float
    xi_grad: float
    regime: str
    activation: str = ""
    sigma_w2: float = math.nan
    sigma_b2: float = math.nan
    note: str = ""


@dataclass(frozen=True, eq=False)
class PhaseDiagram(_Result):
    """Mean-field phase diagram on a (sigma_w2, sigma_b2) grid; arrays have shape
    ``(len(sigma_b2), len(sigma_w2))`` (rows: sigma_b2), ready for ``pcolormesh``.
    ``critical_sigma_w2[i]`` is the edge of chaos at ``sigma_b2[i]`` (nan where there is none)."""

    activation: str
    sigma_w2: np.ndarray
    sigma_b2: np.ndarray
    q_star: np.ndarray
    chi_1: np.ndarray
    xi_c: np.ndarray
    c_star: np.ndarray
    critical_sigma_w2: np.ndarray
