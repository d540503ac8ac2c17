"""Benchmark of transformer stacks (issue 12, "Speed"): theory and simulation.

    python benchmarks/bench_attention.py [--before] [--repeats N]

Prints:

1. the theory (``predict``) of a 48-block, T = 32 pre-LN and post-LN stack with 1/sqrt(d_head)
   logits (target < 1 s), and the 1/d_head stack for reference;
2. with ``--before``, the same 48-block stacks with the exchangeable-token route switched off (the
   full T x T logit Monte Carlo every layer took before; about 30 s each), and the ratio;
3. the simulation (dense engine) of width 256, T = 32, 24 blocks, 32 samples (target < 1 min on
   2 cores), run once.

BLAS is left at its default threads for the simulation (the target is stated for 2 cores). Theory
times are the best of ``--repeats`` runs (default 3) after a warm-up.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import signalprop as sp  # noqa: E402
from signalprop.layers import attention  # noqa: E402


def best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", action="store_true", help="also time the full-logit route")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    print("1. theory, 48 blocks, T = 32, width 256, 4 heads (target < 1 s)")
    after = {}
    for ln in ("pre", "post"):
        for scale in ("sqrt", "linear"):
            net = sp.transformer(48, 256, 4, 32, ln=ln, logit_scale=scale)
            t = best(lambda: sp.predict(net), args.repeats)
            after[ln, scale] = t
            print(f"   {ln}-LN {scale:6s}  {t:7.3f} s")
    if args.before:
        print("2. the same without the exchangeable route (full T x T logit Monte Carlo)")
        with mock.patch.object(attention, "_exchangeable", lambda K: None):
            for ln in ("pre", "post"):
                net = sp.transformer(48, 256, 4, 32, ln=ln)
                t = time.perf_counter()
                sp.predict(net)
                t = time.perf_counter() - t
                print(f"   {ln}-LN sqrt    {t:7.3f} s   ratio before/after "
                      f"{t / after[ln, 'sqrt']:.0f}x")
    print("3. simulation, width 256, T = 32, 24 blocks, 32 samples (target < 60 s)")
    net = sp.transformer(24, 256, 4, 32)
    t = time.perf_counter()
    sp.simulate(net, 32, seed=0)
    print(f"   pre-LN sqrt  {time.perf_counter() - t:7.1f} s")


if __name__ == "__main__":
    main()
