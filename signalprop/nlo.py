"""The leading (order 1/N) finite-width correction to the mean-field profile of a fully connected
network: :func:`nlo_correction` and :func:`corrected`.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from . import gaussian
from ._validate import positive_scalar
from .activations import Activation
from .layers import Dense, Nonlinearity
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
    (PDLT's ``V/(n K^2)``); ``theta``: the gradient's alignment with the pre-activation.
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
            if la.weights != "gaussian":
                raise ValueError(f"{where} has {la.weights} weights: no 1/N correction yet "
                                 "(derived for gaussian weights)")
            if la.share is not None:
                raise ValueError(f"{where} shares its parameters ({la.share!r}): no 1/N "
                                 "correction yet (derived for independent layers)")
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


def _raw_moments(act: Activation, K: np.ndarray) -> dict:
    """E[f(h)], h ~ N(0, K), for the integrands the correction needs (one quadrature pass)."""
    p, d = act.phi, act.dphi
    names = ("p2", "p2h2", "p2h4", "p4", "d2", "d2h2", "d2h4", "d4", "p2d2")
    fs = (lambda x: p(x) ** 2, lambda x: p(x) ** 2 * x ** 2, lambda x: p(x) ** 2 * x ** 4,
          lambda x: p(x) ** 4, lambda x: d(x) ** 2, lambda x: d(x) ** 2 * x ** 2,
          lambda x: d(x) ** 2 * x ** 4, lambda x: d(x) ** 4,
          lambda x: p(x) ** 2 * d(x) ** 2)
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
            mom = _moments(a, K[idx])
        for k, v in mom.items():
            out.setdefault(k, np.empty(L))[idx] = v
    return out


# ---------------------------------------------------------------------------------------------
# the recursions


def _forward(chain: _Chain, K: np.ndarray, mo: dict):
    """m_l = E[G^l] - K^l, v_l = Var G^l, the slopes a_l = dK^{l+1}/dK^l and x_l = Cov(nu_l,
    G^{l+1}) (nu: the sampling noise of S1^l/N_l), one input (module docstring)."""
    L = K.size
    m, v, a, x = np.zeros(L), np.zeros(L), np.zeros(L), np.zeros(L)
    for i in range(L - 1):
        s = chain.sw2[i + 1]
        a[i] = s * mo["V1"][i]
        m[i + 1] = a[i] * m[i] + 0.5 * s * mo["V2"][i] * v[i]
        v[i + 1] = a[i] * a[i] * v[i] + s * s * mo["var_p2"][i] / chain.n[i]
        x[i] = s * mo["cov_pd"][i] / chain.n[i]
    return m, v, a, x


def _backward(chain: _Chain, K: np.ndarray, mo: dict, m, v, a, x):
    """dlog_g, var_log_g, dlog_G (per effective layer) and theta (module docstring; the note,
    section 3)."""
    L = K.size
    n = chain.n
    D, D1, D2 = mo["D"], mo["D1"], mo["D2"]
    e_mean = (D1 * m + 0.5 * D2 * v) / D             # E[e_k]
    theta = np.zeros(L)
    P = np.zeros(L)                                  # P_k = sum_{j>k} (D1_j/D_j) prod a_{k+1..j-1}
    for k in range(L - 2, -1, -1):
        s = chain.sw2[k + 1]
        theta[k] = mo["two_b"][k] + s * K[k] * mo["V1"][k] ** 2 / (K[k + 1] * D[k]) * theta[k + 1]
        if k <= L - 3:
            P[k] = D1[k + 1] / D[k + 1] + a[k + 1] * P[k + 1]
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
        with np.errstate(all="ignore"):
            g, H = _derivatives(a, K[idx], dist[idx])
            grad[:, idx], hess[:, :, idx] = g, H
            e31[idx], e22[idx], C[idx] = _pair_moments(a, K[idx], c[idx])
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
# the API


def nlo_correction(network: Network, q0: float = 1.0, c0=None) -> NLOCorrection:
    """The order-1/N corrections of the mean-field profile of ``network`` (module docstring;
    derivation: docs/theory/finite-width-nlo.md).

    ``network``: Dense layers with gaussian weights (any widths, activations, sigma_w^2 and
    sigma_b^2 per layer), optionally a linear Dense followed by a Nonlinearity; other layer kinds
    raise ValueError ("no 1/N correction yet"). ``q0``: input second moment; ``c0``: correlation of
    a second input of the same norm (adds ``dc``). The mean-field q^l must lie in [1e-100, 1e100].
    """
    if not isinstance(network, Network):
        raise TypeError(f"network must be a signalprop Network (see signalprop.mlp), "
                        f"got {type(network).__name__}")
    chain = _chain(network)
    q0 = positive_scalar("q0", q0)
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
    log_q, c = np.empty(network.depth), np.empty(network.depth)
    n_in = network.input_width
    for i, layer in enumerate(network.layers):
        step = layer.mean_field(state, n_in, cache)
        log_q[i] = step.log_q
        c[i] = math.nan if step.c is None else step.c
        state, n_in = step.out, layer.width
    return log_q, (None if c0 is None else c)


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
                 "nlo": {"dlog_q": corr.dlog_q, "dlog_g": corr.dlog_g, "dlog_G": dG, "dc": corr.dc}})
    return replace(profile, q=profile.q * np.exp(corr.dlog_q), log_q=profile.log_q + corr.dlog_q,
                   log_g=profile.log_g + corr.dlog_g, log_G=profile.log_G + dG, c=c, meta=meta)
