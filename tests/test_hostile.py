"""Hostile archives: escaping paths, links, devices and bombs never write or exhaust anything.

The reader never extracts a tar (it streams members and skips everything that
is not a regular file); ``fetch`` does unpack the per-site zip, through
zipfile, which strips absolute and ``..`` parts and never creates links, and
refuses archives whose declared sizes are absurd. Every archive here is built
by hand with tarfile/zipfile.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import shutil
import tarfile
import tracemalloc
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from nat4xr import fetch, nems
from nat4xr.build import build_dataset
from nat4xr.errors import DownloadError, FormatError, Nat4Warning
from nat4xr.synthetic import write_release

POP = "A1_NAT4_ozgf.fs100.ch18.tgz"
SITES = "A1_single_sites.zip"
MiB = 2**20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("hostile"), "A1", scale="tiny", seed=0)


@pytest.fixture
def release(tiny, tmp_path, monkeypatch):
    """A copy of the release; the working directory is a sibling folder, watched for writes."""
    root = tmp_path / "release"
    shutil.copytree(tiny.root, root)
    cwd = tmp_path / "cwd" / "a" / "b"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    return root


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.lstat().st_size for p in folder.rglob("*")}


@contextlib.contextmanager
def traced_peak() -> Iterator[list[int]]:
    """``peak[0]``: the most memory Python held at once inside the block (tracemalloc)."""
    peak = [0]
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def build_quiet(root: Path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        return build_dataset(root, "A1", **kw)


def assert_truth(ds, truth) -> None:
    expected = truth.expected_dataset()
    np.testing.assert_array_equal(ds["response"].values, expected["response"].values)
    np.testing.assert_array_equal(ds["spectrogram"].values, expected["spectrogram"].values)


def members_of(tgz: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(tgz) as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]


def write_tgz(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def info(
    name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = ""
) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.linkname = kind, size, link
    return ti


# -- tar members that point outside --------------------------------------------------------


def test_escaping_tar_members_are_never_written(release, tiny, tmp_path):
    pop = release / POP
    outside = tmp_path / "outside"
    hostile = [
        (info(str(outside / "abs.txt"), size=5), b"owned"),
        (info("../../../outside/dotdot.txt", size=5), b"owned"),
        (info("rec/link", tarfile.SYMTYPE, link=str(outside / "sym.txt")), None),
        (info("rec/hard", tarfile.LNKTYPE, link="/etc/passwd"), None),
        (info("rec/dev", tarfile.CHRTYPE), None),
        (info("rec/fifo", tarfile.FIFOTYPE), None),
        (info("../../outside/dir", tarfile.DIRTYPE), None),
    ]
    write_tgz(pop, hostile + members_of(pop))
    before_release, before_tmp = snapshot(release), snapshot(tmp_path)
    assert_truth(build_quiet(release), tiny)
    assert not outside.exists()
    assert snapshot(release) == before_release
    assert snapshot(tmp_path) == before_tmp


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_links_to_data_members_are_not_followed(release, kind):
    """A symlink or hardlink in place of the resp CSV is skipped, never read through."""
    pop = release / POP
    target = release / "secret.csv"
    target.write_text("1,2,3\n")
    members = [
        (info(m.name, kind, link=str(target)), None) if m.name.endswith(".resp.csv") else (m, d)
        for m, d in members_of(pop)
    ]
    write_tgz(pop, members)
    with pytest.raises(FormatError, match=r"rasterized signal 'resp' has no \.csv data file"):
        build_quiet(release)


def test_a_second_copy_of_a_member_is_an_error(release):
    """'../x/rec.resp.csv' after the real one must not silently replace it."""
    pop = release / POP
    members = members_of(pop)
    (resp,) = [(m, d) for m, d in members if m.name.endswith(".resp.csv")]
    fake = b"\n".join([b"9.0," * 7 + b"9.0"] * 1200) + b"\n"
    write_tgz(
        pop, [*members, (info("../../evil/" + Path(resp[0].name).name, size=len(fake)), fake)]
    )
    with pytest.raises(FormatError, match=r"second csv member for signal 'resp'"):
        build_quiet(release)


# -- sizes: headers that lie, bombs --------------------------------------------------------


def test_tar_header_claiming_a_huge_member(release):
    """A header announcing 50 GB with a few bytes behind it: a truncation error, at once."""
    pop = release / POP
    data = b""
    for m, d in members_of(pop):
        if m.name.endswith(".resp.csv"):
            m = info(m.name, size=50 * 2**30)
            data += m.tobuf(format=tarfile.GNU_FORMAT) + b"0.0,0.0\n" * 100
            break
        d = d or b""
        data += m.tobuf(format=tarfile.GNU_FORMAT) + d + b"\0" * (-len(d) % 512)
    pop.write_bytes(gzip.compress(data, compresslevel=1))
    with traced_peak() as peak, pytest.raises(FormatError, match="truncated or corrupt"):
        build_quiet(release)
    assert peak[0] < 64 * MiB


def _bomb_tgz(path: Path, members, name_suffix: str, size: int, line: bytes = b"\0") -> None:
    """Rewrite ``path`` with the member ending in ``name_suffix`` replaced by ``size`` bytes."""
    with gzip.open(path, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        for m, d in members:
            if m.isfile() and m.name.endswith(name_suffix):
                m = info(m.name, size=size)
                tar.addfile(m, _Repeat(line, size))
            else:
                tar.addfile(m, io.BytesIO(d) if d is not None else None)


class _Repeat(io.RawIOBase):
    """``size`` bytes of ``unit`` repeated, made on the fly."""

    def __init__(self, unit: bytes, size: int) -> None:
        self.block = unit * max(1, (1 << 20) // len(unit))
        self.left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        out = (self.block * (n // len(self.block) + 1))[:n]
        self.left -= n
        return out


@pytest.mark.parametrize(
    ("suffix", "unit", "limit", "message"),
    [
        (".resp.csv", b"0.0," * 7 + b"0.0\n", None, "more than 1200 rows"),  # sidecar bound
        (".resp.epoch.csv", b"x", ("MAX_EPOCH_BYTES", MiB), "larger than"),
        (".meta.json", b" ", None, "larger than"),  # JSON: 64 MiB, fixed
    ],
)
def test_population_member_bombs_stop_early(release, monkeypatch, suffix, unit, limit, message):
    if limit:
        monkeypatch.setattr(nems, *limit)
    pop = release / POP
    _bomb_tgz(pop, members_of(pop), suffix, 80 * MiB, unit)
    assert pop.stat().st_size < 2 * MiB
    with traced_peak() as peak, pytest.raises(FormatError, match=message):
        build_quiet(release)
    assert peak[0] < 200 * MiB


def test_csv_without_a_row_bound_stops_at_the_size_limit(release, monkeypatch):
    """No sidecar before the CSV (no segments hint): the matrix size limit stops it."""
    monkeypatch.setattr(nems, "MAX_MATRIX_BYTES", 4 * MiB)
    pop = release / POP
    members = [(m, d) for m, d in members_of(pop) if not m.name.endswith(".resp.json")]
    _bomb_tgz(pop, members, ".resp.csv", 64 * MiB, b"0.0," * 7 + b"0.0\n")
    with pytest.raises(FormatError, match=r"resp\.csv: more than .* rows \(size limit\)"):
        build_quiet(release)


def _site_members(release: Path) -> tuple[list[tuple[zipfile.ZipInfo, bytes]], int]:
    with zipfile.ZipFile(release / SITES) as zf:
        items = [(i, zf.read(i)) for i in zf.infolist()]
    first = next(k for k, (i, _) in enumerate(items) if i.filename.endswith(".tgz"))
    return items, first


def _rezip(release: Path, items) -> None:
    with zipfile.ZipFile(release / SITES, "w") as zf:
        for i, d in items:
            zf.writestr(i, d)


def test_hdf5_member_bomb(release, monkeypatch):
    """A spike file larger than the member limit is refused after reading that much."""
    monkeypatch.setattr(nems, "MAX_MEMBER_BYTES", MiB)
    items, k = _site_members(release)
    tgz = release / "site.tgz"
    tgz.write_bytes(items[k][1])
    _bomb_tgz(tgz, members_of(tgz), ".resp.h5", 32 * MiB)
    items[k] = (items[k][0], tgz.read_bytes())
    _rezip(release, items)
    with pytest.raises(FormatError, match=r"resp\.h5: member larger than"):
        build_quiet(release)


def test_hdf5_dataset_that_inflates_past_the_limit(release):
    """A 2 GiB spike dataset that is all fill value: a tiny file, refused before reading."""
    items, k = _site_members(release)
    tgz = release / "site.tgz"
    tgz.write_bytes(items[k][1])
    members = members_of(tgz)
    (h5member,) = [(m, d) for m, d in members if m.name.endswith(".resp.h5")]
    with h5py.File(io.BytesIO(h5member[1]), "r") as src:
        raw = io.BytesIO()
        with h5py.File(raw, "w") as dst:
            for n, name in enumerate(src):
                if n == 0:
                    dst.create_dataset(name, shape=(2**28,), dtype="f8", chunks=(2**16,),
                                       compression="gzip")  # fmt: skip
                else:
                    dst[name] = src[name][()]
    bomb = raw.getvalue()
    assert len(bomb) < MiB
    members = [
        (info(m.name, size=len(bomb)), bomb) if m is h5member[0] else (m, d) for m, d in members
    ]
    write_tgz(tgz, members)
    items[k] = (items[k][0], tgz.read_bytes())
    _rezip(release, items)
    with traced_peak() as peak, pytest.raises(FormatError, match="refusing to read them"):
        build_quiet(release)
    assert peak[0] < 200 * MiB


def test_zip_member_that_inflates_to_hundreds_of_mb_streams(release, tiny):
    """A site tgz padded with a 256 MiB junk member inside the zip: read through, not held."""
    items, k = _site_members(release)
    tgz = release / "site.tgz"
    tgz.write_bytes(items[k][1])
    members = members_of(tgz)
    junk = (info("ARM029a_NAT4_fs1000/junk.bin", size=256 * MiB), b"")
    with gzip.open(tgz, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        tar.addfile(junk[0], _Repeat(b"\0", 256 * MiB))
        for m, d in members:
            tar.addfile(m, io.BytesIO(d) if d is not None else None)
    items[k] = (items[k][0], tgz.read_bytes())
    tgz.unlink()
    items[k][0].compress_type = zipfile.ZIP_DEFLATED
    _rezip(release, items)
    with traced_peak() as peak:
        ds = build_quiet(release)
    assert_truth(ds, tiny)
    assert peak[0] < 200 * MiB


def test_zip_names_that_escape_are_only_names(release, tiny, tmp_path):
    """The reader opens zip members by name and never extracts: hostile names change nothing."""
    items, _ = _site_members(release)
    link = zipfile.ZipInfo("A1_single_sites/link")
    link.external_attr = 0o120777 << 16  # a symlink entry
    items += [
        (zipfile.ZipInfo("../../outside/escape.txt"), b"owned"),
        (zipfile.ZipInfo("/abs/escape.txt"), b"owned"),
        (link, b"/etc/passwd"),
    ]
    _rezip(release, items)
    before = snapshot(tmp_path)
    assert_truth(build_quiet(release), tiny)
    assert snapshot(tmp_path) == before


# -- fetch's unzip ---------------------------------------------------------------------------


def _hostile_zip(path: Path, outside: Path) -> None:
    link = zipfile.ZipInfo("A1_single_sites/link")
    link.external_attr = 0o120777 << 16
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("A1_single_sites/ok.tgz", b"data")
        zf.writestr("../../" + outside.name + "/dotdot.txt", b"owned")
        zf.writestr(str(outside / "abs.txt"), b"owned")
        zf.writestr(link, str(outside / "target"))


def test_fetch_unzip_keeps_every_member_inside(tmp_path):
    folder = tmp_path / "data" / "release"
    folder.mkdir(parents=True)
    outside = tmp_path / "outside"
    archive = folder / "A1_single_sites.zip"
    _hostile_zip(archive, outside)
    dest = Path(fetch._AtomicUnzip("A1_single_sites")(str(archive), "download", None))
    assert dest == folder / "A1_single_sites"
    assert not outside.exists()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(folder in p.parents for p in written), written
    # several top-level entries: the zip's layout is kept under the folder
    assert (dest / "A1_single_sites" / "ok.tgz").read_bytes() == b"data"
    assert (dest / "outside" / "dotdot.txt").read_bytes() == b"owned"  # '..' stripped
    assert not any(p.is_symlink() for p in folder.rglob("*"))
    link = dest / "A1_single_sites" / "link"
    assert link.read_text() == str(outside / "target")  # a plain file, not a link


def _zip_with_declared_size(path: Path, declared: int) -> None:
    """A zip whose central directory announces ``declared`` bytes for one small member."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("A1_single_sites/a.tgz", b"x" * 100)
    raw = bytearray(path.read_bytes())
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 24 : cd + 28] = (declared & 0xFFFFFFFF).to_bytes(4, "little")
    path.write_bytes(bytes(raw))


def test_fetch_refuses_a_zip_bomb(tmp_path, monkeypatch):
    folder = tmp_path / "release"
    folder.mkdir()
    archive = folder / "A1_single_sites.zip"
    _zip_with_declared_size(archive, 4 * 2**30 - 1)  # 4 GiB declared
    monkeypatch.setattr(fetch, "MAX_UNZIP_BYTES", 2**30)
    with pytest.raises(DownloadError, match=r"would unpack to 4\.0 GiB"):
        fetch._AtomicUnzip("A1_single_sites")(str(archive), "download", None)
    assert not (folder / "A1_single_sites").exists()
    assert [p.name for p in folder.iterdir()] == ["A1_single_sites.zip"]


def test_fetch_unzip_stops_at_the_declared_size(tmp_path):
    """A member whose data is longer than declared: zipfile stops and the CRC fails."""
    folder = tmp_path / "release"
    folder.mkdir()
    archive = folder / "A1_single_sites.zip"
    _zip_with_declared_size(archive, 10)
    with pytest.raises(DownloadError, match="cannot be unpacked"):
        fetch._AtomicUnzip("A1_single_sites")(str(archive), "download", None)
    assert [p.name for p in folder.iterdir()] == ["A1_single_sites.zip"]


def test_corrupt_zip_is_a_download_error(tmp_path):
    folder = tmp_path / "release"
    folder.mkdir()
    archive = folder / "A1_single_sites.zip"
    archive.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DownloadError, match="not a readable zip"):
        fetch._AtomicUnzip("A1_single_sites")(str(archive), "download", None)
