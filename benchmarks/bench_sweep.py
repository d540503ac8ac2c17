"""Benchmark of sweeps (issue 15) against baselines measured in the same run.

    python benchmarks/bench_sweep.py [--quick] [--repeats N]

Prints, in one run:

1. a 256-case theory sweep (activation x sigma_w^2 x sigma_b^2 x depth, ``predict``) on the
   in-process executor: the bare loop ``predict(mlp(**case))``, the sweep without a store, and
   the sweep into a new store on disk (fsync on, the default; and with fsync=False); target: the
   sweep with its store costs at most 1.10 x the bare loop; 1b: the same at depths 100..800;
   1c: where the store's time goes (key hashing, encoding, base64, SHA-256, write, the
   per-sweep open/sync costs, a resume);
2. a 16-case Monte Carlo sweep (``simulate``, 64 samples, width 128, depth 20): the process pool
   (2 workers, start-up included) against in-process; target: >= 1.6 x faster on 2 cores; and
   what a spawned worker's imports cost (``import signalprop.sweeps`` as a whole process, less
   ``python -c pass``), with the heavy modules its first ``simulate`` has loaded;
3. ``signalprop --help`` as a whole process (interpreter start-up included), next to
   ``python -c pass``; target: under 1 s.

The machine may be shared: every time is the minimum over repeats measured round-robin (so a
change of load hits all the variants alike), and the output says so. BLAS/OpenMP are pinned to
one thread (set before numpy is imported) so that in-process and each worker use one core.
"""

from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
#: the subprocesses import the package this script imports (this checkout's, not another install)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(Path(__file__).resolve().parents[1])] + os.environ.get("PYTHONPATH", "").split(os.pathsep)
).rstrip(os.pathsep)}

from signalprop.architectures import mlp  # noqa: E402
from signalprop.meanfield import predict  # noqa: E402
from signalprop.sweeps import Grid, sweep  # noqa: E402

THEORY = Grid(activation=["tanh", "relu", "erf", "gelu"], sigma_w2=[0.5, 1.0, 1.5, 2.0],
              sigma_b2=[0.0, 0.05, 0.1, 0.2], depth=[10, 20, 50, 100])
#: the same with deeper networks (the sweep's cost per case hardly depends on depth)
THEORY_DEEP = Grid(activation=["tanh", "relu", "erf", "gelu"], sigma_w2=[0.5, 1.0, 1.5, 2.0],
                   sigma_b2=[0.0, 0.05, 0.1, 0.2], depth=[100, 200, 400, 800])
MONTE_CARLO = Grid(activation=["tanh", "relu"], sigma_w2=[0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2],
                   depth=[20], width=[128])
MC_OPTIONS = {"simulate": {"samples": 64}}


def race(fns, repeats):
    """Minimum time of each function over ``repeats`` rounds, run in turn (round-robin) after
    one warm-up round. A function that returns a number has timed itself (to leave its set-up
    and clean-up out)."""
    for fn in fns:
        fn()
    times = [math.inf] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            own = fn()
            took = time.perf_counter() - t
            times[i] = min(times[i], own if isinstance(own, float) else took)
    return times


def theory(repeats: int, root: Path, grid: Grid = THEORY, label: str = "1.",
           depths: str = "10..100") -> None:
    cases = list(grid)
    counter = [0]

    def bare():
        for case in cases:
            predict(mlp(**case))

    def no_store():
        sweep(grid, "predict", progress=False)

    def with_store(fsync=True):
        counter[0] += 1
        store = root / f"theory-{counter[0]}"
        try:
            t = time.perf_counter()
            sweep(grid, "predict", store=store, fsync=fsync, progress=False)
            return time.perf_counter() - t
        finally:
            shutil.rmtree(store, ignore_errors=True)    # not timed

    def without_fsync():
        return with_store(fsync=False)

    t_bare, t_mem, t_store, t_nosync = race([bare, no_store, with_store, without_fsync], repeats)
    n = len(cases)
    print(f"{label} theory sweep, {n} cases (activation x sigma_w2 x sigma_b2 x depth {depths}), "
          f"in process; store on {root}; min of {repeats} round-robin repeats")
    for name, t in (("bare loop predict(mlp(**case))", t_bare), ("sweep, no store", t_mem),
                    ("sweep, new store on disk", t_store),
                    ("  the same, fsync=False", t_nosync)):
        print(f"   {name:<34} {t * 1e3:8.1f} ms  {t / n * 1e6:7.1f} us/case  "
              f"{t / t_bare:5.3f} x bare")
    verdict = "meets" if t_store <= 1.10 * t_bare else "MISSES"
    print(f"   -> sweep with store / bare = {t_store / t_bare:.3f} ({verdict} the <= 1.10 target); "
          f"the sweep's cost beyond the bare loop: {(t_store - t_bare) / n * 1e6:.1f} us/case "
          f"with the store, {(t_mem - t_bare) / n * 1e6:.1f} us/case without")


def store_breakdown(repeats: int, root: Path, grid: Grid = THEORY) -> None:
    """Where the store's time goes, per case, on the 256 records of the theory sweep (each
    step timed alone over all records, min of ``repeats``): key hashing, the record's JSON text
    (:func:`~signalprop.sweeps.codec.dumps_packed`), base64 of its arrays, SHA-256 of the line,
    the ``write`` of the line; then the per-sweep costs (open, first sync, final fsync, reading
    ``sweep.json`` back) and a resume (a rerun on the complete store: scan, read, nothing
    computed)."""
    import binascii
    import hashlib
    from signalprop.sweeps.cases import case_hash_and_seed
    from signalprop.sweeps.codec import dumps_packed
    from signalprop.sweeps.evaluate import make_task, run_case
    from signalprop.sweeps.store import Store, encode_line

    task = make_task("predict", None, None)
    items = [(case, *case_hash_and_seed(case, 0)) for case in grid]
    records = [run_case(task, case, s, h) for case, h, s in items]
    packed = [dumps_packed(r) for r in records]
    lines = [encode_line(r) for r in records]
    n = len(records)

    def each(fn, xs):
        return lambda: [fn(x) for x in xs]

    def write_all():
        fd = os.open(root / "w.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            t = time.perf_counter()
            for line in lines:
                os.write(fd, line)
            return time.perf_counter() - t
        finally:
            os.close(fd)
            os.unlink(root / "w.jsonl")

    counter = [0]

    def fixed(fsync):
        def run():
            counter[0] += 1
            st = Store(root / f"fixed-{counter[0]}", fsync)
            t = time.perf_counter()
            st.open(task.spec(0), grid.to_jsonable())
            st.scan()
            st.start_log()
            st.write(records[0])
            st.close()
            st.read_meta()
            took = time.perf_counter() - t
            shutil.rmtree(st.path, ignore_errors=True)
            return took
        return run

    full = root / "full"
    sweep(grid, "predict", store=full, progress=False)
    steps = [("case hash and seed (SHA-256 x 2)", each(lambda c: case_hash_and_seed(c, 0),
                                                      [c for c, _, _ in items])),
             ("encode_line, whole", each(encode_line, records)),
             ("  JSON text (dumps_packed)", each(dumps_packed, records)),
             ("  base64 of the arrays", each(lambda p: binascii.b2a_base64(p[1], newline=False),
                                             packed)),
             ("  SHA-256 of the line", each(lambda b: hashlib.sha256(b).digest(), lines)),
             ("write(2) of the line", write_all)]
    times = race([fn for _, fn in steps], repeats)
    print(f"1c. the store's cost per case, each step alone over the {n} records "
          f"(min of {repeats}); a line is {sum(map(len, lines)) / n:.0f} bytes")
    for (name, _), t in zip(steps, times):
        print(f"   {name:<34} {t / n * 1e6:7.2f} us/case")
    t_sync, t_nosync, t_resume = race(
        [fixed(True), fixed(False),
         lambda: sweep(grid, "predict", store=full, progress=False)], max(3, repeats // 3))
    print(f"   per sweep: open + first sync + one write + final fsync + read sweep.json "
          f"{t_sync * 1e3:.2f} ms ({t_sync / n * 1e6:.1f} us/case over {n}); "
          f"fsync=False {t_nosync * 1e3:.2f} ms")
    print(f"   resume: rerun on the complete store (scan {n} lines, read them back, compute "
          f"nothing) {t_resume * 1e3:.2f} ms ({t_resume / n * 1e6:.1f} us/case)")
    shutil.rmtree(full, ignore_errors=True)


def monte_carlo(repeats: int) -> None:
    def inline():
        sweep(MONTE_CARLO, "simulate", options=MC_OPTIONS, progress=False)

    def processes():
        sweep(MONTE_CARLO, "simulate", options=MC_OPTIONS, executor="processes", workers=2,
              progress=False)

    t_in, t_proc = race([inline, processes], repeats)
    print(f"2. Monte Carlo sweep, {len(MONTE_CARLO)} cases (simulate, 64 samples, width 128, "
          f"depth 20), no store; {os.cpu_count()} CPUs seen; min of {repeats} repeats")
    print(f"   in process                         {t_in:8.2f} s")
    print(f"   process pool, 2 workers (spawned)  {t_proc:8.2f} s")
    t_imp, t_python, heavy = worker_import(max(3, 3 * repeats))
    print(f"   a worker's imports (signalprop.sweeps, whole process less python -c pass) "
          f"{t_imp - t_python:6.3f} s; imported: {heavy}")
    verdict = "meets" if t_in >= 1.6 * t_proc else "MISSES"
    print(f"   -> speed-up {t_in / t_proc:.2f} x ({verdict} the >= 1.6 x target on 2 cores)")


def worker_import(repeats: int) -> tuple:
    """(time of ``python -c "import signalprop.sweeps"``, of ``python -c pass``, the heavy
    modules that import leaves in sys.modules): what each spawned worker pays before its first
    case (the modules its first ``simulate`` of a built-in activation adds are listed too)."""
    code = ("import signalprop.sweeps, signalprop, sys; "
            "signalprop.simulate(signalprop.mlp(2, 4), samples=2, seed=0); "
            "print(','.join(m for m in ('sympy', 'matplotlib', 'scipy.special', 'scipy.stats') "
            "if m in sys.modules) or 'none of sympy, matplotlib, scipy.special, scipy.stats')")
    heavy = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                           text=True, env=ENV).stdout.strip()

    def run(argv):
        return lambda: subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=ENV)
    t_imp, t_python = race([run([sys.executable, "-c", "import signalprop.sweeps"]),
                            run([sys.executable, "-c", "pass"])], repeats)
    return t_imp, t_python, heavy


def startup(repeats: int) -> None:
    script = Path(sys.executable).parent / "signalprop"
    cmd = [str(script), "--help"] if script.is_file() else \
        [sys.executable, "-c", "import sys; from signalprop.cli import main; sys.exit(main())",
         "--help"]

    def run(argv):
        return lambda: subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    t_help, t_python = race([run(cmd), run([sys.executable, "-c", "pass"])], repeats)
    print(f"3. start-up, whole process; min of {repeats} repeats")
    print(f"   {' '.join(Path(cmd[0]).name if i == 0 else a for i, a in enumerate(cmd)):<34} "
          f"{t_help:8.3f} s")
    print(f"   python -c pass                     {t_python:8.3f} s")
    verdict = "meets" if t_help < 1.0 else "MISSES"
    print(f"   -> signalprop --help {t_help:.3f} s ({verdict} the < 1 s target)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--repeats", type=int, default=None, help="repeats of the theory sweep")
    ap.add_argument("--only", type=int, choices=(1, 2, 3), default=None, help="one section")
    args = ap.parse_args()
    r = args.repeats or (3 if args.quick else 15)
    print("Times are minima over round-robin repeats: other processes may share this machine "
          f"(load average now {', '.join(f'{x:.1f}' for x in os.getloadavg())}).")
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as root:
        if args.only in (None, 1):
            theory(r, Path(root))
            theory(max(2, r // 3), Path(root), THEORY_DEEP, "1b.", "100..800")
            store_breakdown(r, Path(root))
    if args.only in (None, 2):
        monte_carlo(1 if args.quick else 2)
    if args.only in (None, 3):
        startup(3 if args.quick else 10)


if __name__ == "__main__":
    main()
