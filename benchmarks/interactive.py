"""Interactive calls on full-scale A1: noise ceiling, PSTH and eager loads, each in a fresh process.

Every row runs in its own child process: the setup (open the cache, select)
is not timed, then the call is, with the memory it takes on top of what the
process held before it:

- ``peak RSS``: growth of the peak resident set (``VmHWM``, reset before the
  call through ``/proc/self/clear_refs``). It counts the cache file's pages
  that the engine's memory map touches (page cache, dropped by the kernel
  whenever it needs the memory);
- ``peak heap``: growth of the anonymous resident memory (``RssAnon``,
  sampled every millisecond): what the call allocates;
- ``held``: anonymous memory still held after the call returned.

deepSTRF 0.1.0's own noise-ceiling functions (``snr`` and the split-half
CCmax that ``compute_neuron_quality`` uses) run on the same responses, as
torch tensors, when deepSTRF is importable (``NAT4XR_DEEPSTRF_PATH``).
Run it against another checkout with ``PYTHONPATH=<checkout>`` to get the
"before" column; rows whose call does not exist there print ``n/a``.

Usage::

    NAT4XR_CACHE_DIR=/tmp/cache NAT4XR_DEEPSTRF_PATH=/tmp/deepstrf \\
        python benchmarks/interactive.py --release /tmp/nat4-full --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

ROWS = {
    "nc-dask": "val.nat4.noise_ceiling().compute()  (dask)",
    "nc-none": "val.nat4.noise_ceiling()  (chunks=None)",
    "nc-loaded": "val.nat4.noise_ceiling()  (val loaded)",
    "snr-deepstrf": "deepSTRF `snr(resp, reduction='none')`  (val loaded, torch)",
    "ccmax-deepstrf": "deepSTRF `_ccmax_per_neuron` (126 splits), {cells} cells  (val loaded)",
    "psth-dask": "val.nat4.psth().compute()  (dask)",
    "psth-loaded": "val.nat4.psth()  (val loaded)",
    "zscore-dask": "val.nat4.normalize('zscore')  (dask: the statistics)",
    "zscore-loaded": "val.nat4.normalize('zscore')  (val loaded: statistics and result)",
    "est-load": "est.load()  (dask)",
    "est-nat4-load": "est.nat4.load()  (dask)",
    "est-none-nat4-load": "est.nat4.load()  (chunks=None)",
    "concat-load": "concat([A1, PEG]) -> val -> .load()",
    "concat-nat4-load": "concat([A1, PEG]) -> val -> .nat4.load()",
    "concat-none-nat4-load": "concat([A1, PEG]) -> val -> .nat4.load()  (chunks=None)",
}


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class _Sampler(threading.Thread):
    """Largest ``RssAnon`` seen while running, sampled every millisecond."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _status("RssAnon")
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.001):
            self.peak = max(self.peak, _status("RssAnon"))


def _setup(name: str, release: str):
    import nat4xr

    warnings.simplefilter("ignore")
    chunks = None if "none" in name else "auto"
    a1 = nat4xr.open_nat4("A1", path=release, chunks=chunks, progress=False)
    if name.startswith("concat"):
        peg = nat4xr.open_nat4("PEG", path=release, chunks=chunks, progress=False)
        both = nat4xr.concat([a1, peg])
        val = both.nat4.sel_stims(subset="val")
        return (lambda: val.load()) if name == "concat-load" else (lambda: val.nat4.load())
    if name.startswith("est"):
        est = a1.nat4.sel_stims(subset="est")
        return (lambda: est.load()) if name == "est-load" else (lambda: est.nat4.load())
    val = a1.nat4.sel_stims(subset="val")
    if name.endswith("loaded") or "deepstrf" in name:
        val = val.load()
    if name.startswith("psth"):
        return lambda: val.nat4.psth().compute()
    if name.startswith("zscore"):
        return lambda: val.nat4.normalize("zscore")
    if "deepstrf" in name:
        return _deepstrf_call(val, name, int(os.environ.get("DEEPSTRF_CELLS", "40")))
    return lambda: val.nat4.noise_ceiling().compute()


def _deepstrf_call(val, name: str, cells: int):
    sys.path.insert(0, str(Path(__file__).parent))
    from _deepstrf import _import_from_deepstrf

    perf = _import_from_deepstrf(lambda: __import__("deepSTRF.metrics.performance").metrics)
    if perf is None:
        raise SystemExit(3)
    import torch

    resp = torch.from_numpy(val["response"].values)
    valid = ~torch.isnan(resp)
    perf = perf.performance

    if name == "snr-deepstrf":
        return lambda: perf.snr(resp, reduction="none")
    # what compute_neuron_quality runs: a Python loop per (stim, cell), each listing
    # every half-split of the repeats (C(20, 10) of them), so it is timed on a few cells
    part, part_valid = resp[:, :cells].contiguous(), valid[:, :cells].contiguous()
    return lambda: perf._ccmax_per_neuron(part, part_valid, 126)


def child(name: str, release: str) -> None:
    try:
        call = _setup(name, release)
    except AttributeError:  # the checkout has no such call
        print(json.dumps({"na": True}))
        return
    gc.collect()
    rss0, anon0 = _status("VmRSS"), _status("RssAnon")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    sampler = _Sampler()
    sampler.start()
    t0 = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - t0
    sampler.done.set()
    sampler.join()
    peak_rss = _status("VmHWM") - rss0
    del result
    gc.collect()
    held = _status("RssAnon") - anon0
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss": peak_rss / 2**20,
                "peak_heap": (sampler.peak - anon0) / 2**20,
                "held": held / 2**20,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--release", default="/tmp/nat4-full")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", action="append", choices=list(ROWS))
    parser.add_argument("--deepstrf-cells", type=int, default=40, help="cells for deepSTRF's CCmax")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["DEEPSTRF_CELLS"] = str(args.deepstrf_cells)
    if args.child:
        child(args.child, args.release)
        return
    print("| call | time (min of runs) | peak RSS | peak heap | held after |")
    print("|---|---|---|---|---|")
    for name in args.only or list(ROWS):
        label = ROWS[name].format(cells=args.deepstrf_cells)
        runs = []
        for _ in range(1 if "deepstrf" in name else args.repeat):
            proc = subprocess.run(
                [sys.executable, __file__, "--release", args.release, "--child", name],
                capture_output=True,
                text=True,
                env=os.environ,
            )
            if proc.returncode != 0:
                print(f"| {label} | failed: {proc.stderr.strip()[-200:]} | | | |")
                break
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        if not runs:
            continue
        if runs[0].get("na"):
            print(f"| {label} | n/a | | | |")
            continue
        best = min(runs, key=lambda r: r["seconds"])
        times = ", ".join(f"{r['seconds']:.2f}" for r in runs)
        heap, held = min(r["peak_heap"] for r in runs), min(r["held"] for r in runs)
        print(
            f"| {label} | {best['seconds']:.2f} s ({times}) | "
            f"{min(r['peak_rss'] for r in runs):.0f} MiB | "
            f"{heap:.0f} MiB | {held:.0f} MiB |",
            flush=True,
        )


if __name__ == "__main__":
    main()
