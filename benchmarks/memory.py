"""Peak memory and wall time of nat4xr beside deepSTRF 0.1.0, each workload in a fresh process.

Three parts, on full-scale synthetic A1 and PEG releases (written if missing):

- ``build``: the cold build of each area: nat4xr ``build_dataset(root, area)``,
  nat4xr ``open_nat4(area)`` with an empty cache folder (build + cache write +
  open), deepSTRF ``NAT4Dataset(area=area, subset='all')``;
- ``lazy``: the reference notebook's flow: both areas opened (nat4xr from their
  caches, written first if missing), a val selection and an auditory-cell
  selection of each, one torch batch (val sounds, auditory cells, B=4) of
  each, the cross-area concatenation; deepSTRF the same with its API
  (``select_stims_by_attr``, ``select_pop_by_nrn_attr``, ``DataLoader`` with
  ``neural_collate``, ``concat_neural_datasets``);
- ``eager``: nat4xr's flow with ``open_nat4(..., chunks=None)``: the val and
  est selections ``.load()``-ed, the concatenation of the loaded val selections
  computed, the auditory selections and their concatenation left lazily
  indexed (deepSTRF has a single, eager mode: its row is in ``lazy``).

Each workload runs in a child process under an address-space cap
(``--cap-gb``, ``RLIMIT_AS``); a child that hits it is reported as
"exceeded" instead of pushing the machine into swap. Peak RSS is the child's
own (``os.wait4``), wall time is the workload's (imports included, the
interpreter's start-up not). See ``_deepstrf.py`` for installing deepSTRF
beside (``NAT4XR_DEEPSTRF_PATH``); without it its rows are skipped.

Usage::

    NAT4XR_DEEPSTRF_PATH=/tmp/deepstrf python benchmarks/memory.py \\
        --a1 /tmp/nat4-full --peg /tmp/mem-bench/nat4-peg --cache /tmp/mem-bench/cache
    python benchmarks/memory.py --only build --skip-deepstrf
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from build import ensure_release, unpack_sites  # noqa: E402

AREAS = ("A1", "PEG")


# -- the workloads (run in the child) ----------------------------------------------


def _quiet() -> None:
    warnings.simplefilter("ignore")


def nat4xr_build(roots: dict[str, Path], area: str, cache: Path) -> dict[str, Any]:
    """``build_dataset(root, area)``: the Dataset in memory, response as dask blocks."""
    from nat4xr.build import build_dataset

    ds = build_dataset(roots[area], area)
    return {"shape": dict(ds.sizes)}


def nat4xr_cold_open(roots: dict[str, Path], area: str, cache: Path) -> dict[str, Any]:
    """``open_nat4(area)`` into an empty cache folder: build, write the cache, open it."""
    import nat4xr

    ds = nat4xr.open_nat4(area, path=roots[area], progress=False)
    return {"shape": dict(ds.sizes)}


def deepstrf_build(roots: dict[str, Path], area: str, cache: Path) -> dict[str, Any]:
    """deepSTRF's ``NAT4Dataset(area=area, subset='all')``."""
    from _deepstrf import load_deepstrf

    loaded = load_deepstrf()
    if loaded is None:
        return {"skipped": True}
    ds = loaded[0](path=str(roots[area]), area=area, subset="all")
    return {"shape": {"stim": len(ds.stims), "neuron": ds.N_neurons}}


def _nat4xr_flow(roots: dict[str, Path], chunks: Any) -> dict[str, Any]:
    import nat4xr

    opened = {a: nat4xr.open_nat4(a, path=roots[a], chunks=chunks, progress=False) for a in AREAS}
    out: dict[str, Any] = {}
    parts = []
    for area, ds in opened.items():
        val = ds.nat4.sel_stims(subset="val")
        aud = ds.nat4.sel_neurons(auditory=True)
        if chunks is None:
            val, aud = val.load(), aud.load()
        batch = next(iter(val.nat4.sel_neurons(auditory=True).nat4.to_torch(batch_size=4)))
        out[area] = {
            "val": dict(val.sizes),
            "auditory": dict(aud.sizes),
            "batch": list(batch["responses"].shape),
        }
        parts.append(aud if chunks is None else ds)
    joint = nat4xr.concat(parts, names=list(AREAS))
    if chunks is None:
        joint = joint.load()
    out["joint"] = {**dict(joint.sizes), "coverage": int(joint["coverage"].sum())}
    return out


def nat4xr_lazy(roots: dict[str, Path], area: str, cache: Path) -> dict[str, Any]:
    """The notebook's flow on lazy Datasets opened from the caches."""
    return _nat4xr_flow(roots, "auto")


def nat4xr_eager(roots: dict[str, Path], area: str, cache: Path) -> dict[str, Any]:
    """The notebook's flow opened with ``chunks=None`` (no dask), loading what it uses.

    Each area's val and est selections are loaded into memory (the est one
    holds one repeat: the selection trims the axis to what it holds); the
    auditory-cell selection of all sounds and the cross-area concatenation of
    those stay lazily indexed (loading them is the dense size, 6 GB for A1,
    the user's explicit choice); the concatenation of the loaded val
    selections is computed into memory.
    """
    import nat4xr

    opened = {a: nat4xr.open_nat4(a, path=roots[a], chunks=None, progress=False) for a in AREAS}
    out: dict[str, Any] = {}
    vals, auds = [], []
    for area, ds in opened.items():
        val = ds.nat4.sel_stims(subset="val").load()
        est = ds.nat4.sel_stims(subset="est").load()
        aud = ds.nat4.sel_neurons(auditory=True)
        batch = next(iter(val.nat4.sel_neurons(auditory=True).nat4.to_torch(batch_size=4)))
        out[area] = {
            "val": dict(val.sizes),
            "est": dict(est.sizes),
            "auditory": dict(aud.sizes),
            "batch": list(batch["responses"].shape),
        }
        vals.append(val)
        auds.append(aud)
    joint = nat4xr.concat(auds, names=list(AREAS))
    joint_val = nat4xr.concat(vals, names=list(AREAS)).load()
    out["joint"] = {**dict(joint.sizes), "coverage": int(joint["coverage"].sum())}
    out["joint_val"] = {**dict(joint_val.sizes), "nbytes": int(joint_val["response"].nbytes)}
    return out


def deepstrf_flow(roots: dict[str, Path], area: str, cache: Path) -> dict[str, Any]:
    """The notebook's flow through deepSTRF's API (its datasets are always in memory)."""
    from _deepstrf import load_deepstrf_flow

    loaded = load_deepstrf_flow()
    if loaded is None:
        return {"skipped": True}
    NAT4Dataset, neural_collate, concat_neural_datasets = loaded
    from torch.utils.data import DataLoader

    opened = {a: NAT4Dataset(path=str(roots[a]), area=a, subset="all") for a in AREAS}
    out: dict[str, Any] = {}
    for area, ds in opened.items():
        ds.select_stims_by_attr("subset", "val")
        n_val = len(ds._selected())
        ds.reset_stim_selection()
        ds.reset_pop_selection()
        ds.select_pop_by_nrn_attr("auditory", True)
        n_aud = len(ds._selected())
        ds.reset_pop_selection()
        ds.select_stims_by_attr("subset", "val")
        ds.select_pop_by_nrn_attr("auditory", True)
        loader = DataLoader(ds, batch_size=4, shuffle=False, collate_fn=neural_collate)
        batch = next(iter(loader))
        ds.reset_stim_selection()
        ds.reset_pop_selection()
        out[area] = {
            "val_cells": n_val,
            "auditory": n_aud,
            "batch": list(batch["responses"].shape),
        }
    joint = concat_neural_datasets(list(opened.values()))
    out["joint"] = {
        "stim": len(joint.stims),
        "neuron": joint.N_neurons,
        "coverage": int(joint.nrn_masks.sum().item()),
    }
    return out


def nat4xr_prepare(roots: dict[str, Path], area: str, cache: Path) -> dict[str, Any]:
    """Write the caches the lazy and eager flows open (not measured)."""
    import nat4xr

    for a in AREAS:
        nat4xr.open_nat4(a, path=roots[a], progress=False).close()
    return {}


WORKLOADS: dict[str, Callable[[dict[str, Path], str, Path], dict[str, Any]]] = {
    f.__name__: f
    for f in (
        nat4xr_build,
        nat4xr_cold_open,
        deepstrf_build,
        nat4xr_lazy,
        nat4xr_eager,
        deepstrf_flow,
        nat4xr_prepare,
    )
}


def child(name: str, roots: dict[str, Path], area: str, cache: Path, cap_gb: float) -> None:
    """Run one workload under the address-space cap and print its result as JSON."""
    cap = int(cap_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    os.environ["NAT4XR_CACHE_DIR"] = str(cache)
    _quiet()
    t0 = time.perf_counter()
    try:
        result = WORKLOADS[name](roots, area, cache)
    except MemoryError:
        result = {"exceeded": True}
    result["seconds"] = time.perf_counter() - t0
    print(json.dumps(result), flush=True)


# -- the parent ---------------------------------------------------------------------


def run(name: str, args: argparse.Namespace, area: str, cache: Path) -> dict[str, Any]:
    """One workload in a fresh process: its result and its own peak RSS (MiB).

    The child is reaped with ``os.wait4``, whose usage is the child's alone
    (``RUSAGE_CHILDREN`` would give the largest of all children so far).
    """
    cmd = [sys.executable, __file__, "--child", name, "--area", area, "--cache", str(cache)]
    cmd += ["--a1", str(args.a1), "--peg", str(args.peg), "--cap-gb", str(args.cap_gb)]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        stdout = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read()
    lines = stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        result: dict[str, Any] = json.loads(lines[-1])
    else:
        tail = stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        memory = "MemoryError" in stderr or "allocate" in stderr or proc.returncode < 0
        result = {"exceeded": True} if memory else {"failed": tail[0]}
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
    return result


def _cell(result: dict[str, Any], deepstrf: dict[str, Any] | None) -> tuple[str, str, str]:
    if result.get("skipped"):
        return "skipped", "", ""
    if result.get("exceeded"):
        return f"exceeded ({result['peak_rss_mib']:.0f} MiB)", "", ""
    if "failed" in result:
        return "failed: " + result["failed"][:60], "", ""
    ratio = ""
    if deepstrf and "seconds" in deepstrf and not deepstrf.get("skipped"):
        ratio = (
            f"{result['peak_rss_mib'] / deepstrf['peak_rss_mib']:.2f}x RSS, "
            f"{deepstrf['seconds'] / result['seconds']:.1f}x faster"
        )
    return f"{result['peak_rss_mib']:.0f} MiB", f"{result['seconds']:.1f} s", ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a1", type=Path, default=Path("/tmp/nat4-full"))
    parser.add_argument("--peg", type=Path, default=Path("/tmp/mem-bench/nat4-peg"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/mem-bench/cache"))
    parser.add_argument("--only", choices=["build", "lazy", "eager"], action="append")
    parser.add_argument("--areas", nargs="+", default=list(AREAS), choices=AREAS)
    parser.add_argument("--cap-gb", type=float, default=20.0)
    parser.add_argument("--skip-deepstrf", action="store_true")
    parser.add_argument("--child", choices=sorted(WORKLOADS))
    parser.add_argument("--area", default="A1")
    args = parser.parse_args()
    roots = {"A1": args.a1, "PEG": args.peg}
    if args.child:
        child(args.child, roots, args.area, args.cache, args.cap_gb)
        return
    for area, root in roots.items():
        ensure_release(root, area)
        if not args.skip_deepstrf:
            unpack_sites(root, area)
    args.cache.mkdir(parents=True, exist_ok=True)
    parts = args.only or ["build", "lazy", "eager"]
    rows: list[tuple[str, str, tuple[str, str, str]]] = []

    def add(part: str, label: str, result: dict[str, Any], ref: dict | None = None) -> None:
        rows.append((part, label, _cell(result, ref)))
        print(f"{part:6s} {label:44s} {json.dumps(result)}", flush=True)

    if "build" in parts:
        for area in args.areas:
            theirs = {"skipped": True}
            if not args.skip_deepstrf:
                theirs = run("deepstrf_build", args, area, args.cache)
            add("build", f"deepSTRF NAT4Dataset({area}, 'all')", theirs)
            add(
                "build",
                f"nat4xr build_dataset({area})",
                run("nat4xr_build", args, area, args.cache),
                theirs,
            )
            with tempfile.TemporaryDirectory(dir=args.cache.parent) as empty:
                cold = run("nat4xr_cold_open", args, area, Path(empty))
            add("build", f"nat4xr open_nat4({area}), cold", cold, theirs)
    if {"lazy", "eager"} & set(parts):
        run("nat4xr_prepare", args, "A1", args.cache)
    theirs = {"skipped": True}
    if "lazy" in parts:
        if not args.skip_deepstrf:
            theirs = run("deepstrf_flow", args, "A1", args.cache)
        add("lazy", "deepSTRF notebook flow (A1 + PEG)", theirs)
        add(
            "lazy", "nat4xr notebook flow, lazy", run("nat4xr_lazy", args, "A1", args.cache), theirs
        )
    if "eager" in parts:
        ref = theirs if not theirs.get("skipped") else None
        add(
            "eager", "nat4xr notebook flow, eager", run("nat4xr_eager", args, "A1", args.cache), ref
        )

    print()
    print("| part | workload | peak RSS | wall time | vs deepSTRF |")
    print("|---|---|---|---|---|")
    for part, label, (rss, secs, ratio) in rows:
        print(f"| {part} | {label} | {rss} | {secs} | {ratio} |")


if __name__ == "__main__":
    main()
