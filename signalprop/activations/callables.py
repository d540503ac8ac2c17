"""Custom activations from Python callables: probed once at construction, derivatives given
(``dphi``, ``d2phi``) or by 6th-order central differences kept off the declared kinks."""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import numpy as np

from .. import gaussian
from .._validate import short_repr
from .core import Activation
from .kinks import _check_kinks

_PROBE = np.linspace(-8.0, 8.0, 33)    # where a callable is tried once at construction


def _probe_callable(f: Callable, label: str, what: str) -> None:
    """TypeError unless ``f`` maps the float array _PROBE (shape (33,)) to real numbers of the
    same shape; ValueError if they are all non-finite. (Some non-finite values are allowed:
    np.log is undefined for x < 0, and the expectations refuse it there by name.)"""
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = f(_PROBE.copy())
    except Exception as exc:  # noqa: BLE001 - any failure of the user's function
        msg = " ".join(str(exc).split())[:160]
        raise TypeError(f"{label}: {what} must accept a float numpy array and act elementwise; "
                        f"called on an array of shape {_PROBE.shape} it raised "
                        f"{type(exc).__name__}: {msg}") from None
    shape = np.shape(raw)
    if shape != _PROBE.shape:
        raise TypeError(f"{label}: {what} must return an array of its input's shape (act "
                        f"elementwise); given shape {_PROBE.shape} it returned "
                        f"{type(raw).__name__} of shape {shape}")
    try:
        arr = np.asarray(raw)
        if np.iscomplexobj(arr):
            raise TypeError("complex")
        vals = np.asarray(arr, float)
    except (TypeError, ValueError):
        raise TypeError(f"{label}: {what} must return real numbers; it returned "
                        f"{short_repr(raw)}") from None
    if not np.any(np.isfinite(vals)):
        raise ValueError(f"{label}: {what} is not finite anywhere on x in [-8, 8] (e.g. "
                         f"{vals[16]!r} at x = 0): not an activation")


def _from_callable(fn: Callable, dphi: Optional[Callable], d2phi: Optional[Callable],
                   kinks=None) -> Activation:
    """A Python callable; missing derivatives by 6th-order central differences.

    The step is h = 1e-3 (1 + |x|); the truncation error is O(h^6 phi^(7)) and the rounding error
    O(eps |phi| / h), about 1e-12 relative for smooth phi of unit scale: documented, not exact.
    With declared ``kinks`` the step is also at most 1/64 of the distance to the nearest kink, so
    the stencil never straddles one (relative error ~1e-11 for phi ~ |x - k|^a next to it).
    ``fn`` (and ``dphi``, ``d2phi`` if given) are tried once on 33 points of [-8, 8]
    (``_probe_callable``): a function that is not elementwise is refused here, not deep inside
    a later computation.
    """
    kk = np.asarray(sorted(set(_check_kinks(kinks))), float)
    name = getattr(fn, "__name__", "custom")
    label = f"activation({getattr(fn, '__qualname__', name)})"
    for f, what in ((fn, "phi"), (dphi, "dphi"), (d2phi, "d2phi")):
        if f is not None:
            if not callable(f):
                raise TypeError(f"{label}: {what} must be callable, got {type(f).__name__}")
            _probe_callable(f, label, what)

    def step(v):
        h = 1e-3 * (1.0 + np.abs(v))
        if kk.size:
            dist = np.min(np.abs(v[..., None] - kk), axis=-1)
            h = np.where(dist > 0, np.minimum(h, dist / 64.0), h)  # at a kink: both sides
        return h

    def fd(f, order):
        c1 = np.array([-1, 9, -45, 0, 45, -9, 1]) / 60.0
        c2 = np.array([2, -27, 270, -490, 270, -27, 2]) / 180.0
        c = c1 if order == 1 else c2
        ks = np.arange(-3, 4)

        def g(v):
            v = np.asarray(v, float)
            h = step(v)
            with np.errstate(invalid="ignore", divide="ignore"):
                return sum(ck * f(v + k * h) for ck, k in zip(c, ks) if ck != 0) / h**order
        return g
    f0 = lambda v: np.asarray(fn(np.asarray(v, float)), float)  # noqa: E731
    f1 = dphi if dphi is not None else fd(f0, 1)
    f2 = d2phi if d2phi is not None else (fd(f1, 1) if dphi is not None else fd(f0, 2))
    return Activation(name, f0, f1, f2, expr=None, tau=None,
                      kinks=gaussian.Kinks(tuple(kk), label))
