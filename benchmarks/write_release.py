"""Time the synthetic release writer.

Usage::

    python benchmarks/write_release.py --area A1 --scale full --out /tmp/nat4_full

Prints the wall time of :func:`nat4xr.synthetic.write_release`, the peak
resident memory of the process and the size of every file written.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

from nat4xr.synthetic import write_release


def main(argv: list[str] | None = None) -> int:
    """Write one release and report time, memory and sizes.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:  # doctest: +ELLIPSIS
    ...     main(["--scale", "tiny", "--out", tmp])
    wrote A1 (tiny) ...
    0
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--area", default="A1")
    parser.add_argument("--scale", default="full", choices=["tiny", "small", "full"])
    parser.add_argument("--out", required=True, type=Path, help="release folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wav", action="store_true", help="also write wav.zip")
    parser.add_argument("--compresslevel", type=int, default=1)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    release = write_release(
        args.out,
        args.area,
        scale=args.scale,
        seed=args.seed,
        wav=args.wav,
        compresslevel=args.compresslevel,
        progress=args.progress,
    )
    elapsed = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_est, n_cells, _ = release.est_response.shape
    print(
        f"wrote {args.area} ({args.scale}): {n_cells} cells, {n_est} est + "
        f"{len(release.val_stims)} val sounds in {elapsed:.1f} s, peak RSS {peak_mb:.0f} MB"
    )
    for key, path in release.files.items():
        print(f"  {key:<11} {path.name:<32} {path.stat().st_size / 1e6:8.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
