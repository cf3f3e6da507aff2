"""The cache file format in one place: layout, writer, checked chunk reader, backend engine.

- :mod:`~nat4xr.cachefile.layout`: what a file holds (format version, chunking,
  the chunk index, the digest).
- :mod:`~nat4xr.cachefile.writer`: :func:`write_cache` (atomic, locked).
- :mod:`~nat4xr.cachefile.trailer`: the checked trailer after HDF5's last
  byte (chunk index, CRC-32 of the metadata), :func:`is_cache_file`,
  :func:`read_stamp`.
- :mod:`~nat4xr.cachefile.chunks`: the chunk index and the memory-mapped,
  CRC-checked chunk reader.
- :mod:`~nat4xr.cachefile.arrays`: the lazy ``BackendArray`` and the
  :class:`CacheSource` handle.
- :mod:`~nat4xr.cachefile.reading`: :func:`open_cache` (checks, coordinates,
  dask chunking).
- :mod:`~nat4xr.cachefile.backend`: the ``nat4`` xarray backend engine.

Nothing here knows of releases, downloads or synthetic data.
"""

from .arrays import CacheArray, CacheSource
from .chunks import ChunkFile, ChunkIndex
from .layout import CACHE_FORMAT
from .reading import open_cache
from .trailer import is_cache_file, read_stamp
from .writer import write_cache

__all__ = [
    "CACHE_FORMAT",
    "CacheArray",
    "CacheSource",
    "ChunkFile",
    "ChunkIndex",
    "is_cache_file",
    "open_cache",
    "read_stamp",
    "write_cache",
]
