"""Argument checks shared by the public functions: each raises ValueError/TypeError naming the
parameter and the allowed range. Values are quoted in messages by :func:`short_repr`, so an
error never embeds a whole array or network."""

from __future__ import annotations

import math
import numbers
from typing import Optional

import numpy as np

#: longest quotation of a value in an error message (characters).
REPR_LIMIT = 80


def short_repr(value, limit: int = REPR_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters; arrays as ``array(shape=..., dtype=...)``."""
    if isinstance(value, np.ndarray) and value.size > 8:
        return f"array(shape={value.shape}, dtype={value.dtype})"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 5] + " ...>"


def _as_float_array(name: str, value) -> np.ndarray:
    """``value`` as a float array, or TypeError naming ``name`` (strings, None, booleans and
    complex numbers are not real numbers, even where numpy would convert them)."""
    what = f"{name} must be a real number or array of them, got {short_repr(value)}"
    if value is None or isinstance(value, (str, bytes, bool, np.bool_, complex, np.complexfloating)):
        raise TypeError(what)
    try:
        raw = np.asarray(value)
        if raw.dtype.kind not in "iuf":
            if raw.dtype.kind != "O":
                raise TypeError(what)
            if any(v is None or isinstance(v, (str, bytes, bool, np.bool_, complex))
                   for v in raw.ravel()):
                raise TypeError(what)
        return np.asarray(raw, dtype=float)
    except (TypeError, ValueError, OverflowError):
        raise TypeError(what) from None


def check_finite(name: str, value) -> None:
    """Raise unless every entry of ``value`` is a finite real number."""
    if type(value) in (float, int):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
        return
    arr = _as_float_array(name, value)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {short_repr(value)}")


def check_positive(name: str, value) -> np.ndarray:
    """Finite and > 0."""
    if type(value) in (float, int) and math.isfinite(value) and value > 0:
        return np.float64(value)
    check_finite(name, value)
    arr = np.asarray(value, dtype=float)
    if np.any(arr <= 0):
        raise ValueError(f"{name} must be > 0, got {short_repr(value)}")
    return arr


def check_nonnegative(name: str, value) -> np.ndarray:
    """Finite and >= 0."""
    if type(value) in (float, int) and math.isfinite(value) and value >= 0:
        return np.float64(value)
    check_finite(name, value)
    arr = np.asarray(value, dtype=float)
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0, got {short_repr(value)}")
    return arr


def check_correlation(name: str, value) -> np.ndarray:
    """Finite and in [-1, 1]."""
    check_finite(name, value)
    arr = np.asarray(value, dtype=float)
    if np.any(np.abs(arr) > 1):
        raise ValueError(f"{name} must lie in [-1, 1], got {short_repr(value)}")
    return arr


def finite_scalar(name: str, value) -> float:
    """One finite real number (not an array, string, bool or complex number), as a float."""
    check_finite(name, value)
    if np.ndim(value) != 0:
        raise TypeError(f"{name} must be one real number, got {short_repr(value)}")
    return float(value)


def positive_scalar(name: str, value) -> float:
    """One finite real number > 0."""
    v = finite_scalar(name, value)
    if not v > 0:
        raise ValueError(f"{name} must be > 0, got {short_repr(value)}")
    return v


def nonnegative_scalar(name: str, value) -> float:
    """One finite real number >= 0."""
    v = finite_scalar(name, value)
    if not v >= 0:
        raise ValueError(f"{name} must be >= 0, got {short_repr(value)}")
    return v


def check_choice(name: str, value, choices) -> str:
    """One of the strings ``choices`` (ValueError listing them otherwise)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got "
                         f"{short_repr(value)}")
    return value


def check_int(name: str, value, minimum: int = 1, maximum: Optional[int] = None) -> int:
    """An integer (not a bool) in ``[minimum, maximum]`` (floats with an integer value count)."""
    allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            value = int(value)
        else:
            raise TypeError(f"{name} must be an integer {allowed}, got {short_repr(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer {allowed}, got {short_repr(value)}")
    return int(value)


def _physical_memory() -> int:
    """Bytes of physical memory (8 GiB where the system does not say)."""
    try:
        import os
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2 ** 30


#: the most memory one array (or one step) of a computation may ask for: half the machine.
MEMORY_LIMIT = _physical_memory() // 2


def format_bytes(n: float) -> str:
    """``74.5 GiB`` style."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024.0
    return f"{n:.3g} EiB"  # pragma: no cover


def check_memory(what: str, nbytes: float, limit: Optional[float] = None) -> None:
    """ValueError, up front, when ``what`` would need more than ``limit`` bytes (default
    :data:`MEMORY_LIMIT`, half the physical memory), saying how much it would need."""
    limit = MEMORY_LIMIT if limit is None else limit
    if not nbytes <= limit:
        raise ValueError(f"{what} would need {format_bytes(nbytes)} of memory, more than the "
                         f"{format_bytes(limit)} allowed (half the physical memory)")
