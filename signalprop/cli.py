"""The ``signalprop`` command line: parse, call the public API, print.

Every command prints a readable table, or with ``--json`` one JSON object whose keys are those of
CONVENTIONS.md (scalars ``q_star, c_star, chi_1, chi_c, xi_q, xi_c, xi_grad, regime``; profiles
``layers, q, c, log_g, log_G``; inf/nan as the strings "inf"/"nan"). With ``--json``, commands
that can write files (``phase``, ``demo``) write them only when ``--out`` is given.

Bad input is one line on stderr, ``signalprop: error: ...``, and exit status 2, never a traceback
or a Python warning: a malformed command line; a ValueError, TypeError, OverflowError or
MemoryError from the API (work that cannot fit in memory is refused up front); an unwritable
``--out`` (OSError); and a floating-point failure (numpy's "overflow/invalid value/divide by zero
encountered in ...", raised as an error while the command runs), which means the arguments are
outside what the command can evaluate. Warnings the API issues on purpose (e.g. ``critical``'s
notes) are printed as ``signalprop: warning: ...`` lines after a successful run. Any other
exception is a bug and shows its traceback.

Adding a command
----------------
Write ``_add_<name>(parser)`` (its options; reuse :func:`add_activation_options`,
:func:`add_network_options`, ...) and ``_run_<name>(args) -> dict`` (calls the API, prints the
text output unless ``args.json``, and returns the JSON-able result), then add one line to
:data:`COMMANDS`. ``--json`` is added to every command, and printing the returned dict is done by
:func:`main`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from . import __version__
from .activations import Activation, activation, activations, normalising_constants
from .meanfield import critical_sigma_w2, fixed_point, phase_diagram, predict
from .architectures import mlp, resnet
from .layers.dense import Dense
from .network import MAX_DEPTH, Network, has_capability, init_sigma_w2, INITS
from ._validate import check_int, check_memory
from .results import to_jsonable

__all__ = ["main", "COMMANDS", "Command", "build_parser"]

PROG = "signalprop"
#: default file names of ``phase`` (a prefix) and ``demo`` (without --json, or with --out).
PHASE_OUT = "signalprop-phase"
DEMO_OUT = "signalprop-demo.png"
#: most worker processes ``validate --jobs`` starts.
MAX_JOBS = 256


class UsageError(Exception):
    """A malformed command line (raised instead of argparse's print-usage-and-exit)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block; main() turns it into exit 2
        raise UsageError(message)


# ---------------------------------------------------------------------------------------------
# shared options


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


def network_from(args: argparse.Namespace) -> Network:
    """The :class:`Network` described by :func:`add_network_options`' options (and ``--weights``
    where the command has it)."""
    act = activation_from(args)
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
        return resnet(args.depth, args.width, act, branch_depth=args.branch_depth,
                      beta=_branch_scale(args.branch_scale, args.depth), norm=norm, **kw)
    if getattr(args, "branch_scale", "1") != "1" or getattr(args, "branch_depth", 2) != 2:
        raise ValueError("--branch-scale and --branch-depth need --residual")
    return mlp(args.depth, args.width, act, norm=norm, batch_size=batch, **kw)


def _sigma_w2_out(args: argparse.Namespace, net: Network):
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


def describe(args: argparse.Namespace, net: Network) -> str:
    """One line naming the network the options built."""
    sw2 = sigma_w2_from(args) if args.init is None else f"{args.init} init"
    text = f"{args.activation}, sigma_w2={sw2 if isinstance(sw2, str) else format(sw2, 'g')}, " \
           f"sigma_b2={args.sigma_b2:g}"
    if getattr(args, "residual", False):
        text += f", residual (branch depth {args.branch_depth}, beta={args.branch_scale})"
    if getattr(args, "norm", None):
        text += f", {args.norm} norm" + (f" (B = {args.batch_size})" if args.norm == "batch" else "")
    return text + f", {net.depth} layers, width={args.width}, q0={args.q0:g}" + \
        ("" if args.c0 is None else f", c0={args.c0:g}")


# ---------------------------------------------------------------------------------------------
# printing


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.6g}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence], out=None) -> None:
    """Right-aligned columns under ``headers``."""
    out = out or sys.stdout
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)), file=out)
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)), file=out)


_SCALARS = ("q_star", "c_star", "chi_1", "chi_c", "xi_q", "xi_c", "xi_grad", "regime")


def _print_fixed_point(fp) -> None:
    for key in _SCALARS:
        print(f"  {key:<8} {_fmt(getattr(fp, key))}")
    if fp.note:
        print(f"  note: {fp.note}")


def _fixed_point_dict(fp) -> dict:
    d = fp.to_dict()
    if not d.get("note"):
        d.pop("note", None)
    return d


# ---------------------------------------------------------------------------------------------
# fixed-point


def _add_fixed_point(p: argparse.ArgumentParser) -> None:
    add_activation_options(p)
    add_weight_options(p, sigma_w2=1.0, sigma_b2=0.0)
    p.add_argument("--q0", type=float, default=1.0,
                   help="start of the length map; q* is the stable fixed point reached from it")


def _run_fixed_point(args: argparse.Namespace) -> dict:
    act = activation_from(args)
    fp = fixed_point(act, sigma_w2_from(args), args.sigma_b2, q0=args.q0)
    if not args.json:
        print(f"fixed point of {args.activation}, sigma_w2={fp.sigma_w2:g}, sigma_b2={fp.sigma_b2:g}")
        _print_fixed_point(fp)
    return {**_fixed_point_dict(fp), "activation": args.activation}


# ---------------------------------------------------------------------------------------------
# critical


def _add_critical(p: argparse.ArgumentParser) -> None:
    add_activation_options(p)
    add_weight_options(p, sigma_w2=None, sigma_b2=0.05, init=False, many_sigma_b2=True)


def _run_critical(args: argparse.Namespace) -> dict:
    act = activation_from(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        warnings.filterwarnings("error", message=FP_WARNING, category=RuntimeWarning)
        crit = np.atleast_1d(critical_sigma_w2(act, args.sigma_b2))
    notes = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    sb2 = np.asarray(args.sigma_b2, float)
    if not args.json:
        print(f"edge of chaos (chi_1 = 1) of {args.activation}")
        print_table(["sigma_b2", "sigma_w2"], list(zip(sb2, crit)))
        for n in notes:
            print(f"note: {n}")
    out = {"activation": args.activation, "sigma_b2": sb2, "critical_sigma_w2": crit}
    if notes:
        out["note"] = "; ".join(notes)
    return out


# ---------------------------------------------------------------------------------------------
# predict and demo


def _add_predict(p: argparse.ArgumentParser) -> None:
    add_network_options(p)
    p.add_argument("--every", type=int, default=0, metavar="K",
                   help="print every K-th layer (text only; default: about 50 rows)")


def _profile_rows(prof, every: int) -> list:
    L = prof.depth
    if every <= 0:
        every = max(1, math.ceil(L / 50))
    idx = sorted(set(range(0, L, every)) | {L - 1})
    rows = []
    for i in idx:
        row = [int(prof.layers[i]), prof.q[i]]
        if prof.c is not None:
            row.append(prof.c[i])
        rows += [row + [prof.log_g[i], prof.log_G[i]]]
    return rows


def _predict(args: argparse.Namespace, title: str) -> tuple[dict, object]:
    net = network_from(args)
    prof = predict(net, q0=args.q0, c0=args.c0)
    fp = None
    if is_plain(net):
        layer = net.layers[0]
        # the stable fixed point the network's own sequence q^1, q^2, ... approaches (from q^1)
        fp = fixed_point(layer.activation, layer.sigma_w2, layer.sigma_b2,
                         q0=prof.q[0] if 0 < prof.q[0] < math.inf else 1.0)
    if not args.json:
        print(f"{title}: {describe(args, net)}")
        if fp is not None:
            _print_fixed_point(fp)
        headers = ["layer", "q"] + (["c"] if prof.c is not None else []) + ["log_g", "log_G"]
        print_table(headers, _profile_rows(prof, getattr(args, "every", 0)))
        if prof.meta.get("note"):
            print(f"note: {prof.meta['note']}")
    out = {"activation": args.activation, "sigma_w2": _sigma_w2_out(args, net), "sigma_b2": args.sigma_b2,
           "depth": net.depth, "width": args.width, "q0": args.q0, "c0": args.c0,
           "residual": bool(getattr(args, "residual", False)), "norm": getattr(args, "norm", None)}
    if fp is not None:
        out.update({k: getattr(fp, k) for k in _SCALARS})
    d = prof.to_dict()
    out.update({k: d[k] for k in ("layers", "q", "log_q", "c", "log_g", "log_G") if k in d})
    return out, prof


def _run_predict(args: argparse.Namespace) -> dict:
    return _predict(args, "mean-field profile")[0]


def _add_demo(p: argparse.ArgumentParser) -> None:
    add_network_options(p, depth=50, width=1000, sigma_w2=1.5, sigma_b2=0.05, c0=0.5)
    p.add_argument("--out", default=None,
                   help=f"figure of q^l, c^l and log g^l against layer (default: {DEMO_OUT}; "
                        "with --json, no figure unless --out is given)")


def _run_demo(args: argparse.Namespace) -> dict:
    args.every = 0
    out, prof = _predict(args, "signalprop demo")
    if args.json and args.out is None:
        return out
    from .plot import plot_profile
    fig, axes = _figure(3, width=3.3, height=2.6)
    title = f"{args.activation}, $\\sigma_w^2$={out['sigma_w2']:g}, $\\sigma_b^2$={out['sigma_b2']:g}"
    for ax, field in zip(axes, ("q", "c", "log_g")):
        if field == "c" and prof.c is None:
            ax.set_visible(False)
            continue
        plot_profile(prof, ax, field=field, color="black")
        ax.set_title(title if field == "q" else "", loc="left")
    path = _save(fig, args.out or DEMO_OUT)
    if not args.json:
        print(f"wrote {path}")
    out["figure"] = str(path)
    return out


def _figure(n: int, width: float, height: float):
    """A row of ``n`` axes on a Figure rendered by Agg (no pyplot, no global backend)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from .plot import STYLE
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width * n, height), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, n)
    return fig, np.atleast_1d(axes)


def _save(fig, path) -> Path:
    import matplotlib
    from .plot import STYLE
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(STYLE):
        fig.savefig(path)
    return path


# ---------------------------------------------------------------------------------------------
# phase


def _add_phase(p: argparse.ArgumentParser) -> None:
    add_activation_options(p)
    p.add_argument("--sigma-w2-range", type=float, nargs=2, default=[1.0, 4.0], metavar=("LO", "HI"),
                   help="sigma_w^2 grid range (default: 1 4)")
    p.add_argument("--sigma-b2-range", type=float, nargs=2, default=[0.0, 1.0], metavar=("LO", "HI"),
                   help="sigma_b^2 grid range (default: 0 1)")
    p.add_argument("--n", type=int, default=64, help="grid points per axis (default: 64)")
    p.add_argument("--out", default=None, metavar="PREFIX",
                   help="writes PREFIX.<format> (chi_1, q*, xi_c with the edge of chaos), "
                        "PREFIX.csv (the grid) and PREFIX-critical.csv (default: "
                        f"{PHASE_OUT}; with --json, no files unless --out is given)")
    p.add_argument("--format", default="png", choices=("png", "pdf", "svg"),
                   help="figure format (default: png)")


def _grid(name: str, lo: float, hi: float, n: int) -> np.ndarray:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} must be finite, got {lo!r} {hi!r}")
    if not lo <= hi:
        raise ValueError(f"{name} needs LO <= HI, got {lo!r} {hi!r}")
    return np.linspace(lo, hi, n)


def _run_phase(args: argparse.Namespace) -> dict:
    if args.n < 1:
        raise ValueError(f"n must be an integer >= 1, got {args.n}")
    # the five n x n float64 arrays of the result, refused up front when they cannot fit
    check_memory(f"phase --n {args.n} (an {args.n} x {args.n} grid)", 5 * 8.0 * args.n * args.n)
    act = activation_from(args)
    sw = _grid("sigma_w2_range", *args.sigma_w2_range, args.n)
    sb = _grid("sigma_b2_range", *args.sigma_b2_range, args.n)
    pd = phase_diagram(act, sw, sb)
    out = {**pd.to_dict(), "activation": args.activation}
    if args.json and args.out is None:
        return {**out, "files": []}
    prefix = Path(args.out or PHASE_OUT)
    fig_path = Path(f"{prefix}.{args.format}")
    csv_path, crit_path = Path(f"{prefix}.csv"), Path(f"{prefix}-critical.csv")
    if fig_path.parent != Path(""):
        fig_path.parent.mkdir(parents=True, exist_ok=True)
    fields = ("q_star", "chi_1", "c_star", "xi_c")
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sigma_w2", "sigma_b2", *fields])
        for i, b in enumerate(pd.sigma_b2):
            for j, s in enumerate(pd.sigma_w2):
                w.writerow([repr(float(s)), repr(float(b))]
                           + [repr(float(getattr(pd, f)[i, j])) for f in fields])
    with open(crit_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sigma_b2", "critical_sigma_w2"])
        for b, s in zip(pd.sigma_b2, pd.critical_sigma_w2):
            w.writerow([repr(float(b)), repr(float(s))])
    fig_path = _save(plot_phase_figure(pd), fig_path)
    if not args.json:
        chi = pd.chi_1
        print(f"phase diagram of {args.activation} on {len(sb)} x {len(sw)} "
              f"(sigma_b2 x sigma_w2): {int(np.sum(chi < 1))} ordered, "
              f"{int(np.sum(chi > 1))} chaotic cells")
        print_table(["sigma_b2", "critical sigma_w2"],
                    [(b, s) for b, s in zip(pd.sigma_b2, pd.critical_sigma_w2)][:: max(1, len(sb) // 10)])
        print(f"wrote {fig_path}, {csv_path}, {crit_path}")
    return {**out, "files": [str(fig_path), str(csv_path), str(crit_path)]}


def plot_phase_figure(pd):
    """chi_1, q* and xi_c of a :class:`PhaseDiagram` side by side, edge of chaos overlaid."""
    from .plot import plot_phase_diagram
    fig, axes = _figure(3, width=3.4, height=2.8)
    for ax, field in zip(axes, ("chi_1", "q_star", "xi_c")):
        limits = {}
        if field == "xi_c":  # xi_c diverges on the edge of chaos: cap the colour scale at 1000
            xi = np.asarray(pd.xi_c, float)
            xi = xi[np.isfinite(xi) & (xi > 0)]
            if xi.size and xi.max() > 1e3:
                limits = {"vmin": min(float(xi.min()), 1.0), "vmax": 1e3}
        plot_phase_diagram(pd, field, ax=ax, **limits)
    fig.suptitle(r"dashed: the edge of chaos, $\chi_1 = 1$", x=0.01, ha="left", fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------
# activations


#: points where the source article (shared/seed) says phi' is "about 1e-4"; it is not.
ARTICLE_SATURATION = {"sigmoid": 5.0, "tanh": 4.0}
ARTICLE_LEVEL = 1e-4
_PLATEAU_RTOL = 1e-9
_GRID = np.linspace(-40.0, 40.0, 80001)


def dphi_max(act: Activation) -> tuple[float, str]:
    """sup_x phi'(x) on [-40, 40], numerically, and where it is reached: one point refined to
    ~1e-9, several points, or a range where phi' stays within 1e-9 (relative) of its maximum."""
    from scipy.optimize import minimize_scalar

    def d(x):
        with np.errstate(all="ignore"):
            return np.asarray(act.dphi(np.asarray(x, float)), float)

    y = np.nan_to_num(d(_GRID), nan=-np.inf)
    top = float(np.max(y))
    tol = _PLATEAU_RTOL * max(1.0, abs(top))
    near = np.flatnonzero(y >= top - tol)
    groups = np.split(near, np.flatnonzero(np.diff(near) > 1) + 1)
    h = _GRID[1] - _GRID[0]
    locs = []
    for g in groups[:3]:
        i, j = g[0], g[-1]
        if j - i <= 2 and 0 < i and j < _GRID.size - 1:
            res = minimize_scalar(lambda x: -float(d(x)), bounds=(_GRID[i] - h, _GRID[j] + h),
                                  method="bounded", options={"xatol": 1e-10})
            top = max(top, -float(res.fun))
            locs.append(f"{res.x:.4f}")
        else:
            lo = "-inf" if i == 0 else f"{_edge(d, _GRID[i - 1], _GRID[i], top - tol):.4f}"
            hi = "inf" if j == _GRID.size - 1 else f"{_edge(d, _GRID[j + 1], _GRID[j], top - tol):.4f}"
            locs.append(f"[{lo}, {hi}]")
    if len(groups) > 3:
        locs.append("...")
    return top, ", ".join(locs)


def _edge(d, out: float, inside: float, level: float) -> float:
    """Bisect for where phi' crosses ``level`` between a point below it and one above it."""
    for _ in range(60):
        mid = 0.5 * (out + inside)
        if d(mid) >= level:
            inside = mid
        else:
            out = mid
    return inside


def dphi_crossing(act: Activation, level: float, start: float = 0.0, stop: float = 60.0) -> float:
    """The x > ``start`` where phi' first falls to ``level`` (brentq on a scan of [start, stop])."""
    from scipy.optimize import brentq

    def f(x):
        return float(act.dphi(np.asarray(x, float))) - level

    xs = np.linspace(start, stop, 601)
    ys = np.array([f(x) for x in xs])
    k = np.flatnonzero((ys[:-1] > 0) & (ys[1:] <= 0))
    if k.size == 0:
        return math.nan
    return brentq(f, xs[k[0]], xs[k[0] + 1], xtol=1e-14, rtol=1e-15)


def _add_activations(p: argparse.ArgumentParser) -> None:
    p.add_argument("--activation", action="append", default=None, metavar="NAME|EXPR",
                   help="only these activations (repeatable; default: every built-in one)")
    p.add_argument("--q", type=float, default=1.0,
                   help="variance of the Gaussian input for the normalising constants (default: 1)")


def _run_activations(args: argparse.Namespace) -> dict:
    names = args.activation or [n for n in activations() if activation(n).name == n]
    rows = []
    for name in names:
        act = activation(name)
        top, where = dphi_max(act)
        nc = normalising_constants(act, q=args.q)
        rows.append({"activation": name, "max_dphi": top, "argmax_dphi": where, **nc})
    sat = []
    for name, x in ARTICLE_SATURATION.items():
        act = activation(name)
        sat.append({"activation": name, "x": x, "article_dphi": ARTICLE_LEVEL,
                    "dphi": float(act.dphi(np.asarray(x))),
                    "x_where_dphi_is_1e-4": dphi_crossing(act, ARTICLE_LEVEL)})
    if not args.json:
        print(f"phi' maximum (numerical, x in [-40, 40]) and the normalising constants "
              f"(Brock et al. 2021) at q = {args.q:g}")
        print_table(["activation", "max phi'", "at x", "mean", "std", "gain"],
                    [[r["activation"], r["max_dphi"], r["argmax_dphi"], r["mean"], r["std"],
                      r["gain"]] for r in rows])
        print("(a range [a, b]: phi' is within 1e-9 of its maximum there)")
        print()
        print("saturation: the source article says phi' is about 1e-4 at these points; it is not")
        print_table(["activation", "x", "article", "phi'(x)", "phi' = 1e-4 at x"],
                    [[s["activation"], s["x"], "~1e-4", f"{s['dphi']:.4g}",
                      f"{s['x_where_dphi_is_1e-4']:.4f}"] for s in sat])
    return {"activations": rows, "q": args.q, "saturation": sat}


# ---------------------------------------------------------------------------------------------
# simulate and validate


def _add_simulate(p: argparse.ArgumentParser) -> None:
    add_network_options(p, depth=20, width=256)
    p.add_argument("--weights", default=None, choices=("gaussian", "orthogonal", "uniform"),
                   help="weight distribution (default: gaussian; orthogonal with --init orthogonal)")
    p.add_argument("--samples", type=int, default=100, help="sample networks (default: 100)")
    p.add_argument("--seed", type=int, default=0, help="root seed, an int >= 0 (default: 0)")
    p.add_argument("--engine", default="dense", choices=("dense", "matrix-free"),
                   help="dense weight matrices, or the exact O(N)-per-layer matrix-free sampler "
                        "(gaussian and orthogonal weights) (default: dense)")
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"),
                   help="floating point type of the networks (default: float64)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument("--compare", action="store_true",
                   help="also compare with mean-field theory (signalprop.compare) and report it")
    p.add_argument("--every", type=int, default=0, metavar="K",
                   help="print every K-th layer (text only; default: about 50 rows)")


def _run_simulate(args: argparse.Namespace) -> dict:
    from .simulate import simulate
    net = network_from(args)
    prof = simulate(net, args.samples, args.seed, engine=args.engine, q0=args.q0, c0=args.c0,
                    dtype=args.dtype, workers=args.workers)
    weights = args.weights or ("orthogonal" if args.init == "orthogonal" else "gaussian")
    out = {"activation": args.activation, "sigma_w2": _sigma_w2_out(args, net),
           "sigma_b2": args.sigma_b2, "residual": args.residual, "norm": args.norm,
           "depth": net.depth, "width": args.width, "weights": weights, "q0": args.q0,
           "c0": args.c0, "samples": args.samples, "seed": args.seed, "engine": args.engine,
           "dtype": args.dtype}
    d = prof.to_dict()
    keys = ("layers", "q", "q_se", "log_q", "c", "c_se", "log_g", "log_g_se", "log_G", "log_G_se")
    out.update({k: d[k] for k in keys if k in d})
    comp = None
    if args.compare:
        from .compare import compare
        comp = compare(predict(net, q0=args.q0, c0=args.c0), prof)
        field, lay, z, excess = comp.worst()
        out["comparison"] = {"verdict": comp.verdict, "max_abs_z": comp.max_abs_z,
                             "max_excess": comp.max_excess, "worst_field": field,
                             "worst_layer": lay, "rule": comp.rule}
    if not args.json:
        print(f"Monte Carlo profile: {describe(args, net)}, {weights} weights; "
              f"{args.samples} samples, seed {args.seed}, {args.engine} engine")
        L = prof.depth
        every = args.every if args.every > 0 else max(1, math.ceil(L / 50))
        idx = sorted(set(range(0, L, every)) | {L - 1})
        headers = ["layer", "q", "q_se"] + (["c", "c_se"] if prof.c is not None else []) + \
            ["log_g", "log_g_se", "log_G", "log_G_se"]
        rows = []
        for i in idx:
            row = [int(prof.layers[i]), prof.q[i], prof.q_se[i]]
            if prof.c is not None:
                row += [prof.c[i], prof.c_se[i]]
            rows.append(row + [prof.log_g[i], prof.log_g_se[i], prof.log_G[i], prof.log_G_se[i]])
        print_table(headers, rows)
        if comp is not None:
            c = out["comparison"]
            print(f"theory vs simulation: {c['verdict']} (max |z| {c['max_abs_z']:.2f}; worst "
                  f"{c['worst_field']} at layer {c['worst_layer']}); rule: {c['rule']}")
    return out


def _add_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="the small quick subset (seconds)")
    p.add_argument("--out", default=None,
                   help="folder for report.md and figures/ (default: the validation folder; "
                        "<tmp>/signalprop-validation-quick with --quick)")
    p.add_argument("--family", action="append", default=None,
                   help="only cases of this family (repeatable)")
    p.add_argument("--jobs", type=int, default=1, help="cases run in parallel (default: 1)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")


def _run_validate(args: argparse.Namespace) -> dict:
    """Runs ``python -m validation`` in a child process (the suite lives in the source tree, next
    to the package, which never imports it). Exit status 1 (SystemExit) when a case that is
    expected to agree does not."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "validation" / "__main__.py").exists():
        raise ValueError(f"signalprop validate needs a source checkout: no validation/ folder "
                         f"next to the package ({root})")
    if not 1 <= args.jobs <= MAX_JOBS:
        raise ValueError(f"jobs must be an integer in [1, {MAX_JOBS}], got {args.jobs}")
    argv = (["--quick"] if args.quick else []) + (["--out", args.out] if args.out else [])
    argv += sum((["--family", f] for f in args.family or []), []) + ["--jobs", str(args.jobs)]
    argv += ["--no-figures"] if args.no_figures else []
    proc = subprocess.run([sys.executable, "-m", "validation", *argv], cwd=root, text=True,
                          stdout=subprocess.PIPE if args.json else None, stderr=subprocess.PIPE)
    if proc.returncode == 2:
        why = (proc.stderr.strip().splitlines() or ["no case matches the selection"])[-1]
        raise ValueError(f"validation: {why.removeprefix('error: ')} (family "
                         f"{', '.join(args.family or ['any'])}; python -m validation --list "
                         "shows the cases)")
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"python -m validation failed (exit status {proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    quick_out = Path(tempfile.gettempdir()) / "signalprop-validation-quick"
    out_dir = Path(args.out) if args.out else (quick_out if args.quick else root / "validation")
    lines = (proc.stdout or "").strip().splitlines()
    result = {"exit_status": proc.returncode, "report": str(out_dir / "report.md"),
              "summary": lines[-1] if (args.json and lines) else ""}
    if proc.returncode != 0:
        if args.json:
            print(json.dumps(to_jsonable(result)))
        raise SystemExit(proc.returncode)
    return result


# ---------------------------------------------------------------------------------------------
# finite-width and clip


def _add_finite_network(p: argparse.ArgumentParser, depth: int = 20, width: int = 100) -> None:
    add_activation_options(p, "relu")
    add_weight_options(p, sigma_w2=2.0, sigma_b2=0.0)
    p.add_argument("--depth", type=int, default=depth, metavar="L",
                   help=f"number of layers L (default: {depth})")
    p.add_argument("--width", type=int, default=width, metavar="N",
                   help=f"width of every layer (default: {width})")
    p.add_argument("--widths", type=int, nargs="+", default=None, metavar="N",
                   help="per-layer widths N_1..N_L or N_0..N_L (instead of --width)")
    p.add_argument("--q0", type=float, default=1.0, help="input second moment (default: 1)")


def _finite_network(args: argparse.Namespace, depth: Optional[int] = None) -> Network:
    act = activation_from(args)
    depth = args.depth if depth is None else depth
    width = args.widths if args.widths else args.width
    if args.init is not None:
        if args.sigma_w2 is not None:
            raise ValueError("give either --sigma-w2 or --init, not both")
        return mlp(depth, width, act, init=args.init, sigma_b2=args.sigma_b2)
    return mlp(depth, width, act, sigma_w2=sigma_w2_from(args), sigma_b2=args.sigma_b2)


def _run_finite_width(args: argparse.Namespace) -> dict:
    from .finite import finite_width
    fw = finite_width(_finite_network(args), q0=args.q0)
    if not args.json:
        print(f"finite-width laws: {args.activation}, depth={fw.depth}, widths="
              f"{fw.meta['widths'] if args.widths else args.width}; exact: "
              f"{', '.join(fw.exact) or 'none (approximation)'}")
        every = max(1, math.ceil(fw.depth / 40))
        rows = [[int(fw.layers[i]), int(fw.widths[i + 1]), fw.log_g[i], fw.log_g_mean[i],
                 fw.log_g_var[i], fw.beta[i], fw.log_q_mean[i], fw.log_q_var[i]]
                for i in sorted(set(range(0, fw.depth, every)) | {fw.depth - 1})]
        print_table(["layer", "N", "log_g", "E log g_hat", "Var log g_hat", "beta", "E log q_hat",
                     "Var log q_hat"], rows)
        print(f"regime: {fw.regime}. {fw.note}")
    return {"activation": args.activation, **fw.to_dict()}


def _add_clip(p: argparse.ArgumentParser) -> None:
    _add_finite_network(p)
    p.add_argument("--clip-value", type=float, nargs="+", default=[1.0], metavar="C",
                   help="clip value(s) c > 0 of g <- g min(1, c/||g||) (default: 1)")
    p.add_argument("--no-biases", action="store_true",
                   help="leave bias gradients out of ||g|| (default: weights and biases)")
    p.add_argument("--output-grad-var", type=float, default=1.0, metavar="S",
                   help="E[(dloss/dh^L_i)^2] of the loss (default: 1, the loss <v, h^L>)")
    p.add_argument("--depths", type=int, nargs="+", default=None, metavar="L",
                   help="also sweep these depths at the first clip value")


def _run_clip(args: argparse.Namespace) -> dict:
    from .clipping import clipping
    kw = {"biases": not args.no_biases, "output_grad_var": args.output_grad_var}
    r = clipping(_finite_network(args), args.clip_value, args.q0, **kw)
    out = {"activation": args.activation, **r.to_dict()}
    sweep = []
    for d in args.depths or []:
        rd = clipping(_finite_network(args, d), args.clip_value[0], args.q0, **kw)
        sweep.append({"depth": d, "p_clip": float(rd.p_clip.ravel()[0]),
                      "expected_norm": float(rd.expected_norm.ravel()[0]),
                      "shrink": float(rd.shrink.ravel()[0]), "median_norm": rd.median_norm})
    if sweep:
        out["depth_sweep"] = sweep
    if not args.json:
        print(f"total gradient norm at init: median {r.median_norm:.4g}, 90% in "
              f"[{r.norm_q05:.4g}, {r.norm_q95:.4g}], mean-field sqrt(E||g||^2) "
              f"{r.mean_field_norm:.4g}; regime: {r.regime}")
        print_table(["c", "P(clip)", "E[min(||g||, c)]", "E[min(1, c/||g||)]"],
                    [[c, p, e, sh] for c, p, e, sh in zip(r.clip_value.ravel(), r.p_clip.ravel(),
                                                          r.expected_norm.ravel(), r.shrink.ravel())])
        for v in r.verdict:
            print(v)
        if sweep:
            print(f"depth sweep at c = {args.clip_value[0]:g}")
            print_table(["depth", "P(clip)", "E[min(||g||, c)]", "shrink", "median ||g||"],
                        [[w["depth"], w["p_clip"], w["expected_norm"], w["shrink"],
                          w["median_norm"]] for w in sweep])
    return out


# ---------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, a function adding its options, and one running it."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict]


#: name -> Command. To add a command, write its two functions and add one entry here.
# ---------------------------------------------------------------------------------------------
# spectrum


def _add_spectrum(p: argparse.ArgumentParser) -> None:
    add_activation_options(p)
    add_weight_options(p, sigma_w2=1.0, sigma_b2=0.0)
    p.add_argument("--weights", default="gaussian", choices=("gaussian", "orthogonal", "uniform"),
                   help="weight distribution (default: gaussian)")
    p.add_argument("--depth", type=int, default=10, metavar="L", help="number of layers (default: 10)")
    p.add_argument("--width", type=int, default=1000, metavar="N",
                   help="width of every layer (only the aspect ratios matter; default: 1000)")
    p.add_argument("--q0", type=float, default=1.0, help="input second moment ||x||^2/N_0 (default: 1)")
    p.add_argument("--at-fixed-point", action="store_true",
                   help="put every layer at the fixed point q* (overrides --q0)")
    p.add_argument("--moments", type=int, default=8, metavar="K", help="print m_1..m_K (default: 8)")
    p.add_argument("--points", type=int, default=0, metavar="P",
                   help="also give the density on P points of the support (default: 0)")
    p.add_argument("--plot", default=None, metavar="FILE", help="save the density to FILE (PNG)")


def _run_spectrum(args: argparse.Namespace) -> dict:
    from .spectrum import spectrum
    act = activation_from(args)
    if args.init is not None:
        if args.sigma_w2 is not None:
            raise ValueError("give either --sigma-w2 or --init, not both")
        net = mlp(args.depth, args.width, act, init=args.init, sigma_b2=args.sigma_b2,
                  weights=None if args.init == "orthogonal" else args.weights)
    else:
        net = mlp(args.depth, args.width, act, sigma_w2=sigma_w2_from(args),
                  sigma_b2=args.sigma_b2, weights=args.weights)
    q0 = args.q0
    if args.at_fixed_point:
        la = net.layers[0]
        q_star = fixed_point(act, la.sigma_w2, la.sigma_b2, q0=args.q0).q_star
        if not (math.isfinite(q_star) and q_star > la.sigma_b2):
            raise ValueError(f"no finite fixed point q* > sigma_b^2 to start from (q* = {q_star})")
        q0 = (q_star - la.sigma_b2) / la.sigma_w2
    if args.moments < 1 or args.points < 0:
        raise ValueError("--moments must be >= 1 and --points >= 0")
    s = spectrum(net, q0)
    out = s.to_dict(condition=True)
    out["moments"] = s.moments(args.moments).tolist()
    out["activation"] = args.activation
    if args.points or args.plot:
        x = s.grid(max(args.points, 400) if args.plot else args.points)
        rho = s.density(x)
        if args.points:
            out["x"], out["density"] = x.tolist(), rho.tolist()
        if args.plot:
            from .plot import new_figure, save
            fig, ax = new_figure(1, 1, width=4.0, height=2.8)
            ax[0, 0].plot(x, rho, color="k")
            ax[0, 0].set_xlabel(r"$\lambda$ (squared singular value of J)")
            ax[0, 0].set_ylabel("density (continuous part)")
            ax[0, 0].set_title(f"{args.activation}, {args.weights}, L={args.depth}")
            save(fig, args.plot)
    if not args.json:
        print(f"spectrum of J J^T: {args.activation}, {args.weights} weights, depth {args.depth}, "
              f"q0 = {q0:.6g}")
        rows = [("mean m_1", out["mean"]), ("normalised variance", out["normalised_variance"]),
                ("upper edge", out["upper_edge"]), ("lower edge", out["lower_edge"]),
                ("mass of the atom at 0", out["zero_mass"]),
                ("condition number", out["condition_number"]),
                ("condition number (tail 1e-3)", out["condition_number_tail_1e-3"])]
        rows += [(f"atom at {a:.6g}", m) for a, m in out["atoms"]]
        rows += [(f"m_{k}", v) for k, v in enumerate(out["moments"], 1)]
        print_table(("quantity", "value"), rows)
        for n in out["notes"]:
            print(f"note: {n}")
    return out


COMMANDS: dict[str, Command] = {
    "finite-width": Command("finite-width laws of log ||h^l||^2 and log ||delta^l||^2, beta, regime",
                            _add_finite_network, _run_finite_width),
    "clip": Command("gradient clipping at init: P(clip), E[min(||g||, c)], shrink, verdict",
                    _add_clip, _run_clip),
    "fixed-point": Command("q*, c*, chi_1, chi_c and the depth scales", _add_fixed_point,
                           _run_fixed_point),
    "critical": Command("the edge of chaos sigma_w^2 at one or more sigma_b^2", _add_critical,
                        _run_critical),
    "predict": Command("per-layer mean-field profile q, c, log g, log G", _add_predict,
                       _run_predict),
    "phase": Command("phase diagram on a (sigma_w^2, sigma_b^2) grid: figure and CSV", _add_phase,
                     _run_phase),
    "activations": Command("built-in activations: max phi', saturation, normalising constants",
                           _add_activations, _run_activations),
    "demo": Command("a worked example: table and figure of q, c, log g against layer", _add_demo,
                    _run_demo),
    "simulate": Command("Monte Carlo profile q, c, log g, log G with standard errors",
                        _add_simulate, _run_simulate),
    "spectrum": Command("random-matrix law of the squared singular values of the Jacobian",
                        _add_spectrum, _run_spectrum),
    "validate": Command("theory vs simulation over the validation catalogue: report and figures",
                        _add_validate, _run_validate),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of :data:`COMMANDS`."""
    parser = _Parser(prog=PROG, description="Signal propagation in randomly initialised deep "
                                            "networks (mean-field theory). Notation: CONVENTIONS.md.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.add_argument("--json", action="store_true", help="print one JSON object (CONVENTIONS.md keys)")
        p.set_defaults(run=cmd.run)
    return parser


#: numpy's floating-point warnings ("overflow encountered in exp", ...): errors inside a command.
FP_WARNING = r".*encountered in"

_BAD_INPUT = (UsageError, ValueError, TypeError, OverflowError, MemoryError)


class FloatingPointFailure(Exception):
    """A floating-point warning raised as an error while a command ran."""


def _one_line(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 4] + " ..."


def _options_given(argv: Sequence[str]) -> str:
    """The options of the command line (for naming what was out of range)."""
    text = " ".join(a if a.startswith("-") or " " not in a else repr(a) for a in argv[1:])
    return _one_line(text, 120)


def _run(argv: Optional[Sequence[str]]) -> tuple[int, list]:
    """Parse and run; returns (status, warnings recorded)."""
    with warnings.catch_warnings(record=True) as caught:
        # the command line's own policy, whatever the caller's filters: the API's deliberate
        # warnings are recorded (printed after success), numpy's floating-point ones are errors
        warnings.filterwarnings("default", category=RuntimeWarning)
        warnings.filterwarnings("default", category=UserWarning)
        warnings.filterwarnings("error", message=FP_WARNING, category=RuntimeWarning)
        with np.errstate(over="warn", invalid="warn", divide="warn"):
            args = build_parser().parse_args(argv)
            try:
                result = args.run(args)
            except RuntimeWarning as exc:
                if not re.match(FP_WARNING, str(exc)):
                    raise
                raise FloatingPointFailure(
                    f"floating-point failure ({_one_line(exc, 100)}) evaluating {args.command}"
                    + (f" with {_options_given(argv)}" if argv and len(argv) > 1 else "")
                    + ": the arguments are outside the range this command can evaluate") from None
        if args.json:
            print(json.dumps(to_jsonable(result)))
    return 0, list(caught)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0, or 2 for bad input; see the module
    docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        status, caught = _run(argv)
    except (*_BAD_INPUT, FloatingPointFailure) as exc:
        if isinstance(exc, MemoryError):
            msg = "not enough memory for these arguments" + \
                (f" ({_one_line(exc)})" if str(exc) else "")
        else:
            msg = _one_line(exc) or type(exc).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `signalprop predict | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # an unwritable --out, a missing folder, ...: the user's to fix
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    seen = set()
    for w in caught:
        text = _one_line(w.message)
        if text not in seen:
            seen.add(text)
            print(f"{PROG}: warning: {text}", file=sys.stderr)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
