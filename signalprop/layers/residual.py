"""Residual blocks: ``x^l = alpha x^{l-1} + beta F_l(x^{l-1})``, in theory and simulation.

``F_l`` (the *branch*) is any stack of layers (``Dense``, normalisation layers, even residual
blocks) that maps the width back to itself; ``alpha``, ``beta`` are constants of the block
(depth-dependent scalings such as ``beta = 1/sqrt(L)`` or ReZero's ``beta = 0`` are values the
constructor :func:`resnet` sets per block). The tracked variable of a block is its output, the
residual stream ``x^l``: ``q^l = ||x^l||^2 / N``, ``g^l = E[(d loss / d x^l_i)^2]``.

Mean field (Yang & Schoenholz 2017, "Mean field residual networks: on the edge of chaos", sec. 3;
branch and skip scalings of Hayou et al. 2021, "Stable ResNet", AISTATS, eq. 1), with ``q_F``,
``c_F``, ``m_F`` the branch's output kernel and mean:

    q^l  = alpha^2 q^{l-1} + beta^2 q_F + 2 alpha beta m^{l-1} m_F
    q^l c^l = alpha^2 q^{l-1} c^{l-1} + beta^2 q_F c_F + 2 alpha beta m^{l-1} m_F
    m^l  = alpha m^{l-1} + beta m_F,
    g^{l-1} = g^l (alpha^2 + beta^2 kappa_F),   kappa_F = prod over the branch of its layers'
    factors exp(log_d + log_back) (for YS's branch: sigma_v^2 sigma_w^2 E[phi'(h)^2])

(gradient independence). A residual block is the composition ``Add(((), branch), (alpha, beta))``
(:class:`signalprop.layers.compose.Add`: the skip path and the branch meeting in a weighted sum),
whose rules in theory and simulation it uses; this class names it and its two scales. Monte
Carlo: the branch layers' own samplers composed; backward ``alpha delta + beta J_F^T delta``; in
the scaled form (:mod:`signalprop.sampling`) the two terms are added at the larger exponent.
Derivation: docs/theory/residual.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..sampling import ENGINES, register
from .compose import Add, AddRule, _check_scale, _stack

__all__ = ["Residual"]


@dataclass(frozen=True, init=False, repr=False)
class Residual(Add):
    """A residual block ``x^l = alpha x^{l-1} + beta F(x^{l-1})``; ``F`` = the layers of ``branch``
    applied in order. ``alpha``, ``beta``: finite numbers >= 0 (``beta = 0``: ReZero / SkipInit
    at initialisation). The same layer as ``Add(((), branch), (alpha, beta))``."""

    def __init__(self, branch, alpha: float = 1.0, beta: float = 1.0):
        branch = _stack(branch, "branch")
        if not branch:
            raise ValueError("branch must hold at least one layer")
        alpha, beta = _check_scale("alpha", alpha), _check_scale("beta", beta)
        Add.__init__(self, ((), branch), (alpha, beta))

    def __reduce__(self):
        return (Residual, (self.branch, self.alpha, self.beta))

    def __repr__(self) -> str:
        return f"Residual(branch={self.branch!r}, alpha={self.alpha!r}, beta={self.beta!r})"

    @property
    def branch(self) -> tuple:
        return self.paths[1]

    @property
    def alpha(self) -> float:
        return self.scales[0]

    @property
    def beta(self) -> float:
        return self.scales[1]

    def check_input(self, n_in: int) -> None:
        n = n_in
        for la in self.branch:
            la.check_input(n)
            n = la.width
        if n != n_in:
            raise ValueError(f"the residual block's branch maps width {n_in} to {n}; the skip path "
                             f"needs equal widths (add a projection: a branch ending at width {n_in})")

    def with_width(self, width: int) -> "Residual":
        return Residual(tuple(la.with_width(width) for la in self.branch), self.alpha, self.beta)

    def label(self) -> str:
        return f"Residual({self.width})"


for _engine in ENGINES:
    register(Residual, _engine)(lambda block, n_in, _e=_engine: AddRule(block, n_in, _e))
