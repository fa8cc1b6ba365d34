"""2D vision-language backends behind one interface (`VLM`: `encode_text`, `frame_features`).

- `simulated`: SimulatedVLM, an offline stand-in deriving degraded features from labels
  (geopurify.vlm.simulated; always reported as simulated).
- `clip`: ClipVLM, a real CLIP checkpoint directory (transformers format) with MaskCLIP-style
  dense features (geopurify.vlm.clip).
"""
from __future__ import annotations

from pathlib import Path

from geopurify.errors import InputError
from geopurify.vlm.base import VLM
from geopurify.vlm.text import MiniLMTextEncoder, prompts_for, text_embeddings

BACKENDS = ("simulated", "clip", "openscene", "external")

__all__ = ["VLM", "BACKENDS", "build_vlm", "text_embeddings", "prompts_for", "MiniLMTextEncoder"]


def build_vlm(cfg: dict, device: str = "cpu", label_set=None) -> VLM:
    """The backend named by cfg["lift"]["vlm"] (cfg = the full config dict).

    `label_set` (simulated only) overrides cfg["data"]["label_set"]. An unknown name, or `clip`
    without an existing cfg["lift"]["vlm_path"], raises InputError.
    """
    lift = cfg.get("lift", {}) if isinstance(cfg, dict) else {}
    name = lift.get("vlm", "simulated")
    if lift.get("background_prompt") is not None and name != "external":
        raise InputError("config lift.background_prompt", f"scores the masks of external per-view feature files; "
                                                          f"the {name} backend has none (set it to null)")
    if name == "simulated":
        from geopurify.vlm.simulated import SimulatedVLM

        return SimulatedVLM(cfg, label_set=label_set)
    if name == "clip":
        from geopurify.vlm.clip import ClipVLM

        path = lift.get("vlm_path")
        if not path:
            raise InputError("config lift.vlm_path", "the clip backend needs lift.vlm_path: a local CLIP "
                                                     "checkpoint directory (transformers format)")
        if not Path(path).is_dir():
            raise InputError(path, "CLIP checkpoint directory not found (lift.vlm_path)")
        return ClipVLM(path, device=device)
    if name in ("openscene", "external"):
        # precomputed features: OpenScene's released per-point files, or per-view maps from any 2D model
        from geopurify.vlm.precomputed import build_from_files

        return build_from_files(cfg, device=device)
    raise InputError("config lift.vlm", f"unknown VLM backend {name!r} (choose one of: {', '.join(BACKENDS)})")
