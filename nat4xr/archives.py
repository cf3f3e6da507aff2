"""Members of a release source: a folder, a tar(.gz) archive or stream, or a zip.

The release ships recordings as ``.tgz`` archives, some of them inside a
``.zip``, and users may unpack either. Readers here hand out members one at
a time as ``(name, opener)`` pairs (``opener()`` returns a binary file
object), never extracting to disk, and turn damage into a
:class:`~nat4xr.errors.FormatError` naming the file.

Tar archives are read in one streaming pass; gzip is inflated by ISA-L when
installed (the stdlib otherwise). Every stream is read to its end, so the
gzip and zip checksums, which sit past the tar's end marker, are verified.

Examples
--------
>>> import io, tarfile
>>> buf = io.BytesIO()
>>> with tarfile.open(fileobj=buf, mode="w:gz") as tar:
...     info = tarfile.TarInfo("rec/rec.meta.json")
...     info.size = 2
...     tar.addfile(info, io.BytesIO(b"{}"))
>>> _ = buf.seek(0)
>>> [(name, opener().read()) for name, opener in stream_members(buf, "rec.tgz")]
[('rec/rec.meta.json', b'{}')]
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import FormatError, Nat4Error, first_line

__all__ = [
    "CORRUPT_ARCHIVE",
    "Opener",
    "Prefixed",
    "folder_members",
    "gunzip",
    "open_zip",
    "stream_members",
    "tar_members",
    "zip_member",
]

try:
    from isal.igzip_lib import IsalError as _IsalError
except ImportError:  # ISA-L is optional: the stdlib's gzip reader is used without it
    _IsalError = zlib.error

#: What reading a damaged archive raises, whichever layer notices first.
CORRUPT_ARCHIVE = (tarfile.TarError, EOFError, zlib.error, _IsalError, OSError, zipfile.BadZipFile)

#: Read size of the streaming tar reader (its 10 KiB default costs seconds on GB members).
TAR_BUFSIZE = 1 << 22

#: A zero-argument callable returning a binary file object (one member's content).
Opener = Callable[[], IO[bytes]]


# -- folders -----------------------------------------------------------------------


def folder_members(root: Path, depth: int = 2) -> Iterator[tuple[str, Opener]]:
    """Files of ``root`` and of its folders up to ``depth`` levels down, sorted by name.

    Names are relative to ``root`` (``sub/file``); folders deeper than
    ``depth`` are not entered.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (Path(d) / "rec.meta.json").write_text("{}")
    ...     [(name, opener().read()) for name, opener in folder_members(Path(d))]
    [('rec.meta.json', b'{}')]
    """
    for dirpath, dirnames, filenames in os.walk(root):
        if len(Path(dirpath).relative_to(root).parts) >= depth:
            dirnames[:] = []
        dirnames.sort()
        for fn in sorted(filenames):
            full = Path(dirpath) / fn
            yield str(full.relative_to(root)), (lambda full=full: open(full, "rb"))


# -- tar archives ------------------------------------------------------------------


def tar_members(path: Path) -> Iterator[tuple[str, Opener]]:
    """The regular-file members of a ``.tar`` or ``.tgz`` file, in archive order.

    Raises
    ------
    FormatError
        The archive is truncated or corrupt.
    """
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
        fh.seek(0)
        raw = gunzip(fh) if gzipped else fh
        try:
            # Random-access mode on the (seekable) gzip reader hands members straight to
            # the parser; the streaming mode copies every byte through Python several times.
            yield from _tar_stream(raw, str(path), mode="r:")
        finally:
            raw.close()


def stream_members(fileobj: IO[bytes], source: str) -> Iterator[tuple[str, Opener]]:
    """The regular-file members of a (gzipped) tar read from an open stream.

    Each member must be read before the next one is asked for.

    Parameters
    ----------
    fileobj : binary file object
        The archive's bytes, e.g. a member of a zip file.
    source : str
        Name used in error messages.

    Raises
    ------
    FormatError
        The archive is truncated or corrupt.
    """
    head = fileobj.read(2)
    stream = io.BufferedReader(Prefixed(head, fileobj), buffer_size=1 << 20)
    if head == b"\x1f\x8b":  # gzip's own reader checks the CRC that tarfile's skips
        yield from _tar_stream(gunzip(stream), source, mode="r|")
    else:
        yield from _tar_stream(stream, source, mode="r|*")


def gunzip(fileobj: IO[bytes]) -> IO[bytes]:
    """A gzip reader over ``fileobj``: ISA-L's when installed (2-3x faster), else the stdlib's."""
    try:
        from isal import igzip
    except ImportError:
        import gzip

        return gzip.GzipFile(fileobj=fileobj, mode="rb")
    return igzip.IGzipFile(fileobj=fileobj, mode="rb")


def _tar_stream(raw: IO[bytes], source: str, mode: str) -> Iterator[tuple[str, Opener]]:
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
            f"{source}: the archive is truncated or corrupt ({first_line(exc)}); delete it and "
            "fetch it again (download=True)"
        ) from exc


class Prefixed(io.RawIOBase):
    """A read-only stream: ``head`` followed by the rest of ``fh``.

    Lets a reader peek at the first bytes of a stream that cannot seek.

    Examples
    --------
    >>> stream = Prefixed(b"ab", io.BytesIO(b"cd"))
    >>> stream.read()
    b'abcd'
    """

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


# -- zip archives ------------------------------------------------------------------


def open_zip(path: Path) -> zipfile.ZipFile:
    """Open a release zip for reading.

    Raises
    ------
    FormatError
        ``path`` is not a readable zip.
    """
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise FormatError(f"{path}: not a readable zip ({exc}); fetch it again") from exc


@contextlib.contextmanager
def zip_member(path: Path, name: str, label: str) -> Iterator[IO[bytes]]:
    """Open member ``name`` of the zip ``path`` as a stream.

    Damage noticed while the block reads the member (a bad zip, an
    unsupported compression, a truncated or corrupt stream) is raised as a
    :class:`~nat4xr.errors.FormatError` naming ``label``; nat4xr's own
    errors pass through.

    Raises
    ------
    FormatError
        The zip or the member cannot be read.
    """
    try:
        with zipfile.ZipFile(path) as zf, zf.open(name) as member:
            yield member
    except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as exc:
        if isinstance(exc, Nat4Error):
            raise
        raise FormatError(
            f"{label}: unreadable zip member ({exc}); delete {path.name} and "
            "fetch it again (download=True)"
        ) from exc
