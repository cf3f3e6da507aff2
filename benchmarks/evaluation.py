"""Scoring speed and agreement: nat4xr.evaluate beside deepSTRF's metrics and per-cell loops.

Usage::

    NAT4XR_DEEPSTRF_PATH=/tmp/deepstrf python benchmarks/evaluation.py [--runs 3] [--loop-cells 40]

On full-scale A1-shaped validation data (18 stims x 849 cells x 20 repeats x
150 bins, float32 spike counts, 33 cells without data) and a noisy prediction:

- ``nat4xr.evaluate`` with all metrics, then each family alone (best of ``--runs``),
  with the compiled kernels (numba installed) and with numpy alone
  (``NAT4XR_NUMBA=0``), and the first call in a fresh process;
- deepSTRF 0.1.0's own ``corrcoef`` and ``normalized_corrcoef(method="schoppe")``
  on the same arrays (as ``(B, N, R, T)`` float64 tensors), and the largest
  difference from nat4xr's ``cc_raw`` / ``cc_norm``;
- NEMS0's metric functions are not installable from a package index, so their
  per-channel loops are timed as written in ``tests/reference_metrics.py``
  (one cell at a time, ``np.corrcoef`` per jackknife, resample and pair, as
  ``nems0/metrics/corrcoef.py`` does) on ``--loop-cells`` cells and scaled to
  849; the largest difference from nat4xr on those cells is reported too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

import nat4xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _deepstrf import load_deepstrf_metrics
from reference_metrics import (
    deepstrf_cc_norm,
    deepstrf_cc_raw,
    nems_j_corrcoef,
    nems_r_ceiling,
    nems_r_floor,
    schoppe,
)

N_VAL, N_CELL, N_REP, N_TIME, N_EMPTY = 18, 849, 20, 150, 33
FAMILIES = {
    "NEMS0 r_test + se_test": ["r_test"],
    "NEMS0 r_floor": ["r_floor"],
    "NEMS0 r_ceiling": ["r_ceiling"],
    "deepSTRF cc_raw": ["cc_raw"],
    "deepSTRF cc_norm": ["cc_norm"],
    "Schoppe cc_norm_schoppe + cc_max": ["cc_norm_schoppe"],
}


FIRST_CALL = """
import time
t0 = time.perf_counter()
import numpy as np, xarray as xr, nat4xr
obs = xr.DataArray(np.random.default_rng(0).poisson(1.0, (18, 849, 20, 150)).astype("float32"),
                   dims=("stim", "neuron", "repeat", "time"))
t1 = time.perf_counter()
nat4xr.evaluate(obs, obs.mean("repeat"))
print(f"{time.perf_counter() - t1:.2f} s (import and data {t1 - t0:.2f} s)")
"""


def full_scale(seed: int = 0) -> tuple[xr.DataArray, xr.DataArray]:
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.6, 1.0, size=(N_VAL, N_CELL, 1, N_TIME))
    obs = rng.poisson(np.broadcast_to(rate, (N_VAL, N_CELL, N_REP, N_TIME))).astype(np.float32)
    obs[:, rng.choice(N_CELL, N_EMPTY, replace=False)] = np.nan
    coords = {
        "stim": [f"STIM_00cat{i:03d}.wav" for i in range(N_VAL)],
        "neuron": [f"cell-{i:03d}" for i in range(N_CELL)],
    }
    observed = xr.DataArray(obs, dims=("stim", "neuron", "repeat", "time"), coords=coords)
    pred = rate[:, :, 0] + rng.normal(0.0, 0.5, size=(N_VAL, N_CELL, N_TIME))
    return observed, xr.DataArray(pred, dims=("stim", "neuron", "time"), coords=coords)


def best_of(runs: int, func, *args, **kwargs) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = func(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return best, out


def loops(observed: xr.DataArray, pred: xr.DataArray, cells: np.ndarray) -> dict[str, tuple]:
    """Seconds per cell and values of the per-cell loops, family by family."""
    obs, p = observed.values.astype(np.float64), pred.values
    min_reps = N_REP
    out: dict[str, tuple] = {}

    def run(name, func):
        t0 = time.perf_counter()
        values = [func(obs[:, c], p[:, c]) for c in cells]
        out[name] = ((time.perf_counter() - t0) / len(cells), np.array(values))

    def floor(trials, pc):
        np.random.seed(0)  # noqa: NPY002  (NEMS0 draws from the global generator)
        return nems_r_floor(pc, np.nanmean(trials, axis=1))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run("NEMS0 r_test + se_test", lambda t, pc: nems_j_corrcoef(pc, np.nanmean(t, axis=1))[0])
        run("NEMS0 r_floor", floor)
        run("NEMS0 r_ceiling", lambda t, pc: nems_r_ceiling(t, pc, min_reps))
        run("deepSTRF cc_raw", deepstrf_cc_raw)
        run("deepSTRF cc_norm", lambda t, pc: deepstrf_cc_norm(t, pc, N_REP))
        run("Schoppe cc_norm_schoppe + cc_max", lambda t, pc: schoppe(t, pc)[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loop-cells", type=int, default=40)
    args = parser.parse_args()
    observed, pred = full_scale()
    warnings.simplefilter("ignore", nat4xr.Nat4Warning)

    os.environ["NAT4XR_NUMBA"] = "0"
    t_numpy = best_of(args.runs, nat4xr.evaluate, observed, pred)[0]
    os.environ["NAT4XR_NUMBA"] = "1"
    t_all, scores = best_of(args.runs, nat4xr.evaluate, observed, pred)
    first = subprocess.run(
        [sys.executable, "-c", FIRST_CALL], capture_output=True, text=True, check=True
    ).stdout.strip()
    ours = {
        name: best_of(args.runs, nat4xr.evaluate, observed, pred, metrics=m)[0]
        for name, m in FAMILIES.items()
    }
    print(f"data: {N_VAL} stims x {N_CELL} cells x {N_REP} repeats x {N_TIME} bins (float32)")
    compiled = "compiled kernels" if nat4xr.accelerated.available() else "numba not installed"
    print(
        f"nat4xr.evaluate, all metrics: {t_all:.2f} s ({compiled}), {t_numpy:.2f} s "
        f"(numpy only), best of {args.runs}"
    )
    print(f"first call in a fresh process, import included: {first}\n")

    rng = np.random.default_rng(1)
    with_data = np.flatnonzero(np.isfinite(observed.values).any(axis=(0, 2, 3)))
    cells = np.sort(rng.choice(with_data, args.loop_cells, replace=False))
    looped = loops(observed, pred, cells)
    column = {
        "NEMS0 r_test + se_test": "r_test",
        "NEMS0 r_floor": "r_floor",
        "NEMS0 r_ceiling": "r_ceiling",
        "deepSTRF cc_raw": "cc_raw",
        "deepSTRF cc_norm": "cc_norm",
        "Schoppe cc_norm_schoppe + cc_max": "cc_norm_schoppe",
    }
    print(
        "| metrics | nat4xr (849 cells) | per-cell loops (849 cells, scaled) | speed-up | "
        "max abs diff |"
    )
    print("|---|---|---|---|---|")
    total_loops = 0.0
    for name, t_ours in ours.items():
        per_cell, values = looped[name]
        total_loops += per_cell * N_CELL
        diff = np.nanmax(np.abs(scores[column[name]].values[cells] - values))
        print(
            f"| {name} | {t_ours:.2f} s | {per_cell * N_CELL:.1f} s | "
            f"{per_cell * N_CELL / t_ours:.0f}x | {diff:.1e} |"
        )
    print(f"| all | {t_all:.2f} s | {total_loops:.1f} s | {total_loops / t_all:.0f}x | |")

    perf = load_deepstrf_metrics()
    if perf is None:
        return
    import torch

    resp = torch.from_numpy(observed.values.astype(np.float64))
    p4 = torch.from_numpy(pred.values[:, :, None, :].copy())
    t_raw, raw = best_of(args.runs, perf.corrcoef, p4, resp, reduction="none")
    t_norm, norm = best_of(
        args.runs, perf.normalized_corrcoef, p4, resp, method="schoppe", reduction="none"
    )
    print(
        "\n| deepSTRF 0.1.0 function (849 cells) | time | nat4xr's metric | max abs diff | "
        "NaN cells agree |"
    )
    print("|---|---|---|---|---|")
    for label, t, theirs, ours_name in (
        ("corrcoef", t_raw, raw, "cc_raw"),
        ('normalized_corrcoef(method="schoppe")', t_norm, norm, "cc_norm"),
    ):
        mine = scores[ours_name].values
        theirs = theirs.numpy()
        same_nan = bool((np.isnan(mine) == np.isnan(theirs)).all())
        print(
            f"| {label} | {t:.2f} s | {ours_name} ({ours[column_for(ours_name)]:.2f} s) | "
            f"{np.nanmax(np.abs(mine - theirs)):.1e} | {same_nan} |"
        )


def column_for(metric: str) -> str:
    return {"cc_raw": "deepSTRF cc_raw", "cc_norm": "deepSTRF cc_norm"}[metric]


if __name__ == "__main__":
    main()
