"""Points -> sparse voxels for the student (2 cm grid), and per-voxel means.

A voxel is the cell floor(xyz / voxel_size); coordinates are shifted so the smallest is 0 on
every axis (spconv needs non-negative sites). Voxels are ordered by their linearised key
(x-major), so the same points always give the same voxel order.
"""

from __future__ import annotations

import numpy as np
import torch

_CHUNK = 65536  # rows per index_add chunk: bounds the float32 copy of float16 / wide inputs


def voxelize(xyz: torch.Tensor | np.ndarray, voxel_size: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxelise points: (coords int32 (V, 3) >= 0, inverse int64 (N,)) with coords[inverse] the
    voxel of each point. Sorted by linearised key; deterministic."""
    xyz = torch.as_tensor(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must be (N, 3), got {tuple(xyz.shape)}")
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    if xyz.shape[0] == 0:
        return (
            torch.zeros(0, 3, dtype=torch.int32, device=xyz.device),
            torch.zeros(0, dtype=torch.int64, device=xyz.device),
        )
    # float64 division: float32 xyz / 0.02 can round a point into the neighbouring cell
    cell = torch.floor(xyz.to(torch.float64) / voxel_size).to(torch.int64)
    cell -= cell.min(0).values
    extent = cell.max(0).values + 1
    key = (cell[:, 0] * extent[1] + cell[:, 1]) * extent[2] + cell[:, 2]
    ukey, inverse = torch.unique(key, sorted=True, return_inverse=True)
    coords = torch.stack([ukey // (extent[1] * extent[2]), (ukey // extent[2]) % extent[1], ukey % extent[2]], 1)
    return coords.to(torch.int32), inverse


def voxel_mean(values: torch.Tensor, inverse: torch.Tensor, n_voxels: int) -> torch.Tensor:
    """Mean of `values` (N, C) over the points of each voxel -> (V, C) float32 (float64 stays
    float64). Summed with index_add_ in chunks of rows; empty voxels get 0."""
    values = torch.as_tensor(values)
    inverse = torch.as_tensor(inverse, device=values.device).long()
    squeeze = values.ndim == 1
    if squeeze:
        values = values[:, None]
    if values.ndim != 2 or inverse.shape != (values.shape[0],):
        raise ValueError(
            f"values (N, C) and inverse (N,) must match, got {tuple(values.shape)} and {tuple(inverse.shape)}"
        )
    dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    out = torch.zeros(n_voxels, values.shape[1], dtype=dtype, device=values.device)
    for s in range(0, values.shape[0], _CHUNK):
        out.index_add_(0, inverse[s : s + _CHUNK], values[s : s + _CHUNK].to(dtype))
    count = torch.bincount(inverse, minlength=n_voxels).clamp_(min=1).to(dtype)
    out /= count[:, None]
    return out[:, 0] if squeeze else out
