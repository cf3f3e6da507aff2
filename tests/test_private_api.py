"""nat4xr uses xarray, dask and torch through their public API only.

Every ``nat4xr/**/*.py`` file is parsed (``ast``: comments and strings never
count) and searched for private names of xarray and dask: internals change
without notice between releases, and the code built on them breaks silently.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nat4xr"

#: ``xarray.core.indexing`` holds the documented helpers for backend arrays.
INDEXING_HELPERS = {
    "explicit_indexing_adapter",
    "LazilyIndexedArray",
    "IndexingSupport",
    "BasicIndexer",
    "OuterIndexer",
    "VectorizedIndexer",
}
#: Public classes (``xarray.backends.BackendArray``) that also live in this module.
BACKEND_COMMON_PUBLIC = {"BackendArray", "BackendEntrypoint"}
PRIVATE_ATTRIBUTES = {"_data", "_replace", "_meta"}
LIBRARIES = ("xarray", "dask", "torch")
#: Names these libraries are imported as in nat4xr.
ALIASES = {"xarray", "xr", "dask", "da", "torch"}


def _library_module(name: str) -> bool:
    return name.split(".")[0] in LIBRARIES


def _module_problem(module: str) -> str | None:
    """Why importing ``module`` (a dotted path) uses private API, or None."""
    if not _library_module(module):
        return None
    if any(part.startswith("_") for part in module.split(".")):
        return f"private module {module}"
    if module == "xarray.backends.file_manager":
        return "xarray's file cache (xarray.backends.file_manager)"
    if module.startswith("xarray.core") and module != "xarray.core.indexing":
        return f"xarray internals ({module})"
    return None


def _import_from_problems(node: ast.ImportFrom) -> list[str]:
    module = node.module or ""
    if node.level or not _library_module(module):
        return []
    names = [alias.name for alias in node.names]
    out = []
    for name in names:
        if name.startswith("_") and name != "__version__":
            out.append(f"private name {module}.{name}")
    if module == "xarray.core":
        out += [f"xarray internals (xarray.core.{n})" for n in names if n != "indexing"]
    elif module == "xarray.core.indexing":
        out += [
            f"undocumented xarray.core.indexing.{n}" for n in names if n not in INDEXING_HELPERS
        ]
    elif module == "xarray.backends.common":
        out += [f"xarray.backends.common.{n}" for n in names if n not in BACKEND_COMMON_PUBLIC]
    elif module == "xarray.backends" and "file_manager" in names:
        out.append("xarray's file cache (xarray.backends.file_manager)")
    else:
        problem = _module_problem(module)
        if problem:
            out.append(problem)
    return out


def _attribute_problem(node: ast.Attribute) -> str | None:
    owner = node.value
    if node.attr in PRIVATE_ATTRIBUTES:
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            return None  # the class's own attribute
        return f"private attribute .{node.attr}"
    root = owner
    while isinstance(root, ast.Attribute):
        root = root.value
    dunder = node.attr.startswith("__") and node.attr.endswith("__")
    if node.attr.startswith("_") and not dunder and isinstance(root, ast.Name):
        if root.id in ALIASES:
            return f"private name {ast.unparse(node)}"
    if node.attr == "file_manager":
        return "xarray's file cache (xarray.backends.file_manager)"
    if node.attr == "__dask_graph__":
        return "reading dask graphs (__dask_graph__)"
    if node.attr == "layers" and isinstance(owner, ast.Attribute) and owner.attr == "dask":
        return "reading dask layer names (.dask.layers)"
    return None


def private_uses(source: str, filename: str = "<source>") -> list[str]:
    """``"line: problem"`` for each use of private xarray or dask API in ``source``.

    Examples
    --------
    >>> private_uses("import xarray as xr\\nv = xr.Variable(('x',), [1], fastpath=True)")
    ['2: fastpath= keyword']
    >>> private_uses("from xarray.core.indexing import explicit_indexing_adapter")
    []
    """
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        problems: list[str] = []
        if isinstance(node, ast.Call):
            problems += ["fastpath= keyword" for kw in node.keywords if kw.arg == "fastpath"]
            func, args = node.func, node.args
            if isinstance(func, ast.Name) and func.id in ("getattr", "hasattr") and len(args) > 1:
                name = args[1]
                if isinstance(name, ast.Constant) and name.value in PRIVATE_ATTRIBUTES:
                    problems.append(f"private attribute .{name.value} by {func.id}()")
        elif isinstance(node, ast.Import):
            problems += [p for alias in node.names if (p := _module_problem(alias.name))]
        elif isinstance(node, ast.ImportFrom):
            problems += _import_from_problems(node)
        elif isinstance(node, ast.Attribute):
            problem = _attribute_problem(node)
            problems += [problem] if problem else []
        found += [f"{node.lineno}: {p}" for p in problems]
    return sorted(found, key=lambda s: int(s.split(":")[0]))


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_xarray_or_dask_api(path: Path) -> None:
    found = private_uses(path.read_text(encoding="utf-8"), str(path))
    rel = str(path.relative_to(PACKAGE))
    assert not found, f"nat4xr/{rel} uses private xarray/dask API:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "xr.Variable(dims, data, attrs, fastpath=True)",
        "import xarray.core.dataset",
        "from xarray.core.variable import Variable",
        "from xarray.core import utils",
        "from xarray.core.indexing import NumpyIndexingAdapter",
        "storage = torch.UntypedStorage._new_shared(8)",
        "xr.backends.file_manager.FILE_CACHE",
        "from xarray.backends.file_manager import FILE_CACHE",
        "from xarray.backends import file_manager",
        "from xarray.backends.common import AbstractDataStore",
        "from dask._task_spec import Task",
        "from dask.array.core import _concatenate2",
        "data = var._data",
        "ds = ds._replace(variables=v)",
        "replace = getattr(ds, '_replace', None)",
        "meta = array._meta",
        "names = list(arr.dask.layers)",
        "graph = arr.__dask_graph__()",
    ],
)
def test_the_scan_finds_private_api(source: str) -> None:
    assert private_uses(source)


@pytest.mark.parametrize(
    "source",
    [
        "from dask.base import tokenize",
        "from dask.array.utils import meta_from_array",
        "import dask.array as da",
        "from xarray.core import indexing",
        "from xarray.core.indexing import explicit_indexing_adapter, LazilyIndexedArray",
        "from xarray.core.indexing import IndexingSupport, OuterIndexer",
        "from xarray.backends import BackendArray, BackendEntrypoint",
        "from xarray.backends.common import BackendArray",
        "self._data = data",
        "# var._data in a comment\nx = '._meta in a string'",
        "xr.Variable(dims, data).isel(x=0)",
    ],
)
def test_the_scan_allows_public_api(source: str) -> None:
    assert private_uses(source) == []
