"""Selections of file-backed and concatenated Datasets against an in-memory copy.

Each test is a case where a lazy selection and the same selection of the
computed values must agree.
"""

from __future__ import annotations

import numpy as np

import nat4xr
from nat4xr.cachefile import open_cache, write_cache
from nat4xr.selection import select


def _source(seed: int = 11):
    return nat4xr.synthetic.random_dataset(n_est=9, n_val=4, n_neurons=7, seed=seed)


def test_a_concatenations_selection_ignores_later_edits_of_a_dask_input(tmp_path):
    source = _source()
    a1 = open_cache(write_cache(source, tmp_path / "c.nc"))
    peg = source.chunk({"stim": 3}).assign_attrs(area="PEG")
    joint = nat4xr.concat([a1, peg], names=["A1", "PEG"])
    want = joint.compute()
    peg.response[0, 0] = 1234.0  # in place: renames peg's dask array; joint is unchanged
    np.testing.assert_array_equal(joint["response"].values, want["response"].values)
    stim, neuron = np.arange(10, joint.sizes["stim"]), np.arange(5, 14)
    got = select(joint, stim=stim, neuron=neuron)
    np.testing.assert_array_equal(
        got["response"].values, select(want, stim=stim, neuron=neuron)["response"].values
    )
    a1.close()


def test_a_concatenation_selects_after_an_input_was_loaded_in_place(tmp_path):
    a1 = _source(1).assign_attrs(area="A1")
    peg = _source(2).assign_attrs(area="PEG")
    inputs = [open_cache(write_cache(d, tmp_path / f"{i}.nc")) for i, d in enumerate((a1, peg))]
    joint = nat4xr.concat(inputs)
    inputs[0].load()  # xarray's in-place load: the input's variable now holds numpy
    got = joint.nat4.sel_stims(subset="val")
    want = nat4xr.concat([a1, peg]).nat4.sel_stims(subset="val")
    np.testing.assert_array_equal(got["response"].values, want["response"].values)
    for ds in inputs:
        ds.close()


def test_select_never_takes_positions_it_was_not_given():
    source = _source()
    for positions in ([0, 2, 1, 3], [0, 0, 2]):
        got = select(source, stim=np.array(positions))
        # either the positions as given (what isel gives) or an error; never other stims
        np.testing.assert_array_equal(
            got["stim"].values, source["stim"].values[positions], err_msg=str(positions)
        )


def test_a_concatenations_selection_agrees_with_it_after_a_lazy_input_is_edited(tmp_path):
    a1 = _source(1).assign_attrs(area="A1")
    peg = _source(2).assign_attrs(area="PEG")
    inputs = [
        open_cache(write_cache(d, tmp_path / f"{i}.nc"), chunks=None)
        for i, d in enumerate((a1, peg))
    ]
    joint = nat4xr.concat(inputs)
    val = joint.nat4.sel_stims(subset="val")  # lazy, computed below
    inputs[1].load()  # in place
    inputs[1]["response"][...] = 5.0  # the joint reads its inputs when computed: it sees this
    np.testing.assert_array_equal(
        val["response"].values, joint.compute().nat4.sel_stims(subset="val")["response"].values
    )
    for ds in inputs:
        ds.close()


def test_prune_after_a_selection_of_repeats_follows_the_values(tmp_path):
    source = _source()
    path = write_cache(source, tmp_path / "c.nc")
    cases = {
        "later repeats": lambda d: d.isel(repeat=slice(10, None)),
        "val, later repeats": lambda d: d.nat4.sel_stims(subset="val").isel(repeat=slice(5, None)),
    }
    for chunks in ("auto", None):
        with open_cache(path, chunks=chunks) as lazy:
            for what, cut in cases.items():
                got = cut(lazy).nat4.prune()
                want = cut(source).nat4.prune()  # coverage derived again from the values
                case = f"{what}, chunks={chunks}"
                np.testing.assert_array_equal(got["stim"].values, want["stim"].values, case)
                np.testing.assert_array_equal(got["coverage"].values, want["coverage"].values, case)


def test_a_loader_follows_a_selection_loaded_and_edited_in_place(tmp_path):
    source = _source()
    with open_cache(write_cache(source, tmp_path / "c.nc")) as lazy:
        val = lazy.nat4.sel_stims(subset="val")
        loader = val.nat4.to_torch(batch_size=2)
        val.load()  # in place: the Dataset's response is numpy from here
        val["response"][0, 0] = 5.0  # as it would follow an assignment into the dask array
        got = [b["responses"].numpy() for b in loader]
        want = [b["responses"].numpy() for b in val.nat4.to_torch(batch_size=2)]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def test_a_persisted_dataset_selects_after_its_file_is_closed_and_removed(tmp_path):
    source = _source()
    path = write_cache(source, tmp_path / "c.nc")
    lazy = open_cache(path)
    kept = lazy.persist()  # every value in memory
    lazy.close()
    path.unlink()  # e.g. `nat4xr cache clear`: nothing holds the file any more
    want = source.nat4.sel_stims(subset="val")
    got = kept.nat4.sel_stims(subset="val")
    np.testing.assert_array_equal(got["response"].values, want["response"].values)
    np.testing.assert_array_equal(kept.nat4.load()["response"].values, source["response"].values)
