"""`runbook-operator report` on an incident the real operator handled on a real kube-apiserver."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runbook_lab.demo import DemoService
from runbook_operator.entrypoints import cli
from tests.e2e.conftest import Kubectl, OperatorProcess
from tests.e2e.test_foundation import demo_policy, incident, settled
from tests.fixtures.cluster import ONCALL


def body_sections(text: str) -> str:
    """The report without its Timeline (Events add lines there that a file does not have)."""
    return re.sub(r"## Timeline\n.*?\n## ", "## ", text, flags=re.S)


def test_report_of_an_approved_and_resolved_incident(
    kubectl: Kubectl,
    operator: OperatorProcess,
    namespace: str,
    demo: DemoService,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    approver: Kubectl,
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubectl.kubeconfig))
    kubectl.apply(demo_policy("im-down", namespace, demo.url, remediate=[
        {"name": "failover", "action": "http.request", "with": {"url": f"{demo.url}/admin/failover", "destructive": True}}]))  # fmt: skip
    kubectl.apply(incident("reported", namespace, summary="instance manager health check failing"))
    settled(kubectl, "reported", namespace, "AwaitingApproval")
    assert (
        cli.main(["approve", "reported", "failover", "-n", namespace, "--yes", "--as", "alice", "--as-group", ONCALL])
        == 0
    )
    settled(kubectl, "reported", namespace, "Resolved")
    capsys.readouterr()  # what approve printed

    assert cli.main(["report", "reported", "-n", namespace]) == 0
    live = capsys.readouterr().out
    (tmp_path / "live.md").write_text(live)  # kept with the test's files for a look
    assert live.startswith(f"# Post-incident report: InstanceManagerDown — {namespace}/reported\n")
    assert "**Severity:** Critical · **Outcome:** Resolved (Verified)" in live
    for section in ("Summary", "Timeline", "Findings", "Actions taken", "Escalations", "Response metrics",
                    "Follow-ups left for humans"):  # fmt: skip
        assert f"\n## {section}\n" in live
    assert "- **health**: GET " in live and "status 503" in live  # the finding
    assert re.search(r"\| Remediate \| failover \| http.request \| 1 \| Succeeded, approved by alice at \S+Z \|", live)
    assert "| Diagnose | health | http.check |" in live and "| Verify | healthy-again | http.check |" in live
    assert re.search(r"- \*\*MTTR\*\* \(started → resolved\): \d+s", live)
    assert "- **MTTA** (started → acknowledged): not acknowledged" in live
    assert "**met** (resolved" in live
    assert "| AwaitingApproval (event) |" not in live  # Events that repeat the status timeline are merged
    assert "| AwaitingApproval |" in live and "| Approved |" in live

    yaml_file = tmp_path / "reported.yaml"
    yaml_file.write_text(kubectl("get", "inc", "reported", "-n", namespace, "-o", "yaml").stdout)
    out = tmp_path / "report.md"
    assert cli.main(["report", "-f", str(yaml_file), "-o", str(out)]) == 0
    assert body_sections(out.read_text()) == body_sections(live)

    assert cli.main(["report", "no-such-incident", "-n", namespace]) == 1
    assert f"incident {namespace}/no-such-incident not found" in capsys.readouterr().err
