"""notify.email: tell stakeholders by email, over SMTP with STARTTLS (or implicit TLS).

Where the mail goes and as whom it is sent (server, port, TLS mode, sender, recipients,
the Secrets with the credentials and the CA) is literal in the policy: incident data may
not choose it. Incident text is only ever content: the headers are built by the email
package from a subject whose line breaks are removed, and the HTML part escapes every
piece of it, so an alert's summary can neither add a header nor markup or a link.

``tls: starttls`` (the default) needs the server to offer STARTTLS: without it the step
fails before AUTH or the mail is sent; the certificate is verified for ``host`` against
the system's CAs or the PEM bundle of ``caSecretRef``. As notify.webhook, the host's
addresses are checked first (no link-local or metadata address) and the connection goes
to the very address that was checked. Connection errors, timeouts and 4xx replies are
tried again, within the step's timeout; 5xx replies (an unknown recipient) and a refused
login are not.

An incident's emails form one thread in mail clients: its first announcement (number 1) is
``<incident-{uid}@runbook-operator>``, and every other mail of the incident refers to it
with ``In-Reply-To`` and ``References``: announcement ``n`` is ``<incident-{uid}-{n}@…>``,
a mail that is no announcement (an escalation's) is named by a digest of its text.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import html
import re
import smtplib
import socket
import ssl
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Annotated, Any, Literal

import httpx
import pydantic

from runbook_operator.actions import api
from runbook_operator.actions.api import Action, ActionContext, ActionFailure, Params, StepResult
from runbook_operator.actions.egress import EgressRefused, checked_address
from runbook_operator.actions.notify import messages
from runbook_operator.domain.wire import clipped, printable

MAX_RECIPIENTS = 50
SUBJECT_MAX = 250
REPLY_SHOWN = 200
# local@domain, ASCII only (no SMTPUTF8): what a stakeholder list needs, and nothing a header could hide in
_ADDR_SPEC = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _address(value: str) -> str:
    """One address, ``name@domain`` or ``Name <name@domain>``: no line break (a header's end),
    no template (who gets the mail is the policy's choice), no list."""
    if "\r" in value or "\n" in value:
        raise ValueError(f"{value!r} holds a line break (CR/LF): refused, it would inject mail headers")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError(f"{value!r} holds a control character: refused")
    if "{{" in value or "{%" in value:
        raise ValueError(
            "must be literal in the policy: who sends and who gets the mail is the policy's choice, "
            "so incident data may not choose it"
        )
    found = email.utils.getaddresses([value])
    if len(found) != 1 or not _ADDR_SPEC.fullmatch(found[0][1]) or email.utils.parseaddr(value)[1] != found[0][1]:
        raise ValueError(f"{value!r} is not one email address (name@example.com or 'Name <name@example.com>')")
    return value


EmailAddress = Annotated[str, pydantic.AfterValidator(_address)]


class EmailParams(Params):
    host: Annotated[str, api.Language.LITERAL] = pydantic.Field(
        min_length=1, max_length=253, description="SMTP server (relay) host name or IP address"
    )
    port: Annotated[int | None, api.Language.LITERAL] = pydantic.Field(
        None, ge=1, le=65535, description="server port (default 587; 465 with tls: tls)"
    )
    tls: Annotated[Literal["starttls", "tls", "none"], api.Language.LITERAL] = pydantic.Field(
        "starttls",
        description="starttls: the server must offer STARTTLS, else nothing is sent; tls: implicit TLS (port 465); "
        "none: plain text, only without credentials",
    )
    sender: Annotated[EmailAddress, api.Language.LITERAL] = pydantic.Field(
        alias="from", description="sender address, e.g. 'Runbook <runbook@example.com>'"
    )
    to: Annotated[list[EmailAddress], api.Language.LITERAL] = pydantic.Field(
        min_length=1, max_length=MAX_RECIPIENTS, description="recipient addresses (1 to 50)"
    )
    cc: Annotated[list[EmailAddress], api.Language.LITERAL] = pydantic.Field(
        default_factory=list, max_length=MAX_RECIPIENTS, description="copy recipients (up to 50)"
    )
    username_secret_ref: api.SecretRef | None = pydantic.Field(
        None, alias="usernameSecretRef", description="Secret key holding the SMTP username (AUTH, only over TLS)"
    )
    password_secret_ref: api.SecretRef | None = pydantic.Field(
        None, alias="passwordSecretRef", description="Secret key holding the SMTP password"
    )
    ca_secret_ref: api.SecretRef | None = pydantic.Field(
        None, alias="caSecretRef", description="Secret key holding a PEM CA bundle to trust instead of the system's"
    )
    subject: str | None = pydantic.Field(
        None, max_length=1000, description="subject (may template incident fields; default: the incident's headline)"
    )
    text: str | None = pydantic.Field(None, description="a message to lead with (may template incident fields)")
    attempts: int = pydantic.Field(
        3, ge=1, le=10, description="tries on connection errors, timeouts and 4xx replies (never on 5xx)"
    )
    backoff: api.Duration = pydantic.Field(1.0, description="wait between tries, e.g. 1s")

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> EmailParams:
        if (self.username_secret_ref is None) != (self.password_secret_ref is None):
            raise ValueError("give both usernameSecretRef and passwordSecretRef, or neither")
        if self.tls == "none" and self.username_secret_ref is not None:
            raise ValueError(
                "tls: none would send the SMTP credentials in clear text: use tls: starttls or tls with "
                "usernameSecretRef/passwordSecretRef"
            )
        if self.tls == "none" and self.ca_secret_ref is not None:
            raise ValueError("caSecretRef has no use with tls: none")
        return self

    @property
    def server_port(self) -> int:
        return self.port or (465 if self.tls == "tls" else 587)


# -- the message --------------------------------------------------------------------------------


def _parsed(value: str) -> Address:
    name, addr = email.utils.parseaddr(value)
    return Address(display_name=name, addr_spec=addr)


def one_line(text: str) -> str:
    """Header text: control characters (CR and LF first) become spaces, runs of space one."""
    return clipped(" ".join(printable(text).split()), SUBJECT_MAX)


def thread_ids(ctx: ActionContext, details: Mapping[str, Any], content: str) -> tuple[str, str]:
    """(this mail's Message-ID, the thread's first one). Deterministic: announcement ``n`` of
    an incident is always the same id (a retry is a duplicate mail clients can fold); a mail
    that is no announcement is named by a digest of what it says."""
    key = re.sub(r"[^A-Za-z0-9-]", "-", ctx.uid or f"{ctx.namespace}-{ctx.incident}")[:128]
    root = f"<incident-{key}@runbook-operator>"
    number = (details.get("announcement") or {}).get("number")
    if isinstance(number, int | float) and not isinstance(number, bool) and number == int(number):
        return (root if number <= 1 else f"<incident-{key}-{int(number)}@runbook-operator>"), root
    digest = hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"<incident-{key}-{digest}@runbook-operator>", root


def html_part(lead: str, lines: Sequence[str]) -> str:
    """The same text as HTML, every piece escaped: incident text is never markup."""
    head = "<br>\n".join(html.escape(line) for line in lead.splitlines())
    rest = "<br>\n".join(html.escape(line) for line in lines)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>\n<body>\n'
        f"<p><strong>{head}</strong></p>\n<p>{rest}</p>\n</body></html>\n"
    )


def compose(params: EmailParams, ctx: ActionContext) -> EmailMessage:
    details = messages.details(ctx)
    subject = one_line(params.subject or messages.headline(details)) or one_line(messages.headline(details))
    lead = params.text or messages.headline(details)
    plain = messages.text(details, lead)
    own, root = thread_ids(ctx, details, f"{subject}\n{plain}")
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = _parsed(params.sender)
    msg["To"] = [_parsed(a) for a in params.to]
    if params.cc:
        msg["Cc"] = [_parsed(a) for a in params.cc]
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg["Message-ID"] = own
    if own != root:
        msg["In-Reply-To"] = root
        msg["References"] = root
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation auto-replies to the operator
    msg.set_content(plain)
    msg.add_alternative(html_part(lead, messages.body(details)), subtype="html")
    return msg


# -- the conversation with the server --------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str  # without the "mail server <host>: " prefix when it failed
    transient: bool = False  # worth another try
    output: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Delivery:
    host: str
    address: str  # the checked address the connection goes to (the certificate is verified for host)
    port: int
    mode: str
    context: ssl.SSLContext | None
    login: tuple[str, str] | None
    message: EmailMessage
    sender: str
    recipients: tuple[str, ...]
    deadline: float  # time.monotonic()


class NoStartTLS(Exception):
    """The server does not offer STARTTLS and the policy asked for it."""


class _Pinned(smtplib.SMTP):
    """SMTP to a checked address; STARTTLS verifies the certificate for the host name."""

    def __init__(self, host: str, address: str, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self._host = host  # smtplib's server_hostname for STARTTLS
        self._address = address

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((self._address, port), timeout, self.source_address)


class _PinnedTLS(smtplib.SMTP_SSL):
    """Implicit TLS to a checked address, the certificate verified for the host name."""

    def __init__(self, host: str, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(timeout=timeout, context=context)
        self._host = host
        self._address = address

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((self._address, port), timeout, self.source_address)
        try:
            return self.context.wrap_socket(sock, server_hostname=self._host)
        except BaseException:
            sock.close()
            raise


def _in_time(smtp: smtplib.SMTP, deadline: float) -> None:
    """Each exchange waits at most until the step's deadline, not a whole socket timeout more."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the step's time is up")
    if smtp.sock is not None:
        smtp.sock.settimeout(left)


def deliver(d: Delivery) -> Outcome:
    """The whole SMTP conversation, blocking (in a worker thread): never AUTH nor MAIL before
    the TLS that was asked for is up."""
    stage = "connect"
    smtp: smtplib.SMTP | None = None
    try:
        timeout = d.deadline - time.monotonic()
        if timeout <= 0:
            raise TimeoutError("the step's time is up")
        if d.mode == "tls":
            smtp = _PinnedTLS(d.host, d.address, timeout, d.context or api.tls_context())
        else:
            smtp = _Pinned(d.host, d.address, timeout)
        smtp.connect(d.host, d.port)
        stage = "EHLO"
        _in_time(smtp, d.deadline)
        smtp.ehlo_or_helo_if_needed()
        if d.mode == "starttls":
            if not smtp.has_extn("starttls"):
                raise NoStartTLS
            stage = "STARTTLS"
            _in_time(smtp, d.deadline)
            smtp.starttls(context=d.context)
            stage = "EHLO"
            smtp.ehlo_or_helo_if_needed()
        if d.login is not None:
            stage = "AUTH"
            _in_time(smtp, d.deadline)
            smtp.login(*d.login)
        stage = "send"
        _in_time(smtp, d.deadline)
        refused = smtp.send_message(d.message, d.sender, list(d.recipients))
    except Exception as err:
        if smtp is not None:
            smtp.close()  # not QUIT: a server that stopped answering would hold us again
        return classify(stage, err)
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()
    output = {"recipients": list(d.recipients), "messageId": str(d.message["Message-ID"])}
    if refused:
        sent = len(d.recipients) - len(refused)
        return Outcome(
            False,
            f"emailed {sent} of {len(d.recipients)} recipient(s) via {d.host}; refused: {_refusals(refused)}",
            output={**output, "refused": sorted(refused)},
        )
    return Outcome(True, f"emailed {len(d.recipients)} recipient(s) via {d.host}", output=output)


def _reply(code: int, text: bytes | str) -> str:
    said = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    said = " ".join(said.split())
    return f"{code} {said if len(said) <= REPLY_SHOWN else said[: REPLY_SHOWN - 3] + '...'}".strip()


def _refusals(refused: Mapping[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{rcpt} ({_reply(code, text)})" for rcpt, (code, text) in sorted(refused.items()))


def classify(stage: str, err: Exception) -> Outcome:
    """What went wrong, in words, and whether another try may help."""
    if isinstance(err, NoStartTLS):
        return Outcome(False, "the server does not offer STARTTLS; with tls: starttls neither credentials nor mail "
                       "go out in clear: nothing sent")  # fmt: skip
    if isinstance(err, smtplib.SMTPAuthenticationError):
        return Outcome(False, f"authentication failed: {_reply(err.smtp_code, err.smtp_error)}")
    if isinstance(err, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in err.recipients.values()]
        transient = bool(codes) and all(400 <= code < 500 for code in codes)
        return Outcome(False, f"recipient(s) refused: {_refusals(err.recipients)}", transient)
    if isinstance(err, smtplib.SMTPResponseException):
        what = {
            "connect": "connection refused by the server",
            "EHLO": "EHLO refused",
            "STARTTLS": "STARTTLS refused",
            "AUTH": "authentication failed",
        }.get(stage)
        if what is None:
            what = "sender refused" if isinstance(err, smtplib.SMTPSenderRefused) else "message refused"
        return Outcome(False, f"{what}: {_reply(err.smtp_code, err.smtp_error)}", 400 <= err.smtp_code < 500)
    if isinstance(err, smtplib.SMTPServerDisconnected):
        if isinstance(err.__context__, TimeoutError):  # smtplib says "disconnected" for a reply that never came
            return Outcome(False, "no answer in time", True)
        return Outcome(False, f"the server closed the connection ({stage})", True)
    if isinstance(err, smtplib.SMTPNotSupportedError) and stage == "AUTH":
        return Outcome(False, "the server offers no AUTH: cannot log in with usernameSecretRef/passwordSecretRef")
    if isinstance(err, smtplib.SMTPException):
        return Outcome(False, f"{stage}: {err}")
    if isinstance(err, ssl.SSLCertVerificationError):
        return Outcome(False, f"TLS certificate not trusted ({err.verify_message or err.reason}): for a private "
                       "CA, give its PEM bundle in caSecretRef")  # fmt: skip
    if isinstance(err, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return Outcome(False, f"the server closed the connection during the TLS handshake ({stage})", True)
    if isinstance(err, ssl.SSLError):
        return Outcome(False, f"TLS failed: {err.reason or err}")
    if isinstance(err, TimeoutError):
        return Outcome(False, "no answer in time", True)
    if isinstance(err, OSError):
        return Outcome(False, f"cannot connect: {err.strerror or type(err).__name__}", True)
    raise err


# -- the action ---------------------------------------------------------------------------------


async def _ca_context(ref: api.SecretRef, ctx: ActionContext, where: str) -> ssl.SSLContext:
    """A TLS context that trusts the PEM bundle in the Secret, and only it. A CA certificate is
    public and many lines long, so it is read past ctx.secret's one-line credential check."""
    try:
        if ctx.services is None:
            raise RuntimeError("no cluster to read secrets from")
        pem = await ctx.services.read_secret(ctx.namespace, ref.name, ref.key, ctx.policy)
    except Exception as err:
        raise ActionFailure(
            f"{where}: cannot read the CA bundle from Secret {ref.name!r} key {ref.key!r}: {err}"
        ) from None
    try:
        return ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError) as err:
        why = getattr(err, "reason", None) or err
        raise ActionFailure(f"{where}: Secret {ref.name!r} key {ref.key!r} is not a PEM CA bundle: {why}") from None


async def _try(params: EmailParams, ctx: ActionContext, where: str, **delivery: Any) -> Outcome:
    try:
        address = await checked_address(params.host, params.server_port)
    except EgressRefused as err:  # the same answer on every try
        raise ActionFailure(f"{where}: {err}") from None
    except httpx.ConnectError as err:
        return Outcome(False, str(err), True)
    job = Delivery(params.host, address, params.server_port, params.tls, **delivery)
    if ctx.services is not None:
        return await ctx.services.run_blocking(deliver, job)
    return await asyncio.to_thread(deliver, job)


async def send(params: EmailParams, ctx: ActionContext) -> StepResult:
    where = f"mail server {params.host}"
    login = None
    if params.username_secret_ref is not None and params.password_secret_ref is not None:
        login = (
            await ctx.secret(params.username_secret_ref, where, "the SMTP username"),
            await ctx.secret(params.password_secret_ref, where, "the SMTP password"),
        )
    context: ssl.SSLContext | None = None
    if params.tls != "none":
        context = (
            api.tls_context() if params.ca_secret_ref is None else await _ca_context(params.ca_secret_ref, ctx, where)
        )
    message = compose(params, ctx)
    recipients = tuple(dict.fromkeys(email.utils.parseaddr(a)[1] for a in (*params.to, *params.cc)))
    # a little before the step's timeout, so a silent server is told as such, not as a timeout
    deadline = time.monotonic() + ctx.timeout - min(1.0, ctx.timeout * 0.05)
    delivery = {
        "context": context,
        "login": login,
        "message": message,
        "sender": email.utils.parseaddr(params.sender)[1],
        "recipients": recipients,
        "deadline": deadline,
    }
    outcome = Outcome(False, "not sent", True)
    for attempt in range(params.attempts):
        if attempt and time.monotonic() + params.backoff >= deadline:
            # another try would start after the step's timeout: say why the last one failed
            return _failed(
                ctx, where, outcome, f"transient; {attempt} of {params.attempts} tries before the step's timeout"
            )
        if attempt:
            await asyncio.sleep(params.backoff)
        outcome = await _try(params, ctx, where, **delivery)
        if outcome.ok:
            return StepResult(True, ctx.redact(outcome.message), {**outcome.output, "attempts": attempt + 1})
        if not outcome.transient:
            if "refused" in outcome.output:  # delivered to some recipients: another try would repeat it for them
                return StepResult(False, ctx.redact(outcome.message), outcome.output)
            return _failed(ctx, where, outcome, "permanent: not retried")
    tries = f"{params.attempts} tries" if params.attempts > 1 else "1 try"
    return _failed(ctx, where, outcome, f"transient; {tries}")


def _failed(ctx: ActionContext, where: str, outcome: Outcome, why: str) -> StepResult:
    return StepResult(False, ctx.redact(f"{where}: {outcome.message} ({why})"), outcome.output)


ACTIONS: tuple[Action[Any], ...] = (
    Action("notify.email", EmailParams, send, "email the incident to stakeholders over SMTP (STARTTLS)", 30.0),
)
