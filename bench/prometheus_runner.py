"""Run a throw-away Prometheus (Debian's ``prometheus`` binary) against local targets.

Used by tests/metrics/ and ``bench/metrics_plots.py``. Invariants:
- it listens on 127.0.0.1 only, on a free port, with its TSDB in a directory the caller owns;
- scrape and rule evaluation intervals are the caller's (1 s by default) so tests are quick;
- :meth:`PrometheusRunner.stop` always reaps the process (terminate, then kill);
- the HTTP API is read with urllib only; query results are returned as plain dicts.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prometheus_binary() -> str | None:
    """Path of the prometheus binary, or None when it is not installed."""
    return shutil.which("prometheus")


class PrometheusError(RuntimeError):
    """Prometheus did not start, or its API answered with an error."""


class PrometheusRunner:
    """One Prometheus process scraping ``targets`` ("host:port") at ``/metrics``."""

    def __init__(self, targets: Sequence[str], workdir: Path, *, scrape_interval: str = "1s",
                 rule_files: Sequence[Path] = (), bearer_token: str | None = None,
                 binary: str | None = None) -> None:
        self.targets = list(targets)
        self.workdir = Path(workdir)
        self.scrape_interval = scrape_interval
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.bearer_token = bearer_token
        self.binary = binary or prometheus_binary()
        self.port = 0
        self._process: subprocess.Popen | None = None
        self.external_url: str | None = None

    @property
    def url(self) -> str:
        return self.external_url or f"http://127.0.0.1:{self.port}"

    @classmethod
    def attach(cls, url: str) -> PrometheusRunner:
        """A handle on an already running Prometheus at ``url`` (queries only; no start/stop)."""
        runner = cls([], Path(tempfile.gettempdir()))
        runner.external_url = url.rstrip("/")
        return runner

    def _config(self) -> str:
        # JSON is valid YAML: no YAML library needed.
        job = {"job_name": "rnnserve", "metrics_path": "/metrics",
               "scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval,
               "static_configs": [{"targets": self.targets}]}
        if self.bearer_token:
            job["authorization"] = {"type": "Bearer", "credentials": self.bearer_token}
        config = {"global": {"scrape_interval": self.scrape_interval,
                             "evaluation_interval": self.scrape_interval},
                  "rule_files": [str(p) for p in self.rule_files],
                  "scrape_configs": [job]}
        return json.dumps(config, indent=2)

    def start(self, timeout: float = 20.0) -> Self:
        if self.binary is None:
            raise PrometheusError("prometheus is not installed (.ci/install-prometheus.sh)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(self._config())
        log = open(self.workdir / "prometheus.log", "wb")  # noqa: SIM115 - lives with the process
        for _attempt in range(3):  # the free port can be taken between probe and bind
            self.port = free_port()
            self._process = subprocess.Popen(
                [self.binary, f"--config.file={config}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 "--storage.tsdb.retention.time=2h", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise PrometheusError(f"prometheus did not become ready; log: {self.log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        return False

    def log_tail(self, chars: int = 2000) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------ HTTP API

    def api(self, path: str, **params: object) -> dict | list:
        """GET /api/v1/<path>?params and return ``data`` (raises PrometheusError)."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as error:
            raise PrometheusError(f"{path} {params}: {error.read().decode()[:500]}") from error
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant vector: [{"metric": {...}, "value": [ts, "v"]}, ...]."""
        data = self.api("query", query=expr, time=at)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        """Range matrix: [{"metric": {...}, "values": [[ts, "v"], ...]}, ...]."""
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def scalar(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it has no result."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, predicate: Callable[[float], bool], timeout: float = 15.0,
                 interval: float = 0.25) -> float:
        """Poll ``expr`` until its single value satisfies ``predicate``; return that value."""
        deadline = time.monotonic() + timeout
        last: float | None = None
        while time.monotonic() < deadline:
            last = self.scalar(expr)
            if last is not None and predicate(last):
                return last
            time.sleep(interval)
        raise PrometheusError(f"timed out waiting for {expr!r} (last value {last})")
