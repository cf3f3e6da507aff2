"""The release writer, :func:`write_release`, and its truth, :class:`SyntheticRelease`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..schema import PUBLISHED_PREFIX, make_dataset
from .constants import _FULL_AREAS, _SCALES, N_REPEATS, PRE_STIM_SILENCE
from .layout import _Layout
from .responses import _Counts, _spectrograms, _stim_names
from .truth import PlantedTruth
from .writers import _write_population, _write_pred_csv, _write_sites, _write_wav

__all__ = ["SyntheticRelease", "write_release"]


@dataclass
class SyntheticRelease:
    """A synthetic release written to disk and the ground truth it was made from.

    Attributes
    ----------
    root : Path
        The release folder.
    area : str
        Area name used in the file names.
    files : dict of str to Path
        ``'population'``, ``'sites_zip'``, ``'pred_csv'`` and, when written, ``'wav_zip'``.
    est_stims, val_stims : list of str
        Epoch names in population order.
    cells : list of str
        Population channel ids in population order.
    est_response : ndarray, float32, shape (n_est, n_cells, T)
        Counts per 10 ms bin; NaN where the cell was not recorded.
    val_response : ndarray, float32, shape (n_val, n_cells, 20, T)
        Every repeat in chronological order, keyed by the population id;
        all-NaN for cells with no site data.
    spectrogram : ndarray, float32, shape (n_est + n_val, F, T)
        Estimation sounds first, then validation sounds.
    neurons : DataFrame
        Indexed by population cell id; columns area, site, animal,
        electrode, unit, auditory.
    pre_stim_silence : float
        Seconds of silence before each sound.
    traps : dict of str to list of str
        ``'padded'``, ``'no_site'``, ``'extra_site'``, ``'odd_ids'``,
        ``'spikes_past_end'``, ``'pred_respelled'`` (padded cells whose row
        in the per-cell table uses the site file's spelling): the cells each
        trap applies to (population ids, except ``'extra_site'`` which only
        exist in the site files).
    wav : dict of str to ndarray, optional
        Sound-file stem -> float32 mono samples (16-bit value / 32768).
    published : DataFrame, optional
        The per-cell table as written, one row per population cell in
        population order, indexed by population id; ``cellid`` is the
        spelling in the file. Every other column is expected as a
        ``pub_<column>`` neuron coordinate.
    strf : ndarray, float64, shape (n_cells, 4, F), optional
        The linear filter each population cell's rate is made from, lags
        0..3 bins: ``rate[t] = intercept + g * sum_k,f strf[k, f] *
        spectrogram[f, t - k]`` with ``g`` a random gain per trial of mean
        1 (lognormal, sigma 0.2, normalized); counts are Poisson of that rate.
        All zero for the cells that only fire at their spontaneous rate.
    intercept : ndarray, float64, shape (n_cells,), optional
        Each population cell's spontaneous rate (spikes per bin).
    rate : ndarray, float64, shape (n_est + n_val, n_cells, T), optional
        With a planted ``truth``: every population cell's true rate.
    truth : str, optional
        The planted truth's kind (``'ln'``, ``'cnn'``) or None.
    planted : PlantedTruth, optional
        The planted rate model itself (every unit of the recording, the
        population cells first): its ``kernels``, ``bands`` and ``scale``
        are the shared core, ``weights`` the per-cell readout.
    """

    root: Path
    area: str
    files: dict[str, Path]
    est_stims: list[str]
    val_stims: list[str]
    cells: list[str]
    est_response: np.ndarray
    val_response: np.ndarray
    spectrogram: np.ndarray
    neurons: pd.DataFrame
    pre_stim_silence: float
    traps: dict[str, list[str]]
    wav: dict[str, np.ndarray] | None = None
    published: pd.DataFrame | None = None
    strf: np.ndarray | None = None
    intercept: np.ndarray | None = None
    rate: np.ndarray | None = None
    truth: str | None = None
    planted: PlantedTruth | None = None

    def expected_dataset(self, subset: str = "all") -> xr.Dataset:
        """The Dataset a correct build of this release returns.

        ``response`` is dask-backed (estimation trials in repeat 0, a lazy
        NaN pad, then the validation repeats), so this stays cheap even for
        the full scale until values are read.

        Parameters
        ----------
        subset : {'all', 'est', 'val'}
            Keep only the estimation or validation sounds (neurons unchanged).

        Returns
        -------
        xarray.Dataset

        Examples
        --------
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     rel = write_release(tmp, scale="tiny")
        ...     ds = rel.expected_dataset("val")
        >>> dict(ds.sizes)
        {'stim': 2, 'neuron': 8, 'repeat': 20, 'time': 150, 'freq': 18}
        """
        import dask.array as da

        if subset not in ("all", "est", "val"):
            raise ValueError(f"subset must be 'all', 'est' or 'val', got {subset!r}")
        n_est, n_cells, n_time = self.est_response.shape
        n_val = len(self.val_stims)
        est = da.from_array(self.est_response[:, :, None, :], chunks=(64, -1, 1, -1))
        pad = da.full(
            (n_est, n_cells, N_REPEATS - 1, n_time),
            np.nan,
            dtype="float32",
            chunks=(64, -1, -1, -1),
        )
        val = da.from_array(self.val_response, chunks=(8, -1, -1, -1))
        response = da.concatenate([da.concatenate([est, pad], axis=2), val], axis=0)
        stims = pd.DataFrame(
            {
                "subset": ["est"] * n_est + ["val"] * n_val,
                "n_repeats": np.array([1] * n_est + [N_REPEATS] * n_val, dtype=np.int64),
            },
            index=self.est_stims + self.val_stims,
        )
        neurons = self.neurons
        if self.published is not None:
            table = self.published.drop(columns="cellid").reindex(self.cells)
            neurons = neurons.assign(
                **{PUBLISHED_PREFIX + str(c): table[c].to_numpy() for c in table.columns}
            )
        ds = make_dataset(
            response,
            self.spectrogram,
            stims,
            neurons,
            attrs={"area": self.area, "pre_stim_silence": self.pre_stim_silence},
        )
        if subset != "all":
            ds = ds.isel(stim=np.flatnonzero(stims["subset"].to_numpy() == subset))
        return ds


def write_release(
    root: str | os.PathLike,
    area: str = "A1",
    *,
    scale: str = "small",
    n_cells: int | None = None,
    n_sites: int | None = None,
    n_est: int | None = None,
    n_val: int | None = None,
    n_freq: int = 18,
    seed: int = 0,
    wav: bool = False,
    traps: bool = True,
    drive: float = 1.0,
    spectrogram: str = "smooth",
    compresslevel: int = 1,
    progress: bool = False,
    truth: str | None = None,
    truth_seed: int | None = None,
) -> SyntheticRelease:
    """Write a synthetic NAT4 release in the published layout and return its truth.

    Writes ``<area>_NAT4_ozgf.fs100.ch18.tgz`` (population recording),
    ``<area>_single_sites.zip`` (per-site spike times),
    ``<area>_pred_correlation.csv`` and, if ``wav``, ``wav.zip`` into
    ``root``. Responses are sparse Poisson counts from low, cell-specific
    rates, partly driven by the spectrogram. The output is deterministic
    (byte for byte) for a given ``seed`` and set of arguments.

    Parameters
    ----------
    root : path-like
        Folder to write into (created if needed).
    area : str
        Area name; ``'A1'`` and ``'PEG'`` get the published counts at
        ``scale='full'``.
    scale : {'tiny', 'small', 'full'}
        Size preset: tiny (2 sites, 8 cells, 6 est, 2 val), small (4 sites,
        40 cells, 30 est, 4 val), full (the published sizes).
    n_cells, n_sites, n_est, n_val : int, optional
        Override the preset sizes (population cells, sites, sounds).
    n_freq : int
        Spectrogram bands.
    seed : int
        Seed of the random generator.
    wav : bool
        Also write ``wav.zip`` with one 1 s, 44.1 kHz sound per stimulus.
    traps : bool
        Include the known irregularities of the real data (see
        :attr:`SyntheticRelease.traps`).
    drive : float
        Scale of the sound-driven part of the rates (1: sparse, low rates
        like the real cells'; larger values give high signal-to-noise cells,
        e.g. to check that a model recovers :attr:`SyntheticRelease.strf`).
    spectrogram : {'smooth', 'white'}
        The sounds' spectrograms (non-negative, zero in the silences).
        ``'smooth'`` (like natural sounds): smoothed over 5 bins in time and
        3 bands under a slow envelope, so neighbouring lags of a filter are
        strongly correlated and a ridge estimate of
        :attr:`SyntheticRelease.strf` blurs across lags. ``'white'``:
        independent values in every band and bin of each sound, so every lag
        and band of the planted filters can be told apart: with ``drive=50``
        and 150 estimation sounds, a ridge STRF fitted on the built Dataset
        correlates above 0.95 with the planted filter of every driven cell.
        Only the values change: files, layout, names and traps are the same
        as with the default, and the same seed gives the same files.
    compresslevel : int
        gzip level of the ``.tgz`` archives (1 is fastest).
    progress : bool
        Show progress bars (tqdm).
    truth : {None, 'ln', 'cnn'}
        Plant a known rate model instead of the default rates (None: the
        default, unchanged byte for byte). ``'cnn'``: a shared nonlinear
        core (spectro-temporal channels rectified both ways) with a
        non-negative readout per cell, which an LN model cannot reach;
        ``'ln'``: one linear filter and a double-exponential nonlinearity
        per cell. Every cell is driven, with a gain scaled by ``drive``; the
        counts are Poisson draws of the rate, kept as
        :attr:`SyntheticRelease.rate` (see :mod:`nat4xr.synthetic.truth`).
    truth_seed : int, optional
        With ``truth='cnn'``: draw the planted core (its channels' temporal
        kernels and normalization, the latter on 64 reference sounds of the
        same ``spectrogram`` kind) from this seed alone, so that releases
        written with the same ``truth_seed`` and ``n_freq`` (e.g. an A1 and a
        PEG release with different ``seed``) share one core exactly while
        every cell's gain and readout still come from ``seed``: a core
        fitted on one must serve the other, as in cross-area transfer. None
        (default): the core is drawn from ``seed`` as before.

    Returns
    -------
    SyntheticRelease

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     rel = write_release(tmp, "A1", scale="tiny", seed=1)
    ...     names = sorted(p.name for p in rel.files.values())
    >>> names
    ['A1_NAT4_ozgf.fs100.ch18.tgz', 'A1_pred_correlation.csv', 'A1_single_sites.zip']
    >>> rel.est_response.shape, rel.val_response.shape
    ((6, 8, 150), (2, 8, 20, 150))

    High signal-to-noise cells driven by spectrograms white in time, to check
    that a model recovers the planted filters:

    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     rel = write_release(tmp, scale="tiny", seed=1, drive=50.0, spectrogram="white")
    >>> rel.strf.shape  # (cells, lags 0..3, frequencies)
    (8, 4, 18)

    A planted nonlinear population, its true rate kept:

    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     rel = write_release(tmp, scale="tiny", truth="cnn")
    >>> rel.rate.shape, rel.rate.dtype  # (est + val sounds, cells, time)
    ((8, 8, 150), dtype('float64'))
    """
    if scale not in _SCALES:
        raise ValueError(f"scale must be one of {sorted(_SCALES)}, got {scale!r}")
    sizes = dict(_SCALES[scale])
    overrides = {"n_cells": n_cells, "n_sites": n_sites, "n_est": n_est, "n_val": n_val}
    sizes.update({k: int(v) for k, v in overrides.items() if v is not None})
    if spectrogram not in ("smooth", "white"):
        raise ValueError(f"spectrogram must be 'smooth' or 'white', got {spectrogram!r}")
    if truth is not None and truth not in ("ln", "cnn"):
        raise ValueError(f"truth must be None, 'ln' or 'cnn', got {truth!r}")
    if truth_seed is not None and truth != "cnn":
        raise ValueError(
            f"truth_seed={truth_seed!r} seeds a planted shared core, which only truth='cnn' has "
            f"(got truth={truth!r}): pass truth='cnn' or drop truth_seed"
        )
    if sizes["n_est"] < 1 or sizes["n_val"] < 1:
        raise ValueError(f"need at least one est and one val sound, got {sizes}")
    published = _FULL_AREAS.get(area) if scale == "full" else None
    if published is not None and (n_cells is not None or n_sites is not None):
        published = None
    if published is None and sizes["n_cells"] < 2 * sizes["n_sites"]:
        raise ValueError(f"need at least 2 cells per site, got {sizes}")

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    layout = _Layout.make(area, sizes, published, traps, rng)
    est_stims, val_stims = _stim_names(sizes["n_est"], sizes["n_val"], rng)
    spec = _spectrograms(sizes["n_est"] + sizes["n_val"], n_freq, rng, spectrogram)
    core = None
    if truth_seed is not None:
        # the core's own generator and sounds: nothing of it depends on seed or area
        core_rng = np.random.default_rng(truth_seed)
        core = (core_rng, _spectrograms(64, n_freq, core_rng, spectrogram))
    counts = _Counts.draw(spec, layout, sizes["n_est"], rng, drive, truth, core)

    files = {
        "population": root / f"{area}_NAT4_ozgf.fs100.ch18.tgz",
        "sites_zip": root / f"{area}_single_sites.zip",
        "pred_csv": root / f"{area}_pred_correlation.csv",
    }
    _write_population(
        files["population"], area, layout, counts, spec, est_stims, val_stims, rng,
        compresslevel, progress,
    )  # fmt: skip
    _write_sites(
        files["sites_zip"], area, layout, counts, est_stims, val_stims, rng, compresslevel,
        progress,
    )  # fmt: skip
    published = _write_pred_csv(files["pred_csv"], layout, rng)
    wav_truth = None
    if wav:
        files["wav_zip"] = root / "wav.zip"
        wav_truth = _write_wav(files["wav_zip"], est_stims + val_stims, rng)

    val_truth = counts.val[:, : layout.n_pop].astype("float32")
    val_truth[:, ~layout.in_sites] = np.nan
    return SyntheticRelease(
        root=root,
        area=area,
        files=files,
        est_stims=est_stims,
        val_stims=val_stims,
        cells=list(layout.cells),
        est_response=counts.est_truth,
        val_response=val_truth,
        spectrogram=spec,
        neurons=layout.neurons(area),
        pre_stim_silence=PRE_STIM_SILENCE,
        traps=layout.traps,
        wav=wav_truth,
        published=published,
        strf=None if counts.strf is None else counts.strf[: layout.n_pop],
        intercept=counts.base[: layout.n_pop],
        rate=counts.rate,
        truth=truth,
        planted=counts.planted,
    )
