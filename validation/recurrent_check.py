"""Heavier checks of the vanilla RNN (signalprop/layers/recurrent.py; Chen, Pennington &
Schoenholz 2018). Writes validation/recurrent_report.md.

    python -m validation.recurrent_check            # full run (a few minutes on 2 cores)
    python -m validation.recurrent_check --quick    # fewer samples

Sections (rules stated before running: the project's agreement rule, compare(), 4 SE plus
kappa = 2 times sum 1/N; a decay rate within 10% of the theory's log chi_1):
 1. catalogue: theory against simulation (tied weights, dense engine) for tanh, relu and linear
    cells, ordered and critical, gaussian and orthogonal W, with inputs, at N = 256 and 512;
 2. weight sharing in a linear cell (theory: log g^1 = 0 at sigma_w^2 = 1): tied against untied
    (a chain of independent Dense layers with the same samples) at N = 32 .. 512: the tied excess
    and its scaling with N;
 3. tanh: the per-step decay rate of log g at the fixed point, simulated at N = 512, against
    log chi_1 of rnn_timescales, for sigma_w^2 away from the critical line; and xi_grad against
    sigma_w^2 up to the critical line (theory);
 4. tanh near the critical line at two widths: the tied-weight excess of log g against the lag.
 S. the Jacobian spectrum through time: signalprop.spectrum on rnn(...) against a numpy Monte
    Carlo of dh_T/dh_0 with one W for all steps (``--spectrum``: this section alone).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

import signalprop as sp
from signalprop import Dense, Network, compare, predict, rnn, rnn_timescales, simulate

OUT = os.path.join(os.path.dirname(__file__), "recurrent_report.md")


def critical_sigma_w2(act: str, drive: float) -> float:
    """sigma_w^2 with chi_1(q*) = 1 at the given drive sigma_u^2 q_x + sigma_b^2 (bisection)."""
    lo, hi = 0.5, 8.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if rnn_timescales(act, mid, 1.0, drive, 0.0).chi_1 < 1:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def catalogue(lines, samples):
    lines += ["## 1. Catalogue: theory against simulation (tied weights)", "",
              "T steps, two sequences (c0 = 0.2, input correlation c_x), dense engine. "
              "Verdict of `compare` (4 SE + 2 sum 1/N).", "",
              "| case | N | T | verdict | max abs z | max excess | worst (field, step) |",
              "|---|---|---|---|---|---|---|"]
    sw_c = critical_sigma_w2("tanh", 0.5 * 1.0 + 0.01)
    cases = [
        ("tanh ordered sw2=0.8 sb2=0.01 q_x=0.5", dict(activation="tanh", sigma_w2=0.8, sigma_b2=0.01, q_x=0.5, c_x=0.4)),
        (f"tanh critical sw2={sw_c:.4f} sb2=0.01 q_x=0.5", dict(activation="tanh", sigma_w2=sw_c, sigma_b2=0.01, q_x=0.5, c_x=0.4)),
        ("tanh chaotic sw2=2.5 q_x=0.2", dict(activation="tanh", sigma_w2=2.5, sigma_b2=0.0, q_x=0.2, c_x=0.0)),
        (f"tanh critical orthogonal sw2={sw_c:.4f}", dict(activation="tanh", sigma_w2=sw_c, sigma_b2=0.01, q_x=0.5, c_x=0.4, weights="orthogonal")),
        ("relu ordered sw2=1.5 q_x=1", dict(activation="relu", sigma_w2=1.5, sigma_b2=0.0, q_x=1.0, c_x=0.5)),
        ("linear ordered sw2=0.9 q_x=1", dict(activation="linear", sigma_w2=0.9, q_x=1.0, c_x=0.5)),
        ("linear critical sw2=1 q_x=0", dict(activation="linear", sigma_w2=1.0, q_x=0.0)),
    ]
    rows = []
    for name, kw in cases:
        for N, T in ((256, 50), (512, 100)):
            net = rnn("rnn", T, N, **kw)
            th = predict(net, 1.0, 0.2)
            mc = simulate(net, samples, seed=N + T, c0=0.2)
            cmp = compare(th, mc)
            rows.append((name, N, cmp.verdict))
            f, layer, _, _ = cmp.worst()
            lines.append(f"| {name} | {N} | {T} | {cmp.verdict} | {cmp.max_abs_z:.2f} | "
                         f"{cmp.max_excess:.3f} | {f}, {layer} |")
            print(lines[-1], flush=True)
    lines += ["", "max excess = largest (|diff| - allowance) / se; the rule passes at <= 4. "
              "Linear cells have no saturation to damp the tied-weight excess of section 2, "
              "which grows with the number of steps a gradient (or an input) crosses the same "
              "W; where they disagree, the worst field says which.", ""]
    return rows


def sharing(lines, samples):
    lines += ["## 2. Weight sharing, linear cell (sigma_w^2 = 1, no input, T = 20)", "",
              "Theory: log g^t = 0 at every step. Tied: one W at every step (an RNN); untied: "
              "independent W per step (a deep linear network), same seeds. Default allowance "
              "for log g^1 is 2 T / N.", "",
              "| N | tied log g^1 | se | untied log g^1 | se | allowance 2T/N |",
              "|---|---|---|---|---|---|"]
    T = 20
    out = []
    for N in (32, 64, 128, 256, 512):
        S = samples * (4 if N <= 64 else 2 if N <= 256 else 1)
        tied = simulate(rnn("rnn", T, N, "linear", sigma_w2=1.0, q_x=0.0), S, seed=N)
        untied = simulate(Network(N, [Dense(N, "linear", 1.0)] * T), S, seed=N)
        lines.append(f"| {N} | {tied.log_g[0]:.4f} | {tied.log_g_se[0]:.4f} | "
                     f"{untied.log_g[0]:.4f} | {untied.log_g_se[0]:.4f} | {2 * T / N:.4f} |")
        out.append((N, tied.log_g[0], untied.log_g[0]))
        print(lines[-1], flush=True)
    lines.append("")
    return out


def decay_rates(lines, samples):
    lines += ["## 3. tanh: gradient decay rate at the fixed point (N = 512)", "",
              "Drive sigma_u^2 q_x + sigma_b^2 = 0.5 (q_x = 0.5, sigma_b^2 = 0). Theory: log g "
              "falls by log chi_1 per step back from the loss. Simulation: least-squares slope "
              "of log g over steps 10..T-5 (T = 60). Rule: within 10%.", "",
              "| sigma_w^2 | chi_1 | xi_grad | theory rate | simulated rate | rel. error |",
              "|---|---|---|---|---|---|"]
    T, N = 60, 512
    out = []
    for sw2 in (0.5, 0.8, 1.0, 1.2):
        ts = rnn_timescales("tanh", sw2, 1.0, 0.0, 0.5)
        net = rnn("rnn", T, N, "tanh", sigma_w2=sw2, q_x=0.5)
        mc = simulate(net, samples, seed=int(sw2 * 1000))
        t = np.arange(10, T - 5)
        slope = np.polyfit(t, mc.log_g[t], 1, w=1 / np.maximum(mc.log_g_se[t], 1e-3))[0]
        rate_mc = -slope                       # log g(t) - log g(t + 1)
        rate_th = math.log(ts.chi_1)
        rel = abs(rate_mc - rate_th) / abs(rate_th)
        out.append((sw2, rel))
        lines.append(f"| {sw2} | {ts.chi_1:.4f} | {ts.xi_grad:.3f} | {rate_th:.4f} | "
                     f"{rate_mc:.4f} | {rel:.3f} |")
        print(lines[-1], flush=True)
    sw_c = critical_sigma_w2("tanh", 0.5)
    lines += ["", f"Theory: xi_grad = -1/log chi_1 against sigma_w^2 up to the critical value "
              f"{sw_c:.6f} (drive 0.5):", "", "| sigma_w^2 | chi_1 | xi_grad |", "|---|---|---|"]
    for d in (0.5, 0.1, 0.01, 1e-3, 1e-5):
        ts = rnn_timescales("tanh", sw_c - d, 1.0, 0.0, 0.5)
        lines.append(f"| {sw_c - d:.6f} | {ts.chi_1:.8f} | {ts.xi_grad:.1f} |")
    lines.append("")
    return out


def two_widths(lines, samples):
    lines += ["## 4. tanh at the critical line, two widths: log g (theory 0 slope) against lag",
              "", "Drive 0.5, T = 100; the tied-weight excess of the simulation over the "
              "(untied) theory grows with the lag k = T - t and shrinks with N.", "",
              "| lag k | theory | N = 128 | se | N = 512 | se |", "|---|---|---|---|---|---|"]
    sw_c = critical_sigma_w2("tanh", 0.5)
    T = 100
    th = predict(rnn("rnn", T, 128, "tanh", sigma_w2=sw_c, q_x=0.5))
    mcs = [simulate(rnn("rnn", T, N, "tanh", sigma_w2=sw_c, q_x=0.5), samples, seed=N)
           for N in (128, 512)]
    for k in (0, 10, 25, 50, 75, 99):
        i = T - 1 - k
        lines.append(f"| {k} | {th.log_g[i]:.4f} | {mcs[0].log_g[i]:.4f} | "
                     f"{mcs[0].log_g_se[i]:.4f} | {mcs[1].log_g[i]:.4f} | "
                     f"{mcs[1].log_g_se[i]:.4f} |")
    lines.append("")


# ---------------------------------------------------------------------------------------------
# gated cells (signalprop/layers/gated.py; Chen et al. 2018 sec. 5, Gilboa et al. 2019)

GATED_MARK = "## G. Gated cells"


def _gated_kw(cell: str, sw2: float, mu: float) -> dict:
    """Gates of one setting: recurrent variance sw2 for every gate, input variance 1, the
    memory gate's bias mu (minimal: the gate; gru: update; lstm: forget, input at -mu/3)."""
    G = sp.Gate
    if cell == "minimal":
        return {"gate": G(sw2, 1.0, mu)}
    if cell == "gru":
        return {"update": G(sw2, 1.0, mu), "reset": G(sw2, 1.0, 0.0), "candidate": G(sw2, 1.0, 0.0)}
    return {"forget": G(sw2, 1.0, mu), "input": G(sw2, 1.0, -mu / 3), "output": G(sw2, 1.0, 0.0),
            "candidate": G(sw2, 1.0, 0.0)}


def stationary_chi(cell: str, sw2: float, mu: float, T: int = 80) -> float:
    """The theory's per-step gradient factor at the stationary state: exp(log g^{T-2} - log g^{T-1})
    (the gradient at lag 1..2 from the end of a T-step profile started at the fixed point's
    neighbourhood)."""
    th = predict(rnn(cell, T, 256, q_x=1.0, c_x=0.5, gates=_gated_kw(cell, sw2, mu)), 1.0, 0.2)
    return math.exp(th.log_g[-3] - th.log_g[-2])


def critical_gate_sw2(cell: str, mu: float) -> float:
    """sigma_w^2 (all gates) at which the stationary gradient factor is 1 (bisection in log)."""
    lo, hi = 0.05, 50.0
    if stationary_chi(cell, hi, mu) < 1:
        return math.nan
    for _ in range(30):
        mid = math.sqrt(lo * hi)
        if stationary_chi(cell, mid, mu) < 1:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def gated_catalogue(lines, samples):
    lines += [GATED_MARK, "",
              "Theory: the untied mean field (docs/theory/recurrent.md, \"Gated cells\"). "
              "Simulation at N = 256, two sequences (c0 = 0.2, c_x = 0.5, q_x = 1), dense engine, "
              "with the weights untied (every step its own: the theory's model) and tied (one set "
              "for all steps: a real RNN). Verdict of `compare` (4 SE + 2 sum 1/N). 'ordered': "
              "gate sigma_w^2 = 1, memory-gate bias 0 or 1; 'critical': the gate sigma_w^2 that "
              "puts the stationary gradient factor at 1 (bisection on the theory).", "",
              "### G1. Catalogue", "",
              "| cell | setting | T | chi (theory) | untied | tied | tied: worst field (z) |",
              "|---|---|---|---|---|---|---|"]
    rows = []
    S = max(20, samples // 4)
    for cell in ("minimal", "gru", "lstm"):
        sw_c = critical_gate_sw2(cell, 1.0)
        for label, sw2, mu, T in (("ordered, mu=1", 1.0, 1.0, 100),
                                  (f"critical, sw2={sw_c:.3f}, mu=1", sw_c, 1.0, 100)):
            if not math.isfinite(sw2):
                lines.append(f"| {cell} | critical: none found (chi < 1 up to sw2 = 50) | | | | | |")
                continue
            chi = stationary_chi(cell, sw2, mu)
            out = []
            for tied in (False, True):
                net = rnn(cell, T, 256, q_x=1.0, c_x=0.5, gates=_gated_kw(cell, sw2, mu), tied=tied)
                th = predict(net, 1.0, 0.2)
                mc = simulate(net, S, 7, q0=1.0, c0=0.2)
                out.append(compare(th, mc))
            cm = out[1]
            worst = max(((f, float(np.nanmax(np.abs(cm.z[f])))) for f in cm.fields),
                        key=lambda x: x[1])
            rows.append((cell, label, out[0].verdict, out[1].verdict))
            lines.append(f"| {cell} | {label} | {T} | {chi:.4f} | {out[0].verdict} | "
                         f"{out[1].verdict} | {worst[0]} ({worst[1]:.1f}) |")
    lines.append("")
    return rows


def lstm_memory(lines, samples):
    """The LSTM gradient time scale against the forget bias (cell path dominant: gate weights
    0.2, candidate 0.5): theory's per-step decay of log g against tied simulation at N = 256,
    T = 200, over steps 20..170 back from the end (stationary)."""
    lines += ["### G2. LSTM memory time scale against the forget-gate bias", "",
              "Gates sigma_w^2 = 0.2 (candidate 0.5), sigma_u^2 = 0.2 (candidate 1), input-gate "
              "bias -1, one sequence, q_x = 1, tied weights, N = 256, T = 200. xi = 1 / (per-step "
              "slope of log g over lags 20..170). Rule: within 10%. Theory only beyond: xi "
              "against mu_f, and -1/log E[f^2] (the bare cell path).", "",
              "| mu_f | xi theory | xi tied (+- se) | rel. diff | within 10% | xi untied (6 samples) |",
              "|---|---|---|---|---|---|"]
    G = sp.Gate
    res = []
    S = max(16, samples // 8)

    def kw(mu):
        return dict(q_x=1.0, gates={"forget": G(0.2, 0.2, mu), "input": G(0.2, 0.2, -1.0),
                                    "output": G(0.2, 0.2, 0.0), "candidate": G(0.5, 1.0, 0.0)})
    T, a, b = 200, 200 - 171, 200 - 21
    for mu in (0.0, 1.0, 3.0):
        net = rnn("lstm", T, 256, **kw(mu))
        th = predict(net, 1.0)
        slope = (th.log_g[b] - th.log_g[a]) / (b - a)
        mc = simulate(net, S, 9, q0=1.0, return_samples=True)
        per = (mc.samples["log_g"][:, b] - mc.samples["log_g"][:, a]) / (b - a)
        m, se = per.mean(), per.std(ddof=1) / math.sqrt(S)
        # log g grows towards the end (lag 0): the slope per step is 1 / xi
        xt, xs = 1 / slope, 1 / m
        rel = abs(xs - xt) / xt
        res.append((mu, rel))
        mu_ = simulate(rnn("lstm", T, 256, tied=False, **kw(mu)), 6, 9, q0=1.0)
        xu = (b - a) / (mu_.log_g[b] - mu_.log_g[a])
        lines.append(f"| {mu:g} | {xt:.3f} | {xs:.3f} (+- {xs * se / abs(m):.3f}) | {rel:.1%} | "
                     f"{'yes' if rel <= 0.1 else 'NO'} | {xu:.3f} |")
    lines += ["", "| mu_f | xi theory | -1/log E[f^2] |", "|---|---|---|"]
    for mu in (-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0):
        th = predict(rnn("lstm", 120, 256, **kw(mu)), 1.0)
        slope = th.log_g[-21] - th.log_g[-22]
        qa = 0.2 * math.exp(th.log_q[-21]) + 0.2
        f2 = float(sp.gaussian.expect(lambda v: (1 / (1 + np.exp(-(mu + v)))) ** 2, qa, tau=math.pi))
        lines.append(f"| {mu:g} | {1 / slope:.3f} | {-1 / math.log(f2):.3f} |")
    lines.append("")
    return res


def lstm_tied_gap(lines, samples):
    """q and the gradient at lag 25 of an LSTM (forget bias 3) tied against untied at three
    widths: whether the tied-weight gap shrinks with N."""
    lines += ["### G3. LSTM: tied against untied weights at three widths", "",
              "Forget bias 3, gates as in G2, T = 30, one sequence. q^T and log g^{T-25} "
              "(lag 25): simulation mean +- se (untied not run at N = 1024: 8 fresh N x N "
              "matrices per step).", "",
              "| N | q^T untied | q^T tied | log g untied | log g tied | theory q, log g |",
              "|---|---|---|---|---|---|"]
    G = sp.Gate
    gates = {"forget": G(0.2, 0.2, 3.0), "input": G(0.2, 0.2, -1.0), "output": G(0.2, 0.2, 0.0),
             "candidate": G(0.5, 1.0, 0.0)}
    T = 30
    th = predict(rnn("lstm", T, 64, q_x=1.0, gates=gates), 1.0)
    for N, S in ((64, 60), (256, 24), (1024, 8)):
        cols = []
        for tied in (False, True):
            if N > 256 and not tied:       # untied draws 8 fresh N x N matrices per step
                cols.append((math.nan,) * 4)
                continue
            mc = simulate(rnn("lstm", T, N, q_x=1.0, gates=gates, tied=tied), S, 3, q0=1.0)
            cols.append((mc.q[-1], mc.q_se[-1], mc.log_g[T - 26], mc.log_g_se[T - 26]))
        (qu, qus, gu, gus), (qt, qts, gt, gts) = cols
        lines.append(f"| {N} | {qu:.4f} +- {qus:.4f} | {qt:.4f} +- {qts:.4f} | {gu:.3f} +- "
                     f"{gus:.3f} | {gt:.3f} +- {gts:.3f} | {th.q[-1]:.4f}, {th.log_g[T - 26]:.3f} |")
    lines.append("")


def gated(lines, samples):
    rows = gated_catalogue(lines, samples)
    mem = lstm_memory(lines, samples)
    lstm_tied_gap(lines, samples)
    lines += ["### G. Summary", "",
              "- untied (the theory's model): " + ", ".join(f"{c} {l}: {u}" for c, l, u, _ in rows),
              "- tied: " + ", ".join(f"{c} {l}: {t}" for c, l, _, t in rows),
              "- LSTM memory time scale within 10% (tied, N = 256, T = 200): "
              + ", ".join(f"mu_f={m:g}: {'yes' if r <= 0.1 else 'NO'} ({r:.1%})" for m, r in mem),
              ""]


# ---------------------------------------------------------------------------------------------
# S. the state-to-state Jacobian spectrum through time (signalprop.spectrum on rnn(...);
# free probability with W tied across steps: signalprop/layers/recurrent.py, docstring)

SPECTRUM_MARK = "## S. Jacobian spectrum through time"
#: quantile levels compared (the float64 product resolves eigenvalues above ~1e-30 of the top;
#: lower levels of the wide tanh laws fall below it)
SPECTRUM_LEVELS = np.array([0.25, 0.5, 0.75, 0.9, 0.95])
#: a level is compared where its theory quantile is at least this fraction of the upper edge
SPECTRUM_FLOOR = 1e-24


def _derivative(act: str):
    return {"tanh": (np.tanh, lambda e: 1.0 - np.tanh(e) ** 2),
            "linear": (lambda e: e, np.ones_like)}[act]


def tied_jacobian_eigs(rng, N, T, act, sw2, su2, sb2, qx, q0, weights, tied=True):
    """Eigenvalues of J J^T, ``J = dh_T/dh_0 = D_T W ... D_1 W`` of a vanilla RNN, by numpy
    alone (independent of the package): one W (gaussian or Haar orthogonal, E[W_ij^2] = sw2/N)
    for all steps (``tied``) or a fresh one per step; U, b drawn once; x_t fresh isotropic
    with ||x_t||^2/N = qx; ||h_0||^2/N = q0."""
    phi, dphi = _derivative(act)

    def draw():
        if weights == "gaussian":
            return rng.standard_normal((N, N)) * math.sqrt(sw2 / N)
        Q, R = np.linalg.qr(rng.standard_normal((N, N)))
        return math.sqrt(sw2) * Q * np.sign(np.diag(R))
    W = draw()
    U = rng.standard_normal((N, N)) * math.sqrt(su2 / N)
    b = rng.standard_normal(N) * math.sqrt(sb2)
    h = rng.standard_normal(N)
    h *= math.sqrt(q0 * N) / np.linalg.norm(h)
    J = np.eye(N)
    for _ in range(T):
        W = W if tied else draw()
        x = rng.standard_normal(N)
        x *= math.sqrt(qx * N) / np.linalg.norm(x)
        e = W @ h + U @ x + b
        h = phi(e)
        J = dphi(e)[:, None] * (W @ J)
    return np.linalg.svd(J, compute_uv=False) ** 2


def _nv(ev):
    return float((ev ** 2).mean() / ev.mean() ** 2 - 1.0)


def spectrum_row(name, N, T, S, act, sw2, su2, sb2, qx, weights, seed, tied=True):
    """One comparison; h_0 at the fixed point (every step has the law of q*). Rules (stated
    before running): log mean within 4 SE + 2 T/N; normalised variance within 4 SE (jackknife)
    + 4 T/N relative; F_mc(Q_th(p)) within 4 SE + T/N of p at each level."""
    from signalprop.spectrum import spectrum
    q_star = rnn_timescales(act, sw2, su2, sb2, qx, 1.0).q_star
    q0 = (q_star - su2 * qx - sb2) / sw2
    th = spectrum(rnn("rnn", T, N, act, sigma_w2=sw2, sigma_u2=su2, sigma_b2=sb2, q_x=qx,
                      weights=weights), q0)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    ev = np.array([tied_jacobian_eigs(rng, N, T, act, sw2, su2, sb2, qx, q0, weights, tied)
                   for _ in range(S)])
    lm = np.log(ev.mean(1))
    se_m = float(lm.std(ddof=1) / math.sqrt(S))
    d_m = math.log(ev.mean()) - math.log(th.mean)
    v, vt = _nv(ev), th.normalised_variance
    jack = np.array([_nv(np.delete(ev, i, axis=0)) for i in range(S)])
    se_v = math.sqrt((S - 1) / S * float(np.sum((jack - jack.mean()) ** 2)))
    try:
        qt = th.quantile(SPECTRUM_LEVELS)
        keep = qt >= SPECTRUM_FLOOR * th.upper_edge        # resolved by the float64 product
        ps, qt = SPECTRUM_LEVELS[keep], qt[keep]
        F = (ev[:, :, None] <= qt[None, None, :]).mean(1)
        dF = F.mean(0) - ps
        seF = F.std(0, ddof=1) / math.sqrt(S)
        k = int(np.argmax(np.abs(dF) - 4 * seF))
        ok_F = bool(np.all(np.abs(dF) <= 4 * seF + T / N))
        f_txt = (f"{dF[k]:+.4f} +- {seF[k]:.4f} (p={ps[k]:g}; {len(ps)} levels from "
                 f"{ps[0]:g})")
    except RuntimeError as exc:        # the solver's continuation (signalprop.freeprob)
        ok_F, f_txt = None, f"solver: {str(exc)[:40]}"
    ok_m = abs(d_m) <= 4 * se_m + 2 * T / N
    ok_v = abs(v - vt) <= 4 * se_v + 4 * T / N * vt
    ok = ok_m and ok_v and ok_F is not False
    return (name, N, T, S, "tied" if tied else "untied", math.log(th.mean), d_m, se_m, vt, v,
            se_v, f_txt, "agree" if ok else "DISAGREE", time.time() - t0)


def spectrum_section(lines, samples):
    """Section S: spectrum(rnn(...)) against the tied-W Monte Carlo of dh_T/dh_0."""
    S = max(4, samples // 20)
    crit = critical_sigma_w2("tanh", 0.5 + 0.01)
    iso = critical_sigma_w2("tanh", 1e-3)
    cases = [  # name, act, sw2, su2, sb2, qx, weights
        ("tanh ordered sw2=0.8 sb2=0.01 q_x=0.5, gaussian", "tanh", 0.8, 1.0, 0.01, 0.5, "gaussian"),
        (f"tanh critical sw2={crit:.4f} sb2=0.01 q_x=0.5, gaussian", "tanh", crit, 1.0, 0.01, 0.5, "gaussian"),
        (f"tanh critical sw2={crit:.4f} sb2=0.01 q_x=0.5, orthogonal", "tanh", crit, 1.0, 0.01, 0.5, "orthogonal"),
        ("tanh chaotic sw2=2.5 q_x=0.2, gaussian", "tanh", 2.5, 1.0, 0.0, 0.2, "gaussian"),
        ("tanh chaotic sw2=2.5 q_x=0.2, orthogonal", "tanh", 2.5, 1.0, 0.0, 0.2, "orthogonal"),
        (f"isometry: tanh critical sw2={iso:.4f} sb2=1e-3, orthogonal", "tanh", iso, 0.0, 1e-3, 0.0, "orthogonal"),
        (f"isometry: tanh critical sw2={iso:.4f} sb2=1e-3, gaussian", "tanh", iso, 0.0, 1e-3, 0.0, "gaussian"),
        ("linear sw2=1, gaussian (Fuss-Catalan)", "linear", 1.0, 0.0, 0.0, 0.0, "gaussian"),
    ]
    lines += [SPECTRUM_MARK, "",
              "`spectrum(rnn(...), q0)` (free probability: the untied product's law, which the "
              "tied one has at infinite width when W is asymptotically free of the D_t; "
              "docs/theory/recurrent.md) against a direct numpy computation of "
              "J = dh_T/dh_0 = D_T W ... D_1 W with ONE W for all steps, h_0 at the fixed point "
              f"q*, {S} samples per row ({2 * S} at N = 256). Rules, stated before "
              "running: log mean eigenvalue within 4 SE + 2 T/N; normalised variance "
              "v = m_2/m_1^2 - 1 within 4 SE (jackknife) + 4 (T/N) v; at p = "
              + ", ".join(f"{p:g}" for p in SPECTRUM_LEVELS) + " the fraction of eigenvalues "
              "below the theory's p-quantile within 4 SE + T/N of p (the largest deviation "
              "beyond 4 SE shown), at the levels whose theory quantile is above 1e-24 of the "
              "upper edge: the float64 product resolves eigenvalues above ~1e-30 of the top "
              "only (lower levels of the wide tanh laws at T = 40 are not compared).", "",
              "| case | N | T | S | W | log m_1 theory | diff (mc - th) | SE | v theory | v mc | "
              "SE | F(Q_th(p)) - p | verdict | s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    runs = [(c, N, T) for c in cases[:5] for N, T in ((512, 10),)]
    runs += [(cases[1], 512, 40), (cases[2], 512, 40), (cases[5], 512, 50), (cases[6], 512, 50),
             (cases[7], 512, 10)]
    runs += [(cases[1], N, 10) for N in (256, 1024)]
    rows = []
    for k, ((name, act, sw2, su2, sb2, qx, w), N, T) in enumerate(runs):
        r = spectrum_row(name, N, T, max(S, S * 512 // N), act, sw2, su2, sb2, qx, w, 900 + k)
        rows.append(r)
        lines.append("| {} | {} | {} | {} | {} | {:.4f} | {:+.4f} | {:.4f} | {:.4g} | {:.4g} | "
                     "{:.3g} | {} | {} | {:.0f} |".format(*r))
        print(lines[-1], flush=True)
    # the untied product with the same samples' law: the tie's own effect at finite N
    name, act, sw2, su2, sb2, qx, w = cases[1]
    r = untied = spectrum_row(name, 512, 10, S, act, sw2, su2, sb2, qx, w, 950, tied=False)
    rows.append(r)
    lines.append("| {} | {} | {} | {} | {} | {:.4f} | {:+.4f} | {:.4f} | {:.4g} | {:.4g} | "
                 "{:.3g} | {} | {} | {:.0f} |".format(*r))
    bad = [r for r in rows if r[12] != "agree"]
    same = [r for r in rows if r[0] == name and r[2] == 10 and r[4] == "tied"]
    wts = np.array([1.0 / r[7] ** 2 for r in same])
    pooled = float(np.sum(wts * np.array([r[6] for r in same])) / wts.sum())
    lines += ["", f"Mean eigenvalue, {name}, T = 10, tied: log(mc/theory) = "
              + ", ".join(f"{r[6]:+.3f} +- {r[7]:.3f} (N={r[1]})" for r in same)
              + f"; inverse-variance pooled {pooled:+.3f} +- {wts.sum() ** -0.5:.3f} (untied at "
              f"N = 512: {untied[6]:+.3f} +- {untied[7]:.3f}). The mean eigenvalue is the gradient "
              "factor prod chi_1: a positive excess is the tied-weight excess of log g of "
              "section 4, not a property of the spectrum's shape (F and v agree)."]
    lines += ["", f"{len(rows) - len(bad)} of {len(rows)} rows agree"
              + ("" if not bad else "; disagree: " + "; ".join(f"{r[0]} (N={r[1]}, T={r[2]})"
                                                              for r in bad)) + ".", ""]
    return rows


def write_spectrum_section(samples):
    """Regenerate section S alone in the report (inserted before the gated sections)."""
    t0 = time.time()
    lines = []
    spectrum_section(lines, samples)
    lines.append(f"Section S: run time {time.time() - t0:.0f} s.\n")
    text = open(OUT).read() if os.path.exists(OUT) else ""
    head, sep, gated_part = text.partition(GATED_MARK)
    head = head.split(SPECTRUM_MARK)[0].rstrip("\n")
    with open(OUT, "w") as fh:
        fh.write(head + "\n\n" + "\n".join(lines) + "\n" + sep + gated_part)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gated", action="store_true",
                    help="only the gated cells' sections (G), replacing them in the report")
    ap.add_argument("--spectrum", action="store_true",
                    help="only the Jacobian spectrum section (S), replacing it in the report")
    args = ap.parse_args(argv)
    samples = 40 if args.quick else 150
    t0 = time.time()
    if args.spectrum:
        write_spectrum_section(samples)
        return
    if args.gated:
        lines = []
        gated(lines, samples)
        lines.append(f"Gated sections: run time {time.time() - t0:.0f} s (samples = {samples}).\n")
        head = open(OUT).read().split(GATED_MARK)[0] if os.path.exists(OUT) else ""
        with open(OUT, "w") as fh:
            fh.write(head.rstrip("\n") + "\n\n" + "\n".join(lines))
        print("\n".join(lines[-8:]))
        return
    lines = ["# Vanilla RNN: theory against simulation", "",
             "Written by `python -m validation.recurrent_check`"
             + (" --quick" if args.quick else "") + f" (samples = {samples}). Theory: "
             "signalprop.predict (infinite width, gradient independence); simulation: "
             "signalprop.simulate with W, U, b tied across steps (dense engine).", ""]
    rows = catalogue(lines, samples)
    shared = sharing(lines, samples)
    rates = decay_rates(lines, samples)
    two_widths(lines, samples)
    bad = [r for r in rows if r[2] != "agree"]
    lines += ["## Summary", "",
              f"- catalogue: {len(rows) - len(bad)} of {len(rows)} cases agree"
              + ("" if not bad else "; disagree: " + ", ".join(f"{n} (N={N})" for n, N, _ in bad)),
              "- weight sharing, linear cell: tied log g^1 = "
              + ", ".join(f"{v:.3f} (N={N})" for N, v, _ in shared)
              + "; untied: " + ", ".join(f"{u:.3f}" for _, _, u in shared),
              "- tanh decay rate within 10%: "
              + ", ".join(f"sw2={s}: {'yes' if r <= 0.1 else 'NO'} ({r:.1%})" for s, r in rates),
              f"- run time {time.time() - t0:.0f} s", ""]
    spectrum_section(lines, samples)
    gated(lines, samples)
    with open(OUT, "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines[-6:]))


if __name__ == "__main__":
    main()
