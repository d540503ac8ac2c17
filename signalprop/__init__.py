"""signalprop: signal propagation in randomly initialised deep networks.

Mean-field theory (``predict``, ``fixed_point``, ``critical_sigma_w2``, ``phase_diagram``) and
Monte Carlo (``simulate``, ``jacobian``) read one network description (``mlp``, ``resnet``,
``Network`` of ``Dense``, ``Residual``, ``LayerNorm``, ``RMSNorm``, ``Nonlinearity`` layers);
``compare`` checks one against the other. Notation and output names: CONVENTIONS.md.

The public names are imported from their submodules on first use (:data:`_EXPORTS`, through
:func:`signalprop._lazy.lazy_exports`), so ``import signalprop`` and the command line start fast;
``from signalprop import mlp``, ``signalprop.predict`` and ``from signalprop import *`` work as
they always did. To export a new name, add one line ``"Name": "submodule",`` to :data:`_EXPORTS`
(``__all__`` follows the table).
"""

from ._lazy import lazy_exports as _lazy_exports

__version__ = "0.1.0"

#: public name -> the submodule defining it (the one table the lazy exports are driven by).
_EXPORTS = {
    "Activation": "activations", "activation": "activations", "activations": "activations",
    "normalising_constants": "activations",
    "Dense": "layers", "Nonlinearity": "layers", "Network": "network", "mlp": "architectures",
    "init_sigma_w2": "network",
    "Residual": "layers", "resnet": "architectures", "LayerNorm": "layers", "RMSNorm": "layers",
    "BatchNormDense": "layers", "Serial": "layers", "Add": "layers", "Kernel": "kernel",
    "RNNStep": "layers", "rnn": "architectures", "rnn_timescales": "layers.recurrent",
    "Gate": "layers", "MinimalStep": "layers", "GRUStep": "layers", "LSTMStep": "layers",
    "Attention": "layers", "transformer": "architectures",
    "predict": "meanfield", "fixed_point": "meanfield", "critical_sigma_w2": "meanfield",
    "critical_branches": "meanfield", "CriticalBranch": "meanfield",
    "phase_diagram": "meanfield", "trainable_depth": "meanfield",
    "length_map": "meanfield", "correlation_map": "meanfield", "chi_1": "maps", "chi_c": "maps",
    "fixed_points": "meanfield", "FixedPoints": "meanfield",
    "nlo_correction": "nlo", "NLOCorrection": "nlo", "predict_tied": "dmft",
    "cell_timescales": "timescales", "CellTimescales": "timescales",
    "sweep": "sweeps", "load_sweep": "sweeps", "Grid": "sweeps", "Cases": "sweeps",
    "SweepResult": "sweeps",
    "Profile": "results", "FixedPoint": "results", "PhaseDiagram": "results",
    "simulate": "simulate", "compare": "compare", "Comparison": "compare",
    "jacobian": "jacobian", "jacobian_singular_values": "jacobian", "JacobianSpectrum": "jacobian",
    "finite_width": "finite", "FiniteWidthProfile": "finite", "LogNormalLaw": "finite",
    "dead_probability": "finite", "DeadNetwork": "finite",
    "hanin_nica_beta": "finite", "clipping": "clipping", "ClipResult": "clipping",
    "total_gradient_law": "clipping", "clipping_sweep": "clipping",
    "transformer_clipping": "clipping", "StackClipResult": "clipping",
    "recurrent_clipping": "clipping",
    "weight_gradient_norms": "layers.attention", "weight_gradient_norms_mc": "layers.attention",
    "WeightGradientNorms": "layers.attention", "WeightGradientSamples": "layers.attention",
    "spectrum": "spectrum", "Spectrum": "spectrum", "isometry": "spectrum", "Isometry": "spectrum",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, hidden=("_EXPORTS", "_lazy_exports"))
