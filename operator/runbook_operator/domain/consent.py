"""Consent: what an approval request binds, which approval answers it, and the commands that give one.

A step that needs approval opens a *request* (``status.steps[].approvalRequest``): the
round, the rendered parameters, their digest and a fresh random nonce. An approval
(``spec.approvals[]``) counts only when it names that step, that round and that nonce,
so an approval never outlives the exact action it agreed to: a later round, or new
parameters (an edited label or policy), make a new request with a new nonce. Who
approved is checked by the API server (the admission policy in ``manifests/consent``):
``by`` must be the authenticated requester, who must hold the ``approve`` verb.

The commands handed to people are built only from values the operator made or the API
server validated (incident name, namespace, step name, round, nonce), each quoted for
the shell, never from text someone typed.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PLACEHOLDER = "YOUR-NAME"  # the raw patch's `by`: the approver's own username, which the API server checks


@dataclass(frozen=True)
class Approval:
    """One entry of ``spec.approvals``."""

    step: str
    by: str
    round: int = 0  # 0: written before approvals were bound to a round (never counts)
    nonce: str = ""

    def answers(self, step: str, round_: int, nonce: str) -> bool:
        return bool(nonce) and (self.step, self.round, self.nonce) == (step, round_, nonce)


def digest(action: str, params: Mapping[str, Any]) -> str:
    """A stable digest of what would run: the action and its rendered parameters."""
    canonical = json.dumps({"action": action, "with": params}, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def answer(approvals: Sequence[Approval], step: str, round_: int, nonce: str) -> Approval | None:
    """The first approval of exactly this request, if any."""
    return next((a for a in approvals if a.answers(step, round_, nonce)), None)


def entry(step: str, round_: int, nonce: str, by: str) -> dict[str, Any]:
    return {"step": step, "round": round_, "nonce": nonce, "by": by}


def append_patch(step: str, round_: int, nonce: str, by: str, *, list_exists: bool = True) -> list[dict[str, Any]]:
    """The JSON patch that appends one approval (creating the list when an old CRD left it absent)."""
    value = entry(step, round_, nonce, by)
    if list_exists:
        return [{"op": "add", "path": "/spec/approvals/-", "value": value}]
    return [{"op": "add", "path": "/spec/approvals", "value": [value]}]


def approve_command(namespace: str, name: str, step: str) -> str:
    """The command people run: it shows the request, asks, and fills in who they are."""
    return shlex.join(["kubectl", "runbook", "approve", name, step, "-n", namespace])


def patch_command(namespace: str, name: str, step: str, round_: int, nonce: str) -> str:
    """The same approval as a raw ``kubectl patch`` (replace YOUR-NAME with your username)."""
    patch = json.dumps(append_patch(step, round_, nonce, PLACEHOLDER), separators=(",", ":"))
    return shlex.join(["kubectl", "patch", "incident", name, "-n", namespace, "--type=json", "-p", patch])
