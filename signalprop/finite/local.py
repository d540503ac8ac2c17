"""Per-layer local statistics as functions of ``q`` (§2): closed forms for linear and ReLU layers,
cubic-spline tables in ``log q`` of the Gaussian moments for other activations, and the bounded
cache of those tables (``_TABLES``).

References to sections (§1, section 2, ...) and to "the module docstring" in the docstrings
below are to the package docstring of :mod:`signalprop.finite`.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
from scipy import special

from .. import gaussian
from ..activations import Activation
from .chisquare import chi2_factor, relu_factor

_Q_LO, _Q_HI = 1e-200, 1e100


# ---------------------------------------------------------------------------------------------
# per-layer local statistics as functions of q


def _kind(act: Activation) -> str:
    slope = act.params.get("slope") if act.name == "leaky_relu" else None
    if act.name == "linear" or slope == 1.0:
        return "linear"
    if act.name == "relu" or slope == 0.0:
        return "relu"
    return "general"


_EXPONENTS = [(a, b, c) for a in range(4) for b in range(4) for c in range(4)
              if a + b + c <= 3 and (b or c)]
_DFACT = {0: 1.0, 1: 1.0, 2: 3.0, 3: 15.0}   # E[xi^(2c)], xi ~ N(0, 1)
_ZMOM = {0: 1.0, 1: 1.0, 2: 3.0, 3: 15.0}    # E[z^(2a)]
_TABLE_STEP = 0.1                             # log q step of the moment tables
_TABLE_MARGIN = 8.0                           # log q margin beyond the mean-field range
_GH_T, _GH_W = np.polynomial.hermite_e.hermegauss(9)
_GH_W = _GH_W / _GH_W.sum()


def _moment_name(e) -> str:
    parts = [f"h^{2 * e[0]}" if e[0] else "", f"phi(h)^{2 * e[1]}" if e[1] else "",
             f"phi'(h)^{2 * e[2]}" if e[2] else ""]
    return "E[" + " ".join(p for p in parts if p) + "]"


def _stats_from_raw(raw: dict, q: np.ndarray, n: np.ndarray) -> dict:
    """Local statistics (module docstring, section 2) from the raw moments
    ``raw[(a, b, c)] = E[h^(2a) phi(h)^(2b) phi'(h)^(2c)]`` at ``h ~ N(0, q)``, width ``n``."""
    m_p, m_d = raw[(0, 1, 0)], raw[(0, 0, 1)]

    def u(a, b, c):   # E[u1^a u2^b u3^c], u = (z^2, phi^2/m_p, phi'^2 xi^2/m_d)
        if b == 0 and c == 0:
            return _ZMOM[a] * np.ones_like(q)
        return raw[(a, b, c)] / q ** a / m_p ** b / m_d ** c * _DFACT[c]

    unit = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]

    def comb(*js):
        e = [0, 0, 0]
        for j in js:
            e = [x + y for x, y in zip(e, unit[j])]
        return u(*e)

    shape = np.shape(q)
    c2 = np.empty(shape + (3, 3))
    for j in range(3):
        for k in range(3):
            c2[..., j, k] = comb(j, k) - 1.0
    c3 = {(j, k, m): comb(j, k, m) - (comb(j, k) + comb(j, m) + comb(k, m)) + 2.0
          for j in range(3) for k in range(3) for m in range(3)}
    mean = np.empty(shape + (3,))
    cov = np.empty(shape + (3, 3))
    for j in range(3):
        cjj = c2[..., j, j]
        mean[..., j] = -cjj / (2 * n) + c3[j, j, j] / (3 * n ** 2) - 0.75 * cjj ** 2 / n ** 2
        for k in range(3):
            cjk = c2[..., j, k]
            cov[..., j, k] = (cjk / n - (c3[j, k, k] + c3[j, j, k]) / (2 * n ** 2)
                              + cjk * (cjj + c2[..., k, k]) / n ** 2 + 0.5 * cjk ** 2 / n ** 2)
    for j in range(3):   # a heavy-tailed phi at small N can push the O(1/N^2) terms negative
        cov[..., j, j] = np.maximum(cov[..., j, j], 0.0)
    mean[..., 0] = special.digamma(0.5 * n) - np.log(0.5 * n)      # the chi^2 term is exact
    cov[..., 0, 0] = special.polygamma(1, 0.5 * n)
    # third cumulants of (eta, zeta): (c_jkm - c_jk c_km - c_jk c_jm - c_jm c_km) / N^2
    k3 = np.empty(shape + (4,))
    for t, (j, k, m) in enumerate(((1, 1, 1), (1, 1, 2), (1, 2, 2), (2, 2, 2))):
        k3[..., t] = (c3[j, k, m] - c2[..., j, k] * c2[..., k, m] - c2[..., j, k] * c2[..., j, m]
                      - c2[..., j, m] * c2[..., k, m]) / n ** 2
    A = (raw[(1, 1, 0)] / q - m_p) / (2 * m_p)        # E[He_2(z) phi^2] / (2 E phi^2)
    B = (raw[(1, 0, 1)] / q - m_d) / (2 * m_d)
    return {"mean": mean, "cov": cov, "k3": k3, "A": A, "B": B, "log_m_p": np.log(m_p),
            "log_m_d": np.log(m_d), "kappa": raw[(0, 0, 2)] / m_d ** 2,
            "kappa_p": raw[(0, 2, 0)] / m_p ** 2, "r_pd": raw[(0, 1, 1)] / (m_p * m_d),
            "s_pd": m_p / (q * m_d), "p_off": np.zeros(shape)}


class _Stats:
    """Local statistics of one activation as functions of ``(q, N)``: closed forms for linear and
    ReLU (exact, given ``K >= 1``), cubic-spline tables in ``log q`` of the Gaussian moments
    ``E[h^(2a) phi^(2b) phi'^(2c)]`` (a + b + c <= 3) for the others."""

    def __init__(self, act: Activation, lq_lo: float, lq_hi: float, lq_need: tuple):
        self.act, self.kind = act, _kind(act)
        self.lo, self.hi = lq_lo, lq_hi
        if self.kind != "general":
            return
        from scipy.interpolate import CubicSpline
        grid = np.arange(lq_lo, lq_hi + _TABLE_STEP, _TABLE_STEP)
        lq_need = (max(lq_need[0], grid[0]), min(lq_need[1], grid[-1]))
        q = np.exp(grid)
        phi, dphi = act.phi, act.dphi

        def make(a, b, c):
            def f(x):
                with np.errstate(over="ignore", invalid="ignore"):
                    out = np.ones_like(x)
                    if a:
                        out = out * x ** (2 * a)
                    if b:
                        out = out * np.asarray(phi(x), float) ** (2 * b)
                    if c:
                        out = out * np.asarray(dphi(x), float) ** (2 * c)
                return out
            return f

        funcs = tuple(make(*e) for e in _EXPONENTS)
        # the mean-field range first: a missing moment there is an error, found cheaply
        q_need = np.exp(np.linspace(lq_need[0], lq_need[1], 3))
        for i, vals in enumerate(zip(*gaussian.expect(funcs, q_need, kinks=act.kinks, tau=act.tau))):
            for e, v in zip(_EXPONENTS, vals):
                if not (np.isfinite(v) and v > 0):
                    raise ValueError(f"{act!r} has no finite positive {_moment_name(e)} at h ~ "
                                     f"N(0, {q_need[i]:.4g}) (a mean-field q of the network): "
                                     "finite-width laws need the Gaussian moments of phi and "
                                     "phi' up to order 6")
        vals = gaussian.expect(funcs, q, kinks=act.kinks, tau=act.tau)
        ok = np.ones(len(grid), bool)
        for v in vals:
            ok &= np.isfinite(v) & (v > 0)
        need = (grid >= lq_need[0] - 1e-12) & (grid <= lq_need[1] + 1e-12)
        if not np.all(ok[need]):
            i = int(np.flatnonzero(need & ~ok)[0])
            bad = [e for e, v in zip(_EXPONENTS, vals) if not (np.isfinite(v[i]) and v[i] > 0)][0]
            raise ValueError(f"{act!r} has no finite positive {_moment_name(bad)} at h ~ N(0, "
                             f"{q[i]:.4g}) (a mean-field q of the network): finite-width laws "
                             "need the Gaussian moments of phi and phi' up to order 6")
        # the contiguous valid stretch of the table around the mean-field range
        i0 = int(np.flatnonzero(need)[0])
        i1 = int(np.flatnonzero(need)[-1])
        while i0 > 0 and ok[i0 - 1]:
            i0 -= 1
        while i1 < len(grid) - 1 and ok[i1 + 1]:
            i1 += 1
        sl = slice(i0, i1 + 1)
        self.lo, self.hi = float(grid[i0]), float(grid[i1])
        self.splines = {e: CubicSpline(grid[sl], np.log(v[sl])) for e, v in zip(_EXPONENTS, vals)}

    def at(self, q, n) -> dict:
        q = np.asarray(q, float)
        n = np.broadcast_to(np.asarray(n, float), q.shape)
        if self.kind == "general":
            lq = np.clip(np.log(q), self.lo, self.hi)
            raw = {e: np.exp(s(lq)) for e, s in self.splines.items()}
            return _stats_from_raw(raw, np.exp(lq), n)
        shape = q.shape
        mean, cov = np.zeros(shape + (3,)), np.zeros(shape + (3, 3))
        k3 = np.zeros(shape + (4,))
        p_off = np.zeros(shape)
        for idx in np.ndindex(shape):
            ni = int(n[idx])
            c = chi2_factor(ni)
            if self.kind == "linear":
                mean[idx] = c["log_mean"]
                cv = c["log_var"]
                cov[idx] = [[cv, cv, 0.0], [cv, cv, 0.0], [0.0, 0.0, cv]]
                k3[idx] = (c["log_k3"], 0.0, 0.0, c["log_k3"])
            else:
                r = relu_factor(ni)
                mean[idx] = (c["log_mean"], r["log_mean"], r["log_mean"])
                cv, rv, rc = c["log_var"], r["log_var"], r["log_cross"]
                # log chi^2_K = log chi^2_N + log Beta(K/2, (N-K)/2), the two independent
                cov[idx] = [[cv, cv, 0.0], [cv, rv, rc], [0.0, rc, rv]]
                k3[idx] = (r["log_k3"], r["log_k3_cross"], r["log_k3_cross"], r["log_k3"])
                p_off[idx] = r["p_zero"]
        one = np.ones(shape)
        lin = self.kind == "linear"
        with np.errstate(divide="ignore"):
            lq = np.log(q)
        return {"mean": mean, "cov": cov, "k3": k3, "A": one, "B": 0 * one,
                "log_m_p": lq + (0.0 if lin else math.log(0.5)),
                "log_m_d": (0.0 if lin else math.log(0.5)) * one,
                "kappa": (1.0 if lin else 2.0) * one, "kappa_p": (3.0 if lin else 6.0) * one,
                "r_pd": (1.0 if lin else 2.0) * one, "s_pd": one, "p_off": p_off}


#: What: the moment tables (:class:`_Stats`) of general activations. Keyed by value: (the
#: Activation itself, which hashes and compares by value, and the log q range snapped outward to
#: multiples of 4, so that networks of similar scale share a table). Bound: the _TABLES_MAX most
#: recently used (an OrderedDict, oldest dropped). Why it cannot change a result: a table is a
#: fixed function of (activation, snapped range) except for the contiguous valid stretch it keeps
#: around the mean-field range, and it is reused only when that range lies inside the stretch,
#: which is then the stretch a cold build would keep (tests/test_caches.py: cold == warm).
_TABLES: OrderedDict = OrderedDict()
_TABLES_MAX = 32


def _stats_table(act: Activation, lo: float, hi: float, need: tuple) -> _Stats:
    """A cached :class:`_Stats` (``_TABLES``) of a general activation; closed forms are cheap
    and built each time."""
    if _kind(act) != "general":
        return _Stats(act, lo, hi, need)
    lo4 = max(math.log(_Q_LO), 4.0 * math.floor(lo / 4.0))
    hi4 = min(math.log(_Q_HI), 4.0 * math.ceil(hi / 4.0))
    key = (act, lo4, hi4)
    st = _TABLES.get(key)
    if st is None or not (st.lo <= need[0] and need[1] <= st.hi):
        st = _Stats(act, lo4, hi4, need)
        _TABLES[key] = st
    _TABLES.move_to_end(key)
    while len(_TABLES) > _TABLES_MAX:
        _TABLES.popitem(last=False)
    return st
