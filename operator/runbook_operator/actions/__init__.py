"""The action plug-in API, one import for an action's author::

    from runbook_operator.actions import Action, ActionContext, ActionFailure, Params, StepResult

The names come from ``actions.api``; the built-in families live in the modules beside it,
``actions.registry`` looks actions up and checks their parameters, and
``actions.catalog.default_registry()`` gathers the families and the installed plug-ins.
"""

from runbook_operator.actions.api import *  # noqa: F403  (the names api.__all__ lists, one list)
from runbook_operator.actions.api import __all__ as __all__
