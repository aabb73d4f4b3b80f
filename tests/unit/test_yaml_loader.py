"""Untrusted YAML files (issue 22, finding 5): the one loader of `validate`, `plan` and `report -f`
(gitops.loader) reads them within limits, and every limit is one line naming the file and line.

A "billion laughs" of a few hundred bytes took `validate` and `plan` to 3 GB and over 60 s, and
`report -f` to a MemoryError; deep nesting ended `report -f` in a RecursionError traceback.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import yaml

from runbook_operator.entrypoints.cli import main
from runbook_operator.gitops import loader
from runbook_operator.gitops.loader import MAX_BYTES, MAX_DEPTH, InputError, load_documents, load_stream

ROOT = Path(__file__).resolve().parents[2]

# 9 levels of 9 aliases each: 9**9 (387 million) strings once expanded, in an Incident so that
# each command gets as far as it would with a real one
BOMB = """\
apiVersion: remediation.ishchat.io/v1alpha1
kind: Incident
metadata: {name: lol}
spec:
  alert: Lol
  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
  summary: *i
status: {phase: Resolved, findings: [*i, *i]}
"""
# the count passes 250,000 at the third alias of the sixth anchor, with nothing built yet
BOMB_ERROR = (
    ":11: invalid YAML: more than 250,000 nodes with aliases expanded, the limit for a file "
    "(an alias counts as every node of its anchor) (column 18)"
)

INCIDENT = "apiVersion: remediation.ishchat.io/v1alpha1\nkind: Incident\nmetadata: {name: deep}\nspec: "
# 500 levels: within libyaml's own limit, past Python's recursion limit in the pure-Python loader
DEEP = INCIDENT + "[" * 500 + "]" * 500
TOO_DEEP = "nested more than 100 levels deep, the limit for a file"


def written(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- the loader -------------------------------------------------------------------------------


def test_an_alias_bomb_is_refused_at_its_first_anchors_in_bounded_time_and_memory(tmp_path: Path) -> None:
    bomb = written(tmp_path, "bomb.yaml", BOMB)
    tracemalloc.start()
    with pytest.raises(InputError) as refused:
        load_documents(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(refused.value) == f"{bomb}{BOMB_ERROR}"
    assert peak < 2**20, peak  # expanded, it would be gigabytes (and take minutes)


def test_nesting_is_capped_before_anything_recurses(tmp_path: Path) -> None:
    deepest = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert str(load_documents(written(tmp_path, "ok.yaml", deepest))[0]).count("[") == MAX_DEPTH
    too_deep = written(tmp_path, "deep.yaml", DEEP)
    with pytest.raises(InputError) as refused:
        load_documents(too_deep)
    assert str(refused.value) == f"{too_deep}:4: invalid YAML: {TOO_DEEP} (column 106)"
    # deeper than libyaml's own limit (1,000 in libyaml 0.2.5): its error, in the same form
    deeper = written(tmp_path, "deeper.yaml", INCIDENT + "[" * 50_000)
    with pytest.raises(InputError, match=rf"^{re.escape(str(deeper))}:4: invalid YAML: [^\n]*\(column \d+\)$"):
        load_documents(deeper)
    block = "".join(f"{'  ' * i}k{i}:\n" for i in range(MAX_DEPTH + 1)) + "  " * (MAX_DEPTH + 1) + "end\n"
    with pytest.raises(InputError, match=r"block\.yaml:101: invalid YAML: nested more than 100 levels deep"):
        load_documents(written(tmp_path, "block.yaml", block))


def test_an_alias_counts_its_anchors_depth(tmp_path: Path) -> None:
    nested = "[" * 60 + "]" * 60
    fits = written(tmp_path, "fits.yaml", f"a: &a {nested}\nb: {'[' * 39}*a{']' * 39}\n")
    assert str(load_documents(fits)[0]).count("[") == 60 + 39 + 60
    deep = written(tmp_path, "deep.yaml", f"a: &a {nested}\nb: {'[' * 41}*a{']' * 41}\n")
    with pytest.raises(InputError) as refused:
        load_documents(deep)
    assert str(refused.value) == (
        f"{deep}:2: invalid YAML: alias *a nests more than 100 levels deep, the limit for a file (column 45)"
    )


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    loop = written(tmp_path, "loop.yaml", "kind: Incident\nspec: &s {again: *s}\n")
    with pytest.raises(InputError) as refused:
        load_documents(loop)
    assert str(refused.value) == (
        f"{loop}:2: invalid YAML: alias *s is inside its own anchor (recursive data is not allowed) (column 18)"
    )


def test_the_expanded_size_is_capped_not_the_aliases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "MAX_NODES", 100)
    step = "step: &s {name: x, action: http.check, with: {url: 'http://a/'}}\n"  # the anchor's node: 9 nodes
    # the document's mapping, 2 keys and their values: 1 + 2 + 9 + 1 + 9 per alias
    fits = written(tmp_path, "fits.yaml", step + f"steps: [{', '.join(['*s'] * 9)}]\n")  # 94 nodes
    assert len(load_documents(fits)[0]["steps"]) == 9
    over = written(tmp_path, "over.yaml", step + f"steps: [{', '.join(['*s'] * 10)}]\n")  # 103 nodes
    with pytest.raises(InputError, match=r"over\.yaml:2: invalid YAML: more than 100 nodes with aliases expanded"):
        load_documents(over)


def test_a_file_over_the_size_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    line = f"- {'x' * 1021}\n"  # 1 KiB
    lines = MAX_BYTES // len(line)
    big = written(tmp_path, "big.yaml", line * (lines + 1))
    with pytest.raises(InputError) as refused:
        load_documents(big)
    assert str(refused.value) == f"{big}:{lines + 1}: invalid YAML: larger than 4 MiB, the limit for a file"
    assert load_documents(written(tmp_path, "max.yaml", line * lines)) == [["x" * 1021] * lines]
    with pytest.raises(InputError, match=rf"^<stdin>:{lines + 1}: invalid YAML: larger than 4 MiB"):
        load_stream(io.BytesIO(line.encode() * (lines + 1)))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("when: 2024-13-45\n", ":1: invalid YAML: cannot read '2024-13-45' as timestamp (column 7)"),
        ("ok: !!bool maybe\n", ":1: invalid YAML: cannot read 'maybe' as bool (column 5)"),
        ("n: " + "9" * 5000 + "\n", f":1: invalid YAML: cannot read '{'9' * 40}...' as int (column 4)"),
        ("a: 1\nb: \x00\n", ":2: invalid YAML: control characters are not allowed (character #x0000)"),
        ("a: *nowhere\n", ":1: invalid YAML: found undefined alias (column 4)"),
        ("? [1]\n: x\n", ":1: invalid YAML: found unhashable key (column 3)"),
    ],
    ids=["bad-date", "bad-bool", "long-int", "nul", "undefined-alias", "list-key"],
)
def test_values_the_constructor_cannot_build_are_one_line_errors(tmp_path: Path, text: str, error: str) -> None:
    path = written(tmp_path, "x.yaml", text)
    with pytest.raises(InputError) as refused:
        load_documents(path)
    assert str(refused.value) == f"{path}{error}"


def test_a_file_that_is_not_utf8_is_one_line_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("a: 1\nb: café\n".encode("latin-1"))
    with pytest.raises(InputError) as refused:
        load_documents(path)
    assert str(refused.value) == f"{path}:2: cannot read: not UTF-8: invalid continuation byte (byte 12)"


def _repository_yaml() -> list[Path]:
    files = [
        p
        for top in ("manifests", "crds", "charts", "lab", "bench", "tests")
        for p in sorted((ROOT / top).rglob("*.y*ml"))
        if p.suffix in (".yaml", ".yml") and "templates" not in p.parts and ".venv" not in p.parts
    ]
    return files


def test_every_yaml_file_of_the_repository_loads_as_with_the_plain_safe_loader() -> None:
    """The CRDs use anchors and aliases (the step schema), so refusing aliases would refuse them."""
    files = _repository_yaml()
    assert {"crds", "manifests", "charts"} <= {p.relative_to(ROOT).parts[0] for p in files}
    for path in files:
        expected = [loader._plain(d) for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert load_documents(path) == expected, path
    assert "&step" in (ROOT / "crds" / "remediation.ishchat.io_remediationpolicies.yaml").read_text()


def test_a_multi_document_file_with_anchors_and_merge_keys_loads_as_before(tmp_path: Path) -> None:
    text = """\
---
apiVersion: remediation.ishchat.io/v1alpha1
kind: RemediationPolicy
metadata: {name: a, labels: {team: &team payments}}
spec:
  diagnose:
  - &health {name: health, action: http.check, with: {url: "http://svc/health"}}
  verify:
  - <<: *health
    name: again
---
---
kind: Incident
metadata: {name: b, labels: {team: &team payments}, creationTimestamp: 2026-11-27T08:00:00Z}
spec: {count: 3, ratio: 0.5, enabled: yes, day: 2026-11-27, 7: seven, owner: *team}
"""
    docs = load_documents(written(tmp_path, "multi.yaml", text))
    assert docs == [loader._plain(d) for d in yaml.safe_load_all(text) if d is not None]
    health = {"action": "http.check", "with": {"url": "http://svc/health"}}
    assert docs[0]["spec"] == {"diagnose": [{"name": "health", **health}], "verify": [{"name": "again", **health}]}
    assert docs[1]["metadata"]["creationTimestamp"] == "2026-11-27T08:00:00Z"
    spec = {"count": 3, "ratio": 0.5, "enabled": True, "day": "2026-11-27", "7": "seven", "owner": "payments"}
    assert docs[1]["spec"] == spec


def test_report_reads_odd_lists_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    odd = written(tmp_path, "odd.yaml", "kind: 5\n---\nkind: List\nitems: {a: b}\n---\nkind: List\nitems: [1, x]\n")
    assert main(["report", "-f", str(odd)]) == 1
    assert capsys.readouterr().err == f"runbook-operator report: {odd}: no Incident found\n"


# -- the commands, as processes under a memory limit -------------------------------------------

MEMORY_LIMIT = 512 * 2**20


def _command(name: str, path: Path) -> list[str]:
    return {
        "validate": ["validate", str(path)],
        "plan": ["plan", str(path), "--policies", str(ROOT / "manifests" / "examples")],
        "report": ["report", "-f", str(path)],
    }[name]


@pytest.mark.parametrize("command", ["validate", "plan", "report"])
@pytest.mark.parametrize("attack", ["bomb", "deep"])
def test_each_command_refuses_a_hostile_file_in_one_line_under_a_memory_limit(
    tmp_path: Path, command: str, attack: str
) -> None:
    path = written(tmp_path, f"{attack}.yaml", BOMB if attack == "bomb" else DEEP)
    argv = ["prlimit", f"--as={MEMORY_LIMIT}", "--", sys.executable, "-m", "runbook_operator", *_command(command, path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=ROOT)  # expanded: a hang
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    said = done.stdout.splitlines() if command == "validate" else done.stderr.splitlines()
    prefix = "" if command == "validate" else f"runbook-operator {command}: "
    line = f"{path}{BOMB_ERROR}" if attack == "bomb" else f"{path}:4: invalid YAML: {TOO_DEEP} (column 106)"
    assert said[0].startswith(prefix + line), said
    if command == "validate":
        assert said[1:] == ["1 file(s), 0 resource(s), 1 problem(s)"] and done.stderr == ""
    else:
        assert len(said) == 1 and done.stdout == ""
    assert done.returncode == (1 if command == "report" else 2)
