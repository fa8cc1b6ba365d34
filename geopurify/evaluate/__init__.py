"""Evaluation: confusion counts and mIoU / mAcc / f-mIoU / f-mAcc (METHOD.md section 6)."""

from geopurify.evaluate.metrics import IGNORE, confusion, format_table, metrics

__all__ = ["IGNORE", "confusion", "format_table", "metrics"]
