"""Random-matrix theory of the input-output Jacobian: the limiting law of the squared singular
values of ``J = D_L W_L ... D_1 W_1`` (``D_l = diag(phi_l'(h^l))``), and dynamical isometry.

Pennington, Schoenholz & Ganguli 2017 ("Resurrecting the sigmoid", arXiv 1711.04735, eqs. 7-12)
and 2018 ("The emergence of spectral universality in deep networks", arXiv 1802.09979): in the
large-width limit the factors ``W_l W_l^T`` and ``D_l^2`` are asymptotically free, so the
S-transform of ``J J^T`` is the product of theirs (Voiculescu 1987):

    S_{JJ^T}(w) = S_dim(w) prod_l S_{D_l^2}(w N_L/N_l) S_{W_l^T W_l}(w N_L/N_{l-1}).

* ``D_l^2`` is the law of ``phi_l'(h)^2``, ``h ~ N(0, q^l)`` at each layer's own ``q^l`` from the
  mean-field profile (:func:`signalprop.meanfield.predict`; not only at ``q*``): a numerical law
  (:func:`signalprop.freeprob.pushforward_law`) whose atoms (relu, hard tanh, leaky relu, elu)
  are exact; laws ``p delta_a + (1 - p) delta_0`` are used in closed form,
  ``S = (1 + w)/(a (w + p))`` (their section 3).
* gaussian (and uniform: i.i.d. entries, the same Marchenko-Pastur law by universality) weights:
  ``W_l^T W_l`` (dimension ``N_{l-1}``) is Marchenko-Pastur with mean ``sigma_w^2 N_l/N_{l-1}``
  and ratio ``N_{l-1}/N_l``: ``S(u) = 1/(sigma_w^2 (N_l/N_{l-1}) (1 + u N_{l-1}/N_l))``
  (for square layers ``1/(sigma_w^2 (1 + u))``, their eq. 13).
* orthogonal weights (CONVENTIONS.md scaling ``E[W_ij^2] = sigma_w^2/N_{l-1}``): ``W^T W`` is the
  point mass ``sigma_w^2 N_l/N_{l-1}`` when ``N_l >= N_{l-1}``, and
  ``(N_l/N_{l-1}) delta_{sigma_w^2} + (1 - N_l/N_{l-1}) delta_0`` otherwise.
* ``S_dim(w) = (1 + w)/(N_0/N_L + w)`` reads the product in dimension ``N_L`` (``J J^T``).

Layers whose laws coincide (to ``q_rtol`` in ``q^l``) are one factor raised to a power, so depth
10^3 costs no more than the number of distinct layers.

**Mean and normalised variance** (derivation). Expanding ``S_X(w) = (1/m_1)(1 - v_X w + O(w^2))``
with ``v_X = (m_2 - m_1^2)/m_1^2`` (from ``psi = m_1 zeta + m_2 zeta^2 + ...``, its inverse and
``S = chi (1 + w)/w``), a product of S-transforms multiplies the means and adds the ``v``'s; an
argument rescaled by ``r`` multiplies ``v`` by ``r``; and ``S_dim`` contributes ``N_L/N_0 - 1``.
Hence

    m_1 = prod_l sigma_{w,l}^2 mu_1(q^l)         (= chi_1^L for identical layers at q*)
    v = sum_l [ v_D(q^l) N_L/N_l + v_W,l N_L/N_{l-1} ] + N_L/N_0 - 1,

with ``mu_k(q) = E[phi'(sqrt(q) z)^(2k)]``, ``v_D = mu_2/mu_1^2 - 1``, and ``v_W,l = N_{l-1}/N_l``
(Marchenko-Pastur) for gaussian weights, ``0`` for orthogonal weights with ``N_l >= N_{l-1}`` and
``N_{l-1}/N_l - 1`` otherwise. For ``L`` identical square layers
``v = L (mu_2/mu_1^2 - 1 + s)``, ``s = 1`` (gaussian: the Marchenko-Pastur term) or ``0``
(orthogonal) -- the special cases of Pennington et al. 2017 (linear gaussian ``L``, relu
gaussian ``2L``, relu orthogonal ``L``, hard tanh orthogonal ``L (1/p - 1)``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from . import freeprob as fp
from .activations import Activation, activation as _activation
from .meanfield import predict
from .network import Dense, Network, mlp
from .results import to_jsonable

__all__ = ["spectrum", "Spectrum", "isometry", "Isometry", "WEIGHT_LAWS"]

WEIGHT_LAWS = ("gaussian", "uniform", "orthogonal")
_Q_INDEPENDENT = ("linear", "relu", "leaky_relu")    # phi' is constant on half-lines


# ---------------------------------------------------------------------------------------------
# building the factors


def _d2_law(act: Activation, q: float, resolution: int) -> fp.Law:
    """The law of phi'(h)^2, h ~ N(0, q)."""
    s = math.sqrt(q)
    dphi = act.dphi

    def f(z):
        v = np.asarray(dphi(s * np.asarray(z, float)), float)
        return v * v
    return fp.pushforward_law(f, kinks=act.kinks, scale=s, n_uniform=resolution,
                              n_quantile=resolution, label=f"{act.name}(q={q:.6g})")


def _weight_factor(layer: Dense, n_in: int, n_out: int) -> fp.ClosedFactor:
    """The law of W^T W in dimension n_in."""
    sw2 = layer.sigma_w2
    a = n_out / n_in
    if layer.weights in ("gaussian", "uniform"):
        return fp.marchenko_pastur(sw2 * a, 1.0 / a, label=f"{layer.weights}")
    if layer.weights == "orthogonal":
        if a >= 1.0:
            return fp.point_mass(sw2 * a, label="orthogonal")
        return fp.bernoulli(sw2, a, label="orthogonal")
    raise ValueError(f"weights: no S-transform is implemented for weights={layer.weights!r}; "
                     f"known: {', '.join(WEIGHT_LAWS)}")


def _check_network(network):
    if not isinstance(network, Network):
        raise TypeError(f"network must be a signalprop Network (see signalprop.mlp), "
                        f"got {type(network).__name__}")
    for i, layer in enumerate(network.layers):
        if type(layer) is not Dense:
            raise ValueError(f"layer {i + 1}: spectrum is not supported for {type(layer).__name__} "
                             f"layers (only Dense): a residual Jacobian I + beta J_F is not a "
                             f"product of freely independent factors")
        if layer.weights not in WEIGHT_LAWS:
            raise ValueError(f"layer {i + 1}: no S-transform is implemented for "
                                      f"weights={layer.weights!r}; known: {', '.join(WEIGHT_LAWS)}")


def spectrum(network: Network, q0: float = 1.0, *, q_rtol: float = 1e-9,
             resolution: int = 64) -> "Spectrum":
    """The limiting law of the squared singular values of the input-output Jacobian
    ``J = dx^L/dx^0 = D_L W_L ... D_1 W_1`` of ``network`` (the eigenvalues of ``J J^T``, in
    dimension ``N_L``), for inputs with ``||x^0||^2/N_0 = q0``. See the module docstring.

    ``q_rtol``: layers whose ``q^l`` differ by less than this (relative) share one law of
    ``phi'^2``; ``resolution``: the number of equal-width and of equal-mass bins of each such law
    (its mass, mean and variance are exact whatever the resolution).

    To put every layer at the fixed point ``q*`` (Pennington et al.'s setting) pass
    ``q0 = (q* - sigma_b^2)/sigma_w^2``.
    Raises TypeError / ValueError for layers or weight laws without an S-transform, and
    ValueError when the mean-field profile degenerates (``q^l`` = 0 or inf).
    """
    _check_network(network)
    if not (isinstance(q_rtol, (int, float)) and 0 <= q_rtol < 1e-2):
        raise ValueError(f"q_rtol must lie in [0, 0.01), got {q_rtol!r}")
    profile = predict(network, q0)
    q = np.asarray(profile.q, float)
    if not np.all(np.isfinite(q)) or np.any(q <= 0) or np.any(q > 1e200) or np.any(q < 1e-200):
        bad = int(np.flatnonzero(~np.isfinite(q) | (q <= 1e-200) | (q > 1e200))[0]) + 1
        raise ValueError(f"the mean-field variance q^l leaves [1e-200, 1e200] at layer {bad} "
                         f"(q = {q[bad - 1]:.3g}); the spectrum of phi'(h)^2 is not defined there")
    widths = [int(n) for n in network.widths]
    L = network.depth
    NL = widths[-1]
    closed: dict = {}
    groups: dict = {}
    laws: dict = {}
    notes = []
    per_layer = []

    def add_closed(f, r):
        key = (f.C, f.A, f.E, f.zero_mass, f.atoms, r)
        if key in closed:
            closed[key][1] += 1
        else:
            closed[key] = [f, 1, r]

    for l, layer in enumerate(network.layers):
        n_in, n_out = widths[l], widths[l + 1]
        wf = _weight_factor(layer, n_in, n_out)
        add_closed(wf, NL / n_in)
        act = layer.activation
        ql = 1.0 if act.name in _Q_INDEPENDENT else float(q[l])
        if q_rtol > 0:
            qkey = round(math.log(ql) / q_rtol) if ql > 0 else 0
        else:
            qkey = ql
        lkey = (id(act), qkey)
        if lkey not in laws:
            laws[lkey] = _d2_law(act, ql, resolution)
        law = laws[lkey]
        mu1, mu2 = float(law.moments[1]), float(law.moments[2])
        a = n_out / n_in
        if layer.weights == "orthogonal":
            vw = 0.0 if a >= 1 else 1.0 / a - 1.0
        else:
            vw = 1.0 / a
        per_layer.append((layer.sigma_w2 * mu1, mu2 / (mu1 * mu1) - 1.0, vw, NL / n_out, NL / n_in))
        b = law.bernoulli()
        if b is not None:
            add_closed(fp.bernoulli(b[0], b[1], label=act.name), NL / n_out)
        else:
            gkey = (lkey, NL / n_out)
            if gkey in groups:
                groups[gkey][1] += 1
            else:
                groups[gkey] = [law, 1, NL / n_out]
    c0 = widths[0] / NL
    add_closed(fp.dimension_change(c0), 1.0)
    if any(la.weights == "uniform" for la in network.layers):
        notes.append("uniform weights: Marchenko-Pastur law of W^T W by universality (i.i.d. "
                     "entries with the same variance)")
    product = fp.FreeProduct([tuple(v) for v in closed.values()], [tuple(v) for v in groups.values()])
    chi = np.array([p[0] for p in per_layer])
    vd = np.array([p[1] for p in per_layer])
    vw = np.array([p[2] for p in per_layer])
    rD = np.array([p[3] for p in per_layer])
    rW = np.array([p[4] for p in per_layer])
    v_formula = float(np.sum(vd * rD + vw * rW) + NL / widths[0] - 1.0)
    return Spectrum(network=network, q0=float(q0), q=q, product=product,
                    mean_formula=float(np.exp(np.sum(np.log(chi)))),
                    normalised_variance_formula=v_formula,
                    n_laws=len(laws), notes=tuple(notes))


# ---------------------------------------------------------------------------------------------
# the result


class Spectrum:
    """The limiting law of the eigenvalues of ``J J^T`` (squared singular values of the
    Jacobian), from :func:`spectrum`.

    Exact (series arithmetic): :meth:`moment`, :meth:`moments`, :attr:`mean`,
    :attr:`normalised_variance`; atoms (:attr:`atoms`, :attr:`zero_mass`) and
    :attr:`continuous_mass`. Numerical (functional equation solved in the complex plane):
    :meth:`density` (of the continuous part), :meth:`cdf`, :meth:`mass_below`, :meth:`quantile`,
    :attr:`upper_edge`, :attr:`lower_edge`, :meth:`condition_number`.

    ``mean_formula`` and ``normalised_variance_formula`` are the closed forms of the module
    docstring, computed layer by layer (a check on the series).
    """

    def __init__(self, network, q0, q, product, mean_formula, normalised_variance_formula,
                 n_laws, notes=()):
        self.network = network
        self.q0 = q0
        self.q = q
        self.product = product
        self.mean_formula = mean_formula
        self.normalised_variance_formula = normalised_variance_formula
        self.n_laws = n_laws
        self.notes = tuple(notes)
        self._cdf_table = None
        self._lower = None

    def __repr__(self):
        return (f"Spectrum(depth={self.depth}, mean={self.mean:.6g}, "
                f"normalised_variance={self.normalised_variance:.6g}, "
                f"upper_edge={self.upper_edge:.6g}, zero_mass={self.zero_mass:.3g})")

    # -- description ---------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return self.network.depth

    @property
    def widths(self):
        return [int(n) for n in self.network.widths]

    # -- moments -------------------------------------------------------------------------------
    def log_moments(self, kmax: int) -> np.ndarray:
        """log m_k, k = 1..kmax (no overflow at any depth)."""
        kmax = _check_k(kmax)
        return self.product.log_moments(kmax)

    def moments(self, kmax: int, dps: Optional[int] = None):
        """m_k = E[lambda^k] (lambda an eigenvalue of J J^T), k = 1..kmax, from the S-transform
        series by Lagrange inversion (Pennington et al. 2017, eq. 18): float64 (inf where it
        overflows) or, with ``dps``, mpmath numbers computed at ``dps`` digits."""
        kmax = _check_k(kmax)
        if dps is not None:
            return self.product.moments_mp(kmax, int(dps))
        with np.errstate(over="ignore"):
            return np.exp(self.product.log_moments(kmax))

    def moment(self, k: int) -> float:
        """m_k (float64)."""
        k = _check_k(k)
        return float(self.moments(k)[-1])

    @property
    def mean(self) -> float:
        """m_1 = prod_l sigma_w^2 E[phi'(h^l)^2] (chi_1^L at the fixed point)."""
        return float(math.exp(self.product.log_mean))

    @property
    def normalised_variance(self) -> float:
        """(m_2 - m_1^2)/m_1^2 from the series."""
        lm = self.product.log_moments(2)
        return float(math.expm1(lm[1] - 2 * lm[0]))

    @property
    def variance(self) -> float:
        return self.normalised_variance * self.mean ** 2

    # -- atoms ---------------------------------------------------------------------------------
    @property
    def zero_mass(self) -> float:
        """Mass of the atom at 0 (rank deficiency: relu-like activations, narrow layers)."""
        return float(self.product.zero_mass)

    @property
    def atoms(self) -> list:
        """Nonzero atoms ``[(location, mass)]`` (e.g. the point mass sigma_w^(2L) of an orthogonal
        linear network; orthogonal hard tanh near q* = 0)."""
        return [(float(a), float(m)) for a, m in zip(self.product.atom_loc, self.product.atom_mass)]

    @property
    def continuous_mass(self) -> float:
        """1 - zero_mass - sum of the nonzero atoms: the integral of :meth:`density`."""
        return float(self.product.continuous_mass)

    # -- density and distribution --------------------------------------------------------------
    def density(self, x) -> np.ndarray:
        """Density of the continuous part of the law at ``x`` (array-like).

        Documented results off the support: 0 for ``x < 0`` and ``x > upper_edge``; at ``x = 0``
        nan when the support of the continuous part reaches 0 (the density may diverge there),
        0 otherwise. Non-finite ``x`` raises ValueError."""
        x = _check_x(x)
        out = self.product.density(x.ravel()).reshape(x.shape)
        if np.any(x == 0):
            out[x == 0] = np.nan if self.lower_edge == 0 else 0.0
        return out

    def cdf(self, x) -> np.ndarray:
        """P(lambda <= x), atoms included."""
        x = _check_x(x)
        xf = x.ravel()
        out = self.product.cdf_continuous(xf)
        out = out + np.where(xf >= 0, self.zero_mass, 0.0)
        for a, m in self.atoms:
            out = out + np.where(xf >= a, m, 0.0)
        return np.clip(out, 0.0, 1.0).reshape(x.shape)

    def mass_below(self, t) -> np.ndarray:
        """Fraction of squared singular values <= t (the CDF; atoms included)."""
        return self.cdf(t)

    # -- edges -----------------------------------------------------------------------------------
    @property
    def upper_edge(self) -> float:
        """The largest point of the support: the largest squared singular value of J."""
        return float(self.product.support_top())

    @property
    def lower_edge(self) -> float:
        """The smallest point of the support of the continuous part (0 when the continuous part
        of the law of phi'(h)^2 reaches 0: phi'^2 -> 0 in the Gaussian tails, as for tanh, erf,
        sigmoid, gelu, silu, softplus, elu). Otherwise located numerically as the first point of
        a log grid from 1e-12 upper_edge (0 if the density is already positive there) where the
        density exceeds 1e-5 of ``continuous_mass/upper_edge`` (at a
        square-root edge, ~1e-6 relative: the solution is only accurate to the square root of
        the rounding level next to a branch point). nan when there is no
        continuous part."""
        if self._lower is None:
            self._lower = self._compute_lower_edge()
        return self._lower

    def _compute_lower_edge(self) -> float:
        P = self.product
        if P.continuous_mass <= 1e-14:
            return math.nan
        if any(law.reaches_zero for law in P.laws):
            return 0.0
        U = P.upper_edge_continuous()
        thr = 1e-5 * P.continuous_mass / U
        xs = U * np.logspace(-12, 0, 121)[:-1]
        rho = P.density(xs)
        pos = np.flatnonzero(rho > thr)
        if pos.size == 0:
            return U
        i = pos[0]
        if i == 0:
            return 0.0
        a, b = xs[i - 1], xs[i]
        for _ in range(60):
            m = 0.5 * (a + b)
            if P.density(np.array([m]))[0] > thr:
                b = m
            else:
                a = m
            if b - a <= 1e-12 * b:
                break
        return float(b)

    def quantile(self, p) -> np.ndarray:
        """The smallest x with P(lambda <= x) >= p (atoms included), p in [0, 1]."""
        p = np.atleast_1d(np.asarray(p, float))
        if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
            raise ValueError("quantile levels must lie in [0, 1]")
        xs, F = self._table()
        out = np.empty(p.shape)
        for i, pi in enumerate(p):
            out[i] = self._invert(pi, xs, F)
        return out

    def _table(self):
        if self._cdf_table is None:
            U = self.upper_edge
            lo = self.lower_edge if self.continuous_mass > 0 else 0.0
            lo = 0.0 if not math.isfinite(lo) else lo
            t = np.cos(np.linspace(math.pi, 0.0, 81))
            xs = lo + (U - lo) * (t + 1) / 2
            xs = np.unique(np.concatenate([U * np.logspace(-12, -1, 23), xs[1:-1]]))
            xs = xs[(xs > 0) & (xs < U)]
            F = self.cdf(xs)
            self._cdf_table = (np.concatenate([[0.0], xs, [U]]),
                               np.maximum.accumulate(np.concatenate([[self.zero_mass], F, [1.0]])))
        return self._cdf_table

    def _invert(self, p, xs, F):
        if p <= self.zero_mass:
            return 0.0
        j = int(np.searchsorted(F, p, side="left"))
        if j >= xs.size:
            return float(xs[-1])
        a, b = xs[max(j - 1, 0)], xs[j]
        Fa, Fb = F[max(j - 1, 0)], F[j]
        for _ in range(30):                           # safeguarded secant on the exact CDF
            if b - a <= 1e-10 * b or Fb - Fa <= 1e-13:
                break
            m = a + (p - Fa) / (Fb - Fa) * (b - a)
            m = min(max(m, a + 0.05 * (b - a)), b - 0.05 * (b - a))
            Fm = float(self.cdf(np.array([m]))[0])
            if Fm >= p:
                b, Fb = m, Fm
            else:
                a, Fa = m, Fm
        return float(b)

    def condition_number(self, tail: float = 0.0) -> float:
        """Condition number of the bulk of squared singular values: with ``tail = 0`` the ratio
        of the edges of the support of the continuous part (inf when it reaches 0); with
        ``tail > 0`` the ratio of the quantiles of the continuous part at ``1 - tail`` and ``tail``
        (of its own mass). The squared singular values' ratio: take the square root for that of
        the singular values."""
        if not (0 <= tail < 0.5):
            raise ValueError(f"tail must lie in [0, 0.5), got {tail!r}")
        Mc = self.continuous_mass
        if Mc <= 1e-14:
            return 1.0 if self.atoms and len(self.atoms) == 1 and self.zero_mass == 0 else math.nan
        if tail == 0:
            lo = self.lower_edge
            hi = self.product.upper_edge_continuous()
            return math.inf if lo == 0 else hi / lo
        base = self.zero_mass
        below = [m for a, m in self.atoms]
        if below:
            warnings.warn("condition_number(tail > 0) uses the quantiles of the whole law; the "
                          "network has nonzero atoms", RuntimeWarning, stacklevel=2)
        qs = self.quantile([base + tail * Mc, base + (1 - tail) * Mc])
        return float(qs[1] / qs[0])

    # -- grid and checks -----------------------------------------------------------------------
    def grid(self, n: int = 400) -> np.ndarray:
        """``n`` points over the support of the continuous part, clustered towards its edges."""
        U = self.product.upper_edge_continuous()
        lo = self.lower_edge
        t = (1 - np.cos(np.linspace(0, math.pi, n + 2)[1:-1])) / 2
        return lo + (U - lo) * t

    def to_dict(self, condition: bool = False) -> dict:
        """Summary: network, mean, normalised variance (series and closed form), moments m_1..m_8,
        atoms, edges; with ``condition`` also the bulk condition numbers (tail 0 and 1e-3)."""
        d = {
            "depth": self.depth, "widths": self.widths, "q0": self.q0,
            "activations": sorted({la.activation.name for la in self.network.layers}),
            "weights": sorted({la.weights for la in self.network.layers}),
            "mean": self.mean, "mean_formula": self.mean_formula,
            "normalised_variance": self.normalised_variance,
            "normalised_variance_formula": self.normalised_variance_formula,
            "moments": self.moments(8).tolist(),
            "zero_mass": self.zero_mass, "atoms": self.atoms,
            "continuous_mass": self.continuous_mass,
            "upper_edge": self.upper_edge,
            "lower_edge": self.lower_edge,
            "distinct_layer_laws": self.n_laws,
            "notes": list(self.notes),
        }
        if condition:
            d["condition_number"] = self.condition_number(0.0)
            d["condition_number_tail_1e-3"] = self.condition_number(1e-3)
        return d

    def to_json(self, **kwargs) -> str:
        import json
        return json.dumps(to_jsonable(self.to_dict()), **kwargs)


def _check_k(k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"moment order must be an integer >= 1, got {k!r}")
    return int(k)


def _check_x(x):
    x = np.atleast_1d(np.asarray(x, float))
    if not np.all(np.isfinite(x)):
        raise ValueError("spectrum: x must be finite")
    return x


# ---------------------------------------------------------------------------------------------
# dynamical isometry


@dataclass(frozen=True, eq=False)
class Isometry:
    """Dynamical isometry along the edge of chaos (Pennington, Schoenholz & Ganguli 2017,
    section 4; 2018). See :func:`isometry`.

    Arrays over ``q_star`` (points of the critical line ``chi_1 = 1``): ``sigma_w2``,
    ``sigma_b2``, ``v_D = mu_2/mu_1^2 - 1`` and ``variance_per_layer = v_D + v_W`` (the normalised
    variance of the squared singular values is ``L * variance_per_layer`` exactly, with
    ``m_1 = 1``); ``upper_edge[i, j]``: the largest squared singular value at ``q_star[i]`` and
    ``depths[j]``. ``best``: the point of the grid with the smallest ``variance_per_layer`` and
    whether it lies on the boundary of the grid (an infimum approached, not attained).
    ``achievable``: whether the variance per layer can be made arbitrarily small on the critical
    line; ``reason`` says why (not).
    """

    activation: str
    weights: str
    q_star: np.ndarray
    sigma_w2: np.ndarray
    sigma_b2: np.ndarray
    v_D: np.ndarray
    variance_per_layer: np.ndarray
    depths: np.ndarray
    upper_edge: np.ndarray
    best: dict
    achievable: bool
    reason: str

    def to_dict(self) -> dict:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    def to_json(self, **kwargs) -> str:
        import json
        return json.dumps(to_jsonable(self.to_dict()), **kwargs)


def isometry(activation="tanh", weights: str = "orthogonal", *,
             q_star: Optional[Sequence[float]] = None, depths: Sequence[int] = (10, 100, 1000),
             edge_points: int = 9) -> Isometry:
    """How far from dynamical isometry (all squared singular values of J at 1) a network at the
    edge of chaos is, and where on the critical line it is closest.

    The critical line is parameterised by ``q*``: ``sigma_w^2 = 1/E[phi'(sqrt(q*) z)^2]``,
    ``sigma_b^2 = q* - sigma_w^2 E[phi(sqrt(q*) z)^2]`` (points with ``sigma_b^2 < 0`` are dropped).
    With every layer at ``q*`` (``m_1 = chi_1^L = 1``) the normalised variance of the squared
    singular values is ``L (v_D(q*) + v_W)`` exactly (module docstring), ``v_W = 1`` for gaussian
    and uniform weights (Marchenko-Pastur), ``0`` for orthogonal ones; the largest squared singular
    value is computed at each of ``depths`` for ``edge_points`` values of ``q*`` (log-spaced over
    the grid), the others being nan.

    ``q_star``: the grid (default: 41 points log-spaced in [1e-4, 10]).
    """
    act = _activation(activation)
    if weights not in WEIGHT_LAWS:
        raise ValueError(f"weights: no S-transform is implemented for weights={weights!r}; "
                     f"known: {', '.join(WEIGHT_LAWS)}")
    qs = np.logspace(-4, 1, 41) if q_star is None else np.asarray(q_star, float)
    if qs.ndim != 1 or qs.size == 0 or np.any(~np.isfinite(qs)) or np.any(qs <= 0):
        raise ValueError("q_star must be a non-empty 1-D array of positive numbers")
    depths = np.asarray([int(d) for d in depths], int)
    if depths.size == 0 or np.any(depths < 1):
        raise ValueError("depths must be positive integers")
    m1 = np.asarray(act.dphi_second_moment(qs), float)
    m2 = np.asarray(act.dphi_fourth_moment(qs), float)
    with np.errstate(divide="ignore", invalid="ignore"):
        sw2 = 1.0 / m1
        sb2 = qs - sw2 * np.asarray(act.second_moment(qs), float)
        vD = m2 / (m1 * m1) - 1.0
    valid = np.isfinite(sw2) & (sb2 >= -1e-12 * np.maximum(qs, 1.0)) & np.isfinite(vD)
    sb2 = np.where(valid, np.maximum(sb2, 0.0), np.nan)
    vW = 0.0 if weights == "orthogonal" else 1.0
    var = vD + vW
    qs_v = qs[valid]
    edges = np.full((qs.size, depths.size), np.nan)
    if qs_v.size:
        pick = np.unique(np.round(np.linspace(0, qs_v.size - 1, min(edge_points, qs_v.size))).astype(int))
        for i in pick:
            k = int(np.flatnonzero(valid)[i])
            for j, L in enumerate(depths):
                net = mlp(int(L), 100, act, sigma_w2=float(sw2[k]), sigma_b2=float(sb2[k]),
                          weights=weights)
                q0 = (qs[k] - sb2[k]) / sw2[k]
                if q0 <= 0:
                    continue
                edges[k, j] = spectrum(net, q0).upper_edge
    if not valid.any():
        best = {}
        achievable = False
        reason = (f"{act.name} has no edge of chaos with sigma_b^2 >= 0 on q* in "
                  f"[{qs.min():.3g}, {qs.max():.3g}]: chi_1 = 1 is never reached at a fixed point")
    else:
        iv = np.flatnonzero(valid)
        ib = iv[np.argmin(var[iv])]
        boundary = ib in (iv[0], iv[-1])
        best = {"q_star": float(qs[ib]), "sigma_w2": float(sw2[ib]), "sigma_b2": float(sb2[ib]),
                "v_D": float(vD[ib]), "variance_per_layer": float(var[ib]),
                "on_grid_boundary": bool(boundary)}
        spread = float(np.nanmax(vD[iv]) - np.nanmin(vD[iv]))
        if weights != "orthogonal":
            achievable = False
            reason = (f"impossible with {weights} weights: the Marchenko-Pastur law of W W^T adds 1 "
                      f"per layer to the normalised variance, so (m_2 - m_1^2)/m_1^2 >= L at the "
                      f"edge of chaos whatever the activation (here at least "
                      f"{float(var[ib]):.4g} L); the spectrum widens linearly with depth")
        elif spread <= 1e-9 * max(1.0, abs(float(vD[ib]))) and vD[ib] > 1e-9:
            achievable = False
            reason = (f"impossible for {act.name}: phi'(h)^2 has the same law at every q* "
                      f"(phi' is constant on half-lines; D^2 is Bernoulli(p) with "
                      f"v_D = 1/p - 1 = {float(vD[ib]):.4g}), so the normalised variance is "
                      f"{float(vD[ib]):.4g} L at every point of the critical line "
                      f"(relu: v_D = 1, Pennington et al. 2017)")
        elif vD[ib] <= 1e-6 and not boundary:
            achievable = True
            reason = (f"achievable: v_D = {float(vD[ib]):.3g} at q* = {qs[ib]:.4g} with "
                      "orthogonal weights")
        elif boundary and ib == iv[0] and vD[ib] < 0.1 * np.nanmax(vD[iv]):
            achievable = True
            i1 = iv[1] if iv.size > 1 else iv[0]
            if vD[ib] > 0 and vD[i1] > 0 and i1 != ib:
                alpha = math.log(vD[i1] / vD[ib]) / math.log(qs[i1] / qs[ib])
                c = float(vD[ib] / qs[ib] ** alpha)
                law = (f"v_D ~ {c:.3g} q*^{alpha:.3g} there, so L v_D(q*) stays below a target t "
                       f"for q* <~ (t/({c:.3g} L))^(1/{alpha:.3g})")
            else:
                law = "v_D vanishes faster than any power of q* (it underflows to 0)"
            reason = (f"achievable with orthogonal weights in the limit q* -> 0 (sigma_b^2 -> 0): "
                      f"v_D(q*) decreases to 0 ({float(vD[ib]):.3g} at q* = {qs[ib]:.3g}); "
                      f"{law} (Pennington et al. 2017, section 4: sigmoidal networks, orthogonal "
                      f"weights, small q*)")
        else:
            achievable = bool(vD[ib] <= 1e-6)
            reason = (f"the smallest variance per layer on the critical line is "
                      f"{float(var[ib]):.4g} at q* = {qs[ib]:.4g} (sigma_w^2 = {sw2[ib]:.5g}, "
                      f"sigma_b^2 = {sb2[ib]:.5g})"
                      + ("; it lies at the end of the q* grid: widen the grid" if boundary else
                         "; the normalised variance grows as that times L"))
    return Isometry(activation=act.name, weights=weights, q_star=qs, sigma_w2=np.where(valid, sw2, np.nan),
                    sigma_b2=sb2, v_D=np.where(valid, vD, np.nan),
                    variance_per_layer=np.where(valid, var, np.nan), depths=depths,
                    upper_edge=edges, best=best, achievable=achievable, reason=reason)
