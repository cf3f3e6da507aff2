"""Parsers of the members of a NEMS recording, one kind of file each.

JSON (the sidecars and the recording's meta), epoch tables, header-less CSV
matrices (pyarrow's CSV reader, a required dependency) and HDF5 files
of spike times. Each reads at most a fixed number of bytes (the ``MAX_*``
limits), so a damaged or hostile archive cannot fill memory, and each
raises :class:`~nat4xr.errors.FormatError` naming the member.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from ..archives import Opener
from ..errors import FormatError, first_line

__all__ = [
    "MAX_EPOCH_BYTES",
    "MAX_MATRIX_BYTES",
    "MAX_MEMBER_BYTES",
    "read_bytes",
    "read_epochs",
    "read_json",
    "read_matrix",
    "read_spikes",
    "return_freed_memory",
    "segments_end",
    "sidecar_rows",
]

#: Largest HDF5 member read into memory (bytes); real spike files are a few MB.
MAX_MEMBER_BYTES = 2**29
#: Largest epoch table read (bytes); real ones are well under 10 MB.
MAX_EPOCH_BYTES = 2**28
#: Largest CSV matrix parsed (float32 bytes); the A1 population resp is ~0.3 GB.
MAX_MATRIX_BYTES = 2**32


def read_bytes(opener: Opener, where: str, limit: int | None = None) -> bytes:
    """A member's bytes, refusing one larger than ``limit`` (:data:`MAX_MEMBER_BYTES`)."""
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


def read_json(opener: Opener, where: str) -> dict[str, Any]:
    """A JSON object (an empty member reads as ``{}``)."""
    raw = read_bytes(opener, where, limit=64 * 2**20)
    try:
        value = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSON syntax
        raise FormatError(f"{where}: not valid JSON ({first_line(exc)})") from exc
    if not isinstance(value, dict):
        raise FormatError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def read_epochs(opener: Opener, where: str) -> pd.DataFrame:
    """Epoch table sorted by start time, exact duplicate rows dropped."""
    raw = read_bytes(opener, where, limit=MAX_EPOCH_BYTES)
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


def read_matrix(opener: Opener, where: str, rows_hint: int | None = None) -> np.ndarray:
    """A header-less numeric CSV as a float32 ``(rows, cols)`` array ('nan' = NaN)."""
    return _read_matrix_arrow(opener, where, rows_hint)


#: Bytes of CSV text parsed at once; the text is read into one reused buffer.
_TEXT_BYTES = 1 << 24
#: Bytes asked of the stream per read (small reads keep the allocator's heaps small).
_READ_BYTES = 1 << 20


def _read_matrix_arrow(opener: Opener, where: str, rows_hint: int | None) -> np.ndarray:
    """Parse with pyarrow, a few MB of whole lines at a time, into one float32 array.

    The text is read into one reused buffer and each piece, cut at its last
    line end, is parsed (on pyarrow's threads) and copied into the output.
    With ``rows_hint`` (from the sidecar's segments) the output is allocated
    once and filled in place, so peak memory stays near the result's size:
    no parsed table of the whole file, no freed read buffers held by the
    allocator of a reading thread.
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
        limit = rows_hint or max_rows
        out = None
        if rows_hint and rows_hint <= max_rows:
            try:
                out = np.empty((rows_hint, n_cols), dtype=np.float32)
            except MemoryError:  # an implausible hint: collect pieces instead
                out = None
        pieces: list[np.ndarray] = []
        filled = 0
        read_options = pcsv.ReadOptions(column_names=names, block_size=1 << 22)
        # Only 'nan' means missing: an empty or 'NA' field is an error, not NaN.
        convert_options = pcsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.float32()), null_values=[]
        )
        try:
            for text in _line_pieces(head, fh, where):
                table = pcsv.read_csv(
                    pa.BufferReader(pa.py_buffer(text)),
                    read_options=read_options,
                    convert_options=convert_options,
                )
                if filled + table.num_rows > limit:
                    raise FormatError(
                        f"{where}: more than {limit} rows "
                        + ("(the sidecar's segments)" if rows_hint else "(size limit)")
                        + "; the data and its sidecar do not belong together"
                    )
                for batch in table.to_batches():
                    block = np.asarray(batch.to_tensor(null_to_nan=True, row_major=True))
                    n = block.shape[0]
                    if out is not None and filled + n <= out.shape[0]:
                        out[filled : filled + n] = block
                    else:
                        if out is not None:  # the hint was short: collect pieces instead
                            pieces.append(out[:filled])
                            out = None
                        pieces.append(block)
                    filled += n
                del table
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise FormatError(f"{where}: not a numeric CSV matrix ({first_line(exc)})") from exc
    if out is not None:
        return out[:filled]
    return np.concatenate(pieces) if pieces else np.zeros((0, n_cols), dtype=np.float32)


def _line_pieces(head: bytes, fh: Any, where: str) -> Iterator[memoryview]:
    """``head`` and the rest of ``fh`` in pieces of whole lines, read into one reused buffer.

    Each piece is valid until the next is asked for. A piece ends after its
    last newline; the last one holds whatever follows the stream's last newline.
    """
    size = max(_TEXT_BYTES, len(head))
    buf = bytearray(size)
    view = memoryview(buf)
    view[: len(head)] = head
    n = len(head)
    while True:
        while n < size:
            got = fh.readinto(view[n : min(size, n + _READ_BYTES)])
            if not got:
                break
            n += got
        if n < size:  # the end of the stream
            if n:
                yield view[:n]
            return
        cut = buf.rfind(b"\n", 0, n) + 1
        if cut == 0:
            raise FormatError(f"{where}: a line longer than {size} bytes; not a NEMS CSV")
        yield view[:cut]
        view[: n - cut] = view[cut:n]
        n -= cut


def return_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps the parser's buffers otherwise).

    After parsing a large CSV, glibc holds on to a few hundred MB of freed read
    buffers, which would add to every later peak of the build. Elsewhere a no-op.
    """
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except ImportError:
        pass
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def sidecar_rows(sidecar: dict[str, Any] | None) -> int | None:
    """Samples promised by a sidecar's segments (None when unknown or implausible)."""
    try:
        n = segments_end((sidecar or {}).get("segments"), "")
    except FormatError:
        return None
    return n if n is not None and 0 < n < 2**28 else None


def segments_end(segments: Any, where: str) -> int | None:
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


def read_spikes(raw: bytes, where: str, chans: list[str]) -> dict[str, np.ndarray]:
    """Spike times (float64 seconds) of ``chans`` from an HDF5 file's bytes, one dataset each."""
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
        raise FormatError(f"{where}: not a readable HDF5 file ({first_line(exc)})") from exc
    return spikes
