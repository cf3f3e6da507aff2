"""The netCDF cache: exact round trips, laziness, atomicity, locking and recovery."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import pytest
import xarray as xr

import nat4xr
from nat4xr import build, release
from nat4xr.cachefile import writer
from nat4xr.errors import CacheError, Nat4Warning
from nat4xr.opening import open_nat4
from nat4xr.testing import raise_if_dask_computes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """An empty data folder and cache folder for this test only."""
    monkeypatch.setenv("NAT4XR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NAT4XR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    nat4xr.synthetic.write_release(root, "A1", scale="tiny", seed=4)
    return root


@pytest.fixture(scope="module")
def built(release_dir):
    """The eager build of the tiny release, as the reference every cache must equal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        return build.build_dataset(release_dir, "A1").load()


def _open(release_dir, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)  # the synthetic release's traps
        return open_nat4("A1", path=release_dir, progress=False, **kwargs)


def _varied_dataset() -> xr.Dataset:
    """Random contract data with every coordinate kind and a sound with no repeats."""
    ds = nat4xr.synthetic.random_dataset(n_est=9, n_val=4, n_neurons=7, seed=5)
    response = ds["response"].values.copy()
    reps = ds["n_repeats"].values.copy()
    reps[3] = 0
    response[3] = np.nan
    coverage = ds["coverage"].values.copy()
    coverage[3] = False
    site = ds["site"].values.copy()
    site[0] = ""
    ds = ds.assign(response=(ds["response"].dims, response))
    ds = ds.assign_coords(
        n_repeats=("stim", reps),
        coverage=(("stim", "neuron"), coverage),
        site=("neuron", site),
        depth=("neuron", np.where(np.arange(7) % 3 == 0, np.nan, np.arange(7.0))),
    )
    ds["n_repeats"].attrs["description"] = "repeats recorded"
    ds.attrs.update(
        counts=[1, 2, 3], ratio=np.float32(0.5), flag=1, reconciled='{"a": "b"}', empty=""
    )
    return ds


# ----------------------------------------------------------------------------- write/open


@pytest.mark.parametrize("block_bytes", [64 << 20, 1])
def test_round_trip_is_exact(tmp_path, monkeypatch, block_bytes):
    monkeypatch.setattr(writer, "_BLOCK_BYTES", block_bytes)  # 1: one stim per block
    ds = _varied_dataset()
    path = nat4xr.cachefile.write_cache(
        ds.chunk({"stim": 5}), tmp_path / "c.nc", key="k", options={"x": 1}
    )
    back = nat4xr.cachefile.open_cache(path)
    xr.testing.assert_identical(back.load(), ds)
    for name, var in ds.variables.items():
        assert back[name].dtype == var.dtype, name
        assert back[name].dims == var.dims, name
    assert list(back.dims) == ["stim", "neuron", "repeat", "time", "freq"]
    assert back.encoding["nat4xr_cache"] == {
        "format": nat4xr.cachefile.CACHE_FORMAT,
        "key": "k",
        "options": {"x": 1},
    }


def test_only_recorded_repeats_are_stored(tmp_path):
    ds = _varied_dataset()
    path = nat4xr.cachefile.write_cache(ds, tmp_path / "c.nc")
    recorded = int(ds["n_repeats"].sum())
    with h5py.File(path, "r") as f:
        var = f["response"]
        assert var.chunks == (1, ds.sizes["neuron"], 1, ds.sizes["time"])
        assert var.id.get_num_chunks() == recorded
        stored = {var.id.get_chunk_info(i).chunk_offset[:3] for i in range(recorded)}
    expected = {(s, 0, r) for s, k in enumerate(ds["n_repeats"].values.tolist()) for r in range(k)}
    assert stored == expected


def test_opening_computes_nothing_and_is_chunked_by_stim(tmp_path):
    ds = _varied_dataset()
    path = nat4xr.cachefile.write_cache(ds, tmp_path / "c.nc")
    with raise_if_dask_computes():
        lazy = nat4xr.cachefile.open_cache(path)
        picked = lazy.isel(stim=[1, 10], neuron=slice(0, 3))
        assert isinstance(lazy["response"].data, da.Array)
        assert isinstance(lazy["spectrogram"].data, da.Array)
        assert isinstance(lazy["coverage"].data, np.ndarray)
        assert lazy["response"].chunks[1:] == ((7,), (20,), (15,))
    xr.testing.assert_identical(picked.load(), ds.isel(stim=[1, 10], neuron=slice(0, 3)))


def test_chunk_options(tmp_path):
    ds = _varied_dataset()
    path = nat4xr.cachefile.write_cache(ds, tmp_path / "c.nc")
    eager = nat4xr.cachefile.open_cache(path, chunks=None)
    assert isinstance(eager["response"].data, np.ndarray)
    xr.testing.assert_identical(eager, ds)
    assert nat4xr.cachefile.open_cache(path, chunks=4)["response"].chunks[0] == (4, 4, 4, 1)
    by_dict = nat4xr.cachefile.open_cache(path, chunks={"stim": 6, "neuron": 2})
    assert by_dict["response"].chunks[:2] == ((6, 6, 1), (2, 2, 2, 1))
    with pytest.raises(ValueError, match="unknown dimension"):
        nat4xr.cachefile.open_cache(path, chunks={"cell": 2})
    with pytest.raises(ValueError, match="chunks must be"):
        nat4xr.cachefile.open_cache(path, chunks="big")


def test_auto_chunks_are_8_to_32_stims():
    dims = ("stim", "neuron", "repeat", "time")
    big = xr.Dataset({"response": (dims, da.zeros((600, 849, 20, 150), dtype="float32"))})
    assert nat4xr.cachefile.reading.chunk_spec(big, "auto") == {"stim": 8}
    small = big.isel(neuron=slice(0, 10))
    assert nat4xr.cachefile.reading.chunk_spec(small, "auto") == {"stim": 32}


def test_open_cache_rejects_bad_files(tmp_path):
    ds = _varied_dataset()
    good = nat4xr.cachefile.write_cache(ds, tmp_path / "good.nc")
    with pytest.raises(CacheError, match="no such cache file"):
        nat4xr.cachefile.open_cache(tmp_path / "absent.nc")
    truncated = tmp_path / "truncated.nc"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CacheError, match=r"truncated\.nc"):
        nat4xr.cachefile.open_cache(truncated)
    garbage = tmp_path / "garbage.nc"
    garbage.write_bytes(b"not a netCDF file at all" * 10)
    with pytest.raises(CacheError, match="not a nat4xr cache file"):
        nat4xr.cachefile.open_cache(garbage)
    foreign = tmp_path / "foreign.nc"
    ds.to_netcdf(foreign)
    with pytest.raises(CacheError, match="not a nat4xr cache"):
        nat4xr.cachefile.open_cache(foreign)
    edited = tmp_path / "edited.nc"
    shutil.copy(good, edited)
    import netCDF4

    with netCDF4.Dataset(edited, "a") as nc:  # HDF5 cuts the file at its own end: no trailer
        nc.setncattr("nat4xr_cache_format", np.int64(99))
    with pytest.raises(CacheError, match="no nat4xr cache trailer"):
        nat4xr.cachefile.open_cache(edited)
    future = tmp_path / "future.nc"
    data = bytearray(good.read_bytes())
    from nat4xr.cachefile.chunks import crc32
    from nat4xr.cachefile.trailer import FOOT

    start = FOOT.unpack_from(data, len(data) - FOOT.size)[2]
    struct.pack_into("<II", data, len(data) - FOOT.size, 99, 0)  # format 99, CRC re-made
    struct.pack_into("<I", data, len(data) - FOOT.size + 4, crc32(data[start:]))
    future.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="format 99"):
        nat4xr.cachefile.open_cache(future)


def test_failed_write_leaves_nothing(tmp_path):
    ds = _varied_dataset()

    def broken(block):
        raise RuntimeError("disk on fire")

    bad = ds.assign(response=ds["response"].chunk({"stim": 2}).copy(
        data=ds["response"].chunk({"stim": 2}).data.map_blocks(broken, dtype="float32")
    ))  # fmt: skip
    with pytest.raises(RuntimeError, match="disk on fire"):
        nat4xr.cachefile.write_cache(bad, tmp_path / "c.nc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.nc.lock"]


# ----------------------------------------------------------------------------- open_nat4


def test_open_nat4_builds_once_then_opens_lazily(dirs, release_dir, built, monkeypatch):
    calls = []
    real_build = build.build_dataset

    def counting_build(*args, **kwargs):
        calls.append(kwargs.get("subset"))
        return real_build(*args, **kwargs)

    monkeypatch.setattr(build, "build_dataset", counting_build)
    first = _open(release_dir)
    files = sorted((dirs / "cache").glob("*.nc"))
    assert [f.name[:7] for f in files] == ["A1-all-"] and len(files[0].stem) == len("A1-all-") + 16
    assert first.encoding["source"] == str(files[0])
    stamp = files[0].stat().st_mtime_ns

    with raise_if_dask_computes():
        again = _open(release_dir)
    assert calls == ["all"]
    assert files[0].stat().st_mtime_ns == stamp
    assert isinstance(again["response"].data, da.Array)
    xr.testing.assert_identical(again.load(), built)
    xr.testing.assert_identical(_open(release_dir, chunks=None), built)


def test_cache_key_follows_options_and_sources(dirs, release_dir, tmp_path):
    _open(release_dir)
    _open(release_dir, subset="val")
    _open(release_dir, normalize="nems")
    names = sorted(p.name.split("-")[1] for p in (dirs / "cache").glob("*.nc"))
    assert names == ["all", "all", "val"]

    copy = tmp_path / "copy"
    shutil.copytree(release_dir, copy)
    key = nat4xr.cachedir.cache_key(release.source_files(copy, "A1"), {"a": 1})
    csv = copy / "A1_pred_correlation.csv"
    os.utime(csv, ns=(time.time_ns(), csv.stat().st_mtime_ns + 10**9))
    # The table is keyed by its content: touched, it keeps its cache; edited, it gets a new one.
    assert nat4xr.cachedir.cache_key(release.source_files(copy, "A1"), {"a": 1}) == key
    csv.write_text(csv.read_text() + "\n")
    assert nat4xr.cachedir.cache_key(release.source_files(copy, "A1"), {"a": 1}) != key


def test_cache_false_writes_nothing(dirs, release_dir, built):
    ds = _open(release_dir, cache=False)
    xr.testing.assert_identical(ds.load(), built)
    assert not (dirs / "cache").exists()


def test_missing_release_says_how_to_fetch(dirs, tmp_path):
    with pytest.raises(nat4xr.MissingFileError, match="download=True"):
        open_nat4("A1", path=tmp_path / "nowhere")


@pytest.mark.filterwarnings("ignore::nat4xr.errors.Nat4Warning")
@pytest.mark.parametrize("damage", ["truncate", "foreign"])
def test_damaged_cache_is_rebuilt_with_a_warning(dirs, release_dir, built, damage):
    path = Path(_open(release_dir).encoding["source"])
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        nat4xr.synthetic.random_dataset().to_netcdf(path)
    with pytest.warns(Nat4Warning, match="rebuilding the cache"):
        ds = open_nat4("A1", path=release_dir, progress=False)
    xr.testing.assert_identical(ds.load(), built)
    xr.testing.assert_identical(nat4xr.cachefile.open_cache(path).load(), built)


def test_rebuild_replaces_the_file(dirs, release_dir, built):
    path = Path(_open(release_dir).encoding["source"])
    before = path.stat().st_ino, path.stat().st_mtime_ns
    ds = _open(release_dir, rebuild=True)
    assert (path.stat().st_ino, path.stat().st_mtime_ns) != before
    xr.testing.assert_identical(ds.load(), built)


# ----------------------------------------------------------------------------- processes

_BUILDER = """
import sys, warnings
import nat4xr
from nat4xr import build
from nat4xr.opening import open_nat4
warnings.simplefilter("ignore")
real = build.build_dataset
def announcing(*a, **k):
    print("BUILT", flush=True)
    return real(*a, **k)
build.build_dataset = announcing
ds = open_nat4("A1", path=sys.argv[1], progress=False)
print("SOURCE", ds.encoding["source"])
print("SUM", float(ds["response"].sum()))
"""

_SLOW_WRITER = """
import sys, time
import nat4xr
ds = nat4xr.synthetic.random_dataset(n_est=40, n_val=2, n_neurons=6, seed=1)
def slow(block):
    time.sleep(0.25)
    return block
resp = ds["response"].chunk({"stim": 1})
ds = ds.assign(response=resp.copy(data=resp.data.map_blocks(slow, dtype="float32")))
nat4xr.cachefile.write_cache(ds, sys.argv[1])
print("FINISHED", flush=True)
"""


def _env(dirs) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        NAT4XR_DATA_DIR=str(dirs / "data"),
        NAT4XR_CACHE_DIR=str(dirs / "cache"),
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    return env


def test_two_concurrent_builders_build_once(dirs, release_dir, built):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILDER, str(release_dir)],
            env=_env(dirs),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    stdout = [out for out, _ in outputs]
    assert sum(out.count("BUILT") for out in stdout) == 1
    sources = {line for out in stdout for line in out.splitlines() if line.startswith("SOURCE")}
    sums = {line for out in stdout for line in out.splitlines() if line.startswith("SUM")}
    assert len(sources) == 1 and len(sums) == 1
    (path,) = (dirs / "cache").glob("*.nc")
    assert sorted(p.name for p in (dirs / "cache").iterdir()) == [path.name, path.name + ".lock"]
    xr.testing.assert_identical(nat4xr.cachefile.open_cache(path).load(), built)


def test_writer_killed_mid_write_leaves_a_correct_cache(dirs, release_dir, built):
    path = Path(_open(release_dir).encoding["source"])
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(path)],
        env=_env(dirs),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not list(path.parent.glob(".*.tmp")):
        assert child.poll() is None, child.communicate()[1]
        assert time.monotonic() < deadline, "the writer never started"
        time.sleep(0.05)
    time.sleep(0.3)  # now inside the slow response write
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate(timeout=30)
    assert "FINISHED" not in out
    assert list(path.parent.glob(".*.tmp")), "the killed writer's temporary file"

    # The finished file was never touched, and the lock died with the writer.
    xr.testing.assert_identical(nat4xr.cachefile.open_cache(path).load(), built)
    ds = _open(release_dir, rebuild=True)
    xr.testing.assert_identical(ds.load(), built)
    assert not list(path.parent.glob(".*.tmp"))


# ----------------------------------------------------------------------------- demo, housekeeping


def test_open_demo_works_offline_and_is_written_once(dirs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        demo = nat4xr.opening.open_demo()
    assert dict(demo.sizes) == {"stim": 34, "neuron": 40, "repeat": 20, "time": 150, "freq": 18}
    nat4xr.check_dataset(demo)
    (folder,) = (dirs / "data").glob("demo-*")
    stamp = (folder / ".complete").stat().st_mtime_ns
    with raise_if_dask_computes():
        again = nat4xr.opening.open_demo(chunks=5)
    assert again["response"].chunks[0][0] == 5
    assert (folder / ".complete").stat().st_mtime_ns == stamp
    assert again.encoding["source"] == demo.encoding["source"]


def test_cache_list_and_clear(dirs, release_dir):
    assert nat4xr.cachedir.cache_list() == []
    _open(release_dir)
    _open(release_dir, subset="val")
    entries = nat4xr.cachedir.cache_list()
    assert sorted(e.subset for e in entries) == ["all", "val"]
    assert all(e.area == "A1" and len(e.key) == 16 and e.size > 0 for e in entries)
    stale = dirs / "cache" / f".{entries[0].path.name}.123-abcd.tmp"
    stale.write_bytes(b"partial")
    assert nat4xr.cachedir.cache_clear(area="PEG") == []
    removed = nat4xr.cachedir.cache_clear()
    assert sorted(removed) == sorted([e.path for e in entries] + [stale])
    assert nat4xr.cachedir.cache_list() == []
