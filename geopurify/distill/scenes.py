"""The training scenes: what one iteration needs from a scene (`SceneBatch`), and the store that
keeps prepared scenes in RAM across epochs (`SceneStore`).

Preparing a scene loads it, reads (or computes and caches) its lifted features and teacher
embeddings (geopurify.lift.cache, geopurify.teacher.cache), voxelises it and builds the student's
input; no labels are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geopurify.data.readers import load_scene
from geopurify.distill.sampling import check_sizes
from geopurify.errors import InputError
from geopurify.lift.cache import cached_lift
from geopurify.ops.voxel import voxelize
from geopurify.student.network import student_input
from geopurify.teacher.cache import cached_teacher


@dataclass
class SceneBatch:
    """What one iteration needs from a scene, on the training device."""

    name: str
    feats: torch.Tensor  # (V, C + 6) student input
    coords: torch.Tensor  # (V, 3) int32 voxel coordinates
    inverse: torch.Tensor  # (N,) point -> voxel
    teacher: torch.Tensor  # (N, D) unit
    xyz: np.ndarray  # (N, 3)
    vlm: dict  # provenance of the lifted features: {"vlm": name, "simulated": bool, ...}


def prepare_scene(path: Path, cfg: dict, vlm, teacher, cache_dir: Path, device: str) -> SceneBatch:
    """Load a scene and build the student input and teacher targets (features from the caches;
    `vlm` as for `cached_lift`: a backend or a zero-argument callable giving one)."""
    scene = load_scene(path, frame_step=cfg["data"]["frame_step"])
    d = cfg["distill"]
    try:
        check_sizes(scene.n_points, d["n_macro"], d["n_micro"], d["micro_k"])
    except ValueError as e:
        raise InputError(path, f"scene too small to train on: {e}") from None
    lifted = cached_lift(scene, cfg, vlm, cache_dir, device=device)
    tcfg = cfg["teacher"]
    tfeat = cached_teacher(scene, teacher, cache_dir, tcfg["cache_dtype"], tcfg.get("cache_max_gb")).to(device)
    coords, inverse = voxelize(torch.from_numpy(scene.xyz).to(device), cfg["student"]["voxel_size"])
    feats = student_input(
        lifted.feat.to(device).float(),
        torch.from_numpy(scene.rgb).to(device),
        torch.from_numpy(np.ascontiguousarray(scene.normals)).to(device),
        inverse,
        coords.shape[0],
    )
    return SceneBatch(scene.name, feats, coords, inverse, tfeat, scene.xyz, dict(lifted.info))


class SceneStore:
    """Prepared scenes kept in RAM (on the CPU) up to `budget_gb`, so later epochs skip loading,
    normal estimation and voxelisation; scenes beyond the budget are prepared on every visit.
    Prepared values are a deterministic function of the scene and the caches, so keeping them
    changes nothing but speed."""

    def __init__(self, cfg: dict, vlm, teacher, cache_dir: Path, device: str, budget_gb: float):
        self.cfg, self.vlm, self.teacher, self.cache_dir, self.device = cfg, vlm, teacher, cache_dir, device
        self.budget = int(budget_gb * 2**30)
        self.used = 0
        self.kept: dict[Path, SceneBatch] = {}
        self.in_channels: int | None = None  # set by the first scene: lifted dim + 6
        self.vlm_info: dict = {}

    def get(self, path: Path) -> SceneBatch:
        path = Path(path)
        if path in self.kept:
            b = self.kept[path]
            return SceneBatch(
                b.name,
                b.feats.to(self.device),
                b.coords.to(self.device),
                b.inverse.to(self.device),
                b.teacher.to(self.device),
                b.xyz,
                b.vlm,
            )
        batch = prepare_scene(path, self.cfg, self.vlm, self.teacher, self.cache_dir, self.device)
        if self.in_channels is None:
            self.in_channels, self.vlm_info = int(batch.feats.shape[1]), batch.vlm
        elif batch.feats.shape[1] != self.in_channels:
            raise InputError(
                path,
                f"lifted features give {batch.feats.shape[1]} student input channels, other scenes {self.in_channels}",
            )
        size = sum(t.numel() * t.element_size() for t in (batch.feats, batch.coords, batch.inverse, batch.teacher))
        size += batch.xyz.nbytes
        if self.used + size <= self.budget:
            self.kept[path] = SceneBatch(
                batch.name,
                batch.feats.cpu(),
                batch.coords.cpu(),
                batch.inverse.cpu(),
                batch.teacher.cpu(),
                batch.xyz,
                batch.vlm,
            )
            self.used += size
        return batch
