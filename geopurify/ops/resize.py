"""Nearest-neighbour resampling on the pixel-centre convention: images and feature-map cells.

Pixel x of an image W wide covers [x, x+1) with its centre at x + 0.5; resized to W' it maps to
the output pixel whose centre it holds. Nearest resizing therefore takes, for output pixel i, the
input pixel floor((2 i + 1) W / (2 W')): no blending, so depths and label ids stay values the
input held. `map_index` samples a coarse feature map at image pixels by the same rule.
"""

from __future__ import annotations

import numpy as np
import torch


def _centres(n_out: int, n_in: int, like):
    """Input index of each of `n_out` output pixels: floor((2 i + 1) n_in / (2 n_out))."""
    if torch.is_tensor(like):
        return torch.div((2 * torch.arange(n_out, device=like.device) + 1) * n_in, 2 * n_out, rounding_mode="floor")
    return (2 * np.arange(n_out) + 1) * n_in // (2 * n_out)


def resize_nearest(img, hw: tuple[int, int]):
    """Nearest-neighbour resize of the last two axes of `img` (a torch tensor or a numpy array,
    (..., H0, W0)) to `hw` = (H, W), pixel-centre aligned; the same object when the size matches."""
    H0, W0 = img.shape[-2:]
    H, W = hw
    if (H0, W0) == (H, W):
        return img
    rows, cols = _centres(H, H0, img), _centres(W, W0, img)
    return img[..., rows[:, None], cols[None, :]]


def map_index(pix: torch.Tensor, image_hw: tuple[int, int], map_hw: tuple[int, int]) -> torch.Tensor:
    """Flat index into an (h, w) feature map of the nearest cell to each (col, row) image pixel.

    Pixel x of an image W wide covers [x, x+1); its centre x + 0.5 falls in cell floor((x+0.5) w/W).
    """
    (H, W), (h, w) = image_hw, map_hw
    col = torch.div((2 * pix[:, 0] + 1) * w, 2 * W, rounding_mode="floor").clamp_(0, w - 1)
    row = torch.div((2 * pix[:, 1] + 1) * h, 2 * H, rounding_mode="floor").clamp_(0, h - 1)
    return row * w + col
