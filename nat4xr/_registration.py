"""Register the ``.nat4`` accessor as soon as xarray exists, without importing it first.

``import nat4xr`` must make ``ds.nat4`` work, but must not cost the import of
xarray and pandas (a third of a second) when nothing needs them, as in
``nat4xr --help``. A Dataset cannot exist before xarray is imported, so
registering the accessor right after xarray's own import is as good as
registering it at once: :func:`register_accessor` does it now when xarray
is already loaded, else it asks the import system to run it when xarray has
been loaded (a finder that steps aside for every other module, and for xarray
once).

Examples
--------
>>> import sys, xarray as xr
>>> register_accessor()  # xarray is loaded: registers now
>>> hasattr(xr.Dataset(), "nat4")
True
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

__all__ = ["register_accessor"]

_ACCESSOR = "nat4xr.accessor"


def register_accessor() -> None:
    """Import :mod:`nat4xr.accessor` now if xarray is loaded, else right after xarray is."""
    if "xarray" in sys.modules:
        importlib.import_module(_ACCESSOR)
    elif not any(isinstance(f, _AfterXarray) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterXarray())


class _AfterXarray(importlib.abc.MetaPathFinder):
    """Finds nothing itself: lets the other finders find xarray, then registers after it loads.

    It stays in :data:`sys.meta_path` until xarray has really been executed: a
    spec asked for and thrown away (``importlib.util.find_spec("xarray")``,
    the usual check for an optional dependency) changes nothing.
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "xarray" or "xarray" in sys.modules:
            return None
        sys.meta_path.remove(self)  # let the real finders answer, without asking us again
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module
        finder = self

        def exec_module(module: Any) -> None:
            load(module)
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)  # xarray is loaded: once only
            importlib.import_module(_ACCESSOR)

        spec.loader.exec_module = exec_module  # this spec's own loader, made for this import
        return spec
