"""The incident state machine: diagnose -> remediate -> settle -> verify -> resolve | escalate.

``decide`` reads an Incident, its current status, the policies in its namespace and
the other incidents on the same target, and returns the next status, the Events to
post, and at most one step to run now (already marked Running in that status), or
when to look again. ``complete`` records a step's result. Both are pure; the engine
does the I/O and writes each returned status once.

Rules users rely on, all decided here:
- a step left Running by a dead operator runs again only if ``rerun_safe``;
  a destructive step or a notification is marked Skipped (outcome unknown) and the
  verification that follows decides whether the incident is fixed;
- a step that needs approval opens a request (round, rendered parameters, digest,
  nonce) and waits in AwaitingApproval until an approval names that step, round and
  nonce (``domain.consent``), or escalates with ApprovalTimeout; new parameters or a
  new round ask again, and a resumed approved step whose parameters changed asks again;
- in a dry run only read-only actions run; the rest are recorded as what would run;
- one remediation at a time per target, and a cooldown per target across incidents,
  both (and duplicates) among the incidents of one namespace only: namespaces are walls,
  and an incident whose target is in another namespace runs nothing;
- each escalation level fires once, its notify steps run once;
- each status change a policy announces (a phase entered, the first acknowledgement) is
  queued in status and its notify steps run once, before the incident's next step: a
  restart never announces a change twice (an interrupted announcement is not sent again).
"""

from runbook_operator.domain.lifecycle.decide import decide
from runbook_operator.domain.lifecycle.records import OUTPUT_LIMIT, complete
from runbook_operator.domain.lifecycle.stages import Peer, holds_target
from runbook_operator.domain.progress import Decision, Event, StepCall
from runbook_operator.domain.results import StepResult

__all__ = ["OUTPUT_LIMIT", "Decision", "Event", "Peer", "StepCall", "StepResult", "complete", "decide", "holds_target"]
