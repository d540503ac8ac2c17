#!/usr/bin/env python
"""The public single-layer maps on 10,000 random points, through the tables, side by side with the
direct Gaussian engine (same process) and with dks (issue 17); ``predict`` at depth 100 against
neural-tangents; optionally a cProfile of ``predict``.

Run from the repository root (prints everything; nothing is written unless ``--json PATH``)::

    python benchmarks/bench_maps.py                  # with the anchors' venv if it exists
    python benchmarks/bench_maps.py --no-anchors     # signalprop only
    python benchmarks/bench_maps.py --profile        # also: cProfile of predict, top 15

Rows (sigma_w^2 = 1.5, sigma_b^2 = 0.1, seed 0):

(a) ``length_map`` and ``chi_1`` at 10,000 random q, uniform in [0.01, 5] (dks' own vector range),
    tanh; baseline: the direct engine (``act.second_moment``, ``act.dphi_second_moment``) on the
    same q; anchor: dks' Q map, a Python loop of its 100,000-node Gauss-Legendre rule
    (``dks_maps.py``, ``vector.per_value_s``).
(b) ``correlation_map`` and ``chi_c`` at 10,000 random (q, c), q as in (a), c uniform in
    [-1, 1]: tanh (Mehler tables), elu (the (log q, theta) table), erf and relu (closed forms, no
    tables: the route is unchanged); a tanh row with q in [0.01, 100] too, where q > ~6.9 lies
    beyond tanh's Mehler table and is read from its (log q, scaled angle) tables
    (``tables.rho_scaled_array``, ``slope_scaled_array``; the cold call builds their panels:
    the build time is printed apart, the "first" of that row). Baseline: the direct engine on the
    first 1,000 pairs (per value); anchor: dks' C map at q = 1, c = 0.5 (scipy ``dblquad``, per
    value). Errors: the maps against the direct engine on those pairs (the direct engine is held
    against mpmath to ~1e-15 in tests/test_gaussian.py; the tables against mpmath in
    tests/test_maps.py).
(c) ``predict`` at depth 100, c0 = 0.5, tanh and erf, timed from the outside (the network built
    once), against neural-tangents' jitted kernel (``nt_meanfield.py --methods single_pass_jit``;
    tanh at its 100-node quadrature) run in the anchors' venv in this same run; the largest
    difference between the two profiles is printed (an independent reference for them is in
    benchmarks/bench_meanfield.py, part d).
(f) ``fixed_points`` (signalprop.meanfield) at 10,000 random (sigma_w2, sigma_b2), tanh, against
    ``fixed_point`` one by one (on the first 200, per point).

Timing: ``time.perf_counter``; the first call (cold tables) is printed apart, then the median of
the repeats. The anchors time themselves inside their process the same way. The load average is
printed: other load on the 2 cores inflates every figure.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import signalprop as sp
from signalprop import maps

HERE = Path(__file__).resolve().parent
ANCHORS = HERE.parent.parent / "shared" / "anchors"
VENV = Path(os.environ.get("SIGNALPROP_ANCHORS_VENV",
                           Path.home() / ".cache" / "signalprop-anchors-venv"))
SW2, SB2, N, N_DIRECT = 1.5, 0.1, 10_000, 1_000


def bench(fn, repeats: int = 5) -> dict:
    """First call timed apart, then the median and min of ``repeats`` calls."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"first_s": first, "median_s": statistics.median(times), "min_s": min(times)}


def fmt(s) -> str:
    if s is None or not math.isfinite(s):
        return "n/a"
    return f"{s * 1e6:.2f} us" if s < 1e-3 else (f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s")


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def anchor(script: str, *args: str, timeout: int = 900) -> dict | None:
    """One anchor runner in the anchors' venv (a subprocess: never imported here)."""
    py = VENV / "bin" / "python"
    if not py.exists():
        return None
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([str(py), str(ANCHORS / script), *args], capture_output=True, text=True,
                         timeout=timeout, env=env, cwd=ANCHORS)
    if res.returncode != 0:
        print(f"    anchor {script} {' '.join(args)} FAILED: {res.stderr.strip()[-300:]}")
        return None
    return json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1])


def rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def part_a(use_anchors: bool) -> dict:
    rng = np.random.default_rng(0)
    q = rng.uniform(0.01, 5.0, N)
    act = sp.activation("tanh")
    out = {}
    print(f"(a) length map and chi_1 at {N} random q in [0.01, 5], tanh, sigma_w2={SW2}, "
          f"sigma_b2={SB2}")
    t_tab = bench(lambda: maps.length_map(act, q, SW2, SB2))
    t_dir = bench(lambda: SW2 * act.second_moment(q) + SB2, repeats=3)
    err = rel(maps.length_map(act, q, SW2, SB2), SW2 * act.second_moment(q) + SB2)
    t_c1 = bench(lambda: maps.chi_1(act, q, SW2))
    t_c1d = bench(lambda: SW2 * act.dphi_second_moment(q), repeats=3)
    err1 = rel(maps.chi_1(act, q, SW2), SW2 * act.dphi_second_moment(q))
    d = anchor("dks_maps.py", "--act", "tanh", "--q", "1", "--c", "0.5", "--repeats", "3",
               "--c-repeats", "1", "--nvec", "1000", "--vec-repeats", "1") if use_anchors else None
    dks_q = d["vector"]["per_value_s"] if d else None
    print(f"    length_map: first call {fmt(t_tab['first_s'])} (builds the panels), then "
          f"{fmt(t_tab['median_s'])} = {fmt(t_tab['median_s'] / N)} per value; direct engine "
          f"{fmt(t_dir['median_s'])} (x{t_dir['median_s'] / t_tab['median_s']:.0f}); max rel "
          f"diff tables vs direct {err:.1e}")
    print(f"    chi_1:      {fmt(t_c1['median_s'])}; direct {fmt(t_c1d['median_s'])} "
          f"(x{t_c1d['median_s'] / t_c1['median_s']:.0f}); max rel diff {err1:.1e}")
    if dks_q:
        print(f"    dks Q map (Python loop, 1000 q): {fmt(dks_q)} per value -> signalprop is "
              f"{dks_q / (t_tab['median_s'] / N):.0f}x faster per value (target >= 1000x: "
              f"{'MET' if dks_q / (t_tab['median_s'] / N) >= 1000 else 'MISSED'})")
    else:
        print("    dks: not run (no anchors venv, or --no-anchors)")
    out.update(length_map=t_tab, length_direct=t_dir, length_err=err, chi_1=t_c1,
               chi_1_direct=t_c1d, chi_1_err=err1, dks_q_per_value_s=dks_q,
               dks_c_per_value_s=d["time_per_c_eval_s"] if d else None)
    return out


def part_b(use_anchors: bool, dks_c_tanh) -> dict:
    print(f"(b) correlation map and chi_c at {N} random (q, c), c in [-1, 1]")
    rows = {}
    specs = [("tanh", 5.0, N), ("tanh", 100.0, N), ("elu", 5.0, N), ("erf", 5.0, N),
             ("relu", 5.0, N)]
    dks_c = {"tanh": dks_c_tanh}
    for name, qmax, n in specs:
        rng = np.random.default_rng(1)
        q, c = rng.uniform(0.01, qmax, n), rng.uniform(-1.0, 1.0, n)
        act = sp.activation(name)
        t = bench(lambda: maps.correlation_map(act, q, c, SW2, SB2), repeats=3)
        qs, cs = q[:N_DIRECT], c[:N_DIRECT]
        td = bench(lambda: maps.corr_map(act, qs, cs, SW2, SB2), repeats=1)
        e = float(np.max(np.abs(maps.correlation_map(act, qs, cs, SW2, SB2)
                                - maps.corr_map(act, qs, cs, SW2, SB2))))
        per, per_d = t["median_s"] / n, td["median_s"] / N_DIRECT
        tc = bench(lambda: maps.chi_c(act, q, c, SW2), repeats=1)
        ec = rel(maps.chi_c(act, qs, cs, SW2), SW2 * act.dphi_cross_moment(qs, qs, cs))
        if use_anchors and dks_c.get(name) is None:
            d = anchor("dks_maps.py", "--act", name, "--q", "1", "--c", "0.5", "--repeats", "1",
                       "--c-repeats", "1", "--nvec", "0")
            dks_c[name] = d["time_per_c_eval_s"] if d else None
        dk = dks_c.get(name)
        vs = (f"; dks C map {fmt(dk)} per value -> {dk / per:.0f}x "
              f"({'MET' if dk / per >= 1000 else 'MISSED'} >= 1000x)") if dk else ""
        print(f"    {name:5s} q in [0.01, {qmax:g}], {n} pairs: first {fmt(t['first_s'])}, then "
              f"{fmt(t['median_s'])} = {fmt(per)} per pair; direct {fmt(per_d)} per pair "
              f"(x{per_d / per:.0f}); max |diff| vs direct {e:.1e}{vs}")
        print(f"          chi_c: {fmt(tc['median_s'])} = {fmt(tc['median_s'] / n)} per pair; max "
              f"rel diff vs direct {ec:.1e}")
        rows[f"{name}_q{qmax:g}"] = {"map": t, "direct_per_pair_s": per_d, "max_abs_diff": e,
                                     "chi_c": tc, "chi_c_rel_diff": ec, "dks_c_per_value_s": dk}
    return rows


def part_c(use_anchors: bool) -> dict:
    print("(c) predict, depth 100, c0 = 0.5, sigma_w2 = 1.5, sigma_b2 = 0.1 vs neural-tangents "
          "single_pass_jit")
    out = {}
    for name, deg in (("erf", None), ("tanh", 100)):
        net = sp.mlp(100, 1000, name, sigma_w2=SW2, sigma_b2=SB2)
        t = bench(lambda: sp.predict(net, c0=0.5), repeats=20)
        prof = sp.predict(net, c0=0.5)
        a = None
        if use_anchors:
            args = ["--act", name, "--sw2", str(SW2), "--sb2", str(SB2), "--depth", "100",
                    "--c0", "0.5", "--methods", "single_pass_jit", "--repeats", "5"]
            a = anchor("nt_meanfield.py", *(args + (["--deg", str(deg)] if deg else [])))
        line = f"    {name:5s} predict {fmt(t['median_s'])} (first {fmt(t['first_s'])})"
        if a:
            nt = a["timings"]["single_pass_jit"]["median_s"]
            dq = rel(prof.q, a["q"])            # layers 1..100 both
            dc = float(np.max(np.abs(np.asarray(prof.c) - np.asarray(a["c"]))))
            target = 20 if name == "erf" else 50
            line += (f"; neural-tangents {fmt(nt)} -> x{nt / t['median_s']:.1f} (target >= "
                     f"{target}x: {'MET' if nt / t['median_s'] >= target else 'MISSED'}); "
                     f"profiles differ by {dq:.1e} (q, rel), {dc:.1e} (c, abs)")
            out[name] = {"predict": t, "nt_median_s": nt, "ratio": nt / t["median_s"],
                         "diff_q": dq, "diff_c": dc}
        else:
            out[name] = {"predict": t}
        print(line)
    return out


def part_f() -> dict:
    """fixed_points over 10,000 random (sigma_w2, sigma_b2) against fixed_point one by one."""
    from signalprop.meanfield import fixed_points
    print(f"(f) fixed points at {N} random (sigma_w2, sigma_b2), sigma_w2 in [0.5, 4], sigma_b2 in "
          "[0, 0.5], tanh")
    rng = np.random.default_rng(2)
    sw, sb = rng.uniform(0.5, 4.0, N), rng.uniform(0.0, 0.5, N)
    t = bench(lambda: fixed_points("tanh", sw, sb), repeats=3)
    m = 200
    ts = bench(lambda: [sp.fixed_point("tanh", a, b) for a, b in zip(sw[:m], sb[:m])], repeats=1)
    F = fixed_points("tanh", sw[:m], sb[:m])
    fps = [sp.fixed_point("tanh", a, b) for a, b in zip(sw[:m], sb[:m])]
    err = max(rel(getattr(F, k), [getattr(f, k) for f in fps]) for k in ("q_star", "chi_1",
                                                                          "c_star", "chi_c"))
    per, per_s = t["median_s"] / N, ts["median_s"] / m
    print(f"    fixed_points: first {fmt(t['first_s'])}, then {fmt(t['median_s'])} = {fmt(per)} "
          f"per point; fixed_point one by one {fmt(per_s)} per point (x{per_s / per:.0f}); max "
          f"rel diff (q*, chi_1, c*, chi_c) on {m} points {err:.1e}")
    return {"fixed_points": t, "fixed_point_per_point_s": per_s, "max_rel_diff": err}


def profile_predict() -> str:
    net = sp.mlp(100, 1000, "tanh", sigma_w2=SW2, sigma_b2=SB2)
    sp.predict(net, c0=0.5)
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(20):
        sp.predict(net, c0=0.5)
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(15)
    return s.getvalue()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--no-anchors", action="store_true")
    p.add_argument("--profile", action="store_true", help="cProfile of predict (tanh, depth 100)")
    p.add_argument("--parts", default="abcf", help="which of the parts a, b, c, f to run")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    use = not args.no_anchors and (VENV / "bin" / "python").exists()
    print(f"bench_maps: load average {load()}; anchors: "
          f"{'venv ' + str(VENV) if use else 'not used'}")
    res: dict = {}
    if "a" in args.parts:
        res["a"] = part_a(use)
    if "b" in args.parts:
        res["b"] = part_b(use, res.get("a", {}).get("dks_c_per_value_s"))
    if "c" in args.parts:
        res["c"] = part_c(use)
    if "f" in args.parts:
        res["f"] = part_f()
    if args.profile:
        print("(d) cProfile of predict (tanh, depth 100, c0 = 0.5), 20 calls, top 15 by tottime")
        print(profile_predict())
    print(f"load average at the end {load()}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
