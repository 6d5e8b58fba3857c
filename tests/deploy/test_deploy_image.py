"""The real cpu image, built with podman and run as the k8s manifest runs it.

scripts/build-image.sh builds ``rnnserve:cpu`` once for this module (on the registry-free
debootstrap base when no registry serves python:3.11-slim; the base is reused while the
machine keeps it). The container gets the tiny test models as a read-only volume, the
manifest's environment and secrets, a read-only root filesystem, /tmp on tmpfs and uid
10001. From the host: the image's HEALTHCHECK, the text API, tritonclient, perf_analyzer and
a real Prometheus; then ``podman stop`` must drain and exit 0. Two containers behind one
round-robin channel: one drains while streams are open and every stream resumes on the
other with the documented client, each chunk answered once with the offline value.

Needs root podman with runc (``make system-deps``); skipped where podman is absent unless
RNNSERVE_REQUIRE_PODMAN=1 (.ci/run sets it, so CI fails instead of skipping).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import documented
import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from containers import Podman
from deploy_helpers import ROOT, load_all
from rnnserve.bench.prometheus_runner import PrometheusRunner, prometheus_binary
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc

pytestmark = [
    pytest.mark.skipif(
        shutil.which("podman") is None and os.environ.get("RNNSERVE_REQUIRE_PODMAN") != "1",
        reason="podman not installed (make system-deps)"),
    # The first test also builds the image: on a fresh machine the debootstrap base and the
    # pip downloads take minutes (the build itself stops at 25 minutes).
    pytest.mark.timeout(1800),
]

IMAGE = "localhost/rnnserve:cpu"
LSTM, GRU = "tiny-lstm", "tiny-gru"
TOKEN = "container-test-token-0123456789abcdef"
METRICS_TOKEN = "container-metrics-token-0123456789ab"
STATE_KEY = "container-test-state-key-0123456789"
SECRETS = "/var/run/secrets/rnnserve"
SENTENCES = ["a great film with fine actors", "the plot was boring and the ending awful",
             "not very good but the music was fun"]
PERF_ANALYZER = (Path(os.environ.get("RNNSERVE_TOOLS_DIR", ROOT / ".cache" / "tools"))
                 / "perf_analyzer" / "bin" / "perf_analyzer")


def manifest_env() -> dict[str, str]:
    """The container's environment in deploy/k8s/deployment.yaml."""
    (deployment,) = [d for d in load_all(ROOT / "deploy" / "k8s" / "deployment.yaml")
                     if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


@pytest.fixture(scope="module")
def podman(tmp_path_factory) -> Podman:
    return Podman(tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="module")
def cpu_image(podman) -> str:
    podman.build("cpu", IMAGE)
    return IMAGE


def _readable_copy(source: Path, target: Path) -> Path:
    """A copy uid 10001 can read (pytest's temporary directories are private to root)."""
    shutil.copytree(source, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


@pytest.fixture(scope="module")
def model_volume(tiny_repository, tmp_path_factory) -> Path:
    return _readable_copy(tiny_repository, tmp_path_factory.mktemp("volume") / "models")


@pytest.fixture(scope="module")
def secrets_volume(tmp_path_factory) -> Path:
    """The manifest's rnnserve-auth Secret: token, metrics-token, state-key."""
    directory = tmp_path_factory.mktemp("secrets") / "rnnserve"
    directory.mkdir()
    for name, value in {"token": TOKEN, "metrics-token": METRICS_TOKEN,
                        "state-key": STATE_KEY}.items():
        (directory / name).write_text(value + "\n")
    return _readable_copy(directory, directory.parent / "mounted")


@pytest.fixture(scope="module")
def served(podman, cpu_image, model_volume, secrets_volume):
    """One container with every setting of the manifest, healthy; (container, ports)."""
    container = podman.container(
        cpu_image, env=manifest_env(),
        volumes={model_volume: "/models:ro", secrets_volume: f"{SECRETS}:ro"})
    with container:
        container.wait_healthy()
        yield container, container.port(8001), container.port(8002)


def _bearer(token: str = TOKEN) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_image_runs_as_the_manifest_says(podman, served):
    container, _, _ = served
    inspect = podman.run("inspect", "--format",
                         "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}", container.name)
    assert inspect.stdout.split() == ["10001:10001", "true"]
    # The HEALTHCHECK survived the build (podman drops it without --format docker).
    health = podman.run("image", "inspect", "--format", "{{.HealthCheck.Test}}", IMAGE)
    assert "rnnserve.server.healthprobe" in health.stdout
    ids = podman.run("exec", container.name, "id", "-u").stdout.strip()
    assert ids == "10001"
    denied = podman.run("exec", container.name, "touch", "/opt/venv/x", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    # The manifest's two workers are two of the image's prebuilt C++ front-ends (the
    # default --frontend auto), and the model has two ORT sessions.
    log = container.logs()
    assert '"frontend": "native"' in log and log.count('"event": "native_frontend_started"') == 2
    assert '"instances": 2' in log, log


def test_text_api_from_the_host(served, offline):
    _, port, _ = served
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Classify(pb.ClassifyRequest(texts=SENTENCES, model=LSTM), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        for model in (LSTM, GRU):
            reply = stub.Classify(pb.ClassifyRequest(texts=SENTENCES, model=model),
                                  metadata=_bearer(), timeout=30)
            np.testing.assert_allclose([p.logits for p in reply.predictions],
                                       [offline[model].logits(t) for t in SENTENCES],
                                       atol=1e-5, rtol=0)
        chunks = [pb.StreamClassifyRequest(text=t, model=GRU if i == 0 else "",
                                           end=i == len(SENTENCES) - 1)
                  for i, t in enumerate(SENTENCES)]
        answers = list(stub.StreamClassify(iter(chunks), metadata=_bearer(), timeout=30))
    assert [a.chunk_index for a in answers] == [1, 2, 3] and answers[-1].end
    np.testing.assert_allclose([a.prediction.logits for a in answers],
                               offline[GRU].stream(SENTENCES), atol=1e-5, rtol=0)


def test_tritonclient_from_the_host(served, offline):
    _, port, _ = served
    headers = dict(_bearer())
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        assert client.is_server_ready(headers=headers)
        assert client.is_model_ready(LSTM, headers=headers)
        text = triton.InferInput("TEXT", [len(SENTENCES), 1], "BYTES")
        text.set_data_from_numpy(np.array([[s.encode()] for s in SENTENCES], dtype=object))
        result = client.infer(LSTM, [text], headers=headers)
        np.testing.assert_allclose(result.as_numpy("LOGITS"),
                                   [offline[LSTM].logits(t) for t in SENTENCES],
                                   atol=1e-5, rtol=0)
    finally:
        client.close()


@pytest.mark.skipif(not PERF_ANALYZER.is_file(),
                    reason=f"perf_analyzer not installed at {PERF_ANALYZER}")
def test_perf_analyzer_from_the_host(served):
    _, port, _ = served
    command = [
        "bash", str(ROOT / "bench" / "perf_analyzer.sh"), "--url", f"127.0.0.1:{port}",
        "--model", LSTM, "--mode", "sequence", "--concurrency", "1:2:1", "--stability", "1000",
        "--", "--measurement-mode", "count_windows", "--measurement-request-count", "50",
        "--max-trials", "10", "-H", f"authorization:Bearer {TOKEN}",
    ]
    env = {**os.environ, "RNNSERVE_SST2_DEV": "/nonexistent"}  # the shipped JSON
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env,
                          check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert not re.search(r"error|failed|unstable", output, re.IGNORECASE), output
    assert output.count("Successful request count:") == 2, output
    assert "Sequence count:" in output, output


@pytest.mark.skipif(prometheus_binary() is None,
                    reason="prometheus not installed (.ci/install-prometheus.sh)")
def test_prometheus_scrapes_the_container(served, tmp_path):
    _, port, metrics_port = served
    with PrometheusRunner([f"127.0.0.1:{metrics_port}"], tmp_path / "prometheus",
                          bearer_token=METRICS_TOKEN) as prometheus:
        prometheus.wait_for('up{job="rnnserve"}', lambda v: v == 1, timeout=60)
        m = f'model="{GRU}"'
        before = prometheus.scalar(f"sum(rnnserve_requests_total{{{m}}})") or 0.0
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = sentiment_pb2_grpc.SentimentStub(channel)
            for _ in range(5):
                stub.Classify(pb.ClassifyRequest(texts=SENTENCES, model=GRU),
                              metadata=_bearer(), timeout=30)
        prometheus.wait_for(f"sum(rnnserve_requests_total{{{m}}})",
                            lambda v: v == before + 5, timeout=60)
        (provider,) = prometheus.query(f"rnnserve_execution_provider_info{{{m}}}")
        assert provider["metric"]["provider"] == "CPUExecutionProvider", provider


def test_podman_stop_drains_and_exits_zero(served):
    """Last in this module: it ends the shared container."""
    container, _, _ = served
    assert container.stop() == 0, container.logs()
    log = container.logs()
    for event in ("signal", "draining", "stopped"):
        assert f'"event": "{event}"' in log, log


# ------------------------------------------------------------------ two containers, a drain
STREAMS = 4
CHUNKS = [f"chunk {i} the film was great fun" if i % 3 else "but the ending was awful"
          for i in range(1500)]


def test_streams_resume_on_the_other_container(podman, cpu_image, model_volume,
                                               secrets_volume, offline):
    classify_stream = documented.classify_stream()
    # The manifest's settings without the bearer token (the documented client sends none)
    # and without the drain delay (nothing routes by health here); same state key on both.
    env = {k: v for k, v in manifest_env().items() if k != "RNNSERVE_AUTH_TOKEN_FILE"}
    env["RNNSERVE_DRAIN_DELAY_SECONDS"] = "0"
    volumes = {model_volume: "/models:ro", secrets_volume: f"{SECRETS}:ro"}
    # The drained container runs the image's prebuilt native front-end (--frontend native):
    # its streams' drain trailers cross the C++ proxy, and the other container resumes them.
    native = env | {"RNNSERVE_FRONTEND": "native", "RNNSERVE_WORKERS": "1"}
    with podman.container(cpu_image, env=native, volumes=volumes, ports=(8001,)) as a, \
            podman.container(cpu_image, env=env, volumes=volumes, ports=(8001,)) as b:
        a.wait_healthy()
        b.wait_healthy()
        target = f"ipv4:127.0.0.1:{a.port(8001)},127.0.0.1:{b.port(8001)}"
        options = [("grpc.lb_policy_name", "round_robin")]
        with grpc.insecure_channel(target, options=options) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            # Ready means one backend is; round robin spreads calls only over the connected
            # ones, so give the other a moment, or every stream may land on b (both are
            # healthy already: connecting takes milliseconds).
            time.sleep(1.0)
            stub = sentiment_pb2_grpc.SentimentStub(channel)
            results: list[list] = [[] for _ in range(STREAMS)]
            errors: list[BaseException] = []

            def consume(index: int) -> None:
                try:
                    for response in classify_stream(stub, CHUNKS, model=GRU):
                        results[index].append(response)
                        time.sleep(0.004)   # a slow reader keeps the stream open for seconds
                except BaseException as error:   # noqa: BLE001 - reported below
                    errors.append(error)

            with ThreadPoolExecutor(STREAMS) as pool:
                for index in range(STREAMS):
                    pool.submit(consume, index)
                _wait_until_all_streams_answered(results, errors, 20)
                stopper = threading.Thread(target=a.stop)   # SIGTERM while streams are open
                stopper.start()
            stopper.join(timeout=120)
        assert a.exit_code == 0, a.logs()
        assert '"event": "draining"' in a.logs(), a.logs()
        assert '"frontend": "native"' in a.logs(), a.logs()
        assert b.running(), b.logs()
    assert not errors, f"{errors!r}\n--- drained container:\n{a.logs()}"
    expected = offline[GRU].stream(CHUNKS)
    resumed = 0
    for responses in results:
        assert [r.chunk_index for r in responses] == list(range(1, len(CHUNKS) + 1))
        assert responses[-1].end
        # A new call's first answer names the model: a resume (one at most: b never drains).
        resumes = sum(1 for i, r in enumerate(responses) if r.model and i > 0)
        assert resumes <= 1, resumes
        resumed += resumes
        np.testing.assert_allclose([r.prediction.logits for r in responses], expected,
                                   atol=1e-5, rtol=0)
    # Round robin put some of the streams on a (all of them if b was not ready yet).
    assert resumed, "no stream was resumed: the drain did not interrupt any stream"


def _wait_until_all_streams_answered(results, errors, count: int, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while min(len(r) for r in results) < count:
        assert not errors, errors
        assert time.monotonic() < deadline, f"streams stalled: {[len(r) for r in results]}"
        time.sleep(0.05)
    assert max(len(r) for r in results) < len(CHUNKS), "a stream ended before the drain"


# ------------------------------------------------------------------ the gpu image, opt-in
GPU_IMAGE = "localhost/rnnserve:gpu"
# Inside the gpu image: every shared library the CUDA libraries and ORT's CUDA provider
# need that the dynamic linker cannot find (with the nvidia-* wheel directories on its path,
# as onnxruntime.preload_dlls() arranges).
UNRESOLVED = r"""
import glob, json, os, re, subprocess
from pathlib import Path
import onnxruntime as ort
site = Path(ort.__file__).parent.parent
dirs = sorted(glob.glob(str(site / "nvidia" / "*" / "lib"))) + [str(site / "onnxruntime/capi")]
libs = sorted(glob.glob(str(site / "nvidia" / "*" / "lib" / "*.so*")))
libs.append(str(site / "onnxruntime/capi/libonnxruntime_providers_cuda.so"))
env = dict(os.environ, LD_LIBRARY_PATH=":".join(dirs))
missing = set()
for lib in libs:
    out = subprocess.run(["ldd", lib], capture_output=True, text=True, env=env).stdout
    missing.update(re.findall(r"^\s*(\S+) => not found", out, re.M))
print(json.dumps({"libraries": len(libs), "missing": sorted(missing)}))
"""


@pytest.mark.skipif(os.environ.get("RNNSERVE_GPU_IMAGE") != "1",
                    reason="RNNSERVE_GPU_IMAGE=1 only (builds a 2.9 GB image; not in CI)")
def test_gpu_image_lacks_only_the_driver(podman, model_volume, offline):
    import json

    podman.build("gpu", GPU_IMAGE, timeout=3600)
    probe = podman.run("run", "--rm", "--entrypoint", "python", GPU_IMAGE, "-c", UNRESOLVED)
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["libraries"] > 10 and report["missing"] == ["libcuda.so.1"], report
    for device in ("auto", "cuda"):
        container = podman.container(
            GPU_IMAGE, env={"RNNSERVE_DEVICE": device, "RNNSERVE_DRAIN_DELAY_SECONDS": "0"},
            volumes={model_volume: "/models:ro"})
        with container:
            if device == "cuda":   # the image's default: no driver, so it must refuse
                deadline = time.monotonic() + 120
                while container.running() and time.monotonic() < deadline:
                    time.sleep(1)
                assert not container.running(), container.logs()
                assert "libcuda.so.1" in container.logs(), container.logs()
                continue
            container.wait_healthy()
            choices = [line for line in container.logs().splitlines()
                       if '"event": "execution_provider"' in line]
            assert len(choices) == 1, container.logs()
            assert '"provider": "CPUExecutionProvider"' in choices[0], choices
            assert "libcuda.so.1" in choices[0], choices
            with grpc.insecure_channel(f"127.0.0.1:{container.port(8001)}") as channel:
                reply = sentiment_pb2_grpc.SentimentStub(channel).Classify(
                    pb.ClassifyRequest(texts=SENTENCES, model=LSTM), timeout=30)
            np.testing.assert_allclose([p.logits for p in reply.predictions],
                                       [offline[LSTM].logits(t) for t in SENTENCES],
                                       atol=1e-5, rtol=0)
            assert container.stop() == 0, container.logs()
