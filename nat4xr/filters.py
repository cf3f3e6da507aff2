"""Smoothing filters shared by the build and the accessor (numpy and dask alike)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import convolve1d

__all__ = ["check_width", "hanning_smooth", "hanning_window"]


def hanning_window(width_bins: float) -> np.ndarray:
    """Normalized Hanning taps spanning about ``width_bins`` bins (odd length, no zero taps).

    Examples
    --------
    >>> hanning_window(2.1).round(3).tolist()
    [0.25, 0.5, 0.25]
    >>> hanning_window(0.5).tolist()
    [1.0]
    """
    if not 0 < width_bins < np.inf:
        raise ValueError(f"window width must be a positive finite number, got {width_bins!r}")
    n = 2 * int(np.floor(width_bins / 2)) + 1
    taps = np.hanning(n + 2)[1:-1]
    return taps / taps.sum()


def check_width(width_bins: float, n_bins: int) -> None:
    """Refuse a window that is not positive or longer than the ``n_bins`` it would smooth.

    A longer window only averages the whole trial, and a huge one would
    allocate its taps before failing (``1e13`` bins) or run for minutes.

    Examples
    --------
    >>> check_width(5, 150)
    >>> check_width(1e8, 150)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: a smoothing window of 100000000.0 bins is longer than the 150 bins of a trial...
    """
    if not 0 < width_bins < np.inf:
        raise ValueError(f"window width must be a positive finite number, got {width_bins!r}")
    if width_bins > max(int(n_bins), 1):
        raise ValueError(
            f"a smoothing window of {width_bins!r} bins is longer than the {int(n_bins)} bins "
            "of a trial: choose a shorter window"
        )


def hanning_smooth(data: Any, width_bins: float, axis: int = -1) -> Any:
    """Smooth along ``axis`` with a Hanning window; NaN stays NaN and is never spread.

    Each output bin is the window-weighted mean of the valid bins around it
    (edges and gaps renormalize the weights), so a trial keeps its mean rate.
    Works on numpy arrays and, block-wise with overlap, on dask arrays.

    Parameters
    ----------
    data : array-like
        Any array; ``axis`` is the time axis.
    width_bins : float
        Window width in bins (``window_ms / dt_ms``).
    axis : int
        Time axis.

    Examples
    --------
    >>> x = np.array([0.0, 0.0, 4.0, 0.0, np.nan, 0.0])
    >>> hanning_smooth(x, 2).round(3).tolist()
    [0.0, 1.0, 2.0, 1.333, nan, 0.0]
    """
    check_width(width_bins, np.shape(data)[axis] if np.ndim(data) else 0)
    taps = hanning_window(width_bins)
    if hasattr(data, "map_overlap"):
        axis = axis % data.ndim
        depth = {i: (len(taps) // 2 if i == axis else 0) for i in range(data.ndim)}
        return data.map_overlap(
            _smooth_numpy, depth=depth, boundary="none", taps=taps, axis=axis, dtype=data.dtype
        )
    return _smooth_numpy(np.asarray(data), taps=taps, axis=axis)


def _smooth_numpy(x: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    valid = ~np.isnan(x)
    filled = np.where(valid, x, 0).astype(np.float64)
    num = convolve1d(filled, taps, axis=axis, mode="constant", cval=0.0)
    den = convolve1d(valid.astype(np.float64), taps, axis=axis, mode="constant", cval=0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[~valid] = np.nan
    return out.astype(x.dtype if x.dtype.kind == "f" else np.float32)
