"""How one layer of a finite random network is sampled: the per-layer rules of the Monte Carlo
engines of :mod:`signalprop.simulate` (and of the Jacobian products of :mod:`signalprop.jacobian`).

A *sampler* is bound to one layer and one engine. It draws the layer's random parameters for a
batch of independent sample networks and offers what the engines need:

    forward(x, rng)           -> (t, y, ctx)   t: the tracked variable (q_hat, c_hat are measured
                                               on it), y: the output fed to the next layer
    backward(gt, ctx, rng)    -> gx            gradient w.r.t. the layer's input from the gradient
                                               w.r.t. its tracked variable
    to_tracked(gy, ctx)       -> gt            gradient w.r.t. the tracked variable from the
                                               gradient w.r.t. the output

**Scaled form** (what the engines call): ``forward_scaled(x, e, rng) -> (t, et, y, ey, ctx)``,
``to_tracked_scaled(gy, ctx) -> (gt, k)``, ``backward_scaled(gt, ctx, rng) -> (gx, k)``. Every
vector is carried as a float array times a per-sample power of two: the real input is
``2^e x`` (``e`` an int array of shape (S,), or None for 0), the real tracked variable
``2^et t``, the real output ``2^ey y``; the gradients returned are ``2^-k`` times the real
gradients (``k`` = None for 0). Powers of two are exact in binary floating point, so the engines'
numbers are bit for bit those of the unscaled computation wherever that one is finite, while q,
c and the gradients stay representable at any depth. Exactly rescalable (positively homogeneous):
linear maps (bias ``2^-e b``), relu, leaky_relu and linear activations, and the normalisation
layers (output independent of the input's scale, backward products carrying ``2^-e``). Any other
activation is applied to the real pre-activation ``2^e h`` (:func:`apply_activation`); the rule
raises :class:`LayerError` if that exceeds the float range or if the activation returns
non-finite values at finite arguments. ``forward``, ``to_tracked`` and ``backward`` are the same
maps on real (unscaled) arrays. Derivation: docs/theory/log-scale-simulation.md.

``x`` has shape ``(S, k, N_{l-1})`` (S sample networks, k inputs), ``t`` and ``y`` have shape
``(S, k, N_l)``. Gradients have shape ``(S, N)`` (input a only) or ``(S, kd, N)`` when a layer
couples the inputs (``couples_inputs = True``, batch normalisation): then all k rows are carried.
``ctx`` is whatever the backward products need (the weights for the dense engine, O(N) vectors
for the matrix-free one). ``rng`` is a :class:`Streams`: one numpy Generator per sample, so every
sample consumes its own random numbers in a fixed order whatever the batch size (the engines'
reproducibility rests on this). Forward draws come from the sample's forward stream, backward
draws (matrix-free only) from its backward stream.

Adding a layer kind (residual, normalisation, ...) means writing its samplers and registering
them with :func:`register`; the engines dispatch on ``(type(layer), engine)`` and do not change.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Optional, Tuple

import numpy as np


__all__ = ["Streams", "register", "sampler", "ENGINES", "LayerError", "ldexp_rows", "add_shifts",
           "set_threads", "threads", "usable_cpus"]

ENGINES = ("dense", "matrix-free")


class LayerError(ValueError):
    """A sampled layer cannot go on: its activation returned non-finite values at finite
    arguments, or a non-homogeneous activation met a pre-activation beyond the float range
    (which rescaling by powers of two cannot absorb). The engines add the layer's index."""


# ---------------------------------------------------------------------------------------------
# powers of two per sample


def ldexp_rows(a: np.ndarray, k) -> np.ndarray:
    """``a * 2^k`` with one exponent per sample (``k`` of shape (S,), or None: ``a`` itself);
    exact wherever the result is a normal float."""
    if k is None:
        return a
    k = np.asarray(k)
    if not k.any():
        return a
    with np.errstate(over="ignore", under="ignore"):
        return np.ldexp(a, k.reshape((-1,) + (1,) * (a.ndim - 1)).astype(np.int32))


def add_shifts(a, b):
    """Sum of two per-sample exponents, either of which may be None (0)."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _neg(e):
    return None if e is None else -e


def _is_zero(e) -> bool:
    return e is None or not np.any(e)


def _scaled_api(cls):
    """Class decorator: the real-scale ``forward``, ``to_tracked`` and ``backward`` of a rule
    defined by its scaled forms (see the module docstring)."""

    def forward(self, x, rng):
        t, et, y, ey, ctx = self.forward_scaled(x, None, rng)
        return ldexp_rows(t, et), ldexp_rows(y, ey), ctx

    def to_tracked(self, gy, ctx):
        g, k = self.to_tracked_scaled(gy, ctx)
        return ldexp_rows(g, k)

    def backward(self, gt, ctx, rng):
        g, k = self.backward_scaled(gt, ctx, rng)
        return ldexp_rows(g, k)

    for name, fn in (("forward", forward), ("to_tracked", to_tracked), ("backward", backward)):
        if name not in cls.__dict__:
            setattr(cls, name, fn)
    return cls


#: numbers per sample below which a draw stays on the calling thread (a hand-off to the pool
#: costs about as much as drawing a few thousand normals)
PARALLEL_MIN = 1 << 15

_THREADS: Optional[int] = None
_POOL: Optional[ThreadPoolExecutor] = None
_POOL_KEY: Tuple[int, int] = (0, 0)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_threads(n: Optional[int]) -> None:
    """Threads that draw the random numbers of large per-sample draws (:meth:`Streams.for_each`):
    an int >= 1, or None for every usable CPU (the default). The numbers do not depend on it:
    each sample's generator is used by one thread at a time, in the sample's own order."""
    global _THREADS
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"threads must be an int >= 1 or None, got {n!r}")
    _THREADS = n


def threads() -> int:
    """The number of drawing threads now in force (:func:`set_threads`)."""
    return usable_cpus() if _THREADS is None else _THREADS


def _pool(n: int) -> ThreadPoolExecutor:
    """A pool of ``n - 1`` helper threads (the caller is the n-th), made again after a fork (a
    forked child inherits the pool object but not its threads)."""
    global _POOL, _POOL_KEY
    key = (os.getpid(), n)
    if _POOL is None or _POOL_KEY != key:
        _POOL = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="signalprop-draw")
        _POOL_KEY = key
    return _POOL


class Streams:
    """The random streams of a batch of sample networks: one numpy ``Generator`` per sample.

    Every draw fills row ``s`` of the output from generator ``s`` alone, so the numbers a sample
    receives do not depend on which other samples share its batch. Large draws run on several
    threads (numpy's fills release the GIL), each sample on one thread in its own order, so the
    numbers do not depend on the thread count either (:func:`set_threads`).

    :meth:`reserve` draws the next ``count`` normals of every sample in one call per sample and
    serves the following :meth:`normal` calls from them, in order: the numbers are exactly those
    of the separate calls (a generator's stream is one sequence, however it is cut), with one
    Python call per sample for many small draws instead of one per draw.
    """

    def __init__(self, generators, named=None):
        self.generators = list(generators)
        self._named = named
        self._buf: Optional[np.ndarray] = None     # reserved normals (S, count), or None
        self._cur = 0

    def named(self, name: str) -> "Streams":
        """The streams of the parameter shared under ``name``: fresh generators seeded from each
        sample's seed and the name alone, so every use of a shared parameter draws the same
        numbers, whatever else was drawn before it (see ``Dense.share``)."""
        if self._named is None:
            raise ValueError(f"these streams cannot draw shared parameters (share={name!r}): "
                             "they were made without per-sample seeds")
        return self._named(name)

    def __len__(self):
        return len(self.generators)

    def for_each(self, fn: Callable, cost: int) -> None:
        """``fn(s, generator_s)`` for every sample ``s``: in order on the calling thread when
        ``cost`` (numbers drawn per sample) is below :data:`PARALLEL_MIN` or one thread is set,
        else contiguous groups of samples on the drawing threads (``fn`` must only touch row
        ``s`` of shared arrays). Exceptions are re-raised here."""
        self._check_idle("for_each")
        gens = self.generators
        n = min(threads(), len(gens))
        if n <= 1 or cost < PARALLEL_MIN:
            for s, g in enumerate(gens):
                fn(s, g)
            return
        bounds = [len(gens) * i // n for i in range(n + 1)]

        def group(i):
            for s in range(bounds[i], bounds[i + 1]):
                fn(s, gens[s])

        futures = [_pool(n).submit(group, i) for i in range(1, n)]
        try:
            group(0)
        finally:
            for f in futures:
                f.result()

    def normal(self, shape, dtype=np.float64) -> np.ndarray:
        """Standard normal array of shape ``(S, *shape)`` (from the reservation when one is
        pending: then a view of it)."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if self._buf is not None:
            return self._take(shape, np.dtype(dtype))
        out = np.empty((len(self.generators),) + shape, dtype=dtype)
        self.for_each(lambda s, g: g.standard_normal(out=out[s], dtype=dtype), _size(shape))
        return out

    def uniform(self, shape, dtype=np.float64) -> np.ndarray:
        """Uniform [0, 1) array of shape ``(S, *shape)``."""
        self._check_idle("uniform")
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        out = np.empty((len(self.generators),) + shape, dtype=dtype)
        self.for_each(lambda s, g: g.random(out=out[s], dtype=dtype), _size(shape))
        return out

    # -- reservations ------------------------------------------------------------------------

    def reserve(self, count: int, dtype=np.float64) -> None:
        """Draw the next ``count`` standard normals (``dtype``) of every sample now; the next
        :meth:`normal` calls of that dtype, ``count`` numbers in all, are served from them.
        Any other draw, or :meth:`get_state`, before they are used up is an error (it would
        take numbers out of order)."""
        self._check_idle("reserve")
        buf = np.empty((len(self.generators), int(count)), dtype=dtype)
        self.for_each(lambda s, g: g.standard_normal(out=buf[s], dtype=dtype), int(count))
        self._buf, self._cur = buf, 0

    def reserved(self) -> int:
        """Reserved numbers not yet served (0: none pending)."""
        return 0 if self._buf is None else self._buf.shape[1] - self._cur

    def _take(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        n = _size(shape)
        buf, a = self._buf, self._cur
        if dtype != buf.dtype or a + n > buf.shape[1]:
            raise RuntimeError(f"a draw of {n} {dtype.name} normals does not match the "
                               f"reservation ({buf.shape[1] - a} {buf.dtype.name} left): a "
                               "sampler's declared draws (normals_drawn) are wrong")
        self._cur = a + n
        if self._cur == buf.shape[1]:
            self._buf = None
        return buf[:, a:a + n].reshape((buf.shape[0],) + shape)

    def _check_idle(self, what: str) -> None:
        if self._buf is not None:
            raise RuntimeError(f"{what} while {self.reserved()} reserved normals are pending: "
                               "a sampler's declared draws (normals_drawn) are wrong")

    def get_state(self) -> list:
        """The bit-generator states (to replay a stretch of draws exactly)."""
        self._check_idle("get_state")
        return [g.bit_generator.state for g in self.generators]

    def set_state(self, states) -> None:
        self._buf = None
        for g, st in zip(self.generators, states):
            g.bit_generator.state = st


def _size(shape: tuple) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


# ---------------------------------------------------------------------------------------------
# registry

_REGISTRY: Dict[Tuple[type, str], Callable] = {}


def register(kind: type, engine: str):
    """Class decorator / function registering ``factory(layer, n_in)`` as the sampler of layers of
    type ``kind`` in ``engine``."""
    def deco(factory):
        _REGISTRY[(kind, engine)] = factory
        return factory
    return deco


def sampler(layer, n_in: int, engine: str):
    """The sampler of ``layer`` (input width ``n_in``) for ``engine`` ("dense" or "matrix-free");
    a registered rule with only the real-scale methods is wrapped in :class:`RealScale`."""
    factory = _REGISTRY.get((type(layer), engine))
    if factory is None:
        known = sorted(e for (k, e) in _REGISTRY if k is type(layer))
        raise ValueError(f"engine={engine!r} cannot sample {type(layer).__name__} layers; "
                         f"engines that can: {', '.join(known) or 'none'}")
    rule = factory(layer, n_in)
    return rule if hasattr(rule, "forward_scaled") else RealScale(rule)


class RealScale:
    """The scaled form of a rule that only has ``forward``, ``to_tracked`` and ``backward``: its
    input is brought to the real scale (``2^e x``, which must lie in the float range) and its
    outputs and gradients carry no shift."""

    def __init__(self, rule):
        self.rule = rule

    def __getattr__(self, name):
        if name == "rule":                  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.rule, name)

    def forward_scaled(self, x, e, rng):
        t, y, ctx = self.rule.forward(ldexp_rows(x, e), rng)
        return t, None, y, None, ctx

    def to_tracked_scaled(self, gy, ctx):
        return self.rule.to_tracked(gy, ctx), None

    def backward_scaled(self, gt, ctx, rng):
        return self.rule.backward(gt, ctx, rng), None


# ---------------------------------------------------------------------------------------------
# small vectorised linear algebra for k <= 2 columns


def _frame(y: np.ndarray):
    """Orthonormal frame of the rows of ``y`` (shape (S, k, n)) by modified Gram-Schmidt with one
    re-orthogonalisation: ``y[:, j] = sum_i R[:, i, j] U[:, i]``, ``R`` upper triangular with
    ``R[:, i, i] >= 0``. A row with ``R[:, i, i] = 0`` (a zero vector, or an input exactly in the
    span of the earlier ones) gets ``U[:, i] = 0``; a tiny non-zero residual gives a numerically
    orthonormal direction, which is as valid a frame as any (see MatrixFreeGaussian)."""
    S, k, n = y.shape
    U = np.zeros_like(y)
    R = np.zeros((S, k, k), dtype=np.float64)
    y0 = y[:, 0]
    r00 = np.sqrt(_dot(y0, y0)).astype(np.float64)
    inv = np.divide(1.0, r00, out=np.zeros_like(r00), where=r00 > 0)
    U[:, 0] = y0 * inv[:, None].astype(y.dtype)
    R[:, 0, 0] = r00
    for j in range(1, k):
        w = y[:, j].copy()
        rcol = np.zeros((S, j))
        for _ in range(2):
            for i in range(j):
                c = _dot(U[:, i], w).astype(np.float64)
                w -= c[:, None].astype(y.dtype) * U[:, i]
                rcol[:, i] += c
        rjj = np.sqrt(_dot(w, w)).astype(np.float64)
        inv = np.divide(1.0, rjj, out=np.zeros_like(rjj), where=rjj > 0)
        U[:, j] = w * inv[:, None].astype(y.dtype)
        R[:, :j, j] = rcol
        R[:, j, j] = rjj
    return U, R


def _combine(R: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``out[:, j] = sum_i R[:, i, j] B[:, i]`` for upper-triangular ``R`` (S, k, k), ``B`` (S, k, n)."""
    dt = B.dtype
    out = np.empty_like(B)
    out[:, 0] = R[:, 0, 0, None].astype(dt) * B[:, 0]
    for j in range(1, B.shape[1]):
        acc = R[:, 0, j, None].astype(dt) * B[:, 0]
        for i in range(1, j + 1):
            acc = acc + R[:, i, j, None].astype(dt) * B[:, i]
        out[:, j] = acc
    return out


# The helpers below avoid einsum and BLAS reductions on purpose: a row-wise numpy sum gives every
# sample the same rounding whatever the batch size, which keeps results bitwise independent of
# the chunking.


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise inner products over the last axis."""
    return np.sum(a * b, axis=-1)


def _coords(U: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``U[:, i] . v`` for each frame vector: (S, k, n), (S, n) -> (S, k)."""
    return np.sum(U * v[:, None, :], axis=-1)


def _span(c: np.ndarray, U: np.ndarray) -> np.ndarray:
    """``sum_i c[:, i] U[:, i]``: (S, k), (S, k, n) -> (S, n)."""
    c = c.astype(U.dtype)
    out = c[:, 0, None] * U[:, 0]
    for i in range(1, U.shape[1]):
        out += c[:, i, None] * U[:, i]
    return out


# ---------------------------------------------------------------------------------------------
# dense engine


def _finite_values(act, what: str, arg: np.ndarray, val: np.ndarray) -> None:
    """:class:`LayerError` when ``val = phi(arg)`` (or ``phi'(arg)``) has a non-finite entry where
    ``arg`` is finite: one pass of ``isfinite`` over the layer's values."""
    if np.isfinite(val).all():
        return
    bad = ~np.isfinite(val) & np.isfinite(arg)
    if not bad.any():
        return
    i = np.flatnonzero(bad.ravel())[0]
    raise LayerError(f"activation {act!r} gives {what}({float(arg.ravel()[i])!r}) = "
                     f"{float(val.ravel()[i])!r}, not finite, at a finite argument; the "
                     f"simulation needs finite values of phi and phi' on the real line")


def _range_message(act, t: int, dtype, why: str) -> str:
    return (f"the pre-activations reach about 2^{t} = 1e{t * math.log10(2.0):.0f}, beyond the "
            f"{np.dtype(dtype).name} range, and activation {act!r} is not positively homogeneous "
            f"and {why}, so it cannot be applied there (the simulation rescales relu, leaky_relu "
            "and linear layers exactly, and replaces other activations by their linear behaviour "
            "at 0 or at infinity where they have one). Use a shallower network or a sigma_w^2 "
            "closer to the edge of chaos")


def _one_sided_slopes(act, dtype, where: str):
    """``(points, slopes)``: the one-sided linearisation ``phi(x) = a_+- x`` of ``act`` at 0
    (``where = "zero"``, for ``phi(0) = 0``; ``a_+- = phi'(+-t)``, t = 2^(minexp + nmant/2 + 8),
    needs ``a`` finite and not both 0) or at infinity (``"inf"``; ``a_+- = phi(+-T)/(+-T)``,
    T = 2^(maxexp - 4), needs the same slope at ``T 2^-24`` and ``phi'(+-T) = a_+-`` to 1e-12:
    linear growth, as gelu, silu, softplus, elu and selu have), or None where there is none."""
    fi = np.finfo(dtype)
    if where == "zero":
        pts = np.array([-1.0, 1.0], dtype) * dtype.type(2.0 ** (fi.minexp + fi.nmant // 2 + 8))
        slopes = np.asarray(act.dphi(pts), dtype=dtype)
        return (pts, slopes) if np.all(np.isfinite(slopes)) and np.any(slopes) else None
    pts = np.array([-1.0, 1.0], dtype) * dtype.type(2.0 ** (fi.maxexp - 4))
    slopes = np.asarray(act.phi(pts), dtype=np.float64) / pts
    inner = pts * dtype.type(2.0 ** -24)
    checks = (np.asarray(act.phi(inner), dtype=np.float64) / inner,
              np.asarray(act.dphi(pts), dtype=np.float64))
    tol = 1e-12 * max(1.0, float(np.max(np.abs(slopes)))) if np.all(np.isfinite(slopes)) else -1
    if tol < 0 or any(not np.all(np.abs(c - slopes) <= tol) for c in checks):
        return None
    return pts, slopes.astype(dtype)


def apply_activation(act, h: np.ndarray, e, dtype):
    """``phi`` of the real pre-activation ``2^e h`` for an activation that is not positively
    homogeneous: ``(y, ey, arg)`` with the real output ``2^ey y`` (``ey`` None: 0) and ``arg`` the
    point at which ``phi'`` is to be evaluated.

    Per sample, with ``2^k`` the size of the largest entry of ``2^e h``:

    * in the float range: ``y = phi(2^e h)``, ``ey = 0``, ``arg = 2^e h``;
    * tiny (``k`` below ``minexp + nmant/2 + 8``, about ``2^-987`` in float64), ``phi(0) = 0``:
      ``phi(x) = phi'(0+-) x``, exact to a relative ``|phi''| |x| / |phi'|`` (about ``2^-987``);
      ``phi(0) != 0``: ``phi`` of the (sub)normal real argument, computed directly;
    * huge (``k`` above ``maxexp - 8``, about ``2^1016``): the asymptote ``phi(x) = a_+- x`` where
      phi grows linearly (:func:`_one_sided_slopes`), else :class:`LayerError`.

    The linearised forms are ``y = a_+- h`` at ``ey = e``, ``arg = +-x0`` (the point whose
    ``phi'`` is ``a_+-``). Why these are exact to rounding: docs/theory/log-scale-simulation.md."""
    fi = np.finfo(dtype)
    S = h.shape[0]
    flat = h.reshape(S, -1)
    _, eh = np.frexp(np.max(np.abs(flat), axis=1))
    live = np.any(flat != 0, axis=1)
    top = eh.astype(np.int64) + np.asarray(e, dtype=np.int64)
    regimes = {"zero": live & (top < fi.minexp + fi.nmant // 2 + 8),
               "inf": live & (top > fi.maxexp - 8)}
    lin = {}
    for where, rows in regimes.items():
        if not rows.any():
            continue
        if where == "zero" and float(np.asarray(act.phi(np.zeros(1, dtype)))[0]) != 0.0:
            rows[:] = False                      # the real value is phi(0 + tiny): direct
            continue
        lin[where] = _one_sided_slopes(act, dtype, where)
        if lin[where] is None:
            why = "is not linear at 0" if where == "zero" else "does not grow linearly"
            raise LayerError(_range_message(act, int(top[rows][0]), dtype, why))
    linear = regimes["zero"] | regimes["inf"]
    arg = ldexp_rows(h, np.where(linear, 0, e))
    if not linear.any():
        return np.asarray(act.phi(arg), dtype=dtype), None, arg
    if arg is h:
        arg = h.copy()
    y = np.empty_like(h)
    if (~linear).any():
        y[~linear] = np.asarray(act.phi(arg[~linear]), dtype=dtype)
    for where, rows in regimes.items():
        if rows.any():
            (pm, ap), hr = lin[where], h[rows]
            neg = hr < 0
            y[rows] = np.where(neg, ap[0], ap[1]) * hr
            arg[rows] = np.where(neg, pm[0], np.where(hr > 0, pm[1], 0))
    return y, np.where(linear, e, 0), arg
