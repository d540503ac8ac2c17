"""signalprop.progress: when a bar is drawn, what it shows, throttling, and that it never changes
a result (simulate, jacobian_singular_values, spectrum give the same numbers with and without)."""

from __future__ import annotations

import io

import numpy as np
import pytest

import signalprop as sp
from signalprop import progress as pg
from signalprop.cli import main


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(pg.ENV, raising=False)


def test_when_a_bar_is_drawn(monkeypatch):
    assert not pg.enabled(None, io.StringIO())          # auto: not a terminal
    assert pg.enabled(None, _Tty())                     # auto: a terminal
    assert pg.enabled(True, io.StringIO()) and not pg.enabled(False, _Tty())
    monkeypatch.setenv(pg.ENV, "0")
    assert not pg.enabled(True, _Tty()) and not pg.enabled(None, _Tty())
    monkeypatch.setenv(pg.ENV, "1")
    assert pg.enabled(None, io.StringIO())


def test_an_inner_auto_bar_stays_quiet_while_one_is_drawn():
    outer, inner = _Tty(), _Tty()
    with pg.progress_bar(2, "outer", stream=outer) as bar:
        assert isinstance(bar, pg.Progress)
        assert not pg.enabled(None, inner)
        assert pg.enabled(True, inner)
    assert pg.enabled(None, inner)


def test_bad_flag_names_the_parameter():
    with pytest.raises(TypeError, match="progress must be True, False or None"):
        pg.enabled("yes")
    with pytest.raises(TypeError, match="progress"):
        sp.simulate(sp.mlp(2, 4, "tanh"), 2, 0, progress=1)
    with pytest.raises(ValueError, match="total must be a number >= 0"):
        pg.Progress(-1, stream=io.StringIO())


def test_render_line():
    """37 of 100 in 3 s: 12.33/s, 63 left take 5.1 s."""
    head, tail = "sim:  37% |", " 37/100 [00:03<00:05, 12.3 it/s]"
    line = pg.render(37, 100, 3.0, "sim", "it", width=80)
    assert line.startswith(head) and line.endswith("|" + tail) and len(line) == 80
    room = 80 - len(head) - len(tail) - 1                   # the bar between the two '|'
    assert line.count("#") == int(0.37 * room) and line.count(" ") >= room - int(0.37 * room)
    assert pg.render(5, None, 2.0, "x") == "x: 5 it [00:02, 2.5 it/s]"
    assert pg.render(1, 10, 4.0, unit="case").endswith("[00:04<00:36, 4 s/case]")
    assert pg.render(0, 10, 0.0).endswith("[00:00<?, ? it/s]")
    assert pg.render(7200, 7200, 3725.0).split("[")[1].startswith("1:02:05<00:00")


def test_throttled_to_the_interval(monkeypatch):
    """10 000 updates 1 ms apart (10 s on a fake clock) at interval 0.1 s: the first draw, one per
    0.1 s, and the final one."""
    clock = [0.0]

    def tick():
        clock[0] += 0.001
        return clock[0]
    monkeypatch.setattr(pg.time, "monotonic", tick)
    out = _Tty()
    with pg.progress_bar(10_000, "t", stream=out, interval=0.1) as bar:
        for _ in range(10_000):
            bar.update()
    assert 99 <= bar.redraws <= 102
    text = out.getvalue()
    assert text.endswith("\n") and "100% |" in text.rsplit("\r", 1)[1]


def test_off_writes_nothing_and_write_passes_lines_through(capsys):
    stream = io.StringIO()
    bar = pg.progress_bar(5, "x", progress=False, stream=stream)
    bar.update(3)
    bar.write("a line")
    bar.close()
    assert stream.getvalue() == "" and capsys.readouterr().out == "a line\n"
    tty = _Tty()
    with pg.progress_bar(2, "x", stream=tty) as bar:
        bar.write("between")
        bar.update(2)
    assert capsys.readouterr().out == "between\n"
    assert tty.getvalue().count("\r") >= 3      # drawn, cleared for the line, drawn again


def test_track_counts_every_item():
    out = _Tty()
    assert list(pg.track(range(4), "t", stream=out, progress=True)) == [0, 1, 2, 3]
    assert "4/4" in out.getvalue()


def test_progress_never_changes_results(capsys):
    net = sp.mlp(4, 12, "tanh", sigma_w2=1.5, sigma_b2=0.05)
    quiet = sp.simulate(net, 20, 3, c0=0.4, chunk=4, progress=False)
    assert capsys.readouterr().err == ""
    loud = sp.simulate(net, 20, 3, c0=0.4, chunk=4, progress=True)
    err = capsys.readouterr().err
    assert "simulate: 100% |" in err and "20/20" in err
    for f in ("q", "c", "log_g", "log_G", "q_se", "log_g_se"):
        np.testing.assert_array_equal(getattr(quiet, f), getattr(loud, f))
    a = sp.jacobian_singular_values(net, 3, 1, progress=False)
    b = sp.jacobian_singular_values(net, 3, 1, progress=True)
    np.testing.assert_array_equal(a.log_singular_values, b.log_singular_values)
    np.testing.assert_array_equal(sp.jacobian(net, 2, 1, progress=True),
                                  sp.jacobian(net, 2, 1, progress=False))
    s1, s2 = sp.spectrum(net, progress=False), sp.spectrum(net, progress=True)
    assert s1.mean == s2.mean and s1.upper_edge == s2.upper_edge
    err = capsys.readouterr().err
    assert "jacobian_singular_values: 100%" in err and "spectrum: 100% |" in err


def test_auto_is_off_when_stderr_is_not_a_terminal(capsys):
    sp.simulate(sp.mlp(2, 6, "tanh"), 4, 0)        # pytest's captured stderr is no terminal
    assert capsys.readouterr().err == ""


def test_cli_quiet_turns_the_bar_off(capsys, monkeypatch):
    monkeypatch.setenv(pg.ENV, "1")                  # auto bars on whatever stderr is
    argv = ["simulate", "--depth", "2", "--width", "6", "--samples", "4", "--json"]
    assert main(argv) == 0
    assert "simulate: 100%" in capsys.readouterr().err
    assert main(argv + ["--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["spectrum", "--depth", "2", "--json", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
