"""The Helm chart (helm/ftray) and the example cluster files (cluster/): rendered, linted and
validated offline. helm-python-sdk embeds Helm's Go library, so no helm binary or cluster.
Core objects are checked with kubernetes-validate, KubeRay objects with ftray's own schemas of
the KubeRay v1 API (cluster/crds), then both with ftray's rules (non-root, limits, secrets)."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from functools import cache
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ftray"
KUBE_VERSION = "1.30.0"
# ftray's own JSON Schemas of the KubeRay ray.io/v1 kinds (see cluster/crds/README.md). Their pod
# templates, Services etc. $ref the Kubernetes definitions kubernetes-validate bundles, taken
# for the same Kubernetes version (and strictness) the core objects are checked against.
CRDS = ROOT / "cluster" / "crds"
K8S_DEFINITIONS = (
    Path(kubernetes_validate.__file__).parent
    / "kubernetes-json-schema"
    / f"v{KUBE_VERSION}-local-strict"
    / "_definitions.json"
)
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
    """The RayClusterSpec of a KubeRay object; {} for a RayJob on an existing cluster."""
    key = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}
    return doc["spec"] if key[doc["kind"]] is None else doc["spec"].get(key[doc["kind"]], {})


def pod_templates(doc: dict) -> dict[str, dict]:
    """Every pod template in a KubeRay resource, by a readable name."""
    spec = cluster_spec(doc)
    templates = {"head": spec["headGroupSpec"]["template"]} if spec else {}
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


@cache
def kuberay_schemas() -> tuple[Registry, dict[str, Path]]:
    """The registry that resolves every schema's $refs, and each kind's schema file."""
    k8s = Resource.from_contents(json.loads(K8S_DEFINITIONS.read_text()))
    registry = Registry().with_resource(k8s.id(), k8s)
    files = {}
    for path in sorted(CRDS.glob("*.schema.json")):
        schema = json.loads(path.read_text())
        # The schemas $ref each other by file name, as an editor opening them from disk would.
        registry = registry.with_resource(path.name, Resource.from_contents(schema))
        files[schema["properties"]["kind"]["const"]] = path
    return registry, files


def kuberay_problems(doc: dict) -> list[str]:
    """Where `doc` breaks ftray's schema of its KubeRay kind: `KIND $.json.path: message`."""
    registry, files = kuberay_schemas()
    if doc.get("kind") not in files:
        return [f"kind {doc.get('kind')!r}: no schema in {CRDS.relative_to(ROOT)}"]
    schema = registry.contents(files[doc["kind"]].name)
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    errors = sorted(validator.iter_errors(doc), key=lambda error: error.json_path)
    return [f"{doc['kind']} {error.json_path}: {error.message}" for error in errors]


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


def has_token_auth(env: list[dict] | None) -> bool:
    """RAY_AUTH_MODE=token, and RAY_AUTH_TOKEN from a Secret that must exist (not optional)."""
    found = {item["name"]: item for item in env or []}
    token = found.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
    mode = found.get("RAY_AUTH_MODE", {}).get("value")
    return mode == "token" and bool(token.get("name")) and not token.get("optional")


def ray_problems(doc: dict) -> list[str]:
    """A KubeRay object against its schema (cluster/crds), then against ftray's own rules.

    The rules read the object's structure, so they run once the schema passes.
    """
    schema_problems = kuberay_problems(doc)
    if schema_problems:
        return schema_problems
    problems = []
    spec = cluster_spec(doc)
    head = spec.get("headGroupSpec", {})
    exposed = head.get("serviceType", "ClusterIP") != "ClusterIP"
    if exposed and not all(has_token_auth(c.get("env")) for c in containers(doc)):
        problems.append(f"head serviceType {head['serviceType']} without Ray token auth")
    for group in spec.get("workerGroupSpecs") or []:
        name = group["groupName"]
        # Optional for KubeRay, but its default maxReplicas (2**31 - 1) lets autoscaling run away.
        for field in ("minReplicas", "maxReplicas"):
            if field not in group:
                problems.append(f"worker group {name}: {field} missing")
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
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
        if not has_token_auth(spec.get("autoscalerOptions", {}).get("env")):
            problems.append("autoscaler: no Ray token auth (it talks to the GCS)")
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
            if not has_token_auth(container.get("env")):
                problems.append(f"{label}: no Ray token auth (RAY_AUTH_MODE, RAY_AUTH_TOKEN)")
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
    assert {d["kind"] for d in docs} == {
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "RayCluster",
        "ServiceAccount",
    }
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


def test_ray_token_auth_is_on_by_default_in_every_ray_container(chart):
    docs, notes = render(chart, GPU_AND_SERVE | {"autoscaling": {"enabled": True}})
    rays = [d for d in docs if d["apiVersion"].startswith("ray.io/")]
    assert sorted(d["kind"] for d in rays) == ["RayCluster", "RayService"]
    for doc in rays:
        assert all(has_token_auth(c["env"]) for c in containers(doc)), doc["kind"]
        assert has_token_auth(cluster_spec(doc)["autoscalerOptions"]["env"]), doc["kind"]
    token = {e["name"]: e for e in containers(rays[0])[0]["env"]}["RAY_AUTH_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "ftray-ray-token", "key": "auth_token"}
    assert "export RAY_AUTH_TOKEN=" in notes and "export RAY_AUTH_MODE=token" in notes


def test_monitor_schedule_submits_ftray_monitor_as_an_admitted_ray_client(chart):
    values = {"monitorSchedule": {"enabled": True, "schedule": "*/30 * * * *"}}
    docs, _ = render(chart, values)
    assert [p for d in docs for p in manifest_problems(d)] == []
    cron = only(docs, "CronJob")
    assert cron["spec"]["schedule"] == "*/30 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    head = "http://ftray-head-svc:8265"
    assert container["command"] == [
        *("ray", "job", "submit", "--address", head, "--"),
        *("ftray", "monitor", "jobs/quickstart.yaml"),
    ]
    assert has_token_auth(container["env"])
    assert container["securityContext"]["runAsNonRoot"] is True
    # the head's NetworkPolicy admits the pod by its label
    head_policy = policies(docs)["head"]
    admitted = [
        peer.get("podSelector", {}).get("matchLabels")
        for rule in head_policy["spec"]["ingress"]
        for peer in rule.get("from", [])
    ]
    assert pod["metadata"]["labels"]["ftray.io/ray-client"] == "true"
    assert {"ftray.io/ray-client": "true"} in admitted
    assert "CronJob" not in {d["kind"] for d in render(chart)[0]}, "off by default"


def policies(docs: list[dict]) -> dict[str, dict]:
    """The NetworkPolicies by the node type they guard."""
    found = [doc for doc in docs if doc["kind"] == "NetworkPolicy"]
    return {doc["spec"]["podSelector"]["matchLabels"]["ray.io/node-type"]: doc for doc in found}


def test_network_policies_admit_only_ray_pods_and_the_allow_list(chart):
    docs, _ = render(chart)
    guarded = policies(docs)
    assert sorted(guarded) == ["head", "worker"]
    release = {"app.kubernetes.io/name": "ftray", "app.kubernetes.io/instance": "ftray"}
    cluster = only(docs, "RayCluster")["spec"]
    pods = {
        "head": cluster["headGroupSpec"]["template"]["metadata"]["labels"],
        "worker": cluster["workerGroupSpecs"][0]["template"]["metadata"]["labels"],
    }
    ports = {"head": {6379, 8265, 10001, 8000, 8080}, "worker": {8000, 8080}}
    for node_type, policy in guarded.items():
        assert k8s_problems(policy, "NetworkPolicy") == []
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert selector == release | {"ray.io/node-type": node_type}
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        ray_pods, allowed = policy["spec"]["ingress"]
        # The release's Ray pods carry the labels the first rule admits (on every port).
        assert ray_pods == {"from": [{"podSelector": {"matchLabels": release}}]}
        assert release.items() <= pods[node_type].items()
        assert {p["port"] for p in allowed["ports"]} == ports[node_type]
        operator = allowed["from"][0]["podSelector"]["matchLabels"]
        assert operator == {"app.kubernetes.io/name": "kuberay-operator"}
    peers = [{"ipBlock": {"cidr": "10.0.0.0/8"}}]
    docs, _ = render(chart, {"networkPolicy": {"allowFrom": peers}})
    assert all(p["spec"]["ingress"][1]["from"] == peers for p in policies(docs).values())
    docs, _ = render(chart, {"networkPolicy": {"allowFrom": []}})
    assert all(len(p["spec"]["ingress"]) == 1 for p in policies(docs).values()), "ray pods"
    docs, _ = render(chart, {"networkPolicy": {"enabled": False}})
    assert "NetworkPolicy" not in {d["kind"] for d in docs}


def test_a_load_balancer_renders_only_with_token_auth(chart):
    docs, _ = render(chart, {"head": {"serviceType": "LoadBalancer"}})
    cluster = only(docs, "RayCluster")
    assert cluster["spec"]["headGroupSpec"]["serviceType"] == "LoadBalancer"
    assert ray_problems(cluster) == []


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
        (
            {"rayAuth": {"enabled": False}, "head": {"serviceType": "LoadBalancer"}},
            "head.serviceType LoadBalancer exposes the Ray dashboard",
        ),
        (
            {"rayAuth": {"enabled": False}, "head": {"serviceType": "NodePort"}},
            "that needs rayAuth.enabled: true",
        ),
        ({"rayAuth": {"secretName": "s", "key": "k", "value": "hunter2"}}, "'value'"),
    ],
)
def test_bad_values_fail_the_install_with_a_clear_error(chart, values, expected):
    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as caught:
        chart.render(values, name="ftray")  # as `helm install` does: schema, then templates
    assert expected in str(caught.value)


BREAKS_REPORTED = (
    "head serviceType LoadBalancer without Ray token auth",
    "worker group cpu/ray-worker: no Ray token auth",
    "WANDB_API_KEY has a literal value",
    "worker group cpu: maxReplicas missing",
    "worker group gpu-a100: replicas outside [0, 4]",
    "worker group gpu-a100: no nvidia.com/gpu in limits",
    "worker group gpu-a100/ray-worker: may run as root",
    "head/ray-head: no cpu and memory limits",
)


def test_ftray_rules_catch_broken_manifests(chart):
    """ftray's own rules (beyond the schemas) can fail: each break is reported."""
    docs, _ = render(chart, GPU_AND_SERVE)
    cluster = copy.deepcopy(only(docs, "RayCluster"))
    head = cluster["spec"]["headGroupSpec"]
    head["serviceType"] = "LoadBalancer"
    head_container = head["template"]["spec"]["containers"][0]
    head_container["env"].append({"name": "WANDB_API_KEY", "value": "hunter2"})
    del head_container["resources"]["limits"]
    cpu, gpu = cluster["spec"]["workerGroupSpecs"]
    del cpu["maxReplicas"]
    cpu_env = cpu["template"]["spec"]["containers"][0]["env"]
    cpu_env[:] = [e for e in cpu_env if e["name"] != "RAY_AUTH_TOKEN"]
    gpu["replicas"] = 5
    gpu_pod = gpu["template"]["spec"]
    del gpu_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    del gpu_pod["securityContext"]["runAsNonRoot"]
    gpu_pod["containers"][0]["securityContext"]["runAsNonRoot"] = False
    assert kuberay_problems(cluster) == []
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


def test_kuberay_schemas_are_valid_and_every_ref_resolves():
    """A $ref to a missing definition would only fail when an object reaches it: look now."""
    registry, files = kuberay_schemas()
    assert sorted(files) == ["RayCluster", "RayJob", "RayService"]
    for path in files.values():
        schema = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        resolver = registry.resolver(base_uri=path.name)
        for ref in _refs(schema):
            resolver.lookup(ref)  # raises referencing.exceptions.Unresolvable


def _refs(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


def _head(doc: dict) -> dict:
    return cluster_spec(doc)["headGroupSpec"]


BROKEN_KUBERAY = [
    pytest.param(
        "raycluster.yaml",
        lambda d: _rename(d["spec"], "workerGroupSpecs", "workerGroupSpec"),
        "$.spec",
        "Additional properties are not allowed ('workerGroupSpec' was unexpected)",
        id="misspelled-field",
    ),
    pytest.param(
        "raycluster.yaml",
        lambda d: d["spec"].pop("headGroupSpec"),
        "$.spec",
        "'headGroupSpec' is a required property",
        id="no-headGroupSpec",
    ),
    pytest.param(
        "raycluster.yaml",
        lambda d: d["spec"]["autoscalerOptions"].update(upscalingMode="Fast"),
        "$.spec.autoscalerOptions.upscalingMode",
        "'Fast' is not one of ['Default', 'Aggressive', 'Conservative']",
        id="bad-upscalingMode",
    ),
    pytest.param(
        "raycluster.yaml",
        lambda d: d["spec"]["workerGroupSpecs"][1].pop("groupName"),
        "$.spec.workerGroupSpecs[1]",
        "'groupName' is a required property",
        id="no-groupName",
    ),
    pytest.param(
        "raycluster.yaml",
        lambda d: _head(d)["rayStartParams"].update({"num-cpus": 0}),
        "$.spec.headGroupSpec.rayStartParams['num-cpus']",
        "0 is not of type 'string'",
        id="rayStartParams-not-string",
    ),
    pytest.param(
        "rayjob.yaml",
        lambda d: d["spec"].update(submissionMode="K8sJob"),
        "$.spec.submissionMode",
        "'K8sJob' is not one of ['K8sJobMode', 'HTTPMode', 'InteractiveMode', 'SidecarMode']",
        id="bad-submissionMode",
    ),
    pytest.param(
        "rayjob.yaml",
        lambda d: d["spec"].update(shutdownAfterJobFinishes="yes"),
        "$.spec.shutdownAfterJobFinishes",
        "'yes' is not of type 'boolean'",
        id="string-for-boolean",
    ),
    pytest.param(
        "rayjob.yaml",
        lambda d: _rename(_head(d)["template"]["spec"]["containers"][0], "resources", "resourcez"),
        "$.spec.rayClusterSpec.headGroupSpec.template.spec.containers[0]",
        "Additional properties are not allowed ('resourcez' was unexpected)",
        id="pod-template-typo",
    ),
    pytest.param(
        "rayjob.yaml",
        lambda d: d.update(apiVersion="ray.io/v1alpha1"),
        "$.apiVersion",
        "'ray.io/v1' was expected",
        id="old-apiVersion",
    ),
    pytest.param(
        "rayservice.yaml",
        lambda d: d["spec"].update(serveConfigV2=yaml.safe_load(d["spec"]["serveConfigV2"])),
        "$.spec.serveConfigV2",
        "is not of type 'string'",
        id="serveConfigV2-as-mapping",
    ),
    pytest.param(
        "rayservice.yaml",
        lambda d: _head(d).update(serviceType="Public"),
        "$.spec.rayClusterConfig.headGroupSpec.serviceType",
        "'Public' is not one of ['ClusterIP', 'NodePort', 'LoadBalancer', 'ExternalName']",
        id="bad-serviceType",
    ),
]


@pytest.mark.parametrize(("example", "brk", "path", "message"), BROKEN_KUBERAY)
def test_kuberay_schemas_reject_a_broken_object_naming_the_path(example, brk, path, message):
    doc = yaml.safe_load((ROOT / "cluster" / "kuberay" / example).read_text())
    assert kuberay_problems(doc) == []
    brk(doc)
    (problem,) = kuberay_problems(doc)
    assert problem.startswith(f"{doc['kind']} {path}: ")
    assert message in problem
    assert ray_problems(doc) == [problem]


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
