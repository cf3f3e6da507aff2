"""Raw sound waveforms aligned sample-exactly with the spectrogram frames.

NAT4 ships the source sounds as ``wav/<sound>.wav`` (in ``wav.zip``): 1 s each,
44.1 kHz, where ``<sound>`` is the stimulus epoch name without ``STIM_``. A
trial is longer than its sound (pre-stimulus silence, the sound, post-stimulus
silence), so :func:`add_waveforms` places every sound inside a zero buffer
that covers the whole trial:

- the buffer has ``T * hop`` samples, ``T`` time bins of ``hop = audio_fs * dt``
  samples each (441 at 44.1 kHz and 10 ms), so audio sample ``k * hop`` starts
  time bin ``k`` exactly;
- the sound starts at sample ``round(pre_stim_silence * audio_fs)``; audio that
  runs past the end of the buffer is cut;
- stereo files are averaged to mono and integers scaled to [-1, 1].

The ``sample`` coordinate is the time from trial onset in seconds
(``k / audio_fs``, float64), the same axis as ``time``: ``sample`` values at
multiples of ``hop`` equal the ``time`` values, and
``ds.waveform.sel(sample=slice(0.25, 1.25))`` selects by the same clock as
``ds.response.sel(time=...)``. The rate is also stored as the ``audio_fs``
attribute.

Resampling (when ``audio_fs`` differs from a file's rate) uses ``soxr``
(very-high-quality preset) when it is installed, else
:func:`scipy.signal.resample_poly`. soxr is preferred because, measured on a
44.1 -> 16 kHz conversion, it leaves a 9 kHz tone (just above the new
Nyquist) at -210 dB where ``resample_poly``'s default Kaiser filter leaves it
at -31 dB, keeps a 7 kHz tone at full amplitude (``resample_poly``: -0.25 dB),
and is about twice as fast. Both are linear-phase with the delay removed, so
an impulse lands on the same sample either way. The method used is recorded
in the ``waveform_resampling`` attribute.

Examples
--------
>>> import io
>>> from scipy.io import wavfile
>>> buf = io.BytesIO()
>>> wavfile.write(buf, 44100, np.array([0, 16384, -32768], dtype=np.int16))
>>> rate, x = read_wav(buf)
>>> rate, x.tolist()
(44100, [0.0, 0.5, -1.0])
>>> hop_length(16000, 0.01)
160
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from math import gcd
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
import xarray as xr

from .archives import open_zip
from .errors import FormatError, MissingFileError

__all__ = ["add_waveforms", "default_resampler", "hop_length", "read_wav", "sound_file_name"]

_COMMON_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000, 96000)
_RESAMPLERS = ("auto", "soxr", "scipy")


def add_waveforms(
    ds: xr.Dataset,
    source: str | os.PathLike,
    audio_fs: int = 44100,
    *,
    pre_stim_silence: float | None = None,
    resampler: str = "auto",
) -> xr.Dataset:
    """Return a copy of ``ds`` with ``waveform (stim, sample)`` float32 read from the sounds.

    Parameters
    ----------
    ds : xarray.Dataset
        A nat4xr Dataset (needs the ``stim`` and ``time`` dims and the ``dt``
        and ``pre_stim_silence`` attributes that a build records).
    source : path-like
        The release's ``wav/`` folder or ``wav.zip`` (members are read from the
        zip directly, nothing is extracted). Files are found by the stim id
        without ``STIM_`` (plus ``.wav`` when missing), an exact name first,
        else ignoring letter case; sub-folders are searched too.
    audio_fs : int
        Sample rate of ``waveform`` in Hz; ``audio_fs * dt`` must be a whole
        number (any multiple of 100 Hz for 10 ms bins: 16000, 44100, 48000).
    pre_stim_silence : float, optional
        Seconds of silence before each sound; defaults to
        ``ds.attrs['pre_stim_silence']``.
    resampler : {'auto', 'soxr', 'scipy'}
        How to convert files whose rate is not ``audio_fs``; ``'auto'`` is
        soxr when installed, else :func:`scipy.signal.resample_poly`.

    Returns
    -------
    xarray.Dataset
        A new Dataset (``ds`` is unchanged) with ``waveform (stim, sample)``,
        the ``sample`` coordinate (seconds from trial onset, float64, step
        ``1 / audio_fs``), and the attributes ``audio_fs``,
        ``waveform_alignment``, ``waveform_resampling`` and
        ``waveform_source``. A ``waveform`` already present is replaced.

    Raises
    ------
    ValueError
        ``audio_fs * dt`` is not a whole number (the message suggests valid
        rates), or the Dataset lacks ``dt``/``pre_stim_silence``.
    MissingFileError
        ``source`` or a sound file is missing (the message names the sounds,
        the folder or zip, and how to fetch them).
    FormatError
        ``source`` is not a readable zip or a sound file is not a readable WAV.

    Examples
    --------
    >>> import tempfile
    >>> from scipy.io import wavfile
    >>> from nat4xr.synthetic import random_dataset
    >>> ds = random_dataset(n_est=2, n_val=1, n_neurons=2, n_time=150)
    >>> ds = ds.assign_attrs(pre_stim_silence=0.25)
    >>> folder = Path(tempfile.mkdtemp())
    >>> click = np.zeros(44100, np.int16)
    >>> click[441] = 32767  # 10 ms into the sound
    >>> for stim in ds.stim.values:
    ...     wavfile.write(folder / sound_file_name(stim), 44100, click)
    >>> wds = add_waveforms(ds, folder, audio_fs=16000)
    >>> wds["waveform"].dims, wds["waveform"].shape == (3, 150 * 160)
    (('stim', 'sample'), True)
    >>> float(wds["waveform"][0].idxmax())  # 0.25 s of silence + 10 ms
    0.26
    """
    fs = _check_rate(audio_fs)
    dt = _dt_of(ds)
    hop = hop_length(fs, dt)
    pre = ds.attrs.get("pre_stim_silence") if pre_stim_silence is None else pre_stim_silence
    if pre is None:
        raise ValueError(
            "the Dataset has no 'pre_stim_silence' attribute (seconds of silence before each "
            "sound); build it with nat4xr.open_nat4 or pass pre_stim_silence="
        )
    method = _check_resampler(resampler)
    n_samples = ds.sizes["time"] * hop
    offset = round(float(pre) * fs)
    if not 0 <= offset <= n_samples:
        raise ValueError(
            f"pre_stim_silence={pre} s puts the sound at sample {offset}, outside the "
            f"{n_samples}-sample trial"
        )
    stims = [str(s) for s in ds["stim"].values]
    out = np.zeros((len(stims), n_samples), dtype=np.float32)
    rates: set[int] = set()
    with _open_sounds(source) as sounds:
        members = sounds.resolve(stims)
        for row, member in enumerate(members):
            rate, sound = read_wav(io.BytesIO(sounds.read(member)), name=sounds.label(member))
            rates.add(rate)
            sound = _resample(sound, rate, fs, method)
            n = min(sound.shape[0], n_samples - offset)
            out[row, offset : offset + n] = sound[:n]
        source_name = sounds.root.name

    ds = ds.drop_vars([v for v in ("waveform", "sample") if v in ds.variables])
    sample = xr.Variable(
        "sample",
        np.arange(n_samples) / fs,
        attrs={"units": "s", "long_name": "time from trial onset", "audio_fs": fs},
    )
    wave = xr.Variable(
        ("stim", "sample"),
        out,
        attrs={
            "long_name": "sound waveform",
            "units": "full scale (-1 to 1)",
            "audio_fs": fs,
            "hop": hop,
            "sound_offset": offset,
        },
    )
    ds = ds.assign_coords(sample=sample).assign(waveform=wave)
    converted = sorted(r for r in rates if r != fs)
    return ds.assign_attrs(
        audio_fs=fs,
        waveform_alignment=(
            f"each sound starts at sample {offset} (pre_stim_silence {float(pre):g} s x "
            f"{fs} Hz) of a zero buffer of {n_samples} samples ({ds.sizes['time']} time bins "
            f"x hop {hop}); sample k is at k / audio_fs s from trial onset, so sample "
            f"k * {hop} starts time bin k; audio past the buffer's end is cut; stereo is "
            "averaged to mono; integers are scaled to [-1, 1]"
        ),
        waveform_resampling=(
            f"{_describe(method)}: {', '.join(map(str, converted))} Hz -> {fs} Hz"
            if converted
            else "none"
        ),
        waveform_source=source_name,
    )


def hop_length(audio_fs: int, dt: float) -> int:
    """Audio samples per time bin, ``audio_fs * dt``; ValueError unless it is a whole number.

    Examples
    --------
    >>> hop_length(44100, 0.01)
    441
    >>> hop_length(22050, 0.01)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: audio_fs=22050 Hz with dt=0.01 s gives 220.5 audio samples ... 22000 or 22100 ...
    """
    fs = _check_rate(audio_fs)
    if not dt > 0:
        raise ValueError(f"dt must be a positive number of seconds, got {dt!r}")
    exact = fs * dt
    hop = round(exact)
    if hop >= 1 and abs(exact - hop) <= 1e-9 * exact:
        return int(hop)
    step = Fraction(dt).limit_denominator(1_000_000).denominator  # smallest valid rate
    below, above = (fs // step) * step, (fs // step + 1) * step
    near = " or ".join(str(r) for r in (below, above) if r > 0)
    common = [str(r) for r in _COMMON_RATES if r % step == 0]
    raise ValueError(
        f"audio_fs={fs} Hz with dt={dt:g} s gives {exact:g} audio samples per time bin, not a "
        f"whole number: choose a multiple of {step} Hz, e.g. {near}"
        + (f" (or {', '.join(common)})" if common else "")
    )


def sound_file_name(stim: str) -> str:
    """The WAV file name of a stimulus: the epoch name without ``STIM_``, ending in ``.wav``.

    Examples
    --------
    >>> sound_file_name("STIM_00cat172_rec1_geese_excerpt1.wav")
    '00cat172_rec1_geese_excerpt1.wav'
    >>> sound_file_name("STIM_cat1")
    'cat1.wav'
    """
    name = stim[len("STIM_") :] if stim.startswith("STIM_") else stim
    return name if name.lower().endswith(".wav") else f"{name}.wav"


def read_wav(
    file: str | os.PathLike | IO[bytes], name: str | None = None
) -> tuple[int, np.ndarray]:
    """Read a WAV file as ``(rate, float32 mono samples in [-1, 1])``.

    8-bit (unsigned), 16-, 24-, 32- and 64-bit integer PCM are scaled by their
    full-scale value; float files are kept as they are. Several channels are
    averaged.

    Parameters
    ----------
    file : path-like or binary file object
    name : str, optional
        How to name the file in error messages (defaults to ``file``).

    Returns
    -------
    rate : int
    samples : ndarray of float32, shape (n,)

    Raises
    ------
    FormatError
        The file is not a WAV that scipy can read.

    Examples
    --------
    >>> from scipy.io import wavfile
    >>> buf = io.BytesIO()
    >>> wavfile.write(buf, 8000, np.array([[0, 255], [128, 128]], dtype=np.uint8))
    >>> read_wav(buf)
    (8000, array([-0.00390625,  0.        ], dtype=float32))
    """
    from scipy.io import wavfile  # imported here: scipy.io costs ~0.4 s at `import nat4xr`

    label = name or str(file)
    try:
        with warnings.catch_warnings():
            # metadata chunks (LIST, cue, ...) are skipped with a warning that says nothing useful
            warnings.simplefilter("ignore", wavfile.WavFileWarning)
            rate, data = wavfile.read(file)
    except (ValueError, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise MissingFileError(f"{label}: not found") from exc
        raise FormatError(f"{label}: not a readable WAV file ({exc})") from exc
    kind = data.dtype
    if data.ndim == 2:
        # averaging in float64 is exact for every integer width before the one rounding below
        data = data.mean(axis=1, dtype=np.float64)
    if kind == np.uint8:
        samples = data.astype(np.float32)
        samples -= np.float32(128.0)
        samples /= np.float32(128.0)
    elif kind.kind == "i":
        # 24-bit PCM comes back left-justified in int32, so int32's full scale fits it too
        samples = data.astype(np.float32)
        samples /= np.float32(-np.iinfo(kind).min)
    else:
        samples = np.asarray(data, dtype=np.float32)
    return int(rate), samples


def default_resampler() -> str:
    """``'soxr'`` when the soxr package is importable, else ``'scipy'``.

    Examples
    --------
    >>> default_resampler() in ("soxr", "scipy")
    True
    """
    try:
        import soxr  # noqa: F401
    except ImportError:
        return "scipy"
    return "soxr"


# -- helpers ------------------------------------------------------------------------


def _check_rate(audio_fs: Any) -> int:
    numeric = (int, float, np.integer, np.floating)
    if isinstance(audio_fs, bool) or not isinstance(audio_fs, numeric):
        raise TypeError(f"audio_fs must be a whole number of Hz, got {audio_fs!r}")
    if not float(audio_fs).is_integer() or audio_fs <= 0:
        raise ValueError(f"audio_fs must be a positive whole number of Hz, got {audio_fs!r}")
    return int(audio_fs)


def _dt_of(ds: xr.Dataset) -> float:
    if "time" not in ds.sizes:
        raise ValueError("the Dataset has no 'time' dimension; is it a nat4xr Dataset?")
    if "dt" in ds.attrs:
        return float(ds.attrs["dt"])
    if ds.sizes["time"] > 1:
        return float(ds["time"].values[1] - ds["time"].values[0])
    raise ValueError("the Dataset has no 'dt' attribute; build it with nat4xr.open_nat4")


def _check_resampler(resampler: str) -> str:
    if resampler not in _RESAMPLERS:
        raise ValueError(f"resampler must be one of {_RESAMPLERS}, got {resampler!r}")
    if resampler == "auto":
        return default_resampler()
    if resampler == "soxr" and default_resampler() != "soxr":
        raise ImportError("resampler='soxr' needs the soxr package: pip install soxr")
    return resampler


def _describe(method: str) -> str:
    if method == "soxr":
        import soxr

        return f"soxr {getattr(soxr, '__version__', '')} VHQ".replace("  ", " ")
    return "scipy.signal.resample_poly (Kaiser window)"


def _resample(x: np.ndarray, rate: int, fs: int, method: str) -> np.ndarray:
    """``x`` at ``rate`` Hz -> ``fs`` Hz, delay-compensated, float32."""
    if rate == fs:
        return x
    if method == "soxr":
        import soxr

        return np.asarray(soxr.resample(x, rate, fs, quality="VHQ"), dtype=np.float32)
    from scipy.signal import resample_poly

    g = gcd(rate, fs)
    return resample_poly(x, fs // g, rate // g).astype(np.float32, copy=False)


class _Sounds:
    """The WAV files of a ``wav/`` folder or ``wav.zip``, indexed by file name."""

    def __init__(self, root: Path, names: list[str], zf: zipfile.ZipFile | None):
        self.root = root
        self._zip = zf
        self._exact: dict[str, str] = {}
        self._folded: dict[str, list[str]] = {}
        # shallowest first: a stray copy deeper down never shadows the real file
        for member in sorted(names, key=lambda m: (m.count("/"), m)):
            base = PurePosixPath(member).name
            self._exact.setdefault(base, member)
            folded = self._folded.setdefault(base.lower(), [])
            if not any(PurePosixPath(m).name == base for m in folded):
                folded.append(member)

    def resolve(self, stims: list[str]) -> list[str]:
        """The member of every stim, in order; raises listing every missing sound."""
        members, missing = [], []
        for stim in stims:
            want = sound_file_name(stim)
            member = self._exact.get(want)
            if member is None:
                candidates = self._folded.get(want.lower(), [])
                if len(candidates) > 1:
                    raise FormatError(
                        f"{self.root}: several files match {want!r} when letter case is "
                        f"ignored and none matches exactly: {', '.join(candidates)}"
                    )
                member = candidates[0] if candidates else None
            if member is None:
                missing.append(want)
            else:
                members.append(member)
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise MissingFileError(
                f"{self.root}: no sound file for {len(missing)} of {len(stims)} stims "
                f"(looked for {shown}, ignoring letter case). Pass download=True with "
                "waveform=True (or run `nat4xr fetch AREA --wav`) to fetch the sounds"
            )
        return members

    def read(self, member: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(member)
        return (self.root / member).read_bytes()

    def label(self, member: str) -> str:
        return f"{self.root}:{member}" if self._zip is not None else str(self.root / member)


def _is_sound(parts: tuple[str, ...]) -> bool:
    return (
        parts[-1].lower().endswith(".wav")
        and not parts[-1].startswith("._")
        and "__MACOSX" not in parts
    )


@contextmanager
def _open_sounds(source: str | os.PathLike) -> Iterator[_Sounds]:
    root = Path(source)
    if root.is_dir():
        names = [
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if _is_sound(p.relative_to(root).parts) and p.is_file()
        ]
        yield _Sounds(root, names, None)
        return
    if not root.is_file():
        raise MissingFileError(
            f"{root}: the source sounds (wav/ folder or wav.zip) not found. Pass download=True "
            "with waveform=True (or run `nat4xr fetch AREA --wav`) to fetch them"
        )
    with open_zip(root) as zf:
        names = [
            i.filename
            for i in zf.infolist()
            if not i.is_dir() and _is_sound(PurePosixPath(i.filename).parts)
        ]
        yield _Sounds(root, names, zf)
