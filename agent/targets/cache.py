"""
A watch-backed cache of one kind's objects, kept as slim projections, so that decisions read memory, not the API.

Each decision used to GET its objects (a ScaledObject and its Deployment): at a steady 1,000 alerts/s that was
the worker's limit. Here one task per namespace (or one cluster-wide) lists the objects once, then watches from
the list's resourceVersion, as client-go's informers do:

- **resume**: a watch that ends (its ``timeoutSeconds``, a dropped connection, an API restart) is opened again
  from the last resourceVersion seen, events or bookmarks (``allowWatchBookmarks``), so nothing is replayed and
  nothing is missed;
- **410 Gone**: when the server no longer has that version, the cache lists again and replaces its contents;
- **resync**: every ``resync`` it lists again anyway, so a cache that somehow drifted is corrected;
- a failed list or watch is retried with a backoff, and the task runs under the supervisor.

Only a projection of each object is kept (``project``: the fields the kind reads; the agent is ~99 MB after
imports and 10,000 whole ScaledObjects add ~58 MB). Readiness waits for every first list (:attr:`ready`). The
writer keeps it fresh too: the object a patch answers is put in at once (:meth:`put`), and after a 409 the
executor reads the object again (:meth:`refresh`), so a decision never acts twice on a stale copy.
"""

from __future__ import annotations

import asyncio
import copy
import functools
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

import structlog
from kubernetes_asyncio import client, watch

from agent.claims import ANNOTATION_PREFIX
from agent.errors import KubernetesError, call_json, classify
from agent.structs import TargetRef
from agent.supervisor import Supervisor

log = structlog.get_logger("agent.targets.cache")

Lister = Callable[..., Awaitable[Any]]  # a list call of the kubernetes-asyncio API, namespace (if any) bound
Projection = dict[str, Any]
RETRY_SECONDS = (0.5, 30.0)
WATCH_SECONDS = 300  # a watch is reopened at least this often (from its resourceVersion: nothing is replayed)
PAGE = 100  # objects per list page: a small page leaves little of its parsed answer behind (bench/watch.py)
MAX_PAGES = 10_000  # 5 million objects: a bound on the loop, not a limit anyone should meet


def prune(obj: Mapping[str, Any], keep: Mapping[str, Any]) -> dict[str, Any]:
    """
    ``obj`` with only the paths ``keep`` names: ``{"metadata": {"name": True, "annotations": pick}, ...}``; a value
    True keeps the field whole, a mapping recurses, a callable is applied to the field's value.
    """
    result: dict[str, Any] = {}
    for key, spec in keep.items():
        if key not in obj:
            continue
        value = obj[key]
        if spec is True:
            # A copy: a piece of the parsed answer kept by reference would pin the memory around it.
            result[key] = copy.deepcopy(value) if isinstance(value, dict | list) else value
        elif callable(spec):
            result[key] = spec(value)
        elif isinstance(value, Mapping):
            result[key] = prune(value, spec)
    return result


def agent_annotations(marks: Mapping[str, str] | None) -> dict[str, str]:
    """The agent's own annotations (claims, legacy ownership, opt-out) and nothing else."""
    return {key: value for key, value in (marks or {}).items() if key.startswith(ANNOTATION_PREFIX)}


def managed_fields(paths: Mapping[str, Any]) -> Callable[[Any], list[dict[str, Any]]]:
    """A projection of ``managedFields``: who set the fields at ``paths`` (``{"f:spec": {"f:replicas": True}}``)."""

    def slim(entries: Any) -> list[dict[str, Any]]:
        kept = []
        for entry in entries or []:
            fields = prune(entry.get("fieldsV1") or {}, paths)
            if fields:
                kept.append({"manager": entry.get("manager"), "time": entry.get("time"), "fieldsV1": fields})
        return kept

    return slim


def custom_lister(
    custom: client.CustomObjectsApi, group: str, version: str, plural: str, namespace: str | None
) -> Lister:
    """The list call of one namespace (None: all), as a partial: the cache's watch then hands over plain dicts."""
    if namespace is None:
        return functools.partial(custom.list_cluster_custom_object, group, version, plural)
    return functools.partial(custom.list_namespaced_custom_object, group, version, namespace, plural)


class ObjectCache:
    def __init__(
        self,
        *,
        name: str,
        listers: Mapping[str | None, Lister],
        project: Callable[[Mapping[str, Any]], Any],
        resync: timedelta,
        expand: Callable[[Any], Projection] | None = None,
    ) -> None:
        self.name = name  # the plural, for logs and task names
        self._listers = dict(listers)  # namespace (None: cluster-wide) → its list call
        self._project = project  # what is kept: a projection, or a compact record with `key` and `version`
        self._expand = expand or (lambda kept: kept)  # a kept record as the dict readers take
        self._resync = resync.total_seconds()
        self._objects: dict[str | None, dict[tuple[str, str], Any]] = {ns: {} for ns in self._listers}
        self._listed: dict[str | None, asyncio.Event] = {ns: asyncio.Event() for ns in self._listers}
        self._tasks: list[asyncio.Task[None]] = []
        self._supervisor: Supervisor | None = None
        self.relists = 0  # lists after the first (410, resync): for tests and logs

    @property
    def ready(self) -> bool:
        """Every namespace listed once: until then readers fall back to reading the API."""
        return all(event.is_set() for event in self._listed.values())

    async def wait_ready(self) -> None:
        for event in self._listed.values():
            await event.wait()

    def start(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._tasks = [
            supervisor.spawn(f"cache-{self.name}-{ns or 'all'}", functools.partial(self._run, ns))
            for ns in self._listers
        ]

    async def stop(self) -> None:
        if self._supervisor is not None:
            for task in self._tasks:
                await self._supervisor.cancel(task)
        self._tasks = []

    # --- reading ---------------------------------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> Projection | None:
        for objects in self._objects.values():
            found = objects.get((namespace, name))
            if found is not None:
                return self._expand(found)
        return None

    def items(self, namespace: str | None = None) -> list[Projection]:
        if namespace is None:
            return [self._expand(obj) for objects in self._objects.values() for obj in objects.values()]
        return [self._expand(obj) for (ns, _), obj in self._store_for(namespace).items() if ns == namespace]

    def put(self, obj: Mapping[str, Any]) -> Projection:
        """An object the agent just wrote (the patch's answer), so the next decision sees it before its event."""
        projection = self._project(obj)
        key = _key(projection)
        current = self._store_for(key[0]).get(key)
        if current is None or _version(current) <= _version(projection):  # never go back to an older version
            self._store_for(key[0])[key] = projection
        return self._expand(projection)

    def forget(self, namespace: str, name: str) -> None:
        self._store_for(namespace).pop((namespace, name), None)

    # --- the watch loop ---------------------------------------------------------------------------------------

    async def _run(self, namespace: str | None) -> None:
        lister = self._listers[namespace]
        retry = RETRY_SECONDS[0]
        version: str | None = None
        listed_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if version is None or loop.time() - listed_at >= self._resync:
                    version = await self._list(namespace, lister)
                    listed_at = loop.time()
                version = await self._watch(namespace, lister, version, until=listed_at + self._resync)
                retry = RETRY_SECONDS[0]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                typed = classify(exc)
                if isinstance(typed, KubernetesError) and typed.status == 410:
                    log.info("watch expired (410 Gone); listing again", resource=self.name, namespace=namespace)
                    version = None
                    continue
                log.warning(
                    "list or watch failed; will retry",
                    resource=self.name,
                    namespace=namespace,
                    error=str(typed or exc),
                    retry_in=retry,
                )
                await asyncio.sleep(retry)
                retry = min(retry * 2, RETRY_SECONDS[1])

    async def _list(self, namespace: str | None, lister: Lister) -> str:
        # In pages: the whole list parsed at once costs hundreds of MB for 10,000 objects, and the projections
        # kept out of it would pin much of that memory (bench/watch.py). The watch then starts from the first
        # page's version, so whatever changed while the later pages came is seen all the same.
        fresh = {}
        version = ""
        token: str | None = None
        for _ in range(MAX_PAGES):
            page = {"limit": PAGE} if token is None else {"limit": PAGE, "_continue": token}
            data = await call_json(lister(_preload_content=False, **page))
            meta = data.get("metadata") or {}
            version = version or str(meta.get("resourceVersion") or "")
            for obj in data.get("items") or []:
                projection = self._project(obj)
                fresh[_key(projection)] = projection
            del data
            token = meta.get("continue") or None
            if token is None:
                break
        if self._listed[namespace].is_set():
            self.relists += 1
        self._objects[namespace] = fresh
        self._listed[namespace].set()
        log.debug("listed", resource=self.name, namespace=namespace, count=len(fresh), version=version)
        return version

    async def _watch(self, namespace: str | None, lister: Lister, version: str, *, until: float) -> str:
        """Watch from ``version`` until the stream ends or the resync is due; returns the last version seen."""
        loop = asyncio.get_running_loop()
        seconds = max(1, min(WATCH_SECONDS, int(until - loop.time()) + 1))
        # The lister is a partial: kubernetes-asyncio then finds no model to build and hands over plain dicts.
        stream = watch.Watch()
        store = self._objects[namespace]
        async with stream:
            async for event in stream.stream(
                lister, resource_version=version, allow_watch_bookmarks=True, timeout_seconds=seconds
            ):
                kind = event["type"]
                obj = event["raw_object"]
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                projection = self._project(obj)
                key = _key(projection)
                if kind == "DELETED":
                    store.pop(key, None)
                    continue
                current = store.get(key)
                # An event older than a copy the agent put in (its own write's answer) does not take it back.
                if current is None or _version(current) <= _version(projection):
                    store[key] = projection
        return version

    def _store_for(self, namespace: str) -> dict[tuple[str, str], Any]:
        if namespace in self._objects:
            return self._objects[namespace]
        return self._objects.setdefault(None, {}) if None in self._objects else {}


class CachedReads:
    """
    The part of a target kind that is the same for every kind reading through caches: start and stop them,
    ready once all have listed, and forget an object after a 409. A kind sets ``_objects`` (its own objects'
    cache, None without one) and ``_caches`` (every cache it keeps).
    """

    _objects: ObjectCache | None = None
    _caches: tuple[ObjectCache, ...] = ()

    def start(self, supervisor: Supervisor) -> None:
        for cache in self._caches:
            cache.start(supervisor)

    async def stop(self) -> None:
        for cache in self._caches:
            await cache.stop()

    @property
    def ready(self) -> bool:
        return all(cache.ready for cache in self._caches)

    def invalidate(self, namespace: str, name: str) -> None:
        if self._objects is not None:
            self._objects.forget(namespace, name)

    async def find_by_machine(self, labels: Mapping[str, str]) -> list[TargetRef]:
        """Only a Node is a machine; every other kind has none."""
        return []

    def _cached(self) -> ObjectCache | None:
        """The kind's own cache, once it has listed (before that, reads go to the API)."""
        return self._listed(self._objects)

    @staticmethod
    def _listed(cache: ObjectCache | None) -> ObjectCache | None:
        return cache if cache is not None and cache.ready else None


def _key(kept: Any) -> tuple[str, str]:
    if not isinstance(kept, Mapping):  # a compact record
        key: tuple[str, str] = kept.key
        return key
    meta = kept.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _version(kept: Any) -> int:
    text = kept.version if not isinstance(kept, Mapping) else (kept.get("metadata") or {}).get("resourceVersion")
    try:
        return int(text or 0)
    except ValueError:
        return 0
