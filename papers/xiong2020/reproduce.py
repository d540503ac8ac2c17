"""Hidden-state norms of pre-LN and post-LN transformers at initialisation: Lemma 2 of Xiong et al.
(2020), "On layer normalization in the transformer architecture" (ICML; arXiv 2002.04745), with
signalprop.

    python papers/xiong2020/reproduce.py            # the figure into papers/xiong2020/ (~2 min)
    python papers/xiong2020/reproduce.py --tables   # the README's table (same Monte Carlo)
    python papers/xiong2020/reproduce.py --update-readme   # ... written into README.md
    python papers/xiong2020/reproduce.py --quick --out /tmp/x   # a smoke run (tests)

The paper's setting for its theory (LITERATURE.md sec. 15 [READ]): single-head attention whose
W^Q, W^K start at zero, so attention is uniform over the T positions; W^V, W^1, W^2 of size d x d
with Xavier-Gaussian N(0, 1/d) entries; a ReLU feed-forward sublayer; no biases; LN gain 1; inputs
i.i.d. Gaussian, E||x_i||^2 = d. Lemma 2 [NUM]: pre-LN, (1 + l/2) d <= E||x_l||^2 <= (1 + 3l/2) d
after l blocks; post-LN, the sum entering each feed-forward sublayer's LayerNorm has
E||x^{post,5}||^2 = (3/2) d.

In signalprop: ``sp.transformer(L, d, heads=1, tokens=T, ln=..., ffn_ratio=1, activation="relu",
logit_scale="linear", sigma_ffn2=1, sigma_ffn_out2=1, final_ln=False)``. With 1/d logits and
independent W^Q, W^K the attention weights are uniform at infinite width (the zero initialisation
of the paper exactly); the value and output projections (sigma_v^2 = sigma_o^2 = 1) multiply the
kernel as the paper's single W^V does. ``q`` of a residual block is ``E||x||^2 / d``.

An independent route for the table (derived here): every token pair of the stream has the same
correlation rho (i.i.d. inputs), so with p = E||x||^2/d one pre-LN block is

    attention:   p += a,  p rho += a,                     a = (1 + (T - 1) rho) / T
    feed-forward: p += 1/2,  p rho += k(rho) / 2,         k(c) = (sqrt(1 - c^2) + (pi - arccos c) c) / pi

(uniform attention averages the T normalised tokens; E[relu(u)^2] = 1/2 and the arc-cosine kernel
k of Cho & Saul 2009 for the unit-variance LN output), hence (1 + l/2 + l/T) <= p_l <= (1 + 3l/2).
"""

from __future__ import annotations

import functools
import math
import pathlib
import sys

import numpy as np

import signalprop as sp
from signalprop.plot import new_figure

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))          # papers/_common.py
from _common import readme_block, run, styled  # noqa: E402,F401

T = 8            # positions
BLOCKS = 12      # the paper's deepest models have 12-14 layers per stack
WIDTH = 256      # d of the Monte Carlo networks (theory: any)
SAMPLES = 32
SEED = 2002_04745


def network(ln: str, blocks: int = BLOCKS, width: int = WIDTH) -> sp.Network:
    """The paper's transformer stack (module docstring)."""
    return sp.transformer(blocks, width, heads=1, tokens=T, ln=ln, ffn_ratio=1.0,
                          activation="relu", logit_scale="linear", sigma_ffn2=1.0,
                          sigma_ffn_out2=1.0, final_ln=False)


def recursion(blocks: int = BLOCKS) -> np.ndarray:
    """(p, rho) after every pre-LN sublayer by the closed-form recursion (module docstring)."""
    p, rho, out = 1.0, 0.0, []
    for _ in range(blocks):
        a = (1.0 + (T - 1) * rho) / T
        p, rho = p + a, (p * rho + a) / (p + a)
        out.append((p, rho))
        k = (math.sqrt(max(0.0, 1.0 - rho * rho)) + (math.pi - math.acos(rho)) * rho) / math.pi
        p, rho = p + 0.5, (p * rho + 0.5 * k) / (p + 0.5)
        out.append((p, rho))
    return np.array(out)


@functools.lru_cache(maxsize=2)
def results(quick: bool = False) -> dict:
    blocks = 3 if quick else BLOCKS
    pre, post = network("pre", blocks), network("post", blocks)
    th_pre, th_post = sp.predict(pre), sp.predict(post)
    samples = 4 if quick else SAMPLES
    mc_pre = sp.simulate(pre, samples, seed=SEED)
    mc_post = sp.simulate(post, samples, seed=SEED + 1)
    return {"blocks": blocks, "pre": th_pre, "post": th_post, "mc_pre": mc_pre,
            "mc_post": mc_post, "ref": recursion(blocks)}


def tables(quick: bool = False) -> str:
    r = results(quick)
    th, mc, ref = r["pre"], r["mc_pre"], r["ref"]
    rows = ["| blocks l | lower bound 1 + l/2 | signalprop p_l | recursion p_l | Monte Carlo (d = "
            f"{WIDTH}) | upper bound 1 + 3l/2 |", "| --- | --- | --- | --- | --- | --- |"]
    for l in range(1, r["blocks"] + 1):
        i = 2 * l - 1                      # the block's feed-forward residual sum
        rows.append(f"| {l} | {1 + l / 2:g} | {th.q[i]:.6f} | {ref[i, 0]:.6f} | "
                    f"{mc.q[i]:.3f} +- {mc.q_se[i]:.3f} | {1 + 1.5 * l:g} |")
    po, mpo = r["post"], r["mc_post"]
    ffn = np.arange(2, po.q.size, 4)       # post-LN rows: attention sum, LN, FFN sum, LN
    rows += ["", "Post-LN, the sum entering each feed-forward LayerNorm (paper: (3/2) d):", "",
             "| block | signalprop E\\|\\|x\\|\\|^2 / d | Monte Carlo |", "| --- | --- | --- |"]
    for j, i in enumerate(ffn):
        rows.append(f"| {j + 1} | {po.q[i]:.6f} | {mpo.q[i]:.3f} +- {mpo.q_se[i]:.3f} |")
    verdicts = (sp.compare(th, mc).verdict, sp.compare(po, mpo).verdict)
    rows += ["", f"`compare` (theory against Monte Carlo, every field): pre-LN {verdicts[0]}, "
                 f"post-LN {verdicts[1]}; signalprop against the recursion: max |difference| "
                 f"{np.max(np.abs(th.q - ref[:, 0])):.1e} in p, "
                 f"{np.max(np.abs(th.c - ref[:, 1])):.1e} in rho."]
    return "\n".join(rows)


@styled
def figure(out: pathlib.Path, quick: bool) -> pathlib.Path:
    r = results(quick)
    th, mc = r["pre"], r["mc_pre"]
    l = np.arange(1, r["blocks"] + 1)
    fig, axes = new_figure(1, 1, 5.0, 3.6)
    ax = axes[0, 0]
    ax.fill_between(l, 1 + l / 2, 1 + 1.5 * l, color="0.9", label="Lemma 2 bounds")
    ax.plot(l, th.q[1::2], color="#9467bd", label="pre-LN, signalprop")
    ax.errorbar(l, mc.q[1::2], yerr=2 * mc.q_se[1::2], fmt="o", ms=3, color="#9467bd",
                label=f"pre-LN, Monte Carlo d = {WIDTH}")
    ax.plot(l, r["post"].q[2::4], color="#ff7f0e", label="post-LN sum before LN")
    ax.errorbar(l, r["mc_post"].q[2::4], yerr=2 * r["mc_post"].q_se[2::4], fmt="s", ms=3,
                color="#ff7f0e")
    ax.set_xlabel("block l")
    ax.set_ylabel(r"$E\|x_l\|^2 / d$")
    ax.legend(fontsize=7)
    path = out / "fig_lemma2_norms.png"
    fig.savefig(path, dpi=130)
    return path


def main(argv=None) -> int:
    return run(__doc__, HERE, "a tiny run (3 blocks, 4 samples)", tables, [figure], argv)


if __name__ == "__main__":
    sys.exit(main())
