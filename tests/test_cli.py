"""The command line: exit codes, one-line errors, JSON keys, and numbers identical to the API's.

Most tests call ``main([...])`` in-process; two run the installed ``signalprop`` entry point.
CLI numbers are compared with the API's for exact equality: the CLI calls the same functions with
the same arguments, and JSON round-trips float64 exactly.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import signalprop as sp
from signalprop.cli import COMMANDS, main

SCALARS = {"q_star", "c_star", "chi_1", "chi_c", "xi_q", "xi_c", "xi_grad", "regime"}
PROFILE = {"layers", "q", "c", "log_g", "log_G"}


def _strict_loads(text: str) -> dict:
    """json.loads that refuses NaN/Infinity tokens (the CLI must write them as strings)."""
    def bad(token):
        raise AssertionError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=bad)


def run_json(capsys, *argv) -> dict:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.count("\n") == 1, "--json prints exactly one line"
    return _strict_loads(out)


def _num(v):
    return float(v) if isinstance(v, str) else v


# --------------------------------------------------------------------------------------------
# numbers equal the API's


def test_fixed_point_json_equals_api(capsys):
    d = run_json(capsys, "fixed-point", "--activation", "tanh", "--sigma-w2", "2.5",
                 "--sigma-b2", "0.1")
    assert SCALARS <= d.keys()
    fp = sp.fixed_point("tanh", 2.5, 0.1)
    for k in SCALARS - {"regime"}:
        assert d[k] == getattr(fp, k), k
    assert d["regime"] == fp.regime == "chaotic"


def test_fixed_point_inf_is_a_string(capsys):
    d = run_json(capsys, "fixed-point", "--activation", "relu", "--sigma-w2", "2")
    assert d["regime"] == "critical"
    assert d["xi_c"] == "inf" and d["xi_grad"] == "inf"


def test_fixed_point_init_sets_sigma_w2(capsys):
    d = run_json(capsys, "fixed-point", "--activation", "relu", "--init", "he")
    assert d["sigma_w2"] == 2.0 and d["chi_1"] == 1.0


def test_activation_parameters(capsys):
    d = run_json(capsys, "fixed-point", "--activation", "leaky_relu", "--slope", "0.2",
                 "--sigma-w2", "1.5")
    assert d["chi_1"] == pytest.approx(1.5 * (1 + 0.2**2) / 2, rel=1e-14)
    d = run_json(capsys, "fixed-point", "--activation", "elu", "--alpha", "0.5", "--sigma-w2", "1.2",
                 "--sigma-b2", "0.1")
    assert d["q_star"] == sp.fixed_point(sp.activation("elu", alpha=0.5), 1.2, 0.1).q_star


def test_custom_expression(capsys):
    d = run_json(capsys, "fixed-point", "--activation", "x*tanh(x)", "--sigma-w2", "0.6",
                 "--sigma-b2", "0.1")
    assert d["q_star"] == sp.fixed_point("x*tanh(x)", 0.6, 0.1).q_star
    assert d["activation"] == "x*tanh(x)"


def test_critical_vectorised(capsys):
    d = run_json(capsys, "critical", "--activation", "erf", "--sigma-b2", "0", "0.05", "0.3")
    assert d["sigma_b2"] == [0.0, 0.05, 0.3]
    np.testing.assert_array_equal(d["critical_sigma_w2"],
                                  sp.critical_sigma_w2("erf", [0.0, 0.05, 0.3]))


def test_critical_without_edge_reports_nan(capsys):
    d = run_json(capsys, "critical", "--activation", "relu", "--sigma-b2", "0", "0.1")
    assert d["critical_sigma_w2"] == [2.0, "nan"]
    assert "no edge of chaos" in d["note"]


def test_predict_json_equals_api(capsys):
    d = run_json(capsys, "predict", "--activation", "tanh", "--sigma-w2", "1.5", "--sigma-b2",
                 "0.05", "--depth", "30", "--width", "500", "--q0", "2", "--c0", "0.3")
    assert SCALARS | PROFILE <= d.keys()
    prof = sp.predict(sp.mlp(30, 500, "tanh", sigma_w2=1.5, sigma_b2=0.05), q0=2.0, c0=0.3)
    for k in PROFILE:
        np.testing.assert_array_equal(d[k], getattr(prof, k), err_msg=k)
    assert d["log_g"][-1] == 0.0 and d["layers"] == list(range(1, 31))
    fp = sp.fixed_point("tanh", 1.5, 0.05, q0=prof.q[0])
    assert d["q_star"] == fp.q_star and d["chi_1"] == fp.chi_1


def test_predict_one_input_has_no_c(capsys):
    d = run_json(capsys, "predict", "--depth", "5", "--init", "xavier")
    assert "c" not in d and d["sigma_w2"] == 1.0
    assert len(d["q"]) == 5


def test_predict_text_table(capsys):
    assert main(["predict", "--depth", "200", "--sigma-w2", "1.2", "--c0", "0.5"]) == 0
    out = capsys.readouterr().out
    rows = [ln.split() for ln in out.splitlines() if ln.split() and ln.split()[0].isdigit()]
    assert rows[0][0] == "1" and rows[-1][0] == "200"
    assert 40 <= len(rows) <= 60                  # about 50 rows for a deep network
    assert "regime" in out and "log_G" in out


def test_residual_and_norm_options_build_the_api_networks(capsys):
    d = run_json(capsys, "predict", "--residual", "--branch-scale", "1/sqrt(L)", "--depth", "16",
                 "--activation", "relu", "--init", "he", "--width", "64", "--norm", "layer", "--c0", "0.2")
    net = sp.resnet(16, 64, "relu", beta=0.25, init="he", norm="layer")
    prof = sp.predict(net, c0=0.2)
    for k in PROFILE:
        np.testing.assert_array_equal(d[k], getattr(prof, k), err_msg=k)
    assert not SCALARS & d.keys()              # no fixed point for a residual network
    d = run_json(capsys, "predict", "--norm", "rms", "--depth", "3", "--width", "32")
    assert d["layers"] == list(range(1, 7)) and d["q"][1] == 1.0
    d = run_json(capsys, "simulate", "--residual", "--depth", "4", "--width", "64", "--samples", "3",
                 "--engine", "matrix-free", "--seed", "5")
    mc = sp.simulate(sp.resnet(4, 64, "tanh"), 3, 5, engine="matrix-free")
    np.testing.assert_array_equal(d["log_g"], mc.log_g)


def test_demo_writes_figure(capsys, tmp_path):
    path = tmp_path / "sub" / "demo.png"
    d = run_json(capsys, "demo", "--out", str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert d["figure"] == str(path)
    assert d["activation"] == "tanh" and d["sigma_w2"] == 1.5 and d["depth"] == 50
    prof = sp.predict(sp.mlp(50, 1000, "tanh", sigma_w2=1.5, sigma_b2=0.05), c0=0.5)
    np.testing.assert_array_equal(d["q"], prof.q)
    np.testing.assert_array_equal(d["log_g"], prof.log_g)


def test_phase_writes_figure_and_csv(capsys, tmp_path):
    prefix = tmp_path / "ph"
    d = run_json(capsys, "phase", "--activation", "erf", "--sigma-w2-range", "1", "3",
                 "--sigma-b2-range", "0.05", "0.5", "--n", "4", "--out", str(prefix))
    pd = sp.phase_diagram("erf", np.linspace(1, 3, 4), np.linspace(0.05, 0.5, 4))
    for k in ("q_star", "chi_1", "xi_c", "c_star", "critical_sigma_w2"):
        np.testing.assert_array_equal(np.asarray(d[k], float), getattr(pd, k), err_msg=k)
    assert (tmp_path / "ph.png").read_bytes()[:4] == b"\x89PNG"
    lines = (tmp_path / "ph.csv").read_text().splitlines()
    assert lines[0] == "sigma_w2,sigma_b2,q_star,chi_1,c_star,xi_c" and len(lines) == 1 + 16
    row = [float(v) for v in lines[1 + 4 * 2 + 3].split(",")]   # sigma_b2 index 2, sigma_w2 index 3
    assert row[:4] == [3.0, pd.sigma_b2[2], pd.q_star[2, 3], pd.chi_1[2, 3]]
    crit = (tmp_path / "ph-critical.csv").read_text().splitlines()
    assert len(crit) == 5 and float(crit[1].split(",")[1]) == pd.critical_sigma_w2[0]


def test_activations_table(capsys):
    d = run_json(capsys, "activations")
    rows = {r["activation"]: r for r in d["activations"]}
    assert {"tanh", "sigmoid", "relu", "gelu", "silu", "selu"} <= rows.keys()
    # maxima: closed forms (tolerance 1e-12 absolute on the value, 1e-6 on the location)
    assert rows["tanh"]["max_dphi"] == pytest.approx(1.0, abs=1e-12)
    assert rows["sigmoid"]["max_dphi"] == pytest.approx(0.25, abs=1e-12)
    s2 = math.sqrt(2.0)
    gelu_max = 0.5 * (1 + math.erf(1.0)) + s2 * math.exp(-1.0) / math.sqrt(2 * math.pi)
    assert rows["gelu"]["max_dphi"] == pytest.approx(gelu_max, abs=1e-12)
    assert float(rows["gelu"]["argmax_dphi"]) == pytest.approx(s2, abs=1e-4)
    assert rows["relu"]["argmax_dphi"].endswith("inf]")          # a plateau, x > 0
    # normalising constants are the API's
    for name in ("tanh", "relu", "selu"):
        nc = sp.normalising_constants(name)
        assert {k: rows[name][k] for k in ("mean", "std", "gain")} == nc
    # the article's saturation numbers: true values and where phi' really is 1e-4
    sat = {s["activation"]: s for s in d["saturation"]}
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))                       # noqa: E731
    assert sat["sigmoid"]["dphi"] == pytest.approx(sig(5) * sig(-5), rel=1e-12)
    assert sat["tanh"]["dphi"] == pytest.approx(1.0 / math.cosh(4.0) ** 2, rel=1e-12)
    assert sat["sigmoid"]["dphi"] == pytest.approx(6.648e-3, rel=1e-3)
    assert sat["tanh"]["dphi"] == pytest.approx(1.341e-3, rel=1e-3)
    s_hi = (1 + math.sqrt(1 - 4e-4)) / 2                              # s (1 - s) = 1e-4
    assert sat["sigmoid"]["x_where_dphi_is_1e-4"] == pytest.approx(math.log(s_hi / (1 - s_hi)), abs=1e-9)
    assert sat["tanh"]["x_where_dphi_is_1e-4"] == pytest.approx(math.acosh(100.0), abs=1e-9)


def test_activations_text(capsys):
    assert main(["activations", "--activation", "sigmoid", "--activation", "tanh"]) == 0
    out = capsys.readouterr().out
    assert "9.2101" in out and "5.2983" in out and "0.006648" in out and "0.001341" in out


def test_every_command_has_json_and_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "--json" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# bad input: exit 2, one line on stderr, nothing on stdout


BAD = [
    (["fixed-point", "--sigma-w2", "0"], "sigma_w2"),
    (["fixed-point", "--sigma-w2", "-1"], "sigma_w2"),
    (["fixed-point", "--sigma-w2", "nan"], "sigma_w2"),
    (["predict", "--sigma-w2", "inf"], "sigma_w2"),
    (["fixed-point", "--sigma-b2", "-0.1"], "sigma_b2"),
    (["predict", "--sigma-b2", "nan"], "sigma_b2"),
    (["critical", "--sigma-b2", "0.1", "-1"], "sigma_b2"),
    (["critical", "--sigma-b2", "inf"], "sigma_b2"),
    (["predict", "--depth", "0"], "depth"),
    (["predict", "--depth", "2.5"], "depth"),
    (["predict", "--width", "0"], "width"),
    (["demo", "--width", "-3"], "width"),
    (["predict", "--q0", "0"], "q0"),
    (["predict", "--q0", "-1"], "q0"),
    (["predict", "--q0", "nan"], "q0"),
    (["fixed-point", "--q0", "0"], "q0"),
    (["predict", "--c0", "1.5"], "c0"),
    (["predict", "--c0", "-1.01"], "c0"),
    (["predict", "--c0", "nan"], "c0"),
    (["fixed-point", "--activation", "foo"], "tanh"),       # lists the known names
    (["predict", "--activation", "x**"], "x**"),
    (["critical", "--activation", "tanh(x"], "tanh(x"),
    (["fixed-point", "--activation", "x*y"], "x"),
    (["fixed-point", "--activation", "tanh", "--slope", "0.1"], "slope"),
    (["fixed-point", "--activation", "leaky_relu", "--slope", "nan"], "slope"),
    (["predict", "--init", "he", "--sigma-w2", "2"], "--init"),
    (["predict", "--init", "bogus"], "init"),
    (["phase", "--n", "0"], "n"),
    (["phase", "--sigma-w2-range", "0", "1", "--n", "2"], "sigma_w2"),
    (["phase", "--sigma-b2-range", "1", "0", "--n", "2"], "sigma_b2"),
    (["phase", "--sigma-b2-range", "1"], "sigma-b2-range"),
    (["predict", "--residual", "--branch-scale", "-1"], "beta"),
    (["predict", "--residual", "--branch-scale", "big"], "branch-scale"),
    (["predict", "--branch-scale", "0.5"], "--residual"),
    (["predict", "--norm", "group"], "norm"),
    (["simulate", "--residual", "--branch-depth", "0"], "branch_depth"),
    (["no-such-command"], "no-such-command"),
    ([], "COMMAND"),
]


@pytest.mark.parametrize("argv,word", BAD, ids=[" ".join(a) or "<none>" for a, _ in BAD])
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, argv, word):
    if argv and argv[0] == "phase":
        argv = argv + ["--out", str(tmp_path / "p")]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("signalprop: error: ")
    assert word in err
    assert "Traceback" not in err


def test_unknown_activation_lists_names(capsys):
    assert main(["predict", "--activation", "tanhh"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in sp.activations())


# --------------------------------------------------------------------------------------------
# the installed entry point


def _entry_point() -> list:
    """The ``signalprop`` script installed next to this Python (not whichever one is first on
    PATH), else ``python -m signalprop.cli``."""
    exe = Path(sys.executable).parent / "signalprop"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "signalprop.cli"]


def test_entry_point_json(tmp_path):
    res = subprocess.run([*_entry_point(), "predict", "--depth", "20", "--c0", "0.5", "--json"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    d = _strict_loads(res.stdout)
    assert SCALARS | PROFILE <= d.keys()
    prof = sp.predict(sp.mlp(20, 1000, "tanh"), c0=0.5)
    np.testing.assert_array_equal(d["c"], prof.c)
    np.testing.assert_array_equal(d["log_G"], prof.log_G)


def test_entry_point_bad_input(tmp_path):
    res = subprocess.run([*_entry_point(), "fixed-point", "--sigma-w2", "-1"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr == "signalprop: error: sigma_w2 must be > 0, got -1.0\n"


def test_module_entry_point_bad_input(tmp_path):
    """``python -m signalprop.cli`` (the fallback) behaves as the script does."""
    res = subprocess.run([sys.executable, "-m", "signalprop.cli", "predict", "--q0", "nan"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == "signalprop: error: q0 must be finite, got nan\n"


# --------------------------------------------------------------------------------------------
# issue 10, item 9: files, warnings, exit status


def test_unwritable_out_exits_2(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for argv in (["demo", "--depth", "3", "--out", str(blocker / "x.png")],
                 ["phase", "--n", "2", "--out", str(blocker / "p")]):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert err.startswith("signalprop: error: ") and err.count("\n") == 1, err
        assert str(blocker) in err


def test_json_writes_files_only_with_out(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = run_json(capsys, "phase", "--n", "2")
    assert d["files"] == [] and list(tmp_path.iterdir()) == []
    d = run_json(capsys, "demo", "--depth", "3")
    assert "figure" not in d and list(tmp_path.iterdir()) == []
    assert main(["phase", "--n", "2"]) == 0                      # text mode: the default prefix
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "signalprop-phase-critical.csv", "signalprop-phase.csv", "signalprop-phase.png"]


@pytest.mark.parametrize("argv", [["phase", "--n", "100000"], ["predict", "--depth", "10000000"],
                                  ["predict", "--width", str(10 ** 30)]])
def test_work_that_cannot_fit_is_refused_in_one_line(capsys, argv):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("signalprop: error: "), err
    assert ("memory" in err and "GiB" in err) or "in [1, " in err


def test_floating_point_failures_are_one_line(capsys, monkeypatch):
    """A numpy floating-point warning inside a command is one error line, never a warning
    printed before it (here forced: a command whose computation overflows)."""
    import signalprop.cli as cli

    def overflowing(args):
        return {"x": float(np.exp(np.float64(1000.0)))}
    monkeypatch.setitem(cli.COMMANDS, "fixed-point", cli.Command("test", cli._add_fixed_point,
                                                                 overflowing))
    assert main(["fixed-point", "--sigma-w2", "1e300"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("signalprop: error: floating-point failure (overflow encountered in exp)")
    assert "--sigma-w2 1e300" in err


def test_deliberate_warnings_are_one_line_each_after_success(capsys, monkeypatch):
    import warnings

    import signalprop.cli as cli

    def warns(args):
        warnings.warn("a note for the user", RuntimeWarning)
        return {"ok": True}
    monkeypatch.setitem(cli.COMMANDS, "fixed-point", cli.Command("test", cli._add_fixed_point,
                                                                 warns))
    assert main(["fixed-point", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"ok": True, "signalprop_version": sp.__version__}
    assert err == "signalprop: warning: a note for the user\n"


# --------------------------------------------------------------------------------------------
# issue 11, item 4: the CLI parses, calls the API (signalprop.saturation, one network builder)
# and prints


def test_saturation_module_closed_forms():
    """signalprop.saturation against closed forms (abs 1e-12 on maxima, 1e-9 on crossings)."""
    from signalprop.saturation import article_saturation, dphi_crossing, dphi_max
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))                       # noqa: E731
    assert dphi_max(sp.activation("sigmoid")).value == pytest.approx(0.25, abs=1e-12)
    m = dphi_max(sp.activation("tanh"))
    assert m.value == pytest.approx(1.0, abs=1e-12) and abs(float(m.where)) < 1e-4
    relu = dphi_max(sp.activation("relu"))
    assert relu.value == 1.0 and relu.where == "[0.0000, inf]"
    assert dphi_crossing(sp.activation("tanh"), 1e-2) == pytest.approx(math.acosh(10.0), abs=1e-9)
    assert math.isnan(dphi_crossing(sp.activation("relu"), 1e-4))    # phi' never falls to 1e-4
    checks = {c.activation: c for c in article_saturation()}
    assert checks["tanh"].x == 4.0 and checks["sigmoid"].x == 5.0
    assert checks["tanh"].dphi == pytest.approx(1.0 / math.cosh(4.0) ** 2, rel=1e-12)
    assert checks["sigmoid"].dphi == pytest.approx(sig(5) * sig(-5), rel=1e-12)
    assert checks["tanh"].x_at_level == pytest.approx(math.acosh(100.0), abs=1e-9)
    assert set(checks["tanh"].to_dict()) == {"activation", "x", "article_dphi", "dphi",
                                             "x_where_dphi_is_1e-4"}


@pytest.mark.parametrize("argv,expected", [
    (["finite-width", "--widths", "4", "5", "6", "--init", "he", "--depth", "3"],
     lambda: sp.mlp(3, [4, 5, 6], "relu", init="he")),
    (["clip", "--depth", "2", "--width", "7", "--sigma-w2", "1.5", "--sigma-b2", "0.1"],
     lambda: sp.mlp(2, 7, "relu", sigma_w2=1.5, sigma_b2=0.1)),
    (["spectrum", "--depth", "2", "--width", "8", "--init", "orthogonal"],
     lambda: sp.mlp(2, 8, "tanh", init="orthogonal")),
    (["spectrum", "--depth", "2", "--width", "8", "--weights", "uniform"],
     lambda: sp.mlp(2, 8, "tanh", weights="uniform")),
    (["simulate", "--depth", "3", "--width", "9", "--residual", "--branch-scale", "0.5"],
     lambda: sp.resnet(3, 9, "tanh", beta=0.5)),
    (["predict", "--depth", "3", "--width", "9", "--norm", "batch", "--batch-size", "4"],
     lambda: sp.mlp(3, 9, "tanh", norm="batch", batch_size=4)),
])
def test_one_network_builder_for_every_command(argv, expected):
    """Every command's network comes from cli.args.network_from and equals the API's (by value)."""
    from signalprop.cli import build_parser, network_from
    net = network_from(build_parser().parse_args(argv))
    assert net == expected()
    assert net != sp.mlp(3, 5, "tanh")


def test_spectrum_init_orthogonal_with_other_weights_is_refused(capsys):
    assert main(["spectrum", "--depth", "2", "--init", "orthogonal", "--weights", "uniform"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "orthogonal" in err and "weights" in err


def test_cli_import_leaves_matplotlib_unloaded():
    """Start-up: importing the command line does not import matplotlib (the figure commands do)."""
    code = "import sys, signalprop.cli; print('matplotlib' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------
# issue 15: saving results (--csv, --plot; Profile.to_csv, to_dataframe)


def _read_csv(path) -> tuple[list, dict]:
    import csv
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    return header, {h: [r[i] for r in body] for i, h in enumerate(header)}


def _same(column: list, values) -> None:
    """CSV text -> float equals the array exactly (repr round-trips float64; inf/nan included)."""
    got = np.array([float(v) for v in column])
    np.testing.assert_array_equal(got, np.asarray(values, float))


def test_profile_to_csv_round_trip_with_inf_and_nan(tmp_path):
    from signalprop.results import Profile
    prof = Profile(layers=np.arange(1, 5), q=np.array([1.0, 1e300 * 10, 0.1 + 0.2, 5e-324]),
                   log_q=np.array([0.0, 700.5, math.log(0.1 + 0.2), -744.44007192138126]),
                   log_g=np.array([-1.0 / 3, np.nan, -np.inf, 0.0]),
                   log_G=np.array([2.0 / 3, 1.0, np.nan, -0.0]),
                   q_se=np.array([0.01, np.nan, 0.0, 1e-300]))
    prof.to_csv(tmp_path / "p.csv")
    text = (tmp_path / "p.csv").read_text()
    assert text.splitlines()[0] == "layer,q,log_q,log_g,log_G,q_se"      # no comment line
    assert "inf" in text and "nan" in text and "-inf" in text
    header, cols = _read_csv(tmp_path / "p.csv")
    assert cols["layer"] == ["1", "2", "3", "4"]
    for h in header[1:]:
        _same(cols[h], getattr(prof, h))
    import io
    buf = io.StringIO()
    prof.to_csv(buf)
    assert buf.getvalue() == text
    with pytest.raises(TypeError, match="path_or_file"):
        prof.to_csv(42)


def test_profile_to_dataframe():
    pd = pytest.importorskip("pandas")
    prof = sp.predict(sp.mlp(5, 100, "tanh", sigma_w2=1.5, sigma_b2=0.05), c0=0.3)
    df = prof.to_dataframe()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["layer", "q", "log_q", "c", "log_g", "log_G"]
    np.testing.assert_array_equal(df["layer"].to_numpy(), np.arange(1, 6))
    for f in ("q", "log_q", "c", "log_g", "log_G"):
        np.testing.assert_array_equal(df[f].to_numpy(), getattr(prof, f))


def test_to_dataframe_without_pandas_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)       # import pandas -> ImportError
    prof = sp.predict(sp.mlp(2, 10, "tanh"))
    with pytest.raises(ImportError, match=r'pip install "signalprop\[sweep\]"'):
        prof.to_dataframe()


def test_predict_csv_and_plot(capsys, tmp_path):
    csv_path, png = tmp_path / "sub" / "p.csv", tmp_path / "p.png"
    d = run_json(capsys, "predict", "--depth", "6", "--c0", "0.5", "--sigma-w2", "1.5",
                 "--csv", str(csv_path), "--plot", str(png))
    assert d["csv"] == str(csv_path) and d["figure"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    prof = sp.predict(sp.mlp(6, 1000, "tanh", sigma_w2=1.5), c0=0.5)
    header, cols = _read_csv(csv_path)
    assert header == ["layer", "q", "log_q", "c", "log_g", "log_G"]
    for h in header[1:]:
        _same(cols[h], getattr(prof, h))
    assert main(["predict", "--depth", "3", "--csv", str(tmp_path / "t.csv")]) == 0
    assert f"wrote {tmp_path / 't.csv'}" in capsys.readouterr().out


def test_simulate_csv_has_the_standard_errors(capsys, tmp_path):
    path = tmp_path / "s.csv"
    d = run_json(capsys, "simulate", "--depth", "3", "--width", "8", "--samples", "6",
                 "--c0", "0.2", "--csv", str(path), "--plot", str(tmp_path / "s.svg"))
    header, cols = _read_csv(path)
    assert header == ["layer", "q", "log_q", "c", "log_g", "log_G", "q_se", "log_q_se", "c_se",
                      "log_g_se", "log_G_se"]
    prof = sp.simulate(sp.mlp(3, 8, "tanh"), 6, 0, c0=0.2)
    for h in header[1:]:
        _same(cols[h], getattr(prof, h))
        if h != "log_q_se":                         # (the JSON has no log_q_se)
            np.testing.assert_array_equal(d[h], getattr(prof, h))
    assert (tmp_path / "s.svg").read_text().lstrip().startswith("<?xml")


def test_unwritable_csv_exits_2(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["predict", "--depth", "2", "--csv", str(blocker / "x.csv")]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("signalprop: error: ") and err.count("\n") == 1 and str(blocker) in err


# --------------------------------------------------------------------------------------------
# issue 12: the transformer command


def test_transformer_json_equals_api(capsys):
    d = run_json(capsys, "transformer", "--ln", "post", "--depth", "3", "--width", "64",
                 "--heads", "2", "--tokens", "4", "--c0", "0.2", "--scaling", "inv_sqrt_depth")
    net = sp.transformer(3, 64, heads=2, tokens=4, ln="post", scaling="inv_sqrt_depth")
    prof = sp.predict(net, c0=0.2)
    assert PROFILE <= set(d)
    for k in ("q", "c", "log_g", "log_G"):
        np.testing.assert_array_equal(d[k], getattr(prof, k))
    assert d["rows"] == 12 and d["final_c"] == prof.c[-1] and d["first_log_g"] == prof.log_g[0]


def test_transformer_uniform_attention_closed_form(capsys):
    """Pre-LN, 1/d logits (uniform attention at infinite width, docs/theory/attention.md), i.i.d.
    unit tokens: the first residual sum x + (1/T) sum_b LN(x)_b has q = 1 + 1/T and token
    correlation (1/T) / (1 + 1/T) = 1/(T + 1) (derived by hand, not from the code)."""
    T = 8
    d = run_json(capsys, "transformer", "--ln", "pre", "--depth", "2", "--tokens", str(T),
                 "--logit-scale", "linear")
    assert d["rows"] == 5                                   # 2 blocks x 2 sums + final LN
    assert abs(d["q"][0] - (1 + 1 / T)) < 1e-12
    assert abs(d["c"][0] - 1 / (T + 1)) < 1e-12


def test_transformer_inv_sqrt_depth_slows_rank_collapse(capsys):
    """Noci et al. 2022 (LITERATURE.md sec. 16): post-LN with unit branches aligns the tokens more
    than with 1/sqrt(L) branches."""
    args = ("transformer", "--ln", "post", "--depth", "16", "--tokens", "4")
    fixed = run_json(capsys, *args)["final_c"]
    scaled = run_json(capsys, *args, "--scaling", "inv_sqrt_depth")["final_c"]
    assert fixed > 0.9 and scaled < fixed - 0.2


def test_transformer_text_and_files(capsys, tmp_path):
    argv = ["transformer", "--ln", "pre", "--depth", "2", "--tokens", "4", "--csv",
            str(tmp_path / "t.csv")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "row" in out and "log_g" in out and "final token correlation" in out
    assert f"wrote {tmp_path / 't.csv'}" in out
    header, _ = _read_csv(tmp_path / "t.csv")
    assert header[:2] == ["layer", "q"]


@pytest.mark.parametrize("argv,word", [
    (["--heads", "3"], "heads"),
    (["--tokens", "0"], "tokens"),
    (["--c0", "1.0"], "c0"),
    (["--depth", "0"], "depth"),
    (["--ln", "mid"], "--ln"),
    (["--scaling", "deepnet"], "deepnet"),
])
def test_transformer_bad_input(capsys, argv, word):
    base = {"--ln": "pre", "--depth": "2"}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    full = ["transformer"] + [w for kv in base.items() for w in kv]
    assert main(full) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("signalprop: error: ") and err.count("\n") == 1
    assert word in err


# --------------------------------------------------------------------------------------------
# issue 13: the rnn command


def test_rnn_json_equals_api(capsys):
    d = run_json(capsys, "rnn", "--steps", "12", "--width", "64", "--sigma-w2", "1.5",
                 "--sigma-b2", "0.05", "--q-x", "0.5", "--c-x", "0.3", "--c0", "0.2")
    net = sp.rnn("rnn", 12, 64, "tanh", sigma_w2=1.5, sigma_b2=0.05, q_x=0.5, c_x=0.3)
    prof = sp.predict(net, 1.0, 0.2)
    for k in ("q", "c", "log_g"):
        np.testing.assert_array_equal(d[k], getattr(prof, k))
    ts = sp.rnn_timescales("tanh", 1.5, 1.0, 0.05, 0.5, 0.3)
    for k in ("q_star", "c_star", "chi_1", "chi_c", "xi_c", "xi_grad"):
        assert _num(d["timescales"][k]) == getattr(ts, k), k
    assert d["timescales"]["regime"] == ts.regime == "ordered"
    assert d["cell"] == "rnn" and d["tied"] is True and "simulation" not in d


def test_rnn_linear_closed_form(capsys):
    """Linear vanilla cell (derived by hand): q_e^t = sw2 q_e^{t-1} + su2 q_x + sb2 with
    q_e^1 = sw2 q0 + su2 q_x + sb2, and log g^t = (T - t) log sw2 (the loss at step T)."""
    sw2, su2, qx, sb2, q0, T = 0.9, 0.5, 2.0, 0.1, 3.0, 7
    d = run_json(capsys, "rnn", "--activation", "linear", "--steps", str(T), "--sigma-w2",
                 str(sw2), "--sigma-u2", str(su2), "--q-x", str(qx), "--sigma-b2", str(sb2),
                 "--q0", str(q0))
    q, qe = [], q0
    for _ in range(T):
        qe = sw2 * qe + su2 * qx + sb2 if q else sw2 * q0 + su2 * qx + sb2
        q.append(qe)
    np.testing.assert_allclose(d["q"], q, rtol=1e-12)
    np.testing.assert_allclose(d["log_g"], [(T - t) * math.log(sw2) for t in range(1, T + 1)],
                               rtol=1e-12, atol=1e-12)


def test_rnn_gated_cells_and_gate_bias(capsys):
    for cell, mu in (("lstm", 1.0), ("gru", 0.0), ("minimal", 0.0)):
        d = run_json(capsys, "rnn", "--cell", cell, "--steps", "4", "--width", "16",
                     "--theory", "untied")
        assert d["gate_bias"] == mu and "timescales" not in d and d["theory"] == "untied"
        prof = sp.predict(sp.rnn(cell, 4, 16), 1.0)
        np.testing.assert_array_equal(d["q"], prof.q)
    # gated cells with tied weights default to the tied theory (same seed: same numbers)
    d = run_json(capsys, "rnn", "--cell", "gru", "--steps", "4", "--width", "16",
                 "--paths", "256", "--replicas", "3", "--seed", "2")
    tied = sp.predict_tied(sp.rnn("gru", 4, 16), 1.0, paths=256, replicas=3, seed=2)
    assert d["theory"] == "tied"
    np.testing.assert_array_equal(d["log_g"], tied.log_g)
    np.testing.assert_array_equal(d["log_g_se"], tied.log_g_se)
    d = run_json(capsys, "rnn", "--cell", "lstm", "--steps", "4", "--width", "16",
                 "--gate-bias", "3", "--gate-sigma-b2", "0.2", "--untied")
    net = sp.rnn("lstm", 4, 16, gates={"forget": sp.Gate(1.0, 1.0, 3.0, 0.2)}, tied=False)
    np.testing.assert_array_equal(d["log_g"], sp.predict(net, 1.0).log_g)
    assert d["tied"] is False


def test_rnn_samples_compare_and_files(capsys, tmp_path):
    d = run_json(capsys, "rnn", "--steps", "5", "--width", "32", "--sigma-w2", "0.8",
                 "--samples", "20", "--seed", "3")
    sim = d["simulation"]
    net = sp.rnn("rnn", 5, 32, "tanh", sigma_w2=0.8)
    mc = sp.simulate(net, 20, 3)
    np.testing.assert_array_equal(sim["log_g"], mc.log_g)
    assert sim["verdict"] == sp.compare(sp.predict(net), mc).verdict
    argv = ["rnn", "--steps", "5", "--width", "16", "--csv", str(tmp_path / "r.csv")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "xi_grad" in out and "log_g" in out and f"wrote {tmp_path / 'r.csv'}" in out
    header, _ = _read_csv(tmp_path / "r.csv")
    assert header[:2] == ["layer", "q"]


@pytest.mark.parametrize("argv,word", [
    (["--steps", "0"], "steps"),
    (["--cell", "lstmx"], "--cell"),
    (["--cell", "lstm", "--gate-bias", "nan"], "gate bias"),
    (["--q-x", "-0.5"], "q_x"),
    (["--c-x", "1.5"], "c_x"),
    (["--cell", "gru", "--sigma-b2", "0.1"], "--gate-sigma-b2"),
    (["--gate-bias", "1"], "gated cells"),
    (["--samples", "1"], "samples"),
    (["--weights", "uniform"], "--weights"),
])
def test_rnn_bad_input(capsys, argv, word):
    assert main(["rnn", "--steps", "3", "--width", "8", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("signalprop: error: ") and err.count("\n") == 1
    assert word in err
