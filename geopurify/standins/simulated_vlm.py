"""SIMULATED VLM: an offline stand-in for a 2D vision-language model (METHOD.md section 8).

No CLIP / LSeg / X-Decoder weights can be had offline, so this backend makes per-pixel features
from ground-truth labels and degrades them the way real VLM features are degraded. The features
live in a real text-embedding space (all-MiniLM-L6-v2): a pixel of class c starts as the
embedding of "a {c} in a scene", so classification against the text embeddings works exactly as
with a real VLM. It is named as simulated in its name, its `simulated` flag and its log lines;
every output made with it must say so. See docs/simulated_vlm.md for the knobs and their values.

Per view (frame), in order:
1. a per-view label image: `Frame.label_image()` when the scene has one, else a z-buffer render of
   the labelled points (`geopurify.ops.project.zbuffer`) with the frame's pose and intrinsics;
   raw ids are mapped to the label set's classes; unlabelled pixels become "background";
2. objects: instance ids from the scene, else connected regions of one class;
3. (b) view-dependent confusions: with prob `confusion_prob` an object's class is swapped for a
   semantically close one, drawn from softmax(text similarity / confusion_temp) over the others;
   (c) whole-mask errors: with prob `mask_error_prob` it takes a uniformly random other class;
4. (a) low resolution: class embeddings averaged over `patch` x `patch` cells, giving a coarse
   (C, H/patch, W/patch) map whose boundary cells mix classes;
5. (d) Gaussian noise `noise_std` per channel, then L2 normalisation.
Every random draw comes from a generator seeded by (vlm_sim.seed, scene name, frame index).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from geopurify.config import defaults
from geopurify.data.scene import Frame, Scene
from geopurify.errors import InputError
from geopurify.ops.project import rescale_intrinsic, zbuffer
from geopurify.ops.resize import resize_nearest
from geopurify.ops.scores import l2_normalize
from geopurify.schema import check
from geopurify.vlm.base import VLM
from geopurify.vlm.text import DEFAULT_TEMPLATE, MiniLMTextEncoder, prompts_for

log = logging.getLogger(__name__)

BACKGROUND_PROMPT = "background"  # unlabelled pixels; encoded bare, see docs/simulated_vlm.md
_KEY_SHIFT = 40  # object key = class << 40 | sub-id


# ---------------------------------------------------------------- geometry helpers


def frame_image_hw(frame: Frame, image_hw: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of the image that `frame.intrinsic` belongs to: the colour image, else the label
    image (read from the file header), else `image_hw` (virtual cameras are posed for it).

    The same rule as lifting's `view_geometry`, so the rendered labels line up with the lift.
    """
    from geopurify.data.images import image_header

    for p in (frame.color_path, frame.label_path):
        if p is not None:
            return tuple(image_header(p)[1])
    return int(image_hw[0]), int(image_hw[1])


def render_point_labels(
    scene: Scene, frame: Frame, image_hw: tuple[int, int], splat: int = 2, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-pixel raw label ids (0 = nothing) and instance ids (or None) of the points visible in a view.

    Uses the z-buffer of the points themselves (`geopurify.ops.project.zbuffer`, as lifting's
    occlusion test), at `image_hw`, with the frame's intrinsics scaled from its own image size.
    `labels`: per-point raw ids to render instead of `scene.labels` (e.g. the scene's labels in
    another raw id space).
    """
    labels = scene.labels if labels is None else labels
    if labels is None:
        raise InputError(scene.path or scene.name, "the simulated VLM needs per-point labels or per-frame label images")
    K = rescale_intrinsic(frame.intrinsic, frame_image_hw(frame, image_hw), image_hw)
    xyz = torch.from_numpy(np.ascontiguousarray(scene.xyz, dtype=np.float32))
    _, index = zbuffer(xyz, np.asarray(frame.pose, np.float64), K, tuple(image_hw), splat=splat)
    index = torch.as_tensor(index).cpu().numpy().astype(np.int64)
    hit = index >= 0
    out = np.zeros(index.shape, np.int32)
    out[hit] = labels[index[hit]]
    inst = None
    if scene.instances is not None:
        inst = np.zeros(index.shape, np.int32)
        inst[hit] = scene.instances[index[hit]]
    return out, inst


# ---------------------------------------------------------------- pure degradation steps


def object_map(cls_map: np.ndarray, n_cls: int, instances: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split a class map into objects: (obj (H, W) int64, -1 on background; obj_cls (M,) int64).

    An object is one (class, instance id) pair where the instance id is > 0, else one 8-connected
    region of a single class. Objects are numbered in a fixed order (sorted keys), so random
    draws per object are reproducible.
    """
    valid = cls_map < n_cls
    sub = np.zeros(cls_map.shape, np.int64)
    need_cc = valid.copy()
    if instances is not None:
        has_inst = valid & (instances > 0)
        sub[has_inst] = instances[has_inst].astype(np.int64)
        need_cc &= ~has_inst
    if need_cc.any():
        eight = np.ones((3, 3), bool)
        for c in np.unique(cls_map[need_cc]):
            comp, _ = ndimage.label(need_cc & (cls_map == c), structure=eight)
            m = comp > 0
            sub[m] = (1 << 32) + comp[m].astype(np.int64)
    key = (cls_map.astype(np.int64) << _KEY_SHIFT) | sub
    obj = np.full(cls_map.shape, -1, np.int64)
    keys, inv = np.unique(key[valid], return_inverse=True)
    obj[valid] = inv.reshape(-1)
    return obj, keys >> _KEY_SHIFT


def close_class_probs(class_emb: torch.Tensor, temp: float) -> np.ndarray:
    """(K, K) row-stochastic swap probabilities: softmax over the other classes of cos-sim / temp.

    The diagonal is zero: a confusion always changes the class. With one class the row is zero.
    """
    e = l2_normalize(class_emb.double())
    s = e @ e.T / temp
    s.fill_diagonal_(float("-inf"))
    if s.shape[0] == 1:
        return np.zeros((1, 1))
    return torch.softmax(s, dim=1).numpy()


def corrupt_classes(
    obj_cls: np.ndarray,
    rng: np.random.Generator,
    close_probs: np.ndarray,
    confusion_prob: float,
    mask_error_prob: float,
) -> np.ndarray:
    """New class per object: a whole-mask error (uniform other class) with prob `mask_error_prob`,
    else a semantic confusion (drawn from `close_probs[c]`) with prob `confusion_prob`, else unchanged.

    Three uniforms are drawn per object whatever happens, so the draws do not depend on settings.
    """
    K = close_probs.shape[0]
    M = obj_cls.shape[0]
    u, v = rng.random(M), 1.0 - rng.random(M)  # v in (0, 1]
    r = rng.integers(0, max(K - 1, 1), size=M)
    out = obj_cls.copy()
    if K < 2 or M == 0:
        return out
    uniform_other = r + (r >= obj_cls)
    cdf = np.cumsum(close_probs[obj_cls], axis=1)
    close = np.minimum((cdf < v[:, None] * cdf[:, -1:]).sum(1), K - 1)
    is_mask = u < mask_error_prob
    is_conf = (u >= mask_error_prob) & (u < mask_error_prob + confusion_prob)
    out[is_mask] = uniform_other[is_mask]
    out[is_conf] = close[is_conf]
    return out


def patch_fractions(cls_map: np.ndarray, n_slots: int, patch: int) -> np.ndarray:
    """(h, w, n_slots) float32 share of each class slot among the pixels of every patch x patch cell.

    h = ceil(H / patch), w = ceil(W / patch); partial cells at the border average what they hold.
    Averaging class embeddings over a cell equals these shares times the embedding table.
    """
    H, W = cls_map.shape
    h, w = -(-H // patch), -(-W // patch)
    cell = (np.arange(H)[:, None] // patch) * w + (np.arange(W)[None, :] // patch)
    counts = np.bincount((cell * n_slots + cls_map).reshape(-1), minlength=h * w * n_slots)
    counts = counts.reshape(h, w, n_slots).astype(np.float32)
    return counts / counts.sum(-1, keepdims=True)


def features_from_fractions(
    frac: np.ndarray, table: torch.Tensor, noise_std: float, rng: np.random.Generator
) -> torch.Tensor:
    """(C, h, w) unit features: class-share-weighted embedding mix, plus N(0, noise_std) per channel."""
    f = torch.from_numpy(frac) @ table.float()
    if noise_std > 0:
        f = f + noise_std * torch.from_numpy(rng.standard_normal(f.shape, dtype=np.float32))
    return l2_normalize(f).permute(2, 0, 1).contiguous()


def view_rng(seed: int, scene_name: str, frame_index: int) -> np.random.Generator:
    """The generator for one view: a function of (seed, scene name, frame index) only."""
    return np.random.default_rng([int(seed), zlib.crc32(scene_name.encode("utf-8")), int(frame_index)])


# ---------------------------------------------------------------- the backend


@dataclass
class SimView:
    """One simulated view: ground-truth and shown class maps at image size (K = background)."""

    gt: np.ndarray  # (H, W) int64 class index, n_classes for background
    shown: np.ndarray  # (H, W) int64 after confusions / mask errors
    objects: np.ndarray  # (H, W) int64 object index, -1 on background
    obj_gt: np.ndarray  # (M,) class of each object
    obj_shown: np.ndarray  # (M,) class each object is shown as


class SimulatedVLM(VLM):
    """SIMULATED vision-language model (offline stand-in): degraded label-derived features in
    the all-MiniLM-L6-v2 text space. See the module docstring and docs/simulated_vlm.md.

    `cfg` is the full config dict (uses data.label_set, lift.prompt_template, vlm_sim.*);
    `label_set` overrides the one named in the config.
    """

    name = "simulated-vlm (stand-in)"
    simulated = True

    def __init__(self, cfg: dict | None = None, label_set=None, text_encoder: MiniLMTextEncoder | None = None):
        cfg = defaults() if cfg is None else cfg
        self.sim = {**defaults()["vlm_sim"], **cfg.get("vlm_sim", {})}  # keys the config lacks: their defaults
        check({"vlm_sim": self.sim}, "vlm_sim")
        if label_set is None:
            from geopurify.data.labels import get_label_set

            label_set = get_label_set(cfg.get("data", {}).get("label_set", "scannet20"))
        self.label_set = label_set
        self._point_labels: tuple = (None, None)  # (scene key, per-point raw ids) of the last scene rendered
        self.template = cfg.get("lift", {}).get("prompt_template", DEFAULT_TEMPLATE)
        self.splat = int(cfg.get("lift", {}).get("zbuffer_splat", 2))  # as lifting's occlusion z-buffer
        self.text = text_encoder or MiniLMTextEncoder()
        self.dim = self.text.dim
        self.n_classes = len(label_set.names)
        self.class_emb = self.text.encode(prompts_for(label_set, self.template))  # (K, C)
        self.background_emb = self.text.encode([BACKGROUND_PROMPT])  # (1, C)
        self.table = torch.cat([self.class_emb, self.background_emb], 0)  # slot K = background
        self.close_probs = close_class_probs(self.class_emb, self.sim["confusion_temp"])
        log.info(
            "SIMULATED VLM (offline stand-in, not a real vision model): %d classes of label set %s in "
            "the %s text space; patch=%d confusion_prob=%.3g confusion_temp=%.3g mask_error_prob=%.3g "
            "noise_std=%.3g seed=%d",
            self.n_classes,
            getattr(label_set, "name", "?"),
            self.text.name,
            self.sim["patch"],
            self.sim["confusion_prob"],
            self.sim["confusion_temp"],
            self.sim["mask_error_prob"],
            self.sim["noise_std"],
            self.sim["seed"],
        )

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(P, 384) unit all-MiniLM-L6-v2 embeddings (the real text encoder)."""
        return self.text.encode(prompts)

    def map_raw(self, raw: np.ndarray, scene: Scene, space: str | None = None) -> np.ndarray:
        """Raw ids -> class indices (IGNORE = -1), in `space` (default the scene's raw id space)
        when the set has it."""
        space = scene.label_space if space is None else space
        spaces = getattr(self.label_set, "spaces", None)
        if spaces is not None and space in spaces:
            return self.label_set.map(raw, space=space)
        return self.label_set.map(raw)

    def point_labels(self, scene: Scene) -> tuple[np.ndarray | None, str]:
        """(per-point raw ids, their space) to render: the scene's labels when the label set is
        defined on their space, else the scene directory's labels in a space it is defined on
        (e.g. labels_scannet200.npy for scannet200 when the scene was loaded with its NYU40
        labels), so the simulated views do not depend on which labels the caller loaded."""
        spaces = getattr(self.label_set, "spaces", None)
        if spaces is None or scene.label_space in spaces or scene.path is None:
            return scene.labels, scene.label_space
        from geopurify.data.readers import load_labels, scene_label_space

        space = scene_label_space(scene.path, self.label_set)
        if space is None:
            return scene.labels, scene.label_space
        key = (str(scene.path), scene.n_points, space)
        if self._point_labels[0] != key:  # views of one scene come together: keep the last scene's
            self._point_labels = (key, load_labels(scene.path, space, scene.n_points))
        return self._point_labels[1], space

    def view_classes(
        self, scene: Scene, frame_index: int, image_hw: tuple[int, int], rng: np.random.Generator | None = None
    ) -> SimView:
        """Ground-truth and corrupted class maps of one view at `image_hw` (before pooling and noise)."""
        frame = scene.frame(frame_index)
        if rng is None:
            rng = view_rng(self.sim["seed"], scene.name, frame_index)
        H, W = int(image_hw[0]), int(image_hw[1])
        raw = frame.label_image()
        inst, space = None, scene.label_space
        if raw is not None:
            raw = resize_nearest(np.asarray(raw), (H, W))
        else:
            point_labels, space = self.point_labels(scene)
            raw, inst = render_point_labels(scene, frame, (H, W), splat=self.splat, labels=point_labels)
        K = self.n_classes
        gt = np.asarray(self.map_raw(raw.reshape(-1), scene, space), dtype=np.int64).reshape(H, W)
        gt = np.where((gt < 0) | (gt >= K), K, gt)
        objects, obj_gt = object_map(gt, K, inst)
        obj_shown = corrupt_classes(
            obj_gt, rng, self.close_probs, self.sim["confusion_prob"], self.sim["mask_error_prob"]
        )
        shown = np.where(objects >= 0, obj_shown[np.maximum(objects, 0)], K)
        return SimView(gt=gt, shown=shown, objects=objects, obj_gt=obj_gt, obj_shown=obj_shown)

    def frame_features(self, scene: Scene, frame_index: int, image_hw: tuple[int, int]) -> torch.Tensor:
        """(384, ceil(H/patch), ceil(W/patch)) unit SIMULATED features of one view."""
        rng = view_rng(self.sim["seed"], scene.name, frame_index)
        view = self.view_classes(scene, frame_index, image_hw, rng)
        frac = patch_fractions(view.shown, self.n_classes + 1, self.sim["patch"])
        return features_from_fractions(frac, self.table, float(self.sim["noise_std"]), rng)

    @classmethod
    def from_config(cls, cfg: dict, device: str = "cpu", label_set=None):
        """The `simulated` backend of a config (the registry entry of lift.vlm; CPU whatever the device)."""
        return cls(cfg, label_set=label_set)
