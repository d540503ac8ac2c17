"""Mean-field figures of Poole, Lahiri, Raghu, Sohl-Dickstein & Ganguli (2016), "Exponential
expressivity in deep neural networks through transient chaos" (arXiv 1606.05340), with signalprop.

    python papers/poole2016/reproduce.py               # figures into papers/poole2016/
    python papers/poole2016/reproduce.py --grid-step 1 # the paper's full 41 x 41 grid (slower)
    python papers/poole2016/reproduce.py --tables      # the README's comparison tables (markdown)
    python papers/poole2016/reproduce.py --update-readme   # ... written into README.md
    python papers/poole2016/reproduce.py --quick --out /tmp/x   # a smoke run (tests)

Conventions: the paper labels its networks by STANDARD DEVIATIONS (sigma_w, sigma_b); signalprop
takes VARIANCES, so every call below passes ``sigma_w2 = sigma_w**2``, ``sigma_b2 = sigma_b**2``
(the paper's "sigma_b = 0.3" is sigma_b^2 = 0.09). Activation: tanh. Everything drawn is computed
by the public API (``predict``, ``fixed_point``, ``length_map``, ``correlation_map``,
``critical_sigma_w2``, ``phase_diagram``; ``simulate`` for the Monte Carlo points).
"""

from __future__ import annotations

import functools
import math
import pathlib
import sys
import time

import numpy as np

import signalprop as sp
from signalprop.gaussian import expect
from signalprop.plot import plot_phase_diagram, plot_profile, save

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))          # papers/_common.py
from _common import (README_BEGIN, README_END, agrees, decimals, flat_figure,  # noqa: E402,F401
                     parser, readme_block, styled, table_options)

ACT = "tanh"

# --- the paper's parameters (LITERATURE.md sec. 1, read from ganguli-lab/deepchaos) --------------
SIGMA_B = 0.3                                   # standard deviation; sigma_b^2 = 0.09
SIGMA_WS = (1.3, 2.5, 4.0)                      # widxs = [3, 15, 30] of the sigma_w grid
COLORS = ("#1f77b4", "#2ca02c", "#d62728")
Q_RANGE = np.linspace(0.0, 15.0, 100)           # Fig. 1A
Q_STARTS = Q_RANGE[[26, 53, 80]]                # Fig. 1B: 3.94, 8.03, 12.12
Q_STEPS = 7                                     # Fig. 1B: 7 layers
C_RANGE = np.linspace(0.0, 1.0, 51)             # Fig. 2A
C_STARTS = (0.2, 0.5, 0.8)                      # Fig. 2B
C_STEPS = 30                                    # Fig. 2B: layers 0..30
GRID_SW = np.linspace(1.0, 5.0, 41)             # sigma_w (std)
GRID_SB = np.linspace(0.0, 4.0, 41)             # sigma_b (std)
WIDTH = 1000                                    # Monte Carlo width N_l, as in the paper
MC_SAMPLES = 30
MC_ENGINE = "matrix-free"                       # exact O(N) sampler of the same law as "dense"

# --- recorded values: LITERATURE.md, all tagged [NUM] (independent quadrature) -------------------
RECORDED_NETWORKS = {   # (sigma_w, sigma_b): q*, chi_1, chi_2, c*       (LITERATURE.md sec. 1)
    (1.3, 0.3): {"q_star": "0.60705", "chi_1": "0.93981", "chi_2": "0.54347", "c_star": "1"},
    (2.5, 0.3): {"q_star": "4.07912", "chi_1": "1.58522", "chi_2": "1.19604", "c_star": "0.12210"},
    (4.0, 0.3): {"q_star": "12.60415", "chi_1": "2.36726", "chi_2": "1.85718", "c_star": "0.02964"},
}
RECORDED_CMAP = {       # first C-map steps from c = 0.5, layers 0..5      (LITERATURE.md sec. 1)
    1.3: ("0.5", "0.5595", "0.6097", "0.6524", "0.6889", "0.7205"),
    2.5: ("0.5", "0.4442", "0.3945", "0.3510", "0.3135", "0.2816"),
    4.0: ("0.5", "0.4025", "0.3206", "0.2545", "0.2023", "0.1617"),
}
RECORDED_EOC = {        # edge of chaos, std units: sigma_b -> (sigma_w, q*)   (sec. 10, sec. A(b))
    0.1: ("1.1934", "0.273"), 0.2: ("1.3041", "0.512"), 0.3: ("1.395584", "0.763475"),
    0.5: ("1.5497", "1.318"), 1.0: ("1.8556", "3.036"),
}
KNOWN_DISAGREEMENTS = {("c_star", (4.0, 0.3))}   # see README "Disagreements"


# ---------------------------------------------------------------------------------------------
# numbers


def network_numbers(sigma_w: float, sigma_b: float = SIGMA_B) -> dict:
    """q*, chi_1, chi_2, c* of the paper's network (sigma_w, sigma_b) (standard deviations).

    chi_2 = sigma_w^2 E[phi''(sqrt(q*) z)^2] (the paper's curvature constant) is not part of the
    API's FixedPoint; it is one Gaussian expectation with the package's engine.
    """
    sw2, sb2 = sigma_w ** 2, sigma_b ** 2
    fp = sp.fixed_point(ACT, sw2, sb2)
    act = sp.activation(ACT)
    chi_2 = sw2 * float(expect(lambda x: act.d2phi(x) ** 2, fp.q_star, tau=act.tau))
    return {"q_star": fp.q_star, "chi_1": fp.chi_1, "chi_2": chi_2, "c_star": fp.c_star,
            "regime": fp.regime}


def cmap_steps(sigma_w: float, c0: float = 0.5, steps: int = 5, sigma_b: float = SIGMA_B):
    """c^0 = c0, c^1, ..., c^steps: the correlation map iterated at q = q*."""
    sw2, sb2 = sigma_w ** 2, sigma_b ** 2
    q = sp.fixed_point(ACT, sw2, sb2).q_star
    cs = [c0]
    for _ in range(steps):
        cs.append(float(sp.correlation_map(ACT, q, cs[-1], sw2, sb2)))
    return cs


def eoc_numbers(sigma_b: float) -> tuple[float, float]:
    """(critical sigma_w, q* there) at bias standard deviation ``sigma_b``."""
    sw2 = float(sp.critical_sigma_w2(ACT, sigma_b ** 2))
    return math.sqrt(sw2), sp.fixed_point(ACT, sw2, sigma_b ** 2).q_star


def paper_rule_numbers(sigma_w: float, sigma_b: float = SIGMA_B, dz: float = 0.05) -> dict:
    """q*, chi_1, c* with the paper's own quadrature: a Riemann sum with step dz on [-10, 10]
    (ganguli-lab/deepchaos, LITERATURE.md sec. 1). Shows how far the paper's figure data can be
    from exact quadrature. Independent of signalprop's quadrature engine."""
    from scipy.optimize import brentq
    sw2, sb2 = sigma_w ** 2, sigma_b ** 2
    z = np.arange(-10.0, 10.0 + dz / 2, dz)
    w = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) * dz
    q = 1.0
    for _ in range(2000):
        q_new = sw2 * np.sum(w * np.tanh(math.sqrt(q) * z) ** 2) + sb2
        if abs(q_new - q) <= 1e-15 * q:
            q = q_new
            break
        q = q_new
    chi_1 = sw2 * np.sum(w / np.cosh(math.sqrt(q) * z) ** 4)
    c_star = 1.0
    if chi_1 > 1:
        z1, z2 = np.meshgrid(z, z, indexing="ij")
        ww = np.outer(w, w)
        t1 = np.tanh(math.sqrt(q) * z1)

        def f(c):
            u2 = math.sqrt(q) * (c * z1 + math.sqrt(1 - c * c) * z2)
            return (sw2 * np.sum(ww * t1 * np.tanh(u2)) + sb2) / q - c
        c_star = brentq(f, 1e-6, 1 - 1e-6, xtol=1e-14)   # f > 0 at 0 (sb2 > 0), < 0 near 1
    return {"q_star": float(q), "chi_1": float(chi_1), "c_star": float(c_star)}


def comparison_rows(paper_rule: bool = False) -> list[dict]:
    """One row per compared number: quantity, network, ours, recorded (printed), agrees."""
    rows = []
    for (sw, sb), rec in RECORDED_NETWORKS.items():
        ours = network_numbers(sw, sb)
        pr = paper_rule_numbers(sw, sb) if paper_rule else {}
        for key, printed in rec.items():
            rows.append({"table": "networks", "quantity": key, "network": (sw, sb),
                         "ours": ours[key], "paper_rule": pr.get(key), "recorded": printed,
                         "agrees": agrees(ours[key], printed),
                         "known": (key, (sw, sb)) in KNOWN_DISAGREEMENTS})
    for sw, rec in RECORDED_CMAP.items():
        cs = cmap_steps(sw, float(rec[0]), len(rec) - 1)
        for layer, (c, printed) in enumerate(zip(cs, rec)):
            if layer == 0:
                continue
            rows.append({"table": "cmap", "quantity": f"c^{layer}", "network": (sw, SIGMA_B),
                         "ours": c, "recorded": printed, "agrees": agrees(c, printed),
                         "known": False})
    for sb, (sw_printed, q_printed) in RECORDED_EOC.items():
        sw, q = eoc_numbers(sb)
        for key, v, printed in (("critical sigma_w", sw, sw_printed), ("q* there", q, q_printed)):
            rows.append({"table": "eoc", "quantity": key, "network": (None, sb), "ours": v,
                         "recorded": printed, "agrees": agrees(v, printed), "known": False})
    return rows


def _fmt(v: float, printed: str, extra: int = 2) -> str:
    return f"{v:.{decimals(printed) + extra}f}"


def markdown_tables(rows=None) -> str:
    """The README's comparison tables (our value printed with 4 more decimals than recorded in
    the first table, 2 more in the others)."""
    rows = comparison_rows(paper_rule=True) if rows is None else rows
    ok = lambda r: "yes" if r["agrees"] else ("**no** (see below)" if r["known"] else "**NO**")
    names = {"q_star": "q*", "chi_1": "chi_1", "chi_2": "chi_2", "c_star": "c*"}
    out = ["| (sigma_w, sigma_b) | quantity | signalprop | paper's rule (Riemann, dz = 0.05) "
           "| recorded [NUM] | agrees to printed digits |", "| --- | --- | --- | --- | --- | --- |"]
    diffs = []
    for r in (r for r in rows if r["table"] == "networks"):
        pr = "—" if r["paper_rule"] is None else _fmt(r["paper_rule"], r["recorded"], 4)
        if r["paper_rule"] is not None:
            diffs.append(abs(r["paper_rule"] - r["ours"]))
        out.append(f"| {r['network']} | {names[r['quantity']]} | "
                   f"{_fmt(r['ours'], r['recorded'], 4)} | {pr} | {r['recorded']} | {ok(r)} |")
    if diffs:
        k = math.floor(-math.log10(max(max(diffs), 1e-300)))
        out += ["", f"Largest difference between signalprop and the paper's rule in this table: "
                f"< 1e-{min(k, 15)}."]
    out += ["", "| sigma_w (sigma_b = 0.3) | layer | c (signalprop) | recorded [NUM] | agrees |",
            "| --- | --- | --- | --- | --- |"]
    for r in (r for r in rows if r["table"] == "cmap"):
        out.append(f"| {r['network'][0]} | {r['quantity']} | {_fmt(r['ours'], r['recorded'])} | "
                   f"{r['recorded']} | {ok(r)} |")
    out += ["", "| sigma_b | quantity | signalprop | recorded [NUM] | agrees |",
            "| --- | --- | --- | --- | --- |"]
    for r in (r for r in rows if r["table"] == "eoc"):
        out.append(f"| {r['network'][1]} | {r['quantity']} | {_fmt(r['ours'], r['recorded'])} | "
                   f"{r['recorded']} | {ok(r)} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# figures


def _profile_from(sigma_w, depth, q_start, c_start=None, sigma_b=SIGMA_B):
    """(network, q0, c0) whose layer 1 has q^1 = q_start and c^1 = c_start: layer 1 of the
    network is affine in its input, so the maps of the paper start at layer 1 here."""
    sw2, sb2 = sigma_w ** 2, sigma_b ** 2
    net = sp.mlp(depth, WIDTH, ACT, sigma_w2=sw2, sigma_b2=sb2)
    q0 = (q_start - sb2) / sw2
    c0 = None if c_start is None else (c_start * q_start - sb2) / (q_start - sb2)
    return net, q0, c0


def _simulate():
    try:
        from signalprop.simulate import simulate
    except ImportError:
        return None
    return simulate


@functools.lru_cache(maxsize=None)
def _fixed_point(sigma_w, sigma_b=SIGMA_B):
    return sp.fixed_point(ACT, sigma_w ** 2, sigma_b ** 2)


def _mark_networks(ax):
    for sw, col in zip(SIGMA_WS, COLORS):
        ax.plot([sw], [SIGMA_B], marker="o", ms=5, mfc=col, mec="white", mew=0.8, ls="none")


@styled
def figure_1(pd, out, mc=True, mc_samples=MC_SAMPLES):
    """Length map (A), its dynamics over 7 layers (B), q* over the grid (C)."""
    simulate = _simulate() if mc else None
    fig, (a, b, c) = flat_figure(1, 3, width=3.3, height=2.75)
    sb2 = SIGMA_B ** 2
    for k, (sw, col) in enumerate(zip(SIGMA_WS, COLORS)):
        sw2 = sw ** 2
        a.plot(Q_RANGE, sp.length_map(ACT, Q_RANGE, sw2, sb2), color=col,
               label=rf"$\sigma_w = {sw}$")
        qs = _fixed_point(sw).q_star
        a.plot([qs], [qs], "o", color=col, ms=5, mec="black", mew=0.6)
        if simulate is not None:    # one layer of N = 1000 networks: (q^1, q^2) per sample network
            for j, qin in enumerate(np.linspace(1.0, 14.0, 6)):
                net, q0, _ = _profile_from(sw, 2, qin)
                s = simulate(net, mc_samples, seed=1000 + 10 * k + j, engine=MC_ENGINE, q0=q0,
                             return_samples=True).samples["q"]
                a.plot(s[:, 0], s[:, 1], ".", color=col, ms=2, alpha=0.5)
        for j, qs0 in enumerate(Q_STARTS):
            net, q0, _ = _profile_from(sw, Q_STEPS + 1, qs0)
            plot_profile(sp.predict(net, q0), b, offset=-1, color=col,
                         label=rf"$\sigma_w = {sw}$" if j == 0 else None)
            if simulate is not None:
                prof = simulate(net, mc_samples, seed=2000 + 10 * k + j, engine=MC_ENGINE, q0=q0)
                plot_profile(prof, b, offset=-1, color=col)
    a.plot([0, 15], [0, 15], color="0.5", lw=0.8, ls=":")
    a.set(xlim=(0, 15), ylim=(0, 15), xlabel=r"$q^{l-1}$", ylabel=r"$q^l$")
    a.set_title(rf"A  length map, $\sigma_b = {SIGMA_B}$", loc="left")
    a.legend(loc="lower right", frameon=False)
    b.set(xlabel="layer (iterations of the map)", ylabel=r"$q^l$", xlim=(-0.3, Q_STEPS + 0.3))
    b.set_title("B  dynamics over 7 layers", loc="left")
    b.legend(loc="center right", frameon=False)
    plot_phase_diagram(pd, "q_star", c, units="std", title=r"C  $q^*$ (tanh)")
    _mark_networks(c)
    if simulate is not None:
        fig.text(0.01, -0.02, f"dots / error bars: Monte Carlo, N = {WIDTH}, {mc_samples} networks "
                 f"(±2 se); lines: mean-field theory", fontsize=7)
    save(fig, out / "fig1_length_map.png", dpi=110)


@styled
def figure_2(pd, out, mc=True, mc_samples=MC_SAMPLES, c_steps=C_STEPS, c_range=C_RANGE):
    """Correlation map (A), its dynamics over 30 layers (B), c* (C) and chi_1 (D) over the grid."""
    simulate = _simulate() if mc else None
    fig, (a, b, c, d) = flat_figure(2, 2, width=3.6, height=2.9)
    sb2 = SIGMA_B ** 2
    for k, (sw, col) in enumerate(zip(SIGMA_WS, COLORS)):
        sw2 = sw ** 2
        fp = _fixed_point(sw)
        a.plot(c_range, sp.correlation_map(ACT, fp.q_star, c_range, sw2, sb2), color=col,
               label=rf"$\sigma_w = {sw}$ ($\chi_1$ = {fp.chi_1:.3f})")
        a.plot([fp.c_star], [fp.c_star], "o", color=col, ms=5, mec="black", mew=0.6)
        if simulate is not None:    # one layer at q = q*: mean (c^1, c^2) of N = 1000 networks
            for j, cin in enumerate((0.1, 0.3, 0.5, 0.7, 0.9)):
                net, q0, c0 = _profile_from(sw, 2, fp.q_star, cin)
                p = simulate(net, mc_samples, seed=3000 + 10 * k + j, engine=MC_ENGINE, q0=q0,
                             c0=c0)
                a.errorbar(p.c[0], p.c[1], xerr=2 * p.c_se[0], yerr=2 * p.c_se[1], fmt="o",
                           color=col, ms=3, mfc="white", elinewidth=0.8)
        for j, cs0 in enumerate(C_STARTS):
            net, q0, c0 = _profile_from(sw, c_steps + 1, fp.q_star, cs0)
            plot_profile(sp.predict(net, q0, c0), b, field="c", offset=-1, color=col,
                         label=rf"$\sigma_w = {sw}$" if j == 0 else None)
            if simulate is not None:
                prof = simulate(net, mc_samples, seed=4000 + 10 * k + j, engine=MC_ENGINE, q0=q0,
                                c0=c0)
                keep = np.arange(0, c_steps + 1, 3)
                b.errorbar(prof.layers[keep] - 1, prof.c[keep], yerr=2 * prof.c_se[keep], fmt="o",
                           color=col, ms=2.5, mfc="white", elinewidth=0.8)
    a.plot([0, 1], [0, 1], color="0.5", lw=0.8, ls=":")
    a.set(xlim=(0, 1), ylim=(0, 1), xlabel=r"$c^{l-1}$", ylabel=r"$c^l$")
    a.set_title(rf"A  correlation map at $q^*$, $\sigma_b = {SIGMA_B}$", loc="left")
    a.legend(loc="upper left", frameon=False)
    b.set(xlabel="layer (iterations of the map)", ylabel=r"$c^l$", ylim=(0, 1))
    b.set_title(f"B  dynamics over {c_steps} layers", loc="left")
    b.legend(loc="center right", frameon=False)
    plot_phase_diagram(pd, "c_star", c, units="std", title=r"C  $c^*$ (tanh)")
    plot_phase_diagram(pd, "chi_1", d, units="std", legend=True,
                       title=r"D  $\chi_1$: order ($<1$) to chaos ($>1$)")
    for ax in (c, d):
        _mark_networks(ax)
    if simulate is not None:
        fig.text(0.01, -0.02, f"points: Monte Carlo, N = {WIDTH}, {mc_samples} networks (±2 se); "
                 "lines: mean-field theory", fontsize=7)
    save(fig, out / "fig2_correlation_map.png", dpi=110)


def main(argv=None) -> int:
    ap = parser(__doc__, HERE, "tiny grid and few samples (smoke test)")
    ap.add_argument("--grid-step", type=int, default=2,
                    help="use every n-th point of the paper's 41 x 41 (sigma_w, sigma_b) grid "
                         "(1: the full grid; default 2: 21 x 21)")
    ap.add_argument("--no-mc", action="store_true", help="skip the Monte Carlo points")
    args = ap.parse_args(argv)
    if table_options(args, lambda quick: markdown_tables(), HERE / "README.md"):
        return 0
    t0 = time.perf_counter()
    step = 20 if args.quick else max(1, args.grid_step)
    samples = 3 if args.quick else MC_SAMPLES
    args.out.mkdir(parents=True, exist_ok=True)
    sw, sb = GRID_SW[::step], GRID_SB[::step]
    pd = sp.phase_diagram(ACT, sw ** 2, sb ** 2)
    t1 = time.perf_counter()
    figure_1(pd, args.out, mc=not args.no_mc, mc_samples=samples)
    if args.quick:
        figure_2(pd, args.out, mc=not args.no_mc, mc_samples=samples, c_steps=6,
                 c_range=np.linspace(0.0, 1.0, 11))
    else:
        figure_2(pd, args.out, mc=not args.no_mc, mc_samples=samples)
    t2 = time.perf_counter()
    print(f"grid {len(sw)} x {len(sb)}: phase diagram {t1 - t0:.1f} s, figures {t2 - t1:.1f} s; "
          f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
