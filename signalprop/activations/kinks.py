"""Where a custom expression stops being analytic: its kinks, where its pieces may be singular,
and the jumps of phi.

The kinks are found from the Max, Min, Abs, sign, Heaviside and Piecewise parts of the expression
(and the zeros of fractional-power bases and log arguments); the expression is folded into one
Piecewise (``_piecewise_form``) so that its derivatives can be taken branch by branch, and the
jumps of phi between finite one-sided limits are recorded (``_expr_jumps``).

sympy and :mod:`signalprop.expr` are imported on first use (``_check_kinks``, which callables and
built-ins reach, needs neither).
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np

from .._lazy import lazy_module

sp = lazy_module("sympy")
_ex = lazy_module("signalprop.expr")       # its symbol x: _ex.X


def _piecewise_atoms() -> tuple:
    """The sympy classes that ``_piecewise_form`` rewrites as Piecewise."""
    return (sp.Max, sp.Min, sp.Abs, sp.sign, sp.Heaviside)


def __getattr__(name: str):
    if name == "_PIECEWISE_ATOMS":          # the constant of before sympy was imported lazily
        return _piecewise_atoms()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_KINK_RANGE = 100      # kinks of periodic expressions (Abs(sin(x))) are looked for in |x| <= this
_MAX_KINKS = 32        # at most this many kinks, those nearest 0 (each costs ~1200 nodes)


def _piecewise_form(expr):
    """``expr`` as one top-level Piecewise whose branches are free of Max, Min, Abs, sign and
    Heaviside (sympy's ``rewrite(Piecewise)`` on those atoms, then ``piecewise_fold``), or None
    when it has none of them and no Piecewise.

    Why: differentiated as written, Max(x, 0)**0.7 gives 0.7 Heaviside(x) Max(x, 0)**-0.3, which
    is 0 * inf = nan for every x < 0; x Heaviside(x) gives a DiracDelta that numpy cannot
    evaluate. Folded, the function is one analytic expression on each interval between kinks,
    Piecewise((0, x <= 0), (x**0.7, True)); differentiated branch by branch it gives the pointwise
    derivative on each open interval, Piecewise((0, x <= 0), (0.7/x**0.3, True)), with no
    distributional terms. The kinks themselves are a null set for the Gaussian expectations, and
    the jumps of phi, where its distributional derivative does have a delta, are found
    separately (``_expr_jumps``).
    """
    atoms = _piecewise_atoms()
    if not (expr.atoms(*atoms) or expr.atoms(sp.Piecewise)):
        return None
    try:
        flat = expr.replace(lambda e: isinstance(e, atoms),
                            lambda e: e.rewrite(sp.Piecewise))
        return sp.piecewise_fold(flat)
    except Exception:  # noqa: BLE001 - sympy failed to fold: keep the expression as written
        return None


def _kink_candidates(exprs) -> tuple[set, set]:
    """Expressions g(x) whose real zeros are where the activation may stop being analytic, in two
    sets: switch points between pieces (Piecewise conditions, arguments of Abs, sign and
    Heaviside, differences of Max and Min arguments), and points where a piece itself may be
    singular (bases of powers that are not non-negative integers, x**0.7 or 1/x, and arguments
    of log)."""
    switch, singular = set(), set()
    for e in exprs:
        for pw in e.atoms(sp.Piecewise):
            for _, cond in pw.args:
                for rel in (cond.atoms(sp.core.relational.Relational)
                            if isinstance(cond, sp.Basic) else ()):
                    switch.add(rel.lhs - rel.rhs)
        for a in e.atoms(sp.Abs, sp.sign, sp.Heaviside):
            switch.add(a.args[0])
        for a in e.atoms(sp.Max, sp.Min):
            switch.update(u - v for i, u in enumerate(a.args) for v in a.args[i + 1:])
        for a in e.atoms(sp.Pow):
            if a.base.has(_ex.X) and not a.exp.has(_ex.X) and not (a.exp.is_integer and
                                                           a.exp.is_nonnegative):
                singular.add(a.base)
        for a in e.atoms(sp.log):
            singular.add(a.args[0])

    def keep(gs):
        return {g for g in gs if isinstance(g, sp.Expr) and g.has(_ex.X)}
    return keep(switch), keep(singular)


def _symbolic_zeros_ok(g) -> bool:
    """Whether solveset may be asked for the zeros of g: a small expression with at most one
    transcendental part (sin(x) - 1/2, log(x), x**0.7) and polynomial powers of degree <= 8.
    Beyond, solveset can run for seconds to minutes (sin(x) - cos(x), x**64 - x**63 + 5) and
    the numerical search is used."""
    if sp.count_ops(g) > 40:
        return False
    if any(p.exp.is_Integer and abs(p.exp) > 8 and p.base.has(_ex.X) for p in g.atoms(sp.Pow)):
        return False
    parts = [f for f in g.atoms(sp.Function) if f.has(_ex.X)]
    parts += [p for p in g.atoms(sp.Pow) if p.exp.has(_ex.X)]
    return len(parts) <= 1


def _periodic_radius(sol) -> Optional[float]:
    """For a solution set that is a union of finite sets and arithmetic progressions
    {a n + b : n integer} (sin(x) = 0: {2 n pi} and {2 n pi + pi}), the radius r <= _KINK_RANGE
    of a box |x| <= r that holds at least _MAX_KINKS of its points (one progression alone
    does, so the box stays small: sin(1000 x) has 63662 zeros in |x| <= 100); None for any
    other set (sin(exp(x)) = 0: x = log(n pi)), which is then searched numerically."""
    r = float(_KINK_RANGE)
    for part in (sol.args if isinstance(sol, sp.Union) else (sol,)):
        if isinstance(part, sp.FiniteSet):
            continue
        if not (isinstance(part, sp.ImageSet) and len(part.lamda.variables) == 1
                and part.base_sets == (sp.S.Integers,)):
            return None
        n, e = part.lamda.variables[0], part.lamda.expr
        a, b = sp.diff(e, n), e.subs(n, 0)
        if not (a.is_number and b.is_number) or a == 0:
            return None
        r = min(r, abs(float(b)) + (_MAX_KINKS // 2 + 1) * abs(float(a)))
    return r


def _symbolic_zeros(g) -> Optional[list]:
    """The real zeros of g by sympy's solveset (a periodic solution set restricted to the box of
    ``_periodic_radius``), or None where sympy gives no usable answer (then ``_real_zeros``
    searches numerically)."""
    if not _symbolic_zeros_ok(g):
        return None
    try:
        sol = sp.solveset(g, _ex.X, domain=sp.S.Reals)
        if not isinstance(sol, sp.FiniteSet) and not sol.is_empty:
            r = _periodic_radius(sol)
            if r is None:                      # not a union of arithmetic progressions
                return None
            sol = sp.solveset(g, _ex.X, domain=sp.Interval(-r, r))
        if isinstance(sol, sp.FiniteSet):
            pts = []
            for v in sol:       # real by construction; evaluation may leave a 1e-20 i residue
                c = complex(sp.N(v, 20))
                if v.is_real is not False and abs(c.imag) <= 1e-12 * (1.0 + abs(c.real)) \
                        and math.isfinite(c.real):
                    pts.append(c.real)
            return pts
        if sol.is_empty or isinstance(sol, sp.Interval):  # no zero / g = 0 on a whole interval
            return []
    except Exception:  # noqa: BLE001 - solveset raises NotImplementedError and others
        return None
    return None


def _real_zeros(g) -> list:
    """The finite real zeros of g(x) (those of a periodic or numerically searched g within
    |x| <= _KINK_RANGE; where there are many, at least the _MAX_KINKS nearest 0, the ones
    ``_expr_kinks`` keeps). By sympy's solveset over the reals where ``_symbolic_zeros_ok``
    (a periodic solution set within the box of ``_periodic_radius``), else numerically: sign
    changes of g on a grid refined by brentq."""
    pts = _symbolic_zeros(g)
    if pts is not None:
        return pts
    try:  # numerically: sign changes on a grid, refined by brentq
        fg = sp.lambdify(_ex.X, g, modules=["numpy", "scipy"])
        t = np.linspace(-_KINK_RANGE, _KINK_RANGE, 200_001)
        with np.errstate(all="ignore"):
            v = np.broadcast_to(np.asarray(fg(t), float), t.shape)
        pts = list(t[v == 0])
        i = np.flatnonzero(np.isfinite(v[:-1]) & np.isfinite(v[1:]) & (v[:-1] * v[1:] < 0))
        i = i[np.argsort(np.abs(t[i]), kind="stable")[:_MAX_KINKS]]
        from scipy.optimize import brentq
        for j in i:
            with np.errstate(all="ignore"):
                pts.append(brentq(lambda u: float(fg(u)), t[j], t[j + 1], xtol=1e-15, rtol=1e-15))
        return pts
    except Exception:  # noqa: BLE001 - not evaluable: no kinks found from g
        return []


def _expr_kinks(exprs, label) -> tuple[tuple, tuple]:
    """(kinks, singular): the sorted distinct real kinks of the expressions
    (``_kink_candidates``), at most _MAX_KINKS (those nearest 0; a warning names the rest), and
    those among them where a piece may be singular (the others join analytic pieces, and the
    engine only splits its panels there, as for the built-ins)."""
    switch, singular = _kink_candidates(exprs)
    zeros = {}
    for g in switch | singular:
        for k in _real_zeros(g):
            k = float(k) + 0.0
            zeros[k] = zeros.get(k, False) or g in singular
    pts = sorted(zeros, key=lambda k: (abs(k), k))
    if len(pts) > _MAX_KINKS:
        warnings.warn(f"{label}: {len(pts)} kinks found; only the {_MAX_KINKS} nearest 0 (|x| <= "
                      f"{abs(pts[_MAX_KINKS - 1]):.4g}) are used by the quadrature",
                      RuntimeWarning, stacklevel=4)
        pts = pts[:_MAX_KINKS]
    return tuple(sorted(pts)), tuple(sorted(k for k in pts if zeros[k]))


def _branch_at(pw, x0):
    """The expression of the first branch of Piecewise ``pw`` whose condition holds at x0, or
    None if a condition cannot be decided there."""
    for e, cond in pw.args:
        c = cond.subs(_ex.X, x0) if isinstance(cond, sp.Basic) else cond
        if c is sp.true or c is True:
            return e
        if not (c is sp.false or c is False):
            return None
    return None


def _one_sided(e, k, direction):
    """lim e(x) as x -> k from ``direction`` ('+', '-') as a float (inf/nan where unbounded or
    undecided)."""
    try:
        v = complex(sp.N(e.subs(_ex.X, k), 20))
        if not (v.imag == 0 and math.isfinite(v.real)):
            v = complex(sp.N(sp.limit(e, _ex.X, k, direction), 20))
        return v.real if v.imag == 0 else math.nan
    except Exception:  # noqa: BLE001
        return math.nan


def _expr_jumps(pw, kinks) -> tuple:
    """(k, phi(k-), phi(k+)) for every kink k where the folded Piecewise ``pw`` jumps by more than
    1e-12 (1 + |phi|) between finite one-sided limits (a branch with an infinite limit is a
    singularity, left to the quadrature's integrability check)."""
    if not isinstance(pw, sp.Piecewise):
        return ()
    out = []
    ks = list(kinks)
    for i, k in enumerate(ks):
        lo = ks[i - 1] if i > 0 else k - 2.0
        hi = ks[i + 1] if i + 1 < len(ks) else k + 2.0
        el = _branch_at(pw, sp.Float((k + lo) / 2, 30))
        er = _branch_at(pw, sp.Float((k + hi) / 2, 30))
        if el is None or er is None:
            continue
        kk = sp.nsimplify(k) if k == int(k) else sp.Float(k, 30)
        left, right = _one_sided(el, kk, "-"), _one_sided(er, kk, "+")
        if math.isfinite(left) and math.isfinite(right) and \
                abs(left - right) > 1e-12 * (1.0 + abs(left) + abs(right)):
            out.append((k, left, right))
    return tuple(out)


def _check_kinks(kinks) -> tuple:
    if kinks is None:
        return ()
    if np.ndim(kinks) > 1:
        raise ValueError(f"kinks must be a number or a flat sequence of real numbers, got an "
                         f"array of shape {np.shape(kinks)}")
    try:
        pts = [float(k) for k in np.atleast_1d(np.asarray(kinks, float)).ravel()]
    except (TypeError, ValueError):
        raise ValueError(f"kinks must be a sequence of real numbers, got {kinks!r}") from None
    if not all(math.isfinite(k) for k in pts):
        raise ValueError(f"kinks must be finite real numbers, got {kinks!r}")
    return tuple(pts)
