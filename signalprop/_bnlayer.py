"""The batch-normalised layer kind: ``h^l = W^l x^{l-1}``, ``x^l = phi(BN(h^l))`` over a batch of B
inputs (Yang et al. 2019's network), in the network description, in ``predict`` and ``simulate``.

Its theory is that of :mod:`signalprop.batchnorm`; the tracked variable is the pre-normalisation
``h^l`` (as for ``Dense``), ``q^l``, ``c^l`` its second moment and the correlation of two batch
members, and ``g^l`` the *sum over the batch* of ``E||d loss/d h^l_b||^2 / N_l`` for the loss
``<v, h^L_a>`` on one batch member ``a``: batch normalisation couples the batch members, so the
gradient reaches all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._validate import check_int, check_positive
from .activations import Activation, activation
from .network import Dense, Network, WEIGHTS
from .results import Profile
from .sampling import DenseSampler, Streams, register

__all__ = ["BatchNormDense", "predict_batch"]


@dataclass(frozen=True)
class BatchNormDense:
    """``h = W x`` (no bias: batch normalisation removes it), then per unit batch normalisation
    over the batch of ``batch_size`` inputs (gamma = 1, beta = 0, eps = 0) and ``phi``."""

    width: int
    activation: Activation
    sigma_w2: float
    batch_size: int
    weights: str = "gaussian"

    def __post_init__(self):
        object.__setattr__(self, "width", check_int("width", self.width, 1))
        if not isinstance(self.activation, Activation):
            object.__setattr__(self, "activation", activation(self.activation))
        object.__setattr__(self, "sigma_w2", float(check_positive("sigma_w2", self.sigma_w2)))
        B = self.batch_size
        if isinstance(B, bool) or not isinstance(B, (int, np.integer)) or B < 4:
            raise ValueError(f"batch_size must be an integer >= 4 (E[1/r^2] of the normalising "
                             f"norm is infinite for B <= 3), got {B!r}")
        object.__setattr__(self, "batch_size", int(B))
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {self.weights!r}")

    needs_mean = False
    sigma_b2 = 0.0

    def check_input(self, n_in: int) -> None:
        """Any input width."""

    def with_width(self, width: int) -> "BatchNormDense":
        return BatchNormDense(width, self.activation, self.sigma_w2, self.batch_size, self.weights)

    def same_rule(self, other) -> bool:
        return other == self

    def mean_field(self, state, n_in, cache):
        raise ValueError("batch-normalised layers couple the batch: predict handles networks made "
                         "of BatchNormDense layers only (no other layer kinds mixed in)")


def predict_batch(network: Network, q0: float, c0) -> Profile:
    """Mean-field profile of a network of :class:`BatchNormDense` layers (Yang et al. 2019 model;
    the per-layer kernels and gradient operators of :mod:`signalprop.batchnorm`). ``c0``: the
    correlation of every pair of batch members (default 0)."""
    from .batchnorm import _embed, bn_gradient_operator, bn_kernel

    layers = network.layers
    if not all(type(la) is BatchNormDense for la in layers):
        kinds = sorted({type(la).__name__ for la in layers} - {"BatchNormDense"})
        raise ValueError(f"predict handles batch normalisation in networks of BatchNormDense layers "
                         f"only; this one also has {', '.join(kinds)}")
    B = layers[0].batch_size
    c0 = 0.0 if c0 is None else float(c0)
    if c0 < -1.0 / (B - 1) or c0 >= 1.0:
        raise ValueError(f"c0 must lie in [-1/(B-1), 1) = [{-1.0 / (B - 1):.6g}, 1) for a batch of "
                         f"B = {B} inputs with equal pairwise correlation, got {c0}")
    L = network.depth
    widths = network.widths.astype(float)
    kern = [bn_kernel(la.activation, B, la.sigma_w2) for la in layers]
    log_q, c = np.empty(L), np.empty(L)
    log_x2 = np.empty(L + 1)
    log_x2[0] = math.log(q0)
    q_perp = np.empty(L)
    for l, la in enumerate(layers):
        if l == 0:
            log_q[0], c[0] = math.log(la.sigma_w2 * q0), c0
        else:
            k = kern[l - 1]
            log_q[l], c[l] = math.log(la.sigma_w2 * k.second_moment), k.c
        q_perp[l] = math.exp(log_q[l]) * (1.0 - c[l])
        log_x2[l + 1] = math.log(kern[l].second_moment)
    # backward on the orbit space: Pi^L = e_a e_a^T (coordinates (aa, a1, I, 11)); layer l maps
    # Pi_h^{l+1} to Pi_h^l = s_l M_l(Pi_h^{l+1}) with values in span{G, w w^T}
    log_g = np.zeros(L)
    v4 = np.array([1.0, 0.0, 0.0, 0.0])
    log_scale = 0.0
    for l in range(L - 2, -1, -1):
        la_next, la = layers[l + 1], layers[l]
        op = bn_gradient_operator(la.activation, B, la_next.sigma_w2, q_perp=q_perp[l],
                                  width_ratio=widths[l + 2] / widths[l + 1])
        v2 = op.scale * (op.from4 @ v4)                # coefficients of (G, w w^T)
        v4 = _embed(B) @ v2
        n = float(np.abs(v4).sum())
        log_scale += math.log(n)
        v4 = v4 / n
        trace = (B - 1) * (v2[0] / n) + (B - 1) / B * (v2[1] / n)
        log_g[l] = log_scale + math.log(trace)
    with np.errstate(over="ignore", under="ignore"):
        q = np.exp(log_q)
    meta = {"source": "theory", "q0": q0, "c0": c0, "depth": L, "batch_size": B,
            "g": "sum over the batch of E||d loss/d h^l_b||^2 / N_l (loss <v, h^L_a>)"}
    return Profile(layers=np.arange(1, L + 1), q=q, log_q=log_q, log_g=log_g,
                   log_G=log_g + log_x2[:-1], c=c, meta=meta)


class BatchNormRule:
    """Monte Carlo of a :class:`BatchNormDense` layer (dense engine): the linear sampler, then per
    unit ``y = sqrt(B) G h / ||G h||`` over the batch and ``phi(y)``. The gradient w.r.t. ``h`` is
    ``J^T (phi'(y) * gy)`` with the symmetric per-unit Jacobian ``J = (sqrt(B)/r)(G - u u^T)``."""

    couples_inputs = True
    engine = "dense"

    def __init__(self, layer: BatchNormDense, n_in: int):
        self.linear = DenseSampler(Dense(layer.width, "linear", layer.sigma_w2, 0.0, layer.weights),
                                   n_in)
        self.act, self.B = layer.activation, layer.batch_size
        self.n_in, self.n_out = n_in, layer.width

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        return self.linear.ctx_nbytes(k, itemsize) + 3 * k * self.n_out * itemsize

    def forward(self, x: np.ndarray, rng: Streams):
        if x.shape[1] != self.B:
            raise ValueError(f"a BatchNormDense layer with batch_size {self.B} got a batch of "
                             f"{x.shape[1]} inputs")
        h, lin = self.linear.forward(x, rng)
        hc = h - h.mean(axis=1, keepdims=True)
        r = np.sqrt(np.sum(hc * hc, axis=1, keepdims=True))
        u = hc / r
        y = u * x.dtype.type(math.sqrt(self.B))
        return h, np.asarray(self.act.phi(y), dtype=x.dtype), (lin, u, r, y)

    def backward(self, gt: np.ndarray, ctx, rng: Streams) -> np.ndarray:
        return self.linear.backward(gt, ctx[0], rng)

    def to_tracked(self, gy: np.ndarray, ctx) -> np.ndarray:
        _, u, r, y = ctx
        d = np.asarray(self.act.dphi(y), dtype=gy.dtype) * gy
        out = d - d.mean(axis=1, keepdims=True) - u * np.sum(u * d, axis=1, keepdims=True)
        return out * (gy.dtype.type(math.sqrt(self.B)) / r)


register(BatchNormDense, "dense")(BatchNormRule)
