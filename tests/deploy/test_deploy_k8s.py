"""deploy/k8s: schema-valid manifests that agree with each other and with the server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_helpers import ROOT, find_tool, load_all, settings_env_names

K8S = ROOT / "deploy" / "k8s"
SCHEMAS = Path(__file__).parent / "schemas"
# The oldest Kubernetes the manifests promise to work on, and the newest schema shipped.
VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
CRD_SCHEMAS = {"ServiceMonitor": "servicemonitor.json", "DestinationRule": "destinationrule.json"}


def _manifests() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name in {"kustomization.yaml", "values.yaml"}:
            continue
        docs += [(path, doc) for doc in load_all(path)]
    return docs


def _kind(kind: str) -> dict:
    [doc] = [d for _, d in _manifests() if d["kind"] == kind and "routing" not in str(_)]
    return doc


def test_yamllint():
    done = subprocess.run([find_tool("yamllint"), "-c", str(ROOT / "scripts" / "yamllint.yaml"),
                           str(ROOT / "deploy")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("version", VERSIONS)
def test_builtin_kinds_validate_strictly(version):
    checked = 0
    for path, doc in _manifests():
        if doc["kind"] in CRD_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name} {doc['kind']}: {exc.message} at {list(exc.path)}")
        checked += 1
    assert checked >= 8


def test_custom_resources_validate():
    seen = set()
    for path, doc in _manifests():
        if doc["kind"] in CRD_SCHEMAS:
            schema = json.loads((SCHEMAS / CRD_SCHEMAS[doc["kind"]]).read_text())
            jsonschema.validate(doc, schema)
            seen.add(doc["kind"])
    assert seen == set(CRD_SCHEMAS)


def test_kustomization_lists_every_top_level_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_pod_is_locked_down():
    pod = _kind("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's USER
    assert pod["automountServiceAccountToken"] is False
    [container] = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True


def test_probes_use_grpc_health_on_the_grpc_port():
    [container] = _kind("Deployment")["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8001, "metrics": 8002}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe


def test_env_names_are_real_settings():
    [container] = _kind("Deployment")["spec"]["template"]["spec"]["containers"]
    names = settings_env_names()
    for env in container["env"]:
        assert env["name"] in names, f"unknown setting {env['name']}"


def test_shutdown_fits_in_the_termination_grace_period():
    pod = _kind("Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: float(e["value"]) for e in pod["containers"][0]["env"]
           if e["name"] in {"RNNSERVE_DRAIN_DELAY_SECONDS", "RNNSERVE_GRACE_SECONDS"}}
    assert sum(env.values()) < pod["terminationGracePeriodSeconds"]


def test_selectors_match_the_pods():
    labels = _kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = [_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                 _kind("NetworkPolicy")["spec"]["podSelector"]["matchLabels"]]
    selectors += [d["spec"]["selector"] for _, d in _manifests() if d["kind"] == "Service"]
    for selector in selectors:
        assert selector.items() <= labels.items()
    monitor = _kind("ServiceMonitor")["spec"]
    scraped = [d for _, d in _manifests() if d["kind"] == "Service"
               and monitor["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()]
    assert len(scraped) == 1, "exactly one Service is scraped (no duplicate series)"
    assert monitor["endpoints"][0]["port"] in {p["name"] for p in scraped[0]["spec"]["ports"]}


def test_hpa_metrics_exist_and_the_adapter_serves_them():
    hpa = _kind("HorizontalPodAutoscaler")["spec"]
    pods_metrics = {m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"}
    assert "rnnserve_pending_requests" in pods_metrics
    telemetry = (ROOT / "server" / "telemetry.py").read_text()
    adapter = yaml.safe_load((K8S / "adapter" / "values.yaml").read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    for name in pods_metrics:
        assert f'"{name}"' in telemetry, f"{name} is not a metric rnnserve exports"
        assert name in served, f"prometheus-adapter does not serve {name}"


def test_sequence_routing_header_is_documented():
    [rule] = [d for p, d in _manifests() if d["kind"] == "DestinationRule"]
    header = rule["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"]["httpHeaderName"]
    assert header in (ROOT / "docs" / "deployment.md").read_text()
