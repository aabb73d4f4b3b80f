"""The one reader of YAML (and JSON) files for every command that reads them: ``validate``,
``plan`` and ``report -f``. Their files come from pull requests and from whoever hands over a
``kubectl get -o yaml``, so they are read as hostile input, within limits:

- at most :data:`MAX_BYTES` per file;
- at most :data:`MAX_DEPTH` levels of nested mappings and sequences;
- at most :data:`MAX_NODES` nodes per file once aliases are expanded: an alias counts as every
  node of its anchor, so a "billion laughs" is refused by arithmetic on the first aliases,
  before anything is built. Anchors, aliases and ``<<`` merge keys themselves stay allowed,
  as ``kubectl``, the API server, Flux and Argo CD accept them (go-yaml has capped alias
  expansion, not aliases, since the API server's own YAML bomb, CVE-2019-11253), and the CRDs
  in ``crds/`` use them. An alias inside its own anchor (recursive data) is refused.

The limits are checked on libyaml's event stream, which is read in constant memory without
recursion; only a file within them is then composed and constructed by the same C loader.
Every failure is an :class:`InputError` of one line, ``FILE:LINE: invalid YAML: ...``.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import IO, Any

import yaml

from runbook_operator.domain.wire import clipped

MAX_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 100
MAX_NODES = 250_000

_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class InputError(Exception):
    """A file that cannot be read or parsed, or is over a limit; the message names the file (and line)."""


class _Loader(_Base):  # type: ignore[misc]
    """The safe loader, with a value its constructor cannot build (``2024-13-45``, ``!!bool maybe``,
    an integer of 5,000 digits) reported as a YAML error at its node, not raised as a ValueError."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, OverflowError):
            value = node.value if isinstance(node.value, str) else ""
            shown = repr(clipped(value, 43))
            problem = f"cannot read {shown} as {node.tag.rsplit(':', 1)[-1]}"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


def load_documents(path: str | Path) -> list[Any]:
    """The documents of a file (empty ones dropped) as JSON would carry them; raises InputError."""
    try:
        with open(path, "rb") as file:
            return parse_documents(_read(file, str(path)), str(path))
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from None


def load_stream(stream: IO[bytes] | None = None, name: str = "<stdin>") -> list[Any]:
    """The documents of a stream (standard input by default), with the same limits."""
    try:
        return parse_documents(_read(stream or sys.stdin.buffer, name), name)
    except OSError as err:
        raise InputError(f"{name}: cannot read: {err.strerror or err}") from None


def _read(file: IO[bytes], name: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_BYTES and (chunk := file.read(64 * 1024)):
        chunks.append(chunk)
        size += len(chunk)
    data = b"".join(chunks)
    if size > MAX_BYTES:
        line = data.count(b"\n", 0, MAX_BYTES) + 1
        raise InputError(f"{name}:{line}: invalid YAML: larger than {MAX_BYTES // 2**20} MiB, the limit for a file")
    return data


def parse_documents(data: bytes | str, name: str) -> list[Any]:
    """Parse YAML (or JSON) text within the limits; raises InputError naming ``name`` and the line."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1 if isinstance(data, bytes) else 1
        raise InputError(f"{name}:{line}: cannot read: not UTF-8: {err.reason} (byte {err.start + 1})") from None
    if len(text) > MAX_BYTES:
        raise InputError(f"{name}: invalid YAML: larger than {MAX_BYTES // 2**20} MiB, the limit for a file")
    try:
        _check_limits(text)
        return [_plain(doc) for doc in yaml.load_all(text, Loader=_Loader) if doc is not None]
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{name}:{mark.line + 1}" if mark is not None else name
        column = f" (column {mark.column + 1})" if mark is not None else ""
        raise InputError(f"{where}: invalid YAML: {err.problem or err.context}{column}") from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        character = f"#x{err.character:04x}" if isinstance(err.character, int) else repr(err.character)
        raise InputError(f"{name}:{line}: invalid YAML: {err.reason} (character {character})") from None
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{name}: invalid YAML: {first}") from None


class _Limit(yaml.MarkedYAMLError):
    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem=problem, problem_mark=mark)


def _check_limits(text: str) -> None:
    """Walk the event stream once: depth, expanded size and recursive aliases, before building
    anything. Raises a MarkedYAMLError (syntax errors come from libyaml itself, as they would)."""
    parser = _Base(text)
    try:
        anchors: dict[str, tuple[int, int]] = {}  # anchor -> (nodes, height) of its node, once complete
        open_anchors: dict[str, int] = {}  # anchors of the collections being read
        stack: list[list[Any]] = []  # the open collections: [nodes, height, anchor]
        nodes = 0
        while parser.check_event():
            event = parser.get_event()
            if isinstance(event, yaml.DocumentStartEvent):
                anchors.clear()
                continue
            if isinstance(event, yaml.CollectionStartEvent):
                nodes += 1
                if len(stack) >= MAX_DEPTH:
                    raise _Limit(f"nested more than {MAX_DEPTH} levels deep, the limit for a file", event.start_mark)
                stack.append([1, 0, event.anchor])
                if event.anchor is not None:
                    open_anchors[event.anchor] = open_anchors.get(event.anchor, 0) + 1
            elif isinstance(event, yaml.CollectionEndEvent):
                size, height, anchor = stack.pop()
                height += 1
                if anchor is not None:
                    anchors[anchor] = (size, height)
                    open_anchors[anchor] -= 1
                    if not open_anchors[anchor]:
                        del open_anchors[anchor]
                _add(stack, size, height)
            elif isinstance(event, yaml.AliasEvent):
                alias = str(event.anchor)
                if alias in open_anchors:
                    raise _Limit(
                        f"alias *{alias} is inside its own anchor (recursive data is not allowed)", event.start_mark
                    )
                size, height = anchors.get(alias, (1, 0))  # an undefined one: the loader says so
                nodes += size
                if len(stack) + height > MAX_DEPTH:
                    too_deep = f"alias *{alias} nests more than {MAX_DEPTH} levels deep, the limit for a file"
                    raise _Limit(too_deep, event.start_mark)
                _add(stack, size, height)
            elif isinstance(event, yaml.ScalarEvent):
                nodes += 1
                if event.anchor is not None:
                    anchors[event.anchor] = (1, 0)
                _add(stack, 1, 0)
            if nodes > MAX_NODES:
                raise _Limit(
                    f"more than {MAX_NODES:,} nodes with aliases expanded, the limit for a file "
                    "(an alias counts as every node of its anchor)",
                    event.start_mark,
                )
    finally:
        parser.dispose()


def _add(stack: list[list[Any]], size: int, height: int) -> None:
    if stack:
        stack[-1][0] += size
        stack[-1][1] = max(stack[-1][1], height)


def _plain(value: Any) -> Any:
    """What the API server would receive as JSON: YAML timestamps become strings, keys strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat().replace("+00:00", "Z")
    return value
