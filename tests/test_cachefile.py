"""Unfiltered chunks of repeated sounds in the cache, and reading them from a memory map."""

from __future__ import annotations

import h5py
import netCDF4
import numpy as np
import pytest
import xarray as xr
from nat4xr.rawchunks import FILTERED, UNALLOCATED, RawChunks

import nat4xr


def _dataset() -> xr.Dataset:
    ds = nat4xr.synthetic.random_dataset(n_est=5, n_val=4, n_neurons=20, n_time=9, seed=11)
    reps = ds["n_repeats"].values.copy()
    reps[6] = 1  # a val sound with one recorded repeat: compressed like est
    response = ds["response"].values.copy()
    response[6, :, 1:] = np.nan
    response[7, 3, 0, 2:5] = np.nan  # rows with both values and NaN
    response[8, :, 1, 0] = np.nan
    ds = ds.assign_coords(n_repeats=("stim", reps, ds["n_repeats"].attrs))
    ds["response"].values = response
    nat4xr.schema.check_dataset(ds)
    return ds


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    ds = _dataset()
    return ds, nat4xr.cachefile.write_cache(ds, tmp_path_factory.mktemp("raw") / "c.nc")


def test_repeated_sounds_are_stored_unfiltered(written):
    ds, path = written
    reps = ds["n_repeats"].values
    n, t = ds.sizes["neuron"], ds.sizes["time"]
    with h5py.File(path, "r") as f:
        var = f["response"]
        n_filters = var.id.get_create_plist().get_nfilters()
        assert n_filters >= 1  # compressed variable
        seen = {}
        var.id.chunk_iter(lambda info: seen.__setitem__(info.chunk_offset, info))
    assert {(s, r) for s, _, r, _ in seen} == {(s, r) for s, k in enumerate(reps) for r in range(k)}
    for (s, _, r, _), info in seen.items():
        if reps[s] > 1:
            assert info.filter_mask == (1 << n_filters) - 1
            assert info.size == n * t * 4
            with open(path, "rb") as fh:
                fh.seek(info.byte_offset)
                stored = np.frombuffer(fh.read(info.size), "<f4").reshape(n, t)
            np.testing.assert_array_equal(stored, ds["response"].values[s, :, r])
        else:
            assert info.filter_mask == 0


def test_netcdf_and_xarray_read_the_same_values(written):
    ds, path = written
    xr.testing.assert_identical(nat4xr.cachefile.open_cache(path).load(), ds)
    with netCDF4.Dataset(path) as nc:
        np.testing.assert_array_equal(nc["response"][:].filled(np.nan), ds["response"].values)


def test_table_and_servable(written):
    ds, path = written
    reps = ds["n_repeats"].values
    chunks = RawChunks(path)
    assert chunks.shape == ds["response"].shape
    assert np.isnan(chunks.fill)
    for s, k in enumerate(reps):
        codes = chunks.table[s]
        assert (codes[k:] == UNALLOCATED).all()
        if k > 1:
            assert (codes[:k] >= 0).all()
        else:
            assert (codes[:k] == FILTERED).all()
    n_rep = ds.sizes["repeat"]
    expected = reps > 1
    np.testing.assert_array_equal(chunks.servable(np.arange(len(reps)), n_rep), expected)
    # a repeat past a sound's recorded ones is unwritten: servable, read as the fill value
    assert chunks.servable(np.array([5]), n_rep)[0]
    chunks.close()


@pytest.mark.parametrize(
    "neurons",
    [
        np.arange(20),  # one run: strided copies
        np.r_[0:8, 10:20],  # two runs
        np.array([6, 0, 3]),  # scattered: a gather per chunk
        np.array([2, 2, 5, 1, 0, 4, 6, 3]),
    ],
)
def test_read_into_matches_the_dataset(written, neurons):
    ds, path = written
    chunks = RawChunks(path)
    stims = np.flatnonzero(ds["n_repeats"].values > 1)[::-1].copy()
    n_rep = ds.sizes["repeat"]
    out = np.full((len(stims) + 1, len(neurons), n_rep, ds.sizes["time"]), 7.0, np.float32)
    rows = np.arange(1, len(stims) + 1)
    mask = np.zeros(out.shape, bool)
    for _ in range(2):  # the second read knows the rows' states from the first
        chunks.read_into(out, stims, neurons, rows=rows, mask=mask)
        expected = ds["response"].values[stims][:, neurons]
        np.testing.assert_array_equal(out[1:], expected)
        np.testing.assert_array_equal(mask[1:], ~np.isnan(expected))
        assert (out[0] == 7.0).all() and not mask[0].any()  # rows not asked for: left alone
    assert np.isnan(expected).any() and (~np.isnan(expected)).any()
    chunks.close()


@pytest.mark.parametrize("neurons", [np.array([4, 1, 6]), np.arange(20), np.r_[2:10, 12:20]])
def test_chunks_that_are_not_back_to_back(tmp_path, neurons):
    """Chunks written out of order (or missing) are read one by one, with the same result."""
    rng = np.random.default_rng(0)
    values = rng.poisson(1.0, (3, 20, 4, 9)).astype("<f4")
    path = tmp_path / "h5.nc"
    with h5py.File(path, "w") as f:
        var = f.create_dataset(
            "response",
            shape=values.shape,
            dtype="<f4",
            chunks=(1, 20, 1, 9),
            compression="gzip",
            fillvalue=np.nan,
        )
        for s in range(3):
            for r in reversed(range(4 - s)):  # descending places; stim s has 4 - s repeats
                var.id.write_direct_chunk((s, 0, r, 0), values[s, :, r].tobytes(), filter_mask=1)
    chunks = RawChunks(path)
    assert (np.diff(chunks.table[0]) < 0).all()
    out = np.empty((3, len(neurons), 4, 9), np.float32)
    chunks.read_into(out, np.arange(3), neurons)
    expected = values[:, neurons].copy()
    for s in range(3):
        expected[s, :, 4 - s :] = np.nan
    np.testing.assert_array_equal(out, expected)


def test_refuses_what_it_cannot_serve(written, tmp_path):
    ds, path = written
    chunks = RawChunks(path)
    out = np.empty((1, 20, 1, 9), np.float32)
    with pytest.raises(ValueError, match="compressed"):
        chunks.read_into(out, np.array([0]), np.arange(20))
    with pytest.raises(IndexError, match="out of range"):
        chunks.read_into(np.empty((1, 2, 1, 9), np.float32), np.array([5]), np.array([0, 20]))
    with pytest.raises(ValueError, match="out must be"):
        chunks.read_into(out, np.array([5]), np.arange(19))
    with pytest.raises(ValueError, match="out must be"):
        chunks.read_into(np.empty((1, 20, 21, 9), np.float32), np.array([5]), np.arange(20))
    plain = tmp_path / "plain.nc"
    ds.drop_vars([c for c in ds.coords if ds[c].dtype.kind == "U"]).to_netcdf(plain)
    with pytest.raises(ValueError, match="chunks"):
        RawChunks(plain)
