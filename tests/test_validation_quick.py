"""The quick subset of the validation suite (theory vs simulation), run as a test."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

validation = pytest.importorskip("validation")


def test_quick_validation_passes_and_writes_the_report(tmp_path, capsys):
    status = validation.main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0, out
    report = (tmp_path / "report.md").read_text()
    assert "| case |" in report and "**agree**" in report
    assert "expected to fail at finite width" in report
    for case in validation.quick_catalogue():
        assert case.name in report
    figs = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert figs == ["finite-width.png", "quick.png"]


def test_catalogue_is_well_formed():
    cases = validation.catalogue()
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    assert set(c.family for c in cases) <= set(validation.FAMILIES)
    acts = {c.activation for c in cases if c.family == "activations"}
    from signalprop.activations import activations
    assert acts == set(activations()) - {"swish"}
    widths = {c.width for c in cases if c.family == "widths"}
    assert min(widths) == 64 and max(widths) == 4096
    depths = {c.depth for c in cases}
    assert min(depths) <= 10 and max(depths) >= 1000
    assert {c.weights for c in cases} == {"gaussian", "orthogonal", "uniform"}
    assert any(c.c0 is None for c in cases) and any(c.c0 is not None for c in cases)
    # the a-priori expectation depends on the widths only (and, for batch norm, on B >= 6)
    for c in cases:
        heavy_tails = c.batch_size is not None and c.batch_size < 6
        assert (c.expected == "agree") == (c.beta < 0.5 and not heavy_tails)
    assert all(c.expected == "disagree" for c in cases if c.family == "finite-width")


def test_bad_arguments_exit_with_status_2(capsys):
    assert validation.main(["--quick", "--jobs", "0"]) == 2
    assert validation.main(["--quick", "--case", "no-such-case"]) == 2


def test_cli_validate_quick(tmp_path, capsys):
    import json
    from signalprop.cli import main
    assert main(["validate", "--quick", "--out", str(tmp_path), "--no-figures", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["exit_status"] == 0 and d["report"].endswith("report.md")
    assert (tmp_path / "report.md").exists()
    assert main(["validate", "--quick", "--family", "nope"]) == 2
    assert capsys.readouterr().err.startswith("signalprop: error: ")
