"""Work items loaded ahead of the computation: `prefetched(items, load, workers)` yields
`load(item)` for each item in order, computed by `workers` DataLoader worker processes while the
caller computes on the previous ones (scene files, PNG / JPEG decoding, normals, feature reads
overlap with lifting and purification).

Memory is bounded: each worker holds at most one loaded item in flight (prefetch_factor 1), so at
most `workers` items wait beside the one being computed. `workers=0` loads in the calling process
(no extra processes, no shared memory). Workers are seeded (torch, numpy, random) from `seed`
and die with their parent process (Linux).
An InputError raised by `load` reaches the caller as itself (one error line, exit code 2), not as
DataLoader's wrapped RuntimeError. The progress bar shows the rate in items per minute.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from geopurify.errors import InputError


class _Loads(torch.utils.data.Dataset):
    """Item i -> ("ok", load(items[i])) or ("error", (path, problem) of the InputError it raised:
    the exception itself does not survive pickling)."""

    def __init__(self, items: list, load: Callable):
        self.items, self.load = list(items), load

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            return "ok", self.load(self.items[i])
        except InputError as e:
            return "error", (e.path, e.problem)


# lift.vlm -> the frame images its lifting reads (depth: every backend with views tests occlusion by it;
# the simulated stand-in renders label images, CLIP encodes colour, external backends read feature files)
FRAME_KINDS = {"simulated": ("depth", "label"), "clip": ("depth", "color"), "external": ("depth",)}


def preload_frames(scene, vlm_name: str, budget_mb: float) -> int:
    """Decode ahead, frame by frame, the images lifting with `vlm_name` reads (FRAME_KINDS), until
    `budget_mb` is held; the rest are read when the lifting reaches them. Returns the frames decoded."""
    kinds, held, n = FRAME_KINDS.get(vlm_name, ()), 0, 0
    for frame in scene.frames:
        if not kinds or held >= budget_mb * 2**20:
            break
        held += frame.preload(kinds)
        n += 1
    return n


def _as_is(x):
    return x


def _init_worker(worker_id: int) -> None:
    """Seed the worker and tie its life to its parent's."""
    seed = torch.initial_seed() % 2**32  # DataLoader gives each worker base_seed + worker_id
    np.random.seed(seed)
    random.seed(seed)
    _die_with_parent()


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies. A worker whose parent was killed
    (a torchrun rank SIGKILLed) would otherwise hang for ever at exit, flushing a loaded scene into
    a pipe nobody reads. Elsewhere (no prctl) nothing is done."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def prefetched(
    items: list, load: Callable, workers: int = 1, desc: str = "", unit: str = "scene", seed: int = 0
) -> Iterator:
    """`load(item)` for each of `items`, in order, loaded by `workers` worker processes (0: here),
    under a tqdm bar with the rate in `unit`s per minute. `load` must be picklable (a module-level
    function or a functools.partial of one)."""
    items = list(items)
    if workers < 0:
        raise InputError(None, f"the number of loader workers must be >= 0, got {workers}")
    data = _Loads(items, load)
    if workers == 0 or len(items) <= 1:
        source = (data[i] for i in range(len(items)))
    else:
        source = torch.utils.data.DataLoader(
            data,
            batch_size=None,
            shuffle=False,
            num_workers=min(workers, len(items)),
            prefetch_factor=1,
            collate_fn=_as_is,
            worker_init_fn=_init_worker,
            generator=torch.Generator().manual_seed(seed),
        )
    t0, bar = time.perf_counter(), None
    try:
        for status, value in source:
            if status == "error":
                raise InputError(*value)
            if bar is None:  # shown once the first item is ready: a bad first input stays one error line
                bar = tqdm(total=len(items), desc=desc, unit=unit)
            yield value
            bar.update(1)
            bar.set_postfix_str(f"{60 * bar.n / max(time.perf_counter() - t0, 1e-9):.1f} {unit}s/min")
    finally:
        if bar is not None:
            bar.close()
