"""The interface every 2D vision-language backend implements.

Lifting only needs per-view feature maps and the text side only needs prompt embeddings, both
in one shared space, so a backend is two methods. `simulated` must be True for stand-ins; every
report that uses such a backend says so.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from geopurify.data.scene import Scene


class VLM(ABC):
    name: str = "vlm"
    simulated: bool = False
    dim: int = 0

    @abstractmethod
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(P, dim) float32, L2-normalised."""

    @abstractmethod
    def frame_features(self, scene: Scene, frame_index: int, image_hw: tuple[int, int]) -> torch.Tensor:
        """(dim, h, w) float32 feature map of one frame, for an image resized to `image_hw` = (H, W).

        (h, w) may be coarser than (H, W) (patch features); lifting samples it at the projected
        pixel scaled to (h, w). Features should be L2-normalised per pixel.
        """

    @classmethod
    def from_config(cls, cfg: dict, device: str = "cpu", label_set=None) -> VLM:
        """The backend built from a full config (`build_vlm`, registry `BACKENDS`); each backend says how."""
        raise NotImplementedError(f"{cls.__name__} is not built from a config")

    def describe(self) -> str:
        """The backend's name for logs and reports; a stand-in always reads as SIMULATED."""
        return f"{self.name} [SIMULATED]" if self.simulated else self.name
