"""The notification channels: ``notify.webhook``, ``notify.slack``, ``notify.pagerduty``,
``notify.opsgenie``, ``notify.email``, one module each, and ``messages`` (what every channel says).

A notification is an action of this family: its name is ``notify.<channel>``
(``domain.model.NOTIFY``; the executor counts its runs by channel from the name). A step of an
escalation level or an announcement may run any action, but these are what they are for.

What a new channel does (CONTRIBUTING.md has the checklist):

- its text comes from ``messages``: ``messages.details(ctx)`` is the incident as the engine
  describes it, ``messages.headline``/``messages.body`` the words every channel uses, escaped
  by the channel for its own markup;
- it connects only through ``actions.egress`` (``egress.client`` for HTTP, ``egress.checked_address``
  otherwise), so link-local and metadata addresses are refused as for every action;
- a credential comes from a Secret (``SecretRef``, ``ctx.secret``) and nothing it returns quotes it:
  ``ctx.redact`` every text from the other side before it goes into a message or an output;
- a channel with threads returns ``StepResult(..., conversation=(key, id))`` the first time, and
  finds the id again in ``ctx.conversations[key]``, so the incident's later messages join it;
- its tests run it against a fake receiver that speaks the service's API (``tests/fixtures/slack.py``,
  ``paging.py``, ``smtp.py``), never against a mock of the client.
"""
