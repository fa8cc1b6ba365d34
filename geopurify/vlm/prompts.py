"""The text side of a VLM as files: prompt embeddings computed elsewhere.

For models that cannot run here (OpenSeg, LSeg, X-Decoder text encoders), a file of (P, C)
embeddings plus the P prompts they encode (`load_prompt_embeddings`, `PrecomputedVLM`).
Accepted layouts:
  * `<name>.pt` holding {"prompts": [str, ...], "embeddings": float tensor (P, C)};
  * `<name>.pt` holding a float tensor (P, C), or `<name>.npy` holding a float array (P, C),
    each with a sidecar `<name>.txt`: one prompt per line, line i for row i.
`text_source(path)` also accepts a local CLIP checkpoint directory (the CLIP backend's real text
encoder, resolved through the registry so the file-backed backends do not import CLIP).
The per-view (`geopurify.vlm.external`) and per-point (`geopurify.lift.openscene`) feature backends
take their text side from here. Nothing here is a stand-in (`simulated = False`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from geopurify.data.scene import Scene
from geopurify.errors import InputError
from geopurify.io import load_torch_file
from geopurify.ops.scores import l2_normalize
from geopurify.vlm.base import VLM

log = logging.getLogger(__name__)

TEXT_FILE_NAMES = ("text_embeddings.pt", "text_embeddings.npy")  # looked up inside a feature directory


def _read_sidecar(path: Path) -> list[str]:
    """Prompts from `<stem>.txt` next to `path`, one per line (trailing blank lines ignored)."""
    side = path.with_suffix(".txt")
    if not side.is_file():
        raise InputError(
            path,
            f"embeddings without prompts: expected the prompt list in {side.name} "
            "(one prompt per line) or a .pt dict {'prompts', 'embeddings'}",
        )
    try:
        lines = side.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(side, f"unreadable prompt list ({type(e).__name__})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    blank = [i + 1 for i, s in enumerate(lines) if not s.strip()]
    if blank:
        raise InputError(side, f"line {blank[0]} is empty; every line must hold one prompt")
    return [s.strip() for s in lines]


def load_prompt_embeddings(path: str | Path) -> tuple[list[str], torch.Tensor]:
    """(prompts, embeddings (P, C) float32) from a prompt-embedding file (module docstring).

    Raises InputError(path, problem) for a missing / unreadable file, a wrong layout, a row count
    that differs from the prompt count, repeated prompts, NaN/inf or all-zero rows.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "prompt embedding file not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(path, f"not a readable .npy array ({type(e).__name__})") from None
        if not np.issubdtype(arr.dtype, np.floating):
            raise InputError(path, f"embeddings must be floats, got {arr.dtype}")
        emb, prompts = torch.from_numpy(np.ascontiguousarray(arr)), _read_sidecar(path)
    elif suffix in (".pt", ".pth"):
        obj = load_torch_file(path, "prompt embedding file")
        if isinstance(obj, dict):
            missing = [k for k in ("prompts", "embeddings") if k not in obj]
            if missing:
                raise InputError(path, f"prompt embedding dict lacks {missing[0]!r} (needs 'prompts' and 'embeddings')")
            prompts, emb = obj["prompts"], obj["embeddings"]
            if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
                raise InputError(path, "'prompts' must be a list of strings")
            prompts = [p.strip() for p in prompts]
        elif torch.is_tensor(obj):
            emb, prompts = obj, _read_sidecar(path)
        else:
            raise InputError(
                path, f"expected a dict {{'prompts', 'embeddings'}} or a (P, C) tensor, got {type(obj).__name__}"
            )
        if not torch.is_tensor(emb):
            raise InputError(path, f"'embeddings' must be a tensor, got {type(emb).__name__}")
    else:
        raise InputError(path, f"unsupported prompt embedding file type {suffix!r} (use .pt or .npy)")
    if emb.dim() != 2 or not emb.is_floating_point():
        raise InputError(path, f"embeddings must be a float (P, C) array, got {emb.dtype} {tuple(emb.shape)}")
    if emb.shape[0] != len(prompts):
        raise InputError(path, f"{emb.shape[0]} embedding rows for {len(prompts)} prompts")
    if emb.shape[0] == 0 or emb.shape[1] == 0:
        raise InputError(path, f"no embeddings (shape {tuple(emb.shape)})")
    seen: set[str] = set()
    for p in prompts:
        if not p:
            raise InputError(path, "empty prompt in the prompt list")
        if p in seen:
            raise InputError(path, f"prompt {p!r} appears more than once")
        seen.add(p)
    emb = emb.float()
    if not torch.isfinite(emb).all():
        raise InputError(path, "embeddings hold NaN/inf")
    zero = (emb.norm(dim=1) == 0).nonzero().flatten()
    if zero.numel():
        raise InputError(path, f"embedding of prompt {prompts[int(zero[0])]!r} is all zeros")
    return list(prompts), emb.contiguous()


class PrecomputedVLM(VLM):
    """Text side from a prompt-embedding file; there is no 2D model behind it.

    `encode_text` looks every prompt up in the file (exact match after stripping surrounding
    whitespace) and returns its L2-normalised row; a prompt not in the file raises InputError.
    `frame_features` always raises: per-view features must come from files (`ExternalVLM`) or
    per-point features from OpenScene's release (geopurify.lift.openscene).
    """

    simulated = False

    def __init__(self, path: str | Path, name: str | None = None):
        self.path = Path(path)
        self.prompts, emb = load_prompt_embeddings(self.path)
        self.embeddings = l2_normalize(emb)
        self.dim = int(emb.shape[1])
        self._row = {p: i for i, p in enumerate(self.prompts)}
        self.name = name or f"precomputed text ({self.path.name})"
        log.info("prompt embeddings from %s: %d prompts, %d-d", self.path, len(self.prompts), self.dim)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(P, dim) float32 unit rows of the file, in the order asked."""
        keys = [str(p).strip() for p in prompts]
        missing = [p for p in keys if p not in self._row]
        if missing:
            have = ", ".join(repr(p) for p in self.prompts[:3])
            raise InputError(
                self.path,
                f"{len(missing)} prompt(s) not in the file, e.g. {missing[0]!r} "
                f"(it holds {len(self.prompts)} prompts: {have}{', ...' if len(self.prompts) > 3 else ''})",
            )
        idx = torch.tensor([self._row[p] for p in keys], dtype=torch.int64)
        return self.embeddings[idx].clone()

    def frame_features(self, scene: Scene, frame_index: int, image_hw: tuple[int, int]) -> torch.Tensor:
        raise InputError(
            self.path,
            "holds precomputed text embeddings only; there is no 2D model to compute "
            "per-view features (use per-view feature files with lift.vlm = external, or "
            "OpenScene point features with lift.vlm = openscene)",
        )


def text_source(path: str | Path, device: str = "cpu") -> VLM:
    """The text side named by `path`: a prompt-embedding file (PrecomputedVLM) or a local CLIP
    checkpoint directory (ClipVLM, whose `encode_text` runs the real text encoder)."""
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            from geopurify.registry import resolve

            return resolve("geopurify.vlm.clip:ClipVLM")(path, device=device)
        raise InputError(
            path,
            "is a directory but not a CLIP checkpoint (no config.json); give a prompt "
            "embedding file (.pt / .npy + .txt) or a transformers CLIP directory",
        )
    return PrecomputedVLM(path)


def find_text_file(directory: str | Path) -> Path:
    """The prompt-embedding file kept inside a feature directory (`TEXT_FILE_NAMES`, in that order)."""
    directory = Path(directory)
    for name in TEXT_FILE_NAMES:
        if (directory / name).is_file():
            return directory / name
    raise InputError(
        directory,
        f"no prompt embeddings found (looked for {' and '.join(TEXT_FILE_NAMES)}); "
        "give them with lift.text_path (a .pt / .npy file or a CLIP checkpoint directory)",
    )
