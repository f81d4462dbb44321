"""The sweep's winner is the best trial on the ranking metric, not on validation loss."""

from __future__ import annotations

import pytest
import yaml

from ftray.specload import validate_spec as _validate
from ftray.sweep import rank


def _row(trial: str, metric: float | None, loss: float, finished: bool = True) -> dict:
    return {
        "trial_id": trial,
        "metric": metric,
        "eval_loss": loss,
        "run_id": f"run-{trial}" if finished else None,
    }


def validate_spec(text: str):
    return _validate(yaml.safe_load(text), [])


def test_the_task_metric_winner_beats_the_lower_loss():
    """Trial b has the lowest validation loss, trial a the best macro-F1: a wins."""
    rows = [_row("b", 0.40, 0.9), _row("a", 0.70, 1.3), _row("c", 0.55, 1.0)]
    assert min(rows, key=lambda r: r["eval_loss"])["trial_id"] == "b"
    assert [r["trial_id"] for r in rank(rows, "max")] == ["a", "c", "b"]


def test_a_tie_on_the_task_metric_goes_to_the_lower_loss():
    rows = [_row("a", 0.5, 1.3), _row("b", 0.5, 0.9)]
    assert [r["trial_id"] for r in rank(rows, "max")] == ["b", "a"]


def test_unfinished_and_unscored_trials_rank_last():
    rows = [_row("x", 0.9, 1.0, finished=False), _row("y", None, 0.5), _row("z", 0.1, 2.0)]
    assert [r["trial_id"] for r in rank(rows, "max")] == ["z", "y", "x"]
    assert [r["trial_id"] for r in rank([_row("p", 2.0, 2.0), _row("q", 1.0, 1.0)], "min")] == [
        "q",
        "p",
    ]


BASE = """
project: p
model: {base: tiny}
data:
  sources: [{path: data/banking77/quickstart.csv}]
  prompt_field: text
  completion_field: category
  labels: [a, b]
sweep:
  parameters: {train.lr: {type: choice, values: [0.001, 0.01]}}
"""


def test_a_sweep_ranks_on_the_task_metric_by_default():
    sweep = validate_spec(BASE).sweep
    assert (sweep.metric, sweep.resolved_mode, sweep.task_sample) == ("task", "max", 64)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  metric: task\n  mode: min\n", "task is better when higher"),
        ("  metric: eval_loss\n  mode: max\n", "eval_loss is better when lower"),
        ("  metric: loss\n", "sweep.metric"),
    ],
)
def test_a_mode_against_the_metric_is_refused(extra, message):
    from ftray.errors import UserError

    with pytest.raises(UserError) as caught:
        validate_spec(BASE + extra)
    assert message in str(caught.value)


def test_a_task_metric_trials_cannot_compute_is_refused():
    from ftray.errors import UserError

    spec = BASE.replace("labels: [a, b]", "labels: [a, b]\neval: {primary_metric: consistency}")
    with pytest.raises(UserError) as caught:
        validate_spec(spec)
    assert "sweep.metric" in str(caught.value)


def test_the_leaderboard_takes_each_trials_best_over_its_history():
    """From Tune's results: each trial's best task metric and best loss over every
    evaluation it reported; the winner is the task metric's, not the loss's."""
    from types import SimpleNamespace

    import pandas as pd

    from ftray.sweep import _leaderboard

    def result(trial: str, task: list[float], loss: list[float]):
        history = pd.DataFrame({"task_metric": task, "eval_loss": loss})
        metrics = {"trial_id": trial, "run_id": f"run-{trial}", "step": 6, "run_folder": [trial]}
        return SimpleNamespace(
            metrics=metrics, error=None, metrics_dataframe=history, config={}, path=f"/t/{trial}"
        )

    rules = validate_spec(BASE).sweep
    results = [
        result("low-loss", [0.2, 0.35, 0.3], [1.2, 0.8, 0.7]),
        result("high-f1", [0.4, 0.6, 0.55], [1.3, 1.1, 1.0]),
    ]
    board = rank(_leaderboard(results, rules), rules.resolved_mode)
    assert [r["trial_id"] for r in board] == ["high-f1", "low-loss"]
    assert (board[0]["metric"], board[0]["eval_loss"]) == (0.6, 1.0)
    assert (board[1]["metric"], board[1]["eval_loss"]) == (0.35, 0.7)


def _sweep(**rules):
    from ftray.spec import SweepSpec

    space = {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}
    return SweepSpec.model_validate({"parameters": space} | rules)


def test_asha_rungs_follow_the_trial_budget_unless_set():
    from ftray.spec import TrainSpec
    from ftray.sweep import asha_rungs, evaluations_per_trial, trial_count

    # 16 steps, an evaluation every 2: 8 evaluations; 16 trials: factor 4 (4² ≤ 16), grace 1
    train = TrainSpec.model_validate({"max_steps": 16, "eval_every": 2, "batch_size": 4})
    evaluations = evaluations_per_trial(train, n_train=270)
    assert evaluations == 8
    assert asha_rungs(_sweep(num_samples=16), evaluations) == (1, 4)
    # 9 to 15 trials: factor 3; fewer than 9: factor 2
    assert asha_rungs(_sweep(num_samples=15), evaluations) == (1, 3)
    assert asha_rungs(_sweep(num_samples=9), 18) == (2, 3)
    assert asha_rungs(_sweep(num_samples=8), evaluations) == (2, 2)
    assert asha_rungs(_sweep(num_samples=4), 6) == (1, 2)
    # 27 trials of 54 evaluations: factor 4, rungs at 3, 12 and 48 (< 54)
    assert asha_rungs(_sweep(num_samples=27), 54) == (3, 4)
    # a grid counts every point: 4 × 2 values × 8 samples = 64 trials, factor 4
    grid = {"type": "grid", "values": [1, 2, 3, 4]}
    space = {"train.lora.r": grid, "train.lora.alpha": {"type": "grid", "values": [8, 16]}}
    rules = _sweep(num_samples=8, parameters=space)
    assert trial_count(rules) == 64 and asha_rungs(rules, 200) == (12, 4)
    # explicit values win
    assert asha_rungs(_sweep(num_samples=16, grace_period=3, reduction_factor=3), 8) == (3, 3)
    # without eval_every, one evaluation per epoch (and a last one at max_steps)
    per_epoch = TrainSpec.model_validate({"epochs": 3, "batch_size": 4})
    assert evaluations_per_trial(per_epoch, n_train=40) == 3
    cut = TrainSpec.model_validate({"epochs": 3, "batch_size": 4, "max_steps": 25})
    assert evaluations_per_trial(cut, n_train=40) == 3
