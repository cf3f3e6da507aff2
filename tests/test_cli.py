"""The ``nat4xr`` command, run as a separate process the way users run it."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pooch
import pytest

import nat4xr
from nat4xr.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    nat4xr.synthetic.write_release(root, "A1", scale="tiny", seed=7)
    return root


@pytest.fixture
def env(tmp_path):
    env = dict(os.environ)
    env.update(
        NAT4XR_DATA_DIR=str(tmp_path / "data"),
        NAT4XR_CACHE_DIR=str(tmp_path / "cache"),
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    env.pop("NAT4XR_BASE_URL", None)
    env.pop("NAT4XR_REGISTRY", None)
    return env


def run(env, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nat4xr.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_help(env, capsys):
    proc = run(env, "--help")
    assert proc.returncode == 0
    for command in ("fetch", "build", "info", "demo", "cache"):
        assert command in proc.stdout
    for args in (["fetch"], ["build"], ["info"], ["demo"], ["cache"], ["cache", "clear"]):
        assert main([*args, "--help"]) == 0
        assert capsys.readouterr().out.startswith(f"usage: nat4xr {' '.join(args)}")


def test_fetch_from_a_mirror(env, release_dir, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    names = ["A1_NAT4_ozgf.fs100.ch18.tgz", "A1_pred_correlation.csv", "A1_single_sites.zip"]
    for name in names:
        shutil.copy(release_dir / name, served / name)
    (served / "registry.txt").write_text(
        "".join(f"{n} sha256:{pooch.file_hash(str(served / n))}\n" for n in names)
    )
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        env["NAT4XR_BASE_URL"] = f"http://127.0.0.1:{httpd.server_port}"
        target = tmp_path / "fetched"
        proc = run(env, "fetch", "A1", "--path", str(target), "--quiet")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(target)
    for name in names:
        assert (target / name).read_bytes() == (served / name).read_bytes()
    assert any((target / "A1_single_sites").glob("*.tgz"))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_build_info_and_cache(env, release_dir, tmp_path, monkeypatch, capsys):
    proc = run(env, "build", "A1", "--path", str(release_dir), "-q")
    assert proc.returncode == 0, proc.stderr
    (cache_file,) = (tmp_path / "cache").glob("A1-all-*.nc")
    lines = dict(line.split(None, 1) for line in proc.stdout.splitlines())
    assert lines["cells"].startswith("8 (auditory ")
    assert lines["sounds"] == "8 (est 6, val 2)"
    assert lines["cache"].startswith(str(cache_file))
    assert set(lines) == {"area", "cells", "sounds", "coverage", "animals", "sites", "cache"}

    by_file = run(env, "info", str(cache_file))
    assert by_file.returncode == 0, by_file.stderr
    assert by_file.stdout == proc.stdout
    for name in ("NAT4XR_DATA_DIR", "NAT4XR_CACHE_DIR"):
        monkeypatch.setenv(name, env[name])
    assert main(["info", "A1", "--path", str(release_dir), "-q"]) == 0  # reuses the cache
    assert capsys.readouterr().out == proc.stdout
    assert len(list((tmp_path / "cache").glob("*.nc"))) == 1

    listed = run(env, "cache", "list")
    assert listed.returncode == 0 and str(cache_file) in listed.stdout
    cleared = run(env, "cache", "clear")
    assert cleared.returncode == 0 and "removed 1 file(s)" in cleared.stdout
    assert not cache_file.exists()
    assert main(["cache", "list"]) == 0
    assert "no cache files" in capsys.readouterr().out


def test_demo_writes_a_coverage_png(env, tmp_path):
    proc = run(env, "demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "cells      40" in proc.stdout and "sounds     34 (est 30, val 4)" in proc.stdout
    png = Path(env["NAT4XR_DATA_DIR"]) / "nat4xr_demo_coverage.png"  # the data folder, not cwd
    assert f"figure     {png}" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 2000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data"]


def test_errors_are_one_line_and_non_zero(env, tmp_path, capsys):
    proc = run(env, "info", str(tmp_path / "missing.nc"))
    assert proc.returncode == 1
    assert proc.stderr.startswith("nat4xr: error: ") and "missing.nc" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""

    usage = run(env, "fetch", "V1")
    assert usage.returncode == 2 and "nat4xr fetch: error:" in usage.stderr

    # The same paths in-process (cheap): a missing release says how to get it, in
    # the command line's words, not Python's.
    assert main(["build", "A1", "--path", str(tmp_path / "empty"), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nat4xr: error: ") and "`nat4xr fetch A1`" in err and "--path" in err
    assert "download=True" not in err and "path=" not in err
