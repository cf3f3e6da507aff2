"""Run the documentation's notebooks and store their outputs, so that they read without running.

Usage, from the repository's root (after changing a notebook's code)::

    python docs/execute_notebooks.py              # every notebook of PUBLISHED
    python docs/execute_notebooks.py docs/tutorial.ipynb

Each notebook runs top to bottom in a fresh kernel of this Python, with the
checkout first on the path, in a temporary folder that is also its data
folder (``NAT4XR_DATA_DIR``): the demo releases are written and built from
scratch, and nothing is left behind. The outputs replace the stored ones;
the temporary paths in them are written as ``<data dir>`` and warnings
without the source file's path, so the stored text is the same on every
machine.

The tests run the notebooks again and compare what they print with what is
stored, after :func:`normalize` has replaced what changes from run to run
(timings, paths, memory addresses, cache keys); numbers with decimals must
agree to 2 % or two units of their last digit, integers and words exactly.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

#: Per code cell: (output kind, text) of each output, text normalized.
Outputs = list[list[tuple[str, str]]]

_WARNING = re.compile(r"^(?:[A-Za-z]:)?[^\s:]*\.py:\d+: (\w*(?:Warning|Error)\w*): ")
_VOLATILE = [
    # progress bars redraw a line: keep what it finally shows
    (re.compile(r"[^\n]*\r(?!\n)"), ""),
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?"), "<datetime>"),
    (re.compile(r"\d+(?:\.\d+)?\s?(?:it|s|B|kB|MB|GB)/s\b"), "<rate>"),
    (re.compile(r"\b\d+:\d\d(?::\d\d)?\b"), "<time>"),  # elapsed "00:01", "1:02:03"
    # a timing: "32 ms", "18.7 s", "1.2 min"
    (re.compile(r"\d+(?:\.\d+)?\s?(?:ns|µs|us|ms|s|sec|seconds|min)\b"), "<time>"),
    (re.compile(r"0x[0-9a-fA-F]+"), "0x<address>"),
    (re.compile(r"(127\.0\.0\.1|localhost):\d+"), r"\1:<port>"),
    (re.compile(r"-[0-9a-f]{32}\b"), "-<token>"),  # dask names
    (re.compile(r"-[0-9a-f]{16}\.nc\b"), "-<key>.nc"),  # cache files
    # any absolute path (the notebook's folder, the data folder, the checkout)
    (re.compile(r"<[a-z ]+>/(?:[^\s/'\"<>]+/)*|(?<![\w.<>])/(?:[^\s/'\"<>]+/)+"), "<path>/"),
]
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def tidy(text: str, replace: dict[str, str] | None = None) -> str:
    """What gets stored: ``replace``'s paths by their names, warnings without their source line.

    Examples
    --------
    >>> tidy("/tmp/x/data/cache/A1.nc", {"/tmp/x/data": "<data dir>"})
    '<data dir>/cache/A1.nc'
    >>> print(tidy("/src/nat4xr/opening.py:132: Nat4Warning: 2 cells\\n  return f(\\n"))
    Nat4Warning: 2 cells
    <BLANKLINE>
    """
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    lines = text.split("\n")
    out = []
    skip_source = False
    for line in lines:
        if skip_source and line.startswith("  "):
            skip_source = False
            continue  # the source line Python's warnings module echoes
        skip_source = False
        new = _WARNING.sub(r"\1: ", line)
        if new != line:
            skip_source = True
        out.append(new)
    return "\n".join(out)


def normalize(text: str) -> str:
    """``text`` with what changes from run to run replaced by placeholders.

    Examples
    --------
    >>> normalize("second open: 32 ms; cache /tmp/ab/cache/A1-all-e2d4b05dc3f068fd.nc")
    'second open: <time>; cache <path>/A1-all-<key>.nc'
    >>> normalize("<Figure at 0x7f3a2c> trained on 30 sounds in 18.7 s")
    '<Figure at 0x<address>> trained on 30 sounds in <time>'
    >>> normalize("1/9 [00:00<00:05, 1.8it/s]\\r9/9 [00:04<00:00, 2.3it/s]")
    '9/9 [<time><<time>, <rate>]'
    """
    text = tidy(text)
    for pattern, placeholder in _VOLATILE:
        text = pattern.sub(placeholder, text)
    return text


def outputs(nb: Any) -> Outputs:
    """The normalized outputs of every code cell of ``nb`` (an nbformat notebook).

    Text streams and the ``text/plain`` of results count; a figure counts as
    ``("image", "")`` (its pixels depend on fonts and library versions).
    """
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        found = []
        for out in cell.outputs:
            if out.output_type == "stream":
                found.append((out.name, normalize(out.text)))
            elif out.output_type == "error":
                found.append(("error", f"{out.ename}: {out.evalue}"))
            else:
                data = out.get("data", {})
                if "image/png" in data:
                    found.append(("image", ""))
                elif "text/plain" in data:
                    found.append((out.output_type, normalize(data["text/plain"])))
        cells.append(_merge_streams(found))
    return cells


def _merge_streams(found: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Consecutive pieces of one stream as one (how a stream is split varies by run)."""
    merged: list[tuple[str, str]] = []
    for kind, text in found:
        if merged and kind in ("stdout", "stderr") and merged[-1][0] == kind:
            merged[-1] = (kind, merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return merged


def _numbers_agree(a: str, b: str) -> bool:
    if "." not in a and "." not in b and "e" not in a.lower() and "e" not in b.lower():
        return a == b
    x, y = float(a), float(b)
    digits = len(a.split(".")[1]) if "." in a and "e" not in a.lower() else 0
    return math.isclose(x, y, rel_tol=0.02, abs_tol=2 * 10.0**-digits)


def differences(stored: Outputs, fresh: Outputs) -> list[str]:
    """Where ``fresh`` outputs no longer match the ``stored`` ones (empty when current).

    Examples
    --------
    >>> differences([[("stdout", "CCraw 18.7 % (35 cells)")]],
    ...             [[("stdout", "CCraw 18.8 % (35 cells)")]])
    []
    >>> differences([[("stdout", "35 cells")]], [[("stdout", "34 cells")]])
    ['code cell 1, output 1: stored "35 cells", now "34 cells"']
    """
    if len(stored) != len(fresh):
        return [f"{len(stored)} code cells stored, {len(fresh)} now"]
    found = []
    for i, (old_cell, new_cell) in enumerate(zip(stored, fresh), start=1):
        if [k for k, _ in old_cell] != [k for k, _ in new_cell]:
            kinds = ([k for k, _ in old_cell], [k for k, _ in new_cell])
            found.append(f"code cell {i}: stored outputs {kinds[0]}, now {kinds[1]}")
            continue
        for j, ((_, old), (_, new)) in enumerate(zip(old_cell, new_cell), start=1):
            same_words = _NUMBER.sub("#", old) == _NUMBER.sub("#", new)
            if same_words and all(
                _numbers_agree(a, b) for a, b in zip(_NUMBER.findall(old), _NUMBER.findall(new))
            ):
                continue
            found.append(f'code cell {i}, output {j}: stored "{old[:300]}", now "{new[:300]}"')
    return found


def execute(path: Path, workdir: Path, timeout: int = 900) -> Any:
    """Run the notebook at ``path`` in a fresh kernel with ``workdir`` as its folder.

    The kernel inherits this process's environment; the caller sets
    ``NAT4XR_DATA_DIR``. Returns the executed notebook (nbformat); raises
    ``nbclient.exceptions.CellExecutionError`` at the first failing cell.
    """
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    return nb


def store(path: Path) -> Path:
    """Execute the notebook at ``path`` in a temporary folder and write it back with its outputs."""
    import nbformat

    with tempfile.TemporaryDirectory(prefix="nat4xr-notebook-") as tmp:
        work = Path(tmp).resolve()
        data = work / "data"
        saved = {
            k: os.environ.get(k) for k in ("NAT4XR_DATA_DIR", "NAT4XR_CACHE_DIR", "PYTHONPATH")
        }
        os.environ["NAT4XR_DATA_DIR"] = str(data)
        os.environ.pop("NAT4XR_CACHE_DIR", None)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved["PYTHONPATH"]]))
        try:
            nb = execute(path, work)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        replace = {str(data): "<data dir>", str(work): "<notebook dir>"}
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            cell.metadata.pop("execution", None)
            for out in cell.outputs:
                if out.output_type == "stream":
                    out.text = tidy(out.text, replace)
                for kind, value in out.get("data", {}).items():
                    if kind.startswith("text/") and isinstance(value, str):
                        out.data[kind] = tidy(value, replace)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return path


#: Notebooks stored with their outputs. The numbers ``models.ipynb`` prints
#: after training repeat exactly run to run on one machine (one thread), but a
#: change in the last bit of any sum (another CPU, torch version or kernel)
#: changes the epoch early stopping ends at, so its tests compare those by
#: what they show (the CNN ahead of pop-LN), the others by value.
PUBLISHED = ("tutorial.ipynb", "models.ipynb")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: PUBLISHED")
    args = parser.parse_args(argv)
    for path in args.notebooks or [DOCS / name for name in PUBLISHED]:
        print(f"running {path} ...", flush=True)
        store(path)
        print(f"stored the outputs of {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
