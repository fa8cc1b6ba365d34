"""One training iteration on one scene: pair sampling, the student's forward, InfoNCE, the optimiser
step; and the exact BatchNorm statistics each epoch ends with (METHOD.md section 3).

`distill.student_input` says which voxels the student sees: `scene` (ours) every voxel of the
scene, as at inference, so a training embedding is the one purification will use; `sampled` (the
reference code) only the voxels holding a sampled point, a sparse sub-tensor whose convolutions see
fewer neighbours (the reference averages only the sampled points of each voxel; we feed those
voxels' means over all their points, the student input purification uses).
"""

from __future__ import annotations

import functools
import time

import torch

from geopurify.distill.loss import info_nce
from geopurify.distill.sampling import Pairs, n_anchors_for, sample_pairs
from geopurify.distill.scenes import SceneBatch


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def scene_loss(
    model, batch: SceneBatch, cfg: dict, generator: torch.Generator, timings: dict | None = None
) -> tuple[torch.Tensor, Pairs]:
    """InfoNCE of the student on one scene; pairs sampled on points, embeddings per voxel, from a
    forward over the whole scene or over the sampled voxels only (`distill.student_input`).
    `timings`, when given, receives sample_s and forward_s (seconds)."""
    d = cfg["distill"]
    n = batch.xyz.shape[0]
    t0 = time.perf_counter()
    pairs = sample_pairs(
        batch.teacher,
        batch.xyz,
        n_anchors_for(n, d["max_anchors"], d["anchor_div"]),
        d["n_macro"],
        d["n_micro"],
        d["micro_k"],
        generator=generator,
    )
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


def train_step(
    net, opt, sched, batch: SceneBatch, cfg: dict, generator: torch.Generator, timings: dict | None = None
) -> tuple[torch.Tensor, Pairs]:
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
