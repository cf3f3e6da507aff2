"""Time-lagged views of the spectrogram, and plain design matrices for any regression library.

A linear spectro-temporal receptive field (STRF) predicts a cell's response
at time ``t`` from the spectrogram at ``t, t - 1, ..., t - (n_lags - 1)``.
:func:`lagged` gives that as a ``(stim, time, lag, freq)`` view of the
spectrogram, each trial padded with zeros before its start (``t = 0``, the
start of the spectrogram, which holds the pre-stimulus silence before the
sound) so that no lag reaches into another trial; :func:`design` flattens it
into the ``X``, ``Y`` and validity-mask arrays that scikit-learn and similar
libraries take.

Examples
--------
>>> import nat4xr
>>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=2, n_freq=4, seed=0)
>>> lagged(ds, n_lags=5).dims
('stim', 'time', 'lag', 'freq')
>>> d = design(ds, n_lags=5, stims="est")
>>> d.X.shape, d.Y.shape, d.mask.shape
((45, 20), (45, 2), (45, 2))
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from .metrics import stim_positions
from .schema import spectrogram_dims

__all__ = ["Design", "design", "lagged", "psth_values"]


def _check_lags(n_lags: Any) -> int:
    if isinstance(n_lags, bool) or not isinstance(n_lags, (int, np.integer)) or n_lags < 1:
        raise ValueError(f"n_lags must be a positive integer (time bins), got {n_lags!r}")
    return int(n_lags)


def _spectrogram(ds: xr.Dataset) -> xr.DataArray:
    if not isinstance(ds, xr.Dataset) or "spectrogram" not in ds.data_vars:
        raise ValueError(
            "expected a nat4xr Dataset with a 'spectrogram' variable (stim, freq, time)"
        )
    return spectrogram_dims(ds)


def lagged(ds: xr.Dataset, n_lags: int) -> xr.DataArray:
    """The spectrogram at lags ``0 .. n_lags - 1``, as a ``(stim, time, lag, freq)`` view.

    ``out[s, t, k, f]`` is ``spectrogram[s, f, t - k]``, and 0 where
    ``t - k < 0`` (before the trial's start at ``t = 0``; the sound itself
    starts later, after the pre-stimulus silence, ``ds.attrs["pre_stim_silence"]``
    seconds of it in a built release). The result is a strided view of
    one zero-padded copy of the spectrogram: the full design is never
    materialized. Coordinates: those of ``stim``, ``time`` and ``freq``, and
    ``lag`` in seconds (``k * dt``).

    Parameters
    ----------
    ds : Dataset
        A nat4xr Dataset (its ``spectrogram`` is read into memory; it is small).
    n_lags : int
        Number of lags, at least 1.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=2, n_freq=3, seed=0)
    >>> view = lagged(ds, n_lags=3)
    >>> float(view.isel(stim=0, time=0, lag=2, freq=0))  # before the trial's start: zero
    0.0
    >>> import numpy as np
    >>> bool(np.array_equal(view.values[0, 5, 2], ds.spectrogram.values[0, :, 3]))  # t - 2
    True
    """
    n_lags = _check_lags(n_lags)
    spec = _spectrogram(ds)
    values = np.asarray(spec.values)
    n_time = values.shape[2]
    padded = np.zeros((*values.shape[:2], n_time + n_lags - 1), dtype=values.dtype)
    padded[:, :, n_lags - 1 :] = values
    # windows[s, f, t, j] = padded[s, f, t + j]; lag k is j = n_lags - 1 - k
    windows = np.lib.stride_tricks.sliding_window_view(padded, n_lags, axis=2)
    view = windows[..., ::-1].transpose(0, 2, 3, 1)  # (stim, time, lag, freq), still a view
    dt = float(ds.attrs.get("dt", 0.01))
    coords = {name: c for name, c in spec.coords.items() if set(c.dims) <= {"stim", "time", "freq"}}
    out = xr.DataArray(
        view,
        dims=("stim", "time", "lag", "freq"),
        coords={**coords, "lag": ("lag", np.arange(n_lags) * dt, {"units": "s"})},
        name="lagged_spectrogram",
        attrs={"n_lags": n_lags, "padding": "zeros before each trial's start (t = 0)"},
    )
    return out


def psth_values(ds: xr.Dataset, chunk: int = 32) -> np.ndarray:
    """The mean over recorded repeats as a ``(stim, time, neuron)`` array, NaN without data.

    Computed a few stims at a time (read from a lazy Dataset chunk by chunk),
    in the response's dtype, so that nothing but the result is ever held whole.
    """
    resp = ds["response"].transpose("stim", "time", "neuron", "repeat")
    out = np.empty(resp.shape[:3], dtype=np.result_type(resp.dtype, np.float32))
    for s0 in range(0, resp.shape[0], chunk):
        block = np.asarray(resp[s0 : s0 + chunk].values)
        if block.shape[-1] == 1:
            out[s0 : s0 + chunk] = block[..., 0]
            continue
        count = np.isfinite(block).sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s0 : s0 + chunk] = np.nansum(block, axis=-1) / count
        out[s0 : s0 + chunk][count == 0] = np.nan
    return out


class Design(NamedTuple):
    """Plain arrays of a lagged regression problem (see :func:`design`)."""

    X: np.ndarray
    """``(samples, lag * freq)`` float64: row ``s * n_time + t``, column ``k * n_freq + f``."""
    Y: np.ndarray
    """``(samples, neuron)`` float64 trial-averaged response, NaN where there is no data."""
    mask: np.ndarray
    """``(samples, neuron)`` bool: True where ``Y`` holds a value."""
    stims: np.ndarray
    """The stim ids, in row order."""
    neurons: np.ndarray
    """The neuron ids, in column order of ``Y``."""
    n_time: int
    """Time bins per stim (rows per stim)."""


def _stim_mask(ds: xr.Dataset, stims: Any) -> np.ndarray:
    """Bool over ``stim`` of :func:`nat4xr.metrics.stim_positions`'s choice.

    Here a string always names a ``subset``: one no stim has is an error.
    """
    if isinstance(stims, str):
        subset = np.asarray(ds["subset"].values).astype(str) if "subset" in ds.coords else None
        if subset is None or stims not in set(subset.tolist()):
            raise ValueError(
                f"no stims with subset {stims!r}; choose from "
                f"{sorted(set(subset.tolist())) if subset is not None else []}"
            )
    mask = np.zeros(ds.sizes["stim"], dtype=bool)
    mask[stim_positions(ds, stims, "the Dataset")] = True
    return mask


def design(ds: xr.Dataset, n_lags: int, stims: Any = "est") -> Design:
    """The lagged design ``X``, the trial-averaged responses ``Y`` and their validity mask.

    Rows are (stim, time) samples, stims in the Dataset's order and time
    within each stim: row ``s * n_time + t``. Columns of ``X`` are (lag,
    freq) pairs, lag-major: column ``k * n_freq + f`` holds the spectrogram
    at frequency ``f``, ``k`` bins before ``t`` (0 before the trial's start,
    ``t = 0``, which precedes the sound by the pre-stimulus silence).
    ``Y`` is the mean over recorded repeats (NaN where a cell has no data);
    ``mask`` says where it is defined, so one cell's regression is
    ``X[mask[:, i]]`` against ``Y[mask[:, i], i]``.

    Parameters
    ----------
    ds : Dataset
        A nat4xr Dataset. Only the chosen stims of ``response`` are read.
    n_lags : int
        Number of lags, at least 1.
    stims : str, sequence of ids or bool mask, or None
        The stims to use: a ``subset`` value, ids, or a mask over ``stim``.
        By default ``"est"``, the estimation sounds, as for
        :class:`nat4xr.models.RidgeSTRF`: a design to fit on never holds the
        validation sounds unless asked (``stims="val"`` for the design to
        predict them, ``None`` for every stim).

    Returns
    -------
    Design
        ``X``, ``Y``, ``mask``, and the ``stims``, ``neurons`` and ``n_time``
        that label them.

    Examples
    --------
    >>> import numpy as np, nat4xr
    >>> from sklearn.linear_model import Ridge  # doctest: +SKIP
    >>> ds = nat4xr.synthetic.random_dataset(n_est=4, n_val=1, n_neurons=3, n_freq=4, seed=0)
    >>> d = design(ds, n_lags=2, stims="est")
    >>> i = 0
    >>> rows = d.mask[:, i]
    >>> X, y = d.X[rows], d.Y[rows, i]  # no NaN: ready for any solver
    >>> bool(np.isfinite(y).all())
    True
    >>> Ridge(alpha=1.0).fit(X, y)  # doctest: +SKIP
    """
    n_lags = _check_lags(n_lags)
    keep = np.flatnonzero(_stim_mask(ds, stims))
    if len(keep) == 0:
        raise ValueError("no stims chosen: the design would be empty")
    sel = ds.isel(stim=keep)
    view = lagged(sel, n_lags)
    n_stim, n_time, _, n_freq = view.shape
    x = np.asarray(view.values, dtype=np.float64).reshape(n_stim * n_time, n_lags * n_freq)
    # the mean over repeats, chunk by chunk on a lazy Dataset (the padding is never held)
    y = psth_values(sel).astype(np.float64).reshape(n_stim * n_time, -1)
    return Design(
        X=x,
        Y=y,
        mask=np.isfinite(y),
        stims=np.asarray(sel["stim"].values),
        neurons=np.asarray(sel["neuron"].values),
        n_time=n_time,
    )
