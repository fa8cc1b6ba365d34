"""Which frames of a scene become views: the one rule every stage uses (METHOD.md section 1).

A frame's key is the stem of its `pose/<key>.txt`. On ScanNet (SensReader's naming, and what
`geopurify prepare scannet` writes) and on procedural rooms the keys are raw frame ids: the index
of the frame in the capture. Then a frame is a view when its raw id is a multiple of
`data.frame_step` (and its pose is valid: the readers drop the others and count them as skipped
frames). So `frame_step: 20` gives raw frames 0, 20, 40, ... as GeoPurify's and OpenScene's code
use, whichever step the frames were exported at, provided that step divides 20:
`prepare --frame-step 20`, `--frame-step 10` or `--frame-step 1` all give the same views.

When the export step does not divide `frame_step` (e.g. exported every 30th, config 20) only
the raw ids that are multiples of both are there: the views are every lcm-th raw frame, fewer
than asked. That is logged as a warning naming both steps, once per pair of steps. The export
step is read from meta.json (`sens.frame_step`, written by `prepare scannet`), else taken as the
greatest common divisor of the ids present.

Keys that are not all non-negative integers (Matterport's `<panorama>_i<camera>_<yaw>` image
names) have no raw id: every `frame_step`-th key in natural order is a view.
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)

_warned: set[tuple[int, int]] = set()


def raw_ids(keys: list[str]) -> list[int] | None:
    """The keys as raw frame ids (non-negative integers), or None when any key is not one."""
    if not keys or not all(k.isdigit() and k.isascii() for k in keys):
        return None
    return [int(k) for k in keys]


def export_step(keys: list[str], meta: dict | None = None) -> int | None:
    """The step the frames were exported at: meta.json's `sens.frame_step`, else the gcd of the raw
    ids present (None for non-numeric keys or fewer than two frames)."""
    sens = (meta or {}).get("sens")
    if isinstance(sens, dict) and isinstance(sens.get("frame_step"), int) and sens["frame_step"] >= 1:
        return int(sens["frame_step"])
    ids = raw_ids(keys)
    if ids is None or len(ids) < 2:
        return None
    return math.gcd(*ids) or None


def select_views(ordered: list[str], frame_step: int, meta: dict | None = None, where=None) -> list[str]:
    """The keys that are views (module docstring), from all frame keys in capture order (natural
    order, `readers.natural_key`): raw id a multiple of `frame_step` when the keys are raw frame
    ids, else every `frame_step`-th key."""
    step = int(frame_step)
    if step < 1:
        raise ValueError(f"frame_step must be a positive integer, got {frame_step!r}")
    ids = raw_ids(ordered)
    if ids is None:
        return ordered[::step]
    exported = export_step(ordered, meta)
    if exported is not None and exported > 1 and step % exported:
        lcm = step * exported // math.gcd(step, exported)
        (log.debug if (exported, step) in _warned else log.warning)(
            "%sframes were exported every %d raw frames, and data.frame_step %d is not a multiple of %d: "
            "the views are every %d-th raw frame, not every %d-th (re-export with a step dividing %d, "
            "e.g. prepare --frame-step %d)",
            f"{where}: " if where else "",
            exported,
            step,
            exported,
            lcm,
            step,
            step,
            math.gcd(step, exported),
        )
        _warned.add((exported, step))
    return [k for k, i in zip(ordered, ids) if i % step == 0]
