"""Size caps for the on-disk feature caches: least-recently-used eviction by file time.

The lift and teacher caches (`geopurify.lift.cache`, `geopurify.teacher.cache`) keep one file per
scene and key; unbounded they grow to tens of GB on ScanNet val. Each takes a cap in GB
(`lift.cache_max_gb`, `teacher.cache_max_gb`; null or 0 = no cap). Recency is the file's mtime:
a cache read `touch`es its file (access times are unreliable on relatime / noatime mounts, and a
cache file's mtime means nothing else), and after each write `enforce_cap` deletes the oldest
files of that cache directory until the directory fits, never the file just written.

Several processes (ranks of one `val`, a training run beside it) may share a cache directory, so
every step tolerates a file that another process evicted meanwhile, and only finished cache files
count: the atomic writer's temporaries (`geopurify.io`, hidden `.<name>.tmp-...`) are never
counted nor deleted. Two processes evicting at once may each delete a file (the directory then
ends a little below the cap); a reader whose file vanished recomputes it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from geopurify.schema import check_value

log = logging.getLogger(__name__)

GB = 1 << 30


def cap_bytes(key: str, value) -> int:
    """The cap in bytes of config key `key` (GB; null or 0 = none -> 0), range-checked."""
    if value is None:
        return 0
    check_value(key, value)
    return int(float(value) * GB)


def touch(path: Path) -> None:
    """Mark a cache file as just used (its mtime = now); a file evicted meanwhile is ignored."""
    try:
        os.utime(path)
    except FileNotFoundError:
        pass


def read_cached(path: Path, read, what: str):
    """`read()` of the cache file `path`, the file marked as just used; None when there is no such
    file, when reading it fails (a warning: it is recomputed), or when another process evicted it
    while it was being read (logged). `what` names the cache in the log ("lift cache")."""
    if not path.exists():
        return None
    touch(path)
    try:
        return read()
    except Exception as e:  # our own cache: any failure to read a file means recompute it
        if path.exists():
            log.warning(
                "%s %s unusable (%s); recomputing", what, path, str(e).splitlines()[0] if str(e) else type(e).__name__
            )
        else:
            log.info("%s %s evicted by another process while being read; recomputing", what, path)
    return None


@dataclass(frozen=True)
class _Entry:
    mtime_ns: int
    size: int
    path: Path


def _entries(directory: Path, suffix: str) -> list[_Entry]:
    """The finished cache files `*<suffix>` of `directory` (no hidden temporaries), oldest first
    (ties by name, so every process sees one order)."""
    out = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return out
    for name in names:
        if name.startswith(".") or not name.endswith(suffix):
            continue
        path = directory / name
        try:
            st = path.stat()
        except FileNotFoundError:  # evicted by another process since the listing
            continue
        out.append(_Entry(st.st_mtime_ns, st.st_size, path))
    out.sort(key=lambda e: (e.mtime_ns, e.path.name))
    return out


@dataclass
class CacheUsage:
    """A cache directory after a write: its size and file count, what was evicted."""

    total_bytes: int
    n_files: int
    evicted: list[Path]
    evicted_bytes: int


def enforce_cap(directory: Path, suffix: str, max_bytes: int, keep: Path | None = None) -> CacheUsage:
    """Delete the least recently used cache files `*<suffix>` of `directory` until their total size
    is at most `max_bytes` (0: no cap, nothing deleted), never `keep` (the file just written)."""
    entries = _entries(Path(directory), suffix)
    total = sum(e.size for e in entries)
    evicted: list[Path] = []
    freed = 0
    if max_bytes > 0:
        for e in entries:
            if total <= max_bytes:
                break
            if keep is not None and e.path.name == Path(keep).name:
                continue
            try:
                e.path.unlink()
                evicted.append(e.path)
                freed += e.size
            except FileNotFoundError:  # another process evicted it first: its bytes are gone all the same
                pass
            total -= e.size
    return CacheUsage(total, len(entries) - len(evicted), evicted, freed)


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MB"


def after_write(path: Path, suffix: str, max_bytes: int, what: str, scene: str) -> CacheUsage:
    """Enforce the cap of `path`'s cache directory after writing `path`, and log (INFO) the bytes
    this scene's file takes, the cache's size and the evictions."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:  # evicted by another process already (a tiny cap)
        size = 0
    usage = enforce_cap(path.parent, suffix, max_bytes, keep=path)
    cap = "no cap" if max_bytes <= 0 else f"cap {max_bytes / GB:.2f} GB"
    log.info(
        "%s cache: %s wrote %s; cache now %s in %d files (%s)%s",
        what,
        scene,
        _mb(size),
        _mb(usage.total_bytes),
        usage.n_files,
        cap,
        f"; evicted {len(usage.evicted)} least recently used ({_mb(usage.evicted_bytes)})" if usage.evicted else "",
    )
    return usage
