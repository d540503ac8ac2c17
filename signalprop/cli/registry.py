"""The commands of ``signalprop``: name -> :class:`Command`, and the parser built from them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from .. import __version__
from . import commands_activations as ca
from . import commands_finite as cf
from . import commands_meanfield as cm
from . import commands_simulate as cs
from .args import Parser

PROG = "signalprop"


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, a function adding its options, and one running it."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict]


#: name -> Command. To add a command, write its two functions and add one entry here.
COMMANDS: dict[str, Command] = {
    "finite-width": Command("finite-width laws of log ||h^l||^2 and log ||delta^l||^2, beta, regime",
                            cf.add_finite_network, cf.run_finite_width),
    "clip": Command("gradient clipping at init: P(clip), E[min(||g||, c)], shrink, verdict",
                    cf.add_clip, cf.run_clip),
    "fixed-point": Command("q*, c*, chi_1, chi_c and the depth scales", cm.add_fixed_point,
                           cm.run_fixed_point),
    "critical": Command("the edge of chaos sigma_w^2 at one or more sigma_b^2", cm.add_critical,
                        cm.run_critical),
    "predict": Command("per-layer mean-field profile q, c, log g, log G", cm.add_predict,
                       cm.run_predict),
    "phase": Command("phase diagram on a (sigma_w^2, sigma_b^2) grid: figure and CSV", cm.add_phase,
                     cm.run_phase),
    "activations": Command("built-in activations: max phi', saturation, normalising constants",
                           ca.add_activations, ca.run_activations),
    "demo": Command("a worked example: table and figure of q, c, log g against layer", cm.add_demo,
                    cm.run_demo),
    "simulate": Command("Monte Carlo profile q, c, log g, log G with standard errors",
                        cs.add_simulate, cs.run_simulate),
    "spectrum": Command("random-matrix law of the squared singular values of the Jacobian",
                        cf.add_spectrum, cf.run_spectrum),
    "validate": Command("theory vs simulation over the validation catalogue: report and figures",
                        cs.add_validate, cs.run_validate),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of :data:`COMMANDS`."""
    parser = Parser(prog=PROG, description="Signal propagation in randomly initialised deep "
                                           "networks (mean-field theory). Notation: CONVENTIONS.md.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.add_argument("--json", action="store_true", help="print one JSON object (CONVENTIONS.md keys)")
        p.set_defaults(run=cmd.run)
    return parser
