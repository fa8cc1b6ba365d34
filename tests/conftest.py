"""Suite-wide setup: the longest tests (marked `slow`) are collected first, so that under pytest-xdist
(`make test` runs two workers) they start at once on their own workers instead of ending the run alone."""


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the rest keeps its order
