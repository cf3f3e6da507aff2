"""The netCDF cache: build a release once, then open it lazily in milliseconds.

:func:`open_nat4` builds a Dataset from the release files the first time
(:func:`nat4xr.build.build_dataset`), writes it to a netCDF4 file in
:func:`cache_dir`, and from then on opens that file with dask chunks along
``stim``. The file name carries a hash of everything the content depends on:
the source files' identity (path, size, modification time), the build
options, the nat4xr version and the schema and cache-format versions. A
changed input therefore never meets a stale cache; it gets a new file.

Layout of a cache file
    Coordinates, ``spectrogram`` (and ``waveform``) are written by xarray with
    explicit encodings. ``response`` is written with netCDF4 directly, in
    chunks of one (stim, repeat) pair ``(1, neuron, 1, time)``, and only the
    recorded repeats of each sound are written. HDF5 allocates no chunk that
    is never written, so the NaN padding of estimation sounds (1 recorded
    repeat out of 20) costs no disk space and no read time: reading it yields
    the ``_FillValue`` (NaN).

Compression
    Sounds with one recorded repeat (estimation sounds) are compressed: zstd
    level 1 with byte shuffle when this netCDF4 build has the zstd filter,
    else zlib level 1 with shuffle. Measured on a (64, 849, 20, 150)
    spike-count array with 30 % missing cells: zstd-1 gave the smallest file
    (4.0 MB vs 6.0 MB for zlib-1, 11.1 MB for blosc_lz4) and read one
    20-repeat sound in 20 ms (zlib-1: 42 ms, blosc_lz4: 17 ms, uncompressed:
    11 ms but 71 MB).

    Sounds with more than one recorded repeat (the validation sounds) are
    read whole and often: every evaluation pass, PSTHs, noise ceilings.
    Their chunks are written unfiltered (HDF5's per-chunk filter mask marks
    them), so reading them costs no decompression and a loader can copy
    them straight from a memory map of the file
    (:class:`nat4xr.rawchunks.RawChunks`). This costs disk space: 18 sounds
    x 20 repeats x 849 cells x 150 bins, ~180 MB for A1. Every netCDF/HDF5
    reader sees the same values either way.

Safety
    Every write goes to a temporary file in the cache folder, every handle is
    closed, then ``os.replace`` gives it its final name, all under a
    ``filelock.FileLock``: a second process building the same cache waits and
    then opens what the first wrote, and a writer killed half-way leaves only
    a ``.tmp`` file that nothing trusts. A cache file that cannot be read or
    does not carry this version's stamp raises :class:`~nat4xr.errors.CacheError`,
    and :func:`open_nat4` rebuilds it with a :class:`~nat4xr.errors.Nat4Warning`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import secrets
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import filelock
import netCDF4
import numpy as np
import xarray as xr

from ._version import __version__
from .errors import CacheError, Nat4Warning
from .fetch import check_area, data_dir, fetch
from .files import atomic_path, remove_stale
from .schema import SCHEMA_VERSION, check_dataset

__all__ = [
    "CACHE_FORMAT",
    "CacheEntry",
    "cache_clear",
    "cache_dir",
    "cache_key",
    "cache_list",
    "open_cache",
    "open_demo",
    "open_nat4",
    "write_cache",
]

CACHE_FORMAT = 3
"""Version of the cache file layout; bumped when the way files are written changes."""

#: Global attributes stamped on every cache file; :func:`open_cache` moves them
#: from ``attrs`` to ``ds.encoding["nat4xr_cache"]`` so a cached Dataset has
#: exactly the attributes of the Dataset that was written.
_STAMPS = ("nat4xr_cache_format", "nat4xr_cache_key", "nat4xr_cache_options")
#: Bytes of ``response`` computed at once while writing.
_BLOCK_BYTES = 64 << 20
#: Bytes of ``response`` per dask chunk that ``chunks='auto'`` aims at.
_CHUNK_BYTES = 64 << 20
LOCK_TIMEOUT = 3 * 3600.0


class CacheEntry(NamedTuple):
    """One cache file, as listed by :func:`cache_list`."""

    path: Path
    area: str
    subset: str
    key: str
    size: int
    modified: float


def cache_dir() -> Path:
    """Folder of the netCDF cache files: ``NAT4XR_CACHE_DIR`` or ``<data_dir>/cache``.

    Examples
    --------
    >>> cache_dir().name == "cache" or "NAT4XR_CACHE_DIR" in os.environ
    True
    """
    env = os.environ.get("NAT4XR_CACHE_DIR")
    return Path(env).expanduser() if env else data_dir() / "cache"


def cache_key(files: Iterable[str | os.PathLike], options: Mapping[str, Any]) -> str:
    """16-hex-digit hash naming a cache's content.

    Made from each source file's resolved path, size and modification time
    (every file inside a folder), the build ``options``, the nat4xr version,
    the schema version and :data:`CACHE_FORMAT`.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     src = Path(tmp) / "a.tgz"
    ...     _ = src.write_bytes(b"x")
    ...     keys = [cache_key([src], {"subset": s}) for s in ("all", "all", "val")]
    >>> len(keys[0]), keys[0] == keys[1], keys[0] == keys[2]
    (16, True, False)
    """
    identity = []
    for entry in files:
        entry = Path(entry)
        paths = sorted(p for p in entry.rglob("*") if p.is_file()) if entry.is_dir() else [entry]
        for p in paths:
            st = p.stat()
            identity.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    payload = {
        "files": identity,
        "options": dict(options),
        "nat4xr_version": __version__,
        "schema": SCHEMA_VERSION,
        "cache_format": CACHE_FORMAT,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- writing


def write_cache(
    ds: xr.Dataset,
    path: str | os.PathLike,
    *,
    key: str = "",
    options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> Path:
    """Write ``ds`` to the netCDF cache file ``path``, atomically and under a lock.

    ``response`` may be a dask array; it is computed block by block (at most
    ~64 MB at a time) and only each sound's recorded repeats
    (``n_repeats``) are written, so the padding never exists in memory or on
    disk. Values in repeats at or past ``n_repeats`` are not stored: they read
    back as NaN, as the contract says they are.

    Parameters
    ----------
    ds : xarray.Dataset
        A Dataset of the nat4xr contract.
    path : path-like
        Target file; its folder is created if needed.
    key : str
        Cache key stamped in the file (see :func:`cache_key`).
    options : mapping, optional
        Build options stamped in the file (as JSON).
    progress : bool
        Show a tqdm bar while ``response`` is written.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import tempfile, nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=2, n_neurons=4)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     p = write_cache(ds, Path(tmp) / "demo.nc")
    ...     xr.testing.assert_identical(open_cache(p).load(), ds)
    """
    path = Path(path)
    check_dataset(ds)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        _write_unlocked(ds, path, key, options or {}, progress)
    return path


def _lock(path: Path) -> filelock.FileLock:
    return filelock.FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the cache file's lock; a folder that refuses the lock file is a CacheError."""
    lock = _lock(path)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise
    except OSError as exc:  # read-only or full folder
        raise CacheError(
            f"cannot create the lock file {lock.lock_file} ({exc}); check free space and "
            "permissions, set NAT4XR_CACHE_DIR to a writable folder, or pass cache=False"
        ) from exc
    try:
        yield
    finally:
        lock.release()


def _write_unlocked(
    ds: xr.Dataset, path: Path, key: str, options: Mapping[str, Any], progress: bool
) -> None:
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)  # left by a writer that died; we hold the lock
    # Not mkstemp: its 0600 mode would stick to the cache file; netCDF creates
    # the file with the usual umask-derived permissions.
    tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        rest = ds.drop_vars("response").drop_encoding()
        rest.attrs = {k: v for k, v in rest.attrs.items() if k not in _STAMPS}
        encoding = {name: _encoding(var) for name, var in rest.variables.items()}
        rest.to_netcdf(tmp, mode="w", format="NETCDF4", engine="netcdf4", encoding=encoding)
        n_blocks = len(_blocks(_recorded_repeats(ds), _repeat_bytes(ds)))
        bar = _progress(n_blocks, progress, "write cache")
        try:
            with netCDF4.Dataset(tmp, "a") as nc:
                repeated = _write_response(nc, ds, bar)
            if repeated:
                _write_unfiltered(tmp, ds, repeated, bar)
        finally:
            bar.close()
        with netCDF4.Dataset(tmp, "a") as nc:
            # The stamp goes last: a file without it was never finished.
            nc.setncattr("nat4xr_cache_options", json.dumps(dict(options), sort_keys=True))
            nc.setncattr("nat4xr_cache_key", key)
            nc.setncattr("nat4xr_cache_format", np.int64(CACHE_FORMAT))
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        # netCDF reports a full disk as RuntimeError("NetCDF: HDF error")
        netcdf = isinstance(exc, RuntimeError) and str(exc).startswith("NetCDF:")
        if (isinstance(exc, OSError) or netcdf) and not isinstance(exc, CacheError):
            raise CacheError(
                f"cannot write the cache file {path}: {exc}; check free space and permissions "
                "(NAT4XR_CACHE_DIR moves the cache), and close Datasets opened from an older "
                "copy of the file"
            ) from exc
        raise


def _encoding(var: xr.Variable) -> dict[str, Any]:
    """Explicit netCDF encoding: compress the big float arrays, store the rest plainly.

    Strings are stored as fixed-width UTF-8 characters, not HDF5 variable-length
    strings: netCDF-C/HDF5 can crash (``H5T__conv_vlen``) when a file with
    variable-length strings is open more than once in a process, which a
    loader reopening the cache in every worker does routinely.
    """
    if var.dtype.kind == "U":
        return {"dtype": "S1"}
    if var.dtype.kind == "f" and var.ndim >= 2:
        chunks = tuple(1 if d == "stim" else max(1, n) for d, n in zip(var.dims, var.shape))
        return {"zlib": True, "complevel": 1, "shuffle": True, "chunksizes": chunks}
    return {}


@functools.lru_cache(maxsize=1)
def _compression() -> dict[str, Any]:
    """zstd-1 + shuffle when the filter plugin loads in this build, else zlib-1 + shuffle."""
    zstd = {"compression": "zstd", "complevel": 1, "shuffle": True}
    if getattr(netCDF4, "__has_zstandard_support__", False):
        try:
            with netCDF4.Dataset("probe.nc", "w", diskless=True, persist=False) as nc:
                nc.createDimension("x", 4)
                nc.createVariable("v", "f4", ("x",), chunksizes=(4,), **zstd)[:] = np.ones(4)
            return zstd
        except Exception:  # plugin missing at run time: any failure means "not usable"
            pass
    return {"compression": "zlib", "complevel": 1, "shuffle": True}


def _recorded_repeats(ds: xr.Dataset) -> np.ndarray:
    n_rep = ds.sizes["repeat"]
    if "n_repeats" not in ds.coords:
        return np.full(ds.sizes["stim"], n_rep, dtype=np.int64)
    return np.clip(np.asarray(ds["n_repeats"].values, dtype=np.int64), 0, n_rep)


def _repeat_bytes(ds: xr.Dataset) -> int:
    return ds.sizes["neuron"] * ds.sizes["time"] * 4


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


def _write_response(nc: netCDF4.Dataset, ds: xr.Dataset, bar: Any) -> list[tuple[int, int, int]]:
    """Define ``response`` and write the sounds with one recorded repeat, compressed.

    Returns the blocks of sounds with more than one repeat, which
    :func:`_write_unfiltered` writes once ``nc`` is closed.
    """
    resp = ds["response"]
    for dim, size in zip(resp.dims, resp.shape):
        if dim not in nc.dimensions:
            nc.createDimension(dim, size)
    _, n_neuron, _, n_time = resp.shape
    var = nc.createVariable(
        "response",
        "f4",
        resp.dims,
        chunksizes=(1, max(1, n_neuron), 1, max(1, n_time)),
        fill_value=np.float32(np.nan),
        **_compression(),
    )
    attrs = {k: v for k, v in resp.attrs.items() if k not in ("_FillValue", "coordinates")}
    var.setncatts(attrs)
    # Mirror what xarray writes, so the stim/neuron coordinates attach to response.
    coords = [c for c in ds.coords if c not in ds.dims and set(ds[c].dims) <= set(resp.dims)]
    if coords:
        var.setncattr("coordinates", " ".join(coords))
    var.set_auto_maskandscale(False)
    repeated = []
    for i0, i1, k in _blocks(_recorded_repeats(ds), _repeat_bytes(ds)):
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

    The bytes of each chunk are then its values in C order (in the
    variable's byte order), which
    :class:`nat4xr.rawchunks.RawChunks` copies straight from a memory map;
    netCDF and HDF5 readers see ordinary values (the mask tells HDF5 to skip
    decompression).
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


def _computed(block: Any) -> np.ndarray:
    if hasattr(block, "compute"):
        block = block.compute()
    return np.asarray(block, dtype=np.float32)


def _progress(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar, or an object whose ``update`` and ``close`` do nothing."""
    if enabled:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="block")
    return _NoBar()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- reading


def open_cache(path: str | os.PathLike, chunks: Any = "auto") -> xr.Dataset:
    """Open a cache file written by :func:`write_cache`.

    Coordinates are read into memory (they are small); data variables are
    dask arrays chunked along ``stim`` and nothing is computed.

    Parameters
    ----------
    path : path-like
        Cache file.
    chunks : 'auto', int, dict or None
        ``'auto'``: stim chunks of ~64 MB of ``response`` (8 to 32 stims);
        an int: that many stims per chunk; a dict: chunk sizes per dimension
        (dimensions not named stay whole); ``None``: load everything into
        memory and close the file.

    Returns
    -------
    xarray.Dataset
        ``ds.encoding`` holds ``source`` and ``nat4xr_cache`` (format, key and
        build options).

    Raises
    ------
    CacheError
        The file is missing, unreadable, truncated, not a nat4xr cache or
        written by an incompatible version.

    Notes
    -----
    xarray keeps file handles in a cache keyed per ``open_dataset`` call, and
    a handle evicted from it is reopened by path. A cache file is only ever
    replaced by one made from the same inputs (its name is their hash), or
    when it could not be read at all, so a reopened handle sees the same data.

    Examples
    --------
    >>> import tempfile, nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=2, n_neurons=4)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     lazy = open_cache(write_cache(ds, Path(tmp) / "demo.nc"))
    ...     print(type(lazy["response"].data).__name__, lazy["response"].chunks[0])
    ...     lazy.close()
    Array (5,)
    """
    path = Path(path)
    if not path.is_file():
        raise CacheError(
            f"{path}: no such cache file; open_nat4() (or `nat4xr build AREA`) builds one"
        )
    try:
        ds = xr.open_dataset(path, engine="netcdf4", chunks=None, cache=False)
    except Exception as exc:  # HDF5/netCDF raise assorted types for broken files
        raise CacheError(
            f"{path} is not a readable netCDF file ({exc}); delete it, or call "
            "open_nat4(..., rebuild=True)"
        ) from exc
    try:
        stamp = _validate(ds, path)
        return _finish(ds, path, stamp, chunks)
    except BaseException:
        ds.close()
        raise


def _validate(ds: xr.Dataset, path: Path) -> dict[str, Any]:
    fmt = ds.attrs.get("nat4xr_cache_format")
    if fmt is None:
        raise CacheError(
            f"{path} is not a nat4xr cache file (no nat4xr_cache_format stamp), or its "
            "writing never finished; delete it or rebuild with open_nat4(..., rebuild=True)"
        )
    if int(fmt) != CACHE_FORMAT or int(ds.attrs.get("nat4xr_schema", -1)) != SCHEMA_VERSION:
        raise CacheError(
            f"{path} was written in cache format {fmt} / schema "
            f"{ds.attrs.get('nat4xr_schema')}, this nat4xr reads format {CACHE_FORMAT} / "
            f"schema {SCHEMA_VERSION}; rebuild it with open_nat4(..., rebuild=True)"
        )
    try:
        check_dataset(ds)
    except ValueError as exc:
        raise CacheError(f"{path}: {exc}; rebuild it with open_nat4(..., rebuild=True)") from exc
    try:
        options = json.loads(ds.attrs.get("nat4xr_cache_options", "{}"))
    except ValueError as exc:
        raise CacheError(f"{path}: unreadable build options stamp ({exc})") from exc
    return {
        "format": int(fmt),
        "key": str(ds.attrs.get("nat4xr_cache_key", "")),
        "options": options,
    }


def _finish(ds: xr.Dataset, path: Path, stamp: dict[str, Any], chunks: Any) -> xr.Dataset:
    for name in _STAMPS:
        ds.attrs.pop(name, None)
    spec = _chunk_spec(ds, chunks) if chunks is not None else {}
    try:
        for name in ds.coords:
            ds[name].variable.load()  # from the file, not through dask
        # fixed-width characters decode to object arrays: back to the contract's <U
        text = [name for name in ds.coords if ds[name].dtype == object]
        if text:
            ds = ds.assign_coords({name: ds[name].astype(str) for name in text})
        if chunks is None:
            ds = ds.load()
            ds.close()
        else:
            spec = _chunk_spec(ds, chunks)
            token = f"{path.resolve()}-{path.stat().st_mtime_ns}-{spec}"
            for name in list(ds.data_vars):
                var = ds[name].variable
                dims = {d: spec.get(d, -1) for d in var.dims}
                name_prefix = hashlib.sha1(f"{token}-{name}".encode()).hexdigest()[:16]
                ds[name] = var.chunk(
                    dims, from_array_kwargs={"name": f"nat4xr-{name}-{name_prefix}"}
                )
    except CacheError:
        raise
    except Exception as exc:  # a damaged coordinate or filter surfaces here
        raise CacheError(f"{path}: cannot read ({exc}); rebuild it with rebuild=True") from exc
    for var in ds.variables.values():
        var.encoding = {}
    ds = _in_contract_order(ds)
    ds.encoding = {"source": str(path), "nat4xr_cache": stamp}
    return ds


def _in_contract_order(ds: xr.Dataset) -> xr.Dataset:
    """Same content, with dims and variables in the order a build produces them."""
    data = ["response", *(v for v in ds.data_vars if v != "response")]
    first = [d for d in ("stim", "neuron", "repeat", "time", "freq") if d in ds.coords]
    coords = [*first, *(c for c in ds.coords if c not in first)]
    out = xr.Dataset(
        {v: ds[v].variable for v in data},
        coords={c: ds[c].variable for c in coords},
        attrs=ds.attrs,
    )
    out.set_close(ds.close)
    return out


def _chunk_spec(ds: xr.Dataset, chunks: Any) -> dict[str, int]:
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


# ----------------------------------------------------------------------------- open_nat4


def open_nat4(
    area: str,
    subset: str = "all",
    path: str | os.PathLike | None = None,
    download: bool = False,
    normalize: str | None = None,
    smooth_ms: float | None = None,
    chunks: Any = "auto",
    cache: bool = True,
    rebuild: bool = False,
    waveform: bool = False,
    audio_fs: int = 44100,
    progress: bool | None = None,
) -> xr.Dataset:
    """Open one area of NAT4 as a lazy Dataset, building its cache on first use.

    Parameters
    ----------
    area : {'A1', 'PEG'}
        Recording area.
    subset : {'all', 'est', 'val'}
        Which sounds.
    path : path-like, optional
        Release folder; :func:`nat4xr.fetch.data_dir` when omitted.
    download : bool
        Fetch the release files first (:func:`nat4xr.fetch.fetch`).
    normalize : {None, 'nems'}
        Scaling of the build (see :func:`nat4xr.build.build_dataset`).
    smooth_ms : float, optional
        Smoothing of the build.
    chunks : 'auto', int, dict or None
        Dask chunks of the result (see :func:`open_cache`); ``None`` loads
        it into memory.
    cache : bool
        Write (and reuse) the netCDF cache. ``False`` returns the build
        result without writing anything.
    rebuild : bool
        Build again and replace the cache file.
    waveform : bool
        Add the ``waveform`` variable (needs ``wav/``; fetched with
        ``download=True``).
    audio_fs : int
        Sampling rate of ``waveform``.
    progress : bool, optional
        Progress bars; by default shown when stderr is a terminal.

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    MissingFileError
        A release file is missing (``download=True`` fetches it).

    Examples
    --------
    >>> ds = open_nat4("A1", path="/data/NAT4")  # doctest: +SKIP

    Without writing a cache, on a small synthetic release:

    >>> import tempfile, warnings, nat4xr
    >>> with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")  # the synthetic release's deliberate traps
    ...     rel = nat4xr.synthetic.write_release(tmp, "A1", scale="tiny")
    ...     ds = open_nat4("A1", path=rel.root, cache=False)
    >>> ds["response"].dims, ds.sizes["stim"]
    (('stim', 'neuron', 'repeat', 'time'), 8)
    """
    from . import build, release

    check_area(area)
    release.check_subset(subset)
    root = Path(path).expanduser() if path is not None else data_dir()
    show = sys.stderr.isatty() if progress is None else bool(progress)
    if download:
        fetch(area, root, wav=waveform, progress=show)
    options = {
        "area": area,
        "subset": subset,
        "normalize": normalize,
        "smooth_ms": smooth_ms,
        "waveform": bool(waveform),
        "audio_fs": int(audio_fs) if waveform else None,
    }
    if waveform:  # the two resamplers give different samples: never share a cache file
        from .waveform import default_resampler

        options["resampler"] = default_resampler()

    def _build() -> xr.Dataset:
        return build.build_dataset(
            root,
            area,
            subset=subset,
            normalize=normalize,
            smooth_ms=smooth_ms,
            waveform=waveform,
            audio_fs=audio_fs,
            progress=show,
        )

    if not cache:
        ds = _build()
        if chunks is None:
            return ds.load()
        return ds if chunks == "auto" else ds.chunk(_chunk_spec(ds, chunks))

    key = cache_key(release.source_files(root, area, subset, waveform), options)
    target = cache_dir() / f"{area}-{subset}-{key}.nc"
    failed = None  # identity of a file that could not be opened
    if not rebuild and target.exists():
        failed = _identity(target)
        try:
            return open_cache(target, chunks)
        except CacheError as exc:
            _warn_rebuild(exc)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(
            f"cannot create the cache folder {target.parent}: {exc}; set NAT4XR_CACHE_DIR "
            "to a writable folder, or pass cache=False"
        ) from exc
    before = _identity(target)
    with _locked(target):
        # Another process may have (re)written the file while we waited for the lock.
        now = _identity(target)
        if now is not None and now != failed and (not rebuild or now != before):
            try:
                return open_cache(target, chunks)
            except CacheError as exc:
                _warn_rebuild(exc)
        _write_unlocked(_build(), target, key, options, show)
    return open_cache(target, chunks)


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _warn_rebuild(exc: CacheError) -> None:
    warnings.warn(f"{exc}; rebuilding the cache", Nat4Warning, stacklevel=3)


def open_demo(chunks: Any = "auto") -> xr.Dataset:
    """A small synthetic NAT4 release, built and cached once, opened like the real one.

    Writes the release (``nat4xr.synthetic.write_release``, ``scale='small'``)
    under ``<data_dir>/demo-<version>`` the first time, then returns
    :func:`open_nat4` on it. Works offline.

    Examples
    --------
    >>> demo = open_demo()  # doctest: +SKIP
    >>> demo.sizes["neuron"]  # doctest: +SKIP
    40
    """
    from . import synthetic

    base = data_dir()
    root = base / f"demo-{__version__}"
    marker = root / ".complete"
    if not marker.is_file():
        base.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(str(base / ".demo.lock"), timeout=LOCK_TIMEOUT):
            if not marker.is_file():
                remove_stale(root)  # a killed writer's
                with atomic_path(root, directory=True) as tmp:
                    synthetic.write_release(tmp, area="A1", scale="small", seed=0)
                    (tmp / ".complete").write_text(__version__)
    return open_nat4("A1", path=root, chunks=chunks, progress=False)


# ----------------------------------------------------------------------------- housekeeping


def cache_list() -> list[CacheEntry]:
    """The cache files in :func:`cache_dir`, oldest first.

    Examples
    --------
    >>> all(isinstance(e, CacheEntry) for e in cache_list())
    True
    """
    folder = cache_dir()
    if not folder.is_dir():
        return []
    entries = []
    for p in folder.glob("*.nc"):
        parts = p.stem.split("-")
        area, subset, key = parts if len(parts) == 3 else ("", "", "")
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        entries.append(CacheEntry(p, area, subset, key, st.st_size, st.st_mtime))
    return sorted(entries, key=lambda e: e.modified)


def cache_clear(area: str | None = None) -> list[Path]:
    """Delete cache files (all, or one area's) and leftovers of interrupted writes.

    A file that another process is writing right now is skipped.

    Returns
    -------
    list of pathlib.Path
        The files deleted.

    Examples
    --------
    >>> isinstance(cache_clear(area="PEG"), list)  # doctest: +SKIP
    True
    """
    removed = []
    for entry in cache_list():
        if area is not None and entry.area != area:
            continue
        try:
            with filelock.FileLock(f"{entry.path}.lock", timeout=0):
                entry.path.unlink(missing_ok=True)
                removed.append(entry.path)
        except filelock.Timeout:
            continue
    folder = cache_dir()
    if folder.is_dir():
        for tmp in folder.glob(".*.nc.*.tmp"):
            if area is not None and not tmp.name.startswith(f".{area}-"):
                continue
            try:
                with filelock.FileLock(
                    str(folder / tmp.name[1:].split(".nc.")[0]) + ".nc.lock", timeout=0
                ):
                    tmp.unlink(missing_ok=True)
                    removed.append(tmp)
            except filelock.Timeout:
                continue
    return removed
