"""Deletion: finalizers and deletionTimestamp, ownerReference GC, namespace cascade."""

from __future__ import annotations

from kubernetes import client

from tests.conformance.helpers import unique, wait_for


def _gone(fn, *args) -> bool:  # type: ignore[no-untyped-def]
    try:
        fn(*args)
    except client.ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def test_finalizers_hold_deletion(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, {"metadata": {"name": "fin", "finalizers": ["example.com/hold"]}})
    core.delete_namespaced_config_map("fin", ns)
    held = core.read_namespaced_config_map("fin", ns)
    assert held.metadata.deletion_timestamp is not None
    assert held.metadata.finalizers == ["example.com/hold"]
    core.patch_namespaced_config_map("fin", ns, {"metadata": {"finalizers": None}})
    wait_for(lambda: _gone(core.read_namespaced_config_map, "fin", ns), what="finalized object to disappear")


def test_owner_reference_garbage_collection(core: client.CoreV1Api, ns: str) -> None:
    owner = core.create_namespaced_config_map(ns, {"metadata": {"name": unique("owner")}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name, "uid": owner.metadata.uid}
    dep = core.create_namespaced_secret(ns, {"metadata": {"name": unique("dep"), "ownerReferences": [ref]}})
    other = core.create_namespaced_secret(ns, {"metadata": {"name": unique("keep")}})
    core.delete_namespaced_config_map(owner.metadata.name, ns)
    wait_for(
        lambda: _gone(core.read_namespaced_secret, dep.metadata.name, ns), what="dependent to be collected"
    )
    assert core.read_namespaced_secret(other.metadata.name, ns).metadata.name == other.metadata.name


def test_orphan_propagation_keeps_dependents(core: client.CoreV1Api, ns: str) -> None:
    owner = core.create_namespaced_config_map(ns, {"metadata": {"name": unique("owner")}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name, "uid": owner.metadata.uid}
    dep = core.create_namespaced_secret(ns, {"metadata": {"name": unique("orph"), "ownerReferences": [ref]}})
    core.delete_namespaced_config_map(owner.metadata.name, ns, propagation_policy="Orphan")
    wait_for(
        lambda: not core.read_namespaced_secret(dep.metadata.name, ns).metadata.owner_references,
        what="owner reference removed",
    )


def test_foreground_deletion_waits_for_dependents(core: client.CoreV1Api, ns: str) -> None:
    owner = core.create_namespaced_config_map(ns, {"metadata": {"name": unique("fg")}})
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": owner.metadata.name,
        "uid": owner.metadata.uid,
        "blockOwnerDeletion": True,
    }
    dep = core.create_namespaced_secret(ns, {"metadata": {"name": unique("fgdep"), "ownerReferences": [ref]}})
    core.delete_namespaced_config_map(owner.metadata.name, ns, propagation_policy="Foreground")
    wait_for(
        lambda: _gone(core.read_namespaced_secret, dep.metadata.name, ns), what="dependent deleted first"
    )
    wait_for(
        lambda: _gone(core.read_namespaced_config_map, owner.metadata.name, ns),
        what="owner deleted after dependents",
    )


def test_namespace_deletion_cascades(core: client.CoreV1Api) -> None:
    name = unique("doomed")
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_config_map(name, {"metadata": {"name": "inside"}})
    core.create_namespaced_secret(name, {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})
    core.delete_namespace(name)
    ns_obj = core.read_namespace(name)
    assert ns_obj.status.phase == "Terminating"
    wait_for(
        lambda: _gone(core.read_namespaced_config_map, "inside", name), what="namespace contents deleted"
    )
    try:
        core.create_namespaced_config_map(name, {"metadata": {"name": "late"}})
        raise AssertionError("creating in a terminating namespace must fail")
    except client.ApiException as exc:
        assert exc.status == 403
    assert core.read_namespace(name).status.phase == "Terminating", "held by the finalizer on the secret"
    core.patch_namespaced_secret("held", name, {"metadata": {"finalizers": None}})
    wait_for(lambda: _gone(core.read_namespace, name), timeout=30, what="namespace to disappear")
