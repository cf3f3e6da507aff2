"""nat4xr's and deepSTRF's PyTorch batches, timed in alternation on the same release.

Usage::

    NAT4XR_DEEPSTRF_PATH=/tmp/deepstrf python benchmarks/torch_vs_deepstrf.py --release DIR

Both loaders run in this one process over the same full-scale synthetic A1
release (written into ``--release`` if missing): deepSTRF 0.1.0's
``NAT4Dataset`` (constructed once, ~40 s) with ``DataLoader(collate_fn=
neural_collate)``, and ``to_torch`` over ``open_nat4`` (cache built on first
use, then opened lazily). Each round times one pass of each loader back to
back, in alternating order, so both see the same machine state; the report
gives each side's median batches per second and the median and lowest
per-round ratio. Workloads (both warm, ``num_workers=0``):

- all val sounds, auditory cells, batch size 4 (nat4xr: auditory cells with
  val data, as deepSTRF's batches hold nothing for the others);
- the first 64 est sounds, auditory cells, batch size 8.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _deepstrf import load_deepstrf  # noqa: E402
from build import ensure_release, unpack_sites  # noqa: E402
from torch_batches import workloads  # noqa: E402


def one_pass(loader) -> tuple[int, float]:
    """Batches in one pass over ``loader`` and its seconds."""
    t0 = time.perf_counter()
    n = sum(1 for _ in loader)
    return n, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print one line per workload."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", type=Path, default=Path("/tmp/nat4xr-bench-A1"))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    loaded = load_deepstrf()
    if loaded is None:
        return 1
    NAT4Dataset, neural_collate = loaded
    from torch.utils.data import DataLoader, Subset

    import nat4xr
    from nat4xr.torch import to_torch

    root = ensure_release(args.release)
    unpack_sites(root)
    if args.cache_dir is not None:
        os.environ["NAT4XR_CACHE_DIR"] = str(args.cache_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nat4xr.Nat4Warning)
        ds = nat4xr.open_nat4("A1", path=root, progress=False)
    ours = workloads(ds)

    t0 = time.perf_counter()
    theirs = NAT4Dataset(path=str(root), area="A1", subset="all")
    print(f"deepSTRF construction: {time.perf_counter() - t0:.1f} s", flush=True)
    theirs.select_stims_by_attr("subset", "val")
    theirs.select_pop_by_nrn_attr("auditory", True)
    loaders = {
        "val": (
            DataLoader(theirs, batch_size=4, shuffle=False, collate_fn=neural_collate),
            to_torch(ours["val"], batch_size=4),
        )
    }
    for name, (deep, mine) in loaders.items():
        report(name, deep, mine, args.rounds)
    theirs.reset_stim_selection()
    theirs.reset_pop_selection()
    est = [i for i, m in enumerate(theirs.stim_meta) if m["subset"] == "est"][:64]
    theirs.select_pop_by_nrn_attr("auditory", True)
    deep = DataLoader(Subset(theirs, est), batch_size=8, shuffle=False, collate_fn=neural_collate)
    report("est", deep, to_torch(ours["est"], batch_size=8), args.rounds)
    return 0


def report(name: str, deep, mine, rounds: int) -> None:
    """Time ``rounds`` alternating passes of both loaders after one warm-up pass each."""
    one_pass(deep)
    one_pass(mine)
    rates: dict[str, list[float]] = {"deepSTRF": [], "nat4xr": []}
    shapes = {}
    for k in range(rounds):
        order = [("deepSTRF", deep), ("nat4xr", mine)]
        for label, loader in order if k % 2 == 0 else order[::-1]:
            n, seconds = one_pass(loader)
            rates[label].append(n / seconds)
            shapes[label] = n
    ratios = [a / b for a, b in zip(rates["nat4xr"], rates["deepSTRF"])]
    ours, theirs = next(iter(mine))["responses"].shape, next(iter(deep))["responses"].shape
    print(
        f"{name}: {shapes['nat4xr']} batches, first {tuple(ours)} (deepSTRF {tuple(theirs)}); "
        f"deepSTRF {statistics.median(rates['deepSTRF']):.1f} batches/s, "
        f"nat4xr {statistics.median(rates['nat4xr']):.1f} batches/s (medians of {rounds}); "
        f"ratio median {statistics.median(ratios):.1f}x, lowest {min(ratios):.1f}x",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
