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

Models are float64 (relu/gelu at sigma_w2 = 1/3 lose a factor 6 per layer in g: 6^-50 is
below float32's normal range). Cases: MLPs (tanh, relu, gelu) x (default, He, Xavier) x widths
(256, 1024) x depths (20, 50); pre-LN residual MLPs (LayerNorm, relu branch of two Linear);
BatchNorm1d MLPs (tanh, relu; batch B = 8). Timings are wall-clock seconds of ``measure``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn as nn

import signalprop as sp
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
    lines = ["# signalprop.torch on the issue's must-hold sizes (issue 14)", "",
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
        lines += ["", "## Cases that failed", ""]
        for name, same, verdict, cmp, S, dt in bad:
            lines += [f"### {name}", "", "```", str(cmp), "```", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    rows, total = run(args.quick)
    text = report(rows, total, args.quick)
    with open(OUT, "w") as fh:
        fh.write(text)
    print(f"wrote {OUT} ({total:.0f} s)")


if __name__ == "__main__":
    main()
