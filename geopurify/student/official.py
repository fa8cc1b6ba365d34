"""Load the official GeoPurify checkpoint (MinkowskiEngine) into this project's spconv student.

The reference student (github.com/tj12323/GeoPurify, models/affinity_module.py) is
`AffinityPredictor(input_dim=518, embed_dim=128, hidden_dim=512)`:
    input_layer = Sequential(MinkowskiConvolution(Cin, W, 3), MinkowskiBatchNorm(W), MinkowskiReLU())
    res_blocks  = Sequential(4 x MinkowskiResBlock(W): conv1, norm1, relu, conv2, norm2, + x, relu)
    output_layer = MinkowskiConvolution(W, E, kernel_size=1)
all convolutions stride 1 without bias, which is this project's `AffinityNet` layer for layer
(docs/official_checkpoint.md has the key table). Checkpoints are saved by run/train.py as
{"epoch", "model_state_dict", "optimizer_state_dict", ...} or as a bare state_dict.

Weight layouts, read from the sources and checked by experiment (tests/test_official_ckpt.py):
- MinkowskiEngine (src/convolution_kernel.hpp, src/coordinate_map_cpu.hpp, kernel_region.hpp):
  a 3x3x3 kernel is (27, in, out); the output at site x adds in[x + d_k] @ kernel[k] for every
  k whose input site exists, with the HYPER_CUBE offset
      d_k = (k % 3 - 1, (k // 3) % 3 - 1, k // 9 - 1)      (first coordinate varies fastest),
  the coordinates being the columns after the batch index. A 1x1x1 stride-1 kernel is (in, out)
  and applied as features @ kernel.
- spconv 2.x (`SubMConv3d.weight`, KRSC): (out, k0, k1, k2, in); the output at x adds
  weight[:, a0, a1, a2, :] @ in[x + (a0 - 1, a1 - 1, a2 - 1)] (a cross-correlation, kernel axis i
  along coordinate column i).
Hence spconv[o, dx+1, dy+1, dz+1, i] = ME[k(dx, dy, dz)][i, o]: reshape the ME kernel to
(3[dz], 3[dy], 3[dx], in, out) and permute to (out, dx, dy, dz, in).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch

from geopurify.errors import InputError
from geopurify.io import load_torch_file
from geopurify.student.checkpoint import save_checkpoint
from geopurify.student.network import AffinityNet

log = logging.getLogger(__name__)

_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_PREFIXES = ("module.", "affinity_student.")  # DistributedDataParallel / the trainer's attribute name


def me_kernel_offsets(kernel_size: int = 3, dim: int = 3) -> np.ndarray:
    """(kernel_size**dim, dim) int offsets of MinkowskiEngine's HYPER_CUBE kernel, row k for
    kernel index k (odd size): axis i offset = (k // size**i) % size - size // 2."""
    k = np.arange(kernel_size**dim)[:, None]
    return (k // kernel_size ** np.arange(dim)[None, :]) % kernel_size - kernel_size // 2


def me_to_spconv_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """ME 3x3x3 kernel (27, in, out) -> spconv KRSC weight (out, 3, 3, 3, in) with the same
    action (module docstring)."""
    if kernel.dim() != 3 or kernel.shape[0] != 27:
        raise ValueError(f"expected a (27, in, out) MinkowskiEngine kernel, got {tuple(kernel.shape)}")
    cin, cout = kernel.shape[1:]
    # index k = dx' + 3 dy' + 9 dz' (dx' = dx + 1, ...) -> axes (dz', dy', dx')
    return kernel.reshape(3, 3, 3, cin, cout).permute(4, 2, 1, 0, 3).contiguous()


def unwrap_state_dict(obj, where=None) -> dict[str, torch.Tensor]:
    """The student state_dict inside an official checkpoint object, with DDP / trainer prefixes
    removed ("model_state_dict" or "state_dict" entry, or the dict itself)."""
    if isinstance(obj, dict):
        for key in ("model_state_dict", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(where, "not a GeoPurify AffinityPredictor checkpoint (no state_dict of tensors)")
    out = {}
    for k, v in obj.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p) :]
        out[k] = v
    return out


def infer_architecture(sd: dict, where=None) -> dict:
    """{"in_channels", "width", "blocks", "out_dim"} from the shapes of an official state_dict."""
    if "input_layer.0.kernel" not in sd or "output_layer.kernel" not in sd:
        raise InputError(
            where, "not a GeoPurify AffinityPredictor state_dict (no input_layer.0.kernel / output_layer.kernel)"
        )
    k0 = sd["input_layer.0.kernel"]
    if k0.dim() != 3 or k0.shape[0] != 27:
        raise InputError(where, f"input_layer.0.kernel must be a 3x3x3 kernel (27, in, out), got {tuple(k0.shape)}")
    head = sd["output_layer.kernel"]
    if head.dim() == 3 and head.shape[0] == 1:
        head = head[0]
    if head.dim() != 2:
        raise InputError(where, f"output_layer.kernel must be a 1x1x1 kernel (in, out), got {tuple(head.shape)}")
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"res_blocks\.(\d+)\.", k))})
    if blocks != list(range(len(blocks))):
        raise InputError(where, f"residual blocks are not numbered 0..n-1: {blocks}")
    return {
        "in_channels": int(k0.shape[1]),
        "width": int(k0.shape[2]),
        "blocks": len(blocks),
        "out_dim": int(head.shape[1]),
    }


def _key_map(n_blocks: int) -> dict[str, str]:
    """official key -> AffinityNet key, for every tensor (docs/official_checkpoint.md)."""
    m = {"input_layer.0.kernel": "stem.conv.conv.weight"}
    m.update({f"input_layer.1.bn.{b}": f"stem.bn.{b}" for b in _BN_KEYS})
    for i in range(n_blocks):
        for j in (1, 2):
            m[f"res_blocks.{i}.conv{j}.kernel"] = f"blocks.{i}.layer{j}.conv.conv.weight"
            m.update({f"res_blocks.{i}.norm{j}.bn.{b}": f"blocks.{i}.layer{j}.bn.{b}" for b in _BN_KEYS})
    m["output_layer.kernel"] = "head.weight"
    return m


def convert_official_state_dict(sd: dict, where=None) -> dict[str, torch.Tensor]:
    """AffinityNet state_dict equal in action to an official AffinityPredictor state_dict.

    Conv kernels are re-laid out (`me_to_spconv_kernel`), the 1x1x1 head (W, E) becomes the
    linear weight (E, W) with a zero bias (the reference has none), BatchNorm tensors are renamed.
    Unknown, missing or mis-shaped tensors raise InputError(where, problem).
    """
    sd = unwrap_state_dict(sd, where)
    arch = infer_architecture(sd, where)
    W, cin = arch["width"], arch["in_channels"]
    kmap = _key_map(arch["blocks"])
    extra = [k for k in sd if k not in kmap]
    if extra:
        raise InputError(where, f"{len(extra)} unexpected tensors for an AffinityPredictor, e.g. {extra[0]!r}")
    missing = [k for k in kmap if k not in sd and not k.endswith("num_batches_tracked")]
    if missing:
        raise InputError(where, f"{len(missing)} tensors missing, e.g. {missing[0]!r}")
    out: dict[str, torch.Tensor] = {}
    for src, dst in kmap.items():
        if src not in sd:  # num_batches_tracked of very old files: only used in training
            out[dst] = torch.tensor(0, dtype=torch.int64)
            continue
        t = sd[src]
        if src.endswith(".kernel") and src != "output_layer.kernel":
            c_in = cin if src.startswith("input_layer") else W
            if tuple(t.shape) != (27, c_in, W):
                raise InputError(where, f"{src} has shape {tuple(t.shape)}, expected (27, {c_in}, {W})")
            out[dst] = me_to_spconv_kernel(t.float())
        elif src == "output_layer.kernel":
            t = t[0] if t.dim() == 3 else t
            if t.shape[0] != W:
                raise InputError(where, f"{src} has shape {tuple(sd[src].shape)}, expected ({W}, out)")
            out[dst] = t.float().t().contiguous()
            out["head.bias"] = torch.zeros(t.shape[1])
        elif src.endswith("num_batches_tracked"):
            out[dst] = t.to(torch.int64).reshape(())
        else:
            if tuple(t.shape) != (W,):
                raise InputError(where, f"{src} has shape {tuple(t.shape)}, expected ({W},)")
            out[dst] = t.float()
    bad = [k for k, v in out.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise InputError(where, f"{bad[0]} holds NaN/inf")
    return out


def read_official_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(official state_dict, {"epoch": int | None}) from a checkpoint file; InputError if unreadable."""
    path = Path(path)
    obj = load_torch_file(path, "checkpoint", problem="unreadable checkpoint")
    epoch = obj.get("epoch") if isinstance(obj, dict) and isinstance(obj.get("epoch"), int) else None
    return unwrap_state_dict(obj, path), {"epoch": epoch}


def load_official_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """An AffinityNet in eval mode on `device` holding the official GeoPurify weights of `path`;
    in_channels / width / blocks / out_dim are read from the tensor shapes."""
    sd, info = read_official_checkpoint(path)
    arch = infer_architecture(sd, path)
    converted = convert_official_state_dict(sd, path)
    model = AffinityNet(arch["in_channels"], arch["width"], arch["blocks"], arch["out_dim"])
    expect = model.state_dict()
    for k, v in converted.items():
        if tuple(expect[k].shape) != tuple(v.shape):  # e.g. an spconv build with another weight layout
            raise RuntimeError(
                f"{k}: converted shape {tuple(v.shape)} but this spconv build expects "
                f"{tuple(expect[k].shape)} (KRSC weights assumed)"
            )
    model.load_state_dict(converted, strict=True)
    log.info("official GeoPurify checkpoint %s (epoch %s): %s", path, info["epoch"], model.describe())
    return model.to(device).eval()


def convert_official_checkpoint(src: str | Path, dst: str | Path, voxel_size: float = 0.02) -> Path:
    """Write the official checkpoint `src` as this project's student checkpoint `dst`
    (geopurify.student.checkpoint format), so `load_student` and the CLI can use it."""
    sd, info = read_official_checkpoint(src)
    arch = infer_architecture(sd, src)
    converted = convert_official_state_dict(sd, src)
    student = {
        "preset": "cpu",
        "width": arch["width"],
        "blocks": arch["blocks"],
        "out_dim": arch["out_dim"],
        "voxel_size": float(voxel_size),
    }
    meta = {
        "teacher": {"name": "sonata", "stand_in": False},
        "vlm": {"name": "unknown (official GeoPurify checkpoint)", "simulated": False},
        "student": student,
        "epoch": info["epoch"],
        "source": f"official GeoPurify checkpoint {Path(src).name}",
    }
    return save_checkpoint(
        dst,
        {
            "model": converted,
            "config": {"student": student},
            "in_channels": arch["in_channels"],
            "meta": meta,
            "epoch": info["epoch"],
        },
    )
