"""Forward and gradient variance at ResNet-152 and ResNet-1001 depths, with signalprop: plain
network, residual network (unscaled, 1/sqrt(L)-scaled, ReZero-like), pre-LN and post-LN.

    python papers/resnet_depth/reproduce.py            # figures into papers/resnet_depth/ (~4 min)
    python papers/resnet_depth/reproduce.py --tables   # the README's tables (same Monte Carlo)
    python papers/resnet_depth/reproduce.py --update-readme   # ... written into README.md
    python papers/resnet_depth/reproduce.py --quick --out /tmp/x   # a smoke run (tests)

The question (the source article, ../shared/seed/): skip connections "create gradient highways",
which is why ResNet-152 and ResNet-1001 train. How large are the forward second moment and the
gradient variance at those depths, at initialisation, for the usual variants?

Depth: ResNet-152 has 50 bottleneck blocks (He et al. 2016, "Deep residual learning", Table 1:
3 + 8 + 36 + 3 blocks of 3 weight layers, plus the stem convolution and the classifier = 152);
ResNet-1001 has 333 (He et al. 2016, "Identity mappings in deep residual networks", sec. 4:
depth 9n + 2 with n = 111 bottleneck blocks per stage, 3 stages). A bottleneck block is 3 weight
layers, so every residual network here has 3-layer branches (``sp.resnet(..., branch_depth=3)``:
``F(x) = W3 phi(W2 phi(W1 x))``) and the plain network has 3L layers.

Mean field treats a convolution like a dense layer of fan-in ``k^2 C`` (Xiao et al. 2018,
"Dynamical isometry and a mean field theory of CNNs", sec. 2: the diagonal of the kernel obeys
the fully connected recursion); the bottleneck's 4x narrower middle changes no mean-field
quantity (the width ratios of the backward factors cancel across the branch). No batch
normalisation: the LayerNorm variants stand in for "a normalisation layer".
"""

from __future__ import annotations

import functools
import math
import pathlib
import sys
import warnings

import numpy as np

import signalprop as sp
from signalprop.plot import new_figure

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))          # papers/_common.py
from _common import (README_BEGIN, README_END, parser, readme_block, styled,  # noqa: E402,F401
                     table_options, write_figures)

DEPTHS = {"ResNet-152": 50, "ResNet-1001": 333}     # residual blocks
N = 1024
SAMPLES = 48
SEED = 152_1001
REZERO_BETA = 0.1
# activation -> (sigma_w^2 of every weight layer, name of the scheme); no biases
INIT = {"relu": (2.0, "He"), "tanh": (1.0, "LeCun")}     # LeCun = Xavier for square layers
ARCHS = {  # key -> (label, colour, line style)
    "plain": ("plain, 3L layers", "black", "-"),
    "resnet": (r"residual, $\beta = 1$", "#d62728", "-"),
    "scaled": (r"residual, $\beta = 1/\sqrt{L}$", "#1f77b4", "-"),
    "rezero": (rf"ReZero-like, $\beta = {REZERO_BETA:g}$", "#2ca02c", "-"),
    "rezero0": (r"ReZero, $\beta = 0$ (identity)", "0.55", ":"),
    "preln": ("pre-LN residual", "#9467bd", "-"),
    "postln": ("post-LN residual", "#ff7f0e", "-"),
}


def build(arch: str, L: int, act: str, width: int = N) -> sp.Network:
    """The network of ``arch`` with ``L`` residual blocks (plain: 3L layers).

    plain: ``sp.mlp(3L)``; resnet / scaled / rezero / rezero0: ``x^l = x^{l-1} + beta F(x^{l-1})``
    with beta = 1, 1/sqrt(L) (Hayou et al. 2021, "Stable ResNet", eq. 1), 0.1, 0 (ReZero,
    Bachlechner et al. 2021, eq. 2, at initialisation); preln: ``x + F(LN(x))`` (Xiong et al. 2020, Fig. 1(b));
    postln: ``LN(x + F(x))`` (Xiong et al. 2020, Fig. 1(a); the original ResNet's placement of a
    normalisation after the addition, with LayerNorm for BatchNorm).
    """
    sw2, _ = INIT[act]
    kw = dict(branch_depth=3, sigma_w2=sw2, sigma_b2=0.0)
    if arch == "plain":
        return sp.mlp(3 * L, width, act, sigma_w2=sw2, sigma_b2=0.0)
    if arch in ("resnet", "scaled", "rezero", "rezero0"):
        beta = {"resnet": 1.0, "scaled": 1.0 / math.sqrt(L), "rezero": REZERO_BETA,
                "rezero0": 0.0}[arch]
        return sp.resnet(L, width, act, beta=beta, **kw)
    if arch == "preln":
        return sp.resnet(L, width, act, norm="layer", **kw)
    if arch == "postln":
        blk = sp.resnet(1, width, act, **kw).layers[0]
        return sp.Network(width, (blk, sp.LayerNorm(width)) * L)
    raise ValueError(arch)


def block_index(arch: str, L: int) -> tuple[np.ndarray, np.ndarray]:
    """(profile indices of the block outputs, their depth in weight layers). plain: every layer
    (its pre-activation, x = k); post-LN: the LayerNorm outputs; otherwise every block (x = 3l)."""
    if arch == "plain":
        return np.arange(3 * L), np.arange(1, 3 * L + 1)
    step = 2 if arch == "postln" else 1
    return np.arange(step - 1, step * L, step), 3 * np.arange(1, L + 1)


@functools.lru_cache(maxsize=None)
def theory(arch: str, L: int, act: str):
    return sp.predict(build(arch, L, act))


@functools.lru_cache(maxsize=None)
def monte_carlo(arch: str, L: int, act: str, samples: int, width: int):
    """simulate() (matrix-free, per-sample values kept) and compare() with predict()."""
    net = build(arch, L, act, width)
    seed = SEED + 10 * L + list(ARCHS).index(arch) + (0 if act == "relu" else 5000)
    with warnings.catch_warnings():
        # q_hat reaches 1e159 (relu, beta = 1, 333 blocks): its standard error overflows
        warnings.simplefilter("ignore", RuntimeWarning)
        sim = sp.simulate(net, samples, seed, engine="matrix-free", return_samples=True)
        cmp = sp.compare(sp.predict(net), sim)
    return sim, cmp


def summary(arch: str, L: int, act: str, samples: int = SAMPLES, width: int = N) -> dict:
    """q^L/q^0 and g^1/g^L (as logs), theory and Monte Carlo; q^0 = 1."""
    idx, _ = block_index(arch, L)
    th = theory(arch, L, act)
    sim, cmp = monte_carlo(arch, L, act, samples, width)
    i0, iL = idx[0], idx[-1]
    lg_samples = sim.samples["log_g"][:, i0] - sim.samples["log_g"][:, iL]
    return {"arch": arch, "L": L, "act": act,
            "log_q": float(th.log_q[iL]), "log_g": float(th.log_g[i0] - th.log_g[iL]),
            "log_q_mc": float(np.log(sim.q[iL])), "log_q_mc_se": float(sim.q_se[iL] / sim.q[iL]),
            "log_g_mc": float(sim.log_g[i0] - sim.log_g[iL]),
            "log_g_mc_se": float(math.hypot(sim.log_g_se[i0], sim.log_g_se[iL])),
            "sd_log_g": float(np.std(lg_samples, ddof=1)),
            "verdict": cmp.verdict, "beta": cmp.beta, "samples": samples, "width": width}


def relu_closed_forms(arch: str, L: int) -> tuple[float, float]:
    """(log q^L/q^0, log g^1/g^L) for relu with He init, derived in the README: the branch maps
    q -> q_F = 2q and multiplies gradients by kappa_F = 2 (each of its three layers has
    sigma_w^2 E[phi'^2] = 1 or sigma_w^2 = 2 for the linear one)."""
    if arch == "plain":             # q^1 = 2 q^0, then the fixed point; chi_1 = 1
        return math.log(2.0), 0.0
    if arch in ("resnet", "scaled", "rezero", "rezero0"):
        b2 = {"resnet": 1.0, "scaled": 1.0 / L, "rezero": REZERO_BETA ** 2, "rezero0": 0.0}[arch]
        r = math.log1p(2.0 * b2)
        return L * r, (L - 1) * r
    if arch == "preln":             # q^l = 1 + 2l, g^{l-1} = g^l (2l+1)/(2l-1)
        return math.log(1.0 + 2.0 * L), math.log((2.0 * L + 1.0) / 3.0)
    if arch == "postln":            # LN output: q = 1; (1 + kappa_F)/(1 + q_F) = 1
        return 0.0, 0.0
    raise ValueError(arch)


# ---------------------------------------------------------------------------------------------
# tables


def _num(log_value: float) -> str:
    """A ratio given by its log, printed as a number (3 significant digits)."""
    if not math.isfinite(log_value):
        return "—"
    if abs(log_value) < math.log(1e5):
        return f"{math.exp(log_value):.3g}"
    e = log_value / math.log(10.0)
    m = 10.0 ** (e - math.floor(e))
    return f"{m:.2f}e{int(math.floor(e)):+d}"


def rows(quick: bool = False) -> list[dict]:
    depths = {"ResNet-152": 5, "ResNet-1001": 12} if quick else DEPTHS
    samples, width = (6, 128) if quick else (SAMPLES, N)
    return [summary(arch, L, act, samples, width)
            for act in INIT for L in depths.values() for arch in ARCHS]


def markdown_tables(quick: bool = False) -> str:
    rs = rows(quick)
    r0 = rs[0]
    out = [f"q^L/q^0 (q of the last block's output; plain: of the last pre-activation) and "
           f"g^1/g^L (gradient variance per unit at block 1's output, relative to the last block; "
           f"plain: layer 1 against layer 3L). Theory: predict. Monte Carlo: matrix-free, width "
           f"{r0['width']}, {r0['samples']} networks per row, the ratio of the sample means (± 1 "
           f"standard error, delta method); `sd log g^1` is the spread over networks of "
           f"log(g_hat^1/g_hat^L). `compare`: CONVENTIONS.md's rule on every block, q and log g; "
           f"beta = sum 1/N over the layers (above 0.5 mean-field theory is not the reference: "
           f"compare.expected_to_agree).", "",
           "| phi | blocks | architecture | q^L/q^0 theory | q^L/q^0 MC | g^1/g^L theory "
           "| g^1/g^L MC | sd log g^1 | compare (beta) |", "|" + " --- |" * 9]
    for r in rs:
        label = ARCHS[r["arch"]][0].replace("$", "").replace("\\beta", "beta") \
            .replace("\\sqrt{L}", "sqrt(L)")
        L = r["L"] * (3 if r["arch"] == "plain" else 1)
        qmc = _num(r["log_q_mc"]) + (f" ± {100 * r['log_q_mc_se']:.2g} %"
                                     if math.isfinite(r["log_q_mc_se"]) else " (se overflows)")
        out.append(f"| {r['act']} | {r['L']} | {label} | {_num(r['log_q'])} | {qmc} | "
                   f"{_num(r['log_g'])} | {_num(r['log_g_mc'])} ± {100 * r['log_g_mc_se']:.2g} % | "
                   f"{r['sd_log_g']:.2f} | {r['verdict']} ({r['beta']:.2f}) |")
    out += ["", "relu, closed forms (README \"Derivations\") against predict, largest |difference| "
            "of the logs over both depths and all architectures: "
            f"{max_closed_form_error(quick):.1e}."]
    return "\n".join(out)


def max_closed_form_error(quick: bool = False) -> float:
    depths = (5, 12) if quick else DEPTHS.values()
    err = 0.0
    for L in depths:
        for arch in ARCHS:
            idx, _ = block_index(arch, L)
            th = theory(arch, L, "relu")
            lq, lg = relu_closed_forms(arch, L)
            err = max(err, abs(th.log_q[idx[-1]] - lq),
                      abs(th.log_g[idx[0]] - th.log_g[idx[-1]] - lg))
    return err


# ---------------------------------------------------------------------------------------------
# figures

YLIM = (-10.0, 20.0)


@styled
def figure(act: str, out: pathlib.Path, quick: bool) -> pathlib.Path:
    depths = {"ResNet-152": 5, "ResNet-1001": 12} if quick else DEPTHS
    samples, width = (6, 128) if quick else (SAMPLES, N)
    fig, ax = new_figure(len(depths), 2, width=3.9, height=2.9)
    for row, (name, L) in enumerate(depths.items()):
        aq, ag = ax[row]
        for arch, (label, col, ls) in ARCHS.items():
            idx, x = block_index(arch, L)
            th = theory(arch, L, act)
            lq, lg = np.asarray(th.log_q)[idx], np.asarray(th.log_g)[idx]
            for a, y, what in ((aq, lq, "q"), (ag, lg, "g")):
                a.plot(x, y, color=col, ls=ls, lw=1.2 if arch != "rezero0" else 1.0, label=label)
                if y.max() > YLIM[1]:    # off the scale: say where it ends
                    a.annotate(rf"{label}: $\log {what}$ reaches {y.max():.0f}",
                               (0.02, 0.97), xycoords="axes fraction", ha="left", va="top",
                               fontsize=7, color=col)
            if arch == "rezero0":
                continue
            sim, _ = monte_carlo(arch, L, act, samples, width)
            k = np.unique(np.round(np.linspace(0, len(idx) - 1, 12)).astype(int))
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                mq = np.log(np.asarray(sim.q)[idx][k])
                sq = (np.asarray(sim.q_se) / np.asarray(sim.q))[idx][k]
            mg = np.asarray(sim.log_g)[idx][k]
            sg = np.asarray(sim.log_g_se)[idx][k]
            for a, y, e in ((aq, mq, sq), (ag, mg, sg)):
                e = np.where(np.isfinite(e), e, 0.0)     # an overflowed q_se: no error bar
                a.errorbar(x[k], y, yerr=2 * e, fmt="o", ms=2.8, mfc="white",
                           mec=col, ecolor=col, elinewidth=0.8, capsize=1.2, zorder=5)
        aq.set(xlabel="depth (weight layers; block $l$ at $3l$)", ylabel=r"$\log q^l$",
               ylim=YLIM)
        ag.set(xlabel="depth (weight layers; block $l$ at $3l$)",
               ylabel=r"$\log g^l$  ($g^L = 1$)", ylim=YLIM)
        aq.set_title(f"{name}: {L} blocks, forward", loc="left")
        ag.set_title(f"{name}: {L} blocks, backward", loc="left")
    handles, labels = ax[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=4, frameon=False,
               fontsize=7)
    sw2, scheme = INIT[act]
    fig.suptitle(f"{act}, {scheme} init (sigma_w^2 = {sw2:g}), no biases, q^0 = 1. "
             f"Lines: predict; circles: Monte Carlo (matrix-free, N = {width}, {samples} networks, "
             f"log of the sample mean ± 2 se).", fontsize=7.5, x=0.01, ha="left")
    path = out / f"fig_{act}.png"
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> int:
    args = parser(__doc__, HERE, "shallow, narrow, few samples (smoke)").parse_args(argv)
    if table_options(args, markdown_tables, HERE / "README.md"):
        return 0
    write_figures([functools.partial(figure, act) for act in INIT], args.out, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
