"""Config names -> implementations, resolved lazily: how a config value reaches its backend.

A `Registry` maps the names one config key accepts to "module:attribute" strings and imports the
module only when a name is asked for (`get`). Three tables use it: the VLM backends
(`geopurify.vlm.BACKENDS`, key `lift.vlm`), the teachers (`geopurify.teacher.TEACHERS`,
`teacher.name`) and the generated scene sources (`geopurify.data.splits.GENERATED`,
`data.dataset`). So `lift.vlm: simulated` reaches the offline stand-in without the pipeline importing
`geopurify.standins` (which the import contracts forbid), and a backend's heavy imports
(transformers, spconv) cost nothing until it is asked for.
"""

from __future__ import annotations

import importlib

from geopurify.errors import InputError


def resolve(spec: str):
    """The object a "package.module:attribute" string names, its module imported now."""
    module, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise ValueError(f"registry entries are 'module:attribute', got {spec!r}")
    return getattr(importlib.import_module(module), attr)


class Registry:
    """The implementations one config key can name: `key` (e.g. "lift.vlm"), `what` they are (for
    messages), and name -> "module:attribute"."""

    def __init__(self, key: str, what: str, entries: dict[str, str]):
        self.key, self.what, self.entries = key, what, dict(entries)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def __contains__(self, name) -> bool:
        return name in self.entries

    def get(self, name: str):
        """The implementation of `name`; InputError naming the config key for an unknown one."""
        if name not in self.entries:
            raise InputError(
                f"config {self.key}", f"unknown {self.what} {name!r} (choose one of: {', '.join(self.names)})"
            )
        return resolve(self.entries[name])
