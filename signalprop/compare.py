"""Theory against simulation: :func:`compare` applies the agreement rule of CONVENTIONS.md.

A theory value ``t`` (e.g. from :func:`~signalprop.meanfield.predict`) and a Monte Carlo mean
``m`` with standard error ``se`` (from :func:`~signalprop.simulate.simulate`) agree at a layer when

    |m - t| <= sigmas * se + allowance,        sigmas = 4 (CONVENTIONS.md).

A theory that is itself sampled (:func:`signalprop.dmft.predict_tied`, which carries ``*_se``
fields) adds its standard error in quadrature: ``se = sqrt(se_sim^2 + se_theory^2)``.

``allowance`` is the finite-width bias of the theory. Mean-field theory is the N -> infinity limit
and predicts no bias of its own, so the rule uses its order, O(1/N) per layer ("or O(1/N) where
it predicts none"), with an explicit constant:

    q:      kappa * |t| * beta_fwd(l)      beta_fwd(l) = sum_{k=1..l} 1/N_k
    c:      kappa * beta_fwd(l)            (absolute; c is a correlation)
    log_g:  kappa * beta_bwd(l)            beta_bwd(l) = sum_{k=l..L} 1/N_k   (log units)
    log_G:  kappa * beta                   beta = sum_{k=1..L} 1/N_k          (log units)

with ``kappa = 2`` by default: a forward Jensen bias ``sigma_w^2 V''(q) Var(qt^l) / 2`` per layer,
``Var(qt)/q^2 = O(1/N)``, and a backward O(1/N_l) per layer from gradient independence failing
at finite width (Schoenholz et al. 2017, sec. 4); measured coefficients are at most about 1.2
(most below 0.7) for the built-in activations at the points of ``validation/``; means are exact
for relu and linear networks with Gaussian weights and no bias (Hanin & Rolnick 2018; Hanin
2018). The coefficient is not bounded in general (softplus at sigma_b^2 = 0, gelu at
sigma_w^2 = 2: it grows like L^2/N; ``validation/report.md``). The rule is first order in
``beta``; at depth comparable to width (log-normal fluctuations, variance ~ ``5 beta`` for relu,
Hanin & Nica 2019) cases are marked as expected to disagree beforehand
(:func:`expected_to_agree`).

**A theory of order 1** (``predict(..., order=1)``: the leading 1/N correction included,
``meta["order"] = 1``) is held to the next order: its default allowance is the square of its own
correction plus ``kappa_2 = 8`` times the sum of ``1/N_k^2`` over the same layers as ``beta``
(``q``: ``|t| (dlog_q^2 + kappa_2 beta_2)``; ``c``: ``dc^2 + ...``; ``log_g``, ``log_G`` likewise),
the size of the O(1/N^2) terms it leaves out (docs/theory/finite-width-nlo.md).

With a ``batch_size`` B in the simulation's meta every ``1/N_k`` becomes ``B/N_k`` (the B x B
Gram matrix is estimated by N units to a relative O(B/N)). A theory profile that predicts its
own finite-width bias can pass it as ``allowance={field: array}``, which replaces the default for
that field.

**q beyond the float range.** Wherever the rule in units of q cannot be evaluated in float64 at
some layer (theory or simulation q zero, subnormal or infinite, or a term of the rule
overflowing), the whole q field is compared as ``log_q`` instead, reported under the key
``log_q`` and said in ``rule``:

    |log m - log t| <= sigmas * se_log + kappa * beta_fwd(l)     (log units),

``se_log`` = the simulation's ``log_q_se`` (else ``q_se / q``): the rule in units of q divided by
``t``, to first order. ``fields=["log_q"]`` asks for it explicitly.

**k inputs.** ``kernel_log_q`` (L, k; every input's log q) is held to the rule of ``log_q``
(``kappa * beta_fwd(l)`` in log units, se = ``kernel_log_q_se``) and ``kernel_corr`` (L, k, k;
every pair's correlation) to the rule of ``c`` (absolute ``kappa * beta_fwd(l)``), entry by
entry; the diagonal of ``kernel_corr`` is 1 in both and agrees trivially. They are compared by
default when both profiles have them (the same k).

Derivation of every term, the measurements and the failure cases: docs/theory/agreement-rule.md.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ._validate import check_int, check_nonnegative, check_positive, short_repr
from .network import MAX_WIDTH
from .results import Profile, _Result

__all__ = ["compare", "Comparison", "beta", "expected_to_agree", "FIELDS", "ALL_FIELDS",
           "KERNEL_FIELDS", "BETA_LIMIT"]

FIELDS = ("q", "c", "log_g", "log_G")
#: the k-input fields (``predict(inputs=...)``, batch norm, attention; ``simulate`` with k >= 2
#: inputs): compared by default when both profiles have them, per layer and input (pair).
KERNEL_FIELDS = ("kernel_log_q", "kernel_corr")
#: every field compare accepts: FIELDS, ``log_q`` (q compared in logs) and KERNEL_FIELDS.
ALL_FIELDS = FIELDS + ("log_q",) + KERNEL_FIELDS
BETA_LIMIT = 0.5
#: the normal float64 range: q outside it (0, subnormal, inf) is compared as log q.
_TINY, _HUGE = float(np.finfo(float).tiny), float(np.finfo(float).max)


def beta(widths: Sequence[int]) -> float:
    """``sum_{l=1..L} 1/N_l`` of widths ``[N_0, ..., N_L]`` (Hanin 2018's finite-width parameter)."""
    w = np.asarray(widths, float)
    return float(np.sum(1.0 / w[1:]))


def expected_to_agree(widths: Sequence[int], limit: float = BETA_LIMIT) -> bool:
    """The a-priori criterion of the validation suite: mean-field theory is expected to match the
    finite-width means within the O(1/N) allowance when ``beta = sum 1/N_l < limit`` (0.5, i.e.
    depth below about half the width); beyond, depth is comparable to width and the first-order
    rule is not expected to hold."""
    return beta(widths) < limit


@dataclass(frozen=True, eq=False)
class Comparison(_Result):
    """Per-layer comparison of a theory profile with a Monte Carlo profile.

    For each compared field (keys of the dicts): ``theory``, ``simulation``, ``se`` (the Monte
    Carlo standard error), ``diff = simulation - theory``, ``z = diff / se``, ``allowance`` (the
    finite-width allowance), ``agree`` (boolean per layer; layers where either value is not finite
    are excluded and counted in ``skipped``). ``max_abs_z``: the largest ``|z|``;
    ``max_excess``: the largest ``(|diff| - allowance) / se`` (the rule passes when it is
    <= ``sigmas``). ``verdict``: "agree", "disagree" or "inconclusive" (no finite standard error).
    ``rule``: the rule in words. Where ``q`` leaves the float range the q field is compared as
    ``log_q`` (module docstring) and appears in ``fields`` and the dicts under that key. The
    kernel fields' arrays have their shapes, (L, k) and (L, k, k), with layers on the first axis
    (``skipped`` counts entries)."""

    layers: np.ndarray
    fields: tuple
    theory: dict
    simulation: dict
    se: dict
    diff: dict
    z: dict
    allowance: dict
    agree: dict
    skipped: dict
    max_abs_z: float
    max_excess: float
    verdict: str
    rule: str
    sigmas: float
    kappa: float
    beta: float
    meta: dict = field(default_factory=dict)

    @property
    def agrees(self) -> bool:
        return self.verdict == "agree"

    def __repr__(self) -> str:
        """A summary: verdict, the largest |z| and excess of each field with its layer, beta and
        the rule (the per-layer arrays stay in the attributes and in ``to_dict``)."""
        per = []
        for f in self.fields:
            z = np.abs(np.asarray(self.z[f], float))
            ok = np.isfinite(z)
            if ok.any():
                i = int(np.flatnonzero(ok)[np.argmax(z[ok])])
                layer = int(self.layers[np.unravel_index(i, z.shape)[0]])
                text = f"{f}: max |z| {z.flat[i]:.3g} at layer {layer}"
            else:
                text = f"{f}: no finite z"
            bad = int(np.size(self.agree[f]) - np.count_nonzero(self.agree[f]))
            if bad:
                text += f", {bad} layer{'s' if bad > 1 else ''} outside the rule"
            if self.skipped.get(f):
                text += f", {self.skipped[f]} skipped"
            per.append(text)
        return (f"Comparison(verdict={self.verdict!r}, layers={len(self.layers)}, "
                f"max_abs_z={self.max_abs_z:.3g}, max_excess={self.max_excess:.3g}, "
                f"beta={self.beta:.3g}; {'; '.join(per)}; rule: {self.rule})")

    def worst(self) -> tuple:
        """(field, layer, z, excess) of the largest excess over the allowance."""
        best = (None, None, 0.0, -math.inf)
        for f in self.fields:
            with np.errstate(invalid="ignore", divide="ignore"):
                ex = (np.abs(self.diff[f]) - self.allowance[f]) / self.se[f]
            ex = np.where(np.isnan(ex), -np.inf, ex)
            i = int(np.argmax(ex))
            if ex.flat[i] > best[3]:
                layer = int(self.layers[np.unravel_index(i, ex.shape)[0]])
                best = (f, layer, float(np.asarray(self.z[f]).flat[i]), float(ex.flat[i]))
        return best


def _betas(widths, L):
    inv = 1.0 / np.asarray(widths, float)[1:]
    fwd = np.cumsum(inv)
    bwd = np.cumsum(inv[::-1])[::-1]
    return fwd, bwd, float(inv.sum())


KAPPA_2 = 8.0   #: the next-order allowance constant of an order-1 theory (module docstring)


def _second_order(theory: Profile, nlo: dict, widths, L: int, first: dict) -> dict:
    """The default allowances of an order-1 theory: its correction squared plus
    ``KAPPA_2 * sum 1/N_k^2`` (module docstring); at layers whose correction was not derived
    (nan), the order-0 allowance ``first[field]`` instead."""
    inv2 = 1.0 / np.asarray(widths, float)[1:] ** 2
    fwd, bwd, tot = np.cumsum(inv2), np.cumsum(inv2[::-1])[::-1], float(inv2.sum())

    def allow(key, field, nxt):
        v = nlo.get(key)
        if v is None:
            return np.zeros(L) + nxt
        v = np.asarray(v, float)
        return np.where(np.isnan(v), first[field], v * v + nxt)

    out = {"log_q": allow("dlog_q", "log_q", KAPPA_2 * fwd), "c": allow("dc", "c", KAPPA_2 * fwd),
           "log_g": allow("dlog_g", "log_g", KAPPA_2 * bwd),
           "log_G": allow("dlog_G", "log_G", KAPPA_2 * tot)}
    with np.errstate(over="ignore", invalid="ignore"):
        out["q"] = np.abs(np.asarray(theory.q, float)) * out["log_q"]
    if not np.all(np.isfinite(out["q"])):
        del out["q"]
    return out


def _scalar(name: str, value, positive: bool) -> float:
    """A finite real number, > 0 (``positive``) or >= 0."""
    arr = (check_positive if positive else check_nonnegative)(name, value)
    if np.ndim(arr) != 0:
        raise TypeError(f"{name} must be one real number, got {short_repr(value)}")
    return float(arr)


def _widths(widths, L: int) -> list:
    """``[N_0..N_L]``: L + 1 integers in 1..MAX_WIDTH (beta = sum 1/N_l must be finite and
    positive: widths of 0 gave beta = inf, which no rule may call agreement)."""
    flat = (isinstance(widths, (list, tuple)) or (isinstance(widths, np.ndarray) and widths.ndim == 1))
    if not flat or any(isinstance(w, (list, tuple, np.ndarray)) for w in widths):
        raise TypeError(f"widths must be a sequence of L + 1 = {L + 1} integers >= 1, got "
                        f"{short_repr(widths)}")
    if len(widths) != L + 1:
        raise ValueError(f"widths must have L + 1 = {L + 1} entries, got {len(widths)}")
    return [check_int("widths", w, 1, MAX_WIDTH) for w in widths]


def _allowances(allowance, L: int) -> dict:
    """``{field: per-layer array}`` of finite values >= 0, one value or one per layer."""
    if allowance is None:
        return {}
    if not isinstance(allowance, dict):
        raise TypeError(f"allowance must be a dict {{field: per-layer array}}, got "
                        f"{short_repr(allowance)}")
    out = {}
    for f, a in allowance.items():
        if f not in ALL_FIELDS:
            raise ValueError(f"allowance keys must be among {', '.join(ALL_FIELDS)}, got "
                             f"{short_repr(f)}")
        arr = check_nonnegative(f"allowance[{f!r}]", a)
        if arr.ndim > 1 or arr.size not in (1, L):
            raise ValueError(f"allowance[{f!r}] must be one value or one per layer ({L}), got "
                             f"shape {arr.shape}")
        out[f] = np.broadcast_to(np.asarray(arr, float).ravel() if arr.ndim else arr, (L,)).copy()
    return out


def _log_q_se(simulation: Profile) -> np.ndarray:
    """The simulation's standard error of ``log q``: its ``log_q_se``, else ``q_se / q`` (delta
    method) where q is finite and > 0 (nan elsewhere)."""
    if simulation.log_q_se is not None:
        return np.asarray(simulation.log_q_se, float)
    q, se = np.asarray(simulation.q, float), np.asarray(simulation.q_se, float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.where(np.isfinite(q) & (q > 0), se / q, np.nan)


def _q_outside_float_range(t: np.ndarray, m: np.ndarray, se: np.ndarray, a: np.ndarray,
                           sigmas: float) -> np.ndarray:
    """Layers where the rule in units of q cannot be evaluated in float64: theory or simulation q
    is not a normal number (0, subnormal, inf), or ``|m - t|``, ``sigmas se`` or the allowance
    overflows. (A standard error of nan, e.g. one sample, is no reason: it means no se.)"""
    with np.errstate(over="ignore", invalid="ignore"):
        normal = (t >= _TINY) & (t <= _HUGE) & (m >= _TINY) & (m <= _HUGE)
        terms = np.isfinite(np.abs(m - t)) & ~np.isinf(sigmas * se) & np.isfinite(a)
    return ~(normal & terms)


def _field_arrays(f: str, theory: Profile, simulation: Profile, base: dict, kappa: float,
                  sigmas: float, allowance: dict) -> tuple:
    """``(key, t, m, se, a)`` of one requested field, with the theory's own standard error added
    in quadrature when it has one (a sampled theory: :func:`signalprop.dmft.predict_tied`)."""
    key, t, m, se, a = _field_arrays_sim(f, theory, simulation, base, kappa, sigmas, allowance)
    tse = _log_q_se(theory) if key == "log_q" and theory.q_se is not None else getattr(
        theory, key + "_se", None)
    if tse is not None:
        se = np.hypot(se, np.asarray(tse, float))
    return key, t, m, se, a


def _field_arrays_sim(f: str, theory: Profile, simulation: Profile, base: dict, kappa: float,
                      sigmas: float, allowance: dict) -> tuple:
    """``(key, t, m, se, a)`` with the simulation's standard error; ``q`` becomes ``log_q`` where
    it leaves the float range (module docstring)."""
    if f in ("q", "log_q"):
        if f == "q":
            t = np.asarray(theory.q, float)
            m = np.asarray(simulation.q, float)
            se = np.asarray(simulation.q_se, float)
            with np.errstate(over="ignore", invalid="ignore"):     # 0 * inf: checked below
                a = allowance["q"] if "q" in allowance else kappa * np.abs(t) * base["q"]
            out = _q_outside_float_range(t, m, se, a, sigmas)
            if not out.any():
                return "q", t, m, se, a
            if "q" in allowance:
                raise ValueError(f"allowance['q'] is in units of q, which leaves the float range "
                                 f"at {int(out.sum())} layers, so q is compared as log_q: give "
                                 "allowance['log_q'] (log units) instead")
        a = allowance["log_q"] if "log_q" in allowance else kappa * base["q"]
        return ("log_q", np.asarray(theory.log_q, float), np.asarray(simulation.log_q, float),
                _log_q_se(simulation), a)
    t = np.asarray(getattr(theory, f), float)
    m = np.asarray(getattr(simulation, f), float)
    se = np.asarray(getattr(simulation, f + "_se"), float)
    if f in KERNEL_FIELDS and t.shape != m.shape:
        raise ValueError(f"{f} has shape {t.shape} in the theory and {m.shape} in the simulation: "
                         "they must describe the same k inputs")
    if f in allowance:
        a = allowance[f]
    else:
        a = kappa * base[f]
    if f in KERNEL_FIELDS:                  # per layer, the same for every input (pair)
        a = np.broadcast_to(np.reshape(a, (-1,) + (1,) * (t.ndim - 1)), t.shape).copy()
    return f, t, m, se, a


def compare(theory: Profile, simulation: Profile, *, fields: Optional[Sequence[str]] = None,
            sigmas: float = 4.0, kappa: float = 2.0, widths: Optional[Sequence[int]] = None,
            allowance: Optional[dict] = None) -> Comparison:
    """Compare ``theory`` (no standard errors needed) with ``simulation`` (a Monte Carlo profile).

    fields: which of ``q``, ``c``, ``log_g``, ``log_G`` to compare (default: all that both have),
    or ``log_q`` (q in logs, which ``q`` turns into where q leaves the float range), or the
    k-input fields ``kernel_log_q``, ``kernel_corr`` (default too when both profiles have them).
    sigmas: standard errors allowed (4, CONVENTIONS.md). kappa: the allowance constant (module
    docstring). widths: ``[N_0..N_L]``, integers >= 1 (default: ``simulation.meta["widths"]``).
    allowance: optional ``{field: one value or per-layer array}``, finite and >= 0, replacing the
    default allowance of those fields. ``fields`` may be one name.
    Raises ValueError when the profiles have different layers or the simulation lacks standard
    errors for a requested field."""
    if not isinstance(theory, Profile) or not isinstance(simulation, Profile):
        which = "theory" if not isinstance(theory, Profile) else "simulation"
        raise TypeError(f"compare needs two Profile objects: {which} is "
                        f"{short_repr(theory if which == 'theory' else simulation)}")
    layers = np.asarray(simulation.layers)
    if len(theory.layers) != len(layers) or np.any(np.asarray(theory.layers) != layers):
        raise ValueError(f"theory has layers 1..{len(theory.layers)} and simulation 1..{len(layers)}; "
                         "they must describe the same network")
    sigmas = _scalar("sigmas", sigmas, positive=True)
    kappa = _scalar("kappa", kappa, positive=False)
    if isinstance(fields, str):
        fields = [fields]
    if fields is None:
        fields = [f for f in FIELDS + KERNEL_FIELDS if getattr(theory, f) is not None
                  and getattr(simulation, f) is not None
                  and (f in FIELDS or getattr(simulation, f + "_se") is not None)]
    else:
        if not isinstance(fields, (list, tuple)):
            raise TypeError(f"fields must be a list of field names ({', '.join(ALL_FIELDS)}), "
                            f"got {short_repr(fields)}")
        fields = list(fields)
        if not fields:
            raise ValueError(f"fields must name at least one of {', '.join(ALL_FIELDS)}")
        for f in fields:
            if not isinstance(f, str) or f not in ALL_FIELDS:
                raise ValueError(f"fields must be among {', '.join(ALL_FIELDS)}, got "
                                 f"{short_repr(f)}")
            if getattr(theory, f) is None or getattr(simulation, f) is None:
                raise ValueError(f"field {f!r} is missing from the theory or the simulation profile")
    for f in fields:
        if f == "log_q" and simulation.log_q_se is None and simulation.q_se is not None:
            continue                                  # q_se / q serves (delta method)
        if getattr(simulation, f + "_se") is None:
            raise ValueError(f"simulation has no {f}_se: it is not a Monte Carlo profile")
    if widths is None:
        widths = simulation.meta.get("widths") if isinstance(simulation.meta, dict) else None
        if widths is None:
            raise ValueError("widths are needed for the finite-width allowance: pass widths=[N_0..N_L] "
                             "or a simulation whose meta has 'widths'")
    L = len(layers)
    widths = _widths(widths, L)
    B = simulation.meta.get("batch_size") if isinstance(simulation.meta, dict) else None
    if B is not None and B < 6:
        warnings.warn(f"batch_size {B} < 6: the gradient's per-layer factor B/r^2 (r^2 ~ chi^2_(B-1)) "
                      "has infinite variance, so the standard errors of log_g are not reliable and "
                      "sample means scatter low", RuntimeWarning, stacklevel=2)
    bfwd, bbwd, btot = _betas([w / (B or 1) for w in widths], L)
    base = {"q": bfwd, "c": bfwd, "log_g": bbwd, "log_G": np.full(L, btot),
            "kernel_log_q": bfwd, "kernel_corr": bfwd}
    allowance = _allowances(allowance, L)
    nlo = theory.meta.get("nlo") if isinstance(theory.meta, dict) else None
    if theory.meta.get("order") == 1 and isinstance(nlo, dict):
        first = {f: kappa * base["q" if f == "log_q" else f] for f in ("log_q", "c", "log_g", "log_G")}
        allowance = {**_second_order(theory, nlo, widths, L, first), **allowance}
    out = {k: {} for k in ("theory", "simulation", "se", "diff", "z", "allowance", "agree", "skipped")}
    max_z, max_ex, any_se, disagree = 0.0, -math.inf, False, False
    compared, q_in_logs = [], False
    for name in fields:
        f, t, m, se, a = _field_arrays(name, theory, simulation, base, kappa, sigmas, allowance)
        q_in_logs = q_in_logs or (name == "q" and f == "log_q")
        if f in compared:                              # "q" turned into a "log_q" also asked for
            continue
        compared.append(f)
        ok = np.isfinite(t) & np.isfinite(m)
        with np.errstate(invalid="ignore", divide="ignore"):
            d = m - t
            z = np.where(se > 0, d / se, np.where(d == 0, 0.0, np.sign(d) * np.inf))
            good = np.abs(d) <= sigmas * se + a
            excess = np.where(se > 0, (np.abs(d) - a) / se, np.where(np.abs(d) <= a, -np.inf, np.inf))
        good = np.where(ok, good, True)
        has_se = ok & np.isfinite(se)
        any_se = any_se or bool(has_se.any())
        if np.any(~good & has_se):
            disagree = True
        if has_se.any():
            max_z = max(max_z, float(np.max(np.abs(z[has_se]))))
            max_ex = max(max_ex, float(np.max(excess[has_se])))
        for key, val in (("theory", t), ("simulation", m), ("se", se), ("diff", d), ("z", z),
                         ("allowance", a), ("agree", good)):
            out[key][f] = val
        out["skipped"][f] = int((~ok).sum())
    verdict = "disagree" if disagree else ("agree" if any_se else "inconclusive")
    rule = (f"|simulation - theory| <= {sigmas:g} se + allowance, allowance = kappa beta_l with "
            f"kappa = {kappa:g} (times |theory| for q; log units for log_g, log_G; absolute for c); "
            "beta_l = sum of 1/N_k over k = 1..l (q, c), k = l..L (log_g), k = 1..L (log_G)"
            + (f"; batch normalisation: B/N_k with B = {B}" if B else ""))
    if "log_q" in compared:
        rule += ("; q compared as log_q (se = the standard error of log q, q_se/q; allowance "
                 "kappa beta_l in log units)"
                 + (": q leaves the float64 normal range" if q_in_logs else ""))
    if any(f in KERNEL_FIELDS for f in compared):
        rule += ("; kernel_log_q as log_q and kernel_corr as c, for every input (pair) of a "
                 "layer")
    if allowance:
        rule += f"; allowance given by the caller for {', '.join(sorted(allowance))}"
    return Comparison(layers=layers, fields=tuple(compared), max_abs_z=max_z,
                      max_excess=max_ex if math.isfinite(max_ex) else 0.0, verdict=verdict,
                      rule=rule, sigmas=float(sigmas), kappa=float(kappa), beta=btot,
                      meta={"widths": widths,
                            "theory": dict(theory.meta) if isinstance(theory.meta, dict) else {},
                            "simulation": dict(simulation.meta)
                            if isinstance(simulation.meta, dict) else {}},
                      **out)
