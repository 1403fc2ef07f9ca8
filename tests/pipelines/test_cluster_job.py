"""cluster/knowledge/: the knowledge job's KubeRay RayJob and its nightly CronJob, checked offline.

No cluster is reachable here: the built-in kinds are validated against the Kubernetes schemas that
kubernetes-validate ships, the RayJob against KubeRay's field names, and the job's own config and
command line against the code that will read them.
"""

from __future__ import annotations

import copy
import inspect
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.cli import build_parser
from pipelines.job import ExtractConfig
from tests.ai_serve.test_cluster_files import KUBERAY_FIELDS, KUBERNETES_VERSION

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "cluster" / "knowledge"
RAYJOB = FOLDER / "rayjob-knowledge.yaml"
CRONJOB = FOLDER / "cronjob.yaml"
NAMESPACE = "smartpbx-ai"

# KubeRay ray.io/v1 RayJobSpec (ray-operator/apis/ray/v1/rayjob_types.go)
RAYJOB_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML",
    "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
    "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend",
}  # fmt: skip


def _rayjob() -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]
    assert isinstance(doc, dict)
    return doc


def _cron_docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(CRONJOB.read_text()) if d}


def _pipeline_config() -> dict[str, Any]:
    raw = yaml.safe_load(_cron_docs()["ConfigMap"]["data"]["pipeline.yaml"])
    assert isinstance(raw, dict)
    return raw


def test_rayjob_is_one_kuberay_document_in_the_ai_namespace() -> None:
    job = _rayjob()
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["metadata"]["namespace"] == NAMESPACE
    assert "generateName" in job["metadata"] and "name" not in job["metadata"]  # one per submission
    spec = job["spec"]
    assert set(spec) <= RAYJOB_FIELDS, set(spec) - RAYJOB_FIELDS
    cluster = spec["rayClusterSpec"]
    levels = [("RayClusterSpec", cluster), ("AutoscalerOptions", cluster["autoscalerOptions"])]
    levels += [("HeadGroupSpec", cluster["headGroupSpec"])]
    levels += [("WorkerGroupSpec", g) for g in cluster["workerGroupSpecs"]]
    for type_name, value in levels:
        assert set(value) <= KUBERAY_FIELDS[type_name], (type_name, set(value) - KUBERAY_FIELDS[type_name])
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] == "K8sJobMode"
    assert cluster["rayVersion"] == "2.60.0"


def test_rayjob_pod_templates_validate_offline() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for n, template in enumerate(templates):
        wrapper = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"knowledge-{n}", "namespace": NAMESPACE},
            "template": copy.deepcopy(template),
        }
        kubernetes_validate.validate(wrapper, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("kind", ["ConfigMap", "ServiceAccount", "Role", "RoleBinding", "CronJob"])
def test_cronjob_file_validates_offline(kind: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    doc = _cron_docs()[kind]
    assert doc["metadata"]["namespace"] == NAMESPACE
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_entrypoint_is_our_command_for_yesterday() -> None:
    argv = shlex.split(_rayjob()["spec"]["entrypoint"])
    assert argv[:3] == ["smartpbx", "pipeline", "extract"]
    args = build_parser().parse_args(argv[2:])
    assert args.yesterday and args.config == "/etc/smartpbx/pipeline.yaml"
    head = _rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    config_volume = next(name for name, path in mounts.items() if path == str(Path(args.config).parent))
    assert volumes[config_volume]["configMap"]["name"] == _cron_docs()["ConfigMap"]["metadata"]["name"]
    assert Path(args.config).name in _cron_docs()["ConfigMap"]["data"]


def test_pipeline_config_is_valid_and_its_backends_accept_their_options() -> None:
    config = ExtractConfig.model_validate(_pipeline_config())
    assert config.store.startswith("s3://") and config.knowledge_base.url is not None
    assert config.extractor == "llm"
    from ai_serve.llm import create_chat_backend

    llm = dict(config.llm)
    create_chat_backend(llm.pop("backend"), **llm)  # an HTTP client: constructing it connects nowhere
    from ai_serve.embeddings.backends import SentenceTransformersEmbedder

    options = {k: v for k, v in config.embeddings.items() if k != "backend"}
    inspect.signature(SentenceTransformersEmbedder.__init__).bind(None, **options)  # no unknown option


def test_job_writes_where_the_retriever_reads_with_the_same_embedder() -> None:
    service = next(
        d for d in yaml.safe_load_all((ROOT / "cluster" / "ai" / "rayservice.yaml").read_text()) if d
    )
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    roles = next(app for app in serve_config["applications"] if app["name"] == "smartpbx-roles")
    retriever = roles["args"]["retriever"]
    pipeline = _pipeline_config()
    assert pipeline["knowledge_base"] == retriever["knowledge_base"]
    same = ("backend", "model_path", "query_prefix", "passage_prefix")
    assert {k: pipeline["embeddings"][k] for k in same} == {k: retriever["embeddings"][k] for k in same}


def test_cronjob_submits_the_rayjob_file_nightly_with_only_what_it_needs() -> None:
    docs = _cron_docs()
    cron = docs["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid" and cron["timeZone"] == "Etc/UTC"
    _minute, hour, *rest = cron["schedule"].split()
    assert rest == ["*", "*", "*"] and 0 <= int(hour) < 6  # nightly, after the day is over
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:3] == ["kubectl", "create", "-f"]
    mount = next(m for m in container["volumeMounts"] if container["command"][3].startswith(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert Path(container["command"][3]).name == RAYJOB.name  # the README's --from-file key
    assert volume["configMap"]["name"] == "smartpbx-knowledge-rayjob"
    assert f"--from-file={RAYJOB.name}=cluster/knowledge/{RAYJOB.name}" in CRONJOB.read_text()
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    (rule,) = docs["Role"]["rules"]
    assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"]
    assert "delete" not in rule["verbs"] and "create" in rule["verbs"]
    assert docs["RoleBinding"]["roleRef"]["name"] == docs["Role"]["metadata"]["name"]
