"""Lifted features: `LiftResult`, and their file format (`*.lift.pt`, docs/architecture.md).

`save_lifted` writes a file atomically: float16 features, the seen mask, view counts and the
provenance (VLM, fusion, scene; the views lifted from, by frame name, and how many of them were
occlusion-tested against the points' z-buffer); `load_lifted` reads one back, validated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from geopurify.errors import InputError
from geopurify.io import load_torch_file, save_torch


@dataclass
class LiftResult:
    """Fused per-point features; unseen points already hold their nearest seen point's feature."""

    feat: torch.Tensor  # (N, C) float32
    seen: torch.Tensor  # (N,) bool: seen by at least one view
    n_views: torch.Tensor  # (N,) int: number of views that saw the point
    info: dict = field(default_factory=dict)  # vlm, simulated, fusion, scene, ...


def views_summary(info: dict, show: int = 6) -> str:
    """'3 views (frames 0, 20, 40; 1 z-buffered)': the views a lift used, the middle of long lists elided."""
    frames = info.get("frames")
    if frames is None:
        return f"{info.get('n_frames', 0)} views"
    names = frames if len(frames) <= show else frames[: show - 2] + ["..."] + frames[-1:]
    listed = f"frames {', '.join(names)}; " if frames else ""
    return f"{len(frames)} views ({listed}{info.get('z_buffered', 0)} z-buffered)"


def save_lifted(path: str | Path, result: LiftResult, meta: dict | None = None) -> None:
    """Write a `*.lift.pt` file atomically: float16 features, seen mask, view counts and provenance.

    `meta` (vlm, simulated, fusion, scene) overrides the same keys of `result.info`.
    """
    info = {**result.info, **(meta or {})}
    obj = {
        "feat": result.feat.detach().to("cpu", torch.float16).contiguous(),
        "seen": result.seen.detach().to("cpu", torch.bool).contiguous(),
        "n_views": result.n_views.detach().cpu().clamp(max=torch.iinfo(torch.int16).max).to(torch.int16),
        "vlm": str(info.get("vlm", "unknown")),
        "simulated": bool(info.get("simulated", False)),
        "fusion": str(info.get("fusion", "unknown")),
        "scene": str(info.get("scene", "")),
    }
    if info.get("skipped_frames"):  # optional key, written only when frames were left out
        obj["skipped_frames"] = int(info["skipped_frames"])
    if info.get("device"):  # optional key: the device the features were lifted on
        obj["device"] = str(info["device"])
    if "frames" in info:  # the views lifted from (per-point backends have none)
        obj["frames"] = [str(f) for f in info["frames"]]
        obj["z_buffered"] = int(info.get("z_buffered", 0))
    save_torch(path, obj)


_KEYS = {
    "feat": torch.Tensor,
    "seen": torch.Tensor,
    "n_views": torch.Tensor,
    "vlm": str,
    "simulated": bool,
    "fusion": str,
    "scene": str,
}


def load_lifted(path: str | Path, n_points: int | None = None, dim: int | None = None) -> LiftResult:
    """Read and validate a `*.lift.pt` file; features come back float32.

    Raises InputError(path, problem) when the file is missing or unreadable, a key is missing or
    has the wrong type, shapes disagree, the point count or feature dimension is not the
    expected one, or features hold NaN/inf.
    """
    obj = load_torch_file(path, "lifted feature file", kind=dict)
    for key, typ in _KEYS.items():
        if key not in obj:
            raise InputError(path, f"lifted feature file lacks '{key}'")
        if not isinstance(obj[key], typ):
            raise InputError(path, f"'{key}' must be {typ.__name__}, got {type(obj[key]).__name__}")
    feat, seen, n_views = obj["feat"], obj["seen"], obj["n_views"]
    if feat.dim() != 2 or not feat.is_floating_point():
        raise InputError(path, f"'feat' must be a float (N, C) tensor, got {feat.dtype} {tuple(feat.shape)}")
    N, C = feat.shape
    if seen.shape != (N,) or seen.dtype != torch.bool:
        raise InputError(path, f"'seen' must be bool ({N},), got {seen.dtype} {tuple(seen.shape)}")
    if n_views.shape != (N,) or n_views.is_floating_point():
        raise InputError(path, f"'n_views' must be integer ({N},), got {n_views.dtype} {tuple(n_views.shape)}")
    if n_points is not None and N != n_points:
        raise InputError(path, f"lifted features have {N} points, the scene has {n_points}")
    if dim is not None and C != dim:
        raise InputError(path, f"lifted features are {C}-d, expected {dim}-d")
    bad = ~torch.isfinite(feat).all(dim=1)
    if bad.any():
        raise InputError(path, f"{int(bad.sum())} points have NaN/inf features")
    info = {k: obj[k] for k in ("vlm", "simulated", "fusion", "scene")}
    if "skipped_frames" in obj:  # optional: present when frames were left out
        skipped = obj["skipped_frames"]
        if isinstance(skipped, bool) or not isinstance(skipped, int) or skipped < 0:
            raise InputError(path, f"'skipped_frames' must be a non-negative int, got {skipped!r}")
        info["skipped_frames"] = skipped
    if isinstance(obj.get("device"), str):  # optional: where the features were lifted
        info["device"] = obj["device"]
    if "frames" in obj:  # optional (files written before views were recorded lack it)
        frames, zbuf = obj["frames"], obj.get("z_buffered")
        if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
            raise InputError(path, "'frames' must be a list of frame names")
        if isinstance(zbuf, bool) or not isinstance(zbuf, int) or not 0 <= zbuf <= len(frames):
            raise InputError(
                path, f"'z_buffered' must be an int in 0..{len(frames)} (the number of views), got {zbuf!r}"
            )
        info.update(frames=frames, z_buffered=zbuf, n_frames=len(frames))
    return LiftResult(feat.float(), seen, n_views.to(torch.int64), info)
