"""deploy/compose.yaml: valid Compose, and every file it mounts exists."""

from __future__ import annotations

import subprocess

import yaml
from deploy_helpers import ROOT, find_tool, settings_env_names

DEPLOY = ROOT / "deploy"
FILES = [DEPLOY / "compose.yaml", DEPLOY / "compose.gpu.yaml"]


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_spec_schema():
    done = subprocess.run([find_tool("check-jsonschema"), "--builtin-schema",
                           "vendor.compose-spec", *map(str, FILES)],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mounted_files_exist():
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith("${"):
                continue  # the model repository: the user's, chosen at run time
            assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"


def test_prometheus_scrapes_the_rnnserve_service():
    compose = _compose()
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]]
    assert "rnnserve:8002" in targets
    assert "8002" in " ".join(compose["services"]["rnnserve"]["ports"])


def test_grafana_gets_the_dashboard():
    grafana = _compose()["services"]["grafana"]
    assert any("rnnserve.json" in v for v in grafana["volumes"])


def test_ports_published_on_loopback_only():
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"


def test_env_names_are_real_settings():
    names = settings_env_names()
    for path in FILES:
        for service in yaml.safe_load(path.read_text())["services"].values():
            for key in service.get("environment", {}):
                if key.startswith("RNNSERVE_"):
                    assert key in names, f"{path.name}: unknown setting {key}"


def test_gpu_override_targets_the_gpu_image():
    gpu = yaml.safe_load((DEPLOY / "compose.gpu.yaml").read_text())["services"]["rnnserve"]
    assert gpu["build"]["target"] == "gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
