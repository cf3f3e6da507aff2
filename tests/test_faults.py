"""Faults around the cache and the downloads: nothing corrupt is served, a later call recovers.

Cache: a writer killed with SIGKILL at several points, a full disk (a real
tiny tmpfs when this machine lets us mount one, else a write patched to fail
with ENOSPC), a read-only cache folder, four processes opening the same
uncached area at once. Downloads: a local server on 127.0.0.1 answering 404,
500, a cut-short body, a wrong file, or nothing at all (the timeout comes from
``NAT4XR_TIMEOUT``).
"""

from __future__ import annotations

import errno
import functools
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pooch
import pytest
import xarray as xr

import nat4xr
from nat4xr import build, fetch
from nat4xr.cachefile import writer
from nat4xr.errors import CacheError, DownloadError, Nat4Warning
from nat4xr.opening import open_nat4

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    nat4xr.synthetic.write_release(root, "A1", scale="tiny", seed=11)
    return root


@pytest.fixture(scope="module")
def reference(release_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        return build.build_dataset(release_dir, "A1").load()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("NAT4XR_CACHE_DIR", str(folder))
    monkeypatch.setenv("NAT4XR_DATA_DIR", str(tmp_path / "data"))
    return folder


def open_quiet(release_dir, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        return open_nat4("A1", path=release_dir, progress=False, **kw)


def child_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        NAT4XR_CACHE_DIR=str(cache),
        NAT4XR_DATA_DIR=str(cache.parent / "data"),
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONWARNINGS="ignore",
    )
    return env


def served_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.nc"))


# -- SIGKILL during the first write ----------------------------------------------------------

_SLOW_FIRST_WRITE = """
import sys, time
from nat4xr.cachefile import writer
from nat4xr.opening import open_nat4
stage = sys.argv[3]  # "_write_response" (netCDF) or "_write_unfiltered" (h5py, after it)
real = getattr(writer, stage)
def slow(*args):
    print("WRITING", flush=True)
    time.sleep(float(sys.argv[2]))
    return real(*args)
setattr(writer, stage, slow)
open_nat4("A1", path=sys.argv[1], progress=False)
print("FINISHED", flush=True)
"""


@pytest.mark.parametrize(
    "stage, delay",
    [("_write_response", 0.0), ("_write_response", 0.3), ("_write_unfiltered", 0.0)],
)
def test_sigkill_during_the_first_write_serves_nothing_then_recovers(
    cache, release_dir, reference, stage, delay
):
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_FIRST_WRITE, str(release_dir), "30", stage],
        env=child_env(cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()  # blocks until the temporary file is being written
        assert line.strip() == "WRITING", child.stderr.read()
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert served_files(cache) == []  # only a .tmp that nothing trusts
    assert list(cache.glob(".*.tmp"))
    ds = open_quiet(release_dir)
    xr.testing.assert_identical(ds.load(), reference)
    assert not list(cache.glob(".*.tmp"))  # the next writer cleared the leftovers
    ds.close()


# -- a full disk ----------------------------------------------------------------------------


def _mount_tmpfs(target: Path, size: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
        capture_output=True,
    )
    return done.returncode == 0


def test_full_disk_raises_cache_error_and_leaves_nothing(
    tmp_path, monkeypatch, release_dir, reference
):
    folder = tmp_path / "small"
    mounted = _mount_tmpfs(folder, "40k")
    monkeypatch.setenv("NAT4XR_CACHE_DIR", str(folder))
    real_write = nat4xr.cachefile.writer._write_response
    if not mounted:  # no privileges to mount: the same failure, injected mid-write

        def full(nc, ds, progress):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(writer, "_write_response", full)
    try:
        with pytest.raises(CacheError, match="free space") as err:
            open_quiet(release_dir)
        assert str(folder) in str(err.value)
        assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) == []
        # the build still works without the cache, and with space the cache recovers
        xr.testing.assert_identical(open_quiet(release_dir, cache=False).load(), reference)
        monkeypatch.setattr(writer, "_write_response", real_write)
        if mounted:  # space again (a failed HDF5 write may still hold a handle: no umount)
            subprocess.run(["mount", "-o", "remount,size=64m", str(folder)], check=True)
        ds = open_quiet(release_dir)
        xr.testing.assert_identical(ds.load(), reference)
        ds.close()
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def test_full_disk_while_writing_unfiltered_chunks(tmp_path, monkeypatch):
    """The disk fills up while the repeated sounds' raw chunks are written (after netCDF)."""
    ds = nat4xr.synthetic.random_dataset(n_est=4, n_val=4, n_neurons=200, n_time=100)
    folder = tmp_path / "small"
    mounted = _mount_tmpfs(folder, "1m")  # the compressed part fits, 12 MB of raw chunks do not
    real = nat4xr.cachefile.writer._write_unfiltered
    reached = []

    def unfiltered(path, *args):
        reached.append(path)
        if not mounted:
            raise OSError(errno.ENOSPC, f"Can't write unprocessed chunk data ({path})")
        return real(path, *args)

    monkeypatch.setattr(writer, "_write_unfiltered", unfiltered)
    try:
        with pytest.raises(CacheError, match="free space"):
            nat4xr.cachefile.write_cache(ds, folder / "c.nc")
        assert reached  # the netCDF part was written, the raw part failed
        assert [p.name for p in folder.iterdir() if not p.name.endswith(".lock")] == []
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=64m", str(folder)], check=True)
        monkeypatch.setattr(writer, "_write_unfiltered", real)
        xr.testing.assert_identical(
            nat4xr.cachefile.open_cache(nat4xr.cachefile.write_cache(ds, folder / "c.nc")).load(),
            ds,
        )
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def test_full_disk_while_writing_the_coordinates(cache, monkeypatch, release_dir, reference):
    def full(self, *args, **kwargs):
        Path(args[0]).write_bytes(b"\x89HDF half")  # a partial file exists when space runs out
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", full)
    with pytest.raises(CacheError, match="free space"):
        open_quiet(release_dir)
    assert served_files(cache) == [] and not list(cache.glob(".*.tmp"))
    monkeypatch.undo()
    monkeypatch.setenv("NAT4XR_CACHE_DIR", str(cache))
    xr.testing.assert_identical(open_quiet(release_dir).load(), reference)


# -- a read-only cache folder ---------------------------------------------------------------


def test_read_only_cache_folder(cache, monkeypatch, release_dir, reference):
    # root writes through permission bits: a read-only tmpfs when we may mount one,
    # else the refusal the kernel would give, injected
    mounted = _mount_tmpfs(cache, "64m") if os.geteuid() == 0 else False

    def read_only(flag: bool) -> None:
        if mounted:
            mode = "remount,ro" if flag else "remount,rw"
            subprocess.run(["mount", "-o", mode, str(cache)], check=True)
        elif os.geteuid() != 0:
            cache.chmod(0o555 if flag else 0o755)
        elif flag:

            def refuse(self, path, *args, **kwargs):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))

            monkeypatch.setattr(xr.Dataset, "to_netcdf", refuse)
        else:
            monkeypatch.undo()
            monkeypatch.setenv("NAT4XR_CACHE_DIR", str(cache))

    cache.mkdir(exist_ok=True)
    try:
        read_only(True)
        with pytest.raises(CacheError, match="permissions") as err:
            open_quiet(release_dir)
        assert "NAT4XR_CACHE_DIR" in str(err.value)
        assert served_files(cache) == []
        xr.testing.assert_identical(open_quiet(release_dir, cache=False).load(), reference)
        read_only(False)
        ds = open_quiet(release_dir)  # writable again: the cache is built
        path = Path(ds.encoding["source"])
        ds.close()
        if mounted or os.geteuid() != 0:  # an existing cache opens from a read-only folder
            read_only(True)
            again = open_quiet(release_dir)
            xr.testing.assert_identical(again.load(), reference)
            assert Path(again.encoding["source"]) == path
            again.close()
            read_only(False)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(cache)], check=False)
        elif os.geteuid() != 0:
            cache.chmod(0o755)


# -- four processes, one uncached area ------------------------------------------------------

_OPENER = """
import sys
import numpy as np
from nat4xr import build
from nat4xr.opening import open_nat4
real = build.build_dataset
def counted(*args, **kwargs):
    print("BUILT", flush=True)
    return real(*args, **kwargs)
build.build_dataset = counted
ds = open_nat4("A1", path=sys.argv[1], progress=False)
print("SOURCE", ds.encoding["source"])
print("SUM", float(np.nansum(ds["response"].values)), int(np.isnan(ds["response"].values).sum()))
"""


def test_four_processes_open_the_same_uncached_area(cache, release_dir, reference):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPENER, str(release_dir)],
            env=child_env(cache),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=180))
        finally:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    text = [out for out, _ in outputs]
    assert sum(out.count("BUILT") for out in text) == 1
    values = reference["response"].values
    want = f"SUM {float(np.nansum(values))} {int(np.isnan(values).sum())}"
    for out in text:
        assert want in out.splitlines()
    assert len({ln for out in text for ln in out.splitlines() if ln.startswith("SOURCE")}) == 1
    (path,) = served_files(cache)
    xr.testing.assert_identical(nat4xr.cachefile.open_cache(path).load(), reference)
    assert not list(cache.glob(".*.tmp"))


# -- downloads --------------------------------------------------------------------------------

NAMES = ["A1_NAT4_ozgf.fs100.ch18.tgz", "A1_pred_correlation.csv", "A1_single_sites.zip"]


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``server.fault = (name, kind, times)`` breaks one file."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        fault = self.server.fault
        if fault is None or fault[0] != name or fault[2] <= 0:
            return super().do_GET()
        self.server.fault = (fault[0], fault[1], fault[2] - 1)
        kind = fault[1]
        if kind in (404, 500):
            return self.send_error(kind)
        body = (Path(self.directory) / name).read_bytes()
        if kind == "wrong":
            body = body[::-1]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind == "stall":  # headers, then nothing until the client gives up
            self.server.released.wait(10)
            return
        if kind == "truncated":
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def mirror(release_dir, tmp_path_factory):
    served = tmp_path_factory.mktemp("served")
    for name in NAMES:
        shutil.copy(release_dir / name, served / name)
    lines = [f"{n} sha256:{pooch.file_hash(str(served / n))}" for n in NAMES]
    (served / "registry.txt").write_text("\n".join(lines) + "\n")
    return served


@pytest.fixture
def server(mirror, tmp_path, monkeypatch):
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(mirror))
    )
    httpd.fault = None
    httpd.released = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("NAT4XR_BASE_URL", f"http://127.0.0.1:{httpd.server_port}/")
    monkeypatch.setenv("NAT4XR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NAT4XR_TIMEOUT", "0.5")
    monkeypatch.delenv("NAT4XR_REGISTRY", raising=False)
    monkeypatch.setattr(fetch, "RETRIES", 0)
    yield httpd
    httpd.released.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def trusted(folder: Path) -> dict[str, str]:
    """Files under their final names and their hashes."""
    return {
        p.name: pooch.file_hash(str(p)) for p in folder.iterdir() if p.is_file() and p.name in NAMES
    }


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (404, "404"),
        (500, "500"),
        ("truncated", "failed after 1 attempt"),
        ("wrong", "does not match its registered hash"),
        ("stall", "timed out"),
    ],
)
def test_download_faults_are_clear_and_keep_nothing_partial(
    server, mirror, tmp_path, release_dir, reference, kind, message
):
    victim = "A1_single_sites.zip"
    server.fault = (victim, kind, 1)
    folder = tmp_path / "data"
    with pytest.raises(DownloadError, match=message) as err:
        fetch.fetch("A1", progress=False)
    assert victim in str(err.value)
    server.released.set()
    # no file is trusted unless it is complete and verified
    good = {n: pooch.file_hash(str(mirror / n)) for n in NAMES}
    for name, digest in trusted(folder).items():
        assert digest == good[name], f"{name} kept without matching its hash"
    assert victim not in trusted(folder)
    assert not (folder / "A1_single_sites").exists()
    # the fault is over: the next call completes and builds the truth
    assert fetch.fetch("A1", progress=False) == folder
    assert trusted(folder) == good
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        xr.testing.assert_equal(build.build_dataset(folder, "A1").load(), reference)


def test_one_failed_attempt_is_retried_within_the_call(server, monkeypatch, tmp_path, mirror):
    monkeypatch.setattr(fetch, "RETRIES", 1)
    server.fault = ("A1_pred_correlation.csv", "truncated", 1)
    folder = fetch.fetch("A1", progress=False)
    assert server.fault[2] == 0
    good = {n: pooch.file_hash(str(mirror / n)) for n in NAMES}
    assert trusted(folder) == good


def test_bad_timeout_setting_is_a_clear_error(server, monkeypatch):
    monkeypatch.setenv("NAT4XR_TIMEOUT", "soon")
    with pytest.raises(DownloadError, match="NAT4XR_TIMEOUT='soon'"):
        fetch.fetch("A1", progress=False)
