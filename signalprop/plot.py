"""Figures in one style. Plots only draw what the API computes (no computation of their own).

:func:`plot_phase_diagram` draws one field of a :class:`~signalprop.results.PhaseDiagram`
(``chi_1``, ``q_star``, ``xi_c`` or ``c_star``) with the edge of chaos overlaid;
:func:`plot_profile` draws one field of a :class:`~signalprop.results.Profile` against depth
(a line for theory, error bars of 2 standard errors for Monte Carlo).

:func:`plot_comparison` draws a :class:`~signalprop.compare.Comparison`: for each field a panel
(side by side) with the theory curve, the Monte Carlo means with error bars of 2 standard errors,
and the band of the finite-width allowance around the theory. Matplotlib is used through
``matplotlib.figure.Figure`` (no pyplot, no global backend change), so figures can be made and
saved in any process.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["STYLE", "LABELS", "new_figure", "plot_comparison", "save", "plot_phase_diagram",
           "plot_profile", "PHASE_FIELDS", "new_axes"]

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
LABELS = {"q": r"$q^l$", "log_q": r"$\log q^l$", "c": r"$c^l$", "log_g": r"$\log g^l$",
          "log_G": r"$\log G^l$"}
TITLES = {"q": "forward variance", "log_q": "log forward variance", "c": "correlation",
          "log_g": "log gradient variance", "log_G": "log weight-gradient variance"}


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
    # q is compared on log q where it leaves the float range (compare's rule): draw that panel
    fields = [("log_q" if f == "q" and "q" not in comparison.fields else f) for f in fields]
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


# ------------------------------------------------------------------------------------------
# mean-field figures

#: field -> (colour-bar label, colour map, scale). ``log-centred``: logarithmic, symmetric about 1.
PHASE_FIELDS = {
    "chi_1": (r"$\chi_1$", "RdBu_r", "log-centred"),
    "q_star": (r"$q^*$", "viridis", "log"),
    "xi_c": (r"$\xi_c$ (layers)", "magma", "log"),
    "c_star": (r"$c^*$", "viridis", "linear"),
}
#: default depth (decades) of a non-centred log colour scale; lower values take its end colour
LOG_DECADES = 4
_CRITICAL = {"color": "black", "lw": 1.3, "ls": "--", "label": r"edge of chaos ($\chi_1 = 1$)"}
_THEORY = {"lw": 1.4}
_MC = {"fmt": "o", "ms": 3.0, "elinewidth": 0.9, "capsize": 1.5, "mfc": "white"}
_LABELS = {"q": r"$q^l$", "c": r"$c^l$", "log_q": r"$\log q^l$",
           "log_g": r"$\log g^l$", "log_G": r"$\log G^l$"}


def new_axes(width: float = 3.4, height: float = 2.7):
    """One ``Axes`` on a new ``Figure`` (no pyplot) in the package style."""
    import matplotlib
    from matplotlib.figure import Figure
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width, height))
        ax = fig.add_subplot()
    return ax


def _norm(values: np.ndarray, scale: str, vmin, vmax):
    from matplotlib import colors
    finite = values[np.isfinite(values)]
    if scale == "linear":
        lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
        hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
        return colors.Normalize(lo, hi)
    pos = finite[finite > 0]
    hi = vmax if vmax is not None else (float(pos.max()) if pos.size else 1.0)
    lo = vmin if vmin is not None else (float(pos.min()) if pos.size else 1e-3)
    if scale == "log-centred":          # 1 in the middle of the colour map: order vs chaos
        r = max(hi, 1.0 / lo, 1.0 + 1e-9)
        lo, hi = 1.0 / r, r
    elif vmin is None:                  # at most LOG_DECADES decades: q* -> 0 at sigma_b = 0 would
        lo = max(lo, hi * 10.0 ** -LOG_DECADES)   # otherwise take the whole colour map
    if hi <= lo:
        hi = lo * 10.0
    return colors.LogNorm(lo, hi)


def plot_phase_diagram(pd, field: str = "chi_1", ax=None, *, units: str = "variance",
                       critical: bool = True, colorbar: bool = True, cmap: Optional[str] = None,
                       vmin: Optional[float] = None, vmax: Optional[float] = None,
                       title: Optional[str] = None, legend: bool = False):
    """Colour map of ``pd.<field>`` over the grid with the edge of chaos overlaid.

    ``pd``: a :class:`~signalprop.results.PhaseDiagram` (``signalprop.phase_diagram``).
    ``field``: ``"chi_1"`` (log scale centred on 1: blue ordered, red chaotic), ``"q_star"``
    (log), ``"xi_c"`` (log; ``inf`` drawn in the top colour) or ``"c_star"`` (linear).
    ``units``: ``"variance"`` (axes sigma_w^2, sigma_b^2; Schoenholz et al. 2017) or ``"std"``
    (axes sigma_w, sigma_b; Poole et al. 2016). ``critical``: draw ``pd.critical_sigma_w2``.
    ``vmin``/``vmax``: colour limits (default: the data's range; a non-centred log scale spans
    at most ``LOG_DECADES`` decades below the maximum, and smaller values, e.g. q* -> 0 at
    sigma_b = 0, take its bottom colour). Cells with nan, or q* = 0 on a log scale, are left
    blank. Returns the axes.
    """
    import matplotlib
    if field not in PHASE_FIELDS:
        raise ValueError(f"field must be one of {', '.join(PHASE_FIELDS)}, got {field!r}")
    if units not in ("variance", "std"):
        raise ValueError(f"units must be 'variance' or 'std', got {units!r}")
    label, default_cmap, scale = PHASE_FIELDS[field]
    values = np.array(getattr(pd, field), float)
    infinite = np.isposinf(values)     # a diverging depth scale: drawn in the top colour
    values = np.where(infinite, np.nan, values)
    if scale != "linear":
        values = np.where(values > 0, values, np.nan)
    norm = _norm(values, scale, vmin, vmax)
    shown = values[np.isfinite(values)]
    below = bool(np.any(shown < norm.vmin))
    above = bool(np.any(infinite) or np.any(shown > norm.vmax))
    values = np.clip(values, norm.vmin, norm.vmax)        # out-of-range cells: the end colours
    values = np.where(infinite, norm.vmax, values)
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max",
              (True, True): "both"}[(below, above)]
    x, y = np.asarray(pd.sigma_w2, float), np.asarray(pd.sigma_b2, float)
    crit = np.asarray(pd.critical_sigma_w2, float)
    if units == "std":
        x, y, crit = np.sqrt(x), np.sqrt(y), np.sqrt(crit)
        xlabel, ylabel = r"$\sigma_w$", r"$\sigma_b$"
    else:
        xlabel, ylabel = r"$\sigma_w^2$", r"$\sigma_b^2$"
    if ax is None:
        ax = new_axes()
    with matplotlib.rc_context(STYLE):
        mesh = ax.pcolormesh(x, y, np.ma.masked_invalid(values), shading="nearest",
                             cmap=cmap or default_cmap, norm=norm,
                             rasterized=True)
        if critical and np.any(np.isfinite(crit)):
            ok = np.isfinite(crit) & (crit >= x.min()) & (crit <= x.max())
            ax.plot(crit[ok], y[ok], **_CRITICAL)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(False)
        if colorbar:
            cb = ax.figure.colorbar(mesh, ax=ax, label=label, extend=extend)
            if scale == "log-centred":    # plain numbers around 1 rather than 4 x 10^-1
                ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
                         if norm.vmin <= t <= norm.vmax]
                cb.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
                cb.minorticks_off()
        ax.set_title(title if title is not None else f"{label}  ({pd.activation})", loc="left")
        if legend and critical:
            ax.legend(loc="upper right", frameon=False)
    return ax


def plot_profile(profile, ax=None, *, field: str = "q", offset: int = 0,
                 label: Optional[str] = None, color=None, logy: Optional[bool] = None,
                 xlabel: Optional[str] = None, **kwargs):
    """``profile.<field>`` against layer: a line for a theory profile, points with error bars of
    2 standard errors for a Monte Carlo one (one that carries ``<field>_se``).

    ``field``: ``q``, ``c``, ``log_q``, ``log_g`` or ``log_G``. ``offset``: shift of the layer
    axis (``offset=-1`` draws layer l at l - 1, e.g. to count map iterations from the first
    layer). ``logy``: log y axis (default: for ``q`` spanning more than a factor of 100).
    ``xlabel``: default "layer l" (or "l - 1" etc. with an offset).
    Extra keyword arguments go to ``plot`` / ``errorbar``. Returns the axes.
    """
    import matplotlib
    y = getattr(profile, field, None)
    if y is None:
        raise ValueError(f"this profile has no field {field!r}")
    y = np.asarray(y, float)
    layers = np.asarray(profile.layers) + offset
    se = getattr(profile, f"{field}_se", None)
    if ax is None:
        ax = new_axes()
    with matplotlib.rc_context(STYLE):
        if se is not None:
            style = {**_MC, **({"color": color} if color is not None else {}), **kwargs}
            ax.errorbar(layers, y, yerr=2.0 * np.nan_to_num(np.asarray(se, float)), label=label,
                        **style)
        else:
            style = {**_THEORY, **({"color": color} if color is not None else {}), **kwargs}
            ax.plot(layers, y, label=label, **style)
        if logy is None:
            pos = y[np.isfinite(y) & (y > 0)]
            logy = field == "q" and pos.size > 0 and pos.max() / pos.min() > 100
        if logy:
            ax.set_yscale("log")
        if xlabel is None:
            sign = "+" if offset > 0 else "-"
            xlabel = "layer $l$" if offset == 0 else f"$l {sign} {abs(offset)}$"
        ax.set_xlabel(xlabel)
        ax.set_ylabel(_LABELS.get(field, field))
    return ax
