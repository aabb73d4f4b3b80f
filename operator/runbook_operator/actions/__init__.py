"""The action plug-in API, one import for an action's author::

    from runbook_operator.actions import Action, ActionContext, ActionFailure, Params, StepResult

The names come from ``actions.api``; the built-in families live in the modules beside it,
``actions.registry`` looks actions up and checks their parameters, and
``actions.catalog.default_registry()`` gathers the families and the installed plug-ins.
"""

from runbook_operator.actions.api import (
    Action,
    ActionContext,
    ActionFailure,
    Duration,
    ErrorScan,
    Language,
    Params,
    SecretRef,
    Services,
    StepResult,
    tls_context,
)

__all__ = [
    "Action",
    "ActionContext",
    "ActionFailure",
    "Duration",
    "ErrorScan",
    "Language",
    "Params",
    "SecretRef",
    "Services",
    "StepResult",
    "tls_context",
]
