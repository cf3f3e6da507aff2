"""Read NEMS recording archives: a ``.tgz`` or the folder it unpacks to.

A NEMS recording (written by the NEMS0 toolbox) holds, per signal ``<sig>``,
a JSON sidecar ``<rec>.<sig>.json``, an epoch table ``<rec>.<sig>.epoch.csv``
and the data: a header-less CSV ``<rec>.<sig>.csv`` (one row per sample, one
column per channel) for rasterized signals, or an HDF5 file
``<rec>.<sig>.h5`` (one dataset of spike times per channel) for point
processes. This package knows nothing of NAT4: it reads what is there.

Archives are read in one streaming pass over the tar members; nothing is
extracted to disk.

The modules: :mod:`~nat4xr.nems.recording` (:func:`open_recording`),
:mod:`~nat4xr.nems.signals` (:class:`Recording`, :class:`Signal`, spike
binning), :mod:`~nat4xr.nems.epochs` (epoch tables to sample bounds) and
:mod:`~nat4xr.nems.parsers` (one parser per member kind, with the size
limits ``MAX_MEMBER_BYTES``, ``MAX_EPOCH_BYTES`` and ``MAX_MATRIX_BYTES``,
which may be set on this package).

Examples
--------
>>> rec = open_recording("A1_NAT4_ozgf.fs100.ch18.tgz", signals={"resp"})  # doctest: +SKIP
>>> rec.signals["resp"].data.shape  # doctest: +SKIP
(88950, 849)
"""

from __future__ import annotations

import sys
import types

from .. import archives as _archives
from ..archives import CORRUPT_ARCHIVE as CORRUPT_ARCHIVE
from ..archives import TAR_BUFSIZE as TAR_BUFSIZE
from . import parsers as _parsers
from .epochs import epoch_index as epoch_index
from .epochs import epoch_samples
from .parsers import MAX_EPOCH_BYTES as MAX_EPOCH_BYTES
from .parsers import MAX_MATRIX_BYTES as MAX_MATRIX_BYTES
from .parsers import MAX_MEMBER_BYTES as MAX_MEMBER_BYTES
from .recording import open_recording
from .signals import POINT as POINT
from .signals import RASTERIZED as RASTERIZED
from .signals import Recording, Signal

__all__ = ["Recording", "Signal", "epoch_samples", "open_recording"]

# Setting one of these on the package sets it where the readers look it up.
_SETTINGS: dict[str, types.ModuleType] = {
    "MAX_MEMBER_BYTES": _parsers,
    "MAX_EPOCH_BYTES": _parsers,
    "MAX_MATRIX_BYTES": _parsers,
    "TAR_BUFSIZE": _archives,
}


class _Package(types.ModuleType):
    """``nat4xr.nems`` itself: forwards the size limits to the modules that use them."""

    def __setattr__(self, name: str, value: object) -> None:
        owner = _SETTINGS.get(name)
        if owner is not None:
            setattr(owner, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
