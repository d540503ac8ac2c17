"""The layer kinds, one module each: its description, its mean-field rule and its samplers.

* :mod:`.dense`: :class:`Dense` (``h = W x + b``, ``x = phi(h)``) and :class:`Nonlinearity`;
* :mod:`.residual`: :class:`Residual` blocks ``alpha x + beta f(x)``;
* :mod:`.norm`: :class:`LayerNorm`, :class:`RMSNorm`;
* :mod:`.batchnorm`: :class:`BatchNormDense` (``phi(BN(W x))`` over a batch).

The members every kind provides are listed in :mod:`signalprop.network` (the layer protocol).
"""

from .batchnorm import BatchNormDense
from .dense import Dense, Nonlinearity
from .norm import LayerNorm, RMSNorm
from .residual import Residual

__all__ = ["Dense", "Nonlinearity", "Residual", "LayerNorm", "RMSNorm", "BatchNormDense"]
