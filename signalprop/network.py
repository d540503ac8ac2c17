"""The description of a network that theory (``predict``) and simulation (``simulate``) both read.

A :class:`Network` is an input width ``N_0`` and a tuple of layers. Every layer kind keeps its
rules with it, so ``predict`` and ``simulate`` never test for a kind:

* ``layer.width``: its output width ``N_l``; ``layer.check_input(n_in)`` rejects an input width
  it cannot take (e.g. a residual block whose branch changes the width);
* ``layer.mean_field(state, n_in, cache) -> Step`` (theory): from the mean-field state of its input
  vector, ``state = (log q_x, c_x, mu_x)`` (log second moment per unit, correlation of the two
  inputs or ``None``, and the mean per unit in units of ``sqrt(q_x)``, ``None`` when no layer
  needs it), it returns the :class:`Step`: the tracked variable ``t^l`` whose ``q^l``, ``c^l``
  and gradient ``g^l`` the profile reports, the state of its output, and two backward factors;
* ``sampling.register(kind, engine)`` (simulation): its Monte Carlo samplers.

The backward rules are two logarithmic factors per layer (mean field: gradient independence,
Schoenholz et al. 2017 sec. 4):

    g_t^l = g_x^l exp(log_d_l)          (tracked variable from the layer's output)
    g_x^{l-1} = g_t^l exp(log_back_l)   (the layer's input from its tracked variable)

so ``log g^l = log g^{l+1} + log_back_{l+1} + log_d_l`` with ``g^L = 1`` (the loss is
``<v, t^L>``). ``G^l = g^l E[(x^{l-1})^2]`` for every kind (for layers without a weight matrix
reading ``x^{l-1}`` it is the same product, no weight gradient implied).

:class:`Dense` is CONVENTIONS.md's fully connected layer, tracked variable the pre-activation:

    h^l = W^l x^{l-1} + b^l,    x^l = phi_l(h^l),
    W^l_ij ~ N(0, sigma_w^2 / N_{l-1}) (gaussian; uniform with the same variance),
    W^l = sigma_w O, O Haar (semi-)orthogonal scaled so E[W_ij^2] = sigma_w^2 / N_{l-1} (orthogonal),
    b^l_i ~ N(0, sigma_b^2).

Residual blocks (:mod:`signalprop.residual`), layer and RMS normalisation (:mod:`signalprop.norm`)
and batch-normalised layers (:mod:`signalprop._bnlayer`, whose batch coupling ``predict`` handles
in a batch mode of its own) are further kinds with the same rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np

from ._validate import (check_choice, check_int, nonnegative_scalar, positive_scalar,
                        short_repr)
from .activations import Activation, activation

_activation = activation

__all__ = ["Dense", "Nonlinearity", "Network", "Step", "mlp", "init_sigma_w2", "WEIGHTS", "INITS",
           "MAX_DEPTH", "MAX_WIDTH"]


class Step(NamedTuple):
    """One layer's mean-field step (see the module docstring)."""

    log_q: float            # log q^l of the tracked variable t^l
    c: Optional[float]      # c^l of t^l (None with one input)
    out: tuple              # (log q_x, c_x, mu_x) of the output vector fed to layer l + 1
    log_d: float            # log(g_t^l / g_x^l)
    log_back: float         # log(g_x^{l-1} / g_t^l)

WEIGHTS = ("gaussian", "orthogonal", "uniform")
INITS = ("lecun", "he", "kaiming", "xavier", "glorot", "orthogonal")


#: deepest network :func:`mlp` builds: every layer is a Python object of about 170 bytes (depth
#: 10^6 is about 170 MB and takes seconds to build; predict's promised depth is 10^5).
MAX_DEPTH = 10 ** 6
#: widest layer :func:`mlp` accepts: beyond it every finite-width correction (O(1/N)) is below
#: float64 resolution of the quantities reported, and widths must stay exact int64 values.
MAX_WIDTH = 10 ** 9


def init_sigma_w2(init: str, fan_in: int, fan_out: int, gain: float = 1.0) -> float:
    """sigma_w^2 of a named initialisation (CONVENTIONS.md table; variance = sigma_w^2 / fan_in).

    lecun: 1 (LeCun et al. 1998); he/kaiming: 2 (He et al. 2015, eq. 10);
    xavier/glorot: 2 fan_in / (fan_in + fan_out) (Glorot & Bengio 2010, eq. 16);
    orthogonal: gain^2 (Saxe et al. 2014). ``gain`` (finite, > 0) multiplies the standard
    deviation of every scheme; ``fan_in``, ``fan_out``: integers >= 1.
    """
    if not isinstance(init, str) or init.lower() not in INITS:
        raise ValueError(f"unknown init {short_repr(init)}; known: {', '.join(INITS)}")
    key = init.lower()
    fan_in = check_int("fan_in", fan_in, 1)
    fan_out = check_int("fan_out", fan_out, 1)
    g2 = _gain_squared(gain)
    if key == "lecun":
        return g2
    if key in ("he", "kaiming"):
        return 2.0 * g2
    if key in ("xavier", "glorot"):
        return 2.0 * fan_in / (fan_in + fan_out) * g2
    return g2  # orthogonal


def _gain_squared(gain) -> float:
    """gain^2 for a finite gain > 0 whose square is a positive float64 (else ValueError naming
    gain: a zero or overflowing gain would otherwise surface as a bad sigma_w2)."""
    g = positive_scalar("gain", gain)
    g2 = g * g
    if not (0.0 < g2 < math.inf):
        raise ValueError(f"gain must satisfy 0 < gain^2 < 1.8e308 (a float64), got {gain!r}")
    return g2


@dataclass(frozen=True)
class Dense:
    """Fully connected layer ``l``: width ``N_l``, activation ``phi_l``, ``sigma_w^2``, ``sigma_b^2``
    and the weight distribution (``gaussian``, ``orthogonal`` or ``uniform``)."""

    width: int
    activation: Activation
    sigma_w2: float
    sigma_b2: float = 0.0
    weights: str = "gaussian"

    def __post_init__(self):
        object.__setattr__(self, "width", check_int("width", self.width, 1, MAX_WIDTH))
        if not isinstance(self.activation, Activation):
            object.__setattr__(self, "activation", activation(self.activation))
        object.__setattr__(self, "sigma_w2", positive_scalar("sigma_w2", self.sigma_w2))
        object.__setattr__(self, "sigma_b2", nonnegative_scalar("sigma_b2", self.sigma_b2))
        check_choice("weights", self.weights, WEIGHTS)

    needs_mean = False

    def same_rule(self, other) -> bool:
        """True when both layers map kernels identically (used to skip converged runs)."""
        return (type(other) is Dense and other.activation == self.activation
                and other.sigma_w2 == self.sigma_w2 and other.sigma_b2 == self.sigma_b2)

    def check_input(self, n_in: int) -> None:
        """Any input width is fine for a fully connected layer."""

    def with_width(self, width: int) -> "Dense":
        return Dense(width, self.activation, self.sigma_w2, self.sigma_b2, self.weights)

    def mean_field(self, state: tuple, n_in: int, cache: dict) -> Step:
        """Poole et al. 2016 eqs. 3, 5; Schoenholz et al. 2017 eq. 14 (see meanfield.dense_step)."""
        return _dense_step()(self, state, n_in, cache)


@dataclass(frozen=True)
class Nonlinearity:
    """The activation alone, ``x^l = phi(x^{l-1})`` (no weights): with a linear :class:`Dense`
    layer before it, ``Dense(linear) + Nonlinearity`` is ``Dense``, and a normalisation layer can
    sit between the two (pre-activation placement). Like ``Dense``, its tracked variable is its
    input (the pre-activation); the mean-field theory treats that input as a centred Gaussian,
    which holds after a linear ``Dense`` layer and after a norm layer applied to one."""

    width: int
    activation: Activation
    _as_dense: Dense = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "width", check_int("width", self.width, 1, MAX_WIDTH))
        if not isinstance(self.activation, Activation):
            object.__setattr__(self, "activation", activation(self.activation))
        # the Dense layer (sigma_w^2 = 1, sigma_b^2 = 0) whose step this layer's is, built once
        object.__setattr__(self, "_as_dense", Dense(self.width, self.activation, 1.0, 0.0))

    needs_mean = False

    def same_rule(self, other) -> bool:
        return type(other) is Nonlinearity and other.activation == self.activation

    def check_input(self, n_in: int) -> None:
        if n_in != self.width:
            raise ValueError(f"Nonlinearity keeps the width: it has width {self.width} but its "
                             f"input has width {n_in}")

    def with_width(self, width: int) -> "Nonlinearity":
        return Nonlinearity(width, self.activation)

    def mean_field(self, state: tuple, n_in: int, cache: dict) -> Step:
        """The Dense step with sigma_w^2 = 1, sigma_b^2 = 0 and no weights: q^l = q_x, c^l = c_x."""
        mu = state[2]
        if mu is not None and abs(mu) > 1e-12:
            raise ValueError("Nonlinearity needs a centred input (mean zero over the units, e.g. "
                             f"after a linear Dense or a LayerNorm); its input has mean/rms {mu:.3g}")
        return _dense_step()(self._as_dense, state, n_in, cache)


def _dense_step():
    """meanfield.dense_step (imported on first use: meanfield imports this module)."""
    global _DENSE_STEP
    if _DENSE_STEP is None:
        from .meanfield import dense_step
        _DENSE_STEP = dense_step
    return _DENSE_STEP


_DENSE_STEP = None


def _act_label(act) -> str:
    """``tanh``, ``leaky_relu(slope=0.2)``, or a custom expression cut to 40 characters."""
    name = str(getattr(act, "name", act))
    if name == "custom" and getattr(act, "expr", None) is not None:
        name = str(act.expr)
    params = getattr(act, "params", None) or {}
    if params:
        name += "(" + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v!r}"
                                for k, v in params.items()) + ")"
    return name if len(name) <= 40 else name[:36] + " ..."


def _layer_label(layer) -> str:
    """A short description of one layer for :meth:`Network.__repr__`."""
    if type(layer) is Dense:
        w = "" if layer.weights == "gaussian" else f", {layer.weights}"
        return (f"Dense({layer.width}, {_act_label(layer.activation)}, sigma_w2={layer.sigma_w2:g}, "
                f"sigma_b2={layer.sigma_b2:g}{w})")
    if type(layer) is Nonlinearity:
        return f"Nonlinearity({layer.width}, {_act_label(layer.activation)})"
    return f"{type(layer).__name__}({getattr(layer, 'width', '?')})"


def _runs(labels: list) -> list:
    """Consecutive equal labels as ``"k x label"``."""
    out: list = []
    for lab in labels:
        if out and out[-1][1] == lab:
            out[-1][0] += 1
        else:
            out.append([1, lab])
    return [lab if k == 1 else f"{k} x {lab}" for k, lab in out]


@dataclass(frozen=True, repr=False)
class Network:
    """An input width ``N_0`` and a tuple of layers (``layers[l-1]`` is layer ``l``).

    ``repr`` is a summary (depth, widths, runs of equal layers), never the whole tuple of layers;
    equality and hashing compare every layer."""

    def __repr__(self) -> str:
        w = [self.input_width] + [getattr(la, "width", 0) for la in self.layers]
        widths = str(w[0]) if len(set(w)) == 1 else (
            "[" + (", ".join(map(str, w)) if len(w) <= 6 else f"{w[0]}, {w[1]}, ..., {w[-1]}") + "]")
        runs = _runs([_layer_label(la) for la in self.layers])
        if len(runs) > 4:
            runs = runs[:3] + [f"... ({len(runs) - 4} more)", runs[-1]]
        return f"Network(depth={len(self.layers)}, widths={widths}, layers=[{', '.join(runs)}])"

    input_width: int
    layers: tuple

    def __post_init__(self):
        object.__setattr__(self, "input_width",
                           check_int("input_width", self.input_width, 1, MAX_WIDTH))
        if isinstance(self.layers, (str, bytes)) or not hasattr(self.layers, "__iter__"):
            raise TypeError(f"layers must be a sequence of signalprop layers, got "
                            f"{short_repr(self.layers)}")
        object.__setattr__(self, "layers", tuple(self.layers))
        if not self.layers:
            raise ValueError("depth must be an integer >= 1, got a network with no layers")
        n_in = self.input_width
        for i, layer in enumerate(self.layers):
            if not callable(getattr(layer, "mean_field", None)):
                raise TypeError(f"layer {i + 1}: {type(layer).__name__} is not a signalprop layer "
                                f"(Dense, Residual, LayerNorm, ...)")
            try:
                layer.check_input(n_in)
            except ValueError as e:
                raise ValueError(f"layer {i + 1}: {e}") from None
            n_in = layer.width

    @property
    def batch_size(self):
        """The batch size B of the network's batch-normalised layers, or None without any."""
        sizes = {la.batch_size for la in self.layers if getattr(la, "batch_size", None)}
        if len(sizes) > 1:
            raise ValueError(f"all batch-normalised layers must share one batch_size, got "
                             f"{sorted(sizes)}")
        return sizes.pop() if sizes else None

    @property
    def needs_mean(self) -> bool:
        """Whether some layer reads the mean of its input (mean-subtracting normalisation)."""
        return any(layer.needs_mean for layer in self.layers)

    @property
    def depth(self) -> int:
        """L, the number of layers."""
        return len(self.layers)

    @property
    def widths(self) -> np.ndarray:
        """``[N_0, N_1, ..., N_L]``."""
        return np.array([self.input_width] + [layer.width for layer in self.layers])

    def with_width(self, width: int) -> "Network":
        """The same network with every width (N_0..N_L) set to ``width``."""
        width = check_int("width", width, 1, MAX_WIDTH)
        return Network(width, tuple(la.with_width(width) for la in self.layers))


def require_dense(network: Network, what: str) -> None:
    """ValueError unless every layer of ``network`` is :class:`Dense` (for the parts of the
    package whose theory is that of fully connected networks only)."""
    for i, layer in enumerate(network.layers):
        if type(layer) is not Dense:
            raise ValueError(f"{what} supports fully connected (Dense) layers only; layer {i + 1} "
                             f"is {type(layer).__name__}")


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
    ``norm``: ``"layer"`` or ``"rms"`` puts a :class:`~signalprop.norm.LayerNorm` /
    :class:`~signalprop.norm.RMSNorm` after every layer (2 L layers in all); ``"batch"`` makes
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
        from ._bnlayer import BatchNormDense
        if any(b != 0 for b in sb2):
            raise ValueError("sigma_b2 must be 0 with norm='batch': batch normalisation subtracts "
                             "the batch mean, which removes any bias")
        return Network(ws[0], tuple(BatchNormDense(ws[i + 1], acts[i], sw2[i], batch_size, weights)
                                    for i in range(depth)))
    layers = tuple(Dense(ws[i + 1], acts[i], sw2[i], sb2[i], weights) for i in range(depth))
    if norm is not None:
        from .norm import LayerNorm, RMSNorm
        kind = LayerNorm if norm == "layer" else RMSNorm
        layers = tuple(x for la in layers for x in (la, kind(la.width)))
    return Network(ws[0], layers)
