"""What happens when in training: the learning rate per step, the scene order per epoch, the pair
sampler's generator per scene-slot, and the RNG states a checkpoint keeps.

Schedule: linear warm-up over `warmup_epochs`, then cosine to 0, stepped per iteration; per-group
learning-rate multipliers from `distill.lr_mult` (parameter-name prefix -> multiplier).

Reproducibility: scene order per epoch comes from np.random.default_rng([seed, epoch]) and the
pair sampling of each scene-slot from its own torch.Generator seeded by (seed, epoch, slot), so
a run resumed from any epoch checkpoint takes exactly the steps of an uninterrupted one and a
distributed run samples the same pairs as a single process would. The global torch / numpy /
python RNGs are seeded too (model initialisation) and saved in checkpoints.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from geopurify.errors import InputError


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
            raise InputError(
                None,
                f"config key 'distill.lr_mult': prefix '{prefix}' matches no student "
                f"parameter (names start with {', '.join(tops)})",
            )
    groups: dict[str, dict] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        match = max((k for k in lr_mult if n.startswith(k)), key=len, default=None)
        g = groups.setdefault(
            match or "",
            {
                "params": [],
                "lr": lr * float(lr_mult.get(match, 1.0)),
                "name": match or "default",
                "lr_mult": float(lr_mult.get(match, 1.0)),
            },
        )
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
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(st[1].astype(np.int64)),
            "pos": int(st[2]),
            "has_gauss": int(st[3]),
            "gauss": float(st[4]),
        },
        "python": random.getstate(),
    }
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
    np.random.seed(seed % (2**32))
    random.seed(seed)
