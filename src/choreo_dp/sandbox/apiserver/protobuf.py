"""Just enough Kubernetes protobuf decoding for kubectl's typed ``create`` sub-commands.

``kubectl create namespace|configmap|secret|serviceaccount`` and ``kubectl auth can-i``
send ``application/vnd.kubernetes.protobuf`` bodies (other commands send JSON).  The
envelope (``k8s\\x00`` + runtime.Unknown) and the handful of messages those commands
use are decoded here into the same JSON shapes the API would receive; any other kind
is refused with 415, which names the kinds understood.
"""

from __future__ import annotations

import base64
from typing import Any

from choreo_dp.sandbox.apiserver.errors import ApiFailure

JSON = dict[str, Any]
MAGIC = b"k8s\x00"

# message -> field number -> (json name, type); types: s (string), b (bytes, base64 in JSON),
# i (varint int), ? (bool), m:Msg (message), ms (map<string,string>), mb (map<string,bytes>),
# rs (repeated string), rm:Msg (repeated message)
SCHEMAS: dict[str, dict[int, tuple[str, str]]] = {
    "ObjectMeta": {
        1: ("name", "s"),
        2: ("generateName", "s"),
        3: ("namespace", "s"),
        5: ("uid", "s"),
        6: ("resourceVersion", "s"),
        7: ("generation", "i"),
        11: ("labels", "ms"),
        12: ("annotations", "ms"),
        13: ("ownerReferences", "rm:OwnerReference"),
        14: ("finalizers", "rs"),
    },
    "OwnerReference": {
        1: ("kind", "s"),
        3: ("name", "s"),
        4: ("uid", "s"),
        5: ("apiVersion", "s"),
        6: ("controller", "?"),
        7: ("blockOwnerDeletion", "?"),
    },
    "ConfigMap": {
        1: ("metadata", "m:ObjectMeta"),
        2: ("data", "ms"),
        3: ("binaryData", "mb"),
        4: ("immutable", "?"),
    },
    "Secret": {
        1: ("metadata", "m:ObjectMeta"),
        2: ("data", "mb"),
        3: ("type", "s"),
        4: ("stringData", "ms"),
        5: ("immutable", "?"),
    },
    "Namespace": {1: ("metadata", "m:ObjectMeta"), 2: ("spec", "m:NamespaceSpec")},
    "NamespaceSpec": {1: ("finalizers", "rs")},
    "ServiceAccount": {
        1: ("metadata", "m:ObjectMeta"),
        2: ("secrets", "rm:ObjectReference"),
        3: ("imagePullSecrets", "rm:LocalObjectReference"),
        4: ("automountServiceAccountToken", "?"),
    },
    "ObjectReference": {
        1: ("kind", "s"),
        2: ("namespace", "s"),
        3: ("name", "s"),
        4: ("uid", "s"),
        5: ("apiVersion", "s"),
    },
    "LocalObjectReference": {1: ("name", "s")},
    "SelfSubjectAccessReview": {
        1: ("metadata", "m:ObjectMeta"),
        2: ("spec", "m:SelfSubjectAccessReviewSpec"),
    },
    "SelfSubjectAccessReviewSpec": {
        1: ("resourceAttributes", "m:ResourceAttributes"),
        2: ("nonResourceAttributes", "m:NonResourceAttributes"),
    },
    "ResourceAttributes": {
        1: ("namespace", "s"),
        2: ("verb", "s"),
        3: ("group", "s"),
        4: ("version", "s"),
        5: ("resource", "s"),
        6: ("subresource", "s"),
        7: ("name", "s"),
    },
    "NonResourceAttributes": {1: ("path", "s"), 2: ("verb", "s")},
}
TOP_LEVEL = ("ConfigMap", "Secret", "Namespace", "ServiceAccount", "SelfSubjectAccessReview")


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
            out.append((num, wire, buf[pos : pos + n]))
            pos += n
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def _message(buf: bytes, name: str) -> JSON:
    schema = SCHEMAS[name]
    out: JSON = {}
    for num, _wire, val in _fields(buf):
        if num not in schema:
            continue
        key, typ = schema[num]
        if typ == "s":
            out[key] = val.decode()
        elif typ == "b":
            out[key] = base64.b64encode(val).decode()
        elif typ == "i":
            out[key] = val
        elif typ == "?":
            out[key] = bool(val)
        elif typ.startswith("m:"):
            out[key] = _message(val, typ[2:])
        elif typ in ("ms", "mb"):
            entry = {n: v for n, _w, v in _fields(val)}
            k = entry.get(1, b"").decode()
            v = entry.get(2, b"")
            out.setdefault(key, {})[k] = v.decode() if typ == "ms" else base64.b64encode(v).decode()
        elif typ == "rs":
            out.setdefault(key, []).append(val.decode())
        elif typ.startswith("rm:"):
            out.setdefault(key, []).append(_message(val, typ[3:]))
    return out


def decode(body: bytes) -> JSON:
    """A protobuf request body as the JSON object it stands for; 415 for kinds not covered."""
    if not body.startswith(MAGIC):
        raise ApiFailure(400, "protobuf body without the k8s envelope")
    try:
        envelope = {n: v for n, _w, v in _fields(body[len(MAGIC) :])}
        type_meta = {n: v for n, _w, v in _fields(envelope.get(1, b""))}
        api_version = type_meta.get(1, b"").decode()
        kind = type_meta.get(2, b"").decode()
        if kind not in TOP_LEVEL:
            raise ApiFailure(
                415,
                f"the emulated API decodes protobuf only for {', '.join(TOP_LEVEL)}; send {kind or 'this kind'} as JSON",
                "UnsupportedMediaType",
            )
        obj = _message(envelope.get(2, b""), kind)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiFailure(400, f"the body of the request could not be decoded: {exc}") from None
    obj["apiVersion"] = api_version
    obj["kind"] = kind
    return obj
