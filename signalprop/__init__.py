"""signalprop: signal propagation in randomly initialised deep networks.

Mean-field theory (``predict``, ``fixed_point``, ``critical_sigma_w2``, ``phase_diagram``) and
Monte Carlo (``simulate``, ``jacobian``) read one network description (``mlp``, ``resnet``,
``Network`` of ``Dense``, ``Residual``, ``LayerNorm``, ``RMSNorm``, ``Nonlinearity`` layers);
``compare`` checks one against the other. Notation and output names: CONVENTIONS.md.
"""

from .activations import Activation, activation, activations, normalising_constants
from .clipping import ClipResult, clipping, clipping_sweep, total_gradient_law
from .compare import Comparison, compare
from .finite import (DeadNetwork, FiniteWidthProfile, LogNormalLaw, dead_probability, finite_width,
                     hanin_nica_beta)
from .jacobian import JacobianSpectrum, jacobian, jacobian_singular_values
from .meanfield import (CriticalBranch, correlation_map, critical_branches, critical_sigma_w2,
                        fixed_point, length_map, phase_diagram, predict, trainable_depth)
from .architectures import mlp, resnet
from .layers import BatchNormDense, Dense, LayerNorm, Nonlinearity, RMSNorm, Residual
from .network import Network, init_sigma_w2
from .results import FixedPoint, PhaseDiagram, Profile
from .simulate import simulate
from .spectrum import Isometry, Spectrum, isometry, spectrum

__version__ = "0.1.0"

__all__ = [
    "Activation", "activation", "activations", "normalising_constants",
    "Dense", "Nonlinearity", "Network", "mlp", "init_sigma_w2",
    "Residual", "resnet", "LayerNorm", "RMSNorm", "BatchNormDense",
    "predict", "fixed_point", "critical_sigma_w2", "critical_branches", "CriticalBranch",
    "phase_diagram", "trainable_depth",
    "length_map", "correlation_map",
    "Profile", "FixedPoint", "PhaseDiagram",
    "simulate", "compare", "Comparison", "jacobian", "jacobian_singular_values", "JacobianSpectrum",
    "finite_width", "FiniteWidthProfile", "LogNormalLaw", "dead_probability", "DeadNetwork",
    "hanin_nica_beta", "clipping", "ClipResult", "total_gradient_law", "clipping_sweep",
    "spectrum", "Spectrum", "isometry", "Isometry",
]
