"""The README's job-spec reference is the one the code generates."""

from __future__ import annotations

from pathlib import Path

from ftray.specdoc import START, with_reference

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_spec_reference_matches_the_code():
    text = README.read_text()
    assert START in text
    assert with_reference(text) == text, (
        "README.md's job spec reference is stale: run `python -m ftray.specdoc README.md`"
    )


def test_readme_names_every_cli_verb():
    from ftray.cli import _parser

    text = README.read_text()
    verbs = _parser()._subparsers._group_actions[0].choices
    for verb in verbs:
        assert f"`ftray {verb}" in text, verb
