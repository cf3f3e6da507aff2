"""Files that appear whole or not at all.

Every file or folder nat4xr writes (cache files, unpacked release folders,
the verified-hash record, synthetic releases) is first written under a
temporary name beside its target, then renamed with :func:`os.replace`. A
writer that fails removes its temporary; one that is killed leaves a
``.<name>.<pid>-<hex>.tmp`` that :func:`remove_stale` deletes on the next
write (callers hold the target's lock when they call it).

Examples
--------
>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     target = Path(d) / "table.txt"
...     with atomic_path(target) as tmp:
...         _ = tmp.write_text("done")
...     print(target.read_text(), sorted(p.name for p in Path(d).iterdir()))
done ['table.txt']
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "remove_stale", "temp_path"]


def temp_path(target: str | os.PathLike) -> Path:
    """A fresh temporary name beside ``target``: ``.<name>.<pid>-<hex>.tmp``.

    Not :func:`tempfile.mkstemp`: its 0600 mode would stick to the renamed
    file; files created here get the usual umask-derived permissions.

    Examples
    --------
    >>> temp_path("/data/A1.nc").name.startswith(".A1.nc.")
    True
    """
    target = Path(target)
    return target.parent / f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def remove_stale(target: str | os.PathLike) -> None:
    """Delete what killed writers of ``target`` left (files or folders).

    Call it only while holding the lock that guards ``target``.
    """
    target = Path(target)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        _remove(stale)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path; rename it to ``target`` if the block succeeds.

    Parameters
    ----------
    target : path-like
        The final file (or folder, with ``directory=True``). An existing folder
        is replaced; an existing file is replaced atomically.
    directory : bool
        Create the temporary path as an empty folder.

    Raises
    ------
    BaseException
        Whatever the block raised; the temporary path is removed first.
    """
    target = Path(target)
    tmp = temp_path(target)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if directory and target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
