"""The CUDA path tells the truth on hosts where CUDA is broken, without a GPU.

A host is faked with stub CUDA libraries (tests/server/cuda_stubs.py, compiled with gcc in the
test session) put in front of the real search path with LD_LIBRARY_PATH, in child processes:
the installed onnxruntime-gpu's real CUDA provider library loads against them. Each case
checks both modes: ``--device auto`` serves on CPU and says why (once); ``--device cuda``
refuses with the reason; and ORT prints nothing (no "EP Error" banner on stdout, no
``[E:onnxruntime`` line on stderr).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from cuda_stubs import build_stubs, tools_missing
from rnnserve.protos import sentiment_pb2, sentiment_pb2_grpc

DRIVER = Path(__file__).with_name("cuda_model_driver.py")
ORT_NOISE = ("EP Error", "[E:onnxruntime", "Falling back to")


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> tuple[Path, Path]:
    missing = tools_missing()
    if missing:
        pytest.skip(f"cannot build stub CUDA libraries: {missing}")
    return build_stubs(tmp_path_factory.mktemp("cuda-stubs"))


def _env(paths: list[Path], **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STUB_", "RNNSERVE_"))}
    env["LD_LIBRARY_PATH"] = ":".join(str(p) for p in paths)
    env.update(variables)
    return env


def _events(stderr: str) -> list[dict]:
    events = []
    for line in stderr.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def _child(args: list[str], env: dict[str, str], logs: Path,
           timeout: float = 180) -> tuple[int, str, str]:
    """Run a child with stdout and stderr in files (no pipe a stray descendant could hold
    open); (exit status, stdout, stderr)."""
    out, err = logs.with_suffix(".out"), logs.with_suffix(".err")
    with out.open("w") as stdout, err.open("w") as stderr:
        code = subprocess.run(args, env=env, stdout=stdout, stderr=stderr, timeout=timeout,
                              check=False).returncode
    return code, out.read_text(), err.read_text()


def _load(model_dir: Path, device: str, env: dict[str, str], tmp_path: Path):
    result = tmp_path / f"result-{device}.json"
    code, stdout, stderr = _child([sys.executable, str(DRIVER), str(model_dir), device,
                                   str(result)], env, tmp_path / f"load-{device}")
    assert code == 0, stderr[-3000:]
    assert stdout == "", f"something printed on stdout: {stdout[:500]}"
    for noise in ORT_NOISE:
        assert noise not in stderr, stderr[-2000:]
    return json.loads(result.read_text()), _events(stderr)


# case -> (uses the cuDNN stubs, stub settings, what the reason must say)
CASES = {
    "no_device": (True, {"STUB_CUDA_DEVICES": "0"}, "the NVIDIA driver sees 0 CUDA devices"),
    "no_device_cuinit": (True, {"STUB_CUINIT_STATUS": "100"},
                         "cuInit status 100: no CUDA device is visible"),
    "old_driver": (True, {"STUB_CUDA_DRIVER_VERSION": "12040"},
                   ("the NVIDIA driver supports CUDA 12.4 but this onnxruntime needs CUDA "
                    "13.0: install driver R580 or newer")),
    "runtime_status_35": (True, {"STUB_CUDART_STATUS": "35"},
                          "cudaGetDeviceCount status 35: the NVIDIA driver is too old"),
    "no_cudnn": (False, {}, "cuDNN 9 is not installed (libcudnn.so.9"),
    "old_cudnn": (True, {"STUB_CUDNN_VERSION": "80907"},
                  "cuDNN 8.9.7 is installed but this onnxruntime needs cuDNN 9"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_probe_failure_falls_back_or_refuses(case, stubs, tiny_repository, tmp_path):
    with_cudnn, variables, reason = CASES[case]
    cuda_dir, cudnn_dir = stubs
    env = _env([cuda_dir, cudnn_dir] if with_cudnn else [cuda_dir], **variables)
    model_dir = tiny_repository / "tiny-lstm" / "1"

    result, events = _load(model_dir, "auto", env, tmp_path)
    assert result["provider"] == "CPUExecutionProvider"
    choices = [e for e in events if e.get("event") == "execution_provider"]
    assert len(choices) == 1
    assert choices[0]["level"] == "warning"        # a driver is there, so this is a fault
    assert reason in choices[0]["reason"] and "running on CPU" in choices[0]["reason"]
    assert not [e for e in events if e.get("event") == "execution_provider_fallback"]

    result, _ = _load(model_dir, "cuda", env, tmp_path)
    assert reason in result["unavailable"] and result["unavailable"].startswith("--device cuda")


def test_provider_failure_past_the_probe(stubs, tiny_repository, tmp_path):
    """Every library present and answering: the probe passes, ORT's CUDA provider then fails
    (the stub runtime cannot set a device). auto: one warning, CPU; cuda: refused."""
    env = _env(list(stubs))
    model_dir = tiny_repository / "tiny-gru" / "1"
    result, events = _load(model_dir, "auto", env, tmp_path)
    assert result == {"provider": "CPUExecutionProvider", "logits_shape": [2, 2]}
    choice = next(e for e in events if e.get("event") == "execution_provider")
    assert choice["provider"] == "CUDAExecutionProvider" and choice["cudnn"] == "9.10.0"
    fallbacks = [e for e in events if e.get("event") == "execution_provider_fallback"]
    assert len(fallbacks) == 1 and fallbacks[0]["level"] == "warning"
    assert "CUDA failure 999" in fallbacks[0]["reason"]
    assert "cudaSetDevice" in fallbacks[0]["reason"]

    result, _ = _load(model_dir, "cuda", env, tmp_path)
    assert "CUDA failure 999" in result["unavailable"]


def test_session_without_cuda_is_a_failure(monkeypatch, tiny_repository, capfd):
    """ORT asked for CUDA returns a CPU-only session when its provider library cannot load
    (no exception): that is treated as a failure, not served as if CUDA were on."""
    from rnnserve.server import runtime
    from rnnserve.server.cuda_probe import CudaProbe
    from rnnserve.server.settings import ServerSettings

    from rnnserve.repository import RepositoryMetadata

    if runtime.probe_cuda().usable:
        pytest.skip("CUDA works on this machine")
    monkeypatch.setattr(runtime, "_choices", {})
    monkeypatch.setattr(runtime, "probe_cuda",
                        lambda device_id=0: CudaProbe(usable=True, reason="pretend"))
    model_dir = tiny_repository / "tiny-lstm" / "1"
    meta = RepositoryMetadata.model_validate_json((model_dir / "metadata.json").read_text())
    with pytest.raises(runtime.RuntimeUnavailable, match="without the CUDA provider"):
        runtime.OnnxModel(model_dir / "model.onnx", meta, ServerSettings(device="cuda"),
                          max_batch_size=2)
    model = runtime.OnnxModel(model_dir / "model.onnx", meta, ServerSettings(device="auto"),
                              max_batch_size=2)
    assert model.provider == runtime.CPU
    assert runtime.select_provider("auto").provider == runtime.CPU   # later sessions: CPU
    out, err = capfd.readouterr()
    assert out == ""
    assert not any(noise in err for noise in ORT_NOISE), err[-2000:]


def test_int8_is_pinned_to_cpu(monkeypatch):
    from rnnserve.server.runtime import cpu_pin_reason
    from rnnserve.server.settings import ServerSettings

    from rnnserve.repository import RepositoryMetadata

    base = {"cell": "lstm", "vocab_size": 10, "embed_dim": 4, "hidden": 4, "layers": 1,
            "num_labels": 2, "labels": ["negative", "positive"], "opset": 17}
    settings = ServerSettings()
    assert cpu_pin_reason(RepositoryMetadata(**base), settings) == ""
    assert "DynamicQuantizeLSTM" in cpu_pin_reason(
        RepositoryMetadata(**base, precision="int8"), settings)
    fp16 = RepositoryMetadata(**base, precision="fp16")
    assert "fp16_cuda_validated" in cpu_pin_reason(fp16, settings)
    assert cpu_pin_reason(fp16, ServerSettings(allow_unverified_fp16=True)) == ""
    checked = RepositoryMetadata(**base, precision="fp16",
                                 validation={"fp16_cuda_validated": 1.0})
    assert cpu_pin_reason(checked, settings) == ""


def test_tf32_is_an_explicit_setting():
    from rnnserve.server.runtime import cuda_provider_options
    from rnnserve.server.settings import ServerSettings

    assert cuda_provider_options(ServerSettings())["use_tf32"] == "0"
    assert cuda_provider_options(ServerSettings(cuda_tf32=True))["use_tf32"] == "1"


def _serve(repository: Path, device: str) -> list[str]:
    return [sys.executable, "-m", "rnnserve.server", "--repository", str(repository),
            "--device", device, "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1"]


def _server_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "RNNSERVE_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}


def test_server_device_cuda_exits_with_the_reason(stubs, tiny_repository, tmp_path):
    code, stdout, stderr = _child(_serve(tiny_repository, "cuda"),
                                  _server_env(_env(list(stubs), STUB_CUDA_DEVICES="0")),
                                  tmp_path / "server")
    assert code == 1, stderr[-2000:]
    assert stdout == ""
    failed = [e for e in _events(stderr) if e.get("event") == "startup_failed"]
    assert len(failed) == 1 and "the NVIDIA driver sees 0 CUDA devices" in failed[0]["error"]
    assert "Traceback" not in stderr


def test_server_auto_serves_on_cpu_after_a_provider_failure(stubs, tiny_repository, tmp_path):
    """The real server, ORT's CUDA provider failing past the probe: it logs one fallback
    warning, reports CPU, answers, and shuts down cleanly; stdout stays empty."""
    out, err = tmp_path / "server.out", tmp_path / "server.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(_serve(tiny_repository, "auto"), stdout=stdout, stderr=stderr,
                                env=_server_env(_env(list(stubs))))
        try:
            deadline = time.monotonic() + 120
            ready = None
            while ready is None and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
                ready = next((e for e in _events(err.read_text())
                              if e.get("event") == "ready"), None)
            assert ready is not None, err.read_text()[-3000:]
            with grpc.insecure_channel(f"127.0.0.1:{ready['port']}") as channel:
                reply = sentiment_pb2_grpc.SentimentStub(channel).Classify(
                    sentiment_pb2.ClassifyRequest(model="tiny-lstm", texts=["a good film"]),
                    timeout=30)
            assert len(reply.predictions) == 1
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    logs = err.read_text()
    events = _events(logs)
    assert proc.returncode == 0
    assert out.read_text() == ""
    assert not any(noise in logs for noise in ORT_NOISE)
    fallbacks = [e for e in events if e.get("event") == "execution_provider_fallback"]
    assert len(fallbacks) == 1 and "CUDA failure 999" in fallbacks[0]["reason"]
    loaded = [e for e in events if e.get("event") == "model_loaded"]
    assert {e["provider"] for e in loaded} == {"CPUExecutionProvider"} and len(loaded) == 2


def test_precision_pins_apply_before_any_cuda_session(monkeypatch, tiny_repository, capfd):
    """With CUDA usable (the probe is made to say so): an int8 model runs on CPU and never
    tries CUDA (which would fail here, and under --device cuda stop the server); an fp16
    model without a GPU accuracy check is refused under --device cuda."""
    from rnnserve.server import runtime
    from rnnserve.server.cuda_probe import CudaProbe
    from rnnserve.server.settings import ServerSettings

    from rnnserve.repository import RepositoryMetadata

    if runtime.probe_cuda().usable:
        pytest.skip("CUDA works on this machine")
    monkeypatch.setattr(runtime, "_choices", {})
    monkeypatch.setattr(runtime, "_pinned_logged", set())
    monkeypatch.setattr(runtime, "probe_cuda",
                        lambda device_id=0: CudaProbe(usable=True, reason="pretend"))
    model_dir = tiny_repository / "tiny-lstm" / "1"
    meta = RepositoryMetadata.model_validate_json((model_dir / "metadata.json").read_text())
    cuda = ServerSettings(device="cuda")
    int8 = runtime.OnnxModel(model_dir / "model.onnx", meta.model_copy(update={
        "precision": "int8"}), cuda, max_batch_size=2)
    assert int8.provider == runtime.CPU and "DynamicQuantizeLSTM" in int8.pinned
    with pytest.raises(runtime.RuntimeUnavailable, match="fp16 arithmetic on CUDA"):
        runtime.OnnxModel(model_dir / "model.onnx", meta.model_copy(update={
            "precision": "fp16"}), cuda, max_batch_size=2)
    err = capfd.readouterr().err
    assert not any(noise in err for noise in ORT_NOISE)


@pytest.mark.parametrize("complete", [True, False])
def test_cudnn_found_next_to_a_preloaded_libcudnn(stubs, tmp_path, complete):
    """cuDNN from the nvidia-cudnn wheel is loaded by path (ORT's preload_dlls) and its folder
    is on no search path: the probe looks for cuDNN's parts next to it, and names a missing
    one."""
    cuda_dir, cudnn_dir = stubs
    wheel = tmp_path / "nvidia" / "cudnn" / "lib"
    wheel.mkdir(parents=True)
    parts = ["libcudnn.so.9", "libcudnn_ops.so.9"] + (["libcudnn_adv.so.9"] if complete else [])
    for name in parts:
        shutil.copy(cudnn_dir / name, wheel / name)
    code = ("import ctypes, json, sys\n"
            f"ctypes.CDLL({str(wheel / 'libcudnn.so.9')!r})\n"
            "from rnnserve.server.cuda_probe import probe_cuda\n"
            "report = probe_cuda()\n"
            "print(json.dumps([report.usable, report.reason]))\n")
    status, stdout, stderr = _child([sys.executable, "-c", code], _env([cuda_dir]),
                                    tmp_path / "probe")
    assert status == 0, stderr[-2000:]
    usable, reason = json.loads(stdout)
    if complete:
        assert usable and "cuDNN 9.10.0" in reason
    else:
        assert not usable and "cuDNN 9.10.0 is incomplete (libcudnn_adv.so.9" in reason
