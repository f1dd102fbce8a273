"""``pods/log`` from the files kwok's ``Logs`` / ``ClusterLogs`` name (kwok.x-k8s.io/v1alpha1).

On the real cluster kube-apiserver validates the request and proxies it to the node's kubelet
endpoint, which kwok serves with the kubelet's CRI log reader; the emulator does the same from
its store.  kwok learns of a new Logs object through its own watch, so the first read after a
change is polled (the emulator answers at once).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.conformance.helpers import deployment, raw, raw_text, unique, wait_for
from tests.fixtures.kube import KubeTarget, kubectl_binary

KWOK = "/apis/kwok.x-k8s.io/v1alpha1"
DEADLINE = 60.0
Kubectl = Callable[..., subprocess.CompletedProcess[str]]

CRI = (
    "2024-01-01T00:00:00.000000001Z stdout F hello one\n"
    "2024-01-01T00:00:01Z stderr F oops two\n"
    "2024-01-01T01:00:02.000000000+01:00 stdout P part-\n"
    "2024-01-01T00:00:02.5Z stdout F three\n"
)
PREVIOUS = "2023-12-31T23:59:59Z stdout F before the restart\n"


def _docker(text: str, second: int = 0) -> str:
    return json.dumps({"log": text, "stream": "stdout", "time": f"2024-01-01T00:00:{second:02d}Z"}) + "\n"


@pytest.fixture
def pod(api: client.ApiClient, core: client.CoreV1Api, ns: str) -> Iterator[str]:
    """A running pod (of a Deployment, so both targets run it) with one container, ``app``."""
    apps = client.AppsV1Api(api)
    name = unique("logs")
    apps.create_namespaced_deployment(ns, deployment(name))

    def running() -> str | None:
        for p in core.list_namespaced_pod(ns, label_selector=f"app={name}").items:
            if p.spec.node_name and p.status.phase == "Running" and not p.metadata.deletion_timestamp:
                return str(p.metadata.name)
        return None

    yield wait_for(running, timeout=DEADLINE, what="a running pod")
    apps.delete_namespaced_deployment(name, ns)


def _logs_object(name: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Logs",
        "metadata": {"name": name},
        "spec": {"logs": entries},
    }


def _read(api: client.ApiClient, ns: str, pod: str, **query: str) -> tuple[int, str]:
    return raw_text(api, f"/api/v1/namespaces/{ns}/pods/{pod}/log", query)


def _until_served(api: client.ApiClient, ns: str, pod: str, want: str, **query: str) -> None:
    wait_for(
        lambda: _read(api, ns, pod, **query) == (200, want),
        timeout=DEADLINE,
        what=f"the log to read {want!r}",
    )


def test_logs_serve_the_file_they_name(
    api: client.ApiClient, ns: str, pod: str, tmp_path: Path, kubectl: Kubectl
) -> None:
    (tmp_path / "app.log").write_text(CRI)
    (tmp_path / "prev.log").write_text(PREVIOUS)
    entry = {
        "containers": ["app"],
        "logsFile": str(tmp_path / "app.log"),
        "previousLogsFile": str(tmp_path / "prev.log"),
        "follow": True,
    }
    status, body, _ = raw(api, "POST", f"{KWOK}/namespaces/{ns}/logs", body=_logs_object(pod, [entry]))
    assert status == 201, body
    # both streams, a partial (P) line joined with the next
    _until_served(api, ns, pod, "hello one\noops two\npart-three\n")
    # timestamps in RFC3339Nano, in the zone the line was written in; none inside a joined line
    assert _read(api, ns, pod, timestamps="true") == (
        200,
        "2024-01-01T00:00:00.000000001Z hello one\n"
        "2024-01-01T00:00:01.000000000Z oops two\n"
        "2024-01-01T01:00:02.000000000+01:00 part-three\n",
    )
    # tailLines counts lines of the file, not joined lines
    assert _read(api, ns, pod, tailLines="1") == (200, "three\n")
    assert _read(api, ns, pod, tailLines="2", timestamps="true") == (
        200,
        "2024-01-01T01:00:02.000000000+01:00 part-three\n",
    )
    assert _read(api, ns, pod, tailLines="0")[0] == 200 and _read(api, ns, pod, tailLines="0")[1] == ""
    assert _read(api, ns, pod, limitBytes="5") == (200, "hello")
    assert _read(api, ns, pod, sinceTime="2024-01-01T00:00:01Z") == (200, "oops two\npart-three\n")
    assert _read(api, ns, pod, previous="true") == (200, "before the restart\n")
    assert _read(api, ns, pod, container="app") == (200, "hello one\noops two\npart-three\n")
    assert kubectl("logs", pod, "-n", ns, "--tail=1").stdout == "three\n"


def test_cluster_logs_follow_and_precedence(
    kube_target: KubeTarget, api: client.ApiClient, ns: str, pod: str, tmp_path: Path
) -> None:
    log = tmp_path / "app.json.log"
    log.write_text(_docker("first\n"))
    cluster_logs = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "ClusterLogs",
        "metadata": {"name": unique("conformance")},
        "spec": {
            # scoped to this test's pod: the real cluster is shared by the whole session
            "selector": {"matchNamespaces": [ns], "matchNames": [pod]},
            "logs": [{"logsFile": str(log), "follow": True}],  # no containers: every container
        },
    }
    status, body, _ = raw(api, "POST", f"{KWOK}/clusterlogs", body=cluster_logs)
    assert status == 201, body
    proc: subprocess.Popen[str] | None = None
    try:
        _until_served(api, ns, pod, "first\n")  # Docker JSON lines are read as well as CRI ones
        env = dict(os.environ, KUBECONFIG=str(kube_target.kubeconfig), KUBECACHEDIR=str(tmp_path / "cache"))
        proc = subprocess.Popen(
            [kubectl_binary(), "logs", "-f", pod, "-n", ns],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        lines: list[str] = []

        def pump() -> None:
            assert proc is not None and proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)

        threading.Thread(target=pump, daemon=True).start()
        wait_for(lambda: lines == ["first\n"], timeout=DEADLINE, what="the existing line")
        with log.open("a") as f:
            f.write(_docker("second\n", 1))
            f.flush()
            f.write(_docker("third\n", 2))
        wait_for(lambda: lines == ["first\n", "second\n", "third\n"], timeout=DEADLINE, what="appended lines")
        # a file recreated under the same name (rotation) is read from its start
        rotated = tmp_path / "rotated.tmp"
        rotated.write_text(_docker("after rotation\n", 3))
        os.replace(rotated, log)
        wait_for(lambda: lines[3:] == ["after rotation\n"], timeout=DEADLINE, what="the rotated file")
        assert proc.poll() is None, "follow keeps the stream open"
        # a Logs named like the pod wins over any ClusterLogs
        own = tmp_path / "own.log"
        own.write_text("2024-01-01T00:00:00Z stdout F from Logs\n")
        status, body, _ = raw(
            api, "POST", f"{KWOK}/namespaces/{ns}/logs", body=_logs_object(pod, [{"logsFile": str(own)}])
        )
        assert status == 201, body
        _until_served(api, ns, pod, "from Logs\n")
    finally:
        if proc is not None:
            proc.terminate()
            proc.communicate(timeout=10)
        raw(api, "DELETE", f"{KWOK}/clusterlogs/{cluster_logs['metadata']['name']}")


def test_pod_log_errors(
    api: client.ApiClient, core: client.CoreV1Api, ns: str, pod: str, tmp_path: Path
) -> None:
    path = f"/api/v1/namespaces/{ns}/pods/{pod}/log"
    # nothing names a file for this pod: kwok says so, and kube-apiserver passes it on
    status, body, _ = raw(api, "GET", path, headers={"Accept": "*/*"})
    assert (status, body["reason"]) == (400, "BadRequest"), body
    assert body["message"] == f'no logs found for container "app" in pod "{ns}/{pod}"'
    # kube-apiserver's own checks, before anything reaches a node
    status, body, _ = raw(api, "GET", path, query={"container": "nope"}, headers={"Accept": "*/*"})
    assert (status, body["message"]) == (400, f"container nope is not valid for pod {pod}")
    invalid = {
        "tailLines=-1": "tailLines: Invalid value: -1: must be greater than or equal to 0",
        "limitBytes=0": "limitBytes: Invalid value: 0: must be greater than 0",
        "sinceSeconds=0": "sinceSeconds: Invalid value: 0: must be greater than 0",
        "sinceSeconds=5&sinceTime=2024-01-01T00:00:00Z": (
            "[]: Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified"
        ),
        "stream=Stderr": "stream: Forbidden: may not be specified",
    }
    for query, message in invalid.items():
        params = dict(kv.split("=", 1) for kv in query.split("&"))
        status, body, _ = raw(api, "GET", path, query=params, headers={"Accept": "*/*"})
        assert (status, body["reason"]) == (422, "Invalid"), (query, body)
        assert body["message"] == f'PodLogOptions "{pod}" is invalid: {message}', body
        assert body["details"] == {
            "name": pod,
            "kind": "PodLogOptions",
            "causes": body["details"]["causes"],
        }
    status, body, _ = raw(api, "GET", path, query={"tailLines": "x"}, headers={"Accept": "*/*"})
    assert (status, body["message"]) == (400, 'strconv.ParseInt: parsing "x": invalid syntax')
    status, body, _ = raw(api, "GET", f"/api/v1/namespaces/{ns}/pods/{unique('gone')}/log")
    assert status == 404 and body["reason"] == "NotFound"
    # a Logs for the pod without an entry for its container
    status, body, _ = raw(
        api,
        "POST",
        f"{KWOK}/namespaces/{ns}/logs",
        body=_logs_object(pod, [{"containers": ["other"], "logsFile": str(tmp_path / "x.log")}]),
    )
    assert status == 201, body
    wait_for(
        lambda: (
            raw(api, "GET", path, headers={"Accept": "*/*"})[1]["message"]
            == f'log target not found for container "app" in pod "{ns}/{pod}"'
        ),
        timeout=DEADLINE,
        what="kwok to read the Logs",
    )
    # an entry naming a file that is not there
    missing = tmp_path / "missing" / "app.log"
    status, body, _ = raw(
        api,
        "PATCH",
        f"{KWOK}/namespaces/{ns}/logs/{pod}",
        body={"spec": {"logs": [{"logsFile": str(missing)}]}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert status == 200, body
    want = f'failed to try resolving symlinks in path "{missing}": lstat {missing.parent}: no such file or directory'
    wait_for(
        lambda: raw(api, "GET", path, headers={"Accept": "*/*"})[1]["message"] == want,
        timeout=DEADLINE,
        what="kwok to read the new entry",
    )


def test_pod_log_container_choice_and_unscheduled_pods(
    api: client.ApiClient, core: client.CoreV1Api, ns: str
) -> None:
    name = unique("two")
    core.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": name},
            "spec": {
                "schedulerName": "no-such-scheduler",  # never scheduled, on either target
                "initContainers": [{"name": "init", "image": "busybox:1.36"}],
                "containers": [{"name": "a", "image": "nginx:1.25"}, {"name": "b", "image": "nginx:1.25"}],
            },
        },
    )
    path = f"/api/v1/namespaces/{ns}/pods/{name}/log"
    status, body, _ = raw(api, "GET", path, headers={"Accept": "*/*"})
    assert (status, body["message"]) == (
        400,
        f"a container name must be specified for pod {name}, choose one of: [init a b]",
    )
    # a pod on no node yet: kube-apiserver has no kubelet to ask and answers 204 No Content
    assert raw_text(api, path, {"container": "a"}) == (204, "")
    assert raw_text(api, path, {"container": "init"}) == (204, "")
