"""Where release files and cache files live, what names a cache, and housekeeping.

A cache file's name is ``<area>-<subset>-<key>.nc`` in :func:`cache_dir`; the
key hashes everything its content depends on (:func:`cache_key`), so a changed
input never meets a stale cache: it gets a new file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import filelock

from ._version import __version__
from .cachefile.layout import CACHE_FORMAT
from .schema import SCHEMA_VERSION

__all__ = ["CacheEntry", "cache_clear", "cache_dir", "cache_key", "cache_list", "data_dir"]


def data_dir() -> Path:
    """The folder releases are downloaded to and the cache lives under.

    ``NAT4XR_DATA_DIR`` when set, else the platform cache folder
    (e.g. ``~/.cache/nat4xr`` on Linux). Nothing is created.

    Examples
    --------
    >>> data_dir().is_absolute() or "NAT4XR_DATA_DIR" in os.environ
    True
    """
    env = os.environ.get("NAT4XR_DATA_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs  # what pooch.os_cache uses, without importing pooch

    return Path(platformdirs.user_cache_dir("nat4xr"))


class CacheEntry(NamedTuple):
    """One cache file, as listed by :func:`cache_list`."""

    path: Path
    area: str
    subset: str
    key: str
    size: int
    modified: float


def cache_dir() -> Path:
    """Folder of the netCDF cache files: ``NAT4XR_CACHE_DIR`` or ``<data_dir>/cache``.

    Examples
    --------
    >>> cache_dir().name == "cache" or "NAT4XR_CACHE_DIR" in os.environ
    True
    """
    env = os.environ.get("NAT4XR_CACHE_DIR")
    return Path(env).expanduser() if env else data_dir() / "cache"


def cache_key(files: Iterable[str | os.PathLike], options: Mapping[str, Any]) -> str:
    """16-hex-digit hash naming a cache's content.

    Made from each source file's resolved path, size and modification time
    (every file inside a folder), the build ``options``, the nat4xr version,
    the schema version and :data:`CACHE_FORMAT`.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     src = Path(tmp) / "a.tgz"
    ...     _ = src.write_bytes(b"x")
    ...     keys = [cache_key([src], {"subset": s}) for s in ("all", "all", "val")]
    >>> len(keys[0]), keys[0] == keys[1], keys[0] == keys[2]
    (16, True, False)
    """
    identity = []
    for entry in files:
        entry = Path(entry)
        paths = sorted(p for p in entry.rglob("*") if p.is_file()) if entry.is_dir() else [entry]
        for p in paths:
            st = p.stat()
            identity.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
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

    Examples
    --------
    >>> all(isinstance(e, CacheEntry) for e in cache_list())
    True
    """
    folder = cache_dir()
    if not folder.is_dir():
        return []
    entries = []
    for p in folder.glob("*.nc"):
        parts = p.stem.split("-")
        area, subset, key = parts if len(parts) == 3 else ("", "", "")
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        entries.append(CacheEntry(p, area, subset, key, st.st_size, st.st_mtime))
    return sorted(entries, key=lambda e: e.modified)


def cache_clear(area: str | None = None) -> list[Path]:
    """Delete cache files (all, or one area's), leftovers of interrupted writes, and locks.

    A file that another process is writing right now is skipped, with its
    lock. Lock files left behind are harmless (a lock is held through the
    operating system, not by the file's existence); this removes those of
    files it deletes and those whose cache file is gone.

    Returns
    -------
    list of pathlib.Path
        The cache and temporary files deleted (their lock files go silently).

    Examples
    --------
    >>> isinstance(cache_clear(area="PEG"), list)  # doctest: +SKIP
    True
    """
    removed: list[Path] = []
    folder = cache_dir()
    if not folder.is_dir():
        return removed
    for lock_file in sorted(folder.glob("*.nc.lock")):
        target = folder / lock_file.name[: -len(".lock")]
        if area is not None and not target.name.startswith(f"{area}-"):
            continue
        leftovers = [target, *folder.glob(f".{target.name}.*.tmp")]
        try:
            with filelock.FileLock(str(lock_file), timeout=0):
                for path in leftovers:
                    if path.exists():
                        path.unlink(missing_ok=True)
                        removed.append(path)
                # deleted while held, so no process can be waiting on this inode
                lock_file.unlink(missing_ok=True)
        except filelock.Timeout:
            continue
    for entry in cache_list():  # caches without a lock file (copied in, say)
        if area is not None and entry.area != area:
            continue
        lock_file = Path(f"{entry.path}.lock")
        try:
            with filelock.FileLock(str(lock_file), timeout=0):
                entry.path.unlink(missing_ok=True)
                removed.append(entry.path)
                lock_file.unlink(missing_ok=True)
        except filelock.Timeout:
            continue
    return removed
