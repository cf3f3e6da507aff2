"""docs/models.ipynb ("The paper's models") is committed clean and runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "models.ipynb"

pytestmark = pytest.mark.slow


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_models_notebook_is_committed_clean() -> None:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert not [c for c in _code_cells(nb) if c.outputs or c.execution_count]
    source = "\n".join(c.source for c in _code_cells(nb))
    for call in ('truth="cnn"', "models.PopLN(", "models.CNN1Dx2(", "fit(", "plot_history(",
                 "RidgeSTRF(", "plot_scores(", "nat4xr.compare("):  # fmt: skip
        assert call in source, call


def test_models_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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
    outputs = [o for c in _code_cells(nb) for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    med = dict(re.findall(r"^(\S+)\s+median r_test (-?\d\.\d+)$", text, flags=re.M))
    assert {"RidgeSTRF", "PopLN", "CNN1Dx2"} <= set(med), text
    assert float(med["CNN1Dx2"]) > float(med["PopLN"]) + 0.1, med
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 3  # two histories, one scatter
