"""Distillation (METHOD.md sections 3-4): the student learns the teacher's point affinities.

- `sampling`: anchors, positives, macro- and micro-negatives from teacher cosines (exact, chunked);
- `loss`: InfoNCE over [positive, negatives], and a ranking-agreement measure;
- `engine`: `train(cfg, exp_dir, resume=False)`, single process or torchrun;
- `checkpoint`: `save_checkpoint`, `load_checkpoint`, `load_student`;
- `subset`: choosing the ~1.5% training scenes from label histograms.
"""
from geopurify.distill.loss import info_nce, ranking_accuracy
from geopurify.distill.sampling import Pairs, n_anchors_for, sample_pairs

__all__ = ["Pairs", "sample_pairs", "n_anchors_for", "info_nce", "ranking_accuracy"]
