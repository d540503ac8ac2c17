"""Independent high-precision reference for the deep linear Jacobian spectra of
``tests/test_spectrum_deep.py``: quantiles, distribution function and density of the
Fuss-Catalan law of order ``s``.

Run from the repository root::

    python tests/reference/make_fuss_catalan_reference.py          # writes the .json (~75 s)
    python tests/reference/make_fuss_catalan_reference.py --check  # self-checks only (~12 s)

This script deliberately does **not** import signalprop. The law is that of ``J J^T`` for a
depth-``s`` linear network with gaussian weights, equal widths and ``sigma_w^2 = 1`` in the
large-width limit: the free product of ``s`` Marchenko-Pastur(1) laws, whose moments are the
Fuss-Catalan numbers ``binom((s+1)n, n)/(s n + 1)``. Haagerup & Moller (2012, "The law of large
numbers for the free multiplicative convolution") and Neuschel (2014, "Plancherel-Rotach
formulae for average characteristic polynomials of products of Ginibre random matrices and the
Fuss-Catalan distribution") parametrise it by ``phi in (0, pi/(s+1))`` (quoted from memory, so
not relied upon: the --check below verifies the formula through its mass and moments):

    x(phi)   = sin((s+1) phi)^(s+1) / (sin(phi) sin(s phi)^s)       (decreasing from the
               upper edge (s+1)^(s+1)/s^s at phi -> 0 to 0 at phi -> pi/(s+1))
    rho(x(phi)) = sin(phi)^2 sin(s phi)^(s-1) / (pi sin((s+1) phi)^s)

(NB: no extra factor 1/x; the --check below shows that the version with 1/(pi x) has neither
mass 1 nor the Fuss-Catalan moments). Hence ``rho x = sin(phi) sin((s+1) phi)/(pi sin(s phi))``
and, with ``d log x/d phi = (s+1)^2 cot((s+1) phi) - cot(phi) - s^2 cot(s phi)``,

    F(x(phi)) = int_phi^{pi/(s+1)} (rho x)(t) (-d log x/dt) dt,

a smooth bounded integrand (tanh-sinh quadrature, mp.dps = 60). Quantiles: the root in phi of
``F(x(phi)) = p`` (mpmath findroot, bracketed), reported as ``log x`` (base e; at s = 100 the
lower quantiles are below 1e-200). The density is reported as ``log rho``.

--check verifies, at 60 digits: total mass 1 and moments 1..4 equal to the Fuss-Catalan numbers
(to 1e-40) for s = 2, 3, 10, 50, 100; the distribution function against a direct integral of the
density in x over [x(phi), upper edge] for s = 3; and that F(quantile) = p.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import mpmath as mp

HERE = Path(__file__).resolve().parent
OUT = HERE / "fuss_catalan_reference.json"
DPS = 60
ORDERS = (10, 50, 100)
LEVELS = ("0.01", "0.05", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9",
          "0.95", "0.99")
PHI_FRACTIONS = ("0.05", "0.3", "0.6", "0.9", "0.97", "0.99", "0.999")   # phi = f pi/(s+1)


def log_x(s, phi):
    """log x(phi) (Haagerup & Moller 2012; Neuschel 2014)."""
    return ((s + 1) * mp.log(mp.sin((s + 1) * phi)) - mp.log(mp.sin(phi))
            - s * mp.log(mp.sin(s * phi)))


def log_rho(s, phi):
    """log rho(x(phi)) = log[sin(phi)^2 sin(s phi)^(s-1) / (pi sin((s+1) phi)^s)]."""
    return (2 * mp.log(mp.sin(phi)) + (s - 1) * mp.log(mp.sin(s * phi))
            - mp.log(mp.pi) - s * mp.log(mp.sin((s + 1) * phi)))


def dF_dphi(s, phi):
    """The mass per unit phi, -rho(x) dx/dphi = -(rho x)(phi) d log x/dphi > 0 (x decreases
    with phi)."""
    a, b, c = (s + 1) * phi, phi, s * phi
    rx = mp.sin(b) * mp.sin(a) / (mp.pi * mp.sin(c))
    dlx = (s + 1) ** 2 * mp.cot(a) - mp.cot(b) - s * s * mp.cot(c)
    return -rx * dlx


def cdf_phi(s, phi):
    """F(x(phi)) = mass of [0, x(phi)]."""
    top = mp.pi / (s + 1)
    return mp.quad(lambda t: dF_dphi(s, t), [phi, (phi + top) / 2, top])


def _root(f, lo, hi, increasing):
    """The root of a monotone f in (lo, hi): 40 bisections, then the Anderson-Bjorck bracketing
    secant (convergence is checked by the callers through the residual)."""
    for _ in range(40):
        mid = (lo + hi) / 2
        if (f(mid) > 0) == increasing:
            hi = mid
        else:
            lo = mid
    return mp.findroot(f, (lo, hi), solver="anderson", verify=False)


def quantile_phi(s, p):
    """phi with F(x(phi)) = p (F decreases from 1 at phi = 0 to 0 at pi/(s+1))."""
    return _root(lambda t: cdf_phi(s, t) - p, mp.mpf(0), mp.pi / (s + 1), increasing=False)


def fuss_catalan(s, n):
    return mp.binomial((s + 1) * n, n) / (s * n + 1)


def check():
    ok = True
    with mp.workdps(DPS):
        for s in (2, 3, 10, 50, 100):
            top = mp.pi / (s + 1)
            pts = [0, top / 4, top / 2, 3 * top / 4, top]
            for k in range(0, 5):
                v = mp.quad(lambda t: mp.exp(k * log_x(s, t)) * dF_dphi(s, t), pts)
                err = abs(v / fuss_catalan(s, k) - 1)
                ok &= err < mp.mpf(10) ** -40
                print(f"s={s:3d} moment {k}: rel. error {mp.nstr(err, 3)}")
        # the 1/(pi x) transcription is wrong: its mass is not 1
        s = 3
        top = mp.pi / (s + 1)
        bad = mp.quad(lambda t: dF_dphi(s, t) / mp.exp(log_x(s, t)), [0, top / 2, top])
        print(f"mass of the version with an extra 1/x (s = 3): {mp.nstr(bad, 5)} (not 1)")
        ok &= abs(bad - 1) > 0.1
        # F against a direct integral of the density in x (s = 3, phi = 0.3 top)
        phi = mp.mpf("0.3") * top
        x0 = mp.exp(log_x(s, phi))
        U = mp.mpf(s + 1) ** (s + 1) / mp.mpf(s) ** s

        def rho_of_x(x):
            t = _root(lambda q: log_x(s, q) - mp.log(x), mp.mpf(0) + mp.mpf(10) ** -30,
                      top * (1 - mp.mpf(10) ** -30), increasing=False)
            return mp.exp(log_rho(s, t))
        direct = 1 - mp.quad(rho_of_x, [x0, (x0 + U) / 2, U])
        e = abs(direct - cdf_phi(s, phi))
        print(f"F by the phi integral vs 1 - int_x^U rho dx (s = 3): {mp.nstr(e, 3)}")
        ok &= e < mp.mpf(10) ** -20
        for s in (10, 100):
            for p in ("0.01", "0.5"):
                t = quantile_phi(s, mp.mpf(p))
                e = abs(cdf_phi(s, t) - mp.mpf(p))
                print(f"s={s} F(quantile({p})) - p = {mp.nstr(e, 3)}")
                ok &= e < mp.mpf(10) ** -45
    print("OK" if ok else "FAILED")
    return ok


def generate():
    out = {"description": "Fuss-Catalan law of order s (depth-s linear gaussian network, "
                          "sigma_w^2 = 1): natural logs of the quantiles and of the density there, "
                          "and (log x, F, log rho) "
                          "at phi = f pi/(s+1); generated by make_fuss_catalan_reference.py "
                          f"at mp.dps = {DPS}",
           "levels": [float(p) for p in LEVELS], "orders": {}}
    with mp.workdps(DPS):
        for s in ORDERS:
            t0 = time.time()
            top = mp.pi / (s + 1)
            phis = [quantile_phi(s, mp.mpf(p)) for p in LEVELS]
            lq = [mp.nstr(log_x(s, ph), 30) for ph in phis]
            ld = [mp.nstr(log_rho(s, ph), 30) for ph in phis]
            pts = []
            for f in PHI_FRACTIONS:
                phi = mp.mpf(f) * top
                pts.append({"phi_fraction": float(f), "log_x": mp.nstr(log_x(s, phi), 30),
                            "cdf": mp.nstr(cdf_phi(s, phi), 30),
                            "log_density": mp.nstr(log_rho(s, phi), 30)})
            out["orders"][str(s)] = {
                "upper_edge": mp.nstr(mp.mpf(s + 1) ** (s + 1) / mp.mpf(s) ** s, 30),
                "log_quantiles": lq, "log_density_at_quantiles": ld, "points": pts}
            print(f"s = {s}: {time.time() - t0:.1f} s", file=sys.stderr)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="run the self-checks only")
    a = ap.parse_args(argv)
    if a.check:
        return 0 if check() else 1
    generate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
