"""`ftray run`: the stages chained, each run once per command and reused when already done."""

from __future__ import annotations

import tempfile
from functools import cached_property

from ftray.artifacts import AssessRef, DatasetRef, EvalRef, RunRef, SweepRef
from ftray.assess import assess
from ftray.assess import summary as assess_summary
from ftray.data.prepare import prepare
from ftray.errors import UserError
from ftray.evaluate.stage import evaluate
from ftray.placement import serving_config
from ftray.progress import Progress
from ftray.registry import apply_verdict, get_model, register
from ftray.review.verdict import human_gate
from ftray.serve.stage import serve_model
from ftray.spec import JobSpec
from ftray.specload import spec_hash
from ftray.store import Store
from ftray.sweep import metric_name, print_leaderboard, sweep
from ftray.train.ray_train import train
from ftray.train.tracking import log_evaluation, wandb_settings


class Pipeline:
    """One job's stages; asking for a stage's artifact runs the stages it needs first.

    Artifacts are properties; what changes the registry (`decide`) and what serves
    (`serve`) are explicit calls.
    """

    def __init__(self, spec: JobSpec, progress: Progress):
        self.spec = spec
        self.store = Store(spec.storage, spec.project)
        self.progress = progress
        # Set by `decide`: the card after the gate's verdict was applied to the registry.
        self.decision: dict | None = None

    @cached_property
    def dataset(self) -> DatasetRef:
        with self.progress.stage("prepare"):
            ref = prepare(self.spec.data, self.spec.model, self.store, self.progress)
            counts = ref.manifest["counts"]
            self._said(ref.reused, "dataset", ref.id)
            self.progress.note(
                f"records: {counts['train'] + counts['validation'] + counts['eval']} kept "
                f"({counts['train']} train, {counts['validation']} validation, "
                f"{counts['eval']} eval), {counts['quarantine']} quarantined "
                f"{counts['quarantine_by_rule'] or ''}"
            )
            self.progress.artifact("dataset", ref.uri)
        return ref

    @cached_property
    def assessment(self) -> AssessRef:
        dataset = self.dataset
        with self.progress.stage("assess"):
            ref = assess(self.spec, dataset, self.store, self.progress)
            self._said(ref.reused, "assessment", ref.id)
            for line in assess_summary(ref.manifest, self.spec):
                self.progress.note(line)
            self.progress.artifact("assessment", self.store.uri("assessments", ref.id))
        return ref

    @cached_property
    def sweep(self) -> SweepRef:
        dataset = self.dataset
        if self.spec.sweep is None:
            raise UserError(
                "the job spec has no `sweep:` section; add one (see the README's sweep "
                "section) or use `ftray train`."
            )
        with self.progress.stage("sweep"):
            ref = sweep(self.spec, dataset, self.store, self.progress)
            self._said(ref.reused, "sweep", ref.id)
            print_leaderboard(ref.manifest["leaderboard"], metric_name(self.spec), self.progress)
            self.progress.note(f"winner: {ref.winner.id}")
            self.progress.artifact("leaderboard", self.store.uri("sweeps", ref.id))
        return ref

    @property
    def trained(self) -> RunRef:
        """What evaluation gets: the sweep's winner when the spec sweeps, else the run."""
        return self.sweep.winner if self.spec.sweep is not None else self.run

    @cached_property
    def run(self) -> RunRef:
        dataset = self.dataset
        with self.progress.stage("train"):
            ref = train(
                self.spec.train,
                self.spec.model,
                dataset,
                self.store,
                self.progress,
                wandb=self.spec.wandb,
                project=self.spec.project,
            )
            self._said(ref.reused, "run", ref.id)
            self.progress.note(
                f"loss {ref.manifest['loss_first']} → {ref.manifest['loss_last']} "
                f"(validation loss {ref.manifest['metrics'].get('eval_loss')})"
            )
            if ref.manifest.get("stopped_early"):
                self.progress.note(f"stopped early at step {ref.manifest['metrics']['step']}")
            if ref.manifest.get("resumed_from"):
                self.progress.note(f"resumed from step(s) {ref.manifest['resumed_from']}")
            self.progress.artifact(f"best {ref.kind}", ref.weights_uri)
        return ref

    @cached_property
    def evaluation(self) -> EvalRef:
        run, spec = self.trained, self.spec
        with self.progress.stage("evaluate"):
            ref = evaluate(
                spec.eval,
                spec.model,
                spec.data,
                self.dataset,
                run,
                self.store,
                self.progress,
                serving_config(spec),
            )
            self._said(ref.reused, "evaluation", ref.id)
            if not ref.reused or ref.regated:
                self._track(run, ref)
            if ref.regated:
                self.progress.note(
                    "eval.gate changed: its rules re-applied to the stored evaluation (no new "
                    "answers generated)"
                )
            manifest, primary = ref.manifest, ref.metrics["primary_metric"]
            row = manifest["comparison"][primary]
            if row["difference"] is not None:
                low, high = row["difference_interval"]
                self.progress.note(
                    f"{primary} on {ref.metrics['examples']} held-out examples: incumbent "
                    f"({manifest['incumbent']['label']}) {row['incumbent']:.3f} → candidate "
                    f"{row['candidate']:.3f} (difference {row['difference']:+.3f}, interval "
                    f"[{low:+.3f}, {high:+.3f}])"
                )
            verdict = "passed" if ref.gate["passed"] else "failed"
            self.progress.note(f"gate {verdict}")
            for rule in ref.gate["rules"]:
                if rule.get("skipped"):
                    self.progress.note(f"  – skipped {rule['rule']}: {rule['detail']}")
                elif not rule["passed"]:
                    self.progress.note(f"  ✗ {rule['rule']}: {rule['detail']}")
            report = self.store.uri("evals", ref.id, "report.html")
            self.progress.artifact("evaluation report", report)
        return ref

    def decide(self) -> dict:
        """Register the candidate and apply the gate's verdict to the registry: promote,
        reject, or leave it pending a human review; once per pipeline.

        Returns the model card with its stage now and the verdict that decided it (`gate`).
        """
        if self.decision is not None:
            return self.decision
        evaluation = self.evaluation
        with self.progress.stage("register"):
            card = register(
                self.store,
                run_id=self.trained.id,
                weights_uri=self.trained.weights_uri,
                kind=self.trained.kind,
                dataset_id=self.dataset.id,
                eval_id=evaluation.id,
                metrics=evaluation.metrics,
                gate=evaluation.gate,
                spec_hash=spec_hash(self.spec),
                base_model=self.spec.model.base,
                system_prompt=self.spec.data.system_prompt,
                parent=self.trained.manifest.get("parent"),
                lora=_adapter_shape(self.trained),
                chat_template=self.trained.manifest.get("chat_template"),
                serving=evaluation.manifest.get("serving"),
            )
            model_id = card["model_id"]
            # A gate with a human rule waits for ratings; `ftray review decide` settles it.
            gate = human_gate(self.store, evaluation.id) or evaluation.gate
            outcome = apply_verdict(
                self.store,
                model_id,
                gate,
                eval_id=evaluation.id,
                auto_promote=self.spec.eval.gate.promote,
            )
            self.decision = {**get_model(self.store, model_id), "gate": gate}
            _note_verdict(self.progress, outcome, self.decision)
            self.progress.artifact("model card", self.store.uri("models", model_id))
        return self.decision

    def serve(self, keep_serving: bool = False) -> str:
        card = self.decide()
        with self.progress.stage("serve"):
            return serve_model(self.spec, self.store, card["model_id"], self.progress, keep_serving)

    def _track(self, run: RunRef, ref: EvalRef) -> None:
        """The evaluation as a W&B run in the trained model's group (its sweep's, or its own)."""
        # W&B writes its files locally; a remote store's evaluation logs from a temp folder
        folder = self.store.path("evals", ref.id) if self.store.is_local else tempfile.gettempdir()
        group = (run.manifest.get("wandb") or {}).get("group") or run.id
        settings = wandb_settings(self.spec.wandb, self.spec.project, ref.id, folder, group=group)
        html = self.store.fs.read_text(self.store.path("evals", ref.id, "report.html"), "utf-8")
        log_evaluation(settings, ref.manifest, html)

    def _said(self, reused: bool, what: str, ident: str) -> None:
        self.progress.note(f"{'reused' if reused else 'new'} {what} {ident}")


def _adapter_shape(run: RunRef) -> dict | None:
    """An adapter's LoRA rank and target modules, as its run's spec set them."""
    if run.kind != "adapter":
        return None
    lora = run.manifest["spec"]["lora"]
    return {"r": lora["r"], "target_modules": lora["target_modules"]}


def _note_verdict(progress: Progress, outcome: str, card: dict) -> None:
    """Tell the user what the gate's verdict did to the registry, and what they can do."""
    if outcome in _VERDICT_NOTES:
        progress.note(_VERDICT_NOTES[outcome].format(model_id=card["model_id"]))
    progress.note(f"model id: {card['model_id']} (stage: {card['stage']})")


_VERDICT_NOTES = {
    "pending": "awaiting human review: rate with `ftray review JOB.yaml`, then "
    "`ftray review decide JOB.yaml`",
    "now_passes": "the gate now passes {model_id}; `ftray models promote` promotes it",
    "rejects_production": "the gate now rejects {model_id}, the production model; production "
    "is unchanged (`ftray models rollback JOB.yaml` restores the previous one)",
}
