"""The student affinity network: spconv CPU shims, the sparse residual stack (voxels: geopurify.ops.voxel).

The network pulls in spconv (slow import) only when `geopurify.student.network` is imported.
"""
