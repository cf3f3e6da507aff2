"""Scoring a sweep: 100 models' predictions of full-scale A1 val in one ``evaluate`` call.

Usage::

    NAT4XR_CACHE_DIR=/tmp/cache python benchmarks/sweep.py --release /tmp/nat4-full \\
        [--models 100] [--loop-models 10] [--runs 1] [--numpy]

On the A1 validation sounds of a release (loaded into memory first, not
timed), with ``--models`` noisy predictions stacked along a ``model`` dim
(each the PSTH plus noise of its own size), this times:

- ``nat4xr.evaluate`` of one model, all metrics (the one-model figure);
- ``nat4xr.evaluate`` of the whole sweep in one call, all metrics, then
  every metric but ``r_floor``, with the compiled kernels (and, with
  ``--numpy``, with numpy only: ``NAT4XR_NUMBA=0``);
- a Python loop calling ``evaluate`` once per model, on ``--loop-models``
  models, scaled to ``--models``;

and checks that the sweep's scores equal the per-model calls on those
models (largest difference, NaN pattern). Prints the load average beside
each figure, and the CPU time of the process (every thread) beside the wall
time: on a shared machine the CPU time is the steadier figure.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import xarray as xr

import nat4xr


def _load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def best_of(runs: int, func, *args, **kwargs) -> tuple[float, float, object]:
    """Best wall time, the CPU time of that run (every thread), and the result."""
    best, cpu, out = np.inf, np.nan, None
    for _ in range(runs):
        c0, t0 = time.process_time(), time.perf_counter()
        out = func(*args, **kwargs)
        wall = time.perf_counter() - t0
        if wall < best:
            best, cpu = wall, time.process_time() - c0
    return best, cpu, out


def sweep_predictions(val: xr.Dataset, n_models: int, seed: int = 0) -> xr.DataArray:
    """``(model, stim, neuron, time)``: the PSTH plus Gaussian noise of a size per model."""
    psth = val["response"].mean("repeat").values.astype(np.float64)
    rng = np.random.default_rng(seed)
    noise = np.linspace(0.1, 2.0, n_models)[:, None, None, None]
    values = psth[None] + noise * rng.standard_normal((n_models, *psth.shape))
    coords = {
        "model": [f"model-{k:03d}" for k in range(n_models)],
        "stim": val["stim"].values,
        "neuron": val["neuron"].values,
        "time": val["time"].values,
    }
    return xr.DataArray(values, dims=("model", "stim", "neuron", "time"), coords=coords)


def _agreement(scores: xr.Dataset, alone: list[xr.Dataset]) -> str:
    """Largest difference and NaN agreement of the first levels of a sweep with ``alone``."""
    worst, differ = 0.0, []
    for k, single in enumerate(alone):
        for name in single.data_vars:
            a = np.asarray(scores[name].isel(model=k).values, dtype=float)
            b = np.asarray(single[name].values, dtype=float)
            differ += [f"{name} at cell {c}" for c in np.flatnonzero(np.isnan(a) != np.isnan(b))]
            if np.isfinite(b).any():
                worst = max(worst, float(np.nanmax(np.abs(a - b))))
    nan = "the same NaN" if not differ else f"NaN differs: {sorted(set(differ))}"
    return f"largest difference {worst:.1e}, {nan}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="/tmp/nat4-full")
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--loop-models", type=int, default=10)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--numpy", action="store_true", help="also time NAT4XR_NUMBA=0")
    args = parser.parse_args()
    warnings.simplefilter("ignore", nat4xr.Nat4Warning)
    a1 = nat4xr.open_nat4("A1", path=args.release, progress=False)
    val = a1.nat4.sel_stims(subset="val").nat4.load()
    sweep = sweep_predictions(val, args.models)
    sizes = dict(val["response"].sizes)
    print(f"A1 val: {sizes}, {args.models} models, {os.cpu_count()} cores")

    one = sweep.isel(model=0, drop=True)
    nat4xr.evaluate(val.isel(neuron=slice(0, 8)), sweep.isel(model=[0, 1], neuron=slice(0, 8)))
    t_one, c_one, _ = best_of(args.runs, nat4xr.evaluate, val, one)
    print(f"one model, all metrics: {t_one:.2f} s, CPU {c_one:.1f} s ({_load()})")
    rows, results = [], {}
    for numba in ("1", "0") if args.numpy else ("1",):
        os.environ["NAT4XR_NUMBA"] = numba
        kind = "compiled" if nat4xr.accelerated.available() else "numpy"
        no_floor = [m for m in nat4xr.evaluation.METRICS if m not in ("r_floor", "n_samples")]
        t_rest, c_rest, _ = best_of(args.runs, nat4xr.evaluate, val, sweep, metrics=no_floor)
        print(f"sweep, all but r_floor ({kind}): {t_rest:.2f} s, CPU {c_rest:.1f} s ({_load()})")
        t_all, c_all, scores = best_of(args.runs, nat4xr.evaluate, val, sweep)
        print(f"sweep, all metrics ({kind}): {t_all:.2f} s, CPU {c_all:.1f} s ({_load()})")
        rows.append((kind, t_all, c_all, t_rest, c_rest))
        results[kind] = scores
    os.environ["NAT4XR_NUMBA"] = "1"
    c0, t0 = time.process_time(), time.perf_counter()
    alone = [nat4xr.evaluate(val, sweep.isel(model=k)) for k in range(args.loop_models)]
    per_model = (time.perf_counter() - t0) / args.loop_models
    cpu_model = (time.process_time() - c0) / args.loop_models
    print(
        f"Python loop, {args.loop_models} models: {per_model:.2f} s per model, "
        f"{per_model * args.models:.1f} s for {args.models} ({_load()})"
    )
    scores = results["compiled" if "compiled" in results else "numpy"]
    print("sweep vs per-model calls (same kernels): " + _agreement(scores, alone))
    if len(results) == 2:
        pairs = [results["numpy"].isel(model=k) for k in range(args.loop_models)]
        print("numpy sweep vs compiled per-model calls: " + _agreement(scores, pairs))
    print("\n| call | all metrics: wall (CPU) | all but r_floor: wall (CPU) |\n|---|---|---|")
    print(f"| one model | {t_one:.2f} s ({c_one:.1f} s) | |")
    for kind, t_all, c_all, t_rest, c_rest in rows:
        print(
            f"| {args.models} models, one call ({kind}) | {t_all:.2f} s ({c_all:.1f} s) | "
            f"{t_rest:.2f} s ({c_rest:.1f} s) |"
        )
    print(
        f"| {args.models} models, a loop of one-model calls (scaled from {args.loop_models}) | "
        f"{per_model * args.models:.1f} s ({cpu_model * args.models:.1f} s) | |"
    )


if __name__ == "__main__":
    main()
