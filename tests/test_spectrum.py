"""Random-matrix theory of the Jacobian spectrum (signalprop.spectrum, signalprop.freeprob).

Exact targets: Fuss-Catalan moments and density (Haagerup & Moller 2012 / Neuschel 2014
parameterisation), Marchenko-Pastur (square and rectangular), products of free projections,
the closed-form mean and normalised variance (spectrum.py docstring), the relu polynomial of
Pennington et al. 2017. Internal consistency: density >= 0, mass and moments of the density,
CDF vs density. Monte Carlo: the dense Jacobian products of signalprop.jacobian (the simulation
engine), Kolmogorov distance against the agreement rule of CONVENTIONS.md (see
``test_agrees_with_monte_carlo``).
"""

from __future__ import annotations

import ast
import importlib
import math
import pathlib

import numpy as np
import pytest

import signalprop as sp
from signalprop import freeprob as fp
from signalprop import gaussian
from signalprop.layers.dense import Dense
from signalprop.network import Network
from signalprop.spectrum import Isometry, Spectrum, isometry, spectrum


def critical(act, q_star, L, N=64, weights="gaussian"):
    """A depth-L network on the critical line at q*, and the q0 that puts every layer at q*."""
    a = sp.activation(act)
    sw2 = 1.0 / float(a.dphi_second_moment(q_star))
    sb2 = max(0.0, q_star - sw2 * float(a.second_moment(q_star)))
    return sp.mlp(L, N, a, sigma_w2=sw2, sigma_b2=sb2, weights=weights), (q_star - sb2) / sw2


def gl_rule(a, b, panels=48, order=16):
    """Composite Gauss-Legendre nodes and weights with breakpoints clustered (cosine) at both ends
    of [a, b] and, for a > 0, graded geometrically from a (densities like a power of x near 0)."""
    t, w = np.polynomial.legendre.leggauss(order)
    bp = a + (b - a) * (1 - np.cos(np.linspace(0, math.pi, panels + 1))) / 2
    if a > 0:
        bp = np.unique(np.concatenate([bp, a * (b / a) ** np.linspace(0, 1, panels + 1)]))
    half, mid = np.diff(bp) / 2, (bp[1:] + bp[:-1]) / 2
    return (mid[:, None] + half[:, None] * t).ravel(), (half[:, None] * w).ravel()


def gl_integrate(f, a, b, panels=48, order=16):
    x, wx = gl_rule(a, b, panels, order)
    return float(np.sum(f(x) * wx))


# ---------------------------------------------------------------------------------------------
# the freeprob package


def test_freeprob_reexports_what_spectrum_uses():
    """Every ``fp.<name>`` that signalprop/spectrum.py uses (read from its source) is a public
    name of the package signalprop.freeprob (issue 11: the module became a package), and is the
    very object defined in one of its submodules."""
    spectrum_module = importlib.import_module("signalprop.spectrum")   # sp.spectrum: the function
    assert spectrum_module.fp is fp
    tree = ast.parse(pathlib.Path(spectrum_module.__file__).read_text())
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id == "fp"}
    assert used >= {"FreeProduct", "Law", "pushforward_law", "ClosedFactor", "marchenko_pastur",
                    "bernoulli", "point_mass", "dimension_change"}
    for name in sorted(used | {"fuss_catalan", "series_reversion", "lagrange_moments"}):
        assert name in fp.__all__, name
        obj = getattr(fp, name)
        assert obj.__module__.startswith("signalprop.freeprob."), (name, obj.__module__)
        assert getattr(importlib.import_module(obj.__module__), name) is obj, name


# ---------------------------------------------------------------------------------------------
# exact moments


@pytest.mark.parametrize("L", [1, 2, 3, 5, 10, 100, 1000])
def test_fuss_catalan_moments(L):
    s = spectrum(sp.mlp(L, 32, "linear"))
    fc = np.array([fp.fuss_catalan(L, k) for k in range(1, 21)], float)
    assert np.max(np.abs(s.moments(20) / fc - 1)) < 1e-10
    assert s.upper_edge == pytest.approx((L + 1) * ((L + 1) / L) ** L, rel=1e-12)


def test_fuss_catalan_moments_mpmath():
    s = spectrum(sp.mlp(7, 32, "linear"))
    m = s.moments(25, dps=40)
    for k in range(1, 26):
        assert abs(m[k - 1] / fp.fuss_catalan(7, k) - 1) < 1e-30


def test_orthogonal_linear_is_a_point_mass():
    L, sw2 = 7, 1.3
    s = spectrum(sp.mlp(L, 32, "linear", sigma_w2=sw2, weights="orthogonal"))
    assert s.atoms == [(pytest.approx(sw2 ** L, rel=1e-13), pytest.approx(1.0, abs=1e-14))]
    assert s.continuous_mass == 0.0 and s.zero_mass == 0.0
    assert np.allclose(s.moments(6), sw2 ** (L * np.arange(1, 7)), rtol=1e-12, atol=0)
    assert s.normalised_variance == pytest.approx(0.0, abs=1e-12)
    assert s.upper_edge == pytest.approx(sw2 ** L, rel=1e-13)
    assert np.all(s.density([0.5, sw2 ** L * 0.99, 3.0]) == 0)
    assert list(s.cdf([sw2 ** L * 0.999, sw2 ** L * 1.001])) == [0.0, 1.0]


CASES = [  # activation, weights, q*
    ("tanh", "gaussian", 0.5), ("tanh", "orthogonal", 1 / 64), ("tanh", "orthogonal", 1.0),
    ("erf", "orthogonal", 0.3), ("relu", "gaussian", 1.0), ("relu", "orthogonal", 1.0),
    ("hard_tanh", "orthogonal", 0.5), ("gelu", "gaussian", 1.0), ("silu", "orthogonal", 1.4),
    ("elu", "uniform", 1.0), ("x/sqrt(1+x**2)", "gaussian", 0.7),
]


@pytest.mark.parametrize("act,weights,q", CASES)
def test_mean_and_normalised_variance_identical_layers(act, weights, q):
    """m_1 = chi_1^L and (m_2 - m_1^2)/m_1^2 = L (mu_2/mu_1^2 - 1 + s), s = 1 (gaussian and
    uniform: Marchenko-Pastur) or 0 (orthogonal): the first two terms of the S-transform series
    (spectrum.py docstring). chi_1 = 1 on the critical line."""
    L = 12
    a = sp.activation(act)
    if a.name in ("relu",):
        net, q0 = sp.mlp(L, 64, a, sigma_w2=2.0, weights=weights), 1.0
    elif act.startswith("x/"):   # custom, off the critical line: chi_1 != 1, layers at q*
        q = sp.fixed_point(a, 1.5, 0.1).q_star
        net, q0 = sp.mlp(L, 64, a, sigma_w2=1.5, sigma_b2=0.1, weights=weights), (q - 0.1) / 1.5
    else:
        net, q0 = critical(a, q, L, weights=weights)
    s = spectrum(net, q0)
    sw2 = net.layers[0].sigma_w2
    mu1, mu2 = float(a.dphi_second_moment(q)), float(a.dphi_fourth_moment(q))
    chi1 = sw2 * mu1
    vw = 0.0 if weights == "orthogonal" else 1.0
    assert s.mean == pytest.approx(chi1 ** L, rel=1e-10)
    assert s.normalised_variance == pytest.approx(L * (mu2 / mu1 ** 2 - 1 + vw), rel=1e-9, abs=1e-12)
    assert s.normalised_variance_formula == pytest.approx(s.normalised_variance, rel=1e-9, abs=1e-12)


def test_pennington_special_cases():
    """LITERATURE.md section 3 table (Pennington et al. 2017): at criticality the variance of the
    squared singular values is 2L (relu, gaussian), L (relu, orthogonal), L (1/p - 1) (hard tanh,
    orthogonal, p = erf(1/sqrt(2 q*)))."""
    L = 9
    assert spectrum(sp.mlp(L, 8, "relu", sigma_w2=2.0)).variance == pytest.approx(2 * L, rel=1e-12)
    assert spectrum(sp.mlp(L, 8, "relu", sigma_w2=2.0, weights="orthogonal")).variance == \
        pytest.approx(L, rel=1e-12)
    net, q0 = critical("hard_tanh", 0.25, L, weights="orthogonal")
    p = math.erf(1 / math.sqrt(2 * 0.25))
    assert spectrum(net, q0).variance == pytest.approx(L * (1 / p - 1), rel=1e-10)


def test_normalised_variance_varying_and_rectangular_layers():
    """The closed form sums per-layer terms with the aspect ratios; the series knows nothing of
    it: they must agree for q^l varying with depth and for rectangular layers."""
    for weights in ("gaussian", "orthogonal"):
        net = sp.mlp(6, [40, 80, 60, 60, 120, 30, 50], "tanh", sigma_w2=[1.2, 2.0, 1.5, 1.1, 1.7, 2.2],
                     sigma_b2=0.05, weights=weights)
        s = spectrum(net, q0=2.0)
        assert s.n_laws == 6
        assert s.normalised_variance == pytest.approx(s.normalised_variance_formula, rel=1e-10)
        assert s.mean == pytest.approx(s.mean_formula, rel=1e-12)
        q = sp.predict(net, 2.0).q
        chi = [la.sigma_w2 * float(la.activation.dphi_second_moment(ql)) for la, ql in zip(net.layers, q)]
        assert s.mean == pytest.approx(float(np.prod(chi)), rel=1e-10)


@pytest.mark.parametrize("act", ["tanh", "relu", "hard_tanh", "gelu", "elu", "selu", "sigmoid",
                                 "leaky_relu", "softplus"])
def test_law_moments_match_the_gaussian_engine(act):
    from signalprop.spectrum import _d2_law
    a = sp.activation(act)
    for q in (0.05, 1.0, 7.0):
        law = _d2_law(a, q, 64)
        mix = law.p.sum() + law.atom_mass.sum() + law.zero_mass
        assert mix == pytest.approx(1.0, abs=1e-14)
        for k in (1, 2):   # the engine's rules are sized for phi'^2 and phi'^4
            ref = float(gaussian.expect(lambda x: a.dphi(x) ** (2 * k), q, kinks=a.kinks, tau=a.tau))
            assert law.moments[k] == pytest.approx(ref, rel=1e-12), (act, q, k)
        if act in ("tanh", "gelu"):   # higher moments against mpmath (30 digits)
            import mpmath as mpm
            f = {"tanh": lambda x: mpm.sech(x) ** 2,
                 "gelu": lambda x: mpm.ncdf(x) + x * mpm.npdf(x)}[act]
            with mpm.workdps(30):
                for k in (3, 6):
                    ref = mpm.quad(lambda z: f(mpm.sqrt(q) * z) ** (2 * k) * mpm.npdf(z),
                                   [-mpm.inf, -1, 0, 1, mpm.inf])
                    assert law.moments[k] == pytest.approx(float(ref), rel=1e-13), (act, q, k)
        # the mixture keeps the exact mean and variance
        mean = law.p @ law.c + law.atom_mass @ law.atom_loc
        second = law.p @ (law.c ** 2 + law.d ** 2 / 3) + law.atom_mass @ law.atom_loc ** 2
        assert mean == pytest.approx(law.moments[1], rel=1e-12)
        assert second == pytest.approx(law.moments[2], rel=1e-7)


def test_moments_float_against_mpmath():
    net, q0 = critical("tanh", 0.5, 10, weights="orthogonal")
    s = spectrum(net, q0)
    m = s.moments(14)
    mm = s.moments(14, dps=40)
    assert max(abs(float(b) / a - 1) for a, b in zip(m, mm)) < 1e-11


# ---------------------------------------------------------------------------------------------
# densities against closed forms


def test_marchenko_pastur_square_and_rectangular():
    for widths, lam in (([64, 64], 1.0), ([200, 100], 0.5), ([100, 200], 2.0)):
        s = spectrum(sp.mlp(1, widths, "linear"))
        a, b = (1 - math.sqrt(lam)) ** 2, (1 + math.sqrt(lam)) ** 2
        x = np.linspace(a + 1e-3, b - 1e-3, 9)
        exact = np.sqrt((b - x) * (x - a)) / (2 * math.pi * lam * x)
        assert np.max(np.abs(s.density(x) / exact - 1)) < 1e-8
        assert s.zero_mass == pytest.approx(max(0.0, 1 - 1 / lam), abs=1e-15)
        assert s.upper_edge == pytest.approx(b, rel=1e-12)
        assert s.lower_edge == pytest.approx(a, rel=1e-5, abs=1e-15)
        assert s.density([b * 1.001])[0] == 0.0 and s.density([-1.0])[0] == 0.0


@pytest.mark.parametrize("L", [2, 3, 6])
def test_fuss_catalan_density(L):
    """x(phi) = sin((L+1)phi)^(L+1)/(sin phi sin(L phi)^L),
    rho(x(phi)) = sin(phi)^2 sin(L phi)^(L-1)/(pi sin((L+1)phi)^L), 0 < phi < pi/(L+1)."""
    phi = np.linspace(0.02, math.pi / (L + 1) - 0.02, 9)
    x = np.sin((L + 1) * phi) ** (L + 1) / (np.sin(phi) * np.sin(L * phi) ** L)
    rho = np.sin(phi) ** 2 * np.sin(L * phi) ** (L - 1) / (math.pi * np.sin((L + 1) * phi) ** L)
    assert np.max(np.abs(spectrum(sp.mlp(L, 16, "linear")).density(x) / rho - 1)) < 1e-8


def test_relu_gaussian_density_against_the_polynomial():
    """Pennington et al. 2017, section 3: S = sigma_w^(-2L) (w + p)^(-L), so
    x w = sigma_w^(2L) (1 + w) (w + p)^L, a polynomial of degree L + 1; rho = -Im w/(pi x)
    at its root with Im w < 0 (unique here), an independent route."""
    L, sw2, p = 2, 2.0, 0.5   # a cubic: inside the support one real root and a conjugate pair
    s = spectrum(sp.mlp(L, 16, "relu", sigma_w2=sw2))
    assert s.zero_mass == pytest.approx(0.5, abs=1e-15)
    x = np.linspace(0.05, 0.95, 8) * s.upper_edge
    ref = []
    for xi in x:
        poly = sw2 ** L * np.polymul([1, 1], np.poly1d([1, p]) ** L)
        poly = np.polysub(poly, [xi, 0])
        r = np.roots(poly)
        (w,) = r[r.imag < -1e-12]
        ref.append(-w.imag / (math.pi * xi))
    assert np.max(np.abs(s.density(x) / np.array(ref) - 1)) < 1e-8


def test_free_projections():
    """relu, orthogonal, L = 2: J J^T = sigma_w^4 P Q P with P, Q free projections of trace 1/2,
    whose nonzero part is arcsine: density 1/(2 pi sqrt(t (1 - t)))/s, t = x/s, s = sigma_w^4."""
    s = spectrum(sp.mlp(2, 16, "relu", sigma_w2=2.0, weights="orthogonal"))
    S4 = 4.0
    x = np.linspace(0.02, 0.98, 7) * S4
    t = x / S4
    assert np.max(np.abs(s.density(x) * S4 * 2 * math.pi * np.sqrt(t * (1 - t)) - 1)) < 1e-8
    assert s.zero_mass == pytest.approx(0.5) and s.continuous_mass == pytest.approx(0.5)


def test_hard_tanh_orthogonal_atoms():
    """Bercovici-Voiculescu: the free product of L projections of trace p has an atom at 1 of mass
    L p - (L - 1); with sigma_w^2 = 1/p it sits at p^-L. For L = 2 the continuous part ends at
    4 (1 - p)/p (free projections), the atom at 0 has mass 1 - p."""
    for q, L in ((0.1, 2), (0.3, 2), (0.3, 4)):
        net, q0 = critical("hard_tanh", q, L, weights="orthogonal")
        s = spectrum(net, q0)
        p = math.erf(1 / math.sqrt(2 * q))
        (a, m), = s.atoms
        assert a == pytest.approx(p ** -L, rel=1e-12) and m == pytest.approx(L * p - (L - 1), rel=1e-12)
        assert s.zero_mass == pytest.approx(1 - p, rel=1e-12)
        assert s.continuous_mass == pytest.approx(1 - (1 - p) - m, rel=1e-10)
        if L == 2:
            assert s.product.upper_edge_continuous() == pytest.approx(4 * (1 - p) / p, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# internal consistency of the numerical density


PROPERTY_CASES = {
    "tanh-orthogonal-small-q": (lambda: critical("tanh", 1 / 64, 10, weights="orthogonal")),
    "tanh-gaussian": (lambda: critical("tanh", 1.0, 10)),
    "relu-gaussian": (lambda: (sp.mlp(10, 16, "relu", sigma_w2=2.0), 1.0)),
    "hard_tanh-orthogonal-atoms": (lambda: critical("hard_tanh", 0.3, 4, weights="orthogonal")),
    "tanh-varying-rectangular": (lambda: (sp.mlp(5, [50, 80, 40, 40, 100, 60], "tanh",
                                                 sigma_w2=1.6, sigma_b2=0.1), 2.0)),
}


@pytest.mark.parametrize("name", list(PROPERTY_CASES))
def test_density_is_nonnegative_integrates_to_its_mass_and_has_the_exact_moments(name):
    """Mass within 1e-6: F_c(x0) (the distribution function, by the vertical Stieltjes integral)
    plus int_{x0}^{edge} rho (composite Gauss-Legendre); x0 = the lower edge when positive, else
    1e-3 of the upper edge (below, densities of square gaussian products diverge like
    x^(-L/(L+1))). Moments int x^k rho + atoms against the exact series: 1e-6 (k = 1, 2; the
    mixture laws of phi'^2 have the exact mean and variance), 1e-4 (k = 3)."""
    net, q0 = PROPERTY_CASES[name]()
    s = spectrum(net, q0)
    U = s.product.upper_edge_continuous()
    lo = s.lower_edge
    x0 = lo if lo > 0 else 1e-3 * U
    x, wx = gl_rule(x0, U, panels=40)
    t, wt = gl_rule(0.0, 1.0, panels=6)      # [0, x0] with x = x0 t^8 (for the moments)
    xt = x0 * t ** 8
    rho_all = s.density(np.concatenate([x, xt]))
    rho, rho_t = rho_all[:x.size], rho_all[x.size:]
    assert np.all(rho_all >= 0) and np.all(np.isfinite(rho_all))
    F0 = float(s.product.cdf_continuous(np.array([x0]))[0]) if lo == 0 else 0.0
    mass = F0 + np.sum(rho * wx)
    assert mass == pytest.approx(s.continuous_mass, abs=1e-6)
    m = s.moments(3)
    for k, tol in ((1, 1e-6), (2, 1e-6), (3, 1e-4)):
        mk = np.sum(x ** k * rho * wx) + sum(mass_a * a ** k for a, mass_a in s.atoms)
        if lo == 0:          # smooth in t however the density diverges at 0
            mk += np.sum(xt ** k * rho_t * 8 * x0 * t ** 7 * wt)
        assert mk == pytest.approx(m[k - 1], rel=tol), k


def test_cdf_agrees_with_the_integral_of_the_density():
    net, q0 = critical("tanh", 0.5, 8, weights="orthogonal")
    s = spectrum(net, q0)
    U = s.upper_edge
    a, b = 0.2 * U, 0.7 * U
    Fa, Fb = s.cdf([a, b])
    assert Fb - Fa == pytest.approx(gl_integrate(s.density, a, b, panels=16), abs=1e-8)
    assert s.cdf([U * 1.0001])[0] == 1.0 and s.cdf([-1.0])[0] == 0.0
    assert s.mass_below(b) == pytest.approx(Fb)
    qs = s.quantile([0.1, 0.5, 0.9])
    assert s.cdf(qs) == pytest.approx([0.1, 0.5, 0.9], abs=1e-8)


@pytest.mark.parametrize("weights", ["gaussian", "orthogonal"])
def test_deep_density_agrees_with_the_distribution_function(weights):
    """Depth 96: the density (vertical paths and marching along the axis) against the
    distribution function (vertical Stieltjes integrals with small steps), on three intervals.
    Catches a continuation that jumps to another solution of the equations."""
    net, q0 = critical("tanh", 1.0, 96, weights=weights)
    s = spectrum(net, q0)
    U = s.upper_edge
    edges = np.array([0.002, 0.01, 0.05, 0.3]) * U
    F = s.cdf(edges)
    for a, b, Fa, Fb in zip(edges[:-1], edges[1:], F[:-1], F[1:]):
        assert Fb - Fa == pytest.approx(gl_integrate(s.density, a, b, panels=12), abs=2e-7)


def test_upper_edge():
    """Relu, gaussian: the edge is min_{w>0} (1 + w) sigma_w^(2L) (w + p)^L / w; tanh: the
    density is positive just below the edge and zero above."""
    L = 5
    s = spectrum(sp.mlp(L, 16, "relu", sigma_w2=2.0))
    w = np.exp(np.linspace(-12, 6, 200001))
    assert s.upper_edge == pytest.approx(np.min((1 + w) * 2.0 ** L * (w + 0.5) ** L / w), rel=1e-9)
    net, q0 = critical("tanh", 1.0, 6, weights="orthogonal")
    t = spectrum(net, q0)
    U = t.upper_edge
    near, far, above = t.density([U * (1 - 1e-6), U * (1 - 1e-4), U * (1 + 1e-9)])
    assert far / near == pytest.approx(10.0, rel=0.02) and above == 0.0   # square-root edge
    assert t.moments(40)[-1] ** (1 / 40) < U     # m_k^(1/k) increases to the edge


def test_condition_number_and_lower_edge():
    s = spectrum(sp.mlp(1, [300, 100], "linear"))         # MP, ratio 1/3
    a, b = (1 - math.sqrt(1 / 3)) ** 2, (1 + math.sqrt(1 / 3)) ** 2
    assert s.condition_number() == pytest.approx(b / a, rel=1e-5)
    assert spectrum(sp.mlp(3, 16, "linear")).condition_number() == math.inf
    net, q0 = critical("tanh", 1 / 16, 6, weights="orthogonal")
    t = spectrum(net, q0)
    kappa = t.condition_number(tail=1e-3)
    lo, hi = t.quantile([1e-3, 1 - 1e-3])
    assert kappa == pytest.approx(hi / lo, rel=1e-9) and 1 < kappa < t.upper_edge / lo


# ---------------------------------------------------------------------------------------------
# Monte Carlo


def _ks_against(s, evs, N):
    """Kolmogorov distance between the pooled empirical CDF of the networks' squared singular
    values and s.cdf, over x >= 1e-8 * upper_edge (below, eigvalsh of J J^T is at rounding
    level), and the tolerance 4 max_x se(x) + 3/N: se = standard error of the pooled empirical
    CDF from the spread of the per-network ones (CONVENTIONS.md: 4 standard errors), 3/N for the
    O(1/N) finite-width bias and the 1/N steps of an empirical CDF (the exactly solvable linear
    gaussian product at N = 256, 512, L = 10 gives N * KS = 1.0, 1.3 with 12 networks)."""
    U = s.upper_edge
    xs = np.unique(np.concatenate([U * np.logspace(-8, -1, 40), U * np.linspace(0.02, 1, 70)]))
    F = s.cdf(xs)
    lx = np.log(xs)
    pts = np.sort(np.concatenate(evs))
    pts = pts[pts >= xs[0]]
    emp = np.array([np.searchsorted(np.sort(e), pts, side="right") / e.size for e in evs])
    Ft = np.interp(np.log(pts), lx, F)
    Fbar = emp.mean(axis=0)
    emp_lo = np.array([np.searchsorted(np.sort(e), pts, side="left") / e.size for e in evs]).mean(0)
    d = max(np.max(np.abs(Fbar - Ft)), np.max(np.abs(emp_lo - Ft)))
    se = np.max(emp.std(axis=0, ddof=1)) / math.sqrt(len(evs))
    return d, 4 * se + 3.0 / N


MC_CASES = {
    "tanh-orthogonal": (lambda N: critical("tanh", 0.25, 10, N, "orthogonal"), "gaussian"),
    "tanh-gaussian": (lambda N: critical("tanh", 1.0, 10, N, "gaussian"), "orthogonal"),
    "relu-gaussian": (lambda N: (sp.mlp(10, N, "relu", sigma_w2=2.0), 1.0), "orthogonal"),
}


@pytest.mark.parametrize("name", list(MC_CASES))
def test_agrees_with_monte_carlo(name):
    """Width 512, depth 10, 4 networks from signalprop.jacobian (the simulation engine's dense
    Jacobian products). Negative control: the same data against the law of the other weight
    distribution must be rejected by the same tolerance."""
    from signalprop.jacobian import jacobian
    N = 512
    make, other = MC_CASES[name]
    net, q0 = make(N)
    J = jacobian(net, 4, 2024, q0=q0)
    evs = [np.linalg.eigvalsh(j @ j.T) for j in J]
    d, tol = _ks_against(spectrum(net, q0), evs, N)
    assert d < tol, (d, tol)
    wrong = Network(net.input_width, tuple(Dense(la.width, la.activation, la.sigma_w2, la.sigma_b2,
                                                 other) for la in net.layers))
    d_wrong, _ = _ks_against(spectrum(wrong, q0), evs, N)
    assert d_wrong > 2 * tol, (d_wrong, tol)


def test_atom_mass_against_monte_carlo():
    """Orthogonal hard tanh: the eigenvalue p^-L of J J^T has multiplicity N - (number of saturated
    units over the layers) in every sample (dimension counting, up to O(1) coincidences), whose
    mean is N (L p - (L - 1)), the free-probability atom. The count fluctuates binomially: the
    mean over S samples is tested within 4 standard errors, sqrt(L p (1 - p) / (N S))."""
    from signalprop.jacobian import _layers
    from signalprop.simulate import root_seed
    N, L, q, S = 256, 4, 0.3, 8
    net, q0 = critical("hard_tanh", q, L, N, "orthogonal")
    s = spectrum(net, q0)
    (a, m), = s.atoms
    root = root_seed(7)
    fracs = []
    for k in range(S):
        J, dead = None, 0
        for d, W in _layers(net, root, k, q0, "post"):
            dead += int(np.sum(d == 0))
            A = d[:, None] * W
            J = A if J is None else A @ J
        ev = np.linalg.eigvalsh(J @ J.T)
        frac = np.mean(np.abs(ev / a - 1) < 1e-8)
        assert frac == pytest.approx(1 - dead / N, abs=2.0 / N)      # the per-sample identity
        fracs.append(frac)
    p = (m + L - 1) / L                                                # the linear-region fraction
    se = math.sqrt(L * p * (1 - p) / N / S)
    assert abs(np.mean(fracs) - m) < 4 * se + 1.0 / N, (np.mean(fracs), m, se)


# ---------------------------------------------------------------------------------------------
# depth, isometry, bad input


def test_depth_1000_identical_layers():
    net, q0 = critical("tanh", 1 / 64, 1000, weights="orthogonal")
    s = spectrum(net, q0)
    assert s.n_laws == 1
    assert s.mean == pytest.approx(1.0, rel=1e-9)
    a = sp.activation("tanh")
    mu1, mu2 = float(a.dphi_second_moment(1 / 64)), float(a.dphi_fourth_moment(1 / 64))
    assert s.normalised_variance == pytest.approx(1000 * (mu2 / mu1 ** 2 - 1), rel=1e-9)
    U = s.upper_edge
    assert 1 < U < 100 and s.density([0.5 * U])[0] > 0


def test_isometry():
    r = isometry("tanh", "orthogonal", q_star=np.logspace(-3, 0, 7), depths=(10,), edge_points=2)
    assert isinstance(r, Isometry) and r.achievable and r.best["on_grid_boundary"]
    assert r.best["q_star"] == pytest.approx(1e-3)
    assert r.v_D[0] / r.q_star[0] ** 2 == pytest.approx(8.0, rel=1e-2)   # v_D ~ 8 q*^2 (tanh)
    assert np.allclose(r.variance_per_layer, r.v_D)
    g = isometry("tanh", "gaussian", q_star=np.logspace(-3, 0, 7), depths=(10,), edge_points=2)
    assert not g.achievable and np.allclose(g.variance_per_layer, g.v_D + 1)
    assert "Marchenko-Pastur" in g.reason
    relu = isometry("relu", "orthogonal", q_star=[0.5, 1.0], depths=(10,), edge_points=1)
    assert not relu.achievable and np.allclose(relu.v_D, 1.0) and "relu" in relu.reason
    # the edge at depth 10 is that of the spectrum at the same point
    k = np.flatnonzero(np.isfinite(r.upper_edge[:, 0]))[0]
    net, q0 = critical("tanh", r.q_star[k], 10, weights="orthogonal")
    # (edges are located by root finding to ~1e-10; the two routes round q* differently)
    assert r.upper_edge[k, 0] == pytest.approx(spectrum(net, q0).upper_edge, rel=1e-9)


def test_bad_input():
    net = sp.mlp(3, 16, "tanh")
    bad = Dense(16, sp.activation("tanh"), 1.0)
    object.__setattr__(bad, "weights", "sparse")
    with pytest.raises(ValueError, match="S-transform"):
        spectrum(Network(16, (bad,)))

    class Other:
        width = 16
    with pytest.raises(TypeError, match="Dense"):
        spectrum(Network(16, (Other(),)))
    with pytest.raises(TypeError):
        spectrum("not a network")
    with pytest.raises(ValueError, match="q\\^l"):
        spectrum(sp.mlp(800, 16, "relu", sigma_w2=4.0))      # q^l overflows
    s = spectrum(net)
    with pytest.raises(ValueError):
        s.moment(0)
    with pytest.raises(ValueError):
        s.density([1.0, math.nan])
    with pytest.raises(ValueError):
        s.quantile([1.5])
    # documented results off the support
    d = s.density([-1.0, 0.0, 2 * s.upper_edge])
    assert d[0] == 0.0 and math.isnan(d[1]) and d[2] == 0.0
    o = spectrum(sp.mlp(1, [100, 50], "linear"))     # MP: support bounded away from 0
    assert isinstance(o, Spectrum) and o.density([0.0])[0] == 0.0


def test_cli_spectrum(capsys):
    import json as _json
    from signalprop.cli import main
    assert main(["spectrum", "--activation", "relu", "--sigma-w2", "2", "--depth", "4",
                 "--json", "--points", "3"]) == 0
    out = _json.loads(capsys.readouterr().out)
    assert out["normalised_variance"] == pytest.approx(8.0, rel=1e-12)    # 2L
    assert out["zero_mass"] == pytest.approx(0.5) and len(out["density"]) == 3
    assert main(["spectrum", "--depth", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("signalprop: error:")
