"""``nn.RNN`` as signalprop's unrolled vanilla RNN (:func:`signalprop.architectures.rnn`,
:class:`~signalprop.layers.recurrent.RNNStep`): :func:`map_rnn`, and the forward pass that
exposes the pre-activations :func:`measure` records (:func:`rnn_forward`).

PyTorch's ``nn.RNN`` (one layer, documented update; torch.nn.RNN docs):

    h_t = phi(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh),   phi = tanh or relu,

is signalprop's step ``e_t = W h_{t-1} + U x_t + b``, ``h_t = phi(e_t)`` (Chen, Pennington &
Schoenholz 2018, sec. 3) with ``W = W_hh``, ``U = W_ih``, ``b = b_ih + b_hh``, the same at every
step (``share="rnn"``). Layer t of the network is time step t; its tracked variable is ``e_t``.

Variances (``H = hidden_size``, ``n_x = input_size``):

* ``variances="init"``: ``nn.RNN.reset_parameters`` draws every weight and bias from
  ``U(-1/sqrt(H), 1/sqrt(H))`` (variance ``1/(3H)``; the input weights too, with ``H`` and not
  ``n_x``), so ``sigma_w2 = H / (3H) = 1/3``, ``sigma_u2 = n_x / (3H)``, and the two independent
  biases add: ``sigma_b2 = 2 / (3H)``.
* ``variances="empirical"``: ``sigma_w2 = H mean(W_hh^2)``, ``sigma_u2 = n_x mean(W_ih^2)``,
  ``sigma_b2 = mean((b_ih + b_hh)^2)``.

The weights are uniform in PyTorch; signalprop's recurrent steps take ``gaussian`` or
``orthogonal`` recurrent weights, so the network is built with ``weights`` (default
``"gaussian"``). The mean-field theory (``predict``) depends on the variances only; ``simulate``
on the network samples Gaussian weights, a different finite-width law (this is the only
difference, and it is stated, not hidden).

Inputs: ``x`` as ``nn.RNN`` takes it (unbatched ``(T, n_x)``; batched ``(T, k, n_x)``, or
``(k, T, n_x)`` with ``batch_first=True``), optionally with the initial state as a tuple
``(x, h0)``, ``h0`` of shape ``(1, H)`` / ``(1, k, H)`` as PyTorch takes it (default zeros). The
step inputs give ``q_x[t] = ||x_t^0||^2 / n_x`` and, with k >= 2 sequences,
``c_x[t] = <x_t^0, x_t^1> / (||x_t^0|| ||x_t^1||)``; ``h0`` gives ``predict``'s ``q0``, ``c0``
(``predict`` needs ``q0 > 0``: pass a nonzero ``h0``).

``nn.LSTM`` (one layer, unidirectional, no projection; torch.nn.LSTM docs) is signalprop's
``rnn("lstm", T, H, gates=...)`` (:class:`~signalprop.layers.gated.LSTMStep`; Hochreiter &
Schmidhuber 1997, the form of Gilboa et al. 2019 sec. 3):

    i = sigma(W_ii x_t + b_ii + W_hi h + b_hi),  f = sigma(W_if x_t + ... ),
    g = tanh(W_ig x_t + ... ),  o = sigma(W_io x_t + ... ),  c_t = f c_{t-1} + i g,  h_t = o tanh(c_t),

with PyTorch's packed rows ``weight_ih_l0 = [W_ii; W_if; W_ig; W_io]`` (likewise ``weight_hh_l0``,
the biases) read as signalprop's gates ``input``, ``forget``, ``candidate``, ``output``. Each gate
is a :class:`~signalprop.layers.gated.Gate`: ``variances="init"``: every weight and bias ~
``U(-1/sqrt(H), 1/sqrt(H))`` (``nn.LSTM.reset_parameters``), so ``sigma_w2 = 1/3``, ``sigma_u2 =
n_x/(3H)``, ``mu = 0`` and ``sigma_b2 = 2/(3H)`` (``b_ih + b_hh``); ``"empirical"``: per gate block,
``H mean(W_hh^2)``, ``n_x mean(W_ih^2)``, and of ``b = b_ih + b_hh`` the mean ``mu`` and variance
``sigma_b2`` (the candidate, whose mean signalprop fixes at 0: ``mu = 0``, ``sigma_b2 =
mean(b^2)``, as the vanilla cell reads its bias). Inputs: ``x`` or ``(x, (h0, c0))`` as
``nn.LSTM`` takes them, with ``c0 = 0`` (signalprop's LSTM starts from ``c_0 = 0``). The tracked
variable of step t is ``h_t`` (docs/notation.md, "Recurrent networks").

``nn.GRU`` (one layer, unidirectional; torch.nn.GRU docs; packed rows r, z, n):

    r = sigma(W_ir x_t + b_ir + W_hr h + b_hr),   z = sigma(W_iz x_t + b_iz + W_hz h + b_hz),
    n = tanh(W_in x_t + b_in + r * (W_hn h + b_hn)),   h_t = (1 - z) n + z h,

is signalprop's ``rnn("gru", T, H, gates=..., reset_after=True, hidden_bias2=...)``
(:class:`~signalprop.layers.gated.GRUStep` with ``reset_after``: the reset gate applied after
the recurrent product, as PyTorch and cuDNN do; Cho et al. 2014 eq. 8 apply it before), gates
``reset`` (rows r), ``update`` (z), ``candidate`` (n). ``variances="init"``
(``nn.GRU.reset_parameters``: every weight and bias ~ ``U(-1/sqrt(H), 1/sqrt(H))``, variance
``1/(3H)``): every gate ``sigma_w2 = 1/3``, ``sigma_u2 = n_x/(3H)``, ``mu = 0``; the reset and
update gates' bias ``b_ih + b_hh`` of variance ``2/(3H)``; the candidate's outer bias ``b_in``
of variance ``1/(3H)`` (``candidate.sigma_b2``) and ``hidden_bias2 = var(b_hn) = 1/(3H)`` (the
bias inside the reset product). ``"empirical"``: per row block ``H mean(W_hh^2)``, ``n_x
mean(W_ih^2)``; the reset and update gates' ``b = b_ih + b_hh`` as its mean ``mu`` and variance;
the candidate's ``sigma_b2 = mean(b_in^2)`` and ``hidden_bias2 = mean(b_hn^2)`` (second moments
about zero, as the vanilla cell reads its bias). Inputs: ``x`` or ``(x, h0)`` as ``nn.GRU`` takes
them. The tracked variable of step t is ``h_t``. Its theory is
:func:`signalprop.predict_tied` (``predict`` refuses the reset-after cell: its untied mean field
is for the reset-before cell).

Theory for tied weights. PyTorch's recurrent modules use one ``W_hh`` at every step.
``predict`` is the untied mean field: exact at infinite width for ``nn.RNN`` (only equal-time
moments enter the vanilla cell; docs/theory/recurrent.md, "Tied weights"), not for the gated
cells, whose gate values persist in time with tied weights (an LSTM's ``log g`` from lag 3 on:
+1.25 nats at lag 7, validation/torch_report.md);
:func:`signalprop.predict_tied` (the dynamical mean field of tied weights) is their theory
(docs/torch.md, validation/torch_report.md). It treats the inputs ``x_t`` of different steps as
independent directions (``<x_s, x_t> = 0`` for ``s != t``), as the untied theory does.

Weight law. PyTorch's recurrent modules draw every weight from ``U(-1/sqrt(H), 1/sqrt(H))``
(variance ``1/(3H)``). The mean-field theory sees the weights only through the variance of
the pre-activations (each entry of ``W h`` is a sum over ``H`` independent terms: Gaussian at
infinite width whatever the weights' law, given finite fourth moments), so reading the variance
is exact for ``predict`` and ``predict_tied``; ``simulate`` on the mapped network draws Gaussian (or orthogonal)
recurrent weights, not uniform ones (signalprop's recurrent steps have no uniform law): a
finite-width difference of order 1/H through the weights' fourth cumulant (docs/torch.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .._validate import short_repr
from ..architectures import rnn
from ..network import Network
from ..layers.gated import Gate
from ..layers.recurrent import RECURRENT_WEIGHTS

__all__ = ["map_rnn", "rnn_inputs", "rnn_forward", "lstm_forward", "gru_forward", "is_rnn",
           "is_lstm", "is_gru"]

ROOT = "model"


def is_rnn(module) -> bool:
    """Whether the bridge reads ``module`` as a recurrent network (exactly ``nn.RNN``,
    ``nn.LSTM`` or ``nn.GRU``)."""
    return type(module) in (nn.RNN, nn.LSTM, nn.GRU)


def is_gru(module) -> bool:
    """Whether ``module`` is exactly ``nn.GRU``."""
    return type(module) is nn.GRU


def is_lstm(module) -> bool:
    """Whether ``module`` is exactly ``nn.LSTM``."""
    return type(module) is nn.LSTM


def _refuse(why: str, what: str = "RNN") -> ValueError:
    return ValueError(f"{ROOT} ({what}) {why}")


def check_rnn(module: nn.RNN) -> str:
    """The activation name of a mappable ``nn.RNN`` (``"lstm"``, ``"gru"`` for a mappable
    ``nn.LSTM``, ``nn.GRU``); a ValueError naming what is not."""
    if is_lstm(module) or is_gru(module):
        return check_lstm(module)
    if module.num_layers != 1:
        raise _refuse(f"has num_layers={module.num_layers}; the bridge maps one layer (stack "
                      "one-layer RNNs only when signalprop has a layered recurrent kind)")
    if module.bidirectional:
        raise _refuse("is bidirectional; the bridge maps a unidirectional RNN")
    if getattr(module, "proj_size", 0):
        raise _refuse("has proj_size > 0; not supported")
    if module.nonlinearity not in ("tanh", "relu"):
        raise _refuse(f"has nonlinearity={module.nonlinearity!r}; known: tanh, relu")
    return module.nonlinearity


def check_lstm(module) -> str:
    """``"lstm"`` for a mappable ``nn.LSTM`` (``"gru"`` for an ``nn.GRU``); a ValueError naming
    what is not."""
    what = type(module).__name__
    if module.num_layers != 1:
        raise _refuse(f"has num_layers={module.num_layers}; the bridge maps one layer", what)
    if module.bidirectional:
        raise _refuse(f"is bidirectional; the bridge maps a unidirectional {what}", what)
    if getattr(module, "proj_size", 0):
        raise _refuse(f"has proj_size={module.proj_size}; the bridge maps an LSTM without "
                      "projection (signalprop's LSTMStep has h of width H)", what)
    return "gru" if is_gru(module) else "lstm"


def _lstm_state(module: nn.LSTM, example_input):
    """``(x, h0)`` of an LSTM input ``x`` or ``(x, (h0, c0))``, ``c0`` checked to be zero."""
    if not isinstance(example_input, (tuple, list)):
        return example_input
    if len(example_input) != 2 or not (isinstance(example_input[1], (tuple, list))
                                       and len(example_input[1]) == 2):
        raise ValueError("example_input of an LSTM must be x or (x, (h0, c0)), as nn.LSTM takes "
                         f"it; got {short_repr(example_input)}")
    x, (h0, c0) = example_input
    if not isinstance(c0, torch.Tensor) or tuple(c0.shape) != tuple(getattr(h0, "shape", ())):
        raise ValueError(f"c0 must be a torch.Tensor of h0's shape, got {short_repr(c0)}")
    if bool(torch.any(c0 != 0)):
        raise ValueError("c0 of an LSTM must be zero: signalprop's LSTM starts from c_0 = 0 "
                         "(the network's input is h_0 alone)")
    return x, h0


def rnn_inputs(module: nn.RNN, example_input) -> tuple:
    """``(x, h0)`` as float tensors of shapes ``(T, k, n_x)`` and ``(k, H)`` (module docstring;
    an ``nn.LSTM`` takes ``x`` or ``(x, (h0, c0))`` with ``c0 = 0``)."""
    if is_lstm(module):
        example_input = _lstm_state(module, example_input)
    h0 = None
    if isinstance(example_input, (tuple, list)):
        if len(example_input) != 2:
            raise ValueError(f"example_input of an RNN must be x or (x, h0), got "
                             f"{len(example_input)} items")
        example_input, h0 = example_input
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input of an RNN must be a torch.Tensor x (or (x, h0)), got "
                        f"{short_repr(example_input)}")
    x = example_input.detach()
    n_x, H = int(module.input_size), int(module.hidden_size)
    if x.ndim == 2:
        x = x[:, None, :]
    elif x.ndim == 3:
        if module.batch_first:
            x = x.transpose(0, 1)
    else:
        raise ValueError(f"example_input of an RNN must have shape (T, n_x) or, batched, "
                         f"{'(k, T, n_x)' if module.batch_first else '(T, k, n_x)'}; got "
                         f"{tuple(example_input.shape)}")
    if x.shape[-1] != n_x or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"example_input of an RNN with input_size={n_x} has shape "
                         f"{tuple(example_input.shape)}")
    k = x.shape[1]
    if h0 is None:
        h = torch.zeros(k, H, dtype=x.dtype)
    else:
        if not isinstance(h0, torch.Tensor):
            raise TypeError(f"h0 must be a torch.Tensor, got {short_repr(h0)}")
        h = h0.detach()
        want = (1, H) if example_input.ndim == 2 else (1, k, H)
        if tuple(h.shape) != want:
            raise ValueError(f"h0 must have shape {want} (as nn.RNN takes it), got "
                             f"{tuple(h.shape)}")
        h = h.reshape(k, H)
    if not (bool(torch.all(torch.isfinite(x))) and bool(torch.all(torch.isfinite(h)))):
        raise ValueError("example_input (x, h0) must be finite")
    return x, h


def _stats(x: torch.Tensor) -> tuple:
    """Per step: ``q_x[t]`` of sequence 0 and ``c_x[t]`` between sequences 0 and 1 (0 with one)."""
    x = x.to(torch.float64)
    q = torch.sum(x[:, 0] ** 2, dim=-1) / x.shape[-1]
    if x.shape[1] < 2:
        return [float(v) for v in q], 0.0
    q1 = torch.sum(x[:, 1] ** 2, dim=-1) / x.shape[-1]
    cross = torch.sum(x[:, 0] * x[:, 1], dim=-1) / x.shape[-1]
    c = []
    for t in range(x.shape[0]):
        d = math.sqrt(float(q[t]) * float(q1[t]))
        c.append(float(cross[t]) / d if d > 0 else 0.0)
    return [float(v) for v in q], c


def rnn_variances(module: nn.RNN, variances: str) -> tuple:
    """``(sigma_w2, sigma_u2, sigma_b2)`` (module docstring)."""
    n_x, H = int(module.input_size), int(module.hidden_size)
    if variances == "init":
        return 1.0 / 3.0, n_x / (3.0 * H), (2.0 / (3.0 * H) if module.bias else 0.0)
    Whh = module.weight_hh_l0.detach().double()
    Wih = module.weight_ih_l0.detach().double()
    sw2 = H * float(torch.mean(Whh * Whh))
    su2 = n_x * float(torch.mean(Wih * Wih))
    sb2 = 0.0
    if module.bias:
        b = module.bias_ih_l0.detach().double() + module.bias_hh_l0.detach().double()
        sb2 = float(torch.mean(b * b))
    if not (sw2 > 0 and all(math.isfinite(v) for v in (sw2, su2, sb2))):
        raise _refuse(f"has weight_hh_l0 with H * mean(W^2) = {sw2!r}; signalprop needs a finite "
                      "sigma_w2 > 0")
    return sw2, su2, sb2


#: signalprop's LSTM gate names in the order of PyTorch's packed rows (i, f, g, o)
LSTM_GATES = ("input", "forget", "candidate", "output")


def lstm_gates(module: nn.LSTM, variances: str) -> dict:
    """Gate name -> :class:`~signalprop.layers.gated.Gate` of an ``nn.LSTM`` (module docstring)."""
    n_x, H = int(module.input_size), int(module.hidden_size)
    if variances == "init":
        sb2 = 2.0 / (3.0 * H) if module.bias else 0.0
        return {n: Gate(1.0 / 3.0, n_x / (3.0 * H), 0.0, sb2) for n in LSTM_GATES}
    Whh = module.weight_hh_l0.detach().double()
    Wih = module.weight_ih_l0.detach().double()
    b = None
    if module.bias:
        b = module.bias_ih_l0.detach().double() + module.bias_hh_l0.detach().double()
    out = {}
    for j, name in enumerate(LSTM_GATES):
        rows = slice(j * H, (j + 1) * H)
        sw2 = H * float(torch.mean(Whh[rows] ** 2))
        su2 = n_x * float(torch.mean(Wih[rows] ** 2))
        mu = sb2 = 0.0
        if b is not None:
            bj = b[rows]
            if name == "candidate":
                sb2 = float(torch.mean(bj * bj))
            else:
                mu = float(torch.mean(bj))
                sb2 = float(torch.mean((bj - mu) ** 2))
        if not all(math.isfinite(v) for v in (sw2, su2, mu, sb2)):
            raise _refuse(f"has non-finite weights or biases in its {name} gate", "LSTM")
        out[name] = Gate(sw2, su2, mu, sb2)
    return out


#: signalprop's GRU gate names in the order of PyTorch's packed rows (r, z, n)
GRU_GATES = ("reset", "update", "candidate")


def gru_gates(module: nn.GRU, variances: str) -> tuple:
    """``(gates, hidden_bias2)`` of an ``nn.GRU`` (module docstring): gate name ->
    :class:`~signalprop.layers.gated.Gate` (rows r, z, n read as ``reset``, ``update``,
    ``candidate``) and the variance of ``b_hn``, the bias inside the reset product.
    ``"init"`` (``nn.GRU.reset_parameters``, every parameter of variance ``1/(3H)``): reset and
    update ``Gate(1/3, n_x/(3H), 0, 2/(3H))``, candidate ``Gate(1/3, n_x/(3H), 0, 1/(3H))``,
    ``hidden_bias2 = 1/(3H)``; ``"empirical"``: per row block ``H mean(W_hh^2)``, ``n_x
    mean(W_ih^2)``, the reset and update gates' ``b = b_ih + b_hh`` as mean ``mu`` and variance,
    the candidate's ``sigma_b2 = mean(b_in^2)``, ``hidden_bias2 = mean(b_hn^2)``."""
    n_x, H = int(module.input_size), int(module.hidden_size)
    if variances == "init":
        one = 1.0 / (3.0 * H) if module.bias else 0.0
        gates = {n: Gate(1.0 / 3.0, n_x / (3.0 * H), 0.0, 2.0 * one) for n in GRU_GATES[:2]}
        gates["candidate"] = Gate(1.0 / 3.0, n_x / (3.0 * H), 0.0, one)
        return gates, one
    Whh = module.weight_hh_l0.detach().double()
    Wih = module.weight_ih_l0.detach().double()
    out, hb2 = {}, 0.0
    for j, name in enumerate(GRU_GATES):
        rows = slice(j * H, (j + 1) * H)
        sw2 = H * float(torch.mean(Whh[rows] ** 2))
        su2 = n_x * float(torch.mean(Wih[rows] ** 2))
        mu = sb2 = 0.0
        if module.bias:
            bi = module.bias_ih_l0.detach().double()[rows]
            bh = module.bias_hh_l0.detach().double()[rows]
            if name == "candidate":
                sb2 = float(torch.mean(bi * bi))
                hb2 = float(torch.mean(bh * bh))
            else:
                b = bi + bh
                mu = float(torch.mean(b))
                sb2 = float(torch.mean((b - mu) ** 2))
        if not all(math.isfinite(v) for v in (sw2, su2, mu, sb2, hb2)):
            raise _refuse(f"has non-finite weights or biases in its {name} gate", "GRU")
        out[name] = Gate(sw2, su2, mu, sb2)
    return out, hb2


def map_rnn(module: nn.RNN, example_input, variances="init", weights: str = "gaussian") -> Network:
    """The network of ``nn.RNN`` ``module`` on ``example_input`` (module docstring):
    ``rnn("rnn", T, H, phi, sigma_w2=..., sigma_u2=..., sigma_b2=..., q_x=[...], c_x=[...],
    input_width=n_x)``; for ``nn.LSTM``, ``rnn("lstm", T, H, gates=lstm_gates(...), ...)``;
    for ``nn.GRU``, ``rnn("gru", T, H, gates=..., reset_after=True, hidden_bias2=...)``
    (:func:`gru_gates`)."""
    act = check_rnn(module)
    if example_input is None:
        state = "(x, (h0, c0))" if act == "lstm" else "(x, h0)"
        raise ValueError(f"{ROOT} ({type(module).__name__}): example_input (the input sequence x, "
                         f"or {state}) is needed: the step inputs' statistics q_x, c_x enter the "
                         "network")
    if not isinstance(variances, str) or variances not in ("init", "empirical"):
        raise ValueError(f"variances of an RNN must be 'init' or 'empirical', got "
                         f"{short_repr(variances)}")
    if weights not in RECURRENT_WEIGHTS:
        raise ValueError(f"weights of an RNN must be one of {', '.join(RECURRENT_WEIGHTS)}, got "
                         f"{short_repr(weights)}")
    x, _ = rnn_inputs(module, example_input)
    qx, cx = _stats(x)
    if act == "lstm":
        return rnn("lstm", x.shape[0], int(module.hidden_size), gates=lstm_gates(module, variances),
                   weights=weights, q_x=qx, c_x=cx, input_width=int(module.input_size))
    if act == "gru":
        gates, hb2 = gru_gates(module, variances)
        return rnn("gru", x.shape[0], int(module.hidden_size), gates=gates, reset_after=True,
                   hidden_bias2=hb2, weights=weights, q_x=qx, c_x=cx,
                   input_width=int(module.input_size))
    sw2, su2, sb2 = rnn_variances(module, variances)
    return rnn("rnn", x.shape[0], int(module.hidden_size), act, sigma_w2=sw2, sigma_u2=su2,
               sigma_b2=sb2, weights=weights, q_x=qx, c_x=cx, input_width=int(module.input_size))


def _check_forward(module, x, state, h_last, cell: str, law: str) -> None:
    """A ValueError naming ``cell`` unless the module's own forward from ``state`` ends at
    ``h_last`` (relative 1e-4 in float32, 1e-10 in float64): the bridge's per-step forward must be
    the module's (``law``: the update it assumes)."""
    with torch.no_grad():
        xin = x.transpose(0, 1) if module.batch_first else x
        out = module(xin, state)[1]
    ref = (out[0] if isinstance(out, tuple) else out)[0]
    tol = 1e-4 if x.dtype == torch.float32 else 1e-10
    scale = float(torch.max(torch.abs(ref))) + 1.0
    if float(torch.max(torch.abs(ref - h_last.detach()))) > tol * scale:
        raise ValueError(f"{ROOT} ({cell}): its forward differs from {law}; the bridge cannot "
                         "measure it")


def rnn_forward(module: nn.RNN, x: torch.Tensor, h0: torch.Tensor, check: bool = False) -> tuple:
    """``(e, h)``: lists over t = 1..T of the pre-activations ``e_t`` and states ``h_t`` (each
    ``(k, H)``; ``e_t`` with gradients retained) from the module's own parameters
    (``e_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh``). ``check``: compare ``h_T`` with the
    module's own forward (a ValueError if they differ beyond rounding)."""
    phi = torch.tanh if module.nonlinearity == "tanh" else torch.relu
    Wih, Whh = module.weight_ih_l0, module.weight_hh_l0
    b = None
    if module.bias:
        b = module.bias_ih_l0 + module.bias_hh_l0
    h, es, hs = h0, [], []
    for t in range(x.shape[0]):
        e = x[t] @ Wih.T + h @ Whh.T
        if b is not None:
            e = e + b
        if e.requires_grad:
            e.retain_grad()
        h = phi(e)
        es.append(e)
        hs.append(h)
    if check:
        _check_forward(module, x, h0[None], hs[-1], "RNN",
                       "h_t = phi(W_ih x_t + b_ih + W_hh h_(t-1) + b_hh)")
    return es, hs


def lstm_forward(module: nn.LSTM, x: torch.Tensor, h0: torch.Tensor, check: bool = False) -> tuple:
    """``(h, h)``: the list over t = 1..T of the states ``h_t`` (each ``(k, H)``, gradients
    retained), from the module's own parameters (module docstring, gate rows i, f, g, o; ``c_0 =
    0``), twice (the tracked variables and the states, as :func:`rnn_forward` returns them).
    ``check``: compare ``h_T`` with the module's own forward (a ValueError if they differ)."""
    Wih, Whh = module.weight_ih_l0, module.weight_hh_l0
    b = None
    if module.bias:
        b = module.bias_ih_l0 + module.bias_hh_l0
    h, c, hs = h0, torch.zeros_like(h0), []
    for t in range(x.shape[0]):
        a = x[t] @ Wih.T + h @ Whh.T
        if b is not None:
            a = a + b
        ai, af, ag, ao = a.chunk(4, dim=-1)
        c = torch.sigmoid(af) * c + torch.sigmoid(ai) * torch.tanh(ag)
        h = torch.sigmoid(ao) * torch.tanh(c)
        if h.requires_grad:
            h.retain_grad()
        hs.append(h)
    if check:
        _check_forward(module, x, (h0[None], torch.zeros_like(h0)[None]), hs[-1], "LSTM",
                       "the LSTM update with gate rows (i, f, g, o)")
    return hs, hs


def gru_forward(module: nn.GRU, x: torch.Tensor, h0: torch.Tensor, check: bool = False) -> tuple:
    """``(h, h)``: the list over t = 1..T of the states ``h_t`` of an ``nn.GRU`` (each ``(k, H)``,
    gradients retained) from the module's own parameters (PyTorch's update, module docstring:
    packed rows r, z, n; ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h_t = (1 - z) n +
    z h``), twice. ``check``: compare ``h_T`` with the module's own forward (ValueError if they
    differ)."""
    Wih, Whh = module.weight_ih_l0, module.weight_hh_l0
    bi = module.bias_ih_l0 if module.bias else None
    bh = module.bias_hh_l0 if module.bias else None
    h, hs = h0, []
    for t in range(x.shape[0]):
        gi = x[t] @ Wih.T
        gh = h @ Whh.T
        if bi is not None:
            gi, gh = gi + bi, gh + bh
        ir, iz, i_n = gi.chunk(3, dim=-1)
        hr, hz, h_n = gh.chunk(3, dim=-1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(i_n + r * h_n)
        h = (1.0 - z) * n + z * h
        if h.requires_grad:
            h.retain_grad()
        hs.append(h)
    if check:
        _check_forward(module, x, h0[None], hs[-1], "GRU",
                       "the GRU update with gate rows (r, z, n)")
    return hs, hs
