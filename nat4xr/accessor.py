"""The ``.nat4`` Dataset accessor: metadata tables, selection, metrics and plots.

Importing :mod:`nat4xr` registers it, so every :class:`xarray.Dataset` has a
``.nat4`` attribute. The accessor stores only the Dataset; every method
returns a new object and leaves its input untouched, and none of them reads
``response`` on a lazy Dataset (selection works from the small ``coverage``
coordinate). The selections (:meth:`~Nat4Accessor.sel_stims`,
:meth:`~Nat4Accessor.sel_neurons`, :meth:`~Nat4Accessor.prune`) also cut the
``repeat`` axis to the largest ``n_repeats`` they keep; xarray's own
indexing (``ds.isel``, ``ds.sel``) never does.

Examples
--------
>>> import nat4xr
>>> ds = nat4xr.synthetic.random_dataset(n_est=6, n_val=2, n_neurons=5, seed=2)
>>> val = ds.nat4.sel_stims(subset="val")
>>> val.sizes["stim"]
2
>>> ds.sizes["stim"]  # the input is unchanged
8
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from . import selection
from .selection import axis_coords, coverage_array, ids, metadata_values

__all__ = ["Nat4Accessor"]


# -- the accessor -------------------------------------------------------------------------------


@xr.register_dataset_accessor("nat4")
class Nat4Accessor:
    """NAT4 helpers on an :class:`xarray.Dataset` (``ds.nat4``).

    The accessor holds nothing but the Dataset, so it is always in step with
    it and pickles with it. Every method returns a new object.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=4, n_val=2, n_neurons=6, seed=0)
    >>> aud = ds.nat4.sel_neurons(auditory=True)
    >>> bool(aud["auditory"].all())
    True
    """

    def __init__(self, ds: xr.Dataset) -> None:
        if not isinstance(ds, xr.Dataset):
            raise TypeError(f".nat4 works on xarray.Dataset objects, not {type(ds).__name__}")
        self._ds = ds

    # tables ----------------------------------------------------------------------------------

    @property
    def coverage(self) -> xr.DataArray:
        """``(stim, neuron)`` bool: True where the neuron has data for the stim.

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=2)
        >>> ds.nat4.coverage.dims
        ('stim', 'neuron')
        """
        coverage_array(self._ds)  # validates presence and dims
        cov = self._ds["coverage"]
        return cov.transpose("stim", "neuron")

    def stim_table(self) -> pd.DataFrame:
        """Stim metadata as a DataFrame indexed by stim id (every stim coordinate).

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=2)
        >>> ds.nat4.stim_table()["subset"].tolist()
        ['est', 'est', 'val']
        """
        return selection.axis_table(self._ds, "stim")

    def neuron_table(self) -> pd.DataFrame:
        """Neuron metadata as a DataFrame indexed by cell id (every neuron coordinate).

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=2)
        >>> "animal" in ds.nat4.neuron_table().columns
        True
        """
        return selection.axis_table(self._ds, "neuron")

    def published(self) -> pd.DataFrame:
        """The release's per-cell table (``<area>_pred_correlation.csv``) as a DataFrame.

        A build copies every column of the table but ``cellid`` to a neuron
        coordinate ``pub_<column>``; this returns those coordinates, indexed
        by cell id, with the ``pub_`` prefix stripped from the column names.
        Numbers are float64 (NaN where missing), flags bool, text str;
        neurons absent from the table have NaN, False or ``""``.

        Returns
        -------
        pandas.DataFrame
            A new table; editing it does not change the Dataset.

        Raises
        ------
        ValueError
            When the Dataset has no ``pub_*`` coordinate (it was not built
            from a release).

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=2)
        >>> ds = ds.assign_coords(pub_r_test=("neuron", [0.25, float("nan")]),
        ...                       pub_sig_auditory=("neuron", [True, False]))
        >>> table = ds.nat4.published()
        >>> list(table.columns), table.index.name
        (['r_test', 'sig_auditory'], 'neuron')
        >>> table["r_test"].tolist(), table["sig_auditory"].tolist()
        ([0.25, nan], [True, False])
        >>> nat4xr.synthetic.random_dataset().nat4.published()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: this Dataset has no published table ...
        """
        from .schema import PUBLISHED_PREFIX

        names = [n for n in axis_coords(self._ds, "neuron") if str(n).startswith(PUBLISHED_PREFIX)]
        if not names:
            raise ValueError(
                "this Dataset has no published table (no pub_* neuron coordinates); "
                "build it from a NAT4 release, e.g. nat4xr.open_nat4(area, path=...), whose "
                "<area>_pred_correlation.csv becomes the pub_* coordinates"
            )
        columns = {
            str(n)[len(PUBLISHED_PREFIX) :]: metadata_values(self._ds.variables[n]) for n in names
        }
        index = pd.Index(ids(self._ds, "neuron"), name="neuron")
        return pd.DataFrame(columns, index=index, copy=True)

    # selection -------------------------------------------------------------------------------

    def sel_stims(self, *predicate: Any, **filters: Any) -> xr.Dataset:
        """Keep the matching stims, then drop neurons with no data among them.

        Parameters
        ----------
        *predicate : callable or bool array
            A callable receives :meth:`stim_table` and returns a bool mask
            (array or Series); several predicates are combined with "and".
        **filters
            ``name=value`` on stim coordinates (``stim=`` filters by id):
            equality, or "any of" for a list/tuple/set, or a callable that
            receives the coordinate as a Series and returns a bool mask.
            Every value given (each one of a list) must appear in its
            coordinate, so that a typo raises instead of selecting nothing;
            a callable keeps whichever exist (``stim=lambda s: s.isin(ids)``).

        Returns
        -------
        xarray.Dataset
            A new Dataset (possibly empty: a :class:`nat4xr.Nat4Warning` then
            says why, e.g. no cell heard the stims kept); the input is
            unchanged and a lazy ``response`` stays lazy. Its ``repeat`` axis holds the largest
            ``n_repeats`` among the kept stims (the repeats past it are NaN
            for all of them), so an estimation-only selection has one repeat.
            Plain xarray indexing (``ds.isel(stim=...)``) keeps every repeat:
            only the accessor's selections cut the axis, and
            :func:`nat4xr.concat` pads it back when joined with Datasets that
            have more.

        Raises
        ------
        KeyError
            For an unknown coordinate name (the message lists the valid ones).
        ValueError
            For a value that appears nowhere in its coordinate (the message
            names it and lists the values that exist).

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=5, n_val=2, n_neurons=4)
        >>> ds.nat4.sel_stims(subset="val").sizes["stim"]
        2
        >>> ds.nat4.sel_stims(lambda t: t["n_repeats"] > 1).sizes["stim"]
        2
        >>> ds.sizes["repeat"], ds.nat4.sel_stims(subset="est").sizes["repeat"]
        (20, 1)
        >>> ds.isel(stim=[0, 1]).sizes["repeat"]  # xarray's own indexing keeps them all
        20
        """
        return selection.select_matching(self._ds, "stim", *predicate, **filters)

    def sel_neurons(self, *predicate: Any, **filters: Any) -> xr.Dataset:
        """Keep the matching neurons, then drop stims with no data among them.

        Parameters and filters work as in :meth:`sel_stims`, on neuron
        coordinates (``neuron=`` filters by cell id). The ``repeat`` axis is
        cut to the largest ``n_repeats`` among the stims left, as in
        :meth:`sel_stims` (``ds.isel(neuron=...)`` keeps every repeat).

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=5, n_val=2, n_neurons=8, seed=1)
        >>> sub = ds.nat4.sel_neurons(animal=["ARM", "CRD"])
        >>> sorted(set(sub["animal"].values.tolist()))
        ['ARM', 'CRD']
        """
        return selection.select_matching(self._ds, "neuron", *predicate, **filters)

    def prune(self, recompute: bool | None = None) -> xr.Dataset:
        """Drop stims and neurons that have no data at all.

        The ``repeat`` axis is cut to the largest ``n_repeats`` among the
        stims left, as in :meth:`sel_stims`; useful after plain xarray
        indexing, which keeps every repeat. The decision reads the
        ``coverage`` coordinate where it provably describes the values (a
        cache file's, not read for this), else derives it from the data
        again (one streamed pass), so values edited with plain xarray
        (``where``, ``fillna``) are judged by what they hold; see
        :func:`nat4xr.selection.prune`.

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=3, p_missing=1.0)
        >>> dict(ds.nat4.prune().sizes)["stim"]
        0
        >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=3, p_missing=0.0)
        >>> ds.isel(stim=[0, 1]).nat4.prune().sizes["repeat"]
        1
        """
        return selection.prune(self._ds, recompute=recompute)

    def load(self) -> xr.Dataset:
        """The Dataset in memory, each variable read into one preallocated array.

        Unlike ``Dataset.load()``, which keeps every computed dask chunk until
        it concatenates them (twice the result at its peak), this fills the
        result block by block, or lets a ``chunks=None`` cache read straight
        into it, and hands freed memory back to the OS after. Returns a new
        Dataset; the input stays lazy. See :func:`nat4xr.loading.load`.

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=2).chunk({"stim": 2})
        >>> ds.nat4.load()["response"].chunks is None
        True
        """
        from .loading import load

        return load(self._ds)

    # metrics and plots -----------------------------------------------------------------------

    def psth(self) -> xr.DataArray:
        """Mean over repeats, ignoring NaN: see :func:`nat4xr.metrics.psth`.

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=2)
        >>> ds.nat4.psth().dims
        ('stim', 'neuron', 'time')
        """
        from . import metrics

        return metrics.psth(self._ds)

    def noise_ceiling(self, **kwargs: Any) -> xr.Dataset:
        """CCmax and SNR per (stim, neuron) and per neuron.

        See :func:`nat4xr.metrics.noise_ceiling` for the estimators.

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=2, n_neurons=2)
        >>> sorted(ds.nat4.noise_ceiling().data_vars)
        ['cc_half', 'ccmax', 'ccmax_neuron', 'n_valid', 'snr', 'snr_neuron']
        """
        from . import metrics

        return metrics.noise_ceiling(self._ds, **kwargs)

    def smooth(self, window_ms: float) -> xr.Dataset:
        """Hanning-smoothed responses: see :func:`nat4xr.metrics.smooth`.

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=2)
        >>> ds.nat4.smooth(50).attrs["smoothing"]
        '{"bins": 5, "method": "hanning", "window_ms": 50.0}'
        """
        from . import metrics

        return metrics.smooth(self._ds, window_ms)

    def normalize(self, method: str = "minmax", stims: Any = "est") -> xr.Dataset:
        """Per-neuron scaling, statistics from the est sounds: see :func:`nat4xr.metrics.normalize`.

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=2)
        >>> norm = ds.nat4.normalize("minmax")
        >>> float(norm.nat4.sel_stims(subset="est")["response"].max())
        1.0
        """
        from . import metrics

        return metrics.normalize(self._ds, method=method, stims=stims)

    def plot_coverage(self, ax: Any = None) -> Any:
        """Coverage map: see :func:`nat4xr.plot.plot_coverage`.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=2)
        >>> ax = ds.nat4.plot_coverage()
        """
        from . import plot

        return plot.plot_coverage(self._ds, ax=ax)

    def plot_trial(self, stim: Any, neuron: Any, axes: Any = None, prediction: Any = None) -> Any:
        """Spectrogram, raster and PSTH of one cell: see :func:`nat4xr.plot.plot_trial`.

        ``prediction`` (e.g. from ``nat4xr.torch.predict``) is drawn over the
        PSTH, selected by this stim's and neuron's ids.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=2)
        >>> axes = ds.nat4.plot_trial(ds.stim.values[-1], ds.neuron.values[0])
        >>> len(axes)
        3
        """
        from . import plot

        return plot.plot_trial(self._ds, stim, neuron, axes=axes, prediction=prediction)

    def lagged(self, n_lags: int) -> xr.DataArray:
        """The spectrogram at lags 0..n_lags-1, ``(stim, time, lag, freq)``: see
        :func:`nat4xr.lagged.lagged`.

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=2, n_freq=3)
        >>> ds.nat4.lagged(4).sizes["lag"]
        4
        """
        from .lagged import lagged

        return lagged(self._ds, n_lags)

    def assign_folds(self, k: int, seed: int = 0) -> xr.Dataset:
        """A ``fold`` stim coordinate (1..k on est sounds): see :func:`nat4xr.splits.assign_folds`.

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=6, n_val=1, n_neurons=2)
        >>> int(ds.nat4.assign_folds(3)["fold"].max())
        3
        """
        from .splits import assign_folds

        return assign_folds(self._ds, k, seed=seed)

    def assign_holdout(self, fraction: float, seed: int = 0) -> xr.Dataset:
        """A ``holdout`` stim coordinate (1/0 on est sounds, NaN on the others).

        See :func:`nat4xr.splits.assign_holdout`.

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=10, n_val=1, n_neurons=2)
        >>> int(ds.nat4.assign_holdout(0.3)["holdout"].sum())
        3
        """
        from .splits import assign_holdout

        return assign_holdout(self._ds, fraction, seed=seed)

    def assign_heldout_site(
        self, site: str, matched: bool = False, seed: int = 0, match_on: str | None = None
    ) -> xr.Dataset:
        """A bool ``pretrain`` neuron coordinate: see :func:`nat4xr.splits.assign_heldout_site`.

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=12, seed=1)
        >>> int((~ds.nat4.assign_heldout_site("ARM010a").pretrain).sum())
        5
        """
        from .splits import assign_heldout_site

        return assign_heldout_site(self._ds, site, matched=matched, seed=seed, match_on=match_on)

    def subsample_est(self, fraction: float, seed: int = 0) -> xr.Dataset:
        """A nested share of the est sounds, val untouched: see :func:`nat4xr.splits.subsample_est`.

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=10, n_val=2, n_neurons=2)
        >>> ds.nat4.subsample_est(0.3).sizes["stim"]
        5
        """
        from .splits import subsample_est

        return subsample_est(self._ds, fraction, seed=seed)

    def evaluate(self, prediction: Any, **kwargs: Any) -> xr.Dataset:
        """Score a prediction of this Dataset's responses: see :func:`nat4xr.evaluate`.

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=2, n_neurons=3, seed=1)
        >>> val = ds.nat4.sel_stims(subset="val")
        >>> scores = val.nat4.evaluate(val["response"].mean("repeat"), metrics="cc_raw")
        >>> scores["cc_raw"].round(6).values.tolist()
        [1.0, 1.0, 1.0]
        """
        from .evaluation import evaluate

        return evaluate(self._ds, prediction, **kwargs)

    def plot_scores(
        self, a: xr.Dataset, b: xr.Dataset | None = None, metric: str = "r_test", **kwargs: Any
    ) -> Any:
        """Per-cell scatter of two sets of scores: see :func:`nat4xr.plot.plot_scores`.

        Without ``b``, ``a`` is drawn against the release's published values
        (this Dataset's ``pub_*`` coordinates) of the same metric.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import nat4xr, xarray as xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=3)
        >>> ds = ds.assign_coords(pub_r_test=("neuron", [0.1, 0.2, 0.3]))
        >>> mine = xr.Dataset({"r_test": ("neuron", [0.2, 0.1, 0.4])}, coords={"neuron": ds.neuron})
        >>> ax = ds.nat4.plot_scores(mine)
        >>> ax.get_ylabel()
        'r_test (published)'
        """
        from . import plot

        if b is None:
            kwargs.setdefault("labels", ("yours", "published"))
            return plot.plot_scores(a, self._ds, metric, **kwargs)
        return plot.plot_scores(a, b, metric, **kwargs)

    def plot_strf(self, neuron: Any, strf: Any = None, ax: Any = None) -> Any:
        """Draw a cell's fitted STRF (lag x frequency): see :func:`nat4xr.plot.plot_strf`.

        ``strf`` is a fitted :class:`~nat4xr.models.RidgeSTRF` or its
        ``strf_``; without it, the Dataset's own ``strf`` variable (e.g. after
        ``ds.assign(strf=model.strf_)``). The frequency axis is labelled in
        kHz from the Dataset's ``freq_hz`` when the filters carry none.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=8, n_val=1, n_neurons=2, n_freq=4, seed=0)
        >>> model = nat4xr.models.RidgeSTRF(n_lags=3, alphas=[1.0], cv=2).fit(ds)
        >>> ax = ds.assign(strf=model.strf_).nat4.plot_strf(str(ds.neuron.values[0]))
        >>> ax.get_ylabel()
        'frequency (kHz)'
        """
        from . import plot

        filters = getattr(strf, "strf_", strf)
        if filters is None:
            if "strf" not in self._ds.data_vars:
                raise ValueError(
                    "no STRF to draw: pass strf= (a fitted RidgeSTRF or its strf_), or assign "
                    "it first: ds.assign(strf=model.strf_)"
                )
            filters = self._ds["strf"]
        if "freq_hz" not in filters.coords and "freq_hz" in self._ds.coords:
            filters = filters.assign_coords(freq_hz=self._ds["freq_hz"])
        return plot.plot_strf(filters, neuron, ax=ax)

    def to_torch(self, **kwargs: Any) -> Any:
        """A PyTorch DataLoader over this Dataset: see ``nat4xr.torch.to_torch``.

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=2)
        >>> loader = ds.nat4.sel_stims(subset="est").nat4.to_torch(batch_size=2)  # train on est
        >>> batch = next(iter(loader))
        >>> tuple(batch["responses"].shape), batch["valid_mask"].dtype
        ((2, 2, 1, 15), torch.bool)
        """
        from .torch import to_torch

        return to_torch(self._ds, **kwargs)

    # summaries -------------------------------------------------------------------------------

    def response_nbytes(self) -> dict[str, int]:
        """Bytes of ``response`` as a dense array and of the values actually recorded.

        ``"dense"`` is what ``.load()`` allocates: the whole shape, padding
        included. ``"recorded"`` counts, for each (stim, neuron) pair with
        ``coverage``, the stim's ``n_repeats`` (at most the ``repeat``
        length) times the other axes (``time``). Computed from the shape and
        the coordinates only: ``response`` is never read.

        Returns
        -------
        dict
            ``{"dense": int, "recorded": int}``; both 0 without ``response``.

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=2, p_missing=0.0)
        >>> nb = ds.nat4.response_nbytes()
        >>> nb["dense"] == 4 * 2 * 20 * 15 * 4
        True
        >>> nb["recorded"] == (3 * 1 + int(ds.n_repeats[3])) * 2 * 15 * 4
        True
        """
        ds = self._ds
        resp = ds.variables.get("response")
        if resp is None:
            return {"dense": 0, "recorded": 0}
        dense = int(resp.size) * resp.dtype.itemsize
        if "stim" not in resp.dims or "neuron" not in resp.dims:
            return {"dense": dense, "recorded": dense}
        n_stim, n_rep = resp.sizes["stim"], resp.sizes.get("repeat", 1)
        # bytes of one repeat of one (stim, neuron) pair: the other axes (time)
        per_trial = resp.dtype.itemsize * int(
            np.prod([n for d, n in resp.sizes.items() if d not in ("stim", "neuron", "repeat")])
        )
        reps = np.full(n_stim, n_rep, dtype=np.int64)
        var = ds.variables.get("n_repeats")
        if "repeat" in resp.dims and var is not None and var.dims == ("stim",):
            values = metadata_values(var)
            if values.dtype.kind in "iuf":
                values = np.nan_to_num(values.astype(np.float64), nan=n_rep)
                reps = np.clip(values, 0, n_rep).astype(np.int64)
        if "coverage" in ds.variables:
            cells = coverage_array(ds).sum(axis=1, dtype=np.int64)
        else:
            cells = np.full(n_stim, resp.sizes["neuron"], dtype=np.int64)
        return {"dense": dense, "recorded": int(reps @ cells) * per_trial}

    def _counts(self) -> dict[str, Any]:
        ds = self._ds
        out: dict[str, Any] = {
            "area": str(ds.attrs.get("area", "?")),
            "stims": ds.sizes.get("stim", 0),
            "neurons": ds.sizes.get("neuron", 0),
        }
        if "subset" in ds.variables:
            subset = metadata_values(ds.variables["subset"])
            out["est"] = int((subset == "est").sum())
            out["val"] = int((subset == "val").sum())
        if "auditory" in ds.variables:
            out["auditory"] = int(metadata_values(ds.variables["auditory"]).sum())
        for name in ("animal", "site"):
            if name in ds.variables:
                vals = metadata_values(ds.variables[name])
                out[name + "s"] = len({str(v) for v in vals if str(v)})
        if "coverage" in ds.variables:
            cov = coverage_array(ds)
            out["coverage"] = 100.0 * cov.mean() if cov.size else 0.0
        resp = ds.variables.get("response")
        if resp is None:
            out["storage"] = "no response"
            return out
        out["storage"] = selection.storage_kind(resp)
        nbytes = self.response_nbytes()
        unit = _unit(nbytes["dense"])
        out["dense"] = _in_unit(nbytes["dense"], unit)
        out["recorded"] = _in_unit(nbytes["recorded"], unit)
        # loading would allocate mostly NaN padding: say so before anyone calls .load()
        lazy = not out["storage"].startswith("loaded")
        if lazy and nbytes["dense"] >= 2 * nbytes["recorded"]:
            out["advice"] = "select before .load()"
        return out

    def summary(self) -> str:
        """A short text summary: counts of stims, neurons, animals, coverage, storage.

        The last line gives the size of ``response`` as a dense array (what
        ``.load()`` allocates) and of the values recorded (see
        :meth:`response_nbytes`), where its values are (``lazy (dask, ...)``,
        ``lazy (file-backed, read on access)`` as opened with ``chunks=None``,
        or ``loaded (in memory)``), and advises selecting first when a lazy
        ``response`` is at least half padding. Nothing is read to compute it.

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=2, p_missing=0.0)
        >>> print(ds.nat4.summary().splitlines()[0])
        <nat4 A1: 4 stims (3 est, 1 val) x 2 neurons>
        >>> print(ds.chunk().nat4.summary().splitlines()[-1].strip())
        response lazy (dask, 1 chunks): 9.60 kB dense, 2.52 kB recorded; select before .load()
        """
        c = self._counts()
        split = f" ({c['est']} est, {c['val']} val)" if "est" in c else ""
        lines = [f"<nat4 {c['area']}: {c['stims']} stims{split} x {c['neurons']} neurons>"]
        parts = []
        if "auditory" in c:
            parts.append(f"auditory {c['auditory']}")
        for key in ("animals", "sites"):
            if key in c:
                parts.append(f"{key} {c[key]}")
        if parts:
            lines.append("  " + ", ".join(parts))
        if "coverage" in c:
            lines.append(f"  coverage {c['coverage']:.1f}% of (stim, neuron) pairs")
        size = f": {c['dense']} dense, {c['recorded']} recorded" if "dense" in c else ""
        advice = f"; {c['advice']}" if "advice" in c else ""
        lines.append(f"  response {c['storage']}{size}{advice}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        c = self._counts()
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
            f"<td style='text-align:left'>{html.escape(_fmt(v))}</td></tr>"
            for k, v in c.items()
        )
        return f"<table><caption>nat4 {html.escape(c['area'])}</caption>{rows}</table>"


_UNITS = ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"))


def _unit(nbytes: int) -> tuple[float, str]:
    """The decimal unit in which ``nbytes`` reads best (B below a kilobyte)."""
    return next(((f, u) for f, u in _UNITS if nbytes >= f), (1.0, "B"))


def _in_unit(nbytes: int, unit: tuple[float, str]) -> str:
    factor, name = unit
    return f"{nbytes} B" if name == "B" else f"{nbytes / factor:.2f} {name}"


def _fmt(value: Any) -> str:
    return f"{value:.1f}%" if isinstance(value, float) else str(value)
