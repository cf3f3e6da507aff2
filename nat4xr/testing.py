"""Helpers for testing code that must stay lazy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dask

__all__ = ["raise_if_dask_computes"]


@contextlib.contextmanager
def raise_if_dask_computes() -> Iterator[None]:
    """Fail with ``AssertionError`` if anything inside the block makes dask compute.

    Installs a dask scheduler that raises, so any ``.compute()``, ``.values``
    or implicit load of a dask-backed array is caught.

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.ones(3)
    >>> with raise_if_dask_computes():
    ...     y = x + 1  # building a graph is fine
    >>> with raise_if_dask_computes():
    ...     y.sum().compute()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    AssertionError: dask computed ...
    """

    def scheduler(dsk, keys, **kwargs):
        raise AssertionError(f"dask computed {str(keys)[:200]} where nothing should compute")

    with dask.config.set(scheduler=scheduler):
        yield
