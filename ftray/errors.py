"""Errors meant for the user: printed without a traceback, exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: a bad spec, a missing file or model, a bad argument."""
