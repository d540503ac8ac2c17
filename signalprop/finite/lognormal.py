"""The law of a squared norm at finite width: :class:`LogNormalLaw`, an atom at 0 and a
(skewed) log-normal law above it, in the style of a frozen scipy.stats distribution.

References to sections (§1, section 2, ...) and to "the module docstring" in the docstrings
below are to the package docstring of :mod:`signalprop.finite`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from .._validate import (_as_float_array, check_finite, check_int, check_memory, finite_scalar,
                         positive_scalar, short_repr)
from ..results import _Result

__all__ = ["LogNormalLaw"]


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
