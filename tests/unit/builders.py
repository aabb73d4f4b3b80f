"""Small builders for API-shaped dicts, so tests read like the YAML users write."""

from typing import Any

from runbook_operator.actions.catalog import default_registry
from runbook_operator.domain.model import Incident, InvalidPolicy, Policy
from runbook_operator.domain.parsing import parse_policy

REGISTRY = default_registry()


def policy_body(name: str = "p", namespace: str = "ns", generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "generation": generation}, "spec": spec}


def check(name: str, url: str = "http://127.0.0.1:1/health", **extra: Any) -> dict[str, Any]:
    return {"name": name, "action": "http.check", "with": {"url": url}, **extra}


def request(name: str, url: str = "http://127.0.0.1:1/admin/restart", **extra: Any) -> dict[str, Any]:
    return {"name": name, "action": "http.request", "with": {"url": url}, **extra}


def policy(name: str = "p", namespace: str = "ns", **spec: Any) -> Policy:
    parsed = parse_policy(policy_body(name, namespace, **spec), REGISTRY.check)
    assert isinstance(parsed, Policy), parsed
    return parsed


def invalid(name: str = "p", namespace: str = "ns", **spec: Any) -> InvalidPolicy:
    parsed = parse_policy(policy_body(name, namespace, **spec), REGISTRY.check)
    assert isinstance(parsed, InvalidPolicy), parsed
    return parsed


def incident(alert: str = "RedisDown", namespace: str = "ns", generation: int = 1, **spec: Any) -> Incident:
    body = {
        "metadata": {"name": "i", "namespace": namespace, "generation": generation},
        "spec": {"alert": alert, **spec},
    }
    return Incident.from_body(body)


def incident_body(name: str = "i", uid: str | None = None) -> dict[str, Any]:
    """An Incident as the API serves it, for the reconciler's ``observe``."""
    meta = {"name": name, "namespace": "ns", "uid": uid or f"uid-{name}", "generation": 1}
    return {
        "apiVersion": "remediation.ishchat.io/v1alpha1",
        "kind": "Incident",
        "metadata": meta,
        "spec": {"alert": "A"},
    }


def demo_policy(url: str) -> Policy:
    """check /health, POST /admin/restart, check /health again: the DemoService's round trip."""
    return policy(
        "p",
        diagnose=[{"name": "health", "action": "http.check", "with": {"url": f"{url}/health"}}],
        remediate=[
            {"name": "restart", "action": "http.request", "with": {"url": f"{url}/admin/restart", "expectStatus": 202}}
        ],
        verify=[{"name": "again", "action": "http.check", "with": {"url": f"{url}/health"}}],
    )
