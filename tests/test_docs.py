"""The documentation runs: the tutorial notebook, the guide's examples and the Sphinx build."""

from __future__ import annotations

import doctest
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import nat4xr

DOCS = Path(__file__).resolve().parent.parent / "docs"
NOTEBOOK = DOCS / "tutorial.ipynb"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for the module: the demo release is written and cached once."""
    return tmp_path_factory.mktemp("nat4xr-data")


@pytest.fixture
def docs_env(monkeypatch: pytest.MonkeyPatch, demo_home: Path, tmp_path: Path) -> Path:
    """Run in a temp folder, with the data and cache there and no display."""
    monkeypatch.setenv("NAT4XR_DATA_DIR", str(demo_home))
    monkeypatch.delenv("NAT4XR_CACHE_DIR", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------- tutorial


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _notebook_tools():
    """docs/execute_notebooks.py, which stores the outputs and says what "current" means."""
    spec = importlib.util.spec_from_file_location(
        "execute_notebooks", DOCS / "execute_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tutorial_is_stored_with_its_outputs() -> None:
    """Someone browsing the notebook sees every output and figure, from one clean run."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    cells = _code_cells(nb)
    counts = [c.execution_count for c in cells]
    rerun = "run `python docs/execute_notebooks.py` and commit the notebook"
    assert counts == list(range(1, len(cells) + 1)), f"not one top-to-bottom run: {rerun}"
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]
    figures = [o for c in cells for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 7
    text = NOTEBOOK.read_text(encoding="utf-8")
    for volatile in ("/tmp/", "/home/", "/root/", "/work/", "site-packages", '"execution": {'):
        assert volatile not in text, f"{volatile!r} is stored in {NOTEBOOK.name}; {rerun}"


def test_notebook_outputs_are_compared_without_volatile_values() -> None:
    tools = _notebook_tools()
    assert doctest.testmod(tools).failed == 0
    stored = "cache file: <data dir>/cache/A1-all-dbf793bb47e521de.nc\nsecond open: 32 ms\n"
    fresh = "cache file: /tmp/pytest-9/d0/cache/A1-all-e2d4b05dc3f068fd.nc\nsecond open: 7 ms\n"
    assert tools.normalize(stored) == tools.normalize(fresh)
    warning = "/src/nat4xr/opening.py:132: Nat4Warning: 2 cells\n  return build_dataset(\n"
    assert tools.normalize(warning) == tools.normalize("Nat4Warning: 2 cells\n")
    # numbers with decimals agree within rounding; counts and words exactly
    assert tools.differences([[("stdout", "CCraw 18.7 %")]], [[("stdout", "CCraw 18.8 %")]]) == []
    assert tools.differences([[("stdout", "38 cells")]], [[("stdout", "40 cells")]])
    assert tools.differences([[("stdout", "CCraw 18.7 %")]], [[("stdout", "CCraw 25.0 %")]])
    assert tools.differences([[("stdout", "in memory")]], [[("stdout", "lazy")]])
    assert tools.differences([[("stdout", "x")]], [[("stdout", "x"), ("image", "")]])


def test_tutorial_tours_the_api() -> None:
    """Each stop of the tour is still there (a removed section fails here, not silently)."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    source = "\n".join(c.source for c in _code_cells(nb))
    for call in (
        "nat4xr.open_demo()",
        "neuron_table()",
        "plot_coverage()",
        "plot_trial(",
        'sel_stims(subset="val")',
        "sel_neurons(auditory=True)",
        "to_torch(",
        '"valid_mask"',
        "synthetic.write_release(",
        'nat4xr.open_nat4("PEG"',
        "nat4xr.concat([ds, peg])",
        'join="shared"',
        "noise_ceiling()",
        "LocalCluster(",
        "nat4xr.torch.predict(",
        "prediction=pred",
        "nat4xr.evaluate(",
        "nat4xr.leaderboard(",
        "nat4xr.significant(",
        "published()",
        "nat4xr.compare(scores, val_aud)",
        "plot_scores(",
        "assign_folds(",
        "RidgeSTRF(",
        "plot_strf(",
    ):
        assert call in source, f"the tutorial no longer calls {call}"


def test_tutorial_executes(docs_env: Path, demo_home: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(docs_env)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [o for c in _code_cells(nb) for o in c.outputs if o.output_type == "error"]
    assert not errors
    # the stored outputs are what the code prints today
    tools = _notebook_tools()
    stored = tools.outputs(nbformat.read(NOTEBOOK, as_version=4))
    stale = tools.differences(stored, tools.outputs(nb))
    assert not stale, (
        f"the outputs stored in {NOTEBOOK.name} are out of date; run "
        "`python docs/execute_notebooks.py` and commit the notebook:\n" + "\n".join(stale)
    )
    text = "\n".join(
        o.get("text", "") for c in _code_cells(nb) for o in c.outputs if o.output_type == "stream"
    )
    # The bidirectional rule hides exactly the cells the coverage map found without val data.
    without = re.search(r"cells without any: (\[.*\])", text)
    hidden = re.search(r"hidden cells: (\[.*?\])", text)
    assert without and hidden and without.group(1) == hidden.group(1) != "[]"
    assert "mask is exactly 'not NaN': True" in text
    # the scoring section scored every validation cell with the leaderboard's line
    line = r"CCraw -?\d+\.\d % over \d+ cells \| CCnorm -?\d+\.\d % over \d+ cells \(of \d+\)"
    assert re.search(line, text)
    figures = [o for c in _code_cells(nb) for o in c.outputs if "image/png" in o.get("data", {})]
    # coverage, trial, joint coverage; trial with a prediction, two score scatters; STRFs
    assert len(figures) == 7
    # the kernel saw NAT4XR_DATA_DIR: the PEG build was cached there, not in the user's folder
    assert list((demo_home / "cache").glob("PEG-all-*.nc"))


# --------------------------------------------------------------------------- guide


@pytest.mark.filterwarnings("ignore::nat4xr.Nat4Warning")  # the demo's planted traps
def test_guide_examples_run(docs_env: Path) -> None:
    import matplotlib.pyplot as plt

    failed, attempted = doctest.testfile(
        str(DOCS / "guide.rst"),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        verbose=False,
    )
    plt.close("all")
    assert attempted >= 30
    assert failed == 0, f"{failed} of {attempted} examples in docs/guide.rst failed (see above)"


# --------------------------------------------------------------------------- Sphinx


@pytest.fixture(scope="module")
def html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("sphinx")
    out = tmp_path_factory.mktemp("html")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    proc = subprocess.run(
        [*cmd, str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stderr[-5000:]}"
    return out


def _documented_ids(page: Path) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', page.read_text(encoding="utf-8")))


def test_sphinx_builds_without_warnings(html: Path) -> None:
    for page in ("index.html", "guide.html", "api.html", "tutorial.ipynb"):
        assert (html / page).is_file(), page


def test_api_reference_covers_the_public_api(html: Path) -> None:
    ids = _documented_ids(html / "api.html")
    missing = []
    for name in nat4xr.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(nat4xr, name)
        if isinstance(obj, types.ModuleType):
            target = f"module-{obj.__name__}"
        else:
            target = f"{inspect.getmodule(obj).__name__}.{obj.__qualname__}"
        if target not in ids:
            missing.append(f"{name} ({target})")
    assert not missing, f"public names missing from docs/api.rst: {missing}"
    accessor = nat4xr.accessor.Nat4Accessor
    methods = [m for m in vars(accessor) if not m.startswith("_")]
    assert len(methods) >= 14
    for method in methods:
        assert f"nat4xr.accessor.Nat4Accessor.{method}" in ids, f"ds.nat4.{method}"
    for target in (
        "nat4xr.torch.to_torch",
        "nat4xr.torch.masked_poisson_nll",
        "nat4xr.metrics.noise_ceiling",
        "nat4xr.fetch.fetch",
        "nat4xr.build.build_dataset",
        "nat4xr.synthetic.write_release",
        "nat4xr.synthetic.random_dataset",
        "nat4xr.nems.open_recording",
        "nat4xr.release.parse_cell_id",
    ):
        assert target in ids, target


def test_index_links_every_note(html: Path) -> None:
    index = (html / "index.html").read_text(encoding="utf-8")
    for note in [*sorted(DOCS.glob("*.md")), NOTEBOOK, DOCS / "models.ipynb"]:
        assert f'href="{note.name}"' in index, f"docs/index.rst does not link {note.name}"
        assert (html / note.name).is_file(), f"{note.name} is not copied (docs/conf.py EXTRA_FILES)"
