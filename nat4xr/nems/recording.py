"""Open one NEMS recording: a ``.tgz``, the folder it unpacks to, or an archive stream.

:func:`open_recording` walks the members once (see :mod:`nat4xr.archives`),
hands each wanted one to its parser (:mod:`nat4xr.nems.parsers`) and checks
that the pieces of every signal belong together.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from ..archives import CORRUPT_ARCHIVE, folder_members, stream_members, tar_members
from ..errors import FormatError, MissingFileError, Nat4Error, first_line
from .parsers import (
    read_bytes,
    read_epochs,
    read_json,
    read_matrix,
    read_spikes,
    return_freed_memory,
    segments_end,
    sidecar_rows,
)
from .signals import POINT, RASTERIZED, Recording, Signal

__all__ = ["open_recording"]


def open_recording(
    path: str | os.PathLike | IO[bytes],
    signals: Iterable[str] | None = None,
    *,
    label: str | None = None,
) -> Recording:
    """Read a NEMS recording from a ``.tgz`` archive, a folder, or an open archive stream.

    Parameters
    ----------
    path : path-like or binary file object
        The archive, the folder it unpacks to (the files may sit one or two
        folder levels down), or a readable stream of the (gzipped) archive,
        e.g. a member of a zip file.
    signals : iterable of str, optional
        Signals to read (default: all). Others are skipped without parsing.
    label : str, optional
        Name used in error messages when ``path`` is a stream.

    Returns
    -------
    Recording

    Raises
    ------
    MissingFileError
        ``path`` does not exist.
    FormatError
        The archive is truncated or corrupt, or a member does not follow the
        NEMS layout; the message names the member.

    Examples
    --------
    >>> rec = open_recording("/data/NAT4/A1_NAT4_ozgf.fs100.ch18.tgz", {"resp"})  # doctest: +SKIP
    """
    wanted = None if signals is None else set(signals)
    if hasattr(path, "read"):
        source = label or str(getattr(path, "name", "<stream>"))
        members = stream_members(path, source)
    else:
        path = Path(path)
        source = str(path)
        if path.is_dir():
            members = folder_members(path)
        elif path.is_file():
            members = tar_members(path)
        else:
            raise MissingFileError(f"{path}: no such NEMS recording (file or folder)")
    parts: dict[str, dict[str, Any]] = {}
    meta: dict[str, Any] = {}
    rec_name = Path(source).name.removesuffix(".tgz").removesuffix(".tar.gz")
    n_members = 0
    try:
        for name, opener in members:
            n_members += 1
            base = name.rsplit("/", 1)[-1]
            where = f"{source}:{name}"
            if base.endswith(".meta.json"):
                meta = read_json(opener, where)
                rec_name = base.removesuffix(".meta.json")
                continue
            kind, sig = _classify(base)
            if kind is None or (wanted is not None and sig not in wanted):
                continue
            part = parts.setdefault(sig, {})
            if kind in part:  # a second copy would silently replace the first
                raise FormatError(
                    f"{where}: a second {kind} member for signal {sig!r} (the first was "
                    f"{part.get(kind + '_where', 'read earlier')}); the archive is not a "
                    "single NEMS recording"
                )
            part[kind + "_where"] = where
            if kind == "json":
                part["json"] = read_json(opener, where)
                part["json_where"] = where
            elif kind == "epochs":
                part["epochs"] = read_epochs(opener, where)
            elif kind == "csv":
                part["csv"] = read_matrix(opener, where, sidecar_rows(part.get("json")))
                return_freed_memory()  # before the next member adds its own peak
                part["csv_where"] = where
            elif kind == "h5":
                part["h5"] = (read_bytes(opener, where), where)
    except Nat4Error:
        raise
    except CORRUPT_ARCHIVE as exc:
        raise FormatError(
            f"{source}: the archive is truncated or corrupt ({first_line(exc)}); delete it and "
            "fetch it again (download=True)"
        ) from exc
    if n_members == 0:
        raise FormatError(f"{source}: holds no NEMS recording files")
    missing = sorted((wanted or set()) - set(parts))
    if missing:
        raise FormatError(
            f"{source}: no signal {', '.join(map(repr, missing))} in this recording "
            f"(found: {', '.join(sorted(parts)) or 'none'})"
        )
    recording = Recording(
        rec_name, meta, {s: _make_signal(s, p, source) for s, p in parts.items()}, source
    )
    return_freed_memory()  # the archive's buffers, the HDF5 bytes
    return recording


def _classify(base: str) -> tuple[str | None, str]:
    """(kind, signal name) of a member's file name; the signal name holds no dot."""
    if base.endswith(".epoch.csv"):
        pieces = base.rsplit(".", 3)
        return ("epochs", pieces[-3]) if len(pieces) == 4 else (None, "")
    for ext, kind in ((".csv", "csv"), (".json", "json"), (".h5", "h5"), (".hdf5", "h5")):
        if base.endswith(ext):
            pieces = base.rsplit(".", 2)
            return (kind, pieces[-2]) if len(pieces) == 3 else (None, "")
    return None, ""


def _make_signal(name: str, part: dict[str, Any], source: str) -> Signal:
    where = part.get("json_where", f"{source} (signal {name!r})")
    if "json" not in part:
        raise FormatError(f"{source}: signal {name!r} has data but no JSON sidecar")
    sidecar = part["json"]
    chans = sidecar.get("chans")
    fs = sidecar.get("fs")
    if not isinstance(chans, list) or fs is None:
        raise FormatError(f"{where}: sidecar needs 'chans' (a list) and 'fs'")
    if not all(isinstance(c, str) for c in chans):
        bad = next(c for c in chans if not isinstance(c, str))
        raise FormatError(f"{where}: channel names must be strings, got {bad!r}")
    try:
        if isinstance(fs, bool):
            raise TypeError
        fs = float(fs)
    except (TypeError, ValueError, OverflowError):
        raise FormatError(f"{where}: 'fs' is not a number ({fs!r})") from None
    if not (fs > 0 and math.isfinite(fs)):
        raise FormatError(f"{where}: 'fs' must be a positive number ({fs!r})")
    n_declared = segments_end(sidecar.get("segments"), where)
    epochs = part.get("epochs")
    if epochs is None:
        raise FormatError(f"{source}: signal {name!r} has no epoch table ({name}.epoch.csv)")
    signal_type = str(sidecar.get("signal_type", "RasterizedSignal"))
    if "PointProcess" in signal_type or ("h5" in part and "csv" not in part):
        if "h5" not in part:
            raise FormatError(f"{source}: point-process signal {name!r} has no .h5 data file")
        spikes = read_spikes(*part["h5"], chans)
        return Signal(name, fs, chans, POINT, epochs, sidecar, where, spikes=spikes)
    if "csv" not in part:
        raise FormatError(f"{source}: rasterized signal {name!r} has no .csv data file")
    data = part["csv"]
    if data.shape[1] != len(chans):
        raise FormatError(
            f"{part['csv_where']}: {data.shape[1]} columns but the sidecar lists "
            f"{len(chans)} channels; the files do not belong together (re-download)"
        )
    if n_declared is not None and data.shape[0] != n_declared:
        raise FormatError(
            f"{part['csv_where']}: {data.shape[0]} rows but the sidecar's segments end at "
            f"sample {n_declared}; the files do not belong together (re-download)"
        )
    return Signal(name, fs, chans, RASTERIZED, epochs, sidecar, where, data=data)
