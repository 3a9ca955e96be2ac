"""Atomic writes: a reader (the service, a resumed run) never sees half a file or half a directory.

Offline stages and the service both write through these; nothing imports them from the manifest module.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


def write_text_atomic(path: Path, text: str) -> None:
    """Write text through a temp file and os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)  # mkstemp files are private; artifacts are read by other users
    os.replace(tmp, path)


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
    """np.savez through a temp file and os.replace: a shard is whole or absent, so a resumed run can trust it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)
