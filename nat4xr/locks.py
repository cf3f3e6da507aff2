"""Who holds a lock, and saying so instead of waiting in silence.

A process that takes one of nat4xr's file locks (a cache build, a fetch)
writes one line into the lock file: its PID, host and the time it took the
lock. Another process that finds the lock taken reads that line and warns
once, with a :class:`~nat4xr.errors.Nat4Warning`, before it waits: whose
turn it is waiting for, and since when. The line is advice for people, never
a lock itself (the lock is held through the operating system), so a stale
line is harmless.

Examples
--------
>>> import tempfile, filelock
>>> with tempfile.TemporaryDirectory() as tmp:
...     guard = filelock.FileLock(f"{tmp}/x.lock", timeout=1)
...     with guard:
...         record_owner(guard.lock_file)
...         print(describe_owner(guard.lock_file).startswith(f"PID {os.getpid()} on "))
True
"""

from __future__ import annotations

import os
import socket
import time
import warnings

import filelock

from .errors import Nat4Warning

__all__ = ["describe_owner", "record_owner", "wait_announced"]


def record_owner(lock_file: str | os.PathLike) -> None:
    """Write ``pid host unix-time`` into ``lock_file`` (call it while holding the lock).

    Best effort: a lock file that cannot be written is left as it is.
    """
    line = f"{os.getpid()} {socket.gethostname() or '?'} {time.time():.0f}\n"
    try:
        with open(lock_file, "r+", encoding="utf-8") as fh:
            fh.write(line)
            fh.truncate()
    except OSError:
        pass


def describe_owner(lock_file: str | os.PathLike) -> str:
    """``"PID 123 on host since 2026-12-05 15:02:11"`` from ``lock_file``, or a plain phrase."""
    try:
        with open(lock_file, encoding="utf-8") as fh:
            pid, host, since = fh.read(200).split()[:3]
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(float(since)))
        if host == socket.gethostname() and not _alive(int(pid)):
            raise ValueError("the recorded owner has ended: the holder did not record itself")
        return f"PID {int(pid)} on {host} since {when}"
    except (OSError, ValueError):
        return "another process (no owner recorded)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def wait_announced(lock: filelock.FileLock, what: str) -> None:
    """Warn once if ``lock`` is held by another process, naming it; do not take the lock.

    Call it just before acquiring ``lock`` the usual way. ``what`` says what
    the holder is doing (``"building /cache/A1-all-....nc"``).
    """
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        warnings.warn(
            f"waiting for {describe_owner(lock.lock_file)}, which is {what} "
            f"(lock {lock.lock_file}); if that process is gone, the lock frees itself",
            Nat4Warning,
            stacklevel=3,
        )
    except OSError:  # the caller's own acquire reports a lock file that cannot be made
        return
    else:
        lock.release()
