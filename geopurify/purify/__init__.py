"""Geometry-guided purification (METHOD.md section 5): kNN affinity pooling of lifted features.

`pooling` holds the array-level pieces (graph, weights, pooling, the reference and fast
classification); `infer` runs them on a scene (`purify_scene`, the `knn_mean_scene` baseline,
`query_scores` for new prompts, `purified_features`); `query` keeps a scene loaded for free-text
prompts on demand (`geopurify query`, `geopurify view`).
"""
from geopurify.purify.infer import (PurifyResult, knn_mean_scene, nearest_seen, purified_features, purify_scene,
                                    query_scores, seen_voxels)
from geopurify.purify.pooling import (affinity_weights, cosine_scores, edge_cosines, knn_graph, pool, pool_reference,
                                      pool_scores, text_scores, uniform_weights, unit_text)

__all__ = [
    "PurifyResult", "affinity_weights", "cosine_scores", "edge_cosines", "knn_graph", "knn_mean_scene",
    "nearest_seen", "pool", "pool_reference", "pool_scores", "purified_features", "purify_scene", "query_scores",
    "seen_voxels", "text_scores", "uniform_weights", "unit_text",
]
