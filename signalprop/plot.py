"""Figures in one style. Plots only draw what the API computes (no computation of their own).

:func:`plot_comparison` draws a :class:`~signalprop.compare.Comparison`: for each field a panel
(side by side) with the theory curve, the Monte Carlo means with error bars of 2 standard errors,
and the band of the finite-width allowance around the theory. Matplotlib is used through
``matplotlib.figure.Figure`` (no pyplot, no global backend change), so figures can be made and
saved in any process.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["STYLE", "LABELS", "new_figure", "plot_comparison", "save"]

STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 7,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "lines.linewidth": 1.4,
    "savefig.dpi": 120,
    "savefig.bbox": "tight",
}
THEORY = {"color": "black", "lw": 1.4, "label": "theory"}
MC = {"color": "#d62728", "fmt": "o", "ms": 2.5, "elinewidth": 0.8, "capsize": 0,
      "label": "Monte Carlo (±2 se)"}
BAND = {"color": "0.8", "alpha": 0.6, "lw": 0, "label": "finite-width allowance"}
LABELS = {"q": r"$q^l$", "c": r"$c^l$", "log_g": r"$\log g^l$", "log_G": r"$\log G^l$"}
TITLES = {"q": "forward variance", "c": "correlation", "log_g": "log gradient variance",
          "log_G": "log weight-gradient variance"}


def new_figure(nrows: int = 1, ncols: int = 2, width: float = 3.2, height: float = 2.4):
    """A ``Figure`` and its axes array (``nrows x ncols``), in the package style."""
    import matplotlib
    from matplotlib.figure import Figure
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _thin(n: int, max_points: int) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.round(np.geomspace(1, n, max_points)).astype(int) - 1)


def plot_comparison(comparison, axes: Optional[Sequence] = None,
                    fields: Sequence[str] = ("q", "log_g"), title: Optional[str] = None,
                    max_points: int = 60, legend: bool = True):
    """Theory curve, Monte Carlo error bars (±2 se) and allowance band, one panel per field, side by
    side. ``axes``: existing axes (one per field) or None for a new figure. Returns the figure."""
    import matplotlib
    fields = [f for f in fields if f in comparison.fields]
    if axes is None:
        fig, ax = new_figure(1, len(fields))
        axes = list(ax[0])
    else:
        axes = list(np.ravel(axes))
        fig = axes[0].figure
    layers = np.asarray(comparison.layers)
    idx = _thin(len(layers), max_points)
    with matplotlib.rc_context(STYLE):
        for ax, f in zip(axes, fields):
            t = np.asarray(comparison.theory[f])
            m = np.asarray(comparison.simulation[f])
            se = np.nan_to_num(np.asarray(comparison.se[f]), nan=0.0)
            a = np.asarray(comparison.allowance[f])
            lo_band = np.maximum(t - a, 0.0) if f == "q" else t - a
            ax.fill_between(layers, lo_band, t + a, **BAND)
            ax.plot(layers, t, **THEORY)
            ax.errorbar(layers[idx], m[idx], yerr=2 * se[idx], **MC)
            pos = t[np.isfinite(t)]
            ylog = f == "q" and pos.size and pos.min() > 0 and pos.max() / pos.min() > 100
            if ylog:
                ax.set_yscale("log")
            vals = np.concatenate([t, m[idx] - 2 * se[idx], m[idx] + 2 * se[idx]])
            vals = vals[np.isfinite(vals) & ((vals > 0) if ylog else True)]
            if vals.size:
                lo, hi = vals.min(), vals.max()
                if ylog:
                    ax.set_ylim(lo / 2.0, hi * 2.0)
                else:
                    pad = 0.08 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-3)
                    ax.set_ylim(lo - pad, hi + pad)
            if len(layers) > 200:
                ax.set_xscale("log")
            ax.set_xlabel("layer l")
            ax.set_ylabel(LABELS.get(f, f))
            ax.set_title(TITLES.get(f, f), fontsize=8)
        if title:
            fig_title = title
            axes[0].annotate(fig_title, (0, 1.18), xycoords="axes fraction", fontsize=8,
                             fontweight="bold", ha="left", va="bottom", annotation_clip=False)
        if legend:
            axes[-1].legend(loc="best", frameon=False)
    return fig


def save(fig, path, dpi: Optional[float] = None) -> None:
    """Save a figure in the package style (tight bounding box; ``dpi`` default 120)."""
    import matplotlib
    with matplotlib.rc_context(STYLE):
        fig.savefig(path, **({"dpi": dpi} if dpi else {}))
