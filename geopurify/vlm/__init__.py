"""2D vision-language backends behind one interface (`VLM`: `encode_text`, `frame_features`).

`build_vlm(cfg)` builds the backend `lift.vlm` names, through the registry `BACKENDS`:
- `simulated`: the SIMULATED VLM, an offline stand-in deriving degraded features from labels
  (geopurify.standins.simulated_vlm; always reported as simulated);
- `clip`: a real CLIP checkpoint directory (transformers format) with MaskCLIP-style dense
  features (geopurify.vlm.clip);
- `external`: per-view features of any 2D model read from files (geopurify.vlm.external);
- `openscene`: OpenScene's released per-point features (geopurify.lift.openscene: they are lifted
  features already).
The text side shared by all: geopurify.vlm.text (prompts, MiniLM) and geopurify.vlm.prompts
(prompt-embedding files).
"""

from __future__ import annotations

from geopurify.errors import InputError
from geopurify.registry import Registry
from geopurify.vlm.base import VLM
from geopurify.vlm.text import MiniLMTextEncoder, prompts_for, text_embeddings

# lift.vlm -> the backend's class (built by its `from_config(cfg, device, label_set)`), imported when asked for
BACKENDS = Registry(
    "lift.vlm",
    "VLM backend",
    {
        "simulated": "geopurify.standins.simulated_vlm:SimulatedVLM",
        "clip": "geopurify.vlm.clip:ClipVLM",
        "openscene": "geopurify.lift.openscene:OpenSceneVLM",
        "external": "geopurify.vlm.external:ExternalVLM",
    },
)

__all__ = ["VLM", "BACKENDS", "build_vlm", "text_embeddings", "prompts_for", "MiniLMTextEncoder"]


def build_vlm(cfg: dict, device: str = "cpu", label_set=None) -> VLM:
    """The backend named by cfg["lift"]["vlm"] (cfg = the full config dict).

    `label_set` (simulated only) overrides cfg["data"]["label_set"]. An unknown name, or a backend
    missing its files (e.g. `clip` without an existing lift.vlm_path), raises InputError.
    """
    lift = cfg.get("lift", {}) if isinstance(cfg, dict) else {}
    name = lift.get("vlm", "simulated")
    if lift.get("background_prompt") is not None and name != "external":
        raise InputError(
            "config lift.background_prompt",
            f"scores the masks of external per-view feature files; the {name} backend has none (set it to null)",
        )
    return BACKENDS.get(name).from_config(cfg, device=device, label_set=label_set)
