"""The block noise ceiling and PSTH: same numbers as before, on every storage, lazy where it was."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from reference_ceiling import ccmax_previous, snr_loop

from nat4xr import metrics, reductions
from nat4xr.cachefile import open_cache, write_cache
from nat4xr.schema import make_dataset
from nat4xr.testing import raise_if_dask_computes

CCMAX_VARS = ["ccmax", "cc_half", "n_valid", "ccmax_neuron"]


def _hard_ds(seed: int, n_stim: int = 9, n_cell: int = 70, n_rep: int = 9, n_time: int = 21):
    """Random responses with every irregularity the estimators meet.

    Single-repeat stims, odd and even repeat counts, missing trials inside
    the recorded repeats, bins missing from every trial of a pair and bins
    missing from some trials only, pairs without data, silent and constant
    cells, and a cell block wider than the kernel's 64 cells.
    """
    rng = np.random.default_rng(seed)
    reps = rng.integers(1, n_rep + 1, n_stim)
    reps[:2] = 1
    reps[2] = n_rep
    rate = (
        rng.gamma(1.2, 1.0, (n_stim, n_cell, 1, n_time))
        * rng.uniform(0.1, 3, n_cell)[None, :, None, None]
    )
    resp = rng.poisson(np.broadcast_to(rate, (n_stim, n_cell, n_rep, n_time))).astype("float32")
    pad = np.arange(n_rep)[None, :] >= reps[:, None]
    resp[np.broadcast_to(pad[:, None, :, None], resp.shape)] = np.nan
    lost = rng.random((n_stim, n_cell, n_rep)) < 0.1  # missing trials
    resp[lost] = np.nan
    resp[rng.random((n_stim, n_cell)) < 0.05] = np.nan  # no data for the pair
    for _ in range(15):  # bins missing from every trial of a pair
        i, j, t = rng.integers(n_stim), rng.integers(n_cell), rng.integers(n_time - 3)
        resp[i, j, :, t : t + 3] = np.nan
    for _ in range(15):  # bins missing from one trial only
        i, j, r, t = (rng.integers(k) for k in (n_stim, n_cell, n_rep, n_time))
        resp[i, j, r, t] = np.nan
    resp[:, 3] = np.where(np.isnan(resp[:, 3]), np.nan, 0.0)  # silent
    resp[:, 4] = np.where(np.isnan(resp[:, 4]), np.nan, 2.0)  # constant
    resp[2, 5, :, :-1] = np.nan  # one bin with data: no correlation
    stims = pd.DataFrame(
        {"subset": np.where(reps > 1, "val", "est"), "n_repeats": reps},
        index=[f"STIM_{i:02d}" for i in range(n_stim)],
    )
    neurons = pd.DataFrame(
        {
            "area": ["A1"] * n_cell,
            "site": ["ARM001a"] * n_cell,
            "animal": ["ARM"] * n_cell,
            "electrode": np.arange(n_cell),
            "unit": np.ones(n_cell, dtype=int),
            "auditory": np.ones(n_cell, dtype=bool),
        },
        index=[f"ARM001a-{i:02d}-1" for i in range(n_cell)],
    )
    spec = rng.gamma(2.0, 1.0, (n_stim, 3, n_time)).astype("float32")
    return make_dataset(resp, spec, stims, neurons)


@pytest.fixture(scope="module")
def hard():
    return _hard_ds(0)


@pytest.fixture(scope="module")
def cached(hard, tmp_path_factory):
    path = write_cache(hard, tmp_path_factory.mktemp("nc") / "hard.nc")
    with open_cache(path, chunks=None) as lazy_file:
        yield lazy_file


def _assert_same(got: xr.Dataset, want: xr.Dataset, names=CCMAX_VARS, atol=1e-12):
    for name in names:
        a, b = got[name].values, want[name].values
        assert a.shape == b.shape, name
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=name)


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ccmax_equals_previous_implementation(seed):
    ds = _hard_ds(seed)
    want = ccmax_previous(ds, n_splits=8, seed=seed)
    got = metrics.noise_ceiling(ds, n_splits=8, seed=seed)
    _assert_same(got, want)
    # the irregular cases are all there, and some values are defined
    assert np.isfinite(got["ccmax"].values).sum() > 100
    assert np.isnan(got["ccmax_neuron"].values[[3, 4]]).all()


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
def test_same_numbers_on_every_storage(hard, cached):
    want = metrics.noise_ceiling(hard)
    chunked = hard.chunk({"stim": 4, "neuron": 25, "repeat": 3})  # split repeat: rechunked
    for ds in (chunked, cached, cached.chunk({"stim": 2})):
        got = metrics.noise_ceiling(ds).compute()
        _assert_same(got, want, names=[*CCMAX_VARS, "snr", "snr_neuron"], atol=0)
        xr.testing.assert_identical(got, want)
        np.testing.assert_array_equal(metrics.psth(ds).values, metrics.psth(hard).values)


def test_gram_route_equals_the_direct_one():
    rng = np.random.default_rng(5)
    x = rng.poisson(3.0, (2, 130, 7, 30)).astype(np.float32)
    x[0, :, 5] = np.nan  # a missing trial, same for every cell
    x[1, :40, :, 10:13] = np.nan  # bins missing from every trial
    x[1, 100:, 2:] = np.nan  # fewer trials
    x[1, 7] = np.nan
    keys = metrics.split_keys(5, 7, seed=1)
    got = reductions.ceiling_stats(x, keys)
    for s in range(2):
        want = reductions._direct_stats(x[s], keys)
        np.testing.assert_allclose(got[s], want, rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
def test_snr_is_sahani_and_linden(hard):
    snr, snr_cell = snr_loop(hard["response"].values)
    nc = metrics.noise_ceiling(hard)
    np.testing.assert_allclose(nc["snr"].values, snr, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(nc["snr_neuron"].values, snr_cell, rtol=1e-10, atol=1e-12)
    assert np.isfinite(nc["snr"].values).sum() > 100


def test_snr_ignores_a_trial_to_trial_rate_shift():
    """Each trial's power is about its own mean: adding a constant to a trial changes nothing."""
    rng = np.random.default_rng(2)
    rate = rng.gamma(2.0, 1.0, (3, 4, 1, 50))
    x = rng.normal(rate, 0.5, (3, 4, 10, 50))
    shifted = x + rng.normal(0, 3.0, (3, 4, 10, 1))
    a, b = (reductions.ceiling_stats(v, metrics.split_keys(4, 10)) for v in (x, shifted))
    for st in (a, b):
        assert (st[..., 0] == 10).all()
    sig = [(s[..., 0] * s[..., 2] - s[..., 3]) / (s[..., 0] - 1) for s in (a, b)]
    noise = [s[..., 3] - g for s, g in zip((a, b), sig)]
    np.testing.assert_allclose(sig[1] / noise[1], sig[0] / noise[0], rtol=1e-9)
    # the planted SNR: rate variance over the noise variance (0.25)
    expected = rate.var(axis=-1)[..., 0] / 0.25
    assert np.all(np.abs(sig[1] / noise[1] / expected - 1) < 0.5)


def test_metrics_stay_lazy(hard):
    lazy = hard.chunk({"stim": 3})
    with raise_if_dask_computes():
        nc = metrics.noise_ceiling(lazy)
        p = metrics.psth(lazy)
        acc = lazy.nat4.noise_ceiling(), lazy.nat4.psth()
    for v in (*nc.data_vars.values(), p, acc[0]["ccmax"], acc[1]):
        assert isinstance(v.data, da.Array)
    assert p.dtype == np.float32 and p.chunks[0] == (3, 3, 3)


def test_psth_keeps_the_contract(hard, cached):
    ref = hard["response"].mean("repeat", skipna=True)
    for ds in (hard, cached, hard.chunk({"stim": 2})):
        out = metrics.psth(ds)
        assert out.dims == ("stim", "neuron", "time") and out.name == "psth"
        assert set(out.coords) == set(ref.coords)
        np.testing.assert_allclose(out.values, ref.values, rtol=1e-6)
    # a response with its axes in another order takes xarray's route, same values
    other = metrics.psth(hard["response"].transpose("neuron", "stim", "time", "repeat"))
    np.testing.assert_allclose(other.transpose(*ref.dims).values, ref.values, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
def test_one_stim_without_a_stim_axis(hard):
    one = metrics.noise_ceiling(hard.isel(stim=2))
    full = metrics.noise_ceiling(hard.isel(stim=[2]))
    assert "stim" not in one.dims
    np.testing.assert_array_equal(one["ccmax"].values, full["ccmax"].values[0])
    flipped = metrics.noise_ceiling(hard.transpose("neuron", "time", "stim", "repeat", ...))
    assert flipped["ccmax"].dims == ("neuron", "stim")
    want = metrics.noise_ceiling(hard)
    xr.testing.assert_identical(flipped.transpose("stim", "neuron"), want)
    with pytest.raises(ValueError, match="dims"):
        metrics.noise_ceiling(hard["response"].isel(neuron=0).to_dataset())


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
def test_each_stored_chunk_is_read_once(hard, tmp_path, monkeypatch):
    from nat4xr.cachefile.chunks import ChunkFile

    reads = []
    decoded = ChunkFile.decoded

    def counting(self, index, flat, where=""):
        reads.append((index.name, flat))
        return decoded(self, index, flat, where)

    monkeypatch.setattr(ChunkFile, "decoded", counting)
    path = write_cache(hard, tmp_path / "c.nc")
    for chunks in ("auto", None):
        with open_cache(path, chunks=chunks) as ds:
            val = ds.nat4.sel_stims(subset="val")
            for call in (lambda v: v.nat4.noise_ceiling(), lambda v: v.nat4.psth()):
                reads.clear()
                call(val).compute()
                assert reads and len(reads) == len(set(reads))
                if chunks is None:  # only the selection is read: a chunk per (stim, repeat)
                    assert len(reads) <= val.sizes["stim"] * val.sizes["repeat"]


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
def test_empty_selections(hard):
    for empty in (hard.isel(stim=[]), hard.isel(neuron=[]), hard.isel(stim=[]).chunk()):
        nc = metrics.noise_ceiling(empty).compute()
        assert nc["ccmax"].shape == (empty.sizes["stim"], empty.sizes["neuron"])
        assert nc["ccmax_neuron"].shape == (empty.sizes["neuron"],)
        assert metrics.psth(empty).shape == (empty.sizes["stim"], empty.sizes["neuron"], 21)
    assert np.isnan(metrics.noise_ceiling(hard.isel(stim=[])).ccmax_neuron.values).all()


@pytest.mark.parametrize("method", ["zscore", "minmax"])
def test_normalization_statistics_from_block_moments(hard, cached, method):
    resp = hard["response"].values.astype(np.float64)
    want_off, want_scale = [], []
    for j in range(resp.shape[1]):
        vals = resp[:, j][np.isfinite(resp[:, j])]
        lo, hi = (vals.mean(), vals.std()) if method == "zscore" else (vals.min(), vals.max())
        scale = hi if method == "zscore" else hi - lo
        want_off.append(lo)
        want_scale.append(scale if scale > 0 else 1.0)  # silent and constant cells
    dims = ["stim", "repeat", "time"]
    for ds in (hard, hard.chunk({"stim": 4, "neuron": 30}), cached):
        off, scale = metrics._stats(ds["response"], dims, method)
        np.testing.assert_allclose(off, want_off, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(scale, want_scale, rtol=1e-12)
    # a cell without data keeps its units; xarray's route (other layouts) agrees
    empty = hard["response"].copy()
    empty[:, 0] = np.nan
    off, scale = metrics._stats(empty, dims, method)
    assert off[0] == 0.0 and scale[0] == 1.0
    other = metrics._stats(empty.transpose("neuron", ...), dims, method)
    np.testing.assert_allclose(other[0], off, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(other[1], scale, rtol=1e-12)
