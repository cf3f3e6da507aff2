"""Selection speed on a full-scale lazy A1-shaped Dataset (593 stims x 849 neurons x 20 x 150).

Times ``ds.nat4.sel_stims(subset="val")`` and ``ds.nat4.sel_neurons(auditory=True)``
(median of many runs) on a dask-backed ``response`` that is never computed,
next to plain ``Dataset.isel`` with the same positions for reference.

Run: ``python benchmarks/selection.py [--chunk 8] [--runs 300]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

import nat4xr
from nat4xr.schema import make_dataset

N_EST, N_VAL, N_CELL, N_REP, N_TIME, N_FREQ = 575, 18, 849, 20, 150, 18


def full_scale(chunk: int, seed: int = 0) -> xr.Dataset:
    """A1-shaped metadata (22 sites, 4 animals, 777 auditory, 33 cells without val data)."""
    rng = np.random.default_rng(seed)
    n_stim = N_EST + N_VAL
    stims = pd.DataFrame(
        {"subset": ["est"] * N_EST + ["val"] * N_VAL, "n_repeats": [1] * N_EST + [20] * N_VAL},
        index=[f"STIM_cat{i:03d}.wav" for i in range(N_EST)]
        + [f"STIM_00cat{i:03d}.wav" for i in range(N_VAL)],
    )
    animal = np.repeat(["ARM", "CRD", "DRX", "TNC"], [165, 36, 244, 404])
    site = np.array([f"{a}{i % 22:03d}a" for i, a in enumerate(animal)])
    auditory = np.zeros(N_CELL, dtype=bool)
    auditory[rng.choice(N_CELL, 777, replace=False)] = True
    neurons = pd.DataFrame(
        {
            "area": ["A1"] * N_CELL,
            "site": site,
            "animal": animal,
            "electrode": rng.integers(1, 64, N_CELL),
            "unit": np.arange(N_CELL),
            "auditory": auditory,
        },
        index=[f"{s}-{i:03d}-1" for i, s in enumerate(site)],
    )
    coverage = np.ones((n_stim, N_CELL), dtype=bool)
    coverage[N_EST:, rng.choice(N_CELL, 33, replace=False)] = False
    response = da.zeros(
        (n_stim, N_CELL, N_REP, N_TIME), dtype="float32", chunks=(chunk, -1, -1, -1)
    )
    spectrogram = da.zeros((n_stim, N_FREQ, N_TIME), dtype="float32", chunks=(chunk, -1, -1))
    return make_dataset(
        response, spectrogram, stims, neurons, coverage=coverage, attrs={"area": "A1"}
    )


def median_ms(fn: Callable[[], object], runs: int, clock: Callable[[], float] = time.perf_counter):
    """Median time of ``fn`` in ms (``clock=time.process_time`` for CPU time, which a
    machine shared with other jobs inflates less than wall time)."""
    fn()  # warm up
    times = []
    for _ in range(runs):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, nargs="+", default=[1, 8], help="stims per chunk")
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    print(f"nat4xr {nat4xr.__version__}, xarray {xr.__version__}; median of {args.runs} runs")
    print(f"load average: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    for chunk in args.chunk:
        ds = full_scale(chunk)
        val = np.flatnonzero(ds["subset"].values == "val")
        val_cells = np.flatnonzero(ds["coverage"].values[val].any(axis=0))
        aud = np.flatnonzero(ds["auditory"].values)
        variants = {"metadata in memory": ds, "metadata dask too (.chunk)": ds.chunk()}
        for label, d in variants.items():
            print(f"\nchunk={chunk} stim(s), {label}:")
            rows = [
                ("ds.nat4.sel_stims(subset='val')", lambda d=d: d.nat4.sel_stims(subset="val")),
                (
                    "ds.nat4.sel_neurons(auditory=True)",
                    lambda d=d: d.nat4.sel_neurons(auditory=True),
                ),
                (
                    "  reference: ds.isel(val stims, val cells)",
                    lambda d=d, s=val, n=val_cells: d.isel(stim=s, neuron=n),
                ),
                ("  reference: ds.isel(neuron=auditory)", lambda d=d, n=aud: d.isel(neuron=n)),
            ]
            for name, fn in rows:
                wall = median_ms(fn, args.runs)
                cpu = median_ms(fn, args.runs, time.process_time)
                print(f"  {name:44s} {wall:7.3f} ms wall {cpu:7.3f} ms cpu")
        out = ds.nat4.sel_stims(subset="val")
        assert dict(out.sizes)["neuron"] == N_CELL - 33 and isinstance(
            out["response"].data, da.Array
        )


if __name__ == "__main__":
    main()
