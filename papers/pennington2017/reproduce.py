"""Reproduce the spectral figures of Pennington, Schoenholz & Ganguli 2017, "Resurrecting the
sigmoid in deep learning through dynamical isometry" (NeurIPS 2017, arXiv 1711.04735), with
``signalprop.spectrum``, and print the tables of README.md.

    python papers/pennington2017/reproduce.py            # figures + tables
    python papers/pennington2017/reproduce.py --no-mc    # theory only
    python papers/pennington2017/reproduce.py --tables   # tables only

Every network sits at the edge of chaos with every layer at its fixed point q*
(``sigma_w^2 = 1/E[phi'(sqrt(q*) z)^2]``, ``sigma_b^2 = q* - sigma_w^2 E[phi(sqrt(q*) z)^2]``,
input ``q0 = (q* - sigma_b^2)/sigma_w^2``). Densities are of the singular values ``sigma`` of J
(``rho_sigma(s) = 2 s rho_lambda(s^2)``, lambda = s^2 an eigenvalue of J J^T); atoms are
reported in the legends, not drawn. Monte Carlo: ``signalprop.jacobian.jacobian`` (dense
products), width N = 400, 3 networks per curve, seeds fixed below.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, ".."))          # papers/_common.py

from _common import critical_mlp  # noqa: E402
from signalprop.plot import new_figure, save  # noqa: E402
from signalprop.spectrum import isometry, spectrum  # noqa: E402

N_MC, S_MC = 400, 3


def sv_density(s, n=500):
    """(sigma grid, density of singular values) over the support of the continuous part."""
    lam = s.grid(n)
    return np.sqrt(lam), 2 * np.sqrt(lam) * s.density(lam)


def mc_singular_values(net, q0, seed):
    from signalprop.jacobian import jacobian
    J = jacobian(net, S_MC, seed, q0=q0)
    return np.concatenate([np.sqrt(np.clip(np.linalg.eigvalsh(j @ j.T), 0, None)) for j in J])


def atom_note(s):
    parts = []
    if s.zero_mass > 1e-9:
        parts.append(f"atom 0: {s.zero_mass:.2f}")
    for a, m in s.atoms:
        parts.append(f"atom {math.sqrt(a):.3g}: {m:.2f}")
    return (" (" + ", ".join(parts) + ")") if parts else ""


def fig1(mc=True):
    """Deep spectra at criticality: linear (gaussian), relu (orthogonal), hard tanh (orthogonal,
    q* = 1), depths 2, 8, 32, 128."""
    cases = [("linear", "gaussian", 1.0), ("relu", "orthogonal", 1.0), ("hard_tanh", "orthogonal", 1.0)]
    depths = (2, 8, 32, 128)
    fig, ax = new_figure(1, 3, width=3.0, height=2.4)
    colors = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd"]
    for k, (act, w, q) in enumerate(cases):
        a = ax[0, k]
        smax = 0
        for L, c in zip(depths, colors):
            net, q0 = critical_mlp(act, q, L, w, N_MC)
            s = spectrum(net, q0)
            x, r = sv_density(s)
            a.plot(x, r, color=c, label=f"L={L}{atom_note(s)}")
            if mc and L <= 32:
                sv = mc_singular_values(net, q0, 1000 + L)
                sv = sv[sv > 1e-6 * sv.max()]
                a.hist(sv, bins=60, density=False, weights=np.full(sv.size, 1.0 / (S_MC * N_MC)) /
                       ((sv.max() - sv.min()) / 60), histtype="step", color=c, lw=0.6, alpha=0.8)
            smax = max(smax, float(np.quantile(x[r > 1e-3 * r.max()], 0.999)))
        a.set_xlim(0, min(smax, 6.0))
        a.set_ylim(0, None)
        a.set_xlabel("singular value of J")
        a.set_title(f"{act}, {w} weights" + (f", q*={q:g}" if act == "hard_tanh" else ""))
        a.legend(loc="upper right")
    ax[0, 0].set_ylabel("density")
    save(fig, os.path.join(HERE, "fig1_deep_spectra.png"))


def fig2():
    """Largest singular value against depth: relu and hard tanh (q* = 1/64, 1/4, 1), gaussian and
    orthogonal weights."""
    depths = np.unique(np.round(np.geomspace(1, 256, 17)).astype(int))
    fig, ax = new_figure(1, 2, width=3.3, height=2.5)
    for j, w in enumerate(("gaussian", "orthogonal")):
        a = ax[0, j]
        for act, q, ls in (("relu", 1.0, "-"), ("hard_tanh", 1 / 64, ":"), ("hard_tanh", 0.25, "--"),
                           ("hard_tanh", 1.0, "-.")):
            e = [spectrum(*critical_mlp(act, q, int(L), w, 16)).upper_edge for L in depths]
            a.loglog(depths, np.sqrt(e), ls, label=act + ("" if act == "relu" else f" q*={q:g}"))
        a.set_xlabel("depth L")
        a.set_title(f"{w} weights")
        a.legend()
    ax[0, 0].set_ylabel(r"largest singular value $\sigma_{max}$")
    save(fig, os.path.join(HERE, "fig2_max_singular_value.png"))


def fig_sigmoid(act, fname, mc=True):
    """tanh / erf: gaussian against orthogonal weights at q* = 1/64, 1/16, 1/4, 1; depth 16 (with
    Monte Carlo) and depth 128."""
    qs = (1 / 64, 1 / 16, 1 / 4, 1.0)
    colors = ["#1f77b4", "#2ca02c", "#ff7f0e", "#d62728"]
    fig, ax = new_figure(2, 2, width=3.2, height=2.3)
    for i, L in enumerate((16, 128)):
        for j, w in enumerate(("gaussian", "orthogonal")):
            a = ax[i, j]
            for q, c in zip(qs, colors):
                net, q0 = critical_mlp(act, q, L, w, N_MC)
                s = spectrum(net, q0)
                x, r = sv_density(s)
                a.plot(x, r, color=c, label=f"q*={q:g}")
                if mc and L == 16:
                    sv = mc_singular_values(net, q0, 77 + int(1 / q))
                    bins = np.linspace(0, x.max() * 1.05, 61)
                    h, _ = np.histogram(sv, bins=bins)
                    a.step(bins[:-1], h / (sv.size * np.diff(bins)), where="post", color=c, lw=0.6)
            a.set_xlim(0, 3.0 if w == "gaussian" else 2.0)
            a.set_yscale("log")
            a.set_ylim(1e-3, None)
            a.set_title(f"{act}, {w}, L={L}")
            a.set_xlabel("singular value of J")
            if j == 0:
                a.set_ylabel("density")
            a.legend()
    save(fig, os.path.join(HERE, fname))


def tables():
    print("## Normalised variance per layer (sigma^2_{JJ^T}/L at chi_1 = 1), tanh")
    print("| q* | sigma_w^2 | sigma_b^2 | orthogonal (ours) | gaussian (ours) |")
    print("| --- | --- | --- | --- | --- |")
    for q in (1 / 64, 1 / 16, 0.25, 0.5, 1.0, 2.0):
        for w in ("orthogonal", "gaussian"):
            net, q0 = critical_mlp("tanh", q, 10, w, 8)
            s = spectrum(net, q0)
            if w == "orthogonal":
                vo = s.normalised_variance / 10
            else:
                vg = s.normalised_variance / 10
        print(f"| {q:.6g} | {net.layers[0].sigma_w2:.5f} | {net.layers[0].sigma_b2:.4g} | "
              f"{vo:.5f} | {vg:.5f} |")
    print()
    print("## Largest eigenvalue of J J^T at criticality")
    print("| case | L = 2 | 4 | 8 | 16 |")
    print("| --- | --- | --- | --- | --- |")
    for act, w in (("linear", "gaussian"), ("relu", "gaussian"), ("relu", "orthogonal")):
        e = [spectrum(*critical_mlp(act, 1.0, L, w, 8)).upper_edge for L in (2, 4, 8, 16)]
        print(f"| {act} {w} | " + " | ".join(f"{v:.4g}" for v in e) + " |")
    for q in (0.25, 1.0):
        p = math.erf(1 / math.sqrt(2 * q))
        for w in ("orthogonal", "gaussian"):
            v = [spectrum(*critical_mlp("hard_tanh", q, L, w, 8)).variance for L in (8, 16)]
            print(f"| hard_tanh q*={q} {w}: variance L=8, 16 | {v[0]:.4g} | {v[1]:.4g} | "
                  f"formula {8 * (1 / p - (1 if w == 'orthogonal' else 0)):.4g}, "
                  f"{16 * (1 / p - (1 if w == 'orthogonal' else 0)):.4g} | p = {p:.4f} |")
    print()
    print("## Dynamical isometry along the critical line (isometry())")
    for act in ("tanh", "erf", "hard_tanh", "relu"):
        for w in ("orthogonal", "gaussian"):
            r = isometry(act, w, depths=(128,), edge_points=3)
            print(f"- {act}, {w}: achievable={r.achievable}; best q*={r.best.get('q_star')}, "
                  f"variance/L={r.best.get('variance_per_layer'):.3g}; {r.reason}")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-mc", action="store_true")
    ap.add_argument("--tables", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if not args.tables:
        fig1(mc=not args.no_mc)
        fig2()
        fig_sigmoid("tanh", "fig3_tanh.png", mc=not args.no_mc)
        fig_sigmoid("erf", "fig4_erf.png", mc=not args.no_mc)
    tables()
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
