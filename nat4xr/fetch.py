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

import contextlib
import copy
import hashlib
import logging
import os
import shutil
import signal
import sys
import threading
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import filelock
import pooch

from ._version import __version__
from .cachedir import data_dir
from .errors import DownloadError, Nat4Warning
from .files import atomic_path, remove_stale, temp_path
from .locks import record_owner, wait_announced
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
    area: str,
    path: str | os.PathLike | None = None,
    wav: bool = False,
    progress: bool | None = None,
) -> Path:
    """Download (if needed), unpack and verify the release files of one area.

    Idempotent: files already present with the right hash are not downloaded
    again. ``<area>_single_sites.zip`` is unpacked into
    ``<folder>/<area>_single_sites/`` and ``wav.zip`` into ``<folder>/wav/``;
    both unpack into a temporary folder first and are renamed into place, and
    the whole fetch runs under a file lock, so concurrent calls and
    interrupted runs never leave a half-written file under its final name.
    An unpacked folder that already exists is checked against its zip's
    listing (every member present, with its size and CRC-32); missing or
    changed members are restored from the verified zip, with a warning. A
    complete release in a folder this process cannot write (no lock file
    possible) is verified without the lock and returned.

    Downloads go to ``.<name>.<pid>-<hex>.tmp`` beside the target, created
    with the usual permissions (the umask's, as cache files), and are renamed
    only once their hash matches. SIGTERM (``timeout``, SLURM) during a fetch
    removes the partial file before the process ends as the signal asks;
    whatever a SIGKILL leaves is removed by the next fetch.

    Parameters
    ----------
    area : {'A1', 'PEG'}
        Recording area.
    path : path-like, optional
        Release folder; :func:`data_dir` when omitted.
    wav : bool
        Also fetch the sound waveforms (``wav.zip``).
    progress : bool, optional
        Show tqdm progress bars while downloading; by default only when stderr
        is a terminal (never ``\\r`` lines in a log file).

    Returns
    -------
    pathlib.Path
        The release folder.

    Raises
    ------
    DownloadError
        A file could not be downloaded, what arrived does not match its hash,
        or the unpacked release is incomplete and cannot be restored. The
        message names the file and the URL, or what is missing.

    Examples
    --------
    >>> fetch("A1", path="/tmp/nat4xr-release")  # doctest: +SKIP
    PosixPath('/tmp/nat4xr-release')
    """
    names = release_files(area, wav)
    root = Path(path).expanduser().absolute() if path is not None else data_dir()
    show = sys.stderr.isatty() if progress is None else bool(progress)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"cannot create the release folder {root}: {exc}; pass another folder (path=) "
            "or set NAT4XR_DATA_DIR to a writable folder"
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
    if not show:  # pooch logs every download and unzip at INFO
        logger.setLevel(logging.WARNING)
    try:
        wait_announced(lock, f"fetching into {root}")
        try:
            lock.acquire()
        except filelock.Timeout:
            raise
        except OSError as exc:  # a read-only release folder: fine if nothing is missing
            return _verify_read_only(root, names, base_url, exc)
        try:
            record_owner(lock.lock_file)
            with _terminate_cleanly():
                pup.registry.update(_registry(root, names, base_url))
                for name in names:
                    remove_stale(root / name)  # what a killed download left; we hold the lock
                    _fetch_one(pup, name, show)
                _write_record(root, base_url, {n: pup.registry[n] for n in names})
        finally:
            lock.release()
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
        inner = pooch.DOIDownloader(
            progressbar=progress, chunk_size=1 << 20, headers=HEADERS, timeout=timeout
        )
    else:
        inner = None
    downloader = _Download(Path(pup.path) / name, pup.registry[name], inner, progress, timeout)
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


class _Download:
    """pooch downloader: the bytes as the server stored them, in nat4xr's own temp file.

    - HTTP(S) mirrors: the body is saved as sent (``Accept-Encoding:
      identity``, no content decoding), as curl and wget save it: a server
      labelling a ``.tgz`` ``Content-Encoding: x-gzip`` still delivers the
      archive's own bytes. If those do not match the hash but their decoded
      form does (a server that compressed on the fly), the decoded form is
      kept. The registered hash decides, never the header.
    - The temp file is ``.<name>.<pid>-<hex>.tmp`` (umask permissions), which
      replaces pooch's 0600 placeholder when complete, so the final file gets
      the usual permissions and a killed download leaves only a name the next
      fetch removes.
    """

    def __init__(
        self,
        target: Path,
        known_hash: str,
        inner: pooch.DOIDownloader | None,
        progress: bool,
        timeout: float,
    ) -> None:
        self.target, self.known_hash, self.inner = target, known_hash, inner
        self.progress, self.timeout = progress, timeout

    def __call__(self, url: str, output_file: str, pup: pooch.Pooch, check_only: bool = False):
        if check_only:
            return (self.inner or pooch.HTTPDownloader(timeout=self.timeout))(
                url, output_file, pup, check_only=True
            )
        Path(output_file).unlink(missing_ok=True)  # pooch's 0600 placeholder
        tmp = temp_path(self.target)
        try:
            with open(tmp, "xb"):
                pass  # created with the umask's permissions; the downloads fill it
            if self.inner is not None:
                self.inner(url, str(tmp), pup)
            else:
                self._http(url, tmp)
            os.replace(tmp, output_file)
        finally:
            tmp.unlink(missing_ok=True)
        return None

    def _http(self, url: str, tmp: Path) -> None:
        import requests
        import urllib3

        headers = {**HEADERS, "Accept-Encoding": "identity"}
        try:
            with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as reply:
                reply.raise_for_status()
                encoding = reply.headers.get("Content-Encoding", "").strip().lower()
                total = int(reply.headers.get("Content-Length", 0) or 0)
                bar = _bar(total, self.progress, self.target.name)
                try:
                    with open(tmp, "wb") as out:
                        for piece in _pieces(reply.raw):
                            out.write(piece)
                            bar.update(len(piece))
                finally:
                    bar.close()
        except urllib3.exceptions.HTTPError as exc:  # cut short, timed out: pooch retries these
            raise requests.exceptions.ConnectionError(f"{url}: {exc}") from exc
        if encoding in ("gzip", "x-gzip", "deflate") and not _matches(tmp, self.known_hash):
            _decode_if_it_matches(tmp, encoding, self.known_hash)


def _pieces(raw) -> Iterator[bytes]:
    """The body as received (up to 1 MiB at a time, without waiting to fill a piece)."""
    if not hasattr(raw, "read1"):  # urllib3 < 2
        yield from raw.stream(1 << 20, decode_content=False)
        return
    while piece := raw.read1(1 << 20, decode_content=False):
        yield piece


def _bar(total: int, show: bool, name: str):
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total or None, unit="B", unit_scale=True, desc=name, leave=True)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _matches(path: Path, known_hash: str) -> bool:
    """Whether ``path`` has ``known_hash`` (``alg:hex``, or hex for SHA-256, as pooch writes it)."""
    alg, _, value = known_hash.rpartition(":")
    return pooch.file_hash(str(path), alg=alg or "sha256") == value.lower()


def _decode_if_it_matches(tmp: Path, encoding: str, known_hash: str) -> None:
    """Replace ``tmp`` by its decoded form when that is what the hash registers."""
    decoded = temp_path(tmp)
    try:
        inflater = zlib.decompressobj(zlib.MAX_WBITS | (32 if "gzip" in encoding else 0))
        with open(tmp, "rb") as src, open(decoded, "wb") as out:
            while piece := src.read(1 << 20):
                out.write(inflater.decompress(piece))
            out.write(inflater.flush())
        if _matches(decoded, known_hash):
            os.replace(decoded, tmp)
    except zlib.error:
        pass  # not that encoding after all: pooch reports the hash mismatch
    finally:
        decoded.unlink(missing_ok=True)


class _Terminated(BaseException):
    """SIGTERM arrived during a fetch (raised so that cleanup runs)."""


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """Turn SIGTERM into an exception while fetching, then end as SIGTERM asks.

    Only where SIGTERM has its default action (it would kill the process
    without running any cleanup) and only in the main thread; a handler
    someone else installed is left alone.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def handler(signum, frame):
        raise _Terminated

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)  # partial files are gone: now end as asked
        raise  # pragma: no cover - not reached: the default action ends the process
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _verify_read_only(root: Path, names: list[str], base_url: str, cause: OSError) -> Path:
    """Without the lock: ``root`` if every file is there and verified, else a DownloadError."""
    try:
        registry = _registry(root, names, base_url)
        problems = []
        for name in names:
            if not (root / name).is_file():
                problems.append(f"{name} is missing")
            elif not _matches(root / name, registry[name]):
                problems.append(f"{name} does not match its hash")
            elif name.endswith(".zip"):
                bad = _unpacked_problems(root / name, root / name[: -len(".zip")])
                problems.extend(f"{name[: -len('.zip')]}/{m}" for m in bad[:5])
    except OSError as exc:
        problems = [str(exc)]
    if problems:
        raise DownloadError(
            f"cannot fetch into {root} ({cause.strerror or cause}), and the release there is "
            f"incomplete: {'; '.join(problems)}; fetch into a writable folder (path=) "
            "or ask the folder's owner to run the fetch"
        ) from cause
    return root


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
        if dest.is_dir():
            # Also after a new download of the zip: members are put back one by
            # one, and what else the folder holds (the user's files) stays.
            _restore_members(archive, dest)
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


def _listing(archive: Path, folder: str) -> dict[str, zipfile.ZipInfo]:
    """The zip's files by their path in the unpacked folder, as :class:`_AtomicUnzip` lays them.

    Names are cleaned as :mod:`zipfile` cleans them when extracting; ``__MACOSX``
    entries and folders are not part of a release.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
    except zipfile.BadZipFile as exc:
        raise DownloadError(
            f"{archive}: not a readable zip ({exc}); delete it and fetch again"
        ) from exc
    cleaned = {}
    for info in infos:
        parts = [p for p in info.filename.replace("\\", "/").split("/") if p not in ("", ".", "..")]
        if parts and parts[0] != "__MACOSX":
            cleaned["/".join(parts)] = info
    tops = {name.split("/")[0] for name in cleaned}
    if tops == {folder} and all("/" in name for name in cleaned):  # nested: <folder>/ is dropped
        cleaned = {name.split("/", 1)[1]: info for name, info in cleaned.items()}
    return cleaned


def _unpacked_problems(archive: Path, dest: Path) -> list[str]:
    """Members of ``archive`` missing from ``dest`` or different there (size or CRC-32)."""
    problems = []
    for rel, info in _listing(archive, dest.name).items():
        path = dest / rel
        if not path.is_file() or path.stat().st_size != info.file_size:
            problems.append(rel)
        elif _crc32(path) != info.CRC:
            problems.append(rel)
    return sorted(problems)


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while piece := fh.read(1 << 22):
            crc = zlib.crc32(piece, crc)
    return crc


def _restore_members(archive: Path, dest: Path) -> None:
    """Restore what is missing or changed in ``dest`` from its (hash-verified) zip.

    Each restored member is written beside its target and renamed into place;
    files that are not members of the zip are left alone.
    """
    bad = _unpacked_problems(archive, dest)
    if not bad:
        return
    listing = _listing(archive, dest.name)
    _check_unzip_size(archive, dest)
    with zipfile.ZipFile(archive) as zf:
        for rel in bad:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir() and not target.is_symlink():
                raise DownloadError(
                    f"{target} is a folder where {archive.name} has a file; move it away and "
                    "fetch again"
                )
            remove_stale(target)
            with atomic_path(target) as tmp:
                with zf.open(listing[rel]) as src, open(tmp, "xb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    still = _unpacked_problems(archive, dest)
    if still:
        raise DownloadError(
            f"{dest} still lacks {', '.join(still[:5])} after restoring them from "
            f"{archive.name}; check the folder's permissions and free space"
        )
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    warnings.warn(
        f"{dest}: restored {len(bad)} member(s) of {archive.name} that were missing or "
        f"changed: {shown}",
        Nat4Warning,
        stacklevel=2,
    )
