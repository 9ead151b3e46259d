"""SQLite's errors as mindloop's: a damaged file is :class:`StoreCorrupt`, a full disk :class:`DiskFull`.

:func:`write_failure` maps a failed write's :class:`sqlite3.Error` by its
primary result code; :func:`damaged_message` is the one message of a damaged
file (it names the file, the damage and ``mindloop doctor --repair``).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from mindloop.graph.errors import DiskFull, GraphError, StoreCorrupt

__all__ = ["damaged_message", "write_failure"]

_REPAIR_HINT = "run `mindloop doctor --repair` to back the file up and recover what can be read"


def damaged_message(path: Path, problem: str) -> str:
    """The message of :class:`StoreCorrupt` for a damaged SQLite file: the file, the damage, what to do."""
    return f"{path} is damaged: {problem}; {_REPAIR_HINT}"


def write_failure(path: Path, error: sqlite3.Error) -> GraphError | None:
    """The mindloop error for a failed SQLite write, or None when it is not about the disk or the file.

    SQLite reports ENOSPC as SQLITE_FULL and EFBIG (the file-size limit) as
    SQLITE_IOERR; the message says which of the two the process is up against.
    """
    code = getattr(error, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return StoreCorrupt(damaged_message(path, str(error)))
    if primary not in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
        return None
    facts = []
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if soft != resource.RLIM_INFINITY:
            facts.append(f"the file-size limit (ulimit -f) is {soft} bytes")
    except (ImportError, OSError, ValueError):  # pragma: no cover - no resource module on this platform
        pass
    try:
        free = shutil.disk_usage(path.parent).free
        facts.append(f"{free / 2**20:.1f} MiB free on its disk")
    except OSError:  # pragma: no cover - the folder vanished
        pass
    what = "disk full or file too large" if primary == sqlite3.SQLITE_FULL else \
        "disk full, file too large, or a failing device (an I/O error)"
    return DiskFull(f"cannot write {path}: {what} (SQLite: {error}; {', '.join(facts) or 'no more facts'}); "
                    "the call was rolled back and nothing of it was written")
