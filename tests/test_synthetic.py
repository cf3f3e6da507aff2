"""The synthetic release writer, checked against its own truth with plain tools.

Every file is opened here with tarfile/zipfile/h5py/pandas/wave only, so these
tests do not depend on the library's readers.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import wave
import zipfile

import h5py
import numpy as np
import pandas as pd
import pytest

from nat4xr.schema import check_dataset
from nat4xr.synthetic import SyntheticRelease, write_release
from nat4xr.synthetic.constants import _FULL_AREAS, _SCALES
from nat4xr.synthetic.layout import _Layout

KEY_RE = re.compile(r"^([A-Z]{3}\d+[a-z])-(\d+)-(\d+)$")
NUMBER_RE = re.compile(rb"^(nan|\d\.\d{18}e[+-]\d{2})$")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SyntheticRelease:
    return write_release(tmp_path_factory.mktemp("tiny"), "A1", scale="tiny", seed=5, wav=True)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> SyntheticRelease:
    return write_release(tmp_path_factory.mktemp("small"), "PEG", scale="small", seed=2)


def tar_members(data: bytes | str) -> dict[str, bytes]:
    src = {"fileobj": io.BytesIO(data)} if isinstance(data, bytes) else {"name": data}
    with tarfile.open(mode="r:gz", **src) as tf:
        return {m.name: (tf.extractfile(m).read() if m.isfile() else None) for m in tf}


def population(rel: SyntheticRelease) -> tuple[str, dict[str, bytes]]:
    rec = f"{rel.area}_NAT4_ozgf.fs100.ch18"
    return rec, tar_members(str(rel.files["population"]))


def read_rows(data: bytes) -> np.ndarray:
    return pd.read_csv(io.BytesIO(data), header=None, dtype=np.float64).to_numpy()


def site_files(rel: SyntheticRelease) -> dict[str, dict[str, bytes]]:
    """Site id -> members of that site's recording."""
    out = {}
    with zipfile.ZipFile(rel.files["sites_zip"]) as zf:
        for name in zf.namelist():
            if name.endswith(".tgz"):
                site = name.split("/")[-1].split("_")[0]
                out[site] = tar_members(zf.read(name))
    return out


def key(cell: str):
    m = KEY_RE.match(cell)
    return (m[1], int(m[2]), int(m[3])) if m else cell


def site_spikes(members: dict[str, bytes]):
    """(sidecar, epochs, chan -> spike times) of one site recording."""

    def get(suffix: str) -> bytes:
        (data,) = [v for name, v in members.items() if name.endswith(suffix)]
        return data

    sidecar = json.loads(get(".resp.json"))
    epochs = pd.read_csv(io.BytesIO(get(".resp.epoch.csv")))
    with h5py.File(io.BytesIO(get(".resp.h5")), "r") as f:
        spikes = {name: f[name][()] for name in f}
    return sidecar, epochs, spikes


# -- layout -------------------------------------------------------------------------


def test_file_names_and_members(tiny):
    root = tiny.root
    assert tiny.files == {
        "population": root / "A1_NAT4_ozgf.fs100.ch18.tgz",
        "sites_zip": root / "A1_single_sites.zip",
        "pred_csv": root / "A1_pred_correlation.csv",
        "wav_zip": root / "wav.zip",
    }
    rec, members = population(tiny)
    expected = {rec, f"{rec}/{rec}.meta.json"}
    for sig in ("resp", "stim", "mask_est"):
        expected |= {f"{rec}/{rec}.{sig}.{ext}" for ext in ("json", "csv", "epoch.csv")}
    assert set(members) == expected
    n_samples = (len(tiny.est_stims) + len(tiny.val_stims)) * 150
    for sig, chans in (
        ("resp", tiny.cells),
        ("stim", [str(f) for f in range(18)]),
        ("mask_est", ["mask_est"]),
    ):
        side = json.loads(members[f"{rec}/{rec}.{sig}.json"])
        assert side["name"] == sig and side["chans"] == chans and side["fs"] == 100
        assert side["recording"] == rec and side["segments"] == [[0, n_samples]]
        assert side["signal_type"] == "nems0.signal.RasterizedSignal"
    assert not (tiny.root / "A1_NAT4_ozgf.fs100.ch18.tgz.part").exists()

    sites = sorted(set(tiny.neurons["site"]))
    with zipfile.ZipFile(tiny.files["sites_zip"]) as zf:
        names = zf.namelist()
    assert sorted(n for n in names if n.endswith(".tgz")) == [
        f"A1_single_sites/{s}_NAT4_fs1000.tgz" for s in sites
    ]
    assert all(n.startswith("A1_single_sites/") for n in names)
    for site, members in site_files(tiny).items():
        srec = f"{site}_NAT4_fs1000"
        assert set(members) == {srec} | {
            f"{srec}/{srec}.{x}" for x in ("meta.json", "resp.json", "resp.epoch.csv", "resp.h5")
        }


def test_population_resp_blocks_match_truth(small):
    rec, members = population(small)
    raw = members[f"{rec}/{rec}.resp.csv"]
    n_est, n_val, n_cells = len(small.est_stims), len(small.val_stims), len(small.cells)
    lines = raw.split(b"\n")
    assert lines[-1] == b"" and len(lines) == (n_val + n_est) * 150 + 1
    fields = lines[0].split(b",") + lines[-2].split(b",")
    assert all(NUMBER_RE.match(f) for f in fields)

    data = read_rows(raw)
    assert data.shape == ((n_val + n_est) * 150, n_cells)
    val = data[: n_val * 150].reshape(n_val, 150, n_cells).transpose(0, 2, 1)
    est = data[n_val * 150 :].reshape(n_est, 150, n_cells).transpose(0, 2, 1)
    np.testing.assert_array_equal(est.astype("float32"), small.est_response)

    has_site = ~np.isnan(small.val_response).all(axis=(0, 2, 3))
    mean = small.val_response.astype(np.float64).mean(axis=2)
    np.testing.assert_array_equal(val[:, has_site], mean[:, has_site])
    # cells without site data still have averages in the population file
    assert (~has_site).sum() == len(small.traps["no_site"])
    no_site = val[:, ~has_site]
    assert np.isfinite(no_site).all()
    np.testing.assert_array_equal(no_site * 20, np.round(no_site * 20))


def test_population_stim_mask_and_epochs(tiny):
    rec, members = population(tiny)
    n_est, n_val = len(tiny.est_stims), len(tiny.val_stims)
    stim = read_rows(members[f"{rec}/{rec}.stim.csv"]).astype("float32")
    order = list(range(n_est, n_est + n_val)) + list(range(n_est))
    expected = tiny.spectrogram[order].transpose(0, 2, 1).reshape(-1, 18)
    np.testing.assert_array_equal(stim, expected)
    assert (tiny.spectrogram >= 0).all() and tiny.spectrogram.max() > 0
    mask = read_rows(members[f"{rec}/{rec}.mask_est.csv"])[:, 0]
    np.testing.assert_array_equal(mask, np.repeat([0.0, 1.0], [n_val * 150, n_est * 150]))

    epochs = pd.read_csv(io.BytesIO(members[f"{rec}/{rec}.resp.epoch.csv"]))
    assert list(epochs.columns) == ["name", "start", "end"]
    for sig in ("stim", "mask_est"):
        assert members[f"{rec}/{rec}.{sig}.epoch.csv"] == members[f"{rec}/{rec}.resp.epoch.csv"]
    stims = epochs[epochs["name"].str.startswith("STIM_")]
    assert stims["name"].tolist() == tiny.val_stims + tiny.est_stims
    np.testing.assert_array_equal(stims["start"], np.arange(n_val + n_est) * 1.5)
    np.testing.assert_array_equal(stims["end"] - stims["start"], 1.5)
    for name, offset in (("PreStimSilence", 0.0), ("PostStimSilence", 1.25)):
        rows = epochs[epochs["name"] == name]
        np.testing.assert_array_equal(rows["start"], stims["start"].to_numpy() + offset)
        np.testing.assert_array_equal(rows["end"] - rows["start"], 0.25)
    others = set(epochs["name"]) - set(stims["name"]) - {"PreStimSilence", "PostStimSilence"}
    assert {"TRIAL", "REFERENCE", "PASSIVE_EXPERIMENT"} <= others
    assert any(n.startswith("FILE_") for n in others)


# -- per-site spike times -----------------------------------------------------------


def test_binned_spikes_reproduce_truth(small):
    cells = {c: i for i, c in enumerate(small.cells)}
    by_key = {key(c): i for i, c in enumerate(small.cells)}
    est_index = {s: i for i, s in enumerate(small.est_stims)}
    val_index = {s: i for i, s in enumerate(small.val_stims)}
    seen_cells = set()
    checked = 0
    for site, members in site_files(small).items():
        sidecar, epochs, spikes = site_spikes(members)
        assert sidecar["fs"] == 1000 and sidecar["signal_type"] == "nems0.signal.PointProcess"
        assert sorted(sidecar["chans"]) == sorted(spikes)
        n_samples = sidecar["segments"][-1][1]
        trials = epochs[epochs["name"].str.startswith("STIM_")].sort_values("start")
        assert n_samples == round(trials["end"].max() * 1000) == len(trials) * 1500
        counts = trials["name"].value_counts()
        assert all(counts[v] == 20 for v in small.val_stims)
        assert all(counts[e] == 1 for e in counts.index if e in est_index)
        # interleaved, not one block per sound
        assert trials["name"].iloc[:40].nunique() > 2

        for chan, times in spikes.items():
            assert np.all(np.diff(times) >= 0)
            if chan not in cells and key(chan) not in by_key:
                continue  # a site-only cell
            c = cells.get(chan, by_key.get(key(chan)))
            seen_cells.add(c)
            samples = np.floor(times * 1000).astype(np.int64)
            raster = np.bincount(samples[samples < n_samples], minlength=n_samples)
            repeat = dict.fromkeys(val_index, 0)
            for name, start, end in trials[["name", "start", "end"]].itertuples(index=False):
                lo, hi = round(start * 1000), round(end * 1000)
                binned = raster[lo:hi].reshape(150, 10).sum(axis=1)
                if name in val_index:
                    truth = small.val_response[val_index[name], c, repeat[name]]
                    repeat[name] += 1
                else:
                    truth = small.est_response[est_index[name], c]
                np.testing.assert_array_equal(binned, truth)
                checked += 1
        # est sounds the site did not record are NaN for its cells in the truth
        mine = np.flatnonzero(small.neurons["site"].to_numpy() == site)
        absent = [est_index[e] for e in est_index if e not in counts.index]
        assert np.isnan(small.est_response[np.ix_(absent, mine)]).all()
        present = [est_index[e] for e in est_index if e in counts.index]
        assert not np.isnan(small.est_response[np.ix_(present, mine)]).any()
    assert checked > 0
    no_site = {cells[c] for c in small.traps["no_site"]}
    assert seen_cells == set(range(len(small.cells))) - no_site
    assert np.isnan(small.est_response).any()
    assert np.isnan(small.val_response[:, sorted(no_site)]).all()


def test_traps(small):
    traps = small.traps
    assert all(len(v) >= 1 for v in traps.values())
    chans = set()
    late = set()
    for members in site_files(small).values():
        sidecar, _, spikes = site_spikes(members)
        chans |= set(sidecar["chans"])
        end = sidecar["segments"][-1][1] / 1000
        late |= {c for c, t in spikes.items() if (t >= end).any()}
    pop = set(small.cells)
    keys = {key(c) for c in chans}
    for cell in traps["padded"]:
        assert cell in pop and cell not in chans and key(cell) in keys
        assert cell.split("-")[0] in small.neurons["site"].values
    for cell in traps["no_site"]:
        assert cell in pop and cell not in chans and key(cell) not in keys
    for cell in traps["extra_site"]:
        assert cell in chans and cell not in pop
        assert key(cell) not in {key(c) for c in pop}
    for cell in traps["odd_ids"]:
        assert cell in pop and cell in chans and not KEY_RE.match(cell)
        row = small.neurons.loc[cell]
        assert row["electrode"] == -1 and row["unit"] == -1 and row["site"] == cell.split("-")[0]
    assert late == set(traps["spikes_past_end"])
    unexplained = chans - pop - set(traps["extra_site"])
    assert {key(c) for c in unexplained} == {key(c) for c in traps["padded"]}


def test_no_traps(tmp_path):
    rel = write_release(tmp_path, scale="tiny", traps=False, seed=1)
    assert all(v == [] for v in rel.traps.values())
    chans = set()
    for members in site_files(rel).values():
        sidecar, _, spikes = site_spikes(members)
        chans |= set(sidecar["chans"])
        end = sidecar["segments"][-1][1] / 1000
        assert all((t < end).all() for t in spikes.values())
    assert chans == set(rel.cells)
    assert all(KEY_RE.match(c) for c in rel.cells)


# -- other files --------------------------------------------------------------------


def test_pred_correlation_csv(small):
    table = pd.read_csv(small.files["pred_csv"])
    assert list(table.columns) == [
        "cellid", "r_test", "se_test", "r_floor", "r_ceiling", "sig_auditory"
    ]  # fmt: skip
    assert table["cellid"].tolist() == sorted(table["cellid"])
    # every cell once; the respelled ones as in their site file (same parsed key)
    respelled = set(small.traps["pred_respelled"])
    assert respelled and respelled <= set(small.traps["padded"])
    assert set(table["cellid"]) & set(small.cells) == set(small.cells) - respelled
    others = sorted(set(table["cellid"]) - set(small.cells))
    assert len(others) == len(respelled)
    assert sorted(key(c) for c in others) == sorted(key(c) for c in respelled)
    assert table["sig_auditory"].dtype == bool
    by_key = {key(c): c for c in small.cells}
    table.index = [c if c in small.cells else by_key[key(c)] for c in table["cellid"]]
    np.testing.assert_array_equal(table.loc[small.cells, "sig_auditory"], small.neurons["auditory"])
    assert 0 < table["sig_auditory"].sum() < len(table)
    # realistic metrics: small positive errors, a low floor, a ceiling above r_test
    assert ((table["se_test"] > 0.005) & (table["se_test"] < 0.06)).all()
    assert table["r_floor"].between(0, 0.15).all()
    assert (table["r_ceiling"] >= table["r_test"]).mean() > 0.9
    # the truth is the table as written
    truth = small.published.loc[small.cells]
    assert list(truth.columns) == list(table.columns)
    pd.testing.assert_frame_equal(
        table.loc[small.cells], truth, check_dtype=False, check_index_type=False, check_exact=True
    )


def test_wav_files_and_impulses(tiny):
    stems = {s[len("STIM_") : -len(".wav")] for s in tiny.est_stims + tiny.val_stims}
    with zipfile.ZipFile(tiny.files["wav_zip"]) as zf:
        names = [n for n in zf.namelist() if n.endswith(".wav")]
        assert all(n.startswith("wav/") for n in names)
        files = {n[len("wav/") : -len(".wav")]: zf.read(n) for n in names}
    assert set(files) == set(tiny.wav)
    assert {s.lower() for s in files} == {s.lower() for s in stems}
    assert set(files) != stems  # some names differ in letter case only
    n_stereo = 0
    for stem, data in files.items():
        with wave.open(io.BytesIO(data)) as w:
            assert (w.getframerate(), w.getsampwidth(), w.getnframes()) == (44100, 2, 44100)
            frames = np.frombuffer(w.readframes(44100), "<i2").reshape(-1, w.getnchannels())
        n_stereo += frames.shape[1] == 2
        mono = frames.astype(np.float64).mean(axis=1) / 32768
        np.testing.assert_array_equal(mono.astype("float32"), tiny.wav[stem])
        peak = int(np.argmax(np.abs(mono)))
        assert mono[peak] == 30000 / 32768
        assert (np.abs(np.delete(mono, peak)) < 0.2).all()
    assert n_stereo == 2
    positions = [int(np.argmax(w)) for w in tiny.wav.values()]
    assert len(set(positions)) == len(positions)


# -- truth and determinism ----------------------------------------------------------


def test_expected_dataset(tiny):
    ds = tiny.expected_dataset()
    check_dataset(ds)
    n_est, n_val = len(tiny.est_stims), len(tiny.val_stims)
    assert dict(ds.sizes) == {
        "stim": n_est + n_val,
        "neuron": len(tiny.cells),
        "repeat": 20,
        "time": 150,
        "freq": 18,
    }
    assert ds["stim"].values.tolist() == tiny.est_stims + tiny.val_stims
    assert ds["neuron"].values.tolist() == tiny.cells
    resp = ds["response"].values
    np.testing.assert_array_equal(resp[:n_est, :, 0], tiny.est_response)
    assert np.isnan(resp[:n_est, :, 1:]).all()
    np.testing.assert_array_equal(resp[n_est:], tiny.val_response)
    np.testing.assert_array_equal(ds["spectrogram"].values, tiny.spectrogram)
    assert ds["n_repeats"].values.tolist() == [1] * n_est + [20] * n_val
    cov = np.concatenate(
        [~np.isnan(tiny.est_response).all(axis=2), ~np.isnan(tiny.val_response).all(axis=(2, 3))]
    )
    np.testing.assert_array_equal(ds["coverage"].values, cov)
    assert not cov.all()
    assert ds.attrs["area"] == "A1" and ds.attrs["pre_stim_silence"] == 0.25
    for col in ("site", "animal", "electrode", "unit", "auditory"):
        np.testing.assert_array_equal(ds[col].values, tiny.neurons[col].to_numpy())
    assert ds["electrode"].dtype == np.int64 and ds["auditory"].dtype == bool

    val = tiny.expected_dataset("val")
    assert val["stim"].values.tolist() == tiny.val_stims
    assert set(val["subset"].values.tolist()) == {"val"} and val.sizes["neuron"] == len(tiny.cells)
    est = tiny.expected_dataset("est")
    assert est["stim"].values.tolist() == tiny.est_stims
    with pytest.raises(ValueError, match="subset"):
        tiny.expected_dataset("train")


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_deterministic_from_seed(tmp_path):
    a = write_release(tmp_path / "a", scale="tiny", seed=11, wav=True)
    b = write_release(tmp_path / "b", scale="tiny", seed=11, wav=True)
    c = write_release(tmp_path / "c", scale="tiny", seed=12)
    for k in a.files:
        assert digest(a.files[k]) == digest(b.files[k]), k
    np.testing.assert_array_equal(a.val_response, b.val_response)
    assert a.traps == b.traps and a.cells == b.cells
    assert digest(a.files["population"]) != digest(c.files["population"])


def _lag1_correlation(rel: SyntheticRelease) -> float:
    """Correlation of each band with itself one bin later, inside the sounds."""
    sound = rel.spectrogram[:, :, 25:125]
    a, b = sound[:, :, :-1], sound[:, :, 1:]
    a = a - a.mean(axis=2, keepdims=True)
    b = b - b.mean(axis=2, keepdims=True)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_white_spectrograms_change_only_the_values(tmp_path):
    smooth = write_release(tmp_path / "smooth", scale="tiny", seed=11)
    same = write_release(tmp_path / "same", scale="tiny", seed=11, spectrogram="smooth")
    white = write_release(tmp_path / "white", scale="tiny", seed=11, spectrogram="white")
    again = write_release(tmp_path / "again", scale="tiny", seed=11, spectrogram="white")
    for k in smooth.files:
        assert digest(smooth.files[k]) == digest(same.files[k]), k
        assert digest(white.files[k]) == digest(again.files[k]), k
    assert digest(white.files["population"]) != digest(smooth.files["population"])
    # the same layout, sounds, traps and member names: only the numbers differ
    assert white.cells == smooth.cells and white.traps == smooth.traps
    assert white.est_stims == smooth.est_stims and white.val_stims == smooth.val_stims
    pd.testing.assert_frame_equal(white.neurons, smooth.neurons)
    pop = str(white.files["population"]), str(smooth.files["population"])
    assert list(tar_members(pop[0])) == list(tar_members(pop[1]))
    with zipfile.ZipFile(white.files["sites_zip"]) as a:
        with zipfile.ZipFile(smooth.files["sites_zip"]) as b:
            assert a.namelist() == b.namelist()
    assert white.spectrogram.shape == smooth.spectrogram.shape
    assert white.spectrogram.dtype == np.float32 and (white.spectrogram >= 0).all()
    assert not white.spectrogram[:, :, :25].any() and not white.spectrogram[:, :, 125:].any()
    # white within each sound, where the default is smooth
    assert abs(_lag1_correlation(white)) < 0.05 < 0.5 < _lag1_correlation(smooth)
    with pytest.raises(ValueError, match="spectrogram must be"):
        write_release(tmp_path / "bad", scale="tiny", spectrogram="pink")


def test_sizes_overrides_and_sparsity(tmp_path, small):
    assert small.est_response.shape == (30, 40, 150)
    assert small.val_response.shape == (4, 40, 20, 150)
    assert small.neurons["site"].nunique() == 4
    assert set(small.neurons["animal"]) == {"ARM"}  # PEG is one animal
    counts = small.est_response[~np.isnan(small.est_response)]
    assert (counts == 0).mean() > 0.8 and counts.max() >= 2
    assert np.array_equal(counts, np.round(counts))
    # driven by the sound: more spikes during it than in the pre-stimulus silence
    rate = np.nanmean(small.val_response, axis=(0, 1, 2))
    assert rate[30:120].mean() > 1.5 * rate[:25].mean()

    rel = write_release(tmp_path, "A1", scale="tiny", n_cells=9, n_sites=3, n_est=4, n_val=1)
    assert rel.est_response.shape == (4, 9, 150) and rel.val_response.shape == (1, 9, 20, 150)
    assert rel.neurons["site"].nunique() == 3
    with pytest.raises(ValueError, match="scale"):
        write_release(tmp_path, scale="huge")
    with pytest.raises(ValueError, match="cells per site"):
        write_release(tmp_path, scale="tiny", n_cells=3, n_sites=2)


@pytest.mark.parametrize(
    ("area", "n_sites", "animals"),
    [("A1", 22, {"ARM": 165, "CRD": 36, "DRX": 244, "TNC": 404}), ("PEG", 12, {"ARM": 398})],
)
def test_full_scale_layout_counts(area, n_sites, animals):
    published = _FULL_AREAS[area]
    layout = _Layout.make(area, dict(_SCALES["full"]), published, True, np.random.default_rng(0))
    neurons = layout.neurons(area)
    assert len(neurons) == sum(animals.values()) and neurons.index.is_unique
    assert neurons["site"].nunique() == n_sites
    assert neurons["animal"].value_counts().to_dict() == animals
    assert neurons["auditory"].sum() == published["auditory"]
    assert len(layout.traps["no_site"]) == (33 if area == "A1" else 15)


def test_a_drive_too_strong_for_the_counts_is_refused(tmp_path):
    with pytest.raises(ValueError, match="255"):
        write_release(tmp_path, "A1", scale="tiny", seed=0, drive=5000.0)
