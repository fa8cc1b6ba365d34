"""Evaluate a split end to end: lift (cached) -> student -> pooling -> labels -> metrics.

Used by `geopurify val`, `geopurify demo` and bench/quality.py so the three report the same
numbers for the same inputs. Three predictions per scene:
- raw: argmax cosine of the lifted features with the prompt embeddings (fusion only);
- knn_mean: the same features smoothed by uniform kNN averaging (same K and T as purification);
- purified: geometry-guided pooling over the student's affinities (GeoPurify).

Class settings: the primary one is `data.label_set` (reports lead with it; for ScanNet it is
scannet19, the setting of the paper's 55.1); `eval.also_label_sets` are scored beside it. One
lifting and one pooling run serve all of them: the class scores of the union of their prompts are
pooled once, and each setting labels a point by the argmax over its own prompts' columns, exactly
what a run with that setting's prompts alone would give (pooling is linear, channel by channel).
Lifting itself (consensus fusion, the simulated VLM) uses the primary setting's prompts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from geopurify.data.fingerprint import scene_fingerprint
from geopurify.data.labels import describe_setting, get_label_set
from geopurify.data.readers import load_scene_for
from geopurify.device import set_tf32, student_precision, to_device
from geopurify.errors import InputError
from geopurify.evaluate.metrics import confusion, format_table, metrics
from geopurify.evaluate.timing import StageTimes, timing_report
from geopurify.io import save_npy, write_json, write_text
from geopurify.lift.cache import cached_lift, lift_files_fingerprint, lift_settings
from geopurify.ops.scores import l2_normalize, text_scores
from geopurify.purify.infer import knn_mean_scene, purify_scene
from geopurify.student.checkpoint import weights_digest
from geopurify.vlm import build_vlm
from geopurify.vlm.text import prompts_for

log = logging.getLogger(__name__)

METHODS = ("raw", "knn_mean", "purified")


def class_settings(cfg: dict) -> list:
    """The label sets scored: data.label_set (primary) then eval.also_label_sets, without repeats."""
    also = cfg["eval"]["also_label_sets"]
    if not all(isinstance(n, str) for n in also):
        raise InputError(None, f"config key 'eval.also_label_sets' must list label-set names, got {also!r}")
    names = [cfg["data"]["label_set"]] + [n for n in also if n != cfg["data"]["label_set"]]
    return [get_label_set(n) for n in dict.fromkeys(names)]


def prompt_columns(label_sets, template: str) -> tuple[list[str], dict[str, list[int]]]:
    """(the union of the sets' prompts in first-seen order, per set the columns of its classes)."""
    union: dict[str, int] = {}
    cols = {}
    for ls in label_sets:
        cols[ls.name] = [union.setdefault(p, len(union)) for p in prompts_for(ls, template)]
    return list(union), cols


def scene_ground_truth(scene, label_set) -> np.ndarray:
    """(N,) int64 class indices of the scene's labels in the label set (IGNORE elsewhere)."""
    where = scene.path or scene.name
    if scene.labels is None:
        raise InputError(where, "scene has no labels to evaluate against")
    if scene.label_space not in label_set.spaces:
        raise InputError(
            where,
            f"labels are {scene.label_space} ids but label set {label_set.name} is defined on "
            f"{', '.join(label_set.spaces)}",
        )
    return label_set.map(scene.labels, space=scene.label_space)


def _per_setting(scores: torch.Tensor, columns: dict[str, list[int]], inverse=None) -> dict[str, np.ndarray]:
    """Per setting, argmax over its columns of (rows, P) scores, mapped through `inverse` when given."""
    out = {}
    for name, cols in columns.items():
        lab = scores[:, torch.tensor(cols, device=scores.device)].argmax(1)
        out[name] = (lab if inverse is None else lab[inverse.to(lab.device)]).cpu().numpy().astype(np.int64)
    return out


def predict_scene(
    scene,
    lifted,
    model,
    text_emb,
    cfg,
    device="cpu",
    methods=METHODS,
    columns: dict[str, list[int]] | None = None,
    times: StageTimes | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Per method, per class setting: per-point class indices (CPU numpy), the argmax over that
    setting's `columns` of `text_emb` (P, C) (default: one setting "all" over every row), computed on
    `device`. `times`, when given, receives each method's stage times.

    The one place evaluation moves its inputs: the lifted features and the text embeddings go to
    `device` together here, so no later product mixes devices (the model is already there)."""
    lifted, text_emb = to_device(lifted, device), to_device(text_emb, device)
    columns = columns or {"all": list(range(text_emb.shape[0]))}
    out: dict[str, dict[str, np.ndarray]] = {}
    times = times or StageTimes(device)
    if "raw" in methods:
        with times.stage("raw/scores"):
            out["raw"] = _per_setting(text_scores(lifted.feat, text_emb), columns)
    if "knn_mean" in methods:
        res = knn_mean_scene(scene, lifted, text_emb, cfg, device=device)
        out["knn_mean"] = _per_setting(res.voxel_scores, columns, res.inverse)
        times.add("knn_mean", res.info)
    if "purified" in methods:
        res = purify_scene(scene, lifted, model, text_emb, cfg, device=device, pooling=cfg["purify"]["pooling"])
        out["purified"] = _per_setting(res.voxel_scores, columns, res.inverse)
        times.add("purified", res.info)
    return out


def prediction_key(scene, cfg: dict, model_digest: str, methods) -> str:
    """Hash of everything a scene's predictions depend on: its content, the lifting settings and the
    fingerprint of every input file of the lifting (scene files, VLM / feature / prompt files), the
    student's weights (a digest of their values), the purification / student / label-set settings and
    the methods."""
    obj = {
        "scene": scene_fingerprint(scene),
        "lift": lift_settings(cfg),
        "files": lift_files_fingerprint(scene, cfg),
        "model": model_digest,
        "purify": cfg["purify"],
        "student": cfg["student"],
        "label_set": cfg["data"]["label_set"],
        "class_settings": [ls.name for ls in class_settings(cfg)],
        "prompt_template": cfg["lift"]["prompt_template"],
        "methods": list(methods),
        "gpu": cfg.get("gpu"),  # CUDA precision settings (they change CUDA predictions only)
    }
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def pred_file(pred_dir: Path, scene_name: str, method: str, setting: str, primary: str) -> Path:
    """`<scene>.<method>.npy` for the primary class setting, `<scene>.<method>.<setting>.npy` for others."""
    return Path(pred_dir) / (
        f"{scene_name}.{method}.npy" if setting == primary else f"{scene_name}.{method}.{setting}.npy"
    )


def _finished(pred_dir: Path, scene, key: str, methods, settings: list[str]) -> tuple[dict, int] | None:
    """(predictions {method: {setting: labels}}, skipped frames) of a scene an earlier run finished
    with the same key, else None.

    The record `<scene>.done.json` is written after the scene's prediction files, so a run killed
    part-way leaves either a complete, matching scene or one that is predicted again."""
    rec = pred_dir / f"{scene.name}.done.json"
    try:
        done = json.loads(rec.read_text())
        if done.get("key") != key:
            return None
        preds = {
            m: {
                s: np.load(pred_file(pred_dir, scene.name, m, s, settings[0]), allow_pickle=False).astype(np.int64)
                for s in settings
            }
            for m in methods
        }
    except (OSError, ValueError):
        return None
    if any(p.shape != (scene.n_points,) for by_set in preds.values() for p in by_set.values()):
        return None
    return preds, int(done.get("skipped_frames", 0))


def _score(conf: np.ndarray, label_set, cfg: dict) -> dict:
    return metrics(conf, label_set.names, exclude=tuple(cfg["eval"]["exclude_from_f"]))


def evaluate_scenes(
    cfg: dict,
    scene_paths: list[Path],
    model,
    out_dir: Path,
    cache_dir: Path,
    device: str = "cpu",
    methods=METHODS,
    vlm=None,
    reuse: bool = True,
) -> dict:
    """Predict and score every scene; write per-scene predictions, metrics JSON and tables.

    Scenes whose predictions an earlier (e.g. killed) run already wrote for the same checkpoint,
    settings and scene content (`pred/<scene>.done.json`) are read back instead of predicted again
    (`reuse=False`: predict every scene, e.g. to time it; report["reused_scenes"] counts them).
    Returns {"metrics": {method: metrics dict}, "per_scene": {...}, "label_set", "class_setting",
    "also": {label set: {"class_setting", "metrics", "per_scene"}} (eval.also_label_sets), "vlm",
    "skipped_frames": {scene: frames left out as unusable}, "timings", "timing" (seconds per stage
    of each predicted scene and their sums), "precision" (TF32 and the student's autocast precision
    in use)}; the top-level metrics are those of the primary class setting, data.label_set.
    """
    out_dir = Path(out_dir)
    sets = class_settings(cfg)
    names = [ls.name for ls in sets]
    label_set = sets[0]
    device = torch.device(device)
    precision = {"tf32": set_tf32(cfg, device), "student_precision": student_precision(cfg, device)}
    vlm = vlm or build_vlm(cfg, device=str(device))
    prompts, columns = prompt_columns(sets, cfg["lift"]["prompt_template"])
    text_emb = l2_normalize(vlm.encode_text(prompts).float())  # to `device` in predict_scene
    conf = {s.name: {m: np.zeros((s.n_classes, s.n_classes + 1), dtype=np.int64) for m in methods} for s in sets}
    per_scene: dict[str, dict[str, dict]] = {s: {} for s in names}
    skipped: dict[str, int] = {}  # frames left out per scene (reader and lifting)
    timings = {"lift_s": 0.0, "predict_s": 0.0}
    stage_times: dict[str, dict[str, float]] = {}  # scene -> stage -> seconds (report["timing"])
    digest = "none"
    if model is not None:
        model.eval().to(device)
        digest = weights_digest(model)
    pred_dir = out_dir / "pred"
    n_reused = 0
    for path in tqdm(scene_paths, desc="evaluate", unit="scene"):
        times = StageTimes(device)
        with times.stage("load"):
            scene = load_scene_for(path, label_set, frame_step=cfg["data"]["frame_step"])
        key = prediction_key(scene, cfg, digest, methods)
        earlier = _finished(pred_dir, scene, key, methods, names) if reuse else None
        if earlier is not None:
            preds, skipped[scene.name] = earlier
            n_reused += 1
            log.info("%s: predictions of an earlier run with the same checkpoint and settings reused", scene.name)
        else:
            t0 = time.perf_counter()
            with times.stage("lift"):
                lifted = cached_lift(scene, cfg, vlm, cache_dir, device=device)
            t1 = time.perf_counter()
            preds = predict_scene(scene, lifted, model, text_emb, cfg, device, methods, columns, times)
            t2 = time.perf_counter()
            timings["lift_s"] += t1 - t0
            timings["predict_s"] += t2 - t1
            skipped[scene.name] = int(lifted.info.get("skipped_frames", scene.meta.get("skipped_frames", 0)))
            for m, by_set in preds.items():
                for s, pred in by_set.items():
                    save_npy(pred_file(pred_dir, scene.name, m, s, names[0]), pred.astype(np.int16))
            write_json(pred_dir / f"{scene.name}.done.json", {"key": key, "skipped_frames": skipped[scene.name]})
            stage_times[scene.name] = times.rounded()
            log.info("%s: stage times: %s", scene.name, times.line())
        if scene.labels is None:
            log.warning("%s has no labels: predictions written, not scored", path)
            continue
        for ls in sets:
            gt = scene_ground_truth(scene, ls)
            per_scene[ls.name][scene.name] = {}
            for m in methods:
                c = confusion(preds[m][ls.name], gt, ls.n_classes)
                conf[ls.name][m] += c
                miou = metrics(c, ls.names)["mIoU"]
                per_scene[ls.name][scene.name][m] = None if miou is None else round(miou, 2)
        log.info(
            "%s: %s",
            scene.name,
            ", ".join(f"{m} mIoU {_fmt(v, 1)}" for m, v in per_scene[names[0]][scene.name].items()),
        )
    results = {ls.name: {m: _score(conf[ls.name][m], ls, cfg) for m in methods} for ls in sets}
    report = {
        "metrics": results[names[0]],
        "per_scene": per_scene[names[0]],
        "label_set": label_set.name,
        "class_setting": describe_setting(label_set.name),
        "also": {
            s: {"class_setting": describe_setting(s), "metrics": results[s], "per_scene": per_scene[s]}
            for s in names[1:]
        },
        "vlm": vlm.describe(),
        "vlm_simulated": bool(vlm.simulated),
        "scenes": [Path(p).name for p in scene_paths],
        "skipped_frames": skipped,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "timing": timing_report(stage_times),  # seconds per stage of each predicted scene (not reused ones)
        "precision": precision,  # TF32 and the student's autocast precision in use (CUDA only; fp32 on the CPU)
        "reused_scenes": n_reused,
        "device": str(device),
    }
    write_json(out_dir / "metrics.json", report)
    write_text(
        out_dir / "per_class.txt",
        "\n\n".join(f"[{m}] {describe_setting(s)}\n{format_table(results[s][m])}" for s in names for m in methods)
        + "\n",
    )
    return report


def _fmt(v, width: int) -> str:
    """A percentage, or n/a when no class qualified for the mean."""
    return f"{'n/a':>{width}}" if v is None else f"{v:{width}.1f}"


def summary_table(results: dict[str, dict], title: str | None = None) -> str:
    """One row per method: mIoU, mAcc, f-mIoU, f-mAcc in percent (under `title`, when given)."""
    lines = [] if title is None else [title]
    lines.append(f"{'method':<10} {'mIoU':>6} {'mAcc':>6} {'f-mIoU':>7} {'f-mAcc':>7}")
    for m, r in results.items():
        lines.append(f"{m:<10} {_fmt(r['mIoU'], 6)} {_fmt(r['mAcc'], 6)} {_fmt(r['f_mIoU'], 7)} {_fmt(r['f_mAcc'], 7)}")
    return "\n".join(lines)
