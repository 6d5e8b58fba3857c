"""Helpers of the deployment tests: repository paths, linters, settings names.

A module of its own (not conftest.py) because several conftest modules exist and test
modules cannot import one of them by name reliably.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def find_tool(name: str) -> str:
    """A linter installed by the [dev] extra (its console script sits beside python)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def settings_env_names() -> set[str]:
    """Every RNNSERVE_* variable the server or the health probe reads."""
    from rnnserve.server.security import SecuritySettings
    from rnnserve.server.settings import ServerSettings

    names = set(ServerSettings.model_fields) | set(SecuritySettings.model_fields)
    probe = {"PROBE_TARGET", "PROBE_SERVICE", "PROBE_TIMEOUT", "PROBE_CA", "PROBE_CERT",
             "PROBE_KEY", "PROBE_SERVER_NAME"}
    # Read by the training stage of the image, not by the server.
    other = {"CACHE"}
    return {f"RNNSERVE_{n.upper()}" for n in names} | {f"RNNSERVE_{n}" for n in probe | other}


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def run_env() -> dict[str, str]:
    """The environment for scripts under test, without the caller's RNNSERVE_* settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RNNSERVE_")}
