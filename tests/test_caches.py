"""The module-level caches (issue 11, item 5): keyed by value, bounded, and never changing a result.

tables._SHARED (per-activation Chebyshev tables), finite._TABLES (finite-width moment tables),
batchnorm._cached_moments (sphere-marginal expectations) and the rule caches under them.
"""

from __future__ import annotations

import math

import numpy as np

import signalprop as sp
from signalprop import batchnorm as bn
from signalprop import finite, meanfield, tables


def _cold() -> None:
    """Empty every cache of tables, finite and batchnorm."""
    tables._SHARED.clear()
    tables._ROWS.clear()
    finite._TABLES.clear()
    for f in (bn._cached_moments, bn._rule1, bn._rule2, bn._gl, tables._dct_matrix,
              tables._dct2_matrix, tables._cheb_to_monomial):
        f.cache_clear()


def _results() -> list:
    """Numbers that go through every cache: a tanh and a gelu profile (moment, Mehler and
    mean-ratio tables), an elu profile near the edge of chaos (rho tables), a tanh profile whose q
    settles past the Mehler tables (rho_theta's interpolant), the table evaluators
    directly, finite-width laws (finite._TABLES) and batch-norm kernels and operators."""
    out = []
    for name, sw2, sb2 in (("tanh", 1.5, 0.1), ("gelu", 1.7, 0.05), ("elu", 1.0, 1e-4)):
        p = sp.predict(sp.mlp(30, 100, name, sigma_w2=sw2, sigma_b2=sb2), c0=0.5)
        out += [np.asarray(p.q), np.asarray(p.c)]
    p = sp.predict(sp.mlp(100, 100, "tanh", sigma_w2=20.0, sigma_b2=1.0), c0=0.5)  # rho_theta
    out += [np.asarray(p.q), np.asarray(p.c)]
    tanh = sp.activation("tanh")
    for q in (1e-3, 0.37, 2.0, 5.0):
        out += [np.asarray(tables.moments(tanh, math.log(q))), tables.mehler_sq(tanh, q)]
    fw = sp.finite_width(sp.mlp(12, 50, "tanh", sigma_w2=1.5, sigma_b2=0.1))
    out += [np.asarray(fw.log_q_mean), np.asarray(fw.log_q_var), np.asarray(fw.log_g_var)]
    for name in ("tanh", "relu"):
        k = bn.bn_kernel(name, 8, 1.3)
        op = bn.bn_gradient_operator(name, 8, 1.3)
        out += [np.array([k.q, k.c, k.second_moment]), np.asarray(op.matrix)]
    return out


def _warm_differently() -> None:
    """Fill the caches along another path: other q ranges, panels built in bulk, other B."""
    for sw2 in (0.6, 3.0, 8.0):
        sp.predict(sp.mlp(40, 100, "tanh", sigma_w2=sw2, sigma_b2=0.3), c0=0.9)
        sp.finite_width(sp.mlp(6, 50, "tanh", sigma_w2=sw2, sigma_b2=0.3))
    tanh = sp.activation("tanh")
    for q in np.exp(np.linspace(math.log(2e-6), math.log(6.0), 40)):
        tables.moments(tanh, math.log(q))
        tables.mehler_sq(tanh, q)
    tables.tables_of(tanh).pd(np.array([0.5, 3.0]))
    sp.phase_diagram("tanh", np.linspace(1.0, 4.0, 6), np.linspace(0.0, 1.0, 6))
    for name in ("tanh", "gelu"):            # Mehler panels in bulk, as the c* solver asks
        meanfield._mehler_groups(sp.activation(name), np.exp(np.linspace(-8.0, 2.0, 60)))
    bn.bn_kernel("tanh", 16)


def _same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)       # bit for bit: no tolerance


def test_cold_and_warm_caches_give_identical_results():
    _cold()
    cold = _results()
    warm_same_path = _results()                   # every cache hit
    _cold()
    _warm_differently()
    warm_other_path = _results()
    _same(cold, warm_same_path)
    _same(cold, warm_other_path)


def test_equal_expression_activations_share_their_entries():
    a, b = sp.activation("x*tanh(x)"), sp.activation("x*tanh(x)")
    assert a is not b and a == b and hash(a) == hash(b)
    assert tables.tables_of(a) is tables.tables_of(b)
    n = len(tables._SHARED)
    tables.tables_of(sp.activation("x*tanh(x)"))
    assert len(tables._SHARED) == n
    assert tables.moments(a, 0.3) == tables.moments(b, 0.3)
    bn.bn_kernel(a, 5)
    hits = bn._cached_moments.cache_info().hits
    kb, ka = bn.bn_kernel(b, 5), bn.bn_kernel(a, 5)
    assert (kb.second_moment, kb.cross_moment, kb.q, kb.c) == \
        (ka.second_moment, ka.cross_moment, ka.q, ka.c)
    assert bn._cached_moments.cache_info().hits == hits + 2
    st_a = finite._stats_table(a, -2.0, 2.0, (-1.0, 1.0))
    assert finite._stats_table(b, -2.0, 2.0, (-1.0, 1.0)) is st_a
    # a different expression gets its own entry
    assert tables.tables_of(sp.activation("x*tanh(2*x)")) is not tables.tables_of(a)


def test_caches_stay_within_their_bounds():
    first = sp.activation("leaky_relu", slope=0.0005)
    t_first = tables.tables_of(first)
    for i in range(300):
        act = sp.activation("leaky_relu", slope=0.001 * (i + 1))
        tables.tables_of(act)
        assert tables.moments(act, 0.0) is None       # closed form: no table built
        assert len(tables._SHARED) <= tables._TABLES_MAX
    assert len(tables._SHARED) == tables._TABLES_MAX
    assert first not in tables._SHARED                 # the oldest went, and comes back fresh
    assert tables.tables_of(first) is not t_first
    for i in range(finite._TABLES_MAX + 3):
        finite._stats_table(sp.activation("leaky_relu", slope=0.01 * (i + 1)), -2.0, 2.0,
                            (-1.0, 1.0))
        assert len(finite._TABLES) <= finite._TABLES_MAX
    assert len(finite._TABLES) == finite._TABLES_MAX
    for f, bound in ((bn._cached_moments, bn._MOMENT_CACHE_MAX), (bn._rule1, 8), (bn._rule2, 8),
                     (bn._gl, 4)):
        assert f.cache_info().maxsize == bound
    assert len(tables._ROWS) <= tables._ROWS_MAX


def test_cached_values_are_read_only():
    mo = bn._get_moments(sp.activation("tanh"), 6)
    try:
        mo["Kaa"] = 0.0
    except TypeError:
        pass
    else:
        raise AssertionError("a cached batch-norm moment could be overwritten")
    y, w = bn._rule1(6, ())
    assert not y.flags.writeable and not w.flags.writeable
    assert not tables._dct_matrix(12).flags.writeable


def test_a_panel_does_not_depend_on_the_panels_built_with_it():
    """A lazy table builds each panel on its own: one built in bulk (phase_diagram's c* asks for
    many at once, meanfield._mehler_groups) equals, bit for bit, one built alone (predict's
    per-layer evaluators). Built together, the Mehler panels of tanh and gelu differed by ~1e-16
    and gelu's mean-ratio panels by ~1e-15 (the rule follows the batch's largest q)."""
    ks = range(30, 42)
    for name in ("tanh", "gelu"):
        act = sp.activation(name)
        built = []
        for bulk in (True, False):
            tables._SHARED.clear()
            t = tables.tables_of(act)
            tabs = [t.meh, t.mom, t.mu if t.mu is not False else t.mom]
            if bulk:
                for tab in tabs:
                    tab.build(ks)
            built.append([[tab.panel(k) for k in ks] for tab in tabs])
        for a, b in zip(*built):
            for pa, pb in zip(a, b):
                assert (pa is None) == (pb is None)
                if pa is not None:
                    np.testing.assert_array_equal(np.asarray(pa, float), np.asarray(pb, float))
