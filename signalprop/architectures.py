"""Constructors of whole networks from a few numbers: :func:`mlp` (fully connected, optionally
normalised) and :func:`resnet` (residual blocks). They only assemble layer kinds from
:mod:`signalprop.layers`; everything a layer means lives there."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np

from ._validate import check_choice, check_int, short_repr
from .activations import activation as _activation
from .network import INITS, MAX_DEPTH, MAX_WIDTH, WEIGHTS, Network, _gain_squared, init_sigma_w2
from .layers.batchnorm import BatchNormDense
from .layers.dense import Dense
from .layers.norm import LayerNorm, RMSNorm
from .layers.residual import Residual

__all__ = ["mlp", "resnet"]


def _per_layer(name: str, value, depth: int) -> list:
    """``value`` repeated per layer, or its ``depth`` entries (a flat sequence)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != depth:
            raise ValueError(f"{name} has {len(value)} entries; it needs one per layer ({depth})")
        if any(isinstance(v, (list, tuple, np.ndarray)) for v in value):
            raise ValueError(f"{name} must be one value or a flat sequence of one per layer, "
                             f"got {short_repr(value)}")
        return list(value)
    return [value] * depth


def mlp(depth: int, width: Union[int, Sequence[int]] = 1000, activation="tanh", *,
        sigma_w2: Union[float, Sequence[float]] = 1.0, sigma_b2: Union[float, Sequence[float]] = 0.0,
        init: Optional[str] = None, gain: float = 1.0, weights: Optional[str] = None,
        norm: Optional[str] = None, batch_size: Optional[int] = None) -> Network:
    """A fully connected network of ``depth`` layers.

    ``depth``: 1..:data:`MAX_DEPTH` (10^6; a deeper network is refused up front: each layer is a
    Python object, about 170 MB per 10^6 layers). ``width``: an int (N_0 = ... = N_L), L entries
    (N_1..N_L; N_0 = N_1) or L + 1 entries (N_0..N_L), each in 1..:data:`MAX_WIDTH` (10^9).
    ``activation``, ``sigma_w2``, ``sigma_b2``: one value or one per layer.
    ``init``: a named scheme (lecun, he/kaiming, xavier/glorot, orthogonal) that sets ``sigma_w2``
    per layer from its fan-in and fan-out (``gain`` scales its standard deviation); ``orthogonal``
    also selects orthogonal weights. ``weights``: gaussian (default), orthogonal or uniform.
    ``norm``: ``"layer"`` or ``"rms"`` puts a :class:`~signalprop.layers.norm.LayerNorm` /
    :class:`~signalprop.layers.norm.RMSNorm` after every layer (2 L layers in all); ``"batch"`` makes
    every layer ``phi(BN(W x))`` over a batch of ``batch_size`` inputs
    (:class:`~signalprop.BatchNormDense`, Yang et al. 2019; no biases: BN removes them).
    """
    depth = check_int("depth", depth, 1, MAX_DEPTH)
    if isinstance(width, np.ndarray) and width.ndim == 0:
        width = width.item()
    if isinstance(width, (list, tuple, np.ndarray)):
        if len(width) not in (depth, depth + 1) or \
                any(isinstance(w, (list, tuple, np.ndarray)) for w in width):
            raise ValueError(f"width must be an integer or a flat sequence of {depth} or "
                             f"{depth + 1} integers, got {short_repr(width)}")
        ws = [check_int("width", w, 1, MAX_WIDTH) for w in width]
        if len(ws) == depth:
            ws = [ws[0]] + ws
    else:
        ws = [check_int("width", width, 1, MAX_WIDTH)] * (depth + 1)
    built: dict = {}  # one Activation object per distinct spec, so equal layers share it
    acts = []
    for a in _per_layer("activation", activation, depth):
        key = a if isinstance(a, str) else id(a)
        if key not in built:
            built[key] = _activation(a)
        acts.append(built[key])
    sb2 = _per_layer("sigma_b2", sigma_b2, depth)
    if init is not None:
        if not isinstance(init, str) or init.lower() not in INITS:
            raise ValueError(f"unknown init {init!r}; known: {', '.join(INITS)}")
        _gain_squared(gain)
        sw2 = [init_sigma_w2(init, ws[i], ws[i + 1], gain) for i in range(depth)]
        if init.lower() == "orthogonal":
            if weights is not None and not (isinstance(weights, str) and weights == "orthogonal"):
                raise ValueError("init='orthogonal' implies weights='orthogonal'")
            weights = "orthogonal"
    else:
        sw2 = _per_layer("sigma_w2", sigma_w2, depth)
    weights = "gaussian" if weights is None else check_choice("weights", weights, WEIGHTS)
    if norm is not None and not (isinstance(norm, str) and norm in ("layer", "rms", "batch")):
        raise ValueError(f"norm must be None, 'layer', 'rms' or 'batch', got {short_repr(norm)}")
    if (norm == "batch") != (batch_size is not None):
        raise ValueError("batch_size goes with norm='batch' (and norm='batch' needs a batch_size)")
    if norm == "batch":
        if any(b != 0 for b in sb2):
            raise ValueError("sigma_b2 must be 0 with norm='batch': batch normalisation subtracts "
                             "the batch mean, which removes any bias")
        return Network(ws[0], tuple(BatchNormDense(ws[i + 1], acts[i], sw2[i], batch_size, weights)
                                    for i in range(depth)))
    layers = tuple(Dense(ws[i + 1], acts[i], sw2[i], sb2[i], weights) for i in range(depth))
    if norm is not None:
        kind = LayerNorm if norm == "layer" else RMSNorm
        layers = tuple(x for la in layers for x in (la, kind(la.width)))
    return Network(ws[0], layers)


def resnet(depth: int, width: int = 1000, activation="relu", *, branch_depth: int = 2,
           alpha: Union[float, Sequence[float]] = 1.0, beta: Union[float, Sequence[float]] = 1.0,
           sigma_w2: float = 1.0, sigma_b2: float = 0.0, init: Optional[str] = None,
           weights: Optional[str] = None, norm: Optional[str] = None) -> Network:
    """A residual network of ``depth`` blocks of constant ``width``.

    Each block is ``x^l = alpha x^{l-1} + beta F(x^{l-1})`` with the branch
    ``branch_depth = 1``: ``F(x) = phi(W x + b)``;
    ``branch_depth = 2``: ``F(x) = V phi(W x + b) + a`` (Yang & Schoenholz 2017's full residual
    network), ``V`` a linear Dense layer with the same ``sigma_w2``, ``sigma_b2``;
    deeper branches: ``branch_depth - 1`` activated Dense layers then a linear one.
    ``alpha``, ``beta``: one value or one per block (e.g. ``beta = 1/np.sqrt(depth)``; ``beta = 0``
    for ReZero/SkipInit). ``init`` / ``weights``: as in :func:`~signalprop.architectures.mlp`, for the
    branch layers. ``norm``: ``None``, ``"layer"`` or ``"rms"`` -- a normalisation layer at the
    start of every branch (the "pre-norm" placement of transformers); post-norm networks
    (``LN(x + F(x))``) are built by interleaving :class:`~signalprop.layers.norm.LayerNorm` layers.
    ``depth``, ``branch_depth``: integers >= 1 with ``depth * branch_depth <=``
    :data:`~signalprop.network.MAX_DEPTH` (10^6 Dense layers; a deeper network is refused up front).
    """

    depth = check_int("depth", depth, 1, MAX_DEPTH)
    width = check_int("width", width, 1, MAX_WIDTH)
    branch_depth = check_int("branch_depth", branch_depth, 1, MAX_DEPTH)
    if depth * branch_depth > MAX_DEPTH:
        raise ValueError(f"depth * branch_depth = {depth} * {branch_depth} Dense layers; at most "
                         f"{MAX_DEPTH} (MAX_DEPTH): at depth {depth}, branch_depth must be in "
                         f"[1, {MAX_DEPTH // depth}]")
    if norm is not None and not (isinstance(norm, str) and norm in ("layer", "rms")):
        raise ValueError(f"norm must be None, 'layer' or 'rms', got {short_repr(norm)}")
    alphas = _per_layer("alpha", alpha, depth)
    betas = _per_layer("beta", beta, depth)
    acts = [activation] * (branch_depth - 1) + ["linear"] if branch_depth > 1 else [activation]
    template = mlp(branch_depth, width, acts, sigma_w2=sigma_w2, sigma_b2=sigma_b2, init=init,
                   weights=weights).layers
    head = () if norm is None else ((LayerNorm if norm == "layer" else RMSNorm)(width),)
    blocks = tuple(Residual(head + template, alphas[i], betas[i]) for i in range(depth))
    return Network(width, blocks)
