"""Finite-width gradient statistics of Hanin (2018), Hanin & Nica (2019) and Hanin & Rolnick
(2018) with signalprop.finite.

    python papers/hanin2018/reproduce.py                 # figures into papers/hanin2018/
    python papers/hanin2018/reproduce.py --tables        # the README's comparison tables
    python papers/hanin2018/reproduce.py --quick --out /tmp/x   # a smoke run

Quantity: ``g_hat^1 = ||delta^1||^2/N_1``, the squared gradient norm at the first layer for the loss
``<v, h^L>`` (CONVENTIONS.md), ReLU with He init (``sigma_w^2 = 2``, no bias), widths ``N``. Its
log is a sum of ``L - 1`` ReLU factors ``log((2/N) chi^2_K)`` and one ``log(chi^2_N/N)``
(signalprop.finite, section 1), so Hanin & Nica's parameter is ``beta = 5 (L-1)/N + 2/N`` and their
asymptotic law is ``log(g_hat/g) ~ N(-beta/2, beta)``. Ours is the exact law (digamma/trigamma).
"""

from __future__ import annotations

import math
import pathlib
import sys
import time

import numpy as np

import signalprop as sp
from signalprop.finite import finite_width
from signalprop.plot import new_figure
from signalprop.simulate import simulate

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))          # papers/_common.py
from _common import parser, styled, table_options  # noqa: E402

TANH_CRIT = float(sp.critical_sigma_w2("tanh", 0.05))
WIDTHS = (16, 32, 128)
# LITERATURE.md §5 [NUM]: (n, d) -> (log-mean, log-variance) of (n0/nd)||J u||^2, 3000 nets
RECORDED = {(128, 16): (-0.306, 0.608), (64, 16): (-0.624, 1.252), (32, 8): (-0.589, 1.335),
            (32, 16): (-1.307, 2.743)}


def relu(L: int, N: int):
    return sp.mlp(L, N, "relu", init="he")


def tanh(L: int, N: int):
    return sp.mlp(L, N, "tanh", sigma_w2=TANH_CRIT, sigma_b2=0.05)


def depth_for_beta(beta: float, N: int) -> int:
    """ReLU: beta = (5 (L - 1) + 2)/N -> L."""
    return max(1, int(round((beta * N - 2) / 5 + 1)))


def mc_log_g1(net, samples: int, seed: int) -> dict:
    """Mean and variance of log(g_hat^1/g^1) over ``samples`` networks, with standard errors."""
    fw = finite_width(net)
    x = simulate(net, samples, seed, engine="matrix-free",
                 return_samples=True).samples["log_g"][:, 0] - fw.log_g[0]
    x = x[np.isfinite(x)]
    m, v = x.mean(), x.var(ddof=1)
    vse = math.sqrt(max(np.mean((x - m) ** 4) - v * v, 0) / x.size)
    return {"mean": m, "mean_se": math.sqrt(v / x.size), "var": v, "var_se": vse, "x": x,
            "fw": fw}


def comparison_rows(samples: int) -> list[dict]:
    rows = []
    for (n, d), (lm, lv) in RECORDED.items():
        r = mc_log_g1(relu(d, n), samples, 1000 + n + d)
        fw = r["fw"]
        rows.append({"n": n, "d": d, "beta": fw.beta[0], "rec_mean": lm, "rec_var": lv,
                     "ours_mean": fw.log_g_mean[0] - fw.log_g[0], "ours_var": fw.log_g_var[0],
                     "mc_mean": r["mean"], "mc_mean_se": r["mean_se"], "mc_var": r["var"],
                     "mc_var_se": r["var_se"]})
    return rows


def moment_rows() -> list[dict]:
    rows = []
    for name, widths, rec in (("11 x 50", [50] * 11, "2.452"), ("11 x 20", [20] * 11, "8.196"),
                              ("11 x 10", [10] * 11, "46.13"),
                              ("[100, 10 x 5, 100 x 5]", [100] + [10] * 5 + [100] * 5, "9.415")):
        fw = finite_width(sp.mlp(10, widths, "relu", init="he"))
        rows.append({"name": name, "recorded": rec, "ours": fw.q_m2[-1]})
    return rows


def markdown_tables(samples: int) -> str:
    out = ["| n | d | beta = 5(d-1)/n + 2/n | recorded log-mean | ours (exact) | our Monte Carlo "
           "| recorded log-var | ours (exact) | our Monte Carlo | Hanin-Nica (-beta/2, beta) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in comparison_rows(samples):
        out.append(f"| {r['n']} | {r['d']} | {r['beta']:.3f} | {r['rec_mean']:.3f} | "
                   f"{r['ours_mean']:.3f} | {r['mc_mean']:.3f} ± {r['mc_mean_se']:.3f} | "
                   f"{r['rec_var']:.3f} | {r['ours_var']:.3f} | {r['mc_var']:.3f} ± "
                   f"{r['mc_var_se']:.3f} | {-r['beta'] / 2:.3f} / {r['beta']:.3f} |")
    out += ["", "| widths (Hanin-Rolnick) | recorded E[M^2]/E[M]^2 | ours `q_m2[L]` |",
            "| --- | --- | --- |"]
    for r in moment_rows():
        out.append(f"| {r['name']} | {r['recorded']} | {r['ours']:.6g} |")
    return "\n".join(out)


def mc_layers(net, samples: int, seed: int) -> tuple:
    """Monte Carlo mean and variance (with standard errors) of log(g_hat^l/g^l) at every layer."""
    fw = finite_width(net)
    X = simulate(net, samples, seed, engine="matrix-free",
                 return_samples=True).samples["log_g"] - fw.log_g
    X = X[np.all(np.isfinite(X), axis=1)]
    m, v = X.mean(0), X.var(0, ddof=1)
    vse = np.sqrt(np.maximum(np.mean((X - m) ** 4, axis=0) - v * v, 0) / len(X))
    return fw, m, np.sqrt(v / len(X)), v, vse


@styled
def figure_beta(out: pathlib.Path, samples: int, quick: bool) -> pathlib.Path:
    """Var and mean of log g_hat^l against beta_l: the exact ReLU law at three widths, the tanh
    approximation, Hanin & Nica's asymptote, and Monte Carlo (one run per network, all layers)."""
    fig, axes = new_figure(1, 2, width=3.6, height=2.9)
    ax_v, ax_m = axes[0]
    colors = {16: "#1f77b4", 32: "#ff7f0e", 128: "#2ca02c"}
    bmax = 2.2
    nets = [(f"ReLU He N={N}, exact", relu(depth_for_beta(bmax, N), N), colors[N], "-", "o")
            for N in WIDTHS]
    nets.append(("tanh critical N=128 (approx.)", tanh(45 if quick else 60, 128), "purple", "--",
                 "s"))
    for i, (label, net, color, ls, marker) in enumerate(nets):
        fw, m, mse, v, vse = mc_layers(net, samples, 10 + i)
        b = fw.beta
        ax_v.plot(b, fw.log_g_var, color=color, ls=ls, label=label)
        ax_m.plot(b, fw.log_g_mean - fw.log_g, color=color, ls=ls)
        step = max(1, net.depth // 8)
        idx = np.arange(net.depth - 1, -1, -step)
        ax_v.errorbar(b[idx], v[idx], 2 * vse[idx], fmt=marker, ms=3, color=color)
        ax_m.errorbar(b[idx], m[idx], 2 * mse[idx], fmt=marker, ms=3, color=color)
    bs = np.linspace(0, bmax, 50)
    ax_v.plot(bs, bs, color="black", lw=0.9, ls=":", label=r"Hanin-Nica: $\beta$")
    ax_m.plot(bs, -bs / 2, color="black", lw=0.9, ls=":", label=r"Hanin-Nica: $-\beta/2$")
    ax_v.set_xlabel(r"$\beta_l = \sum_{k=l}^{L-1} (3\kappa_k - 1)/N_k + 2/N_L$")
    ax_m.set_xlabel(r"$\beta_l$")
    ax_v.set_ylabel(r"Var log $\hat g^l$")
    ax_m.set_ylabel(r"E log($\hat g^l / g^l$)")
    ax_v.set_title("(a) log-variance of the gradient norm", loc="left")
    ax_m.set_title("(b) log-mean; markers: Monte Carlo ±2 se", loc="left")
    ax_v.legend(loc="upper left")
    ax_m.legend(loc="lower left")
    path = out / "fig1_logvar_vs_beta.png"
    fig.savefig(path)
    return path


@styled
def figure_law(out: pathlib.Path, samples: int) -> pathlib.Path:
    from scipy import stats
    fig, axes = new_figure(1, 2, width=3.6, height=2.7)
    for ax, (name, net) in zip(axes[0], (("ReLU He, N = 16, L = 8", relu(8, 16)),
                                         ("tanh critical, N = 32, L = 16", tanh(16, 32)))):
        r = mc_log_g1(net, samples, 77)
        fw = r["fw"]
        law, hn = fw.grad_law(1), fw.hanin_nica_law(1)
        x = r["x"] + fw.log_g[0]
        ax.hist(x, bins=80, density=True, color="0.75", label=f"Monte Carlo ({x.size})")
        t = np.linspace(x.min(), x.max(), 400)
        dens = law.pdf(np.exp(t)) * np.exp(t) / (1 - law.p0)   # density of log X
        ax.plot(t, dens, color="black", label=f"ours (skew {law.skew:+.2f})")
        ax.plot(t, stats.norm(hn.mu, hn.sigma).pdf(t), color="#d62728", ls="--",
                label=r"Hanin-Nica $N(-\beta/2, \beta)$")
        ax.set_xlabel(r"$\log \hat g^1$")
        ax.set_title(f"{name} (beta = {fw.beta[0]:.2f})", loc="left")
        ax.legend(loc="upper left")
    path = out / "fig2_law.png"
    fig.savefig(path)
    return path


def main(argv=None) -> int:
    args = parser(__doc__, HERE, "few samples (smoke test)", readme=False).parse_args(argv)
    if table_options(args, lambda quick: markdown_tables(500 if quick else 20000)):
        return 0
    samples = 400 if args.quick else 4000
    args.out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    for p in (figure_beta(args.out, samples, args.quick), figure_law(args.out, 5 * samples)):
        print(f"wrote {p} ({p.stat().st_size // 1024} KB)")
    print(f"{time.time() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
