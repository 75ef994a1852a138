"""One error type for everything a user can get wrong.

The CLI prints ``LlmkitError`` as one line and exits with code 2; the server turns it into a 4xx.
Every message names the problem, and the hint names the fix.
"""

from __future__ import annotations


class LlmkitError(Exception):
    """A user-facing error: ``message`` says what is wrong, ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}; {hint}" if hint else message)
