"""`ftray submit` and `ftray jobs`: run a job spec on a Ray cluster through the Ray Jobs API.

The job runs there exactly as `ftray <stage> JOB.yaml` runs here: the working directory (the
job spec, the user's data, the repo) is uploaded as the job's `working_dir`, minus excludes.
Everything is checked before anything is uploaded: the spec, that local data lies inside the
working directory, and that the package fits the Jobs API's size limit.
"""

from __future__ import annotations

import asyncio
import shlex
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ftray.errors import UserError
from ftray.progress import Progress
from ftray.spec import JobSpec
from ftray.specload import load_spec

# Never uploaded: credentials and keys (the job's working_dir is readable by everything that
# runs on the cluster, and Ray keeps it in the GCS), environments, caches, local artifacts.
# gitignore syntax: a pattern without '/' matches at any depth. `.gitignore`/`.rayignore` apply
# too. Secrets reach jobs as environment variables from the cluster (Kubernetes Secrets).
SECRET_EXCLUDES = [
    ".env",
    ".env.*",
    "*.env",
    ".envrc",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "*.gpg",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "*token",
    "*token.txt",
    "*token.json",
    ".netrc",
    "_netrc",
    ".pgpass",
    ".git-credentials",
    ".npmrc",
    ".pypirc",
    "credentials",
    "*credentials*.json",
    "*credentials*.yaml",
    "*credentials*.yml",
    "client_secret*.json",
    "*secret*.json",
    "*secret*.yaml",
    "*secret*.yml",
    "*service-account*.json",
    "kubeconfig",
    "*.kubeconfig",
    ".kube",
    ".ssh",
    ".aws",
    ".gnupg",
    ".docker",
    ".huggingface",
]
DEFAULT_EXCLUDES = [
    *SECRET_EXCLUDES,
    ".git",
    ".venv",
    "venv",
    "ftray-store",
    ".ray-tmp",
    ".cache",
    "wandb",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".ruff_cache",
]
STAGES = ("run", "prepare", "train", "sweep", "eval", "serve", "monitor", "retrain")
FINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class Submission:
    """What goes to the Jobs API: an entrypoint and its runtime_env, checked."""

    spec: JobSpec
    entrypoint: str
    runtime_env: dict
    metadata: dict[str, str]
    package_bytes: int
    notes: list[str] = field(default_factory=list)


def build_submission(
    job: str,
    overrides: list[str],
    *,
    stage: str = "run",
    working_dir: str = ".",
    excludes: list[str] | None = None,
    requirements: str | None = None,
) -> Submission:
    """Validate the job and build its submission; raises UserError before any upload."""
    spec = load_spec(job, overrides)
    root = Path(working_dir).resolve()
    job_path = Path(job).resolve()
    if not job_path.is_relative_to(root):
        raise UserError(
            f"the job spec {job_path} is outside the working directory {root}, so it would not "
            "reach the cluster. Run from the folder that holds it, or pass --working-dir."
        )
    notes = _source_notes(spec, root)
    all_excludes = [*DEFAULT_EXCLUDES, *(excludes or [])]
    files = package_files(root, all_excludes)
    _check_inputs_uploaded(spec, job_path, root, files)
    size = sum(files.values())
    biggest = sorted(files.items(), key=lambda item: -item[1])[:5]
    limit = _package_limit()
    if size >= limit:
        listing = ", ".join(f"{path} ({_mib(n)})" for path, n in biggest)
        raise UserError(
            f"the working directory {root} holds {_mib(size)} to upload, over the Ray Jobs API "
            f"limit of {_mib(limit)}. Largest files: {listing}. Exclude them with --exclude "
            "PATTERN (or .gitignore/.rayignore), and put large data on shared storage (s3://, "
            "a mounted volume) referenced from the job spec."
        )
    words = ["ftray", stage, job_path.relative_to(root).as_posix()]
    words += [word for item in overrides for word in ("--set", item)]
    runtime_env: dict = {"working_dir": str(root), "excludes": all_excludes}
    if requirements:
        runtime_env["pip"] = _requirements(requirements)
    return Submission(
        spec=spec,
        entrypoint=shlex.join(words),
        runtime_env=runtime_env,
        metadata={"ftray_project": spec.project, "ftray_job": words[2], "ftray_stage": stage},
        package_bytes=size,
        notes=notes,
    )


def package_files(root: Path, excludes: list[str]) -> dict[str, int]:
    """The files Ray would upload from `root` (relative POSIX path → bytes).

    Walks the folder with Ray's own packaging rules (excludes, .gitignore, .rayignore), so
    the check agrees with what `ray job submit` sends.
    """
    from ray._private.runtime_env import packaging

    sizes: dict[str, int] = {}

    def handler(path: Path) -> None:
        if path.is_file():
            sizes[path.relative_to(root).as_posix()] = path.stat().st_size

    packaging._dir_travel(
        root, [packaging._get_excludes(root, excludes)], handler, include_gitignore=True
    )
    return sizes


def package_size(root: Path, excludes: list[str]) -> tuple[int, list[tuple[str, int]]]:
    """Bytes Ray would upload from `root`, and the five largest files."""
    files = package_files(root, excludes)
    return sum(files.values()), sorted(files.items(), key=lambda item: -item[1])[:5]


def submit(submission: Submission, address: str, progress: Progress, follow: bool = True) -> int:
    """Submit; with `follow`, stream the logs and return 0 if the job succeeded, else 1."""
    client = _client(address)
    for note in submission.notes:
        progress.note(note)
    job_id = client.submit_job(
        entrypoint=submission.entrypoint,
        runtime_env=submission.runtime_env,
        submission_id=f"ftray-{submission.spec.project}-{time.strftime('%Y%m%d-%H%M%S')}-"
        f"{uuid.uuid4().hex[:6]}",
        metadata=submission.metadata,
    )
    progress.note(f"submitted {job_id} to {address}: {submission.entrypoint}")
    progress.note(f"uploaded {_mib(submission.package_bytes)} as the job's working_dir")
    if not follow:
        progress.note(f"follow it with `ftray jobs logs {job_id} --follow --address {address}`")
        return 0
    return follow_logs(client, job_id, progress)


def follow_logs(client, job_id: str, progress: Progress) -> int:
    """Print the job's logs as they come; return 0 when it succeeded, else 1."""
    try:
        asyncio.run(_tail(client, job_id))
    except KeyboardInterrupt:
        progress.note(f"stopped following; the job goes on. `ftray jobs stop {job_id}` ends it.")
        return 130
    status = str(_wait_final(client, job_id))
    progress.note(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def job_command(action: str, address: str, job_id: str | None, follow: bool) -> int:
    """`ftray jobs list|status|logs|stop`."""
    client = _client(address)
    if action == "list":
        for info in sorted(client.list_jobs(), key=lambda j: j.start_time or 0):
            print(f"{info.submission_id}  {info.status!s:<10}  {info.entrypoint}")
        return 0
    if not job_id:
        raise UserError(f"`ftray jobs {action}` needs a JOB_ID; `ftray jobs list` shows them")
    try:
        if action == "status":
            info = client.get_job_info(job_id)
            print(f"{job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
        elif action == "logs":
            if follow:
                return follow_logs(client, job_id, Progress())
            print(client.get_job_logs(job_id), end="")
        else:
            stopped = client.stop_job(job_id)
            print(f"{job_id}: {'stop requested' if stopped else 'already finished'}")
    except RuntimeError as err:
        raise UserError(f"job {job_id!r} on {address}: {err}") from None
    return 0


def jobs_address(address: str | None) -> str:
    """The Jobs API address: --address, else $RAY_ADDRESS; an error naming both if neither."""
    import os

    found = address or os.environ.get("RAY_ADDRESS")
    if not found:
        raise UserError(
            "no cluster to submit to: pass --address http://HOST:8265 (the Ray dashboard, "
            "e.g. after `kubectl port-forward svc/ftray-head-svc 8265:8265`) or set RAY_ADDRESS"
        )
    return found


def ray_token_headers() -> dict[str, str]:
    """The cluster's Ray token as an Authorization header, from Ray's own variables:
    $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH. Sent whenever one is set, so a
    token-auth cluster works without RAY_AUTH_MODE=token here; with neither, Ray's client
    finds ~/.ray/auth_token itself when RAY_AUTH_MODE=token."""
    import os

    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH", "")
    if not token and path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as err:
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read the token: {err}") from None
    return {"Authorization": f"Bearer {token}"} if token else {}


def _client(address: str):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers=ray_token_headers() or None)
    except AuthenticationError as err:
        refusal = str(err).split("\n", 1)[0]
        raise UserError(
            f"the Ray Jobs API at {address} refused ftray ({refusal}): it needs the cluster's "
            "Ray token. Set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to it; with the Helm chart "
            "it is in the Secret named by rayAuth.secretName (see the chart's notes)."
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UserError(
            f"cannot reach the Ray Jobs API at {address}: {err}. Is the cluster up, and is "
            "this its dashboard address (port 8265)?"
        ) from None


async def _tail(client, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        print(chunk, end="", flush=True)


def _wait_final(client, job_id: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    status = client.get_job_status(job_id)
    while str(status) not in FINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    return status


def _local_inputs(spec: JobSpec) -> list[tuple[str, str]]:
    """(spec key, path) of every local file the job reads besides its spec: data sources,
    the eval set, the toxicity word list. URIs (s3://, ...) are read where they are."""
    named = [
        (f"{key}[{index}].path", source.path)
        for key, sources in (
            ("data.sources", spec.data.sources),
            ("data.eval_sources", spec.data.eval_sources or []),
        )
        for index, source in enumerate(sources)
    ]
    if spec.data.toxicity.word_list:
        named.append(("data.toxicity.word_list", spec.data.toxicity.word_list))
    return [(key, path) for key, path in named if "://" not in path]


def _source_notes(spec: JobSpec, root: Path) -> list[str]:
    """Local inputs outside the working directory would not be uploaded: an error, early."""
    notes = []
    for key, name in _local_inputs(spec):
        path = Path(name)
        resolved = (root / path if not path.is_absolute() else path).resolve()
        if not resolved.is_relative_to(root):
            raise UserError(
                f"{key}: {name} is outside the working directory {root}; it would not reach "
                f"the cluster. Move it under {root}, or put it on shared storage and use its URI."
            )
    if "://" not in spec.storage:
        notes.append(
            f"storage {spec.storage!r} is a path on the cluster's nodes (the job spec "
            "resolves it there, where the Helm chart's FTRAY_STORAGE applies if the spec sets "
            "none); on a multi-node cluster it must be shared: a mounted volume or s3://"
        )
    return notes


def _check_inputs_uploaded(
    spec: JobSpec, job_path: Path, root: Path, files: dict[str, int]
) -> None:
    """The job spec, or a local input the excludes leave out (e.g. named like a credentials
    file), would be missing on the cluster: say so now, not after the upload."""
    import glob

    for key, name in [("the job spec", str(job_path)), *_local_inputs(spec)]:
        path = Path(name)
        base = path if path.is_absolute() else root / path
        found = glob.glob(str(base), recursive=True) if glob.has_magic(name) else [str(base)]
        for match in found:
            resolved = Path(match).resolve()
            relative = resolved.relative_to(root).as_posix()
            if not resolved.exists() or relative in files:
                continue
            if resolved.is_dir() and any(f.startswith(f"{relative}/") for f in files):
                continue
            raise UserError(
                f"{key}: {relative} is excluded from the upload (by .gitignore, .rayignore, "
                "--exclude, or ftray's rule that never uploads files named like credentials or "
                "keys: .env, *.key, *token, *secret*.json, ...), so it would be missing on the "
                "cluster. Rename it, or put it on shared storage and use its URI."
            )


def _requirements(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--requirements: no file {file.resolve()}")
    lines = [line.split("#", 1)[0].strip() for line in file.read_text().splitlines()]
    return [line for line in lines if line]


def _package_limit() -> int:
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE

    return GCS_STORAGE_MAX_SIZE


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
