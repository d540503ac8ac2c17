"""Reproduce the moment / variance growth and the depth-scaled limiting spectra of Pennington,
Schoenholz & Ganguli 2018, "The emergence of spectral universality in deep networks"
(AISTATS 2018, arXiv 1802.09979), with ``signalprop.spectrum``.

    python papers/pennington2018/reproduce.py            # figures + tables
    python papers/pennington2018/reproduce.py --no-mc    # theory only

Networks at the edge of chaos, every layer at q* (``critical_mlp`` in ../_common.py). Monte
Carlo: ``signalprop.jacobian.jacobian``, width 256, 4 networks per point, moments of the pooled
eigenvalues of J J^T (error bars: 2 standard errors over the networks).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
from scipy.optimize import brentq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, ".."))          # papers/_common.py

import signalprop as sp  # noqa: E402
from _common import critical_mlp  # noqa: E402
from signalprop.plot import new_figure, save  # noqa: E402
from signalprop.spectrum import spectrum  # noqa: E402

N_MC, S_MC = 256, 4
CASES = [("linear", 1.0), ("relu", 1.0), ("hard_tanh", 0.25), ("tanh", 0.25), ("erf", 0.25)]


def mc_moments(net, q0, seed, kmax):
    from signalprop.jacobian import jacobian
    J = jacobian(net, S_MC, seed, q0=q0)
    per = []
    for j in J:
        ev = np.linalg.eigvalsh(j @ j.T)
        per.append([np.mean(ev ** k) for k in range(1, kmax + 1)])
    per = np.array(per)
    return per.mean(axis=0), per.std(axis=0, ddof=1) / math.sqrt(S_MC), per


def fig1(mc=True):
    """Normalised variance (m_2 - m_1^2)/m_1^2 of the squared singular values against depth."""
    depths = np.unique(np.round(np.geomspace(1, 1000, 25)).astype(int))
    mc_depths = (2, 4, 8, 16, 32)
    fig, ax = new_figure(1, 2, width=3.3, height=2.6)
    colors = ["k", "#d62728", "#ff7f0e", "#1f77b4", "#2ca02c"]
    for j, w in enumerate(("gaussian", "orthogonal")):
        a = ax[0, j]
        for (act, q), c in zip(CASES, colors):
            v = np.array([spectrum(*critical_mlp(act, q, int(L), w, 8)).normalised_variance
                          for L in depths])
            lab = act + ("" if act in ("linear", "relu") else f" q*={q:g}")
            if np.all(v <= 1e-12):
                a.plot([], [], color=c, label=lab + " (0: isometric)")
                continue
            a.loglog(depths, v, color=c, label=lab)
            if mc:
                pts, err = [], []
                for L in mc_depths:
                    net, q0 = critical_mlp(act, q, L, w, N_MC)
                    _, _, per = mc_moments(net, q0, 31 * L, 2)
                    nv = per[:, 1] / per[:, 0] ** 2 - 1
                    pts.append(nv.mean())
                    err.append(2 * nv.std(ddof=1) / math.sqrt(S_MC))
                a.errorbar(mc_depths, pts, yerr=err, fmt="o", ms=2.5, color=c, elinewidth=0.8)
        a.set_xlabel("depth L")
        a.set_title(f"{w} weights")
        a.legend()
    ax[0, 0].set_ylabel(r"$(m_2 - m_1^2)/m_1^2$ of $\lambda(JJ^T)$")
    fig.suptitle(f"lines: theory (series); dots: Monte Carlo, N={N_MC}, {S_MC} networks")
    save(fig, os.path.join(HERE, "fig1_variance_growth.png"))


def fig2(mc=True):
    """Moments m_k (k = 2..6) against depth, tanh at q* = 1/4 (m_1 = 1 at criticality)."""
    depths = np.unique(np.round(np.geomspace(1, 200, 20)).astype(int))
    fig, ax = new_figure(1, 2, width=3.3, height=2.6)
    for j, w in enumerate(("gaussian", "orthogonal")):
        a = ax[0, j]
        m = np.array([spectrum(*critical_mlp("tanh", 0.25, int(L), w, 8)).moments(6)
                      for L in depths])
        for k in range(2, 7):
            line, = a.semilogy(depths, m[:, k - 1], label=f"k={k}")
            if mc:
                for L in (4, 16):
                    net, q0 = critical_mlp("tanh", 0.25, L, w, N_MC)
                    mean, se, _ = mc_moments(net, q0, 7 * L + k, 6)
                    a.errorbar([L], [mean[k - 1]], yerr=[2 * se[k - 1]], fmt="o", ms=2.5,
                               color=line.get_color(), elinewidth=0.8)
        a.set_xscale("log")
        a.set_xlabel("depth L")
        a.set_title(f"tanh q*=1/4, {w}")
        a.legend()
    ax[0, 0].set_ylabel(r"moment $m_k$ of $\lambda(JJ^T)$")
    save(fig, os.path.join(HERE, "fig2_moments.png"))


def q_for_variance(act, L, s_total):
    """q* with L v_D(q*) = s_total (orthogonal weights: normalised variance s_total at depth L)."""
    a = sp.activation(act)

    def f(lq):
        q = math.exp(lq)
        return L * (float(a.dphi_fourth_moment(q)) / float(a.dphi_second_moment(q)) ** 2 - 1) - s_total
    return math.exp(brentq(f, math.log(1e-8), math.log(10.0)))


def fig3(s_total=1.0):
    """Orthogonal weights with q* scaled with depth so that the normalised variance stays
    s_total: the spectra converge as L grows (tanh, erf: one limit; hard tanh: another)."""
    fig, ax = new_figure(1, 2, width=3.3, height=2.6)
    depths = (4, 16, 64, 256)
    colors = ["#1f77b4", "#2ca02c", "#ff7f0e", "#d62728"]
    rows = []
    for j, act in enumerate(("tanh", "hard_tanh")):
        a = ax[0, j]
        for L, c in zip(depths, colors):
            q = q_for_variance(act, L, s_total)
            s = spectrum(*critical_mlp(act, q, L, "orthogonal", 8))
            x = s.grid(400)
            a.plot(x, s.density(x), color=c, label=f"L={L} (q*={q:.3g})"
                   + (f", atom {s.atoms[0][1]:.2f}" if s.atoms else ""))
            rows.append((act, L, q, s.normalised_variance, s.upper_edge, s.moments(4)))
        if act == "tanh":
            q = q_for_variance("erf", 256, s_total)
            s = spectrum(*critical_mlp("erf", q, 256, "orthogonal", 8))
            x = s.grid(400)
            a.plot(x, s.density(x), "k:", label="erf, L=256")
            rows.append(("erf", 256, q, s.normalised_variance, s.upper_edge, s.moments(4)))
        a.set_xlabel(r"$\lambda$ (squared singular value)")
        a.set_title(f"{act}, orthogonal, L v_D = {s_total:g}")
        a.set_xlim(0, 4)
        a.set_ylim(0, 2.5)
        a.legend()
    ax[0, 0].set_ylabel("density (continuous part)")
    save(fig, os.path.join(HERE, "fig3_depth_scaled_limit.png"))
    return rows


def tables(rows):
    print("## Normalised variance at depth L (series) against the closed form L (v_D + v_W)")
    print("| activation | q* | weights | L=10 | L=100 | L=1000 | v_D + v_W |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for act, q in CASES:
        a = sp.activation(act)
        vd = float(a.dphi_fourth_moment(q)) / float(a.dphi_second_moment(q)) ** 2 - 1
        for w in ("gaussian", "orthogonal"):
            v = [spectrum(*critical_mlp(act, q, L, w, 8)).normalised_variance
                 for L in (10, 100, 1000)]
            print(f"| {act} | {q:g} | {w} | " + " | ".join(f"{x:.6g}" for x in v)
                  + f" | {vd + (1.0 if w == 'gaussian' else 0.0):.6g} |")
    print()
    print("## Depth-scaled orthogonal networks (L v_D(q*) = 1): the moments converge")
    print("| activation | L | q* | normalised variance | m_2 | m_3 | m_4 | upper edge |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for act, L, q, nv, U, m in rows:
        print(f"| {act} | {L} | {q:.4g} | {nv:.6f} | {m[1]:.5f} | {m[2]:.5f} | {m[3]:.5f} | {U:.4f} |")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-mc", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    fig1(mc=not args.no_mc)
    fig2(mc=not args.no_mc)
    rows = fig3()
    tables(rows)
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
