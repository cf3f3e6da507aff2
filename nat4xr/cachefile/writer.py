"""Write a Dataset to a cache file: atomically, under a lock, with a checked trailer.

See :mod:`nat4xr.cachefile.layout` for what the file holds and
:mod:`nat4xr.cachefile.trailer` for its trailer.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import filelock
import numpy as np
import xarray as xr

from ..errors import CacheError
from ..files import atomic_path, remove_stale
from ..schema import check_dataset
from .chunks import crc32
from .layout import (
    CACHE_FORMAT,
    COMPRESSION,
    INDEX_GROUP,
    RESPONSE_COMPRESSION,
    STAMPS,
    chunk_grid,
    chunk_shape,
    digest,
)
from .trailer import DEFLATED, STORED, encode_trailer, metadata_crc

__all__ = ["LOCK_TIMEOUT", "lock", "write_cache"]

#: Seconds a second writer of the same file waits for the first.
LOCK_TIMEOUT = 3 * 3600.0
#: Bytes of ``response`` computed at once while writing.
_BLOCK_BYTES = 16 << 20


def write_cache(
    ds: xr.Dataset,
    path: str | os.PathLike,
    *,
    key: str = "",
    options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> Path:
    """Write ``ds`` to the cache file ``path``, atomically and under a lock.

    ``response`` may be a dask array; it is computed block by block (at most
    ~64 MB at a time) and only each sound's recorded repeats (``n_repeats``)
    are written, so the padding never exists in memory or on disk. Values in
    repeats at or past ``n_repeats`` are not stored: they read back as NaN,
    as the contract says they are.

    Parameters
    ----------
    ds : xarray.Dataset
        A Dataset of the nat4xr contract.
    path : path-like
        Target file; its folder is created if needed.
    key : str
        Cache key stamped in the file (see :func:`nat4xr.cachedir.cache_key`).
    options : mapping, optional
        Build options stamped in the file (as JSON).
    progress : bool
        Show a tqdm bar while ``response`` is written.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    CacheError
        The folder cannot hold the file (no space, no permission, read-only):
        the message names the folder and the cause, the original error is
        chained, and no partial file is left.

    Examples
    --------
    >>> import tempfile, nat4xr
    >>> from nat4xr.cachefile import open_cache
    >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=2, n_neurons=4)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with open_cache(write_cache(ds, Path(tmp) / "demo.nc")) as back:
    ...         xr.testing.assert_identical(back.load(), ds)
    """
    path = Path(path)
    check_dataset(ds)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    with locked(path):
        write_unlocked(ds, path, key, options or {}, progress)
    return path


def lock(path: Path) -> filelock.FileLock:
    """The lock guarding cache file ``path`` (``<path>.lock``)."""
    return filelock.FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the cache file's lock; a folder that refuses the lock file is a CacheError."""
    guard = lock(path)
    try:
        guard.acquire()
    except filelock.Timeout:
        raise
    except OSError as exc:  # read-only or full folder
        raise CacheError(
            f"cannot create the lock file {guard.lock_file} ({_cause(exc)}); check free space "
            "and permissions, set NAT4XR_CACHE_DIR to a writable folder, or pass cache=False"
        ) from exc
    try:
        yield
    finally:
        guard.release()


def write_unlocked(
    ds: xr.Dataset, path: Path, key: str, options: Mapping[str, Any], progress: bool
) -> None:
    """:func:`write_cache` for a caller that holds the lock."""
    remove_stale(path)  # left by a writer that died; we hold the lock
    try:
        with atomic_path(path) as tmp:
            _write(ds, tmp, key, options, progress)
    except _DataError as exc:  # computing the data failed, not storing it
        raise exc.__cause__ from None
    except (OSError, RuntimeError) as exc:  # HDF5/netCDF report storage faults as either
        if isinstance(exc, CacheError):
            raise
        raise _write_error(path, exc) from exc


def _write(ds: xr.Dataset, tmp: Path, key: str, options: Mapping[str, Any], progress: bool) -> None:
    import netCDF4

    data_vars = [name for name in ds.data_vars if name != "response"]
    description = _description(ds, ["response", *data_vars], key, options)
    rest = ds.drop_vars("response").drop_encoding()
    rest.attrs = {k: v for k, v in rest.attrs.items() if k not in STAMPS}
    encoding = {name: _encoding(var, name in data_vars) for name, var in rest.variables.items()}
    rest.to_netcdf(tmp, mode="w", format="NETCDF4", engine="netcdf4", encoding=encoding)
    reps = _recorded_repeats(ds)
    blocks = _blocks(reps, ds.sizes["neuron"] * ds.sizes["time"] * 4)
    bar = _progress(len(blocks), progress)
    try:
        with netCDF4.Dataset(tmp, "a") as nc:
            repeated = _write_response(nc, ds, blocks, bar)
        if repeated:
            _write_unfiltered(tmp, ds, repeated, bar)
    finally:
        bar.close()
    from .reading import read_metadata

    coords, attrs = read_metadata(tmp)
    with netCDF4.Dataset(tmp, "a") as nc:
        group = nc.createGroup(INDEX_GROUP)
        group.setncattr("digest", digest(coords, attrs))
        nc.setncattr("nat4xr_cache_options", json.dumps(dict(options), sort_keys=True))
        nc.setncattr("nat4xr_cache_key", key)
        nc.setncattr("nat4xr_cache_format", np.int64(CACHE_FORMAT))
    tables = _chunk_tables(tmp, description["variables"])
    with open(tmp, "rb+") as fh:
        size = os.fstat(fh.fileno()).st_size  # HDF5's end of file: nothing reads past it
        ranges = [
            (o, o + n)
            for t in tables
            for o, n, f in zip(t["offset"].tolist(), t["nbytes"].tolist(), t["flags"].tolist())
            if f & STORED
        ]
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                chunks = np.array(sorted(ranges), np.int64).reshape(-1, 2)
                meta = metadata_crc(view, 0, chunks)
            finally:
                view.release()
        # The trailer goes last: a file without it was never finished.
        fh.seek(size)
        fh.write(encode_trailer(size, meta, json.dumps(description).encode(), tables))
        fh.flush()
        os.fsync(fh.fileno())  # the data reach the disk before the rename publishes them


def _description(
    ds: xr.Dataset, names: list[str], key: str, options: Mapping[str, Any]
) -> dict[str, Any]:
    """The trailer's description: stamp, and per data variable what its chunks hold."""
    variables = []
    for name in names:
        var = ds[name]
        chunks = chunk_shape(var.dims, var.shape)
        variables.append(
            {
                "name": name,
                "dims": list(var.dims),
                "shape": list(var.shape),
                "chunks": list(chunks),
                "dtype": "<f4" if name == "response" else np.dtype(var.dtype).newbyteorder("<").str,
                "fill": float("nan"),
                "shuffle": bool(
                    (RESPONSE_COMPRESSION if name == "response" else COMPRESSION)["shuffle"]
                ),
                "n": int(np.prod(chunk_grid(var.shape, chunks))),
            }
        )
    return {"key": key, "options": json.loads(json.dumps(dict(options))), "variables": variables}


def _encoding(var: xr.Variable, data: bool) -> dict[str, Any]:
    """Explicit netCDF encoding: data variables chunked and compressed, the rest plain.

    Strings are stored as fixed-width UTF-8 characters, not HDF5 variable-length
    strings: netCDF-C/HDF5 can crash (``H5T__conv_vlen``) when a file with
    variable-length strings is open more than once in a process.
    """
    if var.dtype.kind == "U":
        return {"dtype": "S1"}
    if data:
        if var.dtype.kind != "f" or var.dtype.itemsize not in (4, 8):
            raise ValueError(f"data variable of dtype {var.dtype}: the cache stores floats only")
        return {
            **COMPRESSION,
            "chunksizes": chunk_shape(var.dims, var.shape),
            "_FillValue": var.dtype.type(np.nan),
        }
    return {}


def _recorded_repeats(ds: xr.Dataset) -> np.ndarray:
    """Repeats written per stim: ``n_repeats`` (a contract coordinate), within the axis."""
    n_rep = ds.sizes["repeat"]
    return np.clip(np.asarray(ds["n_repeats"].values, dtype=np.int64), 0, n_rep)


def _blocks(reps: np.ndarray, per_repeat_bytes: int) -> list[tuple[int, int, int]]:
    """Runs ``(i0, i1, k)`` of consecutive stims with ``k`` repeats, each ≤ the block budget."""
    out = []
    i, n = 0, len(reps)
    while i < n:
        k = int(reps[i])
        per_stim = max(1, k * per_repeat_bytes)
        j = i + 1
        while j < n and reps[j] == k and (j + 1 - i) * per_stim <= _BLOCK_BYTES:
            j += 1
        if k > 0:
            out.append((i, j, k))
        i = j
    return out


def _write_response(
    nc: Any, ds: xr.Dataset, blocks: list[tuple[int, int, int]], bar: Any
) -> list[tuple[int, int, int]]:
    """Define ``response`` and write the sounds with one recorded repeat, compressed.

    Returns the blocks of sounds with more than one repeat, which
    :func:`_write_unfiltered` writes once ``nc`` is closed.
    """
    resp = ds["response"]
    for dim, size in zip(resp.dims, resp.shape):
        if dim not in nc.dimensions:
            nc.createDimension(dim, size)
    var = nc.createVariable(
        "response",
        "f4",
        resp.dims,
        chunksizes=chunk_shape(resp.dims, resp.shape),
        fill_value=np.float32(np.nan),
        **RESPONSE_COMPRESSION,
    )
    attrs = {k: v for k, v in resp.attrs.items() if k not in ("_FillValue", "coordinates")}
    var.setncatts(attrs)
    # Mirror what xarray writes, so the stim/neuron coordinates attach to response.
    coords = [c for c in ds.coords if c not in ds.dims and set(ds[c].dims) <= set(resp.dims)]
    if coords:
        var.setncattr("coordinates", " ".join(coords))
    var.set_auto_maskandscale(False)
    # Every write covers whole chunks, so no chunk cache (netCDF's default holds
    # 64 MB of them); the setting holds once the variable is in the file: sync first.
    nc.sync()
    var.set_var_chunk_cache(size=0, nelems=1, preemption=1.0)
    repeated = []
    for i0, i1, k in blocks:
        if k > 1:
            repeated.append((i0, i1, k))
            continue
        var[i0:i1, :, :k, :] = _computed(resp.data[i0:i1, :, :k, :])
        bar.update(1)
    return repeated


def _write_unfiltered(
    path: Path, ds: xr.Dataset, blocks: list[tuple[int, int, int]], bar: Any
) -> None:
    """Write the chunks of ``blocks`` unfiltered, with HDF5's per-chunk filter mask.

    The bytes of each chunk are then its values in C order; netCDF and HDF5
    readers see ordinary values (the mask tells HDF5 to skip the filters).
    A sound's chunks are written one after another, so its repeats lie back
    to back in the file.
    """
    import h5py

    resp = ds["response"]
    with h5py.File(path, "r+") as f:
        dset = f["response"]
        skip_all = (1 << dset.id.get_create_plist().get_nfilters()) - 1
        for i0, i1, k in blocks:
            block = _computed(resp.data[i0:i1, :, :k, :])
            if block.size:
                for s in range(i0, i1):
                    for r in range(k):
                        chunk = np.ascontiguousarray(block[s - i0, :, r, :], dtype=dset.dtype)
                        dset.id.write_direct_chunk((s, 0, r, 0), chunk, filter_mask=skip_all)
            bar.update(1)


def _chunk_tables(path: Path, variables: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
    """Per variable of the description: offset, size, flags and CRC-32 of every chunk, flat."""
    import h5py

    with h5py.File(path, "r") as f, open(path, "rb") as fh:
        return [_chunk_table(f[var["name"]], var, fh) for var in variables]


def _chunk_table(dset: Any, var: dict[str, Any], fh: Any) -> dict[str, np.ndarray]:
    chunks = dset.chunks or dset.shape
    filters = dset.id.get_create_plist()
    shuffled = any(
        filters.get_filter(i)[0] == _filter_id("SHUFFLE") for i in range(filters.get_nfilters())
    )
    # The trailer describes the chunks to a reader that never asks HDF5: it must be exact.
    if (
        list(dset.shape) != var["shape"]
        or list(chunks) != var["chunks"]
        or dset.dtype.newbyteorder("<") != np.dtype(var["dtype"])
        or shuffled != var["shuffle"]
    ):
        raise RuntimeError(f"{var['name']} was not stored as the cache trailer describes it")
    grid = chunk_grid(dset.shape, chunks)
    skip_all = (1 << filters.get_nfilters()) - 1
    fields = {
        "offset": np.zeros(grid, np.uint64),
        "nbytes": np.zeros(grid, np.uint64),
        "flags": np.zeros(grid, np.uint8),
        "crc32": np.zeros(grid, np.uint32),
    }

    def visit(info: Any) -> None:
        cell = tuple(o // c for o, c in zip(info.chunk_offset, chunks))
        fh.seek(info.byte_offset)
        compressed = skip_all and (info.filter_mask & skip_all) != skip_all
        fields["offset"][cell] = info.byte_offset
        fields["nbytes"][cell] = info.size
        fields["flags"][cell] = STORED | (DEFLATED if compressed else 0)
        fields["crc32"][cell] = crc32(fh.read(info.size))

    _each_chunk(dset, visit)
    return {name: values.ravel() for name, values in fields.items()}


def _filter_id(name: str) -> int:
    """HDF5's id of a built-in filter (``"SHUFFLE"``, ``"DEFLATE"``)."""
    import h5py

    return int(getattr(h5py.h5z, f"FILTER_{name}"))


def _each_chunk(dset: Any, visit: Any) -> None:
    """Call ``visit(StoreInfo)`` for every written chunk of an h5py dataset."""
    try:
        dset.id.chunk_iter(visit)  # one pass over the chunk index (HDF5 >= 1.14)
    except (AttributeError, NotImplementedError):  # pragma: no cover - older HDF5
        for i in range(dset.id.get_num_chunks()):
            visit(dset.id.get_chunk_info(i))


class _DataError(Exception):
    """Computing the values to write failed (raised from the original error)."""


def _computed(block: Any) -> np.ndarray:
    try:
        if hasattr(block, "compute"):
            block = block.compute()
        return np.asarray(block, dtype=np.float32)
    except Exception as exc:
        raise _DataError from exc


def _progress(total: int, enabled: bool) -> Any:
    """A tqdm bar, or an object whose ``update`` and ``close`` do nothing."""
    if enabled:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="write cache", unit="block")
    return _NoBar()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
}


def _cause(exc: BaseException) -> str:
    """The storage cause of ``exc`` in words, from the first ``OSError`` in its chain."""
    seen = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        code = getattr(link, "errno", None)
        if isinstance(link, OSError) and code in _CAUSES:
            return f"{_CAUSES[code]} ({link})"
        link = link.__cause__ or link.__context__
    return str(exc)


def _write_error(path: Path, exc: BaseException) -> CacheError:
    cause = _cause(exc)
    if cause == str(exc):
        # HDF5 reports a failed write while closing the file, with errno in its text
        # at best: say what the folder's state suggests.
        try:
            if shutil.disk_usage(path.parent).free < (64 << 20):
                cause = f"the disk is (nearly) full ({exc})"
        except OSError:
            pass
    return CacheError(
        f"cannot write the cache file {path.name} in {path.parent}: {cause}; check free space "
        "and permissions (NAT4XR_CACHE_DIR moves the cache), or pass cache=False"
    )
