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


def test_numerical_work_with_builtins_imports_no_sympy():
    """What a sweep's worker process does (``predict``, ``simulate``, a sweep of them, built-in
    and callable activations, pickling) never imports sympy (issue 15); reading a built-in's
    ``expr`` then does, and gives the expression in the symbol of :mod:`signalprop.expr`."""
    code = ("import pickle, numpy as np, signalprop\n"
            "from signalprop.sweeps import Grid, sweep\n"
            "net = signalprop.mlp(3, 16)\n"
            "signalprop.predict(net)\n"
            "signalprop.simulate(net, samples=4, seed=0)\n"
            "for name in signalprop.activations():\n"
            "    a = signalprop.activation(name)\n"
            "    assert pickle.loads(pickle.dumps(a)) is a and hash(a) == hash(a.key)\n"
            "    a.second_moment(1.0), a.dphi_second_moment(1.0), repr(a)\n"
            "signalprop.activation(np.sin, kinks=(0.0,)).second_moment(1.0)\n"
            "sweep(Grid(activation=['tanh', 'relu'], depth=[2], width=[8]), 'simulate',\n"
            "      options={'simulate': {'samples': 4}}, progress=False)\n"
            "import sys\n"
            "before = 'sympy' in sys.modules or 'signalprop.expr' in sys.modules\n"
            "e = signalprop.activation('tanh').expr\n"
            "from signalprop.expr import X\n"
            "import sympy\n"
            "print(before, e == sympy.tanh(X), type(e).__module__.split('.')[0])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "True", "sympy"], res.stdout


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
