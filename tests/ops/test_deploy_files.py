"""Checks of the container and Kubernetes files that need no container engine and no cluster."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pbx_edge.ops.config import ConfigError, EdgeConfig, parse_config

from .deploy_checks import KUBERNETES_VERSION, assert_hadolint_passes

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
MANIFESTS = sorted((ROOT / "cluster" / "edge").glob("*.yaml"))
SAMPLE_POD_IP = "10.0.3.17"


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in MANIFESTS:
        docs += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _one(kind: str) -> dict[str, Any]:
    (doc,) = [doc for _, doc in _documents() if doc["kind"] == kind]
    return doc


def _container() -> dict[str, Any]:
    (container,) = _one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = container
    return result


def _pod_environment() -> dict[str, str]:
    """The StatefulSet's environment as the kubelet would fill it for one pod."""
    field_values = {"metadata.name": "edge-0", "status.podIP": SAMPLE_POD_IP}
    environ = {}
    for item in _container()["env"]:
        if "value" in item:
            environ[item["name"]] = item["value"]
        else:
            environ[item["name"]] = field_values[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return environ


def _edge_yaml() -> dict[str, Any]:
    data = yaml.safe_load(_one("ConfigMap")["data"]["edge.yaml"])
    assert isinstance(data, dict)
    return data


def _edge_config() -> EdgeConfig:
    return parse_config(copy.deepcopy(_edge_yaml()), environ=_pod_environment())


# --- Dockerfile ----------------------------------------------------------------------------------
def test_hadolint_passes() -> None:
    assert_hadolint_passes(DOCKERFILE)


def test_dockerfile_essentials() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+) AS (\w+)", text, re.MULTILINE)
    assert [name for _, name in stages] == ["builder", "runtime"]
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert "python -I -m pbx_edge.media.native.build" in text
    assert re.search(r"^USER 10001", text, re.MULTILINE)
    assert "EXPOSE 5060/udp 5060/tcp 8080 9090" in text
    assert re.search(r"^HEALTHCHECK ", text, re.MULTILINE)
    assert "SMARTPBX_HEALTH_URL=http://127.0.0.1:8080/health" in text
    assert 'ENTRYPOINT ["smartpbx"]' in text
    assert 'CMD ["edge", "--config", "/etc/smartpbx/edge.yaml"]' in text
    ignored = (ROOT / ".dockerignore").read_text()
    assert "pbx_edge/media/native/_build/" in ignored


# --- Kubernetes manifests ------------------------------------------------------------------------
def test_manifests_present() -> None:
    kinds = {doc["kind"] for _, doc in _documents()}
    assert {"Namespace", "ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"} <= kinds


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_offline(path: Path) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            # Strict: an unknown field (a typo) fails. The schemas are files inside the package, so
            # nothing is fetched; a kind it has no schema for raises instead of passing silently.
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_validation_catches_a_typo() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    bad = copy.deepcopy(_one("StatefulSet"))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_configmap_is_a_valid_edge_config_with_the_pod_environment() -> None:
    config = _edge_config()
    assert config.node_id == "edge-0"
    assert config.sip.advertised_host == SAMPLE_POD_IP
    assert config.media.advertised_address == SAMPLE_POD_IP
    assert config.media.bind_host == "0.0.0.0"
    assert config.logging.format == "json"
    # Without the pod IP the file is rejected: media binds a wildcard address.
    with pytest.raises(ConfigError, match="advertised_address"):
        parse_config(copy.deepcopy(_edge_yaml()), environ={})


def test_statefulset_matches_the_config() -> None:
    config = _edge_config()
    sts = _one("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    container = _container()
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["terminationGracePeriodSeconds"] > config.shutdown.drain_timeout
    ports = {(p["containerPort"], p["protocol"]): p["name"] for p in container["ports"]}
    sip_port = config.sip.listen[0].port
    assert ports[(sip_port, "UDP")] and ports[(sip_port, "TCP")]
    assert ports[(config.admin.port, "TCP")] == "admin"
    assert ports[(config.metrics.port, "TCP")] == "metrics"
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "admin"}
    assert config.admin.host == "0.0.0.0"  # kubelet probes arrive on the pod IP
    assert container["resources"]["requests"] == container["resources"]["limits"]
    limit_mib = int(container["resources"]["limits"]["memory"].removesuffix("Gi")) * 1024
    assert config.resources.memory_watermark_mb is not None
    assert config.resources.memory_watermark_mb < limit_mib
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["config"] == "/etc/smartpbx"
    assert container["args"][-1] == "/etc/smartpbx/edge.yaml"
    assert _one("ConfigMap")["metadata"]["name"] == pod["volumes"][0]["configMap"]["name"]
    for url in (config.cdr.url, config.webhooks.outbox_url):
        assert url.startswith("sqlite:///" + mounts["data"])  # on the pod's volume


def test_service_is_headless_and_selects_the_pods() -> None:
    service = _one("Service")
    sts = _one("StatefulSet")
    assert service["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    namespaces = {doc["metadata"].get("namespace") for _, doc in _documents() if doc["kind"] != "Namespace"}
    assert namespaces == {_one("Namespace")["metadata"]["name"]}


def test_rtp_range_avoids_node_port_ranges() -> None:
    media = _edge_config().media
    assert not (media.port_start <= 32767 and media.port_end >= 30000)  # NodePort range
    assert media.port_end < 32768  # Linux default ephemeral range starts here
    assert media.port_start > 10259  # kubelet / kube-proxy / control-plane ports
