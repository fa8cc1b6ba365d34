"""Scoring features against prompt embeddings: the one text classifier of the pipeline.

A point's (or voxel's) class is argmax_c cos(f, w_c) over the unit prompt embeddings w_c. |f| is
common to every class, so the scores S = F W_hat^T (`text_scores`, dot products with the unit
prompts) give the same argmax as the cosines (`cosine_scores`) at one matrix product. Everything
runs in row chunks (bounded memory) on the features' device, the prompts moved there.
"""

from __future__ import annotations

import torch


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """`x / |x|` along `dim` (zero vectors stay zero)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)


def unit_text(text_emb: torch.Tensor) -> torch.Tensor:
    """Text embeddings scaled to unit length (P, C) float32."""
    return l2_normalize(torch.as_tensor(text_emb).float())


def text_scores(feat: torch.Tensor, text_emb: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """S = F W_hat^T (V, P): dot products with the unit prompt embeddings, in row chunks. Per row,
    argmax_c S equals argmax_c cos(f, w_c) (|f| is common to all classes)."""
    feat = torch.as_tensor(feat)
    w = unit_text(text_emb).to(feat.device)
    if feat.ndim != 2 or w.ndim != 2 or feat.shape[1] != w.shape[1]:
        raise ValueError(
            f"features (V, C) and text embeddings (P, C) must have the same C, "
            f"got {tuple(feat.shape)} and {tuple(w.shape)}"
        )
    out = torch.empty(feat.shape[0], w.shape[0], dtype=torch.float32, device=feat.device)
    for s in range(0, feat.shape[0], chunk):
        out[s : s + chunk] = feat[s : s + chunk].float() @ w.T
    return out


def cosine_scores(feat: torch.Tensor, text_emb: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """cos(f_i, w_c) (V, P), in row chunks (a zero feature scores 0 with every prompt)."""
    feat = torch.as_tensor(feat)
    out = text_scores(feat, text_emb, chunk)
    for s in range(0, feat.shape[0], chunk):
        out[s : s + chunk] /= feat[s : s + chunk].float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return out


def classify_by_text(feat, text_emb, chunk: int = 65536) -> torch.Tensor:
    """(N,) int64 on the features' device: per row of `feat` (N, C) (any float dtype, e.g. float16
    features from disk), the index of the prompt embedding of `text_emb` (P, C) with the highest
    cosine. A zero feature row gets class 0 (its cosines are all zero)."""
    return text_scores(feat, text_emb, chunk).argmax(1)
