"""Lifting 2D VLM features onto 3D points: projection, occlusion, z-buffer, multi-view fusion."""
from geopurify.lift.fusion import MeanFusion, TopKFusion, consensus_classes, nearest_fill
from geopurify.lift.lift import LiftResult, lift_scene, load_lifted, save_lifted
from geopurify.lift.project import project, rescale_intrinsic, visible, zbuffer

__all__ = ["LiftResult", "MeanFusion", "TopKFusion", "consensus_classes", "lift_scene", "load_lifted",
           "nearest_fill", "project", "rescale_intrinsic", "save_lifted", "visible", "zbuffer"]
