"""Typed substitution: incident values are escaped for the language of the parameter they land in.

An action declares, per parameter, what its text is (:class:`Language`). A template may
fill a parameter with incident data (labels, summary, earlier steps' output), and that
data is untrusted: whatever it holds, it must stay *one value* of the parameter's
language and never change the parameter's shape.

- ``literal``: a destination (host, port, database, user, endpoint, Secret reference). No
  template at all: where a step connects, and where credentials go, is the policy's choice.
- ``url``: scheme and host literal; substituted values percent-encoded, in the path only.
- ``promql``: substituted values only inside quoted string literals, escaped for the quote.
- ``glob``: Redis glob pattern; ``* ? [ ] \\`` in values are escaped.
- ``name``: an object name or label value (also inside a label selector): values must be
  made of letters, digits, ``-``, ``_`` and ``.``, so they cannot add a requirement, a
  path segment or an option; the field's own pattern checks the whole name afterwards.
- ``text``: free text (messages, JSON bodies, headers), substituted as it is.

This module is pure: the lexer and the escapers; ``expressions`` applies them.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable

from runbook_operator.domain.wire import clipped

# Marks around each substituted value while a PromQL template renders: private-use code
# points that a value may not contain, so the lexer can tell the policy's text from data.
OPEN, CLOSE = "\ue000", "\ue001"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


class Language(enum.StrEnum):
    TEXT = "text"
    LITERAL = "literal"
    URL = "url"
    PROMQL = "promql"
    GLOB = "glob"
    NAME = "name"


def _shown(value: str) -> str:
    return repr(clipped(value, 80))


def glob_value(value: object) -> str:
    """A value inside a Redis glob matches only itself."""
    return _GLOB_SPECIAL.sub(r"\\\1", str(value))


def name_value(value: object) -> str:
    text = str(value)
    if not _NAME.fullmatch(text):
        raise ValueError(f"the incident value {_shown(text)} is not a name (letters, digits, '-', '_', '.')")
    return text


def marked(value: object) -> str:
    text = str(value)
    if OPEN in text or CLOSE in text:
        raise ValueError("the incident value holds the private-use characters U+E000/U+E001")
    return f"{OPEN}{text}{CLOSE}"


def _promql_escape(value: str, quote: str) -> str:
    out = []
    for char in value:
        if char in ("\\", quote):
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def promql(text: str, escape: Callable[[str, str], str] = _promql_escape) -> str:
    """Replace each marked value with its escaped form; raise ValueError when one is not
    inside a single- or double-quoted string literal (the only place data belongs)."""
    out: list[str] = []
    i, quote = 0, ""  # quote: the open string's quote character, "" outside strings
    while i < len(text):
        char = text[i]
        if char == OPEN:
            end = text.index(CLOSE, i)
            if quote not in ('"', "'"):
                where = "a backtick string" if quote == "`" else "the query's syntax"
                raise ValueError(
                    f"a substituted value lands in {where}; in PromQL, values may only fill a quoted "
                    'string such as {service="{{ incident.labels.service }}"}'
                )
            out.append(escape(text[i + 1 : end], quote))
            i = end + 1
            continue
        out.append(char)
        if quote:
            if char == "\\" and quote != "`" and i + 1 < len(text):
                if text[i + 1] == OPEN:  # the policy's backslash would swallow the value's escape
                    raise ValueError("a backslash right before a substituted value in a PromQL string")
                out.append(text[i + 1])
                i += 1
            elif char == quote:
                quote = ""
        elif char in ('"', "'", "`"):
            quote = char
        elif char == "#":  # a comment to the end of the line: the policy's own text only
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            if OPEN in text[i:end]:
                raise ValueError("a substituted value lands in a PromQL comment")
            out.append(text[i + 1 : end])
            i = end
            continue
        i += 1
    return "".join(out)


def source_markers(source: str) -> str:
    """A template's text with each ``{{ … }}`` replaced by a marked placeholder and the
    ``{% … %}`` and ``{# … #}`` tags dropped: what the lexer checks when a policy is applied."""
    source = re.sub(r"\{#.*?#\}", "", source, flags=re.S)
    source = re.sub(r"\{%.*?%\}", "", source, flags=re.S)
    return re.sub(r"\{\{.*?\}\}", OPEN + "v" + CLOSE, source, flags=re.S)
