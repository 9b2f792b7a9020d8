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
  after the server acted); a fault for ``deployments/scale`` (or
  ``pods/eviction``) hits only that subresource, one for ``deployments`` every
  request on deployments;
- ``keep_requests=False`` for long runs (the demo, the bench): kmock's request
  log, which makes every request slower than the last, is dropped as it goes;
- ``writes``: every write the API server accepted (method, plural, namespace,
  name, body, subresource), in order, so a test can tell the changes that
  landed from the requests that were refused (kept only with ``keep_requests``);
- ``metadata.managedFields`` kept on updates as a real server does for an
  ``Update`` operation: the fields a write sets belong to its manager (the
  ``fieldManager`` query parameter, else the first word of the User-Agent, as
  ``kubectl-edit`` or ``argocd-controller``) and are taken from every other
  manager, so the agent can name who changed a field behind its back; a write
  through a subresource is its manager's own entry (``subresource: scale``),
  as the API server keeps it;
- the ``scale`` subresource of Deployments and StatefulSets answers an
  ``autoscaling/v1`` Scale and writes only the parent's ``spec.replicas``
  (merge, strategic-merge or JSON patch, or a PUT; 409 on a stale
  resourceVersion, 404 for a missing parent), the way an HPA, KEDA or
  ``kubectl scale`` changes a workload: kmock alone would answer the whole
  Deployment and merge the Scale body into it;
- ``labelSelector`` (``a=b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``,
  ``a``, ``!a``) and ``fieldSelector`` (``=``, ``==``, ``!=`` terms joined by
  commas) filter lists and watches of every resource: kmock ignores both, so a
  caller that trusted a selector it never checked would pass here and act on
  the wrong Pods or Nodes in a cluster; a field the API server does not index
  (it selects on ``metadata.name``, a namespaced kind's ``metadata.namespace``,
  and a few fields a built-in kind names, as a Pod's ``spec.nodeName`` or a
  Node's ``spec.unschedulable``) answers 400 here too, so it fails in a test
  rather than in production;
- ``watch=True`` (what kubernetes-asyncio's ``Watch`` sends) starts a watch,
  as the API server parses booleans; kmock takes only ``watch=true`` and
  would answer a list the client cannot read;
- a list answers ``metadata.resourceVersion``, the newest version of any
  change the emulator has recorded (one counter for every kind, as etcd's
  revision), taken at the same instant as its items: a list-then-watch cache
  resumes its watch from it, and kmock answers a placeholder no watch takes;
- every change (a write through the API, the scale subresource, ``add()``,
  ``put_status()``, ``change()``, ``remove()``) is kept in a bounded history
  per resource (``history_limit``, 1,000 by default), with the version it got
  (a delete gets one of its own, as in etcd): a watch from
  ``resourceVersion=N`` replays only the changes after N, so a cache that
  resumes after a dropped connection neither misses a change nor sees its
  objects ADDED again; without a version (or with ``"0"``) a watch starts with
  an ADDED for every current object, oldest first, so the Watch's own resume
  point (the last object's version) misses nothing; a direct
  ``cluster.objects[...].patch(...)`` bypasses this (no version, no event);
- ``limit`` and ``continue`` on lists (pages), every page cut from the first
  page's snapshot as a real server's are (an unknown token is 410): a
  ``/readyz`` ping with ``limit=1`` must not fetch 10,000 objects, and a cache
  lists in pages so that it never holds a whole list at once;
- a watch sees a change through its selectors as the API server's watch cache
  does: an object that starts matching arrives as ADDED, one that stops
  matching as DELETED (its last matching content, the change's version), so a
  cache filtered by a selector drops what left its selection;
- a watch from a version older than the history kept (``compact()`` drops it
  all, as an etcd compaction) answers, as a real server, a 200 stream with one
  ``ERROR`` event (a ``Status``, code 410, reason ``Expired``) and ends: the
  client must relist, the path a cache takes after a long disconnection;
- ``allowWatchBookmarks=true`` brings ``BOOKMARK`` events (only ``kind``,
  ``apiVersion`` and ``metadata.resourceVersion``): one right after the
  initial events, then every ``bookmark_interval`` seconds (1 s here; about a
  minute on a real server), so a cache on a quiet kind keeps a recent resume
  point and its resume does not fall behind a compaction;
- a watch streams until ``timeoutSeconds``, until the client goes away, or
  until ``drop_watches()`` ends every open one (as an API server restart or a
  load balancer would), so a client's reconnect can be tested; kmock streams
  forever and ignores the timeout;
- HorizontalPodAutoscalers (``autoscaling/v2``), StatefulSets and
  cluster-scoped Nodes are served like the rest; a strategic merge patch (what
  kubernetes-asyncio sends for a dict body on a built-in kind) is applied as a
  merge patch, so a list such as a Node's ``spec.taints`` is replaced whole,
  which is what the API server does for atomic lists; a Node's
  ``spec.providerID`` (the cloud's name for the machine, what a spot
  interruption notice names) is stored as any field, and a ``fieldSelector`` on
  it is a 400 as on a real server (Nodes select only on ``metadata.name`` and
  ``spec.unschedulable``): a caller must list the Nodes and match it itself;
- PodDisruptionBudgets (``policy/v1``) are served like the rest, with the
  ``status`` the disruption controller would give them, kept current at once
  (no controller loop to wait for): every change of a Pod or a budget (through
  the API, ``add()``, ``change()``, ``remove()``, an eviction) recomputes the
  budgets of its namespace, and one whose status changed is written with a new
  version (MODIFIED to its watches; a status written by hand is replaced at
  once). ``expectedPods`` is the Pods its ``spec.selector`` matches there
  (``matchLabels`` and ``matchExpressions``; ``{}`` matches every Pod, a null
  selector none), ``currentHealthy`` those with a ``Ready`` condition ``True``
  and no ``deletionTimestamp``, ``desiredHealthy`` is ``minAvailable`` (or its
  percentage of expectedPods, rounded up) or expectedPods less
  ``maxUnavailable`` (its percentage rounded up too), and
  ``disruptionsAllowed`` is currentHealthy less desiredHealthy, never below 0,
  and 0 with no expected Pods; a ``DisruptionAllowed`` condition
  (``SufficientPods``, ``InsufficientPods``, or ``SyncFailed`` for a budget it
  cannot compute) goes with it. One simplification: for ``maxUnavailable`` and
  a percentage ``minAvailable`` the real controller takes expectedPods from the
  scale of the Pods' owners (a Deployment's ``spec.replicas``), so a Pod evicted
  and not yet replaced still counts there and the next eviction is refused
  until its replacement is Ready; here it counts the Pods that exist, which
  lets a second eviction through. A test whose outcome rests on successive
  evictions gives its budget an integer ``minAvailable``, where both agree;
- the ``eviction`` subresource of Pods (``POST .../pods/NAME/eviction`` with a
  ``policy/v1`` Eviction, ``CoreV1Api.create_namespaced_pod_eviction``): how a
  node is drained without taking down what a PodDisruptionBudget protects, so
  the caller must handle its refusals as a real server gives them: 404 for a
  missing Pod; a Pod that is Pending, Succeeded, Failed or terminating goes
  without a look at any budget; a Pod two budgets cover is a 500 Status
  ("This pod has more than one PodDisruptionBudget, ..."); a Pod whose one
  budget allows no disruption is a 429 ``TooManyRequests`` Status with a
  ``DisruptionBudget`` cause ("The disruption budget NAME needs D healthy pods
  and has C currently"), which a caller retries later; a Pod that is not Ready
  passes anyway if its budget says ``unhealthyPodEvictionPolicy:
  AlwaysAllow``, or (the default, ``IfHealthyBudget``) while the budget's
  healthy Pods are at least its desired number. An eviction let through
  answers a 201 ``Status`` (``Success``); the Pod gets a ``DisruptionTarget``
  condition (MODIFIED) and is deleted (DELETED, a version of its own) at once,
  as if its kubelet had stopped it (a Pod with finalizers stays, terminating).
  ``deleteOptions.preconditions`` (uid, resourceVersion) are honoured (409),
  ``dryRun=All`` judges and changes nothing, and a body whose name is not the
  Pod's is a 400. A request is in the request log as a ``POST`` on ``pods``
  with subresource ``eviction`` (RBAC's ``create`` on ``pods/eviction``), an
  accepted one in ``writes``, and ``fail(plural="pods/eviction")`` targets it.

Needs the ``kmock`` package (the ``demo`` or ``dev`` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import re
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch  # a dependency of kmock
import kmock
import yaml

PAGED_LISTS_KEPT = 64  # paged lists whose next page may still be asked for

RESOURCES = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh/v1alpha1/scaledobjects",
    ("apps/v1", "Deployment"): "apps/v1/deployments",
    ("apps/v1", "StatefulSet"): "apps/v1/statefulsets",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "autoscaling/v2/horizontalpodautoscalers",
    ("v1", "Event"): "v1/events",
    ("v1", "Pod"): "v1/pods",
    ("v1", "Node"): "v1/nodes",
    ("policy/v1", "PodDisruptionBudget"): "policy/v1/poddisruptionbudgets",
}
# The resource of each plural (``get("deployments", ...)``): one resource a plural, by its last path segment.
PLURALS = {resource.rsplit("/", 1)[1]: resource for resource in RESOURCES.values()}
KINDS = {resource.rsplit("/", 1)[1]: key for key, resource in RESOURCES.items()}  # plural: (apiVersion, kind)
CLUSTER_SCOPED = frozenset({"nodes"})
GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})  # what strconv.ParseBool reads as true
SCALABLE = frozenset({"deployments", "statefulsets"})  # the kinds whose scale subresource is served
BUDGETS = "poddisruptionbudgets"
TARGET = "DisruptionTarget"  # the condition the API server gives a Pod it evicts
STATUS = {"kind": "Status", "apiVersion": "v1", "metadata": {}}  # what an eviction answers (with status and code)
MANY_BUDGETS = "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."

# The fields besides metadata.name (and metadata.namespace, for namespaced kinds) a real API server selects on,
# by kind: each field's path in the object and the value it selects by when the object leaves it unset.
FIELD_LABELS: dict[str, dict[str, tuple[str, str]]] = {
    "pods": {
        "spec.nodeName": ("spec.nodeName", ""),
        "spec.restartPolicy": ("spec.restartPolicy", ""),
        "spec.schedulerName": ("spec.schedulerName", ""),
        "spec.serviceAccountName": ("spec.serviceAccountName", ""),
        "spec.hostNetwork": ("spec.hostNetwork", "false"),
        "status.phase": ("status.phase", ""),
        "status.podIP": ("status.podIP", ""),
        "status.nominatedNodeName": ("status.nominatedNodeName", ""),
    },
    "nodes": {"spec.unschedulable": ("spec.unschedulable", "false")},
    "events": {
        **{
            f"involvedObject.{f}": (f"involvedObject.{f}", "")
            for f in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
        },
        "reason": ("reason", ""),
        "reportingComponent": ("reportingComponent", ""),
        "source": ("source.component", ""),
        "type": ("type", ""),
    },
}


@dataclass
class Fault:
    method: str
    plural: str  # "deployments" (any request on them) or "deployments/scale", "pods/eviction" (that subresource only)
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
    subresource: str | None = None  # "scale" through /scale (the body a Scale), "eviction" (the body an Eviction)


@dataclass(frozen=True)
class Change:
    """One change of one object, as a watch replays it."""

    version: int
    type: str  # ADDED, MODIFIED or DELETED
    object: dict[str, Any]  # the object after the change (before it, for DELETED), with the change's version
    previous: dict[str, Any] | None  # the object before the change, when known (what a selector matched then)


@dataclass
class _Feed:
    """
    What kmock's handlers put their watch events into (in place of its buses): each event is recorded in the
    cluster's history at once, in the same step as the change it tells, so no list or watch sees one without
    the other.
    """

    resource: Any
    record: Callable[[Any, str, Mapping[str, Any]], None]

    async def put(self, *events: Mapping[str, Any]) -> None:
        for event in events:
            self.record(self.resource, str(event["type"]), event["object"])


class _Feeds(dict[Any, _Feed]):
    def __init__(self, record: Callable[[Any, str, Mapping[str, Any]], None]) -> None:
        super().__init__()
        self._record = record

    def __missing__(self, resource: Any) -> _Feed:
        feed = self[resource] = _Feed(resource, self._record)
        return feed


WATCH_POLL = 0.5  # seconds: how soon an idle watch notices that its client went away


@attrs.define(kw_only=True)
class DevCluster(kmock.KubernetesEmulator):  # type: ignore[misc]
    faults: list[Fault] = attrs.field(factory=list)
    # kmock logs every request for assertions, and matching a request walks that log: after a thousand
    # requests each one costs ~250 ms of CPU. The demo and the bench need no log, only the objects.
    keep_requests: bool = True
    history_limit: int = 1000  # changes kept per resource for watches that resume from a resourceVersion
    bookmark_interval: float = 1.0  # seconds between BOOKMARK events (to watches that allow them)
    writes: list[Write] = attrs.field(factory=list, init=False)
    watching: int = attrs.field(default=0, init=False)  # watch streams open now
    _versions: Any = attrs.field(factory=lambda: itertools.count(1000), init=False)
    _recorded: int = attrs.field(default=999, init=False)  # the newest version of a recorded change
    _history: dict[str, deque[Change]] = attrs.field(factory=dict, init=False)  # by plural, oldest first
    _dropped: dict[str, int] = attrs.field(factory=dict, init=False)  # by plural: the newest change dropped
    _compacted: int = attrs.field(default=0, init=False)  # a watch may not start from an older version
    _last_seen: dict[tuple[str, str | None, str], dict[str, Any]] = attrs.field(factory=dict, init=False)
    _changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)  # replaced once set
    _drops: int = attrs.field(default=0, init=False)  # drop_watches() calls so far
    _pages: dict[str, tuple[str, list[Any]]] = attrs.field(factory=dict, init=False)  # continue token → the rest
    _page_ids: Any = attrs.field(factory=itertools.count, init=False)
    _syncing: bool = attrs.field(default=False, init=False)  # the budgets' statuses are being written

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for resource in RESOURCES.values():
            self.resources[resource] = {}
        self._buses = _Feeds(self._record)  # type: ignore[misc]  # kmock's handlers tell their changes to the history

    @property
    def resource_version(self) -> str:
        """The collection's current version, as a list answers it."""
        return str(self._recorded)

    def compact(self) -> None:
        """Drop the change history, as an etcd compaction: a watch from any older version answers 410 Expired."""
        for plural, history in self._history.items():
            if history:
                self._dropped[plural] = history[-1].version
                history.clear()
        self._compacted = self._recorded
        self._wake()

    def drop_watches(self) -> int:
        """End every open watch stream (as an API server restart would); returns how many were open."""
        self._drops += 1
        self._wake()
        return self.watching

    def changes(self, plural: str) -> list[Change]:
        """The changes kept for a resource, oldest first (what a watch from an old enough version replays)."""
        return list(self._history.get(plural, ()))

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
        """
        Put an object into the cluster as if it had been created (status included); one that exists is replaced.
        Watches see it ADDED (MODIFIED for a replaced one).
        """
        body = dict(obj)
        resource = kmock.resource(RESOURCES[(body["apiVersion"], body["kind"])])  # a key the objects hash alike
        meta = dict(body.get("metadata") or {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta["resourceVersion"] = str(next(self._versions))
        body["metadata"] = meta
        key = (resource, meta.get("namespace"), meta["name"])
        existed = key in self.objects and not self.objects[key].deleted
        self.objects[key] = body
        self._record(resource, "MODIFIED" if existed else "ADDED", body)

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
        raw: dict[str, Any] = self.objects[PLURALS[plural], namespace, name].raw
        return raw

    def put_status(self, plural: str, namespace: str | None, name: str, status: Mapping[str, Any]) -> None:
        """What a controller would do: change an object's status (e.g. KEDA's Paused condition)."""
        self.change(plural, namespace, name, {"status": dict(status)})

    def change(self, plural: str, namespace: str | None, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """
        Change an object behind the API (someone else's write): ``patch`` is merged into it (``None`` removes a
        key), with a new resourceVersion, and watches see it MODIFIED. Returns the object after the change.
        """
        resource = kmock.resource(PLURALS[plural])
        obj = self.objects[resource, namespace, name]
        if obj.deleted:
            raise KeyError(f"{plural} {namespace}/{name} is deleted")
        meta = {**(patch.get("metadata") or {}), "resourceVersion": str(next(self._versions))}
        obj.patch({**patch, "metadata": meta})
        self._record(resource, "MODIFIED", obj.raw)
        return self.get(plural, namespace, name)

    def remove(self, plural: str, namespace: str | None, name: str) -> None:
        """Delete an object behind the API (finalizers ignored); watches see it DELETED."""
        resource = kmock.resource(PLURALS[plural])
        obj = self.objects[resource, namespace, name]
        if obj.deleted:
            raise KeyError(f"{plural} {namespace}/{name} is deleted")
        last = obj.raw
        obj.delete()
        self._record(resource, "DELETED", last)

    def _record(self, resource: Any, kind: str, obj: Mapping[str, Any]) -> None:
        """
        Keep a change in its resource's history and wake the watches. A change whose object carries no version
        newer than every recorded one (a delete, kmock's own deletionTimestamp, a write that lost a race for the
        lock) gets a new one here, in the stored object too, so the versions in a history only grow.
        """
        plural = str(resource.plural)
        body = copy.deepcopy(dict(obj))
        meta = body["metadata"] = dict(body.get("metadata") or {})
        key = (plural, meta.get("namespace"), str(meta.get("name")))
        version = _version(meta.get("resourceVersion"))
        if kind == "DELETED" or version is None or version <= self._recorded:
            version = next(self._versions)
            meta["resourceVersion"] = str(version)
            stored_key = (resource, key[1], key[2])
            if kind != "DELETED" and stored_key in self.objects and not self.objects[stored_key].deleted:
                self.objects[stored_key].patch({"metadata": {"resourceVersion": str(version)}})
        if kind == "DELETED":
            previous = self._last_seen.pop(key, None)
        else:
            previous = self._last_seen.get(key)
            self._last_seen[key] = body
        self._recorded = version
        history = self._history.setdefault(plural, deque())
        history.append(Change(version, kind, body, previous))
        while len(history) > max(self.history_limit, 0):
            self._dropped[plural] = history.popleft().version
        self._wake()
        if plural in ("pods", BUDGETS) and not self._syncing:  # what the disruption controller watches
            self._sync_budgets(key[1])

    def _budget_keys(self, namespace: str | None) -> list[Any]:
        """The keys of the PodDisruptionBudgets of a namespace (in ``objects``)."""
        budgets = kmock.resource(PLURALS[BUDGETS])
        return [
            key for key, obj in self.objects.items() if key[0] == budgets and key[1] == namespace and not obj.deleted
        ]

    def _pods_of(self, namespace: str | None) -> list[dict[str, Any]]:
        pods = kmock.resource(PLURALS["pods"])
        return [
            obj.raw for key, obj in self.objects.items() if key[0] == pods and key[1] == namespace and not obj.deleted
        ]

    def _sync_budgets(self, namespace: str | None) -> None:
        """
        The disruption controller, at once: every PodDisruptionBudget of the namespace gets the status the pods
        there give it now (:func:`_budget_status`); one whose status changed is written with a new version, and
        its watches see it MODIFIED.
        """
        keys = self._budget_keys(namespace)
        if not keys:
            return
        pods = self._pods_of(namespace)
        self._syncing = True  # the budgets' own changes below need no second sync
        try:
            for key in keys:
                obj = self.objects[key]
                old = obj.raw.get("status") or {}
                status = _budget_status(obj.raw, pods)
                if status != old:
                    gone = {name: None for name in old if name not in status}  # the status is replaced whole
                    obj.patch({"status": {**gone, **status}})
                    self._record(key[0], "MODIFIED", obj.raw)
        finally:
            self._syncing = False

    def _wake(self) -> None:
        """Wake every watch waiting for a change (each waits on the event it saw before looking)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        try:
            return await self._serve(request)
        finally:
            if not self.keep_requests:
                self._requests.clear()

    async def _serve(self, request: Any) -> aiohttp.web.StreamResponse:
        if request.action in (kmock.action.LIST, kmock.action.FETCH) and request.params.get("watch") in GO_TRUE:
            # kubernetes-asyncio's Watch asks ``watch=True``: the API server reads it as Go reads a boolean,
            # kmock only as "true" (and would answer a list the Watch cannot parse). The request is frozen.
            object.__setattr__(request, "action", kmock.action.WATCH)
        lost_answer: Fault | None = None
        if request.resource is not None:
            plural = request.resource.plural
            targets = {plural, f"{plural}/{request.subresource}"} if request.subresource else {plural}
            for fault in self.faults:
                if fault.times > 0 and fault.method == request.method.value and fault.plural in targets:
                    fault.times -= 1
                    if not fault.landed:
                        raise kmock.KubernetesError(status=fault.status, reason="InjectedFault", message=fault.message)
                    lost_answer = fault
                    break
        if request.resource is not None and request.name is not None and request.subresource == "scale":
            response: aiohttp.web.StreamResponse = await self._serve_scale(request)
        elif request.resource is not None and request.name is not None and request.subresource == "eviction":
            response = await self._serve_eviction(request)
        else:
            self._bookkeep(request)
            response = await super()._handle(request)
        method = request.method.value
        accepted = 200 <= response.status < 300 and method in ("PATCH", "PUT", "POST", "DELETE")
        if request.subresource == "eviction" and _dry_run(request):
            accepted = False  # judged, not applied
        if self.keep_requests and accepted and request.resource is not None:
            plural = request.resource.plural
            write = Write(method, plural, request.namespace, request.name, request.data, request.subresource)
            self.writes.append(write)
        if lost_answer is not None:
            raise kmock.KubernetesError(status=lost_answer.status, reason="InjectedFault", message=lost_answer.message)
        if request.action == kmock.action.CREATE and response.status == 200 and not response.prepared:
            response.set_status(201)
        return response

    def _bookkeep(self, request: Any) -> None:
        """What the API server adds to a create or an update (kmock's own handler then stores the object)."""
        if request.resource is None:
            return
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
                manager = _manager(request)
                fields = _manage(stored_fields, request.data, manager, request.subresource)
                request.data["metadata"]["managedFields"] = fields
        elif action in (kmock.action.LIST, kmock.action.WATCH):
            _selection(request)  # a selector the server cannot read is refused before anything is answered
        elif action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta["resourceVersion"] = str(next(self._versions))

    async def _serve_scale(self, request: Any) -> aiohttp.web.StreamResponse:
        """The scale subresource: a Scale view of the parent, and writes of the parent's spec.replicas only."""
        resource = request.resource
        plural, group, name = resource.plural, resource.group, request.name
        if plural not in SCALABLE:
            raise kmock.KubernetesError(
                status=404, reason="NotFound", message="the server could not find the requested resource"
            )
        method = request.method.value
        if method not in ("GET", "PATCH", "PUT"):
            raise kmock.KubernetesError(
                status=405, reason="MethodNotAllowed", message=f"the server does not allow {method} on scale"
            )
        qualified = f"{plural}.{group}" if group else plural
        key = (resource, request.namespace, name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                raise kmock.KubernetesError(status=404, reason="NotFound", message=f'{qualified} "{name}" not found')
            parent = self.objects[key]
            current = _scale_of(parent.raw)
            if method == "GET":
                return aiohttp.web.json_response(current)
            wanted = _scale_written(request, current)
            stored = current["metadata"].get("resourceVersion")
            sent = (wanted.get("metadata") or {}).get("resourceVersion")
            if sent is not None and stored is not None and sent != stored:
                raise kmock.KubernetesError(
                    status=409,
                    reason="Conflict",
                    message=f'Operation cannot be fulfilled on {qualified} "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again",
                )
            replicas = (wanted.get("spec") or {}).get("replicas")
            replicas = 0 if replicas is None else replicas  # a Scale without replicas asks for 0, as in Go
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise kmock.KubernetesError(
                    status=422,
                    reason="Invalid",
                    message=f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: {replicas!r}: '
                    "must be greater than or equal to 0",
                )
            written = {"spec": {"replicas": replicas}}
            stored_fields = parent.raw.get("metadata", {}).get("managedFields") or []
            fields = _manage(stored_fields, written, _manager(request), "scale")
            version = str(next(self._versions))
            parent.patch({**written, "metadata": {"resourceVersion": version, "managedFields": fields}})
            await self._buses[resource].put({"type": "MODIFIED", "object": parent.raw})
            return aiohttp.web.json_response(_scale_of(parent.raw))

    async def _serve_eviction(self, request: Any) -> aiohttp.web.StreamResponse:
        """
        The eviction subresource of a Pod (the API server's EvictionREST): a delete that the Pod's
        PodDisruptionBudget may refuse. A Pod that is Pending, Succeeded, Failed or already terminating goes
        without a look at any budget; one covered by two budgets or more is a 500; one whose budget allows no
        disruption is a 429 (unless it is not Ready and the budget lets it go: ``unhealthyPodEvictionPolicy:
        AlwaysAllow``, or the default ``IfHealthyBudget`` with the budget's healthy pods at its desired count);
        otherwise it gets a ``DisruptionTarget`` condition (MODIFIED) and is deleted (DELETED), and the answer
        is a 201 Status. ``dryRun=All`` (or in ``deleteOptions``) judges and changes nothing.
        """
        resource, namespace, name = request.resource, request.namespace, request.name
        if resource.plural != "pods" or resource.group:
            raise kmock.KubernetesError(
                status=404, reason="NotFound", message="the server could not find the requested resource"
            )
        method = request.method.value
        if method != "POST":
            raise kmock.KubernetesError(
                status=405, reason="MethodNotAllowed", message=f"the server does not allow {method} on eviction"
            )
        body = request.data
        if not isinstance(body, dict) or body.get("kind", "Eviction") != "Eviction":
            kind = body.get("kind") if isinstance(body, dict) else type(body).__name__
            raise kmock.KubernetesError(status=400, reason="BadRequest", message=f"not a Eviction object: {kind}")
        meta = body.get("metadata") or {}
        if meta.get("namespace") not in (None, "", namespace):
            raise kmock.KubernetesError(
                status=400,
                reason="BadRequest",
                message="the namespace of the provided object does not match the namespace sent on the request",
            )
        if meta.get("name") != name:
            raise kmock.KubernetesError(
                status=400, reason="BadRequest", message="name in URL does not match name in Eviction object"
            )
        options = body.get("deleteOptions") or {}
        if not isinstance(options, dict):
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="deleteOptions: must be an object")
        key = (resource, namespace, name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                raise kmock.KubernetesError(status=404, reason="NotFound", message=f'pods "{name}" not found')
            pod = self.objects[key].raw
            if not _budgets_ignored(pod):
                self._sync_budgets(namespace)  # statuses as of now, whatever changed objects behind the history
                budgets = [self.objects[k].raw for k in self._budget_keys(namespace)]
                covering = [budget for budget in budgets if _covers(budget, pod)]
                if len(covering) > 1:  # the real server answers this Status as it is, with no reason
                    failure = {"status": "Failure", "message": MANY_BUDGETS, "code": 500}
                    return aiohttp.web.json_response({**STATUS, **failure}, status=500)
                if covering:
                    _judge(covering[0], pod)
            _check_preconditions(pod, options)
            if not _dry_run(request):
                self._evict(key)
        return aiohttp.web.json_response({**STATUS, "status": "Success", "code": 201}, status=201)

    def _evict(self, key: Any) -> None:
        """Delete an evicted Pod: its DisruptionTarget condition first, as the API server adds it, then the Pod."""
        resource = key[0]
        obj = self.objects[key]
        meta = obj.raw.get("metadata") or {}
        if not meta.get("deletionTimestamp"):
            conditions = [c for c in (obj.raw.get("status") or {}).get("conditions") or [] if c.get("type") != TARGET]
            condition = {"type": TARGET, "status": "True", "reason": "EvictionByEvictionAPI"}
            condition.update({"message": "Eviction API: evicting", "lastTransitionTime": _now()})
            obj.patch({"status": {"conditions": [*conditions, condition]}})
            self._record(resource, "MODIFIED", obj.raw)  # a version of its own
        if meta.get("finalizers"):  # it stays, terminating, until its finalizers are removed
            if not meta.get("deletionTimestamp"):
                obj.patch({"metadata": {"deletionTimestamp": _now(), "deletionGracePeriodSeconds": 0}})
                self._record(resource, "MODIFIED", obj.raw)
            return
        last = obj.raw
        obj.delete()
        self._record(resource, "DELETED", last)

    def _known(self, request: Any) -> None:
        if not any(resource == request.resource for resource in self._get_resources()):
            raise kmock.KubernetesError(
                status=404, reason="NotFound", message="the server could not find the requested resource"
            )

    def _visible(self, request: Any) -> Selected:
        """What a list or a watch answers: its namespace (all, for none), its name if any, its selectors."""
        selected = _selection(request)

        def visible(obj: Mapping[str, Any]) -> bool:
            meta = obj.get("metadata") or {}
            if request.namespace is not None and meta.get("namespace") != request.namespace:
                return False
            return (request.name is None or meta.get("name") == request.name) and selected(obj)

        return visible

    def _current(self, request: Any, visible: Selected) -> list[dict[str, Any]]:
        """The objects a list answers now, oldest version first."""
        items = [
            obj.raw
            for (resource, _, _), obj in self.objects.items()
            if resource == request.resource and not obj.deleted and visible(obj.raw)
        ]
        return sorted(items, key=lambda item: _version((item.get("metadata") or {}).get("resourceVersion")) or 0)

    async def _serve_list(self, request: Any) -> Any:
        self._known(request)
        visible = self._visible(request)
        # No await from here: the items and the version are one instant (every change is recorded in the step
        # that makes it), so a watch from this version misses nothing and repeats nothing.
        limit = _version(request.params.get("limit") or "0", what="limit")
        token = request.params.get("continue")
        if token:
            # A later page: the rest of the snapshot the first page was cut from, as a real server serves it
            # (every page as of the first page's resourceVersion). An unknown token is a 410, as an expired one.
            snapshot = self._pages.pop(token, None)
            if snapshot is None:
                raise kmock.KubernetesError(status=410, reason="Expired", message="the continue token has expired")
            version, items = snapshot
        else:
            version, items = self.resource_version, self._current(request, visible)
        metadata: dict[str, Any] = {"resourceVersion": version}
        if limit and len(items) > limit:
            rest, items = items[limit:], items[:limit]
            token = f"{version}-{next(self._page_ids)}"
            self._pages[token] = (version, rest)
            while len(self._pages) > PAGED_LISTS_KEPT:  # clients that never asked for their next page
                self._pages.pop(next(iter(self._pages)))
            metadata.update({"continue": token, "remainingItemCount": len(rest)})
        payload: dict[str, Any] = {"metadata": metadata, "items": items}
        api_version, kind = KINDS.get(request.resource.plural, (None, None))
        if kind is not None:
            payload = {"apiVersion": api_version, "kind": f"{kind}List", **payload}
        return payload

    async def _serve_watch(self, request: Any) -> AsyncIterator[Any]:
        self._known(request)
        visible = self._visible(request)
        params = request.params
        since = _version(params.get("resourceVersion") or "0", what="resourceVersion")
        timeout = _version(params.get("timeoutSeconds") or "0", what="timeoutSeconds")
        bookmarks = params.get("allowWatchBookmarks") in GO_TRUE
        plural = request.resource.plural
        group, version = request.resource.group, request.resource.version
        api_version, kind = KINDS.get(plural, (f"{group}/{version}" if group else version, plural.capitalize()))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        drops = self._drops
        self.watching += 1
        try:
            yield b""  # the headers go now: a quiet watch is still a watch
            if not since:  # no version, or "0": the current objects first, then their changes
                last = self._recorded
                for item in self._current(request, visible):
                    yield {"type": "ADDED", "object": copy.deepcopy(item)}
            else:
                last = since
                oldest = max(self._compacted, self._dropped.get(plural, 0))
                if since < oldest:
                    yield _expired(since, oldest)
                    return
            next_bookmark = loop.time() if bookmarks else None  # one right after the initial events
            # Until the timeout (checked between events too, so a busy kind does not keep it open), a drop, or
            # the client's going away.
            while self._drops == drops and not _gone(request) and (deadline is None or loop.time() < deadline):
                if last < self._dropped.get(plural, 0):  # changes it had not seen yet were dropped meanwhile
                    yield _expired(last, self._dropped[plural])
                    return
                changed = self._changed  # taken before looking: a change after the look sets it
                pending = [change for change in self._history.get(plural, ()) if change.version > last]
                if pending:
                    for change in pending:
                        last = change.version
                        event = _seen_as(change, visible)
                        if event is not None:
                            yield event
                    continue
                now = loop.time()
                if next_bookmark is not None and now >= next_bookmark:
                    last = max(last, self._recorded)  # every change of this resource up to here was sent
                    marker = {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": str(last)}}
                    yield {"type": "BOOKMARK", "object": marker}
                    next_bookmark = loop.time() + self.bookmark_interval
                    continue
                wake = min(t for t in (deadline, next_bookmark, now + WATCH_POLL) if t is not None)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), max(wake - now, 0.0))
        finally:
            self.watching -= 1


def _now() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- watches --------------------------------------------------------------------------------------------------


def _version(text: Any, *, what: str = "") -> int | None:
    """A resourceVersion (or a count of seconds) as a number; None, or 400 when ``what`` names a parameter."""
    try:
        number = int(str(text))
        if number < 0:
            raise ValueError(text)
        return number
    except (TypeError, ValueError):
        if not what:
            return None
        raise kmock.KubernetesError(
            status=400, reason="BadRequest", message=f"{what}: Invalid value: {text!r}: must be a number"
        ) from None


def _expired(since: int, oldest: int) -> dict[str, Any]:
    """The event a real API server streams for a watch from a version older than it keeps."""
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {since} ({oldest})",
        "reason": "Expired",
        "code": 410,
    }
    return {"type": "ERROR", "object": status}


def _seen_as(change: Change, visible: Selected) -> dict[str, Any] | None:
    """
    A change as a watch with these selectors sees it (the API server's watch cache): an object that starts
    matching is ADDED, one that stops matching is DELETED with its last content, one never seen is nothing.
    """
    if change.type == "DELETED":
        return {"type": "DELETED", "object": change.object} if visible(change.object) else None
    now = visible(change.object)
    if change.type == "ADDED" or change.previous is None:  # an object changed behind the history: as it is now
        before = now and change.type != "ADDED"
    else:
        before = visible(change.previous)
    if now:
        return {"type": "MODIFIED" if before else "ADDED", "object": change.object}
    if before:
        assert change.previous is not None
        last = copy.deepcopy(change.previous)
        last["metadata"]["resourceVersion"] = str(change.version)
        return {"type": "DELETED", "object": last}
    return None


def _gone(request: Any) -> bool:
    """Whether the client of a streaming request has gone away."""
    raw = getattr(request, "_raw_request", None)
    transport = getattr(raw, "transport", None)
    return raw is not None and (transport is None or transport.is_closing())


def _manager(request: Any) -> str:
    return str(request.params.get("fieldManager") or _agent_name(request.headers.get("User-Agent")))


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


def _manage(
    entries: list[dict[str, Any]], body: Mapping[str, Any], manager: str, subresource: str | None = None
) -> list[dict[str, Any]]:
    """
    The managedFields after ``manager`` wrote ``body`` (metadata bookkeeping itself is nobody's field). A write
    through a subresource is an entry of its own, as the API server keys entries by manager and subresource.
    """
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k in ("annotations", "labels")}
    written = _field_set({**{k: v for k, v in body.items() if k != "metadata"}, **({"metadata": meta} if meta else {})})

    def mine(entry: Mapping[str, Any]) -> bool:
        return entry.get("manager") == manager and entry.get("subresource") == subresource

    result: list[dict[str, Any]] = []
    for entry in entries:
        if mine(entry):
            continue
        left = _without(entry.get("fieldsV1") or {}, written)
        if left:
            result.append({**entry, "fieldsV1": left})
    previous = next((e.get("fieldsV1") or {} for e in entries if mine(e)), {})
    entry = {"manager": manager, "operation": "Update", "time": _now(), "fieldsType": "FieldsV1"}
    if subresource is not None:
        entry["subresource"] = subresource
    result.append({**entry, "fieldsV1": _merged(previous, written)})
    return result


# --- the scale subresource ------------------------------------------------------------------------------------


def _scale_of(parent: Mapping[str, Any]) -> dict[str, Any]:
    """The autoscaling/v1 Scale a real API server answers for a Deployment or a StatefulSet."""
    meta = parent.get("metadata") or {}
    spec = parent.get("spec") or {}
    status = parent.get("status") or {}
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta
        },
        "spec": {"replicas": spec.get("replicas", 1)},  # the API server defaults an unset spec.replicas to 1
        "status": {"replicas": status.get("replicas", 0), "selector": _selector_text(spec.get("selector"))},
    }


def _scale_written(request: Any, current: dict[str, Any]) -> dict[str, Any]:
    """The Scale a PATCH or a PUT on the scale subresource asks for."""
    body = request.data
    if request.method.value == "PUT":
        if not isinstance(body, dict):
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="the body of a PUT must be a Scale")
        named = (body.get("metadata") or {}).get("name")
        if named is not None and named != request.name:
            raise kmock.KubernetesError(
                status=400,
                reason="BadRequest",
                message=f"the name of the object ({named}) does not match the name on the URL ({request.name})",
            )
        return body
    if isinstance(body, list):  # application/json-patch+json (what kubernetes-asyncio sends for a list body)
        try:
            patched: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(current), body)
        except Exception as error:  # a failed "test", a bad path or operation
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(error)) from None
        return patched
    if isinstance(body, dict):  # merge or strategic merge patch: the same on a Scale (no lists)
        merged: dict[str, Any] = _merge_patch(current, body)
        return merged
    raise kmock.KubernetesError(status=400, reason="BadRequest", message="the body of a PATCH must be JSON")


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge key by key, ``None`` removes a key, anything else (lists too) replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _selector_text(selector: Mapping[str, Any] | None) -> str:
    """A LabelSelector as the API server prints it: requirements sorted by key (``app=web,tier in (a,b)``)."""
    if not selector:
        return ""
    terms: list[tuple[str, str]] = [(k, f"{k}={v}") for k, v in (selector.get("matchLabels") or {}).items()]
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key", ""), expression.get("operator")
        values = ",".join(sorted(expression.get("values") or []))
        text = {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})", "DoesNotExist": f"!{key}"}
        terms.append((key, text.get(operator, key)))  # Exists: the bare key
    return ",".join(text for _, text in sorted(terms, key=lambda term: term[0]))


# --- disruption budgets and evictions ---------------------------------------------------------------------------


def _label_selector(selector: Any) -> Selected | None:
    """
    A LabelSelector (``matchLabels``, ``matchExpressions``) as a test of an object's labels, as Go's
    ``LabelSelectorAsSelector``: a null one selects nothing (None), ``{}`` every object, and an invalid one (an
    unknown operator, ``In`` without values, ``Exists`` with some) is a ValueError.
    """
    if not isinstance(selector, Mapping):
        return None
    requirements = [(str(k), "=", frozenset({str(v)})) for k, v in (selector.get("matchLabels") or {}).items()]
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = frozenset(str(v) for v in expression.get("values") or [])
        op = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}.get(operator)
        if not key or op is None or (op in ("in", "notin")) != bool(values):
            raise ValueError(f"invalid label selector requirement: {expression!r}")
        requirements.append((str(key), op, values))

    def selected(obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(_holds(labels, *requirement) for requirement in requirements)

    return selected


def _covers(budget: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    """Whether a PodDisruptionBudget covers a Pod of its namespace (an invalid selector covers none, as in Go)."""
    try:
        selected = _label_selector((budget.get("spec") or {}).get("selector"))
    except ValueError:
        return False
    return selected is not None and selected(pod)


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _healthy(pod: Mapping[str, Any]) -> bool:
    """What the disruption controller counts as healthy: Ready, and not terminating."""
    return _ready(pod) and not (pod.get("metadata") or {}).get("deletionTimestamp")


def _scaled(value: Any, total: int) -> int:
    """An IntOrString (``2`` or ``"50%"``) of a total, a percentage rounded up (GetScaledValueFromIntOrPercent)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ValueError("invalid value for IntOrString: invalid type: neither int nor percentage")
    if not value.endswith("%"):
        raise ValueError("invalid value for IntOrString: invalid type: string is not a percentage")
    if re.fullmatch(r"[+-]?[0-9]+", value[:-1]) is None:
        raise ValueError(f"invalid value for IntOrString: invalid value {value!r}")
    return -(-int(value[:-1]) * total // 100)


def _budget_status(budget: Mapping[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    """
    The status the disruption controller gives a PodDisruptionBudget over the Pods of its namespace:
    ``expectedPods`` the Pods its selector matches, ``currentHealthy`` those Ready and not terminating,
    ``desiredHealthy`` from ``minAvailable`` (a count, or a percentage of expectedPods rounded up) or
    ``maxUnavailable`` (expectedPods less it, a percentage rounded up; it wins over minAvailable), and
    ``disruptionsAllowed`` currentHealthy less desiredHealthy, never below 0, and 0 with no expected Pods (or
    neither field). One the controller cannot compute (an invalid selector, a count that is neither an integer
    nor a percentage) allows no disruption and says why (condition reason ``SyncFailed``).
    """
    spec = budget.get("spec") or {}
    old = budget.get("status") or {}
    generation = (budget.get("metadata") or {}).get("generation")
    try:
        selected = _label_selector(spec.get("selector"))
        matched = [pod for pod in pods if selected is not None and selected(pod)]
        expected = len(matched) if spec.get("maxUnavailable") is not None or spec.get("minAvailable") is not None else 0
        if spec.get("maxUnavailable") is not None:
            desired = max(expected - _scaled(spec["maxUnavailable"], expected), 0)
        elif spec.get("minAvailable") is not None:
            desired = _scaled(spec["minAvailable"], expected)
        else:
            desired = 0
    except ValueError as error:  # the controller's fail-safe: the counts it had, and no disruption
        counts = ("currentHealthy", "desiredHealthy", "expectedPods")
        status: dict[str, Any] = {name: int(old.get(name) or 0) for name in counts}
        status["disruptionsAllowed"] = 0
        condition = ("False", "SyncFailed", str(error))
    else:
        healthy = sum(1 for pod in matched if _healthy(pod))
        allowed = max(healthy - desired, 0) if expected > 0 else 0
        status = {"currentHealthy": healthy, "desiredHealthy": desired, "expectedPods": expected}
        status["disruptionsAllowed"] = allowed
        condition = ("True", "SufficientPods", "") if allowed > 0 else ("False", "InsufficientPods", "")
    if generation is not None:
        status["observedGeneration"] = generation
    state, reason, message = condition
    conditions = [dict(c) for c in old.get("conditions") or [] if c.get("type") != "DisruptionAllowed"]
    before: Mapping[str, Any] = next(
        (c for c in old.get("conditions") or [] if c.get("type") == "DisruptionAllowed"), {}
    )
    changed = before.get("status") != state  # the transition time moves only with the status, as Go's
    allowing = {"type": "DisruptionAllowed", "status": state, "reason": reason, "message": message}
    allowing["lastTransitionTime"] = _now() if changed else before.get("lastTransitionTime", _now())
    if generation is not None:
        allowing["observedGeneration"] = generation
    status["conditions"] = [*conditions, allowing]
    return status


def _budgets_ignored(pod: Mapping[str, Any]) -> bool:
    """
    A Pod the eviction subresource deletes without a look at any budget (Go's canIgnorePDB): Pending,
    Succeeded, Failed, or terminating. A Pod stored without a phase is judged as a running one (a real Pod
    always has one), so a fixture that forgot it gets the stricter answer.
    """
    phase = (pod.get("status") or {}).get("phase")
    return phase in ("Pending", "Succeeded", "Failed") or bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def _judge(budget: Mapping[str, Any], pod: Mapping[str, Any]) -> None:
    """Whether the one budget that covers a Pod lets it be evicted: returns if so, a 429 if not."""
    status = budget.get("status") or {}
    current, desired = int(status.get("currentHealthy") or 0), int(status.get("desiredHealthy") or 0)
    if not _ready(pod):  # it counts for nothing in the budget
        if (budget.get("spec") or {}).get("unhealthyPodEvictionPolicy") == "AlwaysAllow":
            return
        if current >= desired > 0:  # IfHealthyBudget (the default): when the application is not disrupted
            return
    if int(status.get("disruptionsAllowed") or 0) > 0:
        return
    name = (budget.get("metadata") or {}).get("name")
    cause = {
        "reason": "DisruptionBudget",
        "message": f"The disruption budget {name} needs {desired} healthy pods and has {current} currently",
    }
    raise kmock.KubernetesError(
        status=429,
        reason="TooManyRequests",
        message="Cannot evict pod as it would violate the pod's disruption budget.",
        details={"causes": [cause]},
    )


def _check_preconditions(pod: Mapping[str, Any], options: Mapping[str, Any]) -> None:
    """An Eviction's ``deleteOptions.preconditions`` (uid, resourceVersion): 409 when the Pod is not that one."""
    preconditions = options.get("preconditions") or {}
    meta = pod.get("metadata") or {}
    name = meta.get("name")
    uid, version = preconditions.get("uid"), preconditions.get("resourceVersion")
    if uid and uid != meta.get("uid"):
        why = f"the UID in the precondition ({uid}) does not match the UID in record ({meta.get('uid')}). "
        why += "The object might have been deleted and then recreated"
    elif version and version != meta.get("resourceVersion"):
        why = f"the ResourceVersion in the precondition ({version}) does not match the ResourceVersion in record "
        why += f"({meta.get('resourceVersion')}). The object might have been modified"
    else:
        return
    message = f'Operation cannot be fulfilled on Pod "{name}": {why}'
    raise kmock.KubernetesError(status=409, reason="Conflict", message=message)


def _dry_run(request: Any) -> bool:
    """Whether an eviction is a dry run: ``dryRun=All`` in the query or in the Eviction's ``deleteOptions``."""
    if request.params.get("dryRun") == "All":
        return True
    body = request.data if isinstance(request.data, dict) else {}
    options = body.get("deleteOptions") or {}
    return isinstance(options, dict) and "All" in (options.get("dryRun") or [])


# --- label and field selectors ----------------------------------------------------------------------------------

Selected = Callable[[Mapping[str, Any]], bool]

_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_LABEL_TERMS = [
    (re.compile(rf"!\s*({_KEY})"), "!"),
    (re.compile(rf"({_KEY})\s*(==|=|!=)\s*({_VALUE})"), "="),
    (re.compile(rf"({_KEY})\s+(in|notin)\s*\(([^()]*)\)"), "in"),
    (re.compile(rf"({_KEY})\s*(<|>)\s*(-?[0-9]+)"), "<"),
    (re.compile(rf"({_KEY})"), "exists"),
]


def _bad_selector(text: str, why: str) -> kmock.KubernetesError:
    message = f"unable to parse requirement: {text!r}: {why}"
    return kmock.KubernetesError(status=400, reason="BadRequest", message=message)


def _label_terms(text: str) -> list[str]:
    """A label selector split at its top-level commas (``a in (x,y),b`` is two terms)."""
    terms, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(text[start:index])
            start = index + 1
    terms.append(text[start:])
    return [term.strip() for term in terms]


def _label_term(term: str) -> tuple[str, re.Match[str]]:
    for pattern, kind in _LABEL_TERMS:
        match = pattern.fullmatch(term)
        if match is not None:
            return kind, match
    raise _bad_selector(term, "not a label selector requirement")


def _label_selection(text: str) -> Selected:
    requirements: list[tuple[str, str, frozenset[str]]] = []  # (key, operator, values)
    for term in _label_terms(text) if text.strip() else []:
        kind, match = _label_term(term)
        key = match.group(1)
        if kind in ("!", "exists"):
            requirements.append((key, kind, frozenset()))
        elif kind == "=":
            requirements.append((key, "!=" if match.group(2) == "!=" else "=", frozenset({match.group(3)})))
        elif kind == "in":
            values = frozenset(v.strip() for v in match.group(3).split(",") if v.strip())
            if not values:
                raise _bad_selector(term, "for 'in', 'notin' operators, values set can't be empty")
            requirements.append((key, match.group(2), values))
        else:
            requirements.append((key, match.group(2), frozenset({match.group(3)})))

    def selected(obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(_holds(labels, *requirement) for requirement in requirements)

    return selected


def _holds(labels: Mapping[str, str], key: str, operator: str, values: frozenset[str]) -> bool:
    if operator in (">", "<"):
        try:
            number, (bound,) = int(labels[key]), values
        except (KeyError, ValueError):
            return False
        return number > int(bound) if operator == ">" else number < int(bound)
    return {
        "exists": key in labels,
        "!": key not in labels,
        "=": key in labels and labels[key] in values,
        "in": key in labels and labels[key] in values,
        "!=": labels.get(key) not in values,
        "notin": labels.get(key) not in values,
    }[operator]


def _field_terms(text: str) -> list[tuple[str, str, str]]:
    """A field selector as (field, operator, value) terms; ``\\,`` ``\\=`` ``\\\\`` escape in values."""
    terms: list[tuple[str, str, str]] = []
    for raw in re.split(r"(?<!\\),", text):
        if not raw:
            continue
        for index in range(len(raw)):
            operator = next((op for op in ("!=", "==", "=") if raw.startswith(op, index)), None)
            if operator is not None:
                field, value = raw[:index].strip(), raw[index + len(operator) :]
                break
        else:
            raise kmock.KubernetesError(
                status=400, reason="BadRequest", message=f"invalid selector: {text!r}; can't understand {raw!r}"
            )
        if not field:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message=f"invalid selector: {text!r}")
        value = re.sub(r"\\(.)", r"\1", value)
        terms.append((field, "!=" if operator == "!=" else "=", value))
    return terms


def _field_value(obj: Mapping[str, Any], plural: str, field: str) -> str:
    meta = obj.get("metadata") or {}
    if field == "metadata.name":
        return str(meta.get("name", ""))
    if field == "metadata.namespace":
        return str(meta.get("namespace") or "")
    path, default = FIELD_LABELS[plural][field]
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return default
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _field_selection(text: str, plural: str) -> Selected:
    terms = _field_terms(text)
    supported = {"metadata.name", *FIELD_LABELS.get(plural, {})}
    if plural not in CLUSTER_SCOPED:
        supported.add("metadata.namespace")
    for field, _, _ in terms:
        if field not in supported:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message=f"field label not supported: {field}")

    def selected(obj: Mapping[str, Any]) -> bool:
        return all((_field_value(obj, plural, f) == value) == (op == "=") for f, op, value in terms)

    return selected


def _selection(request: Any) -> Selected:
    """What a list or watch request's labelSelector and fieldSelector select (400 for one the server refuses)."""
    labels = _label_selection(request.params.get("labelSelector") or "")
    plural = request.resource.plural if request.resource is not None else ""
    fields = _field_selection(request.params.get("fieldSelector") or "", plural)
    return lambda obj: labels(obj) and fields(obj)


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
