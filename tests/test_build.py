"""The build against the synthetic writer's ground truth, and every bad input."""

from __future__ import annotations

import io
import shutil
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

import nat4xr
from nat4xr.build import build_dataset
from nat4xr.errors import FormatError, MissingFileError, Nat4Warning
from nat4xr.filters import hanning_window
from nat4xr.synthetic import write_release

COORDS = ["subset", "n_repeats", "area", "site", "animal", "electrode", "unit", "auditory"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return write_release(root, "A1", scale="tiny", seed=0)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    return write_release(root, "PEG", scale="small", seed=7)


def build_quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        return build_dataset(*args, **kwargs)


def assert_matches_truth(ds: xr.Dataset, truth, subset: str = "all") -> None:
    expected = truth.expected_dataset(subset)
    if subset == "est":  # an est-only build has one repeat: nothing else was recorded
        expected = expected.isel(repeat=slice(0, 1))
    got = ds.load()
    published = sorted(str(c) for c in expected.coords if str(c).startswith("pub_"))
    assert published == sorted(str(c) for c in got.coords if str(c).startswith("pub_"))
    assert published  # the truth knows the per-cell table
    for name in ["response", "spectrogram", "coverage", *COORDS, *published]:
        xr.testing.assert_identical(
            got[name].reset_coords(drop=True), expected[name].reset_coords(drop=True)
        )
    assert list(got["stim"].values) == list(expected["stim"].values)
    assert list(got["neuron"].values) == list(expected["neuron"].values)


@pytest.mark.parametrize("fixture", ["tiny", "small"])
def test_build_matches_ground_truth(fixture, request):
    truth = request.getfixturevalue(fixture)
    ds = build_quiet(truth.root, truth.area)
    assert_matches_truth(ds, truth)
    assert ds.attrs["area"] == truth.area
    assert ds.attrs["pre_stim_silence"] == pytest.approx(truth.pre_stim_silence)
    # est values straight from the truth arrays, independent of expected_dataset
    n_est = len(truth.est_stims)
    np.testing.assert_array_equal(ds["response"].values[:n_est, :, 0, :], truth.est_response)
    np.testing.assert_array_equal(ds["response"].values[n_est:], truth.val_response)
    assert np.isnan(ds["response"].values[:n_est, :, 1:, :]).all()


def test_response_is_lazy_and_padding_unallocated(tiny):
    ds = build_quiet(tiny.root, tiny.area)
    resp = ds["response"].data
    assert hasattr(resp, "dask")
    # The padding is a lazy `full`, so the graph holds no array as large as the dense response.
    dense = resp.size * resp.dtype.itemsize
    held = sum(v.nbytes for v in dict(resp.__dask_graph__()).values() if isinstance(v, np.ndarray))
    assert held < dense / 2


def test_reconciliation_recovers_padded_ids_and_reports_the_rest(tiny):
    with pytest.warns(Nat4Warning, match="no validation data") as record:
        ds = build_dataset(tiny.root, tiny.area)
    message = " ".join(str(w.message) for w in record)
    for cell in tiny.traps["no_site"]:
        assert cell in message
    val = ds.nat4.sel_stims(subset="val") if hasattr(ds, "nat4") else None
    cov = ds["coverage"].values[ds["subset"].values == "val"].any(axis=0)
    has_val = dict(zip(ds["neuron"].values, cov))
    for cell in tiny.traps["padded"]:
        assert has_val[cell], f"{cell} lost its validation data"
    for cell in tiny.traps["no_site"]:
        assert not has_val[cell]
    for cell in tiny.traps["extra_site"]:
        assert cell not in has_val
    assert set(ds.attrs["val_unmatched"].strip("[]").replace('"', "").split(", ")) == set(
        tiny.traps["no_site"]
    )
    del val


@pytest.mark.parametrize("subset", ["est", "val"])
def test_subsets(tiny, subset):
    ds = build_quiet(tiny.root, tiny.area, subset=subset)
    assert_matches_truth(ds, tiny, subset)
    assert set(ds["subset"].values) == {subset}


def test_est_subset_never_opens_site_files(tiny, tmp_path):
    root = copy_release(tiny.root, tmp_path)
    (root / "A1_single_sites.zip").unlink()
    ds = build_dataset(root, "A1", subset="est")
    assert ds.sizes["repeat"] == 1
    with pytest.raises(MissingFileError, match="download=True"):
        build_dataset(root, "A1", subset="all")


def test_unpacked_folders_read_like_archives(tiny, tmp_path):
    root = copy_release(tiny.root, tmp_path)
    pop = root / "A1_NAT4_ozgf.fs100.ch18.tgz"
    deeper = root / "A1_NAT4_ozgf.fs100.ch18"
    with tarfile.open(pop) as tar:
        tar.extractall(deeper, filter="data")  # one level deeper than the archive's own folder
    pop.unlink()
    with zipfile.ZipFile(root / "A1_single_sites.zip") as zf:
        zf.extractall(root)
    (root / "A1_single_sites.zip").unlink()
    assert_matches_truth(build_quiet(root, "A1"), tiny)


def test_stdlib_gzip_fallback(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "isal", None)  # as if ISA-L were not installed
    assert_matches_truth(build_quiet(tiny.root, tiny.area), tiny)


def test_nems_normalization_uses_one_scale_for_est_and_val(tiny):
    ds = build_quiet(tiny.root, tiny.area, normalize="nems").load()
    raw = tiny.expected_dataset()
    # statistics of the population recording: est trials and the val trial means
    pop = np.concatenate([tiny.est_response, np.nanmean(tiny.val_response, axis=2)], axis=0)
    lo = np.nanmin(pop, axis=(0, 2))
    hi = np.nanmax(pop, axis=(0, 2))
    span = np.where(hi > lo, hi - lo, 1)
    expected = (raw["response"].values - lo[None, :, None, None]) / span[None, :, None, None]
    np.testing.assert_allclose(ds["response"].values, expected, rtol=1e-5, atol=1e-6)
    est = ds["response"].values[ds["subset"].values == "est"]
    assert np.nanmax(est) <= 1 + 1e-6 and np.nanmin(est) >= -1e-6
    logged = np.log((tiny.spectrogram + 0.1) / 0.1)
    slo = logged.min(axis=(0, 2))
    shi = logged.max(axis=(0, 2))
    spec = (logged - slo[None, :, None]) / np.where(shi > slo, shi - slo, 1)[None, :, None]
    spec[spec < 1e-6] = 0
    np.testing.assert_allclose(ds["spectrogram"].values, spec, rtol=1e-5, atol=1e-6)
    assert "nems" in ds.attrs["normalization"]
    np.testing.assert_allclose(ds["response_min"].values, lo)


def test_smoothing_matches_convolution(tiny):
    ds = build_quiet(tiny.root, tiny.area, smooth_ms=30.0).load()
    raw = tiny.expected_dataset()["response"].values
    taps = hanning_window(3.0)
    k = len(taps) // 2
    i, n = 0, 0
    trial = raw[i, n, 0]
    assert not np.isnan(trial).any()
    expected = np.convolve(trial, taps, mode="same")
    np.testing.assert_allclose(ds["response"].values[i, n, 0, k:-k], expected[k:-k], rtol=1e-5)
    assert np.array_equal(np.isnan(ds["response"].values), np.isnan(raw))
    assert "hanning" in ds.attrs["smoothing"]


def test_consistency_check_names_the_cell(tiny, tmp_path):
    root = copy_release(tiny.root, tmp_path)
    cell = 2
    name = tiny.cells[cell]

    def bump(data: bytes) -> bytes:
        rows = data.decode().splitlines()
        first = rows[0].split(",")
        first[cell] = "%.18e" % (float(first[cell]) + 3.0)
        rows[0] = ",".join(first)
        return ("\n".join(rows) + "\n").encode()

    rewrite_member(root / "A1_NAT4_ozgf.fs100.ch18.tgz", ".resp.csv", bump)
    with pytest.warns(Nat4Warning, match=name):
        build_dataset(root, "A1")


# -- bad input -------------------------------------------------------------------


def test_unknown_area_and_subset(tiny):
    with pytest.raises(ValueError, match="unknown area 'V1'"):
        build_dataset(tiny.root, "V1")
    with pytest.raises(ValueError, match="unknown subset 'train'"):
        build_dataset(tiny.root, "A1", subset="train")
    with pytest.raises(ValueError, match="normalize"):
        build_dataset(tiny.root, "A1", normalize="zscore")


@pytest.mark.parametrize(
    "victim", ["A1_NAT4_ozgf.fs100.ch18.tgz", "A1_pred_correlation.csv", "A1_single_sites.zip"]
)
def test_missing_file(tiny, tmp_path, victim):
    root = copy_release(tiny.root, tmp_path)
    (root / victim).unlink()
    with pytest.raises(MissingFileError, match="download=True") as err:
        build_dataset(root, "A1")
    assert victim.removesuffix(".zip") in str(err.value)


def test_csv_width_differs_from_channels(tiny, tmp_path):
    root = copy_release(tiny.root, tmp_path)
    pop = root / "A1_NAT4_ozgf.fs100.ch18.tgz"
    rewrite_member(
        pop, ".resp.csv", lambda d: b"\n".join(r.rsplit(b",", 1)[0] for r in d.splitlines()) + b"\n"
    )
    with pytest.raises(FormatError, match=r"resp\.csv.*columns but the sidecar lists"):
        build_dataset(root, "A1")


def test_ragged_csv_row(tiny, tmp_path):
    root = copy_release(tiny.root, tmp_path)
    pop = root / "A1_NAT4_ozgf.fs100.ch18.tgz"

    def ragged(d: bytes) -> bytes:
        rows = d.splitlines()
        rows[5] = rows[5].rsplit(b",", 1)[0]
        return b"\n".join(rows) + b"\n"

    rewrite_member(pop, ".resp.csv", ragged)
    with pytest.raises(FormatError, match=r"resp\.csv.*not a numeric CSV matrix"):
        build_dataset(root, "A1")


def test_non_numeric_csv(tiny, tmp_path):
    root = copy_release(tiny.root, tmp_path)
    pop = root / "A1_NAT4_ozgf.fs100.ch18.tgz"
    rewrite_member(pop, ".resp.csv", lambda d: d.replace(b"0.000000000000000000e+00", b"zero", 1))
    with pytest.raises(FormatError, match=r"resp\.csv.*not a numeric CSV matrix"):
        build_dataset(root, "A1")


def test_epochs_past_the_end(tiny, tmp_path):
    root = copy_release(tiny.root, tmp_path)
    pop = root / "A1_NAT4_ozgf.fs100.ch18.tgz"
    rewrite_member(pop, ".resp.epoch.csv", lambda d: d + b"STIM_cat999_late.wav,1000.0,1001.5\n")
    with pytest.raises(FormatError, match=r"STIM_cat999_late.wav.*past the end"):
        build_dataset(root, "A1")


def test_truncated_gzip(tiny, tmp_path):
    root = copy_release(tiny.root, tmp_path)
    pop = root / "A1_NAT4_ozgf.fs100.ch18.tgz"
    data = pop.read_bytes()
    pop.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match=r"A1_NAT4_ozgf.fs100.ch18.tgz.*truncated or corrupt"):
        build_dataset(root, "A1")


def test_truncated_gzip_stdlib_gzip(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "isal", None)
    test_truncated_gzip(tiny, tmp_path)


def test_missing_hdf5_dataset(tiny, tmp_path):
    root = copy_release(tiny.root, tmp_path)
    victim = {}

    def drop_first(site_tgz: bytes) -> bytes:
        def edit(raw: bytes) -> bytes:
            with h5py.File(io.BytesIO(raw), "r") as src:
                names = sorted(src)
                victim["chan"] = names[0]
                out = io.BytesIO()
                with h5py.File(out, "w") as dst:
                    for n in names[1:]:
                        dst[n] = src[n][()]
            return out.getvalue()

        return rewrite_tar_bytes(site_tgz, ".resp.h5", edit)

    rewrite_zip_member(root / "A1_single_sites.zip", 0, drop_first)
    with pytest.raises(FormatError, match="no spike-time dataset for channel") as err:
        build_dataset(root, "A1")
    assert victim["chan"] in str(err.value)


def test_nothing_half_built_on_error(tiny, tmp_path):
    root = copy_release(tiny.root, tmp_path)
    (root / "A1_pred_correlation.csv").write_text("cellid,sig_auditory\nX,maybe\n")
    with pytest.raises(FormatError, match="sig_auditory value 'maybe'"):
        build_dataset(root, "A1")


def test_error_types_are_nat4_errors():
    assert issubclass(FormatError, nat4xr.Nat4Error)
    assert issubclass(MissingFileError, FileNotFoundError)


# -- helpers ---------------------------------------------------------------------


def copy_release(src: Path, dst: Path) -> Path:
    root = dst / "release"
    shutil.copytree(src, root)
    return root


def rewrite_tar_bytes(data: bytes, suffix: str, edit) -> bytes:
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as src,
        tarfile.open(fileobj=out, mode="w:gz") as dst,
    ):
        hits = 0
        for member in src.getmembers():
            payload = src.extractfile(member).read() if member.isfile() else None
            if payload is not None and member.name.endswith(suffix):
                payload = edit(payload)
                member.size = len(payload)
                hits += 1
            dst.addfile(member, io.BytesIO(payload) if payload is not None else None)
    assert hits == 1, f"expected one member ending in {suffix}, found {hits}"
    return out.getvalue()


def rewrite_member(tgz: Path, suffix: str, edit) -> None:
    tgz.write_bytes(rewrite_tar_bytes(tgz.read_bytes(), suffix, edit))


def rewrite_zip_member(zpath: Path, index: int, edit) -> None:
    with zipfile.ZipFile(zpath) as zf:
        items = [(info, zf.read(info)) for info in zf.infolist()]
    tgzs = [i for i, (info, _) in enumerate(items) if info.filename.endswith(".tgz")]
    k = tgzs[index]
    items[k] = (items[k][0], edit(items[k][1]))
    with zipfile.ZipFile(zpath, "w") as zf:
        for info, payload in items:
            zf.writestr(info, payload)


# -- memory-lean pieces of the build ------------------------------------------------


def _matrix_opener(text: bytes):
    return lambda: io.BytesIO(text)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
@pytest.mark.parametrize("trailing", [True, False])
def test_csv_matrix_read_in_pieces_matches_one_parse(monkeypatch, newline, trailing):
    from nat4xr.nems import parsers

    rng = np.random.default_rng(0)
    values = rng.poisson(1.5, size=(500, 7)).astype(np.float32)
    values[rng.random(values.shape) < 0.05] = np.nan
    lines = [b",".join(b"nan" if np.isnan(v) else b"%g" % v for v in row) for row in values]
    text = newline.join(lines) + (newline if trailing else b"")
    whole = parsers.read_matrix(_matrix_opener(text), "m.csv", rows_hint=500)
    # pieces of a few lines, the reads ending anywhere in a line
    monkeypatch.setattr(parsers, "_TEXT_BYTES", 97)
    monkeypatch.setattr(parsers, "_READ_BYTES", 13)
    for hint in (500, None):
        pieces = parsers.read_matrix(_matrix_opener(text), "m.csv", rows_hint=hint)
        np.testing.assert_array_equal(pieces, values)
    np.testing.assert_array_equal(whole, values)


def test_csv_matrix_rows_past_the_hint_and_long_lines(monkeypatch):
    from nat4xr.nems import parsers

    text = b"\n".join(b"1,2,3" for _ in range(50)) + b"\n"
    with pytest.raises(FormatError, match="more than 40 rows"):
        parsers.read_matrix(_matrix_opener(text), "m.csv", rows_hint=40)
    # a line that does not fit the text buffer (here: the 1 MiB head)
    monkeypatch.setattr(parsers, "_TEXT_BYTES", 1)
    long_line = b"1,2,3\n" * (1 << 18) + b"4,5," + b"6" * (2 << 20) + b"\n"
    with pytest.raises(FormatError, match="line longer than"):
        parsers.read_matrix(_matrix_opener(long_line), "m.csv")


def test_growing_the_repeat_axis_keeps_values_and_pads_nan():
    from nat4xr.build import _pad_repeats

    block = np.arange(2 * 3 * 2 * 4, dtype=np.float32).reshape(2, 3, 2, 4)
    grown = _pad_repeats(block, 5)
    assert grown.shape == (2, 3, 5, 4)
    np.testing.assert_array_equal(grown[:, :, :2], block)
    assert np.isnan(grown[:, :, 2:]).all()
    assert _pad_repeats(block[:, :, :0], 3).shape == (2, 3, 3, 4)


def test_coverage_matches_whole_block_rule():
    from nat4xr.build import _coverage

    rng = np.random.default_rng(1)
    est = rng.random((5, 6, 4)).astype(np.float32)  # (n_est, T, N)
    est[1, :, 2] = np.nan
    est[3, :3, 0] = np.nan
    val = rng.random((3, 4, 2, 6)).astype(np.float32)  # (n_val, N, R, T)
    val[0, 1] = np.nan
    val[2, 3, 1] = np.nan
    expected = np.concatenate([~np.isnan(est).all(axis=1), ~np.isnan(val).all(axis=(2, 3))], axis=0)
    np.testing.assert_array_equal(_coverage(est, val), expected)
    empty = _coverage(est[:0], val)
    np.testing.assert_array_equal(empty, expected[5:])
