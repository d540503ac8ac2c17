"""The leading (order 1/N) finite-width correction to the mean-field profile of a fully connected
network, a network of residual blocks ``alpha x + beta phi(W x + b)`` or a post-activation
LayerNorm/RMSNorm network: :func:`nlo_correction` and :func:`corrected`.

Derivation, checks and limits: ``docs/theory/finite-width-nlo.md``. Summary (notation of
CONVENTIONS.md; ``K^l`` the infinite-width ``q^l`` of :func:`~signalprop.meanfield.predict`):

*Forward.* Given ``x^{l-1}`` the units of ``h^l`` are i.i.d. Gaussian with the conditional kernel
``G^l = sigma_w^2 X^{l-1}/N_{l-1} + sigma_b^2`` (``X`` the Gram matrix of the inputs' ``x``), so
``G`` is a Markov chain, ``G^{l+1} = F_l(G^l) + sigma_w^2 (sample mean of N_l centred unit
terms)``. A second-order delta method gives, with ``m_l = E[G^l] - K^l`` and ``v_l = Cov(G^l)``
(both O(1/N); ``G^1`` is exact),

    m_{l+1} = F'_l m_l + (1/2) F''_l : v_l,      v_{l+1} = F'_l v_l F'_l^T + sigma_w^4 Cov_l/N_l,

Yaida 2020 (arXiv 1910.00019) and Roberts, Yaida & Hanin 2022 (PDLT, arXiv 2106.10165), ch. 4:
``v`` is their four-point vertex ``V/n`` and ``m`` their NLO kernel ``K^{{1}}/n``. One input:
``F' = sigma_w^2 dE[phi^2]/dK``, ``F'' = sigma_w^2 d^2E[phi^2]/dK^2`` and
``Cov = E[phi^4] - E[phi^2]^2``. Since ``E[q_hat^l | G^l] = G^l``, ``E[q_hat^l] = K^l + m_l``.

*Backward* (derived in the note; exact given the forward pass). With the rows of ``W^{l+1}``
conditioned on ``h^{l+1}``, ``Gamma^l = E[||delta^l||^2 | forward]`` and
``Theta^l = E[(h^l.delta^l)^2 | forward]/G^l - Gamma^l`` obey the linear recursion

    Gamma^l = s S1 Gamma^{l+1} + (s^2 S2/G^{l+1}) Theta^{l+1},
    Theta^l = s (U/G^l - S1) Gamma^{l+1} + (s^2/G^{l+1}) (T^2/G^l - S2) Theta^{l+1},

``s = sigma_w^2/N_l``, sums over the units of layer ``l``: ``S1 = sum phi'^2``,
``S2 = sum phi^2 phi'^2``, ``U = sum h^2 phi'^2``, ``T = sum h phi phi'``; ``Gamma^L = N_L``,
``Theta^L`` has mean 0. ``T ~ N E[h phi phi']`` is the rank-one direction the forward signal and
the gradient share (large when phi has a large mean); the alignment
``theta^l = Theta^l/Gamma^l`` obeys ``theta^l = 2B_l + (a_l^2/chi_l)(K^l/K^{l+1}) theta^{l+1}``
(``2B = E[z^2 phi'^2]/E[phi'^2] - 1``, ``a_l`` the length map's slope, ``chi_l`` the gradient's
factor) and grows with depth where ``a^2 >= chi`` (the ``L^2/N`` of softplus). Expanding
``E[prod_k S1^k]`` to second order in the forward fluctuations gives ``dlog_g``.

*Residual blocks* (the note, section 6): the stream's (||x||^2/N, sum x/N) is a Markov chain
(the branch's h is independent of x given its norm); backward ``Sigma^{l-1} = a^2 Sigma + (ab
s/G)(Sigma u x^T + x u^T Sigma) + b^2 (s^2/G^2)(u^T Sigma u) x x^T + b^2 tr(W Sigma)(s I - s^2 x
x^T/G)`` exactly given the forward pass, its rank-two part carried at leading order in the
unit-level mean-field law (the mean direction enters through sum x/N and E[h phi']).
*LayerNorm/RMSNorm after every Dense layer* (section 7): ``||y||^2 = N`` makes the forward pass
exact; the backward is a product of independent per-layer factors
``tr(phi'^2 (I - P))/s_hat^2`` (P: the projection on span(1, y) or span(y)), each expanded to
first order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from . import gaussian
from ._validate import positive_scalar
from .activations import Activation
from .layers import Add, Dense, LayerNorm, Nonlinearity, RMSNorm
from .network import Network
from .results import Profile, _Result

__all__ = ["NLOCorrection", "nlo_correction", "corrected"]

#: range of the mean-field q^l where the Gaussian moments behind the correction are evaluated
_Q_LO, _Q_HI = 1e-100, 1e100
#: pairs whose infinite-width distance (G_aa + G_bb - 2 G_ab)/K falls below this are treated as one
#: input from there on (their c correction is O(this/N), below what any estimator resolves)
_DELTA_MERGE = 1e-4


@dataclass(frozen=True, eq=False)
class NLOCorrection(_Result):
    """First-order (1/N) relative corrections per layer ``l = 1..L`` (module docstring).

    ``dlog_q``: ``log E[q_hat^l] - log q^l`` (the log of the Monte Carlo mean, what
    :func:`~signalprop.simulate.simulate` reports as ``log_q``); ``dlog_q_typical``:
    ``E[log q_hat^l] - log q^l``; ``var_log_q``: ``Var log q_hat^l``. ``dlog_g``,
    ``dlog_g_typical``, ``var_log_g``: the same for ``g_hat^l`` (``dlog_g[-1] = 0``). ``dlog_G``:
    ``log E[G_hat^l] - log G^l`` (nan at Nonlinearity layers: not derived). ``dc``:
    ``E[c_hat^l] - c^l`` (two inputs; None for one). ``kernel_var``: ``Var(G^l)/(K^l)^2``
    (PDLT's ``V/(n K^2)``); ``theta``: the gradient's alignment with the pre-activation (nan for
    residual and normalised networks, whose rank-one coupling is carried otherwise: the note,
    sections 6-7).
    Every field is first order: ``X = X_inf (1 + a)`` with ``a`` a sum of terms ~ 1/N_k.
    """

    layers: np.ndarray
    widths: np.ndarray
    dlog_q: np.ndarray
    dlog_q_typical: np.ndarray
    var_log_q: np.ndarray
    dlog_g: np.ndarray
    dlog_g_typical: np.ndarray
    var_log_g: np.ndarray
    dlog_G: np.ndarray
    kernel_var: np.ndarray
    theta: np.ndarray
    dc: Optional[np.ndarray] = None
    note: str = ""
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# the network as a chain of Gaussian layers


@dataclass(frozen=True)
class _Chain:
    """Effective Dense layers (N, phi, sigma_w^2, sigma_b^2) and, per profile row, its index."""

    n: np.ndarray
    acts: tuple
    sw2: np.ndarray
    sb2: np.ndarray
    row: np.ndarray        # profile row -> effective layer
    dense_row: np.ndarray  # True where the row is a Dense layer (dlog_G derived)


def _chain(network: Network) -> _Chain:
    """The network's layers as effective Gaussian layers: a Dense layer (gaussian weights, no
    shared parameters) is one; a Nonlinearity right after a linear Dense of the same width merges
    with it (the pair is exactly Dense(phi)). Anything else: ValueError naming the layer."""
    n, acts, sw2, sb2, row, dense = [], [], [], [], [], []
    for i, la in enumerate(network.layers):
        where = f"layer {i + 1} ({type(la).__name__})"
        if type(la) is Dense:
            _gaussian_dense(la, where)
            n.append(la.width)
            acts.append(la.activation)
            sw2.append(la.sigma_w2)
            sb2.append(la.sigma_b2)
            row.append(len(n) - 1)
            dense.append(True)
        elif type(la) is Nonlinearity:
            prev = network.layers[i - 1] if i else None
            if not (type(prev) is Dense and prev.activation.name == "linear"):
                raise ValueError(f"{where}: no 1/N correction yet for a Nonlinearity that does "
                                 "not follow a linear Dense layer")
            if acts[-1].name != "linear":
                raise ValueError(f"{where}: no 1/N correction yet for two Nonlinearity layers "
                                 "in a row")
            acts[-1] = la.activation
            row.append(len(n) - 1)
            dense.append(False)
        else:
            raise ValueError(f"{where}: no 1/N correction yet for this layer kind (derived for "
                             "Dense and Nonlinearity layers)")
    return _Chain(np.asarray(n, float), tuple(acts), np.asarray(sw2, float),
                  np.asarray(sb2, float), np.asarray(row), np.asarray(dense))


# ---------------------------------------------------------------------------------------------
# one-dimensional Gaussian moments


def _check_act(act: Activation, where: str) -> None:
    if act.jumps:
        raise ValueError(f"{where}: {act!r} jumps, so phi' has a Dirac delta and the gradient's "
                         "moments are infinite: no 1/N correction")


class _Nodes:
    """phi(x), phi'(x), x^2 at the nodes x of one :func:`gaussian.expect` pass, evaluated once and
    shared by every integrand of a tuple (expect calls them in turn on the same node array; a
    different array, compared by identity and held, so never reused, is evaluated afresh)."""

    def __init__(self, act: Activation):
        self._p, self._d = act.phi, act.dphi
        self._x = None
        self._v: tuple = ()

    def __call__(self, x: np.ndarray) -> tuple:
        if x is not self._x:
            p, d = self._p(x), self._d(x)
            x2 = x * x
            self._v = (p, d, x2, p * p, d * d, x2 * x2)
            self._x = x
        return self._v


def _unique_rows(fn, K: np.ndarray) -> dict:
    """``fn(K)`` (a dict of arrays over K) evaluated once per distinct value of K (a converged run
    repeats its K exactly) and spread back; the rows of :func:`gaussian.expect` are independent
    given the rule, whose size follows max K (unchanged), so every number is as for fn(K)."""
    u, inv = np.unique(K, return_inverse=True)
    if u.size == K.size:
        return fn(K)
    return {k: v[inv] for k, v in fn(u).items()}


def _grouped_moments(acts, K: np.ndarray, moments) -> dict:
    """``{name: (L,) array}``: ``moments(act, K[idx])`` evaluated once per activation over the
    layers ``idx`` that use it (and once per distinct K, :func:`_unique_rows`)."""
    L = len(acts)
    out: dict = {}
    groups: dict = {}
    for i, a in enumerate(acts):
        groups.setdefault(a, []).append(i)
    for a, idx in groups.items():
        with np.errstate(all="ignore"):
            for key, val in _unique_rows(lambda kk, a=a: moments(a, kk), K[idx]).items():
                out.setdefault(key, np.empty(L))[idx] = val
    return out


def _raw_moments(act: Activation, K: np.ndarray) -> dict:
    """E[f(h)], h ~ N(0, K), for the integrands the correction needs (one quadrature pass, phi
    and phi' evaluated once per node: :class:`_Nodes`)."""
    b = _Nodes(act)
    names = ("p2", "p2h2", "p2h4", "p4", "d2", "d2h2", "d2h4", "d4", "p2d2")
    fs = (lambda x: b(x)[3], lambda x: b(x)[3] * b(x)[2], lambda x: b(x)[3] * b(x)[5],
          lambda x: b(x)[3] ** 2, lambda x: b(x)[4], lambda x: b(x)[4] * b(x)[2],
          lambda x: b(x)[4] * b(x)[5], lambda x: b(x)[4] ** 2,
          lambda x: b(x)[3] * b(x)[4])
    out = gaussian.expect(fs, K, kinks=act.kinks, tau=act.tau)
    return dict(zip(names, out))


def _moments(act: Activation, K: np.ndarray) -> dict:
    """The per-layer statistics at h ~ N(0, K) (derivatives in K by Hermite weights, so no phi''
    is needed: d^n/dK^n E[f(h)] = E[f(h) He_2n(h/sqrt K)]/(2K)^n, PDLT eq. (4.x); checked
    against mpmath in tests/test_nlo.py):

    V = E[phi^2], V1 = dV/dK, V2 = d^2V/dK^2; D = E[phi'^2], D1, D2 likewise; var_p2 =
    Var(phi^2), var_d2 = Var(phi'^2), cov_pd = Cov(phi^2, phi'^2); two_b = E[z^2 phi'^2]/D - 1;
    p2d2 = E[phi^2 phi'^2]; kappa = E[phi'^4]/D^2."""
    r = _raw_moments(act, K)
    K2 = K * K
    V, D = r["p2"], r["d2"]
    return {
        "V": V, "V1": (r["p2h2"] - K * V) / (2 * K2),
        "V2": (r["p2h4"] - 6 * K * r["p2h2"] + 3 * K2 * V) / (4 * K2 * K2),
        "D": D, "D1": (r["d2h2"] - K * D) / (2 * K2),
        "D2": (r["d2h4"] - 6 * K * r["d2h2"] + 3 * K2 * D) / (4 * K2 * K2),
        "var_p2": r["p4"] - V * V, "var_d2": r["d4"] - D * D, "cov_pd": r["p2d2"] - V * D,
        "two_b": r["d2h2"] / (K * D) - 1.0, "p2d2": r["p2d2"], "kappa": r["d4"] / (D * D)}


def _per_layer(chain: _Chain, K: np.ndarray) -> dict:
    """:func:`_moments` for every effective layer (grouped by activation)."""
    L = K.size
    out = {}
    groups: dict = {}
    for i, a in enumerate(chain.acts):
        groups.setdefault(a, []).append(i)
    for a, idx in groups.items():
        _check_act(a, f"layer {idx[0] + 1}")
        with np.errstate(all="ignore"):
            mom = _unique_rows(lambda k: _moments(a, k), K[idx])
        for k, v in mom.items():
            out.setdefault(k, np.empty(L))[idx] = v
    return out


# ---------------------------------------------------------------------------------------------
# the recursions


def _forward(chain: _Chain, K: np.ndarray, mo: dict):
    """m_l = E[G^l] - K^l, v_l = Var G^l, the slopes a_l = dK^{l+1}/dK^l and x_l = Cov(nu_l,
    G^{l+1}) (nu: the sampling noise of S1^l/N_l), one input (module docstring)."""
    L = K.size
    s = chain.sw2[1:]
    a = np.append(s * mo["V1"][:-1], 0.0)
    x = np.append(s * mo["cov_pd"][:-1] / chain.n[:-1], 0.0)
    hv = (0.5 * s * mo["V2"][:-1]).tolist()              # the recursion's coefficients, as floats
    nv = (s * s * mo["var_p2"][:-1] / chain.n[:-1]).tolist()
    al = a.tolist()
    m, v = [0.0] * L, [0.0] * L
    for i in range(L - 1):
        m[i + 1] = al[i] * m[i] + hv[i] * v[i]
        v[i + 1] = al[i] * al[i] * v[i] + nv[i]
    return np.array(m), np.array(v), a, x


def _backward(chain: _Chain, K: np.ndarray, mo: dict, m, v, a, x):
    """dlog_g, var_log_g, dlog_G (per effective layer) and theta (module docstring; the note,
    section 3)."""
    L = K.size
    n = chain.n
    D, D1, D2 = mo["D"], mo["D1"], mo["D2"]
    e_mean = (D1 * m + 0.5 * D2 * v) / D             # E[e_k]
    theta = [0.0] * L
    P = [0.0] * L                                    # P_k = sum_{j>k} (D1_j/D_j) prod a_{k+1..j-1}
    tb = mo["two_b"].tolist()
    tc = (chain.sw2[1:] * K[:-1] * mo["V1"][:-1] ** 2 / (K[1:] * D[:-1])).tolist()
    dd, al = (D1 / D).tolist(), a.tolist()
    for k in range(L - 2, -1, -1):
        theta[k] = tb[k] + tc[k] * theta[k + 1]
        if k <= L - 3:
            P[k] = dd[k + 1] + al[k + 1] * P[k + 1]
    theta, P = np.array(theta), np.array(P)
    rho = np.zeros(L)
    rho[:-1] = chain.sw2[1:] * mo["p2d2"][:-1] / (n[:-1] * D[:-1] * K[1:])
    cross = (D1 * v * a * P + x * P) / D              # sum_{j>k} E[e_k e_j]
    term = e_mean + rho * np.append(theta[1:], 0.0) + cross
    var_term = (D1 * D1 * v) / (D * D) + (3 * mo["kappa"] - 1) / n + 2 * cross
    term[-1] = var_term[-1] = 0.0
    dlog_g = np.cumsum(term[::-1])[::-1]
    var_log_g = np.cumsum(var_term[::-1])[::-1] + 2.0 / n[-1]
    own = np.where(np.arange(L) <= L - 2, D1 / D + a * P, 0.0)
    x2 = K - chain.sb2                                # sigma_w^2 E[(x^{l-1})^2] at infinite width
    with np.errstate(divide="ignore", invalid="ignore"):
        extra = np.where(x2 > 0, (m + v * own) / x2, 0.0)
    extra[0] = 0.0                                    # x^0 is the fixed input
    return dlog_g, var_log_g, dlog_g + extra, theta


# ---------------------------------------------------------------------------------------------
# two inputs


def _c_of(gaa, gbb, dist):
    return (gaa + gbb - dist) / (2.0 * np.sqrt(gaa * gbb))


def _kernel_grid(act: Activation, gaa, gbb, dist, steps):
    """C = E[phi(u_a) phi(u_b)] on the stencil of :func:`_derivatives` (one vectorised call)."""
    pts = []
    for (ha, hb, hd) in steps:
        pts.append((gaa + ha, gbb + hb, dist + hd))
    A = np.concatenate([p[0] for p in pts])
    B = np.concatenate([p[1] for p in pts])
    Dd = np.concatenate([p[2] for p in pts])
    c = _c_of(A, B, Dd)
    if np.any(np.abs(c) > 1.0):
        raise ValueError("internal: stencil outside the correlation range")
    vals = act.cross_moment(A, B, c)
    return np.split(np.asarray(vals, float), len(steps))


def _derivatives(act: Activation, gaa, dist, rel: float = 2e-3):
    """Gradient and Hessian of C(G_aa, G_bb, Delta) at G_aa = G_bb (arrays over layers), by
    central differences with one Richardson step (error ~ 1e-13/h^2 + h^4; steps limited so that
    every stencil point is a valid kernel: |c| <= 1)."""
    K = gaa
    room = np.minimum(dist, 4.0 * K - dist)          # distance to c = 1 and to c = -1
    ha = np.minimum(rel * K, 0.25 * np.sqrt(K * room))
    h3 = np.stack([ha, ha, np.minimum(rel * K, 0.125 * room)])          # (3, n)
    e = np.eye(3)
    grad, hess = [], []
    for scale in (1.0, 2.0):
        h = h3 * scale
        steps = [(0 * K, 0 * K, 0 * K)]
        for i in range(3):
            for sgn in (1, -1):
                steps.append(tuple(sgn * e[i, j] * h[j] for j in range(3)))
        for i in range(3):
            for j in range(i + 1, 3):
                for si in (1, -1):
                    for sj in (1, -1):
                        steps.append(tuple(si * e[i, k] * h[k] + sj * e[j, k] * h[k]
                                           for k in range(3)))
        vals = _kernel_grid(act, gaa, gaa, dist, steps)
        f0 = vals[0]
        g = np.empty((3,) + K.shape)
        H = np.empty((3, 3) + K.shape)
        for i in range(3):
            fp, fm = vals[1 + 2 * i], vals[2 + 2 * i]
            g[i] = (fp - fm) / (2 * h[i])
            H[i, i] = (fp - 2 * f0 + fm) / h[i] ** 2
        t = 7
        for i in range(3):
            for j in range(i + 1, 3):
                fpp, fpm, fmp, fmm = vals[t:t + 4]
                H[i, j] = H[j, i] = (fpp - fpm - fmp + fmm) / (4 * h[i] * h[j])
                t += 4
        grad.append(g)
        hess.append(H)
    return (4 * grad[0] - grad[1]) / 3, (4 * hess[0] - hess[1]) / 3


def _pair_moments(act: Activation, K, c):
    """E[phi_a^3 phi_b], E[phi_a^2 phi_b^2] and C at (K, K, c) (the noise covariance)."""
    p = act.phi
    e31 = gaussian.expect2(lambda x: p(x) ** 3, p, K, K, c, tau=act.tau, kinks=act.kinks)
    e22 = gaussian.expect2(lambda x: p(x) ** 2, lambda x: p(x) ** 2, K, K, c, tau=act.tau,
                           kinks=act.kinks)
    C = act.cross_moment(K, K, c)
    return np.asarray(e31, float), np.asarray(e22, float), np.asarray(C, float)


def _pair(chain: _Chain, K: np.ndarray, c: np.ndarray, mo: dict, m1, v1) -> np.ndarray:
    """E[c_hat^l] - c^l (two inputs of equal norm): the state (G_aa, G_bb, Delta), Delta =
    G_aa + G_bb - 2 G_ab, carried to second order (module docstring), then
    E[rho(G)] + E[c_hat - rho | G] with E[c_hat | G] = rho - rho (1 - rho^2)/(2 N) (the sample
    correlation of N Gaussian pairs about the origin; the note, section 4)."""
    L = K.size
    dist = 2.0 * K * (1.0 - c)
    live = dist > _DELTA_MERGE * K
    n = chain.n
    grad = np.zeros((3, L))
    hess = np.zeros((3, 3, L))
    e31, e22, C = np.zeros(L), np.zeros(L), np.zeros(L)
    groups: dict = {}
    for i, a in enumerate(chain.acts[:-1]):
        if live[i]:
            groups.setdefault(a, []).append(i)
    for a, idx in groups.items():
        idx = np.asarray(idx)
        # a converged run repeats (K, c) exactly: evaluate each distinct pair once (the rules act
        # row by row, so every number is as for the full arrays)
        _, first, inv = np.unique(np.stack([K[idx], c[idx], dist[idx]], axis=1), axis=0,
                                  return_index=True, return_inverse=True)
        u, inv = idx[first], inv.ravel()
        with np.errstate(all="ignore"):
            g, H = _derivatives(a, K[u], dist[u])
            grad[:, idx], hess[:, :, idx] = g[:, inv], H[:, :, inv]
            m31, m22, mC = _pair_moments(a, K[u], c[u])
            e31[idx], e22[idx], C[idx] = m31[inv], m22[inv], mC[inv]
    m = np.zeros(3)
    v = np.zeros((3, 3))
    dc = np.zeros(L)
    for i in range(L):
        if not live[i]:
            continue                         # the inputs coincide to O(_DELTA_MERGE): dc ~ 0
        if i and not live[i - 1]:
            # entering from a stretch where the two inputs moved as one: the one input's state
            m = np.array([m1[i], m1[i], 0.0])
            v = v1[i] * np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
        # E[rho(G)] to second order; rho = (G_aa + G_bb - Delta)/(2 sqrt(G_aa G_bb))
        k = K[i]
        r = c[i]
        dr = np.array([(1 - r) / (2 * k), (1 - r) / (2 * k), -1.0 / (2 * k)])
        d2 = np.array([[3 * r - 2, r - 2, 1.0], [r - 2, 3 * r - 2, 1.0], [1.0, 1.0, 0.0]])
        d2 /= 4 * k * k
        dc[i] = dr @ m + 0.5 * np.sum(d2 * v) - r * (1 - r * r) / (2 * n[i])
        if i == L - 1:
            break
        s = chain.sw2[i + 1]
        V1, V2 = mo["V1"][i], mo["V2"][i]
        # F(G) = (s V(G_aa) + sb, s V(G_bb) + sb, s (V(G_aa) + V(G_bb) - 2 C))
        J = np.zeros((3, 3))
        J[0, 0] = J[1, 1] = s * V1
        J[2, 0] = s * (V1 - 2 * grad[0, i])
        J[2, 1] = s * (V1 - 2 * grad[1, i])
        J[2, 2] = -2 * s * grad[2, i]
        Hs = np.zeros((3, 3, 3))
        Hs[0, 0, 0] = Hs[1, 1, 1] = s * V2
        Hs[2] = -2 * s * hess[:, :, i]
        Hs[2, 0, 0] += s * V2
        Hs[2, 1, 1] += s * V2
        # noise: Cov of (phi_a^2, phi_b^2, (phi_a - phi_b)^2) per unit
        V = mo["V"][i]
        p4 = mo["var_p2"][i] + V * V
        ed2 = 2 * V - 2 * C[i]
        ed4 = 2 * p4 - 8 * e31[i] + 6 * e22[i]
        caa = p4 - V * V
        cab = e22[i] - V * V
        cad = p4 - 2 * e31[i] + e22[i] - V * ed2
        cdd = ed4 - ed2 * ed2
        S = np.array([[caa, cab, cad], [cab, caa, cad], [cad, cad, cdd]])
        m = J @ m + 0.5 * np.einsum("pij,ij->p", Hs, v)
        v = J @ v @ J.T + s * s * S / n[i]
    return dc


# ---------------------------------------------------------------------------------------------
# residual blocks x^l = alpha x^{l-1} + beta phi(W x^{l-1} + b)  (the note, section 6)


@dataclass(frozen=True)
class _ResChain:
    """A network of residual blocks: width N, per block phi, sigma_w^2, sigma_b^2 (of the
    branch's first Dense layer), alpha, beta; ``two``: branches V phi(W x + b) + b' (then
    ``sw2v``, ``sb2v`` of the linear layer and the inner width ``n1``), else phi(W x + b)."""

    n: float
    acts: tuple
    sw2: np.ndarray
    sb2: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    two: bool = False
    sw2v: Optional[np.ndarray] = None
    sb2v: Optional[np.ndarray] = None
    n1: Optional[np.ndarray] = None


def _is_residual(la) -> bool:
    return isinstance(la, Add) and len(la.paths) == 2 and la.paths[0] == ()


def _gaussian_dense(d, where: str) -> None:
    if d.weights != "gaussian":
        raise ValueError(f"{where} has {d.weights} weights: no 1/N correction yet "
                         "(derived for gaussian weights)")
    if d.share is not None:
        raise ValueError(f"{where} shares its parameters ({d.share!r}): no 1/N correction "
                         "yet (derived for independent layers)")


def _res_chain(network: Network) -> Optional[_ResChain]:
    """None for a network without residual blocks; else its blocks. Every layer must be a block
    ``alpha x + beta phi(W x + b)`` (one gaussian Dense layer in the branch) or, all of them,
    ``alpha x + beta (V phi(W x + b) + b')`` (two, the second linear: ``resnet``'s default);
    ValueError naming the first layer that is not."""
    if not any(isinstance(la, Add) for la in network.layers):
        return None
    acts, sw2, sb2, al, be, sw2v, sb2v, n1, kinds_seen = [], [], [], [], [], [], [], [], set()
    for i, la in enumerate(network.layers):
        where = f"layer {i + 1} ({type(la).__name__})"
        if not _is_residual(la):
            raise ValueError(f"{where}: no 1/N correction yet for a network that mixes residual "
                             "blocks with other layers or sums other paths (derived for networks "
                             "of blocks alpha x + beta phi(W x + b))")
        br = la.paths[1]
        one = len(br) == 1 and type(br[0]) is Dense
        two = (len(br) == 2 and type(br[0]) is Dense and type(br[1]) is Dense
               and br[1].activation.name == "linear")
        if not (one or two):
            kinds = ", ".join(type(b).__name__ for b in br)
            raise ValueError(f"{where}: no 1/N correction yet for a residual branch of [{kinds}] "
                             "(derived for phi(W x + b) and V phi(W x + b) + b'; LayerNorm "
                             "in the branch, deeper branches: not yet)")
        kinds_seen.add(one)
        if len(kinds_seen) > 1:
            raise ValueError(f"{where}: no 1/N correction yet for a network that mixes one- and "
                             "two-layer residual branches")
        for j, d in enumerate(br):
            _gaussian_dense(d, f"{where}, branch layer {j + 1}")
        _check_act(br[0].activation, where)
        acts.append(br[0].activation)
        sw2.append(br[0].sigma_w2)
        sb2.append(br[0].sigma_b2)
        al.append(la.scales[0])
        be.append(la.scales[1])
        if two:
            sw2v.append(br[1].sigma_w2)
            sb2v.append(br[1].sigma_b2)
            n1.append(br[0].width)
    arr = lambda v: np.asarray(v, float)  # noqa: E731
    if kinds_seen == {False}:
        return _ResChain(float(network.input_width), tuple(acts), arr(sw2), arr(sb2), arr(al),
                         arr(be), True, arr(sw2v), arr(sb2v), arr(n1))
    return _ResChain(float(network.input_width), tuple(acts), arr(sw2), arr(sb2), arr(al),
                     arr(be))


def _res_moments(act: Activation, K: np.ndarray) -> dict:
    """Per-block statistics at h ~ N(0, K) (u = h phi'(h), w = phi'(h)^2; derivatives in K by
    Hermite weights as in :func:`_moments`): mu = E phi and mu1, mu2 its K-derivatives; V, V1,
    V2; D, D1, D2; var1 = Var phi, cov12 = Cov(phi, phi^2), var_p2 = Var phi^2; cwp =
    Cov(w, phi), cov_pd = Cov(w, phi^2), ewpp = E[(w - D)(phi - mu)^2]; Eu = E u, Vu = Var u,
    cpu = Cov(phi, u); d2b = E[u^2]/K - D (= D 2B); kappa = E w^2/D^2."""
    b = _Nodes(act)       # b(x) = (phi, phi', x^2, phi^2, phi'^2, x^4) at the nodes
    fs = (lambda x: b(x)[0], lambda x: b(x)[3], lambda x: b(x)[3] * b(x)[0],
          lambda x: b(x)[3] ** 2, lambda x: b(x)[0] * b(x)[2], lambda x: b(x)[0] * b(x)[5],
          lambda x: b(x)[3] * b(x)[2], lambda x: b(x)[3] * b(x)[5],
          lambda x: b(x)[4], lambda x: b(x)[4] * b(x)[2], lambda x: b(x)[4] * b(x)[5],
          lambda x: b(x)[4] ** 2, lambda x: x * b(x)[1], lambda x: b(x)[0] * x * b(x)[1],
          lambda x: b(x)[4] * b(x)[0], lambda x: b(x)[4] * b(x)[3])
    (m1, p2, p3, p4, ph2, ph4, p2h2, p2h4, d2, d2h2, d2h4, d4, u, pu, d2p,
     p2d2) = gaussian.expect(fs, K, kinks=act.kinks, tau=act.tau)
    K2 = K * K

    def der(f0, f2, f4):
        return (f2 - K * f0) / (2 * K2), (f4 - 6 * K * f2 + 3 * K2 * f0) / (4 * K2 * K2)

    mu1, mu2 = der(m1, ph2, ph4)
    V1, V2 = der(p2, p2h2, p2h4)
    D1, D2 = der(d2, d2h2, d2h4)
    var1 = p2 - m1 * m1
    return {"mu": m1, "mu1": mu1, "mu2": mu2, "V": p2, "V1": V1, "V2": V2,
            "D": d2, "D1": D1, "D2": D2, "var1": var1, "cov12": p3 - m1 * p2,
            "var_p2": p4 - p2 * p2, "var_w": d4 - d2 * d2, "cwp": d2p - d2 * m1,
            "cov_pd": p2d2 - d2 * p2,
            "ewpp": p2d2 - 2 * m1 * d2p + m1 * m1 * d2 - d2 * var1,
            "Eu": u, "Vu": d2h2 - u * u, "cpu": pu - m1 * u, "d2b": d2h2 / K - d2,
            "kappa": d4 / (d2 * d2)}


def _res_mean_field(rc: _ResChain, q0: float, Q: np.ndarray) -> tuple:
    """K_l = sigma_w^2 Q^{l-1} + sigma_b^2 (Q: the stream's mean-field q, Q[0] = q0), the
    per-block moments and the stream's mean-field unit mean M^l = alpha M^{l-1} + beta E phi
    (M^0 = 0: simulate's inputs have mean zero over their units)."""
    L = len(rc.acts)
    K = rc.sw2 * Q[:-1] + rc.sb2
    mo = _grouped_moments(rc.acts, K, _res_moments)
    M = np.zeros(L + 1)
    for k in range(L):
        M[k + 1] = rc.alpha[k] * M[k] + rc.beta[k] * mo["mu"][k]
    return K, mo, M


def _res_forward(rc: _ResChain, Q, M, mo):
    """The stream's state y = (Q, M) = (||x||^2/N, sum x/N) is a Markov chain (given x^{l-1} the
    branch's h^l has i.i.d. N(0, G) units, independent of x^{l-1}): m (L+1, 2) = E[y] - y_inf,
    v (L+1, 2, 2) = Cov y (y^0 fixed), the Jacobians J (L, 2, 2) and cnu (L, 2) = Cov(nu_l, the
    noise of y^l) (nu_l: the sampling noise of S1^l/N)."""
    L, N = len(rc.acts), rc.n
    m, v = np.zeros((L + 1, 2)), np.zeros((L + 1, 2, 2))
    J, cnu = np.zeros((L, 2, 2)), np.zeros((L, 2))
    for k in range(L):
        a, b, s = rc.alpha[k], rc.beta[k], rc.sw2[k]
        Qb, Mb = Q[k], M[k]
        g = {key: val[k] for key, val in mo.items()}
        J[k] = [[a * a + s * (2 * a * b * Mb * g["mu1"] + b * b * g["V1"]), 2 * a * b * g["mu"]],
                [b * s * g["mu1"], a]]
        HQ = np.array([[s * s * (2 * a * b * Mb * g["mu2"] + b * b * g["V2"]),
                        2 * a * b * s * g["mu1"]], [2 * a * b * s * g["mu1"], 0.0]])
        HM = np.array([[b * s * s * g["mu2"], 0.0], [0.0, 0.0]])
        sqq = (4 * a * a * b * b * Qb * g["var1"] + 4 * a * b ** 3 * Mb * g["cov12"]
               + b ** 4 * g["var_p2"])
        sqm = 2 * a * b * b * Mb * g["var1"] + b ** 3 * g["cov12"]
        S = np.array([[sqq, sqm], [sqm, b * b * g["var1"]]]) / N
        m[k + 1] = J[k] @ m[k] + 0.5 * np.array([np.sum(HQ * v[k]), np.sum(HM * v[k])])
        v[k + 1] = J[k] @ v[k] @ J[k].T + S
        cnu[k] = np.array([2 * a * b * Mb * g["cwp"] + b * b * g["cov_pd"], b * g["cwp"]]) / N
    return m, v, J, cnu


def _res_basis(rc: _ResChain, q0: float, M, mo):
    """The unit-level law (infinite width) of the vectors x^0, u^1, x^1, u^2, ..., x^{L-1}, u^L
    (x^j at index 2j, u^m at 2m - 1): each is mean + (x^0 coefficient) x^0 + sum over blocks m
    of gam[:, m] (phi(h^m) - mu_m) + [u^m] (u(h^m) - Eu_m), the h^m independent
    (x^l = alpha_l x^{l-1} + beta_l phi(h^l)). Returns the Gram matrix E[z_p z_q], the means and
    gam."""
    L = len(rc.acts)
    n = 2 * L
    mean = np.empty(n)
    mean[0::2], mean[1::2] = M[:L], mo["Eu"]
    a0 = np.zeros(n)
    a0[0] = 1.0
    gam = np.zeros((n, L))
    for l in range(1, L):
        gam[2 * l] = rc.alpha[l - 1] * gam[2 * l - 2]
        gam[2 * l, l - 1] += rc.beta[l - 1]
        a0[2 * l] = rc.alpha[l - 1] * a0[2 * l - 2]
    cross = np.zeros((n, n))                   # Cov(u^m, phi(h^m)) gam[:, m] on the u^m rows
    cross[1::2] = (gam * mo["cpu"]).T
    gram = (np.outer(mean, mean) + q0 * np.outer(a0, a0) + (gam * mo["var1"]) @ gam.T
            + cross + cross.T)
    gram[1::2, 1::2] += np.diag(mo["Vu"])
    return gram, mean, gam


def _res_backward(rc: _ResChain, q0: float, Q, K, M, mo, m, v, J, cnu):
    """dlog_g and var_log_g per level l = 1..L (the note, section 6): E[prod f_k] over the
    forward fluctuations plus the rank-two part R of E[delta delta^T | forward]."""
    L, N = len(rc.acts), rc.n
    a, b, s = rc.alpha, rc.beta, rc.sw2
    D, D1, D2 = mo["D"], mo["D1"], mo["D2"]
    fbar = a * a + b * b * s * D
    sk = b * b * s / fbar
    mG, vG = s * m[:-1, 0], s * s * v[:-1, 0, 0]
    e_mean = sk * (D1 * mG + 0.5 * D2 * vG)
    P = np.zeros((L, 2))
    eq = np.array([1.0, 0.0])
    for j in range(L - 2, -1, -1):
        P[j] = sk[j + 1] * D1[j + 1] * s[j + 1] * eq + P[j + 1] @ J[j + 1]
    cross = np.array([sk[j] * (D1[j] * s[j] * (P[j] @ J[j] @ v[j])[0] + P[j] @ cnu[j])
                      for j in range(L)])
    var_e = sk * sk * (D1 * D1 * vG + mo["var_w"] / N)
    rho = b * b * s * D / fbar
    chi = (rho * rho * 2 * (mo["kappa"] - 1)
           + (4 * a * a * b * b * s * D + 2 * b ** 4 * s * s * D * D) / fbar ** 2) / N
    # rank-two part, normalised by the mean-field c_l (r_l = R_l N / c_l)
    gram, mean, gam = _res_basis(rc, q0, M, mo)
    # r = sc * rs (a scalar times the stored matrix: the a^2/fbar scaling costs nothing), and
    # rg = (r : gram) over the window carried along (the update adds only to the window's first
    # row and column), so each block costs one pass over r (r @ [E, gk])
    rs = np.zeros((2 * L, 2 * L))
    sc, rg = 1.0, 0.0
    tr_R = np.zeros(L)                     # (r_l : gram)/N at level l = 1..L (index l - 1)
    t_W = np.zeros(L)                      # b^2 s (r_k : E[w_k z z])/(N fbar_k), block k
    for k in range(L - 1, -1, -1):         # block k + 1: level k + 1 -> level k
        w0 = 2 * k                         # R lives on x^k, u^{k+1}, x^{k+1}, ...
        rw, gw = rs[w0:, w0:], gram[w0:, w0:]
        tr_R[k] = rg / N
        gk, mk = gam[w0:, k], mean[w0:]
        E = gw[:, 1]                       # E[z u^{k+1}] over the window
        Z = sc * (rw @ np.column_stack([E, gk]))      # r E, r gk
        tw = D[k] * rg + 2 * mo["cwp"][k] * (mk @ Z[:, 1]) + mo["ewpp"][k] * (gk @ Z[:, 1])
        t_W[k] = b[k] ** 2 * s[k] * tw / (N * fbar[k])
        y = Z[:, 0].copy()
        kx = b[k] ** 2 * s[k] ** 2 / K[k] * (mo["d2b"][k] + E @ y / K[k])
        y[1] += 1.0                        # Sigma u / c = u + R u / c
        kc = a[k] * b[k] * s[k] / K[k]
        sc, rg = _res_update(rw, sc, a[k] ** 2 / fbar[k], 1.0 / fbar[k], kc * y, kx, rg,
                                  gw[0])
    term = e_mean + cross + t_W
    var_term = var_e + 2 * cross + chi
    dlog_g = np.append(np.cumsum(term[::-1])[::-1][1:], 0.0) + tr_R
    var_log_g = np.append(np.cumsum(var_term[::-1])[::-1][1:], 0.0) + 2.0 / N
    # G_hat^l = g_hat^l Q^{l-1}: E = E[g] E[Q] + Cov(sum_{k>l} e_k, dQ^{l-1}) (the R part is
    # deterministic at leading order, the nu_k independent of Q^{l-1})
    cov_gq = np.array([(P[j] @ J[j] @ v[j])[0] for j in range(L)])
    dlog_G = dlog_g + (m[:-1, 0] + cov_gq) / Q[:-1]
    return dlog_g, var_log_g, dlog_G


def _res_update(rw: np.ndarray, sc: float, f: float, inv_fbar: float, ky: np.ndarray, kx: float,
                rg: float, g0: np.ndarray) -> tuple:
    """One block of the rank-two recursion on the window ``rw`` (the true matrix is ``sc rw``):
    ``r <- (a^2 r + e0 ky^T + ky e0^T + kx e0 e0^T)/fbar`` with ``f = a^2/fbar``; the scale
    absorbs ``f`` (folded into ``rw`` when it would leave [1e-150, 1e150], or f = 0). Also
    ``rg <- (r : G)`` after the update (``g0``: the window's first row of G). Returns the new
    (sc, rg)."""
    new = sc * f
    if 1e-150 < abs(new) < 1e150:
        sc = new
    else:
        rw *= new
        sc = 1.0
    inc = inv_fbar / sc
    rw[:, 0] += inc * ky
    rw[0, :] += inc * ky
    rw[0, 0] += inc * kx
    rg = f * rg + inv_fbar * (2.0 * (ky @ g0) + kx * g0[0])
    return sc, rg


def _res2_forward(rc: _ResChain, Q, mo, K2):
    """Two-layer branches (the note, section 6b): the stream's Q alone is a Markov chain
    (o = V phi(h) + b' has zero conditional mean, so the stream's unit mean never feeds back):
    ``E[Q'|Q] = F(Q) = a^2 Q + b^2 (sv V(sa Q + ba) + bv)``, noise ``b^4 sv^2 Var phi^2/n1 +
    (4 a^2 b^2 Q K2 + 2 b^4 K2^2)/N``. Returns m, v (L+1,), J (L,), cnu (L,) = Cov(nu, noise)."""
    L, N = len(rc.acts), rc.n
    a, b, sa, sv, n1 = rc.alpha, rc.beta, rc.sw2, rc.sw2v, rc.n1
    J = a * a + b * b * sv * sa * mo["V1"]
    H = b * b * sv * sa * sa * mo["V2"]
    S = (b ** 4 * sv * sv * mo["var_p2"] / n1
         + (4 * a * a * b * b * Q[:-1] * K2 + 2 * b ** 4 * K2 * K2) / N)
    m, v = np.zeros(L + 1), np.zeros(L + 1)
    for k in range(L):
        m[k + 1] = J[k] * m[k] + 0.5 * H[k] * v[k]
        v[k + 1] = J[k] * J[k] * v[k] + S[k]
    return m, v, J, b * b * sv * mo["cov_pd"] / n1


def _res2_backward(rc: _ResChain, q0: float, Q, K, K2, mo, m, v, J, cnu):
    """dlog_g, var_log_g, dlog_G for two-layer branches (the note, section 6b): as
    :func:`_res_backward` with ``f = a^2 + b^2 sa sv S1/n1`` and the rank-two part in the span
    of the stream vectors x^{k-1}, o^k (zero means; o^k_i ~ N(0, K2_k) independent)."""
    L, N = len(rc.acts), rc.n
    a, b, sa, sv, n1 = rc.alpha, rc.beta, rc.sw2, rc.sw2v, rc.n1
    D, D1, D2 = mo["D"], mo["D1"], mo["D2"]
    fbar = a * a + b * b * sa * sv * D
    sk = b * b * sa * sv / fbar
    mG, vG = sa * m[:-1], sa * sa * v[:-1]
    e_mean = sk * (D1 * mG + 0.5 * D2 * vG)
    P = np.zeros(L)
    for j in range(L - 2, -1, -1):
        P[j] = sk[j + 1] * D1[j + 1] * sa[j + 1] + P[j + 1] * J[j + 1]
    cross = sk * (D1 * sa * P * J * v[:-1] + P * cnu)
    var_e = sk * sk * (D1 * D1 * vG + mo["var_d2"] / n1)
    rho = b * b * sa * sv * D / fbar
    chi = rho * rho * (2 * mo["kappa"] / n1 + 2.0 / N) + 4 * a * a * b * b * sa * sv * D / (
        N * fbar ** 2)
    # stream basis interleaved x^0, o^1, x^1, o^2, ..., x^{L-1}, o^L (x^j at 2j, o^m at 2m - 1):
    # x^l = alpha_l x^{l-1} + beta_l o^l, so R at level l lives on the tail from index 2l
    n = 2 * L
    coef = np.zeros((n, L))                    # coefficient of o^m (column m - 1)
    a0 = np.zeros(n)
    a0[0] = 1.0
    for l in range(1, L):
        coef[2 * l] = a[l - 1] * coef[2 * l - 2]
        coef[2 * l, l - 1] += b[l - 1]
        a0[2 * l] = a[l - 1] * a0[2 * l - 2]
    coef[2 * np.arange(L) + 1, np.arange(L)] = 1.0
    gram = q0 * np.outer(a0, a0) + (coef * K2) @ coef.T
    ehpp = K * mo["V1"]                       # E[h phi phi'] = K dE[phi^2]/dK (Stein)
    rs = np.zeros((n, n))                      # r = sc * rs, as in _res_backward
    sc, rg = 1.0, 0.0
    tr_R, t_W = np.zeros(L), np.zeros(L)
    for k in range(L - 1, -1, -1):
        w0 = 2 * k                             # window: x^k, o^{k+1}, ...
        rw, gw = rs[w0:, w0:], gram[w0:, w0:]
        E = gw[:, 1]                           # E[z o^{k+1}] over the window
        y = sc * (rw @ E)
        ere = E @ y
        tr_R[k] = rg / N
        t_W[k] = (b[k] ** 2 * sa[k] * sv[k] * D[k] * rg / N
                  + b[k] ** 2 * sa[k] * sv[k] ** 2 * mo["p2d2"][k] * ere
                  / (n1[k] * K2[k] ** 2)) / fbar[k]
        y[1] += 1.0
        kc = a[k] * b[k] * sa[k] * sv[k] * ehpp[k] / (K[k] * K2[k])
        kx = b[k] ** 2 * sa[k] ** 2 / K[k] * (sv[k] ** 2 * ehpp[k] ** 2 * ere / (K[k] * K2[k] ** 2)
                                             + sv[k] * mo["two_b"][k] * D[k])
        sc, rg = _res_update(rw, sc, a[k] ** 2 / fbar[k], 1.0 / fbar[k], kc * y, kx, rg,
                                  gw[0])
    term = e_mean + cross + t_W
    var_term = var_e + 2 * cross + chi
    dlog_g = np.append(np.cumsum(term[::-1])[::-1][1:], 0.0) + tr_R
    var_log_g = np.append(np.cumsum(var_term[::-1])[::-1][1:], 0.0) + 2.0 / N
    dlog_G = dlog_g + (m[:-1] + P * J * v[:-1]) / Q[:-1]
    return dlog_g, var_log_g, dlog_G


def _res2_correction(network: Network, rc: _ResChain, q0: float) -> tuple:
    """(dlog_q, var_log_q, dlog_g, var_log_g, dlog_G, kernel_var) for two-layer branches."""
    log_q, _ = _mean_field(network, q0, None)
    Q = np.concatenate([[q0], np.exp(log_q)])
    K = rc.sw2 * Q[:-1] + rc.sb2
    _check_range(K, "residual block")
    L = len(rc.acts)
    mo = _grouped_moments(rc.acts, K, _moments)
    K2 = rc.sw2v * mo["V"] + rc.sb2v
    m, v, J, cnu = _res2_forward(rc, Q, mo, K2)
    dlog_g, var_log_g, dlog_G = _res2_backward(rc, q0, Q, K, K2, mo, m, v, J, cnu)
    kvar = np.append(rc.sw2[1:] ** 2 * v[1:L] / K[1:] ** 2, np.nan)
    return m[1:] / Q[1:], v[1:] / Q[1:] ** 2, dlog_g, var_log_g, dlog_G, kvar


def _check_range(K: np.ndarray, where: str) -> None:
    """ValueError naming the first block/pair whose mean-field K leaves [1e-100, 1e100]."""
    bad = np.flatnonzero(~((K >= _Q_LO) & (K <= _Q_HI)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"the mean-field pre-activation variance of {where} {i + 1} is "
                         f"{K[i]:.4g}, outside "
                         "[1e-100, 1e100] where the 1/N correction's Gaussian moments are "
                         "evaluated: choose q0, sigma_w2 and sigma_b2 that keep it in range")


def _residual_correction(network: Network, rc: _ResChain, q0: float, c0) -> NLOCorrection:
    """:func:`nlo_correction` for a network of residual blocks (the note, section 6)."""
    if c0 is not None:
        raise ValueError("c0: no 1/N correction of c yet for residual blocks (derived for one "
                         "input: q and g); pass c0=None")
    L = len(rc.acts)
    if rc.two:
        dlog_q, var_log_q, dlog_g, var_log_g, dlog_G, kvar = _res2_correction(network, rc, q0)
    else:
        log_q, _ = _mean_field(network, q0, None)
        Q = np.concatenate([[q0], np.exp(log_q)])
        _check_range(rc.sw2 * Q[:-1] + rc.sb2, "residual block")
        K, mo, M = _res_mean_field(rc, q0, Q)
        m, v, J, cnu = _res_forward(rc, Q, M, mo)
        dlog_g, var_log_g, dlog_G = _res_backward(rc, q0, Q, K, M, mo, m, v, J, cnu)
        dlog_q = m[1:, 0] / Q[1:]
        var_log_q = v[1:, 0, 0] / Q[1:] ** 2
        kvar = np.append(rc.sw2[1:] ** 2 * v[1:L, 0, 0] / K[1:] ** 2, np.nan)
    note = (f"first order in 1/N (residual blocks): largest |dlog_g| = "
            f"{float(np.max(np.abs(dlog_g))):.3g}, largest Var log g_hat = "
            f"{float(np.max(var_log_g)):.3g}.")
    if float(np.max(np.abs(dlog_g))) > 0.5 or float(np.max(var_log_g)) > 1.0:
        note += (" The correction is not small: the next order (~ its square) matters and the "
                 "corrected profile is only indicative.")
    nan = np.full(L, np.nan)
    return NLOCorrection(
        layers=np.arange(1, L + 1), widths=network.widths.copy(), dlog_q=dlog_q,
        dlog_q_typical=dlog_q - 0.5 * var_log_q, var_log_q=var_log_q, dlog_g=dlog_g,
        dlog_g_typical=dlog_g - 0.5 * var_log_g, var_log_g=var_log_g, dlog_G=dlog_G,
        kernel_var=kvar, theta=nan, dc=None, note=note,
        meta={"source": "nlo_correction", "q0": q0, "c0": c0, "order": 1})


# ---------------------------------------------------------------------------------------------
# post-activation normalisation: Dense(phi) then LayerNorm / RMSNorm, repeated (the note, sec. 7)


@dataclass(frozen=True)
class _NormChain:
    """Pairs (Dense(phi), LayerNorm or RMSNorm): per pair the width N_k, phi, sigma_w^2,
    sigma_b^2 and whether the norm centres (LayerNorm) or not (RMSNorm)."""

    n: np.ndarray
    acts: tuple
    sw2: np.ndarray
    sb2: np.ndarray
    center: np.ndarray


def _norm_chain(network: Network) -> Optional[_NormChain]:
    """None for a network without LayerNorm/RMSNorm layers; else its (Dense, norm) pairs (the
    layers must alternate Dense(phi), norm, ..., ending with a norm: ValueError naming the first
    layer that breaks the pattern)."""
    layers = network.layers
    if not any(type(la) in (LayerNorm, RMSNorm) for la in layers):
        return None
    acts, sw2, sb2, center, widths = [], [], [], [], []
    for i, la in enumerate(layers):
        where = f"layer {i + 1} ({type(la).__name__})"
        want_dense = i % 2 == 0
        if want_dense and type(la) is not Dense or not want_dense and type(la) not in (
                LayerNorm, RMSNorm):
            raise ValueError(f"{where}: no 1/N correction yet for this placement of "
                             "normalisation layers (derived for Dense(phi) followed by LayerNorm "
                             "or RMSNorm, repeated, ending with the norm; pre-norm, residual and "
                             "mixed stacks: not yet)")
        if want_dense:
            if la.weights != "gaussian":
                raise ValueError(f"{where} has {la.weights} weights: no 1/N correction yet "
                                 "(derived for gaussian weights)")
            if la.share is not None:
                raise ValueError(f"{where} shares its parameters ({la.share!r}): no 1/N "
                                 "correction yet (derived for independent layers)")
            _check_act(la.activation, where)
            acts.append(la.activation)
            sw2.append(la.sigma_w2)
            sb2.append(la.sigma_b2)
            widths.append(la.width)
        else:
            center.append(type(la) is LayerNorm)
    if len(layers) % 2:
        raise ValueError(f"layer {len(layers)} (Dense): no 1/N correction yet for a network that "
                         "ends without its normalisation layer")
    return _NormChain(np.asarray(widths, float), tuple(acts), np.asarray(sw2, float),
                      np.asarray(sb2, float), np.asarray(center, bool))


def _norm_moments(act: Activation, K: np.ndarray, center: bool) -> dict:
    """Per-pair statistics at h ~ N(0, K) (x = phi(h), w = phi'^2, u = h phi'; dx = x - E x for
    LayerNorm, x for RMSNorm; s2 = E dx^2): zeta, the relative first-order excess of
    E[tr(W(I - P))/s_hat^2] (the note, sec. 7), eta_extra = (Ru/(D K) - 1)/K (times sigma_w^2/N
    in the norm row's factor), var_ratio = N Var log(A/s_hat^2), kappa = E w^2/D^2."""
    b = _Nodes(act)       # b(x) = (phi, phi', x^2, phi^2, phi'^2, x^4) at the nodes
    fs = (lambda x: b(x)[0], lambda x: b(x)[3], lambda x: b(x)[3] * b(x)[0],
          lambda x: b(x)[3] ** 2, lambda x: b(x)[4], lambda x: b(x)[4] ** 2,
          lambda x: b(x)[4] * b(x)[0], lambda x: b(x)[4] * b(x)[3], lambda x: x * b(x)[1],
          lambda x: b(x)[2] * b(x)[4], lambda x: x * b(x)[1] * b(x)[0])
    (m1, m2, m3, m4, D, w2, wp, wp2, u, u2, up) = gaussian.expect(fs, K, kinks=act.kinks,
                                                                  tau=act.tau)
    if center:
        s2 = m2 - m1 * m1
        dx4 = m4 - 4 * m1 * m3 + 6 * m1 * m1 * m2 - 3 * m1 ** 4
        wdx2 = wp2 - 2 * m1 * wp + m1 * m1 * D
        Ru = u2 - u * u - (up - u * m1) ** 2 / s2
    else:
        s2, dx4, wdx2 = m2, m4, wp2
        Ru = u2 - up * up / s2
    var_dx2 = dx4 - s2 * s2
    cov_w = wdx2 - D * s2
    return {"zeta": var_dx2 / s2 ** 2 - (cov_w + wdx2) / (D * s2),
            "eta_extra": (Ru / (D * K) - 1.0) / K,
            "var_ratio": (w2 - D * D) / D ** 2 + var_dx2 / s2 ** 2 - 2 * cov_w / (D * s2),
            "kappa": w2 / (D * D)}


def _norm_correction(network: Network, nc: _NormChain, q0: float, c0) -> NLOCorrection:
    """:func:`nlo_correction` for post-activation LayerNorm/RMSNorm networks (the note, sec. 7):
    the norm fixes ||y||^2 = N, so every Dense layer's h has i.i.d. N(0, K) units independent of
    the past and the forward pass is exact (dlog_q = 0); the backward factors are independent
    across pairs, each a ratio of empirical means expanded to first order."""
    if c0 is not None:
        raise ValueError("c0: no 1/N correction of c yet for normalisation layers (derived for "
                         "one input: q and g); pass c0=None")
    L, N = len(nc.acts), nc.n
    K = nc.sw2 + nc.sb2
    K[0] = nc.sw2[0] * q0 + nc.sb2[0]
    _check_range(K, "Dense layer of pair")
    mo: dict = {}
    groups: dict = {}
    for i, (a, c) in enumerate(zip(nc.acts, nc.center)):
        groups.setdefault((a, bool(c)), []).append(i)
    for (a, c), idx in groups.items():
        with np.errstate(all="ignore"):
            for k, v in _unique_rows(lambda kk: _norm_moments(a, kk, c), K[idx]).items():
                mo.setdefault(k, np.empty(L))[idx] = v
    zeta = mo["zeta"] / N                                    # N: per pair, N_k
    tail = np.cumsum(zeta[::-1])[::-1]                       # sum_{j >= k} zeta_j
    g_dense = tail
    g_norm = np.zeros(L)
    # norm row k: its delta_y^k has N_k units, the next pair's W^{k+1} fan-in N_k
    g_norm[:-1] = zeta[1:] + nc.sw2[1:] * mo["eta_extra"][1:] / N[:-1] + np.append(tail[2:], 0.0)
    add_w = (2 * (mo["kappa"] - 1) + mo["var_ratio"]) / N   # weighting + forward ratio
    v_dense, v_norm = np.zeros(L), np.zeros(L)
    v_norm[-1] = 2.0 / N[-1]
    for k in range(L - 1, -1, -1):
        v_dense[k] = v_norm[k] + add_w[k]
        if k:
            v_norm[k - 1] = v_dense[k] + 2.0 / N[k - 1]
    inter = lambda a, b: np.column_stack([a, b]).ravel()  # noqa: E731  Dense, norm rows
    dlog_g, var_log_g = inter(g_dense, g_norm), inter(v_dense, v_norm)
    var_log_q = inter(2.0 / N, np.zeros(L))
    zero = np.zeros(2 * L)
    nan = np.full(2 * L, np.nan)
    note = (f"first order in 1/N (post-activation normalisation): largest |dlog_g| = "
            f"{float(np.max(np.abs(dlog_g))):.3g}; the forward pass is exact (dlog_q = 0).")
    return NLOCorrection(
        layers=np.arange(1, 2 * L + 1), widths=network.widths.copy(), dlog_q=zero,
        dlog_q_typical=-0.5 * var_log_q, var_log_q=var_log_q, dlog_g=dlog_g,
        dlog_g_typical=dlog_g - 0.5 * var_log_g, var_log_g=var_log_g,
        dlog_G=dlog_g.copy(), kernel_var=zero.copy(), theta=nan,
        dc=None, note=note, meta={"source": "nlo_correction", "q0": q0, "c0": c0, "order": 1})


# ---------------------------------------------------------------------------------------------
# the API


def nlo_correction(network: Network, q0: float = 1.0, c0=None) -> NLOCorrection:
    """The order-1/N corrections of the mean-field profile of ``network`` (module docstring;
    derivation: docs/theory/finite-width-nlo.md).

    ``network``: Dense layers with gaussian weights (any widths, activations, sigma_w^2 and
    sigma_b^2 per layer), optionally a linear Dense followed by a Nonlinearity; or residual
    blocks whose branch is one gaussian Dense layer (``resnet(..., branch_depth=1)``; note section
    6: ``theta`` nan, no ``c0``); or Dense(phi) layers each followed by a LayerNorm
    or RMSNorm (``mlp(..., norm="layer")``; section 7: ``dlog_q = 0`` exactly, ``dlog_G =
    dlog_g``, ``theta`` nan, no ``c0``). Other layer kinds and placements raise ValueError
    ("no 1/N correction yet", naming the layer). ``q0``: input second moment; ``c0``: correlation
    of a second input of the same norm (adds ``dc``; Dense networks only). The mean-field q^l
    must lie in [1e-100, 1e100].
    """
    if not isinstance(network, Network):
        raise TypeError(f"network must be a signalprop Network (see signalprop.mlp), "
                        f"got {type(network).__name__}")
    q0 = positive_scalar("q0", q0)
    rc = _res_chain(network)
    if rc is not None:
        return _residual_correction(network, rc, q0, c0)
    nc = _norm_chain(network)
    if nc is not None:
        return _norm_correction(network, nc, q0, c0)
    chain = _chain(network)
    prof_log_q, prof_c = _mean_field(network, q0, c0)
    first = np.searchsorted(chain.row, np.arange(chain.n.size))   # a row of each effective layer
    lq = prof_log_q[first]
    bad = np.flatnonzero(~((lq >= math.log(_Q_LO)) & (lq <= math.log(_Q_HI))))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"the mean-field q^{first[i] + 1} of this network is "
                         f"10^{lq[i] / math.log(10):.4g}, outside [1e-100, 1e100] where the 1/N "
                         "correction's Gaussian moments are evaluated: choose q0, sigma_w2 and "
                         "sigma_b2 that keep q^l in range")
    K = np.exp(lq)
    mo = _per_layer(chain, K)
    m, v, a, x = _forward(chain, K, mo)
    dlog_g, var_log_g, dlog_G, theta = _backward(chain, K, mo, m, v, a, x)
    kvar = v / (K * K)
    var_log_q = kvar + 2.0 / chain.n
    dlog_q = m / K
    dc = None
    if c0 is not None:
        dc = _pair(chain, K, np.asarray(prof_c, float)[first], mo, m, v)[chain.row]
    r = chain.row
    dG = np.where(chain.dense_row, dlog_G[r], np.nan)
    note = _note(chain, dlog_g, var_log_g, theta)
    return NLOCorrection(
        layers=np.arange(1, network.depth + 1), widths=network.widths.copy(),
        dlog_q=dlog_q[r], dlog_q_typical=(dlog_q - 0.5 * var_log_q)[r], var_log_q=var_log_q[r],
        dlog_g=dlog_g[r], dlog_g_typical=(dlog_g - 0.5 * var_log_g)[r], var_log_g=var_log_g[r],
        dlog_G=dG, kernel_var=kvar[r], theta=theta[r], dc=dc, note=note,
        meta={"source": "nlo_correction", "q0": q0, "c0": c0, "order": 1})


def _mean_field(network: Network, q0: float, c0) -> tuple:
    """The infinite-width log q^l and c^l, layer by layer through the layers' own fast rules (the
    values of :func:`signalprop.meanfield.predict` before its fill of converged runs; the
    correction is needed to first order in 1/N, far above their rounding differences)."""
    if c0 is not None:
        c0 = float(c0)
        if not -1.0 <= c0 <= 1.0:
            raise ValueError(f"c0 must be a correlation in [-1, 1], got {c0!r}")
    cache = {"means": network.needs_mean}
    state = (math.log(q0), c0, 0.0 if cache["means"] else None)
    log_q, c = [0.0] * network.depth, [0.0] * network.depth
    n_in = network.input_width
    prev = (None, None, None)
    step = None
    for i, layer in enumerate(network.layers):
        # a layer equal to the last one, fed the same state and fan-in, repeats its step exactly
        # (a converged run): reuse it instead of recomputing the same numbers
        if not (state == prev[1] and n_in == prev[2]
                and (layer is prev[0] or layer == prev[0])):
            prev = (layer, state, n_in)
            step = layer.mean_field(state, n_in, cache)
        log_q[i] = step.log_q
        c[i] = math.nan if step.c is None else step.c
        state, n_in = step.out, layer.width
    return np.array(log_q), (None if c0 is None else np.array(c))


def _note(chain: _Chain, dlog_g, var_log_g, theta) -> str:
    worst = float(np.max(np.abs(dlog_g))) if dlog_g.size else 0.0
    text = (f"first order in 1/N: largest |dlog_g| = {worst:.3g}, largest Var log g_hat = "
            f"{float(np.max(var_log_g)):.3g}.")
    if worst > 0.5 or float(np.max(var_log_g)) > 1.0:
        text += (" The correction is not small: the next order (~ its square) matters and the "
                 "corrected profile is only indicative.")
    if chain.acts and any(a.kinks for a in chain.acts):
        text += (" c: for kinked activations the expansion needs N (1 - c) >> 1 (the kernel is "
                 "not analytic at c = 1).")
    return text


def corrected(profile: Profile, corr: NLOCorrection) -> Profile:
    """``profile`` (mean-field, from :func:`~signalprop.meanfield.predict` of the same network,
    q0 and c0) with the first-order corrections applied: ``log_q + dlog_q``, ``q exp(dlog_q)``,
    ``log_g + dlog_g``, ``log_G + dlog_G``, ``c + dc`` (``E[X] = X_inf (1 + a)`` written as
    ``X_inf e^a``: equal to first order, and positive)."""
    if not isinstance(profile, Profile) or not isinstance(corr, NLOCorrection):
        raise TypeError("corrected(profile, corr) takes a Profile and an NLOCorrection, got "
                        f"{type(profile).__name__} and {type(corr).__name__}")
    if profile.layers.shape != corr.layers.shape:
        raise ValueError(f"profile has {profile.layers.size} layers but the correction has "
                         f"{corr.layers.size}: they must come from the same network")
    if (profile.c is None) != (corr.dc is None):
        raise ValueError("profile and correction disagree on the number of inputs (c0): compute "
                         "both with the same c0")
    c = None if profile.c is None else profile.c + corr.dc
    dG = np.where(np.isnan(corr.dlog_G), 0.0, corr.dlog_G)
    meta = dict(profile.meta)
    meta.update({"order": 1, "nlo_note": corr.note,
                 "nlo": {"dlog_q": corr.dlog_q, "dlog_g": corr.dlog_g, "dlog_G": corr.dlog_G,
                         "dc": corr.dc}})      # nan where not derived: compare's order-0 allowance
    return replace(profile, q=profile.q * np.exp(corr.dlog_q), log_q=profile.log_q + corr.dlog_q,
                   log_g=profile.log_g + corr.dlog_g, log_G=profile.log_G + dG, c=c, meta=meta)
