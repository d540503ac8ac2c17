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

**Mean and normalised variance** (from ``S_X(w) = (1/m_1)(1 - v_X w + O(w^2))``,
``v_X = (m_2 - m_1^2)/m_1^2``):

    m_1 = prod_l sigma_{w,l}^2 mu_1(q^l)         (= chi_1^L for identical layers at q*)
    v = sum_l [ v_D(q^l) N_L/N_l + v_W,l N_L/N_{l-1} ] + N_L/N_0 - 1,

``mu_k(q) = E[phi'(sqrt(q) z)^(2k)]``, ``v_D = mu_2/mu_1^2 - 1``, ``v_W,l = N_{l-1}/N_l``
(gaussian), ``0`` (orthogonal, ``N_l >= N_{l-1}``) or ``N_{l-1}/N_l - 1`` (orthogonal, otherwise);
``L (mu_2/mu_1^2 - 1 + s)`` for ``L`` identical square layers, ``s = 1`` gaussian, ``0``
orthogonal (Pennington et al. 2017's special cases). Derivation:
docs/theory/jacobian-spectrum.md.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from . import freeprob as fp
from .activations import Activation, activation as _activation
from .meanfield import predict
from .architectures import mlp
from .layers.dense import Dense
from .network import Network, require_capability
from .progress import track
from . import __version__
from .results import VERSION_KEY, _Result, to_jsonable
from ._validate import check_int

__all__ = ["spectrum", "Spectrum", "isometry", "Isometry", "WEIGHT_LAWS"]

WEIGHT_LAWS = ("gaussian", "uniform", "orthogonal")
_Q_INDEPENDENT = ("linear", "relu", "leaky_relu")    # phi' is constant on half-lines

RESOLUTION_RANGE = (4, 4096)      # allowed ``resolution`` of the laws of phi'(h)^2
MAX_LAWS = 1000                   # default bound on the number of distinct numerical laws
_X_FLOOR = 1e-300                 # the smallest x at which the law is evaluated (float64 solver)
_MEMORY_CHUNK = 256 * 2 ** 20     # bytes of solver state per batch of density/CDF points
_SECONDS_PER_LAW = 0.04           # cost model (2 cores): upper edge and each density/CDF call
_KMAX_FLOAT, _KMAX_MP, _DPS_MAX = 1000, 300, 1000


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


def _check_law_mass(law: fp.Law, layer: int, q: float) -> None:
    """Refuse a law of phi'(h)^2 that vanishes except with probability below 1e-10 (saturated
    units, q^l far above the activation's scale): the Jacobian is zero to float64 precision and
    the edges of the rest of the law are not resolved."""
    if 1.0 - law.zero_mass < 1e-10:
        raise ValueError(f"at layer {layer} (q^l = {q:.3g}) phi'(h)^2 vanishes except with "
                         f"probability {1.0 - law.zero_mass:.2g} < 1e-10: the Jacobian is zero to "
                         f"float64 precision and its spectrum is not resolved; lower q0 or "
                         f"sigma_w2/sigma_b2 (q^l)")


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
    require_capability(network, "free_probability", "spectrum")
    for i, layer in enumerate(network.layers):
        if layer.weights not in WEIGHT_LAWS:
            raise ValueError(f"layer {i + 1}: no S-transform is implemented for "
                                      f"weights={layer.weights!r}; known: {', '.join(WEIGHT_LAWS)}")


def _law_key(act: Activation, ql: float, q_rtol: float):
    """(q at which phi'^2 is taken, key of its law): layers with equal keys share one law."""
    if act.name in _Q_INDEPENDENT:
        ql = 1.0
    qkey = (round(math.log(ql) / q_rtol) if ql > 0 else 0) if q_rtol > 0 else ql
    return ql, (id(act), qkey)


def _law_components(resolution: int) -> int:
    """Upper bound on the uniform components of one law of phi'^2 (pushforward_law: the union
    of ``resolution`` equal-width and equal-mass bins and 30 geometric refinements)."""
    return 2 * resolution + 31


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2 ** 30


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.3g} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.3g} MiB"


def _check_work(network: Network, q, q_rtol: float, resolution: int, max_laws: int) -> None:
    """Refuse up front a spectrum whose laws cannot fit in memory or whose number of distinct
    numerical laws exceeds ``max_laws`` (cost model: :func:`spectrum`)."""
    keys = {_law_key(la.activation, float(ql), q_rtol)[1]
            for la, ql in zip(network.layers, q) if la.activation.name not in _Q_INDEPENDENT}
    G = len(keys)
    comps = _law_components(resolution)
    law_bytes = G * (3 * comps + 70) * 8 + G * 2048
    per_point = 128 * (G + comps)
    limit = _physical_memory() // 2
    if law_bytes > limit or 24 * per_point > limit:
        need = max(law_bytes, 24 * per_point)
        raise ValueError(f"spectrum: {G} distinct laws of phi'(h)^2 at resolution {resolution} "
                         f"would need {_gib(need)} of memory, more than the {_gib(limit)} allowed "
                         f"(half the physical memory); lower resolution or raise q_rtol")
    if G > max_laws:
        est = _SECONDS_PER_LAW * G
        raise ValueError(f"spectrum: the network has {G} distinct laws of phi'(h)^2 (q^l changes "
                         f"along its {network.depth} layers), more than max_laws = {max_laws}: "
                         f"every density/cdf/quantile call and the upper edge would take about "
                         f"{est:.3g} s (~{_SECONDS_PER_LAW} s per law on 2 cores) and "
                         f"{_gib(per_point)} per point; start the layers at the fixed point "
                         f"(q0 = (q* - sigma_b^2)/sigma_w^2), raise q_rtol (< 0.01) or pass "
                         f"max_laws >= {G} to accept the cost")


def spectrum(network: Network, q0: float = 1.0, *, q_rtol: float = 1e-9,
             resolution: int = 64, max_laws: int = MAX_LAWS,
             progress: Optional[bool] = None) -> "Spectrum":
    """The limiting law of the squared singular values of the input-output Jacobian
    ``J = dx^L/dx^0 = D_L W_L ... D_1 W_1`` of ``network`` (the eigenvalues of ``J J^T``, in
    dimension ``N_L``), for inputs with ``||x^0||^2/N_0 = q0``. See the module docstring.

    ``q_rtol`` (in [0, 0.01)): layers whose ``q^l`` differ by less than this (relative) share
    one law of ``phi'^2``; ``resolution`` (an integer in [4, 4096]): the number of equal-width
    and of equal-mass bins of each such law (its mass, mean and variance are exact whatever the
    resolution).

    **Cost model.** Building costs one pass over the layers (~10 us each) and ~2 ms per
    distinct numerical law of ``phi'(h)^2`` (``G``: one per distinct ``q^l`` for activations
    whose ``phi'^2`` is not a Bernoulli law; 0 for linear, relu, leaky relu). Every numerical
    query (upper edge, each call of density/cdf/quantile) solves ``G + 1`` coupled equations:
    about ``0.01 G`` to ``0.04 G`` seconds on 2 cores, and ``~128 (G + 2 resolution)`` bytes per
    point (density and cdf are evaluated in batches of at most 256 MiB). ``G > max_laws``
    (default 1000) is refused up front with the estimate, as is a set of laws that would not fit
    in half the physical memory: start the layers at the fixed point (``q^l`` constant), raise
    ``q_rtol`` or ``max_laws``.

    To put every layer at the fixed point ``q*`` (Pennington et al.'s setting) pass
    ``q0 = (q* - sigma_b^2)/sigma_w^2``.
    ``progress``: a bar over the layers on stderr while their laws are built (None: auto, when
    stderr is a terminal; :mod:`signalprop.progress`).
    Raises TypeError / ValueError for layers or weight laws without an S-transform, for
    arguments out of range (naming them), and ValueError when the mean-field profile
    degenerates (``q^l`` = 0 or inf).
    """
    _check_network(network)
    q0 = _check_real("q0", q0, lo=0.0, hi=1e200)
    q_rtol = _check_real("q_rtol", q_rtol, lo=0.0, hi=1e-2, hi_open=True)
    resolution = check_int("resolution", resolution, *RESOLUTION_RANGE)
    max_laws = check_int("max_laws", max_laws, 1, None)
    profile = predict(network, q0)
    q = np.asarray(profile.q, float)
    if not np.all(np.isfinite(q)) or np.any(q <= 0) or np.any(q > 1e200) or np.any(q < 1e-200):
        bad = int(np.flatnonzero(~np.isfinite(q) | (q <= 1e-200) | (q > 1e200))[0]) + 1
        raise ValueError(f"the mean-field variance q^l leaves [1e-200, 1e200] at layer {bad} "
                         f"(q = {q[bad - 1]:.3g}); the spectrum of phi'(h)^2 is not defined there")
    _check_work(network, q, q_rtol, resolution, max_laws)
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

    for l, layer in track(enumerate(network.layers), "spectrum", "layers", total=L,
                          progress=progress):
        n_in, n_out = widths[l], widths[l + 1]
        wf = _weight_factor(layer, n_in, n_out)
        add_closed(wf, NL / n_in)
        act = layer.activation
        ql, lkey = _law_key(act, float(q[l]), q_rtol)
        if lkey not in laws:
            laws[lkey] = _d2_law(act, ql, resolution)
            _check_law_mass(laws[lkey], l + 1, ql)
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
    for note in dict.fromkeys(getattr(la, "spectrum_note", None) for la in network.layers):
        if note:
            notes.append(note)      # a layer kind's own statement about its factor
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
        self._qtab: dict = {}
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
    def _kmax_allowed(self, mp: bool = False) -> int:
        """Largest moment order: the laws of phi'^2 carry 64 exact moments (order <= 63 when
        the product has numerical laws); otherwise 1000 in float64 (O(k^3) series work, ~1 s)
        and 300 in mpmath."""
        cap = _KMAX_MP if mp else _KMAX_FLOAT
        if self.product.groups:
            cap = min(cap, min(law.moments.size for law in self.product.laws) - 2)
        return cap

    def log_moments(self, kmax: int) -> np.ndarray:
        """log m_k, k = 1..kmax (no overflow at any depth)."""
        kmax = _check_k(kmax, "kmax", self._kmax_allowed())
        return self.product.log_moments(kmax)

    def moments(self, kmax: int, dps: Optional[int] = None):
        """m_k = E[lambda^k] (lambda an eigenvalue of J J^T), k = 1..kmax, from the S-transform
        series by Lagrange inversion (Pennington et al. 2017, eq. 18): float64 (inf where it
        overflows) or, with ``dps`` (an integer in [15, 1000]), mpmath numbers computed at
        ``dps`` digits."""
        if dps is not None:
            kmax = _check_k(kmax, "kmax", self._kmax_allowed(mp=True))
            dps = check_int("dps", dps, 15, _DPS_MAX)
            return self.product.moments_mp(kmax, dps)
        kmax = _check_k(kmax, "kmax", self._kmax_allowed())
        with np.errstate(over="ignore"):
            return np.exp(self.product.log_moments(kmax))

    def moment(self, k: int) -> float:
        """m_k (float64)."""
        k = _check_k(k, "k", self._kmax_allowed())
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
        0 otherwise. Non-finite ``x`` raises ValueError. Accurate down to ``x ~ 1e-300`` (the
        solver works with ``log(w + kappa)``; checked against the Fuss-Catalan law at depth 100,
        where the median is 1e-30 and the 1% quantile 1e-202)."""
        x = _check_x(x)
        out = self._batched(self.product.density, x.ravel()).reshape(x.shape)
        if np.any(x == 0):
            out[x == 0] = np.nan if self.lower_edge == 0 else 0.0
        return out

    def cdf(self, x) -> np.ndarray:
        """P(lambda <= x), atoms included (0 for x < 0; accurate down to x ~ 1e-300, see
        :meth:`density`)."""
        x = _check_x(x)
        xf = x.ravel()
        out = self._batched(self.product.cdf_continuous, xf)
        out = out + np.where(xf >= 0, self.zero_mass, 0.0)
        for a, m in self.atoms:
            out = out + np.where(xf >= a, m, 0.0)
        return np.clip(out, 0.0, 1.0).reshape(x.shape)

    def _batch_size(self) -> int:
        """Points per solver call such that its state stays below 256 MiB (multiple of 24)."""
        comps = max([law.c.size for law in self.product.laws] + [1])
        per_point = 128 * (len(self.product.groups) + comps + 1)
        return max(24, (_MEMORY_CHUNK // per_point) // 24 * 24)

    def _batched(self, fn, xf: np.ndarray) -> np.ndarray:
        """``fn(xf)``, in sorted batches of :meth:`_batch_size` points when there are more (the
        memory bound of the cost model in :func:`spectrum`)."""
        B = self._batch_size()
        if xf.size <= B:
            return fn(xf)
        order = np.argsort(xf, kind="stable")
        out = np.empty(xf.size)
        for i in range(0, xf.size, B):
            sel = order[i:i + B]
            out[sel] = fn(xf[sel])
        return out

    def mass_below(self, t) -> np.ndarray:
        """Fraction of squared singular values <= t (the CDF; atoms included)."""
        return self.cdf(_check_array("t", t))

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
        a log grid from 1e-12 upper_edge (0 if the density is already positive there: a lower
        edge below 1e-12 of the top is not resolved) where the density exceeds 1e-5 of
        ``continuous_mass/upper_edge`` (at a
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
        """The smallest x with P(lambda <= x) >= p (atoms included), for levels ``p`` in [0, 1]
        (array-like; non-finite or out-of-range levels raise ValueError).

        Solved in ``t = log x`` (a deep spectrum's mass spans hundreds of orders of magnitude;
        Fuss-Catalan: ``F ~ x^(1/(L+1))`` near 0, Haagerup & Moller 2012, Neuschel 2014): a table
        of F on a grid in ``t`` (down to ``x = 1e-300`` only as far as the smallest level needs,
        atoms entered with both one-sided values) brackets each level; then Newton in ``t`` on
        ``log(F_c)`` (lower half of the continuous mass) or on the log of the mass above x
        (upper half), with ``dF_c/dt = x rho(x)``
        (:meth:`signalprop.freeprob.FreeProduct.cdf_density_continuous`) or, from the second
        step, the secant slope when within a factor 10 of it; bisection when a step leaves the
        bracket; stopped at a step below 1e-8 in ``t`` or a bracket below 1e-10. Error: that of
        F (~1e-9 absolute) divided by ``dF/d log x`` (docs/theory/jacobian-spectrum.md).

        Levels ``p <= mass of the atom at 0`` give 0, ``p = 1`` the top of the support, levels
        inside an atom's jump its location. A level whose quantile lies below ``x = 1e-300``
        (outside the range where the law is evaluated in float64) raises ValueError."""
        p = _check_levels(p)
        out = np.empty(p.size)
        flat = p.ravel()
        out[flat <= self.zero_mass] = 0.0
        out[flat >= 1.0] = self.upper_edge
        todo = np.flatnonzero((flat > self.zero_mass) & (flat < 1.0))
        if todo.size:
            out[todo] = self._solve_quantiles(flat[todo])
        return out.reshape(p.shape)

    def _F_parts(self, x: np.ndarray, whole: bool = True):
        """(mass of the atom at 0 and the nonzero atoms at or below x -- 0 with ``whole``
        false --, F_c(x), rho_c(x)), F_c and rho_c from one vertical path per point, each a
        fixed function of its own x."""
        Fc, rho = self.product.cdf_density_continuous(x)
        base = np.zeros(x.shape)
        if whole:
            base += self.zero_mass
            for a, m in self.atoms:
                base = base + np.where(x >= a, m, 0.0)
        return base, Fc, rho

    def _log_table(self, pmin: float, whole: bool = True):
        """Table (x, F) sorted by x, F nondecreasing, with F[0] < pmin (extended down in log x
        as needed); atoms appear twice, (a, F(a-)) then (a, F(a)). F is the whole distribution
        function, or with ``whole`` false that of the continuous part alone (F_c, of mass
        continuous_mass). ValueError when the level pmin lies below F(1e-300)."""
        U = self.upper_edge if whole else self.product.upper_edge_continuous()
        if self._qtab.get(whole) is None:
            if not (U > 1e3 * _X_FLOOR):
                raise ValueError(f"quantile: the law lies below x = {U:.3g}, outside the range "
                                 f"where it is evaluated in float64 (x >= {_X_FLOOR:g})")
            xs = np.array([], float)
            if self.continuous_mass > 1e-14:
                top = U * (1.0 - np.array([1e-4, 1e-3, 1e-2, 0.04, 0.1, 0.2, 0.35, 0.5, 0.7]))
                low = U * np.exp(-np.array([1.5, 2.5, 4.0, 6.0, 9.0, 13.0, 18.0, 24.0, 30.0]))
                xs = np.unique(np.concatenate([top, low]))
                xs = xs[(xs > _X_FLOOR) & (xs < U)]
            base, Fc, _ = self._F_parts(xs, whole)
            rows = list(zip(xs.tolist(), (base + Fc).tolist()))
            if whole:
                for a, m in self.atoms:                   # both one-sided values at an atom
                    ba, Fa, _ = self._F_parts(np.array([a]))
                    rows += [(a, float(ba[0] + Fa[0]) - m), (a, float(ba[0] + Fa[0]))]
            rows.append((U, 1.0 if whole else self.continuous_mass))
            rows.sort()
            self._qtab[whole] = (np.array([r[0] for r in rows]), np.array([r[1] for r in rows]))
        x, F = self._qtab[whole]
        while pmin <= F[0] and x[0] > _X_FLOOR * 1.0000001:
            ext = x[0] * np.exp(-23.0 * np.arange(10, 0, -1))   # 10 steps of 10 decades
            if ext[0] <= _X_FLOOR:
                ext = np.concatenate([[_X_FLOOR], ext[ext > _X_FLOOR]])
            base, Fc, _ = self._F_parts(ext, whole)
            x = np.concatenate([ext, x])
            F = np.concatenate([base + Fc, F])
        F = np.maximum.accumulate(F)
        self._qtab[whole] = (x, F)
        if pmin <= F[0]:
            raise _BelowFloatRange(f"p: the quantile at level {pmin:.6g} lies below x = {x[0]:.3g}, "
                             f"the smallest x at which the law is evaluated in float64 "
                             f"(F there = {F[0]:.6g}); levels above that are resolved")
        return x, F

    def _solve_quantiles(self, ps: np.ndarray, whole: bool = True) -> np.ndarray:
        """Quantiles of the levels ``ps`` in (zero_mass, 1) (of the whole law), or in
        (0, continuous_mass) of the continuous part alone (``whole`` false): see
        :meth:`quantile`."""
        xt, Ft = self._log_table(float(ps.min()), whole)
        j = np.searchsorted(Ft, ps, side="left")          # first entry with F >= p (j >= 1)
        out = np.empty(ps.size)
        atom = xt[j - 1] == xt[j]                         # inside an atom's jump
        out[atom] = xt[j[atom]]
        idx = np.flatnonzero(~atom)
        if idx.size == 0:
            return out
        p = ps[idx]
        xa, xb, Fa, Fb = xt[j[idx] - 1], xt[j[idx]], Ft[j[idx] - 1], Ft[j[idx]]
        ta, tb = np.log(xa), np.log(xb)
        base = np.zeros(idx.size)                         # atoms at or below the bracket
        if whole:
            base += self.zero_mass
            for a, m in self.atoms:
                base = base + np.where(xa >= a, m, 0.0)
        top = (1.0 - base) if whole else np.full(idx.size, self.continuous_mass)
        q = p - base                                      # the level of F_c
        low = q <= top - q                                # Newton on log F_c, else log(top - F_c)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ga, gb = _log_gap(Fa - base, q, top, low), _log_gap(Fb - base, q, top, low)
            t = ta + ga / (ga - gb) * (tb - ta)           # interpolation in the log variables
            t = np.where(np.isfinite(t) & (t > ta) & (t < tb), t,
                         ta + (p - Fa) / (Fb - Fa) * (tb - ta))
        t = np.where(np.isfinite(t) & (t > ta) & (t < tb), t, 0.5 * (ta + tb))
        out[idx] = np.exp(self._newton_log_x(t, ta, tb, q, top, low))
        return out

    def _newton_log_x(self, t, ta, tb, q, top, low) -> np.ndarray:
        """Safeguarded Newton/secant in ``t = log x`` for ``F_c(e^t) = q`` inside the brackets
        ``(ta, tb)`` (see :meth:`quantile`); returns the roots ``t``."""
        res = np.full(t.size, np.nan)
        act = np.arange(t.size)
        t_prev = np.full(t.size, np.nan)
        g_prev = np.full(t.size, np.nan)
        for _ in range(100):
            if act.size == 0:
                break
            tx = t[act]
            x = np.exp(tx)
            _, Fc, rho = self._F_parts(x, whole=False)
            above = Fc >= q[act]
            tb[act] = np.where(above, tx, tb[act])
            ta[act] = np.where(above, ta[act], tx)
            lo_, qa, ta_ = low[act], q[act], top[act]
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                g = _log_gap(Fc, qa, ta_, lo_)
                dg = x * rho / np.where(lo_, Fc, ta_ - Fc)
                sec = (g - g_prev[act]) / (tx - t_prev[act])
                dg = np.where(np.isfinite(sec) & (sec > 0.1 * dg) & (sec < 10 * dg), sec, dg)
                step = -g / dg
                tn = tx + step
            t_prev[act], g_prev[act] = tx, g
            bis = ~np.isfinite(tn) | (tn <= ta[act]) | (tn >= tb[act])
            tn = np.where(bis, 0.5 * (ta[act] + tb[act]), tn)
            conv = ~bis & (np.abs(step) <= 1e-8)          # the next step would be ~step^2
            narrow = ~conv & (tb[act] - ta[act] <= 1e-10)
            res[act[conv]] = tn[conv]
            res[act[narrow]] = tb[act[narrow]]
            t[act] = tn
            act = act[~(conv | narrow)]
        res[act] = tb[act]                                # (bisection alone needs < 100 steps)
        return res

    def condition_number(self, tail: float = 0.0) -> float:
        """Condition number of the bulk of squared singular values: with ``tail = 0`` the ratio
        of the edges of the support of the continuous part (inf when it reaches 0); with
        ``tail > 0`` the ratio of the quantiles of the continuous part at ``1 - tail`` and ``tail``
        (of its own mass; nonzero atoms do not enter). The squared singular values' ratio: take
        the square root for that of the singular values. inf where the lower quantile lies below
        1e-300, outside the range where the law is evaluated (the ratio then exceeds 1e300 times
        the upper quantile; e.g. tail = 1e-3 at depth 100 of a linear gaussian network)."""
        tail = _check_real("tail", tail, lo=0.0, hi=0.5, hi_open=True)
        Mc = self.continuous_mass
        if Mc <= 1e-14:
            return 1.0 if self.atoms and len(self.atoms) == 1 and self.zero_mass == 0 else math.nan
        if tail == 0:
            lo = self.lower_edge
            hi = self.product.upper_edge_continuous()
            return math.inf if lo == 0 else hi / lo
        try:
            qs = self._solve_quantiles(np.array([tail * Mc, (1 - tail) * Mc]), whole=False)
        except _BelowFloatRange:
            return math.inf
        with np.errstate(over="ignore"):
            return float(qs[1] / qs[0])

    # -- grid and checks -----------------------------------------------------------------------
    def grid(self, n: int = 400) -> np.ndarray:
        """``n`` points (an integer in [1, 10^7]) over the support of the continuous part,
        clustered towards its edges (linear in x: for deep spectra, whose mass lies many orders
        of magnitude below the top, use a grid in log x between quantiles instead)."""
        n = check_int("n", n, 1, 10 ** 7)
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
        """JSON text of :meth:`to_dict`, with the package version (``signalprop_version``)."""
        return json.dumps({**to_jsonable(self.to_dict()), VERSION_KEY: __version__}, **kwargs)


class _BelowFloatRange(ValueError):
    """A quantile below 1e-300, where the law is not evaluated in float64."""


def _log_gap(f, q, top, low):
    """``log f - log q`` where ``low``, else ``log(top - q) - log(top - f)``: increasing in f,
    zero at f = q, and nearly linear in log x in power-law tails (quantile's Newton variable)."""
    return np.where(low, np.log(f) - np.log(q), np.log(top - q) - np.log(top - f))


def _check_real(name: str, value, lo: Optional[float] = None, hi: Optional[float] = None,
                hi_open: bool = False) -> float:
    """A finite real number (not a bool) in [lo, hi] (or [lo, hi) with ``hi_open``)."""
    rng = (f"in [{lo:g}, {hi:g}{')' if hi_open else ']'}" if hi is not None else
           f">= {lo:g}" if lo is not None else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number {rng}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or (lo is not None and v < lo) or \
            (hi is not None and (v >= hi if hi_open else v > hi)):
        raise ValueError(f"{name} must be a finite real number {rng}, got {value!r}")
    return v


def _check_k(k, name: str = "kmax", kmax: int = _KMAX_FLOAT) -> int:
    return check_int(name, k, 1, kmax)


def _check_array(name: str, x) -> np.ndarray:
    """A real array-like with finite entries (at least 1-D)."""
    if x is None or isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be a real number or an array of them, got {x!r}")
    try:
        arr = np.atleast_1d(np.asarray(x, dtype=float))
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number or an array of them, "
                        f"got {type(x).__name__}") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (real numbers), got non-finite entries")
    return arr


def _check_x(x):
    return _check_array("x", x)


def _check_levels(p):
    p = _check_array("p", p)
    if np.any((p < 0) | (p > 1)):
        bad = float(p[(p < 0) | (p > 1)][0])
        raise ValueError(f"p (quantile levels) must lie in [0, 1], got {bad!r}")
    return p


# ---------------------------------------------------------------------------------------------
# dynamical isometry


@dataclass(frozen=True, eq=False)
class Isometry(_Result):
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
        """Every field (numpy arrays kept); :meth:`to_json` and the short ``repr`` (a summary of
        each array: shape and range) come from :class:`~signalprop.results._Result`."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


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

    ``q_star``: the grid (default: 41 points log-spaced in [1e-4, 10]); ``depths``: integers in
    [1, 10^5]; ``edge_points``: an integer in [1, 1000].
    Cost: ``edge_points * len(depths)`` spectra with one law each, ~20 us per layer plus
    ~0.1 s each (the upper edge); the rest is O(len(q_star)).
    """
    act = _activation(activation)
    if not isinstance(weights, str) or weights not in WEIGHT_LAWS:
        raise ValueError(f"weights: no S-transform is implemented for weights={weights!r}; "
                         f"known: {', '.join(WEIGHT_LAWS)}")
    if q_star is None:
        qs = np.logspace(-4, 1, 41)
    else:
        qs = _check_array("q_star", q_star)
        if np.ndim(q_star) > 1 or np.any(qs <= 0):
            raise ValueError("q_star must be a non-empty 1-D array of positive finite numbers")
    if qs.size == 0:
        raise ValueError("q_star must be a non-empty 1-D array of positive finite numbers")
    if isinstance(depths, (str, bytes)) or not hasattr(depths, "__iter__"):
        raise TypeError(f"depths must be a sequence of integers in [1, 100000], got {depths!r}")
    depths = np.asarray([check_int("depths", d, 1, 10 ** 5) for d in depths], int)
    if depths.size == 0:
        raise ValueError("depths must be a non-empty sequence of integers in [1, 100000]")
    edge_points = check_int("edge_points", edge_points, 1, 1000)
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
                if not q0 > 0:
                    raise ValueError(f"q_star = {qs[k]:.6g}: the critical point has sigma_b^2 = "
                                     f"q* to float64 precision (the layers' input q0 = "
                                     f"(q* - sigma_b^2)/sigma_w^2 is {q0:.3g}); use smaller q_star")
                try:
                    edges[k, j] = spectrum(net, q0).upper_edge
                except ValueError as e:
                    raise ValueError(f"q_star = {qs[k]:.6g}: {e}") from None
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
        elif (iv.size >= 2 or act.name in _Q_INDEPENDENT) and spread <= 1e-9 * max(1.0, abs(float(vD[ib]))) and vD[ib] > 1e-9:
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
