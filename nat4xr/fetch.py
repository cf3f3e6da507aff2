"""Downloads of the NAT4 release (Zenodo record 8044773) with pooch.

One call, :func:`fetch`, puts an area's release files in a folder (the
platform cache by default, see :func:`data_dir`) and unpacks the per-site
archive. Every file is checked against a known hash before it gets its final
name, and a download is never attempted without one. Hashes come from, in
order:

1. the file named by ``NAT4XR_REGISTRY`` (pooch registry lines ``name hash``);
2. the ``registry.txt`` next to the files when ``NAT4XR_BASE_URL`` names a
   mirror (when the mirror has none, the shipped registry is used);
3. the registry shipped in ``nat4xr/registry/`` when it names the files;
4. the checksums Zenodo publishes for the record (one API request).

The hashes a successful fetch verified are kept in ``<folder>/.registry.txt``,
so later calls work offline.

Environment variables: ``NAT4XR_DATA_DIR`` (download folder),
``NAT4XR_BASE_URL`` (mirror serving the release files under their published
names), ``NAT4XR_REGISTRY`` (registry file).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import shutil
import zipfile
from importlib import resources
from pathlib import Path

import filelock
import pooch

from ._version import __version__
from .cachedir import data_dir
from .errors import DownloadError
from .files import atomic_path, remove_stale, temp_path
from .release import AREAS, check_area, population_file, pred_file, sites_folder

__all__ = [
    "AREAS",
    "DOI",
    "POOCH",
    "data_dir",
    "fetch",
    "release_files",
]

DOI = "10.5281/zenodo.8044773"
#: Extra attempts after a failed download (pooch waits 1 s, 2 s, ... between them).
RETRIES = 3
#: Seconds without an answer from the server before a request fails
#: (``NAT4XR_TIMEOUT`` overrides it).
TIMEOUT = 60.0
#: Largest total size a release zip may unpack to; the real ones unpack to < 1 GB.
MAX_UNZIP_BYTES = 16 * 2**30
#: Seconds to wait for another process that is fetching into the same folder.
LOCK_TIMEOUT = 3 * 3600.0
HEADERS = {"User-Agent": f"nat4xr/{__version__} (+https://doi.org/{DOI})"}
_RECORD = ".registry.txt"
_SHIPPED = "zenodo-8044773.txt"

#: The default pooch: platform cache folder (``NAT4XR_DATA_DIR`` overrides it)
#: and the Zenodo DOI. :func:`fetch` works on a copy configured from the
#: environment at call time, so changing the variables later takes effect.
POOCH = pooch.create(
    path=pooch.os_cache("nat4xr"),
    base_url=f"doi:{DOI}/",
    env="NAT4XR_DATA_DIR",
    registry=None,
    retry_if_failed=RETRIES,
)


def release_files(area: str, wav: bool = False) -> list[str]:
    """Names of the files :func:`fetch` downloads for ``area``.

    Examples
    --------
    >>> release_files("A1")
    ['A1_NAT4_ozgf.fs100.ch18.tgz', 'A1_pred_correlation.csv', 'A1_single_sites.zip']
    >>> release_files("PEG", wav=True)[-1]
    'wav.zip'
    """
    area = check_area(area)
    names = [population_file(area), pred_file(area), f"{sites_folder(area)}.zip"]
    return [*names, "wav.zip"] if wav else names


def fetch(
    area: str, path: str | os.PathLike | None = None, wav: bool = False, progress: bool = True
) -> Path:
    """Download (if needed) and unpack the release files of one area.

    Idempotent: files already present with the right hash are not downloaded
    again. ``<area>_single_sites.zip`` is unpacked into
    ``<folder>/<area>_single_sites/`` and ``wav.zip`` into ``<folder>/wav/``;
    both unpack into a temporary folder first and are renamed into place, and
    the whole fetch runs under a file lock, so concurrent calls and
    interrupted runs never leave a half-written file under its final name.

    Parameters
    ----------
    area : {'A1', 'PEG'}
        Recording area.
    path : path-like, optional
        Release folder; :func:`data_dir` when omitted.
    wav : bool
        Also fetch the sound waveforms (``wav.zip``).
    progress : bool
        Show tqdm progress bars while downloading.

    Returns
    -------
    pathlib.Path
        The release folder.

    Raises
    ------
    DownloadError
        A file could not be downloaded, or what arrived does not match its
        hash. The message names the file and the URL.

    Examples
    --------
    >>> fetch("A1", path="/tmp/nat4xr-release")  # doctest: +SKIP
    PosixPath('/tmp/nat4xr-release')
    """
    names = release_files(area, wav)
    root = Path(path).expanduser() if path is not None else data_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"cannot create the release folder {root}: {exc}; pass path= or set "
            "NAT4XR_DATA_DIR to a writable folder"
        ) from exc
    base_url = _base_url()
    pup = copy.copy(POOCH)
    pup.path = root
    pup.base_url = base_url
    pup.registry, pup.urls = {}, {}
    pup.retry_if_failed = RETRIES
    lock = filelock.FileLock(str(root / ".fetch.lock"), timeout=LOCK_TIMEOUT)
    logger = pooch.get_logger()
    level = logger.level
    if not progress:  # pooch logs every download and unzip at INFO
        logger.setLevel(logging.WARNING)
    try:
        with lock:
            pup.registry.update(_registry(root, names, base_url))
            for name in names:
                _fetch_one(pup, name, progress)
            _write_record(root, base_url, {n: pup.registry[n] for n in names})
    except filelock.Timeout as exc:
        raise DownloadError(
            f"another process has been fetching into {root} for over {LOCK_TIMEOUT:.0f} s; "
            f"if none is running, delete {lock.lock_file} and try again"
        ) from exc
    finally:
        logger.setLevel(level)
    return root


# --------------------------------------------------------------------------- internals


def _base_url() -> str:
    mirror = os.environ.get("NAT4XR_BASE_URL")
    return mirror.rstrip("/") + "/" if mirror else f"doi:{DOI}/"


def _timeout() -> float:
    """Request timeout in seconds: ``NAT4XR_TIMEOUT`` when set, else :data:`TIMEOUT`."""
    env = os.environ.get("NAT4XR_TIMEOUT")
    if not env:
        return TIMEOUT
    try:
        value = float(env)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DownloadError(f"NAT4XR_TIMEOUT={env!r} is not a positive number of seconds")
    return value


def _source_tag(base_url: str) -> str:
    return hashlib.sha256(base_url.encode()).hexdigest()[:16]


def _parse_registry(text: str, origin: str) -> dict[str, str]:
    """Registry lines ``name hash [url]`` (``#`` comments) -> {name: hash}."""
    entries = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) not in (2, 3):
            raise DownloadError(
                f"{origin}, line {number}: expected 'name hash', got {line!r}; fix the file"
            )
        entries[fields[0]] = fields[1].lower()
    return entries


def _registry(root: Path, names: list[str], base_url: str) -> dict[str, str]:
    """Known hashes of ``names``, from the first source that has them all."""
    env = os.environ.get("NAT4XR_REGISTRY")
    if env:
        try:
            text = Path(env).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise DownloadError(
                f"NAT4XR_REGISTRY={env} cannot be read ({exc}); point it at a file of "
                "'name hash' lines or unset it"
            ) from exc
        return _complete(_parse_registry(text, env), names, f"NAT4XR_REGISTRY={env}")

    record = root / _RECORD
    if record.is_file():
        lines = record.read_text(encoding="utf-8")
        if f"# source {_source_tag(base_url)}" in lines:
            known = _parse_registry(lines, str(record))
            if all(n in known for n in names):
                return known

    shipped = _shipped_registry()
    if not base_url.startswith("doi:"):
        mirror = _mirror_registry(base_url)
        if mirror is not None:
            return _complete(mirror, names, f"{base_url}registry.txt")
        return _complete(shipped, names, f"nat4xr/registry/{_SHIPPED} (the mirror has none)")
    if all(n in shipped for n in names):
        return shipped
    return _complete(_zenodo_registry(base_url), names, f"Zenodo record {DOI}")


def _shipped_registry() -> dict[str, str]:
    try:
        text = (
            resources.files("nat4xr")
            .joinpath("registry")
            .joinpath(_SHIPPED)
            .read_text(encoding="utf-8")
        )
    except OSError:  # package data not installed: behave as an empty registry
        return {}
    return _parse_registry(text, f"nat4xr/registry/{_SHIPPED}")


def _complete(registry: dict[str, str], names: list[str], origin: str) -> dict[str, str]:
    missing = [n for n in names if n not in registry]
    if missing:
        raise DownloadError(
            f"no known hash for {', '.join(missing)} in {origin}; nat4xr never downloads "
            "a file it cannot verify: add 'name sha256:<hash>' lines and point "
            "NAT4XR_REGISTRY at that file"
        )
    return registry


def _mirror_registry(base_url: str) -> dict[str, str] | None:
    import requests

    url = f"{base_url}registry.txt"
    try:
        reply = requests.get(url, headers=HEADERS, timeout=_timeout())
    except requests.RequestException as exc:
        raise DownloadError(f"cannot reach the mirror {url}: {exc}; check NAT4XR_BASE_URL") from exc
    if reply.status_code == 404:
        return None
    if not reply.ok:
        raise DownloadError(f"{url} answered HTTP {reply.status_code}; check NAT4XR_BASE_URL")
    return _parse_registry(reply.text, url)


def _zenodo_registry(base_url: str) -> dict[str, str]:
    pup = pooch.create(path=data_dir(), base_url=base_url, registry=None)
    try:
        pup.load_registry_from_doi()
    except Exception as exc:  # requests, JSON and API-shape errors alike
        raise DownloadError(
            f"cannot read the file list of Zenodo record {DOI} ({exc}); check the "
            "connection, or set NAT4XR_REGISTRY to a registry file"
        ) from exc
    return dict(pup.registry)


def _fetch_one(pup: pooch.Pooch, name: str, progress: bool) -> None:
    import requests

    url = pup.get_url(name)
    timeout = _timeout()
    if url.startswith("doi:"):
        downloader = pooch.DOIDownloader(
            progressbar=progress, chunk_size=1 << 20, headers=HEADERS, timeout=timeout
        )
    else:
        downloader = pooch.HTTPDownloader(
            progressbar=progress, chunk_size=1 << 20, headers=HEADERS, timeout=timeout
        )
    folder = name[: -len(".zip")] if name.endswith(".zip") else None
    processor = _AtomicUnzip(folder) if folder else None
    try:
        pup.fetch(name, processor=processor, downloader=downloader, progressbar=progress)
    except ValueError as exc:  # pooch: hash mismatch; DOI resolver: file not in the record
        if "hash" not in str(exc).lower():
            raise DownloadError(f"cannot download {name} from {url}: {exc}") from exc
        raise DownloadError(
            f"{name} from {url} does not match its registered hash after {1 + RETRIES} "
            f"attempt(s) ({exc}); the download was discarded. The server may be serving a "
            "corrupt file, or the registry is out of date"
        ) from exc
    except requests.RequestException as exc:
        raise DownloadError(
            f"downloading {name} from {url} failed after {1 + RETRIES} attempt(s): {exc}; "
            "nothing partial was kept, run fetch again when the connection is back"
        ) from exc
    except OSError as exc:
        raise DownloadError(f"cannot store {name} in {pup.path}: {exc}") from exc


def _write_record(root: Path, base_url: str, registry: dict[str, str]) -> None:
    """Remember verified hashes (atomically) so later fetches need no network."""
    record = root / _RECORD
    known = {}
    if record.is_file():
        text = record.read_text(encoding="utf-8")
        if f"# source {_source_tag(base_url)}" in text:
            known = _parse_registry(text, str(record))
    known.update(registry)
    lines = [f"# hashes verified by nat4xr, source {base_url}", f"# source {_source_tag(base_url)}"]
    lines += [f"{n} {h}" for n, h in sorted(known.items())]
    remove_stale(record)  # a killed writer's; we hold the lock
    with atomic_path(record) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")


class _AtomicUnzip:
    """pooch processor: unzip into a temporary sibling folder, then rename it.

    A zip whose members already sit under ``<folder>/`` and one whose members
    sit at its top level both end up as ``<release>/<folder>/<members>``.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __call__(self, fname: str, action: str, pup: pooch.Pooch) -> str:
        archive = Path(fname)
        dest = archive.parent / self.folder
        if action == "fetch" and dest.is_dir():
            return str(dest)
        remove_stale(dest)  # a killed unzip's; we hold the lock
        with atomic_path(dest, directory=True) as tmp:
            _check_unzip_size(archive, tmp)
            try:  # zipfile strips absolute and '..' parts and never makes links
                pooch.Unzip(extract_dir=str(tmp))(fname, "download", pup)
            except zipfile.BadZipFile as exc:
                raise DownloadError(
                    f"{archive}: cannot be unpacked ({exc}); delete it and fetch again"
                ) from exc
            entries = [p for p in tmp.iterdir() if p.name != "__MACOSX"]
            nested = len(entries) == 1 and entries[0].is_dir() and entries[0].name == self.folder
            if nested:  # the members sit under <folder>/: that folder becomes the result
                inner = temp_path(dest)
                os.replace(entries[0], inner)
                shutil.rmtree(tmp)
                os.replace(inner, tmp)
        return str(dest)


def _check_unzip_size(archive: Path, dest: Path) -> None:
    """Refuse a zip whose members would unpack past :data:`MAX_UNZIP_BYTES` or the free space.

    zipfile stops each member at its declared size, so the declared sizes bound
    what unpacking writes.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            total = sum(info.file_size for info in zf.infolist())
    except zipfile.BadZipFile as exc:
        raise DownloadError(
            f"{archive}: not a readable zip ({exc}); delete it and fetch again"
        ) from exc
    free = shutil.disk_usage(dest).free
    if total > min(MAX_UNZIP_BYTES, free):
        raise DownloadError(
            f"{archive} would unpack to {total / 2**30:.1f} GiB (limit "
            f"{MAX_UNZIP_BYTES / 2**30:.0f} GiB, {free / 2**30:.1f} GiB free in {dest.parent}); "
            "it is not a NAT4 release file: delete it"
        )
