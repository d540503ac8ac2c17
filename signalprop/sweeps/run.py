"""``sweep``: run every case of a grid through the evaluators on an executor, storing each
finished case; ``load``: read a store back."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Optional, Sequence, Union

from .._validate import check_choice, check_int, short_repr
from ..progress import progress_bar
from .cases import Cases, Grid, as_cases, case_hash, case_hash_and_seed
from .evaluate import Task, check_case_keys, make_task, run_case
from .result import SweepResult, Wire
from .store import Store

__all__ = ["sweep", "load", "EXECUTORS"]

EXECUTORS = ("inline", "processes", "dask")
#: most worker processes ``executor="processes"`` or an embedded dask cluster starts.
MAX_WORKERS = 1024
_EXTRA = 'pip install "signalprop[sweep]"'


def _note(exc: BaseException, case: dict) -> BaseException:
    if hasattr(exc, "add_note"):
        exc.add_note(f"signalprop.sweep: raised by case {case}; the cases finished before it are "
                     "stored: fix it and run the same sweep again to finish")
    return exc


class _Sink:
    """Where finished records go: the store's log (if any; arrays packed), the records of this
    call (made JSON-able when first read: :class:`~.result.SweepResult`), the count."""

    def __init__(self, store: Optional[Store], bar) -> None:
        self.store, self.records, self.computed, self.bar = store, {}, 0, bar

    def put(self, record: dict) -> None:
        if self.store is not None:
            self.store.write(record)
        self.records[record["case_hash"]] = Wire(record)
        self.computed += 1
        self.bar.update(1)


def _inline(task: Task, todo: list, sink: _Sink, workers, address) -> None:
    for case, seed, name in todo:
        try:
            sink.put(run_case(task, case, seed, name))
        except Exception as exc:
            raise _note(exc, case)


def _processes(task: Task, todo: list, sink: _Sink, workers, address) -> None:
    """A spawn-context process pool, at most ``4 * workers`` cases in flight; on a failing case,
    no new case starts, running ones finish and are stored, then the error is raised."""
    n = workers if workers is not None else (os.cpu_count() or 1)
    pool = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"))
    pending: dict = {}
    queue = iter(todo)
    failure = None
    try:
        while True:
            while failure is None and len(pending) < 4 * n:
                item = next(queue, None)
                if item is None:
                    break
                pending[pool.submit(run_case, task, *item)] = item[0]
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            broken = None
            for fut in done:
                case = pending.pop(fut)
                try:
                    sink.put(fut.result())
                except BrokenProcessPool as exc:
                    broken = broken or (case, exc)
                    pending[fut] = case         # still unfinished: named in the message
                except Exception as exc:
                    failure = failure or _note(exc, case)
            if broken is not None:
                raise broken[1]
    except BrokenProcessPool as exc:
        pool.shutdown(wait=False, cancel_futures=True)
        raise RuntimeError(
            f"a worker process died (killed, or out of memory; cases in flight: "
            f"{list(pending.values())[:3] or 'none'}); the {sink.computed} cases finished in this "
            "call are stored: run the same sweep again to finish") from exc
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if failure is not None:
        raise failure


def _dask(task: Task, todo: list, sink: _Sink, workers, address) -> None:
    """dask.distributed: the scheduler at ``address``, or an embedded ``LocalCluster`` of
    ``workers`` single-threaded worker processes. A worker that dies has its cases rerun
    elsewhere by the scheduler; seeds come from the cases, so the numbers do not change."""
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ImportError(f'executor="dask" needs dask.distributed: {_EXTRA}') from None
    cluster = None
    if address is None:
        cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                               processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
        client = Client(cluster)
    else:
        client = Client(address)
    try:
        futures = {client.submit(run_case, task, case, seed, name, pure=False,
                                 key=f"signalprop-sweep-{name}"): case
                   for case, seed, name in todo}
        failure = None
        for fut in as_completed(futures):
            try:
                sink.put(fut.result())
            except Exception as exc:
                if failure is None:
                    failure = _note(exc, futures[fut])
                    client.cancel([f for f in futures if not f.done()])
        if failure is not None:
            raise failure
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


_RUNNERS: dict = {"inline": _inline, "processes": _processes, "dask": _dask}


def _check_picklable(task: Task, executor: str) -> None:
    if executor == "inline":
        return
    for what, obj in [("build", task.build)] + [(f"what={n}", f) for n, f in task.what if f]:
        try:
            pickle.dumps(obj)
        except Exception as exc:  # noqa: BLE001 - any pickling failure means the same thing
            raise TypeError(f"{what} must be picklable for executor={executor!r} (a function "
                            f"defined at the top level of an importable module, not a lambda or "
                            f"a nested function): {exc}") from None


def sweep(cases: Union[Grid, Cases, Sequence[dict]], what="predict", *,
          store: Union[str, os.PathLike, None] = None, executor: str = "inline",
          workers: Optional[int] = None, address: Optional[str] = None, seed: int = 0,
          build: Optional[Callable] = None, options: Optional[dict] = None,
          replace: bool = False, fsync: bool = True,
          progress: Optional[bool] = None) -> SweepResult:
    """Evaluate every case of ``cases`` (a :class:`Grid`, :class:`Cases` or list of dicts).

    ``what``: ``"predict"``, ``"simulate"``, ``"compare"`` (theory against Monte Carlo; the
    verdict, max |z| and per-layer z), ``"fixed_point"``, a callable ``f(case, network, seed) ->
    dict | Result``, or a list of them. ``build(case) -> Network``: default
    ``signalprop.mlp(**case)`` (keys ``q0``, ``c0``, ``samples`` go to the evaluators).
    ``options``: ``{evaluator: {key: value}}``, e.g. ``{"simulate": {"samples": 16}}`` (default
    100 samples). ``seed``: the sweep's base seed, an int >= 0; each case's seed is
    :func:`~signalprop.sweeps.cases.case_seed` of the case and it, whatever the executor.
    ``executor``: ``"inline"`` (this process), ``"processes"`` (a spawn process pool of
    ``workers``, default the CPU count) or ``"dask"`` (``address="tcp://host:8786"``: a running
    scheduler; else an embedded ``LocalCluster`` of ``workers`` processes).
    ``store``: a directory; finished cases are skipped, each new one appended to this call's log
    in it as it finishes (one self-checking line, handed to the OS at once: a killed process,
    worker or client loses no finished case; :mod:`~signalprop.sweeps.store`). A store of
    another spec (build, what, options, seed) is refused unless ``replace=True``, which deletes
    its records; the grid may change (extend it and only new cases run). The log is ``fsync``-ed
    at most about every second and at the end (a machine crash loses at most the last second);
    ``fsync=False`` never syncs.
    ``progress``: a bar on stderr per finished case (None: when stderr is a terminal;
    :mod:`signalprop.progress`).
    Returns a :class:`SweepResult` of these cases in order, with ``computed`` and ``skipped``.
    """
    grid = as_cases(cases)
    task = make_task(what, build, options)
    executor = check_choice("executor", executor, EXECUTORS)
    seed = check_int("seed", seed, 0)
    if workers is not None:
        workers = check_int("workers", workers, 1, MAX_WORKERS)
    if address is not None and (executor != "dask" or not isinstance(address, str)):
        raise ValueError(f"address goes with executor='dask' and is a scheduler address string "
                         f"such as 'tcp://10.0.0.1:8786', got {short_repr(address)}")
    for name, flag in (("replace", replace), ("fsync", fsync)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {short_repr(flag)}")
    _check_picklable(task, executor)
    items = [(case, *case_hash_and_seed(case, seed)) for case in grid]
    checked: set = set()
    for case, _, _ in items:
        if tuple(case) not in checked:      # the checks depend on the keys only
            check_case_keys(task, case)
            checked.add(tuple(case))
    st = None if store is None else Store(store, fsync)
    if st is not None:
        st.open(task.spec(seed), grid.to_jsonable(), replace)
    done = st.scan() if st is not None else {}
    todo = [(case, s, h) for case, h, s in items if h not in done]
    with progress_bar(len(todo), "sweep", "cases", progress=progress) as bar:
        sink = _Sink(st, bar)
        try:
            if todo:
                if st is not None:
                    st.start_log()      # its first sync runs while the first cases do
                _RUNNERS[executor](task, todo, sink, workers, address)
        finally:
            if st is not None:
                st.close()
    stored: dict = {}
    if st is not None:
        skipped = [h for _, h, _ in items if h not in sink.records]
        stored = dict(zip(skipped, st.read_many(skipped)))
    records = tuple(sink.records[h] if h in sink.records else stored[h] for _, h, _ in items)
    return SweepResult(records, st.read_meta() if st is not None else
                       {"spec": task.spec(seed), "runs": [grid.to_jsonable()]},
                       None if st is None else str(st.path), sink.computed,
                       len(items) - len(todo))


def _run_order(meta: dict) -> dict:
    """Case hash -> position: the cases of the runs in ``meta`` in their order."""
    order: dict = {}
    for run in meta.get("runs", []):
        grid = Grid(**run["grid"]) if "grid" in run else Cases(run["cases"])
        for case in grid:
            order.setdefault(case_hash(case), len(order))
    return order


def load(store: Union[str, os.PathLike]) -> SweepResult:
    """Every case stored in ``store``, with its ``sweep.json`` as ``meta``: in the order of the
    grids run against it (the first run's first), then any others by case hash."""
    st = Store(store)
    meta = st.read_meta()
    order = _run_order(meta)
    hashes = sorted(st.scan(), key=lambda h: (order.get(h, len(order)), h))
    return SweepResult(tuple(st.read_many(hashes)), meta, str(st.path))
