"""Printing and drawing for the command line: tables, the fixed-point block, one-line network
descriptions, and figures on an Agg canvas (matplotlib is imported only when a figure is made)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from .args import sigma_w2_from

__all__ = ["SCALARS", "fmt", "print_table", "print_fixed_point", "fixed_point_dict",
           "profile_rows", "describe", "figure", "save", "plot_phase_figure", "profile_figure",
           "save_profile"]

#: the fixed-point scalars of CONVENTIONS.md, in the order they are printed.
SCALARS = ("q_star", "c_star", "chi_1", "chi_c", "xi_q", "xi_c", "xi_grad", "regime")


def fmt(v) -> str:
    """A table cell: strings as they are, integers exactly, floats to 6 significant digits."""
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.6g}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence], out=None) -> None:
    """Right-aligned columns under ``headers``."""
    out = out or sys.stdout
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)), file=out)
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)), file=out)


def print_fixed_point(fp) -> None:
    """The scalars of a :class:`~signalprop.results.FixedPoint`, one per line, and its note."""
    for key in SCALARS:
        print(f"  {key:<8} {fmt(getattr(fp, key))}")
    if fp.note:
        print(f"  note: {fp.note}")


def fixed_point_dict(fp) -> dict:
    """``fp.to_dict()`` without an empty note."""
    d = fp.to_dict()
    if not d.get("note"):
        d.pop("note", None)
    return d


def shown_layers(depth: int, every: int, rows: int = 50) -> list:
    """Indices of the layers a table shows: every ``every``-th (about ``rows`` when ``every`` <= 0)
    and the last."""
    if every <= 0:
        every = max(1, math.ceil(depth / rows))
    return sorted(set(range(0, depth, every)) | {depth - 1})


def profile_rows(prof, every: int) -> list:
    """Rows layer, q, [c,] log_g, log_G of a mean-field profile."""
    rows = []
    for i in shown_layers(prof.depth, every):
        row = [int(prof.layers[i]), prof.q[i]]
        if prof.c is not None:
            row.append(prof.c[i])
        rows += [row + [prof.log_g[i], prof.log_G[i]]]
    return rows


def describe(args: argparse.Namespace, net) -> str:
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


def figure(n: int, width: float, height: float):
    """A row of ``n`` axes on a Figure rendered by Agg (no pyplot, no global backend)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from ..plot import STYLE
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width * n, height), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, n)
    return fig, np.atleast_1d(axes)


def save(fig, path) -> Path:
    """Write ``fig`` to ``path`` (its folder created) in the package style."""
    import matplotlib
    from ..plot import STYLE
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(STYLE):
        fig.savefig(path)
    return path


def plot_phase_figure(pd):
    """chi_1, q* and xi_c of a :class:`PhaseDiagram` side by side, edge of chaos overlaid."""
    from ..plot import plot_phase_diagram
    fig, axes = figure(3, width=3.4, height=2.8)
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


def profile_figure(prof, title: str):
    """q^l, c^l and log g^l against layer side by side (the c panel hidden for one input); a
    Monte Carlo profile is drawn with error bars of 2 standard errors."""
    from ..plot import plot_profile
    fig, axes = figure(3, width=3.3, height=2.6)
    for ax, field in zip(axes, ("q", "c", "log_g")):
        if field == "c" and prof.c is None:
            ax.set_visible(False)
            continue
        plot_profile(prof, ax, field=field, color="black")
        ax.set_title(title if field == "q" else "", loc="left")
    return fig


def save_profile(args: argparse.Namespace, prof, title: str, out: dict) -> None:
    """``--csv FILE`` and ``--plot FILE``: write them (folders created), record their paths in
    ``out`` (``"csv"``, ``"figure"``) and, in text mode, say so."""
    written = []
    if getattr(args, "csv", None):
        path = Path(args.csv)
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        prof.to_csv(path)
        out["csv"] = str(path)
        written.append(path)
    if getattr(args, "plot", None):
        path = save(profile_figure(prof, title), args.plot)
        out["figure"] = str(path)
        written.append(path)
    if written and not args.json:
        print(f"wrote {', '.join(map(str, written))}")
