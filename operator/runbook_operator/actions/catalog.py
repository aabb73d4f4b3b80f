"""The default catalog: the built-in families and the actions of installed plug-ins.

A package adds actions without forking: it declares an entry point in the group
``runbook_operator.actions`` whose object is an iterable of :class:`Action` (see
"Write your own action" in docs/actions.md). The families import only ``actions.api``;
nothing imports this module but the commands, the handlers and the tests.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any

from runbook_operator.actions import alertmanager, docker, http, kubernetes, postgres, prometheus, redis
from runbook_operator.actions.api import Action
from runbook_operator.actions.notify import email, paging, slack, webhook
from runbook_operator.actions.registry import Registry

ENTRY_POINT_GROUP = "runbook_operator.actions"
BUILTIN: tuple[Action[Any], ...] = (*http.ACTIONS, *webhook.ACTIONS, *kubernetes.ACTIONS, *docker.ACTIONS,
                                    *prometheus.ACTIONS, *postgres.ACTIONS, *redis.ACTIONS, *slack.ACTIONS,
                                    *paging.ACTIONS, *email.ACTIONS, *alertmanager.ACTIONS)  # fmt: skip
log = logging.getLogger(__name__)


def plugin_actions() -> list[Action[Any]]:
    """Actions from installed packages' entry points; a broken plug-in is logged and skipped."""
    found: list[Action[Any]] = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found.extend(point.load())
        except Exception as err:  # one bad plug-in must not take the operator down
            log.error("action plug-in %s (%s) failed to load: %s", point.name, point.value, err)
    return found


def default_registry() -> Registry:
    return Registry((*BUILTIN, *plugin_actions()))
