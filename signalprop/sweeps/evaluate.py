"""What a sweep computes for one case: build the network, run the requested evaluators, and
return a JSON-able record. Everything here is picklable (module-level functions and a frozen
dataclass), so a case runs the same in this process, a spawned worker or a dask worker."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import inspect
import json
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .. import __version__
from .._validate import check_choice, check_int, positive_scalar, short_repr
from ..architectures import mlp, resnet
from ..compare import ALL_FIELDS, compare
from ..meanfield import fixed_point, predict
from ..network import Network
from ..results import VERSION_KEY, _Result, to_jsonable
from ..simulate import simulate
from .cases import case_hash
from .codec import ARRAY_KEY

__all__ = ["BUILTIN", "OPTION_KEYS", "CASE_OPTION_KEYS", "BUILDERS", "build_mlp", "build_resnet",
           "Task", "make_task", "run_case", "RECORD_FORMAT", "TIMING_FIELDS"]

#: the evaluators a sweep knows by name.
BUILTIN = ("predict", "simulate", "compare", "fixed_point")
#: options each evaluator takes (``options={"simulate": {"samples": 16}}``).
OPTION_KEYS = {
    "predict": ("q0", "c0"),
    "simulate": ("samples", "engine", "dtype", "q0", "c0", "chunk"),
    "compare": ("sigmas", "kappa", "fields"),
    "fixed_point": ("q0",),
}
#: case keys that go to the evaluators rather than to the network builder.
CASE_OPTION_KEYS = ("q0", "c0", "samples")
#: case keys that only tell cases apart (and so change their seeds): independent repeats.
REPEAT_KEYS = ("replicate",)
#: default Monte Carlo sample count when neither the options nor the case give one.
DEFAULT_SAMPLES = 100
RECORD_FORMAT = "signalprop.sweep.case/2"
#: fields of a stored record that depend on when and how fast it ran, not on what it computed.
TIMING_FIELDS = ("date", "timings")


@functools.lru_cache(maxsize=64)
def _builder_keys(fn) -> tuple:
    return tuple(inspect.signature(fn).parameters)


@functools.lru_cache(maxsize=256)
def _builder_case_keys(fn, name: str, keys: tuple) -> tuple:
    """The keys (of a case with ``keys``) that go to the builder ``fn``; ValueError for a key
    it lacks or no depth (checked once per set of keys)."""
    allowed = _builder_keys(fn)
    passed = tuple(k for k in keys if k not in CASE_OPTION_KEYS + REPEAT_KEYS)
    unknown = [k for k in passed if k not in allowed]
    if unknown:
        raise ValueError(f"case key {unknown[0]!r} is not a parameter of {name}; allowed keys: "
                         f"{', '.join(allowed + CASE_OPTION_KEYS + REPEAT_KEYS)} (or pass build=)")
    if "depth" not in passed:
        raise ValueError(f"each case needs a 'depth' for {name} (case keys {', '.join(keys)})")
    return passed


def _builder_kwargs(fn, name: str, case: dict) -> dict:
    """The case's keys for the builder ``fn``; ValueError for a key it lacks or no depth."""
    return {k: case[k] for k in _builder_case_keys(fn, name, tuple(case))}


def _build_with(fn, name: str, case: dict) -> Network:
    return fn(**_builder_kwargs(fn, name, case))


def build_mlp(case: dict) -> Network:
    """The default builder: ``signalprop.mlp(**case)`` (keys ``q0``, ``c0``, ``samples`` go to
    the evaluators instead; ``replicate`` only changes the case, hence its seed)."""
    return _build_with(mlp, "mlp", case)


def build_resnet(case: dict) -> Network:
    """``signalprop.resnet(**case)`` (``q0``, ``c0``, ``samples``, ``replicate``: as in
    :func:`build_mlp`)."""
    return _build_with(resnet, "resnet", case)


#: builders a spec file may name (``build = "resnet"``).
BUILDERS = {"mlp": build_mlp, "resnet": build_resnet}
_CONSTRUCTORS = {build_mlp: (mlp, "mlp"), build_resnet: (resnet, "resnet")}


def _name(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__name__)}"


@dataclass(frozen=True)
class Task:
    """What every case of a sweep runs: ``build(case) -> Network``; ``what``, pairs
    ``(name, callable or None)`` (None: a built-in evaluator); ``options``, pairs
    ``(evaluator, ((key, value), ...))``."""

    build: Callable
    what: tuple
    options: tuple

    def opts(self, name: str) -> dict:
        return dict(dict(self.options).get(name, ()))

    def spec(self, seed: int) -> dict:
        """What makes two runs' records comparable: the store refuses a different one."""
        return {"build": _name(self.build), "seed": int(seed),
                "what": [n if f is None else f"{n}={_name(f)}" for n, f in self.what],
                "options": {k: dict(v) for k, v in self.options}}


def _check_option(name: str, key: str, value):
    where = f"options[{name!r}][{key!r}]"
    if key == "samples":
        return check_int(where, value, 1)
    if key == "chunk":
        return check_int(where, value, 1)
    if key in ("q0", "sigmas"):
        return positive_scalar(where, value)
    if key == "kappa":
        v = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if v is None or not math.isfinite(v) or v < 0:
            raise ValueError(f"{where} must be a finite number >= 0, got {short_repr(value)}")
        return v
    if key == "c0":
        if value is None:
            return None
        v = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if v is None or not -1.0 <= v <= 1.0:
            raise ValueError(f"{where} must be None or a number in [-1, 1], got {short_repr(value)}")
        return v
    if key == "engine":
        return check_choice(where, value, ("dense", "matrix-free"))
    if key == "dtype":
        return check_choice(where, value, ("float64", "float32"))
    if key == "fields":
        vals = [value] if isinstance(value, str) else value
        if not isinstance(vals, (list, tuple)) or not vals:
            raise TypeError(f"{where} must be a list of {', '.join(ALL_FIELDS)}")
        return tuple(check_choice(where, f, ALL_FIELDS) for f in vals)
    raise AssertionError(key)  # pragma: no cover - keys are checked before


def make_task(what, build: Optional[Callable], options: Optional[dict]) -> Task:
    """Check ``what``, ``build`` and ``options`` (errors name the parameter and what is allowed)."""
    items = [what] if isinstance(what, str) or callable(what) else what
    if not isinstance(items, (list, tuple)) or not items:
        raise TypeError(f"what must be one of {', '.join(BUILTIN)}, a callable f(case, network, "
                        f"seed) or a list of them, got {short_repr(what)}")
    pairs = []
    for w in items:
        if isinstance(w, str):
            pairs.append((check_choice("what", w, BUILTIN), None))
        elif callable(w):
            name = getattr(w, "__name__", "")
            if not name.isidentifier() or name in BUILTIN:
                raise ValueError(f"what: a callable needs a plain __name__ other than "
                                 f"{', '.join(BUILTIN)} (it names its results), got {name!r}")
            pairs.append((name, w))
        else:
            raise TypeError(f"what entries must be one of {', '.join(BUILTIN)} or a callable, "
                            f"got {short_repr(w)}")
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"what names {sorted(n for n in names if names.count(n) > 1)[0]!r} twice")
    build = build_mlp if build is None else build
    if not callable(build):
        raise TypeError(f"build must be a callable build(case) -> Network, got {short_repr(build)}")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict {{evaluator: {{key: value}}}}, got "
                        f"{short_repr(options)}")
    checked = []
    for name, opts in options.items():
        if name not in OPTION_KEYS:
            raise ValueError(f"options: unknown evaluator {name!r}; allowed: "
                             f"{', '.join(OPTION_KEYS)}")
        if not isinstance(opts, dict):
            raise TypeError(f"options[{name!r}] must be a dict, got {short_repr(opts)}")
        for key in opts:
            if key not in OPTION_KEYS[name]:
                raise ValueError(f"options[{name!r}]: unknown key {key!r}; allowed: "
                                 f"{', '.join(OPTION_KEYS[name])}")
        checked.append((name, tuple(sorted((k, _check_option(name, k, v))
                                           for k, v in opts.items()))))
    return Task(build, tuple(pairs), tuple(sorted(checked)))


def check_case_keys(task: Task, case: dict) -> None:
    """Up front, before any case runs: keys the built-in builder does not take, and case keys
    that an evaluator option also sets (which one wins would be a silent choice), are refused."""
    if task.build in _CONSTRUCTORS:
        _builder_kwargs(*_CONSTRUCTORS[task.build], case)
    for key in CASE_OPTION_KEYS:
        if key in case:
            for name, opts in task.options:
                if key in dict(opts):
                    raise ValueError(f"{key!r} is set both by the cases and by "
                                     f"options[{name!r}]; give it in one place")


def _evaluator_args(task: Task, case: dict, name: str) -> dict:
    opts = task.opts(name)
    for key in CASE_OPTION_KEYS:
        if key in case and key in OPTION_KEYS[name]:
            opts[key] = _check_option(name, key, case[key])
    return opts


_LEAVES = frozenset((str, int, bool, type(None)))
_FIELD_NAMES: dict = {}


def _result_dict(value: _Result) -> dict:
    """``value.to_dict()``; for the classes that keep :class:`~signalprop.results._Result`'s
    own ``to_dict`` (fields that are not None, in order), the same dict without the per-call
    cost of :func:`dataclasses.fields`."""
    cls = type(value)
    if cls.to_dict is not _Result.to_dict:
        return value.to_dict()
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return {n: x for n in names if (x := getattr(value, n)) is not None}


def _jsonable(value):
    """Results in the wire form (:mod:`.codec`): Result objects by their ``to_dict``, numeric
    numpy arrays kept (the store packs them, :func:`~.codec.plain` makes them lists), other
    values as plain JSON values (inf and nan as strings: :func:`signalprop.results.to_jsonable`)."""
    t = type(value)
    if t in _LEAVES:                # what to_jsonable returns unchanged (the common leaves)
        return value
    if t is float:
        return value if math.isfinite(value) else to_jsonable(value)
    if isinstance(value, _Result):
        value = _result_dict(value)
    if isinstance(value, dict):
        return {str(k): v if type(v) is np.ndarray and v.dtype.kind in "fiub" else _jsonable(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value if value.dtype.kind in "fiub" else to_jsonable(value)
    if isinstance(value, np.generic):
        value = value.item()
    return to_jsonable(value)


def _check_user_result(name: str, value, case: dict) -> None:
    """A callable's results must be JSON-able (arrays allowed) and not use :data:`ARRAY_KEY`."""
    def arrays_only(obj):
        if isinstance(obj, np.ndarray):
            return 0
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")

    def reserved(v) -> bool:
        if isinstance(v, dict):
            return ARRAY_KEY in v or any(reserved(x) for x in v.values())
        return isinstance(v, list) and any(reserved(x) for x in v)
    try:
        json.dumps(value, allow_nan=False, default=arrays_only)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"what={name} returned values that are not JSON-able ({exc}) "
                        f"for case {json.dumps(case)}: return plain values, numpy "
                        "arrays or signalprop Results") from None
    if reserved(value):
        raise ValueError(f"what={name} returned a dict with the key {ARRAY_KEY!r}, which the "
                         f"sweep store reserves (case {json.dumps(case)})")


def _comparison(comp) -> dict:
    field, layer, z, excess = comp.worst()
    out = {"verdict": comp.verdict, "max_abs_z": comp.max_abs_z, "max_excess": comp.max_excess,
           "worst_field": field, "worst_layer": layer, "rule": comp.rule,
           "layers": comp.layers}
    for f in comp.fields:
        out[f"z_{f}"] = comp.z[f]
    return out


def _uniform_rule(net: Network) -> tuple:
    rules = {(la.activation, float(la.sigma_w2), float(la.sigma_b2)) for la in net.layers
             if hasattr(la, "activation") and hasattr(la, "sigma_w2")}
    if len(rules) != 1:
        raise ValueError("what='fixed_point' needs a network whose layers share one activation, "
                         f"sigma_w2 and sigma_b2; this one has {len(rules)} distinct rules")
    return rules.pop()


def _evaluate(task: Task, case: dict, seed: int, timings: dict) -> dict:
    net = task.build(case)
    if not isinstance(net, Network):
        raise TypeError(f"build must return a signalprop Network, got {short_repr(net)} for case "
                        f"{json.dumps(case)}")
    names = [n for n, _ in task.what]
    results: dict = {}
    sim = theory = None
    if "simulate" in names or "compare" in names:
        t = time.perf_counter()
        a = _evaluator_args(task, case, "simulate")
        sim = simulate(net, a.pop("samples", DEFAULT_SAMPLES), seed, **a)
        timings["simulate"] = time.perf_counter() - t
    if "predict" in names:
        t = time.perf_counter()
        theory = predict(net, **_evaluator_args(task, case, "predict"))
        timings["predict"] = time.perf_counter() - t
    for name, fn in task.what:
        t = time.perf_counter()
        if name == "predict":
            results[name] = _jsonable(theory)
            continue
        if name == "simulate":
            results[name] = _jsonable(sim)
            continue
        if name == "compare":
            sa = _evaluator_args(task, case, "simulate")
            q0, c0 = sa.get("q0", 1.0), sa.get("c0")
            pa = _evaluator_args(task, case, "predict") if "predict" in names else None
            th = theory if pa is not None and (pa.get("q0", 1.0), pa.get("c0")) == (q0, c0) \
                else predict(net, q0=q0, c0=c0)
            results[name] = _jsonable(_comparison(compare(th, sim, **task.opts("compare"))))
        elif name == "fixed_point":
            act, sw2, sb2 = _uniform_rule(net)
            results[name] = _jsonable(fixed_point(act, sw2, sb2,
                                                  **_evaluator_args(task, case, "fixed_point")))
        else:
            out = fn(case, net, seed)
            if not isinstance(out, (dict, _Result)):
                raise TypeError(f"what={name}: must return a dict or a signalprop Result, got "
                                f"{short_repr(out)}")
            results[name] = _jsonable(out)
            _check_user_result(name, results[name], case)
        timings[name] = time.perf_counter() - t
    for name, value in results.items():
        if isinstance(value, dict):
            value.pop("samples", None)
    return results


_CLOCK: list = [None, ""]


def _utc_now() -> str:
    """The UTC time to the second, ISO 8601 (formatted once per second)."""
    now = int(time.time())
    if _CLOCK[0] != now:
        _CLOCK[:] = [now, datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat()]
    return _CLOCK[1]


def run_case(task: Task, case: dict, seed: int, name: Optional[str] = None) -> dict:
    """The record of one case: ``case``, ``case_hash``, ``seed``, ``results`` (evaluator ->
    dict, in the wire form of :mod:`.codec`: numeric arrays kept), ``signalprop_version``;
    plus ``date``
    and ``timings`` (seconds), the only fields that differ between two runs of the same case
    (:data:`TIMING_FIELDS`). ``name``: the case's :func:`~.cases.case_hash` if known."""
    timings: dict = {}
    start = time.perf_counter()
    results = _evaluate(task, case, seed, timings)
    timings["total"] = time.perf_counter() - start
    record = {"format": RECORD_FORMAT, "case_hash": name or case_hash(case), "case": case,
              "seed": seed,
              "results": results,
              VERSION_KEY: __version__,
              "date": _utc_now(),
              "timings": timings}
    return record
