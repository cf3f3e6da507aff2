"""Synthetic NAT4 data: small in-memory Datasets and releases in the published layout.

Nothing here needs the real data: tests, the demo and the benchmarks run on
what this module writes, and each writer returns the ground truth it used.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import wave
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import xarray as xr

from .schema import PUBLISHED_PREFIX, make_dataset

__all__ = ["SyntheticRelease", "random_dataset", "write_release"]

ANIMALS = ("ARM", "CRD", "DRX", "TNC")


def random_dataset(
    n_est: int = 8,
    n_val: int = 3,
    n_neurons: int = 12,
    *,
    n_repeats: int = 20,
    n_time: int = 15,
    n_freq: int = 4,
    p_missing: float = 0.2,
    area: str = "A1",
    seed: int = 0,
    chunks: dict | None = None,
) -> xr.Dataset:
    """A small random Dataset of the nat4xr contract, with a random coverage pattern.

    Estimation sounds have 1 repeat and validation sounds between 2 and
    ``n_repeats``; each (stim, neuron) pair is missing (all NaN) with
    probability ``p_missing``. Useful to try the accessor or the torch adapter
    without building a release.

    Parameters
    ----------
    n_est, n_val, n_neurons : int
        Sizes of the axes.
    n_repeats, n_time, n_freq : int
        Sizes of the repeat, time and freq axes.
    p_missing : float
        Probability that a (stim, neuron) pair has no data.
    area : str
        Value of the ``area`` neuron coordinate and attribute.
    seed : int
        Seed of the random generator; the result is deterministic.
    chunks : dict, optional
        If given, the Dataset is ``.chunk(chunks)``-ed (dask-backed).

    Examples
    --------
    >>> ds = random_dataset(n_est=4, n_val=2, n_neurons=5, seed=1)
    >>> dict(ds.sizes)
    {'stim': 6, 'neuron': 5, 'repeat': 20, 'time': 15, 'freq': 4}
    >>> sorted(set(ds["subset"].values.tolist()))
    ['est', 'val']
    """
    rng = np.random.default_rng(seed)
    n_stim = n_est + n_val
    subset = np.array(["est"] * n_est + ["val"] * n_val, dtype=object)
    reps = np.ones(n_stim, dtype=np.int64)
    if n_val:
        reps[n_est:] = rng.integers(min(2, n_repeats), n_repeats + 1, size=n_val)
    names = [f"STIM_cat{i:03d}_synthetic.wav" for i in range(n_est)]
    names += [f"STIM_00cat{i:03d}_synthetic.wav" for i in range(n_val)]
    stims = pd.DataFrame({"subset": subset, "n_repeats": reps}, index=names)

    n_sites = max(1, n_neurons // 4)
    site_of = rng.integers(0, n_sites, size=n_neurons)
    animal = np.array([ANIMALS[s % len(ANIMALS)] for s in site_of], dtype=object)
    site = np.array([f"{a}{10 + s:03d}a" for a, s in zip(animal, site_of)], dtype=object)
    electrode = rng.integers(1, 64, size=n_neurons)
    cells = [f"{s}-{e:02d}-{u + 1}" for u, (s, e) in enumerate(zip(site, electrode))]
    neurons = pd.DataFrame(
        {
            "area": np.array([area] * n_neurons, dtype=object),
            "site": site,
            "animal": animal,
            "electrode": electrode.astype(np.int64),
            "unit": np.arange(1, n_neurons + 1, dtype=np.int64),
            "auditory": rng.random(n_neurons) < 0.8,
        },
        index=cells,
    )

    coverage = rng.random((n_stim, n_neurons)) >= p_missing
    response = rng.poisson(0.3, size=(n_stim, n_neurons, n_repeats, n_time)).astype("float32")
    padding = np.arange(n_repeats)[None, :] >= reps[:, None]
    response[np.broadcast_to(padding[:, None, :, None], response.shape)] = np.nan
    response[~coverage] = np.nan
    spectrogram = rng.gamma(2.0, 1.0, size=(n_stim, n_freq, n_time)).astype("float32")
    ds = make_dataset(
        response, spectrogram, stims, neurons, attrs={"area": area, "title": "random nat4xr data"}
    )
    return ds.chunk(chunks) if chunks else ds


# --------------------------------------------------------------------------
# Synthetic releases in the published layout
# --------------------------------------------------------------------------

FS_POP = 100
FS_SITE = 1000
N_TIME = 150
PRE_STIM_SILENCE = 0.25
TRIAL_DURATION = 1.5
N_REPEATS = 20
AUDIO_FS = 44100
_MTIME = 1686787200  # fixed archive timestamps keep the files byte-identical per seed
_FIELD = 25  # bytes of one "%.18e" value plus its separator
_PRE_BINS = round(PRE_STIM_SILENCE * FS_POP)
_SOUND_BINS = round(1.0 * FS_POP)

_SCALES: dict[str, dict[str, int]] = {
    "tiny": {"n_sites": 2, "n_cells": 8, "n_est": 6, "n_val": 2},
    "small": {"n_sites": 4, "n_cells": 40, "n_est": 30, "n_val": 4},
    "full": {"n_sites": 22, "n_cells": 849, "n_est": 575, "n_val": 18},
}
#: The published counts per area: sites and cells per animal, auditory cells.
_FULL_AREAS: dict[str, dict] = {
    "A1": {
        "sites": {"ARM": 4, "CRD": 2, "DRX": 3, "TNC": 13},
        "cells": {"ARM": 165, "CRD": 36, "DRX": 244, "TNC": 404},
        "auditory": 777,
    },
    "PEG": {"sites": {"ARM": 12}, "cells": {"ARM": 398}, "auditory": 339},
}
_SITE_START = {"ARM": 29, "CRD": 16, "DRX": 6, "TNC": 8}
_WORDS = (
    "geese", "ferretmixed41-1sec", "Athena-Violet001", "waterfall", "True_crime",
    "speech_female", "crickets", "thunder", "violin", "DogBark", "rain", "ferret_fights",
    "kitten", "wind", "bells", "Marmoset", "rooster", "tabla", "guitar", "chimes",
)  # fmt: skip


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
    compresslevel: int = 1,
    progress: bool = False,
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
    root : path
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
    compresslevel : int
        gzip level of the ``.tgz`` archives (1 is fastest).
    progress : bool
        Show progress bars (tqdm).

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
    """
    if scale not in _SCALES:
        raise ValueError(f"scale must be one of {sorted(_SCALES)}, got {scale!r}")
    sizes = dict(_SCALES[scale])
    overrides = {"n_cells": n_cells, "n_sites": n_sites, "n_est": n_est, "n_val": n_val}
    sizes.update({k: int(v) for k, v in overrides.items() if v is not None})
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
    spec = _spectrograms(sizes["n_est"] + sizes["n_val"], n_freq, rng)
    counts = _Counts.draw(spec, layout, sizes["n_est"], rng, drive)

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
        strf=counts.strf[: layout.n_pop],
        intercept=counts.base[: layout.n_pop],
    )


# -- who is recorded where ---------------------------------------------------


@dataclass
class _Layout:
    """Sites, cell ids in both spellings, and which traps apply to whom.

    Units ``0 .. n_pop-1`` are the population cells (population order); the
    ones after are the site-only ('extra_site') cells.
    """

    sites: list[str]
    cells: list[str]  # population ids
    site_ids: list[str]  # spelling in the site files (all units)
    unit_site: np.ndarray  # site index of every unit
    keys: list[tuple[str, int, int]]  # parsed (site, electrode, unit); -1 where unknown
    in_sites: np.ndarray  # population cell present in its site file
    auditory: np.ndarray
    missing_est: dict[int, np.ndarray]  # site index -> est indices it did not record
    past_end: np.ndarray  # unit indices that get spikes after the end
    traps: dict[str, list[str]]

    @property
    def n_pop(self) -> int:
        return len(self.cells)

    @classmethod
    def make(
        cls, area: str, sizes: dict, published: dict | None, traps: bool, rng: np.random.Generator
    ) -> _Layout:
        if published is not None:
            animals = [a for a, k in published["sites"].items() for _ in range(k)]
            per_site = np.concatenate(
                [_split(published["cells"][a], k, rng) for a, k in published["sites"].items()]
            )
            n_auditory = published["auditory"]
        else:
            pool = ("ARM",) if area.upper() == "PEG" else ANIMALS
            animals = [pool[i % len(pool)] for i in range(sizes["n_sites"])]
            per_site = _split(sizes["n_cells"], sizes["n_sites"], rng)
            n_auditory = round(0.915 * sizes["n_cells"])
        sites = _site_names(animals, 17 if area.upper() == "PEG" else None, rng)
        n_pop = int(per_site.sum())
        frac = n_pop / 849
        n_trap = {
            "odd": max(1, round(3 * frac)),
            "padded": max(1, round(6 * frac)),
            "no_site": max(1, round(33 * frac)),
            "extra": max(1, round(4 * frac)),
            "past_end": max(1, round(3 * frac)),
        }
        if not traps:
            n_trap = dict.fromkeys(n_trap, 0)

        # (electrode, unit) pairs per site, extra cells included, in population order
        n_extra_site = np.bincount(
            rng.integers(0, len(sites), size=n_trap["extra"]), minlength=len(sites)
        )
        unit_site, keys, extra_flag = [], [], []
        for s, (site, m) in enumerate(zip(sites, per_site)):
            pairs = _electrode_units(int(m + n_extra_site[s]), rng)
            extra = set(rng.choice(len(pairs), size=n_extra_site[s], replace=False).tolist())
            for i, (e, u) in enumerate(pairs):
                unit_site.append(s)
                keys.append((site, e, u))
                extra_flag.append(i in extra)
        unit_site = np.array(unit_site)
        extra_flag = np.array(extra_flag)
        order = np.concatenate([np.flatnonzero(~extra_flag), np.flatnonzero(extra_flag)])
        unit_site = unit_site[order]
        keys = [keys[i] for i in order]

        pop = np.arange(n_pop)
        chosen = rng.permutation(pop)
        cut = np.cumsum([n_trap["odd"], n_trap["padded"], n_trap["no_site"]])
        odd, padded, no_site = np.split(chosen[: cut[-1]], cut[:-1])
        regular = np.setdiff1d(pop, np.concatenate([odd, padded, no_site]))
        past_end = rng.choice(regular, size=min(n_trap["past_end"], len(regular)), replace=False)

        cells = [f"{s}-{e:02d}-{u}" for s, e, u in keys]
        site_ids = list(cells)
        for j, i in enumerate(sorted(padded)):
            s, e, u = keys[i]
            long, short = f"{s}-{e:03d}-{u}", f"{s}-{e:02d}-{u}"
            # both directions occur: padded in the site file or in the population
            cells[i], site_ids[i] = (short, long) if j % 2 == 0 else (long, short)
        for j, i in enumerate(sorted(odd)):
            s, _, u = keys[i]
            cells[i] = site_ids[i] = f"{s}-LFP-{u}" if j % 2 == 0 else f"{s}-a-{u}"
            keys[i] = (s, -1, -1)  # the site is still readable, the rest is not
        # odd ids go last within their site, like a channel appended by hand
        pop_order = sorted(pop, key=lambda i: (unit_site[i], keys[i][1] < 0, i))
        perm = np.array([*pop_order, *range(n_pop, len(keys))])
        unit_site = unit_site[perm]
        keys = [keys[i] for i in perm]
        site_ids = [site_ids[i] for i in perm]
        rank = np.empty(len(perm), dtype=int)
        rank[perm] = np.arange(len(perm))
        cells = [cells[i] for i in pop_order]
        odd, padded, no_site, past_end = (
            np.sort(rank[a]) for a in (odd, padded, no_site, past_end)
        )

        in_sites = np.ones(n_pop, dtype=bool)
        in_sites[no_site] = False
        auditory = np.zeros(n_pop, dtype=bool)
        auditory[rng.choice(n_pop, size=min(n_auditory, n_pop), replace=False)] = True

        n_est = sizes["n_est"]
        gappy = rng.choice(len(sites), size=1 if len(sites) < 10 else 2, replace=False)
        n_missing = max(1, round(0.03 * n_est)) if n_est > 2 else 0
        missing_est = {
            int(s): np.sort(rng.choice(n_est, size=n_missing, replace=False)) for s in gappy
        }
        trap_lists = {
            "padded": [cells[i] for i in padded],
            "no_site": [cells[i] for i in no_site],
            "extra_site": site_ids[n_pop:],
            "odd_ids": [cells[i] for i in odd],
            "spikes_past_end": [cells[i] for i in past_end],
            # the per-cell table spells a few cells as their site file does
            "pred_respelled": [cells[i] for i in padded[:2]],
        }
        return cls(
            sites=sites,
            cells=cells,
            site_ids=site_ids,
            unit_site=unit_site,
            keys=keys,
            in_sites=in_sites,
            auditory=auditory,
            missing_est=missing_est,
            past_end=past_end,
            traps=trap_lists,
        )

    def neurons(self, area: str) -> pd.DataFrame:
        """Population cells' metadata, with the unknown-field conventions of the schema."""
        keys = self.keys[: self.n_pop]
        return pd.DataFrame(
            {
                "area": np.array([area] * self.n_pop, dtype=str),
                "site": np.array([k[0] for k in keys], dtype=str),
                "animal": np.array([k[0][:3] for k in keys], dtype=str),
                "electrode": np.array([k[1] for k in keys], dtype=np.int64),
                "unit": np.array([k[2] for k in keys], dtype=np.int64),
                "auditory": self.auditory.copy(),
            },
            index=pd.Index(self.cells, dtype=object),
        )

    def site_units(self, s: int) -> np.ndarray:
        """Units in site ``s``'s file (population cells with site data, then extras)."""
        units = np.flatnonzero(self.unit_site == s)
        return units[(units >= self.n_pop) | self.in_sites[np.minimum(units, self.n_pop - 1)]]


def _split(total: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` positive ints (at least 2 each) summing to ``total``, uneven like real sites."""
    p = rng.dirichlet(np.full(k, 4.0))
    return 2 + rng.multinomial(total - 2 * k, p)


def _site_names(animals: list[str], start: int | None, rng: np.random.Generator) -> list[str]:
    numbers: dict[str, int] = {}
    names = []
    for a in animals:
        n = numbers.get(a, start if start is not None else _SITE_START.get(a, 10))
        names.append(f"{a}{n:03d}{'aab'[rng.integers(0, 3)]}")
        numbers[a] = n + 1 + int(rng.integers(0, 2))
    return names


def _electrode_units(m: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``m`` distinct (electrode, unit) pairs, electrodes 1..64, units numbered per electrode."""
    electrodes = np.sort(rng.integers(1, 65, size=m))
    seen: dict[int, int] = {}
    pairs = []
    for e in electrodes.tolist():
        seen[e] = seen.get(e, 0) + 1
        pairs.append((e, seen[e]))
    return pairs


# -- stimuli and responses ----------------------------------------------------


def _stim_names(n_est: int, n_val: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Epoch names like the real ones, in a shuffled (not alphabetical) order."""
    numbers = rng.permutation(np.arange(1, 10 * (n_est + n_val) + 10))[: n_est + n_val]
    words = rng.integers(0, len(_WORDS), size=n_est + n_val)
    est = [
        f"STIM_cat{numbers[i]}_rec{1 + i % 3}_{_WORDS[words[i]]}_excerpt{1 + i % 2}.wav"
        for i in range(n_est)
    ]
    val = [
        f"STIM_00cat{numbers[n_est + i]}_rec1_{_WORDS[words[n_est + i]]}_excerpt1.wav"
        for i in range(n_val)
    ]
    return est, val


def _spectrograms(n_stim: int, n_freq: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth non-negative gamma-ish bands during the sound, zero in the silences."""
    from scipy.ndimage import uniform_filter1d

    g = rng.gamma(1.5, 1.0, size=(n_stim, n_freq, _SOUND_BINS))
    g = uniform_filter1d(g, size=5, axis=2, mode="nearest")
    g = uniform_filter1d(g, size=3, axis=1, mode="nearest")
    tilt = rng.normal(0.0, 0.5, size=(n_stim, 1, 1)) * np.linspace(-1, 1, n_freq)[None, :, None]
    env = uniform_filter1d(rng.random((n_stim, 1, _SOUND_BINS)), size=15, axis=2)
    spec = np.zeros((n_stim, n_freq, N_TIME), dtype="float32")
    spec[:, :, _PRE_BINS : _PRE_BINS + _SOUND_BINS] = g * np.exp(tilt) * (0.3 + 1.4 * env)
    return spec


@dataclass
class _Counts:
    """Spike counts of every unit: est (n_est, U, T) and val (n_val, U, 20, T)."""

    est: np.ndarray  # uint8 counts, all units, no NaN
    val: np.ndarray  # uint8
    est_truth: np.ndarray  # float32, population cells, NaN where not recorded
    strf: np.ndarray  # (units, 4, F) the filter each unit's rate is made from
    base: np.ndarray  # (units,) spontaneous rate

    @classmethod
    def draw(
        cls,
        spec: np.ndarray,
        layout: _Layout,
        n_est: int,
        rng: np.random.Generator,
        drive: float = 1.0,
    ) -> _Counts:
        n_stim, n_freq, n_time = spec.shape
        n_units = len(layout.keys)
        best = rng.uniform(0, n_freq - 1, size=n_units)
        width = rng.uniform(1.0, 4.0, size=n_units)
        tuning = np.exp(-0.5 * ((np.arange(n_freq)[None, :] - best[:, None]) / width[:, None]) ** 2)
        tuning /= tuning.sum(axis=1, keepdims=True)
        lag = rng.integers(1, 4, size=n_units)
        base = rng.lognormal(np.log(0.02), 0.7, size=n_units)
        # most cells follow the sound, the rest fire at their spontaneous rate
        gain = np.where(rng.random(n_units) < 0.7, rng.lognormal(np.log(0.05), 0.6, n_units), 0.0)
        gain = gain * drive
        est = np.empty((n_est, n_units, n_time), dtype=np.uint8)
        val = np.empty((n_stim - n_est, n_units, N_REPEATS, n_time), dtype=np.uint8)
        step = 32
        for lo in range(0, n_stim, step):
            hi = min(lo + step, n_stim)
            drive = np.einsum("sft,uf->sut", spec[lo:hi], tuning.astype("float32"))
            lagged = np.zeros_like(drive)
            for k in np.unique(lag):
                sel = lag == k
                lagged[:, sel, k:] = drive[:, sel, :-k]
            trial_gain = rng.lognormal(0.0, 0.2, size=(hi - lo, n_units, 1))
            rate = base[None, :, None] + gain[None, :, None] * trial_gain * lagged
            for i in range(lo, hi):
                r = rate[i - lo]
                if i < n_est:
                    est[i] = rng.poisson(r)
                else:
                    val[i - n_est] = rng.poisson(r[:, None, :], size=(n_units, N_REPEATS, n_time))
        est_truth = est[:, : layout.n_pop].astype("float32")
        for s, missing in layout.missing_est.items():
            est_truth[np.ix_(missing, layout.unit_site[: layout.n_pop] == s)] = np.nan
        # the rate is base + gain * trial_gain * (tuning . spectrogram) at one lag; the trial
        # gain is lognormal(0, 0.2), of mean exp(0.02)
        strf = np.zeros((n_units, 4, n_freq))
        strf[np.arange(n_units), lag] = (gain * np.exp(0.02))[:, None] * tuning
        return cls(est=est, val=val, est_truth=est_truth, strf=strf, base=base)


# -- NEMS archive helpers ------------------------------------------------------


class _ChunkReader:
    """File-like ``read(n)`` over an iterator of byte chunks (streams a tar member)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = bytearray()
        self.total = 0

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._chunks)
            except StopIteration:
                break
        if n < 0:
            n = len(self._buf)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self.total += len(out)
        return out

    def exhausted(self) -> bool:
        return not self._buf and next(self._chunks, None) is None


def _tarinfo(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = _MTIME
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    return info


class _TgzWriter:
    """A deterministic ``.tgz`` (fixed timestamps), written to a file-like target."""

    def __init__(self, target: BinaryIO, compresslevel: int) -> None:
        self._gz = gzip.GzipFile(filename="", mode="wb", compresslevel=compresslevel,
                                 fileobj=target, mtime=0)  # fmt: skip
        self._tar = tarfile.open(fileobj=self._gz, mode="w", format=tarfile.PAX_FORMAT)
        self._tar.copybufsize = 1 << 20

    def add_dir(self, name: str) -> None:
        self._tar.addfile(_tarinfo(name, directory=True))

    def add_bytes(self, name: str, data: bytes) -> None:
        self._tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))

    def add_stream(self, name: str, size: int, chunks: Iterable[bytes]) -> None:
        reader = _ChunkReader(chunks)
        self._tar.addfile(_tarinfo(name, size), reader)
        if reader.total != size or not reader.exhausted():
            raise RuntimeError(f"tar member {name}: announced {size} bytes, data differs")

    def close(self) -> None:
        self._tar.close()
        self._gz.close()


def _sidecar(rec: str, sig: str, chans: list[str], fs: int, n: int, kind: str) -> bytes:
    doc = {
        "name": sig,
        "chans": chans,
        "fs": fs,
        "meta": {},
        "recording": rec,
        "segments": [[0, n]],
        "signal_type": f"nems0.signal.{kind}",
    }
    return json.dumps(doc, indent=2).encode()


def _trial_epochs(names: list[str], extra: list[tuple[str, float, float]]) -> bytes:
    """Epoch CSV: per trial TRIAL, REFERENCE, the stim, the two silences; plus ``extra``."""
    rows: list[tuple[str, float, float]] = []
    for i, name in enumerate(names):
        start, end = i * TRIAL_DURATION, (i + 1) * TRIAL_DURATION
        rows += [
            ("TRIAL", start, end),
            ("REFERENCE", start, end),
            (name, start, end),
            ("PreStimSilence", start, start + PRE_STIM_SILENCE),
            ("PostStimSilence", end - PRE_STIM_SILENCE, end),
        ]
    table = pd.DataFrame(rows + extra, columns=["name", "start", "end"])
    table = table.sort_values("start", kind="stable")
    return table.to_csv(index=False, lineterminator="\n").encode()


def _blocks(
    n_trials: int, labels: list[str], rng: np.random.Generator
) -> list[tuple[str, float, float]]:
    """FILE_ epochs spanning contiguous blocks of trials, and an unknown whole-span epoch."""
    n_blocks = min(n_trials, max(1, len(labels)))
    cuts = np.sort(rng.choice(np.arange(1, n_trials), size=n_blocks - 1, replace=False))
    edges = [0, *cuts.tolist(), n_trials]
    out = [
        (f"FILE_{labels[b % len(labels)]}{b + 1:02d}_p_NAT", edges[b] * 1.5, edges[b + 1] * 1.5)
        for b in range(n_blocks)
    ]
    out.append(("PASSIVE_EXPERIMENT", 0.0, n_trials * TRIAL_DURATION))
    return out


def _value_table(max_twentieths: int, last: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-width byte fields for NaN (row 0) and k/20 (row k+1), zero-padded."""
    sep = "\n" if last else ","
    table = np.zeros((max_twentieths + 2, _FIELD), dtype=np.uint8)
    lengths = np.empty(max_twentieths + 2, dtype=np.int64)
    for k in range(-1, max_twentieths + 1):
        text = ("nan" if k < 0 else "%.18e" % (k / 20.0)) + sep
        table[k + 1, : len(text)] = np.frombuffer(text.encode(), dtype=np.uint8)
        lengths[k + 1] = len(text)
    return table, lengths


def _format_twentieths(tw: np.ndarray, tables) -> bytes:
    """CSV text of a (rows, cols) int array of value*20 (-1 = NaN), one row per line."""
    body, last = tables
    out = body[tw + 1]
    out[:, -1] = last[tw[:, -1] + 1]
    if (tw < 0).any():
        return out[out != 0].tobytes()
    return out.tobytes()


def _format_floats(rows: np.ndarray) -> bytes:
    line = ",".join(["%.18e"] * rows.shape[1]) + "\n"
    return "".join(line % tuple(r) for r in rows.astype(np.float64).tolist()).encode()


def _replace_into(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temp file in the same folder; only a complete file gets the name."""
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as fh:
        write(fh)
    os.replace(part, path)


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc)


# -- the files ---------------------------------------------------------------------


def _write_population(
    path: Path,
    area: str,
    layout: _Layout,
    counts: _Counts,
    spec: np.ndarray,
    est_stims: list[str],
    val_stims: list[str],
    rng: np.random.Generator,
    compresslevel: int,
    progress: bool,
) -> None:
    """Population recording: val sounds once (means of 20 repeats), then est sounds."""
    n_est, n_val, n_pop = len(est_stims), len(val_stims), layout.n_pop
    n_trials = n_val + n_est
    n_samples = n_trials * N_TIME
    rec = f"{area}_NAT4_ozgf.fs100.ch18"
    val_sum = counts.val[:, :n_pop].sum(axis=2, dtype=np.int16)  # (n_val, N, T), exact
    est_nan = np.isnan(counts.est_truth)
    max_tw = max(int(val_sum.max(initial=0)), 20 * int(counts.est.max(initial=0)))
    tables = (_value_table(max_tw, last=False)[0], _value_table(max_tw, last=True)[0])
    n_nan = int(est_nan.sum())
    resp_size = n_samples * n_pop * _FIELD - n_nan * (_FIELD - 4)

    def resp_chunks(step: int = 8):
        for lo in _progress(range(0, n_trials, step), -(-n_trials // step), "resp", progress):
            blocks = []
            for i in range(lo, min(lo + step, n_trials)):
                if i < n_val:
                    blocks.append(val_sum[i].T)
                else:
                    e = i - n_val
                    tw = 20 * counts.est[e, :n_pop].astype(np.int16)
                    tw[est_nan[e]] = -1
                    blocks.append(tw.T)
            yield _format_twentieths(np.concatenate(blocks), tables)

    order = list(range(n_est, n_est + n_val)) + list(range(n_est))
    names = val_stims + est_stims
    stim_rows = spec[order].transpose(0, 2, 1).reshape(n_samples, -1)
    mask = np.repeat([0.0, 1.0], [n_val * N_TIME, n_est * N_TIME])
    epochs = _trial_epochs(names, _blocks(n_trials, layout.sites, rng))
    signals = {
        "resp": (list(layout.cells), resp_size, resp_chunks()),
        "stim": ([str(f) for f in range(spec.shape[1])], None, _format_floats(stim_rows)),
        "mask_est": (["mask_est"], None, _format_floats(mask[:, None])),
    }

    def write(fh):
        tgz = _TgzWriter(fh, compresslevel)
        tgz.add_dir(rec)
        meta = {"area": area, "batch": 323 if area.upper() == "PEG" else 322, "fs": FS_POP}
        tgz.add_bytes(f"{rec}/{rec}.meta.json", json.dumps(meta).encode())
        for sig, (chans, size, data) in signals.items():
            tgz.add_bytes(
                f"{rec}/{rec}.{sig}.json",
                _sidecar(rec, sig, chans, FS_POP, n_samples, "RasterizedSignal"),
            )
            tgz.add_bytes(f"{rec}/{rec}.{sig}.epoch.csv", epochs)
            if size is None:
                tgz.add_bytes(f"{rec}/{rec}.{sig}.csv", data)
            else:
                tgz.add_stream(f"{rec}/{rec}.{sig}.csv", size, data)
        tgz.close()

    _replace_into(path, write)


def _site_recording(
    site: str,
    s: int,
    layout: _Layout,
    counts: _Counts,
    est_stims: list[str],
    val_stims: list[str],
    rng: np.random.Generator,
    compresslevel: int,
) -> bytes:
    """One site's NEMS recording at fs=1000 with point-process spike times, as tgz bytes."""
    import h5py

    units = layout.site_units(s)
    missing = set(layout.missing_est.get(s, np.empty(0)).tolist())
    trials = [(-1, e) for e in range(len(est_stims)) if e not in missing]
    trials += [(v, 0) for v in range(len(val_stims)) for _ in range(N_REPEATS)]
    trials = [trials[i] for i in rng.permutation(len(trials))]
    seen = np.zeros(len(val_stims), dtype=int)
    n_trials = len(trials)
    binned = np.empty((n_trials, len(units), N_TIME), dtype=np.uint8)
    names = []
    for k, (v, e) in enumerate(trials):
        if v < 0:
            binned[k] = counts.est[e, units]
            names.append(est_stims[e])
        else:  # repeats are numbered in the order they were played
            binned[k] = counts.val[v, units, seen[v]]
            seen[v] += 1
            names.append(val_stims[v])

    trial_idx, unit_idx, bin_idx = np.nonzero(binned)
    reps = binned[trial_idx, unit_idx, bin_idx]
    trial_idx, unit_idx, bin_idx = (np.repeat(a, reps) for a in (trial_idx, unit_idx, bin_idx))
    # spike inside its 1 ms sample, away from the edges so floor(t*1000) is exact
    ms = (
        trial_idx.astype(np.int64) * round(TRIAL_DURATION * FS_SITE)
        + bin_idx * (FS_SITE // FS_POP)
        + rng.integers(0, FS_SITE // FS_POP, size=len(bin_idx))
    )
    times = (ms + rng.uniform(0.1, 0.9, size=len(ms))) / FS_SITE
    n_samples = n_trials * round(TRIAL_DURATION * FS_SITE)
    late = np.flatnonzero(np.isin(units, layout.past_end))
    if len(late):
        n_late = rng.integers(1, 4, size=len(late))
        late_units = np.repeat(late, n_late)
        late_ms = n_samples + rng.integers(0, 500, size=len(late_units))
        unit_idx = np.concatenate([unit_idx, late_units])
        times = np.concatenate([times, (late_ms + 0.5) / FS_SITE])
    order = np.lexsort((times, unit_idx))
    per_unit = np.split(times[order], np.cumsum(np.bincount(unit_idx, minlength=len(units)))[:-1])

    chans = [layout.site_ids[u] for u in units]
    by_name = sorted(range(len(units)), key=lambda i: chans[i])
    h5 = io.BytesIO()
    with h5py.File(h5, "w") as f:
        for i in by_name:
            f.create_dataset(chans[i], data=per_unit[i].astype(np.float64))
    rec = f"{site}_NAT4_fs1000"
    epochs = _trial_epochs(names, _blocks(n_trials, [site] * 3, rng))
    out = io.BytesIO()
    tgz = _TgzWriter(out, compresslevel)
    tgz.add_dir(rec)
    tgz.add_bytes(f"{rec}/{rec}.meta.json", b"{}")
    sidecar = _sidecar(rec, "resp", [chans[i] for i in by_name], FS_SITE, n_samples, "PointProcess")
    tgz.add_bytes(f"{rec}/{rec}.resp.json", sidecar)
    tgz.add_bytes(f"{rec}/{rec}.resp.epoch.csv", epochs)
    tgz.add_bytes(f"{rec}/{rec}.resp.h5", h5.getvalue())
    tgz.close()
    return out.getvalue()


def _zipinfo(name: str, compress: int = zipfile.ZIP_STORED) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2023, 6, 15, 0, 0, 0))
    info.compress_type = compress
    info.external_attr = (0o40755 if name.endswith("/") else 0o644) << 16
    return info


def _write_sites(
    path: Path,
    area: str,
    layout: _Layout,
    counts: _Counts,
    est_stims: list[str],
    val_stims: list[str],
    rng: np.random.Generator,
    compresslevel: int,
    progress: bool,
) -> None:
    """``<area>_single_sites.zip`` with one ``<site>_NAT4_fs1000.tgz`` per site."""
    folder = f"{area}_single_sites/"

    def write(fh):
        with zipfile.ZipFile(fh, "w") as zf:
            zf.writestr(_zipinfo(folder), b"")
            sites = list(enumerate(layout.sites))
            for s, site in _progress(sites, len(sites), "sites", progress):
                data = _site_recording(
                    site, s, layout, counts, est_stims, val_stims, rng, compresslevel
                )
                zf.writestr(_zipinfo(f"{folder}{site}_NAT4_fs1000.tgz"), data)

    _replace_into(path, write)


def _write_pred_csv(path: Path, layout: _Layout, rng: np.random.Generator) -> pd.DataFrame:
    """Per-cell prediction table, rows sorted by cell id (not population order).

    The cells of the ``'pred_respelled'`` trap are spelled as in their site
    file. Returns the table in population order, indexed by population id.
    """
    n = layout.n_pop
    ceiling = rng.uniform(0.3, 0.95, size=n)
    r_test = np.where(
        layout.auditory, ceiling * rng.uniform(0.3, 0.8, size=n), rng.normal(0, 0.05, n)
    )
    r_floor = np.abs(rng.normal(0.05, 0.02, size=n))
    se_test = rng.uniform(0.01, 0.05, size=n)
    ids = list(layout.cells)
    for cell in layout.traps["pred_respelled"]:
        i = ids.index(cell)
        ids[i] = layout.site_ids[i]
    table = pd.DataFrame(
        {
            "cellid": ids,
            "r_test": np.round(r_test, 6),
            "se_test": np.round(se_test, 6),
            "r_floor": np.round(r_floor, 6),
            "r_ceiling": np.round(ceiling, 6),
            "sig_auditory": layout.auditory,
        },
        index=pd.Index(layout.cells, dtype=object),
    )
    text = table.sort_values("cellid").to_csv(index=False, lineterminator="\n").encode()
    _replace_into(path, lambda fh: fh.write(text))
    return table


def _write_wav(path: Path, stims: list[str], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``wav.zip``: 1 s of 16-bit PCM per sound with one impulse; returns stem -> mono floats.

    A few file names differ from the epoch name in letter case, and a couple
    of files are stereo (left = s + d, right = s - d, so the mono mean is s).
    """
    n = len(stims)
    case_trap = set(rng.choice(n, size=min(n, max(1, n // 100 + 1)), replace=False).tolist())
    stereo = set(rng.choice(n, size=min(n, 2), replace=False).tolist())
    truth: dict[str, np.ndarray] = {}

    def write(fh):
        with zipfile.ZipFile(fh, "w") as zf:
            zf.writestr(_zipinfo("wav/"), b"")
            for i, stim in enumerate(stims):
                sound = stim[len("STIM_") :]
                stem = sound[: -len(".wav")] if sound.endswith(".wav") else sound
                if i in case_trap:
                    stem = stem.swapcase()
                mono = np.round(rng.normal(0, 600, size=AUDIO_FS)).clip(-3000, 3000)
                mono[rng.integers(0, AUDIO_FS)] = 30000  # the impulse
                if i in stereo:
                    d = np.round(rng.normal(0, 300, size=AUDIO_FS)).clip(-1000, 1000)
                    frames = np.stack([mono + d, mono - d], axis=1)
                else:
                    frames = mono[:, None]
                buf = io.BytesIO()
                with wave.open(buf, "wb") as w:
                    w.setnchannels(frames.shape[1])
                    w.setsampwidth(2)
                    w.setframerate(AUDIO_FS)
                    w.writeframes(frames.astype("<i2").tobytes())
                zf.writestr(_zipinfo(f"wav/{stem}.wav", zipfile.ZIP_DEFLATED), buf.getvalue())
                truth[stem] = (mono / 32768.0).astype("float32")

    _replace_into(path, write)
    return truth
