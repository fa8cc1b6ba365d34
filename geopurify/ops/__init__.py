"""The base layer: pure geometry and tensor operations every pipeline stage shares.

- `project`: pinhole projection, the image mask, the occlusion test, the point z-buffer, visibility;
- `resize`: nearest-neighbour resizing of images and sampling of feature-map cells;
- `knn`: nearest points (kd-trees) and the exact kNN graph of voxel grids; `gridknn` its compiled CPU kernel;
- `poolkernels`: compiled CPU kernels of purification (edge dot products, the T pooling steps);
- `voxel`: voxelisation and per-voxel means;
- `scores`: unit normalisation and the one text classifier (argmax cosine with prompt embeddings).

Nothing here knows a scene, a config or a model: arrays and tensors in, arrays and tensors out. It
imports nothing of geopurify (docs/architecture.md).
"""
