"""Cold build of a full-scale A1 release: nat4xr beside deepSTRF 0.1.0.

Each loader runs in a fresh child process, so its wall time and peak RSS are
its own. nat4xr is timed without the cache (``build_dataset``); deepSTRF is
timed constructing ``NAT4Dataset(subset='all')`` (see ``_deepstrf.py`` for
installing it beside).

Usage::

    python benchmarks/build.py --release /tmp/nat4-full      # writes it if missing
    python benchmarks/build.py --release /tmp/nat4-full --repeat 3 --skip-deepstrf
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def ensure_release(root: Path, area: str = "A1") -> Path:
    """Write a full-scale synthetic release at ``root`` unless one is there."""
    if not (root / f"{area}_NAT4_ozgf.fs100.ch18.tgz").exists():
        from nat4xr.synthetic import write_release

        t0 = time.perf_counter()
        write_release(root, area, scale="full", seed=0)
        print(f"wrote full-scale {area} release in {time.perf_counter() - t0:.1f} s", flush=True)
    return root


def unpack_sites(root: Path, area: str = "A1") -> None:
    """deepSTRF reads ``<area>_single_sites/`` as a folder; unpack the zip once for it."""
    if not (root / f"{area}_single_sites").is_dir():
        with zipfile.ZipFile(root / f"{area}_single_sites.zip") as zf:
            zf.extractall(root)


def child(kind: str, root: Path, area: str, subset: str) -> None:
    t0 = time.perf_counter()
    if kind == "nat4xr":
        from nat4xr.build import build_dataset

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = build_dataset(root, area, subset=subset)
        shape = dict(ds.sizes)
    else:
        sys.path.insert(0, str(HERE))
        from _deepstrf import load_deepstrf

        loaded = load_deepstrf()
        if loaded is None:
            print(json.dumps({"skipped": True}))
            return
        ds = loaded[0](path=str(root), area=area, subset=subset)
        shape = {"stim": len(ds.stims), "neuron": ds.N_neurons}
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak, "shape": shape}))


def run_child(kind: str, root: Path, area: str, subset: str) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--release", str(root), "--area", area]
    cmd += ["--subset", subset]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", type=Path, default=Path("/tmp/nat4xr-bench-A1"))
    parser.add_argument("--area", default="A1")
    parser.add_argument("--subset", default="all")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-deepstrf", action="store_true")
    parser.add_argument("--child", choices=["nat4xr", "deepstrf"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.release, args.area, args.subset)
        return
    root = ensure_release(args.release, args.area)
    kinds = ["nat4xr"] if args.skip_deepstrf else ["nat4xr", "deepstrf"]
    if "deepstrf" in kinds:
        unpack_sites(root, args.area)
    for kind in kinds:
        runs = [run_child(kind, root, args.area, args.subset) for _ in range(args.repeat)]
        if runs[0].get("skipped"):
            print(f"{kind:9s} skipped (not installed)")
            continue
        secs = [r["seconds"] for r in runs]
        peak = max(r["peak_rss_mib"] for r in runs)
        median = statistics.median(secs)
        print(
            f"{kind:9s} cold build {args.area}/{args.subset}: median {median:.2f} s "
            f"(runs: {', '.join(f'{s:.2f}' for s in secs)}), peak RSS {peak:.0f} MiB, "
            f"shape {runs[0]['shape']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
