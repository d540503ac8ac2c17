"""Dying ReLU at initialisation, after Lu, Shin, Su & Karniadakis (2019), "Dying ReLU and
initialization: theory and numerical examples" (arXiv 1903.06733), with signalprop.finite.

    python papers/lu2019/reproduce.py                 # figures into papers/lu2019/
    python papers/lu2019/reproduce.py --tables        # the README's comparison table
    python papers/lu2019/reproduce.py --quick --out /tmp/x   # a smoke run

Networks: input dimension 1, ``L`` hidden ReLU layers of width ``N``, a linear output of width 1
(signalprop: ``mlp(L + 1, [1] + [N] * L + [1], "relu", init="he")``), symmetric (Gaussian) weights,
no bias unless said. Two notions of death (``signalprop.finite.dead_probability``):

* dead at a point (exact): ``1 - (1 - 2^-N)^L``;
* born dead on all of R (Monte Carlo): the network is a constant function; without biases this
  is "dead at +1 and at -1" (positive homogeneity).
"""

from __future__ import annotations

import math
import pathlib
import sys
import time

import numpy as np

import signalprop as sp
from signalprop.finite import dead_probability
from signalprop.plot import new_figure
from signalprop.simulate import simulate

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))          # papers/_common.py
from _common import parser, styled, table_options  # noqa: E402

WIDTHS = (2, 3, 4, 5, 8)
DEPTHS = (2, 5, 10, 20, 50)
# LITERATURE.md §9 [NUM], 1e5 networks: (N, L) -> (P(born dead on R), P(dead at x = 1))
RECORDED = {
    (2, 2): (.155, .435), (2, 5): (.624, .764), (2, 10): (.909, .943), (2, 20): (.995, .997),
    (2, 50): (1.000, 1.000),
    (3, 2): (.044, .234), (3, 5): (.292, .486), (3, 10): (.631, .738), (3, 20): (.903, .932),
    (3, 50): (.998, .999),
    (4, 2): (.011, .120), (4, 5): (.115, .274), (4, 10): (.337, .476), (4, 20): (.651, .727),
    (4, 50): (.950, .961),
    (5, 2): (.003, .061), (5, 5): (.042, .148), (5, 10): (.153, .273), (5, 20): (.375, .470),
    (5, 50): (.760, .797),
    (8, 2): (.000, .008), (8, 5): (.002, .019), (8, 10): (.010, .038), (8, 20): (.040, .076),
    (8, 50): (.142, .178),
}
LIT_SAMPLES = 100_000


def net(L: int, N: int, act: str = "relu", sigma_b2: float = 0.0):
    return sp.mlp(L + 1, [1] + [N] * L + [1], act, sigma_w2=2.0, sigma_b2=sigma_b2)


def comparison_rows(samples: int) -> list[dict]:
    rows = []
    for (n, L), (born, point) in RECORDED.items():
        d = dead_probability(net(L, n), samples=samples, seed=100 * n + L)
        se = math.sqrt(d.p_born_dead_se ** 2 + born * (1 - born) / LIT_SAMPLES)
        rows.append({"N": n, "L": L, "exact_point": d.p_dead_point, "rec_point": point,
                     "mc_point": d.p_dead_point_mc, "mc_point_se": d.p_dead_point_mc_se,
                     "born": d.p_born_dead, "born_se": d.p_born_dead_se, "rec_born": born,
                     "z": (d.p_born_dead - born) / se if se > 0 else 0.0})
    return rows


def markdown_table(samples: int) -> str:
    out = ["| N | L | dead at a point: exact | recorded (MC) | born dead on R: ours (MC) | "
           "recorded (MC) | z |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in comparison_rows(samples):
        out.append(f"| {r['N']} | {r['L']} | {r['exact_point']:.4f} | {r['rec_point']:.3f} | "
                   f"{r['born']:.4f} ± {r['born_se']:.4f} | {r['rec_born']:.3f} | {r['z']:+.1f} |")
    return "\n".join(out)


@styled
def figure_dead(out: pathlib.Path, samples: int, quick: bool) -> pathlib.Path:
    """(a) P(dead) against depth for several widths; (b) ReLU against leaky ReLU and GELU: the
    probability that the first-layer gradient is 0 or below 1e-6 of its mean-field value."""
    fig, axes = new_figure(1, 2, width=3.6, height=2.9)
    ax, bx = axes[0]
    colors = dict(zip(WIDTHS, ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")))
    Ls = np.arange(1, 61)
    for n in WIDTHS:
        exact = 1 - (1 - 0.5 ** n) ** Ls
        ax.plot(Ls, exact, color=colors[n], label=f"N = {n}")
        depths = DEPTHS[:3] if quick else DEPTHS
        mc = [dead_probability(net(L, n), samples=samples, seed=7 * n + L) for L in depths]
        ax.errorbar(depths, [d.p_born_dead for d in mc],
                    [2 * d.p_born_dead_se for d in mc], fmt="o", ms=3, color=colors[n])
        ax.plot(DEPTHS, [RECORDED[(n, L)][0] for L in DEPTHS], "x", ms=5, color=colors[n])
    ax.plot([], [], "k-", label="dead at a point (exact)")
    ax.plot([], [], "ko", ms=3, label="born dead on R (ours, MC ±2 se)")
    ax.plot([], [], "kx", ms=5, label="born dead on R (recorded)")
    ax.set_xlabel("hidden layers L")
    ax.set_ylabel("probability")
    ax.set_title("(a) ReLU born dead, input dim 1, no bias", loc="left")
    ax.legend(loc="center right", bbox_to_anchor=(1.0, 0.42), fontsize=6)
    n = 4
    sims = 500 if quick else 4000
    depths = (2, 5, 10, 20) if quick else (2, 5, 10, 20, 35, 50)
    for act, color, marker in (("relu", "black", "o"), ("leaky_relu", "#1f77b4", "s"),
                               ("gelu", "#d62728", "^")):
        frac, se = [], []
        for L in depths:
            nn = net(L, n, act)
            pred = sp.predict(nn)
            s = simulate(nn, sims, 11 * L, engine="matrix-free", return_samples=True)
            small = ~(s.samples["log_g"][:, 0] - pred.log_g[0] > math.log(1e-6))
            frac.append(small.mean())
            se.append(math.sqrt(max(small.mean() * (1 - small.mean()), 1 / sims) / sims))
        bx.errorbar(depths, frac, 2 * np.array(se), fmt=marker + "-", ms=3, color=color,
                    lw=0.8, label=act)
    bx.plot(Ls, 1 - (1 - 0.5 ** n) ** Ls, color="black", lw=0.8, ls=":",
            label="ReLU dead at a point (exact)")
    bx.set_xlabel("hidden layers L")
    bx.set_ylabel(r"P($\hat g^1 = 0$ or $< 10^{-6} g^1$)")
    bx.set_title(f"(b) width {n}, $\\sigma_w^2 = 2$: ReLU, leaky ReLU, GELU", loc="left")
    bx.legend(loc="lower right")
    path = out / "fig1_dead_vs_depth.png"
    fig.savefig(path)
    return path


@styled
def figure_units(out: pathlib.Path, samples: int) -> pathlib.Path:
    """Per-layer fraction of units inactive on the whole input region."""
    fig, axes = new_figure(1, 1, width=4.2, height=2.8)
    ax = axes[0, 0]
    for (label, nn, color, ls) in (
            ("N = 4, no bias (on R)", net(20, 4), "#2ca02c", "-"),
            ("N = 8, no bias (on R)", net(20, 8), "#9467bd", "-"),
            ("N = 4, sigma_b^2 = 0.1 (on [-1, 1])", net(20, 4, sigma_b2=0.1), "#2ca02c", "--")):
        S = samples if "no bias" in label else max(200, samples // 10)
        d = dead_probability(nn, samples=S, seed=3)
        layers = np.arange(1, 21)
        ax.errorbar(layers, d.dead_unit_fraction[:20], 2 * d.dead_unit_fraction_se[:20],
                    color=color, ls=ls, fmt=".", ms=3, lw=0.9, label=f"{label}, {S} nets")
    ax.axhline(0.5, color="0.5", lw=0.7, ls=":")
    ax.set_xlabel("layer")
    ax.set_ylabel("fraction of units dead on the region")
    ax.set_title("ReLU units inactive for every input (Monte Carlo ±2 se)", loc="left")
    ax.legend(loc="lower right")
    path = out / "fig2_dead_units.png"
    fig.savefig(path)
    return path


def main(argv=None) -> int:
    args = parser(__doc__, HERE, "few samples (smoke test)", readme=False,
                  tables_help="print the comparison table and exit").parse_args(argv)
    samples = 1000 if args.quick else 20000
    if table_options(args, lambda quick: markdown_table(samples)):
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    for p in (figure_dead(args.out, samples, args.quick), figure_units(args.out, samples // 4)):
        print(f"wrote {p} ({p.stat().st_size // 1024} KB)")
    print(f"{time.time() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
