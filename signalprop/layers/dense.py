"""The fully connected layer kind: :class:`Dense` (``h = W x + b``, ``x = phi(h)``) and
:class:`Nonlinearity` (``x = phi(h)`` alone), with everything signalprop knows about them in one
place: the description, the mean-field step (:func:`dense_step`) and the Monte Carlo samplers
of both engines.

:class:`Dense` is the fully connected layer of ``docs/notation.md``; its tracked variable is the
pre-activation:

    h^l = W^l x^{l-1} + b^l,    x^l = phi_l(h^l),
    W^l_ij ~ N(0, sigma_w^2 / N_{l-1}) (gaussian; uniform with the same variance),
    W^l = sigma_w O, O Haar (semi-)orthogonal scaled so E[W_ij^2] = sigma_w^2 / N_{l-1} (orthogonal),
    b^l_i ~ N(0, sigma_b^2).

Samplers. A :class:`~signalprop.layers.dense.Dense` layer is a linear sampler (``h = W x + b``; ``forward(x)
-> (h, ctx)``, ``backward(delta) -> W^T delta``) followed by the activation (:class:`DenseRule`).
Two engines exist for its linear part.

**dense**: the weight matrix is drawn in full (CONVENTIONS.md, "Fully connected network"):
gaussian ``W_ij ~ N(0, sigma_w^2/N_{l-1})``; uniform ``W_ij ~ U(-a, a)`` with
``a = sqrt(3 sigma_w^2 / N_{l-1})`` (same variance); orthogonal ``W = s O`` with ``O`` Haar
(semi-)orthogonal from the QR decomposition of a Gaussian matrix with the signs of ``diag(R)``
moved into ``Q`` (Mezzadri 2007, "How to generate random matrices from the classical compact
groups", Notices AMS 54, section 5), ``s = sigma_w sqrt(max(N_l, N_{l-1}) / N_{l-1})`` so that
``E[W_ij^2] = sigma_w^2 / N_{l-1}``. Biases ``b_i ~ N(0, sigma_b^2)`` (not drawn when
``sigma_b^2 = 0``). O(N^2) random numbers per layer.

**matrix-free**: exact conditional sampling with O(N) random numbers and flops per layer, for
gaussian and orthogonal weights (:class:`MatrixFreeGaussian`, :class:`MatrixFreeOrthogonal`): the
joint law of all forward pre-activations and backward gradients is exactly that of the dense
engine. Construction and proof: docs/theory/matrix-free-sampling.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .. import tables
from .._validate import check_choice, check_int, nonnegative_scalar, positive_scalar, short_repr
from ..activations import Activation, activation
from .. import maps
from ..maps import LQ_HI, LQ_LO, RHO_Q_MAX, layer_moments, rho_fn, theta_interpolant
from .. import kernel as kernel_maths
from ..kernel import Kernel
from ..network import MAX_WIDTH, WEIGHTS, KernelStep, Network, Step, _act_label
from ..sampling import (ENGINES, LayerError, RealScale, Streams, _combine, _coords, _dot, _finite_values,
                        _frame, _is_zero, _neg, _scaled_api, _span, add_shifts, apply_activation,
                        ldexp_rows, register)

__all__ = ["Dense", "Nonlinearity", "dense_step", "phi_kernel_step", "DenseRule", "DenseSampler",
           "MatrixFreeGaussian", "MatrixFreeOrthogonal"]


@dataclass(frozen=True)
class Dense:
    """Fully connected layer ``l``: width ``N_l``, activation ``phi_l``, ``sigma_w^2``, ``sigma_b^2``
    and the weight distribution (``gaussian``, ``orthogonal`` or ``uniform``).

    ``share``: a name; every Dense layer of a network with the same name uses the same sampled
    ``W`` and ``b`` in each sample network (a recurrent cell unrolled in time, tied weights). They
    must agree on shape, variances and law (:class:`~signalprop.network.Network` checks). The
    dense engine draws a shared parameter from a stream of its own, derived from the sample and
    the name, so every use gets the same numbers whatever the order of evaluation; the
    matrix-free engine refuses sharing (its conditioning is per use). Mean-field theory treats
    every use as an independent draw (gradient independence, Schoenholz et al. 2017 sec. 4), so
    ``predict`` ignores ``share``; ``simulate`` measures what sharing changes at finite width.
    """

    width: int
    activation: Activation
    sigma_w2: float
    sigma_b2: float = 0.0
    weights: str = "gaussian"
    share: Optional[str] = None

    def __post_init__(self):
        object.__setattr__(self, "width", check_int("width", self.width, 1, MAX_WIDTH))
        if not isinstance(self.activation, Activation):
            object.__setattr__(self, "activation", activation(self.activation))
        object.__setattr__(self, "sigma_w2", positive_scalar("sigma_w2", self.sigma_w2))
        object.__setattr__(self, "sigma_b2", nonnegative_scalar("sigma_b2", self.sigma_b2))
        check_choice("weights", self.weights, WEIGHTS)
        if self.share is not None and not (isinstance(self.share, str) and self.share):
            raise TypeError(f"share must be None or a non-empty name (str), got "
                            f"{short_repr(self.share)}")

    needs_mean = False
    capabilities = frozenset({"free_probability", "finite_width", "sampled_jacobian",
                              "fixed_point"})

    def same_rule(self, other) -> bool:
        """True when both layers map kernels identically (used to skip converged runs)."""
        return (type(other) is Dense and other.activation == self.activation
                and other.sigma_w2 == self.sigma_w2 and other.sigma_b2 == self.sigma_b2)

    def check_input(self, n_in: int) -> None:
        """Any input width is fine for a fully connected layer."""

    def with_width(self, width: int) -> "Dense":
        return Dense(width, self.activation, self.sigma_w2, self.sigma_b2, self.weights, self.share)

    def shared_spec(self, n_in: int):
        """``(name, what must agree)`` for a shared layer, None otherwise (Network checks that all
        uses of a name agree)."""
        if self.share is None:
            return None
        return self.share, (n_in, self.width, self.sigma_w2, self.sigma_b2, self.weights)

    def mean_field(self, state: tuple, n_in: int, cache: dict) -> Step:
        """Poole et al. 2016 eqs. 3, 5; Schoenholz et al. 2017 eq. 14 (:func:`dense_step`)."""
        return dense_step(self, state, n_in, cache)

    def kernel_step(self, kernel: Kernel, n_in: int, cache: dict) -> KernelStep:
        """``K_h = sigma_w^2 K_x + sigma_b^2`` and ``K_x' = E[phi(u) phi(u)^T]``, ``u ~ N(0, K_h)``
        (Lee et al. 2018, eq. 4); backward ``Pi_h = Pi_x o E[phi'(u) phi'(u)^T]`` and
        ``Pi_x^{l-1} = sigma_w^2 (N_l / N_{l-1}) Pi_h`` (Schoenholz et al. 2017, eq. 14, for k
        inputs). :func:`phi_kernel_step`."""
        tracked = kernel.affine(self.sigma_w2, self.sigma_b2)
        return phi_kernel_step(self.activation, tracked,
                               math.log(self.sigma_w2) + math.log(self.width / n_in), cache)

    def c_only_rule(self, cache: dict, lq: float, dq: float):
        """rho(c) of the last step as a function of c alone, for predict's fill of a run where only
        c still moves (:func:`c_only_rho`), or None."""
        return c_only_rho(self, cache, lq, dq)

    def label(self) -> str:
        """A short description for :meth:`Network.__repr__`."""
        w = "" if self.weights == "gaussian" else f", {self.weights}"
        w += "" if self.share is None else f", share={self.share!r}"
        return (f"Dense({self.width}, {_act_label(self.activation)}, sigma_w2={self.sigma_w2:g}, "
                f"sigma_b2={self.sigma_b2:g}{w})")


@dataclass(frozen=True)
class Nonlinearity:
    """The activation alone, ``x^l = phi(x^{l-1})`` (no weights): with a linear :class:`Dense`
    layer before it, ``Dense(linear) + Nonlinearity`` is ``Dense``, and a normalisation layer can
    sit between the two (pre-activation placement). Like ``Dense``, its tracked variable is its
    input (the pre-activation); the mean-field theory treats that input as a centred Gaussian,
    which holds after a linear ``Dense`` layer and after a norm layer applied to one."""

    width: int
    activation: Activation
    _as_dense: Dense = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "width", check_int("width", self.width, 1, MAX_WIDTH))
        if not isinstance(self.activation, Activation):
            object.__setattr__(self, "activation", activation(self.activation))
        # the Dense layer (sigma_w^2 = 1, sigma_b^2 = 0) whose step this layer's is, built once
        object.__setattr__(self, "_as_dense", Dense(self.width, self.activation, 1.0, 0.0))

    needs_mean = False

    def same_rule(self, other) -> bool:
        return type(other) is Nonlinearity and other.activation == self.activation

    def check_input(self, n_in: int) -> None:
        if n_in != self.width:
            raise ValueError(f"Nonlinearity keeps the width: it has width {self.width} but its "
                             f"input has width {n_in}")

    def with_width(self, width: int) -> "Nonlinearity":
        return Nonlinearity(width, self.activation)

    def mean_field(self, state: tuple, n_in: int, cache: dict) -> Step:
        """The Dense step with sigma_w^2 = 1, sigma_b^2 = 0 and no weights: q^l = q_x, c^l = c_x."""
        mu = state[2]
        if mu is not None and abs(mu) > 1e-12:
            raise ValueError("Nonlinearity needs a centred input (mean zero over the units, e.g. "
                             f"after a linear Dense or a LayerNorm); its input has mean/rms {mu:.3g}")
        return dense_step(self._as_dense, state, n_in, cache)

    def kernel_step(self, kernel: Kernel, n_in: int, cache: dict) -> KernelStep:
        """:meth:`Dense.kernel_step` without the weights: the tracked kernel is the input's."""
        if kernel.mu is not None and np.any(np.abs(kernel.mu) > 1e-12):
            raise ValueError("Nonlinearity needs a centred input (mean zero over the units, e.g. "
                             f"after a linear Dense or a LayerNorm); its input has mean/rms "
                             f"{float(np.max(np.abs(kernel.mu))):.3g}")
        return phi_kernel_step(self.activation, kernel, 0.0, cache)

    def label(self) -> str:
        return f"Nonlinearity({self.width}, {_act_label(self.activation)})"


def dense_step(layer: Dense, state: tuple, n_in: int, cache: dict) -> Step:
    """Mean-field step of a :class:`~signalprop.layers.dense.Dense` layer (CONVENTIONS.md).

    q^l = sigma_w^2 q_x + sigma_b^2 (Poole et al. 2016, eq. 3),
    c^l = (sigma_w^2 q_x c_x + sigma_b^2) / q^l and c_x' = E[phi(u_1) phi(u_2)] / E[phi(u)^2]
    (eq. 5; Mehler's series where the activation has one), the tracked gradient factor
    E[phi'(h^l)^2] and the input factor (N_l / N_{l-1}) sigma_w^2 (Schoenholz et al. 2017, eq. 14).
    Closed forms in plain floats where the activation has them; a positively homogeneous map is
    evaluated at q = 1 and scaled outside [1e-280, 1e100].
    """
    log_x2, cx, mu = state
    act = layer.activation
    lsw2 = math.log(layer.sigma_w2)
    lq = lsw2 + log_x2
    if layer.sigma_b2 > 0:                         # log(sigma_w^2 q_x + sigma_b^2), no overflow
        lb = math.log(layer.sigma_b2)
        lq = max(lq, lb) + math.log1p(math.exp(-abs(lq - lb)))
    c = None
    if cx is not None:
        t = math.exp(lsw2 + log_x2 - lq)             # share of the weights in q^l
        c = min(1.0, max(-1.0, t * cx + (1.0 - t)))
    kernel = getattr(act, "scalar_kernel", None)
    inside = LQ_LO <= lq <= LQ_HI
    homogeneous = getattr(act, "homogeneous", False)
    rho = None
    cache["c_fast"] = None          # how rho(c) was evaluated, for predict's fill of c alone
    if kernel is not None and (inside or homogeneous):
        qk = math.exp(lq) if inside else 1.0
        v, d, r = kernel(qk, c)
        lv, ld = math.log(v) + (0.0 if inside else lq), math.log(d)
        if c is not None:
            rho = min(1.0, max(-1.0, r))
            cache["c_fast"] = (act, "any" if homogeneous else qk, "kernel", (kernel, qk))
    else:
        # Chebyshev tables in log q (signalprop.tables) where they exist, else the direct rules
        tm = tables.moments(act, lq)
        if tm is None and lq < tables.LQ_LO:
            tm = tables.small_moments(act, lq)
        lv, ld = tm if tm is not None else layer_moments(act, lq, cache)
        if c is not None:
            qe = math.exp(min(max(lq, LQ_LO), LQ_HI))
            ser = cache.get("rho_series")               # rho(c) = sum_k w_k c^k at this q
            if ser is None or ser[0] is not act or abs(ser[1] - qe) > 4e-16 * qe:
                ser = (act, qe, tables.mehler_series(act, qe))
                cache["rho_series"] = ser
            if ser[2] is not None and c != 1.0:
                rho = min(1.0, max(-1.0, tables.series_at(ser[2], c)))
                cache["c_fast"] = (act, qe, "series", ser[2])
            elif c == 1.0:
                rho = 1.0
            else:
                theta = theta_interpolant(act, qe, cache)
                r2 = None if theta is not None else tables.rho_2d(
                    act, lq, c, rho_fn(act), _long_at(act, lq, cache))
                if theta is not None:
                    rho = min(1.0, max(-1.0, tables.theta_at(theta, c)))
                    cache["c_fast"] = (act, min(qe, RHO_Q_MAX), "theta", theta)
                elif r2 is not None:
                    rho = min(1.0, max(-1.0, r2))
                    cache["c_fast"] = (act, qe, "rho2d", lq)
                else:
                    series = cache.get("mehler")
                    if series is None or series[0] is not act or abs(series[1] - qe) > 4e-16 * qe:
                        coef = act.mehler_coefficients(qe)
                        series = (act, qe, None if coef is None else coef * coef)
                        cache["mehler"] = series
                    bk = series[2]
                    if bk is None:
                        rho = float(maps.rho(act, qe, c))
                    else:                              # Mehler: rho = sum a_k^2 c^k / sum a_k^2
                        rho = min(1.0, max(-1.0, float(bk @ c ** np.arange(bk.size) / bk.sum())))
    mu_out = None
    if cache.get("means"):                         # E[phi(h)] / sqrt(E[phi(h)^2])
        mu_out = 0.0 if act.odd else tables.mean_ratio(act, lq)
        if mu_out is None:
            qm = 1.0 if (homogeneous and not inside) else math.exp(min(max(lq, LQ_LO), LQ_HI))
            m = float(act.mean(qm))
            mu_out = m / math.sqrt(float(act.second_moment(qm))) if m != 0 else 0.0
    log_back = lsw2 + math.log(layer.width / n_in)
    return Step(lq, c, (lv, rho, mu_out), ld, log_back)


_LONG_LAYERS = 2000     #: layers left in a run for predict to build a costly rho table panel
_LONG_DIRECT = 256      #: ... after this many direct evaluations on that route in the call
_SETTLED_DLQ = 1e-3     #: |change of log q| per layer below which q counts as settled


def _long_at(act: Activation, lq: float, cache: dict) -> bool:
    """Whether :func:`tables.rho_2d` may read a costly table here (tanh past its Mehler table:
    ~0.1-1 s a panel of width 1 in log q, some thousand direct evaluations at 0.2-2 ms each).
    A rent-or-buy rule: only after 256 layers of this ``predict`` call have reached the direct
    rule on this route (a transient, a chaotic c that converges or a q settling onto a point where
    the theta interpolant takes over never get there), with at least 2000 layers of the run left
    and log q moved by at most 1e-3 since the last such layer (a q settling geometrically stays
    in the panel). Once true it stays true in the call while log q stays in the same unit
    interval (the table's panels: width 1 from log q = 0), so the route does not change near the
    end of a run; the decision depends on the run alone, never on which panels an earlier call
    built, so the numbers do not depend on the process's history."""
    last = cache.get("rho2d_last")
    cache["rho2d_last"] = (act, lq)
    on = cache.get("rho2d_long")
    if on is not None and on[0] is act and on[1] == math.floor(lq):
        return True
    seen = cache.get("rho2d_direct")
    n = seen[1] + 1 if seen is not None and seen[0] is act else 1
    cache["rho2d_direct"] = (act, n)
    if (n > _LONG_DIRECT and cache.get("run_left", 0) >= _LONG_LAYERS and last is not None
            and last[0] is act and abs(lq - last[1]) <= _SETTLED_DLQ):
        cache["rho2d_long"] = (act, math.floor(lq))
        return True
    return False


def _log_moments(act: Activation, lq: float, cache: dict) -> tuple:
    """(log E[phi(h)^2], log E[phi'(h)^2]) for h ~ N(0, e^lq): the tables where they hold, else
    the direct rules continued as power laws (as in :func:`dense_step`)."""
    tm = tables.moments(act, lq)
    if tm is None and lq < tables.LQ_LO:
        tm = tables.small_moments(act, lq)
    return tm if tm is not None else layer_moments(act, lq, cache)


def _mean_ratio(act: Activation, lq: float) -> float:
    """E[phi(h)] / sqrt(E[phi(h)^2]) for h ~ N(0, e^lq) (as in :func:`dense_step`)."""
    if act.odd:
        return 0.0
    mu = tables.mean_ratio(act, lq)
    if mu is None:
        inside = LQ_LO <= lq <= LQ_HI
        homogeneous = getattr(act, "homogeneous", False)
        qm = 1.0 if (homogeneous and not inside) else math.exp(min(max(lq, LQ_LO), LQ_HI))
        m = float(act.mean(qm))
        mu = m / math.sqrt(float(act.second_moment(qm))) if m != 0 else 0.0
    return mu


def _pair_correlations(act: Activation, lq: np.ndarray, corr: np.ndarray, what: str,
                       log_v: np.ndarray) -> np.ndarray:
    """The k x k matrix ``E[f(u_a) f(u_b)] / sqrt(E[f(u_a)^2] E[f(u_b)^2])`` for ``u ~ N(0, K)``,
    ``K`` given by ``lq``, ``corr``; ``f = phi`` (``what = "phi"``) or ``phi'``; ``log_v`` the
    logs of the diagonal moments. Each distinct (q_a, q_b, c_ab) is evaluated once; equal
    variances take :func:`signalprop.maps.rho` (and its q range), unequal ones the bivariate rule
    directly, which needs both q in [1e-280, 1e100]."""
    k = lq.size
    R = np.eye(k)
    if k == 1:
        return R
    ia, ib = np.triu_indices(k, 1)
    rows = np.stack([lq[ia], lq[ib], corr[ia, ib]], axis=1)
    uniq, inv = np.unique(rows, axis=0, return_inverse=True)
    inv = inv.ravel()
    vals = np.empty(len(uniq))
    equal = uniq[:, 0] == uniq[:, 1]
    cross = act.cross_moment if what == "phi" else act.dphi_cross_moment
    if what == "phi" and equal.any():
        vals[equal] = maps.rho(act, np.exp(np.clip(uniq[equal, 0], LQ_LO, LQ_HI)), uniq[equal, 2])
    todo = np.flatnonzero(~equal) if what == "phi" else np.arange(len(uniq))
    if todo.size:
        lqa, lqb, c = uniq[todo, 0], uniq[todo, 1], uniq[todo, 2]
        if np.any((np.minimum(lqa, lqb) < LQ_LO) | (np.maximum(lqa, lqb) > LQ_HI)):
            raise ValueError("the kernel path needs the second moments of inputs with different "
                             "norms in [1e-280, 1e100]; this profile leaves that range")
        e = np.asarray(cross(np.exp(lqa), np.exp(lqb), c), float)
        vb = dict(zip(lq.tolist(), log_v.tolist()))
        norm = np.exp(0.5 * (np.array([vb[a] for a in lqa]) + np.array([vb[b] for b in lqb])))
        vals[todo] = np.clip(e / norm, -1.0, 1.0)
    R[ia, ib] = vals[inv]
    R[ib, ia] = vals[inv]
    return R


def phi_kernel_step(act: Activation, tracked: Kernel, log_back: float, cache: dict) -> KernelStep:
    """The activation's half of a fully connected layer on the kernel path, for the tracked
    pre-activation kernel ``K_h`` (Lee et al. 2018, eq. 4; Poole et al. 2016, eqs. 3, 5):
    ``K_x'[a, b] = E[phi(u_a) phi(u_b)]``, ``m_a = E[phi(u_a)]``; backward
    ``Pi_h = Pi_x o E[phi'(u) phi'(u)^T]`` (the off-diagonal expectations only when ``Pi`` has
    off-diagonal entries), then ``Pi_x^{l-1} = exp(log_back) Pi_h``."""
    lq = tracked.log_q
    mom = [_log_moments(act, float(v), cache) for v in lq]
    lv = np.array([m[0] for m in mom])
    ld = np.array([m[1] for m in mom])
    corr = _pair_correlations(act, lq, tracked.corr, "phi", lv)
    mu = None
    if tracked.mu is not None:
        mu = np.array([_mean_ratio(act, float(v)) for v in lq])
    out = Kernel(lv, corr, mu)

    def to_tracked(P: np.ndarray) -> tuple:
        R = None
        if not kernel_maths.is_diagonal(P):
            R = _pair_correlations(act, lq, tracked.corr, "dphi", ld)
        return kernel_maths.congruence(P, ld, R)

    return KernelStep(tracked, out, to_tracked, kernel_maths.scale(log_back))


def c_only_rho(layer, cache: dict, lq: float, dq: float):
    """rho(c) of the last :func:`dense_step` as a function of c alone, where it stays valid for
    the rest of a run whose log q moves by ``dq`` per layer: the same route (closed-form kernel,
    Mehler series of the table, :func:`tables.rho_theta` interpolant) at the same q when dq = 0;
    for any dq for a positively homogeneous kernel; for dq >= 0 past q = 1e13, where the
    interpolant is the one at 1e13 (:func:`rho`). None otherwise (or for other layer kinds, or
    when the residual stream's mean is tracked)."""
    fast = cache.get("c_fast")
    if (fast is None or not isinstance(layer, Dense) or cache.get("means")
            or fast[0] is not layer.activation):
        return None
    _, key, kind, data = fast
    if not (dq == 0.0 or key == "any"
            or (kind == "theta" and key == RHO_Q_MAX and dq >= 0 and lq >= math.log(key))):
        return None
    if kind == "kernel":
        kernel, qk = data
        return lambda c: kernel(qk, c)[2]
    if kind == "series":
        return lambda c: tables.series_at(data, c)
    if kind == "rho2d":
        act = layer.activation
        at_q = tables.rho_2d_at_q(act, data, rho_fn(act))      # tanh: coefficients formed once
        return at_q if at_q is not None else (lambda c: tables.rho_2d(act, data, c, rho_fn(act)))
    return lambda c: tables.theta_at(data, c)


# ---------------------------------------------------------------------------------------------
# samplers


@_scaled_api
class DenseRule:
    """A :class:`~signalprop.layers.dense.Dense` layer in the engines: its linear sampler
    (``h = W x + b``), then ``x^l = phi(h)``. The tracked variable is ``h``;
    ``to_tracked`` multiplies by ``phi'(h)`` (CONVENTIONS.md, "Backward").

    Scaled form: the linear part maps ``2^e x`` to ``2^e (W x + 2^-e b)``; a positively
    homogeneous activation (relu, leaky_relu, linear: ``phi(2^e h) = 2^e phi(h)``,
    ``phi'(2^e h) = phi'(h)``) keeps the exponent, any other is applied to the real
    ``2^e h`` (:func:`apply_activation`). ``ctx[1]`` is the point at which ``phi'`` is
    evaluated."""

    couples_inputs = False

    def __init__(self, linear, activation):
        self.linear, self.act = linear, activation
        self.n_in, self.n_out, self.engine = linear.n_in, linear.n_out, linear.engine
        self.homogeneous = bool(getattr(activation, "homogeneous", False))

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        return self.linear.ctx_nbytes(k, itemsize) + k * self.n_out * itemsize

    def normals_drawn(self, k: int) -> tuple:
        """``(forward, backward)``: standard normals drawn per sample by ``forward_scaled`` on k
        inputs and by ``backward_scaled`` on a one-row gradient (None: not declared); the engines
        reserve them in blocks (:meth:`~signalprop.sampling.Streams.reserve`)."""
        fn = getattr(self.linear, "normals_drawn", None)
        return (None, None) if fn is None else fn(k)

    def forward_scaled(self, x: np.ndarray, e, rng: Streams):
        if _is_zero(e):
            h, ctx = self.linear.forward(x, rng)
        else:
            h, ctx = self.linear.forward(x, rng, shift=e)
        if self.homogeneous or _is_zero(e):
            arg, ey = h, e
            y = np.asarray(self.act.phi(arg), dtype=x.dtype)
        else:
            y, ey, arg = apply_activation(self.act, h, e, x.dtype)
        _finite_values(self.act, "phi", arg, y)
        return h, e, y, ey, (ctx, arg)

    def backward_scaled(self, gt: np.ndarray, ctx, rng: Streams):
        return self.linear.backward(gt, ctx[0], rng), None

    def to_tracked_scaled(self, gy: np.ndarray, ctx):
        h = ctx[1]
        h = np.ascontiguousarray(h[:, 0]) if gy.ndim == 2 else h[:, :gy.shape[1]]
        return np.asarray(self.act.dphi(h), dtype=gy.dtype) * gy, None

    def diagnose(self, ctx) -> None:
        """:class:`LayerError` naming the argument where ``phi'`` is not finite (called by the
        engines once a gradient came out non-finite; not on the hot path)."""
        _finite_values(self.act, "phi'", ctx[1], np.asarray(self.act.dphi(ctx[1])))


class _Identity:
    """The linear part of a :class:`~signalprop.layers.dense.Nonlinearity`: none."""

    def __init__(self, n: int, engine: str):
        self.n_in = self.n_out = n
        self.engine = engine

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        return 0

    def normals_drawn(self, k: int) -> tuple:
        return 0, 0

    def forward(self, x, rng, shift=None):
        return x, None

    def backward(self, delta, ctx, rng):
        return delta


for _engine in ENGINES:
    register(Nonlinearity, _engine)(
        lambda layer, n_in, _e=_engine: DenseRule(_Identity(n_in, _e), layer.activation))


class DenseSampler:
    """Dense sampling of a :class:`~signalprop.layers.dense.Dense` layer: the full ``N_l x N_{l-1}``
    weight matrix per sample (gaussian, uniform or Haar (semi-)orthogonal), then ``h = W x + b``.
    ``ctx`` is ``(M, c)`` with ``W = c M`` (``M`` of shape ``(S, N_l, N_{l-1})``; see
    :meth:`weights_of`). Per-sample draw order: the weights, then the bias (when
    ``sigma_b^2 > 0``)."""

    engine = "dense"

    def __init__(self, layer: Dense, n_in: int):
        self.layer = layer
        self.n_in, self.n_out = int(n_in), int(layer.width)
        self.weights = layer.weights
        self.sigma_w = math.sqrt(layer.sigma_w2)
        self.sigma_b = math.sqrt(layer.sigma_b2)

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        return self.n_out * self.n_in * itemsize

    def draw_weights(self, rng: Streams, dtype):
        """``(M, c)`` with ``W = c M`` for every sample (``M`` of shape ``(S, N_l, N_{l-1})``): the
        Gaussian scale is applied to the products, not to the N^2 entries."""
        n_out, n_in = self.n_out, self.n_in
        if self.weights == "gaussian":
            return rng.normal((n_out, n_in), dtype), self.sigma_w / math.sqrt(n_in)
        if self.weights == "uniform":
            W = rng.uniform((n_out, n_in), dtype)
            a = math.sqrt(3.0 * self.layer.sigma_w2 / n_in)
            W *= dtype.type(2.0 * a)
            W -= dtype.type(a)
            return W, 1.0
        # orthogonal: Haar (semi-)orthogonal via QR with the sign correction
        big, small = max(n_out, n_in), min(n_out, n_in)
        Q, R = np.linalg.qr(rng.normal((big, small), dtype))
        d = np.sign(np.diagonal(R, axis1=1, axis2=2))
        d[d == 0] = 1
        Q *= d[:, None, :]
        W = Q if n_out >= n_in else np.ascontiguousarray(Q.transpose(0, 2, 1))
        return W, self.sigma_w * math.sqrt(big / n_in)

    def weights_of(self, ctx) -> np.ndarray:
        """The weight matrices ``W`` (S, N_l, N_{l-1}) from a forward ``ctx``."""
        M, c = ctx
        return M * M.dtype.type(c) if c != 1.0 else M

    def forward(self, x: np.ndarray, rng: Streams, shift=None):
        """``h = W x + 2^-shift b`` (``shift``: per-sample exponent of ``x``, module docstring). A
        shared layer draws ``W`` and ``b`` from the named stream of its ``share`` (the same numbers
        at every use)."""
        if self.layer.share is not None:
            rng = rng.named(self.layer.share)
        M, c = self.draw_weights(rng, x.dtype)
        h = np.matmul(x, M.transpose(0, 2, 1))
        if c != 1.0:
            h *= x.dtype.type(c)
        if self.sigma_b > 0:
            b = rng.normal((self.n_out,), x.dtype)
            b *= x.dtype.type(self.sigma_b)
            h += ldexp_rows(b, _neg(shift))[:, None, :]
        return h, (M, c)

    def backward(self, delta: np.ndarray, ctx, rng: Streams) -> np.ndarray:
        M, c = ctx
        out = np.matmul(delta, M) if delta.ndim == 3 else np.matmul(delta[:, None, :], M)[:, 0, :]
        if c != 1.0:
            out *= delta.dtype.type(c)
        return out


# ---------------------------------------------------------------------------------------------
# matrix-free engine


class MatrixFreeGaussian:
    """Exact matrix-free sampling of a Gaussian :class:`~signalprop.layers.dense.Dense` layer.

    **Construction.** Write the layer as one standard Gaussian matrix ``Z`` (``N_l x n'``, i.i.d.
    N(0, 1) entries) acting on augmented inputs: ``h = Z y`` with
    ``y = [sigma_w x / sqrt(N_{l-1}), sigma_b]`` (``n' = N_{l-1} + 1``; without the last entry
    when ``sigma_b = 0``), so that ``W = (sigma_w / sqrt(N_{l-1})) Z[:, :N_{l-1}]`` and
    ``b = sigma_b Z[:, -1]``. Let ``U`` (``n' x k``) be an orthonormal basis of the span of the
    k <= 2 augmented inputs (Gram-Schmidt), ``Y = U R``. Forward: draw ``G`` (``N_l x k``,
    i.i.d. N(0, 1)) and set ``H = G R`` (k pre-activation vectors). Backward, for one gradient
    vector ``delta`` (input a): draw ``xi ~ N(0, ||delta||^2 I_{n'})`` and return

        Z^T delta = U (G^T delta) + (I - U U^T) xi,     W^T delta = (sigma_w/sqrt(N_{l-1})) [Z^T delta]_{:N_{l-1}}.

    Cost per layer and sample: ``k N_l + n'`` random numbers and O(k N) flops. The joint law of
    all ``(h^l, delta^l)`` is exactly the dense engine's (Gaussian conditioning: Bolthausen 2014;
    Bayati & Montanari 2011); any orthonormal ``U`` spanning the inputs works, so ``c = 1`` needs
    no special care. Derivation: docs/theory/matrix-free-sampling.md.
    """

    engine = "matrix-free"

    def __init__(self, layer: Dense, n_in: int):
        self.layer = layer
        self.n_in, self.n_out = int(n_in), int(layer.width)
        self.sigma_w = math.sqrt(layer.sigma_w2)
        self.sigma_b = math.sqrt(layer.sigma_b2)
        self.n_aug = self.n_in + (1 if self.sigma_b > 0 else 0)

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        return k * (self.n_aug + self.n_out) * itemsize

    def normals_drawn(self, k: int) -> tuple:
        """``G`` (k N_l) forward, ``xi`` (n') backward."""
        return k * self.n_out, self.n_aug

    def forward(self, x: np.ndarray, rng: Streams, shift=None):
        """``(h, ctx)`` for the inputs ``x`` at exponent ``shift`` (the bias entry of the
        augmented input is ``2^-shift sigma_b``; module docstring of :mod:`signalprop.sampling`)."""
        S, k, n = x.shape
        dt = x.dtype
        scale = dt.type(self.sigma_w / math.sqrt(n))
        if self.sigma_b > 0:
            y = np.empty((S, k, n + 1), dtype=dt)
            np.multiply(x, scale, out=y[:, :, :n])
            if _is_zero(shift):
                y[:, :, n] = self.sigma_b
            else:
                y[:, :, n] = ldexp_rows(np.full(S, self.sigma_b, dtype=dt), _neg(shift))[:, None]
        else:
            y = x * scale
        U, R = _frame(y)
        G = rng.normal((k, self.n_out), dt)
        return _combine(R, G), (U, G)

    def backward(self, delta: np.ndarray, ctx, rng: Streams) -> np.ndarray:
        U, G = ctx
        dt = delta.dtype
        c = _coords(G, delta)
        nd = np.sqrt(_dot(delta, delta))
        xi = rng.normal((self.n_aug,), dt)
        xi *= nd[:, None].astype(dt)
        xi -= _span(_coords(U, xi), U)
        xi += _span(c, U)
        out = xi[:, :self.n_in]
        out *= dt.type(self.sigma_w / math.sqrt(self.n_in))
        return out


class MatrixFreeOrthogonal:
    """Exact matrix-free sampling of an orthogonal :class:`~signalprop.layers.dense.Dense` layer.

    **Construction.** Let ``p = max(N_l, N_{l-1})`` and ``O`` Haar on O(p); the (semi-)orthogonal
    weight matrix is ``W = s E_l^T O E_{l-1}`` with ``E`` the first-columns embeddings of
    ``R^{N_l}``, ``R^{N_{l-1}}`` into ``R^p`` and ``s = sigma_w sqrt(p / N_{l-1})``: the top-left
    block of a Haar matrix, which has exactly the law of the dense engine's QR construction
    (uniform on the Stiefel manifold; square when ``N_l = N_{l-1}``). Let ``U`` (``p x k``) be an
    orthonormal basis of the embedded inputs, ``X = U R``. Forward: ``V`` = Gram-Schmidt of a
    ``p x k`` standard Gaussian matrix (a uniformly distributed k-frame), ``h = s E_l^T V R + b``.
    Backward: with ``d = E_l delta`` (``delta`` padded with zeros to length p),
    ``c = V^T d``, ``rho = ||d - V c||``, ``zeta`` a uniformly random unit vector of
    ``span(U)^perp`` (project a standard Gaussian vector of R^p and normalise):

        O^T d = U c + rho zeta,       W^T delta = s E_{l-1}^T O^T d.

    Cost per layer and sample: ``k p + N_l + p`` random numbers, O(k p) flops. The joint law of
    all ``(h^l, delta^l)`` is exactly the dense engine's (invariance of Haar measure). Inputs that
    are zero or parallel give a zero column of ``U``; the matching column of ``V`` is zeroed as
    well (the same construction with a smaller k). Derivation: docs/theory/matrix-free-sampling.md.
    """

    engine = "matrix-free"

    def __init__(self, layer: Dense, n_in: int):
        self.layer = layer
        self.n_in, self.n_out = int(n_in), int(layer.width)
        self.p = max(self.n_in, self.n_out)
        self.scale = math.sqrt(layer.sigma_w2) * math.sqrt(self.p / self.n_in)
        self.sigma_b = math.sqrt(layer.sigma_b2)

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        return k * (self.n_in + self.p) * itemsize

    def normals_drawn(self, k: int) -> tuple:
        """The k-frame (k p) and the bias (N_l, when sigma_b > 0) forward, ``zeta`` (p) backward."""
        return k * self.p + (self.n_out if self.sigma_b > 0 else 0), self.p

    def forward(self, x: np.ndarray, rng: Streams, shift=None):
        """``(h, ctx)`` for the inputs ``x`` at exponent ``shift`` (bias ``2^-shift b``)."""
        S, k, n = x.shape
        dt = x.dtype
        p, n_out = self.p, self.n_out
        U, R = _frame(x)
        nb = n_out if self.sigma_b > 0 else 0
        draws = rng.normal((k * p + nb,), dt)
        V, _ = _frame(draws[:, :k * p].reshape(S, k, p))
        live = (np.diagonal(R, axis1=1, axis2=2) > 0).astype(dt)
        V *= live[:, :, None]
        h = _combine(R, V[:, :, :n_out])
        h *= dt.type(self.scale)
        if nb:
            b = draws[:, k * p:]
            b *= dt.type(self.sigma_b)
            h += ldexp_rows(b, _neg(shift))[:, None, :]
        return h, (U, V)

    def backward(self, delta: np.ndarray, ctx, rng: Streams) -> np.ndarray:
        U, V = ctx
        dt = delta.dtype
        n_out, n_in, p = self.n_out, self.n_in, self.p
        c = _coords(V[:, :, :n_out], delta)
        w_top = delta - _span(c, V[:, :, :n_out])
        rho2 = _dot(w_top, w_top)
        if p > n_out:
            w_bot = _span(c, V[:, :, n_out:])
            rho2 = rho2 + _dot(w_bot, w_bot)
        zeta = rng.normal((p,), dt)
        zeta[:, :n_in] -= _span(_coords(U, zeta[:, :n_in]), U)
        zn = np.sqrt(_dot(zeta, zeta))
        f = np.divide(np.sqrt(rho2), zn, out=np.zeros_like(zn), where=zn > 0)
        out = zeta[:, :n_in] * f[:, None].astype(dt)
        out += _span(c, U)
        out *= dt.type(self.scale)
        return out


@register(Dense, "dense")
def _dense_dense(layer: Dense, n_in: int) -> DenseRule:
    return DenseRule(DenseSampler(layer, n_in), layer.activation)


@register(Dense, "matrix-free")
def _matrix_free_dense(layer: Dense, n_in: int) -> DenseRule:
    if layer.share is not None:
        raise ValueError(f"engine='matrix-free' cannot sample shared weights (a Dense layer with "
                         f"share={layer.share!r}: its exact conditioning holds for one use of each "
                         "weight matrix); use engine='dense'")
    if layer.weights == "gaussian":
        return DenseRule(MatrixFreeGaussian(layer, n_in), layer.activation)
    if layer.weights == "orthogonal":
        return DenseRule(MatrixFreeOrthogonal(layer, n_in), layer.activation)
    raise ValueError(f"engine='matrix-free' supports gaussian and orthogonal weights, not "
                     f"{layer.weights!r} (its conditional law given W x is not rotation invariant); "
                     "use engine='dense'")
