"""A real CLIP backend (transformers format, local checkpoint directory) with dense features.

CLIP is trained on one global image embedding; its patch tokens are not aligned with the text
space. MaskCLIP (Zhou et al., ECCV 2022) showed that the *value* path of the last attention block
is: for every patch token x entering the last block,
    v = x + out_proj(v_proj(layer_norm1(x)))        (attention replaced by the identity map)
    v = v + mlp(layer_norm2(v))                     (the block's feed-forward branch, as MaskCLIP)
    f = normalize(visual_projection(post_layernorm(v)))
which gives one text-aligned feature per patch. `ClipVLM.frame_features` returns these as a
(C, h, w) map on the patch grid; lifting samples it at projected pixels.

Input size: the whole colour frame is resized (bicubic, antialiased) so that its shorter side is
the model's `image_size` (224 for ViT-B/16, 336 for ViT-L/14@336) and both sides are whole
multiples of the patch size, keeping the aspect ratio; position embeddings are interpolated to
that grid (transformers' `interpolate_pos_encoding`). No sliding windows: one forward per frame.
The map covers the full frame, so it lines up with any `image_hw` of the same aspect ratio.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geopurify.data.scene import Scene
from geopurify.errors import InputError
from geopurify.ops.scores import l2_normalize
from geopurify.vlm.base import VLM

log = logging.getLogger(__name__)

# OpenAI CLIP's published pixel statistics, used when the checkpoint has no preprocessor_config.json
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_input_grid(hw: tuple[int, int], short_side: int, patch: int) -> tuple[int, int]:
    """Patch grid (gh, gw) for an image of size `hw` resized to shorter side `short_side`, keeping aspect."""
    h, w = int(hw[0]), int(hw[1])
    s = short_side / min(h, w)
    return max(1, round(h * s / patch)), max(1, round(w * s / patch))


def normalize_image(img: np.ndarray, grid: tuple[int, int], patch: int, mean, std) -> torch.Tensor:
    """(1, 3, gh*patch, gw*patch) float32: uint8 (H, W, 3) resized bicubically and standardised."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got {img.shape}")
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0
    size = (grid[0] * patch, grid[1] * patch)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def maskclip_value_path(layer, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's last-block output for tokens `x` (B, L, D): attention replaced by its value path."""
    attn = layer.self_attn
    v = x + attn.out_proj(attn.v_proj(layer.layer_norm1(x)))
    return v + layer.mlp(layer.layer_norm2(v))


class ClipVLM(VLM):
    """CLIP from a local transformers checkpoint directory (config.json, weights, tokenizer files).

    encode_text: `get_text_features`, L2-normalised. frame_features: MaskCLIP dense patch features.
    """

    simulated = False

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 64):
        path = Path(path)
        if not (path / "config.json").is_file():
            raise InputError(path, "not a transformers CLIP checkpoint directory (no config.json)")
        from transformers import AutoTokenizer, CLIPModel

        try:
            model = CLIPModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(
                path, f"cannot load CLIP weights ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            ) from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(
                path, f"cannot load the CLIP tokenizer ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            ) from None
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        vc = model.config.vision_config
        self.patch = int(vc.patch_size)
        self.short_side = int(vc.image_size)
        self.max_text_len = int(model.config.text_config.max_position_embeddings)
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        pp = path / "preprocessor_config.json"
        if pp.is_file():
            try:
                pc = json.loads(pp.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise InputError(pp, f"not valid JSON ({type(e).__name__})") from None
            self.mean = tuple(pc.get("image_mean", self.mean))
            self.std = tuple(pc.get("image_std", self.std))
        self.dim = int(model.config.projection_dim)
        self.name = f"clip ({path.name})"
        self.path = path
        log.info(
            "CLIP backend from %s: %d-d, patch %d, input shorter side %d (MaskCLIP dense features)",
            path,
            self.dim,
            self.patch,
            self.short_side,
        )

    @torch.inference_mode()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(P, dim) float32 unit text embeddings (`get_text_features`), on the CPU."""
        out = []
        for i in range(0, len(prompts), self.batch_size):
            tok = self.tokenizer(
                list(prompts[i : i + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_text_len,
                return_tensors="pt",
            )
            feats = self.model.get_text_features(
                input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
            )
            if not torch.is_tensor(feats):  # transformers >= 5 returns an output object
                feats = feats.pooler_output
            out.append(l2_normalize(feats.float()).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    @torch.inference_mode()
    def dense_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(dim, gh, gw) unit MaskCLIP features for one normalised image (1, 3, gh*patch, gw*patch)."""
        vm = self.model.vision_model
        vm = getattr(vm, "vision_model", vm)  # transformers 4.x wraps the transformer once more
        last = vm.encoder.layers[-1]
        seen = {}

        def grab(module, args, kwargs):  # the hidden states entering the last block
            seen["x"] = args[0] if args else kwargs["hidden_states"]

        handle = last.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            vm(pixel_values=pixel_values.to(self.device), interpolate_pos_encoding=True)
        finally:
            handle.remove()
        v = maskclip_value_path(last, seen["x"])[:, 1:]  # drop the class token
        f = l2_normalize(self.model.visual_projection(vm.post_layernorm(v)).float())[0]
        gh, gw = pixel_values.shape[-2] // self.patch, pixel_values.shape[-1] // self.patch
        return f.reshape(gh, gw, -1).permute(2, 0, 1).contiguous().cpu()

    def frame_features(self, scene: Scene, frame_index: int, image_hw: tuple[int, int]) -> torch.Tensor:
        """(dim, gh, gw) dense features of the frame's colour image (see the module docstring for sizes)."""
        frame = scene.frame(frame_index)
        if frame.color_path is None:
            raise InputError(
                scene.path or scene.name,
                f"frame {frame.name} has no colour image; the CLIP backend needs colour frames",
            )
        img = frame.color()
        grid = clip_input_grid(img.shape[:2], self.short_side, self.patch)
        return self.dense_features(normalize_image(img, grid, self.patch, self.mean, self.std))

    @classmethod
    def from_config(cls, cfg: dict, device: str = "cpu", label_set=None):
        """The `clip` backend of a config (the registry entry of lift.vlm): lift.vlm_path, a local CLIP
        checkpoint directory (transformers format)."""
        path = cfg["lift"].get("vlm_path")
        if not path:
            raise InputError(
                "config lift.vlm_path",
                "the clip backend needs lift.vlm_path: a local CLIP checkpoint directory (transformers format)",
            )
        if not Path(path).is_dir():
            raise InputError(path, "CLIP checkpoint directory not found (lift.vlm_path)")
        return cls(path, device=device)
