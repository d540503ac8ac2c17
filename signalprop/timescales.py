"""Fixed point and time scales of any recurrent step under the untied mean field:
:func:`cell_timescales`.

A recurrent step (a vanilla, minimalRNN, GRU or LSTM cell with a stationary input) maps the
k x k kernel of its state to the next one (``layer.kernel_step``); with two sequences the map has
a fixed point ``K*`` (``q*``, ``c*``). Linearising there (Schoenholz et al. 2017, eqs. 5-6, for
feedforward maps; Chen et al. 2018 sec. 3.1 and Gilboa et al. 2019 sec. 3 for recurrent cells):

* ``chi_1``: the spectral radius of the backward map ``Pi -> to_tracked(back(Pi))`` of one
  sequence's gradient covariance at ``K*`` (for the LSTM the map acts on the 2 x 2 covariance of
  ``(dh, dc)``; for the vanilla cell it is ``sigma_w^2 E[phi'^2]``): the gradient changes by
  ``chi_1`` per step back, ``xi_grad = -1/log chi_1``;
* ``chi_c``: the spectral radius of the Jacobian of the forward map restricted to the
  cross-sequence entries of the kernel at ``K*`` (for the vanilla cell, the slope of the
  correlation map ``sigma_w^2 E[phi'_a phi'_b]``): two sequences forget their difference over
  ``xi_c = -1/log chi_c`` steps.

The maps are the layer kinds' own ``kernel_step`` (untied weights). With tied weights the
gated cells' gradient is not a single exponential (docs/theory/recurrent.md, "Tied weights";
``predict_tied`` gives the profile). docs/theory/recurrent.md, "Fixed points of any cell".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._validate import check_int
from .kernel import Kernel
from .results import _Result

__all__ = ["cell_timescales", "CellTimescales"]


@dataclass(frozen=True, eq=False)
class CellTimescales(_Result):
    """Fixed point and time scales of a recurrent step (:func:`cell_timescales`): ``q_star``,
    ``c_star`` (of the tracked state, two sequences), ``chi_1``, ``chi_c``, ``xi_grad`` and ``xi_c``
    (``inf`` where the factor is 1), ``regime`` (ordered: chi_1 < 1, critical, chaotic), ``steps``
    (iterations to the fixed point)."""

    q_star: float
    c_star: float
    chi_1: float
    chi_c: float
    xi_grad: float
    xi_c: float
    regime: str
    steps: int


def _xi(chi: float) -> float:
    return math.inf if abs(chi - 1.0) <= 1e-12 else 1.0 / abs(math.log(chi))


def cell_timescales(step, q0: float = 1.0, c0: float = 0.5, *, tol: float = 1e-13,
                    max_steps: int = 100000) -> CellTimescales:
    """Fixed point and time scales of the recurrent ``step`` (a layer of ``rnn(...)``, e.g.
    ``rnn("lstm", 1, 256, gates=...).layers[0]``; module docstring), iterating its kernel map from
    two sequences of second moment ``q0`` and correlation ``c0`` until the kernel changes by less
    than ``tol`` (relative; ValueError naming the step if it does not settle in ``max_steps``)."""
    if not hasattr(step, "kernel_step") or not hasattr(step, "q_x"):
        raise TypeError(f"step must be a recurrent step (a layer of rnn(...)), got "
                        f"{type(step).__name__}")
    max_steps = check_int("max_steps", max_steps, 1)
    n_state = getattr(step, "state_width", step.width)
    K = Kernel.from_gram(q0 * np.array([[1.0, c0], [c0, 1.0]]))
    n_in, prev = n_state, None
    for it in range(1, max_steps + 1):
        K = step.kernel_step(K, n_in, {}).out
        n_in = step.width
        M = K.matrix()
        if prev is not None and prev.shape == M.shape and np.max(np.abs(M - prev)) <= tol * np.max(np.abs(M)):
            break
        prev = M
    else:
        raise ValueError(f"cell_timescales: {step.label()} did not settle in {max_steps} steps")
    k = 2
    b = M.shape[0] // k                            # rows per sequence (h; c for the LSTM)
    rows0 = [j * k for j in range(b)]               # sequence 0's rows: h_0 (, c_0)
    T = step.kernel_step(K, n_in, {}).tracked.matrix()    # the tracked variable (e for vanilla)
    q_star = float(T[0, 0])
    c_star = float(T[0, 1] / math.sqrt(T[0, 0] * T[1, 1]))
    chi_1 = _backward_radius(step, Kernel.from_gram(M[np.ix_(rows0, rows0)]), n_in)
    chi_c = _cross_radius(step, M, n_in, b, k)
    regime = "critical" if abs(chi_1 - 1.0) <= 1e-12 else ("ordered" if chi_1 < 1 else "chaotic")
    return CellTimescales(q_star, c_star, chi_1, chi_c, _xi(chi_1), _xi(chi_c), regime, it)


def _backward_radius(step, K1: Kernel, n_in: int, iters: int = 2000) -> float:
    """Spectral radius of ``P -> to_tracked(back(P))`` at the one-sequence fixed point (power
    iteration on the gradient covariance, renormalised by its trace each time)."""
    ks = step.kernel_step(K1, n_in, {})
    P = np.eye(K1.k)
    lam_old = math.nan
    for _ in range(iters):
        lf, Q = ks.back(P)
        lf2, Q = ks.to_tracked(Q)
        tr = float(np.trace(Q))
        if not tr > 0:
            return 0.0
        lam = math.exp(lf + lf2) * tr / float(np.trace(P))
        P = Q / tr
        if abs(lam - lam_old) <= 1e-15 * lam:
            break
        lam_old = lam
    return lam


def _cross_radius(step, M: np.ndarray, n_in: int, b: int, k: int) -> float:
    """Spectral radius of the Jacobian of the forward map on the cross-sequence entries
    ``M[i k, j k + 1]`` at the fixed point ``M``: one-sided differences (towards less
    correlation, so ``c* = 1`` stays admissible), Richardson-extrapolated (error O(h^2))."""
    idx = [(i * k, j * k + 1) for i in range(b) for j in range(b)]
    scale = float(np.sqrt(M[0, 0] * M[1, 1]))

    def F(x):
        X = M.copy()
        for (i, j), v in zip(idx, x):
            X[i, j] = X[j, i] = v
        Y = step.kernel_step(Kernel.from_gram(X), n_in, {}).out.matrix()
        return np.array([Y[i, j] for i, j in idx])

    x0 = np.array([M[i, j] for i, j in idx])
    f0 = F(x0)
    J = np.empty((len(idx), len(idx)))
    h = 1e-5 * scale
    for m in range(len(idx)):
        e = np.zeros(len(idx))
        e[m] = h
        d1 = (f0 - F(x0 - e)) / h
        d2 = (f0 - F(x0 - 2 * e)) / (2 * h)
        J[:, m] = 2 * d1 - d2
    return float(np.max(np.abs(np.linalg.eigvals(J))))
