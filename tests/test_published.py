"""The release's per-cell table as ``pub_*`` neuron coordinates: build, cache, selection, concat."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import nat4xr
from nat4xr.build import build_dataset
from nat4xr.errors import FormatError, Nat4Warning
from nat4xr.synthetic import write_release

# every tiny release has a cell without site data, by design
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*have no validation data:nat4xr.errors.Nat4Warning"
)

KEY_RE = re.compile(r"([A-Za-z]{3}\d+[A-Za-z]?)-(\d+)-(\d+)")
PRED = "{area}_pred_correlation.csv"


def key(cell: str):
    m = KEY_RE.fullmatch(cell)
    return (m[1], int(m[2]), int(m[3])) if m else cell


def quiet_build(root: Path, area: str = "A1", **kwargs) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)  # the synthetic release's traps
        return build_dataset(root, area, **kwargs)


def release_copy(src: Path, dst: Path, area: str = "A1", table: str | None = None) -> Path:
    root = dst / f"release-{area}"
    shutil.copytree(src, root)
    if table is not None:
        (root / PRED.format(area=area)).write_text(table)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("tiny"), "A1", scale="tiny", seed=0)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("small"), "A1", scale="small", seed=3)


@pytest.fixture(scope="module")
def peg(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("peg"), "PEG", scale="tiny", seed=5)


def unusual_table(cells: list[str]) -> tuple[str, dict[str, dict[str, object]]]:
    """A table with an index column, odd names and types; the last two cells left out.

    Returns the CSV text and, per cell, the values the build must give.
    """
    kept = cells[:-2]
    lines = [",cellid,r_test,sig_auditory,gain,flag,note,noise floor,r-test,count01,all_empty"]
    expected: dict[str, dict[str, object]] = {}
    for i, cell in enumerate(kept):
        flag = ["TRUE", "false", "1", "0", "True", ""][i % 6]
        note = ["", "good", "ok, noisy", "é"][i % 4]
        gain = "" if i == 1 else str(i + 1)  # ints with one gap
        count = str(i % 2)
        note_csv = f'"{note}"' if "," in note else note
        lines.append(
            f"{i},{cell},{0.125 * i},{'True' if i % 3 else 'False'},{gain},{flag},{note_csv},"
            f"{i / 8},{-0.5 * i},{count},"
        )
        expected[cell] = {
            "pub_r_test": 0.125 * i,
            "pub_sig_auditory": bool(i % 3),
            "pub_gain": np.nan if i == 1 else float(i + 1),
            "pub_flag": flag in ("TRUE", "1", "True"),
            "pub_note": note,
            "pub_noise_floor": i / 8,
            "pub_r_test_2": -0.5 * i,
            "pub_count01": float(i % 2),
            "pub_all_empty": np.nan,
        }
    for cell in cells[-2:]:
        expected[cell] = {
            "pub_r_test": np.nan,
            "pub_sig_auditory": False,
            "pub_gain": np.nan,
            "pub_flag": False,
            "pub_note": "",
            "pub_noise_floor": np.nan,
            "pub_r_test_2": np.nan,
            "pub_count01": np.nan,
            "pub_all_empty": np.nan,
        }
    return "\n".join(lines) + "\n", expected


UNUSUAL_DTYPES = {
    "pub_r_test": np.float64,
    "pub_sig_auditory": np.bool_,
    "pub_gain": np.float64,
    "pub_flag": np.bool_,
    "pub_note": np.str_,
    "pub_noise_floor": np.float64,
    "pub_r_test_2": np.float64,
    "pub_count01": np.float64,
    "pub_all_empty": np.float64,
}


def assert_column(ds: xr.Dataset, name: str, want: dict[str, object]) -> None:
    """``ds[name]`` equals ``want`` (cell -> value) cell by cell, NaN equal to NaN."""
    got = dict(zip(ds["neuron"].values.tolist(), ds[name].values.tolist()))
    assert set(want) <= set(got), name
    for cell, value in want.items():
        if isinstance(value, float) and np.isnan(value):
            assert np.isnan(got[cell]), (name, cell, got[cell])
        else:
            assert got[cell] == value and type(got[cell]) is type(value), (name, cell, got[cell])


# -- the build --------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny", "small"])
def test_pub_columns_equal_the_written_table(fixture, request):
    rel = request.getfixturevalue(fixture)
    ds = quiet_build(rel.root, rel.area)
    table = pd.read_csv(rel.files["pred_csv"])
    cells = ds["neuron"].values.tolist()
    by_key = {key(c): c for c in cells}
    respelled = [c for c in table["cellid"] if c not in cells]
    assert respelled, "the writer spells some cells as their site file does"
    assert all(key(c) in by_key for c in respelled)
    table.index = [c if c in cells else by_key[key(c)] for c in table["cellid"]]
    assert sorted(table.index) == sorted(cells)

    pub = sorted(str(c) for c in ds.coords if str(c).startswith("pub_"))
    assert pub == sorted(f"pub_{c}" for c in table.columns if c != "cellid")
    for column in table.columns.drop("cellid"):
        var = ds[f"pub_{column}"]
        assert var.dims == ("neuron",)
        assert var.dtype == (bool if column == "sig_auditory" else np.float64), column
        np.testing.assert_array_equal(var.values, table.loc[cells, column].to_numpy(), column)
    # the auditory flag follows the same reconciliation
    np.testing.assert_array_equal(ds["auditory"].values, ds["pub_sig_auditory"].values)
    for cell in (by_key[key(c)] for c in respelled):
        assert ds["auditory"].sel(neuron=cell).item() == bool(table.loc[cell, "sig_auditory"])


def test_respelled_row_lands_on_its_cell_without_a_warning(tiny, tmp_path):
    text = Path(tiny.files["pred_csv"]).read_text().splitlines()
    written = {line.split(",")[0] for line in text[1:]}
    cell = next(c for c in tiny.cells if c in written and isinstance(key(c), tuple))
    site, elec, unit = key(cell)
    respelled = f"{site}-{elec:04d}-{unit}"
    assert respelled != cell
    rows = [line for line in text[1:] if not line.startswith(f"{cell},")]
    rows.append(f"{respelled},0.5,0.02,0.05,0.75,True")
    rows.sort()
    root = release_copy(tiny.root, tmp_path, table="\n".join([text[0], *rows]) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = build_dataset(root, "A1")
    assert not any("not in the table" in str(w.message) for w in caught)
    row = ds.sel(neuron=cell)
    assert row["pub_r_test"].item() == 0.5 and row["pub_r_ceiling"].item() == 0.75
    assert row["auditory"].item() is True and row["pub_sig_auditory"].item() is True


def test_unusual_columns_types_names_and_absent_cells(tiny, tmp_path):
    text, expected = unusual_table(tiny.cells)
    root = release_copy(tiny.root, tmp_path, table=text)
    with pytest.warns(Nat4Warning, match="not in the table") as record:
        ds = build_dataset(root, "A1")
    message = " ".join(str(w.message) for w in record)
    assert tiny.cells[-1] in message and tiny.cells[-2] in message
    pub = [str(c) for c in ds.coords if str(c).startswith("pub_")]
    assert pub == list(UNUSUAL_DTYPES)  # table order; no cellid, no index column
    for name, dtype in UNUSUAL_DTYPES.items():
        assert ds[name].dtype.type is dtype, (name, ds[name].dtype)
        assert_column(ds, name, {c: v[name] for c, v in expected.items()})
    nat4xr.check_dataset(ds)
    # the auditory flag: from the table, False where the cell is absent
    np.testing.assert_array_equal(ds["auditory"].values, ds["pub_sig_auditory"].values)
    assert not ds["auditory"].sel(neuron=tiny.cells[-2:]).any()


def test_bool_spellings_and_numbers_that_look_like_flags(tiny, tmp_path):
    cells = tiny.cells
    lines = ["cellid,sig_auditory,words,ones_zeros,mixed_text"]
    for i, cell in enumerate(cells):
        words = ["true", "FALSE", "False", "1", "0"][i % 5]
        mixed = ["true", "maybe"][i % 2]
        lines.append(f"{cell},{['1', '0', 'true', 'FALSE', '1.0'][i % 5]},{words},{i % 2},{mixed}")
    root = release_copy(tiny.root, tmp_path, table="\n".join(lines) + "\n")
    ds = quiet_build(root)
    flags = [True, False, True, False, True]
    assert ds["pub_sig_auditory"].dtype == bool and ds["pub_words"].dtype == bool
    assert ds["pub_ones_zeros"].dtype == np.float64
    assert ds["pub_mixed_text"].dtype.kind == "U"
    for i, cell in enumerate(cells):
        row = ds.sel(neuron=cell)
        assert row["pub_sig_auditory"].item() is flags[i % 5]
        assert row["auditory"].item() is flags[i % 5]
        assert row["pub_words"].item() is [True, False, False, True, False][i % 5]
        assert row["pub_ones_zeros"].item() == float(i % 2)
        assert row["pub_mixed_text"].item() == ["true", "maybe"][i % 2]


def test_names_are_sanitised_predictably(tiny, tmp_path):
    header = ["cellid", "sig_auditory", " r.test ", "r-test", "r test", "1st", "naïve", "a b"]
    lines = [",".join(header)]
    for i, cell in enumerate(tiny.cells):
        lines.append(f"{cell},True,{i},{i + 10},{i + 20},{i + 30},{i + 40},{i + 50}")
    root = release_copy(tiny.root, tmp_path, table="\n".join(lines) + "\n")
    ds = quiet_build(root)
    pub = [str(c) for c in ds.coords if str(c).startswith("pub_")]
    assert pub == [
        "pub_sig_auditory", "pub_r_test", "pub_r_test_2", "pub_r_test_3", "pub_1st",
        "pub_na_ve", "pub_a_b",
    ]  # fmt: skip
    first = ds.sel(neuron=tiny.cells[0])
    assert [first[n].item() for n in pub[1:]] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    table = ds.nat4.published()
    assert list(table.columns) == [n[len("pub_") :] for n in pub]


def test_duplicate_cellid_is_a_format_error_naming_file_and_id(tiny, tmp_path):
    text = Path(tiny.files["pred_csv"]).read_text().splitlines()
    victim = text[3]
    root = release_copy(tiny.root, tmp_path, table="\n".join([*text, victim]) + "\n")
    cell = victim.split(",")[0]
    with pytest.raises(FormatError, match=re.escape(cell)) as err:
        build_dataset(root, "A1")
    assert str(root / "A1_pred_correlation.csv") in str(err.value)
    assert "2 rows" in str(err.value)


def test_missing_sig_auditory_value_is_still_an_error(tiny, tmp_path):
    text = Path(tiny.files["pred_csv"]).read_text().splitlines()
    fields = text[2].split(",")
    fields[-1] = ""
    text[2] = ",".join(fields)
    root = release_copy(tiny.root, tmp_path, table="\n".join(text) + "\n")
    with pytest.raises(FormatError, match="sig_auditory value '' is not a boolean"):
        build_dataset(root, "A1")


# -- cache, selection, concat ----------------------------------------------------------


def test_cache_round_trip_keeps_values_and_dtypes(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("NAT4XR_CACHE_DIR", str(tmp_path / "cache"))
    text, expected = unusual_table(tiny.cells)
    root = release_copy(tiny.root, tmp_path, table=text)
    built = quiet_build(root).load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        first = nat4xr.open_nat4("A1", path=root, progress=False)
        again = nat4xr.open_nat4("A1", path=root, progress=False)  # from the file
    assert len(list((tmp_path / "cache").glob("*.nc"))) == 1
    for ds in (first, again):
        for name, dtype in UNUSUAL_DTYPES.items():
            assert ds[name].dtype.type is dtype, (name, ds[name].dtype)
            assert_column(ds, name, {c: v[name] for c, v in expected.items()})
        xr.testing.assert_identical(ds.load(), built)
    pd.testing.assert_frame_equal(again.nat4.published(), built.nat4.published())


@pytest.mark.parametrize("lazy", [False, True])
def test_selection_keeps_the_columns(tiny, tmp_path, lazy):
    text, expected = unusual_table(tiny.cells)
    ds = quiet_build(release_copy(tiny.root, tmp_path, table=text))
    if lazy:
        ds = ds.chunk({"stim": 3})
    picks = {
        "sel_neurons": ds.nat4.sel_neurons(neuron=tiny.cells[1:6]),
        "sel_stims": ds.nat4.sel_stims(subset="val"),
        "prune": ds.nat4.prune(),
        "by_pub": ds.nat4.sel_neurons(pub_flag=True),
    }
    assert picks["sel_neurons"].sizes["neuron"] == 5
    assert set(picks["by_pub"]["neuron"].values) == {
        c for c, v in expected.items() if v["pub_flag"]
    }
    for label, sub in picks.items():
        for name, dtype in UNUSUAL_DTYPES.items():
            assert sub[name].dtype.type is dtype, (label, name)
            cells = sub["neuron"].values.tolist()
            assert_column(sub, name, {c: expected[c][name] for c in cells})


def test_concat_fills_a_column_one_area_lacks_with_typed_values(tiny, peg, tmp_path):
    text, expected = unusual_table(tiny.cells)
    a1 = quiet_build(release_copy(tiny.root, tmp_path, table=text))
    p = quiet_build(peg.root, "PEG")
    only_a1 = {"pub_gain", "pub_flag", "pub_note", "pub_noise_floor", "pub_r_test_2"}
    assert only_a1.isdisjoint(str(c) for c in p.coords)
    for joint in (nat4xr.concat([a1, p]), nat4xr.concat([p.chunk({"stim": 2}), a1])):
        nat4xr.check_dataset(joint)
        source = joint["neuron_source"].values
        for name, dtype in UNUSUAL_DTYPES.items():
            assert joint[name].dtype.type is dtype, (name, joint[name].dtype)
        peg_rows = joint.isel(neuron=np.flatnonzero(source == "PEG"))
        assert np.isnan(peg_rows["pub_gain"].values).all()
        assert not peg_rows["pub_flag"].values.any()
        assert (peg_rows["pub_note"].values == "").all()
        # PEG's own table columns keep their values
        np.testing.assert_array_equal(peg_rows["pub_r_test"].values, p["pub_r_test"].values)
        np.testing.assert_array_equal(peg_rows["pub_se_test"].values, p["pub_se_test"].values)
        a1_rows = joint.isel(neuron=np.flatnonzero(source == "A1"))
        for name in UNUSUAL_DTYPES:
            assert_column(
                a1_rows.assign_coords(neuron=a1["neuron"].values),
                name,
                {c: v[name] for c, v in expected.items()},
            )
        # se_test is only in PEG's table: NaN for the A1 cells
        assert np.isnan(a1_rows["pub_se_test"].values).all()
        table = joint.nat4.published()
        assert table.index.tolist() == joint["neuron"].values.tolist()
        assert table["note"].tolist() == joint["pub_note"].values.tolist()
    back = nat4xr.open_cache(nat4xr.cachefile.write_cache(joint, tmp_path / "joint.nc"))
    xr.testing.assert_identical(back.load(), joint.load())


# -- the accessor and the contract ---------------------------------------------------------


def test_published_table(tiny):
    ds = quiet_build(tiny.root)
    table = ds.nat4.published()
    assert list(table.columns) == ["r_test", "se_test", "r_floor", "r_ceiling", "sig_auditory"]
    assert table.index.name == "neuron" and table.index.tolist() == tiny.cells
    assert table["sig_auditory"].dtype == bool and table["r_test"].dtype == np.float64
    truth = tiny.published.drop(columns="cellid")
    np.testing.assert_array_equal(table.to_numpy(), truth.loc[tiny.cells].to_numpy())
    table.iloc[0, 0] = 99.0  # a copy: the Dataset is unchanged
    assert ds["pub_r_test"].values[0] != 99.0
    sub = ds.nat4.sel_neurons(neuron=tiny.cells[2:4]).nat4.published()
    assert sub.index.tolist() == tiny.cells[2:4]


def test_published_without_a_table_says_how_to_get_one():
    ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=3)
    with pytest.raises(ValueError, match="no published table") as err:
        ds.nat4.published()
    assert "release" in str(err.value) and "open_nat4" in str(err.value)


def test_check_dataset_accepts_pub_coords_and_rejects_wrong_ones():
    ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=3)
    good = ds.assign_coords(
        pub_a=("neuron", [0.5, np.nan, 1.0]),
        pub_b=("neuron", [True, False, True]),
        pub_c=("neuron", np.array(["x", "", "z"])),
    )
    nat4xr.check_dataset(good)
    with pytest.raises(ValueError, match="pub_n"):
        nat4xr.check_dataset(ds.assign_coords(pub_n=("neuron", np.arange(3))))
    with pytest.raises(ValueError, match="pub_s"):
        nat4xr.check_dataset(ds.assign_coords(pub_s=("stim", [1.0, 2.0, 3.0])))
