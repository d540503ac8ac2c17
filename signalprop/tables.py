"""Chebyshev tables in u = log q of an activation's one-dimensional Gaussian integrals.

The mean-field maps need, layer after layer, E[phi(sqrt(q) z)^2], E[phi'(sqrt(q) z)^2] and the
Mehler coefficients of phi(sqrt(q) z) at whatever q the layer has reached. Computed directly
(graded quadrature, a Hermite transform) each costs ~0.1-1 ms; here they are tabulated once per
activation, panel by panel as they are first needed, and read back in a few microseconds.

Why tables in u = log q work: for phi of moderate growth (kinks allowed),

    F(u) = E[f(e^{u/2} z)] = (2 pi)^{-1/2} e^{-u/2} int f(x) exp(-x^2 e^{-u} / 2) dx

is analytic in the strip |Im u| < pi/2 (where Re e^{-u} > 0), and so are the Hermite coefficients
a_k(e^u) = E[phi(e^{u/2} z) He_k(z)] / sqrt(k!) (the same integral with a polynomial factor).
On a panel of width w the strip contains the Bernstein ellipse of parameter
rho = s + sqrt(s^2 + 1), s = (pi/2) / (w/2) (rho ~ 25 for w = 0.25), and the degree-n Chebyshev
interpolant converges like rho^{-n} (Trefethen, Approximation Theory and Approximation
Practice, ch. 8, Theorem 8.2: error <= 4 M rho^{-n} / (rho - 1), M the bound of F on the
ellipse). The logs log E[phi^2], log E[phi'^2] are tabulated rather than the values, so that the
relative accuracy holds uniformly from q = 1e-6 to 1e6; log F is analytic wherever F has no
zeros, a strip that may be narrower, so the rate is measured rather than assumed: the Chebyshev
coefficients of every built-in smooth activation reach the rounding level of their data
(~1e-15) by degree 10 on panels of width 0.25, and degree 12 is used. Every panel is checked
when it is built: one whose last two coefficients are not at that level (an activation without
this analyticity) is rejected, and its q goes to the direct route.

Where the numbers come from: the moments from the graded composite Gauss-Legendre rule of
:mod:`signalprop.gaussian` (within ~1e-15 of mpmath); the Mehler coefficients from the
trapezoidal rule on [-14, 14] with exact weights h phi_N(z) and Hermite functions by their
three-term recurrence (``_trap_level`` has the error analysis), each panel certified when built
by Parseval, sum_k b_k = E[phi^2] to 1e-14 at every node.

Public evaluators (plain floats in, plain floats / one numpy array out; ``None`` means "no table
here: use the direct route"):

* ``moments(act, lq)`` -> (log E[phi(sqrt(q) z)^2], log E[phi'(sqrt(q) z)^2]), q = exp(lq), for
  q in [1e-6, ~1.13e6];
* ``mehler_sq(act, q)`` -> b_k = a_k(q)^2, k = 0..K-1, with E[phi(u1) phi(u2)] = sum_k b_k c^k
  for u ~ N(0, q [[1, c], [c, 1]]) (Mehler's formula: Mehler 1866; O'Donnell, Analysis of
  Boolean Functions, 2014, Prop. 11.31), truncated where the tail sum_{k>=K} b_k is below
  1e-17 sum_k b_k (so sum_k b_k c^k / sum_k b_k is the post-activation correlation to ~1e-16 for
  every c in [-1, 1]), for q in [1e-6, q_max], q_max set by K < 1016 (tanh ~6.9, sigmoid ~24,
  gelu ~31).

* ``rho_theta(act, q, rho)`` -> a Chebyshev interpolant in theta = arccos c of the
  post-activation correlation c -> rho(q, c) at one q (``theta_at`` evaluates it), for a
  profile whose q has settled while c still moves (the edge of chaos) or whose q is past 1e13;
* ``rho_2d(act, lq, c, rho)`` -> rho(q, c) from a table in (log q, theta) (and sqrt(q) below
  q = 1e-2), for kinked activations with a closed-form smoothing (elu, selu, hard_tanh) whose
  q moves slowly (q* -> 0 at the edge of chaos);
* ``small_moments(act, lq)`` -> the log moments for q <= 1e-6 (phi(0) = 0), from a Chebyshev
  panel in sqrt(q);
* ``rho_scaled_array(act, q, c, rho)`` / ``slope_scaled_array`` -> rho(q, c) and
  E[phi' phi'] / E[phi'^2] past the Mehler table (q in [1, 1e13]) from a table in
  (log q, x), theta = arccos c = (1/sqrt(q)) sinh(V(q)(1 + x)/2) (:class:`_ScaledTable`), for
  odd analytic activations (tanh) and, rho only, gelu (whose node values come from the
  closed-form route ``gelu_rho``; ``rho_2d`` serves it to predict, and tanh past its Mehler
  table for a run long enough to pay for a panel; ``rho_2d_at_q`` the same at a fixed q).

These three are built from the direct rules and accepted only where they reproduce them (to
2e-14 - 1e-13, stated at each); their purpose is issue 10's depth-1e5 profiles, where the direct
rules would otherwise run at every layer.

Activations with closed forms (relu, leaky_relu, linear, erf: ``scalar_kernel``) get no tables;
the series exists only for analytic activations without kinks (``Activation.mehler_coefficients``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import lru_cache
from typing import Callable, Optional

import numpy as np
from scipy import special

from . import gaussian
from .activations import Activation

__all__ = ["moments", "mean_ratio", "mehler_sq", "mehler_series", "mehler_rho", "series_at",
           "rho_theta", "theta_at", "rho_2d", "small_moments", "moments_array",
           "small_moments_array", "mehler_array", "rho_2d_array", "rho_scaled_array",
           "slope_scaled_array", "rho_2d_at_q", "gelu_rho", "LQ_LO", "LQ_HI"]

# -- the scalar tables -----------------------------------------------------------------------
LQ_LO = math.log(1e-6)          #: lower end of the tables in u = log q
_WIDTH = 0.25                   #: panel width in u
_DEG = 12                       #: Chebyshev degree per panel (13 Chebyshev-Lobatto nodes)
_N_PANELS = int(math.ceil((math.log(1e6) - LQ_LO) / _WIDTH))
LQ_HI = LQ_LO + _N_PANELS * _WIDTH   #: upper end (q ~ 1.13e6)
_INV_W = 1.0 / _WIDTH
_LOG_TAIL_TOL = 1e-13           #: last two Chebyshev coefficients of a log-moment panel (absolute)

_K_MAX = 1024                   #: most Mehler terms a panel may keep
_MEHLER_TAIL = 1e-17            #: truncation: sum_{k >= K} b_k <= this * sum_k b_k at every node
_PARSEVAL_TOL = 1e-14           #: |sum_k b_k - E[phi^2]| <= this * E[phi^2] at every node


def _lobatto(deg: int) -> np.ndarray:
    """Chebyshev-Lobatto points cos(pi j / deg), j = 0..deg (from 1 down to -1)."""
    return np.cos(np.pi * np.arange(deg + 1) / deg)


# The matrices below are cached by degree (an int; at most 8 / 4 degrees kept, lru_cache): pure
# functions of it, returned read-only so no caller can alter a cached one.
@lru_cache(maxsize=8)
def _dct_matrix(deg: int) -> np.ndarray:
    """C with c = C @ f: the Chebyshev coefficients c_0..c_deg of the degree-``deg`` polynomial
    through the values f_j at the Lobatto points x_j = cos(pi j / deg) (a type-I discrete cosine
    transform; Trefethen, ATAP, ch. 3: c_k = (2/deg) sum_j'' f_j cos(pi j k / deg), the double
    prime halving the j = 0, deg terms, and c_0, c_deg halved)."""
    j = np.arange(deg + 1)
    C = np.cos(np.pi * np.outer(j, j) / deg) * (2.0 / deg)
    C[:, [0, deg]] *= 0.5
    C[[0, deg], :] *= 0.5
    C.flags.writeable = False
    return C


@lru_cache(maxsize=8)
def _cheb_to_monomial(deg: int) -> np.ndarray:
    """A with m = A @ c: monomial coefficients m_j (of t^j) of sum_k c_k T_k(t)."""
    A = np.zeros((deg + 1, deg + 1))
    for k in range(deg + 1):
        e = np.zeros(deg + 1)
        e[k] = 1.0
        mk = np.polynomial.chebyshev.cheb2poly(e)
        A[:mk.size, k] = mk
    A.flags.writeable = False
    return A


class _LogQTable:
    """Piecewise Chebyshev interpolant of q -> fn(q) in u = log q on [lo, hi].

    fn(q) is analytic in u in the strip |Im u| < pi/2 (module docstring), so on panels of width
    ``width`` the degree-``deg`` interpolant converges like rho^{-deg}, rho ~ 25 for width 0.25
    (Trefethen, ATAP, ch. 8): degree 16 gives ~1e-16 relative. Panels are built when first
    needed (``lazy``), one vectorised call of ``fn`` per panel; ``accept(u, vals)`` may
    transform a panel's node values or reject the panel (return None), which then counts as
    outside the table. Evaluation (``__call__``, vectorised over q) is by the barycentric formula
    for Chebyshev points (Berrut & Trefethen, SIAM Review 46, 2004; ATAP, ch. 5), which is
    stable at any t in [-1, 1]; values outside [lo, hi] are computed directly with ``fn``.
    ``fn`` maps a 1-D array of q to an array of shape (len(q), ...).
    """

    def __init__(self, fn: Callable, lo: float, hi: float, width: float = 0.25, deg: int = 16,
                 lazy: bool = False, accept: Optional[Callable] = None):
        self.fn, self.lo, self.width, self.deg, self.accept = fn, lo, width, deg, accept
        self.n = max(1, int(math.ceil((hi - lo) / width)))
        self.hi = lo + self.n * width
        self.x = _lobatto(deg)
        self.w = (-1.0) ** np.arange(deg + 1)
        self.w[[0, -1]] *= 0.5
        self.panels: list = [None] * self.n      # None: not built; False: rejected; else values
        self.lazy = lazy
        if not lazy:
            self.build(range(self.n))

    def nodes(self, k) -> np.ndarray:
        """u at the Lobatto nodes of panel(s) k, increasing within a panel: shape (..., deg+1)."""
        k = np.asarray(k)
        return self.lo + (k[..., None] + 0.5 * (1.0 - self.x)) * self.width

    def build(self, ks) -> None:
        """Build the panels ``ks`` (those not built yet). A lazy table calls ``fn`` once per
        panel, so that a panel's values never depend on which other panels were built with it
        (a vectorised ``fn`` may pick its rule, or its BLAS blocking, from the whole batch:
        ~1e-16 differences), i.e. never on the cache's history; the eager table of ``pd`` is
        built in one call, as it always was."""
        ks = [int(k) for k in ks if self.panels[int(k)] is None]
        if not ks:
            return
        if self.lazy:
            for k in ks:
                self._build_one([k])
        else:
            self._build_one(ks)

    def _build_one(self, ks: list) -> None:
        """The panels ``ks`` from one call of ``fn``."""
        u = self.nodes(np.array(ks))
        vals = np.asarray(self.fn(np.exp(u.ravel())))
        vals = vals.reshape(u.shape + vals.shape[1:])
        for i, k in enumerate(ks):
            v = vals[i] if self.accept is None else self.accept(u[i], vals[i])
            self.panels[k] = False if v is None else v

    def panel(self, k: int):
        """Node values of panel k (nodes in increasing u), built if needed; None if rejected."""
        p = self.panels[k]
        if p is None:
            self.build([k])
            p = self.panels[k]
        return p if p is not False else None

    def locate(self, u: np.ndarray):
        """(panel index, t in [-1, 1], inside) for an array of u."""
        s = (u - self.lo) / self.width
        inside = (s >= 0.0) & (s <= self.n)
        k = np.clip(np.floor(np.where(inside, s, 0.0)).astype(int), 0, self.n - 1)
        t = np.clip(2.0 * (s - k) - 1.0, -1.0, 1.0)
        return k, t, inside

    def __call__(self, q):
        q = np.asarray(q, float)
        u = np.log(q.ravel())
        k, t, inside = self.locate(u)
        ks = np.unique(k[inside])
        self.build(ks)
        ok = np.zeros(self.n, bool)
        ok[ks] = [self.panels[j] is not False for j in ks]
        inside &= ok[k]
        trail = None
        for j in ks:
            if ok[j]:
                trail = self.panels[j].shape[1:]
                break
        if trail is None:                          # nothing inside: all direct
            vals = np.asarray(self.fn(q.ravel()))
            return vals.reshape(q.shape + vals.shape[1:])
        out = np.empty(u.shape + trail)
        if np.any(~inside):
            out[~inside] = np.asarray(self.fn(np.exp(u[~inside])))
        idx = np.flatnonzero(inside)
        order = idx[np.argsort(k[idx], kind="stable")]
        kk = k[order]
        starts = np.flatnonzero(np.r_[True, kk[1:] != kk[:-1]])
        ends = np.r_[starts[1:], kk.size]
        xs = self.x[::-1]                          # nodes in increasing order, as stored
        ws = self.w[::-1]
        for a, b in zip(starts, ends):
            rows = order[a:b]
            vals = self.panels[kk[a]].reshape(self.deg + 1, -1)
            d = t[rows, None] - xs[None, :]
            hit = d == 0.0
            d[hit] = 1.0
            cw = ws / d
            exact = hit.any(axis=1)
            cw[exact] = hit[exact]
            # einsum, not BLAS: a 17-term contraction gains nothing from threads
            res = np.einsum("ij,jm->im", cw, vals) / cw.sum(axis=1)[:, None]
            out[rows] = res.reshape((rows.size,) + trail)
        return out.reshape(q.shape + trail)


# -- per-activation cache ---------------------------------------------------------------------


class _LRU(OrderedDict):
    """A dict of at most ``maxsize`` entries: ``put`` drops the least recently used one past it,
    ``hit`` marks an entry as used (a small helper; functools.lru_cache cannot hold the lazily
    extended per-activation tables)."""

    def __init__(self, maxsize: int):
        super().__init__()
        self.maxsize = int(maxsize)

    def hit(self, key):
        """The value of ``key`` (marked as most recently used), or None."""
        v = self.get(key)
        if v is not None:
            self.move_to_end(key)
        return v

    def put(self, key, value):
        """Store ``value`` under ``key`` (most recently used); drop the oldest past the bound."""
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.maxsize:
            self.popitem(last=False)
        return value


class _TableCache(_LRU):
    """The cache of :func:`tables_of` (``_SHARED``); ``pop`` and ``clear`` also forget the
    last-used entry (``_LAST``), so that an entry popped is really cold."""

    def pop(self, *args):
        global _LAST
        _LAST = (None, None)
        return super().pop(*args)

    def popitem(self, last: bool = True):
        global _LAST
        _LAST = (None, None)
        return super().popitem(last)

    def clear(self) -> None:
        global _LAST
        _LAST = (None, None)
        super().clear()


#: What: the lazily built tables (:class:`_Tables`) of each activation met. Keyed by the
#: Activation's value (``Activation.__eq__`` / ``__hash__``: built-ins by name and parameters,
#: expressions by their sympy tree, callables by reference), so equal activations share one
#: entry. Bound: the ``_TABLES_MAX`` most recently used activations (each entry holds at most a
#: few MB: the panels actually touched). Why it cannot change a result: every table is a fixed
#: function of the activation's value, built panel by panel on fixed nodes and accepted by a
#: fixed test, so a panel read from a warm cache is the panel a cold one builds
#: (tests/test_caches.py checks cold == warm bit for bit).
_TABLES_MAX = 32
_SHARED = _TableCache(_TABLES_MAX)
#: (activation, its tables) most recently returned by tables_of: an identity check in the per-layer
#: evaluators, cheaper than hashing the activation (~0.3 us a call). Always the newest entry of
#: ``_SHARED``, so it never holds anything beyond the bound.
_LAST: tuple = (None, None)


class _Tables:
    """The tables of one activation (built lazily): ``mom`` (log moments), ``meh`` (Mehler),
    ``pd`` (phase diagram: E[phi^2], its slope and E[phi'^2] on [1e-9, 1e4])."""

    def __init__(self, act):
        self.act = act
        self._mom = self._meh = self._pd = self._mu = None
        self._small_mom = self._rho2 = None
        #: the (log q, scaled angle) tables of rho and of the slope, by what (_SC_WHAT): built
        #: panel by panel, each a fixed function of (activation, panel, side)
        self._scaled: dict = {}
        #: rho_theta's interpolants by q (at most _THETA_CACHE, oldest dropped): each a fixed
        #: function of (activation, q), so a cached one is the one a cold call builds
        self._theta: dict = {}

    # log moments ----------------------------------------------------------------------------
    @property
    def mom(self):
        if self._mom is None:
            self._mom = _moment_table(self.act) if _has_moment_table(self.act) else False
        return self._mom

    @property
    def meh(self):
        if self._meh is None:
            self._meh = _mehler_table(self.act) if _has_series(self.act) else False
        return self._meh

    @property
    def mu(self):
        """E[phi] / sqrt(E[phi^2]) on the moments' range (lazy), for the residual stream's mean.
        Not for odd activations (0 exactly) nor closed forms."""
        if self._mu is None:
            act = self.act
            if act.odd or not _has_moment_table(act):
                self._mu = False
            else:
                def fn(q):
                    m = np.asarray(act.mean(q), float)
                    return (m / np.sqrt(np.asarray(act.second_moment(q), float)))[:, None]

                def accept(u, vals):
                    return vals if np.all(np.isfinite(vals)) else None
                self._mu = _LogQTable(fn, LQ_LO, LQ_HI, _WIDTH, _DEG, lazy=True, accept=accept)
        return self._mu

    @property
    def pd(self):
        """E[phi^2], d/dq E[phi^2], E[phi'^2] on [1e-9, 1e4] (degree 16), for phase_diagram."""
        if self._pd is None:
            act = self.act
            self._pd = _LogQTable(lambda q: np.stack([act.second_moment(q),
                                                      act.second_moment_slope(q),
                                                      act.dphi_second_moment(q)], axis=-1),
                                  math.log(1e-9), math.log(1e4))
            # built in one call, as it always was: with q up to 1e4 in the call, the engine
            # uses its graded rule for every node (deterministic, ~1e-16)
        return self._pd


def _key(act):
    """The key of ``act`` in ``_SHARED``: the Activation itself (hashed and compared by value)."""
    return act


def tables_of(act) -> _Tables:
    """The (cached) tables of ``act``, shared by every activation equal to it (``_SHARED``)."""
    global _LAST
    last = _LAST
    if last[0] is act:
        return last[1]
    t = _SHARED.hit(act)
    if t is None:
        t = _SHARED.put(act, _Tables(act))
    _LAST = (act, t)
    return t


def _has_moment_table(act) -> bool:
    return getattr(act, "scalar_kernel", None) is None


def _has_series(act) -> bool:
    """Whether Mehler's series is used for ``act`` (as ``Activation.mehler_coefficients``)."""
    return (act.tau is not None and math.isfinite(act.tau) and not act.kinks
            and act.smooth is None and type(act).cross_moment is Activation.cross_moment)


# -- log moments ------------------------------------------------------------------------------


def _direct_moments(act, q):
    """(E[phi(sqrt(q) z)^2], E[phi'(sqrt(q) z)^2]) for the tables: by the graded composite
    Gauss-Legendre rule of :mod:`signalprop.gaussian` whatever q (measured within 1e-15 of
    mpmath for tanh and sigmoid over q in [1e-6, 1e6]); ``act.moments`` itself switches to
    Gauss-Hermite at small q, whose computed weights carry ~1e-14 relative errors near 200
    nodes. Activations that override the moments are asked directly."""
    cls = type(act)
    if (cls.moments is Activation.moments and cls.second_moment is Activation.second_moment
            and cls.dphi_second_moment is Activation.dphi_second_moment):
        return gaussian.expect((lambda x: act.phi(x) ** 2, lambda x: act.dphi(x) ** 2),
                               np.asarray(q, float), kinks=act.kinks, tau=None)
    return act.moments(q)


def _moment_table(act) -> _LogQTable:
    C = _dct_matrix(_DEG)

    def fn(q):
        try:
            v, d = _direct_moments(act, q)
        except gaussian.IntegrandError:
            # the engine refuses some node of the panel (a custom phi whose Gaussian mass is not
            # negligible at |z| = 10 there, e.g. exp(x**2) near q = 1/4): the panel is rejected
            # (non-finite values) and its q go to the direct route, which raises or answers
            # point by point, as without tables
            v = d = np.full(np.shape(q), np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.stack([np.log(v), np.log(d)], axis=-1)

    def accept(u, vals):
        """Chebyshev coefficients (and monomial ones for Horner) of a panel, or None when the
        values are not finite or the last two coefficients are not at rounding level."""
        if not np.all(np.isfinite(vals)):
            return None
        # the chord through the end nodes is taken out before the transform and put back into
        # c_0, c_1: log E[phi^2] reaches |14| at the ends of the range, and a transform of the
        # raw values would spread its rounding (~13 eps |value|) over every coefficient
        lo_v, hi_v = vals[0], vals[-1]
        x = _lobatto(_DEG)[:, None]                # t at the nodes, descending
        rest = vals[::-1] - (0.5 * (hi_v + lo_v) + 0.5 * (hi_v - lo_v) * x)
        coef = C @ rest                            # nodes as x_j = cos(pi j / deg): t descending
        if np.max(np.abs(coef[-2:])) > _LOG_TAIL_TOL:
            return None
        coef[0] += 0.5 * (hi_v + lo_v)
        coef[1] += 0.5 * (hi_v - lo_v)
        # monomial coefficients in t, for Horner's rule in plain floats. The Chebyshev
        # coefficients decay like rho^-k (rho ~ 25), so the monomial ones do too and Horner's
        # rounding error is ~eps sum_k |m_k| ~ eps |value| (the large monomial coefficients of
        # T_k only multiply the rounding-level c_k, and cancel to that level on [-1, 1]).
        m = _cheb_to_monomial(_DEG) @ coef
        return tuple((float(a), float(b)) for a, b in m[::-1])

    return _LogQTable(fn, LQ_LO, LQ_HI, _WIDTH, _DEG, lazy=True, accept=accept)


def moments(act, lq: float):
    """(log E[phi(sqrt(q) z)^2], log E[phi'(sqrt(q) z)^2]) at q = exp(lq), from the table.

    Plain floats in and out, a few microseconds. ``None`` when ``act`` has no table (closed
    forms: relu, leaky_relu, linear, erf) or lq is outside [LQ_LO, LQ_HI] (q in [1e-6, ~1.13e6])
    or its panel was rejected when built: the caller then computes the moments directly.
    Accuracy against ``act.moments``: <= 1e-13 relative (tests/test_tables.py; typically 1e-15).
    """
    last = _LAST
    t = last[1] if last[0] is act else tables_of(act)
    tab = t._mom if t._mom is not None else t.mom
    if tab is False:
        return None
    s = (lq - LQ_LO) * _INV_W
    if not 0.0 <= s <= _N_PANELS:                  # also rejects nan
        return None
    k = int(s)
    if k == _N_PANELS:
        k -= 1
    poly = tab.panels[k]
    if poly is None:
        poly = tab.panel(k)
    if not poly:
        return None
    x = 2.0 * (s - k) - 1.0
    a = b = 0.0
    for ca, cb in poly:
        a = a * x + ca
        b = b * x + cb
    return a, b


# -- Mehler coefficients ----------------------------------------------------------------------

_TRAP_L = 14.0      # |z| <= L: the integrand carries exp(-z^2/4) (below 1e-21 there)
_TRAP_QMAX = 8.0    # no series table where sqrt(q) / tau > 8 (tanh: q > 158; K would be ~2e4)
_K_FIRST = 256      # terms tried first; a panel that needs more is recomputed with _K_MAX
#: What: the trapezoidal nodes and Hermite rows of _hermite_rows. Keyed by the level (a value);
#: bound: 8 levels (the oldest dropped). Cannot change a result: rows are extended by the same
#: recurrence that builds them, so a cached row equals a fresh one bit for bit.
_ROWS: dict = {}
_ROWS_MAX = 8


def _hermite_rows(level: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Trapezoidal rule on [-L, L] with step h = 0.5 * 2^(-level/4), and the matrix
    P[k, i] = sqrt(W_i) p_k(z_i), k < K, W_i = h phi(z_i) (phi the standard normal density),
    p_k = He_k / sqrt(k!) the orthonormal Hermite polynomials.

    Rows by the three-term recurrence p_{k+1} = (z p_k - sqrt(k) p_{k-1}) / sqrt(k+1) started
    from sqrt(W): every entry is h^{1/2} times a Hermite function, bounded by ~h^{1/2}, so
    nothing overflows. The weights are h phi(z_i) exactly (no computed Gauss weights, whose
    rounding errors (~1e-14 for n ~ 1000 in scipy's roots_hermitenorm) were the largest error
    of the Gauss-Hermite route). Cached per level and extended when more rows are asked for."""
    z, P = _ROWS.get(level, (None, None))
    if P is None or P.shape[0] < K:
        h = 0.5 * 2.0 ** (-level / 4.0)
        if z is None:
            n = int(math.ceil(_TRAP_L / h))
            z = np.arange(-n, n + 1) * h
        new = np.empty((K, z.size))
        if P is None:
            new[0] = np.sqrt(h * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi))
            new[1] = z * new[0]
            k0 = 1
        else:
            new[:P.shape[0]] = P
            k0 = P.shape[0] - 1
        for k in range(k0, K - 1):
            new[k + 1] = (z * new[k] - math.sqrt(k) * new[k - 1]) / math.sqrt(k + 1)
        if level not in _ROWS and len(_ROWS) >= _ROWS_MAX:
            _ROWS.pop(next(iter(_ROWS)))
        _ROWS[level] = (z, new)
        P = new
    return z, P[:K]


def _trap_level(q_max: float, tau: float, K: int) -> int:
    """Level of the trapezoidal rule for the Hermite coefficients a_k, k < K, of phi(sqrt(q) z),
    q <= q_max.

    The trapezoidal rule with step h on an integrand analytic and bounded by M in the strip
    |Im z| < d errs by at most 2M / (exp(2 pi d / h) - 1) (Trefethen & Weideman, SIAM Review 56,
    2014, Theorem 5.1). Here the integrand phi(sqrt(q) z) p_k(z) phi_N(z) is analytic for
    |Im z| < tau / sqrt(q); on Im z = y, |phi_N| grows by exp(y^2/2) and p_k(z) phi_N(z)^{1/2} like
    exp(|y| sqrt(k + 1/2)) (the local frequency of the Hermite functions). With y ~ 0.9 tau/sqrt(q)
    (at most ~8) and a margin, 2 pi / h >= 1.1 sqrt(2 K + 1) + 40 sqrt(q) / tau + 8 puts the
    error near 1e-17 relative; it is checked, not assumed: Parseval at every node when a panel is
    built, and against a rule with half the step in tests/test_tables.py."""
    need = 1.1 * math.sqrt(2 * K + 1) + 40.0 * math.sqrt(q_max) / tau + 8.0
    h = 2.0 * math.pi / need
    return max(0, int(math.ceil(4.0 * math.log2(0.5 / h) - 1e-9)))


def hermite_sq(act, q, K: int = _K_MAX, level: Optional[int] = None) -> np.ndarray:
    """b_k = a_k(q)^2, k < K, a_k = E[phi(sqrt(q) z) He_k(z)] / sqrt(k!), for a 1-D array q, by
    the trapezoidal rule of ``_trap_level`` (the largest q sets it). Shape (len(q), K)."""
    q = np.atleast_1d(np.asarray(q, float))
    lev = _trap_level(float(q.max()), act.tau, K) if level is None else level
    z, P = _hermite_rows(lev, K)
    F = act.phi(np.sqrt(q)[:, None] * z) * P[0]
    a = F @ P.T
    return a * a


def _mehler_table(act) -> _LogQTable:
    C = _dct_matrix(_DEG)

    def fn(q):
        """b_k at the nodes of one or more panels (panel by panel), zero-padded to _K_MAX terms.

        Each panel gets the rule of its largest q, first with _K_FIRST terms and, where their
        tail is not negligible, again with _K_MAX. Panels beyond sqrt(q) / tau = _TRAP_QMAX
        (where every activation here needs far more than 1024 terms) are not computed (nan:
        rejected)."""
        rows = q.reshape(-1, _DEG + 1)
        out = np.zeros((rows.shape[0], _DEG + 1, _K_MAX))
        qmax = rows.max(axis=1)
        ok = np.sqrt(qmax) / act.tau <= _TRAP_QMAX
        out[~ok] = np.nan
        todo = np.flatnonzero(ok)
        for K in (_K_FIRST, _K_MAX):
            levels = np.array([_trap_level(float(v), act.tau, K) for v in qmax[todo]], int)
            for lev in np.unique(levels):
                sel = todo[levels == lev]
                out[sel, :, :K] = hermite_sq(act, rows[sel].ravel(), K, int(lev)).reshape(
                    sel.size, _DEG + 1, K)
            if K == _K_MAX:
                break
            b = out[todo, :, :K]
            long = np.any(b[:, :, -8:].sum(axis=2) > 0.1 * _MEHLER_TAIL * b.sum(axis=2), axis=1)
            todo = todo[long]
            if todo.size == 0:
                break
        return out.reshape(q.size, _K_MAX)

    def accept(u, b):
        """Truncate where the tail is below _MEHLER_TAIL at every node, certify by Parseval,
        return the Chebyshev coefficient matrix (deg+1, K) for t ascending in [-1, 1]."""
        total = b.sum(axis=1)
        if not np.all(np.isfinite(total)) or np.any(total <= 0):
            return None
        tail = np.cumsum(b[:, ::-1], axis=1)[:, ::-1]          # tail[:, k] = sum_{j >= k} b_j
        big = np.flatnonzero(np.any(tail > _MEHLER_TAIL * total[:, None], axis=0))
        K = int(big[-1]) + 1 if big.size else 1
        if K >= _K_MAX - 8:
            return None                                        # series too long here
        try:
            v = np.asarray(_direct_moments(act, np.exp(u))[0], float)
        except gaussian.IntegrandError:                        # engine refuses: no panel here
            return None
        if np.any(np.abs(total - v) > _PARSEVAL_TOL * v):
            return None
        return C @ b[::-1, :K]                                  # nodes x_j = cos(pi j / deg)

    tab = _LogQTable(fn, LQ_LO, LQ_HI, _WIDTH, _DEG, lazy=True, accept=accept)
    tab.rho_data = [None] * tab.n        # per panel, for mehler_rho
    return tab


_KS = np.arange(_DEG + 1, dtype=float)


def _mehler_locate(act, q: float):
    """(Mehler table, panel k, x in [-1, 1]) of ``q``, or None (no table, q outside it)."""
    last = _LAST
    t = last[1] if last[0] is act else tables_of(act)
    tab = t._meh if t._meh is not None else t.meh
    if tab is False or not q > 0.0:
        return None
    s = (math.log(q) - LQ_LO) * _INV_W
    if not 0.0 <= s <= _N_PANELS:
        return None
    k = min(int(s), _N_PANELS - 1)
    x = 2.0 * (s - k) - 1.0
    return tab, k, (1.0 if x > 1.0 else (-1.0 if x < -1.0 else x))


def mehler_sq(act, q: float) -> Optional[np.ndarray]:
    """b_k = a_k(q)^2 (k = 0..K-1): E[phi(u1) phi(u2)] = sum_k b_k c^k for
    u ~ N(0, q [[1, c], [c, 1]]) (Mehler's formula), so sum_k b_k c^k / sum_k b_k is the
    correlation of the post-activations; the same numbers as ``act.mehler_coefficients(q)**2``
    (to <= 1e-13 of sum_k b_k, tests/test_tables.py), truncated at K where the tail is below
    1e-17 of the sum.

    A new numpy array, a few microseconds. ``None`` where ``act`` has no series (kinks, closed
    forms, unknown analyticity), outside q in [1e-6, ~1.13e6], or where the series would need
    1016 terms or more (tanh: q >~ 6.9): the caller then uses the direct route.
    """
    loc = _mehler_locate(act, q)
    if loc is None:
        return None
    tab, k, x = loc
    coef = tab.panels[k]
    if coef is None:
        coef = tab.panel(k)
    if coef is None or coef is False:
        return None
    # T_j(x) = cos(j arccos x): accurate to ~j eps for every x in [-1, 1]
    return np.cos(_KS * math.acos(x)) @ coef


def _rho_panel(coef: np.ndarray, k: int, tab) -> tuple:
    """(exponents, Chebyshev coefficients of the b_k with those exponents, of sum_k b_k) of a
    panel: the terms that are zero to 1e-30 of the sum at every node (the even ones of an odd
    activation) are left out."""
    T = np.cos(np.outer(np.arccos(_lobatto(_DEG)), _KS))     # T_j at the nodes
    b = T @ coef                                              # b_k at the nodes
    total = b.sum(axis=1)
    keep = np.flatnonzero(np.any(np.abs(b) > 1e-30 * total[:, None], axis=0))
    data = (keep.astype(float), np.ascontiguousarray(coef[:, keep]), coef.sum(axis=1),
            np.where(keep % 2 == 1, -1.0, 1.0))
    tab.rho_data[k] = data
    return data


def mean_ratio(act, lq: float) -> Optional[float]:
    """E[phi(sqrt(q) z)] / sqrt(E[phi(sqrt(q) z)^2]) at q = exp(lq) from a Chebyshev table in
    log q (analytic in the strip like the moments, so ~1e-15; tests/test_tables.py), or ``None``
    (odd activations, closed forms, lq outside the table, a rejected panel)."""
    last = _LAST
    t = last[1] if last[0] is act else tables_of(act)
    tab = t.mu
    if tab is False or not LQ_LO <= lq <= tab.hi:
        return None
    s = (lq - tab.lo) / tab.width
    k = min(int(s), tab.n - 1)
    vals = tab.panel(k)
    if vals is None:
        return None
    t = min(1.0, max(-1.0, 2.0 * (s - k) - 1.0))
    d = t - tab.x[::-1]                           # nodes in increasing order, as stored
    hit = np.flatnonzero(d == 0.0)
    if hit.size:
        return float(vals[hit[0], 0])
    cw = tab.w[::-1] / d                          # barycentric formula (as in __call__)
    return float(cw @ vals[:, 0]) / float(cw.sum())


def mehler_series(act, q: float) -> Optional[tuple]:
    """(exponents k, weights b_k / sum_j b_j, signs (-1)^k) of the correlation map at ``q``:
    rho(c) = sum_k w_k c^k (Mehler's formula), the terms that vanish left out; ``None`` where
    :func:`mehler_sq` would return None. For a loop in which q stays put while c moves (a
    network whose length has converged), so the table is read once."""
    loc = _mehler_locate(act, q)
    if loc is None:
        return None
    tab, k, x = loc
    data = tab.rho_data[k]
    if data is None:
        coef = tab.panel(k)
        if coef is None:
            return None
        data = _rho_panel(coef, k, tab)
    exps, cs, den, sign = data
    T = np.cos(_KS * math.acos(x))
    return exps, (T @ cs) / float(T @ den), sign


def mehler_rho(act, q: float, c: float) -> Optional[float]:
    """sum_k b_k c^k / sum_k b_k = E[phi(u1) phi(u2)] / E[phi(u1)^2] for
    u ~ N(0, q [[1, c], [c, 1]]): the correlation of the post-activations (Mehler's formula),
    the series of :func:`mehler_series` evaluated at c. A float (not clipped to [-1, 1]), or
    ``None`` where ``mehler_sq`` would return None."""
    series = mehler_series(act, q)
    return None if series is None else series_at(series, c)


# -- the correlation map at one q, in theta = arccos c ---------------------------------------

_THETA_DEGS = (32, 64, 128, 256)   #: Chebyshev degrees in theta tried in turn
_THETA_TAIL = 8e-15             #: last three coefficients (absolute) at rounding level
_THETA_CHECK = 5e-14            #: off-node agreement with the direct rule (absolute): the
                                #: direct rule itself errs by up to 3e-14 at q = 1e13 (gelu)
_THETA_CACHE = 16               #: interpolants kept per activation


def rho_theta(act, q: float, rho: Callable) -> Optional[tuple]:
    """The post-activation correlation c -> rho(q, c) = E[phi(u1) phi(u2)] / E[phi^2] at one q, as
    a Chebyshev interpolant in x = 2 theta / pi - 1, theta = arccos c, or ``None``.

    For a network whose length has converged (or whose q is past the point where rho stops
    depending on it) while c still moves (at the edge of chaos c -> 1 like a power of the depth,
    so predict never sees c repeat) the map is evaluated at every layer; the direct bivariate
    rule costs ~1-10 ms a call, this ~5 us. In theta, rho(q, cos theta) is smooth on [0, pi]:
    analytic in c inside (-1, 1) (the Gaussian density is), even in theta at the ends for smooth
    phi, and a series in odd powers of theta for kinks, whose (1 -+ c)^(k + 1/2) terms are
    sin(theta/2)^(2k+1)-like. ``rho(q, c)`` (vectorised: meanfield._rho) gives the values at the
    deg + 1 Chebyshev-Lobatto nodes; the interpolant is accepted when its last three
    coefficients are below 8e-15 and it agrees with ``rho`` within 5e-14 at 8 points between the
    nodes (the direct rule's own error reaches 3e-14 at q = 1e13), trying degrees 32, 64, 128,
    256 while each doubling shrinks the tail 1000-fold (else ``None``, e.g. tanh at q = 1e13,
    whose features are at theta ~ q^-1/2). Cached per activation and q (the last 16), so
    ``rho`` must be the activation's own direct rule (``maps.rho_fn(act)``, as callers pass)."""
    t = tables_of(act)
    cache = t._theta
    key = float(q)
    if key in cache:
        return cache[key]
    out, prev = None, None
    for deg in _THETA_DEGS:
        x = _lobatto(deg)
        c = np.cos(0.5 * np.pi * (x + 1.0))
        vals = np.asarray(rho(np.full(c.size, key), c), float)
        if not np.all(np.isfinite(vals)):
            break
        coef = _dct_matrix(deg) @ vals
        tail = np.max(np.abs(coef[-3:]))
        if tail > _THETA_TAIL:
            if prev is not None and tail > 1e-3 * prev:
                break            # not converging geometrically: a higher degree will not do
            prev = tail
            continue
        # at the rounding floor: certify (a tail that reached the floor cannot shrink 1000-fold
        # more, so the geometric rule above applies only while it is above the threshold)
        xm = np.cos(np.pi * (np.arange(8) * (deg // 8) + 0.5 + 0.37 * np.arange(8) / 8) / deg)
        cm = np.cos(0.5 * np.pi * (xm + 1.0))
        ref = np.asarray(rho(np.full(8, key), cm), float)
        got = np.polynomial.chebyshev.chebval(xm, coef)
        if np.max(np.abs(got - ref)) <= _THETA_CHECK:
            out = tuple(float(v) for v in coef[::-1])   # highest first, for Clenshaw
            break
    if len(cache) >= _THETA_CACHE:
        cache.pop(next(iter(cache)))
    cache[key] = out
    return out


def theta_at(coef: tuple, c: float) -> float:
    """rho(c) from a :func:`rho_theta` interpolant: Clenshaw's recurrence for sum_k a_k T_k(x),
    x = 2 arccos(c) / pi - 1 (plain floats, ~5 us for degree 64)."""
    x = 2.0 * math.acos(c) / math.pi - 1.0
    x2 = 2.0 * x
    b1 = b2 = 0.0
    for a in coef[:-1]:
        b1, b2 = a + x2 * b1 - b2, b1
    return coef[-1] + x * b1 - b2


# -- rho(q, c) in two variables, for kinked activations with a closed-form smoothing ----------

_S_MAX = 1e-3                   #: the small-q panels: s = sqrt(q) in (0, 1e-3], q <= 1e-6
_S_DEG = 12                     #: degree in s of the moments' small-q panel (first-kind nodes)
_S_MAX_RHO = 0.1                #: rho's small-q panel: s = sqrt(q) in (0, 0.1], q <= 1e-2 ...
_S_DEG_RHO = 16                 #: ... degree 16 (first-kind nodes, s >= 2.1e-4)
_RHO2_TAIL = 8e-15              #: last three theta coefficients at every node (absolute)
_RHO2_UTAIL = 1e-14             #: last two coefficients in u (or s) of every theta coefficient
_RHO2_CHECK = 5e-14             #: agreement with the direct rule at 4 off-grid points (the
                                #: direct rule's own error: ~1e-14, 3e-14 at q = 1e13)
_RHO2_CHECK_SMALL = 1e-13       #: the same in the small-q panel, where the direct rule itself
                                #: errs by 1e-14 (q = 7e-8) to 1e-13 (1e-8) against mpmath (elu)


def _cheb1(n: int) -> np.ndarray:
    """First-kind Chebyshev points cos(pi (j + 1/2) / n), j = 0..n-1 (descending)."""
    return np.cos(np.pi * (np.arange(n) + 0.5) / n)


@lru_cache(maxsize=4)
def _dct2_matrix(n: int) -> np.ndarray:
    """C with c = C @ f: coefficients of the degree n-1 interpolant through values at the
    first-kind points (c_k = (2/n) sum_j f_j cos(pi k (j + 1/2) / n), c_0 halved; ATAP ch. 3)."""
    j = np.arange(n)
    C = np.cos(np.pi * np.outer(j, j + 0.5) / n) * (2.0 / n)
    C[0] *= 0.5
    C.flags.writeable = False
    return C


class _RhoTable:
    """rho(q, c) = E[phi(u1) phi(u2)] / E[phi^2] of one activation, u ~ N(0, q [[1, c], [c, 1]]),
    in two variables: Chebyshev in theta = arccos c (degree 64 on [0, pi], as :func:`rho_theta`)
    times Chebyshev in u = log q on the panels of the moment tables (width 0.25, degree 12) above
    q = 1e-2 or, for q <= 1e-2, in s = sqrt(q) on (0, 0.1] (degree 16): there rho is a power
    series in sqrt(q) (phi piecewise analytic with a kink at 0, as elu and selu: rho_n(c) s^n,
    the terms past s^16 below 1e-16), or constant to rounding (hard_tanh: its kinks at +-1 enter
    as exp(-1/(2q)) < 1e-21), so one panel covers q -> 0. Its first-kind nodes stay at
    s >= 2.1e-4, where the direct rule is good to ~2e-14 (it loses digits at smaller q: the
    closed-form smoothing of elu/selu cancels, ~1e-11 at q = 1e-12), and below them the panel
    interpolates. For a profile whose q moves slowly (q* -> 0 at the edge of chaos, as a power of
    the depth) the direct rule would otherwise run at every layer.

    Built lazily from ``rho`` (vectorised, the direct rule), panel by panel; a panel is kept
    when every node's theta tail is below 8e-15 (degree 64, else 128), the tail of every theta
    coefficient in u (or s) below 1e-14, and 4 off-grid points agree with ``rho`` within 5e-14
    (1e-13 in the small-q panel); else it is rejected
    and those q go to the direct rule. Only for activations with a closed-form smoothing
    (``act.smooth``: elu, selu, hard_tanh), whose direct rule is cheap enough to tabulate
    (~1e-2 s per 65 points)."""

    def __init__(self, act, rho: Callable):
        self.act, self.rho = act, rho
        self.panels: dict = {}

    def _theta_coefs(self, q: np.ndarray, deg: int = _THETA_DEGS[1]):
        """Theta coefficients (rows: q) and whether every row's tail is at rounding level."""
        ct = np.cos(0.5 * np.pi * (_lobatto(deg) + 1.0))
        Q = np.repeat(q, ct.size)
        C = np.tile(ct, q.size)
        vals = np.asarray(self.rho(Q, C), float).reshape(q.size, ct.size)
        if not np.all(np.isfinite(vals)):
            return None, False
        A = vals @ _dct_matrix(deg).T
        return A, bool(np.max(np.abs(A[:, -3:])) <= _RHO2_TAIL)

    def _build(self, k):
        """Panel k (or "small"), degree 64 in theta, else 128 (hard_tanh's kinks at +-1 from
        q ~ 0.5 on); False when neither passes."""
        for deg in _THETA_DEGS[1:3]:
            panel = self._build_deg(k, deg)
            if panel is not False:
                return panel
        return False

    def _build_deg(self, k, deg):
        if k == "small":
            x = _cheb1(_S_DEG_RHO + 1)
            q = (0.5 * _S_MAX_RHO * (x + 1.0)) ** 2
            A, ok = self._theta_coefs(q, deg)
            if ok:
                B = _dct2_matrix(_S_DEG_RHO + 1) @ A        # coefficients in s (rows) x theta
                ok = np.max(np.abs(B[-1:])) <= _RHO2_UTAIL
        else:
            u = LQ_LO + (k + 0.5 * (1.0 - _lobatto(_DEG))) * _WIDTH    # ascending
            A, ok = self._theta_coefs(np.exp(u), deg)
            if ok:
                B = _dct_matrix(_DEG) @ A[::-1]
                ok = np.max(np.abs(B[-2:])) <= _RHO2_UTAIL
        if not ok:
            return False
        panel = (k, B)
        rng = np.random.default_rng(17)
        lq = (np.log(rng.uniform(2e-4, _S_MAX_RHO, 4) ** 2) if k == "small"
              else LQ_LO + (k + rng.uniform(0.0, 1.0, 4)) * _WIDTH)
        cs = np.cos(np.pi * rng.uniform(0.0, 1.0, 4))
        ref = np.asarray(self.rho(np.exp(lq), cs), float)
        got = np.array([self._eval(panel, l, cc) for l, cc in zip(lq, cs)])
        tol = _RHO2_CHECK_SMALL if k == "small" else _RHO2_CHECK
        return panel if np.max(np.abs(got - ref)) <= tol else False

    def _eval(self, panel, lq: float, c: float) -> float:
        k, B = panel
        if k == "small":
            x = 2.0 * math.exp(0.5 * lq) / _S_MAX_RHO - 1.0
        else:
            x = 2.0 * ((lq - LQ_LO) * _INV_W - k) - 1.0
        Tu = np.cos(np.arange(B.shape[0]) * math.acos(min(1.0, max(-1.0, x))))
        coef = Tu @ B                                   # theta coefficients at this q
        return theta_at(tuple(coef[::-1].tolist()), c)

    def __call__(self, lq: float, c: float) -> Optional[float]:
        if lq <= 2.0 * math.log(_S_MAX_RHO):
            k = "small"
        elif LQ_LO <= lq <= LQ_HI:
            k = min(int((lq - LQ_LO) * _INV_W), _N_PANELS - 1)
        else:
            return None
        panel = self.panels.get(k)
        if panel is None:
            panel = self.panels[k] = self._build(k)
        return None if panel is False else self._eval(panel, lq, c)


def _small_moment_panel(act):
    """Chebyshev coefficients in s = sqrt(q) on (0, 1e-3] of log(E[phi^2] / q) and log E[phi'^2]
    (phi(0) = 0: both are power series in s, for kinks at 0 too), or False: not for phi(0) != 0,
    non-finite values, or a tail (last two coefficients) above 1e-14."""
    if float(act.phi(np.zeros(1))[0]) != 0.0:
        return False
    x = _cheb1(_S_DEG + 1)
    q = (0.5 * _S_MAX * (x + 1.0)) ** 2
    v, d = _direct_moments(act, q)
    with np.errstate(divide="ignore", invalid="ignore"):
        vals = np.stack([np.log(np.asarray(v, float) / q), np.log(np.asarray(d, float))], axis=-1)
    if not np.all(np.isfinite(vals)):
        return False
    B = _dct2_matrix(_S_DEG + 1) @ vals
    return B if np.max(np.abs(B[-2:])) <= 1e-14 else False


def small_moments(act, lq: float):
    """(log E[phi^2], log E[phi'^2]) at q = exp(lq) <= 1e-6 from a Chebyshev panel in
    s = sqrt(q) (:func:`_small_moment_panel`), or ``None`` (q above 1e-6, phi(0) != 0, closed
    forms, panel rejected). Within 1e-14 of the direct rule (tests/test_tables.py)."""
    if not _has_moment_table(act) or not lq <= math.log(_S_MAX ** 2):
        return None
    t = tables_of(act)
    B = t._small_mom
    if B is None:
        B = t._small_mom = _small_moment_panel(act)
    if B is False:
        return None
    x = 2.0 * math.exp(0.5 * lq) / _S_MAX - 1.0
    T = np.cos(np.arange(B.shape[0]) * math.acos(min(1.0, max(-1.0, x))))
    fv, fd = T @ B
    return float(fv) + lq, float(fd)


def rho_2d(act, lq: float, c: float, rho: Callable, long_run: bool = True) -> Optional[float]:
    """rho(q, c) from the activation's :class:`_RhoTable` (q = exp(lq) <= ~1.13e6), or, for
    gelu and odd activations with Mehler's series (tanh), from their (log q, scaled angle)
    table (:class:`_ScaledTable`, q in [1, 1e13], panels certified for tanh up to q ~8e3:
    predict reaches it past the Mehler table, q > ~31 gelu, ~6.9 tanh, where q still moves or
    the theta interpolant :func:`rho_theta` is rejected), or ``None`` (no table for this
    activation; q outside; panel rejected; tanh where its Mehler table answers).
    ``long_run=False``: tanh's scaled table is not read (``None``): a panel costs ~0.1-1 s, a
    few thousand direct evaluations, so the caller says whether its run stays long enough at
    this q to pay for it (gelu's panels, ~20-40 ms, are always read). The answer never
    depends on which panels an earlier call built.
    Accuracy: 5e-14 of the direct rule ``rho`` (tests/test_tables.py; measured ~1e-14)."""
    if getattr(act, "smooth", None) is None:
        if not _is_gelu(act):       # tanh: only past its Mehler table, for a long run
            if not long_run or not 0.0 <= lq <= _SC_LQ_MAX or mehler_series(
                    act, math.exp(lq)) is not None:
                return None
        tab = _scaled_table(act, rho, "rho")
        return None if tab is None else tab.at(lq, c)
    t = tables_of(act)
    tab = t._rho2
    if tab is None:
        tab = t._rho2 = _RhoTable(act, rho)
    return tab(lq, c)


def rho_2d_at_q(act, lq: float, rho: Callable) -> Optional[Callable[[float], float]]:
    """c -> :func:`rho_2d` at a fixed log q for odd activations read from the scaled table
    (tanh past its Mehler table), with the table's theta coefficients at this q formed once
    (:meth:`_ScaledTable.at_q`: ~3 us a call instead of ~30 us; the same value to the last bits
    of acos/asinh), for predict's fill of c alone where q has stopped moving; None for other
    activations (the caller keeps :func:`rho_2d`) and where rho_2d would not read the table."""
    if (getattr(act, "smooth", None) is not None or _is_gelu(act) or not 0.0 <= lq <= _SC_LQ_MAX
            or mehler_series(act, math.exp(lq)) is not None):
        return None
    tab = _scaled_table(act, rho, "rho")
    return None if tab is None else tab.at_q(lq)


# -- rho(q, c) at large q for analytic activations, in (log q, an angle scaled with q) ---------

_SC_A = 1.0                     #: theta = (a / sqrt(q)) sinh(v): the scale of sqrt(q) theta
_SC_U0 = 0.0                    #: panels in u = log q from u = 0 (q = 1) ...
_SC_W = 1.0                     #: ... of width 1 ...
_SC_N = 30                      #: ... up to u = 30 (q ~ 1.07e13), read up to q = 1e13 only:
_SC_LQ_MAX = math.log(1e13)     #: maps.RHO_Q_MAX, past which maps.rho no longer depends on q
_SC_DEG_U = 12                  #: Chebyshev degree in u per panel (13 Lobatto nodes)
_SC_DEGS = (40, 80)             #: degrees in the angle tried in turn (nested Lobatto nodes)
_SC_CHECK_N = 6                 #: off-grid points checked against fn per panel
_SC_WHAT = ("rho", "slope")     #: the two quantities tabulated (see _ScaledTable)


def _scaled_theta(q, x):
    """theta(q, x) = (a / sqrt(q)) sinh(V(q) (1 + x) / 2), V(q) = asinh(sqrt(q) (pi/2) / a):
    x in [-1, 1] -> theta in [0, pi/2], nodes clustered at theta ~ q^(-1/2)."""
    sq = np.sqrt(q)
    V = np.arcsinh(sq * (0.5 * math.pi / _SC_A))
    return (_SC_A / sq) * np.sinh(0.5 * V * (1.0 + x))


def _scaled_x(q, theta):
    """The inverse of :func:`_scaled_theta`: x = 2 asinh(sqrt(q) theta / a) / V(q) - 1."""
    sq = np.sqrt(q)
    V = np.arcsinh(sq * (0.5 * math.pi / _SC_A))
    return 2.0 * np.arcsinh(sq * theta / _SC_A) / V - 1.0


class _ScaledTable:
    """rho(q, c) = E[phi(u1) phi(u2)] / E[phi^2] ("rho") or log(E[phi'(u1) phi'(u2)] /
    E[phi'^2]) ("slope") of an analytic activation at large q, u ~ N(0, q [[1, c], [c, 1]]),
    where Mehler's series would need thousands of terms (tanh past q ~ 6.9).

    Why this variable: as q grows, phi(sqrt(q) z) approaches a step (tanh -> sign) or a kink
    (gelu -> relu) and c -> rho(q, c) develops a feature at theta = arccos c ~ q^(-1/2) (at
    q -> inf the arcsine law (2/pi) arcsin c, with its |theta| corner at c = 1): in theta the
    interpolant needs a degree ~ sqrt(q). Near c = 1, rho depends on theta through sqrt(q) theta
    (and on q through powers of q^(-1/2)); with sqrt(q) theta = a sinh(v) a function of
    sqrt(q) theta analytic in a strip of fixed width about the real axis stays analytic in a
    strip of fixed width in v (asinh maps the disc |w| < a into |Im v| < pi/2), and away from
    c = 1, theta = (a/sqrt(q)) sinh v ~ theta_max exp(v - V) is entire in v. The interval
    v in [0, V(q)], V = asinh(sqrt(q) (pi/2) / a), grows like log sqrt(q) only, so a fixed
    degree covers a panel: measured for tanh, the theta coefficients reach 8e-15 by degree 25
    (q = 7) to 33 (q = 1e4) with a = 1. In u = log q each theta coefficient is analytic (the
    strip argument of the module docstring) and smooth enough for panels of width 1 with
    degree 12 (last two coefficients <= 1.6e-15 for tanh, the next ones ~1e-13: ~100-fold per
    two degrees). theta is taken on [0, pi/2] (c >= 0); c < 0 is the
    side c -> -c: for odd phi rho(q, -c) = -rho(q, c) and E[phi' phi'] is even in c, so one
    side serves both; otherwise a second table of the side c < 0 (phi(u) phi(-u) has the same
    q^(-1/2) feature at c = -1).

    Node values from ``fn(q, c)`` (vectorised: for tanh the direct rule, maps.rho or the slope
    ratio; for gelu :func:`gelu_rho`); a panel (k, side) is kept when the theta coefficients at
    its largest q fall to 8e-15 (last three, degree 40, else 80: a panel whose top column fails
    is rejected after those ~81 evaluations), every other column does too at that degree, the
    last two u coefficients of every theta coefficient are below 1e-14, and 6 off-grid points
    agree with ``fn`` within 5e-14 (absolute, as :class:`_RhoTable`); else its points go to the
    direct rule. Read for q in [1, 1e13] (maps.RHO_Q_MAX: past it maps.rho is constant in q,
    and so must the route be). For tanh
    the direct rule's own scatter (~1e-13 past q ~ 2e4) rejects the panels beyond u = 10.
    Panels are built lazily: 13 x 41 (or 81) evaluations of ``fn``: for tanh ~1-8 ms each,
    0.1-1 s of CPU a panel (benchmarks/bench_maps.py prints the cold call); for gelu ~35 us
    each, ~20-40 ms a panel."""

    def __init__(self, act, fn: Callable, what: str):
        self.act, self.fn, self.what = act, fn, what     # fn: node values and off-grid check
        self.odd = bool(getattr(act, "odd", False))
        self.panels: dict = {}

    def _values(self, q: np.ndarray, x: np.ndarray, side: int) -> np.ndarray:
        """fn at (q, c(theta(q, x))) for the side's c = +-cos(theta), (len(q), len(x)), with the
        slope's log taken; non-finite values mark failure."""
        Q = np.repeat(q, x.size)
        th = _scaled_theta(Q, np.tile(x, q.size))
        v = np.asarray(self.fn(Q, side * np.cos(th)), float)
        if self.what == "slope":
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.log(v)
        return v.reshape(q.size, x.size)

    def _build(self, k: int, side: int):
        """Panel k of ``side``: the coefficient array B (u rows, theta columns), or False."""
        u = _SC_U0 + (k + 0.5 * (1.0 - _lobatto(_SC_DEG_U))) * _SC_W      # ascending
        q = np.exp(u)
        deg, top = None, None
        for d in _SC_DEGS:                   # the largest q of the panel sets the degree
            x = _lobatto(d)
            if top is None:
                top = self._values(q[-1:], x, side)[0]
            else:                            # degree 2d: the old nodes are the even ones
                new = np.empty(d + 1)
                new[::2] = top
                new[1::2] = self._values(q[-1:], x[1::2], side)[0]
                top = new
            if not np.all(np.isfinite(top)):
                return False
            if np.max(np.abs((_dct_matrix(d) @ top)[-3:])) <= _RHO2_TAIL:
                deg = d
                break
        if deg is None:
            return False
        x = _lobatto(deg)
        vals = np.vstack([self._values(q[:-1], x, side), top[None, :]])
        if not np.all(np.isfinite(vals)):
            return False
        A = vals @ _dct_matrix(deg).T                    # theta coefficients per q
        if np.max(np.abs(A[:, -3:])) > _RHO2_TAIL:
            return False
        B = _dct_matrix(_SC_DEG_U) @ A[::-1]             # u coefficients (rows) of each
        if np.max(np.abs(B[-2:])) > _RHO2_UTAIL:
            return False
        rng = np.random.default_rng(1000 * k + 17 + (side < 0))
        lq = _SC_U0 + (k + rng.uniform(0.0, 1.0, _SC_CHECK_N)) * _SC_W
        c = side * np.cos(_scaled_theta(np.exp(lq), rng.uniform(-1.0, 1.0, _SC_CHECK_N)))
        ref = np.asarray(self.fn(np.exp(lq), c), float)
        if self.what == "slope":
            with np.errstate(divide="ignore", invalid="ignore"):
                ref = np.log(ref)
        got = self._eval(B, k, lq, side * c)
        return B if np.all(np.abs(got - ref) <= _RHO2_CHECK) else False

    @staticmethod
    def _eval(B: np.ndarray, k: int, lq: np.ndarray, c: np.ndarray) -> np.ndarray:
        """The panel's interpolant at log q ``lq`` and c >= 0 (flat arrays): the theta
        coefficients by the u-Chebyshev sum (a fixed order per point), then Clenshaw in x."""
        t = np.clip(2.0 * ((lq - _SC_U0) / _SC_W - k) - 1.0, -1.0, 1.0)
        Tu = np.cos(np.arange(B.shape[0]) * np.arccos(t)[:, None])
        coef = _rowdot(Tu, B)
        x = np.clip(_scaled_x(np.exp(lq), np.arccos(np.minimum(c, 1.0))), -1.0, 1.0)
        x2 = 2.0 * x
        b1 = np.zeros(x.size)
        b2 = np.zeros(x.size)
        for m in range(coef.shape[1] - 1, 0, -1):
            b1, b2 = coef[:, m] + x2 * b1 - b2, b1
        return coef[:, 0] + x * b1 - b2

    def at(self, lq: float, c: float) -> Optional[float]:
        """One point (plain floats; the scalar twin of ``__call__``, the same operations in the
        same order, so the same number bit for bit), or None (outside, panel rejected)."""
        s = (lq - _SC_U0) / _SC_W
        if not 0.0 <= s or not lq <= _SC_LQ_MAX or not -1.0 <= c <= 1.0:    # also nan
            return None
        k = min(int(s), _SC_N - 1)
        neg = c < 0.0
        B = self.panel(k, -1 if neg and not self.odd else 1)
        if B is False:
            return None
        t = np.clip(2.0 * ((np.array([lq]) - _SC_U0) / _SC_W - k) - 1.0, -1.0, 1.0)
        Tu = np.cos(np.arange(B.shape[0]) * np.arccos(t)[:, None])
        coef = _rowdot(Tu, B)[0].tolist()
        x = float(np.clip(_scaled_x(np.exp(np.array([lq])), np.arccos(np.minimum(
            np.array([abs(c)]), 1.0))), -1.0, 1.0)[0])
        x2 = 2.0 * x
        b1 = b2 = 0.0
        for m in range(len(coef) - 1, 0, -1):
            b1, b2 = coef[m] + x2 * b1 - b2, b1
        v = coef[0] + x * b1 - b2
        if self.odd and self.what == "rho":
            return -v if neg else (0.0 if c == 0.0 else v)
        return v

    def at_q(self, lq: float) -> Optional[Callable[[float], float]]:
        """c -> the value at a fixed log q ``lq`` of an odd activation's table (predict's fill
        of c alone, where q has stopped moving): the theta coefficients of the point are formed
        once (as in :meth:`at`), then each c costs Clenshaw's recurrence in plain floats; equal
        to :meth:`at` up to the last bits of acos/asinh (math instead of numpy). None where
        :meth:`at` would answer None for c >= 0 (outside, panel rejected) or not odd."""
        s = (lq - _SC_U0) / _SC_W
        if not self.odd or not 0.0 <= s or not lq <= _SC_LQ_MAX:
            return None
        k = min(int(s), _SC_N - 1)
        B = self.panel(k, 1)
        if B is False:
            return None
        t = np.clip(2.0 * ((np.array([lq]) - _SC_U0) / _SC_W - k) - 1.0, -1.0, 1.0)
        Tu = np.cos(np.arange(B.shape[0]) * np.arccos(t)[:, None])
        coef = tuple(_rowdot(Tu, B)[0].tolist()[::-1])        # highest first
        sq = float(np.sqrt(np.exp(np.array([lq])))[0])
        inv_v = 1.0 / math.asinh(sq * (0.5 * math.pi / _SC_A))
        gain = sq / _SC_A
        rho = self.what == "rho"

        def f(c: float) -> float:
            a = -c if c < 0.0 else c
            x = 2.0 * math.asinh(gain * math.acos(a if a < 1.0 else 1.0)) * inv_v - 1.0
            x = 1.0 if x > 1.0 else (-1.0 if x < -1.0 else x)
            x2 = 2.0 * x
            b1 = b2 = 0.0
            for m in coef[:-1]:
                b1, b2 = m + x2 * b1 - b2, b1
            v = coef[-1] + x * b1 - b2
            if rho:
                return -v if c < 0.0 else (0.0 if c == 0.0 else v)
            return v

        return f

    def panel(self, k: int, side: int):
        key = (k, side)
        p = self.panels.get(key)
        if p is None:
            p = self.panels[key] = self._build(k, side)
        return p

    def __call__(self, q: np.ndarray, c: np.ndarray):
        """(values, ok) at flat arrays q, c; nan where not ok (outside [1, 1e13], rejected)."""
        out, ok = np.full(q.size, np.nan), np.zeros(q.size, bool)
        with np.errstate(divide="ignore", invalid="ignore"):
            lq = np.log(q)
            s = (lq - _SC_U0) / _SC_W
        inside = (s >= 0.0) & (lq <= _SC_LQ_MAX) & np.isfinite(c)
        k = np.minimum(np.where(inside, s, 0.0).astype(int), _SC_N - 1)
        neg = c < 0.0
        # odd: the side c >= 0 for both signs (rho odd, the slope even); else a side per sign
        side = np.where(neg & ~self.odd, -1, 1)
        for kv in np.unique(k[inside]):
            for sv in (1, -1):
                rows = np.flatnonzero(inside & (k == kv) & (side == sv))
                if rows.size == 0:
                    continue
                B = self.panel(int(kv), sv)
                if B is False:
                    continue
                for r0 in range(0, rows.size, 1 << 14):
                    r = rows[r0:r0 + (1 << 14)]
                    out[r] = self._eval(B, int(kv), lq[r], np.abs(c[r]))
                    ok[r] = True
        if self.odd and self.what == "rho":
            # odd in c, and 0 exactly at c = 0 (E[phi(u1) phi(u2)] = E[phi]^2 = 0 there)
            out = np.where(neg, -out, np.where(c == 0.0, 0.0, out))
        return out, ok


_GELU_KEY = ("builtin", "gelu", ())


def _is_gelu(act) -> bool:
    return getattr(act, "key", None) == _GELU_KEY


def _scaled_table(act, fn: Callable, what: str) -> Optional[_ScaledTable]:
    """The activation's :class:`_ScaledTable` of ``what`` (cached on its :class:`_Tables`), or
    None where there is none. Odd activations with Mehler's series (whose table ends at q_max;
    tanh among the built-ins): both quantities, from the direct rule ``fn``. gelu: rho only,
    node values and off-grid check from :func:`gelu_rho` (a 1-D rule on a closed form, ~35 us a
    point against the direct rule's 5-20 ms; held against the direct rule and mpmath in
    tests/test_tables.py): so that a panel costs about one direct evaluation and predict can
    afford it for a q that crosses a panel in a layer or two (gelu chaotic: log q grows ~0.7 a
    layer). Others are left to the direct rule: panels built from it would cost 5-30 s each
    (gelu_tanh ~20 ms a direct evaluation at q = 1e4)."""
    gelu = _is_gelu(act) and what == "rho"
    if not (gelu or (_has_series(act) and getattr(act, "odd", False))):
        return None
    t = tables_of(act)
    tab = t._scaled.get(what)
    if tab is None:
        tab = t._scaled[what] = _ScaledTable(act, gelu_rho if gelu else fn, what)
    return tab


_GELU_Z = 10.0                  #: the outer rule of gelu_rho on z in [-10, 10] (phi(10) ~ 8e-23)


def gelu_rho(q, c) -> np.ndarray:
    """rho(q, c) = E[gelu(u1) gelu(u2)] / E[gelu(u1)^2], u ~ N(0, q [[1, c], [c, 1]]), gelu(x) =
    x Phi(x), by one Gaussian integral per point (flat arrays q > 0, c in [-1, 1]).

    With u1 = sqrt(q) z, u2 = sqrt(q) (c z + s w), s = sqrt(1 - c^2), the inner expectation over
    w is in closed form: for X = a + b w, E[X Phi(X)] = a E[Phi(X)] + b E[w Phi(a + b w)]
    = a Phi(a / r) + (b^2 / r) phi(a / r), r = sqrt(1 + b^2), from E[Phi(a + b W)] =
    Phi(a / sqrt(1 + b^2)) (the difference of two independent normals) and Stein's lemma
    E[W g(W)] = E[g'(W)] with E[phi(a + b W)] = phi(a / r) / r; here a = sqrt(q) c z,
    b = sqrt(q) s. The outer integral over z is a composite 12-point Gauss-Legendre rule on
    [-10, 10] split at the unit grid, at +-2^k / sqrt(q) (gelu(sqrt(q) z)'s own scale,
    k = -3..7) and at +-2^k r / (sqrt(q) |c|) (the inner term's, k = -3..4), so every panel sees
    an integrand smooth on its own width; the denominator E[gelu^2] is the same rule with the
    inner term replaced by gelu(sqrt(q) z) itself. Independent of the bivariate engine, which checks
    it (tests/test_tables.py)."""
    q = np.asarray(q, float).ravel()
    c = np.clip(np.asarray(c, float).ravel(), -1.0, 1.0)
    sq = np.sqrt(q)
    s = np.sqrt((1.0 - c) * (1.0 + c))
    b = sq * s
    r = np.sqrt(1.0 + b * b)
    k1 = 2.0 ** np.arange(-3, 8)
    k2 = 2.0 ** np.arange(-3, 5)
    with np.errstate(divide="ignore", invalid="ignore"):
        f2 = (r / (sq * np.abs(c)))[:, None] * k2
    parts = [np.arange(-10.0, 10.5, 1.0)[None, :], (1.0 / sq)[:, None] * k1,
             -(1.0 / sq)[:, None] * k1, np.where(np.isfinite(f2), f2, 0.0),
             -np.where(np.isfinite(f2), f2, 0.0)]
    z, w = gaussian._panel_rule(gaussian._sorted_breakpoints(parts, q.shape))
    x = sq[:, None] * z
    g1 = x * special.ndtr(x)
    a = (sq * c)[:, None] * z
    t = a / r[:, None]
    G = a * special.ndtr(t) + (b * b / r)[:, None] * np.exp(-0.5 * t * t) * (
        1.0 / math.sqrt(2.0 * math.pi))
    num = (g1 * G * w).sum(axis=1)
    den = (g1 * g1 * w).sum(axis=1)
    return num / den


def rho_scaled_array(act, q, c, rho: Callable):
    """rho(q, c) for flat arrays (q, c) with q in [1, 1e13] from the activation's
    (log q, scaled angle) table (:class:`_ScaledTable`), built from the direct rule ``rho``
    (maps.rho_fn(act)) and certified to 5e-14 of it: (rho, ok), nan where not ``ok`` (no table
    for ``act``, q outside, panel rejected). rho is not clipped; c = 1 is left to the caller."""
    q, c = np.asarray(q, float).ravel(), np.asarray(c, float).ravel()
    tab = _scaled_table(act, rho, "rho")
    if tab is None:
        return np.full(q.size, np.nan), np.zeros(q.size, bool)
    return tab(q, c)


def slope_scaled_array(act, q, c, ratio: Callable):
    """E[phi'(u1) phi'(u2)] / E[phi'^2] for flat arrays (q, c), q in [1, 1e13], from the
    table of its log (:class:`_ScaledTable`, "slope"), built from the direct rule ``ratio`` and
    certified to 5e-14 of its log (relative): (ratio, ok), nan where not ``ok``."""
    q, c = np.asarray(q, float).ravel(), np.asarray(c, float).ravel()
    tab = _scaled_table(act, ratio, "slope")
    if tab is None:
        return np.full(q.size, np.nan), np.zeros(q.size, bool)
    lr, ok = tab(q, c)
    return np.exp(lr), ok


def series_at(series: tuple, c: float) -> float:
    """rho(c) = sum_k w_k c^k for a :func:`mehler_series` ``(exponents, weights, signs)``.
    c^k = exp(k log|c|) (times (-1)^k for c < 0): one vector exp instead of a power per term;
    its relative error k |log c| eps multiplies c^k, so the sum errs by < eps / e of sum w_k."""
    exps, w, sign = series
    if c == 0.0:
        return float(w[0]) if exps[0] == 0.0 else 0.0
    pw = np.exp(exps * math.log(abs(c)))
    return float(w @ (pw * sign if c < 0.0 else pw))


# -- vectorised evaluators (many points at once), for the public maps --------------------------
#
# The same tables as the per-layer evaluators above, read for a whole array of points: panel by
# panel, no Python loop per point. Each returns its values and a boolean mask ``ok`` of the points
# the table answered; the caller computes the others directly (the certified fallback).

_VEC_BLOCK = 1 << 21            #: most float64 entries of one block of work (16 MiB)


def _mono_array(tab) -> np.ndarray:
    """(n_panels, deg + 1, 2) monomial coefficients (highest first) of the built panels of a
    moment table, nan for panels not built or rejected; filled from ``tab.panels`` as they are
    built, so a value read here is the one :func:`moments` reads."""
    m = getattr(tab, "mono", None)
    if m is None:
        m = tab.mono = np.full((tab.n, _DEG + 1, 2), np.nan)
        tab.mono_done = np.zeros(tab.n, bool)
    return m


def moments_array(act, lq) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`moments` for an array of log q: (log E[phi^2], log E[phi'^2], ok), nan where not
    ``ok`` (no table for ``act``, lq outside [LQ_LO, LQ_HI] or non-finite, panel rejected).

    Horner's rule on the panel's monomial coefficients with the very operations of
    :func:`moments`, vectorised over the points: the same numbers, bit for bit."""
    lq = np.asarray(lq, float)
    lv, ld = np.full(lq.shape, np.nan), np.full(lq.shape, np.nan)
    ok = np.zeros(lq.shape, bool)
    if not _has_moment_table(act):
        return lv, ld, ok
    tab = tables_of(act).mom
    if tab is False:
        return lv, ld, ok
    s = (lq - LQ_LO) * _INV_W
    inside = (s >= 0.0) & (s <= _N_PANELS)                # nan: False
    k = np.minimum(np.where(inside, s, 0.0).astype(int), _N_PANELS - 1)
    mono = _mono_array(tab)
    for j in np.unique(k[inside]):
        if not tab.mono_done[j]:
            poly = tab.panel(int(j))
            if poly:
                mono[j] = np.array(poly)
            tab.mono_done[j] = True
    ok = inside & np.isfinite(mono[k, 0, 0])
    flat = np.flatnonzero(ok)
    step = _VEC_BLOCK // (2 * (_DEG + 1))          # gathered coefficients: at most 16 MiB
    for r0 in range(0, flat.size, step):
        idx = flat[r0:r0 + step]
        kk = k.ravel()[idx]
        x = 2.0 * (s.ravel()[idx] - kk) - 1.0
        coef = mono[kk]
        a, b = coef[:, 0, 0].copy(), coef[:, 0, 1].copy()
        for j in range(1, _DEG + 1):
            a = a * x + coef[:, j, 0]
            b = b * x + coef[:, j, 1]
        lv.ravel()[idx], ld.ravel()[idx] = a, b
    return lv, ld, ok


_SMALL_LQ_MIN = math.log(1e-280)   #: below, the direct route (its power-law continuation)


def small_moments_array(act, lq) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`small_moments` for an array of log q in [log 1e-280, LQ_LO]: (log E[phi^2],
    log E[phi'^2], ok), the same Chebyshev panel in s = sqrt(q) (within 1e-14 of the direct
    rule, tests/test_tables.py), nan where not ``ok``."""
    lq = np.asarray(lq, float)
    lv, ld = np.full(lq.shape, np.nan), np.full(lq.shape, np.nan)
    ok = (lq >= _SMALL_LQ_MIN) & (lq <= math.log(_S_MAX ** 2))
    if not _has_moment_table(act) or not np.any(ok):
        return lv, ld, np.zeros(lq.shape, bool)
    t = tables_of(act)
    B = t._small_mom
    if B is None:
        B = t._small_mom = _small_moment_panel(act)
    if B is False:
        return lv, ld, np.zeros(lq.shape, bool)
    idx = np.flatnonzero(ok)
    u = lq.ravel()[idx]
    x = np.clip(2.0 * np.exp(0.5 * u) / _S_MAX - 1.0, -1.0, 1.0)
    T = np.cos(np.arccos(x)[:, None] * np.arange(B.shape[0]))
    vals = _rowdot(T, B)
    lv.ravel()[idx], ld.ravel()[idx] = vals[:, 0] + u, vals[:, 1]
    return lv, ld, ok


def _powers_upto(c: np.ndarray, K: int) -> np.ndarray:
    """P[i, j] = c_i^j, j <= K, by repeated doubling (each a product of <= 2 log2 K factors)."""
    P = np.empty((c.size, K + 1))
    P[:, 0] = 1.0
    if K >= 1:
        P[:, 1] = c
    n = 2
    while n <= K:
        m = min(n, K + 1 - n)
        np.multiply(P[:, :m], (P[:, n - 1] * c)[:, None], out=P[:, n:n + m])
        n += m
    return P


def _rowdot(T: np.ndarray, C: np.ndarray) -> np.ndarray:
    """T @ C accumulated term by term in a fixed order, so that a row's result never depends on
    the other rows (BLAS and einsum may block or vectorise by the shape: ~1e-16 differences)."""
    out = T[:, :1] * C[0]
    for m in range(1, C.shape[0]):
        out += T[:, m:m + 1] * C[m]
    return out


def mehler_array(act, q, c, slope: bool = False):
    """Mehler's series for arrays of (q, c) (broadcast): (rho, dS, ok) with
    rho = sum_k b_k c^k / sum_k b_k = E[phi(u1) phi(u2)] / E[phi^2] and, if ``slope``,
    dS = sum_k k b_k c^(k-1) = q E[phi'(u1) phi'(u2)] (Price's theorem, d/dc of
    E[phi(u1) phi(u2)] = sum_k b_k c^k), u ~ N(0, q [[1, c], [c, 1]]) (Mehler 1866; O'Donnell 2014,
    Prop. 11.31); b_k(q) read from the table of :func:`mehler_sq` (the terms kept by
    :func:`mehler_series`). nan where not ``ok``: no series for ``act``, q outside the table,
    panel rejected. rho is not clipped; rho = 1 exactly at c = 1 is left to the caller.

    Powers c^j by repeated doubling (relative error ~log2(K) eps) and sums over the terms: the
    error is a few eps of sum_k b_k |c|^k <= E[phi^2]; points are done panel by panel, in blocks
    of at most 2^21 numbers."""
    q, c = np.broadcast_arrays(np.asarray(q, float), np.asarray(c, float))
    shape = q.shape
    q, c = q.ravel(), c.ravel()
    rho, ds = np.full(q.size, np.nan), np.full(q.size, np.nan)
    ok = np.zeros(q.size, bool)
    if not _has_series(act):
        return rho.reshape(shape), ds.reshape(shape), ok.reshape(shape)
    tab = tables_of(act).meh
    if tab is False:
        return rho.reshape(shape), ds.reshape(shape), ok.reshape(shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (np.log(q) - LQ_LO) * _INV_W
    inside = (s >= 0.0) & (s <= _N_PANELS)
    k = np.minimum(np.where(inside, s, 0.0).astype(int), _N_PANELS - 1)
    idx = np.flatnonzero(inside)
    order = idx[np.argsort(k[idx], kind="stable")]
    kk = k[order]
    starts = np.flatnonzero(np.r_[True, kk[1:] != kk[:-1]]) if kk.size else np.array([], int)
    for a, b in zip(starts, np.r_[starts[1:], kk.size]):
        j = int(kk[a])
        data = tab.rho_data[j]
        if data is None:
            coef = tab.panel(j)
            if coef is None:
                continue
            data = _rho_panel(coef, j, tab)
        exps, cs, den, _ = data
        e = exps.astype(int)
        K = int(e[-1])
        rows_all = order[a:b]
        step = max(1, _VEC_BLOCK // (K + 1 + exps.size))
        for r0 in range(0, rows_all.size, step):
            rows = rows_all[r0:r0 + step]
            x = np.clip(2.0 * (s[rows] - j) - 1.0, -1.0, 1.0)
            T = np.cos(np.arccos(x)[:, None] * _KS)          # T_m(x), m = 0..deg
            # row by row in a fixed order: a point's value never depends on the others
            w = _rowdot(T, cs)                               # b_k of the kept k, per point
            P = _powers_upto(c[rows], K)
            rho[rows] = (w * P[:, e]).sum(axis=1) / _rowdot(T, den[:, None])[:, 0]
            if slope:
                ds[rows] = (w * exps * P[:, np.maximum(e - 1, 0)]).sum(axis=1)
            ok[rows] = True
    return rho.reshape(shape), ds.reshape(shape), ok.reshape(shape)


def rho_2d_array(act, q, c, rho: Callable):
    """:func:`rho_2d` for arrays of (q, c) (broadcast): (rho, ok), nan where not ``ok``. The same
    panels (built from the direct rule ``rho`` and certified to 5e-14 of it); the theta
    coefficients of every point by one matrix product per panel and Clenshaw's recurrence in
    theta vectorised over the points."""
    q, c = np.broadcast_arrays(np.asarray(q, float), np.asarray(c, float))
    shape = q.shape
    q, c = q.ravel(), c.ravel()
    out, ok = np.full(q.size, np.nan), np.zeros(q.size, bool)
    if getattr(act, "smooth", None) is None:
        return out.reshape(shape), ok.reshape(shape)
    t = tables_of(act)
    tab = t._rho2
    if tab is None:
        tab = t._rho2 = _RhoTable(act, rho)
    with np.errstate(divide="ignore"):
        lq = np.log(q)
    small = lq <= 2.0 * math.log(_S_MAX_RHO)
    mid = ~small & (lq >= LQ_LO) & (lq <= LQ_HI)
    with np.errstate(invalid="ignore"):
        pan = np.minimum(np.where(mid, (lq - LQ_LO) * _INV_W, 0.0).astype(int), _N_PANELS - 1)
    key = np.where(small, -1, np.where(mid, pan, -2))
    for kv in np.unique(key):
        if kv == -2:
            continue
        kpan = "small" if kv == -1 else int(kv)
        panel = tab.panels.get(kpan)
        if panel is None:
            panel = tab.panels[kpan] = tab._build(kpan)
        if panel is False:
            continue
        B = panel[1]
        rows_all = np.flatnonzero(key == kv)
        for r0 in range(0, rows_all.size, 1 << 14):
            rows = rows_all[r0:r0 + (1 << 14)]
            if kpan == "small":
                x = 2.0 * np.exp(0.5 * lq[rows]) / _S_MAX_RHO - 1.0
            else:
                x = 2.0 * ((lq[rows] - LQ_LO) * _INV_W - kpan) - 1.0
            Tu = np.cos(np.arange(B.shape[0]) * np.arccos(np.clip(x, -1.0, 1.0))[:, None])
            coef = _rowdot(Tu, B)                           # theta coefficients, per point
            xt = 2.0 * np.arccos(c[rows]) / math.pi - 1.0
            x2 = 2.0 * xt
            b1 = np.zeros(rows.size)
            b2 = np.zeros(rows.size)
            for m in range(coef.shape[1] - 1, 0, -1):       # Clenshaw, as theta_at
                b1, b2 = coef[:, m] + x2 * b1 - b2, b1
            out[rows] = coef[:, 0] + xt * b1 - b2
            ok[rows] = True
    return out.reshape(shape), ok.reshape(shape)
