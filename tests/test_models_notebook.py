"""docs/models.ipynb ("The paper's models") is stored with its outputs, and they are current.

Its training numbers (epochs, the fitted models' scores) repeat exactly from run to run on
one machine with one thread, but a change in the last bit of any floating-point sum
(another CPU's kernels, another torch, a reordered reduction) moves the epoch at which
early stopping ends (63 or 91 epochs for the CNN), and with it every number after. So the
stored and the fresh run are both checked for what the notebook shows (the CNN well ahead
of pop-LN, three figures), and only the numbers that do not come from training (sizes, the
ridge STRF's and the true rate's scores) are compared by value.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
NOTEBOOK = DOCS / "models.ipynb"
RERUN = "run `python docs/execute_notebooks.py docs/models.ipynb` and commit the notebook"
#: Printed lines that come from no training run: compared by value.
UNTRAINED = ("{'stim'", "true rate ", "RidgeSTRF ")

pytestmark = pytest.mark.slow


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _tools():
    path = DOCS / "execute_notebooks.py"
    spec = importlib.util.spec_from_file_location("execute_notebooks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _text(nb) -> str:
    return "\n".join(
        o.get("text", "") for c in _code_cells(nb) for o in c.outputs if o.output_type == "stream"
    )


def _check_what_it_shows(nb) -> None:
    outputs = [o for c in _code_cells(nb) for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = _text(nb)
    med = dict(re.findall(r"^(\S+)\s+median r_test (-?\d\.\d+)$", text, flags=re.M))
    assert {"RidgeSTRF", "PopLN", "CNN1Dx2"} <= set(med), text
    assert float(med["CNN1Dx2"]) > float(med["PopLN"]) + 0.1, med
    assert float(med["CNN1Dx2"]) > float(med["RidgeSTRF"]) + 0.1, med
    epochs = re.findall(r"^(PopLN|CNN1Dx2): (\d+) epochs, best (\d+)", text, flags=re.M)
    assert len(epochs) == 2 and all(int(best) < int(n) for _, n, best in epochs), text
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 3  # two histories, one scatter


def _untrained(outputs: list) -> list:
    """Per cell, the kinds of its outputs and only the lines that come from no training."""
    return [
        [
            (kind, "\n".join(ln for ln in text.split("\n") if ln.startswith(UNTRAINED)))
            for kind, text in cell
        ]
        for cell in outputs
    ]


def test_models_notebook_is_stored_with_its_outputs() -> None:
    """Someone reading the notebook sees the histories and the scatter, from one clean run."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    cells = _code_cells(nb)
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1)), f"not one top-to-bottom run: {RERUN}"
    _check_what_it_shows(nb)
    text = NOTEBOOK.read_text(encoding="utf-8")
    for volatile in ("/tmp/", "/home/", "/root/", "/work/", "site-packages", '"execution": {',
                     "TqdmWarning"):  # fmt: skip
        assert volatile not in text, f"{volatile!r} is stored in {NOTEBOOK.name}; {RERUN}"
    source = "\n".join(c.source for c in cells)
    for call in ('truth="cnn"', "models.PopLN(", "models.CNN1Dx2(", "fit(", "plot_history(",
                 "RidgeSTRF(", "plot_scores(", "nat4xr.compare("):  # fmt: skip
        assert call in source, call


def test_models_notebook_executes_and_its_stored_outputs_are_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("NAT4XR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NAT4XR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    _check_what_it_shows(nb)
    tools = _tools()
    stored = _untrained(tools.outputs(nbformat.read(NOTEBOOK, as_version=4)))
    fresh = _untrained(tools.outputs(nb))
    assert any(text for cell in fresh for _, text in cell)  # the lines compared are there
    stale = tools.differences(stored, fresh)
    assert not stale, f"the outputs stored in {NOTEBOOK.name} are out of date; {RERUN}:\n" + (
        "\n".join(stale)
    )
