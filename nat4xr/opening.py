"""The front door: open one area of NAT4, building its cache on first use.

:func:`open_nat4` resolves the release files once, finds the cache file they
name (:func:`nat4xr.cachedir.cache_key`) or builds and writes it
(:mod:`nat4xr.build`, :func:`nat4xr.cachefile.write_cache`), and opens it
through the ``nat4`` backend engine. A cache that cannot be read, is damaged
or was written by another version is rebuilt with a
:class:`~nat4xr.errors.Nat4Warning`. :func:`open_demo` does the same on a
small synthetic release written once.
"""

from __future__ import annotations

import numbers
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import filelock
import numpy as np
import xarray as xr

from ._version import __version__
from .cachedir import cache_dir, cache_key, data_dir
from .cachefile.reading import chunk_spec, open_cache
from .cachefile.writer import LOCK_TIMEOUT, lock, locked, write_unlocked
from .errors import CacheError, Nat4Error, Nat4Warning
from .files import atomic_path, remove_stale
from .locks import record_owner, wait_announced
from .release import check_area

__all__ = ["cache_path", "open_demo", "open_nat4"]


def open_nat4(
    area: str,
    subset: str = "all",
    path: str | os.PathLike | None = None,
    download: bool = False,
    normalize: str | None = None,
    smooth_ms: float | None = None,
    chunks: Any = "auto",
    cache: bool = True,
    rebuild: bool = False,
    waveform: bool = False,
    audio_fs: int = 44100,
    progress: bool | None = None,
) -> xr.Dataset:
    """Open one area of NAT4 as a lazy Dataset, building its cache on first use.

    Parameters
    ----------
    area : {'A1', 'PEG'}
        Recording area.
    subset : {'all', 'est', 'val'}
        Which sounds.
    path : path-like, optional
        Release folder; :func:`nat4xr.cachedir.data_dir` when omitted.
    download : bool
        Fetch the release files first (:func:`nat4xr.fetch.fetch`).
    normalize : {None, 'nems'}
        Scaling of the build (see :func:`nat4xr.build.build_dataset`).
    smooth_ms : float, optional
        Smoothing of the build.
    chunks : 'auto', int, dict or None
        Dask chunks of the result (see :func:`nat4xr.cachefile.open_cache`);
        ``None``: no dask, data read lazily from the cache file on indexing
        (with ``cache=False`` there is no file: ``None`` and ``'auto'`` give
        the build's own arrays, the recorded values in memory under a lazy
        padding; ``.load()`` makes the padding dense).
    cache : bool
        Write (and reuse) the netCDF cache. ``False`` returns the build
        result without writing anything.
    rebuild : bool
        Build again and replace the cache file.
    waveform : bool
        Add the ``waveform`` variable (needs ``wav/``; fetched with
        ``download=True``).
    audio_fs : int
        Sampling rate of ``waveform``.
    progress : bool, optional
        Progress bars; by default shown when stderr is a terminal.

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    MissingFileError
        A release file is missing (``download=True`` fetches it).

    Examples
    --------
    >>> ds = open_nat4("A1", path="/data/NAT4")  # doctest: +SKIP

    Without writing a cache, on a small synthetic release:

    >>> import tempfile, warnings, nat4xr
    >>> with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")  # the synthetic release's deliberate traps
    ...     rel = nat4xr.synthetic.write_release(tmp, "A1", scale="tiny")
    ...     ds = open_nat4("A1", path=rel.root, cache=False)
    >>> ds["response"].dims, ds.sizes["stim"]
    (('stim', 'neuron', 'repeat', 'time'), 8)
    """
    from . import release

    options = _options(area, subset, normalize, smooth_ms, waveform, audio_fs)
    smooth_ms = options["smooth_ms"]
    audio_fs = int(audio_fs)
    root = _release_root(path)
    show = sys.stderr.isatty() if progress is None else bool(progress)
    if download:
        from .fetch import fetch

        fetch(area, root, wav=waveform, progress=show)

    def _build() -> xr.Dataset:
        from .build import build_dataset  # the builder's imports are heavy: only to build

        return build_dataset(
            root,
            area,
            subset=subset,
            normalize=normalize,
            smooth_ms=smooth_ms,
            waveform=waveform,
            audio_fs=audio_fs,
            progress=show,
        )

    if not cache:
        ds = _build()  # in-memory blocks under a lazy padding: never loaded behind your back
        return ds if chunks in ("auto", None) else ds.chunk(chunk_spec(ds, chunks))

    key = cache_key(release.source_files(root, area, subset, waveform), options)
    target = cache_dir() / f"{area}-{subset}-{key}.nc"
    failed = None  # identity of a file that could not be opened
    if not rebuild and target.exists():
        failed = _identity(target)
        try:
            return open_cache(target, chunks)
        except CacheError as exc:
            if _identity(target) is not None:  # not just removed by `cache clear`
                _warn_rebuild(exc)
    _check_cache_folder(target.parent)
    before = _identity(target)
    guard = lock(target)
    wait_announced(guard, f"building {target}")
    with locked(target):
        record_owner(guard.lock_file)
        # Another process may have (re)written the file while we waited for the lock.
        now = _identity(target)
        if now is not None and now != failed and (not rebuild or now != before):
            try:
                return open_cache(target, chunks)
            except CacheError as exc:
                _warn_rebuild(exc)
        stamped = {**options, "release": str(root)}  # shown by `nat4xr cache list`
        write_unlocked(_build(), target, key, stamped, show)
        # Opened before the lock goes: from then on the open file is in use and
        # `cache clear` keeps it.
        return open_cache(target, chunks)


def cache_path(
    area: str,
    subset: str = "all",
    path: str | os.PathLike | None = None,
    normalize: str | None = None,
    smooth_ms: float | None = None,
    waveform: bool = False,
    audio_fs: int = 44100,
) -> Path:
    """The cache file :func:`open_nat4` uses for these arguments (it may not exist yet).

    Needs the release files (their identity is part of the name).

    Examples
    --------
    >>> cache_path("A1", path="/data/NAT4")  # doctest: +SKIP
    PosixPath('/home/me/.cache/nat4xr/cache/A1-all-3f2a...nc')
    """
    from . import release

    options = _options(area, subset, normalize, smooth_ms, waveform, audio_fs)
    root = _release_root(path)
    key = cache_key(release.source_files(root, area, subset, waveform), options)
    return cache_dir() / f"{area}-{subset}-{key}.nc"


def _release_root(path: str | os.PathLike | None) -> Path:
    """The release folder, absolute (a later ``os.chdir`` must not move it)."""
    return Path(path).expanduser().absolute() if path is not None else data_dir()


def _options(
    area: str,
    subset: str,
    normalize: str | None,
    smooth_ms: Any,
    waveform: bool,
    audio_fs: Any,
) -> dict[str, Any]:
    """The build options the cache key covers, checked first: a value the build
    would read differently (``audio_fs=16000.9``) must never meet another's cache."""
    from . import release

    check_area(area)
    release.check_subset(subset)
    if normalize not in (None, "none", "nems"):
        raise ValueError(f"unknown normalize={normalize!r}: choose None or 'nems'")
    if not isinstance(waveform, (bool, np.bool_)):
        raise TypeError(f"waveform must be True or False, got {waveform!r}")
    if (
        isinstance(audio_fs, (bool, np.bool_))
        or not isinstance(audio_fs, numbers.Real)
        or not 0 < audio_fs < np.inf
        or audio_fs != int(audio_fs)
    ):
        raise ValueError(f"audio_fs must be a whole number of samples per second, got {audio_fs!r}")
    options = {
        "area": area,
        "subset": subset,
        "normalize": normalize,
        "smooth_ms": release.check_smooth_ms(smooth_ms),
        "waveform": bool(waveform),
        "audio_fs": int(audio_fs) if waveform else None,
    }
    if waveform:  # the two resamplers give different samples: never share a cache file
        from .waveform import default_resampler

        options["resampler"] = default_resampler()
    return options


def _check_cache_folder(folder: Path) -> None:
    """Fail before a build, not after it, when the cache cannot be written there."""
    try:
        os.fsdecode(folder).encode("utf-8")
    except UnicodeEncodeError:
        raise CacheError(
            f"the cache folder {os.fsdecode(folder)!r} is not a UTF-8 path, which netCDF "
            "cannot open; set NAT4XR_CACHE_DIR to a folder with a UTF-8 name, or pass cache=False"
        ) from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(
            f"cannot create the cache folder {folder}: {exc}; set NAT4XR_CACHE_DIR "
            "to a writable folder, or pass cache=False"
        ) from exc


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _warn_rebuild(exc: CacheError) -> None:
    warnings.warn(f"{exc}; rebuilding the cache", Nat4Warning, stacklevel=3)


def open_demo(chunks: Any = "auto") -> xr.Dataset:
    """A small synthetic NAT4 release, built and cached once, opened like the real one.

    Writes the release (``nat4xr.synthetic.write_release``, ``scale='small'``)
    under ``<data_dir>/demo-<version>`` the first time, then returns
    :func:`open_nat4` on it. Works offline.

    Examples
    --------
    >>> demo = open_demo()  # doctest: +SKIP
    >>> demo.sizes["neuron"]  # doctest: +SKIP
    40
    """
    from . import synthetic

    base = data_dir()
    root = base / f"demo-{__version__}"
    marker = root / ".complete"
    if not marker.is_file():
        if base.exists() and not base.is_dir():
            raise Nat4Error(
                f"the data folder {base} is a file, not a folder; point NAT4XR_DATA_DIR at a "
                "folder (or unset it)"
            )
        base.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(str(base / ".demo.lock"), timeout=LOCK_TIMEOUT):
            if not marker.is_file():
                remove_stale(root)  # a killed writer's
                with atomic_path(root, directory=True) as tmp:
                    synthetic.write_release(tmp, area="A1", scale="small", seed=0)
                    (tmp / ".complete").write_text(__version__)
    return open_nat4("A1", path=root, chunks=chunks, progress=False)
