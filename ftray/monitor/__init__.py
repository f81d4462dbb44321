"""Monitoring: quality checks on served traffic, alerts, feedback, and retraining.

The stage is `ftray.monitor.stage.monitor`; `sampler` runs inside the Serve app, `checks`
and `embed` compute the checks, `reference` finds what each served model is checked
against, `feedback` stores users' ratings and corrections, `retrain`
builds the next dataset version from them, `report` writes the monitoring report. Nothing is
imported here, so the Serve app's import of `sampler` loads nothing else.
"""
