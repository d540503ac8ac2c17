#!/usr/bin/env python
"""Cost of the 1/N correction: ``predict(net, order=1)`` against ``predict(net)`` (order 0).

Run from the repository root (prints a table)::

    python benchmarks/bench_nlo.py                       # depths 10, 100, 1000; tanh, gelu, relu
    python benchmarks/bench_nlo.py --depths 100 --acts tanh --repeat 20

Issue 16, must hold: corrected profiles of a depth-100 network cost at most 5x the uncorrected
ones. Both orders are timed in the same process on the same network (built outside the timing),
one input, width 256, each at two operating points: ``fixed`` (sigma_b^2 > 0, q^l settles on q*:
a converged run repeats its per-layer Gaussian moments, which are then evaluated once) and
``drift`` (q^l never settles: critical tanh at sigma_b^2 = 0, q ~ 1/l; relu with a bias, q
growing linearly; gelu at sigma_w^2 = 2, sigma_b^2 = 0, q decaying geometrically: every layer
has its own moments, the worst case). Each time is the best of ``--repeat`` runs after one
warm-up call (tables an activation builds on first use are excluded). The machine's load
average is printed: other load inflates every time. Measured numbers: docs/theory/
finite-width-nlo.md, "Cost".
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

POINTS = {  # activation -> ((label, sigma_w2, sigma_b2), ...)
    "tanh": (("fixed", 1.5, 0.05), ("drift", 1.0, 0.0)),
    "gelu": (("fixed", 1.5, 0.05), ("drift", 2.0, 0.0)),
    "relu": (("fixed", 2.0, 0.0), ("drift", 2.0, 0.05)),
}


def best_time(fn, repeat: int) -> float:
    """Best wall time of ``repeat`` calls of ``fn`` (seconds), after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", default="10,100,1000")
    ap.add_argument("--acts", default="tanh,gelu,relu")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    import signalprop as sp

    warnings.simplefilter("ignore")
    print(f"load average {os.getloadavg()[0]:.2f}; best of {args.repeat}; width {args.width}")
    print(f"{'activation':10s} {'point':6s} {'sw2':>5s} {'sb2':>5s} {'depth':>6s} "
          f"{'order 0 ms':>11s} {'order 1 ms':>11s} {'ratio':>7s}")
    for act in args.acts.split(","):
        for label, sw2, sb2 in POINTS[act]:
            for depth in (int(d) for d in args.depths.split(",")):
                net = sp.mlp(depth, args.width, act, sigma_w2=sw2, sigma_b2=sb2)
                try:
                    sp.predict(net, order=1)
                except ValueError as exc:      # q^l leaves the correction's range
                    print(f"{act:10s} {label:6s} {sw2:5g} {sb2:5g} {depth:6d}  skipped: "
                          f"{str(exc)[:60]}")
                    continue
                t0 = best_time(lambda: sp.predict(net), args.repeat)
                t1 = best_time(lambda: sp.predict(net, order=1), args.repeat)
                print(f"{act:10s} {label:6s} {sw2:5g} {sb2:5g} {depth:6d} {1e3 * t0:11.3f} "
                      f"{1e3 * t1:11.3f} {t1 / t0:7.1f}")


if __name__ == "__main__":
    main()
