"""Lifting 2D VLM features onto 3D points: per-view visibility (geopurify.ops.project), multi-view fusion."""

from geopurify.lift.fusion import MeanFusion, TopKFusion, consensus_classes, nearest_fill
from geopurify.lift.multiview import lift_scene
from geopurify.lift.result import LiftResult, load_lifted, save_lifted

__all__ = [
    "LiftResult",
    "MeanFusion",
    "TopKFusion",
    "consensus_classes",
    "lift_scene",
    "load_lifted",
    "nearest_fill",
    "save_lifted",
]
