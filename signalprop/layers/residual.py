"""Residual blocks: ``x^l = alpha x^{l-1} + beta F_l(x^{l-1})``, in theory and simulation.

``F_l`` (the *branch*) is any stack of layers (``Dense``, normalisation layers, even residual
blocks) that maps the width back to itself; ``alpha``, ``beta`` are constants of the block
(depth-dependent scalings such as ``beta = 1/sqrt(L)`` or ReZero's ``beta = 0`` are values the
constructor :func:`resnet` sets per block). The tracked variable of a block is its output, the
residual stream ``x^l``: ``q^l = ||x^l||^2 / N``, ``g^l = E[(d loss / d x^l_i)^2]``.

Mean field (Yang & Schoenholz 2017, "Mean field residual networks: on the edge of chaos", sec. 3;
branch and skip scalings of Hayou et al. 2021, "Stable ResNet", AISTATS, eq. 1), with ``q_F``,
``c_F``, ``m_F`` the branch's output kernel and mean:

    q^l  = alpha^2 q^{l-1} + beta^2 q_F + 2 alpha beta m^{l-1} m_F
    q^l c^l = alpha^2 q^{l-1} c^{l-1} + beta^2 q_F c_F + 2 alpha beta m^{l-1} m_F
    m^l  = alpha m^{l-1} + beta m_F,
    g^{l-1} = g^l (alpha^2 + beta^2 kappa_F),   kappa_F = prod over the branch of its layers'
    factors exp(log_d + log_back) (for YS's branch: sigma_v^2 sigma_w^2 E[phi'(h)^2])

(gradient independence). Monte Carlo: the branch layers' own samplers composed; backward
``alpha delta + beta J_F^T delta``; in the scaled form (:mod:`signalprop.sampling`) the two terms
are added at the larger exponent. Derivation: docs/theory/residual.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from .._validate import check_int, short_repr
from ..network import MAX_DEPTH, MAX_WIDTH, Network, Step
from .dense import Dense
from ..sampling import ENGINES, Streams, _scaled_api, add_shifts, ldexp_rows, register, sampler

__all__ = ["Residual"]


def _check_scale(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number >= 0, got {value!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


@dataclass(frozen=True)
class Residual:
    """A residual block ``x^l = alpha x^{l-1} + beta F(x^{l-1})``; ``F`` = the layers of ``branch``
    applied in order. ``alpha``, ``beta``: finite numbers >= 0 (``beta = 0``: ReZero / SkipInit
    at initialisation)."""

    branch: tuple
    alpha: float = 1.0
    beta: float = 1.0

    def __post_init__(self):
        branch = tuple(self.branch) if isinstance(self.branch, (list, tuple)) else (self.branch,)
        if not branch:
            raise ValueError("branch must hold at least one layer")
        for la in branch:
            if not callable(getattr(la, "mean_field", None)):
                raise TypeError(f"branch layers must be signalprop layers, got {type(la).__name__}")
        object.__setattr__(self, "branch", branch)
        object.__setattr__(self, "alpha", _check_scale("alpha", self.alpha))
        object.__setattr__(self, "beta", _check_scale("beta", self.beta))

    needs_mean = True     # the stream's mean meets the branch's (2 alpha beta m m_F)

    @property
    def width(self) -> int:
        return self.branch[-1].width

    def check_input(self, n_in: int) -> None:
        n = n_in
        for j, la in enumerate(self.branch):
            la.check_input(n)
            n = la.width
        if n != n_in:
            raise ValueError(f"the residual block's branch maps width {n_in} to {n}; the skip path "
                             f"needs equal widths (add a projection: a branch ending at width {n_in})")

    def with_width(self, width: int) -> "Residual":
        return Residual(tuple(la.with_width(width) for la in self.branch), self.alpha, self.beta)

    def same_rule(self, other) -> bool:
        return (type(other) is Residual and other.alpha == self.alpha and other.beta == self.beta
                and len(other.branch) == len(self.branch)
                and all(a.same_rule(b) for a, b in zip(self.branch, other.branch)))

    def mean_field(self, state: tuple, n_in: int, cache: dict) -> Step:
        """Yang & Schoenholz 2017 sec. 3 (module docstring)."""
        lq, c, mu = state
        st, n, log_kappa = state, n_in, 0.0
        for la in self.branch:
            step = la.mean_field(st, n, cache)
            log_kappa += step.log_d + step.log_back
            st, n = step.out, la.width
        lqF, cF, muF = st
        if self.alpha == 0.0 and self.beta == 0.0:
            raise ValueError("a residual block with alpha = beta = 0 outputs zero")
        # logs of the positive terms (alpha^2 q, beta^2 q_F), so tiny scalings do not underflow
        la2 = 2.0 * math.log(self.alpha) if self.alpha > 0 else -math.inf
        lb2 = 2.0 * math.log(self.beta) if self.beta > 0 else -math.inf
        ta, tb = la2 + lq, lb2 + lqF
        top = max(ta, tb)
        mm = 0.0                                       # 2 alpha beta m m_F / exp(top)
        if mu and muF and self.alpha > 0 and self.beta > 0:
            mm = 2.0 * mu * muF * math.exp(0.5 * (ta + tb) - top)
        s = math.exp(ta - top) + math.exp(tb - top) + mm
        lq_out = top + math.log(s)
        c_out = None
        if c is not None:
            c_out = (c * math.exp(ta - top) + cF * math.exp(tb - top) + mm) / s
            c_out = min(1.0, max(-1.0, c_out))
        mu_out = None
        if mu is not None and muF is not None:
            mu_out = (mu * math.exp(0.5 * (ta - top)) + muF * math.exp(0.5 * (tb - top))) / math.sqrt(s)
        log_back = float(np.logaddexp(la2, lb2 + log_kappa))
        return Step(lq_out, c_out, (lq_out, c_out, mu_out), 0.0, log_back)


def _common_exponent(ea, eb):
    """``(m, ea - m, eb - m)`` with ``m`` the larger of two per-sample exponents (None = 0);
    the shifts are None where no rescaling is needed."""
    if ea is None and eb is None:
        return None, None, None
    a = np.zeros_like(eb) if ea is None else np.asarray(ea)
    b = np.zeros_like(ea) if eb is None else np.asarray(eb)
    if np.array_equal(a, b):
        return a, None, None
    m = np.maximum(a, b)
    return m, a - m, b - m


@_scaled_api
class ResidualRule:
    """Monte Carlo of a :class:`Residual` block: the branch's samplers composed; tracked variable
    = output; backward ``alpha gt + beta J_F^T gt``."""

    def __init__(self, block: Residual, n_in: int, engine: str):
        self.block, self.engine = block, engine
        self.rules, n = [], n_in
        for la in block.branch:
            self.rules.append(sampler(la, n, engine))
            n = la.width
        self.n_in, self.n_out = n_in, block.width
        self.alpha, self.beta = block.alpha, block.beta
        self.couples_inputs = any(r.couples_inputs for r in self.rules)

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        return sum(r.ctx_nbytes(k, itemsize) + r.n_out * k * itemsize for r in self.rules)

    def forward_scaled(self, x: np.ndarray, e, rng: Streams):
        st, es, ctxs = x, e, []
        for r in self.rules:
            _, _, st, es, ctx = r.forward_scaled(st, es, rng)
            ctxs.append(ctx)
        dt = x.dtype.type
        ey, dx, dF = (es, None, None) if self.alpha == 0.0 else _common_exponent(e, es)
        st = ldexp_rows(st, dF)
        y = st * dt(self.beta) if self.beta != 1.0 else st.copy()
        if self.alpha != 0.0:
            x = ldexp_rows(x, dx)
            y += x * dt(self.alpha) if self.alpha != 1.0 else x
        return y, ey, y, ey, ctxs

    def backward_scaled(self, gt: np.ndarray, ctxs, rng: Streams):
        dt = gt.dtype.type
        g, k = gt * dt(self.beta), None
        for r, ctx in zip(self.rules[::-1], ctxs[::-1]):
            g, k1 = r.to_tracked_scaled(g, ctx)
            g, k2 = r.backward_scaled(g, ctx, rng)
            k = add_shifts(k, add_shifts(k1, k2))
        if self.alpha != 0.0:
            k, dF, dg = _common_exponent(k, None)
            g = ldexp_rows(g, dF)
            g += ldexp_rows(gt, dg) * dt(self.alpha)
        return g, k

    def to_tracked_scaled(self, gy: np.ndarray, ctx):
        return gy, None


for _engine in ENGINES:
    register(Residual, _engine)(lambda block, n_in, _e=_engine: ResidualRule(block, n_in, _e))
