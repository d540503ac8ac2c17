"""Finite-width and random-matrix commands: ``finite-width``, ``clip``, ``spectrum`` (their theory
modules are imported inside the commands, to keep the command line's start fast)."""

from __future__ import annotations

import argparse
import math

from ..meanfield import fixed_point
from .args import (add_activation_options, add_quiet_option, add_weight_options, network_from,
                   progress_from, weights_name)
from .output import print_table, shown_layers


def add_finite_network(p: argparse.ArgumentParser, depth: int = 20, width: int = 100) -> None:
    add_activation_options(p, "relu")
    add_weight_options(p, sigma_w2=2.0, sigma_b2=0.0)
    p.add_argument("--depth", type=int, default=depth, metavar="L",
                   help=f"number of layers L (default: {depth})")
    p.add_argument("--width", type=int, default=width, metavar="N",
                   help=f"width of every layer (default: {width})")
    p.add_argument("--widths", type=int, nargs="+", default=None, metavar="N",
                   help="per-layer widths N_1..N_L or N_0..N_L (instead of --width)")
    p.add_argument("--q0", type=float, default=1.0, help="input second moment (default: 1)")


def run_finite_width(args: argparse.Namespace) -> dict:
    from ..finite import finite_width
    fw = finite_width(network_from(args), q0=args.q0)
    if not args.json:
        print(f"finite-width laws: {args.activation}, depth={fw.depth}, widths="
              f"{fw.meta['widths'] if args.widths else args.width}; exact: "
              f"{', '.join(fw.exact) or 'none (approximation)'}")
        rows = [[int(fw.layers[i]), int(fw.widths[i + 1]), fw.log_g[i], fw.log_g_mean[i],
                 fw.log_g_var[i], fw.beta[i], fw.log_q_mean[i], fw.log_q_var[i]]
                for i in shown_layers(fw.depth, 0, rows=40)]
        print_table(["layer", "N", "log_g", "E log g_hat", "Var log g_hat", "beta", "E log q_hat",
                     "Var log q_hat"], rows)
        print(f"regime: {fw.regime}. {fw.note}")
    return {"activation": args.activation, **fw.to_dict()}


def add_clip(p: argparse.ArgumentParser) -> None:
    add_finite_network(p)
    p.add_argument("--clip-value", type=float, nargs="+", default=[1.0], metavar="C",
                   help="clip value(s) c > 0 of g <- g min(1, c/||g||) (default: 1)")
    p.add_argument("--no-biases", action="store_true",
                   help="leave bias gradients out of ||g|| (default: weights and biases)")
    p.add_argument("--output-grad-var", type=float, default=1.0, metavar="S",
                   help="E[(dloss/dh^L_i)^2] of the loss (default: 1, the loss <v, h^L>)")
    p.add_argument("--depths", type=int, nargs="+", default=None, metavar="L",
                   help="also sweep these depths at the first clip value")


def _print_clip(args: argparse.Namespace, r, sweep: list) -> None:
    print(f"total gradient norm at init: median {r.median_norm:.4g}, 90% in "
          f"[{r.norm_q05:.4g}, {r.norm_q95:.4g}], mean-field sqrt(E||g||^2) "
          f"{r.mean_field_norm:.4g}; regime: {r.regime}")
    print_table(["c", "P(clip)", "E[min(||g||, c)]", "E[min(1, c/||g||)]"],
                [[c, p, e, sh] for c, p, e, sh in zip(r.clip_value.ravel(), r.p_clip.ravel(),
                                                      r.expected_norm.ravel(), r.shrink.ravel())])
    for v in r.verdict:
        print(v)
    if sweep:
        print(f"depth sweep at c = {args.clip_value[0]:g}")
        print_table(["depth", "P(clip)", "E[min(||g||, c)]", "shrink", "median ||g||"],
                    [[w["depth"], w["p_clip"], w["expected_norm"], w["shrink"],
                      w["median_norm"]] for w in sweep])


def run_clip(args: argparse.Namespace) -> dict:
    from ..clipping import clipping
    kw = {"biases": not args.no_biases, "output_grad_var": args.output_grad_var}
    r = clipping(network_from(args), args.clip_value, args.q0, **kw)
    out = {"activation": args.activation, **r.to_dict()}
    sweep = []
    for d in args.depths or []:
        rd = clipping(network_from(args, d), args.clip_value[0], args.q0, **kw)
        sweep.append({"depth": d, "p_clip": float(rd.p_clip.ravel()[0]),
                      "expected_norm": float(rd.expected_norm.ravel()[0]),
                      "shrink": float(rd.shrink.ravel()[0]), "median_norm": rd.median_norm})
    if sweep:
        out["depth_sweep"] = sweep
    if not args.json:
        _print_clip(args, r, sweep)
    return out


def add_spectrum(p: argparse.ArgumentParser) -> None:
    add_activation_options(p)
    add_weight_options(p, sigma_w2=1.0, sigma_b2=0.0)
    p.add_argument("--weights", default=None, choices=("gaussian", "orthogonal", "uniform"),
                   help="weight distribution (default: gaussian)")
    p.add_argument("--depth", type=int, default=10, metavar="L", help="number of layers (default: 10)")
    p.add_argument("--width", type=int, default=1000, metavar="N",
                   help="width of every layer (only the aspect ratios matter; default: 1000)")
    p.add_argument("--q0", type=float, default=1.0, help="input second moment ||x||^2/N_0 (default: 1)")
    p.add_argument("--at-fixed-point", action="store_true",
                   help="put every layer at the fixed point q* (overrides --q0)")
    p.add_argument("--moments", type=int, default=8, metavar="K", help="print m_1..m_K (default: 8)")
    p.add_argument("--points", type=int, default=0, metavar="P",
                   help="also give the density on P points of the support (default: 0)")
    p.add_argument("--plot", default=None, metavar="FILE", help="save the density to FILE (PNG)")
    add_quiet_option(p)


def _spectrum_q0(args: argparse.Namespace, net) -> float:
    """``--q0``, or with ``--at-fixed-point`` the input moment that puts layer 1 at q*."""
    if not args.at_fixed_point:
        return args.q0
    la = net.layers[0]
    q_star = fixed_point(la.activation, la.sigma_w2, la.sigma_b2, q0=args.q0).q_star
    if not (math.isfinite(q_star) and q_star > la.sigma_b2):
        raise ValueError(f"no finite fixed point q* > sigma_b^2 to start from (q* = {q_star})")
    return (q_star - la.sigma_b2) / la.sigma_w2


def _plot_density(args: argparse.Namespace, x, rho) -> None:
    from ..plot import new_figure, save as save_figure
    fig, ax = new_figure(1, 1, width=4.0, height=2.8)
    ax[0, 0].plot(x, rho, color="k")
    ax[0, 0].set_xlabel(r"$\lambda$ (squared singular value of J)")
    ax[0, 0].set_ylabel("density (continuous part)")
    ax[0, 0].set_title(f"{args.activation}, {weights_name(args)}, L={args.depth}")
    save_figure(fig, args.plot)


def _print_spectrum(args: argparse.Namespace, q0: float, out: dict) -> None:
    print(f"spectrum of J J^T: {args.activation}, {weights_name(args)} weights, depth {args.depth}, "
          f"q0 = {q0:.6g}")
    rows = [("mean m_1", out["mean"]), ("normalised variance", out["normalised_variance"]),
            ("upper edge", out["upper_edge"]), ("lower edge", out["lower_edge"]),
            ("mass of the atom at 0", out["zero_mass"]),
            ("condition number", out["condition_number"]),
            ("condition number (tail 1e-3)", out["condition_number_tail_1e-3"])]
    rows += [(f"atom at {a:.6g}", m) for a, m in out["atoms"]]
    rows += [(f"m_{k}", v) for k, v in enumerate(out["moments"], 1)]
    print_table(("quantity", "value"), rows)
    for n in out["notes"]:
        print(f"note: {n}")


def run_spectrum(args: argparse.Namespace) -> dict:
    from ..spectrum import spectrum
    net = network_from(args)
    q0 = _spectrum_q0(args, net)
    if args.moments < 1 or args.points < 0:
        raise ValueError("--moments must be >= 1 and --points >= 0")
    s = spectrum(net, q0, progress=progress_from(args))
    out = s.to_dict(condition=True)
    out["moments"] = s.moments(args.moments).tolist()
    out["activation"] = args.activation
    if args.points or args.plot:
        x = s.grid(max(args.points, 400) if args.plot else args.points)
        rho = s.density(x)
        if args.points:
            out["x"], out["density"] = x.tolist(), rho.tolist()
        if args.plot:
            _plot_density(args, x, rho)
    if not args.json:
        _print_spectrum(args, q0, out)
    return out
