"""``import nat4xr`` stays light: heavy dependencies load on first use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import nat4xr

ROOT = Path(__file__).resolve().parent.parent

#: Modules that ``import nat4xr`` must not import: file formats, downloads,
#: scientific stacks and plotting load with the functions that use them.
HEAVY = (
    "netCDF4",
    "h5py",
    "pooch",
    "pyarrow",
    "torch",
    "matplotlib",
    "dask",
    "scipy",
    "numba",
    "nat4xr.synthetic",
    "nat4xr.build",
    "nat4xr.opening",
    "nat4xr.cachefile",
    "nat4xr.models",
)


def _loaded_after(statement: str) -> set[str]:
    """The modules of ``HEAVY`` in ``sys.modules`` after ``statement``, in a new interpreter."""
    code = (
        f"import json, sys; {statement}; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(json.loads(proc.stdout))


def test_import_nat4xr_loads_nothing_heavy() -> None:
    # What xarray itself imports is not ours to avoid: in some environments
    # pandas' string dtype pulls in pyarrow as soon as xarray (pandas) loads.
    # Only the modules that plain `import xarray` leaves out are checked.
    by_xarray = _loaded_after("import xarray")
    assert "nat4xr.synthetic" not in by_xarray
    assert _loaded_after("import nat4xr") <= by_xarray


def test_the_accessor_is_registered_on_import() -> None:
    code = "import nat4xr, xarray as xr; print(hasattr(xr.Dataset(), 'nat4'))"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == "True"


def test_public_names_resolve_to_their_modules() -> None:
    assert set(nat4xr.__all__) == {"__version__", "concat", *nat4xr._LAZY}
    for name in nat4xr.__all__:
        assert getattr(nat4xr, name) is not None, name
    assert nat4xr.open_nat4.__module__ == "nat4xr.opening"
    assert nat4xr.synthetic.write_release.__module__.startswith("nat4xr.synthetic")
    assert issubclass(nat4xr.FormatError, nat4xr.Nat4Error)
    assert set(nat4xr.__all__) <= set(dir(nat4xr))
    assert {"synthetic", "models", "torch"} <= set(dir(nat4xr))


def test_concat_stays_the_function_after_its_module_is_imported() -> None:
    import nat4xr.concat

    assert callable(nat4xr.concat) and nat4xr.concat.__module__ == "nat4xr.concat"


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        nat4xr.no_such_name  # noqa: B018


def _relative_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports (relative imports, inside functions too)."""
    import ast

    root = Path(nat4xr.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(["nat4xr", *parts])] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            found = [f"{target}.{alias.name}" for alias in node.names]
            found += [target] if node.module else []
            graph[name] |= {m for m in found if m in modules and m != name}
    return graph


def test_no_import_cycles() -> None:
    graph = _relative_imports()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_lower_layers_import_nothing_above_them() -> None:
    graph = _relative_imports()
    # provenance records what the cache reader makes; it imports nothing of nat4xr
    base = {
        "nat4xr.errors",
        "nat4xr.schema",
        "nat4xr.files",
        "nat4xr._version",
        "nat4xr.provenance",
    }
    assert not graph["nat4xr.provenance"]
    for name, targets in graph.items():
        if name.startswith(
            "nat4xr.cachefile"
        ):  # knows nothing of releases, downloads, synthetic data
            outside = {t for t in targets if not t.startswith("nat4xr.cachefile")}
            assert outside <= base, (name, outside)
        if name in ("nat4xr.build", "nat4xr.neurons", "nat4xr.release") or name.startswith(
            "nat4xr.nems"
        ):  # the builder knows nothing of the accessor, the cache or the front door
            assert not any(
                t.startswith(("nat4xr.accessor", "nat4xr.cachefile", "nat4xr.opening"))
                for t in targets
            ), (name, targets)
