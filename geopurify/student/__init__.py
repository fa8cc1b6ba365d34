"""The student affinity network: voxelisation, spconv CPU shims, the sparse residual stack.

`voxelize` / `voxel_mean` are cheap to import; the network pulls in spconv (slow import) only
when `geopurify.student.network` is imported.
"""
from geopurify.student.voxel import voxel_mean, voxelize

__all__ = ["voxelize", "voxel_mean"]
