"""The serve stage: the Ray Serve app in `ftray.serve.app`, started and checked from the CLI."""

from __future__ import annotations

import time

from ftray.errors import UserError
from ftray.models import resolve_model
from ftray.progress import Progress
from ftray.spec import JobSpec
from ftray.store import Store


def serve_model(
    spec: JobSpec, store: Store, model_id: str, progress: Progress, keep_serving: bool = False
) -> str:
    """Deploy the app, answer `serve.example_prompt` through `model_id`, return the answer.

    Shuts the app down afterwards unless `keep_serving`, in which case it serves until Ctrl-C.
    """
    import httpx
    from ray import serve

    from ftray.serve.app import deployment_for

    card = store.manifest("models", model_id) if store.is_complete("models", model_id) else {}
    if card.get("kind", "adapter") != "adapter":
        raise UserError(
            f"model {model_id} is a full fine-tune ({card['kind']}_uri: {card.get('model_uri')});"
            " the Serve app routes LoRA adapters on one base model and cannot serve it yet. "
            "Load the folder with transformers, or train with method 'lora' or 'qlora'."
        )
    host = "127.0.0.1" if spec.serve.host in ("0.0.0.0", "::") else spec.serve.host
    url = f"http://{host}:{spec.serve.port}"
    serve.start(http_options={"host": spec.serve.host, "port": spec.serve.port})
    try:
        serve.run(
            deployment_for(spec, store, resolve_model(spec.model, store)),
            name="ftray",
            route_prefix="/",
        )
        progress.artifact("OpenAI-compatible API", f"{url}/v1")
        request = {
            "model": model_id,
            "messages": [{"role": "user", "content": spec.serve.example_prompt}],
        }
        response = httpx.post(f"{url}/v1/chat/completions", json=request, timeout=600)
        if response.status_code != 200:
            raise UserError(f"the served model answered {response.status_code}: {response.text}")
        answer = response.json()["choices"][0]["message"]["content"]
        progress.note(f"request: {spec.serve.example_prompt!r}")
        progress.note(f"answer from {model_id}: {answer!r}")
        if keep_serving:
            progress.note(f"serving at {url}/v1 until Ctrl-C")
            while True:
                time.sleep(3600)
        return answer
    finally:
        if not keep_serving:
            serve.shutdown()
