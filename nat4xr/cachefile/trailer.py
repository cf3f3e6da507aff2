"""The cache file's trailer: the chunk index and the file's checksums, after HDF5's last byte.

A cache file (format 5) is an HDF5/netCDF4 file followed by nat4xr's
trailer, written last, once every byte before it is final:

- a description (UTF-8 JSON): the stamp (key, build options) and, per data
  variable, its dims, shape, chunk shape, dtype, fill value, byte shuffle and
  number of chunks;
- per data variable, in the description's order, its chunk table, one entry
  per chunk in C order of the chunk grid: ``offset`` and ``nbytes``
  (uint64), ``crc32`` (uint32), ``flags`` (uint8: 1 stored, 2 deflated). A
  chunk never written is recorded as such (flags 0, every other field 0),
  never inferred from its offset;
- a fixed 48-byte footer (little-endian):

  ======  ========  ===========================================================
  offset  type      field
  ======  ========  ===========================================================
  0       uint32    cache format (:data:`~nat4xr.cachefile.layout.CACHE_FORMAT`)
  4       uint32    CRC-32 of the whole trailer, these four bytes read as 0
  8       uint64    size of the HDF5 part (where the trailer starts)
  16      uint64    size of the whole file
  24      uint32    CRC-32 of every byte of the HDF5 part outside the chunks
  28      uint32    length of the description
  32      16 bytes  :data:`MAGIC` (the file's last bytes)
  ======  ========  ===========================================================

Why this mechanism: every byte HDF5 or netCDF parses to open the file (the
superblock, object headers, heaps, B-trees), and every coordinate and
attribute, lies outside the chunks, so one CRC-32 over those bytes, checked
before the file is handed to netCDF, makes damage there a
:class:`~nat4xr.errors.CacheError` instead of a crash or a hang inside the
library; the chunks keep their own CRC-32, checked when read. The trailer
lives in the same file, so it appears atomically with it (a sidecar would
be a second file to keep in step); HDF5 reads nothing past its
end-of-allocation address, so no library parses it. An HDF5 user block at
the start of the file would do the same, but netCDF-C finds a superblock
after a user block by reading 4 MiB at every power-of-two offset from 512
bytes on: ~0.2 s more per open of a full-scale A1 cache (a 256 kB block),
against ~0.6 ms for reading and checking the trailer and the metadata. Its
:data:`MAGIC` identifies a cache file from its last 16 bytes
(:func:`is_cache_file`).
"""

from __future__ import annotations

import json
import mmap
import os
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CacheError
from .chunks import ChunkIndex, crc32
from .layout import CACHE_FORMAT, chunk_grid

__all__ = [
    "FOOT",
    "MAGIC",
    "CacheTrailer",
    "encode_trailer",
    "is_cache_file",
    "metadata_crc",
    "read_stamp",
    "read_trailer",
]

#: Last bytes of every cache file of format 5 and later.
MAGIC = b"\x89NAT4XR-CACHE\r\n\x1a"
#: The fixed fields at the end of the file (see the module docstring).
FOOT = struct.Struct("<IIQQII16s")
#: Bytes per chunk in a chunk table: offset, nbytes (uint64), crc32 (uint32), flags (uint8).
ENTRY_BYTES = 8 + 8 + 4 + 1
#: Flags of a chunk table entry.
STORED, DEFLATED = 1, 2
#: A trailer larger than this is refused before it is read (a damaged size field):
#: full-scale A1's is about 0.3 MB, so this leaves room for data 200 times larger
#: while a damaged field never makes a listing read (or allocate) much.
MAX_TRAILER = 64 << 20
#: First bytes of every HDF5 file (whose superblock is at 0).
_HDF5 = b"\x89HDF\r\n\x1a\n"
_REBUILD = "the cache file is damaged; open_nat4(..., rebuild=True) builds it again"
_REBUILD_ONLY = "rebuild it with open_nat4(..., rebuild=True)"


@dataclass(frozen=True)
class CacheTrailer:
    """A verified trailer: the stamp, the chunk indexes and the file it was read from.

    Attributes
    ----------
    stamp : dict
        ``format``, ``key`` and ``options`` of the build.
    index : dict
        :class:`~nat4xr.cachefile.chunks.ChunkIndex` per data variable.
    identity : tuple
        ``(inode, size, mtime_ns)`` of the file whose bytes were verified.
    """

    stamp: dict[str, Any]
    index: dict[str, ChunkIndex]
    identity: tuple[int, int, int]


def is_cache_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file that ends with a nat4xr cache trailer.

    Reads 16 bytes and never blocks (a FIFO or a device is not a cache file);
    checks nothing else: :func:`read_stamp` verifies the trailer, opening the
    file verifies everything. Caches of format 4 and older (no trailer) give
    False.

    Examples
    --------
    >>> import tempfile, nat4xr
    >>> from pathlib import Path
    >>> from nat4xr.cachefile import write_cache
    >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=3, n_time=4)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = write_cache(ds, Path(tmp) / "c.nc")
    ...     other = Path(tmp) / "notes.txt"
    ...     _ = other.write_text("hello")
    ...     is_cache_file(path), is_cache_file(other), is_cache_file(Path(tmp) / "none")
    (True, False, False)
    """
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size < FOOT.size:
            return False
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            return os.pread(fd, len(MAGIC), st.st_size - len(MAGIC)) == MAGIC
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return False


def read_stamp(path: str | os.PathLike) -> dict[str, Any]:
    """The build stamp (``format``, ``key``, ``options``) of a cache file, from its checked trailer.

    Reads the trailer only (a few hundred kB at most), so it is cheap enough
    to list a cache folder; the rest of the file is checked when it is opened.

    Raises
    ------
    CacheError
        ``path`` is not a cache file of this format, or its trailer is damaged.

    Examples
    --------
    >>> import tempfile, nat4xr
    >>> from pathlib import Path
    >>> from nat4xr.cachefile import write_cache
    >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=3, n_time=4)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     read_stamp(write_cache(ds, Path(tmp) / "c.nc", key="k1", options={"a": 1}))
    {'format': 5, 'key': 'k1', 'options': {'a': 1}}
    """
    with _open_regular(path) as fh:
        trailer, _ = _read_trailer(fh, path, os.fstat(fh.fileno()).st_size)
    return _parse(trailer, path)[0]


def read_trailer(path: str | os.PathLike) -> CacheTrailer:
    """Verify the trailer and every byte outside the chunks; the stamp and chunk indexes.

    Checks, in this order and before any HDF5 or netCDF code reads the file:
    the magic, the trailer's CRC-32, the format, the file's size, the chunk
    tables (stored chunks inside the HDF5 part and not overlapping, absent
    ones all zero), and the CRC-32 of every byte of the HDF5 part outside the
    chunks.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    CacheError
        Anything else: names the file and what failed.
    """
    with _open_regular(path) as fh:
        st = os.fstat(fh.fileno())
        trailer, hdf5_size = _read_trailer(fh, path, st.st_size)
        stamp, index, expected = _parse(trailer, path)
        ranges = _chunk_ranges(index, hdf5_size, path)
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                found = metadata_crc(view[:hdf5_size], 0, ranges)
            finally:
                view.release()
    if found != expected:
        raise CacheError(
            f"{path}: its HDF5/netCDF metadata (file structure, coordinates or attributes) "
            f"fails its CRC-32 check; {_REBUILD}"
        )
    return CacheTrailer(stamp, index, (st.st_ino, st.st_size, st.st_mtime_ns))


def metadata_crc(data: Any, start: int, chunks: np.ndarray) -> int:
    """CRC-32 of ``data[start:]`` without the byte ranges ``chunks`` (sorted ``(n, 2)``, disjoint).

    Examples
    --------
    >>> metadata_crc(b"HEADabcXYZdefXY", 4, np.array([[7, 10], [13, 15]])) == crc32(b"abcdef")
    True
    """
    view = memoryview(data)
    value = 0
    at = start
    for a, b in chunks.tolist():
        if a > at:
            value = _crc32_update(view[at:a], value)
        at = max(at, b)
    if len(view) > at:
        value = _crc32_update(view[at:], value)
    return value


def encode_trailer(
    hdf5_size: int,
    meta_crc: int,
    description: bytes,
    tables: list[Mapping[str, np.ndarray]],
) -> bytes:
    """The trailer's bytes: description, chunk tables, footer."""
    body = [description]
    for table in tables:
        body.append(np.asarray(table["offset"], "<u8").tobytes())
        body.append(np.asarray(table["nbytes"], "<u8").tobytes())
        body.append(np.asarray(table["crc32"], "<u4").tobytes())
        body.append(np.asarray(table["flags"], "u1").tobytes())
    payload = b"".join(body)
    size = hdf5_size + len(payload) + FOOT.size
    foot = FOOT.pack(CACHE_FORMAT, 0, hdf5_size, size, meta_crc, len(description), MAGIC)
    trailer = bytearray(payload + foot)
    struct.pack_into("<I", trailer, len(payload) + 4, crc32(trailer))
    return bytes(trailer)


class _open_regular:
    """``open(path, 'rb')`` that refuses anything but a regular file, before opening it."""

    def __init__(self, path: str | os.PathLike) -> None:
        mode = os.stat(path).st_mode  # FileNotFoundError passes through
        if not stat.S_ISREG(mode):
            raise CacheError(f"{path} is not a regular file, so not a nat4xr cache file")
        try:
            self.fh = open(path, "rb")
        except OSError as exc:
            raise CacheError(f"cannot read the cache file {path} ({exc})") from exc

    def __enter__(self) -> Any:
        return self.fh

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


def _read_trailer(fh: Any, path: str | os.PathLike, file_size: int) -> tuple[bytes, int]:
    """The trailer's bytes (CRC-checked, format checked) and where it starts."""
    foot = b""
    if file_size >= FOOT.size:
        fh.seek(file_size - FOOT.size)
        foot = fh.read(FOOT.size)
    if len(foot) < FOOT.size or foot[-len(MAGIC) :] != MAGIC:
        fh.seek(0)
        if fh.read(len(_HDF5)) == _HDF5:
            raise CacheError(
                f"{path} has no nat4xr cache trailer: it was written by an older nat4xr (cache "
                f"format 4 or earlier), or its writing never finished, or it is not a nat4xr "
                f"cache; this nat4xr reads format {CACHE_FORMAT}; {_REBUILD_ONLY}"
            )
        raise CacheError(
            f"{path} is not a nat4xr cache file (no cache trailer), or its writing never "
            "finished; delete it or rebuild with open_nat4(..., rebuild=True)"
        )
    fmt, stored_crc, hdf5_size, size, _, _, _ = FOOT.unpack(foot)
    # A damaged size must not make us read (or allocate) far past the file: check first.
    if size != file_size or not 0 < hdf5_size <= file_size - FOOT.size:
        raise CacheError(
            f"{path} holds {file_size} bytes, its trailer says {size} (HDF5 part {hdf5_size}): "
            f"the file was cut short, added to or damaged; {_REBUILD}"
        )
    if file_size - hdf5_size > MAX_TRAILER:
        raise CacheError(f"{path}: its trailer claims {file_size - hdf5_size} bytes; {_REBUILD}")
    fh.seek(hdf5_size)
    trailer = fh.read(file_size - hdf5_size)
    view = memoryview(trailer)
    at = len(trailer) - FOOT.size + 4
    found = _crc32_update(view[at + 4 :], _crc32_update(b"\0\0\0\0", crc32(view[:at])))
    if len(trailer) != file_size - hdf5_size or found != stored_crc:
        raise CacheError(
            f"{path}: its trailer (the chunk index) fails its CRC-32 check; {_REBUILD}"
        )
    if fmt != CACHE_FORMAT:
        raise CacheError(
            f"{path} was written in cache format {fmt}, this nat4xr reads format "
            f"{CACHE_FORMAT}; {_REBUILD_ONLY}"
        )
    return trailer, hdf5_size


def _parse(
    trailer: bytes, path: str | os.PathLike
) -> tuple[dict[str, Any], dict[str, ChunkIndex], int]:
    """Stamp, chunk indexes and metadata CRC of a trailer whose CRC matched."""
    _, _, _, _, meta_crc, n_desc, _ = FOOT.unpack_from(trailer, len(trailer) - FOOT.size)
    try:  # the CRC matched: anything odd below means the writer erred, not the disk
        desc = json.loads(trailer[:n_desc].decode("utf-8"))
        stamp = {"format": CACHE_FORMAT, "key": str(desc["key"]), "options": desc["options"]}
        index: dict[str, ChunkIndex] = {}
        at = n_desc
        for var in desc["variables"]:
            n = int(var["n"])
            table = {}
            for field, dtype in (("offset", "<u8"), ("nbytes", "<u8"), ("crc32", "<u4")):
                table[field] = np.frombuffer(trailer, dtype, n, at)
                at += n * np.dtype(dtype).itemsize
            table["flags"] = np.frombuffer(trailer, "u1", n, at)
            at += n
            index[var["name"]] = _chunk_index(var, table)
        if at != len(trailer) - FOOT.size:
            raise ValueError("the chunk tables do not fill the trailer")
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheError(
            f"{path}: its trailer (the chunk index) is invalid ({exc}); {_REBUILD}"
        ) from exc
    return stamp, index, int(meta_crc)


def _chunk_index(var: Mapping[str, Any], table: Mapping[str, np.ndarray]) -> ChunkIndex:
    shape = tuple(int(s) for s in var["shape"])
    chunks = tuple(int(c) for c in var["chunks"])
    grid = chunk_grid(shape, chunks)
    flags = table["flags"]
    if (
        len(shape) != len(chunks)
        or len(var["dims"]) != len(shape)
        or int(np.prod(grid)) != len(flags)
    ):
        raise ValueError(f"{var['name']}: chunk table of the wrong size")
    stored = (flags & STORED) != 0
    absent_fields = (table["offset"] != 0) | (table["nbytes"] != 0) | (table["crc32"] != 0)
    if (flags & ~np.uint8(STORED | DEFLATED)).any() or (
        ~stored & ((flags != 0) | absent_fields)
    ).any():
        raise ValueError(f"{var['name']}: a chunk table entry has invalid flags")
    dtype = np.dtype(var["dtype"]).newbyteorder("<")
    if dtype.kind != "f":
        raise ValueError(f"{var['name']}: stored as {dtype}, not floats")
    return ChunkIndex(
        name=str(var["name"]),
        dims=tuple(str(d) for d in var["dims"]),
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill=float(var["fill"]),
        offset=np.where(stored, table["offset"].astype(np.int64), -1).reshape(grid),
        nbytes=table["nbytes"].astype(np.int64).reshape(grid),
        compressed=((flags & DEFLATED) != 0).reshape(grid),
        crc32=table["crc32"].astype(np.int64).reshape(grid),
        shuffle=bool(var["shuffle"]),
        stored=stored.reshape(grid),
    )


def _chunk_ranges(index: Mapping[str, ChunkIndex], hdf5_size: int, path: Any) -> np.ndarray:
    """Sorted ``[start, end)`` of stored chunks; CacheError if one leaves the file or overlaps."""
    parts = [np.zeros((0, 2), np.int64)]
    for ix in index.values():
        where = ix.stored.ravel()
        start = ix.offset.ravel()[where]
        parts.append(np.stack([start, start + ix.nbytes.ravel()[where]], axis=1))
    ranges = np.concatenate(parts)
    ranges = ranges[np.argsort(ranges[:, 0], kind="stable")]
    bad = (ranges[:, 0] < 0).any() or (ranges[:, 1] > hdf5_size).any()
    bad = bad or (ranges[:, 1] < ranges[:, 0]).any()
    if bad or (ranges[1:, 0] < ranges[:-1, 1]).any():
        raise CacheError(f"{path}: its chunk index places chunks outside the file; {_REBUILD}")
    return ranges


def _crc32_update(data: Any, value: int) -> int:
    try:
        from isal import isal_zlib
    except ImportError:  # pragma: no cover - isal is a dependency, zlib is the fallback
        import zlib

        return zlib.crc32(data, value)
    return isal_zlib.crc32(data, value)
