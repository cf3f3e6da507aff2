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
import re
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
from .errors import FormatError, MissingFileError, Nat4Warning
from .filters import hanning_smooth, hanning_window
from .nems import Recording, Signal, open_recording
from .schema import PUBLISHED_PREFIX, make_dataset

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
    if smooth_ms is not None and not smooth_ms > 0:
        raise ValueError(f"smooth_ms must be a positive number of milliseconds, got {smooth_ms!r}")
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

    coverage = np.concatenate(
        [~np.isnan(est_block).all(axis=1), ~np.isnan(val_block).all(axis=(2, 3))], axis=0
    )
    response = _lazy_response(est_block, val_block, n_repeat)

    stims = pd.DataFrame(
        {
            "subset": ["est"] * len(est) + ["val"] * len(val),
            "n_repeats": np.concatenate([np.ones(len(est), np.int64), n_reps]).astype(np.int64),
        },
        index=[*est, *val],
    )
    neurons = _neuron_table(cells, area, pred_path)
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
    pad = np.full(
        (block.shape[0], block.shape[1], n_repeat - block.shape[2], block.shape[3]),
        np.nan,
        dtype=block.dtype,
    )
    return np.concatenate([block, pad], axis=2)


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


# -- neuron metadata --------------------------------------------------------------


def _neuron_table(cells: list[str], area: str, pred_path: Path) -> pd.DataFrame:
    """Parsed cell ids, the ``auditory`` flag and the ``pub_*`` columns of the per-cell table.

    Table rows land on population cells as the validation data does
    (:func:`nat4xr.release.reconcile`: exact id, then the parsed key), so a
    row spelled ``TNC018a-042-1`` still describes the cell ``TNC018a-42-1``.
    """
    table = _read_pred_table(pred_path)
    ids = table["cellid"].tolist()
    recon = release.reconcile(cells, ids)
    row_of = {cell: i for i, cell in enumerate(ids)}
    rows = np.array([row_of.get(recon.mapping.get(c, ""), -1) for c in cells], dtype=np.intp)
    flags = _auditory_flags(table, pred_path)
    published = _published_columns(table, pred_path)
    absent = [c for c, r in zip(cells, rows) if r < 0]
    if absent:
        warnings.warn(
            f"{pred_path}: {len(absent)} cells are not in the table; their `auditory` flag "
            f"is set to False: {', '.join(absent[:20])}" + (" ..." if len(absent) > 20 else ""),
            Nat4Warning,
            stacklevel=3,
        )
    parsed = [release.parse_cell_id(c) for c in cells]
    columns: dict[str, Any] = {
        "area": [area] * len(cells),
        "site": [p.site for p in parsed],
        "animal": [p.animal for p in parsed],
        "electrode": np.array([p.electrode for p in parsed], dtype=np.int64),
        "unit": np.array([p.unit for p in parsed], dtype=np.int64),
        "auditory": _take_rows(flags, rows),
    }
    for name, values in published.items():
        columns[PUBLISHED_PREFIX + name] = _take_rows(values, rows)
    return pd.DataFrame(columns, index=cells)


#: Values that mean "missing" in the per-cell table (compared case-insensitively).
_MISSING = frozenset({"", "na", "n/a", "nan", "-nan", "null"})
#: A number as CSV writers print it (Python's float() also takes "1_0", which is no number).
_NUMBER = re.compile(r"[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf|infinity|nan)", re.IGNORECASE)
#: pandas' name for a column without a header.
_UNNAMED = re.compile(r"Unnamed: \d+(_level_\d+)?")


def _read_pred_table(path: Path) -> pd.DataFrame:
    """The per-cell table as text: every field a str, ``""`` where empty.

    Header names are stripped of surrounding whitespace (unless that makes two
    equal); rows whose fields are all empty are dropped. The ``cellid`` and
    ``sig_auditory`` columns must exist and each cell id may occur once.
    """
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except FileNotFoundError:
        raise MissingFileError(f"{path}: not found; pass download=True to fetch it") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: unreadable CSV ({exc})") from exc
    names = [str(c).strip() for c in table.columns]
    if len(set(names)) == len(names):
        table.columns = names
    missing = {"cellid", "sig_auditory"} - set(table.columns)
    if missing:
        raise FormatError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    text = table.to_numpy(dtype=object).astype(str)
    blank = np.char.strip(text) == ""
    ids = text[:, list(table.columns).index("cellid")]
    no_id = np.flatnonzero(blank[:, list(table.columns).index("cellid")] & ~blank.all(axis=1))
    if len(no_id):
        raise FormatError(f"{path}: data row {int(no_id[0]) + 1} has no cellid")
    keep = ~blank.all(axis=1)
    table = pd.DataFrame(text[keep], columns=table.columns, dtype=object)
    ids = ids[keep]
    seen = pd.Series(ids, dtype=object)
    dup = seen[seen.duplicated()]
    if len(dup):
        first = dup.iloc[0]
        raise FormatError(
            f"{path}: cellid {first!r} appears in {int((seen == first).sum())} rows; "
            "each cell must have one row"
        )
    return table


def _auditory_flags(table: pd.DataFrame, path: Path) -> np.ndarray:
    """``sig_auditory`` per table row; a value that is no boolean is a FormatError."""
    flags = [_as_bool(v) for v in table["sig_auditory"]]
    bad = [v for v, f in zip(table["sig_auditory"], flags) if f is None]
    if bad:
        raise FormatError(f"{path}: sig_auditory value {bad[0]!r} is not a boolean")
    return np.array(flags, dtype=bool)


def _published_columns(table: pd.DataFrame, path: Path) -> dict[str, np.ndarray]:
    """Every column but ``cellid`` (and those without a header), typed, under a safe name.

    Names: surrounding whitespace dropped, then every character outside
    ``[A-Za-z0-9_]`` replaced by ``_``; a name taken by an earlier column gets
    ``_2``, ``_3``, ... Types: ``sig_auditory`` is bool (never empty); a
    column whose values are all boolean words (true/false in any case, 0/1
    allowed among them) is bool with False where empty; a column of numbers
    is float64 with NaN where empty (ints too, and a column of only 0 and 1,
    which may be a count); any other column is str with ``""`` where empty.
    Empty means ``""``, ``NA``, ``N/A``, ``NaN`` or ``null``.
    """
    out: dict[str, np.ndarray] = {}
    for column in table.columns:
        if column == "cellid" or column == "" or _UNNAMED.fullmatch(column):
            continue
        name = re.sub(r"[^A-Za-z0-9_]", "_", column)
        base, k = name, 2
        while name in out:
            name, k = f"{base}_{k}", k + 1
        if column == "sig_auditory":
            out[name] = _auditory_flags(table, path)
        else:
            out[name] = _typed_column(table[column].tolist())
    return out


def _typed_column(values: list[str]) -> np.ndarray:
    """float64, bool or ``<U`` values of one text column (see :func:`_published_columns`)."""
    bare = [v.strip() for v in values]
    missing = [v.lower() in _MISSING for v in bare]
    words = {v.lower() for v, m in zip(bare, missing) if not m}
    if words and words <= {"true", "false", "0", "1"} and words & {"true", "false"}:
        return np.array([v.lower() in ("true", "1") for v in bare], dtype=bool)
    if all(m or _NUMBER.fullmatch(v) for v, m in zip(bare, missing)):
        return np.array(
            [np.nan if m else float(v) for v, m in zip(bare, missing)], dtype=np.float64
        )
    return np.array(["" if m else v for v, m in zip(values, missing)], dtype=str)


def _take_rows(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]`` with the typed fill where ``rows`` is -1: NaN, False or ``""``."""
    kind = values.dtype.kind
    fill: Any = np.nan if kind == "f" else False if kind == "b" else ""
    out = np.full(len(rows), fill, dtype=values.dtype if kind != "U" else object)
    hit = rows >= 0
    out[hit] = values[rows[hit]]
    return out.astype(str) if kind == "U" else out


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if _NUMBER.fullmatch(text) and text not in ("nan", "-nan", "+nan"):
        return {0.0: False, 1.0: True}.get(float(text))
    return {"true": True, "false": False}.get(text)
