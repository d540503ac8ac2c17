"""Finite-width laws: the distribution of squared norms of activations and gradients at finite width,
the log-normal law of Hanin & Nica, and the probability that a ReLU network is born dead.

Notation and estimators are those of CONVENTIONS.md: ``h^l = W^l x^{l-1} + b^l``, Gaussian weights
``W_ij ~ N(0, sigma_w^2/N_{l-1})``, loss ``<v, h^L>`` with ``v ~ N(0, I)``, and per sample network

    q_hat^l = ||h^l||^2 / N_l,    g_hat^l = ||delta^l||^2 / N_l,    G_hat^l = g_hat^l ||x^{l-1}||^2 / N_{l-1},

whose means are (to leading order in 1/N) the mean-field ``q^l``, ``g^l``, ``G^l`` of
:func:`~signalprop.meanfield.predict`. :func:`finite_width` gives, per layer, the mean and variance
of ``log q_hat``, ``log g_hat``, ``log G_hat``, their moment ratios ``E[X^2]/E[X]^2``, the
Hanin-Nica parameter ``beta`` and a log-normal law (:class:`LogNormalLaw`, scipy.stats-style).

1. Exact laws (Gaussian weights)
--------------------------------
*Conditional Gaussianity.* Given ``x^{l-1}``, the units of ``h^l`` are i.i.d. ``N(0, Q^l)`` with
``Q^l = sigma_w^2 ||x^{l-1}||^2/N_{l-1} + sigma_b^2``; so ``q_hat^l = Q^l chi^2_{N_l}/N_l``.

*Linear.* ``q_hat^l/q^l = prod_{k<=l} chi^2_{N_k}/N_k`` (no bias) and, since ``delta^l`` does not
depend on the forward pass, ``g_hat^l/g^l = prod_{k=l}^{L} chi^2_{N_k}/N_k`` (any bias; the factor
``k = L`` is ``||v||^2/N_L``). Each factor has mean 1, ``E[f^2] = 1 + 2/N``,
``E[log f] = psi(N/2) - log(N/2)``, ``Var[log f] = psi'(N/2)``. Hence
``E[||J u||^4]/||u||^4 = prod_l (1 + 2/N_l)`` for the input-output Jacobian ``J`` (W_ij ~ N(0, 1/N)).

*ReLU, no bias.* With ``K_l`` the number of active units of layer ``l`` (``K_l ~ Bin(N_l, 1/2)``,
independent of the magnitudes), ``||x^l||^2 = (sigma_w^2/N_{l-1}) ||x^{l-1}||^2 chi^2_{K_l}``, so

    q_hat^l/q^l = (chi^2_{N_l}/N_l) prod_{k<l} F_k,         F_k = (2/N_k) chi^2_{K_k}  (i.i.d. over k)
    g_hat^l/g^l = (chi^2_{N_L}/N_L) prod_{k=l}^{L-1} B_k,   B_k = (2/N_k) chi'^2_{K_k}

with ``chi'`` independent of ``chi`` given the shared ``K_k`` (Hanin & Rolnick 2018, arXiv
1803.01719; Hanin & Nica 2019, arXiv 1812.05994, whose matrix model has independent Bernoulli(1/2)
masks). ``E[F] = 1``, ``E[F^2] = 1 + 5/N`` (so ``E[M^2]/E[M]^2 = prod (1 + 5/N_k)(1 + 2/N_l)``
where the ``5``s count the ReLU layers *below* the pre-activation ``h^l`` and the ``2`` its own
Gaussian draw; the input layer adds nothing), ``E[F B] = 1 + 1/N``. ``F = 0`` when ``K = 0``
(a dead layer), so ``E[log F] = -inf``: log-moments are conditional on ``K >= 1``,

    E[log F | K>=1]   = sum_{k>=1} P(K=k | K>=1) [psi(k/2) + log(4/N)]
    Var[log F | K>=1] = sum_k P(K=k | K>=1) psi'(k/2) + Var[psi(K/2) | K>=1],

and the atom ``P(F = 0) = 2^{-N}`` is carried separately (``p_zero``; see :func:`dead_probability`).

*The backward law is exact for the network, not only for the matrix model* (derived here): with
``A = <v, h^L> = <delta^l, h^l>`` (Euler, positive homogeneity), the exact conditional sampling of
``W^l`` given ``h^l = W^l x^{l-1}`` (:class:`~signalprop.layers.dense.MatrixFreeGaussian`) gives
``||delta^{l-1}||^2 = A^2/||x^{l-1}||^2 + (sigma_w^2/N_{l-1}) ||delta^l||^2 chi^2_{K_{l-1}-1}``. Writing
``A^2/||x^{l-1}||^2 = (sigma_w^2/N_{l-1}) ||delta^l||^2 omega_l Psi_l`` with
``Psi_l = ||h^l||^2 N_{l-1}/(sigma_w^2 ||x^{l-1}||^2) ~ chi^2_{N_l}`` and
``omega_l = cos^2(delta^l, h^l)``, induction shows ``omega_l ~ Beta(1/2, (N_l - 1)/2)``
independent of ``Psi_l`` and of ``||delta^l||``: true at ``l = L`` (``v`` is isotropic), and
``omega_l Psi_l ~ chi^2_1`` (beta-gamma algebra) makes ``chi^2_1 + chi^2_{K-1} = chi^2_K``, while
``omega_{l-1} = Beta(1/2, (K-1)/2) Beta(K/2, (N-K)/2) ~ Beta(1/2, (N-1)/2)`` whatever ``K``.

2. General activations (approximation)
--------------------------------------
*Local noise.* At fixed ``Q^l`` three sample means of i.i.d. unit terms fluctuate:
``a = log(q_hat/Q)``, ``eta = log((||x^l||^2/N_l)/E[phi^2])`` and
``zeta = log((1/N_l) sum_i phi'(h_i)^2 xi_i^2 / E[phi'^2])``, the backward factor with
``(W^{l+1})^T delta^{l+1}`` replaced by a Gaussian vector ``xi`` of the same norm. Their means,
covariances and third cumulants come from the joint moments ``c`` of one unit's
``u = (z^2, phi^2/E phi^2, phi'^2 xi^2/E phi'^2)`` (``log(1+e) = e - e^2/2 + e^3/3 - ...``):

    E[log U_j]            = -c_jj/(2N) + c_jjj/(3N^2) - 3 c_jj^2/(4N^2)
    Cov(log U_j, log U_k) = c_jk/N - (c_jkk + c_jjk)/(2N^2) + c_jk (c_jj + c_kk)/N^2 + c_jk^2/(2N^2)
    k3(log U_j, U_k, U_m) = (c_jkm - c_jk c_km - c_jk c_jm - c_jm c_km)/N^2.

*Feedback.* ``eps^l = log(Q^l/q^l)`` fluctuates and moves the layer's statistics:
``rho_l = log(E[phi^2](Q^l)/E[phi^2](q^l)) + eta_l``, ``beta_l = log(E[phi'^2](Q^l)/E[phi'^2](q^l))
+ zeta_l``, ``eps^{l+1} = log(w_l e^{rho_l} + 1 - w_l)`` with
``w_l = sigma_w^2 E[phi^2]/(sigma_w^2 E[phi^2] + sigma_b^2)``, and
``log(g_hat^l/g^l) = c_L + sum_{k=l}^{L-1} beta_k``, ``c_L = log(chi^2_{N_L}/N_L)``. Layer by layer,
``eps^l`` is taken Gaussian (mean, variance) and these maps are integrated over it by 9-point
Gauss-Hermite (statistical linearisation: the slopes ``A_l, B_l, w_l`` are regressions, not
derivatives); correlations across layers are carried to first order by the linear model
``eps^{l+1} = w_l (A_l eps^l + eta_l)``, ``beta_l = B_l eps^l + zeta_l``.

*Rank-one coupling.* Exactly, ``(W^l)^T delta^l = x^{l-1} s (h^l.delta^l)/Q^l + (independent part
orthogonal to the layer input)`` (``s = sigma_w^2/N_{l-1}``), so
``E||delta^{l-1}||^2`` gets the relative correction ``w_{l-1} r_{l-1} theta_l / N_{l-1}`` with
``r = E[phi^2 phi'^2]/(E phi^2 E phi'^2)`` and ``theta_l = E[(h^l.delta^l)^2/(Q^l ||delta^l||^2)] - 1``,
which obeys ``theta_L = 0`` (``v`` is isotropic) and
``theta_{l-1} = 2 B_{l-1} + w_{l-1} A_{l-1}^2 (E phi^2/(q E phi'^2))_{l-1} theta_l`` (``2B = E[z^2
phi'^2]/E phi'^2 - 1``). For ReLU ``B = 0`` and ``theta = 0``: the exact cancellation of §1.
The same ``W^{l+1}`` also makes ``zeta_l`` and the next forward factor ``eta_{l+1}`` covary,
``Cov(zeta_l, eta_{l+1}) = (w r/N)_l (E[phi^4]/E[phi^2]^2 - 1)_{l+1}/N_{l+1}`` (10/N^2 for ReLU,
2/N^2 for linear layers), which no per-layer marginal sees but the total gradient norm does
(:mod:`signalprop.clipping`); the weaker covariances with ``eta_j``, ``j > l + 1``, are omitted.

For linear and ReLU layers without bias the slopes are ``A = 1``, ``B = 0``, ``w = 1`` and the
local laws are the exact ones of §1, so the model *is* the exact law. Elsewhere it holds while
``Var eps`` stays small; it degrades (reported in ``note``) when the forward log-variance grows
beyond about 1 with an activation that is not positively homogeneous (e.g. GELU near the edge of
chaos, where the length map is nearly neutral).

*Fourth moments and beta.* The moment ratio of the gradient is the fourth-moment recursion

    E[g_hat^l 2]/E[g_hat^l]^2 = (1 + (3 kappa_l - 1)/N_l) E[g_hat^{l+1} 2]/E[g_hat^{l+1}]^2,
    kappa_l = E[phi'(h)^4]/E[phi'(h)^2]^2 at h ~ N(0, q^l),   starting from 1 + 2/N_L,

(mean-field ``q^l``, layers independent: exact for linear and ReLU), and Hanin & Nica's
``beta_l = sum_{k=l}^{L-1} (3 kappa_k - 1)/N_k + 2/N_L`` (ReLU: ``5 sum 1/N + 2/N_L``; their
Thm 1 / Cor 3: ``log`` of the normalised squared norm ~ ``N(-beta/2, beta)``). The forward ratio
uses ``E[phi^4]/E[phi^2]^2`` and the slopes ``w A`` (exact for linear, and ReLU without bias).

3. Where mean-field theory breaks
---------------------------------
The typical (median) ``g_hat`` is ``e^{-beta/2}`` times the mean-field ``g`` and a one-sigma band
spans a factor ``e^{2 sqrt(beta)}``: mean-field theory describes a typical network only while
``beta << 1``; ``beta >= 1`` (ReLU: depth/width ``>= 0.2``) is the finite-width regime where the
mean is carried by rare large draws. The log-normal law itself is asymptotic (Kolmogorov distance
``O((sum 1/N^2)^{1/5})``): it degrades when single layers are narrow (``N <~ 10``).
"""

from __future__ import annotations

from .chisquare import (BETA_BREAKS, BETA_MEANFIELD, chi2_factor, hanin_nica_beta, regime_of_beta,
                        relu_factor)
from .dead import DeadNetwork, dead_probability
from .laws import FiniteWidthProfile, finite_width
from .lognormal import LogNormalLaw

# private names that signalprop.clipping and tests/test_caches.py import from signalprop.finite
from .laws import _check_network, _finite_width  # noqa: F401
from .local import _TABLES, _TABLES_MAX, _stats_table  # noqa: F401
from .model import _MAX_SKEW, _innovation_draws, _log_covariance  # noqa: F401

__all__ = ["LogNormalLaw", "FiniteWidthProfile", "finite_width", "chi2_factor", "relu_factor",
           "hanin_nica_beta", "DeadNetwork", "dead_probability", "regime_of_beta",
           "BETA_MEANFIELD", "BETA_BREAKS"]
