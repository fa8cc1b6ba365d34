"""The student: a stride-1 residual stack of submanifold sparse convolutions (METHOD.md section 2).

    stem   3x3x3 SubMConv (Cin -> width), BN, ReLU
    blocks `blocks` x [3x3x3 SubMConv, BN, ReLU, 3x3x3 SubMConv, BN] + identity, ReLU
    head   1x1x1 conv (width -> out_dim) == a per-voxel linear map, then L2 normalisation

No downsampling, so every voxel keeps its own output; each 3x3x3 conv widens the receptive
field by one voxel per side, giving +-(1 + 2 * blocks) voxels (+-9 for the paper's 4 blocks,
the "~9 voxels" of the reference). Parameter names start with "stem.", "blocks." and
"head." so training can give each group its own learning-rate multiplier (`param_groups`).

Presets: "paper" = width 512, 4 blocks (~63.9M parameters with Cin = 518, the reference size);
"cpu" = width / blocks from the config (defaults 64 / 2) for training on a laptop.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from geopurify.errors import InputError
from geopurify.ops.voxel import voxel_mean
from geopurify.student.spconv_compat import SubMConv3d, sparse_tensor

logger = logging.getLogger(__name__)

PRESETS = {"paper": {"width": 512, "blocks": 4}}
_KEY = "subm3"  # every 3x3x3 conv shares one neighbour table: same sites, same kernel


class _ConvBN(nn.Module):
    """3x3x3 submanifold conv (no bias: BN follows) + BatchNorm over voxel features."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = SubMConv3d(cin, cout, 3, bias=False, indice_key=_KEY)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x):
        x = self.conv(x)
        return x.replace_feature(self.bn(x.features))


class ResidualBlock(nn.Module):
    """Two 3x3x3 conv+BN layers with ReLU between, identity skip, ReLU after the sum."""

    def __init__(self, width: int):
        super().__init__()
        self.layer1 = _ConvBN(width, width)
        self.layer2 = _ConvBN(width, width)

    def forward(self, x):
        y = self.layer1(x)
        y = self.layer2(y.replace_feature(F.relu(y.features)))
        return y.replace_feature(F.relu(y.features + x.features))


class AffinityNet(nn.Module):
    """Per-voxel unit embeddings whose cosines are the affinities used for purification."""

    def __init__(self, in_channels: int, width: int = 64, blocks: int = 2, out_dim: int = 128):
        super().__init__()
        self.in_channels, self.width, self.n_blocks, self.out_dim = in_channels, width, blocks, out_dim
        self.stem = _ConvBN(in_channels, width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(blocks))
        self.head = nn.Linear(width, out_dim)  # the 1x1x1 conv: identical on a sparse tensor

    def forward(self, feats: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """feats (V, Cin) float, coords (V, 3) non-negative int -> (V, out_dim) unit vectors,
        row i for voxel coords[i]."""
        if feats.ndim != 2 or feats.shape[1] != self.in_channels:
            raise ValueError(f"feats must be (V, {self.in_channels}), got {tuple(feats.shape)}")
        x = self.stem(sparse_tensor(feats.float(), coords))
        x = x.replace_feature(F.relu(x.features))
        for block in self.blocks:
            x = block(x)
        return F.normalize(self.head(x.features), dim=1)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by group name ("stem", "blocks", "head")."""
        return {name: list(getattr(self, name).parameters()) for name in ("stem", "blocks", "head")}

    def architecture(self) -> dict:
        """{"width", "blocks", "out_dim"} of this module as built (whatever preset or config asked)."""
        return {"width": int(self.width), "blocks": int(self.n_blocks), "out_dim": int(self.out_dim)}

    def describe(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return (
            f"AffinityNet(in={self.in_channels}, width={self.width}, blocks={self.n_blocks}, "
            f"out={self.out_dim}, {n / 1e6:.2f}M parameters)"
        )


def build_student(cfg_student: dict, in_channels: int) -> AffinityNet:
    """AffinityNet from the config's `student` section; preset "paper" fixes width 512 / 4 blocks,
    preset "cpu" takes `width` and `blocks` from the section."""
    preset = cfg_student.get("preset", "cpu")
    if preset == "paper":
        width, blocks = PRESETS["paper"]["width"], PRESETS["paper"]["blocks"]
    elif preset == "cpu":
        width, blocks = int(cfg_student["width"]), int(cfg_student["blocks"])
    else:
        raise InputError(None, f"config key 'student.preset' must be cpu or paper, got {preset!r}")
    if width < 1 or blocks < 0:
        raise InputError(None, f"student width must be >= 1 and blocks >= 0, got {width} / {blocks}")
    out_dim = int(cfg_student.get("out_dim", 128))
    if out_dim < 1:
        raise InputError(None, f"config key 'student.out_dim' must be >= 1, got {out_dim}")
    model = AffinityNet(in_channels, width, blocks, out_dim)
    logger.info("student (%s preset): %s", preset, model.describe())
    return model


def student_input(lifted: torch.Tensor, rgb, normals, inverse: torch.Tensor, n_voxels: int) -> torch.Tensor:
    """Per-voxel student input (V, C + 6): means over the voxel's points of the lifted feature,
    rgb / 255 and the normal (METHOD.md section 2; geometry enters through coords only)."""
    lifted = torch.as_tensor(lifted)
    dev = lifted.device
    rgb = torch.as_tensor(rgb, device=dev).float() / 255.0
    normals = torch.as_tensor(normals, device=dev).float()
    inverse = torch.as_tensor(inverse, device=dev)
    n = lifted.shape[0]
    if rgb.shape != (n, 3) or normals.shape != (n, 3):
        raise ValueError(f"rgb and normals must be ({n}, 3), got {tuple(rgb.shape)} and {tuple(normals.shape)}")
    return torch.cat(
        [voxel_mean(lifted, inverse, n_voxels).float(), voxel_mean(torch.cat([rgb, normals], 1), inverse, n_voxels)], 1
    )
