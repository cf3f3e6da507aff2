"""The ``nat4`` xarray backend engine: ``xr.open_dataset(cache_file, engine="nat4")``.

Registered through the ``xarray.backends`` entry point. The result is the
Dataset :func:`nat4xr.open_nat4` returns with ``chunks=None``: coordinates in
memory (checked against the file's digest), data variables lazily indexed and
read from a memory map of the file, chunk by chunk, with every chunk's
CRC-32 checked. Pass ``chunks=`` to get dask arrays over the same reader.

Examples
--------
>>> import tempfile, xarray as xr, nat4xr
>>> from pathlib import Path
>>> from nat4xr.cachefile import write_cache
>>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=2, n_neurons=4)
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = write_cache(ds, Path(tmp) / "demo.nc")
...     with xr.open_dataset(path, engine="nat4") as lazy:
...         same = lazy.isel(stim=[4, 0]).response.equals(ds.response.isel(stim=[4, 0]))
>>> same
True
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import xarray as xr
from xarray.backends import BackendEntrypoint

__all__ = ["Nat4BackendEntrypoint"]


class Nat4BackendEntrypoint(BackendEntrypoint):
    """Open nat4xr cache files (``*.nc`` written by :func:`nat4xr.cachefile.write_cache`)."""

    description = "nat4xr cache files: lazy, memory-mapped, checksummed NAT4 Datasets"
    url = "https://doi.org/10.5281/zenodo.8044773"
    open_dataset_parameters = ("filename_or_obj", "drop_variables")

    def open_dataset(
        self,
        filename_or_obj: str | os.PathLike | Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
    ) -> xr.Dataset:
        from .reading import open_store

        if not isinstance(filename_or_obj, (str, os.PathLike)):
            raise TypeError("the nat4 engine opens cache files by path")
        return open_store(filename_or_obj, drop_variables=drop_variables)

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """Never guessed: a cache file is also plain netCDF, which other engines open."""
        return False
