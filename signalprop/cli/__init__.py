"""The ``signalprop`` command line: parse, call the public API, print.

Every command prints a readable table, or with ``--json`` one JSON object whose keys are those of
CONVENTIONS.md (scalars ``q_star, c_star, chi_1, chi_c, xi_q, xi_c, xi_grad, regime``; profiles
``layers, q, c, log_g, log_G``; inf/nan as the strings "inf"/"nan"; ``signalprop_version``, the
package's version). With ``--json``, commands
that can write files (``phase``, ``demo``) write them only when ``--out`` is given.

Bad input is one line on stderr, ``signalprop: error: ...``, and exit status 2, never a traceback
or a Python warning: a malformed command line; a ValueError, TypeError, OverflowError or
MemoryError from the API (work that cannot fit in memory is refused up front); an unwritable
``--out`` (OSError); and a floating-point failure (numpy's "overflow/invalid value/divide by zero
encountered in ...", raised as an error while the command runs), which means the arguments are
outside what the command can evaluate. Warnings the API issues on purpose (e.g. ``critical``'s
notes) are printed as ``signalprop: warning: ...`` lines after a successful run. Any other
exception is a bug and shows its traceback.

Layout
------
* :mod:`.args`: the shared options and :func:`~.args.network_from`, the one place a network is
  built from options;
* :mod:`.output`: tables, the fixed-point block, figures;
* ``commands_meanfield`` (fixed-point, critical, predict, demo, phase), ``commands_finite``
  (finite-width, clip, spectrum), ``commands_activations``, ``commands_simulate`` (simulate,
  validate), ``commands_recurrent`` (rnn): each command's options and run function, which call
  the API and print;
* :mod:`.registry`: :data:`COMMANDS` and the parser; this module: :func:`main` and the error
  policy above.

Start-up: ``signalprop --help`` and a command's ``--help`` must be quick, so this package
imports nothing heavy. :func:`~.registry.build_parser` imports only the module of the command
the command line names (:class:`~.registry.Command` holds its module's name); numpy, the results
module and the helpers re-exported here are imported on first use, through
:mod:`signalprop._lazy`, the package's one mechanism for deferred imports.

Adding a command
----------------
Write ``add_<name>(parser)`` (its options; reuse :func:`~.args.add_activation_options`,
:func:`~.args.add_network_options`, ...) and ``run_<name>(args) -> dict`` (calls the API, prints
the text output unless ``args.json``, and returns the JSON-able result) in a ``commands_*``
module, then add one line to :data:`COMMANDS` naming the module. ``--json`` is added to every
command, and printing the returned dict is done by :func:`main`. Commands that show progress take
``--quiet`` (:func:`~.args.add_quiet_option`).
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from typing import Optional, Sequence

from .. import __version__
from .._lazy import lazy_exports, lazy_module
from .registry import COMMANDS, FP_WARNING, PROG, Command, UsageError, build_parser

np = lazy_module("numpy")
_results = lazy_module("signalprop.results")
_meanfield_commands = lazy_module("signalprop.cli.commands_meanfield")

#: helpers re-exported from the submodules, imported on first use (name -> submodule).
_EXPORTS = {name: "args" for name in ("add_activation_options", "add_weight_options",
                                      "add_network_options", "activation_from", "sigma_w2_from",
                                      "network_from")}
_EXPORTS["print_table"] = "output"

__all__ = ["main", "COMMANDS", "Command", "build_parser", *_EXPORTS]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, hidden=("_EXPORTS", "lazy_exports"))


def _add_fixed_point(p) -> None:
    """``fixed-point``'s options (kept for callers that build a :class:`Command` around them)."""
    _meanfield_commands.add_fixed_point(p)


_BAD_INPUT = (UsageError, ValueError, TypeError, OverflowError, MemoryError)


class FloatingPointFailure(Exception):
    """A floating-point warning raised as an error while a command ran."""


def _one_line(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 4] + " ..."


def _options_given(argv: Sequence[str]) -> str:
    """The options of the command line (for naming what was out of range)."""
    text = " ".join(a if a.startswith("-") or " " not in a else repr(a) for a in argv[1:])
    return _one_line(text, 120)


def _run(argv: Optional[Sequence[str]]) -> tuple[int, list]:
    """Parse and run; returns (status, warnings recorded)."""
    with warnings.catch_warnings(record=True) as caught:
        # the command line's own policy, whatever the caller's filters: the API's deliberate
        # warnings are recorded (printed after success), numpy's floating-point ones are errors
        warnings.filterwarnings("default", category=RuntimeWarning)
        warnings.filterwarnings("default", category=UserWarning)
        warnings.filterwarnings("error", message=FP_WARNING, category=RuntimeWarning)
        args = build_parser(argv).parse_args(argv)
        with np.errstate(over="warn", invalid="warn", divide="warn"):
            try:
                result = args.run(args)
            except RuntimeWarning as exc:
                if not re.match(FP_WARNING, str(exc)):
                    raise
                raise FloatingPointFailure(
                    f"floating-point failure ({_one_line(exc, 100)}) evaluating {args.command}"
                    + (f" with {_options_given(argv)}" if argv and len(argv) > 1 else "")
                    + ": the arguments are outside the range this command can evaluate") from None
        if args.json:
            payload = _results.to_jsonable(result)
            if isinstance(payload, dict):   # which signalprop made it (results.VERSION_KEY)
                payload = {**payload, _results.VERSION_KEY: __version__}
            print(json.dumps(payload))
    return 0, list(caught)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0, or 2 for bad input; see the module
    docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        status, caught = _run(argv)
    except (*_BAD_INPUT, FloatingPointFailure) as exc:
        if isinstance(exc, MemoryError):
            msg = "not enough memory for these arguments" + \
                (f" ({_one_line(exc)})" if str(exc) else "")
        else:
            msg = _one_line(exc) or type(exc).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `signalprop predict | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # an unwritable --out, a missing folder, ...: the user's to fix
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    seen = set()
    for w in caught:
        text = _one_line(w.message)
        if text not in seen:
            seen.add(text)
            print(f"{PROG}: warning: {text}", file=sys.stderr)
    return status
