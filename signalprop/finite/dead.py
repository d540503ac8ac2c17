"""Dead ReLU networks at initialisation: :func:`dead_probability` (exact at a point) and its
Monte Carlo over a region, with the result :class:`DeadNetwork`.

References to sections (§1, section 2, ...) and to "the module docstring" in the docstrings
below are to the package docstring of :mod:`signalprop.finite`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .._validate import check_int, check_memory, positive_scalar
from ..network import Network
from ..results import _Result
from .laws import _check_network
from .local import _kind

__all__ = ["DeadNetwork", "dead_probability"]


# ---------------------------------------------------------------------------------------------
# dead ReLU networks (Lu, Shin, Su & Karniadakis 2019, arXiv 1903.06733)


@dataclass(frozen=True, eq=False)
class DeadNetwork(_Result):
    """Dying ReLU at initialisation (:func:`dead_probability`), per layer ``l = 1..L``.

    Exact (any widths, biases, input dimension; symmetric continuous weights):
    ``p_dead_point``: P(some ReLU layer ``k <= L-1`` has all units inactive at the input), which
    makes the output locally constant there (zero input gradient; without biases every weight
    gradient is zero too); ``p_first_dead[l]``: P(layer ``l`` is the first such layer);
    ``inactive_fraction``: E[fraction of units with ``h <= 0``] at the input.
    Monte Carlo over a region (``samples > 0``), with standard errors: ``p_born_dead``: P(the
    output is constant on the whole region); ``dead_unit_fraction``: E[fraction of units with
    ``h <= 0`` everywhere on the region]; ``p_dead_point_mc``: the exact value re-estimated.
    ``region`` and ``method`` say what was computed and how; ``note`` gives caveats.
    """

    layers: np.ndarray
    widths: np.ndarray
    activations: tuple
    p_dead_point: float
    p_first_dead: np.ndarray
    inactive_fraction: np.ndarray
    region: str = ""
    method: str = ""
    samples: int = 0
    p_born_dead: float = math.nan
    p_born_dead_se: float = math.nan
    dead_unit_fraction: Optional[np.ndarray] = None
    dead_unit_fraction_se: Optional[np.ndarray] = None
    p_dead_point_mc: float = math.nan
    p_dead_point_mc_se: float = math.nan
    note: str = ""
    meta: dict = field(default_factory=dict)


def _relu_layers(network: Network) -> np.ndarray:
    """Mask of layers whose activation is ReLU (leaky slope 0); hard_tanh is refused."""
    mask = []
    for i, la in enumerate(network.layers):
        act = la.activation
        if act.name == "hard_tanh":
            raise ValueError(f"layer {i + 1} is hard_tanh: its units die by saturation "
                             "(phi' = 0 for |h| > 1), which dead_probability does not derive; "
                             "use simulate()")
        mask.append(_kind(act) == "relu")
    return np.array(mask, bool)


def _mc_layers(network: Network, X: np.ndarray, rng: np.random.Generator):
    """Forward pass of ``S`` sampled networks on points ``X`` (S, P, N_0): per layer the boolean
    (S, P, N_l) mask ``h <= 0`` and the output ``h^L`` (S, P, N_L). Gaussian weights."""
    masks = []
    x = X
    for i, la in enumerate(network.layers):
        n_in = x.shape[-1]
        W = rng.standard_normal((x.shape[0], la.width, n_in)) * math.sqrt(la.sigma_w2 / n_in)
        h = np.einsum("spn,skn->spk", x, W)
        if la.sigma_b2 > 0:
            h += rng.standard_normal((x.shape[0], 1, la.width)) * math.sqrt(la.sigma_b2)
        masks.append(h <= 0)
        x = np.asarray(la.activation.phi(h), float)
    return masks, h


def _breakpoint_network(network: Network, r: float, rng: np.random.Generator):
    """One sampled network with a 1-d input on [-r, r], exactly: the pre-activations are piecewise
    linear with kinks where earlier units cross 0, so tracking every crossing gives their maxima
    on the interval exactly. Returns (per-layer fraction of units with h <= 0 on the whole
    interval, layer fully inactive on the interval, output constant on the interval)."""
    pts = np.array([-r, r])
    x = pts[:, None]
    frac, dead = [], []
    for la in network.layers:
        n_in = x.shape[1]
        W = rng.standard_normal((la.width, n_in)) * math.sqrt(la.sigma_w2 / n_in)
        b = rng.standard_normal(la.width) * math.sqrt(la.sigma_b2) if la.sigma_b2 > 0 else 0.0
        h = x @ W.T + b
        a, c = h[:-1], h[1:]
        cross = (a * c) < 0
        if np.any(cross):
            i, j = np.nonzero(cross)
            t = a[i, j] / (a[i, j] - c[i, j])
            new = pts[i] + t * (pts[i + 1] - pts[i])
            allp = np.concatenate([pts, new])
            order = np.argsort(allp, kind="stable")
            hx = np.empty((len(allp), h.shape[1]))
            for k in range(h.shape[1]):
                hx[:, k] = np.interp(allp, pts, h[:, k])
            pts, h = allp[order], hx[order]
            keep = np.concatenate([[True], np.diff(pts) > 0])
            pts, h = pts[keep], h[keep]
        inactive = np.all(h <= 0, axis=0)
        frac.append(inactive.mean())
        dead.append(bool(inactive.all()))
        x = np.asarray(la.activation.phi(h), float)
    scale = max(1.0, float(np.max(np.abs(h))))
    const = bool(np.all(np.max(h, axis=0) - np.min(h, axis=0) <= 1e-12 * scale))
    return np.array(frac), np.array(dead), const


def _check_dead_work(network: Network, samples: int, points: int) -> None:
    """Refuse up front a Monte Carlo of :func:`dead_probability` that cannot fit in memory: its
    per-sample arrays (``samples x (L + 2)``), the ``points x N_0`` inputs, and one sampled
    network's dense ``N_l x N_{l-1}`` weights with its ``points x N_l`` pre-activations."""
    w = [int(x) for x in network.widths]
    n_pts = 2 if w[0] == 1 else points
    per_net = max(a * b + 2 * n_pts * b for a, b in zip(w[:-1], w[1:])) * 8.0
    check_memory(f"dead_probability(samples={samples}, points={points}) on widths up to {max(w)}",
                 samples * (network.depth + 2) * 8.0 + n_pts * w[0] * 8.0 + per_net)


def dead_probability(network: Network, *, samples: int = 0, seed: int = 0, radius: float = 1.0,
                     points: int = 256) -> DeadNetwork:
    """Probability that a ReLU network is dead at initialisation (Lu et al. 2019).

    **Exact, at a point** (derived; CONVENTIONS.md network, loss on ``h^L``, so layer L's own
    activation never matters). Given ``x^{k-1} != 0`` (or ``sigma_b^2 > 0``), the units of ``h^k``
    are i.i.d. and symmetric about 0 (Gaussian rows, or Haar rows: sign flips), so layer ``k``
    is fully inactive with probability ``2^{-N_k}`` independently of the past:

        P(dead at x) = 1 - prod_{k <= L-1, ReLU} (1 - 2^{-N_k}),   P(first dead = k) = 2^{-N_k} prod_{j<k} (1 - 2^{-N_j}).

    For L - 1 hidden layers of width N this is LITERATURE §9's ``1 - (1 - 2^{-N})^{L-1}``. A dead
    layer makes the output constant near x; without biases every later pre-activation is 0, so
    (relu'(0) = 0) every weight gradient vanishes. Leaky ReLU, GELU and the smooth activations
    have ``phi' != 0`` almost everywhere and are never dead (probability 0).

    **Born dead on a region** (Monte Carlo, ``samples`` networks, standard errors): the output is
    constant on the whole region. Input dimension 1 without biases: the region is all of R and
    two points suffice (positive homogeneity: dead on (0, inf) iff dead at +1, on (-inf, 0) iff at
    -1); input dimension 1 with biases: the interval ``[-radius, radius]``, exactly, by tracking
    the kinks of every unit (:func:`_breakpoint_network`); input dimension > 1: ``points`` random
    points of the sphere of radius ``radius sqrt(N_0)`` (an estimate: a unit inactive at every
    sampled point may be active elsewhere, so dead fractions are over-estimated).
    """
    _check_network(network)
    samples = check_int("samples", samples, 0)
    seed = check_int("seed", seed, 0)
    radius = positive_scalar("radius", radius)
    points = check_int("points", points, 1)
    if samples:
        _check_dead_work(network, samples, points)
    relu = _relu_layers(network)
    L = network.depth
    n = network.widths[1:].astype(float)
    p_off = np.where(relu, 0.5 ** n, 0.0)
    p_off_used = p_off.copy()
    p_off_used[L - 1] = 0.0                       # layer L's activation is not used
    alive = np.cumprod(1.0 - p_off_used)
    p_dead = float(1.0 - alive[-1])
    first = p_off_used * np.concatenate([[1.0], alive[:-1]])
    no_bias = all(la.sigma_b2 == 0 for la in network.layers)
    prev_dead = np.concatenate([[0.0], 1.0 - alive[:-1]])
    inactive = np.where(relu, 0.5 + (0.5 * prev_dead if no_bias else 0.0), 0.0)
    acts = tuple(la.activation.name for la in network.layers)
    note = ""
    if not relu.any():
        note = "no ReLU layer: phi' != 0 almost everywhere, the network is never dead"
    kw = dict(layers=np.arange(1, L + 1), widths=network.widths.copy(), activations=acts,
              p_dead_point=p_dead, p_first_dead=first, inactive_fraction=inactive)
    if samples == 0:
        return DeadNetwork(**kw, region="a point", method="exact", note=note,
                           meta={"source": "dead_probability"})
    rng = np.random.default_rng(seed)
    n0 = network.input_width
    fr = np.zeros((samples, L))
    born = np.zeros(samples, bool)
    point = np.zeros(samples, bool)
    used = slice(0, L - 1)
    if n0 == 1 and no_bias:
        region, method = "all of R (input dimension 1)", "two points +-1 (positive homogeneity)"
        X = np.array([[1.0], [-1.0]])
    elif n0 == 1:
        region, method = f"[-{radius:g}, {radius:g}]", "exact kink tracking per network"
        X = None
    else:
        region = f"sphere of radius {radius:g} sqrt(N_0)"
        method = f"{points} random points (estimate; over-estimates dead units)"
        g = np.random.default_rng(seed + 1).standard_normal((points, n0))
        X = radius * math.sqrt(n0) * g / np.linalg.norm(g, axis=1, keepdims=True)
    if X is not None:
        chunk = max(1, int(4e6 // (len(X) * max(network.widths) ** 2)))
        for s0 in range(0, samples, chunk):
            s1 = min(samples, s0 + chunk)
            masks, hL = _mc_layers(network, np.broadcast_to(X, (s1 - s0,) + X.shape), rng)
            dead_layer = np.zeros((s1 - s0, len(X)), bool)
            for i, m in enumerate(masks):
                fr[s0:s1, i] = np.all(m, axis=1).mean(axis=1) if relu[i] else 0.0
                if i < L - 1 and relu[i]:
                    dead_layer |= np.all(m, axis=2)
            point[s0:s1] = dead_layer[:, 0]
            if no_bias:
                born[s0:s1] = np.all(dead_layer, axis=1)
            else:
                span = hL.max(axis=1) - hL.min(axis=1)
                born[s0:s1] = np.all(span <= 1e-12 * np.maximum(1.0, np.abs(hL).max(axis=1)), axis=1)
    else:
        for s in range(samples):
            f, d, const = _breakpoint_network(network, radius, rng)
            fr[s] = np.where(relu, f, 0.0)
            born[s] = const
        # the point check uses fresh networks at x = radius
        masks, _ = _mc_layers(network, np.full((samples, 1, 1), radius), rng)
        dl = np.zeros(samples, bool)
        for i, m in enumerate(masks[:L - 1]):
            if relu[i]:
                dl |= np.all(m[:, 0], axis=1)
        point = dl
    del used

    def mean_se(a):
        a = np.asarray(a, float)
        return a.mean(axis=0), a.std(axis=0, ddof=1) / math.sqrt(len(a)) if len(a) > 1 else np.nan

    pb, pb_se = mean_se(born)
    pp, pp_se = mean_se(point)
    df, df_se = mean_se(fr)
    return DeadNetwork(**kw, region=region, method=method, samples=samples, p_born_dead=float(pb),
                       p_born_dead_se=float(pb_se), dead_unit_fraction=df,
                       dead_unit_fraction_se=df_se, p_dead_point_mc=float(pp),
                       p_dead_point_mc_se=float(pp_se), note=note,
                       meta={"source": "dead_probability", "seed": seed})
