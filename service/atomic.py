"""Atomic writes: a reader (the service, a resumed run) never sees half a file or half a directory.

Offline stages and the service both write through these; nothing imports them from the manifest module.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np


def _write_atomic(path: Path, mode: str, write: Callable[[IO], object]) -> None:
    """`write(fh)` into a temp file beside `path`, then os.replace: `path` is whole or absent, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, mode) as fh:
        write(fh)
    os.chmod(tmp, 0o644)  # mkstemp files are private; artifacts are read by other users
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    _write_atomic(path, "w", lambda fh: fh.write(text))


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON atomically, so a reader never sees half a file."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished directory into place; an older one is removed only after the swap."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """np.savez atomically: a shard is whole or absent, so a resumed run can trust it."""
    _write_atomic(path, "wb", lambda fh: np.savez(fh, **arrays))
