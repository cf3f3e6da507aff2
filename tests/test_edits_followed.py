"""What follows a later change of the data: concatenations and in-place writes, prune's
trust in the stored coverage, loaders and replaced variables; grids stacked by xarray."""

from __future__ import annotations

import numpy as np
import xarray as xr

import nat4xr
from nat4xr.cachefile import open_cache, write_cache
from nat4xr.selection import select


def _source(seed: int, area: str):
    return nat4xr.synthetic.random_dataset(n_est=9, n_val=4, n_neurons=7, seed=seed).assign_attrs(
        area=area
    )


def test_a_concatenations_selection_agrees_with_it_after_a_write_into_a_chunks_none_input(
    tmp_path,
):
    # a concatenation reads its inputs when computed (as xarray's own chunk() does): a write
    # into an input's values in place shows in it, and in a selection made before alike
    a1 = _source(1, "A1")
    peg = open_cache(write_cache(_source(2, "PEG"), tmp_path / "c.nc"), chunks=None)
    joint = nat4xr.concat([a1, peg])
    stim, neuron = np.arange(3, 24, 2), np.array([0, 6, 7, 13])
    lazy = select(joint, stim=stim, neuron=neuron)  # made before the write
    again = select(lazy, stim=np.arange(1, 9), neuron=np.array([1, 2, 3]))  # and of it
    peg["response"][0, 0] = 1234.0  # in place, into the file's values (copied on write)
    now = joint.compute()
    np.testing.assert_array_equal(
        lazy["response"].values, select(now, stim=stim, neuron=neuron)["response"].values
    )
    np.testing.assert_array_equal(
        again["response"].values,
        select(select(now, stim=stim, neuron=neuron), stim=np.arange(1, 9),
               neuron=np.array([1, 2, 3]))["response"].values,
    )  # fmt: skip
    peg.close()


def test_a_concatenations_selection_agrees_with_it_after_a_write_into_an_in_memory_input():
    a1, peg = _source(1, "A1"), _source(2, "PEG")
    joint = nat4xr.concat([a1, peg])
    stim, neuron = np.arange(3, 24, 2), np.array([0, 6, 7, 13])
    lazy = select(joint, stim=stim, neuron=neuron)
    peg["response"][0, 0] = 1234.0  # in place, into the input's numpy array
    now = joint.compute()
    np.testing.assert_array_equal(
        lazy["response"].values, select(now, stim=stim, neuron=neuron)["response"].values
    )


def _est_and_val(seed: int = 3):
    """Est stims recorded once, val stims several times; every pair covered."""
    return nat4xr.synthetic.random_dataset(n_est=9, n_val=4, n_neurons=7, seed=seed, p_missing=0.0)


def test_prune_of_a_chunks_none_file_after_its_repeats_are_shifted_and_renumbered(tmp_path):
    source = _est_and_val()
    later = slice(1, None)  # est stims have one repeat: nothing of theirs is kept
    with open_cache(write_cache(source, tmp_path / "c.nc"), chunks=None) as lazy:
        n = lazy.sizes["repeat"] - 1
        cut = lazy.isel(repeat=later).assign_coords(repeat=np.arange(n))  # renumbered from 0
        got = cut.nat4.prune()
        want = source.isel(repeat=later).assign_coords(repeat=np.arange(n)).nat4.prune()
        np.testing.assert_array_equal(got["stim"].values, want["stim"].values)
        np.testing.assert_array_equal(got["coverage"].values, want["coverage"].values)


def test_prune_after_n_repeats_is_edited_follows_the_values(tmp_path):
    source = _est_and_val()
    val = int(np.flatnonzero(source["n_repeats"].values > 1)[0])
    values = source["response"].values.copy()
    values[val, :, 0] = np.nan  # this val stim holds data in its later repeats only
    source = source.assign(response=(source["response"].dims, values, source["response"].attrs))
    with open_cache(write_cache(source, tmp_path / "c.nc")) as lazy:
        cut = select(lazy, repeat=1)  # the first repeat, read from the file
        cut = cut.assign_coords(n_repeats=cut["n_repeats"] * 0 + 1)  # "one repeat each"
        got = cut.nat4.prune()
        want = cut.nat4.prune(recompute=True)  # the stim has no value in repeat 0: dropped
        assert source["stim"].values[val] not in want["stim"].values
        np.testing.assert_array_equal(got["stim"].values, want["stim"].values)


def _batches(loader):
    return [b["responses"].numpy() for b in loader]


def test_a_loader_keeps_its_variables_when_the_dataset_replaces_them_whatever_the_storage(
    tmp_path,
):
    # a loader reads the variables it was made with; values changed in them in place are
    # followed (tests/test_selection_after_edits.py), a variable replaced in the Dataset is not:
    # the same on every storage (the file-backed one followed replacements, the others not)
    source = _source(3, "A1")
    path = write_cache(source, tmp_path / "c.nc")
    want = _batches(source.nat4.to_torch(batch_size=3))
    for what, ds in (("in memory", source.copy()), ("chunks=None", open_cache(path, chunks=None)),
                     ("dask", open_cache(path))):  # fmt: skip
        loader = ds.nat4.to_torch(batch_size=3)
        ds["response"] = ds["response"] * 2  # another variable in the Dataset
        got = _batches(loader)
        assert len(got) == len(want), what
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w, err_msg=what)


def _seed_fraction_scores():
    rng = np.random.default_rng(3)
    values = rng.uniform(0.1, 0.7, (2, 3, 25))
    return xr.Dataset(
        {
            "cc_raw": (("seed", "fraction", "neuron"), values),
            "cc_norm": (("seed", "fraction", "neuron"), values * 1.2),
        },
        coords={
            "seed": [0, 1],
            "fraction": [1.0, 0.5, 0.25],
            "neuron": [f"c{k}" for k in range(25)],
        },
    )


def test_the_scores_of_a_grid_stacked_as_xarray_stacks_it_are_a_sweep():
    # Dataset.stack puts the new dim last: the scores are (neuron, cfg), one cell's numbers
    # per level all the same; the leaderboard said they "hold no per-cell numbers"
    grid = _seed_fraction_scores()
    stacked = grid.stack(cfg=("seed", "fraction"))
    board = nat4xr.leaderboard(stacked)
    want = nat4xr.leaderboard(stacked.transpose("cfg", "neuron"))
    assert board["line"].tolist() == want["line"].tolist()
    table = nat4xr.compare(stacked, dim="cfg", baseline=(0, 1.0), metrics=["cc_raw"])
    assert table.equals(
        nat4xr.compare(
            stacked.transpose("cfg", "neuron"), dim="cfg", baseline=(0, 1.0), metrics=["cc_raw"]
        )
    )
