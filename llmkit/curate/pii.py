"""PII redaction: e-mail addresses, phone numbers and IP addresses replaced by placeholders.

Patterns, and what they leave alone on purpose:
- e-mail: local@domain.tld (RFC 5322's common subset: letters, digits, ``._%+-``; a dotted domain with a
  letter TLD of 2+ characters).
- phone: 7 to 15 digits in groups, after a +country code ("+44 20 7946 0958", "+1 (555) 010-9999") or
  an area code in brackets ("(555) 010-9999"), or joined by hyphens or dots ("555-010-9999",
  "555-0199", "555.010.9999"). Space-separated groups without a prefix are not taken (a list of numbers
  looks the same), nor dates ("2019-01-30"), years, prices or section numbers.
- IP: IPv4 with every octet 0-255, not inside a longer dotted number (version strings such as
  "1.2.3.4.5" stay), and IPv6 in its full or "::"-shortened form.
Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from llmkit.curate.config import PiiConfig

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)")
_H = r"[0-9A-Fa-f]{1,4}"
IPV6 = re.compile(
    rf"(?<![\w:])(?:(?:{_H}:){{7}}{_H}|(?:{_H}:){{1,7}}:(?:{_H}(?::{_H}){{0,6}})?|::(?:{_H}(?::{_H}){{0,6}}))(?![\w:])"
)
# Three shapes, so lists of numbers ("10 15 20 25") are not read as one: a +country code then groups
# (any of space . -), an (area code) then groups, or groups joined by hyphens or by dots alone.
PHONE = re.compile(
    r"(?<![\w+/.-])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,4}"
    r"|\(\d{2,4}\)[ .-]?\d{2,4}(?:[ .-]\d{2,4}){1,3}"
    r"|\d{2,4}(?:-\d{2,4}){1,3}|\d{2,4}(?:\.\d{2,4}){2,3}"
    r")(?![\w/]|[.-]\d)"
)


_DIGIT = re.compile(r"\d")


@dataclass
class Redaction:
    text: str
    counts: dict[str, int] = field(default_factory=dict)


def _is_phone(match: str) -> bool:
    digits = sum(c.isdigit() for c in match)
    if not 7 <= digits <= 15:
        return False
    # a date (2019-01-30, 2019.01.30) or a time range is not a phone number
    return not re.fullmatch(r"(?:19|20)\d\d[-./]\d\d[-./]\d\d", match)


def redact(text: str, cfg: PiiConfig) -> Redaction:
    """Replace e-mails, then IPs, then phones (an IP is not read as a phone number) by the placeholders."""
    counts: dict[str, int] = {}

    def sub(pattern: re.Pattern, kind: str, replacement: str, text: str, check=None) -> str:
        def repl(match: re.Match) -> str:
            if check is not None and not check(match.group()):
                return match.group()
            counts[kind] = counts.get(kind, 0) + 1
            return replacement

        return pattern.sub(repl, text)

    # each pattern needs a character most texts lack ("@", ":", a digit): a substring test skips the scan
    if cfg.email and "@" in text:
        text = sub(EMAIL, "email", cfg.email_replacement, text)
    if cfg.ip and _DIGIT.search(text):
        text = sub(IPV4, "ip", cfg.ip_replacement, text)
        if ":" in text:
            text = sub(IPV6, "ip", cfg.ip_replacement, text, check=lambda m: m.count(":") >= 2)
    if cfg.phone and _DIGIT.search(text):
        text = sub(PHONE, "phone", cfg.phone_replacement, text, check=_is_phone)
    return Redaction(text, counts)
