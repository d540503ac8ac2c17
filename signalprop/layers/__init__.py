"""The layer kinds, one module each: its description, its mean-field rule and its samplers.

* :mod:`.dense`: :class:`Dense` (``h = W x + b``, ``x = phi(h)``) and :class:`Nonlinearity`;
* :mod:`.compose`: layers made of layers: :class:`Serial` (a stack as one layer) and :class:`Add`
  (paths that fan out from one input and meet in a weighted sum);
* :mod:`.residual`: :class:`Residual` blocks ``alpha x + beta f(x)`` (an ``Add`` of the identity
  and a branch);
* :mod:`.norm`: :class:`LayerNorm`, :class:`RMSNorm`;
* :mod:`.batchnorm`: :class:`BatchNormDense` (``phi(BN(W x))`` over a batch);
* :mod:`.recurrent`: :class:`RNNStep` (one time step of a vanilla RNN, weights shared by name).
* :mod:`.attention`: :class:`Attention` (multi-head self-attention over T tokens).
* :mod:`.gated`: :class:`MinimalStep`, :class:`GRUStep`, :class:`LSTMStep` (gated recurrent
  cells, one time step each).

The members every kind provides are listed in :mod:`signalprop.network` (the layer protocol).
"""

from .batchnorm import BatchNormDense
from .dense import Dense, Nonlinearity
from .norm import LayerNorm, RMSNorm
from .compose import Add, Serial
from .residual import Residual
from .recurrent import RNNStep
from .attention import Attention
from .gated import Gate, GRUStep, LSTMStep, MinimalStep

__all__ = ["Dense", "Nonlinearity", "Serial", "Add", "Residual", "LayerNorm", "RMSNorm", "BatchNormDense", "RNNStep", "Attention", "Gate", "MinimalStep", "GRUStep", "LSTMStep"]
