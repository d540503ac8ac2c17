"""The commands of ``signalprop``: name -> :class:`Command`, and the parser built from them.

Start-up: this module imports nothing heavy. A command's module (``commands_*``, which imports
the theory or simulation it calls) is imported only when that command runs or its ``--help`` is
asked: :func:`build_parser` given the command line adds the options of the one command named in
it, so ``signalprop --help`` lists the commands from their help lines alone.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from .. import __version__

__all__ = ["PROG", "FP_WARNING", "UsageError", "Parser", "Command", "COMMANDS", "build_parser",
           "command_named"]

PROG = "signalprop"

#: numpy's floating-point warnings ("overflow encountered in exp", ...): errors inside a command.
FP_WARNING = r".*encountered in"


class UsageError(Exception):
    """A malformed command line (raised instead of argparse's print-usage-and-exit)."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block; main() turns it into exit 2
        raise UsageError(message)


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, the function adding its options and the one running it.

    With ``module`` (a module of :mod:`signalprop.cli`, e.g. ``"commands_meanfield"``),
    ``add_arguments`` and ``run`` are the names of the two functions in it, imported on first use
    (:meth:`functions`); without, they are the functions themselves."""

    help: str
    add_arguments: Union[str, Callable[[argparse.ArgumentParser], None]]
    run: Union[str, Callable[[argparse.Namespace], dict]]
    module: Optional[str] = None

    def functions(self) -> tuple[Callable, Callable]:
        """``(add_arguments, run)``, importing the command's module if it is named."""
        if self.module is None:
            return self.add_arguments, self.run
        mod = importlib.import_module(f"{__package__}.{self.module}")
        return getattr(mod, self.add_arguments), getattr(mod, self.run)


def _cmd(help: str, module: str, name: str) -> Command:
    """The usual entry: ``add_<name>`` and ``run_<name>`` in ``signalprop.cli.<module>``."""
    return Command(help, f"add_{name}", f"run_{name}", module)


#: name -> Command. To add a command, write ``add_<name>`` and ``run_<name>`` in a ``commands_*``
#: module and add one entry here.
COMMANDS: dict[str, Command] = {
    "finite-width": Command("finite-width laws of log ||h^l||^2 and log ||delta^l||^2, beta, regime",
                            "add_finite_network", "run_finite_width", "commands_finite"),
    "clip": _cmd("gradient clipping at init: P(clip), E[min(||g||, c)], shrink, verdict",
                 "commands_finite", "clip"),
    "fixed-point": _cmd("q*, c*, chi_1, chi_c and the depth scales", "commands_meanfield",
                        "fixed_point"),
    "critical": _cmd("the edge of chaos sigma_w^2 at one or more sigma_b^2", "commands_meanfield",
                     "critical"),
    "predict": _cmd("per-layer mean-field profile q, c, log g, log G", "commands_meanfield",
                    "predict"),
    "phase": _cmd("phase diagram on a (sigma_w^2, sigma_b^2) grid: figure and CSV",
                  "commands_meanfield", "phase"),
    "activations": _cmd("built-in activations: max phi', saturation, normalising constants",
                        "commands_activations", "activations"),
    "demo": _cmd("a worked example: table and figure of q, c, log g against layer",
                 "commands_meanfield", "demo"),
    "simulate": _cmd("Monte Carlo profile q, c, log g, log G with standard errors",
                     "commands_simulate", "simulate"),
    "spectrum": _cmd("random-matrix law of the squared singular values of the Jacobian",
                     "commands_finite", "spectrum"),
    "validate": _cmd("theory vs simulation over the validation catalogue: report and figures",
                     "commands_simulate", "validate"),
    "transformer": _cmd("transformer stack (pre-/post-LN): per-row q, token correlation c, log g",
                        "commands_transformer", "transformer"),
    "rnn": _cmd("recurrent network through time (rnn, minimal, gru, lstm): per-step q, c, log g; "
                "time scales; optional Monte Carlo", "commands_recurrent", "rnn"),
    "sweep": _cmd("run a parameter sweep from a TOML spec: theory and Monte Carlo per case, "
                  "resumable", "commands_sweep", "sweep"),
}


def command_named(argv: Sequence[str]) -> Optional[str]:
    """The command a command line names: its first word that is not an option (the top-level
    options, ``--help`` and ``--version``, take no value); None when there is none."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word
    return None


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of :data:`COMMANDS`. Given the command
    line ``argv``, only the command it names gets its options (its module is imported); without,
    every command does (every command module is imported)."""
    parser = Parser(prog=PROG, description="Signal propagation in randomly initialised deep "
                                           "networks (mean-field theory). Notation: CONVENTIONS.md.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = None if argv is None else command_named(argv)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        if argv is None or name == wanted:
            add_arguments, run = cmd.functions()
            add_arguments(p)
            p.add_argument("--json", action="store_true",
                           help="print one JSON object (CONVENTIONS.md keys)")
            p.set_defaults(run=run)
    return parser
