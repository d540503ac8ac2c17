"""Start-up: what ``import signalprop`` and the command line import (each in a fresh process,
checked in ``sys.modules``; nothing here is timed), and that the lazy exports behave as the eager
imports did."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

import signalprop
from signalprop._lazy import lazy_module
from signalprop.cli.registry import COMMANDS

HEAVY = ("sympy", "matplotlib", "scipy", "numpy", "signalprop.meanfield", "signalprop.plot")


def _loaded_after(code: str) -> dict:
    """Which of the modules of interest are in sys.modules after running ``code`` (stdout of the
    code itself is discarded; SystemExit from --help is expected)."""
    probe = ("import contextlib, io, json, sys\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    try:\n" + "".join(f"        {line}\n" for line in code.splitlines()) +
             "    except SystemExit:\n        pass\n"
             f"names = {list(HEAVY) + ['scipy.stats']!r}\n"
             "print(json.dumps({m: m in sys.modules for m in names}))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_import_signalprop_imports_nothing_heavy():
    loaded = _loaded_after("import signalprop")
    assert not any(loaded.values()), loaded


def test_top_level_help_imports_nothing_heavy():
    loaded = _loaded_after("from signalprop.cli import main\nmain(['--help'])")
    assert not any(loaded.values()), loaded
    loaded = _loaded_after("from signalprop.cli import main\nmain(['--version'])")
    assert not any(loaded.values()), loaded


@pytest.mark.parametrize("argv", [["predict", "--help"], ["simulate", "--help"], ["rnn", "--help"],
                                  ["fixed-point", "--activation", "tanh", "--sigma-w2", "1.5",
                                   "--sigma-b2", "0.05"]])
def test_commands_import_no_figures_and_no_scipy_stats(argv):
    loaded = _loaded_after(f"from signalprop.cli import main\nmain({argv!r})")
    assert not loaded["matplotlib"] and not loaded["scipy.stats"], loaded


def test_public_names_resolve_to_their_submodules():
    assert signalprop.__all__ == list(signalprop._EXPORTS)
    for name, sub in signalprop._EXPORTS.items():
        mod = importlib.import_module(f"signalprop.{sub}")
        assert getattr(signalprop, name) is getattr(mod, name), name
    assert set(signalprop.__all__) <= set(dir(signalprop))
    assert signalprop.tables.__name__ == "signalprop.tables"     # submodules, as attributes
    with pytest.raises(AttributeError, match="has no attribute 'nonexistent'"):
        signalprop.nonexistent


def test_names_shadowing_submodules_stay_the_functions():
    """``signalprop.simulate`` etc. are the functions (as with the eager imports) even after their
    submodules are imported; ``from signalprop import *`` gives every public name."""
    code = ("import signalprop.simulate, signalprop.spectrum, signalprop.activations, "
            "signalprop.clipping, signalprop.compare, signalprop.jacobian\n"
            "import signalprop as s\n"
            "ns = {}\nexec('from signalprop import *', ns)\n"
            "print(all(callable(f) and not isinstance(f, type(s)) for f in (s.simulate, "
            "s.spectrum, s.activations, s.clipping, s.compare, s.jacobian)), "
            "set(s.__all__) <= set(ns), s.simulate.__module__)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True", "True", "signalprop.simulate"]


def test_every_command_module_resolves():
    for name, cmd in COMMANDS.items():
        add, run = cmd.functions()
        assert callable(add) and callable(run), name


def test_lazy_module_imports_on_first_use():
    m = lazy_module("json")
    assert "not yet imported" in repr(m) or "json" in sys.modules
    assert m.dumps([1]) == "[1]" and "loaded" in repr(m)
    with pytest.raises(ValueError, match="absolute module name"):
        lazy_module(".relative")
    with pytest.raises(ModuleNotFoundError):
        lazy_module("signalprop_no_such_module").anything
