"""The ranges of the config's settings: one table, one check every stage calls at its entry.

`geopurify.config` checks each value's type against defaults.yaml as a file is read; the ranges
below are checked where a value is used, by the stage that uses it (lifting, the simulated VLM,
the teacher cache, training, purification, the generated data sets), so settings built in code are
checked as well as those read from files. Every violation is the same one line:

    config key 'lift.border' must be an integer >= 0, got -1

`check(cfg, "lift", "student.voxel_size")` checks every listed key (a section stands for all of its
keys in `RANGES`), `check_value(key, value)` one value, and `JOINT` the rules over two keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from geopurify.errors import InputError


@dataclass(frozen=True)
class Range:
    """What a setting may hold: `kind` "int", "number", "choice" (one of `choices`) or "size" (a
    pair [W, H] of positive integers); numbers bounded by `lo` (exclusive when `above`) and `hi`."""

    kind: str
    lo: float | None = None
    above: bool = False
    hi: float | None = None
    choices: tuple = ()
    nullable: bool = False  # null allowed too (e.g. "no cap")

    def ok(self, v) -> bool:
        if v is None:
            return self.nullable
        if self.kind == "choice":
            return v in self.choices
        if self.kind == "size":
            return (
                isinstance(v, (list, tuple))
                and len(v) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)
            )
        if isinstance(v, bool) or not isinstance(v, int if self.kind == "int" else (int, float)):
            return False
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.above else v < self.lo):
            return False
        return self.hi is None or v <= self.hi

    def describe(self) -> str:
        if self.nullable:
            return Range(self.kind, self.lo, self.above, self.hi, self.choices).describe() + " or null"
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        if self.kind == "size":
            return "[W, H], two positive integers"
        kind = "an integer" if self.kind == "int" else "a number"
        if self.lo is not None and self.hi is not None:
            return f"{kind} in {'(' if self.above else '['}{self.lo:g}, {self.hi:g}]"
        if self.lo is not None:
            return f"{kind} {'>' if self.above else '>='} {self.lo:g}"
        return kind


def _int(lo=None, above=False) -> Range:
    return Range("int", lo, above)


def _num(lo=None, above=False, hi=None) -> Range:
    return Range("number", lo, above, hi)


def _one_of(*choices) -> Range:
    return Range("choice", choices=choices)


def _cap() -> Range:
    """A size cap in GB: a number >= 0, or null (0 and null: no cap)."""
    return Range("number", 0, nullable=True)


RANGES: dict[str, Range] = {
    "lift.image_size": Range("size"),
    "lift.fusion": _one_of("mean", "consensus"),
    "lift.border": _int(0),
    "lift.occlusion_thr": _num(0, above=True),
    "lift.zbuffer_splat": _int(0),
    "lift.chunk_points": _int(1),
    "lift.group_mb": _int(0),
    "lift.reuse_mb": _int(0),
    "lift.consensus_topk": _int(1),
    "lift.consensus_logit_scale": _num(0, above=True),
    "lift.virtual_frames": _int(1),  # checked only when a scene has no frames
    "lift.cache_max_gb": _cap(),
    "vlm_sim.patch": _int(1),
    "vlm_sim.confusion_prob": _num(0, hi=1),
    "vlm_sim.confusion_temp": _num(0, above=True),
    "vlm_sim.mask_error_prob": _num(0, hi=1),
    "vlm_sim.noise_std": _num(0),
    "vlm_sim.seed": _int(),
    "teacher.cache_dtype": _one_of("float16", "float32"),
    "teacher.color_scale": _one_of("sonata", "reference"),
    "teacher.missing_normals": _one_of("zero", "pca"),
    "teacher.cache_max_gb": _cap(),
    "student.voxel_size": _num(0, above=True),
    "distill.epochs": _int(1),
    "distill.ckpt_every": _int(1),
    "distill.lr": _num(0, above=True),
    "distill.weight_decay": _num(0),
    "distill.warmup_epochs": _int(0),
    "distill.max_anchors": _int(1),
    "distill.anchor_div": _int(1),
    "distill.n_macro": _int(0),
    "distill.n_micro": _int(0),
    "distill.tau": _num(0, above=True),
    "distill.student_input": _one_of("scene", "sampled"),
    "purify.k": _int(1),
    "purify.tau": _num(0, above=True),
    "purify.steps": _int(0),
    "purify.pooling": _one_of("scores", "features"),
    "purify.unseen": _one_of("nearest_seen", "reference"),
    "gpu.student_precision": _one_of("fp32", "bf16", "fp16"),
    "eval.workers": _int(0),
    "eval.prefetch_mb": _num(0),
    "synthetic.n_train": _int(1),
    "synthetic.n_val": _int(0),
}

# rules over two keys: (key a, key b, predicate of their values, what it asks)
JOINT = (
    ("vlm_sim.confusion_prob", "vlm_sim.mask_error_prob", lambda a, b: a + b <= 1, "add up to <= 1"),
    ("distill.n_macro", "distill.n_micro", lambda a, b: a + b >= 1, "add up to >= 1 (InfoNCE needs negatives)"),
)


def check_value(key: str, value) -> None:
    """InputError when `value` lies outside the range of setting `key` (a key of RANGES)."""
    rule = RANGES[key]
    if not rule.ok(value):
        raise InputError(None, f"config key '{key}' must be {rule.describe()}, got {value!r}")


def _value(cfg: dict, key: str):
    section, name = key.split(".", 1)
    return cfg[section][name]


def check(cfg: dict, *keys: str, skip: tuple[str, ...] = ()) -> None:
    """Check settings of the full config `cfg` against RANGES and JOINT: each of `keys` is a dotted
    key or a section name (all of its keys), `skip` keys left out. The first violation raises."""
    chosen = [k for k in RANGES if k not in skip and any(k == p or k.startswith(p + ".") for p in keys)]
    for key in chosen:
        check_value(key, _value(cfg, key))
    for a, b, ok, ask in JOINT:
        if a in chosen and b in chosen and not ok(_value(cfg, a), _value(cfg, b)):
            raise InputError(
                None, f"config keys '{a}' and '{b}' must {ask}, got {_value(cfg, a)!r} and {_value(cfg, b)!r}"
            )
