"""Memory of ``nat4xr.concat`` on in-memory (numpy-backed) A1- and PEG-shaped Datasets.

Both inputs are loaded in memory (593 * scale stims; 849 and 398 cells, 20
repeats, 150 bins). Reports the peak of traced allocations (numpy's included)
while concatenating, while computing a small selection of the result (2 stims
x all cells) and the wall time of the concat, next to the inputs' size.

Run: ``python benchmarks/concat_memory.py [--scale 0.25] [--est-only-peg]``
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import pandas as pd
import xarray as xr

import nat4xr
from nat4xr.schema import make_dataset

N_STIM, N_REP, N_TIME, N_FREQ = 593, 20, 150, 18


def loaded(area: str, n_stim: int, n_cell: int, n_rep: int, seed: int) -> xr.Dataset:
    """A numpy-backed Dataset of random counts (every stim covered by every cell)."""
    rng = np.random.default_rng(seed)
    stims = pd.DataFrame(
        {"subset": ["est"] * n_stim, "n_repeats": [n_rep] * n_stim},
        index=[f"STIM_cat{i:03d}.wav" for i in range(n_stim)],
    )
    neurons = pd.DataFrame(
        {
            "area": [area] * n_cell,
            "site": ["ARM029a"] * n_cell,
            "animal": ["ARM"] * n_cell,
            "electrode": np.ones(n_cell, dtype=np.int64),
            "unit": np.arange(n_cell, dtype=np.int64),
            "auditory": np.ones(n_cell, dtype=bool),
        },
        index=[f"{area}-{i:03d}" for i in range(n_cell)],
    )
    response = rng.integers(0, 4, (n_stim, n_cell, n_rep, N_TIME), dtype=np.uint8)
    response = response.astype(np.float32)
    spectrogram = rng.random((n_stim, N_FREQ, N_TIME), dtype=np.float32)
    coverage = np.ones((n_stim, n_cell), dtype=bool)
    return make_dataset(
        response, spectrogram, stims, neurons, coverage=coverage, attrs={"area": area}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.25, help="fraction of the 593 stims")
    parser.add_argument(
        "--est-only-peg", action="store_true", help="PEG with one repeat (padded to 20)"
    )
    args = parser.parse_args()
    n_stim = max(2, round(N_STIM * args.scale))
    a1 = loaded("A1", n_stim, 849, N_REP, seed=1)
    peg = loaded("PEG", n_stim, 398, 1 if args.est_only_peg else N_REP, seed=2)
    inputs = a1["response"].nbytes + peg["response"].nbytes
    print(f"inputs: response {inputs / 2**20:,.0f} MiB ({n_stim} stims each)")

    tracemalloc.start()
    t0 = time.perf_counter()
    joint = nat4xr.concat([a1, peg])
    took = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    out = joint["response"]
    print(
        f"concat: peak {peak / 2**20:,.1f} MiB in {took:.2f} s; "
        f"output {out.nbytes / 2**20:,.0f} MiB"
    )

    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    part = out.isel(stim=[0, n_stim]).values  # one A1 and one PEG stim, every cell
    _, peak = tracemalloc.get_traced_memory()
    print(
        f"2 stims x all cells: peak {(peak - before) / 2**20:,.1f} MiB "
        f"(result {part.nbytes / 2**20:,.1f} MiB)"
    )
    tracemalloc.stop()


if __name__ == "__main__":
    main()
