"""Batches per second of ``nat4xr.torch.to_torch`` on a full-scale A1-shaped cache.

Usage::

    python benchmarks/torch_batches.py --workdir /tmp/nat4xr_bench
    python benchmarks/torch_batches.py --source cache --workers 0 2

The Dataset is opened lazily from a netCDF cache of the published A1 shape
(593 stims: 575 est + 18 val; 849 neurons, 777 auditory; 20 repeats; 150
bins). ``--source release`` writes a full synthetic release and opens it
with :func:`nat4xr.open_nat4` (which builds the cache once); ``--source
cache`` writes a full-shaped Dataset of random counts straight into the cache
layout with :func:`nat4xr.cachefile.write_cache` (faster to set up). Both files
are kept in ``--workdir`` and reused.

Two workloads, each timed warm (after one untimed pass), best of
``--repeat`` passes:

- all val sounds, auditory cells with val data, batch size 4 (5 batches);
- 64 est sounds, auditory cells, batch size 8 (8 batches).

The val sounds are also timed with ``preload=True`` (their responses read
into memory once, ~170 MB). Read lazily, all sounds come from the cache
file's memory map (:mod:`nat4xr.batches`): val sounds from unfiltered
chunks, est sounds from compressed ones, each checked by CRC-32.

deepSTRF's loader was quoted at 5 val batches in ~0.62 s and 8 est batches
in ~2.4 s on another machine; ``benchmarks/torch_vs_deepstrf.py`` times both
loaders in alternation on this one, which is the fair comparison.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

import nat4xr.cachefile

FULL = {"n_est": 575, "n_val": 18, "n_neurons": 849, "n_auditory": 777, "n_time": 150}


def open_release(workdir: Path) -> xr.Dataset:
    """Full synthetic release opened with ``open_nat4`` (cache built on first use)."""
    from nat4xr.opening import open_nat4
    from nat4xr.synthetic import write_release

    release = workdir / "release"
    os.environ["NAT4XR_CACHE_DIR"] = str(workdir / "cache")
    if not (release / "A1_pred_correlation.csv").exists():
        t0 = time.perf_counter()
        write_release(release, "A1", scale="full")
        print(f"wrote the full synthetic release in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    ds = open_nat4("A1", path=release)
    print(f"open_nat4: {time.perf_counter() - t0:.1f} s")
    return ds


def open_written_cache(workdir: Path) -> xr.Dataset:
    """Random counts of the full A1 shape written in the cache layout, opened lazily."""

    path = workdir / "a1_shaped.nc"
    if not path.exists():
        t0 = time.perf_counter()
        nat4xr.cachefile.write_cache(_full_shaped(), path)
        print(f"wrote {path} in {time.perf_counter() - t0:.1f} s")
    return nat4xr.cachefile.open_cache(path)


def _full_shaped() -> xr.Dataset:
    """A dask-backed Dataset of the full A1 shape (est padding and missing cells NaN)."""
    import dask.array as da
    import pandas as pd

    from nat4xr.schema import make_dataset

    rng = np.random.default_rng(0)
    n_est, n_val, n = FULL["n_est"], FULL["n_val"], FULL["n_neurons"]
    n_stim, n_rep, n_time = n_est + n_val, 20, FULL["n_time"]
    reps = np.r_[np.ones(n_est, np.int64), np.full(n_val, n_rep)]
    stims = pd.DataFrame(
        {"subset": ["est"] * n_est + ["val"] * n_val, "n_repeats": reps},
        index=[f"STIM_cat{i:03d}.wav" for i in range(n_est)]
        + [f"STIM_00cat{i:03d}.wav" for i in range(n_val)],
    )
    auditory = np.zeros(n, bool)
    auditory[rng.choice(n, FULL["n_auditory"], replace=False)] = True
    sites = [f"ARM{10 + i // 40:03d}a" for i in range(n)]
    neurons = pd.DataFrame(
        {
            "area": ["A1"] * n,
            "site": sites,
            "animal": ["ARM"] * n,
            "electrode": np.arange(n) % 64 + 1,
            "unit": np.arange(n) // 64 + 1,
            "auditory": auditory,
        },
        index=[f"{s}-{i % 64 + 1:02d}-{i // 64 + 1}" for i, s in enumerate(sites)],
    )
    coverage = np.ones((n_stim, n), bool)
    coverage[n_est:, rng.choice(n, 33, replace=False)] = False

    def block(block_info=None):
        s = block_info[None]["chunk-location"][0]
        out = np.random.default_rng(s).poisson(0.3, (1, n, n_rep, n_time)).astype("float32")
        out[:, :, reps[s] :] = np.nan
        out[0, ~coverage[s]] = np.nan
        return out

    response = da.map_blocks(
        block, chunks=((1,) * n_stim, (n,), (n_rep,), (n_time,)), dtype="float32"
    )
    spectrogram = rng.gamma(2.0, 1.0, size=(n_stim, 18, n_time)).astype("float32")
    return make_dataset(response, spectrogram, stims, neurons, coverage=coverage)


def workloads(ds: xr.Dataset) -> dict[str, xr.Dataset]:
    """The val and est selections, auditory cells with data for the sounds."""
    subset = ds["subset"].values
    out = {}
    for name, stims in (("val", subset == "val"), ("est", subset == "est")):
        # one selection per axis: batches then come from the file's chunks (a
        # second selection along the same axis would leave that to dask)
        sel = ds.isel(stim=np.flatnonzero(stims)[: 64 if name == "est" else None])
        keep = sel["auditory"].values & sel["coverage"].values.any(axis=0)
        out[name] = sel.isel(neuron=np.flatnonzero(keep))
    return out


def time_loader(
    ds: xr.Dataset, batch_size: int, workers: int, repeat: int, **options
) -> tuple[float, int, float]:
    """Best batches per second over ``repeat`` warm passes, and the first pass's seconds."""
    from nat4xr.torch import to_torch

    kwargs = {"persistent_workers": True} if workers else {}
    t0 = time.perf_counter()
    loader = to_torch(ds, batch_size=batch_size, num_workers=workers, **kwargs, **options)
    n = sum(1 for _ in loader)  # warm-up: file pages, workers, imports (and any preload)
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for batch in loader:
            assert batch["responses"].shape[0] <= batch_size
        best = min(best, time.perf_counter() - t0)
    return n / best, n, first


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print batches per second against the reference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/nat4xr_bench"))
    parser.add_argument("--source", choices=["release", "cache"], default="release")
    parser.add_argument("--workers", type=int, nargs="+", default=[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    opener = open_release if args.source == "release" else open_written_cache
    ds = opener(args.workdir)
    print(f"dataset: {dict(ds.sizes)}, response {type(ds.response.data).__name__}")
    for name, sel in workloads(ds).items():
        batch_size = 4 if name == "val" else 8
        runs: list[tuple[str, dict]] = [("lazy", {})]
        if name == "val":  # small enough to hold in memory (~170 MB) for many epochs
            runs.append(("preload", {"preload": True}))
        for how, options in runs:
            for workers in args.workers:
                rate, n, first = time_loader(sel, batch_size, workers, args.repeat, **options)
                print(
                    f"{name} ({how}): {sel.sizes['stim']} stims x {sel.sizes['neuron']} "
                    f"neurons, B={batch_size}, workers={workers}: {n} batches, first pass "
                    f"{first:.2f} s, then {rate:.1f} batches/s",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
