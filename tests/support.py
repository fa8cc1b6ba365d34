"""Helpers several test files share (imported as `support`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a `python -m geopurify` (or torchrun) subprocess: this checkout first on
    PYTHONPATH, one torch thread (as the suite's workers), the model hub offline, Python's fault handler
    on; `extra` on top."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONFAULTHANDLER": "1",  # a process killed by a signal (SIGABRT, SIGSEGV) prints its Python stacks
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        **extra,
    }
