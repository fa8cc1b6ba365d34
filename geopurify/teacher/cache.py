"""On-disk cache of per-scene teacher embeddings (`cached_teacher`).

Teacher embeddings are a deterministic function of the scene and the teacher, computed once for
training's many epochs. The key hashes the scene's content (`geopurify.data.fingerprint`), the
teacher's name and plain settings (`teacher_key`), the fingerprint of the scene's files and of the
teacher checkpoint, and the stored precision: `teacher.cache_dtype`, float16 by default; float32
keeps the teacher's exact values, as the reference code, which caches nothing, uses them. Rows are
re-normalised after the round trip, identically on every call, and what comes back is always the
value as read back from disk. An unreadable or misshapen cache file is recomputed with a warning.
`teacher.cache_max_gb` caps the directory by least-recently-used eviction (`geopurify.diskcache`,
as for the lift cache); each write logs the scene's bytes and the cache's size.

Layout: <cache_dir>/teacher/<scene>.<key>.pt.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from geopurify.data.fingerprint import cache_key, scene_files, scene_fingerprint
from geopurify.diskcache import after_write, cap_bytes, read_cached
from geopurify.io import file_fingerprint, load_torch_file, save_torch
from geopurify.schema import check_value

log = logging.getLogger(__name__)


def teacher_key(teacher) -> dict:
    """What identifies a teacher's output: its name, stand-in flag, dimension and its plain
    settings (instance attributes that are numbers, strings or containers of them, e.g. the
    geometric teacher's scales and weights or Sonata's checkpoint path), minus `chunk`."""

    def plain(v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return True
        if isinstance(v, (list, tuple)):
            return all(plain(x) for x in v)
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        return isinstance(v, Path)

    settings = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in sorted(vars(teacher).items())
        if k != "chunk" and not k.startswith("_") and plain(v)
    }
    return {
        "name": teacher.name,
        "stand_in": bool(getattr(teacher, "stand_in", False)),
        "dim": int(getattr(teacher, "dim", 0) or 0),
        "settings": settings,
    }


CACHE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def _cache_dtype(dtype: str) -> torch.dtype:
    check_value("teacher.cache_dtype", dtype)
    return CACHE_DTYPES[dtype]


def teacher_cache_path(scene, teacher, cache_dir: str | Path, dtype: str = "float16") -> Path:
    _cache_dtype(dtype)
    files = scene_files(scene, frames=False) + [getattr(teacher, "ckpt", None)]
    key = cache_key(
        {
            "scene": scene_fingerprint(scene),
            "teacher": teacher_key(teacher),
            "files": file_fingerprint(files),
            "dtype": dtype,
        }
    )
    return Path(cache_dir) / "teacher" / f"{scene.name}.{key}.pt"


def _to_unit_float(feat: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(feat.float(), dim=1)


def _read_teacher(path: Path, n: int, dtype: torch.dtype) -> torch.Tensor:
    feat = load_torch_file(path, "teacher feature cache")["feat"]
    if not isinstance(feat, torch.Tensor) or feat.dtype != dtype or feat.ndim != 2 or feat.shape[0] != n:
        raise ValueError(f"teacher features of shape {tuple(getattr(feat, 'shape', ()))}, expected ({n}, D) {dtype}")
    if not torch.isfinite(feat).all():
        raise ValueError("non-finite teacher features")
    return _to_unit_float(feat)


def cached_teacher(
    scene, teacher, cache_dir: str | Path, dtype: str = "float16", max_gb: float | None = None
) -> torch.Tensor:
    """(N, D) float32 unit teacher embeddings of `scene` (Teacher.embed), cached as `dtype`
    ("float16", or "float32": `teacher.cache_dtype`) in a directory capped at `max_gb`
    (`teacher.cache_max_gb`; None or 0: no cap).

    Rows are re-normalised after the round trip through the cache, identically on every call.
    """
    torch_dtype = _cache_dtype(dtype)
    max_bytes = cap_bytes("teacher.cache_max_gb", max_gb)
    path = teacher_cache_path(scene, teacher, cache_dir, dtype)
    cached = read_cached(path, lambda: _read_teacher(path, scene.n_points, torch_dtype), "teacher cache")
    if cached is not None:
        return cached
    label = f"{teacher.name} (offline stand-in)" if getattr(teacher, "stand_in", False) else teacher.name
    log.info("teacher %s on %s -> %s (%s)", label, scene.name, path, dtype)
    feat = torch.as_tensor(teacher.embed(scene)).detach().float().cpu()
    if feat.ndim != 2 or feat.shape[0] != scene.n_points:
        raise RuntimeError(f"teacher {teacher.name} returned shape {tuple(feat.shape)} for {scene.n_points} points")
    stored = feat.to(torch_dtype)
    save_torch(
        path,
        {
            "feat": stored,
            "teacher": teacher.name,
            "stand_in": bool(getattr(teacher, "stand_in", False)),
            "scene": scene.name,
        },
    )
    after_write(path, ".pt", max_bytes, "teacher", scene.name)
    return _to_unit_float(stored)
