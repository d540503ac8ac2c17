"""A sweep's records as tables: :class:`SweepResult` with :meth:`~SweepResult.to_dataframe` (tidy
pandas, one row per case and layer) and :meth:`~SweepResult.to_xarray` (the case keys as
coordinates, ``layer`` as a dimension). pandas and xarray are optional (``signalprop[sweep]``)
and imported only by the method that needs them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .cases import canonical
from ..results import VERSION_KEY
from .codec import plain

__all__ = ["SweepResult", "Wire", "flatten"]

_EXTRA = 'pip install "signalprop[sweep]"'
_SKIP = ("meta", "samples", "layers")


def _number(v):
    """JSON's stand-ins for inf/nan back to floats."""
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    return v


def _scalar(v) -> bool:
    return v is None or isinstance(v, (str, bool, int, float))


def flatten(record: dict) -> tuple:
    """``(scalars, per_layer)`` of one record: ``{"<what>.<key>": value}`` for scalar results and
    ``{"<what>.<key>": {layer: value}}`` for lists as long as that result's ``layers`` (profiles,
    per-layer z). Other nested values (``meta``, dicts, other lists) stay in the record only."""
    scalars: dict = {}
    per_layer: dict = {}
    for name, res in record["results"].items():
        if not isinstance(res, dict):
            continue
        layers = res.get("layers")
        layers = layers if isinstance(layers, list) else None
        for key, v in res.items():
            if key in _SKIP:
                continue
            col = f"{name}.{key}"
            if _scalar(v):
                scalars[col] = _number(v)
            elif layers is not None and isinstance(v, list) and len(v) == len(layers) and \
                    all(_scalar(x) for x in v):
                per_layer[col] = {int(lay): _number(x) for lay, x in zip(layers, v)}
    return scalars, per_layer


def _require(module: str, what: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"{what} needs {module}: {_EXTRA}") from None


class Wire:
    """A record as an evaluator returned it (numpy arrays in its results, :mod:`.codec`): a
    :class:`SweepResult` makes it JSON-able when its records are first read."""

    __slots__ = ("record",)

    def __init__(self, record: dict) -> None:
        self.record = record


def _jsonable_record(r) -> dict:
    if isinstance(r, Wire):
        return {**r.record, "results": plain(r.record["results"])}
    return r


@dataclass(frozen=True, eq=False)
class SweepResult:
    """Records of a sweep (:attr:`records`: one dict per case: ``case``, ``case_hash``, ``seed``,
    ``results``, ``signalprop_version``, ``date``, ``timings``; given as ``raw``, where a :class:`Wire`
    record is made JSON-able, arrays as lists, on first access), the store's ``meta``
    (``sweep.json``: spec, runs, signalprop_version, dates), its ``path`` (None in memory), and how many
    cases this call ``computed`` and found already stored (``skipped``; both None for
    :func:`~signalprop.sweeps.load`)."""

    raw: tuple
    meta: dict = field(default_factory=dict)
    path: Optional[str] = None
    computed: Optional[int] = None
    skipped: Optional[int] = None

    @property
    def records(self) -> tuple:
        """The records, JSON-able (lists, inf/nan as strings), in the order of the cases."""
        done = self.__dict__.get("_records")
        if done is None:
            done = tuple(_jsonable_record(r) for r in self.raw)
            object.__setattr__(self, "_records", done)
        return done

    def __len__(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        extra = "" if self.computed is None else \
            f", computed={self.computed}, skipped={self.skipped}"
        return f"SweepResult({len(self)} cases, path={self.path!r}{extra})"

    @property
    def cases(self) -> list:
        return [dict(r["case"]) for r in self.records]

    def _attrs(self) -> dict:
        versions = sorted({(r.record if isinstance(r, Wire) else r).get(VERSION_KEY, "?")
                           for r in self.raw})
        return {VERSION_KEY: ", ".join(versions),
                "spec": json.dumps(self.meta.get("spec", {}), sort_keys=True),
                "created": self.meta.get("created", ""), "store": self.path or ""}

    def rows(self) -> list:
        """The tidy rows (dicts): case keys, ``seed``, ``layer`` (for cases with per-layer
        results), then ``<what>.<key>`` columns."""
        out = []
        for r in self.records:
            scalars, per_layer = flatten(r)
            base = {**r["case"], "seed": r["seed"]}
            if not per_layer:
                out.append({**base, **scalars})
                continue
            layers = sorted({lay for col in per_layer.values() for lay in col})
            for lay in layers:
                row = {**base, "layer": lay, **scalars}
                for col, vals in per_layer.items():
                    row[col] = vals.get(lay, math.nan)
                out.append(row)
        return out

    def to_dataframe(self):
        """Tidy ``pandas.DataFrame``: one row per case and layer (per case where no result has
        layers); case keys, ``seed``, ``layer`` and ``<what>.<key>`` columns (``predict.q``,
        ``simulate.log_g_se``, ``fixed_point.chi_1``, ...). ``df.attrs`` holds the metadata
        (package version, spec, creation date, store)."""
        pd = _require("pandas", "SweepResult.to_dataframe")
        df = pd.DataFrame(self.rows())
        df.attrs.update(self._attrs())
        return df

    def axes(self) -> dict:
        """Case key -> its values: in the order of the grids in ``meta["runs"]``, then any
        other values the records hold. Every record must have the same keys."""
        keysets = {tuple(sorted(r["case"])) for r in self.records}
        if len(keysets) > 1:
            raise ValueError("to_xarray needs cases with the same keys; these have "
                             f"{' / '.join(', '.join(k) for k in sorted(keysets))}")
        keys = list(self.records[0]["case"]) if self.records else []
        axes: dict = {k: {} for k in keys}
        for run in self.meta.get("runs", []):
            for k, vals in run.get("grid", {}).items():
                if k in axes:
                    for v in vals:
                        axes[k].setdefault(canonical(v), v)
        for r in self.records:
            for k in keys:
                axes[k].setdefault(canonical(r["case"][k]), r["case"][k])
        return {k: list(v.values()) for k, v in axes.items()}

    def to_xarray(self):
        """``xarray.Dataset``: the case keys as coordinates (for a :class:`Grid` in its order),
        ``layer`` (1..max depth) as a dimension of the per-layer results; ``<what>.<key>``
        variables, NaN (None for text) where a case is not stored or a network is shallower.
        ``ds.attrs`` holds the metadata as in :meth:`to_dataframe`."""
        xr = _require("xarray", "SweepResult.to_xarray")
        if not self.records:
            raise ValueError("to_xarray: the sweep has no stored case")
        axes = self.axes()
        keys = list(axes)
        index = {k: {canonical(v): i for i, v in enumerate(vals)} for k, vals in axes.items()}
        shape = tuple(len(v) for v in axes.values())
        flat = [(tuple(index[k][canonical(r["case"][k])] for k in keys), *flatten(r))
                for r in self.records]
        layers = sorted({lay for _, _, pl in flat for col in pl.values() for lay in col})
        lpos = {lay: i for i, lay in enumerate(layers)}
        data_vars = {}
        for col in sorted({c for _, s, _ in flat for c in s}):
            vals = [(pos, s[col]) for pos, s, _ in flat if col in s]
            arr = _empty(shape, [v for _, v in vals])
            for pos, v in vals:
                arr[pos] = v
            data_vars[col] = (keys, arr)
        for col in sorted({c for _, _, pl in flat for c in pl}):
            arr = _empty(shape + (len(layers),), [v for _, _, pl in flat if col in pl
                                                  for v in pl[col].values()])
            for pos, _, pl in flat:
                for lay, v in pl.get(col, {}).items():
                    arr[pos + (lpos[lay],)] = v
            data_vars[col] = (keys + ["layer"], arr)
        complete = len(flat) == math.prod(shape)
        seeds = np.zeros(shape, dtype=np.uint64) if complete else np.empty(shape, dtype=object)
        for (pos, _, _), r in zip(flat, self.records):
            seeds[pos] = r["seed"]     # uint64 when every case is there; else None where not
        data_vars["seed"] = (keys, seeds)
        coords = {k: _coord(v) for k, v in axes.items()}
        if layers:
            coords["layer"] = np.asarray(layers, dtype=int)
        return xr.Dataset(data_vars, coords=coords, attrs=self._attrs())


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _empty(shape: tuple, values: list) -> np.ndarray:
    """A float array of NaN for numbers, else an object array of None."""
    if _numeric(values):
        return np.full(shape, np.nan)
    arr = np.empty(shape, dtype=object)
    arr[...] = None
    return arr


def _coord(values: list) -> np.ndarray:
    if all(isinstance(v, str) for v in values):
        return np.asarray(values, dtype=str)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    if _numeric(values):
        return np.asarray(values, dtype=float)
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr
