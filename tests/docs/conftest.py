"""The model outputs the docs' examples run against (tests/docs/doc_blocks.py).

With RNNSERVE_SLOW=1 (CI) they are the real ``rnnserve demo``'s, shared with
tests/train/test_demo_reviews.py, so outputs the docs show are checked against the models
a reader gets. Otherwise the session's tiny models stand in, laid out and named as the demo
lays out and names its own (``runs/demo/<cell>``, ``model_repository/sentiment-<cell>``):
``rnnserve demo`` then finds its outputs present and goes straight to serving.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class DemoLayout:
    root: Path          # holds runs/demo/<cell> and model_repository/
    real: bool          # the demo's own models (outputs the docs show are compared)


@pytest.fixture(scope="session")
def demo_layout(request, tmp_path_factory) -> DemoLayout:
    if os.environ.get("RNNSERVE_SLOW") == "1":
        return DemoLayout(request.getfixturevalue("demo_outputs"), real=True)
    from rnnserve.export.exporter import export_checkpoint

    from rnnserve.demo import DEMO_NAMES

    checkpoints = request.getfixturevalue("tiny_checkpoints")
    root = tmp_path_factory.mktemp("demo-stand-in")
    for cell, name in DEMO_NAMES.items():
        checkpoint = shutil.copytree(checkpoints[cell], root / "runs" / "demo" / cell)
        export_checkpoint(checkpoint, repository=root / "model_repository", name=name)
    return DemoLayout(root, real=False)
