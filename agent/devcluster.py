"""
An emulated Kubernetes API on loopback, for the demo and the tests.

It is kmock's ``KubernetesEmulator`` (objects kept in memory, real HTTP, driven
by the real kubernetes-asyncio client) plus the few API-server semantics the
agent relies on and kmock lacks:
- ``metadata.resourceVersion`` bookkeeping, and 409 Conflict on a write that
  carries a stale one (the agent's optimistic concurrency);
- 201 Created on create, with ``uid`` and ``creationTimestamp`` filled in;
- faults injected on purpose (``fail(...)``): a status answered N times for a
  method and resource, to test retries and failure records; with
  ``landed=True`` the write is applied first and its answer lost (a timeout
  after the server acted);
- ``keep_requests=False`` for long runs (the demo, the bench): kmock's request
  log, which makes every request slower than the last, is dropped as it goes;
- ``writes``: every write the API server accepted (method, plural, namespace,
  name, body), in order, so a test can tell the changes that landed from the
  requests that were refused (kept only with ``keep_requests``);
- ``metadata.managedFields`` kept on updates as a real server does for an
  ``Update`` operation: the fields a write sets belong to its manager (the
  ``fieldManager`` query parameter, else the first word of the User-Agent, as
  ``kubectl-edit`` or ``argocd-controller``) and are taken from every other
  manager, so the agent can name who changed a field behind its back.

Needs the ``kmock`` package (the ``demo`` or ``dev`` extra).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml

RESOURCES = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh/v1alpha1/scaledobjects",
    ("apps/v1", "Deployment"): "apps/v1/deployments",
    ("v1", "Event"): "v1/events",
    ("v1", "Pod"): "v1/pods",
    ("v1", "Node"): "v1/nodes",
}


@dataclass
class Fault:
    method: str
    plural: str
    status: int
    times: int
    message: str = "injected fault"
    landed: bool = False  # apply the write, then answer the fault: the answer of a change that happened is lost


@dataclass(frozen=True)
class Write:
    """A write the emulated API server accepted (answered 2xx)."""

    method: str
    plural: str
    namespace: str | None
    name: str | None
    body: Any


@attrs.define(kw_only=True)
class DevCluster(kmock.KubernetesEmulator):  # type: ignore[misc]
    faults: list[Fault] = attrs.field(factory=list)
    # kmock logs every request for assertions, and matching a request walks that log: after a thousand
    # requests each one costs ~250 ms of CPU. The demo and the bench need no log, only the objects.
    keep_requests: bool = True
    writes: list[Write] = attrs.field(factory=list, init=False)
    _versions: Any = attrs.field(factory=lambda: itertools.count(1000), init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for resource in RESOURCES.values():
            self.resources[resource] = {}

    def fail(
        self, *, method: str, plural: str, status: int = 500, times: int = 1, message: str = "", landed: bool = False
    ) -> Fault:
        fault = Fault(
            method=method.upper(),
            plural=plural,
            status=status,
            times=times,
            message=message or "injected",
            landed=landed,
        )
        self.faults.append(fault)
        return fault

    def add(self, obj: Mapping[str, Any]) -> None:
        """Put an object into the cluster as if it had been created (status included)."""
        body = dict(obj)
        resource = RESOURCES[(body["apiVersion"], body["kind"])]
        meta = dict(body.get("metadata") or {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        meta["resourceVersion"] = str(next(self._versions))
        body["metadata"] = meta
        self.objects[resource, meta.get("namespace"), meta["name"]] = body

    def load(self, paths: Iterable[Path]) -> list[dict[str, Any]]:
        """Load YAML files (multi-document); objects of unknown kinds are skipped. Returns what was added."""
        added: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        for path in paths:
            for doc in yaml.safe_load_all(path.read_text()):
                if not isinstance(doc, dict) or (doc.get("apiVersion"), doc.get("kind")) not in RESOURCES:
                    continue
                key = (doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"])
                if key not in added:  # two example files may share one Deployment
                    self.add(doc)
                    added[key] = doc
        return list(added.values())

    def get(self, plural: str, namespace: str | None, name: str) -> dict[str, Any]:
        resource = next(r for r in RESOURCES.values() if r.endswith("/" + plural))
        raw: dict[str, Any] = self.objects[resource, namespace, name].raw
        return raw

    def put_status(self, plural: str, namespace: str | None, name: str, status: Mapping[str, Any]) -> None:
        """What a controller would do: change an object's status (e.g. KEDA's Paused condition)."""
        resource = next(r for r in RESOURCES.values() if r.endswith("/" + plural))
        self.objects[resource, namespace, name].patch({"status": dict(status)})

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        lost_answer: Fault | None = None
        if request.resource is not None:
            for fault in self.faults:
                if fault.times > 0 and fault.method == request.method.value and fault.plural == request.resource.plural:
                    fault.times -= 1
                    if not fault.landed:
                        raise kmock.KubernetesError(status=fault.status, reason="InjectedFault", message=fault.message)
                    lost_answer = fault
                    break
            action = request.action
            if action == kmock.action.UPDATE and request.name is not None and isinstance(request.data, dict):
                key = (request.resource, request.namespace, request.name)
                if key in self.objects and not self.objects[key].deleted:
                    stored = self.objects[key].raw.get("metadata", {}).get("resourceVersion")
                    sent = (request.data.get("metadata") or {}).get("resourceVersion")
                    if sent is not None and stored is not None and sent != stored:
                        raise kmock.KubernetesError(
                            status=409,
                            reason="Conflict",
                            message="the object has been modified; please apply your changes to the latest version",
                        )
                request.data.setdefault("metadata", {})["resourceVersion"] = str(next(self._versions))
                if key in self.objects and not self.objects[key].deleted:
                    stored_fields = self.objects[key].raw.get("metadata", {}).get("managedFields") or []
                    manager = request.params.get("fieldManager") or _agent_name(request.headers.get("User-Agent"))
                    request.data["metadata"]["managedFields"] = _manage(stored_fields, request.data, manager)
            elif action == kmock.action.CREATE and isinstance(request.data, dict):
                meta = request.data.setdefault("metadata", {})
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                meta["resourceVersion"] = str(next(self._versions))
        try:
            response: aiohttp.web.StreamResponse = await super()._handle(request)
        finally:
            if not self.keep_requests:
                self._requests.clear()
        method = request.method.value
        accepted = 200 <= response.status < 300 and method in ("PATCH", "PUT", "POST", "DELETE")
        if self.keep_requests and accepted and request.resource is not None:
            plural = request.resource.plural
            self.writes.append(Write(method, plural, request.namespace, request.name, request.data))
        if lost_answer is not None:
            raise kmock.KubernetesError(status=lost_answer.status, reason="InjectedFault", message=lost_answer.message)
        if request.action == kmock.action.CREATE and response.status == 200 and not response.prepared:
            response.set_status(201)
        return response


def _agent_name(user_agent: str | None) -> str:
    """What a real API server names a manager that gave no fieldManager: the User-Agent up to its first '/'."""
    return (user_agent or "unknown").split("/", 1)[0].split(" ", 1)[0] or "unknown"


def _field_set(body: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch's body as the FieldsV1 set it writes (``{"f:spec": {"f:minReplicaCount": {}}}``)."""
    fields: dict[str, Any] = {}
    for name, value in body.items():
        if isinstance(value, Mapping) and value:
            fields[f"f:{name}"] = _field_set(value)
        else:
            fields[f"f:{name}"] = {}
    return fields


def _without(fields: Mapping[str, Any], taken: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` less every leaf ``taken`` sets (a field has one manager)."""
    left: dict[str, Any] = {}
    for name, sub in fields.items():
        if name not in taken:
            left[name] = sub
        elif taken[name] and sub:
            rest = _without(sub, taken[name])
            if rest:
                left[name] = rest
    return left


def _merged(fields: Mapping[str, Any], more: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(fields)
    for name, sub in more.items():
        merged[name] = _merged(merged.get(name) or {}, sub) if sub else merged.get(name, {})
    return merged


def _manage(entries: list[dict[str, Any]], body: Mapping[str, Any], manager: str) -> list[dict[str, Any]]:
    """The managedFields after ``manager`` wrote ``body`` (metadata bookkeeping itself is nobody's field)."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k in ("annotations", "labels")}
    written = _field_set({**{k: v for k, v in body.items() if k != "metadata"}, **({"metadata": meta} if meta else {})})
    result: list[dict[str, Any]] = []
    for entry in entries:
        if entry.get("manager") == manager:
            continue
        left = _without(entry.get("fieldsV1") or {}, written)
        if left:
            result.append({**entry, "fieldsV1": left})
    previous = next((e.get("fieldsV1") or {} for e in entries if e.get("manager") == manager), {})
    now = datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    mine = {"manager": manager, "operation": "Update", "time": now, "fieldsType": "FieldsV1"}
    result.append({**mine, "fieldsV1": _merged(previous, written)})
    return result


def kubeconfig_for(url: str) -> dict[str, Any]:
    """A kubeconfig pointing at the emulator (plain HTTP on loopback, no credentials)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "dev", "cluster": {"server": url}}],
        "users": [{"name": "dev", "user": {}}],
        "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": "dev"}}],
        "current-context": "dev",
    }
