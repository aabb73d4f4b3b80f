"""The action catalog: each runbook step made executable.

An action is a dotted name, a pydantic parameter model (checked when a policy is
applied), a coroutine returning :class:`StepResult`, a default timeout and a
``destructive`` flag.
"""

from runbook_operator.actions.registry import Action, ActionContext, Registry, default_registry

__all__ = ["Action", "ActionContext", "Registry", "default_registry"]
