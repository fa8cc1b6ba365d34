"""Distillation training: the student learns the teacher's point affinities (METHOD.md section 3).

One iteration = one scene: load it, read (or compute and cache) its lifted features and teacher
embeddings, voxelise, run the student on the voxels (a point's embedding is its voxel's),
sample anchors / positives / negatives from the teacher, InfoNCE, AdamW step. No labels are read.
`distill.student_input` says which voxels the student sees: `scene` (ours) every voxel of the scene,
as at inference, so a training embedding is the one purification will use; `sampled` (the reference
code) only the voxels holding a sampled point, a sparse sub-tensor whose convolutions see fewer
neighbours (the reference averages only the sampled points of each voxel; we feed those voxels'
means over all their points, the student input purification uses).

Schedule: linear warm-up over `warmup_epochs`, then cosine to 0, stepped per iteration; per-group
learning-rate multipliers from `distill.lr_mult` (parameter-name prefix -> multiplier).

Reproducibility: scene order per epoch comes from np.random.default_rng([seed, epoch]) and the
pair sampling of each scene-slot from its own torch.Generator seeded by (seed, epoch, slot), so
a run resumed from any epoch checkpoint takes exactly the steps of an uninterrupted one and a
distributed run samples the same pairs as a single process would. The global torch / numpy /
python RNGs are seeded too (model initialisation) and saved in checkpoints.

Distributed (torchrun): each epoch's scene order is padded to a multiple of the world size and
rank r takes slots r, r + W, ...: disjoint slices with the same number of iterations per rank.
Gradients are averaged by DistributedDataParallel (gloo on CPU, nccl on CUDA); BatchNorm running
statistics are averaged over ranks at the end of every epoch; rank 0 writes checkpoints and logs.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from geopurify.distill.checkpoint import load_checkpoint, save_checkpoint, state_dict_mismatch
from geopurify.distill.loss import info_nce
from geopurify.distill.sampling import Pairs, check_sizes, n_anchors_for, sample_pairs
from geopurify.errors import InputError
from geopurify.io import write_text
from geopurify.schema import check

log = logging.getLogger(__name__)

MODEL_DIR = "model"
FINAL = "geopurify.pth"
LAST = "last.pth"
LOG_FILE = "train_log.jsonl"


# ----------------------------------------------------------------------------- pure helpers

def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier for optimiser step `step` (0-based): linear warm-up
    (step + 1) / warmup over the first `warmup_steps`, then cosine from 1 down towards 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))


class LRSchedule:
    """`lr_factor` as a picklable callable for LambdaLR (saved state holds only numbers)."""

    def __init__(self, total_steps: int, warmup_steps: int):
        self.total_steps, self.warmup_steps = total_steps, warmup_steps

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.warmup_steps)


def param_groups(model: torch.nn.Module, lr: float, lr_mult: dict[str, float]) -> list[dict]:
    """AdamW parameter groups: each parameter takes the multiplier of the longest prefix in
    `lr_mult` its name starts with (1.0 when none). A prefix matching nothing -> InputError."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for prefix in lr_mult:
        if not any(n.startswith(prefix) for n in names):
            tops = sorted({n.split(".")[0] for n in names})
            raise InputError(None, f"config key 'distill.lr_mult': prefix '{prefix}' matches no student "
                                   f"parameter (names start with {', '.join(tops)})")
    groups: dict[str, dict] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        match = max((k for k in lr_mult if n.startswith(k)), key=len, default=None)
        g = groups.setdefault(match or "", {"params": [], "lr": lr * float(lr_mult.get(match, 1.0)),
                                            "name": match or "default", "lr_mult": float(lr_mult.get(match, 1.0))})
        g["params"].append(p)
    return list(groups.values())


def build_optimizer(model: torch.nn.Module, cfg: dict, iters_per_epoch: int):
    """AdamW over `param_groups` and its per-iteration LambdaLR (warm-up, then cosine)."""
    d = cfg["distill"]
    total, warmup = int(d["epochs"]) * iters_per_epoch, int(d["warmup_epochs"]) * iters_per_epoch
    opt = torch.optim.AdamW(param_groups(model, d["lr"], d["lr_mult"]), lr=d["lr"], weight_decay=d["weight_decay"])
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, LRSchedule(total, warmup))


def epoch_order(n_scenes: int, seed: int, epoch: int, world: int = 1) -> np.ndarray:
    """Scene indices for one epoch, shuffled from (seed, epoch) and padded by wrapping to a
    multiple of `world`. Slot i goes to rank i % world."""
    perm = np.random.default_rng([seed, epoch]).permutation(n_scenes)
    pad = (-n_scenes) % world
    return np.concatenate([perm, np.resize(perm, pad)]) if pad else perm


def slot_generator(seed: int, epoch: int, slot: int) -> torch.Generator:
    """The pair-sampling generator of one scene-slot of one epoch (independent of rank/world)."""
    s = np.random.SeedSequence([seed, epoch, slot]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(s[0] >> np.uint64(1)))


def rng_state(generator: torch.Generator | None = None) -> dict:
    """Global RNG states (torch, numpy, python) and, optionally, a generator's, in plain types."""
    st = np.random.get_state()
    out = {"torch": torch.get_rng_state(), "numpy": {"key": torch.from_numpy(st[1].astype(np.int64)),
                                                      "pos": int(st[2]), "has_gauss": int(st[3]), "gauss": float(st[4])},
           "python": random.getstate()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        out["generator"] = generator.get_state()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(_tuplify(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def seed_everything(seed: int) -> None:
    """Seed the global torch / numpy / python RNGs (model initialisation and any library code)."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)


# ----------------------------------------------------------------------------- distributed

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as tdist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not tdist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(local)
        tdist.init_process_group(backend=backend)
        log.info("rank %d/%d joined the %s process group", rank, world, backend)
    return Dist(rank, world, local)


def _barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as tdist

        tdist.barrier()


def _mean_over_ranks(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        import torch.distributed as tdist

        x = x.clone()
        tdist.all_reduce(x)
        x /= d.world
    return x


def average_buffers(model: torch.nn.Module, d: Dist) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks, in place."""
    if d.world <= 1:
        return
    import torch.distributed as tdist

    for b in model.buffers():
        if b.is_floating_point():
            tdist.all_reduce(b.data)
            b.data /= d.world


def weights_digest(model: torch.nn.Module) -> str:
    """Hex digest of every parameter and buffer (bitwise): equal digests = identical weights."""
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- per-scene step

@dataclass
class SceneBatch:
    """What one iteration needs from a scene, on the training device."""

    name: str
    feats: torch.Tensor  # (V, C + 6) student input
    coords: torch.Tensor  # (V, 3) int32 voxel coordinates
    inverse: torch.Tensor  # (N,) point -> voxel
    teacher: torch.Tensor  # (N, D) unit
    xyz: np.ndarray  # (N, 3)
    vlm: dict  # provenance of the lifted features: {"vlm": name, "simulated": bool, ...}


def prepare_scene(path: Path, cfg: dict, vlm, teacher, cache_dir: Path, device: str) -> SceneBatch:
    """Load a scene and build the student input and teacher targets (features from the caches;
    `vlm` as for `cached_lift`: a backend or a zero-argument callable giving one)."""
    from geopurify.lift.cache import cached_lift
    from geopurify.teacher.cache import cached_teacher
    from geopurify.data.readers import load_scene
    from geopurify.student.network import student_input
    from geopurify.ops.voxel import voxelize

    scene = load_scene(path, frame_step=cfg["data"]["frame_step"])
    d = cfg["distill"]
    try:
        check_sizes(scene.n_points, d["n_macro"], d["n_micro"], d["micro_k"])
    except ValueError as e:
        raise InputError(path, f"scene too small to train on: {e}") from None
    lifted = cached_lift(scene, cfg, vlm, cache_dir, device=device)
    tfeat = cached_teacher(scene, teacher, cache_dir, cfg["teacher"]["cache_dtype"]).to(device)
    coords, inverse = voxelize(torch.from_numpy(scene.xyz).to(device), cfg["student"]["voxel_size"])
    feats = student_input(lifted.feat.to(device).float(), torch.from_numpy(scene.rgb).to(device),
                          torch.from_numpy(np.ascontiguousarray(scene.normals)).to(device), inverse, coords.shape[0])
    return SceneBatch(scene.name, feats, coords, inverse, tfeat, scene.xyz, dict(lifted.info))


class SceneStore:
    """Prepared scenes kept in RAM (on the CPU) up to `budget_gb`, so later epochs skip loading,
    normal estimation and voxelisation; scenes beyond the budget are prepared on every visit.
    Prepared values are a deterministic function of the scene and the caches, so keeping them
    changes nothing but speed."""

    def __init__(self, cfg: dict, vlm, teacher, cache_dir: Path, device: str, budget_gb: float):
        self.cfg, self.vlm, self.teacher, self.cache_dir, self.device = cfg, vlm, teacher, cache_dir, device
        self.budget = int(budget_gb * 2 ** 30)
        self.used = 0
        self.kept: dict[Path, SceneBatch] = {}
        self.in_channels: int | None = None  # set by the first scene: lifted dim + 6
        self.vlm_info: dict = {}

    def get(self, path: Path) -> SceneBatch:
        path = Path(path)
        if path in self.kept:
            b = self.kept[path]
            return SceneBatch(b.name, b.feats.to(self.device), b.coords.to(self.device), b.inverse.to(self.device),
                              b.teacher.to(self.device), b.xyz, b.vlm)
        batch = prepare_scene(path, self.cfg, self.vlm, self.teacher, self.cache_dir, self.device)
        if self.in_channels is None:
            self.in_channels, self.vlm_info = int(batch.feats.shape[1]), batch.vlm
        elif batch.feats.shape[1] != self.in_channels:
            raise InputError(path, f"lifted features give {batch.feats.shape[1]} student input channels, "
                                   f"other scenes {self.in_channels}")
        size = sum(t.numel() * t.element_size() for t in (batch.feats, batch.coords, batch.inverse, batch.teacher))
        size += batch.xyz.nbytes
        if self.used + size <= self.budget:
            self.kept[path] = SceneBatch(batch.name, batch.feats.cpu(), batch.coords.cpu(), batch.inverse.cpu(),
                                         batch.teacher.cpu(), batch.xyz, batch.vlm)
            self.used += size
        return batch


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def scene_loss(model, batch: SceneBatch, cfg: dict, generator: torch.Generator,
               timings: dict | None = None) -> tuple[torch.Tensor, Pairs]:
    """InfoNCE of the student on one scene; pairs sampled on points, embeddings per voxel, from a
    forward over the whole scene or over the sampled voxels only (`distill.student_input`).
    `timings`, when given, receives sample_s and forward_s (seconds)."""
    d = cfg["distill"]
    n = batch.xyz.shape[0]
    t0 = time.perf_counter()
    pairs = sample_pairs(batch.teacher, batch.xyz, n_anchors_for(n, d["max_anchors"], d["anchor_div"]),
                         d["n_macro"], d["n_micro"], d["micro_k"], generator=generator)
    _sync(batch.feats.device)
    t1 = time.perf_counter()
    inv = batch.inverse
    vox_pairs = Pairs(inv[pairs.anchor], inv[pairs.positive], inv[pairs.negatives], pairs.n_macro)
    if d["student_input"] == "sampled":  # the reference: the sampled voxels' sub-tensor only
        vox = torch.unique(torch.cat([vox_pairs.anchor, vox_pairs.positive, vox_pairs.negatives.reshape(-1)]))
        emb = model(batch.feats[vox], batch.coords[vox])  # (U, E) unit, rows in the order of `vox`
        at = functools.partial(torch.searchsorted, vox)  # voxel index -> row of the sub-tensor
        vox_pairs = Pairs(at(vox_pairs.anchor), at(vox_pairs.positive), at(vox_pairs.negatives), pairs.n_macro)
    else:
        emb = model(batch.feats, batch.coords)  # (V, E) unit
    loss = info_nce(emb, vox_pairs, tau=d["tau"])
    if timings is not None:
        _sync(batch.feats.device)
        timings["sample_s"], timings["forward_s"] = t1 - t0, time.perf_counter() - t1
    return loss, pairs


def recalibrate_batchnorm(model: torch.nn.Module, batches) -> None:
    """Replace BatchNorm running statistics by their exact average over `batches` (precise BN).

    Training sees one scene per iteration, so the momentum-averaged running statistics lag the
    weights; in eval mode (purification) that shrinks the student's local contrast to almost
    nothing (edge cosines ~0.98 everywhere, pooling then degrades to uniform smoothing). One
    no-grad forward per scene of the epoch, in train mode, with a cumulative average fixes it.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the forwards below
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(batch.feats, batch.coords)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    model.train(was_training)


def train_step(net, opt, sched, batch: SceneBatch, cfg: dict, generator: torch.Generator,
               timings: dict | None = None) -> tuple[torch.Tensor, Pairs]:
    """One optimiser step on one scene (sampling, forward, InfoNCE, backward, AdamW, schedule).
    `timings`, when given, also receives backward_s (backward + optimiser step)."""
    loss, pairs = scene_loss(net, batch, cfg, generator, timings)
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    if timings is not None:
        _sync(batch.feats.device)
        timings["backward_s"] = time.perf_counter() - t0
    return loss, pairs


# ----------------------------------------------------------------------------- training

def _meta(cfg: dict, vlm_info: dict, in_channels: int, teacher, epoch: int, model, device: str) -> dict:
    """What a checkpoint says about itself; the student's width / blocks / out_dim are read from the
    module as built (the `paper` preset ignores the config's width and blocks)."""
    s = cfg["student"]
    return {"teacher": {"name": teacher.name, "stand_in": bool(getattr(teacher, "stand_in", False))},
            "vlm": {"name": vlm_info.get("vlm", cfg["lift"]["vlm"]), "simulated": bool(vlm_info.get("simulated")),
                    "dim": in_channels - 6, "fusion": vlm_info.get("fusion", cfg["lift"]["fusion"])},
            "student": {"preset": s["preset"], **model.architecture(), "voxel_size": s["voxel_size"]},
            "epoch": int(epoch), "device": str(device)}


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
        raise InputError(path, f"cannot resume: checkpoint student {old.get('student')} with {ckpt['in_channels']} "
                               f"input channels, config asks {cfg['student']} with {in_channels}")
    changed = [k for k in cfg["distill"] if old.get("distill", {}).get(k) != cfg["distill"][k]]
    if changed:
        log.warning("resuming with changed distill settings %s: the result will differ from an uninterrupted run",
                    ", ".join(changed))


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
    from geopurify.device import resolve_device
    from geopurify.data.splits import resolve_scenes
    from geopurify.student.network import build_student
    from geopurify.teacher import build_teacher
    from geopurify.vlm import build_vlm

    exp_dir = Path(exp_dir)
    device = str(resolve_device(device))
    dist = init_distributed(device)
    if device.startswith("cuda") and dist.world > 1:
        device = f"cuda:{dist.local_rank}"
    d = cfg["distill"]
    seed = int(d["seed"])
    model_dir = exp_dir / MODEL_DIR
    log_path = exp_dir / LOG_FILE
    cache_dir = Path(cfg["data"]["cache_dir"]) if cfg["data"]["cache_dir"] else exp_dir / "cache"
    check_settings(cfg)

    # scenes (rank 0 first: it may generate procedural rooms) and the frozen feature sources
    if dist.main:
        scenes = resolve_scenes(cfg, "train")
    _barrier(dist)
    if not dist.main:
        scenes = resolve_scenes(cfg, "train")
    vlm = functools.cache(lambda: build_vlm(cfg, device=device))  # loaded only if a scene's features are not cached
    teacher = build_teacher(cfg, device=device)
    log.info("distill: %d training scenes, VLM %s, teacher %s, %d process(es) on %s", len(scenes),
             cfg["lift"]["vlm"], teacher.describe() if hasattr(teacher, "describe") else teacher.name, dist.world,
             device)

    # fill the caches once (each rank its share), so iterations only read them
    store = SceneStore(cfg, vlm, teacher, cache_dir, device, float(d["memory_cache_gb"]))
    for p in tqdm(scenes[dist.rank::dist.world], desc="features", unit="scene", disable=not dist.main):
        store.get(p)
    _barrier(dist)
    if store.in_channels is None:  # this rank prepared nothing (more ranks than scenes)
        store.get(scenes[0])
    in_channels, vlm_info = store.in_channels, store.vlm_info
    log.info("lifted features: %s%s, %s fusion, %d-d", vlm_info.get("vlm"),
             " (SIMULATED stand-in)" if vlm_info.get("simulated") else "", vlm_info.get("fusion"), in_channels - 6)

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

        net = DDP(model, device_ids=[dist.local_rank] if device.startswith("cuda") else None,
                  broadcast_buffers=False, find_unused_parameters=False)

    if dist.main:
        exp_dir.mkdir(parents=True, exist_ok=True)
        if start_epoch == 0:
            write_text(log_path, "")
        log.info("student: %s; %d epochs x %d iterations/rank, lr %.2g (warm-up %d it, cosine), groups %s",
                 model.describe() if hasattr(model, "describe") else type(model).__name__, d["epochs"], iters,
                 d["lr"], warmup, {g["name"]: g["lr_mult"] for g in opt.param_groups})
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
            loss_all = float(_mean_over_ranks(loss.detach(), dist))
            losses.append(loss_all)
            if dist.main:
                _append_log(log_path, {"event": "iter", "epoch": epoch + 1, "iter": it + 1, "step": step,
                                       "scene": batch.name, "loss": round(loss_all, 6), "lr": lr_now,
                                       "n_points": int(batch.xyz.shape[0]), "n_voxels": int(batch.coords.shape[0]),
                                       "n_anchors": len(pairs), "s": round(time.perf_counter() - t0, 4)})
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_all:.4f}", lr=f"{lr_now:.2e}")
            bar.update(1)
        # exact BatchNorm statistics of this epoch's final weights over this rank's scenes, then
        # averaged over ranks: what purification (eval mode) will use
        recalibrate_batchnorm(model, (store.get(scenes[order[it * dist.world + dist.rank]]) for it in range(iters)))
        average_buffers(model, dist)
        dt = time.perf_counter() - t_epoch
        mean_loss = float(np.mean(losses))
        if dist.main:
            log.info("epoch %d/%d: loss %.4f, lr %.3g, %.2f it/s", epoch + 1, d["epochs"], mean_loss,
                     lr_now, iters / dt)
            _append_log(log_path, {"event": "epoch", "epoch": epoch + 1, "step": step, "loss": round(mean_loss, 6),
                                   "it_per_s": round(iters / dt, 4), "s": round(dt, 3)})
            if (epoch + 1) % int(d["ckpt_every"]) == 0 or epoch + 1 == int(d["epochs"]):
                state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "epoch": epoch + 1, "step": step, "config": cfg,
                         "rng": {**rng_state(), "sampling": {"seed": seed, "stream": "torch.Generator seeded by "
                                                             "SeedSequence([seed, epoch, slot]) per scene-slot"}},
                         "in_channels": in_channels,
                         "meta": _meta(cfg, vlm_info, in_channels, teacher, epoch + 1, model, device)}
                save_checkpoint(last, state)  # first: a kill between the two still resumes from this epoch
                save_checkpoint(model_dir / f"epoch_{epoch + 1:03d}.pth", state)
        _barrier(dist)
    bar.close()

    digests = [weights_digest(model)]
    if dist.world > 1:
        import torch.distributed as tdist

        digests = [None] * dist.world
        tdist.all_gather_object(digests, weights_digest(model))
    final = model_dir / FINAL
    if dist.main:
        epochs_done = max(start_epoch, int(d["epochs"]))
        save_checkpoint(final, {"model": model.state_dict(), "epoch": epochs_done, "step": step, "config": cfg,
                                "in_channels": in_channels,
                                "meta": _meta(cfg, vlm_info, in_channels, teacher, epochs_done, model, device)})
        _append_log(log_path, {"event": "done", "step": step, "epochs": epochs_done, "weights_digest": digests,
                               "ranks_agree": len(set(digests)) == 1, "world_size": dist.world, "device": device,
                               "teacher": teacher.name, "teacher_stand_in": bool(getattr(teacher, "stand_in", False)),
                               "vlm": vlm_info.get("vlm"), "vlm_simulated": bool(vlm_info.get("simulated"))})
        log.info("wrote %s (weights digest %s%s)", final, digests[0],
                 "" if len(set(digests)) == 1 else f"; RANKS DISAGREE: {digests}")
    _barrier(dist)
    return final
