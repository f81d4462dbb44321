"""The Helm chart (helm/ftray) and the example cluster files (cluster/): rendered, linted and
validated offline. helm-python-sdk embeds Helm's Go library, so no helm binary or cluster."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ftray"
KUBE_VERSION = "1.30.0"
SECRET_ENV = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)

GPU_AND_SERVE = yaml.safe_load("""
autoscaling: {enabled: false}
workerGroups:
  - name: cpu
    minReplicas: 0
    maxReplicas: 2
    resources: {requests: {cpu: "2", memory: 8Gi}, limits: {cpu: "2", memory: 8Gi}}
  - name: gpu-a100
    minReplicas: 0
    maxReplicas: 4
    gpus: 8
    nodeSelector: {nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}
    tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
    resources: {requests: {cpu: "32", memory: 400Gi}, limits: {cpu: "32", memory: 400Gi}}
rayService:
  enabled: true
  args: {job_spec: jobs/support.yaml}
  workerGroups:
    - name: serve-gpu
      minReplicas: 1
      maxReplicas: 3
      gpus: 1
      resources: {requests: {cpu: "8", memory: 32Gi}, limits: {cpu: "8", memory: 32Gi}}
""")


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart, values=None) -> tuple[list[dict], str]:
    """Rendered manifests as dicts, and the NOTES text, for release `ftray` in `ml`."""
    rendered = chart.render(values, name="ftray", namespace="ml")
    notes = rendered.pop("ftray/templates/NOTES.txt")
    docs = [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]
    return docs, notes


def only(docs: list[dict], kind: str) -> dict:
    (found,) = [doc for doc in docs if doc["kind"] == kind]
    return found


def cluster_spec(doc: dict) -> dict:
    key = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}
    return doc["spec"] if key[doc["kind"]] is None else doc["spec"][key[doc["kind"]]]


def pod_templates(doc: dict) -> dict[str, dict]:
    """Every pod template in a KubeRay resource, by a readable name."""
    spec = cluster_spec(doc)
    templates = {"head": spec["headGroupSpec"]["template"]}
    for group in spec.get("workerGroupSpecs") or []:
        templates[f"worker group {group['groupName']}"] = group["template"]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        templates["submitter"] = doc["spec"]["submitterPodTemplate"]
    return templates


def k8s_problems(doc: dict, where: str) -> list[str]:
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{where}: {error.message} at {list(error.path)}"]
    return []


def env_problems(node, where: str) -> list[str]:
    """Secret-looking env vars must come from a Secret, never a literal value."""
    problems = []
    if isinstance(node, dict):
        if "name" in node and "value" in node and SECRET_ENV.search(str(node["name"])):
            problems.append(f"{where}: {node['name']} has a literal value")
        for key, child in node.items():
            problems += env_problems(child, f"{where}.{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            problems += env_problems(child, f"{where}[{i}]")
    return problems


def ray_problems(doc: dict) -> list[str]:
    """What kubernetes-validate cannot check on KubeRay CRDs: structure and ftray's rules."""
    problems = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion {doc.get('apiVersion')!r}, want ray.io/v1")
    spec = cluster_spec(doc)
    head = spec.get("headGroupSpec", {})
    if head.get("serviceType", "ClusterIP") != "ClusterIP":
        problems.append(f"head serviceType {head['serviceType']}, want ClusterIP")
    if not isinstance(head.get("rayStartParams"), dict):
        problems.append("headGroupSpec.rayStartParams missing")
    for group in spec.get("workerGroupSpecs") or []:
        name = group.get("groupName", "?")
        for field in ("groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            if field not in group:
                problems.append(f"worker group {name}: {field} missing")
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 0)
        if not low <= group.get("replicas", low) <= high:
            problems.append(f"worker group {name}: replicas outside [{low}, {high}]")
        if "gpu" in name:
            limits = [
                c.get("resources", {}).get("limits", {})
                for c in group["template"]["spec"]["containers"]
            ]
            if not any(int(lim.get("nvidia.com/gpu", 0)) > 0 for lim in limits):
                problems.append(f"worker group {name}: no nvidia.com/gpu in limits")
    if spec.get("enableInTreeAutoscaling"):
        resources = spec.get("autoscalerOptions", {}).get("resources", {})
        if not (resources.get("requests") and resources.get("limits")):
            problems.append("autoscaler container without requests and limits")
    for where, template in pod_templates(doc).items():
        pod = template["spec"]
        for container in pod["containers"]:
            label = f"{where}/{container['name']}"
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(resources.get(kind, {})):
                    problems.append(f"{label}: no cpu and memory {kind}")
            context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
            if context.get("runAsNonRoot") is not True or context.get("runAsUser", 0) == 0:
                problems.append(f"{label}: may run as root")
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{label}: allowPrivilegeEscalation is not false")
            if "ALL" not in context.get("capabilities", {}).get("drop", []):
                problems.append(f"{label}: capabilities not dropped")
        # The pod templates themselves are core Kubernetes objects.
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
        problems += k8s_problems({**pod_template, "template": template}, where)
    return problems + env_problems(doc, doc["kind"])


def manifest_problems(doc: dict) -> list[str]:
    if doc["apiVersion"].startswith("ray.io/"):
        return ray_problems(doc)
    problems = env_problems(doc, doc["kind"])
    if doc["kind"] == "Secret":
        problems.append("a Secret with values in the manifests")
    if doc["kind"] == "Service" and doc["spec"].get("type", "ClusterIP") != "ClusterIP":
        problems.append(f"Service {doc['metadata']['name']} is {doc['spec']['type']}")
    return problems + k8s_problems(doc, doc["kind"])


def containers(doc: dict) -> list[dict]:
    return [c for t in pod_templates(doc).values() for c in t["spec"]["containers"]]


def test_default_values_render_a_valid_cpu_cluster(chart):
    docs, notes = render(chart)
    assert {d["kind"] for d in docs} == {"PersistentVolumeClaim", "RayCluster", "ServiceAccount"}
    assert [p for d in docs for p in manifest_problems(d)] == []
    cluster = only(docs, "RayCluster")
    assert cluster["metadata"]["name"] == "ftray"
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    for container in containers(cluster):
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["storage"] == "/mnt/ftray"
        env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in container["env"]}
        # optional: without a key W&B logs offline.
        wandb = {"name": "ftray-secrets", "key": "WANDB_API_KEY", "optional": True}
        assert env["WANDB_API_KEY"] == wandb
        assert env["HF_TOKEN"]["name"] == "ftray-secrets"
    assert f"svc/{cluster['metadata']['name']}-head-svc 8265:8265" in notes
    submit = "ray job submit --address http://127.0.0.1:8265 --working-dir . -- ftray run"
    assert f"{submit} jobs/quickstart.yaml" in notes


def test_gpu_groups_and_rayservice_render_valid(chart):
    docs, notes = render(chart, GPU_AND_SERVE)
    assert [p for d in docs for p in manifest_problems(d)] == []
    cluster = only(docs, "RayCluster")
    assert cluster["spec"]["enableInTreeAutoscaling"] is False
    assert "autoscalerOptions" not in cluster["spec"]
    gpu = cluster["spec"]["workerGroupSpecs"][1]
    assert (gpu["groupName"], gpu["minReplicas"], gpu["maxReplicas"]) == ("gpu-a100", 0, 4)
    pod = gpu["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 8
    cpu_limits = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu_limits["resources"]["limits"]
    service = only(docs, "RayService")
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert app["import_path"] == "ftray.serve.app:build_app"
    assert app["args"] == {"job_spec": "jobs/support.yaml"}
    assert f"svc/{service['metadata']['name']}-serve-svc" in notes


def test_object_storage_reads_credentials_from_a_secret(chart):
    values = yaml.safe_load(
        "storage: {type: object, object: {uri: s3://bucket/ftray, existingSecret: s3-creds}}"
    )
    docs, _ = render(chart, values)
    assert "PersistentVolumeClaim" not in {d["kind"] for d in docs}
    for container in containers(only(docs, "RayCluster")):
        assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
        assert {"name": "FTRAY_STORAGE", "value": "s3://bucket/ftray"} in container["env"]


def test_chart_lints_clean():
    for values in (None, GPU_AND_SERVE):
        report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


GOOD_GROUP = GPU_AND_SERVE["workerGroups"][0]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"workerGroups": [GOOD_GROUP | {"minReplicas": "two"}]},
            "minReplicas': got string, want integer",
        ),
        ({"secrets": {"wandb": {"secretName": "s", "key": "k", "value": "hunter2"}}}, "'value'"),
        ({"head": {"serviceType": "Public"}}, "/head/serviceType"),
        ({"workerGroups": [GOOD_GROUP | {"minReplicas": 3}]}, '"cpu": minReplicas (3) is above'),
    ],
)
def test_bad_values_fail_the_install_with_a_clear_error(chart, values, expected):
    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as caught:
        chart.render(values, name="ftray")  # as `helm install` does: schema, then templates
    assert expected in str(caught.value)


BREAKS_REPORTED = (
    "LoadBalancer",
    "WANDB_API_KEY has a literal value",
    "no nvidia.com/gpu in limits",
    "may run as root",
    "no cpu and memory limits",
    "'resourcez' was unexpected",
)


def test_checks_catch_broken_manifests(chart):
    """The checks above can fail: each break is reported."""
    docs, _ = render(chart, GPU_AND_SERVE)
    cluster = copy.deepcopy(only(docs, "RayCluster"))
    head = cluster["spec"]["headGroupSpec"]
    head["serviceType"] = "LoadBalancer"
    head["template"]["spec"]["containers"][0]["env"].append(
        {"name": "WANDB_API_KEY", "value": "hunter2"}
    )
    gpu_pod = cluster["spec"]["workerGroupSpecs"][1]["template"]["spec"]
    del gpu_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    del gpu_pod["securityContext"]["runAsNonRoot"]
    gpu_pod["containers"][0]["securityContext"]["runAsNonRoot"] = False
    gpu_pod["containers"][0]["resourcez"] = gpu_pod["containers"][0].pop("resources")
    problems = "\n".join(ray_problems(cluster))
    for expected in BREAKS_REPORTED:
        assert expected in problems
    secret = yaml.safe_load(
        "{apiVersion: v1, kind: Secret, metadata: {name: s}, data: {HF_TOKEN: eA==}}"
    )
    assert manifest_problems(secret) == ["a Secret with values in the manifests"]


KUBERAY_FILES = sorted((ROOT / "cluster" / "kuberay").glob("*.yaml"))


@pytest.mark.parametrize("path", KUBERAY_FILES, ids=lambda p: p.name)
def test_kuberay_examples_are_valid(path):
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs
    assert [p for d in docs for p in manifest_problems(d)] == []


def test_kuberay_examples_cover_cluster_job_and_service():
    kinds = {p.name: yaml.safe_load(p.read_text()) for p in KUBERAY_FILES}
    assert sorted(d["kind"] for d in kinds.values()) == ["RayCluster", "RayJob", "RayService"]
    job = kinds["rayjob.yaml"]["spec"]
    assert job["entrypoint"] == "ftray run jobs/quickstart.yaml"
    assert job["shutdownAfterJobFinishes"] is True
    assert isinstance(job["ttlSecondsAfterFinished"], int)
    serve = yaml.safe_load(kinds["rayservice.yaml"]["spec"]["serveConfigV2"])
    assert serve["applications"][0]["import_path"] == "ftray.serve.app:build_app"


LAUNCHER_FILES = sorted((ROOT / "cluster" / "launcher").glob("*.yaml"))


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_configs_have_a_head_gpu_workers_and_install_ftray(path):
    config = yaml.safe_load(path.read_text())
    required = "cluster_name provider max_workers available_node_types head_node_type"
    assert {*required.split(), "setup_commands"} - set(config) == set()
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = {n: t for n, t in types.items() if n != config["head_node_type"]}
    for name, node in workers.items():
        assert 0 <= node["min_workers"] <= node["max_workers"] <= config["max_workers"], name
    gpu_instance = re.compile(r"^(g|p)\d")
    assert any(gpu_instance.match(t["node_config"]["InstanceType"]) for t in workers.values())
    assert any("pip install" in c and "ftray" in c for c in config["setup_commands"])
    assert "0.0.0.0" not in " ".join(config["head_start_ray_commands"])
    assert env_problems(config, path.name) == []


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_configs_match_rays_schema(path):
    ray_spec = importlib.util.find_spec("ray")  # locates ray without importing it
    if ray_spec is None or not ray_spec.submodule_search_locations:
        pytest.skip("ray is not installed: no cluster-launcher schema to check against")
    schema = Path(ray_spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    validator = jsonschema.Draft7Validator(json.loads(schema.read_text()))
    errors = validator.iter_errors(yaml.safe_load(path.read_text()))
    assert [f"{list(e.path)}: {e.message}" for e in errors] == []
