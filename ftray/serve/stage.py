"""The serve stage: the Ray Serve app in `ftray.serve.app`, started and checked from the CLI.

Contract. In: the registry (`models/`: model cards, the production model) and the base model.
Out: no artifact; the example request's answer. Side effects: a Ray Serve app named "ftray"
on `serve.host:serve.port` (shut down afterwards unless kept serving); while it runs, the app
writes sampled requests to `monitor/samples/` and users' feedback to `monitor/feedback/`.

`ftray serve` (and the end of `ftray run`) deploys the app on the connected Ray cluster,
waits until it is ready, sends `serve.example_prompt` to one model and prints the answer.
With `--keep-serving` it serves until Ctrl-C or SIGTERM, then shuts the app down; clusters
run the app from a Serve config instead (`cluster/kuberay/rayservice.yaml`).
"""

from __future__ import annotations

import logging
import os
import signal
import time

from ftray.errors import UserError
from ftray.models import load_tokenizer, resolve_model
from ftray.progress import Progress
from ftray.spec import JobSpec
from ftray.store import Store

_log = logging.getLogger(__name__)
# Serve's direct ingress (serve.direct_ingress), for its controller and the app's replicas. With
# no load balancer in front to drain a stopped replica, it stops at once, not after Serve's
# default 30 s.
DIRECT_INGRESS_ENV = {
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
}


def serve_registry(
    spec: JobSpec, progress: Progress, model: str | None, keep_serving: bool = False
) -> str:
    """Serve the job's registry; the example request goes to `model`, else the production
    model, else the base model."""
    from ftray.registry import production

    store = Store(spec.storage, spec.project)
    target = model or ("production" if production(store) else "base")
    with progress.stage("serve"):
        for warning in rejection_warnings(store, target) + serving_warnings(spec, store, target):
            _log.warning(warning)
            progress.note(warning)
        return serve_model(spec, store, target, progress, keep_serving)


def rejection_warnings(store: Store, model: str) -> list[str]:
    """Warnings for serving a model the gate or the registry did not approve. It is served all
    the same: someone named it, or forced it into production."""
    from ftray.registry import get_model

    model_id = _registry_id(store, model)
    if model_id is None:
        return []
    card = get_model(store, model_id)  # a clear error when there is no such model
    gate = card.get("gate") or {}
    reasons = ["the registry rejected it"] if card["stage"] == "rejected" else []
    if gate and not gate.get("passed", True):
        failed = [rule["rule"] for rule in gate.get("rules", []) if rule.get("passed") is False]
        reasons.append("its gate failed" + (f" ({'; '.join(failed)})" if failed else ""))
    if not reasons:
        return []
    return [
        f"warning: serving {model_id} although {' and '.join(reasons)}; "
        f"`ftray models show JOB.yaml {model_id}` has its evaluation"
    ]


def serving_warnings(spec: JobSpec, store: Store, model: str) -> list[str]:
    """A warning when the job serves `model` with another base quantization, dtype or chat
    template than its gate approved (`ftray.placement.serving_config`)."""
    from ftray.placement import serving_config, serving_mismatch
    from ftray.registry import get_model

    model_id = _registry_id(store, model)
    if model_id is None:
        return []
    mismatch = serving_mismatch(model_id, get_model(store, model_id), serving_config(spec))
    return [mismatch] if mismatch else []


def _registry_id(store: Store, model: str) -> str | None:
    """The registry model a request name means; None for the base model."""
    from ftray.registry import production

    model_id = model.rsplit(":", 1)[-1]
    if model_id == "production":
        model_id = production(store) or "base"
    return None if model_id == "base" else model_id


def serve_model(
    spec: JobSpec, store: Store, model_id: str, progress: Progress, keep_serving: bool = False
) -> str:
    """Deploy the app, answer `serve.example_prompt` through `model_id`, return the answer.

    Shuts the app down afterwards unless `keep_serving`, in which case it serves until Ctrl-C.
    """
    import httpx
    from ray import serve

    from ftray.serve.app import deployment_for

    env, headers = {}, {}
    if spec.serve.api_key_env:
        key = os.environ.get(spec.serve.api_key_env)
        if not key:
            raise UserError(
                f"serve.api_key_env is {spec.serve.api_key_env!r}: export that variable with "
                "the API token first (clients send it as `Authorization: Bearer …`)."
            )
        env, headers = {spec.serve.api_key_env: key}, {"Authorization": f"Bearer {key}"}
    from ftray.serve.vllm_engine import check_engine

    check_engine(spec.serve.engine)
    host = "127.0.0.1" if spec.serve.host in ("0.0.0.0", "::") else spec.serve.host
    url = f"http://{host}:{spec.serve.port}"
    model_dir = resolve_model(spec.model, store)
    load_tokenizer(model_dir, spec.model.chat_template)  # no template: a UserError, here
    direct = DIRECT_INGRESS_ENV if spec.serve.direct_ingress else {}
    serve.start(
        http_options={"host": spec.serve.host, "port": spec.serve.port},
        controller_options={"runtime_env": {"env_vars": direct}} if direct else None,
    )
    try:
        app = deployment_for(spec, store, model_dir, {**env, **direct})
        serve.run(app, name="ftray", route_prefix="/")
        replicas = replica_urls("ftray", spec.serve.host) if direct else []
        memory = httpx.get(f"{url}/ready", timeout=60).json()["memory"]
        progress.note(
            f"replica ready ({memory['engine']} engine): base model "
            f"{memory['base_bytes'] / 2**20:.1f} MiB "
            f"(quantization: {memory['quantization']}, {memory['dtype']} on {memory['device']})"
        )
        progress.artifact("OpenAI-compatible API", f"{url}/v1")
        for replica in replicas:
            progress.artifact("one replica, directly", f"{replica}/v1")
        messages = [{"role": "user", "content": spec.serve.example_prompt}]
        request = {"model": model_id, "messages": messages}
        response = httpx.post(  # straight to a replica with direct ingress: it is checked too
            f"{(replicas or [url])[0]}/v1/chat/completions",
            json=request,
            headers=headers,
            timeout=600,
        )
        if response.status_code != 200:
            raise UserError(f"the served model answered {response.status_code}: {response.text}")
        answer = response.json()["choices"][0]["message"]["content"]
        progress.note(f"request: {spec.serve.example_prompt!r}")
        progress.note(f"answer from {model_id}: {answer!r}")
        if keep_serving:
            progress.note(f"serving at {url}/v1 until Ctrl-C")
            signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                progress.note("stopping")
        return answer
    finally:
        serve.shutdown()


def replica_urls(app: str, host: str, wait_s: float = 30) -> list[str]:
    """The base URLs of `app`'s replicas under Serve's direct ingress (its target groups); a
    UserError when Serve runs without it (a controller started earlier, without the flag)."""
    import ray
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    assert client is not None  # the app was just deployed through it
    controller = client._controller  # Serve's target groups have no public getter
    deadline = time.monotonic() + wait_s
    while True:
        groups = ray.get(controller.get_target_groups.remote(app))
        targets = [t for g in groups if g.app_name == app for t in g.targets]
        if targets:  # a replica binds `host`; a wildcard, every address of its node
            wildcard = host in ("0.0.0.0", "::")
            return [f"http://{t.ip if wildcard else host}:{t.port}" for t in targets]
        if time.monotonic() > deadline:
            raise UserError(
                "serve.direct_ingress: Serve on this cluster runs without direct ingress "
                "(started earlier without it); `serve shutdown` it first, or leave the "
                "setting off"
            )
        time.sleep(0.5)
