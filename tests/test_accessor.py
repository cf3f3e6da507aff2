"""The .nat4 accessor: tables, bidirectional selection, laziness, repr."""

from __future__ import annotations

import os
import pickle

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nat4xr
from nat4xr.schema import make_dataset
from nat4xr.selection import select
from nat4xr.testing import raise_if_dask_computes


def _is_dask(ds: xr.Dataset) -> bool:
    return isinstance(ds["response"].data, da.Array)


def _ids(ds: xr.Dataset, dim: str) -> list[str]:
    return [str(v) for v in ds[dim].values]


def test_raise_if_dask_computes_catches_a_compute(random_ds):
    if not _is_dask(random_ds):
        pytest.skip("eager data never computes")
    with raise_if_dask_computes(), pytest.raises(AssertionError, match="dask computed"):
        random_ds["response"].sum().compute()


def test_tables_hold_every_axis_coordinate(random_ds):
    stims, neurons = random_ds.nat4.stim_table(), random_ds.nat4.neuron_table()
    assert list(stims.index) == _ids(random_ds, "stim")
    assert set(stims.columns) == {"subset", "n_repeats"}
    assert list(neurons.index) == _ids(random_ds, "neuron")
    assert set(neurons.columns) == {"area", "site", "animal", "electrode", "unit", "auditory"}
    assert neurons["auditory"].dtype == bool and neurons["unit"].dtype == np.int64
    np.testing.assert_array_equal(stims["n_repeats"], random_ds["n_repeats"].values)
    cov = random_ds.nat4.coverage
    assert cov.dims == ("stim", "neuron") and cov.dtype == bool


def test_sel_stims_val_drops_cells_without_val_data(random_ds):
    cov = np.asarray(random_ds["coverage"].values)
    val = np.asarray(random_ds["subset"].values) == "val"
    expected_cells = np.flatnonzero(cov[val].any(axis=0))
    out = random_ds.nat4.sel_stims(subset="val")
    held = int(random_ds["n_repeats"].values[val].max())  # the repeat axis is cut to it
    ref = random_ds.isel(stim=np.flatnonzero(val), neuron=expected_cells, repeat=slice(0, held))
    xr.testing.assert_identical(out.compute(), ref.compute())
    assert _is_dask(out) == _is_dask(random_ds)


def test_sel_neurons_drops_stims_without_data(random_ds):
    cov = np.asarray(random_ds["coverage"].values)
    aud = np.asarray(random_ds["auditory"].values)
    cells = np.flatnonzero(aud)
    stims = np.flatnonzero(cov[:, cells].any(axis=1))
    out = random_ds.nat4.sel_neurons(auditory=True)
    held = int(random_ds["n_repeats"].values[stims].max())
    ref = random_ds.isel(stim=stims, neuron=cells, repeat=slice(0, held))
    xr.testing.assert_identical(out.compute(), ref.compute())


def test_selection_and_metadata_never_compute_response(random_ds):
    ds = random_ds
    with raise_if_dask_computes():
        outs = [
            ds.nat4.sel_stims(subset="val"),
            ds.nat4.sel_stims(lambda t: t["n_repeats"] > 1),
            ds.nat4.sel_neurons(auditory=True, animal=["ARM", "CRD"]),
            # stored coverage (prune's default derives it again for values not a file's)
            ds.nat4.sel_neurons(lambda t: t["electrode"] > 10).nat4.prune(recompute=False),
            ds.nat4.prune(recompute=False),
        ]
        ds.nat4.stim_table(), ds.nat4.neuron_table(), ds.nat4.coverage
        text, page = ds.nat4.summary(), ds.nat4._repr_html_()
        lazy_metrics = [ds.nat4.psth(), ds.nat4.noise_ceiling(), ds.nat4.smooth(30)]
    for out in outs:
        assert _is_dask(out) == _is_dask(ds)
    if _is_dask(ds):
        assert "lazy" in text and "lazy" in page
        assert isinstance(lazy_metrics[0].data, da.Array)
        assert isinstance(lazy_metrics[1]["ccmax"].data, da.Array)
        assert isinstance(lazy_metrics[2]["response"].data, da.Array)
    else:
        assert "in memory" in text


def test_full_scale_lazy_selection_does_not_compute():
    n_stim, n_cell = 593, 849
    rng = np.random.default_rng(0)
    stims = pd.DataFrame(
        {"subset": ["est"] * 575 + ["val"] * 18, "n_repeats": [1] * 575 + [20] * 18},
        index=[f"STIM_{i:03d}" for i in range(n_stim)],
    )
    neurons = pd.DataFrame(
        {
            "area": ["A1"] * n_cell,
            "site": ["ARM029a"] * n_cell,
            "animal": rng.choice(["ARM", "TNC"], n_cell),
            "electrode": np.ones(n_cell, dtype=np.int64),
            "unit": np.arange(n_cell, dtype=np.int64),
            "auditory": rng.random(n_cell) < 0.9,
        },
        index=[f"ARM029a-01-{i}" for i in range(n_cell)],
    )
    cov = np.ones((n_stim, n_cell), dtype=bool)
    cov[575:, :33] = False
    resp = da.zeros((n_stim, n_cell, 20, 150), dtype="float32", chunks=(8, n_cell, 20, 150))
    spec = da.zeros((n_stim, 18, 150), dtype="float32", chunks=(8, 18, 150))
    ds = make_dataset(resp, spec, stims, neurons, coverage=cov)
    with raise_if_dask_computes():
        val = ds.nat4.sel_stims(subset="val")
        aud = ds.nat4.sel_neurons(auditory=True)
    assert dict(val.sizes)["stim"] == 18 and dict(val.sizes)["neuron"] == n_cell - 33
    assert aud.sizes["neuron"] == int(neurons["auditory"].sum())
    assert aud["response"].data.shape == (n_stim, aud.sizes["neuron"], 20, 150)


def test_filter_kinds(random_ds):
    ds = random_ds
    ids = _ids(ds, "stim")
    two = ds.nat4.sel_stims(stim=ids[:2])
    assert _ids(two, "stim") == ids[:2]
    one = ds.nat4.sel_stims(stim=ids[3])
    assert _ids(one, "stim") == [ids[3]]
    reps = ds.nat4.sel_stims(n_repeats=lambda s: s >= 2)
    assert (reps["n_repeats"].values >= 2).all()
    assert set(_ids(reps, "stim")) == set(np.asarray(ids)[ds["n_repeats"].values >= 2])
    mask = np.asarray(ds["subset"].values) == "est"
    assert _ids(ds.nat4.sel_stims(mask), "stim") == list(np.asarray(ids)[mask])
    animals = sorted(set(ds["animal"].values.tolist()))
    sub = ds.nat4.sel_neurons(animal=tuple(animals[:1]), auditory=True)
    assert set(sub["animal"].values.tolist()) <= {animals[0]}
    assert sub["auditory"].values.all()
    cell = _ids(ds, "neuron")[2]
    assert _ids(ds.nat4.sel_neurons(neuron=[cell]), "neuron") == [cell]
    # two predicates combine with "and"
    both = ds.nat4.sel_stims(lambda t: t["subset"] == "est", lambda t: t.index.str.endswith(".wav"))
    assert set(both["subset"].values.tolist()) == {"est"}


def test_unknown_names_and_bad_masks(random_ds):
    with pytest.raises(KeyError, match="subset"):
        random_ds.nat4.sel_stims(sbuset="val")
    with pytest.raises(KeyError, match="animal"):
        random_ds.nat4.sel_neurons(animals="ARM")
    with pytest.raises(TypeError, match="bool"):
        random_ds.nat4.sel_stims(lambda t: t["n_repeats"])
    with pytest.raises(ValueError, match="shape"):
        random_ds.nat4.sel_neurons(np.ones(3, dtype=bool))


def test_empty_selection_is_a_valid_dataset(random_ds):
    with pytest.warns(nat4xr.Nat4Warning, match="empty selection"):
        out = random_ds.nat4.sel_stims(lambda t: t["n_repeats"] < 0)
    assert dict(out.sizes)["stim"] == 0 and dict(out.sizes)["neuron"] == 0
    nat4xr.check_dataset(out)
    assert out.nat4.prune().sizes["stim"] == 0
    assert "0 stims" in out.nat4.summary()


def test_selection_never_mutates_and_composes(random_ds):
    before = random_ds.copy(deep=True)
    a = random_ds.nat4.sel_stims(subset="val").nat4.sel_neurons(auditory=True)
    a["response"].attrs["changed"] = 1
    a.attrs["changed"] = 1
    xr.testing.assert_identical(random_ds, before)
    assert "changed" not in random_ds["response"].attrs
    # plain xarray composes with the result
    assert a.isel(stim=slice(0, 1)).sizes["stim"] == min(1, a.sizes["stim"])


def test_prune_drops_empty_rows_and_columns(random_ds):
    ds = random_ds.copy()
    cov = np.asarray(ds["coverage"].values).copy()
    cov[1, :] = False
    cov[:, 2] = False
    ds = ds.assign_coords(coverage=(("stim", "neuron"), cov))
    out = ds.nat4.prune(recompute=False)  # the coverage as given
    assert _ids(out, "stim") == [s for i, s in enumerate(_ids(ds, "stim")) if cov[i].any()]
    assert _ids(out, "neuron") == [c for j, c in enumerate(_ids(ds, "neuron")) if cov[:, j].any()]


def test_accessor_pickles_and_plain_datasets_fail_clearly(random_ds):
    again = pickle.loads(pickle.dumps(random_ds))
    assert again.nat4.sel_stims(subset="val").sizes == random_ds.nat4.sel_stims(subset="val").sizes
    acc = pickle.loads(pickle.dumps(random_ds.nat4))
    assert acc.summary() == random_ds.nat4.summary()
    plain = xr.Dataset({"x": ("stim", [1, 2])})
    with pytest.raises(ValueError, match="response"):
        plain.nat4.sel_stims(stim=[0])
    with pytest.raises(ValueError, match="response"):
        plain.nat4.psth()


def test_select_matches_isel_on_every_backend(random_ds, tmp_path):
    cases = [
        (np.array([0, 2, 5]), np.array([1, 2, 3])),
        (np.array([11, 12]), np.array([0, 4, 8])),
        (np.array([], dtype=int), np.arange(9)),
        (np.arange(14), np.array([7])),
    ]
    path = tmp_path / "ds.nc"
    random_ds.compute().to_netcdf(path)
    with xr.open_dataset(path) as on_disk:  # lazily indexed backend arrays, no dask
        # one stim per chunk: neuron positions are gathered block by block
        per_stim = random_ds.chunk({"stim": 1})
        for source in (random_ds, on_disk, per_stim, per_stim.chunk({"neuron": 2})):
            for s, n in cases:
                got = select(source, stim=s, neuron=n)
                want = source.isel(stim=s, neuron=n)
                assert list(got.variables) == list(want.variables)
                assert (got["response"].chunks is None) == (want["response"].chunks is None)
                xr.testing.assert_identical(got.compute(), want.compute())


def test_select_returns_a_new_object_that_closes_the_file(random_ds, tmp_path):
    path = tmp_path / "ds.nc"
    random_ds.compute().to_netcdf(path)
    ds = xr.open_dataset(path, chunks={"stim": 1})
    sub = select(ds, stim=np.array([0, 2]), neuron=np.array([1, 3]))
    sub.attrs["changed"] = 1
    sub.encoding["changed"] = 1
    assert "changed" not in ds.attrs and "changed" not in ds.encoding
    assert sub.encoding["source"] == ds.encoding["source"]
    # the file's layout no longer describes the selected dask arrays
    assert "chunksizes" in ds["response"].encoding
    assert "chunksizes" not in sub["response"].encoding
    with sub:  # a context manager, as ds.isel's result
        sub.load()
    ds.close()


def test_summary_counts(random_ds):
    text = random_ds.nat4.summary()
    n_val = int((random_ds["subset"].values == "val").sum())
    assert f"({14 - n_val} est, {n_val} val)" in text
    assert f"auditory {int(random_ds['auditory'].values.sum())}" in text
    assert f"{100 * random_ds['coverage'].values.mean():.1f}%" in text
    assert repr(random_ds.nat4) == text
    assert "<table>" in random_ds.nat4._repr_html_()


# -- the reference tutorial, in miniature -------------------------------------------------------


def _tutorial_like() -> xr.Dataset:
    """A1-shaped in miniature: dense est coverage, sparse val coverage, 4 animals."""
    rng = np.random.default_rng(7)
    n_est, n_val, n_cell = 23, 6, 40
    names = [f"STIM_cat{i:03d}.wav" for i in range(n_est)] + [
        f"STIM_00cat{i:03d}.wav" for i in range(n_val)
    ]
    stims = pd.DataFrame(
        {"subset": ["est"] * n_est + ["val"] * n_val, "n_repeats": [1] * n_est + [20] * n_val},
        index=names,
    )
    animal = np.array(["ARM"] * 8 + ["CRD"] * 2 + ["DRX"] * 12 + ["TNC"] * 18)
    site = np.array([f"{a}0{i % 3}a" for i, a in enumerate(animal)])
    neurons = pd.DataFrame(
        {
            "area": ["A1"] * n_cell,
            "site": site,
            "animal": animal,
            "electrode": rng.integers(1, 64, n_cell),
            "unit": np.arange(n_cell),
            "auditory": np.arange(n_cell) % 9 != 4,
        },
        index=[f"{s}-{i:02d}-1" for i, s in enumerate(site)],
    )
    cov = np.ones((n_est + n_val, n_cell), dtype=bool)
    no_val = np.array([3, 11, 25, 30])
    cov[n_est:, no_val] = False
    cov[n_est + 1, 5] = False  # sparse, but the cell keeps other val data
    resp = rng.poisson(0.5, (n_est + n_val, n_cell, 20, 6)).astype("float32")
    resp[:n_est, :, 1:] = np.nan
    resp[~cov] = np.nan
    spec = rng.random((n_est + n_val, 3, 6)).astype("float32")
    return make_dataset(resp, spec, stims, neurons, attrs={"area": "A1"})


@pytest.fixture(params=["eager", "dask"])
def tutorial_ds(request):
    ds = _tutorial_like()
    return ds.chunk({"stim": 5}) if request.param == "dask" else ds


def test_tutorial_val_selection_hides_exactly_the_cells_without_val_data(tutorial_ds):
    val = tutorial_ds.nat4.sel_stims(subset="val")
    assert val.sizes["stim"] == 6
    hidden = set(_ids(tutorial_ds, "neuron")) - set(_ids(val, "neuron"))
    expected = {_ids(tutorial_ds, "neuron")[i] for i in (3, 11, 25, 30)}
    assert hidden == expected
    # every remaining cell has val data, and the response agrees
    assert np.asarray(val["coverage"].values).any(axis=0).all()
    assert not np.isnan(val["response"].values).all(axis=(0, 2, 3)).any()


def test_tutorial_auditory_and_animal_filters_and_their_composition(tutorial_ds):
    aud = np.arange(40) % 9 != 4
    animal = np.asarray(tutorial_ds["animal"].values)
    assert tutorial_ds.nat4.sel_neurons(auditory=True).sizes["neuron"] == aud.sum()
    assert tutorial_ds.nat4.sel_neurons(animal="ARM").sizes["neuron"] == 8
    assert tutorial_ds.nat4.sel_neurons(animal=["CRD", "DRX"]).sizes["neuron"] == 14
    has_val = np.ones(40, dtype=bool)
    has_val[[3, 11, 25, 30]] = False
    both = tutorial_ds.nat4.sel_stims(subset="val").nat4.sel_neurons(auditory=True)
    other_order = tutorial_ds.nat4.sel_neurons(auditory=True).nat4.sel_stims(subset="val")
    expected = [c for c, keep in zip(_ids(tutorial_ds, "neuron"), has_val & aud) if keep]
    assert _ids(both, "neuron") == expected == _ids(other_order, "neuron")
    tnc_aud_val = tutorial_ds.nat4.sel_stims(subset="val").nat4.sel_neurons(
        auditory=True, animal="TNC"
    )
    assert tnc_aud_val.sizes["neuron"] == (has_val & aud & (animal == "TNC")).sum()


# -- property tests against brute force ---------------------------------------------------------


def _from_coverage(cov: np.ndarray, flags: np.ndarray, subset: np.ndarray) -> xr.Dataset:
    n_stim, n_cell = cov.shape
    resp = np.where(cov[:, :, None, None], 1.0, np.nan) * np.ones((1, 1, 2, 2))
    stims = pd.DataFrame(
        {"subset": np.where(subset, "val", "est"), "n_repeats": np.where(subset, 2, 1)},
        index=[f"s{i}" for i in range(n_stim)],
    )
    neurons = pd.DataFrame(
        {
            "area": ["A1"] * n_cell,
            "site": ["X"] * n_cell,
            "animal": np.where(flags, "ARM", "TNC"),
            "electrode": np.arange(n_cell),
            "unit": np.arange(n_cell),
            "auditory": flags,
        },
        index=[f"n{j}" for j in range(n_cell)],
    )
    return make_dataset(resp.astype("float32"), np.zeros((n_stim, 1, 2), "float32"), stims, neurons)


patterns = st.integers(1, 7).flatmap(
    lambda s: st.integers(1, 7).flatmap(
        lambda n: st.tuples(
            hnp.arrays(bool, (s, n)), hnp.arrays(bool, (n,)), hnp.arrays(bool, (s,))
        )
    )
)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=os.environ.get("CI") is not None,  # reproducible in CI, exploring elsewhere
)
@given(patterns, st.booleans())
def test_selection_matches_brute_force(pattern, lazy):
    cov, flags, subset = pattern
    ds = _from_coverage(cov, flags, subset)
    if lazy:
        ds = ds.chunk({"stim": 2})
    n_stim, n_cell = cov.shape

    got = ds.nat4.sel_stims(subset="val")
    keep_s = [i for i in range(n_stim) if subset[i]]
    keep_n = [j for j in range(n_cell) if any(cov[i, j] for i in keep_s)]
    assert _ids(got, "stim") == [f"s{i}" for i in keep_s]
    assert _ids(got, "neuron") == [f"n{j}" for j in keep_n]

    got = ds.nat4.sel_neurons(auditory=True)
    keep_n = [j for j in range(n_cell) if flags[j]]
    keep_s = [i for i in range(n_stim) if any(cov[i, j] for j in keep_n)]
    assert _ids(got, "neuron") == [f"n{j}" for j in keep_n]
    assert _ids(got, "stim") == [f"s{i}" for i in keep_s]
    np.testing.assert_array_equal(got["coverage"].values, cov[np.ix_(keep_s, keep_n)])

    got = ds.nat4.prune()
    keep_s = [i for i in range(n_stim) if cov[i].any()]
    keep_n = [j for j in range(n_cell) if cov[:, j].any()]
    assert _ids(got, "stim") == [f"s{i}" for i in keep_s]
    assert _ids(got, "neuron") == [f"n{j}" for j in keep_n]
    # the response agrees with the coverage it travels with
    resp = got["response"].values
    np.testing.assert_array_equal(~np.isnan(resp).all(axis=(2, 3)), got["coverage"].values)
