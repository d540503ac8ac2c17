"""Frozen result types shared by theory and simulation, with ``to_dict()`` and ``to_json()``.

Field names are those of CONVENTIONS.md ("Output names"), so a theory profile and a Monte Carlo
profile of the same network line up key by key.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Optional

import numpy as np

from . import __version__

__all__ = ["Profile", "FixedPoint", "PhaseDiagram", "to_jsonable", "summarise", "VERSION_KEY"]

#: the key under which JSON output (``to_json``, the CLI's ``--json``, sweep records and tables)
#: carries the version of signalprop that made it.
VERSION_KEY = "signalprop_version"


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


def _fmt_number(v) -> str:
    return f"{float(v):.4g}"


def summarise(value, width: int = 60) -> str:
    """A short text for one field of a result: numbers as ``%.4g``, arrays as their shape and
    range (``array(50) 0.98..1.02``, with counts of nan/inf), dicts by their keys (scalars shown),
    long strings cut to ``width`` characters."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return _fmt_number(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= width else repr(value[:width - 4] + " ...")
    if isinstance(value, _Result):
        return repr(value)
    if isinstance(value, np.ndarray):
        return _summarise_array(value)
    if isinstance(value, dict):
        items = []
        for k, v in list(value.items())[:6]:
            if isinstance(v, (int, float, str, bool, np.integer, np.floating, type(None))):
                items.append(f"{k}: {summarise(v, 24)}")
            else:
                items.append(str(k))
        more = ", ..." if len(value) > 6 else ""
        return "{" + ", ".join(items) + more + "}"
    if isinstance(value, (list, tuple)):
        text = repr(value)
        return text if len(text) <= width else f"<{type(value).__name__} of {len(value)}>"
    text = repr(value)
    return text if len(text) <= width else text[:width - 4] + " ..."


def _summarise_array(a: np.ndarray) -> str:
    if a.dtype.kind not in "biuf":
        return f"array{a.shape}"
    if a.ndim == 0:
        return summarise(a.item())
    if a.size <= 4 and a.ndim <= 1:
        return "[" + ", ".join(summarise(x) for x in a.tolist()) + "]"
    x = a.astype(float, copy=False).ravel()
    fin = np.isfinite(x)
    shape = str(a.shape[0]) if a.ndim == 1 else "x".join(map(str, a.shape))
    text = f"array({shape})"
    if fin.any():
        lo, hi = float(np.min(x[fin])), float(np.max(x[fin]))
        text += f" {_fmt_number(lo)}" if lo == hi else f" {_fmt_number(lo)}..{_fmt_number(hi)}"
    n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    if n_nan:
        text += f", {n_nan} nan"
    if n_inf:
        text += f", {n_inf} inf"
    return text


def _write_csv(fh, cols: dict) -> None:
    """Columns ``name -> 1-D array`` as CSV rows on the text file ``fh``."""
    w = csv.writer(fh, lineterminator="\n")
    w.writerow(list(cols))
    for row in zip(*cols.values()):
        w.writerow([int(v) if isinstance(v, np.integer) else repr(float(v)) for v in row])


class _Result:
    """Base of the result types: ``to_dict``/``to_json``, and a short ``repr`` (a summary: scalars,
    the shape and range of each array, the keys of dicts; never whole arrays), which every
    subclass gets unless it defines its own ``__repr__`` (the dataclass decorator does not replace
    a ``__repr__`` already in the class, so ``__init_subclass__`` puts this one there)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__repr__" not in cls.__dict__:
            cls.__repr__ = _Result.__repr__

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            if not f.repr:
                continue
            v = getattr(self, f.name, None)
            if v is None or (isinstance(v, (dict, tuple, str)) and not v):
                continue
            try:
                parts.append(f"{f.name}={summarise(v)}")
            except Exception:  # noqa: BLE001 - a summary must never fail
                parts.append(f"{f.name}=<{type(v).__name__}>")
        return f"{type(self).__name__}({', '.join(parts)})"

    def to_dict(self) -> dict:
        """Plain dict of the fields (numpy arrays kept); ``None`` fields left out."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}

    def to_json(self, **kwargs) -> str:
        """JSON text of :meth:`to_dict` (arrays as lists; inf/nan as strings), with the version
        of the package that made it as ``signalprop_version`` (:data:`VERSION_KEY`)."""
        return json.dumps({**to_jsonable(self.to_dict()), VERSION_KEY: __version__}, **kwargs)


@dataclass(frozen=True, eq=False)
class Profile(_Result):
    """Per-layer profile of a network, layers 1..L (CONVENTIONS.md "Output names").

    q: q^l, forward pre-activation second moment; log_q its logarithm (exact even where q
    over- or underflows float64); c: correlation of two inputs (None for one input);
    log_g: log per-unit gradient variance w.r.t. pre-activations (log_g[-1] = 0);
    log_G: log weight-gradient variance. ``*_se``: Monte Carlo standard errors (None for theory).
    ``samples``: per-sample values when requested. ``meta``: what produced it (source, q0, c0, ...).
    ``log_q_se``: the standard error of ``log_q`` (delta method: ``q_se / q``, the relative standard
    error, carried in logs so that it exists where ``q`` leaves the float range); optional, and
    absent from ``to_dict``/JSON when not set (profiles written before it existed read the same).
    Kernel path of ``predict`` (k inputs; :mod:`signalprop.kernel`): ``kernel_log_q`` (L, k) the log
    second moment of every input's tracked variable, ``kernel_corr`` (L, k, k) their correlations,
    ``grad_share`` (L, k, k) the per-unit gradient covariance divided by its trace ``g^l``; ``q``
    and ``c`` are then input 0's and the pair (0, 1)'s. ``simulate`` gives ``kernel_log_q`` and
    ``kernel_corr`` whenever it propagates k >= 2 inputs, with ``kernel_log_q_se`` (of the log of
    the mean) and ``kernel_corr_se`` (0 on the diagonal).
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
    log_q_se: Optional[np.ndarray] = None     # last, so positional construction is unchanged
    kernel_log_q: Optional[np.ndarray] = None  # (L, k): log q^l of each of k inputs (kernel path)
    kernel_corr: Optional[np.ndarray] = None   # (L, k, k): their correlations
    grad_share: Optional[np.ndarray] = None    # (L, k, k): gradient covariance / its trace
    kernel_log_q_se: Optional[np.ndarray] = None  # (L, k): Monte Carlo se of kernel_log_q
    kernel_corr_se: Optional[np.ndarray] = None   # (L, k, k): Monte Carlo se of kernel_corr

    @property
    def depth(self) -> int:
        return int(self.layers[-1])

    @property
    def g(self) -> np.ndarray:
        """g^l = exp(log_g) (may under/overflow; log_g is the exact field)."""
        with np.errstate(over="ignore", under="ignore"):
            return np.exp(self.log_g)

    #: the per-layer columns of :meth:`to_csv` / :meth:`to_dataframe`, in order (those that are
    #: None are left out): the fields, then their Monte Carlo standard errors.
    TABLE_COLUMNS = ("q", "log_q", "c", "log_g", "log_G",
                     "q_se", "log_q_se", "c_se", "log_g_se", "log_G_se")

    def table(self) -> dict:
        """The per-layer table: ``{"layer": layers, "q": ..., ...}`` (:data:`TABLE_COLUMNS` that
        are set), every column a 1-D array of length L."""
        out = {"layer": np.asarray(self.layers).astype(int)}
        for name in self.TABLE_COLUMNS:
            v = getattr(self, name)
            if v is not None:
                out[name] = np.asarray(v, dtype=float).reshape(-1)
        return out

    def to_csv(self, path_or_file) -> None:
        """Write the per-layer table (:meth:`table`) as CSV: a header row ``layer,q,log_q,...``
        then one row per layer; floats as ``repr`` (round-trip exact; ``inf``, ``-inf``,
        ``nan`` as such). ``path_or_file``: a path (its folder must exist) or a text file open
        for writing. ``meta`` is not written (it is in :meth:`to_json`)."""
        cols = self.table()
        if isinstance(path_or_file, (str, os.PathLike)):
            with open(path_or_file, "w", newline="") as fh:
                _write_csv(fh, cols)
        elif hasattr(path_or_file, "write"):
            _write_csv(path_or_file, cols)
        else:
            raise TypeError(f"path_or_file must be a path or a text file open for writing, got "
                            f"{type(path_or_file).__name__}")

    def to_dataframe(self):
        """The per-layer table (:meth:`table`) as a pandas DataFrame, one row per layer (pandas
        is optional: ``pip install "signalprop[sweep]"`` or ``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError('Profile.to_dataframe needs pandas: pip install "signalprop[sweep]" '
                              "(or pip install pandas)") from None
        return pd.DataFrame(self.table())


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
