"""Response metrics: PSTH, noise ceiling (CCmax, SNR), smoothing and normalization.

Everything here is vectorized over cells and works the same on numpy- and
dask-backed Datasets (and on a ``dask.distributed`` cluster): results of
:func:`psth`, :func:`noise_ceiling` and :func:`smooth` stay lazy until you
compute them. NaN (no data) stays NaN.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .filters import check_width, hanning_smooth, hanning_window
from .selection import aligned_mask

__all__ = ["noise_ceiling", "normalize", "psth", "smooth", "split_keys", "stim_positions"]

METHODS = ("minmax", "zscore", "nems")


def _response(obj: xr.Dataset | xr.DataArray) -> xr.DataArray:
    if isinstance(obj, xr.Dataset):
        if "response" not in obj.data_vars:
            raise ValueError(
                "this Dataset has no 'response' variable; pass a nat4xr Dataset "
                "(nat4xr.open_nat4) or the response DataArray itself"
            )
        obj = obj["response"]
    if not isinstance(obj, xr.DataArray):
        raise TypeError(f"expected an xarray Dataset or DataArray, got {type(obj).__name__}")
    for dim in ("repeat", "time"):
        if dim not in obj.dims:
            raise ValueError(f"response has dims {obj.dims}; a {dim!r} dimension is required")
    return obj


def psth(obj: xr.Dataset | xr.DataArray) -> xr.DataArray:
    """Peri-stimulus time histogram: the mean over repeats, ignoring NaN.

    Summed in float64 one stored block at a time (no full-size temporaries)
    and returned in the response's dtype; lazy when the response is a dask
    array, read block by block when it is lazily indexed (``chunks=None``).

    Parameters
    ----------
    obj : Dataset or DataArray
        A nat4xr Dataset or its ``response``.

    Returns
    -------
    xarray.DataArray
        ``(stim, neuron, time)``; NaN where the cell has no data for the stim.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=3)
    >>> psth(ds).dims
    ('stim', 'neuron', 'time')
    """
    from .reductions import over_blocks, psth_block

    resp = _response(obj)
    if resp.dims != ("stim", "neuron", "repeat", "time"):
        out = resp.mean("repeat", skipna=True, keep_attrs=True)
    else:
        dtype = resp.dtype if resp.dtype.kind == "f" else np.dtype(np.float64)
        data = over_blocks(resp, psth_block, (resp.sizes["time"],), drop=1, dtype=dtype)
        coords = {k: v.variable for k, v in resp.coords.items() if "repeat" not in v.dims}
        out = xr.DataArray(data, dims=("stim", "neuron", "time"), coords=coords, attrs=resp.attrs)
    out.attrs["long_name"] = "mean response over repeats"
    return out.rename("psth")


# -- noise ceiling ----------------------------------------------------------------------------


def split_keys(n_splits: int, n_repeats: int, seed: int = 0) -> np.ndarray:
    """Random sort keys ``(n_splits, n_repeats)`` that define the split halves.

    In split ``k``, the ``n // 2`` valid repeats with the smallest
    ``keys[k]`` form the first half and the other valid repeats the second
    (``n`` = number of repeats with data for that stim and cell).

    Examples
    --------
    >>> split_keys(2, 4).shape
    (2, 4)
    """
    return np.random.default_rng(seed).random((n_splits, n_repeats))


def noise_ceiling(ds: xr.Dataset, n_splits: int = 16, seed: int = 0) -> xr.Dataset:
    """Noise ceiling of each cell from its repeats: CCmax and Sahani-Linden SNR.

    CCmax estimator: for each of ``n_splits`` fixed random splits of the
    valid repeats into two halves (see :func:`split_keys`), the PSTHs of the
    halves are correlated over time (per stim and cell) or over stim and time
    (per cell, pooling every stim with at least 2 repeats), on the bins where
    both halves have data; the correlations are averaged over the splits to
    ``cc_half``, corrected with Spearman-Brown to the full set of repeats,
    ``r = 2 cc / (1 + cc)``, and ``ccmax = sqrt(r)`` (the expected
    correlation between the true response and the recorded PSTH; Hsu, Borst
    & Theunissen 2004). A negative ``cc_half`` gives ``ccmax = 0``.

    SNR as defined by Sahani & Linden (2003, "How linear are auditory
    cortical responses?", NIPS 15): the power ``P(x)`` of a trace is its
    variance over time, ``mean_t (x(t) - mean_t x)**2``. With ``N`` trials
    ``r_n`` and their average (the PSTH) ``r_bar``, the signal power is
    ``P_sig = (N P(r_bar) - mean_n P(r_n)) / (N - 1)`` and the noise power
    ``P_noise = mean_n P(r_n) - P_sig``; ``snr = P_sig / P_noise``. Each trial
    is taken about its own mean, so a trial-to-trial shift of the rate is
    not counted as noise. Per stim and cell, the trials are that stim's
    repeats with data (powers over their bins with data); per cell, the
    signal and noise powers of its stims with at least 2 repeats are summed,
    each weighted by its number of bins (the length weighting of deepSTRF's
    ``snr``), before the ratio. The SNR can be negative when the noise
    dominates.

    Every value is NaN where fewer than 2 repeats have data (estimation
    sounds) or the response is constant.

    Computed from the stored values block by block (see
    :mod:`nat4xr.reductions`): lazy on a dask-backed Dataset, read block by
    block from a ``chunks=None`` one, never a full-size temporary. Sums are
    float64.

    Parameters
    ----------
    ds : Dataset
        A nat4xr Dataset (numpy or dask).
    n_splits : int
        Number of random split-halves averaged.
    seed : int
        Seed of the split-halves.

    Returns
    -------
    xarray.Dataset
        ``ccmax``, ``cc_half``, ``snr``, ``n_valid`` on ``(stim, neuron)``;
        ``ccmax_neuron``, ``snr_neuron`` on ``neuron``. Lazy when ``ds`` is.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=2, n_neurons=3, p_missing=0.0)
    >>> nc = noise_ceiling(ds)
    >>> bool(nc["ccmax"].isel(stim=slice(0, 2)).isnull().all())  # 1 repeat: undefined
    True
    """
    from .reductions import N_POWER, N_SPLIT, ceiling_from_stats, ceiling_stats, over_blocks

    resp = _response(ds)
    lead = [d for d in resp.dims if d not in ("neuron", "repeat", "time")]
    if "neuron" not in resp.dims or len(lead) > 1:
        raise ValueError(
            f"noise_ceiling needs a response with dims (stim, neuron, repeat, time), got "
            f"{resp.dims}; select or stack the other dimensions first"
        )
    squeeze, order = not lead, resp.dims
    stim = lead[0] if lead else "stim"
    if squeeze:
        resp = resp.expand_dims(stim)
    resp = resp.transpose(stim, "neuron", "repeat", "time")
    keys = split_keys(n_splits, resp.sizes["repeat"], seed)

    def kernel(block: np.ndarray) -> np.ndarray:
        return ceiling_stats(block, keys)

    stats = over_blocks(resp, kernel, (N_POWER + N_SPLIT * n_splits,), drop=2)
    # array arithmetic, then labels once: xarray would align coordinates at every step
    values = ceiling_from_stats(stats, n_splits)
    pair_coords = {k: v.variable for k, v in resp.coords.items() if set(v.dims) <= {stim, "neuron"}}
    cell_coords = {k: v.variable for k, v in resp.coords.items() if set(v.dims) <= {"neuron"}}
    out = xr.Dataset(
        {
            name: xr.DataArray(value, dims=(stim, "neuron"), coords=pair_coords)
            if value.ndim == 2
            else xr.DataArray(value, dims=("neuron",), coords=cell_coords)
            for name, value in values.items()
        }
    )
    if squeeze:
        out = out.squeeze(stim, drop=True)
    else:  # the input's order of stim and neuron
        out = out.transpose(*[d for d in order if d in out.dims])
    out.attrs.update(
        estimator=json.dumps(
            {
                "ccmax": "split-half, Spearman-Brown",
                "n_splits": n_splits,
                "seed": seed,
                "snr": "Sahani-Linden 2003 (trials about their own means)",
            }
        )
    )
    return out


# -- smoothing --------------------------------------------------------------------------------


def smooth(ds: xr.Dataset, window_ms: float) -> xr.Dataset:
    """Smooth every trial of ``response`` along time with a Hanning window.

    Each bin becomes the weighted mean of the finite bins in the window
    (weights renormalized at trial edges and around NaN), so the units stay
    spikes per bin and NaN stays NaN. The ``smoothing`` attribute records the
    window (JSON).

    Parameters
    ----------
    ds : Dataset
        A nat4xr Dataset (numpy or dask; the result is lazy when ``ds`` is).
    window_ms : float
        Window length in milliseconds (rounded to an odd number of bins).

    Returns
    -------
    xarray.Dataset
        A new Dataset; the input is unchanged.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=2)
    >>> sm = smooth(ds, 30)
    >>> bool((sm["response"].isnull() == ds["response"].isnull()).all())
    True
    """
    resp = _response(ds)
    dt = float(ds.attrs.get("dt", 0.01))
    width = window_ms / 1000.0 / dt
    check_width(width, resp.sizes["time"])
    w = hanning_window(width)
    if resp.chunks is not None:
        resp = resp.chunk({"time": -1})
    out = xr.apply_ufunc(
        hanning_smooth,
        resp,
        kwargs={"width_bins": width, "axis": -1},
        input_core_dims=[["time"]],
        output_core_dims=[["time"]],
        dask="parallelized",
        output_dtypes=[resp.dtype],
        keep_attrs=True,
    ).transpose(*resp.dims)
    record: dict[str, Any] = {"method": "hanning", "window_ms": float(window_ms), "bins": len(w)}
    previous = ds.attrs.get("smoothing", "none")
    if previous not in ("none", None):
        record["previous"] = previous
    # on the variable too: scoring the response DataArray alone still knows it is smoothed
    out.attrs["smoothing"] = json.dumps(record, sort_keys=True)
    res = ds.assign(response=out)
    res.attrs = {**ds.attrs, "smoothing": json.dumps(record, sort_keys=True)}
    return res


# -- normalization ----------------------------------------------------------------------------


def stim_positions(
    obj: xr.Dataset | xr.DataArray, stims: Any, what: str = "this Dataset"
) -> np.ndarray:
    """Positions along ``stim`` (in the object's order) of a choice of stims.

    ``stims`` is None (all), a ``subset`` value such as ``"val"``, stim ids
    (one or several), or a boolean mask over ``stim``: a DataArray with
    ``stim`` labels or a Series is aligned by id, an unlabelled array is
    positional (:func:`nat4xr.selection.aligned_mask`). Unknown ids raise
    ``KeyError`` naming them and ``what``.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=2, n_neurons=2)
    >>> stim_positions(ds, "val").tolist()
    [3, 4]
    >>> stim_positions(ds, [str(ds.stim.values[4]), str(ds.stim.values[0])]).tolist()
    [0, 4]
    """
    n = obj.sizes["stim"]
    if stims is None:
        return np.arange(n)
    if isinstance(stims, str):
        subset = obj["subset"].values if "subset" in obj.coords else np.array([])
        if stims in set(subset.tolist()):
            return np.flatnonzero(subset == stims)
        stims = [stims]
    labels = obj["stim"].values if "stim" in obj.coords else np.arange(n)
    if isinstance(stims, (xr.DataArray, pd.Series)) and stims.dtype == bool:
        return np.flatnonzero(aligned_mask(stims, labels, "stim", "the stims mask"))
    arr = np.atleast_1d(np.asarray(stims))
    if arr.dtype == bool:
        return np.flatnonzero(aligned_mask(arr, labels, "stim", "the stims mask"))
    if "stim" not in obj.coords:
        raise ValueError(f"{what} has no stim labels; pass stims as a boolean mask")
    ids = np.asarray(obj["stim"].values).astype(str)
    missing = sorted(set(arr.astype(str).tolist()) - set(ids.tolist()))
    if missing:
        raise KeyError(
            f"stims not in {what}: {missing[:5]}; pass ids from its stim coordinate, a subset "
            "name ('val') or a boolean mask"
        )
    return np.flatnonzero(np.isin(ids, arr.astype(str)))


def _stats(x: xr.DataArray, dims: list[str], method: str) -> tuple[np.ndarray, np.ndarray]:
    """Offset and scale per remaining dim, computed (a reduction, never the full array)."""
    if x.dims == ("stim", "neuron", "repeat", "time") and set(dims) == {"stim", "repeat", "time"}:
        lo, hi = _response_moments(x, method)
    else:
        x = x.astype(np.float64)  # float32 sums would depend on the chunking
        if method == "zscore":
            lo, hi = x.mean(dims, skipna=True), x.std(dims, skipna=True)
        else:
            lo, hi = x.min(dims, skipna=True), x.max(dims, skipna=True)
        lo, hi = xr.align(lo, hi)
        lo, hi = (v.values for v in xr.Dataset({"lo": lo, "hi": hi}).compute().data_vars.values())
    scale = hi if method == "zscore" else hi - lo
    ok = np.isfinite(lo) & np.isfinite(scale) & (scale > 0)
    # cells without data in the chosen stims, or constant ones, keep their units
    offset = np.where(np.isfinite(lo), lo, 0.0)
    return offset, np.where(ok, scale, 1.0)


def _response_moments(resp: xr.DataArray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Per neuron (mean, std) or (min, max) of a response, pooled from per-(stim, neuron) moments.

    A reduction block by block in float64 (see :mod:`nat4xr.reductions`):
    no float64 copy of the response, the same numbers on every storage.
    """
    from .reductions import N_MOMENTS, moments_block, over_blocks, pooled_moments

    pooled = pooled_moments(over_blocks(resp, moments_block, (N_MOMENTS,), drop=2))
    names = ("mean", "std") if method == "zscore" else ("min", "max")
    lo, hi = pooled[names[0]], pooled[names[1]]
    if hasattr(lo, "dask"):
        import dask

        lo, hi = dask.compute(lo, hi)
    return np.asarray(lo), np.asarray(hi)


def _as_slice(positions: np.ndarray) -> slice | np.ndarray:
    """Consecutive positions as a slice (a view of in-memory data, not a copy)."""
    if positions.size and np.array_equal(positions, np.arange(positions[0], positions[-1] + 1)):
        return slice(int(positions[0]), int(positions[-1]) + 1)
    return positions


def _new_values(var: xr.DataArray, data: Any) -> xr.DataArray:
    """``var`` with other values: no longer the cache file's, so without its source handle."""
    out = var.copy(data=data)
    # readers that go to the file (torch batches) would otherwise serve the stored values
    out.encoding = {k: v for k, v in var.encoding.items() if k != "nat4xr_source"}
    return out


def normalize(ds: xr.Dataset, method: str = "minmax", stims: Any = "est") -> xr.Dataset:
    """Scale each neuron's responses with statistics from the chosen stims (est by default).

    The statistics (per neuron, over the chosen stims, repeats and time)
    are computed once — a streamed reduction, the full array is never held
    in memory — and the same scale is applied to every stim, estimation and
    validation alike, so units stay consistent. By default they come from the
    estimation sounds only, so that nothing about the validation responses
    (the test set) shapes the training data. NaN stays NaN. The
    ``normalization`` attribute records method, stims (``stims_from``: the
    choice, ``stims``: the ids) and statistics (JSON).

    Parameters
    ----------
    ds : Dataset
        A raw nat4xr Dataset (``normalization == 'none'``).
    method : {'minmax', 'zscore', 'nems'}
        ``'minmax'``: ``(x - min) / (max - min)``; ``'zscore'``:
        ``(x - mean) / std``; ``'nems'`` (the published NEMS pipeline):
        per-cell min-max of the responses, and spectrogram
        ``log((s + 0.1) / 0.1)`` then per-band min-max with values below
        1e-6 set to 0. A cell without data in the chosen stims, or constant
        there, is shifted/scaled by 0/1.
    stims : str, sequence of str, bool mask or None
        Stims the statistics come from: a ``subset`` value (``'est'``, the
        default), stim ids, a mask over ``stim``, or None for every stim
        (validation sounds included). A Dataset without estimation sounds
        needs an explicit choice.

    Returns
    -------
    xarray.Dataset
        A new Dataset; a lazy ``response`` stays lazy.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=2, p_missing=0.0)
    >>> est = normalize(ds, "minmax", stims="est")
    >>> float(est["response"].isel(stim=slice(0, 3)).max())
    1.0
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    previous = ds.attrs.get("normalization", "none")
    if previous not in ("none", None):
        raise ValueError(
            f"this Dataset is already normalized ({previous}); normalize the raw Dataset "
            "(nat4xr.open_nat4 without normalize=) instead"
        )
    resp = _response(ds)
    if isinstance(stims, str) and stims == "est":
        subset = np.asarray(ds["subset"].values).astype(str) if "subset" in ds.coords else []
        if "est" not in set(subset):
            raise ValueError(
                "this Dataset has no estimation sounds (subset 'est') to take the "
                "normalization statistics from; pass stims= explicitly (stim ids, a mask, "
                "'val', or None for every stim) and report the choice"
            )
    chosen = stim_positions(ds, stims)
    ref = resp.isel(stim=_as_slice(chosen))
    offset, scale = _stats(ref, [d for d in resp.dims if d != "neuron"], method)
    shape = [resp.sizes["neuron"] if d == "neuron" else 1 for d in resp.dims]
    off = offset.astype(resp.dtype).reshape(shape)
    sc = scale.astype(resp.dtype).reshape(shape)
    data = resp.data - off
    if isinstance(data, np.ndarray):
        data /= sc  # in place: one array the size of the result, not two
    else:
        data = data / sc
    new_resp = _new_values(resp, data)
    new_resp.attrs["units"] = f"normalized ({method})"
    record: dict[str, Any] = {
        "method": method,
        "stims": "all" if stims is None else [str(s) for s in ds["stim"].values[chosen]],
        "stims_from": "all" if stims is None else stims if isinstance(stims, str) else "chosen",
        "response": {
            "neuron": [str(v) for v in ds["neuron"].values],
            "offset": offset.tolist(),
            "scale": scale.tolist(),
        },
    }
    out = ds.assign(response=new_resp)
    if method == "nems":
        spec = ds["spectrogram"]
        logged = np.log((spec + 0.1) / 0.1)
        s_off, s_scale = _stats(logged.isel(stim=chosen), ["stim", "time"], "minmax")
        fshape = [spec.sizes["freq"] if d == "freq" else 1 for d in spec.dims]
        scaled = (logged.data - s_off.astype(spec.dtype).reshape(fshape)) / s_scale.astype(
            spec.dtype
        ).reshape(fshape)
        scaled = np.where(scaled < 1e-6, 0.0, scaled).astype(spec.dtype)
        out["spectrogram"] = _new_values(spec, scaled)
        record["spectrogram"] = {
            "offset": s_off.tolist(),
            "scale": s_scale.tolist(),
            "transform": "log((x + 0.1) / 0.1)",
        }
    out.attrs = {**ds.attrs, "normalization": json.dumps(record, sort_keys=True)}
    return out
