"""Who this process is among torchrun's processes, and the few collectives the commands need.

`torchrun --nproc_per_node N -m geopurify train|val|lift|prepare|eval ...` starts N processes with
RANK / WORLD_SIZE / LOCAL_RANK set; `init_distributed` joins them into one process group (gloo on
the CPU, nccl on CUDA, each rank on GPU LOCAL_RANK). A single process (WORLD_SIZE unset or 1) is a
world of one, for which every collective here does nothing. Sharded commands give rank r the items
r, r + W, r + 2W, ... of their sorted work list (`shard`): deterministic, disjoint, balanced.
"""

from __future__ import annotations

import datetime
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


SHARDED_TIMEOUT_S = 7 * 24 * 3600  # see init_distributed


def init_distributed(device: str, timeout_s: float | None = None) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA).

    `timeout_s`: how long a collective may wait for the other ranks (None: torch's default). The
    sharded commands meet only at their end, where a rank may wait for hours while its peers
    compute (resumed after a kill, one rank may have nothing left to do), so they pass
    SHARDED_TIMEOUT_S; a rank that dies is noticed by torchrun, which then ends the others.

    Also keeps the CPU threads sensible: unless OMP_NUM_THREADS says otherwise, each of the
    LOCAL_WORLD_SIZE processes on a machine gets cores // LOCAL_WORLD_SIZE torch threads (at least 1),
    so ranks do not oversubscribe the cores they share."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as tdist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not os.environ.get("OMP_NUM_THREADS"):
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
    if not tdist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if str(device).startswith("cuda"):
            torch.cuda.set_device(local)
        kwargs = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
        tdist.init_process_group(backend=backend, **kwargs)
        log.info("rank %d/%d joined the %s process group", rank, world, backend)
    return Dist(rank, world, local)


def rank_device(device: torch.device, d: Dist) -> torch.device:
    """The device of this rank: under torchrun on CUDA, GPU LOCAL_RANK (one GPU per process); else `device`."""
    if d.world > 1 and device.type == "cuda":
        return torch.device("cuda", d.local_rank)
    return device


def shard(items: list, d: Dist) -> list:
    """This rank's items: every world-th one starting at its rank (all of them in a single process)."""
    return list(items)[d.rank :: d.world]


def barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as tdist

        tdist.barrier()


def gather_objects(obj, d: Dist) -> list:
    """Every rank's `obj` (picklable), in rank order; `[obj]` in a single process."""
    if d.world <= 1:
        return [obj]
    import torch.distributed as tdist

    out = [None] * d.world
    tdist.all_gather_object(out, obj)
    return out


def finish_distributed(d: Dist) -> None:
    """Leave the process group (after the last collective), so the process exits cleanly: a barrier
    first, so no rank tears its connections down while a peer is still inside the last collective."""
    if d.world > 1:
        import torch.distributed as tdist

        if tdist.is_initialized():
            tdist.barrier()
            tdist.destroy_process_group()
