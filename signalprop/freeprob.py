"""Free multiplicative convolution of laws on ``[0, inf)``: S-transforms, exact moment series,
atoms, support edges, and the numerical solution of the functional equation for densities and
distribution functions.

Transforms (Pennington, Schoenholz & Ganguli 2017, arXiv 1711.04735, eqs. 7-10; Voiculescu 1987)
of a law ``mu`` of a non-negative variable ``X`` with moments ``m_k``:

    psi(zeta) = E[zeta X / (1 - zeta X)] = sum_{k>=1} m_k zeta^k     (moment generating function)
    M(z) = z G(z) - 1 = psi(1/z),   G(z) = E[1/(z - X)]              (their eqs. 7-8)
    chi = psi^{-1},   S(w) = chi(w) (1 + w) / w                      (their eq. 9)

and ``S_{XY} = S_X S_Y`` for free ``X, Y`` (Voiculescu 1987; their eqs. 10-12). Writing
``R(w) = (1 + w)/S(w) = w/chi(w)``, the inverse relation is ``psi = zeta R(psi)``, so by Lagrange
inversion

    m_k = (1/k) [w^{k-1}] R(w)^k                                      (their eq. 18)

(exact moments of every order; Fuss-Catalan ``binom((L+1)k, k)/(Lk + 1)`` for
``S = (1 + w)^{-L}``).

**The product.** A :class:`FreeProduct` is the law whose S-transform is

    S(w) = exp(C) prod_i (1 + A_i w)^{E_i} prod_g S_g(r_g w)^{n_g}

with a closed part (Marchenko-Pastur, point masses, Bernoulli laws and the change of dimension of
rectangular products are all of this form) and numerical factors ``S_g``: laws given by atoms and
a mixture of narrow uniform components (:class:`Law`; for a network, the law of
``phi'(h)^2``). ``r_g`` rescales the argument (the dimension of the space where factor ``g`` acts,
relative to that of the product: ``psi`` scales by ``1/r`` when a law is read in a space ``r``
times larger). For a numerical factor ``S_g(u) = zeta_g (1 + u)/u`` with ``psi_g(zeta_g) = u``,
so the product's ``psi`` at ``zeta = 1/z`` solves, for ``w`` and the ``zeta_g``,

    log w - log(1 + w) + log S(w) = log zeta,      log psi_g(zeta_g) = log(r_g w)   (all g).

**Solving it.** Newton in ``u = log(w + kappa)`` (``kappa`` = 1 minus the mass of the atom at
0) and the ``log zeta_g`` (arrowhead Jacobian), continued down the vertical path from
``z = x + 16 i x_max`` (exact moment series) to ``y = eps x``, ``eps = 1e-10``, steps split on
failure or on leaving the physical region (Belinschi & Bercovici 2007: ``arg omega(z) >= arg z``);
density ``-Im G_c(x + i eps x)/pi``, ``G_c = (w + kappa)/z`` less the nonzero atoms; CDF

    F_c(x) = M_c + (1/pi) int_0^inf Re[G_c(x + iy) - M_c/(x + iy)] dy,

by the trapezoidal rule in ``log y`` (error ``~exp(-pi^2/h)``, about ``3e-9`` at ``h = 0.5``).

**Atoms** (Bercovici & Voiculescu 1993): at 0 of mass ``1 - min(1, min_f (1 - alpha_f)/r_f)``;
at ``prod a_f`` of mass ``1 - sum_f (1 - mu_f({a_f}))/r_f`` when positive. **Upper edge**:
``1/chi(w*)`` at the first critical point ``w* > 0`` of ``chi``, else ``w -> infinity``
(LITERATURE.md section 3). Derivations, the continuation rules and the error bound:
docs/theory/free-probability.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import special

__all__ = ["Law", "pushforward_law", "ClosedFactor", "marchenko_pastur", "bernoulli",
           "point_mass", "dimension_change", "FreeProduct", "fuss_catalan",
           "series_reversion", "lagrange_moments"]

Z_MAX = 10.0                  # the Gaussian is truncated at |z| <= Z_MAX (mass 1.5e-23 left out)
_EPS_Y = 1e-10                # final height of the vertical path, relative to x
_H_CDF = 0.5                  # trapezoidal step in log y for the distribution function
_H_DENSITY = 1.5              # largest step in log y on the way down for the density alone
_NEWTON_TOL = 1e-12
_SIGN_TOL = 1e-9
_ATOM_GAP = 1e-7              # the continuous density is not resolved this close to an atom


# =============================================================================================
# power series: float64 numpy arrays, or numpy object arrays of mpmath numbers


def _zeros(n, like):
    if like.dtype == object:
        import mpmath as mp
        return np.array([mp.mpf(0)] * n, dtype=object)
    return np.zeros(n, dtype=like.dtype)


def _ser_mul(a, b, n):
    return np.convolve(a[:n], b[:n])[:n]


def _ser_inv(a, n):
    """1/a as a series (a[0] != 0)."""
    b = _zeros(n, a)
    b[0] = 1 / a[0]
    for k in range(1, n):
        m = min(k, len(a) - 1)
        b[k] = -np.dot(a[1:m + 1], b[k - 1::-1][:m]) / a[0]
    return b


def _ser_log1(a, n):
    """log(a) for a[0] == 1: (log a)' = a'/a."""
    da = np.array([k * a[k] for k in range(1, min(n, len(a)))], dtype=a.dtype)
    if da.size == 0:
        return _zeros(n, a)
    q = _ser_mul(da, _ser_inv(a, n), n - 1)
    out = _zeros(n, a)
    for k in range(1, n):
        out[k] = q[k - 1] / k
    return out


def _ser_exp0(l, n):
    """exp(l) for l[0] == 0: b_k = (1/k) sum_{j=1}^k j l_j b_{k-j}."""
    b = _zeros(n, l)
    b[0] = 1 + 0 * l[0]
    jl = np.array([j * l[j] for j in range(n)], dtype=l.dtype)
    for k in range(1, n):
        b[k] = np.dot(jl[1:k + 1], b[k - 1::-1]) / k
    return b


def _log1p_linear(A, n, like):
    """Coefficients of log(1 + A w): 0, A, -A^2/2, A^3/3, ..."""
    out = _zeros(n, like)
    p = A
    for k in range(1, n):
        out[k] = p / k if k % 2 else -p / k
        p = p * A
    return out


def series_reversion(psi, n):
    """Compositional inverse chi of ``psi`` (psi[0] = 0, psi[1] != 0) to order ``n - 1``, by
    Lagrange inversion: [w^k] chi = (1/k) [zeta^{k-1}] (zeta/psi(zeta))^k."""
    g = np.asarray(psi[1:n + 1])
    h = _ser_inv(g, n)
    out = _zeros(n, h)
    P = h.copy()
    for k in range(1, n):
        out[k] = P[k - 1] / k
        P = _ser_mul(P, h, n)
    return out


def lagrange_moments(ell, kmax, log=True):
    """Moments ``mt_k = (1/k) [w^{k-1}] exp(k ell(w))``, k = 1..kmax (``ell[0] = 0``).

    In float64 the k-th coefficient is computed in the rescaled variable ``w = tau t`` with
    ``tau = 1/(k max(ell_1, 1))`` (so the exponent stays of order one and nothing overflows) and
    the logarithms are returned when ``log`` is true. With mpmath object arrays the values
    themselves are returned."""
    ell = np.asarray(ell)
    out = []
    if ell.dtype == object:
        for k in range(1, kmax + 1):
            b = _ser_exp0(np.array([k * c for c in ell[:k]], dtype=object), k)
            out.append(b[k - 1] / k)
        return out
    l1 = max(float(ell[1]) if len(ell) > 1 else 0.0, 1.0)
    res = np.empty(kmax)
    for k in range(1, kmax + 1):
        tau = 1.0 / (k * l1)
        powers = tau ** np.arange(k)
        b = _ser_exp0(k * ell[:k] * powers, k)
        val = b[k - 1] / k
        with np.errstate(divide="ignore", invalid="ignore"):
            res[k - 1] = (math.log(val) if val > 0 else -math.inf) - (k - 1) * math.log(tau)
    return res if log else np.exp(res)


def fuss_catalan(L: int, k: int) -> int:
    """The Fuss-Catalan number binom((L+1)k, k)/(Lk + 1): the k-th moment of the product of L
    free Marchenko-Pastur laws of ratio 1 (the limiting spectrum of ``J J^T`` of a deep linear
    network with Gaussian weights, ``sigma_w = 1``)."""
    return math.comb((L + 1) * k, k) // (L * k + 1)


# =============================================================================================
# the uniform-mixture components: psi of a uniform law on [c - d, c + d]


def _atanh_parts(s):
    """g(s) - 1 and g'(s), g(s) = atanh(s)/s (series for |s| < 0.05, where the sixth term is below
    1e-14 of the first)."""
    t2 = s * s
    g1 = t2 * (1 / 3 + t2 * (1 / 5 + t2 * (1 / 7 + t2 * (1 / 9 + t2 / 11))))
    gp = s * (2 / 3 + t2 * (4 / 5 + t2 * (6 / 7 + t2 * (8 / 9 + t2 * 10 / 11))))
    big = (t2.real * t2.real + t2.imag * t2.imag) >= 0.05 ** 4 if np.iscomplexobj(t2) \
        else np.abs(t2) >= 0.05 ** 2
    if big.any():
        t = s[big]
        g = np.arctanh(t) / t
        g1[big] = g - 1
        gp[big] = (1 / (1 - t * t) - g) / t
    return g1, gp


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


def _recip(den):
    """1/den for complex arrays (faster than numpy's complex division)."""
    if not np.iscomplexobj(den):
        return 1.0 / den
    r, i = den.real, den.imag
    m = 1.0 / (r * r + i * i)
    return r * m - 1j * (i * m)


@dataclass(frozen=True, eq=False)
class Law:
    """A probability law on ``[0, inf)``: an atom at 0, nonzero atoms, and a mixture of uniform
    components on ``[c_j - d_j, c_j + d_j]`` with masses ``p_j`` (the continuous part), plus its
    exact moments ``moments[k] = E[X^k]`` (k = 0..K) where they are known more accurately than
    the mixture's (:func:`pushforward_law`).

    ``psi(zeta) = sum_a m_a zeta a/(1 - zeta a) + sum_j p_j [-1 + atanh(s_j)/(zeta d_j)]`` with
    ``s_j = zeta d_j/(1 - zeta c_j)`` (the exact transform of the mixture; finite up to the real
    axis inside the support, unlike a sum of atoms).
    """

    zero_mass: float
    atom_loc: np.ndarray
    atom_mass: np.ndarray
    c: np.ndarray
    d: np.ndarray
    p: np.ndarray
    moments: np.ndarray
    top: float                  # largest point of the support (of the mixture)
    reaches_zero: bool = False  # the continuous part of the exact law extends down to 0
    label: str = ""

    @property
    def mean(self) -> float:
        return float(self.moments[1])

    @property
    def continuous_mass(self) -> float:
        return float(self.p.sum())

    def bernoulli(self):
        """``(a, p)`` when the law is ``p delta_a + (1 - p) delta_0`` (a point mass when p = 1)."""
        if self.p.size == 0 and self.atom_loc.size == 1:
            return float(self.atom_loc[0]), 1.0 - float(self.zero_mass)
        return None

    def psi(self, zeta):
        """(psi(zeta), psi'(zeta)) for a 1-D array of (complex or real) ``zeta``."""
        ps, _, dps = self.psi3(zeta)
        return ps, dps

    def psi3(self, zeta):
        """(psi, 1 + psi, psi') at ``zeta``, each summed without cancellation:
        ``psi = sum m zeta a/(1 - zeta a) + ...`` and ``1 + psi = mu({0}) + sum m/(1 - zeta a) + ...``
        (so both are accurate to rounding, near ``zeta = 0`` and near ``psi = -1`` alike)."""
        z = np.asarray(zeta)[:, None]
        dt = z.dtype
        out = np.zeros(z.shape[0], dtype=dt)
        one = np.full(z.shape[0], self.zero_mass, dtype=dt)
        dout = np.zeros(z.shape[0], dtype=dt)
        if self.atom_loc.size:
            a = self.atom_loc
            m = self.atom_mass
            A = _recip(1.0 - z * a)
            out = out + np.einsum("ij,j->i", z * a * A, m)    # einsum: no BLAS threads for
            one = one + np.einsum("ij,j->i", A, m)            # these small products
            dout = dout + np.einsum("ij,j->i", a * A * A, m)
        if self.c.size:
            c, d = self.c, self.d
            p = self.p
            zc = z * c
            A = _recip(1.0 - zc)
            g1, gp = _atanh_parts(z * d * A)
            out = out + np.einsum("ij,j->i", A * (zc + g1), p)
            one = one + np.einsum("ij,j->i", A * (1.0 + g1), p)
            dout = dout + np.einsum("ij,j->i", A * A * (c * (1.0 + g1) + d * A * gp), p)
        return out, one, dout

    def invert_real(self, u, iters=100):
        """The ``zeta`` in ``(0, 1/top)`` with ``psi(zeta) = u`` for each ``u > 0`` (psi increases
        there from 0 to +inf), by safeguarded Newton on ``t = logit(zeta top)`` (bisection when a
        step leaves the bracket). Entries whose ``u`` exceeds ``psi`` at ``1 - zeta top = 2.3e-16``
        are returned as nan."""
        u = np.asarray(u, float)
        top = self.top
        lo = np.full(u.shape, -800.0)
        hi = np.full(u.shape, 36.0)
        ph, _ = self.psi(special.expit(hi) / top)
        bad = ~(ph > u)
        t = np.clip(np.log(np.maximum(u, 1e-300) / (self.mean / top)), -700.0, 30.0)
        act = np.flatnonzero(~bad)
        for _ in range(iters):
            if act.size == 0:
                break
            ta = t[act]
            e = special.expit(ta)
            z = e / top
            ps, dps = self.psi(z)
            f = ps - u[act]
            up = f > 0
            hi[act] = np.where(up, ta, hi[act])
            lo[act] = np.where(up, lo[act], ta)
            df = dps * z * (1.0 - e)
            with np.errstate(divide="ignore", invalid="ignore"):
                tn = ta - f / df
            out = ~np.isfinite(tn) | (tn <= lo[act]) | (tn >= hi[act])
            tn = np.where(out, 0.5 * (lo[act] + hi[act]), tn)
            done = np.abs(tn - ta) <= 1e-14 * np.maximum(1.0, np.abs(ta))
            t[act] = tn
            act = act[~done]
        zeta = special.expit(t) / top
        zeta[bad] = np.nan
        return zeta


def pushforward_law(f: Callable, *, kinks: Sequence[float] = (), scale: float = 1.0,
                    n_moments: int = 64, n_uniform: int = 96, n_quantile: int = 96,
                    label: str = "") -> Law:
    """The law of ``f(Z)``, ``Z ~ N(0, 1)`` truncated to ``|Z| <= 10`` (mass 1.5e-23 dropped), for
    a vectorised ``f >= 0`` (here ``f(z) = phi'(sqrt(q) z)^2``).

    Composite 8-point Gauss-Legendre panels in ``z``: a uniform grid of width 0.02, the points
    ``+-2^(j/4)/scale`` (features of ``phi`` at ``|x| = 2^(j/4)`` when ``z = x/scale``), the
    ``kinks``, and a geometric refinement around the global maximum of ``f`` (refined by
    bounded minimisation). Panels on which ``f`` is constant (to 1e-14) are **atoms** (exact: relu,
    hard tanh, leaky relu, elu's linear side); the others are grouped into bins in value (the union
    of ``n_uniform`` equal-width bins, ``n_quantile`` equal-mass bins and geometric refinements at
    both ends of the range), and each bin becomes a uniform component with the bin's exact mass,
    mean and variance. So the mixture has the exact mass, mean and variance of ``f(Z)`` and its
    higher moments differ by O(bin width^3); ``moments`` holds the exact ones (quadrature,
    ~1e-15 relative).
    """
    from scipy import optimize

    t_gl, w_gl = np.polynomial.legendre.leggauss(8)
    base = np.linspace(-Z_MAX, Z_MAX, 1001)
    j = np.arange(-48, 40) / 4.0
    feat = 2.0 ** j / scale
    feat = feat[feat < Z_MAX]
    bp = np.concatenate([base, feat, -feat, np.asarray(kinks, float) / scale, [0.0]])
    bp = np.unique(np.clip(bp, -Z_MAX, Z_MAX))

    def panels(bp):
        half = 0.5 * np.diff(bp)
        mid = 0.5 * (bp[1:] + bp[:-1])
        z = mid[:, None] + half[:, None] * t_gl
        w = half[:, None] * w_gl * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        return z, w

    z, w = panels(bp)
    lam = np.asarray(f(z), float)
    if not np.all(np.isfinite(lam)) or np.any(lam < 0):
        raise ValueError("the law of phi'(h)^2 needs a finite phi' on |z| <= 10")
    # refine around the global maximum (the top of the support decides the upper edge)
    ptp = lam.max(axis=1) - lam.min(axis=1)
    scale_l = max(float(lam.max()), 1e-300)
    flat = ptp <= 1e-14 * np.maximum(np.abs(lam).max(axis=1), 1e-300)
    cont = ~flat
    if cont.any():
        i, k = np.unravel_index(np.argmax(np.where(cont[:, None], lam, -np.inf)), lam.shape)
        a, b = bp[max(i - 1, 0)], bp[min(i + 2, bp.size - 1)]
        res = optimize.minimize_scalar(lambda t: -float(f(np.array([t]))[0]), bounds=(a, b),
                                       method="bounded", options={"xatol": 1e-13})
        zs = float(res.x) if -res.fun >= lam[i, k] else float(z[i, k])
        refine = zs + 0.02 * np.concatenate([2.0 ** -np.arange(1, 25), -(2.0 ** -np.arange(1, 25))])
        bp = np.unique(np.clip(np.concatenate([bp, refine, [zs]]), -Z_MAX, Z_MAX))
        z, w = panels(bp)
        lam = np.asarray(f(z), float)
        ptp = lam.max(axis=1) - lam.min(axis=1)
        flat = ptp <= 1e-14 * np.maximum(np.abs(lam).max(axis=1), 1e-300)
        cont = ~flat
    mass = w.sum(axis=1)
    total = mass.sum()
    w = w / total                                  # renormalise the truncated Gaussian
    mass = mass / total
    moments = np.empty(n_moments + 1)
    lk = np.ones_like(lam)
    for kk in range(n_moments + 1):
        moments[kk] = float(np.sum(w * lk))
        lk = lk * lam
    # atoms
    zero_mass = 0.0
    atoms: dict = {}
    for i in np.flatnonzero(flat):
        v = float(lam[i].mean())
        if v == 0.0 or v <= 1e-300:
            zero_mass += float(mass[i])
            continue
        key = float(f"{v:.13e}")
        atoms[key] = atoms.get(key, 0.0) + float(mass[i])
    if zero_mass < 1e-15:
        zero_mass = 0.0
    atom_loc = np.array(sorted(atoms), float)
    atom_mass = np.array([atoms[k] for k in sorted(atoms)], float)
    # continuous part: bins
    c = d = p = np.zeros(0)
    top_cont = 0.0
    if cont.any():
        pm = mass[cont]
        pmean = (w[cont] * lam[cont]).sum(axis=1) / pm
        psec = (w[cont] * lam[cont] ** 2).sum(axis=1) / pm
        lo, hi = float(lam[cont].min()), float(lam[cont].max())
        top_cont = hi
        span = max(hi - lo, 1e-300)
        order = np.argsort(pmean)
        cum = np.cumsum(pm[order])
        qs = np.interp(np.linspace(0, cum[-1], n_quantile + 1)[1:-1], cum, pmean[order])
        geo = span * 2.0 ** -np.arange(1, 31)
        geo = geo[geo > 1e-14 * max(hi, 1e-300)]
        edges = np.unique(np.concatenate([np.linspace(lo, hi, n_uniform + 1), qs, hi - geo]))
        idx = np.clip(np.searchsorted(edges, pmean, side="right") - 1, 0, edges.size - 2)
        P = np.bincount(idx, weights=pm, minlength=edges.size - 1)
        S1 = np.bincount(idx, weights=pm * pmean, minlength=edges.size - 1)
        S2 = np.bincount(idx, weights=pm * psec, minlength=edges.size - 1)
        keep = P > 0
        P, S1, S2 = P[keep], S1[keep], S2[keep]
        c = S1 / P
        var = np.clip(S2 / P - c * c, 0.0, None)
        d = np.sqrt(3.0 * var)
        d = np.minimum(d, np.minimum(c, np.maximum(hi - c, 0.0)))   # stay within [0, hi]
        p = P
    top = max([top_cont] + ([float(atom_loc.max())] if atom_loc.size else []))
    if top <= 0:
        raise ValueError("phi'(h)^2 vanishes almost surely: the Jacobian is zero")
    # does the continuous part reach 0? (phi'^2 -> 0 in the tails or at an interior zero of phi')
    reaches = False
    if cont.any():
        far = np.asarray(f(np.array([-40.0, 40.0, -1e3, 1e3])), float)
        reaches = bool(np.nanmin(far) <= 1e-12 * top) or bool(lam[cont].min() <= 1e-10 * top)
    return Law(zero_mass=zero_mass, atom_loc=atom_loc, atom_mass=atom_mass, c=c, d=d, p=p,
               moments=moments, top=top, reaches_zero=reaches, label=label)


# =============================================================================================
# closed-form factors: S(u) = exp(C) prod (1 + A_i u)^{E_i}


@dataclass(frozen=True)
class ClosedFactor:
    """``S(u) = exp(C) prod_i (1 + A_i u)^{E_i}`` with its atom at 0 (mass ``zero_mass``) and
    nonzero atoms ``[(location, mass)]`` (for the atom rule of the module docstring)."""

    C: float
    A: tuple
    E: tuple
    zero_mass: float = 0.0
    atoms: tuple = ()
    label: str = ""

    @property
    def mean(self) -> float:
        return math.exp(-self.C)


def marchenko_pastur(mean: float, ratio: float, label: str = "") -> ClosedFactor:
    """``W^T W`` (dimension n) for ``W`` (m x n) with i.i.d. entries: the Marchenko-Pastur law of
    mean ``mean`` and ``ratio = n/m``; ``S(u) = 1/(mean (1 + ratio u))``, normalised variance
    ``ratio``, atom at 0 of mass ``max(0, 1 - 1/ratio)``."""
    return ClosedFactor(C=-math.log(mean), A=(ratio,), E=(-1,),
                        zero_mass=max(0.0, 1.0 - 1.0 / ratio), atoms=(), label=label)


def bernoulli(a: float, p: float, label: str = "") -> ClosedFactor:
    """``p delta_a + (1 - p) delta_0``: ``S(u) = (1 + u)/(a (p + u))`` (Pennington et al. 2017,
    section 3 for a = 1); a point mass when p = 1."""
    if p >= 1.0 - 1e-13:
        return point_mass(a, label)
    return ClosedFactor(C=-math.log(a * p), A=(1.0, 1.0 / p), E=(1, -1), zero_mass=1.0 - p,
                        atoms=((a, p),), label=label)


def point_mass(a: float, label: str = "") -> ClosedFactor:
    """``delta_a``: ``S = 1/a``."""
    return ClosedFactor(C=-math.log(a), A=(), E=(), zero_mass=0.0, atoms=((a, 1.0),), label=label)


def dimension_change(c0: float) -> ClosedFactor:
    """The change of space of a product ``J`` (N_L x N_0) read as ``J J^T`` in dimension N_L:
    ``S(w) = (1 + w)/(c0 + w)``, ``c0 = N_0/N_L`` (the telescoped product of the conversions
    ``S_new(w) = S_old(w/c)(1 + w)/(c + w)`` of each layer, ``c = N_{l-1}/N_l``)."""
    if c0 == 1.0:
        return ClosedFactor(C=0.0, A=(), E=(), zero_mass=0.0, atoms=((1.0, 1.0),), label="dim")
    return ClosedFactor(C=-math.log(c0), A=(1.0, 1.0 / c0), E=(1, -1),
                        zero_mass=max(0.0, 1.0 - c0), atoms=((1.0, c0),), label="dim")


# =============================================================================================
# the product


class FreeProduct:
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
