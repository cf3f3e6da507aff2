"""Selections of a cache file's dask values are read from the file, a task at a time.

A dask variable that holds exactly a cache file's values (opened or selected
by nat4xr) is selected as a new dask array over the file's lazily indexed
variable at the selected positions: each task reads only its own stims, and
of those only the kept cells and repeats. Checked here: what the engine reads
per task (counted at :meth:`CacheArray.read`), the chunking, the dask names,
provenance (batches, prune, plain ``isel`` of a selection), the values after
the transforms users chain, on every storage, against an in-memory copy, and
that nothing computes and no file stays open.
"""

from __future__ import annotations

import gc
import threading

import dask
import numpy as np
import pytest
import xarray as xr

import nat4xr
from nat4xr import cachedir, provenance
from nat4xr.batches import file_source
from nat4xr.cachefile import arrays, open_cache, reading, write_cache
from nat4xr.selection import coverage_current, prune, select
from nat4xr.testing import raise_if_dask_computes

DIMS = {"response": ("stim", "neuron", "repeat", "time")}


@pytest.fixture(scope="module")
def source():
    return nat4xr.synthetic.random_dataset(n_est=9, n_val=4, n_neurons=7, seed=11)


@pytest.fixture
def path(tmp_path, source):
    return write_cache(source, tmp_path / "c.nc")


@pytest.fixture
def reads(monkeypatch):
    """Every read the engine makes: the number of positions along each axis, and the stims."""
    log: list[tuple[tuple[int, ...], list[int]]] = []
    lock = threading.Lock()
    original = arrays.CacheArray.read

    def counting(self, positions):
        if self.index.name == "response":
            with lock:
                log.append((tuple(len(p) for p in positions), positions[0].tolist()))
        return original(self, positions)

    monkeypatch.setattr(arrays.CacheArray, "read", counting)
    return log


def _val_cells(ds):
    return ds.nat4.sel_stims(subset="val").nat4.sel_neurons(lambda t: np.arange(len(t)) % 3 != 1)


def test_each_task_reads_only_its_stims_and_the_kept_cells_and_repeats(path, source, reads):
    with open_cache(path) as lazy:
        sel = _val_cells(lazy)
        _, n_neuron, n_repeat, n_time = sel["response"].shape
        assert n_neuron < lazy.sizes["neuron"] and n_repeat > 1
        reads.clear()
        got = sel["response"].values
        # one read per dask task, each of its own block's shape: the kept cells and
        # repeats only, never a whole stored chunk of every cell and repeat
        blocks = [s for c in sel["response"].chunks[0] for s in [(c, n_neuron, n_repeat, n_time)]]
        assert sorted(r[0] for r in reads) == sorted(blocks)
        stims = sorted(s for _, stims in reads for s in stims)
        want = np.flatnonzero(np.isin(lazy["stim"].values, sel["stim"].values))
        assert stims == want.tolist()  # every kept stim read once, no other
        est = lazy.nat4.sel_stims(subset="est")
        assert est.sizes["repeat"] == 1
        reads.clear()
        est["response"].compute()
        assert {r[0][2] for r in reads} == {1}  # est sounds: the one repeat they have
    expected = _val_cells(source)["response"].values
    np.testing.assert_array_equal(got, expected)


def test_auto_chunks_follow_the_selections_size(path, monkeypatch):
    with open_cache(path) as lazy:
        val = lazy.nat4.sel_stims(subset="val")
        per_stim = val["response"].dtype.itemsize * np.prod(val["response"].shape[1:])
        monkeypatch.setattr(reading, "SELECTION_CHUNK_BYTES", int(per_stim * 3))
        val = lazy.nat4.sel_stims(subset="val")
        assert val["response"].chunks[0] == (3, 1)
        assert val["response"].chunks[1:] == tuple((n,) for n in val["response"].shape[1:])
        assert val["spectrogram"].chunks[0] == (3, 1)
        assert val.chunks["stim"] == (3, 1)  # one chunking for the Dataset
        # a smaller selection of it is never chunked coarser than its parent
        assert _val_cells(lazy)["response"].chunks[0] == (3, 1)
        est = lazy.nat4.sel_stims(subset="est")  # one repeat: 17 x smaller per stim
        assert est["response"].chunks[0] == (est.sizes["stim"],)


def test_selections_keep_the_parents_chunk_boundaries(tmp_path):
    from nat4xr.batches import storage_groups

    ds = nat4xr.synthetic.random_dataset(
        n_est=40, n_val=4, n_neurons=3, n_time=5, seed=2, p_missing=0.0
    )
    with open_cache(write_cache(ds, tmp_path / "c.nc")) as lazy:
        assert lazy["response"].chunks[0] == (32, 12)
        cells = lazy.nat4.sel_neurons(lambda t: np.arange(len(t)) != 1)  # every stim kept
        plain = lazy.isel(neuron=[0, 2], repeat=slice(0, cells.sizes["repeat"]))
        assert cells["response"].chunks == plain["response"].chunks
        # so loaders that shuffle within chunks keep their order
        groups = [g.tolist() for g in storage_groups(cells)]
        assert groups == [g.tolist() for g in storage_groups(plain)]
        some = select(lazy, stim=np.array([0, 5, 31, 32, 40, 43]))
        assert some["response"].chunks[0] == (3, 3)  # the parent's boundaries, mapped


def test_chosen_chunks_keep_their_boundaries(path, source):
    with open_cache(path, chunks={"stim": 3, "neuron": 4}) as lazy:
        sel = select(lazy, stim=np.array([0, 1, 4, 7, 8, 12]), neuron=np.array([0, 2, 5, 6]))
        assert sel["response"].chunks[:2] == ((2, 1, 2, 1), (2, 2))
        assert sel["spectrogram"].chunks[0] == (2, 1, 2, 1)
        np.testing.assert_array_equal(
            sel["response"].values, source["response"].values[[0, 1, 4, 7, 8, 12]][:, [0, 2, 5, 6]]
        )


def test_dask_names_are_tokens_of_file_and_selection(path, tmp_path, source):
    other = write_cache(source, tmp_path / "other.nc")
    with open_cache(path) as a, open_cache(path) as again, open_cache(other) as b:
        names = {
            "a": _val_cells(a)["response"].data.name,
            "again": _val_cells(again)["response"].data.name,
            "b": _val_cells(b)["response"].data.name,
            "other cells": a.nat4.sel_stims(subset="val")["response"].data.name,
        }
        assert names["a"] == names["again"] == _val_cells(a)["response"].data.name
        assert len({names["a"], names["b"], names["other cells"]}) == 3


def test_selecting_computes_nothing_and_keeps_provenance(path, source):
    with open_cache(path) as lazy:
        with raise_if_dask_computes():
            sel = _val_cells(lazy).nat4.prune().isel(neuron=[3, 0, 1])
            placed = provenance.placement(
                sel["response"], lazy["response"].encoding["nat4xr_source"]
            )
            assert placed is not None
            assert coverage_current(sel)
            assert file_source(sel, DIMS) is not None
        want_neurons = np.flatnonzero(np.isin(lazy["neuron"].values, sel["neuron"].values))
        assert sorted(placed.positions["neuron"].tolist()) == want_neurons.tolist()
        data = nat4xr.torch.NAT4TorchDataset(sel) if hasattr(nat4xr, "torch") else None
        if data is not None:
            assert data.file_backed
        expected = _val_cells(source).isel(neuron=[3, 0, 1])["response"].values
        np.testing.assert_array_equal(sel["response"].values, expected)


def test_a_plain_isel_of_a_dropped_selection_is_recognised(path):
    with open_cache(path) as lazy:
        hint = lazy["response"].encoding["nat4xr_source"]
        sub = _val_cells(lazy).isel(neuron=[2, 0])  # the selection itself is gone
        gc.collect()
        assert provenance.placement(sub["response"], hint) is not None
        assert file_source(sub, DIMS) is not None


STORAGES = {
    "auto": "auto",
    "int": 4,
    "dict": {"stim": 2, "neuron": 3},
    "none": None,
}

TRANSFORMS = {
    "val, cells": _val_cells,
    "est": lambda ds: ds.nat4.sel_stims(subset="est"),
    "reordered, then selected": lambda ds: ds.isel(
        stim=np.arange(ds.sizes["stim"])[::-1], neuron=[6, 1, 3, 0]
    ).nat4.sel_stims(subset="val"),
    "selected twice, pruned": lambda ds: (
        _val_cells(ds).nat4.sel_neurons(lambda t: np.arange(len(t)) > 0).nat4.prune()
    ),
    "edited, then selected": lambda ds: ds.assign(response=ds.response * 2).nat4.sel_stims(
        subset="val"
    ),
    "shifted, then selected": lambda ds: ds.assign(
        response=ds.response.shift(time=1)
    ).nat4.sel_stims(subset="val"),
    "nothing kept": lambda ds: select(ds, stim=np.array([], dtype=int)),
    "one repeat": lambda ds: select(ds, stim=np.array([1, 2]), repeat=1),
}


@pytest.mark.parametrize("storage", list(STORAGES))
def test_values_equal_an_in_memory_copys_after_transforms(path, source, storage):
    with open_cache(path, chunks=STORAGES[storage]) as lazy:
        for name, transform in TRANSFORMS.items():
            with raise_if_dask_computes():
                got = transform(lazy)
            want = transform(source)
            assert got["response"].shape == want["response"].shape, name
            np.testing.assert_array_equal(
                got["response"].values, want["response"].values, err_msg=name
            )
            np.testing.assert_array_equal(got["stim"].values, want["stim"].values, err_msg=name)
            np.testing.assert_array_equal(got["neuron"].values, want["neuron"].values, err_msg=name)
            loaded = got.nat4.load()
            xr.testing.assert_identical(loaded.drop_encoding(), got.load().drop_encoding())


def test_edited_values_are_not_read_from_the_file(path, source, reads):
    with open_cache(path) as lazy:
        edited = lazy.assign(response=lazy.response + 1).nat4.sel_stims(subset="val")
        assert provenance.placement(edited["response"]) is None
        np.testing.assert_array_equal(
            edited["response"].values,
            source.nat4.sel_stims(subset="val")["response"].values + 1,
        )


def test_load_reads_file_values_straight_into_the_result(path, source, monkeypatch):
    from nat4xr import loading

    def refuse(data):
        raise AssertionError("computed through dask")

    with open_cache(path) as lazy:
        monkeypatch.setattr(loading, "_filled", refuse)
        with raise_if_dask_computes():
            got = _val_cells(lazy).nat4.load()
        np.testing.assert_array_equal(got["response"].values, _val_cells(source)["response"].values)
        np.testing.assert_array_equal(
            got["spectrogram"].values, _val_cells(source)["spectrogram"].values
        )
        with pytest.raises(AssertionError, match="through dask"):
            lazy.assign(response=lazy.response * 1).nat4.load()


def test_selections_leave_no_file_open(tmp_path, monkeypatch, source):
    monkeypatch.setenv("NAT4XR_CACHE_DIR", str(tmp_path / "cache"))
    target = write_cache(source, cachedir.cache_dir() / "A1-all-0123456789abcdef.nc", key="k")
    lazy = open_cache(target)
    sel = _val_cells(lazy).isel(neuron=[1, 0])
    sel.nat4.load()
    with dask.config.set(scheduler="threads"):
        sel["response"].sum().compute()
    del lazy, sel
    gc.collect()
    assert cachedir.cache_clear() == [target]


def test_one_chunking_when_a_variable_is_not_the_files(path, source, monkeypatch):
    monkeypatch.setattr(reading, "SELECTION_CHUNK_BYTES", 1)  # a stim per chunk, if chunked anew
    with open_cache(path) as lazy:
        assert _val_cells(lazy)["response"].chunks[0] == (1, 1, 1, 1)
        mixed = lazy.assign(spectrogram=lazy.spectrogram * 1)
        sel = _val_cells(mixed)
        assert provenance.placement(sel["response"]) is not None
        assert sel["response"].chunks[0] == sel["spectrogram"].chunks[0]
        assert sel.chunks["stim"] == sel["response"].chunks[0]
        np.testing.assert_array_equal(
            sel["spectrogram"].values, _val_cells(source)["spectrogram"].values
        )


# -- selections of a concatenation are pushed down into its inputs ----------------------------


@pytest.fixture
def areas(tmp_path):
    a1 = nat4xr.synthetic.random_dataset(n_est=9, n_val=4, n_neurons=7, seed=1, area="A1")
    peg = nat4xr.synthetic.random_dataset(n_est=6, n_val=3, n_neurons=5, seed=2, area="PEG")
    est_only = nat4xr.synthetic.random_dataset(n_est=5, n_val=0, n_neurons=3, seed=3, area="X")
    paths = [write_cache(d, tmp_path / f"{i}.nc") for i, d in enumerate((a1, peg, est_only))]
    return (a1, peg, est_only), paths


JOINT_SELECTIONS = {
    "val": lambda d: d.nat4.sel_stims(subset="val"),
    "the last area's cells": lambda d: d.nat4.sel_neurons(
        source=str(d["neuron_source"].values[-1])
    ),
    "val, every other cell": lambda d: d.nat4.sel_stims(subset="val").nat4.sel_neurons(
        lambda t: np.arange(len(t)) % 2 == 0
    ),
    "est, pruned": lambda d: prune(d.nat4.sel_stims(subset="est"), recompute=False),
    "stims of one area, cells of another": lambda d: select(
        d, stim=np.arange(3), neuron=np.arange(d.sizes["neuron"] - 2, d.sizes["neuron"])
    ),
    "one repeat": lambda d: select(d, stim=np.arange(0, d.sizes["stim"], 2), repeat=1),
}


@pytest.mark.parametrize("join", ["block", "shared"])
def test_selections_of_a_concatenation_equal_the_in_memory_ones(areas, join, reads):
    inputs, paths = areas
    names = ["A1", "PEG", "X"]
    if join == "shared":  # the same recordings under two names: every stim shared
        inputs, paths, names = inputs[:1] * 2, paths[:1] * 2, ["A1", "A1b"]
    storages = {
        "auto": [open_cache(p) for p in paths],
        "chunks=2": [open_cache(p, chunks=2) for p in paths],
        "mixed": [open_cache(paths[0]), inputs[1], open_cache(paths[-1], chunks=None)],
    }
    want_joint = nat4xr.concat(list(inputs), names=names, join=join)
    for storage, opened in storages.items():
        opened = opened[: len(inputs)]
        with raise_if_dask_computes():
            joint = nat4xr.concat(opened, names=names, join=join)
        for what, transform in JOINT_SELECTIONS.items():
            with raise_if_dask_computes():
                got = transform(joint)
                again = transform(got) if what != "one repeat" else got
            want = transform(want_joint)
            case = f"{join}, {storage}, {what}"
            np.testing.assert_array_equal(
                got["response"].values, want["response"].values, err_msg=case
            )
            np.testing.assert_array_equal(
                again["response"].values,
                (transform(want) if what != "one repeat" else want)["response"].values,
                err_msg=case,
            )
            np.testing.assert_array_equal(got["neuron"].values, want["neuron"].values)
            assert got.chunks["stim"] == got["response"].chunks[0], case
            loaded = got.nat4.load()
            np.testing.assert_array_equal(loaded["response"].values, want["response"].values)
            np.testing.assert_array_equal(loaded["spectrogram"].values, want["spectrogram"].values)
        for ds in opened:
            ds.close()


@pytest.mark.parametrize("peg_chunks", ["auto", None])
def test_a_selection_of_a_concatenation_reads_only_kept_cells(areas, reads, peg_chunks):
    _, paths = areas
    a1, peg = open_cache(paths[0]), open_cache(paths[1], chunks=peg_chunks)
    joint = nat4xr.concat([a1, peg])
    val = joint.nat4.sel_stims(subset="val").nat4.sel_neurons(lambda t: np.arange(len(t)) % 2 == 0)
    reads.clear()
    val["response"].compute()
    source = val["neuron_source"].values
    kept = {"A1": int((source == "A1").sum()), "PEG": int((source == "PEG").sum())}
    assert sorted({r[0][1] for r in reads}) == sorted(set(kept.values()))
    n_val = int((a1["subset"] == "val").sum() + (peg["subset"] == "val").sum())
    assert sum(r[0][0] for r in reads) == n_val  # each val sound read once, nothing else
    a1.close()
    peg.close()


def test_a_concatenation_leaves_no_file_open(tmp_path, monkeypatch, areas):
    monkeypatch.setenv("NAT4XR_CACHE_DIR", str(tmp_path / "cache"))
    (a1, peg, _), _ = areas
    folder = cachedir.cache_dir()
    targets = [
        write_cache(a1, folder / "A1-all-0123456789abcdef.nc", key="k"),
        write_cache(peg, folder / "PEG-all-0123456789abcdef.nc", key="k"),
    ]
    joint = nat4xr.concat([open_cache(p) for p in targets])
    val = joint.nat4.sel_stims(subset="val")
    val.nat4.load()
    peg_cells = joint.nat4.sel_neurons(source="PEG")  # one input's block, whole
    alone = nat4xr.concat([open_cache(targets[0])]).nat4.sel_stims(subset="val")
    alone.nat4.load()
    peg_cells.nat4.sel_stims(subset="val").nat4.load()
    del joint, val, peg_cells, alone
    gc.collect()
    assert sorted(cachedir.cache_clear()) == sorted(targets)
