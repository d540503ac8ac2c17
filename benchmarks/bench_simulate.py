"""Benchmark of the Monte Carlo engines against baselines measured in the same process.

    python benchmarks/bench_simulate.py [--quick]

Prints, in one run:

1. the dense engine against a plain batched GEMM of the same shapes (the forward and backward
   matrix products of every layer on pre-drawn weights), and against the floor "drawing the same
   Gaussian weights + the same GEMMs" (target: >= 50% of GEMM throughput at N >= 512);
2. the matrix-free engine's speed-up over the dense engine at N = 1024, L = 100 (target: >= 100x),
   with the two profiles compared (equal statistics);
3. both against a straightforward per-sample loop (draw the weights, forward, backward);
4. the matrix-free engine at width 10^5, depth 10^3;
5. the stabilised Jacobian accumulation (log singular values) against the plain GEMM chain;
6. batch-normalised networks (BatchNormDense, B = 32, N = 1024, L = 20): the matrix-free engine's
   speed-up over the dense engine, gaussian and orthogonal weights;
7. (issue 17) both engines against the time of drawing their normals alone (one generator per
   sample, as the engines draw them: on one thread and on every core) and against the plain
   PyTorch loop of the anchors (/work/shared/anchors/torch_mc.py, float64, run as a subprocess
   from the anchors' virtualenv when present), at N = 512, L = 50, 16 samples and at
   N = 64, L = 200, 64 samples (where per-layer overhead dominates). ``--only 7`` runs it alone.

BLAS and OpenMP are pinned to one thread (set before numpy is imported) so that the ratios do not
depend on how busy the other cores are; export OPENBLAS_NUM_THREADS etc. to override. Times are
the best of ``--repeats`` runs (default 3) after a warm-up.
"""

from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from signalprop.compare import compare  # noqa: E402
from signalprop.architectures import mlp  # noqa: E402
from signalprop.simulate import simulate  # noqa: E402


def best(fn, repeats):
    """Best of ``repeats`` timed runs after one warm-up."""
    return race([fn], repeats)[0]


def race(fns, repeats):
    """Best times of several functions measured in turn (round-robin), so that a change of load
    on the machine affects all of them alike. One warm-up round."""
    for fn in fns:
        fn()
    times = [math.inf] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            times[i] = min(times[i], time.perf_counter() - t)
    return times


def gemm_baseline(N, L, S, k=1):
    """The engine's matrix products on pre-drawn weights: per layer a forward (S,k,N)@(S,N,N)^T
    and a backward (S,1,N)@(S,N,N), both batched (np.matmul)."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((S, N, N)) / math.sqrt(N)
    x = rng.standard_normal((S, k, N))
    d = rng.standard_normal((S, 1, N))

    def run():
        h = x
        for _ in range(L):
            h = np.tanh(np.matmul(h, W.transpose(0, 2, 1)))
        g = d
        for _ in range(L):
            g = np.matmul(g, W)
        return h, g
    return run


def rng_floor(N, L, S):
    """Drawing S * L Gaussian N x N matrices, one generator per sample (what the engine draws)."""
    gens = [np.random.default_rng(s) for s in range(S)]
    out = np.empty((S, N, N))

    def run():
        for _ in range(L):
            for s, g in enumerate(gens):
                g.standard_normal(out=out[s])
    return run


def naive_loop(N, L, S, sw2=1.5, sb2=0.05):
    """The straightforward per-sample loop: draw all weights, forward, backward."""
    def run():
        rng = np.random.default_rng(1)
        g_hat = np.empty((S, L))
        for s in range(S):
            Ws, bs, hs = [], [], []
            x = np.ones(N)
            for _ in range(L):
                W = rng.standard_normal((N, N)) * math.sqrt(sw2 / N)
                b = rng.standard_normal(N) * math.sqrt(sb2)
                h = W @ x + b
                Ws.append(W)
                hs.append(h)
                x = np.tanh(h)
            delta = rng.standard_normal(N)
            for l in range(L - 1, -1, -1):
                g_hat[s, l] = delta @ delta / N
                if l:
                    delta = (1.0 - np.tanh(hs[l - 1]) ** 2) * (Ws[l].T @ delta)
        return g_hat
    return run


def section1(N, L, S, repeats):
    net = mlp(L, N, "tanh", sigma_w2=1.5, sigma_b2=0.05)
    t_eng, t_gemm, t_rng, t_naive = race(
        [lambda: simulate(net, S, 0, engine="dense", chunk=S, max_memory=4 << 30),
         gemm_baseline(N, L, S), rng_floor(N, L, S), naive_loop(N, L, S)], repeats)
    flops = 2 * 2 * N * N * L * S               # forward and backward matrix-vector products
    print(f"  N={N:5d} L={L:4d} samples={S:3d}: dense engine {t_eng:7.3f} s "
          f"({flops / t_eng / 1e9:5.2f} GFLOP/s)")
    print(f"      plain batched GEMM (same shapes, weights pre-drawn) {t_gemm:7.3f} s "
          f"({flops / t_gemm / 1e9:5.2f} GFLOP/s): engine at {100 * t_gemm / t_eng:5.1f}% of GEMM")
    print(f"      drawing the same Gaussian weights alone {t_rng:7.3f} s; floor RNG + GEMM "
          f"{t_rng + t_gemm:7.3f} s: engine at {100 * (t_rng + t_gemm) / t_eng:5.1f}% of that floor")
    print(f"      naive per-sample loop {t_naive:7.3f} s: engine {t_naive / t_eng:4.2f}x faster")
    return t_eng, t_gemm, t_rng


def section2(N, L, S_dense, S_mf, repeats):
    net = mlp(L, N, "tanh", sigma_w2=1.5, sigma_b2=0.05)
    t_d, t_m, t_n = race([lambda: simulate(net, S_dense, 0, engine="dense"),
                          lambda: simulate(net, S_mf, 0, engine="matrix-free"),
                          naive_loop(N, L, 2)], max(1, repeats - 1))
    per_d, per_m, per_n = t_d / S_dense, t_m / S_mf, t_n / 2
    print(f"  N={N} L={L}: dense {per_d * 1e3:8.1f} ms/sample ({S_dense} samples), matrix-free "
          f"{per_m * 1e3:8.3f} ms/sample ({S_mf} samples), naive loop {per_n * 1e3:8.1f} ms/sample")
    print(f"      matrix-free speed-up over dense: {per_d / per_m:7.0f}x; over the naive loop: "
          f"{per_n / per_m:7.0f}x; dense over naive: {per_n / per_d:4.2f}x")
    # equal statistics: the same number of samples from both engines, compared field by field
    S_eq = S_dense
    pd = simulate(net, S_eq, 10, engine="dense")
    pm = simulate(net, S_eq, 11, engine="matrix-free")
    zq = np.abs(pd.q - pm.q) / np.hypot(pd.q_se, pm.q_se)
    zg = np.abs(pd.log_g - pm.log_g) / np.hypot(pd.log_g_se, pm.log_g_se)
    print(f"      equal statistics ({S_eq} samples each): max |z| dense vs matrix-free over "
          f"{L} layers: q {zq.max():.2f}, log g {zg.max():.2f}")
    big = simulate(net, 400, 12, engine="matrix-free")
    from signalprop.meanfield import predict
    c = compare(predict(net), big)
    print(f"      matrix-free, 400 samples, vs mean-field theory: {c.verdict} "
          f"(max |z| {c.max_abs_z:.2f})")
    return per_d / per_m


def section4(N, L, S):
    net = mlp(L, N, "tanh", sigma_w2=1.76, sigma_b2=0.05)
    t = time.perf_counter()
    p = simulate(net, S, 0, engine="matrix-free")
    dt = time.perf_counter() - t
    print(f"  N={N} L={L} samples={S}: matrix-free {dt:6.1f} s ({dt / S:5.1f} s per sample); "
          f"q^L = {p.q[-1]:.4f}, log g^1 = {p.log_g[0]:.3f}")


def section5(N, L, repeats):
    """The stabilised Jacobian accumulation against the plain product of the same matrices."""
    from signalprop.jacobian import jacobian, jacobian_singular_values
    net = mlp(L, N, "tanh", sigma_w2=1.76, sigma_b2=0.05)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((N, N)) / math.sqrt(N)

    def chain():
        J = np.eye(N)
        for _ in range(L):
            J = A @ J
        return J
    t_sv, t_j, t_chain = race([lambda: jacobian_singular_values(net, 1, 0),
                               lambda: jacobian(net, 1, 0), chain], repeats)
    print(f"  N={N} L={L}: log singular values (stabilised) {t_sv:6.2f} s; plain Jacobian product "
          f"{t_j:6.2f} s; bare GEMM chain {t_chain:6.2f} s ({2 * N ** 3 * L / t_chain / 1e9:5.2f} "
          f"GFLOP/s): the stabilised accumulation runs at {100 * t_chain / t_sv:4.1f}% of GEMM "
          f"throughput (one QR and two products per layer)")


def section6(N, L, B, S_dense, S_mf, repeats):
    """Batch normalisation: matrix-free (O(N B^2) per layer) against dense (O(N^2 B))."""
    for weights in ("gaussian", "orthogonal"):
        net = mlp(L, N, "relu", sigma_w2=2.0, norm="batch", batch_size=B, weights=weights)
        t_d, t_m = race([lambda: simulate(net, S_dense, 0, engine="dense"),
                         lambda: simulate(net, S_mf, 0, engine="matrix-free")], repeats)
        per_d, per_m = t_d / S_dense, t_m / S_mf
        print(f"  {weights:>10} N={N} L={L} B={B}: dense {per_d * 1e3:8.1f} ms/sample, matrix-free "
              f"{per_m * 1e3:7.2f} ms/sample: speed-up {per_d / per_m:5.1f}x")


ANCHORS = Path(os.environ.get("SIGNALPROP_ANCHORS", "/work/shared/anchors"))
ANCHOR_PYTHON = Path.home() / ".cache" / "signalprop-anchors-venv" / "bin" / "python"


def normals_floor(S, counts, nthreads):
    """Drawing ``sum(counts)`` standard normals per sample, one generator per sample, as calls of
    ``counts[i]`` numbers each (fresh arrays, as the engines allocate them), on ``nthreads``
    threads (:meth:`signalprop.sampling.Streams.normal`)."""
    from signalprop import sampling

    def run():
        st = sampling.Streams([np.random.default_rng(s) for s in range(S)])
        sampling.set_threads(nthreads)
        try:
            for c in counts:
                st.normal((c,))
        finally:
            sampling.set_threads(None)
    return run


def torch_anchor(N, L, S, repeats, sw2=1.5, sb2=0.05):
    """Best time of the anchors' plain PyTorch loop (float64, 2 threads), or None (and why)."""
    import json
    import subprocess
    script = ANCHORS / "torch_mc.py"
    if not (script.exists() and ANCHOR_PYTHON.exists()):
        return None, f"no anchors ({script} or {ANCHOR_PYTHON} missing)"
    cmd = [str(ANCHOR_PYTHON), str(script), "--act", "tanh", "--sw2", str(sw2), "--sb2", str(sb2),
           "--depth", str(L), "--width", str(N), "--samples", str(S), "--dtype", "float64",
           "--repeats", str(repeats), "--threads", str(os.cpu_count() or 1)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=str(ANCHORS))
        out = json.loads(res.stdout.strip().splitlines()[-1])
        return float(out["timings"]["experiment"]["min_s"]), "torch " + \
            str(out.get("versions", {}).get("torch", "?"))
    except Exception as err:                     # report, do not fail the benchmark
        return None, f"torch anchor failed: {type(err).__name__}: {err}"[:200]


def section7(N, L, S, repeats, anchor=True):
    """Both engines against their normals (one input, tanh, sigma_w^2 = 1.5, sigma_b^2 = 0.05)."""
    from signalprop import sampling
    net = mlp(L, N, "tanh", sigma_w2=1.5, sigma_b2=0.05)
    cpus = sampling.usable_cpus()
    dense_counts = [N * N + N] * L                          # W and b per layer
    mf_counts = [N] * L + [N] + [N + 1] * (L - 1)           # G per layer; v; xi per layer
    mf_total = [sum(mf_counts)]                             # the same, one call per sample
    names = ["dense engine", f"dense normals, 1 thread", f"dense normals, {cpus} threads",
             "matrix-free engine", "matrix-free normals (one call per sample), 1 thread",
             f"matrix-free normals (one call per sample), {cpus} threads",
             "matrix-free normals (one call per sample and layer), 1 thread"]
    fns = [lambda: simulate(net, S, 0, engine="dense"), normals_floor(S, dense_counts, 1),
           normals_floor(S, dense_counts, None), lambda: simulate(net, S, 0, engine="matrix-free"),
           normals_floor(S, mf_total, 1), normals_floor(S, mf_total, None),
           normals_floor(S, mf_counts, 1)]
    t = dict(zip(names, race(fns, repeats)))
    t_torch, what = torch_anchor(N, L, S, repeats) if anchor else (None, "skipped")
    print(f"  N={N} L={L} samples={S} (best of {repeats}, round-robin; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs: other work on the machine inflates "
          "every time, minima are the least affected):")
    for k, v in t.items():
        print(f"      {k:58s} {v * 1e3:9.1f} ms")
    d, dn = t["dense engine"], t[f"dense normals, {cpus} threads"]
    m, mn = t["matrix-free engine"], t[f"matrix-free normals (one call per sample), {cpus} threads"]
    print(f"      dense / its normals on all cores: {d / dn:5.2f} (target <= 1.25); "
          f"on one thread: {d / t['dense normals, 1 thread']:5.2f}")
    print(f"      matrix-free / its normals on all cores: {m / mn:5.2f} (target <= 1.25); "
          f"on one thread: {m / t['matrix-free normals (one call per sample), 1 thread']:5.2f}")
    if t_torch is None:
        print(f"      plain PyTorch loop: {what}")
    else:
        print(f"      plain PyTorch loop (anchors, float64, {what}) {t_torch * 1e3:9.1f} ms: "
              f"dense engine / torch = {d / t_torch:5.2f} (target <= 1), matrix-free / torch = "
              f"{m / t_torch:6.3f}")
    return t, t_torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", type=int, choices=range(1, 8), help="run one section (1, 2, 4-7)")
    ap.add_argument("--no-anchor", action="store_true", help="section 7 without the torch run")
    args = ap.parse_args(argv)
    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs, BLAS threads "
          f"{os.environ.get('OPENBLAS_NUM_THREADS')}, load average "
          f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "")
    if args.only == 7:
        return run_section7(args)
    print("1. dense engine vs plain batched GEMM of the same shapes (tanh, one input)")
    if args.quick:
        section1(256, 5, 4, 1)
    else:
        for N, L, S in ((512, 20, 8), (1024, 10, 4)):
            section1(N, L, S, args.repeats)
    print("2./3. matrix-free vs dense vs naive per-sample loop")
    if args.quick:
        section2(256, 20, 4, 50, 1)
    else:
        section2(1024, 100, 8, 400, args.repeats)
    print("4. matrix-free at large width and depth")
    if args.quick:
        section4(20_000, 100, 1)
    else:
        section4(100_000, 1000, 2)
    print("5. Jacobian singular values: stabilised accumulation vs plain GEMM chain")
    if args.quick:
        section5(128, 10, 1)
    else:
        section5(512, 50, args.repeats)
    print("6. batch normalisation: matrix-free vs dense (relu)")
    if args.quick:
        section6(256, 5, 8, 4, 32, 1)
    else:
        section6(1024, 20, 32, 4, 32, max(1, args.repeats - 1))
    run_section7(args)


def run_section7(args):
    print("7. the engines against the time to draw their normals, and the plain PyTorch loop")
    sizes = ((128, 10, 4), (32, 50, 16)) if args.quick else ((512, 50, 16), (64, 200, 64))
    for N, L, S in sizes:
        section7(N, L, S, args.repeats, anchor=not args.no_anchor)


if __name__ == "__main__":
    main()
