"""The functional equation of a free product and its numerical solution: Newton's method in
``u = log(w + kappa)`` and the ``log zeta_g`` (arrowhead Jacobian), the physical-branch test
(Belinschi & Bercovici 2007, Thm. 3.6) and the continuation along the vertical paths
``z = x + i y`` from the moment series down to ``y = eps x``. The equations, the continuation
rules and the error bound are in the package docstring of :mod:`signalprop.freeprob` and in
docs/theory/free-probability.md."""

from __future__ import annotations

import math

import numpy as np

_EPS_Y = 1e-10                # final height of the vertical path, relative to x
_H_CDF = 0.5                  # trapezoidal step in log y for the distribution function
_H_DENSITY = 1.5              # largest step in log y on the way down for the density alone
_NEWTON_TOL = 1e-12
_SIGN_TOL = 1e-9
_ATOM_GAP = 1e-7              # the continuous density is not resolved this close to an atom


def _small_move(un, vn, u, v, lim):
    """A continuation step is accepted only if no unknown (log(w + kappa), log zeta_g) moved by
    more than ``lim``: a larger move is a jump to another solution of the equations (they have
    several in the half-planes), so the step is split."""
    d = np.abs(un - u)
    if v.shape[0]:
        d = np.maximum(d, np.abs(vn - v).max(axis=0))
    return d <= lim


def _arg_lower(a):
    """arg a in (-3 pi/2, pi/2]: arguments just above -pi (lower half-plane, next to the negative
    real axis) are not wrapped to +pi by rounding."""
    ang = np.angle(a)
    return np.where(ang > 0.5 * math.pi, ang - 2 * math.pi, ang)



class _Subordination:
    """The solver of :class:`~signalprop.freeprob.product.FreeProduct` (a base class that holds
    no state): its methods read the product's closed part (``C``, ``A``, ``E``), its ``groups``,
    its atoms (``kappa``, ``log_kappa``, ``zero_mass``, ``atom_loc``, ``atom_mass``,
    ``continuous_mass``) and call its ``log_moments``, ``_continuous_moments`` and
    ``support_top``."""

    # ---------------------------------------------------------------------------------------
    # the functional equation

    def _closed_logS(self, w, t=None):
        """(C + sum E log(1 + A w), sum E A w/(1 + A w)); ``log(1 + w) = t`` is used where
        ``A = 1`` (exact even when w is close to -1)."""
        if self.A.size == 0:
            return np.full(w.shape, self.C, dtype=w.dtype), np.zeros(w.shape, dtype=w.dtype)
        Aw = w[:, None] * self.A
        L1 = np.log1p(Aw)
        if t is not None:
            one = self.A == 1.0
            if one.any():
                L1[:, one] = t[:, None]
        E = self.E.astype(w.dtype)
        return self.C + L1 @ E, (Aw / (1.0 + Aw)) @ E

    @staticmethod
    def _wrap(x):
        im = np.mod(x.imag + np.pi, 2 * np.pi) - np.pi
        return x.real + 1j * im

    def _w_of(self, u):
        """w from u = log(w + kappa), accurate for small w too."""
        return self.kappa * np.expm1(u - self.log_kappa)

    def _log1p_Aw(self, A, w, u, lopw):
        """log(1 + A w), exact where ``1 + A w`` is small (``A = 1/kappa``: ``u - log kappa``;
        ``A = 1``: ``log(1 + w)`` passed in as ``lopw``)."""
        if A == 1.0:
            return lopw
        if abs(A * self.kappa - 1.0) <= 1e-13:
            return u - self.log_kappa
        return np.log1p(A * w)

    def _system(self, u, v, lz):
        """The residuals and the arrowhead Jacobian at (u, v) for log zeta = lz:
        (R0, [F_g], [a_g], [c_g], dR0/du) with ``F_g`` depending on ``v_g`` (coefficient ``a_g``)
        and ``u`` (``c_g``) only."""
        w = self._w_of(u)
        ewk = np.exp(u)                      # w + kappa = dw/du
        lw = np.log(w)
        lopw = u if self.kappa == 1.0 else np.log1p(w)   # log(1 + w)
        if self.A.size:
            L1 = np.stack([self._log1p_Aw(a, w, u, lopw) for a in self.A], axis=1)
            cls = self.C + L1 @ self.E.astype(complex)
            Aw = w[:, None] * self.A
            cld = (Aw / (1.0 + Aw)) @ self.E.astype(complex)
        else:
            cls = np.full(u.size, self.C, complex)
            cld = np.zeros(u.size, complex)
        R0 = lw - lopw + cls - lz
        Bu = 1.0 / (1.0 + w) + cld           # d R0 / d log w (zeta_g fixed)
        Fs, ags, cgs = [], [], []
        for g, (law, ng, rg) in enumerate(self.groups):
            zg = np.exp(v[g])
            ps, ops, dps_ = law.psi3(zg)
            rw = rg * w
            l1rw = self._log1p_Aw(rg, w, u, lopw)
            lrw = lw + math.log(rg)
            R0 = R0 + ng * (v[g] + l1rw - lrw)
            Bu = Bu - ng / (1.0 + rw)
            with np.errstate(divide="ignore", invalid="ignore"):
                # log(psi_g/(r w)): near psi_g = r w = -1 from (1 + psi_g) - (1 + r w), both exact
                opr = np.exp(u) if (rg == 1.0 and self.kappa == 1.0) else 1.0 + rw
                near = np.abs(opr) < 0.5
                lq = np.where(near, np.log1p((ops - opr) / rw), np.log(ps) - lrw)
                Fs.append(self._wrap(lq - np.log(ops) + l1rw))
                ags.append(zg * dps_ / (ps * ops))
                cgs.append(-ewk / (w * (1.0 + rw)))
        with np.errstate(divide="ignore", invalid="ignore"):
            Bt = Bu * ewk / w
        return self._wrap(R0), Fs, ags, cgs, Bt

    def _dlogchi(self, u, v):
        """d log chi / d log w at the solution (u, v): real and of the sign of w on the real axis
        outside the support for the physical branch (psi' > 0 there)."""
        _, Fs, ags, cgs, Bt = self._system(u, v, np.zeros(u.size, complex))
        tot = Bt.copy()
        for (law, ng, rg), ag, cg in zip(self.groups, ags, cgs):
            tot = tot - ng * cg / ag
        w = self._w_of(u)
        return tot * w / np.exp(u)

    def _newton(self, zeta, u, v, tol=_NEWTON_TOL, maxit=40):
        """Newton on ``u = log(w + kappa)`` (``kappa = 1 - mass of the atom at 0``) and
        ``v_g = log zeta_g`` at the points ``zeta``.

        ``w = kappa expm1(u - log kappa)`` keeps its relative accuracy both for small ``w`` (far
        from the support) and for ``w`` near ``-kappa`` (below the support, where
        ``w + kappa = x G_c(x) -> 0``); each factor's equation is written as
        ``log(psi_g/(1 + psi_g)) = log(r_g w/(1 + r_g w))`` (equivalent, and accurate in both
        limits). Returns (u, v, ok): ``ok`` where it converged (last step below ``tol``, or
        stalled below 1e-9 at rounding level) on the physical branch (``Im w <= 0``,
        ``Im zeta_g <= 0``). A diverging iterate overflows on its way out; its step is then not
        finite, it is dropped and never marked ``ok``, so floating-point warnings are silenced."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return self._newton_steps(zeta, u, v, tol, maxit)

    def _newton_steps(self, zeta, u, v, tol, maxit):
        n = zeta.size
        G = len(self.groups)
        u = u.astype(complex).copy()
        v = v.astype(complex).copy() if G else np.zeros((0, n), complex)
        ok = np.zeros(n, bool)
        act = np.arange(n)
        lz = np.log(zeta)
        prev = np.full(n, np.inf)
        for it in range(maxit):
            if act.size == 0:
                break
            ta, va = u[act], v[:, act]
            R0, Fs, ags, cgs, Bt = self._system(ta, va, lz[act])
            num = np.zeros(act.size, complex)
            den = np.zeros(act.size, complex)
            for (law, ng, rg), F, ag, cg in zip(self.groups, Fs, ags, cgs):
                num += ng * F / ag
                den += ng * cg / ag
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                du = (-R0 + num) / (Bt - den)
                dv = np.array([(-F - cg * du) / ag for F, ag, cg in zip(Fs, ags, cgs)]) if G \
                    else np.zeros((0, act.size))
            step = np.abs(du)
            if G:
                step = np.maximum(step, np.abs(dv).max(axis=0))
            fin = np.isfinite(step)
            with np.errstate(divide="ignore"):
                scale = np.where(fin & (step > 1.0), 1.0 / np.where(fin, step, 1.0), 1.0)
            u[act] = ta + np.where(fin, du * scale, 0)
            if G:
                v[:, act] = va + np.where(fin, dv * scale, 0)
            # converged, or quadratic convergence predicts the next step below tol
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                pred = np.where(np.isfinite(prev[act]), step ** 3 / prev[act] ** 2, np.inf)
            done = fin & ((step < tol) | ((step < 1e-3) & (pred < 0.1 * tol)))
            if it >= 3:     # rounding-limited: accept a step that stopped shrinking below 1e-9
                done |= fin & (step < 1e-9) & (step > 0.3 * prev[act])
            prev[act] = step
            ok[act[done]] = True
            act = act[~done & fin]
        # the physical branch (Belinschi & Bercovici 2007, "A new approach to subordination
        # results in free probability", Thm. 3.6, written for zeta = 1/z in the lower half-plane):
        # w = psi(zeta) and zeta_g lie in the closed lower half-plane, and
        # arg eta(zeta) <= arg zeta, arg zeta_g <= arg zeta (eta = psi/(1 + psi); zeta_g is the
        # subordination function of factor g, for factors read in the product's own space)
        stol = _SIGN_TOL + 10.0 * tol
        w = self._w_of(u)
        az = np.angle(zeta) + stol
        good = ok & (w.imag <= stol * np.abs(w))
        with np.errstate(divide="ignore", invalid="ignore"):
            good &= _arg_lower(w / (np.exp(u) + self.zero_mass)) <= az    # 1 + w, exactly
        for g, (_, _, rg) in enumerate(self.groups):
            zg = np.exp(v[g])
            good &= zg.imag <= stol * np.abs(zg)
            if rg == 1.0:
                good &= _arg_lower(zg) <= az
        return u, v, good

    def _series_w(self, z, K=60):
        """psi(1/z) from the moment series (|z| >= 2 x_max: error below 2^-K)."""
        zeta = 1.0 / z
        m = np.exp(self.log_moments(K))
        w = np.zeros(z.shape, complex)
        p = np.ones(z.shape, complex)
        for k in range(K):
            p = p * zeta
            w = w + m[k] * p
        return w

    def _initial(self, x, ly):
        """Solution at ``z = x + i e^ly`` (ly <= log(2 x_max)): from the moment series at
        ``y = 16 x_max`` (where ``|psi| <= m_1/(16 x_max)`` is small and every factor's inverse
        is found by its own Newton iteration from ``zeta_g = r_g w/mu_1``), continued down."""
        U = self.support_top()
        ly0 = math.log(16.0 * U)
        if float(ly) >= math.log(2.0 * U) - 1e-12:     # first try where the path starts
            u, v, ok = self._solve_from_series(x, float(ly))
            if ok.all():
                return u, v
        z = x + 1j * math.exp(ly0)
        w = self._series_w(z)
        u = np.log(w + self.kappa)
        vs = []
        for law, _, r in self.groups:
            vg = np.log(r * w / law.mean)
            for _ in range(60):
                ps, dps_ = law.psi(np.exp(vg))
                F = np.log(ps) - np.log(r * w)
                with np.errstate(divide="ignore", invalid="ignore"):
                    dv = -F / (np.exp(vg) * dps_ / ps)
                    dv = np.where(np.abs(dv) > 0.5, 0.5 * dv / np.abs(dv), dv)
                vg = vg + dv
                if np.all(np.abs(dv) < 1e-13):
                    break
            vs.append(vg)
        v = np.array(vs) if vs else np.zeros((0, x.size), complex)
        u, v, ok = self._newton(1.0 / z, u, v)
        if not ok.all():
            raise RuntimeError("free-probability solver: no solution far from the support "
                               f"(x = {x[~ok][:3]})")
        lyv = np.full(x.size, ly0)
        u, v, _, ok = self._advance(x, lyv, np.full(x.size, float(ly)), u, v, None, None, 1e-6)
        if not ok.all():
            raise RuntimeError("free-probability solver: continuation failed far from the "
                               f"support (x = {x[~ok][:3]})")
        return u, v

    def _solve_from_series(self, x, ly):
        """Newton at z = x + i e^ly (|z| >= 2 x_max) from the moment series for w and, for each
        factor, its own damped Newton for zeta_g."""
        z = x + 1j * math.exp(ly)
        w = self._series_w(z)
        u = np.log(w + self.kappa)
        vs = []
        for law, _, r in self.groups:
            vg = np.log(r * w / law.mean)
            for _ in range(60):
                ps, dps_ = law.psi(np.exp(vg))
                with np.errstate(divide="ignore", invalid="ignore"):
                    dv = -(np.log(ps) - np.log(r * w)) / (np.exp(vg) * dps_ / ps)
                    dv = np.where(np.abs(dv) > 0.5, 0.5 * dv / np.abs(dv), dv)
                vg = vg + np.nan_to_num(dv)
                if np.all(np.abs(dv) < 1e-13):
                    break
            vs.append(vg)
        v = np.array(vs) if vs else np.zeros((0, x.size), complex)
        return self._newton(1.0 / z, u, v)

    def _advance(self, x, ly0, ly1, u, v, u_prev, v_prev, tol, depth=0):
        """From log y = ly0 (solution u, v) to ly1 at the points x (arrays); a failed step is
        halved, recursively (to depth 16). Returns (u, v, ly, ok): where ``ok`` is false the
        continuation stalled and (u, v) is the last solution reached, at log y = ``ly``."""
        z = x + 1j * np.exp(ly1)
        if u_prev is None:
            up, vp = u, v
        elif v_prev is None:        # u_prev = (u1, v1, u2, v2): quadratic extrapolation
            u1, v1, u2, v2 = u_prev
            up, vp = 3 * (u - u1) + u2, 3 * (v - v1) + v2
        else:
            up, vp = 2 * u - u_prev, 2 * v - v_prev
        un, vn, ok = self._newton(1.0 / z, up, vp, tol)
        ok &= _small_move(un, vn, u, v, 1.0)
        if u_prev is not None and not ok.all():      # retry without the predictor
            bad = np.flatnonzero(~ok)
            u2, v2, ok2 = self._newton(1.0 / z[bad], u[bad], v[:, bad], tol)
            ok2 &= _small_move(u2, v2, u[bad], v[:, bad], 1.0)
            un[bad[ok2]] = u2[ok2]
            vn[:, bad[ok2]] = v2[:, ok2]
            ok[bad[ok2]] = True
        lyo = np.array(ly1, float, copy=True)
        if not ok.all():
            bad = np.flatnonzero(~ok)
            if depth >= 16:
                un[bad], vn[:, bad], lyo[bad] = u[bad], v[:, bad], ly0[bad]
                return un, vn, lyo, ok
            mid = 0.5 * (ly0[bad] + ly1[bad])
            um, vm, lm, okm = self._advance(x[bad], ly0[bad], mid, u[bad], v[:, bad], None, None,
                                            tol, depth + 1)
            u1, v1, l1, ok1 = um.copy(), vm.copy(), lm.copy(), okm.copy()
            if okm.any():
                g = np.flatnonzero(okm)
                a1, b1, c1, d1 = self._advance(x[bad][g], mid[g], ly1[bad][g], um[g], vm[:, g],
                                               None, None, tol, depth + 1)
                u1[g], v1[:, g], l1[g], ok1[g] = a1, b1, c1, d1
            un[bad], vn[:, bad], lyo[bad] = u1, v1, l1
            ok[bad] = ok1
        return un, vn, lyo, ok

    def _nodes(self, x, h, per_point=False):
        """The log-y grid of the vertical paths: ``K`` equal steps ``hs <= h`` (per point) from
        ``log(2 x_max)`` down to ``log(eps x)``; upwards, nodes ``j = 1..jmax`` to ``1e10 x_max``.

        ``per_point``: each point gets its own number of steps ``K_i = ceil((log(2 x_max) -
        log(eps x_i))/h)`` (returned as the array ``Ks``; ``K`` is their maximum), so that its
        value does not depend on the other points of the call (the quantile solver needs a
        distribution function that is a fixed function of x); otherwise all points share the
        ``K`` of the smallest one."""
        U = self.support_top()
        ly_Y = math.log(2.0 * U)
        ly_end = np.log(_EPS_Y * x)
        if per_point:
            Ks = np.maximum(1, np.ceil((ly_Y - ly_end) / h)).astype(int)
            K = int(Ks.max())
        else:
            K = max(1, int(math.ceil((ly_Y - ly_end.min()) / h)))
            Ks = np.full(x.size, K)
        hs = (ly_Y - ly_end) / Ks
        jmax = np.floor((math.log(1e10 * U) - ly_Y) / hs).astype(int) + 1
        return ly_Y, K, Ks, hs, jmax

    def _descend(self, x, h, record=False, per_point=False):
        """Vertical paths at the points ``x`` from ``y = 2 x_max`` down to ``y = eps x`` on the
        grid of :meth:`_nodes`, each step started from the previous solution (linear predictor)
        and halved recursively on failure.

        Without ``record`` the intermediate points are solved to 1e-9 (they only start the next
        step) and the last one to 1e-12. With ``record`` every node is solved to 1e-12 and the
        trapezoidal rule for ``int_0^inf Re[G_c - M_c/z] dy`` (in log y, with the same step
        continued upwards, values from the moment series above ``2 x_max``, and
        ``int_Y^inf ~ m_1 Im[1/(x+iY)] + m_2 Im[(x+iY)^-2]/2`` beyond the last node) is
        accumulated. Returns (u, v, ly, integral): ``ly`` is the log y where each path ended
        (``log(eps x)`` unless the continuation stalled near an edge of the support).
        ``per_point`` (with ``record``): the step of each path depends on its own x only
        (:meth:`_nodes`)."""
        ly_Y, K, Ks, hs, jmax = self._nodes(x, h, per_point and record)
        integ = np.zeros(x.size)
        if record:
            mc = self._continuous_moments(2)
            for j in range(1, int(jmax.max()) + 1):
                sel = j <= jmax
                y = np.exp(ly_Y + j * hs[sel])
                zs = x[sel] + 1j * y
                f = self._cdf_f(x[sel], y, np.log(self._series_w(zs, 60) + self.kappa))
                last = j == jmax[sel]
                integ[sel] += np.where(last, 0.5, 1.0) * f
                # beyond the last node: int_Y^inf Re[z^-(k+1)] dy = Im[(x+iY)^-k]/k
                tail = mc[0] * (1.0 / zs).imag + mc[1] * (zs ** -2).imag / 2
                integ[sel] += np.where(last, tail / hs[sel], 0.0)
        ly = np.full(x.size, ly_Y)
        u, v = self._initial(x, ly_Y)
        u, v, _ = self._newton(1.0 / (x + 1j * np.exp(ly_Y)), u, v)   # polish to 1e-12
        if record:
            integ += self._cdf_f(x, np.exp(ly), u)
        else:
            # density only: equal steps down to y = 1e-3 x, then one step to eps x (there the
            # solution hardly moves; a step that fails is split as usual)
            ly_mid = np.log(1e-3 * x)
            K = max(1, int(math.ceil((ly_Y - ly_mid.min()) / h)))
            hs = np.maximum(ly_Y - ly_mid, 0.0) / K
            K += 1
        alive = np.ones(x.size, bool)
        hist = []                   # previous nodes, for the predictor
        for k in range(1, K + 1):
            idx = np.flatnonzero(alive)
            if idx.size == 0:
                break
            if not record and k == K:
                ly1 = np.log(_EPS_Y * x[idx])
                hist = []
            else:
                ly1 = ly_Y - k * hs[idx]
            tol = _NEWTON_TOL if (record or k == K) else 1e-7
            if len(hist) >= 2:
                up = (hist[-1][0][idx], hist[-1][1][:, idx], hist[-2][0][idx], hist[-2][1][:, idx])
                vp = None
            elif hist:
                up, vp = hist[-1][0][idx], hist[-1][1][:, idx]
            else:
                up = vp = None
            un, vn, lyn, ok = self._advance(x[idx], ly[idx], ly1, u[idx], v[:, idx], up, vp, tol)
            hist = (hist + [(u.copy(), v.copy())])[-2:]
            u[idx], v[:, idx], ly[idx] = un, vn, lyn
            if record:
                g = idx[ok]
                wgt = np.where(k == Ks[g], 0.5, 1.0)       # the last node of each path: half
                integ[g] += wgt * self._cdf_f(x[g], np.exp(ly[g]), u[g])
                st = idx[~ok]           # stalled: half the last node, and the rest as a rectangle
                if st.size:
                    f = self._cdf_f(x[st], np.exp(ly[st]), u[st])
                    integ[st] += -0.5 * f + f / hs[st]
            alive[idx[~ok]] = False
            # x G_c below 1e-13: far below the support, where float64 no longer resolves the
            # equation; density and distribution function are 0 there (see density)
            alive[idx[np.abs(np.exp(un)) < 1e-13 * self.kappa]] = False
            if record:
                alive[idx[k >= Ks[idx]]] = False            # its path has reached eps x
        if record:
            integ = integ * hs
        return u, v, ly, integ

    def _Gc(self, x, y, u):
        """Cauchy transform of the continuous part: G - mu({0})/z - atoms, where
        ``1 + w - mu({0}) = w + kappa = exp(u)``."""
        z = x + 1j * y
        Gc = np.exp(u) / z
        for a, m in zip(self.atom_loc, self.atom_mass):
            Gc = Gc - m / (z - a)
        return Gc, z

    def _cdf_f(self, x, y, u):
        Gc, z = self._Gc(x, y, u)
        return y * (Gc - self.continuous_mass / z).real
