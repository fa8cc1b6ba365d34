"""Frozen 3D teachers giving per-point embeddings for distillation (training only).

`build_teacher(cfg, device)` picks one from `cfg["teacher"]`: "geometric" is the offline stand-in
(hand-crafted descriptors, numpy on the CPU whatever the device), "sonata" the real Sonata encoder
loaded from `cfg["teacher"]["ckpt"]` onto `device` (`geopurify.teacher.sonata`, imported only
when asked for).
"""
from __future__ import annotations

import logging

from geopurify.errors import InputError
from geopurify.teacher.base import Teacher, finish_embedding

logger = logging.getLogger(__name__)

__all__ = ["Teacher", "build_teacher", "finish_embedding"]

TEACHERS = ("geometric", "sonata")


def build_teacher(cfg: dict, device: str = "cpu") -> Teacher:
    """The teacher named by cfg["teacher"]["name"] (full config dict); a network teacher (Sonata)
    runs on `device`, the geometric stand-in ignores it (numpy)."""
    tcfg = cfg.get("teacher") or {}
    name = tcfg.get("name", "geometric")
    if name == "geometric":
        from geopurify.teacher.geometric import GeometricTeacher

        teacher = GeometricTeacher()
    elif name == "sonata":
        from geopurify.teacher.sonata import SonataTeacher

        teacher = SonataTeacher(tcfg.get("ckpt"), device=str(device), color_scale=tcfg.get("color_scale", "sonata"),
                                missing_normals=tcfg.get("missing_normals", "zero"))
    else:
        raise InputError(None, f"config key 'teacher.name' must be one of {', '.join(TEACHERS)}, got {name!r}")
    logger.info("teacher: %s", teacher.describe())
    return teacher
