"""The dataset contract: names, dtypes and the one constructor every layer uses.

A nat4xr Dataset has the dimensions ``(stim, neuron, repeat, time, freq)`` and
the variables and coordinates listed in :data:`STIM_COORDS`,
:data:`NEURON_COORDS` and :func:`make_dataset`. Everything else in the
library (build, cache, accessor, concat, torch) produces or consumes exactly
this shape, so it is defined once, here.

Missing data has one encoding: NaN in ``response``. ``coverage`` is derived
from it when the Dataset is made and travels with every selection.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ._version import __version__

__all__ = [
    "DIMS",
    "FREQ_HZ_ATTRS",
    "NEURON_COORDS",
    "PUBLISHED_PREFIX",
    "RESPONSE_DIMS",
    "SCHEMA_VERSION",
    "STIM_COORDS",
    "check_dataset",
    "coverage_of",
    "gammatone_centre_freqs",
    "make_dataset",
]

SCHEMA_VERSION = 4
"""Bumped whenever the layout of the Dataset (and so of the cache) changes.

2: the release's per-cell table as ``pub_*`` neuron coordinates.
3: the ``freq_hz`` coordinate (centre frequency of each spectrogram band).
4: ``freq_hz`` for 200 Hz .. 20 kHz (the lab's stimulus code), with what is not known.
"""

DIMS = ("stim", "neuron", "repeat", "time", "freq")
RESPONSE_DIMS = ("stim", "neuron", "repeat", "time")
SPECTROGRAM_DIMS = ("stim", "freq", "time")

#: Stim coordinates and their dtypes (``str`` means a numpy ``<U`` array).
STIM_COORDS: dict[str, Any] = {"subset": str, "n_repeats": np.int64}
#: Neuron coordinates and their dtypes; ints use -1 for "unknown".
NEURON_COORDS: dict[str, Any] = {
    "area": str,
    "site": str,
    "animal": str,
    "electrode": np.int64,
    "unit": np.int64,
    "auditory": bool,
}
#: Prefix of the neuron coordinates copied from ``<area>_pred_correlation.csv``
#: (one per column): float64 (NaN = missing), bool or ``<U`` (``""`` = missing).
PUBLISHED_PREFIX = "pub_"

DOI = "10.5281/zenodo.8044773"


def _str_array(values: Any) -> np.ndarray:
    """Unicode array (``<U``): what xarray reads back from netCDF strings."""
    return np.array([str(v) for v in values], dtype=str)


def coverage_of(response: Any) -> np.ndarray:
    """``(stim, neuron)`` bool: True where any repeat/time bin is not NaN.

    Works on numpy and dask arrays (a dask input is computed, chunk by chunk).

    Examples
    --------
    >>> r = np.full((2, 3, 4, 5), np.nan, dtype="float32")
    >>> r[0, 1, 0, :] = 0.0
    >>> coverage_of(r)
    array([[False,  True, False],
           [False, False, False]])
    """
    data = getattr(response, "data", response)
    cov = (~np.isnan(data)).any(axis=(2, 3))
    if hasattr(cov, "compute"):
        cov = cov.compute()
    return np.asarray(cov, dtype=bool)


#: Provenance of the ``freq_hz`` coordinate (see :func:`gammatone_centre_freqs`).
FREQ_HZ_ATTRS = {
    "units": "Hz",
    "long_name": "centre frequency of the spectrogram band (assumed range, see provenance)",
    "provenance": "ERB-spaced centre frequencies, lowest first, placed as the gammatone code "
    "of NEMS places them (nems/preprocessing/spectrogram/filters.py: centre_freqs -> "
    "erb_space; Glasberg & Moore ERB, EarQ 9.26449, minBW 24.7), for f_min = 200 Hz and "
    "f_max = 20000 Hz, the defaults of the lab's 18-channel gammatone spectrogram of "
    "natural sounds (nems_db nems_lbhb/runclass.py, NAT_stim: channels=18, rasterfs=100, "
    "f_min=200, f_max=20000); top band about 16.1 kHz",
    "unknown": "the release's files do not state the frequency range its spectrograms were "
    "computed with, so the range is an assumption; NEMS's gammagram does not settle it "
    "(nems/preprocessing/spectrogram: f_min is a required argument in some versions and "
    "200 Hz by default in others, and without f_max it uses half the sample rate)",
    "f_min_hz": 200.0,
    "f_max_hz": 20000.0,
}


def gammatone_centre_freqs(
    n_bands: int, f_min: float = 200.0, f_max: float = 20000.0
) -> np.ndarray:
    """Centre frequencies (Hz, lowest first) of an ERB-spaced gammatone filterbank.

    The bands are uniformly spaced on Glasberg and Moore's ERB scale (ear Q
    9.26449, minimum bandwidth 24.7 Hz), as the gammatone code of NEMS places
    them: the lowest band at ``f_min``, the highest one step below ``f_max``.
    The defaults are those of the lab's stimulus code for natural sounds
    (nems_db ``nems_lbhb/runclass.py``, ``NAT_stim``); the release does not
    state its range.

    Examples
    --------
    >>> hz = gammatone_centre_freqs(18)
    >>> round(float(hz[0]), 6), round(float(hz[-1]))
    (200.0, 16101)
    """
    ear_q, min_bw = 9.26449, 24.7
    fraction = np.arange(n_bands, 0, -1) / n_bands  # 1 (lowest) .. 1 / n (highest)
    top = f_max + ear_q * min_bw
    step = np.log(f_min + ear_q * min_bw) - np.log(top)
    return -ear_q * min_bw + np.exp(fraction * step) * top


def make_dataset(
    response: Any,
    spectrogram: Any,
    stims: pd.DataFrame,
    neurons: pd.DataFrame,
    *,
    dt: float = 0.01,
    attrs: Mapping[str, Any] | None = None,
    coverage: np.ndarray | None = None,
    freq: Any = None,
) -> xr.Dataset:
    """Assemble a Dataset of the nat4xr contract from arrays and metadata tables.

    Parameters
    ----------
    response : array-like, shape (stim, neuron, repeat, time)
        Spike counts per bin, NaN where there is no data. numpy or dask.
    spectrogram : array-like, shape (stim, freq, time)
        Non-negative stimulus spectrogram.
    stims : DataFrame
        Indexed by stim id; columns ``subset`` and ``n_repeats`` (others are
        kept as extra stim coordinates).
    neurons : DataFrame
        Indexed by cell id; columns of :data:`NEURON_COORDS` (others are kept).
    dt : float
        Bin width in seconds.
    attrs : mapping, optional
        Extra attributes; dicts and lists are stored as JSON strings.
    coverage : ndarray, optional
        Precomputed ``(stim, neuron)`` coverage; derived from ``response``
        when omitted.
    freq : array-like, optional
        Frequency coordinate; band indices ``0..F-1`` when omitted.

    Returns
    -------
    xarray.Dataset

    Examples
    --------
    >>> resp = np.zeros((2, 1, 3, 4), dtype="float32")
    >>> spec = np.ones((2, 5, 4), dtype="float32")
    >>> stims = pd.DataFrame({"subset": ["est", "val"], "n_repeats": [1, 3]},
    ...                      index=["STIM_cat1", "STIM_00cat2"])
    >>> neurons = pd.DataFrame({"area": ["A1"], "site": ["ARM029a"], "animal": ["ARM"],
    ...                         "electrode": [4], "unit": [1], "auditory": [True]},
    ...                        index=["ARM029a-04-1"])
    >>> ds = make_dataset(resp, spec, stims, neurons)
    >>> dict(ds.sizes)
    {'stim': 2, 'neuron': 1, 'repeat': 3, 'time': 4, 'freq': 5}
    """
    n_stim, n_neuron, n_repeat, n_time = response.shape
    if spectrogram.shape[0] != n_stim or spectrogram.shape[2] != n_time:
        raise ValueError(
            f"spectrogram shape {spectrogram.shape} does not match response shape "
            f"{response.shape} (expected ({n_stim}, F, {n_time}))"
        )
    if len(stims) != n_stim or len(neurons) != n_neuron:
        raise ValueError(
            f"{len(stims)} stims x {len(neurons)} neurons in the tables, "
            f"but response has shape {response.shape}"
        )
    if "n_repeats" in stims.columns:
        _check_repeats(stims, n_repeat)
    if coverage is None:
        coverage = coverage_of(response)
    n_freq = spectrogram.shape[1]
    coords: dict[str, Any] = {
        "stim": ("stim", _str_array(stims.index)),
        "neuron": ("neuron", _str_array(neurons.index)),
        "repeat": ("repeat", np.arange(n_repeat, dtype=np.int64)),
        "time": ("time", np.round(np.arange(n_time) * dt, 10)),
        "freq": ("freq", np.arange(n_freq, dtype=np.int64) if freq is None else np.asarray(freq)),
        "coverage": (("stim", "neuron"), np.asarray(coverage, dtype=bool)),
    }
    for table, dim in ((stims, "stim"), (neurons, "neuron")):
        for name in table.columns:
            coords[name] = (dim, _typed(table[name]))
    ds = xr.Dataset(
        {
            "response": (RESPONSE_DIMS, response),
            "spectrogram": (SPECTROGRAM_DIMS, spectrogram),
        },
        coords=coords,
    )
    ds = ds.assign_coords(freq_hz=("freq", gammatone_centre_freqs(n_freq), dict(FREQ_HZ_ATTRS)))
    ds["time"].attrs.update(units="s", long_name="time from trial onset")
    ds["response"].attrs.update(
        units="spikes per bin", long_name="spike count", description="NaN where not recorded"
    )
    ds["spectrogram"].attrs.update(long_name="stimulus spectrogram")
    ds["coverage"].attrs.update(description="True where the neuron has data for the stim")
    base = {
        "dt": float(dt),
        "fs": float(round(1.0 / dt, 9)),
        "source_doi": DOI,
        "normalization": "none",
        "smoothing": "none",
        "nat4xr_version": __version__,
        "nat4xr_schema": SCHEMA_VERSION,
    }
    base.update(attrs or {})
    ds.attrs = {k: _attr(v) for k, v in base.items()}
    return ds


def _check_repeats(stims: pd.DataFrame, n_repeat: int) -> None:
    """``n_repeats`` must be whole numbers from 0 to the ``repeat`` axis' length."""
    reps = stims["n_repeats"].to_numpy()
    if reps.dtype.kind not in "iu" and not (
        reps.dtype.kind == "f" and np.isfinite(reps).all() and (reps == np.round(reps)).all()
    ):
        raise ValueError(f"n_repeats must be whole numbers, got dtype {reps.dtype}")
    bad = (reps < 0) | (reps > n_repeat)
    if bad.any():
        shown = ", ".join(f"{s} ({int(r)})" for s, r in zip(stims.index[bad][:5], reps[bad][:5]))
        raise ValueError(
            f"n_repeats of {int(bad.sum())} stim(s) outside 0..{n_repeat}, the length of "
            f"response's repeat axis: {shown}; give response a repeat axis as long as the "
            "most repeats recorded, or correct n_repeats"
        )


def _typed(series: pd.Series) -> np.ndarray:
    """Column as a netCDF-friendly array: str columns become object arrays of str."""
    values = series.to_numpy()
    if values.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        return _str_array(values)
    return values


def _attr(value: Any) -> Any:
    """Attribute value netCDF can store: dicts/lists of non-numbers become JSON."""
    if isinstance(value, Mapping) or (
        isinstance(value, (list, tuple)) and not all(isinstance(v, (int, float)) for v in value)
    ):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    return value


def spectrogram_dims(ds: xr.Dataset) -> xr.DataArray:
    """``ds``'s spectrogram as ``(stim, freq, time)``, or a ValueError naming what went wrong.

    Examples
    --------
    >>> ds = xr.Dataset({"spectrogram": (("stim", "freq", "time", "neuron"), np.zeros((1,) * 4))})
    >>> try:
    ...     spectrogram_dims(ds)
    ... except ValueError as err:
    ...     print(str(err).split(":")[0])
    spectrogram has dims ('stim', 'freq', 'time', 'neuron'), expected ('stim', 'freq', 'time')
    """
    spec = ds["spectrogram"]
    if set(spec.dims) != set(SPECTROGRAM_DIMS):
        extra = set(spec.dims) - set(SPECTROGRAM_DIMS)
        hint = (
            "ds.where(cond) broadcasts every variable against cond; apply it to the response "
            "alone, e.g. ds.assign(response=ds.response.where(cond))"
            if extra
            else "the Dataset needs a spectrogram (stim, freq, time) variable"
        )
        raise ValueError(f"spectrogram has dims {spec.dims}, expected {SPECTROGRAM_DIMS}: {hint}")
    return spec.transpose(*SPECTROGRAM_DIMS)


def check_dataset(ds: xr.Dataset) -> None:
    """Raise ``ValueError`` unless ``ds`` follows the nat4xr contract.

    Checks dimensions, the presence of every required coordinate and the
    dtypes. Data values are not read (the check is cheap on lazy Datasets).

    Examples
    --------
    >>> check_dataset(xr.Dataset())
    Traceback (most recent call last):
    ...
    ValueError: not a nat4xr Dataset: missing variable(s) response, spectrogram
    """
    missing = [v for v in ("response", "spectrogram") if v not in ds.variables]
    if missing:
        raise ValueError(f"not a nat4xr Dataset: missing variable(s) {', '.join(missing)}")
    if ds["response"].dims != RESPONSE_DIMS:
        raise ValueError(f"response has dims {ds['response'].dims}, expected {RESPONSE_DIMS}")
    need = ["coverage", *STIM_COORDS, *NEURON_COORDS]
    absent = [c for c in need if c not in ds.coords]
    if absent:
        raise ValueError(f"not a nat4xr Dataset: missing coordinate(s) {', '.join(absent)}")
    if ds["coverage"].dtype != bool:
        raise ValueError(f"coverage must be bool, got {ds['coverage'].dtype}")
    for name in ds.coords:
        if not str(name).startswith(PUBLISHED_PREFIX):
            continue
        var = ds.variables[name]
        # "O": text as netCDF decodes it, before open_cache makes it <U
        if var.dims != ("neuron",) or var.dtype.kind not in "fbUO":
            raise ValueError(
                f"published-table coordinate {name!r} must be a float, bool or str array "
                f"along 'neuron', got {var.dtype} along {var.dims}"
            )
