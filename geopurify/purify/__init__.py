"""Geometry-guided purification (METHOD.md section 5): kNN affinity pooling of lifted features.

`pooling` holds the array-level pieces (affinity weights, pooling, the reference and fast
classification; the kNN graph and the text scores are `geopurify.ops`); `infer` runs them on a
scene (`purify_scene`, the `knn_mean_scene` baseline, `query_scores` for new prompts,
`purified_features`); `query` keeps a scene loaded for free-text
prompts on demand (`geopurify query`, `geopurify view`).
"""

from geopurify.purify.infer import (
    PurifyResult,
    knn_mean_scene,
    nearest_seen,
    purified_features,
    purify_scene,
    query_scores,
    seen_voxels,
)
from geopurify.purify.pooling import affinity_weights, edge_cosines, pool, pool_reference, pool_scores, uniform_weights

__all__ = [
    "PurifyResult",
    "affinity_weights",
    "edge_cosines",
    "knn_mean_scene",
    "nearest_seen",
    "pool",
    "pool_reference",
    "pool_scores",
    "purified_features",
    "purify_scene",
    "query_scores",
    "seen_voxels",
    "uniform_weights",
]
