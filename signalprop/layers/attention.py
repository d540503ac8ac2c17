"""Multi-head self-attention over T tokens, a layer kind that couples its T inputs (the tokens),
and the pieces of transformer blocks built from it: the feed-forward sublayer and the residual
branch scalings of GPT-2 and DeepNet (:func:`feed_forward`, :func:`deepnet_constants`).

The layer (Vaswani et al. 2017, eqs. 1-2, with an optional causal mask and temperature), for the
T tokens ``x_a`` (rows of ``X``, width ``N``), heads ``h = 1..H`` of width ``d = N / H``:

    Q^h = X W_Q^h,  K^h = X W_K^h,  V^h = X W_V^h       (W_*^h: N x d, entries N(0, sigma_*^2 / N))
    S^h = Q^h (K^h)^T * lambda / tau,   lambda = 1/sqrt(d) ("sqrt") or 1/d ("linear")
    A^h = softmax over keys of S^h (keys b > a masked when causal),   O^h = A^h V^h
    Y   = [O^1 .. O^H] W_O                                (W_O: N x N, entries N(0, sigma_o^2 / N))

The tracked variable is the output ``Y``: ``q^l`` is token 0's second moment, ``c^l`` the
correlation of tokens 0 and 1, ``kernel_corr`` all T x T correlations (rank collapse: -> 1), and
``g^l`` the trace of the T x T gradient covariance for the loss ``<v, y^L_0>`` on token 0.

Mean field (infinite width, d -> infinity; derivation and checks: docs/theory/attention.md), with
``K`` the input token kernel (``K_ab = E[x_ai x_bi]``), ``gamma = sigma_q^2 sigma_k^2 / tau^2``
and ``Pi`` the gradient covariance at the output:

* ``"linear"`` (1/d, the mu-P-style scaling of Hron et al. 2020, sec. 3): the logits converge to
  their mean, 0 for independent W_Q, W_K (``sigma_q^2 K / tau`` when they are tied), so ``A`` is a
  deterministic matrix (uniform over the visible keys when untied):
  ``K_Y = sigma_o^2 sigma_v^2 A K A^T``, ``Pi_X = sigma_o^2 sigma_v^2 A^T Pi A``; the query/key
  path is O(1/d) and vanishes.
* ``"sqrt"`` (1/sqrt(d), Hron et al. 2020, "Infinite attention", ICML, sec. 3 and Thm. 3): the
  logits of one head stay Gaussian, ``S = sqrt(gamma) L Z L^T`` (``L L^T = K``, Z i.i.d. N(0,1)),
  so ``Cov(S_ab, S_a'b') = gamma K_aa' K_bb'``, independent across heads; with H -> infinity

      K_Y = sigma_o^2 sigma_v^2 E[A K A^T],
      Pi_X = sigma_o^2 sigma_v^2 ( E[A^T Pi A] + gamma E[dS K dS^T] + gamma E[dS^T K dS] ),
      dS_ab = A_ab (G_ab - sum_c A_ac G_ac),   G ~ N(0, Pi (x) K) independent of A

  (value path; query path; key path: gradient independence, the gradient w.r.t. the logits
  ``dL/dS`` is O(sqrt d) and survives the 1/sqrt(d)). These expectations over the T^2 logits have
  no closed form; they are computed by fixed-seed Monte Carlo with ``logit_samples`` draws
  (antithetic pairs ``Z, -Z``), whose standard error is recorded per layer in
  ``profile.meta["numerical"]``. For an exchangeable input kernel ``K = v ((1-c) I + c 1 1^T)``
  (c >= 0, no mask; the default inputs, kept so by every layer of a transformer stack) they
  reduce exactly to four scalar expectations over two softmax rows (``r1 = E|a|^2``,
  ``r2 = E[a.a']``, ``w1 = E tr J_a^2``, ``w2 = E tr J_a J_a'``, ``J_a = diag(a) - a a^T``),
  estimated from base draws shared by all layers: O(logit_samples T) work per layer instead of
  O(logit_samples T^3) (docs/theory/attention.md, "Exchangeable tokens").

Monte Carlo (dense engine): weights drawn in full, the backward pass written by hand
(``validation/attention_check.py`` and ``tests/test_attention.py`` check it against finite
differences); ``couples_inputs = True`` (gradients of all T tokens, shape (S, T, N)). The
matrix-free engine refuses the layer.

Weight gradients of every matrix of a stack (W_Q, W_K, W_V, W_O, the feed-forward W_1, W_2):
:func:`weight_gradient_norms` (mean field, from a kernel-path profile) and
:func:`weight_gradient_norms_mc` (Monte Carlo, dense samplers, backward by hand); they live here,
below both the theory and the simulation layers, since they need the layer's own expectations
and samplers (docs/theory/attention.md, "Weight gradients of every matrix").
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
import numpy as np

from .._validate import (check_choice, check_int, check_memory, nonnegative_scalar,
                         positive_scalar, short_repr)
from ..activations import activation as _activation
from ..kernel import Kernel
from ..network import MAX_WIDTH, KernelStep, Network
from ..results import Profile, _Result
from ..sampling import RealScale, Streams, register, sampler
from .compose import AddRule
from .dense import Dense, DenseRule

__all__ = ["Attention", "AttentionRule", "LOGIT_SCALES", "feed_forward", "deepnet_constants",
           "attention_weights", "FFNWeightGradients", "ffn_weight_gradients",
           "dense_weight_gradient", "attention_weight_norms", "weight_sites",
           "WeightGradientNorms", "weight_gradient_norms", "WeightGradientSamples",
           "weight_gradient_norms_mc", "default_tokens", "ATTENTION_MATRICES"]

#: logit scalings: 1/sqrt(d_head) (standard) and 1/d_head (mu-P style)
LOGIT_SCALES = ("sqrt", "linear")
#: the largest T the theory's T x T work per logit draw is sized for (T^3 flops, T^2 memory)
MAX_TOKENS = 4096


def _flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {short_repr(value)}")
    return bool(value)


@dataclass(frozen=True)
class Attention:
    """Multi-head self-attention over ``tokens`` inputs (module docstring).

    ``width``: the model width N (input = output width; divisible by ``heads``); ``heads``: H >= 1;
    ``tokens``: T >= 1; ``sigma_q2``, ``sigma_k2`` (>= 0; 0 gives uniform attention),
    ``sigma_v2``, ``sigma_o2`` (> 0): weight variances times fan-in; ``logit_scale``: ``"sqrt"``
    (1/sqrt(d_head)) or ``"linear"`` (1/d_head); ``causal``: mask the keys after the query;
    ``temperature``: tau > 0, the logits are divided by it; ``tie_qk``: keys use the query weights
    (W_K = W_Q; ``"linear"`` scaling only, where the logits then converge to ``sigma_q^2 K / tau``);
    ``logit_samples``: Monte Carlo draws of the logits for the ``"sqrt"`` theory (even, >= 64);
    ``seed``: their seed."""

    width: int
    heads: int
    tokens: int
    sigma_q2: float = 1.0
    sigma_k2: float = 1.0
    sigma_v2: float = 1.0
    sigma_o2: float = 1.0
    logit_scale: str = "sqrt"
    causal: bool = False
    temperature: float = 1.0
    tie_qk: bool = False
    logit_samples: int = 2048
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "width", check_int("width", self.width, 1, MAX_WIDTH))
        object.__setattr__(self, "heads", check_int("heads", self.heads, 1, MAX_WIDTH))
        object.__setattr__(self, "tokens", check_int("tokens", self.tokens, 1, MAX_TOKENS))
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads}): "
                             f"each head has width width / heads")
        for name in ("sigma_q2", "sigma_k2"):
            object.__setattr__(self, name, nonnegative_scalar(name, getattr(self, name)))
        for name in ("sigma_v2", "sigma_o2", "temperature"):
            object.__setattr__(self, name, positive_scalar(name, getattr(self, name)))
        check_choice("logit_scale", self.logit_scale, LOGIT_SCALES)
        object.__setattr__(self, "causal", _flag("causal", self.causal))
        object.__setattr__(self, "tie_qk", _flag("tie_qk", self.tie_qk))
        if self.tie_qk and self.logit_scale != "linear":
            raise ValueError("tie_qk=True needs logit_scale='linear': with tied query and key "
                             "weights the 1/sqrt(d_head) logits have a mean growing like "
                             "sqrt(d_head) (no infinite-width limit)")
        if self.tie_qk and self.sigma_k2 != self.sigma_q2:
            raise ValueError(f"tie_qk=True uses the query weights as keys: sigma_k2 must equal "
                             f"sigma_q2 ({self.sigma_q2}), got {self.sigma_k2}")
        m = check_int("logit_samples", self.logit_samples, 64)
        if m % 2:
            raise ValueError(f"logit_samples must be even (antithetic pairs), got {m}")
        object.__setattr__(self, "logit_samples", m)
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0))

    needs_mean = False
    capabilities = frozenset()
    draws_weights = True

    @property
    def coupled_inputs(self) -> int:
        """The T tokens it mixes (:attr:`signalprop.network.Network.coupled_inputs`)."""
        return self.tokens

    @property
    def head_width(self) -> int:
        """d = width / heads."""
        return self.width // self.heads

    @property
    def logit_gain(self) -> float:
        """gamma = sigma_q^2 sigma_k^2 / tau^2: the logit variance per unit of K_aa' K_bb'."""
        return self.sigma_q2 * self.sigma_k2 / self.temperature ** 2

    def check_input(self, n_in: int) -> None:
        if n_in != self.width:
            raise ValueError(f"Attention keeps the width: it has width {self.width} but its input "
                             f"has width {n_in}")

    def with_width(self, width: int) -> "Attention":
        return _replace(self, width=width)

    def same_rule(self, other) -> bool:
        return other == self

    def label(self) -> str:
        extra = ", causal" if self.causal else ""
        return f"Attention({self.width}, H={self.heads}, T={self.tokens}, {self.logit_scale}{extra})"

    # --- theory ---------------------------------------------------------------------------

    def kernel_step(self, kernel: Kernel, n_in: int, cache: dict) -> KernelStep:
        """Module docstring: ``K_Y`` and the backward map ``Pi_Y -> Pi_X`` (the tracked variable is
        the output, so ``to_tracked`` is the identity)."""
        T = self.tokens
        if kernel.k != T:
            raise ValueError(f"an Attention layer over {T} tokens needs the kernel of T = {T} "
                             f"inputs, got k = {kernel.k}")
        top = float(np.max(kernel.log_q))
        if not top < 700.0:
            raise ValueError(f"Attention: the token second moments reach exp({top:.4g}), beyond "
                             "the float range its logits are computed in")
        K = kernel.matrix(0.0)
        rule = _AttentionExpectations(self, K)
        M, se = rule.output_kernel()
        M *= self.sigma_o2 * self.sigma_v2
        d = np.diag(M).copy()
        if not np.all(d > 0):
            raise ValueError("Attention: an output token has zero second moment (its attention "
                             "weights average the inputs to zero)")
        s = np.sqrt(d)
        corr = np.clip(M / np.outer(s, s), -1.0, 1.0)
        np.fill_diagonal(corr, 1.0)
        out = Kernel(np.log(d), corr, None if kernel.mu is None else np.zeros(T))
        note = None
        if se is not None:
            note = {"layer": cache.get("layer"), "kind": "Attention", "rule": rule.rule_text(),
                    "forward_rel_se": float(np.max(se * self.sigma_o2 * self.sigma_v2 /
                                                   np.sqrt(np.outer(d, d))))}
            if rule.exch is not None:
                # query/key statistics trusted only with enough near-tie draws (NEAR_TIE_MIN)
                note["logit_spread"] = rule.logit_spread
                note["near_tie_draws"] = rule.near_tie_draws
                note["backward_reliable"] = rule.near_tie_draws >= NEAR_TIE_MIN
                if not note["backward_reliable"]:
                    warnings.warn(
                        f"attention layer {cache.get('layer')}: the logits' spread is "
                        f"{rule.logit_spread:.3g}, and only {rule.near_tie_draws} of the drawn rows "
                        f"have a near tie (< {NEAR_TIE_MIN}): the query/key part of the gradient "
                        "is carried by these rare events, so log g below this layer is "
                        "unreliable (biased low; papers/dong2021/README.md)", RuntimeWarning,
                        stacklevel=2)
            cache.setdefault("numerical", []).append(note)
        log_scale = math.log(self.sigma_o2) + math.log(self.sigma_v2)

        def back(P: np.ndarray) -> tuple:
            Q, bse = rule.backward(P)
            tr = float(np.trace(Q))
            if note is not None:
                note["backward_rel_se"] = float(np.max(bse) / tr) if tr > 0 else math.nan
            return log_scale, Q

        return KernelStep(out, out, _identity, back)


def _identity(P: np.ndarray) -> tuple:
    return 0.0, P


def _replace(layer: Attention, **kw) -> Attention:
    fields = {f: getattr(layer, f) for f in layer.__dataclass_fields__}
    fields.update(kw)
    return Attention(**fields)


# ---------------------------------------------------------------------------------------------
# the expectations over the logits


def attention_weights(logits: np.ndarray, causal: bool) -> np.ndarray:
    """Row-wise softmax over the last axis of ``logits`` (..., T, T); with ``causal`` the keys
    ``b > a`` of query ``a`` get weight 0."""
    s = np.array(logits, dtype=float)
    if causal:
        T = s.shape[-1]
        s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    s -= np.max(s, axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= np.sum(s, axis=-1, keepdims=True)
    return s


def _psd_root(K: np.ndarray) -> np.ndarray:
    """``L`` with ``L L^T = K`` for a symmetric positive semi-definite ``K`` (eigenvalues below 0 by
    rounding set to 0)."""
    lam, U = np.linalg.eigh(0.5 * (K + K.T))
    return U * np.sqrt(np.clip(lam, 0.0, None))


def _mean_se(draws: np.ndarray):
    """Mean over the antithetic pairs (axis 0 holds pairs (2i, 2i+1)) and its standard error."""
    pairs = 0.5 * (draws[0::2] + draws[1::2])
    n = pairs.shape[0]
    return pairs.mean(axis=0), pairs.std(axis=0, ddof=1) / math.sqrt(n)


#: the fewest rows (of the 2 logit_samples drawn) whose top-two logit gap is below 1 for which the
#: exchangeable route's query/key statistics and their standard errors are trusted: a row-level
#: rare event when the logit spread sqrt(gamma (1 - c)) v is large (papers/dong2021, issue 12)
NEAR_TIE_MIN = 32

#: relative spread below which a token kernel counts as exchangeable (all variances equal, all
#: covariances equal): far below the Monte Carlo errors (~1e-3) the exchangeable route carries
EXCHANGEABLE_RTOL = 1e-12


def _exchangeable(K: np.ndarray):
    """``(v, c)`` when ``K = v ((1 - c) I + c 1 1^T)`` to :data:`EXCHANGEABLE_RTOL` with
    ``0 <= c <= 1`` (T >= 2), else None."""
    T = K.shape[0]
    d = np.diag(K)
    v = float(d.mean())
    if T < 2 or not v > 0:
        return None
    off = K[~np.eye(T, dtype=bool)]
    cv = float(off.mean())
    tol = EXCHANGEABLE_RTOL * v
    if np.max(np.abs(d - v)) > tol or np.max(np.abs(off - cv)) > tol:
        return None
    c = cv / v
    return (v, min(c, 1.0)) if c >= 0.0 else None


@lru_cache(maxsize=8)
def _base_draws(seed: int, T: int, m: int) -> tuple:
    """The standard normals of the exchangeable route, fixed by ``(seed, T, m)`` and shared by
    every layer: ``Y`` (m/2, 1, T), the keys' common part, and ``Z`` (m/2, 2, T), two query rows
    (read-only; the antithetic partners are their negatives)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, T, 0x5E7]))
    Y = rng.standard_normal((m // 2, 1, T))
    Z = rng.standard_normal((m // 2, 2, T))
    Y.flags.writeable = Z.flags.writeable = False
    return Y, Z


def _row_statistics(A: np.ndarray) -> np.ndarray:
    """Per draw, from two attention rows ``a, a'`` (A: (n, 2, T)): ``(r1, r2, w1, w2)`` =
    ``((|a|^2 + |a'|^2)/2, a.a', (tr J_a^2 + tr J_a'^2)/2, tr J_a J_a')`` with the softmax Jacobian
    ``J_a = diag(a) - a a^T``: ``tr J_a J_a' = sum a a' - sum a a'^2 - sum a^2 a' + (a.a')^2``."""
    a, b = A[:, 0], A[:, 1]
    aa, bb, ab = (np.sum(x * y, axis=-1) for x, y in ((a, a), (b, b), (a, b)))
    tr2 = [x - 2 * np.sum(r ** 3, axis=-1) + x * x for x, r in ((aa, a), (bb, b))]
    trab = ab - np.sum(a * b * b, axis=-1) - np.sum(a * a * b, axis=-1) + ab * ab
    return np.stack([0.5 * (aa + bb), ab, 0.5 * (tr2[0] + tr2[1]), trab], axis=-1)


def _two_level(T: int, x: float, y: float) -> np.ndarray:
    """``(x - y) I + y 1 1^T``: the T x T matrix with diagonal x and off-diagonal y."""
    return np.full((T, T), y) + (x - y) * np.eye(T)


class _AttentionExpectations:
    """The expectations of the module docstring for one layer and one input kernel ``K``: exact for
    deterministic attention (``"linear"`` scaling, or gamma = 0); for an exchangeable ``K``
    (non-causal, ``K = v ((1 - c) I + c 1 1^T)``, c >= 0) the four-statistic route of
    docs/theory/attention.md ("Exchangeable tokens"); else fixed-seed Monte Carlo over the logits
    ``S = sqrt(gamma) L Z L^T``, ``m = logit_samples`` draws as m/2 antithetic pairs, processed in
    batches of at most 256 (``exchangeable=False`` forces the last, for checks)."""

    BATCH = 256

    def __init__(self, layer: Attention, K: np.ndarray, exchangeable: bool = True):
        self.layer, self.K, self.T = layer, K, K.shape[0]
        self.gamma = layer.logit_gain
        self.random = layer.logit_scale == "sqrt" and self.gamma > 0
        self.exch = None
        if not self.random:
            mean = np.zeros_like(K)
            if layer.tie_qk:
                mean = layer.sigma_q2 * K / layer.temperature
            self.A = attention_weights(mean, layer.causal)
        else:
            self.exch = None if (layer.causal or not exchangeable) else _exchangeable(K)
            if self.exch is None:
                self.L = _psd_root(K)
            else:
                self._exchangeable_statistics()

    def rule_text(self) -> str:
        if self.exch is not None:
            return (f"exchangeable tokens (v, c) = ({self.exch[0]:.6g}, {self.exch[1]:.6g}): "
                    f"Monte Carlo of 4 row statistics, {self.layer.logit_samples} draws of the "
                    f"key logits and two query rows (antithetic pairs), seed {self.layer.seed}")
        return (f"Monte Carlo over the T^2 = {self.T ** 2} Gaussian logits, "
                f"{self.layer.logit_samples} draws (antithetic pairs), seed {self.layer.seed}")

    def _exchangeable_statistics(self) -> None:
        """``theta = E[(r1, r2, w1, w2)]`` (:func:`_row_statistics`) and the covariance of its
        estimate, for the logits of two query rows ``S_ab = s (sqrt(1 - c) Z_ab + sqrt(c) Y_b)``,
        ``s^2 = gamma v^2 (1 - c)``: the law of ``S`` up to per-row constants, which the softmax
        ignores (docs/theory/attention.md, "Exchangeable tokens")."""
        v, c = self.exch
        Y, Z = _base_draws(self.layer.seed, self.T, self.layer.logit_samples)
        s = math.sqrt(self.gamma * (1.0 - c)) * v
        S = (s * math.sqrt(1.0 - c)) * Z + (s * math.sqrt(c)) * Y
        pairs = 0.5 * (_row_statistics(attention_weights(S, False))
                       + _row_statistics(attention_weights(-S, False)))
        n = pairs.shape[0]
        self.theta = pairs.mean(axis=0)
        self.theta_cov = np.atleast_2d(np.cov(pairs, rowvar=False)) / n
        # w1, w2 (query/key path) are carried by near-ties of a row's two largest logits, of
        # probability ~ k_T / s per unit gap (k_T = T (T-1) int phi^2 Phi^(T-2), 1.42 at T = 8):
        # with few of them in the draws the estimate is biased low and theta_cov does not show it
        top = np.sort(np.concatenate([S, -S]), axis=-1)[..., -2:]
        self.logit_spread = float(s)
        self.near_tie_draws = int(np.sum(top[..., 1] - top[..., 0] < 1.0))

    def _exchangeable_forward(self, theta: np.ndarray) -> np.ndarray:
        """``E[A K A^T] = v ((1 - c) E[A A^T] + c 1 1^T)`` (rows of A sum to 1), ``E[A A^T]``
        with diagonal r1 and off-diagonal r2."""
        v, c = self.exch
        return v * ((1.0 - c) * _two_level(self.T, theta[0], theta[1]) + c)

    def _exchangeable_backward(self, P: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """The backward map of the module docstring for exchangeable K (docs/theory/attention.md):
        value ``tr(P) B(t1, t2) + (sum P - tr P) B(t3, t4)``; query ``gamma v^2 (1-c)^2 P o B(w1,
        w2)``; key ``gamma v (1-c) [tr(M) B(u1, u2) + (sum M - tr M) B(u3, u4)]``, ``M = P o K``,
        ``B(x, y)`` :func:`_two_level`, ``t1 = r1/T``, ``t3 = r2/T``, ``t2 = (1/T - t1)/(T-1)``,
        ``t4 = (1/T - t3)/(T-1)``, ``u1 = w1/T``, ``u3 = w2/T``, ``u2 = -u1/(T-1)``,
        ``u4 = -u3/(T-1)``."""
        v, c = self.exch
        T, g = self.T, self.gamma
        r1, r2, w1, w2 = theta
        t1, t3, u1, u3 = r1 / T, r2 / T, w1 / T, w2 / T
        trP, sP = float(np.trace(P)), float(np.sum(P))
        value = (trP * _two_level(T, t1, (1.0 / T - t1) / (T - 1))
                 + (sP - trP) * _two_level(T, t3, (1.0 / T - t3) / (T - 1)))
        query = g * (v * (1.0 - c)) ** 2 * P * _two_level(T, w1, w2)
        M = P * self.K
        trM, sM = float(np.trace(M)), float(np.sum(M))
        key = g * v * (1.0 - c) * (trM * _two_level(T, u1, -u1 / (T - 1))
                                   + (sM - trM) * _two_level(T, u3, -u3 / (T - 1)))
        return value + query + key

    def _exchangeable(self, f, *args):
        """``f(*args, theta)`` and its standard error: f is affine in theta, so the error is
        ``sqrt(grad^T Cov(theta) grad)`` per entry with the gradient from unit steps."""
        base = f(*args, self.theta)
        grads = np.stack([f(*args, self.theta + e) - base for e in np.eye(4)], axis=-1)
        var = np.einsum("...k,kl,...l->...", grads, self.theta_cov, grads)
        return base, np.sqrt(np.clip(var, 0.0, None))

    def _weights(self):
        """The attention matrices, batch by batch (the same draws on every call)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.layer.seed, self.T, 0xA77]))
        m, T = self.layer.logit_samples, self.T
        g = math.sqrt(self.gamma)
        for start in range(0, m, self.BATCH):
            n = min(self.BATCH, m - start) // 2
            Z = rng.standard_normal((n, T, T))
            S = g * (self.L @ Z @ self.L.T)
            S = np.stack([S, -S], axis=1).reshape(2 * n, T, T)
            yield attention_weights(S, self.layer.causal)

    def output_kernel(self):
        """``(E[A K A^T], its standard error or None when exact)``."""
        if not self.random:
            return self.A @ self.K @ self.A.T, None
        if self.exch is not None:
            return self._exchangeable(self._exchangeable_forward)
        parts = [A @ self.K @ np.swapaxes(A, 1, 2) for A in self._weights()]
        mean, se = _mean_se(np.concatenate(parts))
        return 0.5 * (mean + mean.T), se

    def backward(self, P: np.ndarray):
        """``(E[A^T P A] + gamma (E[dS K dS^T] + E[dS^T K dS]), its standard errors)`` (module
        docstring; 0 when exact)."""
        if not self.random:
            return self.A.T @ P @ self.A, np.zeros_like(P)
        if self.exch is not None:
            return self._exchangeable(self._exchangeable_backward, P)
        K, T = self.K, self.T
        Lp = _psd_root(P)
        rng = np.random.default_rng(np.random.SeedSequence([self.layer.seed, T, 0xB4C]))
        out = []
        for A in self._weights():
            At = np.swapaxes(A, 1, 2)
            value = At @ P @ A
            G = Lp @ rng.standard_normal(A.shape) @ self.L.T       # Cov = P (x) K
            dS = A * (G - np.sum(A * G, axis=-1, keepdims=True))
            dSt = np.swapaxes(dS, 1, 2)
            out.append(value + self.gamma * (dS @ K @ dSt + dSt @ K @ dS))
        mean, se = _mean_se(np.concatenate(out))
        return 0.5 * (mean + mean.T), se


# ---------------------------------------------------------------------------------------------
# Monte Carlo (dense engine)


class AttentionRule:
    """Monte Carlo of an :class:`Attention` layer, dense engine: ``W_Q, W_K, W_V`` (N x N, the H
    heads side by side) and ``W_O`` drawn in full per sample, in that order, from the sample's
    forward stream (W_K not drawn when tied). Real scale (the logits are not homogeneous in the
    input). Backward, for the gradient ``dY`` (S, T, N):

        dO = dY W_O^T,  dA = dO V^T,  dV = A^T dO,
        dS = lambda / tau * A * (dA - rowsum(A * dA)),  dQ = dS K,  dK = dS^T Q,
        dX = dQ W_Q^T + dK W_K^T + dV W_V^T      (per head; tied: dQ + dK through W_Q)."""

    couples_inputs = True
    engine = "dense"

    def __init__(self, layer: Attention, n_in: int):
        self.layer = layer
        self.n_in = self.n_out = layer.width
        self.H, self.d = layer.heads, layer.head_width
        lam = 1.0 / math.sqrt(self.d) if layer.logit_scale == "sqrt" else 1.0 / self.d
        self.scale = lam / layer.temperature

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        N = self.n_in
        return (4 * N * N + k * 5 * N + 2 * self.H * k * k) * itemsize

    def _heads(self, Z: np.ndarray) -> np.ndarray:
        S, T, _ = Z.shape
        return Z.reshape(S, T, self.H, self.d).transpose(0, 2, 1, 3)

    def _merge(self, Z: np.ndarray) -> np.ndarray:
        S, H, T, d = Z.shape
        return Z.transpose(0, 2, 1, 3).reshape(S, T, H * d)

    def forward(self, x: np.ndarray, rng: Streams):
        la, N, dt = self.layer, self.n_in, x.dtype
        if x.shape[1] != la.tokens:
            raise ValueError(f"an Attention layer over {la.tokens} tokens got {x.shape[1]} inputs")
        c = 1.0 / math.sqrt(N)
        Wq = rng.normal((N, N), dt) * dt.type(c * math.sqrt(la.sigma_q2))
        Wk = Wq if la.tie_qk else rng.normal((N, N), dt) * dt.type(c * math.sqrt(la.sigma_k2))
        Wv = rng.normal((N, N), dt) * dt.type(c * math.sqrt(la.sigma_v2))
        Wo = rng.normal((N, N), dt) * dt.type(c * math.sqrt(la.sigma_o2))
        Q, K, V = (self._heads(x @ W) for W in (Wq, Wk, Wv))
        A = attention_weights(Q @ np.swapaxes(K, 2, 3) * self.scale, la.causal).astype(dt)
        O = self._merge(A @ V)
        y = O @ Wo
        return y, y, (Wq, Wk, Wv, Wo, Q, K, V, A)

    def to_tracked(self, gy: np.ndarray, ctx) -> np.ndarray:
        return gy

    def backward(self, gt: np.ndarray, ctx, rng: Streams) -> np.ndarray:
        Wq, Wk, Wv, Wo, Q, K, V, A = ctx
        dO = self._heads(gt @ np.swapaxes(Wo, 1, 2))
        dA = dO @ np.swapaxes(V, 2, 3)
        dV = np.swapaxes(A, 2, 3) @ dO
        dS = A * (dA - np.sum(A * dA, axis=-1, keepdims=True)) * gt.dtype.type(self.scale)
        dQ = self._merge(dS @ K)
        dK = self._merge(np.swapaxes(dS, 2, 3) @ Q)
        dX = self._merge(dV) @ np.swapaxes(Wv, 1, 2)
        if self.layer.tie_qk:
            return dX + (dQ + dK) @ np.swapaxes(Wq, 1, 2)
        return dX + dQ @ np.swapaxes(Wq, 1, 2) + dK @ np.swapaxes(Wk, 1, 2)


register(Attention, "dense")(AttentionRule)


@register(Attention, "matrix-free")
def _matrix_free(layer: Attention, n_in: int):
    raise ValueError("engine='matrix-free' does not sample Attention layers (its query, key, "
                     "value and output weights act on all T tokens through the softmax; no "
                     "conditional sampler is derived); use engine='dense'")


# ---------------------------------------------------------------------------------------------
# transformer pieces


def feed_forward(width: int, ratio: float = 4.0, activation="gelu", sigma_w2: float = 2.0,
                 sigma_o2: float = 1.0) -> tuple:
    """The feed-forward sublayer ``W_2 phi(W_1 x)`` (Vaswani et al. 2017, eq. 2, without biases):
    ``(Dense(ratio * width, phi, sigma_w2), Dense(width, linear, sigma_o2))``; ``ratio * width``
    must be an integer >= 1."""
    width = check_int("width", width, 1, MAX_WIDTH)
    r = positive_scalar("ratio", ratio)
    inner = r * width
    if not 1 <= inner <= MAX_WIDTH or inner != int(inner):
        raise ValueError(f"ratio * width (the feed-forward width) must be an integer in [1, "
                         f"{MAX_WIDTH}], got {ratio} * {width} = {inner:g}")
    act = _activation(activation)
    return (Dense(int(inner), act, sigma_w2, 0.0), Dense(width, "linear", sigma_o2, 0.0))


def deepnet_constants(blocks: int) -> tuple:
    """DeepNet's ``(alpha, beta)`` for a post-LN stack of ``blocks`` blocks (Wang et al. 2022,
    "DeepNet: Scaling Transformers to 1,000 Layers", encoder-only and decoder-only rows of their
    Table: ``alpha = (2 N)^(1/4)``, ``beta = (8 N)^(-1/4)``): ``x_{l+1} = LN(alpha x_l + G(x_l))``
    with the value, output and feed-forward weights' standard deviations times ``beta``."""
    n = check_int("blocks", blocks, 1)
    return (2.0 * n) ** 0.25, (8.0 * n) ** -0.25


# ---------------------------------------------------------------------------------------------
# weight gradients inside composed layers (theory; docs/theory/attention.md, "Weight gradients")


def dense_weight_gradient(profile, record: dict) -> float:
    """``log E||dL/dW||_F^2`` of the Dense sublayer described by ``record`` (an entry of a kernel-path
    profile's ``meta["inner"]``, :func:`signalprop.layers.compose._kernel_chain`), for the loss
    ``<v, t^L_0>`` (``v ~ N(0, I)``) of :func:`signalprop.predict`.

    With ``h_a = W x_a`` for the k inputs ``a`` (tokens), ``dL/dW = sum_a delta_a x_a^T``
    (``delta_a = dL/dh_a``), so ``||dL/dW||_F^2 = sum_ab <delta_a, delta_b> <x_a, x_b>``; at
    infinite width the gradients are independent of the forward units (gradient independence,
    Yang 2019; Schoenholz et al. 2017, sec. 4), hence

        E||dL/dW||_F^2 = N_out N_in sum_ab K^x_ab Pi_ab,

    ``K^x`` the per-unit kernel of the sublayer's input, ``Pi`` the per-unit gradient covariance
    at its output ``h`` (exp(log_g[layer] + log_pi) pi). For one input this is the classic
    ``N_out N_in G^l`` (CONVENTIONS.md, ``log_G = log_g + log q_x``)."""
    if record.get("kind") != "Dense":
        raise ValueError(f"record: a Dense sublayer is needed, got {record.get('kind')!r}")
    if "pi" not in record:
        raise ValueError(f"record: sublayer {record.get('where')} of layer {record.get('layer')} has "
                         "no gradient covariance (predict runs no backward map for layer 1)")
    lq = np.asarray(record["input_log_q"], float)
    top = float(np.max(lq))
    sx = np.exp(0.5 * (lq - top))
    K = np.asarray(record["input_corr"], float) * np.outer(sx, sx)
    total = float(np.sum(K * np.asarray(record["pi"], float)))
    if not total > 0:
        return -math.inf
    return (math.log(record["n_in"]) + math.log(record["width"]) + top + math.log(total)
            + float(profile.log_g[record["layer"] - 1]) + float(record["log_pi"]))


@dataclass(frozen=True)
class FFNWeightGradients:
    """``log E||dL/dW_2||_F^2`` of the output weights ``W_2`` of each feed-forward sublayer, in the
    order of the network (``layer``: the 1-based profile row of its residual sum)."""

    layer: np.ndarray
    log_norm2: np.ndarray

    def log_ratio(self) -> float:
        """``log(E||dL/dW_2^last||^2 / E||dL/dW_2^first||^2)`` (Xiong et al. 2020, Thm. 1 and
        Fig. 3: post-LN gradients grow towards the output, pre-LN stay level)."""
        return float(self.log_norm2[-1] - self.log_norm2[0])


def ffn_weight_gradients(profile) -> FFNWeightGradients:
    """:func:`dense_weight_gradient` of ``W_2``, the last Dense of each path of a composed layer
    that holds two or more Dense layers (a :func:`feed_forward` branch), from a kernel-path
    ``profile`` of :func:`signalprop.predict` (e.g. of :func:`signalprop.transformer`)."""
    inner = profile.meta.get("inner") if isinstance(profile.meta, dict) else None
    if not inner:
        raise ValueError("profile: no record of composed layers (meta['inner']); use a theory "
                         "profile of predict on the kernel path (a network with coupled inputs)")
    paths: dict = {}
    for rec in inner:
        key = (rec["layer"], tuple(rec["where"][:-1]))
        paths.setdefault(key, []).append(rec)
    rows, vals = [], []
    for (layer, _), recs in paths.items():
        dense = [r for r in recs if r["kind"] == "Dense"]
        if len(dense) >= 2:
            w2 = max(dense, key=lambda r: r["where"][-1])
            rows.append(layer)
            vals.append(dense_weight_gradient(profile, w2))
    if not rows:
        raise ValueError("profile: its network has no feed-forward sublayer (two Dense layers "
                         "inside a composed layer)")
    return FFNWeightGradients(np.array(rows), np.array(vals))


# ---------------------------------------------------------------------------------------------
# every weight matrix of a transformer stack: theory (docs/theory/attention.md, "Weight gradients
# of every matrix") and Monte Carlo

#: the most sample networks :func:`weight_gradient_norms_mc` runs (each holds its weights in full)
MAX_SAMPLES = 1_000_000
#: the names of the matrices, in the order they are listed within one sublayer
ATTENTION_MATRICES = ("W_Q", "W_K", "W_V", "W_O")


def _attention_sums(layer: Attention, K: np.ndarray, P: np.ndarray) -> tuple:
    """``(sums, standard errors)`` of the four per-matrix sums of :func:`attention_weight_norms`:
    ``s_O = sum (E[A K A^T] o P)``, ``s_V = sum (K o E[A^T P A])``,
    ``s_Q = sum (K o E[dS K dS^T])``, ``s_K = sum (K o E[dS^T K dS])`` (``dS`` built from
    ``Ghat ~ N(0, P (x) K)``, module docstring); errors 0 where exact."""
    rule = _AttentionExpectations(layer, K)
    if not rule.random:
        return _deterministic_sums(rule.A, K, P), np.zeros(4)
    if rule.exch is not None:
        return rule._exchangeable(_exchangeable_sums, rule, P)
    return _sampled_sums(rule, P)


def _deterministic_sums(A: np.ndarray, K: np.ndarray, P: np.ndarray) -> np.ndarray:
    """The sums for a deterministic ``A``: averaging over ``Ghat`` exactly,
    ``E[dS_ab dS_a'b'] = P_aa' (J_a K J_a')_bb'``, so ``s_Q = sum_aa' K_aa' P_aa' tr(K J_a K J_a')``
    and ``s_K = sum_bb' K_bb' sum_aa' K_aa' P_aa' (J_a K J_a')_bb'`` (equal by the symmetry of K
    and J; computed by the two routes separately), ``J_a = diag(A_a) - A_a A_a^T``."""
    T = A.shape[0]
    _check_tokens_memory(T)
    J = np.einsum("ab,bc->abc", A, np.eye(T)) - np.einsum("ab,ac->abc", A, A)
    KJ = K[None] @ J                                              # (T, T, T): K J_a
    tr = np.einsum("aij,bji->ab", KJ, KJ)                         # tr(K J_a K J_a')
    s_q = float(np.sum(K * P * tr))
    JKJ = np.einsum("aij,jk,bkl->abil", J, K, J, optimize=True)   # (J_a K J_a')_il
    s_k = float(np.einsum("ab,abil,il->", K * P, JKJ, K, optimize=True))
    return np.array([float(np.sum((A @ K @ A.T) * P)), float(np.sum(K * (A.T @ P @ A))),
                     s_q, s_k])


def _check_tokens_memory(T: int) -> None:
    """The deterministic route holds T^4 numbers (J_a K J_a' for all pairs)."""
    need = 8.0 * T ** 4
    if need > 2e9:
        raise ValueError(f"the query/key weight-gradient sums for deterministic attention hold T^4 "
                         f"numbers: T = {T} would need {need / 1e9:.1f} GB (allowed up to T = 125)")


def _exchangeable_sums(rule: "_AttentionExpectations", P: np.ndarray,
                       theta: np.ndarray) -> np.ndarray:
    """The sums on the exchangeable route (affine in ``theta``): the forward kernel, the value
    path, and the query and key paths of :meth:`_AttentionExpectations._exchangeable_backward`
    with ``gamma`` divided out, each contracted as in :func:`_attention_sums`."""
    v, c = rule.exch
    T, K = rule.T, rule.K
    r1, r2, w1, w2 = theta
    t1, t3, u1, u3 = r1 / T, r2 / T, w1 / T, w2 / T
    trP, sP = float(np.trace(P)), float(np.sum(P))
    fwd = rule._exchangeable_forward(theta)
    value = (trP * _two_level(T, t1, (1.0 / T - t1) / (T - 1))
             + (sP - trP) * _two_level(T, t3, (1.0 / T - t3) / (T - 1)))
    query = (v * (1.0 - c)) ** 2 * P * _two_level(T, w1, w2)
    M = P * K
    trM, sM = float(np.trace(M)), float(np.sum(M))
    key = v * (1.0 - c) * (trM * _two_level(T, u1, -u1 / (T - 1))
                           + (sM - trM) * _two_level(T, u3, -u3 / (T - 1)))
    return np.array([np.sum(fwd * P), np.sum(K * value), np.sum(K * query), np.sum(K * key)])


def _sampled_sums(rule: "_AttentionExpectations", P: np.ndarray) -> tuple:
    """The sums by Monte Carlo over the logits (the general route's draws of ``A``, with one
    ``Ghat`` per draw from its own seed)."""
    K, T = rule.K, rule.T
    Lp = _psd_root(P)
    rng = np.random.default_rng(np.random.SeedSequence([rule.layer.seed, T, 0x6E4]))
    out = []
    for A in rule._weights():
        At = np.swapaxes(A, 1, 2)
        G = Lp @ rng.standard_normal(A.shape) @ rule.L.T           # Cov = P (x) K
        dS = A * (G - np.sum(A * G, axis=-1, keepdims=True))
        dSt = np.swapaxes(dS, 1, 2)
        out.append(np.stack([np.einsum("sab,ab->s", A @ K @ At, P),
                             np.einsum("ab,sab->s", K, At @ P @ A),
                             np.einsum("ab,sab->s", K, dS @ K @ dSt),
                             np.einsum("ab,sab->s", K, dSt @ K @ dS)], axis=-1))
    return _mean_se(np.concatenate(out))


def attention_weight_norms(layer: Attention, K: np.ndarray, Pi: np.ndarray,
                           log_pi: float = 0.0) -> tuple:
    """``(log E||dL/dW||_F^2 for W_Q, W_K, W_V, W_O, their relative standard errors)`` of one
    :class:`Attention` layer with per-unit input token kernel ``K`` (T x T) and per-unit gradient
    covariance ``exp(log_pi) Pi`` at its output ``Y``, at infinite width (gradient independence;
    docs/theory/attention.md, "Weight gradients of every matrix"):

        E||dW_O||^2 = N^2 sigma_v^2 sum (E[A K A^T] o Pi)
        E||dW_V||^2 = N^2 sigma_o^2 sum (K o E[A^T Pi A])
        E||dW_Q||^2 = N^2 f sigma_o^2 sigma_v^2 sigma_k^2 / tau^2  sum (K o E[dS K dS^T])
        E||dW_K||^2 = N^2 f sigma_o^2 sigma_v^2 sigma_q^2 / tau^2  sum (K o E[dS^T K dS])

    with ``f = 1`` for 1/sqrt(d) logits and ``f = 1/d`` for 1/d logits (then the query/key
    gradients are a 1/d share: exact leading order), ``dS`` of the module docstring. The last two
    sums are equal in expectation (both ``sum_aa' K_aa' Pi_aa' E tr(K J_a K J_a')``). Tied query
    and key weights are not covered (ValueError)."""
    if layer.tie_qk:
        raise ValueError("layer: weight-gradient norms of tied query/key weights (tie_qk=True) are "
                         "not derived")
    K, Pi = np.asarray(K, float), np.asarray(Pi, float)
    T = layer.tokens
    if K.shape != (T, T) or Pi.shape != (T, T):
        raise ValueError(f"K and Pi must be {T} x {T} (the layer's tokens), got {K.shape} and "
                         f"{Pi.shape}")
    sums, se = _attention_sums(layer, K, Pi)
    N = layer.width
    f = 1.0 if layer.logit_scale == "sqrt" else 1.0 / layer.head_width
    qk = f * layer.sigma_o2 * layer.sigma_v2 / layer.temperature ** 2
    pref = np.array([qk * layer.sigma_k2, qk * layer.sigma_q2, layer.sigma_o2, layer.sigma_v2])
    vals = pref * sums[[2, 3, 1, 0]]
    errs = pref * np.asarray(se)[[2, 3, 1, 0]]
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(vals > 0, np.log(np.where(vals > 0, vals, 1.0)), -np.inf)
        rel = np.where(vals > 0, errs / np.where(vals > 0, vals, 1.0), 0.0)
    return 2.0 * math.log(N) + log_pi + logs, rel


def _dense_names(path: tuple) -> dict:
    """``{sublayer index: name}`` of the Dense layers of one path: ``W_1`` and ``W_2`` for the first
    and last of two or more (a feed-forward sublayer), ``W_mid`` between them, ``W`` alone."""
    dense = [j for j, la in enumerate(path) if isinstance(la, Dense)]
    if len(dense) == 1:
        return {dense[0]: "W"}
    names = {j: "W_mid" for j in dense}
    if dense:
        names[dense[0]], names[dense[-1]] = "W_1", "W_2"
    return names


def weight_sites(network) -> list:
    """The weight matrices of a stack of composed layers, in network order: one
    ``(row, path, j, sublayer, name)`` per matrix (``row`` 1-based; an :class:`Attention`
    sublayer gives four, W_Q, W_K, W_V, W_O). Covered: Dense and Attention sublayers directly in
    the paths of top-level composed layers (Add, Residual, Serial: the layers of
    :func:`signalprop.transformer`); a top-level Dense/Attention or a deeper nesting raises
    ValueError (not recorded this way)."""
    if not isinstance(network, Network):
        raise TypeError(f"network must be a Network, got {short_repr(network)}")
    sites = []
    for row, la in enumerate(network.layers, start=1):
        if isinstance(la, (Dense, Attention)):
            raise ValueError(f"network: layer {row} ({type(la).__name__}) is a top-level weight "
                             "layer; weight-gradient norms cover the sublayers of composed layers "
                             "(Residual, Add, Serial) only")
        for p, path in enumerate(getattr(la, "stacks", ())):
            names = _dense_names(path)
            for j, sub in enumerate(path):
                if isinstance(sub, Attention):
                    sites += [(row, p, j, sub, n) for n in ATTENTION_MATRICES]
                elif isinstance(sub, Dense):
                    sites.append((row, p, j, sub, names[j]))
                elif hasattr(sub, "stacks") or getattr(sub, "draws_weights", False):
                    raise ValueError(f"network: layer {row} path {p} sublayer {j} "
                                     f"({type(sub).__name__}) is nested or draws weights of a "
                                     "kind not covered by weight_gradient_norms")
    if not sites:
        raise ValueError("network: no weight matrix inside a composed layer (Dense or Attention "
                         "in a Residual/Add/Serial)")
    return sites


def _block_index(sites: list) -> np.ndarray:
    """1-based ordinal of each site among the sites of the same name (the block number of a
    transformer stack)."""
    seen: dict = {}
    out = []
    for s in sites:
        seen[s[4]] = seen.get(s[4], 0) + 1
        out.append(seen[s[4]])
    return np.array(out)


def _logsumexp(x: np.ndarray) -> float:
    x = np.asarray(x, float)
    top = float(np.max(x))
    if not math.isfinite(top):
        return top
    return top + math.log(float(np.sum(np.exp(x - top))))


@dataclass(frozen=True, eq=False)
class WeightGradientNorms(_Result):
    """Mean-field ``log E||dL/dW||_F^2`` of every weight matrix (:func:`weight_sites` order).

    ``layer``: the 1-based profile row of each matrix; ``where``: ``(path, sublayer)`` in it;
    ``matrix``: its name (``W_Q, W_K, W_V, W_O``, ``W_1, W_2``, ``W``); ``block``: its ordinal
    among the matrices of that name; ``log_norm2``; ``rel_se``: the relative standard error of
    the numerical expectation over the logits (0 where exact); ``output_grad_var``: ``s`` of the
    loss ``<v, t^L_0>``, ``v ~ N(0, s I)`` (every squared norm is proportional to ``s``)."""

    layer: np.ndarray
    where: tuple
    matrix: tuple
    block: np.ndarray
    log_norm2: np.ndarray
    rel_se: np.ndarray
    output_grad_var: float = 1.0

    def of(self, name: str) -> np.ndarray:
        """``log_norm2`` of the matrices called ``name``, in block order."""
        idx = [i for i, m in enumerate(self.matrix) if m == name]
        if not idx:
            raise ValueError(f"name: no matrix {name!r}; present: {sorted(set(self.matrix))}")
        return self.log_norm2[idx]

    def log_ratio(self, name: str) -> float:
        """``log(E||dL/dW_last||^2 / E||dL/dW_first||^2)`` over the matrices called ``name``
        (Xiong et al. 2020, Fig. 3 and Thm. 1)."""
        v = self.of(name)
        return float(v[-1] - v[0])

    @property
    def total_log_norm2(self) -> float:
        """``log E||g||^2``, ``g`` all the weight gradients together (the sum of the terms)."""
        return _logsumexp(self.log_norm2)

    def rescaled(self, output_grad_var: float) -> "WeightGradientNorms":
        """The same for a loss whose output gradient has per-unit variance ``output_grad_var``
        (``E||dL/dW||^2`` is linear in it: ``dL/dW`` is linear in ``v``)."""
        s = positive_scalar("output_grad_var", output_grad_var)
        shift = math.log(s) - math.log(self.output_grad_var)
        return WeightGradientNorms(self.layer, self.where, self.matrix, self.block,
                                   self.log_norm2 + shift, self.rel_se, s)


def _first_row_records(profile, network) -> list:
    """The records of row 1's sublayers with their gradient covariances: ``predict`` never runs
    row 1's backward map, so its kernel step is run again here on the recorded input kernel and
    its backward map applied to ``grad_share[0]`` (the trace-1 covariance at scale ``g^1``)."""
    inner = [r for r in profile.meta["inner"] if r["layer"] == 1]
    if not inner:
        return []
    r0 = inner[0]
    k = len(r0["input_log_q"])
    kernel = Kernel(np.asarray(r0["input_log_q"], float), np.asarray(r0["input_corr"], float),
                    np.zeros(k) if network.needs_mean else None)
    cache: dict = {"means": network.needs_mean, "layer": 1}
    step = network.layers[0].kernel_step(kernel, int(network.widths[0]), cache)
    P = np.asarray(profile.grad_share[0], float)
    f1, P = step.to_tracked(P)
    if f1 != 0.0:
        raise ValueError("network: layer 1 has a non-identity map to its tracked variable")
    step.back(P)
    return cache["inner"]


def weight_gradient_norms(profile, network, output_grad_var: float = 1.0) -> WeightGradientNorms:
    """Mean-field ``E||dL/dW||_F^2`` of every weight matrix of ``network`` (:func:`weight_sites`:
    a :func:`signalprop.transformer` stack) from its kernel-path ``profile`` (``predict``), for
    the loss ``<v, t^L_0>`` on token 0 with ``v ~ N(0, output_grad_var I)`` (CONVENTIONS.md: 1).
    Dense: :func:`dense_weight_gradient`; Attention: :func:`attention_weight_norms` on the
    recorded input kernel and output gradient covariance (the same logit draws as ``predict``)."""
    s = positive_scalar("output_grad_var", output_grad_var)
    if not isinstance(profile, Profile):
        raise TypeError(f"profile must be a Profile of predict, got {short_repr(profile)}")
    if not isinstance(network, Network):
        raise TypeError(f"network must be a Network, got {short_repr(network)}")
    inner = profile.meta.get("inner") if isinstance(profile.meta, dict) else None
    if not inner:
        raise ValueError("profile: no record of composed layers (meta['inner']); use a theory "
                         "profile of predict on the kernel path (a network with coupled inputs)")
    if len(profile.log_g) != network.depth:
        raise ValueError(f"profile has {len(profile.log_g)} rows, network {network.depth} layers: "
                         "give the profile of this network")
    sites = weight_sites(network)
    recs = {(r["layer"], tuple(r["where"])): r for r in inner if r["layer"] != 1}
    recs.update({(r["layer"], tuple(r["where"])): r for r in _first_row_records(profile, network)})
    logs, rels, done = [], [], {}
    for row, p, j, sub, name in sites:
        rec = recs.get((row, (p, j)))
        if rec is None or "pi" not in rec:
            raise ValueError(f"profile: no gradient record of layer {row} path {p} sublayer {j}")
        if isinstance(sub, Dense):
            logs.append(dense_weight_gradient(profile, rec))
            rels.append(0.0)
            continue
        if (row, p, j) not in done:
            lq = np.asarray(rec["input_log_q"], float)
            sx = np.exp(0.5 * lq)
            K = np.asarray(rec["input_corr"], float) * np.outer(sx, sx)
            log_pi = float(profile.log_g[row - 1]) + float(rec["log_pi"])
            done[(row, p, j)] = attention_weight_norms(sub, K, np.asarray(rec["pi"], float),
                                                       log_pi)
        lg, rel = done[(row, p, j)]
        i = ATTENTION_MATRICES.index(name)
        logs.append(float(lg[i]))
        rels.append(float(rel[i]))
    return WeightGradientNorms(np.array([x[0] for x in sites]),
                               tuple((x[1], x[2]) for x in sites), tuple(x[4] for x in sites),
                               _block_index(sites), np.array(logs) + math.log(s),
                               np.array(rels), s)


def _gram(X: np.ndarray) -> np.ndarray:
    """``<x_a, x_b>`` per sample: (S, T, n) -> (S, T, T)."""
    return X @ np.swapaxes(X, 1, 2)


def _attention_grads(rule: AttentionRule, x: np.ndarray, gt: np.ndarray, ctx,
                     matrices: bool = False) -> dict:
    """Per sample, ``||dL/dW||_F^2`` of ``W_Q, W_K, W_V, W_O`` of one sampled Attention layer from
    its input ``x`` (S, T, N), the gradient ``gt`` at its output and its context (the backward
    pass of :class:`AttentionRule`): ``dW_O = O^T dY``, ``dW_V = X^T dV``, ``dW_Q = X^T dQ``,
    ``dW_K = X^T dK`` (heads side by side), ``||X^T D||_F^2 = sum_ab <x_a, x_b> <D_a, D_b>``.
    ``matrices``: also the gradients and the weights themselves (for checks)."""
    Wq, Wk, Wv, Wo, Q, K, V, A = ctx
    O = rule._merge(A @ V)
    dO = rule._heads(gt @ np.swapaxes(Wo, 1, 2))
    dA = dO @ np.swapaxes(V, 2, 3)
    dV = rule._merge(np.swapaxes(A, 2, 3) @ dO)
    dS = A * (dA - np.sum(A * dA, axis=-1, keepdims=True)) * gt.dtype.type(rule.scale)
    dQ = rule._merge(dS @ K)
    dK = rule._merge(np.swapaxes(dS, 2, 3) @ Q)
    Gx = _gram(x)
    out = {"W_Q": np.einsum("sab,sab->s", Gx, _gram(dQ)),
           "W_K": np.einsum("sab,sab->s", Gx, _gram(dK)),
           "W_V": np.einsum("sab,sab->s", Gx, _gram(dV)),
           "W_O": np.einsum("sab,sab->s", _gram(O), _gram(gt))}
    if matrices:
        T = np.swapaxes
        out["matrices"] = {"W_Q": (T(x, 1, 2) @ dQ, Wq), "W_K": (T(x, 1, 2) @ dK, Wk),
                           "W_V": (T(x, 1, 2) @ dV, Wv), "W_O": (T(O, 1, 2) @ gt, Wo)}
    return out


def _dense_weights(ctx) -> np.ndarray:
    """The weight matrix ``W = c M`` (S, N_out, N_in) of a dense-engine Dense context."""
    M, c = ctx[0]
    return np.asarray(M) * c


def default_tokens(width: int, tokens: int) -> np.ndarray:
    """T orthogonal tokens of second moment 1 and mean zero over their units (rows of
    ``sqrt(N) U``, ``U`` orthonormal and orthogonal to ``1``; width >= T + 1), the Monte Carlo
    counterpart of ``predict``'s default inputs (``q0 = 1``, ``c0 = 0``): seeded QR of a
    Gaussian, fixed."""
    width, T = check_int("width", width, 2), check_int("tokens", tokens, 1)
    if width < T + 1:
        raise ValueError(f"width must be >= tokens + 1 = {T + 1} for orthogonal mean-zero tokens, "
                         f"got {width}")
    rng = np.random.default_rng(np.random.SeedSequence([0x70C, width, T]))
    B = np.concatenate([np.ones((width, 1)), rng.standard_normal((width, T))], axis=1)
    U = np.linalg.qr(B)[0][:, 1:]
    return math.sqrt(width) * U.T


def _sample_stack(network, x0: np.ndarray, fwd: Streams, bwd: Streams, output_grad_var: float,
                  sites: list, matrices: bool = False):
    """One batch of sample networks (dense engine): forward through every layer (the sublayers of
    composed layers one by one, drawing from ``fwd`` in the order of their samplers), the loss
    ``L = <v, t^L_0>`` with ``v ~ N(0, s I)`` from ``bwd``, and back, recording ``||dL/dW||_F^2``
    of every site. Returns ``(norm2 (S, sites), loss (S,), matrices or None)``."""
    col = {(r, p, j, n): c for c, (r, p, j, _, n) in enumerate(sites)}
    widths = [int(w) for w in network.widths]
    S = len(fwd)
    x = np.repeat(x0[None], S, axis=0)
    rows = []
    for i, la in enumerate(network.layers):
        rule = sampler(la, widths[i], "dense")
        if isinstance(rule, AddRule):
            paths = []
            outs = []
            for rules in rule.paths:
                st, pc = x, []
                for r in rules:
                    t, y, ctx = r.forward(st, fwd)
                    pc.append((st, ctx))
                    st = y
                paths.append(pc)
                outs.append(st)
            live = [p for p, s in enumerate(rule.scales) if s != 0.0 or rule.paths[p]]
            x = sum(rule.scales[p] * outs[p] for p in live[::-1])
            rows.append((rule, paths, x))
        else:
            t, y, ctx = rule.forward(x, fwd)
            rows.append((rule, ctx, t))
            x = y
    v = bwd.normal((widths[-1],)) * math.sqrt(output_grad_var)
    t_last = rows[-1][2]
    loss = np.einsum("sn,sn->s", v, t_last[:, 0])
    gt = np.zeros_like(t_last)
    gt[:, 0] = v
    norm2 = np.zeros((S, len(sites)))
    mats = {} if matrices else None
    gx = gt
    for i in range(len(rows) - 1, -1, -1):
        rule, ctx, _ = rows[i]
        if i < len(rows) - 1:
            gt = rule.to_tracked(gx, ctx) if not isinstance(rule, AddRule) else gx
        if not isinstance(rule, AddRule):
            gx = rule.backward(gt, ctx, bwd)
            continue
        gx = None
        live = [p for p, s in enumerate(rule.scales) if s != 0.0 or rule.paths[p]]
        for p in live[::-1]:
            g = gt * rule.scales[p]
            for j in range(len(rule.paths[p]) - 1, -1, -1):
                r, (xin, c) = rule.paths[p][j], ctx[p][j]
                g = r.to_tracked(g, c)
                inner = r.rule if isinstance(r, RealScale) else r
                if isinstance(inner, AttentionRule):
                    got = _attention_grads(inner, xin, g, c, matrices)
                    for n in ATTENTION_MATRICES:
                        norm2[:, col[(i + 1, p, j, n)]] = got[n]
                    if matrices:
                        for n, m in got["matrices"].items():
                            mats[(i + 1, p, j, n)] = m
                elif isinstance(inner, DenseRule):
                    key = next(k for k in col if k[:3] == (i + 1, p, j))
                    norm2[:, col[key]] = np.einsum("sab,sab->s", _gram(g), _gram(xin))
                    if matrices:
                        mats[key] = (np.swapaxes(g, 1, 2) @ xin, _dense_weights(c))
                g = r.backward(g, c, bwd)
            gx = g if gx is None else gx + g
    return norm2, loss, mats


@dataclass(frozen=True, eq=False)
class WeightGradientSamples(_Result):
    """Monte Carlo ``||dL/dW||_F^2`` per sample network (rows) and weight matrix (columns, the
    :func:`weight_sites` order; ``layer``, ``where``, ``matrix``, ``block`` as in
    :class:`WeightGradientNorms`), for the loss ``<v, t^L_0>``, ``v ~ N(0, output_grad_var I)``.
    Biases are not included (the stacks of :func:`signalprop.transformer` have none)."""

    layer: np.ndarray
    where: tuple
    matrix: tuple
    block: np.ndarray
    norm2: np.ndarray
    output_grad_var: float = 1.0

    def _cols(self, name: str) -> list:
        idx = [i for i, m in enumerate(self.matrix) if m == name]
        if not idx:
            raise ValueError(f"name: no matrix {name!r}; present: {sorted(set(self.matrix))}")
        return idx

    def log_mean(self, name: str) -> tuple:
        """``(log of the sample mean of ||dL/dW||^2, its delta-method standard error)`` per
        matrix called ``name``, in block order."""
        w = self.norm2[:, self._cols(name)]
        m = w.mean(axis=0)
        pos = m > 0                      # a matrix with zero gradient (W_K when W_Q = 0): -inf, 0
        safe = np.where(pos, m, 1.0)
        return (np.where(pos, np.log(safe), -np.inf),
                np.where(pos, w.std(axis=0, ddof=1) / math.sqrt(len(w)) / safe, 0.0))

    def log_ratio(self, name: str) -> tuple:
        """``(log(mean last / mean first), delta-method standard error)`` over ``name``."""
        c = self._cols(name)
        a, b = self.norm2[:, c[0]], self.norm2[:, c[-1]]
        za, zb = a / a.mean(), b / b.mean()
        return (float(np.log(b.mean() / a.mean())),
                float(np.std(zb - za, ddof=1) / math.sqrt(len(a))))

    @property
    def total(self) -> np.ndarray:
        """``||g||^2`` per sample, ``g`` all the weight gradients together."""
        return self.norm2.sum(axis=1)

    def total_log_mean(self) -> tuple:
        """``(log mean ||g||^2, its standard error)``."""
        t = self.total
        return float(np.log(t.mean())), float(t.std(ddof=1) / math.sqrt(len(t)) / t.mean())

    def p_clip(self, clip_value: float = 1.0) -> tuple:
        """``(P(||g|| > c), its binomial standard error sqrt(p (1 - p) / n))``."""
        c = positive_scalar("clip_value", clip_value)
        p = float(np.mean(self.total > c * c))
        return p, math.sqrt(p * (1.0 - p) / len(self.total))

    def rescaled(self, output_grad_var: float) -> "WeightGradientSamples":
        """The same samples for a loss of output-gradient variance ``output_grad_var`` (exact:
        every gradient is linear in ``v``)."""
        s = positive_scalar("output_grad_var", output_grad_var)
        return WeightGradientSamples(self.layer, self.where, self.matrix, self.block,
                                     self.norm2 * (s / self.output_grad_var), s)


def weight_gradient_norms_mc(network, samples: int, seed: int = 0, inputs=None,
                             output_grad_var: float = 1.0, batch: int = 4) -> WeightGradientSamples:
    """Monte Carlo of :func:`weight_gradient_norms`: ``samples`` sample networks (dense engine,
    weights drawn in full, sample ``i`` from ``SeedSequence([seed, i, 0])`` forward and
    ``[seed, i, 1]`` for the loss vector), the T tokens ``inputs`` (T x N; default
    :func:`default_tokens`), the backward pass by hand through every sublayer
    (:func:`_attention_grads` for attention, ``sum_ab <delta_a, delta_b> <x_a, x_b>`` for Dense).
    ``batch`` samples are held at once; the memory they need is checked first."""
    samples = check_int("samples", samples, 2, MAX_SAMPLES)
    seed = check_int("seed", seed, 0)
    batch = check_int("batch", batch, 1, MAX_SAMPLES)
    s = positive_scalar("output_grad_var", output_grad_var)
    sites = weight_sites(network)
    T, N0 = network.coupled_inputs or 1, int(network.widths[0])
    if inputs is None:
        x0 = default_tokens(N0, T)
    else:
        try:
            x0 = np.asarray(inputs, dtype=float)
        except (TypeError, ValueError):
            raise TypeError(f"inputs must be an array of shape (tokens, width) = ({T}, {N0}), "
                            f"got {short_repr(inputs)}") from None
    if x0.shape != (T, N0) or not np.all(np.isfinite(x0)):
        raise ValueError(f"inputs must be a finite array of shape (tokens, width) = ({T}, {N0}), "
                         f"got shape {x0.shape}")
    widths = [int(w) for w in network.widths]
    need = sum(sampler(la, n, "dense").ctx_nbytes(T, 8) + 8 * T * n
               for la, n in zip(network.layers, widths))
    check_memory(f"weight_gradient_norms_mc ({min(batch, samples)} samples at once)",
                 float(min(batch, samples)) * need)
    out = np.empty((samples, len(sites)))
    for start in range(0, samples, batch):
        idx = range(start, min(samples, start + batch))
        fwd = Streams([np.random.default_rng(np.random.SeedSequence([seed, i, 0])) for i in idx])
        bwd = Streams([np.random.default_rng(np.random.SeedSequence([seed, i, 1])) for i in idx])
        out[start:start + len(idx)] = _sample_stack(network, x0, fwd, bwd, s, sites)[0]
    return WeightGradientSamples(np.array([x[0] for x in sites]),
                                 tuple((x[1], x[2]) for x in sites), tuple(x[4] for x in sites),
                                 _block_index(sites), out, s)
