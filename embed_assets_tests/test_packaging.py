"""The built wheel is what the Docker image and a non-editable ``pip install`` get: it must hold
every module and data file of the package, or an install outside the checkout fails at run time
(a prompt file missing from the wheel would only show when the LLM backend first loads it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_holds_every_tracked_file_of_the_package(tmp_path):
    tracked = subprocess.run(
        ["git", "ls-files", "embed_assets"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert any(f.endswith(".txt") for f in tracked), "the prompt files are expected among the tracked files"
    # Build from a copy holding what the Dockerfile copies, so a stale build/ or egg-info of the
    # checkout cannot leak into (or hide from) the wheel.
    src = tmp_path / "src"
    for rel in ["pyproject.toml", "README.md", *tracked]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    # A stray test package beside the real one, as the checkout has: it must not ship.
    (src / "embed_assets_tests").mkdir()
    (src / "embed_assets_tests" / "__init__.py").write_text("")
    # --no-build-isolation: build with the environment's setuptools, offline and in seconds.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("embed_assets-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    missing = sorted(f for f in tracked if f not in names)
    assert not missing, f"not in {wheel.name}: {missing}"
    assert not any(n.startswith("embed_assets_tests/") for n in names), "the tests do not ship"
    assert "embed-assets = embed_assets.cli:main" in entry_points
    # An SPDX expression: the TOML-table form is deprecated and stops building in 2027.
    assert "License-Expression: Apache-2.0" in metadata
