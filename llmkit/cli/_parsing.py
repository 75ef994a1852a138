"""The parser class every llmkit command uses: forgiving spellings, one-line mistakes, defaults in --help.

- ``--max_new_tokens`` (transformers' spelling) means ``--max-new-tokens`` when that is one of our flags;
- an unknown flag is one line with the closest flag (``did you mean --temperature?``) and exit code 2,
  for the dotted ``--train.FIELD``/``--model.FIELD`` flags too;
- every flag's help ends with its default, unless it states it already (or the default is None/False).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import NoReturn


class HelpWithDefaults(argparse.HelpFormatter):
    """Appends ``(default: X)`` to a flag's help when X is a real value the help does not already state."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and action.nargs != 0  # on/off switches: their help says what they turn on
            and text != argparse.SUPPRESS
            and default not in (None, False, argparse.SUPPRESS)
            and "default" not in text
        ):
            shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            text += " (default: {})".format(str(shown).replace("%", "%%"))  # help is %-formatted
        return text


class RawDescriptionWithDefaults(HelpWithDefaults, argparse.RawDescriptionHelpFormatter):
    """Descriptions kept as written (tables, examples), flags with their defaults."""


class LlmkitParser(argparse.ArgumentParser):
    """argparse with forgiving flag spellings and one-line errors (exit 2)."""

    def __init__(self, *args, **kwargs) -> None:
        given = kwargs.get("formatter_class", argparse.HelpFormatter)
        kwargs["formatter_class"] = {
            argparse.HelpFormatter: HelpWithDefaults,
            argparse.RawDescriptionHelpFormatter: RawDescriptionWithDefaults,
        }.get(given, given)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(self._dashed(args), namespace)

    def _dashed(self, args: list[str]) -> list[str]:
        """``--some_flag[=V]`` -> ``--some-flag[=V]`` where only the dashed spelling is ours; stops at ``--``."""
        known = self._option_string_actions
        out = []
        for i, token in enumerate(args):
            if token == "--":
                return out + args[i:]
            name, eq, value = token.partition("=")
            if name.startswith("--") and "_" in name and name not in known:
                dashed = "--" + name[2:].replace("_", "-")
                if dashed in known:
                    token = dashed + eq + value
            out.append(token)
        return out

    def error(self, message: str) -> NoReturn:
        """One line: ``llmkit CMD: error: MESSAGE (see llmkit CMD --help)``, exit code 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def flag_names(self) -> list[str]:
        return [s for s in self._option_string_actions if s.startswith("--")]


def unknown_flags_message(parser: LlmkitParser, extras: list[str]) -> str:
    """``unrecognized argument --temprature (did you mean --temperature?)`` for the first unknown flag."""
    flags = [e for e in extras if e.startswith("-")]
    if not flags:
        return "unrecognized arguments: " + " ".join(extras)
    wrong = flags[0].partition("=")[0]
    close = difflib.get_close_matches(wrong.replace("_", "-"), parser.flag_names(), n=1, cutoff=0.6)
    if not close:  # the dotted flags keep underscores in field names: compare as typed too
        close = difflib.get_close_matches(wrong, parser.flag_names(), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    more = f" and {len(flags) - 1} more" if len(flags) > 1 else ""
    return f"unrecognized argument {wrong}{hint}{more}"


def subparser_for(parser: argparse.ArgumentParser, argv: list[str]) -> LlmkitParser:
    """The deepest (sub)command parser the words of ``argv`` name, e.g. ``tokenizer train``."""
    current = parser
    for word in argv:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if subs and word in subs[0].choices:
            current = subs[0].choices[word]
    return current
