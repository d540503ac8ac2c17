"""The description of a network that theory (``predict``) and simulation (``simulate``) both read,
and the layer protocol every layer kind follows.

A :class:`Network` is an input width ``N_0`` and a tuple of layers. Every layer kind keeps its
rules with it, in one module of :mod:`signalprop.layers`, so ``predict`` and ``simulate`` never
test for a kind. The members a layer kind provides are declared by :class:`Layer`:

* ``width`` and ``check_input(n_in)``: its output width ``N_l``, and a ValueError for an input
  width it cannot take (e.g. a residual block whose branch changes the width);
* ``kernel_step(kernel, n_in, cache) -> KernelStep`` (theory): from the
  :class:`~signalprop.kernel.Kernel` of k inputs at its input (k x k second moments and means),
  the :class:`KernelStep`: the kernel of the tracked variable ``t^l`` whose ``q^l``, ``c^l`` and
  gradient ``g^l`` the profile reports, the kernel of its output, and the two backward maps of
  the k x k gradient covariance;
* ``mean_field(state, n_in, cache) -> Step`` (optional, the fast path of ``predict``): the same
  rule for one or two inputs of equal norm in plain floats, ``state = (log q_x, c_x, mu_x)`` (log
  second moment per unit, correlation of the two inputs or ``None``, and the mean per unit in
  units of ``sqrt(q_x)``, ``None`` when no layer needs it) -> :class:`Step`; a kind without it
  (batch-coupled, token-mixing) runs on the kernel path only;
* ``same_rule(other)``: whether ``other`` maps kernels identically (``predict`` fills runs of
  such layers once they settle); ``with_width(n)``: the same layer at width ``n``;
* ``needs_mean``: whether it reads the mean of its input (mean-subtracting normalisation);
* its samplers, registered per engine with :func:`signalprop.sampling.register`.

Optional capabilities (asked for with ``getattr``; a feature that needs one names the layer that
lacks it, :func:`require_capability`): ``capabilities``, a set of names from
:data:`CAPABILITIES` (free-probability factor, finite-width law, sampled Jacobian, fixed-point
maps); ``c_only_rule`` (:class:`~signalprop.layers.dense.Dense`: the correlation map alone,
for ``predict``'s fill), ``label()`` (a short description), ``coupled_inputs`` (k, for kinds that
act on k inputs together: batch norm's batch, attention's tokens), ``sublayers`` (composed kinds).

The backward rules are two maps per layer (mean field: gradient independence, Schoenholz et al.
2017 sec. 4): on the kernel path, of the k x k gradient covariance ``Pi`` (``g^l = tr Pi_t^l``,
:mod:`signalprop.kernel`); on the fast path, two logarithmic factors:

    g_t^l = g_x^l exp(log_d_l)          (tracked variable from the layer's output)
    g_x^{l-1} = g_t^l exp(log_back_l)   (the layer's input from its tracked variable)

so ``log g^l = log g^{l+1} + log_back_{l+1} + log_d_l`` with ``g^L = 1`` (the loss is
``<v, t^L>``). ``G^l = g^l E[(x^{l-1})^2]`` for every kind (for layers without a weight matrix
reading ``x^{l-1}`` it is the same product, no weight gradient implied). What the tracked variable
of each kind is: ``docs/notation.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, NamedTuple, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np

from ._validate import (check_choice, check_int, nonnegative_scalar, positive_scalar,
                        short_repr)
from .activations import Activation, activation
from .kernel import Kernel

_activation = activation

__all__ = ["Layer", "Network", "Step", "KernelStep", "GradientMap", "CAPABILITIES", "has_pair_rule", "has_capability", "require_capability", "init_sigma_w2", "WEIGHTS", "INITS", "MAX_DEPTH", "MAX_WIDTH"]


class Step(NamedTuple):
    """One layer's mean-field step on the fast path (see the module docstring)."""

    log_q: float            # log q^l of the tracked variable t^l
    c: Optional[float]      # c^l of t^l (None with one input)
    out: tuple              # (log q_x, c_x, mu_x) of the output vector fed to layer l + 1
    log_d: float            # log(g_t^l / g_x^l)
    log_back: float         # log(g_x^{l-1} / g_t^l)


#: a backward map of the gradient covariance: ``P -> (log_factor, P')`` with
#: ``Pi' = exp(log_factor) P'`` for ``Pi = P`` (P: k x k, symmetric positive semi-definite)
GradientMap = Callable[[np.ndarray], tuple]


class KernelStep(NamedTuple):
    """One layer's mean-field step on the kernel path (see the module docstring)."""

    tracked: Kernel         # kernel of the tracked variable t^l
    out: Kernel             # kernel of the output vector fed to layer l + 1
    to_tracked: GradientMap  # Pi_x^l -> Pi_t^l
    back: GradientMap       # Pi_t^l -> Pi_x^{l-1}

@runtime_checkable
class Layer(Protocol):
    """What every layer kind provides (see the module docstring); layers are frozen dataclasses,
    equal and hashable by value."""

    width: int
    needs_mean: bool

    def check_input(self, n_in: int) -> None: ...

    def kernel_step(self, kernel: Kernel, n_in: int, cache: dict) -> KernelStep: ...

    def same_rule(self, other) -> bool: ...

    def with_width(self, width: int) -> "Layer": ...


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


#: optional capabilities a layer kind may declare in its ``capabilities`` class attribute, and
#: what each means; features ask for one with :func:`require_capability`
CAPABILITIES = {
    "free_probability": "free-probability factor for its Jacobian (signalprop.spectrum)",
    "finite_width": "finite-width law (signalprop.finite, signalprop.clipping)",
    "sampled_jacobian": "sampled input-output Jacobian (signalprop.jacobian)",
    "fixed_point": "length and correlation maps of fixed_point (one sigma_w2, sigma_b2, phi)",
}


def has_pair_rule(layer) -> bool:
    """Whether ``layer`` has the fast two-input rule ``mean_field`` (a composed layer has it when
    all its layers do: its ``pair_rule``)."""
    return callable(getattr(layer, "mean_field", None)) and getattr(layer, "pair_rule", True)


def has_capability(layer, capability: str) -> bool:
    """Whether ``layer``'s kind declares ``capability`` (see :data:`CAPABILITIES`)."""
    return capability in getattr(layer, "capabilities", ())


def require_capability(network: "Network", capability: str, feature: str) -> None:
    """ValueError naming the first layer of ``network`` whose kind lacks ``capability``, e.g.
    "spectrum: layer 2 (LayerNorm) has no free-probability factor ... yet"."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; known: {', '.join(CAPABILITIES)}")
    for i, layer in enumerate(network.layers):
        if not has_capability(layer, capability):
            raise ValueError(f"{feature}: layer {i + 1} ({type(layer).__name__}) has no "
                             f"{CAPABILITIES[capability]} yet")


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
    """A short description of one layer for :meth:`Network.__repr__` (its ``label()``)."""
    label = getattr(layer, "label", None)
    return label() if callable(label) else f"{type(layer).__name__}({getattr(layer, 'width', '?')})"


def _runs(labels: list) -> list:
    """Consecutive equal labels as ``"k x label"``."""
    out: list = []
    for lab in labels:
        if out and out[-1][1] == lab:
            out[-1][0] += 1
        else:
            out.append([1, lab])
    return [lab if k == 1 else f"{k} x {lab}" for k, lab in out]


def _shared_specs(layer, n_in: int):
    """``(name, what must agree)`` of every use of a shared parameter in ``layer``, looking inside
    composed layers (their ``stacks``: the stacks of layers each applied to the layer's input)."""
    spec = layer.shared_spec(n_in) if hasattr(layer, "shared_spec") else None
    if spec is not None:
        yield spec
    for stack in getattr(layer, "stacks", ()):
        n = n_in
        for la in stack:
            yield from _shared_specs(la, n)
            n = la.width


def _coupled(layer):
    """A layer's ``coupled_inputs`` (None for kinds that act on each input alone), looking inside
    composed layers."""
    k = getattr(layer, "coupled_inputs", None)
    if k:
        return k
    ks = {k for k in (_coupled(la) for la in getattr(layer, "sublayers", ())) if k}
    if len(ks) > 1:
        raise ValueError(f"the layers inside {type(layer).__name__} act on different numbers of "
                         f"inputs: {sorted(ks)}")
    return ks.pop() if ks else None


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
        kinds = set()                    # the protocol is checked once per layer type
        shared: dict = {}                # share name -> (layer number, what must agree)
        for i, layer in enumerate(self.layers):
            if type(layer) not in kinds and not isinstance(layer, Layer):
                raise TypeError(f"layer {i + 1}: {type(layer).__name__} is not a signalprop layer "
                                f"(Dense, Residual, LayerNorm, ...)")
            kinds.add(type(layer))
            for name, what in _shared_specs(layer, n_in):
                first = shared.setdefault(name, (i + 1, what))
                if first[1] != what:
                    raise ValueError(f"layer {i + 1} shares {name!r} with layer {first[0]} but "
                                     f"differs in (n_in, width, sigma_w2, sigma_b2, weights): "
                                     f"{what} against {first[1]}")
            try:
                layer.check_input(n_in)
            except ValueError as e:
                raise ValueError(f"layer {i + 1}: {e}") from None
            n_in = layer.width

    @cached_property
    def batch_size(self):
        """The batch size B of the network's batch-normalised layers, or None without any."""
        sizes = {la.batch_size for la in self.layers if getattr(la, "batch_size", None)}
        if len(sizes) > 1:
            raise ValueError(f"all batch-normalised layers must share one batch_size, got "
                             f"{sorted(sizes)}")
        return sizes.pop() if sizes else None

    @cached_property
    def coupled_inputs(self):
        """k, the number of inputs the network's input-coupling layers act on together (a batch
        for batch norm, the tokens for attention: their ``coupled_inputs``), or None without any.
        ``predict`` and ``simulate`` then propagate k inputs (the kernel path)."""
        sizes = {k for k in (_coupled(la) for la in self.layers) if k}
        if len(sizes) > 1:
            raise ValueError(f"all layers that couple their inputs must act on the same number of "
                             f"inputs (batch_size, tokens), got {sorted(sizes)}")
        return sizes.pop() if sizes else None

    @cached_property
    def needs_mean(self) -> bool:
        """Whether some layer reads the mean of its input (mean-subtracting normalisation)."""
        return any(layer.needs_mean for layer in self.layers)

    @cached_property
    def pair_rule(self) -> bool:
        """Whether every layer has the fast rule for one or two inputs (:func:`has_pair_rule`)."""
        return all(has_pair_rule(layer) for layer in self.layers)

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
