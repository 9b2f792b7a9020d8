"""
The watch-backed cache against the emulated API (its watches resume, expire with 410 and send bookmarks as a real
server's do): it lists once, follows changes, resumes a dropped watch without listing again, lists again after a
410 and on its resync timer, and keeps only the projection.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest_asyncio
from kubernetes_asyncio import client

from agent.devcluster import DevCluster
from agent.metrics import Metrics
from agent.supervisor import Supervisor
from agent.targets.cache import ObjectCache, prune
from tests.conftest import NS

KEEP = {"metadata": {"name": True, "namespace": True, "resourceVersion": True}, "spec": {"maxReplicaCount": True}}
PLURAL = "scaledobjects"
WITHIN = 20.0


async def until(check: Callable[[], bool], what: str) -> None:
    async def wait() -> None:
        while not check():  # noqa: ASYNC110 -- polling the cache, bounded by wait_for
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(wait(), WITHIN)
    except TimeoutError:
        raise AssertionError(f"not within {WITHIN}s: {what}") from None


@pytest_asyncio.fixture()
async def started(cluster: DevCluster, api: client.ApiClient) -> AsyncIterator[Callable[..., Any]]:
    supervisor = Supervisor(metrics=Metrics())
    caches: list[ObjectCache] = []

    async def start(*, resync: timedelta = timedelta(hours=1)) -> ObjectCache:
        custom = client.CustomObjectsApi(api)
        lister = functools.partial(custom.list_namespaced_custom_object, "keda.sh", "v1alpha1", NS, PLURAL)
        cache = ObjectCache(
            name=PLURAL, listers={NS: lister}, project=functools.partial(prune, keep=KEEP), resync=resync
        )
        cache.start(supervisor)
        caches.append(cache)
        await asyncio.wait_for(cache.wait_ready(), WITHIN)
        return cache

    yield start
    for cache in caches:
        await cache.stop()


def max_of(cache: ObjectCache, name: str) -> Any:
    found = cache.get(NS, name)
    return None if found is None else found["spec"].get("maxReplicaCount")


async def test_it_lists_once_then_follows_changes_and_deletes(cluster: DevCluster, started: Any) -> None:
    cache = await started()
    assert cache.ready
    names = {obj["metadata"]["name"] for obj in cache.items(NS)}
    assert "mcp-http-scaler" in names and len(names) == 13  # the examples' ScaledObjects
    assert cache.get(NS, "mcp-http-scaler") == {  # the projection only: no annotations, no status, no triggers
        "metadata": {
            "name": "mcp-http-scaler",
            "namespace": NS,
            "resourceVersion": cache.get(NS, "mcp-http-scaler")["metadata"]["resourceVersion"],
        },
        "spec": {"maxReplicaCount": 20},
    }
    cluster.change(PLURAL, NS, "mcp-http-scaler", {"spec": {"maxReplicaCount": 33}})
    await until(lambda: max_of(cache, "mcp-http-scaler") == 33, "the change to reach the cache")
    cluster.remove(PLURAL, NS, "mcp-keda")
    await until(lambda: cache.get(NS, "mcp-keda") is None, "the delete to reach the cache")
    assert cache.relists == 0


async def test_a_dropped_watch_resumes_from_its_version_without_listing_again(
    cluster: DevCluster, started: Any
) -> None:
    cache = await started()
    await until(lambda: cluster.watching >= 1, "the watch to open")
    assert cluster.drop_watches() >= 1
    cluster.change(PLURAL, NS, "mcp-http-scaler", {"spec": {"maxReplicaCount": 41}})  # while it reconnects
    await until(lambda: max_of(cache, "mcp-http-scaler") == 41, "the change made during the drop")
    assert cache.relists == 0  # resumed from the last resourceVersion: nothing listed or replayed


async def test_a_410_lists_again_and_the_cache_is_whole(cluster: DevCluster, started: Any) -> None:
    cache = await started()
    cluster.change(PLURAL, NS, "mcp-http-scaler", {"spec": {"maxReplicaCount": 42}})
    await until(lambda: max_of(cache, "mcp-http-scaler") == 42, "the first change")
    await until(lambda: cluster.watching >= 1, "the watch to be open")
    # In one step, with no chance for the cache to see it: the watch drops, an object changes, and the server
    # forgets its history, so resuming from the version the cache has is 410 Gone.
    cluster.drop_watches()
    cluster.change(PLURAL, NS, "mcp-keda", {"spec": {"maxReplicaCount": 43}})
    cluster.compact()
    await until(lambda: cache.relists >= 1, "a list after the 410")
    await until(lambda: max_of(cache, "mcp-keda") == 43, "the change made before the 410")
    assert max_of(cache, "mcp-http-scaler") == 42


async def test_it_lists_again_on_its_resync_timer(cluster: DevCluster, started: Any) -> None:
    cache = await started(resync=timedelta(seconds=1))
    await until(lambda: cache.relists >= 2, "two resyncs")
    assert len(cache.items(NS)) == 13


async def test_an_object_the_agent_wrote_is_seen_at_once_and_never_replaced_by_an_older_copy(
    cluster: DevCluster, started: Any
) -> None:
    cache = await started()
    before = cache.get(NS, "mcp-http-scaler")
    assert before is not None
    written = cluster.change(PLURAL, NS, "mcp-http-scaler", {"spec": {"maxReplicaCount": 44}})
    cache.put(written)  # what a patch answers
    assert max_of(cache, "mcp-http-scaler") == 44
    cache.put({**before, "spec": {"maxReplicaCount": 20}})  # an older copy arriving late changes nothing
    assert max_of(cache, "mcp-http-scaler") == 44
