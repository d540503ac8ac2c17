"""The PyTorch bridge (signalprop.torch) on the issue's must-hold sizes (issue 14). Writes
validation/torch_report.md.

    python -m validation.torch_check            # full run (a few minutes on 2 cores)
    python -m validation.torch_check --quick    # widths 256 only, fewer samples

For every case, two checks, with rules stated before running:

 1. mapping: ``from_module(model, x)`` (PyTorch-default init: ``variances="init"``) or
    ``initialise(model, scheme).network`` (He, Xavier) equals, as a ``Network`` (``==``: same
    layers, variances and weight laws), the network the equivalent ``mlp(...)``/``resnet(...)``
    call builds (written out independently below, from the formulas of docs/torch.md:
    PyTorch default ``sigma_w2 = 1/3``, uniform, ``sigma_b2 = 1/(3 N)``; He ``init="he"``;
    Xavier ``init="xavier"``);
 2. theory against the module: ``compare(predict(net), measure(model, x, S, reinit=...))``,
    the project's agreement rule (4 SE plus kappa = 2 sum 1/N_l); verdict must be ``agree``.

Section "transformer" (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder):
the same two checks, the mapping against the blocks of ``transformer(...)`` written out here
with PyTorch's defaults (attention q, k, v 1/2, o 1/3; feed-forward Linear 1/3 with biases
1/(3 fan_in), uniform), one sequence of T tokens of q0 = 1 and correlation 0, the token kernels
compared too. Section "recurrent": nn.LSTM and nn.GRU (weights tied across steps, PyTorch's
default init) against the untied theory ``predict`` (the LSTM; it refuses the GRU's reset-after
cell) and the tied theory ``predict_tied``, side by side (:func:`run_recurrent`). ``--only
transformer,recurrent`` regenerates those sections and keeps the others of the existing report
verbatim (each section states its own time).

Models are float64 (relu/gelu at sigma_w2 = 1/3 lose a factor 6 per layer in g: 6^-50 is
below float32's normal range). Cases: MLPs (tanh, relu, gelu) x (default, He, Xavier) x widths
(256, 1024) x depths (20, 50); pre-LN residual MLPs (LayerNorm, relu branch of two Linear);
BatchNorm1d MLPs (tanh, relu; batch B = 8). Timings are wall-clock seconds of ``measure``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import time

import numpy as np
import torch
import torch.nn as nn

import signalprop as sp
from signalprop.layers import Dense, LayerNorm, Residual
from signalprop.layers.attention import Attention
from signalprop.torch import example_inputs, from_module, initialise, measure

OUT = os.path.join(os.path.dirname(__file__), "torch_report.md")
ACTS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


def mlp_module(n: int, depth: int, act: str, bn: bool = False) -> nn.Module:
    layers = []
    for _ in range(depth):
        layers.append(nn.Linear(n, n, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm1d(n))
        layers.append(ACTS[act]())
    return nn.Sequential(*layers).double()


class PreLN(nn.Module):
    """x + fc2(relu(fc1(LN(x))))."""

    def __init__(self, n: int):
        super().__init__()
        self.ln = nn.LayerNorm(n)
        self.fc1 = nn.Linear(n, n)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(n, n)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.ln(x))))


def _gaussian(m: nn.Module, sigma_w2: float) -> None:
    """Every Linear: W_ij ~ N(0, sigma_w2 / fan_in) (square layers: He 2, Xavier 1), b = 0 (the
    law ``initialise(m, "he"/"xavier")`` draws, without re-reading the module per sample)."""
    for sub in m.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, 0.0, (sigma_w2 / sub.in_features) ** 0.5)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)


def _he(m):
    _gaussian(m, 2.0)


def _xavier(m):
    _gaussian(m, 1.0)


def cases(widths, depths):
    """(name, model, x, expected network, mapped network, reinit)."""
    for n in widths:
        for depth in depths:
            x = example_inputs(n, c0=0.3, dtype=torch.float64)
            for act in ACTS:
                m = mlp_module(n, depth, act)
                yield (f"MLP {act} default N={n} L={depth}", m, x,
                       sp.mlp(depth, n, act, sigma_w2=1 / 3, sigma_b2=1 / (3 * n), weights="uniform"),
                       lambda m=m, x=x: from_module(m, x), None)
                for scheme, fn in (("he", _he), ("xavier", _xavier)):
                    m = mlp_module(n, depth, act)
                    yield (f"MLP {act} {scheme} N={n} L={depth}", m, x,
                           sp.mlp(depth, n, act, init=scheme),
                           lambda m=m, s=scheme: initialise(m, s, seed=0).network, fn)
    for n in widths:
        for depth in (20,) if 1024 in widths else depths:
            x = example_inputs(n, c0=0.3, dtype=torch.float64)
            m = nn.Sequential(*[PreLN(n) for _ in range(depth)]).double()
            yield (f"pre-LN resnet relu default N={n} L={depth}", m, x,
                   sp.resnet(depth, n, "relu", sigma_w2=1 / 3, sigma_b2=1 / (3 * n),
                             weights="uniform", norm="layer"),
                   lambda m=m, x=x: from_module(m, x), None)
        for act in ("tanh", "relu"):
            x = example_inputs(n, c0=0.0, k=8, dtype=torch.float64)
            m = mlp_module(n, 20, act, bn=True)
            yield (f"BatchNorm1d MLP {act} default N={n} L=20 B=8", m, x,
                   sp.mlp(20, n, act, sigma_w2=1 / 3, weights="uniform", norm="batch",
                          batch_size=8),
                   lambda m=m, x=x: from_module(m, x), None)


def run(quick: bool) -> list:
    widths = (256,) if quick else (256, 1024)
    depths = (20,) if quick else (20, 50)
    rows, t_all = [], time.perf_counter()
    for name, m, x, expected, mapped, reinit in cases(widths, depths):
        net = mapped()
        same = net == expected
        S = 16 if quick else (32 if x.shape[1] >= 1024 else 64)
        t = time.perf_counter()
        prof = measure(m, x, S, reinit=reinit, seed=1)
        dt = time.perf_counter() - t
        kw = {"c0": 0.0} if x.shape[0] > 2 else {"c0": 0.3}
        cmp = sp.compare(sp.predict(net, **kw), prof)
        rows.append((name, same, cmp.verdict, cmp, S, dt))
        print(f"{name:45s} same={same} {cmp.verdict:9s} S={S} {dt:6.1f}s", flush=True)
    return rows, time.perf_counter() - t_all


def report(rows, total, quick) -> str:
    ok_map = sum(r[1] for r in rows)
    ok_cmp = sum(r[2] == "agree" for r in rows)
    lines = ["## MLPs, residual MLPs, BatchNorm1d MLPs", "",
             f"Generated by `python -m validation.torch_check{' --quick' if quick else ''}` "
             f"(torch {torch.__version__}, {platform.machine()}, "
             f"{torch.get_num_threads()} torch threads, measure with threads=1). "
             f"Total {total:.0f} s.", "",
             "Rules (stated before running): `from_module`/`initialise(...).network` equals the "
             "independently written `mlp(...)`/`resnet(...)` network (`==`); "
             "`compare(predict(net), measure(model, x, S))` gives `agree` (4 SE + 2 sum 1/N). "
             "Inputs: `example_inputs(N, c0=0.3)` (two inputs; c compared) or a batch of 8 with "
             "c0 = 0 for BatchNorm1d. float64 models.", "",
             f"**Summary: mapping equal in {ok_map}/{len(rows)} cases; verdict `agree` in "
             f"{ok_cmp}/{len(rows)} cases.**", "",
             "| case | from_module == mlp/resnet | verdict | fields | max abs z | max excess | S | "
             "measure (s) |", "|---|---|---|---|---|---|---|---|"]
    for name, same, verdict, cmp, S, dt in rows:
        fields = ", ".join(getattr(cmp, "fields", ()) or ())
        lines.append(f"| {name} | {'yes' if same else 'NO'} | {verdict} | {fields} | "
                     f"{cmp.max_abs_z:.2f} | {cmp.max_excess:.2f} | {S} | "
                     f"{dt:.1f} |")
    bad = [r for r in rows if r[2] != "agree" or not r[1]]
    if bad:
        lines += ["", "### Cases that failed", ""]
        for name, same, verdict, cmp, S, dt in bad:
            lines += [f"#### {name}", "", "```", str(cmp), "```", ""]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# transformer family


def _blocks(d, heads, ffn, T, act, norm_first, bias=True):
    """The mapped blocks of one PyTorch encoder layer at its default init, written out from
    docs/torch.md (not from the bridge)."""
    attn = Attention(d, heads, T, 0.5, 0.5, 0.5, 1 / 3)
    ff = (Dense(ffn, act, 1 / 3, 1 / (3 * d) if bias else 0.0, "uniform"),
          Dense(d, "linear", 1 / 3, 1 / (3 * ffn) if bias else 0.0, "uniform"))
    ln = LayerNorm(d)
    if norm_first:
        return (Residual((ln, attn), 1.0, 1.0), Residual((ln,) + ff, 1.0, 1.0))
    return (Residual((attn,), 1.0, 1.0), ln, Residual(ff, 1.0, 1.0), ln)


def transformer_cases(quick: bool):
    """(name, model, x, expected network)."""
    d, heads, ffn = 256, 4, 1024
    for T in ((8,) if quick else (8, 32)):
        x = example_inputs(d, 1.0, 0.0, k=T, dtype=torch.float64)
        yield (f"MultiheadAttention d={d} H={heads} T={T}", nn.MultiheadAttention(d, heads).double(),
               x, sp.Network(d, (Attention(d, heads, T, 0.5, 0.5, 0.5, 1 / 3),)))
        for act, nf, L in (("relu", True, 6), ("gelu", False, 6), ("relu", True, 24),
                           ("gelu", False, 24)):
            if quick and L > 6:
                continue
            layer = nn.TransformerEncoderLayer(d, heads, ffn, 0.0, act, norm_first=nf)
            m = nn.TransformerEncoder(layer, L, norm=nn.LayerNorm(d) if nf else None,
                                      enable_nested_tensor=False).double()
            tail = (LayerNorm(d),) if nf else ()
            yield (f"TransformerEncoder {'pre' if nf else 'post'}-LN {act} L={L} T={T}", m, x,
                   sp.Network(d, _blocks(d, heads, ffn, T, act, nf) * L + tail))
        m = nn.TransformerEncoderLayer(d, heads, ffn, activation="gelu", norm_first=True,
                                       batch_first=True).double().eval()
        yield (f"TransformerEncoderLayer pre-LN gelu, batch_first, eval (dropout 0.1) T={T}", m,
               x[None], sp.Network(d, _blocks(d, heads, ffn, T, "gelu", True)))


def run_transformer(quick: bool) -> tuple:
    rows, t_all = [], time.perf_counter()
    S = 16 if quick else 32
    for name, m, x, expected in transformer_cases(quick):
        net = from_module(m, x)
        same = net == expected
        t = time.perf_counter()
        prof = measure(m, x, S, seed=1)
        dt = time.perf_counter() - t
        th = sp.predict(net)
        cmp = sp.compare(th, prof)
        rows.append((name, same, cmp.verdict, cmp, S, dt, th.c[-1], prof.c[-1], prof.c_se[-1]))
        print(f"{name:60s} same={same} {cmp.verdict:9s} S={S} {dt:6.1f}s", flush=True)
    return rows, time.perf_counter() - t_all


def report_transformer(rows, total, quick) -> str:
    ok_map = sum(r[1] for r in rows)
    ok_cmp = sum(r[2] == "agree" for r in rows)
    lines = ["## Transformers: nn.MultiheadAttention, nn.TransformerEncoderLayer, "
             "nn.TransformerEncoder", "",
             f"Generated by `python -m validation.torch_check --only transformer"
             f"{' --quick' if quick else ''}` (torch {torch.__version__}). Total {total:.0f} s.",
             "",
             "Rules (stated before running): `from_module` equals the blocks of "
             "`transformer(...)` written out in this script with PyTorch's defaults (attention "
             "q, k, v 1/2 from xavier_uniform_ over the packed (3d, d) in_proj_weight, out_proj "
             "1/3, biases 0; feed-forward Linear 1/3 with bias 1/(3 fan_in), uniform; alpha = "
             "beta = 1); `compare(predict(net), measure(model, x, S))` gives `agree` on q, c, "
             "log g, log G and the token kernels `kernel_log_q`, `kernel_corr`. Inputs: one "
             "sequence of T tokens, `example_inputs(256, 1, 0, k=T)` (q0 = 1, correlation 0). "
             "d = 256, 4 heads, feed-forward 1024, float64.", "",
             f"**Summary: mapping equal in {ok_map}/{len(rows)} cases; verdict `agree` in "
             f"{ok_cmp}/{len(rows)} cases.**", "",
             "| case | mapping equal | verdict | fields | worst | c last (theory) | "
             "c last (measured) | S | measure (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, same, verdict, cmp, S, dt, cth, cmc, cse in rows:
        w = cmp.worst()
        lines.append(f"| {name} | {'yes' if same else 'NO'} | {verdict} | "
                     f"{', '.join(cmp.fields)} | {w[0]} at layer {w[1]}, z = {w[2]:.2f} | "
                     f"{cth:.4f} | {cmc:.4f} +- {cse:.4f} | {S} | {dt:.1f} |")
    bad = [r for r in rows if r[2] != "agree" or not r[1]]
    if bad:
        lines += ["", "### Cases that failed", ""]
        for r in bad:
            lines += [f"#### {r[0]}", "", "```", str(r[3]), "```", ""]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# nn.LSTM, nn.GRU: the untied theory (predict) and the tied one (predict_tied) side by side


def fresh_sequences(nx: int, T: int, c_x: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Two sequences (T, 2, nx) of q_x = 1, correlation c_x per step, inputs of different steps
    orthogonal (both theories' fresh inputs)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(nx, 2 * T, generator=g, dtype=torch.float64))
    a, b = Q[:, 0::2].T, Q[:, 1::2].T
    return math.sqrt(nx) * torch.stack([a, c_x * a + math.sqrt(1 - c_x * c_x) * b], dim=1)


def run_recurrent(quick: bool) -> tuple:
    """Per cell (nn.LSTM, nn.GRU) and H: ``measure`` of the module (tied weights, PyTorch's
    default init, 48 samples), ``predict`` (untied mean field; the LSTM only: it refuses the GRU's
    reset-after cell) and ``predict_tied`` (dynamical mean field of tied weights; defaults
    paths=4096, replicas=8, seed=0) on ``from_module``'s network, each compared by ``compare``.
    T = 8, n_x = 64, fresh inputs (c_x = 0.5), h0 of q0 = 1, c0 = 0.2, float64."""
    nx, T = 64, 8
    Hs = (128,) if quick else (128, 512, 2048)
    S = 16 if quick else 48
    rows, t_all = [], time.perf_counter()
    x = fresh_sequences(nx, T)
    for cls in (nn.LSTM, nn.GRU):
        for H in Hs:
            m = cls(nx, H).double()
            h0 = example_inputs(H, c0=0.2, dtype=torch.float64)[None]
            inp = (x, (h0, torch.zeros_like(h0))) if cls is nn.LSTM else (x, h0)
            net = from_module(m, inp)
            t = time.perf_counter()
            tied = sp.predict_tied(net, q0=1.0, c0=0.2)
            dt_th = time.perf_counter() - t
            untied = sp.predict(net, q0=1.0, c0=0.2) if cls is nn.LSTM else None
            t = time.perf_counter()
            prof = measure(m, inp, S, seed=2)
            dt = time.perf_counter() - t
            row = {"cell": cls.__name__, "H": H, "S": S, "tied": tied, "untied": untied,
                   "mc": prof, "dt": dt, "dt_th": dt_th, "cmp_tied": sp.compare(tied, prof),
                   "cmp_untied": sp.compare(untied, prof) if untied is not None else None}
            rows.append(row)
            print(f"{cls.__name__} H={H} tied {row['cmp_tied'].verdict} untied "
                  f"{row['cmp_untied'].verdict if untied is not None else '-'} {dt:.1f}s",
                  flush=True)
    return rows, time.perf_counter() - t_all


def _pm(v, se, f="{:.4f}"):
    return f"{f.format(v)} +- {f.format(se)}"


def _verdict(cmp) -> str:
    if cmp is None:
        return "refused (reset_after)"
    w = cmp.worst()
    return cmp.verdict + ("" if cmp.verdict == "agree" else f" ({w[0]} at step {w[1]}, z = "
                          f"{w[2]:.1f})")


def report_recurrent(rows, total, quick) -> str:
    lines = ["## nn.LSTM, nn.GRU: untied theory (predict) and tied theory (predict_tied)", "",
             f"Generated by `python -m validation.torch_check --only recurrent"
             f"{' --quick' if quick else ''}` (torch {torch.__version__}). Total {total:.0f} s.",
             "",
             "Rule (stated before running): `compare(theory, measure(m, x, S))` (4 SE of both "
             "plus 2 sum 1/N) gives `agree` for the tied theory `predict_tied(from_module(m, x), "
             "q0=1, c0=0.2)` (paths 4096, replicas 8). nn.GRU maps to `rnn(\"gru\", ..., "
             "reset_after=True, hidden_bias2=1/(3H))` (PyTorch's cell), which `predict` refuses. "
             "Setting: T = 8, n_x = 64, two sequences with fresh (orthogonal) inputs per step "
             "(c_x = 0.5), h0 of q0 = 1 and c0 = 0.2, PyTorch's default init, float64.", "",
             "| cell | H | S | predict (untied) | predict_tied | q_T predict | q_T predict_tied | "
             "q_T measured | c_T predict_tied | c_T measured | predict_tied (s) | measure (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    f5 = "{:.5f}"
    for r in rows:
        th, un, mc = r["tied"], r["untied"], r["mc"]
        lines.append(f"| {r['cell']} | {r['H']} | {r['S']} | {_verdict(r['cmp_untied'])} | "
                     f"{_verdict(r['cmp_tied'])} | "
                     f"{f5.format(un.q[-1]) if un is not None else '-'} | "
                     f"{_pm(th.q[-1], th.q_se[-1], f5)} | {_pm(mc.q[-1], mc.q_se[-1], f5)} | "
                     f"{_pm(th.c[-1], th.c_se[-1])} | {_pm(mc.c[-1], mc.c_se[-1])} | "
                     f"{r['dt_th']:.1f} | {r['dt']:.1f} |")
    lines += ["", "log g per step (lag T - t): predict (untied; LSTM only), predict_tied and "
              "measure (+- se).", ""]
    for r in rows:
        th, un, mc = r["tied"], r["untied"], r["mc"]
        lines += [f"{r['cell']}, H = {r['H']}:", "",
                  "| step | predict | predict_tied | measured |", "|---|---|---|---|"]
        for t in range(len(th.log_g)):
            lines.append(f"| {t + 1} | {f'{un.log_g[t]:.3f}' if un is not None else '-'} | "
                         f"{_pm(th.log_g[t], th.log_g_se[t], '{:.3f}')} | "
                         f"{_pm(mc.log_g[t], mc.log_g_se[t], '{:.3f}')} |")
        lines.append("")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# the report: sections, each regenerated on its own

SECTIONS = ("mlp", "transformer", "recurrent")
TITLE = "# signalprop.torch on the issue's must-hold sizes (issue 14)"


def _existing_sections() -> dict:
    """The sections of the current report by name (a report without markers is all "mlp")."""
    if not os.path.exists(OUT):
        return {}
    text = open(OUT).read()
    parts = re.split(r"^<!-- section: (\w+) -->\n", text, flags=re.M)
    if len(parts) == 1:
        body = text.split("\n", 1)[1].lstrip("\n") if text.startswith(TITLE) else text
        body = body.replace("\n## Cases that failed", "\n### Cases that failed")
        return {"mlp": "## MLPs, residual MLPs, BatchNorm1d MLPs\n\n"
                + body.replace("\n### MLP", "\n#### MLP")}
    out = {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    if "mlp" in out and not out["mlp"].startswith("## "):
        out["mlp"] = "## MLPs, residual MLPs, BatchNorm1d MLPs\n\n" + out["mlp"]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help="comma-separated sections to regenerate (mlp, transformer, recurrent); the "
                         "others are kept from the existing report")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        raise SystemExit(f"unknown sections {bad}; known: {', '.join(SECTIONS)}")
    sections = _existing_sections()
    t0 = time.perf_counter()
    if "mlp" in only:
        rows, total = run(args.quick)
        sections["mlp"] = report(rows, total, args.quick)
    if "transformer" in only:
        rows, total = run_transformer(args.quick)
        sections["transformer"] = report_transformer(rows, total, args.quick)
    if "recurrent" in only:
        rows, total = run_recurrent(args.quick)
        sections["recurrent"] = report_recurrent(rows, total, args.quick)
    text = TITLE + "\n\n" + "".join(f"<!-- section: {name} -->\n{sections[name].rstrip()}\n\n"
                                      for name in SECTIONS if name in sections)
    with open(OUT, "w") as fh:
        fh.write(text.rstrip() + "\n")
    print(f"wrote {OUT} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
