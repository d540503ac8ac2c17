"""The PyTorch bridge's figure: predicted against measured per-layer gradient variance of three
real ``nn.Module`` s at PyTorch's default initialisation, each with its theory:

* a 12-layer GELU MLP of width 512 (``nn.Sequential`` of ``nn.Linear`` + ``nn.GELU``): ``predict``;
* a 6-layer pre-LN ``nn.TransformerEncoder`` (d = 256, 4 heads, T = 8 tokens): ``predict`` on the
  T x T token kernel;
* an ``nn.LSTM`` (H = 256, T = 30 steps of mutually orthogonal inputs): ``predict_tied`` (tied weights) and the
  untied ``predict`` for contrast.

Lines: theory; points: ``measure`` (re-initialisations with PyTorch's own scheme) with 2 standard
errors. Needs torch (``pip install "signalprop[torch]"``).

    python docs/figures/make_torch_figure.py [--samples S]

Writes docs/figures/torch-predicted-vs-measured.png and prints compare's verdicts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import signalprop as sp  # noqa: E402
from signalprop.plot import new_figure, save  # noqa: E402
from signalprop.torch import example_inputs, from_module, measure  # noqa: E402


def _points(ax, prof, color, label):
    ax.errorbar(prof.layers, prof.log_g, yerr=2 * prof.log_g_se, fmt="o", ms=3, color=color,
                label=label, capsize=1.5, lw=0.8)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=32)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    S = args.samples
    fig, axes = new_figure(1, 3, width=3.0, height=2.5)
    axes = axes[0]

    mlp = nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(512, 512), nn.GELU())])
    x = example_inputs(512, 1.0)
    th, mc = sp.predict(from_module(mlp, x)), measure(mlp, x, S, seed=1)
    print("MLP:", sp.compare(th, mc).verdict)
    axes[0].plot(th.layers, th.log_g, color="k", lw=1.2, label="predict")
    _points(axes[0], mc, "#d62728", "measure")
    axes[0].set_title("GELU MLP, width 512")

    layer = nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, norm_first=True)
    enc = nn.TransformerEncoder(layer, 6, norm=nn.LayerNorm(256), enable_nested_tensor=False)
    tok = example_inputs(256, 1.0, 0.0, k=8)
    th, mc = sp.predict(from_module(enc, tok)), measure(enc, tok, S, seed=2)
    print("pre-LN encoder:", sp.compare(th, mc).verdict)
    axes[1].plot(th.layers, th.log_g, color="k", lw=1.2, label="predict")
    _points(axes[1], mc, "#d62728", "measure")
    axes[1].set_title("pre-LN TransformerEncoder")

    H, nx, T = 256, 64, 30
    lstm = nn.LSTM(nx, H).double()
    q, _ = torch.linalg.qr(torch.randn(nx, T, dtype=torch.float64))
    xs = q.T * nx ** 0.5          # orthogonal step inputs, q_x = 1: the theory's fresh directions
    h0 = example_inputs(H, 1.0, dtype=torch.float64)
    inp = (xs, (h0, torch.zeros_like(h0)))
    net = from_module(lstm, inp)
    tied, untied, mc = sp.predict_tied(net, 1.0), sp.predict(net, 1.0), measure(lstm, inp, S, seed=3)
    print("LSTM: tied", sp.compare(tied, mc).verdict, "| untied", sp.compare(untied, mc).verdict)
    axes[2].plot(tied.layers, tied.log_g, color="k", lw=1.2, label="predict_tied")
    axes[2].plot(untied.layers, untied.log_g, color="0.6", lw=1.0, ls="--", label="predict (untied)")
    _points(axes[2], mc, "#d62728", "measure")
    axes[2].set_title("nn.LSTM, H = 256")
    for ax, xl in zip(axes, ("layer", "layer (sublayer)", "time step")):
        ax.set_xlabel(xl)
        ax.set_ylabel("log g")
        ax.legend(fontsize=6, frameon=False)
    save(fig, HERE / "torch-predicted-vs-measured.png")


if __name__ == "__main__":
    main()
