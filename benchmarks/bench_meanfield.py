#!/usr/bin/env python
"""Mean-field benchmark: wall times of signalprop's theory and a side-by-side with neural-tangents.

Run from the repository root (prints everything; nothing is written unless ``--json PATH``)::

    python benchmarks/bench_meanfield.py
    python benchmarks/bench_meanfield.py --anchors-venv /root/anchors-venv

(a) a 256 x 256 tanh ``phase_diagram`` (q*, chi_1, c*, xi_c and the critical line); target < 2 s.
(b) a depth-10^4 ``predict`` profile (the network is built outside the timing); target < 50 ms.
(c) ``critical_sigma_w2`` at 100 values of sigma_b^2.
(e) the table evaluators of ``signalprop.tables`` (log moments, Mehler coefficients, the
    post-activation correlation) per call, against the direct routes they replace, and the time
    to build the tables a depth-100 tanh profile touches.
(f) depth-10^4 ``predict`` of tanh past its Mehler table (q > ~6.9) with c0 = 0.5: cold and warm
    time and the share of a warm call spent in the direct bivariate rule, which HEAD ran at
    every layer of an edge of chaos at large sigma_b^2 (sigma_b^2 = 20: 96.5% of 6.4 s, load
    ~4); since issue 17 the scaled table serves it after 256 direct layers (tables.rho_2d).
(d) depth-100 per-layer q^l and c^l of erf and tanh (sigma_w^2 = 1.5, sigma_b^2 = 0.1, c^0 = 0.5)
    against neural-tangents' analytic kernels (the anchor script ``nt_meanfield.py``, run in a
    subprocess of the anchors' own virtualenv in this same run; its timings are measured inside
    that process with perf_counter, like ours), and both against an independent reference that
    shares no code with signalprop (below). Target: >= 20x faster at equal or better accuracy.
    Without the anchors' venv, the anchor numbers recorded in RESULTS.md are printed, labelled
    as recorded, not measured in this run.

Timing: ``time.perf_counter``, warm-up call(s), then the median (and min) of the repeats.
The machine's load average is printed at the start and end: other load inflates every time.

Reference for (d), written here and independent of signalprop: the mean-field recursion with
(erf) the arcsine kernel in mpmath at 30 digits; (tanh) nested composite Gauss-Legendre
quadrature in the conditional form u1 = sqrt(q) z1, u2 = sqrt(q) (c z1 + sqrt(1 - c^2) z2) on
z in [-12, 12] (48 panels x 20 nodes per axis). The same nested rule applied to erf is checked
against the mpmath closed form, and the tanh reference against a coarser rule and against mpmath
for q^2, so its own error is printed with it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import signalprop as sp
from signalprop.results import to_jsonable

HERE = Path(__file__).resolve().parent
DEFAULT_ANCHORS = HERE.parent.parent / "shared" / "anchors"
DEFAULT_VENV = Path(os.environ.get("SIGNALPROP_ANCHORS_VENV",
                                   Path.home() / ".cache" / "signalprop-anchors-venv"))

SW2, SB2, C0, DEPTH_D = 1.5, 0.1, 0.5, 100
#: errors below this count as equal: float64 rounding accumulated over 100 layers (the reference
#: itself agrees with its own checks to ~3e-15)
ROUNDING = 2e-14


# ---------------------------------------------------------------------------------------------
# timing


def bench(fn, repeats: int = 7, warmup: int = 1, budget_s: float = 60.0) -> dict:
    """Warm-up call(s), then up to ``repeats`` timed calls (fewer if ``budget_s`` runs out)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    first = time.perf_counter() - t0
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s:
            break
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": len(times),
            "warmup_s": first}


def fmt_s(s: float) -> str:
    if s is None or not math.isfinite(s):
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


# ---------------------------------------------------------------------------------------------
# independent reference for (d)


def _gl(lo: float, hi: float, panels: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss-Legendre nodes and weights times the standard normal density."""
    t, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(lo, hi, panels + 1)
    half, mid = 0.5 * np.diff(edges), 0.5 * (edges[1:] + edges[:-1])
    z = (mid[:, None] + half[:, None] * t).ravel()
    wz = (half[:, None] * w).ravel() * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return z, wz


def reference_nested(phi, sw2, sb2, q0, c0, depth, panels=48, order=20):
    """q^l, c^l by nested composite Gauss-Legendre quadrature (float64), layers 1..depth."""
    z, w = _gl(-12.0, 12.0, panels, order)
    q = np.empty(depth)
    c = np.empty(depth)
    q[0] = sw2 * q0 + sb2
    c[0] = (sw2 * c0 * q0 + sb2) / q[0]
    for i in range(1, depth):
        s, cc = math.sqrt(q[i - 1]), c[i - 1]
        f1 = phi(s * z)
        e2 = np.dot(w, f1 * f1)
        inner = phi(s * (cc * z[:, None] + math.sqrt(max(0.0, 1.0 - cc * cc)) * z[None, :])) @ w
        e12 = np.dot(w, f1 * inner)
        q[i] = sw2 * e2 + sb2
        c[i] = (sw2 * e12 + sb2) / q[i]
    return q, c


def reference_erf_mpmath(sw2, sb2, q0, c0, depth, dps=30):
    """erf: the arcsine-kernel recursion (Williams 1997) in mpmath at ``dps`` digits."""
    import mpmath as mp
    with mp.workdps(dps):
        sw2m, sb2m = mp.mpf(sw2), mp.mpf(sb2)
        q = sw2m * mp.mpf(q0) + sb2m
        qab = sw2m * mp.mpf(c0) * mp.mpf(q0) + sb2m
        qs, cs = [q], [qab / q]
        for _ in range(1, depth):
            e2 = 2 / mp.pi * mp.asin(2 * q / (1 + 2 * q))
            e12 = 2 / mp.pi * mp.asin(2 * qab / (1 + 2 * q))
            q, qab = sw2m * e2 + sb2m, sw2m * e12 + sb2m
            qs.append(q)
            cs.append(qab / q)
        return np.array([float(v) for v in qs]), np.array([float(v) for v in cs])


def tanh_q2_mpmath(sw2, sb2, q0, dps=30) -> float:
    """q^2 of tanh by mpmath quadrature (1-D), to check the nested rule."""
    import mpmath as mp
    with mp.workdps(dps):
        q1 = mp.mpf(sw2) * mp.mpf(q0) + mp.mpf(sb2)
        s = mp.sqrt(q1)
        e2 = mp.quad(lambda z: mp.tanh(s * z) ** 2 * mp.exp(-z * z / 2), [-mp.inf, -4, -2, 0, 2, 4, mp.inf])
        return float(mp.mpf(sw2) * e2 / mp.sqrt(2 * mp.pi) + mp.mpf(sb2))


def profile_errors(q, c, q_ref, c_ref) -> tuple[float, float]:
    """(max relative error of q over layers, max absolute error of c over layers)."""
    q, c = np.asarray(q, float), np.asarray(c, float)
    return float(np.max(np.abs(q - q_ref) / np.abs(q_ref))), float(np.max(np.abs(c - c_ref)))


# ---------------------------------------------------------------------------------------------
# anchors


def run_anchor(venv: Path, anchors: Path, act: str, deg: int | None, repeats: int) -> dict:
    cmd = [str(venv / "bin" / "python"), str(anchors / "nt_meanfield.py"), "--act", act,
           "--sw2", str(SW2), "--sb2", str(SB2), "--depth", str(DEPTH_D), "--c0", str(C0),
           "--methods", "single_pass_jit", "--repeats", str(repeats)]
    if deg is not None:
        cmd += ["--deg", str(deg)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "JAX_PLATFORMS": "cpu"}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=anchors)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"anchor failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1]
    out = json.loads(line)
    out["process_wall_s"] = wall
    return out


def recorded_anchors(anchors: Path) -> dict:
    """single-pass-jit medians and q^2 errors of the depth-100 NT runs, from RESULTS.md."""
    text = (anchors / "RESULTS.md").read_text()
    out = {}
    for run in ("nt_mf_erf_L100", "nt_mf_tanh_L100", "nt_mf_tanh_L100_deg100"):
        m = re.search(rf"^\| {run} \|(.*)$", text, re.M)
        if not m:
            continue
        cells = [x.strip() for x in m.group(1).split("|")]
        # act | sw2/sb2 | L | q^L | c^L | q^2 rel.err | jit median | ...
        val, unit = cells[6].split()
        out[run] = {"median_s": float(val) * {"ms": 1e-3, "s": 1.0, "us": 1e-6}[unit],
                    "q2_rel_err": float(cells[5])}
    for label, key in (("deg 25", "nt_mf_tanh_L100"), ("deg 100", "nt_mf_tanh_L100_deg100")):
        m = re.search(rf"NT tanh \({label}\) L=100 vs numpy GH-151 \| max \|Δq\| = ([0-9.e+-]+), "
                      rf"max \|Δc\| = ([0-9.e+-]+)", text)
        if m and key in out:
            out[key]["max_dq_vs_gh151"], out[key]["max_dc_vs_gh151"] = float(m[1]), float(m[2])
    return out


# ---------------------------------------------------------------------------------------------
# the four parts


def part_a(repeats: int) -> dict:
    sw, sb = np.linspace(1.0, 4.0, 256), np.linspace(0.0, 1.0, 256)
    t = bench(lambda: sp.phase_diagram("tanh", sw, sb), repeats=repeats, budget_s=60.0)
    print(f"(a) phase_diagram('tanh', 256 sigma_w2 in [1, 4] x 256 sigma_b2 in [0, 1]) "
          f"(q*, chi_1, c*, xi_c, critical line)")
    print(f"    median {fmt_s(t['median_s'])}, min {fmt_s(t['min_s'])} over {t['repeats']} "
          f"(first call {fmt_s(t['warmup_s'])}); target < 2 s: {verdict(t['median_s'] < 2.0)}")
    return t


def part_b(repeats: int) -> dict:
    print("(b) predict on a depth-10^4 network (mlp built outside the timing); target < 50 ms")
    cases = [("tanh", 1.5, 0.05, "ordered"), ("erf", 1.5, 0.1, "ordered"),
             ("relu", 2.0, 0.0, "critical"), ("tanh", 1.0, 0.0, "critical, q^l -> 0 as 1/l")]
    out = []
    for act, sw2, sb2, label in cases:
        net = sp.mlp(10_000, 1000, act, sigma_w2=sw2, sigma_b2=sb2)
        for c0 in (None, C0):
            t = bench(lambda: sp.predict(net, c0=c0), repeats=repeats, budget_s=20.0)
            out.append({"activation": act, "sigma_w2": sw2, "sigma_b2": sb2, "c0": c0, **t})
            inputs = "one input " if c0 is None else f"c0 = {c0}  "
            print(f"    {act:<5} sigma_w2={sw2:<4} sigma_b2={sb2:<5} {inputs} ({label}): median "
                  f"{fmt_s(t['median_s']):>9}, min {fmt_s(t['min_s']):>9}  "
                  f"{verdict(t['median_s'] < 0.05)}")
    return {"cases": out}


def part_c(repeats: int) -> dict:
    sb = np.linspace(0.0, 1.0, 100)
    out = {}
    print("(c) critical_sigma_w2 at 100 values of sigma_b2 in [0, 1]")
    for act in ("tanh", "erf", "gelu"):
        t = bench(lambda: sp.critical_sigma_w2(act, sb), repeats=repeats, budget_s=20.0)
        out[act] = t
        print(f"    {act:<5} median {fmt_s(t['median_s'])}, min {fmt_s(t['min_s'])}")
    return out


def part_d(repeats: int, venv: Path, anchors: Path, use_anchors: bool) -> dict:
    print(f"(d) depth-{DEPTH_D} per-layer q and c, sigma_w2={SW2}, sigma_b2={SB2}, c0={C0}: "
          "signalprop vs neural-tangents (single_pass_jit)")
    # --- references --------------------------------------------------------------------------
    from scipy.special import erf as sc_erf
    t0 = time.perf_counter()
    ref = {"erf": reference_erf_mpmath(SW2, SB2, 1.0, C0, DEPTH_D)}
    erf_nested = reference_nested(sc_erf, SW2, SB2, 1.0, C0, DEPTH_D)
    ref["tanh"] = reference_nested(np.tanh, SW2, SB2, 1.0, C0, DEPTH_D)
    tanh_coarse = reference_nested(np.tanh, SW2, SB2, 1.0, C0, DEPTH_D, panels=32, order=16)
    q2_mp = tanh_q2_mpmath(SW2, SB2, 1.0)
    ref_checks = {
        "nested_rule_erf_vs_mpmath_closed_form": profile_errors(*erf_nested, *ref["erf"]),
        "tanh_nested_vs_coarser_rule": profile_errors(*tanh_coarse, *ref["tanh"]),
        "tanh_q2_nested_vs_mpmath_rel": abs(ref["tanh"][0][1] - q2_mp) / q2_mp,
    }
    print(f"    reference ({time.perf_counter() - t0:.1f} s): nested GL on erf vs mpmath closed "
          f"form: max rel dq {ref_checks['nested_rule_erf_vs_mpmath_closed_form'][0]:.1e}, "
          f"max dc {ref_checks['nested_rule_erf_vs_mpmath_closed_form'][1]:.1e}; tanh nested vs "
          f"coarser rule: {ref_checks['tanh_nested_vs_coarser_rule'][0]:.1e}, "
          f"{ref_checks['tanh_nested_vs_coarser_rule'][1]:.1e}; tanh q^2 vs mpmath: "
          f"{ref_checks['tanh_q2_nested_vs_mpmath_rel']:.1e}")
    # --- ours -----------------------------------------------------------------------------------
    ours = {}
    for act in ("erf", "tanh"):
        net = sp.mlp(DEPTH_D, 1000, act, sigma_w2=SW2, sigma_b2=SB2)
        t = bench(lambda: sp.predict(net, c0=C0), repeats=max(repeats, 20), warmup=3)
        t_build = bench(lambda: sp.predict(sp.mlp(DEPTH_D, 1000, act, sigma_w2=SW2, sigma_b2=SB2),
                                           c0=C0), repeats=max(repeats, 20), warmup=1)
        prof = sp.predict(net, c0=C0)
        ours[act] = {**t, "with_mlp_median_s": t_build["median_s"], "q": prof.q, "c": prof.c,
                     "err": profile_errors(prof.q, prof.c, *ref[act])}
    # --- theirs ---------------------------------------------------------------------------------
    runs = [("erf", None, "erf"), ("tanh", 25, "tanh deg 25"), ("tanh", 100, "tanh deg 100")]
    theirs: dict = {}
    measured = use_anchors and (venv / "bin" / "python").exists()
    if measured:
        for act, deg, label in runs:
            try:
                a = run_anchor(venv, anchors, act, deg, repeats)
            except Exception as exc:  # report, carry on with the rest
                print(f"    anchor {label}: FAILED: {exc}")
                continue
            tm = a["timings"]["single_pass_jit"]
            theirs[label] = {"median_s": tm["median_s"], "min_s": tm["min_s"],
                             "first_call_s": tm["first_call_s"], "import_s": a["import_s"],
                             "process_wall_s": a["process_wall_s"], "q": a["q"], "c": a["c"],
                             "err": profile_errors(a["q"], a["c"], *ref[act]),
                             "versions": a.get("versions"),
                             "loadavg_at_end": a.get("env", {}).get("loadavg_at_end")}
        src = f"measured in this run ({venv})"
    else:
        rec = recorded_anchors(anchors)
        keys = {"erf": "nt_mf_erf_L100", "tanh deg 25": "nt_mf_tanh_L100",
                "tanh deg 100": "nt_mf_tanh_L100_deg100"}
        for label, key in keys.items():
            if key in rec:
                theirs[label] = {**rec[key], "err": None}
        src = f"RECORDED in {anchors / 'RESULTS.md'}, NOT measured in this run (no venv at {venv})"
    print(f"    neural-tangents numbers: {src}")
    # --- side by side ---------------------------------------------------------------------------
    rows = []
    print(f"    {'':<13} {'time (median)':>13} {'ratio':>8} {'max rel err q':>14} "
          f"{'max abs err c':>14}  (errors vs the reference, over layers 1..{DEPTH_D}; "
          f"below {ROUNDING:.0e} counts as equal)")
    for act in ("erf", "tanh"):
        o = ours[act]
        print(f"    {'ours ' + act:<13} {fmt_s(o['median_s']):>13} {'':>8} {o['err'][0]:>14.1e} "
              f"{o['err'][1]:>14.1e}")
        for label, th in theirs.items():
            if not label.startswith(act):
                continue
            ratio = th["median_s"] / o["median_s"]
            if th.get("err") is not None:
                eq, ec = th["err"]
                errs = f"{eq:>14.1e} {ec:>14.1e}"
                acc_ok = o["err"][0] <= max(eq, ROUNDING) and o["err"][1] <= max(ec, ROUNDING)
            else:
                errs = f"{'q^2: ' + format(th['q2_rel_err'], '.1e'):>14} {'(recorded)':>14}"
                acc_ok = o["err"][0] <= max(th["q2_rel_err"], ROUNDING)
            ok = ratio >= 20.0 and acc_ok
            rows.append({"ours": act, "theirs": label, "ratio": ratio, "accuracy_ok": acc_ok,
                         "target_met": ok})
            print(f"    {'NT ' + label:<13} {fmt_s(th['median_s']):>13} {ratio:>7.1f}x {errs}  "
                  f"speed {verdict(ratio >= 20)}, accuracy {'equal/better' if acc_ok else 'WORSE'}")
    # per-layer values at selected layers
    show = [1, 2, 3, 5, 10, 20, 50, 100]
    for act in ("erf", "tanh"):
        print(f"    {act}: layer, q (reference), q ours - ref, q NT - ref, c (reference), "
              f"c ours - ref, c NT - ref")
        nt_label = "erf" if act == "erf" else "tanh deg 25"
        th = theirs.get(nt_label, {})
        for l in show:
            i = l - 1
            qr, cr = ref[act][0][i], ref[act][1][i]
            dq_o, dc_o = ours[act]["q"][i] - qr, ours[act]["c"][i] - cr
            if "q" in th:
                dq_t, dc_t = f"{th['q'][i] - qr:+.1e}", f"{th['c'][i] - cr:+.1e}"
            else:
                dq_t = dc_t = "n/a"
            print(f"      {l:>4} {qr:.12f} {dq_o:+.1e} {dq_t:>9}   {cr:.12f} {dc_o:+.1e} {dc_t:>9}")
    return {"source": src, "reference_checks": ref_checks,
            "ours": {k: {kk: vv for kk, vv in v.items() if kk not in ("q", "c")} for k, v in ours.items()},
            "theirs": {k: {kk: vv for kk, vv in v.items() if kk not in ("q", "c")} for k, v in theirs.items()},
            "comparisons": rows}


def part_e(repeats: int) -> dict:
    """The table evaluators of signalprop.tables (what predict's per-layer loop calls)."""
    from signalprop import tables
    net = sp.mlp(DEPTH_D, 1000, "tanh", sigma_w2=SW2, sigma_b2=SB2)
    qs = [float(v) for v in sp.predict(net, c0=C0).q]
    print(f"(e) table evaluators (signalprop.tables) on the depth-{DEPTH_D} tanh trajectory of (d)")
    act = sp.activation("tanh")
    tables._SHARED.pop(tables._key(act), None)     # a cold table for this activation object
    t0 = time.perf_counter()
    for q in qs:
        tables.moments(act, math.log(q))
        tables.mehler_sq(act, q)
    build = time.perf_counter() - t0
    q, lq, n = qs[-1], math.log(qs[-1]), 2000
    out = {"build_s": build}
    rows = [("moments(act, lq)", lambda: tables.moments(act, lq)),
            ("mehler_sq(act, q)", lambda: tables.mehler_sq(act, q)),
            ("mehler_rho(act, q, c)", lambda: tables.mehler_rho(act, q, 0.7)),
            ("direct act.moments(q)", lambda: act.moments(q)),
            ("direct act.mehler_coefficients(q)", lambda: act.mehler_coefficients(q))]
    print(f"    build (first touches of the whole trajectory, both tables): {fmt_s(build)}")
    for label, f in rows:
        k = n if not label.startswith("direct") else 20
        t = bench(lambda: [f() for _ in range(k)], repeats=repeats, budget_s=10.0)
        out[label] = t["median_s"] / k
        print(f"    {label:<36} {fmt_s(t['median_s'] / k):>9} per call (median of {t['repeats']})")
    return out


def part_f(repeats: int) -> dict:
    """tanh past its Mehler table (q > ~6.9): where predict's two-input step leaves the tables."""
    import signalprop.maps as maps_mod
    print("(f) predict, tanh past its Mehler table (depth 10^4, c0 = 0.5): median time and the "
          "share of it in the direct bivariate rule (maps.rho)")
    crit = float(sp.critical_sigma_w2("tanh", 20.0))
    cases = [("tanh", crit, 20.0, "edge of chaos, q* = 28.6: c moves like 1/l"),
             ("tanh", 20.0, 0.05, "chaotic, q* = 16.2: c converges in ~120 layers"),
             ("tanh", 4.0, 0.05, "chaotic, q* = 2.2: inside the Mehler table")]
    out = []
    for act, sw2, sb2, label in cases:
        net = sp.mlp(10_000, 1000, act, sigma_w2=sw2, sigma_b2=sb2)
        t0 = time.perf_counter()
        sp.predict(net, c0=C0)                     # cold: builds the panels it reads
        cold = time.perf_counter() - t0
        t = bench(lambda: sp.predict(net, c0=C0), repeats=repeats, budget_s=20.0)
        real, spent = maps_mod.rho, [0.0, 0]

        def timed(*a, **k):
            s0 = time.perf_counter()
            r = real(*a, **k)
            spent[0] += time.perf_counter() - s0
            spent[1] += 1
            return r

        maps_mod.rho = timed
        try:
            t0 = time.perf_counter()
            sp.predict(net, c0=C0)
            total = time.perf_counter() - t0
        finally:
            maps_mod.rho = real
        share = spent[0] / total if total > 0 else 0.0
        out.append({"activation": act, "sigma_w2": sw2, "sigma_b2": sb2, "c0": C0,
                    "cold_s": cold, "direct_share": share, "direct_calls": spent[1], **t})
        print(f"    {act} sigma_w2={sw2:<7.4g} sigma_b2={sb2:<5} ({label}): cold "
              f"{fmt_s(cold):>9}, median {fmt_s(t['median_s']):>9}; direct rule "
              f"{share:5.1%} of a warm call ({spent[1]} evaluations)")
    return {"cases": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7, help="timed repeats after warm-up (default 7)")
    p.add_argument("--anchors-dir", type=Path, default=DEFAULT_ANCHORS)
    p.add_argument("--anchors-venv", type=Path, default=DEFAULT_VENV,
                   help="the anchors' virtualenv (setup.sh); default $SIGNALPROP_ANCHORS_VENV or "
                        "~/.cache/signalprop-anchors-venv")
    p.add_argument("--no-anchors", action="store_true", help="do not run neural-tangents")
    p.add_argument("--only", default="abcdef", help="which parts to run (default: abcdef)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    import numpy, scipy
    print(f"signalprop {sp.__version__} | Python {platform.python_version()} | numpy "
          f"{numpy.__version__} | scipy {scipy.__version__} | {os.cpu_count()} CPUs | "
          f"load average at start: {loadavg()}")
    results = {}
    parts = {"a": lambda: part_a(args.repeats), "b": lambda: part_b(args.repeats),
             "c": lambda: part_c(args.repeats),
             "d": lambda: part_d(args.repeats, args.anchors_venv, args.anchors_dir,
                                 not args.no_anchors),
             "e": lambda: part_e(args.repeats), "f": lambda: part_f(args.repeats)}
    for key in args.only:
        results[key] = parts[key]()
    print(f"load average at end: {loadavg()}")
    if args.json:
        args.json.write_text(json.dumps(to_jsonable(results), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
