"""The mean-field state of k inputs: their kernel (per-unit second moments and correlations) and
means, and the k x k covariance of the gradients on the way back.

At infinite width every unit of a layer's vector ``x`` is an independent copy of one Gaussian (or
Gaussian-derived) variable, so k inputs ``x_1 .. x_k`` propagated through the same network are
described by the k x k matrix ``K_ab = E[x_{a,i} x_{b,i}]`` and the means ``m_a = E[x_{a,i}]``
(Neal 1996; Lee et al. 2018, "Deep neural networks as Gaussian processes", eq. 4; Poole et al.
2016 for k = 2). A :class:`Kernel` holds them in logs, so depth 10^5 neither overflows nor
underflows:

    log_q[a] = log K_aa,   corr[a, b] = K_ab / sqrt(K_aa K_bb),   mu[a] = m_a / sqrt(K_aa).

The profile fields are views of it: ``q^l`` is ``K_00`` of the tracked variable, ``c^l`` its
``corr[0, 1]``. k is 1 or 2 for the classic maps, the batch size B for batch normalisation, the
number of tokens T for attention.

Backward, the gradients ``delta_a = d loss / d t_a`` of the k inputs have the per-unit covariance
``Pi_ab = E[delta_{a,i} delta_{b,i}]``; the loss ``<v, t^L_0>`` on input 0 starts it at
``Pi^L = e_0 e_0^T``, and ``g^l = tr Pi^l`` (for layers that do not couple the inputs ``Pi`` stays
``g^l e_0 e_0^T``, so this is the classic ``g^l``; for batch-coupled layers it is the sum over the
batch of Yang et al. 2019). ``predict`` carries ``Pi = exp(log_scale) P`` with ``P`` of trace 1.
Notation: docs/notation.md; the kernel path of ``predict``: docs/theory/kernel-state.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ._validate import check_int

__all__ = ["Kernel"]


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=float)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Kernel:
    """The second moments, correlations and means of k inputs (module docstring).

    ``log_q``: shape (k,); ``corr``: (k, k), symmetric with unit diagonal; ``mu``: (k,) or None
    (None: no layer of the network reads means, so they are not carried). Immutable; equal by
    value (arrays compared exactly)."""

    log_q: np.ndarray
    corr: np.ndarray
    mu: Optional[np.ndarray] = None

    def __post_init__(self):
        lq = _frozen(np.atleast_1d(self.log_q))
        k = lq.size
        corr = _frozen(np.reshape(self.corr, (k, k)) if np.size(self.corr) == k * k else self.corr)
        if lq.ndim != 1 or corr.shape != (k, k):
            raise ValueError(f"a Kernel of k = {k} inputs needs log_q of shape (k,) and corr of "
                             f"shape (k, k), got {lq.shape} and {np.shape(self.corr)}")
        if np.isnan(lq).any() or np.isnan(corr).any():
            raise ValueError("a Kernel's log_q and corr must not be nan")
        object.__setattr__(self, "log_q", lq)
        object.__setattr__(self, "corr", corr)
        if self.mu is not None:
            mu = _frozen(np.broadcast_to(np.asarray(self.mu, float), (k,)))
            object.__setattr__(self, "mu", mu)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Kernel):
            return NotImplemented
        same_mu = (self.mu is None and other.mu is None) or (
            self.mu is not None and other.mu is not None and np.array_equal(self.mu, other.mu))
        return (np.array_equal(self.log_q, other.log_q) and np.array_equal(self.corr, other.corr)
                and same_mu)

    def __hash__(self) -> int:
        return hash((self.log_q.tobytes(), self.corr.tobytes(),
                     None if self.mu is None else self.mu.tobytes()))

    # --- constructors ---------------------------------------------------------------------

    @classmethod
    def uniform(cls, k: int, q: float = 1.0, c: float = 0.0, means: bool = False) -> "Kernel":
        """k inputs of equal second moment ``q`` and equal pairwise correlation ``c`` (mean zero
        over the units when ``means``; no means carried otherwise)."""
        k = check_int("k", k, 1)
        corr = np.full((k, k), float(c))
        np.fill_diagonal(corr, 1.0)
        return cls(np.full(k, math.log(q)), corr, np.zeros(k) if means else None)

    @classmethod
    def from_gram(cls, gram, means=None) -> "Kernel":
        """From the per-unit Gram matrix ``G_ab = <x_a, x_b> / N_0`` of k inputs (symmetric, positive
        diagonal, |G_ab| <= sqrt(G_aa G_bb)) and optionally their means over the units."""
        G = np.asarray(gram, float)
        if G.ndim == 0:
            G = G.reshape(1, 1)
        if G.ndim != 2 or G.shape[0] != G.shape[1] or not np.all(np.isfinite(G)):
            raise ValueError(f"inputs must be a finite symmetric k x k Gram matrix, got shape "
                             f"{G.shape}")
        if not np.allclose(G, G.T, rtol=1e-12, atol=0.0):
            raise ValueError("inputs must be a symmetric Gram matrix (G_ab = G_ba)")
        d = np.diag(G)
        if not np.all(d > 0):
            raise ValueError("inputs: every input needs a positive second moment (G_aa > 0)")
        s = np.sqrt(d)
        corr = G / np.outer(s, s)
        if np.any(np.abs(corr) > 1.0 + 1e-12):
            raise ValueError("inputs: |G_ab| must not exceed sqrt(G_aa G_bb) (Cauchy-Schwarz)")
        corr = np.clip(0.5 * (corr + corr.T), -1.0, 1.0)
        np.fill_diagonal(corr, 1.0)
        mu = None
        if means is not None:
            m = np.broadcast_to(np.asarray(means, float), d.shape)
            if np.any(m * m > d * (1.0 + 1e-12)):
                raise ValueError("means: the mean over the units cannot exceed the root mean "
                                 "square (m_a^2 <= G_aa)")
            mu = m / s
        return cls(np.log(d), corr, mu)

    # --- views ----------------------------------------------------------------------------

    @property
    def k(self) -> int:
        """The number of inputs."""
        return self.log_q.size

    def matrix(self, log_scale: float = 0.0) -> np.ndarray:
        """``K exp(-log_scale)`` (choose ``log_scale`` near ``max(log_q)`` far from 1)."""
        s = np.exp(0.5 * (self.log_q - log_scale))
        return self.corr * np.outer(s, s)

    def means(self, log_scale: float = 0.0) -> np.ndarray:
        """``m exp(-log_scale / 2)`` (zeros when no means are carried)."""
        if self.mu is None:
            return np.zeros(self.k)
        return self.mu * np.exp(0.5 * (self.log_q - log_scale))

    def pair(self) -> tuple:
        """The two-input state ``(log q, c, mu)`` of the fast path (:class:`signalprop.network.Step`):
        input 0's log q, ``corr[0, 1]`` (None for k = 1) and input 0's mu."""
        c = float(self.corr[0, 1]) if self.k > 1 else None
        return (float(self.log_q[0]), c, None if self.mu is None else float(self.mu[0]))

    @classmethod
    def from_pair(cls, state: tuple, k: int) -> "Kernel":
        """The k-input kernel (k = 1 or 2, equal norms and means) of a fast-path state."""
        lq, c, mu = state
        corr = np.array([[1.0]]) if k == 1 else np.array([[1.0, c], [c, 1.0]])
        return cls(np.full(k, lq), corr, None if mu is None else np.full(k, mu))

    # --- maps shared by layer kinds -------------------------------------------------------

    def affine(self, sigma_w2: float, sigma_b2: float) -> "Kernel":
        """The kernel of ``h = W x + b`` with ``W_ij ~ (0, sigma_w^2 / N)``, ``b_i ~ N(0, sigma_b^2)``:
        ``K_h = sigma_w^2 K_x + sigma_b^2 1 1^T`` and mean zero over the units (Poole et al. 2016,
        eq. 3; Lee et al. 2018, eq. 4)."""
        lsw2 = math.log(sigma_w2)
        lq = lsw2 + self.log_q
        if sigma_b2 > 0:
            lq = np.logaddexp(lq, math.log(sigma_b2))
        t = np.exp(0.5 * (lsw2 + self.log_q - lq))            # sqrt of the weights' share
        corr = self.corr * np.outer(t, t)
        if sigma_b2 > 0:
            corr = corr + sigma_b2 * np.exp(-0.5 * (lq[:, None] + lq[None, :]))
        corr = np.clip(corr, -1.0, 1.0)
        np.fill_diagonal(corr, 1.0)
        return Kernel(lq, corr, None if self.mu is None else np.zeros(self.k))


def weighted_sum(kernels: list, scales: list) -> Kernel:
    """The kernel of ``sum_i s_i y_i`` for vectors ``y_i`` (kernels ``K_i``, means ``m_i``) of the
    same k inputs whose units are independent across ``i`` given the means (at most one of them
    is not the output of fresh weights: a residual stream and its branches):
    ``K = sum_i s_i^2 K_i + sum_{i != j} s_i s_j m_i m_j^T``, ``m = sum_i s_i m_i`` (Yang &
    Schoenholz 2017, sec. 3, for k inputs and any number of paths). ``s_i >= 0``, not all 0;
    means are carried when every ``y_i`` carries them."""
    ls = [2.0 * math.log(s) if s > 0 else -math.inf for s in scales]
    top = max(l + float(np.max(K.log_q)) for l, K in zip(ls, kernels))
    k = kernels[0].k
    M = np.zeros((k, k))
    means = []
    for l, K in zip(ls, kernels):
        if l > -math.inf:
            M += K.matrix(top - l)
            means.append(K.means(top - l))
    m = np.zeros(k)
    for i, mi in enumerate(means):
        m += mi
        for mj in means[i + 1:]:
            M += np.outer(mi, mj) + np.outer(mj, mi)
    d = np.diag(M).copy()
    s = np.sqrt(d)
    corr = np.clip(M / np.outer(s, s), -1.0, 1.0)
    np.fill_diagonal(corr, 1.0)
    mu = m / s if all(K.mu is not None for K in kernels) else None
    return Kernel(top + np.log(d), corr, mu)


# ---------------------------------------------------------------------------------------------
# backward maps of the gradient covariance (signalprop.network.GradientMap)


def identity(P: np.ndarray) -> tuple:
    """``Pi -> Pi``."""
    return 0.0, P


def scale(log_factor: float):
    """``Pi -> exp(log_factor) Pi`` (a dense layer's ``W^T``: sigma_w^2 N_l / N_{l-1})."""
    return lambda P: (log_factor, P)


def congruence(P: np.ndarray, log_w: np.ndarray, R: Optional[np.ndarray] = None) -> tuple:
    """``Pi_ab -> Pi_ab sqrt(w_a w_b) R_ab`` (``R = 1`` when None) as ``(log_factor, P')``, with the
    largest ``log w`` taken out as the factor: a per-input rescaling (normalisation layers) or a
    Hadamard product with ``E[phi'(u_a) phi'(u_b)]`` (fully connected layers)."""
    top = float(np.max(log_w))
    if not math.isfinite(top):
        return top, np.zeros_like(P)
    s = np.exp(0.5 * (np.asarray(log_w, float) - top))
    out = P * np.outer(s, s)
    if R is not None:
        out = out * R
    return top, out


def is_diagonal(P: np.ndarray) -> bool:
    """Whether ``P`` has no off-diagonal entries (the loss on one input, through layers that do
    not couple the inputs)."""
    return not np.any(P - np.diag(np.diag(P)))
