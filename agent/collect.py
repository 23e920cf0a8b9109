"""Files of a finished job's workspace that match globs (`artifacts`, `test-results`),
with the same glob rules as everywhere else (`*`, `**`, `!negation`)."""

from __future__ import annotations

import os
from pathlib import Path

from runyard.globs import matches

SKIPPED = {".git", ".runyard"}  # the checkout's history and Runyard's own step files


def matching_files(workspace: Path, patterns: list[str]) -> list[tuple[str, Path]]:
    """(relative POSIX path, file) of every regular file matching, sorted by path."""
    found = []
    for root, dirs, files in os.walk(workspace):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED)
        for name in files:
            path = Path(root) / name
            rel = path.relative_to(workspace).as_posix()
            if path.is_file() and not path.is_symlink() and matches(patterns, rel):
                found.append((rel, path))
    return sorted(found)
