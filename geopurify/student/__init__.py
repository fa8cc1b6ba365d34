"""The student affinity network: spconv CPU shims, the sparse residual stack (voxels: geopurify.ops.voxel),
and its checkpoints: the format (save, load, rebuild, digest: `checkpoint`) and the official GeoPurify
checkpoint's conversion into it (`official`).
"""
