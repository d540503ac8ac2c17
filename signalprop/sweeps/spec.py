"""Sweep spec files (TOML), as run by ``signalprop sweep SPEC.toml``::

    [sweep]
    what = ["predict", "simulate"]   # predict, simulate, compare, fixed_point
    store = "runs/tanh"              # relative paths are relative to the spec file's folder
    executor = "processes"           # inline, processes, dask
    workers = 2
    seed = 0
    build = "mlp"                    # mlp or resnet
    [grid]                           # or [[cases]] tables, one per case
    activation = ["tanh", "relu"]
    sigma_w2 = [1.0, 1.5, 2.0]
    depth = [20]
    [simulate]                       # options per evaluator: [predict], [compare], [fixed_point]
    samples = 16

Every key is checked (an unknown one is a ValueError naming it and the allowed ones); values
are data only: nothing in the file is evaluated. Reading needs ``tomllib`` (Python >= 3.11) or,
on Python 3.10, the ``tomli`` package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from .._validate import check_choice, check_int, short_repr
from .cases import Cases, Grid
from .evaluate import BUILDERS, BUILTIN, OPTION_KEYS, make_task
from .result import SweepResult
from .run import EXECUTORS, sweep

__all__ = ["SweepSpec", "parse_spec", "read_spec", "SWEEP_KEYS", "SECTIONS"]

#: keys of the ``[sweep]`` table.
SWEEP_KEYS = ("what", "store", "executor", "workers", "address", "seed", "build")
#: top-level tables a spec may have.
SECTIONS = ("sweep", "grid", "cases") + tuple(OPTION_KEYS)


@dataclass(frozen=True)
class SweepSpec:
    """A checked spec: the arguments of :func:`~signalprop.sweeps.sweep`."""

    cases: Union[Grid, Cases]
    what: tuple
    store: Optional[Path]
    executor: str = "inline"
    workers: Optional[int] = None
    address: Optional[str] = None
    seed: int = 0
    build: str = "mlp"
    options: dict = field(default_factory=dict)

    def run(self, **overrides) -> SweepResult:
        """:func:`~signalprop.sweeps.sweep` with this spec (``overrides``: its keyword
        arguments, e.g. ``store=``, ``executor=``, ``replace=``)."""
        kwargs = dict(what=list(self.what), store=self.store, executor=self.executor,
                      workers=self.workers, address=self.address, seed=self.seed,
                      build=BUILDERS[self.build], options=self.options)
        kwargs.update(overrides)
        return sweep(self.cases, **kwargs)


def _loads(text: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ImportError("reading a sweep spec on Python 3.10 needs tomli: pip install tomli"
                              ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"sweep spec is not valid TOML: {exc}") from None


def _table(doc: dict, name: str) -> dict:
    t = doc.get(name, {})
    if not isinstance(t, dict):
        raise ValueError(f"sweep spec: [{name}] must be a table, got {short_repr(t)}")
    return t


def parse_spec(text: str, base: Union[str, os.PathLike] = ".") -> SweepSpec:
    """A :class:`SweepSpec` from TOML ``text``; a relative ``store`` is taken relative to
    ``base`` (the spec file's folder)."""
    if not isinstance(text, str):
        raise TypeError(f"sweep spec text must be a str, got {type(text).__name__}")
    doc = _loads(text)
    for key in doc:
        if key not in SECTIONS:
            raise ValueError(f"sweep spec: unknown table or key {key!r}; allowed: "
                             f"{', '.join(SECTIONS)}")
    head = _table(doc, "sweep")
    for key in head:
        if key not in SWEEP_KEYS:
            raise ValueError(f"sweep spec: unknown key {key!r} in [sweep]; allowed: "
                             f"{', '.join(SWEEP_KEYS)}")
    what = head.get("what", "predict")
    what = [what] if isinstance(what, str) else what
    if not isinstance(what, list) or not what:
        raise ValueError(f"sweep spec: [sweep] what must be one or a list of "
                         f"{', '.join(BUILTIN)}, got {short_repr(what)}")
    what = tuple(check_choice("sweep spec: [sweep] what", w, BUILTIN) for w in what)
    if ("grid" in doc) == ("cases" in doc):
        raise ValueError("sweep spec: give exactly one of [grid] (axes, each a list) and "
                         "[[cases]] (one table per case)")
    if "grid" in doc:
        cases: Union[Grid, Cases] = Grid(**_table(doc, "grid"))
    else:
        if not isinstance(doc["cases"], list):
            raise ValueError("sweep spec: cases must be an array of tables, [[cases]]")
        cases = Cases(doc["cases"])
    store = head.get("store")
    if store is not None:
        if not isinstance(store, str) or not store:
            raise ValueError(f"sweep spec: [sweep] store must be a path string, got "
                             f"{short_repr(store)}")
        store = Path(base) / store
    workers = head.get("workers")
    address = head.get("address")
    if address is not None and not isinstance(address, str):
        raise ValueError(f"sweep spec: [sweep] address must be a string such as "
                         f"'tcp://10.0.0.1:8786', got {short_repr(address)}")
    spec = SweepSpec(
        cases=cases, what=what, store=store,
        executor=check_choice("sweep spec: [sweep] executor", head.get("executor", "inline"),
                              EXECUTORS),
        workers=None if workers is None else check_int("sweep spec: [sweep] workers", workers, 1),
        address=address,
        seed=check_int("sweep spec: [sweep] seed", head.get("seed", 0), 0),
        build=check_choice("sweep spec: [sweep] build", head.get("build", "mlp"), tuple(BUILDERS)),
        options={k: _table(doc, k) for k in OPTION_KEYS if k in doc})
    make_task(list(spec.what), BUILDERS[spec.build], spec.options)  # checks the options' keys
    return spec


def read_spec(path: Union[str, os.PathLike]) -> SweepSpec:
    """:func:`parse_spec` of the file at ``path`` (its folder is the base of ``store``)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"sweep spec {p} does not exist or is not a file")
    return parse_spec(p.read_text(encoding="utf-8"), p.parent)
