"""What the registry checks before a version directory may be loaded while serving.

Invariants:
- ``version_signature`` changes whenever a file of the version directory or the model's
  config.pbtxt is written, replaced or removed, so a refused version is retried exactly
  when something it depends on changed (never in a loop on an unchanged broken export).
- ``check_config_matches`` raises RepositoryError naming the mismatch when config.pbtxt's
  state tensors or logits do not fit the version's metadata.json (e.g. a GRU copied under
  an LSTM model): such a version would answer with another model's state layout.
"""

from __future__ import annotations

import os
from pathlib import Path

from rnnserve.repository import CONFIG_FILE, RepositoryError, RepositoryMetadata


def version_signature(model_path: Path, version: str) -> tuple:
    """(name, size, mtime_ns) of every file of the version (none for version "") and of
    config.pbtxt."""
    entries = []
    files = _files(Path(model_path) / version) if version else []
    for path in [Path(model_path) / CONFIG_FILE, *files]:
        try:
            stat = path.stat()
        except OSError:
            entries.append((str(path), -1, -1))
            continue
        entries.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def _files(directory: Path) -> list[Path]:
    found = []
    for root, _dirs, files in os.walk(directory):
        found.extend(Path(root) / name for name in files)
    return sorted(found)


def check_config_matches(config, metadata: RepositoryMetadata) -> None:
    """RepositoryError unless config.pbtxt's state inputs and logits fit ``metadata``."""
    inputs = {tensor.name: tuple(tensor.dims) for tensor in config.input}
    expected = {name: tuple(metadata.state_shape) for name in metadata.state_names}
    got = {name: dims for name, dims in inputs.items() if name.startswith("state_")}
    if got != expected:
        raise RepositoryError(f"config.pbtxt state inputs {got} do not match the version's "
                              f"metadata.json ({metadata.cell}: {expected})")
    outputs = {tensor.name: tuple(tensor.dims) for tensor in config.output}
    if outputs.get("logits") != (metadata.num_labels,):
        raise RepositoryError(f"config.pbtxt logits {outputs.get('logits')} do not match the "
                              f"version's {metadata.num_labels} labels")
