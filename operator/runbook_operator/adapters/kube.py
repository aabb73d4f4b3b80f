"""The one place that talks to the Kubernetes API (only ``actions/kubernetes`` also does).

:class:`Kube` serves the operator: status, Events, Secrets for actions, the intake's
Incidents (:class:`KubeIncidents`) and leader election's Leases (:class:`KubeLeases`). The
``kubernetes`` client is synchronous; every call runs in a bounded thread pool so the
event loop never blocks. The synchronous section at the end serves the command line
(``approve``, ``ack``, ``resolve``, ``report``): a client as the caller, who the API
server says they are, and one-line refusals.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import kubernetes
import urllib3

from runbook_operator.actions.api import CONSENT_ANNOTATION
from runbook_operator.adapters.lease import LeaseConflict
from runbook_operator.domain.resources import GROUP, INCIDENTS, VERSION

COMPONENT = "runbook-operator"
_SECRET = "/api/v1/namespaces/{namespace}/secrets/{name}"
T = TypeVar("T")
log = logging.getLogger(__name__)


class Conflict(Exception):
    """A fenced write found the object changed since the version it was decided from (HTTP 409)."""


class ApiError(Exception):
    """A Kubernetes API failure; ``permanent``: retrying the same request will not help."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class Kube:
    """Secrets, Namespaces and Events go to their REST paths (:meth:`_rest`), not through
    ``CoreV1Api``: that class and its models cost ~19 MB of the operator's memory and ~1 s of
    CPU to import, and a model built and parsed for every Event posted."""

    def __init__(self, api_client: kubernetes.client.ApiClient, workers: int = 16) -> None:
        self._client = api_client
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")

    @classmethod
    def from_environment(cls, workers: int = 16) -> Kube:
        """In-cluster config when running in a pod, else the current kubeconfig."""
        config = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=config)  # type: ignore[no-untyped-call]
        config.connection_pool_maxsize = workers
        return cls(kubernetes.client.ApiClient(config), workers)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    async def _rest(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        body: Any = None,
        request_timeout: float | None = None,
        answer: bool = True,
        pool: ThreadPoolExecutor | None = None,
        *,
        query: Mapping[str, Any] | None = None,
        content_type: str | None = "application/json",
        text: bool = False,
    ) -> Any:
        """One request to ``path`` (its ``{placeholders}`` from ``params``) in the pool: the API
        server's JSON, or with ``text`` its answer as text (None without ``answer``: not even
        read as either); a non-2xx answer raises the ``ApiException`` the typed classes raise.
        ``request_timeout`` bounds it on the wire."""
        client = self._client
        headers = {"Accept": "application/json"} | ({"Content-Type": content_type} if content_type else {})

        def call() -> Any:
            request = client.param_serialize(
                method, path, path_params=dict(params), query_params=list((query or {}).items()), body=body,
                header_params=headers, auth_settings=["BearerToken"],
            )  # fmt: skip
            response: Any = client.call_api(*request, _request_timeout=request_timeout)
            response.read()
            if not 200 <= response.status <= 299:
                kubernetes.client.ApiException.from_response(http_resp=response, body=None, data=None)  # raises
            if not answer:
                return None
            return response.data.decode() if text else json.loads(response.data)

        if pool is None:
            return await self._call(call)
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    # -- what actions may use (the Services protocol) ------------------------------
    async def rest(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        text: bool = False,
        request_timeout: float | None = None,
    ) -> Any:
        return await self._rest(
            method, path, params, body, request_timeout, query=query, content_type=content_type, text=text
        )

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._call(fn, *args)

    async def read_secret(self, namespace: str, name: str, key: str, policy: str | None) -> str:
        """The decoded value of one key, if the Secret names ``policy`` in its consent
        annotation; errors say which Secret and key, and what to annotate, never a value."""
        try:
            secret = await self._rest("GET", _SECRET, {"namespace": namespace, "name": name})
        except kubernetes.client.ApiException as err:
            raise LookupError(f"secret {namespace}/{name}: {err.reason} ({err.status})") from None
        annotations = (secret.get("metadata") or {}).get("annotations") or {}
        _consents(annotations.get(CONSENT_ANNOTATION), namespace, name, policy)
        data = secret.get("data") or {}
        if key not in data:
            raise LookupError(f"secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(data[key]).decode()

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None = None
    ) -> str:
        """Merge-patch the status subresource; the object's new resourceVersion.

        With ``resource_version`` the write is fenced: the API server applies it only if the
        object is still that version, else :class:`Conflict` (someone moved it meanwhile)."""
        patch: dict[str, Any] = {"status": status}
        if resource_version is not None:
            patch["metadata"] = {"resourceVersion": resource_version}
        try:
            written: Any = await self._call(
                self._custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, plural, name, patch
            )
        except kubernetes.client.ApiException as err:
            if err.status == 409:
                raise Conflict(f"{plural} {namespace}/{name} is no longer resourceVersion {resource_version}") from None
            raise
        return str(written["metadata"]["resourceVersion"])

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        """The object as the API server has it now (after a :class:`Conflict`)."""
        found: Any = await self._call(
            self._custom.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name
        )
        return dict(found)

    async def create(self, plural: str, namespace: str, body: Mapping[str, Any]) -> None:
        """Create an object (the Alertmanager intake's Incidents); ApiException 409 when it exists."""
        await self._call(self._custom.create_namespaced_custom_object, GROUP, VERSION, namespace, plural, dict(body))

    async def patch(self, plural: str, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """Merge-patch an object (the intake sets spec.resolved); ApiException 404 when it is gone."""
        await self._call(
            self._custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, plural, name, dict(patch)
        )

    async def delete(self, plural: str, namespace: str, name: str) -> None:
        await self._call(self._custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, plural, name)

    async def namespace_labels(self, name: str) -> dict[str, str]:
        """A Namespace's labels (the intake's opt-in); ApiException 404 when there is none."""
        found = await self._rest("GET", "/api/v1/namespaces/{name}", {"name": name})
        return dict((found.get("metadata") or {}).get("labels") or {})

    async def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        now = datetime.now(UTC)  # written as the typed client writes it (isoformat)
        involved = {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        }
        event = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {key: value for key, value in involved.items() if value is not None},
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
        }
        # the answer (the Event as stored) is never read, so it is not parsed either
        await self._rest(
            "POST", "/api/v1/namespaces/{namespace}/events", {"namespace": meta["namespace"]}, event, answer=False
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _consents(listed: str | None, namespace: str, name: str, policy: str | None) -> None:
    """PermissionError unless ``listed`` (the annotation's value) names ``policy`` or is ``*``."""
    names = [n.strip() for n in (listed or "").split(",") if n.strip()]
    if "*" in names or (policy is not None and policy in names):
        return
    if policy is None:
        raise PermissionError(f"secret {namespace}/{name}: read outside a RemediationPolicy")
    value = ",".join([*names, policy])
    raise PermissionError(
        f"secret {namespace}/{name} is not shared with policy {policy!r}: its owner must add it to the annotation "
        f"{CONSENT_ANNOTATION} (kubectl annotate secret {name} -n {namespace} --overwrite {CONSENT_ANNOTATION}={value})"
    )


class KubeIncidents:
    """The intake's Incidents (:class:`runbook_operator.adapters.intake.Incidents`) through :class:`Kube`.

    Give it a :class:`Kube` of its own (``Kube.from_environment(workers=4)``): its threads and
    connections are then the intake's budget, and a flood of alerts never queues ahead of the
    reconciler's status writes and Events in the operator's pool."""

    def __init__(self, kube: Kube) -> None:
        self._kube = kube

    async def create_incident(self, namespace: str, manifest: Mapping[str, Any]) -> bool:
        return await self._translate(self._kube.create(INCIDENTS, namespace, manifest), conflict=False)

    async def read_incident(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        found: dict[str, Any] = {}

        async def read() -> None:
            found.update(await self._kube.get(INCIDENTS, namespace, name))

        return found if await self._translate(read(), not_found=False) else None

    async def resolve_incident(self, namespace: str, name: str, resource_version: str) -> bool:
        # fenced: the API server applies it only to the Incident the intake read (409 otherwise)
        patch = {"metadata": {"resourceVersion": resource_version}, "spec": {"resolved": True}}
        return await self._translate(
            self._kube.patch(INCIDENTS, namespace, name, patch), conflict=False, not_found=False
        )

    async def namespace_labels(self, name: str) -> Mapping[str, str] | None:
        labels: dict[str, str] = {}

        async def read() -> None:
            labels.update(await self._kube.namespace_labels(name))

        return labels if await self._translate(read(), not_found=False) else None

    @staticmethod
    async def _translate(call: Any, conflict: bool | None = None, not_found: bool | None = None) -> bool:
        try:
            await call
        except kubernetes.client.ApiException as err:
            if err.status == 409 and conflict is not None:
                return conflict
            if err.status == 404 and not_found is not None:
                return not_found
            # a missing namespace or an invalid object stays so; forbidden, throttled, 5xx may pass
            raise ApiError(f"{err.reason} ({err.status})", permanent=err.status in (400, 404, 422)) from None
        except (OSError, urllib3.exceptions.HTTPError) as err:  # the API server is unreachable
            raise ApiError(f"cannot reach the API server: {err}", permanent=False) from None
        return True


class KubeLeases:
    """Leader election's Leases (:class:`runbook_operator.adapters.lease.Leases`) through :class:`Kube`.

    Objects go both ways as the API server's own JSON, not through ``CoordinationV1Api``:
    that client turns a body into a ``V1Lease`` and writes its times back with
    ``datetime.isoformat()``, which leaves out the fraction of a time on a whole second, and
    the API server refuses a MicroTime without its six digits (400). ``timeout`` bounds each
    request, so a hung connection gives its pool thread back. The requests have threads of
    their own: behind a burst of Events and status writes in the adapter's pool, a renewal
    would wait its turn and the leader could lose a Lease it is able to keep."""

    PATH = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

    def __init__(self, kube: Kube, timeout: float = 10.0) -> None:
        self._kube, self._timeout = kube, timeout
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lease")

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._send("GET", namespace, name)
        except kubernetes.client.ApiException as err:
            if err.status == 404:
                return None
            raise self._refused(err, namespace, name) from None

    async def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self._send("POST", namespace, None, body)
        except kubernetes.client.ApiException as err:
            raise self._refused(err, namespace, body["metadata"]["name"]) from None

    async def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT at ``body``'s ``metadata.resourceVersion``: the API server refuses it (409) if the Lease moved."""
        try:
            return await self._send("PUT", namespace, name, body)
        except kubernetes.client.ApiException as err:
            raise self._refused(err, namespace, name) from None

    async def _send(
        self, method: str, namespace: str, name: str | None, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        path, params = self.PATH, {"namespace": namespace}
        if name is not None:
            path, params = path + "/{name}", params | {"name": name}
        found: dict[str, Any] = await self._kube._rest(method, path, params, body, self._timeout, pool=self._pool)
        return found

    @staticmethod
    def _refused(err: kubernetes.client.ApiException, namespace: str, name: str) -> Exception:
        """409 (changed since read, or created by someone else first) is a lost race; the rest say why."""
        message = f"lease {namespace}/{name}: {api_message(err)} ({err.status})"
        return LeaseConflict(message) if err.status == 409 else RuntimeError(message)


# -- for the command line: synchronous, as the caller ---------------------------------


class Refused(Exception):
    """Said to the user as one line; the command exits 1."""


@dataclass(frozen=True)
class Connection:
    """Which cluster and namespace a command acts in, and as whom the client authenticates."""

    namespace: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    as_user: str | None = None
    as_group: str | None = None


def api_client(target: Connection) -> tuple[kubernetes.client.ApiClient, str]:
    """A client for the kubeconfig (or in-cluster config) and the namespace to use."""
    config_file = target.kubeconfig or os.environ.get("KUBECONFIG") or None
    try:
        client = kubernetes.config.new_client_from_config(config_file=config_file, context=target.context)  # type: ignore[no-untyped-call]
        contexts, active = kubernetes.config.list_kube_config_contexts(config_file=config_file)  # type: ignore[no-untyped-call]
        chosen = next((c for c in contexts if c.get("name") == target.context), active) if target.context else active
        default = (chosen or {}).get("context", {}).get("namespace") or "default"
    except (kubernetes.config.ConfigException, OSError):
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        client, default = kubernetes.client.ApiClient(), "default"
    if target.as_user:  # impersonation, as kubectl --as/--as-group (the API server checks the right to it)
        client.set_default_header("Impersonate-User", target.as_user)
    if target.as_group:
        client.set_default_header("Impersonate-Group", target.as_group)
    return client, target.namespace or default


def whoami(client: kubernetes.client.ApiClient) -> str:
    """The authenticated username, as the API server sees this client."""
    try:
        review = kubernetes.client.AuthenticationV1Api(client).create_self_subject_review(
            kubernetes.client.V1SelfSubjectReview()
        )
    except kubernetes.client.ApiException as err:
        raise Refused(f"cannot tell who you are (SelfSubjectReview): {api_message(err)}") from None
    username = review.status.user_info.username if review.status and review.status.user_info else None
    if not username:
        raise Refused("the API server did not say who you are (SelfSubjectReview has no username)")
    return str(username)


def api_message(err: kubernetes.client.ApiException) -> str:
    """The API server's own message (an admission policy's refusal says which rule and what to do)."""
    try:
        body = json.loads(err.body or "{}")
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, Mapping) else None
    text = str(message or err.reason or err)
    return " ".join(text.split())


class Incidents:
    def __init__(self, client: kubernetes.client.ApiClient, namespace: str) -> None:
        self._client, self.namespace = client, namespace
        self._api, self._core = kubernetes.client.CustomObjectsApi(client), kubernetes.client.CoreV1Api(client)

    def get(self, name: str) -> dict[str, Any]:
        try:
            found: Any = self._api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, INCIDENTS, name)
        except kubernetes.client.ApiException as err:
            if err.status == 404:
                raise Refused(f"incident {self.namespace}/{name} not found") from None
            raise Refused(f"reading incident {self.namespace}/{name}: {api_message(err)}") from None
        if not isinstance(found, dict):
            raise Refused(f"reading incident {self.namespace}/{name}: the API server answered no object")
        return found

    def every(self, all_namespaces: bool = False) -> list[dict[str, Any]]:
        """Every Incident of the namespace (or of all, as ``kubectl get inc -A``), with its status."""
        try:
            if all_namespaces:
                found: Any = self._api.list_cluster_custom_object(GROUP, VERSION, INCIDENTS)
            else:
                found = self._api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, INCIDENTS)
        except kubernetes.client.ApiException as err:
            where = "all namespaces" if all_namespaces else f"namespace {self.namespace}"
            raise Refused(f"listing incidents in {where}: {api_message(err)}") from None
        items = found.get("items") if isinstance(found, dict) else None
        return [i for i in items or [] if isinstance(i, dict)]

    def patch(self, name: str, patch: Any, what: str) -> None:
        """A JSON patch (a list) or a merge patch (a dict); a refusal becomes one line."""
        kind = "application/json-patch+json" if isinstance(patch, list) else "application/merge-patch+json"
        try:
            self._api.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, INCIDENTS, name, patch, _content_type=kind
            )
        except kubernetes.client.ApiException as err:
            raise Refused(f"{what} refused by the API server: {api_message(err)}") from None

    def events(self, name: str) -> list[dict[str, Any]]:
        """The Events about incident ``name``, as plain dicts."""
        selector = f"involvedObject.name={name},involvedObject.kind=Incident"
        try:
            listed = self._core.list_namespaced_event(self.namespace, field_selector=selector)
        except kubernetes.client.ApiException as err:
            raise Refused(f"reading the events of incident {name}: {api_message(err)}") from None
        return [self._client.sanitize_for_serialization(e) for e in listed.items]  # type: ignore[no-untyped-call]
