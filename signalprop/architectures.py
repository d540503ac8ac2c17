"""Constructors of whole networks from a few numbers: :func:`mlp` (fully connected, optionally
normalised) and :func:`resnet` (residual blocks). They only assemble layer kinds from
:mod:`signalprop.layers`; everything a layer means lives there."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np

from ._validate import (check_choice, check_int, finite_scalar, nonnegative_scalar,
                        positive_scalar, short_repr)
from .activations import activation as _activation
from .network import INITS, MAX_DEPTH, MAX_WIDTH, WEIGHTS, Network, _gain_squared, init_sigma_w2
from .layers.batchnorm import BatchNormDense
from .layers.dense import Dense
from .layers.norm import LayerNorm, RMSNorm
from .layers.residual import Residual
from .layers.recurrent import RNNStep
from .layers.gated import GATED_CELLS, Gate, GRUStep, LSTMStep, MinimalStep
from .layers.attention import Attention, deepnet_constants, feed_forward

__all__ = ["mlp", "resnet", "rnn", "CELLS", "transformer"]


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


#: the recurrent cells :func:`rnn` builds
CELLS = ("rnn",) + GATED_CELLS


def rnn(cell: str = "rnn", steps: int = 100, width: int = 256, activation="tanh", *,
        sigma_w2: float = 1.0, sigma_u2: float = 1.0, sigma_b2: float = 0.0,
        weights: str = "gaussian", q_x=1.0, c_x=0.0, input_width: Optional[int] = None,
        name: str = "rnn", gates: Optional[dict] = None, tied: bool = True,
        chrono: Optional[float] = None, reset_after: bool = False,
        hidden_bias2: float = 0.0) -> Network:
    """A recurrent ``cell`` unrolled over ``steps`` time steps as a :class:`Network` whose layer t
    is step t, all steps sharing their weights by ``name`` (:mod:`signalprop.layers.recurrent`).

    ``cell``: ``"rnn"`` (vanilla, ``h_t = phi(W h_{t-1} + U x_t + b)``, Chen et al. 2018).
    ``steps``: T in 1..MAX_DEPTH; ``width``: N (the state ``h_0`` is the network's input, set by
    ``predict``/``simulate``'s ``q0`` and ``c0``). ``sigma_w2``, ``sigma_u2``, ``sigma_b2``:
    recurrent, input and bias variances; ``weights``: gaussian or orthogonal recurrent W.
    The input process: ``q_x`` (>= 0), the per-unit second moment of ``x_t``, and ``c_x`` (in
    [-1, 1]), the correlation of the two sequences' ``x_t`` (read with two inputs), each one value
    or one per step; ``input_width``: ``n_x`` (default N).

    Gated cells (:mod:`signalprop.layers.gated`): ``"minimal"`` (minimalRNN, Chen et al. 2018;
    ``z_t`` is the input process, width N), ``"gru"``, ``"lstm"`` (Gilboa et al. 2019; the network's
    steps output ``[h; c]``, width 2N, and the profile reports h). ``gates``: per gate name a
    :class:`~signalprop.layers.gated.Gate` or a dict ``sigma_w2, sigma_u2, mu`` (minimal:
    ``gate``; gru: ``update``, ``reset``, ``candidate``; lstm: ``forget``, ``input``, ``output``,
    ``candidate``); a gate not given gets ``Gate(sigma_w2, sigma_u2, 0)`` from the arguments
    above, except the LSTM forget gate, whose default bias is the common ``mu = 1``.
    ``activation`` and ``sigma_b2`` are the vanilla cell's (gates use sigmoid/tanh).
    ``tied``: False gives every step its own weights (the untied model of the mean-field theory).
    ``chrono``: ``T_max`` of the chrono initialisation of an LSTM (Tallec & Ollivier 2018): per unit
    ``b = log U(1, T_max - 1)`` added to the forget gate's bias and subtracted from the input
    gate's; its theory is :func:`signalprop.predict_tied` (``predict`` refuses it).
    ``reset_after`` (GRU): PyTorch's ``nn.GRU`` cell, ``n = tanh(U_n x + b_n + r (W_n h + b_hn))``
    with ``b_hn ~ N(0, hidden_bias2)`` per unit (:class:`~signalprop.layers.gated.GRUStep`; theory:
    ``predict_tied``)."""
    if not isinstance(cell, str) or cell not in CELLS:
        raise ValueError(f"unknown cell {short_repr(cell)}; known: {', '.join(CELLS)}")
    steps = check_int("steps", steps, 1, MAX_DEPTH)
    width = check_int("width", width, 1, MAX_WIDTH)
    qx = [nonnegative_scalar("q_x", v) for v in _per_layer("q_x", q_x, steps)]
    cx = [finite_scalar("c_x", v) for v in _per_layer("c_x", c_x, steps)]
    if not isinstance(tied, bool):
        raise TypeError(f"tied must be True or False, got {short_repr(tied)}")
    if cell in GATED_CELLS:
        if (reset_after or hidden_bias2) and cell != "gru":
            raise ValueError(f"reset_after and hidden_bias2 are options of the GRU, not of {cell!r}")
        extra = {"reset_after": reset_after, "hidden_bias2": hidden_bias2} if cell == "gru" else {}
        return _gated_rnn(cell, steps, width, sigma_w2, sigma_u2, weights, qx, cx, input_width,
                          name, gates, tied, chrono, extra)
    if chrono is not None:
        raise ValueError(f"chrono is an initialisation of the LSTM's gate biases, not of {cell!r}")
    if gates is not None:
        raise ValueError(f"gates are the gated cells' ({', '.join(GATED_CELLS)}), not {cell!r}'s")
    act = _activation(activation)
    layers, made = [], {}
    for t in range(steps):
        key = (qx[t], cx[t])
        if key not in made:
            made[key] = RNNStep(width, act, sigma_w2, sigma_u2, sigma_b2, weights, qx[t], cx[t],
                                input_width, name)
        layers.append(made[key] if tied else RNNStep(
            width, act, sigma_w2, sigma_u2, sigma_b2, weights, qx[t], cx[t], input_width,
            f"{name}:t{t + 1}"))
    return Network(width, tuple(layers))


_GATE_NAMES = {"minimal": ("gate",), "gru": ("update", "reset", "candidate"),
               "lstm": ("forget", "input", "output", "candidate")}


def _gated_rnn(cell, steps, width, sigma_w2, sigma_u2, weights, qx, cx, input_width, name,
               gates, tied, chrono=None, extra=None) -> Network:
    """The gated cells of :func:`rnn`."""
    given = {} if gates is None else gates
    if not isinstance(given, dict):
        raise TypeError(f"gates must be a dict of gate name -> Gate, got {short_repr(gates)}")
    names = _GATE_NAMES[cell]
    unknown = set(given) - set(names)
    if unknown:
        raise ValueError(f"unknown gates {sorted(unknown)} for cell {cell!r}; known: "
                         f"{', '.join(names)}")
    kw = {}
    for g in names:
        mu = 1.0 if (cell, g) == ("lstm", "forget") else 0.0
        kw[g] = given.get(g, Gate(sigma_w2, sigma_u2, mu))
    kind = {"minimal": MinimalStep, "gru": GRUStep, "lstm": LSTMStep}[cell]
    if chrono is not None:
        if cell != "lstm":
            raise ValueError(f"chrono is an initialisation of the LSTM's gate biases, not of "
                             f"{cell!r}")
        kw["chrono"] = chrono
    kw.update(extra or {})
    out_w = 2 * width if cell == "lstm" else width
    layers, made = [], {}
    for t in range(steps):
        share = name if tied else f"{name}:t{t + 1}"
        key = (qx[t], cx[t], share)
        if key not in made:
            made[key] = kind(out_w, q_x=qx[t], c_x=cx[t], weights=weights,
                             input_width=input_width, share=share, tied=tied, **kw)
        layers.append(made[key])
    return Network(width, tuple(layers))


#: residual branch scalings of :func:`transformer`
SCALINGS = ("fixed", "inv_sqrt_depth", "gpt2", "deepnet")
#: layer-norm placements of :func:`transformer`
LN_PLACEMENTS = ("pre", "post")


def transformer(depth: int, width: int = 256, heads: int = 4, tokens: int = 8, *, ln: str = "pre",
                ffn_ratio: float = 4.0, activation="gelu", logit_scale: str = "sqrt",
                causal: bool = False, temperature: float = 1.0, sigma_q2: float = 1.0,
                sigma_k2: float = 1.0, sigma_v2: float = 1.0, sigma_o2: float = 1.0,
                sigma_ffn2: float = 2.0, sigma_ffn_out2: float = 1.0, scaling: str = "fixed",
                alpha: float = 1.0, beta: float = 1.0, final_ln: bool = True,
                logit_samples: int = 2048) -> Network:
    """A stack of ``depth`` transformer blocks over ``tokens`` tokens at constant ``width``
    (:class:`~signalprop.layers.attention.Attention` of ``heads`` heads, then the feed-forward
    sublayer ``Dense(ffn_ratio * width, activation, sigma_ffn2) -> Dense(width, linear,
    sigma_ffn_out2)``, :func:`~signalprop.layers.attention.feed_forward`), no biases.

    ``ln="pre"`` (Xiong et al. 2020, Fig. 1(b)): ``x + b Attn(LN x)``, ``x + b FFN(LN x)`` per block
    and a final LN when ``final_ln`` (2 depth + 1 layers); ``ln="post"`` (Vaswani et al. 2017):
    ``LN(a x + b Attn x)``, ``LN(a x + b FFN x)`` (4 depth layers: each residual sum, then its LN).
    ``scaling``: ``"fixed"`` (``a = alpha``, ``b = beta``); ``"inv_sqrt_depth"`` (``b = beta /
    sqrt(depth)``, Noci et al. 2022); ``"gpt2"`` (the output projections' variances ``sigma_o2``
    and ``sigma_ffn_out2`` times ``1 / (2 depth)``, Radford et al. 2019, sec. 2.3); ``"deepnet"``
    (post-LN only: ``a = (2 depth)^(1/4)`` and the value, output and feed-forward variances times
    ``beta_D^2 = (8 depth)^(-1/2)``, Wang et al. 2022, :func:`deepnet_constants`).
    The other arguments are those of :class:`~signalprop.layers.attention.Attention`."""
    depth = check_int("depth", depth, 1, MAX_DEPTH // 4)
    width = check_int("width", width, 2, MAX_WIDTH)
    if not isinstance(ln, str) or ln not in LN_PLACEMENTS:
        raise ValueError(f"ln (the layer-norm placement) must be 'pre' or 'post', got "
                         f"{short_repr(ln)}")
    if not isinstance(scaling, str) or scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {', '.join(SCALINGS)}, got {short_repr(scaling)}")
    if scaling == "deepnet" and ln != "post":
        raise ValueError("scaling='deepnet' is DeepNet's post-LN rule; use ln='post'")
    if not isinstance(final_ln, (bool, np.bool_)):
        raise TypeError(f"final_ln must be True or False, got {short_repr(final_ln)}")
    a, b = nonnegative_scalar("alpha", alpha), nonnegative_scalar("beta", beta)
    ffn_ratio = positive_scalar("ffn_ratio", ffn_ratio)
    if not 1 <= ffn_ratio * width <= MAX_WIDTH or ffn_ratio * width != int(ffn_ratio * width):
        raise ValueError(f"ffn_ratio * width (the feed-forward width) must be an integer in [1, "
                         f"{MAX_WIDTH}], got ffn_ratio = {ffn_ratio:g} at width {width}")
    v2, o2, f2, fo2 = sigma_v2, sigma_o2, sigma_ffn2, sigma_ffn_out2
    if scaling == "inv_sqrt_depth":
        b = b / math.sqrt(depth)
    elif scaling == "gpt2":
        o2, fo2 = o2 / (2 * depth), fo2 / (2 * depth)
    elif scaling == "deepnet":
        a, bd = deepnet_constants(depth)
        v2, o2, f2, fo2 = (s * bd * bd for s in (v2, o2, f2, fo2))
    attn = Attention(width, heads, tokens, sigma_q2, sigma_k2, v2, o2, logit_scale, causal,
                     temperature, logit_samples=logit_samples)
    ffn = feed_forward(width, ffn_ratio, activation, f2, fo2)
    norm = LayerNorm(width)
    if ln == "pre":
        block = (Residual((norm, attn), a, b), Residual((norm,) + ffn, a, b))
        layers = block * depth + ((norm,) if final_ln else ())
    else:
        layers = (Residual((attn,), a, b), norm, Residual(ffn, a, b), norm) * depth
    return Network(width, layers)
