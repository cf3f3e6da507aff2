"""Neuron splits (held-out site, matched control) and reduced training sets, against loops."""

from __future__ import annotations

import subprocess
import sys
import zlib

import numpy as np
import pytest
import xarray as xr

import nat4xr
from nat4xr.splits import assign_heldout_site, subsample_est
from nat4xr.testing import raise_if_dask_computes


def _dataset(seed: int = 1, n_neurons: int = 30, n_est: int = 20) -> xr.Dataset:
    ds = nat4xr.synthetic.random_dataset(n_est=n_est, n_val=3, n_neurons=n_neurons, seed=seed)
    sites = ds["site"].values.astype(str).copy()
    sites[-1] = ""  # a cell of unknown site: never left out in a site's place
    value = np.random.default_rng(seed).uniform(0, 1, n_neurons).round(2)  # ties happen
    return ds.assign_coords(site=("neuron", sites), pub_r_test=("neuron", value))


def _largest_site(ds: xr.Dataset) -> str:
    sites, counts = np.unique(ds["site"].values[ds["site"].values != ""], return_counts=True)
    return str(sites[np.argmax(counts)])


def _left_out_by_the_rule(ds, site, seed, match_on=None) -> set[str]:
    """The matched condition's left-out cells, one cell at a time from the documented rule."""
    cells = [str(c) for c in ds.neuron.values]
    site_of = dict(zip(cells, ds["site"].values.astype(str)))
    mine = sorted(c for c in cells if site_of[c] == site)
    others = sorted(c for c in cells if site_of[c] not in (site, ""))
    perm = np.random.default_rng([seed, 2, zlib.crc32(site.encode())]).permutation(len(others))
    shuffled = [others[i] for i in perm]
    if match_on is None:
        return set(shuffled[: len(mine)])
    value = dict(zip(cells, ds[match_on].values))
    shuffled = [c for c in shuffled if np.isfinite(value[c])]
    chosen: list[str] = []
    for cell in mine:  # nems_db _matching_cells: the nearest cell not picked yet
        best, best_d = None, np.inf
        for other in shuffled:
            d = abs(value[other] - value[cell])
            if other not in chosen and d < best_d:
                best, best_d = other, d
        chosen.append(best)
    return set(chosen)


# -- held-out site -----------------------------------------------------------------------------


def test_heldout_leaves_out_exactly_the_sites_cells():
    ds = _dataset()
    for site in sorted(set(ds["site"].values.tolist()) - {""}):
        out = assign_heldout_site(ds, site)
        assert out["pretrain"].dtype == bool
        for cell, s, pre in zip(ds.neuron.values, ds["site"].values, out["pretrain"].values):
            assert pre == (s != site), cell
        assert out["pretrain"].attrs["condition"] == "heldout"
        assert out["pretrain"].attrs["heldout_site"] == site
    assert "pretrain" not in ds.coords  # the input is not modified
    rule = assign_heldout_site(ds, np.str_(site), matched=True)["pretrain"].attrs["rule"]
    assert f"crc32('{site}')" in rule  # a numpy string reads as the plain site name


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_matched_leaves_out_as_many_cells_of_other_sites_drawn_by_the_rule(seed):
    ds = _dataset()
    site = _largest_site(ds)
    held = assign_heldout_site(ds, site, seed=seed)
    matched = assign_heldout_site(ds, site, matched=True, seed=seed)
    out = set(matched.neuron.values[~matched["pretrain"].values].tolist())
    assert out == _left_out_by_the_rule(ds, site, seed)
    n_site = int((ds["site"] == site).sum())
    assert len(out) == n_site
    # the same number of cells pre-train in both conditions, the site's cells all of them
    assert int(matched["pretrain"].sum()) == int(held["pretrain"].sum())
    assert matched["pretrain"].values[ds["site"].values == site].all()
    assert not (set(out) & set(ds.neuron.values[ds["site"].values == ""].tolist()))
    assert matched["pretrain"].attrs["condition"] == "matched"


def test_matched_draw_depends_on_the_ids_and_the_seed_not_the_order():
    ds = _dataset()
    site = _largest_site(ds)
    a = assign_heldout_site(ds, site, matched=True, seed=3)
    perm = np.random.default_rng(0).permutation(ds.sizes["neuron"])
    b = assign_heldout_site(ds.isel(neuron=perm), site, matched=True, seed=3)
    xr.testing.assert_equal(b["pretrain"].sel(neuron=a.neuron), a["pretrain"])
    draws = {
        tuple(assign_heldout_site(ds, site, matched=True, seed=s)["pretrain"].values)
        for s in range(5)
    }
    assert len(draws) > 1


@pytest.mark.parametrize("seed", [0, 4])
def test_matched_on_a_value_follows_nems_dbs_nearest_cell_rule(seed):
    ds = _dataset()
    site = _largest_site(ds)
    value = ds["pub_r_test"].values.copy()
    nan_cell = int(np.flatnonzero(ds["site"].values != site)[0])
    value[nan_cell] = np.nan  # a cell of another site without a value is never chosen
    ds = ds.assign_coords(pub_r_test=("neuron", value))
    out = assign_heldout_site(ds, site, matched=True, seed=seed, match_on="pub_r_test")
    left = set(out.neuron.values[~out["pretrain"].values].tolist())
    assert left == _left_out_by_the_rule(ds, site, seed, match_on="pub_r_test")
    assert str(ds.neuron.values[nan_cell]) not in left
    assert "pub_r_test" in out["pretrain"].attrs["rule"]
    # the matched cells are close in value: their sorted values track the site's
    mine = np.sort(value[ds["site"].values == site])
    theirs = np.sort(value[np.isin(ds.neuron.values, list(left))])
    assert np.abs(mine - theirs).max() < 0.2


def test_bad_input_names_the_site_and_the_remedy():
    ds = _dataset()
    with pytest.raises(ValueError, match=r"site 'XYZ001a' is not in the Dataset.*ARM010a \(\d+\)"):
        assign_heldout_site(ds, "XYZ001a")
    with pytest.raises(ValueError, match="site '' is not in the Dataset"):
        assign_heldout_site(ds, "")
    with pytest.raises(ValueError, match="no 'site' neuron coordinate"):
        assign_heldout_site(ds.drop_vars("site"), "ARM010a")
    # a site with more cells than the others hold together: the matched draw is impossible
    big = _largest_site(ds)
    other = np.flatnonzero((ds["site"].values != big) & (ds["site"].values != ""))[:2]
    lopsided = ds.isel(neuron=np.concatenate([np.flatnonzero(ds["site"].values == big), other]))
    n_big = int((lopsided["site"] == big).sum())
    with pytest.raises(ValueError, match=f"site '{big}' has {n_big} cells but only 2 cells"):
        assign_heldout_site(lopsided, big, matched=True)
    assign_heldout_site(lopsided, big)  # the held-out condition needs no draw
    with pytest.raises(ValueError, match="match_on='nope' is not a neuron coordinate"):
        assign_heldout_site(ds, big, matched=True, match_on="nope")
    value = ds["pub_r_test"].values.copy()
    value[ds["site"].values == big] = np.nan
    with pytest.raises(ValueError, match=f"of site '{big}' have no pub_r_test value"):
        assign_heldout_site(
            ds.assign_coords(pub_r_test=("neuron", value)), big, matched=True, match_on="pub_r_test"
        )


# -- reduced training sets -----------------------------------------------------------------------


FRACTIONS = [1.0, 0.5, 0.25, 0.15, 0.1]


def _kept_by_the_rule(ds: xr.Dataset, fraction: float, seed: int) -> set[str]:
    est = sorted(str(s) for s, sub in zip(ds.stim.values, ds["subset"].values) if sub == "est")
    perm = np.random.default_rng([seed, 3]).permutation(len(est))
    n_keep = max(1, int(np.floor(fraction * len(est) + 0.5)))
    return {est[perm[i]] for i in range(n_keep)}


@pytest.mark.parametrize("seed", [0, 2])
def test_subsample_keeps_the_fraction_of_est_nested_and_every_val_sound(seed):
    ds = _dataset(n_est=20)
    val = ds.isel(stim=np.flatnonzero(ds["subset"].values == "val"))
    kept = {}
    for f in FRACTIONS:
        out = subsample_est(ds, f, seed=seed)
        est = set(out.stim.values[out["subset"].values == "est"].tolist())
        assert est == _kept_by_the_rule(ds, f, seed)
        assert len(est) == {1.0: 20, 0.5: 10, 0.25: 5, 0.15: 3, 0.1: 2}[f]
        # val untouched: the same sounds, the same data; no neuron dropped; order kept
        xr.testing.assert_identical(out.sel(stim=val.stim)["response"], val["response"])
        assert out.sizes["neuron"] == ds.sizes["neuron"]
        pos = [list(ds.stim.values).index(s) for s in out.stim.values]
        assert pos == sorted(pos)
        kept[f] = est
    for small, large in zip(FRACTIONS[1:], FRACTIONS):
        assert kept[small] <= kept[large]
    assert subsample_est(ds, 0.5, seed=seed + 1).stim.values.tolist() != sorted(kept[0.5])


def test_subsample_ignores_the_datasets_order():
    ds = _dataset()
    shuffled = ds.isel(stim=np.random.default_rng(1).permutation(ds.sizes["stim"]))
    a, b = subsample_est(ds, 0.25, seed=5), subsample_est(shuffled, 0.25, seed=5)
    assert set(a.stim.values.tolist()) == set(b.stim.values.tolist())


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.01, 2, float("nan"), True, "0.5", None])
def test_subsample_rejects_a_fraction_outside_0_to_1(fraction):
    with pytest.raises(ValueError, match=r"fraction must be"):
        subsample_est(_dataset(), fraction)


def test_subsample_needs_est_sounds():
    ds = _dataset()
    with pytest.raises(ValueError, match="no estimation sounds"):
        subsample_est(ds.nat4.sel_stims(subset="val"), 0.5)


# -- as data: laziness, processes, selection, concat, cache -----------------------------------


def test_both_stay_lazy():
    site = _largest_site(_dataset())
    ds = _dataset().chunk({"stim": 2})
    with raise_if_dask_computes():
        out = ds.nat4.assign_heldout_site(site, matched=True).nat4.subsample_est(0.5)
    assert out["response"].chunks is not None


_IN_A_NEW_PROCESS = """
import numpy as np, nat4xr
ds = nat4xr.synthetic.random_dataset(n_est=20, n_val=3, n_neurons=30, seed=1)
print(ds.nat4.assign_heldout_site("ARM010a", matched=True, seed=9)["pretrain"].values.tolist())
print(ds.nat4.subsample_est(0.15, seed=9).stim.values.tolist())
"""


def test_identical_in_another_process():
    ds = nat4xr.synthetic.random_dataset(n_est=20, n_val=3, n_neurons=30, seed=1)
    here = [
        str(
            ds.nat4.assign_heldout_site("ARM010a", matched=True, seed=9)["pretrain"].values.tolist()
        ),
        str(ds.nat4.subsample_est(0.15, seed=9).stim.values.tolist()),
    ]
    out = subprocess.run(
        [sys.executable, "-c", _IN_A_NEW_PROCESS], capture_output=True, text=True, check=True
    )
    assert out.stdout.split("\n")[:2] == here


def test_survive_selection_concat_and_the_cache(tmp_path):
    pytest.importorskip("nat4xr.cachefile")
    ds = _dataset()
    site = _largest_site(ds)
    ds = ds.nat4.assign_heldout_site(site, matched=True, seed=2)
    # selection: the coordinate travels with the cells, and selects them
    pre = ds.nat4.sel_neurons(pretrain=True)
    assert int(pre.sizes["neuron"]) == int(ds["pretrain"].sum())
    xr.testing.assert_equal(pre["pretrain"], ds["pretrain"].sel(neuron=pre.neuron))
    # concat: kept where present, a typed False where an input has none
    other = nat4xr.synthetic.random_dataset(n_est=4, n_val=2, n_neurons=5, seed=8, area="PEG")
    joint = nat4xr.concat([ds, other], names=["A1", "PEG"])
    assert joint["pretrain"].dtype == bool
    pretrain = joint["pretrain"].values
    np.testing.assert_array_equal(pretrain[: ds.sizes["neuron"]], ds["pretrain"].values)
    assert not pretrain[ds.sizes["neuron"] :].any()
    # the cache: bool in, bool out; the reduced set drawn again from the reopened file
    path = nat4xr.cachefile.write_cache(ds, tmp_path / "cache.nc")
    back = nat4xr.cachefile.open_cache(path)
    try:
        assert back["pretrain"].dtype == bool
        np.testing.assert_array_equal(back["pretrain"].values, ds["pretrain"].values)
        again = back.nat4.subsample_est(0.25, seed=4)
        assert (
            again.stim.values.tolist() == ds.nat4.subsample_est(0.25, seed=4).stim.values.tolist()
        )
        xr.testing.assert_equal(
            again["response"].load(), ds.nat4.subsample_est(0.25, seed=4)["response"]
        )
    finally:
        back.close()
