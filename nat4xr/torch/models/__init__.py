"""The paper's model families as torch modules, and the layers they are built from.

- :mod:`nat4xr.torch.models.layers`: one layer per NEMS keyword.
- :mod:`nat4xr.torch.models.families`: :class:`PopLN`, :class:`CNN1D`,
  :class:`CNN1Dx2`, :class:`CNN2D`, :class:`SingleCNN`.

Examples
--------
>>> from nat4xr.torch import models
>>> net = models.PopLN(849)
>>> net.keyword
'wc.18x120.g-fir.1x25x120-wc.120xR-lvl.R-dexp.R'
"""

from __future__ import annotations

from . import layers
from .families import CNN1D, CNN2D, CNN1Dx2, PopLN, PopulationModel, SingleCNN

__all__ = ["CNN1D", "CNN2D", "CNN1Dx2", "PopLN", "PopulationModel", "SingleCNN", "layers"]
