"""Fresh-process open of a cache plus the first read, beside its floor measured in the same run.

Usage::

    python benchmarks/fresh_open.py --release /tmp/nat4-full --runs 15

Each run starts a new Python process (bytecode caching on, as on a user's
machine) that imports, opens the full-scale A1 cache and reads one
validation sound for every cell (all recorded repeats). The floor is a
process that imports xarray and h5py and reads the same bytes directly with
h5py; a second floor also makes one xarray Variable, which with dask
installed makes xarray import dask.array (~0.65 s here). All kinds alternate,
so drift on the machine hits them alike; the medians and their ratios to the
first floor are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

FLOOR = """
import sys
import xarray, h5py
with h5py.File(sys.argv[1], "r") as f:
    values = f["response"][int(sys.argv[2]), :, : int(sys.argv[3]), :]
assert values.shape[1] == int(sys.argv[3])
"""

# The same, plus one xarray Variable: with dask installed, xarray imports
# dask.array (and with it scipy.sparse) the first time it makes any Variable
# (``as_compatible_data`` checks ``isinstance(data, dask.array.Array)``), a
# cost every xarray Dataset pays and no library built on xarray can avoid.
FLOOR_XR = (
    FLOOR
    + """
xarray.Variable("x", values[0, 0])
"""
)

NAT4XR = """
import sys
import nat4xr
ds = nat4xr.open_nat4("A1", path=sys.argv[4], chunks={chunks}, progress=False)
values = ds.response.isel(stim=int(sys.argv[2]), repeat=slice(0, int(sys.argv[3]))).values
assert values.shape[1] == int(sys.argv[3])
"""


def _time(code: str, args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], check=True, env=env)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", type=Path, required=True, help="full-scale A1 release")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--cache-dir", type=Path, help="cache folder (a temporary one if absent)")
    parser.add_argument(
        "--chunks",
        nargs="+",
        default=["None", "'auto'"],
        help="open_nat4 chunks= values to time (Python literals)",
    )
    args = parser.parse_args(argv)

    import nat4xr

    with tempfile.TemporaryDirectory() as scratch:
        cache = args.cache_dir or Path(scratch)
        os.environ["NAT4XR_CACHE_DIR"] = str(cache)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the synthetic release's deliberate traps
            ds = nat4xr.open_nat4("A1", path=args.release, chunks="auto", progress=False)
        path = ds.encoding["source"]
        stim = int((ds.subset.values == "val").argmax())
        n_rep = int(ds.n_repeats.values[stim])
        ds.close()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONWARNINGS"] = "ignore"
        call = [str(path), str(stim), str(n_rep), str(args.release)]
        kinds = {
            "floor: import xarray + h5py, read with h5py": FLOOR,
            "floor + one xarray.Variable": FLOOR_XR,
        }
        for chunks in args.chunks:
            kinds[f"nat4xr: open_nat4(chunks={chunks}) + read"] = NAT4XR.format(chunks=chunks)
        for code in kinds.values():  # warm the bytecode cache and the page cache
            _time(code, call, env)
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(args.runs):
            for name, code in kinds.items():
                times[name].append(_time(code, call, env))
    floor = statistics.median(next(iter(times.values())))
    print(f"cache {path}: stim {stim}, {n_rep} repeats x {ds.sizes['neuron']} cells")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:45s} median {med:.3f} s (min {min(values):.3f})  {med / floor:.2f}x floor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
