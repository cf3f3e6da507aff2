"""No validation sound reaches training: not by a default, not by a documented recipe.

The validation sounds are the test set. Every default that chooses sounds to
fit on, to early-stop on or to take statistics from chooses estimation sounds,
and every training recipe in the README, the guide, the design notes, the
tutorial and the docstrings selects them explicitly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import nat4xr
from nat4xr.lagged import design
from nat4xr.splits import assign_folds, assign_holdout

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ds():
    return nat4xr.synthetic.random_dataset(n_est=12, n_val=4, n_neurons=6, seed=3)


def _subsets(obj) -> set[str]:
    return set(np.asarray(obj["subset"].values).astype(str).tolist())


# -- defaults -------------------------------------------------------------------------------------


def test_no_holdout_selection_yields_a_validation_sound(ds, tmp_path):
    split = assign_holdout(ds, 0.25, seed=2)
    val = split["subset"].values == "val"
    assert np.isnan(split["holdout"].values[val]).all()
    for value in (False, True, 0, 1, [False], [True], [False, True]):
        chosen = split.nat4.sel_stims(holdout=value)
        assert chosen.sizes["stim"] > 0 and _subsets(chosen) == {"est"}, value
    both = split.nat4.sel_stims(holdout=[0, 1])
    assert both.sizes["stim"] == 12  # every est sound is training or early stopping
    # kept through selection, concatenation (typed NaN fill) and the cache
    joint = nat4xr.concat([split, ds.assign_attrs(area="PEG")], names=["A1", "PEG"])
    assert joint["holdout"].dtype == np.float64
    for value in (False, True):
        chosen = joint.nat4.sel_stims(holdout=value)
        assert _subsets(chosen) == {"est"} and set(chosen["stim_source"].values) == {"A1"}
    from nat4xr import cachefile

    path = cachefile.write_cache(split, tmp_path / "split.nc")
    with cachefile.open_cache(path) as back:
        np.testing.assert_array_equal(back["holdout"].values, split["holdout"].values)
        assert _subsets(back.nat4.sel_stims(holdout=False)) == {"est"}
    # folds: val sounds are fold 0, so the documented fold filters never hold them
    folded = assign_folds(ds, 4)
    assert _subsets(folded.nat4.sel_stims(fold=[1, 2, 3])) == {"est"}


def test_the_defaults_that_choose_sounds_choose_estimation_sounds(ds):
    d = design(ds, 3)
    assert set(d.stims.tolist()) == set(ds.stim.values[ds.subset.values == "est"].tolist())
    record = json.loads(ds.nat4.normalize("zscore").attrs["normalization"])
    assert record["stims_from"] == "est"
    assert set(record["stims"]) == set(ds.stim.values[ds.subset.values == "est"].tolist())
    assert nat4xr.models.RidgeSTRF().stims == "est"
    # a Dataset without estimation sounds needs an explicit choice, never a silent "all"
    val = ds.nat4.sel_stims(subset="val")
    with pytest.raises(ValueError, match="est"):
        design(val, 3)
    with pytest.raises(ValueError, match="no estimation sounds"):
        val.nat4.normalize("zscore")


def test_the_documented_training_loaders_read_estimation_sounds_only(ds):
    pytest.importorskip("torch")
    split = assign_holdout(ds, 0.25)
    recipes = {
        "README": ds.nat4.sel_stims(subset="est"),
        "guide, early stopping": split.nat4.sel_stims(subset="est", holdout=False),
        "guide, held out": split.nat4.sel_stims(subset="est", holdout=True),
    }
    for name, train in recipes.items():
        loader = train.nat4.to_torch(batch_size=4, shuffle=True, seed=0)
        seen = {m["subset"] for batch in loader for m in batch["stim_meta"]}
        assert seen == {"est"}, name


# -- the documents --------------------------------------------------------------------------------

#: Loaders in the documents that are not training recipes, and why.
NOT_TRAINING = {
    ("docs/tutorial.ipynb", "val_aud"): "shows a batch of validation repeats",
    ("docs/tutorial.ipynb", "mixed"): "shows the mask on est and val sounds side by side",
    ("nat4xr/torch/loader.py", "to_torch(ds"): "shows that the loader visits every stim",
}
_EST = re.compile(r"""subset\s*=\s*["']est["']|==\s*["']est["']""")


def _fenced(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _rst_code(text: str) -> list[str]:
    code, block = [], []
    in_block = False
    for line in text.splitlines():
        if line.startswith((">>> ", "... ")):
            code.append(line[4:])
        elif line.startswith(".. code-block:: python"):
            in_block = True
        elif in_block and (line.startswith("   ") or not line.strip()):
            block.append(line[3:])
        elif in_block:
            in_block = False
            code += block
            block = []
    return ["\n".join(code + block)]


def _documents() -> dict[str, list[str]]:
    docs = {
        "README.md": _fenced((ROOT / "README.md").read_text()),
        "docs/design.md": _fenced((ROOT / "docs/design.md").read_text()),
        "docs/guide.rst": _rst_code((ROOT / "docs/guide.rst").read_text()),
    }
    nb = json.loads((ROOT / "docs/tutorial.ipynb").read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    docs["docs/tutorial.ipynb"] = ["\n".join(cells)]
    # recipes written inline in the prose (``...`` in rst, `...` in markdown), each on its own
    prose = [(ROOT / "README.md").read_text(), (ROOT / "docs/design.md").read_text()]
    prose += ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]
    inline = re.findall(r"``([^`\n]*to_torch\([^`\n]*)``", (ROOT / "docs/guide.rst").read_text())
    for text in prose:
        inline += re.findall(r"(?<!`)`([^`\n]*to_torch\([^`\n]*)`(?!`)", text)
    # a bare mention of the function (`to_torch()`) is a name, not a recipe
    docs["inline"] = [c for c in inline if not re.fullmatch(r"[\w.]*to_torch\(\)", c)]
    for path in sorted((ROOT / "nat4xr").rglob("*.py")):  # the docstrings' examples
        raw = path.read_text().splitlines()
        examples = [ln.strip()[4:] for ln in raw if ln.strip().startswith((">>> ", "... "))]
        if examples:
            docs[str(path.relative_to(ROOT))] = ["\n".join(examples)]
    return docs


def _receiver(line: str) -> str:
    """The expression a loader is built from: ``x.nat4.to_torch(`` or ``to_torch(x``."""
    if ".nat4.to_torch(" in line:
        before = line.split(".nat4.to_torch(")[0]
        chain = re.search(r"[A-Za-z_][\w]*(?:\.\w+(?:\((?:[^()]|\([^()]*\))*\))?)*$", before)
        return chain.group(0) if chain else before
    return "to_torch(" + line.split("to_torch(", 1)[1]


def _provenance(code: str, upto: int, receiver: str) -> str:
    """The receiver, and the last assignment of its root name before ``upto``."""
    root = re.match(r"[A-Za-z_]\w*", receiver.removeprefix("to_torch("))
    if not root:
        return receiver
    assigned = re.findall(rf"^\s*{root.group(0)}\s*=\s*(.+)$", code[:upto], flags=re.M)
    return receiver + " <- " + (assigned[-1] if assigned else "")


def test_every_documented_training_loader_selects_estimation_sounds():
    found, unsafe = [], []
    for doc, snippets in _documents().items():
        for code in snippets:
            for m in re.finditer(r"^.*to_torch\(.*$", code, flags=re.M):
                line = m.group(0)
                if "def to_torch" in line or "return to_torch(" in line or "import" in line:
                    continue
                receiver = _receiver(line)
                key = next((k for k in NOT_TRAINING if k[0] == doc and k[1] in receiver), None)
                if key:
                    continue
                found.append((doc, receiver))
                if not _EST.search(_provenance(code, m.start(), receiver)):
                    unsafe.append((doc, line.strip()))
    assert len(found) >= 7  # README, design notes, guide (2), tutorial, docstrings (2)
    assert not unsafe, f"training loaders not restricted to estimation sounds: {unsafe}"


def test_every_documented_ridge_fit_names_the_estimation_sounds():
    docs = _documents()
    fits = [
        (doc, line.strip())
        for doc in ("README.md", "docs/design.md", "docs/guide.rst", "docs/tutorial.ipynb")
        for code in docs[doc]
        for line in code.splitlines()
        if "RidgeSTRF(" in line and ".fit(" in line
    ]
    assert len(fits) >= 4
    # the docstrings rely on the default, which the test of the defaults pins to "est"
    assert all(_EST.search(line.replace("stims=", "subset=")) for _, line in fits), fits
