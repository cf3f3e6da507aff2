import numpy as np
import pytest
import xarray as xr

import nat4xr
from nat4xr.schema import check_dataset, coverage_of


def test_coverage_matches_nan_pattern(random_ds):
    resp = random_ds["response"].values
    n_stim, n_neuron = resp.shape[:2]
    expected = np.array(
        [[not np.isnan(resp[s, n]).all() for n in range(n_neuron)] for s in range(n_stim)]
    )
    np.testing.assert_array_equal(random_ds["coverage"].values, expected)
    np.testing.assert_array_equal(coverage_of(random_ds["response"]), expected)


def test_padding_repeats_are_nan():
    ds = nat4xr.synthetic.random_dataset(seed=5, p_missing=0.0)
    for i, k in enumerate(ds["n_repeats"].values):
        assert np.isnan(ds["response"].values[i, :, k:]).all()
        assert not np.isnan(ds["response"].values[i, :, :k]).any()


def test_netcdf_round_trip_is_identical(tmp_path):
    ds = nat4xr.synthetic.random_dataset(seed=2)
    ds.to_netcdf(tmp_path / "x.nc")
    with xr.open_dataset(tmp_path / "x.nc") as back:
        xr.testing.assert_identical(back.load(), ds)


def test_check_dataset_rejects_foreign():
    with pytest.raises(ValueError, match="missing variable"):
        check_dataset(xr.Dataset({"x": ("a", [1])}))
    ds = nat4xr.synthetic.random_dataset()
    check_dataset(ds)
    with pytest.raises(ValueError, match="coverage"):
        check_dataset(ds.drop_vars("coverage"))
