"""The README works as written: every Python block runs, its commands and extras exist.

The blocks run in order in one namespace, as a reader pastes them into one
session. The "Real data" block downloads: here it fetches a synthetic
release (A1 and PEG, the published file names, a registry of their hashes)
from a web server on 127.0.0.1, through the same download, check, build and
cache path the real release takes.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pooch
import pytest

import nat4xr

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

pytestmark = pytest.mark.slow


def _blocks(language: str) -> list[tuple[str, str]]:
    """``(section heading, code)`` of each fenced block of ``language``, in order."""
    text = README.read_text(encoding="utf-8")
    out = []
    for match in re.finditer(rf"^```{language}\n(.*?)^```", text, re.S | re.M):
        headings = re.findall(r"^## (.+)$", text[: match.start()], re.M)
        out.append((headings[-1] if headings else "", match.group(1)))
    return out


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def release_server(tmp_path):
    """A1 and PEG synthetic releases served as the release's mirror, with their registry."""
    served = tmp_path / "served"
    for area in ("A1", "PEG"):
        nat4xr.synthetic.write_release(served, area, scale="tiny", seed=3)
    names = sorted(p.name for p in served.iterdir() if p.is_file())
    lines = [f"{name} sha256:{pooch.file_hash(str(served / name))}" for name in names]
    (served / "registry.txt").write_text("\n".join(lines) + "\n")
    handler = functools.partial(_Quiet, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.mark.filterwarnings("ignore::nat4xr.Nat4Warning")  # the demo's planted traps
def test_every_python_block_runs(release_server, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.setenv("NAT4XR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("NAT4XR_CACHE_DIR", raising=False)
    monkeypatch.delenv("NAT4XR_REGISTRY", raising=False)
    monkeypatch.setenv("NAT4XR_BASE_URL", release_server)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    blocks = _blocks("python")
    assert [section for section, _ in blocks] == ["Quickstart", "Real data"]
    namespace: dict = {"__name__": "__readme__"}
    for section, code in blocks:
        try:
            exec(compile(code, f"README.md ({section})", "exec"), namespace)
        finally:
            plt.close("all")
    # the Quickstart trained and scored the same cells in both subsets
    est, val, scores = namespace["est"], namespace["val"], namespace["scores"]
    assert list(est.neuron.values) == list(val.neuron.values) == list(scores.neuron.values)
    assert val.sizes["neuron"] > 0 and est.sizes["stim"] > 0
    assert float(scores["r_test"].mean()) > 0.05  # the model it defines learns something
    # the real-data block downloaded both areas and joined them on shared stims
    joint = namespace["joint"]
    assert set(joint["neuron_source"].values.tolist()) == {"A1", "PEG"}
    assert (tmp_path / "data" / "A1_pred_correlation.csv").is_file()
    assert not list(tmp_path.glob("*.png")), "the README's code wrote into the working folder"


def test_the_readme_test_command_is_what_ci_runs():
    (setup,) = [code for section, code in _blocks("bash") if section == "Install"]
    commands = [line.split("#")[0].strip() for line in setup.splitlines()]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert "pytest -q" in commands and ci[-1].strip() == "pytest -q"
    assert 'pip install -e ".[all]"' in commands
    assert any('pip install -e ".[all]"' in line for line in ci)
    # the CPU-only torch comes before the extras that would pull the default build
    torch_first = [i for i, c in enumerate(commands) if c.startswith("pip install torch")]
    assert torch_first and torch_first[0] < commands.index('pip install -e ".[all]"')


def test_the_extras_the_readme_names_exist():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = set(project["optional-dependencies"])
    named = set(re.findall(r"`\[(\w+)\]`", README.read_text(encoding="utf-8")))
    assert named and named <= extras, named - extras
    assert extras - {"all"} <= named, f"extras the README does not explain: {extras - named}"


def test_no_generated_file_is_tracked():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    proc = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if proc.returncode:
        pytest.skip("git cannot list this checkout")
    generated = re.compile(
        r"(^|/)(\.coverage(\..*)?|coverage\.xml|htmlcov/.*|__pycache__/.*|.*\.py[co]|"
        r".*\.egg-info/.*|\.ipynb_checkpoints/.*|\.pytest_cache/.*|\.hypothesis/.*|.*\.nc|"
        r"nat4xr_demo_coverage\.png|dask-(worker|scratch)-space/.*)$"
    )
    tracked = [name for name in proc.stdout.splitlines() if generated.search(name)]
    assert not tracked, f"generated files are committed: {tracked}"
