"""Configs are data: YAML files overriding `defaults.yaml`, checked key by key.

`load_config(path, overrides, sets)` returns a plain nested dict holding every key, merged in
this order (later wins): defaults.yaml < the file's `base:` chain < the file < `overrides` (a
command's own flags, e.g. --vlm) < `sets` (`--set KEY=VALUE` strings). A file may say
`base: <other config>` (a path relative to the file itself, or absolute) and then holds only
what differs from that config; bases may have bases of their own. An unknown key (a renamed one
names its new name), a value of the wrong type, unreadable YAML, a missing base or a base cycle
raises InputError naming the file (or the `--set KEY=VALUE` item) and the key. Value ranges are
checked by the stage using them (geopurify.schema).
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from geopurify.errors import InputError

_FREE_DICTS = {("distill", "lr_mult")}  # dict-valued keys whose inner keys are user-chosen
# keys that were renamed: an old config naming one gets the new name in its error, not just "unknown"
RENAMED = {("purify", "path"): "purify.pooling (fast -> scores, reference -> features)"}


def defaults() -> dict:
    """A fresh copy of every key with its default value."""
    text = resources.files("geopurify").joinpath("defaults.yaml").read_text()
    return yaml.safe_load(text)


def _type_ok(default: Any, value: Any) -> bool:
    if default is None:
        return True  # optional values: a null default accepts anything (null included)
    if value is None:
        return False  # a key with a real default is needed downstream: null would crash later
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, list)
    if isinstance(default, dict):
        return isinstance(value, dict)
    return isinstance(value, type(default))


def _float_hint(default: Any, value: Any) -> str:
    """A hint when YAML read a number as text: PyYAML takes `1e-4` for a string (it wants `1.0e-4`)."""
    if isinstance(default, float) and isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return f" (YAML reads {value} as text: write it as {float(value)!r})"
    return ""


def merge(base: dict, override: dict, where: str | Path | None = None, prefix: tuple = ()) -> dict:
    """Deep-merge `override` into a copy of `base`, rejecting unknown keys and wrong types."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        path = prefix + (key,)
        dotted = ".".join(map(str, path))
        if key not in base:
            if path in RENAMED:
                raise InputError(where, f"config key '{dotted}' is now {RENAMED[path]}")
            raise InputError(where, f"unknown config key '{dotted}'")
        default = base[key]
        if not _type_ok(default, value):
            got = "null" if value is None else f"{type(value).__name__} {value!r}"
            raise InputError(
                where,
                f"config key '{dotted}' must be {type(default).__name__}, got {got}" + _float_hint(default, value),
            )
        if path in _FREE_DICTS:
            bad = [
                k
                for k, v in value.items()
                if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float))
            ]
            if bad:
                raise InputError(
                    where, f"config key '{dotted}' maps names to numbers; entry {bad[0]!r} is {value[bad[0]]!r}"
                )
        if isinstance(default, dict) and path not in _FREE_DICTS and value is not None:
            out[key] = merge(default, value, where, path)
        elif isinstance(default, float) and value is not None:
            out[key] = float(value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict:
    """The mapping in the YAML file at `path` (an empty file is {}); InputError naming it otherwise."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "config file not found") from None
    except IsADirectoryError:
        raise InputError(path, "expected a YAML config file, found a directory") from None
    except OSError as e:
        raise InputError(path, f"cannot read the config file ({e.strerror or type(e).__name__})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(path, f"not valid YAML ({type(e).__name__})") from None
    except RecursionError:
        raise InputError(path, "not valid YAML for a config (nested too deeply)") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(path, f"config must be a mapping, got {type(data).__name__}")
    return data


def _load_file(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """Defaults, then the `base:` chain of the file at `path` (innermost first), then the file."""
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return merge(defaults(), data, path)
    if not isinstance(base, str) or not base.strip():
        raise InputError(path, f"'base' must be the path of another config file, got {base!r}")
    base_path = Path(base).expanduser()
    if not base_path.is_absolute():
        base_path = path.parent / base_path
    here = path.resolve()
    if base_path.resolve() in chain + (here,):
        loop = " -> ".join(str(p) for p in chain + (here, base_path.resolve()))
        raise InputError(path, f"base configs form a cycle: {loop}")
    if not base_path.is_file():
        raise InputError(path, f"base config {base!r} not found ({base_path})")
    return merge(_load_file(base_path, chain + (here,)), data, path)


def parse_set(item: str) -> dict:
    """`KEY=VALUE` (a dotted key, a YAML value: `2` is an int, `[320, 240]` a list, `null` null, an
    empty VALUE null) as the nested mapping a config file would hold, e.g. {"lift": {"vlm": "clip"}}."""
    where = f"--set {item}"
    key, eq, text = item.partition("=")
    parts = key.strip().split(".")
    if not eq or not all(p.strip() for p in parts):
        raise InputError(where, "expected KEY=VALUE with a dotted config key, e.g. --set distill.epochs=2")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(where, f"VALUE is not valid YAML ({type(e).__name__})") from None
    for part in reversed(parts):
        value = {part.strip(): value}
    return value


def apply_sets(cfg: dict, sets=()) -> dict:
    """`cfg` with each `--set KEY=VALUE` merged in order, checked as a config file's keys are."""
    for item in sets or ():
        cfg = merge(cfg, parse_set(item), f"--set {item}")
    return cfg


def load_config(path: str | Path | None, overrides: dict | None = None, sets=()) -> dict:
    """Defaults, the file at `path` (if any) over its `base:` chain, `overrides`, then `sets`
    (a sequence of `KEY=VALUE` strings, as given to --set)."""
    cfg = defaults() if path is None else _load_file(Path(path))
    if overrides:
        cfg = merge(cfg, overrides, "overrides")
    return apply_sets(cfg, sets)
