"""Small random Datasets of the nat4xr contract, made in memory (no release files)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from ..schema import make_dataset
from .constants import ANIMALS

__all__ = ["random_dataset"]


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
