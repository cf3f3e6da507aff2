"""nat4xr: the NAT4 auditory-cortex dataset as a labeled, lazy xarray Dataset.

Examples
--------
>>> import nat4xr
>>> ds = nat4xr.synthetic.random_dataset(n_est=4, n_val=2, n_neurons=3)
>>> ds.sizes["stim"]
6
"""

from . import synthetic
from ._version import __version__
from .errors import CacheError, DownloadError, FormatError, MissingFileError, Nat4Error, Nat4Warning
from .schema import check_dataset, make_dataset

__all__ = [
    "CacheError",
    "DownloadError",
    "FormatError",
    "MissingFileError",
    "Nat4Error",
    "Nat4Warning",
    "__version__",
    "check_dataset",
    "make_dataset",
    "synthetic",
]
