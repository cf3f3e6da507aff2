"""One layer per NEMS keyword: what each computes, on (B, channels, T) or (B, C, F, T).

Each layer is the torch form of a keyword in NEMS0's
``nems0/plugins/default_keywords.py`` and the TensorFlow layers
``nems0/tf/layers.py`` the paper's fits ran on (keyword in brackets):

- :class:`WeightChannels` (``wc.NxM``): ``y[o, t] = sum_i W[o, i] x[i, t]``.
- :class:`GaussianWeightChannels` (``wc.NxM.g``): the same with each row of
  ``W`` a normalized Gaussian over the input channels' positions ``i / N``.
- :class:`FIR` (``fir.1xKxC``): one causal filter per channel,
  ``y[c, t] = sum_k h[c, k] x[c, t - k]``, zero before the first bin.
- :class:`ReLU` (``relu.C``, ``relu.C.f``): ``max(x - offset[c], 0)``; ``.f``
  fixes the offset at zero.
- :class:`LevelShift` (``lvl.C``): ``x + level[c]``.
- :class:`DoubleExponential` (``dexp.C``):
  ``base + amplitude * exp(-exp(-exp(kappa) * (x - shift)))``.
- :class:`CausalConv2d` (one layer of ``conv2d.K.TxF``): a 2-D convolution
  over (frequency, time), causal in time, centred in frequency, then ReLU
  with a per-filter offset.
- :class:`FlattenWeightChannels` (``wcn.M``): every (filter, frequency)
  channel weighted into ``M`` outputs.
- :class:`GroupedWeightChannels`: ``G`` independent ``wc`` layers side by
  side (one small network per cell, the single-cell CNN's last ``wc``).

Every layer has ``reset_parameters(generator=None)``, drawing its initial
values from an explicit ``torch.Generator`` so that restarts are reproducible.

Examples
--------
>>> import torch
>>> x = torch.zeros(1, 3, 5); x[0, :, 0] = 1.0  # an impulse in every channel
>>> fir = FIR(3, 4)
>>> bool(torch.allclose(fir(x)[0, :, :4], fir.coefficients))  # the impulse response
True
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "FIR",
    "CausalConv2d",
    "DoubleExponential",
    "FlattenWeightChannels",
    "GaussianWeightChannels",
    "GroupedWeightChannels",
    "LevelShift",
    "ReLU",
    "WeightChannels",
]

Generator = torch.Generator | None


def _normal(shape: tuple[int, ...], std: float, generator: Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * std


def _check_3d(x: torch.Tensor, channels: int, name: str) -> None:
    if x.dim() != 3 or x.shape[1] != channels:
        raise ValueError(f"{name} expects input of shape (B, {channels}, T), got {tuple(x.shape)}")


class WeightChannels(nn.Module):
    """Weighted sum of channels (NEMS ``wc.{n_in}x{n_out}``): ``y = W @ x``.

    Parameters
    ----------
    n_in, n_out : int
        Input and output channels. ``coefficients`` has shape (n_out, n_in).

    Examples
    --------
    >>> layer = WeightChannels(4, 2)
    >>> tuple(layer(torch.ones(3, 4, 10)).shape)
    (3, 2, 10)
    """

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.coefficients = nn.Parameter(torch.empty(self.n_out, self.n_in))
        self.reset_parameters()

    def reset_parameters(self, generator: Generator = None) -> None:
        """Normal weights of standard deviation ``1 / sqrt(n_in)``."""
        with torch.no_grad():
            self.coefficients.copy_(
                _normal(self.coefficients.shape, 1 / math.sqrt(self.n_in), generator)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_3d(x, self.n_in, type(self).__name__)
        return torch.einsum("oi,bit->bot", self.coefficients, x)


class GaussianWeightChannels(nn.Module):
    """Gaussian-shaped channel weights (NEMS ``wc.{n_in}x{n_out}.g``).

    Row ``o`` of the weights is ``exp(-0.5 ((i / n_in - mean[o]) / sd[o])^2)``
    over the input channels ``i``, divided by its sum over ``i``. ``mean`` is
    clipped to [-0.01, 1.01] and ``sd`` to at least 0.05, NEMS's bounds (its
    fitter clipped the parameters; here they are clipped where used, so the
    gradient is zero outside the bounds in the same way).

    Parameters
    ----------
    n_in, n_out : int
        Input and output channels.

    Examples
    --------
    >>> layer = GaussianWeightChannels(18, 3)
    >>> bool(torch.allclose(layer.weights().sum(1), torch.ones(3)))
    True
    """

    MEAN_BOUNDS = (-0.01, 1.01)
    SD_MIN = 0.05

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.mean = nn.Parameter(torch.empty(self.n_out))
        self.sd = nn.Parameter(torch.empty(self.n_out))
        self.reset_parameters()

    def reset_parameters(self, generator: Generator = None) -> None:
        """NEMS's starting points: centres evenly spaced over [0.25, 0.75], sd 0.4.

        With a generator (a restart) the centres are drawn from NEMS's prior,
        normal around those points with sd 0.2, and the widths from
        half-normal(0.4), as NEMS's random restarts did.
        """
        centres = (torch.arange(1, self.n_out + 1) / (self.n_out * 2 + 2) + 0.25).float()
        with torch.no_grad():
            if generator is None:
                self.mean.copy_(centres)
                self.sd.fill_(0.4)
            else:
                self.mean.copy_(centres + _normal((self.n_out,), 0.2, generator))
                self.sd.copy_(_normal((self.n_out,), 0.4, generator).abs().clamp_min(0.1))

    def weights(self) -> torch.Tensor:
        """The (n_out, n_in) weights."""
        pos = torch.arange(self.n_in, dtype=self.mean.dtype, device=self.mean.device) / self.n_in
        mean = self.mean.clamp(*self.MEAN_BOUNDS)[:, None]
        sd = self.sd.clamp_min(self.SD_MIN)[:, None]
        g = torch.exp(-0.5 * ((pos[None, :] - mean) / sd) ** 2)
        return g / g.sum(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_3d(x, self.n_in, type(self).__name__)
        return torch.einsum("oi,bit->bot", self.weights(), x)


class FIR(nn.Module):
    """One causal FIR filter per channel (NEMS ``fir.1x{n_taps}x{channels}``).

    ``y[c, t] = sum_k coefficients[c, k] * x[c, t - k]`` with ``x`` zero
    before the first bin (NEMS filters each channel with ``lfilter`` from a
    zero state): ``coefficients[:, 0]`` weighs the current bin.

    Parameters
    ----------
    channels : int
        Channels, each with its own filter.
    n_taps : int
        Filter length in bins.

    Examples
    --------
    >>> fir = FIR(2, 3)
    >>> tuple(fir(torch.ones(1, 2, 8)).shape)
    (1, 2, 8)
    """

    def __init__(self, channels: int, n_taps: int) -> None:
        super().__init__()
        self.channels, self.n_taps = int(channels), int(n_taps)
        self.coefficients = nn.Parameter(torch.empty(self.channels, self.n_taps))
        self.reset_parameters()

    def reset_parameters(self, generator: Generator = None) -> None:
        """Normal coefficients of standard deviation ``1 / sqrt(n_taps)``."""
        with torch.no_grad():
            self.coefficients.copy_(
                _normal(self.coefficients.shape, 1 / math.sqrt(self.n_taps), generator)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_3d(x, self.channels, type(self).__name__)
        # conv1d correlates: flip the taps so tap k meets x[t - k]
        kernel = self.coefficients.flip(-1)[:, None, :]
        return F.conv1d(F.pad(x, (self.n_taps - 1, 0)), kernel, groups=self.channels)


class ReLU(nn.Module):
    """Rectification with a per-channel threshold (NEMS ``relu.{channels}``).

    ``y = max(x - offset[c], 0)``. With ``offset=False`` (NEMS ``.f``, a fixed
    threshold of zero) it is a plain ReLU without parameters.

    Examples
    --------
    >>> relu = ReLU(2)
    >>> with torch.no_grad():
    ...     _ = relu.offset.copy_(torch.tensor([0.0, 1.0]))
    >>> relu(torch.full((1, 2, 1), 1.5)).flatten().tolist()
    [1.5, 0.5]
    """

    def __init__(self, channels: int, offset: bool = True) -> None:
        super().__init__()
        self.channels = int(channels)
        self.offset = nn.Parameter(torch.zeros(self.channels)) if offset else None
        self.reset_parameters()

    def reset_parameters(self, generator: Generator = None) -> None:
        """Offsets normal with sd 0.05 (NEMS's prior) for a restart, else zero."""
        if self.offset is not None:
            with torch.no_grad():
                self.offset.copy_(
                    _normal((self.channels,), 0.05, generator)
                    if generator is not None
                    else torch.zeros(self.channels)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"ReLU expects {self.channels} channels, got {tuple(x.shape)}")
        if self.offset is None:
            return F.relu(x)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return F.relu(x - self.offset.view(shape))


class LevelShift(nn.Module):
    """A constant added to each channel (NEMS ``lvl.{channels}``).

    Examples
    --------
    >>> LevelShift(3)(torch.zeros(1, 3, 2)).shape
    torch.Size([1, 3, 2])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = int(channels)
        self.level = nn.Parameter(torch.zeros(self.channels))

    def reset_parameters(self, generator: Generator = None) -> None:
        """Zero levels."""
        with torch.no_grad():
            self.level.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_3d(x, self.channels, type(self).__name__)
        return x + self.level[None, :, None]


class DoubleExponential(nn.Module):
    """The double-exponential output nonlinearity (NEMS ``dexp.{channels}``).

    ``y = base + amplitude * exp(-exp(-exp(kappa) * (x - shift)))`` per
    channel (NEMS0 ``nonlinearity._double_exponential``). With
    ``nonnegative`` (the default), ``|base|`` and ``|amplitude|`` are used:
    NEMS left both unconstrained, but a rate must be non-negative for the
    Poisson loss to be defined, and these two keep the output at least
    ``|base| >= 0``. The inner exponent ``-exp(kappa) * (x - shift)`` is
    capped at 50: beyond it the output is ``base`` either way, and the
    gradient is 0 instead of NaN (an overflowed exponential times 0).

    Parameters
    ----------
    channels : int
        Channels (cells), each with its own four parameters.
    nonnegative : bool
        Use the absolute values of ``base`` and ``amplitude``.

    Examples
    --------
    >>> dexp = DoubleExponential(2)
    >>> bool((dexp(torch.randn(4, 2, 9)) >= 0).all())
    True
    """

    def __init__(self, channels: int, nonnegative: bool = True) -> None:
        super().__init__()
        self.channels = int(channels)
        self.nonnegative = bool(nonnegative)
        self.base = nn.Parameter(torch.empty(self.channels))
        self.amplitude = nn.Parameter(torch.empty(self.channels))
        self.shift = nn.Parameter(torch.empty(self.channels))
        self.kappa = nn.Parameter(torch.empty(self.channels))
        self.reset_parameters()

    def reset_parameters(self, generator: Generator = None) -> None:
        """A low rate at zero input: base 0.01, amplitude 0.5, shift 0, kappa 0."""
        with torch.no_grad():
            self.base.fill_(0.01)
            self.amplitude.fill_(0.5)
            self.shift.zero_()
            self.kappa.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_3d(x, self.channels, type(self).__name__)
        base, amplitude = self.base, self.amplitude
        if self.nonnegative:
            base, amplitude = base.abs(), amplitude.abs()
        p = [v[None, :, None] for v in (base, amplitude, self.shift, self.kappa)]
        # Far below the shift the inner exponential overflows to inf, and its gradient
        # (inf times the outer's 0) would be NaN. Capped at 50, the output is the same
        # (exp(-exp(z)) is already exactly 0 in float32 from z = 4.7 on) and the
        # gradient there is 0, as it is in exact arithmetic.
        z = (-torch.exp(p[3]) * (x - p[2])).clamp(max=50.0)
        return p[0] + p[1] * torch.exp(-torch.exp(z))


class CausalConv2d(nn.Module):
    """One layer of NEMS ``conv2d.{filters}.{T}x{F}``: causal in time, then ReLU.

    Input (B, C, F, T) -> (B, filters, F, T).
    ``y[o, f, t] = max(sum_{c, i, k} W[o, c, i, k] x[c, f + i - p, t + k - (T - 1)]
    - offset[o], 0)`` with ``p = (F - 1) // 2`` and ``x`` zero outside the
    sound: the filter spans the current and ``T - 1`` earlier bins, and
    frequencies centred on ``f`` (NEMS0 ``tf.layers.Conv2D_NEMS``).

    Parameters
    ----------
    in_channels, filters : int
        Input feature maps and filters.
    kernel : (int, int)
        (time, frequency) extent, as in the keyword (``8x3``).

    Examples
    --------
    >>> conv = CausalConv2d(1, 4, (8, 3))
    >>> tuple(conv(torch.ones(2, 1, 18, 20)).shape)
    (2, 4, 18, 20)
    """

    def __init__(self, in_channels: int, filters: int, kernel: tuple[int, int] = (8, 3)) -> None:
        super().__init__()
        self.in_channels, self.filters = int(in_channels), int(filters)
        self.kernel = (int(kernel[0]), int(kernel[1]))
        n_t, n_f = self.kernel
        self.coefficients = nn.Parameter(torch.empty(self.filters, self.in_channels, n_f, n_t))
        self.offset = nn.Parameter(torch.zeros(self.filters))
        self.reset_parameters()

    def reset_parameters(self, generator: Generator = None) -> None:
        """Normal weights of sd ``1 / sqrt(fan_in)``, zero offsets."""
        fan_in = self.in_channels * self.kernel[0] * self.kernel[1]
        with torch.no_grad():
            self.coefficients.copy_(
                _normal(self.coefficients.shape, 1 / math.sqrt(fan_in), generator)
            )
            self.offset.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"CausalConv2d expects (B, {self.in_channels}, F, T), got {tuple(x.shape)}"
            )
        n_t, n_f = self.kernel
        low = (n_f - 1) // 2
        padded = F.pad(x, (n_t - 1, 0, low, n_f - 1 - low))  # (time left, right, freq low, high)
        y = F.conv2d(padded, self.coefficients)
        return F.relu(y - self.offset[None, :, None, None])


class FlattenWeightChannels(nn.Module):
    """Every (filter, frequency) map weighted into ``n_out`` channels (NEMS ``wcn.{n_out}``).

    Input (B, K, F, T) -> (B, n_out, T):
    ``y[o, t] = sum_{f, k} W[o, f * K + k] x[k, f, t]`` (NEMS0
    ``tf.layers.WeightChannelsNew`` flattens frequency-major).

    Examples
    --------
    >>> tuple(FlattenWeightChannels(10, 18, 90)(torch.ones(2, 10, 18, 5)).shape)
    (2, 90, 5)
    """

    def __init__(self, filters: int, n_freq: int, n_out: int) -> None:
        super().__init__()
        self.filters, self.n_freq, self.n_out = int(filters), int(n_freq), int(n_out)
        self.coefficients = nn.Parameter(torch.empty(self.n_out, self.n_freq * self.filters))
        self.reset_parameters()

    def reset_parameters(self, generator: Generator = None) -> None:
        """Normal weights of sd ``1 / sqrt(filters * n_freq)``."""
        with torch.no_grad():
            self.coefficients.copy_(
                _normal(
                    self.coefficients.shape, 1 / math.sqrt(self.coefficients.shape[1]), generator
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1:3] != (self.filters, self.n_freq):
            raise ValueError(
                f"FlattenWeightChannels expects (B, {self.filters}, {self.n_freq}, T), "
                f"got {tuple(x.shape)}"
            )
        w = self.coefficients.view(self.n_out, self.n_freq, self.filters)
        return torch.einsum("ofk,bkft->bot", w, x)


class GroupedWeightChannels(nn.Module):
    """``groups`` independent ``wc.{n_in}x{n_out}`` layers side by side.

    Input channel ``g * n_in + i`` feeds output ``g * n_out + o`` only:
    ``y[g * n_out + o] = sum_i W[g, o, i] x[g * n_in + i]``.

    Examples
    --------
    >>> tuple(GroupedWeightChannels(5, 6, 1)(torch.ones(2, 30, 7)).shape)
    (2, 5, 7)
    """

    def __init__(self, groups: int, n_in: int, n_out: int) -> None:
        super().__init__()
        self.groups, self.n_in, self.n_out = int(groups), int(n_in), int(n_out)
        self.coefficients = nn.Parameter(torch.empty(self.groups, self.n_out, self.n_in))
        self.reset_parameters()

    def reset_parameters(self, generator: Generator = None) -> None:
        """Normal weights of sd ``1 / sqrt(n_in)``."""
        with torch.no_grad():
            self.coefficients.copy_(
                _normal(self.coefficients.shape, 1 / math.sqrt(self.n_in), generator)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_3d(x, self.groups * self.n_in, type(self).__name__)
        b, _, t = x.shape
        y = torch.einsum("goi,bgit->bgot", self.coefficients, x.view(b, self.groups, self.n_in, t))
        return y.reshape(b, self.groups * self.n_out, t)
