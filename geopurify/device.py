"""The compute device: one policy for every command, one way to move data onto it.

`resolve_device(spec)` turns a `--device` value into a `torch.device`: `auto` is the first CUDA
device when torch sees one, else the CPU; `cpu`, `cuda` and `cuda:N` are taken as asked, and
asking for CUDA that is not there is an InputError (never a silent fall-back to the CPU).
`to_device(x, device)` moves a tensor, or every tensor field of a dataclass such as a
`LiftResult`, so a pipeline stage can put all of its inputs on the device at its entry.

Precision on CUDA (config section `gpu`, no effect on the CPU): `set_tf32` is the one place that
allows or forbids TF32 matmuls and cuDNN convolutions; `student_precision` says under which autocast
dtype the student runs in purification, `autocast` enters it; `synchronize` makes wall-clock stage
times true on CUDA (kernels run asynchronously).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re

import torch

from geopurify.errors import InputError

CHOICES = "auto | cpu | cuda | cuda:N"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The device `spec` names (None = auto); CUDA devices always come back with their index."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", text)
    if m is None:
        raise InputError("--device", f"unknown device {spec!r} (choose {CHOICES})")
    if not torch.cuda.is_available():
        raise InputError(
            "--device", f"{spec} asked for, but torch sees no CUDA device on this machine (use --device cpu or auto)"
        )
    index = int(m.group(1)) if m.group(1) is not None else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise InputError(
            "--device", f"{spec} asked for, but torch sees {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
        )
    return torch.device("cuda", index)


def to_device(x, device):
    """`x` on `device`: a tensor moved, a dataclass with every tensor field moved (a new object),
    None as None. Moving to the device a tensor is already on costs nothing."""
    if x is None or isinstance(x, torch.Tensor):
        return None if x is None else x.to(device)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        moved = {
            f.name: getattr(x, f.name).to(device)
            for f in dataclasses.fields(x)
            if isinstance(getattr(x, f.name), torch.Tensor)
        }
        return dataclasses.replace(x, **moved)
    raise TypeError(f"cannot move a {type(x).__name__} to a device")


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def set_tf32(cfg: dict, device) -> bool:
    """Allow TF32 matmuls and cuDNN convolutions on CUDA as `gpu.tf32` says (process-wide torch
    flags); returns whether TF32 is in use (never on the CPU, whose flags are left alone)."""
    if not _is_cuda(device):
        return False
    on = bool(cfg["gpu"]["tf32"])
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    return on


def student_precision(cfg: dict, device) -> str:
    """The student's precision in purification on `device`: `gpu.student_precision` on CUDA (its
    range checked by the caller, geopurify.schema), fp32 elsewhere."""
    return cfg["gpu"]["student_precision"] if _is_cuda(device) else "fp32"


def autocast(device, precision: str):
    """torch autocast on `device` at `precision` (bf16 | fp16); fp32: no autocast."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} ({' | '.join(PRECISIONS)})")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def synchronize(device) -> None:
    """Wait for `device`'s queued kernels (CUDA), so that a clock read after it times the work."""
    if _is_cuda(device):
        torch.cuda.synchronize(torch.device(device))
