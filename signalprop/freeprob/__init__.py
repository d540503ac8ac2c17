"""Free multiplicative convolution of laws on ``[0, inf)``: S-transforms, exact moment series,
atoms, support edges, and the numerical solution of the functional equation for densities and
distribution functions.

Transforms (Pennington, Schoenholz & Ganguli 2017, arXiv 1711.04735, eqs. 7-10; Voiculescu 1987)
of a law ``mu`` of a non-negative variable ``X`` with moments ``m_k``:

    psi(zeta) = E[zeta X / (1 - zeta X)] = sum_{k>=1} m_k zeta^k     (moment generating function)
    M(z) = z G(z) - 1 = psi(1/z),   G(z) = E[1/(z - X)]              (their eqs. 7-8)
    chi = psi^{-1},   S(w) = chi(w) (1 + w) / w                      (their eq. 9)

and ``S_{XY} = S_X S_Y`` for free ``X, Y`` (Voiculescu 1987; their eqs. 10-12). Writing
``R(w) = (1 + w)/S(w) = w/chi(w)``, the inverse relation is ``psi = zeta R(psi)``, so by Lagrange
inversion

    m_k = (1/k) [w^{k-1}] R(w)^k                                      (their eq. 18)

(exact moments of every order; Fuss-Catalan ``binom((L+1)k, k)/(Lk + 1)`` for
``S = (1 + w)^{-L}``).

**The product.** A :class:`FreeProduct` is the law whose S-transform is

    S(w) = exp(C) prod_i (1 + A_i w)^{E_i} prod_g S_g(r_g w)^{n_g}

with a closed part (Marchenko-Pastur, point masses, Bernoulli laws and the change of dimension of
rectangular products are all of this form) and numerical factors ``S_g``: laws given by atoms and
a mixture of narrow uniform components (:class:`Law`; for a network, the law of
``phi'(h)^2``). ``r_g`` rescales the argument (the dimension of the space where factor ``g`` acts,
relative to that of the product: ``psi`` scales by ``1/r`` when a law is read in a space ``r``
times larger). For a numerical factor ``S_g(u) = zeta_g (1 + u)/u`` with ``psi_g(zeta_g) = u``,
so the product's ``psi`` at ``zeta = 1/z`` solves, for ``w`` and the ``zeta_g``,

    log w - log(1 + w) + log S(w) = log zeta,      log psi_g(zeta_g) = log(r_g w)   (all g).

**Solving it.** Newton in ``u = log(w + kappa)`` (``kappa`` = 1 minus the mass of the atom at
0) and the ``log zeta_g`` (arrowhead Jacobian), continued down the vertical path from
``z = x + 16 i x_max`` (exact moment series) to ``y = eps x``, ``eps = 1e-10``, steps split on
failure or on leaving the physical region (Belinschi & Bercovici 2007: ``arg omega(z) >= arg z``);
density ``-Im G_c(x + i eps x)/pi``, ``G_c = (w + kappa)/z`` less the nonzero atoms; CDF

    F_c(x) = M_c + (1/pi) int_0^inf Re[G_c(x + iy) - M_c/(x + iy)] dy,

by the trapezoidal rule in ``log y`` (error ``~exp(-pi^2/h)``, about ``3e-9`` at ``h = 0.5``).

**Atoms** (Bercovici & Voiculescu 1993): at 0 of mass ``1 - min(1, min_f (1 - alpha_f)/r_f)``;
at ``prod a_f`` of mass ``1 - sum_f (1 - mu_f({a_f}))/r_f`` when positive. **Upper edge**:
``1/chi(w*)`` at the first critical point ``w* > 0`` of ``chi``, else ``w -> infinity``
(LITERATURE.md section 3). Derivations, the continuation rules and the error bound:
docs/theory/free-probability.md.

Modules (each imports only those above it in this list): :mod:`.series` (power series, Lagrange
inversion, Fuss-Catalan numbers), :mod:`.transforms` (the factor laws and their transforms:
:class:`Law`, :func:`pushforward_law`, :class:`ClosedFactor` and its constructors),
:mod:`.subordination` (the functional equation, Newton's method and the continuation along the
vertical paths), :mod:`.product` (:class:`FreeProduct`: atoms, exact moments, density,
distribution function, support edges).
"""

from __future__ import annotations

from .product import FreeProduct
from .series import fuss_catalan, lagrange_moments, series_reversion
from .transforms import Z_MAX  # noqa: F401  (the Gaussian's truncation, as before the split)
from .transforms import (ClosedFactor, Law, bernoulli, dimension_change, marchenko_pastur,
                         point_mass, pushforward_law)

__all__ = ["Law", "pushforward_law", "ClosedFactor", "marchenko_pastur", "bernoulli",
           "point_mass", "dimension_change", "FreeProduct", "fuss_catalan",
           "series_reversion", "lagrange_moments"]
