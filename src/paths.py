"""Where the project's files are, and how every output is written: whole or not at all.

A kill, a full disk or an exception while writing leaves the previous file (or none), never
half of one: the content goes to a temporary path beside the target, which a rename puts in
place (atomic on one file system).
"""

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def in_repo(path: str | Path) -> Path:
    """Config paths are relative to the repository root, whatever the working directory."""
    return Path(path) if Path(path).is_absolute() else REPO / path


# A working copy of the repository, for DVC end to end (the tests, make bench's make-run way).
def copy_repo(work: Path) -> Path:
    """The repository's tracked and untracked-but-not-ignored files, copied into a new git repo."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, work / name)
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    return work


@contextmanager
def atomic_path(final: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside final, renamed onto final when the block ends without error.

    suffix ends the temporary name, for writers that choose the format by it (np.savez, Keras).
    On an error the temporary file (or folder) is removed and final is left as it was.
    """
    partial = final.with_name(f".{final.name}.{os.getpid()}.partial{suffix}")
    try:
        yield partial
        os.replace(partial, final)
    finally:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> Path:
    """path's new content, whole or not at all (its folder made if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        partial.write_text(text)
    return path


def write_json(path: Path, value: Any) -> Path:
    """value as indented JSON, whole or not at all."""
    return write_text(path, json.dumps(value, indent=1) + "\n")
