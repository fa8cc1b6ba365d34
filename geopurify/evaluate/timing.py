"""Seconds per stage of each evaluated scene, for the logs and metrics.json's `timing`.

`StageTimes` collects one scene's stages: `with times.stage("lift"): ...` around a step of the
evaluation loop, `times.add("purified", res.info)` for the sub-stages purification timed itself
(voxelise, student, knn, weights, pool). The clock is read after the device's queued work
(`geopurify.device.synchronize`), so CUDA stage times are true. `timing_report` sums the scenes.
"""

from __future__ import annotations

import contextlib
import time

from geopurify.device import synchronize


class StageTimes:
    """Stage name -> seconds of one scene; sub-stages of a method are named "<method>/<stage>"."""

    def __init__(self, device):
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        synchronize(self.device)
        t = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t

    def add(self, method: str, info: dict) -> None:
        """The `<stage>_s` entries of a PurifyResult's info, as "<method>/<stage>"."""
        for key, value in info.items():
            if key.endswith("_s") and isinstance(value, (int, float)):
                self.seconds[f"{method}/{key[:-2]}"] = float(value)

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.seconds.items()}

    def line(self) -> str:
        """The stages as `load 0.41s, lift 2.10s, ...` for the log."""
        return ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items())


def timing_report(per_scene: dict[str, dict[str, float]]) -> dict:
    """{"per_scene": {scene: {stage: s}}, "total": {stage: s summed over the scenes}}."""
    total: dict[str, float] = {}
    for stages in per_scene.values():
        for k, v in stages.items():
            total[k] = total.get(k, 0.0) + v
    return {"per_scene": per_scene, "total": {k: round(v, 3) for k, v in total.items()}}
