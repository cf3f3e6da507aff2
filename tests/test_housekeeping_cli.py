"""Downloads, signals, locks and the command line, as users on shared machines meet them.

A real HTTP server on 127.0.0.1 serves a tiny synthetic release (with the
header mistakes real mirrors make, or a body that stalls); the command runs
as a separate process where signals, pipes and waiting are what is tested.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import warnings
import zipfile
from pathlib import Path

import pooch
import pytest
import xarray as xr

import nat4xr
from nat4xr import fetch as fetch_mod
from nat4xr.errors import DownloadError, Nat4Warning

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["A1_NAT4_ozgf.fs100.ch18.tgz", "A1_pred_correlation.csv", "A1_single_sites.zip"]


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``server.mode[name]`` changes how one file is sent.

    ``"x-gzip"``: the file's own bytes labelled ``Content-Encoding: x-gzip`` (what
    Apache's ``AddEncoding x-gzip .gz .tgz`` does); ``"gzip"``: the file
    compressed on the fly and labelled so; ``"stall"``: half the body, then
    nothing until ``server.released`` is set.
    """

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        self.server.requests.append(name)
        mode = self.server.mode.get(name)
        if mode is None:
            return super().do_GET()
        body = (Path(self.directory) / name).read_bytes()
        sent = gzip.compress(body) if mode == "gzip" else body
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(sent)))
        if mode in ("x-gzip", "gzip"):
            self.send_header("Content-Encoding", mode)
        self.end_headers()
        if mode == "stall":
            self.wfile.write(sent[: len(sent) // 2])
            self.wfile.flush()
            self.server.released.wait(60)
            return
        self.wfile.write(sent)


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    nat4xr.synthetic.write_release(root, "A1", scale="tiny", seed=5)
    return root


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
    httpd.mode, httpd.released, httpd.root = {}, threading.Event(), mirror
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("NAT4XR_BASE_URL", f"http://127.0.0.1:{httpd.server_port}/")
    monkeypatch.setenv("NAT4XR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NAT4XR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("NAT4XR_REGISTRY", raising=False)
    monkeypatch.setattr(fetch_mod, "RETRIES", 0)
    yield httpd
    httpd.released.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)  # the fixtures' settings, made through monkeypatch
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def _cli(*args: str, cwd=None, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nat4xr.cli", *args],
        env=_env(**extra),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _members(zip_path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(zip_path) as zf:
        return {Path(i.filename).name: zf.read(i) for i in zf.infolist() if not i.is_dir()}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if "tmp" in p.name)


# ------------------------------------------------------------ 2. a fetch leaves it whole


def test_fetch_restores_missing_and_changed_site_files(server, release_dir):
    root = fetch_mod.fetch("A1", progress=False)
    sites = root / "A1_single_sites"
    expected = _members(server.root / "A1_single_sites.zip")
    gone, changed = sorted(expected)[:2]
    (sites / gone).unlink()
    edited = bytearray((sites / changed).read_bytes())
    edited[len(edited) // 2] ^= 0xFF  # same size, other content
    (sites / changed).write_bytes(bytes(edited))
    (sites / "my_notes.txt").write_text("mine")
    requests_before = len(server.requests)
    with pytest.warns(Nat4Warning, match=rf"restored 2 member\(s\).*{gone}"):
        assert fetch_mod.fetch("A1", progress=False) == root
    for name, content in expected.items():
        assert (sites / name).read_bytes() == content, name
    assert (sites / "my_notes.txt").read_text() == "mine"
    assert server.requests[requests_before:] == []  # restored from the verified zip, offline

    for p in sites.iterdir():  # emptied: the build must still find every site
        p.unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = nat4xr.open_nat4("A1", download=True, progress=False, cache=False)
        reference = nat4xr.build.build_dataset(release_dir, "A1")
    assert any("restored" in str(w.message) for w in caught)
    assert sorted(p.name for p in sites.iterdir()) == sorted(expected)
    ds.attrs.pop("source_files"), reference.attrs.pop("source_files")  # folder vs zip
    xr.testing.assert_identical(ds.load(), reference.load())


def test_a_zip_fetched_again_never_deletes_the_users_files_beside_its_members(server):
    root = fetch_mod.fetch("A1", progress=False)
    sites = root / "A1_single_sites"
    (sites / "my_notes.txt").write_text("mine")
    (root / "A1_single_sites.zip").unlink()  # downloaded again, then unpacked over the folder
    fetch_mod.fetch("A1", progress=False)
    assert (sites / "my_notes.txt").read_text() == "mine"
    expected = _members(server.root / "A1_single_sites.zip")
    for name, content in expected.items():
        assert (sites / name).read_bytes() == content, name


def test_fetch_names_what_it_cannot_restore(server):
    root = fetch_mod.fetch("A1", progress=False)
    sites = root / "A1_single_sites"
    victim = sorted(p.name for p in sites.iterdir())[0]
    (sites / victim).unlink()
    (sites / victim).mkdir()  # a folder where the zip has a file
    with pytest.raises(DownloadError, match=victim):
        fetch_mod.fetch("A1", progress=False)


# ------------------------------------------------------------ 6. read-only, complete release


def test_download_true_on_a_complete_read_only_release_just_opens(server, monkeypatch):
    root = fetch_mod.fetch("A1", progress=False)

    class ReadOnlyLock:  # what a lock file in a read-only folder does (root ignores chmod)
        def __init__(self, path, timeout=None):
            self.lock_file = path

        def acquire(self, timeout=None):
            raise PermissionError(13, "Permission denied", self.lock_file)

    fake = types.SimpleNamespace(FileLock=ReadOnlyLock, Timeout=fetch_mod.filelock.Timeout)
    monkeypatch.setattr(fetch_mod, "filelock", fake)
    server.shutdown()  # nothing may be downloaded
    assert fetch_mod.fetch("A1", progress=False) == root
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        ds = nat4xr.open_nat4("A1", download=True, progress=False)
    assert ds.sizes["neuron"] == 8

    victim = sorted((root / "A1_single_sites").iterdir())[0]
    victim.unlink()
    with pytest.raises(DownloadError, match=rf"incomplete: .*{victim.name}"):
        fetch_mod.fetch("A1", progress=False)


# ------------------------------------------------------ 9 and 11. bytes and permissions


@pytest.mark.parametrize("mode", ["x-gzip", "gzip"])
def test_content_encodings_deliver_the_registered_bytes(server, mode):
    for name in NAMES:
        server.mode[name] = mode
    root = fetch_mod.fetch("A1", progress=False)
    for name in NAMES:
        assert (root / name).read_bytes() == (server.root / name).read_bytes(), name


def test_downloaded_files_get_the_umask_permissions(server):
    old = os.umask(0o022)
    try:
        root = fetch_mod.fetch("A1", progress=False)
    finally:
        os.umask(old)
    for path in [*(root / n for n in NAMES), *(root / "A1_single_sites").iterdir()]:
        assert path.stat().st_mode & 0o777 == 0o644, path


# --------------------------------------------------------- 10. signals during a download


def _start_fetch(root: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nat4xr.cli", "fetch", "A1", "--path", str(root), "-q"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_partial(root: Path, proc: subprocess.Popen) -> Path:
    for _ in range(600):
        partial = [p for p in root.glob("*tmp*") if p.is_file()]  # a download under way
        if partial:
            return partial[0]
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError("the download never started")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_download_leaves_nothing_behind(server, tmp_path, sig):
    server.mode["A1_single_sites.zip"] = "stall"
    root = tmp_path / "release"
    proc = _start_fetch(root)
    try:
        _wait_for_partial(root, proc)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == -sig
    finally:
        proc.kill()
        proc.wait()
    if sig == signal.SIGTERM:  # cleaned up by the process itself
        assert _leftovers(root) == []
    server.mode.clear()
    server.released.set()
    assert fetch_mod.fetch("A1", path=root, progress=False) == root  # the next fetch cleans
    assert _leftovers(root) == []
    assert (root / "A1_single_sites.zip").read_bytes() == (
        server.root / "A1_single_sites.zip"
    ).read_bytes()


# ---------------------------------------------------------- 12. a second builder says why


def test_a_second_builder_says_whom_it_waits_for(server, release_dir, tmp_path):
    first = subprocess.Popen(  # a real builder, held in its build until told to go on
        [
            sys.executable,
            "-c",
            "import sys, warnings, nat4xr, nat4xr.build as b\n"
            "warnings.simplefilter('ignore')\n"
            "real = b.build_dataset\n"
            "def held(*args, **kwargs):\n"
            "    print('building', flush=True)\n"
            "    sys.stdin.readline()\n"
            "    return real(*args, **kwargs)\n"
            "b.build_dataset = held\n"
            f"ds = nat4xr.open_nat4('A1', path={str(release_dir)!r}, progress=False)\n"
            "print(ds.encoding['source'], flush=True)\n",
        ],
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    second = None
    try:
        assert first.stdout.readline().strip() == "building"
        second = subprocess.Popen(
            [sys.executable, "-m", "nat4xr.cli", "build", "A1", "--path", str(release_dir), "-q"],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready, _, _ = select.select([second.stderr], [], [], 60)
        assert ready, "the second builder said nothing while it waited"
        line = second.stderr.readline()
        assert line.startswith("nat4xr: warning: waiting for "), line
        assert f"PID {first.pid} on {socket.gethostname()} since " in line
        assert second.poll() is None  # still waiting
        first.stdin.write("go\n")
        first.stdin.flush()
        target = first.stdout.readline().strip()
        assert first.wait(timeout=60) == 0
        assert f"building {target} " in line
        assert second.wait(timeout=120) == 0, second.stderr.read()
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.kill()
                proc.wait()


# ------------------------------------------------------------------ 13. the command line


def test_a_closed_pipe_ends_the_command_quietly(server, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "nat4xr.cli", "cache", "list"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # `| head -0`: the reader is gone before the first line
    assert proc.wait(timeout=60) == 141
    assert proc.stderr.read() == b""
    proc.stderr.close()


def test_no_progress_bars_in_logs_and_cache_list_says_what_each_cache_is(
    server, release_dir, capfd
):
    from nat4xr.cli import main

    assert main(["fetch", "A1"]) == 0  # not --quiet: stderr is not a terminal, as a log file
    assert main(["build", "A1", "--path", str(release_dir), "--smooth-ms", "20"]) == 0
    err = capfd.readouterr().err
    assert "\r" not in err
    assert main(["cache", "list"]) == 0
    listed = capfd.readouterr().out
    assert f"release {release_dir}" in listed
    assert "smooth_ms=20.0" in listed and "normalize=None" in listed


def test_info_on_foreign_files_and_area_named_files(
    server, release_dir, tmp_path, monkeypatch, capsys
):
    from nat4xr.cli import main

    table = tmp_path / "scores.csv"
    table.write_text("cellid,r\nA,1\n")
    assert main(["info", str(table)]) == 1
    err = capsys.readouterr().err
    assert "is not a nat4xr cache file" in err and "delete" not in err
    assert table.read_text() == "cellid,r\nA,1\n"

    (tmp_path / "A1").write_text("a file named like an area")
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        assert main(["info", "A1", "--path", str(release_dir), "-q"]) == 0
    assert "cells      8 " in capsys.readouterr().out


def test_demo_figure_goes_where_named_and_a_file_as_data_folder_is_named(
    tmp_path, monkeypatch, capsys
):
    from nat4xr.cli import main

    monkeypatch.setenv("NAT4XR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NAT4XR_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "figs" / "c.png"
    assert main(["demo", "--out", str(out)]) == 0
    assert f"figure     {out}" in capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a folder gets the figure inside; a name without ending gets .png; the path printed is
    # the one written; an ending no figure has is an error naming --out
    for given, written in (
        (tmp_path / "figs", tmp_path / "figs" / "nat4xr_demo_coverage.png"),
        (tmp_path / "bare", tmp_path / "bare.png"),
    ):
        assert main(["demo", "--out", str(given)]) == 0
        assert f"figure     {written}\n" in capsys.readouterr().out
        assert written.is_file()
    assert main(["demo", "--out", str(tmp_path / "c.txt")]) == 1
    assert "--out" in capsys.readouterr().err and not (tmp_path / "c.txt").exists()

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("NAT4XR_DATA_DIR", str(blocker))
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Errno" not in err


def test_help_and_usage_errors_import_nothing_heavy():
    code = (
        "import contextlib, io, json, sys\n"
        "from nat4xr.cli import main\n"
        "codes = []\n"
        "out, err = io.StringIO(), io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
        "    codes += [main(['--help']), main(['fetch', 'V1']), main(['cache', '--help'])]\n"
        "heavy = ('numpy', 'pandas', 'xarray', 'dask', 'pooch', 'netCDF4', 'h5py',\n"
        "         'nat4xr.build', 'nat4xr.opening', 'nat4xr.accessor', 'nat4xr.cachefile')\n"
        "print(json.dumps([codes, [m for m in heavy if m in sys.modules]]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True
    )
    codes, loaded = json.loads(proc.stdout)
    assert codes == [0, 2, 0]
    assert loaded == []


def test_the_accessor_is_there_whichever_is_imported_first():
    code = (
        "import nat4xr, sys, importlib.util\n"
        "before = 'xarray' in sys.modules\n"
        "importlib.util.find_spec('xarray')  # checking for it is not importing it\n"
        "import xarray as xr\n"
        "import nat4xr.concat\n"
        "print(before, hasattr(xr.Dataset(), 'nat4'), callable(nat4xr.concat))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True
    )
    assert proc.stdout.split() == ["False", "True", "True"]


@pytest.mark.parametrize(
    "message",
    [
        "/d/A1_NAT4_ozgf.fs100.ch18.tgz: the population recording not found. Pass download=True "
        "(or run `nat4xr fetch`) to fetch the release, or point path= at the folder that holds it",
        "/d/wav.zip: the source sounds (wav/ or wav.zip) not found. Pass download=True with "
        "waveform=True (or run `nat4xr fetch AREA --wav`) to fetch them",
        "/d/x.tgz: the archive is truncated or corrupt (CRC); delete it and fetch it again "
        "(download=True)",
        "/c/A1-all-0123456789abcdef.nc: the chunk of response at stim=3 fails its CRC-32 check: "
        "the cache file is damaged; open_nat4(..., rebuild=True) builds it again",
        "cannot create the lock file /c/x.nc.lock (permission denied); check free space and "
        "permissions, set NAT4XR_CACHE_DIR to a writable folder, or pass cache=False",
    ],
)
def test_command_line_errors_name_command_line_options(message):
    from nat4xr.cli import _for_shell

    said = _for_shell(message, types.SimpleNamespace(area="A1"))
    for python_word in ("download=True", "rebuild=True", "path=", "cache=False", "waveform=True"):
        assert python_word not in said, said
    assert "`nat4xr " in said or "NAT4XR_CACHE_DIR" in said


def test_doi_downloads_also_land_in_nat4xr_temp_files_with_umask_permissions(tmp_path):
    """The Zenodo path (pooch's DOI downloader inside) gets the same temp file and mode."""
    seen = []

    def doi_downloader(url, output_file, pup):
        seen.append(Path(output_file).name)
        Path(output_file).write_bytes(b"release bytes")

    placeholder = tmp_path / "tmpabcdefgh"  # what pooch creates, mode 0600
    placeholder.touch(mode=0o600)
    download = fetch_mod._Download(
        tmp_path / "A1_pred_correlation.csv", "sha256:0", doi_downloader, False, 1.0
    )
    old = os.umask(0o022)
    try:
        download("doi:10.5281/zenodo.8044773/A1_pred_correlation.csv", str(placeholder), None)
    finally:
        os.umask(old)
    assert seen and seen[0].startswith(".A1_pred_correlation.csv.") and seen[0].endswith(".tmp")
    assert placeholder.read_bytes() == b"release bytes"
    assert placeholder.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmpabcdefgh"]
