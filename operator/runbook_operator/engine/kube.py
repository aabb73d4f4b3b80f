"""The one place that talks to the Kubernetes API for the engine (status and Events).

The ``kubernetes`` client is synchronous; every call runs in a bounded thread
pool so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import kubernetes

from runbook_operator.domain.resources import GROUP, VERSION

COMPONENT = "runbook-operator"
T = TypeVar("T")
log = logging.getLogger(__name__)


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient, workers: int = 16) -> None:
        self._client = api_client
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._core = kubernetes.client.CoreV1Api(api_client)
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

    # -- what actions may use (the Services protocol) ------------------------------
    def api_client(self) -> kubernetes.client.ApiClient:
        return self._client

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._call(fn, *args)

    async def read_secret(self, namespace: str, name: str, key: str) -> str:
        """The decoded value of one key; errors say which Secret and key, never a value."""
        try:
            secret = await self._call(self._core.read_namespaced_secret, name, namespace)
        except kubernetes.client.ApiException as err:
            raise LookupError(f"secret {namespace}/{name}: {err.reason} ({err.status})") from None
        data = secret.data or {}
        if key not in data:
            raise LookupError(f"secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(data[key]).decode()

    async def patch_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the status subresource (the operator is its only writer)."""
        await self._call(
            self._custom.patch_namespaced_custom_object_status,
            GROUP, VERSION, namespace, plural, name, {"status": status},
        )  # fmt: skip

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

    async def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        now = datetime.now(UTC)
        event = kubernetes.client.CoreV1Event(
            metadata=kubernetes.client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=kubernetes.client.V1ObjectReference(
                api_version=body.get("apiVersion"),
                kind=body.get("kind"),
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid"),
                resource_version=meta.get("resourceVersion"),
            ),
            type=type_,
            reason=reason,
            message=message[:1024],
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=kubernetes.client.V1EventSource(component=COMPONENT),
            reporting_component=COMPONENT,
            reporting_instance=COMPONENT,
        )
        await self._call(self._core.create_namespaced_event, meta["namespace"], event)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
