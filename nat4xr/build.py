"""Build the nat4xr Dataset from the files of a NAT4 release.

Estimation sounds come from the population recording (one trial each, 10 ms
bins); validation sounds come trial-resolved from the single-site recordings
(spike times binned at 1 ms by the floor rule, summed to 10 ms). Each archive
is read once, streaming. The result's ``response`` is a dask array assembled
from the two in-memory blocks, with the estimation sounds' padding repeats
left lazy (never allocated).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from . import release
from .archives import open_zip, zip_member
from .errors import FormatError, Nat4Warning
from .filters import hanning_smooth, hanning_window
from .nems import Recording, Signal, open_recording
from .neurons import neuron_table
from .schema import make_dataset

__all__ = ["build_dataset"]

#: Consistency tolerance between a validation trial mean and the population block.
CONSISTENCY_ATOL = 1e-4


def build_dataset(
    path: str | os.PathLike,
    area: str,
    subset: str = "all",
    normalize: str | None = None,
    smooth_ms: float | None = None,
    waveform: bool = False,
    audio_fs: int = 44100,
    progress: bool = False,
) -> xr.Dataset:
    """Read a NAT4 release folder and return the Dataset of the nat4xr contract.

    Most users call :func:`nat4xr.open_nat4`, which caches this result.

    Parameters
    ----------
    path : path-like
        Folder with ``<area>_NAT4_ozgf.fs100.ch18.tgz``, ``<area>_pred_correlation.csv``
        and ``<area>_single_sites/`` (or ``<area>_single_sites.zip``).
    area : {'A1', 'PEG'}
    subset : {'all', 'est', 'val'}
        Which sounds to build; ``'est'`` never opens the single-site files.
    normalize : {None, 'nems'}
        ``'nems'`` scales as the published models did: spectrogram
        ``log((x + 0.1) / 0.1)`` then per-band min-max to [0, 1]; responses
        per-cell min-max. The statistics come from the population recording
        (what the published pipeline normalized) and the same per-cell scale
        is applied to estimation and validation trials, so units agree.
    smooth_ms : float, optional
        Smooth every trial with a Hanning window of this width (ms).
    waveform : bool
        Add the source sounds as a ``waveform (stim, sample)`` variable.
    audio_fs : int
        Sample rate of ``waveform``; ``audio_fs * dt`` must be an integer.
    progress : bool
        Show a progress bar over the site files.

    Returns
    -------
    xarray.Dataset
        ``response`` is dask-backed; everything else is in memory. Every
        column of the per-cell table but ``cellid`` is a neuron coordinate
        ``pub_<column>`` (float64, bool or str; see
        :meth:`nat4xr.accessor.Nat4Accessor.published`).

    Raises
    ------
    ValueError
        Unknown area, subset or normalization.
    MissingFileError
        A release file is missing (the message says which, and that
        ``download=True`` fetches it).
    FormatError
        A file is corrupt or inconsistent (the message names it).

    Examples
    --------
    >>> import tempfile
    >>> from nat4xr.synthetic import write_release
    >>> root = tempfile.mkdtemp()
    >>> truth = write_release(root, "A1", scale="tiny", seed=0)
    >>> ds = build_dataset(root, "A1")
    >>> ds["response"].dims
    ('stim', 'neuron', 'repeat', 'time')
    """
    release.check_area(area)
    release.check_subset(subset)
    if normalize not in (None, "none", "nems"):
        raise ValueError(f"unknown normalize={normalize!r}: choose None or 'nems'")
    release.check_smooth_ms(smooth_ms)
    root = Path(path)
    files = release.source_files(root, area, subset, waveform)
    pop_path, pred_path = files[0], files[1]
    site_files = files[2 : len(files) - int(waveform)]  # the wav source comes last

    pop = open_recording(pop_path, signals={"resp", "stim"})
    resp, stim = pop["resp"], pop["stim"]
    layout = _trial_layout(resp, pop_path)
    est = layout.est if subset != "val" else []
    val = layout.val if subset != "est" else []
    cells = resp.chans
    if len(set(cells)) != len(cells):
        dup = sorted({c for c in cells if cells.count(c) > 1})
        raise FormatError(f"{pop_path}: duplicate channel ids in resp: {', '.join(dup[:5])}")

    resp_scale = _response_scale(resp.data) if normalize == "nems" else None
    est_block = _trial_block(resp, layout, est)  # (n_est, T, N), often a view
    pop_val = _trial_block(resp, layout, val)
    spectrogram = _spectrogram(stim, layout, [*est, *val], pop_path)
    if normalize == "nems":
        spectrogram = _nems_spectrogram(spectrogram, stim.data)

    attrs: dict[str, Any] = {
        "area": area,
        "subset": subset,
        "title": f"NAT4 {area} ({subset})",
        "pre_stim_silence": layout.pre_silence,
        "source_files": [p.name for p in files],
    }
    if val:
        val_block, n_reps, recon = _validation(site_files, cells, val, layout, resp.fs, progress)
        _check_consistency(val_block, pop_val, cells, val, pop_path)
        attrs["val_reconciled"] = recon.by_key
        attrs["val_unmatched"] = recon.unmatched
        if recon.unmatched:
            warnings.warn(
                f"{len(recon.unmatched)} of {len(cells)} {area} cells have no validation data "
                f"in any single-site file: {', '.join(recon.unmatched[:20])}"
                + (" ..." if len(recon.unmatched) > 20 else ""),
                Nat4Warning,
                stacklevel=2,
            )
    else:
        val_block = np.zeros((0, len(cells), 1, layout.n_time), dtype=np.float32)
        n_reps = np.zeros(0, dtype=np.int64)
    del pop_val

    n_repeat = int(max([1, *n_reps.tolist()]))
    if val_block.shape[2] < n_repeat:
        val_block = _pad_repeats(val_block, n_repeat)
    if resp_scale is not None:
        _apply_scale(est_block, resp_scale, neuron_axis=2)
        _apply_scale(val_block, resp_scale, neuron_axis=1)
        attrs["normalization"] = {
            "method": "nems",
            "response": "per-neuron min-max to [0, 1]; statistics from the population "
            "recording, applied to estimation and validation trials alike",
            "spectrogram": "log((x + 0.1) / 0.1), then per-band min-max to [0, 1] over the "
            "population recording; values below 1e-6 set to 0",
        }
    if smooth_ms is not None:
        width = smooth_ms / 1000 / layout.dt
        est_block = hanning_smooth(est_block, width, axis=1)
        val_block = hanning_smooth(val_block, width, axis=-1)
        attrs["smoothing"] = {
            "method": "hanning",
            "window_ms": float(smooth_ms),
            "bins": len(hanning_window(width)),
        }

    coverage = _coverage(est_block, val_block)
    response = _lazy_response(est_block, val_block, n_repeat)

    stims = pd.DataFrame(
        {
            "subset": ["est"] * len(est) + ["val"] * len(val),
            "n_repeats": np.concatenate([np.ones(len(est), np.int64), n_reps]).astype(np.int64),
        },
        index=[*est, *val],
    )
    neurons = neuron_table(cells, area, pred_path)
    if resp_scale is not None:
        neurons["response_min"] = resp_scale[1].astype(np.float32)
        neurons["response_max"] = resp_scale[2].astype(np.float32)
    ds = make_dataset(
        response, spectrogram, stims, neurons, dt=layout.dt, attrs=attrs, coverage=coverage
    )
    if waveform:
        from .waveform import add_waveforms

        ds = add_waveforms(ds, files[-1], audio_fs=audio_fs)
    return ds


# -- the population recording ----------------------------------------------------


class _Layout:
    """Where each stimulus trial sits in the population recording."""

    def __init__(self, starts: dict[str, int], n_time: int, fs: float, pre_silence: float):
        self.starts = starts
        self.n_time = n_time
        self.fs = fs
        self.dt = 1.0 / fs
        self.pre_silence = pre_silence
        self.est = [s for s in starts if not release.is_val_epoch(s)]
        self.val = [s for s in starts if release.is_val_epoch(s)]


def _trial_layout(resp: Signal, where: Path) -> _Layout:
    epochs = resp.epochs
    names = [n for n in dict.fromkeys(epochs["name"]) if release.is_stim_epoch(n)]
    if not names:
        raise FormatError(f"{where}: no stimulus epochs (STIM_...) in the resp epoch table")
    starts: dict[str, int] = {}
    lengths = set()
    for name in names:
        bounds = resp.epoch_samples(name)
        starts[name] = int(bounds[0, 0])
        lengths.add(int(bounds[0, 1] - bounds[0, 0]))
    if len(lengths) != 1:
        raise FormatError(
            f"{where}: stimulus trials have different lengths {sorted(lengths)} samples; "
            "expected one trial length"
        )
    sil = epochs.loc[epochs["name"] == "PreStimSilence"]
    pre = float(np.median(sil["end"] - sil["start"])) if len(sil) else 0.0
    return _Layout(starts, lengths.pop(), resp.fs, round(pre, 6))


def _trial_block(sig: Signal, layout: _Layout, names: list[str]) -> np.ndarray:
    """``(n, T, chans)`` trials of a rasterized signal: a view when trials are contiguous."""
    data = sig.data
    assert data is not None
    T = layout.n_time
    if not names:
        return np.zeros((0, T, data.shape[1]), dtype=np.float32)
    starts = np.array([layout.starts[n] for n in names])
    if (np.diff(starts) == T).all():
        return data[starts[0] : starts[0] + len(names) * T].reshape(len(names), T, -1)
    return data[starts[:, None] + np.arange(T)[None, :]]


def _spectrogram(stim: Signal, layout: _Layout, names: list[str], where: Path) -> np.ndarray:
    data = stim.data
    if data is None:
        raise FormatError(f"{where}: the stim signal is not rasterized")
    if data.shape[0] < (max(layout.starts.values()) + layout.n_time):
        raise FormatError(f"{where}: the stim signal is shorter than the resp epochs")
    block = _trial_block(stim, layout, names)  # (n, T, F)
    spec = np.ascontiguousarray(block.transpose(0, 2, 1), dtype=np.float32)
    if np.isnan(spec).any():
        bad = [names[i] for i in np.unique(np.nonzero(np.isnan(spec))[0])]
        raise FormatError(f"{where}: NaN in the spectrogram of {', '.join(bad[:5])}")
    return spec


def _response_scale(data: np.ndarray) -> np.ndarray:
    """``(3, N)``: per-cell [1 / (max - min), min, max] over the population recording."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells
        lo = np.nanmin(data, axis=0).astype(np.float64)
        hi = np.nanmax(data, axis=0).astype(np.float64)
    span = hi - lo
    inv = np.where(span > 0, 1.0 / np.where(span > 0, span, 1.0), 1.0)
    return np.stack([inv, np.nan_to_num(lo), hi])


def _apply_scale(block: np.ndarray, scale: np.ndarray, neuron_axis: int) -> None:
    """In place: ``(x - min) / (max - min)`` per neuron; ``scale`` = [inv, min, max]."""
    shape = [1] * block.ndim
    shape[neuron_axis] = -1
    block -= scale[1].astype(np.float32).reshape(shape)
    block *= scale[0].astype(np.float32).reshape(shape)


def _nems_spectrogram(spec: np.ndarray, all_stim: np.ndarray) -> np.ndarray:
    """Log compression, then per-band min-max with statistics of the whole stim signal."""
    logged_all = np.log((np.maximum(all_stim, 0) + 0.1) / 0.1)
    lo = logged_all.min(axis=0)
    hi = logged_all.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    out = (np.log((np.maximum(spec, 0) + 0.1) / 0.1) - lo[None, :, None]) / span[None, :, None]
    out[out < 1e-6] = 0.0
    return out.astype(np.float32)


def _pad_repeats(block: np.ndarray, n_repeat: int) -> np.ndarray:
    """``block`` with its repeat axis (2) grown to ``n_repeat``, the new repeats NaN.

    Filled in place: the old and the new block are the only arrays alive, and
    growing an empty block allocates the new one alone.
    """
    n_old = block.shape[2]
    out = np.empty((*block.shape[:2], n_repeat, *block.shape[3:]), dtype=block.dtype)
    out[:, :, :n_old] = block
    out[:, :, n_old:] = np.nan
    return out


def _coverage(est_block: np.ndarray, val_block: np.ndarray) -> np.ndarray:
    """``(stim, neuron)``: True where a sound has any value for a cell.

    One sound at a time, so the temporaries are one sound's, not a block's.
    """
    n_est, n_val = est_block.shape[0], val_block.shape[0]
    out = np.empty((n_est + n_val, est_block.shape[2]), dtype=bool)
    for s in range(n_est):  # est_block is (n_est, T, N)
        out[s] = ~np.isnan(est_block[s]).all(axis=0)
    for s in range(n_val):  # val_block is (n_val, N, R, T)
        out[n_est + s] = ~np.isnan(val_block[s]).all(axis=(1, 2))
    return out


class _Sliced:
    """An in-memory array that dask slices at compute time.

    ``da.from_array`` copies every chunk of a numpy array up front; wrapping
    it keeps one copy (the block itself) however the graph is cut.
    """

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.ndim = array.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.array[key]


def _lazy_response(est_block: np.ndarray, val_block: np.ndarray, n_repeat: int) -> da.Array:
    """``(stim, neuron, repeat, time)``: est trials in repeat 0, NaN padding left lazy."""
    n_est, T, N = est_block.shape
    meta = np.empty((0,) * 3, dtype=np.float32)
    parts = []
    if n_est:
        est = da.from_array(_Sliced(est_block), chunks=(32, T, N), name=False, meta=meta)
        est = est.transpose(0, 2, 1)[:, :, None, :]
        if n_repeat > 1:
            pad = da.full(
                (n_est, N, n_repeat - 1, T), np.nan, dtype=np.float32, chunks=(32, N, -1, T)
            )
            est = da.concatenate([est, pad], axis=2)
        parts.append(est)
    if val_block.shape[0] or not parts:
        parts.append(
            da.from_array(
                _Sliced(val_block), chunks=(1, N, n_repeat, T), name=False, meta=meta[..., None]
            )
        )
    return da.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]


# -- the single-site recordings ---------------------------------------------------


def _site_recordings(sources: list[Path], progress: bool) -> Iterator[Recording]:
    """Every single-site recording, from the folder of .tgz files or from the zip."""
    items: list[tuple[str, Any]] = []
    for src in sources:
        if src.suffix == ".zip":
            with open_zip(src) as zf:
                names = [
                    n
                    for n in zf.namelist()
                    if n.endswith((".tgz", ".tar.gz")) and not n.startswith("__MACOSX")
                ]
            if not names:
                raise FormatError(f"{src}: holds no single-site recordings (*.tgz)")
            items += [(f"{src}:{n}", (src, n)) for n in sorted(names)]
        else:
            items.append((str(src), src))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="NAT4 sites", unit="site")
    try:
        for label, item in items:
            if isinstance(item, tuple):
                with zip_member(*item, label=label) as member:
                    rec = open_recording(member, {"resp"}, label=label)
                yield rec
            else:
                yield open_recording(item, {"resp"})
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()


def _validation(
    sources: list[Path],
    cells: list[str],
    val: list[str],
    layout: _Layout,
    pop_fs: float,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, release.Reconciliation]:
    """Trial-resolved validation responses ``(n_val, N, R, T)`` from the site files.

    Each site's cells are matched to the population cells not matched yet
    (exact id, then the parsed key) and its trials are binned straight into
    the block, so only one site's spikes are in memory at a time.
    """
    T = layout.n_time
    index = {c: i for i, c in enumerate(cells)}
    recon = release.Reconciliation()
    remaining = dict.fromkeys(cells)
    n_reps = np.zeros(len(val), dtype=np.int64)
    block = np.full((len(val), len(cells), 0, T), np.nan, dtype=np.float32)
    first_source = None
    for rec in _site_recordings(sources, progress):
        sig = rec["resp"]
        first_source = first_source or sig.source
        ratio = sig.fs / pop_fs
        factor = round(ratio)
        if factor < 1 or abs(ratio - factor) > 1e-9:
            raise FormatError(
                f"{sig.source}: sampling rate {sig.fs} Hz is not a whole multiple of the "
                f"population's {pop_fs} Hz"
            )
        site = release.reconcile(list(remaining), sig.chans)
        recon.by_key.update(site.by_key)
        recon.extra += site.extra
        for pop_id in site.mapping:
            del remaining[pop_id]
        recon.mapping.update(site.mapping)
        if not site.mapping:
            continue
        to_pop = {site_id: pop_id for pop_id, site_id in site.mapping.items()}
        chans = list(to_pop)
        dst = np.array([index[to_pop[c]] for c in chans])
        trials = {s: sig.epoch_samples(name) for s, name in enumerate(val)}
        trials = {s: b for s, b in trials.items() if len(b)}
        if not trials:
            continue
        bounds = np.concatenate(list(trials.values()))
        lengths = bounds[:, 1] - bounds[:, 0]
        if (lengths < T * factor).any():
            short = next(
                val[s] for s, b in trials.items() if (b[:, 1] - b[:, 0] < T * factor).any()
            )
            raise FormatError(
                f"{sig.source}: trials of {short} are {int(lengths.min())} samples long, "
                f"expected {T * factor} ({T} bins of {factor} samples)"
            )
        # every validation trial of the site in one pass over each cell's spikes
        counts = sig.bin_spikes(bounds[:, 0], T * factor, factor, chans)  # (trials, chans, T)
        first = 0
        for s, b in trials.items():
            k = len(b)
            if k > block.shape[2]:
                block = _pad_repeats(block, k)
            block[s, dst, :k, :] = counts[first : first + k].transpose(1, 0, 2)
            n_reps[s] = max(n_reps[s], k)
            first += k
    if not recon.mapping:
        raise FormatError(
            f"{first_source or sources[0]}: no single-site cell matches a population cell; "
            "these files do not belong to this release"
        )
    recon.unmatched = list(remaining)
    return block, n_reps, recon


def _check_consistency(
    val_block: np.ndarray, pop_val: np.ndarray, cells: list[str], val: list[str], where: Path
) -> None:
    """Warn, naming the cells, when a trial mean differs from the population's val block."""
    if not val:
        return
    bad = np.zeros(len(cells), dtype=bool)
    for s in range(len(val)):  # one stim at a time keeps the temporaries small
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(val_block[s], axis=1)  # (N, T)
        pop = pop_val[s].T  # (N, T)
        both = ~np.isnan(mean) & ~np.isnan(pop)
        bad |= (both & (np.abs(mean - pop) > CONSISTENCY_ATOL * (1 + np.abs(pop)))).any(axis=1)
    bad_cells = [cells[i] for i in np.nonzero(bad)[0]]
    if bad_cells:
        warnings.warn(
            f"{where}: for {len(bad_cells)} cells the mean over validation trials differs "
            f"from the population recording's validation block: {', '.join(bad_cells[:20])}"
            + (" ..." if len(bad_cells) > 20 else ""),
            Nat4Warning,
            stacklevel=3,
        )
