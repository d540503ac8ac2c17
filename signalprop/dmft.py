"""Recurrent networks with their weights tied across time steps, at infinite width: the
dynamical mean field, solved by sampling one unit's paths (:func:`predict_tied`).

Mean-field theory of recurrent cells (``predict``; Chen, Pennington & Schoenholz 2018; Gilboa et al.
2019) treats every step's weights as fresh. With tied weights a unit meets the same row of ``W``
at every step, so its gate values persist in time, and averages of products of gates (the
LSTM's memory, ``prod_t f_t``) exceed products of averages at any width (measured:
validation/recurrent_report.md, section G). At infinite width the tied network is still exactly
solvable (docs/theory/recurrent.md, "Tied weights: the dynamical mean field"):

* forward (Yang 2019, "Tensor Programs I", the Netsor master theorem): the coordinates of ``W h_0,
  W h_1, ..., W h_{T-1}`` are jointly Gaussian over steps and inputs with covariance ``sigma_w^2
  E[h_s h_t]``, independent of other matrices' fields, of the inputs' fields (fresh directions
  per step) and of the per-unit biases; a unit's state is a deterministic function of its fields.
* backward (Yang 2020, "Tensor Programs II", the gradient-independence check: the readout ``v``
  is independent with mean zero): ``W^T`` acts as an independent copy ``W~^T``, itself tied, so
  the backward fields ``Z^{W~^T delta_t}`` are jointly Gaussian over steps with covariance
  ``sigma_w^2 E[delta_s delta_t]``, independent of the forward ones.

The covariances are averages over the unit's own law, so the process is solved self-consistently
step by step: ``paths`` samples of one unit carry the state, each new field value is drawn
conditionally on the same field's earlier values (Gram-Schmidt over the paths, one basis per
matrix, shared by matrices that always meet the same vector), with the covariances estimated
from the paths. ``replicas`` independent solutions give standard errors (the spread of the
replicas), reported in the profile's ``*_se`` fields, which :func:`~signalprop.compare.compare`
adds to the simulation's. The layer kinds supply one unit's step (``unit_forward`` /
``unit_backward``: :mod:`signalprop.layers.gated`, :mod:`signalprop.layers.recurrent`); with
untied weights (``rnn(..., tied=False)``) the same solver gives the exact untied theory, a check
of both routes.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ._validate import check_int
from .kernel import Kernel
from .network import Network
from .progress import progress_bar
from .results import Profile

__all__ = ["predict_tied", "UnitFields"]

#: largest number of float64 values the solver may hold (4 GiB)
_MAX_VALUES = 2 ** 29
#: values a chunk of replicas solved together may hold (512 MiB); larger problems go replica by
#: replica (the same numbers: each replica has its own generator)
_CHUNK_VALUES = 2 ** 26
#: relative jitter added to a new block's conditional covariance (rounding-level regulariser)
_JITTER = 1e-12


class _Field:
    """One matrix's Gaussian field on the paths of ``R`` independent replicas (rows ``r M .. (r+1)
    M - 1`` of every path array are replica ``r``): values at successive uses ``Z^{W y_1}, Z^{W
    y_2}, ...`` with ``Cov = sigma2 E[y_s y_t]`` (``E``: the average over a replica's paths). Kept
    as Gram-Schmidt per replica: the earlier vectors' orthonormal basis ``Q`` (``Q Q^T / M = 1``)
    and the standard normals ``Xi`` behind the earlier values, so that a new use's values are
    ``R^T Xi + C xi`` with ``R = Q y / M`` (its covariance with the earlier values) and ``C C^T =
    E[y y^T] - R^T R`` (the conditional covariance, regularised by a rounding-level jitter). All
    replicas in one batched call."""

    def __init__(self, replicas: int, paths: int, capacity: int = 8, sets: int = 1):
        self.R, self.M, self.sets = replicas, paths, sets
        self.Q = np.empty((replicas, capacity, paths))
        self.Xi = np.empty((sets, replicas, capacity, paths))
        self.n = 0

    def _grow(self, k: int) -> None:
        need = self.n + k
        if need <= self.Q.shape[1]:
            return
        cap = max(need, 2 * self.Q.shape[1], 8)
        Q = np.empty((self.R, cap, self.M))
        Q[:, :self.n] = self.Q[:, :self.n]
        Xi = np.empty((self.sets, self.R, cap, self.M))
        Xi[:, :, :self.n] = self.Xi[:, :, :self.n]
        self.Q, self.Xi = Q, Xi

    def use(self, y: np.ndarray, sigma2s, normal) -> list:
        """The values on ``y`` (R M, k) of each of ``sets`` independent matrices that have always
        met the same vectors (variances ``sigma2s``: the LSTM's four gates all read ``h``), each
        jointly Gaussian with its own earlier uses; they share the basis ``Q``."""
        R, M, k = self.R, self.M, y.shape[1]
        yt = np.ascontiguousarray(y.reshape(R, M, k).transpose(0, 2, 1))
        D = yt @ yt.transpose(0, 2, 1) / M                           # (R, k, k)
        scale = np.trace(D, axis1=1, axis2=2) / k
        if not np.any(scale > 0):           # a zero vector: the field is exactly 0 there
            return [np.zeros(y.shape) for _ in sigma2s]
        n = self.n
        B = self.Q[:, :n] @ yt.transpose(0, 2, 1) / M                # (R, n, k)
        Bt = B.transpose(0, 2, 1)
        S = D - Bt @ B
        eye = np.eye(k)
        S = 0.5 * (S + S.transpose(0, 2, 1)) + _JITTER * np.maximum(scale, 1e-300)[:, None, None] * eye
        w = np.linalg.eigvalsh(S)[:, 0]
        if np.any(w < -1e-8 * scale):
            raise FloatingPointError(f"dmft: a field's conditional covariance is not positive "
                                     f"(eigenvalue {w.min():.3g})")
        C = np.linalg.cholesky(S + np.maximum(0.0, -w)[:, None, None] * eye)
        xi = normal((self.sets, k, M)).transpose(1, 0, 2, 3)        # (sets, R, k, M)
        out = [math.sqrt(s2) * (C @ xi[j] + Bt @ self.Xi[j, :, :n]).transpose(0, 2, 1)
               .reshape(R * M, k) for j, s2 in enumerate(sigma2s)]
        self._grow(k)
        self.Q[:, n:n + k] = np.linalg.solve(C, yt - Bt @ self.Q[:, :n])
        self.Xi[:, :, n:n + k] = xi
        self.n = n + k
        return out


class UnitFields:
    """The Gaussian fields one unit meets, on ``paths`` samples of it (the interface of the layer
    kinds' ``unit_forward`` / ``unit_backward``): :meth:`field` (a matrix applied to a vector,
    jointly with the same matrix's earlier uses), :meth:`gaussian` (fresh), :meth:`bias` and
    :meth:`quenched` (fixed per path for a key)."""

    def __init__(self, paths: int, rngs: list, capacity: int = 8):
        self.replicas, self.per_replica, self.capacity = len(rngs), paths, capacity
        self.paths = paths * len(rngs)      # rows of every path array: replicas x paths
        self.rngs = rngs                    # one generator per replica: chunking is invisible
        self.step = 0                       # the step being solved (0: the first reads h_0)
        self.inputs: dict = {}              # step -> E[x^2] of the vector its weights first met
        self.uses: dict = {}      # key -> input 0's vectors at each use (for weight gradients)
        self._fields: dict = {}
        self._grouped: set = set()
        self._biases: dict = {}

    def normal(self, shape: tuple) -> np.ndarray:
        """Standard normals of ``shape`` from each replica's generator, stacked (R, *shape)."""
        return np.stack([g.standard_normal(shape) for g in self.rngs])

    def _rows(self, draw) -> np.ndarray:
        """``draw(rng, M)`` of each replica stacked along the paths: (R M, ...)."""
        return np.concatenate([np.asarray(draw(g, self.per_replica), float) for g in self.rngs])

    def field(self, key: str, sigma2: float, y: np.ndarray) -> np.ndarray:
        """``Z^{W y}`` for the matrix named ``key`` with ``Var W_ij = sigma2 / N``."""
        return self.fields((key,), (sigma2,), y)[0]

    def fields(self, keys: tuple, sigma2s: tuple, y: np.ndarray) -> list:
        """``[Z^{W_j y}]`` for several independent matrices named ``keys`` that meet the same
        vectors at every use (one shared basis: the cost of one field); a group must always be
        used together, with the same keys in the same order."""
        y = np.asarray(y, float)
        y0 = y[:, 0]
        for key in keys:
            self.uses.setdefault(key, []).append(y0)
        if not keys[0].endswith("^T") and self.step not in self.inputs:  # forward: G = g E[x^2]
            self.inputs[self.step] = np.mean(y0.reshape(self.replicas, -1) ** 2, axis=1)
        group = tuple(keys)
        f = self._fields.get(group)
        if f is None:
            if any(key in self._grouped for key in keys):
                raise ValueError(f"dmft: matrices {keys} must always be used as one group")
            self._grouped.update(keys)
            f = self._fields[group] = _Field(self.replicas, self.per_replica,
                                             self.capacity * y.shape[1], len(keys))
        return f.use(y, [float(v) for v in sigma2s], self.normal)

    def gaussian(self, cov: np.ndarray) -> np.ndarray:
        """Fresh Gaussian values (M, k) with covariance ``cov`` (k x k, positive semidefinite)."""
        cov = np.asarray(cov, float)
        w, V = np.linalg.eigh(0.5 * (cov + cov.T))
        root = V * np.sqrt(np.clip(w, 0.0, None))
        k = cov.shape[0]
        return self._rows(lambda g, M: g.standard_normal((M, k))) @ root.T

    def quenched(self, key: str, draw) -> np.ndarray:
        """``draw(rng, paths)`` (an (M, 1) array of per-path values of any law) at the first use
        of ``key``, the same array at every later use (a per-unit parameter)."""
        b = self._biases.get(key)
        if b is None:
            b = self._biases[key] = self._rows(draw)
        return b

    def bias(self, key: str, sigma2: float) -> np.ndarray:
        """A per-path draw ``N(0, sigma2)`` (M, 1), the same at every use of ``key``."""
        b = self._biases.get(key)
        if b is None:
            b = self._biases[key] = math.sqrt(sigma2) * self._rows(
                lambda g, M: g.standard_normal((M, 1)))
        return b


def _input_gram(q0, c0, inputs) -> np.ndarray:
    if inputs is not None:
        K = inputs if isinstance(inputs, Kernel) else Kernel.from_gram(inputs)
        return K.matrix()
    q0 = float(q0)
    if not (math.isfinite(q0) and q0 > 0):
        raise ValueError(f"q0 must be finite and > 0, got {q0!r}")
    if c0 is None:
        return np.array([[q0]])
    c0 = float(c0)
    if not (math.isfinite(c0) and -1.0 <= c0 <= 1.0):
        raise ValueError(f"c0 must lie in [-1, 1], got {c0!r}")
    return q0 * np.array([[1.0, c0], [c0, 1.0]])


def _check_network(net: Network) -> None:
    if not isinstance(net, Network):
        raise TypeError(f"network must be a Network, got {type(net).__name__}")
    for t, layer in enumerate(net.layers, 1):
        if not hasattr(layer, "unit_forward"):
            raise ValueError(f"predict_tied: layer {t} ({type(layer).__name__}) has no per-unit "
                             "process (unit_forward); the dynamical mean field covers the "
                             "recurrent cells (rnn(cell='rnn' | 'minimal' | 'gru' | 'lstm'))")
        if getattr(layer, "weights", "gaussian") != "gaussian":
            raise ValueError(f"predict_tied: layer {t} has weights={layer.weights!r}; the "
                             "dynamical mean field here is derived for gaussian weights")


def _solve(net: Network, G0: np.ndarray, paths: int, rngs: list, bar) -> tuple:
    """A chunk of replicas at once (rows grouped by replica, one generator each): per replica and
    step the tracked state's k x k second moments (R, T, k, k), the gradient variance g^t of input
    0 (R, T), and per recurrent matrix its weight-gradient variances (:func:`_weight_gradients`,
    per replica)."""
    R, M = len(rngs), paths
    F = UnitFields(M, rngs, capacity=net.depth)
    state = (F.gaussian(G0),)
    T, k = net.depth, G0.shape[0]
    K = np.empty((R, T, k, k))
    ctxs = []
    for t, layer in enumerate(net.layers):
        F.step = t
        state, ctx = layer.unit_forward(state, F)
        ctxs.append(ctx)
        h = state[0].reshape(R, M, k)
        K[:, t] = np.einsum("rmi,rmj->rij", h, h) / M
        bar.update(R)
    x2 = np.empty((R, T))                          # E[x^{t-1}^2]: what step t's weights read
    for t in range(T):
        x2[:, t] = F.inputs.get(t, K[:, t - 1, 0, 0] if t else np.full(R, G0[0, 0]))
    v = F.normal((M,))
    v /= np.sqrt(np.mean(v * v, axis=1, keepdims=True))   # E[v^2] = 1 per replica: g^T = 1
    grad = (v.reshape(R * M, 1),) + tuple(np.zeros((R * M, 1)) for _ in state[1:])
    g = np.empty((R, T))
    g[:, -1] = 1.0
    for t in range(T - 1, -1, -1):                 # step 1's backward: its weights' deltas
        grad = net.layers[t].unit_backward(grad, ctxs[t], F)
        if t:
            g[:, t - 1] = np.mean(grad[0].reshape(R, M) ** 2, axis=1)
        bar.update(R)
    return K, g, x2, _weight_gradients(F, net)


def _weight_gradients(F: UnitFields, net: Network) -> dict:
    """Per gate matrix ``W`` (key ``<share>:<gate>:W``) and replica the per-entry gradient
    variances ``(G_W, G_W same step, G_U, G_b)``: ``G_W = E[(d loss / d W_ij)^2] = sum_{s,t}
    E[delta_s delta_t] E[y_s y_t]`` (``d loss / d W = sum_t delta_t y_t^T``, the vectors ``y_t`` it
    met forward and the deltas its transpose met backward, inner products per unit concentrating
    at infinite width), its same-step part ``sum_t E[delta_t^2] E[y_t^2]`` (all that untied weights
    have); the gate's input matrix ``G_U = sum_t E[delta_t^2] q_x(t)`` (fresh input directions:
    no cross-step terms) and bias ``G_b = sum_{s,t} E[delta_s delta_t]``; and ``"total"``, the
    expected squared norm of the whole gradient of these parameters, ``sum_gates N^2 G_W + N n_x
    G_U + N G_b`` (docs/theory/recurrent.md, "Weight gradients"). Values are arrays over the
    replicas."""
    R, M = F.replicas, F.per_replica
    out, total = {}, np.zeros(R)
    qx = {}
    for layer in net.layers:
        qx.setdefault(layer.share, []).append(layer.q_x)
    for key, fwd in F.uses.items():
        back = F.uses.get(key + "^T")
        if not key.endswith(":W") or back is None or len(back) != len(fwd):
            continue
        Y = np.array(fwd).reshape(len(fwd), R, M)          # steps in forward order
        D = np.array(back[::-1]).reshape(len(fwd), R, M)   # the backward pass met them reversed
        A = np.einsum("trm,srm->rts", D, D) / M
        B = np.einsum("trm,srm->rts", Y, Y) / M
        dA, dB = np.einsum("rtt->rt", A), np.einsum("rtt->rt", B)
        layer = next(la for la in net.layers if key.startswith(la.share + ":")
                     and key[len(la.share) + 1:].count(":") <= 1)    # "W" or "<gate>:W"
        share = layer.share
        q = np.asarray(qx[share][:len(fwd)], float)
        row = (np.sum(A * B, axis=(1, 2)), np.sum(dA * dB, axis=1), dA @ q, np.sum(A, axis=(1, 2)))
        out[key] = row
        N, nx = getattr(layer, "state_width", layer.width), layer.input_width
        total = total + N * N * row[0] + N * nx * row[2] + N * row[3]
    out["total"] = (total,)
    return out


def predict_tied(network: Network, q0: float = 1.0, c0=None, *, inputs=None, paths: int = 4096,
                 replicas: int = 8, seed: int = 0, progress: Optional[bool] = None) -> Profile:
    """Per-step profile of a recurrent network whose weights are tied across steps, at infinite
    width: the dynamical mean field solved on ``paths`` samples of one unit, ``replicas`` times
    (module docstring; docs/theory/recurrent.md, "Tied weights").

    Same fields as :func:`~signalprop.meanfield.predict` (``q``, ``log_q``, ``c``, ``log_g``,
    ``log_G``; ``kernel_log_q``/``kernel_corr`` for k > 2 inputs), with standard errors from the
    spread of the replicas (``q_se``, ``log_q_se``, ``c_se``, ``log_g_se``, ``log_G_se``). The
    self-consistent covariances, estimated from ``paths`` samples, also bias the solution by
    O(1/paths); below the standard errors in the tests' and validation's cases except at long
    lags of a long-memory LSTM (b_f = 3, T = 200: log g at lag 190 is -4.05..-4.26 over seeds at
    2048 and 4096 paths, -4.39 +- 0.06 at 16384, against standard errors of 0.06; a Richardson
    extrapolation in 1/paths was tried and did not beat the noise). Raise ``paths`` for long
    lags. The loss is ``<v, h_T>`` on input 0, as in ``predict``. ``meta["weight_gradients"]``:
    per recurrent matrix ``<share>:<gate>:W`` the log per-entry gradient variances of it
    (``log_G``, and ``log_G_same_step``, the part untied weights would have), of the gate's input
    matrix (``log_G_U``) and bias (``log_G_b``), each with ``_se``; and ``"total"``:
    ``log_norm_sq``, the log expected squared norm of the gradient of all these parameters (the
    norm that gradient clipping meets; :func:`_weight_gradients`). ``q0``, ``c0`` or ``inputs`` (a k x k Gram matrix) describe ``h_0``. Same
    ``seed``: same numbers, whatever the chunking (each replica has its own generator; replicas are
    solved together in chunks of at most 512 MiB). Cost about ``replicas * paths * (T k)^2 *
    (fields)`` operations (matrices that always meet the same vector share one basis: the
    LSTM's four gates): an LSTM with T = 50 in about 1.2 s, 4.9x faster than simulating the N = 256
    networks needed for the same standard error of log g^1 (benchmarks/bench_tied.py); T = 200 in
    about 7 s.
    """
    _check_network(network)
    G0 = _input_gram(q0, c0, inputs)
    k = G0.shape[0]
    paths = check_int("paths", paths, 64, 10 ** 7)
    replicas = check_int("replicas", replicas, 2, 10 ** 4)
    seed = check_int("seed", seed, 0, 2 ** 63 - 1)
    T = network.depth
    n_fields = 2 * max(len(getattr(la, "_GATES", ("W",))) for la in network.layers)
    per_replica = paths * T * (n_fields // 2) * (2 * k + 4)   # fields and recorded uses
    chunk = max(1, min(replicas, _CHUNK_VALUES // per_replica))
    need = per_replica * chunk
    if need > _MAX_VALUES:
        raise MemoryError(f"predict_tied would hold about {need * 8 / 2 ** 30:.1f} GiB of paths "
                          f"(paths={paths} x replicas={replicas}, steps={T}, inputs={k}): lower "
                          "paths or replicas (the limit is 4 GiB)")
    with progress_bar(replicas * 2 * T, "predict_tied", "steps", progress=progress) as bar:
        rngs = [np.random.default_rng(ss) for ss in np.random.SeedSequence(seed).spawn(replicas)]
        parts = [_solve(network, G0, paths, rngs[i:i + chunk], bar)
                 for i in range(0, replicas, chunk)]
    K, g, x2 = (np.concatenate([p[j] for p in parts]) for j in range(3))
    wg = {key: tuple(np.concatenate([p[3][key][j] for p in parts])
                     for j in range(len(parts[0][3][key]))) for key in parts[0][3]}
    est = _estimates(K, g, x2)
    weight_gradients = {}
    for key, row in wg.items():
        names = ("log_norm_sq",) if key == "total" else ("log_G", "log_G_same_step", "log_G_U",
                                                          "log_G_b")
        for j, name in enumerate(names):
            m, se = _log_mean_se(row[j])
            weight_gradients.setdefault(key, {}).update({name: float(m), name + "_se": float(se)})
    meta = {"source": "theory", "method": "dynamical mean field (tied weights), sampled",
            "paths": paths, "replicas": replicas, "seed": seed,
            "q0": float(G0[0, 0]), "depth": T, "widths": [int(w) for w in network.widths],
            "weight_gradients": weight_gradients}
    if k == 2:
        meta["c0"] = float(G0[0, 1] / math.sqrt(G0[0, 0] * G0[1, 1]))
    return _profile(est, G0, meta)


def _mean_se(x: np.ndarray) -> tuple:
    """Mean over replicas (axis 0) and its standard error."""
    R = x.shape[0]
    return x.mean(axis=0), x.std(axis=0, ddof=1) / math.sqrt(R)


def _log_mean_se(x: np.ndarray) -> tuple:
    """Log of the mean over replicas and its standard error (delta method); log 0 = -inf, se 0."""
    m, se = _mean_se(x)
    with np.errstate(divide="ignore"):
        lm = np.log(m)
    return lm, np.divide(se, m, out=np.zeros_like(m), where=m > 0)


def _estimates(Ks: np.ndarray, gs: np.ndarray, x2: np.ndarray) -> dict:
    """``{field: (value, se)}`` over the replicas: ``log_q`` (T,), ``log_g`` (T,), ``log_x2`` (T,:
    the log second moment of what each step's weights read), ``kq`` (T, k: log second moments),
    ``corr`` (T, k, k)."""
    diag = np.einsum("rtii->rti", Ks)
    out = {"log_g": _log_mean_se(gs), "kq": _log_mean_se(diag), "log_x2": _log_mean_se(x2)}
    out["log_q"] = (out["kq"][0][:, 0], out["kq"][1][:, 0])
    d = np.sqrt(diag)
    out["corr"] = _mean_se(Ks / (d[..., :, None] * d[..., None, :]))
    return out


def _profile(est: dict, G0: np.ndarray, meta: dict) -> Profile:
    log_q, lq_se = est["log_q"]
    log_g, lg_se = est["log_g"]
    T, k = est["kq"][0].shape
    q = np.exp(log_q)
    lx2, lx2_se = est["log_x2"]          # G^t = g^t E[x^{t-1}^2] (CONVENTIONS.md)
    out = dict(layers=np.arange(1, T + 1), q=q, log_q=log_q, log_g=log_g, log_G=log_g + lx2,
               q_se=q * lq_se, log_q_se=lq_se, log_g_se=lg_se, log_G_se=np.hypot(lg_se, lx2_se))
    if k >= 2:
        corr, corr_se = est["corr"]
        out.update(c=corr[:, 0, 1], c_se=corr_se[:, 0, 1])
        if k > 2:
            out.update(kernel_log_q=est["kq"][0], kernel_corr=corr,
                       kernel_log_q_se=est["kq"][1], kernel_corr_se=corr_se)
    return Profile(meta=meta, **out)
