"""On-disk caches of per-scene lifted features and teacher embeddings.

Both are deterministic functions of the scene and a few settings, and both cost far more than
reading a file, so training (many epochs over few scenes) and evaluation compute them once.
The cache key hashes the scene's content (points, colours, frame poses) together with every
setting that changes the result, so a regenerated scene or a changed knob never reads a stale
file. Files are written atomically and stored in float16; what a function returns is always the
float16-rounded value as read back from disk, so a first (computing) call and a later (reading)
call give bit-identical tensors (training resumed from a checkpoint depends on that).
A cache file that cannot be read or has the wrong shape is our own broken file: we log a warning
and recompute it.

Layout: <cache_dir>/lift/<scene>.<key>.lift.pt, <cache_dir>/teacher/<scene>.<key>.pt.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from geopurify.io import save_torch

log = logging.getLogger(__name__)

_READ_ERRORS = Exception  # our own cache: any failure to read a file means recompute it


def scene_fingerprint(scene) -> str:
    """Hash of what a scene's lifted / teacher features depend on: points, colours, normals (their
    source; the array unless PCA), frame poses and intrinsics, image paths."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(scene.xyz, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(scene.rgb, dtype=np.uint8).tobytes())
    h.update(scene.normals_fingerprint())
    for f in scene.frames:
        h.update(np.ascontiguousarray(f.pose, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(f.intrinsic, dtype=np.float64).tobytes())
        h.update(f"{f.name}|{f.color_path}|{f.depth_path}|{f.label_path}|{f.depth_scale}".encode())
    return h.hexdigest()


def _key(obj) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


MEMORY_ONLY = ("chunk_points", "group_mb")  # lift keys that change memory use, not results


def lift_settings(cfg: dict) -> dict:
    """Every setting the lifted features depend on, read from the config alone (so a cache hit
    needs no VLM loaded): all `lift` keys (backend, checkpoint path, fusion, image size, ...) but
    the memory-only ones, the frame step, and for the simulated VLM its `vlm_sim` knobs and
    label set (it derives its features from the label set's prompts), as for consensus fusion."""
    lift = {k: v for k, v in cfg["lift"].items() if k not in MEMORY_ONLY}
    simulated = lift["vlm"] == "simulated"
    s = {"lift": lift, "frame_step": cfg["data"]["frame_step"]}
    if lift["fusion"] == "consensus" or simulated:
        s["label_set"] = cfg["data"]["label_set"]
    if simulated:
        s["vlm_sim"] = dict(cfg["vlm_sim"])
    return s


def lift_cache_path(scene, cfg: dict, cache_dir: str | Path) -> Path:
    key = _key({"scene": scene_fingerprint(scene), "settings": lift_settings(cfg)})
    return Path(cache_dir) / "lift" / f"{scene.name}.{key}.lift.pt"


def cached_lift(scene, cfg: dict, vlm, cache_dir: str | Path, device: str = "cpu"):
    """LiftResult of `scene` (lift.lift.lift_scene), read from the cache or computed and cached.

    `vlm` must be the backend `build_vlm(cfg)` gives (the cache key is read from `cfg`); it may
    also be a zero-argument callable returning it, called only on a cache miss, so that runs
    whose features are all cached never load the VLM. Features come back float32, as stored
    (float16-rounded) even on the computing call.
    """
    from geopurify.lift.lift import lift_scene, load_lifted, save_lifted

    path = lift_cache_path(scene, cfg, cache_dir)
    if path.exists():
        try:
            return load_lifted(path, n_points=scene.n_points)
        except _READ_ERRORS as e:
            log.warning("lift cache %s unusable (%s); recomputing", path, str(e).splitlines()[0] if str(e) else type(e).__name__)
    if callable(vlm) and not hasattr(vlm, "frame_features"):
        vlm = vlm()
    text_emb = None
    if cfg["lift"]["fusion"] == "consensus":
        from geopurify.data.labels import get_label_set
        from geopurify.vlm.text import text_embeddings

        text_emb = text_embeddings(vlm, get_label_set(cfg["data"]["label_set"]), cfg["lift"]["prompt_template"])
    log.info("lifting %s with %s (%s fusion) -> %s", scene.name, vlm.describe(), cfg["lift"]["fusion"], path)
    result = lift_scene(scene, vlm, cfg, text_emb=text_emb, device=device)
    save_lifted(path, result, {"vlm": vlm.name, "simulated": bool(vlm.simulated), "fusion": cfg["lift"]["fusion"],
                               "scene": scene.name})
    return load_lifted(path, n_points=scene.n_points, dim=vlm.dim)  # the float16-rounded value, as a later call reads it


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

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(teacher).items())
                if k != "chunk" and not k.startswith("_") and plain(v)}
    return {"name": teacher.name, "stand_in": bool(getattr(teacher, "stand_in", False)),
            "dim": int(getattr(teacher, "dim", 0) or 0), "settings": settings}


def teacher_cache_path(scene, teacher, cache_dir: str | Path) -> Path:
    key = _key({"scene": scene_fingerprint(scene), "teacher": teacher_key(teacher)})
    return Path(cache_dir) / "teacher" / f"{scene.name}.{key}.pt"


def _to_unit_float(feat16: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(feat16.float(), dim=1)


def _read_teacher(path: Path, n: int) -> torch.Tensor:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    feat = obj["feat"]
    if not isinstance(feat, torch.Tensor) or feat.dtype != torch.float16 or feat.ndim != 2 or feat.shape[0] != n:
        raise ValueError(f"teacher features of shape {tuple(getattr(feat, 'shape', ()))}, expected ({n}, D) float16")
    if not torch.isfinite(feat).all():
        raise ValueError("non-finite teacher features")
    return _to_unit_float(feat)


def cached_teacher(scene, teacher, cache_dir: str | Path) -> torch.Tensor:
    """(N, D) float32 unit teacher embeddings of `scene` (Teacher.embed), cached as float16.

    Rows are re-normalised after the float16 round trip, identically on every call.
    """
    path = teacher_cache_path(scene, teacher, cache_dir)
    if path.exists():
        try:
            return _read_teacher(path, scene.n_points)
        except _READ_ERRORS as e:
            log.warning("teacher cache %s unusable (%s); recomputing", path, str(e).splitlines()[0] if str(e) else type(e).__name__)
    label = f"{teacher.name} (offline stand-in)" if getattr(teacher, "stand_in", False) else teacher.name
    log.info("teacher %s on %s -> %s", label, scene.name, path)
    feat = torch.as_tensor(teacher.embed(scene)).detach().float().cpu()
    if feat.ndim != 2 or feat.shape[0] != scene.n_points:
        raise RuntimeError(f"teacher {teacher.name} returned shape {tuple(feat.shape)} for {scene.n_points} points")
    feat16 = feat.half()
    save_torch(path, {"feat": feat16, "teacher": teacher.name, "stand_in": bool(getattr(teacher, "stand_in", False)),
                      "scene": scene.name})
    return _to_unit_float(feat16)
