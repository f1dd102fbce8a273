"""Kubernetes protobuf request bodies, decoded into the JSON objects they stand for.

kubectl sends ``application/vnd.kubernetes.protobuf`` for its typed ``create``
sub-commands (``create namespace|configmap|secret|serviceaccount|job|cronjob|deployment``,
``create job --from=cronjob/X``) and ``auth can-i``; everything else is JSON.  The body
is the ``k8s\\x00`` magic plus a runtime.Unknown envelope (TypeMeta, raw message).

Field numbers and types come from ``protobuf_schema`` (generated from the upstream
``generated.proto`` of the Kubernetes release the real control plane is built from, 1.36),
so every field of the supported kinds decodes, including the whole PodTemplateSpec tree.
A field number the schema does not know is skipped, as the Go code generated for
kube-apiserver skips it (a newer client's field is dropped by a 1.36 server just the same).
Kinds outside ``TOP_LEVEL`` get 415: the emulator cannot decode them (a real server would).

Go's protobuf encoding writes every non-pointer field, even at its zero value, where
JSON (``omitempty``) leaves it out.  To give the object a JSON client would have sent:
empty strings are dropped; zero numbers and ``false`` are dropped for the value-typed
fields listed in ``_VALUE_SCALARS`` (pointer fields such as ``allowPrivilegeEscalation:
false``, ``backoffLimit: 0`` or ``runAsUser: 0`` are kept); empty messages are dropped for
value-typed structs (``_VALUE_MESSAGES``: ``resources: {}``, template ``metadata: {}``) and
kept for pointers, where presence means something (``emptyDir: {}``).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from kube_emulator.errors import ApiFailure
from kube_emulator.protobuf_schema import MESSAGES

JSON = dict[str, Any]
MAGIC = b"k8s\x00"

# (apiVersion, kind) -> message
TOP_LEVEL: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "api.core.v1.ConfigMap",
    ("v1", "Secret"): "api.core.v1.Secret",
    ("v1", "Namespace"): "api.core.v1.Namespace",
    ("v1", "ServiceAccount"): "api.core.v1.ServiceAccount",
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): "api.authorization.v1.SelfSubjectAccessReview",
    ("batch/v1", "Job"): "api.batch.v1.Job",
    ("batch/v1", "CronJob"): "api.batch.v1.CronJob",
    ("apps/v1", "Deployment"): "api.apps.v1.Deployment",
}

_META = "apimachinery.pkg.apis.meta.v1."
# Embedded Go structs (``json:",inline"``): their fields belong to the parent object.
# So are all fields ``localObjectReference`` (secretKeyRef.name, configMap.name, ...).
_INLINE = {
    ("api.core.v1.Volume", "volumeSource"),
    ("api.core.v1.Probe", "handler"),
    ("api.core.v1.EphemeralContainer", "ephemeralContainerCommon"),
}
# Non-pointer Go structs: always on the wire, left out of JSON when empty.
_VALUE_MESSAGES = {
    _META + "ObjectMeta",
    _META + "Time",
    "api.core.v1.PodTemplateSpec",
    "api.core.v1.PodSpec",
    "api.core.v1.ResourceRequirements",
    "api.core.v1.NamespaceSpec",
    "api.core.v1.NamespaceStatus",
    "api.batch.v1.JobSpec",
    "api.batch.v1.JobStatus",
    "api.batch.v1.JobTemplateSpec",
    "api.batch.v1.CronJobSpec",
    "api.batch.v1.CronJobStatus",
    "api.apps.v1.DeploymentSpec",
    "api.apps.v1.DeploymentStatus",
    "api.apps.v1.DeploymentStrategy",
    "api.authorization.v1.SelfSubjectAccessReviewSpec",
    "api.authorization.v1.SubjectAccessReviewStatus",
}
# Non-pointer numbers and bools (``omitempty``): a zero on the wire means "not set".
# Every other scalar of the schema is a pointer in Go, where zero is a real value.
_VALUE_SCALARS = {
    "api.apps.v1.DeploymentSpec": {"minReadySeconds", "paused"},
    "api.apps.v1.DeploymentStatus": {
        "observedGeneration",
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
    },
    "api.batch.v1.JobStatus": {"active", "succeeded", "failed"},
    "api.authorization.v1.SubjectAccessReviewStatus": {"denied"},
    "api.core.v1.Container": {"stdin", "stdinOnce", "tty"},
    "api.core.v1.EphemeralContainerCommon": {"stdin", "stdinOnce", "tty"},
    "api.core.v1.ContainerPort": {"hostPort"},
    "api.core.v1.PodSpec": {"hostNetwork", "hostPID", "hostIPC"},
    "api.core.v1.Probe": {
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    },
    "api.core.v1.VolumeMount": {"readOnly"},
    "api.core.v1.AWSElasticBlockStoreVolumeSource": {"partition", "readOnly"},
    "api.core.v1.GCEPersistentDiskVolumeSource": {"partition", "readOnly"},
    "api.core.v1.ISCSIVolumeSource": {"lun", "readOnly", "chapAuthDiscovery", "chapAuthSession"},
    "api.core.v1.ScaleIOVolumeSource": {"sslEnabled", "readOnly"},
    _META + "ObjectMeta": {"generation"},
}
_LEGACY_READONLY = (  # volume sources whose readOnly is a plain bool
    "AzureFile",
    "CephFS",
    "Cinder",
    "FC",
    "FlexVolume",
    "Glusterfs",
    "NFS",
    "PersistentVolumeClaim",
    "Portworx",
    "Quobyte",
    "RBD",
    "StorageOS",
)
for _name in _LEGACY_READONLY:
    _VALUE_SCALARS.setdefault(f"api.core.v1.{_name}VolumeSource", set()).add("readOnly")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    out: list[tuple[int, int, Any]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
            out.append((num, wire, val))
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("truncated length-delimited field")
            out.append((num, wire, buf[pos : pos + n]))
            pos += n
        elif wire == 1:
            out.append((num, wire, buf[pos : pos + 8]))
            pos += 8
        elif wire == 5:
            out.append((num, wire, buf[pos : pos + 4]))
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def _int(val: Any) -> int:
    if not isinstance(val, int):
        raise ValueError("expected a varint")
    return val - (1 << 64) if val >= 1 << 63 else val  # int32/int64 negatives are 10-byte varints


def _bytes(val: Any) -> bytes:
    if not isinstance(val, bytes):
        raise ValueError("expected a length-delimited field")
    return val


def _special(name: str, buf: bytes) -> tuple[bool, Any]:
    """Messages whose JSON form is not an object (Quantity, IntOrString, Time, raw JSON)."""
    if name == "apimachinery.pkg.api.resource.Quantity":
        f = {n: v for n, _w, v in _fields(buf)}
        return True, _bytes(f.get(1, b"")).decode()
    if name == "apimachinery.pkg.util.intstr.IntOrString":
        f = {n: v for n, _w, v in _fields(buf)}
        if _int(f.get(1, 0)) == 1:
            return True, _bytes(f.get(3, b"")).decode()
        return True, _int(f.get(2, 0))
    if name in (_META + "Time", _META + "MicroTime"):
        f = {n: v for n, _w, v in _fields(buf)}
        if not f:
            return True, None  # zero time: Go writes an empty message, JSON says null
        t = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
            seconds=_int(f.get(1, 0)), microseconds=_int(f.get(2, 0)) // 1000
        )
        if name.endswith("MicroTime"):
            return True, t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return True, t.strftime("%Y-%m-%dT%H:%M:%SZ")
    if name in (_META + "FieldsV1", "apimachinery.pkg.runtime.RawExtension"):
        f = {n: v for n, _w, v in _fields(buf)}
        raw = _bytes(f.get(1, b""))
        return True, json.loads(raw) if raw else None
    return False, None


def _is_map_entry(name: str) -> bool:
    schema = MESSAGES[name]
    return name.endswith("Entry") and set(schema) == {1, 2} and schema[1][0] == "key"


def _message(buf: bytes, name: str, path: str) -> JSON:
    schema = MESSAGES[name]
    out: JSON = {}
    value_scalars = _VALUE_SCALARS.get(name, set())
    for num, wire, val in _fields(buf):
        if num not in schema:
            continue  # unknown to this release: skipped, as generated Go Unmarshal code does
        key, typ = schema[num]
        repeated = typ.startswith("[]")
        base = typ[2:] if repeated else typ
        here = f"{path}.{key}"
        if base == "string":
            v: Any = _bytes(val).decode()
            if v == "" and not repeated:
                continue
        elif base == "bytes":
            v = base64.b64encode(_bytes(val)).decode()
        elif base in ("int", "bool"):
            if wire == 2:  # packed repeated scalars
                for _n, _w, item in _fields_packed(_bytes(val)):
                    out.setdefault(key, []).append(_int(item) if base == "int" else bool(item))
                continue
            v = _int(val) if base == "int" else bool(_int(val))
            if not repeated and not v and key in value_scalars:
                continue
        else:
            sub = base[4:]
            if _is_map_entry(sub):
                entry = _message(_bytes(val), sub, here)
                out.setdefault(key, {})[entry.get("key", "")] = entry.get("value", _zero(sub))
                continue
            special, v = _special(sub, _bytes(val))
            if not special:
                v = _message(_bytes(val), sub, f"{here}[{len(out.get(key) or [])}]" if repeated else here)
                if (name, key) in _INLINE or key == "localObjectReference":
                    out.update(v)
                    continue
                if not v and not repeated and sub in _VALUE_MESSAGES:
                    continue
            elif v is None:
                continue
        if repeated:
            out.setdefault(key, []).append(v)
        else:
            out[key] = v
    return out


def _fields_packed(buf: bytes) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    pos = 0
    while pos < len(buf):
        v, pos = _varint(buf, pos)
        out.append((0, 0, v))
    return out


def _zero(entry: str) -> Any:
    """A map value that was empty on the wire (e.g. ``data: {k: ""}``)."""
    typ = MESSAGES[entry][2][1]
    if typ == "string":
        return ""
    if typ == "bytes":
        return ""
    if typ == "msg:apimachinery.pkg.api.resource.Quantity":
        return "0"
    return {}


def decode(body: bytes) -> JSON:
    """A protobuf request body as the JSON object it stands for; 415 for what is not covered."""
    if not body.startswith(MAGIC):
        raise ApiFailure(400, "protobuf body without the k8s envelope")
    try:
        envelope = {n: v for n, _w, v in _fields(body[len(MAGIC) :])}
        type_meta = {n: v for n, _w, v in _fields(_bytes(envelope.get(1, b"")))}
        api_version = _bytes(type_meta.get(1, b"")).decode()
        kind = _bytes(type_meta.get(2, b"")).decode()
        message = TOP_LEVEL.get((api_version, kind))
        if message is None:
            understood = ", ".join(f"{k} ({v})" for v, k in TOP_LEVEL)
            raise ApiFailure(
                415,
                f"the emulated API decodes protobuf only for {understood}; send {kind or 'this kind'} as JSON",
                "UnsupportedMediaType",
            )
        obj = _message(_bytes(envelope.get(2, b"")), message, kind)
    except (ValueError, UnicodeDecodeError, KeyError) as exc:
        raise ApiFailure(400, f"the body of the request could not be decoded: {exc}") from None
    obj["apiVersion"] = api_version
    obj["kind"] = kind
    return obj
