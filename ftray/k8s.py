"""`ftray submit --k8s`: a KubeRay `RayJob` built from the job spec, created and followed.

The job runs `ftray STAGE JOB.yaml` from the image's copy of the repo (`/home/ray/ftray`,
see cluster/Dockerfile): ship job specs and data in the image, or reference data on shared
storage. Either on an existing RayCluster (`--cluster`), or on an ephemeral one sized from
`train.scaling` that KubeRay deletes when the job ends.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path

from ftray.errors import UserError
from ftray.progress import Progress
from ftray.spec import JobSpec
from ftray.specload import load_spec

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
RAY_VERSION = "2.60.0"
IMAGE_WORKDIR = "/home/ray/ftray"
DEFAULT_IMAGE = "ghcr.io/ftray/ftray:0.1.0"
SECRETS = "ftray-secrets"
# Ray token auth (RAY_AUTH_MODE=token) on every Ray pod and the submitter; the token lives in
# this Secret under KubeRay's key name (the Helm chart's default too).
RAY_TOKEN_SECRET, RAY_TOKEN_KEY = "ftray-ray-token", "auth_token"
# The label the Helm chart's NetworkPolicy admits to a Ray head besides the Ray pods.
RAY_CLIENT_LABEL = {"ftray.io/ray-client": "true"}
_POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 100,
    "fsGroup": 100,
    "seccompProfile": {"type": "RuntimeDefault"},
}
_CONTAINER_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


def rayjob_manifest(
    spec: JobSpec,
    job: str,
    overrides: list[str],
    *,
    stage: str = "run",
    namespace: str = "default",
    cluster: str | None = None,
    image: str | None = None,
) -> dict:
    """The RayJob object for one job spec (plain data, ready for the Kubernetes API)."""
    words = ["ftray", stage, Path(job).as_posix()]
    words += [word for item in overrides for word in ("--set", item)]
    stamp = time.strftime("%Y%m%d%H%M%S")
    name = re.sub(r"[^a-z0-9-]", "-", f"ftray-{spec.project[:20]}-{stage}-{stamp}").strip("-")
    body: dict = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RayJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "ftray", "ftray/project": spec.project},
        },
        "spec": {
            "entrypoint": shlex.join(words),
            "runtimeEnvYAML": json.dumps({"working_dir": IMAGE_WORKDIR}),
            "backoffLimit": 0,
            "metadata": {"ftray_project": spec.project, "ftray_stage": stage},
        },
    }
    image = image or DEFAULT_IMAGE
    # The submitter carries the cluster's token to its Jobs API.
    body["spec"]["submitterPodTemplate"] = _pod("ray-job-submitter", image, "500m", "1Gi", 0, False)
    if cluster:
        body["spec"]["clusterSelector"] = {"ray.io/cluster": cluster}
    else:
        body["spec"]["shutdownAfterJobFinishes"] = True
        body["spec"]["ttlSecondsAfterFinished"] = 600
        body["spec"]["rayClusterSpec"] = _cluster_spec(spec, image)
    return body


def submit_rayjob(
    job: str,
    overrides: list[str],
    progress: Progress,
    *,
    stage: str = "run",
    namespace: str = "default",
    cluster: str | None = None,
    image: str | None = None,
    dry_run: bool = False,
    follow: bool = True,
) -> int:
    """Create the RayJob for `ftray STAGE JOB` (or print it, `dry_run`) and, with `follow`,
    follow it to the end; the exit code is the job's."""
    spec = load_spec(job, overrides)
    body = rayjob_manifest(
        spec, job, overrides, stage=stage, namespace=namespace, cluster=cluster, image=image
    )
    if dry_run:
        import yaml

        print(yaml.safe_dump(body, sort_keys=False), end="")
        return 0
    api = _custom_objects_api()
    from kubernetes.client.exceptions import ApiException

    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    except ApiException as err:
        raise UserError(
            f"Kubernetes refused RayJob {body['metadata']['name']}: {err.status} {err.reason}. "
            f"{_hint(err.status)}"
        ) from None
    name = body["metadata"]["name"]
    progress.note(f"created RayJob {namespace}/{name}: {body['spec']['entrypoint']}")
    if not follow:
        progress.note(f"follow it with `kubectl get rayjob -n {namespace} {name} -w`")
        return 0
    return follow_rayjob(api, namespace, name, progress)


def follow_rayjob(api, namespace: str, name: str, progress: Progress, poll: float = 5) -> int:
    """Print the RayJob's status changes until it ends; 0 when its Ray job succeeded."""
    seen = None
    while True:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        status = obj.get("status") or {}
        now = (status.get("jobDeploymentStatus"), status.get("jobStatus"))
        if now != seen:
            progress.note(f"RayJob {name}: deployment {now[0] or '-'}, job {now[1] or '-'}")
            seen = now
        if now[0] in ("Complete", "Failed"):
            if status.get("message"):
                progress.note(status["message"])
            return 0 if now[1] == "SUCCEEDED" else 1
        time.sleep(poll)


def _cluster_spec(spec: JobSpec, image: str) -> dict:
    scaling = spec.train.scaling
    gpus = 1 if scaling.use_gpu else 0
    cpus = max(1, int(scaling.cpus_per_worker + 0.999)) + 1  # the worker's share + Ray Data
    return {
        "rayVersion": RAY_VERSION,
        "headGroupSpec": {
            "serviceType": "ClusterIP",
            # inside the pod network only: the Service is ClusterIP
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": _pod("ray-head", image, "2", "8Gi", 0, True),
        },
        "workerGroupSpecs": [
            {
                "groupName": "gpu" if gpus else "cpu",
                "replicas": scaling.num_workers,
                "minReplicas": scaling.num_workers,
                "maxReplicas": scaling.num_workers,
                "rayStartParams": {},
                "template": _pod("ray-worker", image, str(cpus), f"{4 * cpus}Gi", gpus, True),
            }
        ],
    }


def _pod(name: str, image: str, cpu: str, memory: str, gpus: int, ray: bool) -> dict:
    limits = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    container = {
        "name": name,
        "image": image,
        "securityContext": _CONTAINER_SECURITY,
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits},
        "env": [
            {
                "name": key,
                "valueFrom": {"secretKeyRef": {"name": SECRETS, "key": key, "optional": True}},
            }
            for key in ("WANDB_API_KEY", "HF_TOKEN")
        ]
        + [
            {"name": "RAY_AUTH_MODE", "value": "token"},
            {
                "name": "RAY_AUTH_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": RAY_TOKEN_SECRET, "key": RAY_TOKEN_KEY}},
            },
        ],
    }
    pod: dict = {"securityContext": _POD_SECURITY, "containers": [container]}
    if ray:
        pod["volumes"] = [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "4Gi"}}]
        container["volumeMounts"] = [{"name": "shm", "mountPath": "/dev/shm"}]
    else:
        pod["restartPolicy"] = "Never"
        return {"metadata": {"labels": RAY_CLIENT_LABEL}, "spec": pod}
    return {"spec": pod}


def _custom_objects_api():
    from kubernetes import client, config

    try:
        config.load_kube_config()
    except Exception:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            raise UserError(
                "no Kubernetes credentials: neither a kubeconfig (~/.kube/config or "
                "$KUBECONFIG) nor an in-cluster service account. Use --dry-run to print "
                "the RayJob instead."
            ) from None
    return client.CustomObjectsApi()


def _hint(status: int) -> str:
    return {
        403: "Your account may not create rayjobs.ray.io in this namespace.",
        404: "Is the KubeRay operator installed (CRD rayjobs.ray.io), and the namespace right?",
        409: "A RayJob of that name exists; submit again for a new name.",
    }.get(status, "")
