"""signalprop: signal propagation in randomly initialised deep networks.

Mean-field theory (``predict``, ``fixed_point``, ``critical_sigma_w2``, ``phase_diagram``),
built on one network description (``mlp``, ``Network``, ``Dense``) and one Gaussian-expectation
engine (``signalprop.gaussian``). Notation and output names: CONVENTIONS.md.
"""

from .activations import Activation, activation, activations, normalising_constants
from .meanfield import (correlation_map, critical_sigma_w2, fixed_point, length_map, phase_diagram,
                        predict, trainable_depth)
from .network import Dense, Network, init_sigma_w2, mlp
from .results import FixedPoint, PhaseDiagram, Profile

__version__ = "0.1.0"

__all__ = [
    "Activation", "activation", "activations", "normalising_constants",
    "Dense", "Network", "mlp", "init_sigma_w2",
    "predict", "fixed_point", "critical_sigma_w2", "phase_diagram", "trainable_depth",
    "length_map", "correlation_map",
    "Profile", "FixedPoint", "PhaseDiagram",
]
