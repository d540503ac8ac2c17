"""Worst error of signalprop's Gaussian expectations against gaussian_reference.json, per activation.

    python tests/reference/accuracy_report.py

1-D: relative error of E phi^2, E phi'^2, d/dq E phi^2 and (relative to sqrt(E phi^2)) E phi, over
q = 1e-6 .. 1e4. 2-D: error of E[phi(u1) phi(u2)] and E[phi'(u1) phi'(u2)] relative to the natural
scale sqrt(E f(u1)^2 E f(u2)^2), over the (q1, q2, c) set of the reference file.
"""

from __future__ import annotations

import json
from pathlib import Path

import mpmath as mp
import numpy as np

from signalprop.activations import activation

REF = json.loads((Path(__file__).resolve().parent / "gaussian_reference.json").read_text())


def main():
    print(f"{'activation':12s} {'1-D worst':>10s}  {'at':28s} {'2-D worst':>10s}  at")
    for name, rows in REF["one_d"].items():
        a = activation(name)
        q = np.array([r["q"] for r in rows])
        ref = {k: np.array([float(mp.mpf(r[k])) for r in rows]) for k in rows[0] if k != "q"}
        m2, d2 = ref["second_moment"], ref["dphi_second_moment"]
        worst1 = (0.0, "")
        for key, got, scale in (("mean", a.mean(q), np.sqrt(m2)),
                                ("second_moment", a.second_moment(q), m2),
                                ("dphi_second_moment", a.dphi_second_moment(q), d2),
                                ("second_moment_slope", a.second_moment_slope(q),
                                 np.abs(ref["second_moment_slope"]))):
            err = np.abs(got - ref[key]) / scale
            i = int(err.argmax())
            if err[i] >= worst1[0]:
                worst1 = (float(err[i]), f"{key} q={q[i]:g}")
        rows2 = REF["two_d"][name]
        q1, q2, c = (np.array([r[k] for r in rows2]) for k in ("q1", "q2", "c"))
        mom = {"cross_moment": dict(zip(q.tolist(), m2)), "dphi_cross_moment": dict(zip(q.tolist(), d2))}
        worst2 = (0.0, "")
        for key, fn in (("cross_moment", a.cross_moment), ("dphi_cross_moment", a.dphi_cross_moment)):
            r = np.array([float(mp.mpf(row[key])) for row in rows2])
            scale = np.sqrt([mom[key][u] * mom[key][v] for u, v in zip(q1.tolist(), q2.tolist())])
            err = np.abs(fn(q1, q2, c) - r) / scale
            i = int(err.argmax())
            if err[i] >= worst2[0]:
                worst2 = (float(err[i]), f"{key[:5]} ({q1[i]:g}, {q2[i]:g}, {c[i]:g})")
        print(f"{name:12s} {worst1[0]:10.1e}  {worst1[1]:28s} {worst2[0]:10.1e}  {worst2[1]}")


if __name__ == "__main__":
    main()
