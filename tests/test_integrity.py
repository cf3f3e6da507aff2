"""A damaged cache is never served: injected faults end in identical values or a CacheError.

The counts in docs/reliability.md come from ``python tests/faultinjection.py``
(seeded flips per region, every byte of the chunk index, a dense sweep of the
metadata, 10,000 flips anywhere); here a short, deterministic version of each
runs on every test run, every case in a forked child with a watchdog.
"""

from __future__ import annotations

import collections
import shutil
import struct
import subprocess
import sys
import textwrap
import warnings

import filelock
import h5py
import numpy as np
import pytest
import xarray as xr
from faultinjection import REGIONS, random_flips, run, sample_dataset, sweep

import nat4xr
from nat4xr.cachefile import open_cache, write_cache
from nat4xr.errors import CacheError, Nat4Warning

torch = pytest.importorskip("torch")


#: Seconds a case may take before the watchdog calls it a hang (a normal case takes ~0.05 s).
WATCHDOG = 30.0


def test_seeded_faults_in_every_region_never_give_a_wrong_value(tmp_path):
    counts = run(cases=12, seed=1, workdir=tmp_path, timeout=WATCHDOG)
    assert set(counts) == {*REGIONS, "truncation"}
    for region, outcomes in counts.items():
        assert sum(outcomes.values()) == 12, region
        # every byte is checked: data at read, everything else before netCDF parses it
        expected = "error at read" if region.endswith("chunks") else "error at open"
        assert outcomes == {expected: 12}, (region, dict(outcomes))


def test_flips_of_the_chunk_index_end_at_open(tmp_path):
    # The sign bit and one other value at every 13th byte of the index, and at
    # every byte of its footer (format, CRC, sizes, magic): all caught at open.
    counts = sweep(tmp_path, "chunk index", stride=13, timeout=WATCHDOG)
    counts += sweep(tmp_path, "chunk index", stride=1, timeout=WATCHDOG, tail=48)
    assert set(counts) == {"error at open"}, dict(counts)
    assert counts.total() > 2 * 48 + 800


def test_flips_of_the_metadata_end_at_open(tmp_path):
    counts = sweep(tmp_path, "HDF5 metadata", stride=41, sign=False, timeout=WATCHDOG)
    counts += sweep(tmp_path, "coordinates", stride=7, sign=False, timeout=WATCHDOG)
    assert set(counts) == {"error at open"}, dict(counts)
    assert counts.total() > 800


def test_random_flips_anywhere_are_caught(tmp_path):
    counts = random_flips(300, seed=3, workdir=tmp_path, timeout=WATCHDOG)
    outcomes = collections.Counter()
    for counter in counts.values():
        outcomes += counter
    assert set(outcomes) <= {"error at open", "error at read"}, dict(outcomes)
    assert outcomes.total() == 300


def _global_heap_object(data: bytes, k: int) -> int:
    """Offset of the size field of object ``k`` of the file's first HDF5 global heap."""
    at = data.index(b"GCOL") + 16  # signature, version, reserved, collection size
    objects = []
    while True:
        index, _, _, size = struct.unpack_from("<HHIQ", data, at)
        if index == 0:
            break
        objects.append(at + 8)
        at += 16 + -(-size // 8) * 8
    return objects[k]


def _in_subprocess(code: str, timeout: float) -> str:
    """stdout of ``code`` run by a fresh interpreter; ``"hang"`` after ``timeout`` seconds."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return "hang"
    return done.stdout.strip() or f"exit {done.returncode}: {done.stderr[-300:]}"


def test_a_metadata_flip_that_hangs_netcdf_is_a_cache_error(tmp_path):
    # A global heap object's size XOR-ed with 172 sends netCDF-C's open into an
    # endless loop (h5py walks the same file); nat4xr must refuse the file first.
    path = write_cache(sample_dataset(), tmp_path / "c.nc")
    data = bytearray(path.read_bytes())
    data[_global_heap_object(bytes(data), -1)] ^= 172
    path.write_bytes(bytes(data))
    raw = _in_subprocess(f"import netCDF4; netCDF4.Dataset({str(path)!r}).close(); print('ok')", 6)
    assert raw == "hang"  # the damage is the kind that hangs the library
    opened = _in_subprocess(
        f"""
        from nat4xr.cachefile import open_cache
        from nat4xr.errors import CacheError
        try:
            open_cache({str(path)!r})
        except CacheError as exc:
            print("CacheError:", exc)
        """,
        timeout=120,
    )
    assert opened.startswith(f"CacheError: {path}: its HDF5/netCDF metadata"), opened


def test_the_reported_byte_is_a_cache_error(tmp_path):
    path = write_cache(sample_dataset(), tmp_path / "c.nc")
    data = bytearray(path.read_bytes())
    data[7752] ^= 172
    path.write_bytes(bytes(data))
    opened = _in_subprocess(
        f"""
        from nat4xr.cachefile import open_cache
        from nat4xr.errors import CacheError
        try:
            open_cache({str(path)!r})
        except CacheError as exc:
            print("CacheError:", exc)
        """,
        timeout=120,
    )
    assert opened.startswith(f"CacheError: {path}"), opened


@pytest.fixture
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    nat4xr.synthetic.write_release(root, "A1", scale="tiny", seed=5)
    return root


def _open(root, **kw):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "cell", Nat4Warning)  # the release's own traps
        warnings.filterwarnings("ignore", "row", Nat4Warning)
        return nat4xr.open_nat4("A1", path=root, progress=False, **kw)


def test_damage_found_at_open_rebuilds_with_a_warning(release, tmp_path, monkeypatch):
    monkeypatch.setenv("NAT4XR_CACHE_DIR", str(tmp_path / "cache"))
    first = _open(release)
    path = first.encoding["source"]
    expected = first.load()
    first.close()
    with h5py.File(path, "r") as f:
        offset = f["neuron"].id.get_offset()
    with open(path, "r+b") as fh:  # one cell id renamed: ...-17-1 would read ...-17-0
        fh.seek(offset + 2)
        byte = fh.read(1)
        fh.seek(offset + 2)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.warns(Nat4Warning, match=rf"{path}.*metadata.*CRC-32.*rebuilding"):
        again = _open(release)
    xr.testing.assert_identical(again.load(), expected)


def test_a_cache_of_the_previous_format_is_rebuilt_with_a_warning(release, tmp_path, monkeypatch):
    monkeypatch.setenv("NAT4XR_CACHE_DIR", str(tmp_path / "cache"))
    first = _open(release)
    path = first.encoding["source"]
    expected = first.load()
    first.close()
    expected.to_netcdf(path, engine="netcdf4")  # as format 4 left it: HDF5, no trailer
    with pytest.warns(
        Nat4Warning,
        match=rf"{path} has no nat4xr cache trailer: it was written by an older.*rebuilding",
    ):
        again = _open(release)
    xr.testing.assert_identical(again.load(), expected)
    assert nat4xr.cachefile.is_cache_file(path)


def test_damage_found_by_a_dask_task_or_a_torch_worker_names_file_variable_and_stim(tmp_path):
    ds = nat4xr.synthetic.random_dataset(n_est=4, n_val=2, n_neurons=5, n_time=8, seed=3)
    path = write_cache(ds, tmp_path / "c.nc")
    val = int(np.flatnonzero(ds.subset.values == "val")[0])
    with open_cache(path, chunks=None) as lazy:
        index = lazy.response.encoding["nat4xr_source"].file.index["response"]
        offset = int(index.offset[val, 0, 1, 0])
    with open(path, "r+b") as fh:
        fh.seek(offset + 7)
        fh.write(b"\xff")
    message = rf"{path}.*response.*stim={val}.*repeat=1.*open_nat4\(\.\.\., rebuild=True\)"
    with open_cache(path, chunks=2) as lazy:
        with pytest.raises(CacheError, match=message):
            lazy.response.sum().compute(scheduler="threads")
        loader = lazy.nat4.to_torch(batch_size=2, num_workers=1, multiprocessing_context="fork")
        with pytest.raises(CacheError, match=message):
            list(loader)


def test_cache_clear_removes_leftover_lock_files(tmp_path, monkeypatch):
    monkeypatch.setenv("NAT4XR_CACHE_DIR", str(tmp_path))
    ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=3, n_time=4)
    path = write_cache(ds, tmp_path / "A1-all-0123456789abcdef.nc")
    stray = tmp_path / "PEG-val-fedcba9876543210.nc.lock"  # a lock whose cache is gone
    stray.write_text("")
    assert (tmp_path / f"{path.name}.lock").exists()
    copy = tmp_path / "PEG-all-00000000000000aa.nc"  # a cache copied in: no lock file
    shutil.copyfile(path, copy)
    busy = write_cache(ds, tmp_path / "A1-val-00000000000000bb.nc")
    with filelock.FileLock(f"{busy}.lock", timeout=0):  # being written by someone else
        removed = nat4xr.cachedir.cache_clear()
    assert sorted(p.name for p in removed) == sorted([path.name, copy.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == [busy.name, f"{busy.name}.lock"]


def test_a_full_disk_names_the_folder_and_the_cause(tmp_path, monkeypatch):
    import errno

    from nat4xr.cachefile import writer

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "_chunk_tables", full)
    ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=3, n_time=4)
    with pytest.raises(CacheError, match=rf"in {tmp_path}: the disk is full") as err:
        write_cache(ds, tmp_path / "c.nc")
    assert isinstance(err.value.__cause__, OSError)
    assert [p.name for p in tmp_path.iterdir()] == ["c.nc.lock"]


def test_shutil_copy_of_a_cache_is_served(tmp_path):
    ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=2, n_neurons=4, n_time=6)
    path = write_cache(ds, tmp_path / "c.nc")
    copy = tmp_path / "elsewhere" / "c.nc"
    copy.parent.mkdir()
    shutil.copy2(path, copy)
    with open_cache(copy) as back:
        xr.testing.assert_identical(back.load(), ds)
