"""Run one doc's examples in order, as a reader would (the scheme is in doc_blocks.py).

A :class:`DocSession` owns a working directory laid out like a clone after ``make demo``
and the background servers the doc's ``<!-- server -->`` blocks started; closing it stops
them. Commands see the environment a reader's shell has: no ``RNNSERVE_*`` variables, the
project's venv first on PATH and, where grpcurl is not installed, tests/docs/bin's stand-in
(it sends the same JSON request to the same method through the generated stubs).
"""

from __future__ import annotations

import doctest
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from doc_blocks import ROOT, Block
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_PORT = 8001
BLOCK_TIMEOUT_S = 120.0
SERVER_READY_TIMEOUT_S = 180.0
SHIM_DIR = Path(__file__).resolve().parent / "bin"
_OUTPUT_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

#: Top-level entries of the project a reader's clone has; build outputs stay out.
_NOT_IN_A_CLONE = {".git", ".venv", "runs", "model_repository", ".pytest_cache", ".ruff_cache"}


def clone_layout(workdir: Path, demo_outputs: Path) -> Path:
    """``workdir`` as a clone after ``make demo``: links to the project's files, the demo's
    ``runs/demo`` and ``model_repository``, and the shared tool cache ``.cache``."""
    workdir.mkdir(parents=True, exist_ok=True)
    (ROOT / ".cache").mkdir(exist_ok=True)
    for entry in ROOT.iterdir():
        if entry.name not in _NOT_IN_A_CLONE:
            (workdir / entry.name).symlink_to(entry)
    (workdir / "runs").mkdir()
    (workdir / "runs" / "demo").symlink_to(demo_outputs / "runs" / "demo")
    (workdir / "model_repository").symlink_to(demo_outputs / "model_repository")
    return workdir


def reader_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNSERVE_")}
    path = [str(Path(sys.executable).parent)]
    if shutil.which("grpcurl") is None:
        path.append(str(SHIM_DIR))
    env["PATH"] = os.pathsep.join(path + [env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Ran:
    block: Block
    code: int
    stdout: str
    stderr: str

    def report(self) -> str:
        return (f"{self.block.where} exited {self.code}\n--- block\n{self.block.text}"
                f"--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}")


class DocSession:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.env = reader_environment()
        self._servers: list[tuple[Block, subprocess.Popen, Path]] = []

    def run(self, block: Block) -> Ran:
        """Run an example block to completion."""
        try:
            done = subprocess.run(self._argv(block), cwd=self.workdir, env=self.env,
                                  capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S,
                                  start_new_session=True, check=False)
        except subprocess.TimeoutExpired as exc:
            return Ran(block, -1, _text(exc.stdout), f"timed out after {BLOCK_TIMEOUT_S} s\n"
                       + _text(exc.stderr))
        return Ran(block, done.returncode, done.stdout, done.stderr)

    def start_server(self, block: Block) -> None:
        """Start a ``<!-- server -->`` block in the background; return once it serves."""
        port = _port_of(block.text)
        _require_free(port, block)
        log = self.workdir / f"server-{block.line}.log"
        with log.open("w") as out:
            process = subprocess.Popen(self._argv(block), cwd=self.workdir, env=self.env,
                                       stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self._servers.append((block, process, log))
        deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise AssertionError(f"{block.where}: the server exited {process.returncode}"
                                         f":\n{log.read_text()[-4000:]}")
                try:
                    answer = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise AssertionError(f"{block.where}: not SERVING on :{port} after "
                             f"{SERVER_READY_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")

    def server_log(self) -> str:
        return "\n".join(log.read_text() for _, _, log in self._servers)

    def close(self) -> None:
        """Stop the servers (SIGTERM to each block's process group, as Ctrl-C would end it)."""
        for block, process, log in reversed(self._servers):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
        self._servers.clear()

    @staticmethod
    def _argv(block: Block) -> list[str]:
        if block.info == "python":
            return [sys.executable, "-c", block.text]
        return ["bash", "-e", "-o", "pipefail", "-c", block.text]


def output_differs(expected: Block, ran: Ran) -> str | None:
    """None when ``ran`` printed what the ``<!-- output -->`` block shows, else the diff."""
    checker = doctest.OutputChecker()
    if checker.check_output(expected.text, ran.stdout, _OUTPUT_FLAGS):
        return None
    example = doctest.Example(source="", want=expected.text)
    return f"{expected.where}: " + checker.output_difference(example, ran.stdout, _OUTPUT_FLAGS)


def _port_of(command: str) -> int:
    match = re.search(r"--port[ =](\d+)", command)
    return int(match[1]) if match else DEFAULT_PORT


def _require_free(port: int, block: Block) -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise AssertionError(f"{block.where}: port {port} is already in use; the docs "
                                 f"test starts the server the doc shows there")


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""
