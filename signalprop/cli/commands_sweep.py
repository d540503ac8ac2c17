"""``signalprop sweep SPEC.toml``: run a sweep from a spec file (docs/sweeps.md) into its store;
rerunning it computes only the cases not yet stored. The sweep machinery
(:mod:`signalprop.sweeps`) is imported when the command runs."""

from __future__ import annotations

import argparse
import time

from .args import add_quiet_option, progress_from
from .output import print_table

#: most worker processes ``--workers`` may ask for.
MAX_WORKERS = 1024


def add_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC.toml",
                   help="the sweep spec: [sweep] what/store/executor/workers/seed, [grid] axes "
                        "or [[cases]], [simulate] samples, ... (docs/sweeps.md)")
    p.add_argument("--store", default=None,
                   help="store directory (default: the spec's store, relative to its folder)")
    p.add_argument("--executor", default=None, choices=("inline", "processes", "dask"),
                   help="where cases run (default: the spec's, else inline)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes for processes/dask (default: the spec's, else CPUs)")
    p.add_argument("--address", default=None,
                   help="a dask scheduler address, tcp://HOST:PORT (implies --executor dask)")
    p.add_argument("--replace", action="store_true",
                   help="if the store holds a sweep of another spec, delete its results")
    p.add_argument("--csv", default=None, metavar="FILE",
                   help="also write the tidy table (one row per case and layer) to FILE "
                        "(needs pandas)")
    add_quiet_option(p)


def run_sweep(args: argparse.Namespace) -> dict:
    from ..sweeps import read_spec
    spec = read_spec(args.spec)
    over: dict = {"replace": args.replace, "progress": progress_from(args)}
    if args.store is not None:
        over["store"] = args.store
    if args.address is not None:
        over["address"], over["executor"] = args.address, "dask"
    if args.executor is not None:
        over["executor"] = args.executor
    if args.workers is not None:
        if not 1 <= args.workers <= MAX_WORKERS:
            raise ValueError(f"workers must be an integer in [1, {MAX_WORKERS}], got {args.workers}")
        over["workers"] = args.workers
    store = over.get("store", spec.store)
    if store is None:
        raise ValueError(f"sweep spec {args.spec} names no store: add store = \"DIR\" to [sweep] "
                         "or give --store DIR")
    start = time.perf_counter()
    res = spec.run(**over)
    seconds = time.perf_counter() - start
    out = {"spec": str(args.spec), "store": res.path, "cases": len(res),
           "computed": res.computed, "skipped": res.skipped,
           "executor": over.get("executor", spec.executor), "what": list(spec.what),
           "seconds": seconds}
    if args.csv:
        res.to_dataframe().to_csv(args.csv, index=False)
        out["csv"] = args.csv
    if not args.json:
        print(f"sweep {args.spec}: {len(res)} cases ({res.computed} computed, {res.skipped} "
              f"already stored) in {seconds:.3g} s; store {res.path}")
        keys = list(res.records[0]["case"]) if res.records else []
        rows = [[str(r["case"][k]) for k in keys] + [f"{r['timings'].get('total', 0.0):.3g}"]
                for r in res.records[:20]]
        if rows:
            print_table(keys + ["seconds"], rows)
            if len(res) > 20:
                print(f"... and {len(res) - 20} more (signalprop.sweeps.load({res.path!r}))")
    return out
