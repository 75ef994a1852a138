"""`llmkit chat` as a library: the chat template with tools (template.py), the conversation and its slash
commands as pure steps (session.py), and the terminal loop that reads lines and streams replies (terminal.py)."""
