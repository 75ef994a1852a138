"""The server's chat template is the terminal chat's (llmkit.chat.template): one renderer, with tools.

Kept as a name so ``from llmkit.serve.chat import ChatTemplate`` (the CLI, tests) still works.
"""

from llmkit.chat.template import PLAIN_STOP, ChatTemplate

__all__ = ["PLAIN_STOP", "ChatTemplate"]
