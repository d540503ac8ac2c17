"""Layer normalisation and RMS normalisation, in theory and simulation.

``LayerNorm``: ``y = (x - mean(x)) / sd(x)`` over the N units of one input (Ba, Kiros & Hinton
2016, eq. 4, with gain 1, bias 0 and eps = 0, their values at initialisation);
``RMSNorm``: ``y = x / rms(x)`` (Zhang & Sennrich 2019, eq. 4). The tracked variable is the
output ``y``. Between a linear ``Dense`` layer and a
:class:`~signalprop.layers.dense.Nonlinearity` they give the "pre-activation" placement
(``phi(LN(W x + b))``); after an activated ``Dense`` layer, the "post-activation" one.

Mean field. With ``q``, ``c``, ``m = mu sqrt(q)`` the per-unit second moment, correlation and
mean of the input (the means of two inputs are equal by symmetry):

    LayerNorm:  q' = 1,  c' = (c - mu^2) / (1 - mu^2),  mu' = 0
    RMSNorm:    q' = 1,  c' = c,                      mu' = mu

(the per-unit averages become expectations at infinite width). Backward: the Jacobian
``(1/s)(I - 1 1^T/N - y y^T/N)`` (LayerNorm, ``s^2 = q - m^2``) or ``(1/s)(I - y y^T/N)``
(RMSNorm, ``s^2 = q``) (Xiong et al. 2020, Lemma 1), so ``g_x = g_y / s^2`` at infinite width
(the ``1/N`` terms are finite-width; ``compare`` allows ``O(1/N)``).

Monte Carlo: deterministic given the input, one sampler for both engines; the output does not
depend on the input's scale, so in the engines' scaled form (:mod:`signalprop.sampling`) an
input at exponent ``e`` gives an output at exponent 0 and a backward product ``2^-e`` times the
one computed on the scaled input. Derivation: docs/theory/normalisation.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._validate import check_int
from .. import kernel as kernel_maths
from ..kernel import Kernel
from ..network import KernelStep, Step
from ..sampling import ENGINES, Streams, _scaled_api, register

__all__ = ["LayerNorm", "RMSNorm"]


@dataclass(frozen=True)
class _Norm:
    width: int

    def __post_init__(self):
        object.__setattr__(self, "width", check_int("width", self.width, 2))

    def check_input(self, n_in: int) -> None:
        if n_in != self.width:
            raise ValueError(f"{type(self).__name__} keeps the width: it has width {self.width} "
                             f"but its input has width {n_in}")

    def with_width(self, width: int):
        return type(self)(width)

    def same_rule(self, other) -> bool:
        return type(other) is type(self)


class LayerNorm(_Norm):
    """Layer normalisation over the units, ``y = (x - mean x) / sd x`` (gain 1, bias 0, eps 0)."""

    needs_mean = True

    def mean_field(self, state: tuple, n_in: int, cache: dict) -> Step:
        """Ba et al. 2016, eq. 4 at infinite width (module docstring)."""
        lq, c, mu = state
        v = 1.0 - (mu or 0.0) ** 2                       # variance / second moment
        if not v > 0:
            raise ValueError("LayerNorm of an input with zero variance over its units "
                             "(a constant vector) is undefined")
        c_out = None if c is None else min(1.0, max(-1.0, (c - (1.0 - v)) / v))
        return Step(0.0, c_out, (0.0, c_out, 0.0), 0.0, -(lq + math.log(v)))

    def kernel_step(self, kernel: Kernel, n_in: int, cache: dict) -> KernelStep:
        """k inputs: ``corr'_ab = (corr_ab - mu_a mu_b) / sqrt((1 - mu_a^2)(1 - mu_b^2))``,
        ``q' = 1``, ``mu' = 0``; backward ``Pi_x = Pi_y / (s_a s_b)``, ``s_a^2 = q_a (1 - mu_a^2)``
        (module docstring)."""
        k = kernel.k
        mu = np.zeros(k) if kernel.mu is None else kernel.mu
        v = 1.0 - mu * mu
        if not np.all(v > 0):
            raise ValueError("LayerNorm of an input with zero variance over its units "
                             "(a constant vector) is undefined")
        sv = np.sqrt(v)
        corr = np.clip((kernel.corr - np.outer(mu, mu)) / np.outer(sv, sv), -1.0, 1.0)
        np.fill_diagonal(corr, 1.0)
        out = Kernel(np.zeros(k), corr, np.zeros(k))
        log_w = -(kernel.log_q + np.log(v))
        return KernelStep(out, out, kernel_maths.identity,
                          lambda P: kernel_maths.congruence(P, log_w))


class RMSNorm(_Norm):
    """RMS normalisation, ``y = x / rms x`` (gain 1, eps 0)."""

    needs_mean = False

    def mean_field(self, state: tuple, n_in: int, cache: dict) -> Step:
        """Zhang & Sennrich 2019, eq. 4 at infinite width (module docstring)."""
        lq, c, mu = state
        return Step(0.0, c, (0.0, c, mu), 0.0, -lq)

    def kernel_step(self, kernel: Kernel, n_in: int, cache: dict) -> KernelStep:
        """k inputs: ``corr' = corr``, ``q' = 1``, ``mu' = mu``; backward ``Pi_x = Pi_y /
        sqrt(q_a q_b)`` (module docstring)."""
        out = Kernel(np.zeros(kernel.k), kernel.corr, kernel.mu)
        log_w = -kernel.log_q
        return KernelStep(out, out, kernel_maths.identity,
                          lambda P: kernel_maths.congruence(P, log_w))


@_scaled_api
class NormRule:
    """Monte Carlo of a norm layer (both engines). ``ctx = (y, s, e)`` with ``s`` the per-input
    scale of the scaled input and ``e`` its exponent (the real scale is ``2^e s``)."""

    couples_inputs = False

    def __init__(self, layer: _Norm, n_in: int, engine: str):
        self.center = isinstance(layer, LayerNorm)
        self.n_in = self.n_out = n_in
        self.engine = engine

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        return k * (self.n_out + 1) * itemsize

    def forward_scaled(self, x: np.ndarray, e, rng: Streams):
        xc = x - x.mean(axis=-1, keepdims=True) if self.center else x
        s = np.sqrt(np.mean(xc * xc, axis=-1, keepdims=True))
        y = xc / s
        return y, None, y, None, (y, s, e)

    def backward_scaled(self, gt: np.ndarray, ctx, rng: Streams):
        """Module docstring: ``(1/s)(I - 1 1^T/N - y y^T/N)`` applied to ``gt``, with the real
        scale ``2^e s``: the factor ``2^-e`` is returned as the shift."""
        y, s, e = ctx
        if gt.ndim == 2:
            y, s = y[:, 0], s[:, 0]
        else:
            y, s = y[:, :gt.shape[1]], s[:, :gt.shape[1]]
        g = gt - y * np.mean(gt * y, axis=-1, keepdims=True)
        if self.center:
            g -= np.mean(gt, axis=-1, keepdims=True)
        return g / s, (None if e is None else -e)

    def to_tracked_scaled(self, gy: np.ndarray, ctx):
        return gy, None


for _engine in ENGINES:
    for _kind in (LayerNorm, RMSNorm):
        register(_kind, _engine)(lambda layer, n_in, _e=_engine: NormRule(layer, n_in, _e))
