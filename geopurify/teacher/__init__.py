"""Frozen 3D teachers giving per-point embeddings for distillation (training only).

`build_teacher(cfg, device)` builds the one `cfg["teacher"]["name"]` names, through the registry
`TEACHERS`: "sonata", the real Sonata encoder loaded from `cfg["teacher"]["ckpt"]` onto `device`
(`geopurify.teacher.sonata`), or "geometric", the offline stand-in (hand-crafted descriptors,
numpy on the CPU whatever the device; `geopurify.standins.geometric_teacher`). Each is imported
only when asked for.
"""

from __future__ import annotations

import logging

from geopurify.registry import Registry
from geopurify.teacher.base import Teacher, finish_embedding

logger = logging.getLogger(__name__)

__all__ = ["Teacher", "TEACHERS", "build_teacher", "finish_embedding"]

# teacher.name -> the teacher's class (built by its `from_config(cfg, device)`), imported when asked for
TEACHERS = Registry(
    "teacher.name",
    "teacher",
    {
        "geometric": "geopurify.standins.geometric_teacher:GeometricTeacher",
        "sonata": "geopurify.teacher.sonata:SonataTeacher",
    },
)


def build_teacher(cfg: dict, device: str = "cpu") -> Teacher:
    """The teacher named by cfg["teacher"]["name"] (full config dict); a network teacher (Sonata)
    runs on `device`, the geometric stand-in ignores it (numpy)."""
    name = (cfg.get("teacher") or {}).get("name", "geometric")
    teacher = TEACHERS.get(name).from_config(cfg, device=str(device))
    logger.info("teacher: %s", teacher.describe())
    return teacher
