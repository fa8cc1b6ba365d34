"""Student checkpoints, the one home of the format: atomic save, validated load, rebuilding the
student from a file, and the weights' digest (the official GeoPurify checkpoint is converted into
this format by geopurify.student.official).

A checkpoint is a dict saved with torch.save and loaded with `weights_only=True` (no code runs
on load). Training checkpoints (`epoch_XXX.pth`, `last.pth`) hold
    model, optimizer, scheduler, epoch (epochs completed), step (iterations done), rng, config,
    in_channels, meta;
the final `geopurify.pth` holds only model, epoch, step, config, in_channels and meta.
`meta` = {"teacher": {"name", "stand_in"}, "vlm": {"name", "simulated"}, "student": {preset,
width, blocks, out_dim, voxel_size}, "epoch": int, "device": str}, where width / blocks / out_dim
are those of the network as built (the `paper` preset's 512 / 4, not the config's width / blocks).
The architecture is rebuilt from config["student"] and in_channels exactly as training built it,
so a file is self-describing; `load_student` reports the rebuilt module's own numbers.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from geopurify.errors import InputError
from geopurify.io import load_torch_file, save_torch
from geopurify.student.network import build_student

log = logging.getLogger(__name__)

FORMAT = "geopurify-student"
VERSION = 1
REQUIRED = ("model", "config", "in_channels", "meta")


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write `state` (plus format tags) to `path` atomically (temp file, then rename)."""
    path = Path(path)
    save_torch(path, {"format": FORMAT, "version": VERSION, **state})
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint on the CPU. Missing, truncated, corrupt or foreign files -> InputError."""
    path = Path(path)
    ckpt = load_torch_file(path, "checkpoint", problem="unreadable checkpoint (truncated or corrupt)")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(path, "not a GeoPurify student checkpoint (no 'format: geopurify-student' tag)")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise InputError(path, f"checkpoint lacks {', '.join(missing)}")
    if not isinstance(ckpt["model"], dict) or not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        raise InputError(path, "checkpoint 'model' is not a state_dict of tensors")
    return ckpt


def state_dict_mismatch(expected: dict, got: dict) -> str | None:
    """One-line description of how `got` differs from `expected` (names and shapes), or None."""
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    shapes = [k for k in expected if k in got and tuple(expected[k].shape) != tuple(got[k].shape)]
    if not (missing or extra or shapes):
        return None
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} shape mismatches (e.g. {k}: file {tuple(got[k].shape)}, "
            f"architecture {tuple(expected[k].shape)})"
        )
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
    return "; ".join(parts)


def build_from_checkpoint(ckpt: dict, path: str | Path):
    """The student described by ckpt's config and in_channels, holding ckpt's weights."""
    scfg = ckpt["config"].get("student") if isinstance(ckpt["config"], dict) else None
    if not isinstance(scfg, dict):
        raise InputError(path, "checkpoint config has no 'student' section")
    try:
        model = build_student(scfg, int(ckpt["in_channels"]))
    except (ValueError, TypeError, KeyError) as e:
        raise InputError(path, f"cannot rebuild the recorded student ({type(e).__name__}: {e})") from None
    problem = state_dict_mismatch(model.state_dict(), ckpt["model"])
    if problem:
        built = {"preset": scfg.get("preset", "cpu"), **model.architecture()}  # what the config builds
        arch = ", ".join(f"{k} {v}" for k, v in built.items())
        raise InputError(
            path,
            f"weights do not match the recorded architecture ({arch}, in_channels {ckpt['in_channels']}): {problem}",
        )
    model.load_state_dict(ckpt["model"])
    return model


def check_compatible(meta: dict, feat_dim: int, cfg: dict, path: str | Path) -> None:
    """InputError naming the checkpoint when its student cannot take `feat_dim`-d lifted features
    (it was trained on another VLM's); a warning when the config's voxel size differs from training's."""
    want = int(meta["in_channels"]) - 6  # student input = lifted feature + rgb + normal
    if int(feat_dim) != want:
        vlm = meta.get("vlm") or {}
        raise InputError(
            path,
            f"student was trained on {want}-d lifted features (VLM {vlm.get('name', '?')}) but "
            f"the configured VLM {cfg['lift']['vlm']} gives {feat_dim}-d: evaluate with the VLM "
            f"it was trained with (--vlm / lift.vlm)",
        )
    trained = (meta.get("student") or {}).get("voxel_size")
    if trained is not None and float(trained) != float(cfg["student"]["voxel_size"]):
        log.warning(
            "%s was trained with %g m voxels; the config purifies with %g m",
            path,
            float(trained),
            float(cfg["student"]["voxel_size"]),
        )


def load_student(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode on `device`, meta dict) from a checkpoint written by training."""
    ckpt = load_checkpoint(path)
    model = build_from_checkpoint(ckpt, path).to(device).eval()
    meta = dict(ckpt["meta"])
    # the network as rebuilt (files written before the metadata recorded it said 64 / 2 for `paper`)
    meta["student"] = {**(meta.get("student") or {}), **model.architecture()}
    meta.setdefault("epoch", ckpt.get("epoch"))
    meta["in_channels"] = int(ckpt["in_channels"])
    meta["config"] = ckpt["config"]
    log.info(
        "loaded student %s (epoch %s, teacher %s, vlm %s)",
        path,
        meta.get("epoch"),
        (meta.get("teacher") or {}).get("name"),
        (meta.get("vlm") or {}).get("name"),
    )
    return model, meta


def weights_digest(model: torch.nn.Module) -> str:
    """Hex digest of every parameter and buffer (bitwise): equal digests = identical weights. Training
    logs it per rank (ranks must agree), evaluation keys its cached predictions by it."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
