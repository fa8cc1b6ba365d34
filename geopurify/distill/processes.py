"""Process groups for distributed training (torchrun): who this process is, and the collectives.

Each epoch's scene order is padded to a multiple of the world size and rank r takes slots r, r + W,
... (geopurify.distill.schedule.epoch_order): disjoint slices with the same number of iterations per
rank. Gradients are averaged by DistributedDataParallel (gloo on CPU, nccl on CUDA); BatchNorm
running statistics are averaged over ranks at the end of every epoch (`average_buffers`); rank 0
writes checkpoints and logs. Who a process is (`Dist`, `init_distributed`, `barrier`,
`finish_distributed`) lives in
`geopurify.ranks`, shared with the sharded commands. A single process (WORLD_SIZE unset or 1) is a
world of one, for which every collective here does nothing.
"""

from __future__ import annotations

import logging

import torch

from geopurify.ranks import (  # noqa: F401 - re-exported for the engine
    Dist,
    barrier,
    finish_distributed,
    gather_objects,
    init_distributed,
)

log = logging.getLogger(__name__)


def mean_over_ranks(x: torch.Tensor, d: Dist) -> torch.Tensor:
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


def gather_digests(model: torch.nn.Module, d: Dist) -> list[str]:
    """Every rank's `weights_digest` of `model` (one entry in a single process)."""
    from geopurify.student.checkpoint import weights_digest

    return gather_objects(weights_digest(model), d)
