"""The interface every 3D teacher implements (METHOD.md section 3).

A teacher is a frozen function from a scene to one L2-normalised embedding per point; training
only reads cosines between these embeddings (positives, macro- and micro-negatives), so the
dimension D is free. `stand_in` must be True for offline substitutes of the real teacher
(Sonata); every output that uses one says so via `describe()`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from geopurify.data.scene import Scene


class Teacher(ABC):
    name: str = "teacher"
    stand_in: bool = False
    dim: int = 0

    @abstractmethod
    def embed(self, scene: Scene) -> torch.Tensor:
        """(N, dim) float32 CPU tensor, rows L2-normalised, no autograd history; row i is
        scene.xyz[i]. Deterministic for a given scene."""

    @classmethod
    def from_config(cls, cfg: dict, device: str = "cpu") -> Teacher:
        """The teacher a config asks for (`build_teacher`). A network teacher: its checkpoint
        `teacher.ckpt` on `device`, with the config's input switches (`teacher.color_scale`,
        `teacher.missing_normals`); a teacher without them overrides this."""
        tcfg = cfg.get("teacher") or {}
        return cls(
            tcfg.get("ckpt"),
            device=str(device),
            color_scale=tcfg.get("color_scale", "sonata"),
            missing_normals=tcfg.get("missing_normals", "zero"),
        )

    def describe(self) -> str:
        if self.stand_in and "stand-in" not in self.name.lower():
            return f"{self.name} (stand-in)"
        return self.name


def finish_embedding(feat: np.ndarray | torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Detached, contiguous float32 CPU tensor with unit rows (all-zero rows stay zero)."""
    t = torch.as_tensor(feat).detach().to("cpu", torch.float32)
    return torch.nn.functional.normalize(t, dim=1, eps=eps).contiguous()
