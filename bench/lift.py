"""Benchmark: lifting one scene with `geopurify.lift` against OpenScene's per-view fusion loop.

The reference (METHOD.md section 9) re-implements OpenScene's ScanNet fusion faithfully: one view
at a time, numpy projection of all N points (homogeneous world -> camera by the inverse pose,
intrinsics, rounding), the border / depth masks, then in torch a gather of all N points' features
from the view's feature map, a per-point sum and counter, and a division after the last view.
Both sides get the same scene, the same views, the same depth images and the same feature maps,
computed once beforehand so the VLM's cost is in neither time.

Default scene: a procedural room (geopurify.standins.rooms; an offline stand-in for a ScanNet scan)
seen by the simulated VLM (a stand-in too). `--scene DIR` benchmarks a scene on disk instead.

    python bench/lift.py [--scene DIR [--frame-step K]] [--points 100000] [--frames 50] [--seed 0] [--repeat 3]

Prints both times and ends with one JSON line {"ours_s", "reference_s", "speedup", ...}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from geopurify.config import load_config
from geopurify.data.scene import Frame, Scene
from geopurify.lift.multiview import lift_scene, view_geometry
from geopurify.vlm.base import VLM

log = logging.getLogger("bench.lift")


def reference_fusion(
    xyz: np.ndarray,
    poses: list[np.ndarray],
    Ks: list[np.ndarray],
    depths: list[np.ndarray],
    maps: list[torch.Tensor],
    image_hw: tuple[int, int],
    border: int,
    thr: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenScene-style fusion: returns (mean feature (N, C), view counter (N,)).

    Feature maps may be coarser than the image; a pixel (col, row) reads cell
    ((2 row + 1) h // 2H, (2 col + 1) w // 2W), the nearest-cell rule `geopurify.lift` uses.
    """
    H, W = image_hw
    n = xyz.shape[0]
    dim = maps[0].shape[0]
    sum_features = torch.zeros((n, dim), dtype=torch.float32)
    counter = torch.zeros((n, 1), dtype=torch.float32)
    vis_id = torch.zeros((n, len(maps)), dtype=torch.int64)
    coords_h = np.concatenate([xyz, np.ones([n, 1])], axis=1).T  # (4, N)
    for v, (pose, K, depth, feat_2d) in enumerate(zip(poses, Ks, depths, maps)):
        # numpy projection of every point (OpenScene's PointCloudToImageMapper.compute_mapping)
        mapping = np.zeros((3, n), dtype=int)
        world_to_camera = np.linalg.inv(pose)
        p = np.matmul(world_to_camera, coords_h)
        p[0] = (p[0] * K[0][0]) / p[2] + K[0][2]
        p[1] = (p[1] * K[1][1]) / p[2] + K[1][2]
        pi = np.round(p).astype(int)
        inside = (pi[0] >= border) * (pi[1] >= border) * (pi[0] < W - border) * (pi[1] < H - border)
        depth_cur = depth[pi[1][inside], pi[0][inside]]
        occlusion = np.abs(depth_cur - p[2][inside]) <= thr * depth_cur
        inside[inside] = occlusion
        mapping[0][inside] = pi[1][inside]
        mapping[1][inside] = pi[0][inside]
        mapping[2][inside] = 1
        mapping = torch.from_numpy(mapping.T)
        mask = mapping[:, 2]
        vis_id[:, v] = mask
        # torch accumulation: gather all N points' features, add the visible ones
        h, w = feat_2d.shape[1:]
        rows = torch.div((2 * mapping[:, 0] + 1) * h, 2 * H, rounding_mode="floor")
        cols = torch.div((2 * mapping[:, 1] + 1) * w, 2 * W, rounding_mode="floor")
        feat_2d_3d = feat_2d[:, rows, cols].permute(1, 0)
        counter[mask != 0] += 1
        sum_features[mask != 0] += feat_2d_3d[mask != 0]
    count = counter[:, 0].clone()
    counter[counter == 0] = 1e-5
    return sum_features / counter, count


class PrecomputedVLM(VLM):
    """Replays feature maps computed beforehand (so the benchmark times lifting, not the VLM)."""

    def __init__(self, source: VLM, maps: list[torch.Tensor]):
        self.name, self.simulated, self.dim = source.name, source.simulated, source.dim
        self.maps = maps

    def encode_text(self, prompts):
        raise NotImplementedError("not needed for mean fusion")

    def frame_features(self, scene, frame_index, image_hw):
        return self.maps[frame_index]


@dataclasses.dataclass
class PreloadedFrame(Frame):
    """A frame whose depth image is already in memory (depth I/O excluded from both timings)."""

    preloaded_depth: np.ndarray | None = None

    def depth(self):
        return self.preloaded_depth


def _procedural_scene(points: int, frames: int, seed: int, workdir: Path) -> Scene:
    from geopurify.data.readers import load_scene
    from geopurify.standins.rooms import make_room, write_room

    room = make_room(seed, n_points=points, n_frames=frames)
    write_room(room, workdir / "room")
    return load_scene(workdir / "room")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scene", type=Path, default=None, help="scene directory (default: a procedural room)")
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="time each side this many times, keep the best")
    ap.add_argument(
        "--frame-step",
        type=int,
        default=None,
        help="--scene: views = raw frame ids that are multiples of k (default: data.frame_step)",
    )
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("geopurify").setLevel(logging.WARNING)
    torch.manual_seed(args.seed)  # nothing here draws from it; kept for any backend that might

    cfg = load_config(None)
    lc = cfg["lift"]
    W, H = lc["image_size"]
    hw = (H, W)
    with tempfile.TemporaryDirectory() as tmp:
        if args.scene is not None:
            from geopurify.data.readers import load_scene

            scene = load_scene(args.scene, frame_step=args.frame_step or cfg["data"]["frame_step"])
            source = "scene " + str(args.scene)
        else:
            scene = _procedural_scene(args.points, args.frames, args.seed, Path(tmp))
            source = "procedural room (offline stand-in)"
        if not scene.frames:
            print(f"error: {source} has no frames", file=sys.stderr)
            return 2
        from geopurify.vlm import build_vlm

        vlm = build_vlm(cfg)
        log.info("scene: %s, %d points, %d frames; VLM %s", source, scene.n_points, len(scene.frames), vlm.describe())
        maps = [vlm.frame_features(scene, i, hw).float().contiguous() for i in range(len(scene.frames))]
        geoms = [view_geometry(f, hw) for f in scene.frames]
    if any(g.depth is None for g in geoms):
        print("error: the reference loop needs a depth image for every frame", file=sys.stderr)
        return 2
    if any(not np.allclose(g.K, g.K_depth) for g in geoms):
        log.warning("colour and depth intrinsics differ; the reference (one intrinsic, as OpenScene) will differ")
    depths = [g.depth.numpy() for g in geoms]
    frames = [PreloadedFrame(f.name, f.pose, g.K, preloaded_depth=d) for f, g, d in zip(scene.frames, geoms, depths)]
    scene_pre = dataclasses.replace(scene, frames=frames)
    fast_vlm = PrecomputedVLM(vlm, maps)
    cfg_mean = {**cfg, "lift": {**lc, "fusion": "mean"}}
    xyz = np.ascontiguousarray(scene.xyz, dtype=np.float32)

    def run_ours():
        return lift_scene(scene_pre, fast_vlm, cfg_mean, device=args.device)

    def run_ref():
        return reference_fusion(
            xyz,
            [g.pose for g in geoms],
            [g.K for g in geoms],
            depths,
            maps,
            hw,
            int(lc["border"]),
            float(lc["occlusion_thr"]),
        )

    t_ours, t_ref = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        ours = run_ours()
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref_feat, ref_count = run_ref()
        t_ref.append(time.perf_counter() - t0)
    ours_s, ref_s = min(t_ours), min(t_ref)

    # agreement: same views per point and the same fused feature on points both saw
    seen_ref = ref_count > 0
    seen_both = ours.seen.cpu() & seen_ref
    count_equal = float((ours.n_views.cpu() == ref_count.long()).float().mean())
    diff = (ours.feat.cpu()[seen_both] - ref_feat[seen_both]).abs().amax(dim=1)
    feat_equal = float((diff <= 1e-5).float().mean()) if seen_both.any() else 1.0
    print(
        f"scene: {source}; {scene.n_points} points, {len(frames)} views, {vlm.dim}-d {vlm.describe()} maps "
        f"{tuple(maps[0].shape[1:])}"
    )
    print(f"ours      (geopurify.lift, mean fusion + nearest fill): {ours_s:.3f} s")
    print(f"reference (OpenScene per-view numpy loop):              {ref_s:.3f} s")
    print(
        f"points seen: ours {int(ours.seen.sum())}, reference {int(seen_ref.sum())}; same view count on "
        f"{100 * count_equal:.3f}% of points; same feature (1e-5) on {100 * feat_equal:.3f}% of points seen by both"
    )
    ok = count_equal >= 0.999 and feat_equal >= 0.999
    if not ok:
        print("MISMATCH: ours and the reference disagree beyond float32/float64 pixel-rounding noise")
    print(
        json.dumps(
            {
                "ours_s": round(ours_s, 4),
                "reference_s": round(ref_s, 4),
                "speedup": round(ref_s / ours_s, 2),
                "points": scene.n_points,
                "views": len(frames),
                "dim": int(vlm.dim),
                "same_count_frac": round(count_equal, 6),
                "same_feature_frac": round(feat_equal, 6),
                "source": source,
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
