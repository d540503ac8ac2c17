"""signalprop.sweeps: case hashes and seeds, executors (identical records whatever runs them),
the resumable store (interruption, killed workers and clients, self-checking log lines, torn
lines, fsync policy), tables, spec files, the CLI."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from signalprop import mlp, predict, simulate
from signalprop.cli.commands_sweep import add_sweep, run_sweep
from signalprop.sweeps import Cases, Grid, case_hash, case_seed, load, parse_spec, sweep
from signalprop.sweeps.cases import canonical
from signalprop.sweeps.evaluate import TIMING_FIELDS
from signalprop.sweeps import store as store_module
from signalprop.sweeps.store import LogWriter, atomic_write, encode_line

SMALL = Grid(activation=["tanh", "relu"], sigma_w2=[1.0, 2.0], depth=[4], width=[8])
SIM = {"simulate": {"samples": 6}}


# --- user callables: module level, so that spawned and dask workers can import them ----------

def count_calls(case, network, seed):
    """Records one call as a file in $SWEEP_TEST_CALLS (counts across processes) and fails on the
    case with fail=True when $SWEEP_TEST_FAIL is set (os._exit kills the worker if 'exit')."""
    d = Path(os.environ["SWEEP_TEST_CALLS"])
    (d / f"{case_hash(case)}-{os.getpid()}-{time.monotonic_ns()}").touch()
    mode = os.environ.get("SWEEP_TEST_FAIL", "")
    if case.get("k") == 3 and mode == "raise":
        raise ArithmeticError("case 3 fails on purpose")
    if case.get("k") == 3 and mode == "exit":
        os._exit(13)
    if case.get("k") == 3 and mode == "interrupt":
        raise KeyboardInterrupt
    time.sleep(float(os.environ.get("SWEEP_TEST_SLEEP", "0")))
    return {"k2": case["k"] ** 2, "depth": network.depth, "seed_mod": seed % 1000}


def build_fixed(case):
    return mlp(2, 4, "tanh")


def log_lines(store) -> list:
    """Every complete line of the store's logs, read and checked here without the package: each
    is a JSON object whose sha256 is SHA-256 of the text between '"sha256":"<hex>",' and the
    final '}', whose case_hash is the record's."""
    out = []
    for f in sorted(Path(store).glob("records-*.jsonl")):
        for line in f.read_bytes().split(b"\n")[:-1]:
            obj = json.loads(line)
            assert list(obj) == ["sha256", "case_hash", "arrays", "record"]
            body = line[len(b'{"sha256":"') + 64 + 2:-1]
            assert hashlib.sha256(body).hexdigest() == obj["sha256"]
            assert obj["record"]["case_hash"] == obj["case_hash"]
            out.append(obj)
    return out


def stored_without_timing(store) -> dict:
    """case hash -> the stored record's JSON text (key order as stored) and its arrays' bytes
    (so equal entries are bit-identical numbers), without the timing fields; each case is
    stored once."""
    out = {}
    for obj in log_lines(store):
        rec = obj["record"]
        for k in TIMING_FIELDS:
            rec.pop(k)
        assert obj["case_hash"] not in out
        out[obj["case_hash"]] = (json.dumps(rec), obj["arrays"])
    return out


def unpacked(value, data: bytes):
    """A stored value with its packed arrays decoded here: {"$array": "f8" or "i8", "shape",
    "at"} -> the little-endian float64/int64 array at byte offset "at" of the line's arrays."""
    if isinstance(value, dict) and value.get("$array") in ("f8", "i8"):
        n = int(np.prod(value["shape"]))
        return np.frombuffer(data, "<" + value["$array"], n, value["at"]).reshape(value["shape"])
    if isinstance(value, dict):
        return {k: unpacked(v, data) for k, v in value.items()}
    return value


@pytest.fixture
def calls(tmp_path, monkeypatch):
    d = tmp_path / "calls"
    d.mkdir()
    monkeypatch.setenv("SWEEP_TEST_CALLS", str(d))
    monkeypatch.delenv("SWEEP_TEST_FAIL", raising=False)
    return d


# --- cases, hashes, seeds --------------------------------------------------------------------

def test_case_hash_and_seed_are_sha256_of_the_canonical_json():
    case = {"sigma_w2": 1.5, "activation": "tanh", "depth": 20}
    text = '{"activation":"tanh","depth":20,"sigma_w2":1.5}'       # written out by hand
    assert case_hash(case) == hashlib.sha256(text.encode()).hexdigest()[:24]
    digest = hashlib.sha256(f"signalprop.sweep seed 7\n{text}".encode()).digest()
    assert case_seed(case, 7) == int.from_bytes(digest[:8], "big")
    assert case_seed(dict(reversed(list(case.items()))), 7) == case_seed(case, 7)
    assert case_seed(case, 8) != case_seed(case, 7)
    assert case_hash({"depth": 1}) != case_hash({"depth": 1.0})


_PLAIN_VALUES = st.one_of(st.text(max_size=8), st.integers(-10**20, 10**20), st.booleans(),
                          st.none(), st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6), _PLAIN_VALUES, max_size=6))
def test_canonical_is_the_sorted_json_text(case):
    """The direct writer of flat cases gives exactly json.dumps's text (the independent route),
    so hashes and seeds of stored cases do not change."""
    assert canonical(case) == json.dumps(case, sort_keys=True, separators=(",", ":"),
                                         ensure_ascii=True, allow_nan=False)


def test_canonical_of_other_dicts_is_json_dumps_too():
    for case in ({"a": [1, 2.5], "b": {"c": None}}, {1: "x", 2: "y"}, {"a": np.float64(0.5)}):
        assert canonical(case) == json.dumps(case, sort_keys=True, separators=(",", ":"),
                                             ensure_ascii=True, allow_nan=False)
    for bad, exc in (({"a": float("nan")}, ValueError), ({"a": 1, 2: "b"}, TypeError)):
        with pytest.raises(exc):
            canonical(bad)



def test_results_go_to_the_records_as_their_to_dict():
    """The sweep's shortcut for Result objects gives exactly ``to_dict()`` (field order,
    None fields left out), and a class with its own ``to_dict`` keeps it."""
    from signalprop.results import FixedPoint, _Result
    from signalprop.sweeps.evaluate import _result_dict
    from signalprop import fixed_point
    net = mlp(depth=5, sigma_w2=1.5)
    for res in (predict(net), predict(net, c0=0.5), simulate(net, 4, 1),
                fixed_point("tanh", 1.5, 0.1)):
        got, want = _result_dict(res), res.to_dict()
        assert list(got) == list(want) and all(got[k] is want[k] for k in want)

    class Own(FixedPoint):
        def to_dict(self) -> dict:
            return {"own": 1}
    own = Own(**fixed_point("tanh", 1.5, 0.1).to_dict())
    assert isinstance(own, _Result) and _result_dict(own) == {"own": 1}


def test_grid_is_the_product_with_the_last_axis_fastest():
    g = Grid(a=[1, 2], b=["x", "y", "z"])
    assert len(g) == 6
    assert list(g)[:4] == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"},
                           {"a": 2, "b": "x"}]


@pytest.mark.parametrize("make, exc, text", [
    (lambda: Grid(), ValueError, "at least one axis"),
    (lambda: Grid(depth=5), TypeError, "axis 'depth'"),
    (lambda: Grid(depth=[]), TypeError, "axis 'depth'"),
    (lambda: Grid(depth=[1, 1]), ValueError, "repeats"),
    (lambda: Grid(depth=[float("nan")]), ValueError, "finite"),
    (lambda: Grid(depth=[[1, 2]]), TypeError, "str, int, float, bool or None"),
    (lambda: Grid(layer=[1]), ValueError, "reserved"),
    (lambda: Grid(a=list(range(1001)), b=list(range(1001))), ValueError, "at most"),
    (lambda: Cases([{"depth": 2}, {"depth": 2}]), ValueError, "repeats case 0"),
    (lambda: Cases([{"depth": 2}, 3]), TypeError, "case 1"),
    (lambda: Cases([{"bad key": 2}]), ValueError, "identifiers"),
])
def test_bad_cases_are_refused(make, exc, text):
    with pytest.raises(exc, match=text):
        make()


@pytest.mark.parametrize("kwargs, exc, text", [
    (dict(what="spectrum"), ValueError, "what must be one of"),
    (dict(what=["predict", "predict"]), ValueError, "twice"),
    (dict(executor="threads"), ValueError, "executor must be one of"),
    (dict(workers=0), ValueError, "workers"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(address="tcp://127.0.0.1:1"), ValueError, "address goes with executor='dask'"),
    (dict(options={"simulate": {"samplez": 3}}), ValueError, "unknown key 'samplez'"),
    (dict(options={"simulate": {"samples": 0}}), ValueError, "samples"),
    (dict(options={"spectrum": {}}), ValueError, "unknown evaluator"),
    (dict(build=lambda c: mlp(2), executor="processes"), TypeError, "picklable"),
])
def test_bad_arguments_are_refused(kwargs, exc, text):
    with pytest.raises(exc, match=text):
        sweep([{"depth": 2, "width": 4}], **kwargs)


def test_unknown_case_key_names_the_allowed_ones():
    with pytest.raises(ValueError, match="'widht' is not a parameter of mlp; allowed keys: depth"):
        sweep([{"depth": 2, "widht": 4}])
    with pytest.raises(ValueError, match="'q0' is set both"):
        sweep([{"depth": 2, "q0": 2.0}], options={"predict": {"q0": 1.0}})


# --- what is stored equals the API called directly ------------------------------------------

def test_records_equal_direct_api_calls(tmp_path):
    res = sweep(SMALL, ["predict", "simulate", "fixed_point"], options=SIM, seed=3,
                store=tmp_path / "s")
    assert (res.computed, res.skipped, len(res)) == (4, 0, 4)
    for case, rec in zip(SMALL, res.records):
        net = mlp(**case)
        assert rec["case"] == case and rec["seed"] == case_seed(case, 3)
        th, mc = predict(net), simulate(net, 6, case_seed(case, 3))
        np.testing.assert_array_equal(rec["results"]["predict"]["log_g"], th.log_g)
        np.testing.assert_array_equal(rec["results"]["simulate"]["q"], mc.q)
        np.testing.assert_array_equal(rec["results"]["simulate"]["log_G_se"], mc.log_G_se)
        assert rec["results"]["fixed_point"]["regime"] in ("ordered", "critical", "chaotic")
    # relu at sigma_w2 = 2 is critical (chi_1 = sigma_w2 / 2 = 1; Poole et al. 2016, eq. 7)
    relu2 = res.records[3]["results"]["fixed_point"]
    assert res.records[3]["case"]["sigma_w2"] == 2.0 and relu2["chi_1"] == pytest.approx(1, abs=1e-12)


def test_same_records_inline_processes_and_any_order(tmp_path):
    """Records are byte-identical apart from timing fields: per-case seeds, not scheduling."""
    what = ["predict", "simulate", "compare"]
    sweep(SMALL, what, options=SIM, store=tmp_path / "inline")
    cases = list(SMALL)[::-1]
    sweep(cases, what, options=SIM, store=tmp_path / "proc", executor="processes", workers=2)
    a, b = stored_without_timing(tmp_path / "inline"), stored_without_timing(tmp_path / "proc")
    assert len(a) == 4 and a == b
    assert not list((tmp_path / "proc").glob(".*"))          # no temporary files left


# --- resumption ------------------------------------------------------------------------------

def test_interrupted_sweep_resumes_without_recomputing(tmp_path, calls, monkeypatch):
    grid = Grid(k=list(range(8)))
    store = tmp_path / "s"
    monkeypatch.setenv("SWEEP_TEST_FAIL", "raise")
    with pytest.raises(ArithmeticError, match="on purpose"):
        sweep(grid, count_calls, build=build_fixed, store=store)
    assert len(list(calls.iterdir())) == 4                   # cases 0..3, 3 raised
    assert {r["case"]["k"] for r in load(store).records} == {0, 1, 2}
    monkeypatch.setenv("SWEEP_TEST_FAIL", "")
    res = sweep(grid, count_calls, build=build_fixed, store=store)
    assert (res.computed, res.skipped) == (5, 3)
    assert len(list(calls.iterdir())) == 4 + 5               # nothing finished ran twice
    assert [r["results"]["count_calls"]["k2"] for r in res.records] == [k * k for k in range(8)]
    again = sweep(grid, count_calls, build=build_fixed, store=store)
    assert (again.computed, again.skipped) == (0, 8) and len(list(calls.iterdir())) == 9


def test_ctrl_c_keeps_the_finished_cases(tmp_path, calls, monkeypatch):
    monkeypatch.setenv("SWEEP_TEST_FAIL", "interrupt")
    with pytest.raises(KeyboardInterrupt):
        sweep(Grid(k=list(range(6))), count_calls, build=build_fixed, store=tmp_path / "s")
    assert [r["case"]["k"] for r in load(tmp_path / "s").records] == [0, 1, 2]


def test_replicates_are_cases_with_their_own_seeds():
    res = sweep(Grid(depth=[3], width=[8], replicate=[0, 1]), "simulate", options=SIM)
    a, b = res.records
    assert a["seed"] != b["seed"] and a["results"]["simulate"]["q"] != b["results"]["simulate"]["q"]
    with pytest.raises(ValueError, match="allowed keys: .*replicate"):
        sweep(Grid(depth=[3], repeat=[0, 1]), executor="processes")   # refused before any runs


def test_killed_worker_process_loses_nothing_finished(tmp_path, calls, monkeypatch):
    grid = Grid(k=list(range(8)))
    store = tmp_path / "s"
    monkeypatch.setenv("SWEEP_TEST_FAIL", "exit")
    with pytest.raises(RuntimeError, match="worker process died"):
        sweep(grid, count_calls, build=build_fixed, store=store, executor="processes", workers=1)
    first = {r["case"]["k"] for r in load(store).records}
    assert first <= {0, 1, 2}           # one worker runs cases in order; case 3 killed it
    monkeypatch.setenv("SWEEP_TEST_FAIL", "")
    before = len(list(calls.iterdir()))
    res = sweep(grid, count_calls, build=build_fixed, store=store)
    left = 8 - len(first)
    assert (res.computed, res.skipped) == (left, len(first))
    assert len(list(calls.iterdir())) == before + left


def odd_values(case, network, seed):
    """Arrays of every kind a result may hold, non-finite floats included."""
    return {"f": np.array([1.5, -np.inf, np.nan, 1e-310, np.inf]),
            "f32": np.array([0.1, 2.0], dtype=np.float32), "m": np.arange(6.0).reshape(2, 3),
            "i": np.array([3, -4]), "b": np.array([True, False]), "x": np.float64(0.25),
            "n": {"deep": [np.array([7.0]), "text", None]}, "e": np.zeros(0)}


def test_stored_records_read_back_equal_the_records_in_memory(tmp_path):
    res = sweep([{"depth": 2}], odd_values, build=build_fixed, store=tmp_path / "s")
    expected = {"f": [1.5, "-inf", "nan", 1e-310, "inf"], "f32": [float(np.float32(0.1)), 2.0],
                "m": [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], "i": [3, -4], "b": [True, False],
                "x": 0.25, "n": {"deep": [[7.0], "text", None]}, "e": []}
    assert res.records[0]["results"]["odd_values"] == expected
    assert load(tmp_path / "s").records[0]["results"]["odd_values"] == expected
    assert load(tmp_path / "s").records == res.records
    (obj,) = log_lines(tmp_path / "s")                      # float arrays packed bit for bit
    raw = unpacked(obj["record"]["results"]["odd_values"], base64.b64decode(obj["arrays"]))
    assert raw["f"].tobytes() == odd_values(None, None, 0)["f"].tobytes()
    assert raw["f32"][0] == np.float32(0.1) and raw["m"].shape == (2, 3)


def test_log_lines_check_themselves_and_hold_the_api_numbers(tmp_path):
    sweep(SMALL, ["predict", "simulate"], options=SIM, seed=3, store=tmp_path / "s")
    logs = list((tmp_path / "s").glob("records-*.jsonl"))
    assert len(logs) == 1 and sorted(p.name for p in (tmp_path / "s").iterdir()) == \
        sorted(["sweep.json", logs[0].name])
    lines = log_lines(tmp_path / "s")
    assert [o["record"]["case"] for o in lines] == list(SMALL)     # one line per case, in order
    for o in lines:
        case = o["record"]["case"]
        net = mlp(**case)
        stored = unpacked(o["record"]["results"], base64.b64decode(o["arrays"]))
        assert stored["predict"]["log_g"].tobytes() == predict(net).log_g.tobytes()
        assert stored["simulate"]["q"].tobytes() == simulate(net, 6, case_seed(case, 3)).q.tobytes()


def _three_case_store(tmp_path, calls) -> tuple:
    grid = Grid(k=[0, 1, 2])
    store = tmp_path / "s"
    sweep(grid, count_calls, build=build_fixed, store=store)
    (log,) = store.glob("records-*.jsonl")
    return grid, store, log


def test_a_torn_last_line_is_ignored_and_its_case_recomputed(tmp_path, calls):
    """A crash part-way through writing the last line: the line fails its check, is ignored
    with a warning, and a rerun computes only that case."""
    grid, store, log = _three_case_store(tmp_path, calls)
    data = log.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    for cut in (len(data) - 1, len(data) - 2, last + 40):      # without its newline, or shorter
        log.write_bytes(data[:cut])
        with pytest.warns(UserWarning, match="ignored 1 damaged line.*line 3"):
            assert [r["case"]["k"] for r in load(store).records] == [0, 1]
    with pytest.warns(UserWarning, match="damaged"):
        res = sweep(grid, count_calls, build=build_fixed, store=store)
    assert (res.computed, res.skipped) == (1, 2) and len(list(calls.iterdir())) == 3 + 1
    assert len(list(store.glob("records-*.jsonl"))) == 2        # the rerun wrote its own log
    with pytest.warns(UserWarning, match="damaged"):
        assert [r["results"]["count_calls"]["k2"] for r in load(store).records] == [0, 1, 4]


def test_a_damaged_line_is_ignored_and_the_others_kept(tmp_path, calls):
    grid, store, log = _three_case_store(tmp_path, calls)
    lines = log.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"k2":1', b'"k2":7')           # a flipped digit in case 1
    log.write_bytes(b"\n".join(lines))
    with pytest.warns(UserWarning, match="ignored 1 damaged line.*line 2"):
        assert [r["case"]["k"] for r in load(store).records] == [0, 2]


def test_a_case_stored_twice_keeps_the_first_log_and_line(tmp_path, calls):
    grid, store, log = _three_case_store(tmp_path, calls)
    rec = load(store).records[1]

    def altered(k2) -> bytes:
        return encode_line({**rec, "results": {"count_calls": {**rec["results"]["count_calls"],
                                                               "k2": k2}}})
    (store / "records-20000101T000000000000Z-1-00000000.jsonl").write_bytes(altered(-1) + altered(-2))
    (store / "records-29990101T000000000000Z-1-00000000.jsonl").write_bytes(altered(-3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = load(store)
    assert [r["results"]["count_calls"]["k2"] for r in res.records] == [0, -1, 4]
    assert sweep(grid, count_calls, build=build_fixed, store=store).computed == 0


def test_a_failed_write_never_appends_after_its_torn_line(tmp_path, monkeypatch):
    writer = LogWriter(tmp_path, fsync=False)
    rec = {"case_hash": "0" * 24, "case": {"k": 0}, "results": {}}
    writer.write(rec)
    real = os.write

    def half(fd, data):
        real(fd, bytes(data[:len(data) // 2]))
        raise OSError("disk full")
    monkeypatch.setattr(os, "write", half)
    with pytest.raises(OSError, match="disk full"):
        writer.write({**rec, "case_hash": "1" * 24})
    monkeypatch.setattr(os, "write", real)
    with pytest.raises(OSError, match="failed earlier"):
        writer.write({**rec, "case_hash": "2" * 24})
    writer.close()
    assert writer.path.read_bytes().count(b"\n") == 1


def test_the_log_is_synced_off_thread_at_most_every_interval_and_at_the_end(tmp_path,
                                                                           monkeypatch):
    synced: list = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    rec = {"case": {"k": 0}, "results": {}}

    def wait_for(cond) -> None:
        deadline = time.monotonic() + 10
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.01)
    writer = LogWriter(tmp_path, fsync=True, interval=3600.0)
    log_fd = writer._fd
    wait_for(lambda: len(synced) == 1)                    # at once: the folder's new entry
    for i in range(50):
        writer.write({**rec, "case_hash": f"{i:024x}"})
    time.sleep(0.05)
    assert len(synced) == 1 and log_fd not in synced     # none within the interval
    writer.close()
    assert synced[1:] == [log_fd]                        # at the end: the log
    synced.clear()
    writer = LogWriter(tmp_path, fsync=True, interval=0.05)
    log_fd = writer._fd
    writer.write({**rec, "case_hash": "a" * 24})
    wait_for(lambda: log_fd in synced)                   # no other write comes: the thread syncs
    assert log_fd in synced and not writer._dirty
    writer.close()
    synced.clear()
    sweep(Grid(depth=[2, 3]), store=tmp_path / "nosync", fsync=False)
    assert synced == []
    sweep(Grid(depth=[2, 3]), store=tmp_path / "sync")
    assert len(synced) >= 3          # sweep.json, the log and the folder, at least once each


KILLED_CLIENT = """
import sys, time
from signalprop import mlp
from signalprop.sweeps import Grid, sweep

def slow(case, network, seed):
    print(case["k"], flush=True)        # case k starts: cases < k are finished
    time.sleep(0.05)
    return {"k": case["k"]}

def build(case):
    return mlp(2, 4)

sweep(Grid(k=list(range(200))), slow, build=build, store=sys.argv[1])
"""


def test_a_killed_client_loses_nothing_finished(tmp_path):
    """SIGKILL of the process running an in-process sweep: every case finished before the one
    it was running is in the store (each line reaches the OS before the next case starts)."""
    script = tmp_path / "client.py"
    script.write_text(KILLED_CLIENT)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "s")],
                            stdout=subprocess.PIPE, text=True)
    started = [int(proc.stdout.readline()) for _ in range(6)]
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    proc.stdout.close()
    stored = {r["case"]["k"] for r in load(tmp_path / "s").records}
    assert started == list(range(6)) and set(range(5)) <= stored <= set(range(8))


def reserved_key(case, network, seed):
    return {"x": {"$array": "f8"}}


def test_result_dicts_may_not_use_the_packed_array_key(tmp_path):
    for store in (None, tmp_path / "s"):
        with pytest.raises(ValueError, match="reserves"):
            sweep([{"depth": 2}], reserved_key, build=build_fixed, store=store)


def test_a_store_of_the_one_file_per_case_format_is_refused(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.json").write_text(json.dumps(
        {"format": "signalprop.sweep/1", "spec": {}, "runs": [], "version": "0.1.0"}))
    with pytest.raises(ValueError, match="format signalprop.sweep/1.*new store"):
        load(tmp_path / "s")


def test_json_outputs_carry_the_package_version_and_the_same_numbers(tmp_path, capsys):
    import signalprop
    from signalprop.cli import main
    from signalprop.results import to_jsonable
    prof = predict(mlp(4, 8, "tanh"), c0=0.5)
    out = json.loads(prof.to_json())
    assert out.pop("signalprop_version") == signalprop.__version__ == "0.1.0"
    assert out == json.loads(json.dumps(to_jsonable(prof.to_dict())))      # numbers unchanged
    assert main(["fixed-point", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["signalprop_version"] == signalprop.__version__
    res = sweep([{"depth": 2}], store=tmp_path / "s")
    assert res.records[0]["signalprop_version"] == signalprop.__version__
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["signalprop_version"] == \
        signalprop.__version__


def test_store_of_another_spec_is_refused_and_grids_may_grow(tmp_path):
    store = tmp_path / "s"
    sweep(Grid(depth=[2, 3]), "predict", store=store)
    with pytest.raises(ValueError, match="another spec.*differs in seed"):
        sweep(Grid(depth=[2, 3]), "predict", store=store, seed=1)
    with pytest.raises(ValueError, match="differs in what"):
        sweep(Grid(depth=[2, 3]), "fixed_point", store=store)
    grown = sweep(Grid(depth=[2, 3, 4]), "predict", store=store)
    assert (grown.computed, grown.skipped) == (1, 2)
    assert [r["case"]["depth"] for r in load(store).records] == [2, 3, 4]
    fresh = sweep(Grid(depth=[2]), "fixed_point", store=store, replace=True)
    assert fresh.computed == 1 and len(load(store)) == 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="non-empty directory"):
        sweep(Grid(depth=[2]), store=tmp_path / "other")


def test_atomic_write_keeps_the_old_file_when_replacing_fails(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    atomic_write(target, "old")

    def fail(*args):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


# --- tables ----------------------------------------------------------------------------------

def test_dataframe_is_tidy_and_xarray_has_the_grid_axes(tmp_path):
    pytest.importorskip("pandas")
    pytest.importorskip("xarray")
    grid = Grid(activation=["tanh", "relu"], sigma_w2=[1.0, 2.0], depth=[3, 5], width=[8])
    sweep(grid, ["predict", "fixed_point"], store=tmp_path / "s")
    res = load(tmp_path / "s")
    df = res.to_dataframe()
    assert len(df) == 2 * 2 * (3 + 5)                       # one row per case and layer
    assert {"activation", "sigma_w2", "depth", "width", "seed", "layer", "predict.q",
            "predict.log_g", "fixed_point.chi_1"} <= set(df.columns)
    assert df.attrs["signalprop_version"] and "predict" in df.attrs["spec"]
    row = df[(df.activation == "relu") & (df.sigma_w2 == 2.0) & (df.depth == 5)]
    np.testing.assert_array_equal(row["predict.q"], predict(mlp(5, 8, "relu", sigma_w2=2.0)).q)
    ds = res.to_xarray()
    assert dict(ds["predict.q"].sizes) == {"activation": 2, "sigma_w2": 2, "depth": 2, "width": 1,
                                           "layer": 5}
    assert list(ds.activation.values) == ["tanh", "relu"]
    q = ds["predict.q"].sel(activation="tanh", sigma_w2=1.0, depth=3, width=8)
    np.testing.assert_array_equal(q.values[:3], predict(mlp(3, 8, "tanh")).q)
    assert np.isnan(q.values[3:]).all()                      # depth 3: no layers 4, 5
    assert ds["fixed_point.regime"].sel(activation="relu", sigma_w2=2.0, depth=3,
                                        width=8).item() == "critical"


# --- spec files and the command line ---------------------------------------------------------

SPEC = """
[sweep]
what = ["predict", "simulate"]
store = "runs/s"
seed = 5
[grid]
activation = ["tanh", "relu"]
depth = [3]
width = [8]
[simulate]
samples = 4
"""


def cli(*argv) -> dict:
    p = argparse.ArgumentParser()
    add_sweep(p)
    p.add_argument("--json", action="store_true")
    return run_sweep(p.parse_args([*argv, "--json"]))


def test_cli_runs_a_spec_and_resumes(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    out = cli(str(spec))
    assert (out["cases"], out["computed"], out["skipped"]) == (2, 2, 0)
    assert Path(out["store"]) == tmp_path / "runs" / "s"     # relative to the spec's folder
    out = cli(str(spec))
    assert (out["computed"], out["skipped"]) == (0, 2)
    rec = load(tmp_path / "runs" / "s").records[0]
    assert rec["seed"] == case_seed({"activation": "tanh", "depth": 3, "width": 8}, 5)
    assert rec["results"]["simulate"]["meta"]["samples"] == 4
    spec.write_text(SPEC.replace("seed = 5", "seed = 6"))
    with pytest.raises(ValueError, match="another spec"):
        cli(str(spec))
    out = cli(str(spec), "--replace", "--csv", str(tmp_path / "t.csv"))
    assert out["computed"] == 2
    if "csv" in out:
        assert (tmp_path / "t.csv").read_text().startswith("activation,depth,width,seed,layer")


@pytest.mark.parametrize("text, match", [
    ("[sweep]\nwhat='predict'\nstor='x'\n[grid]\ndepth=[2]", "unknown key 'stor' in \\[sweep\\]"),
    ("[sweeps]\n[grid]\ndepth=[2]", "unknown table or key 'sweeps'"),
    ("[sweep]\n", "exactly one of \\[grid\\]"),
    ("[grid]\ndepth=[2]\n[[cases]]\ndepth=2", "exactly one of"),
    ("[grid]\ndepth=[2]\n[simulate]\nsample=3", "unknown key 'sample'"),
    ("[sweep]\nwhat=['spectrum']\n[grid]\ndepth=[2]", "what must be one of"),
    ("[sweep]\nexecutor='gpu'\n[grid]\ndepth=[2]", "executor must be one of"),
    ("[grid]\ndepth=2", "axis 'depth'"),
    ("[grid]\ndepth=[2", "not valid TOML"),
    ("[sweep]\nbuild='__import__(\"os\")'\n[grid]\ndepth=[2]", "build must be one of"),
])
def test_bad_spec_files_are_refused(text, match):
    with pytest.raises((ValueError, TypeError), match=match):
        parse_spec(text)


def test_spec_with_explicit_cases_and_resnet(tmp_path):
    spec = parse_spec("[sweep]\nbuild='resnet'\nstore='r'\n[[cases]]\ndepth=2\nwidth=4\n"
                      "[[cases]]\ndepth=3\nwidth=4\n", tmp_path)
    res = spec.run()
    assert [r["case"]["depth"] for r in res.records] == [2, 3]
    assert res.path == str(tmp_path / "r")


KILL_SPEC = """
[sweep]
what = ["simulate"]
store = "s"
seed = 9
[grid]
sigma_w2 = [%s]
depth = [20]
width = [32]
[simulate]
samples = 16
""" % ", ".join(f"{1.0 + 0.05 * i:.2f}" for i in range(30))


def test_cli_sweep_killed_mid_way_resumes_with_the_same_numbers(tmp_path):
    """``signalprop sweep SPEC.toml`` in its own process, SIGKILLed once a few cases are
    stored; rerunning the command computes only the rest, and the records (stored before and
    after the kill) equal those of an uninterrupted sweep."""
    spec = tmp_path / "spec.toml"
    spec.write_text(KILL_SPEC)
    store = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from signalprop.cli import "
                             "main; sys.exit(main())", "sweep", str(spec)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and \
            sum(f.read_bytes().count(b"\n") for f in store.glob("records-*.jsonl")) < 3:
        time.sleep(0.002)
    proc.kill()
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    proc.stderr.close()
    before = {r["case_hash"] for r in load(store).records}
    assert 3 <= len(before) < 30
    out = cli(str(spec))
    assert (out["cases"], out["skipped"], out["computed"]) == (30, len(before), 30 - len(before))
    res = load(store)
    assert len(res) == 30 and sorted(r["case"]["sigma_w2"] for r in res.records) == \
        [float(f"{1.0 + 0.05 * i:.2f}") for i in range(30)]
    first, last = res.records[0], res.records[-1]       # stored before and after the kill
    assert first["case_hash"] in before and last["case_hash"] not in before
    again = sweep([first["case"], last["case"]], "simulate", seed=9,
                  options={"simulate": {"samples": 16}})
    strip = [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in again.records]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING_FIELDS}
                     for r in (first, last)]


# --- dask.distributed ------------------------------------------------------------------------

def test_dask_scheduler_address_gives_the_inline_records(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    cases = [{"depth": d, "width": 8, "activation": "tanh"} for d in (2, 3, 4)]
    sweep(cases, ["predict", "simulate"], options=SIM, store=tmp_path / "inline")
    with distributed.LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        res = sweep(cases, ["predict", "simulate"], options=SIM, store=tmp_path / "dask",
                    executor="dask", address=cluster.scheduler_address)
    assert res.computed == 3
    assert stored_without_timing(tmp_path / "inline") == stored_without_timing(tmp_path / "dask")


def test_dask_cluster_survives_a_killed_worker_with_identical_numbers(tmp_path, calls,
                                                                      monkeypatch):
    """Issue 15: an embedded LocalCluster of 2 worker processes runs a 64-case simulate sweep;
    one worker is killed (SIGKILL) part-way; the sweep finishes with the in-process numbers."""
    pytest.importorskip("dask.distributed")
    grid = Grid(k=list(range(64)))
    what = [count_calls, "simulate"]
    opts = {"simulate": {"samples": 4}}
    monkeypatch.setenv("SWEEP_TEST_SLEEP", "0.04")
    killed: list = []

    def killer():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            done = sum(f.read_bytes().count(b"\n") for f in (tmp_path / "dask").glob("*.jsonl"))
            pids = {int(f.name.split("-")[1]) for f in calls.iterdir()} - {os.getpid()}
            if done >= 12 and pids:
                pid = min(pids)
                os.kill(pid, signal.SIGKILL)
                killed.append(done)
            time.sleep(0.02)
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    res = sweep(grid, what, build=build_fixed, options=opts, store=tmp_path / "dask",
                executor="dask", workers=2)
    thread.join()
    assert killed and killed[0] < 64 and len(res) == 64     # killed part-way through
    monkeypatch.setenv("SWEEP_TEST_SLEEP", "0")
    sweep(grid, what, build=build_fixed, options=opts, store=tmp_path / "inline")
    assert stored_without_timing(tmp_path / "dask") == stored_without_timing(tmp_path / "inline")
