"""The same workloads through deepSTRF 0.1.0, for the comparison in docs/benchmarks.md.

Times, on one release folder: constructing ``NAT4Dataset(subset='all')``;
``select_stims_by_attr('subset', 'val')`` + ``_selected()`` and
``select_pop_by_nrn_attr('auditory', True)`` + ``_selected()``; batches per
second over all val sounds (B=4, auditory cells) and over 64 est sounds (B=8)
with ``DataLoader(collate_fn=neural_collate)``. See ``_deepstrf.py`` for
installing deepSTRF beside (it is not a nat4xr dependency).

Usage::

    NAT4XR_DEEPSTRF_PATH=/tmp/deepstrf python benchmarks/deepstrf_reference.py --release DIR
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _deepstrf import load_deepstrf  # noqa: E402
from build import ensure_release, unpack_sites  # noqa: E402


def best_pass(loader, passes: int = 3) -> tuple[int, float]:
    """Batches in one pass over ``loader`` and the fastest of ``passes`` passes (seconds)."""
    best = float("inf")
    for _ in range(passes):
        t = time.perf_counter()
        n = sum(1 for _ in loader)
        best = min(best, time.perf_counter() - t)
    return n, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", type=Path, default=Path("/tmp/nat4xr-bench-A1"))
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    loaded = load_deepstrf()
    if loaded is None:
        sys.exit(1)
    NAT4Dataset, neural_collate = loaded
    from torch.utils.data import DataLoader, Subset

    root = ensure_release(args.release)
    unpack_sites(root)
    t0 = time.perf_counter()
    ds = NAT4Dataset(path=str(root), area="A1", subset="all")
    build = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"deepSTRF construction: {build:.2f} s, peak RSS {peak:.0f} MiB", flush=True)

    def timed(fn) -> float:
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    def sel_val():
        ds.reset_stim_selection()
        ds.reset_pop_selection()
        ds.select_stims_by_attr("subset", "val")
        ds._selected()

    def sel_aud():
        ds.reset_stim_selection()
        ds.reset_pop_selection()
        ds.select_pop_by_nrn_attr("auditory", True)
        ds._selected()

    print(f"deepSTRF select val + _selected(): {timed(sel_val) * 1e3:.2f} ms (median)")
    print(f"deepSTRF select auditory + _selected(): {timed(sel_aud) * 1e3:.2f} ms (median)")

    ds.reset_stim_selection()
    ds.reset_pop_selection()
    ds.select_stims_by_attr("subset", "val")
    ds.select_pop_by_nrn_attr("auditory", True)
    loader = DataLoader(ds, batch_size=4, shuffle=False, collate_fn=neural_collate)
    n, best = best_pass(loader)
    print(f"deepSTRF val batches (B=4, auditory): {n} in {best:.3f} s = {n / best:.1f} batches/s")

    ds.reset_stim_selection()
    ds.reset_pop_selection()
    est = [i for i, m in enumerate(ds.stim_meta) if m["subset"] == "est"][:64]
    loader = DataLoader(Subset(ds, est), batch_size=8, shuffle=False, collate_fn=neural_collate)
    n, best = best_pass(loader)
    print(f"deepSTRF est batches (B=8, 64 sounds): {n} in {best:.3f} s = {n / best:.1f} batches/s")


if __name__ == "__main__":
    main()
