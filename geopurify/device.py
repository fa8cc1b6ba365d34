"""The compute device: one policy for every command, one way to move data onto it.

`resolve_device(spec)` turns a `--device` value into a `torch.device`: `auto` is the first CUDA
device when torch sees one, else the CPU; `cpu`, `cuda` and `cuda:N` are taken as asked, and
asking for CUDA that is not there is an InputError (never a silent fall-back to the CPU).
`to_device(x, device)` moves a tensor, or every tensor field of a dataclass such as a
`LiftResult`, so a pipeline stage can put all of its inputs on the device at its entry.
"""

from __future__ import annotations

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
