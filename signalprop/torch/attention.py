"""``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder`` as
signalprop's transformer layers (:class:`~signalprop.layers.attention.Attention`,
:func:`signalprop.architectures.transformer`): the checks, the variances, and the forward pass
that exposes the sublayers' outputs :func:`~signalprop.torch.measure` records.

Tokens. signalprop's Attention couples the T tokens of *one* sequence as its k = T inputs; the
bridge takes the sequence as ``(T, d)`` (unbatched, as both modules accept it) or as a batch of
one, ``(1, T, d)`` with ``batch_first=True`` and ``(T, 1, d)`` without. ``q`` is token 0's second
moment, ``c`` the correlation of tokens 0 and 1, ``kernel_corr`` all T x T correlations and ``g``
sums the gradient over the T tokens for the loss ``<v, t^L_0>`` on token 0.

``nn.MultiheadAttention(d, H)`` (self-attention, ``attn(x, x, x)``; Vaswani et al. 2017 eqs.
1-2, logits ``q.k / sqrt(d / H)``) is ``Attention(d, H, T, sigma_q2, sigma_k2, sigma_v2,
sigma_o2, logit_scale="sqrt")``. ``variances="init"``: ``MultiheadAttention._reset_parameters``
draws the packed ``in_proj_weight`` (3d x d) by ``xavier_uniform_``: ``U(-a, a)``, ``a =
sqrt(6 / (d + 3d))`` (fan_in d, fan_out 3d: the packed matrix, not d x d blocks), variance
``a^2 / 3 = 1 / (2d)``, so ``sigma_q2 = sigma_k2 = sigma_v2 = 1/2``; ``out_proj`` keeps
``nn.Linear``'s default ``U(-1/sqrt(d), 1/sqrt(d))``, ``sigma_o2 = 1/3``; ``in_proj_bias`` and
``out_proj.bias`` are set to 0. ``"empirical"``: ``d mean(W^2)`` of each block of
``in_proj_weight`` (rows q, k, v) and of ``out_proj.weight``; the biases must then be zero
(signalprop's Attention has none: a nonzero bias is refused, naming it). The weights are uniform
in PyTorch and Gaussian in signalprop's sampler: the infinite-width theory sees their variances
only (every logit and value is a sum over the fan-in).

``nn.TransformerEncoderLayer(d, H, dim_feedforward=F, activation, norm_first)`` (PyTorch's
forward: ``x + SA(LN1 x)``, ``x + FF(LN2 x)`` with ``norm_first=True`` (pre-LN, Xiong et al.
2020); ``LN1(x + SA x)``, ``LN2(x + FF x)`` without (post-LN, Vaswani et al. 2017); ``FF(y) =
linear2(act(linear1 y))``) is, pre-LN, ``Residual((LayerNorm, Attention))``,
``Residual((LayerNorm, Dense(F, act, ...), Dense(d, linear, ...)))`` and, post-LN,
``Residual((Attention,))``, ``LayerNorm``, ``Residual(FF)``, ``LayerNorm``: the blocks of
:func:`~signalprop.architectures.transformer` with ``alpha = beta = 1``, except that PyTorch's
feed-forward Linear layers have biases (``Dense`` with ``sigma_b2 = 1/(3 fan_in)`` at PyTorch's
init, :mod:`signalprop.torch.mapping`'s Linear rule). ``activation``: ``"relu"``, ``"gelu"`` or an
activation the bridge maps. Dropout must be 0 or the module in eval mode. ``nn.TransformerEncoder``
is its layers in turn and its final ``norm`` (a LayerNorm) when it has one.

Not mapped (a ValueError naming the module and what): ``kdim``/``vdim`` other than ``d``,
``add_bias_kv``, ``add_zero_attn``, masks (a module called with them), cross-attention
(``attn(x, y, y)``), nonzero attention biases.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from ..layers.attention import Attention

__all__ = ["SEQUENCE_MODULES", "is_sequence_module", "mha_attention", "check_encoder",
           "encoder_parts", "sublayer_count", "sequence_forward", "token_layout", "rows"]

#: the torch modules this module maps
SEQUENCE_MODULES = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder)
ROOT = "model"


def _where(path: str) -> str:
    return ROOT if not path else f"{ROOT}.{path}"


def _refuse(path: str, what: str, why: str) -> ValueError:
    return ValueError(f"{_where(path)} ({what}) {why}")


def is_sequence_module(mod) -> bool:
    """Whether ``mod`` is exactly one of :data:`SEQUENCE_MODULES`."""
    return type(mod) in SEQUENCE_MODULES


def _dropout(mod: nn.Module, p: float, path: str, what: str) -> None:
    if p > 0 and mod.training:
        raise _refuse(path, what, f"has dropout={p:g} in training mode; the bridge maps it with "
                      "dropout 0 or in eval mode (model.eval()), where dropout is the identity")


def _block_variance(W: torch.Tensor) -> float:
    """``fan_in mean(W^2)`` of a (out, fan_in) block."""
    W = W.detach().to(torch.float64)
    return float(W.shape[1] * torch.mean(W * W))


def mha_attention(mod: nn.MultiheadAttention, path: str, tokens: int, empirical: bool) -> Attention:
    """The :class:`Attention` of a self-attention ``nn.MultiheadAttention`` over ``tokens`` tokens
    (module docstring); ``empirical``: variances from the current weights, else PyTorch's init."""
    what = "MultiheadAttention"
    if type(mod) is not nn.MultiheadAttention:
        raise _refuse(path, type(mod).__name__, "is a subclass of MultiheadAttention; the bridge "
                      "maps the torch module itself")
    if not mod._qkv_same_embed_dim:
        raise _refuse(path, what, f"has kdim={mod.kdim}, vdim={mod.vdim} other than "
                      f"embed_dim={mod.embed_dim}; the bridge maps self-attention")
    if mod.bias_k is not None or mod.bias_v is not None:
        raise _refuse(path, what, "has add_bias_kv=True (a learned extra key and value); "
                      "signalprop's Attention has no bias token")
    if mod.add_zero_attn:
        raise _refuse(path, what, "has add_zero_attn=True; signalprop's Attention has no zero "
                      "token")
    _dropout(mod, float(mod.dropout), path, what)
    d, heads = int(mod.embed_dim), int(mod.num_heads)
    if not empirical:
        sq = sk = sv = 0.5
        so = 1.0 / 3.0
    else:
        W = mod.in_proj_weight
        sq, sk, sv = (_block_variance(W[j * d:(j + 1) * d]) for j in range(3))
        so = _block_variance(mod.out_proj.weight)
        for name, b in (("in_proj_bias", mod.in_proj_bias), ("out_proj.bias", mod.out_proj.bias)):
            if b is not None and bool(torch.any(b.detach() != 0)):
                raise _refuse(path, what, f"has a nonzero {name}; signalprop's Attention has no "
                              "biases (PyTorch initialises them to 0: map before training, or "
                              "set them to 0)")
        if not all(math.isfinite(v) for v in (sq, sk, sv, so)) or not (sv > 0 and so > 0):
            raise _refuse(path, what, f"has weight variances (q, k, v, o) = ({sq:g}, {sk:g}, "
                          f"{sv:g}, {so:g}); signalprop needs finite ones with v, o > 0")
    try:
        return Attention(d, heads, tokens, sq, sk, sv, so, "sqrt", False, 1.0)
    except ValueError as err:
        raise _refuse(path, what, f"cannot be mapped: {err}") from None


def check_encoder(mod: nn.TransformerEncoderLayer, path: str) -> None:
    """A ValueError naming what of a ``TransformerEncoderLayer`` the bridge does not map."""
    what = "TransformerEncoderLayer"
    if type(mod) is not nn.TransformerEncoderLayer:
        raise _refuse(path, type(mod).__name__, "is a subclass of TransformerEncoderLayer; the "
                      "bridge maps the torch module itself")
    for name in ("dropout", "dropout1", "dropout2"):
        sub = getattr(mod, name, None)
        if sub is not None:
            _dropout(mod, float(sub.p), path, what)


def encoder_parts(mod: nn.TransformerEncoderLayer) -> tuple:
    """``(norm_first, activation, norm1, norm2)`` of an encoder layer (its ``activation`` as
    stored: a function such as ``F.relu`` or a module)."""
    return bool(mod.norm_first), mod.activation, mod.norm1, mod.norm2


def sublayer_count(mod: nn.Module) -> int:
    """Layers of the mapped network a sequence module gives: MultiheadAttention 1, an encoder
    layer 2 (pre-LN) or 4 (post-LN), an encoder the sum over its layers (+ 1 for its norm)."""
    if type(mod) is nn.MultiheadAttention:
        return 1
    if type(mod) is nn.TransformerEncoderLayer:
        return 2 if mod.norm_first else 4
    return sum(sublayer_count(m) for m in mod.layers) + (mod.norm is not None)


def _self_attention(mha: nn.MultiheadAttention, y: torch.Tensor) -> torch.Tensor:
    return mha(y, y, y, need_weights=False)[0]


def _encoder_layer_forward(mod: nn.TransformerEncoderLayer, x: torch.Tensor, out: list) -> torch.Tensor:
    """PyTorch's encoder-layer update (module docstring) without dropout (checked to be the
    identity), appending every sublayer output of the mapped network to ``out``."""
    def ff(y):
        return mod.linear2(mod.activation(mod.linear1(y)))
    if mod.norm_first:
        x = x + _self_attention(mod.self_attn, mod.norm1(x))
        out.append(x)
        x = x + ff(mod.norm2(x))
        out.append(x)
        return x
    s = x + _self_attention(mod.self_attn, x)
    out.append(s)
    x = mod.norm1(s)
    out.append(x)
    s = x + ff(x)
    out.append(s)
    x = mod.norm2(s)
    out.append(x)
    return x


def sequence_forward(mod: nn.Module, x: torch.Tensor, check: bool = False) -> list:
    """The outputs of the mapped layers of a sequence module on ``x`` (as the module takes it),
    in order (:func:`sublayer_count` of them); the last is the module's output. ``check``:
    compare it with the module's own forward (a ValueError if they differ beyond rounding)."""
    out: list = []
    if type(mod) is nn.MultiheadAttention:
        out.append(_self_attention(mod, x))
    elif type(mod) is nn.TransformerEncoderLayer:
        _encoder_layer_forward(mod, x, out)
    else:
        y = x
        for layer in mod.layers:
            y = _encoder_layer_forward(layer, y, out)
        if mod.norm is not None:
            out.append(mod.norm(y))
    if check:
        with torch.no_grad():
            ref = _self_attention(mod, x) if type(mod) is nn.MultiheadAttention else mod(x)
        tol = 1e-4 if x.dtype == torch.float32 else 1e-10
        scale = float(torch.max(torch.abs(ref))) + 1.0
        if float(torch.max(torch.abs(ref - out[-1].detach()))) > tol * scale:
            raise ValueError(f"{ROOT} ({type(mod).__name__}): its forward differs from the update "
                             "the bridge maps (docs/torch.md); the bridge cannot measure it")
    return out


def token_layout(module: nn.Module, shape: tuple) -> Optional[str]:
    """``None`` for a module without sequence modules; else how ``shape`` holds the one sequence:
    ``"unbatched"`` (T, d), ``"batch_first"`` (1, T, d) or ``"seq_first"`` (T, 1, d) (a ValueError
    for any other shape, or for sequence modules that disagree on ``batch_first``)."""
    seq = [m for m in module.modules() if is_sequence_module(m)]
    if not seq:
        return None
    if len(shape) == 2:
        return "unbatched"
    flags = set()
    for m in seq:
        if type(m) is nn.MultiheadAttention:
            flags.add(bool(m.batch_first))
        elif type(m) is nn.TransformerEncoderLayer:
            flags.add(bool(m.self_attn.batch_first))
    if len(flags) > 1:
        raise ValueError(f"{ROOT}: its attention modules disagree on batch_first; the bridge "
                         "needs one token layout")
    first = flags.pop() if flags else False
    if len(shape) != 3 or shape[0 if first else 1] != 1:
        want = "(1, T, d)" if first else "(T, 1, d)"
        raise ValueError(f"example_input of a model with attention must be one sequence of T "
                         f"tokens: shape (T, d) or the batch of one {want} (batch_first="
                         f"{first}); got {tuple(shape)} (signalprop's Attention couples the T "
                         "tokens of one sequence as its inputs)")
    return "batch_first" if first else "seq_first"


def rows(v: torch.Tensor, layout: Optional[str]) -> torch.Tensor:
    """The (T, d) token rows of a value in ``layout`` (:func:`token_layout`; None: as is)."""
    if layout == "batch_first":
        return v[0]
    if layout == "seq_first":
        return v[:, 0]
    return v
