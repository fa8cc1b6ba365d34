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
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from geopurify.data.fingerprint import scene_fingerprint
from geopurify.data.labels import describe_setting, get_label_set
from geopurify.data.prefetch import prefetched, preload_frames
from geopurify.data.readers import load_scene_for
from geopurify.device import set_tf32, student_precision, to_device
from geopurify.errors import InputError
from geopurify.evaluate.metrics import confusion, format_table, metrics
from geopurify.evaluate.timing import StageTimes, timing_report
from geopurify.io import save_npy, write_json, write_text
from geopurify.lift.cache import cached_lift, lift_files_fingerprint, lift_settings
from geopurify.ops.scores import l2_normalize, text_scores
from geopurify.purify.infer import knn_mean_scene, purify_scene
from geopurify.ranks import Dist, gather_objects, shard
from geopurify.schema import check
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


def _finished(pred_dir: Path, scene, key: str, methods, settings: list[str]) -> dict | None:
    """The record (`_write_scene`) of a scene an earlier run finished with the same key and whose
    prediction files are all there with the scene's point count, else None.

    The record `<scene>.done.json` is written after the scene's prediction files, so a run killed
    part-way leaves either a complete, matching scene or one that is predicted again."""
    rec = pred_dir / f"{scene.name}.done.json"
    try:
        done = json.loads(rec.read_text())
        if done.get("key") != key or "confusion" not in done:  # another run's, or of a version without counts
            return None
        for m in methods:
            for s in settings:
                shape = np.load(pred_file(pred_dir, scene.name, m, s, settings[0]), mmap_mode="r").shape
                if shape != (scene.n_points,):
                    return None
    except (OSError, ValueError):
        return None
    return done


def _sparse(conf: np.ndarray) -> list[list[int]]:
    """The non-zero entries of a confusion matrix as [row, column, count] (compact on disk)."""
    rows, cols = np.nonzero(conf)
    return [[int(r), int(c), int(conf[r, c])] for r, c in zip(rows, cols)]


def _dense(entries: list[list[int]], n_classes: int) -> np.ndarray:
    conf = np.zeros((n_classes, n_classes + 1), dtype=np.int64)
    for r, c, n in entries:
        conf[r, c] = n
    return conf


def _write_scene(pred_dir: Path, scene, key: str, preds: dict, sets, skipped: int) -> dict:
    """Write a scene's predictions, then its record `<scene>.done.json`: the key, the frames left
    out, and per class setting and method the scene's confusion counts (None when it has no labels).
    The record is the scene's whole contribution to the report, so the report can be built from
    the records alone, by whichever process merges them."""
    names = [ls.name for ls in sets]
    for m, by_set in preds.items():
        for s, pred in by_set.items():
            save_npy(pred_file(pred_dir, scene.name, m, s, names[0]), pred.astype(np.int16))
    confusion_counts = None
    if scene.labels is not None:
        confusion_counts = {}
        for ls in sets:
            gt = scene_ground_truth(scene, ls)
            confusion_counts[ls.name] = {m: _sparse(confusion(preds[m][ls.name], gt, ls.n_classes)) for m in preds}
    record = {"key": key, "skipped_frames": skipped, "confusion": confusion_counts}
    write_json(pred_dir / f"{scene.name}.done.json", record)
    return record


def _score(conf: np.ndarray, label_set, cfg: dict) -> dict:
    return metrics(conf, label_set.names, exclude=tuple(cfg["eval"]["exclude_from_f"]))


def _scene_miou(record: dict, label_set, method: str) -> float | None:
    miou = metrics(_dense(record["confusion"][label_set.name][method], label_set.n_classes), label_set.names)["mIoU"]
    return None if miou is None else round(miou, 2)


@dataclass
class _Job:
    """What a loader needs to know to get a scene ready (picklable, for DataLoader workers)."""

    cfg: dict
    label_set: str
    digest: str
    methods: tuple
    settings: list
    pred_dir: Path
    cache_dir: Path
    reuse: bool
    device: str  # where a lifting would run: a cache read in a worker computes nothing there


@dataclass
class _Loaded:
    """A scene ready for the main process: its key, the record of an earlier run when reusable,
    else the lifted features when the lift cache had them (None: lift in the main process)."""

    index: int
    scene: object
    key: str
    record: dict | None
    lifted: object | None
    load_s: float  # seconds this took in the loader (stage "load" of the scene's stage times)


class _CacheMiss(Exception):
    pass


def _no_vlm():
    raise _CacheMiss  # cached_lift asks for the VLM only when it must compute


def _load(job: _Job, item: tuple[int, Path]) -> _Loaded:
    """Scene `item` = (index, path) read and made ready (in a loader worker): points and labels, the
    prediction key (file fingerprints), an earlier run's record; else the normals (PCA when the
    scene has none of its own), the lifted features from the cache or, on a miss, the frames the
    lifting reads, decoded (up to eval.prefetch_mb)."""
    t0 = time.perf_counter()
    index, path = item
    cfg = job.cfg
    scene = load_scene_for(path, get_label_set(job.label_set), frame_step=cfg["data"]["frame_step"])
    key = prediction_key(scene, cfg, job.digest, job.methods)
    record = _finished(job.pred_dir, scene, key, job.methods, job.settings) if job.reuse else None
    lifted = None
    if record is None:
        if "purified" in job.methods:
            scene.normals  # noqa: B018 - computed here, off the main process
        try:
            lifted = cached_lift(scene, cfg, _no_vlm, job.cache_dir, device=job.device)
        except _CacheMiss:
            preload_frames(scene, cfg["lift"]["vlm"], cfg["eval"]["prefetch_mb"])
    return _Loaded(index, scene, key, record, lifted, time.perf_counter() - t0)


# facts of one run: in run.json, not in metrics.json
RUN_KEYS = ("timings", "reused_scenes", "timing", "world", "per_rank")


def metrics_report(report: dict) -> dict:
    """What metrics.json holds: the report without the facts of the run (RUN_KEYS), so it depends
    only on the inputs, the checkpoint and the settings, not on how many processes ran or resumed."""
    return {k: v for k, v in report.items() if k not in RUN_KEYS}


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
    dist: Dist | None = None,
) -> dict | None:
    """Predict and score every scene; write per-scene predictions, metrics JSON and tables.

    Sharded over torchrun's processes (`dist`, geopurify.ranks): rank r predicts scenes r, r + W,
    ... and writes, per scene, its predictions and then its record `pred/<scene>.done.json` (the
    confusion counts); rank 0 then merges the records in scene order into metrics.json, which is
    therefore byte-identical for any number of processes (a single process takes the same path).
    Scenes are loaded ahead by `eval.workers` DataLoader workers (geopurify.data.prefetch).
    Scenes whose record an earlier (e.g. killed) run already wrote for the same checkpoint,
    settings and scene content are reused instead of predicted again (`reuse=False`: predict
    every scene, e.g. to time it). run.json holds the facts of the run (timings summed over
    ranks, reused_scenes, world, per rank its scenes, reused scenes and timings, and `timing`:
    seconds per stage of each predicted scene and their sums); metrics.json holds `precision` (TF32
    and the student's autocast precision in use).
    Returns, on rank 0 (None on the others), {"metrics": {method: metrics dict}, "per_scene": {...},
    "label_set", "class_setting", "also": {label set: {"class_setting", "metrics", "per_scene"}}
    (eval.also_label_sets), "vlm", "skipped_frames": {scene: frames left out as unusable}, ...,
    and RUN_KEYS}; the top-level metrics are those of the primary class setting, data.label_set.
    """
    check(cfg, "eval.workers", "eval.prefetch_mb")
    dist = dist or Dist()
    out_dir = Path(out_dir)
    sets = class_settings(cfg)
    names = [ls.name for ls in sets]
    label_set = sets[0]
    device = torch.device(device)
    precision = {"tf32": set_tf32(cfg, device), "student_precision": student_precision(cfg, device)}
    vlm = vlm or build_vlm(cfg, device=str(device))
    prompts, columns = prompt_columns(sets, cfg["lift"]["prompt_template"])
    text_emb = l2_normalize(vlm.encode_text(prompts).float())  # to `device` in predict_scene
    timings = {"lift_s": 0.0, "predict_s": 0.0}
    stage_times: dict[str, dict[str, float]] = {}  # scene -> stage -> seconds (run.json's "timing")
    digest = "none"
    if model is not None:
        model.eval().to(device)
        digest = weights_digest(model)
    pred_dir = out_dir / "pred"
    job = _Job(cfg, label_set.name, digest, tuple(methods), names, pred_dir, Path(cache_dir), reuse, str(device))
    mine = shard(list(enumerate(scene_paths)), dist)
    scene_names: dict[int, str] = {}
    n_reused = 0
    desc = "evaluate" if dist.world == 1 else f"evaluate (rank {dist.rank}/{dist.world})"
    for ready in prefetched(mine, partial(_load, job), cfg["eval"]["workers"], desc=desc):
        scene, record = ready.scene, ready.record
        times = StageTimes(device)
        times.seconds["load"] = ready.load_s  # in a loader worker: overlaps the compute when prefetched
        scene_names[ready.index] = scene.name
        if record is not None:
            n_reused += 1
            log.info("%s: predictions of an earlier run with the same checkpoint and settings reused", scene.name)
        else:
            t0 = time.perf_counter()
            with times.stage("lift"):
                lifted = ready.lifted or cached_lift(scene, cfg, vlm, cache_dir, device=device)
            t1 = time.perf_counter()
            preds = predict_scene(scene, lifted, model, text_emb, cfg, device, methods, columns, times)
            timings["lift_s"] += t1 - t0
            timings["predict_s"] += time.perf_counter() - t1
            skipped = int(lifted.info.get("skipped_frames", scene.meta.get("skipped_frames", 0)))
            record = _write_scene(pred_dir, scene, ready.key, preds, sets, skipped)
            stage_times[scene.name] = times.rounded()
            log.info("%s: stage times: %s", scene.name, times.line())
        if record["confusion"] is None:
            log.warning("%s has no labels: predictions written, not scored", scene.path or scene.name)
            continue
        log.info(
            "%s: %s", scene.name, ", ".join(f"{m} mIoU {_fmt(_scene_miou(record, label_set, m), 1)}" for m in methods)
        )
    ranks = gather_objects(
        {"scenes": scene_names, "timings": timings, "reused": n_reused, "stages": stage_times}, dist
    )  # waits for all
    if not dist.main:
        return None
    for r in ranks:
        scene_names.update(r["scenes"])
    records = [(n, json.loads((pred_dir / f"{n}.done.json").read_text())) for _, n in sorted(scene_names.items())]
    report, results = _merge(records, sets, methods, cfg)
    report.update(
        vlm=vlm.describe(),
        vlm_simulated=bool(vlm.simulated),
        scenes=[Path(p).name for p in scene_paths],
        skipped_frames={n: int(rec["skipped_frames"]) for n, rec in records},
        device=str(device),
        precision=precision,  # TF32 and the student's autocast precision in use (CUDA only; fp32 on the CPU)
    )
    run_facts = {
        "timings": {k: round(sum(r["timings"][k] for r in ranks), 2) for k in timings},
        "reused_scenes": sum(r["reused"] for r in ranks),
        "timing": timing_report({n: t for r in ranks for n, t in r["stages"].items()}),  # predicted scenes only
        "world": dist.world,
        "per_rank": [
            {"scenes": len(r["scenes"]), "reused": r["reused"], **{k: round(v, 2) for k, v in r["timings"].items()}}
            for r in ranks
        ],
    }
    write_json(out_dir / "metrics.json", report)
    write_json(out_dir / "run.json", run_facts)
    write_text(
        out_dir / "per_class.txt",
        "\n\n".join(f"[{m}] {describe_setting(s)}\n{format_table(results[s][m])}" for s in names for m in methods)
        + "\n",
    )
    return {**report, **run_facts}


def _merge(records: list[tuple[str, dict]], sets, methods, cfg: dict) -> tuple[dict, dict]:
    """The report's scores from the scenes' records (name, record), in scene order: confusion
    counts summed per class setting and method, and each labelled scene's own mIoU; also the
    metrics by setting and method."""
    conf = {s.name: {m: np.zeros((s.n_classes, s.n_classes + 1), dtype=np.int64) for m in methods} for s in sets}
    per_scene: dict[str, dict[str, dict]] = {s.name: {} for s in sets}
    for name, rec in records:
        if rec["confusion"] is None:
            continue
        for ls in sets:
            per_scene[ls.name][name] = {}
            for m in methods:
                conf[ls.name][m] += _dense(rec["confusion"][ls.name][m], ls.n_classes)
                per_scene[ls.name][name][m] = _scene_miou(rec, ls, m)
    results = {ls.name: {m: _score(conf[ls.name][m], ls, cfg) for m in methods} for ls in sets}
    primary = sets[0].name
    report = {
        "metrics": results[primary],
        "per_scene": per_scene[primary],
        "label_set": primary,
        "class_setting": describe_setting(primary),
        "also": {
            s.name: {
                "class_setting": describe_setting(s.name),
                "metrics": results[s.name],
                "per_scene": per_scene[s.name],
            }
            for s in sets[1:]
        },
    }
    return report, results


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
