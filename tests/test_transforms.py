"""What a user transforms is what they train and score on.

Pipelines of value-changing and reordering operations (nat4xr's and plain
xarray's) are generated with a fixed seed and a bounded number of cases, on a
cache file opened with dask, opened with ``chunks=None``, and loaded. After
each pipeline every ``to_torch`` batch must hold the Dataset's own values
(``valid_mask == ~isnan``, stims equal to the spectrogram), and ``predict``
and ``evaluate`` must see what an in-memory copy of the same values gives.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nat4xr
from nat4xr.cachefile import open_cache, write_cache

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = nat4xr.synthetic.random_dataset(n_est=6, n_val=3, n_neurons=7, n_time=8, seed=11)
    return write_cache(ds, tmp_path_factory.mktemp("transforms") / "t.nc")


def _opened(path: Path, storage: str) -> xr.Dataset:
    if storage == "dask":
        return open_cache(path, chunks=2)
    lazy = open_cache(path, chunks=None)
    return lazy.load() if storage == "loaded" else lazy


def _raw(ds: xr.Dataset) -> bool:
    return ds.attrs.get("normalization", "none") in ("none", None)


#: name -> (applies to this Dataset?, transform). Each changes values, order or labels.
OPS: dict[str, tuple[Callable[[xr.Dataset], bool], Callable[[xr.Dataset], xr.Dataset]]] = {
    "normalize": (_raw, lambda d: d.nat4.normalize("zscore", stims="est")),
    "arithmetic": (lambda d: True, lambda d: d.assign(response=d.response * 2 + 1)),
    "shift": (lambda d: True, lambda d: d.assign(response=d.response.shift(time=-2))),
    "roll": (lambda d: True, lambda d: d.roll(time=3)),
    "roll_coords": (lambda d: True, lambda d: d.roll(neuron=2, roll_coords=True)),
    "where": (lambda d: True, lambda d: d.assign(response=d.response.where(d.response > 0))),
    "fillna": (lambda d: True, lambda d: d.assign(response=d.response.fillna(0.5))),
    "copy_data_reversed": (
        lambda d: True,
        lambda d: d.assign(response=d.response.copy(data=d.response.data[:, ::-1])),
    ),
    "relabel": (lambda d: True, lambda d: d.assign_coords(neuron=d.neuron.values[::-1])),
    "isel_reorder": (
        lambda d: d.sizes["stim"] > 1,
        lambda d: d.isel(stim=slice(None, None, -1), neuron=[*range(1, d.sizes["neuron"]), 0]),
    ),
    "sel_stims": (
        lambda d: (d.subset == "val").any() and (d.subset == "est").any(),
        lambda d: d.nat4.sel_stims(subset="val"),
    ),
    "sel_neurons": (
        lambda d: d.auditory.any(),
        lambda d: d.nat4.sel_neurons(lambda t: ~t["auditory"] | t["auditory"].cumsum() > 0),
    ),
    "spectrogram": (lambda d: True, lambda d: d.assign(spectrogram=d.spectrogram[:, ::-1] + 1)),
    "concat": (
        lambda d: d.sizes["neuron"] > 1,
        lambda d: nat4xr.concat(
            [d.isel(neuron=slice(0, 2)), d.isel(neuron=slice(2, None))], names=["a", "b"]
        ),
    ),
    "rechunk": (lambda d: True, lambda d: d.chunk({"stim": 3})),
    "repeat_prefix": (lambda d: True, lambda d: d.isel(repeat=slice(0, 2))),
}


def _pipeline(ds: xr.Dataset, names: list[str]) -> xr.Dataset:
    for name in names:
        applies, op = OPS[name]
        if applies(ds):
            ds = op(ds)
    return ds


def _check_batches(ds: xr.Dataset, **options) -> None:
    """Every batch equals the Dataset's values, read here through plain xarray."""
    loader = ds.nat4.to_torch(batch_size=2, shuffle=True, seed=1, **options)
    seen = []
    for batch in loader:
        sub = ds.sel(stim=batch["stim"])
        n_rep = batch["responses"].shape[2]
        expected = sub.response.transpose("stim", "neuron", "repeat", "time").values[:, :, :n_rep]
        np.testing.assert_array_equal(batch["responses"].numpy(), expected)
        np.testing.assert_array_equal(batch["valid_mask"].numpy(), ~np.isnan(expected))
        spec = sub.spectrogram.transpose("stim", "freq", "time").values
        np.testing.assert_array_equal(batch["stims"][:, 0].numpy(), spec)
        assert batch["neuron"] == [str(n) for n in ds.neuron.values]
        seen += batch["stim"]
    assert sorted(seen) == sorted(map(str, ds.stim.values))


def _in_memory(ds: xr.Dataset) -> xr.Dataset:
    """The same values and labels, as plain NumPy arrays with no file behind them."""
    return xr.Dataset(
        {name: (var.dims, np.array(var.values), var.attrs) for name, var in ds.data_vars.items()},
        coords={name: (var.dims, np.array(var.values)) for name, var in ds.coords.items()},
        attrs=ds.attrs,
    )


class _Mean(torch.nn.Module):
    """A fixed model: each cell's rate is a weighted mean over frequency of the stim."""

    def __init__(self, n_neurons: int, n_freq: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.rand(n_neurons, n_freq, generator=g))

    def forward(self, stims: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bft,nf->bnt", stims[:, 0], self.w)


@settings(
    max_examples=30,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    storage=st.sampled_from(["dask", "none", "loaded"]),
    names=st.lists(st.sampled_from(sorted(OPS)), min_size=1, max_size=3),
)
def test_batches_hold_the_transformed_values(cache_file, storage, names) -> None:
    ds = _pipeline(_opened(cache_file, storage), names)
    if ds.sizes["stim"] and ds.sizes["neuron"]:
        _check_batches(ds)


@pytest.mark.parametrize(
    "names",
    [["normalize", "sel_stims"], ["shift"], ["roll"], ["copy_data_reversed"], ["relabel"]],
)
def test_batches_of_the_transforms_reported_wrong(cache_file, names) -> None:
    _check_batches(_pipeline(_opened(cache_file, "dask"), names))


@pytest.mark.slow
def test_batches_hold_the_transformed_values_in_workers(cache_file) -> None:
    ds = _pipeline(_opened(cache_file, "dask"), ["normalize", "sel_stims", "roll"])
    _check_batches(ds, num_workers=2, multiprocessing_context="fork")


@settings(
    max_examples=8,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    storage=st.sampled_from(["dask", "none", "loaded"]),
    names=st.lists(st.sampled_from(sorted(OPS)), min_size=1, max_size=2),
)
def test_predict_and_evaluate_see_the_transformed_values(cache_file, storage, names) -> None:
    ds = _pipeline(_opened(cache_file, storage), names).nat4.sel_stims(subset="val")
    if not (ds.sizes["stim"] and ds.sizes["neuron"]):
        return
    plain = _in_memory(ds)
    model = _Mean(ds.sizes["neuron"], ds.sizes["freq"])
    pred = nat4xr.torch.predict(model, ds)
    xr.testing.assert_equal(pred, nat4xr.torch.predict(model, plain))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate cells warn alike in both
        got, want = nat4xr.evaluate(ds, pred), nat4xr.evaluate(plain, pred)
    xr.testing.assert_equal(got.drop_attrs(), want.drop_attrs())


def test_the_fast_path_still_serves_what_nat4xr_selects(cache_file) -> None:
    """Selections (nat4xr's and one plain xarray step) keep reading the file's chunks."""
    ds = _opened(cache_file, "dask")
    for sel in (
        ds,
        ds.nat4.sel_stims(subset="val").nat4.sel_neurons(auditory=True),
        ds.nat4.prune(),
        ds.sel(neuron=ds.neuron.values[[4, 1, 2]]),
        ds.isel(stim=[5, 0, 2]),
    ):
        data = nat4xr.torch.NAT4TorchDataset(sel)
        assert data.file_backed
        _check_batches(sel)
    for changed in (ds.roll(time=1), ds * 1, ds.assign(response=ds.response.shift(time=1))):
        assert not nat4xr.torch.NAT4TorchDataset(changed).file_backed
