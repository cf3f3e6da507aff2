"""The repeat axis sized to what a selection holds, and the sizes the summary reports.

Expectations are computed independently of :mod:`nat4xr.selection`: positions
from the response values themselves, then ``Dataset.isel`` and the trailing
all-NaN repeats dropped by looking at the values.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import nat4xr
from nat4xr.testing import raise_if_dask_computes

SEEDS = [0, 1, 2, 3, 4, 5, 11, 23]


def _random(seed: int, **kw) -> xr.Dataset:
    kw = {"n_est": 7, "n_val": 4, "n_neurons": 12, "n_time": 6, "p_missing": 0.25, **kw}
    return nat4xr.synthetic.random_dataset(seed=seed, **kw)


def _expected(ds: xr.Dataset, stims: np.ndarray, neurons: np.ndarray) -> xr.Dataset:
    """``ds.isel`` of the positions, then the trailing repeats that are all NaN dropped."""
    ref = ds.isel(stim=stims, neuron=neurons).compute()
    values = ref["response"].values
    filled = ~np.isnan(values).all(axis=(0, 1, 3))
    k = max(1, int(np.flatnonzero(filled)[-1]) + 1) if filled.any() else ds.sizes["repeat"]
    return ref.isel(repeat=slice(0, k))


def _data_coverage(ds: xr.Dataset) -> np.ndarray:
    return ~np.isnan(ds["response"].values).all(axis=(2, 3))


def _cases(ds: xr.Dataset, rng: np.random.Generator):
    """(name, selection, stim positions, neuron positions), the positions from the values."""
    cov = _data_coverage(ds)
    subset = ds["subset"].values
    n_stim, n_cell = cov.shape
    for value in ("est", "val"):
        stims = np.flatnonzero(subset == value)
        cells = np.flatnonzero(cov[stims].any(axis=0))
        yield value, lambda d, v=value: d.nat4.sel_stims(subset=v), stims, cells
    mask = rng.random(n_stim) < 0.5
    cells = np.flatnonzero(cov[mask].any(axis=0))
    yield "stim mask", lambda d, m=mask: d.nat4.sel_stims(m), np.flatnonzero(mask), cells
    mask = rng.random(n_cell) < 0.4
    stims = np.flatnonzero(cov[:, mask].any(axis=1))
    yield "cell mask", lambda d, m=mask: d.nat4.sel_neurons(m), stims, np.flatnonzero(mask)
    # est sounds and a few cells through plain isel, then prune
    est = np.flatnonzero(subset == "est")
    pick = np.sort(rng.choice(n_cell, 5, replace=False))
    sub = cov[np.ix_(est, pick)]
    yield (
        "isel + prune",
        lambda d, s=est, n=pick: d.isel(stim=s, neuron=n).nat4.prune(),
        est[sub.any(axis=1)],
        pick[sub.any(axis=0)],
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("lazy", [False, True])
def test_selections_cut_the_repeats_exactly(seed, lazy):
    ds = _random(seed)
    source = ds.chunk({"stim": 3}) if lazy else ds
    rng = np.random.default_rng(seed)
    for name, fn, stims, neurons in _cases(ds, rng):
        # every kept stim has data for some kept cell, so the data's own trailing
        # all-NaN repeats are exactly those past the largest n_repeats
        assert _data_coverage(ds.isel(stim=stims, neuron=neurons)).any(axis=1).all(), name
        got = fn(source)
        want = _expected(ds, stims, neurons)
        assert got["response"].dims == ("stim", "neuron", "repeat", "time")
        assert got.sizes["repeat"] == int(ds["n_repeats"].values[stims].max()), name
        assert isinstance(got["response"].data, da.Array) == lazy
        xr.testing.assert_identical(got.compute(), want)
        # the repeats cut were NaN for every kept pair
        untrimmed = ds.isel(stim=stims, neuron=neurons)["response"].values
        assert np.isnan(untrimmed[:, :, got.sizes["repeat"] :]).all()


def test_est_only_selection_has_one_repeat_and_isel_keeps_all():
    ds = _random(3)
    est = ds.nat4.sel_stims(subset="est")
    assert dict(est.sizes)["repeat"] == 1
    assert est["repeat"].values.tolist() == [0]
    # xarray's own indexing is untouched: only the accessor's selections cut
    assert ds.isel(stim=np.flatnonzero(ds.subset.values == "est")).sizes["repeat"] == 20
    # a selection that keeps the longest sound keeps its repeats
    longest = int(np.argmax(ds["n_repeats"].values))
    sel = ds.nat4.sel_stims(np.arange(ds.sizes["stim"]) == longest)
    assert sel.sizes["repeat"] == int(ds["n_repeats"].values[longest])


def test_an_empty_selection_keeps_the_repeat_axis():
    ds = _random(2)
    with pytest.warns(nat4xr.Nat4Warning, match="empty selection"):
        out = ds.nat4.sel_stims(lambda t: t["n_repeats"] < 0)
    assert dict(out.sizes)["stim"] == 0 and out.sizes["repeat"] == ds.sizes["repeat"]
    nat4xr.check_dataset(out)


def test_cutting_stays_lazy_and_is_a_slice():
    ds = _random(4).chunk({"stim": 2})
    with raise_if_dask_computes():
        outs = [
            ds.nat4.sel_stims(subset="est"),
            ds.nat4.sel_stims(subset="val").nat4.sel_neurons(auditory=True),
            ds.isel(stim=[0, 1, 2]).nat4.prune(recompute=False),
        ]
    for out in outs:
        k = out.sizes["repeat"]
        assert out["response"].chunks[2] == (k,)
        xr.testing.assert_identical(out["repeat"], ds["repeat"].isel(repeat=slice(0, k)))


@pytest.mark.parametrize("chunks", [None, {"stim": 3}])
def test_cache_reads_nothing_to_cut_and_only_the_repeats_kept(tmp_path, monkeypatch, chunks):
    from nat4xr.cachefile.chunks import ChunkFile

    ds = _random(5)
    path = nat4xr.cachefile.write_cache(ds, tmp_path / "c.nc")
    reads = []
    original = ChunkFile.decoded

    def counting(self, index, flat, where=""):
        if index.name == "response":
            reads.append(flat)
        return original(self, index, flat, where)

    monkeypatch.setattr(ChunkFile, "decoded", counting)
    with raise_if_dask_computes(), nat4xr.cachefile.open_cache(path, chunks=chunks) as lazy:
        est = lazy.nat4.sel_stims(subset="est")
        assert est.sizes["repeat"] == 1 and reads == []
    with nat4xr.cachefile.open_cache(path, chunks=chunks) as lazy:
        est = lazy.nat4.sel_stims(subset="est")
        xr.testing.assert_identical(est.load(), ds.nat4.sel_stims(subset="est"))
        # one chunk per (stim, repeat): only the first repeat of each est sound was read
        n_rep = ds.sizes["repeat"]
        assert sorted(reads) == (np.flatnonzero(ds.subset.values == "est") * n_rep).tolist()


@pytest.mark.parametrize("chunks", [None, {"stim": 3}])
@pytest.mark.parametrize("which", ["est", "val", "neurons"])
def test_cut_selections_survive_the_cache(tmp_path, chunks, which):
    ds = _random(6)
    path = nat4xr.cachefile.write_cache(ds, tmp_path / "full.nc")
    with nat4xr.cachefile.open_cache(path, chunks=chunks) as opened:
        for source in (ds, opened):  # in memory, and a selection of a cache-backed Dataset
            if which == "neurons":
                sel = source.nat4.sel_neurons(lambda t: t["unit"] <= 4)
            else:
                sel = source.nat4.sel_stims(subset=which)
            assert sel.sizes["repeat"] < ds.sizes["repeat"]
            out = nat4xr.cachefile.write_cache(sel, tmp_path / f"sel-{id(source)}.nc")
            with nat4xr.cachefile.open_cache(out) as back:
                xr.testing.assert_identical(back.load(), sel.load())


@pytest.mark.parametrize("chunked", [False, True])
def test_concat_pads_the_cut_axis_back(chunked):
    a = _random(7, area="A1")
    b = _random(8, area="PEG")
    if chunked:
        a, b = a.chunk({"stim": 3}), b.chunk({"stim": 3})
    est = a.nat4.sel_stims(subset="est")
    assert est.sizes["repeat"] == 1
    # with a Dataset that has every repeat: the full axis comes back
    joint = nat4xr.concat([est, b])
    assert joint.sizes["repeat"] == 20
    xr.testing.assert_identical(joint["repeat"], b["repeat"])
    n_s, n_n = est.sizes["stim"], est.sizes["neuron"]
    block = joint["response"].values[:n_s, :n_n]
    np.testing.assert_array_equal(block[:, :, :1], est["response"].values)
    assert np.isnan(block[:, :, 1:]).all()
    # two cut selections: the longer of the two
    val = b.nat4.sel_stims(subset="val")
    joint = nat4xr.concat([est, val])
    assert joint.sizes["repeat"] == val.sizes["repeat"] == int(b["n_repeats"].values.max())
    np.testing.assert_array_equal(joint["response"].values[n_s:, n_n:], val["response"].values)


@pytest.mark.parametrize("chunks", [{"stim": 3}, "auto"])
def test_torch_batches_of_a_cut_selection_are_the_untrimmed_ones(tmp_path, chunks):
    pytest.importorskip("torch")
    from nat4xr.torch import NAT4TorchDataset

    ds = _random(9)
    path = nat4xr.cachefile.write_cache(ds, tmp_path / "c.nc")
    with nat4xr.cachefile.open_cache(path, chunks=chunks) as opened:
        selections = {
            "est": opened.nat4.sel_stims(subset="est"),
            "val": opened.nat4.sel_stims(subset="val"),
            "cells": opened.nat4.sel_neurons(lambda t: t["unit"] % 2 == 0),
        }
        for name, sel in selections.items():
            stims = [opened.indexes["stim"].get_loc(s) for s in sel.stim.values]
            cells = [opened.indexes["neuron"].get_loc(c) for c in sel.neuron.values]
            untrimmed = opened.isel(stim=stims, neuron=cells)
            assert sel.sizes["repeat"] == int(sel["n_repeats"].values.max())
            if name == "est":  # a selection of one repeat pattern is cut to it
                assert sel.sizes["repeat"] == 1 < untrimmed.sizes["repeat"]
            cut, full = NAT4TorchDataset(sel), NAT4TorchDataset(untrimmed)
            assert cut.file_backed and full.file_backed, name
            n = sel.sizes["stim"]
            for idx in ([0], list(range(n)), [n - 1, 0]):
                a, b = cut.read_batch(idx), full.read_batch(idx)
                for key in ("responses", "valid_mask"):
                    np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=name)
                assert a["responses"].shape[2] == int(sel["n_repeats"].values[idx].max())


# -- the sizes the summary reports --------------------------------------------------------------


def _hand_sizes(ds: xr.Dataset) -> tuple[int, int]:
    n_stim, n_cell, n_rep, n_time = ds["response"].shape
    dense = n_stim * n_cell * n_rep * n_time * 4
    cov, reps = ds["coverage"].values, ds["n_repeats"].values
    recorded = 0
    for s in range(n_stim):
        for n in range(n_cell):
            if cov[s, n]:
                recorded += min(int(reps[s]), n_rep) * n_time * 4
    return dense, recorded


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_summary_sizes_equal_a_hand_computation(seed):
    ds = _random(seed, n_time=15)
    for d in (ds, ds.nat4.sel_stims(subset="val"), ds.nat4.sel_neurons(auditory=True)):
        dense, recorded = _hand_sizes(d)
        assert d.nat4.response_nbytes() == {"dense": dense, "recorded": recorded}
        # the recorded values are the non-NaN ones (whole trials in this data)
        assert recorded == int((~np.isnan(d["response"].values)).sum()) * 4
        lazy = d.chunk({"stim": 4})
        with raise_if_dask_computes():
            text, page = lazy.nat4.summary(), lazy.nat4._repr_html_()
        last = text.splitlines()[-1]
        assert f"{dense / 1e3:.2f} kB dense, {recorded / 1e3:.2f} kB recorded" in last
        assert f"{dense / 1e3:.2f} kB" in page and f"{recorded / 1e3:.2f} kB" in page
        assert ("select before .load()" in last) == (dense >= 2 * recorded)
        assert "select before" not in d.nat4.summary()  # in memory already


def test_summary_at_full_scale_reads_nothing():
    """The A1 shape: 6.04 GB dense; the sizes come from the metadata alone."""
    import pandas as pd

    from nat4xr.schema import make_dataset

    n_est, n_val, n_cell, n_time = 575, 18, 849, 150
    stims = pd.DataFrame(
        {"subset": ["est"] * n_est + ["val"] * n_val, "n_repeats": [1] * n_est + [20] * n_val},
        index=[f"STIM_{i:03d}" for i in range(n_est + n_val)],
    )
    neurons = pd.DataFrame(
        {"area": "A1", "site": "X", "animal": "ARM", "electrode": 1, "unit": 1, "auditory": True},
        index=[f"c{j}" for j in range(n_cell)],
    )
    coverage = np.ones((n_est + n_val, n_cell), dtype=bool)
    coverage[n_est:, :33] = False
    response = da.zeros(
        (n_est + n_val, n_cell, 20, n_time), dtype="float32", chunks=(8, -1, -1, -1)
    )
    spec = da.zeros((n_est + n_val, 18, n_time), dtype="float32")
    ds = make_dataset(response, spec, stims, neurons, coverage=coverage, attrs={"area": "A1"})
    with raise_if_dask_computes():
        last = ds.nat4.summary().splitlines()[-1]
        val = ds.nat4.sel_stims(subset="val")
    recorded = (n_est * n_cell + n_val * (n_cell - 33) * 20) * n_time * 4
    assert ds.nat4.response_nbytes() == {"dense": 593 * 849 * 20 * 150 * 4, "recorded": recorded}
    assert last.endswith(": 6.04 GB dense, 0.47 GB recorded; select before .load()")
    assert val.nat4.response_nbytes()["dense"] == val.nat4.response_nbytes()["recorded"]
    assert "select before" not in val.nat4.summary()
