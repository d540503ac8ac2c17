"""The one mechanism by which signalprop defers imports (docs/architecture.md, "Start-up").

Two tools, nothing else:

* :func:`lazy_exports` gives a package the PEP 562 module ``__getattr__`` and ``__dir__`` that
  resolve its public names from one table ``name -> submodule`` on first access (``signalprop``'s
  ``__init__`` uses it, so ``import signalprop`` costs nothing until a name is used), and its
  submodules (``signalprop.meanfield``) on first access as attributes. It also
  guards the names that are both a public object and a submodule (``signalprop.simulate``,
  ``signalprop.spectrum``, ...): the import system binds a submodule on its parent when it loads
  it, which would shadow the function of the same name; the guard keeps the function, as the
  eager ``from .simulate import simulate`` did.
* :func:`lazy_module` is a stand-in for a heavy module (sympy, matplotlib, scipy.stats, a CLI
  command's module) that imports it on the first attribute access. Code writes
  ``sp = lazy_module("sympy")`` at the top of the module instead of ``import sympy as sp``;
  the import, its errors and its cost move to the first use.

Results never depend on when an import happens; only start-up time does.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Callable, Mapping

__all__ = ["lazy_exports", "lazy_module", "LazyModule"]


class LazyModule(types.ModuleType):
    """A module stand-in: the first attribute access imports ``target`` and copies its namespace
    in, so later accesses are plain attribute look-ups (no proxy cost on hot paths)."""

    def __init__(self, target: str):
        super().__init__(target)
        self.__dict__["_lazy_target"] = target
        self.__dict__["_lazy_loaded"] = None

    def _lazy_load(self) -> types.ModuleType:
        module = self.__dict__["_lazy_loaded"]
        if module is None:
            module = importlib.import_module(self.__dict__["_lazy_target"])
            self.__dict__.update({k: v for k, v in module.__dict__.items()
                                  if k not in ("__name__", "__spec__", "__loader__")})
            self.__dict__["_lazy_loaded"] = module
        return module

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # copy, pickle and introspection probes: no import
        return getattr(self._lazy_load(), name)

    def __dir__(self) -> list:
        return dir(self._lazy_load())

    def __repr__(self) -> str:
        state = "loaded" if self.__dict__["_lazy_loaded"] is not None else "not yet imported"
        return f"<lazy module {self.__dict__['_lazy_target']!r} ({state})>"


def lazy_module(name: str) -> LazyModule:
    """A :class:`LazyModule` for the absolute module ``name`` (e.g. ``"sympy"``,
    ``"matplotlib.figure"``, ``"signalprop.meanfield"``); the module itself is imported on the
    first attribute access (its ImportError is raised there)."""
    if not isinstance(name, str) or not name or name.startswith("."):
        raise ValueError(f"name must be an absolute module name, got {name!r}")
    return LazyModule(name)


class _GuardedPackage(types.ModuleType):
    """A package whose exported names win over its submodules of the same name (see the module
    docstring): the import system's ``setattr(package, child, submodule)`` is ignored for them."""

    _lazy_table: Mapping[str, str] = {}

    def __setattr__(self, name: str, value) -> None:
        if (name in self._lazy_table and isinstance(value, types.ModuleType)
                and value.__name__ == f"{self.__name__}.{name}"):
            return  # the submodule stays reachable as sys.modules[...] and by import
        super().__setattr__(name, value)


def lazy_exports(package: str, table: Mapping[str, str],
                 hidden: tuple = ()) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for the package ``package`` whose public names come from
    ``table``: public name -> submodule (relative, e.g. ``"meanfield"``). A name is imported
    from its submodule on first access and then bound on the package (later accesses are plain
    look-ups). ``dir()`` lists the package's globals (less the private names ``hidden`` the
    package used to set this up), every public name and the submodules of the table, whether or
    not they are loaded yet."""
    module = sys.modules[package]
    module.__class__ = type("LazyPackage", (_GuardedPackage,), {"_lazy_table": dict(table)})

    def __getattr__(name: str):
        sub = table.get(name)
        if sub is None:
            # a submodule not imported yet (``signalprop.meanfield``), as the eager imports gave
            if not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}"):
                return importlib.import_module(f"{package}.{name}")
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{sub}"), name)
        types.ModuleType.__setattr__(module, name, value)
        return value

    def __dir__() -> list:
        names = set(module.__dict__) - set(hidden) - {"__getattr__", "__dir__"}
        return sorted(names | set(table) | set(table.values()))

    return __getattr__, __dir__
