"""The ``rnn`` command: the mean-field profile of a recurrent network unrolled over time
(:func:`signalprop.rnn`; theory in docs/theory/recurrent.md), optionally simulated.

Each row is a time step t (the profile's layer t): ``q`` the second moment of the tracked variable
(vanilla cell: the pre-activation ``e_t``; gated cells: the state ``h_t``), ``c`` the correlation
of two sequences (with ``--c0``), ``log g`` the gradient of the loss ``<v, .>`` at the last step
(docs/notation.md, "Recurrent networks"). For the vanilla cell the fixed point and time scales
of the recurrence with the stationary input (:func:`signalprop.rnn_timescales`; Chen,
Pennington & Schoenholz 2018, sec. 3) are printed too. ``--theory``: ``tied`` is
:func:`signalprop.predict_tied` (weights tied across steps, exact at infinite width up to its
sampling error; the default for gated cells with tied weights), ``untied`` is ``predict`` (the
mean field of fresh weights at every step; the default otherwise, and for the vanilla cell the
same numbers as the tied theory). The simulation (``--samples``) keeps W, U, b tied across steps
unless ``--untied``."""

from __future__ import annotations

import argparse

from ..architectures import CELLS
from ..dmft import predict_tied
from ..layers.recurrent import RECURRENT_WEIGHTS, rnn_timescales
from ..meanfield import predict
from .args import (activation_from, add_activation_options, add_quiet_option, add_save_options,
                   network_from, progress_from)
from .output import fmt, print_table, save_profile, shown_layers

__all__ = ["add_rnn", "run_rnn"]

#: iterations of the length map rnn_timescales may take (~0.1 ms each): a fixed point it has not
#: reached by then (q* -> 0 as a power law, or a rate within ~0.6% of 1) is reported as a note
MAX_MAP_STEPS = 5000
#: the scalars of rnn_timescales, in the order they are printed
TIMESCALES = ("q_star", "c_star", "chi_1", "chi_c", "xi_c", "xi_grad", "regime")


def add_rnn(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cell", default="rnn", choices=CELLS,
                   help="vanilla rnn (phi(W h + U x + b)), minimal (minimalRNN), gru or lstm "
                        "(default: rnn)")
    p.add_argument("--steps", type=int, default=100, metavar="T",
                   help="time steps T (default: 100)")
    p.add_argument("--width", type=int, default=256, metavar="N",
                   help="state width N (default: 256)")
    add_activation_options(p)
    p.add_argument("--sigma-w2", type=float, default=None, metavar="S",
                   help="recurrent weight variance sigma_w^2 (times 1/N) (default: 1)")
    p.set_defaults(default_sigma_w2=1.0)
    p.add_argument("--sigma-u2", type=float, default=1.0, metavar="S",
                   help="input weight variance sigma_u^2 (times 1/n_x) (default: 1)")
    p.add_argument("--sigma-b2", type=float, default=0.0, metavar="B",
                   help="bias variance sigma_b^2 of the vanilla cell (default: 0)")
    p.add_argument("--weights", default="gaussian", choices=RECURRENT_WEIGHTS,
                   help="recurrent weight law (default: gaussian)")
    p.add_argument("--gate-bias", type=float, default=None, metavar="MU",
                   help="gated cells: bias mean of the memory gate (LSTM forget, GRU update, "
                        "minimalRNN gate) (default: 1 for lstm, 0 otherwise)")
    p.add_argument("--gate-sigma-b2", type=float, default=0.0, metavar="B",
                   help="gated cells: bias variance of the memory gate (default: 0)")
    p.add_argument("--q-x", type=float, default=1.0, metavar="QX",
                   help="input process: per-unit second moment of x_t, >= 0 (default: 1)")
    p.add_argument("--c-x", type=float, default=0.0, metavar="CX",
                   help="input process: correlation of the two sequences' x_t, in [-1, 1] "
                        "(default: 0)")
    p.add_argument("--q0", type=float, default=1.0,
                   help="second moment of the initial state h_0 (default: 1)")
    p.add_argument("--c0", type=float, default=None,
                   help="correlation of a second sequence's h_0, in [-1, 1] (default: one "
                        "sequence, no c)")
    p.add_argument("--untied", action="store_true",
                   help="fresh weights at every step (the theory's model) instead of tied ones")
    p.add_argument("--theory", default="auto", choices=("auto", "tied", "untied"),
                   help="tied: predict_tied (weights tied across steps, sampled unit paths); "
                        "untied: predict (fresh weights each step); auto (default): tied for "
                        "gated cells with tied weights, else untied")
    p.add_argument("--paths", type=int, default=4096,
                   help="--theory tied: sampled paths of one unit per replica (default: 4096)")
    p.add_argument("--replicas", type=int, default=8,
                   help="--theory tied: independent solutions, for standard errors (default: 8)")
    p.add_argument("--samples", type=int, default=0, metavar="S",
                   help="also simulate S sample networks (dense engine) and compare with the "
                        "theory (default: 0, theory only)")
    p.add_argument("--seed", type=int, default=0, help="root seed of --samples (default: 0)")
    p.add_argument("--every", type=int, default=0, metavar="K",
                   help="print every K-th step (text only; default: about 50 rows)")
    add_save_options(p)
    add_quiet_option(p)


def _timescales(args: argparse.Namespace) -> dict:
    """rnn_timescales of the vanilla cell; ``{"note": why}`` when it has no stationary state."""
    try:
        ts = rnn_timescales(activation_from(args), network_sigma_w2(args), args.sigma_u2,
                            args.sigma_b2, args.q_x, args.c_x, max_steps=MAX_MAP_STEPS)
    except ValueError as exc:       # e.g. q* = inf: no stationary state (the profile still is)
        return {"note": str(exc)}
    d = {k: getattr(ts, k) for k in TIMESCALES}
    if ts.note:
        d["note"] = ts.note
    return d


def network_sigma_w2(args: argparse.Namespace) -> float:
    return args.default_sigma_w2 if args.sigma_w2 is None else args.sigma_w2


def _simulation(args: argparse.Namespace, net, theory) -> tuple[dict, object]:
    from ..compare import compare
    from ..simulate import simulate
    if args.samples < 2:
        raise ValueError(f"samples must be an integer >= 2 (standard errors), got {args.samples}")
    prof = simulate(net, args.samples, args.seed, q0=args.q0, c0=args.c0,
                    progress=progress_from(args))
    comp = compare(theory, prof)
    field, step, _, _ = comp.worst()
    d = prof.to_dict()
    keys = ("q", "q_se", "c", "c_se", "log_g", "log_g_se")
    sim = {k: d[k] for k in keys if k in d}
    sim.update({"samples": args.samples, "seed": args.seed, "tied": not args.untied,
                "verdict": comp.verdict, "max_abs_z": comp.max_abs_z,
                "max_excess": comp.max_excess, "worst_field": field, "worst_step": step,
                "rule": comp.rule})
    return sim, prof


def _describe(args: argparse.Namespace, net) -> str:
    text = f"{args.cell} cell, {args.steps} steps, width {args.width}"
    if args.cell == "rnn":
        text += f", {args.activation}, sigma_b2={args.sigma_b2:g}"
    else:
        mu = args.gate_bias if args.gate_bias is not None else (1.0 if args.cell == "lstm" else 0.0)
        text += f", memory-gate bias {mu:g}"
    return (text + f", sigma_w2={network_sigma_w2(args):g} ({args.weights}), "
            f"sigma_u2={args.sigma_u2:g}, q_x={args.q_x:g}, c_x={args.c_x:g}, q0={args.q0:g}"
            + ("" if args.c0 is None else f", c0={args.c0:g}")
            + (", untied" if args.untied else ""))


def run_rnn(args: argparse.Namespace) -> dict:
    if args.samples < 0:
        raise ValueError(f"samples must be an integer >= 0, got {args.samples}")
    net = network_from(args)
    kind = args.theory
    if kind == "auto":
        kind = "tied" if args.cell != "rnn" and not args.untied else "untied"
    if kind == "tied":
        theory = predict_tied(net, q0=args.q0, c0=args.c0, paths=args.paths,
                              replicas=args.replicas, seed=args.seed,
                              progress=progress_from(args))
    else:
        theory = predict(net, q0=args.q0, c0=args.c0)
    out = {"cell": args.cell, "steps": args.steps, "width": args.width,
           "activation": args.activation if args.cell == "rnn" else None,
           "sigma_w2": network_sigma_w2(args), "sigma_u2": args.sigma_u2,
           "sigma_b2": args.sigma_b2, "weights": args.weights, "q_x": args.q_x, "c_x": args.c_x,
           "q0": args.q0, "c0": args.c0, "tied": not args.untied, "theory": kind}
    if args.cell != "rnn":
        out["gate_bias"] = (args.gate_bias if args.gate_bias is not None
                            else (1.0 if args.cell == "lstm" else 0.0))
        out["gate_sigma_b2"] = args.gate_sigma_b2
    d = theory.to_dict()
    out.update({k: d[k] for k in ("layers", "q", "log_q", "c", "log_g", "q_se", "c_se",
                                  "log_g_se") if k in d})
    if args.cell == "rnn":
        out["timescales"] = _timescales(args)
    sim = prof = None
    if args.samples:
        sim, prof = _simulation(args, net, theory)
        out["simulation"] = sim
    if not args.json:
        _print(args, net, theory, out, sim)
    save_profile(args, prof if prof is not None else theory,
                 f"{args.cell}, T={args.steps}" + (" (Monte Carlo)" if prof is not None else ""),
                 out)
    return out


def _print(args, net, theory, out: dict, sim) -> None:
    print(f"recurrent network: {_describe(args, net)}")
    print("theory: " + ("predict_tied (weights tied across steps; standard errors in --json)"
                        if out["theory"] == "tied" else "predict (untied weights)"))
    ts = out.get("timescales")
    if ts is not None:
        print("stationary input: fixed point and time scales (Chen et al. 2018)")
        for key in TIMESCALES:
            if key in ts:
                print(f"  {key:<8} {fmt(ts[key])}")
        if "note" in ts:
            print(f"  note: {ts['note']}")
    two = theory.c is not None
    headers = ["step", "q"] + (["c"] if two else []) + ["log_g"]
    if sim is not None:
        headers += ["q_mc", "q_se"] + (["c_mc", "c_se"] if two else []) + ["log_g_mc", "log_g_se"]
    rows = []
    for i in shown_layers(theory.depth, args.every):
        row = [int(theory.layers[i]), theory.q[i]] + ([theory.c[i]] if two else [])
        row.append(theory.log_g[i])
        if sim is not None:
            row += [sim["q"][i], sim["q_se"][i]]
            row += [sim["c"][i], sim["c_se"][i]] if two else []
            row += [sim["log_g"][i], sim["log_g_se"][i]]
        rows.append(row)
    print_table(headers, rows)
    if sim is not None:
        print(f"theory vs simulation ({'tied' if sim['tied'] else 'untied'} weights, "
              f"{sim['samples']} samples): {sim['verdict']} (max |z| {sim['max_abs_z']:.2f}; "
              f"worst {sim['worst_field']} at step {sim['worst_step']}); rule: {sim['rule']}")

