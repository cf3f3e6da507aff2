"""Metrics against plain-loop references; eager == lazy == distributed."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from reference_ceiling import snr_loop

from nat4xr import metrics
from nat4xr.filters import hanning_window
from nat4xr.schema import make_dataset

N_STIM, N_CELL, N_REP, N_TIME = 6, 5, 7, 24


def _signal_ds() -> xr.Dataset:
    """Repeats share a stimulus-locked rate (so CCmax/SNR are meaningful), with gaps."""
    rng = np.random.default_rng(11)
    reps = np.array([1, 1, 7, 4, 2, 5])
    rate = (
        rng.gamma(1.5, 1.0, (N_STIM, N_CELL, 1, N_TIME))
        * np.linspace(0.2, 2, N_CELL)[None, :, None, None]
    )
    resp = rng.poisson(np.broadcast_to(rate, (N_STIM, N_CELL, N_REP, N_TIME))).astype("float32")
    pad = np.arange(N_REP)[None, :] >= reps[:, None]  # (stim, repeat)
    resp[np.broadcast_to(pad[:, None, :, None], resp.shape)] = np.nan
    resp[3, 1] = np.nan  # no data for this pair
    resp[2, 2, 5] = np.nan  # one missing repeat
    resp[5, 3, :, :3] = np.nan  # missing bins
    resp[:, 4] = np.where(np.isnan(resp[:, 4]), np.nan, 0.0)  # a silent cell
    stims = pd.DataFrame(
        {"subset": ["est", "est", "val", "val", "val", "val"], "n_repeats": reps},
        index=[f"STIM_{i}" for i in range(N_STIM)],
    )
    neurons = pd.DataFrame(
        {
            "area": ["A1"] * N_CELL,
            "site": ["ARM001a"] * N_CELL,
            "animal": ["ARM"] * N_CELL,
            "electrode": np.arange(N_CELL),
            "unit": np.ones(N_CELL, dtype=int),
            "auditory": np.ones(N_CELL, dtype=bool),
        },
        index=[f"ARM001a-{i:02d}-1" for i in range(N_CELL)],
    )
    spec = rng.gamma(2.0, 1.0, (N_STIM, 3, N_TIME)).astype("float32")
    return make_dataset(resp, spec, stims, neurons)


@pytest.fixture(scope="module")
def eager():
    return _signal_ds()


@pytest.fixture(scope="module")
def lazy(eager):
    return eager.chunk({"stim": 2, "neuron": 3})


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        dashboard_address="127.0.0.1:0",
        worker_dashboard_address="127.0.0.1:0",
    )
    cl = distributed.Client(cluster)
    yield cl
    cl.close()
    cluster.close()


# -- loop references --------------------------------------------------------------------------


def _pearson(a, b):
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return np.nan
    return float(np.corrcoef(a, b)[0, 1])


def _ref_halves(trials, keys):
    """Half PSTHs for each split, by sorting the valid repeats on the split's keys."""
    valid = [r for r in range(trials.shape[0]) if np.isfinite(trials[r]).any()]
    out = []
    for k in range(keys.shape[0]):
        order = sorted(valid, key=lambda r: keys[k, r])
        a, b = order[: len(valid) // 2], order[len(valid) // 2 :]
        with np.errstate(all="ignore"):
            out.append((np.nanmean(trials[a], axis=0), np.nanmean(trials[b], axis=0)))
    return len(valid), out


def _ccmax(r):
    return np.nan if np.isnan(r) else np.sqrt(2 * max(r, 0) / (1 + max(r, 0)))


def _ref_noise_ceiling(resp, keys):
    n_stim, n_cell = resp.shape[:2]
    ccmax = np.full((n_stim, n_cell), np.nan)
    ccmax_cell = np.full(n_cell, np.nan)
    for j in range(n_cell):
        pooled = {k: ([], []) for k in range(keys.shape[0])}
        used = []
        for i in range(n_stim):
            n, halves = _ref_halves(resp[i, j], keys)
            if n < 2:
                continue
            used.append(i)
            rs = [_pearson(a, b) for a, b in halves]
            if not all(np.isnan(rs)):
                ccmax[i, j] = _ccmax(np.nanmean(rs))
            for k, (a, b) in enumerate(halves):
                pooled[k][0].append(a)
                pooled[k][1].append(b)
        if not used:
            continue
        rs = [_pearson(np.concatenate(a), np.concatenate(b)) for a, b in pooled.values()]
        if not all(np.isnan(rs)):
            ccmax_cell[j] = _ccmax(np.nanmean(rs))
    snr, snr_cell = snr_loop(resp)
    return ccmax, snr, ccmax_cell, snr_cell


# -- tests ------------------------------------------------------------------------------------


def test_psth_matches_loop(eager, lazy):
    resp = eager["response"].values
    ref = np.full((N_STIM, N_CELL, N_TIME), np.nan)
    for i in range(N_STIM):
        for j in range(N_CELL):
            for t in range(N_TIME):
                vals = [v for v in resp[i, j, :, t] if not np.isnan(v)]
                if vals:
                    ref[i, j, t] = sum(vals) / len(vals)
    for ds in (eager, lazy):
        out = metrics.psth(ds)
        assert out.dims == ("stim", "neuron", "time")
        np.testing.assert_allclose(out.values, ref, rtol=1e-6)
    assert isinstance(metrics.psth(lazy).data, da.Array)
    np.testing.assert_allclose(metrics.psth(eager["response"]).values, ref, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
def test_noise_ceiling_matches_loop(eager):
    keys = metrics.split_keys(8, N_REP, seed=3)
    ccmax, snr, ccmax_cell, snr_cell = _ref_noise_ceiling(eager["response"].values, keys)
    out = metrics.noise_ceiling(eager, n_splits=8, seed=3)
    np.testing.assert_allclose(out["ccmax"].values, ccmax, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(out["snr"].values, snr, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(out["ccmax_neuron"].values, ccmax_cell, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(out["snr_neuron"].values, snr_cell, rtol=1e-6, atol=1e-9)
    # estimation sounds (1 repeat), the missing pair and the silent cell are undefined
    assert np.isnan(out["ccmax"].values[:2]).all() and np.isnan(out["ccmax"].values[3, 1])
    assert np.isnan(out["ccmax"].values[:, 4]).all() and np.isnan(out["snr_neuron"].values[4])
    # the signal is there: the loud cells are reliable
    assert np.nanmean(out["ccmax"].values[2:, 3]) > 0.5
    assert out["n_valid"].values[2, 2] == 6


def test_eager_lazy_and_distributed_agree(eager, lazy, client):
    ref_nc = metrics.noise_ceiling(eager).compute()
    ref_sm = metrics.smooth(eager, 40)
    ref_norm = metrics.normalize(eager, "zscore", stims="val")
    for ds in (lazy,):
        nc = metrics.noise_ceiling(ds)
        assert isinstance(nc["ccmax"].data, da.Array)
        xr.testing.assert_allclose(nc.compute(), ref_nc)
        xr.testing.assert_allclose(metrics.smooth(ds, 40).compute(), ref_sm)
        norm = metrics.normalize(ds, "zscore", stims="val")  # stats computed on the cluster
        assert isinstance(norm["response"].data, da.Array)
        xr.testing.assert_allclose(norm.compute(), ref_norm)
        got, want = (json.loads(d.attrs["normalization"]) for d in (norm, ref_norm))
        assert got["stims"] == want["stims"]
        np.testing.assert_allclose(got["response"]["scale"], want["response"]["scale"], rtol=1e-12)
        xr.testing.assert_allclose(metrics.psth(ds).compute(), metrics.psth(eager))
    # the client is the default scheduler inside this test
    assert client.submit(lambda: 1).result() == 1


def test_smooth_matches_loop_and_keeps_nan(eager, lazy):
    w = hanning_window(5.0)  # 50 ms at 10 ms bins
    assert len(w) == 5 and np.isclose(w.sum(), 1)
    assert len(hanning_window(4.0)) == 5  # even -> next odd
    resp = eager["response"].values
    ref = np.full_like(resp, np.nan)
    half = len(w) // 2
    for i, j, r in np.ndindex(resp.shape[:3]):
        x = resp[i, j, r]
        for t in range(N_TIME):
            if np.isnan(x[t]):
                continue
            num = den = 0.0
            for k, wk in enumerate(w):
                s = t + k - half
                if 0 <= s < N_TIME and not np.isnan(x[s]):
                    num, den = num + wk * x[s], den + wk
            ref[i, j, r, t] = num / den
    for ds in (eager, lazy):
        out = metrics.smooth(ds, 50)
        np.testing.assert_allclose(out["response"].values, ref, rtol=1e-5, atol=1e-6)
        assert out["response"].dtype == np.float32
        assert json.loads(out.attrs["smoothing"]) == {
            "method": "hanning",
            "window_ms": 50.0,
            "bins": 5,
        }
        assert ds.attrs["smoothing"] == "none"  # input untouched
    twice = metrics.smooth(metrics.smooth(eager, 50), 30)
    assert "previous" in json.loads(twice.attrs["smoothing"])
    with pytest.raises(ValueError, match="positive"):
        metrics.smooth(eager, 0)


@pytest.mark.parametrize("method", ["minmax", "zscore", "nems"])
def test_normalize_matches_manual(eager, lazy, method):
    resp = eager["response"].values.astype(np.float64)
    est = np.asarray(eager["subset"].values) == "val"
    chosen = resp[est]
    out_e = metrics.normalize(eager, method, stims="val")
    out_l = metrics.normalize(lazy, method, stims="val")
    expected = np.full_like(resp, np.nan)
    for j in range(N_CELL):
        vals = chosen[:, j][np.isfinite(chosen[:, j])]
        if method == "zscore":
            off, scale = vals.mean(), vals.std()
        else:
            off, scale = vals.min(), vals.max() - vals.min()
        if scale == 0:
            scale = 1.0
        expected[:, j] = (resp[:, j] - off) / scale
    for out in (out_e, out_l):
        np.testing.assert_allclose(out["response"].values, expected, rtol=1e-5, atol=1e-6)
        assert (np.isnan(out["response"].values) == np.isnan(resp)).all()
        record = json.loads(out.attrs["normalization"])
        assert record["method"] == method and len(record["stims"]) == int(est.sum())
        assert len(record["response"]["offset"]) == N_CELL
    if method == "nems":
        spec = np.log((eager["spectrogram"].values.astype(np.float64) + 0.1) / 0.1)
        lo = spec[est].min(axis=(0, 2), keepdims=True)
        hi = spec[est].max(axis=(0, 2), keepdims=True)
        ref = (spec - lo) / (hi - lo)
        ref[ref < 1e-6] = 0.0
        np.testing.assert_allclose(out_l["spectrogram"].values, ref, rtol=1e-4, atol=1e-5)
        assert out_e["spectrogram"].values.min() == 0.0
    else:
        xr.testing.assert_identical(out_e["spectrogram"], eager["spectrogram"])
    assert eager.attrs["normalization"] == "none"


def test_normalize_default_stims_and_errors(eager):
    out = metrics.normalize(eager, "minmax", stims=None)
    vals = out["response"].values
    assert np.nanmin(vals) == 0.0 and np.nanmax(vals) == 1.0
    record = json.loads(out.attrs["normalization"])
    assert record["stims"] == "all" and record["stims_from"] == "all"
    # the default takes the statistics from the estimation sounds only, and says so
    default = metrics.normalize(eager, "minmax")
    record = json.loads(default.attrs["normalization"])
    est = eager["stim"].values[eager["subset"].values == "est"].tolist()
    assert record["stims_from"] == "est" and record["stims"] == est
    raw = eager["response"].sel(stim=est).values
    lo, hi = np.nanmin(raw, axis=(0, 2, 3)), np.nanmax(raw, axis=(0, 2, 3))
    cell = eager["response"].values[:, 0]
    expected = (cell - lo[0]) / (hi[0] - lo[0])
    np.testing.assert_allclose(default["response"].values[:, 0], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="no estimation sounds"):
        metrics.normalize(eager.isel(stim=eager["subset"].values == "val"), "minmax")
    with pytest.raises(ValueError, match="already normalized"):
        metrics.normalize(out, "minmax")
    with pytest.raises(ValueError, match="method"):
        metrics.normalize(eager, "log")
    with pytest.raises(KeyError, match="not in this Dataset"):
        metrics.normalize(eager, "minmax", stims=["STIM_99"])
    ids = metrics.normalize(eager, "minmax", stims=["STIM_2", "STIM_3"])
    assert json.loads(ids.attrs["normalization"])["stims"] == ["STIM_2", "STIM_3"]
