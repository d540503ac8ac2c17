"""Simulation commands: ``simulate`` (Monte Carlo, optionally compared with the theory) and
``validate`` (the validation suite, run in a child process)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..progress import enabled as progress_enabled
from ..results import to_jsonable
from .args import (add_network_options, add_quiet_option, add_save_options, network_from,
                   progress_from, sigma_w2_out, weights_name)
from .output import describe, print_table, save_profile, shown_layers

#: most worker processes ``validate --jobs`` starts.
MAX_JOBS = 256


def add_simulate(p: argparse.ArgumentParser) -> None:
    add_network_options(p, depth=20, width=256)
    p.add_argument("--weights", default=None, choices=("gaussian", "orthogonal", "uniform"),
                   help="weight distribution (default: gaussian; orthogonal with --init orthogonal)")
    p.add_argument("--samples", type=int, default=100, help="sample networks (default: 100)")
    p.add_argument("--seed", type=int, default=0, help="root seed, an int >= 0 (default: 0)")
    p.add_argument("--engine", default="dense", choices=("dense", "matrix-free"),
                   help="dense weight matrices, or the exact O(N)-per-layer matrix-free sampler "
                        "(gaussian and orthogonal weights) (default: dense)")
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"),
                   help="floating point type of the networks (default: float64)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument("--compare", action="store_true",
                   help="also compare with mean-field theory (signalprop.compare) and report it")
    p.add_argument("--every", type=int, default=0, metavar="K",
                   help="print every K-th layer (text only; default: about 50 rows)")
    add_save_options(p)
    add_quiet_option(p)


def _comparison(net, args: argparse.Namespace, prof) -> dict:
    from ..compare import compare
    from ..meanfield import predict
    comp = compare(predict(net, q0=args.q0, c0=args.c0), prof)
    field, lay, z, excess = comp.worst()
    return {"verdict": comp.verdict, "max_abs_z": comp.max_abs_z, "max_excess": comp.max_excess,
            "worst_field": field, "worst_layer": lay, "rule": comp.rule}


def _print_simulation(args: argparse.Namespace, net, prof, out: dict) -> None:
    print(f"Monte Carlo profile: {describe(args, net)}, {out['weights']} weights; "
          f"{args.samples} samples, seed {args.seed}, {args.engine} engine")
    headers = ["layer", "q", "q_se"] + (["c", "c_se"] if prof.c is not None else []) + \
        ["log_g", "log_g_se", "log_G", "log_G_se"]
    rows = []
    for i in shown_layers(prof.depth, args.every):
        row = [int(prof.layers[i]), prof.q[i], prof.q_se[i]]
        if prof.c is not None:
            row += [prof.c[i], prof.c_se[i]]
        rows.append(row + [prof.log_g[i], prof.log_g_se[i], prof.log_G[i], prof.log_G_se[i]])
    print_table(headers, rows)
    if "comparison" in out:
        c = out["comparison"]
        print(f"theory vs simulation: {c['verdict']} (max |z| {c['max_abs_z']:.2f}; worst "
              f"{c['worst_field']} at layer {c['worst_layer']}); rule: {c['rule']}")


def run_simulate(args: argparse.Namespace) -> dict:
    from ..simulate import simulate
    net = network_from(args)
    prof = simulate(net, args.samples, args.seed, engine=args.engine, q0=args.q0, c0=args.c0,
                    dtype=args.dtype, workers=args.workers, progress=progress_from(args))
    out = {"activation": args.activation, "sigma_w2": sigma_w2_out(args, net),
           "sigma_b2": args.sigma_b2, "residual": args.residual, "norm": args.norm,
           "depth": net.depth, "width": args.width, "weights": weights_name(args), "q0": args.q0,
           "c0": args.c0, "samples": args.samples, "seed": args.seed, "engine": args.engine,
           "dtype": args.dtype}
    d = prof.to_dict()
    keys = ("layers", "q", "q_se", "log_q", "c", "c_se", "log_g", "log_g_se", "log_G", "log_G_se")
    out.update({k: d[k] for k in keys if k in d})
    if args.compare:
        out["comparison"] = _comparison(net, args, prof)
    if not args.json:
        _print_simulation(args, net, prof, out)
    title = f"{args.activation}, Monte Carlo ({args.samples} samples, N = {args.width})"
    save_profile(args, prof, title, out)
    return out


def add_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="the small quick subset (seconds)")
    p.add_argument("--out", default=None,
                   help="folder for report.md and figures/ (default: the validation folder; "
                        "<tmp>/signalprop-validation-quick with --quick)")
    p.add_argument("--family", action="append", default=None,
                   help="only cases of this family (repeatable)")
    p.add_argument("--jobs", type=int, default=1, help="cases run in parallel (default: 1)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    add_quiet_option(p)


def run_validate(args: argparse.Namespace) -> dict:
    """Runs ``python -m validation`` in a child process (the suite lives in the source tree, next
    to the package, which never imports it). Exit status 1 (SystemExit) when a case that is
    expected to agree does not."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "validation" / "__main__.py").exists():
        raise ValueError(f"signalprop validate needs a source checkout: no validation/ folder "
                         f"next to the package ({root})")
    if not 1 <= args.jobs <= MAX_JOBS:
        raise ValueError(f"jobs must be an integer in [1, {MAX_JOBS}], got {args.jobs}")
    argv = (["--quick"] if args.quick else []) + (["--out", args.out] if args.out else [])
    argv += sum((["--family", f] for f in args.family or []), []) + ["--jobs", str(args.jobs)]
    argv += ["--no-figures"] if args.no_figures else []
    argv += ["--quiet"] if args.quiet else []
    # the child's stderr is read for its errors, so its bar goes to a copy of ours, when drawn
    bar_fd = os.dup(sys.stderr.fileno()) if progress_enabled(progress_from(args)) else None
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "validation", *argv]
            + ([] if bar_fd is None else ["--progress-fd", str(bar_fd)]), cwd=root, text=True,
            stdout=subprocess.PIPE if args.json else None, stderr=subprocess.PIPE,
            pass_fds=() if bar_fd is None else (bar_fd,))
    finally:
        if bar_fd is not None:
            os.close(bar_fd)
    if proc.returncode == 2:
        why = (proc.stderr.strip().splitlines() or ["no case matches the selection"])[-1]
        raise ValueError(f"validation: {why.removeprefix('error: ')} (family "
                         f"{', '.join(args.family or ['any'])}; python -m validation --list "
                         "shows the cases)")
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"python -m validation failed (exit status {proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    quick_out = Path(tempfile.gettempdir()) / "signalprop-validation-quick"
    out_dir = Path(args.out) if args.out else (quick_out if args.quick else root / "validation")
    lines = (proc.stdout or "").strip().splitlines()
    result = {"exit_status": proc.returncode, "report": str(out_dir / "report.md"),
              "summary": lines[-1] if (args.json and lines) else ""}
    if proc.returncode != 0:
        if args.json:
            print(json.dumps(to_jsonable(result)))
        raise SystemExit(proc.returncode)
    return result
