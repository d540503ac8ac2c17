"""Mean-field depth scales of Schoenholz, Gilmer, Ganguli & Sohl-Dickstein (2017), "Deep
information propagation" (arXiv 1611.01232), with signalprop.

    python papers/schoenholz2017/reproduce.py            # figures into papers/schoenholz2017/
    python papers/schoenholz2017/reproduce.py --tables   # the README's comparison tables
    python papers/schoenholz2017/reproduce.py --update-readme   # ... written into README.md
    python papers/schoenholz2017/reproduce.py --quick --out /tmp/x   # a smoke run (tests)

Conventions: this paper writes VARIANCES, sigma_w^2 and sigma_b^2, as signalprop does; tanh,
sigma_b^2 = 0.05, sigma_w^2 in [1, 4]. Depth scales (CONVENTIONS.md): xi_q = -1/log(slope of the
length map at q*), xi_c = -1/log chi_c, xi_grad = 1/|log chi_1|; the trainability rule
L <~ 6 xi_c is ``signalprop.trainable_depth``. Only theory: the paper's trainability heat maps
come from training networks on MNIST and CIFAR-10, which is not reproduced here.
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np

import signalprop as sp

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))          # papers/_common.py
from _common import (README_BEGIN, README_END, agrees, decimals, flat_figure,  # noqa: E402,F401
                     parser, readme_block, styled, table_options)

ACT = "tanh"
SIGMA_B2 = 0.05                       # variance (the paper's convention)
SW2_RANGE = (1.0, 4.0)
MAX_DEPTH = 300                       # depth axis of the trainability plane
DECAY_SW2 = (1.25, 1.5, 2.5, 4.0)     # networks whose c^l, q^l transients are drawn

# --- recorded values: LITERATURE.md sec. 2 "Depth scales for tanh at sigma_b^2 = 0.05" [NUM] ------
COLUMNS = ("q_star", "chi_1", "c_star", "chi_c", "xi_q", "xi_c", "six_xi_c", "xi_grad_signed")
RECORDED = {
    1.00: ("0.19359", "0.75903", "1", "0.75903", "1.748", "3.63", "21.8", "3.63"),
    1.25: ("0.29205", "0.86324", "1", "0.86324", "1.800", "6.80", "40.8", "6.80"),
    1.50: ("0.41804", "0.93864", "1", "0.93864", "1.683", "15.79", "94.7", "15.79"),
    1.70: ("0.53308", "0.98674", "1", "0.98674", "1.558", "74.9", "449", "74.9"),
    1.76: ("0.56946", "0.99980", "1", "0.99980", "1.522", "4912", None, "4912"),
    1.80: ("0.59413", "1.00822", "0.95041", "0.99208", "1.498", "125.8", "755", "-122.1"),
    2.00: ("0.72176", "1.04767", "0.74408", "0.96111", "1.388", "25.21", "151.3", "-21.48"),
    2.50: ("1.06396", "1.13352", "0.44680", "0.91872", "1.180", "11.80", "70.8", "-7.98"),
    3.00: ("1.42801", "1.20893", "0.29932", "0.89540", "1.041", "9.05", "54.3", "-5.27"),
    4.00: ("2.19549", "1.34240", "0.16507", "0.86653", "0.873", "6.98", "41.9", "-3.40"),
}
NEAR_CRITICAL = (-1e-2, -1e-3, -1e-4, 1e-4, 1e-3, 1e-2)
KNOWN_DISAGREEMENTS = {(4.00, "c_star")}   # see README "Disagreements"
RECORDED_CRITICAL = {   # sigma_b^2 -> (critical sigma_w^2, q* there)  (LITERATURE.md sec. A(b))
    0.0: ("1.000000", None), 0.05: ("1.760955", "0.570048"), 0.09: ("1.947655", "0.763475"),
    0.3: ("2.505127", "1.461169"),
}


# ---------------------------------------------------------------------------------------------
# numbers


def depth_scales(sigma_w2: float, sigma_b2: float = SIGMA_B2) -> dict:
    """The columns of the recorded table from ``fixed_point`` and ``trainable_depth``.

    ``xi_grad_signed`` = -1/log chi_1 (negative where gradients explode), the recorded table's
    convention; signalprop's ``xi_grad`` is its absolute value 1/|log chi_1| (CONVENTIONS.md).
    """
    fp = sp.fixed_point(ACT, sigma_w2, sigma_b2)
    sign = -1.0 if fp.chi_1 > 1.0 else 1.0
    return {"q_star": fp.q_star, "chi_1": fp.chi_1, "c_star": fp.c_star, "chi_c": fp.chi_c,
            "xi_q": fp.xi_q, "xi_c": fp.xi_c,
            "six_xi_c": sp.trainable_depth(ACT, sigma_w2, sigma_b2),
            "xi_grad_signed": sign * fp.xi_grad, "regime": fp.regime}


def comparison_rows() -> list[dict]:
    """One row per compared number: table, sigma_w2 / sigma_b2, quantity, ours, recorded, agrees."""
    rows = []
    for sw2, rec in RECORDED.items():
        ours = depth_scales(sw2)
        for key, printed in zip(COLUMNS, rec):
            row = {"table": "depth", "sigma_w2": sw2, "quantity": key, "ours": ours[key],
                   "recorded": printed, "mark": "",
                   "agrees": None if printed is None else agrees(ours[key], printed)}
            if key == "six_xi_c" and printed is not None and not row["agrees"]:
                # the recorded 6 xi_c is 6 x the recorded (rounded) xi_c: say so when that is why
                rec_xi = rec[COLUMNS.index("xi_c")]
                if agrees(6 * float(rec_xi), printed) and agrees(ours["xi_c"], rec_xi):
                    row["mark"] = "†"
            if (sw2, key) in KNOWN_DISAGREEMENTS:
                row["mark"] = "‡"
            rows.append(row)
    for sb2, (sw2_printed, q_printed) in RECORDED_CRITICAL.items():
        sw2 = float(sp.critical_sigma_w2(ACT, sb2))
        rows.append({"table": "critical", "sigma_b2": sb2, "quantity": "critical sigma_w^2",
                     "ours": sw2, "recorded": sw2_printed, "agrees": agrees(sw2, sw2_printed)})
        if q_printed is not None:
            q = sp.fixed_point(ACT, sw2, sb2).q_star
            rows.append({"table": "critical", "sigma_b2": sb2, "quantity": "q* there", "ours": q,
                         "recorded": q_printed, "agrees": agrees(q, q_printed)})
    return rows


def markdown_tables(rows=None) -> str:
    """The README's tables: each cell "ours (recorded)", ours with 3 more decimals."""
    rows = comparison_rows() if rows is None else rows
    head = ("| sigma_w^2 | q* | chi_1 | c* | chi_c* | xi_q | xi_c | 6 xi_c | xi_grad (signed) "
            "| agree |")
    out = [head, "|" + " --- |" * 10]
    for sw2 in RECORDED:
        cells, n_ok, n = [], 0, 0
        for r in (r for r in rows if r["table"] == "depth" and r["sigma_w2"] == sw2):
            d = decimals(r["recorded"]) + 3 if r["recorded"] is not None else 1
            v = f"{r['ours']:.{d}f}"
            if r["recorded"] is None:
                cells.append(f"{v} (—)")
                continue
            n += 1
            n_ok += bool(r["agrees"])
            flag = "" if r["agrees"] else (f" **no**{r['mark']}" if r["mark"] else " **NO**")
            cells.append(f"{v} ({r['recorded']})" + flag)
        out.append(f"| {sw2:.2f} | " + " | ".join(cells) + f" | {n_ok}/{n} |")
    out += ["", "| sigma_b^2 | quantity | signalprop | recorded [NUM] | agrees |",
            "| --- | --- | --- | --- | --- |"]
    for r in (r for r in rows if r["table"] == "critical"):
        out.append(f"| {r['sigma_b2']} | {r['quantity']} | "
                   f"{r['ours']:.{decimals(r['recorded']) + 2}f} | {r['recorded']} | "
                   f"{'yes' if r['agrees'] else '**NO**'} |")
    crit = float(sp.critical_sigma_w2(ACT, SIGMA_B2))
    out += ["", f"Near the edge of chaos (critical sigma_w^2 = {crit:.6f}): xi_c |1 - chi_1| -> 1 "
            "from both sides (xi_c ~ 1/|1 - chi_1|), while xi_q stays finite.", "",
            "| sigma_w^2 - critical | chi_1 | xi_c | xi_c abs(1 - chi_1) | xi_q |",
            "| --- | --- | --- | --- | --- |"]
    for delta in NEAR_CRITICAL:
        fp = sp.fixed_point(ACT, crit + delta, SIGMA_B2)
        out.append(f"| {delta:+.0e} | {fp.chi_1:.6f} | {fp.xi_c:.5g} | "
                   f"{fp.xi_c * abs(1 - fp.chi_1):.4f} | {fp.xi_q:.4f} |")
    return "\n".join(out)


def sw2_grid(n_uniform: int = 61, n_near: int = 10) -> tuple[np.ndarray, float]:
    """sigma_w^2 on [1, 4]: uniform, plus points approaching the edge of chaos geometrically
    from both sides (so the divergence of xi_c shows); and the critical sigma_w^2."""
    crit = float(sp.critical_sigma_w2(ACT, SIGMA_B2))
    near = crit + np.outer([-1.0, 1.0], np.logspace(-5, -1.3, n_near)).ravel()
    return np.unique(np.concatenate([np.linspace(*SW2_RANGE, n_uniform), near])), crit


# ---------------------------------------------------------------------------------------------
# figures


def _recorded(key):
    x = [sw2 for sw2, rec in RECORDED.items() if rec[COLUMNS.index(key)] is not None]
    y = [abs(float(RECORDED[sw2][COLUMNS.index(key)])) for sw2 in x]
    return np.array(x), np.array(y)


@styled
def figure_depth_scales(sw2, crit, fps, out, depth=80):
    """(a) xi_c, xi_q, |xi_grad| against sigma_w^2; (b) c^l -> c* and (c) q^l -> q* transients
    from ``predict`` with their predicted slopes exp(-l / xi)."""
    fig, (a, b, c) = flat_figure(1, 3, width=3.4, height=2.8)
    xi_c = np.array([f.xi_c for f in fps])
    xi_q = np.array([f.xi_q for f in fps])
    xi_g = np.array([f.xi_grad for f in fps])
    a.plot(sw2, xi_c, color="#d62728", label=r"$\xi_c$")
    a.plot(sw2, xi_q, color="#1f77b4", label=r"$\xi_q$")
    a.plot(sw2, xi_g, color="0.45", ls=":", label=r"$|\xi_\nabla| = 1/|\log\chi_1|$")
    for key, col in (("xi_c", "#d62728"), ("xi_q", "#1f77b4")):
        x, y = _recorded(key)
        a.plot(x, y, "o", mfc="none", mec=col, ms=5, mew=0.9)
    a.plot([], [], "o", mfc="none", mec="0.3", label="recorded [NUM]")
    a.axvline(crit, color="black", ls="--", lw=1.0, label=rf"critical $\sigma_w^2$ = {crit:.4f}")
    a.set(yscale="log", xlabel=r"$\sigma_w^2$", ylabel="depth scale (layers)", xlim=SW2_RANGE)
    a.set_title(rf"(a) depth scales, tanh, $\sigma_b^2 = {SIGMA_B2}$", loc="left")
    a.legend(loc="upper right", frameon=False)
    colors = ("#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd")
    for s2, col in zip(DECAY_SW2, colors):
        fp = sp.fixed_point(ACT, s2, SIGMA_B2)
        # layer 1 starts on q* (q0 chosen so), with c^1 = 0.2: a pure correlation transient
        q0 = (fp.q_star - SIGMA_B2) / s2
        c0 = (0.2 * fp.q_star - SIGMA_B2) / (fp.q_star - SIGMA_B2)
        net = sp.mlp(depth, 1000, ACT, sigma_w2=s2, sigma_b2=SIGMA_B2)
        prof = sp.predict(net, q0, c0)
        dev = np.abs(prof.c - fp.c_star)
        l = prof.layers
        b.semilogy(l, dev, color=col, label=rf"$\sigma_w^2$ = {s2}")
        # the predicted asymptotic slope, drawn through the last layer (linear regime)
        b.semilogy(l, dev[-1] * np.exp(-(l - l[-1]) / fp.xi_c), color=col, ls="--", lw=0.8)
        # q transient: q^1 = 3 q*
        q0 = (3.0 * fp.q_star - SIGMA_B2) / s2
        profq = sp.predict(net, q0)
        devq = np.abs(profq.q - fp.q_star) / fp.q_star
        c.semilogy(l, devq, color=col, label=rf"$\sigma_w^2$ = {s2}")
        k = 15  # through layer 15, where the deviation is small but well above rounding
        c.semilogy(l, devq[k - 1] * np.exp(-(l - k) / fp.xi_q), color=col, ls="--", lw=0.8)
    b.set(xlabel="layer $l$", ylabel=r"$|c^l - c^*|$", ylim=(1e-12, 1), xlim=(1, depth))
    b.set_title(r"(b) $c^l \to c^*$; dashed: $\propto e^{-l/\xi_c}$", loc="left")
    b.legend(loc="lower left", frameon=False)
    c.set(xlabel="layer $l$", ylabel=r"$|q^l - q^*| / q^*$", ylim=(1e-12, 10), xlim=(1, 30))
    c.set_title(r"(c) $q^l \to q^*$; dashed: $\propto e^{-l/\xi_q}$", loc="left")
    c.legend(loc="upper right", frameon=False)
    fig.savefig(out / "fig1_depth_scales.png", dpi=110)


@styled
def figure_trainability(sw2, crit, train, fps, out):
    """The (sigma_w^2, depth) plane with the line L = 6 xi_c (``trainable_depth``)."""
    fig, (a,) = flat_figure(1, 1, width=5.0, height=3.3)
    xi_c = np.array([f.xi_c for f in fps])
    top = np.minimum(train, MAX_DEPTH * 10)
    a.fill_between(sw2, 0, top, color="#2ca02c", alpha=0.15, lw=0,
                   label=r"predicted trainable: $L < 6\,\xi_c$")
    a.plot(sw2, train, color="#2ca02c", lw=1.6, label=r"$6\,\xi_c$ (trainable_depth)")
    a.plot(sw2, xi_c, color="#d62728", lw=1.0, ls="--", label=r"$\xi_c$")
    a.axvline(crit, color="black", ls=":", lw=1.0,
              label=rf"edge of chaos, $\sigma_w^2$ = {crit:.4f}")
    x, y = _recorded("six_xi_c")
    a.plot(x, y, "o", mfc="none", mec="#2ca02c", ms=5, mew=0.9, label=r"recorded $6\,\xi_c$ [NUM]")
    a.set(xlim=SW2_RANGE, ylim=(0, MAX_DEPTH), xlabel=r"$\sigma_w^2$", ylabel="depth $L$")
    a.set_title(rf"trainability (theory only), tanh, $\sigma_b^2 = {SIGMA_B2}$", loc="left")
    a.legend(loc="upper right", frameon=True, framealpha=0.9)
    fig.text(0.01, -0.03, "The paper's heat map (training accuracy on MNIST / CIFAR-10) is not "
             "reproduced: no networks are trained here.", fontsize=7)
    fig.savefig(out / "fig2_trainability.png", dpi=110)


def main(argv=None) -> int:
    args = parser(__doc__, HERE, "coarse sigma_w^2 grid (smoke test)").parse_args(argv)
    if table_options(args, lambda quick: markdown_tables(), HERE / "README.md"):
        return 0
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    sw2, crit = sw2_grid(7, 2) if args.quick else sw2_grid()
    fps = [sp.fixed_point(ACT, s, SIGMA_B2) for s in sw2]
    train = np.array([sp.trainable_depth(ACT, s, SIGMA_B2) for s in sw2])
    t1 = time.perf_counter()
    figure_depth_scales(sw2, crit, fps, args.out, depth=20 if args.quick else 80)
    figure_trainability(sw2, crit, train, fps, args.out)
    t2 = time.perf_counter()
    print(f"{len(sw2)} values of sigma_w^2: theory {t1 - t0:.1f} s, figures {t2 - t1:.1f} s; "
          f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
