"""Time scales and the critical line of the vanilla (tanh) RNN and the minimalRNN at
initialisation: Chen, Pennington & Schoenholz (2018), "Dynamical isometry and a mean field theory
of RNNs: gating enables signal propagation in recurrent neural networks" (ICML; arXiv 1806.05394),
with signalprop.

    python papers/chen2018/reproduce.py            # the figures into papers/chen2018/ (~2 min)
    python papers/chen2018/reproduce.py --tables   # the README's tables (same Monte Carlo)
    python papers/chen2018/reproduce.py --update-readme   # ... written into README.md
    python papers/chen2018/reproduce.py --quick --out /tmp/x   # a smoke run (tests)

Statements used (LITERATURE.md secs. 8 and 21): [READ] the abstract (a maximum time scale over
which an RNN remembers its input; gated networks have a much broader trainable region; a closed-
form critical initialisation achieves dynamical isometry) and the minimalRNN's definition
``u_t = sigmoid(W h_{t-1} + U z_t + b)``, ``h_t = u_t h_{t-1} + (1 - u_t) z_t``; [RECALLED] the
vanilla recursion ``q_t = sigma_w^2 E[phi(sqrt(q_{t-1}) z)^2] + sigma_u^2 q_x + sigma_b^2``, time
scales ``xi = -1/log chi`` at the fixed point, the critical line ``chi_1 = 1`` with the input
acting as an extra bias, and the minimalRNN Jacobian ``diag(u) + diag((h - z) sigmoid') W``. Each
is checked here against an independent computation (the functions ``*_reference`` below: scipy
quadrature written out, not signalprop's), not taken on trust.

Vanilla cell (``sp.rnn("rnn", T, N, "tanh", sigma_w2, sigma_u2)``): the input process has
``q_x = 1`` and two sequences with independent inputs (``c_x = 0``), no bias, so the drive is
``D = sigma_u^2 q_x``. ``h_0`` is drawn at the fixed point (``q0 = (q* - D)/sigma_w^2``), so the
gradient decays from the first lag at the stationary rate: ``log g`` at lag k is ``k log chi_1``
(``predict`` is the exact infinite-width theory of the tied network for this cell,
docs/theory/recurrent.md). The decay rate of the simulation is the least-squares slope of
``log g`` over lags ``FIT`` with a jackknife standard error over the sampled networks.

minimalRNN (``sp.rnn("minimal", ..., gates={"gate": sp.Gate(sigma_w2, sigma_u2, mu)})``, ``z_t``
the input process with ``q_z = 1``): ``predict`` is the untied mean field of the paper (every
step's weights fresh), ``predict_tied`` the dynamical mean field of the tied network (solved on
sampled unit paths, with standard errors), ``simulate`` the tied network. Per-step gradient factor
of the untied theory at its fixed point ``chi = E[u^2] + sigma_w^2 E[sigmoid'^2] (q_h + q_z)``.
"""

from __future__ import annotations

import functools
import math
import pathlib
import sys

import numpy as np
from matplotlib.ticker import NullFormatter
from scipy import integrate, optimize

import signalprop as sp
from signalprop.plot import new_figure

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))          # papers/_common.py
from _common import README_BEGIN, README_END, readme_block, run, styled  # noqa: E402,F401

SEED = 1806_05394
# vanilla cell
DRIVE = 0.1                                   # sigma_u^2 q_x (q_x = 1, sigma_b^2 = 0)
T_VANILLA = 50
WIDTH_VANILLA = 512
SAMPLES_VANILLA = 8
SW2_VANILLA = (0.6, 1.0, 1.4, 2.6, 3.5)       # Monte Carlo rows (ordered and chaotic)
DRIVES = tuple(float(d) for d in np.geomspace(1e-3, 1.0, 13))   # critical line
# minimalRNN
T_MIN = 100
WIDTH_MIN = 512
SAMPLES_MIN = 8
SW2_MIN, SU2_MIN = 1.0, 1.0
MUS = (-1.0, 0.0, 1.0, 2.0, 3.0, 4.0)
PATHS, REPLICAS = 2048, 8                      # predict_tied
XI_LONG = (10.0, 20.0)                        # "long memory": |xi_grad| above these many steps
SW2_GRID = tuple(float(s) for s in np.geomspace(0.1, 30.0, 61))


def lag_slice(T: int) -> tuple[int, int]:
    """Lags used by the decay-rate fits: 2 .. T - 2 (vanilla: stationary from lag 0)."""
    return 2, T - 2


# ---------------------------------------------------------------------------------------------
# independent references (scipy quadrature; Chen et al. 2018 sec. 3, recalled, derived here)


def _gauss(f, q: float, mu: float = 0.0) -> float:
    """E[f(mu + sqrt(q) z)], z ~ N(0, 1), by scipy quad on the real line."""
    s = math.sqrt(q)
    return integrate.quad(lambda z: f(mu + s * z) * math.exp(-z * z / 2), -12, 12,
                          epsabs=1e-13, epsrel=1e-13, limit=200)[0] / math.sqrt(2 * math.pi)


def vanilla_reference(sigma_w2: float, drive: float) -> tuple[float, float]:
    """(q*, chi_1) of the tanh cell: q* = sigma_w^2 E[tanh(sqrt(q*) z)^2] + drive (Chen et al.
    2018 sec. 3, the input a bias of variance ``drive``), chi_1 = sigma_w^2 E[tanh'^2] at q*."""
    q = optimize.brentq(lambda q: sigma_w2 * _gauss(lambda x: math.tanh(x) ** 2, q) + drive - q,
                        drive * (1 - 1e-12), drive + sigma_w2 + 1.0, xtol=1e-15, rtol=1e-14)
    return q, sigma_w2 * _gauss(lambda x: 1 / math.cosh(x) ** 4, q)


def critical_sigma_w2_reference(drive: float) -> float:
    """sigma_w^2 on the critical line chi_1(q*) = 1 at ``drive`` (independent route)."""
    return optimize.brentq(lambda s: vanilla_reference(s, drive)[1] - 1, 0.9, 20.0,
                           xtol=1e-13, rtol=1e-13)


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def minimal_reference(sigma_w2: float, sigma_u2: float, mu: float,
                      q_z: float = 1.0) -> tuple[float, float]:
    """(q_h*, chi) of the untied minimalRNN: q_h = E[u^2] q_h + E[(1-u)^2] q_z with
    u = sigmoid(a), a ~ N(mu, sigma_w^2 q_h + sigma_u^2 q_z) (E[h z] = 0: fresh inputs), and the
    mean squared singular value of diag(u) + diag(sigmoid'(a) (h - z)) W, chi = E[u^2] +
    sigma_w^2 E[sigmoid'^2] (q_h + q_z) (gradient independence)."""
    def moments(q):
        v = sigma_w2 * q + sigma_u2 * q_z
        return (_gauss(lambda a: _sig(a) ** 2, v, mu), _gauss(lambda a: (1 - _sig(a)) ** 2, v, mu),
                _gauss(lambda a: (_sig(a) * (1 - _sig(a))) ** 2, v, mu))
    def gap(q):
        u2, w2, _ = moments(q)
        return u2 * q + w2 * q_z - q
    q = optimize.brentq(gap, 1e-9, 1.0 * q_z + 1e-9, xtol=1e-15, rtol=1e-14)
    u2, _, s2 = moments(q)
    return q, u2 + sigma_w2 * s2 * (q + q_z)


# ---------------------------------------------------------------------------------------------
# vanilla cell with signalprop


@functools.lru_cache(maxsize=256)
def timescales(sigma_w2: float, drive: float = DRIVE) -> sp.RNNTimescales:
    return sp.rnn_timescales("tanh", sigma_w2, drive, 0.0, 1.0, 0.0)


@functools.lru_cache(maxsize=64)
def critical_sigma_w2(drive: float) -> float:
    """chi_1(q*) = 1 by brentq on signalprop's ``rnn_timescales``."""
    return optimize.brentq(lambda s: timescales(s, drive).chi_1 - 1, 0.9, 20.0, xtol=1e-10)


def vanilla_network(sigma_w2: float, T: int = T_VANILLA, width: int = WIDTH_VANILLA):
    return sp.rnn("rnn", T, width, "tanh", sigma_w2=sigma_w2, sigma_u2=DRIVE, q_x=1.0, c_x=0.0)


def stationary_q0(sigma_w2: float) -> float:
    """E[h^2] at the fixed point: (q* - D) / sigma_w^2, so step 1 starts at q*."""
    return (timescales(sigma_w2).q_star - DRIVE) / sigma_w2


def fit_rate(log_g: np.ndarray, lo: int, hi: int) -> float:
    """Least-squares slope of log g against the lag k = T - t over lags lo..hi (per step)."""
    T = len(log_g)
    lags = np.arange(lo, hi + 1)
    return float(np.polyfit(lags, log_g[T - 1 - lags], 1)[0])


def rate_with_se(mc: sp.Profile, lo: int, hi: int) -> tuple[float, float]:
    """The decay rate of a simulated profile and its jackknife standard error over networks
    (leave one network out of the mean of g, then log, then the slope)."""
    g = np.exp(mc.samples["log_g"])                  # (samples, T)
    n = g.shape[0]
    rate = fit_rate(np.log(g.mean(0)), lo, hi)
    loo = np.array([fit_rate(np.log((g.sum(0) - g[i]) / (n - 1)), lo, hi) for i in range(n)])
    return rate, float(math.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)))


@functools.lru_cache(maxsize=2)
def vanilla_monte_carlo(quick: bool = False) -> dict:
    sw2s, samples, T = ((0.6, 2.6), 3, 20) if quick else (SW2_VANILLA, SAMPLES_VANILLA, T_VANILLA)
    out = {}
    for i, s in enumerate(sw2s):
        net = vanilla_network(s, T)
        mc = sp.simulate(net, samples, seed=SEED + i, q0=stationary_q0(s), return_samples=True)
        th = sp.predict(net, q0=stationary_q0(s))
        out[s] = (th, mc, sp.compare(th, mc).verdict)
    return out


# ---------------------------------------------------------------------------------------------
# minimalRNN with signalprop


def minimal_network(mu: float, sigma_w2: float = SW2_MIN, T: int = T_MIN,
                    width: int = WIDTH_MIN) -> sp.Network:
    return sp.rnn("minimal", T, width, gates={"gate": sp.Gate(sigma_w2, SU2_MIN, mu)},
                  q_x=1.0, c_x=0.0)


@functools.lru_cache(maxsize=256)
def minimal_fixed_point(mu: float, sigma_w2: float = SW2_MIN) -> tuple[float, float]:
    """(q_h*, chi) of the untied theory from signalprop: predict over a long run (the last
    step's q and per-step gradient factor)."""
    p = sp.predict(minimal_network(mu, sigma_w2, T=2000, width=64), q0=0.5)
    return float(p.q[-1]), float(math.exp(p.log_g[-2] - p.log_g[-1]))


def minimal_xi(mu: float, sigma_w2: float = SW2_MIN) -> float:
    """Gradient time scale -1/log chi of the untied theory (inf at chi = 1)."""
    chi = minimal_fixed_point(mu, sigma_w2)[1]
    return math.inf if chi == 1 else -1 / math.log(chi)


@functools.lru_cache(maxsize=2)
def minimal_runs(quick: bool = False) -> dict:
    mus, samples, T, paths, reps = ((0.0, 3.0), 3, 20, 256, 2) if quick else \
        (MUS, SAMPLES_MIN, T_MIN, PATHS, REPLICAS)
    out = {}
    for i, mu in enumerate(mus):
        net = minimal_network(mu, T=T)
        q0 = minimal_fixed_point(mu)[0]
        untied = sp.predict(net, q0=q0)
        tied = sp.predict_tied(net, q0=q0, paths=paths, replicas=reps, seed=SEED + i,
                               progress=False)
        mc = sp.simulate(net, samples, seed=SEED + 100 + i, q0=q0, return_samples=True)
        out[mu] = (untied, tied, mc, sp.compare(untied, mc).verdict, sp.compare(tied, mc).verdict)
    return out


def vanilla_xi(sigma_w2: float) -> float:
    return timescales(sigma_w2).xi_grad


def long_memory_range(xi_of, threshold: float,
                      grid=SW2_GRID) -> tuple[float, float] | None:
    """The smallest and largest sigma_w^2 of ``grid`` with |xi_grad| > threshold (None: none)."""
    ok = [s for s in grid if abs(xi_of(s)) > threshold]
    return (min(ok), max(ok)) if ok else None


# ---------------------------------------------------------------------------------------------
# tables


def _verdict(ok: bool) -> str:
    return "agree" if ok else "**differ**"


def tables(quick: bool = False) -> str:
    sc = critical_sigma_w2(DRIVE)
    rows = [f"Vanilla tanh cell, drive D = sigma_u^2 q_x = {DRIVE} (no bias): the critical line "
            "and "
            "the time scales (theory; reference = scipy quadrature written out in reproduce.py):",
            "", "| quantity | signalprop | independent reference |", "| --- | --- | --- |",
            f"| critical sigma_w^2 (chi_1(q*) = 1) | {sc:.8f} | "
            f"{critical_sigma_w2_reference(DRIVE):.8f} |"]
    for s in (0.6, 1.4, 2.6):
        ts, (q, chi) = timescales(s), vanilla_reference(s, DRIVE)
        rows.append(f"| q*, chi_1 at sigma_w^2 = {s} | {ts.q_star:.8f}, {ts.chi_1:.8f} | "
                    f"{q:.8f}, {chi:.8f} |")
    for eps in (1e-2, 1e-4, 1e-6):
        rows.append(f"| xi_grad at sigma_w^2 = crit - {eps:g} | {timescales(sc - eps).xi_grad:.4g} "
                    "| diverges as 1/eps |")
    rows += ["", "Critical line against the drive (an extra bias; sigma_b^2 = 0):", "",
             "| D | critical sigma_w^2 | reference |", "| --- | --- | --- |"]
    for d in (DRIVES[::4] if not quick else DRIVES[:1]):
        rows.append(f"| {d:.4g} | {critical_sigma_w2(d):.6f} | "
                    f"{critical_sigma_w2_reference(d):.6f} |")
    mc = vanilla_monte_carlo(quick)
    T = T_VANILLA if not quick else 20
    lo, hi = lag_slice(T)
    rows += ["", "Vanilla cell, gradient decay rate per step (slope of log g over lags "
             f"{lo}..{hi}; "
             f"Monte Carlo: N = {WIDTH_VANILLA}, T = {T}, {SAMPLES_VANILLA if not quick else 3} "
             "networks with tied weights, jackknife se; `compare`: verdict of the whole profile):",
             "", "| sigma_w^2 | phase | xi_grad | theory rate log chi_1 | Monte Carlo rate | "
             "relative difference | within 10% | compare |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s, (th, m, verdict) in mc.items():
        ts = timescales(s)
        r, se = rate_with_se(m, lo, hi)
        rel = r / math.log(ts.chi_1) - 1
        rows.append(f"| {s} | {ts.regime} | {ts.xi_grad:.3f} | {math.log(ts.chi_1):.4f} | "
                    f"{r:.4f} +- {se:.4f} | {rel:+.3f} | {_verdict(abs(rel) < 0.1)} | {verdict} |")
    runs = minimal_runs(quick)
    T = T_MIN if not quick else 20
    lo, hi = 10 if not quick else 2, T - 10 if not quick else T - 2
    rows += ["", f"minimalRNN (sigma_w^2 = {SW2_MIN}, sigma_u^2 = {SU2_MIN}, q_z = 1, h_0 at the "
             f"untied q_h*): gradient decay rate per step over lags {lo}..{hi}, untied theory "
             "(`predict`, the paper's mean field), tied theory (`predict_tied`, "
             f"{PATHS if not quick else 256} paths x {REPLICAS if not quick else 2} replicas) and "
             f"tied simulation (N = {WIDTH_MIN}, {SAMPLES_MIN if not quick else 3} networks); "
             "log g at the longest lag; `compare` verdicts of the whole profile:", "",
             "| mu | q_h* (ref) | chi untied: signalprop | reference | untied rate | tied rate | "
             "simulated rate | log g(T-1): untied | tied | simulated | compare untied | "
             "compare tied |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for mu, (un, ti, m, v_un, v_ti) in runs.items():
        q_ref, chi_ref = minimal_reference(SW2_MIN, SU2_MIN, mu)
        chi = minimal_fixed_point(mu)[1]
        r, se = rate_with_se(m, lo, hi)
        rows.append(
            f"| {mu:g} | {q_ref:.6f} | {chi:.8f} | {chi_ref:.8f} | "
            f"{fit_rate(un.log_g, lo, hi):.4f} | "
            f"{fit_rate(ti.log_g, lo, hi):.4f} | {r:.4f} +- {se:.4f} | {un.log_g[0]:.2f} | "
            f"{ti.log_g[0]:.2f} +- {ti.log_g_se[0]:.2f} | "
            f"{m.log_g[0]:.2f} +- {m.log_g_se[0]:.2f} | "
            f"{v_un} | {v_ti} |")
    fmt = (lambda r: "none" if r is None else f"{r[0]:.3g} .. {r[1]:.3g} "
           f"(factor {r[1] / r[0]:.3g})")
    grid = SW2_GRID[::10] if quick else SW2_GRID
    rows += ["", f"Range of sigma_w^2 (grid of {len(grid)} values, 0.1 .. 30, log spaced) with "
             "a gradient time scale |xi_grad| above a threshold (untied theory; for the vanilla "
             "cell also the chaotic side, where gradients grow):", "",
             "| cell | " + " | ".join(f"\\|xi_grad\\| > {x:g}" for x in XI_LONG) + " |",
             "| --- | --- | --- |",
             f"| vanilla tanh, D = {DRIVE} | " + " | ".join(
                 fmt(long_memory_range(vanilla_xi, x, grid)) for x in XI_LONG) + " |"]
    for mu in (2.0, 4.0):
        rows.append(f"| minimalRNN, mu = {mu:g}, sigma_u^2 = {SU2_MIN} | " + " | ".join(
            fmt(long_memory_range(lambda s: minimal_xi(mu, s), x, grid)) for x in XI_LONG) + " |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# figures


@styled
def figure_vanilla(out: pathlib.Path, quick: bool) -> pathlib.Path:
    fig, axes = new_figure(1, 3, 4.4, 3.6)
    ax, bx, cx = axes[0, 0], axes[0, 1], axes[0, 2]
    sc = critical_sigma_w2(DRIVE)
    grid = np.geomspace(0.3, 6.0, 25 if quick else 120)
    ax.plot(grid, [abs(timescales(s).xi_grad) for s in grid], label=r"$|\xi_{grad}|$")
    ax.plot(grid, [abs(timescales(s).xi_c) for s in grid], label=r"$\xi_c$")
    ax.axvline(sc, color="0.5", ls=":", label=rf"critical $\sigma_w^2$ = {sc:.4f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(r"$\sigma_w^2$")
    ax.set_ylabel("time scale (steps)")
    ax.set_title(f"tanh RNN, D = {DRIVE}", fontsize=9)
    ax.legend(fontsize=7)
    drives = DRIVES[:4] if quick else DRIVES
    bx.plot([critical_sigma_w2(d) for d in drives], drives, "-o", ms=3)
    bx.set_yscale("log")
    bx.set_xlabel(r"critical $\sigma_w^2$")
    bx.set_ylabel(r"drive $D = \sigma_u^2 q_x + \sigma_b^2$")
    bx.text(0.05, 0.9, "ordered (left) / chaotic (right)", transform=bx.transAxes, fontsize=7)
    mc = vanilla_monte_carlo(quick)
    for s, (th, m, _) in mc.items():
        T = len(th.log_g)
        lags = T - 1 - np.arange(T)
        line, = cx.plot(lags, th.log_g, label=rf"$\sigma_w^2$ = {s}")
        cx.errorbar(lags[::3], m.log_g[::3], yerr=2 * m.log_g_se[::3], fmt="o", ms=2.5,
                    color=line.get_color())
    cx.set_xlabel("lag k = T - t")
    cx.set_ylabel(r"$\log g$")
    cx.set_title(f"theory (lines), Monte Carlo N = {WIDTH_VANILLA} (points)", fontsize=9)
    cx.legend(fontsize=7)
    path = out / "fig_vanilla.png"
    fig.savefig(path, dpi=130)
    return path


@styled
def figure_minimal(out: pathlib.Path, quick: bool) -> pathlib.Path:
    fig, axes = new_figure(1, 3, 4.4, 3.6)
    ax, bx, cx = axes[0, 0], axes[0, 1], axes[0, 2]
    runs = minimal_runs(quick)
    for mu, (un, ti, m, _, _) in runs.items():
        T = len(un.log_g)
        lags = T - 1 - np.arange(T)
        line, = ax.plot(lags, ti.log_g, label=f"mu = {mu:g}")
        ax.fill_between(lags, ti.log_g - 2 * ti.log_g_se, ti.log_g + 2 * ti.log_g_se,
                        color=line.get_color(), alpha=0.3, lw=0)
        ax.plot(lags, un.log_g, ls="--", color=line.get_color(), lw=1)
        ax.errorbar(lags[::6], m.log_g[::6], yerr=2 * m.log_g_se[::6], fmt="o", ms=2.5,
                    color=line.get_color())
    ax.set_xlabel("lag k")
    ax.set_ylabel(r"$\log g$")
    ax.set_title("minimalRNN: tied theory (solid), untied (dashed), simulation", fontsize=8)
    ax.legend(fontsize=7)
    mus = np.linspace(-2, 6, 5 if quick else 33)
    bx.plot(mus, [minimal_xi(float(m)) for m in mus], label="untied theory, -1/log chi")
    gate_only = [-1 / math.log(_gauss(lambda a: _sig(a) ** 2, SW2_MIN * minimal_fixed_point(
        float(m))[0] + SU2_MIN, float(m))) for m in mus]
    bx.plot(mus, gate_only, ls=":", label=r"gate only, $-1/\log E[u^2]$")
    bx.set_yscale("log")
    bx.set_xlabel(r"gate bias $\mu$")
    bx.set_ylabel(r"$\xi_{grad}$ (steps)")
    bx.legend(fontsize=7)
    grid = SW2_GRID[::10] if quick else SW2_GRID
    cx.plot(grid, [abs(vanilla_xi(s)) for s in grid], label=f"vanilla tanh, D = {DRIVE}")
    for mu in (0.0, 2.0, 4.0):
        cx.plot(grid, [abs(minimal_xi(mu, s)) for s in grid], label=f"minimalRNN, mu = {mu:g}")
    for x in XI_LONG:
        cx.axhline(x, color="0.5", ls=":")
    cx.set_xscale("log")
    cx.set_yscale("log")
    cx.xaxis.set_minor_formatter(NullFormatter())
    cx.set_xlabel(r"$\sigma_w^2$")
    cx.set_ylabel(r"$|\xi_{grad}|$ (steps)")
    cx.legend(fontsize=7)
    path = out / "fig_minimal.png"
    fig.savefig(path, dpi=130)
    return path


def main(argv=None) -> int:
    return run(__doc__, HERE, "a tiny run (2 settings per cell, T = 20, 3 networks)", tables,
               [figure_vanilla, figure_minimal], argv)


if __name__ == "__main__":
    sys.exit(main())
