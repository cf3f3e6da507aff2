"""Read NEMS recording archives: a ``.tgz`` or the folder it unpacks to.

A NEMS recording (written by the NEMS0 toolbox) holds, per signal ``<sig>``,
a JSON sidecar ``<rec>.<sig>.json``, an epoch table ``<rec>.<sig>.epoch.csv``
and the data: a header-less CSV ``<rec>.<sig>.csv`` (one row per sample, one
column per channel) for rasterized signals, or an HDF5 file
``<rec>.<sig>.h5`` (one dataset of spike times per channel) for point
processes. This module knows nothing of NAT4: it reads what is there.

Archives are read in one streaming pass over the tar members; nothing is
extracted to disk.

Examples
--------
>>> rec = open_recording("A1_NAT4_ozgf.fs100.ch18.tgz", signals={"resp"})  # doctest: +SKIP
>>> rec.signals["resp"].data.shape  # doctest: +SKIP
(88950, 849)
"""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from .errors import FormatError, MissingFileError, Nat4Error

__all__ = ["Recording", "Signal", "epoch_samples", "open_recording"]

RASTERIZED = "rasterized"
POINT = "point"

#: Largest HDF5 member read into memory (bytes); real spike files are a few MB.
MAX_MEMBER_BYTES = 2**29
#: Largest epoch table read (bytes); real ones are well under 10 MB.
MAX_EPOCH_BYTES = 2**28
#: Largest CSV matrix parsed (float32 bytes); the A1 population resp is ~0.3 GB.
MAX_MATRIX_BYTES = 2**32
try:
    from isal.igzip_lib import IsalError as _IsalError
except ImportError:  # ISA-L is optional: the stdlib's gzip reader is used without it
    _IsalError = zlib.error

#: What reading a damaged archive raises, whichever layer notices first.
CORRUPT_ARCHIVE = (tarfile.TarError, EOFError, zlib.error, _IsalError, OSError, zipfile.BadZipFile)

#: Read size of the streaming tar reader (its 10 KiB default costs seconds on GB members).
TAR_BUFSIZE = 1 << 22


@dataclass
class Signal:
    """One signal of a recording.

    Attributes
    ----------
    name : str
        Signal name (``resp``, ``stim``, ...).
    fs : float
        Sampling rate in Hz.
    chans : list of str
        Channel names (cell ids for ``resp``).
    kind : {'rasterized', 'point'}
        Rasterized signals have :attr:`data`; point processes have spike times.
    epochs : DataFrame
        Epoch table with columns ``name``, ``start``, ``end`` (seconds).
    meta : dict
        The sidecar JSON.
    source : str
        Where the signal was read from (used in error messages).
    """

    name: str
    fs: float
    chans: list[str]
    kind: str
    epochs: pd.DataFrame
    meta: dict[str, Any]
    source: str
    data: np.ndarray | None = None
    spikes: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        """Number of samples: the data's length, else the end of the last segment."""
        if self.data is not None:
            return int(self.data.shape[0])
        segments = self.meta.get("segments") or []
        if segments:
            return int(max(int(end) for _, end in segments))
        return int(np.ceil(self.epochs["end"].max() * self.fs)) if len(self.epochs) else 0

    def epoch_samples(self, name: str) -> np.ndarray:
        """``(k, 2)`` int array of ``[start, end)`` sample bounds of every epoch ``name``.

        Raises
        ------
        FormatError
            If an epoch ends past the signal's last sample.

        Examples
        --------
        >>> ep = pd.DataFrame({"name": ["A", "B", "A"], "start": [0, 1.0, 2.0],
        ...                    "end": [1.0, 2.0, 3.0]})
        >>> sig = Signal("resp", 100.0, ["c"], RASTERIZED, ep, {}, "rec",
        ...              data=np.zeros((300, 1), "float32"))
        >>> sig.epoch_samples("A").tolist()
        [[0, 100], [200, 300]]
        """
        index = self.__dict__.get("_epoch_index")
        if index is None:  # built once: looking names up in the DataFrame costs ms each
            index = self.__dict__["_epoch_index"] = epoch_index(self.epochs, self.fs)
        bounds = index.get(name, _NO_EPOCHS)
        if len(bounds) and bounds[:, 1].max() > self.n_samples:
            raise FormatError(
                f"{self.source}: epoch {name!r} ends at sample {int(bounds[:, 1].max())}, past "
                f"the end of signal {self.name!r} ({self.n_samples} samples); the epoch table "
                "and the data do not belong together (re-download the file)"
            )
        return bounds

    def spike_times(self, chan: str) -> np.ndarray:
        """Spike times (seconds) of one channel of a point-process signal."""
        try:
            return self.spikes[chan]
        except KeyError:
            raise FormatError(
                f"{self.source}: no spike-time dataset for channel {chan!r} of signal "
                f"{self.name!r}; the HDF5 file is incomplete (re-download the file)"
            ) from None

    def bin_spikes(
        self,
        starts: np.ndarray,
        n_samples: int,
        factor: int = 1,
        chans: Iterable[str] | None = None,
    ) -> np.ndarray:
        """Spike counts in trials, binned straight from the spike times.

        A spike at time ``t`` falls in sample ``floor(t * fs)`` (the NEMS rule).
        Trial ``k`` covers samples ``starts[k] .. starts[k] + n_samples``; the
        counts are summed in groups of ``factor`` samples.

        Parameters
        ----------
        starts : array of int
            First sample of each trial.
        n_samples : int
            Trial length in samples (a multiple of ``factor``).
        factor : int
            Samples summed into one output bin (10: 1 ms -> 10 ms).
        chans : iterable of str, optional
            Channels to bin (default all), in output order.

        Returns
        -------
        ndarray, float32, shape (len(starts), len(chans), n_samples // factor)

        Examples
        --------
        >>> sig = Signal("resp", 1000.0, ["c"], POINT, pd.DataFrame(), {}, "rec",
        ...              spikes={"c": np.array([0.0005, 0.0095, 0.0105, 1.0])})
        >>> sig.bin_spikes(np.array([0]), 20, factor=10)[0, 0].tolist()
        [2.0, 1.0]
        """
        if n_samples % factor:
            raise ValueError(f"trial length {n_samples} is not a multiple of {factor}")
        chans = list(self.chans if chans is None else chans)
        starts = np.asarray(starts, dtype=np.int64)
        n_out = n_samples // factor
        out = np.zeros((len(starts), len(chans), n_out), dtype=np.float32)
        order = np.argsort(starts, kind="stable")
        sorted_starts = starts[order]
        for j, chan in enumerate(chans):
            samples = np.floor(self.spike_times(chan) * self.fs).astype(np.int64)
            samples.sort()
            lo = np.searchsorted(samples, sorted_starts, side="left")
            hi = np.searchsorted(samples, sorted_starts + n_samples, side="left")
            counts = hi - lo
            if not counts.any():
                continue
            trial = np.repeat(np.arange(len(starts)), counts)
            picks = np.concatenate([samples[a:b] for a, b in zip(lo, hi)])
            offset = (picks - sorted_starts[trial]) // factor
            flat = np.bincount(trial * n_out + offset, minlength=len(starts) * n_out)
            out[order, j, :] = flat.reshape(len(starts), n_out)
        return out


@dataclass
class Recording:
    """A NEMS recording: metadata and signals, all in memory.

    Examples
    --------
    >>> rec = open_recording("rec.tgz")  # doctest: +SKIP
    >>> rec.signals["resp"].chans[:2]  # doctest: +SKIP
    ['ARM029a-04-1', 'ARM029a-07-6']
    """

    name: str
    meta: dict[str, Any]
    signals: dict[str, Signal]
    source: str

    def __getitem__(self, name: str) -> Signal:
        try:
            return self.signals[name]
        except KeyError:
            raise FormatError(
                f"{self.source}: recording has no signal {name!r} "
                f"(it has: {', '.join(sorted(self.signals)) or 'none'})"
            ) from None

    @property
    def epochs(self) -> pd.DataFrame:
        """The epoch table of ``resp`` (or of the first signal that has one)."""
        for name in ("resp", *self.signals):
            if name in self.signals:
                return self.signals[name].epochs
        return pd.DataFrame({"name": [], "start": [], "end": []})


_NO_EPOCHS = np.zeros((0, 2), dtype=np.int64)


def epoch_samples(epochs: pd.DataFrame, name: str, fs: float) -> np.ndarray:
    """``(k, 2)`` int array ``[round(start*fs), round(end*fs))`` of epochs named ``name``.

    Examples
    --------
    >>> ep = pd.DataFrame({"name": ["X"], "start": [0.5], "end": [2.0]})
    >>> epoch_samples(ep, "X", 100).tolist()
    [[50, 200]]
    """
    return epoch_index(epochs, fs).get(name, _NO_EPOCHS)


def epoch_index(epochs: pd.DataFrame, fs: float) -> dict[str, np.ndarray]:
    """Every epoch name -> its ``(k, 2)`` sample bounds, in table order.

    Examples
    --------
    >>> ep = pd.DataFrame({"name": ["A", "B", "A"], "start": [0, 1.0, 2.0], "end": [1.0, 2, 3]})
    >>> {k: v.tolist() for k, v in epoch_index(ep, 10).items()}
    {'A': [[0, 10], [20, 30]], 'B': [[10, 20]]}
    """
    names = epochs["name"].to_numpy(dtype=object)
    bounds = np.round(epochs[["start", "end"]].to_numpy(dtype=np.float64) * fs).astype(np.int64)
    unique, inverse = np.unique(names.astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    splits = np.cumsum(np.bincount(inverse, minlength=len(unique)))[:-1]
    return {
        str(u): b.reshape(-1, 2)
        for u, b in zip(unique, np.split(bounds[order], splits), strict=True)
    }


# -- reading -----------------------------------------------------------------


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
        members = _stream_members(path, source)
    else:
        path = Path(path)
        source = str(path)
        if path.is_dir():
            members = _folder_members(path)
        elif path.is_file():
            members = _archive_members(path)
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
                meta = _read_json(opener, where)
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
                part["json"] = _read_json(opener, where)
                part["json_where"] = where
            elif kind == "epochs":
                part["epochs"] = _read_epochs(opener, where)
            elif kind == "csv":
                part["csv"] = _read_matrix(opener, where, _rows_hint(part.get("json")))
                if part["csv"].nbytes > 2**26:
                    _return_freed_memory()
                part["csv_where"] = where
            elif kind == "h5":
                part["h5"] = (_read_bytes(opener, where), where)
    except Nat4Error:
        raise
    except CORRUPT_ARCHIVE as exc:
        raise FormatError(
            f"{source}: the archive is truncated or corrupt ({_short(exc)}); delete it and "
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
    return Recording(
        rec_name, meta, {s: _make_signal(s, p, source) for s, p in parts.items()}, source
    )


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


Opener = Any  # a zero-argument callable returning a binary file object


def _folder_members(root: Path) -> Iterator[tuple[str, Opener]]:
    for dirpath, dirnames, filenames in os.walk(root):
        if len(Path(dirpath).relative_to(root).parts) >= 2:
            dirnames[:] = []
        dirnames.sort()
        for fn in sorted(filenames):
            full = Path(dirpath) / fn
            yield str(full.relative_to(root)), (lambda full=full: open(full, "rb"))


def _archive_members(path: Path) -> Iterator[tuple[str, Opener]]:
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
        fh.seek(0)
        raw = _gunzip(fh) if gzipped else fh
        try:
            # Random-access mode on the (seekable) gzip reader hands members straight to
            # the parser; the streaming mode copies every byte through Python several times.
            yield from _tar_members(raw, str(path), mode="r:")
        finally:
            raw.close()


def _gunzip(fileobj: IO[bytes]) -> IO[bytes]:
    """A gzip reader over ``fileobj``: ISA-L's when installed (2-3x faster), else the stdlib's."""
    try:
        from isal import igzip
    except ImportError:
        import gzip

        return gzip.GzipFile(fileobj=fileobj, mode="rb")
    return igzip.IGzipFile(fileobj=fileobj, mode="rb")


def _stream_members(fileobj: IO[bytes], source: str) -> Iterator[tuple[str, Opener]]:
    head = fileobj.read(2)
    stream = io.BufferedReader(_Prefixed(head, fileobj), buffer_size=1 << 20)
    if head == b"\x1f\x8b":  # gzip's own reader checks the CRC that tarfile's skips
        yield from _tar_members(_gunzip(stream), source, mode="r|")
    else:
        yield from _tar_members(stream, source, mode="r|*")


def _tar_members(raw: IO[bytes], source: str, mode: str) -> Iterator[tuple[str, Opener]]:
    """Stream the regular-file members of a tar archive, in order, without extracting."""
    try:
        with tarfile.open(fileobj=raw, mode=mode, bufsize=TAR_BUFSIZE) as tar:
            for member in tar:
                if not member.isfile():
                    continue  # links, devices, folders: never followed
                fobj = tar.extractfile(member)
                yield member.name, (lambda fobj=fobj: fobj)
            # Checksums (gzip CRC, zip member CRC) are verified only at the end of the
            # stream, past the tar's end marker: read on to it so corruption is reported.
            while raw.read(1 << 20):
                pass
    except CORRUPT_ARCHIVE as exc:
        raise FormatError(
            f"{source}: the archive is truncated or corrupt ({_short(exc)}); delete it and "
            "fetch it again (download=True)"
        ) from exc


def _read_bytes(opener: Opener, where: str, limit: int | None = None) -> bytes:
    limit = MAX_MEMBER_BYTES if limit is None else limit
    # In pieces: read(limit + 1) would allocate the whole limit up front.
    pieces, n = [], 0
    with opener() as fh:
        while n <= limit:
            piece = fh.read(min(1 << 22, limit + 1 - n))
            if not piece:
                break
            pieces.append(piece)
            n += len(piece)
    data = b"".join(pieces)
    if len(data) > limit:
        raise FormatError(f"{where}: member larger than {limit} bytes; refusing to read it")
    return data


def _read_json(opener: Opener, where: str) -> dict[str, Any]:
    raw = _read_bytes(opener, where, limit=64 * 2**20)
    try:
        value = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSON syntax
        raise FormatError(f"{where}: not valid JSON ({_short(exc)})") from exc
    if not isinstance(value, dict):
        raise FormatError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _read_epochs(opener: Opener, where: str) -> pd.DataFrame:
    """Epoch table sorted by start time, exact duplicate rows dropped."""
    raw = _read_bytes(opener, where, limit=MAX_EPOCH_BYTES)
    try:
        table = pd.read_csv(io.BytesIO(raw), dtype={"name": str}, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise FormatError(f"{where}: unreadable epoch table ({exc})") from exc
    missing = {"name", "start", "end"} - set(table.columns)
    if missing:
        raise FormatError(
            f"{where}: epoch table lacks column(s) {', '.join(sorted(missing))} "
            f"(has {', '.join(map(str, table.columns))})"
        )
    try:
        start = pd.to_numeric(table["start"]).to_numpy(np.float64)
        end = pd.to_numeric(table["end"]).to_numpy(np.float64)
    except (ValueError, TypeError) as exc:
        raise FormatError(f"{where}: non-numeric epoch times ({exc})") from exc
    if not (np.isfinite(start).all() and np.isfinite(end).all()) or (end < start).any():
        raise FormatError(f"{where}: epoch times must be finite with end >= start")
    if (start < 0).any():
        raise FormatError(f"{where}: negative epoch start time {start.min()!r}")
    out = pd.DataFrame({"name": table["name"].astype(str).to_numpy(), "start": start, "end": end})
    # Repeats are numbered in playing order; a row listed twice is one epoch, not two.
    out = out.drop_duplicates().sort_values("start", kind="stable")
    return out.reset_index(drop=True)


def _read_matrix(opener: Opener, where: str, rows_hint: int | None = None) -> np.ndarray:
    """A header-less numeric CSV as a float32 ``(rows, cols)`` array ('nan' = NaN)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return _read_matrix_pandas(opener, where)
    return _read_matrix_arrow(opener, where, rows_hint)


def _read_matrix_arrow(opener: Opener, where: str, rows_hint: int | None) -> np.ndarray:
    """Parse with pyarrow's streaming reader, batch by batch, into one float32 array.

    With ``rows_hint`` (from the sidecar's segments) the output is allocated
    once and filled in place, so peak memory stays near the result's size.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv

    with opener() as fh:
        head = fh.read(1 << 20)
        n_cols = _count_columns(head, where)
        if n_cols is None:
            return np.zeros((0, 0), dtype=np.float32)
        names = [f"c{i}" for i in range(n_cols)]
        max_rows = MAX_MATRIX_BYTES // (4 * n_cols)
        if rows_hint and rows_hint <= max_rows:
            try:
                out = np.empty((rows_hint, n_cols), dtype=np.float32)
            except MemoryError:  # an implausible hint: collect pieces instead
                out = None
        else:
            out = None
        pieces: list[np.ndarray] = []
        filled = 0
        try:
            reader = pcsv.open_csv(
                _Prefixed(head, fh),
                read_options=pcsv.ReadOptions(column_names=names, block_size=1 << 23),
                # Only 'nan' means missing: an empty or 'NA' field is an error, not NaN.
                convert_options=pcsv.ConvertOptions(
                    column_types=dict.fromkeys(names, pa.float32()), null_values=[]
                ),
            )
            for batch in reader:
                block = np.asarray(batch.to_tensor(null_to_nan=True, row_major=True))
                n = block.shape[0]
                if filled + n > (rows_hint or max_rows):
                    raise FormatError(
                        f"{where}: more than {rows_hint or max_rows} rows "
                        + ("(the sidecar's segments)" if rows_hint else "(size limit)")
                        + "; the data and its sidecar do not belong together"
                    )
                if out is not None and filled + n <= out.shape[0]:
                    out[filled : filled + n] = block
                else:
                    if out is not None:  # the hint was short: collect pieces instead
                        pieces.append(out[:filled])
                        out = None
                    pieces.append(block)
                filled += n
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise FormatError(f"{where}: not a numeric CSV matrix ({_short(exc)})") from exc
    if out is not None:
        return out[:filled]
    return np.concatenate(pieces) if pieces else np.zeros((0, n_cols), dtype=np.float32)


def _read_matrix_pandas(opener: Opener, where: str) -> np.ndarray:
    with opener() as fh:
        head = fh.read(1 << 20)
        n_cols = _count_columns(head, where)
        if n_cols is None:
            return np.zeros((0, 0), dtype=np.float32)
        try:
            frame = pd.read_csv(
                io.BufferedReader(_Prefixed(head, fh)),
                header=None,
                names=range(n_cols),
                dtype=np.float32,
                engine="c",
                keep_default_na=False,
                na_values=["nan", "NaN", "-nan"],
            )
        except (ValueError, pd.errors.ParserError) as exc:
            raise FormatError(f"{where}: not a numeric CSV matrix ({_short(exc)})") from exc
    return frame.to_numpy(dtype=np.float32)


def _return_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps the parser's buffers otherwise).

    After parsing a large CSV, glibc holds on to a few hundred MB of freed read
    buffers, which would add to every later peak of the build. Elsewhere a no-op.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rows_hint(sidecar: dict[str, Any] | None) -> int | None:
    """Samples promised by a sidecar's segments (None when unknown or implausible)."""
    try:
        n = _segments_end((sidecar or {}).get("segments"), "")
    except FormatError:
        return None
    return n if n is not None and 0 < n < 2**28 else None


def _segments_end(segments: Any, where: str) -> int | None:
    """Last sample of a sidecar's ``segments`` (None when absent or empty)."""
    if segments is None or segments == []:
        return None
    ok = isinstance(segments, list) and all(
        isinstance(seg, list)
        and len(seg) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in seg)
        and 0 <= seg[0] <= seg[1]
        for seg in segments
    )
    if not ok:
        raise FormatError(
            f"{where}: 'segments' must be a list of [start, end] sample pairs, got "
            f"{str(segments)[:80]}"
        )
    return max(end for _, end in segments)


def _count_columns(head: bytes, where: str) -> int | None:
    """Columns of the first line (None for an empty file)."""
    if not head.strip():
        return None
    if b"\n" not in head and len(head) >= 1 << 20:
        raise FormatError(f"{where}: first line longer than 1 MiB; not a NEMS CSV")
    return head.split(b"\n", 1)[0].count(b",") + 1


class _Prefixed(io.RawIOBase):
    """A read-only stream: ``head`` followed by the rest of ``fh``."""

    def __init__(self, head: bytes, fh: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._fh = fh

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if len(self._head):
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._fh.readinto(b)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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
    n_declared = _segments_end(sidecar.get("segments"), where)
    epochs = part.get("epochs")
    if epochs is None:
        raise FormatError(f"{source}: signal {name!r} has no epoch table ({name}.epoch.csv)")
    signal_type = str(sidecar.get("signal_type", "RasterizedSignal"))
    if "PointProcess" in signal_type or ("h5" in part and "csv" not in part):
        if "h5" not in part:
            raise FormatError(f"{source}: point-process signal {name!r} has no .h5 data file")
        spikes = _read_spikes(*part["h5"], chans)
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


def _read_spikes(raw: bytes, where: str, chans: list[str]) -> dict[str, np.ndarray]:
    import h5py

    budget = MAX_MEMBER_BYTES  # compressed datasets can inflate far beyond the file
    try:
        with h5py.File(io.BytesIO(raw), "r") as h5:
            spikes = {}
            for chan in chans:
                node = h5.get(chan)
                if node is None:
                    continue  # reported on use, naming the channel
                if not isinstance(node, h5py.Dataset) or node.dtype.kind not in "iuf":
                    raise FormatError(
                        f"{where}: {chan!r} is not a numeric dataset of spike times "
                        f"({type(node).__name__}, {getattr(node, 'dtype', None)})"
                    )
                budget -= 8 * node.size
                if budget < 0:
                    raise FormatError(
                        f"{where}: spike-time datasets hold more than "
                        f"{MAX_MEMBER_BYTES // 8} values; refusing to read them"
                    )
                values = np.asarray(node[()], dtype=np.float64).ravel()
                if not np.isfinite(values).all():
                    raise FormatError(f"{where}: non-finite spike times for channel {chan!r}")
                spikes[chan] = values
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        if isinstance(exc, FormatError):
            raise
        raise FormatError(f"{where}: not a readable HDF5 file ({_short(exc)})") from exc
    return spikes
