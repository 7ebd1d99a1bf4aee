"""The one exception type a user sees: a bad input, said in one line with its fix."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (file, line, flag or config field). The CLI prints it as one line and exits 2.

    `field` names the config field at fault (`keep_prob`): from Python the message reads
    `keep_prob: ...`, on the command line `--keep-prob: ...`.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.field = message, field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def for_cli(self) -> str:
        """The message with the field written as its command-line flag."""
        return f"--{self.field.replace('_', '-')}: {self.message}" if self.field else self.message
