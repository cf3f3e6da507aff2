"""Byte-exact pieces of the release's files.

Deterministic tar and zip entries (fixed timestamps, so a seed gives the
same bytes), NEMS sidecars and epoch tables, and CSV numbers written in the
real files' fixed-width ``%.18e`` form.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from collections.abc import Iterable
from typing import BinaryIO

import numpy as np
import pandas as pd

from .constants import _FIELD, _MTIME, PRE_STIM_SILENCE, TRIAL_DURATION


class _ChunkReader:
    """File-like ``read(n)`` over an iterator of byte chunks (streams a tar member)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = bytearray()
        self.total = 0

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._chunks)
            except StopIteration:
                break
        if n < 0:
            n = len(self._buf)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self.total += len(out)
        return out

    def exhausted(self) -> bool:
        return not self._buf and next(self._chunks, None) is None


def _tarinfo(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = _MTIME
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    return info


class _TgzWriter:
    """A deterministic ``.tgz`` (fixed timestamps), written to a file-like target."""

    def __init__(self, target: BinaryIO, compresslevel: int) -> None:
        self._gz = gzip.GzipFile(filename="", mode="wb", compresslevel=compresslevel,
                                 fileobj=target, mtime=0)  # fmt: skip
        self._tar = tarfile.open(fileobj=self._gz, mode="w", format=tarfile.PAX_FORMAT)
        self._tar.copybufsize = 1 << 20

    def add_dir(self, name: str) -> None:
        self._tar.addfile(_tarinfo(name, directory=True))

    def add_bytes(self, name: str, data: bytes) -> None:
        self._tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))

    def add_stream(self, name: str, size: int, chunks: Iterable[bytes]) -> None:
        reader = _ChunkReader(chunks)
        self._tar.addfile(_tarinfo(name, size), reader)
        if reader.total != size or not reader.exhausted():
            raise RuntimeError(f"tar member {name}: announced {size} bytes, data differs")

    def close(self) -> None:
        self._tar.close()
        self._gz.close()


def _sidecar(rec: str, sig: str, chans: list[str], fs: int, n: int, kind: str) -> bytes:
    doc = {
        "name": sig,
        "chans": chans,
        "fs": fs,
        "meta": {},
        "recording": rec,
        "segments": [[0, n]],
        "signal_type": f"nems0.signal.{kind}",
    }
    return json.dumps(doc, indent=2).encode()


def _trial_epochs(names: list[str], extra: list[tuple[str, float, float]]) -> bytes:
    """Epoch CSV: per trial TRIAL, REFERENCE, the stim, the two silences; plus ``extra``."""
    rows: list[tuple[str, float, float]] = []
    for i, name in enumerate(names):
        start, end = i * TRIAL_DURATION, (i + 1) * TRIAL_DURATION
        rows += [
            ("TRIAL", start, end),
            ("REFERENCE", start, end),
            (name, start, end),
            ("PreStimSilence", start, start + PRE_STIM_SILENCE),
            ("PostStimSilence", end - PRE_STIM_SILENCE, end),
        ]
    table = pd.DataFrame(rows + extra, columns=["name", "start", "end"])
    table = table.sort_values("start", kind="stable")
    return table.to_csv(index=False, lineterminator="\n").encode()


def _blocks(
    n_trials: int, labels: list[str], rng: np.random.Generator
) -> list[tuple[str, float, float]]:
    """FILE_ epochs spanning contiguous blocks of trials, and an unknown whole-span epoch."""
    n_blocks = min(n_trials, max(1, len(labels)))
    cuts = np.sort(rng.choice(np.arange(1, n_trials), size=n_blocks - 1, replace=False))
    edges = [0, *cuts.tolist(), n_trials]
    out = [
        (f"FILE_{labels[b % len(labels)]}{b + 1:02d}_p_NAT", edges[b] * 1.5, edges[b + 1] * 1.5)
        for b in range(n_blocks)
    ]
    out.append(("PASSIVE_EXPERIMENT", 0.0, n_trials * TRIAL_DURATION))
    return out


def _value_table(max_twentieths: int, last: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-width byte fields for NaN (row 0) and k/20 (row k+1), zero-padded."""
    sep = "\n" if last else ","
    table = np.zeros((max_twentieths + 2, _FIELD), dtype=np.uint8)
    lengths = np.empty(max_twentieths + 2, dtype=np.int64)
    for k in range(-1, max_twentieths + 1):
        text = ("nan" if k < 0 else "%.18e" % (k / 20.0)) + sep
        table[k + 1, : len(text)] = np.frombuffer(text.encode(), dtype=np.uint8)
        lengths[k + 1] = len(text)
    return table, lengths


def _format_twentieths(tw: np.ndarray, tables) -> bytes:
    """CSV text of a (rows, cols) int array of value*20 (-1 = NaN), one row per line."""
    body, last = tables
    out = body[tw + 1]
    out[:, -1] = last[tw[:, -1] + 1]
    if (tw < 0).any():
        return out[out != 0].tobytes()
    return out.tobytes()


def _format_floats(rows: np.ndarray) -> bytes:
    line = ",".join(["%.18e"] * rows.shape[1]) + "\n"
    return "".join(line % tuple(r) for r in rows.astype(np.float64).tolist()).encode()


def _zipinfo(name: str, compress: int = zipfile.ZIP_STORED) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2023, 6, 15, 0, 0, 0))
    info.compress_type = compress
    info.external_attr = (0o40755 if name.endswith("/") else 0o644) << 16
    return info
