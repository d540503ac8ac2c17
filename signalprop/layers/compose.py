"""Layers made of layers: :class:`Serial` (a stack run as one layer) and :class:`Add` (the input
fanned out to several paths whose outputs meet in a weighted sum), in theory and simulation.

``Add(paths, scales)``: ``y = sum_i s_i P_i(x)`` where each path ``P_i`` is a stack of layers and
the empty stack ``()`` is the identity (a skip connection). A residual block is
``Add(((), branch), (alpha, beta))`` (:class:`signalprop.layers.residual.Residual`). The tracked
variable of both kinds is their output (``q^l = ||y||^2 / N``, ``g^l`` its gradient), so a
profile has one row per composed layer.

Mean field (Yang & Schoenholz 2017, sec. 3, for any number of paths and k inputs): the paths'
outputs are independent unit by unit given their means when at most one path draws no weights
of its own (each path with a fresh weight matrix gives Gaussian units independent of everything
upstream at infinite width), so

    K_y = sum_i s_i^2 K_i + sum_{i != j} s_i s_j m_i m_j^T,   m_y = sum_i s_i m_i,
    Pi_x = sum_i s_i^2 J_i^T(Pi_y)      (gradient independence),

with ``J_i^T`` the path's backward maps composed (:func:`signalprop.kernel.weighted_sum`). Two
weightless paths (``Add(((), ()))`` = 2x, or a LayerNorm beside the skip) are refused: their
outputs are deterministic functions of the same units and the sum's kernel needs their joint law,
which this rule does not have. Weights shared by name between paths (``Dense(share=...)``) are
treated as independent, as everywhere in the theory. Derivation: docs/theory/residual.md.

Monte Carlo: each path's samplers composed; forward ``sum_i s_i P_i(x)``; backward
``sum_i s_i J_i^T delta``; in the scaled form (:mod:`signalprop.sampling`) the terms are added at
the largest exponent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import kernel as kernel_maths
from .._validate import short_repr
from ..kernel import Kernel
from ..network import KernelStep, Step, has_pair_rule
from ..sampling import ENGINES, Streams, _scaled_api, add_shifts, ldexp_rows, register, sampler

__all__ = ["Serial", "Add", "draws_weights"]


def draws_weights(layer) -> bool:
    """Whether ``layer`` (or a layer inside it) draws a weight matrix of its own."""
    if getattr(layer, "sigma_w2", None) is not None or getattr(layer, "draws_weights", False) is True:
        return True
    return any(draws_weights(la) for la in getattr(layer, "sublayers", ()))


def _stack(value, what: str) -> tuple:
    """A tuple of signalprop layers from a layer or a sequence of them."""
    stack = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    for la in stack:
        if not callable(getattr(la, "kernel_step", None)):
            raise TypeError(f"{what} must hold signalprop layers, got {type(la).__name__}")
    return stack


def _check_scale(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number >= 0, got {short_repr(value)}") from None
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def _chain_width(stack: tuple, n_in: int) -> int:
    n = n_in
    for la in stack:
        la.check_input(n)
        n = la.width
    return n


def _fast_chain(stack: tuple, state: tuple, n_in: int, cache: dict) -> tuple:
    """The fast-path steps of a stack: (output state, sum of log_d + log_back)."""
    st, n, log_kappa = state, n_in, 0.0
    for la in stack:
        step = la.mean_field(st, n, cache)
        log_kappa += step.log_d + step.log_back
        st, n = step.out, la.width
    return st, log_kappa


#: cache keys of the inner record (:func:`_kernel_chain`): the records, the position of the chain
#: being built, and the log scale of the gradient handed to the chain being run backward
_INNER, _WHERE, _OFFSET = "inner", "inner_where", "inner_offset"


def _kernel_chain(stack: tuple, kernel: Kernel, n_in: int, cache: dict, path: int = 0,
                  log_in: float = 0.0) -> tuple:
    """The kernel-path steps of a stack: (output kernel, its backward map to the input).

    Records, per sublayer ``j`` of the stack, one entry of ``cache["inner"]`` (a list of dicts,
    JSON-friendly): ``layer`` (``cache["layer"]``, the top-level layer), ``where`` (path and
    sublayer indices from the top-level layer down, for nested compositions), ``kind``,
    ``n_in``/``width``, the kernel of its input (``input_log_q``, ``input_corr``) and its tracked
    variable's log second moments (``tracked_log_q``); when the backward map runs, the
    gradient covariance at its tracked variable as ``exp(log_pi) pi``, with ``log_pi`` relative
    to the covariance handed to the top-level layer's backward map (``log_in``: the log of the
    factor the chain's input gradient carries, ``2 log s_i`` for path ``i`` of an :class:`Add`).
    Numbers and behaviour of the chain are unchanged."""
    where = tuple(cache.get(_WHERE, ())) + (path,)
    st, n, steps, recs = kernel, n_in, [], []
    for j, la in enumerate(stack):
        outer = cache.get(_WHERE)
        cache[_WHERE] = where + (j,)
        try:
            step = la.kernel_step(st, n, cache)
        finally:
            if outer is None:
                cache.pop(_WHERE, None)
            else:
                cache[_WHERE] = outer
        rec = {"layer": cache.get("layer"), "where": list(where + (j,)), "kind": type(la).__name__,
               "n_in": int(n), "width": int(la.width), "input_log_q": st.log_q.copy(),
               "input_corr": st.corr.copy(), "tracked_log_q": step.tracked.log_q.copy()}
        cache.setdefault(_INNER, []).append(rec)
        recs.append(rec)
        steps.append(step)
        st, n = step.out, la.width

    def back(P: np.ndarray) -> tuple:
        lf = 0.0
        base = cache.get(_OFFSET, 0.0) + log_in
        for step, rec in zip(reversed(steps), reversed(recs)):
            f1, P = step.to_tracked(P)
            rec["log_pi"], rec["pi"] = base + (lf + f1), np.array(P, dtype=float)
            outer = cache.get(_OFFSET)
            cache[_OFFSET] = base + (lf + f1)   # nested chains record on the same scale
            try:
                f2, P = step.back(P)
            finally:
                if outer is None:
                    cache.pop(_OFFSET, None)
                else:
                    cache[_OFFSET] = outer
            lf += f1 + f2
        return lf, P

    return st, back


@dataclass(frozen=True)
class Serial:
    """A stack of layers run as one layer (its output is the tracked variable)."""

    layers: tuple

    def __post_init__(self):
        stack = _stack(self.layers, "Serial")
        if not stack:
            raise ValueError("Serial needs at least one layer")
        object.__setattr__(self, "layers", stack)

    @property
    def width(self) -> int:
        return self.layers[-1].width

    @property
    def sublayers(self) -> tuple:
        return self.layers

    @property
    def stacks(self) -> tuple:
        """The stacks of layers applied to the input (here one: the layers in order)."""
        return (self.layers,)

    @property
    def needs_mean(self) -> bool:
        return any(la.needs_mean for la in self.layers)

    @property
    def pair_rule(self) -> bool:
        return all(has_pair_rule(la) for la in self.layers)

    def check_input(self, n_in: int) -> None:
        _chain_width(self.layers, n_in)

    def with_width(self, width: int) -> "Serial":
        return Serial(tuple(la.with_width(width) for la in self.layers))

    def same_rule(self, other) -> bool:
        return (type(other) is Serial and len(other.layers) == len(self.layers)
                and all(a.same_rule(b) for a, b in zip(self.layers, other.layers)))

    def mean_field(self, state: tuple, n_in: int, cache: dict) -> Step:
        """The stack's fast-path steps composed; g of the output, back to the input through all."""
        out, log_kappa = _fast_chain(self.layers, state, n_in, cache)
        return Step(out[0], out[1], out, 0.0, log_kappa)

    def kernel_step(self, kernel: Kernel, n_in: int, cache: dict) -> KernelStep:
        out, back = _kernel_chain(self.layers, kernel, n_in, cache)
        return KernelStep(out, out, kernel_maths.identity, back)

    def label(self) -> str:
        return f"Serial({len(self.layers)} layers, {self.width})"


@dataclass(frozen=True)
class Add:
    """``y = sum_i s_i P_i(x)``: ``paths`` a sequence of stacks of layers (``()``: the identity),
    ``scales`` one finite number >= 0 per path (default all 1)."""

    paths: tuple
    scales: Optional[tuple] = None

    def __post_init__(self):
        if isinstance(self.paths, (str, bytes)) or not hasattr(self.paths, "__iter__"):
            raise TypeError(f"paths must be a sequence of stacks of layers, got "
                            f"{short_repr(self.paths)}")
        paths = tuple(_stack(p, f"paths[{i}]") for i, p in enumerate(self.paths))
        if len(paths) < 2:
            raise ValueError(f"paths: Add needs at least two paths, got {len(paths)}")
        if self.scales is not None and (isinstance(self.scales, (str, bytes))
                                        or not hasattr(self.scales, "__iter__")):
            raise TypeError(f"scales must be a sequence of numbers >= 0, one per path, got "
                            f"{short_repr(self.scales)}")
        scales = (1.0,) * len(paths) if self.scales is None else tuple(self.scales)
        if len(scales) != len(paths):
            raise ValueError(f"scales must have one entry per path ({len(paths)}), got "
                             f"{len(scales)}")
        scales = tuple(_check_scale(f"scales[{i}]", s) for i, s in enumerate(scales))
        bare = [i for i, p in enumerate(paths) if not any(draws_weights(la) for la in p)]
        if len(bare) > 1:
            raise ValueError(f"paths[{bare[0]}] and paths[{bare[1]}] draw no weights of their own: their "
                             f"outputs are functions of the same units, and the mean-field sum "
                             f"needs at most one such path (start the others with a Dense layer)")
        object.__setattr__(self, "paths", paths)
        object.__setattr__(self, "scales", scales)

    needs_mean = True     # the paths' means meet (s_i s_j m_i m_j)

    @property
    def width(self) -> int:
        longest = max(self.paths, key=len)
        return longest[-1].width

    @property
    def sublayers(self) -> tuple:
        return tuple(la for p in self.paths for la in p)

    @property
    def stacks(self) -> tuple:
        """The stacks of layers applied to the input: the paths."""
        return self.paths

    @property
    def pair_rule(self) -> bool:
        return all(has_pair_rule(la) for la in self.sublayers)

    def check_input(self, n_in: int) -> None:
        outs = [_chain_width(p, n_in) for p in self.paths]
        if len(set(outs)) > 1:
            raise ValueError(f"the paths of {type(self).__name__} map width {n_in} to "
                             f"{', '.join(map(str, outs))}; they must meet at one width "
                             f"(a skip path needs a branch ending at width {n_in})")

    def with_width(self, width: int) -> "Add":
        return Add(tuple(tuple(la.with_width(width) for la in p) for p in self.paths), self.scales)

    def same_rule(self, other) -> bool:
        return (type(other) is type(self) and other.scales == self.scales
                and len(other.paths) == len(self.paths)
                and all(len(a) == len(b) and all(x.same_rule(y) for x, y in zip(a, b))
                        for a, b in zip(self.paths, other.paths)))

    def mean_field(self, state: tuple, n_in: int, cache: dict) -> Step:
        """Module docstring, for one or two inputs in plain floats."""
        if not any(self.scales):
            raise ValueError(f"{type(self).__name__} with every scale 0 outputs zero")
        outs = [_fast_chain(p, state, n_in, cache) for p in self.paths]
        # logs of the positive terms s_i^2 q_i, so tiny scalings do not underflow
        ls2 = [2.0 * math.log(s) if s > 0 else -math.inf for s in self.scales]
        t = [l + o[0][0] for l, o in zip(ls2, outs)]
        top = max(t)
        w = [math.exp(ti - top) for ti in t]
        mus = [o[0][2] for o in outs]
        cross = 0.0                     # sum_{i<j} 2 s_i s_j m_i m_j / exp(top)
        for i in range(len(outs)):
            for j in range(i + 1, len(outs)):
                if mus[i] and mus[j] and self.scales[i] > 0 and self.scales[j] > 0:
                    cross += 2.0 * mus[i] * mus[j] * math.exp(0.5 * (t[i] + t[j]) - top)
        s = sum(w) + cross
        lq_out = top + math.log(s)
        c_out = None
        if state[1] is not None:
            c_out = (sum(o[0][1] * wi for o, wi in zip(outs, w)) + cross) / s
            c_out = min(1.0, max(-1.0, c_out))
        mu_out = None
        if all(m is not None for m in mus):
            mu_out = sum(m * math.exp(0.5 * (ti - top)) for m, ti in zip(mus, t)) / math.sqrt(s)
        log_back = float(np.logaddexp.reduce([l + o[1] for l, o in zip(ls2, outs)]))
        return Step(lq_out, c_out, (lq_out, c_out, mu_out), 0.0, log_back)

    def kernel_step(self, kernel: Kernel, n_in: int, cache: dict) -> KernelStep:
        """Module docstring, for k inputs (:func:`signalprop.kernel.weighted_sum`)."""
        if not any(self.scales):
            raise ValueError(f"{type(self).__name__} with every scale 0 outputs zero")
        ls2 = [2.0 * math.log(s) if s > 0 else -math.inf for s in self.scales]
        outs = [_kernel_chain(p, kernel, n_in, cache, i, l)
                for i, (p, l) in enumerate(zip(self.paths, ls2))]
        out = kernel_maths.weighted_sum([o[0] for o in outs], self.scales)

        def back(P: np.ndarray) -> tuple:
            terms = []
            for l, (_, path_back) in zip(ls2, outs):
                if l > -math.inf:
                    f, Q = path_back(P)
                    terms.append((l + f, Q))
            top = max(f for f, _ in terms)
            if not math.isfinite(top):
                return top, np.zeros_like(P)
            return top, sum(math.exp(f - top) * Q for f, Q in terms if f > -math.inf)

        return KernelStep(out, out, kernel_maths.identity, back)

    def label(self) -> str:
        return f"Add({len(self.paths)} paths, {self.width})"


# ---------------------------------------------------------------------------------------------
# samplers


def _common_exponent(exps: list):
    """``(m, [e_i - m])`` with ``m`` the largest of per-sample exponents (None = 0); shifts are
    None where no rescaling is needed."""
    if all(e is None for e in exps):
        return None, [None] * len(exps)
    ref = next(np.asarray(e) for e in exps if e is not None)
    arrs = [np.zeros_like(ref) if e is None else np.asarray(e) for e in exps]
    if all(np.array_equal(arrs[0], a) for a in arrs[1:]):
        return arrs[0], [None] * len(exps)
    m = arrs[0]
    for a in arrs[1:]:
        m = np.maximum(m, a)
    return m, [a - m for a in arrs]


@_scaled_api
class SerialRule:
    """Monte Carlo of a :class:`Serial` layer: its layers' samplers composed."""

    def __init__(self, layer: Serial, n_in: int, engine: str):
        self.engine, self.rules, n = engine, [], n_in
        for la in layer.layers:
            self.rules.append(sampler(la, n, engine))
            n = la.width
        self.n_in, self.n_out = n_in, layer.width
        self.couples_inputs = any(r.couples_inputs for r in self.rules)

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        return sum(r.ctx_nbytes(k, itemsize) + r.n_out * k * itemsize for r in self.rules)

    def forward_scaled(self, x: np.ndarray, e, rng: Streams):
        ctxs = []
        for r in self.rules:
            _, _, x, e, ctx = r.forward_scaled(x, e, rng)
            ctxs.append(ctx)
        return x, e, x, e, ctxs

    def backward_scaled(self, gt: np.ndarray, ctxs, rng: Streams):
        return _chain_backward(self.rules, gt, ctxs, rng)

    def to_tracked_scaled(self, gy: np.ndarray, ctx):
        return gy, None


def _chain_backward(rules: list, g: np.ndarray, ctxs: list, rng: Streams):
    k = None
    for r, ctx in zip(rules[::-1], ctxs[::-1]):
        g, k1 = r.to_tracked_scaled(g, ctx)
        g, k2 = r.backward_scaled(g, ctx, rng)
        k = add_shifts(k, add_shifts(k1, k2))
    return g, k


@_scaled_api
class AddRule:
    """Monte Carlo of an :class:`Add` layer (module docstring). The paths are sampled in order
    (their draws come from the sample's streams in that order) and summed from the last to the
    first."""

    def __init__(self, layer: Add, n_in: int, engine: str):
        self.engine, self.paths = engine, []
        for p in layer.paths:
            rules, n = [], n_in
            for la in p:
                rules.append(sampler(la, n, engine))
                n = la.width
            self.paths.append(rules)
        self.scales = layer.scales
        self.n_in, self.n_out = n_in, layer.width
        self.couples_inputs = any(r.couples_inputs for p in self.paths for r in p)

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        return sum(r.ctx_nbytes(k, itemsize) + r.n_out * k * itemsize
                   for p in self.paths for r in p)

    def _live(self) -> list:
        """The paths that enter the sum: all but identity paths of scale 0 (a path of layers with
        scale 0 is still run, so that its draws keep every later layer's random numbers where
        they are)."""
        return [i for i, s in enumerate(self.scales) if s != 0.0 or self.paths[i]]

    def forward_scaled(self, x: np.ndarray, e, rng: Streams):
        outs, ctxs = [], []
        for rules in self.paths:
            st, es, pc = x, e, []
            for r in rules:
                _, _, st, es, ctx = r.forward_scaled(st, es, rng)
                pc.append(ctx)
            outs.append((st, es))
            ctxs.append(pc)
        dt = x.dtype.type
        live = self._live()
        ey, shifts = _common_exponent([outs[i][1] for i in live])
        y = None
        for i, d in zip(live[::-1], shifts[::-1]):
            st = ldexp_rows(outs[i][0], d)
            s = self.scales[i]
            if y is None:
                y = st * dt(s) if s != 1.0 else st.copy()
            else:
                y += st * dt(s) if s != 1.0 else st
        return y, ey, y, ey, ctxs

    def backward_scaled(self, gt: np.ndarray, ctxs, rng: Streams):
        dt = gt.dtype.type
        live = self._live()
        terms = []
        for i in live[::-1]:
            s = self.scales[i]
            g0 = gt * dt(s)            # a new array: the paths never share one
            if not self.paths[i]:
                terms.append((g0, None))
                continue
            terms.append(_chain_backward(self.paths[i], g0, ctxs[i], rng))
        k, shifts = _common_exponent([t[1] for t in terms])
        g = None
        for (gi, _), d in zip(terms, shifts):
            gi = ldexp_rows(gi, d)
            g = gi if g is None else g + gi
        return g, k

    def to_tracked_scaled(self, gy: np.ndarray, ctx):
        return gy, None


for _engine in ENGINES:
    register(Serial, _engine)(lambda layer, n_in, _e=_engine: SerialRule(layer, n_in, _e))
    register(Add, _engine)(lambda layer, n_in, _e=_engine: AddRule(layer, n_in, _e))
