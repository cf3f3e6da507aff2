"""Block-diagonal concatenation: structure, laziness, dtypes, netCDF, shared sounds."""

from __future__ import annotations

import json
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import nat4xr
from nat4xr.schema import make_dataset
from nat4xr.testing import raise_if_dask_computes


def _pair(lazy: bool):
    a1 = nat4xr.synthetic.random_dataset(n_est=5, n_val=2, n_neurons=6, area="A1", seed=1)
    peg = nat4xr.synthetic.random_dataset(n_est=5, n_val=2, n_neurons=4, area="PEG", seed=2)
    if lazy:
        a1, peg = a1.chunk({"stim": 3}), peg.chunk({"stim": 2})
    return a1, peg


@pytest.fixture(params=["eager", "dask"])
def pair(request):
    return _pair(request.param == "dask")


def test_block_structure_and_counts(pair):
    a1, peg = pair
    joint = nat4xr.concat([a1, peg])
    nat4xr.check_dataset(joint)
    assert joint.sizes["stim"] == 14 and joint.sizes["neuron"] == 10
    cov = joint["coverage"].values
    np.testing.assert_array_equal(cov[:7, :6], a1["coverage"].values)
    np.testing.assert_array_equal(cov[7:, 6:], peg["coverage"].values)
    assert not cov[:7, 6:].any() and not cov[7:, :6].any()
    assert cov.sum() == a1["coverage"].values.sum() + peg["coverage"].values.sum()
    resp = joint["response"].values
    np.testing.assert_array_equal(resp[:7, :6], a1["response"].values)
    np.testing.assert_array_equal(resp[7:, 6:], peg["response"].values)
    assert np.isnan(resp[:7, 6:]).all() and np.isnan(resp[7:, :6]).all()
    np.testing.assert_array_equal(
        joint["spectrogram"].values,
        np.concatenate([a1["spectrogram"].values, peg["spectrogram"].values]),
    )
    # ids: every stim name clashes (same sounds), the cell ids do not
    assert joint["stim"].values[0] == "A1:" + a1["stim"].values[0]
    assert joint["stim"].values[7] == "PEG:" + peg["stim"].values[0]
    assert joint["neuron"].values.tolist() == (
        a1["neuron"].values.tolist() + peg["neuron"].values.tolist()
    )
    assert joint["stim_source"].values.tolist() == ["A1"] * 7 + ["PEG"] * 7
    assert joint["neuron_source"].values.tolist() == ["A1"] * 6 + ["PEG"] * 4
    assert joint.attrs["area"] == "A1+PEG"
    assert json.loads(joint.attrs["sources"]) == ["A1", "PEG"]
    assert joint.attrs["dt"] == a1.attrs["dt"] and "title" in joint.attrs
    # selection by source through the accessor
    assert joint.nat4.sel_neurons(source="PEG").sizes["neuron"] == 4
    peg_back = joint.nat4.sel_stims(source="PEG")
    assert peg_back["neuron"].values.tolist() == peg.nat4.prune()["neuron"].values.tolist()


def test_dtypes_preserved_and_missing_coords_typed(pair):
    a1, peg = pair
    a1 = a1.assign_coords(
        depth=("neuron", np.arange(6, dtype=np.int64)),
        good=("neuron", np.ones(6, dtype=bool)),
        layer=("neuron", np.array(["L2"] * 6)),
        loud=("stim", np.ones(7, dtype=bool)),
    )
    joint = nat4xr.concat([a1, peg])
    assert joint["auditory"].dtype == bool and joint["coverage"].dtype == bool
    assert joint["electrode"].dtype == np.int64 and joint["n_repeats"].dtype == np.int64
    assert joint["animal"].dtype.kind == "U" and joint["subset"].dtype.kind == "U"
    assert joint["depth"].values.tolist() == [0, 1, 2, 3, 4, 5, -1, -1, -1, -1]
    assert joint["good"].dtype == bool and joint["good"].values.tolist() == [True] * 6 + [False] * 4
    assert joint["layer"].values.tolist() == ["L2"] * 6 + [""] * 4
    assert joint["loud"].dtype == bool and joint["loud"].values.sum() == 7


def test_netcdf_round_trip(pair, tmp_path):
    joint = nat4xr.concat(list(pair))
    path = tmp_path / "joint.nc"
    joint.to_netcdf(path)
    with xr.open_dataset(path) as back:
        back = back.load()
    xr.testing.assert_identical(back, joint.compute())
    assert back["coverage"].dtype == bool and back["auditory"].dtype == bool
    assert back["electrode"].dtype == np.int64


def test_concat_is_lazy_at_full_scale():
    """A1 (593 x 849) and PEG (593 x 398): no compute, no chunk bigger than an input chunk."""
    rng = np.random.default_rng(0)

    def full(area: str, n_cell: int) -> xr.Dataset:
        stims = pd.DataFrame(
            {"subset": ["est"] * 575 + ["val"] * 18, "n_repeats": [1] * 575 + [20] * 18},
            index=[f"STIM_{i:03d}" for i in range(593)],
        )
        neurons = pd.DataFrame(
            {
                "area": [area] * n_cell,
                "site": ["ARM029a"] * n_cell,
                "animal": ["ARM"] * n_cell,
                "electrode": np.ones(n_cell, dtype=np.int64),
                "unit": np.arange(n_cell, dtype=np.int64),
                "auditory": rng.random(n_cell) < 0.9,
            },
            index=[f"{area}-{i}" for i in range(n_cell)],
        )
        resp = da.zeros((593, n_cell, 20, 150), dtype="float32", chunks=(10, n_cell, 20, 150))
        spec = da.zeros((593, 18, 150), dtype="float32", chunks=(10, 18, 150))
        cov = rng.random((593, n_cell)) < 0.99
        return make_dataset(resp, spec, stims, neurons, coverage=cov, attrs={"area": area})

    a1, peg = full("A1", 849), full("PEG", 398)
    with raise_if_dask_computes():
        joint = nat4xr.concat([a1, peg])
        cov_sum = int(joint["coverage"].values.sum())
    resp = joint["response"].data
    assert isinstance(resp, da.Array) and resp.shape == (1186, 1247, 20, 150)
    biggest_input = 10 * 849 * 20 * 150 * 4
    biggest = max(np.prod(c) for c in _block_shapes(resp)) * 4
    assert biggest <= biggest_input
    assert cov_sum == int(a1["coverage"].values.sum() + peg["coverage"].values.sum())
    # no task in the graph produces an array as big as the dense joint response
    assert biggest < resp.nbytes / 50


def _block_shapes(arr: da.Array):
    from itertools import product

    blocks = product(*map(range, arr.numblocks))
    return [tuple(c[i] for c, i in zip(arr.chunks, idx)) for idx in blocks]


def test_shared_join_merges_identical_sounds(pair):
    a1, peg = pair
    peg = peg.assign_coords(stim=a1["stim"].values)  # the same sound names in both areas
    spec = peg["spectrogram"].values.copy()
    spec[:] = a1["spectrogram"].values
    spec[2] += 1.0  # same name, different sound
    peg = peg.assign(spectrogram=(("stim", "freq", "time"), spec))
    joint = nat4xr.concat([a1, peg], join="shared")
    names = a1["stim"].values.tolist()
    expected = [*names[:2], "A1:" + names[2], *names[3:], "PEG:" + names[2]]
    assert joint["stim"].values.tolist() == expected
    assert joint.sizes["neuron"] == 10
    src = joint["stim_source"].values.tolist()
    assert src == ["A1+PEG"] * 2 + ["A1"] + ["A1+PEG"] * 4 + ["PEG"]
    cov = joint["coverage"].values
    a1_cov, peg_cov = a1["coverage"].values, peg["coverage"].values
    shared_rows = [0, 1, 3, 4, 5, 6]
    np.testing.assert_array_equal(cov[:7, :6], a1_cov)
    np.testing.assert_array_equal(cov[shared_rows, 6:], peg_cov[shared_rows])
    np.testing.assert_array_equal(cov[7, 6:], peg_cov[2])
    assert not cov[2, 6:].any() and not cov[7, :6].any()
    resp = joint["response"].values
    np.testing.assert_array_equal(resp[shared_rows, 6:], peg["response"].values[shared_rows])
    np.testing.assert_array_equal(resp[:7, :6], a1["response"].values)
    np.testing.assert_array_equal(joint["spectrogram"].values[7], spec[2])
    reps = np.maximum(a1["n_repeats"].values, peg["n_repeats"].values)
    np.testing.assert_array_equal(joint["n_repeats"].values[shared_rows], reps[shared_rows])


def test_names_are_made_unique_and_ids_prefixed_only_on_clash():
    a = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=3, area="A1", seed=1)
    joint = nat4xr.concat([a, a])
    assert json.loads(joint.attrs["sources"]) == ["A1", "A1-2"]
    assert joint["neuron"].values[3].startswith("A1-2:")
    b = a.assign_coords(stim=[f"other{i}" for i in range(3)], neuron=["x", "y", "z"])
    mixed = nat4xr.concat([a, b], names=["one", "two"])
    assert mixed["stim"].values.tolist()[3:] == ["other0", "other1", "other2"]
    assert mixed["neuron"].values.tolist()[3:] == ["x", "y", "z"]


def test_incompatible_inputs_raise_saying_what_differs():
    a = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=3)
    with pytest.raises(ValueError, match="dt"):
        nat4xr.concat([a, a.assign_attrs(dt=0.005)])
    with pytest.raises(ValueError, match="freq bands"):
        nat4xr.concat([a, a.assign_coords(freq=a["freq"].values + 1)])
    with pytest.raises(ValueError, match="time axis"):
        nat4xr.concat([a, a.isel(time=slice(0, 10))])
    with pytest.raises(ValueError, match="join"):
        nat4xr.concat([a, a], join="outer")
    with pytest.raises(ValueError, match="at least one"):
        nat4xr.concat([])


@pytest.mark.parametrize("chunked", [False, True])
def test_fewer_repeats_are_padded_with_nan(chunked):
    a = nat4xr.synthetic.random_dataset(n_est=3, n_val=2, n_neurons=3, area="A1", seed=4)
    est_only = nat4xr.synthetic.random_dataset(n_est=4, n_val=0, n_neurons=2, area="PEG", seed=5)
    est_only = est_only.isel(repeat=slice(0, 1))  # what an est-only build looks like
    if chunked:
        a, est_only = a.chunk({"stim": 2}), est_only.chunk({"stim": 2})
    joint = nat4xr.concat([a, est_only])
    assert joint.sizes["repeat"] == 20
    assert joint["repeat"].dtype == np.int64
    block = joint["response"].values[5:, 3:]  # PEG stims x PEG neurons
    np.testing.assert_array_equal(block[:, :, :1], est_only["response"].values)
    assert np.isnan(block[:, :, 1:]).all()
    np.testing.assert_array_equal(joint["coverage"].values[5:, 3:], est_only["coverage"].values)


# -- memory: inputs are never copied, padding never allocated, lazy inputs never read ---------


def _reference(datasets: list[xr.Dataset], join: str):
    """Dense union response, coverage and spectrogram, from plain loops over the inputs."""
    n_rep = max(ds.sizes["repeat"] for ds in datasets)
    rows: list[tuple[str, np.ndarray]] = []  # (stim name, spectrogram) per union row
    where: list[list[int]] = []  # union row of each stim, per input
    for ds in datasets:
        mine = []
        for name, spec in zip(ds["stim"].values.tolist(), ds["spectrogram"].values):
            match = [
                u
                for u, (n, s) in enumerate(rows)
                if join == "shared" and n == name and np.array_equal(s, spec, equal_nan=True)
            ]
            if match:
                mine.append(match[0])
            else:
                rows.append((name, spec))
                mine.append(len(rows) - 1)
        where.append(mine)
    n_cells = sum(ds.sizes["neuron"] for ds in datasets)
    t = datasets[0].sizes["time"]
    response = np.full((len(rows), n_cells, n_rep, t), np.nan, dtype=np.float32)
    coverage = np.zeros((len(rows), n_cells), dtype=bool)
    col = 0
    for ds, mine in zip(datasets, where):
        resp, cov = ds["response"].values, ds["coverage"].values
        for i, u in enumerate(mine):
            for j in range(ds.sizes["neuron"]):
                response[u, col + j, : ds.sizes["repeat"]] = resp[i, j]
                coverage[u, col + j] = cov[i, j]
        col += ds.sizes["neuron"]
    spectrogram = np.stack([s for _, s in rows])
    return response, coverage, spectrogram


def _random_inputs(seed: int, join: str, backing: str) -> list[xr.Dataset]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(int(rng.integers(2, 4))):
        ds = nat4xr.synthetic.random_dataset(
            n_est=int(rng.integers(1, 6)),
            n_val=int(rng.integers(0, 3)),
            n_neurons=int(rng.integers(1, 5)),
            area=f"X{k}",
            seed=seed * 10 + k,
        )
        if ds.sizes["stim"] > 1 and rng.random() < 0.4:  # an est-only build: one repeat
            ds = ds.isel(repeat=slice(0, 1))
        if join == "shared" and out:  # some sounds also in the first input
            first = out[0]
            n = min(first.sizes["stim"], ds.sizes["stim"], int(rng.integers(0, 3)))
            names = ds["stim"].values.copy()
            names[:n] = first["stim"].values[:n]
            spec = ds["spectrogram"].values.copy()
            spec[:n] = first["spectrogram"].values[:n]
            ds = ds.assign_coords(stim=names).assign(spectrogram=(ds["spectrogram"].dims, spec))
        lazy = backing == "dask" or (backing == "mixed" and k % 2)
        out.append(ds.chunk({"stim": int(rng.integers(1, 4))}) if lazy else ds)
    return out


@pytest.mark.parametrize("join", ["block", "shared"])
@pytest.mark.parametrize("backing", ["eager", "dask", "mixed"])
@pytest.mark.parametrize("seed", range(4))
def test_values_match_a_dense_reference(seed, join, backing):
    inputs = _random_inputs(seed, join, backing)
    joint = nat4xr.concat(inputs, join=join)
    response, coverage, spectrogram = _reference([ds.compute() for ds in inputs], join)
    assert isinstance(joint["response"].data, da.Array)
    np.testing.assert_array_equal(joint["response"].values, response)
    np.testing.assert_array_equal(joint["coverage"].values, coverage)
    np.testing.assert_array_equal(joint["spectrogram"].values, spectrogram)
    assert joint["repeat"].values.tolist() == list(range(response.shape[2]))
    # a selection of the result computes the same values as the dense reference
    stims, cells = [0, response.shape[0] - 1], [response.shape[1] - 1]
    np.testing.assert_array_equal(
        joint["response"].isel(stim=stims, neuron=cells).values, response[stims][:, cells]
    )


def _in_memory(area: str, n_stim: int, n_cell: int, n_rep: int) -> xr.Dataset:
    stims = pd.DataFrame(
        {"subset": ["est"] * n_stim, "n_repeats": [n_rep] * n_stim},
        index=[f"STIM_{area}_{i:04d}" for i in range(n_stim)],
    )
    neurons = pd.DataFrame(
        {
            "area": [area] * n_cell,
            "site": ["ARM029a"] * n_cell,
            "animal": ["ARM"] * n_cell,
            "electrode": np.ones(n_cell, dtype=np.int64),
            "unit": np.arange(n_cell, dtype=np.int64),
            "auditory": np.ones(n_cell, dtype=bool),
        },
        index=[f"{area}-{i}" for i in range(n_cell)],
    )
    resp = np.arange(n_stim * n_cell * n_rep * 100, dtype=np.float32)
    resp = resp.reshape(n_stim, n_cell, n_rep, 100)
    spec = np.ones((n_stim, 18, 100), dtype=np.float32)
    cov = np.ones((n_stim, n_cell), dtype=bool)
    return make_dataset(resp, spec, stims, neurons, coverage=cov, attrs={"area": area})


def test_in_memory_inputs_are_not_copied_and_padding_not_allocated():
    """~100 MB each; the est-only one would be 2 GB padded to 20 repeats."""
    import tracemalloc

    a1 = _in_memory("A1", 50, 250, 20)  # 100 MB
    peg = _in_memory("PEG", 1000, 250, 1)  # 100 MB, 2 GB once padded
    assert isinstance(a1["response"].data, np.ndarray)
    mib = 2**20
    tracemalloc.start()
    try:
        joint = nat4xr.concat([a1, peg])
        _, peak = tracemalloc.get_traced_memory()
        assert peak < 10 * mib, f"concat allocated {peak / mib:.0f} MiB"
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        part = joint["response"].isel(stim=[0, 50]).values  # an A1 and a PEG stim, all cells
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert part.nbytes < 8 * mib
    assert peak - start < 4 * part.nbytes + 4 * mib, f"{(peak - start) / mib:.0f} MiB"
    assert joint["response"].shape == (1050, 500, 20, 100)
    np.testing.assert_array_equal(part[0, :250], a1["response"].values[0])
    np.testing.assert_array_equal(part[1, 250:, :1], peg["response"].values[0])
    assert np.isnan(part[0, 250:]).all() and np.isnan(part[1, :250]).all()
    assert np.isnan(part[1, 250:, 1:]).all()
    # no task of the result is bigger than dask's chunk size (the padded blocks included)
    limit = dask.utils.parse_bytes(dask.config.get("array.chunk-size"))
    assert max(np.prod(c) for c in _block_shapes(joint["response"].data)) * 4 <= limit


def test_padded_lazy_inputs_stay_lazy():
    a, est_only = _pair(lazy=True)
    est_only = est_only.isel(repeat=slice(0, 1))
    with raise_if_dask_computes():
        joint = nat4xr.concat([a, est_only])
        sub = joint.nat4.sel_neurons(source="PEG")
    assert isinstance(sub["response"].data, da.Array)


def test_cache_inputs_opened_without_dask_stay_unread(tmp_path, monkeypatch):
    from nat4xr.cachefile import open_cache, write_cache
    from nat4xr.cachefile.arrays import CacheArray

    a1, peg = _pair(lazy=False)
    peg = peg.isel(repeat=slice(0, 3))
    reads: list[str] = []
    original = CacheArray.read

    def counted(self, positions):
        reads.append(Path(self.source.path).name)
        return original(self, positions)

    monkeypatch.setattr(CacheArray, "read", counted)
    with (
        open_cache(write_cache(a1, tmp_path / "a1.nc"), chunks=None) as lazy_a1,
        open_cache(write_cache(peg, tmp_path / "peg.nc"), chunks=None) as lazy_peg,
    ):
        assert lazy_a1["response"].chunks is None
        joint = nat4xr.concat([lazy_a1, lazy_peg])
        assert reads == []
        first = joint["response"].isel(stim=0).values  # reads A1's first chunk only
        assert reads == ["a1.nc"]
        np.testing.assert_array_equal(first[:6], a1["response"].values[0])
        np.testing.assert_array_equal(
            joint["spectrogram"].values,
            np.concatenate([a1["spectrogram"].values, peg["spectrogram"].values]),
        )
        block = joint["response"].values[7:, 6:]
        np.testing.assert_array_equal(block[:, :, :3], peg["response"].values)
        assert np.isnan(block[:, :, 3:]).all()
