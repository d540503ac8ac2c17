"""Independent references for the edge of chaos on the attracting branch (issue 10, item 3), and
for two quadrature fixes behind it. Nothing here imports signalprop. Writes
critical_reference.json next to this file. Run: python tests/reference/make_critical_reference.py
(about a minute).

* ``critical``: for each (activation, sigma_b^2), the fixed point q_c with chi_1 = 1 from the
  parameterisation by q* (Schoenholz et al. 2017, Sec. 3): sigma_b^2 = q - E[phi^2] / E[phi'^2],
  sigma_w^2 = 1 / E[phi'^2], solved with mpmath.findroot at 30 digits (Gaussian integrals by
  tanh-sinh quadrature split at 0 and at the activation's scale), with
  ``slope`` = sigma_w^2 d/dq E[phi^2] = sigma_w^2 E[x phi(x) phi'(x)] / q (Stein's lemma) and
  ``reached``: slope < 1 and T(q) - q, T(q) = sigma_w^2 E[phi^2] + sigma_b^2, keeps one sign on
  the open interval between q0 = 1 and q_c (sampled at 200 log-spaced points): T is increasing,
  so the iteration from q0 moves monotonically to the first fixed point in its direction, q_c.
  The edge of chaos reached from q0 = 1 is then sigma_w^2; where ``reached`` is false, there is
  none on that branch (silu and gelu at small sigma_b^2: the point repels).
* ``selu_zero``: the edge at sigma_b^2 = 0 of selu, q* -> 0: chi_1 -> sigma_w^2 (phi'(0+)^2 +
  phi'(0-)^2) / 2 = sigma_w^2 lambda^2 (1 + alpha^2) / 2, so sigma_w^2 = 2 / (lambda^2 (1 +
  alpha^2)); and the length map's slope there, checked < 1 just above q = 0 (sigma_w^2 E[phi^2]
  < q for q in [1e-8, 1], so q -> 0 from q0 = 1).
* ``tanh_cross``: E[tanh(u1) tanh(u2)] at q = 1.5175, c = 0.96615 (the chaotic c* of tanh at
  sigma_w^2 = 2.588, sigma_b^2 = 0.3) by Mehler's series at 60 digits (a_k by composite
  Gauss-Legendre on [-24, 24], 96 panels x 40 nodes, 260 terms: the tail is below 1e-20).
* ``elu_rho``: the post-activation correlation of elu at small q (and one moderate q) by nested
  tanh-sinh quadrature at 25 digits, for signalprop.tables' small-q panel.
"""

import json
from pathlib import Path

import mpmath as mp

mp.mp.dps = 30

LAM = mp.mpf("1.0507009873554804934193349852946")
ALPHA = mp.mpf("1.6732632423543772848170429916717")


def selu(x):
    return LAM * x if x > 0 else LAM * ALPHA * mp.expm1(x)


def dselu(x):
    return LAM if x > 0 else LAM * ALPHA * mp.exp(x)


PHI = {
    "gelu": (lambda x: x * mp.ncdf(x), lambda x: mp.ncdf(x) + x * mp.npdf(x)),
    "silu": (lambda x: x / (1 + mp.exp(-x)),
             lambda x: 1 / (1 + mp.exp(-x)) + x * mp.exp(-x) / (1 + mp.exp(-x)) ** 2),
    "selu": (selu, dselu),
    "tanh": (mp.tanh, lambda x: 1 / mp.cosh(x) ** 2),
    "hard_tanh": (lambda x: max(mp.mpf(-1), min(mp.mpf(1), x)),
                  lambda x: mp.mpf(1) if abs(x) < 1 else mp.mpf(0)),
}


def E1(f, q):
    """E[f(sqrt(q) z)], z ~ N(0, 1)."""
    s = mp.sqrt(q)
    pts = sorted({-mp.inf, mp.inf, mp.mpf(0), -1 / s, 1 / s, mp.mpf(-1), mp.mpf(1)})
    return mp.quad(lambda z: f(s * z) * mp.npdf(z), pts)


def critical(name, sb2):
    f, df = PHI[name]
    V = lambda t: E1(lambda x: f(x) ** 2, t)          # noqa: E731
    D = lambda t: E1(lambda x: df(x) ** 2, t)         # noqa: E731
    sbq = lambda t: t - V(t) / D(t)                   # noqa: E731
    lo, hi = mp.mpf("1e-3"), mp.mpf(1)
    while sbq(hi) < sb2:
        hi *= 2
    qc = mp.findroot(lambda t: sbq(t) - sb2, (lo, hi), solver="illinois")
    sw2 = 1 / D(qc)
    slope = sw2 * E1(lambda x: x * f(x) * df(x), qc) / qc
    # T(q) - q keeps its sign strictly between q0 = 1 and q_c?
    a, b = (mp.mpf(1), qc) if qc > 1 else (qc, mp.mpf(1))
    signs = set()
    for i in range(1, 200):
        t = a * (b / a) ** (mp.mpf(i) / 200)
        signs.add(mp.sign(sw2 * V(t) + sb2 - t))
    reached = bool(slope < 1 and len(signs) == 1)
    return {"activation": name, "sigma_b2": sb2, "sigma_w2": str(sw2), "q_star": str(qc),
            "slope": str(slope), "reached_from_1": reached}


def selu_zero():
    sw2 = 2 / (LAM ** 2 * (1 + ALPHA ** 2))
    f = PHI["selu"][0]
    below = all(sw2 * E1(lambda x: f(x) ** 2, mp.mpf(10) ** k) < mp.mpf(10) ** k
                for k in range(-8, 1))
    return {"sigma_w2": str(sw2), "length_map_below_identity": below}


def tanh_cross():
    q = mp.mpf("1.51749342337857835723729702556")
    c = mp.mpf("0.966148949541868201834916422532")
    with mp.workdps(60):
        s = mp.sqrt(q)
        nodes = []
        for i in range(1, 41):                          # Gauss-Legendre, 40 nodes
            x = mp.cos(mp.pi * (i - mp.mpf(1) / 4) / (40 + mp.mpf(1) / 2))
            for _ in range(100):
                p0, p1 = mp.mpf(1), x
                for k in range(2, 41):
                    p0, p1 = p1, ((2 * k - 1) * x * p1 - (k - 1) * p0) / k
                dp = 40 * (x * p1 - p0) / (x * x - 1)
                dx = p1 / dp
                x -= dx
                if abs(dx) < mp.mpf(10) ** -55:
                    break
            nodes.append((x, 2 / ((1 - x * x) * dp * dp)))
        zs, ws = [], []
        h = mp.mpf(48) / 96
        for p in range(96):
            lo = -24 + p * h
            for x, w in nodes:
                z = lo + (x + 1) * h / 2
                zs.append(z)
                ws.append(w * h / 2 * mp.npdf(z))
        fv = [mp.tanh(s * z) for z in zs]
        He_prev, He = [mp.mpf(0)] * len(zs), [mp.mpf(1)] * len(zs)
        fact, total = mp.mpf(1), mp.mpf(0)
        for k in range(260):
            if k > 0:
                fact *= k
            a = mp.fsum(w * fz * hz for w, fz, hz in zip(ws, fv, He)) / mp.sqrt(fact)
            total += a * a * c ** k
            He_prev, He = He, [z * h1 - k * h0 for z, h1, h0 in zip(zs, He, He_prev)]
        return {"q": str(q), "c": str(c), "E": mp.nstr(total, 30)}


def elu_rho(q, c):
    """rho(q, c) = E[elu(u1) elu(u2)] / E[elu(u)^2], u ~ N(0, q [[1, c], [c, 1]]): nested
    tanh-sinh quadrature, the inner one split where c z1 + sqrt(1 - c^2) z2 = 0."""
    phi = (lambda x: x if x > 0 else mp.expm1(x))
    q, c = mp.mpf(q), mp.mpf(c)
    s, r = mp.sqrt(1 - c * c), mp.sqrt(q)

    def inner(z1):
        return mp.quad(lambda z2: phi(r * (c * z1 + s * z2)) * mp.npdf(z2),
                       [-mp.inf, -c * z1 / s, mp.inf])
    E = mp.quad(lambda z1: phi(r * z1) * inner(z1) * mp.npdf(z1), [-mp.inf, 0, mp.inf])
    V = mp.quad(lambda z: phi(r * z) ** 2 * mp.npdf(z), [-mp.inf, 0, mp.inf])
    return E / V


def main():
    out = {"critical": [], "selu_zero": selu_zero(), "tanh_cross": tanh_cross(),
           "elu_rho": [{"q": q, "c": c, "rho": mp.nstr(elu_rho(q, c), 25)}
                       for q, c in [(6.76e-8, 0.5), (1e-8, 0.5), (1e-10, -0.7), (0.3, 0.9)]]}
    for name, sb2 in [("selu", 0.05), ("gelu", 0.3), ("gelu", 0.05), ("silu", 1.0),
                      ("tanh", 1e-4), ("hard_tanh", 0.05)]:
        out["critical"].append(critical(name, sb2))
        print(out["critical"][-1], flush=True)
    print(out["selu_zero"], out["tanh_cross"])
    Path(__file__).with_name("critical_reference.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
