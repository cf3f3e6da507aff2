"""Time the netCDF cache: cold open (build + write) and warm open + one sound's read.

Usage::

    python benchmarks/open_cache.py                       # writes a full-scale A1 release
    python benchmarks/open_cache.py --release /tmp/nat4_full

Targets on the reference machine (2 cores): cold ``open_nat4`` under 8 s,
warm ``open_nat4`` plus reading one validation sound's responses for every
cell under 0.2 s. Prints both, the cache file size against the dense size,
and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:  # doctest: +ELLIPSIS
    ...     main(["--scale", "tiny", "--release", tmp + "/rel"])
    release ...
    cold open_nat4 ...
    0
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", type=Path, help="release folder (written if absent)")
    parser.add_argument("--scale", default="full", choices=["tiny", "small", "full"])
    parser.add_argument("--area", default="A1", choices=["A1", "PEG"])
    args = parser.parse_args(argv)

    from nat4xr import synthetic
    from nat4xr.opening import open_nat4

    with tempfile.TemporaryDirectory() as scratch:
        release = args.release or Path(scratch) / "release"
        if not (release / f"{args.area}_NAT4_ozgf.fs100.ch18.tgz").is_file():
            t0 = time.perf_counter()
            synthetic.write_release(release, args.area, scale=args.scale)
            print(f"release   written in {time.perf_counter() - t0:.1f} s: {release}")
        else:
            print(f"release   reused: {release}")

        os.environ["NAT4XR_CACHE_DIR"] = str(Path(scratch) / "cache")
        warnings.simplefilter("ignore")  # the synthetic release's deliberate traps

        t0 = time.perf_counter()
        ds = open_nat4(args.area, path=release, progress=False)
        cold = time.perf_counter() - t0
        cache_file = Path(ds.encoding["source"])
        ds.close()

        t0 = time.perf_counter()
        ds = open_nat4(args.area, path=release, progress=False)
        val = ds["stim"].values[ds["subset"].values == "val"][0]
        one = ds["response"].sel(stim=val).values
        warm = time.perf_counter() - t0
        warm_open = _time(lambda: open_nat4(args.area, path=release, progress=False))
        read = _time(lambda: ds["response"].sel(stim=val).values)

        dense = ds["response"].size * 4
        print(f"cold open_nat4 (build + cache write): {cold:.2f} s   (target < 8 s)")
        print(
            f"warm open_nat4 + read one val sound {one.shape}: {warm:.3f} s   (target < 0.2 s; "
            f"best open {warm_open * 1000:.0f} ms, best read {read * 1000:.0f} ms)"
        )
        print(
            f"cache file {cache_file.stat().st_size / 1e6:.1f} MB for a dense response of "
            f"{dense / 1e9:.2f} GB; {int(np.isfinite(one).any(axis=(1, 2)).sum())} cells "
            "with data for that sound"
        )
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss_mb = rss / 1e6 if sys.platform == "darwin" else rss / 1e3
        print(f"peak RSS {rss_mb:.0f} MB")
        ds.close()
    return 0


def _time(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        if hasattr(out, "close"):
            out.close()
    return best


if __name__ == "__main__":
    sys.exit(main())
