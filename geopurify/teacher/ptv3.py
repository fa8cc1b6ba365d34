"""Point Transformer V3 encoder as Sonata uses it ("PT-v3m2", encoder only), on plain torch.

Written from the module tree of the official code (github.com/facebookresearch/sonata,
`sonata/model.py`) so that the official checkpoint loads with its own parameter names and
shapes (`embedding.stem.linear.weight`, `enc.enc1.down.proj.weight`,
`enc.enc3.block7.attn.qkv.weight`, ...), but with no flash-attn, spconv, torch_scatter or timm:

- serialization: z-order and Hilbert codes of the integer grid coordinates (and their x/y
  transposed variants), sorted; the list of orders is shuffled once per level by an explicit
  `torch.Generator` (the official code uses the global RNG for the same shuffle);
- CPE: a 3x3x3 submanifold convolution in spconv's weight layout (out, k0, k1, k2, in), done as
  gather + GEMM over a neighbour table that every block of a level shares (spconv's indice_key);
- attention inside serialized patches of `patch_size` points (1024), the last incomplete patch
  padded with the points of the patch before it, exactly as the official padding does; the
  attention itself is `torch.nn.functional.scaled_dot_product_attention`, over chunks of patches;
- grid pooling: stride-2 cells of the grid coordinates, Linear then max over each cell, LayerNorm,
  GELU; each pooled level remembers which cell every finer voxel went to (for up-casting).

Everything here is inference-only (the teacher is frozen): dropout, DropPath and the mask token
are kept as parameters or settings only so that checkpoints round-trip.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

logger = logging.getLogger(__name__)

ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")
MAX_DEPTH = 16  # bits per axis in a serialization code (3 x 16 bits in an int64), as upstream

# Every argument of the official `PointTransformerV3.__init__` with its default. The encoder uses
# the first group; the second is accepted and ignored (training-only, decoder, or flash-attn
# switches that do not change the result); `check_config` enforces the rest.
ENCODER_DEFAULTS = dict(
    in_channels=6,
    order=("z", "z-trans"),
    stride=(2, 2, 2, 2),
    enc_depths=(3, 3, 3, 12, 3),
    enc_channels=(48, 96, 192, 384, 512),
    enc_num_head=(3, 6, 12, 24, 32),
    enc_patch_size=(1024, 1024, 1024, 1024, 1024),
    mlp_ratio=4,
    qkv_bias=True,
    qk_scale=None,
    layer_scale=None,
    pre_norm=True,
    shuffle_orders=True,
    mask_token=False,
    enable_rpe=False,
    enc_mode=False,
)
IGNORED_KEYS = (
    "dec_depths",
    "dec_channels",
    "dec_num_head",
    "dec_patch_size",
    "attn_drop",
    "proj_drop",
    "drop_path",
    "enable_flash",
    "upcast_attention",
    "upcast_softmax",
    "traceable",
    "freeze_encoder",
)


def check_config(config: dict) -> dict:
    """The encoder settings of an official PTv3 / Sonata config dict, defaults filled in.

    Raises ValueError (one line) for unknown keys, settings this encoder does not implement
    (decoder mode, relative position encoding) or inconsistent stage lists."""
    unknown = sorted(set(config) - set(ENCODER_DEFAULTS) - set(IGNORED_KEYS))
    if unknown:
        raise ValueError(f"unknown Point Transformer V3 config keys: {', '.join(unknown)}")
    cfg = {**ENCODER_DEFAULTS, **{k: v for k, v in config.items() if k in ENCODER_DEFAULTS}}
    if not cfg["enc_mode"]:
        raise ValueError(
            "config has enc_mode=False (encoder + decoder); the Sonata teacher needs the "
            "encoder-only checkpoint (enc_mode=True), e.g. sonata.pth"
        )
    if cfg["enable_rpe"]:
        raise ValueError(
            "config has enable_rpe=True; relative position encoding is not implemented (Sonata has it off)"
        )
    cfg["order"] = [cfg["order"]] if isinstance(cfg["order"], str) else list(cfg["order"])
    bad = [o for o in cfg["order"] if o not in ORDERS]
    if bad or not cfg["order"]:
        raise ValueError(f"unknown serialization orders {bad or cfg['order']}; known: {', '.join(ORDERS)}")
    n = len(cfg["enc_depths"])
    for key in ("enc_channels", "enc_num_head", "enc_patch_size"):
        if len(cfg[key]) != n:
            raise ValueError(f"{key} has {len(cfg[key])} entries for {n} stages")
    if len(cfg["stride"]) != n - 1:
        raise ValueError(f"stride has {len(cfg['stride'])} entries for {n} stages (needs {n - 1})")
    for c, h in zip(cfg["enc_channels"], cfg["enc_num_head"]):
        if c % h:
            raise ValueError(f"{c} channels do not split into {h} heads")
    for key in ("stride", "enc_depths", "enc_channels", "enc_num_head", "enc_patch_size"):
        cfg[key] = [int(v) for v in cfg[key]]
    return cfg


# ----------------------------------------------------------------------------- serialization


def morton_code(grid: torch.Tensor, depth: int) -> torch.Tensor:
    """Z-order code (int64) of non-negative integer coordinates (V, 3) < 2**depth: bit i of
    column 0 / 1 / 2 goes to code bit 3i+2 / 3i+1 / 3i."""
    g = grid.long()
    code = torch.zeros(g.shape[0], dtype=torch.long, device=g.device)
    for i in range(depth):
        for axis, shift in ((0, 2), (1, 1), (2, 0)):
            code |= ((g[:, axis] >> i) & 1) << (3 * i + shift)
    return code


def hilbert_code(grid: torch.Tensor, depth: int) -> torch.Tensor:
    """3D Hilbert code (int64) of non-negative integer coordinates (V, 3) < 2**depth.

    Skilling's transform ("Programming the Hilbert curve", 2004): undo the excess work
    axis by axis from the top bit down, interleave the bits with column 0 most significant,
    then Gray-decode the whole interleaved word. Same curve as the official serialization."""
    x = [grid[:, i].long().clone() for i in range(3)]
    q = 1 << (depth - 1)
    while q > 1:
        p = q - 1
        for i in range(3):
            hit = (x[i] & q) != 0
            x[0] = torch.where(hit, x[0] ^ p, x[0])  # invert the low bits of axis 0
            t = torch.where(hit, torch.zeros_like(x[0]), (x[0] ^ x[i]) & p)
            x[0] = x[0] ^ t  # or exchange the low bits of axes 0 and i
            if i:
                x[i] = x[i] ^ t
        q >>= 1
    code = morton_code(torch.stack(x, 1), depth)
    shift = 1
    while shift < 3 * depth:  # Gray -> binary: prefix XOR from the top bit
        code = code ^ (code >> shift)
        shift <<= 1
    return code


def serial_code(grid: torch.Tensor, depth: int, order: str) -> torch.Tensor:
    """Code of one named order; the "-trans" orders swap the first two axes."""
    if order.endswith("-trans"):
        grid = grid[:, [1, 0, 2]]
    return morton_code(grid, depth) if order.startswith("z") else hilbert_code(grid, depth)


def serialize(grid: torch.Tensor, orders, shuffle: bool, generator: torch.Generator | None = None):
    """(order, inverse), both int64 (len(orders), V): order[k] lists the voxels along curve k,
    inverse[k] is each voxel's position on it. With `shuffle`, the curves are permuted by
    `torch.randperm(len(orders), generator=generator)`.

    Codes are unique per voxel (one voxel per grid cell), so the sort has no ties."""
    depth = max(int(grid.max()) + 1, 1).bit_length()
    if depth > MAX_DEPTH:
        raise ValueError(f"grid extent {int(grid.max()) + 1} cells exceeds 2**{MAX_DEPTH} per axis")
    codes = torch.stack([serial_code(grid, depth, o) for o in orders])
    order = torch.argsort(codes, dim=1)
    inverse = torch.empty_like(order)
    inverse.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    if shuffle:
        perm = torch.randperm(len(orders), generator=generator).to(order.device)
        order, inverse = order[perm], inverse[perm]
    return order, inverse


# ----------------------------------------------------------------------------- sparse conv


def neighbour_table(grid: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """(V, kernel**3) int64: index of the voxel at grid[v] + offset, or -1 where there is none.

    Offsets (d0, d1, d2) in -r..r run with d0 slowest, matching spconv's weight layout
    (out, k0, k1, k2, in) where kernel axis i runs along coordinate column i."""
    r = kernel // 2
    g = grid.long() + r
    dims = (g.max(0).values + r + 1).tolist()
    key = (g[:, 0] * dims[1] + g[:, 1]) * dims[2] + g[:, 2]
    skey, sidx = torch.sort(key)
    table = torch.empty(g.shape[0], kernel**3, dtype=torch.long, device=g.device)
    for k, (a, b, c) in enumerate(itertools.product(range(-r, r + 1), repeat=3)):
        q = ((g[:, 0] + a) * dims[1] + g[:, 1] + b) * dims[2] + g[:, 2] + c
        pos = torch.searchsorted(skey, q).clamp_(max=g.shape[0] - 1)
        table[:, k] = torch.where(skey[pos] == q, sidx[pos], -1)
    return table


class SubMConv3d(nn.Module):
    """Submanifold 3D convolution with spconv's parameter names and layout: `weight`
    (out, k, k, k, in), `bias` (out,). A cross-correlation over the voxels present, evaluated
    per kernel offset as gather (existing neighbours only) + GEMM + scatter-add, like spconv's
    native algorithm; the offsets are added in a fixed order, so the result is deterministic."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, k, k, k, in_channels))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, feat: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """feat (V, in), table (V, k^3) from `neighbour_table` -> (V, out)."""
        w = self.weight.reshape(self.out_channels, -1, self.in_channels)  # (out, k^3, in)
        centre = w.shape[1] // 2  # offset (0, 0, 0): every voxel is its own neighbour
        out = feat @ w[:, centre].T
        for k in range(w.shape[1]):
            if k == centre:
                continue
            rows = torch.nonzero(table[:, k] >= 0).squeeze(1)
            if rows.numel():
                out[rows] += feat[table[rows, k]] @ w[:, k].T
        return out if self.bias is None else out + self.bias


# ----------------------------------------------------------------------------- attention


def patch_padding(n: int, patch: int, device=None) -> torch.Tensor:
    """Positions along a curve of n points that fill whole patches of `patch` points.

    As upstream: when n > patch and the last patch is incomplete, it is completed with the
    positions one patch earlier (n - patch, ...), so every patch holds `patch` entries and
    no position is left out."""
    ar = torch.arange(n, device=device)
    if n <= patch or n % patch == 0:
        return ar
    n_pad = -(-n // patch) * patch
    return torch.cat([ar, torch.arange(n - patch, n_pad - patch, device=device)])


class SerializedAttention(nn.Module):
    """Multi-head self-attention inside consecutive patches of one serialization order."""

    def __init__(
        self, channels: int, num_heads: int, patch_size: int, qkv_bias: bool = True, qk_scale: float | None = None
    ):
        super().__init__()
        self.channels, self.num_heads, self.patch_size = channels, num_heads, patch_size
        self.scale = qk_scale or (channels // num_heads) ** -0.5
        self.qkv = nn.Linear(channels, channels * 3, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)

    def forward(
        self, feat: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor, chunk_bytes: int = 256 << 20
    ) -> torch.Tensor:
        """feat (V, C); order / inverse (V,) of one curve -> (V, C).

        The patch size is min(V, patch_size), as the official non-flash path sets it."""
        n, c, h = feat.shape[0], self.channels, self.num_heads
        k = min(n, self.patch_size)
        idx = order[patch_padding(n, k, feat.device)]
        qkv = self.qkv(feat)
        out = feat.new_empty(idx.shape[0], c)
        per = max(1, chunk_bytes // (4 * h * k * k))  # patches per chunk (bounds a materialised K x K)
        for s in range(0, idx.shape[0], per * k):
            sel = idx[s : s + per * k]
            q, kk, v = qkv[sel].reshape(-1, k, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
            o = F.scaled_dot_product_attention(q, kk, v, scale=self.scale)  # (P, H, K, d)
            out[s : s + sel.shape[0]] = o.transpose(1, 2).reshape(-1, c)
        return self.proj(out[inverse])


class LayerScale(nn.Module):
    """Per-channel scale `gamma` (only in configs with layer_scale set; Sonata has none)."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class MLP(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """CPE (conv, Linear, LayerNorm) + attention + MLP, each with a residual; pre-norm by default.

    ModuleLists of one module reproduce the official "norm1.0" / "mlp.0" key names."""

    def __init__(
        self,
        channels: int,
        num_heads: int,
        patch_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale=None,
        layer_scale=None,
        pre_norm: bool = True,
        order_index: int = 0,
    ):
        super().__init__()
        self.pre_norm, self.order_index = pre_norm, order_index
        self.cpe = nn.ModuleList(
            [SubMConv3d(channels, channels, 3), nn.Linear(channels, channels), nn.LayerNorm(channels)]
        )
        self.norm1 = nn.ModuleList([nn.LayerNorm(channels)])
        self.ls1 = nn.ModuleList([LayerScale(channels, layer_scale) if layer_scale is not None else nn.Identity()])
        self.attn = SerializedAttention(channels, num_heads, patch_size, qkv_bias, qk_scale)
        self.norm2 = nn.ModuleList([nn.LayerNorm(channels)])
        self.ls2 = nn.ModuleList([LayerScale(channels, layer_scale) if layer_scale is not None else nn.Identity()])
        self.mlp = nn.ModuleList([MLP(channels, int(channels * mlp_ratio))])

    def forward(self, x, table, order, inverse):
        conv, lin, norm = self.cpe
        x = x + norm(lin(conv(x, table)))
        i = self.order_index
        h = self.norm1[0](x) if self.pre_norm else x
        x = x + self.ls1[0](self.attn(h, order[i], inverse[i]))
        if not self.pre_norm:
            x = self.norm1[0](x)
        h = self.norm2[0](x) if self.pre_norm else x
        x = x + self.ls2[0](self.mlp[0](h))
        if not self.pre_norm:
            x = self.norm2[0](x)
        return x


class GridPooling(nn.Module):
    """Linear, max over each stride^3 cell of the grid, LayerNorm, GELU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        self.stride = stride
        self.proj = nn.Linear(in_channels, out_channels)
        self.norm = nn.ModuleList([nn.LayerNorm(out_channels)])
        self.act = nn.GELU()

    def forward(self, x, grid):
        """-> (pooled feat (M, out), pooled grid (M, 3) sorted lexicographically, cell (V,) of each input voxel)."""
        coarse = torch.div(grid, self.stride, rounding_mode="floor")
        grid_new, cell = torch.unique(coarse, dim=0, return_inverse=True)
        y = self.proj(x)
        pooled = y.new_zeros(grid_new.shape[0], y.shape[1]).scatter_reduce_(
            0, cell[:, None].expand_as(y), y, reduce="amax", include_self=False
        )
        return self.act(self.norm[0](pooled)), grid_new, cell


class Embedding(nn.Module):
    """Linear stem + LayerNorm + GELU (keys stem.linear / stem.norm) and the unused mask token."""

    def __init__(self, in_channels: int, channels: int, mask_token: bool = False):
        super().__init__()
        self.stem = nn.Sequential(
            OrderedDict(linear=nn.Linear(in_channels, channels), norm=nn.LayerNorm(channels), act=nn.GELU())
        )
        self.mask_token = nn.Parameter(torch.zeros(1, channels)) if mask_token else None

    def forward(self, x):
        return self.stem(x)


class Stage(nn.Module):
    """One encoder stage "enc<s>": optional `down` pooling, then blocks "block0", "block1", ..."""

    def __init__(self, n_blocks: int, down: GridPooling | None, **block_kw):
        super().__init__()
        if down is not None:
            self.down = down
        self.n_blocks = n_blocks
        n_orders = block_kw.pop("n_orders")
        for i in range(n_blocks):
            self.add_module(f"block{i}", Block(order_index=i % n_orders, **block_kw))

    def blocks(self):
        return [getattr(self, f"block{i}") for i in range(self.n_blocks)]


@dataclass
class Level:
    """Encoder output at one stage: voxel features, integer grid, and for stages > 0 the index
    of this stage's voxel that each voxel of the previous stage was pooled into."""

    feat: torch.Tensor
    grid: torch.Tensor
    parent: torch.Tensor | None


class PTv3Encoder(nn.Module):
    """Sonata's encoder. `forward(feat, grid)` -> one `Level` per stage (finest first)."""

    def __init__(self, config: dict):
        super().__init__()
        cfg = check_config(config)
        self.config = cfg
        self.order = tuple(cfg["order"])
        self.shuffle_orders = bool(cfg["shuffle_orders"])
        ch = cfg["enc_channels"]
        self.embedding = Embedding(cfg["in_channels"], ch[0], bool(cfg["mask_token"]))
        self.enc = nn.ModuleDict()
        for s, depth in enumerate(cfg["enc_depths"]):
            down = GridPooling(ch[s - 1], ch[s], cfg["stride"][s - 1]) if s > 0 else None
            self.enc[f"enc{s}"] = Stage(
                depth,
                down,
                channels=ch[s],
                num_heads=cfg["enc_num_head"][s],
                patch_size=cfg["enc_patch_size"][s],
                mlp_ratio=cfg["mlp_ratio"],
                qkv_bias=cfg["qkv_bias"],
                qk_scale=cfg["qk_scale"],
                layer_scale=cfg["layer_scale"],
                pre_norm=cfg["pre_norm"],
                n_orders=len(self.order),
            )

    @property
    def channels(self) -> list[int]:
        return list(self.config["enc_channels"])

    def upcast_dim(self, up_cast_level: int) -> int:
        """Width of the up-cast feature: the channels of the deepest up_cast_level + 1 stages."""
        if not 0 <= up_cast_level < len(self.channels):
            raise ValueError(f"up_cast_level must be in 0..{len(self.channels) - 1}, got {up_cast_level}")
        return sum(self.channels[len(self.channels) - 1 - up_cast_level :])

    def forward(
        self, feat: torch.Tensor, grid: torch.Tensor, generator: torch.Generator | None = None, progress: bool = False
    ) -> list[Level]:
        """feat (V, in_channels) float, grid (V, 3) non-negative int, one voxel per grid cell."""
        if feat.ndim != 2 or feat.shape[1] != self.config["in_channels"]:
            raise ValueError(f"feat must be (V, {self.config['in_channels']}), got {tuple(feat.shape)}")
        if grid.shape != (feat.shape[0], 3):
            raise ValueError(f"grid must be ({feat.shape[0]}, 3), got {tuple(grid.shape)}")
        grid = grid.long()
        x = self.embedding(feat)
        order, inverse = serialize(grid, self.order, self.shuffle_orders, generator)
        levels, parent = [], None
        bar = tqdm(
            total=sum(st.n_blocks for st in self.enc.values()),
            desc="sonata encoder",
            unit="block",
            disable=not progress,
            leave=False,
        )
        for s, stage in enumerate(self.enc.values()):
            if s > 0:
                levels.append(Level(x, grid, parent))
                x, grid, parent = stage.down(x, grid)
                order, inverse = serialize(grid, self.order, True, generator)  # pooling always reshuffles
            table = neighbour_table(grid)
            for block in stage.blocks():
                x = block(x, table, order, inverse)
                bar.update(1)
            logger.debug("stage %d: %d voxels, %d channels", s, x.shape[0], x.shape[1])
        bar.close()
        levels.append(Level(x, grid, parent))
        return levels


def upcast(levels: list[Level], up_cast_level: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Sonata's feature up-casting: starting from the deepest stage, `up_cast_level` times
    parent.feat = cat(parent.feat, child.feat[inverse]); finer stages then copy their parent's.

    Returns (feat (V_L, D) at stage L = last - up_cast_level, index (V_0,) of the stage-L voxel
    holding each finest voxel), so finest-voxel features are feat[index] without materialising them."""
    last = len(levels) - 1
    if not 0 <= up_cast_level <= last:
        raise ValueError(f"up_cast_level must be in 0..{last}, got {up_cast_level}")
    stop = last - up_cast_level
    feat = levels[last].feat
    for s in range(last, stop, -1):
        feat = torch.cat([levels[s - 1].feat, feat[levels[s].parent]], 1)
    index = torch.arange(levels[0].feat.shape[0], device=feat.device)
    for s in range(1, stop + 1):
        index = levels[s].parent[index]
    return feat, index


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
