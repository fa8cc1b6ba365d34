"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

from pathlib import Path

EXIT_BAD_INPUT = 2


_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}  # str.splitlines' set


def one_line(text: str) -> str:
    """`text` with line breaks escaped (a file or key name may hold one), so a message stays one line."""
    return text.translate(_BREAKS)


class InputError(Exception):
    """Bad input (file, config, argument). `str(e)` is the one line shown to the user."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(one_line(f"{self.path}: {problem}" if self.path else str(problem)))
