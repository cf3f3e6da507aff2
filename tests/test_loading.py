"""ds.nat4.load(): the same Dataset as xarray's load, filled into one array per variable."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

import nat4xr
from nat4xr import loading
from nat4xr.cachefile import open_cache, write_cache
from nat4xr.loading import load


def test_load_equals_xarray_load_on_every_storage(tmp_path):
    ds = nat4xr.synthetic.random_dataset(n_est=7, n_val=3, n_neurons=6, seed=4)
    path = write_cache(ds, tmp_path / "c.nc")
    with open_cache(path) as lazy, open_cache(path, chunks=None) as unchunked:
        cases = {
            "numpy": ds,
            "dask": ds.chunk({"stim": 3, "neuron": 4}),
            "cache": lazy,
            "cache, selected": lazy.nat4.sel_stims(subset="val").nat4.sel_neurons(
                lambda t: np.arange(len(t)) % 2 == 0
            ),
            "chunks=None": unchunked.isel(stim=[5, 1, 8]),
            "concat": nat4xr.concat([lazy, ds.isel(neuron=[0, 2])], names=["a", "b"]),
        }
        for name, case in cases.items():
            got = case.nat4.load()
            want = case.load() if name == "numpy" else case.copy(deep=False).load()
            xr.testing.assert_identical(got, want)
            for var in got.variables.values():
                assert not isinstance(var.data, da.Array), name
        # the input is not loaded
        assert isinstance(cases["cache"]["response"].data, da.Array)


def test_load_keeps_dask_coordinates_and_empty_selections():
    ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=2, n_neurons=4).chunk({"stim": 2})
    ds = ds.assign_coords(extra=(("stim", "neuron"), da.ones((5, 4), chunks=2)))
    got = load(ds)
    assert isinstance(got["extra"].data, np.ndarray) and float(got["extra"].sum()) == 20
    empty = load(ds.isel(stim=[]))
    assert empty["response"].shape[0] == 0


def test_normalized_values_do_not_claim_to_come_from_the_file(tmp_path):
    from nat4xr.batches import file_source

    ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=2, n_neurons=4, seed=1)
    dims = {"response": ("stim", "neuron", "repeat", "time")}
    with open_cache(write_cache(ds, tmp_path / "c.nc")) as lazy:
        assert file_source(lazy, dims) is not None
        for method in ("minmax", "nems"):
            norm = lazy.nat4.normalize(method, stims=None)  # every stim: the max is 1
            assert "nat4xr_source" not in norm["response"].encoding
            assert "nat4xr_source" not in norm["spectrogram"].encoding or method != "nems"
            assert file_source(norm, dims) is None
            loaded = norm.nat4.load()
            assert float(loaded["response"].max()) == 1.0
        assert "nat4xr_source" in lazy["response"].encoding  # the input keeps its handle


def test_load_on_a_distributed_client_and_under_a_custom_scheduler():
    distributed = pytest.importorskip("distributed")
    ds = nat4xr.synthetic.random_dataset(n_est=5, n_val=2, n_neurons=5, seed=2)
    lazy = ds.chunk({"stim": 2, "neuron": 3})
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        # the workers could not write into this process's array: blocks come back instead
        assert not loading._local_threads(lazy["response"].data)
        got = lazy.nat4.load()
    assert loading._local_threads(lazy["response"].data)
    xr.testing.assert_identical(got, ds)
    calls = []

    def counting(dsk, keys, **kwargs):
        calls.append(len(keys))
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=counting):
        xr.testing.assert_identical(lazy.nat4.load(), ds)
    assert calls  # the user's scheduler ran the computation
