"""InfoNCE on student affinities (METHOD.md section 3).

For anchor a with positive p and negatives n_1..n_M, with s = cosine of student embeddings:
    L_a = -log( exp(s_ap / tau) / (exp(s_ap / tau) + sum_m exp(s_an_m / tau)) ),
i.e. cross-entropy with target 0 over the logits [s_ap, s_an_1, ..., s_an_M] / tau.
The loss is the mean over anchors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geopurify.distill.sampling import Pairs


def pair_logits(emb: torch.Tensor, pairs: Pairs) -> torch.Tensor:
    """(A, 1 + M) cosines [s_ap, s_an...] for unit embeddings `emb` (N, E); positive first."""
    a = emb[pairs.anchor]  # (A, E)
    s_pos = (a * emb[pairs.positive]).sum(-1, keepdim=True)
    s_neg = torch.einsum("ae,ame->am", a, emb[pairs.negatives])
    return torch.cat([s_pos, s_neg], 1)


def info_nce(emb: torch.Tensor, pairs: Pairs, tau: float = 0.07) -> torch.Tensor:
    """Mean InfoNCE loss (scalar tensor) of unit per-point embeddings `emb` (N, E) over `pairs`."""
    logits = pair_logits(emb, pairs) / tau
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


@torch.no_grad()
def ranking_accuracy(emb: torch.Tensor, pairs: Pairs) -> dict:
    """How well affinities in `emb` rank the teacher's pairs.

    top1: fraction of anchors whose positive has a higher cosine than every negative
    (chance 1 / (1 + M)); pairwise: fraction of (positive, negative) comparisons won
    (chance 0.5; ties count half). Used to check that the student learns the teacher's geometry.
    """
    s = pair_logits(emb, pairs)
    pos, neg = s[:, :1], s[:, 1:]
    top1 = (pos > neg).all(1).float().mean().item()
    pairwise = ((pos > neg).float() + 0.5 * (pos == neg).float()).mean().item()
    return {"top1": top1, "pairwise": pairwise, "chance_top1": 1.0 / s.shape[1], "chance_pairwise": 0.5}
