"""The cases of a sweep: :class:`Grid` (the product of axes) and :class:`Cases` (an explicit list).

A case is a dict of plain values (str, int, float, bool, None) keyed by identifiers. Its
canonical JSON (sorted keys, no spaces) names it: :func:`case_hash` (the store's file name) and
:func:`case_seed` (its random seed) are SHA-256 digests of that text, so both depend on the case
alone, never on the executor, the worker count or the order cases run in.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import numbers
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _STR
from typing import Iterator, Sequence, Union

import numpy as np

from .._validate import check_int, short_repr

__all__ = ["Grid", "Cases", "canonical", "case_hash", "case_seed", "case_hash_and_seed",
           "as_cases", "MAX_CASES",
           "RESERVED_KEYS"]

#: most cases one sweep may hold (a larger grid is refused up front: about 1 KiB of Python
#: objects per case before any work is done).
MAX_CASES = 1_000_000
#: names a case key may not take: they are columns of the loaded tables.
RESERVED_KEYS = ("layer", "seed", "case_hash")
_FLOAT = float.__repr__             # what json writes for a finite float
_INT = int.__repr__


def _plain(where: str, value):
    """``value`` as a plain JSON scalar (numpy scalars unwrapped); TypeError/ValueError naming
    ``where`` for anything else or a non-finite float."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{where} must be finite, got {value!r}")
        return value
    raise TypeError(f"{where} must be a str, int, float, bool or None, got {short_repr(value)}")


def _check_key(where: str, key) -> str:
    if not isinstance(key, str) or not key.isidentifier():
        raise ValueError(f"{where}: keys must be identifiers (e.g. sigma_w2), got {short_repr(key)}")
    if key in RESERVED_KEYS:
        raise ValueError(f"{where}: {key!r} is reserved (a column of the results); reserved: "
                         f"{', '.join(RESERVED_KEYS)}")
    return key


def _check_case(where: str, case) -> dict:
    if not isinstance(case, dict):
        raise TypeError(f"{where} must be a dict of plain values, got {short_repr(case)}")
    return {_check_key(where, k): _plain(f"{where}[{k!r}]", v) for k, v in case.items()}


def _flat_canonical(case: dict):
    """:func:`canonical` of a dict of str keys and exact str/int/float/bool/None values, written
    directly (what ``json.dumps`` writes for them, at a fraction of its cost); None for any
    other dict (non-finite floats included), which ``json.dumps`` then handles."""
    out = []
    for key in sorted(case):
        v = case[key]
        t = type(v)
        if type(key) is not str:
            return None
        if t is str:
            text = _STR(v)
        elif t is float and math.isfinite(v):
            text = _FLOAT(v)
        elif t is int:
            text = _INT(v)
        elif v is None:
            text = "null"
        elif t is bool:
            text = "true" if v else "false"
        else:
            return None
        out.append(f"{_STR(key)}:{text}")
    return "{" + ",".join(out) + "}"


def canonical(case: dict) -> str:
    """The canonical JSON text of a case: sorted keys, no spaces, floats by ``repr``
    (``1`` and ``1.0`` are different cases, as they are different Python values): exactly
    ``json.dumps(case, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    allow_nan=False)``."""
    if type(case) is dict:
        try:
            text = _flat_canonical(case)
        except TypeError:           # keys that do not sort: json.dumps raises its own error
            text = None
        if text is not None:
            return text
    return json.dumps(case, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:24]


def _seed(text: str, seed: int) -> int:
    full = f"signalprop.sweep seed {int(seed)}\n{text}"
    return int.from_bytes(hashlib.sha256(full.encode("ascii")).digest()[:8], "big")


def case_hash(case: dict) -> str:
    """First 24 hex digits (96 bits) of SHA-256 of :func:`canonical`: the case's name in the
    store."""
    return _hash(canonical(case))


def case_seed(case: dict, seed: int) -> int:
    """The case's seed, an int in [0, 2^64): the first 8 bytes (big-endian) of SHA-256 of
    ``"signalprop.sweep seed <seed>\\n" + canonical(case)``. Passed to the evaluators as is
    (:func:`signalprop.simulate` turns it into a ``numpy.random.SeedSequence``)."""
    return _seed(canonical(case), seed)


def case_hash_and_seed(case: dict, seed: int) -> tuple:
    """``(case_hash(case), case_seed(case, seed))`` from one canonical text."""
    text = canonical(case)
    return _hash(text), _seed(text, seed)


@dataclass(frozen=True, init=False)
class Grid:
    """The product of axes, ``Grid(activation=["tanh", "relu"], sigma_w2=[1.0, 2.0], depth=[20])``:
    every combination, the last axis varying fastest. Each axis is a non-empty list or tuple of
    distinct plain values."""

    axes: tuple

    def __init__(self, **axes: Sequence) -> None:
        if not axes:
            raise ValueError("Grid needs at least one axis, e.g. Grid(depth=[10, 20])")
        checked = []
        n = 1
        for key, values in axes.items():
            _check_key("Grid", key)
            if not isinstance(values, (list, tuple)) or not values:
                raise TypeError(f"Grid axis {key!r} must be a non-empty list of values, got "
                                f"{short_repr(values)}")
            vals = tuple(_plain(f"Grid axis {key!r} value", v) for v in values)
            texts = [canonical(v) for v in vals]
            if len(set(texts)) != len(texts):
                dup = next(t for t in texts if texts.count(t) > 1)
                raise ValueError(f"Grid axis {key!r} repeats the value {dup}")
            n *= len(vals)
            checked.append((key, vals))
        if n > MAX_CASES:
            raise ValueError(f"Grid has {n} cases; at most {MAX_CASES} per sweep (split the grid)")
        object.__setattr__(self, "axes", tuple(checked))

    def __iter__(self) -> Iterator[dict]:
        keys = [k for k, _ in self.axes]
        for combo in itertools.product(*(v for _, v in self.axes)):
            yield dict(zip(keys, combo))

    def __len__(self) -> int:
        return math.prod(len(v) for _, v in self.axes)

    def to_jsonable(self) -> dict:
        return {"grid": {k: list(v) for k, v in self.axes}}


@dataclass(frozen=True, init=False)
class Cases:
    """An explicit list of cases, ``Cases([{"depth": 10}, {"depth": 20, "width": 64}])``: each a
    dict of plain values; no case twice."""

    cases: tuple

    def __init__(self, cases: Sequence[dict]) -> None:
        if not isinstance(cases, (list, tuple)) or not cases:
            raise TypeError(f"Cases needs a non-empty list of dicts, got {short_repr(cases)}")
        check_int("number of cases", len(cases), 1, MAX_CASES)
        checked = tuple(_check_case(f"case {i}", c) for i, c in enumerate(cases))
        seen: dict = {}
        for i, c in enumerate(checked):
            t = canonical(c)
            if t in seen:
                raise ValueError(f"case {i} repeats case {seen[t]}: {t}")
            seen[t] = i
        object.__setattr__(self, "cases", checked)

    def __iter__(self) -> Iterator[dict]:
        return (dict(c) for c in self.cases)

    def __len__(self) -> int:
        return len(self.cases)

    def to_jsonable(self) -> dict:
        return {"cases": [dict(c) for c in self.cases]}


def as_cases(cases: Union[Grid, Cases, Sequence[dict]]) -> Union[Grid, Cases]:
    """A :class:`Grid` or :class:`Cases` as is; a list of dicts as :class:`Cases`."""
    if isinstance(cases, (Grid, Cases)):
        return cases
    if isinstance(cases, (list, tuple)):
        return Cases(cases)
    raise TypeError(f"cases must be a Grid, a Cases or a list of dicts, got {short_repr(cases)}")
