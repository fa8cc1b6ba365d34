"""Evaluate a split end to end: lift (cached) -> student -> pooling -> labels -> metrics.

Used by `geopurify val`, `geopurify demo` and bench/quality.py so the three report the same
numbers for the same inputs. Three predictions per scene:
- raw: argmax cosine of the lifted features with the prompt embeddings (fusion only);
- knn_mean: the same features smoothed by uniform kNN averaging (same K and T as purification);
- purified: geometry-guided pooling over the student's affinities (GeoPurify).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from geopurify.data.labels import get_label_set
from geopurify.data.readers import load_scene_for
from geopurify.evaluate.metrics import confusion, format_table, metrics
from geopurify.io import save_npy, write_json, write_text

log = logging.getLogger(__name__)

METHODS = ("raw", "knn_mean", "purified")


def raw_labels(feat: torch.Tensor, text_emb: torch.Tensor) -> np.ndarray:
    """Per-point argmax of cosine with the prompts (|f| is common to all classes, so f.w/|w|)."""
    w = text_emb / text_emb.norm(dim=1, keepdim=True)
    return (feat.float() @ w.T).argmax(1).cpu().numpy()


def predict_scene(scene, lifted, model, text_emb, cfg, device="cpu", methods=METHODS) -> dict[str, np.ndarray]:
    """Per-point class indices for each requested method."""
    from geopurify.purify.infer import knn_mean_scene, purify_scene

    out: dict[str, np.ndarray] = {}
    if "raw" in methods:
        out["raw"] = raw_labels(lifted.feat, text_emb)
    if "knn_mean" in methods:
        out["knn_mean"] = np.asarray(knn_mean_scene(scene, lifted, text_emb, cfg, device=device).labels)
    if "purified" in methods:
        res = purify_scene(scene, lifted, model, text_emb, cfg, device=device, path=cfg["purify"]["path"])
        out["purified"] = np.asarray(res.labels)
    return out


def prediction_key(scene, cfg: dict, model_digest: str, methods) -> str:
    """Hash of everything a scene's predictions depend on: its content, the lifting settings and the
    fingerprint of every input file of the lifting (scene files, VLM / feature / prompt files), the
    student's weights (a digest of their values), the purification / student / label-set settings and
    the methods."""
    import hashlib
    import json

    from geopurify.cache import lift_files_fingerprint, lift_settings, scene_fingerprint

    obj = {"scene": scene_fingerprint(scene), "lift": lift_settings(cfg), "files": lift_files_fingerprint(scene, cfg),
           "model": model_digest,
           "purify": cfg["purify"], "student": cfg["student"], "label_set": cfg["data"]["label_set"],
           "prompt_template": cfg["lift"]["prompt_template"], "methods": list(methods)}
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def _finished(pred_dir: Path, scene, key: str, methods) -> tuple[dict[str, np.ndarray], int] | None:
    """(predictions, skipped frames) of a scene an earlier run finished with the same key, else None.

    The record `<scene>.done.json` is written after the scene's prediction files, so a run killed
    part-way leaves either a complete, matching scene or one that is predicted again."""
    import json

    rec = pred_dir / f"{scene.name}.done.json"
    try:
        done = json.loads(rec.read_text())
        if done.get("key") != key:
            return None
        preds = {m: np.load(pred_dir / f"{scene.name}.{m}.npy", allow_pickle=False).astype(np.int64) for m in methods}
    except (OSError, ValueError):
        return None
    if any(p.shape != (scene.n_points,) for p in preds.values()):
        return None
    return preds, int(done.get("skipped_frames", 0))


def evaluate_scenes(cfg: dict, scene_paths: list[Path], model, out_dir: Path, cache_dir: Path,
                    device: str = "cpu", methods=METHODS, vlm=None, reuse: bool = True) -> dict:
    """Predict and score every scene; write per-scene predictions, metrics JSON and tables.

    Scenes whose predictions an earlier (e.g. killed) run already wrote for the same checkpoint,
    settings and scene content (`pred/<scene>.done.json`) are read back instead of predicted again
    (`reuse=False`: predict every scene, e.g. to time it; report["reused_scenes"] counts them).
    Returns {"metrics": {method: metrics dict}, "per_scene": {...}, "label_set", "vlm",
    "skipped_frames": {scene: frames left out as unusable}, "timings"}.
    """
    from geopurify.cache import cached_lift
    from geopurify.vlm import build_vlm
    from geopurify.vlm.text import text_embeddings

    out_dir = Path(out_dir)
    label_set = get_label_set(cfg["data"]["label_set"])
    vlm = vlm or build_vlm(cfg)
    text_emb = text_embeddings(vlm, label_set, cfg["lift"]["prompt_template"]).to(device)
    n = len(label_set.names)
    conf = {m: np.zeros((n, n + 1), dtype=np.int64) for m in methods}
    per_scene: dict[str, dict] = {}
    skipped: dict[str, int] = {}  # frames left out per scene (reader and lifting)
    timings = {"lift_s": 0.0, "predict_s": 0.0}
    digest = "none"
    if model is not None:
        from geopurify.distill.engine import weights_digest

        model.eval().to(device)
        digest = weights_digest(model)
    pred_dir = out_dir / "pred"
    n_reused = 0
    for path in tqdm(scene_paths, desc="evaluate", unit="scene"):
        scene = load_scene_for(path, label_set, frame_step=cfg["data"]["frame_step"])
        key = prediction_key(scene, cfg, digest, methods)
        earlier = _finished(pred_dir, scene, key, methods) if reuse else None
        if earlier is not None:
            preds, skipped[scene.name] = earlier
            n_reused += 1
            log.info("%s: predictions of an earlier run with the same checkpoint and settings reused", scene.name)
        else:
            t0 = time.perf_counter()
            lifted = cached_lift(scene, cfg, vlm, cache_dir)
            t1 = time.perf_counter()
            preds = predict_scene(scene, lifted, model, text_emb, cfg, device=device, methods=methods)
            t2 = time.perf_counter()
            timings["lift_s"] += t1 - t0
            timings["predict_s"] += t2 - t1
            skipped[scene.name] = int(lifted.info.get("skipped_frames", scene.meta.get("skipped_frames", 0)))
            for m, pred in preds.items():
                save_npy(pred_dir / f"{scene.name}.{m}.npy", pred.astype(np.int16))
            write_json(pred_dir / f"{scene.name}.done.json", {"key": key, "skipped_frames": skipped[scene.name]})
        if scene.labels is None:
            log.warning("%s has no labels: predictions written, not scored", path)
            continue
        gt = label_set.map(scene.labels, scene.label_space)
        per_scene[scene.name] = {}
        for m, pred in preds.items():
            c = confusion(pred, gt, n)
            conf[m] += c
            miou = metrics(c, label_set.names)["mIoU"]
            per_scene[scene.name][m] = None if miou is None else round(miou, 2)
        log.info("%s: %s", scene.name, ", ".join(f"{m} mIoU {_fmt(v, 1)}" for m, v in per_scene[scene.name].items()))
    results = {m: metrics(conf[m], label_set.names, exclude=tuple(cfg["eval"]["exclude_from_f"])) for m in methods}
    report = {
        "metrics": results,
        "per_scene": per_scene,
        "label_set": label_set.name,
        "vlm": vlm.describe(),
        "vlm_simulated": bool(vlm.simulated),
        "scenes": [Path(p).name for p in scene_paths],
        "skipped_frames": skipped,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "reused_scenes": n_reused,
    }
    write_json(out_dir / "metrics.json", report)
    write_text(out_dir / "per_class.txt", "\n\n".join(f"[{m}]\n{format_table(results[m])}" for m in methods) + "\n")
    return report


def _fmt(v, width: int) -> str:
    """A percentage, or n/a when no class qualified for the mean."""
    return f"{'n/a':>{width}}" if v is None else f"{v:{width}.1f}"


def summary_table(results: dict[str, dict]) -> str:
    """One row per method: mIoU, mAcc, f-mIoU, f-mAcc in percent."""
    lines = [f"{'method':<10} {'mIoU':>6} {'mAcc':>6} {'f-mIoU':>7} {'f-mAcc':>7}"]
    for m, r in results.items():
        lines.append(f"{m:<10} {_fmt(r['mIoU'], 6)} {_fmt(r['mAcc'], 6)} {_fmt(r['f_mIoU'], 7)} {_fmt(r['f_mAcc'], 7)}")
    return "\n".join(lines)
