"""``signalprop activations``: phi' maxima, the normalising constants and the saturation check,
computed by :mod:`signalprop.saturation` and :func:`signalprop.activations.normalising_constants`."""

from __future__ import annotations

import argparse

from ..activations import activation, activations, normalising_constants
from ..saturation import article_saturation, dphi_max
from .output import print_table


def add_activations(p: argparse.ArgumentParser) -> None:
    p.add_argument("--activation", action="append", default=None, metavar="NAME|EXPR",
                   help="only these activations (repeatable; default: every built-in one)")
    p.add_argument("--q", type=float, default=1.0,
                   help="variance of the Gaussian input for the normalising constants (default: 1)")


def _print_activations(args: argparse.Namespace, rows: list, sat: list) -> None:
    print(f"phi' maximum (numerical, x in [-40, 40]) and the normalising constants "
          f"(Brock et al. 2021) at q = {args.q:g}")
    print_table(["activation", "max phi'", "at x", "mean", "std", "gain"],
                [[r["activation"], r["max_dphi"], r["argmax_dphi"], r["mean"], r["std"],
                  r["gain"]] for r in rows])
    print("(a range [a, b]: phi' is within 1e-9 of its maximum there)")
    print()
    print("saturation: the source article says phi' is about 1e-4 at these points; it is not")
    print_table(["activation", "x", "article", "phi'(x)", "phi' = 1e-4 at x"],
                [[s["activation"], s["x"], "~1e-4", f"{s['dphi']:.4g}",
                  f"{s['x_where_dphi_is_1e-4']:.4f}"] for s in sat])


def run_activations(args: argparse.Namespace) -> dict:
    names = args.activation or [n for n in activations() if activation(n).name == n]
    rows = []
    for name in names:
        act = activation(name)
        top = dphi_max(act)
        rows.append({"activation": name, "max_dphi": top.value, "argmax_dphi": top.where,
                     **normalising_constants(act, q=args.q)})
    sat = [s.to_dict() for s in article_saturation()]
    if not args.json:
        _print_activations(args, rows, sat)
    return {"activations": rows, "q": args.q, "saturation": sat}
