"""The model families of Pennington & David 2023, built from :mod:`.layers`.

Every model maps stims ``(B, 1, F, T)`` to non-negative rates
``(B, N, 1, T)`` and is a ``core`` (what all cells share) followed by a
``readout`` (the last weighted-channel layer and everything after it: the
only part whose size depends on the number of cells). The keyword strings
are the paper's (LBHB nems_db, ``pop_model_scripts/pop_model_utils.py``),
with ``R`` the number of cells; every published fit ends in
``-lvl.R-dexp.R``, which these models include.

Parameter counts for A1 (R = 849 cells, 18 bands), with the defaults:

============  ==========  ========================================================
model         parameters  keyword string
============  ==========  ========================================================
PopLN         109,365     ``wc.18x120.g-fir.1x25x120-wc.120xR-lvl.R-dexp.R``
CNN1D         120,825     ``wc.18x100.g-fir.1x25x100-relu.100.f-wc.100x120-``
                          ``relu.120.f-wc.120xR-lvl.R-dexp.R``
CNN1Dx2       104,835     ``wc.18x70.g-fir.1x15x70-relu.70.f-wc.70x80-fir.1x10x80-``
                          ``relu.80.f-wc.80x100-relu.100-wc.100xR-lvl.R-dexp.R``
CNN2D         102,015     ``conv2d.10.8x3.rep3-wcn.90-relu.90-wc.90xR-lvl.R-dexp.R``
SingleCNN     146,877     ``wc.18x6.g-fir.1x25x6-relu.6.f-wc.6x1-lvl.1-dexp.1``
                          (one network per cell)
============  ==========  ========================================================

Examples
--------
>>> import torch
>>> net = CNN1Dx2(5, n_freq=4, hidden=(3, 4, 6))
>>> tuple(net(torch.rand(2, 1, 4, 30)).shape)
(2, 5, 1, 30)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .layers import (
    FIR,
    CausalConv2d,
    DoubleExponential,
    FlattenWeightChannels,
    GaussianWeightChannels,
    GroupedWeightChannels,
    LevelShift,
    ReLU,
    WeightChannels,
)

__all__ = ["CNN1D", "CNN2D", "CNN1Dx2", "PopLN", "PopulationModel", "SingleCNN"]


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class _Squeeze(nn.Module):
    """(B, 1, F, T) stims -> (B, F, T) channels, refusing other shapes."""

    def __init__(self, n_freq: int) -> None:
        super().__init__()
        self.n_freq = n_freq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != self.n_freq:
            raise ValueError(
                f"expected stims of shape (B, 1, {self.n_freq}, T), got {tuple(x.shape)}"
            )
        return x[:, 0]


def _readout(n_in: int, n_neurons: int) -> nn.Sequential:
    """``wc.{n_in}xR-lvl.R-dexp.R``."""
    return nn.Sequential(
        WeightChannels(n_in, n_neurons), LevelShift(n_neurons), DoubleExponential(n_neurons)
    )


class PopulationModel(nn.Module):
    """A ``core`` shared by all cells followed by a per-cell ``readout``.

    Subclasses build both in ``__init__`` and set ``self.n_core_out`` (the
    core's output channels). ``forward`` returns ``(B, N, 1, T)``.
    """

    keyword: str = ""
    core: nn.Module
    readout: nn.Module

    def __init__(self, n_neurons: int, n_freq: int) -> None:
        super().__init__()
        self.n_neurons = _positive("n_neurons", n_neurons)
        self.n_freq = _positive("n_freq", n_freq)

    def forward(self, stims: torch.Tensor) -> torch.Tensor:
        return self.readout(self.core(stims))[:, :, None, :]

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw every layer's parameters afresh (from ``generator`` when given)."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters(generator)

    def _make_readout(self, n_neurons: int) -> nn.Module:
        return _readout(self.n_core_out, n_neurons)

    def with_readout(self, n_neurons: int) -> PopulationModel:
        """A model with this model's ``core`` (the same module: shared weights) and a fresh readout.

        Parameters
        ----------
        n_neurons : int
            Cells of the new readout.

        Examples
        --------
        >>> net = PopLN(10, n_freq=4, rank=3)
        >>> other = net.with_readout(2)
        >>> other.core is net.core, tuple(other(torch.rand(1, 1, 4, 6)).shape)
        (True, (1, 2, 1, 6))
        """
        new = self.__class__.__new__(self.__class__)
        nn.Module.__init__(new)
        for key, value in self.__dict__.items():
            if key not in ("_parameters", "_buffers", "_modules") and not key.startswith("_"):
                setattr(new, key, value)
        new.n_neurons = _positive("n_neurons", n_neurons)
        new.core = self.core
        new.readout = self._make_readout(new.n_neurons)
        new.train(self.training)
        return new.to(next(iter(self.core.parameters())).device)

    def extra_repr(self) -> str:
        return f"n_neurons={self.n_neurons}, n_freq={self.n_freq}, keyword={self.keyword!r}"


class PopLN(PopulationModel):
    """The population LN model, ``wc.18x120.g-fir.1x25x120-wc.120xR-lvl.R-dexp.R``.

    A bank of ``rank`` Gaussian spectral filters, each followed by its own
    causal temporal filter (the core), then a weighted sum per cell, a level
    and the double exponential (the readout). 109,365 parameters for A1
    (R = 849). Differs from NEMS only in the output nonlinearity's sign
    constraint (see :class:`~nat4xr.torch.models.layers.DoubleExponential`).

    Parameters
    ----------
    n_neurons : int
        Cells (R).
    n_freq : int
        Spectrogram bands.
    rank : int
        Spectro-temporal channels of the core (120).
    n_taps : int
        FIR length in bins (25).

    Examples
    --------
    >>> net = PopLN(849)
    >>> sum(p.numel() for p in net.parameters())
    109365
    """

    def __init__(self, n_neurons: int, n_freq: int = 18, rank: int = 120, n_taps: int = 25):
        super().__init__(n_neurons, n_freq)
        rank, n_taps = _positive("rank", rank), _positive("n_taps", n_taps)
        self.keyword = f"wc.{n_freq}x{rank}.g-fir.1x{n_taps}x{rank}-wc.{rank}xR-lvl.R-dexp.R"
        self.n_core_out = rank
        self.core = nn.Sequential(
            _Squeeze(n_freq), GaussianWeightChannels(n_freq, rank), FIR(rank, n_taps)
        )
        self.readout = self._make_readout(self.n_neurons)


class CNN1D(PopulationModel):
    """The 1D-CNN (the paper's other population CNN).

    ``wc.18x100.g-fir.1x25x100-relu.100.f-wc.100x120-relu.120.f-wc.120xR-lvl.R-dexp.R``.

    120,825 parameters for A1 (R = 849).

    Parameters
    ----------
    n_neurons : int
        Cells (R).
    n_freq : int
        Spectrogram bands.
    hidden : (int, int)
        Channels of the two hidden layers (100, 120).
    n_taps : int
        FIR length in bins (25).

    Examples
    --------
    >>> sum(p.numel() for p in CNN1D(849).parameters())
    120825
    """

    def __init__(
        self,
        n_neurons: int,
        n_freq: int = 18,
        hidden: tuple[int, int] = (100, 120),
        n_taps: int = 25,
    ):
        super().__init__(n_neurons, n_freq)
        h1, h2 = (_positive("hidden", h) for h in hidden)
        n_taps = _positive("n_taps", n_taps)
        self.keyword = (
            f"wc.{n_freq}x{h1}.g-fir.1x{n_taps}x{h1}-relu.{h1}.f-wc.{h1}x{h2}-"
            f"relu.{h2}.f-wc.{h2}xR-lvl.R-dexp.R"
        )
        self.n_core_out = h2
        self.core = nn.Sequential(
            _Squeeze(n_freq),
            GaussianWeightChannels(n_freq, h1),
            FIR(h1, n_taps),
            ReLU(h1, offset=False),
            WeightChannels(h1, h2),
            ReLU(h2, offset=False),
        )
        self.readout = self._make_readout(self.n_neurons)


class CNN1Dx2(PopulationModel):
    """The 1Dx2-CNN, the paper's best population model.

    ``wc.18x70.g-fir.1x15x70-relu.70.f-wc.70x80-fir.1x10x80-relu.80.f-wc.80x100-relu.100-wc.100xR-lvl.R-dexp.R``:
    two stages of spectral weighting and causal temporal filtering, a dense
    layer with thresholds (``relu.100`` has learned offsets), then the
    per-cell readout. 104,835 parameters for A1 (R = 849).

    Parameters
    ----------
    n_neurons : int
        Cells (R).
    n_freq : int
        Spectrogram bands.
    hidden : (int, int, int)
        Channels of the three hidden layers (70, 80, 100).
    n_taps : (int, int)
        FIR lengths of the two temporal layers (15, 10).

    Examples
    --------
    >>> sum(p.numel() for p in CNN1Dx2(849).parameters())
    104835
    """

    def __init__(
        self,
        n_neurons: int,
        n_freq: int = 18,
        hidden: tuple[int, int, int] = (70, 80, 100),
        n_taps: tuple[int, int] = (15, 10),
    ):
        super().__init__(n_neurons, n_freq)
        h1, h2, h3 = (_positive("hidden", h) for h in hidden)
        k1, k2 = (_positive("n_taps", k) for k in n_taps)
        self.keyword = (
            f"wc.{n_freq}x{h1}.g-fir.1x{k1}x{h1}-relu.{h1}.f-wc.{h1}x{h2}-fir.1x{k2}x{h2}-"
            f"relu.{h2}.f-wc.{h2}x{h3}-relu.{h3}-wc.{h3}xR-lvl.R-dexp.R"
        )
        self.n_core_out = h3
        self.core = nn.Sequential(
            _Squeeze(n_freq),
            GaussianWeightChannels(n_freq, h1),
            FIR(h1, k1),
            ReLU(h1, offset=False),
            WeightChannels(h1, h2),
            FIR(h2, k2),
            ReLU(h2, offset=False),
            WeightChannels(h2, h3),
            ReLU(h3),
        )
        self.readout = self._make_readout(self.n_neurons)


class CNN2D(PopulationModel):
    """The 2D-CNN: ``conv2d.10.8x3.rep3-wcn.90-relu.90-wc.90xR-lvl.R-dexp.R``.

    Three causal 2-D convolution layers (10 filters of 8 time bins by 3
    bands, each followed by a ReLU with learned offsets), every (filter,
    band) map weighted into 90 channels, thresholded, then the readout.
    102,015 parameters for A1 (R = 849).

    Parameters
    ----------
    n_neurons : int
        Cells (R).
    n_freq : int
        Spectrogram bands.
    filters : int
        Filters per convolution layer (10).
    kernel : (int, int)
        (time, frequency) size of the filters (8, 3).
    n_layers : int
        Convolution layers (3).
    hidden : int
        Channels after flattening (90).

    Examples
    --------
    >>> sum(p.numel() for p in CNN2D(849).parameters())
    102015
    """

    def __init__(
        self,
        n_neurons: int,
        n_freq: int = 18,
        filters: int = 10,
        kernel: tuple[int, int] = (8, 3),
        n_layers: int = 3,
        hidden: int = 90,
    ):
        super().__init__(n_neurons, n_freq)
        filters, hidden = _positive("filters", filters), _positive("hidden", hidden)
        n_layers = _positive("n_layers", n_layers)
        kt, kf = (_positive("kernel", k) for k in kernel)
        self.keyword = (
            f"conv2d.{filters}.{kt}x{kf}.rep{n_layers}-wcn.{hidden}-relu.{hidden}-"
            f"wc.{hidden}xR-lvl.R-dexp.R"
        )
        self.n_core_out = hidden
        convs = [CausalConv2d(1 if i == 0 else filters, filters, (kt, kf)) for i in range(n_layers)]
        self.core = nn.Sequential(
            *convs, FlattenWeightChannels(filters, n_freq, hidden), ReLU(hidden)
        )
        self.readout = self._make_readout(self.n_neurons)

    def forward(self, stims: torch.Tensor) -> torch.Tensor:
        if stims.dim() != 4 or stims.shape[1] != 1 or stims.shape[2] != self.n_freq:
            raise ValueError(
                f"expected stims of shape (B, 1, {self.n_freq}, T), got {tuple(stims.shape)}"
            )
        return super().forward(stims)


class SingleCNN(PopulationModel):
    """One small CNN per cell: ``wc.18x6.g-fir.1x25x6-relu.6.f-wc.6x1-lvl.1-dexp.1``.

    The paper fitted this network to each cell separately; here the ``R``
    networks run side by side in one module (grouped layers), which computes
    the same thing and trains them together, each only through its own
    cell's loss. No part is shared, so ``core`` holds every cell's first
    layers and :meth:`with_readout` refuses (a new cell needs a whole new
    network). 146,877 parameters for A1 (R = 849: 173 per cell).

    Parameters
    ----------
    n_neurons : int
        Cells (R).
    n_freq : int
        Spectrogram bands.
    hidden : int
        Channels per cell (6).
    n_taps : int
        FIR length in bins (25).

    Examples
    --------
    >>> sum(p.numel() for p in SingleCNN(849).parameters())
    146877
    """

    def __init__(self, n_neurons: int, n_freq: int = 18, hidden: int = 6, n_taps: int = 25):
        super().__init__(n_neurons, n_freq)
        hidden, n_taps = _positive("hidden", hidden), _positive("n_taps", n_taps)
        self.hidden = hidden
        self.keyword = (
            f"wc.{n_freq}x{hidden}.g-fir.1x{n_taps}x{hidden}-relu.{hidden}.f-"
            f"wc.{hidden}x1-lvl.1-dexp.1"
        )
        channels = self.n_neurons * hidden
        self.n_core_out = channels
        # cell n's channels are n * hidden ... (n + 1) * hidden - 1
        self.core = nn.Sequential(
            _Squeeze(n_freq),
            GaussianWeightChannels(n_freq, channels),
            FIR(channels, n_taps),
            ReLU(channels, offset=False),
        )
        self.readout = nn.Sequential(
            GroupedWeightChannels(self.n_neurons, hidden, 1),
            LevelShift(self.n_neurons),
            DoubleExponential(self.n_neurons),
        )

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw every layer's parameters afresh; each cell's Gaussians start like NEMS's 6."""
        super().reset_parameters(generator)
        wc = self.core[1]
        centres = (torch.arange(1, self.hidden + 1) / (self.hidden * 2 + 2) + 0.25).float()
        with torch.no_grad():
            start = centres.repeat(self.n_neurons)
            if generator is not None:
                start = start + torch.randn(start.shape, generator=generator) * 0.2
            wc.mean.copy_(start)

    def with_readout(self, n_neurons: int) -> PopulationModel:
        """Refused: a single-cell CNN shares nothing between cells."""
        raise TypeError(
            "SingleCNN has one whole network per cell and no shared core; "
            f"build SingleCNN({n_neurons}, ...) for new cells instead"
        )
