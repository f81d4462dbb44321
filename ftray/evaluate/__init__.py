"""Evaluation: the candidate against the incumbent on held-out examples.

The stage is `ftray.evaluate.stage.evaluate`; `generate` answers with each model on Ray Data,
`score` and `metrics` score the answers, `compare` pairs the arms, `gate` judges them, and
`report` writes `report.md` / `report.html`. Nothing is imported here, so importing a helper
(the monitor's checks use `metrics`) does not load the stage.
"""
