"""The operator carries an action family's client library only once a step of it runs.

Checked in a fresh interpreter (this one has imported everything already): the handlers,
the default registry, every ISH Chat policy validated offline and the Kube adapter built,
and then none of the heavy libraries is loaded; a step of a family loads its own.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.fixtures.cluster import ROOT

HEAVY = (
    "docker",
    "redis",
    "psycopg",  # the postgres.* family's, and the archive's once one is configured
    "kubernetes.client.api.apps_v1_api",
    "kubernetes.client.api.core_v1_api",
)

STARTED = f"""
import contextlib, io, json, sys
import kubernetes
from runbook_operator.entrypoints import handlers  # what `runbook-operator run` imports
from runbook_operator.entrypoints.cli import main
from runbook_operator.adapters.kube import Kube

Kube(kubernetes.client.ApiClient(), workers=1).close()
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(["validate", "{ROOT / "manifests" / "runbooks" / "ish-chat"}"])
print(json.dumps({{"validate": code, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def _run(script: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_started_operator_with_the_ish_chat_pack_validated_loads_no_family_library() -> None:
    assert _run(STARTED) == {"validate": 0, "loaded": []}


def test_a_step_of_a_family_loads_its_library() -> None:
    step = """
import asyncio, json, sys
from runbook_operator.actions import ActionContext
from runbook_operator.actions.catalog import default_registry

registry = default_registry()
params = registry.parse("redis.ping", {"host": "127.0.0.1", "port": 1})
try:
    asyncio.run(registry.get("redis.ping").run(params, ActionContext("default", "incident", 2.0)))
    failure = ""
except Exception as err:  # nothing listens on port 1
    failure = str(err)
print(json.dumps({"redis": "redis" in sys.modules, "docker": "docker" in sys.modules, "failure": failure}))
"""
    failure = "redis 127.0.0.1:1/0: cannot connect: Connection refused"
    assert _run(step) == {"redis": True, "docker": False, "failure": failure}
