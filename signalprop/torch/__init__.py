"""A bridge to PyTorch: signalprop's predictions and measurements for a researcher's own
``nn.Module`` (optional extra: ``pip install "signalprop[torch]"``; ``import signalprop``
never imports torch).

* :func:`from_module`: the :class:`~signalprop.network.Network` of a module (``torch.fx``
  trace; Linear, the activations, LayerNorm, RMSNorm, BatchNorm1d after a Linear, residual sums
  and their scalings, Sequential nesting, MultiheadAttention and transformer encoders, nn.RNN,
  nn.LSTM and nn.GRU as the whole model), with the variances of PyTorch's default
  initialisation or of the current weights (:mod:`signalprop.torch.mapping`);
* :func:`measure`: per-layer forward and gradient variances of the module itself over
  re-initialisations, as a :class:`~signalprop.results.Profile` with standard errors that
  ``compare`` takes as it takes ``simulate``'s (:mod:`signalprop.torch.measure`);
* :func:`initialise`, :func:`edge_of_chaos_init`: set the Linear layers to a named scheme or
  to the edge of chaos (chi_1 = 1) in place, with a report (:mod:`signalprop.torch.init`);
* :func:`example_inputs`: the inputs ``simulate`` uses, as a tensor.

Recurrent modules (weights tied across steps): the theory is
``signalprop.predict_tied(from_module(m, x), q0, c0)`` (``predict``, the untied mean field,
misses the gated cells' tied-weight effects and refuses ``nn.GRU``'s cell).

Guide with worked examples: docs/torch.md.
"""

try:
    import torch as _torch  # noqa: F401
except ImportError as _err:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError('signalprop.torch needs PyTorch (>= 2.1): pip install "signalprop[torch]"'
                      ) from _err

from .init import InitEntry, InitReport, edge_of_chaos_init, initialise
from .mapping import from_module, map_module
from .measure import example_inputs, measure

__all__ = ["from_module", "map_module", "measure", "example_inputs", "initialise",
           "edge_of_chaos_init", "InitReport", "InitEntry"]
