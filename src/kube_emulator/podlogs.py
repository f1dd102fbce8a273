"""``pods/log`` from kwok's ``Logs`` / ``ClusterLogs`` (``kwok.x-k8s.io/v1alpha1``), as on a kwok cluster.

On a real cluster with kwok nodes, kube-apiserver validates the request (``PodLogOptions``,
the container name), then proxies it to the node's kubelet endpoint, which kwok serves: it
finds the ``Logs`` object named like the pod (or the first ``ClusterLogs`` whose selector
matches it), picks the entry for the container (or the entry without ``containers``), and
streams the file it names with the kubelet's CRI log reader (``k8s.io/cri-client/pkg/logs``):
CRI lines (``<RFC3339Nano> stdout|stderr F|P <text>``) or Docker JSON lines, ``tailLines``
counted in file lines, ``sinceSeconds``/``sinceTime``, ``timestamps``, ``limitBytes``,
``previous`` (the entry's ``previousLogsFile``) and ``follow``.  This module does the same
from the store, so ``sandbox apiserver`` and ``sandbox cluster`` answer alike.

The emulator installs the two CRDs at start (``install_kwok_crds``), as ``sandbox cluster``
installs kwok's; their schemas are kwok 0.8's without the descriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from kube_emulator.errors import ApiFailure, cause, invalid
from kube_emulator.resources import ResourceType
from kube_emulator.store import Store, WriteOptions
from kube_emulator.timefields import TimeParseError, parse_go_time

JSON = dict[str, Any]
GROUP, VERSION = "kwok.x-k8s.io", "v1alpha1"
FOLLOW_POLL = 0.1  # seconds between looks at a followed file (kwok: fsnotify, forced every 1 s)
READ_CHUNK = 64 * 1024
# What a log response gathers before it writes and lets the loop serve other requests: aiohttp's
# write only yields once the transport is paused, i.e. after the kernel's socket buffers (MBs on
# loopback) are full, so a reader that kept up was served for up to seconds without a yield, and
# every other request waited that long (issue 16's starvation tail). A kubelet and kube-apiserver
# serve each log in its own goroutine: nothing else waits on them. The loop gets a turn after every
# batch written (a batch is ~0.3 ms of parsing): holding it 2 ms per stream made every loop turn of a
# write request wait up to 20 ms with 10 streams (issue 16's benchmark: writes' p99 3-4x idle); the
# starved stream once blamed on yielding after every batch was the agent's unbounded reads.
WRITE_BATCH = 8 * 1024

# The send buffer of a log response's connection. Left to Linux, it grows to tcp_wmem's maximum
# (4 MiB): a new stream's reader that paces itself (the agent's log-read budget) would have this
# process read and parse megabytes of log per stream before backpressure reached it, on the loop
# every other request waits on (issue 16: 10 streams opening held writes for 250 ms). The kubelet's
# and kube-apiserver's cost for the same bytes is far lower and off any other request's path.
LOG_SEND_BUFFER = 64 << 10

# ----- the CRDs -----------------------------------------------------------------------------
_LOG = {
    "type": "object",
    "properties": {
        "containers": {"type": "array", "items": {"type": "string"}},
        "follow": {"type": "boolean"},
        "logsFile": {"type": "string"},
        "previousLogsFile": {"type": "string"},
    },
}
_STATUS = {
    "type": "object",
    "properties": {
        "conditions": {
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
            "items": {
                "type": "object",
                "required": ["lastTransitionTime", "message", "reason", "status", "type"],
                "properties": {
                    "lastTransitionTime": {"type": "string", "format": "date-time"},
                    "message": {"type": "string", "maxLength": 32768},
                    "reason": {"type": "string", "maxLength": 1024, "minLength": 1},
                    "status": {"type": "string"},
                    "type": {"type": "string", "maxLength": 316},
                },
            },
        }
    },
}


def _crd(kind: str, plural: str, scope: str, spec_props: JSON) -> JSON:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": plural},
            "scope": scope,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["metadata", "spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": {"type": "object", "required": ["logs"], "properties": spec_props},
                                "status": _STATUS,
                            },
                        }
                    },
                }
            ],
        },
    }


LOGS_CRD = _crd("Logs", "logs", "Namespaced", {"logs": {"type": "array", "items": _LOG}})
CLUSTER_LOGS_CRD = _crd(
    "ClusterLogs",
    "clusterlogs",
    "Cluster",
    {
        "logs": {"type": "array", "items": _LOG},
        "selector": {
            "type": "object",
            "properties": {
                "matchNames": {"type": "array", "items": {"type": "string"}},
                "matchNamespaces": {"type": "array", "items": {"type": "string"}},
            },
        },
    },
)


def install_kwok_crds(store: Store) -> None:
    """Serve ``logs`` and ``clusterlogs`` (kwok.x-k8s.io) from the start, as ``sandbox cluster`` does."""
    crd_rt = store.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    assert crd_rt is not None
    for doc in (LOGS_CRD, CLUSTER_LOGS_CRD):
        if store.get(crd_rt, "", doc["metadata"]["name"]) is None:
            store.create(crd_rt, "", doc, WriteOptions(manager="kwok"))


# ----- PodLogOptions ------------------------------------------------------------------------
@dataclass
class LogOptions:
    container: str = ""
    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None
    since: datetime | None = None


def _bool(values: list[str]) -> bool:
    """``Convert_Slice_string_To_bool``: only absent, "0" and "false" are false."""
    return bool(values) and values[0] != "0" and values[0].lower() != "false"


def _int64(values: list[str]) -> int | None:
    if not values:
        return None
    text = values[0]
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ApiFailure(400, f'strconv.ParseInt: parsing "{text}": invalid syntax')
    n = int(text)
    if not -(2**63) <= n < 2**63:
        raise ApiFailure(400, f'strconv.ParseInt: parsing "{text}": value out of range')
    return n


def parse_options(query: Any, pod_name: str) -> LogOptions:
    """Decode and validate the query as kube-apiserver does (400 on syntax, 422 on values)."""

    def all_(key: str) -> list[str]:
        return list(query.getall(key, []))

    tail = _int64(all_("tailLines"))
    limit = _int64(all_("limitBytes"))
    since_seconds = _int64(all_("sinceSeconds"))
    since_time = None
    raw_time = all_("sinceTime")
    if raw_time and raw_time[0]:
        try:
            since_time = parse_go_time(raw_time[0])
        except TimeParseError as exc:
            raise ApiFailure(400, str(exc)) from None
    errors: list[JSON] = []
    if tail is not None and tail < 0:
        errors.append(cause("tailLines", f"Invalid value: {tail}: must be greater than or equal to 0"))
    if limit is not None and limit < 1:
        errors.append(cause("limitBytes", f"Invalid value: {limit}: must be greater than 0"))
    if since_seconds is not None and since_time is not None:
        errors.append(
            cause(
                "[]",
                "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified",
                "FieldValueForbidden",
            )
        )
    elif since_seconds is not None and since_seconds < 1:
        errors.append(cause("sinceSeconds", f"Invalid value: {since_seconds}: must be greater than 0"))
    if all_("stream"):
        errors.append(cause("stream", "Forbidden: may not be specified", "FieldValueForbidden"))
    if errors:
        raise invalid("PodLogOptions", "", pod_name, errors)
    since = None
    if since_seconds is not None:
        since = datetime.now(UTC) - timedelta(seconds=since_seconds)
    elif since_time is not None:
        since = since_time.replace(microsecond=0)  # sent on to the kubelet as RFC 3339 (seconds)
    return LogOptions(
        container=(all_("container") or [""])[0],
        follow=_bool(all_("follow")),
        previous=_bool(all_("previous")),
        timestamps=_bool(all_("timestamps")),
        tail_lines=tail,
        limit_bytes=limit,
        since=since,
    )


def pick_container(pod: JSON, wanted: str) -> str:
    """kube-apiserver's ``validateContainer``."""
    spec = pod.get("spec") or {}
    names = [
        str(c.get("name"))
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in spec.get(key) or []
    ]
    name = pod["metadata"]["name"]
    if wanted:
        if wanted not in names:
            raise ApiFailure(400, f"container {wanted} is not valid for pod {name}")
        return wanted
    containers = spec.get("containers") or []
    if len(containers) == 1:
        return str(containers[0].get("name"))
    if not containers:
        raise ApiFailure(400, f"a container name must be specified for pod {name}")
    raise ApiFailure(
        400, f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]"
    )


# ----- kwok's choice of file ----------------------------------------------------------------
def _entry(logs: list[JSON], container: str) -> JSON | None:
    default = None
    for entry in logs:
        containers = entry.get("containers") or []
        if not containers and default is None:
            default = entry
            continue
        if container in containers:
            return entry
    return default


def find_log(store: Store, namespace: str, pod: str, container: str) -> JSON:
    """kwok's ``getPodLogs``: the Logs named like the pod first, then ClusterLogs in order."""
    ref = f"{namespace}/{pod}"
    logs_rt = store.registry.get(GROUP, VERSION, "logs")
    if logs_rt is not None:
        own = store.get(logs_rt, namespace, pod)
        if own is not None and not own["metadata"].get("deletionTimestamp"):
            found = _entry((own.get("spec") or {}).get("logs") or [], container)
            if found is not None:
                return found
            raise ApiFailure(400, f'log target not found for container "{container}" in pod "{ref}"')
    cluster_rt = store.registry.get(GROUP, VERSION, "clusterlogs")
    if cluster_rt is not None:
        for cl in store.list(cluster_rt, None):
            if cl["metadata"].get("deletionTimestamp"):
                continue
            spec = cl.get("spec") or {}
            sel = spec.get("selector") or {}
            if sel.get("matchNamespaces") and namespace not in sel["matchNamespaces"]:
                continue
            if sel.get("matchNames") and pod not in sel["matchNames"]:
                continue
            found = _entry(spec.get("logs") or [], container)
            if found is not None:
                return found
    raise ApiFailure(400, f'no logs found for container "{container}" in pod "{ref}"')


# ----- the kubelet's CRI log reader ---------------------------------------------------------
_CRI = re.compile(rb"^(\S+) (stdout|stderr) ([^ ]*) (.*)$", re.DOTALL)


@dataclass
class _Message:
    timestamp: datetime
    nanos: int
    offset: str  # as parsed: "Z" or "+hh:mm" (the kubelet writes timestamps in their own zone)
    text: bytes


def _parse_nano(text: str) -> tuple[datetime, int, str]:
    """``RFC3339NanoLenient``; returns (UTC second, nanoseconds, zone as written)."""
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})", text)
    if not m:
        raise ValueError(f"unexpected timestamp format {text!r}")
    base = datetime.fromisoformat(m.group(1)).replace(tzinfo=UTC)
    zone = m.group(3)
    if zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        base -= sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    nanos = int(((m.group(2) or "") + "000000000")[:9])
    return base, nanos, zone


def _parse_cri(line: bytes) -> _Message:
    m = _CRI.match(line)
    if not m:
        raise ValueError("not a CRI log line")
    ts, nanos, zone = _parse_nano(m.group(1).decode())
    tags = m.group(3).split(b":")
    text = m.group(4)
    if tags[0] == b"P" and text.endswith(b"\n"):
        text = text[:-1]
    return _Message(ts, nanos, zone, text)


def _parse_docker(line: bytes) -> _Message:
    doc = json.loads(line)
    if not isinstance(doc, dict) or doc.get("stream") not in ("stdout", "stderr"):
        raise ValueError("not a Docker JSON log line")
    ts, nanos, zone = _parse_nano(str(doc.get("time", "")))
    return _Message(ts, nanos, zone, str(doc.get("log", "")).encode())


def _format_nano(msg: _Message) -> bytes:
    """``RFC3339NanoFixed`` in the zone the line was written in."""
    t = msg.timestamp
    zone = msg.offset
    if zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        t += sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    return f"{t.strftime('%Y-%m-%dT%H:%M:%S')}.{msg.nanos:09d}{zone}".encode()


def tail_start(f: Any, n: int | None) -> int:
    """``findTailLineStartIndex``: where the last ``n`` newline-terminated lines of ``f`` begin."""
    if n is None or n < 0:
        return 0
    right = int(f.seek(0, os.SEEK_END))
    count = 0
    left = right
    buf = b""
    while right > 0 and count <= n:
        left = max(0, right - READ_CHUNK)
        f.seek(left)
        buf = f.read(right - left)
        count += buf.count(b"\n")
        right = left
    for _ in range(count - n):
        idx = buf.index(b"\n") + 1
        buf = buf[idx:]
        left += idx
    return left


def _before(msg: _Message, since: datetime | None) -> bool:
    """``msg.timestamp.Before(since)``, to the nanosecond."""
    if since is None:
        return False
    whole = since.replace(microsecond=0)
    return (msg.timestamp, msg.nanos) < (whole, since.microsecond * 1000)


def _first_missing(path: str) -> str:
    """The component ``filepath.EvalSymlinks`` stops at (its error names it, not the whole path)."""
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i]) or "/"
        if not os.path.lexists(prefix):
            return prefix
    return path


class LogFile:
    """The followed file: opened like the kubelet opens it (symlinks resolved), reopened when
    it is recreated under the same name (rotation).  Local file operations only, all quick."""

    def __init__(self, path: str) -> None:
        try:
            self.real = os.path.realpath(path or ".", strict=True)
        except OSError as exc:
            why = (exc.strerror or str(exc)).lower()
            raise ApiFailure(
                400, f'failed to try resolving symlinks in path "{path}": lstat {_first_missing(path)}: {why}'
            ) from None
        shown = self.real if path else "."  # Go's EvalSymlinks("") is "."
        if os.path.isdir(self.real):
            raise ApiFailure(400, f'failed to read log file "{shown}": read {shown}: is a directory')
        try:
            self.f = open(self.real, "rb")  # noqa: SIM115 (kept open while following)
        except OSError as exc:
            raise ApiFailure(
                400, f'failed to open log file "{shown}": open {shown}: {exc.strerror}'
            ) from None
        self.inode = os.fstat(self.f.fileno()).st_ino

    def seek_tail(self, n: int | None) -> None:
        self.f.seek(tail_start(self.f, n))

    def readline(self) -> bytes:
        line: bytes = self.f.readline()
        return line

    def reopened(self) -> bool:
        """True (and positioned at the start of the new file) if the name now has another file."""
        try:
            inode = os.stat(self.real).st_ino
        except OSError:
            return False
        if inode == self.inode:
            return False
        self.f.close()
        self.f = open(self.real, "rb")  # noqa: SIM115
        self.inode = os.fstat(self.f.fileno()).st_ino
        return True

    def close(self) -> None:
        self.f.close()


class _Batch:
    """Lines gathered into writes of about :data:`WRITE_BATCH`; the loop gets a turn after each."""

    def __init__(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        self._write = write
        self._parts: list[bytes] = []
        self._size = 0

    async def add(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        if self._size >= WRITE_BATCH:
            await self.flush()

    async def flush(self) -> None:
        """Write what is gathered (before any wait for more, and at the end)."""
        if not self._parts:
            return
        data = b"".join(self._parts)
        self._parts, self._size = [], 0
        await self._write(data)
        await asyncio.sleep(0)


async def stream_file(
    path: str,
    opts: LogOptions,
    write: Callable[[bytes], Awaitable[None]],
    stopped: Callable[[], bool] = lambda: False,
) -> None:
    """The CRI log reader (``ReadLogs``) over ``path``, writing what the kubelet would send."""
    lf = LogFile(path)
    batch = _Batch(write)
    try:
        await _read(lf, opts, batch, stopped)
        await batch.flush()
    finally:
        lf.close()


async def _read(lf: LogFile, opts: LogOptions, batch: _Batch, stopped: Callable[[], bool]) -> None:
    lf.seek_tail(opts.tail_lines)
    limited = opts.tail_lines is not None and not opts.follow
    remaining_lines = opts.tail_lines or 0
    remain = opts.limit_bytes
    parse: Callable[[bytes], _Message] | None = None
    new_line = True
    pending = b""
    while True:
        if limited and remaining_lines <= 0:
            return
        chunk = lf.readline()
        last = False
        if chunk.endswith(b"\n"):
            line, pending = pending + chunk, b""
        elif not opts.follow:
            if not chunk:
                return
            line, last = chunk, True  # an incomplete last line is still written, then the end
        else:
            pending += chunk  # wait for the rest of the line, or for more lines
            await batch.flush()
            if stopped():
                return
            await asyncio.sleep(FOLLOW_POLL)
            if lf.reopened():
                pending = b""
            continue
        if parse is None:
            parse = _parser_for(line)
        try:
            msg = parse(line)
        except (ValueError, UnicodeDecodeError):
            if last:
                return
            continue  # the kubelet logs and skips a line it cannot parse
        if not _before(msg, opts.since):
            out = msg.text
            if opts.timestamps and new_line:
                out = _format_nano(msg) + b" " + out
            if remain is not None and len(out) > remain:
                out = out[:remain]
            if out:
                await batch.add(out)
            if remain is not None:
                remain -= len(out)
                if remain <= 0:
                    return
        if limited:
            remaining_lines -= 1
        new_line = not msg.text or msg.text.endswith(b"\n")
        if last:
            return


def _parser_for(line: bytes) -> Callable[[bytes], _Message]:
    """``getParseFunc``: CRI first, then Docker JSON, judged by the first line."""
    for candidate in (_parse_cri, _parse_docker):
        try:
            candidate(line)
        except (ValueError, UnicodeDecodeError):
            continue
        return candidate
    raise ApiFailure(400, f"failed to get parse function: unsupported log format: {line!r}")


async def serve(
    request: web.Request, store: Store, pod_rt: ResourceType, namespace: str, name: str
) -> web.StreamResponse:
    """``GET .../pods/NAME/log``: options are checked before the pod is looked up, as upstream."""
    opts = parse_options(request.query, name)
    pod = store.must_get(pod_rt, namespace, name)
    container = pick_container(pod, opts.container)
    if not (pod.get("spec") or {}).get("nodeName"):
        return web.Response(status=204)  # not scheduled: kube-apiserver has nowhere to ask
    entry = find_log(store, namespace, name, container)
    path = str(entry.get("previousLogsFile" if opts.previous else "logsFile") or "")
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
    resp.enable_chunked_encoding()
    started = False

    async def write(data: bytes) -> None:
        nonlocal started
        if not started:
            await resp.prepare(request)
            started = True
        await resp.write(data)

    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LOG_SEND_BUFFER)

    def gone() -> bool:
        return transport is None or transport.is_closing()

    try:
        await stream_file(path, opts, write, gone)
    except ApiFailure:
        if started:  # too late for a status: end the stream as a broken kubelet connection would
            return resp
        raise
    except (ConnectionResetError, ConnectionError):
        return resp
    if not started:
        await resp.prepare(request)
    with contextlib.suppress(ConnectionResetError, ConnectionError, RuntimeError):
        await resp.write_eof()
    return resp
