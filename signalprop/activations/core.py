"""The :class:`Activation` value: an elementwise nonlinearity with its Gaussian expectations.

``phi``, ``dphi`` (phi'), ``d2phi`` (phi''), its sympy expression, its kinks and jumps, and the
expectations mean-field theory needs (``second_moment``, ``cross_moment``, ...) computed by
:mod:`signalprop.gaussian` (subclasses in :mod:`.builtins` override them with closed forms).
Value semantics: compared, hashed and pickled by ``key`` (set by :func:`signalprop.activation`),
rebuilt on unpickling by the ``rebuild`` function of the module that made it.

This module does not import sympy: a built-in's ``expr`` is a :class:`Deferred` recipe, built (and
sympy imported) on the first read of ``act.expr``, so that the numerical work (``predict``,
``simulate``, a sweep's worker process) never pays sympy's import (issue 15).
"""

from __future__ import annotations

import pickle
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from .. import gaussian

if TYPE_CHECKING:  # annotations only: sympy is imported where an expression is built
    import sympy as sp

Array = np.ndarray


class Deferred:
    """A recipe for a value built on first use: ``build()`` is called once, by
    :class:`_DeferredField`, when the field is first read (a built-in's sympy expression)."""

    __slots__ = ("build",)

    def __init__(self, build: Callable[[], object]):
        self.build = build

    def __repr__(self) -> str:
        return "<deferred>"


class _DeferredField:
    """Data descriptor behind a dataclass field (``Activation.expr``) that may be given a
    :class:`Deferred`: the recipe is stored as given and replaced by its value on the first read
    (so a reader always sees the value, never the recipe). The dataclass's default is None; a
    frozen dataclass still refuses assignment after ``__init__``."""

    def __set_name__(self, owner, name: str) -> None:
        self._slot = f"_{name}_value"

    def __get__(self, obj, owner=None):
        if obj is None:
            return None                            # the field's default, for the dataclass
        value = obj.__dict__.get(self._slot)
        if isinstance(value, Deferred):
            value = value.build()
            obj.__dict__[self._slot] = value       # once: later reads are a dict look-up
        return value

    def __set__(self, obj, value) -> None:         # the dataclass __init__ (object.__setattr__)
        obj.__dict__[self._slot] = value


@dataclass(frozen=True, eq=False)
class Activation:
    """An elementwise nonlinearity ``phi`` with what mean-field theory needs of it.

    Attributes
    ----------
    name: registry name (or ``"custom"``); params: its parameters; expr: sympy expression in ``x``
        (may be given as a :class:`Deferred` recipe, built on its first read: the built-ins).
    phi, dphi, d2phi: vectorised numpy callables for phi, phi', phi''.
    kinks: points where phi, phi' or phi'' is not analytic (quadrature panels are split there).
        Built-ins: a plain tuple (phi is analytic up to each kink from either side). Custom
        activations: a :class:`signalprop.gaussian.Kinks`, found from the expression or declared
        with ``activation(f, kinks=...)``, whose ``singular`` ones (zeros of the base of x**0.7,
        declared kinks) the engine refines towards geometrically and extrapolates at, so
        integrable singularities such as phi' ~ x^(alpha - 1) are integrated accurately; it
        raises ValueError for a non-finite or non-integrable integrand.
    jumps: points where phi itself jumps (custom expressions such as ``Heaviside(x)``): phi' has
        a Dirac delta there, and the expectations of phi' raise ValueError instead of ignoring it.
    tau: half-width of the strip around the real axis where phi is analytic (``inf`` for
        entire functions of moderate growth, ``None`` when unknown); it decides between
        Gauss-Hermite and graded Gauss-Legendre quadrature (:mod:`signalprop.gaussian`).
    smooth: ``smooth(m, s, k)`` = E[phi^(k)(m + s Z)] in closed form, k = 0, 1 (kinked activations):
        turns the bivariate expectation into a one-dimensional integral split at the kinks.
    odd: phi(-x) = -phi(x), so E[phi(sqrt(q) z)] = 0 exactly (tanh, erf, hard_tanh, linear, and
        custom expressions that are odd term by term).
    """

    name: str
    phi: Callable[[Array], Array]
    dphi: Callable[[Array], Array]
    d2phi: Callable[[Array], Array]
    expr: Optional[sp.Expr] = _DeferredField()   # type: ignore[assignment]  # None by default
    params: dict = field(default_factory=dict)
    kinks: tuple = ()
    tau: Optional[float] = None
    smooth: Optional[Callable] = None
    odd: bool = False
    jumps: tuple = ()

    #: what the activation is compared, hashed and pickled by: ("builtin", name, params),
    #: ("expr", sympy expression, declared kinks) or ("callable", fn, dphi, d2phi, kinks); set by
    #: :func:`activation`. An Activation built by hand without one compares by identity.
    key: tuple = field(default=(), repr=False)
    #: ``rebuild(key)`` gives the activation back (what pickle calls): set with ``key`` by the
    #: module that built it (:mod:`.builtins` for the built-ins, :func:`signalprop.activation`
    #: for custom ones), so that this module needs none of them.
    rebuild: Optional[Callable[[tuple], "Activation"]] = field(default=None, repr=False)

    def __repr__(self) -> str:
        if self.key and self.key[0] == "expr":
            return f"activation({str(self.expr)!r})"
        p = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"activation({self.name!r}{', ' + p if p else ''})"

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        if not isinstance(other, Activation) or not self.key:
            return NotImplemented if not isinstance(other, Activation) else False
        return self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key) if self.key else id(self)

    def __reduce__(self):
        """Pickles as the recipe :func:`activation` rebuilds it from (built-ins by name and
        parameters, expressions by their sympy tree, callables by reference)."""
        if not self.key or self.rebuild is None:
            raise TypeError(f"{self!r} was not built by signalprop.activation(): it cannot be "
                            "pickled")
        if self.key[0] == "callable":
            for f in self.key[1:4]:
                if f is None:
                    continue
                try:
                    pickle.dumps(f)
                except Exception:
                    raise TypeError(
                        f"activation({getattr(f, '__qualname__', f)!s}) cannot be pickled: its "
                        "callable does not pickle (define it at module level, or use a built-in "
                        "name or an expression string)") from None
        return (self.rebuild, (self.key,))

    @property
    def _custom(self) -> bool:
        """A custom activation (expression or callable): its kinks are a gaussian.Kinks."""
        return isinstance(self.kinks, gaussian.Kinks)

    # -- one-dimensional expectations, z ~ N(0, 1) -----------------------------------------
    def _e1(self, f, q, what=None):
        try:
            with _deferred_warnings(self._custom):
                return gaussian.expect(f, q, kinks=self.kinks, tau=self.tau)
        except gaussian.IntegrandError as e:
            if what is None:
                raise
            w = what[e.index] if isinstance(what, tuple) else what
            raise ValueError(f"{w}: {e}") from None

    def _no_jumps(self, what, at_zero_ok=False):
        """ValueError if phi jumps (at x != 0 when ``at_zero_ok``): phi' then has a Dirac delta."""
        for k, left, right in self.jumps:
            if not (at_zero_ok and k == 0.0):
                raise ValueError(
                    f"{what}: {getattr(self.kinks, 'label', repr(self))} jumps at x = {k!r} (from "
                    f"{left!r} to {right!r}), so phi' has a Dirac delta there and this "
                    "expectation is infinite (chi_1 = inf: the correlation map has infinite "
                    "slope at c = 1). For the pointwise derivative that backpropagation uses, "
                    "which ignores the jump, pass phi as a callable with dphi=...")

    def mean(self, q) -> Array:
        """E[phi(sqrt(q) z)] (0 for an odd phi)."""
        if self.odd:
            return np.zeros(np.shape(q))
        return self._e1(self.phi, q, "E[phi(sqrt(q) z)]")

    def second_moment(self, q) -> Array:
        """E[phi(sqrt(q) z)^2]: the length map's integral (Poole et al. 2016, eq. 3)."""
        return self._e1(lambda x: self.phi(x) ** 2, q, "E[phi(sqrt(q) z)^2]")

    def dphi_second_moment(self, q) -> Array:
        """E[phi'(sqrt(q) z)^2]: chi_1 / sigma_w^2 (Poole et al. 2016, eq. 7)."""
        self._no_jumps("E[phi'(sqrt(q) z)^2]")
        return self._e1(lambda x: self.dphi(x) ** 2, q, "E[phi'(sqrt(q) z)^2]")

    def dphi_fourth_moment(self, q) -> Array:
        """E[phi'(sqrt(q) z)^4] (the second moment of D^2 in Pennington et al. 2017)."""
        self._no_jumps("E[phi'(sqrt(q) z)^4]")
        return self._e1(lambda x: self.dphi(x) ** 4, q, "E[phi'(sqrt(q) z)^4]")

    def moments(self, q) -> tuple[Array, Array]:
        """(E[phi(sqrt(q) z)^2], E[phi'(sqrt(q) z)^2]) in one pass over the quadrature nodes."""
        if type(self).second_moment is not Activation.second_moment:
            return self.second_moment(q), self.dphi_second_moment(q)
        self._no_jumps("moments: E[phi'(sqrt(q) z)^2]")
        return self._e1((lambda x: self.phi(x) ** 2, lambda x: self.dphi(x) ** 2), q,
                        ("moments: E[phi(sqrt(q) z)^2]", "moments: E[phi'(sqrt(q) z)^2]"))

    def second_moment_slope(self, q) -> Array:
        """d/dq E[phi(sqrt(q) z)^2] = E[phi'^2 + phi phi''] (Stein's lemma).

        Computed as E[x phi(x) phi'(x)] / q with x = sqrt(q) z, which needs no phi'' and so holds
        for kinked activations as well (Schoenholz et al. 2017, the xi_q integral). A jump of phi
        at x = 0 adds nothing (x = 0 there); one elsewhere would, and raises ValueError.
        """
        self._no_jumps("d/dq E[phi(sqrt(q) z)^2]", at_zero_ok=True)
        q = np.asarray(q, float)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = self._e1(lambda x: x * self.phi(x) * self.dphi(x), q,
                           "E[x phi(x) phi'(x)], x = sqrt(q) z") / q
        if np.any(q == 0):  # the limit q -> 0+: E[phi'^2 + phi phi''] at x = 0, one-sided at a kink
            t = np.array([-np.finfo(float).tiny, np.finfo(float).tiny])
            lim = np.mean(self.dphi(t) ** 2 + self.phi(np.zeros(2)) * self.d2phi(t))
            out = np.where(q == 0, lim, out)
        return out

    def mehler_coefficients(self, q: float) -> Optional[Array]:
        """a_k with E[phi(u1) phi(u2)] = sum_k a_k^2 c^k for u ~ N(0, q [[1, c], [c, 1]]) (Mehler's
        formula), or None where the series is not the right tool (kinks, unknown analyticity,
        closed forms, or q so large that it would need more than 640 terms)."""
        if (self.tau is None or self.kinks or self.smooth is not None
                or type(self).cross_moment is not Activation.cross_moment):
            return None
        return gaussian.mehler_coefficients(self.phi, float(q), self.tau)

    # -- bivariate expectations ------------------------------------------------------------
    def cross_moment(self, q1, q2, c) -> Array:
        """E[phi(u1) phi(u2)], (u1, u2) ~ N(0, [[q1, r], [r, q2]]), r = c sqrt(q1 q2)."""
        return self._e2(self.phi, 0, q1, q2, c)

    def dphi_cross_moment(self, q1, q2, c) -> Array:
        """E[phi'(u1) phi'(u2)]: chi_c / sigma_w^2 (Schoenholz et al. 2017, eq. 9)."""
        self._no_jumps("E[phi'(u1) phi'(u2)]")
        return self._e2(self.dphi, 1, q1, q2, c)

    def _e2(self, f, k, q1, q2, c):
        if self.smooth is not None:
            return gaussian.expect2_smoothed(f, lambda m, s: self.smooth(m, s, k), q1, q2, c,
                                             kinks=self.kinks)
        what = "E[phi(u1) phi(u2)]" if k == 0 else "E[phi'(u1) phi'(u2)]"
        try:
            with _deferred_warnings(self._custom):
                out = gaussian.expect2(f, f, q1, q2, c, tau=self.tau, kinks=self.kinks)
        except gaussian.IntegrandError as e:
            raise ValueError(f"{what}: {e}") from None
        if isinstance(self.kinks, gaussian.Kinks):   # a custom activation: never nan silently
            _check_bivariate(out, self.kinks.label, what, q1, q2, c)
        return out


@contextmanager
def _deferred_warnings(active: bool):
    """For a custom activation (``active``): numpy's floating-point warnings silenced (the engine
    checks every value and raises a ValueError naming the activation and the x where one is not
    finite), and the engine's own warnings held back and emitted only when a result is returned:
    where the expectation fails, the error alone is the answer (no RuntimeWarning lines before
    it, e.g. for ``"sin(1/x)"`` or ``"exp(x**2)"``)."""
    if not active:
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(all="ignore"):
            yield
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _check_bivariate(out, label, what, q1, q2, c):
    """ValueError where a bivariate expectation of a custom activation is not finite at valid
    (q1, q2, c) (nan inputs stay nan)."""
    q1, q2, c, o = np.broadcast_arrays(*(np.asarray(v, float) for v in (q1, q2, c, out)))
    ok = np.isfinite(q1) & np.isfinite(q2) & np.isfinite(c) & (q1 >= 0) & (q2 >= 0)
    bad = np.flatnonzero((ok & ~np.isfinite(o)).ravel())
    if bad.size:
        i = bad[0]
        raise ValueError(f"{what} of {label} is {o.ravel()[i]!r} at q1 = {q1.ravel()[i]!r}, "
                         f"q2 = {q2.ravel()[i]!r}, c = {c.ravel()[i]!r}: phi or phi' is not "
                         "finite, or not square-integrable, there")


def _set_key(act: Activation, key: tuple, rebuild: Callable[[tuple], Activation]) -> Activation:
    """``act`` with its value ``key`` and its ``rebuild`` function set, at construction (the
    dataclass is frozen; nothing else is ever set on it afterwards)."""
    object.__setattr__(act, "key", key)
    object.__setattr__(act, "rebuild", rebuild)
    return act
