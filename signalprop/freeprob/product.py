"""The free multiplicative convolution :class:`FreeProduct`: its atoms (Bercovici & Voiculescu
1993), exact moments by Lagrange inversion (Pennington, Schoenholz & Ganguli 2017, arXiv
1711.04735, eq. 18), density and distribution function of the continuous part (from the solver
of :mod:`.subordination`) and support edges. See the package docstring of
:mod:`signalprop.freeprob` and docs/theory/free-probability.md."""

from __future__ import annotations

import math

import numpy as np

from .series import _log1p_linear, _ser_log1, _zeros, lagrange_moments, series_reversion
from .subordination import _ATOM_GAP, _EPS_Y, _H_CDF, _H_DENSITY, _Subordination, _small_move


class FreeProduct(_Subordination):
    """The free multiplicative convolution of closed factors and numerical laws.

    ``closed``: list of ``(ClosedFactor, n, r)``; ``groups``: list of ``(Law, n, r)``; each
    factor enters as ``S_f(r w)^n`` (``n`` identical free copies acting in a space ``1/r`` the
    size of the product's). See the module docstring for the equations and the algorithms.
    """

    def __init__(self, closed, groups):
        self.closed = [(f, int(n), float(r)) for f, n, r in closed]
        self.groups = [(law, int(n), float(r)) for law, n, r in groups]
        # closed part: log S = C + sum_i E_i log(1 + A_i w), merged over equal A_i
        C = 0.0
        AE: dict = {}
        for f, n, r in self.closed:
            C += n * f.C
            for a, e in zip(f.A, f.E):
                key = float(f"{a * r:.13e}")
                AE[key] = AE.get(key, 0) + n * e
        AE = {a: e for a, e in AE.items() if e != 0}
        self.C = C
        self.A = np.array(list(AE), float)
        self.E = np.array([AE[a] for a in AE], float)
        self.gn = np.array([n for _, n, _ in self.groups], float)
        self.gr = np.array([r for _, _, r in self.groups], float)
        self.laws = [law for law, _, _ in self.groups]
        self.log_mean = -C + sum(n * math.log(law.mean) for law, n, _ in self.groups)
        self._atoms()
        self._moment_cache: dict = {}
        self._edge = None

    # ---------------------------------------------------------------------------------------
    # atoms

    def _factor_list(self):
        """(zero_mass, r, n, nonzero atoms) of every factor."""
        out = []
        for f, n, r in self.closed:
            out.append((f.zero_mass, r, n, list(f.atoms)))
        for law, n, r in self.groups:
            out.append((law.zero_mass, r, n, list(zip(law.atom_loc.tolist(), law.atom_mass.tolist()))))
        return out

    def _atoms(self):
        facs = self._factor_list()
        frac = min([1.0] + [(1.0 - z0) / r for z0, r, n, _ in facs if n > 0])
        self.zero_mass = 1.0 - frac if frac < 1.0 - 1e-13 else 0.0
        # nonzero atoms: choose one atom per factor with total deficit < 1
        combos = [(0.0, 0.0)]                        # (log location, deficit)
        order = sorted(range(len(facs)), key=lambda i: min([1.0 - m for _, m in facs[i][3]] + [1.0]))
        for i in order:
            z0, r, n, atoms = facs[i]
            if n == 0:
                continue
            new = []
            for ll, dfc in combos:
                for a, m in atoms:
                    nd = dfc + n * (1.0 - m) / r
                    if nd < 1.0 - 1e-12:
                        new.append((ll + n * math.log(a), nd))
            combos = new
            if not combos:
                break
        atoms = {}
        for ll, dfc in combos:
            m = 1.0 - dfc
            if m > 1e-12:
                loc = math.exp(ll) if ll < 709 else math.inf
                atoms[loc] = atoms.get(loc, 0.0) + m
        self.atom_loc = np.array(sorted(atoms), float)
        self.atom_mass = np.array([atoms[a] for a in sorted(atoms)], float)
        self.continuous_mass = max(0.0, 1.0 - self.zero_mass - float(self.atom_mass.sum()))
        self.kappa = 1.0 - self.zero_mass
        self.log_kappa = math.log(self.kappa) if self.kappa > 0 else -math.inf

    # ---------------------------------------------------------------------------------------
    # moments

    def _ell(self, K, dps=None):
        """log R~(w) = log R(w) - log m_1 to order K - 1 (float64, or mpmath at ``dps``)."""
        if dps is None:
            like = np.zeros(1)
            conv = float
        else:
            import mpmath as mp
            mp.mp.dps = dps
            like = np.array([mp.mpf(0)], dtype=object)
            conv = mp.mpf
        ell = _log1p_linear(conv(1.0), K, like)           # log(1 + w)
        for a, e in zip(self.A, self.E):
            ell = ell - conv(e) * _log1p_linear(conv(a), K, like)
        for law, n, r in self.groups:
            # normalised moment series of the law, psi~(zeta) = sum (mu_k / mu_1^k) zeta^k
            mu = law.moments
            if mu.size < K + 2:
                raise ValueError(f"the law of phi'(h)^2 has {mu.size - 1} moments; "
                                 f"{K + 1} are needed")
            m1 = conv(mu[1])
            psi = _zeros(K + 1, like)
            for k in range(1, K + 1):
                psi[k] = conv(mu[k]) / m1 ** k
            chi = series_reversion(psi, K + 1)           # chi~(w) = w h~(w), h~(0) = 1
            h = chi[1:K + 1]
            lh = _ser_log1(h, K)                          # log(mu_1 h(w)) in the variable w
            # log(mu_1 S(u)) = log(mu_1 h(u)) + log(1 + u); argument u = r w
            term = lh + _log1p_linear(conv(1.0), K, like)
            rp = conv(r) ** np.arange(K)
            ell = ell - conv(n) * term * rp
        return ell

    def log_moments(self, kmax: int) -> np.ndarray:
        """log m_k, k = 1..kmax (float64; exact series arithmetic, rounding only)."""
        key = ("log", kmax)
        if key not in self._moment_cache:
            ell = self._ell(kmax)
            lm = lagrange_moments(ell, kmax, log=True)
            self._moment_cache[key] = lm + np.arange(1, kmax + 1) * self.log_mean
        return self._moment_cache[key]

    def moments_mp(self, kmax: int, dps: int = 50):
        """m_k, k = 1..kmax, with the series arithmetic done in mpmath at ``dps`` digits (the
        inputs, e.g. the moments of phi'^2, are float64)."""
        import mpmath as mp
        with mp.workdps(dps):
            ell = self._ell(kmax, dps=dps)
            mt = lagrange_moments(ell, kmax)
            m1 = mp.e ** mp.mpf(self.log_mean)
            return [mt[k - 1] * m1 ** k for k in range(1, kmax + 1)]

    def _continuous_moments(self, kmax):
        lm = self.log_moments(kmax)
        with np.errstate(over="ignore"):
            m = np.exp(lm)
        if self.atom_loc.size:
            k = np.arange(1, kmax + 1)
            m = m - (self.atom_mass[None, :] * self.atom_loc[None, :] ** k[:, None]).sum(axis=1)
        return m


    # ---------------------------------------------------------------------------------------
    # public numerics

    def density(self, x, h=_H_DENSITY, spacing: int = 24):
        """Density of the continuous part at the points ``x > 0`` (array); 0 above the support.

        The points are sorted; every ``spacing``-th one (an anchor) is solved by the vertical
        descent (:meth:`_descend`); the others are reached from their left neighbour along the
        line ``y = eps x`` (Newton from the neighbour's solution, to 1e-12), which is accepted
        only if it converged to the physical branch: ``Im w < 0`` clearly, or, for a solution on
        the real axis (outside the support), ``d log chi/d log w`` of the sign of ``w``
        (``psi' > 0``); any other point is solved by the vertical descent too.
        Where the continuation stalls before ``y = eps x`` (only seen in regions of negligible
        density next to an edge) the value at the lowest height reached is used if that is below
        ``1e-5 x`` (a Poisson smoothing of relative width 1e-5); far below the support, where
        ``w + kappa = x G_c(x)`` is below 1e-13 (or 1e-10 where the path stalled) and float64 no
        longer resolves the equation, the density is 0 (such x are below ~1e-13 of the scale of
        the spectrum); otherwise RuntimeError. Within ``1e-7 a`` of a nonzero atom at ``a`` the
        continuous density is not resolved (it comes from the O(1/w) terms of the equation, with
        ``|w| ~ 1/distance``): nan there."""
        x = np.asarray(x, float)
        out = np.zeros(x.shape)
        if self.continuous_mass <= 1e-14:
            return out
        U = self.support_top()
        sel = np.flatnonzero((x > 0) & (x < U * (1 + 1e-12)))
        if sel.size == 0:
            return out
        xs, inv = np.unique(x[sel], return_inverse=True)
        n = xs.size
        G = len(self.groups)
        u = np.zeros(n, complex)
        v = np.zeros((G, n), complex)
        ly = np.full(n, np.nan)
        anchors = np.arange(0, n, max(1, int(spacing)))
        ua, va, lya, _ = self._descend(xs[anchors], h)
        u[anchors], v[:, anchors], ly[anchors] = ua, va, lya
        for j in range(1, max(1, int(spacing))):
            idx = anchors + j
            idx = idx[idx < n]
            if idx.size == 0:
                break
            lyt = np.log(_EPS_Y * xs[idx])
            z = xs[idx] + 1j * np.exp(lyt)
            u0, v0 = u[idx - 1], v[:, idx - 1]
            if j >= 2:          # linear predictor along the chain
                t = ((xs[idx] - xs[idx - 1]) / (xs[idx - 1] - xs[idx - 2]))
                up, vp = u0 + t * (u0 - u[idx - 2]), v0 + t * (v0 - v[:, idx - 2])
            else:
                up, vp = u0, v0
            un, vn, ok = self._newton(1.0 / z, up, vp)
            ok &= _small_move(un, vn, u0, v0, 0.5)
            with np.errstate(over="ignore", invalid="ignore"):    # failed points: not ok
                wn = self._w_of(un)
                nearly_real = wn.imag > -1e-6 * np.abs(wn)
            if np.any(ok & nearly_real):
                k = np.flatnonzero(ok & nearly_real)
                D = self._dlogchi(un[k], vn[:, k])
                ok[k] &= D.real * wn[k].real > 0
            good = idx[ok]
            u[good], v[:, good], ly[good] = un[ok], vn[:, ok], lyt[ok]
            bad = idx[~ok]
            if bad.size:
                ub, vb, lyb, _ = self._descend(xs[bad], h)
                u[bad], v[:, bad], ly[bad] = ub, vb, lyb
        y = np.exp(ly)
        # a path that stalls with w + kappa = x G_c below 1e-10 is far below the support: there
        # the continuous part has no mass to speak of, and its density is set to 0
        below = ((y > 1e-5 * xs) & (np.abs(np.exp(u)) < 1e-10 * self.kappa)) | \
            (np.abs(np.exp(u)) < 1e-13 * self.kappa)
        if np.any((y > 1e-5 * xs) & ~below):
            bad = xs[(y > 1e-5 * xs) & ~below]
            raise RuntimeError("free-probability solver: the continuation did not reach the "
                               f"real axis at x = {bad[:3]}")
        Gc, _ = self._Gc(xs, y, u)
        Gc[below] = 0.0
        if self.atom_loc.size:
            Gc[np.min(np.abs(xs[:, None] - self.atom_loc), axis=1)
               <= _ATOM_GAP * self.atom_loc.max()] = 0.0
        rho = -Gc.imag / math.pi
        floor = -1e-6 * max(1.0, float(np.abs(rho).max()))
        if np.any(rho < floor):
            raise RuntimeError("free-probability solver returned a negative density "
                               f"({rho.min():.3g}); this is a bug, please report it")
        out[sel] = np.maximum(rho, 0.0)[inv]
        if self.atom_loc.size:      # not resolved next to an atom (see density's docstring)
            near = np.min(np.abs(x[..., None] - self.atom_loc), axis=-1) <= _ATOM_GAP * self.atom_loc.max()
            out[near & (x > 0)] = np.nan
        return out

    def cdf_continuous(self, x):
        """F_c(x) = mass of the continuous part on [0, x], for ``x > 0``."""
        return self._cdf_paths(np.asarray(x, float), per_point=False)[0]

    def cdf_density_continuous(self, x):
        """``(F_c(x), rho_c(x))`` for ``x > 0`` from one vertical path per point: the
        distribution function as in :meth:`cdf_continuous` and the density of the continuous
        part ``-Im G_c(x + i eps x)/pi`` at the path's last node (solved to 1e-12, as in
        :meth:`density`; 0 far below the support and above it, nan within 1e-7 a of a nonzero
        atom a). Each path's step depends on its own x only (:meth:`_nodes`), so both are fixed
        functions of x whatever the other points of the call: what Newton's method in
        ``log x`` for the quantiles needs (``dF_c/d log x = x rho_c(x)``)."""
        return self._cdf_paths(np.asarray(x, float), per_point=True)

    def _cdf_paths(self, x, per_point):
        out = np.zeros(x.shape)
        rho = np.zeros(x.shape)
        if self.continuous_mass <= 1e-14:
            return out, rho
        U = self.support_top()
        out[x >= U] = self.continuous_mass
        sel = (x > 0) & (x < U)
        if sel.any():
            xs = x[sel]
            u, _, ly, integ = self._descend(xs, _H_CDF, record=True, per_point=per_point)
            stalled = np.exp(ly) > 1e-5 * xs
            below = (stalled & (np.abs(np.exp(u)) < 1e-10 * self.kappa)) | \
                (np.abs(np.exp(u)) < 1e-13 * self.kappa)
            if np.any(stalled & ~below):
                bad = xs[stalled & ~below]
                raise RuntimeError("free-probability solver: the continuation did not reach the "
                                   f"real axis at x = {bad[:3]}")
            F = self.continuous_mass + integ / math.pi
            F[below] = 0.0          # far below the support (see density)
            out[sel] = np.clip(F, 0.0, self.continuous_mass)
            if per_point:
                Gc, _ = self._Gc(xs, np.exp(ly), u)
                r = np.where(below, 0.0, np.maximum(-Gc.imag / math.pi, 0.0))
                if self.atom_loc.size:
                    near = np.min(np.abs(xs[:, None] - self.atom_loc), axis=1) \
                        <= _ATOM_GAP * self.atom_loc.max()
                    r[near] = np.nan
                rho[sel] = r
        return out, rho

    # ---------------------------------------------------------------------------------------
    # edges

    def _log_chi_real(self, w):
        """(log chi(w), d log chi / d log w) for real w > 0 (nan where a factor cannot be
        inverted on the real axis)."""
        w = np.asarray(w, float)
        cls, cld = self._closed_logS(w.astype(complex))
        lc = np.log(w) - np.log1p(w) + cls.real
        D = 1.0 / (1.0 + w) + cld.real
        for law, n, r in self.groups:
            zg = law.invert_real(r * w)
            ps, dps_ = law.psi(zg)
            lc = lc + n * (np.log(zg) + np.log1p(r * w) - np.log(r * w))
            D = D - n / (1.0 + r * w) + n * ps / (zg * dps_)
        return lc, D

    def _upper_edge_continuous(self):
        """Largest point of the support of the continuous part (see the module docstring)."""
        if self.continuous_mass <= 1e-14:
            return math.nan
        lw = np.linspace(math.log(1e-9), math.log(1e9), 361)
        w = np.exp(lw)
        lc, D = self._log_chi_real(w)
        valid = np.isfinite(lc) & np.isfinite(D)
        neg = np.flatnonzero(valid & (D <= 0))
        if neg.size == 0 or neg[0] == 0:
            if neg.size and neg[0] == 0:
                raise RuntimeError("upper edge: d log chi/d log w <= 0 already at w = 1e-9")
            if self.atom_loc.size:
                # 1/chi decreases to the largest atom: the continuous part lies below it
                return self._continuous_top_below(float(self.atom_loc.max()))
            if not valid.any():
                raise RuntimeError("upper edge: chi cannot be inverted on the real axis for any "
                                   "w in [1e-9, 1e9] (a factor whose law is numerically "
                                   "degenerate)")
            last = np.flatnonzero(valid)[-1]
            return float(np.exp(-lc[last]))
        i = neg[0]
        a, b = lw[i - 1], lw[i]
        from scipy.optimize import brentq
        ws = brentq(lambda t: float(self._log_chi_real(np.array([math.exp(t)]))[1][0]), a, b,
                    xtol=1e-14, rtol=1e-14, maxiter=200)
        lc1, _ = self._log_chi_real(np.array([math.exp(ws)]))
        return float(np.exp(-lc1[0]))

    def _continuous_top_below(self, a):
        """Top of the continuous part when the largest atom ``a`` is the top of the support.

        Closed factors only: between that top and ``a``, ``w = psi(1/x)`` is real and negative
        and ``x = 1/chi(w)``; the top is the largest critical value of ``1/chi`` on ``w < 0``
        below ``a``. Otherwise: the largest x < a (farther than 1e-4 a from the atoms) where the
        density exceeds 1e-5 of ``continuous_mass/a`` (log grid, then bisection)."""
        self._edge = a                      # provisional: the solver's starting height uses it
        if not self.groups:
            from scipy.optimize import brentq

            def parts(w):
                w = np.asarray(w, complex)
                lc = np.log(w) - np.log1p(w) + self.C + (np.log1p(w[:, None] * self.A) @ self.E
                                                         if self.A.size else 0.0)
                D = (1.0 / (1.0 + w) + ((w[:, None] * self.A / (1.0 + w[:, None] * self.A))
                                        @ self.E if self.A.size else 0.0)).real
                sign = np.cos(lc.imag)      # chi > 0 where the phase is a multiple of 2 pi
                return np.exp(-lc.real), D, sign

            poles = np.concatenate([[1.0], 1.0 / self.A[self.A > 0]]) if self.A.size else np.ones(1)
            ps_ = np.sort(np.log(poles))
            extra = [np.linspace(a_, b_, 402)[1:-1] for a_, b_ in zip(ps_[:-1], ps_[1:]) if b_ > a_]
            near = 10.0 ** -np.linspace(0.5, 13, 251)          # approach every pole from both sides
            extra += [lp + np.log1p(near) for lp in ps_] + [lp + np.log1p(-near) for lp in ps_]
            lw = np.unique(np.concatenate([np.linspace(math.log(1e-12), math.log(1e12), 4001)]
                                          + extra))
            w = -np.exp(lw)
            with np.errstate(all="ignore"):
                xw, D, sg = parts(w)
            best = 0.0
            for i in np.flatnonzero(np.sign(D[:-1]) != np.sign(D[1:])):
                if not (np.isfinite(D[i]) and np.isfinite(D[i + 1])):
                    continue
                if np.any((poles >= -w[i]) & (poles <= -w[i + 1])):
                    continue
                if sg[i] < 0.5 or sg[i + 1] < 0.5:
                    continue
                t = brentq(lambda tt: float(parts(np.array([-math.exp(tt)]))[1][0]),
                           lw[i], lw[i + 1], xtol=1e-15, rtol=1e-15)
                xc = float(parts(np.array([-math.exp(t)]))[0][0])
                if 0 < xc < a * (1 - 1e-12):
                    best = max(best, xc)
            return best
        thr = 1e-5 * self.continuous_mass / a
        xs = a * (1.0 - np.logspace(-10, 0, 161)[::-1][1:])
        xs = np.unique(np.concatenate([xs, a * np.logspace(-12, 0, 121)[:-1]]))
        xs = xs[(xs > 0) & (np.min(np.abs(xs[:, None] - self.atom_loc[None, :]), axis=1)
                            > 1e-4 * a)]
        rho = np.nan_to_num(self.density(xs))
        pos = np.flatnonzero(rho > thr)
        if pos.size == 0:
            return 0.0
        i = pos[-1]
        if i == xs.size - 1:
            return float(xs[-1])
        lo, hi = xs[i], xs[i + 1]
        for _ in range(60):
            m = 0.5 * (lo + hi)
            if self.density(np.array([m]))[0] > thr:
                lo = m
            else:
                hi = m
            if hi - lo <= 1e-12 * hi:
                break
        return float(lo)

    def upper_edge_continuous(self):
        if self._edge is None:
            self._edge = self._upper_edge_continuous()
        return self._edge

    def support_top(self):
        """Largest point of the support (atoms included)."""
        top = self.upper_edge_continuous()
        if self.atom_loc.size:
            top = np.nanmax([top, float(self.atom_loc.max())])
        return float(top)
