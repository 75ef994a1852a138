import sys

from llmkit.cli import program

sys.exit(program())
