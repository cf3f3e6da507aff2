"""Byte flips and truncations injected into a cache file, with each outcome classified.

Used by ``tests/test_integrity.py``; run directly for the counts in
docs/reliability.md::

    python tests/faultinjection.py --cases 100 --seed 0

Every case copies a freshly written cache file, damages the copy, then opens
it with :func:`nat4xr.cachefile.open_cache` and loads everything, in a forked
child process (so a crash or a hang is seen, not suffered). Outcomes:

- ``identical``: every value, coordinate and attribute as written;
- ``error at open`` / ``error at read``: a :class:`~nat4xr.errors.CacheError`
  naming the file (``open_nat4`` rebuilds on the first);
- ``WRONG``: different values without an error (must never happen);
- ``bare <Type>``: another exception type reached the caller;
- ``crash`` / ``hang``: the child died or took over 60 s.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

import nat4xr
from nat4xr.cachefile import open_cache, write_cache
from nat4xr.errors import CacheError

REGIONS = (
    "raw chunks",
    "compressed chunks",
    "chunk index",
    "coordinates",
    "attributes",
    "HDF5 metadata",
)


def sample_dataset() -> xr.Dataset:
    """A small Dataset with est (compressed) and val (unfiltered) sounds, text and bool coords."""
    return nat4xr.synthetic.random_dataset(n_est=8, n_val=3, n_neurons=12, n_time=20, seed=2)


def regions(path: Path) -> dict[str, list[tuple[int, int]]]:
    """Byte ranges ``[start, end)`` of each region of a cache file."""
    out: dict[str, list[tuple[int, int]]] = {name: [] for name in REGIONS}
    with open_cache(path, chunks=None) as ds:
        files = ds.response.encoding["nat4xr_source"].file
        for index in files.index.values():
            for off, n, comp in zip(
                index.offset.ravel(), index.nbytes.ravel(), index.compressed.ravel()
            ):
                if off >= 0:
                    kind = "compressed chunks" if comp else "raw chunks"
                    out[kind].append((int(off), int(off + n)))
        texts = [str(v) for v in ds.attrs.values() if isinstance(v, str) and len(str(v)) > 6]
    with h5py.File(path, "r") as f:

        def visit(name: str, obj: object) -> None:
            if not isinstance(obj, h5py.Dataset) or obj.chunks is not None:
                return
            start = obj.id.get_offset()
            if start is None:
                return
            size = obj.id.get_storage_size()
            kind = "chunk index" if name.startswith("nat4xr/") else "coordinates"
            out[kind].append((int(start), int(start + size)))

        f.visititems(visit)
    data = path.read_bytes()
    for text in texts:
        raw = text.encode()
        at = data.find(raw)
        if at >= 0:
            out["attributes"].append((at, at + len(raw)))
    taken = np.zeros(len(data), bool)
    for ranges in out.values():
        for a, b in ranges:
            taken[a:b] = True
    free = np.flatnonzero(~taken)
    # runs of bytes no data region claims: superblock, object headers, B-trees, heaps
    breaks = np.flatnonzero(np.diff(free) != 1) + 1
    for run in np.split(free, breaks):
        if len(run):
            out["HDF5 metadata"].append((int(run[0]), int(run[-1]) + 1))
    return out


def classify(path: Path, reference: xr.Dataset) -> str:
    """Open and load ``path``; the outcome as one of the module's labels."""
    try:
        ds = open_cache(path, chunks=None)
    except CacheError as exc:
        return "error at open" if str(path) in str(exc) else "CacheError without the file"
    try:
        with ds:
            loaded = ds.load()
    except CacheError as exc:
        return "error at read" if str(path) in str(exc) else "CacheError without the file"
    if loaded.identical(reference):
        return "identical"
    return "WRONG"


def in_child(path: Path, reference: xr.Dataset, timeout: float = 60.0) -> str:
    """:func:`classify` in a forked child: a crash or a hang becomes an outcome."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        try:
            label = classify(path, reference)
        except BaseException as exc:  # anything that is not a CacheError
            label = f"bare {type(exc).__name__}: {str(exc)[:80]}"
        os.write(write, label.encode())
        os._exit(0)
    os.close(write)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            return "hang"
        time.sleep(0.002)
    label = os.read(read, 4096).decode()
    os.close(read)
    if os.WIFSIGNALED(status):
        return f"crash (signal {os.WTERMSIG(status)})"
    return label or "crash (no result)"


def run(cases: int, seed: int, workdir: Path) -> dict[str, collections.Counter]:
    """``cases`` byte flips per region plus ``cases`` truncations; outcome counts per kind."""
    reference = sample_dataset()
    original = write_cache(reference, workdir / "original.nc")
    reference = open_cache(original, chunks=None).load()
    size = original.stat().st_size
    where = regions(original)
    rng = np.random.default_rng(seed)
    counts: dict[str, collections.Counter] = {}
    target = workdir / "damaged.nc"
    for region in REGIONS:
        ranges = where[region]
        counts[region] = collections.Counter()
        if not ranges:
            continue
        lengths = np.array([b - a for a, b in ranges], dtype=float)
        for _ in range(cases):
            a, b = ranges[rng.choice(len(ranges), p=lengths / lengths.sum())]
            offset = int(rng.integers(a, b))
            shutil.copyfile(original, target)
            with open(target, "r+b") as fh:
                fh.seek(offset)
                byte = fh.read(1)[0]
                fh.seek(offset)
                fh.write(bytes([byte ^ int(rng.integers(1, 256))]))
            counts[region][in_child(target, reference)] += 1
    counts["truncation"] = collections.Counter()
    for _ in range(cases):
        shutil.copyfile(original, target)
        os.truncate(target, int(rng.integers(0, size)))
        counts["truncation"][in_child(target, reference)] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100, help="cases per region")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        counts = run(args.cases, args.seed, Path(tmp))
        elapsed = time.perf_counter() - t0
    print("| region | cases | " + " | ".join(["outcomes"]) + " |")
    print("|---|---|---|")
    for region, counter in counts.items():
        text = ", ".join(f"{k} {v}" for k, v in sorted(counter.items()))
        print(f"| {region} | {sum(counter.values())} | {text} |")
    print(json.dumps({k: dict(v) for k, v in counts.items()}), file=sys.stderr)
    print(f"{elapsed:.1f} s")


if __name__ == "__main__":
    main()
