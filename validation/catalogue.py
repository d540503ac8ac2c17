"""The catalogue of validation cases: networks on which theory and simulation are compared.

Every case is a network (a fully connected :func:`signalprop.mlp`, or with ``arch`` a residual
or normalised one, see :meth:`Case.network`), an engine, a number of samples and a fixed seed
(derived from the case name, so adding cases never changes the others). Whether a case is
*expected* to agree is decided a priori from its widths alone
(:func:`signalprop.compare.expected_to_agree`: ``beta = sum_l 1/N_l < 0.5``; ``B/N_l`` and
B >= 6 for batch normalisation, :attr:`Case.expected`), never from its result.

Operating points per activation ("ordered", "critical", "chaotic"):

* linear, relu, leaky_relu: ``sigma_b^2 = 0`` and ``sigma_w^2 = (0.8, 1, 1.25) x`` the critical
  value ``2 / (1 + slope^2)`` (He et al. 2015; chi_1 = sigma_w^2 (1 + slope^2)/2);
* tanh, erf, hard_tanh, sigmoid, elu, selu: ``sigma_b^2 = 0.05`` and ``sigma_w^2 = (0.6, 1, 1.5) x``
  the edge of chaos of :func:`signalprop.meanfield.critical_sigma_w2` (Poole et al. 2016;
  Schoenholz et al. 2017);
* gelu, gelu_tanh, silu, softplus: ``sigma_b^2 = 0`` and ``sigma_w^2 = 1.5`` (ordered), ``2``
  and ``3`` (chaotic: the length grows geometrically, chi_1 -> sigma_w^2 / 2). At sigma_b^2 = 0
  they have no edge of chaos reached from q0 = 1 (:func:`signalprop.meanfield.critical_sigma_w2`
  is nan: chi_1 jumps from below 1 to above as the length map switches from collapsing to
  diverging; gelu and silu have one only for sigma_b^2 >~ 0.18 and 0.6, softplus never). The
  middle point, sigma_w^2 = 2 = 1 / lim_{q->inf} E[phi'^2] (where the growth of a large q is
  neutral), is *ordered* by :func:`signalprop.fixed_point` (q* = 0 with chi_1 = 0.5; softplus
  q* = 1.6e10 with chi_1 = 0.99999): its cases are named ``{act}-edge`` and labelled "ordered"
  (issue 10: they were "critical", which the package's own fixed_point contradicted).

Every label of an ``mlp`` case in the "activations" family is the regime that
:func:`signalprop.fixed_point` gives at its point (checked by tests/test_critical.py).
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass
from typing import Optional, Tuple, Union

from signalprop.compare import beta, expected_to_agree
from signalprop.architectures import mlp, resnet
from signalprop.layers import Dense, LayerNorm, Nonlinearity, Residual, RMSNorm
from signalprop.network import Network

__all__ = ["Case", "point", "catalogue", "quick_catalogue", "ACTIVATIONS", "FAMILIES"]

ACTIVATIONS = ("linear", "tanh", "sigmoid", "erf", "relu", "leaky_relu", "gelu", "gelu_tanh",
               "silu", "elu", "selu", "softplus", "hard_tanh")
_HOMOGENEOUS = ("linear", "relu", "leaky_relu")
_RELU_LIKE = ("gelu", "gelu_tanh", "silu", "softplus")
FAMILIES = {
    "activations": "every built-in activation at an ordered, a critical and a chaotic point; two "
                   "inputs (c0 = 0.5), N = 512, L = 100, matrix-free, gaussian weights",
    "widths": "widths 64 to 4096 at fixed depth 20 (tanh at the edge of chaos, relu He)",
    "depths": "depths 10, 100, 1000 at width 4096 (tanh critical, relu He, erf ordered)",
    "weights": "gaussian and orthogonal (matrix-free) and uniform (dense) weights, N = 256, L = 50",
    "engines": "the dense and the matrix-free engine on the same networks, N = 256, L = 30",
    "inputs": "one and two inputs, c0 from -0.5 to 0.95, and a non-constant widths profile",
    "quick": "a small subset of the other families (small widths and depths), run by the tests",
    "residual": "residual networks x + beta F(x) (F = V phi(W x + b), Yang & Schoenholz 2017): "
                "tanh, relu unscaled and scaled (beta = 1/sqrt(L)), erf with two inputs, a relu-ended "
                "one-layer branch; N = 256-512, L = 50-200, matrix-free",
    "normalisation": "layer norm (post- and pre-activation), RMS norm, pre-LN and post-LN residual "
                     "networks; N = 512, L = 100-200 (profile layers), matrix-free and dense",
    "batchnorm": "batch-normalised networks phi(BN(W x)) (Yang et al. 2019) with batches of B = 4 "
                 "to 32 inputs: linear, relu, tanh; N = 512-1024, L = 12-30, dense engine (the "
                 "finite-width parameter is sum B/N_l; B < 6 has heavy-tailed gradients)",
    "finite-width": "depth comparable to width (beta = sum 1/N_l >= 0.5): mean-field theory is "
                    "expected to fail here",
}


#: Notes written *after* running the suite, shown next to a case in the report. They explain a
#: result; they never change whether a case is expected to agree (that is decided from the widths).
NOTES = {
    "softplus-ordered": (
        "A finite-width effect of softplus, not a sampler error. The dense and the matrix-free "
        "engines agree (N = 256, L = 50: log g^1 - theory = 1.94 +- 0.24 dense, 2.12 +- 0.15 "
        "matrix-free), and the difference vanishes like 1/N at fixed depth: at L = 100, "
        "log g^1 (Monte Carlo) - theory = 3.71, 1.99, 0.69, 0.195 for N = 512, 2048, 8192, 32768 "
        "(N times the difference tends to about 7e3), and so does the typical (median) value. The "
        "1/N coefficient, about 70 per layer at depth 100 and about 10 at depth 32, grows with "
        "depth: the correction behaves like L^2/N, not L/N, so the first-order allowance 2 beta "
        "cannot cover it. Softplus activations have a large mean (mean/rms = 0.8 here) and the "
        "length map decays slower than the gradient (slope 0.70 against chi_1 = 0.49), so the "
        "rank-one part of W^l fixed by the forward pass (the term mean-field's gradient-"
        "independence assumption drops; tests/test_simulate.py shows it matters for softplus) is "
        "not damped relative to the bulk of the gradient and adds up over layers. Mean-field "
        "gradient predictions for softplus need depth well below sqrt(N) at this point."),
    "softplus-edge": "Same mechanism as softplus-ordered (the length-map slope is 0.93-0.997 "
                     "along the profile, chi_1 = 0.64-0.88); the effect is larger.",
    "gelu-edge": (
        "At sigma_w^2 = 2, sigma_b^2 = 0 the gelu length map is marginal where the network starts "
        "(slope 1.004 at q = 2, 0.89 at layer 11) before q decays to 0: forward fluctuations are "
        "not damped there, the finite-width bias of the gradient accumulates faster than L/N, and "
        "this point sits near the boundary between collapsing and exploding length (ordered by "
        "fixed_point: q* = 0, chi_1 = 0.5; it was labelled 'critical' before issue 10)."),
    "gelu_tanh-edge": "Same as gelu-edge (gelu_tanh differs from gelu by < 1e-3).",
}
NOTES["resnet1-relu-L20"] = (
    "A branch ending in relu adds a mean to the stream, and mean field's gradient independence "
    "misses the rank-one term the forward pass fixes (as for softplus). The gap in log g^1 shrinks "
    "like 1/N: 0.55, 0.20, 0.056, 0.015 at N = 256, 1024, 4096, 16384 (200 samples, matrix-free; "
    "tests/test_layers.py checks the decrease). predict(order=1) predicts the miss: first-order "
    "correction 0.835, 0.209, 0.052 at N = 256, 1024, 4096 against 0.589, 0.197, 0.051 measured "
    "(validation/nlo_report.md; at N = 256 the next order matters).")


def point(activation: str, regime: str) -> Tuple[float, float]:
    """(sigma_w2, sigma_b2) of the catalogue's operating point (module docstring)."""
    from signalprop.meanfield import critical_sigma_w2
    idx = {"ordered": 0, "critical": 1, "chaotic": 2, "edge": 1}[regime]
    if activation in _HOMOGENEOUS:
        slope = 0.01 if activation == "leaky_relu" else (1.0 if activation == "linear" else 0.0)
        crit = 2.0 / (1.0 + slope * slope)
        return crit * (0.8, 1.0, 1.25)[idx], 0.0
    if activation in _RELU_LIKE:
        return (1.5, 2.0, 3.0)[idx], 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crit = float(critical_sigma_w2(activation, 0.05))
    return crit * (0.6, 1.0, 1.5)[idx], 0.05


@dataclass(frozen=True)
class Case:
    """One validation case. ``width``: an int or ``[N_0, ..., N_L]``."""

    name: str
    family: str
    activation: str
    sigma_w2: float
    sigma_b2: float
    width: Union[int, Tuple[int, ...]]
    depth: int
    weights: str = "gaussian"
    c0: Optional[float] = None
    samples: int = 200
    engine: str = "matrix-free"
    regime: str = ""
    arch: str = "mlp"
    branch_scale: float = 1.0
    batch_size: Optional[int] = None

    @property
    def seed(self) -> int:
        return zlib.crc32(self.name.encode())

    def network(self):
        """The case's network. ``arch``: ``mlp``; ``resnet`` (blocks V phi(W x + b) + x scaled by
        ``branch_scale``), ``resnet1`` (one-layer branch phi(W x + b)), ``resnet-preln`` (LayerNorm
        at the head of every branch), ``resnet-postln`` (LayerNorm after every block);
        ``mlp-ln`` / ``mlp-rms`` (a norm after every activated layer), ``mlp-preln``
        (``phi(LN(W x + b))``). ``depth`` counts blocks, or Dense layers for the mlp variants."""
        w = list(self.width) if isinstance(self.width, tuple) else self.width
        kw = dict(sigma_w2=self.sigma_w2, sigma_b2=self.sigma_b2, weights=self.weights)
        if self.arch == "mlp":
            return mlp(self.depth, w, self.activation, **kw)
        if self.arch == "bn":
            kw.pop("sigma_b2")
            return mlp(self.depth, w, self.activation, norm="batch", batch_size=self.batch_size,
                       **kw)
        n = int(self.width)
        if self.arch.startswith("resnet"):
            net = resnet(self.depth, n, self.activation, beta=self.branch_scale,
                         branch_depth=1 if self.arch == "resnet1" else 2,
                         norm="layer" if self.arch == "resnet-preln" else None, **kw)
            if self.arch == "resnet-postln":
                net = Network(n, tuple(x for b in net.layers for x in (b, LayerNorm(n))))
            return net
        if self.arch == "mlp-preln":
            return Network(n, tuple(x for la in mlp(self.depth, n, "linear", **kw).layers
                                    for x in (la, LayerNorm(n), Nonlinearity(n, self.activation))))
        kind = {"mlp-ln": LayerNorm, "mlp-rms": RMSNorm}[self.arch]
        return Network(n, tuple(x for la in mlp(self.depth, n, self.activation, **kw).layers
                                for x in (la, kind(n))))

    @property
    def widths(self):
        if isinstance(self.width, tuple):
            return [int(v) for v in self.width]
        return [int(self.width)] * (self.network().depth + 1)

    @property
    def beta(self) -> float:
        """sum 1/N_l, or sum B/N_l for batch normalisation (signalprop.compare)."""
        return beta(self.widths) * (self.batch_size or 1)

    @property
    def expected(self) -> str:
        """"agree" or "disagree", decided a priori from the widths (beta < 0.5) and, for batch
        normalisation, B >= 6: below it the per-layer gradient factor B/r^2, r^2 ~ chi^2_{B-1},
        has infinite variance (E[1/chi_k^4] is finite only for k > 4), so standard errors of the
        Monte Carlo means are not meaningful."""
        if self.batch_size is not None and self.batch_size < 6:
            return "disagree"
        return "agree" if self.beta < 0.5 else "disagree"

    @property
    def width_label(self) -> str:
        if isinstance(self.width, tuple):
            return f"{min(self.width)}-{max(self.width)}"
        return str(self.width)


def _tag(act: str, regime: str) -> Tuple[str, str]:
    """(name tag, regime label) of an operating point: the relu-like family's middle point is
    the "edge" sigma_w^2 = 2, ordered by fixed_point (module docstring); the others are labelled
    by the regime they were chosen for, which fixed_point confirms."""
    if act in _RELU_LIKE and regime == "critical":
        return "edge", "ordered"
    return regime, regime


def _c(name, family, act, regime, width, depth, **kw) -> Case:
    sw2, sb2 = point(act, regime)
    return Case(name=name, family=family, activation=act, sigma_w2=sw2, sigma_b2=sb2, width=width,
                depth=depth, regime=_tag(act, regime)[1], **kw)


def catalogue() -> list:
    """All cases of the full validation suite."""
    cases = []
    for act in ACTIVATIONS:
        for reg in ("ordered", "critical", "chaotic"):
            cases.append(_c(f"{act}-{_tag(act, reg)[0]}", "activations", act, reg, 512, 100,
                            c0=0.5))
    for n in (64, 256, 1024, 4096):
        cases.append(_c(f"tanh-critical-N{n}", "widths", "tanh", "critical", n, 20))
        cases.append(_c(f"relu-he-N{n}", "widths", "relu", "critical", n, 20))
    for L in (10, 100, 1000):
        samples = 100 if L == 1000 else 200
        cases.append(_c(f"tanh-critical-L{L}", "depths", "tanh", "critical", 4096, L,
                        samples=samples))
        cases.append(_c(f"relu-he-L{L}", "depths", "relu", "critical", 4096, L, samples=samples))
        cases.append(_c(f"erf-ordered-L{L}", "depths", "erf", "ordered", 4096, L, samples=samples))
    for act, reg in (("tanh", "critical"), ("relu", "critical"), ("erf", "chaotic")):
        for w, eng in (("gaussian", "matrix-free"), ("orthogonal", "matrix-free"),
                       ("uniform", "dense")):
            cases.append(_c(f"{act}-{reg}-{w}", "weights", act, reg, 256, 50, weights=w,
                            engine=eng, samples=120 if eng == "dense" else 200))
    for act, reg in (("tanh", "chaotic"), ("selu", "critical")):
        for eng in ("dense", "matrix-free"):
            cases.append(_c(f"{act}-{reg}-{eng}", "engines", act, reg, 256, 30, engine=eng,
                            c0=0.5, samples=150))
    for act, reg, c0 in (("tanh", "ordered", 0.2), ("tanh", "chaotic", 0.95),
                         ("erf", "chaotic", -0.5), ("relu", "critical", 0.9),
                         ("tanh", "critical", None), ("gelu", "ordered", None)):
        tag = "one-input" if c0 is None else f"c0={c0:g}"
        cases.append(_c(f"{act}-{reg}-{tag}", "inputs", act, reg, 512, 60, c0=c0))
    prof = (384, 512, 256, 768, 320) * 8 + (512,)
    for w in ("gaussian", "orthogonal"):
        cases.append(_c(f"tanh-critical-profile-{w}", "inputs", "tanh", "critical", prof, 40,
                        weights=w, c0=0.5))
    cases += _residual_cases() + _norm_cases() + _bn_cases()
    for act, reg, n, L in (("relu", "critical", 16, 64), ("tanh", "critical", 32, 64),
                           ("tanh", "chaotic", 16, 32), ("gelu", "chaotic", 24, 48),
                           ("tanh", "critical", 64, 500), ("relu", "critical", 256, 1000)):
        cases.append(_c(f"{act}-{reg}-N{n}-L{L}", "finite-width", act, reg, n, L,
                        samples=1000 if n * L < 20000 else 300))
    return cases


def _residual_cases() -> list:
    def r(name, act, sw2, sb2, n, L, **kw):
        arch = kw.pop("arch", "resnet")
        return Case(name=name, family="residual", activation=act, sigma_w2=sw2, sigma_b2=sb2,
                    width=n, depth=L, arch=arch, regime=arch, **kw)
    return [
        r("resnet-tanh-L50", "tanh", 1.0, 0.05, 256, 50, c0=0.5),
        r("resnet-tanh-L200", "tanh", 1.0, 0.05, 1024, 200, samples=100),
        r("resnet-relu-he-L50", "relu", 2.0, 0.0, 256, 50),
        r("resnet-relu-he-scaled-L200", "relu", 2.0, 0.0, 1024, 200, branch_scale=200 ** -0.5,
          c0=0.5, samples=100),
        r("resnet-erf-half-L100", "erf", 1.5, 0.1, 512, 100, branch_scale=0.5, c0=0.2),
        r("resnet-tanh-orthogonal-L50", "tanh", 1.0, 0.05, 256, 50, weights="orthogonal"),
        r("resnet-tanh-dense-L20", "tanh", 1.5, 0.05, 256, 20, engine="dense", samples=60),
        r("resnet1-relu-L20", "relu", 1.0, 0.0, 256, 20, arch="resnet1", branch_scale=0.5),
    ]


def _norm_cases() -> list:
    def r(name, arch, act, sw2, sb2, n, L, **kw):
        return Case(name=name, family="normalisation", activation=act, sigma_w2=sw2, sigma_b2=sb2,
                    width=n, depth=L, arch=arch, regime=arch, **kw)
    return [
        r("ln-post-relu-L100", "mlp-ln", "relu", 2.0, 0.0, 512, 100, c0=0.5),
        r("ln-post-tanh-L100", "mlp-ln", "tanh", 2.0, 0.05, 512, 100, c0=0.5),
        r("ln-pre-tanh-L60", "mlp-preln", "tanh", 1.0, 0.1, 512, 60, c0=0.5),
        r("rms-post-relu-L100", "mlp-rms", "relu", 2.0, 0.0, 512, 100),
        r("ln-post-gelu-dense-L20", "mlp-ln", "gelu", 1.5, 0.0, 256, 20, engine="dense",
          samples=60, c0=0.5),
        r("resnet-preln-relu-L100", "resnet-preln", "relu", 2.0, 0.0, 1024, 100, c0=0.5),
        r("resnet-postln-tanh-L100", "resnet-postln", "tanh", 1.5, 0.1, 1024, 100, c0=0.5),
    ]


def _bn_cases() -> list:
    def r(act, sw2, B, n, L, samples=60):
        return Case(name=f"bn-{act}-B{B}-N{n}-L{L}", family="batchnorm", activation=act,
                    sigma_w2=sw2, sigma_b2=0.0, width=n, depth=L, arch="bn", batch_size=B,
                    regime=f"B={B}", engine="dense", samples=samples)
    return [r("linear", 1.0, 4, 512, 30), r("linear", 1.0, 8, 512, 30),
            r("linear", 1.0, 32, 1024, 12), r("linear", 1.0, 32, 512, 30),
            r("relu", 2.0, 8, 512, 30), r("relu", 2.0, 32, 1024, 12), r("tanh", 1.0, 16, 1024, 15)]


def quick_catalogue() -> list:
    """A small subset (seconds): one case per kind of check, small widths."""
    return [
        _c("quick-tanh-critical-2in", "quick", "tanh", "critical", 256, 20, c0=0.5, samples=100),
        _c("quick-relu-he", "quick", "relu", "critical", 256, 30, samples=100),
        _c("quick-gelu-chaotic", "quick", "gelu", "chaotic", 256, 20, samples=100),
        _c("quick-erf-chaotic-orthogonal", "quick", "erf", "chaotic", 128, 20,
           weights="orthogonal", samples=100),
        _c("quick-tanh-ordered-uniform-dense", "quick", "tanh", "ordered", 64, 8,
           weights="uniform", engine="dense", samples=64),
        _c("quick-selu-critical-dense", "quick", "selu", "critical", 64, 8, engine="dense",
           c0=0.3, samples=64),
        _c("quick-relu-N16-L48", "finite-width", "relu", "critical", 16, 48, samples=300),
        Case(name="quick-resnet-tanh", family="quick", activation="tanh", sigma_w2=1.0,
             sigma_b2=0.05, width=256, depth=20, arch="resnet", c0=0.5, samples=100),
        Case(name="quick-ln-post-relu", family="quick", activation="relu", sigma_w2=2.0,
             sigma_b2=0.0, width=256, depth=20, arch="mlp-ln", c0=0.5, samples=100),
    ]
