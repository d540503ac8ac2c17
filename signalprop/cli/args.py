"""Argument parsing: the shared options of the commands and the one function that builds a
:class:`~signalprop.network.Network` from them (:func:`network_from`, used by every command that
takes a network)."""

from __future__ import annotations

import argparse
import math
from typing import Optional

from ..activations import Activation, activation, activations
from ..architectures import mlp, resnet, rnn
from ..layers.gated import Gate
from ..network import MAX_DEPTH, INITS, Network, has_capability, init_sigma_w2
from .._validate import check_int
from .registry import FP_WARNING, Parser, UsageError  # noqa: F401 - re-exported (they lived here)

__all__ = ["UsageError", "Parser", "FP_WARNING", "add_activation_options", "activation_from",
           "add_weight_options", "sigma_w2_from", "add_network_options", "network_from",
           "weights_name", "sigma_w2_out", "is_plain", "add_quiet_option", "progress_from",
           "add_save_options"]


def add_activation_options(p: argparse.ArgumentParser, default: str = "tanh") -> None:
    """``--activation`` (a built-in name or a sympy expression in x), ``--slope``, ``--alpha``."""
    p.add_argument("--activation", default=default, metavar="NAME|EXPR",
                   help=f"built-in name ({', '.join(activations())}) or a sympy expression in x, "
                        f"e.g. 'x*tanh(x)' (default: {default})")
    p.add_argument("--slope", type=float, default=None, help="leaky_relu slope (default 0.01)")
    p.add_argument("--alpha", type=float, default=None, help="elu alpha (default 1)")


def activation_from(args: argparse.Namespace) -> Activation:
    """The activation named by ``--activation`` with its ``--slope`` / ``--alpha``."""
    params = {k: getattr(args, k) for k in ("slope", "alpha") if getattr(args, k) is not None}
    return activation(args.activation, **params)


def add_weight_options(p: argparse.ArgumentParser, *, sigma_w2: Optional[float] = 1.0,
                       sigma_b2: float = 0.0, init: bool = True, many_sigma_b2: bool = False) -> None:
    """``--sigma-w2``, ``--sigma-b2`` (several values if ``many_sigma_b2``) and ``--init``."""
    if sigma_w2 is not None or init:
        p.add_argument("--sigma-w2", type=float, default=None, metavar="S",
                       help=f"weight variance sigma_w^2 (times 1/fan_in) (default: {sigma_w2})")
        p.set_defaults(default_sigma_w2=sigma_w2)
    if many_sigma_b2:
        p.add_argument("--sigma-b2", type=float, nargs="+", default=[sigma_b2], metavar="B",
                       help=f"one or more bias variances sigma_b^2 (default: {sigma_b2})")
    else:
        p.add_argument("--sigma-b2", type=float, default=sigma_b2, metavar="B",
                       help=f"bias variance sigma_b^2 (default: {sigma_b2})")
    if init:
        p.add_argument("--init", default=None, choices=INITS,
                       help="named initialisation setting sigma_w^2 (instead of --sigma-w2)")


def sigma_w2_from(args: argparse.Namespace, fan_in: int = 1, fan_out: int = 1) -> float:
    """``--sigma-w2``, or the value ``--init`` implies for the given fans, or the default."""
    init = getattr(args, "init", None)
    if init is not None:
        if args.sigma_w2 is not None:
            raise ValueError("give either --sigma-w2 or --init, not both")
        return init_sigma_w2(init, fan_in, fan_out)
    return args.default_sigma_w2 if args.sigma_w2 is None else args.sigma_w2


def add_network_options(p: argparse.ArgumentParser, *, depth: int = 50, width: int = 1000,
                        sigma_w2: float = 1.0, sigma_b2: float = 0.0, activation_name: str = "tanh",
                        c0: Optional[float] = None) -> None:
    """Everything :func:`mlp`, :func:`resnet` and :func:`predict` take: activation, weights, depth,
    width, architecture (residual blocks, normalisation), q0, c0."""
    add_activation_options(p, activation_name)
    add_weight_options(p, sigma_w2=sigma_w2, sigma_b2=sigma_b2)
    p.add_argument("--depth", type=int, default=depth, metavar="L",
                   help=f"number of layers (residual blocks with --residual) L (default: {depth})")
    p.add_argument("--width", type=int, default=width, metavar="N",
                   help=f"width of every layer N_0..N_L (default: {width})")
    p.add_argument("--residual", action="store_true",
                   help="residual blocks x + beta F(x) (signalprop.resnet) instead of plain layers")
    p.add_argument("--branch-depth", type=int, default=2, metavar="K",
                   help="Dense layers per residual branch, the last one linear when K >= 2 (default: 2)")
    p.add_argument("--branch-scale", default="1", metavar="BETA",
                   help="residual branch scale beta: a number >= 0 or '1/sqrt(L)' (default: 1)")
    p.add_argument("--norm", default=None, choices=("layer", "rms", "batch"),
                   help="normalisation: after every layer (plain) or at the head of every "
                        "residual branch (pre-norm); 'batch': phi(BN(W x)) layers over a batch of "
                        "--batch-size inputs (plain networks) (default: none)")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="batch size B >= 4 for --norm batch")
    p.add_argument("--q0", type=float, default=1.0, help="input second moment ||x||^2/N_0 (default: 1)")
    p.add_argument("--c0", type=float, default=c0,
                   help="correlation of a second input, in [-1, 1] (default: "
                        + ("one input, no c" if c0 is None else str(c0)) + ")")


def _branch_scale(text: str, depth: int) -> float:
    t = text.replace(" ", "").lower()
    if t in ("1/sqrt(l)", "l^-1/2", "l**-0.5"):
        return 1.0 / math.sqrt(check_int("depth", depth, 1, MAX_DEPTH))
    try:
        return float(t)
    except ValueError:
        raise ValueError(f"branch-scale must be a number >= 0 or '1/sqrt(L)', got {text!r}") from None


def network_from(args: argparse.Namespace, depth: Optional[int] = None) -> Network:
    """The :class:`Network` the command's options describe: activation and weight options, and
    whichever of ``--width`` / ``--widths`` (per layer), ``--weights``, ``--residual`` (with
    ``--branch-depth``, ``--branch-scale``), ``--norm`` and ``--batch-size`` the command has.
    ``depth`` replaces ``--depth`` (``clip --depths`` sweeps it). ``--init orthogonal`` implies
    orthogonal weights when ``--weights`` is not given."""
    act = activation_from(args)
    if getattr(args, "cell", None) is not None:
        return _rnn_from(args, act)
    depth = args.depth if depth is None else depth
    width = getattr(args, "widths", None) or args.width
    weights = getattr(args, "weights", None)
    if args.init is not None:
        if args.sigma_w2 is not None:
            raise ValueError("give either --sigma-w2 or --init, not both")
        kw = dict(init=args.init, sigma_b2=args.sigma_b2, weights=weights)
    else:
        kw = dict(sigma_w2=sigma_w2_from(args), sigma_b2=args.sigma_b2, weights=weights)
    norm = getattr(args, "norm", None)
    batch = getattr(args, "batch_size", None)
    if getattr(args, "residual", False):
        if norm == "batch" or batch is not None:
            raise ValueError("--norm batch applies to plain networks, not --residual")
        return resnet(depth, width, act, branch_depth=args.branch_depth,
                      beta=_branch_scale(args.branch_scale, depth), norm=norm, **kw)
    if getattr(args, "branch_scale", "1") != "1" or getattr(args, "branch_depth", 2) != 2:
        raise ValueError("--branch-scale and --branch-depth need --residual")
    return mlp(depth, width, act, norm=norm, batch_size=batch, **kw)


#: the memory gate of each gated cell (``--gate-bias``, ``--gate-sigma-b2``): the one whose value
#: multiplies the carried state (minimalRNN u, GRU update z, LSTM forget f)
MEMORY_GATE = {"minimal": "gate", "gru": "update", "lstm": "forget"}


def _rnn_from(args: argparse.Namespace, act: Activation) -> Network:
    """The recurrent network of ``signalprop rnn`` (:func:`signalprop.architectures.rnn`):
    ``--cell``, ``--steps``, ``--width``, ``--sigma-w2/-u2/-b2``, ``--weights``, ``--q-x``,
    ``--c-x``, ``--untied``; for gated cells the memory gate's bias mean and variance
    (``--gate-bias``, ``--gate-sigma-b2``), every other gate ``Gate(sigma_w2, sigma_u2, 0)``."""
    sw2 = args.default_sigma_w2 if args.sigma_w2 is None else args.sigma_w2
    gates = None
    if args.cell in MEMORY_GATE:
        if args.sigma_b2 != 0.0:
            raise ValueError(f"--sigma-b2 is the vanilla cell's bias variance; for --cell "
                             f"{args.cell} use --gate-sigma-b2 (the memory gate's)")
        if args.activation != "tanh" or args.slope is not None or args.alpha is not None:
            raise ValueError(f"--activation is the vanilla cell's; the gated cell {args.cell!r} "
                             f"uses sigmoid gates and tanh")
        mu = args.gate_bias if args.gate_bias is not None else (1.0 if args.cell == "lstm" else 0.0)
        gates = {MEMORY_GATE[args.cell]: Gate(sw2, args.sigma_u2, mu, args.gate_sigma_b2)}
    elif args.gate_bias is not None or args.gate_sigma_b2 != 0.0:
        raise ValueError("--gate-bias and --gate-sigma-b2 apply to the gated cells (--cell "
                         "minimal, gru or lstm), not to the vanilla rnn")
    return rnn(args.cell, args.steps, args.width, act, sigma_w2=sw2, sigma_u2=args.sigma_u2,
               sigma_b2=args.sigma_b2, weights=args.weights, q_x=args.q_x, c_x=args.c_x,
               gates=gates, tied=not args.untied)


def weights_name(args: argparse.Namespace) -> str:
    """The weight distribution ``--weights`` / ``--init`` select (for the text output)."""
    return args.weights or ("orthogonal" if args.init == "orthogonal" else "gaussian")


def sigma_w2_out(args: argparse.Namespace, net: Network):
    """sigma_w^2 for the JSON output: the value, or that of the first layer under --init."""
    if args.init is None:
        return sigma_w2_from(args)
    first = net.layers[0]
    while not hasattr(first, "sigma_w2"):
        first = first.branch[0] if hasattr(first, "branch") else None
        if first is None:
            return args.init
    return first.sigma_w2


def is_plain(net: Network) -> bool:
    """True for a fully connected network of Dense layers only (where fixed points apply)."""
    return all(has_capability(la, "fixed_point") for la in net.layers)


def add_quiet_option(p: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bar (one is drawn on stderr while it is a terminal)."""
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (default: one on stderr when it is a terminal; "
                        "SIGNALPROP_PROGRESS=0 turns it off everywhere)")


def progress_from(args: argparse.Namespace) -> Optional[bool]:
    """The ``progress`` argument of the API for ``--quiet``: False, else None (auto)."""
    return False if getattr(args, "quiet", False) else None


def add_save_options(p: argparse.ArgumentParser) -> None:
    """``--csv FILE`` (the per-layer table) and ``--plot FILE`` (q, c, log g against layer)."""
    p.add_argument("--csv", default=None, metavar="FILE",
                   help="also write the per-layer table to FILE (CSV: layer, q, log_q, c, log_g, "
                        "log_G and the standard errors present)")
    p.add_argument("--plot", default=None, metavar="FILE",
                   help="also save a figure of q, c and log g against layer to FILE (.png, .pdf "
                        "or .svg)")
