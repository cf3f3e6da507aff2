"""nat4xr: the NAT4 auditory-cortex dataset as a labeled, lazy xarray Dataset.

Importing :mod:`nat4xr` registers the ``.nat4`` Dataset accessor (at once
when xarray is loaded, else as soon as it is) and imports nothing heavy: the
functions below, and submodules such as :mod:`nat4xr.synthetic` or
:mod:`nat4xr.torch`, are imported on first use.

Examples
--------
>>> import nat4xr
>>> ds = nat4xr.synthetic.random_dataset(n_est=4, n_val=2, n_neurons=3)
>>> ds.sizes["stim"]
6
"""

from __future__ import annotations

import importlib as _importlib
import sys as _sys
import types as _types
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from ._registration import register_accessor as _register_accessor
from ._version import __version__

_register_accessor()  # ds.nat4, without importing xarray (pandas) for those who never use it


class _Package(_types.ModuleType):
    """This package's module type: the function :func:`concat` keeps its name.

    The function shares its module's name, and the import system binds every
    submodule it imports to the package's attribute of that name; here the
    function wins, so ``nat4xr.concat`` is the function however the module
    ``nat4xr.concat`` was imported.
    """

    def __setattr__(self, name: str, value: _Any) -> None:
        if name == "concat" and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package

if _TYPE_CHECKING:
    from .cachedir import cache_dir, data_dir
    from .cachefile import open_cache
    from .comparison import compare, leaderboard, significant
    from .concat import concat
    from .errors import (
        CacheError,
        DownloadError,
        FormatError,
        MissingFileError,
        Nat4Error,
        Nat4Warning,
    )
    from .evaluation import evaluate
    from .lagged import design
    from .opening import open_demo, open_nat4
    from .schema import check_dataset, make_dataset
    from .waveform import add_waveforms

#: Public name -> the submodule that defines it, imported on first access.
_LAZY: dict[str, str] = {
    "CacheError": "errors",
    "DownloadError": "errors",
    "FormatError": "errors",
    "MissingFileError": "errors",
    "Nat4Error": "errors",
    "Nat4Warning": "errors",
    "add_waveforms": "waveform",
    "cache_dir": "cachedir",
    "check_dataset": "schema",
    "compare": "comparison",
    "concat": "concat",
    "data_dir": "cachedir",
    "design": "lagged",
    "evaluate": "evaluation",
    "leaderboard": "comparison",
    "make_dataset": "schema",
    "open_cache": "cachefile",
    "open_demo": "opening",
    "open_nat4": "opening",
    "significant": "comparison",
}

#: Submodules reachable as attributes (``nat4xr.synthetic.write_release``).
_SUBMODULES = frozenset(
    {
        "accelerated",
        "accessor",
        "archives",
        "batches",
        "build",
        "cachedir",
        "cachefile",
        "cli",
        "comparison",
        "errors",
        "evaluation",
        "fetch",
        "files",
        "filters",
        "lagged",
        "metrics",
        "models",
        "nems",
        "neurons",
        "opening",
        "peer_metrics",
        "plot",
        "release",
        "schema",
        "selection",
        "splits",
        "synthetic",
        "testing",
        "torch",
        "waveform",
    }
)

__all__ = [
    "CacheError",
    "DownloadError",
    "FormatError",
    "MissingFileError",
    "Nat4Error",
    "Nat4Warning",
    "__version__",
    "add_waveforms",
    "cache_dir",
    "check_dataset",
    "compare",
    "concat",
    "data_dir",
    "design",
    "evaluate",
    "leaderboard",
    "make_dataset",
    "open_cache",
    "open_demo",
    "open_nat4",
    "significant",
]


def __getattr__(name: str) -> _Any:
    """Import a public function, class or submodule on first access (PEP 562)."""
    if name in _LAZY:
        value = getattr(_importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = _importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *_SUBMODULES})
