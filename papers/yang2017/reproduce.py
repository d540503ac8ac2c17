"""Forward and backward dynamics of Yang & Schoenholz (2017), "Mean field residual networks: on the
edge of chaos" (NeurIPS; arXiv 1712.08969), with signalprop.

    python papers/yang2017/reproduce.py            # figures into papers/yang2017/ (~3 min, 2 cores)
    python papers/yang2017/reproduce.py --tables   # the README's comparison tables
    python papers/yang2017/reproduce.py --update-readme   # ... written into README.md
    python papers/yang2017/reproduce.py --quick --out /tmp/x   # a smoke run (tests)

The paper's *full residual network* (YS 2017 sec. 3 [RECALLED (med), LITERATURE.md sec. 4]):

    h^l = W^l x^{l-1} + b^l,   x^l = V^l phi(h^l) + a^l + x^{l-1},
    W ~ N(0, sigma_w^2/N), V ~ N(0, sigma_v^2/N), b ~ N(0, sigma_b^2), a ~ N(0, sigma_a^2),

is ``sp.Residual((sp.Dense(N, phi, sigma_w2, sigma_b2),
                   sp.Dense(N, "linear", sigma_v2, sigma_a2)))``.
Its mean-field recursions (same source; re-derived here, README "Derivations"), with
``p^l = |x^l|^2/N`` (signalprop's ``q`` of a residual block) and ``q^l = |h^l|^2/N``:

    q^l = sigma_w^2 p^{l-1} + sigma_b^2,
    p^l = p^{l-1} + sigma_v^2 E[phi(sqrt(q^l) z)^2] + sigma_a^2,
    chi^{l-1} = chi^l (1 + sigma_v^2 sigma_w^2 E[phi'(sqrt(q^l) z)^2]),   chi^l = E|dL/dx^l|^2 / N.

``chi^0`` is the gradient w.r.t. the INPUT ``x^0``. signalprop's ``log_g[0]`` is the gradient w.r.t.
block 1's output ``x^1``, so every network here starts with an identity block (``beta = 0``:
``x = x^0 + 0 * F(x^0)``); its output is ``x^0`` and the profile's index 0 is then layer 0 of
the paper (``p^0``, ``chi^0``). The other way, ``log_g[0]`` plus block 1's own factor
``log(1 + sigma_v^2 sigma_w^2 E[phi'(sqrt(q^1) z)^2])``, gives the same numbers (tables).
"""

from __future__ import annotations

import functools
import math
import pathlib
import sys

import numpy as np
from scipy.special import gamma

import signalprop as sp
from signalprop.plot import new_figure

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))          # papers/_common.py
from _common import (README_BEGIN, README_END, agrees, parser, readme_block,  # noqa: E402,F401
                     styled, table_options, write_figures)

N = 1024                                   # width of the Monte Carlo networks (theory: any)
TANH_PAIRS = ((1.0, 1.0), (0.25, 1.0), (1.0, 4.0))      # (sigma_v^2, sigma_w^2), no biases
RELU_PAIRS = ((1.0, 1.0), (0.5, 1.0), (1.0, 2.0))
ALPHAS = (0.55, 0.6, 0.7, 0.8, 0.9)
TANH_DEPTHS = (100, 1000, 10000, 100000)
MC = {"tanh": (200, 100), "relu": (60, 100)}             # (blocks, samples) of the Monte Carlo
SEED = 1712_08969

# LITERATURE.md sec. 4 [DERIVED, NUM]: log(chi^0/chi^l)/sqrt(l), sigma_v^2 = sigma_w^2 = 1, no
# biases, p^0 = 1
RECORDED_TANH = {100: "1.0546", 1000: "1.0836", 10000: "1.0770", 100000: "1.0701"}
LEAD_QUAD = {100: "1.054555", 1000: "1.083557"}          # the lead's independent scipy quad
# LITERATURE.md sec. 4 [DERIVED, NUM]: fitted exponents (forward, backward); fit range not stated
RECORDED_ALPHA = {0.55: ("2.2218", "6.7192"), 0.6: ("2.4995", "4.4986"),
                  0.7: ("3.3328", "4.0825"), 0.8: ("4.9994", "5.3326"),
                  0.9: ("9.9984", "10.1233")}


# ---------------------------------------------------------------------------------------------
# networks


def block(act, sigma_v2: float, sigma_w2: float, sigma_b2: float = 0.0, sigma_a2: float = 0.0,
          width: int = N, beta: float = 1.0) -> sp.Residual:
    """One block of YS's full residual network, x + beta (V phi(W x + b) + a) (sec. 3)."""
    return sp.Residual((sp.Dense(width, act, sigma_w2, sigma_b2),
                        sp.Dense(width, "linear", sigma_v2, sigma_a2)), 1.0, beta)


def ys_net(depth: int, act, sigma_v2: float, sigma_w2: float, sigma_b2: float = 0.0,
           sigma_a2: float = 0.0, width: int = N) -> sp.Network:
    """An identity block (beta = 0, so profile index 0 is x^0) and ``depth`` YS blocks; all
    blocks share one activation object, so ``predict`` sees one run of identical layers."""
    act = sp.activation(act)
    ident = block(act, sigma_v2, sigma_w2, sigma_b2, sigma_a2, width, beta=0.0)
    return sp.Network(width, (ident,) + (block(act, sigma_v2, sigma_w2, sigma_b2, sigma_a2,
                                                 width),) * depth)


def log_chi_ratio(prof) -> np.ndarray:
    """log(chi^0 / chi^l) for l = 0..L from a profile of :func:`ys_net` (index 0 = x^0)."""
    return prof.log_g[0] - np.asarray(prof.log_g)


def block1_factor(act, sigma_v2: float, sigma_w2: float, sigma_b2: float = 0.0,
                  q0: float = 1.0) -> float:
    """Block 1's own backward factor log(1 + sigma_v^2 sigma_w^2 E[phi'(sqrt(q^1) z)^2]),
    q^1 = sigma_w^2 p^0 + sigma_b^2 (YS 2017 sec. 3 backward recursion at l = 1)."""
    d = float(sp.activation(act).dphi_second_moment(sigma_w2 * q0 + sigma_b2))
    return math.log1p(sigma_v2 * sigma_w2 * d)


@functools.lru_cache(maxsize=None)
def theory(act: str, depth: int, sigma_v2: float, sigma_w2: float):
    """predict() of :func:`ys_net` (p^0 = 1), cached (the tanh profile at 1e5 takes ~1.5 min)."""
    return sp.predict(ys_net(depth, act, sigma_v2, sigma_w2))


# ---------------------------------------------------------------------------------------------
# tanh: p^l ~ sigma_v^2 l, log chi ~ A sqrt(l)


def tanh_constants(sigma_v2: float, sigma_w2: float) -> tuple[float, float]:
    """(A, B) of log(chi^0/chi^l) ~ A sqrt(l) + B log l + C (README "Derivations"; A is
    LITERATURE.md sec. 4's 8/(3 sqrt(2 pi)) sigma_v sigma_w, B derived here)."""
    s = sigma_v2 * sigma_w2
    return 8.0 * math.sqrt(s) / (3.0 * math.sqrt(2.0 * math.pi)), 4.0 * (3.0 - s) / (9.0 * math.pi)


def independent_tanh(depths, sigma_v2: float = 1.0, sigma_w2: float = 1.0, q0: float = 1.0) -> dict:
    """log(chi^0/chi^l)/sqrt(l) from the YS recursions with no signalprop code: the expectations
    are integrals over u = sqrt(q) z, E[f(sqrt(q) z)] = int f(u) exp(-u^2/2q)/sqrt(2 pi q) du,
    for f = sech^2, sech^4 (E tanh^2 = 1 - E sech^2), by the trapezoidal rule on [-25, 25] with
    step 0.02 (analytic integrands decaying like e^{-2|u|}: error ~ exp(-pi^2/0.02), truncation
    ~ e^{-50}; valid for q >~ 0.01)."""
    h = 0.02
    u = np.arange(-1250, 1251) * h
    s2 = 1.0 / np.cosh(u) ** 2
    F = np.stack([s2, s2 * s2])
    want, out = set(depths), {}
    p, lc = q0, 0.0
    for l in range(1, max(depths) + 1):
        q = sigma_w2 * p
        w = np.exp(-0.5 * u * u / q) * (h / math.sqrt(2.0 * math.pi * q))
        e2, e4 = F @ w
        lc += math.log1p(sigma_v2 * sigma_w2 * e4)
        p += sigma_v2 * (1.0 - e2)
        if l in want:
            out[l] = lc / math.sqrt(l)
    return out


def tanh_rows(quick: bool = False) -> list[dict]:
    """log(chi^0/chi^l)/sqrt(l) at the recorded depths, three ways."""
    depths = [d for d in TANH_DEPTHS if not quick or d <= 1000]
    prof = theory("tanh", max(depths), 1.0, 1.0)
    lcr = log_chi_ratio(prof)
    ind = independent_tanh(depths)
    A, B = tanh_constants(1.0, 1.0)
    top = max(depths)
    C = lcr[top] - A * math.sqrt(top) - B * math.log(top)
    # the other way: a network without the identity block, log_g[0] + block 1's own factor
    short = sp.predict(sp.Network(N, ys_net(1000, "tanh", 1.0, 1.0).layers[1:]))
    f1 = block1_factor("tanh", 1.0, 1.0)
    rows = []
    for l in depths:
        alt = f1 + short.log_g[0] - short.log_g[l - 1] if l <= 1000 else None
        rows.append({"l": l, "ours": lcr[l] / math.sqrt(l),
                     "block1": None if alt is None else alt / math.sqrt(l),
                     "independent": ind[l], "recorded": RECORDED_TANH[l],
                     "lead": LEAD_QUAD.get(l),
                     "asymptotic": A + (B * math.log(l) + C) / math.sqrt(l),
                     "C": C, "C_depth": top})
    return rows


# ---------------------------------------------------------------------------------------------
# relu: exact exponential rate


def relu_rows(depth: int = 200) -> list[dict]:
    """Per-block growth of p^l and chi^0/chi^l against log(1 + sigma_v^2 sigma_w^2 / 2)."""
    rows = []
    for sv2, sw2 in RELU_PAIRS:
        prof = theory("relu", depth, sv2, sw2)
        rate = math.log1p(sv2 * sw2 / 2.0)
        dp = np.diff(prof.log_q)
        dc = np.diff(log_chi_ratio(prof))
        rows.append({"sigma_v2": sv2, "sigma_w2": sw2, "rate": rate,
                     "p_err": float(np.max(np.abs(dp - rate))),
                     "chi_err": float(np.max(np.abs(dc - rate))),
                     "pL": float(prof.log_q[-1]), "depth": depth})
    return rows


# ---------------------------------------------------------------------------------------------
# alpha-ReLU: polynomial exponents


def _half_normal(p: float) -> float:
    """E[max(z, 0)^p] = 2^{p/2 - 1} Gamma((p+1)/2) / sqrt(pi), z ~ N(0, 1), p > -1."""
    return 2.0 ** (p / 2.0 - 1.0) * gamma((p + 1.0) / 2.0) / math.sqrt(math.pi)


class AlphaReLU(sp.Activation):
    """phi(x) = max(x, 0)^alpha with its Gaussian moments in closed form (YS 2017's alpha-ReLU;
    LITERATURE.md sec. 4: E[phi^2] = c_alpha q^alpha,
    c_alpha = 2^{alpha-1} Gamma(alpha+1/2)/sqrt(pi),
    E[phi'^2] = alpha^2 d_alpha q^{alpha-1}, d_alpha = c_alpha/(2 alpha - 1)): the half-normal
    moments E[max(z,0)^p] = 2^{p/2-1} Gamma((p+1)/2)/sqrt(pi) at p = alpha, 2 alpha, 2 alpha - 2.

    Why a subclass: signalprop's quadrature of a custom activation does not resolve the
    integrable singularity of phi'^2 ~ x^{2 alpha - 2} at 0 (README, accuracy table)."""

    @property
    def alpha(self) -> float:
        return self.params["alpha"]

    def mean(self, q):
        return _half_normal(self.alpha) * np.asarray(q, float) ** (self.alpha / 2.0)

    def second_moment(self, q):
        return _half_normal(2.0 * self.alpha) * np.asarray(q, float) ** self.alpha

    def dphi_second_moment(self, q):
        a = self.alpha
        return a * a * _half_normal(2.0 * a - 2.0) * np.asarray(q, float) ** (a - 1.0)


def alpha_relu(alpha: float) -> AlphaReLU:
    """The alpha-ReLU activation (1/2 < alpha < 1) with exact phi, phi', phi''."""
    a = float(alpha)
    tiny = np.finfo(float).tiny

    def phi(x):
        return np.maximum(np.asarray(x, float), 0.0) ** a

    def dphi(x):
        x = np.asarray(x, float)
        return np.where(x > 0, a * np.maximum(x, tiny) ** (a - 1.0), 0.0)

    def d2phi(x):
        x = np.asarray(x, float)
        return np.where(x > 0, a * (a - 1.0) * np.maximum(x, tiny) ** (a - 2.0), 0.0)
    return AlphaReLU("alpha_relu", phi, dphi, d2phi, params={"alpha": a}, kinks=(0.0,))


def alpha_exponents(alpha: float) -> tuple[float, float]:
    """(forward 1/(1-alpha), backward alpha^2/((1-alpha)(2 alpha-1))) (LITERATURE.md sec. 4)."""
    return 1.0 / (1.0 - alpha), alpha ** 2 / ((1.0 - alpha) * (2.0 * alpha - 1.0))


@functools.lru_cache(maxsize=None)
def alpha_profile(alpha: float, depth: int):
    """predict() of the alpha-ReLU network, sigma_v^2 = sigma_w^2 = 1, no biases, p^0 = 1."""
    return sp.predict(ys_net(depth, alpha_relu(alpha), 1.0, 1.0))


def fit_slope(x: np.ndarray, y: np.ndarray, lo: int, hi: int) -> float:
    """Least-squares slope of y against log l over lo <= l <= hi (x = l)."""
    s = (x >= lo) & (x <= hi)
    return float(np.polyfit(np.log(x[s]), y[s], 1)[0])


def alpha_rows(depth: int = 10000) -> list[dict]:
    """Fitted forward (log p^l) and backward (log chi^0/chi^l) slopes on log-log axes over the
    windows [depth/10, depth] and [depth/2, depth], against the theory exponents."""
    rows = []
    for a in ALPHAS:
        prof = alpha_profile(a, depth)
        l = np.arange(depth + 1, dtype=float)
        lp, lc = np.asarray(prof.log_q), log_chi_ratio(prof)
        fw, bw = alpha_exponents(a)
        rows.append({"alpha": a, "fw_theory": fw, "bw_theory": bw,
                     "fw_wide": fit_slope(l, lp, depth // 10, depth),
                     "fw_narrow": fit_slope(l, lp, depth // 2, depth),
                     "bw_wide": fit_slope(l, lc, depth // 10, depth),
                     "bw_narrow": fit_slope(l, lc, depth // 2, depth),
                     "recorded": RECORDED_ALPHA[a], "depth": depth})
    return rows


def accuracy_rows(q: float = 1.0) -> list[dict]:
    """E[phi^2], E[phi'^2] of alpha-ReLU at q: mpmath quadrature (30 digits), the closed form, and
    signalprop's quadrature of the activation given as a sympy string and as a callable."""
    import warnings
    import mpmath as mp
    mp.mp.dps = 30
    rows = []
    for a in ALPHAS:
        pdf = lambda z: mp.exp(-z * z / 2) / mp.sqrt(2 * mp.pi)          # noqa: E731
        sq, am = mp.sqrt(q), mp.mpf(a)
        # E[z^p; z > 0] with z = t^k, k = 1/(p+1): z^p dz = k dt, no endpoint singularity left
        # (a plain tanh-sinh quad of z^{2 alpha - 2} is off by 4e-4 at alpha = 0.55)
        def half(p):
            k = 1 / (p + 1)
            return mp.quad(lambda t: k * pdf(t ** k), [0, 1, mp.inf])
        m_phi = sq ** (2 * am) * half(2 * am)
        m_dphi = am * am * sq ** (2 * am - 2) * half(2 * am - 2)
        exact = alpha_relu(a)
        closed = (float(exact.second_moment(q)), float(exact.dphi_second_moment(q)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            s = sp.activation(f"Max(x, 0)**{a}")
            string = tuple(float(v) for v in s.moments(q))
            c = sp.activation(exact.phi, dphi=exact.dphi, d2phi=exact.d2phi)
            call = tuple(float(v) for v in c.moments(q))
        rows.append({"alpha": a, "mpmath": (float(m_phi), float(m_dphi)), "closed": closed,
                     "string": string, "callable": call})
    return rows


def quadrature_fit_rows(depth: int = 1000) -> list[dict]:
    """Backward slope over [depth/2, depth] with the closed-form moments and with signalprop's own
    quadrature of the callable alpha-ReLU (exact phi'): how far the quadrature error carries."""
    import warnings
    rows = []
    l = np.arange(depth + 1, dtype=float)
    for a in ALPHAS:
        exact = alpha_relu(a)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            c = sp.activation(exact.phi, dphi=exact.dphi, d2phi=exact.d2phi)
            quad = sp.predict(ys_net(depth, c, 1.0, 1.0))
        closed = alpha_profile(a, depth)
        rows.append({"alpha": a, "closed": fit_slope(l, log_chi_ratio(closed), depth // 2, depth),
                     "quadrature": fit_slope(l, log_chi_ratio(quad), depth // 2, depth),
                     "fw_closed": fit_slope(l, np.asarray(closed.log_q), depth // 2, depth),
                     "fw_quadrature": fit_slope(l, np.asarray(quad.log_q), depth // 2, depth)})
    return rows


# ---------------------------------------------------------------------------------------------
# Monte Carlo


@functools.lru_cache(maxsize=None)
def monte_carlo(act: str, sigma_v2: float, sigma_w2: float, depth: int, samples: int,
                width: int = N):
    """simulate() of :func:`ys_net` with the matrix-free engine, and compare() with predict()."""
    net = ys_net(depth, act, sigma_v2, sigma_w2, width=width)
    seed = SEED + int(1000 * sigma_v2) + int(10 * sigma_w2) + (0 if act == "tanh" else 7)
    sim = sp.simulate(net, samples, seed, engine="matrix-free")
    th = sp.predict(net)
    return th, sim, sp.compare(th, sim)


def mc_rows(quick: bool = False) -> list[dict]:
    rows = []
    for act, pairs in (("tanh", TANH_PAIRS), ("relu", RELU_PAIRS)):
        depth, samples = MC[act]
        if quick:
            depth, samples = depth // 10, 8
        for sv2, sw2 in pairs:
            th, sim, cmp = monte_carlo(act, sv2, sw2, depth, samples, 128 if quick else N)
            se = math.hypot(sim.log_g_se[0], sim.log_g_se[-1])
            rows.append({"act": act, "sigma_v2": sv2, "sigma_w2": sw2, "depth": depth,
                         "samples": samples, "width": 128 if quick else N,
                         "p_th": th.q[-1], "p_mc": sim.q[-1], "p_se": sim.q_se[-1],
                         "c_th": th.log_g[0], "c_mc": sim.log_g[0] - sim.log_g[-1], "c_se": se,
                         "verdict": cmp.verdict, "max_z": cmp.max_abs_z})
    return rows


# ---------------------------------------------------------------------------------------------
# tables


def markdown_tables(quick: bool = False) -> str:
    out = []
    rows = tanh_rows(quick)
    A, B = tanh_constants(1.0, 1.0)
    out += ["**tanh**, sigma_v^2 = sigma_w^2 = 1, no biases, p^0 = 1: log(chi^0/chi^l)/sqrt(l).",
            "", "| l | predict (identity block 0) | predict log_g[0] + block 1's factor "
            "| independent recursion | lead's scipy quad | LITERATURE.md §4 | agrees "
            "| A + (B log l + C)/sqrt(l) |", "|" + " --- |" * 8]
    for r in rows:
        b1 = "—" if r["block1"] is None else f"{r['block1']:.7f}"
        ok = agrees(r["ours"], r["recorded"]) and agrees(r["independent"], r["recorded"])
        if r["lead"] is not None:
            ok = ok and agrees(r["ours"], r["lead"])
        out.append(f"| {r['l']:g} | {r['ours']:.7f} | {b1} | {r['independent']:.7f} | "
                   f"{r['lead'] or '—'} | {r['recorded']} | {'yes' if ok else '**NO**'} | "
                   f"{r['asymptotic']:.4f} |")
    out += ["", f"A = 8/(3 sqrt(2 pi)) = {A:.6f}, B = 4(3 - sigma_v^2 sigma_w^2)/(9 pi) = {B:.6f}, "
            f"C = {rows[0]['C']:.4f} (fitted at l = {rows[0]['C_depth']:g})."]
    out += ["", "**relu**: per-block increments of log p^l and of log(chi^0/chi^l) against "
            "log(1 + sigma_v^2 sigma_w^2 / 2), over the first 200 blocks (p^0 = 1, no biases).", "",
            "| sigma_v^2 | sigma_w^2 | log(1 + sigma_v^2 sigma_w^2/2) | max abs error, log p | "
            "max abs error, log chi | log p^200 / 200 |", "|" + " --- |" * 6]
    for r in relu_rows():
        out.append(f"| {r['sigma_v2']:g} | {r['sigma_w2']:g} | {r['rate']:.15f} | "
                   f"{r['p_err']:.1e} | {r['chi_err']:.1e} | {r['pL'] / r['depth']:.15f} |")
    depth = 1000 if quick else 10000
    out += ["", f"**alpha-ReLU** (closed-form moments, sigma_v^2 = sigma_w^2 = 1, no biases, "
            f"p^0 = 1, {depth} blocks): least-squares slopes of log p^l and log(chi^0/chi^l) "
            f"against log l over l in [{depth // 10}, {depth}] and [{depth // 2}, {depth}].", "",
            "| alpha | forward fit, wide | forward fit, narrow | 1/(1-alpha) | notes' fit "
            "| backward fit, wide | backward fit, narrow | alpha^2/((1-alpha)(2alpha-1)) "
            "| notes' fit |", "|" + " --- |" * 9]
    for r in alpha_rows(depth):
        out.append(f"| {r['alpha']:g} | {r['fw_wide']:.4f} | {r['fw_narrow']:.4f} | "
                   f"{r['fw_theory']:.4f} | {r['recorded'][0]} | {r['bw_wide']:.4f} | "
                   f"{r['bw_narrow']:.4f} | {r['bw_theory']:.4f} | {r['recorded'][1]} |")
    out += ["", "**Accuracy of signalprop's custom activations for alpha-ReLU** at q = 1 "
            "(relative error against mpmath, 30 digits).", "",
            "| alpha | E[phi'^2] (mpmath) | closed form | `sp.activation(\"Max(x, 0)**alpha\")` "
            "| callable with exact phi' | E[phi^2]: closed form | sympy string | callable |",
            "|" + " --- |" * 8]

    def rel(v, ref):
        return "nan" if not math.isfinite(v) else f"{v / ref - 1:+.1e}"
    for r in accuracy_rows():
        ref_p, ref_d = r["mpmath"]
        out.append(f"| {r['alpha']:g} | {ref_d:.10f} | {rel(r['closed'][1], ref_d)} | "
                   f"{rel(r['string'][1], ref_d)} | {rel(r['callable'][1], ref_d)} | "
                   f"{rel(r['closed'][0], ref_p)} | {rel(r['string'][0], ref_p)} | "
                   f"{rel(r['callable'][0], ref_p)} |")
    out += ["", "The same exponents fitted over [500, 1000] (1000 blocks) with the closed-form "
            "moments and with signalprop's quadrature of the callable (exact phi'):", "",
            "| alpha | forward, closed form | forward, quadrature | backward, closed form "
            "| backward, quadrature | backward theory |", "|" + " --- |" * 6]
    for r in quadrature_fit_rows():
        out.append(f"| {r['alpha']:g} | {r['fw_closed']:.4f} | {r['fw_quadrature']:.4f} | "
                   f"{r['closed']:.4f} | {r['quadrature']:.4f} | "
                   f"{alpha_exponents(r['alpha'])[1]:.4f} |")
    mc = mc_rows(quick)
    m0 = mc[0]
    out += ["", f"**Monte Carlo** (matrix-free engine, width {m0['width']}, seeds fixed in the "
            "script) against predict at the last block; `compare` applies CONVENTIONS.md's rule "
            "(4 standard errors plus the O(1/N) allowance) to every block, q and log g.", "",
            "| phi | sigma_v^2 | sigma_w^2 | blocks | samples | p^L theory | p^L Monte Carlo "
            "| log(chi^0/chi^L) theory | Monte Carlo | compare |", "|" + " --- |" * 10]
    for r in mc:
        out.append(f"| {r['act']} | {r['sigma_v2']:g} | {r['sigma_w2']:g} | {r['depth']} | "
                   f"{r['samples']} | {r['p_th']:.5g} | {r['p_mc']:.5g} ± {r['p_se']:.2g} | "
                   f"{r['c_th']:.4f} | {r['c_mc']:.4f} ± {r['c_se']:.2g} | {r['verdict']} "
                   f"(max abs z {r['max_z']:.1f}) |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# figures


COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def _mc_points(ax, x, y, se, color, n=12):
    idx = np.unique(np.round(np.linspace(1, len(x) - 1, n)).astype(int))
    ax.errorbar(x[idx], y[idx], yerr=2 * se[idx], fmt="o", ms=3.0, mfc="white", mec=color,
                ecolor=color, elinewidth=0.9, capsize=1.5, zorder=5)


@styled
def figure_tanh(out: pathlib.Path, quick: bool) -> pathlib.Path:
    fig, ax = new_figure(1, 3, width=3.5, height=2.9)
    a, b, c = ax[0]
    deep = 1000 if quick else 10000
    depth, samples = MC["tanh"]
    if quick:
        depth, samples = depth // 10, 8
    top = 1000 if quick else max(TANH_DEPTHS)
    for (sv2, sw2), col in zip(TANH_PAIRS, COLORS):
        # the (1, 1) network is the one of the table, to 1e5 blocks: reuse it
        prof = theory("tanh", top if (sv2, sw2) == (1.0, 1.0) else deep, sv2, sw2)
        l = np.arange(deep + 1)
        lab = rf"$\sigma_v^2 = {sv2:g}, \sigma_w^2 = {sw2:g}$"
        a.loglog(l[1:], prof.q[1:deep + 1], color=col, label=lab)
        a.loglog(l[1:], sv2 * l[1:], color=col, ls=":", lw=0.9)
        A, _ = tanh_constants(sv2, sw2)
        lcr = log_chi_ratio(prof)[:deep + 1]
        keep = l <= 400
        b.plot(np.sqrt(l[keep]), lcr[keep], color=col, label=lab)
        b.plot(np.sqrt(l[keep]), A * np.sqrt(l[keep]), color=col, ls=":", lw=0.9)
        th, sim, _ = monte_carlo("tanh", sv2, sw2, depth, samples, 128 if quick else N)
        lm = np.arange(depth + 1)
        _mc_points(a, lm, np.asarray(sim.q), np.asarray(sim.q_se), col)
        lcr_mc = sim.log_g[0] - np.asarray(sim.log_g)
        se = np.hypot(sim.log_g_se[0], np.asarray(sim.log_g_se))
        _mc_points(b, np.sqrt(lm), lcr_mc, se, col)
        with np.errstate(divide="ignore", invalid="ignore"):
            c.semilogx(l[1:], lcr[1:] / (A * np.sqrt(l[1:])), color=col, lw=1.0, label=lab)
    # (c): the (1, 1) network to 1e5 blocks, the asymptotic expansion and the recorded numbers
    rows = tanh_rows(quick)
    A, B = tanh_constants(1.0, 1.0)
    prof = theory("tanh", top, 1.0, 1.0)
    l = np.arange(1, top + 1)
    c.semilogx(l, log_chi_ratio(prof)[1:] / (A * np.sqrt(l)), color=COLORS[0], lw=1.4)
    c.semilogx(l, 1 + (B * np.log(l) + rows[0]["C"]) / (A * np.sqrt(l)), color="black", ls="--",
               lw=0.9, label=r"$1 + (B\log l + C)/(A\sqrt{l})$")
    c.axhline(1.0, color="0.4", lw=0.8)
    c.plot([r["l"] for r in rows], [float(r["recorded"]) / A for r in rows], "s", mfc="none",
           mec="black", ms=6, label="LITERATURE.md §4 [NUM]")
    a.set(xlabel="block $l$", ylabel=r"$p^l = \|x^l\|^2/N$")
    a.set_title(r"(a) forward: $p^l \to \sigma_v^2 l$ (dotted)", loc="left")
    a.legend(loc="upper left", frameon=False)
    b.set(xlabel=r"$\sqrt{l}$", ylabel=r"$\log(\chi^0/\chi^l)$")
    b.set_title(r"(b) backward; dotted: $A\sigma_v\sigma_w\sqrt{l}$", loc="left")
    c.set(xlabel="block $l$", ylabel=r"$\log(\chi^0/\chi^l)\,/\,(A\,\sigma_v\sigma_w\sqrt{l})$",
          ylim=(0.7, 1.15))
    c.set_title(r"(c) approach to $A = 8/(3\sqrt{2\pi})$", loc="left")
    c.legend(loc="lower right", frameon=False)
    fig.text(0.01, -0.04, f"tanh, no biases, p^0 = 1. Lines: predict; circles: Monte Carlo "
             f"(matrix-free, N = {128 if quick else N}, {samples} networks, ±2 se).", fontsize=7)
    path = out / "fig1_tanh.png"
    fig.savefig(path, dpi=110)
    return path


@styled
def figure_relu(out: pathlib.Path, quick: bool) -> pathlib.Path:
    fig, ax = new_figure(1, 2, width=3.5, height=2.9)
    a, b = ax[0]
    depth, samples = MC["relu"]
    if quick:
        depth, samples = depth // 10, 8
    for (sv2, sw2), col in zip(RELU_PAIRS, COLORS):
        prof = theory("relu", depth, sv2, sw2)
        l = np.arange(depth + 1)
        rate = math.log1p(sv2 * sw2 / 2)
        lab = rf"$\sigma_v^2 = {sv2:g}, \sigma_w^2 = {sw2:g}$"
        a.semilogy(l, prof.q, color=col, label=lab)
        a.semilogy(l, np.exp(rate * l), color="black", ls=":", lw=0.8)
        lcr = log_chi_ratio(prof)
        b.plot(l, lcr, color=col, label=lab)
        b.plot(l, rate * l, color="black", ls=":", lw=0.8)
        th, sim, _ = monte_carlo("relu", sv2, sw2, depth, samples, 128 if quick else N)
        _mc_points(a, l, np.asarray(sim.q), np.asarray(sim.q_se), col)
        se = np.hypot(sim.log_g_se[0], np.asarray(sim.log_g_se))
        _mc_points(b, l, sim.log_g[0] - np.asarray(sim.log_g), se, col)
    a.set(xlabel="block $l$", ylabel=r"$p^l$")
    a.set_title(r"(a) $p^l = (1 + \sigma_v^2\sigma_w^2/2)^l$ (dotted)", loc="left")
    a.legend(loc="upper left", frameon=False)
    b.set(xlabel="block $l$", ylabel=r"$\log(\chi^0/\chi^l)$")
    b.set_title(r"(b) $\log(\chi^0/\chi^l) = l\log(1 + \sigma_v^2\sigma_w^2/2)$", loc="left")
    fig.text(0.01, -0.05, f"relu, no biases, p^0 = 1. Lines: predict; circles: Monte Carlo "
             f"(matrix-free, N = {128 if quick else N}, {samples} networks, ±2 se).", fontsize=7)
    path = out / "fig2_relu.png"
    fig.savefig(path, dpi=110)
    return path


@styled
def figure_alpha(out: pathlib.Path, quick: bool) -> pathlib.Path:
    fig, ax = new_figure(1, 3, width=3.5, height=2.9)
    a, b, c = ax[0]
    depth = 1000 if quick else 10000
    for alpha, col in zip(ALPHAS, COLORS):
        prof = alpha_profile(alpha, depth)
        l = np.arange(1, depth + 1, dtype=float)
        lp, lc = np.asarray(prof.log_q)[1:], log_chi_ratio(prof)[1:]
        fw, bw = alpha_exponents(alpha)
        a.loglog(l, np.exp(lp), color=col, label=rf"$\alpha = {alpha:g}$")
        t = l >= depth / 100          # the power laws through the last block, drawn over 2 decades
        a.loglog(l[t], np.exp(lp[-1]) * (l[t] / l[-1]) ** fw, color="black", ls=":", lw=0.9)
        b.loglog(l, np.exp(lc), color=col, label=rf"$\alpha = {alpha:g}$")
        b.loglog(l[t], np.exp(lc[-1]) * (l[t] / l[-1]) ** bw, color="black", ls=":", lw=0.9)
        # local exponents d log / d log l over a factor 2, relative to theory
        k = np.unique(np.round(np.geomspace(4, depth, 60)).astype(int))
        loc_f = (lp[k - 1] - lp[k // 2 - 1]) / np.log(k / (k // 2)) / fw
        loc_b = (lc[k - 1] - lc[k // 2 - 1]) / np.log(k / (k // 2)) / bw
        c.semilogx(k, loc_f, color=col, label=rf"$\alpha = {alpha:g}$")
        c.semilogx(k, loc_b, color=col, ls="--")
    c.axhline(1.0, color="0.4", lw=0.8)
    a.set(xlabel="block $l$", ylabel=r"$p^l$")
    a.set_title(r"(a) $p^l \sim l^{1/(1-\alpha)}$ (dotted)", loc="left")
    a.legend(loc="upper left", frameon=False)
    b.set(xlabel="block $l$", ylabel=r"$\chi^0/\chi^l$")
    b.set_title(r"(b) $\chi^0/\chi^l \sim l^{\alpha^2/((1-\alpha)(2\alpha-1))}$", loc="left")
    c.set(xlabel="block $l$", ylabel="local exponent / theory", ylim=(0.0, 1.1))
    c.set_title("(c) local slopes: solid forward, dashed backward", loc="left")
    c.legend(loc="lower right", frameon=False)
    fig.text(0.01, -0.04, r"alpha-ReLU, $\sigma_v^2 = \sigma_w^2 = 1$, no biases, p^0 = 1; "
             "predict with the closed-form moments (class AlphaReLU).", fontsize=7)
    path = out / "fig3_alpha_relu.png"
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> int:
    args = parser(__doc__, HERE, "shallow networks, few samples (smoke test)").parse_args(argv)
    if table_options(args, markdown_tables, HERE / "README.md"):
        return 0
    write_figures((figure_tanh, figure_relu, figure_alpha), args.out, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
