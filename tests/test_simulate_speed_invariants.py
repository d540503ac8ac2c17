"""The Monte Carlo engines made faster (issue 17) give the numbers they gave before, bit for bit.

1. Values computed by the engines as they were before the speed work (saved by a script at the
   start of it, per sample: last-layer ``q`` and ``c``, first-layer ``log g``) for dense gaussian,
   uniform and orthogonal layers, matrix-free gaussian and orthogonal layers, float32, biases,
   rectangular widths and a 200-layer tanh network. On the machine that saved
   them the new engines reproduce every value exactly; the test allows 1e-12 relative, which
   absorbs a different BLAS or libm rounding on another machine (a few ulps, carried through
   ordered layers) and is 10^9 times smaller than what a change of random stream does
   (O(1/sqrt(N)), N <= 64 here).
2. Drawing on several threads (:func:`signalprop.sampling.set_threads`, every draw made parallel by
   lowering ``PARALLEL_MIN``) and reserving many layers' normals at once
   (:meth:`~signalprop.sampling.Streams.reserve`) change no bit: compared with one thread and with
   reservations turned off, also with checkpoint replays (small ``max_memory``) and two workers.
3. The reservation contract: the numbers served are those of the separate draws; a draw that does
   not match it, or saving the state while normals are pending, is an error.
"""

from __future__ import annotations

import numpy as np
import pytest

from signalprop import sampling
from signalprop.architectures import mlp
from signalprop.sampling import Streams, set_threads
from signalprop.simulate import _Job, network_inputs, simulate

REFERENCE = {
    'dense_tanh_bias_c0': {
        'q': [0.33467913628692575, 0.3735324575551142, 0.4475705817506299, 0.9277686090529348, 0.4769856757535627],
        'c': [0.8258048518112618, 0.47237179828256814, -0.5625495526465649, 0.3499135984857023, 0.4393099152291876],
        'log_g': [-1.8889554005977853, -1.585163558328905, -0.5930865136013062, -2.4423081193366905, -1.9636276441723544],
    },
    'dense_relu_uniform': {
        'q': [0.23805819414699222, 0.3003920221870573, 1.322391927370225, 0.5066444421099042],
        'c': [0.42094540125458074, 0.9720800496752467, 0.9255065378427816, 0.8114182429136017],
        'log_g': [-3.971364270981443, -3.011253121149229, -2.53419222494105, -3.4711275765551193],
    },
    'dense_orth_rect': {
        'q': [1.053798824955331, 0.22888480821835486, 0.3079970890767035, 1.6557441794723589, 0.7411066696071217, 0.8887596424800743],
        'c': [0.9992179525643348, 0.2741331238366715, 0.9933510927349107, 0.9213243407695464, 0.30976138542150694, 0.9553711359086363],
        'log_g': [-1.984469920052306, -3.5124227507883954, -4.835507185676328, -4.2908008276638805, -4.195055172070701, -4.358641645042905],
    },
    'dense_f32': {
        'q': [0.24215008246392244, 0.3636997127905488, 0.25539574114372954],
        'log_g': [-1.227278739589508, -1.3669768099333874, -0.9282127893378135],
    },
    'mf_tanh_bias_c0': {
        'q': [0.5531616629849586, 0.483449532690205, 1.2484208032051942, 0.8157797115840828, 0.8369800549489325],
        'c': [0.15492764548155377, 0.6471438058984968, 0.847887070789093, 0.7200678911722813, -0.21908018597510306],
        'log_g': [-2.1199587017838013, 0.22641270018788917, -1.0303983976509596, -3.8518735492226797, -0.5014130927055672],
    },
    'mf_gauss_rect': {
        'q': [1.0990336476566067, 0.6462874533210325, 0.7196997451597691, 1.400997966716559, 1.2520791599345271, 0.3058610690743571],
        'c': [-0.19499085579306347, 0.5337291743796014, 0.7715701292294378, 0.9855297710643199, -0.008015988211917353, 0.7087029785632368],
        'log_g': [0.7778607433985839, -2.6505842039582963, -4.907018354058474, -4.691621366777037, -2.5824079996100355, -1.7533257064739707],
    },
    'mf_orth_rect': {
        'q': [0.2368205332168791, 1.036262299692188, 0.20858643289455972, 1.0760968329475384, 0.6856213105706489, 0.6648844804240476],
        'c': [0.6388771974923045, 0.8674041821326839, 0.5195523902327703, 0.49901614942236566, 0.7685246601897563, 0.7661495949139153],
        'log_g': [-2.476974911371623, -2.5918110275096575, -3.3050953435462036, -1.3696001979649668, -4.451640245607601, -6.019453972651798],
    },
    'mf_f32': {
        'q': [0.4322144129450862, 0.383136494885548, 0.14547561946153564],
        'c': [0.6109215228309832, 0.3813372101311839, -0.30106155015098984],
        'log_g': [-3.6721068958592196, -1.6399499463778375, -1.806463419034231],
    },
    'mf_tanh_deep_small': {
        'q': [3.797852867874767e-05, 2.555486501813894e-05, 0.0057669856475043284, 1.1577582934606277e-05, 0.003712023435349443, 0.0021664350625371824],
        'c': [0.6738039512896228, -0.9812673162467688, 0.9998535113343032, 0.9928646297707433, 0.9993938232387108, 0.9832889149184774],
        'log_g': [-8.204724864842149, -6.932539352334009, -4.9847703905722, -9.055932689254576, -6.465840668413945, -7.2791149885903454],
    },
}


CASES = {
    "dense_tanh_bias_c0": (lambda: mlp(6, 24, "tanh", sigma_w2=1.7, sigma_b2=0.05),
                           dict(engine="dense", c0=0.3), 5),
    "dense_relu_uniform": (lambda: mlp(5, [9, 14, 7, 11, 6, 8], "relu", sigma_w2=2.0, sigma_b2=0.1,
                                       weights="uniform"), dict(engine="dense", c0=-0.2), 4),
    "dense_orth_rect": (lambda: _orth_rect(), dict(engine="dense", c0=0.5), 6),
    "dense_f32": (lambda: mlp(5, 16, "tanh", sigma_w2=1.2, sigma_b2=0.02),
                  dict(engine="dense", dtype="float32"), 3),
    "mf_tanh_bias_c0": (lambda: mlp(6, 24, "tanh", sigma_w2=1.7, sigma_b2=0.05),
                        dict(engine="matrix-free", c0=0.3), 5),
    "mf_gauss_rect": (lambda: mlp(5, [9, 14, 7, 11, 6, 8], ["relu", "tanh", "gelu", "erf", "relu"],
                                  sigma_w2=2.0, sigma_b2=[0.1, 0.0, 0.2, 0.0, 0.3]),
                      dict(engine="matrix-free", c0=-0.3), 6),
    "mf_orth_rect": (lambda: _orth_rect(), dict(engine="matrix-free", c0=0.5), 6),
    "mf_f32": (lambda: mlp(5, 16, "tanh", sigma_w2=1.2, sigma_b2=0.02),
               dict(engine="matrix-free", dtype="float32", c0=0.6), 3),
    "mf_tanh_deep_small": (lambda: mlp(200, 64, "tanh", sigma_w2=1.0, sigma_b2=0.0),
                           dict(engine="matrix-free", c0=0.5), 20),
}

SEED = 1234


def _orth_rect():
    return mlp(4, [7, 12, 5, 9, 3], ["relu", "gelu", "relu", "erf"], sigma_w2=[2.0, 1.3, 2.5, 0.7],
               sigma_b2=[0.1, 0.0, 0.3, 0.05], weights="orthogonal")


def _run(name, **extra):
    make, kw, S = CASES[name]
    return simulate(make(), S, SEED, return_samples=True, **kw, **extra)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_values_are_those_of_the_engines_before_the_speed_work(name):
    got = _run(name).samples
    for field, col in (("q", -1), ("c", -1), ("log_g", 0)):
        if field in REFERENCE[name]:
            want = np.array(REFERENCE[name][field])
            np.testing.assert_allclose(got[field][:6, col], want, rtol=1e-12, atol=0,
                                       err_msg=f"{name}: {field}")


def _identical(a, b, what):
    for k in a.samples:
        np.testing.assert_array_equal(a.samples[k], b.samples[k], err_msg=f"{what}: {k}")


@pytest.fixture
def every_draw_parallel(monkeypatch):
    """Every draw goes to the thread pool, however small."""
    monkeypatch.setattr(sampling, "PARALLEL_MIN", 1)
    yield
    set_threads(None)


@pytest.mark.parametrize("name", ["dense_orth_rect", "dense_relu_uniform", "mf_tanh_bias_c0",
                                  "mf_orth_rect", "mf_f32"])
def test_thread_count_changes_no_bit(name, every_draw_parallel):
    set_threads(1)
    ref = _run(name)
    for n in (2, 3):
        set_threads(n)
        _identical(ref, _run(name), f"{name}, {n} threads")
        _identical(ref, _run(name, chunk=2), f"{name}, {n} threads, chunk=2")


def test_dense_draws_large_enough_to_run_in_parallel_change_no_bit():
    """N = 192: N^2 > PARALLEL_MIN, so the weights are drawn on the pool by default."""
    assert 192 * 192 >= sampling.PARALLEL_MIN
    net = mlp(3, 192, "tanh", sigma_w2=1.5, sigma_b2=0.1)
    try:
        set_threads(1)
        ref = simulate(net, 3, 5, c0=0.2, return_samples=True)
        set_threads(2)
        _identical(ref, simulate(net, 3, 5, c0=0.2, return_samples=True), "N=192, 2 threads")
    finally:
        set_threads(None)


@pytest.mark.parametrize("engine", ["matrix-free"])
@pytest.mark.parametrize("weights", ["gaussian", "orthogonal"])
def test_reservations_change_no_bit(monkeypatch, engine, weights):
    """The engine with reservations (blocks of layers, checkpoint replays with small max_memory)
    against the engine drawing layer by layer (reserve turned off)."""
    net = mlp(60, [64] + [96, 48] * 30, ["tanh", "relu"] * 30, sigma_w2=1.6, sigma_b2=0.05,
              weights=weights)
    job = _Job(net, engine, network_inputs(64, 1.0, 0.3), np.dtype(np.float64),
               np.random.SeedSequence(3), 1 << 20)
    assert job.segment_length(5) < 60                  # max_memory = 1 MiB replays segments
    fast = simulate(net, 5, 3, engine=engine, c0=0.3, return_samples=True)
    replay = simulate(net, 5, 3, engine=engine, c0=0.3, return_samples=True, max_memory=1 << 20,
                      chunk=5)
    monkeypatch.setattr(Streams, "reserve", lambda self, count, dtype=np.float64: None)
    slow = simulate(net, 5, 3, engine=engine, c0=0.3, return_samples=True)
    _identical(slow, fast, "reserved vs layer by layer")
    _identical(slow, replay, "reserved with replays vs layer by layer")


def test_two_workers_with_parallel_draws_change_no_bit(every_draw_parallel):
    """Forked workers rebuild the thread pool (a child inherits the pool object, not its
    threads); their results equal one process."""
    net = mlp(4, 16, "tanh", sigma_w2=1.5, sigma_b2=0.1)
    for engine in ("dense", "matrix-free"):
        ref = simulate(net, 6, 9, engine=engine, c0=0.4, return_samples=True)
        par = simulate(net, 6, 9, engine=engine, c0=0.4, return_samples=True, chunk=3, workers=2)
        _identical(ref, par, f"{engine}, workers=2")


def _streams(seed=0, S=3):
    return Streams([np.random.default_rng([seed, s]) for s in range(S)])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reserved_normals_are_those_of_the_separate_draws(dtype):
    a, b = _streams(), _streams()
    shapes = [(2, 5), (7,), (1,), (3, 4)]
    want = [a.normal(s, dtype) for s in shapes] + [a.uniform((4,), dtype)]
    b.reserve(sum(int(np.prod(s)) for s in shapes), dtype)
    got = [b.normal(s, dtype) for s in shapes]
    assert b.reserved() == 0
    got.append(b.uniform((4,), dtype))
    for w, g in zip(want, got):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


def test_a_draw_that_does_not_match_the_reservation_is_an_error():
    st = _streams()
    st.reserve(10)
    with pytest.raises(RuntimeError, match="reservation"):
        st.normal((11,))
    st = _streams()
    st.reserve(10)
    with pytest.raises(RuntimeError, match="reservation"):
        st.normal((4,), np.float32)
    for what in ("get_state", "uniform", "reserve"):
        st = _streams()
        st.reserve(10)
        st.normal((3,))
        with pytest.raises(RuntimeError, match="7 reserved normals are pending"):
            getattr(st, what)(*(() if what == "get_state" else ((2,),)))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_threads_refuses_bad_counts(bad):
    with pytest.raises(ValueError, match="threads must be an int >= 1 or None"):
        set_threads(bad)
