"""Run the real image with podman for the container tests (tests/deploy/test_deploy_image.py).

``Podman`` wraps the podman CLI with the containers.conf of scripts/containers-conf.sh (runc,
ulimits within the sandbox's limits). ``Container`` is one started container: it waits for
the image's own HEALTHCHECK (``podman healthcheck run``, since timed checks need systemd),
stops it like ``docker stop`` and returns the exit status, and removes itself on exit. Every
failure message carries the container's log, so a red CI run says what the server said.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Self

from deploy_helpers import ROOT, run_env

SCRIPTS = ROOT / "scripts"
# The k8s manifest's securityContext and volumes, as podman flags: read-only root
# filesystem, /tmp on tmpfs (emptyDir, 256Mi), uid/gid 10001, no capabilities, no
# privilege escalation. The stop timeout is the manifest's terminationGracePeriodSeconds.
MANIFEST_FLAGS = ["--read-only", "--tmpfs", "/tmp:rw,size=256m,mode=1777",
                  "--user", "10001:10001", "--cap-drop", "ALL",
                  "--security-opt", "no-new-privileges", "--stop-timeout", "60"]
_names = itertools.count()


class PodmanError(AssertionError):
    """A podman command failed (the message has its output)."""


class Podman:
    """The podman CLI with this repository's containers.conf."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("podman")
        if self.binary is None:
            raise PodmanError("podman not found: `make system-deps` installs it "
                              "(.ci/install-podman.sh)")
        conf = subprocess.run([str(SCRIPTS / "containers-conf.sh"),
                               str(workdir / "containers.conf")], capture_output=True,
                              text=True, check=True).stdout.strip()
        self.env = run_env() | {"CONTAINERS_CONF": conf}

    def run(self, *args: str, timeout: float = 120, check: bool = True
            ) -> subprocess.CompletedProcess:
        # stdin from /dev/null: podman with a terminal on stdin gets stopped (SIGTTIN) when
        # the test runs in a background job.
        done = subprocess.run([self.binary, *args], env=self.env, capture_output=True,
                              stdin=subprocess.DEVNULL, text=True, check=False,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise PodmanError(f"podman {' '.join(args)} -> {done.returncode}\n"
                              f"{done.stdout}\n{done.stderr}")
        return done

    def build(self, target: str, tag: str, timeout: float = 1500) -> str:
        """scripts/build-image.sh TARGET TAG (the `make image` path); returns its output."""
        done = subprocess.run([str(SCRIPTS / "build-image.sh"), target, tag], env=self.env,
                              capture_output=True, stdin=subprocess.DEVNULL, text=True,
                              check=False, timeout=timeout)
        if done.returncode != 0:
            raise PodmanError(f"build-image.sh {target} failed ({done.returncode}):\n"
                              f"{done.stdout[-6000:]}\n{done.stderr[-6000:]}")
        return done.stdout

    def container(self, image: str, *, env: dict[str, str], volumes: dict[Path, str],
                  ports: tuple[int, ...] = (8001, 8002)) -> Container:
        """Start ``image`` detached with the manifest's flags. ``ports`` are published on
        127.0.0.1 at ports podman picks (no race for a free port): ``Container.port``."""
        name = f"rnnserve-test-{os.getpid()}-{next(_names)}"
        self.run("rm", "--force", "--time", "0", name, check=False)
        flags = [*MANIFEST_FLAGS]
        for source, target in volumes.items():
            flags += ["--volume", f"{source}:{target}"]
        for inside in ports:
            flags += ["--publish", f"127.0.0.1::{inside}"]
        for key, value in env.items():
            flags += ["--env", f"{key}={value}"]
        self.run("run", "--detach", "--name", name, *flags, image)
        return Container(self, name)


class Container:
    """One running container, removed (forcefully) when the context exits."""

    def __init__(self, podman: Podman, name: str) -> None:
        self.podman = podman
        self.name = name
        self.exit_code: int | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.podman.run("rm", "--force", "--time", "0", self.name, check=False)

    def port(self, inside: int) -> int:
        """The host port (on 127.0.0.1) that ``inside`` is published at."""
        done = self.podman.run("port", self.name, f"{inside}/tcp")
        return int(done.stdout.strip().splitlines()[0].rpartition(":")[2])

    def logs(self) -> str:
        done = self.podman.run("logs", self.name, check=False)
        return done.stdout + done.stderr

    def running(self) -> bool:
        done = self.podman.run("inspect", "--format", "{{.State.Running}}", self.name,
                               check=False)
        return done.stdout.strip() == "true"

    def wait_healthy(self, timeout: float = 240) -> None:
        """Run the image's HEALTHCHECK until it passes (model loading and warm-up included)."""
        deadline = time.monotonic() + timeout
        while True:
            check = self.podman.run("healthcheck", "run", self.name, check=False, timeout=60)
            if check.returncode == 0:
                return
            if not self.running():
                raise PodmanError(f"{self.name} exited before it was healthy:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise PodmanError(f"{self.name} not healthy after {timeout:.0f} s "
                                  f"({check.stdout.strip()} {check.stderr.strip()}):\n"
                                  f"{self.logs()}")
            time.sleep(2)

    def stop(self, timeout: float = 60) -> int:
        """``podman stop`` (SIGTERM, SIGKILL after ``timeout``); returns the exit status."""
        self.podman.run("stop", "--time", str(int(timeout)), self.name, timeout=timeout + 60)
        done = self.podman.run("inspect", "--format", "{{.State.ExitCode}}", self.name)
        self.exit_code = int(done.stdout.strip())
        return self.exit_code
