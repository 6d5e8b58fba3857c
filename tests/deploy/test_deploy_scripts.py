"""The image's install and start scripts, run for real (CI's stand-in for `docker build`).

The Dockerfile RUNs these same scripts, so what passes here is what the image does:
install-serve.sh builds a CPU serve environment (no torch) from pyproject's pins,
build-default-models.sh trains and exports the default models (tiny settings here), and
start-server.sh serves them from the serve environment until the health probe says SERVING.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from deploy_helpers import ROOT, find_tool, run_env

SCRIPTS = ROOT / "scripts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 600):
    done = subprocess.run(args, env=env or run_env(), capture_output=True, text=True,
                          check=False, timeout=timeout)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done


def test_shellcheck():
    _run([find_tool("shellcheck"), "-x", *map(str, sorted(SCRIPTS.glob("*.sh")))])


def test_serve_requirements_swap_only_the_runtime():
    gpu = _run([sys.executable, str(SCRIPTS / "serve_requirements.py"), "--flavor", "gpu"])
    cpu = _run([sys.executable, str(SCRIPTS / "serve_requirements.py"), "--flavor", "cpu"])
    gpu_lines, cpu_lines = gpu.stdout.split(), cpu.stdout.split()
    # The gpu image takes CUDA and cuDNN from PyPI through onnxruntime-gpu's extras.
    assert any(r.startswith("onnxruntime-gpu[cuda,cudnn]==") for r in gpu_lines)
    swapped = [r.replace("onnxruntime-gpu[cuda,cudnn]==", "onnxruntime==") for r in gpu_lines]
    assert cpu_lines == swapped
    assert not any("torch" in r for r in cpu_lines + gpu_lines)


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("image") / "venv"
    env = run_env() | {"PYTHON": sys.executable}
    _run([str(SCRIPTS / "install-serve.sh"), "--flavor", "cpu", str(venv)], env=env)
    return venv


@pytest.fixture(scope="module")
def default_repository(tmp_path_factory) -> Path:
    repository = tmp_path_factory.mktemp("image") / "models"
    env = run_env() | {"RNNSERVE_BIN": str(Path(sys.executable).parent / "rnnserve"),
                       "DATA": "synthetic", "EPOCHS": "1"}
    _run([str(SCRIPTS / "build-default-models.sh"), str(repository)], env=env)
    return repository


def test_serve_venv_has_cpu_runtime_and_no_torch(serve_venv):
    python = str(serve_venv / "bin" / "python")
    code = ("import importlib.metadata as m, importlib.util as u, sys; "
            "names = {d.metadata['Name'].lower() for d in m.distributions()}; "
            "sys.exit(0 if 'onnxruntime' in names and 'onnxruntime-gpu' not in names "
            "and u.find_spec('torch') is None else 1)")
    _run([python, "-c", code])


def test_native_frontend_script_builds_what_the_image_ships(serve_venv, tmp_path):
    """The image's build stage step: the front-end compiled with the serve venv's own copy
    of its source (package data), found where RNNSERVE_NATIVE_CACHE points."""
    target = tmp_path / "native"
    _run([str(SCRIPTS / "native-frontend.sh"), "build", str(serve_venv), str(target)])
    [built] = target.glob("rnnserve-frontend-*")
    assert built.stat().st_mode & 0o111
    usage = subprocess.run([str(built)], capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and "--frontend native" in usage.stderr
    found = _run([str(serve_venv / "bin" / "python"), "-P", "-c",
                  ("from rnnserve.server.native_frontend import binary; "
                  "from rnnserve.server.settings import ServerSettings; "
                  "print(binary(ServerSettings().native_cache))")],
                 env=run_env() | {"RNNSERVE_NATIVE_CACHE": str(target)})
    assert found.stdout.strip() == str(built)
    _run([str(SCRIPTS / "native-frontend.sh"), "runtime"])      # here: already present


def test_start_script_refuses_an_empty_repository(serve_venv, tmp_path):
    env = run_env() | {"RNNSERVE_BIN": str(serve_venv / "bin" / "rnnserve"),
                       "RNNSERVE_REPOSITORY": str(tmp_path)}
    done = subprocess.run([str(SCRIPTS / "start-server.sh")], env=env, capture_output=True,
                          text=True, check=False, timeout=60)
    assert done.returncode == 1 and "missing or empty" in done.stderr


def test_image_steps_serve_the_default_models(serve_venv, default_repository, tmp_path):
    from rnnserve.protos import sentiment_pb2, sentiment_pb2_grpc

    assert sorted(p.name for p in default_repository.iterdir()) == [
        "sentiment-gru", "sentiment-lstm"]
    port = _free_port()
    env = run_env() | {
        "PATH": f"{serve_venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "RNNSERVE_REPOSITORY": str(default_repository),
        "RNNSERVE_HOST": "127.0.0.1", "RNNSERVE_PORT": str(port),
        "RNNSERVE_METRICS_HOST": "127.0.0.1", "RNNSERVE_METRICS_PORT": str(_free_port()),
        "RNNSERVE_DEVICE": "cpu", "RNNSERVE_DEFAULT_MODEL": "sentiment-lstm",
        # As in the image: the working directory never shadows installed packages (a
        # checkout's rnnserve/ folder would hide rnnserve.server from `python -m`).
        "PYTHONSAFEPATH": "1", "PYTHONUNBUFFERED": "1",
    }
    log = (tmp_path / "server.log").open("w")  # a file: a full pipe would block the server
    server = subprocess.Popen([str(SCRIPTS / "start-server.sh")], env=env, cwd=tmp_path,
                              stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        # The image's HEALTHCHECK command, run from the serve environment.
        probe = [str(serve_venv / "bin" / "python"), "-m", "rnnserve.server.healthprobe"]
        deadline = time.monotonic() + 180
        while subprocess.run(probe, env=env, cwd=tmp_path, capture_output=True,
                             check=False).returncode:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(1)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = sentiment_pb2_grpc.SentimentStub(channel)
            for model in ("sentiment-lstm", "sentiment-gru"):
                reply = stub.Classify(sentiment_pb2.ClassifyRequest(
                    texts=["a wonderful film", "dull and awful"], model=model), timeout=30)
                assert len(reply.predictions) == 2
                assert {p.label for p in reply.predictions} <= set(reply.labels)
        server.send_signal(signal.SIGTERM)  # what `docker stop` sends; exec'd, so it arrives
        assert server.wait(timeout=60) == 0
        assert '"event": "stopped"' in (tmp_path / "server.log").read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.close()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RNNSERVE_SLOW") != "1", reason="RNNSERVE_SLOW=1 only")
def test_install_train_script(tmp_path):
    env = run_env() | {"PYTHON": sys.executable}
    done = _run([str(SCRIPTS / "install-train.sh"), str(tmp_path / "venv")], env=env,
                timeout=1800)
    assert "install-train: torch" in done.stdout
