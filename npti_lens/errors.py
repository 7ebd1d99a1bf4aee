"""The one exception type a user sees: a bad input, said in one line with its fix."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (file, line, flag). The CLI prints it as one line and exits non-zero."""
