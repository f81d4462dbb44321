"""`ftray export`: a registry model as one self-contained Hugging Face folder.

Input: a registered model (an adapter or a full fine-tune) and the job's base model. Output: a
folder outside the store holding the merged weights (safetensors), the tokenizer with its chat
template, the generation config and the model card, which vLLM, TGI or transformers load with
no ftray and no peft. Side effects: none on the store.

A LoRA adapter is merged into its base with peft's `merge_and_unload`. A QLoRA adapter was
trained on a 4-bit base; it is merged into the base loaded unquantized (in `model.dtype`), which
is the usual way to ship one and gives answers close to, not identical with, the quantized
base plus adapter.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ftray.errors import UserError
from ftray.spec import JobSpec
from ftray.store import Store, download_dir

CARD = "ftray_model_card.json"


def export_model(spec: JobSpec, store: Store, model_id: str | None, out: str | Path) -> Path:
    """Write model `model_id` (default: the production model) merged into one HF folder at
    `out` in `model.dtype`; `out` must not exist yet or be empty. Returns the folder."""
    from transformers import AutoTokenizer

    from ftray.chat_templates import use_chat_template
    from ftray.models import load_model, resolve_model
    from ftray.registry import get_model, production

    model_id = model_id or production(store)
    if model_id is None:
        raise UserError("no model is in production yet; name one with --model MODEL_ID.")
    card = get_model(store, model_id)
    if card["base_model"] != spec.model.base:
        raise UserError(
            f"{model_id} was trained on model.base {card['base_model']!r}, but the job's "
            f"model.base is {spec.model.base!r}: export with the job spec it was trained from."
        )
    if card.get("chat_template") != spec.model.chat_template:
        raise UserError(
            f"{model_id} was trained with model.chat_template {card.get('chat_template')!r}, "
            f"but the job's is {spec.model.chat_template!r}: export with the job spec it was "
            "trained from."
        )
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder; choose a new one.")
    base_dir = resolve_model(spec.model, store)
    kind = card.get("kind", "adapter")
    with tempfile.TemporaryDirectory(prefix="ftray-export-") as folder:
        download_dir(store.uri("models", model_id, kind), folder)
        if kind == "adapter":
            from peft import PeftModel

            model = PeftModel.from_pretrained(load_model(base_dir, spec.model.dtype), folder)
            model = model.merge_and_unload()
        else:
            model = load_model(folder, spec.model.dtype)
        out.parent.mkdir(parents=True, exist_ok=True)
        # written beside `out` and renamed into place: a failed export leaves no half folder
        staging = Path(tempfile.mkdtemp(prefix=".ftray-export-", dir=out.parent))
        try:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer = AutoTokenizer.from_pretrained(base_dir)
            use_chat_template(tokenizer, spec.model.chat_template, spec.model.base)
            tokenizer.save_pretrained(staging)
            (staging / CARD).write_text(json.dumps({**card, "exported_from": kind}, indent=2))
            if out.exists():
                out.rmdir()
            staging.rename(out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return out
