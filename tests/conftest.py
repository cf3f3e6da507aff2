"""Shared fixtures."""

from __future__ import annotations

import pytest

import nat4xr


@pytest.fixture(params=["eager", "dask"])
def random_ds(request):
    """A small random Dataset, eager and dask-backed."""
    ds = nat4xr.synthetic.random_dataset(n_est=10, n_val=4, n_neurons=9, seed=3)
    return ds.chunk({"stim": 4}) if request.param == "dask" else ds
