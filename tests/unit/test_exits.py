"""Every decision's exit code, from the one place that maps them (ftray/exits.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ftray import exits
from ftray.assess import DONT, FINE_TUNE, TOO_LITTLE

FTRAY = Path(__file__).resolve().parents[2] / "ftray"
RULES = [{"rule": "exact_match ≥ incumbent + 0", "passed": False, "detail": "…"}]


@pytest.mark.parametrize(
    ("gate", "code"),
    [
        ({"passed": True, "rules": []}, 0),
        ({"passed": False, "rules": RULES}, 4),
        ({"passed": False, "pending": False, "rules": RULES}, 4),
        # a human rule awaiting ratings: not passed, yet not rejected either
        ({"passed": False, "pending": True, "rules": RULES}, 5),
    ],
)
def test_gate_verdict_to_exit_code(gate, code):
    assert exits.gate_exit(gate) == code


@pytest.mark.parametrize(
    ("decision", "force", "code"),
    [
        (FINE_TUNE, False, 0),
        (DONT, False, 3),
        (DONT, True, 0),
        # --force overrides a judgement, never a lack of data
        (TOO_LITTLE, True, 3),
        (TOO_LITTLE, False, 3),
    ],
)
def test_assess_decision_to_exit_code(decision, force, code):
    assert exits.assess_exit(decision, force=force) == code


def test_monitor_alerts_to_exit_code():
    assert exits.monitor_exit([]) == 0
    assert exits.monitor_exit([{"check": "drift", "alert": True}]) == 6


def test_the_codes_are_distinct():
    codes = [value for name, value in vars(exits).items() if name.isupper()]
    assert len(codes) == len(set(codes))


def test_no_cli_module_imports_another_but_the_entry_point():
    """ftray/cli.py adds the review and monitor verbs; they take their codes from
    ftray.exits, so no import cycle runs between the three."""
    clis = {"ftray.cli", "ftray.monitor.cli", "ftray.review.cli"}
    for module in clis - {"ftray.cli"}:
        path = FTRAY.parent / (module.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        assert not imported & clis, f"{module} imports {imported & clis}"
