"""The README's sweep figure: log g^1 (the gradient variance reaching the first layer of a depth-20,
width-128 network) against sigma_w^2 for tanh and relu, theory (``predict``) as lines and Monte
Carlo (``simulate``, 32 networks per point) as points with 2 standard errors, both from sweeps.

    python docs/figures/make_sweep_figure.py [--store DIR] [--executor processes]

Prints the first rows of the sweep's DataFrame (the README shows them) and writes
docs/figures/sweep-log-g.png. Without --store the stores go to a temporary folder. For relu at
sigma_b^2 = 0, chi_1 = sigma_w^2 / 2 exactly, so log g^1 = (L - 1) log(sigma_w^2 / 2) (Schoenholz
et al. 2017, eq. 9 with chi_1 constant): the script checks the theory line against it.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from signalprop.plot import STYLE, new_figure, save  # noqa: E402
from signalprop.sweeps import Grid, sweep  # noqa: E402

DEPTH, WIDTH, SAMPLES = 20, 128, 32
ACTIVATIONS = {"tanh": "#1f77b4", "relu": "#d62728"}


def run(root: Path, executor: str):
    """The Monte Carlo sweep (theory and simulation at 9 points per activation) and a finer
    theory-only sweep for the lines; both as tidy DataFrames."""
    grid = Grid(activation=list(ACTIVATIONS), sigma_w2=[0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2],
                depth=[DEPTH], width=[WIDTH])
    res = sweep(grid, ["predict", "simulate"], store=root / "mc", executor=executor,
                options={"simulate": {"samples": SAMPLES}})
    fine = Grid(activation=list(ACTIVATIONS), sigma_w2=[0.5 + 0.025 * i for i in range(73)],
                depth=[DEPTH], width=[WIDTH])
    line = sweep(fine, "predict", store=root / "theory")
    return res.to_dataframe(), line.to_dataframe()


def check_relu(line) -> None:
    first = line[(line.layer == 1) & (line.activation == "relu")]
    for sw2, got in zip(first.sigma_w2, first["predict.log_g"]):
        want = (DEPTH - 1) * math.log(sw2 / 2)
        if abs(got - want) > 1e-12 * max(1.0, abs(want)):
            raise SystemExit(f"relu log g^1 at sigma_w2 = {sw2}: {got} != {want}")


def figure(df, line, path: Path) -> None:
    import matplotlib
    fig, axes = new_figure(1, 1, width=4.2, height=3.0)
    ax = axes[0, 0]
    with matplotlib.rc_context(STYLE):
        for act, colour in ACTIVATIONS.items():
            th = line[(line.layer == 1) & (line.activation == act)]
            ax.plot(th.sigma_w2, th["predict.log_g"], color=colour, lw=1.4,
                    label=f"{act}: theory")
            mc = df[(df.layer == 1) & (df.activation == act)]
            ax.errorbar(mc.sigma_w2, mc["simulate.log_g"], yerr=2 * mc["simulate.log_g_se"],
                        fmt="o", ms=3.5, mfc="white", color=colour, elinewidth=0.9, capsize=1.5,
                        label=f"{act}: Monte Carlo (±2 se)")
        ax.axhline(0.0, color="0.5", lw=0.8, ls=":")
        ax.set_xlabel(r"$\sigma_w^2$")
        ax.set_ylabel(r"$\log g^1$")
        ax.set_title(f"gradient variance at layer 1 (depth {DEPTH}, width {WIDTH}, "
                     r"$\sigma_b^2 = 0$)", loc="left")
        ax.legend(loc="lower right")
    save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default=None, help="folder for the two stores (default: temporary)")
    ap.add_argument("--executor", default="inline", choices=("inline", "processes"))
    ap.add_argument("--out", default=str(HERE / "sweep-log-g.png"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        df, line = run(Path(args.store or tmp), args.executor)
    check_relu(line)
    cols = ["activation", "sigma_w2", "layer", "predict.log_g", "simulate.log_g",
            "simulate.log_g_se"]
    with __import__("pandas").option_context("display.width", 120, "display.precision", 4):
        print(df[df.layer == 1][cols].head(6).to_string(index=False))
    figure(df, line, Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
