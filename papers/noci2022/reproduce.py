"""Rank collapse in post-LN transformers at initialisation and the 1/sqrt(L) residual scaling that
prevents it: Noci et al. (2022), "Signal propagation in transformers: theoretical perspectives and
the role of rank collapse" (NeurIPS; arXiv 2206.03126), with signalprop.

    python papers/noci2022/reproduce.py            # the figure into papers/noci2022/ (~2 min)
    python papers/noci2022/reproduce.py --tables   # the README's tables (same Monte Carlo)
    python papers/noci2022/reproduce.py --update-readme   # ... written into README.md
    python papers/noci2022/reproduce.py --quick --out /tmp/x   # a smoke run (tests)

Statements used (LITERATURE.md sec. 16): [READ] the abstract (rank collapse at init makes the
query/key gradients vanish; a depth-dependent residual scaling prevents it) and their Fig. 1
(cosine between token representations grows with depth for post-LN transformers without adequate
residual scaling); [DERIVED] under exact collapse X = 1 x^T the query/key gradients are exactly 0;
[RECALLED, not verified] the scaling is X + Branch(X) / sqrt(L) and keeps the correlation bounded
away from 1 as L -> infinity. Their architecture details (width, heads, activation, task) were not
at hand, so the setting below is ours.

In signalprop: ``sp.transformer(L, 256, heads=4, tokens=8, ln="post", scaling=...)`` with
``scaling="fixed"`` (unit branches) or ``"inv_sqrt_depth"`` (branches times 1/sqrt(L)); 1/sqrt(d)
logits, GELU feed-forward of ratio 4, i.i.d. unit tokens (c0 = 0). ``c`` of a row is the
correlation of tokens 0 and 1 (all pairs are equal: exchangeable tokens).

Query/key gradients (docs/theory/attention.md, "Backward"): their per-unit covariance is
``gamma Pi_aa' tr(K J_a K J_a')`` with ``J_a`` the softmax Jacobian of row a and ``K`` the token
kernel entering the attention. For the exchangeable kernel ``K = v((1 - rho) I + rho 1 1^T)``,
``J_a 1 = 0`` gives ``J_a K = v (1 - rho) J_a``, so the query/key path carries the factor
``(1 - rho)^2`` (exactly; the remaining ``tr(J_a J_a')`` depends on rho only through the logits'
spread, itself proportional to ``1 - rho``). The tables report ``(1 - rho)^2`` at the last block's
attention input relative to the first block's (rho = c0 = 0): a lower bound on how much smaller
the last block's query/key gradients are than the value path would suggest.
"""

from __future__ import annotations

import functools
import pathlib
import sys

import numpy as np

import signalprop as sp
from signalprop.plot import new_figure

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))          # papers/_common.py
from _common import readme_block, run, styled  # noqa: E402,F401

T = 8                                  # tokens
WIDTH = 256                            # d of the Monte Carlo networks (theory: infinite width)
HEADS = 4
DEPTHS = (1, 2, 4, 8, 16, 32, 64)      # theory
MC_DEPTHS = (2, 4, 8, 16)              # Monte Carlo
SAMPLES = 16
SEED = 2206_03126
SCALINGS = ("fixed", "inv_sqrt_depth")


def network(depth: int, scaling: str, width: int = WIDTH) -> sp.Network:
    """A post-LN stack of ``depth`` blocks (module docstring)."""
    return sp.transformer(depth, width, heads=HEADS, tokens=T, ln="post", scaling=scaling)


@functools.lru_cache(maxsize=64)
def theory(depth: int, scaling: str):
    return sp.predict(network(depth, scaling))


def final_correlation(depth: int, scaling: str) -> float:
    """Token correlation after the last block's LayerNorm (theory)."""
    return float(theory(depth, scaling).c[-1])


def attention_input_correlation(depth: int, scaling: str) -> np.ndarray:
    """rho at the input of each block's attention: c0 = 0 for block 1, else the correlation after
    the previous block's last LN (post-LN rows: attention sum, LN, feed-forward sum, LN)."""
    c = theory(depth, scaling).c
    return np.concatenate([[0.0], c[3:-1:4]])


def qk_factor(depth: int, scaling: str) -> float:
    """(1 - rho_L)^2 / (1 - rho_1)^2: the query/key-path factor of the last block's attention
    relative to the first one's (module docstring)."""
    rho = attention_input_correlation(depth, scaling)
    return float((1 - rho[-1]) ** 2 / (1 - rho[0]) ** 2)


@functools.lru_cache(maxsize=2)
def monte_carlo(quick: bool = False) -> dict:
    depths, samples = ((1, 2), 4) if quick else (MC_DEPTHS, SAMPLES)
    out = {}
    for j, scaling in enumerate(SCALINGS):
        for i, L in enumerate(depths):
            mc = sp.simulate(network(L, scaling), samples, seed=SEED + 100 * j + i)
            out[scaling, L] = (mc, sp.compare(theory(L, scaling), mc).verdict)
    return out


def tables(quick: bool = False) -> str:
    mc = monte_carlo(quick)
    rows = [f"Token correlation after the last block (T = {T}; Monte Carlo: d = {WIDTH}, "
            f"{HEADS} heads, {4 if quick else SAMPLES} networks, +- one standard error; "
            "`compare` verdict of the whole profile):", "",
            "| blocks L | unit branches: theory | Monte Carlo | verdict | 1/sqrt(L) branches: "
            "theory | Monte Carlo | verdict |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for L in DEPTHS:
        cells = [str(L)]
        for s in SCALINGS:
            cells.append(f"{final_correlation(L, s):.6f}")
            if (s, L) in mc:
                m, verdict = mc[s, L]
                cells += [f"{m.c[-1]:.4f} +- {m.c_se[-1]:.4f}", verdict]
            else:
                cells += ["", ""]
        rows.append("| " + " | ".join(cells) + " |")
    rows += ["", "Query/key-path factor (1 - rho_L)^2 of the last block's attention input, "
                 "relative to the first block (theory):", "",
             "| blocks L | rho_L, unit | (1 - rho_L)^2, unit | rho_L, 1/sqrt(L) | "
             "(1 - rho_L)^2, 1/sqrt(L) |", "| --- | --- | --- | --- | --- |"]
    for L in DEPTHS[1:]:
        cells = [str(L)]
        for s in SCALINGS:
            cells += [f"{attention_input_correlation(L, s)[-1]:.6f}", f"{qk_factor(L, s):.3g}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


@styled
def figure(out: pathlib.Path, quick: bool) -> pathlib.Path:
    mc = monte_carlo(quick)
    fig, axes = new_figure(1, 2, 9.0, 3.6)
    ax, bx = axes[0, 0], axes[0, 1]
    colours = {"fixed": "#d62728", "inv_sqrt_depth": "#1f77b4"}
    names = {"fixed": "unit branches", "inv_sqrt_depth": r"branches $\times 1/\sqrt{L}$"}
    for s in SCALINGS:
        ax.plot(DEPTHS, [final_correlation(L, s) for L in DEPTHS], color=colours[s],
                label=f"{names[s]}, theory")
        pts = sorted(L for (t, L) in mc if t == s)
        ax.errorbar(pts, [mc[s, L][0].c[-1] for L in pts], yerr=[2 * mc[s, L][0].c_se[-1]
                    for L in pts], fmt="o", ms=3, color=colours[s],
                    label=f"Monte Carlo d = {WIDTH}")
        L = 32
        rho = attention_input_correlation(L, s)
        bx.plot(np.arange(1, L + 1), rho, color=colours[s], label=names[s])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("blocks L")
    ax.set_ylabel("token correlation after block L")
    ax.legend(fontsize=7)
    bx.set_xlabel("block l (L = 32)")
    bx.set_ylabel(r"token correlation $\rho_l$ entering attention")
    bx.legend(fontsize=7)
    path = out / "fig_rank_collapse.png"
    fig.savefig(path, dpi=130)
    return path


def main(argv=None) -> int:
    return run(__doc__, HERE, "a tiny Monte Carlo run (1-2 blocks, 4 samples)", tables, [figure], argv)


if __name__ == "__main__":
    sys.exit(main())
