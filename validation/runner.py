"""Run validation cases (theory vs simulation), write ``report.md`` and one figure per family."""

from __future__ import annotations

import datetime
import math
import multiprocessing as mp
import os
import platform
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from signalprop.compare import BETA_LIMIT, Comparison, compare
from signalprop.meanfield import predict
from signalprop.plot import new_figure, plot_comparison, save
from signalprop.results import Profile
from signalprop.simulate import simulate

from .catalogue import FAMILIES, NOTES, Case

__all__ = ["CaseResult", "run_case", "run_cases", "write_report"]


@dataclass
class CaseResult:
    case: Case
    comparison: Optional[Comparison]
    simulation: Optional[Profile]
    seconds: float
    error: str = ""
    strict: Optional[Comparison] = None   # kappa = 0 (no allowance), for cases expected to disagree

    @property
    def verdict(self) -> str:
        return "error" if self.error else self.comparison.verdict

    @property
    def counted(self) -> bool:
        """Whether the case decides the exit status (expected a priori to agree)."""
        return self.case.expected == "agree"

    @property
    def failed(self) -> bool:
        return self.counted and self.verdict != "agree"


def run_case(case: Case) -> CaseResult:
    """Theory, simulation and comparison of one case."""
    t0 = time.perf_counter()
    try:
        net = case.network()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            theory = predict(net, q0=1.0, c0=case.c0)
        sim = simulate(net, case.samples, case.seed, engine=case.engine, q0=1.0, c0=case.c0,
                       return_samples=case.family == "finite-width")
        comp = compare(theory, sim)
        strict = compare(theory, sim, kappa=0.0) if case.expected == "disagree" else None
        return CaseResult(case, comp, sim, time.perf_counter() - t0, strict=strict)
    except Exception as exc:  # reported, and counted as a failure
        return CaseResult(case, None, None, time.perf_counter() - t0,
                          error=f"{type(exc).__name__}: {exc}")


def _run_index(args):
    cases, i = args
    return run_case(cases[i])


def run_cases(cases, jobs: int = 1, progress=None) -> list:
    """Run ``cases`` (``jobs`` > 1: that many forked processes); results in the input order."""
    if jobs > 1 and len(cases) > 1:
        ctx = mp.get_context("fork")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            out = []
            for r in pool.map(_run_index, [(cases, i) for i in range(len(cases))]):
                out.append(r)
                if progress:
                    progress(r)
            return out
    out = []
    for c in cases:
        r = run_case(c)
        out.append(r)
        if progress:
            progress(r)
    return out


# ---------------------------------------------------------------------------------------------
# figures


def _family_figure(family: str, results: list, path: Path) -> None:
    """Theory curve and Monte Carlo error bars (q, log g; c for two inputs) per case."""
    rows = [r for r in results if r.comparison is not None]
    if not rows:
        return
    q = ["log_q" if "q" not in r.comparison.fields else "q" for r in rows]
    panels = [(qf, "log_g", "c") if "c" in r.comparison.fields else (qf, "log_g")
              for qf, r in zip(q, rows)]
    per_row = 3 if max(len(p) for p in panels) == 2 else 2
    width = max(len(p) for p in panels)
    nrows = -(-len(rows) // per_row)
    fig, axes = new_figure(nrows, per_row * width, width=2.7, height=2.1)
    for ax in axes.ravel():
        ax.set_visible(False)
    for k, (r, fields) in enumerate(zip(rows, panels)):
        i, j = divmod(k, per_row)
        ax = [axes[i, j * width + m] for m in range(len(fields))]
        for a in ax:
            a.set_visible(True)
        plot_comparison(r.comparison, axes=ax, fields=fields, legend=(k == 0),
                        title=f"{r.case.name} [{r.verdict}]", max_points=40)
        if r.simulation is not None and r.simulation.samples is not None:
            L = r.simulation.layers
            med_q = np.median(r.simulation.samples["q"], axis=0)
            med_g = np.median(r.simulation.samples["log_g"], axis=0)
            ax[0].plot(L, med_q, ls="--", color="tab:blue", lw=1.0, label="median (MC)")
            ax[1].plot(L, med_g, ls="--", color="tab:blue", lw=1.0, label="median (MC)")
            for a, med in ((ax[0], med_q), (ax[1], med_g)):
                lo, hi = a.get_ylim()
                fin = med[np.isfinite(med) & ((med > 0) if a.get_yscale() == "log" else True)]
                if fin.size:
                    a.set_ylim(min(lo, fin.min() * (0.5 if a.get_yscale() == "log" else 1.0)
                                   - (0 if a.get_yscale() == "log" else 0.05 * (hi - lo))), hi)
            if k == 0:
                ax[0].legend(loc="best", frameon=False, fontsize=6)
    fig.suptitle(f"validation: {family}", x=0.01, ha="left")
    save(fig, path, dpi=80 if len(rows) > 12 else 100)


# ---------------------------------------------------------------------------------------------
# report


def _fmt(x, nd=2):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.{nd}f}"


def _row(r: CaseResult) -> str:
    c = r.case
    inputs = "1" if c.c0 is None else f"2 (c0={c.c0:g})"
    if r.comparison is not None:
        comp = r.comparison
        f, layer, z, ex = comp.worst()
        worst = f"{f} @ {layer}" if f else "-"
        zmax, exm = _fmt(comp.max_abs_z, 1), _fmt(max(comp.max_excess, 0.0), 1)
    else:
        worst, zmax, exm = r.error.replace("|", "/"), "-", "-"
    return (f"| {c.name} | {c.activation} | {c.regime} | {c.sigma_w2:.4g} | {c.sigma_b2:g} | "
            f"{c.weights} | {c.engine} | {c.width_label} | {c.depth} | {inputs} | {c.samples} | "
            f"{c.beta:.3f} | {zmax} | {exm} | {worst} | **{r.verdict}** | {r.seconds:.1f} |")


def _typical(r: CaseResult):
    """Largest |median of the per-sample log values - theory| over layers: (log q, log g)."""
    if r.simulation is None or r.simulation.samples is None:
        return math.nan, math.nan
    smp, comp = r.simulation.samples, r.comparison
    with np.errstate(divide="ignore", invalid="ignore"):
        log_t = (comp.theory["log_q"] if "log_q" in comp.theory else np.log(comp.theory["q"]))
        dq = np.median(np.log(smp["q"]), axis=0) - log_t
        dg = np.median(smp["log_g"], axis=0) - comp.theory["log_g"]
    return float(np.nanmax(np.abs(dq))), float(np.nanmax(np.abs(dg)))


_FW_HEADER = ("| case | activation | point | weights | N | L | samples | beta | mean: verdict with "
              "allowance 2 beta | mean: verdict with 4 se only | typical: max abs(median log q_hat "
              "- log q) | typical: max abs(median log g_hat - log g) | time (s) |\n|" + " --- |" * 13)


def _fw_row(r: CaseResult) -> str:
    c = r.case
    if r.comparison is None:
        return f"| {c.name} | {c.activation} | {c.regime} | {r.error} |" + " |" * 9
    tq, tg = _typical(r)
    strict = r.strict.verdict if r.strict is not None else "-"
    return (f"| {c.name} | {c.activation} | {c.regime} | {c.weights} | {c.width_label} | "
            f"{c.depth} | {c.samples} | {c.beta:.2f} | {r.verdict} | {strict} | {_fmt(tq)} | "
            f"{_fmt(tg)} | {r.seconds:.1f} |")


_HEADER = ("| case | activation | point | sigma_w^2 | sigma_b^2 | weights | engine | N | L | inputs | "
           "samples | beta | max abs z | max z beyond allowance | worst field @ layer | verdict | "
           "time (s) |\n" + "|" + " --- |" * 17)


def write_report(results: list, out_dir: Path, *, title: str, command: str, wall: float,
                 figures: bool = True) -> Path:
    """Write ``out_dir/report.md`` (and ``out_dir/figures/<family>.png``); returns the path."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    if figures:
        fig_dir.mkdir(parents=True, exist_ok=True)
    expected = [r for r in results if r.counted]
    unexpected = [r for r in expected if r.verdict != "agree"]
    fw = [r for r in results if not r.counted]
    lines = [f"# {title}", "",
             f"Generated by `{command}` on {datetime.date.today().isoformat()} "
             f"(Python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs; "
             f"wall time {wall / 60:.1f} min). Every number below is reproducible: each case has a "
             "fixed seed (the CRC32 of its name).", "",
             "## The rule", "",
             "For every layer and every field (`q`, `c`, `log_g`, `log_G`; CONVENTIONS.md), the "
             "Monte Carlo mean of `simulate` and the mean-field value of `predict` agree when",
             "",
             "    |simulation - theory| <= 4 se + allowance,   allowance = 2 beta_l "
             "(relative for q, log units for log_g and log_G, absolute for c),",
             "",
             "with `beta_l` the sum of `1/N_k` over the layers the field has passed through "
             "(`signalprop.compare`, where the O(1/N)-per-layer allowance is derived). A case "
             "agrees when every layer of every field does. The column \"max z beyond allowance\" "
             "is the largest `(|diff| - allowance) / se`; the rule passes when it is <= 4.", "",
             f"A case is **expected to agree** when `beta = sum_l 1/N_l < {BETA_LIMIT}` (`B/N_l` "
             "for batch normalisation with batches of B), decided from its widths before it is "
             "run (`signalprop.compare.expected_to_agree`), and, for batch normalisation, B >= 6 "
             "(below it the gradient's per-layer factor has infinite variance). Cases with depth "
             "comparable to width are listed in their own section and do not affect the exit "
             "status.", "",
             "## Summary", "",
             f"- cases: {len(results)}; expected to agree: {len(expected)}, of which "
             f"**{len(expected) - len(unexpected)} agree** and **{len(unexpected)} do not**;",
             f"- expected to disagree (depth comparable to width, beta >= {BETA_LIMIT}): {len(fw)}; "
             f"in {sum(_typical(r)[1] > 1 for r in fw)} of them the typical (median) gradient "
             "variance is off the theory by more than a factor e;",
             f"- exit status: {1 if unexpected else 0}.", ""]
    if unexpected:
        lines += ["### Cases expected to agree that did not", ""]
        for r in unexpected:
            if r.comparison is None:
                lines.append(f"- `{r.case.name}`: the run failed: {r.error}"
                             + (f" *Note (added after the run):* {NOTES[r.case.name]}"
                                if r.case.name in NOTES else ""))
                continue
            f, layer, z, ex = r.comparison.worst()
            lines.append(f"- `{r.case.name}`: worst {f} at layer {layer}, z = {z:.1f}, "
                         f"{ex:.1f} se beyond the allowance."
                         + (f" *Note (added after the run):* {NOTES[r.case.name]}"
                            if r.case.name in NOTES else ""))
        lines.append("")
    families = [f for f in FAMILIES if any(r.case.family == f for r in results)]
    for fam in families:
        rows = [r for r in results if r.case.family == fam]
        heading = ("Where mean-field theory is expected to fail at finite width"
                   if fam == "finite-width" else f"Family: {fam}")
        lines += [f"## {heading}", "", FAMILIES[fam] + ".", ""]
        if fam == "finite-width":
            lines += [
                "Mean-field theory is the infinite-width limit at fixed depth. At finite width every "
                "layer multiplies the squared norms by a random factor whose fluctuations are "
                "O(1/N); over L layers they compound, so `log ||x^L||^2` and `log ||delta^l||^2` "
                "become Gaussian with a variance proportional to `beta = sum_l 1/N_l` (for relu with "
                "Gaussian weights, `log` of the normalised squared norm of `J u` is approximately "
                "N(-5 beta/2, 5 beta); Hanin & Nica 2019, Hanin & Rolnick 2018). When "
                "depth is comparable to width (beta of order one) the sample mean is carried by "
                "rare large samples while the typical sample (the median, dashed in the figure) "
                "drifts away from the theory, and the O(1/N) expansion behind the allowance no "
                "longer holds. For relu and linear networks with Gaussian weights and no bias the "
                "*means* stay exact at any width (Hanin 2018), so those can still agree on the "
                "mean while their medians show the log-normal drift; for nonlinear smooth "
                "activations the means drift as well.", ""]
        if fam == "finite-width":
            lines += [
                "Columns: the verdict of the standard rule on the means (its allowance `2 beta` is "
                "several log units here, so it says little), the verdict with 4 standard errors "
                "only, and the typical deviation: the largest distance over layers between the "
                "median of the per-sample `log q_hat` (`log g_hat`) and the theory's `log q` "
                "(`log g`). Mean-field theory describes the typical network only while beta is "
                "small; here the typical network is off by factors `e^1` to `e^10`. The figure "
                "draws the medians dashed.", "", _FW_HEADER] + [_fw_row(r) for r in rows] + [""]
        else:
            lines += [_HEADER] + [_row(r) for r in rows] + [""]
        if figures:
            name = f"{fam}.png"
            _family_figure(fam, rows, fig_dir / name)
            lines += [f"![{fam}](figures/{name})", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
