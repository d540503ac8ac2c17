"""Monte Carlo simulation of finite random networks: :func:`simulate`.

``simulate(network, samples, seed)`` draws ``samples`` independent finite networks from the same
:class:`~signalprop.network.Network` description that :func:`~signalprop.meanfield.predict`
reads, propagates one input (or two) forward and the gradient of the loss ``<v, h^L>``,
``v ~ N(0, I)``, backward, and returns a :class:`~signalprop.results.Profile` with the fields of
CONVENTIONS.md and their standard errors.

Estimators (CONVENTIONS.md, "Monte Carlo estimators"), per sample network ``s`` and layer ``l``:

* ``q_hat = ||h^l_a||^2 / N_l`` (input a);
* ``c_hat = <h^l_a, h^l_b> / (||h^l_a|| ||h^l_b||)`` (two inputs; the empirical correlation);
* ``g_hat = ||delta^l||^2 / N_l``, ``delta^l = d<v, h^L_a>/dh^l_a``;
* ``G_hat = g_hat ||x^{l-1}_a||^2 / N_{l-1}``: the mean square entry of the weight gradient
  ``delta^l (x^{l-1})^T``, whose expectation is ``G^l = g^l E[(x^{l-1}_j)^2]``.

With k >= 2 inputs, every input's ``q_hat_a`` and every pair's ``c_hat_ab`` likewise:
``kernel_log_q`` (L, k) = log of the sample mean of ``q_hat_a`` (as ``log_q``; input 0's is
``log_q``) and ``kernel_corr`` (L, k, k) = sample means of ``c_hat_ab`` (as ``c``; unit
diagonal, the pair (0, 1) is ``c``), with ``kernel_log_q_se`` and ``kernel_corr_se``; they are
measured on the vectors already drawn, so they change no random stream.

Reported: ``q``, ``c`` = sample means, ``q_se``, ``c_se`` = their standard errors
(``std(ddof=1)/sqrt(S)``); ``log_g``, ``log_G`` = logs of the sample means, ``*_se`` = standard
error of the log of the mean (delta method: ``se(mean)/mean``); ``log_q = log(q)``.

Scale. Nothing over- or underflows at any depth: gradients are renormalised at every layer, their
scale carried as a logarithm; forward vectors are carried per sample as a float array times
``2^e``, rescaled when the mean square leaves ``[2^-256, 2^256]`` (float32: ``[2^-32, 2^32]``).
The numbers are bit for bit those of the unscaled computation wherever that one stays in the
float range; an activation that is not positively homogeneous must have its real pre-activation
in the float range (else ``ValueError``; for sigma_w^2 in [1e-3, 1e3] that is beyond depth about
200). ``log_q`` is exact (``q_hat`` kept as a float and a binary exponent), ``q`` is ``inf`` (or
0) exactly where ``exp(log_q)`` is. Derivation: docs/theory/log-scale-simulation.md. An
activation that returns non-finite values at finite arguments is refused (``ValueError`` naming
it and the layer), and so is a run whose per-sample results and one chunk's state would need more
than half the physical memory.

Inputs (``inputs=G``, a k x k Gram matrix): ``X = F E`` with ``F F^T = N_0 G`` (Cholesky, or the
semidefinite one of rank r for a singular G) and ``E`` the first r rows of the frame below, of
mean zero over the units when ``N_0 >= r + 1`` (:func:`gram_inputs`). Otherwise: fixed vectors with ``||x^0||^2 / N_0 = q0`` exactly and mean zero over their units (the
theory's convention; it matters to mean-subtracting normalisation layers): ``x_a = sqrt(q0)
(1, -1, 1, ...)`` (the alternating signs, centred when ``N_0`` is odd) and, with ``c0``, further
inputs of pairwise correlation ``c0`` built from ``x_a`` and the cosine vectors
``cos(pi i (j + 1/2) / N_0)`` (:func:`network_inputs`). Gaussian and orthogonal weights are
rotation invariant, so only the norms and inner products matter; for uniform weights entries of
equal magnitude keep the first layer close to Gaussian.

Engines: ``dense`` draws every weight matrix; ``matrix-free`` samples the same joint law of all
``(h^l, delta^l)`` with O(N) work per layer (O(N B^2) for batch-normalised layers over a batch of
B; construction and proof: docs/theory/matrix-free-sampling.md).
Both are batched over a chunk of samples and bounded in memory: when the stored per-layer state
of a chunk exceeds ``max_memory``, the backward pass replays the forward pass from checkpoints
(every ``m`` layers) with the very same random numbers.

Reproducibility: sample ``s`` uses the ``s``-th child of the root ``SeedSequence``
(``spawn_key = root.spawn_key + (s,)``), which seeds two PCG64 streams (forward: weights and
biases; backward: ``v`` and the matrix-free backward draws). Every sample consumes its
streams in a fixed order, so the numbers are the same whatever the chunk size, the checkpointing,
the number of worker processes or of drawing threads (large draws run on every CPU,
:func:`signalprop.sampling.set_threads`; the matrix-free engine reserves many layers' normals in
one call per sample, :meth:`~signalprop.sampling.Streams.reserve`). One caveat: the dense
engine's matrix products go through BLAS, whose rounding can depend on the BLAS thread count
(OPENBLAS_NUM_THREADS=1 against 2: 7e-16 relative in q, 2e-14 in log g at N = 512, L = 50).
"""

from __future__ import annotations

import math
import numbers
import hashlib
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from typing import Optional

import numpy as np

from ._validate import (check_correlation, check_int, check_memory, check_positive,
                        short_repr)
from . import layers  # noqa: F401  (importing the layer kinds registers their samplers)
from .kernel import Kernel
from .network import Network
from .progress import progress_bar
from .results import Profile
from .sampling import ENGINES, LayerError, Streams, ldexp_rows, sampler, set_threads, threads

__all__ = ["simulate", "root_seed", "sample_streams", "network_inputs", "gram_inputs", "ENGINES"]

_DTYPES = {"float64": np.float64, "float32": np.float32}


# ---------------------------------------------------------------------------------------------
# arguments


def root_seed(seed) -> np.random.SeedSequence:
    """The root ``SeedSequence`` of a ``seed``: an int >= 0, a ``SeedSequence`` (used as is) or a
    ``Generator`` (128 bits are drawn from it, so it advances)."""
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, np.random.Generator):
        return np.random.SeedSequence([int(v) for v in seed.integers(0, 2**32, size=4)])
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError("seed must be an int >= 0, a numpy SeedSequence or a numpy Generator, "
                        f"got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return np.random.SeedSequence(int(seed))


def _child(root: np.random.SeedSequence, *key) -> np.random.SeedSequence:
    return np.random.SeedSequence(root.entropy, spawn_key=tuple(root.spawn_key) + tuple(key),
                                  pool_size=root.pool_size)


def _pcg_state(words) -> dict:
    return {"bit_generator": "PCG64",
            "state": {"state": (int(words[0]) << 64) | int(words[1]),
                      "inc": ((int(words[2]) << 64) | int(words[3])) | 1},
            "has_uint32": 0, "uinteger": 0}


def sample_streams(root: np.random.SeedSequence, start: int, stop: int, pool=None):
    """Forward and backward :class:`~signalprop.sampling.Streams` of samples ``start..stop-1``.

    Sample ``s`` gets the ``SeedSequence`` child with spawn key ``root.spawn_key + (s,)``; its
    first 256 bits of output seed the PCG64 state of the forward stream, the next 256 bits the
    backward stream. ``pool``: optional list of Generators to reuse (its length must be at
    least ``2 (stop - start)``)."""
    n = stop - start
    if pool is None:
        pool = [np.random.Generator(np.random.PCG64(0)) for _ in range(2 * n)]
    fwd, bwd = pool[:n], pool[n:2 * n]
    for i, s in enumerate(range(start, stop)):
        words = _child(root, s).generate_state(8, np.uint64)
        fwd[i].bit_generator.state = _pcg_state(words[:4])
        bwd[i].bit_generator.state = _pcg_state(words[4:])
    def named(name: str) -> Streams:
        tag = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
        return Streams([np.random.Generator(np.random.PCG64(_child(root, s, _SHARED_KEY, tag)))
                        for s in range(start, stop)])

    return Streams(fwd, named), Streams(bwd)


_SHARED_KEY = 0x5EED   # spawn-key branch of shared parameters (a sample's own streams use key s)


def network_inputs(n0: int, q0: float = 1.0, c0: Optional[float] = None,
                   k: Optional[int] = None) -> np.ndarray:
    """The fixed input vectors, shape ``(k, n0)`` (module doc): ``k`` vectors (default 1 without
    ``c0``, 2 with it) of second moment ``q0``, pairwise correlation ``c0`` and mean zero over
    their units (``n0 >= k + 1`` needed for that; with fewer units the mean is not removed)."""
    if k is None:
        k = 1 if c0 is None else 2
    j = np.arange(n0)
    s = np.where(j % 2 == 0, 1.0, -1.0)                       # x_a: alternating signs
    if c0 is not None and float(c0) == 1.0 or k == 1:
        xa = math.sqrt(q0 * n0) * _unit(s, [np.ones(n0)] if n0 >= 2 else [])
        return np.repeat(xa[None, :], k, axis=0)
    c0 = 0.0 if c0 is None else float(c0)
    if k == 2 and c0 == -1.0:
        xa = math.sqrt(q0 * n0) * _unit(s, [np.ones(n0)] if n0 >= 2 else [])
        return np.stack([xa, -xa])
    if n0 < k:
        raise ValueError(f"{k} inputs with |c0| < 1 need an input width >= {k}, got {n0}")
    if c0 < -1.0 / (k - 1):
        raise ValueError(f"c0 must be >= -1/(k-1) = {-1.0 / (k - 1):.6g} for {k} inputs with equal "
                         f"pairwise correlation, got {c0}")
    gram = q0 * n0 * ((1.0 - c0) * np.eye(k) + c0 * np.ones((k, k)))
    return np.linalg.cholesky(gram) @ _frame(n0, k)


def _frame(n0: int, r: int) -> np.ndarray:
    """``r`` orthonormal vectors of length ``n0`` (rows): x_a's alternating signs, then the cosine
    vectors ``cos(pi i (j + 1/2) / n0)``, i = 1, 2, ..., all made orthogonal to (1, ..., 1) when
    there is room (``n0 >= r + 1``)."""
    j = np.arange(n0)
    basis = [np.ones(n0)] if n0 >= r + 1 else []
    frame = [_unit(np.where(j % 2 == 0, 1.0, -1.0), basis)]
    for i in range(1, r):
        frame.append(_unit(np.cos(np.pi * i * (j + 0.5) / n0), basis + frame))
    return np.stack(frame)


def gram_inputs(n0: int, gram) -> np.ndarray:
    """k fixed input vectors, shape ``(k, n0)``, with the per-unit Gram matrix
    ``<x_a, x_b> / n0 = gram[a, b]`` (to rounding) and mean zero over their units when there is
    room: ``X = F E`` with ``F F^T = n0 gram`` (Cholesky; for a singular Gram matrix the
    semidefinite Cholesky factor without its zero columns, rank r) and ``E`` the r orthonormal
    rows of :func:`_frame`. ``gram``: a k x k array (checked by
    :meth:`~signalprop.kernel.Kernel.from_gram`: symmetric, positive diagonal, Cauchy-Schwarz) that
    must also be positive semidefinite, or a :class:`~signalprop.kernel.Kernel` without means
    (or with zero means). ValueError naming ``inputs`` otherwise."""
    if isinstance(gram, Kernel):
        if gram.mu is not None and np.any(gram.mu != 0):
            raise ValueError("inputs: simulate builds inputs of mean zero over their units; a "
                             "Kernel with nonzero means (mu) is not supported")
        G = gram.matrix()
    else:
        if isinstance(gram, (str, bytes)) or np.asarray(gram).dtype.kind not in "biuf":
            raise TypeError(f"inputs must be a k x k Gram matrix of real numbers (or a Kernel), "
                            f"got {short_repr(gram)}")
        Kernel.from_gram(gram)                               # shape, symmetry, diagonal, |corr|
        G = np.asarray(gram, float)
        G = G.reshape(1, 1) if G.ndim == 0 else G
    F = _psd_factor(n0 * G)
    if F.shape[1] > n0:
        raise ValueError(f"inputs: a Gram matrix of rank {F.shape[1]} needs an input width >= "
                         f"{F.shape[1]}, got {n0}")
    return F @ _frame(n0, F.shape[1])


def _psd_factor(A: np.ndarray) -> np.ndarray:
    """``F`` (k x r) with ``F F^T = A``: ``numpy.linalg.cholesky`` for a positive definite ``A``;
    else the semidefinite Cholesky recursion (Higham 2002, "Accuracy and Stability of Numerical
    Algorithms", sec. 10.3, without pivoting), a pivot below 1e-10 of its diagonal entry taken as
    0 and its zero column dropped. ValueError when ``A`` is not positive semidefinite."""
    try:
        return np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        pass
    k = A.shape[0]
    F = np.zeros((k, k))
    d = np.diag(A)
    for i in range(k):
        piv = A[i, i] - F[i, :i] @ F[i, :i]
        col = A[i + 1:, i] - F[i + 1:, :i] @ F[i, :i]
        if piv > 1e-10 * d[i]:
            F[i, i] = math.sqrt(piv)
            F[i + 1:, i] = col / F[i, i]
        elif piv < -1e-10 * d[i] or np.any(np.abs(col) > 1e-8 * np.sqrt(d[i] * d[i + 1:])):
            lam = float(np.linalg.eigvalsh(A / np.sqrt(np.outer(d, d)))[0])
            raise ValueError(f"inputs must be positive semidefinite (the Gram matrix of real "
                             f"vectors); its correlation matrix has the eigenvalue {lam:.6g}")
    return F[:, np.diag(F) > 0]


def _unit(v: np.ndarray, against: list) -> np.ndarray:
    """``v`` made orthogonal to the vectors ``against`` (twice, for accuracy) and normalised."""
    v = np.array(v, float)
    for _ in range(2):
        for u in against:
            v -= (u @ v) / (u @ u) * u
    return v / np.linalg.norm(v)


def one_number(name: str, value, check) -> float:
    """``value`` as one float after ``check(name, value)`` (a _validate check); TypeError naming
    ``name`` for arrays, sequences and other shapes."""
    try:
        scalar = np.ndim(value) == 0
    except ValueError:                        # a ragged sequence
        scalar = False
    if not scalar:
        raise TypeError(f"{name} must be one real number, got {short_repr(value)}")
    check(name, value)
    return float(value)


def _check_args(network, samples, engine, q0, c0, dtype, chunk, workers, max_memory,
                return_samples):
    if not isinstance(network, Network):
        raise TypeError(f"network must be a signalprop Network (see mlp), got {type(network).__name__}")
    samples = check_int("samples", samples, 1)
    if not isinstance(engine, str) or engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got "
                         f"{short_repr(engine)}")
    q0 = one_number("q0", q0, check_positive)
    if c0 is not None:
        c0 = one_number("c0", c0, check_correlation)
    if isinstance(dtype, str):
        key = dtype
    else:
        try:
            key = None if isinstance(dtype, (bool, np.bool_)) else np.dtype(dtype).name
        except (TypeError, ValueError):
            key = None
    if key not in _DTYPES:
        raise ValueError(f"dtype must be 'float64' or 'float32', got {short_repr(dtype)}")
    if chunk is not None:
        chunk = check_int("chunk", chunk, 1)
    workers = check_int("workers", workers, 1)
    max_memory = check_int("max_memory", max_memory, 1 << 20)
    if not isinstance(return_samples, (bool, np.bool_)):
        raise TypeError(f"return_samples must be True or False, got {short_repr(return_samples)}")
    return samples, q0, c0, np.dtype(_DTYPES[key]), chunk, workers, max_memory


# ---------------------------------------------------------------------------------------------
# the engine


def _sq(a: np.ndarray) -> np.ndarray:
    """Row-wise squared norms, accumulated in float64 (the same rounding for every row whatever
    the number of rows)."""
    return np.sum(a * a, axis=-1, dtype=np.float64)


_LN2 = math.log(2.0)
#: mean squares of a layer's input kept within [2^-lo, 2^hi] by exact power-of-two rescaling
_INPUT_RANGE = {"float64": (256, 256), "float32": (32, 32)}
#: row sums of squares measured directly within [2^-lo, 2^hi]; outside, after rescaling
_MEASURE_RANGE = {"float64": (480, 480), "float32": (64, 96)}
#: bytes of normals reserved at once for a run of layers with small declared draws (at most
#: max_memory / 8)
_BLOCK_BYTES = 1 << 22


def _in_range(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``lo <= v <= hi`` elementwise (False for NaN)."""
    return (v >= lo) & (v <= hi)


def _all_in_range(v: np.ndarray, lo: float, hi: float) -> bool:
    """Every entry in ``[lo, hi]`` (False if any is NaN): two reductions, the fast path."""
    return bool(v.min() >= lo and v.max() <= hi)


def _max_exponent(a: np.ndarray) -> np.ndarray:
    """Per row (axis 0) the binary exponent ``k`` with ``2^(k-1) <= max|a| < 2^k`` (0 for a zero
    or non-finite row), as int64."""
    m = np.max(np.abs(a.reshape(a.shape[0], -1)), axis=1)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.frexp(m)[1].astype(np.int64)


class _Job:
    """Everything a chunk of samples needs: samplers, activations, inputs, seeds, memory plan.

    Scale (module docstring): each sample's vectors are carried as float arrays times a power of
    two per sample (:mod:`signalprop.sampling`, "Scaled form"); a layer's input is rescaled
    (exactly, by ``2^-k``) when its mean square leaves ``[2^-256, 2^256]`` (float32: ``2^+-32``),
    and the measured ``q_hat`` is stored as a float and a binary exponent."""

    def __init__(self, network: Network, engine: str, X0: np.ndarray, dtype: np.dtype,
                 root: np.random.SeedSequence, max_memory: int):
        widths = network.widths
        self.network, self.engine, self.dtype, self.root = network, engine, dtype, root
        self.rules = [sampler(layer, int(widths[i]), engine) for i, layer in enumerate(network.layers)]
        self.widths = [int(w) for w in widths]
        # units of each vector the profile reads: the first ``tracked_units`` of a layer's tracked
        # variable and output (all of them unless the kind carries extra state, as an LSTM's cell)
        self.units = self.widths[:1] + [int(getattr(la, "tracked_units", la.width))
                                        for la in network.layers]
        self.X0 = X0.astype(dtype)
        self.k = X0.shape[0]
        self.kd = self.k if any(r.couples_inputs for r in self.rules) else 1
        self.L = network.depth
        self.max_memory = max_memory
        self._pool: list = []
        item = dtype.itemsize
        self.per_layer = [r.ctx_nbytes(self.k, item) + r.n_out * item for r in self.rules]
        self.work = 24 * self.k * max(self.widths) * item + 48 * self.L
        lo, hi = _INPUT_RANGE[dtype.name]           # bounds on the sums of squares of inputs
        self.input_range = [(2.0 ** -lo * n, 2.0 ** hi * n) for n in self.widths[:-1]]
        lo, hi = _MEASURE_RANGE[dtype.name]
        self.measure_range = (2.0 ** -lo, 2.0 ** hi)
        counts = [getattr(r, "normals_drawn", lambda k: (None, None))(self.k) for r in self.rules]
        self.fcount = [c[0] for c in counts]
        self.bcount = [c[1] if self.kd == 1 else None for c in counts]
        self.block_bytes = min(_BLOCK_BYTES, max_memory // 8)

    def _reserve(self, streams: Streams, counts: list, l: int, stop: int, step: int,
                 S: int) -> None:
        """Reserve in ``streams`` the normals of layers ``l, l + step, ...`` (short of ``stop``)
        as far as they are declared (``counts``) and fit :data:`_BLOCK_BYTES`: one call per
        sample for many layers' small draws, the very same numbers (Streams.reserve)."""
        if streams.reserved() or not counts[l]:
            return
        total, item = 0, self.dtype.itemsize
        for j in range(l, stop, step):
            c = counts[j]
            if c is None or (total and S * (total + c) * item > self.block_bytes):
                break
            total += c
        if total:
            streams.reserve(total, self.dtype)

    def chunk_size(self, samples: int) -> int:
        """Samples per chunk: the preferred batch that keeps all layers' state in memory, else 1."""
        if self.engine == "dense":
            biggest = max(r.n_out * r.n_in for r in self.rules)
            pref = max(1, min(16, (1 << 21) // biggest))
        else:
            pref = max(16, min(512, (1 << 18) // (self.k * max(self.widths))))
        per_sample = sum(self.per_layer) + self.work
        return max(1, min(samples, pref, self.max_memory // per_sample))

    def segment_length(self, S: int) -> int:
        """Layers per checkpoint segment for a chunk of S samples (L: no replay)."""
        if S * (sum(self.per_layer) + self.work) <= self.max_memory:
            return self.L
        avail = self.max_memory / S - self.work
        return int(min(self.L, max(1, avail // max(self.per_layer))))

    def nbytes_needed(self, samples: int, return_samples: bool) -> float:
        """Peak memory of a run: the per-sample results (``q``, its exponent, ``log_x2``,
        ``log_g`` and ``c``: samples x L float64 each, held twice while the chunks are joined,
        plus the summaries' temporaries) and the state of one chunk (at least one sample and one
        layer, however small ``max_memory``; the dense engine's QR and products take about three
        weight matrices). With k >= 2 inputs the kernel estimators add ``2k + k(k-1)/2`` arrays
        (held twice while joined, once more in the summaries, and kept with ``return_samples``)
        plus the (L, k, k) summaries."""
        arrays = 4 + (self.k >= 2)
        n = float(samples) if samples < 1e300 else math.inf
        results = 8.0 * n * self.L * (2 * arrays + 3 + (2 if return_samples else 0))
        if self.k >= 2:
            k, pairs = self.k, self.k * (self.k - 1) // 2
            per = 2 * k + pairs
            results += 8.0 * n * self.L * (3 * per + (k + pairs if return_samples else 0))
            results += 8.0 * self.L * 6 * k * k
        one = (3 if self.engine == "dense" else 1) * max(self.per_layer) + self.work
        chunk = max(one, min(self.max_memory, samples * (sum(self.per_layer) + self.work)))
        return results + chunk

    # -- one layer forward ---------------------------------------------------------------------

    def _describe(self, l: int) -> str:
        layer = self.network.layers[l]
        parts = getattr(layer, "sublayers", (layer,))
        acts = [la.activation for la in parts if hasattr(la, "activation")]
        what = type(layer).__name__
        return f"{what}, {acts[0]!r}" if len(acts) == 1 else what

    def _rescale(self, l: int, x: np.ndarray, e, sx: np.ndarray):
        """Layer ``l``'s input ``2^e x`` with the rows whose mean square ``sx / N`` left the input
        range rescaled by exact powers of two (their max |entry| brought to [1/2, 1))."""
        lo, hi = self.input_range[l]
        if _all_in_range(sx, lo, hi):
            return x, e, sx
        bad = ~_in_range(sx, lo, hi)
        xb = x[bad]
        if not np.isfinite(xb).all():
            what = f"layer {l} of {self.L} ({self._describe(l - 1)})" if l else "the input"
            raise ValueError(f"{what} gave non-finite values from finite inputs")
        shift = np.zeros(x.shape[0], np.int64)
        shift[bad] = _max_exponent(xb)
        x = ldexp_rows(x, -shift)
        e = shift if e is None else e + shift
        sx = sx.copy()
        sx[bad] = _sq(x[bad, 0])
        return x, e, sx

    def _forward(self, l: int, x: np.ndarray, e, fwd: Streams):
        """Layer ``l`` on the input ``2^e x``: its input's mean square ``sx`` (before the layer)
        and ``forward_scaled``'s ``(t, et, y, ey, ctx)``."""
        sx = _sq(x[:, 0])
        x, e, sx = self._rescale(l, x, e, sx)
        try:
            return (x, e, sx) + tuple(self.rules[l].forward_scaled(x, e, fwd))
        except LayerError as err:
            raise ValueError(f"layer {l + 1} of {self.L} ({self._describe(l)}): {err}") from None

    def _measure(self, l: int, t: np.ndarray, et, q, qexp, c) -> None:
        """``q_hat`` (as ``q * 2^qexp``) and ``c_hat`` of layer ``l``'s tracked variable
        ``2^et t``; rows whose sums of squares leave the measuring range are rescaled first."""
        n_out = self.units[l + 1]
        if n_out < self.widths[l + 1]:
            t = t[..., :n_out]
        lo, hi = self.measure_range
        ta = np.ascontiguousarray(t[:, 0])
        qa = _sq(ta)
        q[:, l] = qa / n_out
        ok = _all_in_range(qa, lo, hi)
        if c is not None:
            tb = t[:, 1]
            qb = _sq(tb)
            c[:, l] = np.sum(ta * tb, axis=-1, dtype=np.float64) / np.sqrt(qa * qb)
            ok = ok and _all_in_range(qb, lo, hi)
        if et is not None:
            qexp[:, l] = 2 * et
        if ok:
            return
        good = _in_range(qa, lo, hi)
        if c is not None:
            good &= _in_range(qb, lo, hi)
        bad = np.flatnonzero(~good)
        a = ta[bad].astype(np.float64)
        ea = _max_exponent(a)
        a = ldexp_rows(a, -ea)
        qa = _sq(a)
        if not np.isfinite(qa).all():
            raise ValueError(f"layer {l + 1} of {self.L} ({self._describe(l)}): the "
                             "pre-activations are not finite")
        q[bad, l] = qa / n_out
        qexp[bad, l] += 2 * ea
        if c is not None:
            b = tb[bad].astype(np.float64)
            b = ldexp_rows(b, -_max_exponent(b))
            c[bad, l] = np.sum(a * b, axis=-1) / np.sqrt(qa * _sq(b))

    def _measure_kernel(self, l: int, t: np.ndarray, et, q, qexp, c, kq, kqexp, kc) -> None:
        """Every input's ``q_hat_a`` (as ``kq * 2^kqexp``) and every pair's ``c_hat_ab`` (``kc``,
        the pairs a < b in ``np.triu_indices(k, 1)`` order) of layer ``l``'s tracked variable
        ``2^et t``, the same estimators as ``q_hat`` and ``c_hat`` (module docstring); input 0's
        and the pair (0, 1)'s are copied from ``q`` and ``c``, so they are those numbers. Samples
        with a sum of squares outside the measuring range get every input rescaled by its own
        power of two first (exact; the correlations do not depend on it)."""
        n_out = self.units[l + 1]
        if n_out < self.widths[l + 1]:
            t = t[..., :n_out]
        lo, hi = self.measure_range
        u = t[:, :kq.shape[2]].astype(np.float64, copy=False)   # the k inputs' rows
        sq = _sq(u)                                              # (S, k)
        kq[:, l] = sq / n_out
        kqexp[:, l] = 0 if et is None else 2 * np.asarray(et)[:, None]
        bad = np.flatnonzero(~np.all(_in_range(sq, lo, hi), axis=1))
        if bad.size:
            a = u[bad]
            m = np.max(np.abs(a), axis=-1)
            ea = np.frexp(np.where(np.isfinite(m), m, 0.0))[1].astype(np.int64)   # (nb, k)
            with np.errstate(over="ignore", under="ignore"):
                a = np.ldexp(a, (-ea)[..., None].astype(np.int32))
            sa = _sq(a)
            if not np.isfinite(sa).all():
                raise ValueError(f"layer {l + 1} of {self.L} ({self._describe(l)}): the "
                                 "pre-activations are not finite")
            kq[bad, l] = sa / n_out
            kqexp[bad, l] += 2 * ea
            u = np.array(u)                     # never write into the layer's own array
            u[bad] = a
            sq = sq.copy()
            sq[bad] = sa
        gram = np.matmul(u, np.swapaxes(u, -1, -2))
        norms = np.sqrt(sq)
        ia, ib = np.triu_indices(u.shape[1], 1)
        kc[:, l] = gram[:, ia, ib] / (norms[:, ia] * norms[:, ib])
        kq[:, l, 0], kqexp[:, l, 0] = q[:, l], qexp[:, l]
        kc[:, l, 0] = c[:, l]

    # -- the whole network -------------------------------------------------------------------

    def run(self, start: int, stop: int) -> dict:
        """Per-sample estimators of samples ``start..stop-1`` (arrays of shape (S, L); ``q`` as
        ``q * 2^qexp``)."""
        S, L, k, dt = stop - start, self.L, self.k, self.dtype
        while len(self._pool) < 2 * S:
            self._pool.append(np.random.Generator(np.random.PCG64(0)))
        fwd, bwd = sample_streams(self.root, start, stop, self._pool)
        q = np.empty((S, L))
        qexp = np.zeros((S, L), np.int64)
        c = np.empty((S, L)) if k >= 2 else None
        kern = None
        if k >= 2:                      # every input's q_hat (as kq 2^kqexp), every pair's c_hat
            kern = (np.empty((S, L, k)), np.zeros((S, L, k), np.int64),
                    np.empty((S, L, k * (k - 1) // 2)))
        lx2 = np.empty((S, L))
        lg = np.empty((S, L))
        m = self.segment_length(S)
        nseg = -(-L // m)
        last = nseg - 1
        ckpt, store = [], {}
        # C order: np.array of a broadcast view would keep the sample axis innermost, and numpy's
        # sums over rows strided by S round differently for different S (chunk sizes)
        x = np.array(np.broadcast_to(self.X0, (S,) + self.X0.shape), order="C")
        e = None                        # per-sample binary exponent of x (None: 0)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for l in range(L):
                seg = l // m
                if l % m == 0:
                    ckpt.append((x, e, fwd.get_state() if seg < last else None))
                self._reserve(fwd, self.fcount, l, min(L, (seg + 1) * m), 1, S)
                xin, ex, sx, t, et, x, e, ctx = self._forward(l, x, e, fwd)
                if self.units[l] < self.widths[l]:
                    sx = _sq(xin[:, 0, :self.units[l]])
                lx2[:, l] = np.log(sx / self.units[l])
                del xin
                if ex is not None:
                    lx2[:, l] += (2.0 * _LN2) * ex
                self._measure(l, t, et, q, qexp, c)
                if kern is not None:
                    self._measure_kernel(l, t, et, q, qexp, c, *kern)
                if seg == last:
                    store[l] = ctx
            del x, t, ctx
            # backward: the loss <v, t^L_a>; gt^l = to_tracked_l(backward_{l+1}(gt^{l+1}));
            # the gradient is renormalised at every layer, its scale carried as a log
            v = bwd.normal((self.widths[-1],), dt)
            v[..., self.units[-1]:] = 0         # the loss reads the reported units only
            if self.kd > 1:
                gt = np.zeros((S, self.kd, self.widths[-1]), dtype=dt)
                gt[:, 0] = v
            else:
                gt = v
            gx = None                   # gradient w.r.t. x^l waiting for layer l's ctx
            lscale = np.zeros(S)
            for si in range(last, -1, -1):
                l0, l1 = si * m, min(L, (si + 1) * m)
                xs, es, state = ckpt[si]
                if si != last:
                    fwd.set_state(state)
                    for l in range(l0, l1):
                        self._reserve(fwd, self.fcount, l, l1, 1, S)
                        *_, xs, es, store[l] = self._forward(l, xs, es, fwd)
                    del xs
                for l in range(l1 - 1, l0 - 1, -1):
                    ctx = store.pop(l)
                    if gx is not None:
                        gt, k1 = self._backward_step(l, "to_tracked_scaled", gx, ctx)
                        s = np.sqrt(_sq(gt.reshape(S, -1)) / self.widths[l + 1])
                        if not np.isfinite(s).all():
                            self._backward_step(l, "diagnose", ctx)
                            raise ValueError(f"layer {l + 1} of {L} ({self._describe(l)}): the "
                                             "backward pass gave non-finite gradients")
                        s = np.where(s > 0, s, 1.0)
                        gt /= s.reshape((S,) + (1,) * (gt.ndim - 1)).astype(dt)
                        lscale += np.log(s)
                        if k1 is not None:
                            lscale += _LN2 * k1
                    n = self.units[l + 1]
                    gr = gt if n == self.widths[l + 1] else gt[..., :n]
                    lg[:, l] = np.log(_sq(gr.reshape(S, -1)) / n) + 2.0 * lscale
                    if l == 0:
                        break
                    self._reserve(bwd, self.bcount, l, max(l0, 1) - 1, -1, S)
                    gx, k2 = self._backward_step(l, "backward_scaled", gt, ctx, bwd)
                    if k2 is not None:
                        lscale += _LN2 * k2
                ckpt[si] = None
        out = {"q": q, "qexp": qexp, "log_g": lg, "log_x2": lx2}
        if c is not None:
            out["c"] = c
        if kern is not None:
            out["kq"], out["kqexp"], out["kc"] = kern
        return out

    def _backward_step(self, l: int, method: str, *args):
        """``rules[l].method(*args)`` with a :class:`LayerError` turned into a ValueError naming
        the layer (``diagnose``: a no-op for rules without it)."""
        fn = getattr(self.rules[l], method, None)
        try:
            return None if fn is None else fn(*args)
        except LayerError as err:
            raise ValueError(f"layer {l + 1} of {self.L} ({self._describe(l)}): {err}") from None


_WORKER_JOB: Optional[_Job] = None


def _init_worker(job, nthreads=None):
    """A worker process: its job, and its share of the drawing threads (the numbers do not
    depend on it)."""
    global _WORKER_JOB
    _WORKER_JOB = job
    set_threads(nthreads)


def _run_in_worker(bounds):
    return _WORKER_JOB.run(*bounds)


#: how worker processes start: "fork" where the platform has it (no start-up cost), else
#: "spawn", which pickles the job (networks and activations are values that pickle; a callable
#: activation whose function does not pickle says so). Results do not depend on it.
START_METHOD = "fork" if "fork" in mp.get_all_start_methods() else "spawn"


def _run_job(job: _Job, samples: int, chunk: Optional[int], workers: int,
             progress: Optional[bool] = None) -> dict:
    size = chunk or job.chunk_size(samples)
    if workers > 1 and chunk is None:
        size = max(1, min(size, -(-samples // workers)))
    bounds = [(a, min(samples, a + size)) for a in range(0, samples, size)]
    parts = []
    with progress_bar(samples, "simulate", "samples", progress=progress) as bar:
        if workers > 1 and len(bounds) > 1:
            ctx = mp.get_context(START_METHOD)
            with ProcessPoolExecutor(max_workers=min(workers, len(bounds)), mp_context=ctx,
                                     initializer=_init_worker,
                                     initargs=(job, max(1, threads() // workers))) as pool:
                for (a, b), part in zip(bounds, pool.map(_run_in_worker, bounds)):
                    parts.append(part)
                    bar.update(b - a)
        else:
            for a, b in bounds:
                parts.append(job.run(a, b))
                bar.update(b - a)
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


# ---------------------------------------------------------------------------------------------
# summaries


def _mean_se(a: np.ndarray):
    """Sample mean and its standard error over axis 0, scaled per column so that values up to
    the float64 maximum (q^l of an exploding network) neither overflow in the variance."""
    S = a.shape[0]
    with np.errstate(invalid="ignore", over="ignore"):
        scale = np.max(np.abs(a), axis=0)
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        b = a / scale
        mean = b.mean(axis=0) * scale
        se = (b.std(axis=0, ddof=1) / math.sqrt(S) * scale if S > 1
              else np.full(a.shape[1:], np.nan))
    return mean, se


def log_mean_se(log_values: np.ndarray):
    """log of the sample mean of ``exp(log_values)`` over axis 0 and the standard error of that log
    (delta method, ``se(mean) / mean``), computed without over- or underflow."""
    S = log_values.shape[0]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        top = np.max(log_values, axis=0)
        finite = np.isfinite(top)
        shift = np.where(finite, top, 0.0)
        w = np.exp(log_values - shift)
        mw = w.mean(axis=0)
        log_mean = np.where(finite, shift + np.log(mw), top)
        if S > 1:
            se = w.std(axis=0, ddof=1) / math.sqrt(S) / mw
            # every sample exactly 0 (log -inf): the mean is 0 with sample deviation 0
            se = np.where(finite, se, np.where(top == -np.inf, 0.0, np.nan))
        else:
            se = np.full(log_values.shape[1:], np.nan)
    return log_mean, se


def _mean_se_pow2(a: np.ndarray, k: np.ndarray):
    """Mean, standard error and log of the mean over axis 0 of ``a * 2^k`` (``k`` integer), for
    values far beyond the float range: per column, everything is scaled by the power of two of
    the largest value, so only the final mean and standard error may over- or underflow (to inf
    or 0, as ``exp(log_q)`` does in theory profiles); their log is exact. Columns with ``k = 0``
    throughout give exactly :func:`_mean_se` and ``log`` of its mean."""
    S = a.shape[0]
    mean, se = _mean_se(a)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        log_mean = np.log(mean)
        cols = np.flatnonzero(k.any(axis=0))
        if cols.size:
            aa, kk = a[:, cols], k[:, cols]
            top = np.max(np.frexp(aa)[1] + kk, axis=0)
            w = np.ldexp(aa, (kk - top).astype(np.int32))
            mw = w.mean(axis=0)
            sw = w.std(axis=0, ddof=1) / math.sqrt(S) if S > 1 else np.full(cols.size, np.nan)
            mean[cols] = np.ldexp(mw, top.astype(np.int32))
            se[cols] = np.ldexp(sw, top.astype(np.int32))
            log_mean[cols] = np.log(mw) + _LN2 * top
    return mean, se, log_mean


def _profile(per: dict, network: Network, samples: int, meta: dict, return_samples: bool) -> Profile:
    L = network.depth
    q, q_se, log_q = _mean_se_pow2(per["q"], per["qexp"])
    with np.errstate(divide="ignore"):               # a sample q_hat = 0 has log -inf
        log_q_se = log_mean_se(np.log(per["q"]) + _LN2 * per["qexp"])[1]   # = q_se / q, in logs
    log_G_samples = per["log_g"] + per["log_x2"]
    log_g, log_g_se = log_mean_se(per["log_g"])
    log_G, log_G_se = log_mean_se(log_G_samples)
    c = c_se = None
    if "c" in per:
        c, c_se = _mean_se(per["c"])
    kernel = _kernel_fields(per, L) if "kq" in per else {}
    kept = None
    if return_samples:
        with np.errstate(over="ignore", under="ignore"):
            q_samples = np.ldexp(per["q"], per["qexp"].astype(np.int32)) if per["qexp"].any() \
                else per["q"]
        kept = {"q": q_samples, "log_g": per["log_g"], "log_G": log_G_samples}
        if "c" in per:
            kept["c"] = per["c"]
        if kernel and "inputs" in meta:     # (c0 and coupled runs keep their four keys)
            with np.errstate(over="ignore", under="ignore"):
                kept["kernel_q"] = np.ldexp(per["kq"], per["kqexp"].astype(np.int32))
            kept["kernel_corr"] = _pairs_to_matrix(per["kc"], kernel["kernel_log_q"].shape[1], 1.0)
    return Profile(layers=np.arange(1, L + 1), q=q, log_q=log_q, log_g=log_g, log_G=log_G, c=c,
                   q_se=q_se, c_se=c_se, log_g_se=log_g_se, log_G_se=log_G_se, samples=kept,
                   meta=meta, log_q_se=log_q_se, **kernel)


def _pairs_to_matrix(pairs: np.ndarray, k: int, diagonal: float) -> np.ndarray:
    """``(..., k(k-1)/2)`` values of the pairs a < b (``triu_indices`` order) as symmetric
    ``(..., k, k)`` matrices with ``diagonal`` on the diagonal."""
    out = np.empty(pairs.shape[:-1] + (k, k))
    ia, ib = np.triu_indices(k, 1)
    out[..., ia, ib] = pairs
    out[..., ib, ia] = pairs
    d = np.arange(k)
    out[..., d, d] = diagonal
    return out


def _kernel_fields(per: dict, L: int) -> dict:
    """The Monte Carlo kernel fields (module docstring): ``kernel_log_q`` (L, k) = log of the
    sample mean of every input's ``q_hat_a`` (as ``log_q``), ``kernel_corr`` (L, k, k) = sample
    mean of the per-sample correlations (as ``c``; unit diagonal), and their standard errors
    (``kernel_log_q_se``: of the log of the mean, delta method; ``kernel_corr_se``: 0 on the
    diagonal)."""
    kq, kqexp, kc = per["kq"], per["kqexp"], per["kc"]
    S, k = kq.shape[0], kq.shape[2]
    log_kq = _mean_se_pow2(kq.reshape(S, L * k), kqexp.reshape(S, L * k))[2].reshape(L, k)
    with np.errstate(divide="ignore"):
        log_kq_se = log_mean_se(np.log(kq) + _LN2 * kqexp)[1]
    corr, corr_se = _mean_se(kc.reshape(S, -1))
    return {"kernel_log_q": log_kq, "kernel_log_q_se": log_kq_se,
            "kernel_corr": _pairs_to_matrix(corr.reshape(L, -1), k, 1.0),
            "kernel_corr_se": _pairs_to_matrix(corr_se.reshape(L, -1), k, 0.0)}


def simulate(network: Network, samples: int, seed, engine: str = "dense", q0: float = 1.0,
             c0: Optional[float] = None, *, inputs=None, dtype="float64",
             return_samples: bool = False,
             chunk: Optional[int] = None, workers: int = 1, max_memory: int = 1 << 30,
             progress: Optional[bool] = None) -> Profile:
    """Monte Carlo profile of ``network`` over ``samples`` independent finite networks.

    Parameters
    ----------
    network: a :class:`~signalprop.network.Network` (e.g. from :func:`~signalprop.architectures.mlp`).
    samples: number of sample networks, an int >= 1 (standard errors need >= 2).
    seed: an int >= 0, a ``numpy.random.SeedSequence`` or a ``numpy.random.Generator``.
    engine: ``"dense"`` (full weight matrices; every weight kind) or ``"matrix-free"`` (exact
        O(N)-per-layer conditional sampler, O(N B^2) with batch normalisation; gaussian and
        orthogonal weights, any widths).
    q0: input second moment ``||x^0||^2 / N_0`` (> 0). c0: correlation of a second input in
        [-1, 1] (then ``c`` is reported), or None for one input.
    inputs: instead of ``q0``/``c0`` (TypeError with either), the per-unit Gram matrix
        ``<x_a, x_b> / N_0`` of k fixed inputs (k x k, positive semidefinite; or a
        :class:`~signalprop.kernel.Kernel` without means), as ``predict(inputs=...)`` takes:
        :func:`gram_inputs` builds them, of mean zero over the units when there is room. For a
        network that couples its inputs k must be its ``coupled_inputs``. The loss stays
        ``<v, t^L_0>`` on input 0; ``q`` is input 0's, ``c`` the pair (0, 1)'s.
    dtype: ``"float64"`` (default) or ``"float32"``; estimators are accumulated in float64.
    return_samples: keep the per-sample values in ``profile.samples`` (arrays of shape
        (samples, L): ``q``, ``c``, ``log_g`` = log g_hat, ``log_G`` = log G_hat).
    chunk: samples per batch (default: chosen from ``max_memory``). Results do not depend on it.
    workers: worker processes (fork); results do not depend on it.
    max_memory: bytes of per-chunk state before checkpointing kicks in (default 1 GiB). A run
        whose per-sample results (about 40 bytes per sample and layer, twice while chunks are
        joined) and one chunk's state exceed half the physical memory is refused up front
        (``ValueError`` saying how much it would need).
    progress: a bar on stderr advancing per chunk of samples: None (auto: when stderr is a
        terminal), True or False (:mod:`signalprop.progress`; ``SIGNALPROP_PROGRESS=0`` turns it
        off). Results do not depend on it.

    Returns a :class:`~signalprop.results.Profile` with ``q``, ``log_q``, ``log_g``, ``log_G``
    (``c`` with two inputs) and ``q_se``, ``log_g_se``, ``log_G_se`` (``c_se``); ``meta`` records
    engine, samples, seed, q0, c0, dtype and widths. With k >= 2 inputs (``c0``, ``inputs`` or a
    coupled network) also the kernel fields ``kernel_log_q`` (L, k), ``kernel_corr`` (L, k, k)
    and ``kernel_log_q_se``, ``kernel_corr_se`` (with ``inputs`` and ``return_samples`` also
    ``samples["kernel_q"]`` (S, L, k) and ``samples["kernel_corr"]`` (S, L, k, k)). Estimators: see the module docstring.
    """
    if inputs is not None and (not (isinstance(q0, numbers.Real) and q0 == 1.0)
                               or c0 is not None):
        raise TypeError("give either q0/c0 or inputs, not both")
    samples, q0, c0, dt, chunk, workers, max_memory = _check_args(
        network, samples, engine, q0, c0, dtype, chunk, workers, max_memory, return_samples)
    root = root_seed(seed)
    B = network.coupled_inputs
    if inputs is not None:
        X0 = gram_inputs(network.input_width, inputs)
        if B is not None and X0.shape[0] != B:
            raise ValueError(f"inputs: the network couples k = {B} inputs (its coupled_inputs), "
                             f"got a Gram matrix of {X0.shape[0]} x {X0.shape[0]}")
        gram = inputs.matrix() if isinstance(inputs, Kernel) else \
            np.asarray(inputs, float).reshape(X0.shape[0], X0.shape[0])
        q0 = float(gram[0, 0])
        c0 = float(gram[0, 1] / math.sqrt(gram[0, 0] * gram[1, 1])) if len(gram) > 1 else None
    else:
        if B is not None and c0 is None:
            c0 = 0.0                      # k coupled inputs (a batch, tokens): correlation 0
        X0 = network_inputs(network.input_width, q0, c0, k=B)
    job = _Job(network, engine, X0, dt, root, max_memory)
    check_memory(f"simulate with samples={samples} on a network of depth {network.depth}",
                 job.nbytes_needed(samples, return_samples))
    per = _run_job(job, samples, chunk, workers, progress)
    meta = {"source": "simulate", "engine": engine, "samples": samples,
            "seed": int(seed) if isinstance(seed, numbers.Integral) else repr(seed),
            "q0": q0, "c0": c0, "dtype": dt.name,
            **({"inputs": gram.tolist(), "k": len(gram)} if inputs is not None else {}),
            "widths": [int(w) for w in network.widths],
            "weights": sorted({getattr(la, "weights", "?") for la in network.layers}),
            "loss": "<v, h^L>, v ~ N(0, I)"}
    if network.batch_size is not None:
        meta["batch_size"] = B
        meta["loss"] = "<v, h^L_a> on one batch member; g sums over the batch"
    elif B is not None:
        meta["k"] = B
        meta["loss"] = "<v, t^L_0> on input 0; g sums over the k coupled inputs"
    return _profile(per, network, samples, meta, return_samples)
