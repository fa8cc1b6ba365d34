"""Atomic output: every file is written to a temporary sibling, then renamed into place; and the one
guarded torch file reader (`load_torch_file`).

A killed run therefore never leaves a file that looks complete. The temporary file is hidden
and named `.<name>.tmp-<host>-<pid>-<random><suffix>`; one left behind by a killed process (same
host, pid no longer running) is removed the next time the same file is written.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from geopurify.errors import InputError

log = logging.getLogger(__name__)

_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: keep its file
    return True


def remove_stale_temporaries(path: str | Path) -> int:
    """Delete temporary siblings of `path` left by killed processes of this host; their count."""
    path = Path(path)
    prefix = f".{path.name}.tmp-"
    pattern = re.compile(re.escape(prefix) + re.escape(_HOST) + r"-(\d+)-")
    removed = 0
    for tmp in path.parent.glob(glob.escape(prefix) + "*"):
        m = pattern.match(tmp.name)
        if m is None or int(m.group(1)) == os.getpid() or _pid_running(int(m.group(1))):
            continue
        try:
            tmp.unlink()
            removed += 1
        except FileNotFoundError:  # another process cleaned it first
            pass
        except OSError as e:
            log.debug("cannot remove stale %s: %s", tmp, e)
    if removed:
        log.info("removed %d partial file(s) of %s left by a killed run", removed, path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` if the block succeeds.

    `suffix` defaults to the final suffix of `path` so writers that infer format from the
    extension (PIL, numpy) keep working.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.tmp-{_HOST}-{os.getpid()}-",
        suffix=path.suffix if suffix is None else suffix,
        dir=path.parent,
    )
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_npy(path: str | Path, arr: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, arr)


def save_torch(path: str | Path, obj) -> None:
    """torch.save through an open file: the archive's inner folder is then torch's fixed "archive"
    rather than the temporary file's random name, so equal objects give byte-identical files."""
    import torch

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)


def load_torch_file(path: str | Path, what: str, problem: str | None = None, kind: type | None = None):
    """torch.load of `path` on the CPU with weights_only (no code in the file runs), for every torch
    file the package reads. A missing file (or a directory) -> InputError(path, "<what> not found");
    one torch cannot read (truncated, corrupt, foreign, pickled code; torch raises many types) ->
    InputError(path, "<problem> (<error type>: <its first line>)"), `problem` defaulting to "not a
    readable <what>"; with `kind`, a file holding another type -> "<what> must hold a <kind>"."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read is a bad file
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise InputError(
            path, f"{problem or f'not a readable {what}'} ({type(e).__name__}{': ' + first if first else ''})"
        ) from None
    if kind is not None and not isinstance(obj, kind):
        raise InputError(path, f"{what} must hold a {kind.__name__}, got {type(obj).__name__}")
    return obj


FINGERPRINT_HEAD = 1 << 16  # bytes of each file hashed by `file_fingerprint`


def file_fingerprint(paths) -> str:
    """Cheap content identity of input files, for cache keys: per file its path, size, mtime_ns and a
    hash of its first 64 KiB; a missing file is recorded as missing. Rewriting a file under the same
    path (re-exported features, a new checkpoint) changes it, while a cache hit costs one stat and one
    small read per file instead of hashing whole checkpoints and feature files. `None` entries are skipped."""
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        h.update(str(p).encode() + b"\0")
        try:
            st = p.stat()
            with open(p, "rb") as f:
                head = f.read(FINGERPRINT_HEAD)
        except OSError:
            h.update(b"missing\0")
            continue
        h.update(f"{st.st_size}|{st.st_mtime_ns}|".encode())
        h.update(hashlib.blake2b(head, digest_size=16).digest())
    return h.hexdigest()
