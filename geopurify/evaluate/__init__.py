"""Evaluation: confusion counts and mIoU / mAcc / f-mIoU / f-mAcc (METHOD.md section 6)."""
from geopurify.evaluate.metrics import IGNORE, classify_by_text, confusion, format_table, metrics

__all__ = ["IGNORE", "classify_by_text", "confusion", "format_table", "metrics"]
