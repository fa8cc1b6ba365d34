"""OpenScene's released multi-view fused point features as this project's lifted features.

OpenScene (Peng et al., CVPR 2023) distributes, per scene, files `{scene}_{n}.pt` holding
    {"feat": float16 (M, C), "mask_full": bool (N,)}
with C = 768 (OpenSeg) or 512 (LSeg). As written by OpenScene's fusion script (`save_fused_feature`
in scripts/feature_fusion/fusion_util.py) and read by its loader (dataset/feature_loader.py:
`feat_3d_new[mask] = feat_3d`): `mask_full` marks the points that were seen by at least one view
AND drawn in that file's random sample of the scene, and row i of `feat` is the feature of the
i-th such point in point order. Every `{scene}_{n}.pt` of a scene samples the same fused feature
bank (n indexes repeated random samplings: 5 per training scene of 20k points, 1 holding every
seen point for validation scenes), so several files merge into one with a larger mask.
An older layout {"feat": (K, C), "mask": visible rows, "mask_full": (N,)} has one row per point
of `mask_full` and marks the seen ones with `mask`; it is read too. N is the point count of
OpenScene's preprocessed cloud: for ScanNet the vertices of `sceneXXXX_XX_vh_clean_2.ply`, in
file order, the same points `points_xyzrgb.npy` holds.

`load_openscene_features` turns such files into a `LiftResult` (seen = mask, unseen points take
their nearest seen point's feature, as `lift_scene` does); `lift_from_openscene(scene, dir)` is
the call lifting code makes when `lift.vlm == "openscene"`. `OpenSceneVLM` is the matching VLM
object: its text side is a prompt-embedding file or a CLIP checkpoint (geopurify.vlm.prompts),
and it has no per-view features (they were fused by OpenScene already). It lives with lifting
because what it gives is lifted features; the VLM registry names it (`lift.vlm: openscene`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch

from geopurify.errors import InputError
from geopurify.io import load_torch_file
from geopurify.lift.fusion import nearest_fill
from geopurify.lift.result import LiftResult
from geopurify.vlm.base import VLM
from geopurify.vlm.prompts import find_text_file, text_source

log = logging.getLogger(__name__)

_ROWS_PER_CHUNK = 1 << 16  # feature rows converted to float32 at a time (memory bound)


def _as_bool_mask(m, path: Path, key: str) -> torch.Tensor:
    """A 1-D bool tensor from a bool / 0-1 integer tensor or numpy array."""
    if isinstance(m, np.ndarray):
        m = torch.from_numpy(m)
    if not torch.is_tensor(m) or m.dim() != 1:
        raise InputError(
            path, f"'{key}' must be a 1-D boolean mask, got {type(m).__name__} {tuple(getattr(m, 'shape', ()))}"
        )
    if m.dtype != torch.bool:
        if m.is_floating_point() or (m.numel() and (int(m.min()) < 0 or int(m.max()) > 1)):
            raise InputError(path, f"'{key}' must be boolean (or 0/1), got {m.dtype}")
        m = m.bool()
    return m


def read_openscene_file(
    path: str | Path, n_points: int | None = None, dim: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(feat (M, C) as stored, mask (N,) bool) of one OpenScene feature file, validated.

    Row i of `feat` belongs to the i-th True entry of `mask`. Raises InputError(path, problem)
    for an unreadable file, missing keys, a row count that disagrees with the mask, a point count
    other than `n_points`, a feature dimension other than `dim`, or NaN/inf features.
    """
    path = Path(path)
    obj = load_torch_file(path, "OpenScene feature file")
    if not isinstance(obj, dict) or "feat" not in obj or "mask_full" not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise InputError(path, f"OpenScene feature file must hold {{'feat', 'mask_full'}}, got {keys}")
    feat = obj["feat"]
    if isinstance(feat, np.ndarray):
        feat = torch.from_numpy(feat)
    if not torch.is_tensor(feat) or not feat.is_floating_point():
        raise InputError(path, f"'feat' must be a float tensor, got {getattr(feat, 'dtype', type(feat).__name__)}")
    if feat.dim() == 3 and feat.shape[2] == 1:  # some releases keep a trailing singleton axis
        feat = feat[..., 0]
    if feat.dim() != 2:
        raise InputError(path, f"'feat' must be (M, C), got {tuple(feat.shape)}")
    mask = _as_bool_mask(obj["mask_full"], path, "mask_full")
    if "mask" in obj:  # older layout: one row per mask_full point, 'mask' marks the seen rows
        if feat.shape[0] != int(mask.sum()):
            raise InputError(path, f"'feat' has {feat.shape[0]} rows but 'mask_full' selects {int(mask.sum())} points")
        vis = obj["mask"]
        vis = torch.from_numpy(vis) if isinstance(vis, np.ndarray) else vis
        if not torch.is_tensor(vis):
            raise InputError(path, "'mask' must be a tensor")
        if vis.dtype == torch.bool:
            if vis.shape != (feat.shape[0],):
                raise InputError(path, f"'mask' must be ({feat.shape[0]},), got {tuple(vis.shape)}")
            rows = vis
        else:  # indices of the seen rows
            rows = torch.zeros(feat.shape[0], dtype=torch.bool)
            vis = vis.long().flatten()
            if vis.numel() and (int(vis.min()) < 0 or int(vis.max()) >= feat.shape[0]):
                raise InputError(path, "'mask' holds row indices out of range")
            rows[vis] = True
        feat = feat[rows]
        new = torch.zeros_like(mask)
        new[mask.nonzero().flatten()[rows]] = True
        mask = new
    if n_points is not None and mask.shape[0] != n_points:
        raise InputError(
            path,
            f"'mask_full' covers {mask.shape[0]} points but the scene has {n_points} (the features "
            "must come from the same point cloud, in the same order)",
        )
    if feat.shape[0] != int(mask.sum()):
        raise InputError(path, f"'feat' has {feat.shape[0]} rows but 'mask_full' marks {int(mask.sum())} points")
    if dim is not None and feat.shape[1] != dim:
        raise InputError(
            path, f"features are {feat.shape[1]}-d, the text embeddings are {dim}-d (OpenSeg: 768, LSeg: 512)"
        )
    for s in range(0, feat.shape[0], _ROWS_PER_CHUNK):
        if not torch.isfinite(feat[s : s + _ROWS_PER_CHUNK]).all():
            raise InputError(path, "'feat' holds NaN/inf")
    return feat, mask


def load_openscene_features(path: str | Path | list, n_points: int, xyz=None, dim: int | None = None) -> LiftResult:
    """LiftResult from one or several OpenScene files of the same scene.

    seen = union of the files' masks; a point in several files gets the mean of its rows (the
    files share one fused feature bank, so these agree). With `xyz` (N, 3), unseen points take
    their nearest seen point's feature (as `lift_scene` does); without it they stay zero.
    n_views is 1 for seen points and 0 otherwise (the files do not record view counts).
    """
    paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
    if not paths:
        raise InputError(None, "no OpenScene feature files given")
    total = count = None
    for p in paths:
        feat, mask = read_openscene_file(p, n_points=n_points, dim=dim)
        if total is None:
            total = torch.zeros(n_points, feat.shape[1], dtype=torch.float32)
            count = torch.zeros(n_points, dtype=torch.int32)
        elif feat.shape[1] != total.shape[1]:
            raise InputError(p, f"features are {feat.shape[1]}-d but {paths[0].name} has {total.shape[1]}-d")
        idx = mask.nonzero().flatten()
        for s in range(0, idx.numel(), _ROWS_PER_CHUNK):
            total.index_add_(0, idx[s : s + _ROWS_PER_CHUNK], feat[s : s + _ROWS_PER_CHUNK].float())
        count[idx] += 1
        del feat
    seen = count > 0
    if int(count.max()) > 1:
        total.div_(count.clamp(min=1).to(torch.float32)[:, None])
    if xyz is not None:
        if len(xyz) != n_points:
            raise ValueError(f"xyz has {len(xyz)} points, expected {n_points}")
        total = nearest_fill(xyz, total, seen, inplace=True)
    elif not bool(seen.all()):
        log.warning(
            "%d unseen points keep zero features (no coordinates given for the nearest fill)", int((~seen).sum())
        )
    frac = float(seen.float().mean()) if n_points else 0.0
    info = {
        "vlm": "openscene",
        "simulated": False,
        "fusion": "openscene (released, multi-view mean)",
        "n_frames": 0,
        "frames_with_depth": 0,
        "virtual_frames": False,
        "seen_frac": frac,
        "files": [p.name for p in paths],
        "nearest_fill": xyz is not None,
    }
    return LiftResult(total, seen, seen.to(torch.int64), info)


def openscene_files(feature_dir: str | Path, scene_name: str, sample: int | str = "all") -> list[Path]:
    """The OpenScene files of one scene: `{scene}_{n}.pt` (all of them, or the one with n = `sample`),
    or `{scene}.pt` (nuScenes-style single file) when there is no numbered one."""
    feature_dir = Path(feature_dir)
    if not feature_dir.is_dir():
        raise InputError(feature_dir, "OpenScene feature directory not found")
    pat = re.compile(rf"^{re.escape(scene_name)}_(\d+)\.pt$")
    numbered = sorted(
        ((int(m.group(1)), p) for p in feature_dir.iterdir() if (m := pat.match(p.name))), key=lambda t: t[0]
    )
    if sample != "all":
        want = int(sample)
        hit = [p for n, p in numbered if n == want]
        if not hit:
            raise InputError(feature_dir / f"{scene_name}_{want}.pt", "OpenScene feature file not found")
        return hit
    if numbered:
        return [p for _, p in numbered]
    single = feature_dir / f"{scene_name}.pt"
    if single.is_file():
        return [single]
    raise InputError(
        feature_dir,
        f"no OpenScene features for scene {scene_name!r} (expected {scene_name}_0.pt, {scene_name}_1.pt, ...)",
    )


def lift_from_openscene(
    scene, feature_dir: str | Path, dim: int | None = None, sample: int | str = "all"
) -> LiftResult:
    """The lifted features of `scene` from OpenScene's files in `feature_dir` (every sample merged,
    or only `{scene}_{sample}.pt`); unseen points filled from their nearest seen point."""
    paths = openscene_files(feature_dir, scene.name, sample)
    res = load_openscene_features(paths, scene.n_points, xyz=scene.xyz, dim=dim)
    res.info["scene"] = scene.name
    log.info(
        "OpenScene features for %s from %s: %d-d, %.1f%% of %d points seen, the rest filled from the nearest "
        "seen point",
        scene.name,
        ", ".join(res.info["files"]),
        res.feat.shape[1],
        100 * res.info["seen_frac"],
        scene.n_points,
    )
    return res


class OpenSceneVLM(VLM):
    """The VLM side of OpenScene's released point features: text embeddings only.

    `text`: a prompt-embedding file or a CLIP checkpoint directory (geopurify.vlm.prompts.
    text_source; OpenSeg features pair with CLIP ViT-L/14@336px text, LSeg with ViT-B/32), or a
    VLM. `lift(scene)` reads the scene's files from `feature_dir`; `frame_features` raises, since
    the features were fused over views by OpenScene already.
    """

    simulated = False
    lifts_points = True  # lifting code: call `lift(scene)` instead of projecting frames

    def __init__(self, text, feature_dir: str | Path, device: str = "cpu"):
        self.text = text if isinstance(text, VLM) else text_source(text, device=device)
        self.dim = int(self.text.dim)
        self.feature_dir = Path(feature_dir)
        self.name = f"openscene ({self.feature_dir.name})"

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return self.text.encode_text(prompts)

    def frame_features(self, scene, frame_index: int, image_hw: tuple[int, int]) -> torch.Tensor:
        raise InputError(
            self.feature_dir,
            "OpenScene features are per point, already fused over views; lift with "
            "geopurify.lift.openscene.lift_from_openscene (lift.vlm = openscene)",
        )

    def lift(self, scene) -> LiftResult:
        res = lift_from_openscene(scene, self.feature_dir, dim=self.dim)
        res.info["vlm"] = self.name
        return res

    @classmethod
    def from_config(cls, cfg: dict, device: str = "cpu", label_set=None):
        """The `openscene` backend of a config (the registry entry of lift.vlm): lift.vlm_path is the
        directory of OpenScene's {scene}_{n}.pt files; text side lift.text_path, else the
        text_embeddings.pt / .npy inside that directory."""
        root, text = cfg["lift"].get("vlm_path"), cfg["lift"].get("text_path")
        if not root:
            raise InputError(
                "config lift.vlm_path",
                "the openscene backend needs lift.vlm_path: the directory of "
                "OpenScene's {scene}_{n}.pt point-feature files",
            )
        if not Path(root).is_dir():
            raise InputError(root, "OpenScene feature directory not found (lift.vlm_path)")
        return cls(text or find_text_file(root), root, device=device)
