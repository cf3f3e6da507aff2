"""nat4xr: the NAT4 auditory-cortex dataset as a labeled, lazy xarray Dataset.

Examples
--------
>>> import nat4xr
>>> ds = nat4xr.synthetic.random_dataset(n_est=4, n_val=2, n_neurons=3)
>>> ds.sizes["stim"]
6
"""

from . import accessor, models, synthetic
from ._version import __version__
from .cachedir import cache_dir, data_dir
from .cachefile import open_cache
from .comparison import compare, leaderboard, significant
from .concat import concat
from .errors import CacheError, DownloadError, FormatError, MissingFileError, Nat4Error, Nat4Warning
from .evaluation import evaluate
from .lagged import design
from .opening import open_demo, open_nat4
from .schema import check_dataset, make_dataset
from .waveform import add_waveforms

__all__ = [
    "CacheError",
    "DownloadError",
    "FormatError",
    "MissingFileError",
    "Nat4Error",
    "Nat4Warning",
    "__version__",
    "accessor",
    "add_waveforms",
    "cache_dir",
    "check_dataset",
    "compare",
    "concat",
    "data_dir",
    "design",
    "evaluate",
    "leaderboard",
    "make_dataset",
    "models",
    "open_cache",
    "open_demo",
    "open_nat4",
    "significant",
    "synthetic",
]
