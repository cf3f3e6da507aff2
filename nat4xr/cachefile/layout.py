"""What a cache file holds and where: the one description shared by writer and reader.

Layout (cache format 5)
    A cache file is a netCDF4/HDF5 file followed by nat4xr's trailer: the
    stamp, the chunk index and the CRC-32 of every byte of the HDF5 part
    outside the chunks (see :mod:`nat4xr.cachefile.trailer`). HDF5 reads
    nothing past its own last byte, so netCDF and HDF5 readers open the file
    as usual (``xarray.open_dataset(path)`` reads it as plain netCDF).

    The root group holds the Dataset: coordinates stored plainly (strings as
    fixed-width UTF-8 characters), data variables chunked one stim at a time,
    and ``response`` one (stim, repeat) pair at a time ``(1, neuron, 1,
    time)``. Only the recorded repeats of each sound are written; HDF5
    allocates no chunk that is never written, so the padding reads as the
    fill value (NaN) and costs nothing.

    Chunks of sounds with one recorded repeat (estimation sounds) are
    compressed with deflate level 1, and every chunk of the other data
    variables with byte shuffle + deflate level 1: HDF5's own filters, which
    every HDF5 reader decodes. Chunks of sounds with repeats (validation
    sounds, read whole and often) are stored unfiltered, marked by HDF5's
    per-chunk filter mask, so their bytes are the little-endian float32
    values in C order.

    The trailer's chunk index is what the reader uses instead of HDF5's: for
    each chunk in C order of the chunk grid, whether it was written (a chunk
    never written is recorded as such), its byte offset in the file, its
    stored size, whether it is compressed, and the CRC-32 of its stored
    bytes. The group ``/nat4xr`` has the attribute ``digest``, a SHA-256
    over every coordinate and attribute of the root group as read back.

Integrity
    Nothing of the file is used unchecked. At open, before netCDF parses a
    byte, the trailer's CRC-32, the file's size and the CRC-32 of every byte
    outside the chunks and the trailer (superblock, object headers, heaps,
    B-trees, coordinates, attributes) are verified; then the
    digest. The reader copies chunks straight from a memory map of the file
    and verifies each chunk's CRC-32 before its bytes are used. A damaged
    byte anywhere is a :class:`~nat4xr.errors.CacheError` naming the file,
    never a wrong value, a crash or a hang inside netCDF.

The trailer is written last; a file without it was never finished.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "CACHE_FORMAT",
    "GRID_DIMS",
    "INDEX_GROUP",
    "STAMPS",
    "chunk_grid",
    "chunk_shape",
    "digest",
]

CACHE_FORMAT = 5
"""Version of the cache file layout; bumped when the way files are written changes."""

#: Global attributes stamped on every cache file (moved to
#: ``ds.encoding["nat4xr_cache"]`` on open, so a cached Dataset has exactly the
#: attributes of the Dataset that was written).
STAMPS = ("nat4xr_cache_format", "nat4xr_cache_key", "nat4xr_cache_options")
#: Group holding the chunk index and the digest.
INDEX_GROUP = "nat4xr"
#: Dimensions stored one entry per chunk; every other dimension is whole in a chunk.
GRID_DIMS = ("stim", "repeat")
#: Compression of filtered chunks (HDF5 built-in filters: any reader decodes them).
COMPRESSION = {"zlib": True, "complevel": 1, "shuffle": True}
#: ``response``'s single-repeat chunks: spike counts compress smaller without the
#: byte shuffle (22 vs 30 kB per 849 x 150 chunk) and then inflate straight to values.
RESPONSE_COMPRESSION = {"zlib": True, "complevel": 1, "shuffle": False}


def chunk_shape(dims: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The stored chunk of a data variable: 1 along :data:`GRID_DIMS`, whole elsewhere.

    Examples
    --------
    >>> chunk_shape(("stim", "neuron", "repeat", "time"), (5, 3, 20, 150))
    (1, 3, 1, 150)
    """
    return tuple(1 if d in GRID_DIMS else max(1, n) for d, n in zip(dims, shape))


def chunk_grid(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Number of chunks along each dimension.

    Examples
    --------
    >>> chunk_grid((5, 3, 20, 150), (1, 3, 1, 150)), chunk_grid((0, 4), (1, 4))
    ((5, 1, 20, 1), (0, 1))
    """
    return tuple(-(-n // c) if n else 0 for n, c in zip(shape, chunks))


def digest(coords: Mapping[str, Any], attrs: Mapping[str, Any]) -> str:
    """SHA-256 over coordinates (name, dims, dtype, values) and attributes, as hex.

    Parameters
    ----------
    coords : mapping of name to xarray.Variable
        The coordinates as read back (in memory).
    attrs : mapping
        Global attributes without the stamps.

    Examples
    --------
    >>> import xarray as xr
    >>> c = {"stim": xr.Variable("stim", np.array(["a", "b"]))}
    >>> digest(c, {"dt": 0.01}) == digest(c, {"dt": 0.01}), digest(c, {}) == digest(c, {"x": 1})
    (True, False)
    """
    h = hashlib.sha256()
    for name in sorted(coords, key=str):
        var = coords[name]
        values = np.asarray(var.values)
        if values.dtype.kind in "OU":
            values = np.asarray(values, dtype=str)
            blob = "\x00".join(values.ravel().tolist()).encode("utf-8", "surrogatepass")
        else:
            blob = np.ascontiguousarray(values).tobytes()
        head = json.dumps([str(name), list(var.dims), values.dtype.str, list(values.shape)])
        h.update(head.encode())
        h.update(len(blob).to_bytes(8, "little"))
        h.update(blob)
        h.update(json.dumps(_plain(dict(var.attrs)), sort_keys=True).encode())
    h.update(json.dumps(_plain(dict(attrs)), sort_keys=True).encode())
    return h.hexdigest()


def _plain(value: Any) -> Any:
    """JSON-able form of an attribute value (numpy scalars and arrays included)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [value.dtype.str, _plain(value.tolist())]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value
