"""Byte flips and truncations injected into a cache file, with each outcome classified.

Used by ``tests/test_integrity.py``; run directly for the counts in
docs/reliability.md::

    python tests/faultinjection.py --cases 100 --seed 0     # seeded flips per region
    python tests/faultinjection.py --mode index             # every byte of the chunk index
    python tests/faultinjection.py --mode metadata          # every byte of the metadata
    python tests/faultinjection.py --mode file --flips 10000 --seed 0   # anywhere

Every case copies a freshly written cache file, damages the copy, then opens
it with :func:`nat4xr.cachefile.open_cache` and loads everything, in a forked
child process under a watchdog (:class:`Watchdog`: a crash or a hang is
seen, not suffered, and the child is replaced). Outcomes:

- ``identical``: every value, coordinate and attribute as written;
- ``error at open`` / ``error at read``: a :class:`~nat4xr.errors.CacheError`
  naming the file (``open_nat4`` rebuilds on the first);
- ``WRONG``: different values without an error (must never happen);
- ``bare <Type>``: another exception type reached the caller;
- ``crash`` / ``hang``: the child died or took over ``timeout`` (60 s) seconds.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

import nat4xr
from nat4xr.cachefile import open_cache, write_cache
from nat4xr.cachefile.trailer import FOOT, read_trailer
from nat4xr.errors import CacheError

REGIONS = (
    "raw chunks",
    "compressed chunks",
    "chunk index",
    "coordinates",
    "attributes",
    "HDF5 metadata",
)


def sample_dataset() -> xr.Dataset:
    """A small Dataset with est (compressed) and val (unfiltered) sounds, text and bool coords."""
    return nat4xr.synthetic.random_dataset(n_est=8, n_val=3, n_neurons=12, n_time=20, seed=2)


def regions(path: Path) -> dict[str, list[tuple[int, int]]]:
    """Byte ranges ``[start, end)`` of each region of a cache file.

    ``chunk index``: the trailer (description, chunk tables, footer);
    ``HDF5 metadata``: every byte no other region claims (superblock, object
    headers, B-trees, heaps).
    """
    out: dict[str, list[tuple[int, int]]] = {name: [] for name in REGIONS}
    data = path.read_bytes()
    trailer = read_trailer(path)
    hdf5_size = FOOT.unpack_from(data, len(data) - FOOT.size)[2]
    out["chunk index"].append((hdf5_size, len(data)))
    for index in trailer.index.values():
        for off, n, comp, stored in zip(
            index.offset.ravel(),
            index.nbytes.ravel(),
            index.compressed.ravel(),
            index.stored.ravel(),
        ):
            if stored:
                kind = "compressed chunks" if comp else "raw chunks"
                out[kind].append((int(off), int(off + n)))
    with open_cache(path, chunks=None) as ds:
        texts = [str(v) for v in ds.attrs.values() if isinstance(v, str) and len(str(v)) > 6]
    with h5py.File(path, "r") as f:

        def visit(name: str, obj: object) -> None:
            if not isinstance(obj, h5py.Dataset) or obj.chunks is not None:
                return
            start = obj.id.get_offset()
            if start is None:
                return
            out["coordinates"].append((int(start), int(start + obj.id.get_storage_size())))

        f.visititems(visit)
    for text in texts:
        raw = text.encode()
        at = data.find(raw)
        if at >= 0:
            out["attributes"].append((at, at + len(raw)))
    taken = np.zeros(len(data), bool)
    for ranges in out.values():
        for a, b in ranges:
            taken[a:b] = True
    free = np.flatnonzero(~taken)
    breaks = np.flatnonzero(np.diff(free) != 1) + 1
    for run in np.split(free, breaks):
        if len(run):
            out["HDF5 metadata"].append((int(run[0]), int(run[-1]) + 1))
    return out


def region_of(where: dict[str, list[tuple[int, int]]], offset: int) -> str:
    """The region holding byte ``offset``."""
    for name, ranges in where.items():
        if any(a <= offset < b for a, b in ranges):
            return name
    raise ValueError(f"byte {offset} is in no region")


def classify(path: Path, reference: xr.Dataset) -> str:
    """Open and load ``path``; the outcome as one of the module's labels."""
    try:
        ds = open_cache(path, chunks=None)
    except CacheError as exc:
        return "error at open" if str(path) in str(exc) else "CacheError without the file"
    try:
        with ds:
            loaded = ds.load()
    except CacheError as exc:
        return "error at read" if str(path) in str(exc) else "CacheError without the file"
    if loaded.identical(reference):
        return "identical"
    return "WRONG"


class Watchdog:
    """A forked child that classifies case after case; a hang or a crash is an outcome.

    Forking once per case costs ~50 ms, classifying a case ~2 ms: one child
    serves every case until it hangs (killed after ``timeout`` seconds) or
    dies, and a fresh one is forked for the next case.
    """

    def __init__(self, reference: xr.Dataset, timeout: float = 60.0) -> None:
        self.reference = reference
        self.timeout = timeout
        self.pid: int | None = None

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        to_child, self._send = os.pipe()
        self._receive, from_child = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one path per line in, one label per line out
            os.close(self._send)
            os.close(self._receive)
            with os.fdopen(to_child, "r") as commands:
                for line in commands:
                    try:
                        label = classify(Path(line.rstrip("\n")), self.reference)
                    except BaseException as exc:  # anything that is not a CacheError
                        label = f"bare {type(exc).__name__}: {str(exc)[:80]}"
                    os.write(from_child, (label.replace("\n", " ") + "\n").encode())
            os._exit(0)
        os.close(to_child)
        os.close(from_child)
        self.pid = pid

    def classify(self, path: Path) -> str:
        """:func:`classify` of ``path`` in the child."""
        if self.pid is None:
            self._start()
        os.write(self._send, f"{path}\n".encode())
        reply = b""
        deadline = time.monotonic() + self.timeout
        while not reply.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._receive], [], [], max(0.0, left))
            if not ready:
                os.kill(self.pid, signal.SIGKILL)
                self.close()
                return "hang"
            piece = os.read(self._receive, 4096)
            if not piece:  # the child died
                _, status = os.waitpid(self.pid, 0)
                os.close(self._send)
                os.close(self._receive)
                self.pid = None
                if os.WIFSIGNALED(status):
                    return f"crash (signal {os.WTERMSIG(status)})"
                return "crash (no result)"
            reply += piece
        return reply.decode().strip()

    def close(self) -> None:
        """End the child (if any) and close the pipes."""
        if self.pid is None:
            return
        os.close(self._send)  # a live child's loop ends at the end of its input
        os.close(self._receive)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:  # already reaped
            pass
        self.pid = None


def prepare(workdir: Path) -> tuple[Path, xr.Dataset, dict[str, list[tuple[int, int]]]]:
    """A freshly written sample cache, the Dataset it reads back as, and its regions."""
    original = write_cache(sample_dataset(), workdir / "original.nc")
    with open_cache(original, chunks=None) as ds:
        reference = ds.load()
    return original, reference, regions(original)


def flipped(original: bytes, target: Path, offset: int, xor: int) -> Path:
    """``target``: a new file of ``original`` with byte ``offset`` XOR-ed with ``xor``."""
    data = bytearray(original)
    data[offset] ^= xor
    fresh = target.with_suffix(".new")
    fresh.write_bytes(bytes(data))
    os.replace(fresh, target)  # a new inode every case: no library sees a stale file
    return target


def other_value(offset: int) -> int:
    """A deterministic XOR value per byte in 1..255, never 0x80 (that one is tried apart)."""
    value = (offset * 97 + 31) % 255 + 1
    return 0x7F if value == 0x80 else value


def run(
    cases: int, seed: int, workdir: Path, timeout: float = 60.0
) -> dict[str, collections.Counter]:
    """``cases`` byte flips per region plus ``cases`` truncations; outcome counts per kind."""
    original, reference, where = prepare(workdir)
    data = original.read_bytes()
    rng = np.random.default_rng(seed)
    counts: dict[str, collections.Counter] = {}
    target = workdir / "damaged.nc"
    with Watchdog(reference, timeout) as child:
        for region in REGIONS:
            ranges = where[region]
            counts[region] = collections.Counter()
            if not ranges:
                continue
            lengths = np.array([b - a for a, b in ranges], dtype=float)
            for _ in range(cases):
                a, b = ranges[rng.choice(len(ranges), p=lengths / lengths.sum())]
                offset = int(rng.integers(a, b))
                flipped(data, target, offset, int(rng.integers(1, 256)))
                counts[region][child.classify(target)] += 1
        counts["truncation"] = collections.Counter()
        fresh = target.with_suffix(".new")
        for _ in range(cases):
            shutil.copyfile(original, fresh)
            os.truncate(fresh, int(rng.integers(0, len(data))))
            os.replace(fresh, target)
            counts["truncation"][child.classify(target)] += 1
    return counts


def sweep(
    workdir: Path,
    region: str,
    stride: int = 1,
    sign: bool = True,
    timeout: float = 60.0,
    tail: int | None = None,
) -> collections.Counter:
    """Flip every ``stride``-th byte of ``region``: XOR 0x80 (if ``sign``) and :func:`other_value`.

    Deterministic: the same cases every run. ``tail``: the region's last bytes only.
    """
    original, reference, where = prepare(workdir)
    data = original.read_bytes()
    target = workdir / "damaged.nc"
    offsets = [o for a, b in where[region] for o in range(a, b)][-(tail or 0) :][::stride]
    cases = [(o, x) for o in offsets for x in ((0x80,) if sign else ()) + (other_value(o),)]
    counts: collections.Counter = collections.Counter()
    with Watchdog(reference, timeout) as child:
        for offset, xor in cases:
            counts[child.classify(flipped(data, target, offset, xor))] += 1
    return counts


def random_flips(
    flips: int, seed: int, workdir: Path, timeout: float = 60.0
) -> dict[str, collections.Counter]:
    """``flips`` single-byte flips anywhere in the file (uniform offset and value), by region."""
    original, reference, where = prepare(workdir)
    data = original.read_bytes()
    rng = np.random.default_rng(seed)
    target = workdir / "damaged.nc"
    counts: dict[str, collections.Counter] = {name: collections.Counter() for name in REGIONS}
    with Watchdog(reference, timeout) as child:
        for _ in range(flips):
            offset = int(rng.integers(0, len(data)))
            label = child.classify(flipped(data, target, offset, int(rng.integers(1, 256))))
            counts[region_of(where, offset)][label] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mode",
        default="regions",
        choices=["regions", "index", "metadata", "file"],
        help="regions: --cases seeded flips per region and truncations; index: every byte "
        "of the chunk index (XOR 0x80 and one other value); metadata: every --stride-th "
        "byte of the HDF5 metadata, coordinates and attributes; file: "
        "--flips seeded flips over the whole file",
    )
    parser.add_argument("--cases", type=int, default=100, help="cases per region")
    parser.add_argument("--flips", type=int, default=10_000, help="flips over the whole file")
    parser.add_argument("--stride", type=int, default=1, help="metadata: every n-th byte")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.mode == "regions":
            counts = run(args.cases, args.seed, Path(tmp))
        elif args.mode == "index":
            counts = {"chunk index": sweep(Path(tmp), "chunk index")}
        elif args.mode == "metadata":
            counts = {
                region: sweep(Path(tmp), region, stride=args.stride, sign=False)
                for region in ("HDF5 metadata", "coordinates", "attributes")
            }
        else:
            counts = random_flips(args.flips, args.seed, Path(tmp))
        elapsed = time.perf_counter() - t0
    print("| region | cases | outcomes |")
    print("|---|---|---|")
    for region, counter in counts.items():
        text = ", ".join(f"{k} {v}" for k, v in sorted(counter.items()))
        print(f"| {region} | {sum(counter.values())} | {text} |")
    print(json.dumps({k: dict(v) for k, v in counts.items()}), file=sys.stderr)
    print(f"{elapsed:.1f} s")


if __name__ == "__main__":
    main()
