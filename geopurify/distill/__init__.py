"""Distillation (METHOD.md sections 3-4): the student learns the teacher's point affinities.

- `sampling`: anchors, positives, macro- and micro-negatives from teacher cosines (exact, chunked);
- `loss`: InfoNCE over [positive, negatives], and a ranking-agreement measure;
- `engine`: `train(cfg, exp_dir, resume=False)`, the epoch loop, checkpoints and logs;
- `schedule`: learning rate per step, scene order per epoch, sampling generators, RNG states;
- `processes`: torchrun process groups and their collectives;
- `scenes`: a training scene prepared for an iteration, and the store keeping them in RAM;
- `step`: one iteration (sampling, forward, InfoNCE, optimiser step) and the epoch's BatchNorm statistics;
- `subset`: choosing the ~1.5% training scenes from label histograms.
Checkpoints (save, load, digest, the official GeoPurify conversion) live with the student
(geopurify.student.checkpoint, geopurify.student.official).
"""

from geopurify.distill.loss import info_nce, ranking_accuracy
from geopurify.distill.sampling import Pairs, n_anchors_for, sample_pairs

__all__ = ["Pairs", "sample_pairs", "n_anchors_for", "info_nce", "ranking_accuracy"]
