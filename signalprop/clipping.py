"""Gradient clipping at initialisation: ``g <- g min(1, c / ||g||)`` against the finite-width law
of the total gradient norm.

The total squared gradient norm of one input (CONVENTIONS.md loss ``<v, h^L>``, ``v ~ N(0, s I)``
with ``s = output_grad_var``, default 1) is, at the network's real widths,

    T = ||g||^2 = sum_l ||d loss/d W^l||_F^2 [+ sum_l ||d loss/d b^l||^2]
      = s sum_l N_l N_{l-1} G_hat^l  [+ s sum_l N_l g_hat^l],

a sum of correlated log-normal terms ``e^{Y_i}``. :func:`~signalprop.finite.finite_width`'s log
model gives the means ``mu_i = E[Y_i]``, the variances (exact for linear and ReLU without bias),
the covariances of all ``Y_i`` (first order, through the layers' shared innovations) and their
third cumulants. The law of ``log T = logsumexp(Y)`` is then summarised by its mean, variance
and skewness: the non-linearity of ``logsumexp`` is integrated over ``Y ~ N(mu, C)`` by
deterministic Monte Carlo on that 2L-dimensional Gaussian (not on the network), and the terms'
own skewness is added linearly (``k3(pi . Y)``, ``pi`` the mean softmax weights). ``||g|| =
sqrt(T)`` gets the skewed log-normal :class:`~signalprop.finite.LogNormalLaw`; for a clip value
``c``, with ``F`` its distribution function,

    p_clip        = P(||g|| > c) = 1 - F(c)
    expected_norm = E[min(||g||, c)] = E[||g||; ||g|| <= c] + c (1 - F(c))
    shrink        = E[min(1, c/||g||)] = F(c) + c E[1/||g||; ||g|| > c],

closed forms of the Gaussian integrals (``LogNormalLaw.partial_mean``, ``partial_inverse_mean``).
Checked against the Monte Carlo engine in tests/test_finite.py and validation/finite_width.py.

A ReLU network without biases is dead at the input with probability ``p_dead``
(:func:`~signalprop.finite.dead_probability`); then every weight gradient is 0 and only the last
bias gradient ``||v||^2 ~ s chi^2_{N_L}`` is left (exactly): that atom is mixed in.

Transformer stacks (:func:`transformer_clipping`): the mean ``E||g||^2`` over every weight matrix
from the kernel path (:func:`~signalprop.layers.attention.weight_gradient_norms`); P(clip) is the
concentration limit, or log-normal with a caller-supplied (e.g. measured) variance of
``log ||g||^2`` (docs/theory/attention.md, "Weight gradients of every matrix").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Optional

import numpy as np
from scipy import stats

from ._validate import check_finite, check_int, positive_scalar, short_repr
from .finite.laws import _check_network, _finite_width
from .finite.lognormal import LogNormalLaw
from .finite.model import _MAX_SKEW, _innovation_draws, _log_covariance
from .dmft import predict_tied
from .layers.attention import weight_gradient_norms
from .meanfield import predict
from .network import Network
from .results import Profile, _Result

__all__ = ["ClipResult", "clipping", "total_gradient_law", "clipping_sweep", "MAX_DEPTH",
           "StackClipResult", "transformer_clipping", "recurrent_clipping"]

#: deepest network for :func:`total_gradient_law` (its L x 2L coefficient matrices).
MAX_DEPTH = 3000
_DRAWS = 65536


def _check_bool(name: str, value) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {short_repr(value)}")


def _check_clip(clip_value) -> np.ndarray:
    check_finite("clip_value", clip_value)
    c = np.asarray(clip_value, dtype=float)
    if c.size == 0:
        raise ValueError("clip_value is empty")
    if not np.all(np.isfinite(c)) or np.any(c <= 0):
        raise ValueError(f"clip_value must be finite and > 0 (clipping g <- g min(1, c/||g||) "
                         f"needs c > 0), got {short_repr(clip_value)}")
    return c


@dataclass(frozen=True, eq=False)
class _DeadPart:
    """The exact dead-network component: ``||g|| = sqrt(s chi^2_{N_L})`` (biases) or 0."""

    p: float
    df: int
    scale2: float
    biases: bool

    def sf(self, c):
        if not self.biases:
            return np.zeros_like(c)
        with np.errstate(over="ignore"):  # c^2 beyond float64: sf(inf) = 0, exactly
            return stats.chi2.sf(c * c / self.scale2, self.df)

    def mean_min(self, c):
        if not self.biases:
            return np.zeros_like(c)
        d = stats.chi(self.df, scale=math.sqrt(self.scale2))
        with np.errstate(over="ignore"):  # c beyond float64's square root: cdf 1, sf 0
            return d.mean() * stats.chi.cdf(c / math.sqrt(self.scale2), self.df + 1) + c * d.sf(c)

    def shrink(self, c):
        if not self.biases:
            return np.ones_like(c)
        d = stats.chi(self.df, scale=math.sqrt(self.scale2))
        return np.array([d.expect(lambda x, ci=ci: 1.0 if x <= ci else ci / x) for ci in np.ravel(c)]
                        ).reshape(np.shape(c))


@dataclass(frozen=True, eq=False)
class ClipResult(_Result):
    """Clipping at initialisation, one entry per clip value (module docstring).

    ``p_clip``: P(||g|| > c); ``expected_norm``: E[min(||g||, c)]; ``shrink``: E[min(1, c/||g||)];
    ``norm_law``: the law of the total gradient norm ``||g||`` (:class:`LogNormalLaw`);
    ``median_norm``, ``norm_q05``, ``norm_q95``: its quantiles; ``mean_field_norm``:
    ``sqrt(E[T])`` from mean-field theory (these four are inf where ``||g||`` exceeds float64,
    e.g. sigma_w2 = 1e300; ``log_norm_mean`` stays exact and the per-clip-value numbers
    finite); ``p_dead``; ``verdict``: one line per clip value;
    ``reasonable``: True where clipping does not act on typical initial gradients (p_clip <= 0.1).
    """

    clip_value: np.ndarray
    p_clip: np.ndarray
    expected_norm: np.ndarray
    shrink: np.ndarray
    norm_law: LogNormalLaw
    median_norm: float
    norm_q05: float
    norm_q95: float
    mean_field_norm: float
    log_norm_mean: float
    log_norm_var: float
    p_dead: float
    reasonable: np.ndarray
    verdict: tuple
    regime: str
    note: str
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = super().to_dict()
        law = d.pop("norm_law")
        d["norm_law"] = {"mu": law.mu, "sigma2": law.sigma2, "skew": law.skew, "p0": law.p0,
                         "of": "log ||g||"}
        return d


def _log_sum_exp_law(mod, X_eta: np.ndarray, X_zeta: np.ndarray, mu: np.ndarray,
                     scale: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean, variance and skewness of ``log T = log sum_i exp(Y_i)``, ``Y_i = mu_i + scale_i
    (X_eta eta + X_zeta zeta + c)_i``, by deterministic Monte Carlo over the layers' innovations
    (:func:`~signalprop.finite._innovation_draws`: their covariances and skewness) - a sample of
    the log model, O(draws L n_terms), not of the network."""
    L = X_eta.shape[1]
    draws = int(max(4096, min(_DRAWS, 4e8 // max(1, L * len(mu)))))
    rng = np.random.default_rng(seed)
    vals = []
    chunk = max(256, int(2e7 // max(1, L * len(mu))))
    done = 0
    A, Bz = (X_eta * scale[:, None]).T, (X_zeta * scale[:, None]).T
    while done < draws:
        m = min(chunk, draws - done)
        eta, zeta, c = _innovation_draws(mod, m, rng)
        Y = mu + eta @ A + zeta @ Bz + c[:, None] * scale
        top = Y.max(axis=1)
        vals.append(top + np.log(np.exp(Y - top[:, None]).sum(axis=1)))
        done += m
    v = np.concatenate(vals)
    mean = float(v.mean())
    d = v - mean
    var = float(d @ d / len(d))
    skew = float(np.mean(d ** 3)) / var ** 1.5 if var > 0 else 0.0
    return mean, var, skew


def total_gradient_law(network: Network, q0: float = 1.0, *, biases: bool = True,
                       output_grad_var: float = 1.0) -> tuple[LogNormalLaw, dict]:
    """Law of the total gradient norm ``||g||`` at initialisation (module docstring).

    Returns ``(law, info)``: ``law`` is the :class:`~signalprop.finite.LogNormalLaw` of ``||g||``
    given the network is alive (its ``p0`` is the dead probability; for a dead network without
    bias gradients ``||g|| = 0``); ``info`` holds ``mean_field_norm``, ``p_dead``, the dead part
    and the per-term means. Deterministic; the last few results are cached.
    """
    _check_network(network)
    q0 = positive_scalar("q0", q0)
    s = positive_scalar("output_grad_var", output_grad_var)
    _check_bool("biases", biases)
    law, info = _total_gradient_law(network, q0, bool(biases), s)
    return law, dict(info)


@lru_cache(maxsize=8)
def _total_gradient_law(network: Network, q0: float, biases: bool,
                        output_grad_var: float) -> tuple[LogNormalLaw, dict]:
    s = output_grad_var
    L = network.depth
    if L > MAX_DEPTH:
        raise ValueError(f"the total-gradient law builds L x 2L coefficient matrices; depth {L} "
                         f"exceeds {MAX_DEPTH}")
    fw, mod = _finite_width(network, q0)
    n = network.widths.astype(float)
    fanin_out = np.log(n[1:] * n[:-1])
    mu = fw.log_G_mean + fanin_out + math.log(s)
    log_terms = fw.log_G + fanin_out
    if biases:
        mu = np.concatenate([mu, fw.log_g_mean + np.log(n[1:]) + math.log(s)])
        log_terms = np.concatenate([log_terms, fw.log_g + np.log(n[1:])])
    c_diag, X_eta, X_zeta = _log_covariance(mod, biases, full=False)
    # per-term variances: the O(L) recursions of finite_width (exact where it is exact)
    d = np.concatenate([fw.log_G_var, fw.log_g_var]) if biases else fw.log_G_var
    scale = np.sqrt(np.maximum(d, 0.0)) / np.sqrt(np.maximum(c_diag, 1e-300))
    m_T, v_T, skew = _log_sum_exp_law(mod, X_eta, X_zeta, mu, scale)
    skew = float(np.clip(skew, -_MAX_SKEW, _MAX_SKEW))
    no_bias = all(la.sigma_b2 == 0 for la in network.layers)
    p_dead = fw.p_dead if no_bias else 0.0
    law = LogNormalLaw(0.5 * m_T, 0.25 * v_T, p_dead, "||g||, the total gradient norm", skew)
    dead = _DeadPart(p_dead, int(n[-1]), s, biases)
    info = {"mean_field_norm": _mean_field_norm(log_terms, s), "p_dead": p_dead,
            "dead": dead, "profile": fw, "log_T_mean": m_T, "log_T_var": v_T}
    return law, info


def _mean_field_norm(log_terms: np.ndarray, s: float) -> float:
    """``sqrt(s sum_i exp(log_terms_i))``; through logsumexp where the terms leave float64
    (inf only where the norm itself does)."""
    if float(np.max(log_terms)) < 700:
        return math.sqrt(float((np.exp(log_terms) * s).sum()))
    from scipy.special import logsumexp
    half = 0.5 * (float(logsumexp(log_terms)) + math.log(s))
    return math.exp(half) if half < 709.78 else math.inf


def _verdict(c: float, p: float, shrink: float, median: float) -> str:
    if p > 0.9:
        return (f"c = {c:g} clips at init almost always (P = {p:.3g}; median ||g|| = "
                f"{median:.3g}): updates become c-normalised gradients, on average "
                f"{1 / max(shrink, 1e-300):.3g} x smaller; not a safeguard but a learning-rate "
                "change")
    if p > 0.1:
        return (f"c = {c:g} clips often at init (P = {p:.3g}; median ||g|| = {median:.3g}): it "
                f"shrinks typical updates (mean factor {shrink:.3g})")
    if p >= 1e-3:
        return (f"c = {c:g} clips rarely at init (P = {p:.3g}; median ||g|| = {median:.3g}): "
                "it cuts only the upper tail, reasonable as a safeguard")
    return (f"c = {c:g} essentially never clips at init (P = {p:.2g}; median ||g|| = "
            f"{median:.3g}): inactive at initialisation")


def clipping(network: Network, clip_value, q0: float = 1.0, *, biases: bool = True,
             output_grad_var: float = 1.0) -> ClipResult:
    """Gradient clipping ``g <- g min(1, c/||g||)`` at initialisation (module docstring).

    ``clip_value``: c > 0, or an array of them; ``biases``: include bias gradients in ``||g||``
    (as ``torch.nn.utils.clip_grad_norm_`` over all parameters does); ``output_grad_var``: the
    variance of the loss gradient at the output, ``E[(d loss/d h^L_i)^2]`` (1 for CONVENTIONS.md's
    ``<v, h^L>``). Returns a :class:`ClipResult`. Example, the one-call answer to "is clip value
    1.0 reasonable for this network at init?": ``clipping(net, 1.0).verdict[0]``.
    """
    c = _check_clip(clip_value)
    check_finite("output_grad_var", output_grad_var)
    _check_bool("biases", biases)
    law, info = total_gradient_law(network, q0, biases=biases, output_grad_var=output_grad_var)
    dead: _DeadPart = info["dead"]
    alive = LogNormalLaw(law.mu, law.sigma2, 0.0, skew=law.skew)
    pa = 1.0 - dead.p
    cf = c.ravel()
    p_clip = pa * alive.sf(cf) + dead.p * dead.sf(cf)
    exp_norm = pa * np.array([alive.partial_mean(x) for x in cf]) + pa * cf * alive.sf(cf)
    shrink = pa * (alive.cdf(cf) + cf * np.array([alive.partial_inverse_mean(x) for x in cf]))
    if dead.p > 0:
        exp_norm = exp_norm + dead.p * dead.mean_min(cf)
        shrink = shrink + dead.p * dead.shrink(cf)
    median = float(law.median())
    verdict = tuple(_verdict(float(x), float(p), float(sh), median)
                    for x, p, sh in zip(cf, p_clip, shrink))
    fw = info["profile"]
    shape = c.shape
    return ClipResult(
        clip_value=c, p_clip=p_clip.reshape(shape), expected_norm=exp_norm.reshape(shape),
        shrink=shrink.reshape(shape), norm_law=law, median_norm=median,
        norm_q05=float(law.ppf(0.05)), norm_q95=float(law.ppf(0.95)),
        mean_field_norm=info["mean_field_norm"], log_norm_mean=law.mu, log_norm_var=law.sigma2,
        p_dead=dead.p, reasonable=(p_clip <= 0.1).reshape(shape), verdict=verdict,
        regime=fw.regime, note=fw.note,
        meta={"source": "clipping", "q0": q0, "biases": biases,
              "output_grad_var": float(output_grad_var),
              "widths": [int(x) for x in network.widths],
              "law": "skewed log-normal law of ||g|| from the per-layer log model"})


def clipping_sweep(make_network: Callable[[int], Network], depths: Iterable[int], clip_value: float,
                   q0: float = 1.0, **kwargs) -> dict:
    """:func:`clipping` of ``make_network(depth)`` for each depth: arrays ``depth, p_clip,
    expected_norm, shrink, median_norm, mean_field_norm`` (``kwargs`` go to :func:`clipping`)."""
    if not callable(make_network):
        raise TypeError(f"make_network must be a function depth -> Network, got "
                        f"{short_repr(make_network)}")
    if isinstance(depths, (str, bytes)) or not hasattr(depths, "__iter__"):
        raise TypeError(f"depths must be a sequence of integers >= 1, got {short_repr(depths)}")
    depths = [check_int("depths", d, 1, MAX_DEPTH) for d in list(depths)]
    if not depths:
        raise ValueError("depths is empty: give at least one depth")
    check_finite("clip_value", clip_value)
    if np.ndim(clip_value) != 0:
        raise TypeError(f"clip_value must be one number for a sweep, got {short_repr(clip_value)}")
    rows = {k: [] for k in ("depth", "p_clip", "expected_norm", "shrink", "median_norm",
                            "mean_field_norm", "log_norm_var")}
    for d in depths:
        net = make_network(d)
        if not isinstance(net, Network):
            raise TypeError(f"make_network({d}) must return a Network, got {short_repr(net)}")
        r = clipping(net, float(clip_value), q0, **kwargs)
        rows["depth"].append(int(d))
        rows["p_clip"].append(float(r.p_clip.ravel()[0]))
        rows["expected_norm"].append(float(r.expected_norm.ravel()[0]))
        rows["shrink"].append(float(r.shrink.ravel()[0]))
        rows["median_norm"].append(r.median_norm)
        rows["mean_field_norm"].append(r.mean_field_norm)
        rows["log_norm_var"].append(r.log_norm_var)
    return {k: np.array(v) for k, v in rows.items()}


# ---------------------------------------------------------------------------------------------
# transformer stacks (kernel path): the mean of ||g||^2 from the weight-gradient record


@dataclass(frozen=True, eq=False)
class StackClipResult(_Result):
    """Clipping at initialisation of a whole stack's weight gradient, from
    :func:`transformer_clipping` (a :func:`signalprop.transformer`) or :func:`recurrent_clipping`
    (an :func:`signalprop.rnn`, tied weights).

    ``norms``: the per-matrix mean-field ``log E||dL/dW||_F^2``
    (:class:`~signalprop.layers.attention.WeightGradientNorms`; for a recurrent network
    ``predict_tied``'s ``meta["weight_gradients"]``); ``log_mean_norm2``:
    ``log E||g||^2`` over all weight matrices; ``mean_field_norm``: ``sqrt(E||g||^2)``;
    ``log_norm2_var``: the variance of ``log ||g||^2`` used for ``p_clip`` (given by the caller,
    e.g. measured by :func:`~signalprop.layers.attention.weight_gradient_norms_mc`), or None;
    ``p_clip``: ``P(||g|| > c)`` per clip value: with a variance, the log-normal law of ``||g||^2``
    of that log-variance and the predicted mean; without, the concentration limit
    ``1[E||g||^2 > c^2]`` (0 or 1); ``rule``: which of the two."""

    clip_value: np.ndarray
    p_clip: np.ndarray
    log_mean_norm2: float
    mean_field_norm: float
    log_norm2_var: Optional[float]
    rule: str
    output_grad_var: float
    norms: object = field(repr=False, default=None)


def transformer_clipping(network: Network, clip_value=1.0, *, profile=None,
                         output_grad_var: float = 1.0,
                         log_norm2_var: Optional[float] = None) -> StackClipResult:
    """``P(||g|| > c)`` at initialisation for a stack of composed layers with coupled inputs (a
    transformer), ``g`` all its weight gradients (no biases) for the loss ``<v, t^L_0>`` on token
    0, ``v ~ N(0, output_grad_var I)``.

    Theory gives the mean: ``E||g||^2 = sum_W E||dL/dW||_F^2`` (mean field,
    :func:`~signalprop.layers.attention.weight_gradient_norms`, from ``profile`` or
    ``predict(network)``), exactly proportional to ``output_grad_var`` (every gradient is linear in
    ``v``). To model a readout ``z = W_U h^L_0`` with loss gradient ``e = dL/dz``, set
    ``output_grad_var`` to the per-unit variance of ``W_U^T e``, ``sigma_U^2 E||e||^2`` for
    entries of ``W_U`` of variance ``sigma_U^2`` independent of ``e`` (e.g. cross-entropy over a
    large vocabulary at init: ``E||e||^2 = E||p - e_y||^2 ~ 1``; GPT-2's ``sigma_U = 0.02``: 4e-4).
    The fluctuation of ``||g||^2`` is not predicted: with
    ``log_norm2_var`` (e.g. measured) the law of ``||g||^2`` is taken log-normal with that
    log-variance and the predicted mean, ``P = Phi((mu - 2 log c) / sqrt(var))``,
    ``mu = log E||g||^2 - var/2``; without it ``P`` is the concentration limit (step function)."""
    c = _check_clip(clip_value)
    s = positive_scalar("output_grad_var", output_grad_var)
    if not isinstance(network, Network):
        raise TypeError(f"network must be a Network, got {short_repr(network)}")
    if network.coupled_inputs is None:
        raise ValueError("network: transformer_clipping needs a stack with coupled inputs "
                         "(tokens); use clipping() for MLPs")
    if profile is None:
        profile = predict(network)
    elif not isinstance(profile, Profile):
        raise TypeError(f"profile must be a Profile of predict(network) or None, got "
                        f"{short_repr(profile)}")
    norms = weight_gradient_norms(profile, network, s)
    return _stack_clip(c, norms.total_log_norm2, log_norm2_var, s, norms)


def _stack_clip(c: np.ndarray, m: float, log_norm2_var, s: float, norms) -> StackClipResult:
    """``P(||g|| > c)`` from ``m = log E||g||^2``: the concentration limit, or log-normal with the
    given log-variance (:func:`transformer_clipping`)."""
    if log_norm2_var is None:
        p = (m > 2.0 * np.log(c)).astype(float)
        rule = "concentration limit: P = 1[E||g||^2 > c^2] (theory predicts the mean only)"
        var = None
    else:
        var = positive_scalar("log_norm2_var", log_norm2_var)
        mu = m - 0.5 * var
        p = stats.norm.sf((2.0 * np.log(c) - mu) / math.sqrt(var))
        rule = (f"log-normal ||g||^2 with the predicted mean and the given log-variance {var:.4g}")
    return StackClipResult(c, np.asarray(p, float), m, math.exp(0.5 * m) if m < 1400 else
                           math.inf, var, rule, s, norms)


def recurrent_clipping(network: Network, clip_value=1.0, *, profile=None,
                       output_grad_var: float = 1.0,
                       log_norm2_var: Optional[float] = None) -> StackClipResult:
    """``P(||g|| > c)`` at initialisation for a recurrent network with weights tied across steps
    (:func:`signalprop.rnn`), ``g`` the gradient of all its recurrent, input and bias parameters
    for the loss ``<v, h_T>``, ``v ~ N(0, output_grad_var I)`` (clipping through time).

    The mean is ``predict_tied``'s ``E||g||^2 = sum_gates N^2 G_W + N n_x G_U + N G_b`` with the
    cross-step terms of tied weights (docs/theory/recurrent.md, "Weight gradients"; ``profile``: a
    :func:`~signalprop.dmft.predict_tied` profile of ``network``, else computed with its defaults),
    exactly proportional to ``output_grad_var``; the law is as in :func:`transformer_clipping`
    (concentration limit, or log-normal with a given ``log_norm2_var``). The norm concentrates
    at large N (validation/tied_report.md, section 4: 5-95% range about +-15% at N = 256)."""
    c = _check_clip(clip_value)
    s = positive_scalar("output_grad_var", output_grad_var)
    if not isinstance(network, Network):
        raise TypeError(f"network must be a Network, got {short_repr(network)}")
    if profile is None:
        profile = predict_tied(network)
    elif not (isinstance(profile, Profile) and "weight_gradients" in profile.meta):
        raise TypeError(f"profile must be a predict_tied profile of the network or None, got "
                        f"{short_repr(profile)}")
    norms = profile.meta["weight_gradients"]
    return _stack_clip(c, norms["total"]["log_norm_sq"] + math.log(s), log_norm2_var, s, norms)
