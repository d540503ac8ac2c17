"""Gradient time scales of LSTMs and GRUs against the forget/update-gate bias, and a critical-style
initialisation against the standard one: Gilboa, Chang, Chen, Yang, Schoenholz, Chi & Pennington
(2019), "Dynamical isometry and a mean field theory of LSTMs and GRUs" (arXiv 1901.08987), with
signalprop.

    python papers/gilboa2019/reproduce.py            # the figures into papers/gilboa2019/ (~2 min)
    python papers/gilboa2019/reproduce.py --tables   # the README's tables (same runs)
    python papers/gilboa2019/reproduce.py --update-readme   # ... written into README.md
    python papers/gilboa2019/reproduce.py --quick --out /tmp/x   # a smoke run (tests)

Statements used (LITERATURE.md secs. 8 and 22): [READ] the abstract and introduction (a mean-field
theory of LSTMs and GRUs gives the time scales of signal propagation and the Jacobian spectra;
optimising them over the initialisation hyperparameters gives an initialisation with which long
sequence tasks train where "a standard initialization either fails completely or is orders of
magnitude slower"; trainable configurations lie in a low-dimensional subspace); [RECALLED, low to
medium] gate pre-activations ``W^k h + U^k x + b^k`` with ``b^k ~ N(mu_k, rho_k^2)``, the
critical initialisation takes a large forget (update) gate bias and small gate weight variances;
its numbers were not retrieved. [RECALLED, high] PyTorch's default: every weight and bias
``U(-1/sqrt(H), 1/sqrt(H))``.

Three descriptions of the same networks side by side:

* ``predict``: the untied mean field (every step's weights fresh), the papers' approximation;
* ``predict_tied``: the tied network's infinite-width theory (a dynamical mean field solved on
  sampled unit paths; standard errors from independent replicas; docs/theory/recurrent.md,
  "Tied weights");
* ``simulate``: finite tied networks (N = 256), backprop through time by hand.

Cells: ``sp.rnn("lstm" | "gru", T, N, gates={...})`` with ``sp.Gate(sigma_w2, sigma_u2, mu,
sigma_b2)``; the input process has ``q_x = 1`` (``n_x = N``), ``h_0`` has ``q0 = Q0``, the LSTM's
``c_0 = 0``. Unless a table says otherwise every gate has ``sigma_w^2 = sigma_u^2 = 1`` and bias 0,
and the forget (LSTM) or update (GRU) gate's bias mean ``mu`` is scanned. The gradient decay rate
is the least-squares slope of ``log g`` against the lag over lags ``FIT`` (away from the start,
whose transient the LSTM's ``c_0 = 0`` makes unavoidable); ``xi = -1/rate``.
"""

from __future__ import annotations

import functools
import math
import pathlib
import sys

import numpy as np
from scipy import integrate

import signalprop as sp
from signalprop.plot import new_figure

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))          # papers/_common.py
from _common import README_BEGIN, README_END, readme_block, run, styled  # noqa: E402,F401

SEED = 1901_08987
T = 100
WIDTH = 256
SAMPLES = 8
PATHS, REPLICAS = 2048, 8
Q0 = 0.3
FIT = (5, 50)                                  # lags of the rate fits (steps 50..95)
MUS = (0.0, 1.0, 2.0, 3.0, 4.0)                # forget / update bias means scanned
GATE_OF = {"lstm": "forget", "gru": "update"}

#: PyTorch's default (U(-1/sqrt(H), 1/sqrt(H)) for every weight and both biases, H = N = n_x):
#: weight variances 1/(3H) -> sigma^2 = 1/3; bias b_ih + b_hh of variance 2/(3H).
STANDARD_W2 = 1.0 / 3.0


def standard_gates(cell: str, width: int = WIDTH) -> dict:
    return {k: sp.Gate(STANDARD_W2, STANDARD_W2, 0.0, 2.0 / (3.0 * width))
            for k in gate_names(cell)}


def critical_gates(cell: str) -> dict:
    """A setting that follows the recalled recipe (large forget/update bias, small gate weight
    variances; candidate weights at variance 1): ours, not the paper's numbers (not retrieved)."""
    small = sp.Gate(0.1, 0.1, 0.0)
    if cell == "lstm":
        return {"forget": sp.Gate(0.1, 0.1, 5.0), "input": small, "output": small,
                "candidate": sp.Gate(1.0, 1.0, 0.0)}
    return {"update": sp.Gate(0.1, 0.1, 5.0), "reset": small, "candidate": sp.Gate(1.0, 1.0, 0.0)}


def network(cell: str, gates: dict, steps: int = T, width: int = WIDTH) -> sp.Network:
    return sp.rnn(cell, steps, width, gates=gates, q_x=1.0, c_x=0.0)


def gate_names(cell: str) -> tuple[str, ...]:
    return ("forget", "input", "output", "candidate") if cell == "lstm" else \
        ("update", "reset", "candidate")


def bias_gates(cell: str, mu: float) -> dict:
    """Every gate at sigma_w^2 = sigma_u^2 = 1, bias 0, the forget/update gate's bias ``mu``."""
    gates = {k: sp.Gate(1.0, 1.0, 0.0) for k in gate_names(cell)}
    gates[GATE_OF[cell]] = sp.Gate(1.0, 1.0, mu)
    return gates


def fit_rate(log_g: np.ndarray, lo: int, hi: int) -> float:
    """Least-squares slope of log g against the lag k = T - t over lags lo..hi."""
    n = len(log_g)
    lags = np.arange(lo, min(hi, n - 1) + 1)
    return float(np.polyfit(lags, log_g[n - 1 - lags], 1)[0])


def rate_with_se(mc: sp.Profile, lo: int, hi: int) -> tuple[float, float]:
    """Decay rate of a simulated profile and its jackknife standard error over networks."""
    g = np.exp(mc.samples["log_g"])
    n = g.shape[0]
    rate = fit_rate(np.log(g.mean(0)), lo, hi)
    loo = np.array([fit_rate(np.log((g.sum(0) - g[i]) / (n - 1)), lo, hi) for i in range(n)])
    return rate, float(math.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)))


def tied_rate_se(tied: sp.Profile, lo: int, hi: int) -> float:
    """Standard error of the tied theory's rate: the replicas' spread of log g at the two ends
    of the fit window, combined as for a two-point slope (conservative: ignores correlation)."""
    n = len(tied.log_g)
    a, b = tied.log_g_se[n - 1 - lo], tied.log_g_se[n - 1 - min(hi, n - 1)]
    return float(math.hypot(a, b) / (min(hi, n - 1) - lo))


def _gauss(f, v: float, mu: float) -> float:
    s = math.sqrt(v)
    return integrate.quad(lambda z: f(mu + s * z) * math.exp(-z * z / 2), -12, 12,
                          epsabs=1e-13, epsrel=1e-13, limit=200)[0] / math.sqrt(2 * math.pi)


def cell_path_xi(mu: float, v: float) -> float:
    """-1/log E[f^2], f = sigmoid(a), a ~ N(mu, v): the bare cell path's gradient time scale
    (docs/theory/recurrent.md, LSTM; large mu: 1 - E[f^2] ~ 2 exp(-mu) E[exp(-(a - mu))] ->
    xi ~ exp(mu - v/2) / 2)."""
    ef2 = _gauss(lambda a: 1 / (1 + math.exp(-a)) ** 2, v, mu)
    return -1 / math.log(ef2)


@functools.lru_cache(maxsize=64)
def three_ways(cell: str, kind: str, mu: float, quick: bool) -> tuple:
    """(untied, tied, simulated, compare(untied, sim), compare(tied, sim)) for one setting;
    ``kind``: "bias" (scan of mu), "standard" or "critical"."""
    steps, samples, paths, reps = (30, 3, 256, 2) if quick else (T, SAMPLES, PATHS, REPLICAS)
    gates = bias_gates(cell, mu) if kind == "bias" else \
        standard_gates(cell) if kind == "standard" else critical_gates(cell)
    net = network(cell, gates, steps)
    seed = SEED + 1000 * ("lstm", "gru").index(cell) + 100 * ("bias", "standard",
                                                               "critical").index(kind) + int(mu)
    untied = sp.predict(net, q0=Q0)
    tied = sp.predict_tied(net, q0=Q0, paths=paths, replicas=reps, seed=seed, progress=False)
    mc = sp.simulate(net, samples, seed=seed, q0=Q0, return_samples=True)
    return untied, tied, mc, sp.compare(untied, mc).verdict, sp.compare(tied, mc).verdict


def fit_window(quick: bool) -> tuple[int, int]:
    return (3, 20) if quick else FIT


def forget_variance(cell: str, mu: float, quick: bool) -> float:
    """The forget/update gate pre-activation variance at the end of the untied run:
    sigma_w^2 q_h + sigma_u^2 q_x (all 1 here)."""
    return float(three_ways(cell, "bias", mu, quick)[0].q[-1]) + 1.0


# ---------------------------------------------------------------------------------------------
# tables


def tables(quick: bool = False) -> str:
    lo, hi = fit_window(quick)
    mus = MUS[::2] if quick else MUS
    rows = []
    for cell in ("lstm", "gru"):
        gate = GATE_OF[cell]
        rows += [f"{cell.upper()}: gradient decay rate per step (slope of log g against the lag "
                 "over "
                 f"lags {lo}..{hi}, T = {30 if quick else T}; negative: decay with time scale "
                 f"xi = -1/rate; positive: growth) against the {gate} gate's bias mean mu (every "
                 "gate sigma_w^2 = sigma_u^2 = 1); bare gate path log E[f^2] at the untied "
                 "pre-activation variance; untied theory (`predict`), tied theory "
                 f"(`predict_tied`), tied simulation (N = {WIDTH}, {3 if quick else SAMPLES} "
                 "networks, jackknife se); `compare` verdicts of the whole profile:", "",
                 "| mu | gate path | rate untied (xi) | rate tied | rate simulated | "
                 "tied vs sim (z) | "
                 "untied vs sim (z) | compare untied | compare tied |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for mu in mus:
            un, ti, mc, v_un, v_ti = three_ways(cell, "bias", mu, quick)
            r_un, r_ti = fit_rate(un.log_g, lo, hi), fit_rate(ti.log_g, lo, hi)
            r_mc, se = rate_with_se(mc, lo, hi)
            se_ti = tied_rate_se(ti, lo, hi)
            z, z_un = (r_ti - r_mc) / math.hypot(se, se_ti), (r_un - r_mc) / se
            gp = -1 / cell_path_xi(mu, forget_variance(cell, mu, quick))
            rows.append(f"| {mu:g} | {gp:.4f} | {r_un:.4f} ({-1 / r_un:.2f}) | {r_ti:.4f} +- "
                        f"{se_ti:.4f} | {r_mc:.4f} +- {se:.4f} | {z:+.1f} | {z_un:+.1f} | "
                        f"{v_un} | {v_ti} |")
        rows.append("")
    rows += [f"Standard (PyTorch default: sigma_w^2 = sigma_u^2 = 1/3, bias U(+-1/sqrt(H)), "
             f"sigma_b^2 = 2/(3N)) against a critical-style initialisation (ours: forget/update "
             "bias 5, gate weight variances 0.1, candidate 1): log g at the longest lag "
             f"(T - 1 = {29 if quick else T - 1} steps back) and the decay rate:", "",
             "| cell | init | log g(T-1) untied | tied | simulated | rate untied | rate tied | "
             "rate simulated | compare untied | compare tied |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for cell in ("lstm", "gru"):
        for kind in ("standard", "critical"):
            un, ti, mc, v_un, v_ti = three_ways(cell, kind, 0.0, quick)
            r_mc, se = rate_with_se(mc, lo, hi)
            rows.append(f"| {cell} | {kind} | {un.log_g[0]:.2f} | {ti.log_g[0]:.2f} +- "
                        f"{ti.log_g_se[0]:.2f} | {mc.log_g[0]:.2f} +- {mc.log_g_se[0]:.2f} | "
                        f"{fit_rate(un.log_g, lo, hi):.4f} | {fit_rate(ti.log_g, lo, hi):.4f} | "
                        f"{r_mc:.4f} +- {se:.4f} | {v_un} | {v_ti} |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# figures


@styled
def figure_timescales(out: pathlib.Path, quick: bool) -> pathlib.Path:
    lo, hi = fit_window(quick)
    fig, axes = new_figure(1, 2, 4.8, 3.6)
    mus = MUS[::2] if quick else MUS
    fine = np.linspace(mus[0], mus[-1], 5 if quick else 17)
    for ax, cell in zip(axes[0], ("lstm", "gru")):
        steps = 30 if quick else T
        r_un = [fit_rate(sp.predict(network(cell, bias_gates(cell, float(m)), steps),
                                    q0=Q0).log_g, lo, hi) for m in fine]
        ax.plot(fine, r_un, color="#1f77b4", ls="--", label="untied theory (predict)")
        ax.plot(mus, [-1 / cell_path_xi(m, forget_variance(cell, m, quick)) for m in mus], "x",
                color="0.4", label=r"gate path $\log E[f^2]$")
        ti = [three_ways(cell, "bias", m, quick) for m in mus]
        ax.errorbar(mus, [fit_rate(t[1].log_g, lo, hi) for t in ti],
                    yerr=[2 * tied_rate_se(t[1], lo, hi) for t in ti], fmt="-o", ms=4,
                    color="#d62728", label="tied theory (predict_tied)")
        mcs = [rate_with_se(t[2], lo, hi) for t in ti]
        ax.errorbar(mus, [r for r, _ in mcs], yerr=[2 * e for _, e in mcs], fmt="s", ms=4,
                    mfc="none", color="k", label=f"tied simulation N = {WIDTH}")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xlabel(f"{GATE_OF[cell]} gate bias mean $\\mu$")
        ax.set_ylabel("gradient rate per step (slope of log g vs lag)")
        ax.set_title(cell.upper(), fontsize=9)
        ax.legend(fontsize=7)
    path = out / "fig_timescales.png"
    fig.savefig(path, dpi=130)
    return path


@styled
def figure_critical(out: pathlib.Path, quick: bool) -> pathlib.Path:
    fig, axes = new_figure(1, 2, 4.8, 3.6)
    colours = {"standard": "#d62728", "critical": "#1f77b4"}
    for ax, cell in zip(axes[0], ("lstm", "gru")):
        for kind in ("standard", "critical"):
            un, ti, mc, _, _ = three_ways(cell, kind, 0.0, quick)
            lags = len(un.log_g) - 1 - np.arange(len(un.log_g))
            c = colours[kind]
            ax.plot(lags, un.log_g, ls="--", color=c, lw=1)
            ax.plot(lags, ti.log_g, color=c, label=f"{kind}: tied theory")
            ax.fill_between(lags, ti.log_g - 2 * ti.log_g_se, ti.log_g + 2 * ti.log_g_se,
                            color=c, alpha=0.3, lw=0)
            ax.errorbar(lags[::5], mc.log_g[::5], yerr=2 * mc.log_g_se[::5], fmt="o", ms=2.5,
                        color=c, label=f"{kind}: simulation N = {WIDTH}")
        ax.set_xlabel("lag k = T - t")
        ax.set_ylabel(r"$\log g$")
        ax.set_title(f"{cell.upper()} (dashed: untied theory)", fontsize=9)
        ax.legend(fontsize=7)
    path = out / "fig_critical.png"
    fig.savefig(path, dpi=130)
    return path


def main(argv=None) -> int:
    return run(__doc__, HERE, "a tiny run (T = 30, 3 networks, 256 paths x 2 replicas)", tables,
               [figure_timescales, figure_critical], argv)


if __name__ == "__main__":
    sys.exit(main())
