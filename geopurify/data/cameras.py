"""Pinhole cameras: intrinsics, look-at poses, and orbits of views through a room.

`virtual_frames` poses cameras in a scene that has no frames (e.g. a point cloud alone), so that
a 2D model can still be simulated on views of it. These are VIRTUAL cameras, an offline stand-in
for a real scan trajectory: they carry no images. The procedural rooms (`geopurify.standins.rooms`)
use the same orbit for their rendered trajectories.

Conventions (docs/architecture.md): poses are 4x4 camera-to-world, OpenCV camera axes (x right,
y down, z forward), world z up; pixel (col, row) = (u, v) has its centre at integer coordinates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from geopurify.data.scene import Frame
from geopurify.errors import InputError
from geopurify.ops.knn import PointTree

logger = logging.getLogger(__name__)

SCANNET_DEPTH_FX = 577.87  # ScanNet depth camera focal length (pixels) at 640 x 480: ~58 deg horizontal FOV
EYE_HEIGHT = 1.5  # metres above the floor, a hand-held scan


def intrinsic_matrix(image_hw: tuple[int, int], fx: float | None = None) -> np.ndarray:
    """3x3 pinhole intrinsics for an (H, W) image, principal point at the image centre.

    Without `fx`, the focal length is ScanNet's depth camera scaled to the width, so every image
    size sees the same field of view.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {image_hw}")
    f = SCANNET_DEPTH_FX * w / 640.0 if fx is None else float(fx)
    return np.array([[f, 0.0, (w - 1) / 2.0], [0.0, f, (h - 1) / 2.0], [0.0, 0.0, 1.0]])


def look_at(eye, target, up=(0.0, 0.0, 1.0), roll: float = 0.0) -> np.ndarray:
    """4x4 camera-to-world pose (OpenCV axes) at `eye` looking at `target`, rolled by `roll` radians."""
    eye = np.asarray(eye, np.float64)
    fwd = np.asarray(target, np.float64) - eye
    norm = np.linalg.norm(fwd)
    if norm < 1e-12:
        raise ValueError("look_at: target coincides with eye")
    fwd = fwd / norm
    up = np.asarray(up, np.float64)
    right = np.cross(fwd, up)
    if np.linalg.norm(right) < 1e-9:  # looking straight along `up`: any horizontal right will do
        right = np.cross(fwd, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    c, s = np.cos(roll), np.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, fwd, eye
    return pose


def orbit_poses(
    centre_xy,
    radii_xy,
    eye_z: float,
    n: int,
    rng: np.random.Generator,
    is_free: Callable[[np.ndarray], bool] | None = None,
    pitch_deg: tuple[float, float] = (-32.0, -8.0),
    pan_deg: float = 25.0,
    height_jitter: float = 0.12,
    roll_deg: float = 2.0,
) -> np.ndarray:
    """(n, 4, 4) poses on an ellipse around `centre_xy`, each looking across the room.

    A hand-held scan walks around a room and looks at the far side: here camera k stands at angle
    theta_k on the ellipse and looks back past the centre, panned smoothly by up to `pan_deg`,
    pitched down by a random angle in `pitch_deg`, with small height and roll jitter. When
    `is_free(eye)` is False the camera is pulled towards the centre (up to 6 times) so it does
    not stand inside furniture.
    """
    if n < 1:
        raise ValueError(f"need at least one camera, got {n}")
    centre_xy = np.asarray(centre_xy, np.float64)
    radii_xy = np.asarray(radii_xy, np.float64)
    theta0 = rng.uniform(0.0, 2 * np.pi)
    phase = rng.uniform(0.0, 2 * np.pi)
    poses = np.empty((n, 4, 4))
    for k in range(n):
        theta = theta0 + 2 * np.pi * k / n + rng.uniform(-0.3, 0.3) * np.pi / n
        radial = np.array([np.cos(theta), np.sin(theta)])
        z = eye_z + rng.uniform(-height_jitter, height_jitter)
        scale = 1.0
        eye = np.array([*(centre_xy + scale * radii_xy * radial), z])
        for _ in range(6):
            if is_free is None or is_free(eye):
                break
            scale *= 0.7
            eye = np.array([*(centre_xy + scale * radii_xy * radial), z])
        pan = np.deg2rad(pan_deg) * np.sin(3 * theta + phase) + rng.uniform(-0.05, 0.05)
        yaw = theta + np.pi + pan
        pitch = np.deg2rad(rng.uniform(*pitch_deg))
        fwd = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
        poses[k] = look_at(eye, eye + fwd, roll=np.deg2rad(rng.uniform(-roll_deg, roll_deg)))
    return poses


def virtual_frames(
    xyz: np.ndarray, n_frames: int, image_hw: tuple[int, int] = (240, 320), seed: int = 0
) -> list[Frame]:
    """`n_frames` VIRTUAL posed cameras (no images) looking into a scene given by its points.

    For scenes without a scan trajectory: cameras stand at eye height (1.5 m above the floor,
    the 1st percentile of z) on an ellipse around the horizontal centre of the points (robust
    2..98 percentile bounds), at least 0.3 m from any point where possible, and look across the
    scene with a slight downward pitch. Intrinsics are ScanNet-like for `image_hw` = (H, W).
    """
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or len(xyz) == 0:
        raise InputError(None, f"virtual_frames needs (N, 3) points, got shape {xyz.shape}")
    if not np.isfinite(xyz).all():
        raise InputError(None, "virtual_frames: points contain NaN/inf")
    rng = np.random.default_rng(seed)
    lo = np.percentile(xyz, 2, axis=0)
    hi = np.percentile(xyz, 98, axis=0)
    floor = float(np.percentile(xyz[:, 2], 1))
    height = float(hi[2] - floor)
    eye_z = floor + (min(EYE_HEIGHT, 0.6 * height) if height > 0 else EYE_HEIGHT)
    centre = (lo[:2] + hi[:2]) / 2
    radii = 0.35 * (hi[:2] - lo[:2]) / 2
    tree = PointTree(xyz.astype(np.float64))
    clearance = min(0.3, 0.1 * float(max(hi[0] - lo[0], hi[1] - lo[1], 1e-3)))

    def is_free(eye: np.ndarray) -> bool:
        return bool(tree.query(eye, k=1)[0][0, 0] >= clearance)

    poses = orbit_poses(centre, radii, eye_z, int(n_frames), rng, is_free=is_free)
    K = intrinsic_matrix(image_hw)
    logger.info(
        "%d virtual cameras (no images, a stand-in for a scan trajectory) at eye height %.2f m", n_frames, eye_z
    )
    return [Frame(name=f"virtual_{k}", pose=poses[k], intrinsic=K.copy()) for k in range(len(poses))]
