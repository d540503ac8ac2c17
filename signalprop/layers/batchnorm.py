"""The batch-normalised layer kind: ``h^l = W^l x^{l-1}``, ``x^l = phi(BN(h^l))`` over a batch of B
inputs (Yang et al. 2019's network), in the network description, in ``predict`` and ``simulate``.

Its theory is that of :mod:`signalprop.batchnorm`; the tracked variable is the pre-normalisation
``h^l`` (as for ``Dense``), ``q^l``, ``c^l`` its second moment and the correlation of two batch
members, and ``g^l`` the *sum over the batch* of ``E||d loss/d h^l_b||^2 / N_l`` for the loss
``<v, h^L_a>`` on one batch member ``a``: batch normalisation couples the batch members, so the
gradient reaches all of them.

Engines: ``dense`` (:class:`BatchNormRule`, the full weight matrix) and ``matrix-free``
(:class:`BatchNormMatrixFree`: the weight matrix conditioned on its action on the span of the B
inputs, O(N B^2) per layer and sample, exactly the dense engine's joint law of all
``(h^l, delta^l)``; gaussian and orthogonal weights; derivation:
docs/theory/matrix-free-sampling.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._validate import check_choice, check_int, positive_scalar, short_repr
from ..activations import Activation, activation
from .. import kernel as kernel_maths
from ..batchnorm import bn_kernel, bn_orbit_map, orbit_basis
from ..kernel import Kernel
from ..network import MAX_WIDTH, WEIGHTS, KernelStep, Network
from ..sampling import Streams, _finite_values, _scaled_api, register
from .dense import Dense, DenseSampler

__all__ = ["BatchNormDense"]


@dataclass(frozen=True)
class BatchNormDense:
    """``h = W x`` (no bias: batch normalisation removes it), then per unit batch normalisation
    over the batch of ``batch_size`` inputs (gamma = 1, beta = 0, eps = 0) and ``phi``."""

    width: int
    activation: Activation
    sigma_w2: float
    batch_size: int
    weights: str = "gaussian"

    def __post_init__(self):
        object.__setattr__(self, "width", check_int("width", self.width, 1, MAX_WIDTH))
        if not isinstance(self.activation, Activation):
            object.__setattr__(self, "activation", activation(self.activation))
        object.__setattr__(self, "sigma_w2", positive_scalar("sigma_w2", self.sigma_w2))
        B = self.batch_size
        if isinstance(B, bool) or not isinstance(B, (int, np.integer)) or B < 4:
            raise ValueError(f"batch_size must be an integer >= 4 (E[1/r^2] of the normalising "
                             f"norm is infinite for B <= 3), got {short_repr(B)}")
        object.__setattr__(self, "batch_size", int(B))
        check_choice("weights", self.weights, WEIGHTS)

    needs_mean = False
    sigma_b2 = 0.0

    @property
    def coupled_inputs(self) -> int:
        """The batch of B inputs it normalises over (:attr:`signalprop.network.Network.coupled_inputs`)."""
        return self.batch_size

    def check_input(self, n_in: int) -> None:
        """Any input width."""

    def with_width(self, width: int) -> "BatchNormDense":
        return BatchNormDense(width, self.activation, self.sigma_w2, self.batch_size, self.weights)

    def same_rule(self, other) -> bool:
        return other == self

    def kernel_step(self, kernel: Kernel, n_in: int, cache: dict) -> KernelStep:
        """The batch of B inputs (k = B, a batch-symmetric kernel: equal q, equal pairwise c):
        ``K_h = sigma_w^2 K_x``; after BN and phi the BSB1 kernel of :func:`bn_kernel` (Yang et al.
        2019; exact sphere marginals). Backward ``Pi_h = E[B / r^2] E_u[Q D Pi_x D Q]`` with
        ``E[B/r^2] = B / ((B - 3) q_perp)``, ``q_perp = q_h (1 - c_h)``, on the orbit space of the
        permutations fixing batch member 0 (:func:`signalprop.batchnorm.bn_gradient_operator`;
        docs/theory/batchnorm.md), then ``Pi_x^{l-1} = sigma_w^2 (N_l / N_{l-1}) Pi_h``."""
        B = self.batch_size
        if kernel.k != B:
            raise ValueError(f"a BatchNormDense layer with batch_size {B} needs the kernel of B = "
                             f"{B} inputs, got k = {kernel.k}")
        off = kernel.corr[~np.eye(B, dtype=bool)]
        if (np.ptp(kernel.log_q) > 1e-12 * max(1.0, float(np.max(np.abs(kernel.log_q))))
                or np.ptp(off) > 1e-12):
            raise ValueError("a BatchNormDense layer needs a batch-symmetric input kernel (equal "
                             "second moments, equal pairwise correlations)")
        tracked = kernel.affine(self.sigma_w2, 0.0)
        bk = bn_kernel(self.activation, B, self.sigma_w2)
        corr = np.full((B, B), bk.cross_moment / bk.second_moment)
        np.fill_diagonal(corr, 1.0)
        mu = None if kernel.mu is None else np.full(B, bk.mean / math.sqrt(bk.second_moment))
        out = Kernel(np.full(B, math.log(bk.second_moment)), corr, mu)
        c_h = float(tracked.corr[0, 1])
        log_scale = math.log(B / (B - 3)) - float(tracked.log_q[0]) - math.log1p(-c_h)
        from4 = bn_orbit_map(self.activation, B)
        basis = orbit_basis(B)

        def to_tracked(P: np.ndarray) -> tuple:
            v2 = from4 @ _orbit_coordinates(P)
            return log_scale, v2[0] * basis["G"] + v2[1] * basis["ww"]

        back = kernel_maths.scale(math.log(self.sigma_w2) + math.log(self.width / n_in))
        return KernelStep(tracked, out, to_tracked, back)


def _orbit_coordinates(P: np.ndarray) -> np.ndarray:
    """Coordinates of a B x B matrix in the orbit basis (e_0 e_0^T, e_0 1^T + 1 e_0^T, I, 1 1^T)
    of the permutations fixing batch member 0 (:func:`signalprop.batchnorm.orbit_basis`); a
    ValueError when ``P`` is not in that span (a gradient covariance that is not symmetric under
    permutations of the other batch members)."""
    c11 = P[1, 2]
    cI = P[1, 1] - c11
    ca1 = P[0, 1] - c11
    caa = P[0, 0] - 2.0 * ca1 - cI - c11
    B = P.shape[0]
    e = np.zeros(B)
    e[0] = 1.0
    one = np.ones(B)
    rebuilt = (caa * np.outer(e, e) + ca1 * (np.outer(e, one) + np.outer(one, e)) + cI * np.eye(B)
               + c11 * np.outer(one, one))
    if np.max(np.abs(rebuilt - P)) > 1e-12 * max(1e-300, float(np.max(np.abs(P)))):
        raise ValueError("batch normalisation's backward map needs a gradient covariance symmetric "
                         "under permutations of the batch members other than the one the loss "
                         "reads (the loss <v, t^L_0> of predict)")
    return np.array([caa, ca1, cI, c11])


@_scaled_api
class BatchNormRule:
    """Monte Carlo of a :class:`BatchNormDense` layer (dense engine): the linear sampler, then per
    unit ``y = sqrt(B) G h / ||G h||`` over the batch and ``phi(y)``. The gradient w.r.t. ``h`` is
    ``J^T (phi'(y) * gy)`` with the symmetric per-unit Jacobian ``J = (sqrt(B)/r)(G - u u^T)``.

    Scaled form (:mod:`signalprop.sampling`): ``h = W x`` has the exponent ``e`` of its input;
    ``y`` does not depend on the scale of ``h`` (exactly, for powers of two), so the output has
    exponent 0, and the real ``r`` is ``2^e`` times the computed one: ``to_tracked`` returns the
    shift ``-e``. ``ctx = (linear ctx, u, r, y, e)``."""

    couples_inputs = True
    engine = "dense"

    def __init__(self, layer: BatchNormDense, n_in: int):
        self.linear = self._linear(layer, n_in)
        self.act, self.B = layer.activation, layer.batch_size
        self.n_in, self.n_out = n_in, layer.width

    @staticmethod
    def _linear(layer: BatchNormDense, n_in: int):
        return DenseSampler(Dense(layer.width, "linear", layer.sigma_w2, 0.0, layer.weights), n_in)

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        return self.linear.ctx_nbytes(k, itemsize) + 3 * k * self.n_out * itemsize

    def forward_scaled(self, x: np.ndarray, e, rng: Streams):
        if x.shape[1] != self.B:
            raise ValueError(f"a BatchNormDense layer with batch_size {self.B} got a batch of "
                             f"{x.shape[1]} inputs")
        h, lin = self.linear.forward(x, rng)
        hc = h - h.mean(axis=1, keepdims=True)
        r = np.sqrt(np.sum(hc * hc, axis=1, keepdims=True))
        u = hc / r
        y = u * x.dtype.type(math.sqrt(self.B))
        out = np.asarray(self.act.phi(y), dtype=x.dtype)
        _finite_values(self.act, "phi", y, out)
        return h, e, out, None, (lin, u, r, y, e)

    def backward_scaled(self, gt: np.ndarray, ctx, rng: Streams):
        return self.linear.backward(gt, ctx[0], rng), None

    def to_tracked_scaled(self, gy: np.ndarray, ctx):
        _, u, r, y, e = ctx
        dphi = np.asarray(self.act.dphi(y), dtype=gy.dtype)
        _finite_values(self.act, "phi'", y, dphi)
        d = dphi * gy
        out = d - d.mean(axis=1, keepdims=True) - u * np.sum(u * d, axis=1, keepdims=True)
        return out * (gy.dtype.type(math.sqrt(self.B)) / r), (None if e is None else -e)


register(BatchNormDense, "dense")(BatchNormRule)


# ---------------------------------------------------------------------------------------------
# matrix-free engine: a weight matrix acting on a batch of B inputs
#
# Batched LAPACK / BLAS calls (np.linalg.qr, np.linalg.eigh, np.matmul on stacks) work on one
# sample's matrices at a time, so every sample gets the same numbers whatever the chunk size.


def _T(a: np.ndarray) -> np.ndarray:
    """Transpose of the last two axes (a view)."""
    return a.swapaxes(-1, -2)


def _input_frame(x: np.ndarray):
    """``U`` (S, n, r) with orthonormal columns and ``R`` (S, r, k) with ``x^T = U R`` per sample
    (Householder QR of the (n, k) input matrix; ``r = min(n, k)``). For rank-deficient inputs
    some columns of ``U`` are directions the inputs do not use: still orthonormal and a function
    of the inputs alone, which is all the constructions below need."""
    U, R = np.linalg.qr(_T(x))
    return U, R


def _haar_frame(g: np.ndarray) -> np.ndarray:
    """A uniformly distributed m-frame from ``g`` (S, m, p), whose rows are i.i.d. isotropic
    Gaussian vectors of a subspace: the Q factor (S, p, m) of ``g^T`` with the signs of
    ``diag(R)`` moved into ``Q`` (the Gram-Schmidt frame; Mezzadri 2007), which commutes with
    rotations of the subspace and is therefore uniform on its Stiefel manifold."""
    Q, R = np.linalg.qr(_T(g))
    d = np.sign(np.diagonal(R, axis1=1, axis2=2))
    d[d == 0] = 1
    Q *= d[:, None, :]
    return Q


def _gram_root(M: np.ndarray, m: int) -> np.ndarray:
    """``C`` (S, m, kd) with ``C^T C = M`` for positive semi-definite ``M`` (S, kd, kd) of rank
    <= m: the top m eigenpairs, ``C = diag(sqrt(lam)) Q^T`` (negative rounding clipped)."""
    lam, Q = np.linalg.eigh(M)
    lam, Q = lam[:, -m:], Q[:, :, -m:]
    return np.sqrt(np.clip(lam, 0, None))[:, :, None] * _T(Q)


class BatchMatrixFreeGaussian:
    """Exact matrix-free sampling of a Gaussian weight matrix acting on a batch of k inputs (the
    linear part ``h = W x`` of a :class:`BatchNormDense` layer), with gradients of all k batch
    members carried backward (shape (S, kd, N_l)).

    **Construction.** ``W = c Z``, ``c = sigma_w / sqrt(N_{l-1})``, ``Z`` (``N_l x n``,
    ``n = N_{l-1}``) with i.i.d. N(0, 1) entries. Per sample, ``X`` (``n x k``) holds the k inputs
    as columns; its QR decomposition ``X = U R`` gives ``U`` (``n x r``, orthonormal columns,
    ``r = min(n, k)``) and ``R`` (``r x k``). Forward: draw ``G`` (``N_l x r``, i.i.d. N(0, 1), from
    the forward stream) and set ``H = W X = c G R``. Backward, for the gradients
    ``D = [delta_1 .. delta_kd]`` (``N_l x kd``): with ``C`` any ``kd x kd`` matrix with
    ``C^T C = D^T D`` (a square root of the kd x kd Gram matrix of the gradients) and ``E``
    (``n x kd``, i.i.d. N(0, 1), from the backward stream),

        Z^T D = U (G^T D) + (I - U U^T) E C,      W^T D = c Z^T D.

    When ``X`` has full column rank, ``c U G^T D = (X^+)^T H^T D``: ``W P_X = H X^+`` is the part
    of ``W`` fixed by ``H`` and ``c (I - P_X) E C`` the fresh part (``validation/batchnorm_check.py``).
    Work per layer and sample: ``O(N k^2)`` flops and ``r N_l + kd n`` random numbers, against
    ``N_l n`` numbers and ``O(N^2 k)`` flops for dense weights. The joint law of all
    ``(h^l, delta^l)``, over all layers and batch members, is exactly the dense engine's (Gaussian
    conditioning: Bolthausen 2014; Bayati & Montanari 2011); ``R`` need not be invertible nor ``D``
    of full rank. :class:`~signalprop.layers.dense.MatrixFreeGaussian` is the case k <= 2, kd = 1.
    Derivation: docs/theory/matrix-free-sampling.md.

    Per-sample draw order: forward ``G`` (r rows of N_l numbers); backward ``E`` (kd rows of
    n numbers). Both counts depend on the shapes only.
    """

    engine = "matrix-free"

    def __init__(self, layer, n_in: int):
        self.n_in, self.n_out = int(n_in), int(layer.width)
        self.c = math.sqrt(layer.sigma_w2 / self.n_in)

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        return min(k, self.n_in) * (self.n_in + self.n_out) * itemsize

    def forward(self, x: np.ndarray, rng: Streams):
        dt = x.dtype
        U, R = _input_frame(x)
        G = rng.normal((U.shape[2], self.n_out), dt)              # rows: the columns of Z U
        h = np.matmul(_T(R), G)
        h *= dt.type(self.c)
        return h, (U, G)

    def backward(self, gt: np.ndarray, ctx, rng: Streams) -> np.ndarray:
        U, G = ctx
        flat = gt.ndim == 2
        if flat:
            gt = gt[:, None, :]
        dt = gt.dtype
        kd = gt.shape[1]
        a = np.matmul(gt, _T(G))                                  # (S, kd, r): (G^T D)^T
        C = _gram_root(np.matmul(gt, _T(gt)), kd)                 # C^T C = D^T D
        xi = np.matmul(_T(C), rng.normal((kd, self.n_in), dt))    # (E C)^T: rows N(0, D^T D)
        a -= np.matmul(xi, U)
        xi += np.matmul(a, _T(U))                                 # U G^T D + (I - U U^T) E C
        xi *= dt.type(self.c)
        return xi[:, 0] if flat else xi


class BatchMatrixFreeOrthogonal:
    """Exact matrix-free sampling of a (semi-)orthogonal weight matrix acting on a batch of k
    inputs (:class:`~signalprop.layers.dense.MatrixFreeOrthogonal` generalised from k <= 2 inputs and
    one gradient to k inputs and kd gradients).

    **Construction.** ``p = max(N_l, N_{l-1})``, ``O`` Haar on O(p), ``W = s E_l^T O E_{l-1}`` with
    the first-coordinates embeddings ``E`` and ``s = sigma_w sqrt(p / N_{l-1})``: the law of the
    dense engine's QR construction (see MatrixFreeOrthogonal). Per sample, ``X = U R`` (QR of the
    ``N_{l-1} x k`` inputs, ``U`` embedded in R^p, ``r = min(N_{l-1}, k)`` columns). Forward:
    ``V`` = uniform r-frame of R^p (sign-corrected QR of an r-column standard Gaussian matrix,
    forward stream), ``H = s E_l^T V R``. Backward, for ``D = E_l [delta_1 .. delta_kd]``
    (``p x kd``, zero-padded): ``Cc = V^T D``, ``Wp = D - V Cc`` (the part in ``span(V)^perp``),
    ``m = min(kd, p - r)``, ``T`` (``m x kd``) with ``T^T T = Wp^T Wp`` (its rank is at most
    ``m``), ``F`` a uniform m-frame of ``span(U)^perp`` (sign-corrected QR of m standard Gaussian
    vectors of R^p projected on ``span(U)^perp``, backward stream):

        O^T D = U Cc + F T,         W^T D = s E_{l-1}^T O^T D.

    Work per layer and sample: O(p k^2) flops, ``r p + m p`` random numbers. The joint law of all
    ``(h^l, delta^l)`` is exactly the dense engine's (invariance of Haar measure; ``Q^T Wp`` is
    the unique invariant law on one orbit); rank-deficient inputs or gradients need no care.
    Derivation: docs/theory/matrix-free-sampling.md.
    """

    engine = "matrix-free"

    def __init__(self, layer, n_in: int):
        self.n_in, self.n_out = int(n_in), int(layer.width)
        self.p = max(self.n_in, self.n_out)
        self.s = math.sqrt(layer.sigma_w2 * self.p / self.n_in)

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        return min(k, self.n_in) * (self.n_in + self.p) * itemsize

    def forward(self, x: np.ndarray, rng: Streams):
        dt = x.dtype
        U, R = _input_frame(x)
        V = _haar_frame(rng.normal((U.shape[2], self.p), dt))    # (S, p, r)
        h = np.matmul(_T(R), _T(V[:, :self.n_out]))
        h *= dt.type(self.s)
        return h, (U, V)

    def backward(self, gt: np.ndarray, ctx, rng: Streams) -> np.ndarray:
        U, V = ctx
        flat = gt.ndim == 2
        if flat:
            gt = gt[:, None, :]
        dt = gt.dtype
        n, n_out, p = self.n_in, self.n_out, self.p
        kd, r = gt.shape[1], U.shape[2]
        top = V[:, :n_out]
        cc = np.matmul(gt, top)                                   # (S, kd, r): (V^T D)^T
        out = np.matmul(cc, _T(U))                                # U V^T D
        m = min(kd, p - r)
        if m > 0:
            w = gt - np.matmul(cc, _T(top))                       # (P_{V perp} D)^T, first N_l
            gram = np.matmul(w, _T(w))
            if p > n_out:
                wb = np.matmul(cc, _T(V[:, n_out:]))              # the other p - N_l coordinates
                gram += np.matmul(wb, _T(wb))
            T = _gram_root(gram, m)                               # (S, m, kd)
            g = rng.normal((m, p), dt)
            g[:, :, :n] -= np.matmul(np.matmul(g[:, :, :n], U), _T(U))
            F = _haar_frame(g)                                    # (S, p, m) in span(U)^perp
            out += np.matmul(_T(T), _T(F[:, :n]))
        out *= dt.type(self.s)
        return out[:, 0] if flat else out


class BatchNormMatrixFree(BatchNormRule):
    """A :class:`BatchNormDense` layer in the matrix-free engine: :class:`BatchNormRule` with the
    dense weight matrix replaced by :class:`BatchMatrixFreeGaussian` or
    :class:`BatchMatrixFreeOrthogonal` (the same joint law of all ``(h^l, delta^l)``; proofs in
    their docstrings). Uniform weights are not rotation invariant and are refused."""

    engine = "matrix-free"

    @staticmethod
    def _linear(layer: BatchNormDense, n_in: int):
        if layer.weights == "gaussian":
            return BatchMatrixFreeGaussian(layer, n_in)
        if layer.weights == "orthogonal":
            return BatchMatrixFreeOrthogonal(layer, n_in)
        raise ValueError(f"engine='matrix-free' samples BatchNormDense layers with gaussian or "
                         f"orthogonal weights, not {layer.weights!r} (the conditional law of W "
                         "given W X is not rotation invariant); use engine='dense'")


register(BatchNormDense, "matrix-free")(BatchNormMatrixFree)
