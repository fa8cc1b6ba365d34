"""Content identity of a scene, for the cache keys of lifted features, teacher features and predictions.

`scene_fingerprint` hashes what features computed from a scene depend on (points, colours, normals,
frame poses and intrinsics, image paths); `scene_files` lists the files the scene was read from, whose
`geopurify.io.file_fingerprint` a key adds so that a file rewritten under the same path is noticed;
`cache_key` hashes a JSON-able description into a short file-name key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


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


def cache_key(obj) -> str:
    """16 hex digits identifying `obj` (anything json.dumps can write, other values by their str)."""
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()
