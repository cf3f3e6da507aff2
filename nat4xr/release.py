"""What nat4xr knows of the NAT4 release: file names, epoch names and cell ids.

Examples
--------
>>> population_file("A1")
'A1_NAT4_ozgf.fs100.ch18.tgz'
>>> parse_cell_id("ARM029a-04-1")
CellId(site='ARM029a', animal='ARM', electrode=4, unit=1)
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .errors import MissingFileError

__all__ = [
    "AREAS",
    "SUBSETS",
    "CellId",
    "Reconciliation",
    "check_area",
    "check_subset",
    "is_stim_epoch",
    "is_val_epoch",
    "parse_cell_id",
    "population_file",
    "reconcile",
    "site_of_file",
    "source_files",
]

AREAS = ("A1", "PEG")
SUBSETS = ("all", "est", "val")

_CELL_RE = re.compile(
    r"^(?P<site>(?P<animal>[A-Za-z]{3})\d+[A-Za-z]?)-(?P<elec>\d+)-(?P<unit>\d+)$"
)
_SITE_RE = re.compile(r"(?<![A-Za-z])([A-Za-z]{3}\d{3}[a-z])(?![a-z])")


def check_area(area: str) -> str:
    """Return ``area`` if it is a NAT4 area, else raise ``ValueError``.

    Examples
    --------
    >>> check_area("PEG")
    'PEG'
    >>> check_area("V1")
    Traceback (most recent call last):
    ...
    ValueError: unknown area 'V1': NAT4 has 'A1' and 'PEG'
    """
    if area not in AREAS:
        raise ValueError(f"unknown area {area!r}: NAT4 has 'A1' and 'PEG'")
    return area


def check_subset(subset: str) -> str:
    """Return ``subset`` if it is 'all', 'est' or 'val', else raise ``ValueError``."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}: choose 'all', 'est' or 'val'")
    return subset


#: Length of every NAT4 sound (ms); a smoothing window may not be longer.
SOUND_MS = 1000.0


def check_smooth_ms(smooth_ms: Any) -> float | None:
    """Return ``smooth_ms`` as a float (None stays None) if it is a usable window, else raise.

    A window must be a positive, finite number of milliseconds no longer than
    a sound (:data:`SOUND_MS`): a longer one would average the whole trial.

    Examples
    --------
    >>> check_smooth_ms(20), check_smooth_ms(None)
    (20.0, None)
    >>> check_smooth_ms(float("inf"))
    Traceback (most recent call last):
    ...
    ValueError: smooth_ms must be a number of milliseconds in (0, 1000], got inf
    """
    if smooth_ms is None:
        return None
    bad = isinstance(smooth_ms, (bool, str, bytes)) or not isinstance(smooth_ms, numbers.Real)
    if bad or not 0 < float(smooth_ms) <= SOUND_MS:
        raise ValueError(
            f"smooth_ms must be a number of milliseconds in (0, {SOUND_MS:.0f}], got {smooth_ms!r}"
        )
    return float(smooth_ms)


def population_file(area: str) -> str:
    """File name of the population recording of ``area``."""
    return f"{area}_NAT4_ozgf.fs100.ch18.tgz"


def pred_file(area: str) -> str:
    """File name of the per-cell table (``cellid``, ``sig_auditory``, ...)."""
    return f"{area}_pred_correlation.csv"


def sites_folder(area: str) -> str:
    """Folder that ``<area>_single_sites.zip`` unpacks to."""
    return f"{area}_single_sites"


def is_stim_epoch(name: str) -> bool:
    """True for a stimulus epoch (``STIM_...``)."""
    return name.startswith("STIM_")


def is_val_epoch(name: str) -> bool:
    """True for a validation sound (``STIM_00cat...``); estimation sounds are ``STIM_cat...``.

    Examples
    --------
    >>> is_val_epoch("STIM_00cat172_rec1_geese_excerpt1.wav"), is_val_epoch("STIM_cat1.wav")
    (True, False)
    """
    return name.startswith("STIM_00")


class CellId(NamedTuple):
    """Parsed parts of a cell id; ``""`` and ``-1`` mean unknown."""

    site: str
    animal: str
    electrode: int
    unit: int

    @property
    def key(self) -> tuple[str, int, int] | None:
        """(site, electrode, unit), the spelling-independent identity; None if unparsed."""
        return (self.site, self.electrode, self.unit) if self.electrode >= 0 else None


def parse_cell_id(cell: str) -> CellId:
    """Split ``<site>-<electrode>-<unit>`` (site = 3-letter animal, digits, session letter).

    Ids outside the pattern keep unknown fields; the site is still taken from
    the first ``-`` field when it looks like a site.

    Examples
    --------
    >>> parse_cell_id("TNC018a-042-1")
    CellId(site='TNC018a', animal='TNC', electrode=42, unit=1)
    >>> parse_cell_id("DRX008b-LFP-1")
    CellId(site='DRX008b', animal='DRX', electrode=-1, unit=-1)
    >>> parse_cell_id("odd")
    CellId(site='', animal='', electrode=-1, unit=-1)
    """
    m = _CELL_RE.match(cell)
    if m:
        return CellId(m["site"], m["animal"].upper(), int(m["elec"]), int(m["unit"]))
    head = cell.split("-", 1)[0]
    site = _SITE_RE.fullmatch(head)
    if site and "-" in cell:
        return CellId(head, head[:3].upper(), -1, -1)
    return CellId("", "", -1, -1)


def site_of_file(path: str | os.PathLike) -> str | None:
    """The site id named in a single-site file name, if any.

    Examples
    --------
    >>> site_of_file("A1_single_sites/ARM029a_NAT4_fs1000.tgz")
    'ARM029a'
    """
    m = _SITE_RE.search(Path(path).name)
    return m.group(1) if m else None


@dataclass
class Reconciliation:
    """How population cell ids map to the ids of the site files.

    Attributes
    ----------
    mapping : dict
        Population id -> site-file id, for every matched cell.
    by_key : dict
        The subset of ``mapping`` matched on (site, electrode, unit) because
        the spelling differed.
    unmatched : list
        Population ids found in no site file (they have no validation data).
    extra : list
        Site-file ids absent from the population (ignored).
    """

    mapping: dict[str, str] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)


def reconcile(population: Sequence[str], site_cells: Iterable[str]) -> Reconciliation:
    """Match population ids to site-file ids: exact id first, then the parsed key.

    The same cell can be spelled ``TNC018a-42-1`` in one recording and
    ``TNC018a-042-1`` in the other; an exact match alone would lose it.

    Examples
    --------
    >>> r = reconcile(["TNC018a-42-1", "ARM029a-04-1", "X-1"], ["TNC018a-042-1", "ARM029a-04-1"])
    >>> r.mapping
    {'ARM029a-04-1': 'ARM029a-04-1', 'TNC018a-42-1': 'TNC018a-042-1'}
    >>> r.unmatched, r.by_key
    (['X-1'], {'TNC018a-42-1': 'TNC018a-042-1'})
    """
    site_cells = list(dict.fromkeys(site_cells))
    out = Reconciliation()
    exact = set(site_cells)
    taken: set[str] = set()
    for cell in population:
        if cell in exact:
            out.mapping[cell] = cell
            taken.add(cell)
    keyed: dict[tuple[str, int, int], list[str]] = {}
    for cell in site_cells:
        if cell in taken:
            continue
        key = parse_cell_id(cell).key
        if key is not None:
            keyed.setdefault(key, []).append(cell)
    for cell in population:
        if cell in out.mapping:
            continue
        key = parse_cell_id(cell).key
        candidates = keyed.get(key, []) if key is not None else []
        if len(candidates) == 1 and candidates[0] not in taken:
            out.mapping[cell] = out.by_key[cell] = candidates[0]
            taken.add(candidates[0])
        else:
            out.unmatched.append(cell)
    out.extra = [c for c in site_cells if c not in taken]
    return out


# -- files of a release ------------------------------------------------------


def _missing(path: Path, what: str) -> MissingFileError:
    return MissingFileError(
        f"{path}: {what} not found. Pass download=True (or run `nat4xr fetch`) to fetch "
        "the release, or point path= at the folder that holds it"
    )


def population_path(root: Path, area: str) -> Path:
    """The population recording: the ``.tgz`` or the folder it unpacks to."""
    tgz = root / population_file(area)
    if tgz.is_file():
        return tgz
    folder = root / tgz.name.removesuffix(".tgz")
    if folder.is_dir():
        return folder
    raise _missing(tgz, "the population recording")


def site_sources(root: Path, area: str) -> list[Path]:
    """Single-site recordings: ``<area>_single_sites/*.tgz`` or, failing that, the zip."""
    folder = root / sites_folder(area)
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.name.endswith((".tgz", ".tar.gz")))
        files += sorted(p for p in folder.iterdir() if p.is_dir() and site_of_file(p))
        if not files:
            raise _missing(folder, "single-site recordings (*.tgz)")
        return files
    archive = root / f"{sites_folder(area)}.zip"
    if archive.is_file():
        return [archive]
    raise _missing(folder, "the single-site recordings (folder or .zip)")


def source_files(
    path: str | os.PathLike, area: str, subset: str = "all", waveform: bool = False
) -> list[Path]:
    """The files a build of ``area``/``subset`` reads (a cache key is made from them).

    Raises
    ------
    MissingFileError
        Naming the first missing file and how to fetch it.

    Examples
    --------
    >>> source_files("/nowhere", "A1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    nat4xr.errors.MissingFileError: /nowhere/A1_NAT4_ozgf.fs100.ch18.tgz: the population ...
    """
    root = Path(path)
    check_area(area)
    check_subset(subset)
    files = [population_path(root, area)]
    pred = root / pred_file(area)
    if not pred.is_file():
        raise _missing(pred, "the per-cell table")
    files.append(pred)
    if subset != "est":
        files += site_sources(root, area)
    if waveform:
        wav = root / "wav"
        if wav.is_dir():
            files.append(wav)
        elif (root / "wav.zip").is_file():
            files.append(root / "wav.zip")
        else:
            raise MissingFileError(
                f"{wav}: the source sounds (wav/ or wav.zip) not found. Pass download=True "
                "with waveform=True (or run `nat4xr fetch AREA --wav`) to fetch them"
            )
    return files
