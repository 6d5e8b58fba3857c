"""prometheus_client values that live in a directory of multiprocess files, chosen per object.

prometheus_client picks one value class for the whole process, at import time, from
``PROMETHEUS_MULTIPROC_DIR``. rnnserve instead chooses per ``ServerTelemetry``:

- :func:`value_class` gives a class that mirrors every value into ``<dir>/<type>_<pid>.db``
  (``gauge_<mode>_<pid>.db`` for gauges): prometheus_client's own file layout, so its
  ``MultiProcessCollector`` merges them and its ``mark_process_dead`` cleans them up. The
  directory is an argument, never read from the environment.
- :func:`child` creates a labelled child with a given value class (prometheus_client's
  ``values.MutexValue`` for in-memory metrics) by swapping ``values.ValueClass`` for that call
  only, under a module lock. So the environment variable, set or not, changes nothing for
  rnnserve's metrics; only metrics created elsewhere in the process follow it.

Invariants: one set of open files per directory and process, shared by every object using
it, behind one lock; after ``fork`` the child reopens files under its own pid and restarts
its values from them (the parent's files stay the parent's).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import values
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import mark_process_dead as _mark_process_dead


class _Directory:
    """This process's open value files in one multiprocess directory, behind one lock.

    Files are ``<type>_<pid>.db`` (``gauge_<mode>_<pid>.db`` for gauges), the names
    prometheus_client's ``MultiProcessCollector`` and ``mark_process_dead`` expect. After a
    ``fork`` the child reopens files under its own pid and restarts its values from them.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.files: dict[str, MmapedDict] = {}
        self.values: list = []
        self.value_class: type | None = None

    def file(self, prefix: str) -> MmapedDict:
        """The open file for ``prefix``; the caller holds ``lock``."""
        mapped = self.files.get(prefix)
        if mapped is None:
            mapped = MmapedDict(os.path.join(self.path, f"{prefix}_{self.pid}.db"))
            self.files[prefix] = mapped
        return mapped

    def after_fork(self) -> None:
        self.lock = threading.Lock()   # another thread may have held it at fork time
        self.pid = os.getpid()
        self.files = {}                # the parent's mappings stay the parent's
        for value in self.values:
            value.reopen()


_DIRECTORIES: dict[str, _Directory] = {}
_DIRECTORIES_LOCK = threading.Lock()
_SWAP_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    global _DIRECTORIES_LOCK, _SWAP_LOCK
    _DIRECTORIES_LOCK, _SWAP_LOCK = threading.Lock(), threading.Lock()
    for directory in _DIRECTORIES.values():
        directory.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def value_class(path: Path) -> type:
    """A prometheus_client value class writing to ``path`` (one per directory and process)."""
    key = os.path.realpath(path)
    with _DIRECTORIES_LOCK:
        directory = _DIRECTORIES.get(key)
        if directory is None:
            if not os.path.isdir(key):
                raise ValueError(f"multiprocess_dir {path} is not a directory; create it with "
                                 "prepare_multiprocess_dir() first")
            directory = _DIRECTORIES[key] = _Directory(key)
            directory.value_class = _make_file_value_class(directory)
        return directory.value_class


def _make_file_value_class(directory: _Directory) -> type:
    class FileValue:
        """A float mirrored into this process's mmap file (prometheus_client's layout)."""

        _multiprocess = True

        def __init__(self, typ, metric_name, name, labelnames, labelvalues, help_text,
                     multiprocess_mode="", **_: object) -> None:
            self._prefix = f"{typ}_{multiprocess_mode}" if typ == "gauge" else typ
            self._key = mmap_key(metric_name, name, labelnames, labelvalues, help_text)
            with directory.lock:
                self.reopen()
                directory.values.append(self)

        def reopen(self) -> None:
            self._file = directory.file(self._prefix)
            self._value = self._file.read_value(self._key)[0]

        def inc(self, amount: float) -> None:
            with directory.lock:
                self._value += amount
                self._file.write_value(self._key, self._value, 0.0)

        def set(self, value: float, timestamp: float | None = None) -> None:
            with directory.lock:
                self._value = value
                self._file.write_value(self._key, value, timestamp or 0.0)

        def set_exemplar(self, exemplar) -> None:
            return None

        def get(self) -> float:
            with directory.lock:
                return self._value

        def get_exemplar(self):
            return None

    return FileValue


def prepare_multiprocess_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) and delete every ``*.db`` value file in it.

    Call it once in the supervising process before any process records into ``path`` (a
    process that already has files open there would keep writing to deleted files).
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    return directory


def mark_process_dead(pid: int, path: str | os.PathLike) -> None:
    """A recording process ``pid`` exited: drop its live gauges (pending, open sequences,
    state bytes, load time, provider) from the totals. Its counters and histograms stay, so
    totals never go backwards; ``last_inference`` (a max) stays too."""
    _mark_process_dead(pid, str(path))


def child(metric, value_class: type, labels: Sequence[str]):
    """``metric.labels(*labels)`` with its values created by ``value_class``.

    prometheus_client reads the module attribute ``values.ValueClass`` when it creates a
    child; it is swapped only for this call and under a module lock, so concurrent
    ServerTelemetry objects (in-memory or file-backed) each get their own kind.
    """
    with _SWAP_LOCK:
        saved = values.ValueClass
        values.ValueClass = value_class
        try:
            return metric.labels(*labels)
        finally:
            values.ValueClass = saved
