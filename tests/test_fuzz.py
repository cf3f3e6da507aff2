"""Property tests: mutated release files give the truth, a predictable change, or a clear error.

Each test mutates one part of a tiny synthetic release (CSV matrices, epoch
tables, JSON sidecars, HDF5 spike files, the archives themselves), builds it
under an alarm, and checks the outcome against an expectation computed here,
independently of the reader:

- ``neutral`` mutations must give a Dataset equal to the truth;
- value changes must give a Dataset equal to the changed truth (computed from
  the mutated file by this module's own parsers and binning);
- structural damage must raise a nat4xr error (or ValueError/KeyError naming
  the file); an IndexError, TypeError, h5py or arrow exception is a failure;
- damage that hides data the reader cannot know about (a renamed zip member)
  may drop data, but only to NaN and with a warning naming the cells.

``NAT4XR_FUZZ_EXAMPLES`` sets the examples per test (default 40).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import re
import shutil
import signal
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nat4xr.build import build_dataset
from nat4xr.errors import Nat4Error, Nat4Warning
from nat4xr.synthetic import write_release

EXAMPLES = int(os.environ.get("NAT4XR_FUZZ_EXAMPLES", "40"))
TIMEOUT_S = 60  # one tiny build takes well under a second
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("NAT4XR_FUZZ_RANDOM") is None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
AREA = "A1"
POP = "A1_NAT4_ozgf.fs100.ch18.tgz"
SITES = "A1_single_sites.zip"
PRED = "A1_pred_correlation.csv"
T = 150
FS_POP = 100
FS_SITE = 1000
COORDS = ["subset", "n_repeats", "electrode", "unit", "auditory", "site", "animal"]
NUMBER = re.compile(
    r"[ \t]*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|nan|inf|infinity)[ \t]*", re.IGNORECASE
)
OUTCOMES: dict[str, int] = {}  # tallies, printed by test_zz_report (run with -s)


# -- the base release and what the reader must return ------------------------------


class Base:
    """The tiny release, its raw members and independent parses of them."""

    def __init__(self, root: Path) -> None:
        self.truth = write_release(root, AREA, scale="tiny", seed=0)
        self.root = root
        self.pop = read_tar(root / POP)
        with zipfile.ZipFile(root / SITES) as zf:
            self.zip_items = [(i, zf.read(i)) for i in zf.infolist()]
        self.site_names = [i.filename for i, _ in self.zip_items if i.filename.endswith(".tgz")]
        self.sites = {
            n: read_tar_bytes(d) for i, d in self.zip_items if (n := i.filename)[-4:] == ".tgz"
        }
        self.resp = parse_matrix(self.member(self.pop, ".resp.csv"), len(self.truth.cells))
        self.stim = parse_matrix(self.member(self.pop, ".stim.csv"), 18)
        self.pop_epochs = pd.read_csv(io.BytesIO(self.member(self.pop, ".resp.epoch.csv")))
        self.expected = self.truth.expected_dataset().load()
        self.n_samples = self.resp.shape[0]

    @staticmethod
    def member(members: dict[str, bytes], suffix: str) -> bytes:
        (name,) = [n for n in members if n.endswith(suffix)]
        return members[name]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    return Base(tmp_path_factory.mktemp("fuzzbase"))


def read_tar_bytes(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def read_tar(path: Path) -> dict[str, bytes]:
    return read_tar_bytes(path.read_bytes())


def tgz_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def replace_member(members: dict[str, bytes], suffix: str, data: bytes) -> dict[str, bytes]:
    out = dict(members)
    (name,) = [n for n in out if n.endswith(suffix)]
    out[name] = data
    return out


def zip_bytes(items: list[tuple[zipfile.ZipInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for info, data in items:
            zf.writestr(info, data)
    return out.getvalue()


def release_with(base: Base, files: dict[str, bytes]) -> Path:
    """A copy of the base release with some files replaced."""
    root = Path(tempfile.mkdtemp(prefix="nat4fuzz-"))
    for name in (POP, SITES, PRED):
        target = root / name
        if name in files:
            target.write_bytes(files[name])
        else:
            shutil.copyfile(base.root / name, target)
    return root


def with_site(base: Base, site: str, members: dict[str, bytes]) -> bytes:
    items = [(i, tgz_bytes(members) if i.filename == site else d) for i, d in base.zip_items]
    return zip_bytes(items)


def parse_matrix(data: bytes, n_cols: int) -> np.ndarray | None:
    """Strict parse of a NEMS CSV matrix; None when it is not one."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    lines = [ln for ln in re.split(r"\r\n|\r|\n", text) if ln]  # blank lines carry no row
    rows = []
    for line in lines:
        fields = line.split(",")
        if len(fields) != n_cols or not all(NUMBER.fullmatch(f) for f in fields):
            return None
        rows.append([float(f) for f in fields])
    with np.errstate(over="ignore"):
        return np.array(rows, dtype=np.float64).astype(np.float32).reshape(-1, n_cols)


# -- the expected Dataset ----------------------------------------------------------


class Expect:
    """What a build must give: ``error``, ``truth``-like arrays, or ``lost`` allowed."""

    def __init__(self, base: Base) -> None:
        e = base.expected
        self.kind = "dataset"
        self.reason = ""
        self.stims = list(e["stim"].values)
        self.response = e["response"].values.copy()
        self.spectrogram = e["spectrogram"].values.copy()
        self.n_repeats = e["n_repeats"].values.copy()
        self.auditory = e["auditory"].values.copy()
        self.lost_ok = False  # data may turn NaN, if a warning names the cells

    @classmethod
    def error(cls, base: Base, reason: str) -> Expect:
        out = cls(base)
        out.kind, out.reason = "error", reason
        return out


def pop_layout(base: Base, epochs: pd.DataFrame) -> tuple[dict[str, int], int] | str:
    """Stim -> first sample, trial length; or the reason it must fail."""
    ep = epochs.drop_duplicates().sort_values("start", kind="stable")
    start, end = ep["start"].to_numpy(float), ep["end"].to_numpy(float)
    if not (np.isfinite(start).all() and np.isfinite(end).all()) or (end < start).any():
        return "bad epoch times"
    if (start < 0).any():
        return "negative start"
    stims = [n for n in dict.fromkeys(ep["name"]) if str(n).startswith("STIM_")]
    if not stims:
        return "no stims"
    starts, lengths = {}, set()
    for name in stims:
        rows = ep.loc[ep["name"] == name]
        b = np.round(rows[["start", "end"]].to_numpy(float) * FS_POP).astype(int)
        if b[:, 1].max() > base.n_samples:
            return "past the end"
        starts[name] = int(b[0, 0])
        lengths.add(int(b[0, 1] - b[0, 0]))
    if len(lengths) != 1:
        return "trial lengths differ"
    return starts, lengths.pop()


def expect_from_pop(base: Base, epochs: pd.DataFrame, resp=None, stim=None) -> Expect:
    """Expected build after the population epochs or matrices changed (sites unchanged)."""
    layout = pop_layout(base, epochs)
    if isinstance(layout, str):
        return Expect.error(base, layout)
    starts, n_time = layout
    resp = base.resp if resp is None else resp
    stim = base.stim if stim is None else stim
    if n_time != T:
        return Expect.error(base, "trial length changed")  # sites then disagree on length
    out = Expect(base)
    est = [s for s in starts if not s.startswith("STIM_00")]
    val = [s for s in starts if s.startswith("STIM_00")]
    e = base.expected
    index = {s: i for i, s in enumerate(e["stim"].values)}
    if not set(val) <= set(base.truth.val_stims):
        return Expect.error(base, "unknown val stim")
    order = est + val
    out.stims = order
    response = np.full((len(order), *e["response"].shape[1:]), np.nan, np.float32)
    spec = np.empty((len(order), *e["spectrogram"].shape[1:]), np.float32)
    for k, name in enumerate(order):
        rows = slice(starts[name], starts[name] + T)
        if name in est:
            response[k, :, 0, :] = resp[rows].T
        else:
            response[k] = e["response"].values[index[name]]
        spec[k] = stim[rows].T
    if np.isnan(spec).any():
        return Expect.error(base, "NaN in spectrogram")
    out.response, out.spectrogram = response, spec
    out.n_repeats = np.array([1] * len(est) + [20] * len(val))
    return out


def check(base: Base, root: Path, expect: Expect, label: str) -> str:
    """Build under an alarm and compare with ``expect``; returns the outcome's name."""
    outcome = _check(base, root, expect, label)
    OUTCOMES[f"{label}: {outcome}"] = OUTCOMES.get(f"{label}: {outcome}", 0) + 1
    shutil.rmtree(root, ignore_errors=True)
    return outcome


def _alarm(signum, frame):
    raise TimeoutError(f"build did not finish within {TIMEOUT_S} s")


def _check(base: Base, root: Path, expect: Expect, label: str) -> str:
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIMEOUT_S)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = build_dataset(root, AREA)
            ds = ds.load()
    except TimeoutError:
        raise
    except (Nat4Error, ValueError, KeyError) as exc:
        message = str(exc)
        assert expect.kind == "error" or expect.lost_ok, (
            f"{label}: a neutral or value-changing mutation raised {exc!r}"
        )
        assert str(root) in message or "A1" in message, f"{label}: error names no file: {exc!r}"
        return "error"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert expect.kind != "error", f"{label}: built a Dataset, expected an error ({expect.reason})"
    assert list(ds["stim"].values) == expect.stims, label
    assert list(ds["neuron"].values) == list(base.expected["neuron"].values), label
    np.testing.assert_array_equal(ds["spectrogram"].values, expect.spectrogram, err_msg=label)
    got = ds["response"].values
    want = expect.response[:, :, : got.shape[2]]
    assert np.isnan(expect.response[:, :, got.shape[2] :]).all(), label
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    if same.all():
        np.testing.assert_array_equal(ds["n_repeats"].values, expect.n_repeats, err_msg=label)
        np.testing.assert_array_equal(
            ds["coverage"].values, ~np.isnan(want).all(axis=(2, 3)), err_msg=label
        )
        np.testing.assert_array_equal(ds["auditory"].values, expect.auditory, err_msg=label)
        np.testing.assert_array_equal(ds["pub_sig_auditory"].values, expect.auditory, err_msg=label)
        return "equal"
    assert expect.lost_ok, f"{label}: Dataset differs from the expected values without an error"
    assert np.isnan(got[~same]).all(), f"{label}: values changed, not only lost"
    lost = np.unique(np.nonzero(~same)[1])
    text = " ".join(str(w.message) for w in caught if issubclass(w.category, Nat4Warning))
    for n in lost:
        assert ds["neuron"].values[n] in text, f"{label}: lost data of an unreported cell"
    return "lost, reported"


# -- CSV matrices --------------------------------------------------------------------

FIELDS = st.sampled_from(
    ["", "NA", "nan", "NaN", "-nan", "inf", "-1", "1e+99", "0x1", "1_0", "+.5", " 2", "abc",
     "1.5e", "0", "3.0", "null", "1,2", "\r", "é"]
)  # fmt: skip


@st.composite
def matrix_mutation(draw, data: bytes):
    op = draw(st.sampled_from(["flip", "truncate", "delete", "duplicate", "swap", "field"]))
    lines = data.split(b"\n")[:-1]
    if op == "flip":
        i = draw(st.integers(0, len(data) - 1))
        b = draw(st.integers(0, 255))
        return op, data[:i] + bytes([b]) + data[i + 1 :]
    if op == "truncate":
        return op, data[: draw(st.integers(0, len(data) - 1))]
    i = draw(st.integers(0, len(lines) - 1))
    if op == "delete":
        return op, b"\n".join(lines[:i] + lines[i + 1 :]) + b"\n"
    if op == "duplicate":
        return op, b"\n".join([*lines[: i + 1], *lines[i:]]) + b"\n"
    cols = [ln.split(b",") for ln in lines]
    n = len(cols[0])
    if op == "swap":
        a, b = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        for row in cols:
            row[a], row[b] = row[b], row[a]
    else:
        j = draw(st.integers(0, n - 1))
        cols[i][j] = draw(FIELDS).encode()
    return op, b"\n".join(b",".join(r) for r in cols) + b"\n"


@FUZZ
@given(data=st.data(), which=st.sampled_from(["resp", "stim"]))
def test_fuzz_population_matrix(base, data, which):
    original = Base.member(base.pop, f".{which}.csv")
    op, mutated = data.draw(matrix_mutation(original))
    width = base.resp.shape[1] if which == "resp" else base.stim.shape[1]
    parsed = parse_matrix(mutated, width)
    if parsed is None:
        expect = Expect.error(base, "not a numeric matrix")
    elif parsed.shape[0] != base.n_samples:
        expect = Expect.error(base, "row count differs from the sidecar's segments")
    else:
        kw = {which: parsed}
        expect = expect_from_pop(base, base.pop_epochs, **kw)
    pop = tgz_bytes(replace_member(base.pop, f".{which}.csv", mutated))
    check(base, release_with(base, {POP: pop}), expect, f"{which}.csv {op}")


# -- epoch tables ----------------------------------------------------------------------


@st.composite
def epoch_mutation(draw, table: pd.DataFrame, fs: int):
    op = draw(
        st.sampled_from(
            ["delete", "duplicate", "shuffle", "jitter", "shift", "number", "swap_values",
             "reorder_columns", "swap_name_start", "truncate_rows"]
        )
    )  # fmt: skip
    t = table.copy()
    i = draw(st.integers(0, len(t) - 1))
    if op == "delete":
        t = t.drop(index=t.index[i])
    elif op == "duplicate":
        t = pd.concat([t.iloc[: i + 1], t.iloc[i:]])
    elif op == "shuffle":
        t = t.iloc[draw(st.permutations(range(len(t))))]
    elif op == "jitter":
        col = draw(st.sampled_from(["start", "end"]))
        t.iloc[i, t.columns.get_loc(col)] += draw(st.floats(-0.4, 0.4)) / fs
    elif op == "shift":
        k = draw(st.integers(-300, 300)) / fs
        t.iloc[i, 1] += k
        t.iloc[i, 2] += k
    elif op == "number":
        col = draw(st.sampled_from(["start", "end"]))
        value = draw(st.floats(allow_nan=True, allow_infinity=True, width=32))
        t.iloc[i, t.columns.get_loc(col)] = value
    elif op == "swap_values":
        t = t.assign(start=t["end"], end=t["start"])
    elif op == "reorder_columns":
        t = t[["end", "name", "start"]]
    elif op == "swap_name_start":
        t = t.assign(name=t["start"], start=t["name"])
    else:
        t = t.iloc[: draw(st.integers(1, len(t)))]
    return op, t.reset_index(drop=True)


def _valid_times(t: pd.DataFrame) -> bool:
    try:
        s = pd.to_numeric(t["start"]).to_numpy(float)
        e = pd.to_numeric(t["end"]).to_numpy(float)
    except (ValueError, TypeError):
        return False
    return bool(np.isfinite(s).all() and np.isfinite(e).all() and (e >= s).all() and (s >= 0).all())


@FUZZ
@given(data=st.data())
def test_fuzz_population_epochs(base, data):
    op, table = data.draw(epoch_mutation(base.pop_epochs, FS_POP))
    expect = (
        expect_from_pop(base, table)
        if _valid_times(table)
        else Expect.error(base, "invalid epoch times")
    )
    text = table.to_csv(index=False, lineterminator="\n").encode()
    pop = tgz_bytes(replace_member(base.pop, ".resp.epoch.csv", text))
    check(base, release_with(base, {POP: pop}), expect, f"pop epochs {op}")


def _cell_key(cell: str) -> tuple | str:
    m = re.fullmatch(r"([A-Za-z]{3}\d+[a-z])-(\d+)-(\d+)", cell)
    return (m[1], int(m[2]), int(m[3])) if m else cell


def site_expect(base: Base, site: str, epochs: pd.DataFrame, spikes: dict, segments_end: int):
    """Expected build after one site's epochs or spikes changed: bin them here."""
    if not _valid_times(epochs):
        return Expect.error(base, "invalid epoch times")
    ep = epochs.drop_duplicates().sort_values("start", kind="stable")
    ep = ep.assign(start=ep["start"].astype(float), end=ep["end"].astype(float))
    out = Expect(base)
    e = base.expected
    cells = list(e["neuron"].values)
    keys = {_cell_key(c): i for i, c in enumerate(cells)}
    val_index = {s: i for i, s in enumerate(e["stim"].values)}
    chans = {c: keys[_cell_key(c)] for c in spikes if _cell_key(c) in keys}
    chans = {c: n for c, n in chans.items() if not np.isnan(e["response"].values[-1, n]).all()}
    for name in base.truth.val_stims:
        rows = ep.loc[ep["name"] == name, ["start", "end"]].to_numpy(float)
        b = np.round(rows * FS_SITE).astype(np.int64)
        if len(b) and b[:, 1].max() > segments_end:
            return Expect.error(base, "val epoch past the end")
        if len(b) and (b[:, 1] - b[:, 0] < T * 10).any():
            return Expect.error(base, "val trial too short")
        s = val_index[name]
        for c, n in chans.items():
            out.response[s, n] = np.nan
            samples = np.floor(np.asarray(spikes[c], float).ravel() * FS_SITE).astype(np.int64)
            for r, (lo, _) in enumerate(b):
                inside = samples[(samples >= lo) & (samples < lo + T * 10)]
                out.response[s, n, r] = np.bincount((inside - lo) // 10, minlength=T)
    return out


@FUZZ
@given(data=st.data(), which=st.integers(0, 1))
def test_fuzz_site_epochs(base, data, which):
    site = base.site_names[which]
    members = base.sites[site]
    table = pd.read_csv(io.BytesIO(Base.member(members, ".resp.epoch.csv")))
    op, mutated = data.draw(epoch_mutation(table, FS_SITE))
    spikes = read_spikes(Base.member(members, ".resp.h5"))
    result = site_expect(base, site, mutated, spikes, site_samples(members))
    expect = _site_n_repeats(base, result)
    text = mutated.to_csv(index=False, lineterminator="\n").encode()
    zipped = with_site(base, site, replace_member(members, ".resp.epoch.csv", text))
    check(base, release_with(base, {SITES: zipped}), expect, f"site epochs {op}")


def _site_n_repeats(base: Base, result) -> Expect:
    if result.kind == "error":
        return result
    out = result
    val = ~np.isnan(out.response).all(axis=3)  # (stim, neuron, repeat)
    for s, name in enumerate(out.stims):
        if name.startswith("STIM_00"):
            recorded = np.nonzero(val[s].any(axis=0))[0]
            out.n_repeats[s] = recorded.max() + 1 if len(recorded) else 0
    return out


def site_samples(members: dict[str, bytes]) -> int:
    return json.loads(Base.member(members, ".resp.json"))["segments"][-1][1]


def read_spikes(raw: bytes) -> dict[str, np.ndarray]:
    with h5py.File(io.BytesIO(raw), "r") as h5:
        return {k: h5[k][()] for k in h5}


# -- JSON sidecars ---------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def sidecar_expect(
    base: Base, doc, original: dict, where: str, site_end: int | None
) -> Expect | str:
    """'neutral', 'fs' (error or a Dataset with that fs), 'lost', or an error Expect."""
    if not isinstance(doc, dict):
        return Expect.error(base, "sidecar is not an object")
    chans = doc.get("chans")
    if not isinstance(chans, list) or not all(isinstance(c, str) for c in chans):
        return Expect.error(base, "bad chans")
    if _number(doc.get("fs")) is None:
        return Expect.error(base, "bad fs")
    seg = doc.get("segments")
    if seg not in (None, []):
        ok = isinstance(seg, list) and all(
            isinstance(p, list) and len(p) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in p)
            and 0 <= p[0] <= p[1]
            for p in seg
        )  # fmt: skip
        if not ok:
            return Expect.error(base, "bad segments")
        end = max(p[1] for p in seg)
        if where == "pop" and end != original["segments"][0][1]:
            return Expect.error(base, "segments disagree with the rows")
        if where == "site" and end < site_end:
            return Expect.error(base, "segments end before the last val epoch")
    if where == "pop" and "PointProcess" in str(doc.get("signal_type", "")):
        return Expect.error(base, "pop resp claims to be a point process")
    if chans != original["chans"]:
        return "lost" if where == "site" else Expect.error(base, "chans changed")
    if _number(doc["fs"]) != float(original["fs"]):
        return "fs"
    return "neutral"


@st.composite
def json_mutation(draw, doc: dict):
    op = draw(st.sampled_from(["set", "set", "delete", "replace"]))
    out = dict(doc)
    if op == "replace":
        return op, draw(JSON)
    key = draw(st.sampled_from([*doc, "extra"]))
    if op == "delete":
        out.pop(key, None)
    else:
        out[key] = draw(JSON)
    return f"{op} {key}", out


@FUZZ
@given(data=st.data(), where=st.sampled_from(["pop", "site", "meta"]))
def test_fuzz_sidecars(base, data, where):
    if where == "site":
        site = base.site_names[data.draw(st.integers(0, 1))]
        members = base.sites[site]
        suffix = ".resp.json"
    else:
        members = base.pop
        suffix = (
            ".meta.json"
            if where == "meta"
            else data.draw(st.sampled_from([".resp.json", ".stim.json"]))
        )
    original = json.loads(Base.member(members, suffix))
    op, doc = data.draw(json_mutation(original))
    if where == "meta":
        kind = "neutral" if isinstance(doc, dict) else Expect.error(base, "meta is not an object")
    else:
        site_end = None
        if where == "site":
            ep = pd.read_csv(io.BytesIO(Base.member(members, ".resp.epoch.csv")))
            val = ep.loc[ep["name"].str.startswith("STIM_00")]
            site_end = int(np.round(val["end"].to_numpy() * FS_SITE).max())
        kind = sidecar_expect(base, doc, original, where, site_end)
        if suffix == ".stim.json" and kind == "fs":
            kind = "neutral"  # the stim signal's fs is not used: resp sets the time base
    expect = kind if isinstance(kind, Expect) else Expect(base)
    if kind == "lost":
        expect.lost_ok = True
    text = json.dumps(doc).encode()
    if where == "site":
        files = {SITES: with_site(base, site, replace_member(members, suffix, text))}
    else:
        files = {POP: tgz_bytes(replace_member(members, suffix, text))}
    root = release_with(base, files)
    if kind == "fs":  # the sidecar decides the time base: a Dataset must show the new fs
        _check_fs(base, root, float(doc["fs"]), f"{where} json {op}")
    else:
        check(base, root, expect, f"{where} json {op}")


def _check_fs(base: Base, root: Path, fs: float, label: str) -> None:
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIMEOUT_S)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = build_dataset(root, AREA).load()
        outcome = "dataset with the new fs"
        if "site" in label:
            equal = ds["response"].equals(base.expected["response"])
            assert equal or ds.attrs["fs"] == pytest.approx(fs), label
        else:
            assert ds.attrs["fs"] == pytest.approx(fs), label
    except (Nat4Error, ValueError, KeyError):
        outcome = "error"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        shutil.rmtree(root, ignore_errors=True)
    OUTCOMES[f"{label}: {outcome}"] = OUTCOMES.get(f"{label}: {outcome}", 0) + 1


# -- HDF5 spike files --------------------------------------------------------------------


@st.composite
def h5_mutation(draw, spikes: dict[str, np.ndarray], n_seconds: float):
    op = draw(
        st.sampled_from(["remove", "rename", "add", "values", "nonfinite", "strings", "group",
                         "matrix", "ints", "empty", "garbage", "truncate"])
    )  # fmt: skip
    names = sorted(spikes)
    chan = draw(st.sampled_from(names))
    out: dict = dict(spikes)
    if op == "remove":
        del out[chan]
    elif op == "rename":
        out[chan + "x"] = out.pop(chan)
    elif op == "add":
        out["ZZZ999z-01-1"] = np.array([0.5, 1.5])
    elif op == "values":
        n = draw(st.integers(0, 40))
        out[chan] = np.array(
            draw(st.lists(st.floats(-1.0, n_seconds + 1.0), min_size=n, max_size=n)), float
        )
    elif op == "nonfinite":
        out[chan] = np.append(out[chan], draw(st.sampled_from([np.nan, np.inf, -np.inf])))
    elif op == "strings":
        out[chan] = np.array([b"0.5", b"1.0"])
    elif op == "group":
        out[chan] = "group"
    elif op == "matrix":
        v = out[chan]
        out[chan] = v[: len(v) // 2 * 2].reshape(-1, 2)
    elif op == "ints":
        out[chan] = np.floor(out[chan]).astype(np.int32)
    elif op == "empty":
        out[chan] = np.zeros(0)
    raw = io.BytesIO()
    with h5py.File(raw, "w") as h5:
        for name, values in out.items():
            if isinstance(values, str):
                h5.create_group(name)
            else:
                h5.create_dataset(name, data=values)
    data = raw.getvalue()
    if op == "garbage":
        data = bytes(draw(st.binary(min_size=0, max_size=2000)))
    elif op == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    return op, chan, out, data


@FUZZ
@given(data=st.data(), which=st.integers(0, 1))
def test_fuzz_hdf5(base, data, which):
    site = base.site_names[which]
    members = base.sites[site]
    spikes = read_spikes(Base.member(members, ".resp.h5"))
    epochs = pd.read_csv(io.BytesIO(Base.member(members, ".resp.epoch.csv")))
    n_seconds = site_samples(members) / FS_SITE
    op, chan, mutated, raw = data.draw(h5_mutation(spikes, n_seconds))
    e = base.expected
    keys = {_cell_key(c) for c in e["neuron"].values}
    matched = _cell_key(chan) in keys
    if op in ("garbage", "truncate"):
        expect = Expect.error(base, "not HDF5")
    elif op in ("nonfinite", "strings", "group"):  # every listed channel is checked
        expect = Expect.error(base, "bad spike dataset")
    elif op in ("remove", "rename") and matched:
        expect = Expect.error(base, "missing spike dataset")
    else:
        plain = {k: v for k, v in mutated.items() if not isinstance(v, str)}
        plain = {k: v for k, v in plain.items() if v.dtype.kind in "iuf" and np.isfinite(v).all()}
        expect = _site_n_repeats(
            base, site_expect(base, site, epochs, plain, site_samples(members))
        )
    zipped = with_site(base, site, replace_member(members, ".resp.h5", raw))
    check(base, release_with(base, {SITES: zipped}), expect, f"h5 {op}")


# -- the per-cell table -------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_fuzz_pred_table(base, data):
    table = pd.read_csv(base.root / PRED)
    op = data.draw(
        st.sampled_from(["delete", "shuffle", "flip", "garbage", "duplicate", "extra_col"])
    )
    i = data.draw(st.integers(0, len(table) - 1))
    expect = Expect(base)
    cells = list(base.expected["neuron"].values)
    # a row may spell its cell differently (zero-padding): it still belongs to that cell
    by_key = {_cell_key(c): c for c in cells}
    cell = table["cellid"].iloc[i]
    cell = cell if cell in cells else by_key.get(_cell_key(cell), cell)
    if op == "delete":
        table = table.drop(index=table.index[i])
        if cell in cells:
            expect.auditory[cells.index(cell)] = False  # reported by a warning
    elif op == "shuffle":
        table = table.iloc[data.draw(st.permutations(range(len(table))))]
    elif op == "flip":
        table.loc[table.index[i], "sig_auditory"] = not table["sig_auditory"].iloc[i]
        if cell in cells:
            expect.auditory[cells.index(cell)] = not expect.auditory[cells.index(cell)]
    elif op == "garbage":
        table["sig_auditory"] = table["sig_auditory"].astype(object)
        table.loc[table.index[i], "sig_auditory"] = data.draw(
            st.sampled_from(["maybe", "2", "yes?"])
        )
        expect = Expect.error(base, "bad flag")
    elif op == "duplicate":
        table = pd.concat([table.iloc[: i + 1], table.iloc[i:]])
        expect = Expect.error(base, "duplicate cellid")
    else:
        table["extra"] = 1
    text = table.to_csv(index=False, lineterminator="\n").encode()
    check(base, release_with(base, {PRED: text}), expect, f"pred csv {op}")


def _cell_key(cell: str) -> tuple[str, int, int] | str:
    m = re.fullmatch(r"([A-Za-z]{3}\d+[A-Za-z]?)-(\d+)-(\d+)", cell)
    return (m[1], int(m[2]), int(m[3])) if m else cell


# -- the archives themselves --------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_fuzz_population_archive_bytes(base, data):
    raw = (base.root / POP).read_bytes()
    op = data.draw(st.sampled_from(["flip", "truncate"]))
    i = data.draw(st.integers(0, len(raw) - 1))
    if op == "flip":
        mutated = raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1 :]
    else:
        mutated = raw[:i]
    try:
        same = gzip.decompress(mutated) == gzip.decompress(raw)
    except (OSError, EOFError, zlib_error()):
        same = False
    expect = Expect(base) if same else Expect.error(base, "corrupt gzip")
    check(base, release_with(base, {POP: mutated}), expect, f"pop tgz {op}")


def zlib_error():
    import zlib

    return zlib.error


@FUZZ
@given(data=st.data())
def test_fuzz_sites_zip_bytes(base, data):
    raw = (base.root / SITES).read_bytes()
    op = data.draw(st.sampled_from(["flip", "truncate", "flip_inner"]))
    if op == "flip_inner":  # a damaged site tgz inside an intact zip: gzip's CRC catches it
        site = data.draw(st.sampled_from(base.site_names))
        inner = dict(base.zip_items)
        tgz = next(d for i, d in base.zip_items if i.filename == site)
        j = data.draw(st.integers(10, len(tgz) - 9))
        tgz = tgz[:j] + bytes([tgz[j] ^ data.draw(st.integers(1, 255))]) + tgz[j + 1 :]
        del inner
        items = [(i, tgz if i.filename == site else d) for i, d in base.zip_items]
        mutated = zip_bytes(items)
        try:
            same = gzip.decompress(tgz) == gzip.decompress(
                dict((i.filename, d) for i, d in base.zip_items)[site]
            )
        except (OSError, EOFError, zlib_error()):
            same = False
        expect = Expect(base) if same else Expect.error(base, "corrupt inner gzip")
    else:
        i = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            mutated = raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1 :]
        else:
            mutated = raw[:i]
        expect = Expect(base)
        in_data = _in_member_data(raw, i) if op == "flip" else None
        if in_data:
            expect = Expect.error(base, "member data damaged (CRC)")
        elif op == "truncate":
            expect = Expect.error(base, "truncated zip")
        else:
            expect.lost_ok = True  # a damaged name or header: error, or data lost with a warning
            expect.kind = "any"
    check(base, release_with(base, {SITES: mutated}), expect, f"sites zip {op}")


def _in_member_data(raw: bytes, offset: int) -> bool:
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".tgz"):
                continue
            h = info.header_offset
            name_len = int.from_bytes(raw[h + 26 : h + 28], "little")
            extra_len = int.from_bytes(raw[h + 28 : h + 30], "little")
            start = h + 30 + name_len + extra_len
            if start <= offset < start + info.compress_size:
                return True
    return False


def test_zz_report(capsys):
    """Print the tallies of the fuzz runs above (visible with ``pytest -s``)."""
    total = sum(OUTCOMES.values())
    with capsys.disabled():
        print(f"\nfuzzed inputs: {total}")
        for key in sorted(OUTCOMES):
            print(f"  {OUTCOMES[key]:4d}  {key}")
    assert total == 0 or total >= EXAMPLES
