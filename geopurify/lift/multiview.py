"""Multi-view lifting: 2D VLM feature maps onto a scene's points (METHOD.md section 1).

For each posed frame: the VLM's feature map for the image resized to `lift.image_size`, the
points projected with the intrinsics rescaled to that size, kept when inside the image minus the
border, in front of the camera and not occluded (against the frame's depth image resized to the
same size, or against a z-buffer of the points when the frame has no depth), then the feature
map sampled (nearest) at each kept pixel and fused over views (mean or consensus).

The result is a `LiftResult` (geopurify.lift.result, which also writes and reads `*.lift.pt`
files); its info records the views (`frames`: frame names, i.e. raw frame ids on ScanNet, in
lifting order) and how many of them had no depth image and were occlusion-tested against the
points' z-buffer (`z_buffered`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from geopurify.data.scene import Frame, Scene
from geopurify.errors import InputError
from geopurify.lift.fusion import MeanFusion, TopKFusion, consensus_classes, nearest_fill
from geopurify.lift.result import LiftResult
from geopurify.ops.project import rescale_intrinsic, visible
from geopurify.ops.resize import map_index, resize_nearest
from geopurify.schema import check

log = logging.getLogger(__name__)


def _header_hw(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    from geopurify.data.images import image_header

    return image_header(path)[1]


@dataclass
class ViewGeometry:
    """One frame's cameras at the VLM image size: colour K, depth K and the resized depth (or None)."""

    pose: np.ndarray
    K: np.ndarray
    K_depth: np.ndarray
    depth: torch.Tensor | None


def view_geometry(frame: Frame, image_hw: tuple[int, int], device="cpu") -> ViewGeometry:
    """Rescale a frame's colour and depth intrinsics to `image_hw` and load its depth resized to it.

    The colour intrinsics refer to the colour image (or, without one, the label image); a frame
    with neither is taken to be posed for `image_hw` already (virtual cameras).
    """
    color_hw = _header_hw(frame.color_path) or _header_hw(frame.label_path) or tuple(image_hw)
    K = rescale_intrinsic(frame.intrinsic, color_hw, image_hw)
    depth = frame.depth()
    if depth is None:
        return ViewGeometry(np.asarray(frame.pose, np.float64), K, K, None)
    K_depth = rescale_intrinsic(frame.K_depth, depth.shape, image_hw)
    d = resize_nearest(torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)), image_hw)
    return ViewGeometry(np.asarray(frame.pose, np.float64), K, K_depth, d.to(device))


def _frames_for(scene: Scene, vlm, cfg: dict) -> tuple[Scene, bool]:
    """The scene whose frames are lifted; a frameless scene gets virtual cameras (simulated VLM only)."""
    if scene.frames:
        return scene, False
    where = scene.path if scene.path is not None else scene.name
    if not getattr(vlm, "simulated", False):
        raise InputError(where, f"scene has no posed frames; the {vlm.name} VLM needs colour images to lift from")
    from geopurify.data.cameras import virtual_frames

    W, H = cfg["lift"]["image_size"]
    n = int(cfg["lift"]["virtual_frames"])
    frames = virtual_frames(scene.xyz, n, image_hw=(H, W), seed=int(cfg["lift"]["virtual_seed"]))
    log.info(
        "scene %s has no frames: lifting from %d virtual cameras (the simulated VLM renders their "
        "label images; a stand-in, not real views)",
        scene.name,
        len(frames),
    )
    return dataclasses.replace(scene, frames=frames), True


def _feature_table(fmap: torch.Tensor, dim: int, where) -> torch.Tensor:
    """(h*w, C) row table of a (C, h, w) feature map, checked."""
    if fmap.dim() != 3 or fmap.shape[0] != dim:
        raise InputError(where, f"VLM returned a feature map of shape {tuple(fmap.shape)}, expected ({dim}, h, w)")
    return fmap.reshape(dim, -1).t().contiguous().float()


def lift_scene(
    scene: Scene, vlm, cfg: dict, text_emb: torch.Tensor | None = None, device: str | torch.device = "cpu"
) -> LiftResult:
    """Fuse `vlm` feature maps of every frame of `scene` onto its points; see the module docstring.

    `cfg` is the full config (keys under `lift`). Consensus fusion needs the class text
    embeddings `text_emb` (P, C); when None they are built from `data.label_set` and
    `lift.prompt_template`. Returns features on `device`.

    A backend whose features are per point already, fused over views elsewhere (OpenScene's
    released features; it sets `lifts_points = True`), is asked for them with `vlm.lift(scene)`.
    """
    if getattr(vlm, "lifts_points", False):
        res = vlm.lift(scene)
        log.info(
            "%s: per-point features from %s (fused over views by their producer; no projection here)",
            scene.name,
            vlm.describe(),
        )
        return LiftResult(
            res.feat.to(device), res.seen.to(device), res.n_views.to(device), {**res.info, "device": str(device)}
        )
    check(cfg, "lift", skip=() if not scene.frames else ("lift.virtual_frames",))  # ranges: geopurify.schema
    lc = cfg["lift"]
    fusion = lc["fusion"]
    W, H = lc["image_size"]
    hw = (H, W)
    scene_v, virtual = _frames_for(scene, vlm, cfg)
    n, dim = scene.n_points, int(vlm.dim)
    where = scene.path if scene.path is not None else scene.name
    xyz = torch.from_numpy(np.ascontiguousarray(scene.xyz, dtype=np.float32)).to(device)
    kw = dict(
        border=int(lc["border"]),
        thr=float(lc["occlusion_thr"]),
        splat=int(lc["zbuffer_splat"]),
        chunk=int(lc["chunk_points"]),
    )
    log.info(
        "lifting %s: %d points, %d frames, VLM %s, %s fusion",
        scene.name,
        n,
        len(scene_v.frames),
        vlm.describe(),
        fusion,
    )

    def views(desc: str):
        """Yield (point indices, feature-map cells, (h*w, C) cell table) per frame; the visibility
        is kept for the consensus pass, and so are the cells and tables while they fit in
        `lift.reuse_mb` (the consensus pass then asks the VLM again only for the others). A frame
        whose images cannot be read (InputError while loading its pixels, e.g. a truncated JPEG) is
        skipped with a warning and recorded in `bad`."""
        for i in tqdm(range(len(scene_v.frames)), desc=desc, unit="view", leave=False):
            if i in bad:
                continue
            if i in kept:  # consensus pass: the first pass's view, as the VLM gave it
                yield geom[i][0], *kept.pop(i)
                continue
            try:
                if i in geom:
                    idx, pix = geom[i]
                else:
                    g = view_geometry(scene_v.frames[i], hw, device)
                    idx, pix = visible(xyz, g.pose, g.K, hw, depth=g.depth, K_depth=g.K_depth, **kw)
                fmap = vlm.frame_features(scene_v, i, hw).to(device)
            except InputError as e:
                if desc != "lift":  # it was readable in the first pass: the file changed under us
                    raise
                bad[i] = e
                log.warning("%s; frame %s skipped", e, scene_v.frames[i].name)
                continue
            cells, table = map_index(pix, hw, tuple(fmap.shape[1:])), _feature_table(fmap, dim, where)
            if i not in geom:
                n_depth[0] += g.depth is not None
                if fusion == "consensus":
                    geom[i] = (idx, pix)
                    size = cells.numel() * cells.element_size() + table.numel() * table.element_size()
                    if size <= reuse_left[0]:
                        kept[i] = (cells, table)
                        reuse_left[0] -= size
            yield idx, cells, table

    geom: dict[int, tuple] = {}  # visibility kept for the consensus pass
    kept: dict[int, tuple] = {}  # (cells, table) of first-pass views kept for the consensus pass
    reuse_left = [int(lc["reuse_mb"]) << 20]
    bad: dict[int, InputError] = {}  # frames whose pixels could not be read
    n_depth = [0]
    mean = MeanFusion(n, dim, device, group_bytes=int(lc["group_mb"]) << 20)
    for idx, cells, table in views("lift"):
        mean.add_table(idx, cells, table)
    if bad and len(bad) == len(scene_v.frames):
        first = next(iter(bad.values()))
        raise InputError(first.path, f"{first.problem} (all {len(bad)} frames of the scene are unusable)")
    seen, n_views = mean.seen, mean.count.to(torch.int64)
    feat = mean.mean(inplace=True)
    del mean  # `feat` is now the only N x C buffer
    if fusion == "consensus":
        if text_emb is None:
            from geopurify.data.labels import get_label_set
            from geopurify.vlm.text import text_embeddings

            text_emb = text_embeddings(vlm, get_label_set(cfg["data"]["label_set"]), lc["prompt_template"])
        text_emb = text_emb.to(device=device, dtype=torch.float32)
        cls = consensus_classes(feat, text_emb)
        del feat  # the top-k buffers (N x k x C) replace it
        topk = TopKFusion(text_emb[cls], k=int(lc["consensus_topk"]), logit_scale=float(lc["consensus_logit_scale"]))
        for idx, cells, table in views("consensus"):
            topk.add(idx, table[cells])
        feat = topk.result()
    feat = nearest_fill(scene.xyz, feat, seen, inplace=True)
    n_frames, n_depth = len(scene_v.frames) - len(bad), n_depth[0]
    read_skips = [] if virtual else list(scene.meta.get("skip_reasons", []))
    info = {
        "vlm": vlm.name,
        "simulated": bool(vlm.simulated),
        "fusion": fusion,
        "scene": scene.name,
        "n_frames": n_frames,
        "frames_with_depth": n_depth,
        "device": str(device),
        # the views, by frame name (raw frame id on ScanNet), and how many had no depth image
        "frames": [f.name for i, f in enumerate(scene_v.frames) if i not in bad],
        "z_buffered": n_frames - n_depth,
        "virtual_frames": virtual,
        "seen_frac": float(seen.float().mean()) if n else 0.0,
        # frames left out: by the reader (bad pose, missing image, ...) and here (unreadable pixels)
        "skipped_frames": int(scene.meta.get("skipped_frames", len(read_skips))) + len(bad),
        "skip_reasons": read_skips + [str(e) for e in bad.values()],
    }
    log.info(
        "lifted %s: %.1f%% of points seen (%d frames, %d with depth, %d z-buffered%s)%s",
        scene.name,
        100 * info["seen_frac"],
        n_frames,
        n_depth,
        n_frames - n_depth,
        f", {info['skipped_frames']} skipped" if info["skipped_frames"] else "",
        " [SIMULATED VLM]" if vlm.simulated else "",
    )
    return LiftResult(feat, seen, n_views, info)
