"""The writers of the release's files, one function per file.

The population recording (``.tgz``), the per-site spike times (a ``.zip`` of
``.tgz``), the per-cell table (CSV) and the sounds (``wav.zip``). Each file
is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import io
import json
import wave
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from ..files import atomic_path, remove_stale
from .constants import _FIELD, AUDIO_FS, FS_POP, FS_SITE, N_REPEATS, N_TIME, TRIAL_DURATION
from .formats import (
    _blocks,
    _format_floats,
    _format_twentieths,
    _sidecar,
    _TgzWriter,
    _trial_epochs,
    _value_table,
    _zipinfo,
)
from .layout import _Layout
from .responses import _Counts


def _replace_into(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temp file in the same folder; only a complete file gets the name.

    A release folder has one writer at a time (:func:`nat4xr.open_demo` holds a
    lock around it), so what a killed writer left is cleared first.
    """
    remove_stale(path)
    with atomic_path(path) as part, open(part, "wb") as fh:
        write(fh)


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc)


def _write_population(
    path: Path,
    area: str,
    layout: _Layout,
    counts: _Counts,
    spec: np.ndarray,
    est_stims: list[str],
    val_stims: list[str],
    rng: np.random.Generator,
    compresslevel: int,
    progress: bool,
) -> None:
    """Population recording: val sounds once (means of 20 repeats), then est sounds."""
    n_est, n_val, n_pop = len(est_stims), len(val_stims), layout.n_pop
    n_trials = n_val + n_est
    n_samples = n_trials * N_TIME
    rec = f"{area}_NAT4_ozgf.fs100.ch18"
    val_sum = counts.val[:, :n_pop].sum(axis=2, dtype=np.int16)  # (n_val, N, T), exact
    est_nan = np.isnan(counts.est_truth)
    max_tw = max(int(val_sum.max(initial=0)), 20 * int(counts.est.max(initial=0)))
    tables = (_value_table(max_tw, last=False)[0], _value_table(max_tw, last=True)[0])
    n_nan = int(est_nan.sum())
    resp_size = n_samples * n_pop * _FIELD - n_nan * (_FIELD - 4)

    def resp_chunks(step: int = 8):
        for lo in _progress(range(0, n_trials, step), -(-n_trials // step), "resp", progress):
            blocks = []
            for i in range(lo, min(lo + step, n_trials)):
                if i < n_val:
                    blocks.append(val_sum[i].T)
                else:
                    e = i - n_val
                    tw = 20 * counts.est[e, :n_pop].astype(np.int16)
                    tw[est_nan[e]] = -1
                    blocks.append(tw.T)
            yield _format_twentieths(np.concatenate(blocks), tables)

    order = list(range(n_est, n_est + n_val)) + list(range(n_est))
    names = val_stims + est_stims
    stim_rows = spec[order].transpose(0, 2, 1).reshape(n_samples, -1)
    mask = np.repeat([0.0, 1.0], [n_val * N_TIME, n_est * N_TIME])
    epochs = _trial_epochs(names, _blocks(n_trials, layout.sites, rng))
    signals = {
        "resp": (list(layout.cells), resp_size, resp_chunks()),
        "stim": ([str(f) for f in range(spec.shape[1])], None, _format_floats(stim_rows)),
        "mask_est": (["mask_est"], None, _format_floats(mask[:, None])),
    }

    def write(fh):
        tgz = _TgzWriter(fh, compresslevel)
        tgz.add_dir(rec)
        meta = {"area": area, "batch": 323 if area.upper() == "PEG" else 322, "fs": FS_POP}
        tgz.add_bytes(f"{rec}/{rec}.meta.json", json.dumps(meta).encode())
        for sig, (chans, size, data) in signals.items():
            tgz.add_bytes(
                f"{rec}/{rec}.{sig}.json",
                _sidecar(rec, sig, chans, FS_POP, n_samples, "RasterizedSignal"),
            )
            tgz.add_bytes(f"{rec}/{rec}.{sig}.epoch.csv", epochs)
            if size is None:
                tgz.add_bytes(f"{rec}/{rec}.{sig}.csv", data)
            else:
                tgz.add_stream(f"{rec}/{rec}.{sig}.csv", size, data)
        tgz.close()

    _replace_into(path, write)


def _site_recording(
    site: str,
    s: int,
    layout: _Layout,
    counts: _Counts,
    est_stims: list[str],
    val_stims: list[str],
    rng: np.random.Generator,
    compresslevel: int,
) -> bytes:
    """One site's NEMS recording at fs=1000 with point-process spike times, as tgz bytes."""
    import h5py

    units = layout.site_units(s)
    missing = set(layout.missing_est.get(s, np.empty(0)).tolist())
    trials = [(-1, e) for e in range(len(est_stims)) if e not in missing]
    trials += [(v, 0) for v in range(len(val_stims)) for _ in range(N_REPEATS)]
    trials = [trials[i] for i in rng.permutation(len(trials))]
    seen = np.zeros(len(val_stims), dtype=int)
    n_trials = len(trials)
    binned = np.empty((n_trials, len(units), N_TIME), dtype=np.uint8)
    names = []
    for k, (v, e) in enumerate(trials):
        if v < 0:
            binned[k] = counts.est[e, units]
            names.append(est_stims[e])
        else:  # repeats are numbered in the order they were played
            binned[k] = counts.val[v, units, seen[v]]
            seen[v] += 1
            names.append(val_stims[v])

    trial_idx, unit_idx, bin_idx = np.nonzero(binned)
    reps = binned[trial_idx, unit_idx, bin_idx]
    trial_idx, unit_idx, bin_idx = (np.repeat(a, reps) for a in (trial_idx, unit_idx, bin_idx))
    # spike inside its 1 ms sample, away from the edges so floor(t*1000) is exact
    ms = (
        trial_idx.astype(np.int64) * round(TRIAL_DURATION * FS_SITE)
        + bin_idx * (FS_SITE // FS_POP)
        + rng.integers(0, FS_SITE // FS_POP, size=len(bin_idx))
    )
    times = (ms + rng.uniform(0.1, 0.9, size=len(ms))) / FS_SITE
    n_samples = n_trials * round(TRIAL_DURATION * FS_SITE)
    late = np.flatnonzero(np.isin(units, layout.past_end))
    if len(late):
        n_late = rng.integers(1, 4, size=len(late))
        late_units = np.repeat(late, n_late)
        late_ms = n_samples + rng.integers(0, 500, size=len(late_units))
        unit_idx = np.concatenate([unit_idx, late_units])
        times = np.concatenate([times, (late_ms + 0.5) / FS_SITE])
    order = np.lexsort((times, unit_idx))
    per_unit = np.split(times[order], np.cumsum(np.bincount(unit_idx, minlength=len(units)))[:-1])

    chans = [layout.site_ids[u] for u in units]
    by_name = sorted(range(len(units)), key=lambda i: chans[i])
    h5 = io.BytesIO()
    with h5py.File(h5, "w") as f:
        for i in by_name:
            f.create_dataset(chans[i], data=per_unit[i].astype(np.float64))
    rec = f"{site}_NAT4_fs1000"
    epochs = _trial_epochs(names, _blocks(n_trials, [site] * 3, rng))
    out = io.BytesIO()
    tgz = _TgzWriter(out, compresslevel)
    tgz.add_dir(rec)
    tgz.add_bytes(f"{rec}/{rec}.meta.json", b"{}")
    sidecar = _sidecar(rec, "resp", [chans[i] for i in by_name], FS_SITE, n_samples, "PointProcess")
    tgz.add_bytes(f"{rec}/{rec}.resp.json", sidecar)
    tgz.add_bytes(f"{rec}/{rec}.resp.epoch.csv", epochs)
    tgz.add_bytes(f"{rec}/{rec}.resp.h5", h5.getvalue())
    tgz.close()
    return out.getvalue()


def _write_sites(
    path: Path,
    area: str,
    layout: _Layout,
    counts: _Counts,
    est_stims: list[str],
    val_stims: list[str],
    rng: np.random.Generator,
    compresslevel: int,
    progress: bool,
) -> None:
    """``<area>_single_sites.zip`` with one ``<site>_NAT4_fs1000.tgz`` per site."""
    folder = f"{area}_single_sites/"

    def write(fh):
        with zipfile.ZipFile(fh, "w") as zf:
            zf.writestr(_zipinfo(folder), b"")
            sites = list(enumerate(layout.sites))
            for s, site in _progress(sites, len(sites), "sites", progress):
                data = _site_recording(
                    site, s, layout, counts, est_stims, val_stims, rng, compresslevel
                )
                zf.writestr(_zipinfo(f"{folder}{site}_NAT4_fs1000.tgz"), data)

    _replace_into(path, write)


def _write_pred_csv(path: Path, layout: _Layout, rng: np.random.Generator) -> pd.DataFrame:
    """Per-cell prediction table, rows sorted by cell id (not population order).

    The cells of the ``'pred_respelled'`` trap are spelled as in their site
    file. Returns the table in population order, indexed by population id.
    """
    n = layout.n_pop
    ceiling = rng.uniform(0.3, 0.95, size=n)
    r_test = np.where(
        layout.auditory, ceiling * rng.uniform(0.3, 0.8, size=n), rng.normal(0, 0.05, n)
    )
    r_floor = np.abs(rng.normal(0.05, 0.02, size=n))
    se_test = rng.uniform(0.01, 0.05, size=n)
    ids = list(layout.cells)
    for cell in layout.traps["pred_respelled"]:
        i = ids.index(cell)
        ids[i] = layout.site_ids[i]
    table = pd.DataFrame(
        {
            "cellid": ids,
            "r_test": np.round(r_test, 6),
            "se_test": np.round(se_test, 6),
            "r_floor": np.round(r_floor, 6),
            "r_ceiling": np.round(ceiling, 6),
            "sig_auditory": layout.auditory,
        },
        index=pd.Index(layout.cells, dtype=object),
    )
    text = table.sort_values("cellid").to_csv(index=False, lineterminator="\n").encode()
    _replace_into(path, lambda fh: fh.write(text))
    return table


def _write_wav(path: Path, stims: list[str], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``wav.zip``: 1 s of 16-bit PCM per sound with one impulse; returns stem -> mono floats.

    A few file names differ from the epoch name in letter case, and a couple
    of files are stereo (left = s + d, right = s - d, so the mono mean is s).
    """
    n = len(stims)
    case_trap = set(rng.choice(n, size=min(n, max(1, n // 100 + 1)), replace=False).tolist())
    stereo = set(rng.choice(n, size=min(n, 2), replace=False).tolist())
    truth: dict[str, np.ndarray] = {}

    def write(fh):
        with zipfile.ZipFile(fh, "w") as zf:
            zf.writestr(_zipinfo("wav/"), b"")
            for i, stim in enumerate(stims):
                sound = stim[len("STIM_") :]
                stem = sound[: -len(".wav")] if sound.endswith(".wav") else sound
                if i in case_trap:
                    stem = stem.swapcase()
                mono = np.round(rng.normal(0, 600, size=AUDIO_FS)).clip(-3000, 3000)
                mono[rng.integers(0, AUDIO_FS)] = 30000  # the impulse
                if i in stereo:
                    d = np.round(rng.normal(0, 300, size=AUDIO_FS)).clip(-1000, 1000)
                    frames = np.stack([mono + d, mono - d], axis=1)
                else:
                    frames = mono[:, None]
                buf = io.BytesIO()
                with wave.open(buf, "wb") as w:
                    w.setnchannels(frames.shape[1])
                    w.setsampwidth(2)
                    w.setframerate(AUDIO_FS)
                    w.writeframes(frames.astype("<i2").tobytes())
                zf.writestr(_zipinfo(f"wav/{stem}.wav", zipfile.ZIP_DEFLATED), buf.getvalue())
                truth[stem] = (mono / 32768.0).astype("float32")

    _replace_into(path, write)
    return truth
