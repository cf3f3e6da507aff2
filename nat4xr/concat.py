"""Block-diagonal concatenation of nat4xr Datasets (e.g. A1 and PEG).

Each input keeps its own stims and neurons; a neuron of one input has no
data (NaN, coverage False) for the stims of another. With ``join="shared"``
a sound heard by several populations (same name, identical spectrogram)
becomes one stim that all of them cover. The result's data variables are
dask arrays over the inputs themselves: an in-memory input is sliced (never
copied) when a chunk is computed, a lazy one (dask, or a cache opened with
``chunks=None``) is read only then, and the NaN blocks off the diagonal and
the padding of shorter repeat axes are lazy fills: the dense joint array is
never allocated.
"""

from __future__ import annotations

import functools
import itertools
import json
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from .errors import Nat4Warning
from .schema import RESPONSE_DIMS, check_dataset
from .selection import axis_coords, metadata_values

__all__ = ["concat"]

_STIM_VARS_EXCLUDED = ("response",)


def _unique_names(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        new, k = name, 2
        while new in out:
            new, k = f"{name}-{k}", k + 1
        out.append(new)
    return out


def _check_compatible(datasets: Sequence[xr.Dataset], names: Sequence[str]) -> None:
    ref, ref_name = datasets[0], names[0]
    for ds, name in zip(datasets[1:], names[1:]):
        dt0, dt1 = ref.attrs.get("dt"), ds.attrs.get("dt")
        if dt0 is not None and dt1 is not None and not np.isclose(dt0, dt1):
            raise ValueError(
                f"cannot concat {ref_name!r} and {name!r}: different dt ({dt0} s vs {dt1} s); "
                "resample one of them first"
            )
        for coord, what in (("time", "time axis"), ("freq", "freq bands")):
            a, b = metadata_values(ref[coord]), metadata_values(ds[coord])
            same = a.shape == b.shape and (
                np.allclose(a, b)
                if a.dtype.kind in "fiu" and b.dtype.kind in "fiu"
                else np.array_equal(a.astype(str), b.astype(str))
            )
            if not same:
                raise ValueError(
                    f"cannot concat {ref_name!r} and {name!r}: different {what} "
                    f"({coord} has {a.size} values {a[:3].tolist()}... vs {b.size} values "
                    f"{b[:3].tolist()}...)"
                )


def _units(ds: xr.Dataset) -> str:
    """``"raw"``, or the normalization record of ``ds`` (an attribute, JSON)."""
    record = ds.attrs.get("normalization", "none")
    return "raw" if record in ("none", None, "") else str(record)


def _check_units(datasets: Sequence[xr.Dataset], names: Sequence[str]) -> None:
    """Raw and normalized inputs cannot be joined: their responses are in other units."""
    raw = [n for ds, n in zip(datasets, names) if _units(ds) == "raw"]
    if raw and len(raw) < len(datasets):
        scaled = [n for n in names if n not in raw]
        raise ValueError(
            f"cannot concat raw {raw} with normalized {scaled}: their responses are in "
            "different units; normalize every input, or none of them, before joining"
        )


def _normalization(datasets: Sequence[xr.Dataset], names: Sequence[str]) -> str:
    """The joined ``normalization`` attribute: the inputs' own record, or one per input."""
    records = [_units(ds) for ds in datasets]
    if all(r == records[0] for r in records):
        return "none" if records[0] == "raw" else records[0]
    per_input = {}
    for name, record in zip(names, records):
        try:
            per_input[name] = json.loads(record)
        except ValueError:
            per_input[name] = record
    return json.dumps({"per_source": per_input}, sort_keys=True)


def _pad_repeats(ds: xr.Dataset, n_repeat: int) -> xr.Dataset:
    """``ds`` (without ``response``) with ``n_repeat`` repeats, the new ones NaN.

    Variables without a repeat axis are kept as they are (``copy=False``).
    """
    repeats = np.arange(n_repeat, dtype=ds["repeat"].dtype)
    return ds.reindex(repeat=repeats, fill_value=np.nan, copy=False)


def _fill_value(dtype: np.dtype) -> Any:
    """Typed filler for coordinates absent from an input (keeps bool/int/str dtypes)."""
    kind = np.dtype(dtype).kind
    if kind == "b":
        return False
    if kind in "iu":
        return -1
    if kind == "f":
        return np.nan
    return ""


def _concat_coords(
    per_input: list[dict[str, np.ndarray]], sizes: list[int]
) -> dict[str, np.ndarray]:
    """Concatenate 1-D coordinate columns, filling absent ones with typed values."""
    names: list[str] = []
    for cols in per_input:
        names += [n for n in cols if n not in names]
    out = {}
    for name in names:
        present = [cols[name] for cols in per_input if name in cols]
        dtype = np.result_type(*[p.dtype for p in present])
        if dtype.kind in "OUS":
            parts = [
                cols[name].astype(str) if name in cols else np.full(n, "", dtype=str)
                for cols, n in zip(per_input, sizes)
            ]
            out[name] = np.concatenate(parts).astype(str)
            continue
        fill = _fill_value(dtype)
        parts = [
            cols[name] if name in cols else np.full(n, fill, dtype=dtype)
            for cols, n in zip(per_input, sizes)
        ]
        out[name] = np.concatenate(parts).astype(dtype)
    return out


def _columns(ds: xr.Dataset, dim: str) -> dict[str, np.ndarray]:
    return {str(name): metadata_values(ds.variables[name]) for name in axis_coords(ds, dim)}


def _prefixed(ids: list[np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
    """Prefix ``"<source>:"`` to the ids that occur in more than one input."""
    seen: dict[str, int] = {}
    for arr in ids:
        for v in set(arr.tolist()):
            seen[v] = seen.get(v, 0) + 1
    out = []
    for arr, name in zip(ids, names):
        out.append(np.array([f"{name}:{v}" if seen[v] > 1 else v for v in arr.tolist()], dtype=str))
    return out


class _Slices:
    """A non-dask variable that dask slices when a chunk is computed, copying nothing.

    ``dask.array.from_array`` copies a numpy array it is given (and
    ``Variable.chunk`` hands it the numpy array); through this wrapper a chunk
    is ``variable[key].values`` at compute time: a view of an in-memory
    variable, or a read of just that part of a lazily indexed one (a cache
    opened with ``chunks=None``).

    Examples
    --------
    >>> import xarray as xr
    >>> data = np.arange(6.0).reshape(3, 2)
    >>> part = _Slices(xr.Variable(("stim", "time"), data))[1:, :]
    >>> part.tolist(), np.shares_memory(part, data)
    ([[2.0, 3.0], [4.0, 5.0]], True)
    """

    def __init__(self, variable: xr.Variable, picked: dict[str, np.ndarray] | None = None) -> None:
        self.variable = variable
        self.picked = picked or {}  # positions along some dims, applied when read
        self.shape = _picked_shape(variable, self.picked)
        self.dtype = variable.dtype
        self.ndim = variable.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        # the variable as it is now, then the positions: a read composes them lazily
        variable = self.variable.isel(self.picked) if self.picked else self.variable
        return np.asarray(variable[key].values)


def _picked_shape(variable: xr.Variable, picked: dict[str, np.ndarray]) -> tuple[int, ...]:
    return tuple(
        len(picked[d]) if d in picked else n for d, n in zip(variable.dims, variable.shape)
    )


def _as_dask(
    variable: xr.Variable,
    sized_as: tuple[int, ...] | None = None,
    limit: int | None = None,
    picked: dict[str, np.ndarray] | None = None,
) -> Any:
    """``variable``'s data as a dask array, without copying or reading it.

    Dask data is returned as is. Anything else (numpy, or lazily indexed
    file data) becomes a dask array over the variable itself, in chunks along
    the first dimension (the others whole) of about dask's
    ``array.chunk-size`` (or ``limit`` bytes), as an array of shape
    ``sized_as`` (default: its own) would be chunked: a response padded to
    more repeats is sized as padded.

    Examples
    --------
    >>> import xarray as xr
    >>> var = xr.Variable(("stim", "time"), np.zeros((4, 3), dtype=np.float32))
    >>> lazy = _as_dask(var)
    >>> type(lazy).__name__, lazy.chunks
    ('Array', ((4,), (3,)))
    >>> _as_dask(var, sized_as=(4, 2**25)).chunks  # 4 rows of 128 MiB: one row per chunk
    ((1, 1, 1, 1), (3,))
    """
    import dask.array as da
    from dask.array.core import normalize_chunks

    if variable.chunks is not None:
        return variable.data
    shape = _picked_shape(variable, picked or {})
    chunks: Any = shape
    if all(shape):
        sized = sized_as or shape
        auto = normalize_chunks(("auto", *sized[1:]), sized, limit=limit, dtype=variable.dtype)
        chunks = (auto[0], *shape[1:])
    return da.from_array(
        _Slices(variable, picked),
        chunks=chunks,
        name=False,  # hashing would read every value of a lazily indexed variable
        fancy=False,  # keep dask's fancy indexing off xarray's orthogonal indexing
        meta=np.empty((0,) * variable.ndim, dtype=variable.dtype),
    )


def _repeat_bounds(responses: list[Any], n_repeat: int) -> list[int]:
    """Chunk boundaries along ``repeat`` shared by every padded response.

    Each input's own chunk boundaries, its repeat count (where its padding
    starts) and ``n_repeat``: cutting every input there lets the blocks be
    joined without rechunking.

    Examples
    --------
    >>> import dask.array as da
    >>> full = da.zeros((2, 3, 20, 4), chunks=(1, 3, 20, 4))
    >>> est_only = da.zeros((2, 3, 1, 4), chunks=(1, 3, 1, 4))
    >>> _repeat_bounds([full, est_only], 20)
    [0, 1, 20]
    """
    bounds = {0, n_repeat}
    for resp in responses:
        bounds.update(np.cumsum(resp.chunks[2]).tolist())
    return sorted(int(b) for b in bounds)


def _padded(resp: Any, bounds: list[int]) -> Any:
    """``resp`` cut at ``bounds`` along ``repeat``, NaN (a lazy fill) past its own repeats.

    The fill is never merged into ``resp``'s chunks: a selection of the result
    slices the pieces instead of building whole padded chunks.
    """
    import dask.array as da

    pieces = []
    for lo, hi in itertools.pairwise(bounds):
        if hi <= resp.shape[2]:
            pieces.append(resp[:, :, lo:hi])
        else:
            shape = (resp.shape[0], resp.shape[1], hi - lo, resp.shape[3])
            chunks = (resp.chunks[0], resp.chunks[1], hi - lo, resp.chunks[3])
            pieces.append(da.full(shape, np.nan, dtype=resp.dtype, chunks=chunks))
    return pieces[0] if len(pieces) == 1 else da.concatenate(pieces, axis=2)


def _runs(pos: np.ndarray, template: np.ndarray) -> list[tuple[int, int]]:
    """Split union rows into runs: same template chunk, and either all absent or consecutive."""
    if len(pos) == 0:
        return []
    brk = np.flatnonzero(
        (template[1:] != template[:-1])
        | ((pos[1:] < 0) != (pos[:-1] < 0))
        | ((pos[1:] >= 0) & (pos[1:] != pos[:-1] + 1))
    )
    starts = np.concatenate([[0], brk + 1])
    ends = np.concatenate([brk + 1, [len(pos)]])
    return list(zip(starts.tolist(), ends.tolist()))


def _response(responses: list[Any], rows: list[np.ndarray], template: np.ndarray) -> Any:
    """Union response: column block i holds input i's cells, NaN where it has no row.

    ``responses`` are dask arrays with the same number of repeats.
    """
    import dask.array as da

    columns = []
    for resp, pos in zip(responses, rows):
        _, n, r, t = resp.shape
        pieces = []
        for start, end in _runs(pos, template):
            if pos[start] < 0:
                shape = (end - start, n, r, t)
                chunks = (end - start, *resp.chunks[1:])  # as the input's: no rechunking
                pieces.append(da.full(shape, np.nan, dtype=resp.dtype, chunks=chunks))
            else:
                pieces.append(resp[int(pos[start]) : int(pos[end - 1]) + 1])
        columns.append(da.concatenate(pieces, axis=0) if pieces else resp[:0])
    return da.concatenate(columns, axis=1)


def _assembled(responses: list[Any], rows: list[np.ndarray], template: np.ndarray) -> Any:
    """As :func:`_response`, with each stretch of NaN rows one fill of several chunks.

    The chunks are the runs of ``template`` (so they line up across
    columns); one ``dask.array.full`` per stretch instead of one per run,
    which is what building the array costs.
    """
    import dask.array as da

    columns = []
    for resp, pos in zip(responses, rows):
        _, n, r, t = resp.shape
        pieces = []
        runs = _runs(pos, template)
        i = 0
        while i < len(runs):
            start, end = runs[i]
            if pos[start] >= 0:
                pieces.append(resp[int(pos[start]) : int(pos[end - 1]) + 1])
                i += 1
                continue
            sizes = []
            while i < len(runs) and pos[runs[i][0]] < 0:
                sizes.append(runs[i][1] - runs[i][0])
                i += 1
            chunks = (tuple(sizes), *resp.chunks[1:])
            pieces.append(da.full((sum(sizes), n, r, t), np.nan, dtype=resp.dtype, chunks=chunks))
        columns.append(da.concatenate(pieces, axis=0) if pieces else resp[:0])
    return da.concatenate(columns, axis=1)


def _gather_rows(arrays: list[Any], owner: np.ndarray, pos: np.ndarray) -> Any:
    """Rows of the union taken from their owning input (dask arrays, sliced, never computed)."""
    import dask.array as da

    pieces = []
    if len(owner):
        brk = np.flatnonzero((owner[1:] != owner[:-1]) | (pos[1:] != pos[:-1] + 1))
        starts = np.concatenate([[0], brk + 1])
        ends = np.concatenate([brk + 1, [len(owner)]])
        for s, e in zip(starts, ends):
            src = arrays[owner[s]]
            pieces.append(src[int(pos[s]) : int(pos[e - 1]) + 1])
    return da.concatenate(pieces or [arrays[0][:0]], axis=0)


def _stim_union(
    datasets: Sequence[xr.Dataset], names: Sequence[str], join: str
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
    """Union stim ids, owner/position of each union row, and each input's row positions."""
    ids = [metadata_values(ds["stim"]).astype(str) for ds in datasets]
    sizes = [len(i) for i in ids]
    owner = np.concatenate([np.full(n, k) for k, n in enumerate(sizes)]).astype(np.intp)
    pos = np.concatenate([np.arange(n) for n in sizes]).astype(np.intp)
    if join == "block":
        offsets = np.cumsum([0, *sizes])
        rows = []
        for k, n in enumerate(sizes):
            p = np.full(offsets[-1], -1, dtype=np.intp)
            p[offsets[k] : offsets[k + 1]] = np.arange(n)
            rows.append(p)
        return _prefixed(ids, names), owner, pos, rows, np.ones(len(owner), dtype=bool)
    # join == "shared": a name seen before with an identical spectrogram is the same stim
    specs = [metadata_values(ds["spectrogram"]) for ds in datasets]
    first: dict[str, int] = {}  # id -> union row
    keep = np.ones(len(owner), dtype=bool)
    merged = np.full(len(owner), -1, dtype=np.intp)  # union row each input row maps to
    clash: set[str] = set()
    row = 0
    for k, arr in enumerate(ids):
        for j, name in enumerate(arr.tolist()):
            g = row + j
            if name in first:
                u = first[name]
                if np.array_equal(specs[owner[u]][pos[u]], specs[k][j], equal_nan=True):
                    keep[g] = False
                    merged[g] = u
                    continue
                clash.add(name)
            else:
                first[name] = g
            merged[g] = g
        row += len(arr)
    kept = np.flatnonzero(keep)
    renumber = np.full(len(owner), -1, dtype=np.intp)
    renumber[kept] = np.arange(len(kept))
    union_of = renumber[merged]
    rows = []
    start = 0
    for n in sizes:
        p = np.full(len(kept), -1, dtype=np.intp)
        p[union_of[start : start + n]] = np.arange(n)
        rows.append(p)
        start += n
    # ids: prefix only the names kept more than once (same name, different sound)
    union_ids = np.concatenate(ids)[kept]
    union_owner = owner[kept]
    labelled = np.array(
        [f"{names[o]}:{v}" if v in clash else v for v, o in zip(union_ids.tolist(), union_owner)],
        dtype=str,
    )
    return [labelled], union_owner, pos[kept], rows, keep


def concat(
    datasets: Sequence[xr.Dataset], names: Sequence[str] | None = None, join: str = "block"
) -> xr.Dataset:
    """Concatenate nat4xr Datasets block-diagonally along ``stim`` and ``neuron``.

    Parameters
    ----------
    datasets : sequence of xarray.Dataset
        nat4xr Datasets with the same ``dt``, time axis and freq bands. Inputs
        with fewer repeats (an est-only build has one) are padded with NaN.
    names : sequence of str, optional
        One name per input, stored in the ``stim_source`` and
        ``neuron_source`` coordinates (a stim shared by several inputs gets
        ``"A1+PEG"``) and used to prefix clashing ids (``"<source>:<id>"``).
        Defaults to each Dataset's ``area`` attribute, made unique. The
        accessor accepts ``source=`` for either: ``joint.nat4.sel_neurons(source="PEG")``.
    join : {'block', 'shared'}
        ``'block'``: every stim belongs to one input. ``'shared'``: stims with
        the same name and identical spectrogram are merged into one stim that
        every input holding it covers; same name but a different spectrogram
        keeps both, prefixed.

    Returns
    -------
    xarray.Dataset
        Data variables are dask arrays over the inputs, whatever backs them:
        nothing is copied or read until computed. ``response`` has NaN off the
        blocks (never allocated densely); an input that is not dask-backed is
        cut into stim chunks of dask's ``array.chunk-size``. ``coverage`` is
        block-diagonal; coordinates missing from an
        input are filled with ``""``, ``-1``, ``False`` or NaN (by dtype: str,
        int, bool, float; e.g. a ``pub_*`` column only one area's table has)
        so their dtypes survive a netCDF round trip. Attributes common to all inputs are kept;
        ``sources`` (JSON list) and ``source_attrs`` (JSON, the attributes
        that differ) record the inputs.

    Raises
    ------
    ValueError
        When the inputs are not compatible (the message says what differs).

    Examples
    --------
    >>> import nat4xr
    >>> a1 = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=4, area="A1")
    >>> peg = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=2, area="PEG", seed=1)
    >>> joint = concat([a1, peg])
    >>> dict(joint.sizes)["stim"], dict(joint.sizes)["neuron"]
    (8, 6)
    >>> str(joint["stim"].values[0])
    'A1:STIM_cat000_synthetic.wav'
    >>> shared = concat([a1, a1.assign_attrs(area="A1b")], join="shared")
    >>> shared.sizes["stim"]
    4
    """
    datasets = list(datasets)
    if not datasets:
        raise ValueError("concat needs at least one Dataset")
    if join not in ("block", "shared"):
        raise ValueError(f"join must be 'block' or 'shared', got {join!r}")
    for i, ds in enumerate(datasets):
        if not isinstance(ds, xr.Dataset):
            raise TypeError(f"concat input #{i} is a {type(ds).__name__}, not an xarray.Dataset")
        check_dataset(ds)
    if names is None:
        names = [str(ds.attrs.get("area", f"ds{i}")) for i, ds in enumerate(datasets)]
    elif len(names) != len(datasets):
        raise ValueError(f"{len(names)} names for {len(datasets)} datasets")
    names = _unique_names([str(n) for n in names])
    _check_compatible(datasets, names)
    _check_units(datasets, names)
    # every response as dask over the input itself (nothing copied or read); an est-only
    # build has one repeat: pad every input (lazily, with NaN) to the longest
    n_repeat = max(ds.sizes["repeat"] for ds in datasets)
    responses, parts = [], []
    for ds in datasets:
        # the input as it is now: loading or replacing its data in place later changes
        # neither the result nor its selections (a shallow copy reads nothing)
        var = ds.variables["response"].copy(deep=False)
        responses.append(_as_dask(var, sized_as=(*var.shape[:2], n_repeat, *var.shape[3:])))
        parts.append(_Part.of(var, responses[-1]))
    bounds = _repeat_bounds(responses, n_repeat)
    responses = [_padded(resp, bounds) for resp in responses]
    response_attrs = dict(datasets[0]["response"].attrs)
    datasets = [ds.drop_vars("response") for ds in datasets]
    datasets = [
        ds if ds.sizes["repeat"] == n_repeat else _pad_repeats(ds, n_repeat) for ds in datasets
    ]

    # stims
    stim_ids, owner, pos, rows, _ = _stim_union(datasets, names, join)
    stim_ids = np.concatenate(stim_ids)
    stim_cols = _concat_coords(
        [_columns(ds, "stim") for ds in datasets], [ds.sizes["stim"] for ds in datasets]
    )
    if join == "shared":
        flat_rows = _kept_rows(owner, pos, datasets)
        stim_cols = {k: v[flat_rows] for k, v in stim_cols.items()}
        if "n_repeats" in stim_cols:
            reps = np.full(len(stim_ids), -1, dtype=np.int64)
            for ds, p in zip(datasets, rows):
                r = metadata_values(ds["n_repeats"]).astype(np.int64)
                hit = p >= 0
                reps[hit] = np.maximum(reps[hit], r[p[hit]])
            stim_cols["n_repeats"] = reps
    source_stim = np.array(
        ["+".join(names[k] for k, p in enumerate(rows) if p[u] >= 0) for u in range(len(stim_ids))],
        dtype=str,
    )
    if "stim_source" in stim_cols:  # an input that is itself a concat keeps its own sources
        old = stim_cols["stim_source"]
        source_stim = np.where(old != "", old, source_stim).astype(str)
    stim_cols["stim_source"] = source_stim

    # neurons
    neuron_ids = np.concatenate(
        _prefixed([metadata_values(ds["neuron"]).astype(str) for ds in datasets], names)
    )
    sizes_n = [ds.sizes["neuron"] for ds in datasets]
    neuron_cols = _concat_coords([_columns(ds, "neuron") for ds in datasets], sizes_n)
    source_neuron = np.concatenate(
        [np.full(n, name, dtype=object) for n, name in zip(sizes_n, names)]
    ).astype(str)
    if "neuron_source" in neuron_cols:
        old = neuron_cols["neuron_source"]
        source_neuron = np.where(old != "", old, source_neuron).astype(str)
    neuron_cols["neuron_source"] = source_neuron

    # coverage: each input's block, placed at its rows and columns
    coverage = np.zeros((len(stim_ids), len(neuron_ids)), dtype=bool)
    col = 0
    for ds, p, n in zip(datasets, rows, sizes_n):
        cov = metadata_values(ds["coverage"].transpose("stim", "neuron")).astype(bool)
        hit = np.flatnonzero(p >= 0)
        coverage[hit, col : col + n] = cov[p[hit]]
        col += n

    # one template chunk id per union row: its owner's chunk, so NaN blocks line up
    template = np.empty(len(stim_ids), dtype=np.int64)
    for k, resp in enumerate(responses):
        bounds = np.cumsum(resp.chunks[0])
        mine = owner == k
        template[mine] = k * 10**9 + np.searchsorted(bounds, pos[mine], side="right")
    response = _response(responses, rows, template)
    _remember(response, _Joint(parts, rows, owner))

    data_vars: dict[Hashable, Any] = {"response": (RESPONSE_DIMS, response, response_attrs)}
    stim_vars = {
        name
        for name, var in datasets[0].data_vars.items()
        if var.dims and var.dims[0] == "stim" and "neuron" not in var.dims
    }
    for name in sorted(map(str, stim_vars)):
        dims = datasets[0][name].dims
        if not all(name in ds.data_vars and ds[name].dims == dims for ds in datasets):
            warnings.warn(
                f"concat: data variable {name!r} is not in every input with the same dims; dropped",
                Nat4Warning,
                stacklevel=2,
            )
            continue
        arrays = [_as_dask(ds.variables[name]) for ds in datasets]
        data_vars[name] = (
            datasets[0][name].dims,
            _gather_rows(arrays, owner, pos),
            dict(datasets[0][name].attrs),
        )
    others = [str(n) for ds in datasets for n in ds.data_vars if n not in stim_vars]
    if others:
        warnings.warn(
            f"concat: data variables {sorted(set(others))} are neither per stim "
            "nor the response; dropped",
            Nat4Warning,
            stacklevel=2,
        )

    first = datasets[0]
    coords: dict[Hashable, Any] = {
        "stim": ("stim", stim_ids),
        "neuron": ("neuron", neuron_ids),
        "repeat": first["repeat"].variable.copy(deep=False),
        "time": first["time"].variable.copy(deep=False),
        "freq": first["freq"].variable.copy(deep=False),
        "coverage": (("stim", "neuron"), coverage, dict(first["coverage"].attrs)),
    }
    for name, values in stim_cols.items():
        coords[name] = ("stim", values)
    for name, values in neuron_cols.items():
        coords[name] = ("neuron", values)
    out = xr.Dataset(data_vars, coords=coords)
    out.attrs = _attrs(datasets, names, join)
    return out


# -- selections of a concatenation, pushed down into its inputs ------------------------------------


@dataclass(frozen=True, eq=False)
class _Part:
    """One input's ``response`` in a concatenation: its variable, dask array and placement."""

    variable: xr.Variable
    data: Any
    placed: Any  # a provenance.Placement when the values are a cache file's, else None
    name: str | None = None  # ``data``'s dask name when the concatenation was made
    picked: dict[str, np.ndarray] | None = None  # positions in ``variable`` ``data`` reads

    @property
    def shape(self) -> tuple[int, ...]:
        return _picked_shape(self.variable, self.picked or {})

    @classmethod
    def of(cls, var: xr.Variable, data: Any) -> _Part:
        from . import provenance

        placed = None
        if var.chunks is not None:
            placed = provenance.placement(var, var.encoding.get("nat4xr_source"))
        return cls(var, data, placed, getattr(data, "name", None))

    def edited(self) -> bool:
        """True when ``data`` was assigned into in place since (dask renames it then)."""
        return getattr(self.data, "name", None) != self.name


@dataclass(frozen=True, eq=False)
class _Joint:
    """How a concatenated ``response`` is made of its inputs.

    Entry ``[s, n, r, t]`` is input ``k``'s ``[rows[k][s], n - offset_k, r, t]``
    for the neurons of input ``k`` (in input order, ``offset_k`` the neurons
    of the inputs before it) where ``rows[k][s] >= 0`` and ``r`` is within
    its repeats, NaN everywhere else; ``owner[s]`` is the input whose chunks
    row ``s`` follows.
    """

    parts: list[_Part]
    rows: list[np.ndarray]
    owner: np.ndarray


#: Bytes at most in one NaN block of a selection of a concatenation.
_FILL_BYTES = 32 << 20


def _remember(response: Any, joint: _Joint) -> None:
    """Let selections of ``response`` be pushed down into its inputs (:func:`_select_joint`)."""
    from . import provenance

    if any(part.data is response for part in joint.parts):
        # one input, whole (dask returns it as is): its own selections apply, and a
        # record holding the array itself would never be forgotten
        return
    provenance.record_selector(response, functools.partial(_select_joint, joint))


def _select_joint(
    joint: _Joint, var: xr.Variable, indexers: dict[Hashable, slice | np.ndarray]
) -> xr.Variable | None:
    """``var.isel(indexers)`` for a ``response`` made by :func:`concat`, built from its inputs.

    Selecting the concatenated array through dask would compute whole chunks
    of the inputs (every cell and repeat) and copy the kept entries out of
    them. The selection is instead pushed down: each input is selected at
    its own kept stims, cells and repeats (read from the file when its
    values are a cache file's, :func:`nat4xr.selection.selected_part`), and
    the block-diagonal array is assembled again from those parts, with NaN
    blocks no larger than the parts' chunks. The same entries by the rule of
    :class:`_Joint`. None (left to indexing) for selections other than
    sorted positions along ``stim`` and ``neuron`` and a non-empty repeat
    prefix. Recorded for the result by :func:`_remember`, looked up by
    :func:`nat4xr.selection.select` through :mod:`nat4xr.provenance`.
    """
    import dask.array as da

    from .cachefile.reading import SELECTION_CHUNK_BYTES
    from .selection import not_read_yet, selected_part

    if tuple(var.dims) != RESPONSE_DIMS or set(indexers) - {*RESPONSE_DIMS[:3]}:
        return None
    n_stim, n_neuron, n_repeat, _ = var.shape
    stim = np.arange(n_stim)[indexers.get("stim", slice(None))]
    neuron = np.arange(n_neuron)[indexers.get("neuron", slice(None))]
    repeat = np.arange(n_repeat)[indexers.get("repeat", slice(None))]
    if (
        len(repeat) == 0
        or len(neuron) == 0
        or not np.array_equal(repeat, np.arange(len(repeat)))
        or np.any(np.diff(stim) <= 0)
        or np.any(np.diff(neuron) <= 0)
    ):
        return None
    if any(part.edited() for part in joint.parts):
        return None  # the concatenation holds the values from before: indexing reads those
    offsets = np.cumsum([0, *(p.shape[1] for p in joint.parts)])
    parts, rows, kept = [], [], []
    for k, part in enumerate(joint.parts):
        cells = neuron[(neuron >= offsets[k]) & (neuron < offsets[k + 1])] - offsets[k]
        if len(cells) == 0:
            continue  # none of its neurons: no columns
        old = joint.rows[k][stim]
        used = np.unique(old[old >= 0])
        reps = min(len(repeat), part.shape[2])
        picked = {"stim": used, "neuron": cells, "repeat": slice(0, reps)}
        new = None if part.placed is None else selected_part(part.variable, part.placed, picked)
        if new is not None:
            from . import provenance

            parts.append(_Part(new, new.data, provenance.placement(new), new.data.name))
        elif part.variable.chunks is None and not_read_yet(part.variable):
            # a file's values read on access: the kept positions composed with the
            # part's, read from the input as it is when computed (as the whole
            # concatenation reads it), just those entries
            base = part.picked or {}
            composed = {
                dim: base[dim][rel] if dim in base else rel
                for dim, rel in (("stim", used), ("neuron", cells), ("repeat", np.arange(reps)))
            }
            data = _as_dask(part.variable, limit=SELECTION_CHUNK_BYTES, picked=composed)
            parts.append(_Part(part.variable, data, None, data.name, composed))
        else:
            data = part.data[used][:, cells][:, :, :reps]
            parts.append(_Part(xr.Variable(part.variable.dims, data), data, None, data.name))
        rows.append(np.where(old >= 0, np.searchsorted(used, np.maximum(old, 0)), -1))
        kept.append(k)
    if not parts:
        return None
    # each row follows the chunks of its owner's part (else of the first part holding it)
    holder = np.full(len(stim), -1, dtype=np.intp)
    for i in reversed(range(len(parts))):
        holder[rows[i] >= 0] = i
    for i, k in enumerate(kept):
        holder[joint.owner[stim] == k] = i
    responses = [p.data for p in parts]
    bounds = _repeat_bounds(responses, len(repeat))
    padded = [_padded(resp, bounds) for resp in responses]
    template = np.full(len(stim), -1, dtype=np.int64)
    for i, resp in enumerate(padded):
        mine = holder == i
        chunk_ends = np.cumsum(resp.chunks[0])
        template[mine] = i * 10**6 + np.searchsorted(chunk_ends, rows[i][mine], side="right")
    # and NaN blocks hold at most a part's chunk of the widest part's values
    row_bytes = var.dtype.itemsize * max(p.shape[1] for p in parts) * len(repeat)
    cap = max(1, _FILL_BYTES // max(1, row_bytes * var.shape[3]))
    template = template * 10**6 + np.arange(len(stim)) // cap
    response = _assembled(padded, rows, template)
    if not isinstance(response, da.Array):
        return None
    _remember(response, _Joint(parts, rows, holder.clip(0)))
    return xr.Variable(var.dims, response, var.attrs, var.encoding)


def _kept_rows(owner: np.ndarray, pos: np.ndarray, datasets: Sequence[xr.Dataset]) -> np.ndarray:
    """Positions of the union rows in the flat (all inputs) stim order."""
    offsets = np.cumsum([0, *[ds.sizes["stim"] for ds in datasets]])
    return offsets[owner] + pos


def _attrs(datasets: Sequence[xr.Dataset], names: Sequence[str], join: str) -> dict[str, Any]:
    common = dict(datasets[0].attrs)
    for ds in datasets[1:]:
        common = {k: v for k, v in common.items() if k in ds.attrs and _same(ds.attrs[k], v)}
    differing = {
        name: {k: v for k, v in ds.attrs.items() if k not in common}
        for ds, name in zip(datasets, names)
    }
    # kept whatever it holds: a normalized input must never read as raw
    common["normalization"] = _normalization(datasets, names)
    common["sources"] = json.dumps(list(names))
    common["source_attrs"] = json.dumps(differing, sort_keys=True, default=_jsonable)
    common["concat_join"] = join
    if "area" not in common:
        common["area"] = "+".join(names)
    return common


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(np.all(np.asarray(a) == np.asarray(b)))
    except (TypeError, ValueError):
        return False


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
