"""Starting, pinning, probing and stopping the processes a benchmark run measures.

Every server runs in its own process group (not its own session: the kernel's autogroup
scheduling shares CPU between sessions, so a server in a new session would not get the run's
priority) so that it, and any helper it spawns (Triton's backend stubs), can be stopped
together; only groups started here are signalled. Pinning uses ``taskset -c`` (which execs,
so the pid stays the server's own).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self


@dataclass(frozen=True)
class Placement:
    """Where the client and the server run: ``cpus`` are taskset lists, None = anywhere."""

    name: str
    client_cpus: str | None
    server_cpus: str | None

    def describe(self) -> str:
        if not self.client_cpus and not self.server_cpus:
            return "unpinned (client and server share all cores)"
        return f"pinned (client on core {self.client_cpus}, server on core {self.server_cpus})"


PLACEMENTS = {
    "pinned": Placement("pinned", "0", "1"),
    "unpinned": Placement("unpinned", None, None),
}


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    """``argv`` run on ``cpus`` through taskset (unchanged when cpus is None)."""
    if not cpus:
        return list(argv)
    taskset = shutil.which("taskset")
    if taskset is None:
        raise RuntimeError("taskset not found (util-linux); cannot pin")
    return [taskset, "-c", cpus, *argv]


def raise_priority(nice: int) -> None:
    """Run this process and everything it starts at ``nice``, also against other sessions.

    With ``sched_autogroup_enabled`` the scheduler first shares a core between sessions
    (autogroups) and applies nice values only inside one, so the session's autogroup nice is
    set too (``/proc/self/autogroup``; lowering it needs root). Children inherit both.
    """
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    try:
        Path("/proc/self/autogroup").write_text(str(nice), encoding="ascii")
    except OSError:
        pass


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_module_json(module: str, args: list[str], *, cpus: str | None, out_json: Path,
                    log_path: Path, timeout: float, env: dict | None = None):
    """Run ``python -m module args --json out_json`` (pinned), return the parsed JSON."""
    argv = pinned([sys.executable, "-m", module, *args, "--json", str(out_json)], cpus)
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                              env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} exited with {proc.returncode}; see {log_path}")
    return json.loads(out_json.read_text(encoding="utf-8"))


def kserve_model_ready(target: str, model: str, timeout: float = 2.0) -> bool:
    """True when a KServe v2 server at ``target`` reports ``model`` ready."""
    import grpc
    from tritonclient.grpc import service_pb2

    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelReady",
            request_serializer=service_pb2.ModelReadyRequest.SerializeToString,
            response_deserializer=service_pb2.ModelReadyResponse.FromString,
        )
        try:
            return bool(call(service_pb2.ModelReadyRequest(name=model), timeout=timeout).ready)
        except grpc.RpcError:
            return False


@dataclass
class ServerProcess:
    """A server under test: started in its own process group, stopped with its helpers."""

    name: str
    argv: list[str]
    log_path: Path
    port: int
    env: dict = field(default_factory=lambda: dict(os.environ))
    cpus: str | None = None
    proc: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, ready_models: list[str], timeout: float = 180.0) -> ServerProcess:
        argv = pinned(self.argv, self.cpus)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                     process_group=0)
        log.close()
        deadline = time.monotonic() + timeout
        pending = list(ready_models)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before "
                                   f"ready; see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s; "
                                   f"see {self.log_path}")
            if kserve_model_ready(self.target, pending[0]):
                pending.pop(0)
            else:
                time.sleep(0.25)
        return self

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the server's process group, SIGKILL it after ``grace`` seconds."""
        if self.proc is None or self.proc.poll() is not None and not _group_alive(self.proc.pid):
            return
        pgid = self.proc.pid
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(pgid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
