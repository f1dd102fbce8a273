"""Watch: resume from resourceVersion, event types, bookmarks, 410 Gone, timeoutSeconds, selectors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from kubernetes import client, watch

from kube_emulator import ApiServerThread
from tests.conformance.helpers import api_client, raw


def _stream(api: client.ApiClient, path: str, query: dict[str, str]) -> list[dict]:
    """Read a finite watch (timeoutSeconds set) as parsed JSON lines."""
    status, body, _ = raw(api, "GET", path, query={"watch": "true", **query})
    assert status == 200, body
    if body is None:
        return []
    if isinstance(body, dict):
        return [body]
    return [json.loads(line) for line in str(body).splitlines() if line.strip()]


def test_watch_from_resource_version(core: client.CoreV1Api, api: client.ApiClient, ns: str) -> None:
    start = core.list_namespaced_config_map(ns).metadata.resource_version
    core.create_namespaced_config_map(ns, {"metadata": {"name": "w1"}, "data": {"a": "1"}})
    core.patch_namespaced_config_map("w1", ns, {"data": {"a": "2"}})
    core.delete_namespaced_config_map("w1", ns)
    events = _stream(
        api, f"/api/v1/namespaces/{ns}/configmaps", {"resourceVersion": start, "timeoutSeconds": "1"}
    )
    seen = [
        (e["type"], e["object"]["metadata"]["name"])
        for e in events
        if e["object"]["metadata"]["name"] == "w1"
    ]
    assert seen == [("ADDED", "w1"), ("MODIFIED", "w1"), ("DELETED", "w1")]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs)


def test_watch_without_version_lists_existing_first(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, {"metadata": {"name": "pre-existing"}})
    w = watch.Watch()
    names = [
        (e["type"], e["object"].metadata.name)
        for e in w.stream(core.list_namespaced_config_map, ns, timeout_seconds=1)
    ]
    assert ("ADDED", "pre-existing") in names


def test_watch_timeout_seconds_is_honoured(api: client.ApiClient, ns: str) -> None:
    t0 = time.monotonic()
    _stream(api, f"/api/v1/namespaces/{ns}/secrets", {"timeoutSeconds": "1", "resourceVersion": "0"})
    assert time.monotonic() - t0 < 10


def test_initial_events_end_with_a_bookmark(core: client.CoreV1Api, api: client.ApiClient, ns: str) -> None:
    """A watch-list (``sendInitialEvents``) streams the current objects, then a BOOKMARK annotated
    ``k8s.io/initial-events-end``.  (Periodic bookmarks come about once a minute from a real
    server and are allowed never to come, so they are not asserted here.)"""
    core.create_namespaced_config_map(ns, {"metadata": {"name": "initial", "labels": {"set": "initial"}}})
    query = {
        "sendInitialEvents": "true",
        "resourceVersionMatch": "NotOlderThan",
        "allowWatchBookmarks": "true",
        "labelSelector": "set=initial",
        "timeoutSeconds": "2",
    }
    events = _stream(api, f"/api/v1/namespaces/{ns}/configmaps", query)
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events[:1]] == [("ADDED", "initial")]
    marks = [e for e in events if e["type"] == "BOOKMARK"]
    assert marks and marks[0]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert events.index(marks[0]) == 1, "the bookmark closes the initial events"
    assert int(marks[0]["object"]["metadata"]["resourceVersion"]) >= int(
        events[0]["object"]["metadata"]["resourceVersion"]
    )


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            {"watch": "true", "sendInitialEvents": "true"},
            "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ),
        (
            {"watch": "true", "resourceVersionMatch": "NotOlderThan"},
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless "
            "sendInitialEvents is provided",
        ),
        (
            {"resourceVersionMatch": "NotOlderThan"},
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
        ),
        (
            {"sendInitialEvents": "false"},
            "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list",
        ),
    ],
)
def test_list_options_are_validated(
    api: client.ApiClient, ns: str, query: dict[str, str], message: str
) -> None:
    status, body, _ = raw(
        api, "GET", f"/api/v1/namespaces/{ns}/configmaps", query={"timeoutSeconds": "1", **query}
    )
    assert (status, body["reason"]) == (422, "Invalid"), body
    assert body["message"] == f'ListOptions.meta.k8s.io "" is invalid: {message}'
    assert body["details"]["kind"] == "ListOptions" and body["details"]["group"] == "meta.k8s.io"


def test_watch_with_selectors(core: client.CoreV1Api, api: client.ApiClient, ns: str) -> None:
    rv = core.list_namespaced_config_map(ns).metadata.resource_version
    core.create_namespaced_config_map(ns, {"metadata": {"name": "sel-yes", "labels": {"tier": "web"}}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "sel-no", "labels": {"tier": "db"}}})
    events = _stream(
        api,
        f"/api/v1/namespaces/{ns}/configmaps",
        {"resourceVersion": rv, "labelSelector": "tier in (web)", "timeoutSeconds": "1"},
    )
    assert [e["object"]["metadata"]["name"] for e in events if e["type"] != "BOOKMARK"] == ["sel-yes"]
    events = _stream(
        api,
        f"/api/v1/namespaces/{ns}/configmaps",
        {"resourceVersion": rv, "fieldSelector": "metadata.name=sel-no", "timeoutSeconds": "1"},
    )
    assert [e["object"]["metadata"]["name"] for e in events if e["type"] != "BOOKMARK"] == ["sel-no"]


def test_watch_all_namespaces(core: client.CoreV1Api, api: client.ApiClient, ns: str) -> None:
    rv = core.list_config_map_for_all_namespaces().metadata.resource_version
    core.create_namespaced_config_map(ns, {"metadata": {"name": "everywhere"}})
    events = _stream(
        api,
        "/api/v1/configmaps",
        {"resourceVersion": rv, "timeoutSeconds": "1", "fieldSelector": f"metadata.namespace={ns}"},
    )
    assert "everywhere" in {e["object"]["metadata"]["name"] for e in events}


@pytest.mark.emulator_only
def test_too_old_resource_version_is_410(tmp_path: Path) -> None:
    with ApiServerThread(history_size=5) as t:
        kc = t.server.write_kubeconfig(tmp_path / "kubeconfig")
        api = api_client(kc)
        core = client.CoreV1Api(api)
        first = core.create_namespaced_config_map(
            "default", {"metadata": {"name": "c0"}}
        ).metadata.resource_version
        for i in range(1, 10):
            core.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
        status, body, _ = raw(
            api,
            "GET",
            "/api/v1/namespaces/default/configmaps",
            query={"watch": "true", "resourceVersion": first, "timeoutSeconds": "1"},
        )
        assert status == 410 and body["reason"] == "Expired" and body["code"] == 410
        api.close()


@pytest.mark.emulator_only
def test_slow_watcher_is_closed_not_buffered(tmp_path: Path) -> None:
    with ApiServerThread(watch_queue_size=2) as t:
        srv = t.server
        kc = srv.write_kubeconfig(tmp_path / "kubeconfig")
        api = api_client(kc)
        core = client.CoreV1Api(api)
        rt = srv.registry.get("", "v1", "configmaps")
        assert rt is not None
        watcher, _ = t.call(lambda: srv.store.watch(rt, None, str(srv.store.rv), None, None))
        for i in range(5):
            core.create_namespaced_config_map("default", {"metadata": {"name": f"slow{i}"}})
        assert watcher.closed_reason is not None
        assert watcher.queue.qsize() <= 2
        api.close()
