"""The Kube adapter's Events, Secrets and Namespace labels on their REST paths (no ``CoreV1Api``),
against the real API server: what is stored and every refusal, as the typed client gave them."""

from __future__ import annotations

import json

import kubernetes
import pytest

from runbook_operator.actions.api import CONSENT_ANNOTATION
from runbook_operator.adapters.kube import COMPONENT, Kube
from tests.fixtures.cluster import Kubectl


async def test_an_event_is_stored_with_every_field_the_typed_client_wrote(
    kubectl: Kubectl, namespace: str, admin: Kube
) -> None:
    kubectl("create", "configmap", "subject", "-n", namespace)
    subject = kubectl.get("configmap", "subject", namespace)
    await admin.post_event(subject, "Warning", "StepFailed", "x" * 1500)
    [event] = kubectl.events("subject", namespace)
    meta = subject["metadata"]
    assert event["metadata"]["name"].startswith("subject.")
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "subject",
        "namespace": namespace,
        "uid": meta["uid"],
        "resourceVersion": meta["resourceVersion"],
    }
    assert (event["type"], event["reason"], event["message"]) == ("Warning", "StepFailed", "x" * 1024)
    assert (event["count"], event["source"], event["reportingComponent"], event["reportingInstance"]) == (
        1,
        {"component": COMPONENT},
        COMPONENT,
        COMPONENT,
    )
    assert event["firstTimestamp"] == event["lastTimestamp"] and event["firstTimestamp"].endswith("Z")


async def test_an_event_about_an_object_without_uid_or_version_leaves_them_out(
    kubectl: Kubectl, namespace: str, admin: Kube
) -> None:
    body = {"metadata": {"name": "bare", "namespace": namespace}}
    await admin.post_event(body, "Normal", "Seen", "hello")
    [event] = kubectl.events("bare", namespace)
    assert event["involvedObject"] == {"name": "bare", "namespace": namespace}


async def test_an_event_in_a_missing_namespace_is_the_api_servers_refusal(admin: Kube) -> None:
    with pytest.raises(kubernetes.client.ApiException) as refused:
        await admin.post_event({"metadata": {"name": "x", "namespace": "no-such-namespace"}}, "Normal", "R", "m")
    assert refused.value.status == 404
    assert 'namespaces "no-such-namespace" not found' in json.loads(refused.value.body)["message"]


async def test_a_secret_is_read_only_with_consent_and_says_what_is_missing(
    kubectl: Kubectl, namespace: str, admin: Kube
) -> None:
    kubectl("create", "secret", "generic", "api", "-n", namespace, "--from-literal=token=s3cr3t")
    with pytest.raises(PermissionError, match=f"secret {namespace}/api is not shared with policy 'p'"):
        await admin.read_secret(namespace, "api", "token", "p")
    kubectl("annotate", "secret", "api", "-n", namespace, f"{CONSENT_ANNOTATION}=p")
    assert await admin.read_secret(namespace, "api", "token", "p") == "s3cr3t"
    with pytest.raises(LookupError, match=f"^secret {namespace}/api has no key 'other'$"):
        await admin.read_secret(namespace, "api", "other", "p")
    with pytest.raises(LookupError, match=rf"^secret {namespace}/gone: Not Found \(404\)$"):
        await admin.read_secret(namespace, "gone", "token", "p")


async def test_namespace_labels_are_read_and_a_missing_namespace_is_a_404(
    kubectl: Kubectl, namespace: str, admin: Kube
) -> None:
    kubectl("label", "namespace", namespace, "remediation.ishchat.io/intake=enabled")
    labels = await admin.namespace_labels(namespace)
    assert labels["remediation.ishchat.io/intake"] == "enabled"
    assert labels["kubernetes.io/metadata.name"] == namespace
    with pytest.raises(kubernetes.client.ApiException) as refused:
        await admin.namespace_labels("no-such-namespace")
    assert refused.value.status == 404
