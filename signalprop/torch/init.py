"""Initialising a PyTorch module's ``Linear`` layers in place: :func:`initialise` (a named scheme or
the edge of chaos) and :func:`edge_of_chaos_init`.

Every ``Linear`` layer the mapping reads (:func:`signalprop.torch.mapping.map_module`) gets
``W_ij`` of variance ``sigma_w2 / fan_in`` and ``b_i ~ N(0, sigma_b2)`` (zero when
``sigma_b2 = 0``), drawn with the law ``weights`` as in signalprop's dense sampler
(:mod:`signalprop.layers.dense`): gaussian ``N(0, sigma_w2 / fan_in)``; uniform
``U(-a, a)``, ``a = sqrt(3 sigma_w2 / fan_in)``; orthogonal ``W = s O`` with ``O``
(semi-)orthogonal (``torch.nn.init.orthogonal_``) and ``s = sigma_w sqrt(max(N_out, N_in) /
N_in)`` so that ``E[W_ij^2] = sigma_w2 / fan_in`` (CONVENTIONS.md).

``sigma_w2`` per layer:

* ``"critical"``: the edge of chaos of the activation that follows the layer,
  ``signalprop.critical_sigma_w2(phi, sigma_b2)`` (chi_1 = sigma_w2 E[phi'(sqrt(q*) z)^2] = 1 at
  the fixed point q* reached from q0 = 1; Poole et al. 2016, eq. 7; Schoenholz et al. 2017,
  eq. 6). A layer with no activation after it (a read-out, the second layer of a residual
  branch) gets ``sigma_w2 = 1`` and no bias (the linear map's critical point, chi_1 = 1), and a
  layer followed by batch normalisation ``sigma_w2 = 1`` and no bias (batch normalisation
  removes both the scale and the bias of ``W x + b``). An activation without an edge of chaos
  at that ``sigma_b2`` (relu with a bias, softplus, gelu below sigma_b2 ~ 0.16) is a ValueError
  naming the layer.
* ``"lecun"``, ``"he"``/``"kaiming"``, ``"xavier"``/``"glorot"``, ``"orthogonal"``: the table of
  :func:`signalprop.network.init_sigma_w2` (``gain`` scales the standard deviation);
  ``"orthogonal"`` implies orthogonal weights.
* ``"default"``: PyTorch's own ``reset_parameters()`` (``sigma_w2 = 1/3``, uniform weights,
  uniform bias of variance ``1/(3 fan_in)``).

The returned :class:`InitReport` lists what was set per layer and carries the exact
:class:`~signalprop.network.Network` of the initialised module (``report.network``), for
``predict``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from .._validate import check_choice, nonnegative_scalar, short_repr
from ..meanfield import critical_sigma_w2, fixed_point
from ..network import INITS, WEIGHTS, Network, init_sigma_w2
from ..results import _Result
from .mapping import _where, map_module

__all__ = ["initialise", "edge_of_chaos_init", "InitReport", "InitEntry", "SCHEMES"]

SCHEMES = ("critical", "default") + INITS


@dataclass(frozen=True)
class InitEntry:
    """One ``Linear`` layer: its path in the model, the activation after it, the variances and
    law it was given, and chi_1 of that activation at them (None for a layer with no activation
    after it or with batch normalisation)."""

    path: str
    activation: str
    sigma_w2: float
    sigma_b2: float
    weights: str
    chi_1: Optional[float]


@dataclass(frozen=True, eq=False)
class InitReport(_Result):
    """What :func:`initialise` set: ``scheme``, one :class:`InitEntry` per ``Linear`` layer, and
    ``network``, the signalprop network of the module as initialised."""

    scheme: str
    entries: tuple
    network: Network


def _draw(mod: nn.Linear, sw2: float, sb2: float, weights: str) -> None:
    """Set ``mod``'s weight and bias in place (module docstring)."""
    n_out, n_in = mod.weight.shape
    W = mod.weight
    if weights == "gaussian":
        nn.init.normal_(W, 0.0, math.sqrt(sw2 / n_in))
    elif weights == "uniform":
        a = math.sqrt(3.0 * sw2 / n_in)
        nn.init.uniform_(W, -a, a)
    else:
        nn.init.orthogonal_(W, gain=math.sqrt(sw2 * max(n_out, n_in) / n_in))
    if mod.bias is not None:
        if sb2 > 0:
            nn.init.normal_(mod.bias, 0.0, math.sqrt(sb2))
        else:
            nn.init.zeros_(mod.bias)


def _sigma_w2(scheme: str, site, mod: nn.Linear, sigma_b2: float, gain: float) -> tuple:
    """(sigma_w2, sigma_b2) of one layer under ``scheme``."""
    fan_out, fan_in = mod.weight.shape
    if scheme != "critical":
        return init_sigma_w2(scheme, int(fan_in), int(fan_out), gain), sigma_b2
    act = site.activation
    if site.batch_norm or act.name == "linear":
        return 1.0, 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sw2 = float(critical_sigma_w2(act, sigma_b2))
    if not math.isfinite(sw2):
        raise ValueError(f"{_where(site.path)} (Linear, then {act.name}): {act.name} has no edge of "
                         f"chaos at sigma_b2 = {sigma_b2:g} (signalprop.critical_branches lists "
                         "the chi_1 = 1 points; try another sigma_b2)")
    return sw2, sigma_b2


def initialise(module: nn.Module, scheme: str = "critical", example_input=None, *,
               sigma_b2: float = 0.0, weights: Optional[str] = None, gain: float = 1.0,
               seed: Optional[int] = None) -> InitReport:
    """Initialise every ``Linear`` layer of ``module`` in place with ``scheme`` (module docstring:
    ``"critical"``, ``"default"``, ``"lecun"``, ``"he"``, ``"kaiming"``, ``"xavier"``,
    ``"glorot"``, ``"orthogonal"``) and return an :class:`InitReport`.

    ``example_input``: as for :func:`~signalprop.torch.from_module` (needed with batch
    normalisation, for the batch size of ``report.network``). ``sigma_b2``: bias variance
    (>= 0; the edge of chaos depends on it). ``weights``: gaussian (default), uniform or
    orthogonal. ``gain``: multiplies the standard deviation of the named schemes. ``seed``: an
    int makes the draw reproducible without touching the global generator (``fork_rng``).
    """
    scheme = check_choice("scheme", scheme, SCHEMES)
    sigma_b2 = float(nonnegative_scalar("sigma_b2", sigma_b2))
    if weights is None:
        weights = "orthogonal" if scheme == "orthogonal" else "gaussian"
    weights = check_choice("weights", weights, WEIGHTS)
    if scheme == "orthogonal" and weights != "orthogonal":
        raise ValueError("scheme='orthogonal' implies weights='orthogonal'")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be None or an int >= 0, got {short_repr(seed)}")
    mapped = map_module(module, example_input)
    mods = dict(module.named_modules())
    plan = {}
    for site in mapped.linears:
        mod = mods[site.path]
        if scheme == "default":
            sb2 = 1.0 / (3.0 * mod.in_features) if mod.bias is not None else 0.0
            plan[site.path] = (1.0 / 3.0, sb2, "uniform")
        else:
            sw2, sb2 = _sigma_w2(scheme, site, mod, sigma_b2, gain)
            plan[site.path] = (sw2, sb2 if mod.bias is not None else 0.0, weights)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            for site in mapped.linears:
                mod = mods[site.path]
                if scheme == "default":
                    mod.reset_parameters()
                else:
                    _draw(mod, *plan[site.path])
    entries = []
    for site in mapped.linears:
        sw2, sb2, w = plan[site.path]
        chi = None
        if not site.batch_norm and site.activation.name != "linear":
            chi = float(fixed_point(site.activation, sw2, sb2).chi_1)
        entries.append(InitEntry(site.path, site.activation.name, sw2, sb2, w, chi))
    network = map_module(module, example_input, plan).network
    return InitReport(scheme, tuple(entries), network)


def edge_of_chaos_init(module: nn.Module, example_input=None, *, sigma_b2: float = 0.0,
                       weights: str = "gaussian", seed: Optional[int] = None) -> InitReport:
    """``initialise(module, "critical", ...)``: every ``Linear`` followed by an activation phi at
    ``sigma_w2 = critical_sigma_w2(phi, sigma_b2)`` (chi_1 = 1), the others at ``sigma_w2 = 1``
    without bias (module docstring)."""
    return initialise(module, "critical", example_input, sigma_b2=sigma_b2, weights=weights,
                      seed=seed)
