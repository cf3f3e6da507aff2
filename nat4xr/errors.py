"""Exceptions and warnings raised by nat4xr.

Every error names the file (or object) at fault and says what to do about it.
All of them derive from :class:`Nat4Error`, so ``except nat4xr.Nat4Error``
catches anything the library raises on purpose.
"""

from __future__ import annotations

__all__ = [
    "CacheError",
    "DownloadError",
    "FormatError",
    "MissingFileError",
    "Nat4Error",
    "Nat4Warning",
]


class Nat4Error(Exception):
    """Base class of every error nat4xr raises on purpose."""


class FormatError(Nat4Error, ValueError):
    """A file exists but its content is not what the NAT4/NEMS layout promises.

    Examples
    --------
    >>> raise FormatError("/data/rec.resp.csv: row 3 has 5 columns, expected 4")
    Traceback (most recent call last):
    ...
    nat4xr.errors.FormatError: /data/rec.resp.csv: row 3 has 5 columns, expected 4
    """


class MissingFileError(Nat4Error, FileNotFoundError):
    """A file of the release is not where it should be."""


class DownloadError(Nat4Error, OSError):
    """A download failed, or what arrived does not match its registered hash."""


class CacheError(Nat4Error, OSError):
    """The netCDF cache cannot be written or read."""


class Nat4Warning(UserWarning):
    """Something in the data is suspicious but the build could go on."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none).

    Keeps a library's multi-line message from swamping the one nat4xr wraps it in.

    Examples
    --------
    >>> first_line(ValueError("bad header\\nat byte 12"))
    'bad header'
    >>> first_line(EOFError())
    'EOFError'
    """
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
