"""Finite-width laws of a network: :func:`finite_width` and its result
:class:`FiniteWidthProfile` (per-layer laws of ``q_hat``, ``g_hat`` and ``G_hat``), with the checks
of the network and of its mean-field range.

References to sections (§1, section 2, ...) and to "the module docstring" in the docstrings
below are to the package docstring of :mod:`signalprop.finite`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .._validate import check_int, positive_scalar
from ..meanfield import predict
from ..network import Network, require_capability
from ..results import _Result
from .chisquare import BETA_BREAKS, regime_of_beta
from .local import _Q_HI, _Q_LO, _kind
from .lognormal import LogNormalLaw, _safe_exp
from .model import _build_model, _moments_per_layer

__all__ = ["FiniteWidthProfile", "finite_width"]


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
    require_capability(network, "finite_width", "finite_width")
    for i, la in enumerate(network.layers):
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
