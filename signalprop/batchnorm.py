"""Mean-field theory of batch normalisation at initialisation (Yang, Pennington, Rao,
Sohl-Dickstein, Schoenholz 2019, "A mean field theory of batch normalization", arXiv 1902.08129).

Derivation: docs/theory/batchnorm.md (derived there; the paper's section and theorem numbers were
not at hand to check and are not cited). Model, per layer, for a batch of ``B`` inputs:

    h^l = W^l x^{l-1}  (W_ij ~ N(0, sigma_w^2 / N_{l-1}), no bias),
    y^l_i = sqrt(B) G h_i / ||G h_i||,  G = I - 1 1^T / B  (per unit, gamma = 1, beta = 0, eps = 0),
    x^l = phi(y^l).

What the code implements (exact at infinite width; gradient independence backwards):

* Forward (BSB1 fixed point): ``y = sqrt(B) u``, ``u`` uniform on the unit sphere of ``1^perp``,
  whatever the BSB1 pre-BN kernel; ``K_ab = E[phi(y_a) phi(y_b)]`` is a constant of (phi, B) and
  ``q = sigma_w^2 K_aa``, ``q c = sigma_w^2 K_ab``.
* Sphere marginals, ``y_a = sqrt(B - 1) t_a``: one coordinate ``t ~ (1 - t^2)^{(B-4)/2}`` on
  [-1, 1] (``t = sin psi``: weight ``cos^{B-3} psi``); two coordinates
  ``(t_a, t_b) = R (cos theta, cos(theta - alpha))``, ``cos alpha = -1/(B - 1)``, density
  ``((B-3)/(2 pi)) (1 - R^2)^{(B-5)/2}`` on the disc (``R = sin chi``: weight
  ``sin chi cos^{B-4} chi``). Composite Gauss-Legendre rules split at the kinks; ~1e-14.
* Backward: ``Pi_x^l = sigma_w^2 (N_{l+1}/N_l) Pi_h^{l+1}``, ``Pi_h^l = E[B/r^2] M(Pi_x^l)``,
  ``M(P) = E_u[Q D P D Q]``, ``Q = G - u u^T``, ``D = diag(phi'(y))``,
  ``E[B/r^2] = B / ((B - 3) q (1 - c))`` (so B >= 4). On the 4-dim space of
  matrices invariant under the permutations fixing ``a`` (the loss starts at ``e_a e_a^T``)
  ``M(G) = mu G``, ``M(w w^T) = alpha w w^T + beta G`` (``w = e_a - 1/B``): eigenvalues
  ``lambda_G = s mu``, ``lambda_V = s alpha``, ``s = sigma_w^2 E[B/r^2]``, which at the fixed
  point is ``B / ((B - 3)(K_aa - K_ab))``, independent of sigma_w^2.
* Checks: linear phi gives ``lambda = (B - 2)/(B - 3)``; large B gives
  ``lambda -> E[phi'(z)^2] / Var[phi(z)]`` (relu: pi/(pi - 1)).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Optional

import numpy as np

from ._validate import check_finite, check_positive
from .activations import Activation, activation as _activation
from .results import _Result

__all__ = ["BNKernel", "BNGradientOperator", "BNGradientProfile", "bn_kernel",
           "bn_gradient_operator", "bn_gradient_profile", "bn_explosion_rate", "bn_orbit_map",
           "orbit_basis"]

_GL_N = 24          # Gauss-Legendre nodes per panel
_CUT = 90.0         # weights below exp(-_CUT) are dropped
_THETA_PANELS = 16  # uniform angular panels (plus kink angles)


# ---------------------------------------------------------------------------------------------
# argument checks


def _check_batch(B, minimum: int = 4) -> int:
    """B must be an integer >= minimum: 4, since E[B/r^2] = B/((B-3) q (1-c)) (derived here; the
    chi^2_{B-1} law of r^2 is the setting of Yang et al. 2019) is infinite for B <= 3."""
    why = ("B - 3 > 0 is needed: r^2 ~ q (1 - c) chi^2_{B-1} and E[1/chi^2_{B-1}] = 1/(B - 3) is "
           "infinite for B <= 3")
    if isinstance(B, (bool, np.bool_)) or not isinstance(B, numbers.Real):
        raise TypeError(f"B (batch size) must be an integer >= {minimum}, got {B!r}")
    if not (math.isfinite(float(B)) and float(B) == int(B)):
        raise ValueError(f"B (batch size) must be an integer >= {minimum}, got {B!r}")
    if int(B) < minimum:
        raise ValueError(f"B (batch size) must be an integer >= {minimum}, got {B!r} ({why})")
    return int(B)


def _check_sw2(sigma_w2) -> float:
    """sigma_w2: the weight variance of Yang et al. 2019 (W_ij ~ N(0, sigma_w2/N)), a number > 0."""
    check_positive("sigma_w2", sigma_w2)
    if np.ndim(sigma_w2) != 0:
        raise TypeError(f"sigma_w2 must be a real number > 0, got {sigma_w2!r}")
    return float(sigma_w2)


def _act(act) -> Activation:
    """phi as a signalprop Activation (name, expression, callable or Activation)."""
    return _activation(act)


# ---------------------------------------------------------------------------------------------
# quadrature on the sphere marginals (derived here)


# The quadrature rules below are cached by value (lru_cache: _gl by its node count, the 4 most
# recent; _rule1 / _rule2 by (B, kinks), the 8 most recent): pure functions of their arguments,
# returned as read-only arrays, so a cached rule is the rule a cold call builds.
@lru_cache(maxsize=4)
def _gl(n: int):
    """Gauss-Legendre nodes and weights on [-1, 1] (numerical helper of the quadrature derived
    here)."""
    x, w = np.polynomial.legendre.leggauss(n)
    return _frozen(x), _frozen(w)


def _frozen(a: np.ndarray) -> np.ndarray:
    """``a`` made read-only (the cached rules are shared by every caller)."""
    a.flags.writeable = False
    return a


def _composite(breaks, n: int = _GL_N):
    """Composite Gauss-Legendre rule over consecutive break points (numerical helper)."""
    x, w = _gl(n)
    a, b = np.asarray(breaks[:-1], float), np.asarray(breaks[1:], float)
    half, mid = 0.5 * (b - a), 0.5 * (b + a)
    return (mid[:, None] + half[:, None] * x).ravel(), (half[:, None] * w).ravel()


def _grid(hi: float, step: float) -> np.ndarray:
    """Equally spaced break points 0..hi, spacing <= step (numerical helper)."""
    k = max(1, int(math.ceil(hi / step - 1e-9)))
    return np.linspace(0.0, hi, k + 1)


def _log_cos_weight(p: float, x: np.ndarray) -> np.ndarray:
    """p log cos x, accurate for small x and large p (log1p(-2 sin^2(x/2))): the log of the
    sphere-marginal weights cos^p (derived here)."""
    if not p:
        return np.zeros_like(x)
    sh = np.sin(0.5 * x)
    with np.errstate(divide="ignore"):
        return p * np.log1p(-2.0 * sh * sh)


@lru_cache(maxsize=8)
def _rule1(B: int, kinks: tuple):
    """Nodes y and weights of E[f(y_a)], y_a = sqrt(B-1) t, t ~ c (1 - t^2)^{(B-4)/2} dt.

    Derived here (the one-coordinate marginal of a uniform point on S^{B-2}); t = sin psi:
    E f = c1 int_{-pi/2}^{pi/2} cos^{B-3} psi f(sqrt(B-1) sin psi) dpsi, c1 = 1 / int cos^{B-3}
    = Gamma((B-1)/2) / (sqrt(pi) Gamma((B-2)/2)), taken as 1 / (sum of the weights)."""
    p = B - 3
    hi = min(math.pi / 2, math.sqrt(2.0 * _CUT / p))
    step = min(1.0 / math.sqrt(p), math.pi / 8)
    g = _grid(hi, step)
    br = np.concatenate([-g[::-1], g[1:]])
    s = math.sqrt(B - 1.0)
    ks = [math.asin(k / s) for k in kinks if abs(k) < s * math.sin(hi)]
    br = np.unique(np.concatenate([br, ks]))
    psi, w = _composite(br)
    w = w * np.exp(_log_cos_weight(p, psi))
    # c1 = 1 / sum(w): the rule integrates the bare weight to ~1e-16, more accurately than the
    # gamma-function ratio evaluates at large B
    return _frozen(s * np.sin(psi)), _frozen(w / w.sum())


@lru_cache(maxsize=8)
def _rule2(B: int, kinks: tuple):
    """Nodes (y_a, y_b) and weights of E[f(y_a, y_b)], a != b (derived here).

    (t_a, t_b) = R (cos theta, cos(theta - alpha)), cos alpha = -1/(B-1), R = sin chi:
    E f = ((B-3)/(2 pi)) int_0^{pi/2} sin chi cos^{B-4} chi int_0^{2 pi} f dtheta dchi."""
    p = B - 4
    hi = math.pi / 2 if p == 0 else min(math.pi / 2, math.sqrt(2.0 * _CUT / p))
    step = min(1.0 / math.sqrt(max(p, 1)), math.pi / 8)
    s = math.sqrt(B - 1.0)
    onsets = sorted({math.asin(abs(k) / s) for k in kinks if 0 < abs(k) < s * math.sin(hi)})
    # radii where a kink line of y_a crosses one of y_b: there the angular break points cross
    rho = -1.0 / (B - 1)
    corners = []
    for ka in kinks:
        for kb in kinks:
            s1, s2 = ka / s, (kb - rho * ka) / (s * math.sqrt(1.0 - rho * rho))
            rc = math.hypot(s1, s2)
            if 0 < rc < math.sin(hi):
                corners.append(math.asin(rc))
    br = np.unique(np.concatenate([_grid(hi, step), onsets, corners]))
    chis, wch = [], []
    x, w = _gl(_GL_N)
    for a, b in zip(br[:-1], br[1:]):
        below = [o for o in onsets if o <= a + 1e-15]
        if below:
            # a kink curve appears at chi = o like sqrt(chi - o): integrate in sigma = sqrt(chi - o)
            # on every panel above the nearest onset o (the branch point stays off the panels)
            o = below[-1]
            sa, sb = math.sqrt(max(a - o, 0.0)), math.sqrt(b - o)
            sg = 0.5 * (sa + sb) + 0.5 * (sb - sa) * x
            chis.append(o + sg * sg)
            wch.append(0.5 * (sb - sa) * w * 2.0 * sg)
        else:
            chis.append(0.5 * (a + b) + 0.5 * (b - a) * x)
            wch.append(0.5 * (b - a) * w)
    chi, wch = np.concatenate(chis), np.concatenate(wch)
    wch = wch * (B - 3) / (2 * math.pi) * np.sin(chi) * np.exp(_log_cos_weight(p, chi))
    alpha = math.acos(rho)
    R = np.sin(chi)
    # angular break points, one row per chi node: uniform ones and the kink angles
    rows = [np.broadcast_to(np.linspace(0, 2 * math.pi, _THETA_PANELS + 1), (chi.size,
                                                                             _THETA_PANELS + 1))]
    for k in kinks:
        kp = np.clip(k / (s * R), -2.0, 2.0)
        valid = np.abs(kp) < 1.0
        d = np.arccos(np.clip(kp, -1.0, 1.0))
        for centre in (0.0, alpha):
            for sign in (1.0, -1.0):
                ang = np.mod(centre + sign * d, 2 * math.pi)
                rows.append(np.where(valid, ang, 0.0)[:, None])
    thb = np.sort(np.concatenate(rows, axis=1), axis=1)
    a, b = thb[:, :-1], thb[:, 1:]
    half, mid = 0.5 * (b - a), 0.5 * (b + a)
    theta = mid[:, :, None] + half[:, :, None] * x            # (nchi, panels, n)
    wth = half[:, :, None] * w                                 # dtheta weights
    ww = (wch[:, None, None] * wth).ravel()
    rr = (s * R)[:, None, None]
    ya = (rr * np.cos(theta)).ravel()
    yb = (rr * np.cos(theta - alpha)).ravel()
    keep = ww > 0
    return _frozen(ya[keep]), _frozen(yb[keep]), _frozen(ww[keep])


def _kinks(act: Activation) -> tuple:
    """The declared kinks of phi (points where phi or phi' is not analytic), sorted."""
    return tuple(sorted(float(k) for k in (act.kinks or ())))


def _moments(act: Activation, B: int) -> dict:
    """The one- and two-coordinate expectations that the kernel and the operator need (derived
    here; u uniform on the unit sphere of 1^perp as in Yang et al. 2019's BSB1 analysis).

    Notation: y = sqrt(B) u, p = phi(y), d = phi'(y), omega = (B-1)/B; a != b."""
    kinks = _kinks(act)
    y, w1 = _rule1(B, kinks)
    ya, yb, w2 = _rule2(B, kinks)
    om = (B - 1) / B
    p, d = np.asarray(act.phi(y), float), np.asarray(act.dphi(y), float)
    u2 = y * y / B
    pa, pb = np.asarray(act.phi(ya), float), np.asarray(act.phi(yb), float)
    da, db = np.asarray(act.dphi(ya), float), np.asarray(act.dphi(yb), float)
    ua, ub = ya / math.sqrt(B), yb / math.sqrt(B)
    d2 = d * d
    return {
        "one": float(w1.sum()), "two": float(w2.sum()),
        "m": float(w1 @ p), "Kaa": float(w1 @ (p * p)), "Kab": float(w2 @ (pa * pb)),
        "A1": float(w1 @ d2), "C1": float(w1 @ (u2 * d2)),
        "P1": float(w1 @ (d2 * (om - u2))),            # E[d_a^2 (omega - u_a^2)]
        "P2": float(w1 @ (d2 * (om - u2) ** 2)),       # E[d_a^2 (omega - u_a^2)^2]
        "P3": float(w1 @ (d2 * u2 * (om - u2))),       # E[d_a^2 u_a^2 (omega - u_a^2)]
        "A2": float(w2 @ (da * db)),
        "C2": float(w2 @ (ua * ub * da * db)),
        "X2": float(w2 @ (da * (om - ua * ua) * db)),   # E[d_a (omega - u_a^2) d_b]
        "Y2": float(w2 @ (da * (om - ua * ua) * ua * ub * db)),
        "Z2": float(w2 @ (db * db * (1.0 / B + ua * ub) ** 2)),
    }


#: What: the sphere-marginal expectations (:func:`_moments`) of an activation at batch size B.
#: Keyed by value: (the Activation itself, which hashes and compares by value: built-ins by name
#: and parameters, expressions by their sympy tree, callables by reference; B). Bound: the
#: _MOMENT_CACHE_MAX most recently used (lru_cache on _cached_moments). Why it cannot change a
#: result: _moments is a fixed function of (activation value, B) on fixed rules, and the cached
#: dict is handed out read-only (tests/test_caches.py: cold == warm).
_MOMENT_CACHE_MAX = 64


@lru_cache(maxsize=_MOMENT_CACHE_MAX)
def _cached_moments(act: Activation, B: int) -> MappingProxyType:
    return MappingProxyType(_moments(act, B))


def _get_moments(act: Activation, B: int) -> MappingProxyType:
    """_moments (derived here) through the bounded cache ``_cached_moments``, read-only."""
    return _cached_moments(act, B)


# ---------------------------------------------------------------------------------------------
# forward


@dataclass(frozen=True, eq=False)
class BNKernel(_Result):
    """Post-BN kernel of one unit at the BSB1 fixed point (Yang et al. 2019; computed here).

    second_moment = E[phi(y_a)^2], cross_moment = E[phi(y_a) phi(y_b)] (a != b), mean =
    E[phi(y_a)], y = BN(h); the next pre-activation kernel is BSB1 with q = sigma_w2 *
    second_moment, c = cross_moment / second_moment; q_perp = q (1 - c) = sigma_w2 (second_moment -
    cross_moment), the scale of r^2 = ||G h||^2 ~ q_perp chi^2_{B-1}."""

    activation: str
    B: int
    sigma_w2: float
    second_moment: float
    cross_moment: float
    mean: float
    q: float
    c: float
    q_perp: float


def bn_kernel(act, B: int, sigma_w2: float = 1.0) -> BNKernel:
    """E[phi(y_a)^2], E[phi(y_a) phi(y_b)], E[phi(y_a)] after batch normalisation, and the
    mean-field ``q``, ``c`` of the next pre-activation (Yang et al. 2019, BSB1 fixed point).

    y = sqrt(B) u with u uniform on the unit sphere of 1^perp whatever the (BSB1) pre-BN kernel:
    exact one- and two-coordinate sphere-marginal integrals (derived in
    docs/theory/batchnorm.md). E[y_a^2] = 1 and E[y_a y_b] = -1/(B-1) exactly (from
    sum_a y_a = 0 and sum_a y_a^2 = B). B must be an integer >= 4 (the gradient side needs
    B - 3 > 0; the same range is kept here); sigma_w2 > 0."""
    B = _check_batch(B)
    sw2 = _check_sw2(sigma_w2)
    a = _act(act)
    mo = _get_moments(a, B)
    kaa, kab = mo["Kaa"], mo["Kab"]
    return BNKernel(a.name, B, sw2, kaa, kab, mo["m"], sw2 * kaa, kab / kaa, sw2 * (kaa - kab))


# ---------------------------------------------------------------------------------------------
# backward


def orbit_basis(B: int, a: int = 0) -> dict:
    """B x B matrices of the orbit space of the permutations fixing batch member ``a`` (derived
    here): ``"aa"`` = e_a e_a^T, ``"a1"`` = e_a 1^T + 1 e_a^T, ``"I"``, ``"11"`` = 1 1^T, and the
    two that span its part with P 1 = 0: ``"G"`` = I - 1 1^T / B, ``"ww"`` = w w^T,
    w = e_a - 1/B."""
    B = _check_batch(B)
    if isinstance(a, (bool, np.bool_)) or not isinstance(a, numbers.Integral) or not 0 <= a < B:
        raise ValueError(f"a (batch member) must be an integer in [0, B), got {a!r}")
    e = np.zeros(B)
    e[a] = 1.0
    one = np.ones(B)
    w = e - one / B
    return {"aa": np.outer(e, e), "a1": np.outer(e, one) + np.outer(one, e), "I": np.eye(B),
            "11": np.outer(one, one), "G": np.eye(B) - np.outer(one, one) / B, "ww": np.outer(w, w)}


def _embed(B: int) -> np.ndarray:
    """Columns: G = I - 11^T/B and w w^T = e_a e_a^T - (e_a 1^T + 1 e_a^T)/B + 11^T/B^2 in the
    orbit basis (e_a e_a^T, e_a 1^T + 1 e_a^T, I, 1 1^T) (derived here)."""
    return np.array([[0.0, 1.0], [0.0, -1.0 / B], [1.0, 0.0], [-1.0 / B, 1.0 / B ** 2]])


def _m_from4(mo: dict, B: int) -> np.ndarray:
    """M = E_u[Q D P D Q] on the 4-dim orbit space, as a 2 x 4 matrix into span{G, w w^T}.

    Derived here: for each basis P, T1 = tr M(P) and T2 = w^T M(P) w, reduced to one- and
    two-coordinate expectations with E[u_a F] = 0, E[u_a^2 F] = E[F]/B (F symmetric); then
    M(P) = g G + h w w^T with (B-1) g + omega h = T1, omega g + omega^2 h = T2."""
    om = (B - 1) / B
    A1, A2, C1, C2 = mo["A1"], mo["A2"], mo["C1"], mo["C2"]
    dbar2 = (A1 + (B - 1) * A2) / B              # E[d_a dbar] = E[dbar^2]
    sd = C1 + (B - 1) * C2                       # E[u_a d_a S] = E[S^2]/B = E[u_a^2 S^2], S = u.d
    e1 = mo["P1"]                                # E[d_a^2 (omega - u_a^2)] = E[d_a^2 |Q w|^2]
    e2 = A1 - dbar2 - sd                         # E[d_a w^T Q d] = E[(w^T Q d)^2] = E|Q d|^2 / B
    f1 = mo["P2"]                                # E[d_a^2 (w^T Q w)^2]
    x_dbar = (mo["P1"] + (B - 1) * mo["X2"]) / B
    x_s = mo["P3"] + (B - 1) * mo["Y2"]
    f2 = e1 - x_dbar - x_s                       # E[d_a (w^T Q w)(w^T Q d)]
    f3 = f1 + (B - 1) * mo["Z2"]                 # E[|D Q w|^2]
    T = np.array([[e1, 2 * e2, B * e1, B * e2],
                  [f1, 2 * f2, f3, e2]])
    S = np.array([[B - 1.0, om], [om, om * om]])
    return np.linalg.solve(S, T)


def bn_orbit_map(act, B: int) -> np.ndarray:
    """``M(P) = E_u[Q D P D Q]`` (unscaled; :class:`BNGradientOperator`) as a 2 x 4 matrix from the
    orbit basis (e_a e_a^T, e_a 1^T + 1 e_a^T, I, 1 1^T) to the coefficients of (G, w w^T)."""
    B = _check_batch(B)
    return _m_from4(_get_moments(_act(act), B), B)


@dataclass(frozen=True, eq=False)
class BNGradientOperator(_Result):
    """One layer of the backward pass through Dense -> BN -> phi (derived here; Yang et al. 2019).

    Pi_h^l = scale * M(Pi_h^{l+1}) with scale = sigma_w2 * width_ratio * E[B / r^2],
    E[B/r^2] = B / ((B - 3) q_perp). ``from4`` (2 x 4): M on the orbit basis (e_a e_a^T,
    e_a 1^T + 1 e_a^T, I, 1 1^T) -> coefficients of (G, w w^T), unscaled. ``matrix`` (2 x 2): the
    scaled operator on span{G, w w^T} (columns: images of G and w w^T); it is upper triangular,
    ``mu``, ``alpha``, ``beta`` its unscaled entries (M(G) = mu G, M(w w^T) = alpha w w^T + beta G).
    ``lambda_G = scale mu`` (symmetric sector), ``lambda_V = scale alpha`` (sector of the one
    batch member), ``lambda_ = lambda_G``: the per-layer growth factor of trace(Pi) (exactly, from
    the second layer below the loss on: for P with P 1 = 0, tr M(P) = mu tr P, because Q^2 = Q
    and E[D Q D] commutes with the batch permutations; equivalently beta = (mu - alpha)/B)."""

    activation: str
    B: int
    sigma_w2: float
    q_perp: float
    width_ratio: float
    scale: float
    from4: np.ndarray
    matrix: np.ndarray
    mu: float
    alpha: float
    beta: float
    lambda_G: float
    lambda_V: float
    lambda_: float


def bn_gradient_operator(act, B: int, sigma_w2: float = 1.0, *, q_perp: Optional[float] = None,
                         width_ratio: float = 1.0) -> BNGradientOperator:
    """The linear map Pi_h^{l+1} -> Pi_h^l of the B x B gradient covariance through the Dense
    layer l+1 and the BN and phi of layer l (derived here; Yang et al. 2019 for the setting).

    Pi_x = sigma_w2 (N_{l+1}/N_l) Pi_h^{l+1};  Pi_h^l = E[B/r^2] E_u[Q D Pi_x D Q],
    Q = G - u u^T, D = diag(phi'(sqrt(B) u)), r independent of u with r^2 ~ q_perp chi^2_{B-1},
    so E[B/r^2] = B / ((B - 3) q_perp), finite only for B >= 4. ``q_perp`` = q (1 - c) of the
    pre-BN kernel of layer l; default the BSB1 fixed point, sigma_w2 (K_aa - K_ab), where the
    operator does not depend on sigma_w2. ``width_ratio`` = N_{l+1} / N_l (> 0)."""
    B = _check_batch(B)
    sw2 = _check_sw2(sigma_w2)
    check_positive("width_ratio", width_ratio)
    a = _act(act)
    mo = _get_moments(a, B)
    if q_perp is None:
        q_perp = sw2 * (mo["Kaa"] - mo["Kab"])
    else:
        check_positive("q_perp", q_perp)
    q_perp, width_ratio = float(q_perp), float(width_ratio)
    scale = sw2 * width_ratio * B / ((B - 3) * q_perp)
    from4 = _m_from4(mo, B)
    m2 = from4 @ _embed(B)
    mu, beta, alpha = float(m2[0, 0]), float(m2[0, 1]), float(m2[1, 1])
    m2[1, 0] = 0.0 if abs(m2[1, 0]) < 1e-12 * abs(mu) else m2[1, 0]
    lg, lv = scale * mu, scale * alpha
    return BNGradientOperator(a.name, B, sw2, q_perp, width_ratio, scale, from4, scale * m2, mu,
                              alpha, beta, lg, lv, lg)


def bn_explosion_rate(act, B: int) -> float:
    """lambda: the per-layer growth factor of g = trace(Pi) as depth -> infinity at the BSB1 fixed
    point (Yang et al. 2019: gradients explode for every activation and sigma_w^2; the value here
    is derived here). lambda = B/((B-3)(K_aa - K_ab)) mu, independent of sigma_w^2;
    linear phi: (B - 2)/(B - 3); B -> inf: E[phi'(z)^2] / Var[phi(z)]. B integer >= 4."""
    return bn_gradient_operator(act, B).lambda_


def _log_trace_powers(op: BNGradientOperator, B: int, K: int) -> np.ndarray:
    """log trace(M^k P_0), k = 0..K-1, P_0 = M(e_a e_a^T), M unscaled (derived here).

    On span{G, w w^T} M = [[mu, beta], [0, alpha]] (triangular), so with P_0 = x0 G + y0 w w^T:
    M^k P_0 = x_k G + y_k w w^T, y_k = alpha^k y0, x_k = mu^k x0 + beta y0 sum_j mu^{k-1-j}
    alpha^j; trace G = B - 1, trace w w^T = (B-1)/B. With m = max(mu, alpha) and r = min/max the
    sum is m^{k-1} (1 - r^k)/(1 - r), so log trace = k log m + log(bounded): any depth."""
    mu, al, be = op.mu, op.alpha, op.beta
    x0, y0 = float(op.from4[0, 0]), float(op.from4[1, 0])
    om = (B - 1) / B
    k = np.arange(K, dtype=float)
    if mu > 0 and al > 0:
        m = max(mu, al)
        lr = math.log(min(mu, al) / m)
        geo = k if lr == 0.0 else np.expm1(k * lr) / math.expm1(lr)   # (1 - r^k)/(1 - r)
        xk = np.exp(k * math.log(mu / m)) * x0 + be * y0 * geo / m
        yk = np.exp(k * math.log(al / m)) * y0
        return k * math.log(m) + np.log((B - 1) * xk + om * yk)
    out, v, logs = np.empty(K), np.array([x0, y0]), 0.0      # general fallback: iterate
    m2 = np.array([[mu, be], [0.0, al]])
    for i in range(K):
        if i:
            v = m2 @ v
            nv = float(np.abs(v).sum())
            logs += math.log(nv)
            v = v / nv
        out[i] = logs + math.log((B - 1) * v[0] + om * v[1])
    return out


@dataclass(frozen=True, eq=False)
class BNGradientProfile(_Result):
    """Per-layer profile of a BN network (layers 1..L; CONVENTIONS.md names).

    q, c: pre-activation (pre-BN) kernel of h^l; log_g: log trace(Pi^l) = log of the sum over the
    batch of E||delta^l_b||^2 / N_l, log_g[-1] = 0 (loss <v, h^L_a>, one batch member);
    lambda_: the asymptotic per-layer factor; meta: what produced it."""

    layers: np.ndarray
    q: np.ndarray
    c: np.ndarray
    log_g: np.ndarray
    lambda_: float
    meta: dict


def bn_gradient_profile(act, B: int, depth: int, sigma_w2: float = 1.0, *, q0: float = 1.0,
                        c0: float = 0.0, widths=None) -> BNGradientProfile:
    """Mean-field profile of h^l = W^l x^{l-1}, x^l = phi(BN(h^l)), l = 1..depth, for a batch of B
    inputs with BSB1 Gram matrix (||x^0_b||^2/N_0 = q0, correlation c0) and the loss
    <v, h^L_a> on batch member a (derived here; model of Yang et al. 2019).

    Backward: Pi^L = e_a e_a^T, then Pi^l = s_l M(Pi^{l+1}) (see :func:`bn_gradient_operator`)
    with s_l = sigma_w2 (N_{l+1}/N_l) B / ((B-3) q_perp^l), q_perp^1 = sigma_w2 q0 (1 - c0) and
    q_perp^l = sigma_w2 (K_aa - K_ab) for l >= 2: sigma_w2 cancels from log_g. log_g[l-1] =
    log trace(Pi^l), carried in log space (any depth). ``widths``: N_1..N_L (a number or a
    sequence of length depth), default equal widths. B integer >= 4, depth integer >= 1,
    sigma_w2 > 0, q0 > 0, -1/(B-1) <= c0 < 1."""
    B = _check_batch(B)
    sw2 = _check_sw2(sigma_w2)
    if isinstance(depth, (bool, np.bool_)) or not isinstance(depth, numbers.Integral) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    depth = int(depth)
    q0 = float(check_positive("q0", q0))
    check_finite("c0", c0)
    c0 = float(c0)
    if not (-1.0 / (B - 1) - 1e-15 <= c0 < 1.0):
        raise ValueError(f"c0 must lie in [-1/(B-1), 1) = [{-1.0 / (B - 1):.6g}, 1) for a positive "
                         f"semidefinite input Gram matrix with a nonzero centred part, got {c0!r}")
    if widths is None:
        n = np.ones(depth)
    else:
        n = np.asarray(check_positive("widths", widths), float)
        n = np.broadcast_to(n, (depth,)) if n.ndim == 0 else n
        if n.shape != (depth,):
            raise ValueError(f"widths must be a number or a sequence of length depth = {depth} "
                             f"(N_1..N_L), got length {n.size}")
    a = _act(act)
    kern = bn_kernel(a, B, sw2)
    op = bn_gradient_operator(a, B, sw2)
    # scale of layer l (1-based, l = 1..L-1): s_l = sigma_w2 (N_{l+1}/N_l) B / ((B-3) q_perp^l)
    qp = np.full(depth - 1, kern.q_perp)
    if depth > 1:
        qp[0] = sw2 * q0 * (1.0 - c0)
    log_s = np.log(sw2 * B / (B - 3)) + np.log(n[1:] / n[:-1]) - np.log(qp)
    log_g = np.zeros(depth)
    if depth > 1:
        # layer L-1-k holds s * M^k (M(e_a e_a^T)), k = 0..L-2; prefix sums of log s from the top
        log_g[:-1] = np.cumsum(log_s[::-1])[::-1] + _log_trace_powers(op, B, depth - 1)[::-1]
    q = np.full(depth, kern.q)
    c = np.full(depth, kern.c)
    q[0], c[0] = sw2 * q0, c0
    meta = {"source": "theory", "model": "batchnorm", "activation": a.name, "B": B,
            "sigma_w2": sw2, "q0": q0, "c0": c0, "loss": "<v, h^L_a>, one batch member",
            "g": "trace(Pi^l) = sum_b E||delta^l_b||^2 / N_l"}
    return BNGradientProfile(np.arange(1, depth + 1), q, c, log_g, op.lambda_, meta)
