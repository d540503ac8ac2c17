"""Benchmark of the tied-weight recurrent theory (``predict_tied``) against the simulation it
replaces, at equal precision.

    python benchmarks/bench_tied.py [--steps T] [--width N]

For an LSTM with forget bias 3 (long memory; T = 100 by default) and a GRU, prints the time of
``predict_tied`` (default 8 replicas x 4096 paths) and of ``simulate`` at width N (default 256) with
the number of sample networks that gives the same standard error of log g^1 as the theory's
(estimated from a 16-network pilot, run first and included), and their ratio. Both in this process,
BLAS at its default threads. The simulation also carries the finite-width bias the theory lacks.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import signalprop as sp  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--width", type=int, default=256)
    args = ap.parse_args(argv)
    T, N = args.steps, args.width
    cases = {"lstm b_f = 3": sp.rnn("lstm", steps=T, width=N, gates={"forget": sp.Gate(1, 1, 3.0)}),
             "gru": sp.rnn("gru", steps=T, width=N)}
    print(f"T = {T}, N = {N}; times in seconds")
    print(f"{'cell':14s} {'theory':>8s} {'se(log g1)':>10s} {'sim S':>6s} {'sim time':>9s} "
          f"{'ratio':>6s}")
    for name, net in cases.items():
        t = time.perf_counter()
        th = sp.predict_tied(net, 1.0)
        t_th = time.perf_counter() - t
        t = time.perf_counter()
        pilot = sp.simulate(net, 16, seed=1)
        t_pilot = time.perf_counter() - t
        se_th = float(th.log_g_se[0])
        S = max(16, math.ceil(16 * (float(pilot.log_g_se[0]) / se_th) ** 2))
        t_sim = t_pilot * S / 16                 # simulation time is linear in the samples
        print(f"{name:14s} {t_th:8.2f} {se_th:10.3f} {S:6d} {t_sim:9.1f} {t_sim / t_th:6.1f}x")


if __name__ == "__main__":
    main()
