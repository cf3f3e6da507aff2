"""summary() says where ``response`` is (dask, a file read on access, memory), reading nothing."""

from __future__ import annotations

import pytest
import xarray as xr

import nat4xr
from nat4xr.cachefile import arrays, write_cache
from nat4xr.testing import raise_if_dask_computes


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    ds = nat4xr.synthetic.random_dataset(n_est=6, n_val=3, n_neurons=7, seed=5)
    return write_cache(ds, tmp_path_factory.mktemp("summary") / "c.nc")


@pytest.fixture
def reads(monkeypatch) -> list:
    """Every read of a cache file's data variables, recorded."""
    calls: list = []
    original = arrays.CacheArray.__getitem__

    def counting(self, key):
        calls.append(key)
        return original(self, key)

    monkeypatch.setattr(arrays.CacheArray, "__getitem__", counting)
    return calls


def _storage_line(ds: xr.Dataset) -> str:
    return ds.nat4.summary().splitlines()[-1].strip()


def test_the_nat4_engine_is_file_backed_and_summary_reads_nothing(cache_path, reads):
    with xr.open_dataset(cache_path, engine="nat4") as ds:
        line = _storage_line(ds)
        assert line.startswith("response lazy (file-backed, read on access):"), line
        assert "in memory" not in line
        # a selection of it is still in the file
        assert "file-backed" in _storage_line(ds.nat4.sel_stims(subset="val"))
        assert "file-backed" in ds.nat4._repr_html_()
        assert reads == []
        # once loaded, it says so
        loaded = ds.compute()
        assert _storage_line(loaded).startswith("response loaded (in memory):")
        assert "select before" not in _storage_line(loaded)
        assert "file-backed" in _storage_line(ds)  # compute() leaves ds as it was
        ds.load()
        assert _storage_line(ds).startswith("response loaded (in memory):")


def test_dask_says_dask_and_never_computes(cache_path):
    with xr.open_dataset(cache_path, engine="nat4", chunks={}) as ds:
        with raise_if_dask_computes():
            line = _storage_line(ds)
        assert line.startswith("response lazy (dask, "), line
        assert _storage_line(ds.load()).startswith("response loaded (in memory):")


def test_in_memory_data_says_loaded():
    ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=2)
    assert _storage_line(ds).startswith("response loaded (in memory):")


def test_open_demo_without_dask_is_file_backed(tmp_path, monkeypatch, reads):
    monkeypatch.setenv("NAT4XR_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("NAT4XR_CACHE_DIR", raising=False)
    with pytest.warns(nat4xr.Nat4Warning):  # the demo's cells without validation data
        ds = nat4xr.open_demo(chunks=None)
    n_built = len(reads)  # the build reads back nothing through the engine, but be exact
    line = _storage_line(ds)
    assert line.startswith("response lazy (file-backed, read on access):"), line
    assert line.endswith("select before .load()")  # the demo is mostly padding
    assert len(reads) == n_built
