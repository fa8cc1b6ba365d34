"""Process groups for distributed training (torchrun): who this process is, and the collectives.

Each epoch's scene order is padded to a multiple of the world size and rank r takes slots r, r + W,
... (geopurify.distill.schedule.epoch_order): disjoint slices with the same number of iterations per
rank. Gradients are averaged by DistributedDataParallel (gloo on CPU, nccl on CUDA); BatchNorm
running statistics are averaged over ranks at the end of every epoch (`average_buffers`); rank 0
writes checkpoints and logs. A single process (WORLD_SIZE unset or 1) is a world of one, for which
every collective here does nothing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


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


def barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as tdist

        tdist.barrier()


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

    if d.world <= 1:
        return [weights_digest(model)]
    import torch.distributed as tdist

    digests = [None] * d.world
    tdist.all_gather_object(digests, weights_digest(model))
    return digests
