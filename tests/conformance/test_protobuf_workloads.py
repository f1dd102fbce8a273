"""kubectl's protobuf bodies for workloads: ``create job --from=cronjob``, ``create deployment``;
the decoded objects must equal what the source said, field for field.  kube-apiserver speaks
protobuf natively; the emulator decodes it with the field numbers of the same release."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

from kubernetes import client

from tests.conformance.helpers import raw, unique

Kubectl = Callable[..., subprocess.CompletedProcess[str]]

RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
    "privileged": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 0,  # a pointer in Go: zero must survive the trip (and so must the falses)
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _pod_template(name: str) -> dict[str, Any]:
    """Like the operator's manual-task rendering, plus most of what a PodSpec can carry."""
    return {
        "metadata": {"labels": {"choreo.dev/app": name}, "annotations": {"choreo.dev/revision": "7"}},
        "spec": {
            "serviceAccountName": "choreo-app",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "jobs", "effect": "NoSchedule"},
                {"key": "slow", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
            ],
            "imagePullSecrets": [{"name": "registry"}],
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "fsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "initContainers": [
                {
                    "name": "wait",
                    "image": "busybox:1.36",
                    "command": ["sh", "-c", "true"],
                    "securityContext": RESTRICTED,
                }
            ],
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example.com/shop/orders:1.2.3",
                    "args": ["migrate", "up"],
                    "workingDir": "/work",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "env": [
                        {"name": "MODE", "value": "manual"},
                        {
                            "name": "DB_PASSWORD",
                            "valueFrom": {"secretKeyRef": {"name": f"{name}-secrets", "key": "DB_PASSWORD"}},
                        },
                        {
                            "name": "FLAG",
                            "valueFrom": {
                                "configMapKeyRef": {"name": "flags", "key": "flag", "optional": False}
                            },
                        },
                        {
                            "name": "POD",
                            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
                        },
                    ],
                    "envFrom": [{"secretRef": {"name": "extra", "optional": True}}],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "128Mi"},
                        "limits": {"cpu": "1", "memory": "512Mi", "ephemeral-storage": "1Gi"},
                    },
                    "livenessProbe": {
                        "httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                        "initialDelaySeconds": 5,
                        "periodSeconds": 10,
                        "failureThreshold": 3,
                    },
                    "readinessProbe": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 2},
                    "startupProbe": {
                        "exec": {"command": ["cat", "/tmp/ready"]},
                        "terminationGracePeriodSeconds": 5,  # a probe's must be > 0 (the pod's may be 0)
                    },
                    "securityContext": RESTRICTED,
                    "volumeMounts": [
                        {"name": "tmp", "mountPath": "/tmp"},
                        {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": True},
                        {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
                    ],
                    "imagePullPolicy": "IfNotPresent",
                }
            ],
            "volumes": [
                {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                {"name": "scratch", "emptyDir": {}},
                {
                    "name": "cfg",
                    "configMap": {"name": "flags", "defaultMode": 0, "items": [{"key": "flag", "path": "f"}]},
                },
                {"name": "creds", "secret": {"secretName": f"{name}-secrets", "optional": False}},
            ],
        },
    }


def _plain(api: client.ApiClient, obj: Any) -> Any:
    return api.sanitize_for_serialization(obj)


def test_create_job_from_suspended_cronjob(api: client.ApiClient, ns: str, kubectl: Kubectl) -> None:
    batch = client.BatchV1Api(api)
    name = unique("mt")
    cj_body = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "labels": {"choreo.dev/app": name}},
        "spec": {
            "schedule": "0 0 31 2 *",
            "suspend": True,
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {
                "metadata": {
                    "labels": {"choreo.dev/app": name},
                    "annotations": {"choreo.dev/kind": "manualTask"},
                },
                "spec": {
                    "backoffLimit": 0,
                    "ttlSecondsAfterFinished": 86400,
                    "template": _pod_template(name),
                },
            },
        },
    }
    cj = batch.create_namespaced_cron_job(ns, cj_body)
    out = kubectl("create", "job", "manual-1", f"--from=cronjob/{name}", "-n", ns).stdout
    assert "job.batch/manual-1 created" in out
    job = batch.read_namespaced_job("manual-1", ns)
    cj = batch.read_namespaced_cron_job(name, ns)
    want = _plain(api, cj.spec.job_template.spec.template)
    got = _plain(api, job.spec.template)
    assert got["spec"] == want["spec"]
    assert got["metadata"]["annotations"] == want["metadata"]["annotations"]
    assert got["metadata"]["labels"].items() >= want["metadata"]["labels"].items()
    assert job.spec.backoff_limit == 0 and job.spec.ttl_seconds_after_finished == 86400
    assert job.metadata.annotations["cronjob.kubernetes.io/instantiate"] == "manual"
    assert job.metadata.annotations["choreo.dev/kind"] == "manualTask"
    (ref,) = job.metadata.owner_references
    assert (ref.api_version, ref.kind, ref.name, ref.uid, ref.controller) == (
        "batch/v1",
        "CronJob",
        name,
        cj.metadata.uid,
        True,
    )
    # Go's encoding sends unset value fields (hostNetwork: false, stdin: false, ...); they did
    # not leak in (the equality above), while pointer zeros and falses came through as values
    assert "hostNetwork" not in got["spec"] and "stdin" not in got["spec"]["containers"][0]
    c = got["spec"]["containers"][0]
    assert (
        c["securityContext"]["allowPrivilegeEscalation"] is False and c["securityContext"]["runAsUser"] == 0
    )
    assert (
        got["spec"]["terminationGracePeriodSeconds"] == 0
        and got["spec"]["automountServiceAccountToken"] is False
    )
    assert got["spec"]["volumes"][1]["emptyDir"] == {}


def test_create_deployment_and_cronjob_typed(api: client.ApiClient, ns: str, kubectl: Kubectl) -> None:
    apps = client.AppsV1Api(api)
    batch = client.BatchV1Api(api)
    name = unique("dep")
    kubectl("create", "deployment", name, "--image=nginx:1.25", "--replicas=2", "--port=8080", "-n", ns)
    d = apps.read_namespaced_deployment(name, ns)
    assert d.spec.replicas == 2
    assert d.spec.selector.match_labels == {"app": name} and d.spec.template.metadata.labels == {"app": name}
    (c,) = d.spec.template.spec.containers
    assert (c.name, c.image, c.ports[0].container_port) == ("nginx", "nginx:1.25", 8080)
    kubectl(
        "create", "cronjob", name, "--image=busybox:1.36", "--schedule=*/5 * * * *", "-n", ns, "--", "date"
    )
    cj = batch.read_namespaced_cron_job(name, ns)
    assert cj.spec.schedule == "*/5 * * * *"
    (c,) = cj.spec.job_template.spec.template.spec.containers
    assert c.command == ["date"] and cj.spec.job_template.spec.template.spec.restart_policy == "OnFailure"


def _key(num: int, wire: int) -> bytes:
    return _uvarint(num << 3 | wire)


def _uvarint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([b])
        out += bytes([b | 0x80])


def _ld(num: int, payload: bytes) -> bytes:
    return _key(num, 2) + _uvarint(len(payload)) + payload


def test_unknown_protobuf_field_is_skipped(api: client.ApiClient, ns: str) -> None:
    """A field number this release does not know (a newer client's) is dropped, not refused:
    the Go code generated for kube-apiserver skips unknown fields, and so does the emulator."""
    # Job{metadata{name}, spec{template{spec{containers[{name, image, <field 999>}], restartPolicy}}}}
    container = _ld(1, b"app") + _ld(2, b"busybox:1.36") + _key(999, 0) + b"\x01"
    pod_spec = _ld(2, container) + _ld(3, b"Never")
    job = _ld(1, _ld(1, b"skips")) + _ld(2, _ld(6, _ld(2, pod_spec)))
    body = b"k8s\x00" + _ld(1, _ld(1, b"batch/v1") + _ld(2, b"Job")) + _ld(2, job)
    status, created, _ = raw(
        api,
        "POST",
        f"/apis/batch/v1/namespaces/{ns}/jobs",
        body=body,
        headers={"Content-Type": "application/vnd.kubernetes.protobuf", "Accept": "application/json"},
    )
    assert status == 201, created
    (c,) = created["spec"]["template"]["spec"]["containers"]
    assert (c["name"], c["image"]) == ("app", "busybox:1.36")
    assert created["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    stored = client.BatchV1Api(api).read_namespaced_job("skips", ns)
    assert stored.spec.template.spec.containers[0].image == "busybox:1.36"


def test_protobuf_body_of_a_kind_is_decoded_like_json(api: client.ApiClient, ns: str) -> None:
    """A ConfigMap in protobuf (what ``kubectl create configmap`` sends) stores what JSON would."""
    meta = _ld(1, b"pb-cm") + _ld(11, _ld(1, b"team") + _ld(2, b"a"))
    data = _ld(2, _ld(1, b"k") + _ld(2, b"v")) + _ld(3, _ld(1, b"bin") + _ld(2, b"\x00\x01"))
    body = b"k8s\x00" + _ld(1, _ld(1, b"v1") + _ld(2, b"ConfigMap")) + _ld(2, _ld(1, meta) + data)
    status, created, _ = raw(
        api,
        "POST",
        f"/api/v1/namespaces/{ns}/configmaps",
        body=body,
        headers={"Content-Type": "application/vnd.kubernetes.protobuf", "Accept": "application/json"},
    )
    assert status == 201, created
    assert created["metadata"]["labels"] == {"team": "a"}
    assert created["data"] == {"k": "v"} and created["binaryData"] == {"bin": "AAE="}
