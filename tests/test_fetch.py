"""Downloads through the real pooch/requests path from a local mirror on 127.0.0.1."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
import zipfile
from pathlib import Path

import pooch
import pytest
import xarray as xr

import nat4xr
from nat4xr import build
from nat4xr import fetch as fetch_mod
from nat4xr.errors import DownloadError

NAMES = [
    "A1_NAT4_ozgf.fs100.ch18.tgz",
    "A1_pred_correlation.csv",
    "A1_single_sites.zip",
    "wav.zip",
]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``server.faults`` makes chosen files arrive corrupt or cut short."""

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        name = self.path.lstrip("/").split("?")[0]
        self.server.requests.append((name, self.headers.get("User-Agent", "")))
        fault = self.server.faults.get(name)
        if fault is None:
            return super().do_GET()
        if fault.get("times", 1) <= 0:
            return super().do_GET()
        fault["times"] = fault.get("times", 1) - 1
        body = (Path(self.directory) / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault["kind"] == "corrupt":
            flipped = bytearray(body)
            flipped[len(body) // 2] ^= 0xFF
            self.wfile.write(bytes(flipped))
        else:  # "truncate": half the promised body, then hang up
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)


@pytest.fixture(scope="module")
def mirror_files(tmp_path_factory):
    """A tiny synthetic release (with wav.zip) laid out as the mirror serves it."""
    src = tmp_path_factory.mktemp("release")
    rel = nat4xr.synthetic.write_release(src, "A1", scale="tiny", wav=True, seed=2)
    served = tmp_path_factory.mktemp("served")
    for path in rel.files.values():
        shutil.copy(path, served / path.name)
    lines = [f"{n} sha256:{pooch.file_hash(str(served / n))}" for n in NAMES]
    (served / "registry.txt").write_text("\n".join(lines) + "\n")
    return served


@pytest.fixture
def server(mirror_files):
    handler = functools.partial(_Handler, directory=str(mirror_files))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.requests, httpd.faults, httpd.root = [], {}, mirror_files
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def env(server, tmp_path, monkeypatch):
    """Mirror URL, an empty data folder, and no waiting between retries."""
    data = tmp_path / "data"
    monkeypatch.setenv("NAT4XR_BASE_URL", f"http://127.0.0.1:{server.server_port}/")
    monkeypatch.setenv("NAT4XR_DATA_DIR", str(data))
    monkeypatch.delenv("NAT4XR_REGISTRY", raising=False)
    monkeypatch.setattr(fetch_mod, "RETRIES", 0)
    return data


def _file_requests(server) -> list[str]:
    return [name for name, _ in server.requests if name != "registry.txt"]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or "tmp" in p.name)


def test_fetch_downloads_verifies_and_unpacks(env, server):
    root = fetch_mod.fetch("A1", progress=False)
    assert root == env
    for name in NAMES[:3]:
        assert (root / name).read_bytes() == (server.root / name).read_bytes()
    with zipfile.ZipFile(server.root / "A1_single_sites.zip") as zf:
        members = sorted(Path(m).name for m in zf.namelist() if m.endswith(".tgz"))
    assert members, "the synthetic zip should hold site archives"
    assert sorted(p.name for p in (root / "A1_single_sites").iterdir()) == members
    assert not (root / "wav.zip").exists()
    agents = {agent for _, agent in server.requests}
    assert agents == {f"nat4xr/{nat4xr.__version__} (+https://doi.org/10.5281/zenodo.8044773)"}
    assert _leftovers(root) == []

    # Idempotent and offline-capable: nothing is requested again.
    before = len(server.requests)
    assert fetch_mod.fetch("A1", progress=False) == root
    assert len(server.requests) == before


def test_fetch_wav_unpacks_into_wav_folder(env, server, tmp_path):
    target = tmp_path / "elsewhere"
    root = fetch_mod.fetch("A1", path=target, wav=True, progress=False)
    assert root == target and not env.exists()
    with zipfile.ZipFile(server.root / "wav.zip") as zf:
        sounds = sorted(Path(m).name for m in zf.namelist() if m.endswith(".wav"))
    assert sorted(p.name for p in (root / "wav").iterdir()) == sounds


def test_corrupt_file_is_rejected_and_never_trusted(env, server):
    name = "A1_pred_correlation.csv"
    server.faults[name] = {"kind": "corrupt", "times": 99}
    with pytest.raises(DownloadError, match=r"A1_pred_correlation\.csv.*does not match"):
        fetch_mod.fetch("A1", progress=False)
    assert not (env / name).exists()
    assert not (env / ".registry.txt").exists()
    assert _leftovers(env) == []

    server.faults.clear()
    root = fetch_mod.fetch("A1", progress=False)
    assert (root / name).read_bytes() == (server.root / name).read_bytes()


def test_interrupted_transfer_is_not_trusted_then_recovers(env, server):
    name = "A1_single_sites.zip"
    server.faults[name] = {"kind": "truncate", "times": 99}
    with pytest.raises(DownloadError, match=r"A1_single_sites\.zip"):
        fetch_mod.fetch("A1", progress=False)
    assert not (env / name).exists()
    assert not (env / "A1_single_sites").exists()
    assert _leftovers(env) == []

    server.faults.clear()
    root = fetch_mod.fetch("A1", progress=False)
    assert (root / name).read_bytes() == (server.root / name).read_bytes()
    assert (root / "A1_single_sites").is_dir()


def test_a_failed_attempt_is_retried(env, server, monkeypatch):
    monkeypatch.setattr(fetch_mod, "RETRIES", 1)
    name = "A1_NAT4_ozgf.fs100.ch18.tgz"
    server.faults[name] = {"kind": "truncate", "times": 1}
    root = fetch_mod.fetch("A1", progress=False)
    assert (root / name).read_bytes() == (server.root / name).read_bytes()
    assert _file_requests(server).count(name) == 2


def test_no_hash_means_no_download(env, server, monkeypatch, tmp_path):
    (server.root / "registry.txt").rename(tmp_path / "registry.txt")
    try:
        with pytest.raises(DownloadError, match="no known hash"):
            fetch_mod.fetch("A1", progress=False)
    finally:
        (tmp_path / "registry.txt").rename(server.root / "registry.txt")
    assert _file_requests(server) == []


def test_registry_from_environment_wins(env, server, tmp_path, monkeypatch):
    good = (server.root / "registry.txt").read_text()
    bad = "".join(
        f"{line.split()[0]} sha256:{'0' * 64}\n" if "pred_correlation" in line else line + "\n"
        for line in good.splitlines()
    )
    own = tmp_path / "own-registry.txt"
    own.write_text(bad)
    monkeypatch.setenv("NAT4XR_REGISTRY", str(own))
    with pytest.raises(DownloadError, match="does not match"):
        fetch_mod.fetch("A1", progress=False)
    assert "registry.txt" not in [name for name, _ in server.requests]

    own.write_text(good)
    assert (fetch_mod.fetch("A1", progress=False) / "A1_single_sites").is_dir()


def test_bad_inputs_raise_clear_errors(env, monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown area 'V1'"):
        fetch_mod.fetch("V1")
    monkeypatch.setenv("NAT4XR_REGISTRY", str(tmp_path / "missing.txt"))
    with pytest.raises(DownloadError, match="NAT4XR_REGISTRY"):
        fetch_mod.fetch("A1", progress=False)


def test_unreachable_mirror_names_the_url(env, monkeypatch):
    monkeypatch.setenv("NAT4XR_BASE_URL", "http://127.0.0.1:9/")  # discard port: refused
    with pytest.raises(DownloadError, match=r"http://127\.0\.0\.1:9/registry\.txt"):
        fetch_mod.fetch("A1", progress=False)


def test_flat_zip_unpacks_into_named_folder(tmp_path):
    archive = tmp_path / "wav.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.wav", b"1")
        zf.writestr("b.wav", b"2")
    out = fetch_mod._AtomicUnzip("wav")(str(archive), "download", None)
    assert Path(out) == tmp_path / "wav"
    assert sorted(p.name for p in (tmp_path / "wav").iterdir()) == ["a.wav", "b.wav"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wav", "wav.zip"]


def test_open_nat4_download_builds_from_the_fetched_release(env, server, monkeypatch, tmp_path):
    monkeypatch.setenv("NAT4XR_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.warns(nat4xr.Nat4Warning):  # the synthetic release's deliberate traps
        ds = nat4xr.open_nat4("A1", download=True, progress=False)
    assert (env / "A1_single_sites").is_dir()
    assert dict(ds.sizes) == {"stim": 8, "neuron": 8, "repeat": 20, "time": 150, "freq": 18}
    assert ds.encoding["source"].startswith(str(tmp_path / "cache"))
    with pytest.warns(nat4xr.Nat4Warning):
        expected = build.build_dataset(env, "A1")
    xr.testing.assert_identical(ds.load(), expected.load())
