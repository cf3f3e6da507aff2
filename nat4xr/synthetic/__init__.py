"""Synthetic NAT4 data: small in-memory Datasets and releases in the published layout.

Nothing here needs the real data: tests, the demo and the benchmarks run on
what this package writes, and each writer returns the ground truth it used.

The modules: :mod:`~nat4xr.synthetic.release` (:func:`write_release`,
:class:`SyntheticRelease`), :mod:`~nat4xr.synthetic.random_data`
(:func:`random_dataset`), :mod:`~nat4xr.synthetic.layout` (sites, cell ids,
traps), :mod:`~nat4xr.synthetic.responses` (sounds, rates, spike counts),
:mod:`~nat4xr.synthetic.writers` (one writer per release file),
:mod:`~nat4xr.synthetic.formats` (tar/zip entries, sidecars, CSV numbers) and
:mod:`~nat4xr.synthetic.constants`.
"""

from __future__ import annotations

from .random_data import random_dataset
from .release import SyntheticRelease, write_release

__all__ = ["SyntheticRelease", "random_dataset", "write_release"]
