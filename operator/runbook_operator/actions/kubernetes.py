"""kubernetes.*: the runbook's ``kubectl rollout status/restart``, ``kubectl scale``,
``kubectl logs`` and ``kubectl delete pod``.

Every action works in the incident's namespace only (there is no namespace
parameter), as the operator: every call goes through the Kube adapter's one REST call
(``ctx.services.rest``, in the engine's thread pool) and is bounded by the step's
timeout, both on the event loop and on the wire. The operator's
ServiceAccount needs the Role in ``manifests/namespace-access`` in that namespace;
a missing grant is reported with the verb and resource it lacks.

Calls go to the REST paths, and objects come back as the API server's JSON (camelCase
keys), not through ``AppsV1Api``/``CoreV1Api``: importing those and their models costs the
operator ~23 MB and ~1 s of CPU, and every answer would be parsed into models again.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

import pydantic
import urllib3
from kubernetes.client import ApiException

from runbook_operator.actions.api import Action, ActionContext, ActionFailure, ErrorScan, Language, Params, StepResult
from runbook_operator.domain.status import timestamp
from runbook_operator.domain.wire import clipped

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"  # the annotation `kubectl rollout restart` sets
GRANT = "kubectl apply -n {ns} -k manifests/namespace-access"
EXCERPT_CHARS = 1200  # characters of log lines kept in a podLogs output (the status keeps ~2 KiB a step)
EXCERPT_LINES = 5  # matching (else last) lines quoted per pod
MAX_LOG_BYTES = 1024 * 1024  # bytes of one pod's log tail read from the API server
_LINE = 200  # characters of one quoted line or error
_BUDGET_SHARE = 0.9  # of the step's timeout; the rest lets the action say which call hung
_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"  # a DNS subdomain, as object names are

Kind = Literal["Deployment", "StatefulSet"]


# -- parameters ---------------------------------------------------------------------


def _kind_field() -> Any:
    return pydantic.Field("Deployment", description="workload kind: Deployment or StatefulSet")


def _name_field(what: str) -> Any:
    return pydantic.Field(min_length=1, max_length=253, pattern=_NAME, description=what)


class _Workload(Params):
    kind: Kind = _kind_field()
    name: Annotated[str, Language.NAME] = _name_field("workload name, in the incident's namespace")


class StatusParams(_Workload):
    pass


class RestartParams(_Workload):
    pass


class ScaleParams(_Workload):
    replicas: int | None = pydantic.Field(
        None, ge=0, description="absolute replica count to set (give replicas or by, not both)"
    )
    by: int | None = pydantic.Field(
        None, description="relative change of the current replica count, e.g. 2 or -1 (give replicas or by)"
    )
    min_replicas: int = pydantic.Field(
        0, alias="min", ge=0, description="lower bound: a smaller result is raised to it (and says so)"
    )
    max_replicas: int = pydantic.Field(
        alias="max", ge=0, description="upper bound: a larger result is lowered to it (and says so)"
    )

    @pydantic.model_validator(mode="after")
    def _one_target_within_bounds(self) -> Self:
        if (self.replicas is None) == (self.by is None):
            raise ValueError("give exactly one of replicas (absolute) or by (relative)")
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max ({self.max_replicas}) is less than min ({self.min_replicas})")
        return self


class LogsParams(ErrorScan):
    kind: Kind = pydantic.Field(
        "Deployment", description="kind of the workload named by name: Deployment or StatefulSet"
    )
    name: Annotated[str | None, Language.NAME] = pydantic.Field(
        None,
        min_length=1,
        max_length=253,
        pattern=_NAME,
        description="read the pods of this workload (give name or labelSelector)",
    )
    label_selector: Annotated[str | None, Language.NAME] = pydantic.Field(
        None,
        alias="labelSelector",
        min_length=1,
        max_length=1024,
        description="read the pods matching this label selector, e.g. app=web,tier!=cache (give name or labelSelector)",
    )
    container: Annotated[str | None, Language.NAME] = pydantic.Field(
        None,
        min_length=1,
        max_length=63,
        description="container whose log is read (default: the pod's first container)",
    )
    previous: bool = pydantic.Field(
        False, description="read the previous, terminated container's log (after a crash) instead of the running one"
    )
    tail_lines: int = pydantic.Field(
        100, alias="tailLines", ge=1, le=10_000, description="lines read from the end of each pod's log"
    )
    max_pods: int = pydantic.Field(10, alias="maxPods", ge=1, le=50, description="read at most this many pods")

    @pydantic.model_validator(mode="after")
    def _one_selection(self) -> Self:
        if (self.name is None) == (self.label_selector is None):
            raise ValueError("give exactly one of name (a workload's pods) or labelSelector")
        if self.label_selector is not None and "kind" in self.model_fields_set:
            raise ValueError("kind goes with name, not with labelSelector")
        return self


class DeletePodParams(Params):
    name: Annotated[str, Language.NAME] = _name_field(
        "the pod to delete; with kind, the workload whose pods are deleted"
    )
    kind: Kind | None = pydantic.Field(
        None, description="Deployment or StatefulSet: name is then a workload, and up to maxPods of its pods go"
    )
    max_pods: int = pydantic.Field(
        1,
        alias="maxPods",
        ge=1,
        le=100,
        description="with kind: delete at most this many pods (not-ready ones first, then the oldest)",
    )
    grace_period: int | None = pydantic.Field(
        None,
        alias="gracePeriodSeconds",
        ge=0,
        le=3600,
        description="seconds the pods get to stop (default: each pod's terminationGracePeriodSeconds)",
    )

    @pydantic.model_validator(mode="after")
    def _max_pods_needs_kind(self) -> Self:
        if self.kind is None and "max_pods" in self.model_fields_set:
            raise ValueError("maxPods goes with kind (a workload's pods); without kind, name is one pod")
        return self


# -- talking to the API server -------------------------------------------------------


class _ApiFailure(ActionFailure):
    """A call to the API server that failed; it fails the step unless the action catches it.

    ``reason`` sorts it: missing, forbidden, unauthorized, timeout, unreachable or error;
    ``detail`` is what the API server said, if anything.
    """

    def __init__(self, message: str, reason: str = "error", detail: str = "") -> None:
        super().__init__(message)
        self.reason, self.detail = reason, detail or message

    @property
    def for_every_call(self) -> bool:
        """Would the next call fail the same way (so there is no point going on)?"""
        return self.reason in ("forbidden", "unauthorized", "timeout", "unreachable")


SCALE_ATTEMPTS = 5  # reads and conditional writes of a scale before a conflict fails the step


@dataclass(frozen=True)
class _KindInfo:
    noun: str  # as messages and kubectl name it
    plural: str  # as RBAC and the REST path name it

    @property
    def path(self) -> str:
        return f"/apis/apps/v1/namespaces/{{namespace}}/{self.plural}/{{name}}"


_KINDS: dict[str, _KindInfo] = {
    "Deployment": _KindInfo("deployment", "deployments"),
    "StatefulSet": _KindInfo("statefulset", "statefulsets"),
}
_PODS = "/api/v1/namespaces/{namespace}/pods"


def _server_message(err: ApiException) -> str:
    try:
        message = json.loads(err.body or "")["message"]
    except (ValueError, KeyError, TypeError):
        message = ""
    return str(message or err.reason or "no message")[:_LINE]


class _Cluster:
    """One step's view of the API: the incident's namespace, the step's deadline, clear errors."""

    def __init__(self, ctx: ActionContext) -> None:
        if ctx.services is None:
            raise ActionFailure("no cluster connection: kubernetes.* actions run inside the operator")
        self.ns = ctx.namespace
        self._services = ctx.services
        self._timeout = ctx.timeout
        self._deadline = time.monotonic() + ctx.timeout * _BUDGET_SHARE

    def where(self, noun: str, name: str) -> str:
        return f"{noun} {self.ns}/{name}"

    async def request(
        self,
        verb: str,
        resource: str,
        subject: str | None,
        method: str,
        path: str,
        name: str | None = None,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        text: bool = False,
    ) -> Any:
        """One REST call through the operator's Kube adapter (``Services.rest``): ``path`` in the
        incident's namespace, ``{name}`` filled in, within the step's deadline. The API server's
        JSON, or with ``text`` its answer as text (a log); failures become :class:`_ApiFailure`
        naming verb and resource."""
        what = f"{verb} {resource} in namespace {self.ns}"
        silent = _ApiFailure(f"{what}: no answer from the API server within the step's {self._timeout:g}s", "timeout")
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise silent
        params = {"namespace": self.ns} | ({} if name is None else {"name": name})
        try:
            async with asyncio.timeout(left):
                return await self._services.rest(
                    method, path, params, query=query, body=body, content_type=content_type, text=text,
                    request_timeout=left,  # frees the thread, too
                )  # fmt: skip
        except TimeoutError:
            raise silent from None
        except ApiException as err:
            raise self._explain(err, verb, resource, subject) from None
        except urllib3.exceptions.MaxRetryError as err:
            if isinstance(err.reason, urllib3.exceptions.TimeoutError):
                raise silent from None
            unreachable = f"{what}: cannot reach the API server: {type(err.reason).__name__}"
            raise _ApiFailure(unreachable, "unreachable") from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise _ApiFailure(f"{what}: cannot reach the API server: {type(err).__name__}", "unreachable") from None

    def _explain(self, err: ApiException, verb: str, resource: str, subject: str | None) -> _ApiFailure:
        target = subject or f"{resource} in namespace {self.ns}"
        said = f"HTTP {err.status}: {_server_message(err)}"
        if err.status == 404 and subject:
            return _ApiFailure(f"{subject} not found", "missing", said)
        if err.status == 403:
            message = (
                f"forbidden: the operator may not {verb} {resource} in namespace {self.ns}; "
                f"bind the Role runbook-operator-actions there ({GRANT.format(ns=self.ns)})"
            )
            return _ApiFailure(message, "forbidden", said)
        if err.status == 401:
            message = f"unauthorized: the API server rejected the operator's credentials ({verb} {resource})"
            return _ApiFailure(message, "unauthorized", said)
        if err.status == 409:
            return _ApiFailure(f"{verb} {target}: it changed meanwhile, run the step again ({said})", "conflict", said)
        return _ApiFailure(f"{verb} {target}: {said}", "error", said)

    # -- workloads -------------------------------------------------------------------
    async def workload(self, kind: str, name: str) -> dict[str, Any]:
        info = _KINDS[kind]
        found: dict[str, Any] = await self.request(
            "get", info.plural, self.where(info.noun, name), "GET", info.path, name
        )
        return found

    async def workload_pods(self, kind: str, name: str, workload: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        """The pods this workload controls: its selector, narrowed to pods it (or its ReplicaSets) own."""
        selector = _selector(workload["spec"].get("selector"))
        if not selector:
            raise ActionFailure(f"{self.where(_KINDS[kind].noun, name)} has an empty selector")
        pods = await self.pods(selector)
        return selector, [p for p in pods if _owned_by(p, kind, name, workload["metadata"]["uid"])]

    async def pods(self, selector: str) -> list[dict[str, Any]]:
        listed = await self.request("list", "pods", None, "GET", _PODS, query={"labelSelector": selector})
        return sorted(listed.get("items") or [], key=lambda p: p["metadata"]["name"])


def _selector(selector: dict[str, Any] | None) -> str:
    """A LabelSelector as the label-selector string the list call takes."""
    if selector is None:
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, values = expr["key"], ",".join(expr.get("values") or [])
        parts.append(
            {
                "In": f"{key} in ({values})",
                "NotIn": f"{key} notin ({values})",
                "Exists": key,
                "DoesNotExist": f"!{key}",
            }[expr["operator"]]
        )
    return ",".join(parts)


def _owned_by(pod: dict[str, Any], kind: str, name: str, uid: str) -> bool:
    meta = pod["metadata"]
    for ref in meta.get("ownerReferences") or []:
        if not ref.get("controller"):
            continue
        if kind == "StatefulSet":
            return bool(ref["kind"] == "StatefulSet" and ref["uid"] == uid)
        # a Deployment's ReplicaSets are <deployment>-<pod-template-hash>
        template_hash = (meta.get("labels") or {}).get("pod-template-hash")
        return bool(ref["kind"] == "ReplicaSet" and ref["name"] == f"{name}-{template_hash}")
    return False


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


# -- kubernetes.workloadStatus -----------------------------------------------------


async def workload_status(params: StatusParams, ctx: ActionContext) -> StepResult:
    cluster = _Cluster(ctx)
    obj = await cluster.workload(params.kind, params.name)
    where = cluster.where(_KINDS[params.kind].noun, params.name)
    spec, status = obj["spec"], obj.get("status") or {}
    desired = spec["replicas"] if spec.get("replicas") is not None else 1
    counts = {
        "desired": desired,
        "ready": status.get("readyReplicas") or 0,
        "updated": status.get("updatedReplicas") or 0,
        "available": status.get("availableReplicas") or 0,
    }
    conditions = [
        {
            "type": c["type"],
            "status": c["status"],
            "reason": c.get("reason") or "",
            "message": clipped(c.get("message") or "", _LINE),
        }
        for c in status.get("conditions") or []
    ]
    seen = status.get("observedGeneration")
    observed = seen is not None and seen >= obj["metadata"]["generation"]
    output = {**counts, "observed": observed, "conditions": conditions}
    summary = (
        f"{counts['ready']}/{desired} ready, {counts['updated']} updated, {counts['available']} available"
        + ("" if observed else "; the controller has not seen the latest spec yet")
        + ("; paused" if spec.get("paused") else "")
    )
    problems = []
    if counts["ready"] < desired:
        problems.append(f"only {counts['ready']} of {desired} replicas ready")
    problems += [
        f"Available=False ({c['reason']}: {c['message']})"
        for c in conditions
        if c["type"] == "Available" and c["status"] == "False"
    ]
    if problems:
        return StepResult(False, f"{where} is not healthy: {'; '.join(problems)} ({summary})", output)
    return StepResult(True, f"{where}: {summary}", output)


# -- kubernetes.rolloutRestart -----------------------------------------------------


def restart_timestamp(now: datetime | None = None) -> str:
    """RFC 3339 to the second, as ``kubectl rollout restart`` writes it (``time.Now().Format(time.RFC3339)``)."""
    return timestamp(now or datetime.now(UTC))


async def rollout_restart(params: RestartParams, ctx: ActionContext) -> StepResult:
    cluster = _Cluster(ctx)
    info = _KINDS[params.kind]
    where = cluster.where(info.noun, params.name)
    spec = (await cluster.workload(params.kind, params.name))["spec"]
    if spec.get("paused"):
        return StepResult(False, f"{where} is paused: a restart would not roll out (kubectl rollout resume first)")
    strategy = spec.get("updateStrategy")
    if strategy is not None and strategy.get("type") == "OnDelete":
        return StepResult(
            False,
            f"{where} has updateStrategy OnDelete: a rollout restart would not replace its pods "
            "(use kubernetes.deletePod)",
        )
    annotations = (spec["template"].get("metadata") or {}).get("annotations") or {}
    stamp = restart_timestamp()
    patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
    patched = await cluster.request(
        "patch", info.plural, where, "PATCH", info.path, params.name, body=patch,
        content_type="application/strategic-merge-patch+json",
    )  # fmt: skip
    output = {
        "restartedAt": stamp,
        "previous": annotations.get(RESTARTED_AT),
        "generation": patched["metadata"]["generation"],
    }
    return StepResult(True, f"{where} restarting: {RESTARTED_AT}={stamp} (generation {output['generation']})", output)


# -- kubernetes.scale --------------------------------------------------------------


async def scale(params: ScaleParams, ctx: ActionContext) -> StepResult:
    cluster = _Cluster(ctx)
    info = _KINDS[params.kind]
    where = cluster.where(info.noun, params.name)
    resource, path = f"{info.plural}/scale", f"{info.path}/scale"
    attempt = 0
    while True:
        attempt += 1
        current_scale = await cluster.request("get", resource, where, "GET", path, params.name)
        current = (current_scale.get("spec") or {}).get("replicas") or 0
        requested = params.replicas if params.replicas is not None else current + (params.by or 0)
        target = min(max(requested, params.min_replicas), params.max_replicas)
        clamped = ""
        if target != requested:
            bound = "max" if requested > params.max_replicas else "min"
            clamped = f" (asked for {requested}, clamped to {bound} {target})"
        output = {"from": current, "to": target, "requested": requested, "clamped": bool(clamped)}
        if target == current:
            return StepResult(True, f"{where} already has {current} replicas{clamped}", output)
        # the resourceVersion makes a relative change fail instead of racing another writer; the
        # controllers write the workload's status all through a rollout, so on a conflict the
        # change is computed again from what is there now (client-go's RetryOnConflict)
        patch = {
            "metadata": {"resourceVersion": current_scale["metadata"]["resourceVersion"]},
            "spec": {"replicas": target},
        }
        try:
            await cluster.request(
                "patch", resource, where, "PATCH", path, params.name, body=patch,
                content_type="application/merge-patch+json",
            )  # fmt: skip
        except _ApiFailure as failure:
            if failure.reason != "conflict" or attempt == SCALE_ATTEMPTS:
                raise
            continue
        return StepResult(True, f"{where} scaled from {current} to {target} replicas{clamped}", output)


# -- kubernetes.podLogs ------------------------------------------------------------


@dataclass
class _PodLog:
    pod: str
    lines: int = 0
    matches: int = 0
    quoted: tuple[str, ...] = ()
    error: str | None = None

    def counts(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        return {"lines": self.lines, "matches": self.matches}


async def _read_log(cluster: _Cluster, pod: dict[str, Any], params: LogsParams, ctx: ActionContext) -> _PodLog:
    name = pod["metadata"]["name"]
    containers = [c["name"] for c in pod["spec"].get("containers") or []]
    container = params.container or (containers[0] if containers else None)
    query: dict[str, Any] = {"tailLines": params.tail_lines, "limitBytes": MAX_LOG_BYTES}
    if container:
        query["container"] = container
    if params.previous:
        query["previous"] = True
    try:
        text = await cluster.request(
            "get", "pods/log", cluster.where("pod", name), "GET", f"{_PODS}/{{name}}/log", name, query=query, text=True
        )
    except _ApiFailure as failure:
        if failure.for_every_call:
            raise  # the same for every pod: the step fails
        return _PodLog(name, error=clipped(failure.detail, _LINE))  # e.g. a container still waiting to start
    lines, matching = await params.scan(str(text or ""), ctx)
    quoted = matching[-EXCERPT_LINES:] if matching else lines[-EXCERPT_LINES:]
    return _PodLog(name, len(lines), len(matching), tuple(clipped(line, _LINE) for line in quoted))


def _excerpts(logs: list[_PodLog]) -> dict[str, list[str]]:
    """Quoted lines per pod, newest last, EXCERPT_CHARS in all."""
    kept: dict[str, list[str]] = {}
    left = EXCERPT_CHARS
    for log in logs:
        for line in log.quoted:
            if len(line) > left:
                return kept
            kept.setdefault(log.pod, []).append(line)
            left -= len(line)
    return kept


async def pod_logs(params: LogsParams, ctx: ActionContext) -> StepResult:
    cluster = _Cluster(ctx)
    if params.name is not None:
        workload = await cluster.workload(params.kind, params.name)
        selector, pods = await cluster.workload_pods(params.kind, params.name, workload)
        source = f"{cluster.where(_KINDS[params.kind].noun, params.name)} (selector {selector})"
        nothing = f"{source} has no pods"
    else:
        selector = params.label_selector or ""
        pods = await cluster.pods(selector)
        source = f"pods matching {selector} in namespace {cluster.ns}"
        nothing = f"no pods match {selector} in namespace {cluster.ns}"
    if not pods:
        return StepResult(False, nothing, {"selector": selector})
    skipped = max(0, len(pods) - params.max_pods)
    logs = list(await asyncio.gather(*(_read_log(cluster, p, params, ctx) for p in pods[: params.max_pods])))
    total = sum(log.matches for log in logs)
    unread = [log for log in logs if log.error is not None]
    output: dict[str, Any] = {"selector": selector, "matches": total, "pods": {log.pod: log.counts() for log in logs}}
    if skipped:
        output["skippedPods"] = skipped
    output["excerpts"] = _excerpts(logs)
    if len(unread) == len(logs):
        return StepResult(False, f"{source}: no log could be read from {_pods(unread)}: {unread[0].error}", output)
    read = len(logs) - len(unread)
    summary = f"{total} of the last {params.tail_lines} lines of {read} pod(s) match /{params.error_pattern}/"
    if unread:
        summary += f"; no log from {_pods(unread)} (see output)"
    if skipped:
        summary += f"; {skipped} more pod(s) not read (maxPods {params.max_pods})"
    if params.max_errors is not None and total > params.max_errors:
        return StepResult(False, f"{source}: too many errors: {summary} (maxErrors {params.max_errors})", output)
    return StepResult(True, f"{source}: {summary}", output)


def _pods(logs: list[_PodLog], listed: int = 5) -> str:
    names = ", ".join(log.pod for log in logs[:listed])
    more = f" and {len(logs) - listed} more" if len(logs) > listed else ""
    return f"{len(logs)} pod(s): {names}{more}"


# -- kubernetes.deletePod ----------------------------------------------------------


async def _delete(cluster: _Cluster, name: str, grace: int | None) -> None:
    query = {} if grace is None else {"gracePeriodSeconds": grace}
    where = cluster.where("pod", name)
    await cluster.request("delete", "pods", where, "DELETE", f"{_PODS}/{{name}}", name, query=query)


async def _delete_if_there(cluster: _Cluster, name: str, grace: int | None) -> bool:
    """Delete one pod; False when it was already gone."""
    try:
        await _delete(cluster, name, grace)
    except _ApiFailure as failure:
        if failure.reason == "missing":
            return False
        raise
    return True


async def delete_pod(params: DeletePodParams, ctx: ActionContext) -> StepResult:
    cluster = _Cluster(ctx)
    if params.kind is None:
        await _delete(cluster, params.name, params.grace_period)
        return StepResult(True, f"deleted {cluster.where('pod', params.name)}", {"deleted": [params.name]})
    where = cluster.where(_KINDS[params.kind].noun, params.name)
    workload = await cluster.workload(params.kind, params.name)
    _, pods = await cluster.workload_pods(params.kind, params.name, workload)
    live = [p for p in pods if p["metadata"].get("deletionTimestamp") is None]
    if not live:
        return StepResult(False, f"{where} has no pods to delete", {"deleted": []})
    # the sick ones first, then the oldest (RFC 3339 in UTC, to the second: it sorts as the time does)
    live.sort(key=lambda p: (_ready(p), p["metadata"]["creationTimestamp"], p["metadata"]["name"]))
    deleted: list[str] = []
    for pod in live:  # one already gone (a rollout took it meanwhile) does not count: the next one goes
        if len(deleted) == params.max_pods:
            break
        if await _delete_if_there(cluster, pod["metadata"]["name"], params.grace_period):
            deleted.append(pod["metadata"]["name"])
    output = {"deleted": deleted, "pods": len(live)}
    if not deleted:
        return StepResult(False, f"{where}: its pods were gone before they could be deleted", output)
    return StepResult(True, f"deleted {len(deleted)} of {len(live)} pod(s) of {where}: {', '.join(deleted)}", output)


ACTIONS: tuple[Action[Any], ...] = (
    Action(
        "kubernetes.workloadStatus",
        StatusParams,
        workload_status,
        "report a Deployment's or StatefulSet's desired, ready, updated and available replicas and conditions "
        "(kubectl rollout status); fails while fewer are ready than desired or Available is False",
        10.0,
        read_only=True,
    ),
    Action(
        "kubernetes.rolloutRestart",
        RestartParams,
        rollout_restart,
        "restart a Deployment's or StatefulSet's pods with a rolling update: the restartedAt annotation "
        "on the pod template, as kubectl rollout restart sets it",
        15.0,
    ),
    Action(
        "kubernetes.scale",
        ScaleParams,
        scale,
        "set or change a Deployment's or StatefulSet's replica count within min and max (kubectl scale)",
        15.0,
    ),
    Action(
        "kubernetes.podLogs",
        LogsParams,
        pod_logs,
        "read the tail of the logs of a workload's pods (or a label selector's) and count the error lines "
        "(kubectl logs)",
        20.0,
        read_only=True,
    ),
    Action(
        "kubernetes.deletePod",
        DeletePodParams,
        delete_pod,
        "delete a pod, or up to maxPods pods of a workload, so their controller replaces them (kubectl delete pod)",
        15.0,
        destructive=True,
    ),
)
