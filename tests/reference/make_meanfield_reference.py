"""Independent high-precision reference values for the mean-field tests (mpmath, 30 digits).

Nothing here imports signalprop: the Gaussian integrals are mpmath tanh-sinh quadratures split
at 0 and +-1/sqrt(q), the fixed points come from mpmath.findroot, the bivariate integrals from a
nested adaptive QUADPACK quadrature (scipy, double precision) in rotated
coordinates for the chaotic c*. Writes meanfield_reference.json next to this file.
Run: python tests/reference/make_meanfield_reference.py   (a few minutes)
"""

import json
from pathlib import Path

import mpmath as mp

mp.mp.dps = 30

PHI = {
    "tanh": (mp.tanh, lambda x: 1 / mp.cosh(x) ** 2),
    "sigmoid": (lambda x: 1 / (1 + mp.exp(-x)), lambda x: mp.exp(-x) / (1 + mp.exp(-x)) ** 2),
    "gelu": (lambda x: x * mp.ncdf(x), lambda x: mp.ncdf(x) + x * mp.npdf(x)),
    "silu": (lambda x: x / (1 + mp.exp(-x)),
             lambda x: 1 / (1 + mp.exp(-x)) + x * mp.exp(-x) / (1 + mp.exp(-x)) ** 2),
    "softplus": (lambda x: mp.log(1 + mp.exp(x)), lambda x: 1 / (1 + mp.exp(-x))),
    "elu": (lambda x: x if x > 0 else mp.expm1(x), lambda x: mp.mpf(1) if x > 0 else mp.exp(x)),
    "hard_tanh": (lambda x: max(mp.mpf(-1), min(mp.mpf(1), x)),
                  lambda x: mp.mpf(1) if abs(x) < 1 else mp.mpf(0)),
    "erf": (mp.erf, lambda x: 2 / mp.sqrt(mp.pi) * mp.exp(-x * x)),
}


def E1(f, q):
    """E[f(sqrt(q) z)], z ~ N(0,1)."""
    s = mp.sqrt(q)
    pts = sorted({-mp.inf, mp.inf, mp.mpf(0), -1 / s, 1 / s, mp.mpf(-1), mp.mpf(1)})
    return mp.quad(lambda z: f(s * z) * mp.npdf(z), pts)



def q_star(name, sw2, sb2):
    f = PHI[name][0]
    q = mp.mpf(1)
    for _ in range(300):                      # plain iteration from q0 = 1 (the stable point)
        qn = sw2 * E1(lambda x: f(x) ** 2, q) + sb2
        if abs(qn - q) < mp.mpf("1e-6") * q:
            q = qn
            break
        q = qn
    g = lambda t: sw2 * E1(lambda x: f(x) ** 2, t) + sb2 - t  # noqa: E731
    return mp.findroot(g, (q * (1 - mp.mpf("1e-4")), q * (1 + mp.mpf("1e-4"))), solver="illinois")


def main():
    out = {"fixed_points": [], "profiles": [], "critical": [], "c_star": []}
    for name, sw2, sb2 in [("tanh", 1.5, 0.05), ("tanh", 2.5, 0.05), ("tanh", 1.69, 0.09),
                           ("sigmoid", 4.0, 0.1), ("gelu", 1.5, 0.1), ("silu", 1.5, 0.2),
                           ("softplus", 1.0, 0.1), ("elu", 1.2, 0.1), ("hard_tanh", 1.3, 0.05),
                           ("erf", 1.5, 0.1)]:
        sw2m, sb2m = mp.mpf(sw2), mp.mpf(sb2)
        f, df = PHI[name]
        q = q_star(name, sw2m, sb2m)
        chi1 = sw2m * E1(lambda x: df(x) ** 2, q)
        out["fixed_points"].append({"activation": name, "sigma_w2": sw2, "sigma_b2": sb2,
                                    "q_star": str(q), "chi_1": str(chi1)})
        print(name, sw2, sb2, mp.nstr(q, 15), mp.nstr(chi1, 15), flush=True)
    # chaotic c* for tanh: the 2-D integral by nested adaptive QUADPACK (scipy) in double
    # precision (~1e-13), q* from mpmath above; root by Brent's method
    from scipy import integrate, optimize
    import math
    for sw2, sb2 in [(2.5, 0.05), (4.0, 0.3)]:
        q = float(q_star("tanh", mp.mpf(sw2), mp.mpf(sb2)))

        def E2d(f, c):
            a, b, s = math.sqrt((1 + c) / 2), math.sqrt((1 - c) / 2), math.sqrt(q)
            npdf = lambda t: math.exp(-t * t / 2) / math.sqrt(2 * math.pi)  # noqa: E731
            inner = lambda x: integrate.quad(  # noqa: E731
                lambda y: f(s * (a * x + b * y)) * f(s * (a * x - b * y)) * npdf(y),
                -12, 12, epsabs=1e-15, epsrel=1e-14, limit=200)[0]
            return integrate.quad(lambda x: inner(x) * npdf(x), -12, 12, epsabs=1e-15,
                                  epsrel=1e-14, limit=200)[0]
        cs = optimize.brentq(lambda c: (sw2 * E2d(math.tanh, c) + sb2) / q - c, 0.0, 0.99,
                             xtol=1e-15, rtol=1e-15)
        chic = sw2 * E2d(lambda x: 1 / math.cosh(x) ** 2, cs)
        out["c_star"].append({"activation": "tanh", "sigma_w2": sw2, "sigma_b2": sb2,
                              "c_star": repr(cs), "chi_c": repr(chic)})
        print("c*", sw2, sb2, cs, chic, flush=True)
    # critical line: sigma_b2(q) = q - V(q)/D(q), solved for q
    for name, sb2 in [("tanh", 0.05), ("tanh", 0.3), ("silu", 0.04), ("elu", 0.09), ("gelu", 0.1)]:
        f, df = PHI[name]

        def sbq(t):
            return t - E1(lambda x: f(x) ** 2, t) / E1(lambda x: df(x) ** 2, t)
        lo, hi = mp.mpf("1e-3"), mp.mpf(1)
        while sbq(hi) < sb2:
            hi *= 2
        qc = mp.findroot(lambda t: sbq(t) - sb2, (lo, hi), solver="illinois")
        out["critical"].append({"activation": name, "sigma_b2": sb2,
                                "sigma_w2": str(1 / E1(lambda x: df(x) ** 2, qc)), "q_star": str(qc)})
        print("crit", name, sb2, mp.nstr(1 / E1(lambda x: df(x) ** 2, qc), 15), flush=True)
    # per-layer profiles, one input, depth 8 (q and log g)
    for name, sw2, sb2, q0 in [("tanh", 1.5, 0.05, 1.0), ("sigmoid", 3.0, 0.2, 2.0),
                               ("gelu", 2.0, 0.0, 0.5)]:
        f, df = PHI[name]
        sw2m, sb2m = mp.mpf(sw2), mp.mpf(sb2)
        qs = [sw2m * q0 + sb2m]
        for _ in range(7):
            qs.append(sw2m * E1(lambda x: f(x) ** 2, qs[-1]) + sb2m)
        D = [E1(lambda x: df(x) ** 2, t) for t in qs]
        log_g = [mp.mpf(0)] * 8
        for l in range(6, -1, -1):
            log_g[l] = log_g[l + 1] + mp.log(sw2m * D[l])
        out["profiles"].append({"activation": name, "sigma_w2": sw2, "sigma_b2": sb2, "q0": q0,
                                "q": [str(v) for v in qs], "log_g": [str(v) for v in log_g]})
        print("profile", name, flush=True)
    Path(__file__).with_name("meanfield_reference.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
