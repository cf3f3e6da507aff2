"""Housekeeping under real conditions: cache clear, cache keys, paths and arguments.

Each test reproduces what users on shared machines, clusters and notebooks do
(a colleague's file in the cache folder, an edited table with its time
restored, a clear while a notebook reads, a relative data folder and a
``%cd``) and checks the outcome against what was written, never against the
code under test. Downloads, signals and the command line are in
``test_housekeeping_cli.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import nat4xr
from nat4xr import build, cachedir, opening
from nat4xr.cachefile import open_cache, write_cache
from nat4xr.errors import CacheError, Nat4Warning

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("NAT4XR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NAT4XR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    nat4xr.synthetic.write_release(root, "A1", scale="tiny", seed=11)
    return root


def _open(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)  # the synthetic release's traps
        return nat4xr.open_nat4("A1", path=path, progress=False, **kwargs)


def _env(tmp_path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        NAT4XR_DATA_DIR=str(tmp_path / "data"),
        NAT4XR_CACHE_DIR=str(tmp_path / "cache"),
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    return env


def _tiny() -> xr.Dataset:
    return nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=3, n_time=4, seed=3)


# ------------------------------------------------------------------ 1. only nat4xr's files


def test_cache_list_and_clear_touch_only_stamped_caches(dirs):
    folder = dirs / "cache"
    folder.mkdir()
    theirs = {}
    for name in ("my_experiment.nc", "A1-2023-results.nc", "A1-all-0123456789abcdef.nc"):
        xr.Dataset({"x": ("t", np.arange(3.0))}).to_netcdf(folder / name)  # plain netCDF
        theirs[name] = (folder / name).read_bytes()
    (folder / "notes-val-00000000000000ff.nc").write_text("a text file with a cache-like name")
    theirs["notes-val-00000000000000ff.nc"] = (
        folder / "notes-val-00000000000000ff.nc"
    ).read_bytes()
    (folder / "folder.nc").mkdir()
    (folder / "A1-val-00000000000000aa.nc").mkdir()  # a folder named exactly like a cache
    ours = write_cache(_tiny(), folder / "A1-est-fedcba9876543210.nc", key="fedcba9876543210")
    elsewhere = write_cache(_tiny(), dirs / "kept" / "c.nc", key="0000000000000001")
    (folder / "PEG-all-0000000000000001.nc").symlink_to(elsewhere)  # a link: not ours to delete

    assert [e.path for e in cachedir.cache_list()] == [ours]
    assert cachedir.cache_clear(area="PEG") == []
    assert cachedir.cache_clear(area="A1") == [ours]
    assert cachedir.cache_clear() == []
    for name, content in theirs.items():
        assert (folder / name).read_bytes() == content, name
    assert (folder / "folder.nc").is_dir() and (folder / "A1-val-00000000000000aa.nc").is_dir()
    assert elsewhere.exists() and (folder / "PEG-all-0000000000000001.nc").is_symlink()
    assert not list(folder.glob("*.lock")), "no lock file may be created for foreign files"


def test_identify_is_none_for_anything_but_a_cache(tmp_path):
    from nat4xr.cachefile.reading import identify as read_stamp

    cache = write_cache(_tiny(), tmp_path / "c.nc", key="k", options={"subset": "all"})
    assert read_stamp(cache) == {
        "format": nat4xr.cachefile.CACHE_FORMAT,
        "key": "k",
        "options": {"subset": "all"},
        "damaged": False,
    }
    plain = tmp_path / "plain.nc"
    xr.Dataset({"x": ("t", [1.0])}).to_netcdf(plain)
    truncated = tmp_path / "cut.nc"
    truncated.write_bytes(cache.read_bytes()[:600])
    garbage = tmp_path / "garbage.nc"
    garbage.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(4000))
    (tmp_path / "dir.nc").mkdir()
    for path in (plain, truncated, garbage, tmp_path / "dir.nc", tmp_path / "missing.nc"):
        assert read_stamp(path) is None, path


# ------------------------------------------------------------- 3. what the cache key covers


def test_an_edited_table_with_its_time_restored_gets_a_new_cache(dirs, release_dir):
    copy = dirs / "release"
    shutil.copytree(release_dir, copy)
    first = _open(copy)
    csv = copy / "A1_pred_correlation.csv"
    st = csv.stat()
    lines = csv.read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    column = header.index("r_test")
    row = lines[1].rstrip("\n").split(",")
    cell, old = row[0], row[column]
    new = old[:-1] + ("1" if old[-1] != "1" else "2")  # same length: same file size
    row[column] = new
    lines[1] = ",".join(row) + "\n"
    csv.write_text("".join(lines))
    os.utime(csv, ns=(st.st_atime_ns, st.st_mtime_ns))  # as touch -r / cp -p / rsync do
    assert csv.stat().st_size == st.st_size and csv.stat().st_mtime_ns == st.st_mtime_ns

    second = _open(copy)
    assert second.encoding["source"] != first.encoding["source"]
    assert float(second["pub_r_test"].sel(neuron=cell)) == float(new)
    assert float(first["pub_r_test"].sel(neuron=cell)) == float(old)


def test_large_files_are_keyed_by_size_and_both_times(tmp_path, monkeypatch):
    monkeypatch.setattr(cachedir, "CONTENT_BYTES", 0)  # every file counts as large
    big = tmp_path / "big.tgz"
    big.write_bytes(b"a" * 100)
    key = cachedir.cache_key([big], {})
    st = big.stat()
    time.sleep(0.01)
    big.write_bytes(b"b" * 100)  # same size ...
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and modification time
    assert cachedir.cache_key([big], {}) != key  # the status-change time moved


# ----------------------------------------------------------- 4 and 7. arguments come first


@pytest.mark.parametrize("audio_fs", [16000.9, "16000", 0, -44100, float("nan"), True])
def test_audio_fs_is_checked_before_any_cache_is_looked_up(dirs, release_dir, audio_fs):
    with pytest.raises(ValueError, match="audio_fs"):
        nat4xr.open_nat4("A1", path=release_dir, waveform=True, audio_fs=audio_fs)
    assert not (dirs / "cache").exists()


@pytest.mark.parametrize("smooth_ms", [float("inf"), 1e13, 1e8, 1001, float("nan"), 0, "20"])
def test_smoothing_windows_longer_than_a_sound_are_refused(dirs, release_dir, smooth_ms):
    with pytest.raises(
        ValueError, match=r"smooth_ms must be a number of milliseconds in \(0, 1000\]"
    ):
        nat4xr.open_nat4("A1", path=release_dir, smooth_ms=smooth_ms)
    with pytest.raises(ValueError, match="smooth_ms"):
        build.build_dataset(release_dir, "A1", smooth_ms=smooth_ms)


def test_accessor_smoothing_refuses_windows_longer_than_the_trial():
    ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=2, n_time=20, seed=1)
    for window in (float("inf"), 1e13, 1e8):
        with pytest.raises(ValueError, match="window"):
            ds.nat4.smooth(window)


def test_equal_options_share_one_cache(dirs, release_dir):
    a = _open(release_dir, smooth_ms=20)
    b = _open(release_dir, smooth_ms=20.0)
    assert a.encoding["source"] == b.encoding["source"]
    assert opening.cache_path("A1", path=release_dir, smooth_ms=20) == Path(a.encoding["source"])


# ----------------------------------------------------------------- 5. relative folders


def test_a_relative_data_folder_survives_a_chdir(tmp_path, monkeypatch, release_dir):
    work = tmp_path / "work"
    (work / "elsewhere").mkdir(parents=True)
    shutil.copytree(release_dir, work / "release")
    monkeypatch.chdir(work)
    monkeypatch.setenv("NAT4XR_DATA_DIR", "data")
    monkeypatch.delenv("NAT4XR_CACHE_DIR", raising=False)
    lazy = _open("release", chunks=None)
    chunked = _open("release")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        expected = build.build_dataset(work / "release", "A1")
    monkeypatch.chdir(work / "elsewhere")  # %cd in a notebook
    np.testing.assert_array_equal(lazy["response"].values, expected["response"].values)
    np.testing.assert_array_equal(chunked["response"].values, expected["response"].values)
    assert Path(lazy.encoding["source"]).is_absolute()
    assert cachedir.cache_dir() == work / "elsewhere" / "data" / "cache"  # read when asked
    assert not (work / "elsewhere" / "data").exists()


def test_a_relative_cache_path_survives_a_chdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = _tiny()
    write_cache(ds, "c.nc")
    lazy = open_cache("c.nc", chunks=None)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    xr.testing.assert_identical(lazy.load(), ds)


# ----------------------------------------------- 8. readers keep what they opened


def test_a_deleted_cache_stays_readable_by_datasets_already_open(tmp_path):
    ds = _tiny()
    path = write_cache(ds, tmp_path / "A1-all-0123456789abcdef.nc")
    lazy = open_cache(path, chunks=None)
    chunked = open_cache(path, chunks=1)
    path.unlink()  # rm, or another user's cleanup: nothing was read yet
    xr.testing.assert_identical(lazy.compute(), ds)
    xr.testing.assert_identical(chunked.compute(), ds)
    lazy.close()
    with pytest.raises(CacheError, match="cannot read the cache file"):
        _ = lazy["response"].values  # closed, then gone: an error, never other data


def test_cache_clear_keeps_a_cache_another_process_is_reading(dirs, release_dir):
    first = _open(release_dir)
    target = Path(first.encoding["source"])
    first.close()
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, warnings, numpy as np, nat4xr\n"
            "warnings.simplefilter('ignore')\n"
            f"ds = nat4xr.open_nat4('A1', path={str(release_dir)!r}, chunks=None)\n"
            "print('open', flush=True)\n"
            "sys.stdin.readline()\n"
            "print(float(np.nansum(ds['response'].values)), flush=True)\n",
        ],
        env=_env(dirs),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "open", reader.stderr.read()
        with pytest.warns(Nat4Warning, match=rf"{target} \(in use\)"):
            assert cachedir.cache_clear() == []
        assert target.exists()
        reader.stdin.write("go\n")
        reader.stdin.flush()
        total = float(reader.stdout.readline())
        assert reader.wait(timeout=60) == 0, reader.stderr.read()
    finally:
        reader.kill()
        reader.wait()
    with open_cache(target) as ds:
        assert total == float(np.nansum(ds["response"].values))
    assert cachedir.cache_clear() == [target]  # the reader is gone: now it goes


def test_cache_clear_between_epochs_keeps_the_workers_file(dirs, release_dir):
    pytest.importorskip("torch")
    ds = _open(release_dir)
    loader = ds.nat4.to_torch(batch_size=4, num_workers=2, multiprocessing_context="fork")
    first = [batch["responses"].nansum().item() for batch in loader]
    with pytest.warns(Nat4Warning, match="in use"):
        assert cachedir.cache_clear() == []
    second = [batch["responses"].nansum().item() for batch in loader]  # new workers
    assert second == first
    ds.close()
    assert len(cachedir.cache_clear()) == 1


def test_a_clear_racing_a_build_never_deletes_the_file_just_built(dirs, release_dir, monkeypatch):
    real = opening.open_cache
    runs = []

    def clear_first(path, chunks):
        # The moment the race happened: the file is written, the builder opens it.
        runs.append(
            subprocess.run(
                [sys.executable, "-c", "import nat4xr.cachedir as c; print(len(c.cache_clear()))"],
                env=_env(dirs),
                capture_output=True,
                text=True,
                timeout=120,
            )
        )
        return real(path, chunks)

    monkeypatch.setattr(opening, "open_cache", clear_first)
    ds = _open(release_dir)
    assert [r.stdout.strip() for r in runs] == ["0"], [r.stderr for r in runs]
    assert Path(ds.encoding["source"]).exists()
    assert np.isfinite(np.nansum(ds["response"].values))


# ------------------------------------------------------------ 13. folders that cannot work


def test_a_non_utf8_cache_folder_fails_before_the_build(dirs, release_dir, monkeypatch):
    folder = os.fsdecode(bytes(dirs) + b"/caf\xe9")
    monkeypatch.setenv("NAT4XR_CACHE_DIR", folder)

    def no_build(*args, **kwargs):
        raise AssertionError("the build ran before the cache folder was checked")

    monkeypatch.setattr(build, "build_dataset", no_build)
    with pytest.raises(CacheError, match="not a UTF-8 path"):
        nat4xr.open_nat4("A1", path=release_dir)


def test_the_demo_says_when_the_data_folder_is_a_file(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.write_text("not a folder")
    monkeypatch.setenv("NAT4XR_DATA_DIR", str(data))
    with pytest.raises(nat4xr.Nat4Error, match="is a file, not a folder"):
        nat4xr.open_demo()
