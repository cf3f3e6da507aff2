"""The cache file format and the ``nat4`` backend engine: indexing, laziness, integrity."""

from __future__ import annotations

import shutil
import tracemalloc

import h5py
import numpy as np
import pytest
import xarray as xr

import nat4xr
from nat4xr.cachefile import CACHE_FORMAT, CacheSource, open_cache, write_cache
from nat4xr.errors import CacheError
from nat4xr.testing import raise_if_dask_computes


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    ds = nat4xr.synthetic.random_dataset(n_est=6, n_val=3, n_neurons=7, n_time=9, seed=3)
    return ds, write_cache(ds, tmp_path_factory.mktemp("cachefile") / "c.nc")


def _copy(path, tmp_path, name="copy.nc"):
    target = tmp_path / name
    shutil.copyfile(path, target)
    return target


def _flip(path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x40]))


# ----------------------------------------------------------------------------- the engine


def test_engine_gives_the_written_dataset(written):
    ds, path = written
    with xr.open_dataset(path, engine="nat4") as lazy:
        assert lazy.encoding["nat4xr_cache"]["format"] == CACHE_FORMAT
        assert isinstance(lazy.response.encoding["nat4xr_source"], CacheSource)
        assert lazy.response.chunks is None
        xr.testing.assert_identical(lazy.load(), ds)
    with xr.open_dataset(path, engine="nat4", chunks={"stim": 2}) as chunked:
        assert chunked.response.chunks[0] == (2, 2, 2, 2, 1)
        xr.testing.assert_identical(chunked.load(), ds)
    with xr.open_dataset(path, engine="nat4", drop_variables=["spectrogram", "pub_x"]) as less:
        xr.testing.assert_identical(less.load(), ds.drop_vars("spectrogram"))


INDEXERS = [
    {"stim": 3},
    {"stim": -1, "neuron": -2},
    {"stim": slice(1, 7, 2)},
    {"stim": slice(None, None, -1), "time": slice(8, 0, -3)},
    {"stim": [8, 0, 3], "neuron": [6, 1, 1]},
    {"stim": [], "neuron": [2]},
    {"repeat": slice(2, 5), "time": [0, 8]},
    {"stim": np.array([True, False] * 4 + [True])},
    # vectorized: pointwise along a new dimension
    {"stim": xr.Variable("k", [0, 7, 8]), "neuron": xr.Variable("k", [1, 6, 0])},
    {"stim": xr.Variable(("a", "b"), [[1, 8], [6, 0]]), "time": 4},
]


@pytest.mark.parametrize("indexer", INDEXERS, ids=range(len(INDEXERS)))
def test_every_indexing_kind_matches_the_dense_array(written, indexer):
    ds, path = written
    with open_cache(path, chunks=None) as lazy:
        for name in ("response", "spectrogram"):
            usable = {k: v for k, v in indexer.items() if k in ds[name].dims}
            want = ds[name].variable.isel(usable)
            got = lazy[name].variable.isel(usable)
            assert got.dims == want.dims
            np.testing.assert_array_equal(got.values, want.values)


def test_chunks_none_reads_nothing_until_asked(written, monkeypatch):
    ds, path = written
    reads = []
    from nat4xr.cachefile.chunks import ChunkFile

    original = ChunkFile.decoded

    def counting(self, index, flat, where=""):
        reads.append((index.name, flat))
        return original(self, index, flat, where)

    monkeypatch.setattr(ChunkFile, "decoded", counting)
    with raise_if_dask_computes(), open_cache(path, chunks=None) as lazy:
        sel = lazy.nat4.sel_stims(subset="val").isel(neuron=[0, 2])
        assert reads == []
        values = sel.response.values
        touched = {flat for name, flat in reads if name == "response"}
        n_rep = ds.sizes["repeat"]
        val = np.flatnonzero(ds.subset.values == "val")
        held = int(ds.n_repeats.values[val].max())
        assert sel.sizes["repeat"] == held
        # only the selected sounds' chunks (every repeat the selection holds) were read
        assert touched == {s * n_rep + r for s in val for r in range(held)}
        np.testing.assert_array_equal(
            values, ds.nat4.sel_stims(subset="val").isel(neuron=[0, 2]).response.values
        )


def test_chunks_none_on_a_full_scale_shaped_file_allocates_little(tmp_path):
    """The A1 shape (593 x 849 x 20 x 150, 6 GB dense) opens in a few MB: nothing is read."""
    small = nat4xr.synthetic.random_dataset(
        n_est=575, n_val=18, n_neurons=849, n_repeats=2, n_time=2, n_freq=2, p_missing=0.0,
        chunks={"stim": 64},
    )  # fmt: skip
    step = float(small.time[1] - small.time[0])
    ds = small.pad(time=(0, 148), repeat=(0, 18)).assign_coords(
        time=np.arange(150) * step, repeat=np.arange(20)
    )
    path = write_cache(ds, tmp_path / "a1-shaped.nc")
    tracemalloc.start()
    try:
        with raise_if_dask_computes():
            lazy = open_cache(path, chunks=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    with lazy:
        assert lazy.response.shape == (593, 849, 20, 150)  # 6.0 GB as float32
        assert lazy.response.chunks is None
    assert peak < 8e6  # coordinates and the chunk index, never the response


# ----------------------------------------------------------------------------- integrity


def _chunk_offset(path, name: str, stim: int, rep: int = 0) -> tuple[int, bool]:
    with open_cache(path, chunks=None) as lazy:
        index = lazy[name].encoding["nat4xr_source"].file.index[name]
    cell = (stim, 0, rep, 0) if name == "response" else (stim, 0, 0)
    return int(index.offset[cell]), bool(index.compressed[cell])


@pytest.mark.parametrize("kind", ["unfiltered", "compressed", "spectrogram"])
def test_a_flipped_byte_in_a_chunk_is_a_cache_error(written, tmp_path, kind):
    ds, path = written
    copy = _copy(path, tmp_path)
    stim = int(np.flatnonzero(ds.subset.values == ("val" if kind == "unfiltered" else "est"))[0])
    name = "spectrogram" if kind == "spectrogram" else "response"
    offset, compressed = _chunk_offset(copy, name, stim)
    assert compressed == (kind != "unfiltered")
    _flip(copy, offset + 5)
    for chunks in (None, 2):
        with open_cache(copy, chunks=chunks) as lazy:
            with pytest.raises(CacheError, match=rf"{copy.name}.*{name}.*stim={stim}.*rebuild"):
                _ = lazy[name].isel(stim=stim).values
            # the rest of the file is still served
            other = (stim + 1) % ds.sizes["stim"]
            np.testing.assert_array_equal(
                lazy[name].isel(stim=other).values, ds[name].isel(stim=other).values
            )


def test_a_flipped_byte_in_a_coordinate_fails_the_open(written, tmp_path):
    _, path = written
    copy = _copy(path, tmp_path)
    with h5py.File(copy, "r") as f:
        offset = f["neuron"].id.get_offset()
    _flip(copy, offset + 3)
    with pytest.raises(CacheError, match=rf"{copy.name}.*metadata.*CRC-32.*rebuild"):
        open_cache(copy)


def test_close_releases_the_file_and_a_replaced_file_is_never_read(written, tmp_path):
    _, path = written
    copy = _copy(path, tmp_path)
    lazy = open_cache(copy, chunks=None)
    file = lazy.response.encoding["nat4xr_source"].file
    _ = lazy.response.isel(stim=0).values
    assert file._map is not None
    lazy.close()
    assert file._map is None
    other = nat4xr.synthetic.random_dataset(n_est=6, n_val=3, n_neurons=7, n_time=9, seed=4)
    write_cache(other, tmp_path / "other.nc")
    shutil.move(tmp_path / "other.nc", copy)  # replaced in place under the same name
    with pytest.raises(CacheError, match="replaced after it was opened"):
        _ = lazy.response.isel(stim=1).values
    with open_cache(copy) as fresh:
        xr.testing.assert_identical(fresh.load(), other)


# ----------------------------------------------------------------------------- the trailer


def _trailer_entry(path, name: str, flat: int) -> tuple[bytearray, int, int, int]:
    """The file's bytes, where its trailer starts, and chunk ``flat``'s ``offset`` and ``flags``."""
    from nat4xr.cachefile.trailer import FOOT, read_trailer

    data = bytearray(path.read_bytes())
    _, _, start, _, _, n_desc, _ = FOOT.unpack_from(data, len(data) - FOOT.size)
    at = start + n_desc
    for ix in read_trailer(path).index.values():  # offset, nbytes, crc32, flags: 8, 8, 4, 1 B
        n = ix.stored.size
        if ix.name == name:
            return data, start, at + 8 * flat, at + 20 * n + flat
        at += 21 * n
    raise KeyError(name)


def _write_back(path, data: bytearray, start: int, crc: bool) -> None:
    import struct

    from nat4xr.cachefile.chunks import crc32
    from nat4xr.cachefile.trailer import FOOT

    if crc:  # a trailer whose CRC matches what it says: as a faulty writer would leave it
        at = len(data) - FOOT.size + 4
        struct.pack_into("<I", data, at, 0)
        struct.pack_into("<I", data, at, crc32(data[start:]))
    path.write_bytes(bytes(data))


def test_the_sign_byte_of_a_chunk_offset_is_caught_by_the_index_checksum(written, tmp_path):
    ds, path = written
    copy = _copy(path, tmp_path)
    val = int(np.flatnonzero(ds.subset.values == "val")[0])
    flat = val * ds.sizes["repeat"]  # (stim=val, repeat=0): a stored, unfiltered chunk
    data, start, offset_at, _ = _trailer_entry(copy, "response", flat)
    data[offset_at + 7] ^= 0x80  # the offset turns negative: read as "not stored" before
    _write_back(copy, data, start, crc=False)
    with pytest.raises(CacheError, match=rf"{copy.name}: its trailer \(the chunk index\) fails"):
        open_cache(copy)


def test_an_absent_chunk_is_recorded_and_checked_not_inferred(written, tmp_path):
    ds, path = written
    val = int(np.flatnonzero(ds.subset.values == "val")[0])
    flat = val * ds.sizes["repeat"]
    copy = _copy(path, tmp_path)
    with open_cache(copy, chunks=None) as lazy:
        index = lazy.response.encoding["nat4xr_source"].file.index["response"]
        assert index.stored.sum() == int(ds.n_repeats.sum())
        assert (index.stored == (index.offset >= 0)).all()
    data, start, _, flags_at = _trailer_entry(copy, "response", flat)
    data[flags_at] = 0  # "never written", but the entry still has an offset, size and CRC
    _write_back(copy, data, start, crc=True)
    with pytest.raises(
        CacheError, match=rf"{copy.name}: its trailer \(the chunk index\) is invalid"
    ):
        open_cache(copy)
    data, start, offset_at, _ = _trailer_entry(_copy(path, tmp_path), "response", flat)
    data[offset_at + 4] ^= 0x10  # far past the end of the file
    _write_back(copy, data, start, crc=True)
    with pytest.raises(CacheError, match=rf"{copy.name}: its chunk index places chunks outside"):
        open_cache(copy)


def test_a_cache_of_format_4_is_named_as_such(tmp_path):
    ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=3, n_time=4)
    old = tmp_path / "old.nc"
    ds.to_netcdf(old, engine="netcdf4")  # an HDF5 file without nat4xr's trailer
    with pytest.raises(CacheError, match=r"old.nc has no nat4xr cache trailer: .* older nat4xr"):
        open_cache(old)
    assert not nat4xr.cachefile.is_cache_file(old)


def test_is_cache_file_and_read_stamp(written, tmp_path):
    import os

    from nat4xr.cachefile import is_cache_file, read_stamp

    _, path = written
    assert is_cache_file(path)
    assert read_stamp(path) == {"format": CACHE_FORMAT, "key": "", "options": {}}
    fifo = tmp_path / "fifo.nc"
    os.mkfifo(fifo)  # opening a FIFO for reading would block: it is never opened
    assert not is_cache_file(fifo) and not is_cache_file(tmp_path)
    with pytest.raises(CacheError, match="not a regular file"):
        read_stamp(fifo)
    copy = _copy(path, tmp_path)
    _flip(copy, copy.stat().st_size - 100)
    assert is_cache_file(copy)  # the magic only
    with pytest.raises(CacheError, match=rf"{copy.name}: its trailer \(the chunk index\) fails"):
        read_stamp(copy)


def test_xarray_still_opens_a_cache_file_as_netcdf(written):
    ds, path = written
    with xr.open_dataset(path) as plain:  # HDF5 ignores the trailer after its last byte
        np.testing.assert_array_equal(plain.response.values, ds.response.values)
        assert plain.attrs["nat4xr_cache_format"] == CACHE_FORMAT


def test_a_cache_rewritten_or_cut_in_place_under_a_reader_is_refused(written, tmp_path):
    """Another program writing into an open cache: an error, never its bytes unchecked."""
    import os

    ds, path = written
    other = write_cache(
        nat4xr.synthetic.random_dataset(n_est=6, n_val=3, n_neurons=7, n_time=9, seed=4),
        tmp_path / "other.nc",
    )
    for damage in ("rewrite", "truncate"):
        copy = _copy(path, tmp_path, f"{damage}.nc")
        opened = open_cache(copy, chunks=None)
        np.testing.assert_array_equal(opened.response.values, ds.response.values)  # all checked
        st = os.stat(copy)
        if damage == "rewrite":  # same inode, other bytes (as `cp other copy` does)
            with open(copy, "r+b") as fh:
                fh.write(other.read_bytes())
                fh.truncate()
        else:
            os.truncate(copy, 1000)
        os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        with pytest.raises(CacheError, match=r"changed in place after it was opened|CRC-32"):
            opened.response.values  # noqa: B018
        opened.close()
    # touched only (as scratch-space purges ask for): checked again, and served
    copy = _copy(path, tmp_path, "touched.nc")
    opened = open_cache(copy, chunks=None)
    np.testing.assert_array_equal(opened.response.values, ds.response.values)
    st = os.stat(copy)
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    np.testing.assert_array_equal(opened.response.values, ds.response.values)
    opened.close()
    # deleting the file under a reader changes nothing it reads
    copy = _copy(path, tmp_path, "deleted.nc")
    opened = open_cache(copy, chunks=None)
    copy.unlink()
    np.testing.assert_array_equal(opened.response.values, ds.response.values)
    opened.close()
