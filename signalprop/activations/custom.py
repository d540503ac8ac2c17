"""Custom activations from sympy expressions in x: derivatives branch by branch, kinks and jumps
(:mod:`.kinks`), structural oddness, and the wall-clock budget (``BUILD_SECONDS``) within which an
expression is accepted or refused.

Custom activations may have kinks and singular derivatives, e.g. the alpha-ReLU
``"Max(x, 0)**0.7"`` (Yang & Schoenholz 2017), whose phi'(x)^2 = 0.49 x^-0.6 is integrable but
unbounded at 0. Their expectations use the engine's checked rule
(:class:`signalprop.gaussian.Kinks`): graded towards the kinks, the innermost piece
extrapolated, and a ValueError naming the activation and the x wherever an integrand is not
finite or not integrable, never a nan.

sympy and :mod:`signalprop.expr` are imported on first use: only an expression needs them.
"""

from __future__ import annotations

import math
import signal
import threading
from contextlib import contextmanager
from functools import cache

import numpy as np

from .. import gaussian
from .._lazy import lazy_module
from .._validate import short_repr
from .core import Activation
from .kinks import _check_kinks, _expr_jumps, _expr_kinks, _piecewise_form

sp = lazy_module("sympy")
_ex = lazy_module("signalprop.expr")       # its symbol x (_ex.X) and FUNCTIONS

class _Jumping(Activation):
    """A custom expression whose phi jumps (``jumps``), e.g. ``Heaviside(x)``: phi' has a Dirac
    delta there, and the expectations of phi' raise ValueError. ``moments`` is its own method so
    that :mod:`signalprop.tables` asks it (and gets the error) rather than integrating the
    pointwise phi'^2 itself."""

    def moments(self, q):
        return Activation.moments(self, q)


_EXPAND_BUDGET = 20_000   # most terms sympy's expand may produce in the structural oddness test


def _expanded_size(e) -> tuple[int, int]:
    """(terms, work): the number of terms of ``sp.expand(e)`` at the top level (an upper bound:
    like terms are not merged) and the total over e and every function argument inside it
    (``expand`` is deep). (a + b + c)**n has C(n + 2, 2) terms, a product multiplies."""
    if e.is_Add:
        parts = [_expanded_size(a) for a in e.args]
        return sum(t for t, _ in parts), sum(w for _, w in parts)
    if e.is_Mul:
        parts = [_expanded_size(a) for a in e.args]
        return math.prod(t for t, _ in parts), sum(w for _, w in parts)
    if e.is_Pow:
        t, w = _expanded_size(e.base)
        n = e.exp
        if n.is_Integer and n > 0 and t > 1:
            t = math.comb(int(n) + t - 1, t - 1)   # the multinomial expansion of (sum)**n
        return t, w + _expanded_size(e.exp)[1]
    work = 0
    for a in e.args:
        if isinstance(a, sp.Expr):
            t, w = _expanded_size(a)
            work += t + w
    return 1, work


def _is_odd(expr) -> bool:
    """phi(-x) = -phi(x) structurally: phi(-x) + phi(x) is 0 as sympy writes it, or after
    ``sp.expand`` where the expansion stays within _EXPAND_BUDGET terms (beyond, a few big
    polynomial powers of sums, the test is skipped: the mean is then integrated, not set to 0)."""
    s = expr.subs(_ex.X, -_ex.X) + expr
    if s == 0:
        return True
    t, w = _expanded_size(s)
    return t + w <= _EXPAND_BUDGET and sp.expand(s) == 0


#: wall-clock budget for turning an accepted expression into an activation (kinks, derivatives,
#: oddness): a string is accepted or refused within about a second (issue 10). Typical
#: expressions take 5-110 ms; the budget refuses the rare ones whose kink equations or piecewise
#: folding make sympy work for seconds.
BUILD_SECONDS = 1.0


class _OutOfTime(BaseException):
    """The build budget ran out (a BaseException: sympy code catches Exception)."""


@contextmanager
def _deadline(seconds: float, label: str):
    """ValueError naming ``label`` if the block runs longer than ``seconds`` (wall clock). Uses
    SIGALRM (POSIX, main thread, and only when no other interval timer is running); elsewhere the
    block runs unbounded."""
    usable = (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
              and signal.getitimer(signal.ITIMER_REAL)[0] == 0.0)
    if not usable:
        yield
        return

    def ring(signum, frame):
        raise _OutOfTime

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _OutOfTime:
        raise ValueError(f"{label}: too complex to analyse within {seconds:g} s (its kinks or "
                         "piecewise parts make sympy work for longer); write a simpler expression "
                         "or pass phi as a callable with dphi, d2phi and kinks") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)


def _from_expr(expr: sp.Expr, name: str = "custom", kinks=None) -> Activation:
    """A sympy expression in x: derivatives by sympy, branch by branch where the expression has
    Max, Min, Abs, sign, Heaviside or Piecewise (``_piecewise_form``); kinks found automatically
    (``_expr_kinks``) plus any declared in ``kinks``; jumps of phi found (``_expr_jumps``).
    ``expr`` has passed :func:`signalprop.expr.check_expression` (whitelisted nodes, bounded
    numbers and exponents); a failure of sympy on it is a ValueError naming it."""
    # a user's sp.Symbol("x") carries no assumptions and so is not _ex.X: identify them by name
    expr = expr.subs({s: _ex.X for s in expr.free_symbols if s.name == "x" and s != _ex.X})
    free = expr.free_symbols
    if not free <= {_ex.X}:
        extra = ", ".join(sorted(str(s) for s in free - {_ex.X}))
        raise ValueError(f"activation expression must depend on x only; it also uses {extra}")
    label = f"activation({short_repr(str(expr))})"
    try:
        with _deadline(BUILD_SECONDS, label):
            return _build_from_expr(expr, name, kinks, label)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - sympy's own failures (printing, folding, ...)
        msg = " ".join(str(exc).split())[:200]
        raise ValueError(f"{label}: sympy cannot turn it into numerical phi, phi', phi'' "
                         f"({type(exc).__name__}: {msg})") from None


_MAX_D1_NODES = 1000     # phi' and phi'' of a custom expression: larger ones take seconds to
_MAX_D2_NODES = 5000     # build (40 nested tanh: d2 has 46501 nodes; 20 sin factors: 15663)


def _sized(e, what: str, limit: int, label: str):
    """``e`` if its tree has at most ``limit`` nodes, else ValueError: the work on phi, phi',
    phi'' (kinks, lambdify, oddness) grows with their size, and a short string can make phi''
    huge (the chain and product rules)."""
    n = 0
    for _ in sp.preorder_traversal(e):
        n += 1
        if n > limit:
            raise ValueError(f"{label}: too large to differentiate: {what} has more than "
                             f"{limit} nodes (nested or multiplied functions; write a simpler "
                             "expression or pass phi as a callable with dphi and d2phi)")
    return e


def _diff_branches(pw) -> sp.Expr:
    """d/dx of a folded Piecewise branch by branch, with its conditions kept as they are: what
    ``sp.diff(pw, x)`` gives, without sympy's re-simplification of the conditions (which costs
    seconds to minutes for a few Heaviside or Max terms)."""
    if not isinstance(pw, sp.Piecewise):
        return sp.diff(pw, _ex.X)
    return sp.Piecewise(*((sp.diff(e, _ex.X), c) for e, c in pw.args), evaluate=False)


def _build_from_expr(expr, name, kinks, label) -> Activation:
    pw = _piecewise_form(expr)
    d1 = _sized(_diff_branches(expr if pw is None else pw), "phi'", _MAX_D1_NODES, label)
    d2 = _sized(_diff_branches(d1), "phi''", _MAX_D2_NODES, label)
    exprs = (expr if pw is None else pw, d1, d2)
    # pointwise derivatives: a DiracDelta (left where sympy could not fold) is zero off its point
    exprs = tuple(e.replace(lambda a: isinstance(a, sp.DiracDelta), lambda a: sp.S.Zero)
                  for e in exprs)
    for e in exprs:
        bad = e.atoms(sp.zoo, sp.nan, sp.oo, -sp.oo)
        if bad:
            raise ValueError(f"{label}: phi or a derivative contains {sorted(map(str, bad))[0]}")
    fs = [sp.lambdify(_ex.X, e, modules=["numpy", "scipy"]) for e in exprs]

    def vec(f):
        # quiet: branches are evaluated everywhere and selected (x**-0.3 at x < 0 is fine), and
        # overflow (exp(x**2) at x = 30) gives inf, which the expectations refuse by name
        def g(v):
            with np.errstate(all="ignore"):
                return np.broadcast_to(np.asarray(f(np.asarray(v, float)), float), np.shape(v)) * 1.0
        return g
    found, singular = _expr_kinks(exprs, label)
    declared = _check_kinks(kinks)             # declared kinks: behaviour there unknown
    ks = gaussian.Kinks(found + declared, label, singular=singular + declared)
    jumps = _expr_jumps(pw, ks)
    cls = _Jumping if jumps else Activation
    return cls(name, *(vec(f) for f in fs), expr=expr, tau=None, odd=_is_odd(expr), kinks=ks,
               jumps=jumps)


@cache
def _one_argument() -> frozenset:
    """The sympy functions of one argument accepted as f(x) (``sympy.tanh``, ``sympy.sqrt``)."""
    return frozenset(f.sympy for f in _ex.FUNCTIONS.values() if f.min_args == f.max_args == 1)


def __getattr__(name: str):
    if name == "_ONE_ARGUMENT":             # the constant of before sympy was imported lazily
        return _one_argument()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _from_sympy_function(spec) -> sp.Expr:
    """A sympy function class (``sympy.tanh``) or one-variable ``sympy.Lambda`` as f(x)."""
    if isinstance(spec, sp.Lambda):
        if len(spec.variables) != 1:
            raise TypeError(f"activation: a sympy Lambda must take one variable, {spec} takes "
                            f"{len(spec.variables)}")
        return spec(_ex.X)
    if spec in _one_argument():       # sympy.tanh, and the functions sympy.sqrt, sympy.cbrt
        return spec(_ex.X)
    known = ", ".join(sorted({getattr(f, "__name__", str(f)) for f in _one_argument()}))
    raise TypeError(f"activation: the sympy function {getattr(spec, '__name__', spec)} is not "
                    f"one of the one-argument functions accepted as f(x) ({known}); pass an "
                    "expression in x instead, e.g. sympy.Max(x, 0)")
