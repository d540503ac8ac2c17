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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
import numpy as np

from .._validate import check_choice, check_int, nonnegative_scalar, positive_scalar, short_repr
from ..activations import activation as _activation
from ..kernel import Kernel
from ..network import MAX_WIDTH, KernelStep
from ..sampling import Streams, register
from .dense import Dense

__all__ = ["Attention", "AttentionRule", "LOGIT_SCALES", "feed_forward", "deepnet_constants",
           "attention_weights", "FFNWeightGradients", "ffn_weight_gradients",
           "dense_weight_gradient"]

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
