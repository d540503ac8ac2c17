"""The vanilla recurrent cell unrolled in time: :class:`RNNStep` (one time step
``h_t = phi(W h_{t-1} + U x_t + b)`` with ``W``, ``U``, ``b`` shared across steps by name), its
mean-field rule, its samplers, and the fixed point and time scales of the recurrence
(:func:`rnn_timescales`).

Model (Chen, Pennington & Schoenholz 2018, "Dynamical isometry and a mean field theory of RNNs",
ICML, sec. 3; notation of docs/theory/recurrent.md):

    e_t = W h_{t-1} + U x_t + b,     h_t = phi(e_t),
    W_ij ~ N(0, sigma_w^2 / N) (gaussian) or W = sigma_w O, O Haar orthogonal (orthogonal),
    U_ij ~ N(0, sigma_u^2 / n_x),    b_i ~ N(0, sigma_b^2),

the same ``W``, ``U``, ``b`` at every step. A :class:`~signalprop.network.Network` of T steps
(:func:`signalprop.architectures.rnn`) has input ``h_0`` (``predict``/``simulate``'s ``q0``,
``c0``: its second moment and the correlation of the two sequences' initial states) and
layer ``t`` = step ``t``; the tracked variable of step ``t`` is the pre-activation ``e_t``, so the
profile's ``q^t``, ``c^t``, ``g^t`` are ``E[e_t^2]``, the correlation of the two sequences'
``e_t``, and ``E[(d loss / d e_t)^2]`` (loss ``<v, e_T>``); ``E[(d loss / d h_{t-1})^2] =
sigma_w^2 g^t`` (docs/notation.md, "Recurrent networks").

**Input process.** Step ``t`` reads an input ``x_t`` of ``n_x`` units with per-unit second moment
``q_x`` and, for the second sequence, correlation ``c_x`` with the first sequence's ``x_t``
(both fields of the step, so they may vary with t). The simulation draws, per sample and step,
isotropic random directions (fresh at every step, from the sample's forward stream) and gives
them exactly these statistics; at infinite width only ``q_x`` and ``c_x`` enter the theory, as an
additive term ``sigma_u^2 q_x`` (``sigma_u^2 q_x c_x`` between the sequences) beside the bias.

**Theory.** Forward, exactly at infinite width with tied weights (a matrix applied to several
vectors gives Gaussian outputs with the covariance of their inner products; Chen et al. 2018
eqs. 4-5; Yang 2019, Tensor Programs I):

    q_e^t = sigma_w^2 E[phi(e_{t-1})^2] + sigma_u^2 q_x + sigma_b^2,
    c_e^t q_e^t = sigma_w^2 E[phi(e^a_{t-1}) phi(e^b_{t-1})] + sigma_u^2 q_x c_x + sigma_b^2.

Backward under the gradient-independence (untied-weights) approximation (Schoenholz et al. 2017,
sec. 4; Chen et al. 2018 sec. 3.2): ``g^{t-1} = sigma_w^2 E[phi'(e_{t-1})^2] g^t``. The
simulation keeps ``W`` tied, so it measures what the approximation misses at finite width
(about ``t^2 / N`` in ``log g``; validation/recurrent_report.md).

**Jacobian spectrum through time** (capability ``free_probability``,
:func:`signalprop.spectrum.spectrum`). The state-to-state Jacobian of T steps is
``J = dh_T/dh_0 = D_T W D_{T-1} W ... D_1 W``, ``D_t = diag(phi'(e_t))``: the product a Dense chain
of the same widths has, with one W instead of T independent ones. Its squared singular values are
given the untied law, ``S_{JJ^T}(w) = prod_t S_{D_t^2}(w) S_{W^T W}(w)^T`` with ``D_t^2`` the law of
``phi'(e)^2`` at each step's own ``q_e^t`` (Pennington, Schoenholz & Ganguli 2017, eqs. 7-12; Chen
et al. 2018 sec. 4 use the same free-probability form for the vanilla RNN). Why tying does not
change the limit, assuming W is asymptotically free of the family ``{D_t}`` (the same assumption
as the feedforward theory, where ``D_l`` depends on ``W_l``): write ``W = u a`` (polar part ``u``
Haar, R-diagonal W: gaussian or orthogonal), ``u`` free of ``a`` and of the ``D_t``; then
``J = D_T u (a D_{T-1}) u ... (a D_1) u a = y_0 y_1 ... y_T u^T`` with ``y_k = u^k c_k u^-k``
(``c_0 = D_T``, ``c_k = a D_{T-k}``, ``c_T = a``). For a Haar ``u`` free of an algebra ``B`` the
algebras ``u^k B u^-k`` (k = 0, 1, ...) are free (Voiculescu, Dykema & Nica 1992, "Free random
variables"), so ``J J^T`` has the law of a product of free factors with the laws of ``D_T^2``,
``a^2 D_t^2`` and ``a^2``: ``S = prod_t S_{D_t^2} S_{a^2}^T``, the untied product's (derived here,
docs/theory/recurrent.md; for linear cells it is Haagerup & Larsen 2000's
``S_{|x^n|^2} = S_{|x|^2}^n`` for R-diagonal x: the powers of one Ginibre matrix have the
Fuss-Catalan law of a product of independent ones). Checked by Monte Carlo of the tied product
(tests/test_recurrent.py; validation/recurrent_check.py, section S); the inputs ``U x_t + b`` enter
only through ``q_e^t``.

**Samplers.** Dense engine only: ``W``, ``U`` and ``b`` are drawn from the streams named
``"<share>:W"``, ``"<share>:U"``, ``"<share>:b"`` (:meth:`signalprop.sampling.Streams.named`),
so every step of a sample network uses the same numbers; each is drawn once per chunk of
samples and kept for the later steps. The matrix-free engine refuses (its conditioning holds for
one use of each matrix).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .. import maps
from .._lazy import lazy_module
from .._validate import (check_choice, check_int, finite_scalar, nonnegative_scalar,
                         positive_scalar, short_repr)
from ..activations import Activation, activation
from ..kernel import Kernel, weighted_sum
from ..network import MAX_WIDTH, KernelStep, Step, _act_label
from ..results import _Result
from ..sampling import ldexp_rows, register
from .dense import Dense, DenseRule, DenseSampler, dense_step, phi_kernel_step

optimize = lazy_module("scipy.optimize")

__all__ = ["RNNStep", "RECURRENT_WEIGHTS", "rnn_timescales", "RNNTimescales", "input_vectors"]

#: largest additive variance (input and bias) a step accepts: the top of the Gaussian rules' range
_DRIVE_MAX = 1e100
#: recurrent weight laws of a cell
RECURRENT_WEIGHTS = ("gaussian", "orthogonal")


def _correlation(name: str, value) -> float:
    """One finite number in [-1, 1] (ValueError/TypeError naming ``name``)."""
    v = finite_scalar(name, value)
    if abs(v) > 1.0:
        raise ValueError(f"{name} must lie in [-1, 1], got {short_repr(value)}")
    return v


@dataclass(frozen=True)
class RNNStep:
    """One time step of a vanilla RNN, ``h_t = phi(W h_{t-1} + U x_t + b)`` (module docstring).

    ``width``: N (state units); ``activation``: phi; ``sigma_w2`` (> 0): recurrent weight
    variance times N; ``sigma_u2`` (>= 0): input weight variance times ``n_x``; ``sigma_b2``
    (>= 0): bias variance; ``weights``: ``gaussian`` or ``orthogonal`` (recurrent W; U is
    gaussian); ``q_x`` (>= 0): per-unit second moment of this step's input; ``c_x`` in [-1, 1]:
    correlation of the two sequences' inputs at this step (read only with two inputs);
    ``input_width``: ``n_x`` (default N); ``share``: the name under which W, U, b are shared by
    all steps of one network (``Network`` checks that they agree)."""

    width: int
    activation: Activation
    sigma_w2: float
    sigma_u2: float = 1.0
    sigma_b2: float = 0.0
    weights: str = "gaussian"
    q_x: float = 0.0
    c_x: float = 0.0
    input_width: Optional[int] = None
    share: str = "rnn"
    _unit: Dense = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "width", check_int("width", self.width, 1, MAX_WIDTH))
        if not isinstance(self.activation, Activation):
            object.__setattr__(self, "activation", activation(self.activation))
        object.__setattr__(self, "sigma_w2", positive_scalar("sigma_w2", self.sigma_w2))
        object.__setattr__(self, "sigma_u2", nonnegative_scalar("sigma_u2", self.sigma_u2))
        object.__setattr__(self, "sigma_b2", nonnegative_scalar("sigma_b2", self.sigma_b2))
        check_choice("weights", self.weights, RECURRENT_WEIGHTS)
        object.__setattr__(self, "q_x", nonnegative_scalar("q_x", self.q_x))
        object.__setattr__(self, "c_x", _correlation("c_x", self.c_x))
        if not self.sigma_u2 * self.q_x + self.sigma_b2 <= _DRIVE_MAX:
            raise ValueError(f"sigma_u2 * q_x + sigma_b2 must be <= {_DRIVE_MAX:g}, got "
                             f"{self.sigma_u2!r} * {self.q_x!r} + {self.sigma_b2!r}")
        nx = self.width if self.input_width is None else self.input_width
        object.__setattr__(self, "input_width", check_int("input_width", nx, 1, MAX_WIDTH))
        if not (isinstance(self.share, str) and self.share):
            raise TypeError(f"share must be a non-empty name (str), got {short_repr(self.share)}")
        # the Dense step (sigma_w^2 = 1, sigma_b^2 = 0) that applies phi to the pre-activation
        object.__setattr__(self, "_unit", Dense(self.width, self.activation, 1.0, 0.0))

    needs_mean = False
    #: the Jacobian law of :func:`signalprop.spectrum.spectrum` (module docstring: tied W)
    capabilities = frozenset({"free_probability"})
    #: what spectrum() reports about this kind's factor
    spectrum_note = ("recurrent steps: one W shared by all steps; the law is the untied "
                     "product's (exact at infinite width when W is asymptotically free of the "
                     "D_t; signalprop.layers.recurrent)")

    @property
    def drive(self) -> float:
        """``sigma_u^2 q_x + sigma_b^2``: the additive part of ``q_e`` (input and bias)."""
        return self.sigma_u2 * self.q_x + self.sigma_b2

    @property
    def drive_cross(self) -> float:
        """``sigma_u^2 q_x c_x + sigma_b^2``: its covariance between the two sequences."""
        return self.sigma_u2 * self.q_x * self.c_x + self.sigma_b2

    def check_input(self, n_in: int) -> None:
        if n_in != self.width:
            raise ValueError(f"a recurrent step maps the state to itself: its width is "
                             f"{self.width} but its input (h_{{t-1}}) has width {n_in}")

    def same_rule(self, other) -> bool:
        """Equal cells with equal input statistics. A step whose input acts as a bias while
        ``sigma_b2 = 0`` never joins a run (predict's fill reads ``sigma_b2`` as the additive
        constant of a layer, so it would misjudge such a run as scale-free)."""
        if self.sigma_b2 == 0.0 and self.q_x * self.sigma_u2 > 0:
            return False
        return (type(other) is RNNStep and other.activation == self.activation
                and (other.sigma_w2, other.drive, other.drive_cross)
                == (self.sigma_w2, self.drive, self.drive_cross))

    def with_width(self, width: int) -> "RNNStep":
        """The same step at width N (``input_width`` follows when it was N)."""
        nx = width if self.input_width == self.width else self.input_width
        return RNNStep(width, self.activation, self.sigma_w2, self.sigma_u2, self.sigma_b2,
                       self.weights, self.q_x, self.c_x, nx, self.share)

    def shared_spec(self, n_in: int):
        """``(name, what must agree)``: every step of a network sharing ``share`` has the same
        shapes, variances and recurrent law."""
        return self.share, ("RNNStep", n_in, self.width, self.input_width, self.sigma_w2,
                            self.sigma_u2, self.sigma_b2, self.weights)

    def _pre_state(self, state: tuple) -> tuple:
        """``(log q_e, c_e, mu)`` from ``(log q_h, c_h, mu)`` (Chen et al. 2018, eqs. 4-5)."""
        lq_h, ch, mu = state
        lw = math.log(self.sigma_w2) + lq_h
        d = self.drive
        lq = lw if d == 0 else max(lw, math.log(d)) + math.log1p(math.exp(-abs(lw - math.log(d))))
        c = None
        if ch is not None:
            t = math.exp(lw - lq)                              # share of W h in q_e
            c = min(1.0, max(-1.0, t * ch + self.drive_cross * math.exp(-lq)))
        return lq, c, mu

    def mean_field(self, state: tuple, n_in: int, cache: dict) -> Step:
        """``q_e``, ``c_e`` of :meth:`_pre_state`, then phi and ``E[phi'(e)^2]`` by
        :func:`~signalprop.layers.dense.dense_step`; back to ``h_{t-1}`` through ``W^T``:
        ``sigma_w^2`` (Chen et al. 2018 sec. 3.2, gradient independence)."""
        step = dense_step(self._unit, self._pre_state(state), self.width, cache)
        return Step(step.log_q, step.c, step.out, step.log_d,
                    math.log(self.sigma_w2) + math.log(self.width / n_in))

    def kernel_step(self, kernel: Kernel, n_in: int, cache: dict) -> KernelStep:
        """``K_e = sigma_w^2 K_h + sigma_u^2 q_x C_x + sigma_b^2 1 1^T`` (``C_x``: unit diagonal,
        ``c_x`` off it) for k inputs, then :func:`~signalprop.layers.dense.phi_kernel_step`;
        backward ``Pi_h^{t-1} = sigma_w^2 Pi_e^t`` (Chen et al. 2018, eqs. 4-5 for k sequences)."""
        tracked = kernel.affine(self.sigma_w2, self.sigma_b2)
        if self.q_x * self.sigma_u2 > 0:
            inp = Kernel.uniform(kernel.k, self.sigma_u2 * self.q_x, self.c_x,
                                 means=kernel.mu is not None)
            tracked = weighted_sum([tracked, inp], [1.0, 1.0])
        return phi_kernel_step(self.activation, tracked,
                               math.log(self.sigma_w2) + math.log(self.width / n_in), cache)

    def unit_forward(self, state: tuple, F) -> tuple:
        """One unit's step on the paths of the dynamical mean field (:mod:`signalprop.dmft`):
        ``e_t = Z^{W phi(e_{t-1})} + Z^{U x_t} + Z^b`` (``h_0`` itself at the first step, ``F.step
        == 0``); the field of ``W`` is drawn jointly with its earlier uses (tied weights)."""
        prev = state[0]
        first = F.step == 0
        y = prev if first else np.asarray(self.activation.phi(prev), float)
        e = F.field(f"{self.share}:W", self.sigma_w2, y)
        k = prev.shape[1]
        if self.sigma_u2 and self.q_x:
            C = np.full((k, k), self.c_x)
            np.fill_diagonal(C, 1.0)
            e = e + F.gaussian(self.sigma_u2 * self.q_x * C)
        if self.sigma_b2:
            e = e + F.bias(f"{self.share}:b", self.sigma_b2)
        return (e,), (None if first else prev[:, :1],)

    def unit_backward(self, grad: tuple, ctx: tuple, F) -> tuple:
        """``d loss / d e_{t-1} = phi'(e_{t-1}) Z^{W~^T delta_t}`` (``W~`` tied, independent of
        ``W``: the gradient-independence check of Tensor Programs II)."""
        d = F.field(f"{self.share}:W^T", self.sigma_w2, grad[0])
        return (d if ctx[0] is None else np.asarray(self.activation.dphi(ctx[0]), float) * d,)

    def label(self) -> str:
        w = "" if self.weights == "gaussian" else f", {self.weights}"
        return (f"RNNStep({self.width}, {_act_label(self.activation)}, sigma_w2={self.sigma_w2:g}, "
                f"sigma_u2={self.sigma_u2:g}, sigma_b2={self.sigma_b2:g}, q_x={self.q_x:g}, "
                f"c_x={self.c_x:g}{w}, share={self.share!r})")


# ---------------------------------------------------------------------------------------------
# fixed point and time scales


@dataclass(frozen=True, eq=False)
class RNNTimescales(_Result):
    """Fixed point of the recurrence with a stationary input (:func:`rnn_timescales`).

    ``q_star``: fixed point of ``q_e``; ``c_star``: of ``c_e`` (two sequences with input
    correlation ``c_x``); ``chi_1 = sigma_w^2 E[phi'(e)^2]`` at ``q*`` (per-step factor of the
    gradient, of ``1 - c`` near ``c* = 1``); ``chi_c = sigma_w^2 E[phi'(e^a) phi'(e^b)]`` at
    ``(q*, c*)`` (slope of the correlation map at ``c*``); ``xi_c = 1/|log chi_c|`` (steps over
    which two sequences' states forget their difference: the memory time scale); ``xi_grad =
    1/|log chi_1|`` (steps over which ``g`` changes by e, vanishing for chi_1 < 1, exploding for
    chi_1 > 1; inf on the critical line chi_1 = 1). ``c*`` is the attracting fixed point (1 when
    the two sequences get identical drives and chi_1 <= 1).
    ``regime``: ordered (chi_1 < 1), critical or chaotic."""

    q_star: float
    c_star: float
    chi_1: float
    chi_c: float
    xi_c: float
    xi_grad: float
    regime: str
    note: str = ""


def _xi(chi: float) -> float:
    """``1 / |log |chi||``: the steps over which a factor chi per step changes a quantity by e
    (``-1/log chi`` for a decay, ``1/log chi`` for a growth; inf at |chi| = 1, 0 at chi = 0)."""
    a = abs(chi)
    if a == 1.0:
        return math.inf
    return 1.0 / abs(math.log(a)) if a > 0 else 0.0


def rnn_timescales(activation_="tanh", sigma_w2: float = 1.0, sigma_u2: float = 1.0,
                   sigma_b2: float = 0.0, q_x: float = 1.0, c_x: float = 1.0, *,
                   tol: float = 1e-14, max_steps: int = 100000) -> RNNTimescales:
    """Fixed point, ``chi_1``, ``chi_c`` and the time scales of a vanilla RNN with a stationary
    input (Chen et al. 2018, sec. 3: ``xi = -1/log chi`` at the fixed point; the input acts as a
    bias of variance ``sigma_u^2 q_x`` and cross-covariance ``sigma_u^2 q_x c_x``).

    ``q*`` by iterating the length map from ``q = drive`` (or 1) until its relative change is
    below ``tol`` (raises ValueError when it does not settle in ``max_steps`` steps, e.g. an
    unbounded activation in the chaotic phase, where q* = inf); ``c*`` likewise for the
    correlation map at ``q*``. The edge of chaos is ``chi_1(q*) = 1``."""
    act = activation(activation_)
    sw2 = positive_scalar("sigma_w2", sigma_w2)
    su2 = nonnegative_scalar("sigma_u2", sigma_u2)
    sb2 = nonnegative_scalar("sigma_b2", sigma_b2)
    qx = nonnegative_scalar("q_x", q_x)
    cx = _correlation("c_x", c_x)
    max_steps = check_int("max_steps", max_steps, 1)
    d, dx = su2 * qx + sb2, su2 * qx * cx + sb2
    if not d <= _DRIVE_MAX:
        raise ValueError(f"sigma_u2 * q_x + sigma_b2 must be <= {_DRIVE_MAX:g} (the range of the "
                         f"Gaussian tables), got {d!r}")
    q = d if d > 0 else 1.0
    for _ in range(max_steps):
        qn = float(maps.length_map(act, q, sw2, d)) if q > 0 else d
        if not math.isfinite(qn) or qn > 1e100:
            raise ValueError(f"rnn_timescales: q_e grows without bound (q* = inf) for "
                             f"{act!r} at sigma_w2 = {sw2:g}; no stationary state")
        if qn < 1e-280:                       # the state decays to zero (no drive)
            q = 0.0
            break
        if abs(qn - q) <= tol * qn:
            q = qn
            break
        q = qn
    else:
        raise ValueError(f"rnn_timescales: the length map did not settle in {max_steps} steps")
    if q == 0.0:
        # the state decays to zero: chi_1 is its limit at q -> 0, and the two sequences' states
        # coincide (c* = 1, chi_c = chi_1)
        chi1 = float(maps.chi_1(act, 1e-280, sw2))
        xi = _xi(chi1)
        return RNNTimescales(0.0, 1.0, chi1, chi1, xi, xi, _regime(chi1),
                             "q* = 0: the state decays to zero; chi_1 is its limit at q -> 0")
    chi1 = float(maps.chi_1(act, q, sw2))
    if dx == d and chi1 <= 1.0:
        c = 1.0                                   # identical drives: c* = 1 is attracting
    else:
        # the attracting root of f(c) = map(c) - c below 1: f(-1) >= 0, and f < 0 just below 1
        # (map(1) < 1 with unequal drives; slope chi_1 > 1 at c = 1 with equal ones)
        V = float(maps.length_map(act, q, 1.0, 0.0))

        def f(c: float) -> float:
            return min(1.0, max(-1.0, (sw2 * float(maps.rho(act, q, c)) * V + dx) / q)) - c

        hi = 1.0 if dx < d else 1.0 - 1e-9
        c = hi if f(hi) >= 0 else float(optimize.brentq(f, -1.0, hi, xtol=1e-15, rtol=1e-15))
    chic = float(maps.chi_c(act, q, c, sw2))
    return RNNTimescales(q, c, chi1, chic, _xi(chic), _xi(chi1), _regime(chi1))


def _regime(chi1: float) -> str:
    """ordered (chi_1 < 1), critical (within 1e-9 of 1) or chaotic."""
    return "critical" if abs(chi1 - 1.0) <= 1e-9 else ("ordered" if chi1 < 1 else "chaotic")


# ---------------------------------------------------------------------------------------------
# samplers


#: shared parameters drawn once per chunk: Streams object -> {(name, dtype): value}
_SHARED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _shared(rng, name: str, dtype, draw):
    """``draw(rng.named(name))``, drawn at the first use by these streams and kept (the same
    numbers as drawing again: the named stream restarts at every use)."""
    store = _SHARED.setdefault(rng, {})
    key = (name, np.dtype(dtype).str)
    if key not in store:
        store[key] = draw(rng.named(name))
    return store[key]


def input_vectors(rng, k: int, n_x: int, q_x: float, c_x: float, dtype) -> np.ndarray:
    """The inputs of one step, shape (S, k, n_x): per sample, k isotropic random directions
    (an orthonormal frame from a Gaussian draw of the forward stream) combined so that
    ``||x_a||^2 / n_x = q_x`` and ``<x_a, x_b> / n_x = q_x c_x`` exactly
    (``x = sqrt(q_x n_x) C^{1/2} Q^T``, ``C``: unit diagonal, ``c_x`` off it)."""
    if n_x < k and c_x != 1.0:
        raise ValueError(f"{k} input sequences with c_x < 1 need input_width >= {k}, got {n_x}")
    G = rng.normal((n_x, k), dtype)                            # (S, n_x, k)
    Q, R = np.linalg.qr(G.astype(np.float64))
    C = np.full((k, k), c_x)
    np.fill_diagonal(C, 1.0)
    w, V = np.linalg.eigh(C)
    root = (V * np.sqrt(np.clip(w, 0.0, None))) @ V.T
    X = math.sqrt(q_x * n_x) * np.einsum("ab,snb->san", root, Q)
    return X.astype(dtype)


class RecurrentLinear:
    """The linear part of :class:`RNNStep` in the dense engine: ``e = W h + 2^-shift (U x_t + b)``
    for the input ``2^shift h``; ``backward`` is ``W^T delta``. Draw order of the sample's
    forward stream: the step's input directions (when ``q_x > 0``); W, U, b come from their
    named streams (module docstring)."""

    engine = "dense"

    def __init__(self, layer: RNNStep, n_in: int):
        self.layer = layer
        self.n_in, self.n_out = int(n_in), int(layer.width)
        self.W = DenseSampler(Dense(layer.width, "linear", layer.sigma_w2, 0.0, layer.weights),
                              n_in)
        self.U = None
        if layer.q_x * layer.sigma_u2 > 0:
            self.U = DenseSampler(Dense(layer.width, "linear", layer.sigma_u2, 0.0),
                                  layer.input_width)

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        """The step's own state; W itself is held once per chunk (shared by all steps)."""
        return k * self.n_out * itemsize

    def forward(self, x: np.ndarray, rng, shift=None):
        la, dt = self.layer, x.dtype
        M, c = _shared(rng, la.share + ":W", dt, lambda r: self.W.draw_weights(r, dt))
        h = np.matmul(x, M.transpose(0, 2, 1))
        if c != 1.0:
            h *= dt.type(c)
        extra = None
        if self.U is not None:
            X = input_vectors(rng, x.shape[1], la.input_width, la.q_x, la.c_x, dt)
            MU, cu = _shared(rng, la.share + ":U", dt, lambda r: self.U.draw_weights(r, dt))
            extra = np.matmul(X, MU.transpose(0, 2, 1))
            if cu != 1.0:
                extra *= dt.type(cu)
        if la.sigma_b2 > 0:
            b = _shared(rng, la.share + ":b", dt,
                        lambda r: r.normal((self.n_out,), dt) * dt.type(math.sqrt(la.sigma_b2)))
            extra = b[:, None, :] if extra is None else extra + b[:, None, :]
        if extra is not None:
            h += ldexp_rows(np.broadcast_to(extra, h.shape), None if shift is None else -shift)
        return h, (M, c)

    def backward(self, delta: np.ndarray, ctx, rng) -> np.ndarray:
        return self.W.backward(delta, ctx, rng)


@register(RNNStep, "dense")
def _rnn_dense(layer: RNNStep, n_in: int) -> DenseRule:
    return DenseRule(RecurrentLinear(layer, n_in), layer.activation)


@register(RNNStep, "matrix-free")
def _rnn_matrix_free(layer: RNNStep, n_in: int):
    raise ValueError("engine='matrix-free' cannot sample a recurrent network: its recurrent "
                     "weights are shared across time steps, and the exact conditioning holds for "
                     "one use of each weight matrix; use engine='dense'")
