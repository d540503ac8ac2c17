"""A parser for activation expressions that never evaluates its input.

``parse_expression("x*tanh(x)")`` reads the text with Python's own parser (``ast.parse(text,
mode="eval")``, which builds a syntax tree and runs nothing), accepts only a whitelist of node
kinds and builds the sympy expression from the tree itself, with sympy operators applied to sympy
objects. No string ever reaches ``eval``, ``exec``, ``sympy.sympify`` or ``parse_expr``.

The grammar
-----------
* numbers: integer literals of at most 16 digits, float literals that are finite doubles
  (``1e-3``, ``0.7``; kept with their decimal digits, as ``sympy.Float("0.7")``);
* the variable ``x`` and the constants ``pi`` and ``E`` (Euler's number). ``e`` is refused
  rather than guessed: write ``E`` or ``exp(...)``;
* ``+ - * /`` and ``**`` (``^`` is read as ``**``, as sympy does), unary ``-`` and ``+``;
* calls of the functions in :data:`FUNCTIONS` by their bare name, with positional arguments
  only: ``exp log sqrt cbrt sin cos tan asin acos atan sinh cosh tanh asinh acosh atanh erf
  erfc Abs (abs) sign Heaviside`` (one argument), ``Max (max)`` and ``Min (min)`` (two or
  more), and ``Piecewise((expr, cond), ..., (expr, True))`` whose conditions are comparisons
  with ``< <= > >=`` (chained ones too), ``True``, ``False``, and their combinations with
  ``& | ~`` or ``and or not``. ``cbrt(x)`` is sympy's principal root ``x**(1/3)``, not real for
  x < 0; the real cube root is ``sign(x)*Abs(x)**(1/3)``.

Everything else is refused with a ValueError whose one-line reason names the offending piece:
names other than the above (``__import__``), attribute access, indexing, strings, lambda,
comprehensions, ``if``-expressions, ``:=``, f-strings, keyword arguments, ``==``, ``//``, ``%``,
and functions outside the list (``factorial``, ``gamma``, ``floor``, ``DiracDelta``).

Bounds (so that nothing runs away while the expression is built)
---------------------------------------------------------------
* text: at most :data:`MAX_LENGTH` characters, no control characters other than tab and newline,
  no comments (``#``);
  syntax tree at most :data:`MAX_DEPTH` levels deep;
* every subexpression free of x is also computed in double precision while it is built, and
  must be a finite real double: ``10**10**10`` (overflow), ``2**2**40``, ``1/0``, ``log(0)``,
  ``sqrt(-2)``, ``exp(1000)`` are refused before sympy computes them; exact rationals are
  limited to :data:`MAX_BITS` bits in numerator and denominator;
* a power of an expression in x has a numeric exponent of magnitude at most
  :data:`MAX_EXPONENT` (``x**100`` is refused: expanded, such powers make sympy's algebra
  explode), or a symbolic one (``x**x``);
* at most :data:`MAX_BRANCHES` branches when the piecewise parts are folded into one Piecewise
  (the product over the parts of their branch counts: Max and Min with k arguments 2**(k-1),
  Abs 2, sign and Heaviside 3 (their value at 0 is a branch), Piecewise one per pair): folding,
  which the activation does to differentiate branch by branch, costs time exponential in the
  number of parts (16 terms Abs(x - k) did not finish in 10 minutes, a Max of 16 functions
  neither; 32 branches took up to 2.5 s, 16 up to ~1 s). ``Abs(x-1) + ... + Abs(x-4)`` (16
  branches) is accepted, five such terms are not; ``Min(Max(x, -1), 1)`` has 4.

:func:`check_expression` applies the same whitelist and bounds to a sympy expression built by
the caller (``activation(sympy.DiracDelta(x))`` is refused as ``activation("DiracDelta(x)")``).
"""

from __future__ import annotations

import ast
import math
import unicodedata
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import sympy as sp

__all__ = ["X", "FUNCTIONS", "parse_expression", "check_expression", "MAX_LENGTH", "MAX_DEPTH",
           "MAX_EXPONENT", "MAX_BITS", "MAX_BRANCHES"]

#: the variable of every activation expression.
X = sp.Symbol("x", real=True)
#: longest accepted text (characters).
MAX_LENGTH = 1000
#: deepest accepted syntax tree (levels; a chain a + b + ... of n terms is n deep); a sympy
#: expression may be twice as deep.
MAX_DEPTH = 100
#: largest |p| of a numeric exponent p of a power of an expression in x.
MAX_EXPONENT = 64
#: largest bit length of the numerator or denominator of an exact rational number.
MAX_BITS = 4096
#: most branches of the folded piecewise form (module docstring).
MAX_BRANCHES = 16
#: most nodes of a sympy expression given to :func:`check_expression`.
MAX_NODES = 4000
#: largest integer literal (exclusive): 16 digits.
MAX_INT = 10**16
_QUOTE = 48        # longest quotation of a piece of the text in a message


@dataclass(frozen=True)
class _Function:
    """A whitelisted function: its sympy class, arity range and a double-precision version (for
    the bounds on subexpressions free of x)."""

    sympy: Callable
    min_args: int
    max_args: Optional[int]
    fallback: Callable


def _cbrt(v: float) -> float:
    if v < 0:
        raise ValueError("cbrt of a negative number is not real")
    return v ** (1.0 / 3.0)


def _sign(v: float) -> float:
    return 0.0 if v == 0 else math.copysign(1.0, v)


def _heaviside(v: float) -> float:
    return 0.5 if v == 0 else (1.0 if v > 0 else 0.0)


def _one(f, g):
    return _Function(f, 1, 1, g)


FUNCTIONS: dict[str, _Function] = {
    "exp": _one(sp.exp, math.exp), "log": _one(sp.log, math.log),
    "sqrt": _one(sp.sqrt, math.sqrt), "cbrt": _one(sp.cbrt, _cbrt),
    "sin": _one(sp.sin, math.sin), "cos": _one(sp.cos, math.cos), "tan": _one(sp.tan, math.tan),
    "asin": _one(sp.asin, math.asin), "acos": _one(sp.acos, math.acos),
    "atan": _one(sp.atan, math.atan),
    "sinh": _one(sp.sinh, math.sinh), "cosh": _one(sp.cosh, math.cosh),
    "tanh": _one(sp.tanh, math.tanh), "asinh": _one(sp.asinh, math.asinh),
    "acosh": _one(sp.acosh, math.acosh), "atanh": _one(sp.atanh, math.atanh),
    "erf": _one(sp.erf, math.erf), "erfc": _one(sp.erfc, math.erfc),
    "Abs": _one(sp.Abs, abs), "abs": _one(sp.Abs, abs),
    "sign": _one(sp.sign, _sign), "Heaviside": _one(sp.Heaviside, _heaviside),
    "Max": _Function(sp.Max, 2, None, max), "max": _Function(sp.Max, 2, None, max),
    "Min": _Function(sp.Min, 2, None, min), "min": _Function(sp.Min, 2, None, min),
    "Piecewise": _Function(sp.Piecewise, 1, None, None),
}
_CONSTANTS = {"pi": (sp.pi, math.pi), "E": (sp.E, math.e)}
_PIECE_CLASSES = (sp.Max, sp.Min, sp.Abs, sp.sign, sp.Heaviside, sp.Piecewise)
_BRANCHES = {sp.Abs: 2, sp.sign: 3, sp.Heaviside: 3}    # Max, Min: 2**(k - 1); Piecewise: k


def _branch_count(cls, k: int) -> int:
    """Branches of one piecewise part with k arguments once rewritten as a Piecewise."""
    if cls in (sp.Max, sp.Min):
        return 2 ** min(k - 1, 16)
    return _BRANCHES.get(cls, k)


_TOO_MANY_BRANCHES = (f"more than {MAX_BRANCHES} branches from the piecewise parts (Max, Min: "
                      "2**(k - 1) with k arguments, Abs: 2, sign, Heaviside: 3, Piecewise: one "
                      "per pair; multiplied over the parts)")
_ALLOWED_NAMES = ", ".join(sorted(FUNCTIONS, key=lambda n: (n.lower(), n)))

# what each refused node kind is called in a message
_REFUSED = {
    ast.Attribute: "attribute access is not allowed", ast.Subscript: "indexing is not allowed",
    ast.Lambda: "lambda is not allowed", ast.NamedExpr: "assignment (:=) is not allowed",
    ast.IfExp: "'a if c else b' is not allowed (write Piecewise((a, c), (b, True)))",
    ast.JoinedStr: "f-strings are not allowed", ast.FormattedValue: "f-strings are not allowed",
    ast.List: "lists are not allowed", ast.Set: "sets are not allowed",
    ast.Dict: "dicts are not allowed", ast.Starred: "*args are not allowed",
    ast.Tuple: "tuples are only allowed as the (expression, condition) pairs of Piecewise",
    ast.ListComp: "comprehensions are not allowed", ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.Await: "await is not allowed", ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed", ast.Slice: "slices are not allowed",
    ast.Compare: "comparisons are only allowed in Piecewise conditions",
    ast.BoolOp: "'and'/'or' are only allowed in Piecewise conditions",
}
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**",
           ast.BitXor: "^"}
_OPNAMES = {ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@", ast.LShift: "<<",
            ast.RShift: ">>", ast.BitAnd: "&", ast.BitOr: "|", ast.Invert: "~", ast.Not: "not"}
_RELATIONS = {ast.Lt: sp.Lt, ast.LtE: sp.Le, ast.Gt: sp.Gt, ast.GtE: sp.Ge}


def _quote(piece: str) -> str:
    """repr of a piece of text, cut to _QUOTE characters (one line: newlines are escaped)."""
    return repr(piece) if len(piece) <= _QUOTE else repr(piece[:_QUOTE - 3]) + "..."


def _bits(n: int) -> int:
    return abs(int(n)).bit_length()


# --------------------------------------------------------------------------------------------
# text -> syntax tree


def _syntax_tree(text: str) -> ast.Expression:
    """Checked ``ast.parse(text, mode="eval")``: type, length, characters, syntax, depth."""
    if not isinstance(text, str):
        raise TypeError(f"expression must be a str, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ValueError(f"expression has {len(text)} characters; at most {MAX_LENGTH} are "
                         "allowed")
    for i, ch in enumerate(text):
        if unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn") and ch not in "\t\n\r":
            raise ValueError(f"character {ch!r} at position {i} is not allowed in an expression")
    if "#" in text:      # a comment would silently drop the rest of the line: "x # + 1" is x
        raise ValueError(f"comments ('#', at position {text.index('#')}) are not allowed")
    body = text.strip()
    if not body:
        raise ValueError("the expression is empty")
    try:
        with warnings.catch_warnings():   # a SyntaxWarning ("invalid decimal literal") is a refusal
            warnings.simplefilter("error")
            tree = ast.parse(body, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError, OverflowError) as exc:
        what = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
        where = f" at column {exc.offset}" if getattr(exc, "offset", None) else ""
        raise ValueError(f"not a valid expression: {' '.join(str(what).split())}{where}") \
            from None
    stack = [(tree, 1)]
    while stack:                        # iterative: a deep tree cannot exhaust the C stack here
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"the expression is nested more than {MAX_DEPTH} levels deep")
        stack.extend((c, depth + 1) for c in ast.iter_child_nodes(node))
    return tree


# --------------------------------------------------------------------------------------------
# syntax tree -> sympy, with a double-precision shadow of every subexpression free of x


class _Builder:
    """Walks the checked syntax tree; ``expr(node)`` returns (sympy expression, float or None),
    the float being the value in double precision when the subexpression is free of x."""

    def __init__(self, text: str):
        self.text = text
        self.branches = 1

    def seg(self, node) -> str:
        s = ast.get_source_segment(self.text, node)
        return _quote(s if s is not None else ast.unparse(node))

    def fail(self, node, reason: str):
        raise ValueError(f"{reason}: {self.seg(node)}")

    # -- expressions ----------------------------------------------------------------------
    def expr(self, node):
        if isinstance(node, ast.Expression):
            return self.expr(node.body)
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                e, v = self.expr(node.operand)
                return -e, (None if v is None else -v)
            if isinstance(node.op, ast.UAdd):
                return self.expr(node.operand)
            self.fail(node, f"operator {_OPNAMES[type(node.op)]!r} is only allowed in "
                            "Piecewise conditions")
        if isinstance(node, ast.BinOp):
            return self.binop(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        self.fail(node, _REFUSED.get(type(node), f"{type(node).__name__} is not allowed"))

    def constant(self, node):
        v = node.value
        if isinstance(v, bool) or v is None or v is Ellipsis:
            self.fail(node, f"{v!r} is not allowed here" + (
                " (True and False only as Piecewise conditions)" if isinstance(v, bool) else ""))
        if isinstance(v, int):
            if abs(v) >= MAX_INT:
                raise ValueError(f"integer literal {_quote(str(v))} has more than "
                                 f"{len(str(MAX_INT)) - 1} digits")
            return sp.Integer(v), float(v)
        if isinstance(v, float):
            lit = (ast.get_source_segment(self.text, node) or repr(v)).replace("_", "")
            if not math.isfinite(v):
                self.fail(node, "float literal is not a finite double")
            if v == 0.0 and any(c in "123456789" for c in lit.lower().split("e")[0]):
                self.fail(node, "float literal underflows to 0 in double precision")
            try:
                return sp.Float(lit), v
            except (ValueError, TypeError):     # a literal form Float() does not read
                return sp.Float(v), v
        if isinstance(v, complex):
            self.fail(node, "complex numbers are not allowed")
        self.fail(node, "strings are not allowed")

    def name(self, node):
        n = node.id
        if n == "x":
            return X, None
        if n in _CONSTANTS:
            return _CONSTANTS[n]
        if n == "e":
            self.fail(node, "'e' is not defined (write E for Euler's number, or exp(...))")
        if n in FUNCTIONS:
            self.fail(node, f"{n!r} is a function: call it, e.g. {n}(x)")
        raise ValueError(f"{n!r} is not defined: the variable is x, the constants pi and E, "
                         f"the functions {_ALLOWED_NAMES}")

    def binop(self, node):
        op = type(node.op)
        if op not in _BINOPS:
            where = ("only allowed in Piecewise conditions" if op in (ast.BitAnd, ast.BitOr)
                     else "not allowed")
            self.fail(node, f"operator {_OPNAMES.get(op, op.__name__)!r} is {where}")
        a, fa = self.expr(node.left)
        b, fb = self.expr(node.right)
        if op in (ast.Pow, ast.BitXor):
            return self.power(node, a, fa, b, fb)
        if op is ast.Div and (b == 0 or fb == 0.0):
            self.fail(node, "division by zero")
        fv = None
        if fa is not None and fb is not None:
            fv = {ast.Add: lambda: fa + fb, ast.Sub: lambda: fa - fb,
                  ast.Mult: lambda: fa * fb, ast.Div: lambda: fa / fb}[op]()
            self.check_value(node, fv, nonzero=False)
            self.check_rational(node, a, b, op)
        e = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
             ast.Div: lambda: a / b}[op]()
        return e, fv

    def power(self, node, a, fa, b, fb):
        if fa is not None and fb is not None:           # a number: bound it before sympy does
            try:
                fv = math.pow(fa, fb)
            except OverflowError:
                self.fail(node, "constant too large (it overflows a double)")
            except ValueError:
                self.fail(node, "division by zero" if fa == 0 else
                          "constant is not a real number")
            self.check_value(node, fv, nonzero=(a != 0))
            if isinstance(a, sp.Rational) and isinstance(b, sp.Rational):
                cost = abs(b.p) * max(_bits(a.p), _bits(a.q))
                if cost > MAX_BITS * max(1, abs(b.q)):
                    self.fail(node, f"exact number needs more than {MAX_BITS} bits")
            e = a ** b
            return e, fv
        p = fb if fb is not None else None
        if p is not None and abs(p) > MAX_EXPONENT:
            self.fail(node, f"exponent {_quote(str(b))} exceeds {MAX_EXPONENT} in magnitude")
        if fa is not None and fa <= 0.0 and fb is None:
            self.fail(node, "a power of a number <= 0 with an exponent that depends on x is "
                            "not a real function")
        e = a ** b
        _check_exponents(e)
        return e, None

    def check_value(self, node, v, nonzero: bool):
        """The double-precision shadow of a subexpression free of x is a finite real number (and
        not 0 where the exact value is not)."""
        if isinstance(v, complex) or not math.isfinite(v):
            self.fail(node, "constant is not a finite real number")
        if nonzero and v == 0.0:
            self.fail(node, "constant underflows to 0 in double precision")

    def check_rational(self, node, a, b, op):
        """An exact rational result of + - * / has at most MAX_BITS bits (a bound on the sum of
        the operands' sizes, checked before sympy computes it)."""
        if isinstance(a, sp.Rational) and isinstance(b, sp.Rational):
            n = max(_bits(a.p), _bits(a.q)) + max(_bits(b.p), _bits(b.q))
            if n > MAX_BITS:
                self.fail(node, f"exact number needs more than {MAX_BITS} bits")

    # -- calls --------------------------------------------------------------------------------
    def call(self, node):
        if not isinstance(node.func, ast.Name):
            self.fail(node.func, _REFUSED.get(type(node.func), "only a function name may be "
                                                                  "called"))
        name = node.func.id
        if name not in FUNCTIONS:
            what = "a variable, not a function" if name in ("x", "pi", "E") else \
                "not an allowed function"
            raise ValueError(f"{name!r} is {what} (allowed: {_ALLOWED_NAMES})")
        if node.keywords:
            self.fail(node, f"keyword arguments are not allowed in {name}(...)")
        if any(isinstance(a, ast.Starred) for a in node.args):
            self.fail(node, f"*args are not allowed in {name}(...)")
        f = FUNCTIONS[name]
        n = len(node.args)
        if n < f.min_args or (f.max_args is not None and n > f.max_args):
            want = (f"{f.min_args}" if f.max_args == f.min_args else
                    f"at least {f.min_args}" if f.max_args is None else
                    f"{f.min_args} to {f.max_args}")
            self.fail(node, f"{name} takes {want} argument{'s' if want != '1' else ''}, "
                            f"got {n}")
        if f.sympy in _PIECE_CLASSES:
            self.branches *= _branch_count(f.sympy, n)
            if self.branches > MAX_BRANCHES:
                self.fail(node, _TOO_MANY_BRANCHES)
        if name == "Piecewise":
            return self.piecewise(node), None
        args = [self.expr(a) for a in node.args]
        values = [v for _, v in args]
        fv = None
        if all(v is not None for v in values):
            try:
                fv = f.fallback(*values)
            except (ValueError, OverflowError, ZeroDivisionError):
                self.fail(node, "constant is not a finite real number")
            self.check_value(node, fv, nonzero=False)
        e = f.sympy(*(a for a, _ in args))
        return e, fv

    def piecewise(self, node):
        pairs = []
        for arg in node.args:
            if not (isinstance(arg, ast.Tuple) and len(arg.elts) == 2):
                self.fail(arg, "each argument of Piecewise must be a pair (expression, "
                               "condition)")
            e, _ = self.expr(arg.elts[0])
            pairs.append((e, self.cond(arg.elts[1])))
        return sp.Piecewise(*pairs)

    # -- Piecewise conditions -----------------------------------------------------------------
    def cond(self, node):
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            return sp.true if node.value else sp.false
        if isinstance(node, ast.Compare):
            parts, left = [], self.expr(node.left)[0]
            for op, right_node in zip(node.ops, node.comparators):
                if type(op) not in _RELATIONS:
                    self.fail(node, "only the comparisons < <= > >= are allowed in a condition")
                right = self.expr(right_node)[0]
                parts.append(_RELATIONS[type(op)](left, right))
                left = right
            return sp.And(*parts)
        if isinstance(node, ast.BoolOp):
            parts = [self.cond(v) for v in node.values]
            return sp.And(*parts) if isinstance(node.op, ast.And) else sp.Or(*parts)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd, ast.BitOr)):
            a, b = self.cond(node.left), self.cond(node.right)
            return sp.And(a, b) if isinstance(node.op, ast.BitAnd) else sp.Or(a, b)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert)):
            return sp.Not(self.cond(node.operand))
        self.fail(node, "a Piecewise condition must be a comparison (< <= > >=), True, False, "
                        "or a combination of them with & | ~")


def _check_exponents(e) -> None:
    """A power of an expression in x (sympy may merge (x**8)**8 into x**64) has a numeric
    exponent of at most MAX_EXPONENT in magnitude."""
    if isinstance(e, sp.Pow) and e.exp.is_Number and not e.base.is_Number \
            and abs(e.exp) > MAX_EXPONENT:
        raise ValueError(f"exponent {_quote(str(e.exp))} exceeds {MAX_EXPONENT} in magnitude: "
                         f"{_quote(str(e))}")


def _check_number_power(e) -> None:
    """A power of two numbers left unevaluated (``Pow(2, 10**30, evaluate=False)``) is a finite
    double: |p log2 |b|| <= 1024 (numpy would otherwise evaluate it as a Python integer power)."""
    if not (e.base.is_Number and e.exp.is_Number):
        return
    try:
        b, p = abs(float(e.base)), abs(float(e.exp))
        size = p * abs(math.log2(b)) if b > 0 else 0.0
    except (OverflowError, ValueError):
        size = math.inf
    if not size <= 1024:
        raise ValueError(f"the number {_quote(str(e))} is not a finite double")


def parse_expression(text: str) -> sp.Expr:
    """The sympy expression written in ``text``, built from its syntax tree without evaluating
    any of it (module docstring: the grammar and the bounds). Its variable is :data:`X`
    (``Symbol("x", real=True)``). ValueError with a one-line reason naming the offending piece
    for anything outside the grammar or the bounds; TypeError if ``text`` is not a str.

    >>> parse_expression("Max(x, 0)**0.7")
    Max(0, x)**0.7
    """
    tree = _syntax_tree(text)
    try:
        expr, _ = _Builder(text.strip()).expr(tree)
    except (TypeError, ArithmeticError, AttributeError, NotImplementedError,
            RecursionError) as exc:     # sympy refused to build a piece (e.g. a comparison)
        raise ValueError(f"not a valid expression: {' '.join(str(exc).split())[:200]}") \
            from None
    if not isinstance(expr, sp.Expr):
        raise ValueError("not an expression")
    return check_expression(expr)


# --------------------------------------------------------------------------------------------
# checks of a sympy expression


_ALLOWED_CLASSES = tuple({f.sympy for f in FUNCTIONS.values()} - {sp.sqrt, sp.cbrt}) + (
    sp.Add, sp.Mul, sp.Pow, sp.Symbol, sp.Rational, sp.Float,
    sp.functions.elementary.piecewise.ExprCondPair,
    sp.core.relational.Relational, sp.And, sp.Or, sp.Not,
    sp.logic.boolalg.BooleanTrue, sp.logic.boolalg.BooleanFalse)
_BAD_NUMBERS = (sp.core.numbers.ComplexInfinity, sp.core.numbers.Infinity,
                sp.core.numbers.NegativeInfinity, sp.core.numbers.NaN,
                sp.core.numbers.ImaginaryUnit)


def _describe(node) -> str:
    if isinstance(node, sp.core.numbers.ComplexInfinity):
        return "a division by zero (zoo, complex infinity)"
    if isinstance(node, sp.core.numbers.NaN):
        return "an undefined value (nan)"
    if isinstance(node, (sp.core.numbers.Infinity, sp.core.numbers.NegativeInfinity)):
        return "an infinite value"
    if isinstance(node, sp.core.numbers.ImaginaryUnit):
        return "the imaginary unit (a value that is not real)"
    name = getattr(node, "func", type(node)).__name__ if isinstance(node, sp.Basic) else \
        type(node).__name__
    return f"{name} ({_quote(str(node))}), which is not an allowed function or node"


def check_expression(expr) -> sp.Expr:
    """``expr`` if it is a sympy expression made only of the grammar's pieces (numbers, symbols,
    pi, E, + * **, the functions of :data:`FUNCTIONS`, Piecewise with relational conditions)
    within its bounds (numbers finite doubles or rationals of at most MAX_BITS bits, exponents of
    powers of expressions in x at most MAX_EXPONENT, at most MAX_BRANCHES branches of the
    piecewise parts, MAX_NODES nodes and 2 MAX_DEPTH levels); else ValueError naming the first
    offending node (DiracDelta, factorial, floor, zoo from a division by zero, ...)."""
    if not isinstance(expr, sp.Expr):
        raise TypeError(f"expected a sympy expression, got {type(expr).__name__}")
    stack, count, branches = [(expr, 1)], 0, 1
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ValueError(f"the expression has more than {MAX_NODES} nodes")
        if depth > 2 * MAX_DEPTH:
            raise ValueError(f"the expression is nested more than {2 * MAX_DEPTH} levels deep")
        if isinstance(node, _BAD_NUMBERS) or not (
                isinstance(node, _ALLOWED_CLASSES) or node in (sp.pi, sp.E)):
            raise ValueError(f"the expression contains {_describe(node)}")
        if isinstance(node, sp.Float):
            if not math.isfinite(float(node)):
                raise ValueError(f"the number {_quote(str(node))} is not a finite double")
        elif isinstance(node, sp.Rational):
            if max(_bits(node.p), _bits(node.q)) > MAX_BITS:
                raise ValueError(f"an exact number in the expression has more than {MAX_BITS} "
                                 "bits")
            if _bits(node.p) - _bits(node.q) > 1023:
                raise ValueError(f"the number {_quote(str(node))} is not a finite double")
        elif isinstance(node, sp.Pow):
            _check_exponents(node)
            _check_number_power(node)
        elif isinstance(node, _PIECE_CLASSES):
            branches *= _branch_count(node.func, len(node.args))
            if branches > MAX_BRANCHES:
                raise ValueError(f"the expression has {_TOO_MANY_BRANCHES}")
        stack.extend((a, depth + 1) for a in node.args)
    return expr
