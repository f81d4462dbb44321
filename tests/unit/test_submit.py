"""What `ftray submit` checks before uploading anything, and the RayJob `--k8s` builds."""

from __future__ import annotations

import pytest
import yaml

from ftray.cli import main
from ftray.errors import UserError
from ftray.k8s import rayjob_manifest
from ftray.specload import load_spec
from ftray.submit import build_submission, package_files, package_size
from tests.unit.test_helm_chart import ray_problems

JOB = {
    "project": "demo",
    "model": {"base": "tiny"},
    "data": {"sources": [{"path": "data/train.jsonl"}]},
}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "demo.yaml").write_text(yaml.safe_dump(JOB))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_submission_has_entrypoint_runtime_env_and_excludes(workdir):
    (workdir / ".venv").mkdir()
    (workdir / ".venv" / "big.bin").write_bytes(b"x" * 100_000)
    sub = build_submission("jobs/demo.yaml", ["train.lr=1e-4"], stage="train")
    assert sub.entrypoint == "ftray train jobs/demo.yaml --set train.lr=1e-4"
    assert sub.runtime_env["working_dir"] == str(workdir)
    assert ".venv" in sub.runtime_env["excludes"]
    assert sub.package_bytes < 100_000, "excluded folders are not counted (nor uploaded)"
    assert sub.metadata["ftray_project"] == "demo"


def test_gitignored_files_are_not_counted(workdir):
    (workdir / ".gitignore").write_text("scratch/\n")
    (workdir / "scratch").mkdir()
    (workdir / "scratch" / "dump.bin").write_bytes(b"x" * 50_000)
    size, biggest = package_size(workdir, [])
    assert size < 50_000 and all("scratch" not in path for path, _ in biggest)


def test_package_over_the_limit_is_refused_with_the_biggest_files(workdir, monkeypatch):
    (workdir / "data" / "huge.bin").write_bytes(b"x" * 4096)
    monkeypatch.setattr("ftray.submit._package_limit", lambda: 2048)
    with pytest.raises(UserError, match=r"over the Ray Jobs API limit.*data/huge.bin"):
        build_submission("jobs/demo.yaml", [])


def test_data_outside_the_working_dir_is_refused(workdir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "x.jsonl"
    outside.write_text("{}\n")
    with pytest.raises(UserError, match=r"data.sources\[0\].path: .* outside the working dir"):
        build_submission("jobs/demo.yaml", [f"data.sources=[{{path: {outside}}}]"])


def test_bad_spec_fails_before_upload(workdir):
    with pytest.raises(UserError, match=r"train\.lr"):
        build_submission("jobs/demo.yaml", ["train.lr=-1"])


def test_submit_without_an_address_says_how(workdir, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["submit", "jobs/demo.yaml"]) == 2
    assert "--address http://HOST:8265" in capsys.readouterr().err


def test_rayjob_for_an_ephemeral_cluster_follows_the_rules(workdir):
    """ray_problems: the RayJob schema in cluster/crds, then ftray's pod rules."""
    spec = load_spec("jobs/demo.yaml", ["train.scaling.use_gpu=true", "train.batch_size=8"])
    body = rayjob_manifest(spec, "jobs/demo.yaml", ["train.batch_size=8"], namespace="ml")
    assert ray_problems(body) == []
    assert body["metadata"]["namespace"] == "ml"
    assert body["spec"]["shutdownAfterJobFinishes"] is True
    assert body["spec"]["entrypoint"] == "ftray run jobs/demo.yaml --set train.batch_size=8"
    (group,) = body["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == spec.train.scaling.num_workers
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert len(body["metadata"]["name"]) <= 63


def test_rayjob_on_an_existing_cluster_selects_it(workdir):
    body = rayjob_manifest(load_spec("jobs/demo.yaml"), "jobs/demo.yaml", [], cluster="ftray")
    assert ray_problems(body) == []
    assert body["spec"]["clusterSelector"] == {"ray.io/cluster": "ftray"}
    assert "rayClusterSpec" not in body["spec"]


def test_k8s_dry_run_prints_the_rayjob(workdir, capsys):
    assert main(["submit", "jobs/demo.yaml", "--k8s", "--dry-run", "--namespace", "ml"]) == 0
    body = yaml.safe_load(capsys.readouterr().out)
    assert body["kind"] == "RayJob" and body["metadata"]["namespace"] == "ml"
    assert ray_problems(body) == []


def test_k8s_without_credentials_is_a_clear_error(workdir, monkeypatch, capsys):
    monkeypatch.setenv("KUBECONFIG", str(workdir / "no-such-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["submit", "jobs/demo.yaml", "--k8s"]) == 2
    assert "no Kubernetes credentials" in capsys.readouterr().err


SECRET_FILES = [
    ".env",
    "config/.env.production",
    "deploy/tls.pem",
    "deploy/server.key",
    "id_rsa",
    "home/.ssh/id_ed25519.pub",
    "hf_token",
    "wandb-token.txt",
    ".netrc",
    ".git-credentials",
    "gcp/service-account-prod.json",
    "client_secret_123.json",
    ".aws/credentials",
    "kubeconfig",
]
KEPT_FILES = ["model/tokenizer.json", "model/special_tokens_map.json", "data/keys.csv"]


def test_secret_files_are_never_uploaded(workdir):
    for name in SECRET_FILES + KEPT_FILES:
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_text("x")
    sub = build_submission("jobs/demo.yaml", [])
    uploaded = package_files(workdir, sub.runtime_env["excludes"])
    assert [name for name in SECRET_FILES if name in uploaded] == []
    assert all(name in uploaded for name in KEPT_FILES), "tokenizer files still travel"
    assert "data/train.jsonl" in uploaded


def test_a_data_source_the_excludes_drop_is_refused_before_upload(workdir):
    (workdir / "data" / "secret-prompts.json").write_text("[]")
    with pytest.raises(UserError, match=r"data.sources\[0\].path: .* excluded from the upload"):
        build_submission("jobs/demo.yaml", ["data.sources=[{path: data/secret-prompts.json}]"])
    (workdir / "data" / "a.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    (workdir / "data" / "b-token").write_text('{"prompt": "q", "completion": "d"}\n')
    glob_source = ["data.sources=[{path: 'data/[ab]*', format: jsonl}]"]
    with pytest.raises(UserError, match=r"data.sources\[0\].path: data/b-token is excluded"):
        build_submission("jobs/demo.yaml", glob_source)
    eval_set = ["data.eval_sources=[{path: data/secret-prompts.json}]"]
    with pytest.raises(UserError, match=r"data.eval_sources\[0\].path: .* excluded"):
        build_submission("jobs/demo.yaml", eval_set)
    (workdir / "data" / "words.key").write_text("badword\n")
    words = ["data.toxicity.word_list=data/words.key"]
    with pytest.raises(UserError, match=r"data.toxicity.word_list: .* excluded"):
        build_submission("jobs/demo.yaml", words)
    (workdir / "jobs" / "demo.yaml").rename(workdir / "jobs" / "demo-secret.yaml")
    with pytest.raises(UserError, match=r"the job spec: jobs/demo-secret.yaml is excluded"):
        build_submission("jobs/demo-secret.yaml", [])


@pytest.fixture
def token_server():
    """A stand-in Jobs API answering like Ray's token middleware: 401 without a token, 403
    with a wrong one; it records the headers it was sent."""
    import http.server
    import json
    import threading

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            auth = self.headers.get("Authorization")
            seen.append(auth)
            status, body = 200, json.dumps({"ray_version": "2.60.0", "version": "2.60.0"})
            if not auth:
                status, body = 401, "Unauthorized: Missing authentication token"
            elif auth != "Bearer s3cret":
                status, body = 403, "Forbidden: Invalid authentication token"
            if self.path.startswith("/api/jobs"):
                body = "[]"
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_ftray_jobs_sends_the_ray_token_from_the_environment(
    token_server, monkeypatch, tmp_path, capsys
):
    address, seen = token_server
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # not needed: the token is enough
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token to fall back on
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cret")
    assert main(["jobs", "list", "--address", address]) == 0
    assert seen and set(seen) == {"Bearer s3cret"}
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    (tmp_path / "token").write_text("s3cret\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert main(["jobs", "list", "--address", address]) == 0
    monkeypatch.setenv("RAY_AUTH_TOKEN", "wrong")
    assert main(["jobs", "list", "--address", address]) == 2
    err = capsys.readouterr().err
    assert "refused ftray (Authentication failed" in err and "Set RAY_AUTH_TOKEN" in err
