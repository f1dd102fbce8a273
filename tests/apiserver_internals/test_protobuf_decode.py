"""protobuf.decode on hand-built bodies: scalars, Go zero values, special messages, refusals."""

from __future__ import annotations

import pytest

from kube_emulator import protobuf
from kube_emulator.errors import ApiFailure


def _uvarint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negatives travel as 10-byte two's complement
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([b])
        out += bytes([b | 0x80])


def _vi(num: int, value: int) -> bytes:
    return _uvarint(num << 3) + _uvarint(value)


def _ld(num: int, payload: bytes) -> bytes:
    return _uvarint(num << 3 | 2) + _uvarint(len(payload)) + payload


def _body(api_version: str, kind: str, message: bytes) -> bytes:
    return b"k8s\x00" + _ld(1, _ld(1, api_version.encode()) + _ld(2, kind.encode())) + _ld(2, message)


def test_pod_template_scalars_and_special_messages() -> None:
    port_int = _ld(2, _vi(1, 0) + _vi(2, 8080))  # HTTPGetAction.port = IntOrString{intVal}
    probe = _ld(1, _ld(2, _ld(1, b"/healthz") + port_int)) + _vi(2, 0) + _vi(6, 0)  # zero thresholds: unset
    resources = _ld(1, _ld(1, b"cpu") + _ld(2, _ld(1, b"500m")))  # limits{cpu: Quantity}
    security = _vi(7, 0) + _vi(4, 0)  # allowPrivilegeEscalation=false, runAsUser=0 (pointers)
    container = (
        _ld(1, b"app")
        + _ld(8, resources)
        + _ld(10, probe)
        + _ld(15, security)
        + _vi(16, 0)  # stdin=false (value field, Go always sends it)
        + _ld(5, b"")  # workingDir "" (value field)
    )
    pod_spec = _ld(2, container) + _vi(4, 0) + _ld(1, _ld(1, b"tmp") + _ld(2, _ld(2, b"")))
    job_spec = _ld(6, _ld(1, b"") + _ld(2, pod_spec)) + _vi(3, -5) + _vi(7, 0)
    meta = _ld(1, b"j") + _ld(8, b"") + _ld(12, _ld(1, b"a") + _ld(2, b""))
    obj = protobuf.decode(_body("batch/v1", "Job", _ld(1, meta) + _ld(2, job_spec)))
    assert obj["metadata"] == {"name": "j", "annotations": {"a": ""}}  # creationTimestamp zero: absent
    spec = obj["spec"]
    assert spec["activeDeadlineSeconds"] == -5 and spec["backoffLimit"] == 0
    tmpl = spec["template"]
    assert "metadata" not in tmpl  # empty value struct
    assert tmpl["spec"]["terminationGracePeriodSeconds"] == 0
    assert tmpl["spec"]["volumes"] == [{"name": "tmp", "emptyDir": {}}]  # inline source, empty pointer kept
    (c,) = tmpl["spec"]["containers"]
    assert c == {
        "name": "app",
        "resources": {"limits": {"cpu": "500m"}},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
        "securityContext": {"allowPrivilegeEscalation": False, "runAsUser": 0},
    }


def test_time_and_string_port() -> None:
    meta = _ld(1, b"d") + _ld(8, _vi(1, 1_700_000_000))
    port = _ld(2, _vi(1, 1) + _ld(3, b"http"))
    tmpl = _ld(2, _ld(2, _ld(1, b"c") + _ld(10, _ld(1, _ld(2, port)))))
    obj = protobuf.decode(_body("apps/v1", "Deployment", _ld(1, meta) + _ld(2, _ld(3, tmpl))))
    assert obj["metadata"]["creationTimestamp"] == "2023-11-14T22:13:20Z"
    probe = obj["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    assert probe == {"httpGet": {"port": "http"}}


def test_refusals() -> None:
    with pytest.raises(ApiFailure) as err:
        protobuf.decode(_body("v1", "Pod", b""))
    assert err.value.code == 415 and "Pod" in err.value.message
    # a field number the schema does not know is skipped, as the real apiserver's decoder does
    assert protobuf.decode(_body("v1", "ConfigMap", _ld(1, _ld(1, b"x") + _vi(99, 1))))["metadata"] == {
        "name": "x"
    }
    with pytest.raises(ApiFailure) as err:
        protobuf.decode(b"k8s\x00" + b"\x0a\x05ab")
    assert err.value.code == 400
