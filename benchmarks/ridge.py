"""The population ridge STRF at full scale, beside scikit-learn's RidgeCV looped over cells.

Usage::

    python benchmarks/ridge.py [--loop-cells 12]

Data: A1-shaped (849 cells in 22 sites, 575 estimation sounds x 150 bins,
18 frequencies), each site hearing its own random 85-100 % of the sounds, the
responses Poisson counts from a planted linear STRF (15 lags) of a smooth
random spectrogram; 18 validation sounds x 20 repeats for scoring.

- ``RidgeSTRF(n_lags=15, alphas=8 values, cv=5).fit``: wall time, and the
  peak of the memory it allocates (``tracemalloc``, which sees numpy's
  allocations), then the median validation ``cc_raw`` of its prediction;
- scikit-learn's ``RidgeCV(alphas=the same 8, cv=5)`` fitted cell by cell on
  ``nat4xr.design``'s rows of that cell (the per-neuron loop users write
  today), on ``--loop-cells`` cells, scaled to 849, and its median ``cc_raw``
  on the same cells;
- with ``NAT4XR_DEEPSTRF_PATH`` set (deepSTRF 0.1.0 installed beside, as the
  other benchmarks), deepSTRF's ``Linear`` STRF model (15 lags x 18 bands, 849
  outputs) trained by its ``Fitter`` (defaults: AdamW, MSE, early stopping on
  validation cc_norm) on the same sounds, with the sounds of fold 5 as its
  early-stopping set and nat4xr's batches, up to ``--deepstrf-epochs`` epochs.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
import warnings

import numpy as np
import pandas as pd
import xarray as xr

import nat4xr
from nat4xr.schema import make_dataset

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _deepstrf import load_deepstrf_training

N_EST, N_VAL, N_CELL, N_SITE, N_TIME, N_FREQ, N_LAGS = 575, 18, 849, 22, 150, 18, 15
ALPHAS = np.logspace(-1, 6, 8)


def _neurons(rng: np.random.Generator) -> pd.DataFrame:
    site = np.array([f"SIT{i % N_SITE:03d}a" for i in range(N_CELL)])
    return pd.DataFrame(
        {
            "area": "A1",
            "site": site,
            "animal": "SIT",
            "electrode": rng.integers(1, 64, N_CELL),
            "unit": np.arange(N_CELL),
            "auditory": True,
        },
        index=[f"{s}-{i:03d}-1" for i, s in enumerate(site)],
    )


def datasets(seed: int = 0) -> tuple[xr.Dataset, xr.Dataset]:
    """Estimation (1 repeat) and validation (20 repeats) Datasets with planted STRFs."""
    rng = np.random.default_rng(seed)
    n_stim = N_EST + N_VAL
    raw = rng.gamma(1.0, 1.0, size=(n_stim, N_FREQ, N_TIME + 4))
    spec = (raw[..., :-4] + raw[..., 1:-3] + raw[..., 2:-2] + raw[..., 3:-1]) / 4  # smooth in time
    lags = np.arange(N_LAGS)
    strf = rng.normal(size=(N_CELL, 1, N_FREQ)) * np.exp(-((lags[None, :, None] - 3) ** 2) / 8)
    drive = np.zeros((n_stim, N_CELL, N_TIME), dtype=np.float32)
    for k in range(N_LAGS):
        drive[:, :, k:] += np.einsum("sft,nf->snt", spec[:, :, : N_TIME - k], strf[:, k]).astype(
            np.float32
        )
    rate = np.maximum(0.2 + 0.05 * drive, 0.0)
    heard = np.ones((n_stim, N_CELL), dtype=bool)
    site = np.arange(N_CELL) % N_SITE
    for s in range(N_SITE):
        missing = rng.random(N_EST) > rng.uniform(0.85, 1.0)
        heard[np.ix_(np.flatnonzero(missing), np.flatnonzero(site == s))] = False
    neurons = _neurons(rng)
    est_resp = rng.poisson(rate[:N_EST]).astype(np.float32)[:, :, None, :]
    est_resp[~heard[:N_EST]] = np.nan
    val_resp = rng.poisson(rate[N_EST:, :, None, :], size=(N_VAL, N_CELL, 20, N_TIME))

    def build(resp, sl, subset, n_rep):
        ids = [f"STIM_{'00' if subset == 'val' else ''}cat{i:03d}.wav" for i in range(len(resp))]
        stims = pd.DataFrame({"subset": subset, "n_repeats": n_rep}, index=ids)
        return make_dataset(
            resp.astype(np.float32),
            spec[sl].astype(np.float32),
            stims,
            neurons,
            coverage=heard[sl],
            attrs={"area": "A1"},
        )

    return (
        build(est_resp, slice(0, N_EST), "est", 1),
        build(val_resp, slice(N_EST, None), "val", 20),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop-cells", type=int, default=12)
    parser.add_argument("--deepstrf-epochs", type=int, default=100)
    args = parser.parse_args()
    warnings.simplefilter("ignore", nat4xr.Nat4Warning)
    est, val = datasets()
    print(f"est {dict(est.sizes)}, val {dict(val.sizes)}")

    tracemalloc.start()
    t0 = time.perf_counter()
    model = nat4xr.models.RidgeSTRF(n_lags=N_LAGS, alphas=ALPHAS, cv=5).fit(est)
    t_fit = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**30
    tracemalloc.stop()
    scores = nat4xr.evaluate(val, model.predict(val), metrics="cc_raw")["cc_raw"]
    groups = len({tuple(c) for c in est["coverage"].values.T})
    print(
        f"RidgeSTRF fit: {t_fit:.1f} s, peak allocated {peak:.2f} GiB, {groups} cell groups; "
        f"median val cc_raw {float(scores.median()):.3f}"
    )

    from sklearn.linear_model import RidgeCV

    d = nat4xr.design(est, N_LAGS, stims="est")
    dv = nat4xr.design(val, N_LAGS, stims="val")
    cells = np.random.default_rng(1).choice(N_CELL, args.loop_cells, replace=False)
    t0 = time.perf_counter()
    loop_cc = []
    for i in cells:
        rows = d.mask[:, i]
        ref = RidgeCV(alphas=ALPHAS, cv=5).fit(d.X[rows], d.Y[rows, i])
        pred = ref.predict(dv.X)
        loop_cc.append(np.corrcoef(pred, dv.Y[:, i])[0, 1])
    per_cell = (time.perf_counter() - t0) / len(cells)
    ours = scores.values[cells]
    print(
        f"sklearn RidgeCV per cell: {per_cell:.2f} s -> {per_cell * N_CELL:.0f} s for {N_CELL} "
        f"cells ({per_cell * N_CELL / t_fit:.0f}x RidgeSTRF's fit)"
    )
    print(
        f"median val cc_raw on those {len(cells)} cells: RidgeSTRF {np.median(ours):.3f}, "
        f"RidgeCV {np.median(loop_cc):.3f}"
    )
    deepstrf(est, val, args.deepstrf_epochs)


def deepstrf(est: xr.Dataset, val: xr.Dataset, max_epochs: int) -> None:
    """deepSTRF's Linear model and Fitter on the same sounds, if installed beside."""
    loaded = load_deepstrf_training()
    if loaded is None:
        return
    import torch

    import nat4xr.torch

    linear, fitter = loaded
    torch.manual_seed(0)
    folded = est.nat4.assign_folds(5)
    train = folded.isel(stim=np.flatnonzero(folded["fold"].values != 5))
    stop = folded.isel(stim=np.flatnonzero(folded["fold"].values == 5))
    model = linear(n_frequency_bands=N_FREQ, temporal_window_size=N_LAGS, out_neurons=N_CELL)
    run = fitter(
        model,
        train.nat4.to_torch(batch_size=16, shuffle=True, seed=0),
        stop.nat4.to_torch(batch_size=16),
        max_epochs=max_epochs,
        patience=5,
        log_fn=lambda epoch: None,
        track_train_metrics=False,
    )
    t0 = time.perf_counter()
    history = run.fit()
    t_fit = time.perf_counter() - t0
    pred = nat4xr.torch.predict(model, val)
    scores = nat4xr.evaluate(val, pred, metrics="cc_raw")["cc_raw"]
    print(
        f"deepSTRF Linear + Fitter: {t_fit:.1f} s for {len(history)} epochs; "
        f"median val cc_raw {float(scores.median()):.3f}"
    )


if __name__ == "__main__":
    main()
