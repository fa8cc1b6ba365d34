"""Configs are data: YAML files overriding `defaults.yaml`, checked key by key.

`load_config(path)` returns a plain nested dict holding every key. An unknown key, a value
of the wrong type, or unreadable YAML raises InputError naming the file and the key.
"""
from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from geopurify.errors import InputError

_FREE_DICTS = {("distill", "lr_mult")}  # dict-valued keys whose inner keys are user-chosen


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


def merge(base: dict, override: dict, where: str | Path | None = None, prefix: tuple = ()) -> dict:
    """Deep-merge `override` into a copy of `base`, rejecting unknown keys and wrong types."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        path = prefix + (key,)
        dotted = ".".join(map(str, path))
        if key not in base:
            raise InputError(where, f"unknown config key '{dotted}'")
        default = base[key]
        if not _type_ok(default, value):
            got = "null" if value is None else f"{type(value).__name__} {value!r}"
            raise InputError(where, f"config key '{dotted}' must be {type(default).__name__}, got {got}")
        if path in _FREE_DICTS:
            bad = [k for k, v in value.items()
                   if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float))]
            if bad:
                raise InputError(where, f"config key '{dotted}' maps names to numbers; entry {bad[0]!r} is "
                                        f"{value[bad[0]]!r}")
        if isinstance(default, dict) and path not in _FREE_DICTS and value is not None:
            out[key] = merge(default, value, where, path)
        elif isinstance(default, float) and value is not None:
            out[key] = float(value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | Path | None, overrides: dict | None = None) -> dict:
    """Defaults, then the YAML file at `path` (if any), then `overrides`."""
    cfg = defaults()
    if path is not None:
        path = Path(path)
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
        cfg = merge(cfg, data, path)
    if overrides:
        cfg = merge(cfg, overrides, "overrides")
    return cfg
