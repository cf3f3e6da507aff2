"""Read the chunks of a cache file straight from a memory map, checked by CRC-32.

:class:`ChunkIndex` is one data variable's chunk index from the file's
verified trailer (see :mod:`nat4xr.cachefile.trailer`); :class:`ChunkFile` is
one process's read-only memory map of a cache file. :meth:`ChunkFile.chunk`
returns the values of one chunk: unfiltered chunks are their own bytes,
compressed ones are inflated (ISA-L when installed, else zlib) and, for
variables stored with HDF5's byte shuffle, un-shuffled. Every chunk's stored
bytes are checked against the CRC-32 the writer recorded before anything is
decoded: compressed chunks each time they are inflated (the check costs ~1 %
of inflating them; the last 64 MiB of decoded chunks are kept in memory, as
netCDF's chunk cache keeps them), unfiltered chunks on their first read in
each :class:`ChunkFile` (they are read far more often, and checking them
costs as much as copying them; the memory map then holds the checked bytes
of a file that is never modified in place: a rebuilt cache is a new file).

Examples
--------
>>> import tempfile, nat4xr
>>> from pathlib import Path
>>> from nat4xr.cachefile import open_cache, write_cache
>>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=2, n_neurons=3, n_time=4)
>>> with tempfile.TemporaryDirectory() as tmp:
...     lazy = open_cache(write_cache(ds, Path(tmp) / "c.nc"), chunks=None)
...     f = lazy["response"].encoding["nat4xr_source"].file
...     values = f.chunk("response", (3, 0, 1, 0))   # stim 3, repeat 1
...     f.close()
>>> values.shape, np.array_equal(values[0, :, 0], ds.response[3, :, 1].values, equal_nan=True)
((1, 3, 1, 4), True)
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CacheError
from .layout import chunk_grid

__all__ = [
    "DECODED_CACHE_BYTES",
    "ChunkFile",
    "ChunkIndex",
    "crc32",
    "in_use",
    "share_lock",
]

#: Decoded compressed chunks kept per open file (least recently used first out),
#: as netCDF-C's per-variable chunk cache (64 MiB) keeps them for HDF5 readers.
DECODED_CACHE_BYTES = 64 << 20


@dataclass(frozen=True)
class ChunkIndex:
    """Where each stored chunk of one variable lies, and its checksum.

    Attributes
    ----------
    dims, shape, chunks : tuple
        The variable's dims and shape, and the shape of one chunk.
    dtype : numpy.dtype
        Stored (little-endian) type.
    fill : float
        Value of chunks never written.
    offset, nbytes, crc32 : numpy.ndarray
        Per chunk, shaped like the chunk grid: byte offset (-1 for a chunk
        not written), stored size and CRC-32 of the stored bytes.
    compressed : numpy.ndarray
        Bool per chunk: deflated (else the raw values).
    shuffle : bool
        Compressed chunks were byte-shuffled before deflate.
    stored : numpy.ndarray
        Bool per chunk: written (the file's trailer records this explicitly;
        when not given, ``offset >= 0``).
    """

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    fill: float
    offset: np.ndarray
    nbytes: np.ndarray
    compressed: np.ndarray
    crc32: np.ndarray
    shuffle: bool = False
    stored: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.stored is None:
            object.__setattr__(self, "stored", np.asarray(self.offset) >= 0)

    def stored_prefix(self, along: str, per: str) -> np.ndarray:
        """For each chunk along ``per``, one past the last chunk stored along ``along``.

        With chunks one entry wide along both (``response``'s stims and
        repeats), the repeats the file stores for each stim: what the file
        itself says was recorded, whatever a Dataset's coordinates now claim.
        """
        stored = np.asarray(self.stored).reshape(self.grid)
        order = [self.dims.index(along), self.dims.index(per)]
        other = tuple(a for a in range(stored.ndim) if a not in order)
        held = stored.any(axis=other)  # the two axes left, in the file's order
        held = held.T if order[0] < order[1] else held  # (per, along)
        n = held.shape[1]
        last = np.where(held.any(axis=1), n - np.argmax(held[:, ::-1], axis=1), 0)
        return last.astype(np.int64)

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of chunks along each dimension."""
        return chunk_grid(self.shape, self.chunks)

    @property
    def chunk_bytes(self) -> int:
        """Bytes of one decoded chunk."""
        return int(np.prod(self.chunks)) * self.dtype.itemsize


class ChunkFile:
    """A read-only memory map of a cache file, serving checked chunks.

    Parameters
    ----------
    path : path-like
        The cache file.
    index : dict
        The file's chunk indexes by variable (from
        :func:`~nat4xr.cachefile.trailer.read_trailer`).
    identity : tuple, optional
        ``(inode, size, mtime_ns)`` the file must still have; a file replaced
        since its index was read raises :class:`CacheError`.

    Notes
    -----
    Thread-safe for reading. After :meth:`close` the next read maps the file
    again (checking ``identity``), as xarray's lazy arrays reopen files.

    While mapped, the file holds a shared advisory lock (:func:`share_lock`;
    the map keeps the open file, and so the lock, alive; forked processes
    share it): housekeeping that deletes caches skips a file in use
    (:func:`in_use`), and a file deleted anyway (``rm``) stays readable
    through the map until :meth:`close`.

    Which unfiltered chunks have passed their check is kept in memory shared
    with the processes forked from this one (DataLoader workers, dask's
    process pools), so each chunk of a file is checked once for all of them,
    not once per fresh worker; a copy unpickled elsewhere starts its own.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        index: dict[str, ChunkIndex],
        identity: tuple[int, int, int] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.index = index
        self.identity = identity
        self._lock = threading.Lock()
        self._map: mmap.mmap | None = None
        self._bytes: np.ndarray | None = None
        self._fd: int | None = None  # the mapped file, to see it changed in place
        #: True after :meth:`close` until a read maps the file again: values that
        #: were read from it may live on elsewhere (a persisted dask array), the
        #: file need not.
        self.closed = False
        #: Counts the times the file was seen written to or touched since it was
        #: mapped: what readers learned from its bytes before then no longer holds.
        self.generation = 0
        self._stat: tuple[int, int] | None = None
        self._checked = _shared_flags(index)
        self._decoded: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._decoded_bytes = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "index": self.index, "identity": self.identity}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["index"], state["identity"])

    @property
    def bytes(self) -> np.ndarray:
        """The file's bytes (mapped on first use)."""
        view = self._bytes
        if view is None:
            with self._lock:
                if self._bytes is None:
                    self._open()
                view = self._bytes
        self._unchanged()
        return view

    def _unchanged(self) -> None:
        """Refuse a file another program rewrote or cut in place since it was mapped.

        A map shows such writes at once: chunks whose CRC was checked on their
        first read would be served changed, and bytes cut off would end the
        process (SIGBUS). Renaming, replacing or deleting the file changes
        nothing the map shows, and passes.
        """
        fd, expected = self._fd, self._stat
        if fd is None or expected is None:
            return
        try:
            st = os.fstat(fd)
        except OSError:  # closed meanwhile by close()
            return
        if st.st_size != expected[0]:
            raise CacheError(
                f"{self.path} was changed in place after it was opened (another program wrote "
                "to it or cut it), so what it serves can no longer be trusted; open it again "
                "(open_nat4 rebuilds a damaged cache)"
            )
        if st.st_mtime_ns != expected[1]:
            # Written to, or only touched (as scratch-space purges ask for): nothing
            # checked before counts any more, so every chunk is checked again on its
            # next read, against the index read at open (other bytes fail it).
            with self._lock:
                for flags in self._checked.values():
                    flags[:] = False
                self._decoded.clear()
                self._decoded_bytes = 0
                self._stat = (st.st_size, st.st_mtime_ns)
                self.generation += 1

    def _open(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                st = os.fstat(fh.fileno())
                now = (st.st_ino, st.st_size, st.st_mtime_ns)
                if self.identity is not None and now != tuple(self.identity):
                    raise CacheError(
                        f"{self.path} was replaced after it was opened; open it again "
                        "(open_nat4 or xarray.open_dataset(..., engine='nat4'))"
                    )
                self.identity = now
                # The map keeps the open file (and this lock) alive after `fh` closes.
                share_lock(fh.fileno())
                self._map = (
                    mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if st.st_size else None
                )
                self._fd = os.dup(fh.fileno())
                self._fd_closer = weakref.finalize(self, os.close, self._fd)
                self._stat = (st.st_size, st.st_mtime_ns)
                self.closed = False
        except OSError as exc:
            raise CacheError(
                f"cannot read the cache file {self.path} ({exc}); open_nat4(..., rebuild=True) "
                "builds it again"
            ) from exc
        self._bytes = (
            np.frombuffer(self._map, dtype=np.uint8)
            if self._map is not None
            else np.zeros(0, np.uint8)
        )

    def close(self) -> None:
        """Unmap the file and release its handle (and so its shared lock) now."""
        with self._lock:
            self.closed = True
            self._bytes = None
            if self._fd is not None:
                self._fd_closer()  # closes it once, here or when this object is collected
                self._fd = self._stat = None
            if self._map is not None:
                try:
                    self._map.close()
                except BufferError:  # a view is still alive: unmapped when it is dropped
                    pass
                self._map = None
            self._decoded.clear()
            self._decoded_bytes = 0

    def stored(self, index: ChunkIndex, flat: int, where: str = "") -> memoryview | None:
        """The checked stored bytes of chunk ``flat`` (C order of the grid); None if unwritten."""
        if not index.stored.flat[flat]:
            return None
        offset = int(index.offset.flat[flat])
        n = int(index.nbytes.flat[flat])
        data = self.bytes
        if offset + n > data.size:
            raise self.damaged(index, flat, "lies past the end of the file", where)
        raw = data[offset : offset + n]
        compressed = bool(index.compressed.flat[flat])
        checked = self._checked[index.name]
        if compressed or not checked[flat]:
            if crc32(raw) != int(index.crc32.flat[flat]):
                raise self.damaged(index, flat, "fails its CRC-32 check", where)
            if not compressed:
                checked[flat] = True
        return raw.data

    def chunk(
        self, name_or_index: str | ChunkIndex, position: tuple[int, ...], where: str = ""
    ) -> np.ndarray | None:
        """A copy of the chunk holding element ``position``, chunk-shaped.

        ``None`` when the chunk was never written (it reads as the fill value).
        """
        index = (
            name_or_index if isinstance(name_or_index, ChunkIndex) else self.index[name_or_index]
        )
        cell = tuple(p // c for p, c in zip(position, index.chunks))
        flat = int(np.ravel_multi_index(cell, index.grid))
        values = self.decoded(index, flat, where)
        return None if values is None else values.copy()

    def decoded(self, index: ChunkIndex, flat: int, where: str = "") -> np.ndarray | None:
        """Values of chunk ``flat``, shaped like a chunk; None if never written.

        Read-only: unfiltered chunks are views of the memory map, compressed
        ones are kept decoded (up to :data:`DECODED_CACHE_BYTES` per file).
        Copy what you keep.
        """
        key = (index.name, flat)
        with self._lock:
            values = self._decoded.get(key)
            if values is not None:
                self._decoded.move_to_end(key)
                return values
        raw = self.stored(index, flat, where)
        if raw is None:
            return None
        if not index.compressed.flat[flat]:
            if len(raw) != index.chunk_bytes:
                raise self.damaged(index, flat, "has the wrong size", where)
            return np.frombuffer(raw, dtype=index.dtype).reshape(index.chunks)
        values = self._inflated(index, flat, raw, where)
        values.flags.writeable = False
        with self._lock:
            if key not in self._decoded:
                self._decoded[key] = values
                self._decoded_bytes += values.nbytes
                while self._decoded_bytes > DECODED_CACHE_BYTES and self._decoded:
                    self._decoded_bytes -= self._decoded.popitem(last=False)[1].nbytes
        return values

    def _inflated(self, index: ChunkIndex, flat: int, raw: memoryview, where: str) -> np.ndarray:
        try:
            inflated = _inflate(raw)
        except Exception as exc:  # zlib.error / IsalError: the CRC matched, so the writer erred
            raise self.damaged(index, flat, f"cannot be inflated ({exc})", where) from exc
        if len(inflated) != index.chunk_bytes:
            raise self.damaged(index, flat, "inflates to the wrong size", where)
        if index.shuffle:
            return _unshuffle(inflated, index.dtype).reshape(index.chunks)
        return np.frombuffer(inflated, dtype=index.dtype).reshape(index.chunks)

    def damaged(self, index: ChunkIndex, flat: int, what: str, where: str = "") -> CacheError:
        """The error for a damaged chunk, naming file, variable and chunk."""
        cell = np.unravel_index(flat, index.grid)
        at = ", ".join(
            f"{d}={int(i) * c}" for d, i, c in zip(index.dims, cell, index.chunks) if c == 1
        )
        return CacheError(
            f"{self.path}: the chunk of {index.name} at {where or at} {what}: the cache file is "
            "damaged; open_nat4(..., rebuild=True) builds it again"
        )


def _shared_flags(index: dict[str, ChunkIndex]) -> dict[str, np.ndarray]:
    """One False per chunk and variable, in anonymous memory that forked children share."""
    sizes = {name: int(np.prod(ix.grid)) for name, ix in index.items()}
    total = sum(sizes.values())
    memory = np.frombuffer(mmap.mmap(-1, max(1, total)), dtype=bool)  # zero-filled: False
    out, start = {}, 0
    for name, n in sizes.items():
        out[name] = memory[start : start + n]
        start += n
    return out


def crc32(data: Any) -> int:
    """CRC-32 of ``data`` (zlib's polynomial): ISA-L's (~12 GB/s here) when installed, else zlib's.

    Examples
    --------
    >>> crc32(b"nat4xr") == zlib.crc32(b"nat4xr")
    True
    """
    try:
        from isal import isal_zlib
    except ImportError:  # pragma: no cover - isal is a dependency, zlib is the fallback
        return zlib.crc32(data)
    return isal_zlib.crc32(data)


def _inflate(raw: memoryview) -> bytes:
    try:
        from isal import isal_zlib
    except ImportError:  # pragma: no cover - isal is a dependency, zlib is the fallback
        return zlib.decompress(raw)
    return isal_zlib.decompress(raw)


def _unshuffle(shuffled: bytes, dtype: np.dtype) -> np.ndarray:
    """Undo HDF5's byte shuffle: byte ``k`` of every element was stored in plane ``k``."""
    size = dtype.itemsize
    src = np.frombuffer(shuffled, dtype=np.uint8)
    n = src.size // size
    out = np.empty(n, dtype=dtype)
    planes = out.view(np.uint8).reshape(n, size)
    for k in range(size):
        planes[:, k] = src[k * n : (k + 1) * n]
    return out


def share_lock(fd: int) -> None:
    """Take a shared advisory lock (``flock``) on an open cache file: "a reader has it open".

    Released when every descriptor sharing it is closed. A no-op where
    ``fcntl`` does not exist (Windows refuses to delete an open file anyway)
    or the file system does not support ``flock``.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:  # a file system without flock: reading works, clearing cannot tell
        pass


def in_use(fd: int) -> bool:
    """Whether a reader holds the shared lock of the cache file open as ``fd``.

    Otherwise ``fd`` now holds the exclusive lock (until it is closed), so no
    reader can start mapping the file while the caller deletes it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no flock on this file system
        return False
    return False
