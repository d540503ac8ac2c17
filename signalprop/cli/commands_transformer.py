"""The ``transformer`` command: the mean-field profile of a transformer stack
(:func:`signalprop.transformer`; theory in docs/theory/attention.md).

Each row is a layer of the network as :func:`signalprop.transformer` builds it (pre-LN: the two
residual sums of every block, then the final LN; post-LN: attention sum, LN, feed-forward sum,
LN): ``q`` the second moment of token 0, ``c`` the correlation of tokens 0 and 1 (rank collapse:
``c -> 1``), ``log g`` the gradient of the loss ``<v, y^L_0>`` (CONVENTIONS.md)."""

from __future__ import annotations

import argparse

from ..architectures import transformer
from ..meanfield import predict
from .args import activation_from, add_activation_options, add_save_options
from .output import print_table, save_profile, shown_layers

__all__ = ["add_transformer", "run_transformer"]

#: choices of the options (validated again, with the parameter named, by transformer())
LN_CHOICES = ("pre", "post")
LOGIT_CHOICES = ("sqrt", "linear")
SCALING_CHOICES = ("fixed", "inv_sqrt_depth", "gpt2", "deepnet")


def add_transformer(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ln", required=True, choices=LN_CHOICES,
                   help="layer-norm placement: pre (Xiong et al. 2020) or post (Vaswani et al. 2017)")
    p.add_argument("--depth", type=int, required=True, metavar="L", help="number of blocks")
    p.add_argument("--width", type=int, default=256, metavar="N", help="model width (default: 256)")
    p.add_argument("--heads", type=int, default=4, metavar="H",
                   help="attention heads; must divide --width (default: 4)")
    p.add_argument("--tokens", type=int, default=8, metavar="T", help="tokens (default: 8)")
    p.add_argument("--logit-scale", default="sqrt", choices=LOGIT_CHOICES,
                   help="attention logits times 1/sqrt(d_head) or 1/d_head (default: sqrt)")
    p.add_argument("--scaling", default="fixed", choices=SCALING_CHOICES,
                   help="residual branch scaling: fixed, inv_sqrt_depth (Noci et al. 2022), gpt2, "
                        "deepnet (post-LN only) (default: fixed)")
    p.add_argument("--causal", action="store_true", help="causal attention mask")
    p.add_argument("--c0", type=float, default=0.0,
                   help="correlation of the input tokens, in [0, 1) (default: 0)")
    add_activation_options(p, default="gelu")
    p.add_argument("--every", type=int, default=0, metavar="K",
                   help="print every K-th row (text only; default: about 50 rows)")
    add_save_options(p)


def _c0(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"c0 (the input token correlation) must be in [0, 1), got {value!r}")
    return float(value)


def run_transformer(args: argparse.Namespace) -> dict:
    c0 = _c0(args.c0)
    net = transformer(args.depth, args.width, heads=args.heads, tokens=args.tokens, ln=args.ln,
                      activation=activation_from(args), logit_scale=args.logit_scale,
                      causal=args.causal, scaling=args.scaling)
    T = args.tokens
    prof = predict(net, c0=c0)      # T tokens of unit second moment, pairwise correlation c0
    c_final = None if prof.c is None else float(prof.c[-1])
    out = {"ln": args.ln, "depth": args.depth, "width": args.width, "heads": args.heads,
           "tokens": T, "logit_scale": args.logit_scale, "scaling": args.scaling,
           "causal": bool(args.causal), "activation": args.activation, "c0": c0,
           "rows": int(prof.depth), "final_c": c_final, "first_log_g": float(prof.log_g[0])}
    d = prof.to_dict()
    out.update({k: d[k] for k in ("layers", "q", "log_q", "c", "log_g", "log_G") if k in d})
    if not args.json:
        print(f"transformer: {args.ln}-LN, {args.depth} blocks ({prof.depth} rows), width "
              f"{args.width}, {args.heads} heads, {T} tokens, {args.logit_scale} logits, "
              f"{args.scaling} scaling, {args.activation}, c0={c0:g}")
        headers = ["row", "q"] + (["c"] if prof.c is not None else []) + ["log_g"]
        rows = []
        for i in shown_layers(prof.depth, args.every):
            row = [int(prof.layers[i]), prof.q[i]]
            if prof.c is not None:
                row.append(prof.c[i])
            rows.append(row + [prof.log_g[i]])
        print_table(headers, rows)
        final = "n/a (one token)" if c_final is None else format(c_final, ".6g")
        print(f"final token correlation {final}, log g at the first row {prof.log_g[0]:.6g}")
    save_profile(args, prof, f"{args.ln}-LN transformer, {args.depth} blocks, T={T}", out)
    return out
