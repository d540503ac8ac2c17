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
gradients (``k`` = None for 0). Powers of two are exact in binary floating point, so a layer
computed on ``2^-e x`` gives bit for bit ``2^-e`` times what it gives on ``x`` wherever neither
over- nor underflows: the engines rescale by powers of two only, and their numbers are those
of the unscaled computation wherever that one is finite, while q, c and the gradients stay
representable at any depth (:mod:`signalprop.simulate`). A layer is exactly rescalable when
it is positively homogeneous in its input: linear maps (a bias ``b`` becomes ``2^-e b``),
relu, leaky_relu and linear activations (``phi(2^e h) = 2^e phi(h)``), and the normalisation
layers, whose output does not depend on the input's scale (their backward products then carry
``2^-e``). Any other activation is applied to the real pre-activation ``2^e h``; the rule
raises :class:`LayerError` if that exceeds the float range (below it, an activation with
``phi(0) = 0`` is linearised, :func:`apply_activation`), or if the activation returns non-finite
values at finite arguments. ``forward``, ``to_tracked`` and
``backward`` are the same maps on real (unscaled) arrays.

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

A :class:`~signalprop.network.Dense` layer is a linear sampler (``h = W x + b``; ``forward(x)
-> (h, ctx)``, ``backward(delta) -> W^T delta``) followed by the activation (:class:`DenseRule`).
Two engines exist for its linear part.

**dense**: the weight matrix is drawn in full (CONVENTIONS.md, "Fully connected network"):
gaussian ``W_ij ~ N(0, sigma_w^2/N_{l-1})``; uniform ``W_ij ~ U(-a, a)`` with
``a = sqrt(3 sigma_w^2 / N_{l-1})`` (same variance); orthogonal ``W = s O`` with ``O`` Haar
(semi-)orthogonal from the QR decomposition of a Gaussian matrix with the signs of ``diag(R)``
moved into ``Q`` (Mezzadri 2007, "How to generate random matrices from the classical compact
groups", Notices AMS 54, section 5), ``s = sigma_w sqrt(max(N_l, N_{l-1}) / N_{l-1})`` so that
``E[W_ij^2] = sigma_w^2 / N_{l-1}``. Biases ``b_i ~ N(0, sigma_b^2)`` (not drawn when
``sigma_b^2 = 0``). O(N^2) random numbers per layer.

**matrix-free**: exact conditional sampling with O(N) random numbers and flops per layer, for
gaussian and orthogonal weights; see :class:`MatrixFreeGaussian` and
:class:`MatrixFreeOrthogonal` for the construction and the proof that the joint law of all
forward pre-activations and backward gradients is exactly that of the dense engine.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import numpy as np

from .network import Dense, Nonlinearity

__all__ = ["Streams", "register", "sampler", "DenseRule", "DenseSampler", "MatrixFreeGaussian",
           "MatrixFreeOrthogonal", "ENGINES", "LayerError", "ldexp_rows", "add_shifts"]

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


class Streams:
    """The random streams of a batch of sample networks: one numpy ``Generator`` per sample.

    Every draw fills row ``s`` of the output from generator ``s`` alone, so the numbers a sample
    receives do not depend on which other samples share its batch.
    """

    def __init__(self, generators):
        self.generators = list(generators)

    def __len__(self):
        return len(self.generators)

    def normal(self, shape, dtype=np.float64) -> np.ndarray:
        """Standard normal array of shape ``(S, *shape)``."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        out = np.empty((len(self.generators),) + shape, dtype=dtype)
        for s, g in enumerate(self.generators):
            g.standard_normal(out=out[s], dtype=dtype)
        return out

    def uniform(self, shape, dtype=np.float64) -> np.ndarray:
        """Uniform [0, 1) array of shape ``(S, *shape)``."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        out = np.empty((len(self.generators),) + shape, dtype=dtype)
        for s, g in enumerate(self.generators):
            g.random(out=out[s], dtype=dtype)
        return out

    def get_state(self) -> list:
        """The bit-generator states (to replay a stretch of draws exactly)."""
        return [g.bit_generator.state for g in self.generators]

    def set_state(self, states) -> None:
        for g, st in zip(self.generators, states):
            g.bit_generator.state = st


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
    """Orthonormal frame of the rows of ``y`` (shape (S, k, n), k = 1 or 2) by Gram-Schmidt with
    one re-orthogonalisation: ``y[:, j] = sum_i R[:, i, j] U[:, i]``, ``R`` upper triangular with
    ``R[:, i, i] >= 0``. A row with ``R[:, i, i] = 0`` (a zero vector, or the second input exactly
    parallel to the first) gets ``U[:, i] = 0``; a tiny non-zero residual gives a numerically
    orthonormal direction, which is as valid a frame as any (see MatrixFreeGaussian)."""
    S, k, n = y.shape
    U = np.zeros_like(y)
    R = np.zeros((S, k, k), dtype=np.float64)
    y0 = y[:, 0]
    r00 = np.sqrt(_dot(y0, y0)).astype(np.float64)
    inv = np.divide(1.0, r00, out=np.zeros_like(r00), where=r00 > 0)
    U[:, 0] = y0 * inv[:, None].astype(y.dtype)
    R[:, 0, 0] = r00
    if k == 2:
        u0 = U[:, 0]
        w = y[:, 1].copy()
        r01 = np.zeros(S)
        for _ in range(2):
            c = _dot(u0, w).astype(np.float64)
            w -= c[:, None].astype(y.dtype) * u0
            r01 += c
        r11 = np.sqrt(_dot(w, w)).astype(np.float64)
        inv = np.divide(1.0, r11, out=np.zeros_like(r11), where=r11 > 0)
        U[:, 1] = w * inv[:, None].astype(y.dtype)
        R[:, 0, 1] = r01
        R[:, 1, 1] = r11
    return U, R


def _combine(R: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``out[:, j] = sum_i R[:, i, j] B[:, i]`` for upper-triangular ``R`` (S, k, k), ``B`` (S, k, n)."""
    dt = B.dtype
    out = np.empty_like(B)
    out[:, 0] = R[:, 0, 0, None].astype(dt) * B[:, 0]
    if B.shape[1] == 2:
        out[:, 1] = R[:, 0, 1, None].astype(dt) * B[:, 0] + R[:, 1, 1, None].astype(dt) * B[:, 1]
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
    * tiny (``k`` below ``minexp + nmant/2 + 8``, about ``2^-987`` in float64, where the entries
      would become subnormal and lose their digits), for ``phi(0) = 0``: the one-sided
      linearisation ``phi(x) = phi'(0+-) x``, exact to a relative ``|phi''| |x| / |phi'|`` (about
      ``2^-987``, far below rounding, for every built-in activation); with ``phi(0) != 0`` the
      real value ``phi(0) + O(2^-987)`` is ``phi`` of the (sub)normal real argument, computed
      directly;
    * huge (``k`` above ``maxexp - 8``, about ``2^1016``): the asymptote ``phi(x) = a_+- x``
      where phi grows linearly (:func:`_one_sided_slopes`; gelu, silu, softplus, elu and selu
      equal it in float64 beyond |x| ~ 40, and entries of the vector below that are ~2^-1000 of
      its norm), else :class:`LayerError`.

    The linearised forms are positively homogeneous: ``y = a_+- h`` at ``ey = e``, ``arg = +-x0``
    (the point whose ``phi'`` is ``a_+-``)."""
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


@_scaled_api
class DenseRule:
    """A :class:`~signalprop.network.Dense` layer in the engines: its linear sampler
    (``h = W x + b``), then ``x^l = phi(h)``. The tracked variable is ``h``;
    ``to_tracked`` multiplies by ``phi'(h)`` (CONVENTIONS.md, "Backward").

    Scaled form: the linear part maps ``2^e x`` to ``2^e (W x + 2^-e b)``; a positively
    homogeneous activation (relu, leaky_relu, linear: ``phi(2^e h) = 2^e phi(h)``,
    ``phi'(2^e h) = phi'(h)``) keeps the exponent, any other is applied to the real
    ``2^e h`` (:func:`apply_activation`). ``ctx[1]`` is the point at which ``phi'`` is
    evaluated."""

    couples_inputs = False

    def __init__(self, linear, activation):
        self.linear, self.act = linear, activation
        self.n_in, self.n_out, self.engine = linear.n_in, linear.n_out, linear.engine
        self.homogeneous = bool(getattr(activation, "homogeneous", False))

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        return self.linear.ctx_nbytes(k, itemsize) + k * self.n_out * itemsize

    def forward_scaled(self, x: np.ndarray, e, rng: Streams):
        if _is_zero(e):
            h, ctx = self.linear.forward(x, rng)
        else:
            h, ctx = self.linear.forward(x, rng, shift=e)
        if self.homogeneous or _is_zero(e):
            arg, ey = h, e
            y = np.asarray(self.act.phi(arg), dtype=x.dtype)
        else:
            y, ey, arg = apply_activation(self.act, h, e, x.dtype)
        _finite_values(self.act, "phi", arg, y)
        return h, e, y, ey, (ctx, arg)

    def backward_scaled(self, gt: np.ndarray, ctx, rng: Streams):
        return self.linear.backward(gt, ctx[0], rng), None

    def to_tracked_scaled(self, gy: np.ndarray, ctx):
        h = ctx[1]
        h = np.ascontiguousarray(h[:, 0]) if gy.ndim == 2 else h[:, :gy.shape[1]]
        return np.asarray(self.act.dphi(h), dtype=gy.dtype) * gy, None

    def diagnose(self, ctx) -> None:
        """:class:`LayerError` naming the argument where ``phi'`` is not finite (called by the
        engines once a gradient came out non-finite; not on the hot path)."""
        _finite_values(self.act, "phi'", ctx[1], np.asarray(self.act.dphi(ctx[1])))


class _Identity:
    """The linear part of a :class:`~signalprop.network.Nonlinearity`: none."""

    def __init__(self, n: int, engine: str):
        self.n_in = self.n_out = n
        self.engine = engine

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        return 0

    def forward(self, x, rng, shift=None):
        return x, None

    def backward(self, delta, ctx, rng):
        return delta


for _engine in ENGINES:
    register(Nonlinearity, _engine)(
        lambda layer, n_in, _e=_engine: DenseRule(_Identity(n_in, _e), layer.activation))


class DenseSampler:
    """Dense sampling of a :class:`~signalprop.network.Dense` layer: the full ``N_l x N_{l-1}``
    weight matrix per sample (gaussian, uniform or Haar (semi-)orthogonal), then ``h = W x + b``.
    ``ctx`` is ``(M, c)`` with ``W = c M`` (``M`` of shape ``(S, N_l, N_{l-1})``; see
    :meth:`weights_of`). Per-sample draw order: the weights, then the bias (when
    ``sigma_b^2 > 0``)."""

    engine = "dense"

    def __init__(self, layer: Dense, n_in: int):
        self.layer = layer
        self.n_in, self.n_out = int(n_in), int(layer.width)
        self.weights = layer.weights
        self.sigma_w = math.sqrt(layer.sigma_w2)
        self.sigma_b = math.sqrt(layer.sigma_b2)

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        return self.n_out * self.n_in * itemsize

    def draw_weights(self, rng: Streams, dtype):
        """``(M, c)`` with ``W = c M`` for every sample (``M`` of shape ``(S, N_l, N_{l-1})``): the
        Gaussian scale is applied to the products, not to the N^2 entries."""
        n_out, n_in = self.n_out, self.n_in
        if self.weights == "gaussian":
            return rng.normal((n_out, n_in), dtype), self.sigma_w / math.sqrt(n_in)
        if self.weights == "uniform":
            W = rng.uniform((n_out, n_in), dtype)
            a = math.sqrt(3.0 * self.layer.sigma_w2 / n_in)
            W *= dtype.type(2.0 * a)
            W -= dtype.type(a)
            return W, 1.0
        # orthogonal: Haar (semi-)orthogonal via QR with the sign correction
        big, small = max(n_out, n_in), min(n_out, n_in)
        Q, R = np.linalg.qr(rng.normal((big, small), dtype))
        d = np.sign(np.diagonal(R, axis1=1, axis2=2))
        d[d == 0] = 1
        Q *= d[:, None, :]
        W = Q if n_out >= n_in else np.ascontiguousarray(Q.transpose(0, 2, 1))
        return W, self.sigma_w * math.sqrt(big / n_in)

    def weights_of(self, ctx) -> np.ndarray:
        """The weight matrices ``W`` (S, N_l, N_{l-1}) from a forward ``ctx``."""
        M, c = ctx
        return M * M.dtype.type(c) if c != 1.0 else M

    def forward(self, x: np.ndarray, rng: Streams, shift=None):
        """``h = W x + 2^-shift b`` (``shift``: per-sample exponent of ``x``, module docstring)."""
        M, c = self.draw_weights(rng, x.dtype)
        h = np.matmul(x, M.transpose(0, 2, 1))
        if c != 1.0:
            h *= x.dtype.type(c)
        if self.sigma_b > 0:
            b = rng.normal((self.n_out,), x.dtype)
            b *= x.dtype.type(self.sigma_b)
            h += ldexp_rows(b, _neg(shift))[:, None, :]
        return h, (M, c)

    def backward(self, delta: np.ndarray, ctx, rng: Streams) -> np.ndarray:
        M, c = ctx
        out = np.matmul(delta, M) if delta.ndim == 3 else np.matmul(delta[:, None, :], M)[:, 0, :]
        if c != 1.0:
            out *= delta.dtype.type(c)
        return out


# ---------------------------------------------------------------------------------------------
# matrix-free engine


class MatrixFreeGaussian:
    """Exact matrix-free sampling of a Gaussian :class:`~signalprop.network.Dense` layer.

    **Construction.** Write the layer as one standard Gaussian matrix ``Z`` (``N_l x n'``, i.i.d.
    N(0, 1) entries) acting on augmented inputs: ``h = Z y`` with
    ``y = [sigma_w x / sqrt(N_{l-1}), sigma_b]`` (``n' = N_{l-1} + 1``; without the last entry
    when ``sigma_b = 0``), so that ``W = (sigma_w / sqrt(N_{l-1})) Z[:, :N_{l-1}]`` and
    ``b = sigma_b Z[:, -1]``. Let ``U`` (``n' x k``) be an orthonormal basis of the span of the
    k <= 2 augmented inputs (Gram-Schmidt), ``Y = U R``. Forward: draw ``G`` (``N_l x k``,
    i.i.d. N(0, 1)) and set ``H = G R`` (k pre-activation vectors). Backward, for one gradient
    vector ``delta`` (input a): draw ``xi ~ N(0, ||delta||^2 I_{n'})`` and return

        Z^T delta = U (G^T delta) + (I - U U^T) xi,     W^T delta = (sigma_w/sqrt(N_{l-1})) [Z^T delta]_{:N_{l-1}}.

    Cost per layer and sample: ``k N_l + n'`` random numbers and O(k N) flops.

    **Proof that the law is exact.** Complete ``U`` to an orthogonal matrix ``[U, U_perp]``.
    ``U`` is a function of the layer's input, which is independent of ``Z``; the Gaussian
    ensemble is invariant under right multiplication by a fixed orthogonal matrix, so
    ``[G, G_perp] = Z [U, U_perp]`` has i.i.d. N(0, 1) entries, independent of the input, and
    ``Z = G U^T + G_perp U_perp^T``. The forward pre-activations ``H = Z Y = G R`` depend on
    ``G`` only. The gradient ``delta^l`` is a function of ``H``, of the later layers and of ``v``;
    none of these involves ``G_perp``, so ``G_perp`` is independent of ``delta^l`` and, given
    ``delta^l``, ``G_perp^T delta^l ~ N(0, ||delta^l||^2 I_{n'-k})``. Hence
    ``Z^T delta = U G^T delta + U_perp G_perp^T delta`` where the second term has the law
    ``N(0, ||delta||^2 U_perp U_perp^T) = (I - U U^T) N(0, ||delta||^2 I)``. ``G_perp`` enters
    nothing else (it is used once, in this layer's backward product), so replacing it by the
    fresh ``xi`` leaves the joint law of all ``(h^l, delta^l)`` over all layers unchanged. Any
    orthonormal ``U`` whose span contains the inputs works, which is why a rank-deficient pair
    (``c = 1``) or a tiny residual direction needs no special care. This is the Gaussian
    conditioning technique of Bolthausen (2014, "An iterative construction of solutions of the
    TAP equations") and of the analysis of approximate message passing (Bayati & Montanari 2011),
    applied to one matrix per layer.
    """

    engine = "matrix-free"

    def __init__(self, layer: Dense, n_in: int):
        self.layer = layer
        self.n_in, self.n_out = int(n_in), int(layer.width)
        self.sigma_w = math.sqrt(layer.sigma_w2)
        self.sigma_b = math.sqrt(layer.sigma_b2)
        self.n_aug = self.n_in + (1 if self.sigma_b > 0 else 0)

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        return k * (self.n_aug + self.n_out) * itemsize

    def forward(self, x: np.ndarray, rng: Streams, shift=None):
        """``(h, ctx)`` for the inputs ``x`` at exponent ``shift`` (the bias entry of the
        augmented input is ``2^-shift sigma_b``; module docstring of :mod:`signalprop.sampling`)."""
        S, k, n = x.shape
        dt = x.dtype
        scale = dt.type(self.sigma_w / math.sqrt(n))
        if self.sigma_b > 0:
            y = np.empty((S, k, n + 1), dtype=dt)
            np.multiply(x, scale, out=y[:, :, :n])
            if _is_zero(shift):
                y[:, :, n] = self.sigma_b
            else:
                y[:, :, n] = ldexp_rows(np.full(S, self.sigma_b, dtype=dt), _neg(shift))[:, None]
        else:
            y = x * scale
        U, R = _frame(y)
        G = rng.normal((k, self.n_out), dt)
        return _combine(R, G), (U, G)

    def backward(self, delta: np.ndarray, ctx, rng: Streams) -> np.ndarray:
        U, G = ctx
        dt = delta.dtype
        c = _coords(G, delta)
        nd = np.sqrt(_dot(delta, delta))
        xi = rng.normal((self.n_aug,), dt)
        xi *= nd[:, None].astype(dt)
        xi -= _span(_coords(U, xi), U)
        xi += _span(c, U)
        out = xi[:, :self.n_in]
        out *= dt.type(self.sigma_w / math.sqrt(self.n_in))
        return out


class MatrixFreeOrthogonal:
    """Exact matrix-free sampling of an orthogonal :class:`~signalprop.network.Dense` layer.

    **Construction.** Let ``p = max(N_l, N_{l-1})`` and ``O`` Haar on O(p); the (semi-)orthogonal
    weight matrix is ``W = s E_l^T O E_{l-1}`` with ``E`` the first-columns embeddings of
    ``R^{N_l}``, ``R^{N_{l-1}}`` into ``R^p`` and ``s = sigma_w sqrt(p / N_{l-1})``: the top-left
    block of a Haar matrix, which has exactly the law of the dense engine's QR construction
    (uniform on the Stiefel manifold; square when ``N_l = N_{l-1}``). Let ``U`` (``p x k``) be an
    orthonormal basis of the embedded inputs, ``X = U R``. Forward: ``V`` = Gram-Schmidt of a
    ``p x k`` standard Gaussian matrix (a uniformly distributed k-frame), ``h = s E_l^T V R + b``.
    Backward: with ``d = E_l delta`` (``delta`` padded with zeros to length p),
    ``c = V^T d``, ``rho = ||d - V c||``, ``zeta`` a uniformly random unit vector of
    ``span(U)^perp`` (project a standard Gaussian vector of R^p and normalise):

        O^T d = U c + rho zeta,       W^T delta = s E_{l-1}^T O^T d.

    Cost per layer and sample: ``k p + N_l + p`` random numbers, O(k p) flops. (Equivalently
    ``O = H_V diag(I_k, O') H_U^T`` with ``H_U``, ``H_V`` products of k Householder reflections
    taking ``e_1..e_k`` to ``U``, ``V`` and ``O'`` a fresh Haar matrix of O(p - k); then ``O'^T``
    applied to a vector independent of it is a uniformly random vector of the same norm.)

    **Proof that the law is exact.** ``U`` is a function of the input, independent of ``O``. (i)
    ``O U`` is uniform on the Stiefel manifold (left invariance of Haar measure), so ``V`` has the
    law of ``O U``. (ii) Given ``O U = V``, write ``O = V U^T + Q`` where ``Q`` maps
    ``span(U)^perp`` isometrically onto ``span(V)^perp``. For any orthogonal ``T`` fixing
    ``span(U)`` pointwise, ``O T`` is again Haar with ``(O T) U = V``, so the conditional law of
    ``O`` given ``V`` is invariant under ``O -> O T``, which maps ``Q^T w`` to ``T^T Q^T w``. The
    ``T^T`` act transitively on spheres of ``span(U)^perp``; hence, for any ``w`` in
    ``span(V)^perp`` independent of ``Q`` given ``V``, ``Q^T w`` is uniformly distributed on the
    sphere of radius ``||w||`` of ``span(U)^perp``. (iii) ``delta^l`` depends on ``O`` only through
    ``h^l``, i.e. through ``V`` (the bias, later layers and ``v`` are independent of ``O``); so with
    ``w = P_{V perp} d``, ``O^T d = U V^T d + Q^T w`` has the stated law. ``Q`` enters nothing
    else, so a fresh ``zeta`` per layer reproduces the joint law of all ``(h^l, delta^l)``.
    Inputs that are zero or parallel give a zero column of ``U``; the matching column of ``V`` is
    zeroed as well, which is the same construction with a smaller k.
    """

    engine = "matrix-free"

    def __init__(self, layer: Dense, n_in: int):
        self.layer = layer
        self.n_in, self.n_out = int(n_in), int(layer.width)
        self.p = max(self.n_in, self.n_out)
        self.scale = math.sqrt(layer.sigma_w2) * math.sqrt(self.p / self.n_in)
        self.sigma_b = math.sqrt(layer.sigma_b2)

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        return k * (self.n_in + self.p) * itemsize

    def forward(self, x: np.ndarray, rng: Streams, shift=None):
        """``(h, ctx)`` for the inputs ``x`` at exponent ``shift`` (bias ``2^-shift b``)."""
        S, k, n = x.shape
        dt = x.dtype
        p, n_out = self.p, self.n_out
        U, R = _frame(x)
        nb = n_out if self.sigma_b > 0 else 0
        draws = rng.normal((k * p + nb,), dt)
        V, _ = _frame(draws[:, :k * p].reshape(S, k, p))
        live = (np.diagonal(R, axis1=1, axis2=2) > 0).astype(dt)
        V *= live[:, :, None]
        h = _combine(R, V[:, :, :n_out])
        h *= dt.type(self.scale)
        if nb:
            b = draws[:, k * p:]
            b *= dt.type(self.sigma_b)
            h += ldexp_rows(b, _neg(shift))[:, None, :]
        return h, (U, V)

    def backward(self, delta: np.ndarray, ctx, rng: Streams) -> np.ndarray:
        U, V = ctx
        dt = delta.dtype
        n_out, n_in, p = self.n_out, self.n_in, self.p
        c = _coords(V[:, :, :n_out], delta)
        w_top = delta - _span(c, V[:, :, :n_out])
        rho2 = _dot(w_top, w_top)
        if p > n_out:
            w_bot = _span(c, V[:, :, n_out:])
            rho2 = rho2 + _dot(w_bot, w_bot)
        zeta = rng.normal((p,), dt)
        zeta[:, :n_in] -= _span(_coords(U, zeta[:, :n_in]), U)
        zn = np.sqrt(_dot(zeta, zeta))
        f = np.divide(np.sqrt(rho2), zn, out=np.zeros_like(zn), where=zn > 0)
        out = zeta[:, :n_in] * f[:, None].astype(dt)
        out += _span(c, U)
        out *= dt.type(self.scale)
        return out


@register(Dense, "dense")
def _dense_dense(layer: Dense, n_in: int) -> DenseRule:
    return DenseRule(DenseSampler(layer, n_in), layer.activation)


@register(Dense, "matrix-free")
def _matrix_free_dense(layer: Dense, n_in: int) -> DenseRule:
    if layer.weights == "gaussian":
        return DenseRule(MatrixFreeGaussian(layer, n_in), layer.activation)
    if layer.weights == "orthogonal":
        return DenseRule(MatrixFreeOrthogonal(layer, n_in), layer.activation)
    raise ValueError(f"engine='matrix-free' supports gaussian and orthogonal weights, not "
                     f"{layer.weights!r} (its conditional law given W x is not rotation invariant); "
                     "use engine='dense'")
