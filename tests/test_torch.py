"""The PyTorch adapter: batches against the Dataset's own values, workers, shuffling, losses."""

from __future__ import annotations

import importlib
import pickle
import sys

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

import nat4xr.cachefile
from nat4xr.cachefile import CacheSource

torch = pytest.importorskip("torch")

import nat4xr  # noqa: E402
from nat4xr.torch import (  # noqa: E402
    NAT4TorchDataset,
    StimBatchSampler,
    collate,
    masked_mse,
    masked_poisson_nll,
    to_torch,
)

N_EST, N_VAL = 10, 4


def _random(**kw):
    kw = {"n_est": N_EST, "n_val": N_VAL, "n_neurons": 9, "n_time": 12, "seed": 3, **kw}
    return nat4xr.synthetic.random_dataset(**kw)


@pytest.fixture(scope="module")
def nc_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("torch") / "random.nc"
    ds = _random()
    # fixed-width strings, as the cache writes them: netCDF-C can crash on files with
    # variable-length strings that are open more than once in a process
    ds.to_netcdf(
        path, encoding={k: {"dtype": "S1"} for k, v in ds.variables.items() if v.dtype.kind == "U"}
    )
    return str(path)


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    """The random Dataset in a cache file: validation sounds stored unfiltered."""
    return nat4xr.cachefile.write_cache(_random(), tmp_path_factory.mktemp("torch") / "cache.nc")


@pytest.fixture(
    params=["eager", "dask", "file", "file-chunked", "cache", "cache-selected", "cache-lazy"]
)
def any_ds(request, nc_path, cache_path):
    """The same Dataset in memory, dask-backed and lazily backed by a netCDF file."""
    if request.param == "eager":
        yield _random()
    elif request.param == "dask":
        yield _random().chunk({"stim": 4})
    elif request.param.startswith("cache"):
        chunks = None if request.param == "cache-lazy" else "auto"  # no dask: lazily indexed
        ds = nat4xr.cachefile.open_cache(cache_path, chunks=chunks)
        if request.param == "cache-selected":  # some neurons, out of order
            ds = ds.isel(neuron=[7, 0, 2, 3, 8])
        yield ds
        ds.close()
    else:
        chunks = {"stim": 4} if request.param == "file-chunked" else None
        with xr.open_dataset(nc_path, chunks=chunks) as ds:
            yield ds


def _expected(ds: xr.Dataset, idx: list[int]) -> dict:
    """A batch computed by hand from the Dataset's values."""
    reps = ds["n_repeats"].values[idx]
    n_rep = int(reps.max())
    resp = ds["response"].values[idx][:, :, :n_rep]
    meta = [
        {
            "name": str(ds.stim.values[i]),
            "subset": str(ds.subset.values[i]),
            "n_repeats": int(ds.n_repeats.values[i]),
        }
        for i in idx
    ]
    return {
        "stims": ds["spectrogram"].values[idx][:, None],
        "responses": resp,
        "valid_mask": ~np.isnan(resp),
        "stim_meta": meta,
        "stim": [str(s) for s in ds.stim.values[idx]],
        "neuron": [str(n) for n in ds.neuron.values],
    }


def _assert_batch(batch: dict, expected: dict) -> None:
    assert set(batch) == set(expected)
    assert batch["stims"].dtype == torch.float32
    assert batch["responses"].dtype == torch.float32
    assert batch["valid_mask"].dtype == torch.bool
    np.testing.assert_array_equal(batch["stims"].numpy(), expected["stims"])
    np.testing.assert_array_equal(batch["responses"].numpy(), expected["responses"])
    np.testing.assert_array_equal(batch["valid_mask"].numpy(), expected["valid_mask"])
    assert batch["stim_meta"] == expected["stim_meta"]
    for entry in batch["stim_meta"]:
        assert all(type(v) in (str, int, float, bool) for v in entry.values())
    assert batch["stim"] == expected["stim"]
    assert batch["neuron"] == expected["neuron"]


# --------------------------------------------------------------------------- batches


def test_batches_match_dataset(any_ds):
    loader = to_torch(any_ds, batch_size=3)
    # dask arrays over a cache file are read straight from its chunks; lazily indexed
    # ones (chunks=None) through xarray's indexing of the same reader
    from_cache = isinstance(any_ds.response.encoding.get("nat4xr_source"), CacheSource)
    assert loader.dataset.file_backed == (from_cache and any_ds.response.chunks is not None)
    batches = list(loader)
    assert len(batches) == len(loader) == 5
    for k, batch in enumerate(batches):
        idx = list(range(3 * k, min(3 * k + 3, N_EST + N_VAL)))
        _assert_batch(batch, _expected(any_ds, idx))
    # est-only batches read one repeat; the batch with val stims reads the largest count
    assert batches[0]["responses"].shape == (3, any_ds.sizes["neuron"], 1, 12)
    reps = any_ds.n_repeats.values
    assert batches[3]["responses"].shape[2] == max(reps[9:12]) > 1
    assert batches[3]["valid_mask"][0, :, 1:].sum() == 0  # est stim in a mixed batch: padding


def test_preload_reads_once_and_gives_the_same_batches(any_ds):
    lazy = list(to_torch(any_ds, batch_size=4))
    loader = to_torch(any_ds, batch_size=4, preload=True)
    assert not loader.dataset.file_backed
    (source,) = loader.dataset._sources
    assert isinstance(source.ds["response"].data, np.ndarray)
    for got, want in zip(loader, lazy, strict=True):
        for key in ("stims", "responses", "valid_mask"):
            torch.testing.assert_close(got[key], want[key], equal_nan=True)
    if "source" in any_ds.encoding or hasattr(any_ds["response"].data, "dask"):
        # the input is left as it was: still lazy
        assert not isinstance(any_ds["response"].variable._data, np.ndarray)


@pytest.mark.parametrize("kind", ["netcdf", "cache"])
def test_selected_and_reordered_file_dataset(nc_path, cache_path, kind):
    opener = xr.open_dataset if kind == "netcdf" else nat4xr.cachefile.open_cache
    with opener(nc_path if kind == "netcdf" else cache_path, chunks={"stim": 4}) as ds:
        sel = ds.isel(stim=[12, 3, 0, 11], neuron=[7, 2, 5])
        data = NAT4TorchDataset(sel)
        assert data.file_backed == (kind == "cache")
        batch = data.read_batch([3, 0, 1])
        data.close()
        _assert_batch(batch, _expected(sel.load(), [3, 0, 1]))
        _assert_batch(data.read_batch([2]), _expected(sel.load(), [2]))


def test_file_response_with_computed_spectrogram(cache_path):
    with nat4xr.cachefile.open_cache(cache_path) as ds:
        mixed = ds.assign(spectrogram=ds.spectrogram * 1)  # computed: held in memory
        data = NAT4TorchDataset(mixed)
        assert data.file_backed
        _assert_batch(data.read_batch([12, 1]), _expected(mixed.load(), [12, 1]))


def test_modified_lazy_dataset_is_read_as_is(nc_path):
    with xr.open_dataset(nc_path, chunks={"stim": 4}) as ds:
        doubled = ds.assign(response=ds.response * 2)
        data = NAT4TorchDataset(doubled)
        assert not data.file_backed
        batch = data.read_batch([10, 11])
        _assert_batch(batch, _expected(doubled.load(), [10, 11]))


def test_getitem_and_item_collate(any_ds):
    data = NAT4TorchDataset(any_ds)
    item = data[N_EST + 1]
    reps = int(any_ds.n_repeats[N_EST + 1])
    assert item["responses"].shape == (any_ds.sizes["neuron"], reps, 12)
    assert item["stims"].shape == (1, 4, 12)
    assert item["stim_meta"]["name"] == item["stim"] == str(any_ds.stim.values[N_EST + 1])
    assert data[-1]["stim"] == str(any_ds.stim.values[-1])
    stacked = collate([data[i] for i in [1, N_EST + 1, N_EST]])
    _assert_batch(stacked, _expected(any_ds, [1, N_EST + 1, N_EST]))
    with pytest.raises(IndexError, match="out of range"):
        data[N_EST + N_VAL]


def test_fill_and_dtype():
    ds = _random()
    batch = next(iter(to_torch(ds, batch_size=4, fill=-1.5, dtype=torch.float64)))
    exp = _expected(ds, [0, 1, 2, 3])
    assert batch["responses"].dtype == batch["stims"].dtype == torch.float64
    np.testing.assert_array_equal(batch["valid_mask"].numpy(), exp["valid_mask"])
    resp = batch["responses"].numpy()
    assert (resp[~exp["valid_mask"]] == -1.5).all()
    np.testing.assert_array_equal(resp[exp["valid_mask"]], exp["responses"][exp["valid_mask"]])
    with pytest.raises(TypeError, match="floating"):
        to_torch(ds, dtype=torch.int32)


def test_fill_and_dtype_from_unfiltered_cache_chunks(cache_path):
    with nat4xr.cachefile.open_cache(cache_path) as ds:
        sel = ds.isel(neuron=[8, 1, 5])
        idx = [N_EST - 1, N_EST, N_EST + 2]  # one compressed est sound, two unfiltered val sounds
        batch = NAT4TorchDataset(sel, fill=-1.5, dtype=torch.float64).read_batch(idx)
        exp = _expected(sel.load(), idx)
    assert batch["responses"].dtype == torch.float64
    np.testing.assert_array_equal(batch["valid_mask"].numpy(), exp["valid_mask"])
    resp = batch["responses"].numpy()
    assert (resp[~exp["valid_mask"]] == -1.5).all()
    np.testing.assert_array_equal(resp[exp["valid_mask"]], exp["responses"][exp["valid_mask"]])


def test_cache_batches_read_no_netcdf(cache_path, monkeypatch):
    """Batches of a cache file come from its memory map, compressed chunks included."""
    import netCDF4

    with nat4xr.cachefile.open_cache(cache_path) as ds:
        sel = ds.isel(neuron=[2, 6, 3])
        data = NAT4TorchDataset(sel)
        assert data.file_backed

        def refuse(*args, **kwargs):
            raise AssertionError("netCDF was asked for a batch")

        monkeypatch.setattr(netCDF4, "Dataset", refuse)
        for idx in ([N_EST + 3, N_EST + 1], [0, N_EST], [5, 1]):
            _assert_batch(data.read_batch(idx), _expected(_random().isel(neuron=[2, 6, 3]), idx))


def test_mask_from_memory_map_with_partly_missing_rows(tmp_path):
    """A cell-repeat row with some NaN bins: the mask is exact there too, every epoch."""
    ds = _random()
    response = ds["response"].values.copy()
    response[N_EST + 1, 4, 0, 3:7] = np.nan
    response[N_EST + 2, :, 1, -1] = np.nan
    ds["response"].values = response
    with nat4xr.cachefile.open_cache(nat4xr.cachefile.write_cache(ds, tmp_path / "c.nc")) as cached:
        data = NAT4TorchDataset(cached.isel(neuron=[4, 5, 6, 0]), fill=0.0)
        # sorted as the sampler gives them, then reordered and with a duplicate
        for idx in ([0, N_EST + 1, N_EST + 2], [N_EST + 2, 0, N_EST + 1], [N_EST + 1] * 2):
            expected = _expected(ds.isel(neuron=[4, 5, 6, 0]), idx)
            assert not expected["valid_mask"][idx.index(N_EST + 1), 0, 0, 3:7].any()
            for _ in range(2):
                batch = data.read_batch(idx)
                np.testing.assert_array_equal(batch["valid_mask"].numpy(), expected["valid_mask"])
                np.testing.assert_array_equal(
                    batch["responses"].numpy(), np.nan_to_num(expected["responses"], nan=0.0)
                )


def test_recycled_batch_memory_is_never_shared_with_live_batches(cache_path):
    """With recycling forced on for every size, batches kept by the caller stay intact."""
    from nat4xr.batches import Buffers

    with nat4xr.cachefile.open_cache(cache_path) as ds:
        for source in (ds, ds.load()):
            loader = to_torch(source, batch_size=2)
            loader.dataset._buffers = Buffers(keep=2, min_bytes=0)
            for _ in range(2):
                kept = [b for b in loader]  # every batch alive at once
                for k, batch in enumerate(kept):
                    idx = list(range(2 * k, min(2 * k + 2, N_EST + N_VAL)))
                    _assert_batch(batch, _expected(ds.load(), idx))
            views = []
            for batch in loader:  # only a view of each batch survives the loop
                views.append(batch["responses"][:, :1])
            for k, view in enumerate(views):
                idx = list(range(2 * k, min(2 * k + 2, N_EST + N_VAL)))
                exp = _expected(ds.load(), idx)["responses"][:, :1]
                np.testing.assert_array_equal(view.numpy(), exp)


@pytest.mark.parametrize("layout", ["transposed", "scaled"])
def test_plain_netcdf_files_are_read_through_xarray(tmp_path, layout):
    """Files that are not caches (other dim orders, encoded values) are never misread."""
    ds = _random()
    text = {k: {"dtype": "S1"} for k, v in ds.variables.items() if v.dtype.kind == "U"}
    n_stim, n_neuron, _, n_time = ds["response"].shape
    if layout == "transposed":  # chunks still (1, X, 1, time), unfiltered
        ds = ds.transpose("neuron", "stim", "repeat", "time", "freq")
        enc = {"chunksizes": (1, n_stim, 1, n_time)}
    else:  # stored halved: the bytes are not the values
        enc = {"chunksizes": (1, n_neuron, 1, n_time), "scale_factor": np.float32(2.0)}
    path = tmp_path / f"{layout}.nc"
    ds.to_netcdf(path, encoding={**text, "response": {"dtype": "float32", **enc}})
    with xr.open_dataset(path, chunks={}) as lazy:
        data = NAT4TorchDataset(lazy)
        idx = [1, N_EST, N_EST + 2]
        _assert_batch(data.read_batch(idx), _expected(_random(), idx))
        assert not data.file_backed


def test_buffers_reuse_only_released_arrays():
    from nat4xr.batches import Buffers

    buffers = Buffers(keep=2, min_bytes=0)
    a = buffers.empty((3, 4), np.float32)
    first = a.ctypes.data
    tensor = torch.from_numpy(a)
    assert tensor.data_ptr() == first
    del a
    b = buffers.empty((3, 4), np.float32)
    assert b.ctypes.data != first  # the tensor still holds the first array
    view = tensor[1:]
    del tensor
    c = buffers.empty((3, 4), np.float32)
    assert c.ctypes.data not in (first, b.ctypes.data)  # a view holds it too; pool full
    del view
    d = buffers.empty((3, 4), np.float32)
    assert d.ctypes.data == first  # released: recycled
    del d
    e = buffers.empty((3, 4), np.float32)
    assert e.ctypes.data == first
    assert len(buffers._pool[((3, 4), "<f4")]) == 2
    assert buffers.empty((3, 5), np.float32).ctypes.data not in (first, b.ctypes.data)
    assert buffers.empty((5,), bool).dtype == bool
    assert pickle.loads(pickle.dumps(buffers))._pool == {}
    small = Buffers(min_bytes=1 << 20)
    small.empty((3, 4), np.float32)
    assert small._pool == {}  # small arrays are left to malloc


def test_unsorted_and_duplicate_indices(any_ds):
    data = NAT4TorchDataset(any_ds)
    idx = [12, 2, 12, 0]
    _assert_batch(collate(data.__getitems__(idx)), _expected(any_ds, idx))


def test_waveform_variable():
    ds = _random()
    wave = np.random.default_rng(0).standard_normal((ds.sizes["stim"], 40)).astype("float32")
    ds["waveform"] = (("stim", "sample"), wave)
    batch = next(iter(to_torch(ds, batch_size=2)))
    np.testing.assert_array_equal(batch["stims"].numpy(), wave[:2, None])
    spec = next(iter(to_torch(ds, batch_size=2, waveform=False)))
    assert spec["stims"].shape == (2, 1, 4, 12)
    with pytest.raises(ValueError, match="waveform=True"):
        to_torch(_random(), waveform=True)


def test_one_indexing_call_per_batch(nc_path, cache_path, monkeypatch):
    """Every read nat4xr.torch makes takes the whole batch (sorted), never one item."""
    calls = []

    def counting(original):
        def isel(self, *args, **kwargs):
            frame = sys._getframe(1)
            if frame.f_globals.get("__name__", "").startswith(("nat4xr.torch", "nat4xr.batches")):
                indexers = args[0] if args and isinstance(args[0], dict) else kwargs
                calls.append(indexers)
            return original(self, *args, **kwargs)

        return isel

    with xr.open_dataset(nc_path) as lazy, nat4xr.cachefile.open_cache(cache_path) as cached:
        for ds in (_random(), _random().chunk({"stim": 2}), lazy, cached):
            data = NAT4TorchDataset(ds)
            for cls in (xr.Dataset, xr.Variable):
                monkeypatch.setattr(cls, "isel", counting(cls.isel))
            calls.clear()
            data.__getitems__([5, 1, 4])
            monkeypatch.undo()
            # one call per variable read at most (response, spectrogram); none when
            # the batch comes from the cache file's chunks
            assert (len(calls) == 0) if data.file_backed else (1 <= len(calls) <= 2)
            for call in calls:
                # every repeat the Dataset holds: values a transform moved past the
                # stims' n_repeats are kept (the batch is cut after reading)
                assert call["repeat"] == slice(0, ds.sizes["repeat"])
                assert list(np.asarray(call["stim"])) == [1, 4, 5]


def test_reads_only_the_batch_stims():
    ds = _random()
    computed: list[int] = []

    def record(block, block_info=None):
        computed.append(block_info[0]["chunk-location"][0])
        return block

    lazy = da.from_array(ds.response.values, chunks=(1, -1, -1, -1))
    ds = ds.assign(response=(ds.response.dims, lazy.map_blocks(record, dtype="float32")))
    data = NAT4TorchDataset(ds)
    assert computed == []
    loader = to_torch(ds, batch_size=2)
    assert computed == []
    data.read_batch([3, 11])
    assert sorted(set(computed)) == [3, 11]
    computed.clear()
    next(iter(loader))
    assert sorted(set(computed)) == [0, 1]


def test_missing_torch_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "nat4xr.torch")
    with pytest.raises(ImportError, match=r"pip install nat4xr\[torch\]"):
        importlib.import_module("nat4xr.torch")


# --------------------------------------------------------------------------- workers


def test_file_backed_pickles_small(cache_path):
    with nat4xr.cachefile.open_cache(cache_path, chunks={"stim": 4}) as ds:
        data = NAT4TorchDataset(ds)
        size = len(pickle.dumps(data))
        assert data.file_backed
        assert size < ds.response.nbytes / 4  # the handle and positions, not the data
        clone = pickle.loads(pickle.dumps(data))
        _assert_batch(clone.read_batch([0, 13]), _expected(ds.load(), [0, 13]))
    in_memory = NAT4TorchDataset(_random())
    assert len(pickle.dumps(in_memory)) > _random().response.nbytes


@pytest.mark.parametrize("kind", ["netcdf", "cache"])
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_two_workers(nc_path, cache_path, context, kind):
    opener = xr.open_dataset if kind == "netcdf" else nat4xr.cachefile.open_cache
    with opener(nc_path if kind == "netcdf" else cache_path, chunks={"stim": 4}) as ds:
        sel = ds.isel(neuron=[0, 3, 4, 8])
        loader = to_torch(sel, batch_size=4, num_workers=2, multiprocessing_context=context)
        batches = list(loader)
        expected = sel.compute()  # not in place: the loader would follow it
    if kind == "cache":  # the parent never mapped the file: each worker maps its own
        assert loader.dataset.file_backed
        assert loader.dataset._sources[0].source.file._map is None
    assert len(batches) == 4
    for k, batch in enumerate(batches):
        idx = list(range(4 * k, min(4 * k + 4, N_EST + N_VAL)))
        _assert_batch(batch, _expected(expected, idx))


def test_two_forked_workers_in_memory_dask():
    ds = _random().chunk({"stim": 3})
    batches = list(to_torch(ds, batch_size=5, num_workers=2, multiprocessing_context="fork"))
    for k, batch in enumerate(batches):
        idx = list(range(5 * k, min(5 * k + 5, N_EST + N_VAL)))
        _assert_batch(batch, _expected(ds, idx))


# --------------------------------------------------------------------------- shuffling


def _epoch_orders(loader, n_epochs: int) -> list[list[str]]:
    return [[s for batch in loader for s in batch["stim"]] for _ in range(n_epochs)]


@pytest.mark.parametrize("kind", ["eager", "file-chunked"])
def test_shuffle_is_seeded_permutation_per_epoch(kind, nc_path):
    ds = _random() if kind == "eager" else xr.open_dataset(nc_path, chunks={"stim": 3})
    names = sorted(str(s) for s in ds.stim.values)
    orders = _epoch_orders(to_torch(ds, batch_size=4, shuffle=True, seed=7), 3)
    again = _epoch_orders(to_torch(ds, batch_size=4, shuffle=True, seed=7), 3)
    other = _epoch_orders(to_torch(ds, batch_size=4, shuffle=True, seed=8), 1)
    for order in orders:
        assert sorted(order) == names
    assert orders == again
    assert orders[0] != orders[1] != orders[2]
    assert other[0] != orders[0]
    ds.close()


def test_shuffle_without_seed_follows_torch_seed():
    ds = _random()
    torch.manual_seed(1)
    first = _epoch_orders(to_torch(ds, batch_size=2, shuffle=True), 2)
    torch.manual_seed(1)
    assert _epoch_orders(to_torch(ds, batch_size=2, shuffle=True), 2) == first
    assert first[0] != first[1]


def test_chunk_buffer_shuffle_on_lazy_file(nc_path):
    with xr.open_dataset(nc_path, chunks={"stim": 3}) as ds:
        data = NAT4TorchDataset(ds)
        groups = [list(g) for g in data.storage_groups]
        assert groups == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11], [12, 13]]
        sampler = StimBatchSampler(
            len(data), 1, shuffle=True, seed=3, groups=data.storage_groups, shuffle_buffer=1
        )
        for _ in range(3):
            order = [b[0] for b in sampler]
            assert sorted(order) == list(range(14))  # every stim exactly once
            # one chunk in the buffer: each chunk's stims come out together
            starts = [k for k in range(14) if k == 0 or order[k] // 3 != order[k - 1] // 3]
            assert len(starts) == 5, order
        loader = to_torch(ds, batch_size=4, shuffle=True, seed=0, shuffle_buffer=2)
        for order in _epoch_orders(loader, 2):
            assert sorted(order) == sorted(str(s) for s in ds.stim.values)


def test_in_memory_shuffle_is_exact_permutation():
    ds = _random()
    data = NAT4TorchDataset(ds)
    assert data.storage_groups is None
    sampler = StimBatchSampler(len(data), 14, shuffle=True, seed=5, groups=data.storage_groups)
    expected = np.random.default_rng([5, 0]).permutation(14)
    assert next(iter(sampler)) == sorted(expected.tolist())
    assert sampler.order(0).tolist() == expected.tolist()


def test_distributed_sampler_shards_without_overlap():
    from torch.utils.data.distributed import DistributedSampler

    ds = _random()
    n = ds.sizes["stim"]
    for shuffle in (False, True):
        seen = []
        for rank in range(2):
            sampler = DistributedSampler(range(n), num_replicas=2, rank=rank, shuffle=shuffle)
            sampler.set_epoch(1)
            loader = to_torch(ds, batch_size=3, sampler=sampler)
            ids = [s for batch in loader for s in batch["stim"]]
            assert len(ids) == n // 2
            seen += ids
        assert sorted(seen) == sorted(str(s) for s in ds.stim.values)
    with pytest.raises(ValueError, match="sampler"):
        to_torch(ds, shuffle=True, sampler=range(n))


# --------------------------------------------------------------------------- losses


def test_loss_helpers_against_hand_values():
    nan = float("nan")
    target = torch.tensor([[1.0, nan], [3.0, 0.0]])
    mask = ~torch.isnan(target)
    pred = torch.tensor([[2.0, 7.0], [1.0, 0.5]])
    assert masked_mse(pred, target, mask).item() == pytest.approx((1 + 4 + 0.25) / 3)
    rate = np.array([2.0, 1.0, 0.5])
    counts = np.array([1.0, 3.0, 0.0])
    hand = np.mean(rate - counts * np.log(rate + 1e-8))
    assert masked_poisson_nll(pred, target, mask).item() == pytest.approx(hand, rel=1e-6)
    log_rate = torch.log(pred)
    hand_log = np.mean(np.exp(np.log(rate)) - counts * np.log(rate))
    got = masked_poisson_nll(log_rate, target, mask, log_input=True).item()
    assert got == pytest.approx(hand_log, rel=1e-6)
    ref = torch.nn.functional.poisson_nll_loss(pred[mask], target[mask], log_input=False)
    assert masked_poisson_nll(pred, target, mask).item() == pytest.approx(ref.item(), rel=1e-6)
    assert masked_mse(pred, target, torch.zeros_like(mask)).item() == 0.0


@pytest.mark.parametrize(
    "loss",
    [
        masked_mse,
        masked_poisson_nll,
        lambda p, t, m: masked_poisson_nll(p, t, m, log_input=True),
    ],
)
def test_loss_gradients_finite_with_nan_targets(loss):
    target = torch.tensor([[1.0, float("nan")], [float("nan"), 2.0]])
    mask = ~torch.isnan(target)
    pred = torch.tensor([[0.5, 0.0], [-1.0, 1.5]], requires_grad=True)
    value = loss(pred, target, mask)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[~mask] == 0).all()
    assert (pred.grad[mask] != 0).all()


@pytest.mark.parametrize("log_input", [False, True])
@pytest.mark.parametrize("shape", [(3, 5, 1, 7), (2, 4, 3, 6)])
def test_losses_ignore_anything_outside_the_mask(shape, log_input):
    """NaN targets and NaN, infinite or negative predictions outside the mask change
    neither loss nor gradient: against the same loss over the valid entries alone."""
    g = torch.Generator().manual_seed(sum(shape))
    target = torch.poisson(torch.full(shape, 0.7), generator=g)
    mask = torch.rand(shape, generator=g) > 0.3
    target[~mask] = float("nan")
    pred = torch.rand(shape, generator=g) + 0.1
    junk = torch.tensor([float("nan"), float("inf"), -float("inf"), -3.0])
    outside = torch.nonzero(~mask)
    for i, where in enumerate(outside):
        pred[tuple(where)] = junk[i % 4]
    pred.requires_grad_(True)
    valid = pred.detach()[mask].clone().requires_grad_(True)
    for got_fn, ref_fn in [
        (lambda: masked_mse(pred, target, mask),
         lambda: torch.nn.functional.mse_loss(valid, target[mask])),
        (lambda: masked_poisson_nll(pred, target, mask, log_input=log_input),
         lambda: torch.nn.functional.poisson_nll_loss(valid, target[mask], log_input=log_input,
                                                      eps=1e-8) if log_input else
         (valid - target[mask] * torch.log(valid + 1e-8)).mean()),
    ]:  # fmt: skip
        pred.grad, valid.grad = None, None
        got, ref = got_fn(), ref_fn()
        got.backward()
        ref.backward()
        assert torch.isfinite(got)
        assert got.item() == pytest.approx(ref.item(), rel=1e-6)
        assert (pred.grad[~mask] == 0).all()
        torch.testing.assert_close(pred.grad[mask], valid.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_losses_past_65504_valid_bins(dtype):
    """A float16 sum or count overflows at 65504: half-precision losses are summed and
    counted in float32, so 80,000 valid bins give the float32 loss to the dtype's precision."""
    g = torch.Generator().manual_seed(3)
    shape = (8, 100, 1, 100)
    target = torch.poisson(torch.full(shape, 0.5), generator=g)
    mask = torch.ones(shape, dtype=torch.bool)
    pred = torch.rand(shape, generator=g) + 0.5
    for fn in (masked_mse, masked_poisson_nll):
        want = fn(pred, target, mask).item()
        got = fn(pred.to(dtype), target.to(dtype), mask)
        assert got.dtype == dtype
        assert got.item() == pytest.approx(want, rel=2e-2)


def test_linear_model_loss_decreases():
    ds = _random(n_est=24, n_val=6, n_neurons=5, n_time=20, seed=11)
    loader = to_torch(ds, batch_size=6, shuffle=True, seed=0)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 5)  # freq bands -> neurons, per time bin

    def epoch_loss(train: bool) -> float:
        total = 0.0
        for batch in loader:
            spec = batch["stims"][:, 0].transpose(1, 2)  # (B, T, F)
            rate = torch.nn.functional.softplus(model(spec)).transpose(1, 2)  # (B, N, T)
            loss = masked_poisson_nll(rate[:, :, None, :], batch["responses"], batch["valid_mask"])
            if train:
                model.zero_grad()
                loss.backward()
                with torch.no_grad():  # plain gradient descent
                    for p in model.parameters():
                        assert torch.isfinite(p.grad).all()
                        p -= 0.1 * p.grad
            total += loss.item()
        return total / len(loader)

    with torch.no_grad():
        before = epoch_loss(False)
    for _ in range(6):
        epoch_loss(True)
    with torch.no_grad():
        after = epoch_loss(False)
    assert np.isfinite(before) and after < before - 0.05


def test_no_compute_while_building_loader(nc_path):
    with xr.open_dataset(nc_path, chunks={"stim": 2}) as ds:

        def refuse_response(dsk, keys, **kwargs):
            # small coordinates may be read; the response never
            if "response" in repr(keys):
                raise AssertionError("response computed while building the loader")
            return dask.get(dsk, keys, **kwargs)

        with dask.config.set(scheduler=refuse_response):
            to_torch(ds.assign(response=ds.response + 0), batch_size=2, shuffle=True)


def test_cache_opened_by_store_is_file_backed(tmp_path):
    path = nat4xr.cachefile.write_cache(_random(), tmp_path / "cache.nc")
    ds = nat4xr.cachefile.open_cache(path, chunks=4)
    sel = ds.isel(neuron=[1, 4, 6])
    data = NAT4TorchDataset(sel)
    assert data.file_backed
    assert [list(g) for g in data.storage_groups] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 10, 11],
        [12, 13],
    ]
    _assert_batch(data.read_batch([2, 12]), _expected(sel.load(), [2, 12]))
    if hasattr(ds, "nat4"):  # the accessor's selections stay file-backed too
        val = ds.nat4.sel_stims(subset="val").nat4.sel_neurons(auditory=True)
        data = NAT4TorchDataset(val)
        assert data.file_backed
        _assert_batch(data.read_batch([0, 3]), _expected(val.load(), [0, 3]))
    ds.close()
