"""From a PyTorch ``nn.Module`` to a signalprop :class:`~signalprop.network.Network`:
:func:`from_module`.

Route. The module is traced by ``torch.fx`` (symbolic tracing: standard ``torch.nn`` modules are
leaves, custom modules and ``nn.Sequential`` are traced through, so nesting is flattened). The
graph must have one tensor input; it is read as a chain of elementary operations from that
input to the output, where a sum ``a * u + b * v`` of two values is a fan-out from their nearest
common dominator ``d`` in the graph (every path from the input to the sum passes through ``d``):
the two addends are paths from ``d``, the sum is signalprop's
:class:`~signalprop.layers.compose.Add` (a :class:`~signalprop.layers.residual.Residual` when one
path is the identity), ``a``, ``b`` the constant factors found on each addend (``*``, ``/`` by
Python numbers) and after the sum. The chain is then grouped into layer kinds:

=====================================  ==========================================================
torch                                  signalprop
=====================================  ==========================================================
``Linear`` then an activation          ``Dense(out_features, phi, sigma_w2, sigma_b2, weights)``
``Linear`` not followed by one         ``Dense(out_features, "linear", ...)``
``Linear``, ``BatchNorm1d``, [act]     ``BatchNormDense(out_features, phi, sigma_w2, B, weights)``
``LayerNorm`` / ``RMSNorm``            ``LayerNorm(N)`` / ``RMSNorm(N)``
an activation after anything else      ``Nonlinearity(N, phi)``
``a * x + b * f(x)``                   ``Residual(f, a, b)`` (``Add`` for two non-identity paths)
``Identity``, ``Dropout`` (p = 0 or    nothing
eval mode)
``MultiheadAttention`` (``attn(x, x,   ``Attention(d, H, T, ...)`` (:mod:`signalprop.torch.attention`)
x)[0]``, or the model itself)
``TransformerEncoderLayer``,           the blocks of ``transformer(...)`` (pre- or post-LN), with
``TransformerEncoder``                 the feed-forward biases (:mod:`signalprop.torch.attention`)
=====================================  ==========================================================

A model with attention takes one sequence of T tokens, ``(T, d)`` or a batch of one (``(1, T,
d)`` with ``batch_first``, else ``(T, 1, d)``): the T tokens are the k coupled inputs.

Activations (modules, ``torch.nn.functional`` calls, ``torch.*`` calls and tensor methods):
ReLU, LeakyReLU(negative_slope) -> leaky_relu(slope), GELU (``approximate="none"`` -> gelu,
``"tanh"`` -> gelu_tanh), SiLU, Tanh, Sigmoid, ELU(alpha), SELU, Softplus (beta = 1 only),
Hardtanh (min_val = -1, max_val = 1 only). Their values agree with signalprop's activations to
rounding (tests/test_torch_bridge.py compares them on a grid in float64).

Variances of a ``Linear`` layer (``fan_in = in_features``):

* ``variances="init"``: PyTorch's own initialisation (``nn.Linear.reset_parameters``):
  ``kaiming_uniform_(W, a=sqrt(5))`` gives ``W_ij ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
  (gain ``sqrt(2 / (1 + a^2)) = sqrt(1/3)``, bound ``sqrt(3) gain / sqrt(fan_in)``; PyTorch
  docs of ``torch.nn.init.kaiming_uniform_``), so ``Var W_ij = 1 / (3 fan_in)``:
  ``sigma_w2 = 1/3`` and ``weights="uniform"``; the bias ``b_i ~ U(-1/sqrt(fan_in),
  1/sqrt(fan_in))``, ``sigma_b2 = 1 / (3 fan_in)``. signalprop's Dense draws its bias from a
  Gaussian of that variance; mean-field theory depends on the variance only. Only exact
  ``nn.Linear`` layers are read this way (a subclass may initialise differently: use
  ``"empirical"``).
* ``variances="empirical"``: the module's current weights, ``sigma_w2 = fan_in * mean(W_ij^2)``
  and ``sigma_b2 = mean(b_i^2)`` (second moments about zero: the theory's weights have mean
  zero); the law is ``weights`` (default ``"gaussian"``: say ``"uniform"`` or ``"orthogonal"``
  when that is how they were drawn).

Normalisation layers: signalprop's have gain 1, bias 0 and eps 0. ``LayerNorm``/``RMSNorm``/
``BatchNorm1d`` affine parameters are accepted at their initial values (always with ``"init"``;
checked with ``"empirical"``: anything else is a ValueError); an ``eps`` up to
:data:`MAX_EPS` is neglected (its relative effect on the normalised variance is
``eps / Var(x)``, 1e-5 at unit variance with PyTorch's default). ``BatchNorm1d`` must be in
training mode (in eval mode it is an affine map with running statistics) and is mapped only in
the pattern ``Linear -> BatchNorm1d -> [activation]`` (signalprop's ``BatchNormDense``); the
batch size B is ``example_input.shape[0]``.

Anything else (``Conv2d``, decoders, recurrent modules inside a model or their cells, a
custom module with data-dependent control flow, a subtraction, a scaling outside a residual
sum) is a ValueError naming the module, its type and its path in the model
(``model.blocks.3.attn (MultiheadAttention) is not supported yet``): never a silent
approximation.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Mapping, Optional, Union

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .._validate import short_repr
from ..activations import Activation, activation
from ..layers import Add, BatchNormDense, Dense, LayerNorm, Nonlinearity, Residual, RMSNorm
from ..layers.recurrent import RECURRENT_WEIGHTS
from ..network import WEIGHTS, Network
from .attention import (check_encoder, is_sequence_module, mha_attention, sublayer_count,
                        token_layout)
from .recurrent import is_rnn, map_rnn

__all__ = ["from_module", "Mapped", "TrackedLayer", "LinearSite", "map_module", "VARIANCES",
           "MAX_EPS"]

VARIANCES = ("init", "empirical")
#: largest normalisation eps neglected (signalprop's norm layers have eps = 0)
MAX_EPS = 1e-3
#: the model's root in messages
ROOT = "model"

# modules of the attention and recurrent kinds: named as "not supported yet" by the bridge
_LATER = ("TransformerDecoderLayer", "TransformerDecoder", "Transformer", "RNN", "GRU", "LSTM",
          "RNNCell", "GRUCell", "LSTMCell")


def _where(path: str) -> str:
    return ROOT if not path else f"{ROOT}.{path}"


def _unsupported(path: str, what: str, why: str = "is not supported yet") -> ValueError:
    return ValueError(f"{_where(path)} ({what}) {why}")


# ---------------------------------------------------------------------------------------------
# activations


def _act(name: str, params: dict, path: str, what: str) -> Activation:
    """signalprop's activation for a torch activation ``name`` with its ``params``."""
    if name == "leaky_relu":
        slope = float(params["negative_slope"])
        if not 0.0 <= slope <= 1.0:
            raise _unsupported(path, what, f"has negative_slope={slope!r}; signalprop's leaky_relu "
                               "takes a slope in [0, 1]")
        return activation("leaky_relu", slope=slope)
    if name == "gelu":
        approx = params.get("approximate", "none")
        if approx not in ("none", "tanh"):
            raise _unsupported(path, what, f"has approximate={approx!r}; known: 'none', 'tanh'")
        return activation("gelu" if approx == "none" else "gelu_tanh")
    if name == "elu":
        return activation("elu", alpha=float(params["alpha"]))
    if name == "softplus":
        if float(params["beta"]) != 1.0:
            raise _unsupported(path, what, f"has beta={params['beta']!r}; only beta=1 maps onto "
                               "signalprop's softplus")
        return activation("softplus")
    if name == "hardtanh":
        lo, hi = float(params["min_val"]), float(params["max_val"])
        if (lo, hi) != (-1.0, 1.0):
            raise _unsupported(path, what, f"has min_val={lo:g}, max_val={hi:g}; only (-1, 1) "
                               "maps onto signalprop's hard_tanh")
        return activation("hard_tanh")
    return activation(name)


#: activation modules: type -> (name, parameters read from the module)
_ACT_MODULES = {
    nn.ReLU: ("relu", ()), nn.Tanh: ("tanh", ()), nn.Sigmoid: ("sigmoid", ()),
    nn.SiLU: ("silu", ()), nn.SELU: ("selu", ()),
    nn.LeakyReLU: ("leaky_relu", ("negative_slope",)), nn.GELU: ("gelu", ("approximate",)),
    nn.ELU: ("elu", ("alpha",)), nn.Softplus: ("softplus", ("beta",)),
    nn.Hardtanh: ("hardtanh", ("min_val", "max_val")),
}

#: activation functions: callable -> (name, ((parameter, default), ...) after the input)
_ACT_FUNCS = {}
for _f in (F.relu, torch.relu, F.relu_, torch.relu_):
    _ACT_FUNCS[_f] = ("relu", ())
for _f in (torch.tanh, F.tanh):
    _ACT_FUNCS[_f] = ("tanh", ())
for _f in (torch.sigmoid, F.sigmoid):
    _ACT_FUNCS[_f] = ("sigmoid", ())
for _f in (F.selu, torch.selu):
    _ACT_FUNCS[_f] = ("selu", ())
_ACT_FUNCS[F.silu] = ("silu", ())
_ACT_FUNCS[F.leaky_relu] = ("leaky_relu", (("negative_slope", 0.01),))
_ACT_FUNCS[F.gelu] = ("gelu", (("approximate", "none"),))
_ACT_FUNCS[F.elu] = ("elu", (("alpha", 1.0),))
_ACT_FUNCS[F.softplus] = ("softplus", (("beta", 1.0), ("threshold", 20.0)))
_ACT_FUNCS[F.hardtanh] = ("hardtanh", (("min_val", -1.0), ("max_val", 1.0)))
#: tensor methods
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh",
                "sigmoid": "sigmoid", "sigmoid_": "sigmoid"}


def _call_params(spec: tuple, args: tuple, kwargs: dict) -> dict:
    """The activation parameters of a functional call: positional after the input, then keywords,
    then defaults."""
    out = {}
    for i, (name, default) in enumerate(spec):
        out[name] = args[1 + i] if len(args) > 1 + i else kwargs.get(name, default)
    return out


# ---------------------------------------------------------------------------------------------
# tracing


class _SelfAttention(nn.Module):
    """A lone ``nn.MultiheadAttention`` as a module of one tensor: ``attn(x, x, x)[0]``."""

    def __init__(self, attn: nn.MultiheadAttention):
        super().__init__()
        self.attn = attn

    def forward(self, x):
        return self.attn(x, x, x)[0]


class _Tracer(fx.Tracer):
    """``torch.fx`` tracer that remembers the innermost module being traced when tracing fails."""

    def __init__(self):
        super().__init__()
        self.failed: Optional[tuple] = None

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed is None:
                self.failed = (self.path_of_module(m), type(m).__name__)
            raise


def trace(module: nn.Module) -> fx.GraphModule:
    """``torch.fx`` symbolic trace of ``module``; a ValueError naming the module that cannot be
    traced (data-dependent control flow, unsupported Python)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {short_repr(module)}")
    tracer = _Tracer()
    wrapped = tracer.is_leaf_module(module, "")
    root_type = type(module).__name__
    if type(module) is nn.MultiheadAttention:    # a lone attention: self-attention on x
        module = _SelfAttention(module)
    elif wrapped:                     # a lone torch.nn module (nn.Linear): traced as a leaf
        module = nn.Sequential(module)
    try:
        graph = tracer.trace(module)
    except Exception as err:  # noqa: BLE001 - any tracing failure is reported with its module
        path, what = tracer.failed or ("", type(module).__name__)
        raise ValueError(f"{_where(path)} ({what}) cannot be traced by torch.fx "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                         "signalprop.torch maps modules without data-dependent control flow") from None
    gm = fx.GraphModule(tracer.root, graph)
    gm.sp_wrapped = wrapped           # its one module's path is then the root's ("")
    gm.sp_root_type = root_type
    return gm


# ---------------------------------------------------------------------------------------------
# the graph as elementary operations


@dataclass
class _Rec:
    """One graph node: ``kind`` (linear, act, ln, rms, bn, add, scale, id, input, output),
    its tensor inputs, and what it carries (module, activation, factor)."""

    kind: str
    ins: tuple
    path: str = ""
    module: Optional[nn.Module] = None
    act: Optional[Activation] = None
    factor: float = 1.0


def _node_path(node: fx.Node) -> tuple:
    """(path, type name) of the module a function call sits in (from fx's module stack)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    key, (_, typ) = list(stack.items())[-1]
    return str(key), getattr(typ, "__name__", str(typ))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_norm_module(mod: nn.Module, path: str, variances) -> None:
    what = type(mod).__name__
    eps = getattr(mod, "eps", None)
    if eps is not None and not (0.0 <= float(eps) <= MAX_EPS):
        raise _unsupported(path, what, f"has eps={eps!r}; signalprop's normalisation has eps = 0 "
                           f"and an eps up to {MAX_EPS:g} is neglected")
    w, b = getattr(mod, "weight", None), getattr(mod, "bias", None)
    if variances == "empirical":
        if w is not None and not bool(torch.all(w.detach() == 1)):
            raise _unsupported(path, what, "has an affine gain other than its initial value 1; "
                               "signalprop's normalisation layers have gain 1 and bias 0")
        if b is not None and not bool(torch.all(b.detach() == 0)):
            raise _unsupported(path, what, "has an affine bias other than its initial value 0; "
                               "signalprop's normalisation layers have gain 1 and bias 0")


#: why recurrent and attention modules other than a bare nn.RNN / LSTM / GRU are refused
_WHY_LATER = {
    "RNN": "is mapped only as the whole model (from_module(nn.RNN(...), x)), not inside another "
           "module",
    "GRU": "is mapped only as the whole model (from_module(nn.GRU(...), x)), not inside another "
           "module",
    "RNNCell": "is not supported yet: the bridge maps a whole one-layer nn.RNN, not its cell",
    "GRUCell": "is not supported yet: the bridge maps a whole one-layer nn.GRU, not its cell",
    "LSTM": "is mapped only as the whole model (from_module(nn.LSTM(...), x)), not inside "
            "another module",
    "LSTMCell": "is not supported yet: the bridge maps a whole one-layer nn.LSTM, not its cell",
}

_WHY_DECODER = ("is not supported yet (the bridge maps self-attention encoders: "
                "MultiheadAttention, TransformerEncoderLayer, TransformerEncoder)")

#: keyword arguments of a sequence module's call that must keep their defaults (no masks)
_NO_MASK = {"attn_mask": None, "key_padding_mask": None, "is_causal": False, "mask": None,
            "src_mask": None, "src_key_padding_mask": None}


def _sequence_rec(node: fx.Node, mod: nn.Module, path: str) -> _Rec:
    """An attention or encoder module's record: ``mha`` (self-attention ``attn(x, x, x)``, the
    result read by ``[0]``) or ``seq`` (an encoder layer or encoder of one tensor)."""
    what = type(mod).__name__
    args = node.args
    mha = type(mod) is nn.MultiheadAttention
    x = args[0] if args else None
    if not isinstance(x, fx.Node) or (mha and (len(args) != 3 or args[1] is not x
                                               or args[2] is not x)) or (not mha and len(args) != 1):
        raise _unsupported(path, what, "is called with other than one tensor"
                           + (" as query, key and value (self-attention attn(x, x, x)); "
                              "cross-attention is not supported" if mha else ""))
    for key, value in node.kwargs.items():
        if key in ("need_weights", "average_attn_weights"):
            continue
        if key not in _NO_MASK or not (value is None or value is False):
            raise _unsupported(path, what, f"is called with {key}={short_repr(value)}; the bridge "
                               "maps unmasked self-attention (no masks, not causal)")
    return _Rec("mha" if mha else "seq", (x,), path, mod)


def _module_rec(node: fx.Node, mod: nn.Module, path: str, variances) -> _Rec:
    what = type(mod).__name__
    if is_sequence_module(mod):
        return _sequence_rec(node, mod, path)
    if what in _LATER:
        why = _WHY_LATER.get(what) or _WHY_LATER.get(what.replace("Cell", "")) or (
            _WHY_DECODER)
        raise _unsupported(path, what, why)
    x = node.args[0] if node.args else None
    if len(node.args) != 1 or node.kwargs or not isinstance(x, fx.Node):
        raise _unsupported(path, what, "is called with more than one input; the bridge maps "
                           "modules of one tensor")
    t = type(mod)
    if t is nn.Linear:
        return _Rec("linear", (x,), path, mod)
    if t in _ACT_MODULES:
        name, keys = _ACT_MODULES[t]
        return _Rec("act", (x,), path, act=_act(name, {k: getattr(mod, k) for k in keys}, path,
                                                     what))
    if t is nn.Identity or (t is nn.Dropout and (mod.p == 0 or not mod.training)):
        return _Rec("id", (x,), path)
    if t is nn.LayerNorm:
        _check_norm_module(mod, path, variances)
        if len(mod.normalized_shape) != 1:
            raise _unsupported(path, what, f"normalises over {tuple(mod.normalized_shape)}; the "
                               "bridge maps normalisation over the last axis only")
        return _Rec("ln", (x,), path, mod)
    if getattr(nn, "RMSNorm", None) is not None and t is nn.RMSNorm:
        _check_norm_module(mod, path, variances)
        if len(mod.normalized_shape) != 1:
            raise _unsupported(path, what, f"normalises over {tuple(mod.normalized_shape)}; the "
                               "bridge maps normalisation over the last axis only")
        return _Rec("rms", (x,), path, mod)
    if t is nn.BatchNorm1d:
        _check_norm_module(mod, path, variances)
        if not mod.training:
            raise _unsupported(path, what, "is in eval mode, where it is an affine map with running "
                               "statistics, not batch normalisation; call model.train()")
        return _Rec("bn", (x,), path, mod)
    raise _unsupported(path, what)


def _function_rec(node: fx.Node, root_type: str) -> _Rec:
    path, where_type = _node_path(node)
    where_type = where_type or root_type
    target = node.target
    name = getattr(target, "__name__", str(target))
    what = f"{name}() in {where_type}" if where_type else f"{name}()"
    args, kwargs = node.args, node.kwargs
    tensors = [a for a in args if isinstance(a, fx.Node)]
    if node.op == "call_method":
        if name in _ACT_METHODS and len(args) == 1 and not kwargs:
            return _Rec("act", (args[0],), path, act=_act(_ACT_METHODS[name], {}, path, what))
        fn = {"add": operator.add, "add_": operator.add, "mul": operator.mul,
              "mul_": operator.mul, "div": operator.truediv, "div_": operator.truediv}.get(name)
        if fn is None:
            raise _unsupported(path, f"tensor method .{name}()" + (f" in {where_type}"
                                                                   if where_type else ""))
        target = fn
    if target in _ACT_FUNCS and tensors and args[0] is tensors[0]:
        aname, spec = _ACT_FUNCS[target]
        extra = {k: v for k, v in kwargs.items() if k != "inplace"}
        return _Rec("act", (args[0],), path, act=_act(aname, _call_params(spec, args, extra),
                                                        path, what))
    if target in (operator.add, torch.add, operator.iadd) and len(args) == 2 and not (
            set(kwargs) - {"out"} and kwargs.get("alpha", 1) != 1):
        if len(tensors) == 2:
            return _Rec("add", tuple(tensors), path)
        raise _unsupported(path, what, "adds a constant to a tensor; the bridge maps sums of two "
                           "tensors (residual connections)")
    if target in (operator.mul, torch.mul, operator.imul) and len(args) == 2 and len(tensors) == 1:
        other = args[1] if args[0] is tensors[0] else args[0]
        if _is_number(other):
            return _Rec("scale", (tensors[0],), path, factor=float(other))
    if target in (operator.truediv, torch.div, torch.true_divide, operator.itruediv) \
            and len(args) == 2 and args[0] is tensors[0] and len(tensors) == 1 \
            and _is_number(args[1]) and not kwargs:
        return _Rec("scale", (tensors[0],), path, factor=1.0 / float(args[1]))
    if target in (F.dropout,) and (_call_params((("p", 0.5), ("training", True)), args, kwargs)
                                   ["p"] == 0):
        return _Rec("id", (args[0],), path)
    raise _unsupported(path, what)


def _records(gm: fx.GraphModule, variances) -> tuple:
    """(records by node, the input node, the output's value node)."""
    mods = dict(gm.named_modules())
    root_type = getattr(gm, "sp_root_type", type(gm).__name__)
    recs, inp, out = {}, None, None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if inp is not None:
                raise ValueError(f"{ROOT} ({root_type}) takes more than one input; the "
                                 "bridge maps modules of one tensor")
            inp = node
            recs[node] = _Rec("input", ())
        elif node.op == "call_module":
            path = "" if getattr(gm, "sp_wrapped", False) else str(node.target)
            recs[node] = _module_rec(node, mods[node.target], path, variances)
        elif node.op == "call_function" and node.target is operator.getitem and \
                isinstance(node.args[0], fx.Node) and node.args[0] in recs and \
                recs[node.args[0]].kind == "mha":
            if node.args[1] != 0:
                raise _unsupported(recs[node.args[0]].path, "MultiheadAttention",
                                   "has its attention weights used ([1]); the bridge maps its "
                                   "output [0] only")
            recs[node] = _Rec("id", (node.args[0],), recs[node.args[0]].path)
        elif node.op in ("call_function", "call_method"):
            recs[node] = _function_rec(node, root_type)
        elif node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node):
                raise ValueError(f"{ROOT} returns {type(out).__name__}; the bridge maps modules "
                                 "that return one tensor")
        else:                                   # get_attr: a parameter used as a value
            raise _unsupported(str(node.target), "parameter or buffer used directly in forward")
    if inp is None:
        raise ValueError(f"{ROOT} takes no input")
    return recs, inp, out


def _dominators(recs: dict, order: list) -> dict:
    """Immediate dominator of every node of the DAG (nodes in topological ``order``): the latest
    node in that order that every path from the input passes through."""
    index = {n: i for i, n in enumerate(order)}
    dom: dict = {}
    for n in order:
        ins = recs[n].ins
        if not ins:
            dom[n] = {n}
            continue
        common = set.intersection(*(dom[p] for p in ins))
        dom[n] = common | {n}
    return {n: (max(dom[n] - {n}, key=index.get) if len(dom[n]) > 1 else None) for n in order}


@dataclass
class _Op:
    """One elementary operation of a chain: kind, graph node, record; an ``add`` carries its
    paths (lists of ops) and scales."""

    kind: str
    node: fx.Node
    rec: _Rec
    paths: tuple = ()
    scales: tuple = ()


class _Reader:
    """Reads the traced graph as chains of operations (module docstring)."""

    def __init__(self, recs: dict, order: list):
        self.recs = recs
        self.idom = _dominators(recs, order)

    def chain(self, node: fx.Node, start: fx.Node) -> list:
        """The operations from ``start`` (a dominator of ``node``) to ``node``, in order."""
        ops = []
        while node is not start:
            rec = self.recs[node]
            if rec.kind == "input":
                raise ValueError(f"{ROOT}: a value reaches {start.name} without passing through "
                                 "the expected branch point")
            if rec.kind == "id":
                node = rec.ins[0]
                continue
            if rec.kind == "add":
                d = self.idom[node]
                paths, scales = [], []
                for a in rec.ins:
                    s = 1.0
                    while a is not d and self.recs[a].kind in ("scale", "id"):
                        s *= self.recs[a].factor
                        a = self.recs[a].ins[0]
                    if s < 0:
                        raise _unsupported(rec.path, "a sum with a negative factor",
                                           "is not supported (signalprop's Add takes scales >= 0)")
                    paths.append(self.chain(a, d))
                    scales.append(s)
                ops.append(_Op("add", node, rec, tuple(paths), tuple(scales)))
                node = d
                continue
            ops.append(_Op(rec.kind, node, rec))
            node = rec.ins[0]
        return ops[::-1]


# ---------------------------------------------------------------------------------------------
# grouping into layer kinds


@dataclass(frozen=True)
class TrackedLayer:
    """Where layer l of the mapped network lives in the traced graph: the node whose value is its
    tracked variable ``t^l`` and the node of its output ``x^l`` (fed to layer l + 1)."""

    tracked: str
    out: str
    label: str


@dataclass(frozen=True)
class LinearSite:
    """A ``Linear`` layer of the model as the mapping read it: its path, the activation applied
    to its output (``linear`` when none), whether batch normalisation sits in between, and the
    variances it was mapped with."""

    path: str
    activation: Activation
    batch_norm: bool
    sigma_w2: float
    sigma_b2: float
    weights: str


@dataclass(frozen=True)
class Mapped:
    """The result of reading a module: the network, where its layers' tracked variables are in the
    graph, and the Linear layers with their variances."""

    network: Network
    tracked: tuple
    linears: tuple


def _label(layer) -> str:
    label = getattr(layer, "label", None)
    return label() if callable(label) else f"{type(layer).__name__}({layer.width})"


def _linear_variances(mod: nn.Linear, path: str, variances, weights: str) -> tuple:
    """(sigma_w2, sigma_b2, weights) of a Linear layer (module docstring)."""
    fan_in = int(mod.in_features)
    if isinstance(variances, Mapping):
        if path not in variances:
            raise ValueError(f"no variances given for {_where(path)} (Linear)")
        return variances[path]
    if variances == "init":
        return 1.0 / 3.0, (1.0 / (3.0 * fan_in) if mod.bias is not None else 0.0), "uniform"
    W = mod.weight.detach().to(torch.float64)
    sw2 = fan_in * float(torch.mean(W * W))
    sb2 = 0.0
    if mod.bias is not None:
        b = mod.bias.detach().to(torch.float64)
        sb2 = float(torch.mean(b * b))
    if not (sw2 > 0 and math.isfinite(sw2) and math.isfinite(sb2)):
        raise _unsupported(path, "Linear", f"has weights with fan_in * mean(W^2) = {sw2!r}; "
                           "signalprop needs a finite sigma_w2 > 0")
    return sw2, sb2, weights


class _Builder:
    """Groups chains of operations into signalprop layers (module docstring's table)."""

    def __init__(self, variances, weights: str, batch: Optional[int],
                 tokens: Optional[int] = None):
        self.variances, self.weights, self.batch = variances, weights, batch
        self.tokens = tokens
        self.linears: list = []

    def _tokens(self, path: str, what: str) -> int:
        if self.tokens is None:
            raise ValueError(f"{_where(path)} ({what}): example_input (one sequence of T tokens, "
                             "shape (T, d)) is needed: the number of tokens T enters the network")
        return self.tokens

    def _attention(self, mod: nn.MultiheadAttention, path: str, n: int):
        if int(mod.embed_dim) != n:
            raise _unsupported(path, "MultiheadAttention", f"has embed_dim={mod.embed_dim} but its "
                               f"input has width {n}")
        return mha_attention(mod, path, self._tokens(path, "MultiheadAttention"),
                             self.variances != "init")

    def _linear(self, mod: nn.Linear, path: str, act: Activation) -> Dense:
        sw2, sb2, w = _linear_variances(mod, path, self.variances, self.weights)
        self.linears.append(LinearSite(path, act, False, sw2, sb2, w))
        return Dense(int(mod.out_features), act, sw2, sb2, w)

    def _encoder_act(self, fn, path: str) -> Activation:
        what = "TransformerEncoderLayer"
        if isinstance(fn, nn.Module):
            if type(fn) not in _ACT_MODULES:
                raise _unsupported(path, what, f"has activation {type(fn).__name__}, which the "
                                   "bridge does not map")
            name, keys = _ACT_MODULES[type(fn)]
            return _act(name, {k: getattr(fn, k) for k in keys}, path, what)
        if fn in _ACT_FUNCS:
            name, spec = _ACT_FUNCS[fn]
            return _act(name, {k: v for k, v in spec}, path, what)
        raise _unsupported(path, what, f"has activation {short_repr(fn)}, which the bridge does "
                           "not map (known: 'relu', 'gelu', the activation modules)")

    def _norm(self, mod: nn.Module, path: str, n: int):
        t = type(mod)
        if t is not nn.LayerNorm and not (getattr(nn, "RMSNorm", None) is not None
                                          and t is nn.RMSNorm):
            raise _unsupported(path, t.__name__, "is not supported as a transformer norm "
                               "(LayerNorm, RMSNorm)")
        _check_norm_module(mod, path, self.variances)
        if tuple(mod.normalized_shape) != (n,):
            raise _unsupported(path, t.__name__, f"normalises {tuple(mod.normalized_shape)}, not "
                               f"the width {n}")
        return (LayerNorm if t is nn.LayerNorm else RMSNorm)(n)

    def _encoder_layer(self, mod: nn.TransformerEncoderLayer, path: str, n: int) -> list:
        """The 2 (pre-LN) or 4 (post-LN) layers of an encoder layer (signalprop.torch.attention)."""
        check_encoder(mod, path)
        p = f"{path}." if path else ""
        attn = self._attention(mod.self_attn, p + "self_attn", n)
        act = self._encoder_act(mod.activation, path)
        ffn = (self._linear(mod.linear1, p + "linear1", act),
               self._linear(mod.linear2, p + "linear2", activation("linear")))
        if mod.linear1.in_features != n or mod.linear2.out_features != n:
            raise _unsupported(path, "TransformerEncoderLayer", "has feed-forward layers that do "
                               f"not map width {n} to itself")
        n1, n2 = self._norm(mod.norm1, p + "norm1", n), self._norm(mod.norm2, p + "norm2", n)
        if mod.norm_first:
            return [Residual((n1, attn), 1.0, 1.0), Residual((n2,) + ffn, 1.0, 1.0)]
        return [Residual((attn,), 1.0, 1.0), n1, Residual(ffn, 1.0, 1.0), n2]

    def _sequence(self, op, n: int) -> tuple:
        """(layers, tracked) of an attention, encoder-layer or encoder op: the tracked values are
        named ``<node>@<i>`` (:func:`signalprop.torch.attention.sequence_forward`), except a
        MultiheadAttention's, which is its node's output."""
        mod, path = op.rec.module, op.rec.path
        if op.kind == "mha":
            layer = self._attention(mod, path, n)
            return [layer], [TrackedLayer(op.node.name, op.node.name, _label(layer))]
        if type(mod) is nn.TransformerEncoderLayer:
            layers = self._encoder_layer(mod, path, n)
        else:
            layers = []
            p = f"{path}." if path else ""
            for j, sub in enumerate(mod.layers):
                layers += self._encoder_layer(sub, f"{p}layers.{j}", n)
            if mod.norm is not None:
                layers.append(self._norm(mod.norm, p + "norm", n))
        assert len(layers) == sublayer_count(mod)
        names = [f"{op.node.name}@{i}" for i in range(len(layers))]
        return layers, [TrackedLayer(m, m, _label(la)) for m, la in zip(names, layers)]

    def layers(self, ops: list, n: int, top: bool) -> tuple:
        """``(layers, tracked)`` of a chain at input width ``n``; ``tracked`` only when ``top``."""
        out, tracked = [], []
        i = 0
        while i < len(ops):
            op = ops[i]
            nxt = ops[i + 1] if i + 1 < len(ops) else None
            if op.kind == "linear":
                mod = op.rec.module
                if mod.in_features != n:
                    raise _unsupported(op.rec.path, "Linear", f"has in_features={mod.in_features} "
                                       f"but its input has width {n}")
                sw2, sb2, w = _linear_variances(mod, op.rec.path, self.variances, self.weights)
                width = int(mod.out_features)
                if nxt is not None and nxt.kind == "bn":
                    if nxt.rec.module.num_features != width:
                        raise _unsupported(nxt.rec.path, "BatchNorm1d", "has num_features="
                                           f"{nxt.rec.module.num_features}, not {width}")
                    if self.batch is None:
                        raise ValueError(f"{_where(nxt.rec.path)} (BatchNorm1d): the batch size B is "
                                         "read from example_input.shape[0]; pass an example_input "
                                         "of shape (B, N_0)")
                    act_op = ops[i + 2] if i + 2 < len(ops) and ops[i + 2].kind == "act" else None
                    act = act_op.rec.act if act_op else activation("linear")
                    try:
                        layer = BatchNormDense(width, act, sw2, self.batch, w)
                    except ValueError as err:
                        raise ValueError(f"{_where(nxt.rec.path)} (BatchNorm1d): {err}") from None
                    last = act_op or nxt
                    self.linears.append(LinearSite(op.rec.path, act, True, sw2, 0.0, w))
                    i += 3 if act_op else 2
                else:
                    act_op = nxt if nxt is not None and nxt.kind == "act" else None
                    act = act_op.rec.act if act_op else activation("linear")
                    layer = Dense(width, act, sw2, sb2, w)
                    last = act_op or op
                    self.linears.append(LinearSite(op.rec.path, act, False, sw2, sb2, w))
                    i += 2 if act_op else 1
                tracked.append(TrackedLayer(op.node.name, last.node.name, _label(layer)))
            elif op.kind == "act":
                layer = Nonlinearity(n, op.rec.act)
                tracked.append(TrackedLayer(op.rec.ins[0].name, op.node.name, _label(layer)))
                i += 1
            elif op.kind in ("ln", "rms"):
                mod = op.rec.module
                if int(mod.normalized_shape[0]) != n:
                    raise _unsupported(op.rec.path, type(mod).__name__, "normalises "
                                       f"{mod.normalized_shape[0]} units but its input has width {n}")
                layer = (LayerNorm if op.kind == "ln" else RMSNorm)(n)
                tracked.append(TrackedLayer(op.node.name, op.node.name, _label(layer)))
                i += 1
            elif op.kind == "bn":
                raise _unsupported(op.rec.path, "BatchNorm1d", "is mapped only right after a Linear "
                                   "layer (signalprop's BatchNormDense: W, then BN, then phi)")
            elif op.kind == "add":
                scales = list(op.scales)
                end = op
                while nxt is not None and nxt.kind == "scale":   # (x + f(x)) * c
                    scales = [s * nxt.rec.factor for s in scales]
                    end = nxt
                    i += 1
                    nxt = ops[i + 1] if i + 1 < len(ops) else None
                if any(s < 0 for s in scales):
                    raise _unsupported(end.rec.path, "a sum with a negative factor",
                                       "is not supported (signalprop's Add takes scales >= 0)")
                paths = [self.layers(list(p), n, False)[0] for p in op.paths]
                try:
                    if len(paths) == 2 and (not paths[0] or not paths[1]):
                        k = 0 if not paths[0] else 1
                        layer = Residual(paths[1 - k], scales[k], scales[1 - k])
                    else:
                        layer = Add(tuple(paths), tuple(scales))
                except ValueError as err:
                    raise _unsupported(op.rec.path, "a sum of two tensors", f"cannot be mapped: "
                                       f"{err}") from None
                tracked.append(TrackedLayer(end.node.name, end.node.name, _label(layer)))
                i += 1
            elif op.kind in ("mha", "seq"):
                layers, tr = self._sequence(op, n)
                for la in layers[:-1]:
                    out.append(la)
                tracked.extend(tr[:-1])
                tracked.append(tr[-1])
                layer = layers[-1]
                i += 1
            elif op.kind == "scale":
                raise _unsupported(op.rec.path, f"multiplication by {op.rec.factor:g}",
                                   "outside a residual sum is not supported (signalprop has no "
                                   "scaling layer; fold the factor into the weights)")
            else:                                              # pragma: no cover - kinds above
                raise _unsupported(op.rec.path, op.kind)
            try:
                layer.check_input(n)
            except ValueError as err:
                raise ValueError(f"{_where(op.rec.path)}: {err}") from None
            out.append(layer)
            n = layer.width
        return tuple(out), tuple(tracked)


def _input_shape(example_input, sequence: bool = False) -> Optional[tuple]:
    if example_input is None:
        return None
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor of shape (N_0,) or (k, N_0), got "
                        f"{short_repr(example_input)}")
    if sequence and example_input.ndim == 3:
        return tuple(example_input.shape)
    if example_input.ndim not in (1, 2) or example_input.shape[-1] < 1:
        raise ValueError(f"example_input must have shape (N_0,) or (k, N_0) (k inputs, or a batch "
                         f"of B for batch normalisation), got {tuple(example_input.shape)}")
    return tuple(example_input.shape)


def map_module(module: nn.Module, example_input=None, variances: Union[str, Mapping] = "init",
               weights: str = "gaussian") -> Mapped:
    """Read ``module`` (module docstring): the network, the graph nodes of every layer's tracked
    variable and output, and the Linear layers with their variances. ``variances``: ``"init"``,
    ``"empirical"`` or a mapping ``path -> (sigma_w2, sigma_b2, weights)`` for every Linear."""
    if not isinstance(variances, Mapping) and variances not in VARIANCES:
        raise ValueError(f"variances must be 'init' or 'empirical', got {short_repr(variances)}")
    if not isinstance(weights, str) or weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {short_repr(weights)}")
    if is_rnn(module):
        if isinstance(variances, Mapping):
            raise ValueError("variances of an RNN must be 'init' or 'empirical'")
        return Mapped(map_rnn(module, example_input, variances,
                              "gaussian" if weights not in RECURRENT_WEIGHTS else weights), (), ())
    if type(module).__name__ in _LATER:
        raise _unsupported("", type(module).__name__, _WHY_LATER.get(type(module).__name__)
                           or _WHY_LATER.get(type(module).__name__.replace("Cell", ""),
                                             _WHY_DECODER))
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {short_repr(module)}")
    sequence = any(is_sequence_module(m) for m in module.modules())
    shape = _input_shape(example_input, sequence)
    layout = token_layout(module, shape) if shape is not None else None
    tokens = None
    if layout is not None:
        tokens = int(shape[0] if layout == "seq_first" else shape[-2])
    gm = trace(module)
    recs, inp, out = _records(gm, variances)
    order = [n for n in gm.graph.nodes if n in recs]
    ops = _Reader(recs, order).chain(out, inp)
    if not ops:
        raise ValueError(f"{ROOT} ({type(module).__name__}) maps its input to itself: no layers")
    first = next((o for o in ops if o.kind == "linear"), None)
    if shape is not None:
        n0 = int(shape[-1])
    elif first is not None and ops[0] is first:
        n0 = int(first.rec.module.in_features)
    else:
        raise ValueError("example_input is needed to know the input width N_0 (the module does not "
                         "start with a Linear layer)")
    batch = int(shape[0]) if shape is not None and len(shape) == 2 and layout is None else None
    builder = _Builder(variances, weights, batch, tokens)
    layers, tracked = builder.layers(ops, n0, True)
    return Mapped(Network(n0, layers), tracked, tuple(builder.linears))


def from_module(module: nn.Module, example_input=None, *, variances: str = "init",
                weights: str = "gaussian") -> Network:
    """The signalprop :class:`~signalprop.network.Network` of a PyTorch ``module`` (traced with
    ``torch.fx``; the mapping, the variances and the refusals are in the module docstring of
    :mod:`signalprop.torch.mapping`).

    ``example_input``: a tensor of shape ``(N_0,)`` or ``(k, N_0)``; it gives the input width
    and, for ``BatchNorm1d``, the batch size B = ``k`` (needed then; else optional when the
    module starts with a ``Linear``). ``variances``: ``"init"`` (PyTorch's default
    initialisation: ``sigma_w2 = 1/3``, uniform weights, ``sigma_b2 = 1/(3 fan_in)``) or
    ``"empirical"`` (the current weights' second moments, law ``weights``: gaussian (default),
    uniform or orthogonal).

    ``predict(from_module(m, x), q0=..., c0=...)`` needs ``q0 = ||x_0||^2 / N_0`` of the inputs
    the module is measured on (:func:`signalprop.torch.example_inputs` builds inputs with
    ``q0 = 1`` and mean zero, the defaults of ``predict`` and ``simulate``).
    """
    return map_module(module, example_input, variances, weights).network
