"""The import floors of pyproject.toml's [tool.importlinter] contracts hold (export -> training -> service)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    beside = Path(sys.executable).with_name("lint-imports")  # the venv's, also when its bin/ is not on PATH
    lint = str(beside) if beside.is_file() else shutil.which("lint-imports")
    assert lint, "import-linter is a dev dependency: pip install -e '.[dev]'"
    result = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and result.stdout.count("KEPT") == 3


def test_artifact_paths_are_named_only_by_the_layout():
    """No module joins a path under the artifacts root by hand: `service.layout.ArtifactLayout` names them all."""
    import re

    by_hand = re.compile(r"""(artifacts_dir|artifacts)\)? / ["'](encoders|index|graphs|spaces|pairs|diffusion|fanout|"""
                         r"""policy|tune|reports)["']""")
    found = [f"{p.relative_to(ROOT)}:{i}" for pkg in ("service", "training", "export", "loadtests")
             for p in sorted((ROOT / pkg).rglob("*.py")) if p.name != "layout.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if by_hand.search(line)]
    assert not found, found
