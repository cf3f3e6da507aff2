"""Where release files and cache files live, what names a cache, and housekeeping.

A cache file's name is ``<area>-<subset>-<key>.nc`` in :func:`cache_dir`; the
key hashes what its content depends on (:func:`cache_key` says exactly what),
so a changed input gets a new file instead of meeting a stale cache.

Housekeeping touches only what nat4xr wrote: :func:`cache_list` and
:func:`cache_clear` see a file only when its name has the cache pattern
(:data:`CACHE_NAME`) and it carries the cache stamp inside
(:func:`nat4xr.cachefile.reading.identify`); a cache that an open Dataset is
reading is skipped, not deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from ._version import __version__
from .cachefile.layout import CACHE_FORMAT
from .errors import Nat4Warning
from .schema import SCHEMA_VERSION

__all__ = [
    "CACHE_NAME",
    "CONTENT_BYTES",
    "CacheEntry",
    "cache_clear",
    "cache_dir",
    "cache_key",
    "cache_list",
    "data_dir",
]

#: Names of cache files: ``<area>-<subset>-<16 hex digits>.nc``.
CACHE_NAME = re.compile(r"(?P<area>[A-Za-z0-9]+)-(?P<subset>[a-z]+)-(?P<key>[0-9a-f]{16})\.nc")
#: Source files up to this size are part of the cache key by their content.
CONTENT_BYTES = 1 << 20


def data_dir() -> Path:
    """The folder releases are downloaded to and the cache lives under.

    ``NAT4XR_DATA_DIR`` when set, else the platform cache folder
    (e.g. ``~/.cache/nat4xr`` on Linux). Always absolute: a relative setting
    is resolved against the working directory when this is called, so paths
    made from it survive a later ``os.chdir`` (or ``%cd``). Nothing is created.

    Examples
    --------
    >>> data_dir().is_absolute()
    True
    """
    env = os.environ.get("NAT4XR_DATA_DIR")
    if env:
        return Path(env).expanduser().absolute()
    import platformdirs  # what pooch.os_cache uses, without importing pooch

    return Path(platformdirs.user_cache_dir("nat4xr"))


class CacheEntry(NamedTuple):
    """One cache file, as listed by :func:`cache_list`.

    ``options`` are the build options stamped in the file (area, subset,
    normalize, ...; ``release``: the release folder it was built from).
    """

    path: Path
    area: str
    subset: str
    key: str
    size: int
    modified: float
    options: Mapping[str, Any] = {}
    format: int = CACHE_FORMAT


def cache_dir() -> Path:
    """Folder of the netCDF cache files: ``NAT4XR_CACHE_DIR`` or ``<data_dir>/cache``.

    Always absolute (see :func:`data_dir`).

    Examples
    --------
    >>> cache_dir().name == "cache" or "NAT4XR_CACHE_DIR" in os.environ
    True
    """
    env = os.environ.get("NAT4XR_CACHE_DIR")
    return Path(env).expanduser().absolute() if env else data_dir() / "cache"


def cache_key(files: Iterable[str | os.PathLike], options: Mapping[str, Any]) -> str:
    """16-hex-digit hash naming a cache's content.

    What it covers, per source file (every file inside a folder): the
    resolved path and the size; for files up to :data:`CONTENT_BYTES` (the
    per-cell table, sidecars) a SHA-256 of the content; for larger ones (the
    recordings, read in full only by a build) the modification time and the
    status-change time (``st_ctime``), which no copy or sync tool can set back
    (``touch -r``, ``cp -p``, ``rsync -a`` and ``unzip`` restore the
    modification time only). Then the build ``options``, the nat4xr version,
    the schema version and :data:`CACHE_FORMAT`. So any edit of a source file
    gives a new key; a ``chmod`` or ``chown`` of a large file gives one too
    (one needless rebuild), and only a large file rewritten to the same size
    while the system clock is set back could meet its old cache.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     src = Path(tmp) / "a.csv"
    ...     _ = src.write_bytes(b"x")
    ...     keys = [cache_key([src], {"subset": s}) for s in ("all", "all", "val")]
    ...     _ = src.write_bytes(b"y")  # same size; the content decides
    ...     edited = cache_key([src], {"subset": "all"})
    >>> len(keys[0]), keys[0] == keys[1], keys[0] == keys[2], edited == keys[0]
    (16, True, False, False)
    """
    identity = []
    for entry in files:
        entry = Path(entry)
        paths = sorted(p for p in entry.rglob("*") if p.is_file()) if entry.is_dir() else [entry]
        for p in paths:
            st = p.stat()
            if st.st_size <= CONTENT_BYTES:
                stamp = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                stamp = [st.st_mtime_ns, st.st_ctime_ns]
            identity.append([str(p.resolve()), st.st_size, stamp])
    payload = {
        "files": identity,
        "options": dict(options),
        "nat4xr_version": __version__,
        "schema": SCHEMA_VERSION,
        "cache_format": CACHE_FORMAT,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_list() -> list[CacheEntry]:
    """The cache files in :func:`cache_dir`, oldest first.

    Only regular files named like a cache (:data:`CACHE_NAME`) that carry the
    cache stamp inside are listed: a user's own ``.nc`` file in the folder
    is never taken for a cache.

    Examples
    --------
    >>> all(isinstance(e, CacheEntry) for e in cache_list())
    True
    """
    folder = cache_dir()
    if not folder.is_dir():
        return []
    from .cachefile.reading import identify

    entries = []
    for p in folder.iterdir():
        match = CACHE_NAME.fullmatch(p.name)
        if match is None:
            continue
        stamp = identify(p)  # None for folders, links, foreign and unfinished files
        if stamp is None:
            continue
        try:
            st = p.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        entries.append(
            CacheEntry(
                p,
                match["area"],
                match["subset"],
                match["key"],
                st.st_size,
                st.st_mtime,
                stamp["options"],
                stamp["format"],
            )
        )
    return sorted(entries, key=lambda e: e.modified)


def cache_clear(area: str | None = None) -> list[Path]:
    """Delete nat4xr's cache files (all, or one area's), leftovers of interrupted writes, and locks.

    Only files :func:`cache_list` recognises are deleted. Skipped: a file that
    another process is writing right now (its lock is held), and a file that
    an open Dataset is reading (in this or any process, DataLoader workers
    included), with a :class:`~nat4xr.errors.Nat4Warning` naming it: close
    those Datasets and clear again. Lock files left behind are harmless (a lock
    is held through the operating system, not by the file's existence); this
    removes those of files it deletes and those whose cache file is gone.

    Returns
    -------
    list of pathlib.Path
        The cache and temporary files deleted (their lock files go silently).

    Examples
    --------
    >>> isinstance(cache_clear(area="PEG"), list)  # doctest: +SKIP
    True
    """
    import gc
    import glob

    import filelock

    from .cachefile.chunks import in_use
    from .files import remove_stale

    removed: list[Path] = []
    kept: list[str] = []
    folder = cache_dir()
    if not folder.is_dir():
        return removed
    # Datasets nothing refers to any more may still sit in reference cycles
    # (xarray's and dask's objects make some); collected, they release their files.
    gc.collect()

    def leftovers(target: Path) -> list[Path]:
        found = sorted(folder.glob(f".{glob.escape(target.name)}.*.tmp"))
        remove_stale(target)  # under the target's lock
        return found

    for entry in cache_list():
        if area is not None and entry.area != area:
            continue
        lock_file = Path(f"{entry.path}.lock")
        try:
            with filelock.FileLock(str(lock_file), timeout=0):
                try:
                    fh = _open_for_lock(entry.path)
                except FileNotFoundError:
                    continue
                with fh:
                    if in_use(fh.fileno()):
                        kept.append(f"{entry.path} (in use)")
                        continue
                    # Holding the exclusive lock: no reader can map it before it goes.
                    entry.path.unlink(missing_ok=True)
                removed.append(entry.path)
                removed.extend(leftovers(entry.path))
                lock_file.unlink(missing_ok=True)  # while held: nobody waits on this inode
        except filelock.Timeout:
            continue  # being written by another process
        except OSError as exc:  # a read-only folder, say
            kept.append(f"{entry.path} ({exc.strerror or exc})")
    for lock_file in sorted(folder.glob("*.nc.lock")):  # locks (and temps) whose cache is gone
        target = folder / lock_file.name[: -len(".lock")]
        match = CACHE_NAME.fullmatch(target.name)
        if match is None or (area is not None and match["area"] != area):
            continue
        try:
            with filelock.FileLock(str(lock_file), timeout=0):
                if os.path.lexists(target):
                    continue
                removed.extend(leftovers(target))
                lock_file.unlink(missing_ok=True)
        except (filelock.Timeout, OSError):
            continue
    if kept:
        in_use = any(k.endswith("(in use)") for k in kept)
        advice = (
            "close the Datasets reading them (ds.close(), or end those processes) and clear again"
            if in_use
            else "the reason is beside each file"
        )
        warnings.warn(
            f"kept {len(kept)} cache file(s): {', '.join(kept)}; {advice}",
            Nat4Warning,
            stacklevel=2,
        )
    return removed


def _open_for_lock(path: Path) -> Any:
    """The file opened so that an exclusive ``flock`` works on it.

    Read-write where allowed (NFS emulates ``flock`` with byte-range locks,
    whose exclusive kind needs write access), read-only otherwise.
    """
    try:
        return open(path, "r+b")
    except PermissionError:
        return open(path, "rb")
