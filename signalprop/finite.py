"""Finite-width laws: the distribution of squared norms of activations and gradients at finite width,
the log-normal law of Hanin & Nica, and the probability that a ReLU network is born dead.

Notation and estimators are those of CONVENTIONS.md: ``h^l = W^l x^{l-1} + b^l``, Gaussian weights
``W_ij ~ N(0, sigma_w^2/N_{l-1})``, loss ``<v, h^L>`` with ``v ~ N(0, I)``, and per sample network

    q_hat^l = ||h^l||^2 / N_l,    g_hat^l = ||delta^l||^2 / N_l,    G_hat^l = g_hat^l ||x^{l-1}||^2 / N_{l-1},

whose means are (to leading order in 1/N) the mean-field ``q^l``, ``g^l``, ``G^l`` of
:func:`~signalprop.meanfield.predict`. :func:`finite_width` gives, per layer, the mean and variance
of ``log q_hat``, ``log g_hat``, ``log G_hat``, their moment ratios ``E[X^2]/E[X]^2``, the
Hanin-Nica parameter ``beta`` and a log-normal law (:class:`LogNormalLaw`, scipy.stats-style).

1. Exact laws (Gaussian weights)
--------------------------------
*Conditional Gaussianity.* Given ``x^{l-1}``, the units of ``h^l`` are i.i.d. ``N(0, Q^l)`` with
``Q^l = sigma_w^2 ||x^{l-1}||^2/N_{l-1} + sigma_b^2``; so ``q_hat^l = Q^l chi^2_{N_l}/N_l``.

*Linear.* ``q_hat^l/q^l = prod_{k<=l} chi^2_{N_k}/N_k`` (no bias) and, since ``delta^l`` does not
depend on the forward pass, ``g_hat^l/g^l = prod_{k=l}^{L} chi^2_{N_k}/N_k`` (any bias; the factor
``k = L`` is ``||v||^2/N_L``). Each factor has mean 1, ``E[f^2] = 1 + 2/N``,
``E[log f] = psi(N/2) - log(N/2)``, ``Var[log f] = psi'(N/2)``. Hence
``E[||J u||^4]/||u||^4 = prod_l (1 + 2/N_l)`` for the input-output Jacobian ``J`` (W_ij ~ N(0, 1/N)).

*ReLU, no bias.* With ``K_l`` the number of active units of layer ``l`` (``K_l ~ Bin(N_l, 1/2)``,
independent of the magnitudes), ``||x^l||^2 = (sigma_w^2/N_{l-1}) ||x^{l-1}||^2 chi^2_{K_l}``, so

    q_hat^l/q^l = (chi^2_{N_l}/N_l) prod_{k<l} F_k,         F_k = (2/N_k) chi^2_{K_k}  (i.i.d. over k)
    g_hat^l/g^l = (chi^2_{N_L}/N_L) prod_{k=l}^{L-1} B_k,   B_k = (2/N_k) chi'^2_{K_k}

with ``chi'`` independent of ``chi`` given the shared ``K_k`` (Hanin & Rolnick 2018, arXiv
1803.01719; Hanin & Nica 2019, arXiv 1812.05994, whose matrix model has independent Bernoulli(1/2)
masks). ``E[F] = 1``, ``E[F^2] = 1 + 5/N`` (so ``E[M^2]/E[M]^2 = prod (1 + 5/N_k)(1 + 2/N_l)``
where the ``5``s count the ReLU layers *below* the pre-activation ``h^l`` and the ``2`` its own
Gaussian draw; the input layer adds nothing), ``E[F B] = 1 + 1/N``. ``F = 0`` when ``K = 0``
(a dead layer), so ``E[log F] = -inf``: log-moments are conditional on ``K >= 1``,

    E[log F | K>=1]   = sum_{k>=1} P(K=k | K>=1) [psi(k/2) + log(4/N)]
    Var[log F | K>=1] = sum_k P(K=k | K>=1) psi'(k/2) + Var[psi(K/2) | K>=1],

and the atom ``P(F = 0) = 2^{-N}`` is carried separately (``p_zero``; see :func:`dead_probability`).

*The backward law is exact for the network, not only for the matrix model* (derived here): with
``A = <v, h^L> = <delta^l, h^l>`` (Euler, positive homogeneity), the exact conditional sampling of
``W^l`` given ``h^l = W^l x^{l-1}`` (:class:`~signalprop.layers.dense.MatrixFreeGaussian`) gives
``||delta^{l-1}||^2 = A^2/||x^{l-1}||^2 + (sigma_w^2/N_{l-1}) ||delta^l||^2 chi^2_{K_{l-1}-1}``. Writing
``A^2/||x^{l-1}||^2 = (sigma_w^2/N_{l-1}) ||delta^l||^2 omega_l Psi_l`` with
``Psi_l = ||h^l||^2 N_{l-1}/(sigma_w^2 ||x^{l-1}||^2) ~ chi^2_{N_l}`` and
``omega_l = cos^2(delta^l, h^l)``, induction shows ``omega_l ~ Beta(1/2, (N_l - 1)/2)``
independent of ``Psi_l`` and of ``||delta^l||``: true at ``l = L`` (``v`` is isotropic), and
``omega_l Psi_l ~ chi^2_1`` (beta-gamma algebra) makes ``chi^2_1 + chi^2_{K-1} = chi^2_K``, while
``omega_{l-1} = Beta(1/2, (K-1)/2) Beta(K/2, (N-K)/2) ~ Beta(1/2, (N-1)/2)`` whatever ``K``.

2. General activations (approximation)
--------------------------------------
*Local noise.* At fixed ``Q^l`` three sample means of i.i.d. unit terms fluctuate:
``a = log(q_hat/Q)``, ``eta = log((||x^l||^2/N_l)/E[phi^2])`` and
``zeta = log((1/N_l) sum_i phi'(h_i)^2 xi_i^2 / E[phi'^2])``, the backward factor with
``(W^{l+1})^T delta^{l+1}`` replaced by a Gaussian vector ``xi`` of the same norm. Their means,
covariances and third cumulants come from the joint moments ``c`` of one unit's
``u = (z^2, phi^2/E phi^2, phi'^2 xi^2/E phi'^2)`` (``log(1+e) = e - e^2/2 + e^3/3 - ...``):

    E[log U_j]            = -c_jj/(2N) + c_jjj/(3N^2) - 3 c_jj^2/(4N^2)
    Cov(log U_j, log U_k) = c_jk/N - (c_jkk + c_jjk)/(2N^2) + c_jk (c_jj + c_kk)/N^2 + c_jk^2/(2N^2)
    k3(log U_j, U_k, U_m) = (c_jkm - c_jk c_km - c_jk c_jm - c_jm c_km)/N^2.

*Feedback.* ``eps^l = log(Q^l/q^l)`` fluctuates and moves the layer's statistics:
``rho_l = log(E[phi^2](Q^l)/E[phi^2](q^l)) + eta_l``, ``beta_l = log(E[phi'^2](Q^l)/E[phi'^2](q^l))
+ zeta_l``, ``eps^{l+1} = log(w_l e^{rho_l} + 1 - w_l)`` with
``w_l = sigma_w^2 E[phi^2]/(sigma_w^2 E[phi^2] + sigma_b^2)``, and
``log(g_hat^l/g^l) = c_L + sum_{k=l}^{L-1} beta_k``, ``c_L = log(chi^2_{N_L}/N_L)``. Layer by layer,
``eps^l`` is taken Gaussian (mean, variance) and these maps are integrated over it by 9-point
Gauss-Hermite (statistical linearisation: the slopes ``A_l, B_l, w_l`` are regressions, not
derivatives); correlations across layers are carried to first order by the linear model
``eps^{l+1} = w_l (A_l eps^l + eta_l)``, ``beta_l = B_l eps^l + zeta_l``.

*Rank-one coupling.* Exactly, ``(W^l)^T delta^l = x^{l-1} s (h^l.delta^l)/Q^l + (independent part
orthogonal to the layer input)`` (``s = sigma_w^2/N_{l-1}``), so
``E||delta^{l-1}||^2`` gets the relative correction ``w_{l-1} r_{l-1} theta_l / N_{l-1}`` with
``r = E[phi^2 phi'^2]/(E phi^2 E phi'^2)`` and ``theta_l = E[(h^l.delta^l)^2/(Q^l ||delta^l||^2)] - 1``,
which obeys ``theta_L = 0`` (``v`` is isotropic) and
``theta_{l-1} = 2 B_{l-1} + w_{l-1} A_{l-1}^2 (E phi^2/(q E phi'^2))_{l-1} theta_l`` (``2B = E[z^2
phi'^2]/E phi'^2 - 1``). For ReLU ``B = 0`` and ``theta = 0``: the exact cancellation of §1.
The same ``W^{l+1}`` also makes ``zeta_l`` and the next forward factor ``eta_{l+1}`` covary,
``Cov(zeta_l, eta_{l+1}) = (w r/N)_l (E[phi^4]/E[phi^2]^2 - 1)_{l+1}/N_{l+1}`` (10/N^2 for ReLU,
2/N^2 for linear layers), which no per-layer marginal sees but the total gradient norm does
(:mod:`signalprop.clipping`); the weaker covariances with ``eta_j``, ``j > l + 1``, are omitted.

For linear and ReLU layers without bias the slopes are ``A = 1``, ``B = 0``, ``w = 1`` and the
local laws are the exact ones of §1, so the model *is* the exact law. Elsewhere it holds while
``Var eps`` stays small; it degrades (reported in ``note``) when the forward log-variance grows
beyond about 1 with an activation that is not positively homogeneous (e.g. GELU near the edge of
chaos, where the length map is nearly neutral).

*Fourth moments and beta.* The moment ratio of the gradient is the fourth-moment recursion

    E[g_hat^l 2]/E[g_hat^l]^2 = (1 + (3 kappa_l - 1)/N_l) E[g_hat^{l+1} 2]/E[g_hat^{l+1}]^2,
    kappa_l = E[phi'(h)^4]/E[phi'(h)^2]^2 at h ~ N(0, q^l),   starting from 1 + 2/N_L,

(mean-field ``q^l``, layers independent: exact for linear and ReLU), and Hanin & Nica's
``beta_l = sum_{k=l}^{L-1} (3 kappa_k - 1)/N_k + 2/N_L`` (ReLU: ``5 sum 1/N + 2/N_L``; their
Thm 1 / Cor 3: ``log`` of the normalised squared norm ~ ``N(-beta/2, beta)``). The forward ratio
uses ``E[phi^4]/E[phi^2]^2`` and the slopes ``w A`` (exact for linear, and ReLU without bias).

3. Where mean-field theory breaks
---------------------------------
The typical (median) ``g_hat`` is ``e^{-beta/2}`` times the mean-field ``g`` and a one-sigma band
spans a factor ``e^{2 sqrt(beta)}``: mean-field theory describes a typical network only while
``beta << 1``; ``beta >= 1`` (ReLU: depth/width ``>= 0.2``) is the finite-width regime where the
mean is carried by rare large draws. The log-normal law itself is asymptotic (Kolmogorov distance
``O((sum 1/N^2)^{1/5})``): it degrades when single layers are narrow (``N <~ 10``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np
from scipy import special, stats

from . import gaussian
from ._validate import (_as_float_array, check_finite, check_int, check_memory, finite_scalar,
                        positive_scalar, short_repr)
from .activations import Activation
from .meanfield import predict
from .layers.dense import Dense
from .network import MAX_WIDTH, Network, has_capability
from .results import _Result

__all__ = ["LogNormalLaw", "FiniteWidthProfile", "finite_width", "chi2_factor", "relu_factor",
           "hanin_nica_beta", "DeadNetwork", "dead_probability", "regime_of_beta",
           "BETA_MEANFIELD", "BETA_BREAKS"]

#: beta below which mean-field theory describes a typical network (median within 5 %).
BETA_MEANFIELD = 0.1
#: beta from which mean-field theory no longer describes a typical network.
BETA_BREAKS = 1.0

_Q_LO, _Q_HI = 1e-200, 1e100
_MAX_SKEW = 1.5


# ---------------------------------------------------------------------------------------------
# the distribution object


def _skew_coefficient(skew: float) -> float:
    """c with skewness((6c + 8c^3)/(1 + 2c^2)^(3/2)) of ``z + c (z^2 - 1)`` equal to ``skew``."""
    if skew == 0.0:
        return 0.0
    if abs(skew) >= 2.0:
        raise ValueError(f"skew must lie in (-2, 2) for the Cornish-Fisher law, got {skew!r}")
    from scipy.optimize import brentq
    f = lambda c: (6 * c + 8 * c ** 3) / (1 + 2 * c * c) ** 1.5 - abs(skew)  # noqa: E731
    return math.copysign(brentq(f, 0.0, 10.0, xtol=1e-15), skew)


def _safe_exp(x: float) -> float:
    """exp(x), inf where it exceeds float64 (instead of OverflowError)."""
    return math.exp(x) if x < 709.78 else math.inf


def _scaled_gauss_integral(factor: float, log_scale: float, a, b, lo, hi,
                           direct: bool = True) -> float:
    """``factor exp(log_scale) int_lo^hi exp(a z + b z^2) phi(z) dz`` (inf where 1 - 2b <= 0).

    Directly while the factors fit in float64; otherwise in logs: with ``d = 1 - 2b``,
    ``m = a/d``, the integral is ``exp(a^2/(2d)) / sqrt(d) (Phi(sqrt(d)(hi - m)) -
    Phi(sqrt(d)(lo - m)))`` (complete the square), whose logarithm is formed with ``log_ndtr``
    (on the side of the smaller tail). The result is inf only where the value exceeds float64."""
    d = 1.0 - 2.0 * b
    if d <= 0:
        return math.inf
    log_pref = 0.5 * a * a / d - 0.5 * math.log(d)
    if direct and abs(log_scale) < 700 and log_pref < 700:
        return factor * math.exp(log_scale) * _gauss_quad_integral(a, b, lo, hi)
    if factor == 0:
        return 0.0
    m, sd = a / d, math.sqrt(d)
    u_lo, u_hi = sd * (lo - m), sd * (hi - m)
    if u_hi <= u_lo:
        return 0.0
    if u_lo > 0:  # both in the upper tail: Phi(u_hi) - Phi(u_lo) = Phi(-u_lo) - Phi(-u_hi)
        big, small = float(special.log_ndtr(-u_lo)), float(special.log_ndtr(-u_hi))
    else:
        big, small = float(special.log_ndtr(u_hi)), float(special.log_ndtr(u_lo))
    if big == -math.inf:
        return 0.0
    log_diff = big + math.log1p(-math.exp(small - big)) if small < big else -math.inf
    return _safe_exp(math.log(factor) + log_scale + log_pref + log_diff)


def _gauss_quad_integral(a, b, lo, hi):
    """int_lo^hi exp(a z + b z^2) phi(z) dz (1 - 2b > 0; lo, hi may be infinite)."""
    d = 1.0 - 2.0 * b
    if d <= 0:
        return math.inf
    m = a / d
    s = math.sqrt(d)
    pref = math.exp(0.5 * a * a / d) / s
    return pref * float(special.ndtr(s * (hi - m)) - special.ndtr(s * (lo - m)))


def _real_array(name: str, x) -> np.ndarray:
    """``x`` as a float array of real numbers, +-inf allowed, NaN refused."""
    arr = _as_float_array(name, x)
    if np.isnan(arr).any():
        raise ValueError(f"{name} must not be nan, got {short_repr(x)}")
    return arr


@dataclass(frozen=True, eq=False)
class LogNormalLaw(_Result):
    """Law of a random variable ``X >= 0``: an atom ``p0`` at ``X = 0`` (a dead ReLU network) and,
    given ``X > 0``, ``log X`` with mean ``mu``, variance ``sigma2`` and skewness ``skew``, in the
    style of a frozen scipy.stats distribution.

    ``skew = 0``: ``log X ~ N(mu, sigma2)`` (log-normal). Otherwise ``log X = mu + s (z + c (z^2
    - 1))``, ``z ~ N(0, 1)`` (a Cornish-Fisher / Fleishman transform; ``c`` and ``s`` solve for the
    given variance and skewness exactly; the branch ``z < -1/(2c)`` where the transform folds back,
    probability ``Phi(-1/(2|c|))``, below 1e-9 for |skew| < 0.5, is clamped). Methods: ``mean,
    var, std, median, moment, pdf, logpdf, cdf, sf, ppf, isf, interval, rvs, partial_mean,
    partial_inverse_mean``; ``log_law()`` (scipy's normal law of ``log X`` when ``skew = 0``).
    """

    mu: float
    sigma2: float
    p0: float = 0.0
    label: str = ""
    skew: float = 0.0

    def __post_init__(self):
        for name in ("mu", "sigma2", "p0", "skew"):
            object.__setattr__(self, name, finite_scalar(name, getattr(self, name)))
        if not isinstance(self.label, str):
            raise TypeError(f"label must be a string, got {short_repr(self.label)}")
        if self.sigma2 < 0:
            raise ValueError(f"sigma2 must be >= 0, got {self.sigma2!r}")
        if not 0.0 <= self.p0 < 1.0:
            raise ValueError(f"p0 must lie in [0, 1), got {self.p0!r}")
        c = _skew_coefficient(self.skew)
        object.__setattr__(self, "_c", c)
        object.__setattr__(self, "_s", math.sqrt(self.sigma2 / (1.0 + 2.0 * c * c)))

    def to_dict(self) -> dict:
        return {"mu": self.mu, "sigma2": self.sigma2, "p0": self.p0, "skew": self.skew,
                "label": self.label}

    @property
    def sigma(self) -> float:
        return math.sqrt(self.sigma2)

    def log_law(self):
        """scipy.stats frozen normal law of ``log X`` given ``X > 0`` (``skew = 0`` only)."""
        if self.skew != 0:
            raise ValueError("log_law() is the normal law; this law has skew != 0")
        return stats.norm(self.mu, self.sigma)

    def scaled(self, factor: float, label: str = "") -> "LogNormalLaw":
        """The law of ``factor * X`` (factor > 0)."""
        factor = positive_scalar("factor", factor)
        return LogNormalLaw(self.mu + math.log(factor), self.sigma2, self.p0, label or self.label,
                            self.skew)

    # the transform log X = mu + s (z + c (z^2 - 1)) = mu - s c + s z + s c z^2
    def _fold(self) -> float:
        return -0.5 / self._c if self._c > 0 else (0.5 / -self._c if self._c < 0 else -math.inf)

    def _y_of_z(self, z):
        z = np.asarray(z, float)
        c = self._c
        if c > 0:
            z = np.maximum(z, self._fold())
        elif c < 0:
            z = np.minimum(z, self._fold())
        return self.mu + self._s * (z + c * (z * z - 1.0))

    def _z_of_logx(self, lx):
        """z with y(z) = lx on the monotone branch (+-inf outside the range)."""
        lx = np.asarray(lx, float)
        if self._s == 0:
            return np.where(lx > self.mu, np.inf, np.where(lx < self.mu, -np.inf, 0.0))
        y = (lx - self.mu) / self._s
        c = self._c
        if c == 0:
            return y
        disc = 1.0 + 4.0 * c * (y + c)
        with np.errstate(invalid="ignore"):
            z = (-1.0 + np.sqrt(np.maximum(disc, 0.0))) / (2.0 * c)
        edge = -np.inf if c > 0 else np.inf
        return np.where(disc >= 0, z, edge)

    def _lx(self, x):
        x = np.asarray(x, float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(np.where(x > 0, x, np.nan))

    # moments: E[X^n | X > 0] = e^{n (mu - s c)} int exp(n s z + n s c z^2) phi(z) dz
    def moment(self, n: float) -> float:
        """E[X^n] (n > 0; inf where it diverges or exceeds float64)."""
        n = positive_scalar("n", n)
        a, b = n * self._s, n * self._s * self._c
        return _scaled_gauss_integral(1.0 - self.p0, n * (self.mu - self._s * self._c), a, b,
                                                        -math.inf, math.inf)

    def mean(self) -> float:
        return self.moment(1)

    def var(self) -> float:
        m = self.mean()
        return self.moment(2) - m * m

    def std(self) -> float:
        return math.sqrt(max(self.var(), 0.0))

    def median(self) -> float:
        return float(self.ppf(0.5))

    def cdf(self, x):
        """P(X <= x)."""
        x = _real_array("x", x)
        z = self._z_of_logx(self._lx(x))
        out = self.p0 + (1.0 - self.p0) * special.ndtr(np.where(np.isnan(z), -np.inf, z))
        return np.where(x >= 0, out, 0.0)

    def sf(self, x):
        """P(X > x)."""
        x = _real_array("x", x)
        z = self._z_of_logx(self._lx(x))
        out = (1.0 - self.p0) * special.ndtr(-np.where(np.isnan(z), -np.inf, z))
        return np.where(x >= 0, out, 1.0)

    def logpdf(self, x):
        """Log density of the continuous part (which integrates to ``1 - p0``)."""
        x = _real_array("x", x)
        lx = self._lx(x)
        z = self._z_of_logx(lx)
        with np.errstate(divide="ignore", invalid="ignore"):
            jac = self._s * (1.0 + 2.0 * self._c * z)
            out = (math.log1p(-self.p0) - 0.5 * z * z - 0.5 * math.log(2 * math.pi)
                   - np.log(jac) - lx)
        return np.where((x > 0) & np.isfinite(z), out, -np.inf)

    def pdf(self, x):
        return np.exp(self.logpdf(x))

    def ppf(self, p):
        """Quantile: the smallest x with P(X <= x) >= p."""
        check_finite("p", p)
        p = np.asarray(p, float)
        if np.any((p < 0) | (p > 1)):
            raise ValueError(f"p must lie in [0, 1] (probabilities), got {short_repr(p)}")
        r = (p - self.p0) / (1.0 - self.p0)
        with np.errstate(invalid="ignore", over="ignore"):
            x = np.exp(self._y_of_z(special.ndtri(np.clip(r, 0.0, 1.0))))
        return np.where(p <= self.p0, 0.0, x)

    def isf(self, p):
        """Inverse survival function: ``ppf(1 - p)``."""
        check_finite("p", p)
        return self.ppf(1.0 - np.asarray(p, float))

    def interval(self, confidence: float):
        """Equal-tailed interval holding ``confidence`` (in [0, 1]) of the mass."""
        confidence = finite_scalar("confidence", confidence)
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence must lie in [0, 1], got {confidence!r}")
        a = 0.5 * (1.0 - confidence)
        return self.ppf(a), self.ppf(1.0 - a)

    def rvs(self, size=None, random_state=None):
        """Random draws (``size``: None, an int >= 0 or a tuple of them; ``random_state``: None,
        an int seed >= 0 or a numpy Generator)."""
        if size is not None:
            sizes = size if isinstance(size, tuple) else (size,)
            size = tuple(check_int("size", n, 0) for n in sizes)
            check_memory(f"rvs(size={size})", 16.0 * math.prod(size))
        if random_state is not None and not isinstance(random_state, np.random.Generator):
            random_state = check_int("random_state", random_state, 0)
        rng = np.random.default_rng(random_state)
        x = np.exp(self._y_of_z(rng.standard_normal(size)))
        if self.p0 > 0:
            x = np.where(rng.random(size) < self.p0, 0.0, x)
        return x

    def partial_mean(self, c: float) -> float:
        """E[X; 0 < X <= c] (0 for c <= 0)."""
        c = finite_scalar("c", c)
        if c <= 0:
            return 0.0
        zc = float(self._z_of_logx(math.log(c)))
        lo = self._fold() if self._c > 0 else -math.inf
        hi = min(zc, self._fold()) if self._c < 0 else zc
        if hi <= lo:
            return 0.0
        a, b = self._s, self._s * self._c
        return _scaled_gauss_integral(1.0 - self.p0, self.mu - self._s * self._c, a, b, lo, hi)

    def partial_inverse_mean(self, c: float) -> float:
        """E[1/X; X > c] (c > 0)."""
        c = positive_scalar("c", c)
        zc = float(self._z_of_logx(math.log(c)))
        hi = self._fold() if self._c < 0 else math.inf
        lo = max(zc, self._fold()) if self._c > 0 else zc
        if hi <= lo:
            return 0.0
        a, b = -self._s, -self._s * self._c
        return _scaled_gauss_integral(1.0 - self.p0, -(self.mu - self._s * self._c), a, b,
                                                        lo, hi)


# ---------------------------------------------------------------------------------------------
# exact per-layer factors


def _check_width(name: str, n) -> int:
    try:
        return check_int(name, n, 1, MAX_WIDTH)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= 1 (beta = sum 1/N needs finite positive "
                         f"widths), got {n!r}") from None


def chi2_factor(n: int) -> dict:
    """The factor ``f = chi^2_N / N`` (see :func:`_chi2_factor`); a fresh dict per call."""
    return dict(_chi2_factor(_check_width("N", n)))


# _chi2_factor and _relu_factor are cached by the width n (an int; lru_cache, the 4096 most
# recent): pure functions of n, read only through chi2_factor / relu_factor, which copy the dict,
# so no caller can alter a cached value.
@lru_cache(maxsize=4096)
def _chi2_factor(n: int) -> dict:
    """The factor ``f = chi^2_N / N`` (a Gaussian layer): ``mean = 1``, ``m2 = E f^2 = 1 + 2/N``,
    ``var = 2/N``, ``log_mean = psi(N/2) - log(N/2)``, ``log_var = psi'(N/2)``, ``p_zero = 0``."""
    return {"mean": 1.0, "m2": 1.0 + 2.0 / n, "var": 2.0 / n,
            "log_mean": float(special.digamma(0.5 * n) - math.log(0.5 * n)),
            "log_var": float(special.polygamma(1, 0.5 * n)),
            "log_k3": float(special.polygamma(2, 0.5 * n)), "p_zero": 0.0}


def _binomial_half(n: int):
    """k = 1..n and P(K = k | K >= 1) for K ~ Bin(n, 1/2) (terms below 1e-30 dropped)."""
    if n <= 4000:
        k = np.arange(1, n + 1)
    else:
        half = 20.0 * math.sqrt(n)
        k = np.arange(max(1, int(n / 2 - half)), min(n, int(n / 2 + half)) + 1)
    logp = (special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)
            - n * math.log(2.0))
    p = np.exp(logp)
    p0 = 2.0 ** -n
    return k, p / (1.0 - p0) if p0 < 1 else p


def relu_factor(n: int) -> dict:
    """The ReLU layer factor ``(2/N) chi^2_K`` (see :func:`_relu_factor`); a fresh dict per call."""
    return dict(_relu_factor(_check_width("N", n)))


@lru_cache(maxsize=4096)
def _relu_factor(n: int) -> dict:
    """The ReLU layer factor ``F = (2/N) chi^2_K``, ``K ~ Bin(N, 1/2)`` (module docstring, §1).

    ``mean = 1``, ``m2 = E F^2 = 1 + 5/N``, ``var = 5/N``, ``p_zero = P(F = 0) = 2^{-N}``;
    ``log_mean``, ``log_var``: E and Var of ``log F`` given ``F > 0`` (digamma / trigamma sums);
    ``cross_m2 = E[F B] = 1 + 1/N`` for the forward and backward factors of one layer (shared ``K``)
    and ``log_cross``: ``Cov(log F, log B | K >= 1) = Var[psi(K/2)]``.
    """
    k, p = _binomial_half(n)
    m = special.digamma(0.5 * k) + math.log(4.0 / n)
    mu = float(p @ m)
    d = m - mu
    vpsi = float(p @ d ** 2)
    t1, t2 = special.polygamma(1, 0.5 * k), special.polygamma(2, 0.5 * k)
    return {"mean": 1.0, "m2": 1.0 + 5.0 / n, "var": 5.0 / n, "log_mean": mu,
            "log_var": float(p @ t1) + vpsi, "log_k3": float(p @ (t2 + 3 * t1 * d + d ** 3)),
            "p_zero": 2.0 ** -n, "cross_m2": 1.0 + 1.0 / n, "log_cross": vpsi,
            "log_k3_cross": float(p @ ((t1 + d * d) * d))}


def hanin_nica_beta(widths: Sequence[int], p: float = 0.5) -> float:
    """``beta = (3/p - 1) sum_i 1/n_i`` (Hanin & Nica 2019, Thm 1 with Gaussian weights, whose
    fourth-moment term vanishes; ReLU: p = 1/2, beta = 5 sum 1/n_i). ``widths``: the widths whose
    Bernoulli(p) masks the product crosses. Raises ValueError for an empty list or widths that are
    not integers >= 1 (beta undefined)."""
    if isinstance(widths, Network):
        raise TypeError(f"widths must be a sequence of layer widths (e.g. network.widths[1:]), "
                        f"got {short_repr(widths)}")
    if isinstance(widths, (list, tuple, np.ndarray)) and \
            any(isinstance(w, (list, tuple, np.ndarray)) for w in widths):
        raise ValueError(f"widths must be an integer or a flat sequence of integers, got "
                         f"{short_repr(widths)}")
    ws = list(np.atleast_1d(np.asarray(widths, dtype=object)).ravel())
    if not ws:
        raise ValueError("beta needs at least one width (widths is empty)")
    ws = [_check_width("width", w) for w in ws]
    p = finite_scalar("p", p)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p must lie in (0, 1], got {p!r}")
    return (3.0 / p - 1.0) * sum(1.0 / w for w in ws)


def regime_of_beta(beta: float) -> str:
    """``mean-field`` (beta < 0.1), ``finite-width`` (0.1 <= beta < 1) or ``mean-field breaks``."""
    if beta < BETA_MEANFIELD:
        return "mean-field"
    return "finite-width" if beta < BETA_BREAKS else "mean-field breaks"


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


# ---------------------------------------------------------------------------------------------
# the model


@dataclass
class _Model:
    """The log model of module docstring section 2, 0-based over layers. ``A, B, w`` are the
    statistically linearised slopes (Gauss-Hermite over the Gaussian-closure law of ``eps``),
    ``v_eta, v_zeta, c_eta_zeta`` the innovation (co)variances of each layer."""

    mf: dict               # mean-field statistics at q^l (arrays over layers)
    w: np.ndarray
    A: np.ndarray
    B: np.ndarray
    m_eps: np.ndarray
    v_eps: np.ndarray
    m_fwd: np.ndarray
    v_fwd: np.ndarray
    m_rho: np.ndarray
    v_rho: np.ndarray
    m_beta: np.ndarray
    v_beta: np.ndarray
    v_eta: np.ndarray
    v_zeta: np.ndarray
    c_eta_zeta: np.ndarray
    c_zeta_eta_next: np.ndarray   # Cov(zeta_i, eta_{i+1})
    R: np.ndarray          # d S_i / d eps_i
    m_c: float
    v_c: float
    k3_c: float
    worst: tuple           # (Var eps, layer) at the worst general-activation layer


def _build_model(network: Network, log_q: np.ndarray) -> _Model:
    layers = network.layers
    L = len(layers)
    n = network.widths[1:].astype(float)
    lq = np.clip(np.asarray(log_q, float), math.log(_Q_LO), math.log(_Q_HI))
    Q = np.exp(lq)
    lo = max(math.log(_Q_LO), float(lq.min()) - _TABLE_MARGIN)
    hi = min(math.log(_Q_HI), float(lq.max()) + _TABLE_MARGIN)
    tables: dict = {}
    stats_of = []
    for i, la in enumerate(layers):
        key = id(la.activation)
        if key not in tables:
            own = lq[[j for j, lb in enumerate(layers) if lb.activation == la.activation]]
            tables[key] = _stats_table(la.activation, lo, hi, (float(own.min()), float(own.max())))
        stats_of.append(tables[key])
    # mean-field statistics of every layer, grouped by activation
    mf: dict = {}
    for key, st in tables.items():
        ids = np.array([i for i, s in enumerate(stats_of) if s is st])
        d = st.at(Q[ids], n[ids])
        for k, v in d.items():
            if k not in mf:
                mf[k] = np.zeros((L,) + v.shape[1:])
            mf[k][ids] = v
    sw2 = np.array([la.sigma_w2 for la in layers])
    sb2 = np.array([la.sigma_b2 for la in layers])
    w = np.ones(L)
    for i in range(L - 1):
        if sb2[i + 1] > 0:
            a = sw2[i + 1] * math.exp(mf["log_m_p"][i])
            w[i] = a / (a + sb2[i + 1])
    # rank-one coupling: theta[i] = E[(h.delta)^2/(Q ||delta||^2)] - 1 (0 for the isotropic v)
    theta = np.zeros(L)
    for i in range(L - 2, -1, -1):
        theta[i] = 2.0 * mf["B"][i] + w[i] * mf["A"][i] ** 2 * mf["s_pd"][i] * theta[i + 1]
    rank_one = np.zeros(L)
    rank_one[:-1] = w[:-1] * mf["r_pd"][:-1] * theta[1:] / n[:-1]
    z = {k: np.zeros(L) for k in ("A", "B", "w", "m_eps", "v_eps", "m_fwd", "v_fwd", "m_rho",
                                  "v_rho", "m_beta", "v_beta", "v_eta", "v_zeta", "c_eta_zeta")}
    me, ve = 0.0, 0.0
    worst = (0.0, 0)
    t, om = _GH_T, _GH_W
    cached = None
    for i in range(L):
        st = stats_of[i]
        z["m_eps"][i], z["v_eps"][i] = me, ve
        sd = math.sqrt(max(ve, 0.0))
        eps = me + sd * t
        if st.kind == "general":
            if ve > worst[0]:
                worst = (ve, i + 1)
            key = (id(st), Q[i], n[i], mf["log_m_p"][i], mf["log_m_d"][i])
            if (cached is not None and cached[0] == key and abs(cached[1] - me) <= 1e-15
                    and abs(cached[2] - ve) <= 1e-15 * max(ve, 1e-300)):
                Fp, Fd, mean, cov = cached[3]     # a steady state: the same layer again
            else:
                S = st.at(Q[i] * np.exp(eps), n[i])
                Fp = S["log_m_p"] - mf["log_m_p"][i]
                Fd = S["log_m_d"] - mf["log_m_d"][i]
                mean, cov = om @ S["mean"], np.einsum("k,kij->ij", om, S["cov"])
                cached = (key, me, ve, (Fp, Fd, mean, cov))
        else:   # scale-free local law: log m_p(q e^eps) - log m_p(q) = eps, log m_d constant
            Fp, Fd = eps, 0.0 * eps
            mean, cov = mf["mean"][i], mf["cov"][i]
        eFp, eFd = om @ Fp, om @ Fd
        dp, dd, de = Fp - eFp, Fd - eFd, eps - me
        if ve > 0:
            A_eff, B_eff = (om @ (dp * de)) / ve, (om @ (dd * de)) / ve
        else:
            A_eff, B_eff = (mf["A"][i], mf["B"][i]) if st.kind == "general" else (1.0, 0.0)
        z["A"][i], z["B"][i] = A_eff, B_eff
        z["m_fwd"][i] = me + mean[0]
        z["v_fwd"][i] = ve + cov[0, 0]
        z["m_rho"][i] = eFp + mean[1]
        z["v_rho"][i] = om @ dp ** 2 + cov[1, 1]
        z["m_beta"][i] = eFd + mean[2] + rank_one[i]
        z["v_beta"][i] = om @ dd ** 2 + cov[2, 2]
        c_br = om @ (dp * dd) + cov[1, 2]
        z["v_eta"][i] = max(z["v_rho"][i] - A_eff ** 2 * ve, 0.0)
        z["v_zeta"][i] = max(z["v_beta"][i] - B_eff ** 2 * ve, 0.0)
        z["c_eta_zeta"][i] = c_br - A_eff * B_eff * ve
        # eps^{i+1} = log(w e^rho + 1 - w)
        mr, vr = z["m_rho"][i], z["v_rho"][i]
        if w[i] == 1.0:
            me, ve, w_eff = mr, vr, 1.0
        else:
            r = mr + math.sqrt(vr) * t
            e = np.log(w[i] * np.exp(r) + (1.0 - w[i]))
            me = float(om @ e)
            ve = float(om @ (e - me) ** 2)
            w_eff = float(om @ ((e - me) * (r - mr))) / vr if vr > 0 else w[i]
        z["w"][i] = w_eff
        z.setdefault("c_beta_rho", np.zeros(L))[i] = c_br
    # W^{i+1} enters both zeta_i and eta_{i+1}: the rank-one piece of ||delta^i||^2 moves with
    # the forward factor of layer i + 1 (ReLU: it is (h.delta)^2/||x^i||^2 = frac * ||x^{i+1}||^2,
    # section 1), so Cov(zeta_i, eta_{i+1}) = (w r / N)_i (kappa_p - 1)_{i+1} / N_{i+1} to leading
    # order: 10/(N_i N_{i+1}) for ReLU, 2/(N_i N_{i+1}) for linear layers (= 2 (delta^T W h)^2 terms)
    z["c_zeta_eta_next"] = np.zeros(L)
    z["c_zeta_eta_next"][:-1] = (w[:-1] * mf["r_pd"][:-1] / n[:-1]) * (mf["kappa_p"][1:] - 1.0) / n[1:]
    R = np.zeros(L)
    for i in range(L - 2, -1, -1):
        R[i] = z["B"][i] + z["w"][i] * z["A"][i] * R[i + 1]
    c = chi2_factor(int(network.widths[-1]))
    c_br = z.pop("c_beta_rho")
    model = _Model(mf=mf, R=R, m_c=c["log_mean"], v_c=c["log_var"], k3_c=c["log_k3"],
                   worst=worst, **z)
    model.mf["n"] = n
    model.mf["c_beta_rho"] = c_br
    model.mf["w"] = w
    return model


def _moments_per_layer(mod: _Model) -> dict:
    """E and Var of log(q_hat/q), log(g_hat/g), log(G_hat/G) per layer (O(L))."""
    L = len(mod.w)
    ES, VS = np.zeros(L), np.zeros(L)
    cbn = mod.w * mod.mf["c_beta_rho"]                 # Cov(beta_i, eps_{i+1})
    for i in range(L - 2, -1, -1):
        ES[i] = mod.m_beta[i] + ES[i + 1]
        VS[i] = mod.v_beta[i] + VS[i + 1] + 2.0 * cbn[i] * mod.R[i + 1]
    m_g = mod.m_c + ES
    v_g = mod.v_c + VS
    m_G, v_G = m_g.copy(), v_g.copy()
    m_G[1:] += mod.m_rho[:-1]
    v_G[1:] += mod.v_rho[:-1] + 2.0 * mod.R[1:] * mod.w[:-1] * mod.v_rho[:-1]
    # third cumulants (local skews carried linearly; the feedback's own skew is neglected)
    k3 = mod.mf["k3"]
    k3e = np.zeros(L)
    for i in range(L - 1):
        k3e[i + 1] = (mod.w[i] * mod.A[i]) ** 3 * k3e[i] + mod.w[i] ** 3 * k3[i, 0]
    n = np.asarray(mod.mf["n"], float)
    k3_fwd = k3e + special.polygamma(2, 0.5 * n)
    k3_rho = mod.A ** 3 * k3e + k3[:, 0]
    zz = np.append(k3[:-1, 3], 0.0)
    k3_g = mod.k3_c + np.cumsum(zz[::-1])[::-1]
    k3_G = k3_g.copy()
    k3_G[1:] += k3_rho[:-1]

    def skew(k, v):
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(v > 0, k / np.maximum(v, 1e-300) ** 1.5, 0.0)
        return np.clip(s, -_MAX_SKEW, _MAX_SKEW)

    return {"m_fwd": mod.m_fwd, "v_fwd": mod.v_fwd, "m_g": m_g, "v_g": v_g, "m_G": m_G, "v_G": v_G,
            "s_fwd": skew(k3_fwd, mod.v_fwd), "s_g": skew(k3_g, v_g), "s_G": skew(k3_G, v_G)}


def _log_covariance(mod: _Model, bias_terms: bool, full: bool = True) -> tuple:
    """Covariance matrix (first order in the model) of the log weight-gradient ratios
    ``log(G_hat^l/G^l)``, l = 1..L, followed (if ``bias_terms``) by ``log(g_hat^l/g^l)``.

    Each is a linear combination of the innovations ``eta_j, zeta_j`` of the layers and of
    ``c_L``: ``eps_{k+1} = w_k (A_k eps_k + eta_k)``, ``rho_k = A_k eps_k + eta_k``,
    ``beta_k = B_k eps_k + zeta_k``, ``log(g_hat^l/g^l) = c_L + sum_{k >= l} beta_k``,
    ``log(G_hat^l/G^l) = log(g_hat^l/g^l) + rho_{l-1}``. Returns ``(C, X_eta, X_zeta)``, the
    coefficient matrices of the terms on the innovations; ``full=False``: the diagonal of ``C``
    only. O(L^2) memory, O(L^3) time for the full matrix.
    """
    L = len(mod.w)
    A, B, w = mod.A, mod.B, mod.w
    E = np.zeros((L, L))           # coefficient of eta_j in eps_k
    for k in range(L - 1):
        E[k + 1] = w[k] * A[k] * E[k]
        E[k + 1, k] += w[k]
    rho = A[:, None] * E + np.eye(L)
    beta_eta = B[:, None] * E
    beta_eta[L - 1] = 0.0
    gam_eta = np.cumsum(beta_eta[::-1], axis=0)[::-1]
    gam_zeta = np.triu(np.ones((L, L)))
    gam_zeta[:, L - 1] = 0.0
    Y_eta = gam_eta.copy()
    Y_eta[1:] += rho[:-1]
    if bias_terms:
        X_eta, X_zeta = np.vstack([Y_eta, gam_eta]), np.vstack([gam_zeta, gam_zeta])
    else:
        X_eta, X_zeta = Y_eta, gam_zeta
    if not full:      # the diagonal only, O(n L)
        d = (X_eta ** 2) @ mod.v_eta + (X_zeta ** 2) @ mod.v_zeta
        d += 2 * np.einsum("ij,ij,j->i", X_eta, X_zeta, mod.c_eta_zeta)
        d += 2 * np.einsum("ij,ij,j->i", X_eta[:, 1:], X_zeta[:, :-1], mod.c_zeta_eta_next[:-1])
        return d + mod.v_c, X_eta, X_zeta
    C = (X_eta * mod.v_eta) @ X_eta.T + (X_zeta * mod.v_zeta) @ X_zeta.T
    cross = (X_eta * mod.c_eta_zeta) @ X_zeta.T
    cross += (X_eta[:, 1:] * mod.c_zeta_eta_next[:-1]) @ X_zeta[:, :-1].T
    return C + cross + cross.T + mod.v_c, X_eta, X_zeta


def _innovation_draws(mod: _Model, draws: int, rng: np.random.Generator) -> tuple:
    """Draws of the innovations ``eta_k, zeta_k`` (shape (draws, L) each) and ``c_L`` (draws,).

    Gaussian with the model's covariances, ``Cov(eta_k, zeta_k)`` and the adjacent-layer
    ``Cov(zeta_k, eta_{k+1})`` (a tridiagonal matrix in the order eta_1, zeta_1, eta_2, ...,
    whose Cholesky factor is bidiagonal), then each marginal given its own skewness by the
    transform ``s (z + c (z^2 - 1))`` of :class:`LogNormalLaw` (exact mean, variance and skewness
    of every marginal; correlations change at second order in ``c``).

    Omitted: ``zeta_k`` also correlates with the forward factors ``eta_j`` of every later layer
    ``j > k + 1`` (through the rank-one piece, see ``_build_model``), decaying by about
    ``1 - 3.5/N`` per layer (measured for ReLU at N = 16, 32); no per-layer marginal involves
    such a pair, but it correlates the terms of the total gradient norm: Var log ||g|| of a ReLU
    network at depth/width 0.5 is about 4 % low without it (validation/finite_width_report.md).
    """
    L = len(mod.w)
    var = np.empty(2 * L)
    var[0::2], var[1::2] = mod.v_eta, mod.v_zeta
    var = np.maximum(var, 0.0)
    sd = np.sqrt(var)
    off = np.zeros(2 * L - 1)                     # correlations of neighbours in that order
    with np.errstate(divide="ignore", invalid="ignore"):
        off[0::2] = np.where(sd[0::2] * sd[1::2] > 0, mod.c_eta_zeta / (sd[0::2] * sd[1::2]), 0.0)
        off[1::2] = np.where(sd[1:-1:2] * sd[2::2] > 0,
                             mod.c_zeta_eta_next[:-1] / (sd[1:-1:2] * sd[2::2]), 0.0)
    off = np.clip(np.nan_to_num(off), -0.999, 0.999)
    # u_j = diag_j z_j + low_j z_{j-1}: low_j = off_{j-1}/diag_{j-1}, diag_j = sqrt(1 - low_j^2)
    diag = np.ones(2 * L)
    low = np.zeros(2 * L)
    for j in range(1, 2 * L):
        low[j] = off[j - 1] / diag[j - 1]
        diag[j] = math.sqrt(max(1.0 - low[j] ** 2, 1e-12))
    z = rng.standard_normal((draws, 2 * L))
    u = z * diag
    u[:, 1:] += z[:, :-1] * low[1:]
    k3 = mod.mf["k3"]
    skew = np.zeros(2 * L)
    with np.errstate(divide="ignore", invalid="ignore"):
        skew[0::2] = np.where(var[0::2] > 0, k3[:, 0] / np.maximum(var[0::2], 1e-300) ** 1.5, 0.0)
        skew[1::2] = np.where(var[1::2] > 0, k3[:, 3] / np.maximum(var[1::2], 1e-300) ** 1.5, 0.0)
    skew = np.clip(np.nan_to_num(skew), -_MAX_SKEW, _MAX_SKEW)
    cc = np.array([_skew_coefficient(float(x)) for x in skew])
    x = sd / np.sqrt(1.0 + 2.0 * cc * cc) * (u + cc * (u * u - 1.0))
    sk_c = mod.k3_c / mod.v_c ** 1.5 if mod.v_c > 0 else 0.0
    c1 = _skew_coefficient(float(np.clip(sk_c, -_MAX_SKEW, _MAX_SKEW)))
    zc = rng.standard_normal(draws)
    c = math.sqrt(mod.v_c / (1.0 + 2.0 * c1 * c1)) * (zc + c1 * (zc * zc - 1.0))
    return x[:, 0::2], x[:, 1::2], c


# ---------------------------------------------------------------------------------------------
# the result


@dataclass(frozen=True, eq=False)
class FiniteWidthProfile(_Result):
    """Finite-width laws of a network, per layer ``l = 1..L`` (module docstring).

    Mean-field values (``q, log_q, log_g, log_G``: :func:`~signalprop.meanfield.predict`) and the
    finite-width ones: ``log_q_mean``, ``log_q_var`` (E and Var of ``log q_hat^l``),
    ``log_g_mean``, ``log_g_var`` (of ``log g_hat^l``), ``log_G_mean``, ``log_G_var`` (of
    ``log G_hat^l``), all given the network is alive (``X > 0``); ``q_m2``, ``g_m2``:
    ``E[X^2]/E[X]^2`` of ``q_hat^l``, ``g_hat^l`` (inf where the ratio exceeds float64);
    ``beta`` (backward, Hanin & Nica) and ``beta_fwd``; ``p_zero_q``, ``p_zero_g``, ``p_zero_G``:
    probabilities that the quantity is exactly 0 (a dead ReLU layer); ``exact``: which fields are exact (``"q"``, ``"g"``) rather than the §2
    approximation; ``regime`` and ``note``: where mean-field theory stands (§3).
    Laws: :meth:`grad_law`, :meth:`weight_grad_law`, :meth:`forward_law`, :meth:`hanin_nica_law`.
    """

    layers: np.ndarray
    widths: np.ndarray
    q: np.ndarray
    log_q: np.ndarray
    log_g: np.ndarray
    log_G: np.ndarray
    log_q_mean: np.ndarray
    log_q_var: np.ndarray
    log_g_mean: np.ndarray
    log_g_var: np.ndarray
    log_G_mean: np.ndarray
    log_G_var: np.ndarray
    log_q_skew: np.ndarray
    log_g_skew: np.ndarray
    log_G_skew: np.ndarray
    q_m2: np.ndarray
    g_m2: np.ndarray
    beta: np.ndarray
    beta_fwd: np.ndarray
    kappa: np.ndarray
    p_zero_q: np.ndarray
    p_zero_g: np.ndarray
    p_zero_G: np.ndarray
    p_dead: float
    exact: tuple
    regime: str
    note: str
    meta: dict = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return int(self.layers[-1])

    def _i(self, layer: int) -> int:
        layer = check_int("layer", layer, 1)
        if layer > self.depth:
            raise ValueError(f"layer must lie in 1..{self.depth}, got {layer}")
        return layer - 1

    def grad_law(self, layer: int) -> LogNormalLaw:
        """Law of ``g_hat^l = ||delta^l||^2 / N_l`` (times ``N_l``: the squared gradient norm)."""
        i = self._i(layer)
        return LogNormalLaw(self.log_g_mean[i], self.log_g_var[i], self.p_zero_g[i],
                            f"g_hat^{layer} = ||delta^{layer}||^2/N_{layer}", self.log_g_skew[i])

    def weight_grad_law(self, layer: int) -> LogNormalLaw:
        """Law of ``G_hat^l`` = mean square entry of ``d loss / d W^l``."""
        i = self._i(layer)
        return LogNormalLaw(self.log_G_mean[i], self.log_G_var[i], self.p_zero_G[i],
                            f"G_hat^{layer} = ||dloss/dW^{layer}||^2/(N_{layer} N_{layer - 1})",
                            self.log_G_skew[i])

    def forward_law(self, layer: int) -> LogNormalLaw:
        """Law of ``q_hat^l = ||h^l||^2 / N_l``."""
        i = self._i(layer)
        return LogNormalLaw(self.log_q_mean[i], self.log_q_var[i], self.p_zero_q[i],
                            f"q_hat^{layer} = ||h^{layer}||^2/N_{layer}", self.log_q_skew[i])

    def hanin_nica_law(self, layer: int) -> LogNormalLaw:
        """Hanin & Nica's asymptotic law of ``g_hat^l``: ``log(g_hat/g) ~ N(-beta/2, beta)``."""
        i = self._i(layer)
        b = float(self.beta[i])
        return LogNormalLaw(self.log_g[i] - 0.5 * b, b, 0.0, f"Hanin-Nica law of g_hat^{layer}")


def _check_q_range(network: Network, log_q: np.ndarray) -> None:
    """ValueError unless the mean-field ``q^l`` is finite and nonzero, and within [1e-100, 1e100]
    for every activation that is not linear or ReLU: the moment tables need ``E[h^6] = 15 q^3``
    and its kin as positive float64 numbers (q >= 1e-100), and end at 1e100 (beyond it a
    saturating activation's statistics keep changing, e.g. tanh's kappa grows like sqrt(q))."""
    lq = np.asarray(log_q, float)
    lo, hi = 3.0 * math.log(_Q_LO) / 6.0, math.log(_Q_HI)
    for i, la in enumerate(network.layers):
        general = _kind(la.activation) == "general"
        if not np.isfinite(lq[i]) or (general and not lo <= lq[i] <= hi):
            raise ValueError(f"the mean-field q^{i + 1} of this network is "
                             f"10^{lq[i] / math.log(10):.4g}, outside the range [1e-100, 1e100] where "
                             f"finite_width's laws for {la.activation.name} are tabulated: choose "
                             "q0, sigma_w2 and sigma_b2 that keep q^l in range")


def _check_network(network) -> None:
    if not isinstance(network, Network):
        raise TypeError(f"network must be a signalprop Network (see signalprop.mlp), "
                        f"got {type(network).__name__}")
    for i, la in enumerate(network.layers):
        if not has_capability(la, "finite_width"):
            raise ValueError(f"finite_width: layer {i + 1} ({type(la).__name__}) has no "
                             "finite-width law yet")
        if la.weights != "gaussian":
            raise ValueError(f"layer {i + 1} has {la.weights} weights: the finite-width laws are "
                             "derived for gaussian weights (chi-square structure); use "
                             "simulate() for other weight distributions")


def _zero_probabilities(network: Network, p_off: np.ndarray):
    """P(q_hat^l = 0), P(g_hat^l = 0), P(G_hat^l = 0) and P(dead at the input) from the per-layer
    probabilities ``p_off`` that all units of a ReLU layer are inactive (§1; dead_probability)."""
    L = network.depth
    alive = np.cumprod(1.0 - p_off)                      # no dead layer among 1..l
    p_dead = float(1.0 - alive[L - 2]) if L >= 2 else 0.0  # layer L's activation is not used
    no_bias = all(la.sigma_b2 == 0 for la in network.layers)
    pq, pg, pG = np.zeros(L), np.zeros(L), np.zeros(L)
    if no_bias:
        pq[1:] = 1.0 - alive[:-1]
        pg[:-1] = p_dead
        pG[:] = p_dead
    else:
        # a dead layer k stops the gradients of layers <= k; biases revive the forward pass above
        surv = np.ones(L)                                  # surv[i] = P(layers i..L-2 alive)
        surv[:-1] = np.cumprod((1.0 - p_off[:L - 1])[::-1])[::-1]
        pg[:] = 1.0 - surv
        below = np.concatenate([[1.0], 1.0 - p_off[:-1]])  # x^{l-1} != 0
        pG[:] = 1.0 - below * surv
    return pq, pg, pG, p_dead


def finite_width(network: Network, q0: float = 1.0) -> FiniteWidthProfile:
    """Finite-width laws of the squared norms of ``h^l`` and ``delta^l`` (module docstring).

    ``network``: an :func:`~signalprop.architectures.mlp` with Gaussian weights (any widths, biases and
    activations with finite moments up to order 6); ``q0``: input second moment. Exact (§1) for
    linear layers and for ReLU without bias; otherwise the §2 approximation. Raises ValueError for
    non-Gaussian weights, an activation without the needed Gaussian moments, or (activations
    other than linear and ReLU) a mean-field ``q^l`` outside [1e-100, 1e100], where the moment
    tables end (:func:`_check_q_range`).
    """
    return _finite_width(network, q0)[0]


def _finite_width(network: Network, q0: float = 1.0) -> tuple:
    """(:class:`FiniteWidthProfile`, the :class:`_Model` behind it)."""
    _check_network(network)
    q0 = positive_scalar("q0", q0)
    mf = predict(network, q0=q0)
    _check_q_range(network, mf.log_q)
    mod = _build_model(network, mf.log_q)
    mom = _moments_per_layer(mod)
    loc = mod.mf
    L = network.depth
    n = network.widths[1:].astype(float)
    kinds = [_kind(la.activation) for la in network.layers]
    no_bias = all(la.sigma_b2 == 0 for la in network.layers)
    # fourth-moment recursions (inf where a ratio exceeds float64)
    with np.errstate(over="ignore"):
        g_m2 = np.empty(L)
        acc = 1.0 + 2.0 / n[-1]
        g_m2[-1] = acc
        for i in range(L - 2, -1, -1):
            acc *= 1.0 + (3.0 * loc["kappa"][i] - 1.0) / n[i]
            g_m2[i] = acc
        beta = np.empty(L)
        beta[-1] = 2.0 / n[-1]
        beta[:-1] = 2.0 / n[-1] + np.cumsum(((3.0 * loc["kappa"][:-1] - 1.0) / n[:-1])[::-1])[::-1]
        q_m2 = np.empty(L)
        beta_fwd = np.empty(L)
        r, bf = 0.0, 0.0
        for i in range(L):
            q_m2[i] = (1.0 + r) * (1.0 + 2.0 / n[i])
            beta_fwd[i] = bf + 2.0 / n[i]
            if i < L - 1:
                wi, Ai = loc["w"][i], loc["A"][i]
                r = wi * wi * (Ai * Ai * r + (1.0 + Ai * Ai * r) * (loc["kappa_p"][i] - 1.0) / n[i])
                bf = wi * wi * (Ai * Ai * bf + (loc["kappa_p"][i] - 1.0) / n[i])
    pq, pg, pG, p_dead = _zero_probabilities(network, loc["p_off"])
    homogeneous = all(k in ("linear", "relu") for k in kinds)
    exact = []
    if homogeneous and no_bias:
        exact += ["q", "g", "G"]
    elif all(k == "linear" for k in kinds):
        exact += ["g"]
    bmax = float(np.max(beta))
    regime = regime_of_beta(bmax)
    ratio = L / float(np.mean(n))
    spread = _safe_exp(2 * math.sqrt(bmax))
    note = (f"beta = {bmax:.3g} at layer 1 (depth/width = {ratio:.3g}): "
            + {"mean-field": "mean-field theory describes a typical network (median within "
                             f"{100 * (1 - math.exp(-bmax / 2)):.1f}%).",
               "finite-width": "finite-width corrections matter: the median gradient is "
                               f"{math.exp(-bmax / 2):.3g} x mean-field and the central 68% spans "
                               f"a factor {spread:.3g}.",
               "mean-field breaks": "mean-field theory no longer describes a typical network "
                                    f"(beta >= {BETA_BREAKS:g}; the median gradient is "
                                    f"{math.exp(-bmax / 2):.3g} x mean-field, the central 68% "
                                    f"spans a factor {spread:.3g})."}[regime])
    if float(np.min(n)) < 10:
        note += " Some layers are narrower than 10 units: the log-normal shape is only rough there."
    if p_dead > 1e-3:
        note += f" The network is dead at the input with probability {p_dead:.3g}."
    if mod.worst[0] > 1.0:
        note += (f" The forward log-variance reaches {mod.worst[0]:.3g} at layer {mod.worst[1]} "
                 "with a non-homogeneous activation: beyond the Gaussian closure of the "
                 "approximation, expect errors of tens of percent.")
    return FiniteWidthProfile(
        layers=np.arange(1, L + 1), widths=network.widths.copy(), q=mf.q, log_q=mf.log_q,
        log_g=mf.log_g, log_G=mf.log_G,
        log_q_mean=mf.log_q + mom["m_fwd"], log_q_var=mom["v_fwd"],
        log_g_mean=mf.log_g + mom["m_g"], log_g_var=mom["v_g"],
        log_G_mean=mf.log_G + mom["m_G"], log_G_var=mom["v_G"],
        log_q_skew=mom["s_fwd"], log_g_skew=mom["s_g"], log_G_skew=mom["s_G"],
        q_m2=q_m2, g_m2=g_m2, beta=beta, beta_fwd=beta_fwd, kappa=loc["kappa"].copy(),
        p_zero_q=pq, p_zero_g=pg, p_zero_G=pG, p_dead=p_dead, exact=tuple(exact),
        regime=regime, note=note,
        meta={"source": "finite_width", "q0": q0, "widths": [int(x) for x in network.widths],
              "kinds": kinds}), mod


# ---------------------------------------------------------------------------------------------
# dead ReLU networks (Lu, Shin, Su & Karniadakis 2019, arXiv 1903.06733)


@dataclass(frozen=True, eq=False)
class DeadNetwork(_Result):
    """Dying ReLU at initialisation (:func:`dead_probability`), per layer ``l = 1..L``.

    Exact (any widths, biases, input dimension; symmetric continuous weights):
    ``p_dead_point``: P(some ReLU layer ``k <= L-1`` has all units inactive at the input), which
    makes the output locally constant there (zero input gradient; without biases every weight
    gradient is zero too); ``p_first_dead[l]``: P(layer ``l`` is the first such layer);
    ``inactive_fraction``: E[fraction of units with ``h <= 0``] at the input.
    Monte Carlo over a region (``samples > 0``), with standard errors: ``p_born_dead``: P(the
    output is constant on the whole region); ``dead_unit_fraction``: E[fraction of units with
    ``h <= 0`` everywhere on the region]; ``p_dead_point_mc``: the exact value re-estimated.
    ``region`` and ``method`` say what was computed and how; ``note`` gives caveats.
    """

    layers: np.ndarray
    widths: np.ndarray
    activations: tuple
    p_dead_point: float
    p_first_dead: np.ndarray
    inactive_fraction: np.ndarray
    region: str = ""
    method: str = ""
    samples: int = 0
    p_born_dead: float = math.nan
    p_born_dead_se: float = math.nan
    dead_unit_fraction: Optional[np.ndarray] = None
    dead_unit_fraction_se: Optional[np.ndarray] = None
    p_dead_point_mc: float = math.nan
    p_dead_point_mc_se: float = math.nan
    note: str = ""
    meta: dict = field(default_factory=dict)


def _relu_layers(network: Network) -> np.ndarray:
    """Mask of layers whose activation is ReLU (leaky slope 0); hard_tanh is refused."""
    mask = []
    for i, la in enumerate(network.layers):
        act = la.activation
        if act.name == "hard_tanh":
            raise ValueError(f"layer {i + 1} is hard_tanh: its units die by saturation "
                             "(phi' = 0 for |h| > 1), which dead_probability does not derive; "
                             "use simulate()")
        mask.append(_kind(act) == "relu")
    return np.array(mask, bool)


def _mc_layers(network: Network, X: np.ndarray, rng: np.random.Generator):
    """Forward pass of ``S`` sampled networks on points ``X`` (S, P, N_0): per layer the boolean
    (S, P, N_l) mask ``h <= 0`` and the output ``h^L`` (S, P, N_L). Gaussian weights."""
    masks = []
    x = X
    for i, la in enumerate(network.layers):
        n_in = x.shape[-1]
        W = rng.standard_normal((x.shape[0], la.width, n_in)) * math.sqrt(la.sigma_w2 / n_in)
        h = np.einsum("spn,skn->spk", x, W)
        if la.sigma_b2 > 0:
            h += rng.standard_normal((x.shape[0], 1, la.width)) * math.sqrt(la.sigma_b2)
        masks.append(h <= 0)
        x = np.asarray(la.activation.phi(h), float)
    return masks, h


def _breakpoint_network(network: Network, r: float, rng: np.random.Generator):
    """One sampled network with a 1-d input on [-r, r], exactly: the pre-activations are piecewise
    linear with kinks where earlier units cross 0, so tracking every crossing gives their maxima
    on the interval exactly. Returns (per-layer fraction of units with h <= 0 on the whole
    interval, layer fully inactive on the interval, output constant on the interval)."""
    pts = np.array([-r, r])
    x = pts[:, None]
    frac, dead = [], []
    for la in network.layers:
        n_in = x.shape[1]
        W = rng.standard_normal((la.width, n_in)) * math.sqrt(la.sigma_w2 / n_in)
        b = rng.standard_normal(la.width) * math.sqrt(la.sigma_b2) if la.sigma_b2 > 0 else 0.0
        h = x @ W.T + b
        a, c = h[:-1], h[1:]
        cross = (a * c) < 0
        if np.any(cross):
            i, j = np.nonzero(cross)
            t = a[i, j] / (a[i, j] - c[i, j])
            new = pts[i] + t * (pts[i + 1] - pts[i])
            allp = np.concatenate([pts, new])
            order = np.argsort(allp, kind="stable")
            hx = np.empty((len(allp), h.shape[1]))
            for k in range(h.shape[1]):
                hx[:, k] = np.interp(allp, pts, h[:, k])
            pts, h = allp[order], hx[order]
            keep = np.concatenate([[True], np.diff(pts) > 0])
            pts, h = pts[keep], h[keep]
        inactive = np.all(h <= 0, axis=0)
        frac.append(inactive.mean())
        dead.append(bool(inactive.all()))
        x = np.asarray(la.activation.phi(h), float)
    scale = max(1.0, float(np.max(np.abs(h))))
    const = bool(np.all(np.max(h, axis=0) - np.min(h, axis=0) <= 1e-12 * scale))
    return np.array(frac), np.array(dead), const


def _check_dead_work(network: Network, samples: int, points: int) -> None:
    """Refuse up front a Monte Carlo of :func:`dead_probability` that cannot fit in memory: its
    per-sample arrays (``samples x (L + 2)``), the ``points x N_0`` inputs, and one sampled
    network's dense ``N_l x N_{l-1}`` weights with its ``points x N_l`` pre-activations."""
    w = [int(x) for x in network.widths]
    n_pts = 2 if w[0] == 1 else points
    per_net = max(a * b + 2 * n_pts * b for a, b in zip(w[:-1], w[1:])) * 8.0
    check_memory(f"dead_probability(samples={samples}, points={points}) on widths up to {max(w)}",
                 samples * (network.depth + 2) * 8.0 + n_pts * w[0] * 8.0 + per_net)


def dead_probability(network: Network, *, samples: int = 0, seed: int = 0, radius: float = 1.0,
                     points: int = 256) -> DeadNetwork:
    """Probability that a ReLU network is dead at initialisation (Lu et al. 2019).

    **Exact, at a point** (derived; CONVENTIONS.md network, loss on ``h^L``, so layer L's own
    activation never matters). Given ``x^{k-1} != 0`` (or ``sigma_b^2 > 0``), the units of ``h^k``
    are i.i.d. and symmetric about 0 (Gaussian rows, or Haar rows: sign flips), so layer ``k``
    is fully inactive with probability ``2^{-N_k}`` independently of the past:

        P(dead at x) = 1 - prod_{k <= L-1, ReLU} (1 - 2^{-N_k}),   P(first dead = k) = 2^{-N_k} prod_{j<k} (1 - 2^{-N_j}).

    For L - 1 hidden layers of width N this is LITERATURE §9's ``1 - (1 - 2^{-N})^{L-1}``. A dead
    layer makes the output constant near x; without biases every later pre-activation is 0, so
    (relu'(0) = 0) every weight gradient vanishes. Leaky ReLU, GELU and the smooth activations
    have ``phi' != 0`` almost everywhere and are never dead (probability 0).

    **Born dead on a region** (Monte Carlo, ``samples`` networks, standard errors): the output is
    constant on the whole region. Input dimension 1 without biases: the region is all of R and
    two points suffice (positive homogeneity: dead on (0, inf) iff dead at +1, on (-inf, 0) iff at
    -1); input dimension 1 with biases: the interval ``[-radius, radius]``, exactly, by tracking
    the kinks of every unit (:func:`_breakpoint_network`); input dimension > 1: ``points`` random
    points of the sphere of radius ``radius sqrt(N_0)`` (an estimate: a unit inactive at every
    sampled point may be active elsewhere, so dead fractions are over-estimated).
    """
    _check_network(network)
    samples = check_int("samples", samples, 0)
    seed = check_int("seed", seed, 0)
    radius = positive_scalar("radius", radius)
    points = check_int("points", points, 1)
    if samples:
        _check_dead_work(network, samples, points)
    relu = _relu_layers(network)
    L = network.depth
    n = network.widths[1:].astype(float)
    p_off = np.where(relu, 0.5 ** n, 0.0)
    p_off_used = p_off.copy()
    p_off_used[L - 1] = 0.0                       # layer L's activation is not used
    alive = np.cumprod(1.0 - p_off_used)
    p_dead = float(1.0 - alive[-1])
    first = p_off_used * np.concatenate([[1.0], alive[:-1]])
    no_bias = all(la.sigma_b2 == 0 for la in network.layers)
    prev_dead = np.concatenate([[0.0], 1.0 - alive[:-1]])
    inactive = np.where(relu, 0.5 + (0.5 * prev_dead if no_bias else 0.0), 0.0)
    acts = tuple(la.activation.name for la in network.layers)
    note = ""
    if not relu.any():
        note = "no ReLU layer: phi' != 0 almost everywhere, the network is never dead"
    kw = dict(layers=np.arange(1, L + 1), widths=network.widths.copy(), activations=acts,
              p_dead_point=p_dead, p_first_dead=first, inactive_fraction=inactive)
    if samples == 0:
        return DeadNetwork(**kw, region="a point", method="exact", note=note,
                           meta={"source": "dead_probability"})
    rng = np.random.default_rng(seed)
    n0 = network.input_width
    fr = np.zeros((samples, L))
    born = np.zeros(samples, bool)
    point = np.zeros(samples, bool)
    used = slice(0, L - 1)
    if n0 == 1 and no_bias:
        region, method = "all of R (input dimension 1)", "two points +-1 (positive homogeneity)"
        X = np.array([[1.0], [-1.0]])
    elif n0 == 1:
        region, method = f"[-{radius:g}, {radius:g}]", "exact kink tracking per network"
        X = None
    else:
        region = f"sphere of radius {radius:g} sqrt(N_0)"
        method = f"{points} random points (estimate; over-estimates dead units)"
        g = np.random.default_rng(seed + 1).standard_normal((points, n0))
        X = radius * math.sqrt(n0) * g / np.linalg.norm(g, axis=1, keepdims=True)
    if X is not None:
        chunk = max(1, int(4e6 // (len(X) * max(network.widths) ** 2)))
        for s0 in range(0, samples, chunk):
            s1 = min(samples, s0 + chunk)
            masks, hL = _mc_layers(network, np.broadcast_to(X, (s1 - s0,) + X.shape), rng)
            dead_layer = np.zeros((s1 - s0, len(X)), bool)
            for i, m in enumerate(masks):
                fr[s0:s1, i] = np.all(m, axis=1).mean(axis=1) if relu[i] else 0.0
                if i < L - 1 and relu[i]:
                    dead_layer |= np.all(m, axis=2)
            point[s0:s1] = dead_layer[:, 0]
            if no_bias:
                born[s0:s1] = np.all(dead_layer, axis=1)
            else:
                span = hL.max(axis=1) - hL.min(axis=1)
                born[s0:s1] = np.all(span <= 1e-12 * np.maximum(1.0, np.abs(hL).max(axis=1)), axis=1)
    else:
        for s in range(samples):
            f, d, const = _breakpoint_network(network, radius, rng)
            fr[s] = np.where(relu, f, 0.0)
            born[s] = const
        # the point check uses fresh networks at x = radius
        masks, _ = _mc_layers(network, np.full((samples, 1, 1), radius), rng)
        dl = np.zeros(samples, bool)
        for i, m in enumerate(masks[:L - 1]):
            if relu[i]:
                dl |= np.all(m[:, 0], axis=1)
        point = dl
    del used

    def mean_se(a):
        a = np.asarray(a, float)
        return a.mean(axis=0), a.std(axis=0, ddof=1) / math.sqrt(len(a)) if len(a) > 1 else np.nan

    pb, pb_se = mean_se(born)
    pp, pp_se = mean_se(point)
    df, df_se = mean_se(fr)
    return DeadNetwork(**kw, region=region, method=method, samples=samples, p_born_dead=float(pb),
                       p_born_dead_se=float(pb_se), dead_unit_fraction=df,
                       dead_unit_fraction_se=df_se, p_dead_point_mc=float(pp),
                       p_dead_point_mc_se=float(pp_se), note=note,
                       meta={"source": "dead_probability", "seed": seed})
