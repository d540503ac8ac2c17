"""Sweeps: many cases (a :class:`Grid` of axes or a list of :class:`Cases`) through ``predict``,
``simulate``, ``compare``, ``fixed_point`` or any function, in this process, a process pool or
on dask.distributed, into a resumable store (append-only logs of self-checking JSON lines, one
line per finished case); :func:`load` reads a store back as a :class:`SweepResult`
(``to_dataframe``, ``to_xarray``). docs/sweeps.md.

Layout: :mod:`.cases` (grids, case hashes and seeds), :mod:`.evaluate` (one case -> record),
:mod:`.codec` (records as they travel, are held and are stored), :mod:`.store` (the directory,
its logs), :mod:`.result` (tables), :mod:`.run` (executors), :mod:`.spec` (TOML spec files).
"""

from .cases import Cases, Grid, case_hash, case_seed
from .evaluate import build_mlp, build_resnet
from .result import SweepResult
from .run import EXECUTORS, load, sweep
from .spec import SweepSpec, parse_spec, read_spec

#: ``load`` under a name fit for the package's top level (``signalprop.load_sweep``).
load_sweep = load

__all__ = ["sweep", "load", "load_sweep", "Grid", "Cases", "SweepResult", "case_hash", "case_seed",
           "build_mlp", "build_resnet", "EXECUTORS", "SweepSpec", "read_spec", "parse_spec"]
