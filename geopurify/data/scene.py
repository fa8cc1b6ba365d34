"""The one in-memory scene every stage reads.

Conventions (all readers convert to these):
- `xyz` float32 (N, 3), metres, in the scene's *world* frame (axis-aligned for ScanNet).
- `rgb` uint8 (N, 3).
- `labels` int32 (N,) raw dataset ids in `label_space` (e.g. "nyu40"; 0 = unannotated), or None.
- `instances` int32 (N,) (0 = none), or None.
- `Frame.pose` is camera-to-world in the *same* world frame as `xyz` (a reader folds any
  axis-alignment matrix into it), OpenCV camera axes (x right, y down, z forward).
- `Frame.intrinsic` is 3x3 for the colour image; `Frame.depth_intrinsic` 3x3 for the depth image.
- Images are loaded lazily: a frame keeps paths, not pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geopurify.errors import InputError


@dataclass
class Frame:
    """One posed RGB-D view. Pixels are read on demand from the paths."""

    name: str
    pose: np.ndarray  # (4, 4) float64 camera-to-world
    intrinsic: np.ndarray  # (3, 3) float64, colour image
    color_path: Path | None = None
    depth_path: Path | None = None
    depth_intrinsic: np.ndarray | None = None  # (3, 3); defaults to `intrinsic`
    depth_scale: float = 1000.0  # depth PNG units per metre (ScanNet 1000, Matterport 4000)
    label_path: Path | None = None  # optional per-pixel label image (synthetic ground truth)
    _pixels: dict = field(default_factory=dict, repr=False)  # images decoded ahead by `preload`

    def color(self) -> np.ndarray:
        """(H, W, 3) uint8."""
        from geopurify.data.images import read_color

        if "color" in self._pixels:
            return self._pixels["color"]
        if self.color_path is None:
            raise InputError(None, f"frame {self.name} has no colour image")
        return read_color(self.color_path)

    def depth(self) -> np.ndarray | None:
        """(H, W) float32 metres (0 = no measurement), or None when the frame has no depth."""
        from geopurify.data.images import read_depth

        if "depth" in self._pixels:
            return self._pixels["depth"]
        if self.depth_path is None:
            return None
        return read_depth(self.depth_path, self.depth_scale)

    def label_image(self) -> np.ndarray | None:
        """(H, W) int32 raw label ids, or None."""
        from geopurify.data.images import read_label_image

        if "label" in self._pixels:
            return self._pixels["label"]
        if self.label_path is None:
            return None
        return read_label_image(self.label_path)

    def preload(self, kinds=("color", "depth", "label")) -> int:
        """Decode this frame's images of `kinds` now and keep them (later calls return them without
        reading a file): a loader process decodes ahead of the computation. Kinds the frame has no
        file for are left out, and so are images that fail to read: the lifting reads those again and
        handles them as it always does (a frame skipped and counted, or the error). Returns the bytes held."""
        read = {
            "color": (self.color_path, self.color),
            "depth": (self.depth_path, self.depth),
            "label": (self.label_path, self.label_image),
        }
        for kind in kinds:
            path, reader = read[kind]
            if kind not in self._pixels and path is not None:
                try:
                    self._pixels[kind] = reader()
                except (InputError, OSError, ValueError):
                    continue
        return sum(0 if a is None else a.nbytes for a in self._pixels.values())

    @property
    def K_depth(self) -> np.ndarray:
        return self.intrinsic if self.depth_intrinsic is None else self.depth_intrinsic


@dataclass
class Scene:
    """Points with optional labels and posed frames; see the module docstring for conventions."""

    name: str
    xyz: np.ndarray
    rgb: np.ndarray
    labels: np.ndarray | None = None
    instances: np.ndarray | None = None
    frames: list[Frame] = field(default_factory=list)
    label_space: str = "nyu40"
    source: str = "unknown"  # "scannet", "matterport", "synthetic (procedural room)", ...
    path: Path | None = None
    meta: dict = field(default_factory=dict)  # reader notes, e.g. {"skipped_frames": 2, "depth_scale": 1000.0}
    _normals: np.ndarray | None = field(default=None, repr=False)
    _normals_source: str | None = field(default=None, repr=False)

    @property
    def n_points(self) -> int:
        return int(self.xyz.shape[0])

    def frame(self, index: int) -> Frame:
        """Frame `index`; InputError naming the scene when it has no such frame."""
        if not 0 <= index < len(self.frames):
            raise InputError(
                self.path if self.path is not None else self.name,
                f"frame index {index} out of range (scene has {len(self.frames)} frames)",
            )
        return self.frames[index]

    @property
    def normals(self) -> np.ndarray:
        """(N, 3) float32 normals: the scene's own (from its mesh, a normals.npy, or a procedural
        room's surfaces; see `set_normals`), else computed on first use by local PCA over kNN
        (`geopurify.data.normals`). Every stage reads a scene's normals here."""
        if self._normals is None:
            from geopurify.data.normals import estimate_normals

            self._normals, self._normals_source = estimate_normals(self.xyz), "pca"
        return self._normals

    @normals.setter
    def normals(self, value: np.ndarray) -> None:
        self.set_normals(value, "given")

    def set_normals(self, value: np.ndarray, source: str) -> None:
        """Give the scene its normals and say where they come from (`normals_source`)."""
        self._normals, self._normals_source = value, str(source)

    @property
    def normals_source(self) -> str:
        """Where `normals` come from: "mesh", "analytic", "file" or "given" (set on the scene), or
        "pca" (estimated from the points; also before the first use computes them)."""
        return "pca" if self._normals is None else (self._normals_source or "given")

    def normals_fingerprint(self) -> bytes:
        """What the normals add to the points for a cache key: b"pca" for PCA normals (a function of
        xyz), else the source and the bytes of the array."""
        if self.normals_source == "pca":
            return b"normals:pca"
        return b"normals:" + self.normals_source.encode() + np.ascontiguousarray(self._normals, np.float32).tobytes()

    def validate(self) -> Scene:
        """Raise InputError naming the scene path for malformed arrays (shape, dtype, NaN/inf)."""
        where = self.path if self.path is not None else self.name
        n = self.xyz.shape[0] if self.xyz.ndim == 2 else -1
        if self.xyz.ndim != 2 or self.xyz.shape[1] != 3:
            raise InputError(where, f"points must be (N, 3), got {self.xyz.shape}")
        if n == 0:
            raise InputError(where, "scene has no points")
        if not np.isfinite(self.xyz).all():
            raise InputError(where, f"{int((~np.isfinite(self.xyz)).any(1).sum())} points have NaN/inf coordinates")
        if self.rgb.shape != (n, 3):
            raise InputError(where, f"colours must be ({n}, 3), got {self.rgb.shape}")
        for nm, arr in (("labels", self.labels), ("instances", self.instances)):
            if arr is not None and arr.shape != (n,):
                raise InputError(where, f"{nm} must be ({n},), got {arr.shape}")
        if self._normals is not None and np.shape(self._normals) != (n, 3):
            raise InputError(where, f"normals must be ({n}, 3), got {np.shape(self._normals)}")
        return self
