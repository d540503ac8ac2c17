"""The factor laws of a free product and their transforms: :class:`Law` (atoms and a mixture of
uniform components, with the exact ``psi``), :func:`pushforward_law` (the law of ``f(Z)``,
``Z ~ N(0, 1)``) and the closed-form factors ``S(u) = exp(C) prod_i (1 + A_i u)^{E_i}``
(:class:`ClosedFactor`: Marchenko-Pastur, Bernoulli, point mass, change of dimension;
Pennington, Schoenholz & Ganguli 2017, arXiv 1711.04735, eqs. 7-12). See the package docstring
of :mod:`signalprop.freeprob`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import special

Z_MAX = 10.0                  # the Gaussian is truncated at |z| <= Z_MAX (mass 1.5e-23 left out)


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


