"""Gated recurrent cells unrolled in time: :class:`MinimalStep` (minimalRNN), :class:`GRUStep` and
:class:`LSTMStep`, one time step each with its parameters shared across steps by name, their
mean-field rules (kernel path) and their dense-engine samplers.

Models (notation of docs/theory/recurrent.md, "Gated cells"). Every gate ``k`` has the
pre-activation ``a^k_t = W_k h_{t-1} + U_k x_t + b_k`` with ``W_k ~ N(0, sigma_wk^2 / N)``
(gaussian) or ``sigma_wk O`` (orthogonal), ``U_k ~ N(0, sigma_uk^2 / n_x)`` and a per-unit bias
``b_k ~ N(mu_k, sigma_bk^2)`` (``sigma_bk^2 = 0``: the constant ``mu_k`` for every unit; a
:class:`Gate`); ``sigma`` is the logistic function.

* minimalRNN (Chen, Pennington & Schoenholz 2018, ICML, sec. 5; Chen 2017): the step's input
  is the mapped input ``z_t = Phi(x_t)`` itself (the input process, width N), ``u_t =
  sigma(W h_{t-1} + U z_t + mu)``, ``h_t = u_t h_{t-1} + (1 - u_t) z_t``.
* GRU (Cho et al. 2014; Gilboa et al. 2019, arXiv 1901.08987, sec. 3, with the update gate
  keeping the state): ``z = sigma(a^z)``, ``r = sigma(a^r)``, ``n = tanh(W_n (r h_{t-1}) + U_n x_t)``,
  ``h_t = z h_{t-1} + (1 - z) n``.
* LSTM (Hochreiter & Schmidhuber 1997; Gilboa et al. 2019): ``f, i, o = sigma(a^f), sigma(a^i),
  sigma(a^o)``, ``g = tanh(a^g)``, ``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)``. The step's
  output vector is ``[h_t; c_t]`` (width 2N) and its ``tracked_units = N``: the profile reports
  ``h`` (q, c, g of h; the loss is ``<v, h_T>``). The first step takes the network input as
  ``h_0`` (width N) with ``c_0 = 0``.

**Theory** (kernel path only; ``predict`` takes it for these cells). Mean field with *untied*
weights: every step's gate pre-activations are Gaussian, independent of each other and of the
unit's own state (Chen et al. 2018 sec. 3 and Gilboa et al. 2019 sec. 3 make this approximation;
with tied weights it is exact only for the vanilla cell's forward pass). The state's second
moments then follow exactly for the minimalRNN and GRU; for the LSTM the cell ``c_t`` is taken
as Gaussian inside ``tanh`` (``E[tanh(c_a) tanh(c_b)]``). Backward: gradient independence
(Schoenholz et al. 2017 sec. 4), and for the LSTM the forget gate is also taken independent of
``tanh'(c_t)`` (docs/theory/recurrent.md gives every formula and the measured size of each
approximation). A random bias ``b_k ~ N(mu_k, sigma_bk^2)``, the same for the k sequences,
adds ``sigma_bk^2`` to every entry of the gate's pre-activation covariance (the bias term of
Poole et al. 2016 eq. 3 / Chen et al. 2018 eq. 4); this is the only place it enters, forward and
backward (the backward maps read the gates' Gaussian moments only). The candidate biases have
mean zero (and a symmetric law), so every state has mean zero over its units.

**Samplers.** Dense engine only, the weights drawn from the streams named ``"<share>:<gate>:W"``
and ``"<share>:<gate>:U"``, the biases (when ``sigma_b2 > 0``) from ``"<share>:<gate>:b"`` (tied
across steps; ``rnn(..., tied=False)`` gives each step its own
name, which is the theory's untied model). Backprop through time by hand (checked against
finite differences in tests/test_gated.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import special

from .._validate import check_choice, check_int, finite_scalar, nonnegative_scalar, short_repr
from ..gaussian import expect, expect2
from ..kernel import Kernel
from ..network import MAX_WIDTH, KernelStep
from ..sampling import register
from .dense import Dense, DenseSampler
from .recurrent import RECURRENT_WEIGHTS, _correlation, _shared, input_vectors

__all__ = ["Gate", "MinimalStep", "GRUStep", "LSTMStep", "GATED_CELLS", "chrono_forget_bias"]

#: the gated cells of this module, by the name :func:`signalprop.architectures.rnn` uses
GATED_CELLS = ("minimal", "gru", "lstm")
#: largest |mu| of a gate bias: sigma(40) = 1 - 4e-18 is 1 in float64
_MU_MAX = 40.0
#: analyticity half-widths (strip |Im x| < tau) of the logistic function and tanh
_TAU_SIG, _TAU_TANH = math.pi, math.pi / 2


def _sig(v):
    return special.expit(v)


def _dsig(v):
    s = special.expit(v)
    return s * (1.0 - s)


def _dtanh(v):
    return 1.0 / np.cosh(np.clip(v, -350.0, 350.0)) ** 2


@dataclass(frozen=True)
class Gate:
    """One gate's initialisation: ``sigma_w2`` (>= 0): recurrent weight variance times N;
    ``sigma_u2`` (>= 0): input weight variance times n_x; ``mu``: the mean of its bias (finite,
    |mu| <= 40); ``sigma_b2`` (>= 0): the variance of its bias, drawn per unit ``b ~ N(mu,
    sigma_b2)`` and shared by the sequences and, when tied, the steps (0: the constant ``mu``)."""

    sigma_w2: float = 1.0
    sigma_u2: float = 1.0
    mu: float = 0.0
    sigma_b2: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "sigma_w2", nonnegative_scalar("sigma_w2", self.sigma_w2))
        object.__setattr__(self, "sigma_u2", nonnegative_scalar("sigma_u2", self.sigma_u2))
        mu = finite_scalar("mu (gate bias)", self.mu)
        if abs(mu) > _MU_MAX:
            raise ValueError(f"mu (gate bias) must lie in [-{_MU_MAX:g}, {_MU_MAX:g}], got {mu!r}")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma_b2", nonnegative_scalar("sigma_b2 (gate bias variance)",
                                                                self.sigma_b2))

    def pre_kernel(self, Kh: np.ndarray, Kx: np.ndarray) -> np.ndarray:
        """``sigma_w^2 K_h + sigma_u^2 K_x + sigma_b^2 1 1^T``: the covariance of ``a - mu`` over
        the k sequences (untied weights: Chen et al. 2018 eq. 4 for one gate; the bias is the
        same for every sequence, so it adds ``sigma_b^2`` to every entry)."""
        K = self.sigma_w2 * Kh + self.sigma_u2 * Kx
        return K + self.sigma_b2 if self.sigma_b2 else K

    def label(self) -> str:
        b = f", b2={self.sigma_b2:g}" if self.sigma_b2 else ""
        return f"({self.sigma_w2:g}, {self.sigma_u2:g}, {self.mu:g}{b})"


def _as_gate(name: str, g) -> Gate:
    if isinstance(g, Gate):
        return g
    if isinstance(g, dict):
        return Gate(**g)
    raise TypeError(f"{name} must be a Gate (sigma_w2, sigma_u2, mu, sigma_b2) or a dict of them, got "
                    f"{short_repr(g)}")


def chrono_forget_bias(t_max: float, units: int, rng=None) -> np.ndarray:
    """Chrono initialisation of the forget-gate biases (Tallec & Ollivier 2018, "Can recurrent
    neural networks warp time?", sec. 4): ``b_f = log U(1, T_max - 1)`` per unit (and ``b_i =
    -b_f``). Returned for use in experiments; the mean-field cells here take one bias per gate."""
    t_max = finite_scalar("t_max", t_max)
    if not t_max > 2.0:
        raise ValueError(f"t_max must be > 2 (U(1, T_max - 1) must not be empty), got {t_max!r}")
    units = check_int("units", units, 1, MAX_WIDTH)
    rng = np.random.default_rng(rng)
    return np.log(rng.uniform(1.0, t_max - 1.0, size=units))


# ---------------------------------------------------------------------------------------------
# Gaussian moments of the gates


def _moments(f, g, K: np.ndarray, mu: float, tau: float) -> np.ndarray:
    """``M_ab = E[f(mu + a_a) g(mu + a_b)]`` for ``a ~ N(0, K)`` (k x k, real scale): the diagonal
    by :func:`~signalprop.gaussian.expect`, the pairs by :func:`~signalprop.gaussian.expect2`
    (both ~1e-13 for functions analytic in the strip ``|Im| < tau``)."""
    k = K.shape[0]
    F = (lambda v: f(mu + v)) if mu else f
    G = (lambda v: g(mu + v)) if mu else g
    d = np.clip(np.diag(K), 0.0, None)
    M = np.empty((k, k))
    M[np.arange(k), np.arange(k)] = expect(lambda v: F(v) * G(v), d, tau=tau)
    if k > 1:
        ia, ib = np.where(~np.eye(k, dtype=bool))
        s = np.sqrt(d[ia] * d[ib])
        c = np.divide(K[ia, ib], s, out=np.ones_like(s), where=s > 0)
        M[ia, ib] = expect2(F, G, d[ia], d[ib], np.clip(c, -1.0, 1.0), tau=tau)
    return M


def _kernel_of(M: np.ndarray, means: bool) -> Kernel:
    """The :class:`Kernel` of a real-scale second-moment matrix ``M`` (symmetrised; mean zero)."""
    M = 0.5 * (M + M.T)
    d = np.diag(M).copy()
    if not np.all(d > 0) or not np.all(np.isfinite(d)):
        raise ValueError(f"a gated cell's state has second moments {d}: not positive and finite")
    s = np.sqrt(d)
    corr = np.clip(M / np.outer(s, s), -1.0, 1.0)
    np.fill_diagonal(corr, 1.0)
    return Kernel(np.log(d), corr, np.zeros(d.size) if means else None)


def _hadamard(R: np.ndarray):
    """The backward map ``Pi -> R o Pi`` (``R`` bounded: no log factor is needed)."""
    return lambda P: (0.0, P * R)


# ---------------------------------------------------------------------------------------------
# the cells


@dataclass(frozen=True)
class _GatedStep:
    """Fields and protocol members shared by the gated cells (see the module docstring)."""

    width: int
    q_x: float = 1.0
    c_x: float = 0.0
    weights: str = "gaussian"
    input_width: Optional[int] = None
    share: str = "rnn"
    tied: bool = True

    needs_mean = False
    capabilities = frozenset()
    _GATES = ()

    def __post_init__(self):
        object.__setattr__(self, "width", check_int("width", self.width, 1, MAX_WIDTH))
        object.__setattr__(self, "q_x", nonnegative_scalar("q_x", self.q_x))
        object.__setattr__(self, "c_x", _correlation("c_x", self.c_x))
        check_choice("weights", self.weights, RECURRENT_WEIGHTS)
        nx = self.width if self.input_width is None else self.input_width
        object.__setattr__(self, "input_width", check_int("input_width", nx, 1, MAX_WIDTH))
        if not (isinstance(self.share, str) and self.share):
            raise TypeError(f"share must be a non-empty name (str), got {short_repr(self.share)}")
        if not isinstance(self.tied, bool):
            raise TypeError(f"tied must be True or False, got {short_repr(self.tied)}")
        for name in self._GATES:
            object.__setattr__(self, name, _as_gate(name, getattr(self, name)))

    @property
    def state_width(self) -> int:
        """N, the width of ``h``."""
        return self.width

    def gates(self) -> dict:
        return {name: getattr(self, name) for name in self._GATES}

    def check_input(self, n_in: int) -> None:
        if n_in != self.state_width:
            raise ValueError(f"a recurrent step maps the state to itself: its state has width "
                             f"{self.state_width} but its input (h_{{t-1}}) has width {n_in}")

    def same_rule(self, other) -> bool:
        return self == other

    def with_width(self, width: int):
        nx = width if self.input_width == self.state_width else self.input_width
        kw = {f: getattr(self, f) for f in self.__dataclass_fields__}
        kw.update(width=width, input_width=nx)
        return type(self)(**kw)

    def shared_spec(self, n_in: int):
        """``(name, what must agree)``: all steps sharing ``share`` have equal gates and shapes."""
        return self.share, (type(self).__name__, self.state_width, self.input_width,
                            self.weights, tuple(self.gates().items()),
                            tuple(getattr(self, f, None) for f in ("chrono", "reset_after",
                                                                   "hidden_bias2")))

    def _input_kernel(self, k: int) -> np.ndarray:
        """``q_x C_x``: the second moments of the k sequences' inputs at this step."""
        C = np.full((k, k), self.c_x)
        np.fill_diagonal(C, 1.0)
        return self.q_x * C

    # -- one unit's process, for the dynamical mean field of tied weights (signalprop.dmft) --

    def _unit_fields(self, F, names: tuple, y: np.ndarray) -> dict:
        """The recurrent fields ``Z^{W_k y}`` of the gates ``names`` that all meet ``y`` at every
        step, drawn as one group (one shared basis; :meth:`UnitFields.fields`)."""
        live = [n for n in names if self.gates()[n].sigma_w2]
        vals = F.fields(tuple(f"{self.share}:{n}:W" for n in live),
                        tuple(self.gates()[n].sigma_w2 for n in live), y) if live else []
        return dict(zip(live, vals))

    def _unit_pre(self, F, name: str, y: np.ndarray, recurrent: bool = True,
                  wy: Optional[dict] = None) -> np.ndarray:
        """Gate ``name``'s pre-activation on the paths of one unit (``y``: (M, k), the vector its
        recurrent matrix meets): ``mu + Z^{W y} + Z^{U x_t} + Z^b`` (docs/theory/recurrent.md,
        "Tied weights"). ``F`` draws the Gaussian fields: ``F.field(key, sigma2, y)`` jointly
        with every earlier use of ``key`` (the same matrix), ``F.gaussian(cov)`` fresh (the input
        directions of different steps are independent), ``F.bias(key, sigma2)`` per path and fixed
        for all uses of ``key``. Keys are the samplers' stream names, so a tied cell reuses one
        field and an untied one (its own ``share`` per step) starts afresh."""
        g = self.gates()[name]
        a = np.full(y.shape, g.mu)
        if wy is not None:
            a = a + wy.get(name, 0.0)               # drawn with its group (_unit_fields)
        elif g.sigma_w2 and recurrent:
            a = a + F.field(f"{self.share}:{name}:W", g.sigma_w2, y)
        if g.sigma_u2 and self.q_x:
            a = a + F.gaussian(g.sigma_u2 * self._input_kernel(y.shape[1]))
        if g.sigma_b2:
            a = a + F.bias(f"{self.share}:{name}:b", g.sigma_b2)
        return a

    def _unit_back(self, F, name: str, d: np.ndarray):
        """``Z^{W~^T d}``: the backward field of gate ``name`` (gradient independence: ``W~`` is an
        independent copy of ``W``, itself tied across steps; Yang 2020, Tensor Programs II, the
        GIA check, which holds because the readout ``v`` is independent with mean zero)."""
        g = self.gates()[name]
        return F.field(f"{self.share}:{name}:W^T", g.sigma_w2, d) if g.sigma_w2 else 0.0

    def label(self) -> str:
        g = ", ".join(f"{n}={v.label()}" for n, v in self.gates().items())
        w = "" if self.weights == "gaussian" else f", {self.weights}"
        ch = getattr(self, "chrono", None)
        w += "" if ch is None else f", chrono={ch:g}"
        if getattr(self, "reset_after", False):
            w += f", reset_after, hidden_bias2={self.hidden_bias2:g}"
        return (f"{type(self).__name__}({self.state_width}, {g}, q_x={self.q_x:g}, "
                f"c_x={self.c_x:g}{w}, share={self.share!r})")


@dataclass(frozen=True)
class MinimalStep(_GatedStep):
    """One step of a minimalRNN, ``h_t = u h_{t-1} + (1 - u) z_t``, ``u = sigma(W h_{t-1} + U z_t +
    mu)`` (Chen et al. 2018 sec. 5). ``gate``: the update gate; ``q_x``, ``c_x``: statistics of
    ``z_t`` (width N: ``input_width`` must equal ``width``)."""

    gate: Gate = Gate(1.0, 1.0, 0.0)
    _GATES = ("gate",)

    def __post_init__(self):
        super().__post_init__()
        if self.input_width != self.width:
            raise ValueError(f"input_width of a minimalRNN must equal width ({self.width}): "
                             f"z_t enters h_t directly, got {self.input_width}")

    def kernel_step(self, kernel: Kernel, n_in: int, cache: dict) -> KernelStep:
        """``K_h' = E[u_a u_b] K_h + E[(1-u_a)(1-u_b)] K_z`` with ``a_u ~ N(mu, sigma_w^2 K_h +
        sigma_u^2 K_z)``; back ``Pi' = (E[u_a u_b] + sigma_w^2 E[sigma'_a sigma'_b] (K_h + K_z)) o Pi``
        (the Jacobian ``diag(u) + diag(sigma'(a)(h - z)) W``; docs/theory/recurrent.md)."""
        Kh, Kz = kernel.matrix(), self._input_kernel(kernel.k)
        g = self.gate
        Ka = g.pre_kernel(Kh, Kz)
        U1 = _moments(_sig, _sig, Ka, g.mu, _TAU_SIG)
        U0 = _moments(lambda v: 1.0 - _sig(v), lambda v: 1.0 - _sig(v), Ka, g.mu, _TAU_SIG)
        D = _moments(_dsig, _dsig, Ka, g.mu, _TAU_SIG)
        out = _kernel_of(U1 * Kh + U0 * Kz, kernel.mu is not None)
        back = _hadamard(U1 + g.sigma_w2 * D * (Kh + Kz))
        return KernelStep(out, out, lambda P: (0.0, P), back)

    def unit_forward(self, state: tuple, F) -> tuple:
        """One unit's step on the paths (``state = (h,)``, (M, k)): ``h' = u h + (1 - u) z`` with
        the input's own coordinates ``z`` fresh per step; the backward context keeps input 0."""
        h = state[0]
        z = F.gaussian(self._input_kernel(h.shape[1]))
        a = self._unit_pre(F, "gate", h)
        u = _sig(a)
        return (u * h + (1.0 - u) * z,), (u[:, :1], a[:, :1], (h - z)[:, :1])

    def unit_backward(self, grad: tuple, ctx: tuple, F) -> tuple:
        """``dh = u dh' + W~^T (sigma'(a) (h - z) dh')`` (the sampler's backward, per unit)."""
        u, a, diff = ctx
        gh = grad[0]
        return (u * gh + self._unit_back(F, "gate", _dsig(a) * diff * gh),)


@dataclass(frozen=True)
class GRUStep(_GatedStep):
    """One GRU step, ``h_t = z h_{t-1} + (1 - z) tanh(W_n (r h_{t-1}) + U_n x_t)`` with ``z =
    sigma(a^z)``, ``r = sigma(a^r)`` (``update``, ``reset``, ``candidate``: their gates; the
    candidate's ``mu`` must be 0). ``reset_after``: the variant of PyTorch's ``nn.GRU`` and cuDNN,
    ``n = tanh(U_n x_t + b_n + r (W_n h_{t-1} + b_hn))`` (the reset gate applied after the
    recurrent product), with ``b_hn ~ N(0, hidden_bias2)`` per unit (``candidate.sigma_b2`` is then
    the variance of the outer ``b_n``); its theory is :func:`signalprop.predict_tied` only."""

    update: Gate = Gate(1.0, 1.0, 0.0)
    reset: Gate = Gate(1.0, 1.0, 0.0)
    candidate: Gate = Gate(1.0, 1.0, 0.0)
    reset_after: bool = False
    hidden_bias2: float = 0.0
    _GATES = ("update", "reset", "candidate")

    def __post_init__(self):
        super().__post_init__()
        if self.candidate.mu != 0.0:
            raise ValueError(f"the candidate's bias mu must be 0 (states of mean zero), got "
                             f"{self.candidate.mu!r}")
        if not isinstance(self.reset_after, bool):
            raise TypeError(f"reset_after must be True or False, got {short_repr(self.reset_after)}")
        hb = nonnegative_scalar("hidden_bias2", self.hidden_bias2)
        if hb and not self.reset_after:
            raise ValueError("hidden_bias2 (the bias inside the reset product) exists only with "
                             "reset_after=True")
        object.__setattr__(self, "hidden_bias2", hb)

    def kernel_step(self, kernel: Kernel, n_in: int, cache: dict) -> KernelStep:
        """``K_h' = E[z z] K_h + E[(1-z)(1-z)] E[n n]``, ``a^n ~ N(0, sigma_wn^2 E[r r] o K_h +
        sigma_un^2 K_x + sigma_bn^2)``; back: ``Pi' = (Z1 + sigma_wz^2 D_z (K_h + K_n) + (R1 + sigma_wr^2 D_r
        K_h) sigma_wn^2 Z0 T_n) o Pi`` (docs/theory/recurrent.md, "GRU")."""
        if self.reset_after:
            raise ValueError("reset_after (PyTorch's GRU): the untied mean field here is for the "
                             "reset gate applied before the product; use signalprop.predict_tied "
                             "(rnn(..., tied=False) for untied weights)")
        Kh, Kx = kernel.matrix(), self._input_kernel(kernel.k)
        z, r, n = self.update, self.reset, self.candidate
        Kz, Kr = z.pre_kernel(Kh, Kx), r.pre_kernel(Kh, Kx)
        Z1 = _moments(_sig, _sig, Kz, z.mu, _TAU_SIG)
        Z0 = _moments(lambda v: 1.0 - _sig(v), lambda v: 1.0 - _sig(v), Kz, z.mu, _TAU_SIG)
        Dz = _moments(_dsig, _dsig, Kz, z.mu, _TAU_SIG)
        R1 = _moments(_sig, _sig, Kr, r.mu, _TAU_SIG)
        Dr = _moments(_dsig, _dsig, Kr, r.mu, _TAU_SIG)
        Kn = n.sigma_w2 * R1 * Kh + n.sigma_u2 * Kx + n.sigma_b2
        Hn = _moments(np.tanh, np.tanh, Kn, 0.0, _TAU_TANH)
        Tn = _moments(_dtanh, _dtanh, Kn, 0.0, _TAU_TANH)
        out = _kernel_of(Z1 * Kh + Z0 * Hn, kernel.mu is not None)
        Pv = n.sigma_w2 * Z0 * Tn
        back = _hadamard(Z1 + z.sigma_w2 * Dz * (Kh + Hn) + (R1 + r.sigma_w2 * Dr * Kh) * Pv)
        return KernelStep(out, out, lambda P: (0.0, P), back)

    def unit_forward(self, state: tuple, F) -> tuple:
        """One unit's GRU step on the paths (``state = (h,)``); ``W_n`` meets ``r h``."""
        h = state[0]
        names = ("update", "reset", "candidate") if self.reset_after else ("update", "reset")
        wy = self._unit_fields(F, names, h)         # the reset-after candidate reads h too
        z = _sig(self._unit_pre(F, "update", h, wy=wy))
        ar = self._unit_pre(F, "reset", h, wy=wy)
        r = _sig(ar)
        if self.reset_after:                                # n = tanh(U x + b + r (W h + b_hn))
            wh = np.zeros_like(h) + wy.get("candidate", 0.0)
            if self.hidden_bias2:
                wh = wh + F.bias(f"{self.share}:candidate:bh", self.hidden_bias2)
            an = self._unit_pre(F, "candidate", h, recurrent=False) + r * wh
        else:
            an = self._unit_pre(F, "candidate", r * h)
            wh = h                                      # d an / d r = W_n h reads back as h
        n = np.tanh(an)
        return (z * h + (1.0 - z) * n,), tuple(v[:, :1] for v in (h, z, ar, r, an, n, wh))

    def unit_backward(self, grad: tuple, ctx: tuple, F) -> tuple:
        """The GRU's backward per unit (as :class:`GRUSampler`, with ``W~^T`` fields)."""
        h, z, ar, r, an, n, wh = ctx
        gh = grad[0]
        dn = gh * (1.0 - z) * _dtanh(an)
        out = gh * z + self._unit_back(F, "update", gh * (h - n) * z * (1.0 - z))
        if self.reset_after:            # d an / d (W h) = r, d an / d r = W h + b_hn
            out = out + self._unit_back(F, "candidate", dn * r)
            return (out + self._unit_back(F, "reset", dn * wh * _dsig(ar)),)
        v = self._unit_back(F, "candidate", dn)                        # d loss / d (r h)
        return (out + v * r + self._unit_back(F, "reset", v * h * _dsig(ar)),)


@dataclass(frozen=True)
class LSTMStep(_GatedStep):
    """One LSTM step (module docstring): ``forget``, ``input``, ``output``, ``candidate`` gates
    (the candidate's ``mu`` must be 0). Output ``[h_t; c_t]`` (``width`` = 2N, ``tracked_units``
    = N); the first step (input width N) starts from ``c_0 = 0``. ``width`` is given as 2N."""

    forget: Gate = Gate(1.0, 1.0, 1.0)
    input: Gate = Gate(1.0, 1.0, 0.0)
    output: Gate = Gate(1.0, 1.0, 0.0)
    candidate: Gate = Gate(1.0, 1.0, 0.0)
    chrono: Optional[float] = None
    _GATES = ("forget", "input", "output", "candidate")

    def __post_init__(self):
        w = check_int("width", self.width, 2, MAX_WIDTH)
        if w % 2:
            raise ValueError(f"width of an LSTMStep is 2N (the vector [h; c]), an even number, "
                             f"got {w}")
        if self.input_width is None:
            object.__setattr__(self, "input_width", w // 2)
        super().__post_init__()
        if self.candidate.mu != 0.0:
            raise ValueError(f"the candidate's bias mu must be 0 (states of mean zero), got "
                             f"{self.candidate.mu!r}")
        if self.chrono is not None:
            t_max = finite_scalar("chrono (T_max)", self.chrono)
            if not t_max > 2.0:
                raise ValueError(f"chrono (T_max) must be > 2 (U(1, T_max - 1) must not be "
                                 f"empty), got {t_max!r}")
            object.__setattr__(self, "chrono", t_max)

    def _chrono(self, F):
        """Chrono initialisation (Tallec & Ollivier 2018, sec. 4): per unit ``b = log u``, ``u ~
        U(1, T_max - 1)``, added to the forget gate's bias and subtracted from the input gate's
        (one draw per unit, from the stream ``<share>:chrono``)."""
        span = self.chrono - 2.0
        return F.quenched(f"{self.share}:chrono",
                          lambda rng, M: np.log1p(span * rng.random((M, 1))))

    @property
    def state_width(self) -> int:
        return self.width // 2

    @property
    def tracked_units(self) -> int:
        """N: the profile reports the first N units of ``[h; c]`` (``h``)."""
        return self.width // 2

    def check_input(self, n_in: int) -> None:
        if n_in not in (self.state_width, self.width):
            raise ValueError(f"an LSTM step reads [h; c] of width {self.width} (or h_0 of width "
                             f"{self.state_width} at the first step), got width {n_in}")

    def with_width(self, width: int):
        """The same step with state width N = ``width`` (output 2N)."""
        nx = width if self.input_width == self.state_width else self.input_width
        kw = {f: getattr(self, f) for f in self.__dataclass_fields__}
        kw.update(width=2 * width, input_width=nx)
        return LSTMStep(**kw)

    def kernel_step(self, kernel: Kernel, n_in: int, cache: dict) -> KernelStep:
        """Forward (untied weights, ``c`` Gaussian inside tanh; Gilboa et al. 2019 sec. 3):
        ``K_c' = F o K_c + I o G``, ``K_h' = O o E[tanh(c_a) tanh(c_b)]`` with ``F = E[f_a f_b]``,
        ``I``, ``O`` likewise and ``G = E[g_a g_b]``; ``E[h_a c_b] = E[o] E[tanh'(c_a)] K_c'_ab``
        (Stein). Backward (gradient independence): ``Pi_dc = Pi_cc + O T' Pi_hh + cross``,
        ``Pi_c = F Pi_dc``, ``Pi_h = sigma_wo^2 D_o Th Pi_hh + (sigma_wf^2 D_f K_c + sigma_wi^2
        D_i G + sigma_wg^2 I T_g) Pi_dc`` (all Hadamard products; docs/theory/recurrent.md)."""
        if self.chrono is not None:
            raise ValueError("chrono initialisation gives every unit its own forget bias: the "
                             "untied mean field here takes one bias law per gate (Gaussian); use "
                             "signalprop.predict_tied (the tied theory, any per-unit bias law)")
        first = n_in == self.state_width
        k = kernel.k if first else kernel.k // 2
        M = kernel.matrix()
        Kh = M if first else M[:k, :k]
        Kc = np.zeros((k, k)) if first else M[k:, k:]
        Kx = self._input_kernel(k)
        f, i, o, g = self.forget, self.input, self.output, self.candidate
        Kf, Ki, Ko, Kg = (gt.pre_kernel(Kh, Kx) for gt in (f, i, o, g))
        F = _moments(_sig, _sig, Kf, f.mu, _TAU_SIG)
        I = _moments(_sig, _sig, Ki, i.mu, _TAU_SIG)
        O = _moments(_sig, _sig, Ko, o.mu, _TAU_SIG)
        G = _moments(np.tanh, np.tanh, Kg, 0.0, _TAU_TANH)
        Kc2 = F * Kc + I * G
        Th = _moments(np.tanh, np.tanh, Kc2, 0.0, _TAU_TANH)
        Tp = _moments(_dtanh, _dtanh, Kc2, 0.0, _TAU_TANH)
        Kh2 = O * Th
        Eo = np.array([float(expect(lambda v: _sig(o.mu + v), Ko[a, a], tau=_TAU_SIG))
                       for a in range(k)])
        Et = np.array([float(expect(_dtanh, Kc2[a, a], tau=_TAU_TANH)) for a in range(k)])
        m = Eo * Et                                     # E[o tanh'(c)] per sequence
        Khc = m[:, None] * Kc2                           # E[h_a c_b] (Stein's lemma)
        out = _kernel_of(np.block([[Kh2, Khc], [Khc.T, Kc2]]), kernel.mu is not None)
        Df = _moments(_dsig, _dsig, Kf, f.mu, _TAU_SIG)
        Di = _moments(_dsig, _dsig, Ki, i.mu, _TAU_SIG)
        Do = _moments(_dsig, _dsig, Ko, o.mu, _TAU_SIG)
        Tg = _moments(_dtanh, _dtanh, Kg, 0.0, _TAU_TANH)
        Rh = o.sigma_w2 * Do * Th
        Rc = f.sigma_w2 * Df * Kc + i.sigma_w2 * Di * G + g.sigma_w2 * I * Tg
        OT = O * Tp

        def back(P: np.ndarray) -> tuple:
            Phh, Pcc, Phc = P[:k, :k], P[k:, k:], P[:k, k:]
            Pdc = Pcc + OT * Phh + Phc.T * m[None, :] + Phc * m[:, None]
            Ph = Rh * Phh + Rc * Pdc
            if first:
                return 0.0, Ph
            Z = np.zeros((k, k))
            return 0.0, np.block([[Ph, Z], [Z, F * Pdc]])

        return KernelStep(out, out, lambda P: (0.0, P), back)

    def unit_forward(self, state: tuple, F) -> tuple:
        """One unit's LSTM step on the paths: ``state = (h, c)``, or ``(h_0,)`` at the first step
        (``c_0 = 0``); returns ``((h', c'), ctx)``."""
        h = state[0]
        c = state[1] if len(state) > 1 else np.zeros_like(h)
        wy = self._unit_fields(F, ("forget", "input", "output", "candidate"), h)
        af, ai, ao = (self._unit_pre(F, g, h, wy=wy) for g in ("forget", "input", "output"))
        if self.chrono is not None:
            b = self._chrono(F)
            af, ai = af + b, ai - b
        f, i, o = _sig(af), _sig(ai), _sig(ao)
        g = np.tanh(self._unit_pre(F, "candidate", h, wy=wy))
        c2 = f * c + i * g
        tc = np.tanh(c2)
        return (o * tc, c2), tuple(v[:, :1] for v in (c, f, i, o, g, tc)) + (len(state) > 1,)

    def unit_backward(self, grad: tuple, ctx: tuple, F) -> tuple:
        """The LSTM's backward per unit (as :class:`LSTMSampler`): ``dc = dc' + dh' o tanh'(c')``,
        ``dh = sum_k W~_k^T delta_k``, and ``f dc`` to the previous cell."""
        c, f, i, o, g, tc, has_c = ctx
        gh = grad[0]
        dc = (grad[1] if len(grad) > 1 else 0.0) + gh * o * (1.0 - tc * tc)
        dh = (self._unit_back(F, "output", gh * tc * o * (1.0 - o))
              + self._unit_back(F, "forget", dc * c * f * (1.0 - f))
              + self._unit_back(F, "input", dc * g * i * (1.0 - i))
              + self._unit_back(F, "candidate", dc * i * (1.0 - g * g))) + np.zeros_like(gh)
        return (dh, dc * f) if has_c else (dh,)


# ---------------------------------------------------------------------------------------------
# samplers (dense engine; real scale: gated states are bounded)


class _GatedSampler:
    """Shared machinery: the shared weights of each gate and the step's inputs."""

    engine = "dense"
    couples_inputs = False

    def __init__(self, layer: _GatedStep, n_in: int):
        self.layer = layer
        self.n_in, self.n_out = int(n_in), int(layer.width)
        N, nx = layer.state_width, layer.input_width
        self.N = N
        self.W, self.U, self.b = {}, {}, {}
        for name, g in layer.gates().items():
            if g.sigma_b2 > 0:
                self.b[name] = math.sqrt(g.sigma_b2)
            if g.sigma_w2 > 0:
                self.W[name] = DenseSampler(Dense(N, "linear", g.sigma_w2, 0.0, layer.weights), N)
            if g.sigma_u2 > 0 and layer.q_x > 0:
                self.U[name] = DenseSampler(Dense(N, "linear", g.sigma_u2, 0.0), nx)

    def ctx_nbytes(self, k: int, itemsize: int) -> int:
        """The step's vectors, plus its own weights when untied (tied ones are held once)."""
        own = 0 if self.layer.tied else (len(self.W) * self.N + len(self.U)
                                         * self.layer.input_width + len(self.b)) * self.N
        return (12 * k * self.n_out + own) * itemsize

    def _weights(self, rng, dt) -> dict:
        """``{(gate, "W"|"U"): (M, c)}``, drawn once per chunk from the named streams."""
        out = {}
        for kind, table in (("W", self.W), ("U", self.U)):
            for name, smp in table.items():
                key = f"{self.layer.share}:{name}:{kind}"
                if not self.layer.tied:         # used by this step alone: not kept
                    out[name, kind] = smp.draw_weights(rng.named(key), dt)
                    continue
                out[name, kind] = _shared(rng, key, dt, lambda r, s=smp: s.draw_weights(r, dt))
        for name, sd in self.b.items():                 # b - mu ~ N(0, sigma_b2) per unit
            key = f"{self.layer.share}:{name}:b"
            draw = (lambda r, s=sd: r.normal((self.N,), dt) * dt.type(s))
            out[name, "b"] = (draw(rng.named(key)) if not self.layer.tied
                              else _shared(rng, key, dt, draw))
        hb = getattr(self.layer, "hidden_bias2", 0.0)
        if hb:                                          # reset-after GRU: b_hn ~ N(0, hb)
            key = f"{self.layer.share}:candidate:bh"
            draw = (lambda r, s=math.sqrt(hb): r.normal((self.N,), dt) * dt.type(s))
            out["candidate", "bh"] = (draw(rng.named(key)) if not self.layer.tied
                                      else _shared(rng, key, dt, draw))
        t_max = getattr(self.layer, "chrono", None)
        if t_max is not None:                           # chrono: +b forget, -b input, per unit
            key = f"{self.layer.share}:chrono"
            span = dt.type(t_max - 2.0)
            draw = (lambda r: np.log1p(span * r.uniform((self.N,), dt)))
            b = draw(rng.named(key)) if not self.layer.tied else _shared(rng, key, dt, draw)
            out["forget", "b"] = out.get(("forget", "b"), 0.0) + b
            out["input", "b"] = out.get(("input", "b"), 0.0) - b
        return out

    def _inputs(self, rng, k: int, dt):
        la = self.layer
        if la.q_x == 0:
            return None
        return input_vectors(rng, k, la.input_width, la.q_x, la.c_x, dt)

    @staticmethod
    def _apply(Mc, v):
        """``W v`` for rows ``v`` (S, k, n) with ``W = c M`` per sample."""
        M, c = Mc
        out = np.matmul(v, M.transpose(0, 2, 1))
        return out * out.dtype.type(c) if c != 1.0 else out

    @staticmethod
    def _apply_t(Mc, d):
        """``W^T d`` for one row per sample (S, n)."""
        M, c = Mc
        out = np.matmul(d[:, None, :], M)[:, 0]
        return out * out.dtype.type(c) if c != 1.0 else out

    def _pre(self, wts, name: str, h, X, recurrent: bool = True):
        """``a = W h + U x + b`` of gate ``name`` (S, k, N); ``b = mu`` plus, when ``sigma_b2 > 0``,
        the per-unit draw shared by the k sequences (``recurrent=False``: without ``W h``)."""
        g = self.layer.gates()[name]
        a = np.full(h.shape[:2] + (self.N,), g.mu, dtype=h.dtype)
        if (name, "b") in wts:
            a += wts[name, "b"][:, None, :]
        if (name, "W") in wts and recurrent:
            a += self._apply(wts[name, "W"], h)
        if (name, "U") in wts and X is not None:
            a += self._apply(wts[name, "U"], X)
        return a

    def _back(self, wts, name: str, d):
        """``W^T d`` of gate ``name`` (0 when it has no recurrent weights)."""
        return self._apply_t(wts[name, "W"], d) if (name, "W") in wts else 0.0

    def to_tracked(self, gy, ctx):
        return gy


class MinimalSampler(_GatedSampler):
    def forward(self, x, rng):
        wts = self._weights(rng, x.dtype)
        Z = self._inputs(rng, x.shape[1], x.dtype)
        Zr = np.zeros_like(x) if Z is None else Z
        a = self._pre(wts, "gate", x, Z)
        u = _sig(a)
        h = u * x + (1.0 - u) * Zr
        return h, h, (wts, u[:, 0], a[:, 0], x[:, 0] - Zr[:, 0])

    def backward(self, gt, ctx, rng):
        wts, u, a, diff = ctx
        return u * gt + self._back(wts, "gate", _dsig(a) * diff * gt)


class GRUSampler(_GatedSampler):
    def forward(self, x, rng):
        wts = self._weights(rng, x.dtype)
        X = self._inputs(rng, x.shape[1], x.dtype)
        z = _sig(self._pre(wts, "update", x, X))
        ar = self._pre(wts, "reset", x, X)
        r = _sig(ar)
        if self.layer.reset_after:                      # n = tanh(U x + b + r (W h + b_hn))
            wh = np.zeros_like(x)
            if ("candidate", "W") in wts:
                wh = wh + self._apply(wts["candidate", "W"], x)
            if ("candidate", "bh") in wts:
                wh = wh + wts["candidate", "bh"][:, None, :]
            an = self._pre(wts, "candidate", x, X, recurrent=False) + r * wh
        else:
            an = self._pre(wts, "candidate", r * x, X)
            wh = x
        n = np.tanh(an)
        h = z * x + (1.0 - z) * n
        ctx = (wts, x[:, 0], z[:, 0], ar[:, 0], r[:, 0], an[:, 0], n[:, 0], wh[:, 0])
        return h, h, ctx

    def backward(self, gt, ctx, rng):
        wts, h, z, ar, r, an, n, wh = ctx
        dn = gt * (1.0 - z) * _dtanh(an)
        out = gt * z + self._back(wts, "update", gt * (h - n) * z * (1.0 - z))
        if self.layer.reset_after:      # d an / d (W h) = r, d an / d r = W h + b_hn
            out = out + self._back(wts, "candidate", dn * r)
            return out + self._back(wts, "reset", dn * wh * _dsig(ar))
        v = self._back(wts, "candidate", dn)                 # d loss / d (r h)
        return out + v * r + self._back(wts, "reset", v * h * _dsig(ar))


class LSTMSampler(_GatedSampler):
    def forward(self, x, rng):
        N = self.N
        wts = self._weights(rng, x.dtype)
        h = x[..., :N]
        c = x[..., N:] if self.n_in == 2 * N else np.zeros_like(h)
        X = self._inputs(rng, x.shape[1], x.dtype)
        af, ai, ao = (self._pre(wts, g, h, X) for g in ("forget", "input", "output"))
        f, i, o = _sig(af), _sig(ai), _sig(ao)
        g = np.tanh(self._pre(wts, "candidate", h, X))
        c2 = f * c + i * g
        tc = np.tanh(c2)
        y = np.concatenate([o * tc, c2], axis=-1)
        ctx = (wts, c[:, 0], f[:, 0], i[:, 0], o[:, 0], g[:, 0], tc[:, 0])
        return y, y, ctx

    def backward(self, gt, ctx, rng):
        N = self.N
        wts, c, f, i, o, g, tc = ctx
        gh, gc = gt[:, :N], gt[:, N:]
        dc = gc + gh * o * (1.0 - tc * tc)
        dh = (self._back(wts, "output", gh * tc * o * (1.0 - o))
              + self._back(wts, "forget", dc * c * f * (1.0 - f))
              + self._back(wts, "input", dc * g * i * (1.0 - i))
              + self._back(wts, "candidate", dc * i * (1.0 - g * g)))
        dh = dh + np.zeros_like(gh)
        if self.n_in == N:
            return dh
        return np.concatenate([dh, dc * f], axis=-1)


@register(MinimalStep, "dense")
def _minimal_dense(layer, n_in):
    return MinimalSampler(layer, n_in)


@register(GRUStep, "dense")
def _gru_dense(layer, n_in):
    return GRUSampler(layer, n_in)


@register(LSTMStep, "dense")
def _lstm_dense(layer, n_in):
    return LSTMSampler(layer, n_in)


def _no_matrix_free(layer, n_in):
    raise ValueError("engine='matrix-free' cannot sample a recurrent network: its weights are "
                     "shared across time steps (exact conditioning holds for one use of each "
                     "matrix); use engine='dense'")


for _kind in (MinimalStep, GRUStep, LSTMStep):
    register(_kind, "matrix-free")(_no_matrix_free)
