"""Waveforms: sample-exact placement, resampling, file matching, formats and errors."""

from __future__ import annotations

import io
import shutil
import warnings
import wave
import zipfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from scipy.io import wavfile

import nat4xr
from nat4xr.build import build_dataset
from nat4xr.errors import FormatError, MissingFileError, Nat4Warning
from nat4xr.synthetic import random_dataset, write_release
from nat4xr.waveform import add_waveforms, hop_length, read_wav, sound_file_name

RESAMPLERS = ["scipy"] + (["soxr"] if nat4xr.waveform.default_resampler() == "soxr" else [])


def build_quiet(*args, **kwargs) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        return build_dataset(*args, **kwargs)


@pytest.fixture(scope="module")
def rel(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("wavrel"), "A1", scale="tiny", seed=0, wav=True)


@pytest.fixture(scope="module")
def base(rel) -> xr.Dataset:
    return build_quiet(rel.root, "A1")


@pytest.fixture(scope="module")
def unpacked(rel, tmp_path_factory) -> Path:
    """``wav.zip`` unpacked the usual way: a folder holding ``wav/<sound>.wav``."""
    out = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(rel.files["wav_zip"]) as zf:
        zf.extractall(out)
    return out


def truth_key(rel, stim: str) -> str:
    """The stem of ``stim``'s file in the synthetic release (matched ignoring case)."""
    stem = str(stim).removeprefix("STIM_").removesuffix(".wav").lower()
    (key,) = [k for k in rel.wav if k.lower() == stem]
    return key


def truth_for(rel, stim: str) -> np.ndarray:
    """The written mono samples of ``stim``'s file."""
    return rel.wav[truth_key(rel, stim)]


def zip_channels(rel) -> dict[str, int]:
    """File stem -> number of channels, read from the zip's WAV headers."""
    out = {}
    with zipfile.ZipFile(rel.files["wav_zip"]) as zf:
        for name in zf.namelist():
            if name.endswith(".wav"):
                with wave.open(io.BytesIO(zf.read(name))) as w:
                    out[Path(name).stem] = w.getnchannels()
    return out


def write_wav_file(path: Path, rate: int, samples: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(path, rate, samples)


# -- placement at the native rate ---------------------------------------------------------


@pytest.mark.parametrize("where", ["zip", "folder", "nested folder"])
def test_native_rate_places_every_sound_sample_exactly(rel, base, unpacked, where):
    source = {
        "zip": rel.files["wav_zip"],
        "folder": unpacked / "wav",
        "nested folder": unpacked,  # unpacked one level deeper than usual
    }[where]
    ds = add_waveforms(base, source)
    offset = round(rel.pre_stim_silence * 44100)
    n_samples = base.sizes["time"] * 441
    wave_ = ds["waveform"]
    assert wave_.dims == ("stim", "sample")
    assert wave_.dtype == np.float32 and wave_.shape == (base.sizes["stim"], n_samples)
    values = wave_.values
    for row, stim in enumerate(ds["stim"].values):
        truth = truth_for(rel, str(stim))
        expected = np.zeros(n_samples, dtype=np.float32)
        expected[offset : offset + truth.size] = truth
        np.testing.assert_array_equal(values[row], expected)
        # the impulse lands at offset + its position in the file
        assert np.argmax(values[row]) == offset + np.argmax(truth)
    assert ds.attrs["audio_fs"] == 44100
    assert ds.attrs["waveform_resampling"] == "none"
    assert "11025" in ds.attrs["waveform_alignment"]


def test_sample_coordinate_shares_the_time_clock(rel, base):
    ds = add_waveforms(base, rel.files["wav_zip"])
    sample = ds["sample"].values
    assert sample.dtype == np.float64
    np.testing.assert_allclose(np.diff(sample), 1 / 44100, rtol=1e-9)
    # every hop-th sample is exactly a time bin: selection by seconds agrees on both axes
    np.testing.assert_array_equal(sample[::441], ds["time"].values)
    first = ds["waveform"].sel(sample=slice(None, rel.pre_stim_silence - 1e-9))
    assert first.sizes["sample"] == round(rel.pre_stim_silence * 44100)
    assert not first.values.any()


def test_input_dataset_is_left_unchanged_and_waveform_replaced(rel, base):
    first = add_waveforms(base, rel.files["wav_zip"])
    assert "waveform" not in base and "sample" not in base.coords
    assert "audio_fs" not in base.attrs
    again = add_waveforms(first, rel.files["wav_zip"], audio_fs=16000)
    assert again.sizes["sample"] == base.sizes["time"] * 160
    assert again.attrs["audio_fs"] == 16000
    assert first.sizes["sample"] == base.sizes["time"] * 441
    xr.testing.assert_identical(again["response"], base["response"])


# -- resampling -----------------------------------------------------------------------------


@pytest.mark.parametrize("resampler", RESAMPLERS)
@pytest.mark.parametrize("audio_fs", [16000, 48000])
def test_resampled_length_and_impulse_position(rel, base, audio_fs, resampler):
    ds = add_waveforms(base, rel.files["wav_zip"], audio_fs=audio_fs, resampler=resampler)
    hop = audio_fs // 100
    n_samples = base.sizes["time"] * hop
    offset = round(rel.pre_stim_silence * audio_fs)
    assert ds["waveform"].shape == (base.sizes["stim"], n_samples)
    assert ds["waveform"].dtype == np.float32
    values = ds["waveform"].values
    for row, stim in enumerate(ds["stim"].values):
        truth = truth_for(rel, str(stim))
        expected = offset + np.argmax(truth) * audio_fs / 44100
        assert abs(np.argmax(values[row]) - expected) <= 1.5, stim
        # silence before the sound stays exactly zero; the sound lasts 1 s at the new rate
        assert not values[row, :offset].any()
        assert not values[row, offset + audio_fs + 2 * hop :].any()
    assert ds.attrs["audio_fs"] == audio_fs
    assert "44100 Hz -> " + str(audio_fs) in ds.attrs["waveform_resampling"]
    np.testing.assert_array_equal(ds["sample"].values[::hop], ds["time"].values)


def test_a_file_at_another_rate_is_converted_to_the_requested_rate(base, tmp_path):
    ds = base.isel(stim=[0])
    stim = str(ds["stim"].values[0])
    click = np.zeros(48000, dtype=np.int16)
    click[24000] = 20000  # 0.5 s into the sound
    write_wav_file(tmp_path / sound_file_name(stim), 48000, click)
    out = add_waveforms(ds, tmp_path, audio_fs=44100)
    assert abs(int(np.argmax(out["waveform"].values[0])) - (11025 + 22050)) <= 1
    assert "48000 Hz -> 44100 Hz" in out.attrs["waveform_resampling"]


def test_non_integer_hop_raises_and_suggests_rates(rel, base):
    with pytest.raises(ValueError, match=r"audio_fs=22050 Hz.*dt=0\.01") as err:
        add_waveforms(base, rel.files["wav_zip"], audio_fs=22050)
    text = str(err.value)
    assert "multiple of 100 Hz" in text and "22000" in text and "16000" in text
    assert hop_length(44100, 0.01) == 441
    assert hop_length(16000, 0.01) == 160
    assert hop_length(8000, 0.005) == 40
    with pytest.raises(ValueError, match="multiple of 200 Hz"):
        hop_length(44100, 0.005)
    with pytest.raises(ValueError, match="whole number"):
        add_waveforms(base, rel.files["wav_zip"], audio_fs=16000.5)
    with pytest.raises(TypeError):
        add_waveforms(base, rel.files["wav_zip"], audio_fs="44100")


# -- finding the files --------------------------------------------------------------------


def test_names_that_differ_only_in_case_are_found(rel, base):
    stems = {s.removeprefix("STIM_").removesuffix(".wav"): s for s in base["stim"].values}
    trapped = [stim for stem, stim in stems.items() if stem not in rel.wav]
    assert trapped, "the synthetic release should have a name differing only in case"
    ds = add_waveforms(base, rel.files["wav_zip"])
    for stim in trapped:
        np.testing.assert_array_equal(
            ds["waveform"].sel(stim=stim).values[11025 : 11025 + 44100], truth_for(rel, stim)
        )


def test_exact_name_is_preferred_over_a_case_blind_match(base, tmp_path):
    ds = base.isel(stim=[0])
    name = sound_file_name(str(ds["stim"].values[0]))
    exact, other = np.zeros(44100, np.int16), np.zeros(44100, np.int16)
    exact[100], other[200] = 10000, 10000
    write_wav_file(tmp_path / name, 44100, exact)
    write_wav_file(tmp_path / name.upper(), 44100, other)
    out = add_waveforms(ds, tmp_path)
    assert int(np.argmax(out["waveform"].values[0])) == 11025 + 100


def test_two_case_blind_matches_without_an_exact_one_are_an_error(base, tmp_path):
    ds = base.isel(stim=[0])
    name = sound_file_name(str(ds["stim"].values[0]))
    mixed = "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(name))
    assert len({name, name.upper(), mixed}) == 3
    for variant in (name.upper(), mixed):
        write_wav_file(tmp_path / variant, 44100, np.zeros(10, np.int16))
    with pytest.raises(FormatError, match="letter case"):
        add_waveforms(ds, tmp_path)


def test_missing_sound_names_it_the_folder_and_the_remedy(base, unpacked, tmp_path):
    folder = tmp_path / "wav"
    shutil.copytree(unpacked / "wav", folder)
    victim = next(p for p in sorted(folder.iterdir()) if p.name.startswith("cat"))
    victim.unlink()
    with pytest.raises(MissingFileError) as err:
        add_waveforms(base, folder)
    text = str(err.value)
    assert victim.name.lower() in text.lower() and str(folder) in text
    assert "download=True" in text and "waveform=True" in text and "nat4xr fetch" in text
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, nat4xr.Nat4Error)


def test_missing_source_and_bad_zip(base, tmp_path):
    with pytest.raises(MissingFileError, match="download=True"):
        add_waveforms(base, tmp_path / "wav.zip")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(FormatError, match=r"bad\.zip"):
        add_waveforms(base, bad)


def test_reading_the_zip_writes_nothing_to_disk(rel, base):
    before = sorted(p.name for p in rel.root.rglob("*"))
    add_waveforms(base, rel.files["wav_zip"])
    assert sorted(p.name for p in rel.root.rglob("*")) == before


# -- file formats ----------------------------------------------------------------------------


def test_stereo_files_are_down_mixed_to_their_mean(rel, base):
    channels = zip_channels(rel)
    stereo = [s for s in base["stim"].values if channels[truth_key(rel, s)] == 2]
    assert stereo, "the synthetic release should hold stereo files"
    ds = add_waveforms(base, rel.files["wav_zip"])
    for stim in stereo:
        # the writer stores left = s + d, right = s - d and records s
        np.testing.assert_array_equal(
            ds["waveform"].sel(stim=stim).values[11025 : 11025 + 44100], truth_for(rel, stim)
        )


def _pcm24(values: list[int]) -> bytes:
    return b"".join(int(v).to_bytes(3, "little", signed=True) for v in values)


@pytest.mark.parametrize(
    ("label", "maker"),
    [
        ("uint8", lambda: np.array([128, 192, 0], dtype=np.uint8)),
        ("int16", lambda: np.array([0, 16384, -32768], dtype=np.int16)),
        ("int24", None),
        ("int32", lambda: np.array([0, 2**30, -(2**31)], dtype=np.int32)),
        ("float32", lambda: np.array([0.0, 0.5, -1.0], dtype=np.float32)),
        ("float64", lambda: np.array([0.0, 0.5, -1.0], dtype=np.float64)),
    ],
)
def test_pcm_and_float_files_scale_to_unit_range(label, maker, tmp_path):
    path = tmp_path / f"{label}.wav"
    if maker is None:
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(3)
            w.setframerate(22050)
            w.writeframes(_pcm24([0, 2**22, -(2**23)]))
        rate = 22050
    else:
        rate = 8000
        wavfile.write(path, rate, maker())
    got_rate, samples = read_wav(path)
    assert got_rate == rate
    assert samples.dtype == np.float32
    np.testing.assert_array_equal(samples, np.array([0.0, 0.5, -1.0], dtype=np.float32))


def test_read_wav_averages_channels_and_rejects_non_wav(tmp_path):
    path = tmp_path / "st.wav"
    wavfile.write(path, 16000, np.array([[1000, 3000], [-2000, 0]], dtype=np.int16))
    _, samples = read_wav(path)
    np.testing.assert_array_equal(samples, np.array([2000, -1000], dtype=np.float32) / 32768)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF....nope")
    with pytest.raises(FormatError, match=r"junk\.wav"):
        read_wav(junk)


# -- length handling -------------------------------------------------------------------------


def test_long_sounds_are_cut_and_short_ones_padded(tmp_path):
    ds = random_dataset(n_est=1, n_val=1, n_neurons=2, n_time=150)
    ds = ds.assign_attrs(pre_stim_silence=0.25)
    long_, short = (str(s) for s in ds["stim"].values)
    two_seconds = np.zeros(2 * 44100, np.int16)
    two_seconds[int(1.2 * 44100)] = 1000  # lands at 1.45 s: inside the 1.5 s trial
    two_seconds[int(1.3 * 44100)] = 2000  # would land at 1.55 s: cut
    write_wav_file(tmp_path / sound_file_name(long_), 44100, two_seconds)
    write_wav_file(tmp_path / sound_file_name(short), 44100, np.full(22050, 500, np.int16))
    out = add_waveforms(ds, tmp_path)["waveform"].values
    assert out.shape == (2, 150 * 441)
    assert np.flatnonzero(out[0]).tolist() == [11025 + int(1.2 * 44100)]
    assert np.flatnonzero(out[1]).tolist() == list(range(11025, 11025 + 22050))


def test_needs_pre_stim_silence(tmp_path):
    ds = random_dataset(n_est=1, n_val=1, n_neurons=2)
    with pytest.raises(ValueError, match="pre_stim_silence"):
        add_waveforms(ds, tmp_path)


# -- the whole path: build, cache, torch ---------------------------------------------------


def test_build_with_waveform_equals_adding_it(rel, base):
    ds = build_quiet(rel.root, "A1", waveform=True, audio_fs=16000)
    expected = add_waveforms(base, rel.files["wav_zip"], audio_fs=16000)
    xr.testing.assert_identical(ds["waveform"], expected["waveform"])
    assert ds.attrs["audio_fs"] == 16000


def test_open_nat4_round_trips_the_waveform_through_the_cache(rel, base, tmp_path, monkeypatch):
    from nat4xr.opening import open_nat4

    monkeypatch.setenv("NAT4XR_CACHE_DIR", str(tmp_path / "cache"))
    expected = add_waveforms(base, rel.files["wav_zip"])
    for _ in range(2):  # first call builds and writes the cache, second reads it back
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Nat4Warning)
            ds = open_nat4(path=rel.root, area="A1", waveform=True)
        assert str(ds.encoding.get("source", "")).endswith(".nc")  # read from the cache file
        assert ds["waveform"].dtype == np.float32
        np.testing.assert_array_equal(ds["waveform"].values, expected["waveform"].values)
        np.testing.assert_array_equal(ds["sample"].values, expected["sample"].values)
        assert ds.attrs["audio_fs"] == 44100
        assert ds.attrs["waveform_alignment"] == expected.attrs["waveform_alignment"]
        ds.close()
    assert list((tmp_path / "cache").glob("*.nc"))


def test_torch_batches_hold_the_waveforms(rel, base):
    pytest.importorskip("torch")
    from nat4xr.torch import to_torch

    ds = add_waveforms(base, rel.files["wav_zip"], audio_fs=16000)
    batch = next(iter(to_torch(ds, batch_size=2)))
    assert tuple(batch["stims"].shape) == (2, 1, base.sizes["time"] * 160)
    for i, stim in enumerate(batch["stim"]):
        np.testing.assert_array_equal(
            batch["stims"][i, 0].numpy(), ds["waveform"].sel(stim=stim).values
        )
