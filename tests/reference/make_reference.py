"""Independent high-precision reference values for ``tests/test_gaussian.py``.

Run from the repository root::

    python tests/reference/make_reference.py            # writes gaussian_reference.json
    python tests/reference/make_reference.py --check    # self-checks of this generator only

This script deliberately does **not** import signalprop: every activation is written out again
in mpmath below, and every expectation is computed by a route that shares nothing with
``signalprop.gaussian``:

* one-dimensional expectations ``E[F(sqrt(q) z)]`` by mpmath's tanh-sinh quadrature in the
  variable ``x = sqrt(q) z`` (density ``N(0, q)``), with breakpoints at the activation's kinks,
  at a geometric set of feature points ``x = 0, +-2^k`` and on a grid in units of ``sqrt(q)``,
  at ``mp.dps = 30``;
* ``d/dq E[phi(sqrt(q) z)^2]`` by differentiating the Gaussian density under the integral,
  ``E[phi(x)^2 (x^2 - q)] / (2 q^2)`` (so neither phi' nor Stein's lemma is used);
* bivariate ``E[f(u1) g(u2)]`` in the conditional form ``u1 = x ~ N(0, q1)``,
  ``u2 | x ~ N(m, s^2)`` with ``m = c sqrt(q2/q1) x`` and ``s^2 = q2 (1 - c^2)``: an outer and an
  inner composite Gauss-Legendre rule (mpmath nodes, ``mp.dps = 20``), each split at the
  kinks, at the feature points, on a grid in units of the respective standard deviation, and
  (outer) where the conditional mean crosses a kink or feature of g. ``c = +-1`` is the 1-D
  integral of ``f(x) g(+-sqrt(q2/q1) x)``.

The generator checks itself (``--check``, each to <= 1e-15, four orders below the 1e-10 that the
tests ask of signalprop): the nested rule against the 1-D rule at c = 0 (product of means),
against two rule orders, and against the classical closed forms (arcsine kernel for erf,
arc-cosine kernel for relu); the density-derivative slope against a central difference.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import mpmath as mp

HERE = Path(__file__).resolve().parent
OUT = HERE / "gaussian_reference.json"

# --------------------------------------------------------------------------------------------
# activations, written out again in mpmath (phi and phi'), with their kinks

_SELU_ALPHA = mp.mpf("1.6732632423543772848170429916717")
_SELU_SCALE = mp.mpf("1.0507009873554804934193349852946")
_GELU_TANH_K = mp.mpf("0.044715")


def _sig(x):
    return 1 / (1 + mp.exp(-x))


def _sech2(x):
    return 1 / mp.cosh(x) ** 2


def _ncdf(x):
    return mp.erfc(-x / mp.sqrt(2)) / 2


def _npdf(x):
    return mp.exp(-x * x / 2) / mp.sqrt(2 * mp.pi)


def _gelu_tanh(x):
    k = mp.sqrt(2 / mp.pi)
    return x * (1 + mp.tanh(k * (x + _GELU_TANH_K * x**3))) / 2


def _gelu_tanh_d(x):
    k = mp.sqrt(2 / mp.pi)
    y = k * (x + _GELU_TANH_K * x**3)
    return (1 + mp.tanh(y)) / 2 + x * _sech2(y) * k * (1 + 3 * _GELU_TANH_K * x * x) / 2


ACTS = {
    # name: (phi, phi', kinks)
    "linear": (lambda x: x, lambda x: mp.mpf(1), ()),
    "tanh": (mp.tanh, _sech2, ()),
    "sigmoid": (_sig, lambda x: _sig(x) * _sig(-x), ()),
    "erf": (mp.erf, lambda x: 2 / mp.sqrt(mp.pi) * mp.exp(-x * x), ()),
    "relu": (lambda x: x if x > 0 else mp.mpf(0), lambda x: mp.mpf(1) if x > 0 else mp.mpf(0), (0,)),
    "leaky_relu": (lambda x: x if x > 0 else x / 100, lambda x: mp.mpf(1) if x > 0 else mp.mpf(1) / 100,
                   (0,)),
    "gelu": (lambda x: x * _ncdf(x), lambda x: _ncdf(x) + x * _npdf(x), ()),
    "gelu_tanh": (_gelu_tanh, _gelu_tanh_d, ()),
    "silu": (lambda x: x * _sig(x), lambda x: _sig(x) * (1 + x * _sig(-x)), ()),
    "elu": (lambda x: x if x > 0 else mp.expm1(x), lambda x: mp.mpf(1) if x > 0 else mp.exp(x), (0,)),
    "selu": (lambda x: _SELU_SCALE * (x if x > 0 else _SELU_ALPHA * mp.expm1(x)),
             lambda x: _SELU_SCALE * (1 if x > 0 else _SELU_ALPHA * mp.exp(x)), (0,)),
    "softplus": (lambda x: mp.log1p(mp.exp(x)), _sig, ()),
    "hard_tanh": (lambda x: max(mp.mpf(-1), min(mp.mpf(1), x)),
                  lambda x: mp.mpf(1) if -1 < x < 1 else mp.mpf(0), (-1, 1)),
}

# where the activations change on their own scale (x-space); kinks are added per activation
_FEATS = [0.0] + [s * 2.0**k for k in range(-2, 6) for s in (1, -1)]
_FEATS2 = [0.0] + [s * 2.0**k for k in range(0, 10) for s in (1, -1)]  # coarser near 0, for the 2-D rule
_GRID = [0.5, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12]
_STEPS = [-6.5, -4, -2, 0, 2, 4, 6.5]  # panel ends, in sd units (with +-9)


def _points(lo, hi, pts):
    inner = sorted({mp.mpf(p) for p in pts if lo < p < hi})
    return [mp.mpf(lo)] + inner + [mp.mpf(hi)]


def funcs(name, which):
    phi, dphi, kinks = ACTS[name]
    return (phi if which == "phi" else dphi), tuple(kinks)


# --------------------------------------------------------------------------------------------
# one-dimensional: tanh-sinh over x ~ N(0, q)


def expect1(F, q, kinks=(), dps=30):
    """E[F(x)], x ~ N(0, q), by tanh-sinh on panels."""
    with mp.workdps(dps):
        q = mp.mpf(q)
        s = mp.sqrt(q)
        L = 13 * s
        pts = [g * s for g in _GRID] + [-g * s for g in _GRID] + [0] + list(_FEATS) + list(kinks)
        norm = 1 / mp.sqrt(2 * mp.pi * q)
        val = mp.quad(lambda x: F(x) * mp.exp(-x * x / (2 * q)), _points(-L, L, pts))
        return +(val * norm)


def ref_mean(name, q):
    f, k = funcs(name, "phi")
    return expect1(f, q, k)


def ref_second_moment(name, q):
    f, k = funcs(name, "phi")
    return expect1(lambda x: f(x) ** 2, q, k)


def ref_dphi_second_moment(name, q):
    f, k = funcs(name, "dphi")
    return expect1(lambda x: f(x) ** 2, q, k)


def ref_second_moment_slope(name, q):
    """d/dq E[phi(x)^2], x ~ N(0, q): the q-derivative of the density, E[phi^2 (x^2 - q)] / (2 q^2)."""
    f, k = funcs(name, "phi")
    with mp.workdps(40):
        qq = mp.mpf(q)
        return expect1(lambda x: f(x) ** 2 * (x * x - qq), q, k, dps=40) / (2 * qq * qq)


# --------------------------------------------------------------------------------------------
# bivariate: nested composite Gauss-Legendre in the conditional form


_GL_CACHE = {}


def gl_nodes(n):
    """Gauss-Legendre nodes and weights on [-1, 1] at the working precision (Newton on P_n)."""
    key = (n, mp.mp.prec)
    if key in _GL_CACHE:
        return _GL_CACHE[key]
    nodes = []
    for i in range(1, n + 1):
        x = mp.cos(mp.pi * (i - mp.mpf(1) / 4) / (n + mp.mpf(1) / 2))
        for _ in range(100):
            p0, p1 = mp.mpf(1), x
            for k in range(2, n + 1):
                p0, p1 = p1, ((2 * k - 1) * x * p1 - (k - 1) * p0) / k
            dp = n * (x * p1 - p0) / (x * x - 1)
            dx = p1 / dp
            x -= dx
            if abs(dx) < mp.mpf(2) ** (-mp.mp.prec + 4):
                break
        p0, p1 = mp.mpf(1), x
        for k in range(2, n + 1):
            p0, p1 = p1, ((2 * k - 1) * x * p1 - (k - 1) * p0) / k
        dp = n * (x * p1 - p0) / (x * x - 1)
        nodes.append((x, 2 / ((1 - x * x) * dp * dp)))
    _GL_CACHE[key] = nodes
    return nodes


def _gl(F, pts, n):
    tw = gl_nodes(n)
    total = mp.mpf(0)
    for a, b in zip(pts[:-1], pts[1:]):
        h, mid = (b - a) / 2, (a + b) / 2
        total += h * mp.fsum(w * F(mid + h * t) for t, w in tw)
    return total


def _gauss_smooth(g, gk, m, s, n):
    """E[g(m + s W)], W ~ N(0, 1), by Gauss-Legendre panels (s > 0)."""
    L = 9
    pts = [m + j * s for j in _STEPS] + list(_FEATS2) + list(gk)
    pts = _points(m - L * s, m + L * s, pts)
    c0 = 1 / (s * mp.sqrt(2 * mp.pi))
    return _gl(lambda y: g(y) * mp.exp(-((y - m) / s) ** 2 / 2), pts, n) * c0


def expect2(f, fk, g, gk, q1, q2, c, n=12, dps=20):
    """E[f(u1) g(u2)], (u1, u2) ~ N(0, [[q1, r], [r, q2]]), r = c sqrt(q1 q2)."""
    with mp.workdps(dps):
        q1, q2, c = mp.mpf(q1), mp.mpf(q2), mp.mpf(c)
        s1, s2 = mp.sqrt(q1), mp.sqrt(q2)
        L = 9 * s1
        pts = [j * s1 for j in _STEPS] + list(_FEATS2) + list(fk)
        if abs(c) == 1:
            ratio = c * s2 / s1
            pts += [p / ratio for p in list(_FEATS) + list(gk)]
            return expect1(lambda x: f(x) * g(ratio * x), q1, tuple(pts), dps=dps)
        sd = s2 * mp.sqrt((1 - c) * (1 + c))
        if c != 0:
            ratio = c * s2 / s1  # m = ratio * x
            pts += [p / ratio for p in _FEATS2]
            for k in gk:  # the smoothed kink of g, graded geometrically on the smoothing width
                pts += [(k + j * sd) / ratio for j in [0] + [s * 2.0**e for e in range(-2, 12)
                                                             for s in (1, -1)]]
        else:
            ratio = mp.mpf(0)
        norm = 1 / mp.sqrt(2 * mp.pi * q1)

        def outer(x):
            return f(x) * _gauss_smooth(g, gk, ratio * x, sd, n) * mp.exp(-x * x / (2 * q1))
        return _gl(outer, _points(-L, L, pts), n) * norm


def ref_cross(name, which, q1, q2, c, n=12):
    """E[f(u1) f(u2)] for f = phi or phi' of ``name``; c = 0 is the product of the 1-D means."""
    f, k = funcs(name, which)
    if c == 0:
        return expect1(f, q1, k, dps=25) * expect1(f, q2, k, dps=25)
    return expect2(f, k, f, k, q1, q2, c, n=n)


# --------------------------------------------------------------------------------------------
# the grids

Q_1D = [1e-6, 1e-3, 0.1, 1.0, 10.0, 1e3, 1e4]
C_LIST = [-1.0, -0.9999, -0.5, 0.0, 0.3, 0.9, 0.9999, 1.0]
BIV = ([(1.0, 1.0, c) for c in C_LIST]
       + [(1e-6, 1e-6, 0.9999), (1e-6, 1e-3, -0.5), (0.1, 10.0, 0.9), (10.0, 1e3, -0.9999),
          (1e4, 1e4, 0.9999), (1e4, 1e4, -0.9999), (1e4, 1.0, 0.3), (1e-3, 1e4, 0.9),
          (1e3, 1e4, 0.0), (1e4, 1e4, 1.0),
          # q1 << q2 with |c| ~ 1: g's own scale, far from f's, must be resolved
          (1e-6, 1e4, 1.0), (1e-3, 1e3, -1.0), (1e-6, 1e4, -0.9999)])
NAMES = list(ACTS)


def _s(v):
    return mp.nstr(v, 25)


def build(names=NAMES, verbose=True, have=None):
    """Every reference value; rows already in ``have`` (a previous output) are kept, not redone."""
    have = have or {"one_d": {}, "two_d": {}}
    out = {"meta": {"generator": "tests/reference/make_reference.py",
                    "one_d": "mpmath tanh-sinh, dps 30 (slope: dps 40)",
                    "two_d": "mpmath nested Gauss-Legendre (12 nodes per panel), dps 20",
                    "selu_alpha": str(_SELU_ALPHA), "selu_scale": str(_SELU_SCALE),
                    "leaky_relu_slope": "0.01", "elu_alpha": "1"},
           "one_d": {}, "two_d": {}}
    for name in names:
        t0 = time.time()
        rows = []
        old1 = {r["q"]: r for r in have["one_d"].get(name, [])}
        old2 = {(r["q1"], r["q2"], r["c"]): r for r in have["two_d"].get(name, [])}
        for q in Q_1D:
            if q in old1:
                rows.append(old1[q])
                continue
            rows.append({"q": q, "mean": _s(ref_mean(name, q)),
                         "second_moment": _s(ref_second_moment(name, q)),
                         "dphi_second_moment": _s(ref_dphi_second_moment(name, q)),
                         "second_moment_slope": _s(ref_second_moment_slope(name, q))})
        out["one_d"][name] = rows
        t1 = time.time()
        rows = []
        for q1, q2, c in BIV:
            if (q1, q2, c) in old2:
                rows.append(old2[(q1, q2, c)])
                continue
            rows.append({"q1": q1, "q2": q2, "c": c,
                         "cross_moment": _s(ref_cross(name, "phi", q1, q2, c)),
                         "dphi_cross_moment": _s(ref_cross(name, "dphi", q1, q2, c))})
        out["two_d"][name] = rows
        if verbose:
            print(f"{name}: 1-D {t1 - t0:.1f} s, 2-D {time.time() - t1:.1f} s", flush=True)
    return out


# --------------------------------------------------------------------------------------------
# self-checks of the generator (not of signalprop)


def self_check():
    ok = True

    def report(label, a, b, tol, scale=None):
        nonlocal ok
        err = abs(a - b) / (scale if scale is not None else max(abs(b), mp.mpf(10) ** -30))
        flag = "ok" if err <= tol else "FAIL"
        ok &= err <= tol
        print(f"{flag:4s} {label}: {mp.nstr(a, 18)} vs {mp.nstr(b, 18)}  rel {mp.nstr(err, 3)}")

    with mp.workdps(30):
        # closed forms in 1-D
        report("relu mean q=2", ref_mean("relu", 2), mp.sqrt(2) / mp.sqrt(2 * mp.pi), 1e-25)
        report("erf E phi^2 q=0.5", ref_second_moment("erf", 0.5), mp.mpf(1) / 3, 1e-25)
        h = mp.mpf("1e-9")
        for name, q in (("tanh", "0.7"), ("hard_tanh", "2.5"), ("elu", "1e-3")):
            q = mp.mpf(q)
            fd = (ref_second_moment(name, q + h) - ref_second_moment(name, q - h)) / (2 * h)
            report(f"{name} slope q={q} vs central difference", ref_second_moment_slope(name, q), fd, 1e-14)
    for q1, q2, c in [(0.1, 10.0, 0.9), (1e4, 1e4, 0.9999), (1e-6, 1e-3, -0.5), (1e4, 1.0, 0.3)]:
        with mp.workdps(30):
            r = mp.mpf(c) * mp.sqrt(mp.mpf(q1) * q2)
            w = 2 / mp.pi * mp.asin(2 * r / mp.sqrt((1 + 2 * mp.mpf(q1)) * (1 + 2 * mp.mpf(q2))))
            cc = mp.mpf(c)
            rl = mp.sqrt(q1 * q2) / (2 * mp.pi) * (mp.sqrt(1 - cc * cc) + cc * (mp.pi - mp.acos(cc)))
            ed = 4 / mp.pi / mp.sqrt((1 + 2 * mp.mpf(q1)) * (1 + 2 * mp.mpf(q2)) - 4 * mp.mpf(r) ** 2)
        report(f"erf cross {q1, q2, c}", ref_cross("erf", "phi", q1, q2, c), w, 1e-15)
        report(f"erf' cross {q1, q2, c}", ref_cross("erf", "dphi", q1, q2, c), ed, 1e-15)
        report(f"relu cross {q1, q2, c}", ref_cross("relu", "phi", q1, q2, c), rl, 1e-15)
    for name in ("tanh", "gelu_tanh", "elu", "hard_tanh"):
        for q1, q2 in [(1.0, 10.0), (1e4, 1e-3)]:
            prod = ref_mean(name, q1) * ref_mean(name, q2)
            f, k = funcs(name, "phi")
            scale = mp.sqrt(ref_second_moment(name, q1) * ref_second_moment(name, q2))
            report(f"{name} c=0 {q1, q2} nested = product of means", expect2(f, k, f, k, q1, q2, 0.0),
                   prod, 1e-15, scale)
        for q1, q2, c in [(1e4, 1e4, 0.9999), (1e4, 1.0, 0.3)]:
            a = ref_cross(name, "phi", q1, q2, c, n=12)
            b = ref_cross(name, "phi", q1, q2, c, n=16)
            report(f"{name} {q1, q2, c} orders 12 vs 16", a, b, 1e-15)
    return ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="run the generator's self-checks only")
    p.add_argument("--names", nargs="*", default=NAMES)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--merge", nargs="*", help="merge partial outputs (of --names runs) into --out")
    p.add_argument("--update", help="a previous output: keep its values, compute only new rows")
    a = p.parse_args(argv)
    if a.check:
        return 0 if self_check() else 1
    if a.merge:
        parts = [json.loads(Path(f).read_text()) for f in a.merge]
        data = parts[0]
        for other in parts[1:]:
            for key in ("one_d", "two_d"):
                data[key].update(other[key])
        data["one_d"] = {n: data["one_d"][n] for n in NAMES if n in data["one_d"]}
        data["two_d"] = {n: data["two_d"][n] for n in NAMES if n in data["two_d"]}
        Path(a.out).write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {a.out}")
        return 0
    have = json.loads(Path(a.update).read_text()) if a.update else None
    data = build(a.names, have=have)
    Path(a.out).write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
