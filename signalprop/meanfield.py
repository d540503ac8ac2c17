"""Mean-field theory of deep fully connected networks (infinite width).

Length map (Poole et al. 2016, eq. 3; CONVENTIONS.md "Forward"):

    q^1 = sigma_w^2 q^0 + sigma_b^2,   q^l = sigma_w^2 E[phi(sqrt(q^{l-1}) z)^2] + sigma_b^2.

Correlation map of two inputs of equal norm (Poole et al. 2016, eq. 5):

    c^l = (sigma_w^2 E[phi(u_1) phi(u_2)] + sigma_b^2) / q^l,   u ~ N(0, q^{l-1} [[1, c], [c, 1]]).

Backward (Schoenholz et al. 2017, eq. 14, with the width ratio of CONVENTIONS.md):

    g^L = 1,   g^l = g^{l+1} (N_{l+1}/N_l) sigma_{w,l+1}^2 E[phi_l'(sqrt(q^l) z)^2],
    G^l = g^l E[(x^{l-1})^2].

Fixed points and depth scales (Schoenholz et al. 2017, eqs. 4-9): chi_1, chi_c, xi_q, xi_c,
xi_grad = 1/|log chi_1|. The edge of chaos (Poole et al. 2016; Schoenholz et al. 2017; Hayou et
al. 2019) is taken on the attracting branch: the fixed point the length map reaches from q0
(:func:`fixed_point`, :func:`critical_sigma_w2`, :func:`critical_branches`, :func:`phase_diagram`
share it); "critical" means |chi_1 - 1| <= 1e-12, and xi_c = inf there (branch conventions and
their justification: docs/theory/edge-of-chaos.md).

Everything is carried in logarithms, so depth 10^5 neither overflows nor underflows: outside q in
[1e-280, 1e100] the Gaussian integrals are continued as local power laws in q (exact for the
positively homogeneous relu, leaky_relu and linear; for the others the relative error is O(q) at
the small end and O(q^-1/2) at the large end, i.e. below 1e-50). Depth 10^5 is also cheap:
converged runs are filled in (:func:`predict`), and where only c still moves, the correlation
map is iterated alone with a rho(c) that no longer depends on q (the layer's ``c_only_rule``, :func:`signalprop.layers.dense.Dense.c_only_rule`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from . import gaussian, nlo, tables
from ._validate import (check_correlation, check_finite, check_int, check_memory,
                        check_nonnegative, check_positive)
from .activations import Activation, activation as _activation
from .maps import (LQ_HI, LQ_LO, RHO_Q_MAX, corr_map, correlation_map, length_map, log_affine,
                   log_moment, rho)
from .kernel import Kernel
from .network import Network
from .results import FixedPoint, PhaseDiagram, Profile, _Result

__all__ = ["predict", "fixed_point", "critical_sigma_w2", "critical_branches", "CriticalBranch",
           "phase_diagram", "trainable_depth", "length_map", "correlation_map", "fixed_points",
           "FixedPoints"]

_LOG_MAX = math.log(np.finfo(float).max)
_CRIT_TOL = 1e-12        #: |chi_1 - 1| <= this is "critical" (see _regime)


def _check_scalar(name: str, value, check) -> float:
    """A plain float from a real scalar that passes ``check`` (one of the _validate checks); a
    TypeError naming ``name`` for arrays, lists and non-numbers (``float()`` of a 1-element
    array would otherwise fail with numpy's "only 0-dimensional arrays can be converted")."""
    if isinstance(value, (str, bytes)) or (not isinstance(value, (bool, np.bool_))
                                           and np.ndim(value) != 0):
        raise TypeError(f"{name} must be a real number (a scalar), got {value!r}")
    return float(check(name, value))


# ---------------------------------------------------------------------------------------------
# per-layer profile


def _check_q0_c0(q0, c0):
    """q0: a finite positive scalar; c0: None or a scalar in [-1, 1]."""
    q0 = _check_scalar("q0", q0, check_positive)
    if c0 is not None:
        c0 = _check_scalar("c0", c0, check_correlation)
    return q0, c0


def _bias_free(layer) -> bool:
    """No additive constant (sigma_b^2 = 0) in the layer or its branch: then a steady decay of
    log q continues unchanged (the map is the same at every scale up to vanishing corrections)."""
    if getattr(layer, "sigma_b2", 0.0) > 0:
        return False
    return all(_bias_free(la) for la in getattr(layer, "sublayers", ()))


def _runs(layers) -> list[int]:
    """run_end[i]: one past the last layer of the run of identical rules that contains layer i."""
    L = len(layers)
    end = [L] * L
    for i in range(L - 2, -1, -1):
        end[i] = end[i + 1] if layers[i].same_rule(layers[i + 1]) else i + 1
    return end


def predict(network: Network, q0: float = 1.0, c0=None, *, inputs=None, order: int = 0) -> Profile:
    """Mean-field per-layer profile of ``network`` (CONVENTIONS.md "Forward" and "Backward").

    ``q0``: input second moment ||x^0||^2 / N_0; ``c0``: correlation of a second input of the same
    norm (``None``: one input, no ``c``). Returns a :class:`Profile` with ``layers, q, log_q, c,
    log_g, log_G``. Every layer kind supplies its own step (``layer.mean_field``,
    ``layer.kernel_step``; see :mod:`signalprop.network`); the input has mean zero over its units.

    ``order``: 0, infinite width; 1, with the leading finite-width correction of every field,
    summed over the network's real widths (:func:`signalprop.nlo.nlo_correction`: fully connected
    layers, residual blocks with one- or two-Dense branches, Dense(phi) + LayerNorm/RMSNorm stacks;
    other layers raise; ``meta["order"] = 1`` and the correction's note in ``meta["nlo_note"]``).

    ``inputs``: instead of ``q0``/``c0``, the k inputs' per-unit Gram matrix (k x k, or a
    :class:`~signalprop.kernel.Kernel`): the kernel path, which carries the k x k kernel forward
    and the k x k gradient covariance back (loss ``<v, t^L_0>`` on input 0; ``g^l`` its trace) and
    adds ``kernel_log_q`` (L, k), ``kernel_corr`` (L, k, k) and ``grad_share`` (L, k, k) to the
    profile; ``q`` and ``c`` are input 0's and the pair (0, 1)'s. Networks with layers that
    couple their inputs (``BatchNormDense``: the batch of B, default pairwise ``c0 = 0``) always
    take it. It evaluates every layer (no fill of converged runs; about a millisecond a layer
    for k = 2).

    Fast path (one or two inputs of equal norm, every layer with a ``mean_field`` rule): within a
    run of identical layers, once the per-layer increments of log q and log E[x^2] and
    the values of the backward factors and c repeat to a few ulps, the rest of the run is filled
    in with the same increments (0 at a fixed point; the growth rate of a map that is the same at
    every scale), so deep profiles are cheap and stay exact to rounding. A decaying q is never
    extrapolated past a bias (its relative share grows as q shrinks, towards a fixed point).
    Where everything but c repeats (at the edge of chaos 1 - c^l falls like 1/l, and past
    q = 1e13 when q* = inf), the rest of a run of Dense layers iterates the correlation map
    alone (the layer's ``c_only_rule``, :func:`signalprop.layers.dense.Dense.c_only_rule`). ``q0`` and ``c0`` are scalars (TypeError otherwise): q0 > 0,
    c0 in [-1, 1], both finite. Depth 1e5 takes seconds for every built-in activation at its
    edge of chaos and deep in either phase (benchmarks/bench_deep_predict.py); a profile whose q
    grows slowly past the Mehler tables (gelu at sigma_w^2 = 2 with a bias: q ~ l) still runs
    the bivariate rule at every layer (~10 ms a layer).
    """
    if not isinstance(network, Network):
        raise TypeError(f"network must be a signalprop Network (see signalprop.mlp), "
                        f"got {type(network).__name__}")
    q0, c0 = _check_q0_c0(q0, c0)
    order = check_int("order", order, 0, 1)
    kernel = _input_kernel(network, q0, c0, inputs)
    if kernel is not None:
        if order:
            raise ValueError("order=1 (the 1/N correction) is derived for one or two inputs of "
                             "fully connected layers, not on the kernel path (inputs=, batch norm)")
        return _predict_kernel(network, kernel)
    if order:
        mean_field = predict(network, q0, c0)
        corr = nlo.nlo_correction(network, q0, c0)
        if "not small" in corr.note:
            warnings.warn(f"predict(order=1): {corr.note}", RuntimeWarning, stacklevel=2)
        return nlo.corrected(mean_field, corr)
    layers = network.layers
    L = network.depth
    widths = [int(w) for w in network.widths]
    run_end = _runs(layers)
    cache = {"means": network.needs_mean}
    # plain Python lists in the loop (numpy scalars are slow there); arrays at the end
    log_q = [0.0] * L
    log_x2 = [0.0] * (L + 1)   # log_x2[i] = log E[(x^i)^2]; x^0 is the input
    log_d = [0.0] * L          # log(g_t^l / g_x^l)
    log_b = [0.0] * L          # log(g_x^{l-1} / g_t^l)
    c = [0.0] * L if c0 is not None else None
    log_x2[0] = math.log(q0)
    state = (log_x2[0], c0, 0.0 if cache["means"] else None)
    i = 0
    while i < L:
        cache["run_left"] = run_end[i] - i
        step = layers[i].mean_field(state, widths[i], cache)
        log_q[i], log_d[i], log_b[i] = step.log_q, step.log_d, step.log_back
        if c is not None:
            c[i] = step.c
        state = step.out
        log_x2[i + 1] = state[0]
        i += 1
        end = run_end[i - 1]
        if 3 <= i < end and run_end[i - 3] == end:
            # the last three layers share the rule: steady state reached?
            k = i - 1
            lq = log_q[k]
            tol = 2e-15 * max(1.0, abs(lq), abs(log_x2[i]))
            dq, dx = log_q[k] - log_q[k - 1], log_x2[k + 1] - log_x2[k]
            if (abs(dq - (log_q[k - 1] - log_q[k - 2])) <= tol
                    and abs(dx - (log_x2[k] - log_x2[k - 1])) <= tol
                    and abs(log_d[k] - log_d[k - 1]) <= 2e-15 * max(1.0, abs(log_d[k]))
                    and abs(log_b[k] - log_b[k - 1]) <= 2e-15 * max(1.0, abs(log_b[k]))):
                steady_c = c is None or abs(c[k] - c[k - 1]) <= 4e-16
                dq0, dx0 = log_q[k - 1] - log_q[k - 2], log_x2[k] - log_x2[k - 1]
                dq = 0.0 if abs(dq) <= tol else dq    # a fixed point: rounding noise, not drift
                dx = 0.0 if abs(dx) <= tol else dx
                if abs(dq - dq0) > 1e-6 * abs(dq) and dq or abs(dx - dx0) > 1e-6 * abs(dx) and dx:
                    # a nonzero increment is extrapolated only when it repeats to 1e-6 of itself
                    # (a map that is the same at every scale); the last steps of a geometric
                    # approach to q* shrink by the length map's slope each layer and would
                    # otherwise be extrapolated as a linear drift (3e-11 in log q at depth 1e4)
                    continue
                if (dq or dx) and not _bias_free(layers[k]):
                    if dq < 0 or dx < 0:
                        # a decaying q meets an additive constant (a bias) whose share grows
                        # like 1/q: the increments only look steady, so keep going layer by layer
                        continue
                    if (abs(dq - dq0) > 4e-16 * max(1.0, abs(lq))
                            or abs(dx - dx0) > 4e-16 * max(1.0, abs(log_x2[i]))):
                        # a growing q leaves a bias behind geometrically, so the increment still
                        # approaches its limit; extrapolating it early costs n |dq - dq_limit|
                        # over n layers: wait until it repeats to rounding (2 ulps of log q)
                        continue
                if not steady_c:
                    # c still moves (at the edge of chaos, like a power of l): the rest of the
                    # run iterates the correlation map alone, if its rho(c) no longer depends
                    # on q (the layer's c_only_rule); else layer by layer
                    c_only = getattr(layers[k], "c_only_rule", None)
                    rho_c = None if c_only is None else c_only(cache, log_q[k], dq)
                    if rho_c is None:
                        continue
                    lsw2 = math.log(layers[k].sigma_w2)
                    cx = state[1]
                    for j in range(i, end):
                        n = j - k
                        log_q[j] = log_q[k] + n * dq
                        log_x2[j + 1] = log_x2[k + 1] + n * dx
                        log_d[j], log_b[j] = log_d[k], log_b[k]
                        t = math.exp(lsw2 + log_x2[j] - log_q[j])
                        cj = min(1.0, max(-1.0, t * cx + (1.0 - t)))   # as in dense_step
                        c[j] = cj
                        cx = 1.0 if cj == 1.0 else min(1.0, max(-1.0, rho_c(cj)))
                    state = (log_x2[end], cx, state[2])
                    i = end
                    continue
                for j in range(i, end):
                    n = j - k
                    log_q[j] = log_q[k] + n * dq
                    log_x2[j + 1] = log_x2[k + 1] + n * dx
                    log_d[j], log_b[j] = log_d[k], log_b[k]
                    if c is not None:
                        c[j] = c[k]
                state = (log_x2[end], state[1], state[2])
                i = end
    log_q, log_x2 = np.array(log_q), np.array(log_x2)
    log_d, log_b = np.array(log_d), np.array(log_b)
    c = None if c is None else np.array(c)

    # backward: log g^l = sum_{k=l}^{L-1} [log_d_k + log_back_{k+1}]   (layers 1-based)
    terms = log_d[:-1] + log_b[1:]
    log_g = np.zeros(L)
    log_g[:-1] = np.cumsum(terms[::-1])[::-1]
    log_G = log_g + log_x2[:-1]
    with np.errstate(over="ignore", under="ignore"):
        q = np.exp(log_q)
    meta = {"source": "theory", "q0": q0, "c0": c0, "depth": L}
    if not np.all(np.isfinite(q)) or np.any(q == 0):
        meta["note"] = "q over- or underflows float64 in some layers; log_q holds the exact values"
    return Profile(layers=np.arange(1, L + 1), q=q, log_q=log_q, log_g=log_g, log_G=log_G, c=c,
                   meta=meta)


def _input_kernel(network: Network, q0: float, c0, inputs):
    """The input :class:`Kernel` of the kernel path, or None for the fast path."""
    B = network.coupled_inputs
    if inputs is None:
        if B is None and network.pair_rule:
            return None
        if B is not None:
            c0 = 0.0 if c0 is None else c0
            if (B > 1 and c0 < -1.0 / (B - 1)) or c0 >= 1.0:
                raise ValueError(f"c0 must lie in [-1/(k-1), 1) = [{-1.0 / (B - 1):.6g}, 1) for "
                                 f"k = {B} inputs with equal pairwise correlation, got {c0}")
        k = B if B is not None else (1 if c0 is None else 2)
        return Kernel.uniform(k, q0, 0.0 if c0 is None else c0, means=network.needs_mean)
    if q0 != 1.0 or c0 is not None:
        raise TypeError("give either q0/c0 or inputs, not both")
    if isinstance(inputs, Kernel):
        if network.needs_mean and inputs.mu is None:
            return Kernel(inputs.log_q, inputs.corr, np.zeros(inputs.k))
        return inputs
    kernel = Kernel.from_gram(inputs)
    return Kernel(kernel.log_q, kernel.corr, np.zeros(kernel.k)) if network.needs_mean else kernel


def _predict_kernel(network: Network, kernel: Kernel) -> Profile:
    """The kernel path of :func:`predict`: every layer's ``kernel_step``, then the gradient
    covariance back from ``Pi^L = e_0 e_0^T`` (carried as ``exp(log_s) P``, ``tr P = 1``)."""
    layers, L, k = network.layers, network.depth, kernel.k
    # + the record of composed layers' sublayers (input corr, gradient covariance: 16 k^2 bytes each)
    n_inner = sum(len(getattr(la, "sublayers", ())) for la in layers)
    check_memory(f"predict on the kernel path (depth {L}, k = {k} inputs)",
                 24.0 * L * k * k + 16.0 * n_inner * k * k)
    widths = [int(w) for w in network.widths]
    cache = {"means": network.needs_mean}
    kq, kc = np.empty((L, k)), np.empty((L, k, k))
    log_x2 = np.empty(L + 1)
    log_x2[0] = kernel.log_q[0]
    maps_back = []
    state = kernel
    for i, layer in enumerate(layers):
        if not hasattr(layer, "kernel_step"):
            raise ValueError(f"predict: layer {i + 1} ({type(layer).__name__}) has no rule for k "
                             f"inputs (kernel_step) yet")
        cache["layer"] = i + 1           # kinds computed numerically note their errors by layer
        step = layer.kernel_step(state, widths[i], cache)
        # a tracked kernel may carry rows beyond the k inputs' (state the loss does not read, as
        # an LSTM's cell): the profile reports its first k rows
        kq[i], kc[i] = step.tracked.log_q[:k], step.tracked.corr[:k, :k]
        maps_back.append((step.to_tracked, step.back))
        state = step.out
        log_x2[i + 1] = state.log_q[0]
    share = np.zeros((L, k, k))
    P = np.zeros((step.tracked.k, step.tracked.k))
    P[0, 0] = 1.0
    share[L - 1] = P[:k, :k]
    log_g = np.zeros(L)
    log_s = 0.0
    for i in range(L - 1, 0, -1):
        f1, P = maps_back[i][1](P)
        f2, P = maps_back[i - 1][0](P)
        tr = float(np.trace(P))
        log_s += f1 + f2 + (math.log(tr) if tr > 0 else -math.inf)
        if tr > 0:
            P = P / tr
        log_g[i - 1] = log_s
        if P.shape[0] > k:               # g^l: the trace over the first k rows (see above)
            tk = float(np.trace(P[:k, :k]))
            log_g[i - 1] += math.log(tk) if tk > 0 else -math.inf
            share[i - 1] = P[:k, :k] / tk if tk > 0 else P[:k, :k]
        else:
            share[i - 1] = P
    log_q = kq[:, 0].copy()
    with np.errstate(over="ignore", under="ignore"):
        q = np.exp(log_q)
    c = kc[:, 0, 1].copy() if k > 1 else None
    meta = {"source": "theory", "q0": float(math.exp(kernel.log_q[0])),
            "c0": float(kernel.corr[0, 1]) if k > 1 else None, "depth": L, "k": k,
            "g": "trace of the k x k gradient covariance for the loss <v, t^L_0> on input 0"}
    if network.batch_size is not None:
        meta["batch_size"] = network.batch_size
        meta["g"] = "sum over the batch of E||d loss/d h^l_b||^2 / N_l (loss <v, h^L_a>)"
    if not np.all(np.isfinite(q)) or np.any(q == 0):
        meta["note"] = "q over- or underflows float64 in some layers; log_q holds the exact values"
    if cache.get("numerical"):        # numerical rules' stated errors, per layer
        meta["numerical"] = cache["numerical"]
    if cache.get("inner"):            # composed layers' sublayers (signalprop.layers.compose)
        meta["inner"] = cache["inner"]
    return Profile(layers=np.arange(1, L + 1), q=q, log_q=log_q, log_g=log_g,
                   log_G=log_g + log_x2[:-1], c=c, meta=meta, kernel_log_q=kq, kernel_corr=kc,
                   grad_share=share)


# ---------------------------------------------------------------------------------------------
# fixed points


def _q_star(act: Activation, sw2, sb2, q0=1.0, tol=4e-16, max_iter=200, V=None, dV=None,
            VdV=None):
    """The stable fixed point of the length map reached from q0, vectorised over sw2, sb2.

    Works on u = log q and G(u) = log T(e^u) - u with T(q) = sw2 V(q) + sb2. T is non-decreasing,
    so from q0 the iteration moves monotonically to the first root of G in the direction of
    sign G(log q0), or to 0 / inf when there is none: bracket by doubling steps in u (to
    |u| = 700), then safeguarded Newton (G'(u) = q T'(q)/T(q) - 1, T' = sw2 V'(q)) with bisection.
    Returns log q* (-inf or +inf when the map collapses or diverges). ``VdV(q)``, when given,
    returns (V(q), V'(q)) in one call (a table evaluates both at the cost of one).
    """
    V = V or act.second_moment
    dV = dV or act.second_moment_slope
    VdV = VdV or (lambda q: (V(q), dV(q)))
    sw2, sb2 = np.broadcast_arrays(np.asarray(sw2, float), np.asarray(sb2, float))
    shape = sw2.shape
    sw2, sb2 = sw2.ravel().copy(), sb2.ravel().copy()
    lsw2 = np.log(sw2)

    def G(u, idx):
        return log_affine(lsw2[idx], log_moment(V, u), sb2[idx]) - u

    n = sw2.size
    u0 = np.full(n, math.log(q0))
    g0 = G(u0, np.arange(n))
    direction = np.where(g0 > 0, 1.0, -1.0)
    result = np.where(g0 == 0, u0, np.nan)
    lo, hi = u0.copy(), u0.copy()        # lo: G has the sign of g0; hi: the opposite sign
    glo = g0.copy()
    active = np.flatnonzero(g0 != 0)
    step = 0.5
    found = np.zeros(n, bool)
    while active.size:
        cand = lo[active] + direction[active] * step
        gc = G(cand, active)
        flip = np.sign(gc) != np.sign(glo[active])
        # a sign change between two values of G at its rounding level (|G| ~ eps |u|, and the
        # integrals' ~1e-15) is noise, not a root: a near-neutral map far out (gelu with
        # sigma_w^2 = 2 at q ~ 1e20, G ~ sigma_b^2 / q) would otherwise stop there
        noise = flip & (np.maximum(np.abs(gc), np.abs(glo[active]))
                        <= 1e-13 * np.maximum(1.0, np.abs(cand)))
        cross = flip & ~noise
        hi[active[cross]] = cand[cross]
        found[active[cross]] = True
        keep = ~cross
        lo[active[keep]] = cand[keep]
        glo[active[keep & ~noise]] = gc[keep & ~noise]     # glo keeps the sign of g0
        out = np.abs(cand) > 700.0
        gone = keep & out
        result[active[gone]] = direction[active[gone]] * np.inf
        active = active[keep & ~out]
        step *= 2.0
    # refine [lo, hi] by safeguarded Newton
    idx = np.flatnonzero(found)
    a, b, ga = lo[idx], hi[idx], glo[idx]
    u = 0.5 * (a + b)
    for _ in range(max_iter):
        if idx.size == 0:
            break
        q = np.exp(np.clip(u, LQ_LO, LQ_HI))
        v, dv = VdV(q)
        # in logs: sigma_w^2 E[phi^2] may overflow float64 (sigma_w^2 = 1e308)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            lT = log_affine(lsw2[idx], np.log(v), sb2[idx])
            g = lT - u
            share = np.exp(lsw2[idx] + np.log(v) - lT)         # sigma_w^2 V / T, in [0, 1]
            dg = np.where(v > 0, share * (q * dv / v), 0.0) - 1.0
        same = np.sign(g) == np.sign(ga)
        a, ga = np.where(same, u, a), np.where(same, g, ga)
        b = np.where(same, b, u)
        with np.errstate(divide="ignore", invalid="ignore"):
            un = u - g / dg
        bad = ~np.isfinite(un) | (un <= np.minimum(a, b)) | (un >= np.maximum(a, b))
        un = np.where(bad, 0.5 * (a + b), un)
        done = (np.abs(un - u) <= tol * np.maximum(1.0, np.abs(u))) | (g == 0) | \
               (np.abs(b - a) <= tol * np.maximum(1.0, np.abs(u)))
        result[idx[done]] = np.where(g[done] == 0, u[done], un[done])
        keep = ~done
        idx, a, b, ga, u = idx[keep], a[keep], b[keep], ga[keep], un[keep]
    result[idx] = u
    return result.reshape(shape)


def _newton_step_c(c, F, dC, lo, hi):
    """One safeguarded Newton step for F(c) = C(c) - c = 0 with C'(c) = dC: the bracket [lo, hi]
    shrinks to the side of c where F changes sign, and a step leaving it becomes a bisection."""
    lo = np.where(F > 0, c, lo)
    hi = np.where(F <= 0, c, hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        cn = c - F / (dC - 1.0)
    bad = ~np.isfinite(cn) | (cn <= lo) | (cn >= hi)
    return np.where(bad, 0.5 * (lo + hi), cn), lo, hi


def _chaotic_c_star(act: Activation, q, sw2, sb2, closed: bool, V) -> tuple:
    """(c*, chi_c) at chaotic points (vectorised): the Mehler-series route where the activation
    has one, the bivariate rule (:func:`_c_star`) where it does not or the series gives no root;
    ``chi_c = sigma_w^2 E[phi'(u1) phi'(u2)]`` at c* (Schoenholz et al. 2017, eq. 9)."""
    if closed:
        cs = _c_star(act, q, sw2, sb2)
        dd = act.dphi_cross_moment(q, q, cs)
    else:
        cs, dd = _c_star_mehler(act, q, sw2, sb2, V(q))
        miss = np.isnan(cs)
        if np.any(miss):
            cs[miss] = _c_star(act, q[miss], sw2[miss], sb2[miss])
            dd[miss] = act.dphi_cross_moment(q[miss], q[miss], cs[miss])
    return cs, sw2 * dd


def _c_star(act: Activation, q, sw2, sb2, tol=1e-15, max_iter=60):
    """The fixed point c* < 1 of the correlation map at q = q* (vectorised; chaotic points).

    F(c) = C(c) - c is negative just below c = 1 when chi_1 > 1 and F(-1) >= 0; C is
    increasing with C'(c) = sigma_w^2 E[phi'(u1) phi'(u2)] (Price's theorem), and the chaotic
    root in [-1, 1) is unique for the activations here, so safeguarded Newton from c = 0 on the
    bracket [-1, 1) converges quadratically (bisection when a step leaves the bracket).
    """
    q, sw2, sb2 = np.broadcast_arrays(*(np.asarray(v, float) for v in (q, sw2, sb2)))
    q, sw2, sb2 = q.ravel(), sw2.ravel(), sb2.ravel()
    out = np.empty(q.size)
    idx = np.arange(q.size)
    lo, hi, c = np.full(q.size, -1.0), np.ones(q.size), np.zeros(q.size)
    for _ in range(max_iter):
        if idx.size == 0:
            break
        qi, wi, bi, ci = q[idx], sw2[idx], sb2[idx], c[idx]
        F = corr_map(act, qi, ci, wi, bi) - ci
        dC = wi * act.dphi_cross_moment(qi, qi, ci) * qi / (wi * act.second_moment(qi) + bi)
        cn, lo[idx], hi[idx] = _newton_step_c(ci, F, dC, lo[idx], hi[idx])
        done = (np.abs(cn - ci) <= tol) | (hi[idx] - lo[idx] <= tol) | (F == 0)
        c[idx] = cn
        out[idx[done]] = np.where(F[done] == 0, ci[done], cn[done])
        idx = idx[~done]
    out[idx] = c[idx]
    return out


def _c_star_far(act: Activation, lq: float, sw2: float, sb2: float) -> tuple[float, float]:
    """(c*, chi_c) for a chaotic fixed point q* = exp(lq) > 1e13 (only huge sigma_w^2 put a
    bounded activation there): the correlation map c -> t rho(c) + 1 - t, t = sigma_w^2 E[phi^2]
    / q*, with the post-activation correlation rho of :func:`rho` (q clamped to 1e13, beyond
    which it no longer changes) and chi_c its slope t rho'(c*), rho'(c) = q E[phi'(u1) phi'(u2)]
    / E[phi^2] (Price's theorem); at a fixed point this is sigma_w^2 E[phi'(u1) phi'(u2)]."""
    share = math.exp(min(0.0, math.log(sw2) + float(log_moment(act.second_moment, lq)) - lq))
    q = RHO_Q_MAX
    v = float(act.second_moment(q))
    c, lo, hi = np.zeros(1), -np.ones(1), np.ones(1)
    d = 0.0
    for _ in range(60):
        F = share * float(rho(act, q, c[0])) + 1.0 - share - c
        d = share * q * float(act.dphi_cross_moment(q, q, c[0])) / v
        cn, lo, hi = _newton_step_c(c, F, d, lo, hi)
        done = abs(cn[0] - c[0]) <= 1e-15 or hi[0] - lo[0] <= 1e-15 or F[0] == 0
        c = cn
        if done:
            break
    return float(c[0]), d


def _regime(chi_1, tol=_CRIT_TOL):
    """"critical" when |chi_1 - 1| <= tol (1e-12: about 100 times the accuracy of chi_1, whose
    integrals are good to ~1e-15 relative; fixed_point then reports xi_c = xi_grad = inf),
    else "ordered" (chi_1 < 1) or "chaotic" (CONVENTIONS.md, Regime)."""
    if abs(chi_1 - 1.0) <= tol:
        return "critical"
    return "ordered" if chi_1 < 1.0 else "chaotic"


def _depth(x):
    """-1 / log x, inf where x = 1 to the accuracy of the slopes (|x - 1| <= _CRIT_TOL, the
    tolerance of the regime label: -1/log(1 + 1e-16) = -9e15 is rounding, not a depth)."""
    if abs(x - 1.0) <= _CRIT_TOL:
        return math.inf
    lx = math.log(x) if x > 0 else -math.inf
    return -1.0 / lx


def _limit_c_slope(chi_c, growth):
    """Slope at c = 1 of the correlation map when q^l -> 0 or inf: c^{l+1} = q_ab^{l+1}/q^{l+1} has
    slope chi_c q^l / q^{l+1} = chi_c / growth there (chi_c alone at a finite fixed point). For
    activations that are linear at 0 or positively homogeneous at infinity (relu-like) it is 1
    up to O(q) at q = 1e-280 or O(q^-1/2) at 1e100, i.e. exactly 1 in float64; values within 1e-12
    of 1 (the integrals' rounding) are set to 1, whose depth scale is inf (c moves as a power of l
    or not at all, never exponentially)."""
    ratio = np.asarray(chi_c, float) / np.asarray(growth, float)
    ratio = np.where(np.abs(ratio - 1.0) <= 1e-12, 1.0, ratio)
    return float(ratio) if ratio.ndim == 0 else ratio


def fixed_point(activation, sigma_w2: float, sigma_b2: float, q0: float = 1.0) -> FixedPoint:
    """Fixed point of the length and correlation maps and the depth scales (CONVENTIONS.md):

    q* (the stable one reached from ``q0``), c*, chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]
    (Poole et al. 2016, eq. 7), chi_c = sigma_w^2 E[phi'(u1) phi'(u2)] at c* and
    xi_q = -1/log(sigma_w^2 E[phi'^2 + phi phi'']), xi_c = -1/log chi_c (Schoenholz et al. 2017,
    eqs. 4-9), xi_grad = 1/|log chi_1|. A vanishing (q* = 0) or diverging (q* = inf) length map
    is reported as such, with the limiting chi_1; diverging depth scales are inf. There xi_c is
    that of the limiting correlation map (:func:`_limit_c_slope`; inf for relu-like and
    linear-at-0 activations) and xi_q is inf when q* = inf (no fixed point to approach).

    Branch: q* is the fixed point that the iteration q -> sigma_w^2 E[phi(sqrt(q) z)^2] +
    sigma_b^2 reaches from ``q0`` (the nearest root in the direction the map moves q0; where the
    length map has several fixed points, as silu and gelu do, another q0 may reach another one).
    :func:`critical_sigma_w2` and :func:`phase_diagram` use the same branch for the same ``q0``.

    Regime: "critical" when |chi_1 - 1| <= 1e-12 (docs/theory/edge-of-chaos.md), with c* = 1 and
    xi_c = xi_grad = inf there; "ordered" below, "chaotic" above. A q* beyond float64 (e.g.
    sigma_w2 = sigma_b2 = 1e308) is reported as inf, with log q* in the note.
    """
    act = _activation(activation)
    sw2 = _check_scalar("sigma_w2", sigma_w2, check_positive)
    sb2 = _check_scalar("sigma_b2", sigma_b2, check_nonnegative)
    q0 = _check_scalar("q0", q0, check_positive)
    lq = float(_q_star(act, sw2, sb2, q0))
    note = ""
    if not math.isfinite(lq):
        q_star = 0.0 if lq < 0 else math.inf
    elif lq > _LOG_MAX:
        q_star = math.inf
        note = f"q* = exp({lq:.17g}) exceeds float64, reported as inf"
    else:
        q_star = math.exp(lq)
    lq_eval = min(max(lq, LQ_LO), LQ_HI)
    q_eval = math.exp(lq_eval)
    if math.isfinite(lq) and lq != lq_eval:     # beyond [1e-280, 1e100]: continued as powers
        chi_1 = sw2 * math.exp(float(log_moment(act.dphi_second_moment, lq)))
        slope = sw2 * math.exp(float(log_moment(act.second_moment_slope, lq)))
    else:
        chi_1 = sw2 * float(act.dphi_second_moment(q_eval))
        slope = sw2 * float(act.second_moment_slope(q_eval))
    regime = _regime(chi_1)
    if not math.isfinite(lq):
        note = ("the length map collapses to q* = 0; chi_1 is its limit there" if lq < 0 else
                "the length map diverges (q* = inf); chi_1 is its limit as q -> inf")
    if regime == "chaotic" and math.isfinite(lq) and lq > math.log(RHO_Q_MAX):
        c_star, chi_c = _c_star_far(act, lq, sw2, sb2)
    elif regime == "chaotic" and math.isfinite(lq) and q_star > 0:
        c_star = float(_c_star(act, q_eval, sw2, sb2)[0])
        chi_c = sw2 * float(act.dphi_cross_moment(q_eval, q_eval, c_star))
    else:
        c_star, chi_c = 1.0, chi_1
        if regime == "chaotic":
            note += "; c* is not defined without a finite q*, reported as 1"
    xi_q, xi_c = _depth(slope), _depth(chi_c)
    if not math.isfinite(lq):
        ratio = _limit_c_slope(chi_c, sw2 * (float(act.second_moment(q_eval)) / q_eval))
        xi_c = _depth(ratio)
        if lq > 0:
            xi_q = math.inf
        note += (f"; without a finite q* the correlation map's slope at c = 1 is chi_c / "
                 f"(q^(l+1)/q^l) = {ratio:.6g} in the limit, so xi_c = {xi_c:.6g}"
                 + ("; xi_q = inf (no fixed point to approach)" if lq > 0 else ""))
    xi_grad = _depth(chi_1) if chi_1 <= 1.0 else 1.0 / math.log(chi_1)
    if regime == "critical":                 # chi_1 = 1 to the accuracy of the integrals
        xi_c = xi_grad = math.inf
    return FixedPoint(q_star=q_star, c_star=c_star, chi_1=chi_1, chi_c=chi_c,
                      xi_q=xi_q, xi_c=xi_c, xi_grad=xi_grad, note=note.strip("; "),
                      regime=regime, activation=act.name, sigma_w2=sw2, sigma_b2=sb2)


@dataclass(frozen=True, eq=False)
class FixedPoints(_Result):
    """:func:`fixed_point` over arrays of (sigma_w2, sigma_b2) (:func:`fixed_points`): every field
    an array of the broadcast shape (``regime``: strings), with the meaning it has in
    :class:`signalprop.results.FixedPoint`; the notes of points without a finite q* in [1e-280,
    1e13] are in ``notes`` (index into the flattened arrays -> note)."""

    q_star: np.ndarray
    c_star: np.ndarray
    chi_1: np.ndarray
    chi_c: np.ndarray
    xi_q: np.ndarray
    xi_c: np.ndarray
    xi_grad: np.ndarray
    regime: np.ndarray
    sigma_w2: np.ndarray
    sigma_b2: np.ndarray
    activation: str = ""
    q0: float = 1.0
    notes: dict = None


def _depths(x: np.ndarray) -> np.ndarray:
    """:func:`_depth` over an array: -1/log x, inf where |x - 1| <= _CRIT_TOL."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lx = np.where(x > 0, np.log(np.where(x > 0, x, 1.0)), -np.inf)
        return np.where(np.abs(x - 1.0) <= _CRIT_TOL, np.inf, -1.0 / lx)


def fixed_points(activation, sigma_w2, sigma_b2, *, q0: float = 1.0) -> FixedPoints:
    """:func:`fixed_point` at every (sigma_w2, sigma_b2) of two arrays (broadcast), vectorised:
    q* (Poole et al. 2016, eq. 3, the branch reached from ``q0``), chi_1 (eq. 7), c*, chi_c,
    xi_q, xi_c (Schoenholz et al. 2017, eqs. 4-9), xi_grad, regime, with the same definitions and
    branch conventions as :func:`fixed_point`.

    Route (as :func:`phase_diagram`): for activations without closed forms E[phi^2], its slope and
    E[phi'^2] come from the activation's Chebyshev table in log q (``tables._LogQTable``, ~1e-15)
    and the chaotic c* and chi_c from Mehler's series (``_c_star_mehler``, certified by Parseval;
    points it does not cover by the direct engine); points whose q* is 0, inf or outside
    [1e-280, 1e13] (power-law continuations, the far-chaotic c*) are computed one by one by
    :func:`fixed_point` itself. Agrees with :func:`fixed_point` to ~1e-12 (tests/test_maps.py).
    At most 838860 points (5 KiB of working memory each, as phase_diagram): more is refused up
    front with the memory it would need."""
    act = _activation(activation)
    sw = np.asarray(check_positive("sigma_w2", sigma_w2), float)
    sb = np.asarray(check_nonnegative("sigma_b2", sigma_b2), float)
    q0 = _check_scalar("q0", q0, check_positive)
    SW, SB = np.broadcast_arrays(sw, sb)
    shape = SW.shape
    if SW.size * _PD_BYTES_PER_CELL > _PD_MAX_BYTES:
        raise ValueError(
            f"fixed_points: {SW.size} points (sigma_w2 x sigma_b2 broadcast to {shape}) would "
            f"need about {SW.size * _PD_BYTES_PER_CELL / 2**30:.3g} GiB of working memory; the "
            f"limit is {_PD_MAX_BYTES / 2**30:g} GiB ({_PD_MAX_BYTES // _PD_BYTES_PER_CELL} "
            "points): pass fewer points, or call it in blocks")
    SW, SB = SW.ravel().astype(float), SB.ravel().astype(float)
    closed = type(act).cross_moment is not Activation.cross_moment
    if closed:
        V, dV, D = act.second_moment, act.second_moment_slope, act.dphi_second_moment
        VdV = None
    else:
        t = tables.tables_of(act).pd
        V, dV, D = (lambda q: t(q)[..., 0]), (lambda q: t(q)[..., 1]), (lambda q: t(q)[..., 2])

        def VdV(q):
            vals = t(q)
            return vals[..., 0], vals[..., 1]
    n = SW.size
    lq = _q_star(act, SW, SB, q0, V=V, dV=dV, VdV=VdV) if n else np.zeros(0)
    reg = np.isfinite(lq) & (lq >= LQ_LO) & (lq <= math.log(RHO_Q_MAX))
    out = {k: np.full(n, np.nan) for k in ("q_star", "c_star", "chi_1", "chi_c", "xi_q", "xi_c",
                                          "xi_grad")}
    regime = np.empty(n, dtype=object)
    notes = {}
    i = np.flatnonzero(reg)
    if i.size:
        q = np.exp(lq[i])
        chi_1 = SW[i] * D(q)
        slope = SW[i] * dV(q)
        c_star, chi_c = np.ones(i.size), chi_1.copy()
        chaotic = chi_1 - 1.0 > _CRIT_TOL
        if np.any(chaotic):
            c_star[chaotic], chi_c[chaotic] = _chaotic_c_star(
                act, q[chaotic], SW[i][chaotic], SB[i][chaotic], closed, V)
        critical = np.abs(chi_1 - 1.0) <= _CRIT_TOL
        with np.errstate(divide="ignore"):
            xi_grad = np.where(chi_1 <= 1.0, _depths(chi_1), 1.0 / np.log(chi_1))
        xi_c = _depths(chi_c)
        xi_c[critical], xi_grad[critical] = np.inf, np.inf
        for k, v in (("q_star", q), ("c_star", c_star), ("chi_1", chi_1), ("chi_c", chi_c),
                     ("xi_q", _depths(slope)), ("xi_c", xi_c), ("xi_grad", xi_grad)):
            out[k][i] = v
        regime[i] = np.where(critical, "critical", np.where(chi_1 < 1.0, "ordered", "chaotic"))
    for j in np.flatnonzero(~reg):           # q* = 0, inf or beyond [1e-280, 1e13]: one by one
        fp = fixed_point(act, float(SW[j]), float(SB[j]), q0)
        for k in out:
            out[k][j] = getattr(fp, k)
        regime[j] = fp.regime
        if fp.note:
            notes[int(j)] = fp.note
    return FixedPoints(**{k: v.reshape(shape) for k, v in out.items()},
                       regime=regime.astype(str).reshape(shape), sigma_w2=SW.reshape(shape),
                       sigma_b2=SB.reshape(shape), activation=act.name, q0=q0, notes=notes)


def trainable_depth(activation, sigma_w2: float, sigma_b2: float) -> float:
    """Schoenholz et al. 2017 (Sec. 5, Fig. 5-6): random networks train when L <~ 6 xi_c.

    Returns 6 xi_c (inf at the edge of chaos). An empirical rule read off their MNIST/CIFAR-10
    experiments, not a theorem.
    """
    return 6.0 * fixed_point(activation, sigma_w2, sigma_b2).xi_c


# ---------------------------------------------------------------------------------------------
# edge of chaos

_CRIT_ACCEPT = 1e-13     #: critical_sigma_w2 returns only points with |chi_1 - 1| <= this
_CRIT_GRID = np.linspace(math.log(1e-16), math.log(1e8), 291)   # q grid of the q* parameterisation
_KIND_FINITE, _KIND_ZERO, _KIND_INF = 0, -1, 1


@dataclass(frozen=True, eq=False)
class CriticalBranch(_Result):
    """A candidate edge-of-chaos point at one sigma_b^2 (:func:`critical_branches`).

    ``sigma_w2``: where chi_1 = 1 at ``q_star`` (0 or inf for the limits q* -> 0, q* -> inf);
    ``length_slope``: sigma_w^2 d/dq E[phi(sqrt(q) z)^2] at q* (< 1: the fixed point attracts
    its neighbourhood; > 1: it repels, and no network settles there); ``reached``: the fixed
    point that the length map reaches from ``q0`` (:func:`fixed_point`) has chi_1 = 1 to 1e-13
    at ``sigma_w2`` (after polishing, so ``sigma_w2`` is then the value
    :func:`critical_sigma_w2` may return); ``kind``: "finite", "q*=0" or "q*=inf".
    """

    sigma_w2: float
    q_star: float
    length_slope: float
    reached: bool
    kind: str
    sigma_b2: float = math.nan
    q0: float = 1.0


def _integrals(act: Activation, fns=None):
    """(V, dV, D, VdV): E[phi^2], its q-slope, E[phi'^2] and (V, dV) together; ``fns`` (from
    phase_diagram's tables) or the activation's own integrals."""
    if fns is not None:
        return fns
    V, dV, D = act.second_moment, act.second_moment_slope, act.dphi_second_moment
    return V, dV, D, None


def _param_roots(act: Activation, sb2: np.ndarray, V, D, tol=1e-15):
    """Every root of sigma_b^2(q) = q - E[phi^2] / E[phi'^2] = target on a log grid of q in
    [1e-16, 1e8] (the parameterisation of the fixed points with chi_1 = 1 by q*: Schoenholz et al.
    2017, Sec. 3; Pennington et al. 2017, Sec. 2.3), refined by vectorised Illinois regula falsi
    in log q. A sign change counts only where both grid values stand clear of the rounding of
    q - V/D (2e-13 (q + V/D): the integrals are good to ~1e-15, phase_diagram's tables to
    1e-13); below that the q -> 0 limit candidate and the polishing of _polish_critical take
    over. Returns (row, log q) pairs."""
    def h(lq):
        q = np.exp(lq)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = V(q) / D(q)
        return q - r, 2e-13 * (q + np.abs(r))

    hv, noise = h(_CRIT_GRID)
    f = hv[None, :] - sb2[:, None]
    sure = np.abs(f) > noise[None, :]
    sign_change = (np.sign(f[:, :-1]) * np.sign(f[:, 1:]) < 0) & sure[:, :-1] & sure[:, 1:]
    rows, j = np.nonzero(sign_change)
    target = sb2[rows]
    a, b = _CRIT_GRID[j], _CRIT_GRID[j + 1]
    fa, fb = f[rows, j], f[rows, j + 1]
    out = np.full(rows.size, np.nan)
    idx = np.arange(rows.size)
    side = np.zeros(rows.size)
    for _ in range(200):
        if idx.size == 0:
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            m = b - fb * (b - a) / (fb - fa)
        bad = ~np.isfinite(m) | (m < np.minimum(a, b)) | (m > np.maximum(a, b))
        m = np.where(bad, 0.5 * (a + b), m)
        fm = h(m)[0] - target
        left = np.sign(fm) == np.sign(fa)
        # Illinois: halve the stale end's value when the same end is kept twice
        fb = np.where(left & (side == 1), 0.5 * fb, fb)
        fa = np.where(~left & (side == -1), 0.5 * fa, fa)
        a, fa = np.where(left, m, a), np.where(left, fm, fa)
        b, fb = np.where(left, b, m), np.where(left, fb, fm)
        side = np.where(left, 1, -1)
        done = (np.abs(b - a) <= tol * np.maximum(1.0, np.abs(m))) | (fm == 0)
        out[idx[done]] = m[done]
        keep = ~done
        idx, a, b, fa, fb, side, target = (v[keep] for v in (idx, a, b, fa, fb, side, target))
    out[idx] = 0.5 * (a + b)
    return rows, out


def _candidates(act: Activation, sb2: np.ndarray, fns, limits=(_KIND_ZERO,)):
    """Candidate critical points (row, sigma_w^2, log q*, kind) for the flat array ``sb2``: the
    roots of the q* parameterisation, and the limits of chi_1 = sigma_w^2 E[phi'^2] as q* -> 0
    (sigma_w^2 = 1 / lim_{q->0} E[phi'(sqrt(q) z)^2], e.g. 1 / phi'(0)^2 for smooth phi, and the
    mean of the one-sided squared slopes at a kink at 0, as for selu) and, with ``_KIND_INF`` in
    ``limits``, q* -> inf (relu-like activations: sigma_w^2 = 1 / lim E[phi'^2]), evaluated
    where fixed_point evaluates them (q = 1e-280 and 1e100)."""
    V, _, D, _ = fns
    rows, lq = _param_roots(act, sb2, V, D)
    with np.errstate(divide="ignore"):
        sw2 = 1.0 / D(np.exp(lq)) if lq.size else np.zeros(0)
    parts = [(rows, sw2, lq, np.full(rows.size, _KIND_FINITE))]
    phi0 = float(act.phi(np.zeros(1))[0])
    for kind in limits:
        lq_e = LQ_LO if kind == _KIND_ZERO else LQ_HI
        d, d_in = (float(np.asarray(D(np.exp(np.array([lq_e, lq_e - 20.0 * kind]))), float)[i])
                   for i in (0, 1))
        # a limit of E[phi'^2] (not a power of q: phi'(0) = 0, or tanh-like decay at infinity);
        # q* -> 0 also needs phi(0) = 0
        real = d_in > 0 and abs(d / d_in - 1.0) < 1e-6 and (kind != _KIND_ZERO or phi0 == 0.0)
        if real and math.isfinite(d):
            n = sb2.size
            parts.append((np.arange(n), np.full(n, 1.0 / d), np.full(n, kind * math.inf),
                          np.full(n, kind)))
    rows, sw2, lq, kind = (np.concatenate(v) for v in zip(*parts))
    ok = np.isfinite(sw2) & (sw2 > 0)
    return rows[ok], sw2[ok], lq[ok], kind[ok]


def _chi1_reached(act, sw2, sb2, q0, fns):
    """(chi_1 - 1, log q*) at the fixed point reached from q0, computed as fixed_point does."""
    V, dV, D, VdV = fns
    lq = _q_star(act, sw2, sb2, q0, V=V, dV=dV, VdV=VdV)
    qe = np.exp(np.clip(lq, LQ_LO, LQ_HI))
    return sw2 * D(qe) - 1.0, lq


def _polish_critical(act, sw2, sb2, kind, q0, fns, steps=30):
    """Newton's method on F(sigma_w^2) = chi_1(q*(sigma_w^2)) - 1, q* the fixed point reached from
    q0 (a finite-difference slope; the step stays on the branch the candidate started on: finite,
    or the limit q* = 0 / inf). The q* parameterisation alone gives chi_1 = 1 only to the
    rounding of q - V/D, which near q* = 0 is many times E[phi'^2]'s own: the polishing makes
    |chi_1 - 1| <= 1e-13 at the point fixed_point computes.
    Returns (sigma_w^2, accepted, log q*)."""
    sw2 = sw2.copy()
    F, lq = _chi1_reached(act, sw2, sb2, q0, fns)

    def on_branch(lq_, k):
        """q* = inf only for the q* -> inf limit and always for it (a finite q* or q* -> 0
        otherwise: near sigma_b^2 = 0 the q* -> 0 candidate polishes to a tiny finite q*)."""
        return np.where(k == _KIND_INF, lq_ == np.inf, lq_ < np.inf)

    live = np.flatnonzero(on_branch(lq, kind) & (np.abs(F) > 0.1 * _CRIT_ACCEPT) & np.isfinite(F))
    for _ in range(steps):
        if live.size == 0:
            break
        w, b, k = sw2[live], sb2[live], kind[live]
        dw = 1e-7 * w
        F2, _ = _chi1_reached(act, w + dw, b, q0, fns)
        with np.errstate(divide="ignore", invalid="ignore"):
            wn = w - F[live] * dw / (F2 - F[live])
        good = np.isfinite(wn) & (wn > 0) & (np.abs(wn - w) <= 0.05 * w)
        wn = np.where(good, wn, w)
        Fn, lqn = _chi1_reached(act, wn, b, q0, fns)
        better = good & (np.abs(Fn) < np.abs(F[live])) & on_branch(lqn, k)
        sw2[live] = np.where(better, wn, w)
        F[live] = np.where(better, Fn, F[live])
        lq[live] = np.where(better, lqn, lq[live])
        live = live[better & (np.abs(Fn) > 0.1 * _CRIT_ACCEPT)]
    return sw2, on_branch(lq, kind) & (np.abs(F) <= _CRIT_ACCEPT), lq


def critical_sigma_w2(activation, sigma_b2, *, q0: float = 1.0, _fns=None) -> np.ndarray:
    """The edge of chaos: the sigma_w^2 at which the fixed point q* that the length map reaches
    from ``q0`` has chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2] = 1 (Poole et al. 2016, eq. 7 and
    Fig. 2D; Schoenholz et al. 2017, eq. 6 and Sec. 3; Hayou et al. 2019, Def. 3), vectorised
    over ``sigma_b2``. ``q0`` is :func:`fixed_point`'s: where the iteration of the length map
    starts.

    Branch convention. Candidates: the fixed points with chi_1 = 1 of the parameterisation by
    q* (sigma_w^2(q) = 1 / E[phi'^2], sigma_b^2(q) = q - sigma_w^2(q) E[phi^2]) and, for
    phi(0) = 0 at sigma_b^2 -> 0, the limit q* -> 0; a candidate counts only if
    :func:`fixed_point` from ``q0`` reaches it (silu and gelu at small sigma_b^2: the chi_1 = 1
    point repels, a discontinuous transition). Each is polished (:func:`_polish_critical`) so
    that ``fixed_point(act, result, sigma_b2, q0).chi_1`` is 1 to 1e-13; where several remain,
    the smallest sigma_w^2 is returned (:func:`critical_branches` lists them all).

    Refusals (nan, with one RuntimeWarning naming the sigma_b2 values): no candidate is reached
    from ``q0`` (gelu and silu below sigma_b^2 ~ 0.16 and ~0.54 from q0 = 1, softplus
    everywhere), or chi_1 reaches 1 only as q* -> inf (relu and leaky_relu at sigma_b^2 > 0).
    Homogeneous activations (linear, relu, leaky_relu): sigma_w^2 = 1 / E[phi'^2] at
    sigma_b^2 = 0. Derivation of the conventions: docs/theory/edge-of-chaos.md.
    """
    act = _activation(activation)
    sb2 = check_nonnegative("sigma_b2", sigma_b2)
    q0 = _check_scalar("q0", q0, check_positive)
    scalar = sb2.ndim == 0
    flat = np.atleast_1d(sb2).astype(float).ravel()
    out = np.full(flat.shape, np.nan)
    if act.name in ("linear", "relu", "leaky_relu"):
        d = float(act.dphi_second_moment(1.0))
        out[flat == 0] = 1.0 / d
    elif flat.size:
        fns = _integrals(act, _fns)
        rows, sw2, lq, kind = _candidates(act, flat, fns)
        if rows.size:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                sw2, ok, _ = _polish_critical(act, sw2, flat[rows], kind, q0, fns)
            rows, sw2 = rows[ok], sw2[ok]
            order = np.lexsort((sw2, rows))            # the smallest sigma_w^2 of each row
            rows, sw2 = rows[order], sw2[order]
            first = np.r_[True, rows[1:] != rows[:-1]] if rows.size else np.zeros(0, bool)
            out[rows[first]] = sw2[first]
    out = out.reshape(np.shape(np.atleast_1d(sb2)))
    if np.any(np.isnan(out)):
        warnings.warn(f"{act.name}: no edge of chaos (a fixed point with chi_1 = 1 that the "
                      f"length map reaches from q0 = {q0:g}) at sigma_b2 = "
                      f"{np.atleast_1d(sb2)[np.isnan(out)].tolist()[:5]}; returned nan there "
                      f"(critical_branches lists the chi_1 = 1 points that are not reached)",
                      RuntimeWarning, stacklevel=2)
    return out[0] if scalar else out


def critical_branches(activation, sigma_b2: float, *, q0: float = 1.0) -> tuple:
    """Every chi_1 = 1 point at one ``sigma_b2``, reached from ``q0`` or not, as
    :class:`CriticalBranch` records sorted by sigma_w^2: the roots of the q* parameterisation
    (Schoenholz et al. 2017, Sec. 3; Hayou et al. 2019), and the limits q* -> 0 and q* -> inf.
    :func:`critical_sigma_w2` returns the smallest ``sigma_w2`` of the records with ``reached``
    and a ``kind`` other than "q*=inf". For example silu at sigma_b^2 = 0.04: one finite branch at
    sigma_w^2 = 2.8208 with length slope 1.2 > 1 (repelling, not reached), so no edge of chaos."""
    act = _activation(activation)
    sb2 = float(_check_scalar("sigma_b2", sigma_b2, check_nonnegative))
    q0 = _check_scalar("q0", q0, check_positive)
    if act.name in ("linear", "relu", "leaky_relu"):
        d = float(act.dphi_second_moment(1.0))
        if sb2 == 0:
            return (CriticalBranch(1.0 / d, q0, 1.0, True, "finite", sb2, q0),)
        return (CriticalBranch(1.0 / d, math.inf, 1.0, True, "q*=inf", sb2, q0),)
    fns = _integrals(act)
    rows, sw2_0, lq, kind = _candidates(act, np.array([sb2]), fns, (_KIND_ZERO, _KIND_INF))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sw2, ok, _ = _polish_critical(act, sw2_0, np.full(rows.size, sb2), kind, q0, fns)
    names = {_KIND_FINITE: "finite", _KIND_ZERO: "q*=0", _KIND_INF: "q*=inf"}
    out = []
    for w0, w, l, k, r in zip(sw2_0, sw2, lq, kind, ok):
        q = math.exp(l) if math.isfinite(l) else (0.0 if l < 0 else math.inf)
        qe = math.exp(min(max(l, LQ_LO), LQ_HI))
        slope = float(w0 * np.asarray(fns[1](np.array([qe])), float)[0])
        out.append(CriticalBranch(float(w if r else w0), q, slope, bool(r), names[int(k)], sb2, q0))
    return tuple(sorted(out, key=lambda b: b.sigma_w2))


# ---------------------------------------------------------------------------------------------
# phase diagram


from .tables import _LogQTable  # noqa: E402,F401  (re-exported: it lived here)

_STAGE1_K = 48      # Mehler terms of the first, cheap Newton stage for c*


def _powers(c: np.ndarray, K: int) -> np.ndarray:
    """P[i, k] = c_i^k, k < K, by repeated doubling (each entry a product of <= 2 log2 K
    factors: relative error ~log2(K) eps)."""
    P = np.empty((c.size, K))
    P[:, 0] = 1.0
    if K > 1:
        P[:, 1] = c
    n = 2
    while n < K:
        m = min(n, K - n)
        np.multiply(P[:, :m], (P[:, n - 1] * c)[:, None], out=P[:, n:n + m])
        n += m
    return P


def _mehler_groups(act: Activation, q: np.ndarray):
    """Mehler coefficients b_k(q) = a_k(q)^2 of every point from the activation's table
    (``tables.mehler_sq`` in bulk): a list of (rows, b) with b of shape (len(rows), K), K the
    number of terms of the rows' panel; the rows of points without a table are left out."""
    tab = tables.tables_of(act).meh
    if tab is False:
        return []
    k, t, inside = tab.locate(np.log(q))
    idx = np.flatnonzero(inside)
    tab.build(np.unique(k[idx]))
    groups = []
    order = idx[np.argsort(k[idx], kind="stable")]
    kk = k[order]
    starts = np.flatnonzero(np.r_[True, kk[1:] != kk[:-1]]) if kk.size else np.array([], int)
    for a, b in zip(starts, np.r_[starts[1:], kk.size]):
        coef = tab.panels[kk[a]]
        if coef is False:
            continue
        rows = order[a:b]
        T = np.cos(np.arccos(t[rows])[:, None] * tables._KS)   # T_j(t), j = 0..deg
        groups.append((rows, T @ coef))
    return groups


def _series_and_slope(c, bT):
    """sum_k b_k c^k and sum_k k b_k c^(k-1) for many points, with the terms stored transposed,
    bT[k, i] = b_k of point i: by Horner's rule (one pass over the terms, 4 vector operations per
    term), or for few points, where those operations' overhead dominates, by the powers of c."""
    K = bT.shape[0]
    if c.size < 256:
        P = _powers(c, K)
        y = np.einsum("ij,ji->i", P, bT)
        dy = np.einsum("ij,ji->i", P[:, :K - 1], bT[1:] * np.arange(1.0, K)[:, None])
        return y, dy
    y = bT[-1].copy()
    dy = np.zeros_like(y)
    for k in range(bT.shape[0] - 2, -1, -1):
        dy *= c
        dy += y
        y *= c
        y += bT[k]
    return y, dy


def _c_star_mehler(act: Activation, q, sw2, sb2, V, tol=4e-15):
    """c* and E[phi'(u1) phi'(u2)] at c* for many chaotic points, by Mehler's series.

    E[phi(u1) phi(u2)] = sum_k b_k c^k and E[phi'(u1) phi'(u2)] = sum_k k b_k c^(k-1) / q
    (Mehler 1866; the second by Price's theorem, d/dc = q E[phi' phi']), with b_k = a_k(q)^2 from
    the activation's Mehler table (``tables.mehler_sq``). Parseval (sum_k b_k = E[phi^2] = ``V``)
    certifies each point to 1e-12; points that fail it, or lie outside the table, are returned as
    nan for the caller to compute with the direct engine. c* is the root of C(c) - c in [-1, 1)
    by safeguarded Newton (first ``_STAGE1_K`` terms, then K terms with |c|^K <= 1e-18, then one
    polishing step); the slope returned is the one of that last evaluation. Truncation bounds:
    docs/theory/edge-of-chaos.md.
    """
    m = q.size
    c_out, d_out = np.full(m, np.nan), np.full(m, np.nan)
    rows_l, b_l = [], []
    for rows, b in _mehler_groups(act, q):
        ok = np.abs(b.sum(axis=1) - V[rows]) <= 1e-12 * V[rows]      # Parseval
        if np.any(ok):
            rows_l.append(rows[ok])
            b_l.append(b[ok])
    if not rows_l:
        return c_out, d_out
    rows = np.concatenate(rows_l)
    nterms = np.concatenate([np.full(r.size, b.shape[1]) for r, b in zip(rows_l, b_l)])

    def gather(K, pick=None):
        """The first K terms (zero-padded) of the points ``pick`` (default: all), transposed."""
        pick = np.arange(rows.size) if pick is None else pick
        out = np.zeros((K, pick.size))
        start = 0
        for b in b_l:
            sel = pick[(pick >= start) & (pick < start + b.shape[0])]
            if sel.size:
                kk = min(K, b.shape[1])
                out[:kk, np.searchsorted(pick, sel)] = b[sel - start, :kk].T
            start += b.shape[0]
        return out

    def newton(c, r, bT, step_tol, max_iter=60):
        """Safeguarded Newton from c on the points r (terms bT); returns c and the brackets."""
        w, s, qq = sw2[r], sb2[r], q[r]
        lo, hi = np.full(c.size, -1.0), np.ones(c.size)
        live = np.arange(c.size)
        for _ in range(max_iter):
            if live.size == 0:
                break
            cr = c[live]
            K0, dK = _series_and_slope(cr, bT)
            F = (w * K0 + s) / qq - cr
            cn, lo[live], hi[live] = _newton_step_c(cr, F, w * dK / qq, lo[live], hi[live])
            cn = np.where(F == 0, cr, cn)          # a root to rounding: stays (no bisection)
            c[live] = cn
            keep = (np.abs(cn - cr) > step_tol) & (hi[live] - lo[live] > tol) & (F != 0)
            if not keep.all():                     # carry on with the unconverged points only
                live, bT = live[keep], bT[:, keep]
                w, s, qq = w[keep], s[keep], qq[keep]
        return c, lo, hi

    # stage 1: the first terms only, every point at once
    c = newton(np.zeros(rows.size), rows, gather(min(_STAGE1_K, int(nterms.max()))), 1e-10)[0]
    # stage 2: by the number of terms that matter at c
    kc = np.minimum(nterms, 41.5 / -np.log(np.minimum(np.abs(c) + 0.02, 1.0 - 1e-9)))
    # few groups (the terms beyond a point's own are zeros): K in 32 * 2^(j/2), j = 0, 1, ...
    need = (32 * 2.0 ** (np.ceil(2 * np.log2(np.maximum(kc, 32) / 32) - 1e-9) / 2)).astype(int)
    need = np.where(nterms <= _STAGE1_K, nterms, np.maximum(need, 1))
    for Kb in np.unique(need):
        pick = np.flatnonzero(need == Kb)
        r, bT = rows[pick], gather(int(Kb), pick)
        cb, lo, hi = newton(c[pick], r, bT, 1e-8)
        K0, dK = _series_and_slope(cb, bT)         # one polishing step, and the slope
        w = sw2[r]
        dC = w * dK / q[r]
        with np.errstate(divide="ignore", invalid="ignore"):
            cn = cb - ((w * K0 + sb2[r]) / q[r] - cb) / (dC - 1.0)
        c_out[r] = np.where(np.isfinite(cn) & (cn >= lo) & (cn <= hi), cn, cb)
        d_out[r] = dK / q[r]
    return c_out, d_out


_PD_MAX_BYTES = 4 * 2**30     #: phase_diagram's cap on its working memory (4 GiB)
_PD_BYTES_PER_CELL = 5120     #: peak working memory per grid cell, with a margin (below)


def _check_grid_size(n_w: int, n_b: int) -> None:
    """Refuse a phase-diagram grid whose working arrays would exceed _PD_MAX_BYTES (4 GiB):
    every cell carries tens of float64 arrays through the fixed-point iteration, the tables'
    barycentric evaluation and (chaotic cells) Mehler's series; the peak measured with
    tracemalloc is 2.4 KB per cell for tanh (256^2 and 512^2 grids) and 4.7 KB for gelu
    (256^2), so 5 KiB per cell is counted: at most 838860 cells (e.g. 915 x 915)."""
    cells = n_w * n_b
    need = cells * _PD_BYTES_PER_CELL
    if need > _PD_MAX_BYTES:
        raise ValueError(
            f"phase_diagram: a {n_b} x {n_w} grid (sigma_b2 x sigma_w2, {cells:.3g} cells) would "
            f"need about {need / 2**30:.3g} GiB of working memory; the limit is "
            f"{_PD_MAX_BYTES / 2**30:g} GiB ({_PD_MAX_BYTES // _PD_BYTES_PER_CELL} cells, e.g. "
            f"{math.isqrt(_PD_MAX_BYTES // _PD_BYTES_PER_CELL)} x "
            f"{math.isqrt(_PD_MAX_BYTES // _PD_BYTES_PER_CELL)}): use fewer points of sigma_w2 "
            f"or sigma_b2, or compute the diagram in blocks of sigma_b2")


def phase_diagram(activation, sigma_w2, sigma_b2, *, q0: float = 1.0) -> PhaseDiagram:
    """q*, chi_1, c* and xi_c on the grid ``sigma_w2`` x ``sigma_b2`` (1-D arrays), vectorised,
    with the critical line at each ``sigma_b2`` (Poole et al. 2016, Fig. 2; Schoenholz et al.
    2017, Fig. 1). Arrays have shape (len(sigma_b2), len(sigma_w2)).

    ``q0``: where the length map starts (:func:`fixed_point`); the critical line is
    :func:`critical_sigma_w2`'s for the same ``q0``, and a cell with |chi_1 - 1| <= 1e-12 is
    critical (xi_c = inf), as in :func:`fixed_point`. A grid whose working memory would exceed
    4 GiB (5 KiB a cell: about 8.4e5 cells, e.g. 915 x 915) is refused up front with a
    ValueError that says how much it would need.

    For activations without closed forms the one-dimensional integrals come from a Chebyshev
    table in log q (``tables._LogQTable``, ~1e-15, kept with the activation) and the chaotic c*
    from Mehler's series (``_c_star_mehler``, certified by Parseval to 1e-12, else computed
    directly): the same numbers as :func:`fixed_point` to ~1e-12, at a fraction of the cost.
    """
    act = _activation(activation)
    sw = np.atleast_1d(check_positive("sigma_w2", sigma_w2)).astype(float)
    sb = np.atleast_1d(check_nonnegative("sigma_b2", sigma_b2)).astype(float)
    q0 = _check_scalar("q0", q0, check_positive)
    _check_grid_size(sw.size, sb.size)
    SW, SB = np.meshgrid(sw, sb)
    closed = type(act).cross_moment is not Activation.cross_moment
    if closed:
        V, dV, D = act.second_moment, act.second_moment_slope, act.dphi_second_moment
    else:
        t = tables.tables_of(act).pd
        V, dV, D = (lambda q: t(q)[..., 0]), (lambda q: t(q)[..., 1]), (lambda q: t(q)[..., 2])

        def VdV(q):
            vals = t(q)
            return vals[..., 0], vals[..., 1]
    lq = _q_star(act, SW, SB, q0, V=V, dV=dV, VdV=None if closed else VdV)
    q_star = np.exp(lq)
    qe = np.exp(np.clip(lq, LQ_LO, LQ_HI))
    chi_1 = SW * D(qe)
    c_star = np.ones_like(q_star)
    chi_c = chi_1.copy()
    chaotic = (chi_1 > 1.0 + _CRIT_TOL) & np.isfinite(lq)
    if np.any(chaotic):
        c_star[chaotic], chi_c[chaotic] = _chaotic_c_star(act, qe[chaotic], SW[chaotic],
                                                          SB[chaotic], closed, V)
    limit = ~np.isfinite(lq)                 # q* = 0 or inf: the limiting correlation map
    if np.any(limit):
        chi_c[limit] = _limit_c_slope(chi_c[limit], SW[limit] * V(qe[limit]) / qe[limit])
    with np.errstate(divide="ignore"):
        xi_c = np.where(np.abs(np.log(chi_c)) > 0, -1.0 / np.log(chi_c), np.inf)
    xi_c[np.abs(chi_1 - 1.0) <= _CRIT_TOL] = np.inf       # critical (_regime): xi_c = inf
    chi_c = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        crit = np.atleast_1d(critical_sigma_w2(act, sb, q0=q0, _fns=None if closed else
                                               (V, dV, D, VdV)))
    return PhaseDiagram(activation=act.name, sigma_w2=sw, sigma_b2=sb, q_star=q_star, chi_1=chi_1,
                        xi_c=xi_c, c_star=c_star, critical_sigma_w2=crit)
