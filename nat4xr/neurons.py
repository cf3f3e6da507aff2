"""The neuron axis of a build: parsed cell ids and the release's per-cell table.

:func:`neuron_table` gives, for the population recording's cells, the fields
parsed from each cell id, the ``auditory`` flag and every column of
``<area>_pred_correlation.csv`` as a ``pub_<column>`` coordinate (typed per
column, see docs/internals.md), rows matched to cells as the validation data
is (:func:`nat4xr.release.reconcile`).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import release
from .errors import FormatError, MissingFileError, Nat4Warning
from .schema import PUBLISHED_PREFIX

__all__ = ["neuron_table"]


def neuron_table(cells: list[str], area: str, pred_path: Path) -> pd.DataFrame:
    """Parsed cell ids, the ``auditory`` flag and the ``pub_*`` columns of the per-cell table.

    Table rows land on population cells as the validation data does
    (:func:`nat4xr.release.reconcile`: exact id, then the parsed key), so a
    row spelled ``TNC018a-042-1`` still describes the cell ``TNC018a-42-1``.
    """
    table = _read_pred_table(pred_path)
    ids = table["cellid"].tolist()
    recon = release.reconcile(cells, ids)
    row_of = {cell: i for i, cell in enumerate(ids)}
    rows = np.array([row_of.get(recon.mapping.get(c, ""), -1) for c in cells], dtype=np.intp)
    flags = _auditory_flags(table, pred_path)
    published = _published_columns(table, pred_path)
    absent = [c for c, r in zip(cells, rows) if r < 0]
    if absent:
        warnings.warn(
            f"{pred_path}: {len(absent)} cells are not in the table; their `auditory` flag "
            f"is set to False: {', '.join(absent[:20])}" + (" ..." if len(absent) > 20 else ""),
            Nat4Warning,
            stacklevel=3,
        )
    parsed = [release.parse_cell_id(c) for c in cells]
    columns: dict[str, Any] = {
        "area": [area] * len(cells),
        "site": [p.site for p in parsed],
        "animal": [p.animal for p in parsed],
        "electrode": np.array([p.electrode for p in parsed], dtype=np.int64),
        "unit": np.array([p.unit for p in parsed], dtype=np.int64),
        "auditory": _take_rows(flags, rows),
    }
    for name, values in published.items():
        columns[PUBLISHED_PREFIX + name] = _take_rows(values, rows)
    return pd.DataFrame(columns, index=cells)


#: Values that mean "missing" in the per-cell table (compared case-insensitively).
_MISSING = frozenset({"", "na", "n/a", "nan", "-nan", "null"})
#: A number as CSV writers print it (Python's float() also takes "1_0", which is no number).
_NUMBER = re.compile(r"[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf|infinity|nan)", re.IGNORECASE)
#: pandas' name for a column without a header.
_UNNAMED = re.compile(r"Unnamed: \d+(_level_\d+)?")


def _read_pred_table(path: Path) -> pd.DataFrame:
    """The per-cell table as text: every field a str, ``""`` where empty.

    Header names are stripped of surrounding whitespace (unless that makes two
    equal); rows whose fields are all empty are dropped. The ``cellid`` and
    ``sig_auditory`` columns must exist and each cell id may occur once.
    """
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except FileNotFoundError:
        raise MissingFileError(f"{path}: not found; pass download=True to fetch it") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: unreadable CSV ({exc})") from exc
    names = [str(c).strip() for c in table.columns]
    if len(set(names)) == len(names):
        table.columns = names
    missing = {"cellid", "sig_auditory"} - set(table.columns)
    if missing:
        raise FormatError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    text = table.to_numpy(dtype=object).astype(str)
    blank = np.char.strip(text) == ""
    ids = text[:, list(table.columns).index("cellid")]
    no_id = np.flatnonzero(blank[:, list(table.columns).index("cellid")] & ~blank.all(axis=1))
    if len(no_id):
        raise FormatError(f"{path}: data row {int(no_id[0]) + 1} has no cellid")
    keep = ~blank.all(axis=1)
    table = pd.DataFrame(text[keep], columns=table.columns, dtype=object)
    ids = ids[keep]
    seen = pd.Series(ids, dtype=object)
    dup = seen[seen.duplicated()]
    if len(dup):
        first = dup.iloc[0]
        raise FormatError(
            f"{path}: cellid {first!r} appears in {int((seen == first).sum())} rows; "
            "each cell must have one row"
        )
    return table


def _auditory_flags(table: pd.DataFrame, path: Path) -> np.ndarray:
    """``sig_auditory`` per table row; a value that is no boolean is a FormatError."""
    flags = [_as_bool(v) for v in table["sig_auditory"]]
    bad = [v for v, f in zip(table["sig_auditory"], flags) if f is None]
    if bad:
        raise FormatError(f"{path}: sig_auditory value {bad[0]!r} is not a boolean")
    return np.array(flags, dtype=bool)


def _published_columns(table: pd.DataFrame, path: Path) -> dict[str, np.ndarray]:
    """Every column but ``cellid`` (and those without a header), typed, under a safe name.

    Names: surrounding whitespace dropped, then every character outside
    ``[A-Za-z0-9_]`` replaced by ``_``; a name taken by an earlier column gets
    ``_2``, ``_3``, ... Types: ``sig_auditory`` is bool (never empty); a
    column whose values are all boolean words (true/false in any case, 0/1
    allowed among them) is bool with False where empty; a column of numbers
    is float64 with NaN where empty (ints too, and a column of only 0 and 1,
    which may be a count); any other column is str with ``""`` where empty.
    Empty means ``""``, ``NA``, ``N/A``, ``NaN`` or ``null``.
    """
    out: dict[str, np.ndarray] = {}
    for column in table.columns:
        if column == "cellid" or column == "" or _UNNAMED.fullmatch(column):
            continue
        name = re.sub(r"[^A-Za-z0-9_]", "_", column)
        base, k = name, 2
        while name in out:
            name, k = f"{base}_{k}", k + 1
        if column == "sig_auditory":
            out[name] = _auditory_flags(table, path)
        else:
            out[name] = _typed_column(table[column].tolist())
    return out


def _typed_column(values: list[str]) -> np.ndarray:
    """float64, bool or ``<U`` values of one text column (see :func:`_published_columns`)."""
    bare = [v.strip() for v in values]
    missing = [v.lower() in _MISSING for v in bare]
    words = {v.lower() for v, m in zip(bare, missing) if not m}
    if words and words <= {"true", "false", "0", "1"} and words & {"true", "false"}:
        return np.array([v.lower() in ("true", "1") for v in bare], dtype=bool)
    if all(m or _NUMBER.fullmatch(v) for v, m in zip(bare, missing)):
        return np.array(
            [np.nan if m else float(v) for v, m in zip(bare, missing)], dtype=np.float64
        )
    return np.array(["" if m else v for v, m in zip(values, missing)], dtype=str)


def _take_rows(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]`` with the typed fill where ``rows`` is -1: NaN, False or ``""``."""
    kind = values.dtype.kind
    fill: Any = np.nan if kind == "f" else False if kind == "b" else ""
    out = np.full(len(rows), fill, dtype=values.dtype if kind != "U" else object)
    hit = rows >= 0
    out[hit] = values[rows[hit]]
    return out.astype(str) if kind == "U" else out


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if _NUMBER.fullmatch(text) and text not in ("nan", "-nan", "+nan"):
        return {0.0: False, 1.0: True}.get(float(text))
    return {"true": True, "false": False}.get(text)
