"""GeoPurify: geometry-guided purification of lifted 2D vision-language features on 3D points.

The package reads as the pipeline: data -> lift (+ vlm) -> teacher -> student -> distill ->
purify -> evaluate, with a thin `cli` on top.
"""

__version__ = "0.1.0"
