"""Semantic-segmentation scores: confusion counts, mIoU / mAcc and the f-variants (METHOD.md section 6).

Counts are summed over a whole split (add the per-scene matrices), then
IoU_c = TP / (TP + FP + FN) and Acc_c = TP / (TP + FN) per class, and the means are taken over
classes. Choices, stated once here:

- Points whose ground truth is the ignore label are not counted at all.
- A labelled point *predicted* as the ignore label (-1: a method that abstains) is an error: a false
  negative of its true class and no class's TP or FP. The matrix is (C, C + 1); its last column counts
  these points ("no prediction"), so they lower that class's IoU and accuracy. (The reference code
  likewise counts a point whose prediction falls outside 0..C-1 in the target area only.)
- A class absent from the ground truth of the evaluated points (TP + FN == 0) has no IoU or
  accuracy (NaN) and is left out of every mean (a nanmean over the present classes); it is listed
  under `absent_classes`. False positives of such a class still lower the IoU of the classes those
  points really belong to. OpenScene's script likewise skips classes without ground-truth points
  (some versions then still divide by the full class count); on a whole benchmark split every class
  is present and the conventions agree, they differ only on small subsets such as single scenes.
- f-mIoU / f-mAcc are the same means over the classes not named in `exclude` (wall, floor,
  ceiling), the long-tail metric of ScanNet200.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

IGNORE = -1  # the benchmark ignore id (geopurify.data.labels.IGNORE)


def _as_int_array(x, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of class ids, got shape {x.shape}")
    if x.size and not np.issubdtype(x.dtype, np.integer):
        if not np.issubdtype(x.dtype, np.floating) or not np.all(np.mod(x, 1) == 0):
            raise ValueError(f"{what} must hold integer class ids, got dtype {x.dtype}")
    return x.astype(np.int64, copy=False)


def confusion(pred, gt, n_classes: int, ignore: int = IGNORE) -> np.ndarray:
    """(C, C + 1) int64 counts, rows = ground-truth class, columns = predicted class, and a last
    column for labelled points predicted `ignore` (no prediction: a false negative of the row's class).

    `pred`, `gt`: (N,) integer ids (numpy or torch) in 0..C-1 or `ignore`. Points with gt == ignore
    are skipped. Any other id outside 0..C-1 raises ValueError. Matrices of several scenes add up.
    """
    pred = _as_int_array(pred, "predictions")
    gt = _as_int_array(gt, "ground truth")
    if pred.shape != gt.shape:
        raise ValueError(f"predictions have {pred.shape[0]} points but the ground truth has {gt.shape[0]}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be positive, got {n_classes}")
    for arr, what in ((pred, "predictions"), (gt, "ground truth")):
        bad = ((arr < 0) | (arr >= n_classes)) & (arr != ignore)
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} {what} ids lie outside 0..{n_classes - 1} and are not the ignore "
                f"id {ignore} (e.g. {int(arr[bad][0])})"
            )
    valid = gt != ignore
    col = np.where(pred[valid] == ignore, n_classes, pred[valid])  # abstentions -> the last column
    flat = gt[valid] * (n_classes + 1) + col
    return np.bincount(flat, minlength=n_classes * (n_classes + 1)).reshape(n_classes, n_classes + 1).astype(np.int64)


def _nanmean_percent(values: np.ndarray) -> float | None:
    """Mean of the non-NaN entries in percent, or None (JSON null) when there are none."""
    values = values[~np.isnan(values)]
    return float(100.0 * values.mean()) if values.size else None


def metrics(conf: np.ndarray, names: Sequence[str], exclude: Sequence[str] = ("wall", "floor", "ceiling")) -> dict:
    """Scores of a confusion matrix (rows = ground truth): (C, C + 1) as `confusion` gives, the last
    column counting labelled points without a prediction (false negatives), or a plain (C, C).

    Returns {"mIoU", "mAcc", "f_mIoU", "f_mAcc"} in percent (None when no class qualifies),
    "per_class": [{"name", "iou", "acc", "gt_points", "pred_points", "unpredicted_points"}] (iou / acc
    as fractions, None for a class absent from the ground truth), "absent_classes" (names),
    "excluded_from_f" (the names of `exclude` found among the classes, compared case-insensitively),
    "n_points" and "unpredicted_points" (labelled points predicted -1, counted as errors).
    """
    conf = np.asarray(conf)
    names = list(names)
    if conf.ndim != 2 or conf.shape[1] not in (conf.shape[0], conf.shape[0] + 1):
        raise ValueError(f"confusion matrix must be (C, C) or (C, C + 1), got shape {conf.shape}")
    if conf.shape[0] != len(names):
        raise ValueError(f"confusion matrix has {conf.shape[0]} classes but {len(names)} names were given")
    if (conf < 0).any():
        raise ValueError("confusion matrix has negative counts")
    conf = conf.astype(np.float64)
    C = conf.shape[0]
    unpredicted = conf[:, C] if conf.shape[1] > C else np.zeros(C)
    tp = np.diag(conf[:, :C])
    gt_points = conf.sum(1)  # abstentions included: they are false negatives
    pred_points = conf[:, :C].sum(0)
    present = gt_points > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(present, tp / (gt_points + pred_points - tp), np.nan)
        acc = np.where(present, tp / gt_points, np.nan)
    drop = {e.lower() for e in exclude}
    in_f = np.array([n.lower() not in drop for n in names], dtype=bool)
    per_class = [
        {
            "name": n,
            "iou": None if math.isnan(iou[c]) else float(iou[c]),
            "acc": None if math.isnan(acc[c]) else float(acc[c]),
            "gt_points": int(gt_points[c]),
            "pred_points": int(pred_points[c]),
            "unpredicted_points": int(unpredicted[c]),
        }
        for c, n in enumerate(names)
    ]
    return {
        "mIoU": _nanmean_percent(iou),
        "mAcc": _nanmean_percent(acc),
        "f_mIoU": _nanmean_percent(iou[in_f]),
        "f_mAcc": _nanmean_percent(acc[in_f]),
        "per_class": per_class,
        "absent_classes": [n for n, p in zip(names, present) if not p],
        "excluded_from_f": [n for n, f in zip(names, in_f) if not f],
        "n_points": int(conf.sum()),
        "unpredicted_points": int(unpredicted.sum()),
    }


def _pct(x: float | None, scale: float = 1.0) -> str:
    return "   -" if x is None else f"{scale * x:5.1f}"


def format_table(m: dict, title: str | None = None) -> str:
    """A per-class table (IoU, Acc in percent, point counts) followed by the four means."""
    rows = m["per_class"]
    width = max([len("class")] + [len(r["name"]) for r in rows])
    excluded = set(m.get("excluded_from_f", []))
    lines = [] if title is None else [title]
    head = f"{'class':<{width}}  {'IoU':>5}  {'Acc':>5}  {'gt pts':>10}  {'pred pts':>10}"
    lines += [head, "-" * len(head)]
    for r in rows:
        note = "  (absent from ground truth)" if r["iou"] is None else ""
        note += "  (not in f-metrics)" if r["name"] in excluded else ""
        lines.append(
            f"{r['name']:<{width}}  {_pct(r['iou'], 100):>5}  {_pct(r['acc'], 100):>5}  "
            f"{r['gt_points']:>10d}  {r['pred_points']:>10d}{note}"
        )
    lines.append("-" * len(head))
    n_present = sum(r["iou"] is not None for r in rows)
    lines.append(
        f"mIoU {_pct(m['mIoU'])}   mAcc {_pct(m['mAcc'])}   f-mIoU {_pct(m['f_mIoU'])}   "
        f"f-mAcc {_pct(m['f_mAcc'])}   ({n_present} of {len(rows)} classes present, "
        f"{m.get('n_points', 0)} points)"
    )
    if m.get("unpredicted_points"):
        lines.append(
            f"{m['unpredicted_points']} labelled points had no prediction (-1); counted as errors of their true class"
        )
    return "\n".join(lines)
