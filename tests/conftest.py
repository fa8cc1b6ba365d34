"""Suite-wide setup: how `make test` splits the suite over its two pytest-xdist workers.

`make test` runs `--dist loadfile --no-loadscope-reorder`: a work unit is a test file (its tests
share module fixtures and run in order on one worker), and units go to the workers in the order of
the collected items, not xdist's default (units with the most tests first, which queued the longest
tests, alone in their files, last: they then ran alone at the end). Here the tests marked `slow` are
collected first, so they start at once on both workers, and each test of a file in OWN_UNITS (files
whose tests share nothing) is a unit of its own, so that file's two long recipes can run side by side.

The suite's processes share one text-embedding cache (geopurify.vlm.text; content-keyed, so a hit
equals a fresh encoding bit for bit) in the temp directory rather than the user's ~/.cache.
"""

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("GEOPURIFY_TEXT_CACHE", str(Path(tempfile.gettempdir()) / f"geopurify-test-text-{os.getuid()}"))

OWN_UNITS = {"tests/test_recipe.py"}


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the rest keeps its order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` with the files of OWN_UNITS split into single tests; other modes: xdist's own."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileOrOwnUnit(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            return nodeid if file in OWN_UNITS else file

    return FileOrOwnUnit(config, log)
