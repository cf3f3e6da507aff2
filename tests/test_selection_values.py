"""Keyword filters: a value that exists nowhere is an error, an empty selection says why."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import nat4xr
from nat4xr.selection import filter_mask
from nat4xr.testing import raise_if_dask_computes


@pytest.fixture(params=["eager", "dask"])
def ds(request):
    ds = nat4xr.synthetic.random_dataset(n_est=6, n_val=3, n_neurons=10, seed=4)
    return ds.chunk() if request.param == "dask" else ds


def _existing(ds, name) -> list[str]:
    return sorted({str(v) for v in ds[name].values})


def test_a_mistyped_subset_raises_and_lists_the_subsets(ds):
    with raise_if_dask_computes(), pytest.raises(ValueError) as err:
        ds.nat4.sel_stims(subset="validation")
    message = str(err.value)
    assert "subset='validation'" in message
    for value in _existing(ds, "subset"):
        assert repr(value) in message


@pytest.mark.parametrize("name", ["animal", "site"])
def test_a_mistyped_attribute_raises_and_lists_the_values(ds, name):
    with pytest.raises(ValueError, match=f"{name}='nowhere'") as err:
        ds.nat4.sel_neurons(**{name: "nowhere"})
    assert all(repr(v) in str(err.value) for v in _existing(ds, name))


def test_a_mistyped_id_raises_for_both_axes(ds):
    with pytest.raises(ValueError, match="neuron='no-such-cell' appears nowhere in the neuron ids"):
        ds.nat4.sel_neurons(neuron="no-such-cell")
    with pytest.raises(ValueError, match="stim='STIM_nope' appears nowhere in the stim ids"):
        ds.nat4.sel_stims(stim="STIM_nope")


def test_every_value_of_a_list_must_exist(ds):
    animals = _existing(ds, "animal")
    typo = animals[0][:-1] + "Z"
    with pytest.raises(ValueError) as err:
        ds.nat4.sel_neurons(animal=[animals[0], typo])
    message = str(err.value)
    # names only the missing value, and tells how to keep the ones that exist
    assert f"animal={typo!r} appears nowhere" in message
    assert f"animal={animals[0]!r}" not in message
    assert "lambda s: s.isin(" in message
    # ... which works, and selects exactly the cells of the existing value
    kept = ds.nat4.sel_neurons(animal=lambda s: s.isin([animals[0], typo]))
    expected = [str(c) for c, a in zip(ds.neuron.values, ds.animal.values) if a == animals[0]]
    assert [str(c) for c in kept.neuron.values] == expected


def test_a_numeric_value_is_checked_too(ds):
    held = sorted({int(v) for v in ds["n_repeats"].values})
    absent = max(held) + 1
    with pytest.raises(ValueError, match=f"n_repeats={absent} appears nowhere") as err:
        ds.nat4.sel_stims(n_repeats=absent)
    assert all(str(v) in str(err.value) for v in held)
    # a string where the coordinate holds ints is a type slip: it never matches
    with pytest.raises(ValueError, match="n_repeats='1'"):
        ds.nat4.sel_stims(n_repeats="1")


def test_a_close_match_is_suggested(ds):
    with pytest.raises(ValueError, match="Did you mean 'val'"):
        ds.nat4.sel_stims(subset="vall")


def test_filter_mask_raises_for_every_caller(ds):
    with pytest.raises(ValueError, match="animal='XYZ'"):
        filter_mask(ds, "neuron", (), {"animal": ["XYZ"]})


def test_no_cell_heard_the_stims_warns_with_the_reason():
    ds = nat4xr.synthetic.random_dataset(n_est=6, n_val=2, n_neurons=5, seed=1)
    cov = ds["coverage"].values.copy()
    cov[2, :] = False  # stim 2: recorded by no cell
    response = ds["response"].where(~ds["coverage"].copy(data=~cov))
    ds = ds.assign(response=response).assign_coords(coverage=ds["coverage"].copy(data=cov))
    stim = str(ds.stim.values[2])
    with pytest.warns(nat4xr.Nat4Warning, match="none of the 1 matching stims has data") as rec:
        out = ds.nat4.sel_stims(stim=stim)
    assert "no neurons" in str(rec[0].message)
    assert out.sizes["stim"] == 1 and out.sizes["neuron"] == 0


def test_values_that_never_meet_warn_with_the_filters():
    ds = nat4xr.synthetic.random_dataset(n_est=6, n_val=2, n_neurons=12, seed=3)
    animal = ds["animal"].values
    site = ds["site"].values
    a, s = next(
        (str(a), str(s))
        for a in sorted(set(animal))
        for s in sorted(set(site))
        if not ((animal == a) & (site == s)).any()
    )
    with pytest.warns(nat4xr.Nat4Warning, match=f"no neuron of this Dataset matches animal={a!r}"):
        out = ds.nat4.sel_neurons(animal=a, site=s)
    assert out.sizes["neuron"] == 0 and out.sizes["stim"] == 0


def test_known_values_a_dataset_lacks_select_nothing_with_a_warning():
    ds = nat4xr.synthetic.random_dataset(n_est=4, n_val=2, n_neurons=4, seed=0)
    est = ds.nat4.sel_stims(subset="est")
    with pytest.warns(nat4xr.Nat4Warning, match="subset='val'"):
        assert est.nat4.sel_stims(subset="val").sizes["stim"] == 0
    # True/False always exist for a bool coordinate
    aud = ds.assign_coords(auditory=ds["auditory"].copy(data=np.ones(4, bool)))
    with pytest.warns(nat4xr.Nat4Warning, match="auditory=False"):
        assert aud.nat4.sel_neurons(auditory=False).sizes["neuron"] == 0
    # and the area names of the release
    with pytest.warns(nat4xr.Nat4Warning, match="area='PEG'"):
        ds.nat4.sel_neurons(area="PEG")


def test_a_selection_with_data_is_silent(ds):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        val = ds.nat4.sel_stims(subset=["val"])
        assert val.sizes["stim"] == int((ds["subset"].values == "val").sum())


def test_ids_of_another_dataset_select_by_their_values(ds):
    val = ds.nat4.sel_stims(subset="val")
    same = ds.nat4.sel_neurons(neuron=val.neuron)
    assert list(same.neuron.values) == list(val.neuron.values)
    one = ds.nat4.sel_neurons(neuron=val.neuron[0])
    assert list(one.neuron.values) == [val.neuron.values[0]]
    other = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=3, seed=9)
    other = other.assign_coords(neuron=[f"x{i}" for i in range(3)])
    with pytest.raises(ValueError, match="neuron='x0', 'x1', 'x2' appear nowhere"):
        ds.nat4.sel_neurons(neuron=other.neuron)
