"""Mean-field commands: ``fixed-point``, ``critical``, ``predict``, ``demo``, ``phase``."""

from __future__ import annotations

import argparse
import csv
import math
import warnings
from pathlib import Path

import numpy as np

from ..meanfield import critical_sigma_w2, fixed_point, phase_diagram, predict
from .._validate import check_memory
from .args import (FP_WARNING, activation_from, add_activation_options, add_network_options,
                   add_save_options, add_weight_options, is_plain, network_from, sigma_w2_from,
                   sigma_w2_out)
from .output import (SCALARS, describe, fixed_point_dict, plot_phase_figure, print_fixed_point,
                     print_table, profile_figure, profile_rows, save, save_profile)

#: default file names of ``phase`` (a prefix) and ``demo`` (without --json, or with --out).
PHASE_OUT = "signalprop-phase"
DEMO_OUT = "signalprop-demo.png"


# fixed-point

def add_fixed_point(p: argparse.ArgumentParser) -> None:
    add_activation_options(p)
    add_weight_options(p, sigma_w2=1.0, sigma_b2=0.0)
    p.add_argument("--q0", type=float, default=1.0,
                   help="start of the length map; q* is the stable fixed point reached from it")


def run_fixed_point(args: argparse.Namespace) -> dict:
    act = activation_from(args)
    fp = fixed_point(act, sigma_w2_from(args), args.sigma_b2, q0=args.q0)
    if not args.json:
        print(f"fixed point of {args.activation}, sigma_w2={fp.sigma_w2:g}, sigma_b2={fp.sigma_b2:g}")
        print_fixed_point(fp)
    return {**fixed_point_dict(fp), "activation": args.activation}


# critical

def add_critical(p: argparse.ArgumentParser) -> None:
    add_activation_options(p)
    add_weight_options(p, sigma_w2=None, sigma_b2=0.05, init=False, many_sigma_b2=True)


def run_critical(args: argparse.Namespace) -> dict:
    act = activation_from(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        warnings.filterwarnings("error", message=FP_WARNING, category=RuntimeWarning)
        crit = np.atleast_1d(critical_sigma_w2(act, args.sigma_b2))
    notes = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    sb2 = np.asarray(args.sigma_b2, float)
    if not args.json:
        print(f"edge of chaos (chi_1 = 1) of {args.activation}")
        print_table(["sigma_b2", "sigma_w2"], list(zip(sb2, crit)))
        for n in notes:
            print(f"note: {n}")
    out = {"activation": args.activation, "sigma_b2": sb2, "critical_sigma_w2": crit}
    if notes:
        out["note"] = "; ".join(notes)
    return out


# predict and demo

def add_predict(p: argparse.ArgumentParser) -> None:
    add_network_options(p)
    p.add_argument("--every", type=int, default=0, metavar="K",
                   help="print every K-th layer (text only; default: about 50 rows)")
    add_save_options(p)


def _title(out: dict) -> str:
    """The figures' title: activation and weight variances."""
    def num(v):
        return format(v, "g") if isinstance(v, (int, float)) else str(v)
    return (f"{out['activation']}, $\\sigma_w^2$={num(out['sigma_w2'])}, "
            f"$\\sigma_b^2$={num(out['sigma_b2'])}")


def _predict(args: argparse.Namespace, title: str) -> tuple[dict, object]:
    net = network_from(args)
    prof = predict(net, q0=args.q0, c0=args.c0)
    fp = None
    if is_plain(net):
        layer = net.layers[0]
        # the stable fixed point the network's own sequence q^1, q^2, ... approaches (from q^1)
        fp = fixed_point(layer.activation, layer.sigma_w2, layer.sigma_b2,
                         q0=prof.q[0] if 0 < prof.q[0] < math.inf else 1.0)
    if not args.json:
        print(f"{title}: {describe(args, net)}")
        if fp is not None:
            print_fixed_point(fp)
        headers = ["layer", "q"] + (["c"] if prof.c is not None else []) + ["log_g", "log_G"]
        print_table(headers, profile_rows(prof, getattr(args, "every", 0)))
        if prof.meta.get("note"):
            print(f"note: {prof.meta['note']}")
    out = {"activation": args.activation, "sigma_w2": sigma_w2_out(args, net), "sigma_b2": args.sigma_b2,
           "depth": net.depth, "width": args.width, "q0": args.q0, "c0": args.c0,
           "residual": bool(getattr(args, "residual", False)), "norm": getattr(args, "norm", None)}
    if fp is not None:
        out.update({k: getattr(fp, k) for k in SCALARS})
    d = prof.to_dict()
    out.update({k: d[k] for k in ("layers", "q", "log_q", "c", "log_g", "log_G") if k in d})
    return out, prof


def run_predict(args: argparse.Namespace) -> dict:
    out, prof = _predict(args, "mean-field profile")
    save_profile(args, prof, _title(out), out)
    return out


def add_demo(p: argparse.ArgumentParser) -> None:
    add_network_options(p, depth=50, width=1000, sigma_w2=1.5, sigma_b2=0.05, c0=0.5)
    p.add_argument("--out", default=None,
                   help=f"figure of q^l, c^l and log g^l against layer (default: {DEMO_OUT}; "
                        "with --json, no figure unless --out is given)")


def run_demo(args: argparse.Namespace) -> dict:
    args.every = 0
    out, prof = _predict(args, "signalprop demo")
    if args.json and args.out is None:
        return out
    path = save(profile_figure(prof, _title(out)), args.out or DEMO_OUT)
    if not args.json:
        print(f"wrote {path}")
    out["figure"] = str(path)
    return out


# phase

def add_phase(p: argparse.ArgumentParser) -> None:
    add_activation_options(p)
    p.add_argument("--sigma-w2-range", type=float, nargs=2, default=[1.0, 4.0], metavar=("LO", "HI"),
                   help="sigma_w^2 grid range (default: 1 4)")
    p.add_argument("--sigma-b2-range", type=float, nargs=2, default=[0.0, 1.0], metavar=("LO", "HI"),
                   help="sigma_b^2 grid range (default: 0 1)")
    p.add_argument("--n", type=int, default=64, help="grid points per axis (default: 64)")
    p.add_argument("--out", default=None, metavar="PREFIX",
                   help="writes PREFIX.<format> (chi_1, q*, xi_c with the edge of chaos), "
                        "PREFIX.csv (the grid) and PREFIX-critical.csv (default: "
                        f"{PHASE_OUT}; with --json, no files unless --out is given)")
    p.add_argument("--format", default="png", choices=("png", "pdf", "svg"),
                   help="figure format (default: png)")


def _grid(name: str, lo: float, hi: float, n: int) -> np.ndarray:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} must be finite, got {lo!r} {hi!r}")
    if not lo <= hi:
        raise ValueError(f"{name} needs LO <= HI, got {lo!r} {hi!r}")
    return np.linspace(lo, hi, n)


def _write_phase_csv(pd, csv_path: Path, crit_path: Path) -> None:
    fields = ("q_star", "chi_1", "c_star", "xi_c")
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sigma_w2", "sigma_b2", *fields])
        for i, b in enumerate(pd.sigma_b2):
            for j, s in enumerate(pd.sigma_w2):
                w.writerow([repr(float(s)), repr(float(b))]
                           + [repr(float(getattr(pd, f)[i, j])) for f in fields])
    with open(crit_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sigma_b2", "critical_sigma_w2"])
        for b, s in zip(pd.sigma_b2, pd.critical_sigma_w2):
            w.writerow([repr(float(b)), repr(float(s))])


def run_phase(args: argparse.Namespace) -> dict:
    if args.n < 1:
        raise ValueError(f"n must be an integer >= 1, got {args.n}")
    # the five n x n float64 arrays of the result, refused up front when they cannot fit
    check_memory(f"phase --n {args.n} (an {args.n} x {args.n} grid)", 5 * 8.0 * args.n * args.n)
    act = activation_from(args)
    sw = _grid("sigma_w2_range", *args.sigma_w2_range, args.n)
    sb = _grid("sigma_b2_range", *args.sigma_b2_range, args.n)
    pd = phase_diagram(act, sw, sb)
    out = {**pd.to_dict(), "activation": args.activation}
    if args.json and args.out is None:
        return {**out, "files": []}
    prefix = Path(args.out or PHASE_OUT)
    fig_path = Path(f"{prefix}.{args.format}")
    csv_path, crit_path = Path(f"{prefix}.csv"), Path(f"{prefix}-critical.csv")
    if fig_path.parent != Path(""):
        fig_path.parent.mkdir(parents=True, exist_ok=True)
    _write_phase_csv(pd, csv_path, crit_path)
    fig_path = save(plot_phase_figure(pd), fig_path)
    if not args.json:
        chi = pd.chi_1
        print(f"phase diagram of {args.activation} on {len(sb)} x {len(sw)} "
              f"(sigma_b2 x sigma_w2): {int(np.sum(chi < 1))} ordered, "
              f"{int(np.sum(chi > 1))} chaotic cells")
        print_table(["sigma_b2", "critical sigma_w2"],
                    [(b, s) for b, s in zip(pd.sigma_b2, pd.critical_sigma_w2)][:: max(1, len(sb) // 10)])
        print(f"wrote {fig_path}, {csv_path}, {crit_path}")
    return {**out, "files": [str(fig_path), str(csv_path), str(crit_path)]}
