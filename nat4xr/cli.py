"""The ``nat4xr`` command: fetch, build, inspect and clean up.

Examples
--------
>>> main(["cache", "--help"])  # doctest: +ELLIPSIS
usage: nat4xr cache [-h] {list,clear} ...
...
0
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._version import __version__
from .errors import Nat4Error

__all__ = ["main", "summary"]


def summary(ds, source: str | os.PathLike | None = None) -> str:
    """Plain-text facts about a nat4xr Dataset, one per line.

    Parameters
    ----------
    ds : xarray.Dataset
        A Dataset of the nat4xr contract (lazy is fine: only coordinates are read).
    source : path-like, optional
        Cache file to report (default: ``ds.encoding['source']`` when present).

    Examples
    --------
    >>> import nat4xr
    >>> print(summary(nat4xr.synthetic.random_dataset(n_est=4, n_val=2, n_neurons=3, seed=1)))
    ... # doctest: +NORMALIZE_WHITESPACE
    area       A1
    cells      3 (auditory 2)
    sounds     6 (est 4, val 2)
    coverage   0.889 of (sound, cell) pairs
    animals    ARM 3
    sites      1
    """
    subset = np.asarray(ds["subset"].values).astype(str)
    animals = np.asarray(ds["animal"].values).astype(str)
    names, counts = np.unique(animals[animals != ""], return_counts=True)
    sites = {s for s in np.asarray(ds["site"].values).astype(str) if s}
    coverage = np.asarray(ds["coverage"].values)
    lines = [
        ("area", str(ds.attrs.get("area", "?"))),
        ("cells", f"{ds.sizes['neuron']} (auditory {int(np.sum(ds['auditory'].values))})"),
        (
            "sounds",
            f"{ds.sizes['stim']} (est {int(np.sum(subset == 'est'))}, "
            f"val {int(np.sum(subset == 'val'))})",
        ),
        ("coverage", f"{coverage.mean() if coverage.size else 0.0:.3f} of (sound, cell) pairs"),
        ("animals", ", ".join(f"{n} {c}" for n, c in zip(names, counts)) or "unknown"),
        ("sites", str(len(sites))),
    ]
    source = source if source is not None else ds.encoding.get("source")
    if source is not None and Path(source).is_file():
        lines.append(("cache", f"{source} ({_size(Path(source).stat().st_size)})"))
    return "\n".join(f"{k:<10} {v}" for k, v in lines)


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


# ----------------------------------------------------------------------------- commands


def _cmd_fetch(args: argparse.Namespace) -> int:
    from .fetch import fetch

    root = fetch(args.area, path=args.path, wav=args.wav, progress=not args.quiet)
    print(root)
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from .opening import open_nat4

    ds = open_nat4(
        args.area,
        subset=args.subset,
        path=args.path,
        download=args.download,
        normalize=args.normalize,
        smooth_ms=args.smooth_ms,
        rebuild=args.rebuild,
        waveform=args.waveform,
        progress=not args.quiet,
    )
    print(summary(ds))
    ds.close()
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .cachefile import open_cache
    from .opening import open_nat4

    target = Path(args.target)
    if target.suffix == ".nc" or target.is_file():
        ds = open_cache(target)
    else:
        ds = open_nat4(args.target, subset=args.subset, path=args.path, progress=not args.quiet)
    print(summary(ds))
    ds.close()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .opening import open_demo

    ds = open_demo()
    print(summary(ds))
    if not args.no_png:
        png = _coverage_png(ds, Path(args.png))
        if png is not None:
            print(f"{'figure':<10} {png}")
    ds.close()
    return 0


def _coverage_png(ds, path: Path) -> Path | None:
    """Stim x neuron coverage image with the est|val boundary; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("nat4xr: matplotlib is not installed, no figure written", file=sys.stderr)
        return None
    accessor = getattr(ds, "nat4", None)
    if accessor is not None and hasattr(accessor, "plot_coverage"):
        ax = accessor.plot_coverage()
        fig = ax.figure
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.imshow(np.asarray(ds["coverage"].values).T, aspect="auto", interpolation="nearest",
                  cmap="Greys")  # fmt: skip
        n_est = int(np.sum(np.asarray(ds["subset"].values).astype(str) == "est"))
        ax.axvline(n_est - 0.5, color="tab:red", label="est | val")
        ax.set_xlabel("sound")
        ax.set_ylabel("cell")
        ax.set_title("coverage (black: recorded)")
        ax.legend(loc="upper right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _cmd_cache(args: argparse.Namespace) -> int:
    from .cachedir import cache_clear, cache_dir, cache_list

    if args.action == "list":
        entries = cache_list()
        print(f"cache folder {cache_dir()}")
        if not entries:
            print("no cache files")
        for e in entries:
            print(f"{e.area:<4} {e.subset:<4} {_size(e.size):>9}  {e.path}")
        return 0
    removed = cache_clear(area=args.area)
    print(f"removed {len(removed)} file(s) from {cache_dir()}")
    return 0


# ----------------------------------------------------------------------------- parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nat4xr",
        description="The NAT4 auditory-cortex dataset as a labeled, lazy xarray Dataset.",
    )
    parser.add_argument("--version", action="version", version=f"nat4xr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def area_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("area", choices=("A1", "PEG"), help="recording area")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--path", help="release folder (default: the nat4xr data folder)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("fetch", help="download and unpack an area's release files")
    area_arg(p)
    p.add_argument("--wav", action="store_true", help="also fetch the sound waveforms")
    common(p)
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("build", help="build (or reuse) an area's netCDF cache")
    area_arg(p)
    p.add_argument("--subset", choices=("all", "est", "val"), default="all")
    p.add_argument("--normalize", choices=("nems",), default=None,
                   help="scale as the published NEMS models did")  # fmt: skip
    p.add_argument("--smooth-ms", type=float, default=None, help="smoothing window (ms)")
    p.add_argument("--waveform", action="store_true", help="include the sound waveforms")
    p.add_argument("--download", action="store_true", help="fetch missing release files")
    p.add_argument("--rebuild", action="store_true", help="build again, replacing the cache")
    common(p)
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("info", help="summarise an area (built if needed) or a cache file")
    p.add_argument("target", metavar="AREA|FILE", help="'A1', 'PEG' or a cache .nc file")
    p.add_argument("--subset", choices=("all", "est", "val"), default="all")
    common(p)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="open the offline demo and draw its coverage")
    p.add_argument("--png", default="nat4xr_demo_coverage.png",
                   help="where to write the coverage figure (default: %(default)s)")  # fmt: skip
    p.add_argument("--no-png", action="store_true", help="do not write the figure")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("cache", help="list or delete netCDF cache files")
    cache_sub = p.add_subparsers(dest="action", metavar="{list,clear}", required=True)
    cache_sub.add_parser("list", help="list the cache files")
    clear = cache_sub.add_parser("clear", help="delete cache files")
    clear.add_argument("--area", choices=("A1", "PEG"), help="only this area's files")
    p.set_defaults(func=_cmd_cache)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one ``nat4xr: warning: ...`` line, without source lines."""
    print(f"nat4xr: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nat4xr`` command; returns the exit code.

    Examples
    --------
    >>> main(["--version"])  # doctest: +ELLIPSIS
    nat4xr ...
    0
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.func(args)
    except KeyboardInterrupt:
        print("nat4xr: interrupted", file=sys.stderr)
        return 130
    except (Nat4Error, ValueError, KeyError, OSError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"nat4xr: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
