"""Every spconv workaround in one place; the rest of the package imports spconv only from here.

spconv 2.x is a GPU library that also runs on the CPU, with three sharp edges (checked against
spconv 2.3.8 and torch 2.13 CPU):

1. `spconv.pytorch.ops.get_current_stream()` calls `torch.cuda.current_stream()`, which raises
   "Torch not compiled with CUDA enabled" on a CPU-only torch. The C++ GEMM path guards the call,
   but the pure-Python GEMM path (used by CPU-only spconv builds, where `ops.GEMM_CPP is None`)
   calls it unconditionally in `indice_conv_backward`. The shim makes it return stream 0 (the
   default stream) whenever CUDA is unavailable.
2. The default algorithm (`ConvAlgo.MaskImplicitGemm`) builds its index pairs with CUDA kernels
   only; CPU convolutions must use `ConvAlgo.Native` (gather - GEMM - scatter-add).
3. With a bias, eval mode fuses the bias into the C++ kernel, which asserts
   "!features.is_cpu() ... bias and act don't support cpu" (ConvGemmOps indice_conv); train mode
   adds the bias in Python and works. `SubMConv3d` below therefore always convolves without bias
   and adds its own bias afterwards, identically in both modes and on both devices.
4. spconv has no bfloat16 kernels (its tensor-view dtype table lacks it), and under CUDA autocast
   its conv functions cast their inputs to float16 (`custom_fwd(cast_inputs=torch.float16)`),
   whatever the autocast dtype; on the CPU autocast does not reach them. `SubMConv3d` makes that one
   rule explicit on both devices: under autocast the convolution runs on float16 features and
   weights with autocast off, so a bf16 / fp16 student computes the same on CPU and CUDA.

5. Importing `spconv.pytorch` builds descriptors of every CUDA GEMM / implicit-GEMM kernel for its
   tuners (`spconv.algo`: ~3.4 s of Python in every process). Without CUDA they are never used:
   the CPU convolution is gather - torch.mm - scatter-add. When CUDA is unavailable, `spconv()`
   therefore empties the kernel parameter lists of `spconv.core` before that import, unless
   spconv was imported already (then it is used as it is). The CPU results are the same bit for
   bit (tests/test_student.py).

spconv itself is imported lazily, so importing `geopurify.student` stays cheap.

Weight layout: spconv 2.x stores every conv weight as KRSC = (out, k0, k1, k2, in), where kernel
axis i runs along coordinate column i, and computes a cross-correlation like
`torch.nn.functional.conv3d`; `to_conv3d_weight` gives the dense (out, in, k0, k1, k2) weight.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

_SPCONV: Any = None  # the patched `spconv.pytorch` module, after the first `spconv()` call


def _stream() -> int:
    """Current CUDA stream handle, or 0 (default stream) when CUDA is unavailable."""
    if torch.cuda.is_available():
        return torch.cuda.current_stream().cuda_stream
    return 0


def spconv():
    """`spconv.pytorch`, imported on first use with the CPU stream shim installed."""
    global _SPCONV
    if _SPCONV is None:
        if not torch.cuda.is_available() and "spconv.algo" not in sys.modules:
            import spconv.core as core

            del core.ALL_IMPGEMM_PARAMS[:], core.ALL_NATIVE_PARAMS[:]  # CUDA kernels only (sharp edge 5)
        import spconv.pytorch as spt
        from spconv.pytorch import cppcore, ops
        from spconv.pytorch import hash as sphash

        for mod in (cppcore, ops, sphash):  # ops and hash import the function by name
            mod.get_current_stream = _stream
        _SPCONV = spt
        logger.debug("spconv %s loaded with CPU shims", getattr(__import__("spconv"), "__version__", "?"))
    return _SPCONV


def conv_algo(device: torch.device | str):
    """The spconv algorithm to use for tensors on `device`: Native on CPU, spconv's default on CUDA."""
    from spconv.core import ConvAlgo

    return ConvAlgo.MaskImplicitGemm if torch.device(device).type == "cuda" else ConvAlgo.Native


def sparse_tensor(feats: torch.Tensor, coords: torch.Tensor, spatial_shape=None):
    """A batch-1 `SparseConvTensor` from features (V, C) and non-negative int coords (V, 3).

    `spatial_shape` defaults to coords.max(0) + 1.
    """
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must be (V, 3), got {tuple(coords.shape)}")
    if feats.shape[0] != coords.shape[0]:
        raise ValueError(f"{feats.shape[0]} feature rows for {coords.shape[0]} coordinates")
    if coords.numel() and int(coords.min()) < 0:
        raise ValueError("sparse coordinates must be non-negative")
    coords = coords.to(device=feats.device, dtype=torch.int32)
    if spatial_shape is None:
        spatial_shape = (coords.max(0).values + 1).tolist() if coords.shape[0] else [1, 1, 1]
    indices = torch.cat([coords.new_zeros(coords.shape[0], 1), coords], 1).contiguous()
    return spconv().SparseConvTensor(feats.contiguous(), indices, [int(s) for s in spatial_shape], 1)


def to_conv3d_weight(weight: torch.Tensor) -> torch.Tensor:
    """spconv KRSC weight (out, k0, k1, k2, in) -> conv3d weight (out, in, k0, k1, k2)."""
    return weight.permute(0, 4, 1, 2, 3)


class SubMConv3d(nn.Module):
    """Submanifold 3D convolution (outputs only at input sites) that works on CPU and CUDA.

    Wraps `spconv.pytorch.SubMConv3d` built without bias; the bias (if any) is a separate
    parameter added after the convolution (shim 3), and the algorithm is picked per call from the
    feature device (shim 2). Layers sharing `indice_key` reuse one neighbour table per tensor.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        bias: bool = True,
        indice_key: str | None = None,
    ):
        super().__init__()
        from spconv.core import ConvAlgo

        self.conv = spconv().SubMConv3d(
            in_channels, out_channels, kernel_size, bias=False, indice_key=indice_key, algo=ConvAlgo.Native
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        if bias:
            fan_in = in_channels * kernel_size**3
            bound = 1.0 / fan_in**0.5
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def weight(self) -> nn.Parameter:
        """KRSC weight (out, k, k, k, in)."""
        return self.conv.weight

    def forward(self, x):
        dev = x.features.device
        self.conv.algo = conv_algo(dev)
        if torch.is_autocast_enabled(dev.type):  # shim 4: float16, spconv's one reduced precision
            with torch.autocast(dev.type, enabled=False):
                c = self.conv
                y = c._conv_forward(
                    c.training,
                    x.replace_feature(x.features.half()),
                    c.weight.half(),
                    None,
                    name=c.name,
                    sparse_unique_name=c._sparse_unique_name,
                )
        else:
            y = self.conv(x)
        if self.bias is not None:
            y = y.replace_feature(y.features + self.bias)
        return y
