"""A replica's settings: every field of the job's serve, monitor and model sections crosses the
Ray boundary (as JSON) and is validated again on arrival."""

from __future__ import annotations

import importlib.util
import json

import pytest
from pydantic import ValidationError

from ftray.cli import main
from ftray.placement import serving_config
from ftray.serve.config import ReplicaConfig
from ftray.spec import JobSpec
from ftray.store import Store

# A value other than the default for every field, so a field the replica never gets shows.
SERVE = {
    "engine": "vllm",
    "shadow_max_in_flight": 2,
    "retrieval": {"index": "index-0123456789ab", "refresh_s": 5.0, "base_k": 3},
    "rollout": {
        "min_requests": 50,
        "max_error_rate_increase": 0.05,
        "alpha": 0.01,
        "max_latency_ratio": 2.0,
        "min_ratings": 10,
        "max_rating_drop": 0.5,
        "rollback_on_alert": False,
    },
    "vllm": {
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.5,
        "cpu_kv_cache_gib": 4,
        "max_lora_rank": 16,
        "max_num_seqs": 64,
    },
    "host": "10.0.0.5",
    "port": 8555,
    "direct_ingress": True,
    "max_new_tokens": 40,
    "max_tokens_limit": 600,
    "max_prompt_tokens": 1000,
    "max_prompt_chars": 5000,
    "max_request_bytes": 4096,
    "generation_timeout_s": 12.5,
    "example_prompt": "Hi there",
    "quantization": "none",  # vllm serves unquantized bases only
    "num_replicas": 3,
    "autoscaling": {"min_replicas": 0, "max_replicas": 5, "target_ongoing_requests": 3},
    "cpus_per_replica": 2.5,
    "gpus_per_replica": 2,
    "max_adapters_per_replica": 2,
    "max_batch_size": 16,
    "batch_wait_timeout_s": 0.05,
    "cache_entries": 7,
    "cache_ttl_s": 60,
    "api_key_env": "FTRAY_KEY",
    "allow_unauthenticated": True,
}
MONITOR = {
    "sample_rate": 0.5,
    "redact_pii": False,
    "flush_rows": 9,
    "flush_interval_s": 3,
    "accept_corrections": "auto",
    "window_hours": 6,
    "min_samples": 5,
    "max_input_drift_psi": 0.3,
    "max_label_shift_psi": 0.4,
    "max_length_drift_psi": 0.5,
    "max_empty_or_refusal_rate": 0.2,
    "min_schema_compliance": 0.8,
    "min_correction_agreement": 0.7,
    "webhook_url_env": "HOOK",
    "embedding_gpus": 0.25,
    "alert_examples": 1,
    "retrain": {"on_alerts": ["any"], "min_corrections": 3, "every_hours": 12},
}
MODEL = {
    "base": "tiny",
    "gguf_file": "m.gguf",
    "attention": "eager",
    "dtype": "bfloat16",
    "chat_template": "chatml",
}


SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def _spec() -> JobSpec:
    return JobSpec.model_validate(
        {
            "project": "demo",
            "model": MODEL,
            "data": {
                "sources": [{"path": "data.csv"}],
                "system_prompt": "Be brief.",
                "output_schema": SCHEMA,
            },
            "serve": SERVE,
            "monitor": MONITOR,
        }
    )


def test_every_serve_monitor_and_model_field_reaches_the_replica(tmp_path):
    spec = _spec()
    for section, values in [("serve", SERVE), ("monitor", MONITOR), ("model", MODEL)]:
        fields = type(getattr(spec, section)).model_fields
        assert set(values) == set(fields), f"give every {section} field a value here"
        defaults = type(getattr(spec, section))(**({"base": "x"} if section == "model" else {}))
        same = [n for n in fields if n != "base" and getattr(defaults, n) == values[n]]
        assert not same, f"{section}: use values other than the defaults for {same}"

    sent = ReplicaConfig.of(spec, Store(str(tmp_path), "demo"), "/models/tiny")
    arrived = ReplicaConfig.model_validate(json.loads(json.dumps(sent.model_dump(mode="json"))))

    assert arrived == sent
    assert arrived.serve == spec.serve and arrived.monitor == spec.monitor
    assert arrived.model == spec.model
    assert arrived.serve.model_dump(exclude_none=True) == SERVE
    assert arrived.monitor.model_dump() == MONITOR
    assert (arrived.project, arrived.system_prompt) == ("demo", "Be brief.")
    assert arrived.output_schema == SCHEMA  # the vllm engine constrains answers to it
    assert (arrived.storage, arrived.model_dir) == (str(tmp_path), "/models/tiny")
    assert arrived.serving == serving_config(spec)  # what evaluation loads too
    assert arrived.quantization is None


@pytest.mark.parametrize(
    ("path", "value"),
    [(("serve", "max_batch_size"), 0), (("monitor", "sampel_rate"), 0.5), (("project",), None)],
)
def test_a_bad_config_is_refused_on_arrival(tmp_path, path, value):
    sent = ReplicaConfig.of(_spec(), Store(str(tmp_path), "demo"), "/m").model_dump(mode="json")
    *parents, last = path
    node = sent
    for part in parents:
        node = node[part]
    node[last] = value
    with pytest.raises(ValidationError, match=last):
        ReplicaConfig.model_validate(sent)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_the_vllm_engine_without_vllm_is_a_user_error_before_ray_starts(tmp_path, capsys):
    (tmp_path / "data.csv").write_text("prompt,completion\nhi,hello\n")
    job = {
        "project": "demo",
        "storage": str(tmp_path / "store"),
        "model": {"base": "tiny"},
        "data": {"sources": [{"path": str(tmp_path / "data.csv")}]},
        "serve": {"engine": "vllm"},
    }
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(job))
    for verb in ("serve", "run"):
        assert main([verb, str(path), "--address", "127.0.0.1:1"]) == 2
        error = capsys.readouterr().err
        assert "serve.engine is 'vllm'" in error and "make install-vllm" in error, error
        assert "Traceback" not in error
