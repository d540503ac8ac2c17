"""The log model of §2: statistically linearised slopes and innovation (co)variances per layer
(:class:`_Model`), the per-layer log-moments it implies, the covariance of the log gradient
ratios across layers, and draws of its innovations.

References to sections (§1, section 2, ...) and to "the module docstring" in the docstrings
below are to the package docstring of :mod:`signalprop.finite`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from ..network import Network
from .chisquare import chi2_factor
from .local import _GH_T, _GH_W, _Q_HI, _Q_LO, _TABLE_MARGIN, _stats_table
from .lognormal import _skew_coefficient

_MAX_SKEW = 1.5


# ---------------------------------------------------------------------------------------------
# the model


@dataclass
class _Model:
    """The log model of module docstring section 2, 0-based over layers. ``A, B, w`` are the
    statistically linearised slopes (Gauss-Hermite over the Gaussian-closure law of ``eps``),
    ``v_eta, v_zeta, c_eta_zeta`` the innovation (co)variances of each layer."""

    mf: dict               # mean-field statistics at q^l (arrays over layers)
    w: np.ndarray
    A: np.ndarray
    B: np.ndarray
    m_eps: np.ndarray
    v_eps: np.ndarray
    m_fwd: np.ndarray
    v_fwd: np.ndarray
    m_rho: np.ndarray
    v_rho: np.ndarray
    m_beta: np.ndarray
    v_beta: np.ndarray
    v_eta: np.ndarray
    v_zeta: np.ndarray
    c_eta_zeta: np.ndarray
    c_zeta_eta_next: np.ndarray   # Cov(zeta_i, eta_{i+1})
    R: np.ndarray          # d S_i / d eps_i
    m_c: float
    v_c: float
    k3_c: float
    worst: tuple           # (Var eps, layer) at the worst general-activation layer


def _build_model(network: Network, log_q: np.ndarray) -> _Model:
    layers = network.layers
    L = len(layers)
    n = network.widths[1:].astype(float)
    lq = np.clip(np.asarray(log_q, float), math.log(_Q_LO), math.log(_Q_HI))
    Q = np.exp(lq)
    lo = max(math.log(_Q_LO), float(lq.min()) - _TABLE_MARGIN)
    hi = min(math.log(_Q_HI), float(lq.max()) + _TABLE_MARGIN)
    tables: dict = {}
    stats_of = []
    for i, la in enumerate(layers):
        key = id(la.activation)
        if key not in tables:
            own = lq[[j for j, lb in enumerate(layers) if lb.activation == la.activation]]
            tables[key] = _stats_table(la.activation, lo, hi, (float(own.min()), float(own.max())))
        stats_of.append(tables[key])
    # mean-field statistics of every layer, grouped by activation
    mf: dict = {}
    for key, st in tables.items():
        ids = np.array([i for i, s in enumerate(stats_of) if s is st])
        d = st.at(Q[ids], n[ids])
        for k, v in d.items():
            if k not in mf:
                mf[k] = np.zeros((L,) + v.shape[1:])
            mf[k][ids] = v
    sw2 = np.array([la.sigma_w2 for la in layers])
    sb2 = np.array([la.sigma_b2 for la in layers])
    w = np.ones(L)
    for i in range(L - 1):
        if sb2[i + 1] > 0:
            a = sw2[i + 1] * math.exp(mf["log_m_p"][i])
            w[i] = a / (a + sb2[i + 1])
    # rank-one coupling: theta[i] = E[(h.delta)^2/(Q ||delta||^2)] - 1 (0 for the isotropic v)
    theta = np.zeros(L)
    for i in range(L - 2, -1, -1):
        theta[i] = 2.0 * mf["B"][i] + w[i] * mf["A"][i] ** 2 * mf["s_pd"][i] * theta[i + 1]
    rank_one = np.zeros(L)
    rank_one[:-1] = w[:-1] * mf["r_pd"][:-1] * theta[1:] / n[:-1]
    z = {k: np.zeros(L) for k in ("A", "B", "w", "m_eps", "v_eps", "m_fwd", "v_fwd", "m_rho",
                                  "v_rho", "m_beta", "v_beta", "v_eta", "v_zeta", "c_eta_zeta")}
    me, ve = 0.0, 0.0
    worst = (0.0, 0)
    t, om = _GH_T, _GH_W
    cached = None
    for i in range(L):
        st = stats_of[i]
        z["m_eps"][i], z["v_eps"][i] = me, ve
        sd = math.sqrt(max(ve, 0.0))
        eps = me + sd * t
        if st.kind == "general":
            if ve > worst[0]:
                worst = (ve, i + 1)
            key = (id(st), Q[i], n[i], mf["log_m_p"][i], mf["log_m_d"][i])
            if (cached is not None and cached[0] == key and abs(cached[1] - me) <= 1e-15
                    and abs(cached[2] - ve) <= 1e-15 * max(ve, 1e-300)):
                Fp, Fd, mean, cov = cached[3]     # a steady state: the same layer again
            else:
                S = st.at(Q[i] * np.exp(eps), n[i])
                Fp = S["log_m_p"] - mf["log_m_p"][i]
                Fd = S["log_m_d"] - mf["log_m_d"][i]
                mean, cov = om @ S["mean"], np.einsum("k,kij->ij", om, S["cov"])
                cached = (key, me, ve, (Fp, Fd, mean, cov))
        else:   # scale-free local law: log m_p(q e^eps) - log m_p(q) = eps, log m_d constant
            Fp, Fd = eps, 0.0 * eps
            mean, cov = mf["mean"][i], mf["cov"][i]
        eFp, eFd = om @ Fp, om @ Fd
        dp, dd, de = Fp - eFp, Fd - eFd, eps - me
        if ve > 0:
            A_eff, B_eff = (om @ (dp * de)) / ve, (om @ (dd * de)) / ve
        else:
            A_eff, B_eff = (mf["A"][i], mf["B"][i]) if st.kind == "general" else (1.0, 0.0)
        z["A"][i], z["B"][i] = A_eff, B_eff
        z["m_fwd"][i] = me + mean[0]
        z["v_fwd"][i] = ve + cov[0, 0]
        z["m_rho"][i] = eFp + mean[1]
        z["v_rho"][i] = om @ dp ** 2 + cov[1, 1]
        z["m_beta"][i] = eFd + mean[2] + rank_one[i]
        z["v_beta"][i] = om @ dd ** 2 + cov[2, 2]
        c_br = om @ (dp * dd) + cov[1, 2]
        z["v_eta"][i] = max(z["v_rho"][i] - A_eff ** 2 * ve, 0.0)
        z["v_zeta"][i] = max(z["v_beta"][i] - B_eff ** 2 * ve, 0.0)
        z["c_eta_zeta"][i] = c_br - A_eff * B_eff * ve
        # eps^{i+1} = log(w e^rho + 1 - w)
        mr, vr = z["m_rho"][i], z["v_rho"][i]
        if w[i] == 1.0:
            me, ve, w_eff = mr, vr, 1.0
        else:
            r = mr + math.sqrt(vr) * t
            e = np.log(w[i] * np.exp(r) + (1.0 - w[i]))
            me = float(om @ e)
            ve = float(om @ (e - me) ** 2)
            w_eff = float(om @ ((e - me) * (r - mr))) / vr if vr > 0 else w[i]
        z["w"][i] = w_eff
        z.setdefault("c_beta_rho", np.zeros(L))[i] = c_br
    # W^{i+1} enters both zeta_i and eta_{i+1}: the rank-one piece of ||delta^i||^2 moves with
    # the forward factor of layer i + 1 (ReLU: it is (h.delta)^2/||x^i||^2 = frac * ||x^{i+1}||^2,
    # section 1), so Cov(zeta_i, eta_{i+1}) = (w r / N)_i (kappa_p - 1)_{i+1} / N_{i+1} to leading
    # order: 10/(N_i N_{i+1}) for ReLU, 2/(N_i N_{i+1}) for linear layers (= 2 (delta^T W h)^2 terms)
    z["c_zeta_eta_next"] = np.zeros(L)
    z["c_zeta_eta_next"][:-1] = (w[:-1] * mf["r_pd"][:-1] / n[:-1]) * (mf["kappa_p"][1:] - 1.0) / n[1:]
    R = np.zeros(L)
    for i in range(L - 2, -1, -1):
        R[i] = z["B"][i] + z["w"][i] * z["A"][i] * R[i + 1]
    c = chi2_factor(int(network.widths[-1]))
    c_br = z.pop("c_beta_rho")
    model = _Model(mf=mf, R=R, m_c=c["log_mean"], v_c=c["log_var"], k3_c=c["log_k3"],
                   worst=worst, **z)
    model.mf["n"] = n
    model.mf["c_beta_rho"] = c_br
    model.mf["w"] = w
    return model


def _moments_per_layer(mod: _Model) -> dict:
    """E and Var of log(q_hat/q), log(g_hat/g), log(G_hat/G) per layer (O(L))."""
    L = len(mod.w)
    ES, VS = np.zeros(L), np.zeros(L)
    cbn = mod.w * mod.mf["c_beta_rho"]                 # Cov(beta_i, eps_{i+1})
    for i in range(L - 2, -1, -1):
        ES[i] = mod.m_beta[i] + ES[i + 1]
        VS[i] = mod.v_beta[i] + VS[i + 1] + 2.0 * cbn[i] * mod.R[i + 1]
    m_g = mod.m_c + ES
    v_g = mod.v_c + VS
    m_G, v_G = m_g.copy(), v_g.copy()
    m_G[1:] += mod.m_rho[:-1]
    v_G[1:] += mod.v_rho[:-1] + 2.0 * mod.R[1:] * mod.w[:-1] * mod.v_rho[:-1]
    # third cumulants (local skews carried linearly; the feedback's own skew is neglected)
    k3 = mod.mf["k3"]
    k3e = np.zeros(L)
    for i in range(L - 1):
        k3e[i + 1] = (mod.w[i] * mod.A[i]) ** 3 * k3e[i] + mod.w[i] ** 3 * k3[i, 0]
    n = np.asarray(mod.mf["n"], float)
    k3_fwd = k3e + special.polygamma(2, 0.5 * n)
    k3_rho = mod.A ** 3 * k3e + k3[:, 0]
    zz = np.append(k3[:-1, 3], 0.0)
    k3_g = mod.k3_c + np.cumsum(zz[::-1])[::-1]
    k3_G = k3_g.copy()
    k3_G[1:] += k3_rho[:-1]

    def skew(k, v):
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(v > 0, k / np.maximum(v, 1e-300) ** 1.5, 0.0)
        return np.clip(s, -_MAX_SKEW, _MAX_SKEW)

    return {"m_fwd": mod.m_fwd, "v_fwd": mod.v_fwd, "m_g": m_g, "v_g": v_g, "m_G": m_G, "v_G": v_G,
            "s_fwd": skew(k3_fwd, mod.v_fwd), "s_g": skew(k3_g, v_g), "s_G": skew(k3_G, v_G)}


def _log_covariance(mod: _Model, bias_terms: bool, full: bool = True) -> tuple:
    """Covariance matrix (first order in the model) of the log weight-gradient ratios
    ``log(G_hat^l/G^l)``, l = 1..L, followed (if ``bias_terms``) by ``log(g_hat^l/g^l)``.

    Each is a linear combination of the innovations ``eta_j, zeta_j`` of the layers and of
    ``c_L``: ``eps_{k+1} = w_k (A_k eps_k + eta_k)``, ``rho_k = A_k eps_k + eta_k``,
    ``beta_k = B_k eps_k + zeta_k``, ``log(g_hat^l/g^l) = c_L + sum_{k >= l} beta_k``,
    ``log(G_hat^l/G^l) = log(g_hat^l/g^l) + rho_{l-1}``. Returns ``(C, X_eta, X_zeta)``, the
    coefficient matrices of the terms on the innovations; ``full=False``: the diagonal of ``C``
    only. O(L^2) memory, O(L^3) time for the full matrix.
    """
    L = len(mod.w)
    A, B, w = mod.A, mod.B, mod.w
    E = np.zeros((L, L))           # coefficient of eta_j in eps_k
    for k in range(L - 1):
        E[k + 1] = w[k] * A[k] * E[k]
        E[k + 1, k] += w[k]
    rho = A[:, None] * E + np.eye(L)
    beta_eta = B[:, None] * E
    beta_eta[L - 1] = 0.0
    gam_eta = np.cumsum(beta_eta[::-1], axis=0)[::-1]
    gam_zeta = np.triu(np.ones((L, L)))
    gam_zeta[:, L - 1] = 0.0
    Y_eta = gam_eta.copy()
    Y_eta[1:] += rho[:-1]
    if bias_terms:
        X_eta, X_zeta = np.vstack([Y_eta, gam_eta]), np.vstack([gam_zeta, gam_zeta])
    else:
        X_eta, X_zeta = Y_eta, gam_zeta
    if not full:      # the diagonal only, O(n L)
        d = (X_eta ** 2) @ mod.v_eta + (X_zeta ** 2) @ mod.v_zeta
        d += 2 * np.einsum("ij,ij,j->i", X_eta, X_zeta, mod.c_eta_zeta)
        d += 2 * np.einsum("ij,ij,j->i", X_eta[:, 1:], X_zeta[:, :-1], mod.c_zeta_eta_next[:-1])
        return d + mod.v_c, X_eta, X_zeta
    C = (X_eta * mod.v_eta) @ X_eta.T + (X_zeta * mod.v_zeta) @ X_zeta.T
    cross = (X_eta * mod.c_eta_zeta) @ X_zeta.T
    cross += (X_eta[:, 1:] * mod.c_zeta_eta_next[:-1]) @ X_zeta[:, :-1].T
    return C + cross + cross.T + mod.v_c, X_eta, X_zeta


def _innovation_draws(mod: _Model, draws: int, rng: np.random.Generator) -> tuple:
    """Draws of the innovations ``eta_k, zeta_k`` (shape (draws, L) each) and ``c_L`` (draws,).

    Gaussian with the model's covariances, ``Cov(eta_k, zeta_k)`` and the adjacent-layer
    ``Cov(zeta_k, eta_{k+1})`` (a tridiagonal matrix in the order eta_1, zeta_1, eta_2, ...,
    whose Cholesky factor is bidiagonal), then each marginal given its own skewness by the
    transform ``s (z + c (z^2 - 1))`` of :class:`LogNormalLaw` (exact mean, variance and skewness
    of every marginal; correlations change at second order in ``c``).

    Omitted: ``zeta_k`` also correlates with the forward factors ``eta_j`` of every later layer
    ``j > k + 1`` (through the rank-one piece, see ``_build_model``), decaying by about
    ``1 - 3.5/N`` per layer (measured for ReLU at N = 16, 32); no per-layer marginal involves
    such a pair, but it correlates the terms of the total gradient norm: Var log ||g|| of a ReLU
    network at depth/width 0.5 is about 4 % low without it (validation/finite_width_report.md).
    """
    L = len(mod.w)
    var = np.empty(2 * L)
    var[0::2], var[1::2] = mod.v_eta, mod.v_zeta
    var = np.maximum(var, 0.0)
    sd = np.sqrt(var)
    off = np.zeros(2 * L - 1)                     # correlations of neighbours in that order
    with np.errstate(divide="ignore", invalid="ignore"):
        off[0::2] = np.where(sd[0::2] * sd[1::2] > 0, mod.c_eta_zeta / (sd[0::2] * sd[1::2]), 0.0)
        off[1::2] = np.where(sd[1:-1:2] * sd[2::2] > 0,
                             mod.c_zeta_eta_next[:-1] / (sd[1:-1:2] * sd[2::2]), 0.0)
    off = np.clip(np.nan_to_num(off), -0.999, 0.999)
    # u_j = diag_j z_j + low_j z_{j-1}: low_j = off_{j-1}/diag_{j-1}, diag_j = sqrt(1 - low_j^2)
    diag = np.ones(2 * L)
    low = np.zeros(2 * L)
    for j in range(1, 2 * L):
        low[j] = off[j - 1] / diag[j - 1]
        diag[j] = math.sqrt(max(1.0 - low[j] ** 2, 1e-12))
    z = rng.standard_normal((draws, 2 * L))
    u = z * diag
    u[:, 1:] += z[:, :-1] * low[1:]
    k3 = mod.mf["k3"]
    skew = np.zeros(2 * L)
    with np.errstate(divide="ignore", invalid="ignore"):
        skew[0::2] = np.where(var[0::2] > 0, k3[:, 0] / np.maximum(var[0::2], 1e-300) ** 1.5, 0.0)
        skew[1::2] = np.where(var[1::2] > 0, k3[:, 3] / np.maximum(var[1::2], 1e-300) ** 1.5, 0.0)
    skew = np.clip(np.nan_to_num(skew), -_MAX_SKEW, _MAX_SKEW)
    cc = np.array([_skew_coefficient(float(x)) for x in skew])
    x = sd / np.sqrt(1.0 + 2.0 * cc * cc) * (u + cc * (u * u - 1.0))
    sk_c = mod.k3_c / mod.v_c ** 1.5 if mod.v_c > 0 else 0.0
    c1 = _skew_coefficient(float(np.clip(sk_c, -_MAX_SKEW, _MAX_SKEW)))
    zc = rng.standard_normal(draws)
    c = math.sqrt(mod.v_c / (1.0 + 2.0 * c1 * c1)) * (zc + c1 * (zc * zc - 1.0))
    return x[:, 0::2], x[:, 1::2], c
