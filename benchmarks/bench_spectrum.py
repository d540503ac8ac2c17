"""Benchmark: the random-matrix spectrum of the Jacobian against the Monte Carlo it replaces.

Prints, for a tanh network at the edge of chaos (q* = 1, every layer at q*), depth 100:

* theory: ``signalprop.spectrum`` (build + upper edge) and its density on 1000 points;
* Monte Carlo at N = 1024 (one network): the plain dense Jacobian product
  (``signalprop.jacobian.jacobian``, then ``eigvalsh(J J^T)``) and the QR-stabilised product
  (``signalprop.jacobian.jacobian_singular_values``, the one that resolves the small singular
  values at depth), and the ratios.

Usage::

    python benchmarks/bench_spectrum.py                 # gaussian and orthogonal weights
    python benchmarks/bench_spectrum.py --no-qr         # skip the (slow) QR-stabilised product
    python benchmarks/bench_spectrum.py --depth 100 --width 1024 --points 1000 --json
    python benchmarks/bench_spectrum.py --validate --widths 512 1024 2048 --depths 10 30 100
        # Kolmogorov distance theory vs Monte Carlo against the tolerance of the tests

Timings are wall-clock (``time.perf_counter``) in this process, on whatever else the machine is
running: quote ratios, not absolute times. ``loadavg`` is printed for that reason.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import signalprop as sp  # noqa: E402
from signalprop.spectrum import spectrum  # noqa: E402


def critical_network(q_star, depth, width, weights):
    a = sp.activation("tanh")
    sw2 = 1.0 / float(a.dphi_second_moment(q_star))
    sb2 = q_star - sw2 * float(a.second_moment(q_star))
    return sp.mlp(depth, width, a, sigma_w2=sw2, sigma_b2=sb2, weights=weights), (q_star - sb2) / sw2


def ks_and_tolerance(s, evs, N):
    """Kolmogorov distance between the pooled empirical CDF of the squared singular values of
    the networks and ``s.cdf`` over x >= 1e-8 upper_edge, and the tolerance of
    tests/test_spectrum.py: 4 max_x se(x) + 3/N (se from the spread of the per-network CDFs)."""
    U = s.upper_edge
    xs = np.unique(np.concatenate([U * np.logspace(-8, -1, 40), U * np.linspace(0.02, 1, 70)]))
    F = s.cdf(xs)
    pts = np.sort(np.concatenate(evs))
    pts = pts[pts >= xs[0]]
    emp = np.array([np.searchsorted(np.sort(e), pts, side="right") / e.size for e in evs])
    emp_lo = np.array([np.searchsorted(np.sort(e), pts, side="left") / e.size for e in evs])
    Ft = np.interp(np.log(pts), np.log(xs), F)
    d = max(np.max(np.abs(emp.mean(0) - Ft)), np.max(np.abs(emp_lo.mean(0) - Ft)))
    se = np.max(emp.std(axis=0, ddof=1)) / np.sqrt(len(evs))
    return d, 4 * se + 3.0 / N


def validate(widths, depths, samples):
    """Theory against Monte Carlo (dense products) for tanh (orthogonal, gaussian; q* = 1/4, 1)
    and relu (gaussian, He) at the edge of chaos."""
    from signalprop.jacobian import jacobian
    print("| case | N | L | networks | KS | tolerance | agree | MC s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for N in widths:
        for L in depths:
            for name, make in (("tanh orthogonal q*=1/4", lambda: critical_network(0.25, L, N, "orthogonal")),
                               ("tanh gaussian q*=1", lambda: critical_network(1.0, L, N, "gaussian")),
                               ("relu gaussian", lambda: (sp.mlp(L, N, "relu", sigma_w2=2.0), 1.0))):
                net, q0 = make()
                S = samples if N <= 512 else max(2, samples // 2)
                t0 = time.perf_counter()
                J = jacobian(net, S, 99, q0=q0)
                evs = [np.linalg.eigvalsh(j @ j.T) for j in J]
                t_mc = time.perf_counter() - t0
                d, tol = ks_and_tolerance(spectrum(net, q0), evs, N)
                print(f"| {name} | {N} | {L} | {S} | {d:.4f} | {tol:.4f} | {'yes' if d < tol else 'NO'} "
                      f"| {t_mc:.1f} |", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--q-star", type=float, default=1.0)
    ap.add_argument("--weights", nargs="+", default=["gaussian", "orthogonal"])
    ap.add_argument("--no-qr", action="store_true", help="skip the QR-stabilised Monte Carlo")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--validate", action="store_true",
                    help="instead: Kolmogorov distances theory vs Monte Carlo over widths x depths")
    ap.add_argument("--widths", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--depths", type=int, nargs="+", default=[10, 30, 100])
    ap.add_argument("--samples", type=int, default=4)
    args = ap.parse_args(argv)
    if args.validate:
        validate(args.widths, args.depths, args.samples)
        return 0
    from signalprop.jacobian import jacobian, jacobian_singular_values

    rows = []
    for weights in args.weights:
        net, q0 = critical_network(args.q_star, args.depth, args.width, weights)
        t0 = time.perf_counter()
        s = spectrum(net, q0)
        U = s.upper_edge
        t_build = time.perf_counter() - t0
        x = s.grid(args.points)
        t0 = time.perf_counter()
        rho = s.density(x)
        t_density = time.perf_counter() - t0
        t0 = time.perf_counter()
        J = jacobian(net, 1, 0, q0=q0)
        ev = np.linalg.eigvalsh(J[0] @ J[0].T)
        t_mc = time.perf_counter() - t0
        row = {"weights": weights, "depth": args.depth, "width": args.width, "points": args.points,
               "theory_build_s": t_build, "theory_density_s": t_density,
               "theory_total_s": t_build + t_density, "mc_dense_s": t_mc,
               "ratio_dense": t_mc / (t_build + t_density),
               "upper_edge": U, "mc_largest": float(ev.max()),
               "mean": s.mean, "mc_mean": float(ev.mean()),
               "density_integral_trapezoid": float(np.trapezoid(rho, x))}
        if not args.no_qr:
            t0 = time.perf_counter()
            jacobian_singular_values(net, 1, 0, q0=q0)
            t_qr = time.perf_counter() - t0
            row["mc_qr_s"] = t_qr
            row["ratio_qr"] = t_qr / (t_build + t_density)
        rows.append(row)
        if not args.json:
            print(f"tanh q*={args.q_star} {weights:10s} depth {args.depth}: theory "
                  f"{t_build:.2f} s (build + edge) + {t_density:.2f} s (density, {args.points} "
                  f"points); Monte Carlo N={args.width}: dense product {t_mc:.1f} s "
                  f"(x{row['ratio_dense']:.0f})"
                  + (f", QR-stabilised {row['mc_qr_s']:.1f} s (x{row['ratio_qr']:.0f})"
                     if "mc_qr_s" in row else "")
                  + f"; edge {U:.4g} (MC largest {row['mc_largest']:.4g}), mean {s.mean:.4g} "
                  f"(MC {row['mc_mean']:.4g})", flush=True)
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"rows": rows, "loadavg": load}))
    else:
        print(f"loadavg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; cpus {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
