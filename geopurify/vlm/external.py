"""Per-view features of any external 2D model (X-Decoder, LSeg, SAM + CLIP, ...) read from files.

One file per frame, `<scene>/features/<k>.pt` (or `<root>/<scene>/<k>.pt`, docs/external_features.md),
holding either a feature map {"feat": (C, h, w)} or X-Decoder-style masks {"mask_embeddings": (M, C),
"masks": ..., "scores": (M,) optional}. `ExternalVLM.frame_features` turns either into a (C, h, w)
map, so the project's own projection and fusion (geopurify.lift.multiview) lift them; the text side
is a prompt-embedding file or a CLIP directory (geopurify.vlm.prompts). Nothing here is a
stand-in: features and embeddings are whatever the files hold (`simulated = False`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from geopurify.data.scene import Scene
from geopurify.errors import InputError
from geopurify.io import load_torch_file
from geopurify.ops.resize import resize_nearest
from geopurify.ops.scores import l2_normalize
from geopurify.vlm.base import VLM
from geopurify.vlm.prompts import find_text_file, text_source

log = logging.getLogger(__name__)


def mask_owner(masks: torch.Tensor, scores: torch.Tensor | None, n_masks: int, where) -> torch.Tensor:
    """(H, W) int64 owning mask per pixel, -1 where no mask owns it.

    masks: an int (H, W) mask-id image (negative = none), or (M, H, W) binary masks (bool / 0-1
    integers; overlaps go to the highest score, or to the lowest index without scores), or
    (M, H, W) non-negative float mask scores (each pixel takes argmax_m scores[m] * masks[m],
    X-Decoder style; a pixel whose best score is 0 is unowned).
    """
    if masks.dim() == 2:
        if masks.is_floating_point() or masks.dtype == torch.bool:
            raise InputError(where, f"a 2-D 'masks' must be an integer mask-id image, got {masks.dtype}")
        ids = masks.long()
        if ids.numel() and int(ids.max()) >= n_masks:
            raise InputError(where, f"mask id {int(ids.max())} in 'masks' but only {n_masks} mask embeddings")
        return torch.where(ids < 0, torch.full_like(ids, -1), ids)
    if masks.dim() != 3 or masks.shape[0] != n_masks:
        raise InputError(where, f"'masks' must be (M={n_masks}, H, W) or an (H, W) id image, got {tuple(masks.shape)}")
    if scores is not None:
        scores = torch.as_tensor(scores)
        if scores.shape != (n_masks,) or not torch.isfinite(scores.float()).all():
            raise InputError(where, f"'scores' must be {n_masks} finite numbers, got {tuple(scores.shape)}")
        scores = scores.float()
    if masks.is_floating_point():
        m = masks.float()
        if not torch.isfinite(m).all() or (m < 0).any():
            raise InputError(where, "float 'masks' must be finite non-negative scores (apply a sigmoid to logits)")
        if scores is not None:
            m = m * scores.clamp(min=0)[:, None, None]
        best, owner = m.max(dim=0)
        return torch.where(best > 0, owner, torch.full_like(owner, -1))
    if masks.dtype != torch.bool:
        if masks.numel() and (int(masks.min()) < 0 or int(masks.max()) > 1):
            raise InputError(where, "integer (M, H, W) 'masks' must be binary (0/1)")
        masks = masks.bool()
    if n_masks == 0:
        return torch.full(masks.shape[1:], -1, dtype=torch.int64)
    prio = -torch.arange(n_masks, dtype=torch.float32) if scores is None else scores
    s = torch.where(masks, prio[:, None, None], torch.tensor(-torch.inf))
    best, owner = s.max(dim=0)  # ties: torch returns the first (lowest) index
    return torch.where(torch.isneginf(best), torch.full_like(owner, -1), owner)


def reference_mask_scores(emb: torch.Tensor, text_bg: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """(M,) each mask's confidence as GeoPurify's reference code has X-Decoder compute it: softmax over
    the class prompts plus a background prompt (the last row of `text_bg`, unit rows) of
    logit_scale * cos(mask embedding, prompt), the background column dropped, max over the classes.
    The background prompt only lowers the confidence of background-like masks; it is never a label."""
    logits = float(logit_scale) * l2_normalize(emb.float()) @ text_bg.float().t()
    return logits.softmax(dim=1)[:, :-1].max(dim=1).values


def paint_masks(emb: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """(C, H, W) map: each pixel holds the embedding of its owning mask, zero where unowned."""
    C = emb.shape[1]
    table = torch.cat([emb.float(), emb.new_zeros(1, C, dtype=torch.float32)])  # row M = "no mask"
    flat = owner.reshape(-1).clone()
    flat[flat < 0] = emb.shape[0]
    return table[flat].t().reshape(C, *owner.shape).contiguous()


def read_view_features(
    path: str | Path,
    dim: int,
    image_hw: tuple[int, int],
    normalize: bool = True,
    color_hw: tuple[int, int] | None = None,
    score_text: torch.Tensor | None = None,
    logit_scale: float = 100.0,
) -> torch.Tensor:
    """(dim, h, w) float32 feature map of one view from an external feature file.

    {"feat": (C, h, w)} is returned at its own resolution (lifting samples it at the projected
    pixel scaled to (h, w)). {"mask_embeddings", "masks"[, "scores"]} is painted (`mask_owner`,
    `paint_masks`). A map or masks larger than `image_hw` are first resized to it (nearest,
    pixel-centre: the very cells lifting would sample, so the lifted result is the same, at a
    bounded memory cost).
    `normalize` L2-normalises features per pixel / mask (zero stays zero). `color_hw`, the
    colour image's size, checks that the map has its aspect ratio (to within one cell).
    `score_text` (P + 1, C) unit class prompts + background prompt (`lift.background_prompt`): the
    masks are used (even when the file also has `feat`) and their scores computed from the mask
    embeddings as the reference does (`reference_mask_scores`) instead of read from the file; a file
    without masks then raises.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "external feature file not found (one <k>.pt per frame; docs/external_features.md)")
    obj = load_torch_file(path, "external feature file", kind=dict)
    has_masks = "mask_embeddings" in obj and "masks" in obj
    if score_text is not None and not has_masks:
        raise InputError(
            path,
            "lift.background_prompt scores masks, but this file holds no 'mask_embeddings' + "
            "'masks' (a dense 'feat' map: set lift.background_prompt: null)",
        )
    if "feat" in obj and score_text is None:
        fmap = obj["feat"]
        if not torch.is_tensor(fmap) or fmap.dim() != 3 or not fmap.is_floating_point():
            raise InputError(
                path,
                f"'feat' must be a float (C, h, w) tensor, got {getattr(fmap, 'dtype', type(fmap).__name__)} "
                f"{tuple(getattr(fmap, 'shape', ()))}",
            )
        if fmap.shape[0] != dim:
            raise InputError(path, f"'feat' has {fmap.shape[0]} channels, the text embeddings are {dim}-d")
        src_hw = tuple(fmap.shape[1:])
        if not torch.isfinite(fmap).all():
            raise InputError(path, "'feat' holds NaN/inf")
        if src_hw[0] * src_hw[1] > image_hw[0] * image_hw[1]:
            fmap = resize_nearest(fmap, tuple(image_hw))
        fmap = fmap.float()
        if normalize:
            fmap = l2_normalize(fmap, dim=0)
    elif has_masks:
        emb, masks = obj["mask_embeddings"], obj["masks"]
        if not torch.is_tensor(emb) or emb.dim() != 2 or not emb.is_floating_point():
            raise InputError(
                path, f"'mask_embeddings' must be a float (M, C) tensor, got {tuple(getattr(emb, 'shape', ()))}"
            )
        if emb.shape[1] != dim:
            raise InputError(path, f"'mask_embeddings' are {emb.shape[1]}-d, the text embeddings are {dim}-d")
        emb = emb.float()
        if not torch.isfinite(emb).all():
            raise InputError(path, "'mask_embeddings' hold NaN/inf")
        if not torch.is_tensor(masks) or masks.dim() not in (2, 3):
            raise InputError(path, "'masks' must be an (M, H, W) tensor or an (H, W) mask-id image")
        src_hw = tuple(masks.shape[-2:])
        if src_hw[0] * src_hw[1] > image_hw[0] * image_hw[1]:
            masks = resize_nearest(masks, tuple(image_hw))
        scores = obj.get("scores") if score_text is None else reference_mask_scores(emb, score_text, logit_scale)
        owner = mask_owner(masks, scores, emb.shape[0], path)
        fmap = paint_masks(l2_normalize(emb) if normalize else emb, owner)
    else:
        raise InputError(path, f"external feature file needs 'feat' or 'mask_embeddings' + 'masks', has {sorted(obj)}")
    h, w = src_hw
    if (
        color_hw is not None
        and abs(h * color_hw[1] / color_hw[0] - w) > 1.0 + 1e-6
        and abs(w * color_hw[0] / color_hw[1] - h) > 1.0 + 1e-6
    ):
        raise InputError(
            path,
            f"feature map is {h}x{w} (HxW) but the colour image is {color_hw[0]}x{color_hw[1]}: "
            "aspect ratios differ, the map cannot be aligned with the image",
        )
    return fmap


def save_view_features(
    path: str | Path,
    feat: torch.Tensor | None = None,
    mask_embeddings: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    scores: torch.Tensor | None = None,
) -> None:
    """Write one view's external features atomically (float16 features; masks kept as given).

    Give either `feat` (C, h, w) or `mask_embeddings` (M, C) with `masks` (and optional `scores`).
    """
    from geopurify.io import save_torch

    if (feat is None) == (mask_embeddings is None):
        raise ValueError("give either feat or mask_embeddings (+ masks)")
    if feat is not None:
        obj = {"feat": torch.as_tensor(feat).detach().cpu().to(torch.float16).contiguous()}
    else:
        if masks is None:
            raise ValueError("mask_embeddings need masks")
        masks = torch.as_tensor(masks).detach().cpu()
        obj = {
            "mask_embeddings": torch.as_tensor(mask_embeddings).detach().cpu().to(torch.float16).contiguous(),
            "masks": (masks.to(torch.float16) if masks.is_floating_point() else masks).contiguous(),
        }
        if scores is not None:
            obj["scores"] = torch.as_tensor(scores).detach().cpu().float()
    save_torch(path, obj)


def external_feature_path(
    scene: Scene, frame_index: int, feature_root: str | Path | None = None, subdir: str = "features"
) -> Path:
    """The feature file of one frame: `<feature_root>/<scene>/<k>.pt`, or `<scene dir>/<subdir>/<k>.pt`
    without a root (`<k>` the frame name)."""
    frame = scene.frames[frame_index]
    if feature_root is not None:
        return Path(feature_root) / scene.name / f"{frame.name}.pt"
    if scene.path is None:
        raise InputError(scene.name, "scene has no directory to read <scene>/features/ from; give a feature root")
    return Path(scene.path) / subdir / f"{frame.name}.pt"


class ExternalVLM(VLM):
    """Per-view features of an external 2D model (X-Decoder, LSeg, SAM + CLIP, ...) read from files.

    `text`: the text side (`text_source`: a prompt-embedding file or a CLIP directory, or any
    VLM). Feature files: `<feature_root>/<scene>/<k>.pt` when `feature_root` is given, else
    `<scene dir>/<subdir>/<k>.pt`, `<k>` the frame name (docs/external_features.md).
    """

    simulated = False

    def __init__(
        self,
        text,
        feature_root: str | Path | None = None,
        subdir: str = "features",
        normalize: bool = True,
        device: str = "cpu",
        name: str | None = None,
    ):
        self.mask_text: torch.Tensor | None = None  # class + background prompts: see `score_masks_with`
        self.mask_logit_scale = 100.0
        self.text = text if isinstance(text, VLM) else text_source(text, device=device)
        self.dim = int(self.text.dim)
        self.feature_root = None if feature_root is None else Path(feature_root)
        if self.feature_root is not None and not self.feature_root.is_dir():
            raise InputError(self.feature_root, "external feature directory not found")
        self.subdir = subdir
        self.normalize = normalize
        where = self.feature_root.name if self.feature_root is not None else f"<scene>/{subdir}"
        self.name = name or f"external ({where})"
        log.info("external per-view features from %s, %d-d, text side %s", where, self.dim, self.text.describe())

    def feature_path(self, scene: Scene, frame_index: int) -> Path:
        return external_feature_path(scene, frame_index, self.feature_root, self.subdir)

    def score_masks_with(self, class_prompts: list[str], background_prompt: str, logit_scale: float) -> None:
        """Score masks the reference's way (`reference_mask_scores`) over these class prompts plus a
        background prompt, all embedded by the text side, instead of using the files' scores."""
        self.mask_text = l2_normalize(self.encode_text(list(class_prompts) + [background_prompt]).float())
        self.mask_logit_scale = float(logit_scale)
        log.info(
            "external masks scored as the reference does: %d class prompts + background prompt %r, "
            "logit scale %g (the files' scores are not used)",
            len(class_prompts),
            background_prompt,
            logit_scale,
        )

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return self.text.encode_text(prompts)

    def frame_features(self, scene: Scene, frame_index: int, image_hw: tuple[int, int]) -> torch.Tensor:
        """(dim, h, w) map of frame `frame_index` from its feature file (`read_view_features`)."""
        frame = scene.frame(frame_index)
        color_hw = None
        if frame.color_path is not None:
            from geopurify.data.images import image_header

            color_hw = image_header(frame.color_path)[1]
        return read_view_features(
            self.feature_path(scene, frame_index),
            self.dim,
            image_hw,
            normalize=self.normalize,
            color_hw=color_hw,
            score_text=self.mask_text,
            logit_scale=self.mask_logit_scale,
        )

    @classmethod
    def from_config(cls, cfg: dict, device: str = "cpu", label_set=None):
        """The `external` backend of a config (the registry entry of lift.vlm). lift.vlm_path: the feature
        root (<root>/<scene>/<k>.pt; null = <scene>/features/). Text side: lift.text_path when the
        config has it, else text_embeddings.pt / .npy inside lift.vlm_path. With
        lift.background_prompt, masks are scored the reference's way over the label set's prompts."""
        lift = cfg["lift"]
        root, text = lift.get("vlm_path"), lift.get("text_path")
        if root and not Path(root).is_dir():
            raise InputError(root, "external feature directory not found (lift.vlm_path)")
        if not text:
            if not root:
                raise InputError(
                    "config lift.text_path",
                    "the external backend needs prompt embeddings: set "
                    "lift.text_path, or lift.vlm_path to a directory holding "
                    "text_embeddings.pt",
                )
            text = find_text_file(root)
        vlm = cls(text, feature_root=root or None, device=device)
        background = lift.get("background_prompt")
        if background is not None:
            from geopurify.data.labels import get_label_set
            from geopurify.vlm.text import prompts_for

            if not isinstance(background, str) or not background.strip():
                raise InputError("config lift.background_prompt", f"must be null or a prompt, got {background!r}")
            classes = prompts_for(get_label_set(cfg["data"]["label_set"]), lift["prompt_template"])
            vlm.score_masks_with(classes, background, float(lift["consensus_logit_scale"]))
        return vlm
