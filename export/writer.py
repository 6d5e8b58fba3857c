"""Atomic writes into a Triton-layout model repository.

Invariants:
- A version directory appears complete or not at all: files are written into a hidden
  staging directory inside the model directory (same filesystem) and renamed into place.
- Replacing a version (``force``) renames the old one aside first and deletes it only after
  the new one is in place; on failure the old one is put back.
- ``config.pbtxt`` is replaced with ``os.replace`` from a temporary sibling file.
- Nothing outside ``<repository>/<name>`` is touched; names and versions are validated by
  ``rnnserve.repository`` first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from rnnserve.repository import (
    CONFIG_FILE,
    RepositoryError,
    format_model_config,
    list_versions,
    model_dir,
    validate_version,
)

from .errors import ExportError

STAGING_PREFIX = ".staging-"


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def _publish_mode(path: Path, directory: bool) -> None:
    """Give a mkdtemp/mkstemp path (0700/0600) the permissions a plain mkdir/open would."""
    path.chmod((0o777 if directory else 0o666) & ~_umask())


def resolve_model_dir(repository: Path, name: str) -> Path:
    """``<repository>/<name>`` after validating the name; the repository must be a directory
    or creatable."""
    repository = Path(repository)
    if repository.exists() and not repository.is_dir():
        raise ExportError(f"--repository {repository} exists and is not a directory")
    try:
        return model_dir(repository, name)
    except RepositoryError as exc:
        raise ExportError(str(exc)) from None


def choose_version(model_path: Path, version: int | str | None, force: bool) -> str:
    """The version to write: ``version`` if free (or ``force``), else the next free integer."""
    existing = list_versions(model_path)
    if version is None:
        return str(int(existing[-1]) + 1) if existing else "1"
    try:
        text = validate_version(version)
    except RepositoryError as exc:
        raise ExportError(f"{exc} (--version)") from None
    target = model_path / text
    if target.exists() and not force:
        raise ExportError(
            f"{target} already exists: pass --force to replace it or choose another --version"
        )
    if target.exists() and not target.is_dir():
        raise ExportError(f"{target} exists and is not a version directory; remove it first")
    return text


def write_version(
    model_path: Path,
    version: str,
    fill: Callable[[Path], None],
    commit: Callable[[], None] | None = None,
    replace: bool = False,
) -> Path:
    """Create ``model_path/version`` atomically.

    ``fill(staging_dir)`` writes the version's files; ``commit()`` (e.g. writing
    config.pbtxt) runs once the version is in place. If either raises, the repository is
    left as it was before the call (a replaced version is restored). An existing version
    (e.g. written concurrently since ``choose_version``) is replaced only with ``replace``.
    """
    created = not model_path.exists()
    model_path.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{version}-", dir=model_path))
    _publish_mode(staging, directory=True)
    target = model_path / version
    retired: Path | None = None
    placed = False
    try:
        fill(staging)
        if target.exists() and not replace:
            raise ExportError(f"{target} appeared while exporting (a concurrent export?); retry")
        if target.exists():
            retired = Path(
                tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}old-{version}-", dir=model_path)
            )
            retired.rmdir()
            target.rename(retired)
        staging.rename(target)
        placed = True
        if commit is not None:
            commit()
    except BaseException:
        if placed:
            shutil.rmtree(target, ignore_errors=True)
        if retired is not None:
            retired.rename(target)
            retired = None
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(model_path.iterdir()):
            model_path.rmdir()
        raise
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
    return target


def write_config_atomic(model_path: Path, config: model_config_pb2.ModelConfig) -> Path:
    """Replace ``model_path/config.pbtxt`` in one rename."""
    path = model_path / CONFIG_FILE
    fd, tmp = tempfile.mkstemp(prefix=f"{STAGING_PREFIX}{CONFIG_FILE}-", dir=model_path)
    try:
        _publish_mode(Path(tmp), directory=False)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(format_model_config(config))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
