"""Monte Carlo on a PyTorch module itself: :func:`measure` and :func:`example_inputs`.

``measure(module, inputs, samples)`` re-initialises (a copy of) the module ``samples`` times,
runs the inputs forward and the loss of the project's convention backward, and records the
same tracked variables and estimators as :func:`signalprop.simulate.simulate` (CONVENTIONS.md,
"Monte Carlo estimators"), per sample ``s`` and layer ``l`` of the mapped network
(:func:`signalprop.torch.from_module`; its tracked variable ``t^l``: the pre-activation of a
``Linear`` (before batch norm), the output of a normalisation layer or of a residual sum, the
input of a lone activation):

* ``q_hat = ||t^l_0||^2 / N_l`` (input 0); ``c_hat = <t^l_0, t^l_1> / (||t^l_0|| ||t^l_1||)``
  (with two or more inputs);
* ``g_hat = sum_b ||d loss / d t^l_b||^2 / N_l`` for the loss ``<v, t^L_0>``, ``v ~ N(0, I)``
  drawn per sample (the gradient reaches only input 0 unless the inputs are coupled, as by
  batch normalisation: then the sum runs over the batch, as in ``simulate``);
* ``G_hat = g_hat ||x^{l-1}_0||^2 / N_{l-1}`` with ``x^{l-1}`` the input of layer l.

A model with attention (:mod:`signalprop.torch.attention`) runs on one sequence of T tokens,
the k = T coupled inputs: ``q``, ``c`` of tokens 0 and (0, 1), ``g_hat`` summed over the tokens,
and the token kernels of ``simulate`` (``kernel_log_q``, ``kernel_corr`` and their standard
errors); the sublayers of an encoder layer come from its own submodules
(:func:`~signalprop.torch.attention.sequence_forward`, checked against the module's forward in
the first sample).

Reported as in ``simulate``: ``q``, ``c`` sample means with standard errors
``std(ddof=1) / sqrt(S)``; ``log_g``, ``log_G`` logs of the sample means with the delta-method
standard errors of those logs (:func:`signalprop.simulate.log_mean_se`); ``log_q_se = q_se / q``
in logs. Values are computed in the module's dtype and reduced in float64.

Re-initialisation: sample ``s`` runs under ``torch.random.fork_rng`` with the seed
``SeedSequence(seed, spawn_key=(s,)).generate_state(2)[0]`` (so the user's global generator is
untouched and every sample is reproducible on its own); ``reinit="default"`` (or None) calls
every submodule's ``reset_parameters()`` (PyTorch's own initialisation; for a
``MultiheadAttention``, which has none, ``out_proj.reset_parameters()`` then
``_reset_parameters()``: :func:`default_reinit`), a callable
``reinit(module)`` is called instead (e.g. ``lambda m: initialise(m, "he")``); ``v`` comes from a
``torch.Generator`` seeded with the second word. The module itself is never modified (a deep
copy is measured, with in-place activations turned off so the tracked tensors survive).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from .._validate import check_int, short_repr
from ..results import Profile
from ..simulate import log_mean_se, network_inputs
from .attention import is_sequence_module, rows, sequence_forward, token_layout
from .mapping import map_module, trace
from .recurrent import (gru_forward, is_gru, is_lstm, is_rnn, lstm_forward, map_rnn,
                        rnn_forward, rnn_inputs)

__all__ = ["measure", "example_inputs"]


def example_inputs(n0: int, q0: float = 1.0, c0: Optional[float] = None, k: Optional[int] = None,
                   dtype=torch.float32) -> torch.Tensor:
    """The inputs ``simulate`` uses (:func:`signalprop.simulate.network_inputs`) as a tensor of
    shape ``(k, n0)``: second moment ``q0``, pairwise correlation ``c0``, mean zero over the
    units (k = 1 without ``c0``, 2 with it; a batch of k for batch normalisation)."""
    return torch.as_tensor(network_inputs(n0, q0, c0, k), dtype=dtype)


class _Recorder(fx.Interpreter):
    """Runs the traced module and keeps the values of the named nodes (gradients retained);
    in-place functional calls run out of place."""

    def __init__(self, gm: fx.GraphModule, names: set, check: bool = False):
        super().__init__(gm)
        self.names = names
        self.values: dict = {}
        self.check = check

    def call_function(self, target, args, kwargs):
        if kwargs.get("inplace"):
            kwargs = {**kwargs, "inplace": False}
        target = _OUT_OF_PLACE.get(target, target)
        return super().call_function(target, args, kwargs)

    def call_method(self, target, args, kwargs):
        if isinstance(target, str) and target.endswith("_") and not target.startswith("_"):
            target = target[:-1]
        return super().call_method(target, args, kwargs)

    def run_node(self, n):
        if n.op == "call_module":
            mod = self.fetch_attr(n.target)
            if is_sequence_module(mod) and type(mod) is not nn.MultiheadAttention:
                args, _ = self.fetch_args_kwargs_from_env(n)
                outs = sequence_forward(mod, args[0], check=self.check)
                for i, v in enumerate(outs):
                    if v.requires_grad:
                        v.retain_grad()
                    self.values[f"{n.name}@{i}"] = v
                return outs[-1]
        out = super().run_node(n)
        if isinstance(out, tuple) and n.name in self.names:     # MultiheadAttention: (y, weights)
            y = out[0]                   # the tensor its [0] reads downstream
            if y.requires_grad:
                y.retain_grad()
            self.values[n.name] = y
            return out
        if n.name in self.names:
            if out.requires_grad:
                out.retain_grad()
            self.values[n.name] = out
        return out


_OUT_OF_PLACE = {torch.relu_: torch.relu, torch.nn.functional.relu_: torch.nn.functional.relu}


def _check_inputs(inputs, sequence: bool = False) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor of shape (N_0,) or (k, N_0), got "
                        f"{short_repr(inputs)}")
    x = inputs.detach()
    if sequence and x.ndim == 3:          # one sequence as a batch of one (token_layout checks)
        if not bool(torch.all(torch.isfinite(x))) or float(torch.sum(x.double() ** 2)) == 0:
            raise ValueError("inputs must be finite and nonzero")
        return x
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] < 1 or x.shape[0] < 1:
        raise ValueError(f"inputs must have shape (N_0,) or (k, N_0), got {tuple(inputs.shape)}")
    if not bool(torch.all(torch.isfinite(x))) or float(torch.sum(x[0].double() ** 2)) == 0:
        raise ValueError("inputs must be finite and input 0 must be nonzero")
    return x


def default_reinit(m: nn.Module) -> None:
    """PyTorch's own initialisation of every submodule: its ``reset_parameters()``; an
    ``nn.MultiheadAttention`` has none (its constructor runs ``out_proj``'s Linear
    ``reset_parameters()``, then ``_reset_parameters()``: xavier_uniform_ on ``in_proj_weight``,
    biases 0), so both are run for it, in that order, and its ``out_proj`` is not reset again."""
    done: set = set()
    for sub in m.modules():
        if id(sub) in done:
            continue
        if type(sub) is nn.MultiheadAttention:
            sub.out_proj.reset_parameters()
            sub._reset_parameters()
            done.add(id(sub.out_proj))
            continue
        fn = getattr(sub, "reset_parameters", None)
        if callable(fn):
            fn()


def _reinit_fn(reinit) -> Callable:
    if reinit is None or (isinstance(reinit, str) and reinit == "default"):
        return default_reinit
    if callable(reinit):
        return reinit
    raise ValueError(f"reinit must be None, 'default' or a callable reinit(module), got "
                     f"{short_repr(reinit)}")


def _seeds(seed: int, s: int) -> tuple:
    words = np.random.SeedSequence(seed, spawn_key=(s,)).generate_state(2, np.uint64)
    return int(words[0] >> np.uint64(1)), int(words[1] >> np.uint64(1))


def _sq(t: torch.Tensor) -> torch.Tensor:
    """Row-wise sums of squares in float64."""
    t = t.detach().to(torch.float64)
    return torch.sum(t * t, dim=-1)


def _mean_se(a: np.ndarray) -> tuple:
    S = a.shape[0]
    se = a.std(axis=0, ddof=1) / math.sqrt(S) if S > 1 else np.full(a.shape[1:], np.nan)
    return a.mean(axis=0), se


def measure(module: nn.Module, inputs, samples: int, reinit: Union[None, str, Callable] = None,
            seed: int = 0, *, return_samples: bool = False, threads: Optional[int] = 1) -> Profile:
    """Monte Carlo profile of ``module`` itself over ``samples`` re-initialisations (module
    docstring): the same fields, estimators and standard errors as
    :func:`signalprop.simulate.simulate` on the network :func:`~signalprop.torch.from_module`
    maps it to, so ``compare(predict(from_module(m, x)), measure(m, x, 64))`` works as is
    (with ``predict``'s ``q0`` equal to ``||x_0||^2 / N_0``; :func:`example_inputs` gives 1).
    For ``nn.LSTM`` and ``nn.GRU`` (weights tied across steps) the theory is
    ``signalprop.predict_tied(from_module(m, x), q0, c0)`` (``q0``, ``c0`` of ``h0``).

    ``inputs``: a tensor ``(N_0,)`` or ``(k, N_0)`` (k inputs; a batch of B with
    ``BatchNorm1d``); for ``nn.RNN``/``nn.LSTM``/``nn.GRU`` what the module takes (``x``,
    ``(x, h0)``, ``(x, (h0, c0))``: :func:`~signalprop.torch.recurrent.rnn_inputs`).
    ``samples``: an int >= 2. ``reinit``: None or ``"default"`` (every submodule's
    ``reset_parameters()``), or a callable ``reinit(module)`` run under the sample's seed.
    ``seed``: an int >= 0. ``return_samples``: keep the per-sample values (``profile.samples``:
    ``q``, ``log_g``, ``log_G``, ``c``; arrays (samples, L)).
    ``threads``: torch's intra-op threads while measuring (restored afterwards; default 1: one
    sample's k input rows are too little work to share, and on 2 loaded cores a second thread
    made a BatchNorm1d call 300 times slower, 7 ms against 25 us); None leaves torch's setting.
    """
    rnn_mod = is_rnn(module)
    if rnn_mod:
        net = map_rnn(module, inputs)      # checks the module and the inputs
        x, h0 = rnn_inputs(module, inputs)
    else:
        x = _check_inputs(inputs, isinstance(module, nn.Module)
                          and any(is_sequence_module(m) for m in module.modules()))
    samples = check_int("samples", samples, 2)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {short_repr(seed)}")
    fn = _reinit_fn(reinit)
    if not isinstance(return_samples, (bool, np.bool_)):
        raise TypeError(f"return_samples must be True or False, got {short_repr(return_samples)}")
    if threads is not None:
        threads = check_int("threads", threads, 1)
    if not rnn_mod:
        mapped = map_module(module, x)     # the structure; the variances are not used here
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        if rnn_mod:
            return _measure_rnn(module, x, h0, samples, fn, int(seed), net, return_samples,
                                reinit)
        return _measure(module, x, samples, fn, int(seed), mapped, return_samples, reinit)
    finally:
        torch.set_num_threads(before)


def _measure(module, x, samples, fn, seed, mapped, return_samples, reinit) -> Profile:
    """:func:`measure` after its checks."""
    net = mapped.network
    work = copy.deepcopy(module)
    for sub in work.modules():
        if getattr(sub, "inplace", False) is True:
            sub.inplace = False
    params = list(work.parameters())
    dtype = params[0].dtype if params else x.dtype
    for p in params:
        p.requires_grad_(False)
    gm = trace(work)
    layout = token_layout(module, tuple(x.shape))
    xr = rows(x, layout)                 # (k, N_0): the inputs, or the T tokens of one sequence
    L, k = net.depth, xr.shape[0]
    widths = [int(w) for w in net.widths]
    names = {t.tracked for t in mapped.tracked} | {t.out for t in mapped.tracked}
    q = np.empty((samples, L))
    lg = np.empty((samples, L))
    lx2 = np.empty((samples, L))
    c = np.empty((samples, L)) if k >= 2 else None
    kq = np.empty((samples, L, k)) if layout is not None else None      # token kernels
    kc = np.empty((samples, L, k, k)) if layout is not None else None
    x = x.to(dtype)
    x2_in = float(_sq(rows(x, layout)[0])) / widths[0]
    for s in range(samples):
        wseed, vseed = _seeds(int(seed), s)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(wseed)
            with torch.no_grad():
                fn(work)
        for p in work.parameters():
            p.requires_grad_(False)
        xs = x.clone().requires_grad_(True)
        rec = _Recorder(gm, names, check=(s == 0))
        rec.run(xs)
        vals = rec.values
        last = rows(vals[mapped.tracked[-1].tracked], layout)
        g = torch.Generator().manual_seed(vseed)
        v = torch.randn(last.shape[-1], generator=g, dtype=torch.float64).to(last.dtype)
        torch.sum(v * last[0]).backward()
        for l, t in enumerate(mapped.tracked):
            raw = vals[t.tracked]
            tv = rows(raw, layout)
            if kq is not None:
                _token_kernel(tv, widths[l + 1], kq[s, l], kc[s, l])
            qa = _sq(tv[0])
            q[s, l] = float(qa) / widths[l + 1]
            if c is not None:
                qb = _sq(tv[1])
                ab = float(torch.sum(tv[0].detach().double() * tv[1].detach().double()))
                c[s, l] = ab / math.sqrt(float(qa) * float(qb))
            grad = raw.grad
            gs = 0.0 if grad is None else float(torch.sum(_sq(grad)))
            lg[s, l] = math.log(gs / widths[l + 1]) if gs > 0 else -math.inf
            xin = x2_in if l == 0 else float(_sq(rows(vals[mapped.tracked[l - 1].out], layout)[0])
                                             ) / widths[l]
            lx2[s, l] = math.log(xin) if xin > 0 else -math.inf
        if not (np.all(np.isfinite(q[s])) and np.all(np.isfinite(lg[s]) | (lg[s] == -np.inf))):
            bad = int(np.flatnonzero(~np.isfinite(q[s]) | np.isnan(lg[s]))[0])
            raise ValueError(f"sample {s}: layer {bad + 1} ({mapped.tracked[bad].label}) gave "
                             f"non-finite values in {dtype}")
    x0 = rows(x, layout)[0].double()
    meta = {"source": "signalprop.torch.measure", "module": type(module).__name__,
            "samples": samples, "seed": int(seed),
            "reinit": "default" if reinit is None or isinstance(reinit, str)
            else getattr(reinit, "__name__", repr(reinit)),
            "q0": float(torch.sum(x0 * x0)) / widths[0], "k": k, "dtype": str(dtype),
            "widths": widths, "layers": [t.label for t in mapped.tracked],
            "loss": "<v, t^L_0>, v ~ N(0, I)"}
    if k >= 2:
        x1 = rows(x, layout)[1].double()
        meta["c0"] = float(torch.sum(x0 * x1) / torch.sqrt(torch.sum(x0 * x0) * torch.sum(x1 * x1)))
    if net.batch_size is not None:
        meta["batch_size"] = net.batch_size
        meta["loss"] = "<v, h^L_a> on one batch member; g sums over the batch"
    if layout is not None:
        meta["tokens"] = k
        meta["token_layout"] = layout
        meta["loss"] = "<v, t^L_0> on token 0; g sums over the T tokens"
    prof = _profile(q, lg, lx2, c, return_samples, meta)
    if kq is None:
        return prof
    return _with_kernel(prof, kq, kc, return_samples)


def _token_kernel(tv: torch.Tensor, width: int, kq_out: np.ndarray, kc_out: np.ndarray) -> None:
    """Every token's ``q_hat_a = ||t_a||^2 / N`` and every pair's ``c_hat_ab`` (unit diagonal)."""
    t = tv.detach().to(torch.float64)
    gram = (t @ t.T).numpy()
    d = np.diag(gram).copy()
    kq_out[:] = d / width
    s = np.sqrt(d)
    with np.errstate(invalid="ignore", divide="ignore"):
        kc_out[:] = gram / np.outer(s, s)
    np.fill_diagonal(kc_out, 1.0)


def _with_kernel(prof: Profile, kq: np.ndarray, kc: np.ndarray, return_samples: bool) -> Profile:
    """``prof`` with the kernel fields of simulate (:func:`signalprop.simulate.simulate`'s
    ``kernel_log_q``, ``kernel_corr`` and their standard errors, the same estimators: log of the
    sample mean of every token's ``q_hat_a`` with the delta-method se, sample mean of every
    pair's correlation with ``std(ddof=1) / sqrt(S)``, 0 on the diagonal)."""
    S, L, k = kq.shape
    with np.errstate(divide="ignore"):
        log_kq, log_kq_se = log_mean_se(np.log(kq.reshape(S, L * k)))
    corr, corr_se = _mean_se(kc.reshape(S, L * k * k))
    corr_se = corr_se.reshape(L, k, k)
    corr_se[:, np.arange(k), np.arange(k)] = 0.0
    fields = {"kernel_log_q": log_kq.reshape(L, k), "kernel_log_q_se": log_kq_se.reshape(L, k),
              "kernel_corr": corr.reshape(L, k, k), "kernel_corr_se": corr_se}
    if return_samples:
        fields["samples"] = {**prof.samples, "kernel_q": kq, "kernel_corr": kc}
    return dataclasses.replace(prof, **fields)


def _profile(q, lg, lx2, c, return_samples, meta) -> Profile:
    """The Profile of per-sample arrays (samples, L), as in ``simulate`` (module docstring)."""
    qm, q_se = _mean_se(q)
    with np.errstate(divide="ignore"):
        log_q_se = log_mean_se(np.log(q))[1]
    log_g, log_g_se = log_mean_se(lg)
    log_G, log_G_se = log_mean_se(lg + lx2)
    cm = c_se = None
    if c is not None:
        cm, c_se = _mean_se(c)
    kept = None
    if return_samples:
        kept = {"q": q, "log_g": lg, "log_G": lg + lx2}
        if c is not None:
            kept["c"] = c
    return Profile(layers=np.arange(1, q.shape[1] + 1), q=qm, log_q=np.log(qm), log_g=log_g,
                   log_G=log_G, c=cm, q_se=q_se, c_se=c_se, log_g_se=log_g_se,
                   log_G_se=log_G_se, samples=kept, meta=meta, log_q_se=log_q_se)


def _measure_rnn(module, x, h0, samples, fn, seed, net, return_samples, reinit) -> Profile:
    """:func:`measure` of an ``nn.RNN`` (:mod:`signalprop.torch.recurrent`): per time step t the
    tracked variable is the pre-activation ``e_t`` (docs/notation.md, "Recurrent networks"):
    ``q_hat = ||e_t^0||^2 / H``, ``c_hat`` between sequences 0 and 1, ``g_hat = ||d loss /
    d e_t^0||^2 / H`` for the loss ``<v, e_T^0>``, ``G_hat = g_hat ||h_{t-1}^0||^2 / H``. The
    pre-activations come from the module's parameters (:func:`rnn_forward`), checked against
    the module's own forward in the first sample. ``nn.LSTM``: the tracked variable is the state
    ``h_t`` (:func:`lstm_forward`; loss ``<v, h_T^0>``, ``G_hat = g_hat ||h_{t-1}^0||^2 / H``), the
    profile of :class:`~signalprop.layers.gated.LSTMStep`; ``nn.GRU`` likewise with
    :func:`gru_forward` (the profile of :class:`~signalprop.layers.gated.GRUStep` with
    ``reset_after``)."""
    lstm = is_lstm(module) or is_gru(module)
    forward = gru_forward if is_gru(module) else lstm_forward if lstm else rnn_forward
    var = "h" if lstm else "e"
    work = copy.deepcopy(module)
    params = list(work.parameters())
    dtype = params[0].dtype
    for p in params:
        p.requires_grad_(False)
    T, k, H = x.shape[0], x.shape[1], int(work.hidden_size)
    x, h0 = x.to(dtype), h0.to(dtype)
    q = np.empty((samples, T))
    lg = np.empty((samples, T))
    lx2 = np.empty((samples, T))
    c = np.empty((samples, T)) if k >= 2 else None
    for s in range(samples):
        wseed, vseed = _seeds(seed, s)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(wseed)
            with torch.no_grad():
                fn(work)
        for p in work.parameters():
            p.requires_grad_(True)
        es, hs = forward(work, x, h0, check=(s == 0))
        g = torch.Generator().manual_seed(vseed)
        v = torch.randn(H, generator=g, dtype=torch.float64).to(dtype)
        torch.sum(v * es[-1][0]).backward()
        for t in range(T):
            e = es[t]
            qa = float(_sq(e[0]))
            q[s, t] = qa / H
            if c is not None:
                ab = float(torch.sum(e[0].detach().double() * e[1].detach().double()))
                c[s, t] = ab / math.sqrt(qa * float(_sq(e[1])))
            gs = float(_sq(e.grad[0])) if e.grad is not None else 0.0
            lg[s, t] = math.log(gs / H) if gs > 0 else -math.inf
            hin = float(_sq((h0 if t == 0 else hs[t - 1])[0])) / H
            lx2[s, t] = math.log(hin) if hin > 0 else -math.inf
        for p in work.parameters():
            p.grad = None
            p.requires_grad_(False)
        if not np.all(np.isfinite(q[s])):
            bad = int(np.flatnonzero(~np.isfinite(q[s]))[0])
            raise ValueError(f"sample {s}: time step {bad + 1} gave non-finite values in {dtype}")
    h00 = h0[0].double()
    meta = {"source": "signalprop.torch.measure", "module": type(module).__name__,
            "samples": samples,
            "seed": seed, "reinit": "default" if reinit is None or isinstance(reinit, str)
            else getattr(reinit, "__name__", repr(reinit)),
            "q0": float(torch.sum(h00 * h00)) / H, "k": k, "dtype": str(dtype),
            "widths": [int(w) for w in net.widths], "layers": [l.label() for l in net.layers],
            "loss": f"<v, {var}_T^0>, v ~ N(0, I)",
            "tracked": "state h_t per time step" if lstm else "pre-activation e_t per time step"}
    if k >= 2:
        h1 = h0[1].double()
        den = float(torch.sqrt(torch.sum(h00 * h00) * torch.sum(h1 * h1)))
        meta["c0"] = float(torch.sum(h00 * h1)) / den if den > 0 else 0.0
    return _profile(q, lg, lx2, c, return_samples, meta)
