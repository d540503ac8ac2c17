"""Rank collapse of pure self-attention and what residual connections and feed-forward sublayers
do to it: Dong, Cordonnier & Loukas (2021), "Attention is not all you need: pure attention loses
rank doubly exponentially with depth" (ICML; arXiv 2103.03404), with signalprop.

    python papers/dong2021/reproduce.py            # the figure into papers/dong2021/ (~1 min)
    python papers/dong2021/reproduce.py --tables   # the README's tables (same Monte Carlo)
    python papers/dong2021/reproduce.py --update-readme   # ... written into README.md
    python papers/dong2021/reproduce.py --quick --out /tmp/x   # a smoke run (tests)

Statements used (LITERATURE.md sec. 17): [READ] the abstract (without skip connections and MLPs a
self-attention network converges doubly exponentially to a rank-1 matrix; skip connections and
MLPs stop the degeneration); [NUM, secondary notes] the bound
``||res(SAN(X))|| <= (4 gamma beta H / sqrt(d_qk))^((3^L - 1)/2) ||res(X)||^(3^L)``, i.e. a residual
that is cubed per layer; [RECALLED, not verified] MLPs enter the bound through their Lipschitz
constant. The paper's experiments (BERT, ALBERT, XLNet) and figure parameters were not at hand.

Architectures (no biases, d = 256, H = 4 heads of width 64, T = 8 i.i.d. unit tokens, c0 = 0):

* ``"san"``: pure self-attention, ``L`` layers ``Attention`` (no residual, no feed-forward, no LN);
* ``"skip"``: ``L`` layers ``Residual((Attention,))``: x + Attn(x);
* ``"skip_mlp"``: ``L`` blocks x + Attn(x), x + FFN(x) (GELU feed-forward of ratio 4,
  ``sigma_w^2 = 2``), no LayerNorm (Dong et al.'s setting);
* ``"pre_ln"``: ``sp.transformer(L, ..., ln="pre")``: the same blocks with LN at the branch inputs
  and a final LN (a GPT-2-like stack, for comparison).

Theory: signalprop's T x T token kernel (docs/theory/attention.md). ``logit_scale="sqrt"``
(1/sqrt(d_head)): the d -> infinity, then H -> infinity limit of Hron et al. 2020 (logits stay
Gaussian, expectation over them by fixed-seed Monte Carlo); ``"linear"`` (1/d_head): the
d -> infinity limit in which the logits converge to 0 and attention is exactly uniform.

Closed forms checked here (derivations in README.md):

* uniform attention (``"linear"``): pure SAN maps any exchangeable kernel to rank one in one
  layer; with skip connections ``u = 1 - c`` obeys ``u' = u / (2 - u (1 - 1/T))`` exactly
  (:func:`skip_linear_recursion`), so ``u`` halves per layer: exponential, not doubly exponential.
* ``"sqrt"``, near collapse: one pure-attention layer maps ``u`` to
  ``u' = gamma v^2 (T - 1)/T^2 u^3 + O(u^4)`` (``v`` the token second moment, ``gamma`` the logit
  gain): the mean-field form of the paper's cubed residual (:func:`cubic_coefficient`).
"""

from __future__ import annotations

import functools
import pathlib
import sys

import numpy as np

import signalprop as sp
from signalprop.layers.attention import feed_forward
from signalprop.plot import new_figure

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))          # papers/_common.py
from _common import readme_block, run, styled  # noqa: E402,F401

T = 8                                  # tokens
WIDTH = 256                            # d of the Monte Carlo networks (theory: infinite width)
HEADS = 4
DEPTHS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)   # theory
MC_DEPTHS = (1, 2, 4, 8)                      # Monte Carlo
SAMPLES = 16
SEED = 2103_03404
ARCHS = ("san", "skip", "skip_mlp", "pre_ln")
SCALES = ("sqrt", "linear")
NAMES = {"san": "pure attention", "skip": "attention + skip", "skip_mlp": "attention + skip + MLP",
         "pre_ln": "pre-LN transformer"}


def network(arch: str, depth: int, scale: str, width: int = WIDTH) -> sp.Network:
    """The stack of ``depth`` layers/blocks of architecture ``arch`` (module docstring)."""
    if arch == "pre_ln":
        return sp.transformer(depth, width, heads=HEADS, tokens=T, ln="pre", logit_scale=scale)
    attn = sp.Attention(width, HEADS, T, logit_scale=scale)
    if arch == "san":
        layers = (attn,) * depth
    elif arch == "skip":
        layers = (sp.Residual((attn,)),) * depth
    elif arch == "skip_mlp":
        layers = (sp.Residual((attn,)), sp.Residual(feed_forward(width))) * depth
    else:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    return sp.Network(width, layers)


def block_ends(arch: str, depth: int) -> np.ndarray:
    """Profile rows at the end of each block (after the final LN for the last pre-LN block)."""
    if arch in ("san", "skip"):
        return np.arange(depth)
    rows = np.arange(1, 2 * depth, 2)
    if arch == "pre_ln":
        rows[-1] = 2 * depth
    return rows


@functools.lru_cache(maxsize=128)
def theory(arch: str, depth: int, scale: str):
    return sp.predict(network(arch, depth, scale))


def correlation(arch: str, depth: int, scale: str) -> float:
    """Token correlation after the last layer/block (theory)."""
    return float(theory(arch, depth, scale).c[-1])


def per_block(arch: str, depth: int, scale: str) -> np.ndarray:
    """Token correlation after each block of one stack (theory)."""
    return theory(arch, depth, scale).c[block_ends(arch, depth)]


def skip_linear_recursion(depth: int, u0: float = 1.0) -> np.ndarray:
    """``u_l = 1 - c_l`` of the skip stack under uniform attention: ``K -> K + A K A^T`` with
    ``A = 1 1^T / T`` adds ``m = v (1/T + (1 - 1/T) c)`` to every entry of ``K = v ((1-c) I +
    c 1 1^T)``, so ``u' = v u / (v + m) = u / (2 - u (1 - 1/T))`` (README.md, derivation 1)."""
    u, out = u0, []
    for _ in range(depth):
        u = u / (2 - u * (1 - 1 / T))
        out.append(u)
    return np.array(out)


def cubic_coefficient(v: float = 1.0, gamma: float = 1.0, tokens: int = T) -> float:
    """``gamma v^2 (T - 1) / T^2``: ``u' / u^3`` of one 1/sqrt(d) pure-attention layer as u -> 0
    (README.md, derivation 2)."""
    return gamma * v * v * (tokens - 1) / tokens ** 2


def one_layer_u(u: float, logit_samples: int = 1 << 16, seed: int = 0) -> float:
    """1 - c after one 1/sqrt(d) attention layer for the input kernel ``u I + (1 - u) 1 1^T``."""
    net = sp.Network(WIDTH, (sp.Attention(WIDTH, HEADS, T, logit_samples=logit_samples,
                                          seed=seed),))
    K = u * np.eye(T) + (1 - u) * np.ones((T, T))
    return float(1 - sp.predict(net, inputs=K).c[0])


@functools.lru_cache(maxsize=2)
def monte_carlo(quick: bool = False) -> dict:
    depths, samples = ((1, 2), 4) if quick else (MC_DEPTHS, SAMPLES)
    out = {}
    for j, scale in enumerate(SCALES):
        for k, arch in enumerate(ARCHS):
            for i, L in enumerate(depths):
                mc = sp.simulate(network(arch, L, scale), samples,
                                 seed=SEED + 1000 * j + 100 * k + i)
                out[arch, scale, L] = (mc, sp.compare(theory(arch, L, scale), mc).verdict)
    return out


def _u_cell(u: float) -> str:
    return "0" if u <= 0 else f"{u:.3g}"


def tables(quick: bool = False) -> str:
    mc = monte_carlo(quick)
    n = 4 if quick else SAMPLES
    rows = []
    for scale in SCALES:
        rows += [f"Token correlation after the last layer/block, `logit_scale=\"{scale}\"` (T = {T}; "
                 f"Monte Carlo: d = {WIDTH}, {HEADS} heads, {n} networks, +- one standard error, "
                 "and the `compare` verdict of the whole profile):", "",
                 "| L | " + " | ".join(f"{NAMES[a]}: theory | Monte Carlo | verdict"
                                      for a in ARCHS) + " |",
                 "| --- " * (1 + 3 * len(ARCHS)) + "|"]
        for L in DEPTHS:
            cells = [str(L)]
            for a in ARCHS:
                cells.append(f"{correlation(a, L, scale):.6f}")
                if (a, scale, L) in mc:
                    m, verdict = mc[a, scale, L]
                    cells += [f"{m.c[-1]:.4f} +- {m.c_se[-1]:.4f}", verdict]
                else:
                    cells += ["", ""]
            rows.append("| " + " | ".join(cells) + " |")
        rows.append("")
    rows += ["Distance from collapse `u_l = 1 - c_l` after layer/block l (theory, L = 12 stacks; "
             "`0`: 1 to double precision):", "",
             "| l | pure, sqrt | pure, linear | skip, sqrt | skip, linear | skip closed form "
             "(linear) | skip + MLP, sqrt | pre-LN, sqrt |", "| --- " * 8 + "|"]
    cols = [("san", "sqrt"), ("san", "linear"), ("skip", "sqrt"), ("skip", "linear")]
    tails = [("skip_mlp", "sqrt"), ("pre_ln", "sqrt")]
    us = {k: 1 - per_block(k[0], 12, k[1]) for k in cols + tails}
    ref = skip_linear_recursion(12)
    for l in range(12):
        cells = [str(l + 1)] + [_u_cell(us[k][l]) for k in cols] + [_u_cell(ref[l])]
        cells += [_u_cell(us[k][l]) for k in tails]
        rows.append("| " + " | ".join(cells) + " |")
    rows += ["", "One 1/sqrt(d) pure-attention layer near collapse (input `u I + (1 - u) 1 1^T`, "
             "v = 1, gamma = 1; 65536 logit draws): `u'` against the cubic law "
             f"`{cubic_coefficient():.6f} u^3`:", "",
             "| u | u' (theory) | u' / (C u^3) |", "| --- | --- | --- |"]
    for u in (0.3, 0.1, 0.03, 1e-2, 1e-3):
        up = one_layer_u(u)
        rows.append(f"| {u:g} | {up:.4g} | {up / (cubic_coefficient() * u ** 3):.4f} |")
    return "\n".join(rows)


@styled
def figure(out: pathlib.Path, quick: bool) -> pathlib.Path:
    mc = monte_carlo(quick)
    fig, axes = new_figure(1, 2, 9.5, 3.6)
    colours = {"san": "#d62728", "skip": "#ff7f0e", "skip_mlp": "#2ca02c", "pre_ln": "#1f77b4"}
    for ax, scale in zip(axes[0], SCALES):
        for a in ARCHS:
            ax.plot(DEPTHS, [1 - correlation(a, L, scale) for L in DEPTHS], color=colours[a],
                    label=f"{NAMES[a]}, theory")
            pts = sorted(L for (b, s, L) in mc if b == a and s == scale)
            ax.errorbar(pts, [1 - mc[a, scale, L][0].c[-1] for L in pts],
                        yerr=[2 * mc[a, scale, L][0].c_se[-1] for L in pts], fmt="o", ms=3,
                        color=colours[a])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_ylim(1e-16, 2)
        ax.set_xlabel("layers / blocks L")
        ax.set_ylabel(r"$1 - c$ (token correlation $c$)")
        ax.set_title(r"logits $\times 1/\sqrt{d}$" if scale == "sqrt" else
                     r"logits $\times 1/d$", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    path = out / "fig_rank_collapse.png"
    fig.savefig(path, dpi=130)
    return path


def main(argv=None) -> int:
    return run(__doc__, HERE, "a tiny Monte Carlo run (1-2 layers, 4 samples)", tables, [figure], argv)


if __name__ == "__main__":
    sys.exit(main())
