"""On-disk caches of per-scene lifted features and teacher embeddings.

Both are deterministic functions of the scene and a few settings, and both cost far more than
reading a file, so training (many epochs over few scenes) and evaluation compute them once.
The cache key hashes the scene's content (points, colours, frame poses) together with every
setting that changes the result and a cheap content fingerprint (`geopurify.io.file_fingerprint`:
size, mtime, hash of the first 64 KiB) of every input file the result is read from: the scene's
point / label files and frame images, the VLM's checkpoint files or this scene's OpenScene / external
feature files, the prompt-embedding file, the teacher checkpoint. So a regenerated scene, a changed
knob or a file re-exported under the same path never reads a stale file. Files are written
atomically; lifted features are stored in float16, teacher features in `teacher.cache_dtype`
(float16 by default; float32 keeps the teacher's exact values, as the reference code, which caches
nothing, uses them). What a function returns is always the value as read back from disk, so a first
(computing) call and a later (reading) call give bit-identical tensors (training resumed from a
checkpoint depends on that).
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

from geopurify.errors import InputError
from geopurify.io import file_fingerprint, save_torch

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


def scene_files(scene, frames: bool = True) -> list[Path]:
    """The files a scene was read from: every `*_file` its reader recorded in `scene.meta` (points,
    labels, ...) and, with `frames`, each frame's colour, depth and label image."""
    files = [Path(v) for k, v in sorted(scene.meta.items()) if k.endswith("_file") and v]
    if frames:
        for f in scene.frames:
            files += [Path(p) for p in (f.color_path, f.depth_path, f.label_path) if p is not None]
    return files


def _dir_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _text_files(path: str | Path) -> list[Path]:
    """A prompt-embedding file (with its .txt prompt list) or a CLIP checkpoint directory."""
    path = Path(path)
    return _dir_files(path) if path.is_dir() else [path, path.with_suffix(".txt")]


def vlm_files(scene, cfg: dict) -> list[Path]:
    """The files the lifted features of `scene` are computed from, on the VLM side, read from the
    config alone (no VLM loaded): the CLIP checkpoint directory; OpenScene's per-point files of this
    scene; the external per-view feature files of this scene's frames; the prompt-embedding file.
    The simulated VLM reads no file (its label images are scene files)."""
    lift = cfg["lift"]
    name, root, text = lift["vlm"], lift.get("vlm_path"), lift.get("text_path")
    files: list[Path] = []
    if name == "clip" and root:
        files += _dir_files(Path(root))
    if name == "openscene" and root:
        from geopurify.lift.openscene import openscene_files

        try:
            files += openscene_files(root, scene.name)
        except InputError:
            pass  # lifting reports the missing files
    if name == "external":
        from geopurify.vlm.external import external_feature_path

        try:
            files += [external_feature_path(scene, i, root or None) for i in range(len(scene.frames))]
        except InputError:
            pass  # no scene directory: lifting reports it
    if name in ("openscene", "external"):
        if text:
            files += _text_files(text)
        elif root:
            from geopurify.vlm.prompts import find_text_file

            try:
                files += _text_files(find_text_file(root))
            except InputError:
                pass  # building the VLM reports it
    return files


def lift_files_fingerprint(scene, cfg: dict) -> str:
    """`file_fingerprint` of every file the lifted features of `scene` depend on."""
    return file_fingerprint(scene_files(scene) + vlm_files(scene, cfg))


def _key(obj) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


MEMORY_ONLY = ("chunk_points", "group_mb")  # lift keys that change memory use, not results


def lift_settings(cfg: dict) -> dict:
    """Every setting the lifted features depend on, read from the config alone (so a cache hit
    needs no VLM loaded): all `lift` keys (backend, checkpoint path, fusion, image size, ...) but
    the memory-only ones, the frame step, and for the simulated VLM its `vlm_sim` knobs and
    label set (it derives its features from the label set's prompts), as for consensus fusion and
    for masks scored with a background prompt (both score the label set's prompts)."""
    lift = {k: v for k, v in cfg["lift"].items() if k not in MEMORY_ONLY}
    simulated = lift["vlm"] == "simulated"
    s = {"lift": lift, "frame_step": cfg["data"]["frame_step"]}
    if lift["fusion"] == "consensus" or simulated or lift.get("background_prompt") is not None:
        s["label_set"] = cfg["data"]["label_set"]
    if simulated:
        s["vlm_sim"] = dict(cfg["vlm_sim"])
    return s


def lift_cache_path(scene, cfg: dict, cache_dir: str | Path) -> Path:
    key = _key({"scene": scene_fingerprint(scene), "settings": lift_settings(cfg),
                "files": lift_files_fingerprint(scene, cfg)})
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


CACHE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def _cache_dtype(dtype: str) -> torch.dtype:
    if dtype not in CACHE_DTYPES:
        raise InputError(None, f"config key 'teacher.cache_dtype' must be float16 or float32, got {dtype!r}")
    return CACHE_DTYPES[dtype]


def teacher_cache_path(scene, teacher, cache_dir: str | Path, dtype: str = "float16") -> Path:
    _cache_dtype(dtype)
    files = scene_files(scene, frames=False) + [getattr(teacher, "ckpt", None)]
    key = _key({"scene": scene_fingerprint(scene), "teacher": teacher_key(teacher), "files": file_fingerprint(files),
                "dtype": dtype})
    return Path(cache_dir) / "teacher" / f"{scene.name}.{key}.pt"


def _to_unit_float(feat: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(feat.float(), dim=1)


def _read_teacher(path: Path, n: int, dtype: torch.dtype) -> torch.Tensor:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    feat = obj["feat"]
    if not isinstance(feat, torch.Tensor) or feat.dtype != dtype or feat.ndim != 2 or feat.shape[0] != n:
        raise ValueError(f"teacher features of shape {tuple(getattr(feat, 'shape', ()))}, expected ({n}, D) {dtype}")
    if not torch.isfinite(feat).all():
        raise ValueError("non-finite teacher features")
    return _to_unit_float(feat)


def cached_teacher(scene, teacher, cache_dir: str | Path, dtype: str = "float16") -> torch.Tensor:
    """(N, D) float32 unit teacher embeddings of `scene` (Teacher.embed), cached as `dtype`
    ("float16", or "float32": `teacher.cache_dtype`).

    Rows are re-normalised after the round trip through the cache, identically on every call.
    """
    torch_dtype = _cache_dtype(dtype)
    path = teacher_cache_path(scene, teacher, cache_dir, dtype)
    if path.exists():
        try:
            return _read_teacher(path, scene.n_points, torch_dtype)
        except _READ_ERRORS as e:
            log.warning("teacher cache %s unusable (%s); recomputing", path, str(e).splitlines()[0] if str(e) else type(e).__name__)
    label = f"{teacher.name} (offline stand-in)" if getattr(teacher, "stand_in", False) else teacher.name
    log.info("teacher %s on %s -> %s (%s)", label, scene.name, path, dtype)
    feat = torch.as_tensor(teacher.embed(scene)).detach().float().cpu()
    if feat.ndim != 2 or feat.shape[0] != scene.n_points:
        raise RuntimeError(f"teacher {teacher.name} returned shape {tuple(feat.shape)} for {scene.n_points} points")
    stored = feat.to(torch_dtype)
    save_torch(path, {"feat": stored, "teacher": teacher.name, "stand_in": bool(getattr(teacher, "stand_in", False)),
                      "scene": scene.name})
    return _to_unit_float(stored)
