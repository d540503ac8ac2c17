"""Transformer stacks (signalprop.layers.attention, signalprop.transformer): mean-field theory on the
T x T token kernel against Monte Carlo of finite stacks (dense engine, width 256, fixed seeds).
Writes validation/attention_report.md. Run: python -m validation.attention_check (about 5 min on
2 cores).

Case families:
1. agreement: pre-LN and post-LN, depths 6 and 24, T = 8 and 32, 1/sqrt(d) and 1/d logits
   (compare's verdict; the theory's Monte Carlo error over the logits is reported beside it);
2. Xiong et al. 2020: the stream gradient g at the output of the last feed-forward residual over
   that at the first, depths 6..48, pre-LN against post-LN, theory and Monte Carlo;
3. Noci et al. 2022: the token correlation c at the last layer, depths 6..48, post-LN with unit
   branches against 1/sqrt(L) branches, theory and Monte Carlo.
4. (``--xiong-weights``, run alone, about 1 min; writes validation/attention_weights_report.md)
   Xiong et al. 2020 with their initialisation: E||dL/dW_2||^2 of the first and last feed-forward
   sublayers, depths 6..48, pre- and post-LN, theory (``ffn_weight_gradients``) and Monte Carlo.
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np

import signalprop as sp
from signalprop.layers.attention import ffn_weight_gradients
from signalprop.layers.compose import Add, draws_weights
from signalprop.layers.dense import Dense
from signalprop.sampling import Streams, sampler
from signalprop.simulate import network_inputs

WIDTH, HEADS, SAMPLES = 256, 4, 32


def _net(L, T, ln, scale, scaling="fixed"):
    return sp.transformer(L, WIDTH, HEADS, T, ln=ln, logit_scale=scale, scaling=scaling)


def agreement() -> list:
    rows = []
    for ln in ("pre", "post"):
        for L in (6, 24):
            for T in (8, 32):
                for scale in ("sqrt", "linear"):
                    net = _net(L, T, ln, scale)
                    t = time.time()
                    th = sp.predict(net)
                    t_th = time.time() - t
                    t = time.time()
                    mc = sp.simulate(net, SAMPLES, seed=11)
                    t_mc = time.time() - t
                    cmp = sp.compare(th, mc)
                    notes = th.meta.get("numerical", [])
                    err = max([n.get("forward_rel_se", 0.0) for n in notes]
                              + [n.get("backward_rel_se", 0.0) for n in notes] + [0.0])
                    w = cmp.worst()
                    rows.append((ln, L, T, scale, cmp.verdict, f"{w[0]} at layer {w[1]}, "
                                 f"z = {w[2]:.2f}", err, th.c[-1], mc.c[-1], mc.c_se[-1],
                                 t_th, t_mc))
                    print(ln, L, T, scale, cmp.verdict, f"{t_th:.1f}s {t_mc:.1f}s",
                          file=sys.stderr, flush=True)
    return rows


def _ffn_rows(L, ln):
    """0-based rows of the first and last feed-forward residual."""
    per = 2 if ln == "pre" else 4
    first = 1 if ln == "pre" else 2
    return first, first + per * (L - 1)


def xiong(post_runs: dict) -> list:
    rows = []
    for ln in ("pre", "post"):
        for L in (6, 12, 24, 48):
            net = _net(L, 8, ln, "sqrt")
            th = sp.predict(net)
            mc = sp.simulate(net, SAMPLES, seed=12, return_samples=True)
            if ln == "post":
                post_runs[L] = (th, mc)         # section 3 reuses them (unit branches)
            a, b = _ffn_rows(L, ln)
            r_th = th.log_g[b] - th.log_g[a]
            per = mc.samples["log_g"]
            # ratio of sample means; standard error by the delta method on the two means
            wa, wb = np.exp(per[:, a] - per[:, a].max()), np.exp(per[:, b] - per[:, b].max())
            r_mc = mc.log_g[b] - mc.log_g[a]
            za = (wa - wa.mean()) / wa.mean()
            zb = (wb - wb.mean()) / wb.mean()
            se = float(np.std(zb - za, ddof=1) / np.sqrt(len(za)))
            rows.append((ln, L, r_th, r_mc, se, th.log_g[b], mc.log_g[b], mc.log_g_se[b]))
            print("xiong", ln, L, file=sys.stderr, flush=True)
    return rows


def noci(post_runs: dict) -> list:
    rows = []
    for scaling in ("fixed", "inv_sqrt_depth"):
        for L in (6, 12, 24, 48):
            if scaling == "fixed":
                th, mc = post_runs[L]
            else:
                net = _net(L, 8, "post", "sqrt", scaling)
                th = sp.predict(net)
                mc = sp.simulate(net, SAMPLES, seed=13)
            rows.append((scaling, L, th.c[-1], mc.c[-1], mc.c_se[-1]))
            print("noci", scaling, L, file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# 4. Xiong et al. 2020 with their initialisation: the W_2 weight gradients (--xiong-weights)


def xiong_net(L: int, ln: str, T: int = 8, width: int = WIDTH) -> sp.Network:
    """Xiong et al. 2020, sec. 3 setup: W_Q = W_K = 0 (uniform attention), Xavier d x d weights
    (sigma^2 = 1 for W_V, W_O, W_1, W_2), ReLU feed-forward of width d, no biases, one head."""
    return sp.transformer(L, width, 1, T, ln=ln, ffn_ratio=1.0, activation="relu", sigma_q2=0.0,
                          sigma_k2=0.0, sigma_ffn2=1.0, sigma_ffn_out2=1.0)


def _ffn_paths(net: sp.Network) -> list:
    """``(row, path, j, scale)`` of W_2 (last Dense of a path with >= 2 Dense layers) per Add row."""
    out = []
    for row, la in enumerate(net.layers):
        if not isinstance(la, Add):
            continue
        for p, (path, s) in enumerate(zip(la.paths, la.scales)):
            dense = [j for j, sub in enumerate(path) if isinstance(sub, Dense)]
            if len(dense) >= 2:
                out.append((row, p, dense[-1], s))
    return out


def ffn_weight_gradients_mc(net: sp.Network, samples: int, seed: int, batch: int = 4):
    """Monte Carlo of ``||dL/dW_2||_F^2`` per sample (rows) and feed-forward sublayer (columns),
    for the loss ``<v, t^L_0>`` (``v ~ N(0, I)``) on token 0 of the inputs ``network_inputs(N, 1,
    0, T)``: the dense samplers run forward and backward in real scale, and ``dL/dW_2 = s sum_a
    delta_a x_a^T`` with ``delta_a`` the gradient at the residual sum's output (``s`` the branch
    scale) and ``x_a = phi(h_a)`` the hidden units feeding ``W_2``; ``||.||_F^2 = sum_ab <delta_a,
    delta_b> <x_a, x_b>``. Samples in batches of ``batch`` (weights are held in full)."""
    T, widths = net.coupled_inputs, [int(w) for w in net.widths]
    x0 = network_inputs(widths[0], 1.0, 0.0, T)
    where = _ffn_paths(net)
    rules = [sampler(la, n, "dense") for la, n in zip(net.layers, widths)]
    out = np.empty((samples, len(where)))
    for start in range(0, samples, batch):
        idx = range(start, min(samples, start + batch))
        fwd = Streams([np.random.default_rng(np.random.SeedSequence([seed, i, 0])) for i in idx])
        bwd = Streams([np.random.default_rng(np.random.SeedSequence([seed, i, 1])) for i in idx])
        x = np.repeat(x0[None], len(idx), axis=0)
        ctxs = []
        for r in rules:
            _, x, ctx = r.forward(x, fwd)
            ctxs.append(ctx)
        gt = np.zeros_like(x)
        gt[:, 0] = bwd.normal((widths[-1],))
        col = {row: c for c, (row, *_ ) in enumerate(where)}
        for row in range(len(rules) - 1, -1, -1):
            if row < len(rules) - 1:
                gt = rules[row].to_tracked(gx, ctxs[row])
            if row in col:
                _, p, j, s = where[col[row]]
                pre = ctxs[row][p][j - 1]               # the Dense before W_2: (ctx, h)
                act = net.layers[row].paths[p][j - 1].activation
                xh = np.asarray(act.phi(pre[1]), float)
                d = s * gt
                out[start:start + len(idx), col[row]] = np.einsum(
                    "sab,sab->s", d @ np.swapaxes(d, 1, 2), xh @ np.swapaxes(xh, 1, 2))
            gx = rules[row].backward(gt, ctxs[row], bwd)
    return out


def _log_ratio_mc(w: np.ndarray, a: int, b: int) -> tuple:
    """``log(mean w_b / mean w_a)`` and its delta-method standard error."""
    wa, wb = w[:, a] / w[:, a].mean(), w[:, b] / w[:, b].mean()
    return (float(np.log(w[:, b].mean() / w[:, a].mean())),
            float(np.std(wb - wa, ddof=1) / np.sqrt(len(wa))))


def _log_mean_mc(w: np.ndarray) -> tuple:
    return float(np.log(w.mean())), float(np.std(w, ddof=1) / np.sqrt(len(w)) / w.mean())


def xiong_weights(samples: int = SAMPLES) -> list:
    rows = []
    for ln in ("pre", "post"):
        for L in (6, 12, 24, 48):
            net = xiong_net(L, ln)
            t = time.time()
            th = ffn_weight_gradients(sp.predict(net))
            t_th = time.time() - t
            t = time.time()
            w = ffn_weight_gradients_mc(net, samples, seed=14)
            t_mc = time.time() - t
            r_mc, r_se = _log_ratio_mc(w, 0, w.shape[1] - 1)
            last, last_se = _log_mean_mc(w[:, -1])
            first, first_se = _log_mean_mc(w[:, 0])
            rows.append((ln, L, th.log_ratio(), r_mc, r_se, th.log_norm2[-1], last, last_se,
                         th.log_norm2[0], first, first_se, t_th, t_mc))
            print("xiong-weights", ln, L, f"{t_mc:.1f}s", file=sys.stderr, flush=True)
    return rows


def main_xiong_weights() -> None:
    t0 = time.time()
    rows = xiong_weights()
    out = ["# Xiong et al. 2020: W_2 weight-gradient norms, theory against Monte Carlo", "",
           f"Generated by `python -m validation.attention_check --xiong-weights` "
           f"({time.time() - t0:.0f} s). Xiong et al.'s initialisation (sec. 3): W_Q = W_K = 0 "
           f"(uniform attention), Xavier d x d weights (sigma^2 = 1 for W_V, W_O, W_1, W_2), ReLU "
           f"feed-forward of width d, one head, no biases; width d = {WIDTH}, T = 8 tokens of "
           "q0 = 1 and correlation 0 (`network_inputs`), loss <v, t^L_0> on token 0. Theory: "
           "`ffn_weight_gradients(predict(net))`, E||dL/dW_2||_F^2 = N N_h sum_ab K^h_ab Pi_ab "
           f"(docs/theory/attention.md, 'Weight gradients'). Monte Carlo: {SAMPLES} sample "
           "networks, dense samplers, ||s sum_a delta_a x_a^T||_F^2 per sample "
           "(`ffn_weight_gradients_mc`); log of the mean, delta-method standard errors.", "",
           "| LN | blocks | log ratio last/first theory | MC | log E norm^2 last theory | MC | "
           "log E norm^2 first theory | MC | theory s | MC s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.3f} +- {r[4]:.3f} | {r[5]:.3f} | "
                   f"{r[6]:.3f} +- {r[7]:.3f} | {r[8]:.3f} | {r[9]:.3f} +- {r[10]:.3f} | "
                   f"{r[11]:.2f} | {r[12]:.1f} |")
    out += ["", "Ratios are of E||dL/dW_2||_F^2 (the norm's ratio is about the square root at "
            "this width, where ||.||^2 concentrates)."]
    path = pathlib.Path(__file__).with_name("attention_weights_report.md")
    path.write_text("\n".join(out) + "\n")
    print(f"wrote {path} in {time.time() - t0:.0f} s", file=sys.stderr)


def main() -> None:
    t0 = time.time()
    post_runs: dict = {}
    ag = agreement()
    xi = xiong(post_runs)
    no = noci(post_runs)
    out = ["# Transformer stacks: theory against Monte Carlo", "",
           f"Generated by `python -m validation.attention_check` ({time.time() - t0:.0f} s). "
           f"Width {WIDTH}, {HEADS} heads, feed-forward ratio 4 (gelu, sigma^2 = 2 then 1), all "
           "attention variances 1, no biases, inputs: T tokens of q0 = 1 and pairwise correlation "
           f"0 (`network_inputs`); {SAMPLES} sample networks per case, dense engine. Theory: "
           "`predict` on the kernel path (1/sqrt(d) logits: Monte Carlo over the logits, 2048 "
           "draws; 'theory MC error' = the largest relative standard error it states, "
           "`meta['numerical']`).", "",
           "## 1. Agreement (compare's rule)", "",
           "| LN | blocks | T | logits | verdict | worst | theory MC error | c last (theory) | "
           "c last (MC) | theory s | MC s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ag:
        out.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]:.1e} | "
                   f"{r[7]:.4f} | {r[8]:.4f} +- {r[9]:.4f} | {r[10]:.1f} | {r[11]:.1f} |")
    out += ["", "## 2. Xiong et al. 2020: gradient at the last vs the first feed-forward residual",
            "", "log(g_last / g_first) of the residual stream at the outputs of the first and last "
            "feed-forward residual sums (T = 8, 1/sqrt(d) logits), and log g at the last one "
            "(their Theorem 1: post-LN independent of depth, pre-LN falling like 1/L in g, i.e. "
            "1/sqrt(L) in the norm).", "",
            "| LN | blocks | log ratio theory | log ratio MC | log g last theory | log g last MC |",
            "|---|---|---|---|---|---|"]
    for r in xi:
        out.append(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.3f} +- {r[4]:.3f} | {r[5]:.3f} | "
                   f"{r[6]:.3f} +- {r[7]:.3f} |")
    out += ["", "## 3. Noci et al. 2022: token correlation at the last layer, post-LN", "",
            "| branches | blocks | c theory | c MC |", "|---|---|---|---|"]
    for r in no:
        out.append(f"| {r[0]} | {r[1]} | {r[2]:.5f} | {r[3]:.5f} +- {r[4]:.5f} |")
    out += ["", "(The unit-branch rows are the post-LN runs of section 2.)"]
    path = pathlib.Path(__file__).with_name("attention_report.md")
    path.write_text("\n".join(out) + "\n")
    print(f"wrote {path} in {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    if "--xiong-weights" in sys.argv[1:]:
        main_xiong_weights()
    else:
        main()
