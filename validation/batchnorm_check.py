"""Heavier checks of the batch-normalisation mean-field theory (signalprop.batchnorm; Yang,
Pennington, Rao, Sohl-Dickstein, Schoenholz 2019, arXiv 1902.08129). Prints tables.

    python -m validation.batchnorm_check            # full run (minutes on 2 cores)
    python -m validation.batchnorm_check --quick    # smaller samples

Sections:
 1. theory: lambda (= lambda_G, the symmetric sector) and lambda_V for linear, relu, tanh, gelu
    at B = 4..128, the large-B limit E[phi'(z)^2]/Var[phi(z)], and (B-2)/(B-3) for linear;
 2. quadrature: independent adaptive quadrature (scipy dblquad in Cartesian coordinates) of the
    two-coordinate integrals, and refinement of the rule, for several activations and B;
 3. the per-unit operator E_u[Q D P D Q] against Monte Carlo (u uniform on the sphere, 1e6 draws):
    the largest |z| over all entries of the four orbit-basis images;
 4. whole networks, dense Gaussian weights (plain numpy): trace(Pi^l) per layer vs the profile,
    B = 8, N = 256 and 1024; and the exact conditional sampler (below) against the dense one;
 5. the explosion rate measured on networks of width N = 400 (as in LITERATURE.md section 6)
    with the conditional sampler, beside LITERATURE.md's Monte Carlo table and the theory;
 6. that rate against the width N (finite-width bias; the heavy tails at B = 4).

Rules (stated before running): Monte Carlo agrees when within 4 SE, plus O(B/N) for networks
(finite-width bias, which the infinite-width theory does not model); quadrature within 1e-12.

The exact conditional sampler (derived here). For W with i.i.d. N(0, s2/N_in) entries and a fixed
X (N_in x B): H = W X has i.i.d. rows N(0, (s2/N_in) X^T X), so H = Xi (X^T X)^{1/2} sqrt(s2/N_in).
W P_X = H X^+ is fixed by H, and W (I - P_X) is independent of H and of everything above the
layer, so W^T dH = (X^+)^T H^T dH + (I - P_X) Z with Z i.i.d. rows N(0, (s2/N_in) dH^T dH).
O(N B^2) per layer instead of O(N^2 B), with the same joint law as dense weights.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
from scipy import integrate

import signalprop as sp
from signalprop import batchnorm as bn

LIT_RELU = {4: 3.03, 8: 1.81, 16: 1.59, 32: 1.52, 64: 1.49, 128: 1.45}
LIT_TANH = {4: 1.96, 8: 1.35, 16: 1.25, 32: 1.21, 64: 1.20, 128: 1.19}
BS = (4, 5, 6, 8, 16, 32, 64, 128)


# ------------------------------------------------------------------------------------------------
# 1. theory table


def theory_table():
    print("\n1. Explosion rate lambda per layer (theory; independent of sigma_w^2)")
    names = ("linear", "relu", "tanh", "gelu")
    print(f"{'B':>6} " + " ".join(f"{n + ' lam':>12} {n + ' lamV':>11}" for n in names))
    for B in BS + (1024, 16384):
        row = []
        for n in names:
            op = bn.bn_gradient_operator(n, B)
            row.append(f"{op.lambda_:12.6f} {op.lambda_V:11.6f}")
        print(f"{B:>6} " + " ".join(row))
    lim = []
    for n in names:
        a = sp.activation(n)
        lim.append(float(a.dphi_second_moment(1.0) / (a.second_moment(1.0) - a.mean(1.0) ** 2)))
    print(f"{'inf':>6} " + " ".join(f"{v:12.6f} {'':>11}" for v in lim))
    err = max(abs(bn.bn_explosion_rate("linear", B) - (B - 2) / (B - 3)) for B in BS + (1024,))
    print(f"   linear: max |lambda - (B-2)/(B-3)| = {err:.1e};  relu limit pi/(pi-1) = "
          f"{math.pi / (math.pi - 1):.6f}")


# ------------------------------------------------------------------------------------------------
# 2. quadrature


def _nested_quad(f, B, kinks=()):
    """E[f(y_a, y_b)] by nested adaptive quadrature (scipy quad) in Cartesian coordinates:
    t_a = sin psi, s2 = cos psi sin phi (unit disc), weights cos^{B-3} psi cos^{B-4} phi, with
    break points where y_a or y_b crosses a kink. Independent of the polar rule of the module."""
    rho, s = -1.0 / (B - 1), math.sqrt(B - 1.0)
    sq = math.sqrt(1 - rho * rho)
    lim = dict(limit=200, epsabs=1e-15, epsrel=1e-13)

    def inner(psi):
        t, c = math.sin(psi), math.cos(psi)
        pts = []
        for k in kinks:                     # y_b = s (rho t + sq c sin phi) = k
            v = (k / s - rho * t) / (sq * c) if c > 0 else 2.0
            if abs(v) < 1:
                pts.append(math.asin(v))
        g = lambda phi: math.cos(phi) ** (B - 4) * f(s * t, s * (rho * t + sq * c * math.sin(phi)))
        return integrate.quad(g, -math.pi / 2, math.pi / 2, points=pts or None, **lim)[0]

    pts = [math.asin(k / s) for k in kinks if abs(k) < s]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v = integrate.quad(lambda psi: math.cos(psi) ** (B - 3) * inner(psi), -math.pi / 2,
                           math.pi / 2, points=pts or None, **lim)[0]
    return v * (B - 3) / (2 * math.pi)


def quadrature_table(quick):
    print("\n2. Quadrature: |rule - nested scipy quad| for K_ab = E[phi(y_a) phi(y_b)] and "
          "A2 = E[phi'(y_a) phi'(y_b)]; |rule - refined rule| over all moments")
    names = ("tanh", "gelu", "relu", "hard_tanh", "elu")
    Bs = (4, 5, 9) if quick else (4, 5, 6, 9, 16)
    print(f"{'activation':>10} {'B':>4} {'K_ab':>10} {'A2':>10} {'refine':>10}")
    worst = 0.0
    for n in names:
        act = sp.activation(n)
        kinks = tuple(act.kinks or ())
        ph = lambda v: float(act.phi(np.array(v)))
        dph = lambda v: float(act.dphi(np.array(v)))
        for B in Bs:
            mo = bn._moments(act, B)
            e1 = abs(mo["Kab"] - _nested_quad(lambda a, b: ph(a) * ph(b), B, kinks))
            e2 = abs(mo["A2"] - _nested_quad(lambda a, b: dph(a) * dph(b), B, kinks))
            old = (bn._GL_N, bn._THETA_PANELS, bn._CUT)
            bn._GL_N, bn._THETA_PANELS, bn._CUT = 40, 32, 120.0
            bn._rule1.cache_clear(), bn._rule2.cache_clear()
            fine = bn._moments(act, B)
            bn._GL_N, bn._THETA_PANELS, bn._CUT = old
            bn._rule1.cache_clear(), bn._rule2.cache_clear()
            e3 = max(abs(mo[k] - fine[k]) for k in mo)
            worst = max(worst, e1, e2, e3)
            print(f"{n:>10} {B:>4} {e1:10.1e} {e2:10.1e} {e3:10.1e}", flush=True)
    print(f"   worst: {worst:.1e}  ({'PASS' if worst < 1e-12 else 'FAIL'}, rule: 1e-12)")


# ------------------------------------------------------------------------------------------------
# 3. per-unit operator vs Monte Carlo


def sphere_mc(act, B, n, seed, chunk=250_000):
    rng = np.random.default_rng(seed)
    acc = {k: [np.zeros((B, B)), np.zeros((B, B))] for k in ("aa", "a1", "I", "11")}
    for _ in range(n // chunk):
        g = rng.standard_normal((chunk, B))
        g -= g.mean(1, keepdims=True)
        u = g / np.linalg.norm(g, axis=1, keepdims=True)
        d = act.dphi(math.sqrt(B) * u)
        qd = (np.eye(B) - 1.0 / B - u[:, :, None] * u[:, None, :]) * d[:, None, :]
        x, y = qd[:, :, 0], qd.sum(2)
        mats = {"aa": x[:, :, None] * x[:, None, :], "11": y[:, :, None] * y[:, None, :],
                "a1": x[:, :, None] * y[:, None, :] + y[:, :, None] * x[:, None, :],
                "I": np.einsum("nij,nkj->nik", qd, qd)}
        for k, z in mats.items():
            acc[k][0] += z.sum(0)
            acc[k][1] += (z * z).sum(0)
    return {k: (s1 / n, np.sqrt(np.maximum(s2 / n - (s1 / n) ** 2, 0) / n)) for k, (s1, s2) in
            acc.items()}


def operator_table(quick):
    n = 250_000 if quick else 1_000_000
    print(f"\n3. Operator M(P) = E_u[Q D P D Q] vs sphere Monte Carlo ({n} draws): max |z| over "
          "all entries of M(P) for the four orbit-basis matrices P")
    worst = 0.0
    for name in ("relu", "tanh", "gelu", "hard_tanh"):
        for B in ((4, 8) if quick else (4, 5, 8, 16)):
            act = sp.activation(name)
            op = bn.bn_gradient_operator(act, B)
            basis = bn.orbit_basis(B)
            mc = sphere_mc(act, B, n, seed=1000 + B)
            zmax = 0.0
            for j, key in enumerate(("aa", "a1", "I", "11")):
                th = op.from4[0, j] * basis["G"] + op.from4[1, j] * basis["ww"]
                m, se = mc[key]
                ok = se > 0
                zmax = max(zmax, float(np.max(np.abs(m - th)[ok] / se[ok])))
            worst = max(worst, zmax)
            print(f"   {name:>9} B = {B:>3}: max |z| = {zmax:5.2f}  ({4 * B * B} entries)")
    print(f"   worst |z| = {worst:.2f} (4 SE per entry expected to hold for nearly all entries)")


# ------------------------------------------------------------------------------------------------
# 4. networks


def dense_network(name, B, N, L, S, seed, sw2=1.5, a=0, chunk=25):
    """sum_b ||delta^l_b||^2 / N for S dense Gaussian networks, shape (S, L)."""
    act = sp.activation(name)
    rng = np.random.default_rng(seed)
    x0 = np.linalg.qr(rng.standard_normal((N, B)))[0] * math.sqrt(N)
    out = []
    for c0 in range(0, S, chunk):
        s = min(chunk, S - c0)
        X = np.broadcast_to(x0, (s, N, B))
        Ws, cache = [], []
        for l in range(L):
            W = rng.standard_normal((s, N, N)) * math.sqrt(sw2 / N)
            Ws.append(W)
            H = W @ X
            if l == L - 1:
                break
            Hc = H - H.mean(2, keepdims=True)
            r = np.linalg.norm(Hc, axis=2, keepdims=True)
            U = Hc / r
            cache.append((U, r, act.dphi(math.sqrt(B) * U)))
            X = act.phi(math.sqrt(B) * U)
        g = np.zeros((s, L))
        dH = np.zeros((s, N, B))
        dH[:, :, a] = rng.standard_normal((s, N))
        g[:, -1] = (dH ** 2).sum((1, 2)) / N
        for l in range(L - 2, -1, -1):
            U, r, D = cache[l]
            dY = D * (Ws[l + 1].transpose(0, 2, 1) @ dH)
            dH = (math.sqrt(B) / r) * (dY - dY.mean(2, keepdims=True)
                                       - U * (U * dY).sum(2, keepdims=True))
            g[:, l] = (dH ** 2).sum((1, 2)) / N
        out.append(g)
    return np.concatenate(out)


def _psd_sqrt(M):
    lam, E = np.linalg.eigh(M)
    return (E * np.sqrt(np.clip(lam, 0, None))[:, None, :]) @ E.transpose(0, 2, 1)


def conditional_network(name, B, N, L, S, seed, sw2=1.5, a=0, chunk=50):
    """The same law as dense_network with O(N B^2) work per layer (module docstring)."""
    act = sp.activation(name)
    rng = np.random.default_rng(seed)
    x0 = np.linalg.qr(rng.standard_normal((N, B)))[0] * math.sqrt(N)
    out = []
    for c0 in range(0, S, chunk):
        s = min(chunk, S - c0)
        X = np.broadcast_to(x0, (s, N, B)).copy()
        layers = []
        for l in range(L):
            gram = X.transpose(0, 2, 1) @ X
            lam, V = np.linalg.eigh(gram)                       # X^T X = V lam V^T
            keep = lam > 1e-10 * lam[:, -1:]
            sv = np.sqrt(np.where(keep, lam, 0.0))
            Ux = (X @ V) / np.where(keep, sv, 1.0)[:, None, :] * keep[:, None, :]
            H = rng.standard_normal((s, N, B)) @ (sv[:, :, None] * V.transpose(0, 2, 1)) \
                * math.sqrt(sw2 / N)
            layers.append((Ux, sv, V, keep, H))
            if l == L - 1:
                break
            Hc = H - H.mean(2, keepdims=True)
            r = np.linalg.norm(Hc, axis=2, keepdims=True)
            U = Hc / r
            layers[-1] = layers[-1] + ((U, r, act.dphi(math.sqrt(B) * U)),)
            X = act.phi(math.sqrt(B) * U)
        g = np.zeros((s, L))
        dH = np.zeros((s, N, B))
        dH[:, :, a] = rng.standard_normal((s, N))
        g[:, -1] = (dH ** 2).sum((1, 2)) / N
        for l in range(L - 2, -1, -1):
            Ux, sv, V, keep, H = layers[l + 1][:5]
            inv = np.where(keep, 1.0 / np.where(keep, sv, 1.0), 0.0)
            par = Ux @ (inv[:, :, None] * (V.transpose(0, 2, 1) @ (H.transpose(0, 2, 1) @ dH)))
            Z = rng.standard_normal((s, N, B)) @ _psd_sqrt(dH.transpose(0, 2, 1) @ dH) \
                * math.sqrt(sw2 / N)
            dX = par + Z - Ux @ (Ux.transpose(0, 2, 1) @ Z)
            U, r, D = layers[l][5]
            dY = D * dX
            dH = (math.sqrt(B) / r) * (dY - dY.mean(2, keepdims=True)
                                       - U * (U * dY).sum(2, keepdims=True))
            g[:, l] = (dH ** 2).sum((1, 2)) / N
        out.append(g)
    return np.concatenate(out)


def network_table(quick):
    print("\n4. Networks: trace(Pi^l) = sum_b E||delta^l_b||^2/N per layer, B = 8, depth 10, "
          "sigma_w^2 = 1.5, q0 = 1, c0 = 0; theory vs dense Monte Carlo; rule |d| <= 4 SE + B/N th")
    B, L = 8, 10
    for N, S in ((256, 100 if quick else 400), (1024, 20 if quick else 100)):
        for name in ("linear", "relu", "tanh"):
            t0 = time.time()
            g = dense_network(name, B, N, L, S, seed=11)
            m, se = g.mean(0), g.std(0, ddof=1) / math.sqrt(S)
            th = np.exp(bn.bn_gradient_profile(name, B, L, 1.5).log_g)
            z = (m - th) / se
            ok = np.all(np.abs(m - th) <= 4 * se + B / N * th)
            print(f"   N = {N:>4} {name:>6} S = {S}: z per layer "
                  f"{' '.join(f'{v:+.1f}' for v in z)}; max rel {np.max(np.abs(m / th - 1)):.3f} "
                  f"{'PASS' if ok else 'FAIL'} ({time.time() - t0:.0f} s)")
    print("   conditional sampler vs dense (N = 256, B = 8, S = 400 each, different seeds): "
          "z of the difference of means per layer")
    for name in ("linear", "relu"):
        S = 100 if quick else 400
        g1 = dense_network(name, 8, 256, L, S, seed=21)
        g2 = conditional_network(name, 8, 256, L, S, seed=22)
        d = g1.mean(0) - g2.mean(0)
        se = np.sqrt(g1.var(0, ddof=1) / S + g2.var(0, ddof=1) / S)
        print(f"   {name:>6}: {' '.join(f'{v:+.1f}' for v in d / se)}")


# ------------------------------------------------------------------------------------------------
# 5. explosion rate on finite networks


def rate_table(quick):
    N, L, l1, l2 = 400, 24, 4, 20
    print(f"\n5. Explosion rate on networks of width N = {N} (conditional sampler), depth {L}: "
          f"lambda_hat = (mean g^{l1} / mean g^{l2})^(1/{l2 - l1}) with delta-method SE; "
          "theory: the same ratio of the profile (= lambda to <1e-4 here)")
    print(f"{'act':>6} {'B':>4} {'theory':>8} {'profile':>8} {'MC':>8} {'SE':>7} {'z':>6} "
          f"{'LIT MC':>7}")
    for name, lit in (("linear", None), ("relu", LIT_RELU), ("tanh", LIT_TANH)):
        for B in (4, 8, 16, 32, 64, 128):
            if quick:
                S = 200 if B <= 16 else 60
            else:
                S = 1000 if B <= 16 else (200 if B == 32 else 100)
            t0 = time.time()
            g = conditional_network(name, B, N, L, S, seed=31 + B)
            m1, m2 = g[:, l1 - 1].mean(), g[:, l2 - 1].mean()
            c = np.cov(g[:, l1 - 1], g[:, l2 - 1])
            var = (c[0, 0] / m1 ** 2 + c[1, 1] / m2 ** 2 - 2 * c[0, 1] / (m1 * m2)) / S
            k = l2 - l1
            lam_hat = (m1 / m2) ** (1 / k)
            se = lam_hat * math.sqrt(var) / k
            prof = bn.bn_gradient_profile(name, B, L)
            lam_prof = math.exp((prof.log_g[l1 - 1] - prof.log_g[l2 - 1]) / k)
            lam = bn.bn_explosion_rate(name, B)
            litv = f"{lit[B]:7.2f}" if lit and B in lit else f"{'':>7}"
            print(f"{name:>6} {B:>4} {lam:8.4f} {lam_prof:8.4f} {lam_hat:8.4f} {se:7.4f} "
                  f"{(lam_hat - lam_prof) / se:+6.1f} {litv}   ({time.time() - t0:.0f} s)",
                  flush=True)
    print("   B <= 5: E[1/r^4] = E[1/chi^4_{B-1}] is infinite, so g has infinite variance: the SE "
          "is not meaningful and sample means scatter (mostly low) on a slowly shrinking scale; "
          "see section 6.")


def convergence_table(quick):
    N_list = (200, 400, 1600) if quick else (200, 400, 1600, 6400)
    L, l1, l2 = 24, 4, 20
    print(f"\n6. Finite width: lambda_hat (as in 5) against N; B = 8 has finite-variance factors, "
          f"B = 4 does not")
    for name, B in (("linear", 8), ("relu", 8), ("tanh", 4), ("relu", 4)):
        lam = bn.bn_explosion_rate(name, B)
        row = []
        for N in N_list:
            S = (300 if quick else 1000) if N <= 1600 else 400
            g = conditional_network(name, B, N, L, S, seed=5 + N)
            m1, m2 = g[:, l1 - 1].mean(), g[:, l2 - 1].mean()
            c = np.cov(g[:, l1 - 1], g[:, l2 - 1])
            var = (c[0, 0] / m1 ** 2 + c[1, 1] / m2 ** 2 - 2 * c[0, 1] / (m1 * m2)) / S
            lh = (m1 / m2) ** (1 / (l2 - l1))
            row.append(f"N={N}: {lh:.4f}({lh * math.sqrt(var) / (l2 - l1):.4f})")
        print(f"   {name:>6} B = {B}: theory {lam:.4f};  " + "  ".join(row), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", type=int, action="append", help="run only these sections (1-6)")
    args = p.parse_args(argv)
    sections = {1: lambda: theory_table(), 2: lambda: quadrature_table(args.quick),
                3: lambda: operator_table(args.quick), 4: lambda: network_table(args.quick),
                5: lambda: rate_table(args.quick), 6: lambda: convergence_table(args.quick)}
    t0 = time.time()
    for k in sorted(args.only or sections):
        sections[k]()
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
