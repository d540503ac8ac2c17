"""How a record travels and how it is stored.

An evaluator's results may hold numpy arrays (the *wire* form: what :func:`~.evaluate.run_case`
returns and a worker sends back; arrays pickle compactly and exactly). Two forms are made from it:

* :func:`plain`: the JSON-able form a :class:`~.result.SweepResult` holds: arrays as (nested)
  lists, floats exactly, inf/nan as the strings ``"inf"``, ``"-inf"``, ``"nan"``
  (:func:`signalprop.results.to_jsonable`'s convention);
* :func:`dumps_packed`: the form written to the store's log: every float array's little-endian float64
  bytes (signed integer arrays: int64) one after the other in one byte string (the log holds it
  in base64), and in its place ``{"$array": "f8", "shape": [...], "at": <byte offset>}``: exact,
  and far cheaper to write than decimal text (repr-ing one float costs ~0.2-0.3 us); other
  arrays as lists. :func:`unpack` gives back exactly :func:`plain` of the original.

A result dict may not use the key ``"$array"`` (it marks a packed array)."""

from __future__ import annotations

import math
from json.encoder import encode_basestring_ascii

import numpy as np

from ..results import to_jsonable

__all__ = ["ARRAY_KEY", "plain", "dumps_packed", "unpack", "plain_array"]

ARRAY_KEY = "$array"
_F8 = np.dtype("<f8")
_I8 = np.dtype("<i8")
_KINDS = {"f8": _F8, "i8": _I8}


def _scalar(value):
    """A scalar as JSON: numpy scalars unwrapped, inf/nan as strings."""
    if isinstance(value, np.generic):
        value = value.item()
    return to_jsonable(value)


def plain_array(a: np.ndarray):
    """An array as lists: numbers exactly (floats as float64), non-finite floats as strings."""
    kind = a.dtype.kind
    if kind in "iub" or (kind == "f" and bool(np.isfinite(a).all())):
        return a.tolist()
    return to_jsonable(a)


def plain(value):
    """The JSON-able form of a wire value (dicts, lists, scalars, numpy arrays and scalars)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return plain_array(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if type(value) is float and math.isfinite(value):
        return value
    return _scalar(value)


_STR = encode_basestring_ascii
_FLOAT = float.__repr__          # what json writes for a finite float (shortest round trip)
_INT = int.__repr__


_REF = {kind: f'{{"{ARRAY_KEY}":"{kind}","shape":[' for kind in _KINDS}
_PACKED = {_F8: "f8", _I8: "i8"}      # dtypes whose arrays are stored as they are


class _Writer:
    """JSON text of a wire value with its numeric arrays set aside (see :func:`dumps_packed`):
    a direct walk, about three times cheaper than building the packed dicts for ``json``; dicts
    (every record is one) and their common leaves are handled first, without a call."""

    def __init__(self) -> None:
        self.out: list = []
        self.parts: list = []
        self.size = 0

    def ref(self, kind: str, a: np.ndarray) -> None:
        """A C-contiguous little-endian float64 (``"f8"``) or int64 (``"i8"``) array."""
        shape = str(a.shape[0]) if a.ndim == 1 else ",".join(map(str, a.shape))
        self.out.append(f'{_REF[kind]}{shape}],"at":{self.size}}}')
        self.parts.append(a)
        self.size += a.nbytes

    def dict(self, v: dict) -> None:
        out = self.out
        if ARRAY_KEY in v:
            raise ValueError(f"result dicts may not use the key {ARRAY_KEY!r} (it marks a "
                             "packed array in the sweep store)")
        sep = "{"
        for k, x in v.items():
            if type(k) is not str:
                raise TypeError(f"dict keys must be str to be stored, got {k!r}")
            out.append(sep + _STR(k) + ":")
            sep = ","
            tx = type(x)                 # the common leaves inline (a call saved per item)
            if tx is str:
                out.append(_STR(x))
            elif tx is dict:
                self.dict(x)
            elif tx is float and math.isfinite(x):
                out.append(_FLOAT(x))
            elif tx is int:
                out.append(_INT(x))
            elif tx is np.ndarray and x.dtype in _PACKED and x.flags.c_contiguous:
                self.ref(_PACKED[x.dtype], x)      # no conversion, no copy
            else:
                self.value(x)
        out.append("}" if sep == "," else "{}")

    def value(self, v) -> None:
        out, t = self.out, type(v)
        if t is dict:
            self.dict(v)
        elif t is float:
            out.append(_FLOAT(v) if math.isfinite(v) else _STR(to_jsonable(v)))
        elif t is str:
            out.append(_STR(v))
        elif t is int:
            out.append(_INT(v))
        elif v is None:
            out.append("null")
        elif t is bool:
            out.append("true" if v else "false")
        elif t is np.ndarray:
            kind = v.dtype.kind
            if kind == "f":
                self.ref("f8", np.ascontiguousarray(v, dtype=_F8))
            elif kind == "i":
                self.ref("i8", np.ascontiguousarray(v, dtype=_I8))
            else:
                self.value(plain_array(v))
        elif t is list or t is tuple:
            out.append("[")
            for i, x in enumerate(v):
                if i:
                    out.append(",")
                self.value(x)
            out.append("]")
        elif isinstance(v, np.generic):
            self.value(v.item())
        else:
            raise TypeError(f"a sweep record holds a {type(v).__name__}, which is not JSON-able")


def dumps_packed(value) -> tuple:
    """``(text, data)``: the JSON text of a wire value (compact, ASCII) in which every float
    array is replaced by ``{"$array": "f8", "shape": [...], "at": offset}`` (signed integer
    arrays: ``"i8"``; other arrays are written as lists), and ``data``, those arrays'
    little-endian float64 / int64 bytes one after the other. ValueError for a dict that uses
    the key ``"$array"``."""
    w = _Writer()
    w.value(value)
    return "".join(w.out), b"".join(w.parts)


def unpack(value, data: bytes):
    """The inverse of :func:`dumps_packed` up to :func:`plain`:
    ``unpack(json.loads(text), data) == plain(x)`` for ``text, data = dumps_packed(x)``."""
    if isinstance(value, dict):
        kind = value.get(ARRAY_KEY)
        if kind in _KINDS:
            shape = tuple(value["shape"])
            dtype = _KINDS[kind]
            count = math.prod(shape)
            if not isinstance(value["at"], int) or value["at"] < 0 or \
                    value["at"] + count * dtype.itemsize > len(data):
                raise ValueError(f"a packed array lies outside its record's data: {value}")
            arr = np.frombuffer(data, dtype=dtype, count=count, offset=value["at"])
            return plain_array(arr.reshape(shape))
        return {k: unpack(v, data) for k, v in value.items()}
    if isinstance(value, list):
        return [unpack(v, data) for v in value]
    return value
