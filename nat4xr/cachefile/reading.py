"""Open a cache file: check it, read its small coordinates, and wrap its data lazily.

:func:`open_store` is what the ``nat4`` xarray backend engine calls;
:func:`open_cache` adds nat4xr's chunking on top. Nothing here reads a data
value: data variables are :class:`~nat4xr.cachefile.arrays.CacheArray` objects
that read chunks from a memory map when indexed.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from xarray.core import indexing

from .. import provenance
from ..errors import CacheError
from ..schema import SCHEMA_VERSION, check_dataset
from .arrays import CacheArray, CacheSource
from .chunks import ChunkFile
from .layout import CACHE_FORMAT, INDEX_GROUP, STAMPS, digest
from .trailer import read_trailer

__all__ = ["identify", "open_cache", "open_store", "read_metadata", "selected"]

#: Bytes of ``response`` per dask chunk that ``chunks='auto'`` aims at.
_CHUNK_BYTES = 64 << 20
#: Bytes per dask chunk of a selection read from the file (:func:`selected`) under ``'auto'``:
#: a task holds about this much (two at once on the default threads), whatever it reduces to.
SELECTION_CHUNK_BYTES = 16 << 20
_REBUILD = "rebuild it with open_nat4(..., rebuild=True)"


def read_metadata(path: str | os.PathLike) -> tuple[dict[str, xr.Variable], dict]:
    """Coordinates (in memory, strings as ``<U``) and global attributes without the stamps."""
    ds = _root(path)
    try:
        return _coords(ds), {k: v for k, v in ds.attrs.items() if k not in STAMPS}
    finally:
        ds.close()


def _root(path: str | os.PathLike, nc: Any = None) -> xr.Dataset:
    """The root group through xarray's netCDF4 store (lazy data); ``nc`` an open handle."""
    import netCDF4

    if nc is None:
        nc = netCDF4.Dataset(os.fspath(path), "r")
    store = xr.backends.NetCDF4DataStore(nc)
    return xr.open_dataset(store, cache=False)


def _coords(ds: xr.Dataset) -> dict[str, xr.Variable]:
    out = {}
    for name in ds.coords:
        var = ds.variables[name].load()
        if var.dtype == object:  # fixed-width characters decode to objects: the contract's <U
            var = var.astype(str)
        var.encoding = {}
        out[name] = var
    return out


def open_store(path: str | os.PathLike, drop_variables: Any = None) -> xr.Dataset:
    """The lazy Dataset of a cache file, without dask (the ``nat4`` engine's result).

    Raises
    ------
    CacheError
        The file is missing, unreadable, truncated, damaged, not a nat4xr
        cache or written by an incompatible version.
    """
    import netCDF4

    path = Path(path).absolute()  # a later chdir must not change which file is read
    try:
        # Every byte netCDF/HDF5 will parse is verified before they see the file.
        trailer = read_trailer(path)
        nc = netCDF4.Dataset(str(path), "r")
    except FileNotFoundError:
        raise CacheError(
            f"{path}: no such cache file; open_nat4() (or `nat4xr build AREA`) builds one"
        ) from None
    except CacheError:
        raise
    except Exception as exc:  # HDF5/netCDF raise assorted types for broken files
        raise CacheError(
            f"{path} is not a readable netCDF file ({exc}); delete it, or call "
            "open_nat4(..., rebuild=True)"
        ) from exc
    index = trailer.index
    try:
        if _identity(path) != trailer.identity:
            raise CacheError(f"{path} was replaced while it was opened; open it again")
        stamp = _stamp(nc, path)
        expected = str(nc.groups[INDEX_GROUP].getncattr("digest"))
        root = _root(path, nc)
        coords = _coords(root)
        attrs = {k: v for k, v in root.attrs.items() if k not in STAMPS}
        if digest(coords, attrs) != expected:
            raise CacheError(
                f"{path}: its coordinates or attributes do not match the digest written with "
                f"them: the file is damaged; {_REBUILD}"
            )
        meta = {name: (var.dims, dict(var.attrs)) for name, var in root.data_vars.items()}
        for name, (dims, _) in meta.items():
            ix = index.get(name)
            if ix is not None and (ix.dims != tuple(dims) or ix.shape != root[name].shape):
                raise CacheError(f"{path}: {name} does not match its chunk index; {_REBUILD}")
    except CacheError:
        nc.close()
        raise
    except Exception as exc:  # a damaged header or attribute surfaces here
        nc.close()
        raise CacheError(f"{path}: cannot read ({exc}); {_REBUILD}") from exc
    nc.close()
    missing = [name for name in ("stim", "neuron") if name not in coords]
    if missing or "response" not in meta:
        raise CacheError(f"{path}: no {', '.join(missing or ['response'])}; {_REBUILD}")
    files = ChunkFile(path, index, trailer.identity)
    all_dims = {d for var_dims, _ in meta.values() for d in var_dims}
    drop = {drop_variables} if isinstance(drop_variables, str) else set(drop_variables or ())
    source = CacheSource(
        path=str(path.resolve()),
        format=stamp["format"],
        stims=coords["stim"].values,
        neurons=coords["neuron"].values,
        axes={d: coords[d].values for d in coords if d not in ("stim", "neuron") and d in all_dims},
        file=files,
    )
    data = {}
    for name in ["response", *(n for n in meta if n != "response")]:
        if name not in index:
            raise CacheError(f"{path}: {name} has no chunk index; {_REBUILD}")
        dims, var_attrs = meta[name]
        var_attrs = {k: v for k, v in var_attrs.items() if k not in ("_FillValue", "coordinates")}
        array = CacheArray(source, index[name])
        encoding = {
            "preferred_chunks": dict(zip(dims, index[name].chunks)),
            "nat4xr_source": source,
        }
        lazy = indexing.LazilyIndexedArray(array)
        data[name] = xr.Variable(dims, lazy, var_attrs, encoding)
    ds = xr.Dataset(data, coords=_in_contract_order(coords), attrs=attrs)
    try:
        check_dataset(ds)
    except ValueError as exc:
        raise CacheError(f"{path}: {exc}; {_REBUILD}") from exc
    if drop:
        ds = ds.drop_vars([name for name in drop if name in ds.variables])
    # Mapped now, not at the first read: from here the Dataset reads the file it
    # checked even if the name is deleted or replaced, and its shared lock
    # tells `cache clear` that the file is in use.
    _ = files.bytes
    ds.set_close(files.close)
    ds.encoding = {"source": str(path), "nat4xr_cache": stamp}
    return ds


def _identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _stamp(nc: Any, path: Path) -> dict[str, Any]:
    attrs = set(nc.ncattrs())
    if "nat4xr_cache_format" not in attrs:
        raise CacheError(
            f"{path} is not a nat4xr cache file (no nat4xr_cache_format stamp), or its "
            "writing never finished; delete it or rebuild with open_nat4(..., rebuild=True)"
        )
    fmt = nc.getncattr("nat4xr_cache_format")
    schema = nc.getncattr("nat4xr_schema") if "nat4xr_schema" in attrs else None
    if int(fmt) != CACHE_FORMAT or schema is None or int(schema) != SCHEMA_VERSION:
        raise CacheError(
            f"{path} was written in cache format {fmt} / schema {schema}, this nat4xr reads "
            f"format {CACHE_FORMAT} / schema {SCHEMA_VERSION}; {_REBUILD}"
        )
    try:
        options = json.loads(nc.getncattr("nat4xr_cache_options"))
        key = str(nc.getncattr("nat4xr_cache_key"))
    except (ValueError, AttributeError, KeyError) as exc:
        raise CacheError(f"{path}: unreadable build options stamp ({exc}); {_REBUILD}") from exc
    return {"format": int(fmt), "key": key, "options": options}


def _in_contract_order(coords: dict[str, xr.Variable]) -> dict[str, xr.Variable]:
    first = [d for d in ("stim", "neuron", "repeat", "time", "freq") if d in coords]
    return {name: coords[name] for name in [*first, *(c for c in coords if c not in first)]}


def open_cache(path: str | os.PathLike, chunks: Any = "auto") -> xr.Dataset:
    """Open a cache file written by :func:`~nat4xr.cachefile.write_cache`.

    Coordinates are read into memory (they are small) and checked against the
    digest written with them; data variables stay in the file.

    Parameters
    ----------
    path : path-like
        Cache file.
    chunks : 'auto', int, dict or None
        ``'auto'``: dask arrays with stim chunks of ~64 MB of ``response`` (8
        to 32 stims); an int: that many stims per dask chunk; a dict: chunk
        sizes per dimension (dimensions not named stay whole); ``None``: no
        dask: lazily indexed arrays that read only what is selected, loaded
        by ``.load()`` or ``.values``.

    Returns
    -------
    xarray.Dataset
        ``ds.encoding`` holds ``source`` and ``nat4xr_cache`` (format, key and
        build options). ``close()`` (or a ``with`` block) unmaps the file.

    Raises
    ------
    CacheError
        The file is missing, unreadable, truncated, damaged, not a nat4xr
        cache or written by an incompatible version.

    Examples
    --------
    >>> import tempfile, nat4xr
    >>> from nat4xr.cachefile import write_cache
    >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=2, n_neurons=4)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with open_cache(write_cache(ds, Path(tmp) / "demo.nc")) as lazy:
    ...         print(type(lazy["response"].data).__name__, lazy["response"].chunks[0])
    Array (5,)
    """
    ds = xr.open_dataset(path, engine="nat4", chunks=None, cache=False)
    if chunks is None:
        return ds
    try:
        spec = chunk_spec(ds, chunks)
        return chunked(ds, spec, auto=isinstance(chunks, str) and chunks == "auto")
    except BaseException:
        ds.close()
        raise


def chunked(ds: xr.Dataset, spec: Mapping[str, int], auto: bool = False) -> xr.Dataset:
    """``ds`` with its data variables as dask arrays of ``spec`` (coordinates untouched).

    ``auto``: nat4xr chose ``spec`` (``chunks="auto"``), so selections may be
    chunked anew by their size (:func:`selected`).
    """
    from dask.base import tokenize

    source = ds.encoding.get("source", "")
    handle = ds["response"].encoding["nat4xr_source"]
    out = ds.copy(deep=False)
    for name in list(ds.data_vars):
        var = ds.variables[name]
        dims = {d: spec.get(d, -1) for d in var.dims}
        token = tokenize(source, handle.identity, name, sorted(dims.items()))
        out[name] = var.chunk(dims, from_array_kwargs={"name": f"nat4xr-{name}-{token}"})
        # the one place that knows these values are the whole file's, in its order
        whole = {d: np.arange(n) for d, n in var.sizes.items()}
        rebuild = _opened_again(handle, str(name), var.dims, dims, f"nat4xr-{name}-{token}")
        provenance.record(out.variables[name], handle, str(name), whole, rebuild, auto=auto)
    out.set_close(ds.close)
    return out


def selected(
    handle: CacheSource,
    name: str,
    dims: tuple[str, ...],
    positions: Mapping[str, np.ndarray],
    chunks: Mapping[str, tuple[int, ...]],
) -> Any:
    """A dask array of the file's ``name`` at ``positions``, each task reading only its entries.

    The array is the file's variable under xarray's lazy indexing, indexed
    at ``positions`` (file positions along each of ``dims``, the file's
    order) and chunked ``chunks``: a task asks the engine for its block
    alone, and :class:`~nat4xr.cachefile.arrays.CacheArray` reads only the
    stored chunks it touches and copies out only the entries kept, into an
    array of the block's size. Selecting from a dask array of the whole file
    would compute every stored chunk a task touches, all of its cells and
    repeats, then copy the kept ones.

    The dask name is a token of the file (path and identity), the variable,
    the positions and the chunks: the same selection gets the same name, and
    dask treats two such arrays as one.

    Examples
    --------
    >>> import tempfile, nat4xr
    >>> from nat4xr.cachefile import write_cache
    >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=2, n_neurons=4)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with open_cache(write_cache(ds, Path(tmp) / "demo.nc")) as lazy:
    ...         handle = lazy["response"].encoding["nat4xr_source"]
    ...         pos = {"stim": np.array([4, 1]), "neuron": np.array([0, 2]),
    ...                "repeat": np.arange(20), "time": np.arange(ds.sizes["time"])}
    ...         chunks = {"stim": (1, 1), "neuron": (2,), "repeat": (20,),
    ...                   "time": (ds.sizes["time"],)}
    ...         part = selected(handle, "response", lazy["response"].dims, pos, chunks)
    ...         same = np.array_equal(part.compute(), ds.response.values[[4, 1]][:, [0, 2]],
    ...                               equal_nan=True)
    >>> part.chunks[0], same
    ((1, 1), True)
    """
    from dask.base import tokenize

    keys = [np.asarray(positions[d], dtype=np.int64) for d in dims]
    sizes = [tuple(int(n) for n in chunks[d]) for d in dims]
    token = tokenize(handle.path, handle.identity, name, tuple(dims), keys, sizes)
    dask_name = f"nat4xr-{name}-selected-{token}"
    return _selection(
        handle, name, tuple(dims), dict(zip(dims, keys)), dict(zip(dims, sizes)), dask_name
    )


def _selection(
    handle: CacheSource,
    name: str,
    dims: tuple[str, ...],
    positions: Mapping[str, np.ndarray],
    chunks: Mapping[str, tuple[int, ...]],
    dask_name: str,
) -> Any:
    var = file_selection(handle, name, dims, positions)
    return var.chunk(dict(chunks), from_array_kwargs={"name": dask_name}).data


def file_selection(
    handle: CacheSource, name: str, dims: tuple[str, ...], positions: Mapping[str, np.ndarray]
) -> xr.Variable:
    """The file's ``name`` at ``positions`` (per dim), lazily indexed: read on access.

    ``.load()`` reads it straight into one array of the selection's size
    (what ``chunks=None`` gives), touching only the stored chunks it needs.
    """
    lazy = indexing.LazilyIndexedArray(CacheArray(handle, handle.file.index[name]))
    var = xr.Variable(dims, lazy)
    keys = {d: _as_key(np.asarray(positions[d]), n) for d, n in var.sizes.items()}
    return var.isel({d: k for d, k in keys.items() if k is not None})


def selected_again(
    handle: CacheSource,
    name: str,
    dims: tuple[str, ...],
    positions: Mapping[str, np.ndarray],
    chunks: Mapping[str, tuple[int, ...]],
    dask_name: str,
) -> Callable[[], Any]:
    """A way to make the array :func:`selected` made again (see :func:`_opened_again`)."""
    ref = weakref.ref(handle)

    def again() -> Any:
        source = ref()
        if source is None or name not in source.file.index:
            return None
        return _selection(source, name, dims, positions, chunks, dask_name)

    return again


def _as_key(positions: np.ndarray, n: int) -> slice | np.ndarray | None:
    """None for all ``n`` in order, a slice for a run in steps of one, else the positions."""
    if len(positions) == n and np.array_equal(positions, np.arange(n)):
        return None
    if len(positions) and np.array_equal(
        positions, np.arange(positions[0], positions[0] + len(positions))
    ):
        return slice(int(positions[0]), int(positions[0]) + len(positions))
    return positions


def _opened_again(
    handle: CacheSource, name: str, var_dims: tuple, dims: Mapping[str, int], dask_name: str
) -> Callable[[], Any]:
    """A way to make the array :func:`chunked` made again, of the same dask name.

    Plain selections of an opened array (``open_cache(p).isel(...)``, the
    opened Dataset dropped at once) are recognised by rebuilding them from the
    opened array (:mod:`nat4xr.provenance`). Keeping that array alive would
    keep its file open, and locked against ``cache clear``, for good; this
    holds the file's handle weakly instead (every array read from the file
    holds it, so it lives exactly as long as some Dataset of the file does).
    """
    ref = weakref.ref(handle)

    def again() -> Any:
        source = ref()
        if source is None or name not in source.file.index:
            return None
        lazy = indexing.LazilyIndexedArray(CacheArray(source, source.file.index[name]))
        var = xr.Variable(var_dims, lazy)
        return var.chunk(dict(dims), from_array_kwargs={"name": dask_name}).data

    return again


def chunk_spec(ds: xr.Dataset, chunks: Any) -> dict[str, int]:
    """Dask chunk sizes per dimension for ``chunks`` (see :func:`open_cache`)."""
    if isinstance(chunks, Mapping):
        unknown = set(chunks) - set(ds.dims)
        if unknown:
            raise ValueError(
                f"chunks names unknown dimension(s) {sorted(unknown)}; "
                f"the dimensions are {list(ds.dims)}"
            )
        return {d: int(n) for d, n in chunks.items()}
    n_stim = max(1, ds.sizes["stim"])
    if chunks == "auto":
        per_stim = 4 * ds.sizes["neuron"] * ds.sizes["repeat"] * ds.sizes["time"]
        stims = int(np.clip(_CHUNK_BYTES // max(1, per_stim), 8, 32))
        return {"stim": min(stims, n_stim)}
    if isinstance(chunks, (int, np.integer)) and not isinstance(chunks, bool) and chunks > 0:
        return {"stim": min(int(chunks), n_stim)}
    raise ValueError(f"chunks must be 'auto', a positive int, a dict or None, got {chunks!r}")


#: The first bytes of every HDF5 file whose superblock is at offset 0 (every cache file).
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def identify(path: str | os.PathLike) -> dict[str, Any] | None:
    """The stamp of a nat4xr cache file of any format, or None for any other file.

    Cheap and safe on any path: what is not a regular file (a symbolic link
    is not), or carries
    neither nat4xr's trailer nor (caches of formats before 5) nat4xr's stamp
    attributes, is not a cache (None, never an error). A file of this format
    is recognised by the magic that ends its trailer and its stamp is read
    from the checked trailer (:func:`nat4xr.cachefile.read_stamp`); one whose
    trailer is damaged is still nat4xr's own (``damaged`` True, empty
    options). Older caches are recognised by the root attributes HDF5 keeps
    (read through h5py without HDF5's file locking). Nothing else is read:
    :func:`open_store` checks the rest.

    Returns
    -------
    dict or None
        ``format`` (int), ``key`` (str), ``options`` (dict, empty when
        unreadable) and ``damaged`` (bool).

    Examples
    --------
    >>> import tempfile, nat4xr
    >>> from nat4xr.cachefile import write_cache
    >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=2, n_time=3)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     stamp = identify(write_cache(ds, Path(tmp) / "c.nc", key="k", options={"a": 1}))
    ...     other = Path(tmp) / "notes.nc"
    ...     _ = other.write_text("not a cache")
    ...     print(stamp["key"], stamp["options"], stamp["damaged"], identify(other))
    k {'a': 1} False None
    """
    import stat

    from .trailer import is_cache_file
    from .trailer import read_stamp as read_checked_stamp

    try:  # a link is the user's, whatever it points to
        if not stat.S_ISREG(os.stat(path, follow_symlinks=False).st_mode):
            return None
    except OSError:
        return None
    if is_cache_file(path):
        try:
            return {**read_checked_stamp(path), "damaged": False}
        except (CacheError, OSError, ValueError, RecursionError):  # any damage: still ours
            return {"format": CACHE_FORMAT, "key": "", "options": {}, "damaged": True}
    return _legacy_stamp(path)


def _legacy_stamp(path: str | os.PathLike) -> dict[str, Any] | None:
    """The stamp attributes of a cache written before the trailer (format < 5), else None."""
    import stat

    try:
        st = os.stat(path, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_size < len(_HDF5_SIGNATURE):
            return None
        with open(path, "rb") as fh:
            if fh.read(len(_HDF5_SIGNATURE)) != _HDF5_SIGNATURE:
                return None
        import h5py

        with h5py.File(path, "r", locking=False) as f:
            attrs = f.attrs
            if "nat4xr_cache_format" not in attrs or "nat4xr_cache_key" not in attrs:
                return None
            fmt = int(np.asarray(attrs["nat4xr_cache_format"]).ravel()[0])
            key = _text(attrs["nat4xr_cache_key"])
            try:
                options = json.loads(_text(attrs.get("nat4xr_cache_options", "{}")))
            except ValueError:
                options = {}
    except Exception:  # any unreadable or foreign file: not a cache
        return None
    return {
        "format": fmt,
        "key": key,
        "options": options if isinstance(options, dict) else {},
        "damaged": fmt >= CACHE_FORMAT,  # this format without its trailer: cut or edited
    }


def _text(value: Any) -> str:
    value = np.asarray(value).ravel()[0] if np.ndim(value) else value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
