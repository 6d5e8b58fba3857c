"""The Dockerfile: hadolint-clean, and built only from the scripts CI runs.

Static checks (lint, the stage layout, every install/start step a script that
test_deploy_scripts.py runs for real); test_deploy_image.py builds and runs the cpu image.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from deploy_helpers import ROOT, find_tool, settings_env_names

DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def _stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for word, rest in _instructions():
        if word == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            stages[current] = []
        elif current is not None:
            stages[current].append((word, rest))
    return stages


def test_hadolint_clean():
    done = subprocess.run([find_tool("hadolint"), str(DOCKERFILE)], capture_output=True,
                          text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_targets_exist():
    assert {"cpu", "gpu", "models", "cpu-bundled", "gpu-bundled"} <= set(_stages())
    assert list(_stages())[-1] == "default"  # `docker build .` gives the cpu image


def test_serve_images_share_the_python_base():
    """No CUDA base image: both serve targets (and the models stage) build on PYTHON_IMAGE."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE.read_text(), re.MULTILINE))
    assert args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    assert not [name for name in args if "CUDA" in name], args
    froms = {stage: rest.split()[0] for stage, rest in _froms()}
    for stage in ("cpu-build", "cpu", "gpu-build", "gpu", "models"):
        assert froms[stage] == "${PYTHON_IMAGE}", (stage, froms[stage])


def test_gpu_extras_bring_the_cuda_major_of_the_wheel():
    """onnxruntime-gpu[cuda,cudnn] (the gpu image's runtime) pulls the CUDA major it was
    built with from PyPI, so the image needs no CUDA base and only the host's driver."""
    info = pytest.importorskip("onnxruntime.capi.build_and_package_info")
    if getattr(info, "package_name", "") != "onnxruntime-gpu":
        pytest.skip("onnxruntime-gpu is not the installed runtime")
    from importlib.metadata import requires

    extras = [r for r in requires("onnxruntime-gpu") or [] if 'extra == "cuda"' in r]
    runtime = [r for r in extras if r.startswith("nvidia-cuda-runtime")]
    assert runtime, extras
    major = re.search(r"~=\s*(\d+)", runtime[0]).group(1)
    assert major == info.cuda_version.split(".")[0], (runtime, info.cuda_version)
    assert any('extra == "cudnn"' in r and "cudnn" in r for r in requires("onnxruntime-gpu"))


def _froms() -> list[tuple[str, str]]:
    """(stage name, FROM arguments) in file order."""
    result = []
    for word, rest in _instructions():
        if word == "FROM":
            name = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            result.append((name, rest))
    return result


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_serve_stage_shape(target):
    stage = {w: r for w, r in _stages()[target] if w != "RUN"}
    runs = [r for w, r in _stages()[target] if w == "RUN"]
    user = stage["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, "non-root, numeric (runAsNonRoot can check it)"
    assert stage["EXPOSE"].split() == ["8001", "8002"]
    assert "rnnserve.server.healthprobe" in stage["HEALTHCHECK"]
    assert stage["VOLUME"] == '["/models"]'
    assert "RNNSERVE_REPOSITORY=/models" in stage["ENV"]
    assert "start-server.sh" in stage["COPY"] and "rnnserve-start" in stage["ENTRYPOINT"]
    # Nothing is built in the final stage (no compilers, no pip): it copies the venv and
    # the native front-end made by the scripts in the build stage; besides making the user,
    # its one RUN adds the gRPC C++ runtime libraries that front-end links against.
    assert [r for r in runs if not r.startswith("groupadd")] == [
        "APT_CLEAN=1 /usr/local/lib/rnnserve/native-frontend.sh runtime"]


def test_every_install_step_is_a_script():
    scripts = []
    for _, rest in (i for i in _instructions() if i[0] == "RUN"):
        scripts += re.findall(r"/src/scripts/([\w-]+\.sh)", rest)
        assert ("/src/scripts/" in rest or rest.startswith(("apt-get", "groupadd"))
                or rest == "APT_CLEAN=1 /usr/local/lib/rnnserve/native-frontend.sh runtime"), rest
    assert set(scripts) == {"install-serve.sh", "install-train.sh", "build-default-models.sh",
                            "native-frontend.sh"}
    for name in scripts + ["start-server.sh"]:
        assert (ROOT / "scripts" / name).stat().st_mode & 0o111, f"{name} not executable"


def test_env_names_are_real_settings():
    names = settings_env_names()
    for word, rest in _instructions():
        if word == "ENV":
            for key in re.findall(r"(RNNSERVE_\w+)=", rest):
                assert key in names, f"Dockerfile sets unknown setting {key}"


def test_dockerignore_keeps_what_copy_needs():
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().split()
               if line.startswith("!")}
    for word, rest in _instructions():
        if word == "COPY" and "--from=" not in rest:
            for source in rest.split()[:-1]:
                top = source.split("/")[0]
                assert top in allowed, f"COPY {source} is excluded by .dockerignore"
