"""Argument checks shared by the public functions: each raises ValueError/TypeError naming the
parameter and the allowed range."""

from __future__ import annotations

import math
import numbers

import numpy as np


def check_finite(name: str, value) -> None:
    """Raise unless every entry of ``value`` is a finite real number."""
    if type(value) in (float, int):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
        return
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number or array of them, got {value!r}") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")


def check_positive(name: str, value) -> np.ndarray:
    """Finite and > 0."""
    if type(value) in (float, int) and math.isfinite(value) and value > 0:
        return np.float64(value)
    check_finite(name, value)
    arr = np.asarray(value, dtype=float)
    if np.any(arr <= 0):
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return arr


def check_nonnegative(name: str, value) -> np.ndarray:
    """Finite and >= 0."""
    if type(value) in (float, int) and math.isfinite(value) and value >= 0:
        return np.float64(value)
    check_finite(name, value)
    arr = np.asarray(value, dtype=float)
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return arr


def check_correlation(name: str, value) -> np.ndarray:
    """Finite and in [-1, 1]."""
    check_finite(name, value)
    arr = np.asarray(value, dtype=float)
    if np.any(np.abs(arr) > 1):
        raise ValueError(f"{name} must lie in [-1, 1], got {value!r}")
    return arr


def check_int(name: str, value, minimum: int = 1) -> int:
    """An integer (not a bool) >= minimum."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            value = int(value)
        else:
            raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
