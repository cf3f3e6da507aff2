"""The cache file's header: an HDF5 user block holding the chunk index and the file's checksums.

A cache file (format 5) begins with an HDF5 user block: bytes that HDF5 and
netCDF reserve at the start of the file and never read (the HDF5 superblock
follows it). nat4xr writes its header there, last, once every other byte of
the file is final:

=======  ==========  ===========================================================
offset   type        field
=======  ==========  ===========================================================
0        16 bytes    :data:`MAGIC`
16       uint32      cache format (:data:`~nat4xr.cachefile.layout.CACHE_FORMAT`)
20       uint32      CRC-32 of the whole user block, these four bytes read as 0
24       uint64      size of the user block (a power of two, at least 512)
32       uint64      size of the whole file
40       uint32      CRC-32 of every byte outside the user block and the chunks
44       uint32      length of the description (UTF-8 JSON) that follows
48       ...         description, then per variable the chunk table
=======  ==========  ===========================================================

The description names the stamp (format, key, build options) and, per data
variable, its dims, shape, chunk shape, dtype, fill value, byte shuffle and
number of chunks. Each variable's chunk table follows, in the description's
order, one entry per chunk in C order of the chunk grid: ``offset`` and
``nbytes`` (uint64), ``crc32`` (uint32) and ``flags`` (uint8: 1 stored,
2 deflated). A chunk never written is recorded as such (flags 0, every other
field 0), never inferred from its offset.

Why a user block: every byte HDF5 or netCDF parses to open the file (the
superblock, object headers, heaps, B-trees), and every coordinate and
attribute, lies outside the chunks, so one CRC-32 over those bytes, checked
before the file is handed to netCDF, makes damage there a
:class:`~nat4xr.errors.CacheError` instead of a crash or a hang inside the
library; the chunks keep their own CRC-32, checked when read. The user block
is read first by nobody but nat4xr, lives in the same file (it appears
atomically with it, unlike a sidecar), and costs one read of a few hundred
kB at open. Its :data:`MAGIC` identifies a cache file from 16 bytes
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
from .layout import CACHE_FORMAT

__all__ = [
    "HEAD",
    "MAGIC",
    "CacheHeader",
    "is_cache_file",
    "metadata_crc",
    "read_header",
    "read_stamp",
    "userblock_size",
]

#: First bytes of every cache file of format 5 and later.
MAGIC = b"\x89NAT4XR-CACHE\r\n\x1a"
#: The fixed fields at the start of the user block (see the module docstring).
HEAD = struct.Struct("<16sIIQQII")
#: Bytes per chunk in a chunk table: offset, nbytes (uint64), crc32 (uint32), flags (uint8).
ENTRY_BYTES = 8 + 8 + 4 + 1
#: Flags of a chunk table entry.
STORED, DEFLATED = 1, 2
#: First bytes of an HDF5 file without a user block (cache format 4 and older).
_HDF5 = b"\x89HDF\r\n\x1a\n"
_REBUILD = "the cache file is damaged; open_nat4(..., rebuild=True) builds it again"


@dataclass(frozen=True)
class CacheHeader:
    """A verified header: the stamp, the chunk indexes and the file it was read from.

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
    """Whether ``path`` is a regular file that begins with a nat4xr cache header.

    Reads 16 bytes and never blocks (a FIFO or a device is not a cache file);
    checks nothing else: :func:`read_stamp` verifies the header, opening the
    file verifies everything. Caches of format 4 and older (no header) give
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
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            return os.pread(fd, len(MAGIC), 0) == MAGIC
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return False


def read_stamp(path: str | os.PathLike) -> dict[str, Any]:
    """The build stamp (``format``, ``key``, ``options``) of a cache file, from its verified header.

    Reads the user block only (a few hundred kB at most), so it is cheap
    enough to list a cache folder; the rest of the file is checked when it is
    opened.

    Raises
    ------
    CacheError
        ``path`` is not a cache file of this format, or its header is damaged.

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
        st = os.fstat(fh.fileno())
        block = _read_block(fh, path, st.st_size)
    return _parse(block, path)[0]


def read_header(path: str | os.PathLike) -> CacheHeader:
    """Verify the header and every byte outside the chunks; the stamp and chunk indexes.

    Checks, in this order and before any HDF5 or netCDF code reads the file:
    the magic and the format, the user block's CRC-32, the file's size, the
    chunk tables (stored chunks inside the file and not overlapping, absent
    ones all zero), and the CRC-32 of every byte outside the user block and
    the chunks.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    CacheError
        Anything else: names the file and what failed.
    """
    with _open_regular(path) as fh:
        st = os.fstat(fh.fileno())
        block = _read_block(fh, path, st.st_size)
        stamp, index, size, expected = _parse(block, path)
        if size != st.st_size:
            raise CacheError(
                f"{path} holds {st.st_size} bytes, its header says {size}: the file was cut "
                f"short or added to; {_REBUILD}"
            )
        ranges = _chunk_ranges(index, len(block), size, path)
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                found = metadata_crc(view, len(block), ranges)
            finally:
                view.release()
    if found != expected:
        raise CacheError(
            f"{path}: its HDF5/netCDF metadata (file structure, coordinates or attributes) "
            f"fails its CRC-32 check; {_REBUILD}"
        )
    return CacheHeader(stamp, index, (st.st_ino, st.st_size, st.st_mtime_ns))


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


def userblock_size(description: bytes, n_chunks: int) -> int:
    """The user block that holds a header with ``description`` and ``n_chunks`` table entries.

    Examples
    --------
    >>> userblock_size(b"{}", 10), userblock_size(b"x" * 600, 0)
    (512, 1024)
    """
    need = HEAD.size + len(description) + n_chunks * ENTRY_BYTES
    size = 512
    while size < need:
        size *= 2
    return size


def encode_header(
    userblock: int,
    file_size: int,
    meta_crc: int,
    description: bytes,
    tables: list[Mapping[str, np.ndarray]],
) -> bytes:
    """The user block's bytes (``userblock`` of them): fields, description, chunk tables."""
    body = [description]
    for table in tables:
        body.append(np.asarray(table["offset"], "<u8").tobytes())
        body.append(np.asarray(table["nbytes"], "<u8").tobytes())
        body.append(np.asarray(table["crc32"], "<u4").tobytes())
        body.append(np.asarray(table["flags"], "u1").tobytes())
    payload = b"".join(body)
    if HEAD.size + len(payload) > userblock:
        raise RuntimeError(f"the cache header needs {HEAD.size + len(payload)} bytes")
    fields = (MAGIC, CACHE_FORMAT, 0, userblock, file_size, meta_crc, len(description))
    block = bytearray(HEAD.pack(*fields) + payload)
    block.extend(bytes(userblock - len(block)))
    struct.pack_into("<I", block, 20, crc32(block))
    return bytes(block)


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


def _read_block(fh: Any, path: str | os.PathLike, file_size: int) -> bytes:
    """The user block's bytes, after checking the magic and the fixed fields."""
    head = fh.read(HEAD.size)
    if len(head) < HEAD.size or head[: len(MAGIC)] != MAGIC:
        if head.startswith(_HDF5):
            raise CacheError(
                f"{path} was written by an older nat4xr (cache format 4 or earlier, without "
                f"a checked header); this nat4xr reads format {CACHE_FORMAT}; rebuild it with "
                "open_nat4(..., rebuild=True)"
            )
        raise CacheError(
            f"{path} is not a nat4xr cache file (no cache header), or its writing never "
            "finished; delete it or rebuild with open_nat4(..., rebuild=True)"
        )
    _, fmt, _, userblock, _, _, _ = HEAD.unpack(head)
    if fmt != CACHE_FORMAT:
        raise CacheError(
            f"{path} was written in cache format {fmt}, this nat4xr reads format "
            f"{CACHE_FORMAT}; rebuild it with open_nat4(..., rebuild=True)"
        )
    # A damaged size field must not make us read (or allocate) far past the file.
    if userblock < 512 or userblock & (userblock - 1) or userblock > file_size:
        raise CacheError(f"{path}: its header's user block size {userblock} is invalid; {_REBUILD}")
    block = head + fh.read(userblock - HEAD.size)
    if len(block) != userblock:
        raise CacheError(f"{path}: the file ends inside its header; {_REBUILD}")
    return block


def _parse(
    block: bytes, path: str | os.PathLike
) -> tuple[dict[str, Any], dict[str, ChunkIndex], int, int]:
    """Stamp, chunk indexes, file size and metadata CRC of a header whose fields were read."""
    raw = bytearray(block)
    stored_crc = struct.unpack_from("<I", raw, 20)[0]
    struct.pack_into("<I", raw, 20, 0)
    if crc32(raw) != stored_crc:
        raise CacheError(f"{path}: its header (the chunk index) fails its CRC-32 check; {_REBUILD}")
    _, _, _, _, size, meta_crc, n_desc = HEAD.unpack_from(block)
    try:  # the CRC matched: anything odd below means the writer erred, not the disk
        desc = json.loads(block[HEAD.size : HEAD.size + n_desc].decode("utf-8"))
        stamp = {"format": CACHE_FORMAT, "key": str(desc["key"]), "options": desc["options"]}
        index: dict[str, ChunkIndex] = {}
        at = HEAD.size + n_desc
        for var in desc["variables"]:
            n = int(var["n"])
            table = {}
            for field, dtype in (("offset", "<u8"), ("nbytes", "<u8"), ("crc32", "<u4")):
                table[field] = np.frombuffer(block, dtype, n, at)
                at += n * np.dtype(dtype).itemsize
            table["flags"] = np.frombuffer(block, "u1", n, at)
            at += n
            index[var["name"]] = _chunk_index(var, table, path)
    except CacheError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheError(
            f"{path}: its header (the chunk index) is invalid ({exc}); {_REBUILD}"
        ) from exc
    return stamp, index, int(size), int(meta_crc)


def _chunk_index(var: Mapping[str, Any], table: Mapping[str, np.ndarray], path: Any) -> ChunkIndex:
    from .layout import chunk_grid

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
    return ChunkIndex(
        name=str(var["name"]),
        dims=tuple(str(d) for d in var["dims"]),
        shape=shape,
        chunks=chunks,
        dtype=np.dtype(var["dtype"]).newbyteorder("<"),
        fill=float(var["fill"]),
        offset=np.where(stored, table["offset"].astype(np.int64), -1).reshape(grid),
        nbytes=table["nbytes"].astype(np.int64).reshape(grid),
        compressed=((flags & DEFLATED) != 0).reshape(grid),
        crc32=table["crc32"].astype(np.int64).reshape(grid),
        shuffle=bool(var["shuffle"]),
        stored=stored.reshape(grid),
    )


def _chunk_ranges(
    index: Mapping[str, ChunkIndex], userblock: int, size: int, path: Any
) -> np.ndarray:
    """Sorted ``[start, end)`` of stored chunks; a CacheError if one leaves the file or overlaps."""
    parts = []
    for ix in index.values():
        where = ix.stored.ravel()
        start = ix.offset.ravel()[where]
        parts.append(np.stack([start, start + ix.nbytes.ravel()[where]], axis=1))
    ranges = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
    ranges = ranges[np.argsort(ranges[:, 0], kind="stable")]
    bad = (ranges[:, 0] < userblock).any() or (ranges[:, 1] > size).any()
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
