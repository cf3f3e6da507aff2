"""No silent wrong results when nat4xr is composed with xarray.

Labelled masks align by label, counts say what each number is over, units
are never mixed, contracts are checked where they are made, and the models
and losses refuse inputs they would silently misread.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import nat4xr
from nat4xr.schema import make_dataset
from nat4xr.selection import aligned_mask


@pytest.fixture
def ds() -> xr.Dataset:
    return nat4xr.synthetic.random_dataset(n_est=8, n_val=3, n_neurons=6, seed=4)


# -- labelled masks -----------------------------------------------------------------------------


def test_aligned_mask_reads_labels_or_positions() -> None:
    labels = np.array(["a", "b", "c"])
    by_label = xr.DataArray([True, False, False], coords={"neuron": ["c", "b", "a"]})
    assert aligned_mask(by_label, labels, "neuron").tolist() == [False, False, True]
    series = pd.Series([False, True, True, False], index=["d", "c", "b", "a"])
    assert aligned_mask(series, labels, "neuron").tolist() == [False, True, True]
    bare = xr.DataArray([True, False, True], dims="neuron")
    assert aligned_mask(bare, labels, "neuron").tolist() == [True, False, True]
    assert aligned_mask([False, True, False], labels, "neuron").tolist() == [False, True, False]
    with pytest.raises(KeyError, match="'c'"):
        aligned_mask(pd.Series([True, True], index=["a", "b"]), labels, "neuron")
    with pytest.raises(ValueError, match="positional"):
        aligned_mask(np.array([True, False]), labels, "neuron")
    with pytest.raises(ValueError, match="duplicate"):
        aligned_mask(pd.Series([True, True, False], index=["a", "a", "b"]), labels, "neuron")
    with pytest.raises(TypeError, match="bool"):
        aligned_mask(np.array([1, 0, 1]), labels, "neuron")
    with pytest.raises(ValueError, match="dims"):
        aligned_mask(xr.DataArray([[True]], dims=("neuron", "x")), labels, "neuron")


def test_sel_neurons_aligns_a_labelled_mask_by_label(ds) -> None:
    rev = ds.isel(neuron=slice(None, None, -1))
    flags = ds.auditory.values.copy()
    flags[0] = not flags[0]  # not a palindrome
    mask = xr.DataArray(flags, coords={"neuron": ds.neuron.values})
    chosen = set(ds.neuron.values[flags].tolist())
    got = rev.nat4.sel_neurons(mask)
    assert set(got.neuron.values.tolist()) == chosen
    # a predicate returning a reordered Series is read by its index
    got = rev.nat4.sel_neurons(lambda t: pd.Series(flags, index=ds.neuron.values)[::-1])
    assert set(got.neuron.values.tolist()) == chosen
    # a mask made on the whole Dataset applies to a selection of it
    sub = ds.isel(neuron=[4, 1])
    assert sub.nat4.sel_neurons(mask).neuron.values.tolist() == [
        n for n in sub.neuron.values if n in chosen
    ]


def test_normalize_and_evaluate_align_a_stim_mask_by_label(ds) -> None:
    rev = ds.isel(stim=slice(None, None, -1))
    est = ds.subset == "est"  # labelled, in ds's order
    ids = ds.stim.values[est.values].tolist()
    got = rev.nat4.normalize("zscore", stims=est)
    want = rev.nat4.normalize("zscore", stims=ids)
    xr.testing.assert_identical(got.response, want.response)
    val = ds.nat4.sel_stims(subset="val")
    pred = val.response.mean("repeat")
    pick = xr.DataArray([True, False, True], coords={"stim": val.stim.values})[::-1]
    with np.errstate(all="ignore"):
        by_mask = nat4xr.evaluate(val, pred, stims=pick, metrics=["cc_raw"])
        by_ids = nat4xr.evaluate(val, pred, stims=val.stim.values[[0, 2]], metrics=["cc_raw"])
    xr.testing.assert_identical(by_mask, by_ids)


# -- counts -------------------------------------------------------------------------------------


def _scores() -> xr.Dataset:
    return xr.Dataset(
        {
            "cc_raw": ("neuron", [0.2, 0.4, 0.6, np.nan]),
            "cc_norm": ("neuron", [0.5, np.nan, np.nan, 0.9]),
        },
        coords={"neuron": ["a", "b", "c", "d"]},
    )


def test_leaderboard_states_the_cells_behind_each_mean() -> None:
    line = nat4xr.leaderboard(_scores())
    assert line == "CCraw 40.0 % over 3 cells | CCnorm 70.0 % over 2 cells (of 4)"


def test_leaderboard_and_compare_read_an_unlabelled_cells_mask_by_position() -> None:
    scores = _scores()
    flags = np.array([True, True, False, True])
    bare = xr.DataArray(flags, dims="neuron")
    assert nat4xr.leaderboard(scores, cells=bare) == nat4xr.leaderboard(scores, cells=flags)
    assert nat4xr.leaderboard(scores, cells=bare).endswith("(of 3)")
    other = scores + 0.1
    table = nat4xr.compare(scores, other, cells=bare, metrics=["cc_raw"])
    assert int(table.loc["cc_raw", "n_cells"]) == 2


# -- coverage, units, contracts -----------------------------------------------------------------


def test_prune_recompute_follows_the_data_and_fit_advice_works(ds) -> None:
    full = nat4xr.synthetic.random_dataset(n_est=8, n_val=3, n_neurons=5, p_missing=0.0, seed=2)
    gone = full.assign(response=full.response.where(full.neuron != full.neuron[1]))
    assert gone.nat4.prune(recompute=False).sizes["neuron"] == 5  # coverage as stored
    assert gone.nat4.prune().sizes["neuron"] == 4  # values in memory: judged by what they hold
    pruned = gone.nat4.prune(recompute=True)
    assert str(full.neuron.values[1]) not in pruned.neuron.values
    np.testing.assert_array_equal(
        pruned.coverage.values, pruned.response.notnull().any(("repeat", "time")).values
    )
    model = nat4xr.models.RidgeSTRF(n_lags=2, cv=2)
    with pytest.raises(ValueError, match=r"prune\(recompute=True\)") as err:
        model.fit(gone)
    assert str(full.neuron.values[1]) in str(err.value)
    model.fit(gone.nat4.prune(recompute=True).nat4.sel_stims(subset="est"))  # as advised


def test_concat_keeps_each_normalization_and_refuses_mixed_units() -> None:
    a = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=4, area="A1")
    b = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=2, area="PEG", seed=1)
    joint = nat4xr.concat([a.nat4.normalize("zscore"), b.nat4.normalize("zscore")])
    record = json.loads(joint.attrs["normalization"])["per_source"]
    assert record["A1"]["method"] == record["PEG"]["method"] == "zscore"
    with pytest.raises(ValueError, match="already normalized"):
        joint.nat4.normalize("minmax")
    with pytest.raises(ValueError, match=r"raw \['PEG'\] with normalized \['A1'\]"):
        nat4xr.concat([a.nat4.normalize("zscore"), b])
    assert nat4xr.concat([a, b]).attrs["normalization"] == "none"


def test_make_dataset_refuses_more_repeats_than_the_repeat_axis(ds) -> None:
    stims = ds.nat4.stim_table()
    neurons = ds.nat4.neuron_table()
    stims.loc[stims.index[-1], "n_repeats"] = ds.sizes["repeat"] + 1
    with pytest.raises(ValueError, match=f"outside 0..{ds.sizes['repeat']}.*{stims.index[-1]}"):
        make_dataset(ds.response.values, ds.spectrogram.values, stims, neurons)


def test_evaluate_refuses_duplicate_stims_in_observed(ds) -> None:
    val = ds.nat4.sel_stims(subset="val")
    pred = val.response.mean("repeat")
    with pytest.raises(ValueError, match="more than once in observed"):
        nat4xr.evaluate(val.isel(stim=[0, 0, 1, 2]), pred, metrics=["cc_raw"])


# -- models and losses --------------------------------------------------------------------------


def test_ridge_predict_checks_the_axes_it_was_fitted_on(ds) -> None:
    est = ds.nat4.sel_stims(subset="est")
    model = nat4xr.models.RidgeSTRF(n_lags=3, cv=2).fit(est)
    model.predict(ds)  # the fit's own axes
    with pytest.raises(ValueError, match="freq"):
        model.predict(ds.isel(freq=slice(None, None, -1)))
    with pytest.raises(ValueError, match="freq_hz"):
        model.predict(ds.assign_coords(freq_hz=ds.freq_hz * 2))
    with pytest.raises(ValueError, match="time step"):
        model.predict(ds.assign_coords(time=ds.time * 2).assign_attrs(dt=0.02))
    with pytest.raises(ValueError, match="time step"):
        model.predict(ds.assign_coords(time=ds.time * 2))


def test_ridge_fit_refuses_cv_other_than_the_assigned_folds(ds) -> None:
    folded = ds.nat4.assign_folds(3)
    with pytest.raises(ValueError, match=r"cv=5 .* 3 fold"):
        nat4xr.models.RidgeSTRF(n_lags=2, cv=5).fit(folded)
    nat4xr.models.RidgeSTRF(n_lags=2, cv=3).fit(folded)


def test_a_spectrogram_broadcast_by_where_is_named(ds) -> None:
    pytest.importorskip("torch")
    masked = ds.where(ds.auditory)
    assert set(masked.spectrogram.dims) > {"stim", "freq", "time"}
    with pytest.raises(ValueError, match=r"ds\.where"):
        masked.nat4.to_torch()
    with pytest.raises(ValueError, match=r"ds\.where"):
        nat4xr.models.RidgeSTRF(n_lags=2, cv=2).fit(masked)


def test_losses_score_each_cell_against_itself_only() -> None:
    torch = pytest.importorskip("torch")
    from nat4xr.torch import masked_mse, masked_poisson_nll

    g = torch.Generator().manual_seed(0)
    target = torch.poisson(torch.full((1, 3, 4, 5), 2.0), generator=g)
    target[0, 1, 2:] = float("nan")
    mask = ~torch.isnan(target)
    rate = torch.rand(1, 3, 5, generator=g) + 0.5
    # a plain loop over valid entries, each cell against its own rate
    sq, nll, n = 0.0, 0.0, 0
    for c in range(3):
        for r in range(4):
            for t in range(5):
                if mask[0, c, r, t]:
                    y, p = float(target[0, c, r, t]), float(rate[0, c, t])
                    sq += (p - y) ** 2
                    nll += p - y * np.log(p + 1e-8)
                    n += 1
    for pred in (rate, rate[:, :, None]):
        assert masked_mse(pred, target, mask).item() == pytest.approx(sq / n, rel=1e-5)
        assert masked_poisson_nll(pred, target, mask).item() == pytest.approx(nll / n, rel=1e-5)
    for bad in (rate[:, :2], torch.rand(1, 3, 2, 5), rate.transpose(1, 2), torch.rand(4, 5)):
        with pytest.raises(ValueError, match=r"\(B, N, T\)"):
            masked_poisson_nll(bad, target, mask)
    with pytest.raises(ValueError, match="mask"):
        masked_mse(rate, target, mask[..., None])


def test_predict_reads_a_stim_mask_by_label(ds) -> None:
    pytest.importorskip("torch")
    val = ds.nat4.sel_stims(subset="val")

    def model(stims):
        return stims[:, 0, :1].expand(-1, val.sizes["neuron"], -1) * 1.0

    pick = xr.DataArray([True, False, True], coords={"stim": val.stim.values})[::-1]
    got = nat4xr.torch.predict(model, val, stims=pick)
    assert got.stim.values.tolist() == val.stim.values[[0, 2]].tolist()
    one = nat4xr.torch.predict(model, val, stims=np.array([False, True, False]))
    assert one.stim.values.tolist() == [val.stim.values[1]]


# -- values that moved or changed in place ------------------------------------------------------


def test_batches_follow_an_edit_in_place_of_dask_backed_data(tmp_path) -> None:
    """Assigning into a dask array changes that very object (and its name): never the file's."""
    from nat4xr.cachefile import open_cache, write_cache

    raw = nat4xr.synthetic.random_dataset(n_est=4, n_val=2, n_neurons=3, n_repeats=3, seed=5)
    path = write_cache(raw, tmp_path / "c.nc")
    with open_cache(path) as ds:
        val = ds.nat4.sel_stims(subset="val")
        assert nat4xr.torch.NAT4TorchDataset(val).file_backed
        val.response[{"stim": 0, "neuron": 0}] = np.nan
        val.spectrogram[{"stim": 1}] = 0.0
        data = nat4xr.torch.NAT4TorchDataset(val)
        assert not data.file_backed
        batch = data.read_batch([0, 1])
        assert not batch["valid_mask"][0, 0].any()
        expected = val.response.values[:, :, : batch["responses"].shape[2]]
        np.testing.assert_array_equal(batch["responses"].numpy(), expected)
        assert float(batch["stims"][1].abs().max()) == 0.0


def test_a_batch_never_drops_values_moved_past_a_stims_repeats() -> None:
    ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=3, n_repeats=4, seed=0)
    moved = ds.isel(repeat=[1, 0, 2, 3])  # stim 0's only trial now sits in repeat 1
    filled = ds.fillna(0.0)  # every stim now holds 4 repeats of values
    for variant, n_rep in ((moved, 2), (moved.chunk({"stim": 2}), 2), (filled, 4)):
        batch = next(iter(variant.nat4.to_torch(batch_size=1)))
        want = variant.response.values[0]
        assert batch["responses"].shape[2] == n_rep
        assert int(batch["valid_mask"].sum()) == int(np.isfinite(want).sum())
        np.testing.assert_array_equal(batch["responses"][0].numpy(), want[:, :n_rep])
    # the contract kept (NaN past n_repeats): batches as before, of mixed repeat counts
    batch = nat4xr.torch.NAT4TorchDataset(ds).read_batch([0, 3])
    np.testing.assert_array_equal(batch["responses"].numpy(), ds.response.values[[0, 3]])
    assert nat4xr.torch.NAT4TorchDataset(ds).read_batch([0])["responses"].shape[2] == 1


def test_prune_trusts_stored_coverage_only_for_a_files_values(tmp_path) -> None:
    from nat4xr.cachefile import open_cache, write_cache
    from nat4xr.testing import raise_if_dask_computes

    full = nat4xr.synthetic.random_dataset(n_est=6, n_val=2, n_neurons=4, p_missing=0.0, seed=6)
    with open_cache(write_cache(full, tmp_path / "c.nc")) as ds:
        with raise_if_dask_computes():  # a file's values: the stored coverage is theirs
            kept = ds.nat4.prune()
            ds.nat4.sel_stims(subset="val").nat4.prune()
        assert list(kept.neuron.values) == list(ds.neuron.values)
        gone = ds.where(ds.neuron != ds.neuron[2])  # lazy, no longer the file's values
        assert str(ds.neuron.values[2]) not in gone.nat4.prune().neuron.values


def test_batches_follow_an_edit_made_after_the_loader_was_built(tmp_path) -> None:
    from nat4xr.cachefile import open_cache, write_cache

    raw = nat4xr.synthetic.random_dataset(n_est=5, n_val=2, n_neurons=4, n_repeats=4, seed=4)
    with open_cache(write_cache(raw, tmp_path / "c.nc")) as ds:
        loader = ds.nat4.to_torch(batch_size=7)
        first = next(iter(loader))
        assert loader.dataset.file_backed
        ds.response[{"stim": 0, "repeat": 0}] = 99.0  # in place, after the loader was made
        ds.spectrogram[{"stim": 1}] = 7.0
        batch = next(iter(loader))
        assert not loader.dataset.file_backed
        r = batch["responses"].shape[2]
        np.testing.assert_array_equal(batch["responses"].numpy(), ds.response.values[:, :, :r])
        assert float(batch["stims"][1].min()) == 7.0
        assert not np.array_equal(first["responses"].numpy(), batch["responses"].numpy())


def test_items_and_the_file_path_keep_every_repeat_that_holds_values(tmp_path) -> None:
    from nat4xr.cachefile import open_cache, write_cache
    from nat4xr.torch import NAT4TorchDataset, collate

    ds = nat4xr.synthetic.random_dataset(n_est=5, n_val=2, n_neurons=4, n_repeats=5, seed=3)
    moved = NAT4TorchDataset(ds.isel(repeat=[4, 3, 2, 1, 0]))  # stim 0's trial now in repeat 4
    want = int(np.isfinite(ds.response.values[0]).sum())
    assert int(moved[0]["valid_mask"].sum()) == want
    assert int(collate([moved[0], moved[1]])["valid_mask"][0].sum()) == want
    with open_cache(write_cache(ds, tmp_path / "c.nc")) as lazy:
        fewer = lazy.assign_coords(n_repeats=np.minimum(lazy.n_repeats, 1))  # a coordinate edit
        data = NAT4TorchDataset(fewer)
        assert data.file_backed
        batch = data.read_batch(list(range(fewer.sizes["stim"])))
        held = int(np.isfinite(ds.response.values).sum())
        assert int(batch["valid_mask"].sum()) == held  # the file's stored repeats, all of them
