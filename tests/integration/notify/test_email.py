"""notify.email against a real SMTP server on loopback (aiosmtpd, tests/fixtures/smtp.py):
STARTTLS with a test CA, AUTH, and replies that refuse recipients or messages."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runbook_operator.actions import ActionContext
from runbook_operator.actions.api import languages
from runbook_operator.actions.notify.email import EmailParams
from runbook_operator.domain.expressions import check_templates
from runbook_operator.domain.lifecycle import StepCall
from runbook_operator.domain.model import InvalidPolicy, Stage, Step
from runbook_operator.domain.parsing import parse_policy
from runbook_operator.domain.results import StepResult
from runbook_operator.engine.executor import Executor, run_action
from tests.fixtures.secrets import Secrets
from tests.fixtures.smtp import PASSWORD, USER, Pki, SmtpServer, make_pki
from tests.unit.builders import REGISTRY, incident, policy_body

UID = "0b6e7c2a-4f1d-4e57-9a43-5d1c2b7e9f00"
ROOT_ID = f"<incident-{UID}@runbook-operator>"
HOSTILE = '<script>alert(1)</script> see <a href="https://evil.test/login">the runbook</a> & more'
AUTH = {"usernameSecretRef": {"name": "smtp", "key": "username"},
        "passwordSecretRef": {"name": "smtp", "key": "password"}}  # fmt: skip
CA = {"caSecretRef": {"name": "smtp-ca", "key": "ca.crt"}}
# the servers that offer AUTH without STARTTLS (in clear, or over implicit TLS) are meant so
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("smtp-pki"))


@pytest.fixture
def server(pki: Pki) -> Iterator[SmtpServer]:
    """STARTTLS required (a certificate of the test CA), AUTH required before MAIL."""
    smtp = SmtpServer(pki).start()
    yield smtp
    smtp.stop()


def secrets(pki: Pki, password: str = PASSWORD) -> Secrets:
    return Secrets({("ns", "smtp", "username"): USER, ("ns", "smtp", "password"): password,
                    ("ns", "smtp-ca", "ca.crt"): pki.ca_pem})  # fmt: skip


def details(**extra: Any) -> dict[str, Any]:
    return {
        "name": "redis-down",
        "namespace": "ns",
        "alert": "RedisDown",
        "severity": "Critical",
        "summary": HOSTILE,
        "phase": "Diagnosing",
        "findings": [{"step": "ping", "message": "connection refused <b>now</b>"}],
        "steps": [],
        **extra,
    }


def announced(number: int, phase: str = "Diagnosing") -> dict[str, Any]:
    return details(announcement={"phase": phase, "number": number, "at": "2024-05-01T10:00:00Z",
                                 "reason": "Matched", "message": "diagnosis started"})  # fmt: skip


def params(server: SmtpServer | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": server.port if server is not None else 25,
        "from": "Runbook <runbook@example.com>",
        "to": ["oncall@example.com"],
        "backoff": "10ms",
        **AUTH,
        **CA,
        **extra,
    }


def context(pki: Pki, info: dict[str, Any] | None = None, timeout: float = 10.0, **secrets_kw: Any) -> ActionContext:
    return ActionContext("ns", "redis-down", timeout, info if info is not None else details(),
                         secrets(pki, **secrets_kw), "p", UID)  # fmt: skip


async def email(values: dict[str, Any], ctx: ActionContext) -> StepResult:
    return await run_action(REGISTRY.get("notify.email"), REGISTRY.parse("notify.email", values), ctx)


# -- delivered ------------------------------------------------------------------------------------


async def test_delivered_over_starttls_with_auth_with_both_parts_and_nothing_of_the_alert_as_markup(
    server: SmtpServer, pki: Pki
) -> None:
    values = params(server, to=["oncall@example.com", "Team Lead <lead@example.com>"], cc=["cto@example.com"])
    result = await email(values, context(pki, announced(1)))
    assert result.ok, result.message
    assert result.message == "emailed 3 recipient(s) via 127.0.0.1"
    assert result.output["recipients"] == ["oncall@example.com", "lead@example.com", "cto@example.com"]
    ((mail,),) = [server.received]
    assert (mail.mail_from, mail.rcpt_tos) == ("runbook@example.com", result.output["recipients"])
    assert mail.tls and mail.authenticated
    assert [(login.login, login.ok, login.tls) for login in server.logins] == [(USER, True, True)]
    assert server.commands.index("STARTTLS") < server.commands.index("AUTH") < server.commands.index("MAIL")
    msg = mail.message
    assert msg["Subject"] == "[Critical] RedisDown ns/redis-down: investigating"
    assert msg["From"] == "Runbook <runbook@example.com>"
    assert msg["To"] == "oncall@example.com, Team Lead <lead@example.com>"
    assert msg["Cc"] == "cto@example.com" and msg["Bcc"] is None
    assert msg["Date"] and msg["Auto-Submitted"] == "auto-generated"
    assert (msg["Message-ID"], msg["In-Reply-To"], msg["References"]) == (ROOT_ID, None, None)
    assert msg.get_content_type() == "multipart/alternative"
    plain = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    page = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert plain.splitlines() == [
        "[Critical] RedisDown ns/redis-down: investigating",
        "Matched: diagnosis started",
        f"Summary: {HOSTILE}",
        "Findings:",
        "- ping: connection refused <b>now</b>",
        "Inspect: kubectl describe incident redis-down -n ns",
    ]
    assert "&lt;script&gt;alert(1)&lt;/script&gt; see &lt;a href=&quot;https://evil.test/login&quot;&gt;" in page
    assert "connection refused &lt;b&gt;now&lt;/b&gt;" in page
    assert "<script" not in page and "<a " not in page and "<b>" not in page


async def test_an_incidents_mails_form_one_thread(server: SmtpServer, pki: Pki) -> None:
    first = await email(params(server), context(pki, announced(1)))
    later = await email(params(server), context(pki, announced(3, "Resolved")))
    escalation = await email(params(server, text="Paging the on-call"), context(pki, details(phase="Escalated")))
    again = await email(params(server, text="Paging the on-call"), context(pki, details(phase="Escalated")))
    assert all(r.ok for r in (first, later, escalation, again)), [r.message for r in (first, later, escalation)]
    mails = [m.message for m in server.received]
    assert [m["Message-ID"] for m in mails[:2]] == [ROOT_ID, f"<incident-{UID}-3@runbook-operator>"]
    assert mails[1]["Subject"] == "[Critical] RedisDown ns/redis-down: resolved"
    assert mails[2]["Message-ID"].startswith(f"<incident-{UID}-") and mails[2]["Message-ID"] != ROOT_ID
    assert mails[3]["Message-ID"] == mails[2]["Message-ID"]  # deterministic: the same mail has the same id
    for later_mail in mails[1:]:
        assert (later_mail["In-Reply-To"], later_mail["References"]) == (ROOT_ID, ROOT_ID)
    assert mails[2].get_body(("plain",)).get_content().splitlines()[0] == "Paging the on-call"  # type: ignore[union-attr]


async def test_a_subject_with_line_breaks_cannot_add_headers(server: SmtpServer, pki: Pki) -> None:
    subject = "RedisDown\r\nBcc: attacker@evil.test\r\n\r\n<html>body"  # as a template could render it
    result = await email(params(server, subject=subject), context(pki))
    assert result.ok, result.message
    (mail,) = server.received
    assert mail.message["Subject"] == "RedisDown Bcc: attacker@evil.test <html>body"
    assert mail.message["Bcc"] is None and mail.rcpt_tos == ["oncall@example.com"]


async def test_implicit_tls_on_its_own_port(pki: Pki) -> None:
    smtps = SmtpServer(pki, implicit_tls=True).start()
    try:
        result = await email(params(smtps, tls="tls"), context(pki))
    finally:
        smtps.stop()
    assert result.ok, result.message
    assert smtps.received[0].authenticated and "STARTTLS" not in smtps.commands


# -- refused before anything is sent ----------------------------------------------------------------


async def test_a_server_without_starttls_gets_neither_credentials_nor_mail(pki: Pki) -> None:
    plain = SmtpServer(None).start()  # offers AUTH in clear, as a careless relay would
    try:
        result = await email(params(plain, attempts=3), context(pki))
    finally:
        plain.stop()
    assert not result.ok
    assert result.message == (
        "mail server 127.0.0.1: the server does not offer STARTTLS; with tls: starttls neither credentials nor "
        "mail go out in clear: nothing sent (permanent: not retried)"
    )
    assert plain.commands == ["EHLO"]  # one connection, no AUTH, no MAIL
    assert plain.logins == [] and plain.received == []


async def test_a_certificate_the_system_does_not_trust_fails_clearly(server: SmtpServer, pki: Pki) -> None:
    values = params(server)
    del values["caSecretRef"]
    result = await email(values, context(pki))
    assert not result.ok
    assert result.message == (
        "mail server 127.0.0.1: TLS certificate not trusted (unable to get local issuer certificate): for a "
        "private CA, give its PEM bundle in caSecretRef (permanent: not retried)"
    )
    assert server.logins == [] and server.received == [] and server.count("STARTTLS") == 1


async def test_a_ca_bundle_of_another_ca_is_not_trusted(server: SmtpServer, pki: Pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path)  # caSecretRef holds another CA: it does not vouch for the server
    result = await email(params(server), _with_ca(pki, other.ca_pem))
    assert not result.ok and "TLS certificate not trusted" in result.message
    assert server.logins == []


def _with_ca(pki: Pki, ca_pem: str) -> ActionContext:
    ctx = context(pki)
    assert isinstance(ctx.services, Secrets)
    ctx.services.values[("ns", "smtp-ca", "ca.crt")] = ca_pem
    return ctx


async def test_a_ca_secret_that_is_not_pem_fails_naming_it(server: SmtpServer, pki: Pki) -> None:
    result = await email(params(server), _with_ca(pki, "not a certificate"))
    assert not result.ok
    assert result.message.startswith("mail server 127.0.0.1: Secret 'smtp-ca' key 'ca.crt' is not a PEM CA bundle")
    assert server.commands == []


async def test_a_metadata_address_is_refused_without_retrying(pki: Pki) -> None:
    started = time.monotonic()
    result = await email(params(host="169.254.169.254", attempts=3, backoff="2s"), context(pki))
    assert not result.ok and time.monotonic() - started < 1.5
    assert result.message == (
        "mail server 169.254.169.254: 169.254.169.254 is a link-local or cloud metadata address: refused "
        "(start the operator with --allow-link-local to allow it)"
    )


# -- retries: transient (4xx, no answer) yes, permanent (5xx, 535) no -------------------------------


async def test_a_451_is_retried_then_delivered(server: SmtpServer, pki: Pki) -> None:
    server.refuse("RCPT", 451, times=1)
    server.refuse("DATA", 451, times=1)
    result = await email(params(server, attempts=3), context(pki))
    assert result.ok, result.message
    assert result.output["attempts"] == 3 and len(server.received) == 1
    assert server.count("STARTTLS") == 3 and server.count("DATA") == 2


async def test_451_until_the_tries_run_out_says_it_was_transient(server: SmtpServer, pki: Pki) -> None:
    server.refuse("RCPT", 451, times=5)
    result = await email(params(server, attempts=2), context(pki))
    assert not result.ok and server.count("RCPT") == 2
    assert result.message == (
        "mail server 127.0.0.1: recipient(s) refused: oncall@example.com (451 4.3.0 Temporary failure, try "
        "again later) (transient; 2 tries)"
    )


async def test_a_550_is_not_retried(server: SmtpServer, pki: Pki) -> None:
    server.refuse("RCPT", 550)  # once: a second try would be delivered
    result = await email(params(server, attempts=3), context(pki))
    assert not result.ok and server.count("RCPT") == 1 and server.received == []
    assert result.message == (
        "mail server 127.0.0.1: recipient(s) refused: oncall@example.com (550 5.1.1 No such user here) "
        "(permanent: not retried)"
    )
    server.refuse("DATA", 554)
    rejected = await email(params(server, attempts=3), context(pki))
    assert (
        rejected.message
        == "mail server 127.0.0.1: message refused: 554 5.7.1 Message rejected (permanent: not retried)"
    )
    assert server.count("DATA") == 1


async def test_one_refused_recipient_of_two_is_reported_and_not_sent_again(server: SmtpServer, pki: Pki) -> None:
    server.refuse("RCPT", 550)
    result = await email(params(server, to=["gone@example.com", "oncall@example.com"]), context(pki))
    assert not result.ok
    assert result.message == (
        "emailed 1 of 2 recipient(s) via 127.0.0.1; refused: gone@example.com (550 5.1.1 No such user here)"
    )
    assert result.output["refused"] == ["gone@example.com"]
    assert [m.rcpt_tos for m in server.received] == [["oncall@example.com"]]


async def test_a_wrong_password_fails_once_and_never_shows(server: SmtpServer, pki: Pki) -> None:
    wrong = "hunter2-Wr0ng-pa55"
    values = params(server, attempts=3)
    step = Step("mail", Stage.ESCALATE, "notify.email", values)
    executor = Executor(REGISTRY, services=secrets(pki, wrong))
    result = await executor.run(incident(), StepCall(step, 1, values), details(), policy="p")
    assert not result.ok
    assert result.message == (
        "mail server 127.0.0.1: authentication failed: 535 5.7.8 Authentication credentials invalid "
        "(permanent: not retried)"
    )
    assert wrong not in result.message + str(result.output)
    assert server.count("STARTTLS") == 1 and server.received == []
    assert server.logins and all(login.tls and not login.ok for login in server.logins)


async def test_a_server_that_is_down_is_tried_again_and_said_so(closed_port: int, pki: Pki) -> None:
    result = await email(params(port=closed_port, attempts=2), context(pki))
    assert not result.ok
    assert result.message == "mail server 127.0.0.1: cannot connect: Connection refused (transient; 2 tries)"


async def test_a_server_that_never_answers_is_bounded_by_the_step_timeout(silent_port: int, pki: Pki) -> None:
    ctx = context(pki, timeout=0.6)
    started = time.monotonic()
    result = await email(params(port=silent_port, attempts=3), ctx)
    elapsed = time.monotonic() - started
    assert not result.ok and elapsed < 0.6 + 0.2, elapsed
    assert result.message == (
        "mail server 127.0.0.1: no answer in time (transient; 1 of 3 tries before the step's timeout)"
    )


async def test_the_executor_bounds_a_silent_server_too(silent_port: int, pki: Pki) -> None:
    values = params(port=silent_port, attempts=3)
    step = Step("mail", Stage.ESCALATE, "notify.email", values, timeout=0.5)
    started = time.monotonic()
    result = await Executor(REGISTRY, services=secrets(pki)).run(incident(), StepCall(step, 1, values), details())
    assert not result.ok and time.monotonic() - started < 0.5 + 0.3
    assert "no answer in time" in result.message or "timed out after 0.5s" in result.message


# -- validation: destinations literal, no header injection ----------------------------------------------


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (
            {"to": ["oncall@example.com\r\nBcc: attacker@evil.test"]},
            r"to.0: Value error, 'oncall@example.com\\r\\nBcc: ",
        ),
        ({"from": "runbook@example.com\nBcc: attacker@evil.test"}, "from: Value error, .* holds a line break"),
        ({"cc": ["a@example.com\r"]}, "cc.0: Value error, .* holds a line break"),
        ({"to": ["a@example.com, attacker@evil.test"]}, "is not one email address"),
        ({"to": ["not-an-address"]}, "is not one email address"),
        ({"to": []}, "to: List should have at least 1 item"),
        ({"to": [f"u{i}@example.com" for i in range(51)]}, "to: List should have at most 50 items"),
        ({"usernameSecretRef": None}, "give both usernameSecretRef and passwordSecretRef, or neither"),
        ({"tls": "none"}, "tls: none would send the SMTP credentials in clear text"),
        ({"tls": "smtps"}, "tls: Input should be 'starttls', 'tls' or 'none'"),
    ],
)
def test_parameters_are_checked_on_apply(extra: dict[str, Any], problem: str) -> None:
    values = {k: v for k, v in {**params(), **extra}.items() if v is not None}
    if extra.get("tls") == "none":
        values.pop("caSecretRef")
    with pytest.raises(ValueError, match=problem):
        REGISTRY.check("notify.email", values)


def test_plain_text_without_credentials_is_allowed() -> None:
    REGISTRY.check("notify.email", {"host": "relay", "tls": "none", "from": "a@example.com", "to": ["b@example.com"]})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("to", ["{{ incident.labels.owner }}"]),
        ("cc", ["oncall@example.com", "{{ incident.labels.owner }}@example.com"]),
        ("from", "{{ incident.labels.sender }}"),
        ("host", "{{ incident.labels.relay }}"),
        ("port", "{{ incident.labels.port }}"),
        ("caSecretRef", {"name": "{{ incident.labels.ca }}", "key": "ca.crt"}),
    ],
)
def test_a_templated_destination_makes_the_policy_invalid(key: str, value: Any) -> None:
    step = {"name": "mail", "action": "notify.email", "with": {**params(), key: value}}
    parsed = parse_policy(policy_body(diagnose=[step]), REGISTRY.check)
    assert isinstance(parsed, InvalidPolicy)
    assert parsed.error.startswith(f"spec.diagnose[0].with (notify.email): {key}"), parsed.error
    assert "must be literal in the policy" in parsed.error, parsed.error


def test_destinations_are_literal_and_the_texts_are_templates() -> None:
    kinds = languages(EmailParams)
    literal = {"host", "port", "tls", "from", "to", "cc", "usernameSecretRef", "passwordSecretRef", "caSecretRef"}
    assert {k for k, v in kinds.items() if v.value == "literal"} == literal
    check_templates({"subject": "[{{ incident.severity }}] {{ incident.alert }}", "text": "{{ incident.summary }}"},
                    kinds)  # fmt: skip
    with pytest.raises(ValueError, match="to: must be literal in the policy"):
        check_templates({"to": ["{{ incident.labels.owner }}"]}, kinds)


def test_the_action_is_in_the_catalog() -> None:
    action = REGISTRY.get("notify.email")
    assert action.default_timeout == 30.0 and not action.destructive and not action.read_only
