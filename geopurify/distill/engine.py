"""Distillation training: the student learns the teacher's point affinities (METHOD.md section 3).

`train(cfg, exp_dir)` runs the epochs: one iteration = one scene (geopurify.distill.scenes: its
lifted features, teacher embeddings and voxels; geopurify.distill.step: pairs, InfoNCE, AdamW), the
learning-rate schedule and the scene order of geopurify.distill.schedule, a single process or a
torchrun world (geopurify.distill.processes). It writes epoch and `last.pth` checkpoints (resumable
to the identical run), `train_log.jsonl`, and the final `model/geopurify.pth`
(geopurify.student.checkpoint).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from geopurify.data.splits import resolve_scenes
from geopurify.device import resolve_device, set_tf32
from geopurify.distill.processes import (
    average_buffers,
    barrier,
    finish_distributed,
    gather_digests,
    init_distributed,
    mean_over_ranks,
)
from geopurify.distill.scenes import SceneStore
from geopurify.distill.schedule import (
    LRSchedule,
    build_optimizer,
    epoch_order,
    lr_factor,
    rng_state,
    seed_everything,
    set_rng_state,
    slot_generator,
)
from geopurify.distill.step import recalibrate_batchnorm, train_step
from geopurify.errors import InputError
from geopurify.io import write_text
from geopurify.schema import check
from geopurify.student.checkpoint import load_checkpoint, save_checkpoint, state_dict_mismatch
from geopurify.student.network import build_student
from geopurify.teacher import build_teacher
from geopurify.vlm import build_vlm

log = logging.getLogger(__name__)

MODEL_DIR = "model"
FINAL = "geopurify.pth"
LAST = "last.pth"
LOG_FILE = "train_log.jsonl"


def _meta(cfg: dict, vlm_info: dict, in_channels: int, teacher, epoch: int, model, device: str) -> dict:
    """What a checkpoint says about itself; the student's width / blocks / out_dim are read from the
    module as built (the `paper` preset ignores the config's width and blocks)."""
    s = cfg["student"]
    return {
        "teacher": {"name": teacher.name, "stand_in": bool(getattr(teacher, "stand_in", False))},
        "vlm": {
            "name": vlm_info.get("vlm", cfg["lift"]["vlm"]),
            "simulated": bool(vlm_info.get("simulated")),
            "dim": in_channels - 6,
            "fusion": vlm_info.get("fusion", cfg["lift"]["fusion"]),
        },
        "student": {"preset": s["preset"], **model.architecture(), "voxel_size": s["voxel_size"]},
        "epoch": int(epoch),
        "device": str(device),
    }


def _append_log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """On resume: drop log records of iterations after the checkpoint (they will be redone)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("step", 0) <= step:
            keep.append(line)
    write_text(path, "".join(k + "\n" for k in keep))


def _check_resume_config(ckpt: dict, cfg: dict, in_channels: int, path: Path) -> None:
    old = ckpt["config"]
    if old.get("student") != cfg["student"] or int(ckpt["in_channels"]) != in_channels:
        raise InputError(
            path,
            f"cannot resume: checkpoint student {old.get('student')} with {ckpt['in_channels']} "
            f"input channels, config asks {cfg['student']} with {in_channels}",
        )
    changed = [k for k in cfg["distill"] if old.get("distill", {}).get(k) != cfg["distill"][k]]
    if changed:
        log.warning(
            "resuming with changed distill settings %s: the result will differ from an uninterrupted run",
            ", ".join(changed),
        )


def check_settings(cfg: dict) -> None:
    """InputError naming the key for a training setting out of its range (geopurify.schema); without
    it these crash mid-run or train silently on NaN / empty losses."""
    check(cfg, "distill", "student.voxel_size")


def train(cfg: dict, exp_dir: str | Path, resume: bool = False, device: str | torch.device | None = "auto") -> Path:
    """Train the student on the config's training scenes; returns <exp_dir>/model/geopurify.pth.

    With `resume`, continue from <exp_dir>/model/last.pth when it exists (else start fresh).
    `device`: as `--device` (geopurify.device.resolve_device; None = auto); under torchrun with
    CUDA each process takes the GPU of its LOCAL_RANK.
    """
    exp_dir = Path(exp_dir)
    device = str(resolve_device(device))
    dist = init_distributed(device)
    if device.startswith("cuda") and dist.world > 1:
        device = f"cuda:{dist.local_rank}"
    if set_tf32(cfg, device):
        log.info("TF32 matmuls and cuDNN convolutions allowed (gpu.tf32)")
    d = cfg["distill"]
    seed = int(d["seed"])
    model_dir = exp_dir / MODEL_DIR
    log_path = exp_dir / LOG_FILE
    cache_dir = Path(cfg["data"]["cache_dir"]) if cfg["data"]["cache_dir"] else exp_dir / "cache"
    check_settings(cfg)

    # scenes (rank 0 first: it may generate procedural rooms) and the frozen feature sources
    if dist.main:
        scenes = resolve_scenes(cfg, "train")
    barrier(dist)
    if not dist.main:
        scenes = resolve_scenes(cfg, "train")
    vlm = functools.cache(lambda: build_vlm(cfg, device=device))  # loaded only if a scene's features are not cached
    teacher = build_teacher(cfg, device=device)
    log.info(
        "distill: %d training scenes, VLM %s, teacher %s, %d process(es) on %s",
        len(scenes),
        cfg["lift"]["vlm"],
        teacher.describe() if hasattr(teacher, "describe") else teacher.name,
        dist.world,
        device,
    )

    # fill the caches once (each rank its share), so iterations only read them
    store = SceneStore(cfg, vlm, teacher, cache_dir, device, float(d["memory_cache_gb"]))
    for p in tqdm(scenes[dist.rank :: dist.world], desc="features", unit="scene", disable=not dist.main):
        store.get(p)
    barrier(dist)
    if store.in_channels is None:  # this rank prepared nothing (more ranks than scenes)
        store.get(scenes[0])
    in_channels, vlm_info = store.in_channels, store.vlm_info
    log.info(
        "lifted features: %s%s, %s fusion, %d-d",
        vlm_info.get("vlm"),
        " (SIMULATED stand-in)" if vlm_info.get("simulated") else "",
        vlm_info.get("fusion"),
        in_channels - 6,
    )

    seed_everything(seed)
    model = build_student(cfg["student"], in_channels).to(device)
    iters = len(epoch_order(len(scenes), seed, 0, dist.world)) // dist.world
    opt, sched = build_optimizer(model, cfg, iters)
    total, warmup = sched.lr_lambdas[0].total_steps, sched.lr_lambdas[0].warmup_steps
    start_epoch = step = 0
    last = model_dir / LAST
    if resume and last.exists():
        ckpt = load_checkpoint(last)
        _check_resume_config(ckpt, cfg, in_channels, last)
        problem = state_dict_mismatch(model.state_dict(), ckpt["model"])
        if problem:
            raise InputError(last, f"cannot resume: weights do not match the configured student: {problem}")
        model.load_state_dict(ckpt["model"])
        try:
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise InputError(last, f"cannot resume: optimizer/scheduler state unusable ({type(e).__name__})") from None
        sched.lr_lambdas = [LRSchedule(total, warmup)] * len(opt.param_groups)
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        set_rng_state(ckpt["rng"])
        if dist.main:
            _truncate_log(log_path, step)
        log.info("resumed from %s at epoch %d (step %d)", last, start_epoch, step)
    elif resume:
        log.info("no %s: starting from scratch", last)
    net = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(
            model,
            device_ids=[dist.local_rank] if device.startswith("cuda") else None,
            broadcast_buffers=False,
            find_unused_parameters=False,
        )

    if dist.main:
        exp_dir.mkdir(parents=True, exist_ok=True)
        if start_epoch == 0:
            write_text(log_path, "")
        log.info(
            "student: %s; %d epochs x %d iterations/rank, lr %.2g (warm-up %d it, cosine), groups %s",
            model.describe() if hasattr(model, "describe") else type(model).__name__,
            d["epochs"],
            iters,
            d["lr"],
            warmup,
            {g["name"]: g["lr_mult"] for g in opt.param_groups},
        )
    bar = tqdm(total=total, initial=step, desc="train", unit="it", disable=not dist.main)
    for epoch in range(start_epoch, int(d["epochs"])):
        model.train()
        order = epoch_order(len(scenes), seed, epoch, dist.world)
        t_epoch, losses = time.perf_counter(), []
        for it in range(iters):
            slot = it * dist.world + dist.rank
            t0 = time.perf_counter()
            batch = store.get(scenes[order[slot]])
            lr_now = float(d["lr"]) * lr_factor(step, total, warmup)
            loss, pairs = train_step(net, opt, sched, batch, cfg, slot_generator(seed, epoch, slot))
            step += 1
            loss_all = float(mean_over_ranks(loss.detach(), dist))
            losses.append(loss_all)
            if dist.main:
                _append_log(
                    log_path,
                    {
                        "event": "iter",
                        "epoch": epoch + 1,
                        "iter": it + 1,
                        "step": step,
                        "scene": batch.name,
                        "loss": round(loss_all, 6),
                        "lr": lr_now,
                        "n_points": int(batch.xyz.shape[0]),
                        "n_voxels": int(batch.coords.shape[0]),
                        "n_anchors": len(pairs),
                        "s": round(time.perf_counter() - t0, 4),
                    },
                )
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_all:.4f}", lr=f"{lr_now:.2e}")
            bar.update(1)
        # exact BatchNorm statistics of this epoch's final weights over this rank's scenes, then
        # averaged over ranks: what purification (eval mode) will use
        recalibrate_batchnorm(model, (store.get(scenes[order[it * dist.world + dist.rank]]) for it in range(iters)))
        average_buffers(model, dist)
        dt = time.perf_counter() - t_epoch
        mean_loss = float(np.mean(losses))
        if dist.main:
            log.info(
                "epoch %d/%d: loss %.4f, lr %.3g, %.2f it/s", epoch + 1, d["epochs"], mean_loss, lr_now, iters / dt
            )
            _append_log(
                log_path,
                {
                    "event": "epoch",
                    "epoch": epoch + 1,
                    "step": step,
                    "loss": round(mean_loss, 6),
                    "it_per_s": round(iters / dt, 4),
                    "s": round(dt, 3),
                },
            )
            if (epoch + 1) % int(d["ckpt_every"]) == 0 or epoch + 1 == int(d["epochs"]):
                state = {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "epoch": epoch + 1,
                    "step": step,
                    "config": cfg,
                    "rng": {
                        **rng_state(),
                        "sampling": {
                            "seed": seed,
                            "stream": "torch.Generator seeded by SeedSequence([seed, epoch, slot]) per scene-slot",
                        },
                    },
                    "in_channels": in_channels,
                    "meta": _meta(cfg, vlm_info, in_channels, teacher, epoch + 1, model, device),
                }
                save_checkpoint(last, state)  # first: a kill between the two still resumes from this epoch
                save_checkpoint(model_dir / f"epoch_{epoch + 1:03d}.pth", state)
        barrier(dist)
    bar.close()

    digests = gather_digests(model, dist)
    final = model_dir / FINAL
    if dist.main:
        epochs_done = max(start_epoch, int(d["epochs"]))
        save_checkpoint(
            final,
            {
                "model": model.state_dict(),
                "epoch": epochs_done,
                "step": step,
                "config": cfg,
                "in_channels": in_channels,
                "meta": _meta(cfg, vlm_info, in_channels, teacher, epochs_done, model, device),
            },
        )
        _append_log(
            log_path,
            {
                "event": "done",
                "step": step,
                "epochs": epochs_done,
                "weights_digest": digests,
                "ranks_agree": len(set(digests)) == 1,
                "world_size": dist.world,
                "device": device,
                "teacher": teacher.name,
                "teacher_stand_in": bool(getattr(teacher, "stand_in", False)),
                "vlm": vlm_info.get("vlm"),
                "vlm_simulated": bool(vlm_info.get("simulated")),
            },
        )
        log.info(
            "wrote %s (weights digest %s%s)",
            final,
            digests[0],
            "" if len(set(digests)) == 1 else f"; RANKS DISAGREE: {digests}",
        )
    # leave the process group before exit, the DDP wrapper (its reducer holds the group) first: left
    # to interpreter shutdown, their teardown order is undefined, and a rank once aborted there
    # ("terminate called without an active exception", SIGABRT, after the final checkpoint)
    del net
    finish_distributed(dist)
    return final
