"""Gradient explosion in batch-normalised networks at initialisation: Yang, Pennington, Rao,
Sohl-Dickstein & Schoenholz (2019), "A mean field theory of batch normalization" (ICLR; arXiv
1902.08129), with signalprop.

    python papers/yang2019/reproduce.py            # figures into papers/yang2019/ (~3 min)
    python papers/yang2019/reproduce.py --tables   # the README's comparison tables
    python papers/yang2019/reproduce.py --update-readme   # ... written into README.md
    python papers/yang2019/reproduce.py --quick --out /tmp/x   # a smoke run (tests)

The paper's network (abstract [READ]; the model as in LITERATURE.md sec. 6): a batch of B inputs,

    h^l = W^l x^{l-1}  (no bias, W_ij ~ N(0, sigma_w^2/N)),
    x^l = phi(BN(h^l)),  BN(h_i) = sqrt(B) G h_i / ||G h_i||,  G = I - 1 1^T/B  (per unit i, over
                                                                                  the batch),

is ``sp.mlp(depth, width, phi, sigma_w2=..., norm="batch", batch_size=B)``. signalprop's ``log_g``
of such a network is the log of the SUM over the batch of E||d loss/d h^l_b||^2 / N for the loss
<v, h^L_a> on one batch member (log_g[-1] = 0); the per-layer growth factor towards the input,
lambda = lim g^{l-1}/g^l, is ``signalprop.batchnorm.bn_explosion_rate(phi, B)`` (README
"Derivations"). Independent checks written here, with no signalprop code:

* the linear closed form lambda = (B - 2)/(B - 3) and the large-B limit E[phi'(z)^2]/Var[phi(z)]
  (scipy quad, our own phi);
* a Monte Carlo of the one-unit backward operator on the sphere (:func:`sphere_lambda`): u uniform
  on the unit sphere of 1^perp, the BN Jacobian (sqrt(B)/r)(G - u u^T), exact E[B/r^2];
* finite networks: ``sp.simulate`` (dense engine), per-layer rates fitted over the layers away
  from the top and bottom, with bootstrap standard errors.
"""

from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")      # batched small GEMMs: multi-threaded BLAS is far slower

import functools  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
from scipy import integrate, special  # noqa: E402

import signalprop as sp  # noqa: E402
from signalprop.batchnorm import bn_explosion_rate, bn_gradient_operator, bn_kernel  # noqa: E402
from signalprop.plot import new_figure  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))          # papers/_common.py
from _common import (README_BEGIN, README_END, agrees, parser, readme_block,  # noqa: E402,F401
                     styled, table_options, write_figures)

SIGMA_W2 = 1.0            # irrelevant with BN (README): log_g does not depend on it
SEED = 1902_08129
ACTS = ("linear", "relu", "tanh", "gelu")         # the lambda(B) curves
MC_ACTS = ("linear", "relu", "tanh")              # finite networks
FIG_B = (4, 8, 32, 128)
# Monte Carlo sizes per batch size: (width N, depth L, samples S); sum_l B/N_l = B L / N
MC_SIZES = {4: (512, 24, 60), 8: (512, 24, 40), 32: (1024, 16, 30), 128: (2048, 8, 16)}
MC_QUICK = {4: (64, 6, 6), 8: (64, 6, 6), 32: (128, 5, 4), 128: (256, 4, 3)}
CURVE_B = (4, 5, 6, 7, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256)
LARGE_B = (256, 512, 1024, 2048, 4096)
SPHERE_B = (4, 8, 32, 128)
SPHERE_N = 1_000_000       # sphere samples per (phi, B)
LEAKY_SLOPES = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)

# LITERATURE.md sec. 6: Monte Carlo of the per-layer rate (N = 400, 60 layers; noisy; no errors
# given) and the notes' large-B values
LIT_LINEAR = {4: "1.981", 6: "1.332", 8: "1.193", 16: "1.068", 32: "1.033", 64: "1.026"}
LIT_RELU = {4: "3.03", 8: "1.81", 16: "1.59", 32: "1.52", 64: "1.49", 128: "1.45"}
LIT_TANH = {4: "1.96", 8: "1.35", 16: "1.25", 32: "1.21", 64: "1.20", 128: "1.19"}
LIT_LIMIT = {"relu": "1.466942", "tanh": "1.1778"}
LIT_N, LIT_DEPTH = 400, 60


# ---------------------------------------------------------------------------------------------
# independent closed forms and quadrature (no signalprop code)


def linear_rate(B: int) -> float:
    """(B - 2)/(B - 3): lambda of a linear BN network (README "Derivations")."""
    return (B - 2) / (B - 3)


def _phi(act: str):
    """phi and phi' as plain numpy functions (our own, not signalprop's)."""
    if act == "linear":
        return (lambda x: x), (lambda x: np.ones_like(x))
    if act == "relu":
        return (lambda x: np.maximum(x, 0.0)), (lambda x: (x > 0).astype(float))
    if act == "tanh":
        return np.tanh, (lambda x: 1.0 / np.cosh(x) ** 2)
    if act == "gelu":      # x Phi(x), Phi the standard normal cdf
        return ((lambda x: x * special.ndtr(x)),
                (lambda x: special.ndtr(x) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)))
    if act.startswith("leaky_relu:"):
        s = float(act.split(":")[1])
        return (lambda x: np.where(x > 0, x, s * x)), (lambda x: np.where(x > 0, 1.0, s))
    raise ValueError(act)


def large_b_limit(act: str) -> float:
    """E[phi'(z)^2] / Var[phi(z)], z ~ N(0, 1), by adaptive scipy quad split at 0 (README)."""
    phi, dphi = _phi(act)
    pdf = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)     # noqa: E731

    def E(f):
        return sum(integrate.quad(lambda z: float(f(np.float64(z))) * pdf(z), a, b, epsabs=1e-14,
                                  epsrel=1e-13, limit=200)[0] for a, b in ((-40, 0), (0, 40)))
    return E(lambda z: dphi(z) ** 2) / (E(lambda z: phi(z) ** 2) - E(phi) ** 2)


def leaky_limit(s: float) -> float:
    """Closed form of E[phi'^2]/Var[phi] for leaky_relu with slope s: E[phi'^2] = (1 + s^2)/2,
    E[phi] = (1 - s)/sqrt(2 pi), E[phi^2] = (1 + s^2)/2 (README)."""
    return 1.0 / (1.0 - (1.0 - s) ** 2 / (math.pi * (1.0 + s * s)))


def sphere_lambda(act: str, B: int, n: int = SPHERE_N, chunks: int = 20, seed: int = SEED):
    """lambda by Monte Carlo of one unit's backward operator (no signalprop code).

    u uniform on the unit sphere of 1^perp (a centred, normalised Gaussian B-vector), y = sqrt(B) u,
    d = phi'(y), Q = G - u u^T; the BN Jacobian is (sqrt(B)/r) Q with r^2 ~ q_perp chi^2_{B-1}
    independent of u, so E[B/r^2] = B/((B-3) q_perp), q_perp = sigma_w^2 (K_aa - K_ab). The map
    M(P) = E[Q D P D Q] keeps span{G, w w^T} (w = e_0 - 1/B); per sample, with v = Q w = w - u u_0
    and Q a projector (tr Q A Q = tr A Q):
      P = G:      A = D^2 - d d^T/B,  tr = sum d_i^2 Q_ii - d^T Q d / B,
                  w^T.w = sum d_i^2 v_i^2 - (d.v)^2/B
      P = w w^T:  A = x x^T, x = d w, tr = x^T Q x,  w^T.w = (v.x)^2
    then M(P) = g G + h w w^T from tr G = B-1, tr ww^T = w^T G w = (B-1)/B,
    w^T ww^T w = ((B-1)/B)^2.
    lambda = B/((B-3)(K_aa - K_ab)) * (largest eigenvalue of M on that span). Returns (lambda, se)
    with se from the spread of the ``chunks`` batch estimates."""
    phi, dphi = _phi(act)
    rng = np.random.default_rng([seed, B, sum(map(ord, act))])
    om = (B - 1) / B
    S = np.array([[B - 1.0, om], [om, om * om]])
    w = np.full(B, -1.0 / B)
    w[0] += 1.0
    sums = []
    m = n // chunks
    for _ in range(chunks):
        z = rng.standard_normal((m, B))
        z -= z.mean(axis=1, keepdims=True)
        u = z / np.linalg.norm(z, axis=1, keepdims=True)
        y = math.sqrt(B) * u
        p, d = phi(y), dphi(y)
        sp_, sp2 = p.sum(axis=1), (p * p).sum(axis=1)
        kaa = sp2 / B
        kab = (sp_ * sp_ - sp2) / (B * (B - 1))

        def quad_form(x):                # x^T Q x, rows
            return (x * x).sum(1) - x.sum(1) ** 2 / B - (u * x).sum(1) ** 2
        d2 = d * d
        qii = 1.0 - 1.0 / B - u * u
        v = w[None, :] - u * u[:, :1]
        x = d * w[None, :]
        t = np.stack([(d2 * qii).sum(1) - quad_form(d) / B,
                      (d2 * v * v).sum(1) - (d * v).sum(1) ** 2 / B,
                      quad_form(x), (v * x).sum(1) ** 2])
        sums.append(np.concatenate([[kaa.mean(), kab.mean()], t.mean(axis=1)]))
    sums = np.array(sums)

    def lam(row):
        kaa, kab, t1g, t2g, t1w, t2w = row
        g = np.linalg.solve(S, np.array([[t1g, t1w], [t2g, t2w]]))   # columns: M(G), M(ww^T)
        return B / ((B - 3) * (kaa - kab)) * float(np.max(np.linalg.eigvals(g).real))
    each = np.array([lam(r) for r in sums])
    return lam(sums.mean(axis=0)), float(each.std(ddof=1) / math.sqrt(chunks))


# ---------------------------------------------------------------------------------------------
# theory (signalprop)


@functools.lru_cache(maxsize=None)
def rate(act: str, B: int) -> float:
    """lambda = bn_explosion_rate (signalprop), cached."""
    return bn_explosion_rate(act, B)


def net(act: str, B: int, width: int, depth: int, sigma_w2: float = SIGMA_W2) -> sp.Network:
    return sp.mlp(depth, width, act, sigma_w2=sigma_w2, norm="batch", batch_size=B)


# ---------------------------------------------------------------------------------------------
# Monte Carlo of finite networks


def mc_sizes(B: int, quick: bool) -> tuple[int, int, int]:
    return (MC_QUICK if quick else MC_SIZES)[B]


@functools.lru_cache(maxsize=None)
def monte_carlo(act: str, B: int, quick: bool = False):
    """(theory, simulation with per-sample values, comparison) of one BN network."""
    N, L, S = mc_sizes(B, quick)
    nw = net(act, B, N, L)
    seed = SEED + 1000 * B + MC_ACTS.index(act)
    sim = sp.simulate(nw, S, seed, return_samples=True)
    th = sp.predict(nw)
    return th, sim, sp.compare(th, sim)


def window(L: int) -> tuple[int, int]:
    """Layers lo..hi (1-based, inclusive) of the rate fit: away from layer 1 (its input kernel is
    not the BSB1 fixed point) and from the top two (the start e_a e_a^T of the backward pass)."""
    return 2, max(L - 2, 3)


def fit_log_rate(log_g: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Least-squares slope of log g^l against (L - l) over l in [lo, hi] (the last axis): the log of
    the per-layer growth factor towards the input."""
    y = np.asarray(log_g)[..., lo - 1:hi]
    x = np.arange(lo, hi + 1, dtype=float)
    x = x - x.mean()
    return -(y - y.mean(axis=-1, keepdims=True)) @ x / (x @ x)


def _log_mean_exp(a: np.ndarray, axis: int = 0) -> np.ndarray:
    m = a.max(axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.mean(np.exp(a - m), axis=axis))


@functools.lru_cache(maxsize=None)
def mc_rate(act: str, B: int, quick: bool = False, boot: int = 1000) -> dict:
    """Fitted per-layer rate of the Monte Carlo (log of the sample mean of g_hat per layer) and of
    the theory over the same window; bootstrap over the sample networks for its standard error."""
    th, sim, cmp = monte_carlo(act, B, quick)
    N, L, S = mc_sizes(B, quick)
    lo, hi = window(L)
    per = np.asarray(sim.samples["log_g"])                       # (S, L): log g_hat per network
    rng = np.random.default_rng([SEED, B, MC_ACTS.index(act)])
    idx = rng.integers(0, S, size=(boot, S))
    boot_lr = fit_log_rate(_log_mean_exp(per[idx], axis=1), lo, hi)
    lr = float(fit_log_rate(_log_mean_exp(per), lo, hi))
    lt = float(fit_log_rate(np.asarray(th.log_g), lo, hi))
    se = float(boot_lr.std(ddof=1))
    allow = 2.0 * B / N             # compare's kappa * B/N per layer, carried to the slope
    return {"act": act, "B": B, "N": N, "L": L, "S": S, "beta": B * L / N, "lo": lo, "hi": hi,
            "lambda": rate(act, B), "th": math.exp(lt), "mc": math.exp(lr), "log_th": lt,
            "log_mc": lr, "se": se, "z": (lr - lt) / se if se > 0 else math.inf,
            "agree": abs(lr - lt) <= 4 * se + allow, "allow": allow,
            "typical": math.exp(float(fit_log_rate(per.mean(axis=0), lo, hi))),
            "verdict": cmp.verdict, "max_z": cmp.max_abs_z, "max_excess": cmp.max_excess}


# ---------------------------------------------------------------------------------------------
# tables


def linear_rows() -> list[dict]:
    return [{"B": B, "ours": rate("linear", B), "closed": linear_rate(B)}
            for B in sorted(set(CURVE_B) | set(LARGE_B))]


def limit_rows() -> list[dict]:
    rows = []
    for act in ACTS:
        lim = 1.0 if act == "linear" else large_b_limit(act)
        lam = {B: rate(act, B) for B in LARGE_B}
        rich = 2 * lam[LARGE_B[-1]] - lam[LARGE_B[-2]]      # lambda = lim + a/B + O(1/B^2)
        rows.append({"act": act, "limit": lim, "lam": lam, "richardson": rich,
                     "a": LARGE_B[-1] * (lam[LARGE_B[-1]] - lim), "recorded": LIT_LIMIT.get(act)})
    return rows


def sphere_rows(quick: bool = False) -> list[dict]:
    n = 40_000 if quick else SPHERE_N
    rows = []
    for act in ACTS:
        for B in SPHERE_B:
            lam, se = sphere_lambda(act, B, n)
            op = bn_gradient_operator(act, B)
            rows.append({"act": act, "B": B, "ours": op.lambda_, "lambda_G": op.lambda_G,
                         "lambda_V": op.lambda_V, "sphere": lam, "se": se,
                         "z": (lam - op.lambda_) / se})
    return rows


def leaky_rows() -> list[dict]:
    rows = []
    for s in LEAKY_SLOPES:
        act = sp.activation("leaky_relu", slope=s)
        rows.append({"slope": s, "B8": bn_explosion_rate(act, 8), "B32": bn_explosion_rate(act, 32),
                     "B1024": bn_explosion_rate(act, 1024), "limit": leaky_limit(s),
                     "quad": large_b_limit(f"leaky_relu:{s}")})
    return rows


def mc_rows(quick: bool = False) -> list[dict]:
    return [mc_rate(act, B, quick) for act in MC_ACTS for B in FIG_B]


def markdown_tables(quick: bool = False) -> str:
    out = ["**Linear network**: signalprop's lambda (`bn_explosion_rate`, quadrature on the sphere "
           "marginals) against the closed form (B - 2)/(B - 3).", "",
           "| B | bn_explosion_rate | (B-2)/(B-3) | difference |", "|" + " --- |" * 4]
    rows = linear_rows()
    for r in rows:
        out.append(f"| {r['B']} | {r['ours']:.15f} | {r['closed']:.15f} | "
                   f"{r['ours'] - r['closed']:+.1e} |")
    worst = max(abs(r["ours"] - r["closed"]) for r in rows)
    out += ["", f"Largest difference {worst:.1e} over {len(rows)} batch sizes."]

    out += ["", "**Large-B limit** E[phi'(z)^2]/Var[phi(z)] (scipy quad of our own phi; relu "
            "closed form pi/(pi - 1)) against signalprop's lambda(B) at large B and the Richardson "
            f"extrapolation 2 lambda({LARGE_B[-1]}) - lambda({LARGE_B[-2]}) (lambda = limit + a/B "
            "+ O(1/B^2)).", "",
            "| phi | " + " | ".join(f"lambda({B})" for B in LARGE_B)
            + " | Richardson | limit (quad) | Richardson - limit "
            f"| a = B (lambda - limit), B = {LARGE_B[-1]} | LITERATURE.md §6 | agrees |",
            "|" + " --- |" * (len(LARGE_B) + 7)]
    for r in limit_rows():
        rec = r["recorded"]
        ok = "—" if rec is None else ("yes" if agrees(r["limit"], rec) else "**NO**")
        out.append(f"| {r['act']} | " + " | ".join(f"{r['lam'][B]:.7f}" for B in LARGE_B) +
                   f" | {r['richardson']:.8f} | {r['limit']:.8f} | "
                   f"{r['richardson'] - r['limit']:+.1e} | {r['a']:.4f} | {rec or '—'} | {ok} |")
    out += ["", f"pi/(pi - 1) = {math.pi / (math.pi - 1):.10f}."]

    out += ["", "**lambda(B)** (signalprop) against LITERATURE.md §6's Monte Carlo (N = "
            f"{LIT_N}, {LIT_DEPTH} layers, no error bars; sum of B/N_l over the network = "
            f"{LIT_DEPTH} B/{LIT_N}).", "",
            "| B | sum B/N_l | linear: MC | theory | MC/theory - 1 | relu: MC | theory "
            "| MC/theory - 1 | tanh: MC | theory | MC/theory - 1 | gelu: theory |",
            "|" + " --- |" * 12]
    for B in sorted(set(LIT_LINEAR) | set(LIT_RELU)):
        cells = [f"{B}", f"{LIT_DEPTH * B / LIT_N:.2g}"]
        for act, rec in (("linear", LIT_LINEAR), ("relu", LIT_RELU), ("tanh", LIT_TANH)):
            lam = rate(act, B)
            if B in rec:
                cells += [rec[B], f"{lam:.4f}", f"{float(rec[B]) / lam - 1:+.3f}"]
            else:
                cells += ["—", f"{lam:.4f}", "—"]
        cells.append(f"{rate('gelu', B):.4f}")
        out.append("| " + " | ".join(cells) + " |")

    n = 40_000 if quick else SPHERE_N
    out += ["", f"**Independent check of the operator**: lambda by Monte Carlo of one unit's "
            f"backward map on the sphere ({n:.0e} draws of u, `sphere_lambda`, no signalprop "
            "code) against signalprop's quadrature; lambda_G (symmetric sector) and lambda_V "
            "(one-member sector) are the two eigenvalues, lambda the larger (g = trace grows by "
            "exactly lambda_G per layer, README \"Derivations\"; lambda_G > lambda_V in every "
            "case here).",
            "",
            "| phi | B | lambda_G | lambda_V | lambda (signalprop) | sphere Monte Carlo | z |",
            "|" + " --- |" * 7]
    for r in sphere_rows(quick):
        out.append(f"| {r['act']} | {r['B']} | {r['lambda_G']:.6f} | {r['lambda_V']:.6f} | "
                   f"{r['ours']:.6f} | {r['sphere']:.6f} ± {r['se']:.1e} | {r['z']:+.1f} |")

    out += ["", "**Towards the linear regime** (the abstract's remedy): leaky_relu with slope s, "
            "lambda at B = 8, 32, 1024 and the limit 1/(1 - (1-s)^2/(pi (1+s^2))) (closed form; "
            "scipy quad agrees).", "",
            "| slope s | lambda(8) | lambda(32) | lambda(1024) | limit (closed form) "
            "| limit (quad) |",
            "|" + " --- |" * 6]
    for r in leaky_rows():
        out.append(f"| {r['slope']:g} | {r['B8']:.6f} | {r['B32']:.6f} | {r['B1024']:.6f} | "
                   f"{r['limit']:.8f} | {r['quad']:.8f} |")

    mc = mc_rows(quick)
    out += ["", "**Finite networks** (`sp.simulate`, dense engine, sigma_w^2 = 1, B inputs of "
            "pairwise correlation 0; seeds fixed in the script). Rates: exp of the least-squares "
            "slope of log g^l against depth from the top over layers lo..hi, for the Monte Carlo "
            "(log of the sample mean of g_hat per layer; ± one bootstrap standard error over the "
            "sample networks) and for predict over the same window; lambda is the asymptotic "
            "factor. 'typical': the same fit to the mean of log g_hat (not a mean-field "
            "quantity). 'rate agrees': |log MC - log theory| <= 4 se + 2 B/N. 'compare': "
            "sp.compare over every layer and field (4 se + 2 sum B/N_k).", "",
            "| phi | B | N | L | S | sum B/N_l | layers | lambda | theory (window) "
            "| Monte Carlo | z | rate agrees | typical | compare |", "|" + " --- |" * 14]
    for r in mc:
        out.append(f"| {r['act']} | {r['B']} | {r['N']} | {r['L']} | {r['S']} | {r['beta']:.2f} | "
                   f"{r['lo']}–{r['hi']} | {r['lambda']:.4f} | {r['th']:.4f} | "
                   f"{r['mc']:.4f} ± {r['mc'] * r['se']:.4f} | {r['z']:+.1f} | "
                   f"{'yes' if r['agree'] else '**NO**'} | {r['typical']:.4f} | {r['verdict']} "
                   f"(max abs z {r['max_z']:.1f}) |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# figures


COLORS = {4: "#d62728", 8: "#ff7f0e", 32: "#2ca02c", 128: "#1f77b4"}
ACT_COLORS = {"linear": "black", "relu": "#d62728", "tanh": "#1f77b4", "gelu": "#2ca02c"}


@styled
def figure_depth(out: pathlib.Path, quick: bool) -> pathlib.Path:
    fig, ax = new_figure(1, 3, width=3.5, height=3.0)
    for a, act in zip(ax[0][:2], ("linear", "relu")):
        for B in FIG_B:
            th, sim, _ = monte_carlo(act, B, quick)
            N, L, S = mc_sizes(B, quick)
            k = L - np.arange(1, L + 1)                   # layers from the top
            col = COLORS[B]
            a.plot(k, th.log_g, color=col, lw=1.2,
                   label=rf"$B = {B}$: $N = {N}$, $S = {S}$, $\Sigma B/N = {B * L / N:.2g}$")
            a.errorbar(k, sim.log_g, yerr=2 * np.asarray(sim.log_g_se), fmt="o", ms=3, mfc="white",
                       mec=col, ecolor=col, elinewidth=0.9, capsize=1.5, zorder=5)
        a.set(xlabel="layers from the top, $L - l$", ylabel=r"$\log g^l$", xlim=(-0.5, 24.5))
        a.set_title(f"({'a' if act == 'linear' else 'b'}) {act}: theory (lines), Monte Carlo "
                    "(±2 se)", loc="left")
        a.legend(loc="upper left", frameon=False)
    # (c) the spread of the sample networks at the bottom layer: heavy tails for small B
    c = ax[0][2]
    for i, B in enumerate(FIG_B):
        th, sim, _ = monte_carlo("relu", B, quick)
        per = np.asarray(sim.samples["log_g"])[:, 0] - th.log_g[0]
        jitter = np.random.default_rng(B).uniform(-0.18, 0.18, per.size)
        c.plot(i + jitter, per, "o", ms=2.5, mfc="none", mec=COLORS[B], alpha=0.8)
        lm = float(_log_mean_exp(per))
        c.plot([i - 0.3, i + 0.3], [lm, lm], color=COLORS[B], lw=2.0)
        c.plot([i - 0.3, i + 0.3], [per.mean()] * 2, color=COLORS[B], lw=1.0, ls="--")
    c.axhline(0.0, color="0.3", lw=0.8)
    c.set_xticks(range(len(FIG_B)), [f"B = {B}\nL = {mc_sizes(B, quick)[1]}" for B in FIG_B])
    c.set(ylabel=r"$\log \hat g^1 - \log g^1$ (theory)")
    c.set_title("(c) relu, bottom layer: one point per network;\nsolid: log of the mean, dashed: "
                "mean of the log", loc="left")
    fig.text(0.01, -0.09, "Batch-normalised networks h = W x, x = phi(BN(h)), sigma_w^2 = 1, "
             "loss <v, h^L_a> on one batch member, g = sum over the batch;\ntheory: predict (slope "
             "exactly log lambda from layer 2 to layer L - 1). Monte Carlo: sp.simulate, "
             "dense engine, S networks.",
             fontsize=7)
    path = out / "fig1_log_g_depth.png"
    fig.savefig(path, dpi=110)
    return path


@styled
def figure_lambda(out: pathlib.Path, quick: bool) -> pathlib.Path:
    fig, ax = new_figure(1, 3, width=3.5, height=3.0)
    a, b, c = ax[0]
    Bs = np.array(CURVE_B)
    for act in ACTS:
        col = ACT_COLORS[act]
        lam = np.array([rate(act, int(B)) for B in Bs])
        lim = 1.0 if act == "linear" else large_b_limit(act)
        a.semilogx(Bs, lam, "-", color=col, marker=".", ms=4, label=act)
        a.axhline(lim, color=col, ls="--", lw=0.8)
        b.loglog(Bs, lam - lim, "-", color=col, marker=".", ms=4, label=act)
    Bf = np.geomspace(4, 256, 100)
    a.semilogx(Bf, (Bf - 2) / (Bf - 3), color="0.5", ls=":", lw=2.0, label="(B-2)/(B-3)")
    for act, rec, mk in (("linear", LIT_LINEAR, "s"), ("relu", LIT_RELU, "s"),
                         ("tanh", LIT_TANH, "s")):
        a.plot(list(rec), [float(v) for v in rec.values()], mk, mfc="none", mec=ACT_COLORS[act],
               ms=6)
    a.plot([], [], "s", mfc="none", mec="0.3", ms=6, label="LITERATURE.md §6 MC (N = 400)")
    a.set(xlabel="batch size $B$", ylabel=r"$\lambda$ (per-layer growth of $g$)", ylim=(0.95, 3.2))
    a.set_title(r"(a) $\lambda(B)$; dashed: $E[\phi'(z)^2]/\mathrm{Var}[\phi(z)]$", loc="left")
    a.legend(loc="upper right", frameon=False)
    b.loglog(Bf, 1.6 / Bf, color="0.4", ls=":", lw=0.9, label=r"$\propto 1/B$")
    b.set(xlabel="batch size $B$", ylabel=r"$\lambda(B) - \lambda(\infty)$")
    b.set_title(r"(b) approach to the large-$B$ limit", loc="left")
    b.legend(loc="upper right", frameon=False)
    # (c) own Monte Carlo: window rate against the theory over the same window
    for j, act in enumerate(MC_ACTS):
        rows = [mc_rate(act, B, quick) for B in FIG_B]
        x = np.array([r["B"] for r in rows]) * (1 + 0.06 * (j - 1))
        y = np.array([r["log_mc"] - r["log_th"] for r in rows])
        e = np.array([2 * r["se"] for r in rows])
        c.errorbar(x, y, yerr=e, fmt="o", ms=4, mfc="white", mec=ACT_COLORS[act],
                   ecolor=ACT_COLORS[act], capsize=2, label=act)
    allow = np.array([2.0 * B / mc_sizes(B, quick)[0] for B in FIG_B])
    c.fill_between(FIG_B, -allow, allow, color="0.85", zorder=0, label=r"$\pm 2B/N$")
    c.axhline(0, color="0.3", lw=0.8)
    c.set_xscale("log")
    c.set(xlabel="batch size $B$", ylabel="log rate: Monte Carlo - theory")
    c.set_title("(c) fitted rates of finite networks (±2 se)", loc="left")
    c.legend(loc="lower left", frameon=False)
    fig.text(0.01, -0.09, "Lines: bn_explosion_rate at the BSB1 fixed point. (c): slope of "
             "log g over the layers away from top and bottom (README table),\nMonte Carlo minus "
             "predict over the same window; band: the finite-width allowance per layer.",
             fontsize=7)
    path = out / "fig2_lambda.png"
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> int:
    args = parser(__doc__, HERE,
                  "narrow, shallow networks, few samples (smoke test)").parse_args(argv)
    if table_options(args, markdown_tables, HERE / "README.md"):
        return 0
    write_figures((figure_depth, figure_lambda), args.out, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
